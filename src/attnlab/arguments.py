"""The integer check every layer shares, and the typed error every argument check raises.

An argument error carries the argument's name (``ArgumentError.name``) beside its message
``"{name}: expected ..., got ..."``, so the CLI can name the option the user typed (``--top``
for the library's ``k``) without parsing the message. No torch or numpy at import: the CLI,
``viz/`` and ``threads`` use it too (``attnlab.functional.checks`` re-exports it).
"""

from __future__ import annotations

from typing import cast

_GIVEN = object()  # expect_int's ``got`` default: echo the value checked


class ArgumentError(ValueError):
    """A bad argument: ``str(e)`` is ``"{name}: expected ..., got ..."``; ``e.name`` is ``name``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def expect_int(
    name: str,
    value: object,
    lo: int | None = None,
    hi: int | None = None,
    *,
    expected: str | None = None,
    got: object = _GIVEN,
    kinds: tuple[type, ...] = (int,),
    error: type[Exception] = ArgumentError,
) -> int:
    """``value`` if it is an int (a bool is not) in ``lo..hi`` (both inclusive, either optional).

    The message is ``"{name}: expected {expected}, got {got!r}"``: ``expected`` defaults to the
    range ("an int >= 0", "an int in 1..8"); ``got`` to ``value`` (a list's check shows the list).
    ``kinds`` admits other integer types (numpy's); ``error`` is the exception class for callers
    that index like a sequence (IndexError), else an :class:`ArgumentError` named ``name``.
    """
    n = cast(int, value)
    if (isinstance(value, bool) or not isinstance(value, kinds)
            or (lo is not None and n < lo) or (hi is not None and n > hi)):
        if expected is None:
            expected = ("an int" if lo is None and hi is None else f"an int >= {lo}" if hi is None
                        else f"an int <= {hi}" if lo is None else f"an int in {lo}..{hi}")
        shown = value if got is _GIVEN else got
        message = f"{name}: expected {expected}, got {shown!r}"
        raise ArgumentError(name, message) if error is ArgumentError else error(message)
    return n


def expect_positive_int(name: str, value: object) -> int:
    return expect_int(name, value, 1, expected="a positive int")


def expect_nonneg_int(name: str, value: object) -> int:
    return expect_int(name, value, 0)

"""Limits on rendering a chat template: bounded output, a deadline, and every failure one line.

Chat templates come from downloaded files and run in jinja2's immutable sandbox, which stops
attribute escapes but not cost: ``range(10**9)`` raised a bare OverflowError, two nested
``range(100000)`` loops never returned, ``'x' * 4000000000`` allocated 8 GB before a
MemoryError, and 5,000 nested parentheses raised RecursionError from the parser. Here:

- ``range`` yields at most 100,000 numbers and checks the deadline as it goes, so nested loops
  stop at the deadline (default 2 s);
- ``*``, ``**`` and ``+`` are checked before they run: no string or list longer than the
  output limit, no power with a result over 4,096 bits;
- the output is produced piece by piece (``Template.generate``) and stops at the limit;
- a loop over data (not a range) that writes nothing is not timed: the data is bounded by the
  messages and the checks on ``*`` and ``+``, so such a loop is at most quadratic in them;
- syntax errors, recursion, memory and overflow errors, and the limits themselves, are each
  one ``ValueError`` naming the template's source.
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Iterator
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_RANGE = 100_000  # numbers one range() may yield (jinja2's own sandbox limit)
DEADLINE_S = 2.0  # seconds a render may take (SmolLM2's template renders in well under 10 ms)
BASE_OUTPUT = 65_536  # characters of output beyond the messages' own text (times 4)
MAX_POW_BITS = 4096


class TemplateLimit(Exception):
    """A render went over a limit (time, output size, arithmetic size)."""


class BoundedRange:
    """A range whose iteration checks the render's deadline (every 256 numbers)."""

    def __init__(self, r: range, env: BoundedSandbox) -> None:
        self.r, self.env = r, env

    def __iter__(self) -> Iterator[int]:
        for n, i in enumerate(self.r):
            if n % 256 == 0:
                self.env.check_time()
            yield i

    def __reversed__(self) -> Iterator[int]:
        return iter(BoundedRange(self.r[::-1], self.env))

    def __len__(self) -> int:
        return len(self.r)

    def __getitem__(self, i: Any) -> Any:
        got = self.r[i]
        return BoundedRange(got, self.env) if isinstance(got, range) else got

    def __contains__(self, x: object) -> bool:
        return x in self.r


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with a deadline and size checks on the operators that can blow up."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.deadline = math.inf  # set by each render
        self.max_output = BASE_OUTPUT
        self.globals["range"] = self._range

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimit(f"took more than {DEADLINE_S:g} s (a loop that does not end?)")

    def _range(self, *args: int) -> BoundedRange:
        r = range(*args)
        if len(r) > MAX_RANGE:
            raise TemplateLimit(f"range() of {len(r)} numbers; at most {MAX_RANGE}")
        return BoundedRange(r, self)

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        self.check_time()
        if op == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and \
                    abs(left) > 1 and right * math.log2(abs(left)) > MAX_POW_BITS:
                raise TemplateLimit(f"{left} ** {right} is over {MAX_POW_BITS} bits")
            return operator.pow(left, right)
        if op == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and \
                        len(seq) * n > self.max_output:
                    raise TemplateLimit(f"a sequence of {len(seq)} repeated {n} times; at most "
                                        f"{self.max_output} items")
            return operator.mul(left, right)
        if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) and \
                len(left) + len(right) > self.max_output:
            raise TemplateLimit(f"a concatenation of {len(left) + len(right)} items; at most "
                                f"{self.max_output}")
        return operator.add(left, right)


def output_limit(messages: list[dict[str, str]]) -> int:
    """Characters a render may produce: the messages' text 4 times over plus 64 KiB."""
    return BASE_OUTPUT + 4 * sum(len(m["content"]) + len(m["role"]) for m in messages)


def render_bounded(env: BoundedSandbox, template: Any, source: str, limit: int, **context: Any) -> str:
    """``template.render(**context)`` under ``env``'s limits; any failure is one ValueError."""
    import jinja2

    env.deadline, env.max_output = time.monotonic() + DEADLINE_S, limit
    parts: list[str] = []
    size = 0
    try:
        for piece in template.generate(**context):
            size += len(piece)
            if size > limit:
                raise TemplateLimit(f"produced more than {limit} characters")
            parts.append(piece)
            env.check_time()
    except TemplateLimit as e:
        raise ValueError(f"{source}: rendering stopped: the template {e}") from None
    except jinja2.TemplateError as e:  # raise_exception(...) and sandbox violations
        raise ValueError(f"{source}: the template refused these messages: {_line(e)}") from None
    except RecursionError:
        raise ValueError(f"{source}: rendering stopped: the template recursed too deep") from None
    except MemoryError:
        raise ValueError(f"{source}: rendering stopped: out of memory") from None
    except (OverflowError, ArithmeticError, TypeError, ValueError, LookupError) as e:
        raise ValueError(f"{source}: the template failed: {type(e).__name__}: {_line(e)}") from None
    return "".join(parts)


def _line(e: BaseException) -> str:
    """An exception's message on one line, cut to 200 characters."""
    text = " ".join(str(e).split())
    return text if len(text) <= 200 else text[:200] + "…"

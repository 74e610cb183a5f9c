"""How an error message repeats a user's value: quoted and cut (a 100,000-space prompt used to
come back as a 100 KB error line). Shared by the CLI and the library; no torch at import."""

from __future__ import annotations

ECHO_CHARS = 80  # the most of a user's value an error message repeats


def shown(value: object, limit: int = ECHO_CHARS) -> str:
    """``value`` quoted, at most ``limit`` characters, with its length when cut."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[: limit - 1]!r}… ({len(text):,} characters)"

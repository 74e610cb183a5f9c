"""Untrusted text and size limits.

Tokens come from users and models and are untrusted. Three places could turn them into code:

- HTML: data is embedded as JSON inside ``<script type="application/json">``. The HTML parser
  ends a script element at the first ``</script`` whatever the JSON says, so ``<``, ``>`` and
  ``&`` are written as ``\\u003c``-style escapes (still the same JSON). U+2028 and U+2029 are
  escaped too: they end lines in older JavaScript parsers. The page's own script then renders
  tokens through ``textContent`` only, and a Content-Security-Policy forbids anything else.
- Terminals: control characters (ESC sequences can recolour, retitle or clear a terminal) are
  shown as visible escapes by :func:`printable`.
- matplotlib: ``$`` starts mathtext; labels are drawn with math parsing off (see figure.py).

The size limits keep the interactive pages responsive: the head view draws one line per
(query, key, head) and the model view one thumbnail per (layer, head).
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

# Browser limits, measured in headless Chromium on a 2-core machine: a 256-token head view with
# 12 heads redraws in well under a second; beyond that the columns are too long to read anyway.
MAX_HTML_TOKENS = 256
# Number of attention values embedded in one page (about 8 bytes each as JSON: ~8 MiB).
MAX_HTML_VALUES = 1 << 20
# Panels in a model view / grid figure; past this the thumbnails are too small to read.
MAX_PANELS = 1024

_SCRIPT_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_SCRIPT_TABLE = str.maketrans(_SCRIPT_ESCAPES)


def json_for_script(obj: Any) -> str:
    """JSON text that is safe between ``<script type="application/json">`` and ``</script>``.

    ``json.loads`` of the result gives back ``obj``: the escapes are JSON string escapes.
    NaN and infinities are refused (they are not JSON).
    """
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    # Every <, >, & and U+2028/9 in JSON text sits inside a string, so escaping is lossless.
    return text.translate(_SCRIPT_TABLE)


def printable(token: str) -> str:
    """A token as visible text: control and format characters become ``\\xNN``/``\\uNNNN``.

    Keeps spaces and ordinary Unicode; only categories Cc (controls, incl. ESC and newlines),
    Cf (format: bidi overrides, zero-width), Cs, Co and Cn are escaped.
    """
    out = []
    for ch in token:
        if unicodedata.category(ch).startswith("C"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def shorten(label: str, max_len: int) -> str:
    """Cut ``label`` to ``max_len`` characters, marking the cut with an ellipsis."""
    return label if len(label) <= max_len else label[: max(max_len - 1, 1)] + "…"


def max_html_tokens(layers: int, heads: int) -> int:
    """The most tokens per side an HTML view of ``layers`` x ``heads`` (every one embedded, as the
    model view needs) can show: ``MAX_HTML_TOKENS``, or fewer where ``MAX_HTML_VALUES`` binds."""
    return min(MAX_HTML_TOKENS, math.isqrt(MAX_HTML_VALUES // max(layers * heads, 1)))


def check_html_size(shape: tuple[int, ...], name: str = "weights",
                    tokens_name: str = "tokens") -> None:
    """Refuse attention arrays the interactive pages would render badly.

    ``shape`` is (layers, heads, q_len, k_len). The error says how to slice the input.
    """
    layers, heads, lq, lk = shape
    n_values = math.prod(shape)
    if lq <= MAX_HTML_TOKENS and lk <= MAX_HTML_TOKENS and n_values <= MAX_HTML_VALUES:
        return
    # Largest square token window that fits both limits for these layers/heads.
    fit = math.isqrt(MAX_HTML_VALUES // max(layers * heads, 1))
    n = max(1, min(MAX_HTML_TOKENS, fit, max(lq, lk)))
    hint = f"pass {name}[:, :, :{n}, :{n}] and {tokens_name}[:{n}]"
    if fit < 1:
        hint = f"select layers or heads first, e.g. {name}[:4, :4]"
    elif layers * heads > 1:
        hint += f", or fewer layers/heads (e.g. {name}[:1] or {name}[:, [0, 3]])"
    raise ValueError(
        f"{name}: expected at most {MAX_HTML_TOKENS} tokens per side and at most "
        f"{MAX_HTML_VALUES:,} values for an HTML view, got shape {shape} "
        f"({n_values:,} values); {hint}"
    )

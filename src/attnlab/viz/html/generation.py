"""Two offline pages about a model's own generation (no torch: arrays in, HTML text out).

- :func:`generation_view_html`: the prompt and the generated answer as flowing text; hover (or
  click to pin) a token to shade every earlier token by how much that position attended to it,
  for one layer and one head, the mean of the heads, or the mean of one grouped-query K/V group.
- :func:`token_share_html`: the answer coloured by the share of attention each generated token
  put on a highlighted span of the prompt (mean over layers); hover for the per-layer bars.

Recorded rows are ragged (position p attends to keys 0..p), so the generation page embeds them
as one flat uint8 buffer, deflated (zlib, level 1) and in base64 (weight = byte / 255, within
±0.002), in the order
(position, layer, head, key): position p starts at layers · heads · p(p + 1)/2. Tokens are
untrusted: they travel as escaped JSON and the scripts render them through textContent only.
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attnlab.arguments import expect_int
from attnlab.viz.html.page import render_page, write_page
from attnlab.viz.notebook import HtmlPage
from attnlab.viz.safety import MAX_HTML_VALUES, printable

# Tokens of flowing text: 4096 spans re-shade in a few milliseconds in headless Chromium.
MAX_GENERATION_TOKENS = 4096
# Bytes of embedded weights (one per value before compression; deflate then base64 make the page
# 0.4-0.6x that in benchmarks/notebook_view.py's synthetic rows, less for peaked real attention).
MAX_GENERATION_VALUES = 8 << 20
_TOL = 1e-3  # fp16 rows may overshoot [0, 1] by a rounding step


def _names(name: str, values: Sequence[Any], n: int, what: str) -> list[int]:
    """``values`` as a list of ``n`` non-negative ints (display indices)."""
    out = list(values)
    if len(out) != n:
        raise ValueError(f"{name}: expected {n} {what} indices (one per recorded {what}), "
                         f"got {len(out)}")
    for v in out:
        expect_int(name, v, 0, expected="non-negative ints", got=out, kinds=(int, np.integer))
    return [int(v) for v in out]


def _tokens(name: str, labels: Sequence[Any]) -> tuple[list[str], list[str]]:
    """(one-line names, flowing-text forms) of untrusted labels.

    Names show a newline as ↵ and a tab as ⇥; flowing text keeps a line break after the ↵.
    Other control and format characters become visible escapes (:func:`printable`).
    """
    if isinstance(labels, (str, bytes)):
        raise ValueError(f"{name}: expected a sequence of token labels, got a single "
                         f"{type(labels).__name__}")
    names, flow = [], []
    for t in labels:
        lines = str(t).replace("\r\n", "\n").split("\n")
        parts = [printable(line.replace("\t", "⇥")) for line in lines]
        names.append("↵".join(parts))
        flow.append("↵\n".join(parts))
    if len(names) > MAX_GENERATION_TOKENS:
        raise ValueError(f"{name}: expected at most {MAX_GENERATION_TOKENS} tokens for an HTML "
                         f"view, got {len(names)}; pass a slice, e.g. {name}[:{MAX_GENERATION_TOKENS}]")
    return names, flow


def _unit_interval(name: str, a: np.ndarray) -> np.ndarray:
    """``a`` as float32, checked finite and in [0, 1] (up to fp16 rounding), then clipped."""
    a = np.asarray(a, dtype=np.float32)
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name}: expected finite values in [0, 1], got NaN or infinity")
    if a.size and (a.min() < -_TOL or a.max() > 1 + _TOL):
        raise ValueError(f"{name}: expected values in [0, 1], got min {a.min():.4g}, "
                         f"max {a.max():.4g}")
    return np.clip(a, 0.0, 1.0)


def _row_shapes(rows: Sequence[Any]) -> tuple[list[np.ndarray], int, int]:
    """Rows as arrays (not yet copied) plus (layers, heads); each shape is checked."""
    if isinstance(rows, np.ndarray) or not isinstance(rows, Sequence) or len(rows) == 0:
        got = "an empty sequence" if isinstance(rows, Sequence) else type(rows).__name__
        raise ValueError("rows: expected a non-empty sequence of arrays, rows[p] of shape "
                         f"(layers, heads, p + 1), got {got}")
    arrays = [np.asarray(r) for r in rows]
    if arrays[0].ndim != 3:
        raise ValueError(f"rows[0]: expected 3 dimensions (layers, heads, keys), got shape "
                         f"{arrays[0].shape}")
    n_layers, n_heads = arrays[0].shape[:2]
    if n_layers == 0 or n_heads == 0:
        raise ValueError(f"rows[0]: expected at least one layer and one head, got shape "
                         f"{arrays[0].shape}")
    for p, r in enumerate(arrays):
        if r.shape != (n_layers, n_heads, p + 1):
            raise ValueError(f"rows[{p}]: expected shape {(n_layers, n_heads, p + 1)} "
                             f"(layers, heads, p + 1), got {r.shape}")
    return arrays, n_layers, n_heads


def _check_values(n_layers: int, n_heads: int, n: int) -> None:
    """Refuse more than :data:`MAX_GENERATION_VALUES` embedded weights, with a slicing hint."""
    lh = n_layers * n_heads
    total = lh * n * (n + 1) // 2
    if total <= MAX_GENERATION_VALUES:
        return
    # Most positions that fit at these layers/heads: lh * k(k+1)/2 <= limit.
    k = (math.isqrt(1 + 8 * (MAX_GENERATION_VALUES // lh)) - 1) // 2
    hint = (f"keep fewer positions (rows[:{k}] and labels[:{k + 1}])" if k >= 1
            else "record fewer layers or heads")
    if lh > 1:
        hint += ", or fewer layers/heads (e.g. [r[:4] for r in rows])"
    raise ValueError(
        f"rows: expected at most {MAX_GENERATION_VALUES:,} attention values for an HTML view, "
        f"got {n_layers} layers x {n_heads} heads x {n} positions ({total:,} values); {hint}"
    )


def _quantised(arrays: list[np.ndarray]) -> str:
    """All rows as one uint8 buffer (weight = byte / 255), position by position, deflated and in
    base64. Level 1: 8 MB in ~0.2 s to ~40 %; level 6 takes ten times longer for ~4 % less."""
    parts = []
    for p, r in enumerate(arrays):
        w = _unit_interval(f"rows[{p}]", r)
        parts.append(np.rint(w * 255).astype(np.uint8).ravel())  # (layers * heads * (p + 1),)
    packed = zlib.compress(np.concatenate(parts).tobytes(), 1)
    return base64.b64encode(packed).decode("ascii")


def _kv_groups(kv_group: Sequence[Any], n_heads: int) -> list[int]:
    groups = list(kv_group)
    if len(groups) != n_heads:
        raise ValueError(f"kv_group: expected one K/V head per recorded head ({n_heads}), "
                         f"got {len(groups)}")
    for g in groups:
        expect_int("kv_group", g, 0, expected="non-negative ints", got=groups, kinds=(int, np.integer))
    return [int(g) for g in groups]


def generation_view_html(
    rows: Sequence[Any],
    labels: Sequence[Any],
    prompt_len: int,
    *,
    layers: Sequence[int],
    heads: Sequence[int],
    kv_group: Sequence[int],
    title: str = "Attention while generating",
    path: str | Path | None = None,
) -> HtmlPage:
    """The prompt and the answer as text; hover a token to see what its position attended to.

    ``rows[p]`` is (layers, heads, p + 1): the attention of fed position p over keys 0..p
    (values in [0, 1], any float dtype). ``labels`` has one label per position, or one more:
    the last generated token is never fed back, so it has no row. The first ``prompt_len``
    positions are the prompt. ``layers``/``heads`` are the model's indices of what was
    recorded; ``kv_group[i]`` is the K/V head that recorded head ``i`` reads (grouped-query
    attention, e.g. [0, 0, 0, 1, 1, 1, 2, 2, 2]). Returns the HTML (written to ``path`` too).
    """
    arrays, n_layers, n_heads = _row_shapes(rows)
    n = len(arrays)
    names, flow = _tokens("labels", labels)
    if len(names) not in (n, n + 1):
        raise ValueError(f"labels: expected {n} or {n + 1} labels for {n} recorded positions "
                         f"(the last generated token has no row), got {len(names)}")
    expect_int("prompt_len", prompt_len, 1, n, expected=f"an int in 1..{n} (positions recorded)",
               kinds=(int, np.integer))
    layer_ids = _names("layers", layers, n_layers, "layer")
    head_ids = _names("heads", heads, n_heads, "head")
    groups = _kv_groups(kv_group, n_heads)
    _check_values(n_layers, n_heads, n)
    payload = {
        "view": {"kind": "generation", "title": str(title)},
        "shape": [n_layers, n_heads, n],
        "prompt_len": int(prompt_len),
        "tokens": names,
        "flow": flow,
        "layers": layer_ids,
        "heads": head_ids,
        "kv_group": groups,
        "w": _quantised(arrays),
        "w_codec": "deflate",  # zlib format: the page inflates it with DecompressionStream
    }
    text = render_page("generation", payload, str(title))
    write_page(text, path)
    return text


def _positions(name: str, positions: Sequence[int], n: int) -> list[int]:
    """``positions`` checked: at least one, each an int in 0..n-1."""
    marked = list(positions)
    if not marked:
        raise ValueError(f"{name}: expected at least one prompt position, got none")
    for p in marked:
        expect_int(name, p, 0, n - 1, expected=f"prompt positions in 0..{n - 1}", got=marked,
                   kinds=(int, np.integer))
    return marked


def token_share_html(
    answer_labels: Sequence[Any],
    share: Any,
    *,
    prompt_labels: Sequence[Any],
    highlight: Sequence[int],
    layers: Sequence[int],
    uniform: Sequence[float] | None = None,
    title: str = "Share of attention on the highlighted words",
    path: str | Path | None = None,
) -> HtmlPage:
    """The answer coloured by how much of its attention went to a highlighted prompt span.

    ``share`` is (n_answer_tokens, n_layers): for each generated token and layer, the share of
    attention (in [0, 1]) on the prompt positions ``highlight``. The colour is the mean over
    layers; hovering a token draws its per-layer shares as bars with their values.
    ``uniform`` (one per answer token): the share uniform attention would give the span
    (span size / keys the token sees) — the baseline a share means something against: drawn as
    a mark on every bar and given as a ratio.
    """
    s = np.asarray(share)
    if s.ndim != 2 or 0 in s.shape:
        raise ValueError(f"share: expected a non-empty 2-D array (answer tokens, layers), "
                         f"got shape {s.shape}")
    n_answer, n_layers = s.shape
    s = _unit_interval("share", s)
    if s.size > MAX_HTML_VALUES:
        raise ValueError(f"share: expected at most {MAX_HTML_VALUES:,} values for an HTML view, "
                         f"got shape {s.shape}; pass share[:k] and answer_labels[:k]")
    answer, answer_flow = _tokens("answer_labels", answer_labels)
    if len(answer) != n_answer:
        raise ValueError(f"answer_labels: expected {n_answer} labels (one per row of share), "
                         f"got {len(answer)}")
    prompt, prompt_flow = _tokens("prompt_labels", prompt_labels)
    marked = _positions("highlight", highlight, len(prompt))
    base = None
    if uniform is not None:
        u = _unit_interval("uniform", np.asarray(uniform, dtype=np.float64).reshape(-1))
        if u.shape != (n_answer,):
            raise ValueError(f"uniform: expected {n_answer} values (one per row of share), got {u.size}")
        base = np.round(u.astype(np.float64), 4).tolist()
    payload = {
        "view": {"kind": "share", "title": str(title)},
        "uniform": base,  # (answer,) or None
        "answer": answer,
        "answer_flow": answer_flow,
        "prompt": prompt,
        "prompt_flow": prompt_flow,
        "highlight": sorted({int(p) for p in marked}),
        "layers": _names("layers", layers, n_layers, "layer"),
        "share": np.round(s.astype(np.float64), 4).tolist(),  # (answer, layers)
        "mean": np.round(s.astype(np.float64).mean(axis=1), 4).tolist(),  # (answer,)
    }
    text = render_page("share", payload, str(title))
    write_page(text, path)
    return text

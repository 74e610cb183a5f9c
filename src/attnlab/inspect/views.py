"""Pictures and pages of a captured model, drawn by ``attnlab.viz`` (imported lazily: viz
pulls in matplotlib, which the plain ``attnlab inspect`` text output does not need)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnlab.inspect.attention_cache import AttentionCache
from attnlab.inspect.comparison import Comparison

VIEWS = ("head", "model")


def _weights(cache: AttentionCache):
    return cache.weights.double().numpy()  # (L, H, Lq, Lk)


def inspect_page(cache: AttentionCache, *, view: str = "head", layer: int = 0,
                 heads: list[int] | None = None, path: str | Path | None = None) -> str:
    """The interactive head view (BertViz-style lines) or model view (layers x heads)."""
    from attnlab.viz import head_view_html, model_view_html

    if view not in VIEWS:
        raise ValueError(f"view: expected one of {VIEWS}, got {view!r}")
    title = f"{cache.model}: {cache.encoded.text}"
    meta = cache.metadata()
    if view == "model":
        return model_view_html(_weights(cache), cache.tokens, q_tokens=cache.query_labels,
                               title=title, metadata=meta, path=path)
    return head_view_html(_weights(cache), cache.tokens, q_tokens=cache.query_labels, layer=layer,
                          selected_heads=heads, title=title, metadata=meta, path=path)


def inspect_png(cache: AttentionCache, path: str | Path, *, layer: int | None = None,
                head: int | None = None) -> Path:
    """One head's heatmap when ``layer``/``head`` are given, else the layers x heads grid."""
    from attnlab.viz import heatmap, layer_head_grid

    if layer is not None and head is not None:
        heatmap(cache.head(layer, head).double().numpy(), cache.tokens, q_tokens=cache.query_labels,
                title=f"{cache.model} layer {layer} head {head}", path=path)
    elif layer is not None:
        layer_head_grid(_weights(cache)[layer: layer + 1], cache.tokens, q_tokens=cache.query_labels,
                        layers=[layer], patterns=True, title=f"{cache.model} layer {layer}", path=path)
    else:
        layer_head_grid(_weights(cache), cache.tokens, q_tokens=cache.query_labels, patterns=True,
                        title=f"{cache.model}: every layer and head", path=path)
    return Path(path)


def terminal_head(cache: AttentionCache, layer: int, head: int, *, ascii_only: bool = False) -> Any:
    """A rich renderable heatmap of one head."""
    from attnlab.viz import terminal_heatmap

    return terminal_heatmap(cache.head(layer, head).double().numpy(), cache.tokens,
                            q_tokens=cache.query_labels, title=f"layer {layer} head {head}",
                            ascii_only=ascii_only)


def compare_page(cmp: Comparison, *, path: str | Path | None = None) -> str:
    """The interactive compare view, opened on the best head and the focus token's row."""
    from attnlab.viz import compare_view_html

    best = cmp.best
    return compare_view_html(
        cmp.cache_a.weights.double().numpy(), cmp.cache_b.weights.double().numpy(),
        cmp.cache_a.tokens, cmp.cache_b.tokens, names=("A", "B"), texts=(cmp.text_a, cmp.text_b),
        layer=best.layer, head=best.head if best.head is not None else cmp.cache_a.num_heads,
        query=cmp.focus_a, title=f"{cmp.cache_a.model}: where does {cmp.focus!r} look?", path=path)


def compare_matrix(cmp: Comparison, top: int = 3) -> tuple[Any, list[str], list[str]]:
    """Rows: the focus token's attention in A and in B for the ``top`` heads; columns: tokens.

    When both texts have the same number of tokens the columns are every token (differing ones
    labelled "a / b"); otherwise only the candidates.
    """
    import numpy as np

    a, b = cmp.cache_a, cmp.cache_b
    heads = cmp.heads[:top]
    same = len(a.tokens) == len(b.tokens)
    if same:
        cols_a, cols_b = list(range(len(a.tokens))), list(range(len(b.tokens)))
        labels = [x if x == y else f"{x} / {y}" for x, y in zip(a.tokens, b.tokens, strict=True)]
    else:
        cols_a, cols_b, labels = cmp.pos_a, cmp.pos_b, list(cmp.candidates)
    rows, names = [], []
    for h in heads:
        assert h.head is not None
        rows.append(a.weights[h.layer, h.head, cmp.focus_a, cols_a].double().numpy())
        rows.append(b.weights[h.layer, h.head, cmp.focus_b, cols_b].double().numpy())
        names += [f"L{h.layer} H{h.head}  A: {_last_word(cmp.text_a)}",
                  f"L{h.layer} H{h.head}  B: {_last_word(cmp.text_b)}"]
    return np.stack(rows), names, labels


def _last_word(text: str) -> str:
    words = text.strip().rstrip(".!?").split()
    return words[-1] if words else text


def compare_png(cmp: Comparison, path: str | Path, *, top: int = 3) -> Path:
    """Heatmap of the focus token's row for the top heads, A above B (a static compare picture)."""
    from attnlab.viz import heatmap

    m, rows, cols = compare_matrix(cmp, top)
    cands = " vs ".join(repr(c) for c in cmp.candidates[:2])
    heatmap(m, q_tokens=rows, k_tokens=cols, value_label=f"attention from {cmp.focus!r}",
            title=f"{cmp.cache_a.model}: attention from {cmp.focus!r}, top heads by shift ({cands})",
            path=path)
    return Path(path)


def heads_png(scores: dict[str, Any], path: str | Path, *, model: str = "") -> Path:
    """One layers x heads heatmap per detector (``HeadScores.scores``), side by side."""
    from attnlab.viz import heatmap, save_figure
    from attnlab.viz.figure import new_figure

    names = list(scores)
    mats = [scores[d].double().numpy() for d in names]  # each (L, H)
    L, H = mats[0].shape
    fig = new_figure(min(3.0 + 1.6 * H * len(names) / 9, 30.0), 1.5 + 0.22 * L)
    for i, (d, m) in enumerate(zip(names, mats, strict=True)):
        ax = fig.add_subplot(1, len(names), i + 1)
        heatmap(m, q_tokens=[str(x) for x in range(L)], k_tokens=[str(h) for h in range(H)], title=d,
                vmin=0.0, vmax=1.0, show_values=False, colorbar=i == len(names) - 1, value_label="score",
                ax=ax)
        ax.set_xlabel("head")
        ax.set_ylabel("layer" if i == 0 else "")
    fig.suptitle(f"{model}: head scores (layers x heads)", x=0.01, ha="left", fontsize=11)
    return save_figure(fig, path)

"""Pictures and offline pages of an LLM's generation and of the prompt experiment (viz calls)."""

from __future__ import annotations

from pathlib import Path

from attnlab.inspect.llm.capture_file import Capture
from attnlab.inspect.llm.generation import Generation
from attnlab.inspect.llm.prompt_effect import PromptEffect

LONG = 64  # answer tokens past which generation_png draws panels (long_generation_png.py)


def as_capture(g: Generation | Capture) -> Capture:
    return g if isinstance(g, Capture) else Capture.from_generation(g)


def generation_png(
    g: Generation | Capture, path: str | Path, *, layer: int | None = None, head: int | None = None
) -> Path:
    from attnlab.viz import heatmap

    c = as_capture(g)
    w = c.answer_rows(layer, head).numpy()  # (T, N)
    labels = c.labels[: w.shape[1]]
    which = ("all layers" if layer is None else f"layer {layer}") + (
        ", mean of heads" if head is None else f", head {head}"
    )
    title = f"{c.model}: what each generated token attended to ({which})"
    if w.shape[0] > LONG:  # one heatmap would shrink each cell to a pixel: panels instead
        from attnlab.inspect.llm.long_generation_png import long_generation_png

        return long_generation_png(w, c.labels, c.prompt_len, path, title)
    heatmap(
        w,
        q_tokens=c.labels[c.prompt_len : c.prompt_len + w.shape[0]],
        k_tokens=labels,
        title=title,
        path=path,
    )
    return Path(path)


def page_limit(n_positions: int, n_layers: int, n_heads: int) -> str | None:
    """Why a generation page of this size cannot be written (viz's limits), or None."""
    from attnlab.viz.html.generation import MAX_GENERATION_TOKENS, MAX_GENERATION_VALUES

    values = n_layers * n_heads * n_positions * (n_positions + 1) // 2
    if n_positions + 1 <= MAX_GENERATION_TOKENS and values <= MAX_GENERATION_VALUES:
        return None
    return (f"--html: {n_positions} positions x {n_layers} layers x {n_heads} heads ({values:,} weights) are "
            f"more than one offline page holds ({MAX_GENERATION_VALUES:,} weights, {MAX_GENERATION_TOKENS} "
            f"tokens); capture fewer with --layers/--heads (e.g. --layers 0,15,29) or generate fewer tokens")


def generation_page(g: Generation | Capture, path: str | Path) -> Path:
    as_capture(g).page(path)
    return Path(path)


def share_png(eff: PromptEffect, path: str | Path) -> Path:
    from attnlab.viz import heatmap, save_figure

    s = eff.share.T.numpy()  # (L, T)
    answer = eff.augmented.generation.new_labels[: s.shape[1]]
    fig = heatmap(
        s,
        q_tokens=[f"L{i}" for i in range(s.shape[0])],
        k_tokens=answer,
        title=f"share of attention on the added words {eff.added_text!r} (mean of heads)",
        value_label="share of attention",
        cmap="Reds",
    )
    fig.axes[0].set_xlabel("generated token")
    fig.axes[0].set_ylabel("layer")
    return save_figure(fig, path)


def share_page(eff: PromptEffect, path: str | Path) -> Path:
    from attnlab.viz import token_share_html

    g = eff.augmented.generation
    s = eff.share.numpy()  # (T, L)
    token_share_html(
        g.new_labels[: s.shape[0]],
        s,
        prompt_labels=g.prompt.labels,
        highlight=eff.added_positions,
        layers=list(range(s.shape[1])),
        uniform=eff.uniform[: s.shape[0]],
        title=f"{g.model}: how much each answer token attended to {eff.added_text!r}",
        path=path,
    )
    return Path(path)

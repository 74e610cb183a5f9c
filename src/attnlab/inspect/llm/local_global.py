"""Global versus local attention in a model trained with both: Gemma 3's layout, changed.

Luong et al. 2015 contrast global attention (every source position) with local attention (a
window); Gemma 3 (Gemma Team 2025, §2.1) interleaves five sliding-window layers (512 keys) with
one global layer to shrink the KV cache, and reports that perplexity barely moves with the
window. This experiment asks the trained model the same question: perplexity on a long text
(one teacher-forced pass each) with the layout as trained, every layer global, every layer
local, and the local layers' window halved and doubled — each layer keeps its RoPE base.

Each variant is compared with the trained layout on the same tokens: the paired difference of
mean NLL with a 95 % block-bootstrap interval (blocks of ``block`` consecutive tokens resampled,
since neighbouring tokens' losses are correlated; ``attnlab.inspect.stats``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnlab.inspect.llm.streaming import default_backend, default_text, text_ids, token_nll
from attnlab.inspect.stats import Effect, effect
from attnlab.models.contract import as_causal_lm
from attnlab.models.loading import LoadedModel


@dataclass(frozen=True)
class LayoutRow:
    name: str
    windows: list[int | None]  # keys per query, per layer (None = global)
    nll: float  # mean over scored tokens, nats
    nll_far: float  # tokens past the longest window tried (beyond every local window)
    vs_trained: Effect | None  # paired NLL difference to the trained layout (None for itself)
    seconds: float
    nll_tokens: Tensor = field(repr=False)  # (N-1,)

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "windows": self.windows, "ppl": round(self.ppl, 4),
                "nll": round(self.nll, 5), "ppl_far": round(math.exp(self.nll_far), 4),
                "vs_trained": None if self.vs_trained is None else self.vs_trained.to_dict(),
                "seconds": round(self.seconds, 2)}


@dataclass(frozen=True)
class LocalGlobalResult:
    model: str
    n_tokens: int
    far_from: int  # nll_far scores targets at positions >= this
    block: int
    rows: list[LayoutRow]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "n_tokens": self.n_tokens, "far_from": self.far_from,
                "block": self.block, "rows": [r.to_dict() for r in self.rows]}


def layouts(trained: Sequence[int | None]) -> dict[str, list[int | None]]:
    """The variants: as trained, all global, all local (trained window), window / 2, window x 2."""
    w = next((x for x in trained if x is not None), None)
    if w is None:
        raise ValueError("model: expected a model with local (sliding-window) layers, e.g. gemma3; every "
                         "layer of this one is global")
    return {
        "as trained": list(trained),
        "every layer global": [None] * len(trained),
        f"every layer local ({w})": [w] * len(trained),
        f"local window halved ({w // 2})": [None if x is None else max(1, x // 2) for x in trained],
        f"local window doubled ({2 * w})": [None if x is None else 2 * x for x in trained],
    }


@torch.inference_mode()
def local_global_experiment(lm: LoadedModel, source: str | Sequence[int] | Tensor | None = None, *,
                            tokens: int = 2048, block: int = 64, backend: str | None = None,
                            seed: int = 0) -> LocalGlobalResult:
    """Perplexity of ``lm`` (a model with local layers) on ``tokens`` tokens of ``source``
    (default: CPython's reference manual, as ``attnlab streaming``) under each layout.
    ``backend`` None: tiled on the CPU, auto elsewhere (streaming.default_backend)."""
    model = as_causal_lm(lm.model, "--model")
    backend = default_backend(model) if backend is None else backend
    ids = text_ids(lm, default_text() if source is None else source, tokens)  # (N,)
    variants = layouts([model.layer_window(i) for i in range(model.num_layers)])
    far = max(w for ws in variants.values() for w in ws if w is not None)
    n = ids.numel()
    if n < far + 2 * block:
        raise ValueError(f"tokens: expected at least {far + 2 * block} (past the doubled window {far}, "
                         f"plus two blocks of {block}), got {n}")
    usable = (n - 1) // block * block  # whole blocks of targets for the bootstrap
    rows: list[LayoutRow] = []
    base: Tensor | None = None
    for name, windows in variants.items():
        t0 = time.perf_counter()
        nll = token_nll(model, ids.view(1, -1), layer_windows=windows,
                        backend=backend)[0].double().cpu()  # (N-1,)
        secs = time.perf_counter() - t0
        vs = None
        if base is not None:
            a = base[:usable].view(-1, block).numpy()  # (P blocks, S tokens)
            vs = effect(a, nll[:usable].view(-1, block).numpy(), seed=seed)  # (T,) -> (P, S)
        else:
            base = nll
        rows.append(LayoutRow(name, windows, float(nll.mean()), float(nll[far - 1:].mean()), vs, secs,
                              nll.float()))
    return LocalGlobalResult(lm.name, n, far, block, rows)


def local_global_png(res: LocalGlobalResult, path: str | Path) -> Path:
    """Perplexity per layout, with the 95 % interval of its NLL difference to the trained layout."""
    from attnlab.viz.figure import check_path, new_figure, save_figure

    p = check_path(path, "png")
    fig = new_figure(8, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    base = res.rows[0].nll
    names = [r.name for r in res.rows]
    ppl = [r.ppl for r in res.rows]
    lo = [r.ppl - math.exp(base + (r.vs_trained.low if r.vs_trained else 0.0)) for r in res.rows]
    hi = [math.exp(base + (r.vs_trained.high if r.vs_trained else 0.0)) - r.ppl for r in res.rows]
    ax.barh(names, ppl, xerr=[[max(0.0, x) for x in lo], [max(0.0, x) for x in hi]], color="tab:blue",
            capsize=3)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set(xlabel=f"perplexity on {res.n_tokens} tokens, log scale (bars: 95 % interval of the change)",
           title=f"{res.model}: local vs global layers")
    return save_figure(fig, p)

"""Activation patching (causal tracing): which activations carry the difference between a clean
and a corrupted prompt?

Meng et al. 2022 ("Locating and Editing Factual Associations in GPT", causal tracing) and Wang et
al. 2022 ("Interpretability in the Wild", path patching's simpler cousin): run the corrupted
prompt, but at one site (a layer's residual stream at one position, a layer's attention or MLP
output at one position, or one head's output z) put back the clean run's activation, and read a
metric — by default the logit difference between the clean answer and the corrupted one at the
last position. The score is normalised: 0 = the corrupted run's metric, 1 = the clean run's.

Every patched run of one layer goes in one batch (one row per position or per head), so a
layer costs one forward pass. Sites are reached by hook name (``model.hook_name``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnlab.arguments import expect_int
from attnlab.inspect.llm.lens import input_ids
from attnlab.models.contract import CausalLM, as_causal_lm
from attnlab.models.loading import LoadedModel
from attnlab.models.tokenizer import Encoded

Metric = Callable[[Tensor], Tensor]  # logits (B, V) at the read position -> (B,)
POSITION_SITES = ("resid_pre", "attn_out", "mlp_out", "resid_post")


def logit_diff(answer: int, wrong: int) -> Metric:
    """logit[answer] - logit[wrong] per row: the metric of Wang et al. 2022 (IOI)."""

    def metric(logits: Tensor) -> Tensor:  # (B, V) -> (B,)
        return logits[:, answer] - logits[:, wrong]

    return metric


@dataclass
class PatchingResult:
    """``scores[layer, j]``: the normalised metric with the clean activation at (layer, j), j a
    position or a head (and ``[layer, head, position]`` for per-head-and-position patching)."""

    site: str  # "resid_pre" | "attn_out" | "mlp_out" | "resid_post" | "head" | "head_position"
    scores: Tensor  # (layers, positions) | (layers, heads) | (layers, heads, positions)
    raw: Tensor  # the metric itself, same shape
    clean: float  # the metric on the clean prompt
    corrupted: float  # the metric on the corrupted prompt
    tokens: list[str]  # labels of the corrupted prompt

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "clean": self.clean, "corrupted": self.corrupted,
                "tokens": self.tokens,  # scores: one flat list per layer, (heads x positions) row-major
                "scores": [[round(float(v), 6) for v in row.flatten()] for row in self.scores]}

    def plot(self, path: str | Path | None = None) -> Any:
        """A layers x positions (or heads) heatmap: 1 = the clean run's metric restored."""
        from attnlab.viz import heatmap, save_figure

        grid = self.scores if self.scores.ndim == 2 else self.scores.abs().amax(-1)  # (layers, cols)
        cols = self.tokens if self.site in POSITION_SITES else [f"H{h}" for h in range(grid.shape[1])]
        fig = heatmap(grid.numpy(), q_tokens=[f"L{i}" for i in range(grid.shape[0])], k_tokens=cols,
                      cmap="RdBu_r", vmin=-1.0, vmax=1.0, value_label="patched effect (1 = clean)",
                      title=f"activation patching: {self.site}")
        ax = fig.axes[0]
        ax.set_ylabel("layer")
        ax.set_xlabel("position patched" if self.site in POSITION_SITES else "head patched")
        if path is not None:
            save_figure(fig, path)
        return fig


def _patcher(site: str, src: Tensor, n: int, H: int) -> tuple[Callable[[Tensor, object], Tensor], int]:
    """The hook that puts the clean activation ``src`` ((L, E), or (H, L, Dh) for z) into one
    row of the patched batch per (position | head | head and position), and the batch size."""
    if site in POSITION_SITES:
        def patch(x: Tensor, _h: object) -> Tensor:
            x = x.clone()  # (n, L, E): row r patches position r
            r = torch.arange(n, device=x.device)
            x[r, r] = src[r].to(x.dtype)
            return x

        return patch, n
    if site == "head":
        def patch_head(x: Tensor, _h: object) -> Tensor:
            x = x.clone()  # (H, H, L, Dh): row r patches head r at every position
            r = torch.arange(H, device=x.device)
            x[r, r] = src.to(x.dtype)
            return x

        return patch_head, H

    def patch_head_position(x: Tensor, _h: object) -> Tensor:
        x = x.clone()  # (H·n, H, L, Dh): row h·n + p patches head h at position p
        at = torch.arange(H * n, device=x.device)  # (H·n,) the patched rows
        hh, pp = at // n, at % n  # (H·n,) each: row h·n + p patches head h at position p
        x[at, hh, pp] = src[hh, pp].to(x.dtype)
        return x

    return patch_head_position, H * n


def _read(model: CausalLM, ids: Tensor, metric: Metric, pos: int, hooks: list[Any]) -> Tensor:
    keep = ids.shape[1] - pos % ids.shape[1]  # logits from the read position on only
    with model.hooks(hooks):
        logits = model(ids, logits_to_keep=keep).logits  # (B, keep, V)
    assert logits is not None
    return metric(logits[:, 0].double())  # (B,)


@torch.inference_mode()
def activation_patching(lm: LoadedModel, clean: str | Encoded | Tensor, corrupted: str | Encoded | Tensor,
                        metric: Metric, *, site: str = "resid_pre", position: int = -1) -> PatchingResult:
    """Patch the clean activation at every (layer, position) of ``site`` ("resid_pre",
    "attn_out", "mlp_out", "resid_post"), or of every head's output z ("head": all positions of
    one head; "head_position": one head at one position) into the corrupted run."""
    model = as_causal_lm(lm.model, "--model")
    a, b = input_ids(lm, clean, "clean"), input_ids(lm, corrupted, "corrupted")
    if a.shape != b.shape:
        raise ValueError(f"corrupted: expected as many tokens as the clean prompt ({a.shape[1]}), got "
                         f"{b.shape[1]}; activation patching pairs positions one to one")
    if site not in (*POSITION_SITES, "head", "head_position"):
        raise ValueError(f"site: expected one of {', '.join((*POSITION_SITES, 'head', 'head_position'))}, "
                         f"got {site!r}")
    n = a.shape[1]
    expect_int("position", position, -n, n - 1)
    hook_site = "attn.z" if site.startswith("head") else site
    names = [model.hook_name(i, hook_site) for i in range(model.num_layers)]
    _, cache = model.run_with_cache(a, names_filter=names)
    m_clean = float(_read(model, a, metric, position, [])[0])
    m_corr = float(_read(model, b, metric, position, [])[0])
    H = model.num_heads
    rows: list[Tensor] = []
    for name in names:
        patch, batch = _patcher(site, cache[name][0], n, H)
        vals = _read(model, b.expand(batch, n), metric, position, [(name, patch)])  # (batch,)
        rows.append(vals if site != "head_position" else vals.view(H, n))  # (H*n,) -> (H, n)
    raw = torch.stack(rows).cpu()  # (layers, positions | heads) or (layers, heads, positions)
    span = m_clean - m_corr
    if abs(span) < 1e-9:
        raise ValueError(f"corrupted: the metric is the same on both prompts ({m_clean:.4g}); nothing to "
                         f"restore — choose a corruption that changes the answer")
    labels = lm.tokenizer.encode_ids(b[0].tolist(), "").labels
    return PatchingResult(site, ((raw - m_corr) / span).float(), raw.float(), m_clean, m_corr, labels)

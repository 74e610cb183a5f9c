"""Every attention of a Transformer by name, and per-head masks for ablation and pruning.

Sites are named ``encoder.<layer>.self``, ``decoder.<layer>.self``, ``decoder.<layer>.cross``
(the translator) and ``layers.<layer>.self`` (the LM). :func:`head_mask` multiplies head h's
context z_h (B, H, Lq, Dh) at a site by ``mask[h]`` through that attention's ``hook_z``, for
the duration of a ``with`` block and nothing after: 0 ablates a head, a tensor that requires
grad gives Michel et al. 2019's importance scores (|∂L/∂ξ_h|), a 0/1 mask prunes (Voita et
al. 2019 prune by such masks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.modules.hooks import HookedModel
from attnlab.modules.multihead import MultiHeadAttention


@dataclass(frozen=True)
class AttentionSite:
    name: str  # "decoder.1.cross"
    stack: str  # encoder | decoder | layers
    layer: int
    kind: str  # self | cross
    module: MultiHeadAttention

    @property
    def heads(self) -> int:
        return self.module.num_heads


def attention_sites(model: nn.Module) -> list[AttentionSite]:
    """The attentions of a Transformer or TransformerLM in forward order (encoder first), found
    by their named hook points (``<stack>.<layer>.<kind>_attn.hook_z``)."""
    if not isinstance(model, HookedModel):
        raise ValueError(f"model: expected a Transformer or TransformerLM (layers with "
                         f"self_attn), got {type(model).__name__}")
    modules = dict(model.named_modules())
    sites = []
    for name in model.hook_points:
        parts = name.split(".")  # stack, layer, self_attn | cross_attn, hook_z
        if len(parts) == 4 and parts[3] == "hook_z" and parts[2] in ("self_attn", "cross_attn"):
            m = modules[".".join(parts[:3])]
            assert isinstance(m, MultiHeadAttention)
            sites.append(AttentionSite(f"{parts[0]}.{parts[1]}.{parts[2][:-5]}", parts[0],
                                       int(parts[1]), parts[2][:-5], m))
    if not sites:
        raise ValueError(f"model: expected a Transformer or TransformerLM (layers with "
                         f"self_attn), got {type(model).__name__}")
    order = {"encoder": 0, "decoder": 1, "layers": 2}
    return sorted(sites, key=lambda s: (order.get(s.stack, 3), s.layer, s.kind != "self"))


@contextlib.contextmanager
def head_mask(model: nn.Module, masks: Mapping[str, Tensor]) -> Iterator[None]:
    """``with head_mask(model, {"decoder.0.cross": torch.tensor([1., 0., 1., 1.])}): ...``"""
    sites = {s.name: s for s in attention_sites(model)}
    assert isinstance(model, HookedModel)  # attention_sites checked it
    hooks = []
    for name, m in masks.items():
        if name not in sites:
            raise ValueError(f"masks: unknown attention {name!r}; expected some of "
                             f"{', '.join(sites)}")
        h = sites[name].heads
        if not isinstance(m, Tensor) or m.shape != (h,):
            got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(f"masks[{name!r}]: expected a tensor of shape ({h},), one "
                             f"multiplier per head, got {got}")

        def hook(z: Tensor, _hook: object, m: Tensor = m) -> Tensor:
            return z * m.to(z.dtype).view(1, -1, 1, 1)  # (B, H, Lq, Dh) · (1, H, 1, 1)

        site = sites[name]
        hooks.append((f"{site.stack}.{site.layer}.{site.kind}_attn.hook_z", hook))
    with model.hooks(hooks):
        yield


def ablation_masks(model: nn.Module, heads: list[tuple[str, int]]) -> dict[str, Tensor]:
    """Masks that zero the listed (site, head) pairs and keep every other head."""
    sites = {s.name: s for s in attention_sites(model)}
    out: dict[str, Tensor] = {}
    for name, head in heads:
        if name not in sites:
            raise ValueError(f"heads: unknown attention {name!r}; expected some of {', '.join(sites)}")
        n = sites[name].heads
        if not 0 <= head < n:
            raise ValueError(f"heads: {name} has heads 0..{n - 1}, got {head}")
        out.setdefault(name, torch.ones(n))[head] = 0.0
    return out

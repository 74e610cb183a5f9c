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
    """The attentions of a Transformer or TransformerLM in forward order (encoder first)."""
    sites = []
    for stack in ("encoder", "decoder", "layers"):
        layers = getattr(model, stack, None)
        if not isinstance(layers, nn.ModuleList):
            continue
        for i, layer in enumerate(layers):
            for kind in ("self", "cross"):
                m = getattr(layer, f"{kind}_attn", None)
                if isinstance(m, MultiHeadAttention):
                    sites.append(AttentionSite(f"{stack}.{i}.{kind}", stack, i, kind, m))
    if not sites:
        raise ValueError(f"model: expected a Transformer or TransformerLM (layers with "
                         f"self_attn), got {type(model).__name__}")
    return sites


@contextlib.contextmanager
def head_mask(model: nn.Module, masks: Mapping[str, Tensor]) -> Iterator[None]:
    """``with head_mask(model, {"decoder.0.cross": torch.tensor([1., 0., 1., 1.])}): ...``"""
    sites = {s.name: s for s in attention_sites(model)}
    handles = []
    try:
        for name, m in masks.items():
            if name not in sites:
                raise ValueError(f"masks: unknown attention {name!r}; expected some of "
                                 f"{', '.join(sites)}")
            h = sites[name].heads
            if not isinstance(m, Tensor) or m.shape != (h,):
                got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                raise ValueError(f"masks[{name!r}]: expected a tensor of shape ({h},), one "
                                 f"multiplier per head, got {got}")

            def hook(_mod: nn.Module, _inp: object, z: Tensor, m: Tensor = m) -> Tensor:
                return z * m.to(z.dtype).view(1, -1, 1, 1)  # (B, H, Lq, Dh) · (1, H, 1, 1)

            handles.append(sites[name].module.hook_z.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


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

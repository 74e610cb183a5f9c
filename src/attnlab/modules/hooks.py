"""Hook points: identity modules placed where users may read or patch activations.

Register standard PyTorch forward hooks on them (``module.hook_z.register_forward_hook``);
a hook that returns a tensor replaces the activation, which is how heads are ablated or
patched (TransformerLens calls these HookPoints).
"""

from __future__ import annotations

from torch import Tensor, nn


class HookPoint(nn.Identity):
    def forward(self, x: Tensor) -> Tensor:
        return x

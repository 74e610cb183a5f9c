"""RMSNorm (Zhang & Sennrich 2019) with its scale exposed as a hook point.

``y = x · rsqrt(mean(x²) + eps) · (offset + w)``. The scale ``rsqrt(mean(x²) + eps)``, one number
per position, is what a logit lens or direct logit attribution must reuse to read an earlier
residual stream through the final norm (TransformerLens's ``ln_final.hook_scale``): it passes
through ``hook_scale`` (B, L, 1). ``offset`` 1 is Gemma's (1 + w) form, whose weights are stored
around 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.modules.hooks import HookPoint


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6, *, offset: float = 0.0) -> None:
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.ones(dim) if offset == 0 else torch.zeros(dim))
        self.hook_scale = HookPoint()  # (..., 1): rsqrt(mean(x²) + eps)

    def scale(self, x: Tensor) -> Tensor:
        """rsqrt(mean(x²) + eps) over the last dim, computed in float32 at least (as HF does)."""
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., 1)

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        w = self.weight if self.offset == 0 else self.weight + self.offset
        if not self.hook_scale.active:  # torch's fused kernel (~2x faster than the three ops below)
            return F.rms_norm(xf, (xf.shape[-1],), w.to(xf.dtype), self.eps).to(x.dtype)
        y = xf * self.hook_scale(self.scale(xf))  # (..., E)
        return (y * w.to(y.dtype)).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, offset={self.offset}"

"""Checks shared by the test-suite and by anyone adding a backend.

The tolerance rule is FlashAttention's: a kernel's error against a float64 reference may be
at most ``factor`` times the error of the plain eager reference run in the kernel's dtype,
plus a small absolute floor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

FLOORS = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-3, torch.float16: 1e-4}


def max_err(a: Tensor, b: Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_error_ratio(out: Tensor, ref64: Tensor, eager_lowp: Tensor, *, factor: float = 2.0,
                       floor: float | None = None, what: str = "output") -> None:
    """|out - ref64| <= factor · |eager_lowp - ref64| + floor  (max norms)."""
    if out.shape != ref64.shape:
        raise AssertionError(f"{what}: shape {tuple(out.shape)} != reference {tuple(ref64.shape)}")
    fl = FLOORS.get(out.dtype, 1e-6) if floor is None else floor
    e_k, e_ref = max_err(out, ref64), max_err(eager_lowp, ref64)
    if not e_k <= factor * e_ref + fl:
        raise AssertionError(
            f"{what}: error {e_k:.3g} vs float64 exceeds {factor}x eager's {e_ref:.3g} + {fl:.1g}"
        )



def naive_attention(q, k, v, allowed=None, bias=None, scale=None):
    """Deliberately naive float64 attention, loop by loop from the definition (slow: tests only).

    q (B,H,Lq,D), k/v (B,Hkv,Lk,*); allowed bool (B,H,Lq,Lk) or None. float64 loops."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[-1]
    s = 1 / math.sqrt(D) if scale is None else scale
    allowed = None if allowed is None else allowed.expand(B, H, Lq, Lk)
    bias = None if bias is None else bias.expand(B, H, Lq, Lk)
    ctx = torch.zeros(B, H, Lq, Dv, dtype=torch.float64)
    w = torch.zeros(B, H, Lq, Lk, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            hk = h // (H // Hkv)
            for i in range(Lq):
                keys = [j for j in range(Lk) if allowed is None or bool(allowed[b, h, i, j])]
                if not keys:
                    continue
                extra = (lambda j: 0.0) if bias is None else (lambda j: float(bias[b, h, i, j]))  # noqa: B023
                sc = {j: float(q[b, h, i] @ k[b, hk, j]) * s + extra(j) for j in keys}
                m = max(sc.values())
                z = sum(math.exp(x - m) for x in sc.values())
                for j in keys:
                    w[b, h, i, j] = math.exp(sc[j] - m) / z
                    ctx[b, h, i] += w[b, h, i, j] * v[b, hk, j]
    return ctx, w

"""Non-finite values at keys some rows may not see.

A kernel computes context = P·V as one matmul, so a NaN/inf stored in V at key j reaches every
row through 0·NaN = NaN, including rows that may not attend j (a causal row i < j, say). Kernels
can only zero keys that *no* row sees. The exact rule, on every backend: a key whose weight is
zero contributes nothing, whatever its value. Here (only when V holds a non-finite value):

1. run the backend with those keys' values zeroed: correct for every row that cannot see them;
2. add, for the bad keys J only, Σ_{j∈J, w_ij≠0} w_ij·v_j, with w recomputed from the lse
   (weights.py): rows that do see a NaN/inf value get it, as they should.

Cost: O(Lq·Lk) score recomputation in row chunks, only on this rare path. With dropout active
the correction uses undropped weights (it only matters for rows that see a non-finite value).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from attnlab.backends.registry import AttentionCall, Backend, get_backend
from attnlab.backends.weights import weights_rows
from attnlab.functional.attention import AttentionOutput, expand_kv

ROW_CHUNK_ELEMS = 1 << 24  # weights recomputed per chunk: rows · heads · Lk at most this


def values_finite(v: Tensor) -> bool:
    """One cheap pass (a sum is finite only if every term is; an overflow merely takes the slower
    exact path). torch.isfinite(v).all() is ~30x slower on a CPU; and the sum's test is made on
    the Python number (torch.isfinite of one element costs ~10 us: a decode step calls this
    once per layer)."""
    return math.isfinite(float(v.detach().sum()))


def run_with_nonfinite_values(backend: Backend, call: AttentionCall) -> AttentionOutput:
    bad = ~torch.isfinite(call.v).all(-1)  # (B, Hkv, Lk) keys whose value holds NaN/inf
    if not bool(bad.any()):
        return backend.run(replace(call, v_finite=True))  # the sum merely overflowed
    clean = call.v.masked_fill(bad.unsqueeze(-1), 0.0)
    out = backend.run(replace(call, v=clean, v_finite=True))
    lse = out.lse
    if lse is None:  # a backend without lse (sdpa): the reference gives it
        lse = get_backend("eager").run(replace(call, v=clean, dropout_p=0.0, return_weights=False)).lse
        assert lse is not None  # the eager reference always returns lse
    _, H, Lq, Lk = call.shape
    cols = bad.any(0).any(0).nonzero().flatten()  # (J,) keys bad in some batch/head
    v_bad = expand_kv(call.v, H)[:, :, cols]  # (B, H, J, Dv)
    bad_h = expand_kv(bad.unsqueeze(-1), H)[:, :, cols]  # (B, H, J, 1)
    dev = call.q.device
    zero = torch.zeros((), dtype=v_bad.dtype, device=dev)
    v_bad = torch.where(bad_h, v_bad, zero)  # finite there: counted already
    heads = torch.arange(H, device=dev)
    step = max(1, ROW_CHUNK_ELEMS // max(1, H * Lk))
    parts = []
    for r0 in range(0, Lq, step):
        rows = torch.arange(r0, min(Lq, r0 + step), device=dev)
        w = weights_rows(call.q, call.k, lse, call.mask, call.score_mod, call.scale, rows, heads)
        w = w[..., cols].unsqueeze(-1)  # (B, H, r, J, 1)
        # where inside the product, not around it: 0·NaN would poison the gradient of w.
        term = w * torch.where(w != 0, v_bad.unsqueeze(2), zero.to(w.dtype))  # (B,H,r,J,Dv)
        parts.append(term.sum(-2))  # (B, H, r, Dv)
    # The correction comes from the float32 lse of half inputs: back to the context's dtype.
    return AttentionOutput(out.context + torch.cat(parts, dim=2).to(out.context.dtype), out.weights, out.lse)

"""The reference backend: plain PyTorch, materialises scores, returns weights and lse.

Before it runs, it checks that the (B, H, Lq, Lk) scores can fit in the memory available: at a
length that cannot, it raises :class:`EagerMemoryError` naming the shapes, the bytes needed and
the backends that do not materialise the scores, instead of a raw allocator error.
"""

from __future__ import annotations

import math
import os

import torch

from attnlab.backends.registry import AttentionCall, Backend, Capabilities, register_backend
from attnlab.functional.attention import AttentionOutput, compute_dtype, reference_attention
from attnlab.functional.mask_input import allowed_dense

# The reference holds the scores and the weights (same size) at once, at the least; with
# autograd it keeps more. Two copies is what certainly cannot be avoided.
MIN_SCORE_COPIES = 2


class EagerMemoryError(MemoryError, ValueError):
    """Eager attention cannot fit its (B, H, Lq, Lk) scores in the memory available."""


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """(bytes free for a new allocation, where that number comes from), or None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"torch.cuda.mem_get_info({device})"
    if device.type != "cpu":
        return None
    try:
        import psutil  # optional
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available), "psutil.virtual_memory().available"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "/proc/meminfo MemAvailable"
    except OSError:
        pass
    if hasattr(os, "sysconf"):
        try:
            n = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            return int(n), "os.sysconf(SC_AVPHYS_PAGES)"
        except (ValueError, OSError):
            pass
    return None


def check_scores_fit(call: AttentionCall) -> None:
    """Raise :class:`EagerMemoryError` when the scores eager materialises cannot fit."""
    shape = call.shape  # (B, Hq, Lq, Lk)
    dtype = compute_dtype(call.q.dtype)
    per_copy = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    need = MIN_SCORE_COPIES * per_copy
    if need < (1 << 26):  # under 64 MB: not worth asking the system
        return
    avail = available_memory(call.q.device)
    if avail is None or need <= avail[0]:
        return
    free, source = avail
    raise EagerMemoryError(
        f"q {tuple(call.q.shape)}, k {tuple(call.k.shape)}: backend 'eager' materialises the "
        f"(B, H, Lq, Lk) = {shape} scores in {dtype}: {_fmt_bytes(per_copy)} each and at least "
        f"{MIN_SCORE_COPIES} such tensors ({_fmt_bytes(need)}), but {_fmt_bytes(free)} is available "
        f"({source}). Use backend='tiled' (memory linear in the length; returns lse, and the "
        f"weights of chosen rows come from attnlab.backends.weights_for(q, k, out.lse, rows=...)) "
        f"or backend='sdpa' (no weights), or shorten the sequences / split the batch"
    )


def run_eager(call: AttentionCall) -> AttentionOutput:
    check_scores_fit(call)
    allowed = allowed_dense(call.mask, call.shape, call.q.device)
    return reference_attention(
        call.q, call.k, call.v, allowed=allowed, bias=call.mask.bias, score_mod=call.score_mod,
        scale=call.scale, dropout_p=call.dropout_p, training=call.training, v_finite=call.v_finite,
    )


def prefers_eager(call: AttentionCall) -> bool:
    """calls that ask for the weights (the only kernel that materialises them; at long lengths
    use tiled and weights_for(rows=...)) or carry a score_mod too short for tiled to take."""
    return call.return_weights or call.score_mod is not None


EAGER = register_backend(Backend(
    name="eager",
    description="reference: materialises (B,H,Lq,Lk) scores; weights, lse, score_mod, dropout",
    capabilities=Capabilities(returns_weights=True, returns_lse=True, mask_mod=True,
                              dense_mask=True, score_mod=True, dropout=True, backward=True),
    run=run_eager,
    auto_rank=50,
    prefers=prefers_eager,
))

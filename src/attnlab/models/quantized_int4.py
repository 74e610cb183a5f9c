"""Weight-only 4-bit linear layers: half of int8's bytes per token, an eighth of float32's
(issue 23). A decode step on a CPU is bound by reading the weights, so the
bytes it reads set its speed.

Each run of :data:`GROUP` inputs of a weight row gets its own scale and offset (asymmetric,
``w ≈ (q - 8)·scale + zero`` with q in [0, 15]): the layout of GGUF's Q4_1 blocks and of the
32-wide sub-blocks of its K-quants (Q4_K). A group is requantized from its own smallest and
largest value, so a Q4_1 file (whose blocks span 0..15 by construction) is read back with no error
beyond rounding the scales to bfloat16, the dtype torch's kernel takes them in; Q4_K's searched
scales often leave a group's range short of 0..15, and those groups land on another grid
(Gemma 3 270M: 1.1% mean weight error against the file, SmolLM2's Q4_1: 0.17%;
``benchmarks/llm/quantized.py``). The GPTQ/AWQ
literature calls this "group-wise" quantization (Frantar et al. 2023, Lin et al. 2024); the
rounding here is plain round-to-nearest.

The kernel is torch's ``_weight_int4pack_mm_for_cpu`` with bfloat16 activations, for passes of
up to :data:`INT4_ROWS` rows (decode steps, one row per sequence, and short prompts); more rows
(a long prompt's prefill) unpack the weight to float32 and run GEMM (bfloat16 where the CPU has
it natively, else float32: :func:`attnlab.models.quantized.long_linear`), the same split as
:mod:`attnlab.models.quantized`'s int8. torch packs the 4-bit values in an order
that depends on the machine's vector width; :func:`packing_block` finds it once by packing a
probe, so that :meth:`Int4Linear.dequantized` reads back exactly what the kernel computes with.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from attnlab.models.quantized import long_linear

GROUP = 32  # inputs per scale/offset: Q4_1's block, Q4_K's sub-block
ROW_BLOCK = 64  # out_features must be a multiple of this (torch's packing interleaves row blocks)
# At most this many rows (a decode step of up to 64 sequences, a short prompt): the int4 kernel;
# more (a long prompt's prefill): unpacked weights and GEMM (quantized.long_linear); the kernel beats
# float32 GEMM at every row count up to 64 (benchmarks/llm/kernel_rows.py).
INT4_ROWS = 64


@functools.cache
def _kernels() -> tuple[Callable[..., Tensor], Callable[..., Tensor]] | None:
    """torch's CPU int4 pack and matmul (torch >= 2.6), looked up once, on first use."""
    ops = torch.ops.aten
    pack = getattr(ops, "_convert_weight_to_int4pack_for_cpu", None)
    mm = getattr(ops, "_weight_int4pack_mm_for_cpu", None)
    return None if pack is None or mm is None else (pack, mm)


def _unpack(packed: Tensor, block: int) -> Tensor:
    """torch's CPU int4 packing undone: (N, K/2) uint8 -> (N, K) uint8 in [0, 15]. Rows come in
    blocks of ``block``; within one, byte (k, j) holds row j of the block in its low nibble and
    row j + block/2 in its high nibble."""
    N, half = packed.shape
    K = 2 * half
    b = packed.view(N // block, K, block // 2)  # (N/blk, K, blk/2)
    q = torch.cat([b & 0xF, b >> 4], dim=2)  # (N/blk, K, blk): the block's rows, k-major
    return q.transpose(1, 2).reshape(N, K)  # (N, K)


@functools.cache
def packing_block() -> int | None:
    """The row-block size of torch's CPU int4 packing on this machine (64 with AVX-512, 32 with
    AVX2 in torch 2.x), found by packing a probe and reading it back; None if the kernels are
    missing or the packing is none this module reads (then int4 is refused)."""
    kernels = _kernels()
    if kernels is None:
        return None
    pack = kernels[0]
    q = torch.randint(0, 16, (2 * ROW_BLOCK, 2 * GROUP), generator=torch.Generator().manual_seed(0),
                      dtype=torch.int32)  # (N, K)
    try:
        packed = pack(q, 1)
    except RuntimeError:
        return None
    for block in (64, 32, 16, 8):
        if packed.shape == (q.shape[0], q.shape[1] // 2) and torch.equal(_unpack(packed, block).int(), q):
            return block
    return None


def int4_available() -> str | None:
    """None when int4 weights work here; otherwise why not (for an error message)."""
    if _kernels() is None:
        return f"this torch ({torch.__version__}) has no CPU int4 kernel (_weight_int4pack_mm_for_cpu)"
    if packing_block() is None:
        return "torch's CPU int4 packing on this machine is in an order attnlab does not read"
    return None


def can_hold(out_features: int, in_features: int) -> bool:
    """Can a weight of this shape be kept as int4? (Others stay int8.)"""
    return out_features % ROW_BLOCK == 0 and in_features % GROUP == 0


def quantize_groups(w: Tensor, group: int = GROUP) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric 4-bit per run of ``group`` inputs: (N, K) float -> q (N, K) int32 in [0, 15],
    scale and zero (N, K/group) bfloat16, with ``w ≈ (q - 8)·scale + zero``.

    The scale spans the group's range in 15 steps (Q4_1's choice). Rounding it to bfloat16
    (relative error up to 2^-9) shifts step q by q times that error; the zero is placed so the
    shift is centred, at most 7.5 steps' worth at either end of the range instead of 15 at one,
    and q is chosen against the rounded values."""
    N, K = w.shape
    wg = w.detach().float().view(N, K // group, group)  # (N, G, g)
    lo, hi = wg.amin(-1), wg.amax(-1)  # (N, G)
    exact = ((hi - lo) / 15).clamp_min(torch.finfo(torch.float32).tiny)  # (N, G)
    scale = exact.bfloat16()
    # the value of q = 8, minus 7.5 steps of the rounding's drift: lo + 8s' - 7.5(s' - s)
    zero = (lo + 0.5 * scale.float() + 7.5 * exact).bfloat16()  # (N, G)
    q = torch.round((wg - zero.float()[..., None]) / scale.float()[..., None] + 8).clamp_(0, 15)  # (N, G, g)
    return q.to(torch.int32).view(N, K), scale, zero


class Int4Linear(nn.Module):
    """``y = x Wᵀ + b`` with W kept as 4-bit groups (torch's CPU packing) and their bfloat16
    scales and zeros. Inference only."""

    packed: Tensor  # (N, K/2) uint8, torch's CPU int4 layout
    scales_zeros: Tensor  # (K/GROUP, N, 2) bfloat16: the kernel's scale and zero per group
    bias: Tensor | None  # (N,) float32

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        super().__init__()
        why = int4_available()
        if why is not None:
            raise ValueError(f"weights: int4 is not available: {why}; use 'int8'")
        N, K = weight.shape
        if not can_hold(N, K):
            raise ValueError(f"weight: expected (N, K) with N a multiple of {ROW_BLOCK} and K of {GROUP} "
                             f"for int4, got {(N, K)}")
        q, scale, zero = quantize_groups(weight)
        kernels = _kernels()
        assert kernels is not None  # int4_available() said so
        self.register_buffer("packed", kernels[0](q, 1))  # (N, K/2) uint8
        self.register_buffer("scales_zeros", torch.stack([scale, zero], -1).transpose(0, 1).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.out_features, self.in_features = N, K

    @classmethod
    def from_linear(cls, m: nn.Linear) -> Int4Linear:
        return cls(m.weight, m.bias)

    @classmethod
    def stack_rows(cls, layers: Sequence[Int4Linear]) -> tuple[Int4Linear, tuple[str, ...]]:
        """One Int4Linear computing all of ``layers`` (same input) at once (the int8 twin's
        contract, :meth:`attnlab.models.quantized.Int8Linear.stack_rows`). Rows come in whole
        packing blocks (N a multiple of :data:`ROW_BLOCK`), so the packed rows stack as they are;
        each layer's packed rows become a view of its slice. The scales stack along their N
        dimension (dim 1), where a slice is strided and the kernel reads its scales as if
        contiguous: each layer keeps its own (small) copy of them, so an in-place edit of one
        layer's scales does not reach the stack."""
        if len({m.in_features for m in layers}) != 1 or len({m.bias is None for m in layers}) != 1:
            raise ValueError(f"layers: expected Int4Linears with one in_features and all or no biases, got "
                             f"{[(m.in_features, m.bias is not None) for m in layers]}")
        stack = cls.__new__(cls)
        nn.Module.__init__(stack)
        stack.register_buffer("packed", torch.cat([m.packed for m in layers]))  # (ΣN, K/2)
        sz = torch.cat([m.scales_zeros for m in layers], dim=1)  # (G, ΣN, 2)
        stack.register_buffer("scales_zeros", sz)
        stack.register_buffer("bias", None if layers[0].bias is None
                              else torch.cat([m.bias for m in layers]))  # type: ignore[misc]
        stack.out_features, stack.in_features = stack.packed.shape[0], layers[0].in_features
        start = 0
        for m in layers:
            n = m.out_features
            m.packed = stack.packed[start : start + n]
            if m.bias is not None:
                m.bias = stack.bias[start : start + n]  # type: ignore[index]
            start += n
        names = ("packed", "scales_zeros") + (() if layers[0].bias is None else ("bias",))
        return stack, names

    def dequantized(self) -> Tensor:
        """The float32 weight the kernel computes with: (N, K). Written into one buffer in place
        (a prefill reads every weight this way: ~5x faster than the plain expression)."""
        block = packing_block()
        assert block is not None  # checked when this layer was made
        N, K = self.out_features, self.in_features
        sz = self.scales_zeros.float()  # (G, N, 2)
        scale = sz[..., 0].T[..., None]  # (N, G, 1)
        base = sz[..., 1].T[..., None] - 8 * scale  # (N, G, 1): the value of q = 0
        b = self.packed.view(N // block, K, block // 2)  # see _unpack
        q = torch.cat([b & 0xF, b >> 4], dim=2).transpose(1, 2)  # (N/blk, blk, K) uint8, a view
        w = torch.empty(N // block, block, K, dtype=torch.float32, device=q.device)  # (N/blk, blk, K)
        w.copy_(q)
        return w.view(N, K // GROUP, GROUP).mul_(scale).add_(base).view(N, K)

    @property
    def weight(self) -> Tensor:
        """The float32 weight the 4-bit groups stand for (for code that reads ``.weight``)."""
        return self.dequantized()

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        buf = self._buffers  # the module's dict: nn.Module.__getattr__ costs ~1 us a name
        bias = buf["bias"]
        if rows <= INT4_ROWS:
            kernels = _kernels()
            sz = buf["scales_zeros"]
            assert kernels is not None and sz is not None  # checked when this layer was made
            if not sz.is_contiguous():  # the kernel ignores strides: a view would be read wrong
                sz = sz.contiguous()
            y = kernels[1](x.reshape(rows, self.in_features).to(torch.bfloat16), buf["packed"], GROUP,
                           sz).float()  # (M, N)
            if bias is not None:
                y.add_(bias)
            return y.view(*x.shape[:-1], self.out_features)
        return long_linear(x, self.dequantized(), bias)  # (..., N)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {GROUP}"

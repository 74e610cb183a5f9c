"""Weight-only int8 linear layers: an LLM's decode step reads every weight once per token, so on
a CPU it is bound by memory traffic, and int8 weights are a quarter of float32's (issue 23).

Each output row of a weight gets one scale (symmetric, per channel: w ≈ scale_n · q_nk with
q in [-127, 127]; the "LLM.int8()" vector-wise scheme of Dettmers et al. 2022 without its
outlier split). A GGUF's own 4-bit blocks are dequantized to float32 on load and requantized
here, so the error against the file's float32 reading is measured, not assumed
(``benchmarks/llm/quantized.py``).

The kernel is torch's ``_weight_int8pack_mm``, fast only with bfloat16 activations: a decode
step's rows (one per sequence), or a short prompt's, up to :data:`INT8_ROWS`, are rounded to
bfloat16 on the way in (float32 out). A longer prompt's prefill dequantizes the weight and runs
GEMM: in bfloat16 where the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX,
:func:`bf16_gemm`; ``benchmarks/llm/quantized.py`` measures its speed and perplexity), else in
float32 (``benchmarks/llm/kernel_rows.py`` times the paths by rows; prefill speed with this split
is in ``benchmarks/llm/quantized.py``). Activations outside the linear layers (norms, attention,
residual stream, every hook) stay float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.models.native_build import cpu_flags

WeightFormat = Literal["float32", "int8", "int4"]
FORMATS: tuple[str, ...] = ("float32", "int8", "int4")
# At most this many rows (a decode step of up to 32 sequences, a short prompt): the int8 kernel;
# more (a long prompt's prefill): dequantized GEMM (long_linear), which overtakes the kernel between 16
# and 64 rows (benchmarks/llm/kernel_rows.py).
INT8_ROWS = 32


def check_format(weights: object, name: str = "weights") -> WeightFormat:
    if weights not in FORMATS:
        raise ValueError(f"{name}: expected one of {list(FORMATS)}, got {weights!r}")
    return weights  # type: ignore[return-value]


def bf16_gemm() -> bool:
    """Does this CPU multiply bfloat16 natively (AVX512-BF16 or AMX)? Then a quantized layer's
    long prefill runs bfloat16 GEMM on its dequantized weight, else float32 GEMM (bfloat16
    emulated is slower than float32). False where /proc/cpuinfo cannot be read."""
    return not cpu_flags().isdisjoint({"avx512_bf16", "amx_bf16"})


def long_linear(x: Tensor, weight: Tensor, bias: Tensor | None, bf16: bool = True) -> Tensor:
    """A long prompt's pass through a dequantized float32 ``weight`` (N, K): bfloat16 GEMM where
    ``bf16`` and :func:`bf16_gemm` (activations, weights and the product each rounded once to
    bfloat16; float32 out), else float32.  x (..., K) -> (..., N) float32"""
    if not (bf16 and bf16_gemm()):
        return F.linear(x.float(), weight, bias)
    y = F.linear(x.to(torch.bfloat16), weight.to(torch.bfloat16)).float()
    return y if bias is None else y.add_(bias)


@functools.cache
def _int8_mm() -> Callable[..., Tensor] | None:
    """torch's CPU weight-only int8 matmul (torch >= 2.3), looked up once, on first use."""
    return getattr(torch.ops.aten, "_weight_int8pack_mm", None)


def quantize_rows(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: (N, K) float -> q (N, K) int8, scale (N,) float32."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)  # (N,)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)  # (N, K)
    return q, scale


class Int8Linear(nn.Module):
    """``y = x Wᵀ + b`` with W kept as int8 rows and their scales. Inference only."""

    qweight: Tensor  # (N, K) int8
    scale: Tensor  # (N,) float32
    scale_bf16: Tensor  # (N,) bfloat16
    bias: Tensor | None  # (N,) float32

    def __init__(self, weight: Tensor, bias: Tensor | None = None, *, long_bf16: bool = True) -> None:
        super().__init__()
        # long passes in bfloat16 GEMM where the CPU has it (long_linear); False for logits, whose
        # float32 rounding perplexity reads (bfloat16 GEMM rounds its output too)
        self.long_bf16 = long_bf16
        q, scale = quantize_rows(weight)
        self.register_buffer("qweight", q)  # (N, K) int8
        self.register_buffer("scale", scale)  # (N,) float32
        self.register_buffer("scale_bf16", scale.to(torch.bfloat16))  # the kernel's dtype
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.out_features, self.in_features = q.shape

    @classmethod
    def from_linear(cls, m: nn.Linear) -> Int8Linear:
        return cls(m.weight, m.bias)

    @classmethod
    def stack_rows(cls, layers: Sequence[Int8Linear]) -> tuple[Int8Linear, tuple[str, ...]]:
        """One Int8Linear computing all of ``layers`` (same input) at once: their int8 rows and
        per-row scales stacked, each layer's buffers re-pointed to its slice of the stack (no
        second copy; :mod:`attnlab.modules.fused`). Per-row scales make the stack exact: row n
        is still ``scale_n · q_n``."""
        if len({m.in_features for m in layers}) != 1 or len({m.bias is None for m in layers}) != 1:
            raise ValueError(f"layers: expected Int8Linears with one in_features and all or no biases, got "
                             f"{[(m.in_features, m.bias is not None) for m in layers]}")
        names = ("qweight", "scale", "scale_bf16") + (() if layers[0].bias is None else ("bias",))
        stack = cls.__new__(cls)
        nn.Module.__init__(stack)
        stack.long_bf16 = all(m.long_bf16 for m in layers)
        for name in names:
            stack.register_buffer(name, torch.cat([getattr(m, name) for m in layers]))  # (ΣN, ...)
        if layers[0].bias is None:
            stack.register_buffer("bias", None)
        stack.out_features, stack.in_features = stack.qweight.shape
        start = 0
        for m in layers:
            for name in names:
                setattr(m, name, getattr(stack, name)[start : start + m.out_features])
            start += m.out_features
        return stack, names

    def dequantized(self) -> Tensor:
        # into one new buffer in place: `q.float() * scale` made a second (N, K) temporary, 30x
        # slower on a 3072 x 576 weight (benchmarks/llm/kernel_rows.py, "int8 dequantized")
        w = torch.empty(self.qweight.shape, dtype=torch.float32, device=self.qweight.device)  # (N, K)
        w.copy_(self.qweight)
        return w.mul_(self.scale[:, None])

    @property
    def weight(self) -> Tensor:
        """The float32 weight the int8 rows stand for (for code that reads ``.weight``)."""
        return self.dequantized()

    def forward(self, x: Tensor) -> Tensor:
        # A decode step calls this ~120 times per token (SmolLM2): kept to the kernel and two
        # casts; buffers read from the module's dict (nn.Module.__getattr__ costs ~1 us a name).
        rows = x.numel() // self.in_features
        mm = _int8_mm() if rows <= INT8_ROWS else None
        buf = self._buffers
        bias = buf["bias"]
        if mm is not None:
            y = mm(x.reshape(rows, self.in_features).to(torch.bfloat16), buf["qweight"],
                   buf["scale_bf16"]).float()  # (M, N)
            if bias is not None:
                y.add_(bias)
            return y.view(*x.shape[:-1], self.out_features)
        return long_linear(x, self.dequantized(), bias, self.long_bf16)  # (..., N)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 rows"


def quantize_linears(model: nn.Module, weights: WeightFormat = "int8",
                     keep_8bit: Collection[str] = ()) -> int:
    """Replace every ``nn.Linear`` under ``model`` by an :class:`Int8Linear` (``"int8"``) or an
    :class:`~attnlab.models.quantized_int4.Int4Linear` (``"int4"``, where the shape allows it
    and the layer's name, relative to ``model``, is not in ``keep_8bit``; int8 elsewhere), in
    place; the number replaced."""
    from attnlab.models.quantized_int4 import Int4Linear, can_hold

    n = 0
    for path, child in list(model.named_modules()):
        if type(child) is not nn.Linear:
            continue
        four = weights == "int4" and path not in keep_8bit and can_hold(child.out_features, child.in_features)
        parent_path, _, name = path.rpartition(".")
        kind = Int4Linear if four else Int8Linear
        setattr(model.get_submodule(parent_path), name, kind.from_linear(child))
        n += 1
    return n

"""float16 / bfloat16 on every backend and in MultiHeadAttention, with large logits.

Inputs share one large direction, so every raw q·k is large while the scaled logits of a row
differ by a few units: for float16 the raw q·k exceed 65504 (the float16 maximum) though the
scaled logits fit; for bfloat16 the logits are in the hundreds (its spacing there is 2).
Errors are measured against float64 (attnlab.testing.assert_error_ratio):

- forward: sdpa and tiled against 2x eager in the same dtype (the project's rule); eager, the
  reference itself, against 2x torch SDPA in the same dtype (the peer).
- backward: against 2x the float64 backward of a flash-style kernel in the input dtype
  (FlashAttention's Alg. 2 with float32 scores, O stored in the dtype, so D_i = rowsum(dO ∘ O)
  carries its rounding, and P, dS rounded to the dtype for the GEMMs, as torch SDPA's CPU
  kernel does), rounded to the dtype: what a fused backward can reach. With O alone rounded,
  SDPA's float16 dQ error here is 10x eager's float32 autograd: that is the algorithm's, not a
  defect, so eager's gradients cannot be the baseline for a fused kernel.
"""

import copy
import math

import pytest
import torch

import attnlab
from attnlab import MultiHeadAttention, masks
from attnlab.functional.masks import materialize
from attnlab.testing import assert_error_ratio

HALF = [torch.float16, torch.bfloat16]
BACKENDS = ["eager", "sdpa", "tiled"]
# How large the shared direction is: |q|·|k| ≈ A², so raw q·k ≈ A² and logits ≈ A²/sqrt(D).
A = {torch.float16: 262.0, torch.bfloat16: 60.0}
B, H, LQ, LK, D = 2, 2, 24, 37, 64

def large_logit_qkv(dtype, *, a=None, Lq=LQ, Lk=LK, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = A[dtype] if a is None else a
    u = torch.randn(D, generator=g, dtype=torch.float64)
    u = u / u.norm()

    def shared(L):  # a·u plus noise orthogonal to u: q·k = a² + noise·noise
        n = 2 * torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
        return a * u + (n - (n @ u).unsqueeze(-1) * u)

    q, k = shared(Lq), shared(Lk)
    v = torch.randn(B, H, Lk, D, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (q, k, v))


def check_inputs_are_large(q, k, dtype):
    raw = q.double() @ k.double().transpose(-1, -2)  # (B, H, Lq, Lk)
    if dtype == torch.float16:
        assert raw.max() > torch.finfo(torch.float16).max  # would overflow before scaling
        assert raw.max() / math.sqrt(D) < torch.finfo(torch.float16).max  # the logits fit
    else:
        assert raw.min() / math.sqrt(D) > 100  # logits in the hundreds


def mask_cases(dtype):
    """name -> (mask in dtype, the same mask for float64)."""
    causal = masks.causal("bottom-right")
    pos = torch.arange(LK) - torch.arange(LQ).unsqueeze(-1) - (LK - LQ)  # (Lq, Lk) key - query
    alibi = (-0.37 * pos.abs()).view(1, 1, LQ, LK).expand(1, H, LQ, LK).double()  # not exact in bf16
    alibi = alibi.masked_fill(pos > 0, float("-inf"))  # ALiBi-like bias, -inf above the diagonal
    # padding with one query row that sees nothing: exact zeros in every dtype
    pad = masks.padding(q_lengths=[LQ, LQ - 3], k_lengths=[LK, LK - 5])
    return {
        "none": (None, None),
        "causal-br": (causal, causal),
        "alibi-bias": (alibi.to(dtype), alibi.to(dtype).double()),  # the same numbers in both
        # a float32 bias with half inputs: it must not be rounded to the inputs' dtype
        "alibi-bias-f32": (alibi.float(), alibi.float().double()),
        "padding-empty-rows": (pad, pad),
    }


def float_mask(mask):
    return mask.float() if isinstance(mask, torch.Tensor) else mask


def flash_backward_reference(q, k, v, dout, mask64, dtype):
    """float64 gradients of a flash-style kernel in ``dtype`` (see the module doc): scores in
    float32, the output O stored in the dtype, P and dS rounded to it for the GEMMs."""
    def r(t):
        return t.to(dtype).double()

    out = attnlab.attention(q.float(), k.float(), v.float(), mask=float_mask(mask64), backend="eager",
                            return_weights=True)
    p = out.weights.double()  # (B, H, Lq, Lk), from float32 scores
    q, k, v, dout = (t.double() for t in (q, k, v, dout))
    s = 1 / math.sqrt(D)
    dp = dout @ v.transpose(-1, -2)  # (B, H, Lq, Lk)
    ds = p * (dp - (dout * r(out.context)).sum(-1, keepdim=True))  # D_i from the stored O
    grads = (r(ds) @ k * s, r(ds).transpose(-1, -2) @ q * s, r(p).transpose(-1, -2) @ dout)
    return tuple(g.to(dtype) for g in grads)


def run(backend, q, k, v, mask, dout):
    ql, kl, vl = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = attnlab.attention(ql, kl, vl, mask=mask, backend=backend, return_weights=backend == "eager")
    grads = torch.autograd.grad(out.context, (ql, kl, vl), dout)
    return out, grads


def cases():
    for dtype in HALF:
        for m in ("none", "causal-br", "alibi-bias", "alibi-bias-f32", "padding-empty-rows"):
            for b in BACKENDS:
                yield pytest.param(dtype, m, b, id=f"{str(dtype)[6:]}-{m}-{b}")


@pytest.mark.parametrize("dtype, mask_name, backend", list(cases()))
def test_half_precision_forward_and_backward_against_float64(dtype, mask_name, backend):
    q, k, v = large_logit_qkv(dtype)
    check_inputs_are_large(q, k, dtype)
    mask, mask64 = mask_cases(dtype)[mask_name]
    dout = torch.randn(B, H, LQ, D, generator=torch.Generator().manual_seed(1)).to(dtype)
    q64, k64, v64 = (t.double().requires_grad_(True) for t in (q, k, v))
    ref = attnlab.attention(q64, k64, v64, mask=mask64, backend="eager", return_weights=True)
    ref_grads = torch.autograd.grad(ref.context, (q64, k64, v64), dout.double())

    out, grads = run(backend, q, k, v, mask, dout)
    eager, _ = run("eager", q, k, v, mask, dout)
    peer, _ = run("sdpa", q, k, v, mask, dout)
    assert out.context.dtype == dtype
    baseline = peer.context if backend == "eager" else eager.context
    assert_error_ratio(out.context, ref.context, baseline, what=f"{backend} context")
    flash = flash_backward_reference(q, k, v, dout, mask64, dtype)
    for name, g, r, fb in zip("qkv", grads, ref_grads, flash, strict=True):
        assert g.dtype == dtype
        assert_error_ratio(g, r, fb, what=f"{backend} d{name}")
    if mask_name == "padding-empty-rows":
        empty = ~materialize(mask, LQ, LK, batch=B, heads=H).any(-1)  # (B, H, Lq)
        assert bool(empty.any()) and torch.all(out.context[empty] == 0)
        assert torch.all(grads[0][empty] == 0)
    if backend == "eager":
        assert out.weights.dtype == dtype and out.lse.dtype == torch.float32
        # by construction: float32 attention on the same numbers, rounded once at the end
        f32, f32_grads = run("eager", q.float(), k.float(), v.float(), float_mask(mask), dout.float())
        assert torch.equal(out.context, f32.context.to(dtype)) and torch.equal(out.lse, f32.lse)
        assert torch.equal(out.weights, f32.weights.to(dtype))
        assert all(torch.equal(g, g32.to(dtype)) for g, g32 in zip(grads, f32_grads, strict=True))
        # Weights: only eager returns them. Baseline: weights from float32 scores (the
        # precision of SDPA's math path; their spacing near 8000 is 5e-4), rounded once.
        w32 = attnlab.attention(q.float(), k.float(), v.float(), mask=float_mask(mask), backend="eager",
                                return_weights=True).weights
        assert_error_ratio(out.weights, ref.weights, w32.to(dtype), what="eager weights")
        seen = torch.isfinite(ref.lse)
        torch.testing.assert_close(out.lse[seen], ref.lse[seen].float(), rtol=2e-6, atol=0)
        assert torch.all(out.lse[~seen] == -math.inf)


@pytest.mark.parametrize("backend", ["sdpa", "tiled"])
@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_forward_without_bias_on_the_fused_kernels(dtype, backend):
    """The forward of the fused paths (SDPA; tiled's ATen tile op), which the xfail above
    does not cover for tiled: here nothing sends tiled to its plain-op tile."""
    q, k, v = large_logit_qkv(dtype, seed=3)
    for mask in (None, masks.causal("bottom-right"), masks.sliding_window(5, 2)):
        ref = attnlab.attention(q.double(), k.double(), v.double(), mask=mask, backend="eager").context
        eager = attnlab.attention(q, k, v, mask=mask, backend="eager").context
        out = attnlab.attention(q, k, v, mask=mask, backend=backend).context
        assert_error_ratio(out, ref, eager, what=f"{backend} {mask}")


def exact_mha(dtype, E=64, heads=2):
    """MultiHeadAttention whose projections are exact in every dtype (scaled permutations, no
    bias): the half-precision module differs from its float64 copy only inside attention."""
    m = MultiHeadAttention(E, heads, bias=False)
    g = torch.Generator().manual_seed(0)
    qk_perm = torch.randperm(E, generator=g)  # q and k share one: head h of q meets head h of k
    with torch.no_grad():
        for lin, scale, perm in ((m.q_proj, 2.0, qk_perm), (m.k_proj, 1.0, qk_perm),
                                 (m.v_proj, 0.5, torch.randperm(E, generator=g)),
                                 (m.out_proj, 1.0, torch.randperm(E, generator=g))):
            lin.weight.copy_(torch.eye(E)[perm] * scale)
    return copy.deepcopy(m).to(dtype).eval(), m.double().eval()


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("dtype", HALF)
def test_multihead_attention_in_half_precision_with_large_logits(dtype, need_weights):
    mha, mha64 = exact_mha(dtype)
    g = torch.Generator().manual_seed(2)
    # q = 2x, k = x: each head (Dh = 32) sees the shared direction u of norm a; raw q·k ≈ 2a²
    a = {torch.float16: 190.0, torch.bfloat16: 45.0}[dtype]
    u = torch.randn(64, generator=g, dtype=torch.float64)
    n = torch.randn(2, 20, 64, generator=g, dtype=torch.float64)
    x = (a * u / u.norm() * math.sqrt(2) + n).to(dtype)  # (B, L, E): |u part| per head ≈ a
    dout = torch.randn(2, 20, 64, generator=g).to(dtype)
    mask = masks.causal()

    def forward(m, inp, **kw):
        xi = inp.detach().clone().requires_grad_(True)
        o = m(xi, mask=mask, **kw)
        (gx,) = torch.autograd.grad(o.output, xi, dout.to(inp.dtype))
        return o, gx

    ref, ref_gx = forward(mha64, x.double(), need_weights=True)
    qh = mha.q_proj(x).view(2, 20, 2, 32).transpose(1, 2).double()  # (B, H, L, Dh)
    kh = mha.k_proj(x).view(2, 20, 2, 32).transpose(1, 2).double()
    raw = (qh @ kh.transpose(-1, -2)).tril()
    if dtype == torch.float16:
        assert raw.max() > torch.finfo(torch.float16).max
    else:
        assert raw.max() / math.sqrt(32) > 100

    out, gx = forward(mha, x, need_weights=need_weights)  # auto: eager with weights, else sdpa
    other, other_gx = forward(mha, x, need_weights=False, backend="sdpa" if need_weights else "eager")
    assert out.output.dtype == dtype
    assert_error_ratio(out.output, ref.output, other.output, what=f"need_weights={need_weights} output")
    if need_weights:  # eager's float32 autograd against torch SDPA's backward
        assert_error_ratio(gx, ref_gx, other_gx, what="need_weights=True dx")
        assert out.weights.dtype == dtype
        w32 = copy.deepcopy(mha).float()(x.float(), mask=mask, need_weights=True).weights
        assert_error_ratio(out.weights, ref.weights, w32.to(dtype), what="weights")
    else:  # SDPA's backward: finite, and the same as asking for sdpa by name
        _, sdpa_gx = forward(mha, x, backend="sdpa")
        assert torch.isfinite(gx).all() and torch.equal(gx, sdpa_gx)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_nan_in_values_keeps_the_half_precision_dtype(backend):
    q, k, v = (torch.randn(1, 2, 6, 8, generator=torch.Generator().manual_seed(i)).half() for i in range(3))
    v[0, 0, 4, 0] = float("nan")
    out = attnlab.attention(q, k, v, mask=masks.causal(), backend=backend)
    assert torch.isnan(out.context[0, 0, 4:]).any() and not torch.isnan(out.context[0, 0, :4]).any()
    assert out.context.dtype == torch.float16


@pytest.mark.parametrize("dtype", HALF)
def test_weights_for_in_half_precision_with_large_logits(dtype):
    from attnlab.backends import weights_for

    q, k, v = large_logit_qkv(dtype)
    out = attnlab.attention(q, k, v, backend="eager", return_weights=True)
    ref = attnlab.attention(q.double(), k.double(), v.double(), backend="eager", return_weights=True)
    w = weights_for(q, k, out.lse, rows=[0, 5, LQ - 1])
    assert w.dtype == dtype
    # factor 4: exp(s - lse) from a saved float32 lse adds the lse's rounding (its spacing near
    # 8000 is 1e-3) to that of the float32 scores
    assert_error_ratio(w, ref.weights[:, :, [0, 5, LQ - 1]], out.weights[:, :, [0, 5, LQ - 1]],
                       factor=4.0, what="weights_for")

"""One meaning for an additive float mask, in every dtype and on every backend.

An entry <= -65504 (torch.finfo(torch.float16).min; -inf, HF's finfo(dtype).min of any dtype
and -1e9 qualify) is a masked position, exactly like False in a bool mask: a row masked
everywhere gives zeros. Larger entries are biases added to float32 (or float64) scores. Before,
a row of finfo(float32).min averaged every key for float32 inputs and gave zeros for float16
and bfloat16 ones (where it overflowed to -inf).
"""

import math

import pytest
import torch

import attnlab
from attnlab.functional import mask_input
from attnlab.functional.mask_input import normalize_mask
from attnlab.testing import assert_error_ratio

BACKENDS = ["eager", "sdpa", "tiled"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}
B, H, LQ, LK, D = 2, 2, 6, 9, 16

MASKED_VALUES = {  # every way users spell "masked" in an additive mask
    "-inf": float("-inf"),
    "finfo(float32).min": torch.finfo(torch.float32).min,
    "finfo(bfloat16).min": torch.finfo(torch.bfloat16).min,
    "finfo(float16).min": torch.finfo(torch.float16).min,
    "-1e9": -1e9,
}


def qkv(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, L, D, generator=g, dtype=torch.float64).to(dtype) for L in (LQ, LK, LK))


def hf_style_mask(value, mask_dtype=torch.float32):
    """(B, 1, Lq, Lk): padding of the last 3 keys in batch 1, and query row 2 of batch 0
    masked everywhere (a padded query, as HF's 4-D masks have)."""
    allowed = torch.ones(B, 1, LQ, LK, dtype=torch.bool)
    allowed[1, :, :, -3:] = False
    allowed[0, :, 2] = False
    return allowed, torch.zeros(allowed.shape, dtype=mask_dtype).masked_fill(~allowed, value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value_name", list(MASKED_VALUES))
def test_masked_values_mean_masked_in_every_dtype(backend, value_name):
    allowed, _ = hf_style_mask(0.0)
    outs = {}
    for dtype in DTYPES:
        q, k, v = qkv(dtype)
        # the mask in float32 (how finfo(float32).min reaches fp16 models through HF) and in
        # the inputs' dtype where the value fits there
        mask_dtypes = [torch.float32] + ([dtype] if dtype != torch.float32 else [])
        for mdt in mask_dtypes:
            value = MASKED_VALUES[value_name]
            if value != float("-inf") and value < torch.finfo(mdt).min:
                continue
            _, additive = hf_style_mask(value, mdt)
            got = attnlab.attention(q, k, v, mask=additive, backend=backend).context
            want = attnlab.attention(q, k, v, mask=allowed, backend=backend).context
            assert got.dtype == dtype
            assert torch.all(got[0, :, 2] == 0), f"{dtype}, mask {mdt}: the masked row is not zeros"
            torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])
            outs[(dtype, mdt)] = got
    ref = outs[(torch.float32, torch.float32)].double()
    for (dtype, mdt), got in outs.items():
        torch.testing.assert_close(got.double(), ref, atol=TOL[dtype], rtol=TOL[dtype],
                                   msg=lambda m, d=dtype, md=mdt: f"{d} with a {md} mask: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_min_row_gives_zeros_weights_and_gradients_in_every_dtype(backend):
    _, additive = hf_style_mask(torch.finfo(torch.float32).min)
    for dtype in DTYPES:
        q, k, v = (t.requires_grad_(True) for t in qkv(dtype))
        out = attnlab.attention(q, k, v, mask=additive, backend=backend, return_weights=backend == "eager")
        (out.context.float() * torch.randn(out.context.shape)).sum().backward()
        assert torch.all(out.context[0, :, 2] == 0) and torch.all(q.grad[0, :, 2] == 0), dtype
        if backend == "eager":
            assert torch.all(out.weights[0, :, 2] == 0) and torch.all(out.lse[0, :, 2] == -math.inf)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "tiled"])
def test_biases_above_the_threshold_are_added_the_same_in_every_dtype(backend):
    """-1e4 (old BERT masks) is a bias, not a mask: a row of it is softmax(s - 1e4) = softmax(s),
    the plain average, in every dtype; a partial row of it weighs those keys exp(-1e4) = 0.
    float16 scores near -1e4 are spaced 8 apart, so adding in the inputs' dtype would not do;
    float32 ones are spaced 1e-3 apart, which bounds every dtype's accuracy on that row."""
    bias = torch.zeros(B, 1, LQ, LK)
    bias[1, :, :, -3:] = -1e4
    bias[0, :, 2] = -1e4
    bias[0, :, 3] = torch.linspace(-3, 3, LK)  # an ordinary bias row
    q64, k64, v64 = qkv(torch.float64)
    ref = attnlab.attention(q64, k64, v64, mask=bias.double(), backend="eager").context
    plain = attnlab.attention(q64, k64, v64, backend="eager").context
    torch.testing.assert_close(ref[0, :, 2], plain[0, :, 2])  # the -1e4 row: the plain average
    for dtype in DTYPES:
        q, k, v = qkv(dtype)
        for mask in (bias, bias.to(dtype)):
            got = attnlab.attention(q, k, v, mask=mask, backend=backend).context.double()
            row = torch.zeros(B, 1, LQ, 1, dtype=torch.bool)
            row[0, :, 2] = True  # the -1e4 row
            for sel, tol in ((row, max(TOL[dtype], 3e-3)), (~row, TOL[dtype])):
                sel = sel.expand(got.shape)
                torch.testing.assert_close(got[sel], ref[sel], atol=tol, rtol=tol,
                                           msg=lambda m, d=dtype: f"{d}: {m}")


def test_normalisation_is_the_one_boundary():
    shape = (1, 1, 2, 4)
    assert mask_input.MASKED_AT_OR_BELOW == -65504.0
    m = torch.tensor([[0.5, -65504.0, -65000.0, float("-inf")],
                      [-1e9, torch.finfo(torch.float32).min, 0.0, -1.0]])
    for dtype in (torch.float64, *DTYPES):
        nm = normalize_mask(m, shape, dtype=dtype, device=torch.device("cpu"))
        assert nm.dense.tolist() == [[[[True, False, True, False], [False, False, True, True]]]]
        assert nm.bias.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert nm.bias.tolist() == [[[[0.5, 0.0, -65000.0, 0.0], [0.0, 0.0, 0.0, -1.0]]]]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="mask: an additive float mask"):
            normalize_mask(torch.tensor([[0.0, bad]]), (1, 1, 1, 2), dtype=torch.float16,
                           device=torch.device("cpu"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_learned_half_precision_bias_still_gets_its_gradient(backend):
    q, k, v = qkv(torch.float16)
    bias = (0.1 * torch.randn(1, H, LQ, LK)).half().requires_grad_(True)
    out = attnlab.attention(q, k, v, mask=bias, backend=backend).context
    out.float().sum().backward()
    b64 = bias.detach().double().requires_grad_(True)
    ref = attnlab.attention(q.double(), k.double(), v.double(), mask=b64, backend="eager").context
    ref.sum().backward()
    assert bias.grad.dtype == torch.float16
    torch.testing.assert_close(bias.grad.double(), b64.grad, atol=3e-3, rtol=3e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("backend", ["eager", "sdpa", "tiled"])
def test_a_float32_bias_is_not_rounded_to_half_precision(backend, dtype):
    """ALiBi far from the keys (a decode step at position ~500): biases near -200, which
    bfloat16 spaces 1 apart and float16 0.125 apart. Added in float32, they mean for half
    inputs what they mean for float32 ones."""
    q, k, v = qkv(dtype)
    pos_q = 500 + torch.arange(LQ).view(-1, 1)  # (Lq, 1)
    alibi = (-0.37 * (pos_q - torch.arange(LK))).view(1, 1, LQ, LK)  # float32, (1, 1, Lq, Lk)
    ref = attnlab.attention(q.double(), k.double(), v.double(), mask=alibi.double(), backend="eager").context
    eager = attnlab.attention(q, k, v, mask=alibi, backend="eager").context
    out = attnlab.attention(q, k, v, mask=alibi, backend=backend).context
    base = attnlab.attention(q, k, v, mask=alibi, backend="sdpa" if backend == "eager" else "eager").context
    assert_error_ratio(out, ref, base, what=f"{backend} {dtype}")
    if backend != "eager":
        assert_error_ratio(out, ref, eager, what=f"{backend} {dtype} vs eager")
    else:  # the bias reaches float32 scores unrounded: float32 attention, rounded once
        f32 = attnlab.attention(q.float(), k.float(), v.float(), mask=alibi, backend="eager").context
        assert torch.equal(out, f32.to(dtype))

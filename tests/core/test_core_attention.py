import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import attnlab
from attnlab import masks
from attnlab.functional.masks import materialize
from attnlab.testing import assert_error_ratio, naive_attention

BACKENDS = ["eager", "sdpa"]


def rand_qkv(B=2, H=4, Hkv=None, Lq=5, Lk=7, D=8, Dv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    Hkv = Hkv or H
    q = torch.randn(B, H, Lq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, Lk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, Lk, Dv or D, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


MASKS = {
    "none": None,
    "causal": masks.causal(),
    "causal-br": masks.causal("bottom-right"),
    "window": masks.sliding_window(2, 1),
    "padding": masks.padding(k_lengths=[3, 7]),
    "padding-empty-rows": masks.padding(q_lengths=[2, 5], k_lengths=[0, 4]),
    "doc&causal": masks.document([[0, 0, 1, 1, 1, 2, 2]] * 2, [[0, 0, 0, 1, 1, 1, 2]] * 2) & masks.causal(),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("gqa", [1, 2])
def test_matches_float64_reference_with_error_ratio_rule(backend, mask_name, gqa):
    Lq = 7 if mask_name == "doc&causal" else 5
    q, k, v = rand_qkv(H=4, Hkv=4 // gqa, Lq=Lq, Lk=7)
    m = MASKS[mask_name]
    allowed = None if m is None else materialize(m, Lq, 7, batch=2, heads=4)
    ref_ctx, ref_w = naive_attention(q, k, v, allowed)
    eager = attnlab.attention(q, k, v, mask=m, backend="eager", return_weights=True)
    out = attnlab.attention(q, k, v, mask=m, backend=backend)
    assert_error_ratio(out.context, ref_ctx, eager.context)
    assert_error_ratio(eager.weights, ref_w, eager.weights)
    if allowed is not None:
        empty = ~allowed.any(-1)
        assert torch.all(out.context[empty] == 0)  # exact zeros


@settings(max_examples=40, deadline=None)
@given(Lq=st.integers(1, 9), Lk=st.integers(1, 9), D=st.integers(1, 7), Dv=st.integers(1, 5),
       H=st.sampled_from([1, 2, 4]), causal_br=st.booleans(), seed=st.integers(0, 1000))
def test_awkward_shapes(Lq, Lk, D, Dv, H, causal_br, seed):
    q, k, v = rand_qkv(B=1, H=H, Lq=Lq, Lk=Lk, D=D, Dv=Dv, seed=seed)
    m = masks.causal("bottom-right") if causal_br else None
    allowed = None if m is None else materialize(m, Lq, Lk, heads=H)
    ref_ctx, _ = naive_attention(q, k, v, allowed)
    eager = attnlab.attention(q, k, v, mask=m, backend="eager")
    for b in BACKENDS:
        out = attnlab.attention(q, k, v, mask=m, backend=b)
        assert out.context.shape == (1, H, Lq, Dv)
        assert_error_ratio(out.context, ref_ctx, eager.context, what=b)


def test_plain_2d_and_3d_inputs_for_teaching():
    q, k, v = rand_qkv(B=1, H=1, Lq=3, Lk=4, D=2)
    out4 = attnlab.attention(q, k, v, return_weights=True)
    out2 = attnlab.attention(q[0, 0], k[0, 0], v[0, 0], return_weights=True)
    out3 = attnlab.attention(q[0], k[0], v[0], return_weights=True)
    assert out2.context.shape == (3, 2) and out2.weights.shape == (3, 4) and out2.lse.shape == (3,)
    assert out3.context.shape == (1, 3, 2)
    torch.testing.assert_close(out2.context, out4.context[0, 0])
    torch.testing.assert_close(out3.weights, out4.weights[0])


def test_lse_is_logsumexp_of_scaled_scores():
    q, k, v = rand_qkv(dtype=torch.float64)
    out = attnlab.attention(q, k, v, scale=0.3, return_weights=True)
    torch.testing.assert_close(out.lse, torch.logsumexp(q @ k.transpose(-2, -1) * 0.3, -1))
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(2, 4, 5, dtype=torch.float64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_rows_exact_zeros_and_zero_grads(backend):
    q, k, v = rand_qkv(dtype=torch.float64)
    q.requires_grad_(True), k.requires_grad_(True), v.requires_grad_(True)
    allowed = torch.ones(2, 4, 5, 7, dtype=torch.bool)
    allowed[:, :, 1] = False  # row 1: nothing visible
    allowed[0, :, :, 3] = False
    out = attnlab.attention(q, k, v, mask=allowed, backend=backend)
    assert torch.all(out.context[:, :, 1] == 0)
    out.context[:, :, 1].sum().backward()
    assert torch.all(q.grad == 0) and torch.all(k.grad == 0) and torch.all(v.grad == 0)
    full = attnlab.attention(q, k, v, mask=allowed, backend="eager", return_weights=True)
    assert torch.all(full.weights[:, :, 1] == 0) and torch.all(full.lse[:, :, 1] == -math.inf)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_and_inf_in_masked_keys_never_leak(backend):
    q, k, v = rand_qkv(B=2, Lk=7)
    k[:, :, 5:] = float("nan")
    v[:, :, 5:] = float("inf")
    k[1, :, 4] = float("-inf")
    out = attnlab.attention(q, k, v, mask=masks.padding(k_lengths=[5, 4]), backend=backend)
    assert torch.isfinite(out.context).all()
    clean = attnlab.attention(q[:, :, :, :], k[:, :, :4], v[:, :, :4], backend="eager")
    torch.testing.assert_close(out.context[1], clean.context[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_additive_float_mask_and_bool_mask_agree(backend):
    q, k, v = rand_qkv()
    allowed = materialize(masks.causal(), 5, 7, batch=2, heads=4)
    additive = torch.zeros(2, 4, 5, 7).masked_fill(~allowed, float("-inf"))
    a = attnlab.attention(q, k, v, mask=allowed, backend=backend).context
    b = attnlab.attention(q, k, v, mask=additive, backend=backend).context
    torch.testing.assert_close(a, b)
    bias = torch.randn(1, 4, 5, 7)
    c = attnlab.attention(q, k, v, mask=bias, backend=backend).context
    ref, _ = naive_attention(q, k, v, bias=bias)
    torch.testing.assert_close(c.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_float_keep_mask_of_0s_and_1s_is_refused_not_added(backend):
    """torch.tril(torch.ones(L, L)) added to the scores masks nothing: it used to run silently."""
    q, k, v = rand_qkv(Lk=5)
    with pytest.raises(ValueError, match=r"mask: a float mask is added .* only 0s and 1s.*mask\.bool\(\)"):
        attnlab.attention(q, k, v, mask=torch.tril(torch.ones(5, 5)), backend=backend)
    keep = attnlab.attention(q, k, v, mask=torch.tril(torch.ones(5, 5)).bool(), backend=backend)
    torch.testing.assert_close(keep.context, attnlab.attention(q, k, v, mask=masks.causal(),
                                                               backend=backend).context)
    attnlab.attention(q, k, v, mask=torch.zeros(5, 5), backend=backend)  # all-0 bias: no bias


def test_gqa_matches_sdpa_enable_gqa_and_explicit_repeat():
    q, k, v = rand_qkv(H=8, Hkv=2)
    ours = attnlab.attention(q, k, v, backend="eager").context
    torch_ = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(ours, torch_, atol=1e-6, rtol=1e-5)
    rep = attnlab.attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)).context
    torch.testing.assert_close(ours, rep, atol=1e-6, rtol=1e-5)


def test_parity_with_torch_causal_lower_right():
    from torch.nn.attention.bias import causal_lower_right, causal_upper_left

    q, k, v = rand_qkv(Lq=3, Lk=8)
    for ours_mask, theirs in ((masks.causal("bottom-right"), causal_lower_right(3, 8)),
                              (masks.causal("top-left"), causal_upper_left(3, 8))):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=theirs)
        for b in BACKENDS:
            torch.testing.assert_close(attnlab.attention(q, k, v, mask=ours_mask, backend=b).context,
                                       ref, atol=1e-6, rtol=1e-5)


def test_scale_none_is_inverse_sqrt_d_and_scale_one_is_unscaled():
    q, k, v = rand_qkv(D=16)
    a = attnlab.attention(q, k, v).context
    torch.testing.assert_close(a, F.scaled_dot_product_attention(q, k, v), atol=1e-6, rtol=1e-5)
    b = attnlab.attention(q, k, v, scale=1.0).context
    torch.testing.assert_close(b, F.scaled_dot_product_attention(q, k, v, scale=1.0), atol=1e-6, rtol=1e-5)


def test_dropout_off_in_eval_and_keep_rate_in_training():
    torch.manual_seed(0)
    Lk = 64
    q = torch.zeros(1, 4, 256, 8)
    k = torch.randn(1, 4, Lk, 8)
    v = torch.eye(Lk).expand(1, 4, Lk, Lk)  # one-hot values: context = dropped weights
    for backend in BACKENDS:
        ev = attnlab.attention(q, k, v, dropout_p=0.3, training=False, backend=backend).context
        torch.testing.assert_close(ev, torch.full_like(ev, 1 / Lk))
        tr = attnlab.attention(q, k, v, dropout_p=0.3, training=True, backend=backend).context
        kept = (tr != 0).float().mean().item()
        assert abs(kept - 0.7) < 0.01, (backend, kept)
        torch.testing.assert_close(tr[tr != 0], torch.full_like(tr[tr != 0], 1 / Lk / 0.7))


@pytest.mark.parametrize("case", ["masked", "fully-masked", "bottom-right", "window"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(case, backend):
    q, k, v = rand_qkv(B=1, H=2, Lq=4, Lk=5, D=3, dtype=torch.float64)
    mask = {
        "masked": materialize(lambda b, h, i, j: (i + j) % 3 != 0, 4, 5, heads=2),
        "fully-masked": materialize(lambda b, h, i, j: i != 2, 4, 5, heads=2),
        "bottom-right": masks.causal("bottom-right"),
        "window": masks.sliding_window(1, 1),
    }[case]
    fn = lambda q, k, v: attnlab.attention(q, k, v, mask=mask, backend=backend).context  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(t.requires_grad_(True) for t in (q, k, v)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_float64_reference(backend):
    q, k, v = rand_qkv()
    m = masks.sliding_window(2, 0)
    grads = {}
    for name, dt, be in (("ref", torch.float64, "eager"), ("eager", torch.float32, "eager"),
                         ("k", torch.float32, backend)):
        ts = [t.detach().to(dt).requires_grad_(True) for t in (q, k, v)]
        attnlab.attention(*ts, mask=m, backend=be).context.pow(2).sum().backward()
        grads[name] = [t.grad for t in ts]
    for i in range(3):
        assert_error_ratio(grads["k"][i], grads["ref"][i], grads["eager"][i], floor=1e-5, what=f"grad {i}")


@pytest.mark.parametrize("backend", [*BACKENDS, "tiled"])
def test_nonfinite_value_reaches_only_rows_that_see_its_key(backend):
    # Causal: key 3 is visible to rows 3.. only. A NaN/inf stored there must not reach rows 0-2
    # through 0·NaN in P·V, nor their gradients; rows that do see it get it.
    torch.manual_seed(0)
    q = torch.randn(2, 4, 6, 8, requires_grad=True)
    k = torch.randn(2, 2, 6, 8)  # GQA: 2 K/V heads for 4 query heads
    v = torch.randn(2, 2, 6, 8)
    bad = v.clone()
    bad[0, 1, 3] = float("nan")
    bad[1, 0, 3, 2] = float("inf")
    out = attnlab.attention(q, k, bad, mask=masks.causal(), backend=backend)
    ref = attnlab.attention(q, k, v.masked_fill(~torch.isfinite(bad), 0.0), mask=masks.causal(),
                            backend="eager")
    torch.testing.assert_close(out.context[:, :, :3], ref.context[:, :, :3])
    assert torch.isnan(out.context[0, 2:4, 3:]).all()  # query heads 2, 3 read K/V head 1
    assert torch.isfinite(out.context[0, :2]).all()
    assert torch.isinf(out.context[1, :2, 3:, 2]).all() and torch.isfinite(out.context[1, :2, 3:, :2]).all()
    out.context[:, :, :3].sum().backward()
    assert torch.isfinite(q.grad[:, :, :3]).all()  # rows >= 3 touched NaN: 0·NaN, as in torch


def test_reference_gqa_grouped_equals_heads_expanded():
    # GQA runs as one matmul per K/V head over its query heads (no copies of K and V), and
    # v_finite (dispatch's check) skips zeroing the unused keys: the same as MHA on copied heads.
    from attnlab.functional.attention import expand_kv, reference_attention

    q, k, v = rand_qkv(H=6, Hkv=2, seed=3)
    allowed = torch.rand(2, 6, 5, 7, generator=torch.Generator().manual_seed(4)) > 0.4  # per head
    allowed[0, 1, 2] = False  # a row that sees nothing
    got = {}
    for name, kv, finite in (("heads", 6, False), ("grouped", 2, False), ("grouped, finite", 2, True)):
        ts = [t.clone().requires_grad_(True) for t in (q, k, v)]
        kk, vv = (ts[1], ts[2]) if kv == 2 else (expand_kv(ts[1], 6), expand_kv(ts[2], 6))
        out = reference_attention(ts[0], kk, vv, allowed=allowed, v_finite=finite)
        out.context.pow(2).sum().backward()
        got[name] = [out.context, out.weights, out.lse, *(t.grad for t in ts)]
    for name in ("grouped", "grouped, finite"):
        for a, b in zip(got[name], got["heads"], strict=True):
            torch.testing.assert_close(a, b)
    assert torch.all(got["grouped"][1][0, 1, 2] == 0) and torch.all(got["grouped"][0][0, 1, 2] == 0)

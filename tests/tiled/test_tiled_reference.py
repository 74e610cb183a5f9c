"""The tiled backend against the float64 reference (FlashAttention's error-ratio rule)."""

import pytest
import torch

import attnlab
from attnlab import masks, score_mods
from attnlab.backends import tiled_attention, tiled_options
from attnlab.backends.tiled import fused as tiled_fused
from attnlab.backends.tiled import sparse as tiled_sparse
from attnlab.functional.masks import materialize
from attnlab.testing import assert_error_ratio, naive_attention

LQ, LK = 23, 29
NAMES = ["none", "causal", "causal-br", "window", "window-causal", "window-br", "document", "doc&causal",
         "padding", "prefix_lm", "dilated", "longformer", "strided", "fixed", "fixed-bidir", "dilated-br",
         "bigbird", "block_sparse",
         "or", "not", "custom"]
SQUARE = {"dilated", "longformer", "strided", "fixed", "fixed-bidir", "custom", "not"}


def shape_for(name):
    return (LQ, LQ) if name in SQUARE else (LQ, LK)


def check(tl, name, m, lq, lk, *, gqa=1, block=None, budget=None, score_mod=None, dtype=torch.float32):
    q, k, v = tl.rand_qkv(H=4, Hkv=4 // gqa, Lq=lq, Lk=lk, dtype=dtype)
    allowed = None if m is None else materialize(m, lq, lk, batch=2, heads=4)
    eager = attnlab.attention(q, k, v, mask=m, score_mod=score_mod, backend="eager")
    if score_mod is None:
        ref, _ = naive_attention(q, k, v, allowed)
    else:
        ref = attnlab.attention(q.double(), k.double(), v.double(), mask=m, score_mod=score_mod,
                                backend="eager").context
    out = tiled_attention(q, k, v, mask=m, score_mod=score_mod, block_size=block, budget=budget)
    assert_error_ratio(out.context, ref, eager.context, what=f"{name} block={block}")
    finite = torch.isfinite(eager.lse)
    assert torch.equal(torch.isfinite(out.lse), finite)
    torch.testing.assert_close(out.lse[finite], eager.lse[finite], atol=1e-4, rtol=1e-5)
    if allowed is not None:
        assert torch.all(out.context[~allowed.any(-1)] == 0)  # exact zeros on fully masked rows


def test_pattern_list_is_complete(tl):
    assert sorted(tl.patterns(LQ, LK)) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("block", "budget"), [(4, 64), (7, 10**6), (None, None)])
@pytest.mark.parametrize("path", ["fused", "plain"])
def test_every_pattern_matches_float64_reference(tl, name, block, budget, path, monkeypatch):
    # "fused": tiles through ATen's fused flash loop (the default); "plain": PyTorch ops per tile
    # (what score_mods, biases and non-finite k/v take).
    monkeypatch.setattr(tiled_fused, "AVAILABLE", path == "fused")
    lq, lk = shape_for(name)
    check(tl, name, tl.patterns(lq, lk)[name], lq, lk, block=block, budget=budget)


def test_fused_tile_kernel_is_available():
    """torch 2.13's ATen has the fused CPU flash op and it passed its import-time check; if a
    torch upgrade breaks that, the backend silently falls back to the slower plain tiles."""
    assert tiled_fused.AVAILABLE


def test_fused_mask_that_depends_on_batch_is_spread_over_heads(tl, monkeypatch):
    lq = lk = 23
    m = masks.padding(q_lengths=[lq - 3, lq], k_lengths=[lk - 5, 2])  # (B, 1) mask: batch only
    for path in (True, False):
        monkeypatch.setattr(tiled_fused, "AVAILABLE", path)
        check(tl, "padding", m, lq, lk, block=8)


@pytest.mark.parametrize("name", ["causal-br", "window", "doc&causal", "bigbird", "custom"])
def test_gqa_shares_kv_heads(tl, name):
    lq, lk = shape_for(name)
    check(tl, name, tl.patterns(lq, lk)[name], lq, lk, gqa=2, block=4, budget=200)
    check(tl, name, tl.patterns(lq, lk)[name], lq, lk, gqa=4, block=8)


@pytest.mark.parametrize(("lq", "lk"), [(1, 1), (1, 29), (29, 1), (5, 64), (64, 5), (33, 31)])
@pytest.mark.parametrize("mname", ["none", "causal-br", "window"])
def test_awkward_lengths(tl, lq, lk, mname):
    m = {"none": None, "causal-br": masks.causal("bottom-right"), "window": masks.sliding_window(3, 1)}[mname]
    for block in (4, 16, None):
        check(tl, mname, m, lq, lk, block=block)


@pytest.mark.parametrize("mod", [score_mods.alibi(4), score_mods.softcap(3.0),
                                 score_mods.relative_position_bias(torch.randn(4, 9), 4)])
def test_score_mods(tl, mod):
    check(tl, "score_mod", masks.causal(), 23, 23, block=4, budget=100, score_mod=mod)
    check(tl, "score_mod", masks.sliding_window(4, 4), 23, 29, block=8, score_mod=mod)


def test_dense_bool_and_additive_masks(tl):
    q, k, v = tl.rand_qkv(Lq=17, Lk=19)
    g = torch.Generator().manual_seed(5)
    allowed = torch.rand(2, 1, 17, 19, generator=g) < 0.5
    allowed[0, 0, 3] = False  # a fully masked row
    bias = torch.randn(1, 4, 17, 19, generator=g).masked_fill(~allowed, float("-inf"))
    for m in (allowed, bias):
        eager = attnlab.attention(q, k, v, mask=m, backend="eager").context
        for block in (4, None):
            out = tiled_attention(q, k, v, mask=m, block_size=block).context
            torch.testing.assert_close(out, eager, atol=2e-6, rtol=1e-5)
    both = tiled_attention(q, k, v, mask=masks.causal() & masks.sliding_window(9), block_size=4).context
    ref = attnlab.attention(q, k, v, mask=masks.causal() & masks.sliding_window(9), backend="eager").context
    torch.testing.assert_close(both, ref, atol=2e-6, rtol=1e-5)


def test_fully_masked_rows_are_exact_zeros_with_minus_inf_lse(tl):
    q, k, v = tl.rand_qkv(Lq=12, Lk=12)
    m = masks.padding(q_lengths=[5, 12], k_lengths=[0, 7])  # batch 0 sees no key at all
    out = tiled_attention(q, k, v, mask=m, block_size=4)
    assert torch.all(out.context[0] == 0) and torch.all(out.lse[0] == float("-inf"))
    assert torch.all(out.context[1, :, :, :] != 0)


def test_nan_and_inf_in_masked_keys_never_leak(tl):
    q, k, v = tl.rand_qkv(Lq=9, Lk=11)
    k[:, :, 8:] = float("nan")
    v[:, :, 8:] = float("inf")
    for block in (4, None):
        with tiled_options(block_size=block):
            out = attnlab.attention(q, k, v, mask=masks.padding(k_lengths=[8, 8]), backend="tiled")
        clean = attnlab.attention(q, k[:, :, :8], v[:, :, :8], backend="eager")
        assert torch.isfinite(out.context).all()
        torch.testing.assert_close(out.context, clean.context, atol=2e-6, rtol=1e-5)


def test_float64_and_2d_3d_inputs(tl):
    q, k, v = tl.rand_qkv(B=1, H=1, Lq=10, Lk=13, dtype=torch.float64)
    ref = attnlab.attention(q, k, v, mask=masks.causal("bottom-right"), backend="eager")
    out2 = tiled_attention(q[0, 0], k[0, 0], v[0, 0], mask=masks.causal("bottom-right"), block_size=3)
    assert out2.context.shape == (10, 8) and out2.lse.shape == (10,)
    torch.testing.assert_close(out2.context, ref.context[0, 0])
    out3 = attnlab.attention(q[0], k[0], v[0], mask=masks.causal("bottom-right"), backend="tiled")
    torch.testing.assert_close(out3.context, ref.context[0])


def test_multiple_worker_threads_agree_with_one(tl):
    q, k, v = tl.rand_qkv(Lq=64, Lk=64, seed=3, grad=True)
    m = masks.sliding_window(9, 0)
    outs, grads = [], []
    for threads in (1, 2):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with tiled_options(block_size=8, budget=2000):
                o = attnlab.attention(q, k, v, mask=m, backend="tiled").context
                o.square().sum().backward()
        finally:
            torch.set_num_threads(prev)
        outs.append(o.detach())
        grads.append([t.grad.clone() for t in (q, k, v)])
        for t in (q, k, v):
            t.grad = None
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", ["eager", "sdpa", "tiled", "auto"])
def test_every_pattern_on_every_backend(tl, name, backend):
    lq, lk = shape_for(name)
    m = tl.patterns(lq, lk)[name]
    q, k, v = tl.rand_qkv(H=4, Hkv=2, Lq=lq, Lk=lk, seed=7)
    allowed = None if m is None else materialize(m, lq, lk, batch=2, heads=4)
    ref, _ = naive_attention(q, k, v, allowed)
    eager = attnlab.attention(q, k, v, mask=m, backend="eager")
    out = attnlab.attention(q, k, v, mask=m, backend=backend)
    assert_error_ratio(out.context, ref, eager.context, what=f"{name} on {backend}")


def test_gather_rows_reshape_path_equals_index_select():
    from attnlab.backends.tiled.sparse import gather_rows

    x = torch.randn(2, 3, 24, 5)
    for idx in (torch.arange(24).view(6, 4).t().flatten(),  # residue order, d = 4
                torch.arange(24).view(4, 6).t().flatten(),  # its inverse
                torch.randperm(24, generator=torch.Generator().manual_seed(0)),
                torch.arange(0, 24, 3), torch.arange(24)):
        assert torch.equal(gather_rows(x, idx), x.index_select(2, idx))


RESIDUE = {
    "dilated2": masks.dilated_sliding_window(3, 1, dilation=2),
    "dilated3-causal": masks.dilated_sliding_window(4, 0, dilation=3),
    "dilated4": masks.dilated_sliding_window(2, 2, dilation=4),
    "strided4": masks.sparse_transformer_strided(4),
    "strided6": masks.sparse_transformer_strided(6),
}


@pytest.mark.parametrize("name", list(RESIDUE))
@pytest.mark.parametrize("block", [4, None])
def test_residue_classes_as_strided_views(tl, name, block):
    """Lengths that the dilation / stride divides run each residue class as a 'head' of a
    strided view (no reordering copies); GQA inputs take the gathered path."""
    m = RESIDUE[name]
    parts = tiled_sparse.decompose(m, 24, 24)
    assert parts is not None and any(p.residue is not None for p in parts)
    check(tl, name, m, 24, 24, block=block)
    check(tl, name, m, 24, 24, block=block, gqa=2)
    q, k, v = tl.rand_qkv(Lq=24, Lk=24, seed=4, grad=True)
    eager = attnlab.attention(q, k, v, mask=m, backend="eager").context
    out = tiled_attention(q, k, v, mask=m, block_size=block).context
    g = torch.randn_like(out)
    want = torch.autograd.grad(eager, (q, k, v), g)
    got = torch.autograd.grad(out, (q, k, v), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_residue_views_accept_non_contiguous_inputs(tl):
    q, k, v = tl.rand_qkv(Lq=24, Lk=24, seed=2)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))  # (B, L, H, D) memory
    m = masks.dilated_sliding_window(2, 1, dilation=3)
    ref = tiled_attention(q, k, v, mask=m).context
    torch.testing.assert_close(tiled_attention(qt, kt, vt, mask=m).context, ref)

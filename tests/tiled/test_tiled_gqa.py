"""GQA in the tiled backend: the fused forward packs the query heads that share a K/V head into
one problem over the shared band (fused._call_groups), never copying K/V out to the query heads.
Checked against the float64 reference, against the same call with K/V expanded by hand (the
plain multi-head path), forward and backward, for windows, causal, padding, documents and
score_mods, at Gemma 3's head size too."""

import pytest
import torch

import attnlab
from attnlab import masks, score_mods
from attnlab.backends import tiled_attention
from attnlab.backends.tiled import autograd as tiled_autograd
from attnlab.backends.tiled import fused as tiled_fused
from attnlab.functional.attention import expand_kv
from attnlab.testing import assert_error_ratio


def _inputs(B, H, Hkv, L, D, Lk=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, Hkv, Lk or L, D, generator=g, dtype=torch.float64) for _ in range(2))
    do = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    return q, k, v, do


MASKS = {
    "window": lambda L, Lk: masks.sliding_window(20, 0),  # steady blocks share one mask, edges do not
    "window-2sided": lambda L, Lk: masks.sliding_window(9, 5),
    "causal": lambda L, Lk: masks.causal(),
    "causal-br": lambda L, Lk: masks.causal("bottom-right"),
    "none": lambda L, Lk: None,
    "padding": lambda L, Lk: masks.padding(q_lengths=[L - 5, L], k_lengths=[Lk - 9, 3]),  # per batch element
    "window&padding": lambda L, Lk: masks.sliding_window(16, 0) & masks.padding(k_lengths=[Lk, Lk - 30]),
    "document": lambda L, Lk: masks.document([i * 3 // L for i in range(L)],
                                             [i * 3 // Lk for i in range(Lk)]),
}
SHAPES = [(2, 4, 1), (2, 6, 2), (1, 8, 2)]  # (B, H, Hkv)


def _fwd_bwd(q, k, v, do, m, score_mod=None, block=8):
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = tiled_attention(q, k, v, mask=m, score_mod=score_mod, block_size=block)
    out.context.backward(do)
    return out.context.detach(), out.lse.detach(), q.grad, k.grad, v.grad


def _eager(q, k, v, do, m, score_mod=None):
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = attnlab.attention(q, k, v, mask=m, score_mod=score_mod, backend="eager")
    out.context.backward(do)
    return out.context.detach(), out.lse.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("name", list(MASKS))
@pytest.mark.parametrize(("B", "H", "Hkv"), SHAPES)
@pytest.mark.parametrize(("L", "Lk"), [(77, 77), (61, 90)])  # not multiples of the block
def test_gqa_matches_float64_reference_fwd_and_bwd(name, B, H, Hkv, L, Lk):
    if name.startswith("window"):  # square: the window pattern is top-left aligned
        Lk = L
    q64, k64, v64, do64 = _inputs(B, H, Hkv, L, 16, Lk)
    m = MASKS[name](L, Lk)
    ref = _eager(q64, k64, v64, do64, m)
    low = _eager(*(t.float() for t in (q64, k64, v64, do64)), m)
    got = _fwd_bwd(*(t.float() for t in (q64, k64, v64, do64)), m)
    for what, a, r, e in zip(("context", "lse", "dq", "dk", "dv"), got, ref, low, strict=True):
        if what == "lse":
            seen = torch.isfinite(r)
            assert torch.equal(torch.isfinite(a), seen)
            a, r, e = a[seen], r[seen], e[seen]
        assert_error_ratio(a, r, e, what=f"{name} B={B} H={H} Hkv={Hkv} {what}")


@pytest.mark.parametrize("name", ["window", "causal", "padding", "document"])
@pytest.mark.parametrize(("B", "H", "Hkv"), SHAPES)
def test_packed_gqa_equals_expanded_kv(name, B, H, Hkv):
    """The packed call and the plain multi-head call on K/V copied out to the query heads do the
    same arithmetic in the same order per row: equal to float32 rounding."""
    q, k, v, _ = (t.float() for t in _inputs(B, H, Hkv, 93, 16))
    m = MASKS[name](93, 93)
    packed = tiled_attention(q, k, v, mask=m, block_size=8)
    plain = tiled_attention(q, expand_kv(k, H), expand_kv(v, H), mask=m, block_size=8)
    torch.testing.assert_close(packed.context, plain.context, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(packed.lse, plain.lse, atol=2e-6, rtol=1e-5)


def test_fused_gqa_forward_never_copies_kv_to_query_heads(monkeypatch):
    calls = []

    def counting(x, heads):
        calls.append(heads)
        return expand_kv(x, heads)

    monkeypatch.setattr(tiled_autograd, "expand_kv", counting)
    packed = []
    real = tiled_fused._call_groups
    monkeypatch.setattr(tiled_fused, "_call_groups", lambda *a, **kw: packed.append(1) or real(*a, **kw))
    q, k, v, _ = (t.float() for t in _inputs(1, 4, 1, 200, 32))
    with torch.no_grad():
        out = tiled_attention(q, k, v, mask=masks.sliding_window(40, 0), block_size=16)
    assert tiled_fused.fused_available() and calls == [] and packed
    ref = attnlab.attention(q.double(), k.double(), v.double(), mask=masks.sliding_window(40, 0),
                            backend="eager").context
    low = attnlab.attention(q, k, v, mask=masks.sliding_window(40, 0), backend="eager").context
    assert_error_ratio(out.context, ref, low, what="packed GQA, no K/V copy")


def test_gemma3_shape_fwd_and_bwd():
    """Gemma 3's local layers: head dim 256, 4 query heads on 1 K/V head, a causal window."""
    q64, k64, v64, do64 = _inputs(1, 4, 1, 150, 256, seed=3)
    m = masks.sliding_window(48, 0)
    ref = _eager(q64, k64, v64, do64, m)
    low = _eager(*(t.float() for t in (q64, k64, v64, do64)), m)
    got = _fwd_bwd(*(t.float() for t in (q64, k64, v64, do64)), m, block=32)
    for what, a, r, e in zip(("context", "lse", "dq", "dk", "dv"), got, ref, low, strict=True):
        assert_error_ratio(a, r, e, what=f"gemma3 {what}")


@pytest.mark.parametrize("mod", ["alibi", "softcap"])
def test_gqa_with_score_mod_fwd_and_bwd(mod):
    """score_mods take the plain-op tiles (K/V expanded); query head h still reads K/V h // g."""
    B, H, Hkv = 2, 4, 2
    sm = score_mods.alibi(H) if mod == "alibi" else score_mods.softcap(5.0)
    q64, k64, v64, do64 = _inputs(B, H, Hkv, 70, 16, seed=5)
    m = masks.sliding_window(20, 0)
    ref = _eager(q64, k64, v64, do64, m, sm)
    low = _eager(*(t.float() for t in (q64, k64, v64, do64)), m, sm)
    got = _fwd_bwd(*(t.float() for t in (q64, k64, v64, do64)), m, sm)
    for what, a, r, e in zip(("context", "lse", "dq", "dk", "dv"), got, ref, low, strict=True):
        assert_error_ratio(a, r, e, what=f"{mod} {what}")


def test_packed_heads_fill_taller_tiles_only_for_gqa():
    from attnlab.backends.tiled import choose_blocks

    w = masks.sliding_window(512, 0)
    assert choose_blocks(w, 4096, 4096) == (32, 32)  # multi-head: the small tile
    assert choose_blocks(w, 4096, 4096, packed_heads=4) == (64, 64)  # 4 x 64 rows >= 192
    assert choose_blocks(w, 4096, 4096, packed_heads=8) == (32, 32)  # 8 x 32 rows already
    causal = masks.causal()
    assert choose_blocks(causal, 4096, 4096, packed_heads=4) == choose_blocks(causal, 4096, 4096)

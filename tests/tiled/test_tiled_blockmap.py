"""Block maps against the materialised mask; sparse pattern definitions; bad input."""

import pytest
import torch

from attnlab import masks
from attnlab.backends import block_map, count_allowed, tiled_attention, tiled_options
from attnlab.backends.tiled.plan import build_plan
from attnlab.functional.masks import as_mask, materialize

NAMES = ["none", "causal", "causal-br", "window", "window-causal", "window-br", "document", "doc&causal",
         "padding", "prefix_lm", "dilated", "longformer", "strided", "fixed", "fixed-bidir", "dilated-br",
         "bigbird", "block_sparse",
         "or", "not", "custom"]
EXACT = {"none", "causal", "causal-br", "window", "window-causal", "window-br", "document", "doc&causal",
         "padding", "prefix_lm", "dilated", "dilated-br", "strided", "custom"}


def truth(m, lq, lk, bq, bk, batch=2, heads=4):
    """(any, all) per tile, over batch and heads, from the dense mask."""
    a = torch.ones(batch, heads, lq, lk, dtype=torch.bool) if m is None else \
        materialize(m, lq, lk, batch=batch, heads=heads)
    nq, nk = -(-lq // bq), -(-lk // bk)
    anyt = torch.zeros(nq, nk, dtype=torch.bool)
    allt = torch.zeros(nq, nk, dtype=torch.bool)
    for i in range(nq):
        for j in range(nk):
            t = a[:, :, i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]
            anyt[i, j] = t.any()
            allt[i, j] = t.all() and (j + 1) * bk <= lk  # a tile with padding keys is never full
    return anyt, allt


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("lq", "lk", "bq", "bk"), [(23, 29, 4, 4), (23, 29, 8, 5), (40, 37, 16, 8)])
def test_block_map_is_sound_and_exact_where_it_says_so(tl, name, lq, lk, bq, bk):
    if name in {"dilated", "longformer", "strided", "fixed", "fixed-bidir", "custom", "not"}:
        lk = lq
    m = tl.patterns(lq, lk)[name]
    mm = None if m is None else as_mask(m)
    bm = block_map(mm, lq, lk, bq, bk, batch=2, heads=4)
    got = bm.to_dense()
    anyt, allt = truth(m, lq, lk, bq, bk)
    assert not (got == 0)[anyt].any(), "a tile called empty holds allowed pairs"
    assert allt[got == 2].all(), "a tile called full holds masked pairs"
    if name in EXACT or (name in {"bigbird", "block_sparse"} and bq % 4 == 0 and bk % 4 == 0):
        assert bm.exact
        assert torch.equal(got > 0, anyt) and torch.equal(got == 2, allt)


def test_sliding_window_block_map_is_banded_and_sparse_at_1m():
    n = 1 << 20
    bm = block_map(masks.sliding_window(256, 0), n, n, 64, 64)
    assert bm.cols.numel() == 5 * (n // 64) - 10  # 5 tiles per query block, fewer at the start
    assert bm.density() < 1e-3
    plan = build_plan(bm, 8, 1 << 21)
    interior = [c for c in plan.chunks if c.segments[0].k_blocks.shape[1] == 5]
    assert all(s.k_start is not None for c in interior for s in c.segments)  # strided views
    assert len(plan.chunks) < 2000  # batched: far fewer matmuls than tiles


@pytest.mark.parametrize("name", ["window", "doc&causal", "longformer", "bigbird", "custom", "padding"])
def test_count_allowed_matches_materialised(tl, name):
    lq = lk = 37
    m = tl.patterns(lq, lk)[name]
    dense = materialize(m, lq, lk, batch=2, heads=4)
    assert count_allowed(as_mask(m), lq, lk, batch=2, heads=4, block=8) == int(dense.sum())


def brute(fn, n):
    return torch.tensor([[bool(fn(i, j)) for j in range(n)] for i in range(n)])


def test_sparse_patterns_follow_their_papers():
    n, l, c = 20, 4, 1
    dense = lambda m: materialize(m, n, n)[0, 0]  # noqa: E731
    # Child et al. 2019 §4.2
    assert torch.equal(dense(masks.sparse_transformer_strided(l)),
                       brute(lambda i, j: j <= i and (i - j <= l or (i - j) % l == 0), n))
    assert torch.equal(dense(masks.sparse_transformer_fixed(l, c)),
                       brute(lambda i, j: j <= i and (j // l == i // l or j % l >= l - c), n))
    assert torch.equal(dense(masks.dilated_sliding_window(2, 1, 3)),
                       brute(lambda i, j: -3 <= i - j <= 6 and (i - j) % 3 == 0, n))
    assert torch.equal(dense(masks.longformer(2, [0, 7])),
                       brute(lambda i, j: abs(i - j) <= 2 or i in (0, 7) or j in (0, 7), n))
    bb = dense(masks.bigbird(4, 3, 1, 1, seed=0))
    blocks = bb.view(5, 4, 5, 4).all(3).all(1)  # BigBird is block-structured
    assert torch.equal(bb, blocks.repeat_interleave(4, 0).repeat_interleave(4, 1))
    assert blocks[0].all() and blocks[:, 0].all()  # global block
    assert all(int(blocks[i].sum()) >= min(5, 3 + 1) for i in range(5))  # window + random
    assert torch.equal(bb, dense(masks.bigbird(4, 3, 1, 1, seed=0)))  # seeded


@pytest.mark.parametrize(("make", "pattern"), [
    (lambda: masks.sliding_window(-1), "left: expected an int >= 0, got -1"),
    (lambda: masks.dilated_sliding_window(-2, 0, 2), "left: expected an int >= 0, got -2"),
    (lambda: masks.dilated_sliding_window(2, 0, 0), "dilation: expected a positive int, got 0"),
    (lambda: masks.longformer(-1, [0]), "window: expected an int >= 0, got -1"),
    (lambda: masks.longformer(2, [-1]), "global_tokens: expected indices >= 0"),
    (lambda: masks.longformer(2, [3, 9], seq_len=8), "global_tokens: index 9 out of range for seq_len=8"),
    (lambda: masks.bigbird(0), "block_size: expected a positive int, got 0"),
    (lambda: masks.bigbird(4, num_window_blocks=2), "num_window_blocks: expected an odd number"),
    (lambda: masks.block_sparse(torch.ones(2, 2, dtype=torch.bool), -4), "block_size: expected a positive"),
    (lambda: masks.block_sparse(torch.ones(2, 2), 4), "layout: expected a 2-D bool tensor"),
    (lambda: masks.sparse_transformer_strided(0), "stride: expected a positive int, got 0"),
    (lambda: masks.sparse_transformer_fixed(4, 5), "summary: expected at most stride=4, got 5"),
])
def test_bad_pattern_arguments_name_argument_expected_and_given(make, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        make()


def test_bad_input_at_call_time(tl):
    q, k, v = tl.rand_qkv(Lq=8, Lk=8)
    with pytest.raises(ValueError, match="global_tokens: index 12 out of range for q_len=8"):
        tiled_attention(q, k, v, mask=masks.longformer(1, [12]))
    with pytest.raises(ValueError, match=r"layout:.*do not cover"):
        tiled_attention(q, k, v, mask=masks.block_sparse(torch.ones(1, 1, dtype=torch.bool), 4))
    with pytest.raises(ValueError, match="num_global_blocks"):
        tiled_attention(q, k, v, mask=masks.bigbird(4, 1, 3, 0))
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="block_size: expected a positive int"):
            tiled_options(block_size=bad).__enter__()
    with pytest.raises(ValueError, match="budget: expected a positive int"):
        tiled_attention(q, k, v, budget=0)
    with pytest.raises(TypeError, match="bool"):
        tiled_attention(q, k, v, mask=lambda b, h, q, kv: (q - kv).float())

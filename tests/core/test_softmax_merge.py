"""The one online-softmax merge (functional.softmax.merge_partials) that the tiled kernel's key
segments, sparse masks run as pieces and ring attention's hops all use: merging the parts'
(context, lse) must give the float64 softmax over the concatenated keys, also on rows that one
part, or every part, cannot see."""

from itertools import pairwise

import pytest
import torch

from attnlab.functional.softmax import masked_softmax, merge_partials

B, H, LQ, D = 2, 3, 9, 5
SPLIT = (4, 1, 6)  # key sets of different sizes (one of a single key)


def _case(seed: int = 0):
    """q, k, v and a mask over the concatenated keys with rows that see nothing of one part
    (rows 0-2, one part each), of every part (row 3) and of all but one key (row 4)."""
    g = torch.Generator().manual_seed(seed)
    lk = sum(SPLIT)
    q = torch.randn(B, H, LQ, D, generator=g, dtype=torch.float64) * 3
    k = torch.randn(B, H, lk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, lk, D, generator=g, dtype=torch.float64)
    allowed = torch.rand(B, H, LQ, lk, generator=g) > 0.3
    bounds = torch.tensor([0, *SPLIT]).cumsum(0).tolist()
    for row, (a, b) in enumerate(pairwise(bounds)):
        allowed[..., row, a:b] = False  # row `row` sees nothing of part `row`
    allowed[..., 3, :] = False  # sees no key at all
    allowed[..., 4, :] = False
    allowed[..., 4, 5] = True  # one key, in the one-key part
    return q, k, v, allowed, bounds


def _parts(q, k, v, allowed, bounds, dtype):
    parts = []
    for a, b in pairwise(bounds):
        s = (q @ k[..., a:b, :].transpose(-1, -2)).to(dtype)  # (B, H, Lq, Lk_p)
        w, lse = masked_softmax(s, allowed[..., a:b])
        parts.append((w @ v[..., a:b, :].to(dtype), lse))  # context (B, H, Lq, D), lse (B, H, Lq)
    return parts


def _reference(q, k, v, allowed):
    w, lse = masked_softmax(q @ k.transpose(-1, -2), allowed)  # float64, all keys at once
    return w @ v, lse


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_merge_equals_float64_softmax_over_the_concatenated_keys(dtype, inplace):
    q, k, v, allowed, bounds = _case()
    ref_ctx, ref_lse = _reference(q, k, v, allowed)
    parts = _parts(q, k, v, allowed, bounds, dtype)
    for row, (_, part_lse) in enumerate(parts):  # the case: a row empty on one side only
        assert torch.all(part_lse[..., row] == float("-inf")) and torch.isfinite(ref_lse[..., row]).all()
    ctx, lse = merge_partials(parts, inplace=inplace)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert ctx.dtype == dtype and lse.dtype == dtype
    torch.testing.assert_close(ctx.double(), ref_ctx, rtol=tol, atol=tol)
    seen = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse.double()[seen], ref_lse[seen], rtol=tol, atol=tol)
    assert torch.equal(torch.isfinite(lse), seen)
    assert torch.all(lse[~seen] == float("-inf"))  # row 3: -inf, not NaN
    assert torch.all(ctx[..., 3, :] == 0)  # exact zeros


def test_merge_of_two_parts_where_one_side_is_empty_returns_the_other_exactly():
    q, k, v, allowed, bounds = _case(1)
    (c1, l1), (c2, l2), _ = _parts(q, k, v, allowed, bounds, torch.float64)
    l2 = torch.full_like(l2, float("-inf"))  # the second part sees nothing on any row
    ctx, lse = merge_partials([(c1, l1), (torch.zeros_like(c2), l2)])
    assert torch.equal(lse, l1)
    torch.testing.assert_close(ctx, c1, rtol=1e-15, atol=0)


def test_merge_gradients_are_finite_and_zero_on_rows_no_part_sees():
    q, k, v, allowed, bounds = _case(2)
    parts = [(c.requires_grad_(True), lse.requires_grad_(True))
             for c, lse in _parts(q, k, v, allowed, bounds, torch.float64)]
    ctx, lse = merge_partials(parts)
    # lse -inf on row 3: its gradient is taken against finite values only
    (ctx.sum() + torch.where(torch.isfinite(lse), lse, 0).sum()).backward()
    for c, lp in parts:
        assert c.grad is not None and lp.grad is not None
        assert torch.isfinite(c.grad).all() and torch.isfinite(lp.grad).all()
        assert torch.all(c.grad[..., 3, :] == 0) and torch.all(lp.grad[..., 3] == 0)


def test_merge_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    parts = []
    for n in range(3):
        lse = torch.randn(2, 5, generator=g, dtype=torch.float64)
        lse[0, n] = float("-inf")  # a row empty on one side
        lse[1, 4] = float("-inf")  # a row empty on every side
        c = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
        c[~torch.isfinite(lse)] = 0.0
        parts.append((c.requires_grad_(True), lse.requires_grad_(True)))

    def f(*flat):
        ctx, lse = merge_partials(list(zip(flat[::2], flat[1::2], strict=True)))
        return ctx, torch.where(torch.isfinite(lse), lse, 0)

    assert torch.autograd.gradcheck(f, [t for p in parts for t in p])


def test_merge_needs_a_part():
    with pytest.raises(ValueError, match="parts: expected at least one"):
        merge_partials([])

"""Gradients of the tiled backend: gradcheck in float64, and float32 against the float64 eager
reference with the error-ratio rule (every pattern)."""

import pytest
import torch

import attnlab
from attnlab import masks, score_mods
from attnlab.backends import tiled_attention
from attnlab.backends.tiled import backward as tiled_backward
from attnlab.backends.tiled import fused as tiled_fused
from attnlab.testing import assert_error_ratio

NAMES = ["none", "causal-br", "window", "document", "doc&causal", "padding", "dilated", "dilated-br",
         "longformer", "strided", "fixed", "fixed-bidir", "bigbird", "block_sparse", "not", "custom"]
SQUARE = {"dilated", "longformer", "strided", "fixed", "fixed-bidir", "custom", "not"}


def fully_masked_rows(lq, lk):
    allowed = torch.ones(1, 2, lq, lk, dtype=torch.bool).tril(lk - lq)
    allowed[:, :, 2] = False  # a row that sees nothing
    allowed[:, 1, :, 3] = False
    return allowed


GRADCHECK = {
    "masked-mod": masks.padding(k_lengths=[7]) & masks.causal(),
    "fully-masked": "dense",
    "causal-br": masks.causal("bottom-right"),
    "window": masks.sliding_window(3, 1),
    "document": masks.document([0] * 4 + [1] * 5 + [2] * 3, [0] * 3 + [1] * 6 + [2] * 3),
}


@pytest.mark.parametrize("name", list(GRADCHECK))
@pytest.mark.parametrize("block", [4, 5])
@pytest.mark.parametrize("path", ["fused", "plain"])
def test_gradcheck_float64(name, block, path, monkeypatch):
    monkeypatch.setattr(tiled_fused, "AVAILABLE", path == "fused")
    monkeypatch.setattr(tiled_fused, "AVAILABLE_BACKWARD", path == "fused")
    monkeypatch.setattr(tiled_backward, "FUSED_BWD_MIN_ROWS", 1)  # small test tiles too
    lq, lk = (9, 12)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, lq, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, lk, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, lk, 3, generator=g, dtype=torch.float64, requires_grad=True)
    m = fully_masked_rows(lq, lk) if GRADCHECK[name] == "dense" else GRADCHECK[name]
    if name == "document":
        q = torch.randn(1, 2, lk, 4, generator=g, dtype=torch.float64, requires_grad=True)
    # Full Jacobians for one tile shape; the random-projection check (fast_mode) for the other.
    assert torch.autograd.gradcheck(
        lambda q, k, v: tiled_attention(q, k, v, mask=m, block_size=block, budget=60).context, (q, k, v),
        fast_mode=block == 5)


def test_gradcheck_with_score_mod_and_gqa():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    mod = score_mods.compose(score_mods.alibi(4), score_mods.softcap(2.0))
    assert torch.autograd.gradcheck(lambda q, k, v: tiled_attention(
        q, k, v, mask=masks.sliding_window(4, 2), score_mod=mod, block_size=4, budget=40).context, (q, k, v),
        fast_mode=True)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("path", ["fused", "plain"])
def test_float32_gradients_match_float64_reference(tl, name, path, monkeypatch):
    # "fused": ATen's fused flash loops per tile (the default); "plain": PyTorch ops per tile.
    monkeypatch.setattr(tiled_fused, "AVAILABLE", path == "fused")
    monkeypatch.setattr(tiled_fused, "AVAILABLE_BACKWARD", path == "fused")
    monkeypatch.setattr(tiled_backward, "FUSED_BWD_MIN_ROWS", 1)  # small test tiles too
    lq, lk = (23, 23) if name in SQUARE else (23, 29)
    m = tl.patterns(lq, lk)[name]
    q, k, v = tl.rand_qkv(H=4, Hkv=2, Lq=lq, Lk=lk, grad=True)
    do = torch.randn(2, 4, lq, 8, generator=torch.Generator().manual_seed(9))

    def grads(q, k, v, backend, **kw):
        q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
        out = (tiled_attention(q, k, v, mask=m, **kw) if backend == "tiled"
               else attnlab.attention(q, k, v, mask=m, backend="eager"))
        out.context.backward(do.to(q.dtype))
        return q.grad, k.grad, v.grad

    ref = grads(q.double(), k.double(), v.double(), "eager")
    low = grads(q, k, v, "eager")
    for kw in ({"block_size": 4, "budget": 100}, {}):
        got = grads(q, k, v, "tiled", **kw)
        for nm, a, r, e in zip("qkv", got, ref, low, strict=True):
            assert_error_ratio(a, r, e, what=f"d{nm} {name} {kw}", floor=2e-6)


def test_fully_masked_rows_get_zero_gradients():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 8, 4, generator=g, requires_grad=True) for _ in range(3))
    m = masks.padding(q_lengths=[5], k_lengths=[6])
    out = tiled_attention(q, k, v, mask=m, block_size=4)
    out.context[:, :, 5:].sum().backward()  # only the rows that see nothing
    assert torch.all(q.grad == 0) and torch.all(k.grad == 0) and torch.all(v.grad == 0)


def test_captured_tensors_in_score_mod_and_bias_get_gradients():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 10, 4, generator=g, dtype=torch.float64) for _ in range(3))
    table = torch.randn(2, 7, generator=g, dtype=torch.float64, requires_grad=True)
    mod = score_mods.relative_position_bias(table, 3)
    bias = torch.randn(1, 2, 10, 10, generator=g, dtype=torch.float64, requires_grad=True)
    grads = []
    for backend in ("tiled", "eager"):
        out = attnlab.attention(q, k, v, mask=bias, score_mod=mod, backend=backend)
        out.context.square().sum().backward()
        grads.append((table.grad.clone(), bias.grad.clone()))
        table.grad, bias.grad = None, None
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_lse_is_differentiable():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 11, 4, generator=g, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    m = masks.padding(q_lengths=[9]) & masks.causal()  # rows 9, 10: lse = -inf, zero gradient
    assert torch.autograd.gradcheck(
        lambda q, k, v: tiled_attention(q, k, v, mask=m, block_size=4, budget=40).lse.clamp(min=-1e9),
        (q, k, v))
    both = tiled_attention(q, k, v, mask=m, block_size=4)
    ref = attnlab.attention(q, k, v, mask=m, backend="eager")
    (both.context.sum() + both.lse.clamp(min=-1e9).sum()).backward()
    g1 = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (ref.context.sum() + ref.lse.clamp(min=-1e9).sum()).backward()
    for a, b in zip(g1, (q.grad, k.grad, v.grad), strict=True):
        torch.testing.assert_close(a, b)


def test_training_memory_is_not_quadratic():
    q, k, v = (torch.randn(1, 1, 4096, 16, requires_grad=True) for _ in range(3))
    out = tiled_attention(q, k, v, mask=masks.sliding_window(32, 0))
    # Saved for backward: q, k, v, the context and lse only (no 4096 x 4096 weights).
    fn = out.context.grad_fn
    saved = sum(t.numel() for t in fn.saved_tensors)
    assert saved < 5 * 4096 * 16 + 4096 + 1
    out.context.sum().backward()
    assert q.grad.shape == q.shape

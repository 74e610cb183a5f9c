"""weights_for (exact weights from the saved lse) and the auto rule."""

import pytest
import torch
from typer.testing import CliRunner

import attnlab
from attnlab import masks, score_mods
from attnlab.backends import choose_backend, weights_for
from attnlab.backends.registry import AUTO_RULE, AttentionCall
from attnlab.functional.mask_input import normalize_mask


@pytest.mark.parametrize("name", ["none", "causal-br", "window", "doc&causal", "bigbird", "custom"])
def test_weights_for_equals_eager_weights(tl, name):
    lq, lk = (23, 23) if name in {"bigbird", "custom"} else (23, 29)
    m = tl.patterns(lq, lk)[name]
    q, k, v = tl.rand_qkv(H=4, Hkv=2, Lq=lq, Lk=lk)
    eager = attnlab.attention(q, k, v, mask=m, backend="eager", return_weights=True)
    fast = attnlab.attention(q, k, v, mask=m, backend="tiled")
    full = weights_for(q, k, fast.lse, mask=m)
    torch.testing.assert_close(full, eager.weights, atol=1e-6, rtol=1e-5)
    some = weights_for(q, k, fast.lse, rows=[0, 5, -1], heads=slice(1, 3), mask=m)
    torch.testing.assert_close(some, eager.weights[:, 1:3][:, :, [0, 5, lq - 1]], atol=1e-6, rtol=1e-5)


def test_weights_for_with_score_mod_dense_mask_and_fully_masked_rows(tl):
    q, k, v = tl.rand_qkv(Lq=9, Lk=9)
    allowed = torch.ones(9, 9, dtype=torch.bool).tril()
    allowed[4] = False
    mod = score_mods.alibi(4)
    eager = attnlab.attention(q, k, v, mask=allowed, score_mod=mod, backend="eager", return_weights=True)
    fast = attnlab.attention(q, k, v, mask=allowed, score_mod=mod, backend="tiled")
    w = weights_for(q, k, fast.lse, mask=allowed, score_mod=mod)
    torch.testing.assert_close(w, eager.weights, atol=1e-6, rtol=1e-5)
    assert torch.all(w[:, :, 4] == 0)
    w2 = weights_for(q[0, 0], k[0, 0], fast.lse[0, 0], rows=4, mask=allowed[None, None], score_mod=mod)
    assert w2.shape == (1, 9) and torch.all(w2 == 0)


def test_weights_for_at_a_length_where_the_matrix_would_not_fit():
    n = 1 << 17  # the full weights would be 8 x 2^34 floats
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, n, 16, generator=g) for _ in range(3))
    m = masks.sliding_window(64, 0)
    out = attnlab.attention(q, k, v, mask=m)  # auto -> tiled
    w = weights_for(q, k, out.lse, rows=[0, n // 2, n - 1], mask=m)
    assert w.shape == (1, 1, 3, n)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 1, 3))
    assert int((w[0, 0, 1] > 0).sum()) == 65


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"rows": [40]}, r"rows: expected indices in \[-9, 9\), got \[40\]"),
    ({"heads": 1.5}, "heads: expected an int, a slice or a 1-D list of ints"),
    ({"lse": torch.zeros(3)}, r"lse: expected shape \(2, 4, 9\)"),
    ({"scale": float("inf")}, "scale: expected a finite number"),
])
def test_weights_for_bad_input(tl, kwargs, pattern):
    q, k, _ = tl.rand_qkv(Lq=9, Lk=9)
    lse = kwargs.pop("lse", torch.zeros(2, 4, 9))
    with pytest.raises((ValueError, TypeError), match=pattern):
        weights_for(q, k, lse, **kwargs)


def call(lq, lk, mask=None, score_mod=None, weights=False, dropout=0.0):
    q, k, v = torch.zeros(1, 2, lq, 8), torch.zeros(1, 2, lk, 8), torch.zeros(1, 2, lk, 8)
    nm = normalize_mask(mask, (1, 2, lq, lk), dtype=q.dtype, device=q.device)
    return AttentionCall(q, k, v, nm, score_mod, 0.35, dropout, dropout > 0, weights)


@pytest.mark.parametrize(("c", "expected"), [
    (call(2048, 2048, masks.sliding_window(128)), "tiled"),
    (call(2048, 2048, masks.document([0] * 1024 + [1] * 1024) & masks.causal()), "tiled"),
    (call(2048, 2048, masks.longformer(64, [0])), "tiled"),
    (call(1024, 4096, masks.causal("bottom-right")), "tiled"),
    (call(2048, 2048, masks.causal()), "sdpa"),
    (call(2048, 2048), "sdpa"),
    (call(2048, 2048, torch.ones(2048, 2048, dtype=torch.bool)), "sdpa"),
    (call(256, 256, masks.sliding_window(16)), "sdpa"),
    (call(2048, 2048, masks.sliding_window(128), weights=True), "eager"),
    (call(2048, 2048, None, score_mods.alibi(2)), "tiled"),
    (call(64, 64, None, score_mods.alibi(2)), "eager"),
    (call(2048, 2048, masks.sliding_window(128), dropout=0.1), "sdpa"),
])
def test_auto_rule(c, expected):
    assert choose_backend(c)[0].name == expected


def test_backends_explain_prints_the_rule():
    from attnlab.cli.main import app

    res = CliRunner().invoke(app, ["backends", "--explain"])
    assert res.exit_code == 0, res.output
    assert "tiled" in res.output and "mask_mod SDPA would have to materialise" in res.output
    assert "tiled" in AUTO_RULE


def test_explain_is_generated_from_the_registry():
    """The text follows the ranks, capabilities and prefers docstrings that auto uses: a new
    backend appears at its rank with its own words, and disappears with it."""
    from dataclasses import replace

    from attnlab.backends import registry

    text = registry.explain_auto()
    ranked = sorted((registry.get_backend(n) for n in registry.backend_names()), key=lambda b: b.auto_rank)
    positions = [text.index(f". {b.name} (auto_rank {b.auto_rank}") for b in ranked]
    assert positions == sorted(positions)

    def prefers_toy(call):
        """calls with an odd number of heads (a test)."""
        return call.q.shape[1] % 2 == 1

    toy = replace(registry.get_backend("sdpa"), name="toy", auto_rank=10, prefers=prefers_toy)
    registry.register_backend(toy)
    try:
        text = registry.explain_auto()
        assert "1. toy (auto_rank 10; cannot: returns weights, returns lse, score mod). Prefers: calls " \
               "with an odd number of heads (a test)." in text
    finally:
        del registry._REGISTRY["toy"]
    assert "toy" not in registry.explain_auto()

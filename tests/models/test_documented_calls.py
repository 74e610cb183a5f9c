"""Calls the docs show, and calls that used to fail or mislead (issue 16, item 2)."""

from __future__ import annotations

import pytest
import torch

import attnlab
from attnlab import masks
from attnlab.backends import weights_for
from attnlab.inspect.attention_cache import capture
from attnlab.inspect.attention_rollout import rollout
from attnlab.models.loading import load_model
from attnlab.modules.multihead import KVCache, MultiHeadAttention


@pytest.fixture(scope="module")
def lm():
    return load_model(None)  # the embedded all-MiniLM-L6-v2


def test_forward_with_a_backend_that_returns_no_weights_runs_as_documented(lm):
    enc = lm.encode("The animal didn't cross the street because it was too tired")
    ref = lm.forward(enc)  # auto: weights included
    out = lm.forward(enc, backend="sdpa")  # docs/models.md; used to raise "cannot return weights"
    assert ref.attentions is not None and out.attentions is None
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="'sdpa' cannot return weights"):
        lm.forward(enc, backend="sdpa", need_weights=True)
    with attnlab.use_backend("sdpa"):  # the context manager is a choice of backend too
        assert lm.forward(enc).attentions is None


def test_rollout_takes_what_capture_returns(lm):
    cache = capture(lm, "The animal didn't cross the street")
    r = rollout(cache)  # used to raise AttributeError
    assert torch.equal(r, rollout(cache.weights))
    with pytest.raises(TypeError, match=r"weights: expected a .* tensor or a captured AttentionCache"):
        rollout("attention")


def test_weights_for_refuses_a_mask_other_than_the_forwards():
    q, k, v = (torch.randn(1, 2, 64, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    out = attnlab.attention(q, k, v, mask=masks.causal(), backend="tiled")
    w = weights_for(q, k, out.lse, rows=[5, 63], mask=masks.causal())
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="pass the same mask, score_mod and scale"):
        weights_for(q, k, out.lse, rows=[5])  # no mask: rows used to sum to 7, silently


def test_weights_for_refuses_a_mask_that_opens_a_row_the_forward_saw_empty():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    before = masks.causal() & ~masks.sliding_window(0, 0)  # row 0 sees no key: lse -inf
    out = attnlab.attention(q, k, k, mask=before, backend="tiled")
    assert torch.equal(weights_for(q, k, out.lse, rows=[0], mask=before), torch.zeros(1, 2, 1, 6))
    with pytest.raises(ValueError, match=r"lse: a row that saw no key .*sees 1 here .*row 0\)"):
        weights_for(q, k, out.lse, rows=[0], mask=masks.causal())  # used to return zeros


def test_a_kv_cache_refuses_a_top_left_mask_and_is_exact_bottom_right():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2)
    x = torch.randn(1, 6, 16)
    full = mha(x, mask=masks.causal()).output  # (1, 6, 16) in one call
    cache = KVCache()
    mha(x[:, :4], mask=masks.causal(), cache=cache)  # empty cache: top-left == bottom-right
    with pytest.raises(ValueError, match="aligned top-left, but 4 cached key"):
        mha(x[:, 4:], mask=masks.causal(), cache=cache)
    assert len(cache) == 4  # the refused call left the cache as it was
    cache = KVCache()
    mha(x[:, :4], mask=masks.causal("bottom-right"), cache=cache)
    step = mha(x[:, 4:], mask=masks.causal("bottom-right"), cache=cache).output
    torch.testing.assert_close(step, full[:, 4:])

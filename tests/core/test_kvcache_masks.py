"""A KV cache with a top-left aligned mask hides the past from the new queries; MultiHeadAttention
refuses it, also when the top-left part sits inside a combination (issue 16, item 2)."""

from __future__ import annotations

import pytest
import torch

from attnlab import masks
from attnlab.modules.multihead import KVCache, MultiHeadAttention


@pytest.mark.parametrize(("top_left", "bottom_right"), [
    (masks.causal() & masks.sliding_window(3, 0),
     masks.causal("bottom-right") & masks.sliding_window(3, 0, "bottom-right")),
    (masks.sliding_window(3, 0) | masks.causal(), masks.sliding_window(3, 0, "bottom-right")),
    (~~masks.causal(), masks.causal("bottom-right")),
])
def test_combined_masks_with_a_top_left_part_are_refused_under_a_cache(top_left, bottom_right):
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2)
    x = torch.randn(1, 7, 16)
    cache = KVCache()
    mha(x[:, :4], mask=top_left, cache=cache)  # nothing cached yet: the alignments agree
    with pytest.raises(ValueError, match=r"has top-left aligned parts \(.*\), but 4 cached key"):
        mha(x[:, 4:], mask=top_left, cache=cache)
    assert len(cache) == 4  # refused before the cache changed
    full = mha(x, mask=bottom_right).output  # (1, 7, 16) in one call
    cache = KVCache()
    mha(x[:, :4], mask=bottom_right, cache=cache)
    step = mha(x[:, 4:], mask=bottom_right, cache=cache).output
    torch.testing.assert_close(step, full[:, 4:])


def test_masks_without_alignment_still_pass_under_a_cache():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 5, 8)
    cache = KVCache()
    mha(x[:, :3], cache=cache)
    mha(x[:, 3:], mask=masks.full(), cache=cache)  # nothing position-aligned to get wrong
    assert len(cache) == 5


def test_a_prefix_lm_mask_under_a_cache_is_refused():
    # prefix_lm is causal from query 0 (no alignment to choose): under a cache its new queries
    # would lose every cached key past the prefix, silently.
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 6, 8)
    cache = KVCache()
    mha(x[:, :4], mask=masks.prefix_lm(2), cache=cache)
    with pytest.raises(ValueError, match=r"mask: prefix_lm\[2\] numbers the 2 new queries from 0, but 4 "
                                         r"cached key\(s\) precede them"):
        mha(x[:, 4:], mask=masks.prefix_lm(2), cache=cache)
    assert len(cache) == 4

import pytest
import torch

from attnlab import masks
from attnlab.functional.masks import materialize


def dense(m, lq, lk, **kw):
    return materialize(m, lq, lk, **kw)[0, 0]


def test_causal_top_left_vs_bottom_right_differ_when_lq_ne_lk():
    tl = dense(masks.causal("top-left"), 2, 4)
    br = dense(masks.causal("bottom-right"), 2, 4)
    assert tl.tolist() == [[True, False, False, False], [True, True, False, False]]
    assert br.tolist() == [[True, True, True, False], [True, True, True, True]]
    # equal when square
    assert torch.equal(dense(masks.causal("top-left"), 5, 5), dense(masks.causal("bottom-right"), 5, 5))
    assert torch.equal(dense(masks.causal(), 5, 5), torch.ones(5, 5, dtype=torch.bool).tril())


def test_bottom_right_with_more_queries_than_keys_leaves_first_rows_empty():
    br = dense(masks.causal("bottom-right"), 4, 2)
    assert br.tolist() == [[False, False], [False, False], [True, False], [True, True]]


def test_sliding_window_bounds_are_inclusive():
    m = dense(masks.sliding_window(2, 1), 6, 6)
    for i in range(6):
        for j in range(6):
            assert bool(m[i, j]) == (i - 2 <= j <= i + 1)
    assert dense(masks.sliding_window(0, 0), 3, 3).tolist() == torch.eye(3, dtype=torch.bool).tolist()


def test_padding_keys_and_queries():
    m = materialize(masks.padding(q_lengths=[2, 3], k_lengths=[1, 4]), 3, 4, batch=2)
    assert m[0, 0].tolist() == [[True, False, False, False]] * 2 + [[False] * 4]
    assert m[1, 0].tolist() == [[True] * 4] * 3


def test_prefix_lm_and_document():
    m = dense(masks.prefix_lm(2), 4, 4)
    assert m.tolist() == [[True, True, False, False], [True, True, False, False],
                          [True, True, True, False], [True, True, True, True]]
    d = dense(masks.document([0, 0, 1, 1, 1]) & masks.causal(), 5, 5)
    assert d[3].tolist() == [False, False, True, True, False]
    assert d[1].tolist() == [True, True, False, False, False]


def test_combinators_and_plain_mask_mods():
    def even_keys(b, h, q, kv):
        return kv % 2 == 0

    m = dense(~masks.causal() | even_keys, 4, 4)
    ref = ~torch.ones(4, 4, dtype=torch.bool).tril() | (torch.arange(4) % 2 == 0)
    assert torch.equal(m, ref)
    both = masks.causal() & masks.sliding_window(1, 0)
    assert torch.equal(dense(both, 4, 4), dense(masks.sliding_window(1, 0), 4, 4))


def test_per_head_mask_mod():
    m = materialize(lambda b, h, q, kv: kv <= q + h, 3, 3, heads=2)
    assert m[0, 0].sum() == 6 and m[0, 1].sum() == 8


@pytest.mark.parametrize(
    ("make", "arg"),
    [(lambda: masks.sliding_window(-1, 0), "left"), (lambda: masks.sliding_window(1, -3), "right"),
     (lambda: masks.causal("middle"), "align"), (lambda: masks.prefix_lm(-2), "prefix_len"),
     (lambda: masks.padding(), "padding"), (lambda: masks.padding(k_lengths=[-1]), "k_lengths"),
     (lambda: masks.document([[0.5]]), "segment_ids")],
)
def test_bad_mask_arguments_name_the_argument(make, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        make()


def test_mask_mod_with_wrong_arity_and_non_bool_output():
    with pytest.raises(TypeError, match="4 parameters"):
        materialize(lambda q, kv: q >= kv, 2, 2)
    with pytest.raises(TypeError, match="bool"):
        materialize(lambda b, h, q, kv: (q - kv).float(), 2, 2)


def test_bottom_right_mask_needs_lengths_when_called_bare():
    with pytest.raises(ValueError, match="materialize"):
        masks.causal("bottom-right")(torch.tensor(0), torch.tensor(0), torch.tensor(1), torch.tensor(0))

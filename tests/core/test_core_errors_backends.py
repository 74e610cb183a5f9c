import numpy as np
import pytest
import torch

import attnlab
from attnlab import masks
from attnlab.backends import choose_backend, get_backend
from attnlab.functional.checks import ArgumentError, expect_int, expect_nonneg_int, expect_positive_int


def qkv(Lq=4, Lk=6, D=8):
    return torch.randn(1, 2, Lq, D), torch.randn(1, 2, Lk, D), torch.randn(1, 2, Lk, D)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"k": torch.randn(1, 2, 6, 5)}, r"k: expected head dim 8.*\(1, 2, 6, 5\)"),
        ({"v": torch.randn(1, 2, 5, 8)}, r"v: expected leading dims \(1, 2, 6\).*\(1, 2, 5, 8\)"),
        ({"k": torch.randn(2, 2, 6, 8), "v": torch.randn(2, 2, 6, 8)}, "k: expected batch 1"),
        ({"k": torch.randn(1, 3, 6, 8), "v": torch.randn(1, 3, 6, 8)}, "divides q's 2"),
        ({"k": torch.randn(1, 2, 6, 8, dtype=torch.float64)}, "k: expected dtype torch.float32"),
        ({"k": torch.randn(2, 6, 8)}, "k: expected 4 dims"),
        ({"q": torch.ones(1, 2, 4, 8, dtype=torch.long)}, "q: expected a floating-point"),
        ({"mask": torch.ones(1, 2, 4, 5, dtype=torch.bool)}, r"mask: expected a shape.*Lk=6.*\(1, 2, 4, 5\)"),
        ({"mask": torch.ones(3, 1, 4, 6, dtype=torch.bool)}, r"mask: expected a shape.*B=1"),
        ({"mask": torch.ones(4, 6, dtype=torch.int64)}, "mask: expected a bool tensor.*int64"),
        ({"mask": torch.full((4, 6), float("nan"))}, "NaN"),
        ({"mask": "causal"}, "mask_mod"),
        ({"scale": float("nan")}, "scale"),
        ({"dropout_p": 1.5}, "dropout_p"),
        ({"backend": "flashy"}, "backend: expected one of"),
        ({"backend": "sdpa", "return_weights": True}, "'sdpa' cannot return weights"),
        ({"backend": "sdpa", "score_mod": lambda s, b, h, q, k: s}, "score_mod"),
    ],
)
def test_bad_input_names_argument_expected_and_given(kwargs, pattern):
    q, k, v = qkv()
    args = {"q": q, "k": k, "v": v}
    args.update({n: kwargs.pop(n) for n in ("q", "k", "v") if n in kwargs})
    with pytest.raises((ValueError, TypeError), match=pattern):
        attnlab.attention(args["q"], args["k"], args["v"], **kwargs)


def test_device_mismatch_is_an_error():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="k: expected device cpu"):
        attnlab.attention(q, k.to("meta"), v)


def test_negative_window_is_an_error():
    with pytest.raises(ValueError, match="left: expected an int >= 0, got -1"):
        masks.sliding_window(-1)


def test_one_integer_check():
    """expect_int: an int, not a bool, in lo..hi; the message names the argument, what was expected
    and what was given; a list's check shows the list; IndexError where callers index."""
    assert expect_int("n", 3, 1, 3) == 3 and expect_int("n", -2, -2) == -2
    for bad in (True, 4, 2.0, "2"):
        with pytest.raises(ArgumentError) as e:
            expect_int("n", bad, 1, 3)
        assert (e.value.name, str(e.value)) == ("n", f"n: expected an int in 1..3, got {bad!r}")
    with pytest.raises(ValueError, match=r"^heads: expected ints in 0\.\.3, got \[1, 7\]$"):
        expect_int("heads", 7, 0, 3, expected="ints in 0..3", got=[1, 7])
    with pytest.raises(IndexError, match=r"^pos: expected an int <= 2, got 5$"):
        expect_int("pos", 5, hi=2, error=IndexError)
    assert expect_int("k", np.int64(2), 0, kinds=(int, np.integer)) == 2
    with pytest.raises(ArgumentError, match="k: expected an int >= 0"):
        expect_int("k", np.int64(2), 0)  # numpy's ints only where a caller admits them
    with pytest.raises(ArgumentError, match=r"^k: expected a positive int, got 0$"):
        expect_positive_int("k", 0)
    with pytest.raises(ArgumentError, match=r"^k: expected an int >= 0, got -1$"):
        expect_nonneg_int("k", -1)


def test_mask_shape_broadcast_forms_are_accepted():
    q, k, v = qkv()
    pad = torch.tensor([True] * 4 + [False] * 2)
    for m in (pad, pad.view(1, 1, 1, 6), pad.expand(4, 6), pad.view(1, 6)):
        out = attnlab.attention(q, k, v, mask=m)
        ref = attnlab.attention(q, k[:, :, :4], v[:, :, :4])
        torch.testing.assert_close(out.context, ref.context)


def test_use_backend_context_and_auto_rule():
    q, k, v = qkv()
    seen = []
    eager = get_backend("eager")
    orig = eager.run
    object.__setattr__(eager, "run", lambda call: seen.append("eager") or orig(call))
    try:
        attnlab.attention(q, k, v)
        assert seen == []  # auto: sdpa for plain calls
        with attnlab.use_backend("eager"):
            attnlab.attention(q, k, v)
        assert seen == ["eager"]
        attnlab.attention(q, k, v, return_weights=True)
        assert seen == ["eager", "eager"]
    finally:
        object.__setattr__(eager, "run", orig)
    with pytest.raises(ValueError, match="backend"), attnlab.use_backend("nope"):
        pass


def test_choose_backend_reports_reason():
    from attnlab.backends.registry import AttentionCall
    from attnlab.functional.mask_input import NormalizedMask

    q, k, v = qkv()
    call = AttentionCall(q, k, v, NormalizedMask(), None, 0.3, 0.0, False, True)
    b, why = choose_backend(call)
    assert b.name == "eager" and "eager" in why
    call.return_weights = False
    assert choose_backend(call)[0].name == "sdpa"

"""Two identical forward calls give bitwise-identical results on every backend, in every dtype
(tiled's workers write disjoint query rows; nothing accumulates in a racy order)."""

import pytest
import torch

import attnlab
from attnlab import masks

BACKENDS = ["eager", "sdpa", "tiled"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def inputs(dtype, B=2, H=4, Hkv=2, Lq=160, Lk=203, D=32):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, Lq, D, generator=g)
    k, v = (torch.randn(B, Hkv, Lk, D, generator=g) for _ in range(2))
    return q.to(dtype), k.to(dtype), v.to(dtype)


def mask_cases(Lq=160, Lk=203):
    g = torch.Generator().manual_seed(1)
    return {
        "none": None,
        "causal-br": masks.causal("bottom-right"),
        "window": masks.sliding_window(40, 7),
        "padding": masks.padding(q_lengths=[160, 120], k_lengths=[203, 70]),
        "bias": torch.randn(1, 4, Lq, Lk, generator=g).masked_fill(torch.rand(Lq, Lk, generator=g) < 0.2,
                                                                   float("-inf")),
    }


def same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
def test_repeated_forwards_are_bitwise_equal(backend, dtype):
    q, k, v = inputs(dtype)
    for name, mask in mask_cases().items():
        if isinstance(mask, torch.Tensor):
            mask = mask.to(dtype)
        runs = [attnlab.attention(q, k, v, mask=mask, backend=backend, return_weights=backend == "eager")
                for _ in range(2)]
        a, b = runs
        assert torch.isfinite(a.context).all(), (name, "non-finite context")
        assert torch.equal(a.context, b.context), (name, "context differs between two identical calls")
        assert same(a.weights, b.weights) and same(a.lse, b.lse), (name, "weights/lse differ")


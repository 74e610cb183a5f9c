"""Eager attention at a length whose (B, H, Lq, Lk) scores cannot fit fails before allocating,
with an error that says how much the scores need and which backends do without them."""

import re

import pytest
import torch

import attnlab
from attnlab import MultiHeadAttention
from attnlab.backends import eager as eager_backend

N = 1 << 20  # a 1M-token sequence: its scores are 2^40 float32 numbers, 4.4 TB


def long_qkv(dtype=torch.float32, L=N, D=1):
    return tuple(torch.zeros(1, 1, L, D, dtype=dtype) for _ in range(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_eager_says_what_the_scores_need_instead_of_an_allocator_error(dtype):
    q, k, v = long_qkv(dtype)
    with pytest.raises(MemoryError) as info:
        attnlab.attention(q, k, v, backend="eager")
    err = info.value
    assert isinstance(err, ValueError)  # also a ValueError: an argument the backend cannot serve
    msg = str(err)
    assert f"q (1, 1, {N}, 1), k (1, 1, {N}, 1)" in msg
    assert f"(B, H, Lq, Lk) = (1, 1, {N}, {N}) scores in torch.float32" in msg  # float32 for half too
    assert "4.4 TB each" in msg
    assert re.search(r"but [\d.]+ [KMGT]?B is available", msg)
    assert "backend='tiled'" in msg and "weights_for" in msg and "backend='sdpa'" in msg


def test_auto_with_weights_and_multihead_attention_get_the_same_error():
    q, k, v = long_qkv()
    with pytest.raises(eager_backend.EagerMemoryError, match="backend='tiled'"):
        attnlab.attention(q, k, v, return_weights=True)  # auto picks eager for weights
    mha = MultiHeadAttention(2, 1)
    x = torch.zeros(1, N, 2)
    with pytest.raises(eager_backend.EagerMemoryError, match=rf"\(B, H, Lq, Lk\) = \(1, 1, {N}, {N}\)"):
        mha(x, need_weights=True)


def test_the_check_compares_with_the_memory_available(monkeypatch):
    q, k, v = long_qkv(L=4096, D=4)  # scores 4096² float32 = 67.1 MB, two copies 134 MB
    monkeypatch.setattr(eager_backend, "available_memory", lambda device: (100_000_000, "a test"))
    with pytest.raises(eager_backend.EagerMemoryError,
                       match=r"67\.1 MB each and at least 2 such tensors \(134\.2 MB\), but 100\.0 MB is "
                             r"available \(a test\)"):
        attnlab.attention(q, k, v, backend="eager")
    monkeypatch.setattr(eager_backend, "available_memory", lambda device: (200_000_000, "a test"))
    assert attnlab.attention(q, k, v, backend="eager").context.shape == (1, 1, 4096, 4)
    monkeypatch.setattr(eager_backend, "available_memory", lambda device: None)  # unknown: run
    assert attnlab.attention(q, k, v, backend="eager").context.shape == (1, 1, 4096, 4)


def test_available_memory_without_psutil_reads_proc_meminfo(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError("no psutil")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    got = eager_backend.available_memory(torch.device("cpu"))
    assert got is not None and got[0] > 0
    try:
        with open("/proc/meminfo") as f:
            has_meminfo = any(line.startswith("MemAvailable:") for line in f)
    except OSError:
        has_meminfo = False
    if has_meminfo:
        assert got[1] == "/proc/meminfo MemAvailable"

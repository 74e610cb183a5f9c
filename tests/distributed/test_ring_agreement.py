"""Ranks that make different calls get the same clear error on every rank, never a crash or a hang.

Two processes on gloo, spawned once; every case runs in that launch and the parent waits at most
TIMEOUT seconds. Before the agreement check, float32 on one rank and float64 on the other made
gloo abort rank 0 (SIGABRT), a different layout or mode blocked both ranks until the process
group's timeout, and different masks gave each rank its own silently.
"""

from __future__ import annotations

import time
import traceback
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from attnlab import masks
from attnlab.distributed import ring_attention

from .conftest import run_ranks

TIMEOUT = 90  # seconds for the whole launch; a hang fails the test


def _expect(rank: int, match: str, **per_rank) -> None:
    """Call ring_attention with this rank's arguments; every rank must raise ``match``."""
    import re

    kw = {name: value[rank] for name, value in per_rank.items()}
    dtype = kw.pop("dtype", torch.float64)
    length = kw.pop("length", 8)
    q = torch.randn(1, 2, length, 4, dtype=dtype)
    try:
        ring_attention(q, q, q, **kw)
    except (ValueError, TypeError) as e:
        assert re.search(match, str(e)), f"rank {rank}: {e!r} does not match {match!r}"
        assert "\n" not in str(e) and len(str(e)) < 600, str(e)
        return
    raise AssertionError(f"rank {rank}: no error for {per_rank} (expected {match!r})")


def _cases(rank: int, world: int) -> None:
    import torch.distributed as dist

    win = [masks.causal() & masks.sliding_window(2), masks.causal() & masks.sliding_window(3)]
    alibi = [lambda s, b, h, q, kv: s - 0.5 * (q - kv), lambda s, b, h, q, kv: s - 0.25 * (q - kv)]
    _expect(rank, r"^q/k/v dtype: expected the same dtypes on every rank, got rank 0: "
                  r"\['float32'.*rank 1: \['float64'", dtype=(torch.float32, torch.float64))
    _expect(rank, r"^layout: expected the same layout on every rank, got rank 0: contiguous, "
                  r"rank 1: zigzag", layout=("contiguous", "zigzag"))
    _expect(rank, r"^mode: expected the same mode .* rank 0: ring, rank 1: allgather",
            mode=("ring", "allgather"))
    _expect(rank, r"^scale: expected the same scale", scale=(0.5, 0.25))
    _expect(rank, r"^mask \(fingerprint\): expected the same mask", mask=win)
    _expect(rank, r"^mask \(fingerprint\)", mask=(None, masks.causal()))
    _expect(rank, r"^score_mod \(fingerprint\): expected the same score_mod", score_mod=alibi)
    _expect(rank, r"same shape on every rank", length=(8, 10))
    # One rank refuses its own arguments: it raises its error, the others name it.
    _expect(rank, r"^mode: expected one of" if rank == 1 else r"rank 1 refused its arguments "
            r"\(ValueError: mode: expected one of", mode=("ring", "spiral"))
    _expect(rank, r"^timeout: expected a positive number" if rank == 0 else "rank 0 refused",
            timeout=(0, 5.0))
    # The same call still works after all that (every rank took part in every comparison).
    q = torch.randn(1, 2, 8, 4, dtype=torch.float64)
    assert ring_attention(q, q, q, mask=win[0]).context.shape == (1, 2, 8, 4)
    dist.barrier()
    # A rank that never calls: the others stop after `timeout`, not after gloo's 30 minutes.
    if rank == 0:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no answer from the other ranks within 2 s"):
            ring_attention(q, q, q, timeout=2)
        assert time.monotonic() - t0 < 20


def _worker(rank: int, world: int, store: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    try:
        _cases(rank, world)
        Path(out_dir, f"ok{rank}").write_text("ok")
        if rank == 1:  # stay alive until rank 0's timeout case is over
            deadline = time.monotonic() + 30
            while not Path(out_dir, "ok0").exists() and not Path(out_dir, "err0").exists() \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
    except BaseException:
        Path(out_dir, f"err{rank}").write_text(traceback.format_exc())
        raise


def test_ranks_that_disagree_all_get_one_clear_error():
    world = 2
    run_ranks(_worker, world, TIMEOUT)


def test_tensors_off_the_cpu_are_refused_before_any_exchange():
    # each rank computes on the CPU tiled kernel: a GPU tensor (meta stands in) is refused by name
    from attnlab.distributed.attention import _check_local

    q = torch.empty(1, 2, 8, 4, device="meta")
    with pytest.raises(ValueError, match=r"^q: expected CPU tensors .* got tensors on meta"):
        _check_local(q, q, q, None, None, None, "contiguous", "ring", 2)

"""Shared by the multi-process tests: launch ranks, bound the wait, surface a rank's traceback."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch.multiprocessing as mp


def run_ranks(worker: Callable[..., None], world: int, timeout: float, label: str = "") -> list[int | None]:
    """Spawn ``worker(rank, world, store, out_dir)`` on ``world`` processes; fail on a hang (past
    ``timeout`` seconds) or on an ``err{rank}`` file a worker wrote, and require an ``ok{rank}``
    file from every rank. Returns the exit codes."""
    with tempfile.TemporaryDirectory() as tmp:
        store = str(Path(tmp, "store"))
        ctx = mp.start_processes(worker, args=(world, store, tmp), nprocs=world, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    pytest.fail(f"{label}no result after {timeout} s (a hang)")
        except mp.ProcessRaisedException:
            pass
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        errors = [Path(tmp, f"err{r}").read_text() for r in range(world) if Path(tmp, f"err{r}").exists()]
        assert not errors, errors[0]
        codes = [p.exitcode for p in ctx.processes]
        assert all(Path(tmp, f"ok{r}").exists() for r in range(world)), f"{label}exit codes {codes}"
        return codes

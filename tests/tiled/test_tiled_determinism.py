"""The tiled backend is bitwise reproducible: with the same inputs and the same number of threads,
forward (context, lse) and backward (dQ, dK, dV) give identical bits on every run, whatever the
thread scheduling. dK/dV sum overlapping bands of many query chunks; their order is fixed by the
plan (parallel.fixed_groups), not by which worker ran which chunk."""

import pytest
import torch

import attnlab
from attnlab import masks
from attnlab.backends import tiled_attention
from attnlab.backends.tiled import backward as tiled_backward
from attnlab.backends.tiled import choose_blocks
from attnlab.backends.tiled import fused as tiled_fused
from attnlab.backends.tiled.blockmap import block_map
from attnlab.backends.tiled.parallel import fixed_groups
from attnlab.backends.tiled.plan import build_plan
from attnlab.testing import assert_error_ratio

L = 1024
LAYOUT = torch.rand(L // 64, L // 64, generator=torch.Generator().manual_seed(2)) < 0.3
_i = torch.arange(L // 32)
_coin = torch.rand(L // 32, L // 32, generator=torch.Generator().manual_seed(3)) < 0.5
# random blocks near the diagonal: gathered bands that later groups read far from key 0
BANDED = ((_i[:, None] - _i[None, :]).abs() <= 8) & (_coin | (_i[:, None] == _i))
CASES = {  # name: (mask, heads, kv heads, block size)
    "causal": (masks.causal(), 4, 4, 32),
    "window": (masks.sliding_window(96), 4, 4, 32),
    "bigbird": (masks.bigbird(32, 3, 1, 2, seed=1), 4, 4, None),
    "block_sparse": (masks.block_sparse(LAYOUT, 64), 4, 4, None),
    "banded_sparse": (masks.block_sparse(BANDED, 32), 4, 4, None),
    "gqa-causal": (masks.causal(), 4, 2, 32),
    "gqa-window": (masks.sliding_window(64, 16), 6, 2, 32),
}


@pytest.fixture
def two_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(2)  # two workers even on a one-core machine (the OS interleaves them)
    yield
    torch.set_num_threads(prev)


def _inputs(H, Hkv, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, L, 32, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, Hkv, L, 32, generator=g, dtype=torch.float64) for _ in range(2))
    do = torch.randn(1, H, L, 32, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (q, k, v, do)]


def _run(name, dtype=torch.float32, backend="tiled"):
    """context, lse, dQ, dK, dV of one fwd+bwd."""
    m, H, Hkv, block = CASES[name]
    q, k, v, do = _inputs(H, Hkv, dtype)
    q, k, v = (t.requires_grad_(True) for t in (q, k, v))
    if backend == "tiled":
        out = tiled_attention(q, k, v, mask=m, block_size=block)
    else:
        out = attnlab.attention(q, k, v, mask=m, backend=backend)
    out.context.backward(do)
    lse = None if out.lse is None else out.lse.detach()
    return out.context.detach(), lse, q.grad, k.grad, v.grad


def _assert_bitwise(a, b, what):
    for nm, x, y in zip(("context", "lse", "dq", "dk", "dv"), a, b, strict=True):
        if not torch.equal(x, y):
            diff = float((x - y).abs().max())
            raise AssertionError(f"{what}: {nm} differs between identical runs (max |diff| {diff:.3g})")


def _use_path(monkeypatch, path):
    # "fused": ATen's fused backward per tile (small test tiles too); "plain": PyTorch ops
    monkeypatch.setattr(tiled_backward, "FUSED_BWD_MIN_ROWS", 1 if path == "fused" else 1 << 30)
    if path == "plain":
        monkeypatch.setattr(tiled_fused, "AVAILABLE", False)


def _plan(name):
    """The backward's plan for a case at 2 threads."""
    m, H, _, block = CASES[name]
    bq, bk = choose_blocks(m, L, L, backward=True)
    bq, bk = block or bq, block or bk
    return build_plan(block_map(m, L, L, bq, bk, batch=1, heads=H), H, 1 << 23, min_chunks=8)


def _groups(name):
    """The backward's dK/dV groups for a case at 2 threads."""
    plan = _plan(name)
    return plan, fixed_groups(plan.chunks, tiled_backward.GROUPS_PER_THREAD * 2)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("path", ["fused", "plain"])
def test_two_threads_fwd_bwd_is_bitwise_reproducible(name, path, two_threads, monkeypatch):
    _use_path(monkeypatch, path)
    assert len(_plan(name).chunks) >= 4  # the threaded path runs, with several dK/dV groups
    first = _run(name)
    for rep in range(3):
        _assert_bitwise(first, _run(name), f"{name} ({path}) run {rep + 2}")


def _scheduled(schedule):
    """A stand-in for run_parallel that deals the items to two workers in a chosen way and
    runs them one after the other: every scheduling the real thread pool could produce."""

    def run(work, items, threads=None, **_):
        items = list(items)
        if schedule == "alternate":
            parts = [items[0::2], items[1::2]]
        elif schedule == "reversed":
            parts = [items[::-1][1::2], items[::-1][0::2]]
        elif schedule == "halves":
            parts = [items[len(items) // 2:], items[: len(items) // 2]]
        else:  # "one": the other worker was descheduled throughout
            parts = [items, []]
        with torch.no_grad():
            for i, part in enumerate(parts):
                work(iter(part), i)
        return 2

    return run


@pytest.mark.parametrize("name", ["causal", "window", "bigbird", "gqa-window"])
def test_result_does_not_depend_on_which_worker_ran_what(name, two_threads, monkeypatch):
    # Deterministic version of the test above: the schedules are chosen, not left to the OS.
    results = {}
    for schedule in ("alternate", "reversed", "halves", "one"):
        monkeypatch.setattr(tiled_backward, "run_parallel", _scheduled(schedule))
        results[schedule] = _run(name)
    for schedule, res in results.items():
        _assert_bitwise(results["alternate"], res, f"{name}: schedule {schedule} vs alternate")


@pytest.mark.parametrize("name", list(CASES))
def test_fixed_groups_cover_every_chunk_once_in_query_order(name):
    plan, groups = _groups(name)
    assert len(groups) == min(len(plan.chunks), tiled_backward.GROUPS_PER_THREAD * 2) > 1
    seen = [c for g in groups for c in g.chunks]
    assert sorted(map(id, seen)) == sorted(map(id, plan.chunks))
    firsts = [int(c.q_blocks.min()) for c in seen]
    assert firsts == sorted(firsts)
    assert [g.index for g in groups] == list(range(len(groups)))
    for g in groups:  # a group's buffer holds every key block its tiles read
        blocks = torch.cat([s.k_blocks.flatten() for c in g.chunks for s in c.segments])
        assert g.lo == int(blocks.min()) and g.hi == int(blocks.max()) + 1


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("path", ["fused", "plain"])
def test_two_thread_gradients_match_float64_reference(name, path, two_threads, monkeypatch):
    # Groups other than the first sum into buffers that start at their first key block; the
    # offsets must land every band gradient where it belongs (shared, strided, gathered bands).
    _use_path(monkeypatch, path)
    _, groups = _groups(name)
    if "window" in name or name == "banded_sparse":
        assert any(g.lo > 0 for g in groups)
    got = _run(name)
    ref = _run(name, torch.float64, backend="eager")
    low = _run(name, backend="eager")
    for nm, a, r, e in zip(("context", "dq", "dk", "dv"), got[:1] + got[2:], ref[:1] + ref[2:],
                           low[:1] + low[2:], strict=True):
        assert_error_ratio(a, r, e, what=f"{nm} {name} ({path})", floor=2e-6)



@pytest.fixture
def restore_deterministic_flag():
    prev = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(prev, warn_only=warn)


@pytest.mark.parametrize("name", ["causal", "bigbird"])
def test_torch_deterministic_algorithms_flag_runs_and_changes_nothing(name, two_threads,
                                                                       restore_deterministic_flag):
    # No switch needed: with PyTorch's flag on, no op on the path raises (none is flagged on a
    # CPU) and the bits are those of a run without it.
    torch.use_deterministic_algorithms(False)
    free = _run(name)
    torch.use_deterministic_algorithms(True)
    _assert_bitwise(free, _run(name), f"{name}: torch.use_deterministic_algorithms(True) vs off")

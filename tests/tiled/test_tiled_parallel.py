"""The tiled backend's worker threads (parallel.py): the calling thread works too, helpers that
never start are not waited for, errors reach the caller, and the thread setting comes back."""

import threading

import pytest
import torch

from attnlab.backends.tiled import parallel


@pytest.fixture
def two_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(prev)


def test_every_item_runs_once_and_the_caller_is_worker_zero(two_threads):
    seen, lock = [], threading.Lock()
    me = threading.get_ident()

    def work(items, i):
        for it in items:
            with lock:
                seen.append((it, i, threading.get_ident()))

    assert parallel.run_parallel(work, list(range(50)), cost=lambda x: x) == 2
    assert sorted(it for it, _, _ in seen) == list(range(50))
    assert all((i == 0) == (tid == me) for _, i, tid in seen)
    assert torch.get_num_threads() == 2  # restored


class _NeverStarts:
    """A pool whose helpers are never scheduled (a busy machine, at worst)."""

    def submit(self, *_a, **_kw):
        return None


def test_the_caller_finishes_alone_when_no_helper_starts(two_threads, monkeypatch):
    monkeypatch.setattr(parallel, "_helpers", lambda n: _NeverStarts())
    done = []
    parallel.run_parallel(lambda items, i: done.extend((it, i) for it in items), list(range(20)),
                          cost=lambda x: x)
    assert sorted(done) == [(it, 0) for it in range(20)]


def test_a_helper_error_reaches_the_caller(two_threads):
    gate = threading.Event()

    def work(items, i):
        for _ in items:
            if i == 1:
                raise ValueError("boom in a helper")
            gate.wait(0.05)  # leave the helper time to start and take an item

    with pytest.raises(ValueError, match="boom in a helper"):
        parallel.run_parallel(work, list(range(40)), cost=lambda x: x)
    assert torch.get_num_threads() == 2


def test_owned_threads_runs_ops_single_threaded_and_nests(two_threads):
    with parallel.owned_threads() as n:
        assert n == 2 and torch.get_num_threads() == 1 and parallel.workers() == 2
        with parallel.owned_threads() as inner:
            assert inner == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2 and parallel.workers() == 2


def test_a_second_thread_runs_serially_while_one_owns_the_setting(two_threads):
    res = {}
    with parallel.owned_threads():
        def other():
            with parallel.owned_threads() as n:
                res["n"] = n
            res["ran"] = parallel.run_parallel(lambda items, i: list(items), list(range(8)), threads=2,
                                             cost=lambda x: x)

        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert res == {"n": 1, "ran": 1}


def test_a_forked_child_makes_its_own_helpers(two_threads):
    """A forked child has no running copy of its parent's helper threads: its calls still finish."""
    import multiprocessing

    parallel.run_parallel(lambda items, i: list(items), list(range(8)), cost=lambda x: x)  # parent's pool

    def child():
        done = []
        parallel.run_parallel(lambda items, i: done.extend(items), list(range(8)), cost=lambda x: x)
        raise SystemExit(0 if sorted(done) == list(range(8)) else 3)

    p = multiprocessing.get_context("fork").Process(target=child)
    p.start()
    p.join(60)
    if p.is_alive():
        p.kill()
    assert p.exitcode == 0

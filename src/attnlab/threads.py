"""How many threads torch computes with: the one place every command and tool sets them.

The default is the cores this process may use: its CPU affinity (a container or ``taskset``
may allow fewer than the machine has), or fewer when ``OMP_NUM_THREADS`` asks for fewer.
``set_threads`` sets torch's intra-op threads (one matmul split over cores) and, once per
process, its inter-op threads (independent ops run side by side); torch refuses a second
inter-op setting once parallel work has started, and then the first one stays.
No torch at import: the CLI parses its options before torch loads.
"""

from __future__ import annotations

import contextlib
import os

from attnlab.arguments import expect_int


def available_cores() -> int:
    """Cores this process may run on (CPU affinity where the OS has it, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """The available cores, or ``OMP_NUM_THREADS`` when it is set to fewer."""
    cores = available_cores()
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return min(int(env), cores)
    return cores


def check_threads(threads: int | None, name: str = "threads") -> int:
    """``threads`` checked against the available cores; None = :func:`default_threads`."""
    if threads is None:
        return default_threads()
    cores = available_cores()
    return expect_int(name, threads, 1, cores, expected=f"an integer from 1 to {cores} (the cores this "
                      f"process may use; more threads than cores only wait on each other)")


def set_threads(threads: int | None = None, name: str = "threads") -> int:
    """Check ``threads`` and make torch use that many; returns the number set."""
    n = check_threads(threads, name)
    apply_threads(n)
    return n


def apply_threads(n: int) -> None:
    """torch's intra-op threads = ``n``, and its inter-op threads where torch still allows it.
    Unchecked against the cores (a saved training config may name more): callers with a user's
    value go through :func:`set_threads`."""
    import torch

    torch.set_num_threads(n)
    if torch.get_num_interop_threads() != n:
        # torch allows one inter-op setting, before inter-op work starts; later ones keep the first
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(n)

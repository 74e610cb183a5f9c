"""Peak memory of one call, as the process's resident set size (RSS).

tracemalloc does not see torch's allocations, and torch has no CPU allocator statistics, so
the honest measure is the operating system's: Linux keeps the peak RSS in /proc/self/status
(VmHWM) and lets a process reset it by writing "5" to /proc/self/clear_refs. The reported
number is VmHWM after the call minus VmRSS before it: every byte the call made resident,
including allocator slack and temporaries, excluding inputs that existed before.
Elsewhere, the lifetime peak (resource.getrusage) is used, which can only over-report when an
earlier call peaked higher; the method is recorded with every number.
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass

_STATUS = "/proc/self/status"


def _status_kb(field: str) -> int | None:
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class PeakMemory:
    bytes: int = 0
    method: str = ""


@contextlib.contextmanager
def peak_rss() -> Iterator[PeakMemory]:
    """``with peak_rss() as m: work()`` then ``m.bytes`` is the peak RSS increase."""
    res = PeakMemory()
    before = _status_kb("VmRSS")
    if before is not None and _reset_peak():
        yield res
        peak = _status_kb("VmHWM") or before
        res.bytes, res.method = max(0, peak - before) * 1024, "rss-hwm-reset"
        return
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    yield res
    res.bytes = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale - start)
    res.method = "ru_maxrss-delta"

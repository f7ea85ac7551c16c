"""How much of the CPUs other processes used while a benchmark ran (Linux's /proc/stat).

The benchmarks run on shared machines; each says which share of the CPUs others took meanwhile,
so that figures from a busy spell can be told apart (and rerun).
"""

from __future__ import annotations

import os
import resource
import time


def busy_seconds() -> tuple[float | None, float]:
    """CPU seconds used by the whole machine since boot (None off Linux), and by this process."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        machine = (sum(ticks[:3]) + sum(ticks[5:8])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        machine = None
    return machine, own.ru_utime + own.ru_stime


def others_share(start: tuple[float | None, float], wall0: float) -> float | None:
    """The share of all CPUs that other processes used since ``start = busy_seconds()``, taken
    at ``wall0 = time.perf_counter()``; None off Linux."""
    (machine0, own0), (machine1, own1) = start, busy_seconds()
    if machine0 is None or machine1 is None:
        return None
    wall = time.perf_counter() - wall0
    return max(0.0, (machine1 - machine0) - (own1 - own0)) / (wall * (os.cpu_count() or 1))

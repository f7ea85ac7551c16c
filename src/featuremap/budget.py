"""Memory guards: refuse, before anything is allocated, work larger than this machine allows.

The limit is a quarter of this machine's memory (or of its container's limit when lower), or
what ``FEATUREMAP_MEMORY_LIMIT`` says. Standard library only, so that callers at every level can
check a size before they import NumPy or torch.
"""

from __future__ import annotations

import functools
import math
import os
import re

from featuremap.errors import ConfigError

__all__ = [
    "MEMORY_FRACTION",
    "MEMORY_LIMIT_ENV",
    "check_size",
    "format_bytes",
    "memory_limit",
]

MEMORY_FRACTION = 0.25
"""Share of this machine's memory one allocation may take before it is refused."""
MEMORY_LIMIT_ENV = "FEATUREMAP_MEMORY_LIMIT"
"""Environment variable that sets the limit instead: ``8GB``, ``512MB``, ``2GiB``, ``none``."""
_UNKNOWN_MEMORY_LIMIT = 4 * 10**9  # where the machine's memory cannot be read
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def format_bytes(n: float) -> str:
    """``n`` bytes with three significant digits in decimal units: ``'12.0 GB'``, ``'512 B'``.

    Example:
        >>> format_bytes(12_000_000_000), format_bytes(4 * 10**9), format_bytes(512)
        ('12.0 GB', '4.00 GB', '512 B')
    """
    if n < 1000:
        return f"{int(n)} B"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB", "PB", "EB"):
        value /= 1000
        if value < 999.5:
            digits = 2 if value < 9.995 else 1 if value < 99.95 else 0
            return f"{value:.{digits}f} {unit}"
    return f"{float(n):.3g} bytes"


def _cgroup_limit() -> int | None:
    """The memory limit of this process's container (cgroup v2 or v1), if any."""
    for name in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(name) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            return int(text)
    return None


@functools.lru_cache(maxsize=1)
def _machine_memory() -> int | None:
    """Physical memory in bytes, or the container's limit when lower; None where unknown."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    if total <= 0:
        return None
    limit = _cgroup_limit()
    return min(total, limit) if limit else total


def _parse_size(text: str) -> float:
    value = text.strip().lower().replace(" ", "").replace("_", "")
    if value in ("none", "off", "unlimited"):
        return math.inf
    match = re.fullmatch(r"(\d+(?:\.\d*)?(?:e\d+)?)([a-z]*)", value)
    if not match or match.group(2) not in _UNITS:
        raise ConfigError(f"{MEMORY_LIMIT_ENV}={text!r} is not a size; use e.g. 8GB, 512MB, "
                          "2GiB, or 'none' for no limit.")
    return float(match.group(1)) * _UNITS[match.group(2)]


def memory_limit() -> tuple[float, str]:
    """The largest allocation featuremap makes without refusing, and where that limit comes
    from.

    The limit is ``MEMORY_FRACTION`` (a quarter) of this machine's physical memory, or of the
    container's memory limit when that is lower; 4 GB where neither can be read. The
    environment variable ``FEATUREMAP_MEMORY_LIMIT`` (``8GB``, ``512MB``, ``2GiB``, ``none``)
    replaces it.

    Returns:
        ``(bytes, reason)``, e.g. ``(4.2e9, "a quarter of this machine's memory")``.

    Raises:
        ConfigError: ``FEATUREMAP_MEMORY_LIMIT`` is set but is not a size.
    """
    setting = os.environ.get(MEMORY_LIMIT_ENV)
    if setting:
        return _parse_size(setting), f"set by {MEMORY_LIMIT_ENV}"
    total = _machine_memory()
    if total is None:
        return float(_UNKNOWN_MEMORY_LIMIT), "this machine's memory is unknown"
    return total * MEMORY_FRACTION, "a quarter of this machine's memory"


def check_size(n_bytes: float, *, what: str, fix: str = "", limit: float | None = None) -> int:
    """Refuse, before anything is allocated, work that would take more than ``limit`` bytes.

    Callers compute ``n_bytes`` from the sizes they were asked for (an estimate of the peak, not
    only of the result) and call this before allocating anything.

    Args:
        n_bytes: the estimate.
        what: what would take it, completing "``what`` would take 12.0 GB", e.g. ``"the 1000
            filters of 1001 x 1001"``.
        fix: what to change, e.g. ``"use fewer filters or smaller kernels"``.
        limit: the limit in bytes (default: :func:`memory_limit`).

    Returns:
        ``n_bytes`` as an int.

    Raises:
        ConfigError: one line with the estimate, the limit, where the limit comes from, the fix
            and how to raise the limit.

    Example:
        >>> check_size(12 * 10**9, what="the 3000 filters of 1001 x 1001",
        ...            fix="use fewer filters", limit=4 * 10**9)
        Traceback (most recent call last):
        ...
        featuremap.errors.ConfigError: the 3000 filters of 1001 x 1001 would take 12.0 GB (limit \
4.00 GB); use fewer filters.
    """
    how = ""
    if limit is None:
        limit, reason = memory_limit()
        how = f", {reason}" if MEMORY_LIMIT_ENV in reason else \
            f", {reason}; {MEMORY_LIMIT_ENV} changes it"
    if n_bytes <= limit:
        return int(n_bytes)
    raise ConfigError(f"{what} would take {format_bytes(n_bytes)} (limit "
                      f"{format_bytes(limit)}{how}){'; ' + fix if fix else ''}.")

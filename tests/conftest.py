"""Shared fixtures: tiny random inputs; tests never touch the network."""

from __future__ import annotations

import os

import numpy as np
import pytest


def pytest_configure(config):
    """One torch thread in every test process (each xdist worker) and in the processes the
    tests start: where other processes share the few cores, torch's OpenMP threads spin against
    them (on a busy 2-core machine tests/test_classify.py took 114 s with 2 threads, 19 s with
    one); the workers use the cores instead."""
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _devices() -> list[str]:
    import torch

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=_devices())
def device(request) -> str:
    """Every device this machine has: the CPU, and CUDA where present."""
    return request.param


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def refused_early():
    """``refused_early(call, match)``: ``call()`` raises ConfigError matching ``match`` with
    less than 16 MB allocated on the way (the guard runs before the allocation); returns the
    message."""
    import tracemalloc

    from featuremap.errors import ConfigError

    def check(call, match: str) -> str:
        tracemalloc.start()
        try:
            with pytest.raises(ConfigError, match=match) as info:
                call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MB allocated before the refusal"
        message = str(info.value)
        assert "\n" not in message and "limit" in message
        return message

    return check

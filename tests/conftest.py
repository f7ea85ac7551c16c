"""Shared fixtures: tiny random inputs; tests never touch the network."""

from __future__ import annotations

import numpy as np
import pytest


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


@pytest.fixture(scope="session")
def shapes():
    """The bundled model, loaded once per session (tests must leave it as it is; a module's
    own ``shapes`` fixture takes its place there)."""
    from featuremap.zoo import load_model

    return load_model("shapes")

"""Shared fixtures: tiny random inputs; tests never touch the network."""

from __future__ import annotations

import os

import numpy as np
import pytest


def pytest_configure(config):
    """One OpenMP thread in the processes that run tests (xdist's workers inherit it) and in
    those the tests start: where other processes share the few cores, torch's OpenMP threads
    spin against them (on a busy 2-core machine tests/test_classify.py took 114 s with 2
    threads, 19 s with one); the workers use the cores instead. torch is not imported here: the
    xdist controller, which runs no test, never needs it."""
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One torch thread in every process that runs tests (see pytest_configure)."""
    import torch

    torch.set_num_threads(1)


def pytest_generate_tests(metafunc):
    """``device``: every device this machine has, the CPU and CUDA where present (asked when
    tests are collected, so that a process that collects none never imports torch)."""
    if "device" in metafunc.fixturenames:
        import torch

        metafunc.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def _shared_resnet18():
    import torch
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18().eval()
    return net, {k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture
def resnet18(_shared_resnet18):
    """torchvision's resnet18 with random weights (seed 0) in eval mode, built once for the
    session and shared by the tests that only read it. After each test it must be as it was:
    same weights, eval mode, no hooks, no gradients (a test that changes a network builds its
    own); one that changed it errors, and the network is put back for the next."""
    import torch

    net, weights = _shared_resnet18
    flags = [p.requires_grad for p in net.parameters()]
    yield net
    state = net.state_dict()
    params = list(net.parameters())
    problems = [f"weights {k}" for k, v in weights.items() if not torch.equal(state[k], v)][:3]
    problems += ["training mode"] * any(m.training for m in net.modules())
    problems += ["hooks"] * any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                                for m in net.modules())
    problems += ["requires_grad"] * ([p.requires_grad for p in params] != flags)
    problems += ["gradients"] * any(p.grad is not None for p in params)
    if problems:
        net.load_state_dict(weights)
        net.eval()
        for m in net.modules():
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
            m._backward_hooks.clear()
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
            p.grad = None
    assert not problems, f"the test changed the shared resnet18: {', '.join(problems)}"


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

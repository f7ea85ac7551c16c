"""The capture engine: what it keeps, when it stops, what it restores, how it unwraps outputs.

Oracles: a plain forward pass (torchvision's ``create_feature_extractor`` where it applies) for
the values, a hand-written re-implementation with ``torch.autograd.grad`` for the gradients.
"""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from featuremap.capture import (
    TRAINING_NOTE,
    Capture,
    explain_failure,
    first_tensor,
    hooked,
    inference_state,
    trace_shapes,
)
from featuremap.errors import ConfigError, DidNotRunError


class Spy(nn.Module):
    """Identity, or a RuntimeError on purpose when ``fail`` is set."""

    fail = False

    def forward(self, x):
        if self.fail:
            raise RuntimeError("boom on purpose")
        return x


class Chain(nn.Module):
    """conv -> bn -> relu(inplace) -> conv (stride 2) -> dropout -> spy -> pool -> fc, with a
    side branch whose output the classifier never reads and a record of what ran."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.5)
        self.side = nn.Conv2d(4, 2, 1)
        self.spy = Spy()
        self.fc = nn.Linear(6, 3)
        self.ran: list[str] = []
        for name, m in self.named_children():
            m.register_forward_pre_hook(lambda _m, _a, n=name: self.ran.append(n))

    def forward(self, x):
        a = self.relu(self.bn(self.conv1(x)))
        self.side(a)  # computed, never used
        b = self.spy(self.drop(self.conv2(a)))
        return self.fc(b.mean((2, 3)))


@pytest.fixture
def chain() -> Chain:
    return Chain().eval()


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(2, 3, 8, 10, generator=torch.Generator().manual_seed(1))


def _plain(net: Chain, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The intermediates of the hand-written forward pass (eval mode, no hooks)."""
    a = F.relu(net.bn(net.conv1(x)))
    b = net.conv2(a)
    return {"conv1": net.conv1(x), "relu": a, "conv2": b, "side": net.side(a), "spy": b,
            "fc": net.fc(b.mean((2, 3)))}


# ----------------------------------------------------------------------------- keep="copy"


def test_copy_equals_create_feature_extractor(chain, batch):
    layers = ["conv1", "relu", "side", "conv2"]  # not 'bn': the in-place ReLU changes FX's copy
    got = Capture(chain, layers)(batch)
    with torch.no_grad():
        expected = create_feature_extractor(chain, return_nodes=layers)(batch)
    assert list(got.maps) == layers
    for name in layers:
        torch.testing.assert_close(got.maps[name], expected[name], rtol=0, atol=0)
        assert got.meta[name].shape == tuple(expected[name].shape)
        assert got.maps[name].grad_fn is None and not got.maps[name].requires_grad
    assert got.meta["conv2"].stride == (2.0, 2.0) and got.meta["conv1"].stride == (1.0, 1.0)
    assert got.meta["conv2"].layout == "NCHW" and got.meta["conv2"].note == ""


def test_copy_is_taken_before_the_inplace_relu(chain, batch):
    got = Capture(chain, ["bn", "relu"], early_stop=False)(batch)
    with torch.no_grad():
        plain = chain.bn(chain.conv1(batch))
    assert (got.maps["bn"] < 0).any()  # the ReLU that ran in place on it did not reach the copy
    torch.testing.assert_close(got.maps["bn"], plain)
    torch.testing.assert_close(got.maps["relu"], plain.clamp_min(0))


def test_early_stop_runs_nothing_after_the_last_layer(chain, batch):
    got = Capture(chain, ["conv2", "conv1"])(batch)
    assert chain.ran == ["conv1", "bn", "relu", "side", "conv2"]
    assert got.output is None
    chain.ran.clear()
    got = Capture(chain, ["conv2", "conv1"], early_stop=False)(batch)
    assert chain.ran == ["conv1", "bn", "relu", "side", "conv2", "drop", "spy", "fc"]
    torch.testing.assert_close(got.output, _plain(chain, batch)["fc"])


def test_request_order_is_kept_not_network_order(chain, batch):
    got = Capture(chain, ["fc", "conv1", "side"], early_stop=False)(batch)
    assert list(got.maps) == list(got.meta) == ["fc", "conv1", "side"]
    plain = _plain(chain, batch)
    for name in got.maps:
        torch.testing.assert_close(got.maps[name], plain[name])
    assert got.meta["fc"].layout == "vector" and not got.meta["fc"].is_map
    assert got.meta["fc"].stride is None and "one vector per image" in got.meta["fc"].reason


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(self.act(x)))  # act runs first on x, then on conv's output


def test_module_called_twice_is_captured_at_its_first_call():
    net, x = Twice().eval(), torch.randn(1, 2, 4, 4)
    for keep in ("copy", "graph", "buffers"):
        got = Capture(net, ["act"], keep=keep, early_stop=False)(x)
        torch.testing.assert_close(got.maps["act"].detach(), x.clamp_min(0))
        torch.testing.assert_close(got.output.detach(), net(x))


def test_inputs_are_captured_and_stop_the_pass(chain, batch):
    got = Capture(chain, [], inputs=["conv2"])(batch)
    torch.testing.assert_close(got.inputs["conv2"], _plain(chain, batch)["relu"])
    assert "drop" not in chain.ran and got.maps == {}
    got = Capture(chain, ["conv2"], inputs=["fc"], early_stop=False)(batch)
    torch.testing.assert_close(got.inputs["fc"], _plain(chain, batch)["conv2"].mean((2, 3)))


def test_bad_keep_and_layers_that_never_run(chain, batch):
    with pytest.raises(ConfigError, match="keep must be one of copy, graph, buffers"):
        Capture(chain, ["conv1"], keep="view")
    with pytest.raises(DidNotRunError, match="unused"):
        Capture(Unused(), ["unused"])(batch)


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.unused = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


# ---------------------------------------------------------------------------- keep="graph"


def test_graph_gradients_equal_a_hand_written_forward(chain, batch):
    torch.manual_seed(0)
    got = Capture(chain, ["conv1", "relu", "conv2"], keep="graph", early_stop=False)(batch)
    with torch.enable_grad():
        score = got.output[:, 1].sum()
    grads = {n: got.grad(score, n) for n in ("conv1", "relu", "conv2")}
    # the oracle: the same network written out, differentiated with respect to each map
    with torch.enable_grad():
        c1 = chain.conv1(batch).detach().requires_grad_()
        a = F.relu(F.batch_norm(c1, chain.bn.running_mean, chain.bn.running_var,
                                chain.bn.weight, chain.bn.bias, False, 0.0, chain.bn.eps))
        c2 = F.conv2d(a, chain.conv2.weight, chain.conv2.bias, stride=2, padding=1)
        out = F.linear(c2.mean((2, 3)), chain.fc.weight, chain.fc.bias)
        want = torch.autograd.grad(out[:, 1].sum(), [c1, a, c2])
    for (name, g), w in zip(grads.items(), want):
        assert g.shape == got.maps[name].shape
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got.output, out)
    assert all(p.grad is None for p in chain.parameters())


def test_graph_inplace_relu_after_the_layer_keeps_values_and_gradient(chain, batch):
    got = Capture(chain, ["bn"], keep="graph", early_stop=False)(batch)  # relu(inplace) follows
    plain = _plain(chain, batch)
    with torch.no_grad():
        bn = chain.bn(chain.conv1(batch))
    torch.testing.assert_close(got.maps["bn"].detach(), bn)
    assert (got.maps["bn"] < 0).any()
    with torch.enable_grad():
        grad = got.grad(got.output.sum(), "bn")
    assert grad is not None and (grad[bn < 0] == 0).all() and (grad[bn > 0] != 0).any()
    torch.testing.assert_close(got.output.detach(), plain["fc"])


def test_graph_works_inside_no_grad_and_none_for_an_unused_layer(chain, batch):
    with torch.no_grad():
        got = Capture(chain, ["side", "conv2"], keep="graph", early_stop=False)(batch)
        with torch.enable_grad():
            score = got.output[0, 0]
        assert got.grad(score, "conv2") is not None
        assert got.grad(score, "side") is None  # the classifier never reads the side branch
    with pytest.raises(ConfigError, match="keep='graph'"):
        Capture(chain, ["conv2"])(batch).grad(score, "conv2")


# -------------------------------------------------------------------------- keep="buffers"


def test_buffers_reuse_storage_and_hold_the_new_batch(chain, batch):
    engine = Capture(chain, ["conv1", "conv2"], keep="buffers")
    first = engine(batch)
    pointers = {n: t.data_ptr() for n, t in first.maps.items()}
    other = batch.flip(0) * 2
    second = engine(other)
    assert {n: t.data_ptr() for n, t in second.maps.items()} == pointers
    plain = _plain(chain, other)
    for name in ("conv1", "conv2"):
        torch.testing.assert_close(second.maps[name], plain[name])
    smaller = engine(batch[:1])  # another shape: new buffers, right values
    torch.testing.assert_close(smaller.maps["conv1"], _plain(chain, batch[:1])["conv1"])


# ---------------------------------------------------------------------------- state restored


def _state(net: nn.Module):
    return ([m.training for m in net.modules()], [p.requires_grad for p in net.parameters()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in net.modules()])


@pytest.mark.parametrize("keep", ["copy", "graph", "buffers"])
def test_state_restored_after_a_pass_and_after_an_error(keep, batch):
    net = Chain()
    net.train()
    net.side.eval()  # mixed modes; batch norm and dropout in training mode
    net.conv2.weight.requires_grad_(False)  # partly frozen
    stats = net.bn.running_mean.clone(), net.bn.running_var.clone()
    before = _state(net)
    got = Capture(net, ["drop", "conv2"], keep=keep, early_stop=False)(batch)
    assert _state(net) == before
    assert got.notes == [TRAINING_NOTE]
    torch.testing.assert_close(got.maps["drop"].detach(), got.maps["conv2"].detach())  # no dropout
    torch.testing.assert_close(net.bn.running_mean, stats[0])
    torch.testing.assert_close(net.bn.running_var, stats[1])
    net.spy.fail = True  # raises in the middle of the forward pass
    with pytest.raises(ConfigError, match="failed at layer 'spy' \\(Spy\\): boom on purpose"):
        Capture(net, ["fc"], keep=keep)(batch)
    net.spy.fail = False
    assert _state(net) == before
    assert all(p.grad is None for p in net.parameters())
    assert Capture(net.eval(), ["conv2"], keep=keep)(batch).notes == []


def test_hooked_removes_its_hooks_and_inference_state_restores_on_errors(chain):
    seen = []
    with pytest.raises(KeyError):
        with hooked(chain, after={"conv1": lambda *a: seen.append(1)}):
            chain(torch.zeros(1, 3, 4, 4))
            raise KeyError("out")
    assert seen == [1] and not chain.conv1._forward_hooks
    chain.train()
    with pytest.raises(ValueError):
        with inference_state(chain):
            assert not chain.training and not chain.fc.weight.requires_grad
            raise ValueError
    assert chain.training and chain.fc.weight.requires_grad


# ---------------------------------------------------------------------------- output rules

Pair = namedtuple("Pair", ["maps", "extra"])


class Outputs(nn.Module):
    """Wraps a conv and returns its output in a container of the given kind."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return {
            "tuple": lambda: (None, [y, y * 2], 3),
            "list": lambda: [y, y + 1],
            "dict_out": lambda: {"aux": y * 3, "out": y},
            "dict_first": lambda: OrderedDict(meta="x", feat=y, other=y * 2),
            "namedtuple": lambda: Pair(y, y * 2),
            "none": lambda: ("no", "tensor"),
        }[self.kind]()


class Wrapper(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.inner = Outputs(kind)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.inner(x)
        tensor, _, _ = first_tensor(out)
        self.relu(tensor)  # in place, after the capture
        return out


@pytest.mark.parametrize(("kind", "note"), [
    ("tuple", "tuple output of 3: element 1 kept"),
    ("list", "list output of 2: element 0 kept"),
    ("dict_out", "dict output: 'out' kept"),
    ("dict_first", "dict output: 'feat' kept"),
    ("namedtuple", "Pair output of 2: element 0 kept"),
])
@pytest.mark.parametrize("keep", ["copy", "graph"])
def test_output_unwrapping_rule(kind, note, keep):
    net, x = Wrapper(kind).eval(), torch.randn(1, 3, 4, 4)
    got = Capture(net, ["inner"], keep=keep, early_stop=False)(x)
    with torch.no_grad():
        conv = net.inner.conv(x)
    torch.testing.assert_close(got.maps["inner"].detach(), conv)
    assert got.meta["inner"].note == note and got.meta["inner"].is_map
    assert type(got.output) is type(Outputs(kind)(x))  # containers keep their type
    if keep == "graph":
        with torch.enable_grad():
            score = first_tensor(got.output)[0].sum()
        assert got.grad(score, "inner") is not None


def test_output_without_a_tensor_is_refused():
    with pytest.raises(ConfigError, match="returned a tuple, not a tensor"):
        Capture(Wrapper("none"), ["inner"])(torch.randn(1, 3, 4, 4))


def test_first_tensor_depth_first():
    t = torch.zeros(1)
    assert first_tensor(t) == (t, (), "")
    found, path, note = first_tensor(([1, (None, t)], t + 1))
    assert found is t and path == (0, 1, 1) and note == "tuple output of 2: element 0 kept"
    assert first_tensor({"a": 1}) == (None, (), "")


# ---------------------------------------------------------------------------- shapes alone


def test_trace_shapes_gives_every_module_output(chain):
    shapes = trace_shapes(chain, (1, 3, 8, 10))
    plain = _plain(chain, torch.zeros(1, 3, 8, 10))
    assert shapes[""] == (3,) and shapes["fc"] == (3,)
    for name in ("conv1", "relu", "conv2", "side"):
        assert shapes[name] == tuple(plain[name].shape[1:])
    assert chain.ran and not chain.training and chain.conv1._forward_hooks == OrderedDict()


def test_trace_shapes_names_the_innermost_module_and_the_smallest_input():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2, 2, 5)))
    with pytest.raises(ConfigError) as info:
        trace_shapes(net, (1, 1, 8, 8))
    message = str(info.value)
    assert "layer '1.1' (Conv2d" in message and "at least 12x12 pixels" in message
    assert "\n" not in message  # 12 - 2 = 10, pooled 5, less 4 = 1
    assert trace_shapes(net, (1, 1, 12, 12))["1.1"] == (2, 1, 1)  # the size it names works
    with pytest.raises(ConfigError, match="at least 12x12"):
        trace_shapes(net, (1, 1, 11, 11))
    error = explain_failure(net, (1, 1, 8, 8), RuntimeError("x"), "tiny")
    assert isinstance(error, ConfigError) and "layer '1.1'" in str(error)

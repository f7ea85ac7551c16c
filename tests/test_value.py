"""explain() on a network layer: the engine's products sum to the value the network computed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featuremap.errors import ConfigError
from featuremap.extraction import extract
from featuremap.value import explain


class Convs(nn.Module):
    """Strided, padded, dilated, grouped and depthwise convolutions with biases."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.c = nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect")
        self.d = nn.Conv2d(8, 4, 5, padding="same")
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.d(self.relu(self.c(self.relu(self.b(self.relu(self.a(x)))))))


@pytest.mark.parametrize("layer", ["a", "b", "c", "d"])
def test_value_equals_network_output(layer):
    torch.manual_seed(0)
    net = Convs().eval()
    x = torch.randn(1, 3, 17, 15)
    maps = extract(net, x, layers=layer)[layer][0]
    for at in [(0, 0, 0), (maps.shape[0] - 1, maps.shape[1] // 2, maps.shape[2] - 1)]:
        e = explain(net, x, layer=layer, at=at)
        assert e.value == pytest.approx(float(maps[at]), rel=1e-4, abs=1e-5)
        bias = dict(net.named_modules())[layer].bias.detach()
        assert e.bias == pytest.approx(float(bias[at[0]]))


def test_real_network_and_printed_form(resnet18):
    net = resnet18
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    e = explain(net, x, layer="layer2.0.conv1", at=(5, 3, 4))
    value = float(extract(net, x, layers="layer2.0.conv1")["layer2.0.conv1"][0, 5, 3, 4])
    assert e.value == pytest.approx(value, rel=1e-4, abs=1e-5)
    assert e.patch.shape == (64, 3, 3)
    text = str(e)
    assert "64 input channels; the 8 that contribute most are shown" in text
    assert "the other 56 channels" in text and f"= {e.value:.6g}" in text


def test_bad_layer_and_position():
    net = Convs()
    with pytest.raises(ConfigError, match="'relu' \\(ReLU\\) is not a Conv2d.*4 Conv2d layers"):
        explain(net, torch.randn(1, 3, 8, 8), layer="relu", at=(0, 0, 0))
    with pytest.raises(ConfigError, match="outside the output"):
        explain(net, torch.randn(1, 3, 8, 8), layer="a", at=(0, 9, 0))


def test_first_layer_channels_are_named_rgb(resnet18):
    net = resnet18
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    e = explain(net, x, layer="conv1", at=(2, 5, 5))
    text = str(e)
    assert "R: patch x kernel" in text and "B: patch x kernel" in text
    assert "channel 0" not in text
    assert not explain(net, x, layer="layer1.0.conv1", at=(0, 1, 1)).channel_names


def test_a_layer_the_forward_pass_skips_is_named():
    from featuremap.zoo import load_model

    with pytest.raises(ConfigError, match="'segmenter.head' did not run in the forward pass "
                                          "of shapes"):
        explain(load_model("shapes"), torch.rand(1, 3, 64, 64), layer="segmenter.head",
                at=(0, 1, 1))

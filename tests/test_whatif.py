"""what_if: one convolution changed, checked against the same change made by hand in torch."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn


@pytest.fixture(scope="module")
def model():
    from featuremap import load_model

    return load_model("shapes")


def by_hand(module: nn.Module, name: str, **settings) -> nn.Module:
    """A deep copy of ``module`` whose Conv2d ``name`` has new settings (weights kept)."""
    other = copy.deepcopy(module)
    parent = other.get_submodule(name.rpartition(".")[0])
    conv = getattr(parent, name.rpartition(".")[2])
    new = nn.Conv2d(conv.in_channels, settings.get("out_channels", conv.out_channels),
                    conv.kernel_size, stride=settings.get("stride", conv.stride),
                    padding=settings.get("padding", conv.padding),
                    dilation=settings.get("dilation", conv.dilation), bias=conv.bias is not None)
    keep = min(new.out_channels, conv.out_channels)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:keep] = conv.weight[:keep]
        if conv.bias is not None:
            new.bias.zero_()
            new.bias[:keep] = conv.bias[:keep]
    setattr(parent, name.rpartition(".")[2], new)
    return other.eval()


@pytest.mark.parametrize("settings", [{"stride": 2}, {"padding": 3}, {"dilation": 2},
                                      {"stride": (1, 2), "padding": 0}])
def test_shapes_and_maps_match_the_change_made_by_hand(model, settings):
    from featuremap.capture import trace_shapes
    from featuremap.whatif import what_if

    layer = "backbone.block2.conv1"
    image = torch.rand(1, 3, 64, 64)
    result = what_if(model, layer, image=image, **settings)
    hand = by_hand(model.module, layer, **settings)
    expected = trace_shapes(hand, (1, 3, 64, 64))
    before = trace_shapes(model.module, (1, 3, 64, 64))
    assert result.shapes, "a change that changes nothing downstream"
    for name, old, new in result.shapes:
        assert old == before.get(name) and new == expected.get(name), name
    assert {n for n, _, _ in result.shapes} == {n for n in expected
                                                if expected[n] != before.get(n)}
    got = {}
    handle = hand.get_submodule(layer).register_forward_hook(
        lambda m, i, o: got.setdefault("maps", o.detach()))
    try:
        with torch.no_grad():
            hand(image)
    finally:
        handle.remove()
    assert torch.allclose(result.maps[layer], got["maps"], atol=1e-6)
    assert result.after["stride"] != result.before["stride"] or settings.get("stride") is None


def test_the_model_itself_is_left_unchanged(model):
    from featuremap.whatif import what_if

    conv = model.module.get_submodule("backbone.block2.conv1")
    weight = conv.weight.detach().clone()
    what_if(model, "backbone.block2.conv1", stride=2, out_channels=8)
    assert model.module.get_submodule("backbone.block2.conv1") is conv
    assert conv.stride == (1, 1) and torch.equal(conv.weight, weight)


def test_depth_changes_say_what_happened_to_the_filters(model):
    from featuremap.whatif import what_if

    fewer = what_if(model, "backbone.block2.conv1", out_channels=8)
    assert any("first 8 of 32 filters kept" in n for n in fewer.notes)
    assert fewer.broken is not None  # the next layer expects 32 channels
    more = what_if(model, "backbone.block2.conv1", out_channels=40)
    assert any("filters of zeros" in n for n in more.notes)
    assert "breaks at" in str(more) and more.to_dict()["layer"] == "backbone.block2.conv1"


@pytest.mark.parametrize("options, phrase", [
    ({"layer": "backbone.block2.bn1"}, "is not a Conv2d"),
    ({"stride": 0}, "must be >= 1"), ({"padding": -1}, "padding >= 0"),
    ({"out_channels": 0}, "out_channels must be"), ({"stride": 2, "padding": "same"}, "stride 1"),
    ({"layer": "backbone.blok2.conv1"}, "Did you mean"),
])
def test_impossible_changes_are_refused(model, options, phrase):
    from featuremap.errors import FeaturemapError
    from featuremap.whatif import what_if

    layer = options.pop("layer", "backbone.block2.conv1")
    with pytest.raises(FeaturemapError, match=phrase):
        what_if(model, layer, **options)

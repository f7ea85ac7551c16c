"""Layouts: which dims of an output are rows, columns and channels, and the maps made of them."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from featuremap.capture import Capture
from featuremap.layouts import Layout, describe_output, layout_of, to_maps


def test_nchw_convolution_maps():
    layout = layout_of((2, 64, 56, 56), nn.Conv2d(3, 64, 7), batch=2, size=(224, 224))
    assert layout == Layout("NCHW", (56, 56)) and layout.is_map and layout.describe() == ""
    assert layout_of((1, 8, 3, 5), None, batch=1, size=(24, 40)).grid == (3, 5)  # non-square
    x = torch.randn(2, 4, 3, 5)
    assert to_maps(x, layout) is x


def test_nhwc_channels_last():
    # a permuted tensor: (N, H, W, C) with C not on the input's grid
    assert layout_of((1, 56, 56, 96), None, batch=1, size=(224, 224)) == Layout("NHWC", (56, 56))
    # C = 14 would fit as a width too: a Linear or LayerNorm (acting on the last dim) decides
    shape = (1, 14, 14, 14)
    assert layout_of(shape, None, batch=1, size=(224, 224)).kind == "NCHW"
    assert layout_of(shape, nn.Linear(14, 14), batch=1, size=(224, 224)).kind == "NHWC"
    assert layout_of(shape, nn.LayerNorm(14), batch=1, size=(224, 224)).kind == "NHWC"
    x = torch.randn(2, 3, 5, 7)  # (N, H, W, C)
    maps = to_maps(x, Layout("NHWC", (3, 5)))
    assert maps.shape == (2, 7, 3, 5) and torch.equal(maps[1, 6], x[1, :, :, 6])
    assert "channels-last" in Layout("NHWC", (3, 5)).describe()


@pytest.mark.parametrize("size", [(224, 224), (224, 320), (160, 96)])
@pytest.mark.parametrize("prefix", [0, 1, 5])
@pytest.mark.parametrize("hinted", [False, True])
def test_tokens_with_class_and_register_tokens(size, prefix, hinted):
    h, w = size[0] // 16, size[1] // 16
    shape = (2, prefix + h * w, 192)
    layout = layout_of(shape, nn.Identity(), batch=2, size=size,
                       prefix_hint=prefix if hinted else None)
    assert layout == Layout("tokens", (h, w), prefix)
    tokens = torch.randn(shape)
    maps = to_maps(tokens, layout)
    assert maps.shape == (2, 192, h, w)
    # map pixel (y, x) is patch token prefix + y * w + x
    assert torch.equal(maps[1, :, 2, 3], tokens[1, prefix + 2 * w + 3])
    described = layout.describe()
    assert f"{h} x {w} patch grid" in described
    assert ("dropped" in described) == bool(prefix)


def test_patch_tokens_before_the_class_token_is_added():
    # ViT's patch_embed gives 196 tokens while the model says it has 1 prefix token: 195 tokens
    # would make a 13 x 15 grid of about the input's aspect, but 14 x 14 is the exact stride 16
    layout = layout_of((1, 196, 192), None, batch=1, size=(224, 224), prefix_hint=1)
    assert layout == Layout("tokens", (14, 14), 0)
    assert layout_of((1, 197, 192), None, batch=1, size=(224, 224), prefix_hint=1).prefix == 1


def test_vectors_and_other_outputs_have_reasons():
    vector = layout_of((4, 1000), nn.Linear(8, 1000), batch=4, size=(224, 224))
    assert vector.kind == "vector" and not vector.is_map and "one vector" in vector.reason
    # a Swin block's windows: 64 windows of 7 x 7 tokens for one image
    windows = layout_of((64, 49, 96), None, batch=1, size=(224, 224))
    assert windows.kind == "other" and "first dim (64) is not the number of images (1)" in (
        windows.reason)
    # attention-like 4-D tensors of a model with a class token: (N, heads, T, d), (N, heads, T, T)
    for shape in [(2, 3, 197, 64), (2, 3, 197, 197)]:
        other = layout_of(shape, None, batch=2, size=(224, 224), prefix_hint=1)
        assert other.kind == "other" and "attention weights" in other.reason
        assert other.grid is None and other.describe() == ""
    # the same numbers from a network without tokens: a 197 x 197 map (valid convolutions)
    assert layout_of((2, 3, 197, 197), None, batch=2, size=(224, 224)).kind == "NCHW"
    assert layout_of((1, 2, 10, 10), None, batch=1, size=(16, 16), prefix_hint=0).kind == "NCHW"
    odd = layout_of((1, 359, 192), None, batch=1, size=(224, 224))  # no grid, 0..16 dropped
    assert odd.kind == "other" and "do not form a grid" in odd.reason
    assert "5-D" in layout_of((1, 2, 3, 4, 5), None, batch=1, size=(8, 8)).reason
    assert layout_of((), None, batch=1, size=(8, 8)).kind == "other"
    x = torch.randn(2, 3, 197, 64)
    assert to_maps(x, layout_of(tuple(x.shape), None, batch=2, size=(224, 224))) is x


def test_describe_output():
    assert describe_output(torch.zeros(1, 1000)) == "shape (1, 1000)"
    assert describe_output((1, 2)) == "a tuple"


class Tokens(nn.Module):
    """A tiny vision transformer: patches, a class token in front, a per-token Linear."""

    num_prefix_tokens = 1

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.mix = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        p = self.patch(x)
        t = torch.cat([self.cls.expand(len(x), -1, -1), p.flatten(2).transpose(1, 2)], 1)
        return self.norm(self.mix(t)).permute(0, 2, 1)


def test_engine_lays_tokens_and_channels_last_out_as_maps():
    net, x = Tokens().eval(), torch.randn(2, 3, 16, 24)
    got = Capture(net, ["patch", "mix", "norm"], prefix_tokens=1, early_stop=False)(x)
    with torch.no_grad():
        p = net.patch(x)
        mixed = net.mix(torch.cat([net.cls.expand(2, -1, -1), p.flatten(2).transpose(1, 2)], 1))
    meta = got.meta["mix"]
    assert meta.layout == "tokens" and meta.prefix_tokens == 1 and meta.source_shape == (2, 25, 8)
    assert meta.shape == (2, 8, 4, 6) and meta.stride == (4.0, 4.0)
    assert "the 1 token in front (class/register) dropped" in meta.note
    torch.testing.assert_close(got.maps["mix"], mixed[:, 1:].transpose(1, 2).reshape(2, 8, 4, 6))
    assert got.maps["mix"].is_contiguous()  # a copy in the maps layout, not a view
    assert got.meta["patch"].layout == "NCHW"
    assert got.meta["norm"].layout == "tokens" and got.output.shape == (2, 8, 25)


@st.composite
def grids(draw):
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    stride = draw(st.sampled_from([1, 2, 4, 8, 14, 16, 32]))
    return n, c, h, w, stride


@settings(max_examples=60, deadline=None)
@given(grids(), st.integers(0, 8))
def test_tokens_round_trip(grid, prefix):
    n, c, h, w, stride = grid
    maps = torch.randn(n, c, h, w)
    tokens = torch.cat([torch.randn(n, prefix, c), maps.flatten(2).transpose(1, 2)], 1)
    layout = layout_of(tuple(tokens.shape), None, batch=n, size=(h * stride, w * stride),
                       prefix_hint=prefix)
    assert layout == Layout("tokens", (h, w), prefix)
    assert torch.equal(to_maps(tokens, layout), maps)


@settings(max_examples=60, deadline=None)
@given(grids())
def test_channels_last_round_trip(grid):
    n, c, h, w, stride = grid
    maps = torch.randn(n, c, h, w)
    nhwc = maps.permute(0, 2, 3, 1).contiguous()
    layout = layout_of(tuple(nhwc.shape), nn.LayerNorm(c), batch=n,
                       size=(h * stride, w * stride))
    assert layout == Layout("NHWC", (h, w))
    assert torch.equal(to_maps(nhwc, layout), maps)


def test_a_convolution_is_channels_first_whatever_its_aspect():
    from torch import nn

    from featuremap.layouts import layout_of

    # (1, 32, 30, 15): a stride of (1, 2) on 32 x 32 maps, whose middle dims (32, 30) would
    # otherwise pass for a channels-last grid of a 64 x 64 input
    for module in (nn.Conv2d(16, 32, 3, stride=(1, 2)), nn.BatchNorm2d(32), nn.MaxPool2d(2)):
        assert layout_of((1, 32, 30, 15), module, batch=1, size=(64, 64)).kind == "NCHW"
    assert layout_of((1, 32, 30, 15), nn.LayerNorm(15), batch=1, size=(64, 64)).kind == "NHWC"

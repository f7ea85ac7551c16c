"""Receptive fields: analytic against the support of the gradient, and published sizes."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from featuremap.effective import empirical_receptive_field
from featuremap.errors import ConfigError
from featuremap.receptive import receptive_field, receptive_fields


@st.composite
def chains(draw):
    layers = []
    for _ in range(draw(st.integers(1, 4))):
        # dilation 1 and stride <= kernel: otherwise the box spans gaps (pixels no tap reads)
        # that the gradient's support does not reach at the image border
        k, d = draw(st.integers(1, 4)), 1
        s = min(k, draw(st.integers(1, 2)))
        if draw(st.booleans()):
            layers.append(nn.Conv2d(2, 2, k, stride=s, padding=draw(st.integers(0, (k - 1) * d)),
                                    dilation=d))
        else:
            layers.append(nn.AvgPool2d(k, stride=s, padding=draw(st.integers(0, k // 2))))
    return layers


@settings(max_examples=60, deadline=None)
@given(chains(), st.data())
def test_analytic_equals_gradient_support_on_positive_chains(layers, data):
    net = nn.Sequential(nn.Conv2d(3, 2, 1), *layers)
    for p in net.parameters():
        nn.init.uniform_(p, 0.1, 1.0)  # positive weights: no gradient cancels
    size = 48
    with torch.no_grad():
        out = net(torch.zeros(1, 3, size, size))
    pos = (data.draw(st.integers(0, out.shape[2] - 1)), data.draw(st.integers(0, out.shape[3] - 1)))
    name = str(len(net) - 1)
    analytic = receptive_field(net, name, position=pos, input_size=size)
    empirical, _ = empirical_receptive_field(net, name, position=pos, input_size=size,
                                             image=torch.rand(1, 3, size, size) + 0.1)
    if analytic.box == analytic.clipped_box:  # away from the border: exactly the support
        assert analytic.box == empirical.box
    else:  # padding at some layer: the analytic box is the bound, the support lies inside it
        y0, x0, y1, x1 = analytic.clipped_box
        e0, f0, e1, f1 = empirical.box
        assert y0 <= e0 and x0 <= f0 and e1 <= y1 and f1 <= x1


def test_dilated_kernel_box_contains_the_taps():
    net = nn.Sequential(nn.Conv2d(1, 1, 3, dilation=3, padding=3))
    nn.init.constant_(net[0].weight, 1.0)
    analytic = receptive_field(net, "0", position=(10, 10), input_size=32)
    empirical, erf = empirical_receptive_field(net, "0", position=(10, 10), input_size=32,
                                               image=torch.rand(1, 1, 32, 32))
    assert analytic.box == empirical.box == (7, 7, 14, 14)
    assert (erf > 0).sum() == 9  # only the 3 x 3 taps, the gaps between them are not seen


def test_published_sizes():
    import featuremap

    assert featuremap.receptive_field(torchvision.models.alexnet(), "features.12").size == (195,
                                                                                             195)
    assert receptive_field(torchvision.models.vgg16(), "features.30").size == (212, 212)


@pytest.mark.parametrize(("arch", "layer"), [("resnet18", "layer3"), ("resnet18", "layer1.1"),
                                             ("densenet121", "features.denseblock2")])
def test_analytic_contains_empirical_on_branching_nets(arch, layer):
    torch.manual_seed(0)
    net = torchvision.models.get_model(arch).eval()
    analytic = receptive_field(net, layer, position=(3, 4), input_size=128)
    empirical, erf = empirical_receptive_field(net, layer, position=(3, 4), input_size=128)
    y0, x0, y1, x1 = analytic.clipped_box
    e0, f0, e1, f1 = empirical.box
    assert y0 <= e0 and x0 <= f0 and e1 <= y1 and f1 <= x1
    assert erf.shape == (128, 128) and erf.max() > 0


def test_max_pools_contain_and_non_spatial_layers_refused():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    analytic = receptive_field(net, "2", position=(2, 2), input_size=32)
    empirical, _ = empirical_receptive_field(net, "2", position=(2, 2), input_size=32)
    assert analytic.box[0] <= empirical.box[0] and empirical.box[2] <= analytic.box[2]
    assert analytic.stride == (2.0, 2.0) and analytic.size == (8, 8)
    with pytest.raises(ConfigError, match="no spatial receptive field"):
        receptive_field(net, "5")


class _ChannelsLast(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(4, 4)

    def forward(self, x):
        return self.mix(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # pointwise over channels


class _Functional(nn.Module):
    """Functional convolutions and pools, a channels-last Linear and a channel shuffle."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2)
        self.weight = nn.Parameter(torch.rand(4, 4, 5, 5) + 0.1)
        self.block = _ChannelsLast()

    def forward(self, x):
        x = F.avg_pool2d(self.stem(x), 3, stride=1, padding=1)
        x = F.conv2d(x, self.weight, padding="same")
        x = self.block(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # shuffle
        return F.max_pool2d(x, kernel_size=2)


def test_functional_ops_permutes_and_reshapes_are_followed():
    net = _Functional()
    for p in net.parameters():
        nn.init.uniform_(p, 0.1, 1.0)
    analytic = receptive_field(net, "block", position=(7, 8), input_size=40)
    assert receptive_field(net, "block.mix", position=(7, 8), input_size=40) == analytic
    empirical, _ = empirical_receptive_field(net, "block", position=(7, 8), input_size=40,
                                             image=torch.rand(1, 3, 40, 40) + 0.1)
    # stem: 3 px, stride 2; avg pool 3: +2*2; conv 5: +4*2 -> 15 px, stride 2
    assert analytic.size == (15, 15) and analytic.stride == (2.0, 2.0)
    assert analytic.box == empirical.box
    fields = receptive_fields(nn.Sequential(net), input_size=40)
    assert fields["0"].size == (17, 17) and fields["0"].stride == (4.0, 4.0)  # F.max_pool2d
    assert fields["0.block"].size == analytic.size and not fields["0"].global_context


def test_squeeze_excitation_is_global_context():
    net = torchvision.models.mobilenet_v3_small().eval()
    layer = "features.2"  # after the first squeeze-and-excitation block (features.1)
    analytic = receptive_field(net, layer, position=(3, 3), input_size=96)
    empirical, _ = empirical_receptive_field(net, layer, position=(3, 3), input_size=96)
    assert analytic.global_context
    assert empirical.box == (0, 0, 96, 96)  # the global pooling reaches every pixel
    assert not receptive_field(net, "features.0", input_size=96).global_context


def test_every_layer_at_once_and_published_resnet50():
    fields = receptive_fields(torchvision.models.resnet50(), input_size=224)
    assert fields["layer4"].size == (427, 427) and fields["layer4"].stride == (32.0, 32.0)
    assert fields["layer1.0.conv2"].size == (19, 19)
    assert fields["avgpool"] == "global" and fields["fc"] == "global"
    convnext = receptive_fields(torchvision.models.convnext_tiny(), input_size=64)
    assert convnext["features.1"].size == (76, 76)  # 4 + 3 blocks x 6 x 4 (7x7 depthwise)


def test_position_outside_the_map_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2))
    with pytest.raises(ConfigError, match=r"outside the 15 x 15 map of '0'"):
        receptive_field(net, "0", position=(15, 0), input_size=32)


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x  # data-dependent: torch.fx cannot trace it


def test_untraceable_model_points_to_the_empirical_form():
    with pytest.raises(ConfigError, match="cannot be traced.*empirical_receptive_field"):
        receptive_fields(_Branchy(), input_size=16)
    empirical, _ = empirical_receptive_field(_Branchy(), "conv", position=(4, 4), input_size=16,
                                             image=torch.rand(1, 3, 16, 16) + 0.1)
    assert empirical.size == (3, 3)


def test_tensorflow_same_padding_and_static_pads_are_placed_exactly():
    """timm's Conv2dSame/AvgPool2dSame pad in forward() (torch.fx falls back to timm's leaves);
    F.pad shifts the map: the box must still be the gradient's support."""
    from timm.layers import AvgPool2dSame, Conv2dSame

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = Conv2dSame(3, 2, 4, stride=2)
            self.b = AvgPool2dSame(3, stride=2)
            self.c = nn.Conv2d(2, 2, 3)

        def forward(self, x):
            return self.c(F.pad(self.b(self.a(x)), (1, 2, 3, 0)))

    net = Net()
    for p in net.parameters():
        nn.init.uniform_(p, 0.1, 1.0)
    for size in (37, 40):
        with torch.no_grad():
            out = net(torch.zeros(1, 3, size, size))
        for pos in ((3, 4), (out.shape[2] // 2, out.shape[3] // 2)):
            analytic = receptive_field(net, "c", position=pos, input_size=size)
            empirical, _ = empirical_receptive_field(net, "c", position=pos, input_size=size,
                                                     image=torch.rand(1, 3, size, size) + 0.1)
            assert analytic.clipped_box == empirical.box, (size, pos)


def test_timm_tensorflow_ported_model_is_traced_with_its_leaves():
    import timm

    fields = receptive_fields(timm.create_model("tf_mobilenetv3_small_100"), input_size=224)
    stem = fields["conv_stem"]  # Conv2dSame 3x3 stride 2: 'SAME' pads 0 before, 1 after
    assert stem.size == (3, 3) and stem.stride == (2.0, 2.0) and stem.offset == (0.0, 0.0)
    assert fields["blocks.5"].stride == (32.0, 32.0) and fields["blocks.5"].global_context
    assert fields["classifier"] == "global"


class _Attention(nn.Module):
    """Spatial attention from a mean over channels (pointwise in space), then an upsampling."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gate = nn.Conv2d(1, 1, 5, padding=2)
        self.up = nn.Upsample(scale_factor=2)

    def forward(self, x):
        x = self.conv(x)
        weights = torch.sigmoid(self.gate(x.mean(1).unsqueeze(1)))
        return self.up(x * weights)


def test_channel_reductions_are_pointwise_and_upsampling_is_not_guessed():
    fields = receptive_fields(_Attention(), input_size=32)
    assert fields["gate"].size == (7, 7) and not fields["gate"].global_context
    assert "" not in fields  # the root is not a layer
    with pytest.raises(ConfigError, match="upsampling"):
        receptive_field(_Attention(), "up", input_size=32)


def test_empirical_field_runs_in_eval_mode_and_restores_it():
    """In training mode batch norm would normalise over the image and mix every position."""
    net = torchvision.models.resnet18()
    assert net.training
    empirical, _ = empirical_receptive_field(net, "layer1", position=(3, 3), input_size=128)
    assert empirical.box == receptive_field(net, "layer1", position=(3, 3),
                                            input_size=128).clipped_box == (0, 0, 34, 34)
    assert net.training and all(m.training for m in net.modules())


class _Attend(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.q, self.k, self.proj = (nn.Linear(width, width) for _ in range(3))

    def forward(self, t):
        weights = (self.q(t) @ self.k(t).transpose(1, 2)).softmax(-1)
        return t + self.proj(weights @ t)


class _PatchMean(nn.Module):
    def forward(self, t):
        return t[:, 1:].mean(1)


class _TinyViT(nn.Module):
    """4 x 4 patches of 32 x 32 images: 64 tokens of 64 channels (as many channels as tokens),
    a class token in front, one attention block, the patch tokens averaged for the head."""

    num_prefix_tokens = 1

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 64, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 64))
        self.pos = nn.Parameter(torch.randn(1, 65, 64))
        self.norm = nn.LayerNorm(64)
        self.attn = _Attend(64)
        self.pool = _PatchMean()
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.pos
        return self.head(self.pool(self.attn(self.norm(tokens))))


def test_tokens_keep_the_patch_field_until_attention_makes_it_the_whole_image():
    net = _TinyViT()
    fields = receptive_fields(net, input_size=32)
    for name in ("patch", "norm", "attn.q"):  # each token sees its own 4 x 4 patch
        assert fields[name].size == (4, 4) and fields[name].stride == (4.0, 4.0)
        assert not fields[name].whole
    analytic = receptive_field(net, "norm", position=(2, 5), input_size=32)
    empirical, _ = empirical_receptive_field(net, "norm", position=(2, 5), input_size=32)
    assert analytic.box == empirical.box == (8, 20, 12, 24)  # LayerNorm: its channel sum cancels
    whole = receptive_field(net, "attn", position=(2, 5), input_size=32)
    assert whole.whole and whole.box == whole.clipped_box == (0, 0, 32, 32)
    assert whole.stride == (4.0, 4.0) and whole.size == (32, 32)
    empirical, erf = empirical_receptive_field(net, "attn", position=(2, 5), input_size=32)
    assert empirical.box == (0, 0, 32, 32) and (erf > 0).all()
    assert fields["pool"] == "global"  # the mean over tokens is no map, 64 channels or not

"""Extraction: oracle tests against torchvision's create_feature_extractor, early stop, in-place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from featuremap.errors import ConfigError, UnknownNameError
from featuremap.extraction import Extractor, FeatureMaps, extract

ORACLE = {
    "resnet18": ["conv1", "layer1.0.conv1", "layer2", "layer3.1.bn2", "layer4"],
    "vgg11_bn": ["features.0", "features.4", "features.14", "features.28"],
    "mobilenet_v3_small": ["features.0", "features.3.block.1", "features.9", "features.12"],
    "densenet121": ["features.conv0", "features.denseblock1", "features.transition2.conv",
                    "features.denseblock4.denselayer16.conv2"],
    "efficientnet_b0": ["features.1", "features.3.0.block.1", "features.6", "features.8"],
}


@pytest.mark.parametrize("arch", sorted(ORACLE))
def test_equals_create_feature_extractor(arch):
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    layers = ORACLE[arch]
    fm = extract(model, x, layers=layers)
    with torch.no_grad():
        expected = create_feature_extractor(model, return_nodes=layers)(x)
    assert list(fm) == layers
    for name in layers:
        torch.testing.assert_close(fm[name], expected[name], rtol=1e-5, atol=1e-6)
        assert fm.meta[name].shape == tuple(expected[name].shape)


class Spy(nn.Module):
    """A chain whose modules record that they were called."""

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.ReLU(inplace=True)
        self.c = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, 2)
        for name, m in [("a", self.a), ("b", self.b), ("c", self.c), ("head", self.head)]:
            m.register_forward_pre_hook(lambda _m, _i, n=name: self.calls.append(n))

    def forward(self, x):
        x = self.c(self.b(self.a(x)))
        return self.head(x.mean((2, 3)))


def test_early_stop_never_calls_later_modules():
    model = Spy()
    fm = extract(model, torch.randn(1, 3, 8, 8), layers="a")
    assert model.calls == ["a"]
    assert fm["a"].shape == (1, 4, 8, 8)
    model.calls.clear()
    extract(model, torch.randn(1, 3, 8, 8), layers="a", early_stop=False)
    assert model.calls == ["a", "b", "c", "head"]


def test_inplace_op_after_capture_does_not_change_it():
    model = Spy().eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = model.a(x)
    assert (expected < 0).any()
    fm = extract(model, x, layers=["a", "c"])
    torch.testing.assert_close(fm["a"], expected)  # b's in-place ReLU ran on the same tensor


def test_request_order_and_metadata():
    model = Spy()
    fm = extract(model, torch.randn(2, 3, 8, 8), layers=["c", "a"])
    assert list(fm) == ["c", "a"]
    assert fm.meta["c"].type == "Conv2d" and fm.meta["c"].stride == (2.0, 2.0)
    assert fm.meta["a"].stride == (1.0, 1.0)
    assert not fm["c"].requires_grad
    assert set(fm.numpy()) == {"c", "a"} and fm.numpy()["a"].dtype == np.float32


def test_dict_output_keeps_out():
    class Head(nn.Module):
        def forward(self, x):
            return {"aux": x * 0, "out": x + 1}

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = Head()

        def forward(self, x):
            return self.head(x)["out"]

    x = torch.randn(1, 3, 4, 4)
    fm = extract(Net(), x, layers="head")
    torch.testing.assert_close(fm["head"], x + 1)
    assert "'out' kept" in fm.meta["head"].note


def test_tuple_and_dict_outputs_rule():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            a, b = self.pair(x)
            return self.conv(a + b)

    x = torch.randn(1, 3, 4, 4)
    fm = extract(Net(), x, layers="pair")
    torch.testing.assert_close(fm["pair"], x * 2)
    assert "element 0 kept" in fm.meta["pair"].note
    seg = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None,
                                       weights_backbone=None, num_classes=3).eval()
    fm = extract(seg, torch.randn(1, 3, 64, 64), layers="classifier")
    assert fm["classifier"].shape[1] == 3


def test_images_are_preprocessed_with_model_defaults(tmp_path):
    model = Spy()
    fm = extract(model, ["sample:chelsea", "sample:coffee"], layers="a")
    assert fm.input_shape == (2, 3, 224, 224)
    assert fm.images.shape == (2, 3, 224, 224) and 0 <= fm.images.min() <= fm.images.max() <= 1
    fm = extract(model, "sample:camera", layers="a")
    assert any("greyscale" in n for n in fm.notes)


def test_reused_buffers_are_overwritten_but_values_right():
    model = Spy().eval()
    ex = Extractor(model, ["a", "c"], reuse_buffers=True)
    x1, x2 = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    first = ex(x1)["c"]
    ptr = first.data_ptr()
    second = ex(x2)["c"]
    assert second.data_ptr() == ptr
    fresh = extract(model, x2, layers="c")["c"]
    torch.testing.assert_close(second, fresh)


def test_unknown_layer_did_you_mean(resnet18):
    model = resnet18
    with pytest.raises(UnknownNameError, match="Did you mean 'layer4'"):
        extract(model, torch.randn(1, 3, 32, 32), layers="layer5")


def test_input_too_small_names_the_layer():
    model = torchvision.models.vgg11().eval()
    with pytest.raises(ConfigError, match="features.20") as err:
        extract(model, torch.randn(1, 3, 16, 16), layers="classifier.0")
    assert "too small" in str(err.value)


def test_featuremaps_mapping_and_repr():
    fm = extract(Spy(), torch.randn(1, 3, 8, 8), layers=["a"])
    assert isinstance(fm, FeatureMaps) and len(fm) == 1 and "a" in fm
    assert "a: (1, 4, 8, 8)" in repr(fm)
    with pytest.raises(UnknownNameError):
        fm["b"]


def test_bad_model_and_images():
    with pytest.raises(ConfigError, match="model must be an nn.Module"):
        extract(object(), torch.randn(1, 3, 8, 8), layers="a")
    with pytest.raises(ConfigError, match="no images given"):
        extract(Spy(), [], layers="a")


def test_retain_memory_tunes_glibc_and_extraction_still_exact():
    import platform

    from featuremap.extraction import retain_memory

    tuned = retain_memory()
    assert tuned is (platform.libc_ver()[0] == "glibc")
    model = Spy().eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        expected = model.a(x)
    torch.testing.assert_close(extract(model, x, layers="a")["a"], expected)


def test_overview_layers_are_stage_ends(resnet18):
    from featuremap.summary import overview_layers

    names = overview_layers(resnet18, input_size=64)
    assert names == ["conv1", "relu", "layer1", "layer2", "layer3", "layer4"]
    with pytest.raises(ConfigError, match="no layer with spatial feature maps"):
        overview_layers(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), input_size=2,
                        in_channels=3)


def test_public_extract_stays_a_function_after_the_module_is_imported():
    import featuremap
    import featuremap.extraction  # noqa: F401

    assert callable(featuremap.extract)
    assert featuremap.extract is featuremap.extraction.extract

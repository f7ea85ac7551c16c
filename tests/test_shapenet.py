from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featuremap.bundled.network import (
    CATEGORIES,
    SEGMENTATION_CLASSES,
    ShapesNet,
    bundled,
    normalize,
    weights_path,
)
from featuremap.bundled.scenes import CLASSES, make_dataset
from featuremap.errors import ConfigError


@pytest.fixture(scope="module")
def net() -> ShapesNet:
    torch.manual_seed(0)
    return ShapesNet().eval()


@pytest.fixture(scope="module")
def shipped():
    return bundled()


def test_class_names_match_the_scenes():
    assert SEGMENTATION_CLASSES == CLASSES
    assert CATEGORIES == CLASSES[1:]


@pytest.mark.parametrize("size", [64, 40])
def test_output_shapes_of_every_entry_point(net, size):
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert net(x).shape == (2, 7)
        assert net.segment(x).shape == (2, 8, size, size)
        assert net.features(x).shape == (2, 128, size // 8, size // 8)
        assert net.cam(x).shape == (2, size // 8, size // 8)
        logits, seg = net.forward_all(x)
    assert logits.shape == (2, 7) and seg.shape == (2, 8, size, size)


def test_forward_all_equals_separate_calls(net):
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits, seg = net.forward_all(x)
        torch.testing.assert_close(logits, net(x))
        torch.testing.assert_close(seg, net.segment(x))


def test_cam_is_classifier_weights_times_last_maps(net):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        cam = net.cam(x, 3)
        maps = net.features(x)
        expected = (net.classifier.fc.weight[3][None, :, None, None] * maps).sum(1)
        torch.testing.assert_close(cam, expected)
        # the mean of the CAM plus the bias is the logit (global average pooling)
        torch.testing.assert_close(cam.mean((1, 2)) + net.classifier.fc.bias[3], net(x)[:, 3])


def test_layer_names_exist_and_relus_are_in_place(net):
    names = dict(net.named_modules())
    for block in range(1, 5):
        for layer in ("conv1", "bn1", "relu1", "conv2", "bn2", "relu2"):
            assert f"backbone.block{block}.{layer}" in names
    assert all(f"backbone.block{b}.pool" in names for b in (1, 2, 3))
    assert "backbone.block4.pool" not in names
    for name in ("classifier", "classifier.fc", "segmenter", "segmenter.stem", "segmenter.head"):
        assert name in names
    assert names["backbone.block2.relu1"].inplace


def test_parameters_fit_in_two_megabytes(net):
    size = sum(t.numel() * 4 for t in net.state_dict().values() if t.is_floating_point())
    assert size <= 2_000_000
    assert weights_path().stat().st_size <= 2_000_000


def test_bad_input_raises_config_error(net):
    with pytest.raises(ConfigError, match=r"\(N, 3, H, W\)"):
        net.forward_all(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ConfigError, match="num_classes"):
        ShapesNet(num_classes=0)


def test_normalize_uses_mean_and_std():
    x = torch.full((1, 3, 2, 2), 0.5)
    out = normalize(x)
    assert out.shape == x.shape and torch.allclose(out, torch.zeros_like(out), atol=1e-6)


def test_bundled_loads_with_metadata(shipped):
    model, meta = shipped
    assert not model.training
    assert meta["categories"] == list(CATEGORIES)
    assert meta["segmentation_classes"] == list(CLASSES)
    assert meta["input_size"] == 64 and len(meta["mean"]) == len(meta["std"]) == 3
    assert ShapesNet(**meta["config"]).state_dict().keys() == model.state_dict().keys()
    for key in ("seed", "epochs", "n_train", "lr"):
        assert key in meta["recipe"]
    for key in ("accuracy", "miou", "seed", "n", "date"):
        assert key in meta["metrics"]
    assert meta["metrics"]["accuracy"] >= 0.97 and meta["metrics"]["miou"] >= 0.85
    json.dumps(meta)


def test_bundled_recognises_fresh_scenes(shipped):
    model, _ = shipped
    images, masks, labels = make_dataset(200, seed=987_654)
    with torch.no_grad():
        logits, seg = model.forward_all(normalize(torch.from_numpy(images)))
    accuracy = float((logits.argmax(1).numpy() + 1 == labels).mean())
    pixels = float((seg.argmax(1).numpy() == masks).mean())
    assert accuracy >= 0.95
    assert pixels >= 0.95
    assert np.isfinite(logits.numpy()).all()

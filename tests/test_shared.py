"""Feature sharing: one backbone pass feeds classification, Grad-CAM and segmentation."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from featuremap.bundled.scenes import make_scene
from featuremap.errors import ConfigError
from featuremap.tasks.cam import grad_cam
from featuremap.tasks.clusters import cluster_segments
from featuremap.tasks.segnets import segment
from featuremap.tasks.shared import analyse
from featuremap.tasks.topk import classify
from featuremap.zoo import load_model


@contextmanager
def count_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """``calls[0]``: how many times ``module`` ran inside the ``with`` block."""
    calls = [0]
    handle = module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def test_bundled_model_backbone_runs_once_and_results_equal_separate_calls():
    model = load_model("shapes")
    scene = make_scene(60_123)
    with count_calls(model.module.backbone) as calls:
        result = analyse(model, scene.image, top=3)
    assert calls[0] == 1
    alone = classify(model, scene.image, top=3)
    assert [t[:2] for t in result.classification.top] == [t[:2] for t in alone.top]
    assert result.classification.top[0][0] == scene.label - 1
    cam = grad_cam(model, scene.image, layer="backbone.block4")
    np.testing.assert_allclose(result.cam.heatmap, cam.heatmap, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(result.segmentation.labels, segment(model, scene.image).labels)
    assert set(result.maps) >= {"backbone.block1", "backbone.block4"}


def test_any_classifier_shares_one_pass_with_clusters(resnet18):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = load_model(resnet18)
    image = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
    with count_calls(model.module.layer1) as calls:
        result = analyse(model, image, cam_layer="layer4", cluster_layers=["layer2"], k=3)
    assert calls[0] == 1
    alone = cluster_segments(model, image, layers=["layer2"], k=3)
    np.testing.assert_array_equal(result.segmentation.labels, alone.labels)
    assert result.cam.layer == "layer4" and result.segmentation.method == "clusters"


def test_bad_inputs():
    model = load_model("shapes")
    scene = make_scene(1)
    with pytest.raises(ConfigError, match="not convolutional"):
        analyse(model, scene.image, cam_layer="classifier.fc")
    with pytest.raises(ConfigError, match="top must be"):
        analyse(model, scene.image, top=0)

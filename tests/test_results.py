"""Every command's result is a library value: ``str()`` is what the CLI prints, ``to_dict()`` is
JSON-ready (what a web page would receive), so no face computes anything of its own."""

from __future__ import annotations

import json

import numpy as np
import pytest

import featuremap as fm
from featuremap.bundled.scenes import make_scene, save_dataset


@pytest.fixture(scope="module")
def shapes():
    return fm.load_model("shapes")


@pytest.fixture(scope="module")
def scene():
    return make_scene(60_001).image


def _results(shapes, scene, tmp_path_factory):
    from featuremap.arithmetic import conv_cost
    from featuremap.effective import trace_field
    from featuremap.summary import layer_table
    from featuremap.tasks.cam import cam, grad_cam
    from featuremap.tasks.clusters import cluster_segments
    from featuremap.tasks.probe import probe
    from featuremap.tasks.segfit import fit_seg_head
    from featuremap.tasks.segnets import segment
    from featuremap.tasks.shared import analyse
    from featuremap.tasks.topk import classify
    from featuremap.views import overview, show

    classes = save_dataset(tmp_path_factory.mktemp("r") / "c", 42, seed=2)
    pairs = save_dataset(tmp_path_factory.mktemp("r") / "s", 12, seed=3, layout="segmentation")
    yield "conv", fm.compute_maps("sample:camera", "sobel", short_side=32)
    yield "shape", conv_cost(224, 3, depth=64, stride=2, padding=1)
    yield "explain", fm.explain_value("sample:camera", "sobel", at=(0, 4, 4), short_side=32)
    yield "explain --layer", fm.explain(shapes, scene, layer="backbone.block2.conv1",
                                        at=(3, 10, 12))
    yield "extract", fm.extract(shapes, scene, layers=["backbone.block1", "backbone.block4"])
    yield "layers", layer_table(shapes)
    yield "show", show(shapes, scene, layer="backbone.block2")
    yield "overview", overview(shapes, scene)
    yield "rf", trace_field(shapes, scene, layer="backbone.block2", at=(8, 8))
    yield "classify", classify(shapes, scene, top=3)
    yield "classify --cam", grad_cam(shapes, scene, layer="backbone.block4")
    yield "classify --method cam", cam(shapes, scene)
    yield "segment", segment(shapes, scene)
    yield "segment --layers", cluster_segments(shapes, scene, layers="backbone.block1", k=3)
    yield "analyse", analyse(shapes, scene, top=2)
    yield "probe", probe(shapes, classes, layers=["backbone.block1", "backbone.block4"])
    head = fit_seg_head(shapes, pairs, layers=["backbone.block4"], epochs=2)
    yield "fit-seg", head
    yield "segment --head", head.predict(shapes, scene)


def test_every_result_prints_and_converts_to_json(shapes, scene, tmp_path_factory):
    seen = []
    for command, result in _results(shapes, scene, tmp_path_factory):
        text = str(result)
        assert text.strip(), command
        data = result.to_dict()
        json.dumps(data, allow_nan=True)  # plain values only: no arrays, tensors or paths
        assert isinstance(data, dict) and data, command
        seen.append(command)
    assert len(seen) == 18


def test_to_dict_carries_what_the_text_says(shapes, scene):
    from featuremap.tasks.topk import classify

    result = classify(shapes, scene, top=3)
    data = result.to_dict()
    assert [t["name"] for t in data["top"]] == [name for _, name, _ in result.top]
    for _, name, p in result.top:
        assert name in str(result) and f"{p:.4f}" in str(result)
    maps = fm.extract(shapes, scene, layers="backbone.block2")
    meta = maps.to_dict()["layers"]["backbone.block2"]
    assert meta["shape"] == [1, 32, 16, 16] and meta["stride"] == [4.0, 4.0]
    assert meta["layout"] == "NCHW" and np.isclose(meta["stride"][0], 4.0)

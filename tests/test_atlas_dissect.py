"""dissect: the streaming quantile against np.quantile, the IoU against a brute-force count,
colour names against their prototypes (and CIELAB against scikit-image), concept sets, a store
against its dataset, the label check, the refusals, and the figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import featuremap as fm
from featuremap.atlas import Dissection, MaskClasses, check_labels, dissect
from featuremap.atlas.check import on_concept
from featuremap.atlas.concepts import COLOUR_TERMS, PROTOTYPES, colour_names, srgb_to_lab
from featuremap.atlas.patches import Patch
from featuremap.atlas.quantile import TopQuantile
from featuremap.bundled.scenes import CLASSES, save_dataset
from featuremap.datasets import open_collection
from featuremap.errors import ConfigError, UnknownNameError
from featuremap.extraction import Extractor
from featuremap.plot import plot_dissection, save_figure
from featuremap.store import extract_dataset

LAYERS = ["backbone.block3", "backbone.block1"]  # given high first: reported low to high


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return save_dataset(tmp_path_factory.mktemp("dissect") / "pairs", 12, seed=21,
                        layout="segmentation")


@pytest.fixture(scope="module")
def in_memory(shapes, pairs):
    """Images, masks and upsampled maps of the whole dataset, in memory."""
    collection = open_collection(pairs)
    images = np.stack([shapes.preprocess.load(item.path) for item in collection])
    reader = collection.reader()
    masks = np.stack([reader(item)[1] for item in collection])
    mean = torch.tensor(shapes.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(shapes.preprocess.std).view(1, 3, 1, 1)
    got = Extractor(shapes, LAYERS).run((torch.from_numpy(images) - mean) / std)
    up = {k: F.interpolate(v, size=(64, 64), mode="bilinear", align_corners=False).numpy()
          for k, v in got.maps.items()}
    return images, masks, up


@pytest.fixture(scope="module")
def result(shapes, pairs):
    return dissect(shapes, pairs, layers=LAYERS, batch_size=5)


def test_the_streaming_quantile_is_within_one_bin_of_np_quantile(in_memory, result):
    """np.quantile interpolates between the two sorted values around rank 0.995 (N - 1); the
    estimate lies within one bin width of that pair (ties of upsampled maps leave gaps between
    neighbours wider than a bin)."""
    _, _, up = in_memory
    for d in result.layers:
        values = up[d.layer].transpose(1, 0, 2, 3).reshape(d.n_channels, -1)
        ordered = np.sort(values, axis=1)
        rank = 0.995 * (values.shape[1] - 1)
        low, high = ordered[:, int(np.floor(rank))], ordered[:, int(np.ceil(rank))]
        bin_width = d.threshold_error + 1e-6
        assert ((d.thresholds >= low - bin_width) & (d.thresholds <= high + bin_width)).all()
        spread = values.max(1) - values.min(1)
        exact = np.quantile(values, 0.995, axis=1)
        assert (np.abs(d.thresholds - exact) <= spread / 200).all()
        above = (values > d.thresholds[:, None]).mean(1)  # the share it marks: about 0.5%
        assert np.abs(above - 0.005).max() < 0.0005
    rng = np.random.default_rng(0)
    heavy = rng.pareto(3.0, (3, 60_000)).astype(np.float32)
    heavy[:, :2000] *= 0.01  # the first batch spans a tiny range: the bins widen 7-10 times
    estimator = TopQuantile(3, 0.005)
    for start in range(0, 60_000, 2000):
        estimator.add(torch.from_numpy(heavy[:, start: start + 2000]))
    exact = np.quantile(heavy, 0.995, axis=1)
    error = np.abs(estimator.thresholds().numpy() - exact)
    assert (error <= estimator.max_error.numpy()).all() and (error / exact < 0.01).all()


def test_iou_equals_a_brute_force_count(in_memory, result):
    images, masks, up = in_memory
    labels = {"colour": colour_names(images)}
    shape_labels = np.where(masks == 0, -1, masks.astype(np.int64) - 1)  # background left out
    for d in result.layers:
        active = up[d.layer] > d.thresholds[None, :, None, None]
        for k, concept in enumerate(d.concepts):
            if concept.category == "colour":
                where = labels["colour"] == COLOUR_TERMS.index(concept.name)
            else:
                where = shape_labels == CLASSES[1:].index(concept.name)
            inter = (active & where[:, None]).sum((0, 2, 3))
            union = (active | where[:, None]).sum((0, 2, 3))
            np.testing.assert_allclose(d.iou[:, k], inter / np.maximum(union, 1), atol=1e-6)
        np.testing.assert_allclose(d.active_share, active.mean((0, 2, 3)), atol=1e-6)
        assert (d.detector == (d.best_iou >= 0.04)).all()


def test_result_layers_concepts_text_and_figure(result, tmp_path):
    assert isinstance(result, Dissection) and result.n_images == 12
    assert [d.layer for d in result.layers] == ["backbone.block1", "backbone.block3"]
    assert [c.name for c in result.concepts] == list(COLOUR_TERMS) + list(CLASSES[1:])
    assert result.categories == ("colour", "shape")
    for shares in zip(*result.curve.values()):
        assert sum(shares) == pytest.approx(1.0)
    assert set(result.iou_curve) == {"colour", "shape"}
    assert result.iou_curve["shape"][1] == pytest.approx(
        float(np.median(result.layers[1].best_in("shape"))))
    d = result.layer("backbone.block3")
    assert all(d.category(c) == "shape" for c, _, _ in d.detectors("shape"))
    text = str(result)
    assert "backbone.block1" in text and "colour" in text and "none" in text
    assert "median over channels of the best IoU" in text
    data = json.loads(json.dumps(result.to_dict()))
    assert data["curve"]["none"] == result.curve["none"]
    assert len(data["layers"][1]["channels"]) == 64
    fig = plot_dissection(result)
    assert save_figure(fig, tmp_path / "dissect.png").stat().st_size > 0
    assert fm.dissect is dissect


def test_many_layers_are_drawn_one_panel_above_the_other(result, tmp_path):
    import dataclasses

    layers = [dataclasses.replace(result.layers[i % 2], layer=f"backbone.layer{i}.conv")
              for i in range(12)]
    fig = plot_dissection(dataclasses.replace(result, layers=layers))
    fig.canvas.draw()
    shares, iou = fig.axes[:2]
    assert shares.get_position().y0 > iou.get_position().y1  # stacked
    assert [t.get_text() for t in shares.get_xticklabels()][0] == "backbone.layer0.conv (16 ch)"
    assert shares.get_xticklabels()[0].get_rotation() == 40  # more than ten: slanted
    assert shares.get_xlim() == iou.get_xlim() == (-0.5, 11.5)
    assert save_figure(fig, tmp_path / "many.png").stat().st_size > 0


def test_colour_names_of_the_prototypes_and_cielab():
    pixels = np.array(list(PROTOTYPES.values()), np.float32).T[:, :, None] / 255  # (3, 11, 1)
    assert [COLOUR_TERMS[i] for i in colour_names(pixels)[:, 0]] == list(COLOUR_TERMS)
    plain = {"red": (1, 0, 0), "yellow": (1, 1, 0), "blue": (0, 0, 1), "white": (1, 1, 1),
             "black": (0, 0, 0), "green": (0, 0.6, 0)}
    for name, rgb in plain.items():
        assert COLOUR_TERMS[colour_names(np.array(rgb, np.float32)[:, None, None])[0, 0]] == name
    assert colour_names(np.full((1, 2, 2), 0.5, np.float32)).tolist() == [[3, 3], [3, 3]]
    from skimage.color import rgb2lab

    x = np.random.default_rng(1).random((500, 3))
    np.testing.assert_allclose(srgb_to_lab(x), rgb2lab(x), atol=0.01)
    with pytest.raises(ConfigError, match="RGB images"):
        colour_names(np.zeros((4, 4)))


def test_concept_sets_masks_of_your_own_classes(shapes, pairs, tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    for sub in ("images", "masks"):
        (own / sub).symlink_to(pairs / sub)
    names = ["void", "sun", "box", "tent", "starfish", "plus", "donut", "moon"]
    (own / "classes.txt").write_text("\n".join(names) + "\n")
    d = dissect(shapes, own, layers="backbone.block2", concepts=["masks"])
    assert [c.name for c in d.concepts] == names  # no class named 'background' to leave out
    assert d.categories == ("class",)
    assert set(d.curve) == {"class", "none"}
    mine = MaskClasses(names, category="class", background="void")
    assert mine.names == tuple(names[1:])
    labels = mine.labels(np.zeros((1, 3, 2, 2)), np.array([[[0, 1], [7, 255]]]))
    assert labels.tolist() == [[[-1, 0], [6, -1]]]


def test_a_store_gives_the_same_dissection(shapes, pairs, result, tmp_path):
    store = extract_dataset(shapes, pairs, layers=LAYERS, out=tmp_path / "maps.zarr",
                            batch_size=5).path
    again = dissect(shapes, store, layers=LAYERS)
    for a, b in zip(again.layers, result.layers):
        assert a.layer == b.layer
        np.testing.assert_allclose(a.thresholds, b.thresholds, rtol=1e-6)
        np.testing.assert_allclose(a.iou, b.iou, atol=1e-6)


def test_label_check(shapes, pairs, result):
    ticks: list[tuple[int, int]] = []
    check = check_labels(shapes, pairs, result, k=3, progress=lambda d, t: ticks.append((d, t)))
    layers = sum(1 for d in result.layers if d.detectors("shape"))
    assert ticks[-1] == (layers * 12, layers * 12)  # one pass per layer with detectors
    assert [d for d, _ in ticks] == sorted(d for d, _ in ticks)
    shape_detectors = sum(len(d.detectors("shape")) for d in result.layers)
    assert len(check.rows) == shape_detectors
    for *_, centre, cell, n, base in check.rows:
        assert 0 <= centre <= cell <= 1 and n == 3 and 0 < base < 1
    assert "centre on" in str(check) and json.dumps(check.to_dict())
    groups = {(r[0], r[2]) for r in check.rows}
    body = str(check).splitlines()[1:-1]  # one line per layer and concept
    assert len(body) == len(groups)
    assert sum(int(line.split()[2]) for line in body) == len(check.rows)
    mask = np.zeros((64, 64), np.uint8)
    mask[30:34, 30:34] = 1
    patch = Patch(0, 0, 1.0, 0, "x", (4, 4), (0, 0, 64, 64), (0, 0, 64, 64),
                  np.zeros((3, 64, 64), np.float32), np.zeros((64, 64), bool))
    assert on_concept(patch, mask, 1)
    far = Patch(0, 0, 1.0, 0, "x", (0, 0), (-30, -30, 38, 38), (0, 0, 38, 38),
                np.zeros((3, 68, 68), np.float32), np.zeros((68, 68), bool))
    assert not on_concept(far, mask, 1) and not on_concept(far, mask, 1, cell=(8, 8))
    near = Patch(0, 0, 1.0, 0, "x", (3, 3), (-6, -6, 62, 62), (0, 0, 62, 62),
                 np.zeros((3, 68, 68), np.float32), np.zeros((68, 68), bool))
    assert not on_concept(near, mask, 1) and on_concept(near, mask, 1, cell=(8, 8))


def test_bad_input_is_one_line(shapes, pairs, tmp_path):
    classes = save_dataset(tmp_path / "cls", 3, seed=1, layout="classes")
    cases = [
        (ConfigError, "quantile is the top share", {"quantile": 0.0}),
        (ConfigError, "quantile is the top share", {"quantile": 0.6}),
        (ConfigError, "threshold is an IoU", {"threshold": 2}),
        (UnknownNameError, "Did you mean 'colour'", {"concepts": ["colr"]}),
        (ConfigError, "concepts is empty", {"concepts": []}),
        (UnknownNameError, "Unknown layer 'backbone.block9'", {"layers": "backbone.block9"}),
    ]
    for kind, match, options in cases:
        options = {"layers": "backbone.block1", **options}
        with pytest.raises(kind, match=match) as info:
            dissect(shapes, pairs, **options)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="concepts 'masks' need image/mask pairs"):
        dissect(shapes, classes, layers="backbone.block1", concepts=["colour", "masks"])
    store = extract_dataset(shapes, pairs, layers="backbone.block1", pool="max2",
                            out=tmp_path / "pooled.zarr", batch_size=4).path
    with pytest.raises(ConfigError, match="max2-pooled"):
        dissect(None, store, layers="backbone.block1")


def test_a_concept_set_named_twice_is_scored_once(pairs):
    from featuremap.atlas.concepts import resolve_concepts

    once = resolve_concepts(["colour", "masks"], classes=CLASSES, has_masks=True, source="x")
    twice = resolve_concepts(["masks", "colour", "shapes", "colors"], classes=CLASSES,
                             has_masks=True, source="x")
    assert sorted(type(s).__name__ for s in twice) == sorted(type(s).__name__ for s in once)


def test_the_second_pass_reuses_the_first_pass_s_maps_when_they_fit(shapes, pairs, monkeypatch):
    import featuremap.atlas.dissection as module

    calls = []
    handle = shapes.module.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        kept = dissect(shapes, pairs, layers=LAYERS, batch_size=5)
        once = len(calls)
        monkeypatch.setattr(module, "CACHE_BYTES", 0)  # nothing fits: the network runs again
        calls.clear()
        again = dissect(shapes, pairs, layers=LAYERS, batch_size=5)
        twice = len(calls)
    finally:
        handle.remove()
    assert once == 3 and twice == 6  # 12 images in batches of 5: 3 forward passes per pass
    for a, b in zip(kept.layers, again.layers):
        np.testing.assert_array_equal(a.thresholds, b.thresholds)
        np.testing.assert_array_equal(a.iou, b.iou)

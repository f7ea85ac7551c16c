from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from featuremap.bundled.scenes import (
    CLASSES,
    make_dataset,
    make_scene,
    save_dataset,
    scene_seed,
)
from featuremap.errors import ConfigError, FeaturemapError


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = make_scene(11), make_scene(11), make_scene(12)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.label == b.label and a.seed == 11
    assert not np.array_equal(a.image, c.image)


def test_dtypes_shapes_and_ranges():
    s = make_scene(3, size=48)
    assert s.image.shape == (3, 48, 48) and s.image.dtype == np.float32
    assert s.mask.shape == (48, 48) and s.mask.dtype == np.int64
    assert 0.0 <= s.image.min() and s.image.max() <= 1.0
    assert 0 <= s.mask.min() and s.mask.max() < len(CLASSES)
    assert 1 <= s.label < len(CLASSES)


def test_dataset_matches_scenes_and_seeds_give_disjoint_sets():
    images, masks, labels = make_dataset(5, seed=2, size=32)
    assert images.shape == (5, 3, 32, 32) and images.dtype == np.float32
    assert masks.shape == (5, 32, 32) and masks.dtype == np.int64
    assert labels.shape == (5,) and labels.dtype == np.int64
    scene = make_scene(scene_seed(2, 4), size=32)
    np.testing.assert_array_equal(images[4], scene.image)
    np.testing.assert_array_equal(masks[4], scene.mask)
    other, _, _ = make_dataset(5, seed=3, size=32)
    assert not any(np.array_equal(x, y) for x in images for y in other)


def test_every_class_appears_and_label_has_most_pixels():
    images, masks, labels = make_dataset(300, seed=0)
    assert set(labels.tolist()) == set(range(1, len(CLASSES)))
    assert set(np.unique(masks).tolist()) == set(range(len(CLASSES)))
    for mask, label in zip(masks, labels):
        counts = np.bincount(mask.ravel(), minlength=len(CLASSES))[1:]
        assert counts.argmax() + 1 == label
        assert (counts == counts.max()).sum() == 1  # no tie
    # distractors exist in some scenes, not all
    shapes_per_scene = [(np.unique(m) > 0).sum() for m in masks]
    assert min(shapes_per_scene) == 1 and max(shapes_per_scene) == 3


def test_backgrounds_are_textured_and_colours_do_not_give_the_class():
    images, masks, labels = make_dataset(1400, seed=1, size=32)
    background = np.where(masks[:, None] == 0, images, np.nan)
    assert np.nanmean(np.nanstd(background, axis=(2, 3))) > 0.05
    main = (masks == labels[:, None, None])[:, None]
    colour = (images * main).sum((2, 3)) / main.sum((2, 3))  # (N, 3) mean colour of main shape
    per_class = np.array([colour[labels == c].mean(0) for c in range(1, len(CLASSES))])
    assert np.ptp(per_class, axis=0).max() < 0.1  # every class has about the same colours
    assert colour.std(0).min() > 0.2  # and those colours vary widely


@pytest.mark.parametrize("layout", ["classes", "segmentation"])
def test_save_dataset_layouts(tmp_path, layout):
    root = save_dataset(tmp_path / "data", 12, seed=4, size=32, layout=layout)
    _, masks, labels = make_dataset(12, seed=4, size=32)
    if layout == "classes":
        assert sorted(p.name for p in root.iterdir()) == sorted(CLASSES[1:])
        files = sorted(root.glob("*/*.png"))
        assert len(files) == 12
        assert all(p.parent.name == CLASSES[labels[int(p.stem[-5:])]] for p in files)
        assert Image.open(files[0]).size == (32, 32)
    else:
        images = sorted((root / "images").glob("*.png"))
        mask_files = sorted((root / "masks").glob("*.png"))
        assert [p.name for p in images] == [p.name for p in mask_files] and len(images) == 12
        mask = np.asarray(Image.open(mask_files[3]))
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, masks[3])
        assert (root / "classes.txt").read_text().split() == list(CLASSES)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: make_scene(1, size=16), "size"),
        (lambda: make_scene(-1), "Seed"),
        (lambda: make_dataset(0, seed=1), ">= 1"),
        (lambda: save_dataset("unused", 2, seed=1, layout="voc"), "layout"),
    ],
)
def test_bad_input_raises_config_error(call, words):
    with pytest.raises(ConfigError, match=words) as info:
        call()
    assert isinstance(info.value, FeaturemapError)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("call, words", [
    (lambda: make_scene(1, size=1_000_000), "generating a scene of 1000000 x 1000000 pixels "
                                            "would take 160 TB"),
    (lambda: make_dataset(10**9, seed=0), "1000000000 scenes of 64 x 64 pixels would take 81.9 TB"),
    (lambda: save_dataset("never-written", 10, seed=0, size=100_000), "a scene of 100000"),
])
def test_sizes_too_large_are_refused_before_allocating(call, words, refused_early):
    refused_early(call, words)


def test_save_dataset_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    import featuremap.bundled.scenes as shapes

    real, made = shapes.make_scene, []

    def interrupted(seed, *, size):
        if len(made) == 3:
            raise KeyboardInterrupt
        made.append(seed)
        return real(seed, size=size)

    monkeypatch.setattr(shapes, "make_scene", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_dataset(tmp_path / "data", 10, seed=0, size=32, layout="segmentation")
    assert list(tmp_path.iterdir()) == []  # no folder, no temporary folder
    monkeypatch.setattr(shapes, "make_scene", real)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        save_dataset(tmp_path / "full", 2, seed=0, size=32)
    (tmp_path / "empty").mkdir()
    root = save_dataset(tmp_path / "empty", 2, seed=0, size=32)
    assert len(list(root.glob("*/*.png"))) == 2

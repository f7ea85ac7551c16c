"""top_patches: the running top-k against a brute-force oracle, a store against its dataset, the
crops against receptive_field, the refusals, and the figure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import featuremap as fm
from featuremap.atlas import TopPatches, top_patches
from featuremap.atlas.patches import GREY, RunningTopK
from featuremap.bundled.scenes import save_dataset
from featuremap.datasets import batches, open_collection
from featuremap.errors import ConfigError, UnknownNameError
from featuremap.extraction import Extractor
from featuremap.model import Model
from featuremap.plot import plot_top_patches, save_figure
from featuremap.preprocess import Preprocess
from featuremap.store import extract_dataset

LAYER = "backbone.block2"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """20 class-folder scenes and one file that is not an image."""
    data = save_dataset(tmp_path_factory.mktemp("atlas") / "scenes", 20, seed=11,
                        layout="classes")
    (data / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return data


@pytest.fixture(scope="module")
def all_maps(shapes, scenes):
    """Every map of the dataset in memory, computed batch by batch as top_patches does, and
    the collection index of each image read."""
    collection = open_collection(scenes, suffixes=None)
    extractor = Extractor(shapes, [LAYER, "backbone.block4"])
    out = {LAYER: [], "backbone.block4": [], "indices": []}
    with batches(collection, load=collection.reader(preprocess=shapes.preprocess),
                 batch_size=8) as stream:
        for batch in stream:
            for group in batch.groups:
                got = extractor.run(torch.from_numpy(group.images))
                out["indices"].append(group.indices)
                for name in (LAYER, "backbone.block4"):
                    out[name].append(got.maps[name].numpy())
    return {name: np.concatenate(v) for name, v in out.items()}


def oracle(maps: np.ndarray, k: int, per_image: int | None = 1, indices=None):
    """Per channel, sorted by (value desc, image, position): the best ``per_image`` positions
    of each image, then the best ``k`` of those; images numbered by ``indices``."""
    n, c, h, w = maps.shape
    flat = maps.reshape(n, c, h * w)
    values, images, positions = [], [], []
    for ch in range(c):
        rows = []
        for i in range(n):
            order = np.lexsort((np.arange(h * w), -flat[i, ch]))[: per_image or h * w]
            rows += [(flat[i, ch, p], i, p) for p in order]
        rows.sort(key=lambda r: (-r[0], r[1], r[2]))
        rows = rows[:k]
        values.append([r[0] for r in rows])
        images.append([r[1] if indices is None else indices[r[1]] for r in rows])
        positions.append([divmod(r[2], w) for r in rows])
    return np.array(values, np.float32), np.array(images), np.array(positions)


def test_top_patches_equal_a_brute_force_oracle(shapes, scenes, all_maps):
    top = top_patches(shapes, scenes, layer=LAYER, k=5, batch_size=8)
    values, images, positions = oracle(all_maps[LAYER], 5, indices=all_maps["indices"])
    assert isinstance(top, TopPatches) and top.channels == tuple(range(32))
    np.testing.assert_array_equal(top.values, values)
    np.testing.assert_array_equal(top.images, images)
    np.testing.assert_array_equal(top.positions, positions)
    for row in top.patches:  # at most one patch per image per channel
        assert len({p.image for p in row}) == len(row) == 5
    patch = top.channel(7)[0]
    assert patch.name == open_collection(scenes)[patch.image].name
    assert patch.value == values[7, 0] and patch.position == tuple(positions[7, 0])
    assert top.n_images == 20 and list(top.skipped) == ["circle/broken.png"]


def test_channels_and_per_image(shapes, scenes, all_maps):
    picked = top_patches(shapes, scenes, layer=LAYER, k=4, channels=[9, 2], batch_size=8)
    values, images, _ = oracle(all_maps[LAYER], 4, indices=all_maps["indices"])
    assert picked.channels == (9, 2)
    np.testing.assert_array_equal(picked.values, values[[9, 2]])
    np.testing.assert_array_equal(picked.images, images[[9, 2]])
    two = top_patches(shapes, scenes, layer=LAYER, k=6, channels=[3], per_image=2,
                      batch_size=8)
    assert max(np.bincount(two.images[0])) <= 2
    np.testing.assert_array_equal(two.values, oracle(all_maps[LAYER], 6, 2)[0][[3]])
    free = top_patches(shapes, scenes, layer=LAYER, k=6, channels=[3], per_image=None,
                       batch_size=8)
    np.testing.assert_array_equal(free.values, oracle(all_maps[LAYER], 6, None)[0][[3]])


def test_running_top_k_breaks_ties_by_first_image_and_position():
    gen = torch.Generator().manual_seed(0)
    maps = torch.randint(0, 3, (23, 4, 3, 3), generator=gen).float()  # many ties
    running = RunningTopK(6)
    for start in range(0, 23, 5):
        running.add(maps[start: start + 5], np.arange(start, min(start + 5, 23)))
    values, images, positions = oracle(maps.numpy(), 6)
    np.testing.assert_array_equal(running.values.numpy().T, values)
    np.testing.assert_array_equal(running.images.numpy().T, images)
    np.testing.assert_array_equal(running.ys.numpy().T, positions[..., 0])
    np.testing.assert_array_equal(running.xs.numpy().T, positions[..., 1])


def test_crops_are_the_receptive_fields_clipped_at_the_border(shapes, scenes):
    top = top_patches(shapes, scenes, layer="backbone.block4", k=3, channels=[0, 5],
                      batch_size=8)
    collection = open_collection(scenes)
    for patch in [p for row in top.patches for p in row]:
        rf = fm.receptive_field(shapes, "backbone.block4", position=patch.position,
                                input_size=64)
        assert patch.box == rf.box and patch.clipped_box == rf.clipped_box
        y0, x0, y1, x1 = rf.box
        rows, cols = np.arange(y0, y1), np.arange(x0, x1)
        outside = ~((rows[:, None] >= 0) & (rows[:, None] < 64) & (cols >= 0) & (cols < 64))
        np.testing.assert_array_equal(patch.clipped, outside)
        assert outside.any()  # a 68 px field on a 64 px image is always clipped
        assert (patch.crop[:, outside] == GREY).all()
        image = shapes.preprocess.load(collection[patch.image].path)
        cy0, cx0, cy1, cx1 = rf.clipped_box
        np.testing.assert_array_equal(patch.crop[:, cy0 - y0: cy1 - y0, cx0 - x0: cx1 - x0],
                                      image[:, cy0:cy1, cx0:cx1])
    assert top.field_size == (68, 68) and top.stride == (8.0, 8.0)


def test_a_store_gives_the_same_patches_as_its_dataset(shapes, scenes, tmp_path):
    store = extract_dataset(shapes, scenes, layers=[LAYER, "backbone.block4"],
                            pool="backbone.block4=avg", out=tmp_path / "maps.zarr",
                            batch_size=8).path
    from_store = top_patches(shapes, store, layer=LAYER, k=4, channels=[0, 31])
    from_data = top_patches(shapes, scenes, layer=LAYER, k=4, channels=[0, 31], batch_size=8)
    np.testing.assert_array_equal(from_store.values, from_data.values)
    np.testing.assert_array_equal(from_store.images, from_data.images)
    np.testing.assert_array_equal(from_store.positions, from_data.positions)
    for a, b in zip(from_store.patches[1], from_data.patches[1]):
        assert a.name == b.name and a.box == b.box
        np.testing.assert_array_equal(a.crop, b.crop)
    with pytest.raises(ConfigError, match="avg-pooled.*--pool none") as info:
        top_patches(shapes, store, layer="backbone.block4")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="model is needed"):
        top_patches(None, store, layer=LAYER)


def test_bad_input_is_one_line(shapes, scenes, tmp_path):
    cases = [
        (UnknownNameError, "Did you mean 'backbone.block2'", {"layer": "backbone.blok2"}),
        (ConfigError, "k must be an integer >= 1", {"layer": LAYER, "k": 0}),
        (ConfigError, "per_image must be", {"layer": LAYER, "per_image": 0}),
        (ConfigError, "channel 32 is outside the 32 channels", {"layer": LAYER,
                                                                 "channels": [1, 32]}),
        (ConfigError, "channels must be channel numbers", {"layer": LAYER,
                                                           "channels": ["a"]}),
        (ConfigError, "not feature maps", {"layer": "classifier.fc"}),
    ]
    for kind, match, options in cases:
        with pytest.raises(kind, match=match) as info:
            top_patches(shapes, scenes, **options)
        assert "\n" not in str(info.value)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="none of the 1 images .* could be read") as info:
        top_patches(shapes, tmp_path, layer=LAYER)
    assert "broken.png" in str(info.value) and "\n" not in str(info.value)


def test_an_untraceable_model_gets_gradient_fields_with_a_note(scenes):
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return y if float(y.sum()) > -1e9 else -y  # data-dependent: fx cannot trace it

    torch.manual_seed(0)
    model = Model.wrap(Branchy(), preprocess=Preprocess(resize=None, crop=None, mean=(0.5,) * 3,
                                                        std=(0.25,) * 3))
    top = top_patches(model, scenes, layer="conv", k=2, channels=[1])
    assert any("gradient" in note for note in top.notes)
    for patch in top.patches[0]:
        y0, x0, y1, x1 = patch.box
        assert (y1 - y0, x1 - x0) == (3, 3) or patch.clipped_box != patch.box


def test_text_dict_and_figure(shapes, scenes, tmp_path):
    top = top_patches(shapes, scenes, layer=LAYER, k=3, channels=[4, 1], batch_size=8)
    text = str(top)
    assert "top 3 patches per channel of shapes backbone.block2" in text
    assert "field 16 px, stride 4" in text and len(text.splitlines()) == 4
    data = json.loads(json.dumps(top.to_dict()))
    assert data["channels"] == [4, 1] and data["patches"][0][0]["crop_shape"] == [3, 16, 16]
    with pytest.raises(ConfigError, match="channel 5 was not kept"):
        top.channel(5)
    fig = plot_top_patches(top)
    texts = [t.get_text() for ax in fig.axes for t in (ax.title, ax.yaxis.label)]
    assert "channel 4" in texts and any(top.patches[0][0].name[-12:] in t for t in texts)
    assert save_figure(fig, tmp_path / "patches.png").stat().st_size > 0
    assert fm.top_patches is top_patches

"""probe and fit-seg on a store written by extract_dataset: the same results as on the folder,
no forward pass, chunk-by-chunk reading, and the refusals (model, layers, labels, masks, pooling,
an incomplete store), through the library and the command line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from clirun import run_error, run_ok
from featuremap.bundled.scenes import save_dataset
from featuremap.errors import ConfigError, UnknownNameError
from featuremap.store import Store, extract_dataset, open_store
from featuremap.store.manifest import RECORDS
from featuremap.tasks.probe import probe
from featuremap.tasks.segfit import fit_seg_head
from featuremap.zoo import load_model

BLOCKS = ["backbone.block1", "backbone.block4"]
SEG = ["backbone.block2", "backbone.block4"]
BROKEN = b"\x89PNG\r\n\x1a\n not really"


@pytest.fixture(scope="module")
def shapes():
    return load_model("shapes")


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """60 class-folder scenes and one file that is not an image."""
    data = save_dataset(tmp_path_factory.mktemp("cls") / "data", 60, seed=3, layout="classes")
    (data / "circle" / "broken.png").write_bytes(BROKEN)
    return data


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """24 image/mask scenes, one image not readable."""
    data = save_dataset(tmp_path_factory.mktemp("seg") / "data", 24, seed=5,
                        layout="segmentation")
    (data / "images" / "scene_00007.png").write_bytes(BROKEN)
    return data


@pytest.fixture(scope="module")
def class_store(shapes, classes):
    return extract_dataset(shapes, classes, layers=BLOCKS, out=classes.parent / "maps.zarr",
                           batch_size=32).path


@pytest.fixture(scope="module")
def pair_store(shapes, pairs):
    return extract_dataset(shapes, pairs, layers=SEG, out=pairs.parent / "maps.zarr",
                           batch_size=16).path


def _same_probes(a, b):
    assert (a.model_name, a.classes, a.n_train, a.n_test) == (b.model_name, b.classes,
                                                                b.n_train, b.n_test)
    assert a.test_accuracy == b.test_accuracy and a.train_accuracy == b.train_accuracy
    for name, p in a.probes.items():
        q = b.probes[name]
        for part in ("weight", "bias", "mean", "std"):
            assert torch.equal(getattr(p, part), getattr(q, part)), (name, part)


# ---------------------------------------------------------------------------------- probe


def test_probe_on_a_store_equals_probe_on_the_folder(shapes, classes, class_store):
    folder = probe(shapes, classes, layers=BLOCKS, batch_size=32)
    ticks = []
    stored = probe(None, class_store, layers=BLOCKS,
                   progress=lambda done, total: ticks.append((done, total)))
    _same_probes(folder, stored)
    assert ticks == [(32, 61), (61, 61)]  # one tick per chunk of the store
    broken = str(classes / "circle" / "broken.png")
    assert list(folder.skipped) == [broken] == list(stored.skipped)
    assert folder.skipped[broken] == stored.skipped[broken]
    # the model that made the store is accepted, and so is an opened Store
    _same_probes(folder, probe(shapes, open_store(class_store), layers=BLOCKS))


def test_probe_on_an_avg_pooled_store_and_default_layers(shapes, classes, tmp_path):
    out = extract_dataset(shapes, classes, layers=BLOCKS, pool="avg", out=tmp_path / "avg.zarr",
                          batch_size=32).path
    assert open_store(out)["backbone.block4"].shape == (61, 128)
    _same_probes(probe(shapes, classes, layers=BLOCKS), probe(None, out))  # layers: all stored


def test_probe_reads_the_store_one_chunk_at_a_time(class_store, monkeypatch):
    slices = []
    original = Store.__getitem__

    class Recorder:
        def __init__(self, array):
            self.array = array

        def __getitem__(self, key):
            slices.append(key)
            return self.array[key]

    monkeypatch.setattr(Store, "__getitem__", lambda self, k: Recorder(original(self, k)))
    probe(None, class_store, layers="backbone.block4")
    assert slices == [slice(0, 32), slice(32, 61)]  # never the whole (N, C, H, W) array


def test_probe_store_layers_names_globs_and_did_you_mean(class_store):
    assert probe(None, class_store, layers="backbone.block*").layers == BLOCKS
    with pytest.raises(UnknownNameError, match=r"Unknown layer 'backbone.block3'. Did you mean "
                                               r"'backbone.block4'.*holds backbone.block1, "
                                               r"backbone.block4"):
        probe(None, class_store, layers=["backbone.block3"])
    with pytest.raises(UnknownNameError, match="No layer of the store matches the glob"):
        probe(None, class_store, layers="layer*")
    with pytest.raises(ConfigError, match="no layer given"):
        probe(None, class_store, layers=",")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)


def test_a_model_that_did_not_make_the_store_is_refused(class_store, pair_store):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        random = load_model("shapes", weights="random")
    with pytest.raises(ConfigError, match=r"not made with this model: the weights differ "
                                          r"\(store: shapes.safetensors.*sha256 [0-9a-f]{12}; "
                                          r"given: random") as info:
        probe(random, class_store, layers="backbone.block4")
    assert "the model is" not in str(info.value) and "preprocessing" not in str(info.value)
    with pytest.raises(ConfigError, match=r"the model is Tiny, the store's is shapes; the "
                                          r"weights differ.*the preprocessing differs"):
        fit_seg_head(Tiny(), pair_store, epochs=1)


def test_probe_refuses_stores_it_cannot_use(shapes, classes, pair_store, tmp_path):
    with pytest.raises(ConfigError, match=r"has no class labels.*images/ and masks/.*class "
                                          "folders"):
        probe(None, pair_store)
    out = extract_dataset(shapes, classes, layers="backbone.block4", pool="max",
                          out=tmp_path / "max.zarr").path
    with pytest.raises(ConfigError, match="max-pooled, but a probe.*--pool avg"):
        probe(None, out)
    with pytest.raises(ConfigError, match="needs a model"):
        probe(None, classes, layers="backbone.block4")
    with pytest.raises(ConfigError, match="name the layers"):
        probe(shapes, classes)


def test_an_incomplete_store_is_refused(class_store, tmp_path):
    copy = shutil.copytree(class_store, tmp_path / "copy.zarr")
    (copy / RECORDS / "000000000032.json").unlink()  # the second chunk was never finished
    with pytest.raises(ConfigError, match=r"incomplete: 29 of 61 images are still pending.*"
                                          "featuremap extract"):
        probe(None, copy)


# -------------------------------------------------------------------------------- fit-seg


def test_fit_seg_on_a_store_equals_fit_seg_on_the_folder(shapes, pairs, pair_store):
    folder = fit_seg_head(shapes, pairs, layers=SEG, epochs=4)
    ticks = []
    stored = fit_seg_head(None, pair_store, epochs=4,
                          progress=lambda done, total: ticks.append((done, total)))
    assert torch.equal(folder.weight, stored.weight) and torch.equal(folder.bias, stored.bias)
    assert folder.miou == stored.miou
    np.testing.assert_equal(folder.per_class_iou, stored.per_class_iou)  # NaN: no pixel
    assert (folder.confusion == stored.confusion).all() and folder.history == stored.history
    assert folder.skipped == stored.skipped == ["scene_00007.png"]
    assert (stored.n_train, stored.n_test, stored.layers, stored.model_name) == (
        folder.n_train, folder.n_test, SEG, "shapes")
    assert ticks[:2] == [(16, 28), (24, 28)] and ticks[-1] == (28, 28)
    assert torch.equal(fit_seg_head(shapes, open_store(pair_store), layers=SEG,
                                    epochs=4).weight, folder.weight)


def test_fit_seg_skips_masks_gone_since_the_extraction(shapes, tmp_path, monkeypatch):
    data = save_dataset(tmp_path / "data", 6, seed=9, layout="segmentation")
    monkeypatch.chdir(tmp_path)  # a relative source: the store records absolute mask paths
    out = extract_dataset(shapes, "data", layers="backbone.block2", out="s.zarr").path
    assert open_store(out).masks[0] == str(data / "masks" / "scene_00000.png")
    (data / "masks" / "scene_00002.png").unlink()
    monkeypatch.chdir(data / "images")
    result = fit_seg_head(None, tmp_path / out, epochs=1)
    assert result.skipped == ["scene_00002.png"] and result.n_train + result.n_test == 5


def test_fit_seg_pooled_stores(shapes, tmp_path):
    data = save_dataset(tmp_path / "data", 6, seed=9, layout="segmentation")
    grid = extract_dataset(shapes, data, layers=["backbone.block2", "classifier.fc"],
                           pool="avg4", out=tmp_path / "grid.zarr").path
    result = fit_seg_head(None, grid, layers="backbone.block2", epochs=1)
    assert result.channels == [32] and any("avg4-pooled (4 x 4" in n for n in result.notes)
    with pytest.raises(ConfigError, match=r"layer 'classifier.fc' is stored as one vector per "
                                          r"image \(7,\)"):
        fit_seg_head(None, grid, epochs=1)
    flat = extract_dataset(shapes, data, layers="backbone.block2", pool="avg",
                           out=tmp_path / "avg.zarr").path
    with pytest.raises(ConfigError, match="pooled to one value per channel.*--pool none"):
        fit_seg_head(None, flat, epochs=1)


def test_fit_seg_refuses_a_store_without_masks(class_store):
    with pytest.raises(ConfigError, match="has no masks.*images/ and masks/"):
        fit_seg_head(None, class_store, epochs=1)


# ---------------------------------------------------------------------------- command line


def test_cli_probe_and_fit_seg_on_stores(class_store, pair_store, tmp_path, capsys):
    out = run_ok(["probe", str(class_store), "--out", str(tmp_path / "p.safetensors")], capsys)
    assert "linear probes of shapes" in out and "backbone.block4" in out and "1 skipped" in out
    out = run_ok(["probe", str(class_store), "-m", "shapes", "--layers", "backbone.block4",
                  "--out", str(tmp_path / "q.safetensors")], capsys)
    assert "backbone.block1" not in out
    line = run_error(["probe", str(class_store), "--weights", "random"], capsys)
    assert "the weights differ" in line
    line = run_error(["probe", str(class_store), "--layers", "backbone.block2"], capsys)
    assert "Did you mean 'backbone.block1'" in line or "Did you mean 'backbone.block4'" in line
    assert "no class labels" in run_error(["probe", str(pair_store)], capsys)
    out = run_ok(["fit-seg", str(pair_store), "--epochs", "1", "--out",
                  str(tmp_path / "h.safetensors")], capsys)
    assert "mIoU" in out and (tmp_path / "h.safetensors").exists()
    assert "has no masks" in run_error(["fit-seg", str(class_store)], capsys)
    line = run_error(["fit-seg", str(pair_store.parent / "data")], capsys)
    assert "--layers is required" in line

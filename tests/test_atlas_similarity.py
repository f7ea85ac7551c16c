"""Layer similarity (linear CKA by minibatches): a layer with itself is 1; invariant to orthogonal
transforms and isotropic scaling, not to other linear maps; the minibatch estimate is close to the
full-batch value; networks trained from two seeds have a diagonal that stands out; datasets and
stores give the same result as tensors; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import featuremap as fm
from featuremap.atlas import Similarity, plot_similarity, similarity
from featuremap.atlas.cka import cka, gram, minibatch_cka, unbiased_hsic
from featuremap.bundled.network import ShapesNet, normalize
from featuremap.bundled.scenes import make_dataset
from featuremap.errors import ConfigError, UnknownNameError

BLOCKS = [f"backbone.block{i}" for i in range(1, 5)]
SEEDNETS = Path(__file__).resolve().parent / "data" / "seednets.safetensors"


@pytest.fixture(scope="module")
def model():
    return fm.load_model("shapes")


@pytest.fixture(scope="module")
def scenes() -> torch.Tensor:
    """512 generated 32 x 32 scenes, normalised for the bundled model."""
    return normalize(torch.from_numpy(make_dataset(512, seed=3, size=32)[0]))


@pytest.fixture(scope="module")
def features(model, scenes) -> dict[str, torch.Tensor]:
    """The four blocks' maps of the scenes, flattened: ``(512, C*H*W)``."""
    maps = fm.extract(model, scenes, layers=BLOCKS)
    return {name: maps[name].flatten(1) for name in BLOCKS}


@pytest.fixture(scope="module")
def blocks(model, scenes) -> Similarity:
    return similarity(model, scenes, layers=BLOCKS, batch_size=128)


def test_a_layer_with_itself_is_one(blocks):
    assert blocks.matrix.shape == (4, 4) and blocks.rows == blocks.columns == BLOCKS
    np.testing.assert_allclose(np.diagonal(blocks.matrix), 1.0, atol=1e-12)
    np.testing.assert_allclose(blocks.matrix, blocks.matrix.T, atol=1e-12)
    assert (blocks.matrix[~np.eye(4, dtype=bool)] < 0.9).all()
    assert blocks.images == 512 and blocks.batches == 4


def test_invariant_to_orthogonal_maps_and_isotropic_scaling_not_to_other_linear_maps(
        features):
    g = torch.Generator().manual_seed(0)

    def rotation(d: int) -> torch.Tensor:
        return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]

    x = features["backbone.block3"][:, :256].double()
    y = features["backbone.block4"][:, :128].double()
    q = rotation(256)
    reference = cka(x, y)
    assert 0.2 < reference < 0.9
    assert cka(x @ q, y) == pytest.approx(reference, abs=1e-9)
    assert cka(x, y @ rotation(128)) == pytest.approx(reference, abs=1e-9)
    assert cka(7.5 * x, 0.01 * y) == pytest.approx(reference, abs=1e-9)
    assert cka(x @ q, x) == pytest.approx(1.0, abs=1e-9)
    # an invertible map that is neither: singular values from 0.1 to 10
    a = q @ torch.diag(torch.logspace(-1, 1, 256, dtype=torch.float64)) @ rotation(256)
    assert abs(cka(x @ a, y) - reference) > 0.05
    assert cka(x @ a, x) < 0.9


def test_minibatch_estimate_is_within_001_of_the_full_batch_value(blocks, features):
    """512 scenes fit in memory: the full-batch value is the unbiased HSIC on all of them at
    once; the minibatch estimate averages it over 4 minibatches of 128."""
    grams = torch.stack([gram(features[n]) for n in BLOCKS])
    hsic = unbiased_hsic(grams, grams)
    full = (hsic / torch.sqrt(torch.outer(torch.diagonal(hsic), torch.diagonal(hsic)))).numpy()
    assert np.abs(blocks.matrix - full).max() < 0.01
    # what similarity() streamed is exactly the minibatch estimator on the same features
    for a, b in ((0, 3), (1, 2)):
        assert blocks.matrix[a, b] == pytest.approx(
            minibatch_cka(features[BLOCKS[a]], features[BLOCKS[b]], batch_size=128), abs=1e-9)


def test_unbiased_and_biased_estimators_on_random_features():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 20, generator=g, dtype=torch.float64)
    y = torch.relu(x @ torch.randn(20, 40, generator=g, dtype=torch.float64)) + torch.randn(
        2000, 40, generator=g, dtype=torch.float64)
    full = cka(x, y)
    assert minibatch_cka(x, y, batch_size=100) == pytest.approx(full, abs=0.01)
    assert cka(x, y, unbiased=False) == pytest.approx(full, abs=0.02)  # large n: bias is small
    assert np.isnan(cka(x, torch.zeros(2000, 3)))


def _seed_nets() -> tuple[ShapesNet, ShapesNet]:
    from safetensors.torch import load_file

    weights = load_file(str(SEEDNETS))
    nets = []
    for seed in (0, 1):
        net = ShapesNet(widths=(8, 16, 32, 64))
        state = {k.split(".", 1)[1]: v.float() for k, v in weights.items()
                 if k.startswith(f"seed{seed}.")}
        missing, unexpected = net.load_state_dict(state, strict=False)
        assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
        nets.append(net.eval())
    return nets[0], nets[1]


def test_networks_trained_from_two_seeds_have_a_diagonal_that_stands_out():
    """Kornblith et al. 2019: the layers of one architecture trained from two initialisations
    correspond. Two small ShapesNets trained alike from seeds 0 and 1 (tests/data/seednets.py
    made them) compared on 256 held-out scenes: each layer is most like its counterpart. (At
    random initialisation this does not hold: those nets' layers are alike for other reasons.)"""
    first, second = _seed_nets()
    layers = [f"backbone.block{i}{part}" for i in range(1, 5) for part in (".relu1", "")]
    images = normalize(torch.from_numpy(make_dataset(256, seed=12, size=32)[0]))
    result = similarity(first, images, layers=layers, other=second, batch_size=64)
    m = result.matrix
    off = ~np.eye(len(layers), dtype=bool)
    diagonal, rest = np.diagonal(m).mean(), m[off].mean()
    assert diagonal > 2 * rest and diagonal - rest > 0.25, (diagonal, rest)
    for i in range(len(layers)):  # every diagonal value above its row's and column's average
        assert m[i, i] > np.delete(m[i], i).mean() and m[i, i] > np.delete(m[:, i], i).mean()
    assert result.other_name == "ShapesNet (other)" and result.columns == layers


def test_two_models_with_their_own_layers_and_pooling(model, scenes):
    torch.manual_seed(0)
    other = ShapesNet(widths=(8, 16, 32, 64))
    result = similarity(model, scenes[:64], layers="backbone.block1,backbone.block4",
                        other=other, other_layers=["backbone.block2.conv1"], batch_size=32,
                        pool="avg")
    assert result.matrix.shape == (2, 1) and result.columns == ["backbone.block2.conv1"]
    pooled = fm.extract(model, scenes[:64], layers="backbone.block1")["backbone.block1"]
    theirs = fm.extract(other, scenes[:64], layers="backbone.block2.conv1")[
        "backbone.block2.conv1"]
    assert result.matrix[0, 0] == pytest.approx(
        minibatch_cka(pooled.mean((2, 3)), theirs.mean((2, 3)), batch_size=32), abs=1e-9)
    assert "channels averaged over space" in str(result)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, model) -> Path:
    """24 scenes as PNG files in class folders, and a broken file, the last one."""
    from featuremap.bundled.scenes import save_dataset

    root = tmp_path_factory.mktemp("similarity") / "scenes"
    save_dataset(root, 24, seed=9, layout="classes")
    (root / "triangle" / "zz_broken.png").write_bytes(b"not a png")
    return root


def test_a_dataset_folder_gives_what_its_images_give(model, folder):
    from featuremap.images import load_image

    result = similarity(model, folder, layers=BLOCKS[:2], batch_size=8)
    collection = fm.open_collection(folder)
    readable = [item.path for item in collection if item.path.name != "zz_broken.png"]
    images = normalize(torch.from_numpy(np.stack([load_image(p) for p in readable])))
    direct = similarity(model, images, layers=BLOCKS[:2], batch_size=8)
    assert result.images == 24 and result.batches == 3
    assert list(result.skipped) == [str(folder / "triangle" / "zz_broken.png")]
    assert "1 file(s) could not be read" in " ".join(result.notes)
    np.testing.assert_allclose(result.matrix, direct.matrix, atol=1e-6)


def test_stores_give_what_the_models_give(model, folder, tmp_path):
    torch.manual_seed(0)
    other = fm.Model.wrap(ShapesNet(widths=(8, 16, 32, 64)), preprocess=model.preprocess,
                          name="small")
    fm.extract_dataset(model, folder, layers=BLOCKS[:2], out=tmp_path / "a.zarr", batch_size=8)
    fm.extract_dataset(other, folder, layers="backbone.block3", out=tmp_path / "b.zarr",
                       batch_size=8)
    stored = similarity(None, tmp_path / "a.zarr", other=tmp_path / "b.zarr", batch_size=8)
    run = similarity(model, folder, layers=BLOCKS[:2], other=other,
                     other_layers="backbone.block3", batch_size=8)
    assert stored.rows == BLOCKS[:2] and stored.columns == ["backbone.block3"]
    assert stored.other_name == "small" and stored.images == 24
    np.testing.assert_allclose(stored.matrix, run.matrix, atol=1e-6)
    alone = similarity(model, tmp_path / "a.zarr", batch_size=8)
    np.testing.assert_allclose(np.diagonal(alone.matrix), 1.0, atol=1e-12)
    with pytest.raises(ConfigError, match="the other side must be a store of the same images"):
        similarity(None, tmp_path / "a.zarr", other=model)


def test_text_dict_and_undefined_values():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with torch.no_grad():
        net[0].bias.fill_(-100.0)  # every ReLU output is 0: that layer never varies
    images = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    result = similarity(net, images, layers=["0", "1"], batch_size=4)
    assert np.isnan(result.matrix[1]).all() and result.matrix[0, 0] == pytest.approx(1.0)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["matrix"][1] == [None, None] and data["rows"] == ["0", "1"]
    text = str(result)
    assert text.splitlines()[0].startswith("linear CKA of Sequential: 8 images in 2 minibatches")
    assert "undefined (NaN)" in text and "nan" in text


def test_heatmap_has_names_values_and_a_colour_bar(blocks, tmp_path):
    from featuremap.plot import save_figure

    fig = plot_similarity(blocks)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == BLOCKS
    assert [t.get_text() for t in ax.get_xticklabels()] == BLOCKS
    assert len(ax.texts) == 16 and ax.texts[0].get_text() == "1.00"
    assert fig.axes[1].get_ylabel() == "linear CKA" and fig.axes[1].get_ylim() == (0.0, 1.0)
    assert save_figure(fig, tmp_path / "cka.png").stat().st_size > 5_000


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda m, x: similarity(m, x, layers=BLOCKS, batch_size=3), ConfigError,
     r"batch_size must be an integer >= 4 \(the unbiased HSIC"),
    (lambda m, x: similarity(m, x, layers="backbone.blok2"), UnknownNameError,
     "Did you mean 'backbone.block2'"),
    (lambda m, x: similarity(m, x, layers=BLOCKS, pool="max"), ConfigError,
     "pool must be one of none, avg"),
    (lambda m, x: similarity(None, x, layers=BLOCKS), ConfigError, "name a model"),
    (lambda m, x: similarity(m, x[:3], layers=BLOCKS), ConfigError,
     "no minibatch of at least 4 images"),
    (lambda m, x: similarity(m, x[0], layers=BLOCKS), ConfigError, r"must be \(N, C, H, W\)"),
    (lambda m, x: minibatch_cka(x[:8], x[:8], batch_size=2), ConfigError, "batch_size"),
    (lambda m, x: cka(x[:3], x[:3]), ConfigError, "at least 4 images"),
    (lambda m, x: cka(x[:8], x[:6]), ConfigError, "the same images"),
])
def test_bad_input_is_one_line(model, scenes, call, error, match):
    with pytest.raises(error, match=match) as info:
        call(model, scenes[:16])
    assert "\n" not in str(info.value)


def test_too_large_a_minibatch_is_refused_before_it_runs(model, scenes, monkeypatch):
    monkeypatch.setenv("FEATUREMAP_MEMORY_LIMIT", "1MB")
    with pytest.raises(ConfigError, match=r"minibatch of 64 images .* would take .*limit") as info:
        similarity(model, scenes[:64], layers=BLOCKS, batch_size=64)
    assert "\n" not in str(info.value)

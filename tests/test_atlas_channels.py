"""channel_atlas: each column against the library call it shares a pass with (top_patches,
dissect, visualize, the mean of extracted maps), a store against its dataset, refusals before
any pass, sorting, and the page: self-contained, names escaped, sortable and filterable in a
real browser."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch

from featuremap.atlas import ChannelAtlas, channel_atlas, dissect, top_patches, visualize
from featuremap.atlas.channels import GROUP
from featuremap.bundled.scenes import save_dataset
from featuremap.datasets import open_collection
from featuremap.errors import ConfigError, UnknownNameError
from featuremap.extraction import Extractor
from featuremap.store import extract_dataset

LAYER = "backbone.block3"
CHANNELS = [40, 3, 17, 0, 9]  # out of order: kept in this order


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return save_dataset(tmp_path_factory.mktemp("atlas") / "pairs", 14, seed=5,
                        layout="segmentation")


@pytest.fixture(scope="module")
def atlas(shapes, pairs) -> ChannelAtlas:
    stages: list[str] = []
    result = channel_atlas(shapes, pairs, layer=LAYER, channels=CHANNELS, k=4, steps=6,
                           batch_size=5, progress=lambda stage, d, t: stages.append(stage))
    result.stages = stages  # type: ignore[attr-defined]
    return result


def test_the_top_patches_are_those_of_top_patches(shapes, pairs, atlas):
    alone = top_patches(shapes, pairs, layer=LAYER, k=4, channels=CHANNELS, batch_size=5)
    assert atlas.channels == tuple(CHANNELS)
    np.testing.assert_array_equal(atlas.patches.values, alone.values)
    np.testing.assert_array_equal(atlas.patches.images, alone.images)
    np.testing.assert_array_equal(atlas.patches.positions, alone.positions)
    for mine, theirs in zip(atlas.patches.patches, alone.patches):
        assert [p.box for p in mine] == [p.box for p in theirs]
        for a, b in zip(mine, theirs):
            np.testing.assert_array_equal(a.crop, b.crop)


def test_the_concepts_are_those_of_dissect_on_the_same_channels(shapes, pairs, atlas):
    whole = dissect(shapes, pairs, layers=[LAYER], batch_size=5).layer(LAYER)
    mine = atlas.concepts
    assert mine.channels == tuple(CHANNELS)
    np.testing.assert_allclose(mine.thresholds, whole.thresholds[CHANNELS], rtol=1e-6)
    np.testing.assert_allclose(mine.iou, whole.iou[CHANNELS], atol=1e-6)
    assert [mine.category(i) for i in range(len(CHANNELS))] == [whole.category(c)
                                                               for c in CHANNELS]
    assert [r["channel"] for r in mine.to_dict()["channels"]] == CHANNELS


def test_the_mean_is_the_mean_of_the_extracted_maps(shapes, pairs, atlas):
    collection = open_collection(pairs)
    images = np.stack([shapes.preprocess.load(item.path) for item in collection])
    mean = torch.tensor(shapes.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(shapes.preprocess.std).view(1, 3, 1, 1)
    maps = Extractor(shapes, [LAYER]).run((torch.from_numpy(images) - mean) / std).maps[LAYER]
    expected = maps[:, CHANNELS].double().mean((0, 2, 3)).numpy()
    np.testing.assert_allclose(atlas.mean, expected, rtol=1e-6)
    assert atlas.n_images == len(collection)


def test_the_rendered_images_are_those_of_visualize_group_by_group(shapes, pairs):
    channels = list(range(GROUP + 2))
    got = channel_atlas(shapes, pairs, layer="backbone.block2", channels=channels, k=1,
                        steps=3, size=32, seed=4)
    first = visualize(shapes, layer="backbone.block2", channels=channels[:GROUP], size=32,
                      steps=3, seed=4)
    rest = visualize(shapes, layer="backbone.block2", channels=channels[GROUP:], size=32,
                     steps=3, seed=4)
    vis = got.visualization
    assert vis.channels == tuple(channels) and vis.images.shape == (GROUP + 2, 3, 32, 32)
    np.testing.assert_array_equal(vis.images, np.concatenate([first.images, rest.images]))
    np.testing.assert_array_equal(vis.activation,
                                  np.concatenate([first.activation, rest.activation]))


def test_progress_names_each_stage_in_order(atlas):
    stages = list(dict.fromkeys(atlas.stages))
    assert stages == ["maps", "patches", "visualisation"]
    assert set(atlas.seconds) == {"maps", "patches", "visualisation"}


def test_a_store_gives_the_atlas_of_its_dataset(shapes, pairs, atlas, tmp_path):
    store = extract_dataset(shapes, pairs, layers=[LAYER], out=tmp_path / "s.zarr",
                            batch_size=5).path
    got = channel_atlas(shapes, store, layer=LAYER, channels=CHANNELS, k=4, visualize=False)
    assert got.visualization is None
    np.testing.assert_array_equal(got.patches.values, atlas.patches.values)
    np.testing.assert_array_equal(got.patches.images, atlas.patches.images)
    np.testing.assert_allclose(got.concepts.iou, atlas.concepts.iou, atol=1e-6)
    np.testing.assert_allclose(got.mean, atlas.mean, rtol=1e-6)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"channels": [3, 512]}, ConfigError, "outside the"),
    ({"k": 0}, ConfigError, "k must be"),
    ({"quantile": 0.7}, ConfigError, "quantile"),
    ({"threshold": 2}, ConfigError, "threshold"),
    ({"steps": 0}, ConfigError, "steps"),
    ({"size": 4}, ConfigError, "size"),
    ({"layer": "backbone.blok3"}, UnknownNameError, "backbone.block3"),
    ({"layer": "classifier.fc"}, ConfigError, "feature maps"),
    ({"concepts": ["colur"]}, UnknownNameError, "colour"),
])
def test_bad_settings_are_refused_before_any_pass(shapes, pairs, kwargs, error, match):
    seen: list[str] = []
    settings = {"layer": LAYER, "channels": [0], **kwargs}
    with pytest.raises(error, match=match):
        channel_atlas(shapes, pairs, progress=lambda *a: seen.append(a[0]), **settings)
    assert seen == []


def test_rows_sort_by_every_column(atlas):
    assert [r["channel"] for r in atlas.rows()] == sorted(CHANNELS)
    for key in ("mean", "top", "iou", "rendered"):
        values = [r[key] for r in atlas.rows(sort=key)]
        assert values == sorted(values, reverse=True)
    ascending = [r["mean"] for r in atlas.rows(sort="mean", descending=False)]
    assert ascending == sorted(ascending)
    names = [r["concept"] for r in atlas.rows(sort="concept")]
    assert names == sorted(names)
    with pytest.raises(ConfigError, match="sort must be one of"):
        atlas.rows(sort="colour")
    row = atlas.row(17)
    assert row["channel"] == 17 and len(row["patches"]) == 4
    with pytest.raises(ConfigError, match="not in this atlas"):
        atlas.row(18)


def test_text_and_dict_say_the_same(atlas):
    text = str(atlas)
    info = atlas.to_dict()
    assert f"{len(CHANNELS)} channels" in text and f"{atlas.n_images} images" in text
    assert [r["channel"] for r in info["rows"]] == sorted(CHANNELS)
    for r in info["rows"]:
        line = next(x for x in text.splitlines() if re.match(rf"\s+{r['channel']}\s", x))
        assert f"{r['iou']:.3f}" in line and f"{r['mean']:.4g}" in line


def test_the_page_is_self_contained_and_shows_names_as_data(shapes, pairs, tmp_path):
    hostile = tmp_path / "hostile"
    shutil.copytree(pairs, hostile)
    first = sorted((hostile / "images").iterdir())[0]
    evil = '<img src=x onerror=alert(1)>"'
    first.rename(first.with_name(evil + first.name))
    mask = hostile / "masks" / first.with_suffix(".png").name
    mask.rename(mask.with_name(evil + mask.name))
    got = channel_atlas(shapes, hostile, layer=LAYER, channels=[0, 1], k=14, visualize=False)
    assert any(evil in p.name for row in got.patches.patches for p in row)
    page = got.save(tmp_path / "atlas")
    assert page.suffix == ".html"
    text = page.read_text()
    assert evil not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert not re.search(r"(src|href)=\"(?!data:)", text), "every image must be inline"
    assert "http://" not in text and "https://" not in text
    assert text.count('<tr data-channel="') == 2
    with pytest.raises(ConfigError, match="exists"):
        got.save(page)
    before = page.read_bytes()
    with pytest.raises(ConfigError, match="html"):
        got.save(tmp_path / "atlas.png")
    assert page.read_bytes() == before


def test_the_page_sorts_and_filters_in_a_browser(atlas, tmp_path):
    from webhelp import chromium

    page_file = atlas.save(tmp_path / "atlas.html")
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_file.as_uri())

        def column(key: str) -> list[float]:
            return [float(v) if key != "concept" else v for v in page.eval_on_selector_all(
                "#atlas tbody tr:not(.hidden)", f"rows => rows.map(r => r.dataset.{key})")]

        assert column("channel") == sorted(CHANNELS)
        page.click("th[data-key=iou]")
        assert column("iou") == sorted(column("iou"), reverse=True)
        assert "IoU, largest first" in page.inner_text("#sorted")
        page.click("th[data-key=iou]")
        assert column("iou") == sorted(column("iou"))
        page.click("th[data-key=mean]")
        assert column("mean") == sorted(column("mean"), reverse=True)
        page.click("th[data-key=rendered]")
        assert column("rendered") == sorted(column("rendered"), reverse=True)
        detectors = [r["channel"] for r in atlas.rows() if r["detector"]]
        page.check("#detectors")
        assert sorted(column("channel")) == sorted(detectors)
        assert page.inner_text("#shown") == str(len(detectors))
        page.uncheck("#detectors")
        concept = atlas.row(CHANNELS[0])["concept"]
        page.fill("#filter", concept)
        expected = [r["channel"] for r in atlas.rows() if concept in
                    f'{r["concept"]} {r["category"]}']
        assert sorted(column("channel")) == sorted(expected)
        loaded = page.eval_on_selector_all(
            "img", "imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
        assert loaded, "an inline image did not decode"
        page.screenshot(path=str(tmp_path / "atlas.png"), full_page=True)
        assert errors == []


def test_atlas_rows_figure(atlas, tmp_path):
    from PIL import Image

    from featuremap.plot import plot_atlas_rows, save_figure

    fig = plot_atlas_rows([atlas, atlas], channels=[17, 40])
    axes_with_images = [ax for ax in fig.axes if ax.images]
    assert len(axes_with_images) == 2 * (1 + 4)  # rendered + 4 patches per row
    path = save_figure(fig, tmp_path / "rows.png")
    width, height = Image.open(path).size
    assert width > 600 and 200 < height < width
    with pytest.raises(ConfigError, match="no atlas"):
        plot_atlas_rows([])
    with pytest.raises(ConfigError, match="not in this atlas"):
        plot_atlas_rows([atlas], channels=[18])

"""featuremap atlas: the page and the text are the library's channel_atlas for the same flags;
every bad flag is one error line before any work; nothing existing is overwritten."""

from __future__ import annotations

import re

import pytest

from clirun import run_error, run_ok
from featuremap.atlas import channel_atlas
from featuremap.atlas.channels import parse_channels
from featuremap.bundled.scenes import save_dataset
from featuremap.errors import ConfigError


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return save_dataset(tmp_path_factory.mktemp("cli-atlas") / "scenes", 16, seed=9,
                        layout="segmentation")


def test_atlas_writes_the_library_s_page(shapes, scenes, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = run_ok(["atlas", str(scenes), "--layer", "backbone.block3", "--channels", "5,0-2",
                  "--k", "3", "--steps", "4", "--sort", "iou", "--device", "cpu"], capsys)
    page = tmp_path / "featuremap-atlas.html"
    assert f"wrote {page.name}" in out
    expected = channel_atlas(shapes, scenes, layer="backbone.block3", channels=[5, 0, 1, 2],
                             k=3, steps=4)
    table = out.split("\n", 1)[1]
    for row in expected.rows():
        line = next(x for x in table.splitlines() if re.match(rf"\s+{row['channel']}\s", x))
        assert f"{row['mean']:.4g}" in line and f"{row['iou']:.3f}" in line
        assert f"{row['rendered']:.4g}" in line
    text = page.read_text()
    assert 'data-sort="iou"' in text
    assert text.count('<tr data-channel="') == 4
    for row in expected.rows():
        assert f'data-channel="{row["channel"]}" data-mean="{row["mean"]!r}"' in text
    run_ok(["atlas", str(scenes), "--layer", "backbone.block3", "--channels", "1", "--k", "1",
            "--no-visualize"], capsys)
    assert (tmp_path / "featuremap-atlas-1.html").is_file()  # the first page kept


@pytest.mark.parametrize("flags, match", [
    (["--channels", "3-1"], "runs backwards"),
    (["--channels", "3,x"], "'x' is not a channel number"),
    (["--channels", "999"], "outside the 64 channels"),
    (["--layer", "backbone.blok3"], "Did you mean 'backbone.block3'"),
    (["--k", "0"], "k must be"),
    (["--steps", "0"], "steps"),
    (["--quantile", "0.9"], "quantile"),
    (["--sort", "colour"], "--sort must be one of"),
    (["--no-visualize", "--sort", "rendered"], "needs the rendered images"),
    (["--concepts", "masks,texture"], "Unknown concept set"),
    (["--out", "atlas.png"], "html"),
])
def test_bad_flags_are_one_line(scenes, flags, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["atlas", str(scenes), "--layer", "backbone.block3", "--channels", "0", *flags]
    if flags[0] == "--layer":
        argv = ["atlas", str(scenes), "--channels", "0", *flags]
    assert re.search(match, run_error(argv, capsys))
    assert not list(tmp_path.iterdir())


def test_an_existing_page_is_kept(scenes, tmp_path, capsys):
    page = tmp_path / "a.html"
    page.write_text("mine")
    line = run_error(["atlas", str(scenes), "--layer", "backbone.block3", "--out", str(page)],
                     capsys)
    assert "--overwrite" in line and page.read_text() == "mine"
    missing = run_error(["atlas", str(tmp_path / "nowhere"), "--layer", "backbone.block3"],
                        capsys)
    assert "does not exist" in missing


def test_parse_channels():
    assert parse_channels("0-3, 9,2") == [0, 1, 2, 3, 9]
    assert parse_channels("all") is None
    for bad in ("", "a", "3-", "-3", "5-2", "1.5", "0-5000000"):
        with pytest.raises(ConfigError):
            parse_channels(bad)

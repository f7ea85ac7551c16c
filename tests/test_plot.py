from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from featuremap.errors import ConfigError
from featuremap.plot import Panel, Scale, plot_comparison, plot_image, plot_maps, save_figure


def test_scale_is_diverging_for_signed_and_sequential_otherwise():
    s = Scale.of(np.array([-2.0, 1.0]))
    assert (s.cmap, s.vmin, s.vmax) == ("RdBu_r", -2.0, 2.0)
    s = Scale.of(np.array([0.5, 3.0]))
    assert (s.cmap, s.vmin, s.vmax) == ("viridis", 0.5, 3.0)
    assert Scale.of(np.zeros(3)).vmax > Scale.of(np.zeros(3)).vmin


def test_grid_labels_and_png(tmp_path, rng):
    maps = rng.standard_normal((5, 20, 30)).astype(np.float32)
    fig = plot_maps(maps, names=list("abcde"), title="t")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == list("abcde")
    assert "5 feature maps of 20 x 30" in fig._suptitle.get_text()
    assert len(fig.axes) >= 6  # the cells and the colour bar
    path = save_figure(fig, tmp_path / "grid.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_grid_per_map_scale_writes_ranges(rng):
    maps = np.stack([np.zeros((8, 8)), np.ones((8, 8)) * 3]).astype(np.float32)
    fig = plot_maps(maps, shared_scale=False)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "[0, 0]" in texts and "[3, 3]" in texts


def test_grid_bad_input():
    with pytest.raises(ConfigError, match=r"maps must be \(D, H, W\)"):
        plot_maps(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ConfigError, match="2 names given for 3 maps"):
        plot_maps(np.zeros((3, 4, 4)), names=["a", "b"])


def test_comparison_draws_every_panel_at_one_scale(rng):
    big = rng.random((4, 32, 32)).astype(np.float32)
    small = big[:, ::2, ::2]
    fig = plot_comparison([Panel("stride 1", big), Panel("stride 2", small)], title="stride")
    a, b = fig.axes[:2]
    assert a.get_xlim() == b.get_xlim()
    assert a.get_xlabel() == "4 x 32 x 32" and b.get_xlabel() == "4 x 16 x 16"
    assert len(a.images) == 4 and len(b.images) == 4
    with pytest.raises(ConfigError):
        plot_comparison([])


def test_save_figure_refuses_missing_folder(tmp_path, rng):
    fig = plot_image(rng.random((3, 10, 10)))
    with pytest.raises(ConfigError, match="does not exist"):
        save_figure(fig, tmp_path / "missing" / "x.png")
    with pytest.raises(ConfigError, match="is a folder"):
        save_figure(fig, tmp_path)

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
    fig = plot_maps(maps, names=list("abcde"), title="t", shared_scale=True)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:5] == list("abcde")
    assert "5 feature maps of 20 x 30" in fig._suptitle.get_text()
    assert "(shared colour scale)" in fig._suptitle.get_text()
    assert len(fig.axes) >= 6  # the cells and the colour bar
    assert hasattr(fig.axes[-1], "_colorbar")
    path = save_figure(fig, tmp_path / "grid.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_grid_per_map_scale_writes_ranges(rng):
    maps = np.stack([np.zeros((8, 8)), np.ones((8, 8)) * 3]).astype(np.float32)
    fig = plot_maps(maps, shared_scale=False)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "[0, 0]" in texts and "[3, 3]" in texts


def test_grid_default_is_per_map_as_the_command_line():
    # `featuremap conv` draws each map on its own range unless --shared-scale; so does the library
    maps = np.stack([np.zeros((8, 8)), np.ones((8, 8)) * 3]).astype(np.float32)
    fig = plot_maps(maps)
    assert "(each map on its own scale)" in fig._suptitle.get_text()
    assert "[3, 3]" in [t.get_text() for ax in fig.axes for t in ax.texts]
    assert not any(hasattr(ax, "_colorbar") for ax in fig.axes)
    for ax, m in zip(fig.axes, maps):
        scale = Scale.of(m)
        assert ax.images[0].get_clim() == (scale.vmin, scale.vmax)
    assert fig.axes[0].images[0].get_clim() != fig.axes[1].images[0].get_clim()


def test_grid_bad_input():
    with pytest.raises(ConfigError, match=r"maps must be \(D, H, W\)"):
        plot_maps(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ConfigError, match="2 names given for 3 maps"):
        plot_maps(np.zeros((3, 4, 4)), names=["a", "b"])
    with pytest.raises(ConfigError, match=r"got an array of shape \(2, 3, 4, 5, 6\)"):
        plot_maps(np.zeros((2, 3, 4, 5, 6)))
    with pytest.raises(ConfigError, match=r"got an array of shape \(0, 4, 4\)"):
        plot_maps(np.zeros((0, 4, 4)))
    with pytest.raises(ConfigError, match="must be an array of numbers"):
        plot_maps([["a", "b"], ["c", "d"]])


def _pixels(fig, tmp_path, name):
    with Image.open(save_figure(fig, tmp_path / name)) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("shared_scale", [False, True])
def test_grid_takes_what_extract_returns(tmp_path, rng, shared_scale):
    torch = pytest.importorskip("torch")
    maps = rng.standard_normal((5, 12, 14)).astype(np.float32)
    tensor = torch.from_numpy(maps)[None].clone().requires_grad_(True)  # (1, C, H, W)
    figs = [plot_maps(m, names=list("abcde"), shared_scale=shared_scale)
            for m in (maps, tensor, tensor[0], maps[None])]
    drawn = [_pixels(fig, tmp_path, f"{k}.png") for k, fig in enumerate(figs)]
    for other in drawn[1:]:
        np.testing.assert_array_equal(drawn[0], other)
    for fig in figs:
        np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), maps[2])
    half = plot_maps(torch.from_numpy(maps).to(torch.bfloat16))  # numpy has no bfloat16
    assert "5 feature maps of 12 x 14" in half._suptitle.get_text()


def test_grid_of_one_map(rng):
    torch = pytest.importorskip("torch")
    one = rng.standard_normal((6, 7)).astype(np.float32)
    for m in (one, torch.from_numpy(one)):
        fig = plot_maps(m, names=["only"])
        assert "1 feature maps of 6 x 7" in fig._suptitle.get_text()
        np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), one)


def test_grid_refuses_a_batch_with_the_fix():
    torch = pytest.importorskip("torch")
    for batch in (np.zeros((2, 3, 4, 4), np.float32), torch.zeros(2, 3, 4, 4)):
        with pytest.raises(ConfigError) as err:
            plot_maps(batch)
        message = str(err.value)
        assert "got a batch of shape (2, 3, 4, 4)" in message
        assert "index one image, e.g. maps[0]" in message and "\n" not in message


def test_grid_moves_a_tensor_off_its_device(rng):
    # a stand-in for a GPU tensor: numpy() works only after detach() and cpu()
    maps = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    calls = []

    class OnDevice:
        shape = maps.shape

        def __init__(self, where):
            self.where = where

        def detach(self):
            calls.append("detach")
            return self

        def float(self):
            return self

        def cpu(self):
            calls.append("cpu")
            return OnDevice("cpu")

        def numpy(self):
            assert self.where == "cpu", "can't convert a device tensor to numpy"
            return maps

    fig = plot_maps(OnDevice("cuda:0"))
    assert calls == ["detach", "cpu"]
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), maps[0, 1])


def test_grid_takes_a_tensor_on_the_gpu(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    maps = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
    fig = plot_maps(torch.from_numpy(maps).cuda().requires_grad_(True))
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), maps[0, 1])


def test_comparison_takes_tensors(rng):
    torch = pytest.importorskip("torch")
    big = rng.random((4, 16, 16)).astype(np.float32)
    fig = plot_comparison([Panel("numpy", big), Panel("tensor", torch.from_numpy(big)[None])])
    a, b = fig.axes[:2]
    assert a.get_xlabel() == b.get_xlabel() == "4 x 16 x 16"
    with pytest.raises(ConfigError, match="got a batch of shape"):
        plot_comparison([Panel("batch", np.stack([big, big]))])


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


def test_comparison_names_maps_where_the_tiles_are_big_enough(rng):
    big = rng.random((4, 64, 64)).astype(np.float32)
    names = ("sobel_x", "sobel_y", "laplacian", "gaussian")
    fig = plot_comparison([Panel("stride 1", big, names), Panel("stride 8", big[:, ::8, ::8],
                                                               names)])
    a, b = fig.axes[:2]
    assert [t.get_text() for t in a.texts] == list(names)
    assert not b.texts  # 8 x 8 tiles: too small to carry a name


def test_save_figure_refuses_missing_folder(tmp_path, rng):
    fig = plot_image(rng.random((3, 10, 10)))
    with pytest.raises(ConfigError, match="does not exist"):
        save_figure(fig, tmp_path / "missing" / "x.png")
    with pytest.raises(ConfigError, match="is a folder"):
        save_figure(fig, tmp_path)


# ------------------------------------------------------------------- maps of real networks
@pytest.fixture
def fm():
    import torch
    from torch import nn

    from featuremap.extraction import extract

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 10, 3, stride=2),
                        nn.ReLU(), nn.Flatten())
    return extract(net, ["sample:chelsea"], layers=["0", "1", "3"])


def test_select_channels(rng):
    from featuremap.plot import select_channels

    maps = np.stack([np.full((2, 2), v, np.float32) for v in (0.1, 0.9, 0.5)])
    assert select_channels(maps, top=2) == [1, 2]
    assert select_channels(maps) == [0, 1, 2]
    assert select_channels(maps, channels=[2, 0]) == [2, 0]
    with pytest.raises(ConfigError, match="channel 7 is out of range"):
        select_channels(maps, channels=[7])


def test_plot_layer_top_k_titles(fm):
    from featuremap.plot import plot_layer

    fig = plot_layer(fm, "3", top=4, note="weights: random init")
    title = fig._suptitle.get_text()
    assert "top 4 of 10 by mean activation" in title and "stride 2" in title
    assert "random init" in title
    assert sum(1 for ax in fig.axes if ax.get_title().startswith("ch ")) == 4


def test_plot_overview_one_row_per_layer(fm):
    from featuremap.plot import plot_overview

    fig = plot_overview(fm, per_layer=3)
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert [label.split("\n")[0] for label in labels] == ["0", "1", "3"]
    assert "10 x 111 x 111" in labels[-1]


def test_overlay_and_filters(fm, tmp_path):
    from featuremap.plot import plot_filters, plot_overlay, upsample

    heat = fm.numpy()["3"][0].mean(0)
    assert upsample(heat, (224, 224)).shape == (224, 224)
    fig = plot_overlay(fm.images[0], heat, title="t", label="mean")
    assert fig.axes[-1].get_ylabel() == "mean"
    save_figure(fig, tmp_path / "o.png")
    with pytest.raises(ConfigError, match="alpha"):
        plot_overlay(fm.images[0], heat, alpha=2)
    fig = plot_filters(np.random.default_rng(0).standard_normal((8, 3, 3, 3)), title="conv")
    assert "8 filters 3x3 (RGB" in fig._suptitle.get_text()
    fig = plot_filters(np.zeros((70, 4, 3, 3)))
    assert "64 of 70" in fig._suptitle.get_text()


def test_featuremaps_show_and_notebook_png(fm):
    assert fm.show("0", top=2)._suptitle.get_text().startswith("Sequential 0")
    png = fm._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_layer_without_maps_is_refused():
    import torch
    from torch import nn

    from featuremap.extraction import extract
    from featuremap.plot import plot_layer

    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())
    fm = extract(net, torch.randn(1, 3, 8, 8), layers=["1"])
    with pytest.raises(ConfigError, match="not feature maps"):
        plot_layer(fm, "1")


def _explanation(channels: int, seed: int = 0):
    from featuremap.conv import explain

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((channels, 9, 9)).astype(np.float32)
    w = rng.standard_normal((2, channels, 3, 3)).astype(np.float32)
    return explain(x, w, np.array([0.5, -0.25], np.float32), at=(1, 0, 4), padding=1)


def test_explanation_figure_rows_numbers_and_title():
    from featuremap.plot import plot_explanation

    e = _explanation(2)
    fig = plot_explanation(e)
    grids = [ax for ax in fig.axes if ax.images]
    assert len(grids) == 2 * 3  # patch, kernel, products per input channel
    titles = [ax.get_title() for ax in grids if ax.get_title()]
    assert [t.split(" (")[0] for t in titles] == ["input patch", "kernel", "products"]
    labels = [ax.get_ylabel() for ax in grids if ax.get_ylabel()]
    assert labels[0].startswith("channel 0\nsum ") and labels[1].startswith("channel 1")
    factor = 1 / float(titles[2].split("unit ")[1].rstrip(")")) if "unit" in titles[2] else 1.0
    products = [t for ax in grids for t in ax.texts if ax.get_title() == titles[2]]
    first = np.array([float(t.get_text()) for t in products[:9]]).reshape(3, 3) / factor
    # the numbers as drawn: two significant digits, or one decimal once scaled
    np.testing.assert_allclose(first, e.products[0], rtol=0.06, atol=0.06 / factor)
    assert all(len(t.get_text()) <= 5 for t in products)  # they fit their cells
    assert f"= {e.value:.5g}" in fig._suptitle.get_text() and "hatched: padding" in \
        fig._suptitle.get_text()


def test_explanation_figure_many_channels_shows_top_contributors_and_bars():
    from featuremap.plot import plot_explanation

    e = _explanation(12, seed=3)
    fig = plot_explanation(e, max_channels=4)
    sums = e.contributions()
    top = np.argsort(-np.abs(sums), kind="stable")[:4]
    labels = [ax.get_ylabel() for ax in fig.axes if ax.images and ax.get_ylabel()]
    assert [int(label.split("\n")[0].split()[1]) for label in labels] == [int(k) for k in top]
    bars = next(ax for ax in fig.axes if ax.patches and not ax.images)
    heights = [p.get_height() for p in bars.patches]
    np.testing.assert_allclose(heights, sums[np.argsort(-np.abs(sums), kind="stable")],
                               rtol=1e-6)
    assert "(4 drawn " in fig._suptitle.get_text() and "+ the other 8 " in fig._suptitle.get_text()


def test_receptive_fields_side_by_side_share_a_normalised_scale(rng):
    from featuremap.plot import plot_receptive_fields

    image = rng.random((3, 40, 60))
    erfs = [rng.random((40, 60)) * scale for scale in (1.0, 50.0)]
    fig = plot_receptive_fields(image, [("a", (0, 0, 3, 3), erfs[0]),
                                        ("b", (5, 5, 30, 40), erfs[1])], title="growth")
    panels = [ax for ax in fig.axes if len(ax.images) == 2]
    assert [ax.get_title() for ax in panels] == ["a", "b"]
    for ax in panels:  # each effective field divided by its own maximum: 0..1
        heat = ax.images[1].get_array()
        assert heat.max() == pytest.approx(1.0) and ax.images[1].get_clim() == (0.0, 1.0)
    box = panels[1].patches[0]
    assert (box.get_width(), box.get_height()) == (35, 25)
    with pytest.raises(ConfigError, match="at least one panel"):
        plot_receptive_fields(image, [])


def test_a_small_receptive_field_gets_a_magnified_inset(rng):
    from featuremap.plot import plot_receptive_fields

    image, erf = rng.random((3, 64, 64)), rng.random((64, 64))
    fig = plot_receptive_fields(image, [("small", (30, 30, 33, 33), erf),
                                        ("large", (10, 10, 40, 40), erf)])
    small, large = [ax for ax in fig.axes if ax.get_title() in ("small", "large")]
    assert len(small.child_axes) == 1 and not large.child_axes
    inset = small.child_axes[0]
    assert inset.get_xlim()[1] - inset.get_xlim()[0] < 20  # about 5 box sides, not the image


def test_overview_row_labels_carry_extra_lines():
    import torch

    from featuremap.extraction import extract
    from featuremap.plot import plot_overview

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3, stride=2))
    fm = extract(net, torch.rand(1, 3, 16, 16), layers=["0", "1"])
    fig = plot_overview(fm, per_layer=2, labels={"1": "field 5 px"})
    texts = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert texts[-1].endswith("field 5 px") and not texts[0].endswith("px")


# ------------------------------------------------------------------------ text is data
HOSTILE = "$x^2$ [bold] \x1b[31m $\\frac{$ a\u202eb"
SHOWN = "$x^2$ [bold] \\x1b[31m $\\frac{$ a\\u202eb"  # literal; controls written as escapes


def _all_texts(fig):
    from featuremap.plot.figure import figure_texts

    return list(figure_texts(fig))


def _check_literal(fig, tmp_path):
    """Every text is drawn literally, no text holds a control character (line breaks apart),
    and the figure renders and saves (a mathtext parse of '$\\frac{$' would raise)."""
    for text in _all_texts(fig):
        assert not text.get_parse_math() and not text.get_usetex()
        assert not any(ord(c) < 32 and c != "\n" for c in text.get_text())
    save_figure(fig, tmp_path / "hostile.png")


def test_hostile_title_and_names_are_shown_literally(tmp_path, rng):
    fig = plot_maps(rng.random((3, 8, 8)), names=["$x^2$", "[bold]", "a\x1b[31m\nb"],
                    title=HOSTILE)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["$x^2$", "[bold]", "a\\x1b[31m\\nb"]
    assert fig._suptitle.get_text().startswith(SHOWN)
    _check_literal(fig, tmp_path)
    fig = plot_image(rng.random((3, 8, 8)), title=HOSTILE)
    assert fig.axes[0].get_title().startswith(SHOWN)
    _check_literal(fig, tmp_path)


def test_every_figure_shows_hostile_strings_literally(tmp_path, rng):
    from featuremap.plot import (
        plot_explanation,
        plot_filters,
        plot_overlay,
        plot_receptive_field,
        plot_receptive_fields,
        plot_segmentation,
    )

    image = rng.random((3, 16, 16))
    labels = np.arange(256).reshape(16, 16) % 3
    e = _explanation(2)
    e = type(e)(**{**e.__dict__, "map_name": HOSTILE, "channel_names": ("$r$", "\x1b[0m")})
    figures = [
        plot_comparison([Panel(HOSTILE, rng.random((2, 40, 40)), ("$a$", "\x1b"))], title=HOSTILE),
        plot_overlay(image, rng.random((4, 4)), title=HOSTILE, label=HOSTILE),
        plot_filters(rng.random((4, 3, 3, 3)), title=HOSTILE),
        plot_segmentation((image, labels, ["$a$", "[b]", "\x1b[31mc"]), title=HOSTILE),
        plot_receptive_field(image, (2, 2, 6, 6), rng.random((16, 16)), title=HOSTILE),
        plot_receptive_fields(image, [(HOSTILE + "\nline two", (2, 2, 6, 6),
                                       rng.random((16, 16)))], title=HOSTILE),
        plot_explanation(e, title=HOSTILE),
    ]
    for fig in figures:
        texts = "\n".join(t.get_text() for t in _all_texts(fig))
        assert SHOWN in texts
        _check_literal(fig, tmp_path)
    legend = [t.get_text() for t in figures[3].legends[0].get_texts()]
    assert any(t.startswith("$a$") for t in legend) and any("\\x1b[31mc" in t for t in legend)
    assert "line two" in figures[5].axes[0].get_title().split("\n")[1]  # line breaks kept


def test_hostile_layer_and_model_names(tmp_path):
    import torch

    from featuremap.extraction import extract
    from featuremap.plot import plot_layer, plot_overview

    net = torch.nn.Sequential()
    net.add_module("$x$\x1b[31m", torch.nn.Conv2d(3, 4, 3))
    # (asked by a regex: layers.py reads a name holding '[' or '$' as a pattern)
    fm = extract(net, torch.rand(1, 3, 16, 16), layers=["re:x"])
    fig = plot_layer(fm, "$x$\x1b[31m", top=2)
    assert "$x$\\x1b[31m" in fig._suptitle.get_text()
    _check_literal(fig, tmp_path)
    fig = plot_overview(fm, per_layer=2, labels={"$x$\x1b[31m": "[field]\n"})
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()][0].startswith(
        "$x$\\x1b[31m\n")
    _check_literal(fig, tmp_path)


def test_figures_stay_literal_where_usetex_is_set(rng):
    import matplotlib

    with matplotlib.rc_context({"text.usetex": True}):
        fig = plot_maps(rng.random((2, 4, 4)), names=["a_b", "50%"], title="#1 & $x$")
    assert all(not t.get_usetex() for t in _all_texts(fig))


def test_plain_text():
    from featuremap.plot import plain_text

    assert plain_text("a\nb\x1b") == "a\\nb\\x1b"
    assert plain_text("a\nb\x1b", lines=True) == "a\nb\\x1b"
    assert plain_text("$x$ [b] 猫") == "$x$ [b] 猫"


# ----------------------------------------------------------------------------- save_figure
def test_save_figure_adds_png_and_returns_the_real_name(tmp_path, rng):
    fig = plot_image(rng.random((3, 10, 10)))
    assert save_figure(fig, tmp_path / "maps") == tmp_path / "maps.png"
    with Image.open(tmp_path / "maps.png") as im:
        assert im.format == "PNG"
    with pytest.raises(ConfigError, match=r"maps\.png' exists"):
        save_figure(fig, tmp_path / "maps", overwrite=False)


@pytest.mark.parametrize("name, magic", [("f.svg", b"<?xml"), ("f.pdf", b"%PDF"),
                                         ("f.jpg", b"\xff\xd8\xff"), ("f.JPEG", b"\xff\xd8\xff"),
                                         ("f.webp", b"RIFF")])
def test_save_figure_formats(tmp_path, rng, name, magic):
    path = save_figure(plot_image(rng.random((3, 10, 10))), tmp_path / name)
    assert path.read_bytes().startswith(magic)


def test_save_figure_refuses_before_drawing(tmp_path, rng, monkeypatch):
    fig = plot_image(rng.random((3, 10, 10)))
    monkeypatch.setattr(fig, "savefig", lambda *a, **k: pytest.fail("drew before refusing"))
    with pytest.raises(ConfigError, match=r"unsupported suffix '\.txt'; use one of \.png, "
                                          r"\.svg, \.pdf, \.jpg, \.jpeg, \.webp"):
        save_figure(fig, tmp_path / "maps.txt")
    with pytest.raises(ConfigError, match="character device"):
        save_figure(fig, "/dev/null")
    with pytest.raises(ConfigError, match="does not exist"):
        save_figure(fig, tmp_path / "missing" / "maps")


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupted_save_leaves_the_old_file(tmp_path, rng, monkeypatch, error):
    fig = plot_image(rng.random((3, 10, 10)))
    (tmp_path / "maps.png").write_bytes(b"old")

    def half_drawn(f, **kwargs):
        f.write(b"\x89PNG half")
        raise error

    monkeypatch.setattr(fig, "savefig", half_drawn)
    with pytest.raises(error):
        save_figure(fig, tmp_path / "maps.png")
    assert [p.name for p in tmp_path.iterdir()] == ["maps.png"]
    assert (tmp_path / "maps.png").read_bytes() == b"old"

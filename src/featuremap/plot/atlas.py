"""Pictures of the channel atlas: top-activating patches and the dissection of a network.

Both take the results of :mod:`featuremap.atlas` as they are (read through their attributes),
so this module imports nothing above the plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from featuremap.errors import ConfigError
from featuremap.plot.figure import literal_plot, new_figure, plain_text, wrap_title

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["CATEGORY_COLOURS", "plot_atlas_rows", "plot_dissection", "plot_top_patches"]

CATEGORY_COLOURS = {"colour": "#e39b2d", "shape": "#3b6fd4", "class": "#4aa564",
                    "none": "#c8c8c8"}
NAME_CHARS = 22  # characters of an image name under a patch (the end of the name kept)
SIDE_BY_SIDE = 5  # plot_dissection: up to this many layers, its two panels side by side
SLANT_LAYERS = 10  # and beyond this many, layer names slanted


def _short(name: str) -> str:
    name = plain_text(name)
    return name if len(name) <= NAME_CHARS else "..." + name[-(NAME_CHARS - 3):]


@literal_plot
def plot_top_patches(result: Any, channels: Sequence[int] | None = None, *,
                     max_channels: int = 16, inches: float = 1.25) -> Figure:
    """A grid of top-activating patches: one row per channel, its patches best first, each
    labelled with its value and image; where a receptive field lies outside the image, the
    patch is grey and hatched.

    Args:
        result: a :class:`~featuremap.atlas.TopPatches`.
        channels: the channels to draw (default: the first ``max_channels`` kept).
        max_channels: rows drawn when ``channels`` is None.
        inches: the side of one patch.

    Raises:
        ConfigError: a channel the result does not hold, nothing to draw.
    """
    chosen = list(result.channels[:max_channels] if channels is None else channels)
    rows = [result.channel(c) for c in chosen]  # ConfigError for a channel not kept
    cols = max((len(r) for r in rows), default=0)
    if not rows or not cols:
        raise ConfigError("no patches to draw: the result holds no channel.")
    fig = new_figure(inches * cols + 0.9, (inches + 0.42) * len(rows) + 0.9)
    grid = fig.add_gridspec(len(rows), cols, left=0.9 / (inches * cols + 0.9), right=0.99,
                            top=1 - 0.75 / fig.get_figheight(), bottom=0.02, hspace=0.55,
                            wspace=0.08)
    for i, (channel, patches) in enumerate(zip(chosen, rows)):
        for j in range(cols):
            ax = fig.add_subplot(grid[i, j])
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"channel {channel}", fontsize=8)
            if j >= len(patches):
                ax.set_axis_off()
                continue
            _patch_axes(ax, patches[j])
    size = "x".join(dict.fromkeys(str(s) for s in result.field_size))
    title = (f"top {cols} patches per channel of {result.model} {result.layer} (field {size} "
             f"px, stride {result.stride[0]:g}) over {result.n_images:,} images; value and "
             "image under each; hatched grey: field outside the image")
    fig.suptitle(wrap_title(title, fig, 9), fontsize=9)
    return fig


def _patch_axes(ax: Any, patch: Any) -> None:
    crop = np.asarray(patch.crop, np.float32)
    rgb = np.repeat(crop, 3, 0) if crop.shape[0] == 1 else crop
    ax.imshow(np.clip(np.moveaxis(rgb, 0, -1), 0, 1), interpolation="nearest")
    if patch.clipped.any():
        h, w = patch.clipped.shape
        ax.contourf(np.arange(w), np.arange(h), patch.clipped.astype(np.float32),
                    levels=[0.5, 1.5], colors="none", hatches=["////"])
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
    ax.set_title(f"{patch.value:.3g}\n{_short(patch.name)}", fontsize=6.5, pad=2)


@literal_plot
def plot_dissection(result: Any, *, inches: float = 1.1) -> Figure:
    """What the channels of each layer detect, from low to high layers (a
    :class:`~featuremap.atlas.Dissection`): left, stacked shares of channels that detect a
    colour, a shape, a class, or nothing; right, the median over channels of the best IoU in
    each category, with the detector threshold. With more than five layers the two panels are
    one above the other, and with more than ten the layer names are slanted."""
    layers = [d.layer for d in result.layers]
    if not layers:
        raise ConfigError("no layer to draw: the dissection holds none.")
    n = len(layers)
    slanted = n > SLANT_LAYERS  # many layers: narrower columns, names slanted
    width = max(2.4, (min(inches, 0.6) if slanted else inches) * n)
    if n > SIDE_BY_SIDE:  # one panel above the other, each as wide as the layers need
        fig = new_figure(width + 1.4, 9.6 if slanted else 8.8, layout="constrained")
        shares_ax, iou_ax = fig.subplots(2, 1)
    else:
        fig = new_figure(2 * width + 2.6, 4.8, layout="constrained")
        shares_ax, iou_ax = fig.subplots(1, 2)
    x = np.arange(n)
    # below each panel when side by side; right of it when stacked (clear of slanted names)
    legend = dict(fontsize=7.5, frameon=False, **(
        {"loc": "upper left", "bbox_to_anchor": (1.01, 1), "ncol": 1} if n > SIDE_BY_SIDE
        else {"loc": "upper center", "bbox_to_anchor": (0.5, -0.2), "ncol": 4}))
    between = " " if slanted else "\n"  # a slanted name keeps its channels on its line
    labels = [f"{plain_text(name)}{between}({d.n_channels} ch)"
              for name, d in zip(layers, result.layers)]
    bottom = np.zeros(len(layers))
    for key, shares in result.curve.items():
        values = np.asarray(shares) * 100
        shares_ax.bar(x, values, 0.65, bottom=bottom, color=CATEGORY_COLOURS.get(key, "#888"),
                      label=key if key == "none" else f"{key} detectors", edgecolor="white")
        for xi, (b, v) in enumerate(zip(bottom, values)):
            if v >= 6:
                shares_ax.text(xi, b + v / 2, f"{v:.0f}%", ha="center", va="center",
                               fontsize=7.5)
        bottom += values
    shares_ax.set_ylim(0, 100)
    shares_ax.set_ylabel("share of channels (%)", fontsize=8.5)
    shares_ax.set_title("what each channel detects (IoU >= "
                        f"{result.threshold:g})", fontsize=9)
    shares_ax.legend(**legend)
    for key, values in result.iou_curve.items():
        iou_ax.plot(x, values, "o-", color=CATEGORY_COLOURS.get(key, "#888"), label=key)
    iou_ax.axhline(result.threshold, color="#555555", lw=1, ls="--",
                   label=f"threshold {result.threshold:g}")
    iou_ax.set_ylim(bottom=0)
    iou_ax.set_ylabel("median over channels of the best IoU", fontsize=8.5)
    iou_ax.set_title("how close channels come to each kind of concept", fontsize=9)
    iou_ax.legend(**legend)
    for ax in (shares_ax, iou_ax):
        ax.set_xticks(x, labels, fontsize=7.5, rotation=40 if slanted else 0,
                      ha="right" if slanted else "center", rotation_mode="anchor")
        ax.set_xlim(-0.5, n - 0.5)  # the same columns in both panels
        for label in ax.get_xticklabels():
            label.set_parse_math(False)
        ax.set_xlabel("layer, low to high", fontsize=8.5)
        ax.tick_params(axis="y", labelsize=7.5)
    fig.suptitle(wrap_title(f"dissection of {result.model} on {result.n_images:,} images: top "
                            f"{result.quantile:.1%} of each channel against "
                            f"{len(result.concepts)} concepts", fig, 10), fontsize=10)
    return fig


@literal_plot
def plot_atlas_rows(atlases: Sequence[Any], channels: Sequence[int] | None = None, *,
                    inches: float = 1.05) -> Figure:
    """One atlas row per :class:`~featuremap.atlas.ChannelAtlas` (a layer each, low to high):
    the channel's rendered image, then its top patches best first (hatched grey: field
    outside the image), labelled on the left with the layer, channel, concept and IoU.

    Args:
        atlases: the atlases, one row each.
        channels: the channel of each row (default: each atlas's first channel).
        inches: the side of one patch.

    Raises:
        ConfigError: no atlas, or a channel an atlas does not hold.
    """
    if not atlases:
        raise ConfigError("no atlas to draw.")
    chosen = [a.channels[0] for a in atlases] if channels is None else list(channels)
    rows = [a.row(c) for a, c in zip(atlases, chosen)]  # ConfigError for a channel not held
    k = max(len(r["patches"]) for r in rows)
    cols = 1 + k
    label_in = 1.9
    fig = new_figure(label_in + inches * cols + 0.3, (inches + 0.45) * len(rows) + 0.75)
    grid = fig.add_gridspec(len(rows), cols, left=label_in / fig.get_figwidth(), right=0.99,
                            top=1 - 0.7 / fig.get_figheight(), bottom=0.02, hspace=0.6,
                            wspace=0.1)
    for i, (atlas, channel, row) in enumerate(zip(atlases, chosen, rows)):
        index = atlas.channels.index(channel)
        patches = atlas.patches.patches[index]
        vis = atlas.visualization
        ax = fig.add_subplot(grid[i, 0])
        ax.set_xticks([])
        ax.set_yticks([])
        if vis is not None:
            ax.imshow(np.clip(np.moveaxis(vis.images[index], 0, -1), 0, 1))
            ax.set_title(f"rendered\nmean {row['rendered']:.3g}", fontsize=6.5, pad=2)
        else:
            ax.set_axis_off()
        concept = (f"{row['concept']} ({row['category']})" if row["detector"] else
                   f"none (best: {row['concept']})")
        ax.text(-0.12, 0.5, f"{plain_text(atlas.layer)}\nchannel {channel}\n"
                f"{plain_text(concept)}\nIoU {row['iou']:.3f}\nmean {row['mean']:.3g}",
                transform=ax.transAxes, ha="right", va="center", fontsize=7.5)
        for j in range(k):
            ax = fig.add_subplot(grid[i, 1 + j])
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(patches):
                ax.set_axis_off()
                continue
            _patch_axes(ax, patches[j])
    models = ", ".join(dict.fromkeys(str(a.model) for a in atlases))
    fig.suptitle(wrap_title(f"{models}: one channel per layer, low to high: the image rendered "
                            "to drive it, then its top patches (value and image under each)",
                            fig, 9.5), fontsize=9.5)
    return fig

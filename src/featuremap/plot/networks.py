"""The maps of real networks: one layer's channels, every layer from low to high, a heatmap over
its image, and a convolution's filters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from featuremap.errors import ConfigError
from featuremap.plot.figure import literal_plot, new_figure, plain_text, wrap_title
from featuremap.plot.maps import plot_maps
from featuremap.plot.scale import DIVERGING, SEQUENTIAL, Scale

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_filters", "plot_layer", "plot_overlay", "plot_overview", "select_channels",
           "upsample"]


def _layer_maps(fm, name: str, image: int) -> np.ndarray:
    t = fm[name]
    if t.dim() != 4:
        raise ConfigError(f"layer '{name}' has output shape {tuple(t.shape)}, not feature maps "
                          "(N, C, H, W); pick a convolutional layer.")
    if not 0 <= image < t.shape[0]:
        raise ConfigError(f"image {image} is out of range: the maps hold {t.shape[0]} image(s).")
    return t[image].float().cpu().numpy()


def select_channels(maps: np.ndarray, *, top: int | None = None,
                    channels: Sequence[int] | None = None) -> list[int]:
    """Channel indices to show: the chosen ones, the ``top`` by mean activation, or all."""
    if channels is not None:
        bad = [c for c in channels if not 0 <= c < maps.shape[0]]
        if bad:
            raise ConfigError(f"channel {bad[0]} is out of range: the layer has {maps.shape[0]} "
                              f"channels (0..{maps.shape[0] - 1}).")
        return list(channels)
    if top is None or top >= maps.shape[0]:
        return list(range(maps.shape[0]))
    if top < 1:
        raise ConfigError(f"top must be at least 1, got {top}.")
    return [int(i) for i in np.argsort(-maps.reshape(maps.shape[0], -1).mean(1))[:top]]


@literal_plot
def plot_layer(fm, layer: str, *, image: int = 0, top: int | None = 16,
               channels: Sequence[int] | None = None, shared_scale: bool = False,
               note: str = "") -> Figure:
    """A channel grid of one layer of a :class:`~featuremap.extraction.FeatureMaps`.

    Args:
        fm: the extracted maps.
        layer: which layer.
        image: which image of the batch.
        top: show the ``top`` channels by mean activation (None: all channels).
        channels: show exactly these channels instead.
        shared_scale: one colour scale for all channels.
        note: added to the title, e.g. which weights the model had.
    """
    maps = _layer_maps(fm, layer, image)
    chosen = select_channels(maps, top=top, channels=channels)
    names = [f"ch {c}" for c in chosen]
    meta = fm.meta[layer]
    how = ("chosen channels" if channels is not None else
           f"top {len(chosen)} of {maps.shape[0]} by mean activation"
           if len(chosen) < maps.shape[0] else f"all {maps.shape[0]} channels")
    stride = f", stride {meta.stride[0]:g}" if meta.stride else ""
    title = (f"{plain_text(fm.model_name)} {plain_text(layer)} ({plain_text(meta.type)}{stride}),"
             f" {how}").strip()
    if note:
        title += f", {note}"
    return plot_maps(maps[chosen], names=names, title=title, shared_scale=shared_scale)


@literal_plot
def plot_overview(fm, *, image: int = 0, per_layer: int = 8, cell_inches: float = 1.25,
                  note: str = "", labels: dict[str, str] | None = None) -> Figure:
    """One row per layer, low to high: the input, then each layer's strongest channels.

    Each map is drawn at the same display size, stretched to its own range; the row label gives
    the layer's shape and stride (and ``labels[layer]``, e.g. its receptive field), so the
    shrinking maps, the growing depth and the growing region behind each value are visible.
    """
    layers = [n for n in fm if fm[n].dim() == 4 and getattr(fm.meta.get(n), "is_map", True)]
    if not layers:
        raise ConfigError("none of the extracted layers has feature maps (N, C, H, W).")
    has_input = fm.images is not None
    cols = per_layer + (1 if has_input else 0)
    fig = new_figure(cols * cell_inches + 1.6, len(layers) * (cell_inches + 0.22) + 0.5,
                     layout="constrained")
    grid = fig.add_gridspec(len(layers), cols)
    for r, name in enumerate(layers):
        maps = _layer_maps(fm, name, image)
        chosen = select_channels(maps, top=per_layer)
        meta = fm.meta[name]
        row_label = "\n".join([plain_text(name), " x ".join(map(str, maps.shape))]
                              + ([f"stride {meta.stride[0]:g}"] if meta.stride else [])
                              + ([plain_text(labels[name])] if labels and labels.get(name)
                                 else []))
        if has_input:
            ax = fig.add_subplot(grid[r, 0])
            ax.imshow(np.clip(np.moveaxis(fm.images[image], 0, -1), 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_ylabel(row_label, fontsize=7.5, rotation=0, ha="right", va="center")
        for k, c in enumerate(chosen):
            ax = fig.add_subplot(grid[r, k + (1 if has_input else 0)])
            s = Scale.of(maps[c])
            ax.imshow(maps[c], cmap=s.cmap, vmin=s.vmin, vmax=s.vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"ch {c}", fontsize=6.5, pad=1)
            if k == 0 and not has_input:
                ax.set_ylabel(row_label, fontsize=7.5, rotation=0, ha="right", va="center")
    extra = f"; {note}" if note else ""
    fig.suptitle(wrap_title(f"{plain_text(fm.model_name)}: feature maps from low to high layers "
                            f"(strongest {per_layer} channels per layer, each on its own "
                            f"scale{extra})".strip(), fig), fontsize=10)
    return fig


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map to ``(H, W)`` (Pillow, float precision)."""
    from PIL import Image

    h = np.asarray(heat, np.float32)
    if h.shape == tuple(size):
        return h
    return np.asarray(Image.fromarray(h, mode="F").resize((size[1], size[0]),
                                                          Image.Resampling.BILINEAR))


@literal_plot
def plot_overlay(image: np.ndarray, heat: np.ndarray, *, title: str = "", alpha: float = 0.5,
                 label: str = "activation", inches: float = 4.5) -> Figure:
    """A heatmap over the image it came from: ``image`` ``(3, H, W)`` in [0, 1], ``heat`` 2-D.

    The heatmap is upsampled to the image (bilinear) and drawn with a colour bar in its own
    units.
    """
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}.")
    rgb = np.clip(np.moveaxis(np.asarray(image, np.float32), 0, -1), 0, 1)
    heat_up = upsample(heat, rgb.shape[:2])
    fig = new_figure(inches + 0.9, inches * rgb.shape[0] / rgb.shape[1] + 0.5, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(rgb)
    s = Scale.of(heat_up)
    cmap = "inferno" if s.cmap == SEQUENTIAL else s.cmap
    shown = ax.imshow(heat_up, cmap=cmap, vmin=s.vmin, vmax=s.vmax, alpha=alpha)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return fig


@literal_plot
def plot_filters(weight: np.ndarray, *, title: str = "", max_filters: int = 64) -> Figure:
    """The filters (weights) of a convolution ``(D, C, kH, kW)``.

    3-channel filters are drawn in colour (each stretched symmetrically around zero, so mid-grey
    is 0); others as the mean over input channels on a diverging scale.
    """
    w = np.asarray(weight, np.float32)
    if w.ndim != 4:
        raise ConfigError(f"weight must be (D, C, kH, kW), got shape {w.shape}.")
    d = min(w.shape[0], max_filters)
    cols = max(1, min(d, math.ceil(math.sqrt(d))))
    rows = math.ceil(d / cols)
    fig = new_figure(cols * 0.8 + 0.8, rows * 0.8 + 0.7, layout="constrained")
    colour = w.shape[1] == 3
    for i in range(d):
        ax = fig.add_subplot(rows, cols, i + 1)
        if colour:
            f = np.moveaxis(w[i], 0, -1)
            ax.imshow(0.5 + 0.5 * f / (np.abs(f).max() or 1.0), interpolation="nearest")
        else:
            f = w[i].mean(0)
            m = float(np.abs(f).max()) or 1.0
            ax.imshow(f, cmap=DIVERGING, vmin=-m, vmax=m, interpolation="nearest")
        ax.set_axis_off()
    how = "RGB, grey = 0" if colour else "mean over input channels, blue < 0 < red"
    shown = f"{d} of {w.shape[0]}" if d < w.shape[0] else f"{d}"
    fig.suptitle(f"{title} {shown} filters {w.shape[2]}x{w.shape[3]} ({how})".strip(),
                 fontsize=9)
    return fig

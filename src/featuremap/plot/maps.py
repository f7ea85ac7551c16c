"""Feature maps as pictures: a labelled channel grid, comparison strips at one pixel scale, and
the input image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from featuremap.errors import ConfigError
from featuremap.plot.figure import literal_plot, new_figure, plain_text, wrap_title
from featuremap.plot.scale import Scale

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from torch import Tensor

__all__ = ["Panel", "plot_comparison", "plot_image", "plot_maps"]


def _check_maps(maps: np.ndarray | Tensor) -> np.ndarray:
    """One image's maps as float32 ``(D, H, W)``, from NumPy or torch (any device, with or
    without grad), given as ``(H, W)``, ``(D, H, W)`` or ``(1, D, H, W)``."""
    shape = tuple(getattr(maps, "shape", np.shape(maps)))
    if hasattr(maps, "detach"):  # a torch tensor: torch itself is not imported here
        maps = maps.detach().float().cpu().numpy()
    try:
        a = np.asarray(maps, dtype=np.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"maps must be an array of numbers, got {type(maps).__name__}.") from None
    if a.ndim == 4 and a.shape[0] != 1:
        raise ConfigError(
            f"maps must be (D, H, W) for one image, got a batch of shape {shape}: index one "
            "image, e.g. maps[0] (what extract returns is (N, C, H, W))."
        )
    a = a[0] if a.ndim == 4 else a[None] if a.ndim == 2 else a
    if a.ndim != 3 or 0 in a.shape:
        raise ConfigError(
            f"maps must be (D, H, W), (H, W) or (1, D, H, W), got an array of shape {shape}."
        )
    return a


@literal_plot
def plot_maps(
    maps: np.ndarray | Tensor,
    *,
    names: Sequence[str] | None = None,
    title: str | None = None,
    shared_scale: bool = False,
    columns: int | None = None,
    cell_inches: float = 1.9,
) -> Figure:
    """A labelled grid of feature maps, one cell per map, with its colour scale.

    Args:
        maps: one image's feature maps (one per filter / channel): ``(D, H, W)``, ``(H, W)``
            or ``(1, D, H, W)``, a NumPy array or a torch tensor (any device, with or without
            grad), so ``extract(...)["layer"]`` of one image can be passed as it is.
        names: a label per map (e.g. filter names); defaults to ``map 0``, ``map 1``, ...
        title: the figure title; the maps' shape is always added.
        shared_scale: one colour scale (and colour bar) for all maps, so values compare across
            maps. By default (as ``featuremap conv``) each map is stretched to its own range,
            written under it.
        columns: cells per row (default: about square).
        cell_inches: size of one cell.

    Returns:
        A matplotlib ``Figure``.

    Raises:
        ConfigError: a batch of several images ``(N, D, H, W)`` (index one: ``maps[0]``), any
            other shape, a name count that is not the map count.

    Example:
        >>> fig = plot_maps(np.random.rand(4, 32, 32), names=list("abcd"))
        >>> fig = plot_maps(np.random.rand(4, 32, 32), shared_scale=True)  # one colour bar
    """
    a = _check_maps(maps)
    d, h, w = a.shape
    labels = [plain_text(n) for n in names] if names is not None else [f"map {i}"
                                                                        for i in range(d)]
    if len(labels) != d:
        raise ConfigError(f"{len(labels)} names given for {d} maps.")
    cols = columns or max(1, min(d, math.ceil(math.sqrt(d * 1.5))))
    rows = math.ceil(d / cols)
    label_room = 0.28 if shared_scale else 0.42
    fig = new_figure(cols * cell_inches + (0.8 if shared_scale else 0.1),
                     rows * (cell_inches * h / w + label_room) + 0.45, layout="constrained")
    grid = fig.add_gridspec(rows, cols + (1 if shared_scale else 0),
                            width_ratios=[1] * cols + ([0.07] if shared_scale else []))
    scale = Scale.of(a) if shared_scale else None
    image = None
    for i in range(rows * cols):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ax.set_axis_off()
        if i >= d:
            continue
        s = scale or Scale.of(a[i])
        image = ax.imshow(a[i], cmap=s.cmap, vmin=s.vmin, vmax=s.vmax, interpolation="nearest")
        ax.set_title(labels[i], fontsize=8, pad=2)
        if scale is None:
            ax.text(0.5, -0.03, f"[{a[i].min():.3g}, {a[i].max():.3g}]", fontsize=7,
                    ha="center", va="top", transform=ax.transAxes)
    if shared_scale and image is not None:
        bar = fig.colorbar(image, cax=fig.add_subplot(grid[:, -1]))
        bar.ax.tick_params(labelsize=7)
    scale_text = "shared colour scale" if shared_scale else "each map on its own scale"
    head = f"{title}: " if title else ""
    fig.suptitle(wrap_title(f"{head}{d} feature maps of {h} x {w} ({scale_text})", fig),
                 fontsize=10)
    return fig


@dataclass(frozen=True)
class Panel:
    """One setting in a comparison strip: a label, its maps ``(D, H, W)`` (or anything
    :func:`plot_maps` takes) and their names."""

    label: str
    maps: np.ndarray | Tensor
    names: tuple[str, ...] = ()


def _tile_layout(d: int, h: int, w: int, gap: int) -> tuple[int, list[tuple[int, int]]]:
    """Columns of a square-ish tiling of d maps, and each map's top-left corner."""
    columns = max(1, math.ceil(math.sqrt(d)))
    return columns, [((i // columns) * (h + gap), (i % columns) * (w + gap)) for i in range(d)]


@literal_plot
def plot_comparison(
    panels: Sequence[Panel],
    *,
    title: str = "",
    normalise: str = "per-map",
    inches: float = 3.2,
    max_maps: int = 16,
) -> Figure:
    """The same filters under different settings side by side, drawn at one pixel scale.

    Each panel tiles its maps (up to ``max_maps``) and is drawn at the same pixels-per-inch as
    the others, so a stride-2 map really looks half as wide; the output shape is written under
    each panel.

    Args:
        panels: the settings to compare.
        title: the figure title.
        normalise: ``'per-map'`` (each map on its own scale: diverging around zero for signed
            maps, sequential otherwise) or ``'shared'`` (one scale for every map).
        inches: width of the largest panel.
        max_maps: maps shown per panel.

    Returns:
        A matplotlib ``Figure``.
    """
    if not panels:
        raise ConfigError("plot_comparison needs at least one panel.")
    if normalise not in ("per-map", "shared"):
        raise ConfigError(f"normalise must be 'per-map' or 'shared', got '{normalise}'.")
    arrays = [_check_maps(p.maps) for p in panels]
    shown = [a[:max_maps] for a in arrays]
    shared = None if normalise == "per-map" else Scale.of(
        np.concatenate([a.ravel() for a in shown]))
    gap = max(2, max(a.shape[2] for a in shown) // 40)
    extents = []
    for a in shown:
        cols, corners = _tile_layout(*a.shape, gap)
        rows = math.ceil(a.shape[0] / cols)
        extents.append((rows * (a.shape[1] + gap) - gap, cols * (a.shape[2] + gap) - gap))
    big_h, big_w = max(e[0] for e in extents), max(e[1] for e in extents)
    fig = new_figure(inches * len(panels), inches * big_h / big_w + 0.75, layout="constrained")
    for k, (panel, a, full) in enumerate(zip(panels, shown, arrays)):
        ax = fig.add_subplot(1, len(panels), k + 1)
        _, corners = _tile_layout(*a.shape, gap)
        tile_inches = inches * a.shape[2] / big_w
        for i, (m, (y, x)) in enumerate(zip(a, corners)):
            s = shared or Scale.of(m)
            ax.imshow(m, cmap=s.cmap, vmin=s.vmin, vmax=s.vmax, interpolation="nearest",
                      extent=(x, x + m.shape[1], y + m.shape[0], y))
            if i < len(panel.names) and tile_inches >= 0.35:  # name the map in its corner
                name = plain_text(panel.names[i])
                size = min(7.0, max(4.0, tile_inches * 72 / (0.62 * len(name) + 1)))
                ax.text(x + 0.02 * m.shape[1], y + 0.02 * m.shape[0], name, fontsize=size,
                        va="top", ha="left", bbox=dict(boxstyle="square,pad=0.15", fc="white",
                                                        alpha=0.75, lw=0))
        ax.set_xlim(0, big_w)
        ax.set_ylim(big_h, 0)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        more = f" (first {a.shape[0]} shown)" if full.shape[0] > a.shape[0] else ""
        ax.set_title(panel.label, fontsize=9)
        ax.set_xlabel(" x ".join(map(str, full.shape)) + more, fontsize=9)
    note = ("each map on its own scale" if shared is None
            else f"shared scale [{shared.vmin:.3g}, {shared.vmax:.3g}]")
    fig.suptitle(f"{title} (all panels at the same pixel scale; {note})".strip(), fontsize=10)
    return fig


@literal_plot
def plot_image(image: np.ndarray, *, title: str = "", inches: float = 4.0) -> Figure:
    """Show an image given as ``(C, H, W)`` or ``(H, W)`` floats in [0, 1]."""
    a = np.asarray(image, dtype=np.float32)
    hwc = a[0] if a.ndim == 3 and a.shape[0] == 1 else (np.moveaxis(a, 0, -1) if a.ndim == 3
                                                        else a)
    fig = new_figure(inches, inches * hwc.shape[0] / hwc.shape[1] + 0.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.clip(hwc, 0, 1), cmap="gray" if hwc.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(f"{title} ({hwc.shape[0]} x {hwc.shape[1]})".strip(), fontsize=9)
    return fig

"""Pictures of feature maps: channel grids and comparison strips, as matplotlib figures.

matplotlib is imported inside the functions, so ``import featuremap`` stays light. Figures are
built with the object-oriented API (no pyplot state): they display inline in notebooks and are
written to PNG with :func:`save_figure`.

Colour scales are honest: maps with negative values get a diverging scale centred on zero
(blue negative, red positive); non-negative maps get a sequential scale from their minimum to
their maximum. Every figure states the scale it used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featuremap.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["Panel", "plot_comparison", "plot_image", "plot_maps", "save_figure"]

DIVERGING, SEQUENTIAL = "RdBu_r", "viridis"


@dataclass(frozen=True)
class Scale:
    """A colour scale: colormap name and limits."""

    cmap: str
    vmin: float
    vmax: float

    @classmethod
    def of(cls, values: np.ndarray) -> Scale:
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if lo < 0:
            m = max(abs(lo), abs(hi)) or 1.0
            return cls(DIVERGING, -m, m)
        return cls(SEQUENTIAL, lo, hi if hi > lo else lo + 1.0)


def _check_maps(maps: np.ndarray) -> np.ndarray:
    a = np.asarray(maps, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or 0 in a.shape:
        raise ConfigError(f"maps must be (D, H, W), got an array of shape {np.shape(maps)}.")
    return a


def plot_maps(
    maps: np.ndarray,
    *,
    names: Sequence[str] | None = None,
    title: str | None = None,
    shared_scale: bool = True,
    columns: int | None = None,
    cell_inches: float = 1.9,
) -> Figure:
    """A labelled grid of feature maps, one cell per map, with its colour scale.

    Args:
        maps: ``(D, H, W)`` feature maps (one per filter / channel).
        names: a label per map (e.g. filter names); defaults to ``map 0``, ``map 1``, ...
        title: the figure title; the maps' shape is always added.
        shared_scale: one colour scale (and colour bar) for all maps, so values compare across
            maps; otherwise each map is stretched to its own range, written under it.
        columns: cells per row (default: about square).
        cell_inches: size of one cell.

    Returns:
        A matplotlib ``Figure``.

    Example:
        >>> fig = plot_maps(np.random.rand(4, 32, 32), names=list("abcd"))
    """
    a = _check_maps(maps)
    d, h, w = a.shape
    labels = list(names) if names is not None else [f"map {i}" for i in range(d)]
    if len(labels) != d:
        raise ConfigError(f"{len(labels)} names given for {d} maps.")
    cols = columns or max(1, min(d, math.ceil(math.sqrt(d * 1.5))))
    rows = math.ceil(d / cols)
    label_room = 0.28 if shared_scale else 0.42
    fig = _figure(cols * cell_inches + (0.8 if shared_scale else 0.1),
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
    fig.suptitle(f"{head}{d} feature maps of {h} x {w} ({scale_text})", fontsize=10)
    return fig


@dataclass(frozen=True)
class Panel:
    """One setting in a comparison strip: a label, its maps ``(D, H, W)`` and their names."""

    label: str
    maps: np.ndarray
    names: tuple[str, ...] = ()


def _tile_layout(d: int, h: int, w: int, gap: int) -> tuple[int, list[tuple[int, int]]]:
    """Columns of a square-ish tiling of d maps, and each map's top-left corner."""
    columns = max(1, math.ceil(math.sqrt(d)))
    return columns, [((i // columns) * (h + gap), (i % columns) * (w + gap)) for i in range(d)]


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
    fig = _figure(inches * len(panels), inches * big_h / big_w + 0.75, layout="constrained")
    for k, (panel, a, full) in enumerate(zip(panels, shown, arrays)):
        ax = fig.add_subplot(1, len(panels), k + 1)
        _, corners = _tile_layout(*a.shape, gap)
        for m, (y, x) in zip(a, corners):
            s = shared or Scale.of(m)
            ax.imshow(m, cmap=s.cmap, vmin=s.vmin, vmax=s.vmax, interpolation="nearest",
                      extent=(x, x + m.shape[1], y + m.shape[0], y))
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


def plot_image(image: np.ndarray, *, title: str = "", inches: float = 4.0) -> Figure:
    """Show an image given as ``(C, H, W)`` or ``(H, W)`` floats in [0, 1]."""
    a = np.asarray(image, dtype=np.float32)
    hwc = a[0] if a.ndim == 3 and a.shape[0] == 1 else (np.moveaxis(a, 0, -1) if a.ndim == 3
                                                        else a)
    fig = _figure(inches, inches * hwc.shape[0] / hwc.shape[1] + 0.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.clip(hwc, 0, 1), cmap="gray" if hwc.ndim == 2 else None, vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(f"{title} ({hwc.shape[0]} x {hwc.shape[1]})".strip(), fontsize=9)
    return fig


def _figure(width: float, height: float, layout: str | None = None) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout=layout)


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110) -> Path:
    """Write ``fig`` as PNG to ``path`` (its folder must exist); return the path.

    Raises:
        ConfigError: the folder does not exist, or the path is a folder.
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"--out '{p}' is a folder; give a file name such as '{p / 'maps.png'}'.")
    if not p.parent.exists():
        raise ConfigError(
            f"cannot write '{p}': the folder '{p.parent}' does not exist. Create it first or "
            "choose another path."
        )
    fig.savefig(p, dpi=dpi, bbox_inches="tight", facecolor="white")
    return p

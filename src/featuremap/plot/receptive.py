"""Receptive fields over the image: the analytic field as a rectangle, the effective one
(gradient magnitude) as a heatmap, magnified in a corner when it is a speck."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from featuremap.errors import ConfigError
from featuremap.plot.figure import literal_plot, new_figure, wrap_title

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_receptive_field", "plot_receptive_fields"]


@literal_plot
def plot_receptive_field(image: np.ndarray, box: tuple[int, int, int, int], erf: np.ndarray, *,
                         title: str = "", inches: float = 4.5) -> Figure:
    """The analytic receptive field (a rectangle) and the effective one (gradient magnitude as a
    heatmap) of one value, over the image ``(3, H, W)`` in [0, 1]."""
    rgb = np.clip(np.moveaxis(np.asarray(image, np.float32), 0, -1), 0, 1)
    fig = new_figure(inches + 0.9, inches * rgb.shape[0] / rgb.shape[1] + 0.6, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    shown = _rf_axes(ax, rgb, box, erf, title)
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    bar.set_label("|d value / d input| (effective field)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return fig


def _rf_axes(ax, rgb: np.ndarray, box: tuple[int, int, int, int], erf: np.ndarray, title: str,
             vmax: float | None = None):
    from matplotlib.patches import Rectangle

    ax.imshow(rgb.mean(-1), cmap="gray", vmin=0, vmax=1)
    shown = ax.imshow(np.asarray(erf, np.float32), cmap="inferno", alpha=0.6, vmin=0, vmax=vmax)
    y0, x0, y1, x1 = box
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.8,
                           edgecolor="#00d0ff", label=f"analytic field {y1 - y0} x {x1 - x0}"))
    ax.set_xlim(-0.5, rgb.shape[1] - 0.5)
    ax.set_ylim(rgb.shape[0] - 0.5, -0.5)
    ax.legend(loc="lower right", fontsize=7, framealpha=0.8)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    if max(y1 - y0, x1 - x0) * 16 < min(rgb.shape[:2]):  # a speck: magnify it in a corner
        _rf_zoom(ax, rgb, box, erf, vmax)
    return shown


def _rf_zoom(ax, rgb: np.ndarray, box: tuple[int, int, int, int], erf: np.ndarray,
             vmax: float | None) -> None:
    """An inset, top left, magnifying the region around a small box (5 box sides wide)."""
    from matplotlib.patches import Rectangle

    y0, x0, y1, x1 = box
    half = max(y1 - y0, x1 - x0) * 5 // 2 + 1
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    inset = ax.inset_axes([0.02, 0.55, 0.43, 0.43])
    inset.imshow(rgb.mean(-1), cmap="gray", vmin=0, vmax=1)
    inset.imshow(np.asarray(erf, np.float32), cmap="inferno", alpha=0.6, vmin=0, vmax=vmax)
    inset.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.5,
                              edgecolor="#00d0ff"))
    inset.set_xlim(cx - half - 0.5, cx + half + 0.5)
    inset.set_ylim(cy + half + 0.5, cy - half - 0.5)
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor("#00d0ff")
    ax.indicate_inset_zoom(inset, edgecolor="#00d0ff", alpha=0.8)


@literal_plot
def plot_receptive_fields(image: np.ndarray, panels: Sequence[tuple[str, tuple, np.ndarray]], *,
                          title: str = "", inches: float = 3.2) -> Figure:
    """Several receptive fields side by side over one image: ``panels`` holds ``(label, box,
    effective field)`` each, e.g. one value of an early, a middle and a late layer.

    Each effective field is divided by its own maximum (the colour bar reads 0 to 1), so the
    growth of the region is seen rather than the size of the gradients.
    """
    rgb = np.clip(np.moveaxis(np.asarray(image, np.float32), 0, -1), 0, 1)
    n = len(panels)
    if n == 0:
        raise ConfigError("plot_receptive_fields needs at least one panel.")
    fig = new_figure(inches * n + 0.8, inches * rgb.shape[0] / rgb.shape[1] + 0.9,
                     layout="constrained")
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    for ax, (label, box, erf) in zip(axes, panels):
        e = np.asarray(erf, np.float32)
        shown = _rf_axes(ax, rgb, box, e / (float(e.max()) or 1.0), label, vmax=1.0)
    bar = fig.colorbar(shown, ax=axes, fraction=0.03, pad=0.02)
    bar.set_label("|d value / d input|, each panel / its maximum", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(wrap_title(title, fig, 10), fontsize=10)
    return fig

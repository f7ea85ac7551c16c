"""One value explained: patch x kernel = products, one row per input channel, with every
channel's contribution when there are many."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from featuremap.plot.figure import literal_plot, new_figure, plain_text, wrap_title
from featuremap.plot.scale import DIVERGING, SEQUENTIAL, Scale

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_explanation"]


def _grid_cell(ax, values: np.ndarray, scale: Scale, padded: np.ndarray | None,
               texts: list[list[str]] | None, fontsize: float) -> object:
    """One small heatmap of an explanation, ``texts`` (when given) written in its cells."""
    from matplotlib.patches import Rectangle

    shown = ax.imshow(values, cmap=scale.cmap, vmin=scale.vmin, vmax=scale.vmax,
                      interpolation="nearest")
    kh, kw = values.shape
    if padded is not None:
        for r, c in zip(*np.nonzero(padded)):
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, hatch="///",
                                   edgecolor="#888888", lw=0))
    if texts:
        span = (scale.vmax - scale.vmin) or 1.0
        for r in range(kh):
            for c in range(kw):
                level = (float(values[r, c]) - scale.vmin) / span
                dark = level > 0.75 or level < 0.25 if scale.cmap == DIVERGING else level < 0.5
                ax.text(c, r, texts[r][c], ha="center", va="center", fontsize=fontsize,
                        color="white" if dark else "black")
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def _cell_texts(values: np.ndarray, factor: float) -> list[list[str]]:
    """Numbers for the cells, times ``factor``: two significant digits, or at most one
    decimal once scaled (never '-0')."""
    if factor == 1.0:
        return [[f"{float(v) + 0.0:.2g}" for v in row] for row in values]
    out = []
    for row in values:
        cells = []
        for v in row:
            x = round(float(v) * factor, 1) + 0.0
            cells.append(f"{x:.0f}" if abs(x) >= 9.95 or x == int(x) else f"{x:.1f}")
        out.append(cells)
    return out


def _column_factor(values: np.ndarray) -> float:
    """1 when every number fits in five characters at two significant digits, else the power
    of ten that brings the largest magnitude into [10, 100)."""
    if max(len(f"{float(v) + 0.0:.2g}") for v in values.ravel()) <= 5:
        return 1.0
    top = float(np.abs(values).max()) or 1.0
    return 10.0 ** (1 - math.floor(math.log10(top)))


def _unit(factor: float) -> str:
    """' (unit 0.01)': the cell numbers and the colour bar count in this unit."""
    if factor == 1.0:
        return ""
    return f" (unit {1 / factor:g})"


@literal_plot
def plot_explanation(e, *, max_channels: int = 8, title: str = "") -> Figure:
    """Patch x kernel = products of one value, one row per input channel (see
    :func:`featuremap.conv.explain` and :func:`featuremap.explain`).

    With more than ``max_channels`` input channels, the channels that contribute most come first
    and a bar chart shows every channel's contribution. Each column (patch, kernel, products)
    shares one colour scale across rows, drawn under it; padding cells are hatched.
    """
    order = e.top_channels(max_channels)
    sums = e.contributions()
    kh, kw = e.kernel.shape[1:]
    cell = min(3.0, max(1.2, 0.3 * max(kh, kw)))
    annotate = 0.8 * cell / max(kh, kw) if max(kh, kw) <= 7 else 0.0
    many = len(e.channels) > max_channels
    rows = len(order) + (1 if many else 0)
    fig = new_figure(3 * cell + 2.6, len(order) * cell + (1.8 if many else 0) + 1.5,
                     layout="constrained")
    grid = fig.add_gridspec(rows, 3, height_ratios=([1.4] if many else []) + [1] * len(order))
    parts = [("input patch", e.patch[order]), ("kernel", e.kernel[order]),
             ("products", e.products[order])]
    scales = [Scale.of(values) for _, values in parts]
    if scales[0].cmap == SEQUENTIAL:  # inputs from zero: a flat patch must look flat
        scales[0] = Scale(SEQUENTIAL, min(0.0, scales[0].vmin), scales[0].vmax)
    if many:
        _contribution_bars(fig.add_subplot(grid[0, :]), e, sums, order)
    for col, ((label, values), scale) in enumerate(zip(parts, scales)):
        axes = []
        factor = _column_factor(values) if annotate else 1.0
        texts = [_cell_texts(m, factor) for m in values] if annotate else None
        # one font size for the column: the longest number fits its cell (annotate: inches)
        longest = max(len(t) for m in texts for row in m for t in row) if texts else 1
        size = min(7.0, annotate * 72 / (0.62 * longest + 0.8))
        for row, k in enumerate(order):
            ax = fig.add_subplot(grid[row + (1 if many else 0), col])
            shown = _grid_cell(ax, values[row], scale, e.padded if col == 0 else None,
                               texts[row] if texts else None, size)
            axes.append(ax)
            if row == 0:
                ax.set_title(label + _unit(factor), fontsize=9)
            if col == 0:
                ch = e.channels[k]
                name = (plain_text(e.channel_names[ch]) if ch < len(e.channel_names)
                        else f"channel {ch}")
                ax.set_ylabel(f"{name}\nsum {sums[k]:.4g}", fontsize=8)
        bar = fig.colorbar(shown, ax=axes, location="bottom", fraction=0.05, pad=0.02,
                           shrink=0.9)
        bar.ax.tick_params(labelsize=6)
        if factor != 1.0:  # the bar counts in the column's unit, as its cells do
            from matplotlib.ticker import FuncFormatter

            bar.ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p, f=factor: f"{v * f:g}"))
    d, y, x = e.at
    rest = [k for k in range(len(e.channels)) if k not in order]
    total = e.products.sum(dtype=np.float64)
    parts_text = (f" ({len(order)} drawn {sums[order].sum():.4g} + the other {len(rest)} "
                  f"{sums[rest].sum():.4g})") if rest else ""
    name = f" ({plain_text(e.map_name)})" if e.map_name else ""
    head = title or f"map {d}{name} at row {y}, col {x}"
    fig.suptitle(wrap_title(f"{head}\nsum of products {total:.5g}{parts_text} "
                            f"+ bias {e.bias:.4g} = {e.value:.5g}"
                            + ("   (hatched: padding)" if e.padded.any() else ""), fig, 9),
                 fontsize=9)
    return fig


def _contribution_bars(ax, e, sums: np.ndarray, order: list[int]) -> None:
    """Every input channel's contribution, largest absolute first; the drawn ones in colour."""
    ranked = np.argsort(-np.abs(sums), kind="stable")
    colours = ["#c0392b" if sums[k] > 0 else "#2e6fb7" for k in ranked]
    alphas = [1.0 if k in order else 0.35 for k in ranked]
    for i, (k, colour, alpha) in enumerate(zip(ranked, colours, alphas)):
        ax.bar(i, sums[k], color=colour, alpha=alpha, width=0.9 if len(sums) < 80 else 1.0)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlim(-0.6, len(sums) - 0.4)
    if len(sums) <= 48:  # each bar named; more would not fit (the rows below name theirs)
        ax.set_xticks(range(len(sums)), [str(e.channels[k]) for k in ranked],
                      fontsize=5 if len(sums) > 24 else 6, rotation=90 if len(sums) > 24 else 0)
    else:
        ax.set_xticks([])
    ax.tick_params(axis="x", length=0, pad=1)
    ax.set_xlabel(f"input channel: all {len(e.channels)}, largest |contribution| first (the "
                  f"{len(order)} drawn below in full colour, leftmost)", fontsize=7)
    ax.set_ylabel("sum of products", fontsize=7)
    ax.tick_params(labelsize=6)

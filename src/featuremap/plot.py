"""Pictures of feature maps: channel grids and comparison strips, as matplotlib figures.

matplotlib is imported inside the functions, so ``import featuremap`` stays light. Figures are
built with the object-oriented API (no pyplot state): they display inline in notebooks and are
written to PNG (or SVG, PDF, JPEG) with :func:`save_figure`, atomically.

Names and titles are data, not markup: every text a figure shows is drawn literally (no
mathtext, so ``$x^2$`` in a file name stays ``$x^2$``; no LaTeX even where ``text.usetex`` is
set), with control characters written as escapes (``\\x1b``), see :func:`plain_text`.

Colour scales are honest: maps with negative values get a diverging scale centred on zero
(blue negative, red positive); non-negative maps get a sequential scale from their minimum to
their maximum. Every figure states the scale it used.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featuremap.errors import ConfigError, printable
from featuremap.outputs import atomic_write, check_output

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from matplotlib.text import Text
    from torch import Tensor

__all__ = [
    "FIGURE_SUFFIXES",
    "Panel",
    "literal_text",
    "plot_comparison",
    "plot_explanation",
    "plot_filters",
    "plot_image",
    "plot_layer",
    "plot_maps",
    "plot_overlay",
    "plot_overview",
    "plot_receptive_field",
    "plot_receptive_fields",
    "plot_segmentation",
    "plain_text",
    "save_figure",
    "select_channels",
    "upsample",
]

DIVERGING, SEQUENTIAL = "RdBu_r", "viridis"
FIGURE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")
"""The files :func:`save_figure` writes (by suffix; ``.png`` is added to a name without one)."""


# ------------------------------------------------------------------------- text is data
def plain_text(text: object, *, lines: bool = False) -> str:
    """A user-supplied string (a file, layer, filter or class name, a title) as a figure shows
    it: control characters escaped as ``repr`` escapes them (:func:`~featuremap.errors.printable`),
    every other character kept; with ``lines``, line breaks are kept as line breaks.

    Figures made here also draw every text literally (see :func:`literal_text`), so ``$`` and
    backslashes need no escaping.

    Example:
        >>> plain_text("scan\\x1b[31m $x^2$.png")
        'scan\\\\x1b[31m $x^2$.png'
        >>> plain_text("layer1\\nstride 2", lines=True)
        'layer1\\nstride 2'
    """
    if lines:
        return "\n".join(printable(line) for line in str(text).split("\n"))
    return printable(text)


def _texts(fig: Figure) -> Iterator[Text]:
    """Every text of a figure that can hold a caller's string: titles, axis labels, texts,
    legends (not tick labels: those are numbers, formatted by matplotlib)."""
    yield from fig.texts  # the suptitle among them
    for legend in fig.legends:
        yield legend.get_title()
        yield from legend.get_texts()
    axes = list(fig.axes)
    while axes:
        ax = axes.pop()
        axes.extend(ax.child_axes)
        yield from (ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label)
        yield from ax.texts
        legend = ax.get_legend()
        if legend is not None:
            yield legend.get_title()
            yield from legend.get_texts()


def literal_text(fig: Figure) -> Figure:
    """Make every title, label, text and legend of ``fig`` literal: no mathtext (``$`` is a
    dollar sign), no LaTeX, control characters escaped (line breaks kept). Returns ``fig``.

    Every figure of this module has been through it; use it on figures built elsewhere that
    show names or titles a user chose.
    """
    for text in _texts(fig):
        text.set_text(plain_text(text.get_text(), lines=True))
        text.set_parse_math(False)
        text.set_usetex(False)
    return fig


def _literal(make: Callable[..., Figure]) -> Callable[..., Figure]:
    """Decorator: the figure a plot function returns shows its texts literally."""
    @functools.wraps(make)
    def wrapper(*args, **kwargs) -> Figure:
        return literal_text(make(*args, **kwargs))

    return wrapper


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


@_literal
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
    fig.suptitle(_wrap(f"{head}{d} feature maps of {h} x {w} ({scale_text})", fig), fontsize=10)
    return fig


def _wrap(text: str, fig: Figure, points: float = 10) -> str:
    """Break a title into lines that fit the figure's width."""
    import textwrap

    chars = max(40, int(fig.get_figwidth() * 72 / (points * 0.55)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


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


@_literal
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


@_literal
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


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110, overwrite: bool = True) -> Path:
    """Write ``fig`` to ``path``, atomically; return the path written.

    The format follows the suffix: ``.png``, ``.svg``, ``.pdf``, ``.jpg``/``.jpeg``
    (:data:`FIGURE_SUFFIXES`); a name without a suffix gets ``.png``, and the path returned is
    that name. The path is checked before anything is drawn, and the file is written beside
    its target and moved into place when complete: an error or Ctrl-C leaves no partial file.

    Args:
        fig: the figure.
        path: the file to write; its folder must exist.
        dpi: resolution of raster formats.
        overwrite: replace an existing file (the CLI checks ``--overwrite`` before the work,
            with :func:`featuremap.outputs.check_output`).

    Raises:
        ConfigError: an unsupported suffix (the message lists the supported ones), a missing
            or unwritable folder, a path that is a folder or a special file (a device, a FIFO),
            or an existing file without ``overwrite``.
    """
    p = check_output(path, suffixes=FIGURE_SUFFIXES, default_suffix=".png", overwrite=overwrite,
                     what="figure")
    kind = p.suffix.lower().lstrip(".")
    with atomic_write(p) as f:
        fig.savefig(f, format="jpeg" if kind == "jpg" else kind, dpi=dpi, bbox_inches="tight",
                    facecolor="white")
    return p


# ------------------------------------------------------------------- maps of real networks
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


@_literal
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


@_literal
def plot_overview(fm, *, image: int = 0, per_layer: int = 8, cell_inches: float = 1.25,
                  note: str = "", labels: dict[str, str] | None = None) -> Figure:
    """One row per layer, low to high: the input, then each layer's strongest channels.

    Each map is drawn at the same display size, stretched to its own range; the row label gives
    the layer's shape and stride (and ``labels[layer]``, e.g. its receptive field), so the
    shrinking maps, the growing depth and the growing region behind each value are visible.
    """
    layers = [n for n in fm if fm[n].dim() == 4]
    if not layers:
        raise ConfigError("none of the extracted layers has feature maps (N, C, H, W).")
    has_input = fm.images is not None
    cols = per_layer + (1 if has_input else 0)
    fig = _figure(cols * cell_inches + 1.6, len(layers) * (cell_inches + 0.22) + 0.5,
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
    fig.suptitle(_wrap(f"{plain_text(fm.model_name)}: feature maps from low to high layers "
                       f"(strongest {per_layer} channels per layer, each on its own scale"
                       f"{extra})".strip(), fig), fontsize=10)
    return fig


def upsample(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D float map to ``(H, W)`` (Pillow, float precision)."""
    from PIL import Image

    h = np.asarray(heat, np.float32)
    if h.shape == tuple(size):
        return h
    return np.asarray(Image.fromarray(h, mode="F").resize((size[1], size[0]),
                                                          Image.Resampling.BILINEAR))


@_literal
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
    fig = _figure(inches + 0.9, inches * rgb.shape[0] / rgb.shape[1] + 0.5, layout="constrained")
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


@_literal
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
    fig = _figure(cols * 0.8 + 0.8, rows * 0.8 + 0.7, layout="constrained")
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


# --------------------------------------------------------------------------- segmentation
def _label_colours(k: int) -> np.ndarray:
    """``(k, 3)`` RGB colours in [0, 1] for label indices: tab10 up to 10 labels, tab20 up to
    20, then tab20, tab20b and tab20c (60 colours, repeated beyond)."""
    from matplotlib import colormaps

    if k <= 10:
        table = np.asarray(colormaps["tab10"].colors)
    elif k <= 20:
        table = np.asarray(colormaps["tab20"].colors)
    else:
        table = np.concatenate([np.asarray(colormaps[n].colors)
                                for n in ("tab20", "tab20b", "tab20c")])
    return table[np.arange(max(k, 1)) % len(table), :3].astype(np.float32)


def _segmentation_parts(seg) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """(image (H, W, 3), labels (H, W), names, default title) of a Segmentation or a tuple."""
    if isinstance(seg, tuple):
        if len(seg) != 3:
            raise ConfigError("plot_segmentation takes a Segmentation or (image, labels, names), "
                              f"got a tuple of {len(seg)}.")
        image, labels, names = seg
        default = "segmentation"
    else:
        image, labels, names = seg.image, seg.labels, seg.names
        layers = getattr(seg, "layers", None)
        default = f"{getattr(seg, 'model_name', '')}: {getattr(seg, 'method', 'segmentation')}"
        default += f" of {', '.join(layers)}" if layers else ""
    labels = _check_labels(labels, len(names), "labels")
    a = np.asarray(image, np.float32)
    a = np.repeat(a, 3, 0) if a.ndim == 3 and a.shape[0] == 1 else a
    if a.ndim != 3 or a.shape[0] != 3 or a.shape[1:] != labels.shape:
        raise ConfigError(f"the image must be (3, H, W) with the labels' size {labels.shape}, "
                          f"got {a.shape}.")
    return (np.clip(np.moveaxis(a, 0, -1), 0, 1), labels, [plain_text(n) for n in names],
            plain_text(default.strip(": ")))


def _check_labels(labels, k: int, what: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    a = np.asarray(labels)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer):
        raise ConfigError(f"{what} must be a 2-D integer label map, got {a.dtype} {a.shape}.")
    if shape is not None and a.shape != shape:
        raise ConfigError(f"{what} is {a.shape[0]} x {a.shape[1]} but the labels are "
                          f"{shape[0]} x {shape[1]}: give the label map of the same image.")
    if a.size and (a.min() < 0 or a.max() >= k):
        raise ConfigError(f"{what} holds labels {int(a.min())}..{int(a.max())}, but there are "
                          f"{k} names (0..{k - 1}).")
    return a.astype(np.int64)


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """True where a pixel's label differs from its right or lower neighbour."""
    edge = np.zeros(labels.shape, bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def _legend_entries(labels: np.ndarray, truth: np.ndarray | None, names: list[str]
                    ) -> list[tuple[int, str]]:
    """(label, text) for every label present in the prediction or the truth, with pixel shares."""
    k = len(names)
    share = np.bincount(labels.ravel(), minlength=k) / labels.size
    truth_share = None if truth is None else np.bincount(truth.ravel(), minlength=k) / truth.size
    entries = []
    for i in range(k):
        if share[i] == 0 and (truth_share is None or truth_share[i] == 0):
            continue
        text = f"{names[i]}: {_percent(share[i])}"
        if truth_share is not None:
            text += f" (truth {_percent(truth_share[i])})"
        entries.append((i, text))
    return entries


def _percent(share: float) -> str:
    return "<0.1%" if 0 < share < 0.0005 else f"{share:.1%}"


@_literal
def plot_segmentation(seg, *, title: str = "", alpha: float = 0.5,
                      truth: np.ndarray | None = None, inches: float = 3.2) -> Figure:
    """An image, its label map and their overlay, with a legend of names and pixel shares.

    Labels are drawn in a qualitative colour map (tab10, tab20 beyond 10 labels); the overlay
    blends them over the image and outlines the segment boundaries in white. With ``truth`` a
    fourth panel shows the ground truth in the same colours (and, for class predictions, the
    share of pixels where both agree).

    Args:
        seg: a :class:`~featuremap.tasks.segment.Segmentation`, or ``(image, labels, names)``
            with ``image`` ``(3, H, W)`` in [0, 1], ``labels`` ``(H, W)`` ints and one name per
            label.
        title: the figure title (default: the model, the method and the layers).
        alpha: opacity of the labels in the overlay, in [0, 1].
        truth: a ground-truth label map ``(H, W)`` with the same names.
        inches: width of one panel.

    Returns:
        A matplotlib ``Figure``.

    Raises:
        ConfigError: labels outside ``0 .. len(names) - 1``, an image or truth of another size,
            ``alpha`` outside [0, 1].

    Example:
        >>> fig = plot_segmentation(segment(load_model("shapes"), scene.image),  # doctest: +SKIP
        ...                         truth=scene.mask)
    """
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}.")
    rgb, labels, names, default = _segmentation_parts(seg)
    if truth is not None:
        truth = _check_labels(truth, len(names), "truth", labels.shape)
    colours = _label_colours(len(names))
    overlay = (1 - alpha) * rgb + alpha * colours[labels]
    overlay[_boundaries(labels)] = 1.0
    panels = [("image", rgb), ("labels", colours[labels]), ("overlay", overlay)]
    if truth is not None:
        agree = "" if getattr(seg, "method", "") == "clusters" else (
            f" (agreement {np.mean(labels == truth):.1%})")
        panels.append((f"truth{agree}", colours[truth]))
    return _segmentation_figure(panels, _legend_entries(labels, truth, names), colours,
                                title or default, inches)


def _segmentation_figure(panels: list[tuple[str, np.ndarray]], entries: list[tuple[int, str]],
                         colours: np.ndarray, title: str, inches: float) -> Figure:
    from matplotlib.patches import Patch

    h, w = panels[0][1].shape[:2]
    legend_rows = max(1, math.ceil(len(entries) / 4))
    columns = max(1, math.ceil(len(entries) / legend_rows))  # balanced rows of at most 4
    fig = _figure(inches * len(panels), inches * h / w + 0.7 + 0.22 * legend_rows,
                  layout="constrained")
    for k, (label, picture) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        ax.imshow(np.clip(picture, 0, 1), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(label, fontsize=9)
    handles = [Patch(facecolor=colours[i], edgecolor="0.3", label=text) for i, text in entries]
    fig.legend(handles=handles, loc="outside lower center", ncols=columns, fontsize=8,
               frameon=False, title=f"{len(entries)} of {len(colours)} labels present "
               "(share of pixels)", title_fontsize=8)
    fig.suptitle(_wrap(f"{title} ({h} x {w})", fig), fontsize=10)
    return fig


@_literal
def plot_receptive_field(image: np.ndarray, box: tuple[int, int, int, int], erf: np.ndarray, *,
                         title: str = "", inches: float = 4.5) -> Figure:
    """The analytic receptive field (a rectangle) and the effective one (gradient magnitude as a
    heatmap) of one value, over the image ``(3, H, W)`` in [0, 1]."""
    rgb = np.clip(np.moveaxis(np.asarray(image, np.float32), 0, -1), 0, 1)
    fig = _figure(inches + 0.9, inches * rgb.shape[0] / rgb.shape[1] + 0.6, layout="constrained")
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


@_literal
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
    fig = _figure(inches * n + 0.8, inches * rgb.shape[0] / rgb.shape[1] + 0.9,
                  layout="constrained")
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    for ax, (label, box, erf) in zip(axes, panels):
        e = np.asarray(erf, np.float32)
        shown = _rf_axes(ax, rgb, box, e / (float(e.max()) or 1.0), label, vmax=1.0)
    bar = fig.colorbar(shown, ax=axes, fraction=0.03, pad=0.02)
    bar.set_label("|d value / d input|, each panel / its maximum", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(_wrap(title, fig, 10), fontsize=10)
    return fig


# --------------------------------------------------------------------- one value explained
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


@_literal
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
    fig = _figure(3 * cell + 2.6, len(order) * cell + (1.8 if many else 0) + 1.5,
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
    fig.suptitle(_wrap(f"{head}\nsum of products {total:.5g}{parts_text} "
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

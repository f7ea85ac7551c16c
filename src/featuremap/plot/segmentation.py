"""A segmentation drawn: the image, its label map, their overlay and the truth, with a legend of
names and pixel shares."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from featuremap.errors import ConfigError
from featuremap.plot.figure import literal_plot, new_figure, plain_text, wrap_title

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_segmentation"]


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


@literal_plot
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
    fig = new_figure(inches * len(panels), inches * h / w + 0.7 + 0.22 * legend_rows,
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
    fig.suptitle(wrap_title(f"{title} ({h} x {w})", fig), fontsize=10)
    return fig

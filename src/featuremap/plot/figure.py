"""What every figure of featuremap shares: it is made without pyplot, shows every text
literally and is saved atomically.

Names and titles are data, not markup: every text a figure shows is drawn literally (no
mathtext, so ``$x^2$`` in a file name stays ``$x^2$``; no LaTeX even where ``text.usetex`` is
set), with control characters written as escapes (``\\x1b``), see :func:`plain_text`. matplotlib
is imported inside the functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from featuremap.errors import printable
from featuremap.outputs import FIGURE_SUFFIXES, atomic_write, check_output

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from matplotlib.text import Text

__all__ = [
    "FIGURE_SUFFIXES",
    "figure_texts",
    "literal_plot",
    "literal_text",
    "new_figure",
    "plain_text",
    "save_figure",
    "wrap_title",
]

"""The files :func:`save_figure` writes (by suffix; ``.png`` is added to a name without one)."""


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


def figure_texts(fig: Figure) -> Iterator[Text]:
    """Every text of a figure that can hold a caller's string: titles, axis labels, texts,
    legends (not tick labels: those are numbers, formatted by matplotlib).

    Child axes (insets) are included; the left and right titles of each axes too (matplotlib
    keeps them in private attributes).
    """
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

    Every figure of :mod:`featuremap.plot` has been through it; use it on figures built
    elsewhere that show names or titles a user chose.
    """
    for text in figure_texts(fig):
        text.set_text(plain_text(text.get_text(), lines=True))
        text.set_parse_math(False)
        text.set_usetex(False)
    return fig


def literal_plot(make: Callable[..., Figure]) -> Callable[..., Figure]:
    """Decorator: the figure a plot function returns shows its texts literally
    (:func:`literal_text`). Every ``plot_*`` function of :mod:`featuremap.plot` wears it."""
    @functools.wraps(make)
    def wrapper(*args, **kwargs) -> Figure:
        return literal_text(make(*args, **kwargs))

    return wrapper


def new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches at 100 dpi, made without pyplot
    (no global state; it displays inline in notebooks). ``layout``: ``"constrained"`` or None.
    """
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout=layout)


def wrap_title(text: str, fig: Figure, points: float = 10) -> str:
    """Break a title into lines that fit the figure's width at a font of ``points``."""
    import textwrap

    chars = max(40, int(fig.get_figwidth() * 72 / (points * 0.55)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 110, overwrite: bool = True) -> Path:
    """Write ``fig`` to ``path``, atomically; return the path written.

    The format follows the suffix: ``.png``, ``.svg``, ``.pdf``, ``.jpg``/``.jpeg``, ``.webp``
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

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

The figures live in one module per subject (:mod:`~featuremap.plot.maps`,
:mod:`~featuremap.plot.networks`, :mod:`~featuremap.plot.segmentation`,
:mod:`~featuremap.plot.receptive`, :mod:`~featuremap.plot.explanation`,
:mod:`~featuremap.plot.atlas`) over what they share
(:mod:`~featuremap.plot.figure`, :mod:`~featuremap.plot.scale`); every public name is
importable from here.
"""

from __future__ import annotations

from featuremap.plot.atlas import plot_atlas_rows, plot_dissection, plot_top_patches
from featuremap.plot.explanation import plot_explanation
from featuremap.plot.figure import FIGURE_SUFFIXES, literal_text, plain_text, save_figure
from featuremap.plot.maps import Panel, plot_comparison, plot_image, plot_maps
from featuremap.plot.networks import (
    plot_filters,
    plot_layer,
    plot_overlay,
    plot_overview,
    select_channels,
    upsample,
)
from featuremap.plot.receptive import plot_receptive_field, plot_receptive_fields
from featuremap.plot.scale import DIVERGING, SEQUENTIAL, Scale
from featuremap.plot.segmentation import plot_segmentation

__all__ = [
    "DIVERGING",
    "FIGURE_SUFFIXES",
    "SEQUENTIAL",
    "Panel",
    "Scale",
    "literal_text",
    "plot_comparison",
    "plot_atlas_rows",
    "plot_dissection",
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
    "plot_top_patches",
    "plain_text",
    "save_figure",
    "select_channels",
    "upsample",
]

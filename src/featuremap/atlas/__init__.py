"""The channel atlas: what each channel of a network responds to, over a whole dataset.

- :func:`top_patches` (:mod:`~featuremap.atlas.patches`): per channel, the ``k`` strongest
  values over a dataset or a store, and the receptive-field crops of their images.
- :func:`dissect` (:mod:`~featuremap.atlas.dissect`): which channels detect a colour, a shape
  of the generated scenes or a class of your own masks (network dissection, Bau et al. 2017),
  with :func:`check_labels` to see whether a detector's top patches lie on its concept.

Figures: :func:`featuremap.plot.plot_top_patches`, :func:`featuremap.plot.plot_dissection`.
Each result has ``str()`` (the text a command prints) and ``to_dict()`` (what a page receives).
"""

from __future__ import annotations

from featuremap.atlas.check import LabelCheck, check_labels
from featuremap.atlas.concepts import COLOUR_TERMS, ColourTerms, Concept, ConceptSet, MaskClasses
from featuremap.atlas.dissect import Dissection, LayerDissection, dissect
from featuremap.atlas.patches import Patch, TopPatches, top_patches

__all__ = [
    "COLOUR_TERMS",
    "ColourTerms",
    "Concept",
    "ConceptSet",
    "Dissection",
    "LabelCheck",
    "LayerDissection",
    "MaskClasses",
    "Patch",
    "TopPatches",
    "check_labels",
    "dissect",
    "top_patches",
]

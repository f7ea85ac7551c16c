"""The channel atlas: what each channel of a network responds to, and how layers compare.

- :func:`top_patches` (:mod:`~featuremap.atlas.patches`): per channel, the ``k`` strongest
  values over a dataset or a store, and the receptive-field crops of their images.
- :func:`dissect` (:mod:`~featuremap.atlas.dissection`): which channels detect a colour, a shape
  of the generated scenes or a class of your own masks (network dissection, Bau et al. 2017),
  with :func:`check_labels` to see whether a detector's top patches lie on its concept.
- :func:`visualize` (:mod:`~featuremap.atlas.visualization`): images rendered to maximise a
  channel's mean activation (feature visualisation); :func:`plot_visualizations` draws them.
- :func:`similarity` (:mod:`~featuremap.atlas.cka`): linear CKA between the layers of one model
  or of two models on the same images, estimated by minibatches; :func:`plot_similarity` draws
  the heatmap.

- :func:`channel_atlas` (:mod:`~featuremap.atlas.channels`): all of the above for the channels
  of one layer side by side (one forward pass per batch feeds top patches, mean activation and
  dissection), saved as one sortable self-contained page (:mod:`~featuremap.atlas.page`).

Figures: :func:`featuremap.plot.plot_top_patches`, :func:`featuremap.plot.plot_dissection`.
Each result has ``str()`` (the text a command prints) and ``to_dict()`` (what a page receives).
"""

from __future__ import annotations

from featuremap.atlas.channels import ChannelAtlas, channel_atlas
from featuremap.atlas.check import LabelCheck, check_labels
from featuremap.atlas.cka import Similarity, plot_similarity, similarity
from featuremap.atlas.concepts import COLOUR_TERMS, ColourTerms, Concept, ConceptSet, MaskClasses
from featuremap.atlas.dissection import Dissection, LayerDissection, dissect
from featuremap.atlas.patches import Patch, TopPatches, top_patches
from featuremap.atlas.visualization import Visualization, plot_visualizations, visualize

__all__ = [
    "COLOUR_TERMS",
    "ChannelAtlas",
    "ColourTerms",
    "Concept",
    "ConceptSet",
    "Dissection",
    "LabelCheck",
    "LayerDissection",
    "MaskClasses",
    "Patch",
    "Similarity",
    "TopPatches",
    "Visualization",
    "channel_atlas",
    "check_labels",
    "dissect",
    "plot_similarity",
    "plot_visualizations",
    "similarity",
    "top_patches",
    "visualize",
]

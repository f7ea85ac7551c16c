"""The channel atlas: what single channels of a network respond to, and how layers compare.

- :func:`visualize` (:mod:`~featuremap.atlas.visualization`): images rendered to maximise a
  channel's mean activation (feature visualisation); :func:`plot_visualizations` draws them;
- :func:`similarity` (:mod:`~featuremap.atlas.cka`): linear CKA between the layers of one model
  or of two models on the same images, estimated by minibatches; :func:`plot_similarity` draws
  the heatmap.

Module names differ from the function names on purpose: a package attribute named like one of
its modules would hide the module (``import featuremap.atlas.visualize as m`` would give the
function).
"""

from __future__ import annotations

from featuremap.atlas.cka import Similarity, plot_similarity, similarity
from featuremap.atlas.visualization import Visualization, plot_visualizations, visualize

__all__ = [
    "Similarity",
    "Visualization",
    "plot_similarity",
    "plot_visualizations",
    "similarity",
    "visualize",
]

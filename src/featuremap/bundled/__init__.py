"""The bundled model and everything it was made from, in one place.

- :mod:`featuremap.bundled.scenes`: generated scenes of shapes (NumPy only: no torch import),
  the data the model was trained and is scored on, written as datasets by ``featuremap scenes``.
- :mod:`featuremap.bundled.network`: ``ShapesNet``, a small CNN with one backbone and two heads
  (recognition and segmentation), and the shipped weights (``data/shapes.safetensors``).
- :mod:`featuremap.bundled.train`: its training recipe (``featuremap train-demo``).

``featuremap.load_model("shapes")`` loads it. Nothing outside this package and the model registry
(:mod:`featuremap.zoo`) knows its class: the rest of featuremap sees a
:class:`featuremap.model.Model` with a segmentation head, as it would any other.
"""

"""Image segmentation from feature maps: the result every way of segmenting returns.

Three ways cut an image into regions, each in its own module and each returning a
:class:`Segmentation`:

- :mod:`featuremap.tasks.clusters` (no training): k-means of the per-pixel feature vectors of a
  few layers;
- :mod:`featuremap.tasks.segnets`: the network's own segmentation output (the bundled model's
  head, torchvision's FCN, DeepLabV3, LR-ASPP);
- :mod:`featuremap.tasks.seghead`: a 1x1-convolution head fitted on frozen maps of an image/mask
  folder, scored per class on a held-out split.

This module also holds what they share: upsampling maps to the input, label names, the model's
normalisation without resize or crop (so maps stay aligned with masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from featuremap.errors import ConfigError, printable
from featuremap.preprocess import Preprocess

if TYPE_CHECKING:  # pragma: no cover
    from featuremap.capture import Capture, Captured
    from featuremap.model import Model

__all__ = ["Segmentation", "label_names", "native", "native_pass", "upsample"]


@dataclass
class Segmentation:
    """A label map of one image and what made it.

    Attributes:
        labels: ``(H, W)`` int64, an index into ``names`` for every pixel.
        names: one name per label: ``"segment 0"``, ... for clusters (0 is the largest),
            class names for heads and segmentation networks.
        image: ``(C, H, W)`` float32 in ``[0, 1]``: the input as the network saw it
            (preprocessed, before normalisation); ``labels`` has its size.
        probabilities: ``(K, H, W)`` softmax of a head's logits, None for clusters.
        method: ``"clusters"``, ``"segmentation head"`` (the model's own head),
            ``"segmentation network"`` (a torchvision network's ``out``) or ``"fitted head"``.
        model_name: the model's name.
        layers: the layers whose maps were used (empty for a network's own output).
        notes: what was assumed or converted on the way.
    """

    labels: np.ndarray
    names: list[str]
    image: np.ndarray
    probabilities: np.ndarray | None = None
    method: str = ""
    model_name: str = ""
    layers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def shares(self) -> dict[str, float]:
        """The fraction of pixels of every label, by name (in label order)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.names))
        return {n: float(c) / max(1, self.labels.size) for n, c in zip(self.names, counts)}

    @property
    def title(self) -> str:
        h, w = self.labels.shape
        return f"{self.method} of {self.model_name} ({h} x {w} pixels)"

    def rows(self) -> list[tuple[str, str]]:
        """``(label, share of pixels)`` of every label present."""
        return [(printable(n), f"{s:.1%}") for n, s in self.shares().items() if s > 0]

    def __str__(self) -> str:
        rows = self.rows()
        width = max([5] + [len(n) for n, _ in rows])
        lines = [printable(self.title), f"{'label':<{width}}  share of pixels"]
        lines += [f"{n:<{width}}  {s:>15}" for n, s in rows]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "model": self.model_name, "layers": list(self.layers),
                "names": list(self.names), "shape": list(self.labels.shape),
                "labels": self.labels.tolist(), "shares": self.shares(),
                "notes": list(self.notes)}

    def __repr__(self) -> str:
        h, w = self.labels.shape
        used = len(np.unique(self.labels))
        return (f"Segmentation({self.method}, {self.model_name}, {h} x {w}, "
                f"{used} of {len(self.names)} labels used)")


def upsample(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Maps ``(N, C, h, w)`` resized to ``size`` (bilinear, ``align_corners=False``)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


def native(preprocess: Preprocess) -> Preprocess:
    """The model's normalisation without resize or crop: maps stay aligned with masks."""
    return Preprocess(resize=None, crop=None, mean=preprocess.mean, std=preprocess.std,
                      channels=preprocess.channels)


def native_pass(m: Model, engine: Capture, batch: torch.Tensor,
                notes: list[str] | None = None) -> Captured:
    """``engine(batch)`` on images at their own size; where the network does not run at that
    size but does at its input size (a vision transformer's fixed patch grid), on the whole
    images resized to it (bilinear), with a note. The maps, upsampled to the images, stay
    aligned with their masks either way."""
    try:
        return engine(batch)
    except ConfigError as err:
        size = m.input_size
        if tuple(batch.shape[-2:]) == size:
            raise
        shrink = batch.shape[-2] > size[0] or batch.shape[-1] > size[1]
        resized = F.interpolate(batch, size=size, mode="bilinear", align_corners=False,
                                antialias=shrink)
        try:
            got = engine(resized)
        except ConfigError:
            raise err from None
    said = (f"{m.name} does not run on {batch.shape[-2]} x {batch.shape[-1]} images: they were "
            f"resized, whole, to its input size {size[0]} x {size[1]} and the maps resized back")
    if notes is not None and said not in notes:
        notes.append(said)
    return got


def label_names(categories: Sequence[str] | None, k: int) -> list[str]:
    """Names of ``k`` output channels: the categories, background + categories, or
    ``class i``."""
    if categories is not None and len(categories) == k:
        return list(categories)
    if categories is not None and len(categories) == k - 1:
        return ["background", *categories]
    return [f"class {i}" for i in range(k)]

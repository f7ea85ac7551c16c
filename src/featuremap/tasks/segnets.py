"""Segmentation by a network's own per-pixel output.

A model that labels pixels itself carries a :class:`featuremap.model.SegmentationHead`: the
bundled model's head (which reads the backbone's maps, so one pass can feed recognition and
segmentation), or a whole segmentation network (torchvision's FCN, DeepLabV3, LR-ASPP: the
``out`` logits). :func:`segment` runs it; :func:`head_segmentation` turns logits into labels and
is shared with the one-pass analysis.

Example:
    >>> seg = segment(load_model("shapes"), make_scene(60_000).image)  # doctest: +SKIP
    >>> seg.names[seg.labels[32, 32]]  # doctest: +SKIP
    'star'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from featuremap.errors import ConfigError
from featuremap.model import Model, Prepared, SegmentationHead
from featuremap.tasks.segmentation import Segmentation, label_names, upsample
from featuremap.tasks.topk import one_image

__all__ = ["SEG_HINT", "head_segmentation", "segment", "segmentation_head"]

SEG_HINT = ("use a segmentation model ('featuremap models' lists them: 'shapes', fcn_resnet50, "
            "deeplabv3_resnet50, lraspp_mobilenet_v3_large, ...) or cluster its feature maps "
            "with cluster_segments (featuremap segment IMAGE --layers L --k K)")


def segmentation_head(m: Model) -> SegmentationHead:
    """The model's own per-pixel classifier, or a ConfigError naming what works instead."""
    if m.segmentation is None:
        kind = ("a classification model" if m.task == "classification"
                else "not a segmentation model")
        raise ConfigError(f"{m.name} is {kind} (no per-pixel output): {SEG_HINT}.")
    return m.segmentation


def _logits(output: Any, name: str) -> torch.Tensor:
    """The per-pixel logits of a network's output: a 4-D tensor, or the ``'out'`` of a dict."""
    if isinstance(output, Mapping) and "out" in output:
        output = output["out"]
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        found = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(f"{name} gave {found}, not per-pixel logits (N, K, H, W): {SEG_HINT}.")
    return output


def head_segmentation(m: Model, head: SegmentationHead, prepared: Prepared,
                      maps: Sequence[torch.Tensor], notes: Sequence[str] = ()) -> Segmentation:
    """Run ``head`` on the batch and the maps of its layers; labels at the input size."""
    batch = prepared.batch
    kept = [t.detach() for t in maps]
    got = m.capture([], early_stop=False)(batch, call=lambda _module, x: head.apply(x, kept))
    logits = _logits(got.output, m.name)
    probs = upsample(logits.float(), batch.shape[-2:]).softmax(1)[0].cpu()
    if not bool(torch.isfinite(probs).all()):
        raise ConfigError(f"{m.name} gives NaN or infinite segmentation scores on this image "
                          "(its weights or the input hold NaN/inf). Check the weights.")
    names = list(head.classes) if head.classes and len(head.classes) == probs.shape[0] else (
        label_names(m.categories, probs.shape[0]))
    return Segmentation(probs.argmax(0).numpy().astype(np.int64), names, prepared.picture(),
                        probs.numpy(), head.kind, m.name, [], list(notes))


def segment(model: Any, image: Any) -> Segmentation:
    """Segment an image with a network's own segmentation output.

    Works for the bundled model (its segmentation head) and torchvision's segmentation networks
    (FCN, DeepLabV3, LR-ASPP: the ``out`` logits). Logits are upsampled to the preprocessed
    input size if needed (bilinear), then softmax and argmax per pixel.

    Args:
        model: a model from :func:`featuremap.load_model` (its preprocessing is applied) or an
            ``nn.Module``.
        image: a path, ``"sample:NAME"``, PIL image, array, or a tensor used as it is.

    Returns:
        A :class:`~featuremap.tasks.segmentation.Segmentation` at the preprocessed input size,
        with ``probabilities`` ``(K, H, W)`` and class names: the model's categories
        (``background`` first for the bundled model), or ``"class 0"``, ... when its weights
        carry none (a weights file, random init).

    Raises:
        ConfigError: a model without segmentation output (a classification network), which
            names what works instead.
    """
    m, prepared = one_image(model, image, classifier=False)
    head = segmentation_head(m)
    got = m.capture(list(head.layers))(prepared.batch) if head.layers else None
    maps = [got.maps[n] for n in head.layers] if got is not None else []
    notes = prepared.notes + (got.notes if got is not None else [])
    return head_segmentation(m, head, prepared, maps, notes)

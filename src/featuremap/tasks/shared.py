"""Feature sharing: one backbone pass feeds several uses (classify, class-activation map, segment).

The features found by earlier layers are shared by everything downstream. :func:`analyse` runs
the network's backbone exactly once on an image, keeps the maps it needs, and hands the same
maps to the classifier, to Grad-CAM (whose backward pass reuses that forward) and to the
segmentation: the bundled model's segmentation head, or k-means clusters of the chosen layers
for any other network. This module composes the two task modules beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featuremap.errors import ConfigError
from featuremap.extraction import FeatureMaps, LayerMeta
from featuremap.layers import resolve_layers
from featuremap.tasks import classify as cls
from featuremap.tasks import segment as seg

__all__ = ["SharedResult", "analyse"]


@dataclass
class SharedResult:
    """Everything :func:`analyse` derived from its one backbone pass.

    Attributes:
        maps: the captured feature maps (detached), by layer.
        classification: top-k classes.
        cam: the Grad-CAM of the top class at ``cam.layer``.
        segmentation: per-pixel labels (the segmentation head, or clusters).
    """

    maps: FeatureMaps
    classification: cls.Classification
    cam: cls.CamResult
    segmentation: seg.Segmentation


def _capture(module: torch.nn.Module, names: Sequence[str], store: dict) -> list:
    modules = dict(module.named_modules())

    def hook(name: str):
        def keep(_m, _i, output):
            if name not in store:  # a reused module: its first call, as extract() does
                store[name] = output
        return keep
    return [modules[n].register_forward_hook(hook(n)) for n in names]


def _segment(module, batch, raw, store, cluster_layers, k, seed, name) -> seg.Segmentation:
    from featuremap.shapenet import SEGMENTATION_CLASSES, ShapesNet

    if isinstance(module, ShapesNet):
        pyramid = [store[f"backbone.{b}"] for b, _ in module.backbone.named_children()]
        with torch.no_grad():
            probs = module.segmenter(batch, [p.detach() for p in pyramid]).softmax(1)[0]
        return seg.Segmentation(probs.argmax(0).numpy().astype(np.int64),
                                list(SEGMENTATION_CLASSES), raw, probs.numpy(),
                                "segmentation head", name, [])
    size = tuple(batch.shape[-2:])
    maps = [store[n].detach()[:1].cpu() for n in cluster_layers]
    with torch.no_grad():
        features = seg._pixel_features(maps, size, dims=seg.PCA_DIMS, seed=seed)
        labels = seg._order_by_size(seg._kmeans(features, k, seed), k)
    return seg.Segmentation(labels.reshape(size).numpy().astype(np.int64),
                            [f"segment {i}" for i in range(k)], raw, None, "clusters", name,
                            list(cluster_layers))


def analyse(model: Any, image: Any, *, top: int = 5, cam_layer: str | None = None,
            cluster_layers: Sequence[str] | None = None, k: int = 4, seed: int = 0
            ) -> SharedResult:
    """Classify, explain and segment one image from a single pass through the backbone.

    Args:
        model: a classifier from :func:`featuremap.load_model` (or an ``nn.Module``).
        image: a path, ``"sample:NAME"``, PIL image or array (the model's preprocessing applies).
        top: classes to list.
        cam_layer: the Grad-CAM layer (default: the end of the last stage; for other models than
            the bundled one finding it costs one shape pass on a blank input).
        cluster_layers: layers to cluster when the model has no segmentation head (default:
            the CAM layer); ``k`` and ``seed`` as in ``cluster_segments``.

    Returns:
        :class:`SharedResult`.

    Example:
        >>> r = analyse(load_model("shapes"), make_scene(7).image)  # doctest: +SKIP
        >>> r.classification.top[0][1], r.segmentation.method  # doctest: +SKIP
        ('crescent', 'segmentation head')
    """
    from featuremap.shapenet import ShapesNet

    m = cls._as_model(model)
    module = m.module
    shapes = isinstance(module, ShapesNet)
    if cam_layer is None:
        cam_layer = "backbone." + list(dict(module.backbone.named_children()))[-1] if shapes \
            else cls.default_cam_layer(m)
    cam_layer = resolve_layers(module, [cam_layer], model_name=m.name)[0]
    clusters = [] if shapes else resolve_layers(module, list(cluster_layers or [cam_layer]),
                                                 model_name=m.name)
    if not shapes:
        seg._check_k(k)
    needed = list(dict.fromkeys([cam_layer, *clusters, *(
        [f"backbone.{b}" for b, _ in module.backbone.named_children()] if shapes else [])]))
    m, batch, raw = cls._prepare(m, image)
    store: dict[str, Any] = {}
    handles = _capture(module, needed, store)
    try:
        with torch.enable_grad():
            logits = cls._logits(m, module(batch))
            maps = store[cam_layer]
            if not isinstance(maps, torch.Tensor) or maps.dim() != 4:
                raise cls._not_convolutional(m, cam_layer, cls._describe_output(maps))
            index = int(logits[0].argmax())
            grads = torch.autograd.grad(logits[0, index], maps)[0]
    finally:
        for h in handles:
            h.remove()
    heat = torch.relu((grads.mean((2, 3), keepdim=True) * maps).sum(1))[0]
    cam = cls._result(m, heat.detach(), logits.detach(), index, raw, cam_layer, "grad-cam")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"top must be an integer >= 1, got {top!r}.")
    classification = cls._classification(m, logits, top)
    segmentation = _segment(module, batch, raw, store, clusters, k, seed, m.name)
    kept = {n: store[n].detach().clone() for n in needed if isinstance(store.get(n), torch.Tensor)}
    meta = {n: LayerMeta(n, type(dict(module.named_modules())[n]).__name__, tuple(t.shape),
                         (batch.shape[2] / t.shape[2], batch.shape[3] / t.shape[3])
                         if t.dim() == 4 else None) for n, t in kept.items()}
    fm = FeatureMaps(kept, meta, tuple(batch.shape), raw, [], m.name)
    return SharedResult(fm, classification, cam, segmentation)

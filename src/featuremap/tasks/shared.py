"""Feature sharing: one backbone pass feeds several uses (classify, class-activation map, segment).

The features found by earlier layers are shared by everything downstream. :func:`analyse` runs
the network's backbone exactly once on an image, keeps the maps it needs, and hands the same
maps to the classifier, to Grad-CAM (whose backward pass reuses that forward) and to the
segmentation: the model's own segmentation head when it reads backbone maps (the bundled model),
or k-means clusters of the chosen layers for any other network. This module composes the task
modules beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from featuremap.extraction import FeatureMaps
from featuremap.tasks.cam import CamResult, cam_result, default_cam_layer, grad_cam_of
from featuremap.tasks.clusters import check_k, cluster_maps
from featuremap.tasks.segmentation import Segmentation
from featuremap.tasks.segnets import head_segmentation
from featuremap.tasks.topk import (
    Classification,
    check_top,
    classification,
    logits_of,
    one_image,
)

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
    classification: Classification
    cam: CamResult
    segmentation: Segmentation

    def __str__(self) -> str:
        return "\n\n".join(str(x) for x in (self.classification, self.cam, self.segmentation))

    def to_dict(self) -> dict[str, Any]:
        return {"maps": self.maps.to_dict(), "classification": self.classification.to_dict(),
                "cam": self.cam.to_dict(), "segmentation": self.segmentation.to_dict()}


def analyse(model: Any, image: Any, *, top: int = 5, cam_layer: str | None = None,
            cluster_layers: Sequence[str] | None = None, k: int = 4, seed: int = 0
            ) -> SharedResult:
    """Classify, explain and segment one image from a single pass through the backbone.

    Args:
        model: a classifier from :func:`featuremap.load_model` (or an ``nn.Module``).
        image: a path, ``"sample:NAME"``, PIL image or array (the model's preprocessing applies).
        top: classes to list.
        cam_layer: the Grad-CAM layer (default: the end of the last stage).
        cluster_layers: layers to cluster when the model has no segmentation head that reads
            backbone maps (default: the CAM layer); ``k`` and ``seed`` as in
            ``cluster_segments``.

    Returns:
        :class:`SharedResult`.

    Example:
        >>> r = analyse(load_model("shapes"), make_scene(7).image)  # doctest: +SKIP
        >>> r.classification.top[0][1], r.segmentation.method  # doctest: +SKIP
        ('crescent', 'segmentation head')
    """
    check_top(top)
    m, prepared = one_image(model, image)
    head = m.segmentation if m.segmentation is not None and m.segmentation.layers else None
    cam_name = m.one_layer(cam_layer) if cam_layer is not None else default_cam_layer(m)
    clusters = [] if head is not None else m.resolve(list(cluster_layers or [cam_name]))
    if head is None:
        check_k(k)
    needed = list(dict.fromkeys([cam_name, *clusters, *(head.layers if head else ())]))
    got = m.capture(needed, keep="graph", early_stop=False)(prepared.batch)
    logits = logits_of(m, got.output)
    index = int(logits[0].argmax())
    heat = grad_cam_of(m, got, cam_name, logits, index)
    notes = prepared.notes + got.notes
    cam = cam_result(m, heat, logits.detach(), index, prepared.picture(), cam_name, "grad-cam",
                     notes)
    result = classification(m, logits, top)
    maps = {n: got.maps[n].detach().clone() for n in needed}
    if head is not None:
        segmentation = head_segmentation(m, head, prepared, [maps[n] for n in head.layers], notes)
    else:
        size = tuple(prepared.batch.shape[-2:])
        segmentation = Segmentation(
            cluster_maps([got.map(n) for n in clusters], size, k=k, seed=seed),
            [f"segment {i}" for i in range(k)], prepared.picture(), None, "clusters", m.name,
            list(clusters), notes)
    fm = FeatureMaps(maps, dict(got.meta), tuple(prepared.batch.shape), prepared.images, notes,
                     m.name)
    return SharedResult(fm, result, cam, segmentation)

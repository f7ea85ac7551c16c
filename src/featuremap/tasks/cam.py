"""Class-activation maps: where in the image the maps raise a class's score.

- :func:`grad_cam`: Grad-CAM on any layer with feature maps ``(N, C, H, W)`` (channels-last
  outputs and transformer tokens included, as the engine lays them out): one forward and one
  backward pass; the channel weights are the spatially averaged gradients of the class score
  (the logit, before softmax) with respect to the layer's maps, the map is the ReLU of their
  weighted sum.
- :func:`cam`: classic CAM (Zhou et al. 2016) where the architecture allows it: the maps feed a
  global average pool and then one ``Linear`` layer (ResNet's ``layer4 -> avgpool -> fc``, the
  bundled model's ``backbone -> classifier.pool -> classifier.fc``). The map is the class's
  ``fc`` weights times the maps, without bias and without ReLU, so ``heatmap.mean() + bias`` is
  the class logit.

Both run on the capture engine: the model in eval mode, nothing about it changed afterwards.

Example:
    >>> result = grad_cam(load_model("shapes"), make_scene(50_000).image,
    ...                   layer="backbone.block4")
    >>> result.heatmap.shape, result.upsampled.shape
    ((8, 8), (64, 64))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featuremap.capture import Captured
from featuremap.errors import ConfigError, DidNotRunError, FeaturemapError, printable
from featuremap.model import Model, as_model
from featuremap.tasks.topk import class_names, logits_of, one_image, pick_class

__all__ = ["CamResult", "cam", "cam_result", "default_cam_layer", "grad_cam", "grad_cam_of"]


@dataclass
class CamResult:
    """A class-activation map of one image.

    Attributes:
        heatmap: ``(h, w)`` float32 at the layer's resolution. Grad-CAM: ReLU of the
            gradient-weighted sum of the maps (>= 0). CAM: the class's ``fc`` weights times the
            maps, no bias, no ReLU (its mean plus the bias is the class logit).
        upsampled: ``(H, W)`` float32, the heatmap resized (bilinear) to the preprocessed input.
        image: ``(3, H, W)`` float32 in ``[0, 1]``, the preprocessed input before normalisation.
        class_index, class_name: the class the map is for.
        score: the class's logit; probability: its softmax probability.
        layer: the layer whose maps were used; method: ``"grad-cam"`` or ``"cam"``.
        model_name: the model's name.
        notes: what was assumed or converted on the way.
    """

    heatmap: np.ndarray = field(repr=False)
    upsampled: np.ndarray = field(repr=False)
    image: np.ndarray = field(repr=False)
    class_index: int
    class_name: str
    score: float
    probability: float
    layer: str
    method: str
    model_name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> tuple[int, int]:
        """``(y, x)`` of the largest value of :attr:`upsampled`, in input pixels."""
        y, x = np.unravel_index(int(np.argmax(self.upsampled)), self.upsampled.shape)
        return int(y), int(x)

    @property
    def title(self) -> str:
        return (f"{self.method} at {self.layer}: '{self.class_name}' "
                f"(p = {self.probability:.3f})")

    def __str__(self) -> str:
        h, w = self.heatmap.shape
        return (f"{self.method} of {printable(self.model_name)} at '{printable(self.layer)}' "
                f"({h}x{w}) for class {self.class_index} '{printable(self.class_name)}' "
                f"(p = {self.probability:.3f}, logit {self.score:.3f}); peak at (y, x) = "
                f"{self.peak}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "model": self.model_name, "layer": self.layer,
                "class_index": self.class_index, "class_name": self.class_name,
                "score": self.score, "probability": self.probability,
                "heatmap": self.heatmap.tolist(), "peak": list(self.peak),
                "notes": list(self.notes)}


def default_cam_layer(model: Any, *, input_size: int | tuple[int, int] | None = None) -> str:
    """The last layer with spatial feature maps before the classifier: the usual CAM layer.

    It is the end of the network's last stage (:meth:`featuremap.model.Model.stages`):
    ``'backbone.block4'`` for ``"shapes"``, ``'layer4'`` for a ResNet. A vision transformer that
    classifies its class token alone (timm's ``global_pool='token'``) gets the end of the stage
    before: the last block's patch tokens never reach that classifier.

    Raises:
        ConfigError: a model without any layer of spatial maps.

    Example:
        >>> default_cam_layer(load_model("shapes"))
        'backbone.block4'
    """
    m = as_model(model)
    names = m.stage_names(input_size)
    return names[-2] if len(names) > 1 and _class_token_only(m) else names[-1]


def _class_token_only(m: Model) -> bool:
    return bool(m.prefix_tokens) and getattr(m.module, "global_pool", None) == "token"


def _suggest(m: Model) -> str:
    try:
        return default_cam_layer(m)
    except FeaturemapError:
        return "layer4"


def cam_result(m: Model, heat: torch.Tensor, logits: torch.Tensor, k: int, picture: np.ndarray,
               layer: str, method: str, notes: list[str] | None = None) -> CamResult:
    """Package a heatmap ``(h, w)`` for class ``k`` of ``logits (1, K)`` as a :class:`CamResult`."""
    names, _ = class_names(m, logits.shape[-1])
    probs = torch.softmax(logits[0].detach().float(), dim=0)
    up = F.interpolate(heat[None, None].detach().float(), size=tuple(picture.shape[1:]),
                       mode="bilinear", align_corners=False)[0, 0]
    return CamResult(
        heatmap=heat.detach().cpu().float().numpy(), upsampled=up.cpu().numpy(),
        image=picture, class_index=k, class_name=names[k], score=float(logits[0, k]),
        probability=float(probs[k]), layer=layer, method=method, model_name=m.name,
        notes=list(notes or []))


def grad_cam_of(m: Model, got: Captured, layer: str, logits: torch.Tensor, k: int
                ) -> torch.Tensor:
    """The Grad-CAM heatmap ``(h, w)`` of class ``k`` from a pass kept with ``keep="graph"``."""
    maps = _maps_of(m, got, layer)
    with torch.enable_grad():  # the score is taken in the graph, even inside torch.no_grad()
        grads = got.grad(logits[0, k], layer)
    if grads is None:
        raise ConfigError(f"the class scores of {m.name} do not depend on layer '{layer}' (a "
                          f"side branch?): pick a layer on the way to the classifier, e.g. "
                          f"'{_suggest(m)}'.")
    if not bool(grads.ne(0).any()):
        why = (" (the classifier reads the class token alone, and nothing after this layer "
               "mixes the patch tokens into it)" if _class_token_only(m) else "")
        raise ConfigError(f"the class score of {m.name} does not change with the maps of layer "
                          f"'{layer}' at any position{why}: pick an earlier layer, e.g. "
                          f"'{_suggest(m)}'.")
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * maps.detach()).sum(dim=1))[0]


def grad_cam(model: Any, image: Any, *, layer: str, class_index: int | str | None = None
             ) -> CamResult:
    """Grad-CAM of one image at ``layer``: where the maps raise the class score.

    One forward and one backward pass: the gradient of the class logit with respect to the
    layer's maps ``A`` (``(C, h, w)``), averaged over space, weights the channels;
    ``heatmap = ReLU(sum_c weight_c * A_c)``. No parameter's ``requires_grad`` or ``.grad``
    changes, and the model's modes are restored.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        image: one image (see :func:`featuremap.tasks.topk.classify`).
        layer: a layer with feature maps, e.g. ``"layer4"``; see :func:`default_cam_layer`.
        class_index: the class (index or name); default: the predicted class.

    Returns:
        A :class:`CamResult` (``method="grad-cam"``).

    Raises:
        ConfigError: a layer whose output is not feature maps (e.g. a Linear layer), a layer
            that does not run, a model without a classifier, a bad class index.
        UnknownNameError: an unknown layer or class name.

    Example:
        >>> r = grad_cam(load_model("shapes"), make_scene(50_000).image, layer="backbone.block4")
        >>> r.heatmap.shape, r.method
        ((8, 8), 'grad-cam')
    """
    m, prepared = one_image(model, image)
    name = m.one_layer(layer)
    got = _run(m, [name], prepared.batch, keep="graph")
    _maps_of(m, got, name)
    logits = logits_of(m, got.output)
    names, _ = class_names(m, logits.shape[-1])
    k = pick_class(class_index, logits, names)
    heat = grad_cam_of(m, got, name, logits, k)
    return cam_result(m, heat, logits.detach(), k, prepared.picture(), name, "grad-cam",
                      prepared.notes + got.notes)


def _run(m: Model, layers: list[str], batch: torch.Tensor, **options: Any) -> Captured:
    try:
        return m.capture(layers, early_stop=False, **options)(batch)
    except DidNotRunError as err:
        raise DidNotRunError(f"{err} Pick a layer the classifier uses, e.g. "
                             f"'{_suggest(m)}'.") from None


def _maps_of(m: Model, got: Captured, name: str) -> torch.Tensor:
    if got.meta[name].is_map:
        return got.maps[name]
    meta = got.meta[name]
    raise ConfigError(f"layer '{name}' ({meta.type}) is not convolutional (output shape "
                      f"{meta.source_shape}: {meta.reason}): class-activation maps need a layer "
                      f"with feature maps (N, C, H, W); e.g. '{_suggest(m)}'.")


def _no_cam(m: Model, why: str) -> ConfigError:
    return ConfigError(
        f"CAM needs the maps to feed a global average pool and then one Linear layer (as "
        f"ResNet's layer4 -> avgpool -> fc or the bundled model's backbone -> classifier.pool -> "
        f"classifier.fc); {m.name} does not: {why}. Use grad_cam(model, image, layer=...) "
        "instead.")


def _check_cam_path(m: Model, name: str, pool: str, fc: str, got: Captured) -> None:
    """The maps must be what the pool averages, and the fc must take that and give the output."""
    maps = _maps_of(m, got, name)
    pooled, fc_in, fc_out = got.inputs.get(pool), got.inputs.get(fc), got.maps.get(fc)
    if pooled is None or fc_in is None or pooled.dim() != 4:
        raise _no_cam(m, f"'{pool}' and '{fc}' are not both on the path to the output")
    if fc_in.reshape(fc_in.shape[0], -1).shape != pooled.shape[:2] or not torch.allclose(
            fc_in.reshape(pooled.shape[:2]), pooled.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5):
        raise _no_cam(m, f"'{fc}' does not take the average-pooled maps of '{pool}' as they are")
    output = got.output
    if not (isinstance(output, torch.Tensor) and output.shape == fc_out.shape
            and torch.allclose(output, fc_out)):
        raise _no_cam(m, f"its output is not the output of '{fc}'")
    if maps.shape != pooled.shape or not torch.allclose(maps, pooled, rtol=1e-4, atol=1e-5):
        raise ConfigError(
            f"CAM uses the maps that feed the global average pool '{pool}' "
            f"{tuple(pooled.shape[1:])}; layer '{name}' {tuple(maps.shape[1:])} is not them: "
            f"use layer '{default_cam_layer(m)}', or grad_cam() for any other layer.")


def cam(model: Any, image: Any, *, layer: str | None = None,
        class_index: int | str | None = None) -> CamResult:
    """Classic class-activation map: the class's ``fc`` weights times the last maps.

    Only for networks whose maps feed a global average pool and then one Linear layer (ResNets,
    the bundled model, ...): then ``heatmap[y, x] = sum_c W[k, c] * A[c, y, x]`` and
    ``heatmap.mean() + b[k]`` is the logit of class ``k``. This is checked on the forward pass.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        image: one image (see :func:`featuremap.tasks.topk.classify`).
        layer: the layer whose maps feed the pool (default: :func:`default_cam_layer`).
        class_index: the class (index or name); default: the predicted class.

    Returns:
        A :class:`CamResult` (``method="cam"``).

    Raises:
        ConfigError: a network without that structure (use :func:`grad_cam`), a layer that is
            not convolutional or not the one feeding the pool, a bad class index.

    Example:
        >>> r = cam(load_model("shapes"), make_scene(50_000).image)
        >>> r.layer, r.heatmap.shape
        ('backbone.block4', (8, 8))
    """
    m, prepared = one_image(model, image)
    head = m.cam_head
    if head is None:
        raise _no_cam(m, "it has no global average pool followed by a Linear layer")
    pool, fc = head
    name = m.one_layer(layer) if layer is not None else default_cam_layer(
        m, input_size=tuple(prepared.batch.shape[2:]))
    got = _run(m, list(dict.fromkeys([name, fc])), prepared.batch, inputs=[pool, fc])
    _check_cam_path(m, name, pool, fc, got)
    logits = logits_of(m, got.output)
    names, _ = class_names(m, logits.shape[-1])
    k = pick_class(class_index, logits, names)
    weight = dict(m.module.named_modules())[fc].weight.detach()[k]
    maps = got.maps[name]
    heat = torch.einsum("c,chw->hw", weight.to(maps.dtype), maps[0])
    return cam_result(m, heat, logits, k, prepared.picture(), name, "cam",
                      prepared.notes + got.notes)

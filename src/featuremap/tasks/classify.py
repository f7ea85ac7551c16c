"""Object recognition on feature maps: top-k classes, class-activation maps, linear probes.

- :func:`classify`: softmax over a classifier's output, the ``top`` classes best first.
- :func:`grad_cam`: Grad-CAM on any layer with feature maps ``(N, C, H, W)``: one forward and
  one backward pass; the channel weights are the spatially averaged gradients of the class score
  (the logit, before softmax) with respect to the layer's maps, the map is the ReLU of their
  weighted sum.
- :func:`cam`: classic CAM (Zhou et al. 2016) where the architecture allows it: the maps feed a
  global average pool and then one ``Linear`` layer (ResNet's ``layer4 -> avgpool -> fc``,
  ShapesNet's ``backbone -> classifier.pool -> classifier.fc``). The map is the class's ``fc``
  weights times the maps, without bias and without ReLU, so ``heatmap.mean() + bias`` is the
  class logit.
- :func:`probe`: linear probes on frozen maps: every requested layer from one forward pass per
  batch, each globally average-pooled to a vector, then one multinomial logistic regression per
  layer, trained on a stratified split and scored on the held-out part.

Models are :class:`featuremap.zoo.Model` objects (from :func:`featuremap.load_model`) or plain
``nn.Module`` objects (wrapped with ImageNet preprocessing and class names ``class i``). Images
are anything :func:`featuremap.extraction.prepare_images` takes: a path, ``"sample:NAME"``, a PIL
image, an array (``(3, H, W)`` floats in ``[0, 1]`` included) or a tensor that is already
preprocessed (used as it is).

Example:
    >>> model = load_model("shapes")
    >>> print(classify(model, make_scene(50_000).image, top=3))  # doctest: +SKIP
    >>> result = grad_cam(model, make_scene(50_000).image, layer="backbone.block4")
    >>> result.heatmap.shape, result.upsampled.shape
    ((8, 8), (64, 64))
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featuremap.errors import ConfigError, FeaturemapError, did_not_run
from featuremap.extraction import Extractor, overview_layers, prepare_images
from featuremap.layers import resolve_layers
from featuremap.zoo import Model, load_model

__all__ = [
    "CamResult",
    "Classification",
    "LinearProbe",
    "ProbeResult",
    "cam",
    "classify",
    "default_cam_layer",
    "grad_cam",
    "probe",
]

_NO_CLASSIFIER_FIX = (
    "use a classification model (e.g. 'shapes' or 'resnet18'), or featuremap.tasks.segment for "
    "per-pixel classes"
)


# ------------------------------------------------------------------------------ shared parts


def _as_model(model: Any) -> Model:
    """A zoo Model as it is; an nn.Module wrapped (eval mode, ImageNet preprocessing)."""
    if isinstance(model, Model):
        return model
    if isinstance(model, nn.Module):
        return load_model(model)
    raise ConfigError(f"model must be a model from featuremap.load_model() or an nn.Module, got "
                      f"{type(model).__name__}.")


def _label(model: Model) -> str:
    return model.name or type(model.module).__name__


def _check_task(model: Model) -> None:
    if model.task == "segmentation":
        raise ConfigError(f"Model '{_label(model)}' is a segmentation model and has no "
                          f"classifier (no class scores per image): {_NO_CLASSIFIER_FIX}.")


def _logits(model: Model, output: Any) -> torch.Tensor:
    """The (N, K) class scores of a forward pass, or a ConfigError saying there are none."""
    if isinstance(output, torch.Tensor) and output.dim() == 2 and output.shape[1] >= 1:
        return output
    found = (f"shape {tuple(output.shape)}" if isinstance(output, torch.Tensor)
             else type(output).__name__)
    raise ConfigError(f"Model '{_label(model)}' has no classifier: its output is {found}, not "
                      f"class scores (N, K); {_NO_CLASSIFIER_FIX}.")


def _device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _prepare(model: Any, image: Any) -> tuple[Model, torch.Tensor, np.ndarray]:
    """Model, a batch (1, C, H, W) ready for it, and the image (3, H, W) in [0, 1]."""
    m = _as_model(model)
    _check_task(m)
    batch, raw, _ = prepare_images(image, m.preprocess, device=_device(m.module))
    if batch.shape[0] != 1:
        raise ConfigError(f"one image at a time, please: got a batch of {batch.shape[0]}.")
    if raw is None:  # a tensor given: it is already normalised, undo that for display
        mean = torch.tensor(m.preprocess.mean, dtype=batch.dtype, device=batch.device)
        std = torch.tensor(m.preprocess.std, dtype=batch.dtype, device=batch.device)
        shown = batch[0] * std.view(-1, 1, 1) + mean.view(-1, 1, 1)
        raw = shown.clamp(0, 1).detach().cpu().float().numpy()[None]
    picture = raw[0]
    if picture.shape[0] == 1:
        picture = np.repeat(picture, 3, axis=0)
    return m, batch, np.ascontiguousarray(picture, dtype=np.float32)


def _class_names(model: Model, k: int) -> tuple[tuple[str, ...], str]:
    """The model's categories when they fit K, else ``class i`` (and a note saying why)."""
    categories = model.categories
    if categories is not None and len(categories) == k:
        return tuple(categories), ""
    names = tuple(f"class {i}" for i in range(k))
    if categories is None:
        return names, "the weights carry no category names: classes are named 'class i'"
    return names, (f"{len(categories)} category names for {k} outputs: classes are named "
                   "'class i'")


def _class_index(index: int | str | None, logits: torch.Tensor, names: Sequence[str]) -> int:
    """The requested class (an index or a name), or the predicted one."""
    k = logits.shape[-1]
    if index is None:
        return int(logits[0].argmax())
    if isinstance(index, str):
        lowered = [n.lower() for n in names]
        if index.lower() in lowered:
            return lowered.index(index.lower())
        from featuremap.errors import unknown_name

        raise unknown_name("class", index, names, hint=f"The model has {k} classes.")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < k:
        raise ConfigError(f"class_index must be an integer in [0, {k - 1}] or a class name, "
                          f"got {index!r}.")
    return int(index)


# ------------------------------------------------------------------------------- classify


@dataclass
class Classification:
    """The classes a model sees in one image.

    Attributes:
        top: ``(index, name, probability)`` best first.
        logits: the classifier's output ``(K,)`` (before softmax), on the CPU.
        model_name: the model's name.
        notes: what was assumed (class names, a ``top`` clamped to K).
    """

    top: list[tuple[int, str, float]]
    logits: torch.Tensor = field(repr=False)
    model_name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of :attr:`logits`, ``(K,)``."""
        return torch.softmax(self.logits.float(), dim=-1)

    def __str__(self) -> str:
        width = max([5] + [len(name) for _, name, _ in self.top])
        lines = [f"{self.model_name}: top {len(self.top)} of {self.logits.shape[-1]} classes",
                 f"{'rank':>4}  {'index':>5}  {'class':<{width}}  probability"]
        lines += [f"{r:>4}  {i:>5}  {name:<{width}}  {p:11.4f}"
                  for r, (i, name, p) in enumerate(self.top, start=1)]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def classify(model: Any, image: Any, *, top: int = 5) -> Classification:
    """The ``top`` classes of one image, best first, with softmax probabilities.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module`` (wrapped with
            ImageNet preprocessing; classes named ``class i``).
        image: one image: a path, ``"sample:NAME"``, PIL image, array, or a preprocessed tensor
            ``(1, C, H, W)`` / ``(C, H, W)``.
        top: how many classes to list (>= 1); more than the model has (K) is clamped to K and
            a note says so.

    Returns:
        A :class:`Classification` (``print()`` it for a table).

    Raises:
        ConfigError: a model without a classifier (a segmentation model, or an output that is
            not ``(N, K)``), ``top < 1``, or more than one image.

    Example:
        >>> result = classify(load_model("shapes"), make_scene(50_000).image, top=2)
        >>> result.top[0][:2]
        (0, 'circle')
    """
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ConfigError(f"top must be an integer >= 1, got {top!r}.")
    m, batch, _ = _prepare(model, image)
    with torch.no_grad():
        logits = _logits(m, m.module(batch))
    return _classification(m, logits, top)


def _classification(m: Model, logits: torch.Tensor, top: int) -> Classification:
    """Top-k of a batch of one's logits ``(1, K)`` (shared with the one-pass analysis)."""
    logits = logits[0].detach().float().cpu()
    k = logits.shape[0]
    names, note = _class_names(m, k)
    notes = [note] if note else []
    if top > k:
        notes.append(f"top={top} clamped to the {k} classes of the model")
    probs = torch.softmax(logits, dim=0)
    values, indices = probs.topk(min(int(top), k))
    best = [(int(i), names[int(i)], float(p)) for p, i in zip(values, indices)]
    return Classification(best, logits, _label(m), notes)


# ---------------------------------------------------------------- class-activation maps


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

    @property
    def peak(self) -> tuple[int, int]:
        """``(y, x)`` of the largest value of :attr:`upsampled`, in input pixels."""
        y, x = np.unravel_index(int(np.argmax(self.upsampled)), self.upsampled.shape)
        return int(y), int(x)

    def __str__(self) -> str:
        h, w = self.heatmap.shape
        return (f"{self.method} of {self.model_name} at '{self.layer}' ({h}x{w}) for class "
                f"{self.class_index} '{self.class_name}' (p = {self.probability:.3f}, logit "
                f"{self.score:.3f}); peak at (y, x) = {self.peak}")


def default_cam_layer(model: Any, *, input_size: int | tuple[int, int] | None = None) -> str:
    """The last layer with spatial feature maps before the classifier: the usual CAM layer.

    It is the end of the network's last stage, as :func:`featuremap.extraction.overview_layers`
    finds it (``'backbone.block4'`` for ``"shapes"``, ``'layer4'`` for a ResNet).

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        input_size: the input size to trace with (default: the model's preprocessing crop or
            resize, else 224).

    Returns:
        A ``named_modules()`` path.

    Raises:
        ConfigError: a model without any layer of spatial maps.

    Example:
        >>> default_cam_layer(load_model("shapes"))
        'backbone.block4'
    """
    m = _as_model(model)
    size = input_size or m.preprocess.crop or m.preprocess.resize or 224
    return overview_layers(m.module, input_size=size, in_channels=m.preprocess.channels)[-1]


def _one_layer(m: Model, layer: str) -> str:
    if not isinstance(layer, str) or not layer:
        raise ConfigError(f"layer must be a layer name such as "
                          f"'{_suggest(m)}', got {layer!r}.")
    names = resolve_layers(m.module, [layer], model_name=m.name or None)
    if len(names) != 1:
        raise ConfigError(f"layer '{layer}' matches {len(names)} layers ({', '.join(names[:4])}"
                          f"{', ...' if len(names) > 4 else ''}): name exactly one.")
    return names[0]


def _suggest(m: Model) -> str:
    try:
        return default_cam_layer(m)
    except FeaturemapError:
        return "layer4"


class _NotMaps(Exception):
    """Raised inside a hook: the layer's output is not (N, C, H, W)."""

    def __init__(self, found: str) -> None:
        super().__init__(found)
        self.found = found


def _describe_output(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return f"output shape {tuple(output.shape)}"
    return f"output {type(output).__name__}"


def _not_convolutional(m: Model, name: str, found: str) -> ConfigError:
    kind = type(dict(m.module.named_modules())[name]).__name__
    return ConfigError(f"layer '{name}' ({kind}) is not convolutional ({found}): "
                       f"class-activation maps need a layer with feature maps (N, C, H, W); "
                       f"e.g. '{_suggest(m)}'.")


def _did_not_run(m: Model, name: str) -> ConfigError:
    return ConfigError(f"{did_not_run([name], _label(m))} Pick a layer the classifier uses, "
                       f"e.g. '{_suggest(m)}'.")


def _tapped_forward(m: Model, name: str, batch: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Forward pass whose layer ``name`` hands on a copy of its maps that autograd can reach.

    The maps are a fresh leaf that requires grad; the rest of the network gets a clone of it,
    so in-place operations after the layer (``ReLU(inplace=True)``) change neither the maps nor
    their gradient, and no parameter's ``requires_grad`` is touched.
    """
    box: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if "maps" in box:  # a module called again (ResNet's shared ReLU): first call only
            return None
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            raise _NotMaps(_describe_output(output))
        box["maps"] = output.detach().clone().requires_grad_(True)
        return box["maps"].clone()

    handle = dict(m.module.named_modules())[name].register_forward_hook(hook)
    found = ""
    try:
        with torch.enable_grad():
            output = m.module(batch)
    except _NotMaps as not_maps:
        found = not_maps.found
    finally:
        handle.remove()
    if found:  # raised here, once the hook is gone: the message traces the model again
        raise _not_convolutional(m, name, found)
    if "maps" not in box:
        raise _did_not_run(m, name)
    return box["maps"], output


def _upsample(heat: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    up = F.interpolate(heat[None, None].float(), size=size, mode="bilinear", align_corners=False)
    return up[0, 0].detach().cpu().numpy().astype(np.float32)


def _result(m: Model, heat: torch.Tensor, logits: torch.Tensor, k: int, picture: np.ndarray,
            layer: str, method: str) -> CamResult:
    names, _ = _class_names(m, logits.shape[-1])
    probs = torch.softmax(logits[0].detach().float(), dim=0)
    return CamResult(
        heatmap=heat.detach().cpu().float().numpy(),
        upsampled=_upsample(heat, tuple(picture.shape[1:])),
        image=picture, class_index=k, class_name=names[k], score=float(logits[0, k]),
        probability=float(probs[k]), layer=layer, method=method, model_name=_label(m))


def grad_cam(model: Any, image: Any, *, layer: str, class_index: int | str | None = None
             ) -> CamResult:
    """Grad-CAM of one image at ``layer``: where the maps raise the class score.

    One forward and one backward pass: the gradient of the class logit with respect to the
    layer's maps ``A`` (``(C, h, w)``), averaged over space, weights the channels;
    ``heatmap = ReLU(sum_c weight_c * A_c)``. The hook is removed afterwards, no parameter's
    ``requires_grad`` or ``.grad`` changes, and the model stays in eval mode.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        image: one image (see :func:`classify`).
        layer: a layer with feature maps ``(N, C, H, W)``, e.g. ``"layer4"``; see
            :func:`default_cam_layer`.
        class_index: the class (index or name); default: the predicted class.

    Returns:
        A :class:`CamResult` (``method="grad-cam"``).

    Raises:
        ConfigError: a layer whose output is not ``(N, C, H, W)`` (e.g. a Linear layer), a
            layer that does not run, a model without a classifier, a bad class index.
        UnknownNameError: an unknown layer or class name.

    Example:
        >>> r = grad_cam(load_model("shapes"), make_scene(50_000).image, layer="backbone.block4")
        >>> r.heatmap.shape, r.method
        ((8, 8), 'grad-cam')
    """
    m, batch, picture = _prepare(model, image)
    name = _one_layer(m, layer)
    maps, output = _tapped_forward(m, name, batch)
    logits = _logits(m, output)
    names, _ = _class_names(m, logits.shape[-1])
    k = _class_index(class_index, logits, names)
    with torch.enable_grad():  # even inside a caller's torch.no_grad()
        (grads,) = torch.autograd.grad(logits[0, k], maps, allow_unused=True)
    if grads is None:
        raise ConfigError(f"the class scores of {_label(m)} do not depend on layer '{name}' (a "
                          f"side branch?): pick a layer on the way to the classifier, e.g. "
                          f"'{_suggest(m)}'.")
    weights = grads.mean(dim=(2, 3), keepdim=True)
    heat = torch.relu((weights * maps.detach()).sum(dim=1))[0]
    return _result(m, heat, logits.detach(), k, picture, name, "grad-cam")


def _cam_head(m: Model) -> tuple[str, str]:
    """Names of the global average pool and the Linear layer after it, or a ConfigError."""
    modules = list(m.module.named_modules())
    linear = [i for i, (_, mod) in enumerate(modules) if isinstance(mod, nn.Linear)]
    pools = [i for i, (_, mod) in enumerate(modules) if isinstance(mod, nn.AdaptiveAvgPool2d)
             and mod.output_size in (1, (1, 1))]
    pools = [i for i in pools if linear and i < linear[-1]]
    if not pools:
        raise _no_cam(m, "it has no global average pool followed by a Linear layer")
    return modules[pools[-1]][0], modules[linear[-1]][0]


def _no_cam(m: Model, why: str) -> ConfigError:
    return ConfigError(
        f"CAM needs the maps to feed a global average pool and then one Linear layer (as "
        f"ResNet's layer4 -> avgpool -> fc or ShapesNet's backbone -> classifier.pool -> "
        f"classifier.fc); {_label(m)} does not: {why}. Use grad_cam(model, image, layer=...) "
        "instead.")


def _cam_forward(m: Model, name: str, pool: str, fc: str, batch: torch.Tensor
                 ) -> dict[str, Any]:
    """One forward pass (no grad) keeping the layer's maps, the pool's input, the fc's in/out."""
    seen: dict[str, Any] = {}
    modules = dict(m.module.named_modules())

    def keep(key: str, value: Any) -> None:
        if key not in seen:
            seen[key] = value.detach().clone() if isinstance(value, torch.Tensor) else value

    handles = [
        modules[name].register_forward_hook(lambda _m, _i, o: keep("maps", o)),
        modules[pool].register_forward_pre_hook(lambda _m, i: keep("pooled", i[0])),
        modules[fc].register_forward_pre_hook(lambda _m, i: keep("fc_in", i[0])),
        modules[fc].register_forward_hook(lambda _m, _i, o: keep("fc_out", o)),
    ]
    try:
        with torch.no_grad():
            seen["output"] = m.module(batch)
    finally:
        for h in handles:
            h.remove()
    return seen


def _check_cam_path(m: Model, name: str, pool: str, fc: str, seen: dict[str, Any]) -> None:
    """The maps must be what the pool averages, and the fc must take that and give the output."""
    if "maps" not in seen:
        raise _did_not_run(m, name)
    maps = seen["maps"]
    if not isinstance(maps, torch.Tensor) or maps.dim() != 4:
        raise _not_convolutional(m, name, _describe_output(maps))
    pooled, fc_in, fc_out = (seen.get(k) for k in ("pooled", "fc_in", "fc_out"))
    if pooled is None or fc_in is None or pooled.dim() != 4:
        raise _no_cam(m, f"'{pool}' and '{fc}' are not both on the path to the output")
    if fc_in.reshape(fc_in.shape[0], -1).shape != pooled.shape[:2] or not torch.allclose(
            fc_in.reshape(pooled.shape[:2]), pooled.mean(dim=(2, 3)), rtol=1e-4, atol=1e-5):
        raise _no_cam(m, f"'{fc}' does not take the average-pooled maps of '{pool}' as they are")
    output = seen["output"]
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
    ShapesNet, ...): then ``heatmap[y, x] = sum_c W[k, c] * A[c, y, x]`` and
    ``heatmap.mean() + b[k]`` is the logit of class ``k``. This is checked on the forward pass.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        image: one image (see :func:`classify`).
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
    m, batch, picture = _prepare(model, image)
    pool, fc = _cam_head(m)
    name = _one_layer(m, layer) if layer is not None else default_cam_layer(
        m, input_size=tuple(batch.shape[2:]))
    seen = _cam_forward(m, name, pool, fc, batch)
    _check_cam_path(m, name, pool, fc, seen)
    logits = _logits(m, seen["output"])
    names, _ = _class_names(m, logits.shape[-1])
    k = _class_index(class_index, logits, names)
    weight = dict(m.module.named_modules())[fc].weight.detach()[k]
    heat = torch.einsum("c,chw->hw", weight.to(seen["maps"].dtype), seen["maps"][0])
    return _result(m, heat, logits, k, picture, name, "cam")


# ---------------------------------------------------------------------------- linear probes


@dataclass
class LinearProbe:
    """One layer's probe: ``logits = ((x - mean) / std) @ weight.T + bias``.

    Attributes:
        layer: the layer name; dim: the feature dimension (channels).
        train_accuracy, test_accuracy: fraction correct on the training and held-out split.
        weight ``(K, dim)``, bias ``(K,)``, mean and std ``(dim,)``: float32 tensors.
    """

    layer: str
    dim: int
    train_accuracy: float
    test_accuracy: float
    weight: torch.Tensor = field(repr=False)
    bias: torch.Tensor = field(repr=False)
    mean: torch.Tensor = field(repr=False)
    std: torch.Tensor = field(repr=False)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Class indices ``(N,)`` of pooled features ``(N, dim)``."""
        z = (features.float() - self.mean) / self.std
        return (z @ self.weight.T + self.bias).argmax(dim=1)


@dataclass
class ProbeResult:
    """Linear probes of several layers on one dataset.

    Attributes:
        model_name: the model probed.
        classes: class names (the sub-folder names, sorted); index ``i`` is class ``i``.
        probes: one :class:`LinearProbe` per layer, in request order.
        n_train, n_test: images in each split.
        skipped: ``{path: reason}`` of files that could not be read.
        seed, test_fraction, l2: the settings used.
    """

    model_name: str
    classes: tuple[str, ...]
    probes: dict[str, LinearProbe]
    n_train: int
    n_test: int
    skipped: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    test_fraction: float = 0.25
    l2: float = 1e-3

    @property
    def layers(self) -> list[str]:
        """The layers probed, in request order."""
        return list(self.probes)

    @property
    def n_used(self) -> int:
        """Images read and used (train + test)."""
        return self.n_train + self.n_test

    @property
    def train_accuracy(self) -> dict[str, float]:
        """``{layer: training accuracy}``."""
        return {k: p.train_accuracy for k, p in self.probes.items()}

    @property
    def test_accuracy(self) -> dict[str, float]:
        """``{layer: held-out accuracy}``."""
        return {k: p.test_accuracy for k, p in self.probes.items()}

    def __str__(self) -> str:
        width = max([5] + [len(k) for k in self.probes])
        lines = [f"linear probes of {self.model_name}: {len(self.classes)} classes, "
                 f"{self.n_train} train / {self.n_test} test images, {len(self.skipped)} "
                 "skipped",
                 f"{'layer':<{width}}  {'dim':>5}  {'train acc':>9}  {'test acc':>8}"]
        lines += [f"{k:<{width}}  {p.dim:>5}  {p.train_accuracy:9.3f}  {p.test_accuracy:8.3f}"
                  for k, p in self.probes.items()]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """What the JSON sidecar holds (everything but the tensors)."""
        return {
            "format": "featuremap-probes/1", "model": self.model_name, "layers": self.layers,
            "classes": list(self.classes), "pooling": "global average over (H, W)",
            "accuracy": {k: {"train": p.train_accuracy, "test": p.test_accuracy, "dim": p.dim}
                         for k, p in self.probes.items()},
            "n_train": self.n_train, "n_test": self.n_test, "n_skipped": len(self.skipped),
            "skipped": dict(self.skipped), "seed": self.seed,
            "test_fraction": self.test_fraction, "l2": self.l2,
        }

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False
             ) -> tuple[Path, Path]:
        """Write the probes to ``path`` (``.safetensors``) and a ``.json`` sidecar beside it.

        The safetensors file holds ``{layer}.weight`` ``(K, dim)``, ``{layer}.bias``,
        ``{layer}.mean`` and ``{layer}.std`` per layer (float32); the sidecar holds
        :meth:`summary` (layers, classes, accuracies, model name, settings).

        Args:
            path: a file name ending in ``.safetensors``.
            overwrite: replace existing files (refused by default).

        Returns:
            ``(weights path, json path)``.

        Raises:
            ConfigError: another suffix, or a file that exists and ``overwrite`` is False.
        """
        from safetensors.torch import save_file

        target = Path(path)
        if target.suffix.lower() != ".safetensors":
            raise ConfigError(f"probes are saved as .safetensors, got '{target}': name the file "
                              "e.g. 'probes.safetensors'.")
        sidecar = target.with_suffix(".json")
        for p in (target, sidecar):
            if p.exists() and not overwrite:
                raise ConfigError(f"'{p}' exists: pass overwrite=True (--overwrite) or pick "
                                  "another name.")
        tensors = {f"{k}.{part}": getattr(p, part).detach().float().contiguous().cpu()
                   for k, p in self.probes.items() for part in ("weight", "bias", "mean", "std")}
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(target), metadata={"format": "featuremap-probes/1",
                                                  "model": self.model_name,
                                                  "classes": json.dumps(list(self.classes))})
        sidecar.write_text(json.dumps(self.summary(), indent=2) + "\n")
        return target, sidecar


_LAYOUT = "expected one sub-folder per class: DATA_DIR/<class>/<image files>"


def _scan(data_dir: str | os.PathLike[str]) -> tuple[tuple[str, ...], list[list[Path]]]:
    """Class names (sorted sub-folders) and the files of each (hidden entries ignored)."""
    root = Path(data_dir)
    if not root.exists():
        raise ConfigError(f"data folder '{root}' does not exist; {_LAYOUT}.")
    if not root.is_dir():
        raise ConfigError(f"'{root}' is not a folder; {_LAYOUT}.")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ConfigError(f"'{root}' has no class sub-folders; {_LAYOUT}.")
    if len(folders) < 2:
        raise ConfigError(f"'{root}' has one class ('{folders[0].name}'); a probe needs at least "
                          f"2 classes; {_LAYOUT}.")
    files = [sorted(p for p in folder.rglob("*") if p.is_file()
                    and not any(part.startswith(".") for part in p.relative_to(folder).parts))
             for folder in folders]
    return tuple(f.name for f in folders), files


def _pool(maps: torch.Tensor, layer: str) -> torch.Tensor:
    """One vector per image: (N, C, H, W) averaged over H, W; (N, L, D) over L; (N, D) as is."""
    if maps.dim() == 4:
        return maps.float().mean(dim=(2, 3))
    if maps.dim() == 3:
        return maps.float().mean(dim=1)
    if maps.dim() == 2:
        return maps.float()
    raise ConfigError(f"layer '{layer}' gives {tuple(maps.shape)}; a probe needs (N, C, H, W), "
                      "(N, L, D) or (N, D).")


def _read(m: Model, path: Path, skipped: dict[str, str]) -> np.ndarray | None:
    try:
        return m.preprocess.normalise(m.preprocess.load(path))
    except (FeaturemapError, OSError) as err:
        skipped[str(path)] = str(err).splitlines()[0] if str(err) else type(err).__name__
        return None


def _run_batch(extractor: Extractor, images: list[np.ndarray], device: torch.device
               ) -> dict[str, torch.Tensor]:
    """Pooled features of one batch; images of different sizes go through in separate runs."""
    pooled: dict[str, list[torch.Tensor]] = {n: [] for n in extractor.layers}
    order: list[int] = []
    for shape in dict.fromkeys(im.shape for im in images):
        index = [i for i, im in enumerate(images) if im.shape == shape]
        batch = torch.from_numpy(np.stack([images[i] for i in index])).to(device)
        maps, _ = extractor.run(batch)
        for n in extractor.layers:
            pooled[n].append(_pool(maps[n], n).cpu())
        order += index
    inverse = torch.argsort(torch.tensor(order))
    return {n: torch.cat(v)[inverse] for n, v in pooled.items()}


def _features(m: Model, extractor: Extractor, files: list[tuple[Path, int]], batch_size: int,
              progress: Callable[[int, int], Any] | None
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, str]]:
    """Pooled features of every readable file, their labels, and the skipped files."""
    skipped: dict[str, str] = {}
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in extractor.layers}
    labels: list[int] = []
    pending: list[np.ndarray] = []
    device = _device(m.module)
    for done, (path, label) in enumerate(files, start=1):
        image = _read(m, path, skipped)
        if image is not None:
            pending.append(image)
            labels.append(label)
        if pending and (len(pending) == batch_size or done == len(files)):
            for n, v in _run_batch(extractor, pending, device).items():
                chunks[n].append(v)
            pending = []
            if progress is not None:
                progress(done, len(files))
    if not labels:
        raise ConfigError(f"none of the {len(files)} files could be read as an image (first: "
                          f"{next(iter(skipped.values()), 'no files')}).")
    return ({n: torch.cat(v) for n, v in chunks.items()},
            torch.tensor(labels, dtype=torch.long), skipped)


def _split(labels: torch.Tensor, classes: Sequence[str], test_fraction: float, seed: int,
           skipped: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified split: per class a seeded permutation, ``round(n * fraction)`` (>= 1) held out."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c, name in enumerate(classes):
        index = np.flatnonzero(labels.numpy() == c)
        if len(index) < 2:
            raise ConfigError(
                f"class '{name}' has {len(index)} readable image(s) ({skipped} file(s) skipped "
                "in all); a train/test split needs at least 2 per class.")
        index = index[rng.permutation(len(index))]
        n_test = min(len(index) - 1, max(1, round(len(index) * test_fraction)))
        test += index[:n_test].tolist()
        train += index[n_test:].tolist()
    return torch.tensor(sorted(train)), torch.tensor(sorted(test))


def _fit(x: torch.Tensor, y: torch.Tensor, k: int, l2: float, max_iter: int = 300
         ) -> tuple[torch.Tensor, ...]:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS, float64).

    Starts from zeros, so the fit is deterministic; ``l2 / 2 * |W|^2`` is added to the mean
    cross-entropy.
    """
    x = x.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    z = (x - mean) / std
    weight = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return (weight.detach().float(), bias.detach().float(), mean.float(), std.float())


def _accuracy(p: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> float:
    return int((p.predict(x) == y).sum()) / len(y)


def _check_probe_options(test_fraction: float, batch_size: int, l2: float) -> None:
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1, got {test_fraction!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    if not isinstance(l2, (int, float)) or l2 < 0:
        raise ConfigError(f"l2 must be >= 0, got {l2!r}.")


def probe(
    model: Any,
    data_dir: str | os.PathLike[str],
    *,
    layers: str | Sequence[str],
    test_fraction: float = 0.25,
    seed: int = 0,
    batch_size: int = 32,
    l2: float = 1e-3,
    progress: Callable[[int, int], Any] | None = None,
) -> ProbeResult:
    """Linear probes: how well a linear classifier reads the classes off each layer's maps.

    Every requested layer comes from one forward pass per batch (an
    :class:`~featuremap.extraction.Extractor` that stops after the last of them; the model's own
    preprocessing). Each layer's maps ``(N, C, H, W)`` are averaged over ``H, W`` to ``(N, C)``
    (``(N, D)`` outputs are used as they are, ``(N, L, D)`` token outputs averaged over ``L``).
    Per layer, a multinomial logistic regression on features standardised with the training
    split's mean and std (L-BFGS from zeros, ``l2``) is fit on the training split and scored on
    the held-out split. The split is stratified and seeded: per class, a seeded permutation of
    its readable files (sorted by path) holds out ``round(n * test_fraction)`` of them (at
    least 1, at most ``n - 1``). Same data, seed and machine: same result.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        data_dir: a folder with one sub-folder per class holding image files (any format
            :func:`featuremap.images.load_image` reads; hidden files are ignored; files that
            cannot be read are skipped and listed in ``skipped``).
        layers: layer names, globs or regexes (``named_modules()`` paths).
        test_fraction: share of each class held out, in (0, 1).
        seed: seed of the split.
        batch_size: images per forward pass.
        l2: L2 penalty on the probe weights.
        progress: called as ``progress(files_done, files_total)`` after each batch.

    Returns:
        A :class:`ProbeResult`; ``result.save("probes.safetensors")`` writes it.

    Raises:
        ConfigError: a missing data folder or not a folder, no class sub-folders, fewer than 2
            classes, no readable image, a class with fewer than 2 readable images, bad options.
        UnknownNameError: an unknown layer.

    Example:
        >>> r = probe(load_model("shapes"), "shapes_data", layers=["backbone.block1",
        ...           "backbone.block4"])  # doctest: +SKIP
        >>> r.test_accuracy  # doctest: +SKIP
        {'backbone.block1': 0.46, 'backbone.block4': 1.0}
    """
    _check_probe_options(test_fraction, batch_size, l2)
    m = _as_model(model)
    classes, per_class = _scan(data_dir)
    extractor = Extractor(m, layers)
    files = [(path, c) for c, paths in enumerate(per_class) for path in paths]
    if not files:
        raise ConfigError(f"the class folders of '{data_dir}' hold no files; {_LAYOUT}.")
    features, labels, skipped = _features(m, extractor, files, batch_size, progress)
    train, test = _split(labels, classes, test_fraction, seed, len(skipped))
    probes = {}
    for name, x in features.items():
        weight, bias, mean, std = _fit(x[train], labels[train], len(classes), l2)
        p = LinearProbe(name, x.shape[1], 0.0, 0.0, weight, bias, mean, std)
        p.train_accuracy = _accuracy(p, x[train], labels[train])
        p.test_accuracy = _accuracy(p, x[test], labels[test])
        probes[name] = p
    return ProbeResult(_label(m), classes, probes, len(train), len(test), skipped, seed,
                       float(test_fraction), float(l2))

"""Load a network by name: the bundled model, torchvision, timm, or your own ``nn.Module``.

:func:`load_model` returns a :class:`Model`: the module in eval mode with the preprocessing its
weights expect, its category names and a plain account of what was loaded and assumed
(``notes``). Nothing is downloaded unless published weights are asked for, and then only into
torch's own cache (``torch.hub.get_dir()/checkpoints``), which is reused offline.

Weights (``weights=``):

- ``None``: random init (a ``UserWarning`` and a note say that untrained maps show no learned
  features); for an ``nn.Module`` or the bundled model: the weights it already has.
- ``"DEFAULT"``, a weights name (``"IMAGENET1K_V1"``) or a qualified one
  (``"ResNet18_Weights.IMAGENET1K_V1"``): torchvision's published weights, with their
  preprocessing and categories (for ``timm:`` models: timm's pretrained weights).
- a path to a ``.pth`` / ``.pt`` file (``torch.load(weights_only=True)``: a state dict, or a dict
  holding one under ``'state_dict'``, ``'model'`` or ``'model_state_dict'``; a ``'module.'``
  prefix is stripped) or a ``.safetensors`` file; or a state dict (a mapping of tensors). Files
  and state dicts are read and fitted to the network by :mod:`featuremap.weights`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from featuremap.errors import ModelError, WeightsError, one_line, unknown_name
from featuremap.model import Model
from featuremap.preprocess import Preprocess
from featuremap.weights import load_weights, weights_kind

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["Model", "RANDOM_NOTE", "list_models", "load_model"]  # Model: featuremap.model

RANDOM = "random"  # weights="random" (or "none"): random init, for any model, the bundled one too
RANDOM_NOTE = (
    "random weights: untrained maps show no learned features; load trained ones with "
    "weights='DEFAULT' (--weights DEFAULT) or a weights file"
)
_MODELS_HINT = "Run 'featuremap models' to list them."

# ---------------------------------------------------------------------------------- listing


@lru_cache(maxsize=1)
def _torchvision_tasks() -> dict[str, str]:
    """``{name: task}`` for torchvision's classification and segmentation models."""
    from torchvision import models

    tasks = dict.fromkeys(models.list_models(module=models), "classification")
    tasks.update(dict.fromkeys(models.list_models(module=models.segmentation), "segmentation"))
    return tasks


def list_models() -> dict[str, str]:
    """List the model names :func:`load_model` accepts (timm's are accepted as ``timm:NAME``).

    Returns:
        ``{name: description}``: ``"shapes"`` (the bundled model) first, then torchvision's
        classification and segmentation models, sorted, e.g. ``"classification (torchvision;
        DEFAULT = ResNet18_Weights.IMAGENET1K_V1, 11.7M params)"``.

    Example:
        >>> list_models()["fcn_resnet50"].split(" ")[0]
        'segmentation'
    """
    from torchvision.models import get_model_weights

    found = {"shapes": "classification (bundled; small CNN trained on synthetic shapes)"}
    for name, task in sorted(_torchvision_tasks().items()):
        default = get_model_weights(name).DEFAULT
        millions = default.meta.get("num_params", 0) / 1e6
        found[name] = f"{task} (torchvision; DEFAULT = {default}, {millions:.1f}M params)"
    return found


# ------------------------------------------------------------------------------------ door


def load_model(
    name_or_module: str | nn.Module,
    *,
    weights: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> Model:
    """Load a network with its preprocessing, categories and weights.

    Args:
        name_or_module: ``"shapes"`` (the bundled model), a torchvision model name (see
            :func:`list_models`), ``"timm:NAME"`` (needs ``pip install 'featuremap[timm]'``), or
            an ``nn.Module`` (wrapped as is, ImageNet preprocessing assumed).
        weights: ``None`` or ``"random"`` (random init, with a warning; for ``"shapes"``,
            ``None`` and ``"DEFAULT"`` mean its bundled weights and only ``"random"`` gives an
            untrained copy), ``"DEFAULT"`` or a weights name, a
            ``.pth`` / ``.pt`` / ``.safetensors`` path, or a state dict (see the module docstring).
        device: where to put it: ``"cpu"`` (None: the default), ``"cuda"``, ``"cuda:1"``,
            ``"mps"``, or ``"auto"`` (CUDA when available).

    Returns:
        A :class:`Model` whose module is in eval mode.

    Raises:
        UnknownNameError: an unknown model or weights name (with did-you-mean suggestions).
        WeightsError: weights that cannot be downloaded (offline: the message says where to put
            the file), a missing, empty, corrupt or unsupported file, or a state dict that does
            not fit the model (counts and the first keys that differ).
        ModelError: ``timm:`` without timm installed, or a bad argument.

    Example:
        >>> model = load_model("resnet18", weights="DEFAULT")  # doctest: +SKIP
        >>> model.categories[:2], model.preprocess.crop  # doctest: +SKIP
        (('tench', 'goldfish'), 224)
    """
    from torch import nn

    from featuremap.model import resolve_device

    target = resolve_device(device)  # an unknown device is refused before any loading
    if isinstance(weights, str) and weights.strip().lower() in (RANDOM, "none"):
        weights = RANDOM
    if isinstance(name_or_module, str) and name_or_module.strip().lower() == "shapes":
        return _finish(_from_shapes(weights), target)
    weights = None if weights == RANDOM else weights
    if isinstance(name_or_module, nn.Module):
        model = _from_module(name_or_module, weights)
    elif not isinstance(name_or_module, str) or not name_or_module.strip():
        raise ModelError(
            f"A model must be a name or an nn.Module, got {name_or_module!r}. {_MODELS_HINT}"
        )
    elif name_or_module.strip().lower().startswith("timm:"):
        model = _from_timm(name_or_module.strip()[5:], weights)
    else:
        model = _from_torchvision(name_or_module.strip().lower(), weights)
    return _finish(model, target)


def _finish(model: Model, device: torch.device) -> Model:
    """Eval mode, the capabilities the module has, the device; warn about random weights."""
    from featuremap.model import feature_stages, own_segmentation

    model.module.eval()
    if model.segmentation is None:
        model.segmentation = own_segmentation(model.module)
    if model.stage_layers is None:
        model.stage_layers = feature_stages(model.module)
    if model.prefix_tokens is None:
        model.prefix_tokens = getattr(model.module, "num_prefix_tokens", None)
    model.module.to(device)
    if model.weights == "random init":
        warnings.warn(f"{model.name}: {RANDOM_NOTE}", UserWarning, stacklevel=3)
    return model


# ------------------------------------------------------------------------------ the sources


def _from_module(module: nn.Module, weights: Any) -> Model:
    """Wrap a module passed in; load a weights file or state dict into it if given."""
    model = Model.wrap(module)
    if weights is not None:
        if weights_kind(weights) == "name":
            raise WeightsError(
                f"Named weights ({weights!r}) need a model name, not a module: pass a weights "
                "file or a state dict, or load the module's weights yourself."
            )
        model.module, model.weights = load_weights(module, weights, label=model.name,
                                                   notes=model.notes)
    return model


def _from_shapes(weights: Any) -> Model:
    """The bundled model (featuremap.bundled.network), optionally with other weights."""
    from featuremap.bundled import network as shapenet

    module, meta = shapenet.bundled()
    random = isinstance(weights, str) and weights.lower() == RANDOM
    if random:  # the same architecture, untrained: to compare with what training learned
        module = type(module)(**meta.get("config", {}))
    size = meta["input_size"]
    size = int(size[-1]) if isinstance(size, (tuple, list)) else int(size)
    mean, std = tuple(meta["mean"]), tuple(meta["std"])
    preprocess = Preprocess(resize=size, crop=size, mean=mean, std=std, channels=len(mean))
    notes: list[str] = []
    described = str(meta.get("weights", "bundled"))
    if random:
        described, notes = "random init", [RANDOM_NOTE]
    elif weights is not None and not (isinstance(weights, str) and weights.upper() == "DEFAULT"):
        if weights_kind(weights) == "name":
            raise WeightsError(
                f"The bundled model 'shapes' has its own weights; weights={weights!r} is not one "
                "of them. Pass nothing, a weights file or a state dict."
            )
        module, described = load_weights(module, weights, label="shapes", notes=notes)
    categories = tuple(meta["categories"])
    head = shapenet.segmentation_head(module)
    return Model(module, "shapes", preprocess, categories, meta.get("task", "classification"),
                 described, notes, head, stage_layers=head.layers if head else None)


def _from_torchvision(name: str, weights: Any) -> Model:
    """A torchvision classification or segmentation model."""
    task = _torchvision_tasks().get(name)
    if task is None:
        raise unknown_name("model", name, list_models(), hint=_MODELS_HINT)
    if weights is not None and weights_kind(weights) == "name":
        return _published(name, task, str(weights))
    from torchvision.models import get_model_weights

    extra = _builder_extras(name)
    module = _build(name, extra)
    preprocess = Preprocess()
    if task == "segmentation":
        preprocess = _preprocess_of(get_model_weights(name).DEFAULT)
    notes = [f"preprocess: assumed {preprocess.describe()}"]
    if weights is None:
        return Model(module, name, preprocess, None, task, "random init", [RANDOM_NOTE, *notes])

    def rebuild(**kwargs: Any) -> nn.Module:
        return _build(name, {**extra, **kwargs})

    module, described = load_weights(module, weights, label=name, rebuild=rebuild, notes=notes)
    notes.append(_numbered(module))
    return Model(module, name, preprocess, None, task, described, notes)


def _builder_extras(name: str) -> dict[str, Any]:
    """``weights_backbone=None`` for builders that take it, so nothing is downloaded."""
    import inspect

    from torchvision.models import get_model_builder

    params = inspect.signature(get_model_builder(name)).parameters
    return {"weights_backbone": None} if "weights_backbone" in params else {}


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    from torchvision.models import get_model

    return get_model(name, weights=None, **kwargs)


def _from_timm(name: str, weights: Any) -> Model:
    """``timm.create_model(name)``; pretrained weights through timm when asked by name."""
    try:
        import timm
    except ImportError:
        raise ModelError(
            f"Model 'timm:{name}' needs timm, which is not installed: "
            "pip install 'featuremap[timm]'."
        ) from None
    if name.split(".")[0] not in set(timm.list_models()):
        raise unknown_name("timm model", name, timm.list_models(),
                           hint="See timm.list_models() for the names.")
    kind = weights_kind(weights) if weights is not None else "none"
    module = _timm_create(timm, name, weights if kind == "name" else None)
    preprocess = _timm_preprocess(getattr(module, "pretrained_cfg", None) or {})
    notes = [f"preprocess: from timm's pretrained_cfg ({preprocess.describe()})"]
    if kind == "none":
        return Model(module, f"timm:{name}", preprocess, None, "classification", "random init",
                     [RANDOM_NOTE, *notes])
    if kind == "name":
        return Model(module, f"timm:{name}", preprocess, None, "classification",
                     f"{weights} (timm pretrained)", notes + [_numbered(module)])

    def rebuild(**kwargs: Any) -> nn.Module:
        if set(kwargs) - {"num_classes"}:
            raise ModelError("timm models are rebuilt with num_classes only")
        return timm.create_model(name, pretrained=False, **kwargs)

    module, described = load_weights(module, weights, label=f"timm:{name}", rebuild=rebuild,
                                     notes=notes)
    notes.append(_numbered(module))
    return Model(module, f"timm:{name}", preprocess, None, "classification", described, notes)


def _timm_create(timm: Any, name: str, weights: str | None) -> nn.Module:
    """Create a timm model; weights ``"DEFAULT"`` or a tag (``name.tag``) load pretrained ones."""
    if weights is None:
        return timm.create_model(name, pretrained=False)
    full = name if weights.upper() == "DEFAULT" else f"{name.split('.')[0]}.{weights}"
    try:
        return timm.create_model(full, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - timm/huggingface raise many kinds when offline
        raise WeightsError(
            f"Cannot load timm's pretrained weights for '{full}' ({one_line(exc)}). When offline, "
            "pass a weights file instead (--weights FILE)."
        ) from None


def _timm_preprocess(cfg: Mapping[str, Any]) -> Preprocess:
    """Preprocess from a timm ``pretrained_cfg`` (input_size, crop_pct, mean, std)."""
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    mean = tuple(cfg.get("mean", Preprocess.mean))
    std = tuple(cfg.get("std", Preprocess.std))
    return Preprocess(resize=int(size / crop_pct), crop=size, mean=mean, std=std,
                      channels=len(mean))


# ---------------------------------------------------------------- published (torchvision)


def _published(name: str, task: str, requested: str) -> Model:
    """Build ``name`` with published weights, downloading them into torch's cache if needed."""
    from torchvision.models import get_model

    weights = _resolve_weights(name, requested)
    path = _fetch(name, weights)
    try:  # the builder applies the weights' own settings (num_classes, aux heads, image size)
        module = get_model(name, weights=weights, **_builder_extras(name))
    except Exception as exc:  # noqa: BLE001 - torch.load and load_state_dict raise many kinds
        raise WeightsError(
            f"Cannot load the cached weights file {path} for {weights} ({one_line(exc)}). "
            "Delete it to download it again, or pass a weights file (--weights FILE)."
        ) from None
    label = f"DEFAULT ({weights})" if requested.upper() == "DEFAULT" else str(weights)
    categories = weights.meta.get("categories")
    return Model(module, name, _preprocess_of(weights), tuple(categories) if categories else None,
                 task, label, [f"weights file: {path}"])


def _resolve_weights(name: str, requested: str) -> Any:
    """The torchvision weights enum member of ``name`` called ``requested``."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    members = dict(enum.__members__)
    prefix, _, member = requested.rpartition(".")
    if prefix and prefix.lower() != enum.__name__.lower():
        raise WeightsError(
            f"Weights '{requested}' do not belong to {name}: its weights are "
            + ", ".join(f"{enum.__name__}.{m}" for m in members) + "."
        )
    by_upper = {key.upper(): key for key in members}
    if member.upper() not in by_upper:
        raise unknown_name("weights", requested, members,
                           hint=f"Weights of {name}: {', '.join(members)}.")
    return members[by_upper[member.upper()]]


def _checkpoint_path(weights: Any) -> Path:
    """Where torch's cache keeps the file of torchvision ``weights`` (downloaded or not)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _fetch(name: str, weights: Any) -> Path:
    """Make sure the weights file is in torch's cache; say where to put it when offline."""
    import torch

    path = _checkpoint_path(weights)
    if path.is_file():
        return path
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(path), match.group(1) if match else None,
                                       progress=False)
    except Exception as exc:  # noqa: BLE001 - URLError, timeouts, hash mismatch, disk errors
        raise WeightsError(
            f"Cannot download the weights {weights} for {name} ({one_line(exc)}): put the file "
            f"at {path} (from {weights.url}), or pass a weights file (--weights FILE)."
        ) from None
    return path


def _preprocess_of(weights: Any) -> Preprocess:
    """Preprocess from torchvision ``weights.transforms()`` (segmentation presets: no crop)."""
    transform = weights.transforms()

    def first(value: Any) -> int | None:
        if value is None:
            return None
        return int(value[0]) if isinstance(value, (list, tuple)) else int(value)

    mean = tuple(getattr(transform, "mean", Preprocess.mean))
    return Preprocess(
        resize=first(getattr(transform, "resize_size", None)),
        crop=first(getattr(transform, "crop_size", None)),
        mean=mean,
        std=tuple(getattr(transform, "std", Preprocess.std)),
        channels=len(mean),
    )


def _numbered(module: nn.Module) -> str:
    """The note on categories for weights that carry no class names."""
    from torch import nn

    last = None
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            last = sub.out_features
    if last is None:
        convs = [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]
        last = convs[-1] if convs else None
    span = f"0..{last - 1}" if last else "from 0"
    return f"categories: none in the weights; classes are numbered {span} ('class 0', ...)"

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
  prefix is stripped) or a ``.safetensors`` file; or a state dict (a mapping of tensors).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from featuremap.errors import ModelError, WeightsError, printable, unknown_name
from featuremap.model import Model
from featuremap.preprocess import Preprocess

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
_FILE_SUFFIXES = (".pth", ".pt", ".safetensors")
_WEIGHTS_NAME = re.compile(r"^([A-Za-z0-9_]*_weights\.)?[A-Za-z][A-Za-z0-9_]*$", re.IGNORECASE)
_CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")
_AUX_MISSING = ("AuxLogits.", "aux1.", "aux2.")  # inception_v3, googlenet

Rebuild = Callable[..., "nn.Module"]


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
        if _weights_kind(weights) == "name":
            raise WeightsError(
                f"Named weights ({weights!r}) need a model name, not a module: pass a weights "
                "file or a state dict, or load the module's weights yourself."
            )
        model.module, model.weights = _load_into(module, weights, model.name, None, model.notes)
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
        if _weights_kind(weights) == "name":
            raise WeightsError(
                f"The bundled model 'shapes' has its own weights; weights={weights!r} is not one "
                "of them. Pass nothing, a weights file or a state dict."
            )
        module, described = _load_into(module, weights, "shapes", None, notes)
    categories = tuple(meta["categories"])
    head = shapenet.segmentation_head(module)
    return Model(module, "shapes", preprocess, categories, meta.get("task", "classification"),
                 described, notes, head, stage_layers=head.layers if head else None)


def _from_torchvision(name: str, weights: Any) -> Model:
    """A torchvision classification or segmentation model."""
    task = _torchvision_tasks().get(name)
    if task is None:
        raise unknown_name("model", name, list_models(), hint=_MODELS_HINT)
    if weights is not None and _weights_kind(weights) == "name":
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

    module, described = _load_into(module, weights, name, rebuild, notes)
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
    kind = _weights_kind(weights) if weights is not None else "none"
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

    module, described = _load_into(module, weights, f"timm:{name}", rebuild, notes)
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
            f"Cannot load timm's pretrained weights for '{full}' ({_one_line(exc)}). When offline, "
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
            f"Cannot load the cached weights file {path} for {weights} ({_one_line(exc)}). "
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
            f"Cannot download the weights {weights} for {name} ({_one_line(exc)}): put the file "
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


# ------------------------------------------------------------------------ weights from files


def _weights_kind(weights: Any) -> str:
    """'state' for a mapping, 'name' for a weights name, else 'file'."""
    if isinstance(weights, Mapping):
        return "state"
    if isinstance(weights, os.PathLike):
        return "file"
    if not isinstance(weights, str):
        raise WeightsError(
            f"weights must be None, a name such as 'DEFAULT', a file path or a state dict; got "
            f"{type(weights).__name__}."
        )
    if os.path.exists(weights) or weights.lower().endswith(_FILE_SUFFIXES):
        return "file"
    return "name" if _WEIGHTS_NAME.match(weights) else "file"


def _load_into(
    module: nn.Module, weights: Any, label: str, rebuild: Rebuild | None, notes: list[str]
) -> tuple[nn.Module, str]:
    """Load a file or state dict into ``module`` (rebuilt to fit if possible).

    Returns the module that holds the weights and the text for ``Model.weights``; appends notes.
    """
    if _weights_kind(weights) == "state":
        source, described = "The state dict", "state dict"
        state = _state_dict(weights, source)
    else:
        path = _check_file(Path(os.fspath(weights)).expanduser())
        source, described = f"Weights file '{path}'", str(path)
        state = _state_dict(_read_file(path), source)
    return _fit(module, state, source, label, rebuild, notes), described


def _check_file(path: Path) -> Path:
    """Raise a one-line WeightsError unless ``path`` is a non-empty file we can read."""
    suffixes = ", ".join(_FILE_SUFFIXES)
    if not path.exists():
        raise WeightsError(f"Weights file '{path}' does not exist. Check the path, or pass "
                           "weights='DEFAULT' for the published weights.")
    if path.is_dir():
        raise WeightsError(f"'{path}' is a directory, not a weights file ({suffixes}).")
    if path.suffix.lower() not in _FILE_SUFFIXES:
        raise WeightsError(
            f"Weights file '{path}' has an unsupported extension '{path.suffix}': use {suffixes} "
            "(torch.save of a state dict, or safetensors)."
        )
    if path.stat().st_size == 0:
        raise WeightsError(f"Weights file '{path}' is empty (0 bytes). Save the weights again.")
    return path


def _read_file(path: Path) -> Any:
    """torch.load (weights only) or safetensors; every failure becomes a WeightsError."""
    import torch

    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle, zip, safetensors and torch errors alike
        text = " ".join(str(exc).split())
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            raise WeightsError(
                f"Weights file '{path}' holds Python objects besides tensors ({found.group(1)}), "
                "which are not loaded for safety. If you trust it, torch.load(path, "
                "weights_only=False) it yourself and pass the state dict (weights=state_dict)."
            ) from None
        unpickler = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
        detail = unpickler.group(1) if unpickler else _one_line(exc)
        raise WeightsError(
            f"Cannot read weights file '{path}': it is corrupt or not a {path.suffix} file "
            f"({detail})."
        ) from None


def _state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The ``{key: tensor}`` of a loaded object; unwraps checkpoints, strips 'module.'."""
    import torch

    if isinstance(obj, Mapping):
        for key in _CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(
        obj, Mapping) else {}
    if not tensors:
        found = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise WeightsError(
            f"{source} holds no state dict (found {found}): expected tensors by name, or a dict "
            f"with {', '.join(repr(k) for k in _CHECKPOINT_KEYS)}."
        )
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


# ------------------------------------------------------------------------------ fitting


def _mismatch(module: nn.Module, state: Mapping[str, Any]) -> tuple[list, list, list]:
    """(missing keys, unexpected keys, (key, file shape, model shape) of differing shapes)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shapes


def _fit(
    module: nn.Module, state: dict[str, Any], source: str, label: str,
    rebuild: Rebuild | None, notes: list[str],
) -> nn.Module:
    """Load ``state`` into ``module``, or into a rebuilt one (num_classes, aux heads) that fits."""
    _check_finite(state, source)
    missing, unexpected, shapes = _mismatch(module, state)
    if missing or unexpected or shapes:
        kwargs = _rebuild_kwargs(missing, unexpected, shapes)
        rebuilt = _try_rebuild(rebuild, kwargs)
        if rebuilt is None or any(_mismatch(rebuilt, state)):
            raise WeightsError(_misfit_message(source, label, module, missing, unexpected, shapes))
        module = rebuilt
        notes.append(f"rebuilt {label} with " + ", ".join(f"{k}={v}" for k, v in kwargs.items())
                     + " to fit the weights")
    module.load_state_dict(state, strict=True)
    return module


def _check_finite(state: Mapping[str, Any], source: str) -> None:
    """Refuse weights holding NaN or infinity: every map computed from them would be garbage."""
    import torch

    bad = [k for k, v in state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(printable(k) for k in bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise WeightsError(f"{source} holds NaN or infinite values in {len(bad)} tensor(s) "
                           f"({shown}): the training that saved them diverged or the file is "
                           "damaged. Use other weights.")


def _try_rebuild(rebuild: Rebuild | None, kwargs: dict[str, Any] | None) -> nn.Module | None:
    if rebuild is None or not kwargs:
        return None
    try:
        return rebuild(**kwargs)
    except Exception:  # noqa: BLE001 - a builder that rejects the argument cannot fit the file
        return None


def _rebuild_kwargs(missing: list, unexpected: list, shapes: list) -> dict[str, Any] | None:
    """Builder arguments that would make the model fit: num_classes, aux_loss, aux_logits."""
    kwargs: dict[str, Any] = {}
    if unexpected and all(k.startswith("aux_classifier.") for k in unexpected):
        kwargs["aux_loss"], unexpected = True, []
    if missing and all(k.startswith(_AUX_MISSING) for k in missing):
        kwargs["aux_logits"], missing = False, []
    classes = _classifier_classes(shapes)
    if missing or unexpected or (shapes and classes is None):
        return None
    if classes is not None:
        kwargs["num_classes"] = classes[0]
    return kwargs


def _classifier_classes(shapes: list) -> tuple[int, int] | None:
    """(file classes, model classes) when only the number of output classes differs."""
    if not shapes:
        return None
    if len(shapes) > 4 or any(not file or file[1:] != own[1:] for _, file, own in shapes):
        return None
    pairs = {(file[0], own[0]) for _, file, own in shapes}
    if len(pairs) != 1:
        return None
    return next(iter(pairs))


def _misfit_message(
    source: str, label: str, module: nn.Module, missing: list, unexpected: list, shapes: list
) -> str:
    """One line: counts and the first 3 of each kind of difference, and the likely fix."""
    def first3(items: list[str]) -> str:
        return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")

    def plural(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 'es' if word.endswith('ch') else 's'}"

    sizes = [f"{k}: file {f} vs model {m}" for k, f, m in shapes]
    parts = [f"{plural(len(items), word)} ({first3(items)})"
             for items, word in ((missing, "missing key"), (unexpected, "unexpected key"),
                                 (sizes, "shape mismatch")) if items]
    cls = "" if label == type(module).__name__ else f" ({type(module).__name__})"
    message = f"{source} does not fit {label}{cls}: {', '.join(parts)}."
    classes = _classifier_classes(shapes)
    if classes and not missing and not unexpected:
        return message + (f" Only the classifier differs: the file has {classes[0]} classes, the "
                          f"model {classes[1]}; build the model with num_classes={classes[0]}.")
    return message + " Was it saved from another architecture?"


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


def _one_line(exc: BaseException) -> str:
    """The first 200 characters of an exception's message, on one line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


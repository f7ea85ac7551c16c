"""Weights files and state dicts: read them safely and fit them to a network.

A file is a ``.pth`` / ``.pt`` (``torch.load(weights_only=True)``: a state dict, or a dict
holding one under ``'state_dict'``, ``'model'`` or ``'model_state_dict'``; a ``'module.'`` or
``'_orig_mod.'`` prefix is stripped) or a ``.safetensors`` file. Every failure is one
:class:`~featuremap.errors.WeightsError` line that says what differs and how to fix it; a state
dict that differs from the model only in its number of classes or its auxiliary heads is loaded
into a rebuilt model. torch is imported inside the functions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featuremap.errors import WeightsError, one_line, printable

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["Rebuild", "load_weights", "weights_kind"]

_FILE_SUFFIXES = (".pth", ".pt", ".safetensors")
_WEIGHTS_NAME = re.compile(r"^([A-Za-z0-9_]*_weights\.)?[A-Za-z][A-Za-z0-9_]*$", re.IGNORECASE)
_CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")
_AUX_MISSING = ("AuxLogits.", "aux1.", "aux2.")  # inception_v3, googlenet

Rebuild = Callable[..., "nn.Module"]
"""Builds the same architecture with other builder arguments (``num_classes=10``)."""


def weights_kind(weights: Any) -> str:
    """What ``weights`` is: ``'state'`` for a mapping, ``'name'`` for a weights name such as
    ``'DEFAULT'`` or ``'ResNet18_Weights.IMAGENET1K_V1'``, else ``'file'``.

    Raises:
        WeightsError: ``weights`` is neither a name, a path nor a mapping.

    Example:
        >>> weights_kind("DEFAULT"), weights_kind("model.pth"), weights_kind({})
        ('name', 'file', 'state')
    """
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


def load_weights(
    module: nn.Module, weights: Any, *, label: str, rebuild: Rebuild | None = None,
    notes: list[str],
) -> tuple[nn.Module, str]:
    """Load a weights file or a state dict into ``module``, or into a rebuilt one that fits.

    Args:
        module: the network the weights are for.
        weights: a ``.pth`` / ``.pt`` / ``.safetensors`` path or a state dict (see the module
            docstring for what a file may hold).
        label: the model's name, as messages and notes show it.
        rebuild: builds the same architecture with other arguments (``num_classes``,
            ``aux_loss``, ``aux_logits``), tried when only those differ; None: never rebuilt.
        notes: the model's notes; a rebuild appends one.

    Returns:
        ``(module, text)``: the module that holds the weights (``module`` itself unless
        rebuilt) and the text for ``Model.weights``.

    Raises:
        WeightsError: a missing, empty, corrupt or unsupported file, no tensors in it, NaN or
            infinite values, or a state dict that does not fit (counts and the first keys that
            differ).
    """
    if weights_kind(weights) == "state":
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
        detail = unpickler.group(1) if unpickler else one_line(exc)
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

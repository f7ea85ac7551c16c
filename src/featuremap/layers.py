"""Address the layers of any ``nn.Module``: resolve names, describe each layer's geometry.

Layer names are ``named_modules()`` paths (``"layer3.1.conv2"``); the root module (name ``""``)
is not a layer. A requested name is matched by one rule, shared by :func:`resolve_layers` and the
``pattern`` filter of :func:`featuremap.summary.list_layers`:

- ``"re:EXPR"``, or a name holding a regex-only character (one of ``^ $ + \\ ( ) | { }``): a
  regular expression, matched with ``re.search`` (anchor it with ``^`` and ``$`` to match whole
  names);
- otherwise a name holding ``*``, ``?`` or ``[``: a glob (``fnmatch``, case-sensitive; ``*`` also
  crosses dots, so ``layer*.0.conv1`` matches ``layer1.0.conv1`` to ``layer4.0.conv1``);
- otherwise an exact name.

This module never runs a network: :func:`layer_infos` builds the layer table from output shapes
that :func:`featuremap.capture.trace_shapes` measured (see :func:`featuremap.summary.list_layers`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featuremap.errors import ConfigError, UnknownNameError, unknown_name

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = [
    "LayerInfo",
    "describe_module",
    "format_geometry",
    "geometry",
    "in_channels",
    "layer_infos",
    "match_names",
    "resolve_layers",
    "size_pair",
]

_REGEX_ONLY = set("^$+\\()|{}")
_GLOB = set("*?[")


@dataclass(frozen=True)
class LayerInfo:
    """One named module of a network, with the shape of its output.

    Attributes:
        name: the ``named_modules()`` path, e.g. ``"layer1.0.conv1"``.
        type: the class name, e.g. ``"Conv2d"``.
        output_shape: the output shape without the batch dimension, e.g. ``(64, 56, 56)``; for
            tuple/list outputs the first tensor's, for dict outputs ``'out'`` (else the first
            tensor value); ``None`` if the module did not run in the forward pass.
        params: number of parameters, counted recursively (children included).
        leaf: True when the module has no children.
        depth: nesting level: 1 for children of the model, 2 for their children, ...
        kernel_size, stride, padding, dilation: per spatial dimension, for modules that have a
            kernel (convolutions and fixed-size pools); ``padding`` may be ``'same'`` or
            ``'valid'``; ``None`` for other modules (and ``dilation`` for pools without one).
        groups: for convolutions, else ``None``.
        cumulative_stride: input pixels per output pixel, input height / output height (an int
            when exact), for outputs laid out ``(C, H, W)``; ``None`` otherwise.
    """

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    params: int
    leaf: bool
    depth: int
    kernel_size: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    padding: tuple[int, ...] | str | None = None
    dilation: tuple[int, ...] | None = None
    groups: int | None = None
    cumulative_stride: float | None = None


# --------------------------------------------------------------------------------- listing


def layer_infos(
    model: nn.Module,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    input_size: int | tuple[int, int] = 224,
    types: str | type | Iterable[str | type] | None = None,
    pattern: str | None = None,
    leaves_only: bool = False,
    model_name: str | None = None,
) -> list[LayerInfo]:
    """The :class:`LayerInfo` of every named module kept by the filters, in module order.

    Args:
        model: the network.
        shapes: ``{name: output shape without the batch dim}`` measured at ``input_size``
            (modules that did not run are absent).
        input_size: ``H = W`` as an int, or ``(H, W)``.
        types: keep modules whose class name contains this text (case-insensitive: ``"conv"``,
            ``"pool"``, ``"relu"``) or that are instances of this class; or a list of either.
        pattern: keep names matching this glob, regex or exact name (see the module docstring).
        leaves_only: keep only modules without children.
        model_name: the name the model was loaded by, for the hint of errors.

    Raises:
        UnknownNameError: a pattern that matches no layer, a type no module has (both with
            did-you-mean suggestions).
    """
    height, width = size_pair(input_size)
    keep_type = _type_filter(types)
    keep_name = _matcher(pattern) if pattern is not None else None
    if pattern is not None:
        resolve_layers(model, [pattern], model_name=model_name)  # no match: did-you-mean
    if keep_type is not None and not any(keep_type(m) for n, m in model.named_modules() if n):
        raise _unknown_type(model, types)
    infos = []
    for name, module in model.named_modules():
        if not name or (leaves_only and next(module.children(), None) is not None):
            continue
        if (keep_name and not keep_name(name)) or (keep_type and not keep_type(module)):
            continue
        shape = shapes.get(name)
        infos.append(LayerInfo(
            name=name, type=type(module).__name__, output_shape=shape,
            params=sum(p.numel() for p in module.parameters()),
            leaf=next(module.children(), None) is None, depth=name.count(".") + 1,
            **geometry(module), cumulative_stride=_cumulative(shape, height, width)))
    return infos


def geometry(module: nn.Module) -> dict[str, Any]:
    """kernel_size, stride, padding, dilation, groups of a conv or pool, as tuples ({} for other
    modules)."""
    kernel = getattr(module, "kernel_size", None)
    if kernel is None:
        return {}
    n = len(kernel) if isinstance(kernel, tuple) else _spatial_dims(module)

    def tup(value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, (tuple, list)):
            return tuple(int(v) for v in value)
        return (int(value),) * n

    padding = getattr(module, "padding", None)
    if type(module).__name__.endswith("Same"):  # timm's Conv2dSame & co. pad in forward()
        padding = "same"
    return {
        "kernel_size": tup(kernel),
        "stride": tup(getattr(module, "stride", None)),
        "padding": tup(padding),
        "dilation": tup(getattr(module, "dilation", None)),
        "groups": getattr(module, "groups", None),
    }


def describe_module(module: nn.Module) -> str:
    """``Conv2d, kernel 3, stride 2`` (single numbers for square values)."""
    text = type(module).__name__
    found = geometry(module)
    for key, word in (("kernel_size", "kernel"), ("stride", "stride")):
        value = found.get(key)
        if value is not None:
            text += f", {word} {value[0] if len(set(value)) == 1 else value}"
    return text


def _spatial_dims(module: nn.Module) -> int:
    name = type(module).__name__
    return 1 if name.endswith("1d") else 3 if name.endswith("3d") else 2


class FoldedShape(tuple):
    """The whole output shape of a module whose leading dim is not the batch (attention
    windows folded into it, for instance; :func:`featuremap.capture.trace_shapes` records
    them): compares and prints as a plain tuple, never read as ``(C, H, W)`` maps."""


def _cumulative(shape: tuple[int, ...] | None, height: int, width: int) -> float | None:
    """Input height / output height for a (C, H, W) output (int when exact); None for other
    outputs, and for one whose leading dim is not the batch (``FoldedShape``: windows of
    tokens, not maps)."""
    if shape is None or len(shape) != 3 or shape[1] == 0 or isinstance(shape, FoldedShape):
        return None
    ratio_h, ratio_w = height / shape[1], width / shape[2] if shape[2] else 0
    if ratio_h == ratio_w and ratio_h.is_integer():
        return int(ratio_h)
    return round(ratio_h, 3)


def _unknown_type(model: nn.Module, types: Any) -> UnknownNameError:
    """No module of ``model`` has the requested type: name the types it has."""
    present = sorted({type(m).__name__ for n, m in model.named_modules() if n})
    wanted = types if isinstance(types, str) else ", ".join(
        t if isinstance(t, str) else t.__name__ for t in ([types] if isinstance(types, type)
                                                          else types))
    hint = f"Types in {type(model).__name__}: {', '.join(present)}."
    error = unknown_name("module type", wanted, present, hint=hint)
    return UnknownNameError(str(error).replace("Unknown module type", "No module has a type "
                                               "containing", 1), suggestions=error.suggestions)


def _type_filter(types: Any) -> Callable[[nn.Module], bool] | None:
    """A predicate on modules from a class-name substring, a class, or a list of them."""
    if types is None:
        return None
    wanted = [types] if isinstance(types, (str, type)) else list(types)
    for t in wanted:
        if not isinstance(t, (str, type)):
            raise ConfigError(f"types must be class-name text or classes, got {t!r}.")

    def keep(module: nn.Module) -> bool:
        name = type(module).__name__.lower()
        return any(
            t.lower() in name if isinstance(t, str) else isinstance(module, t) for t in wanted
        )

    return keep


# --------------------------------------------------------------------------------- options


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    return value


def size_pair(input_size: Any) -> tuple[int, int]:
    """``input_size`` as ``(H, W)``, or raise ConfigError."""
    if isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        return _positive(input_size[0], "input_size"), _positive(input_size[1], "input_size")
    if isinstance(input_size, (tuple, list)):
        raise ConfigError(f"input_size must be an int or (H, W), got {input_size!r}.")
    side = _positive(input_size, "input_size")
    return side, side


def in_channels(model: nn.Module) -> int:
    """The in_channels of the first Conv2d of ``model``, else 3."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return 3


# ------------------------------------------------------------------------------- resolving


def _matcher(request: str) -> Callable[[str], bool]:
    """A predicate on names for an exact name, a glob or a regex (see the module docstring)."""
    kind, text = _kind(request)
    if kind == "regex":
        try:
            compiled = re.compile(text)
        except re.error as exc:
            raise ConfigError(
                f"Invalid regular expression {text!r} for layer names: {exc}."
            ) from None
        return lambda name: compiled.search(name) is not None
    if kind == "glob":
        return lambda name: fnmatch.fnmatchcase(name, text)
    return lambda name: name == text


def _kind(request: str) -> tuple[str, str]:
    """('regex' | 'glob' | 'exact', text) for one requested name."""
    if not isinstance(request, str):
        raise ConfigError(f"A layer name must be a string, got {type(request).__name__}.")
    if request.startswith("re:"):
        return "regex", request[3:]
    if _REGEX_ONLY & set(request):
        return "regex", request
    if _GLOB & set(request):
        return "glob", request
    return "exact", request


def match_names(request: str, names: Iterable[str]) -> tuple[str, list[str]]:
    """``(kind, matches)``: whether ``request`` is an ``"exact"`` name, a ``"glob"`` or a
    ``"regex"`` (see the module docstring), and the ``names`` it matches, in their order.

    Raises:
        ConfigError: an invalid regex or a request that is not a string.

    Example:
        >>> match_names("layer[12]", ["layer1", "layer2", "layer3"])
        ('glob', ['layer1', 'layer2'])
    """
    kind, _ = _kind(request)
    if kind == "exact":  # one lookup, not a matcher call per name
        return kind, [request] if request in (names if isinstance(names, (set, dict))
                                              else set(names)) else []
    matcher = _matcher(request)
    return kind, [n for n in names if matcher(n)]


def resolve_layers(
    model: nn.Module, names: str | Iterable[str], *, model_name: str | None = None
) -> list[str]:
    """Turn requested layer names, globs and regexes into ``named_modules()`` paths.

    Args:
        model: the network.
        names: one request or several; each an exact name, a glob or a regex (see the module
            docstring).
        model_name: the name the model was loaded by, used in the hint of errors.

    Returns:
        The matching names in request order, duplicates removed; the matches of one glob or
        regex in module order.

    Raises:
        UnknownNameError: an exact name that is not a layer (with did-you-mean suggestions), or a
            glob or regex that matches no layer.
        ConfigError: an invalid regex or a name that is not a string.

    Example:
        >>> from torchvision.models import resnet18
        >>> resolve_layers(resnet18(), ["layer4", "layer[12].0.conv1"])
        ['layer4', 'layer1.0.conv1', 'layer2.0.conv1']
    """
    all_names = [name for name, _ in model.named_modules() if name]
    known = set(all_names)
    requests = [names] if isinstance(names, str) else list(names)
    found: dict[str, None] = {}
    for request in requests:
        kind, matches = match_names(request, known if _kind(request)[0] == "exact"
                                    else all_names)
        if not matches:
            raise _unknown_layer(model, request, kind, all_names, model_name)
        found.update(dict.fromkeys(matches))
    return list(found)


def _unknown_layer(
    model: nn.Module, request: str, kind: str, all_names: list[str], model_name: str | None
) -> UnknownNameError:
    """``Unknown layer 'layer5' in ResNet. Did you mean 'layer4'? Run ... all 67 layers.``"""
    cls = type(model).__name__
    count = len(all_names)
    hint = (f"Run 'featuremap layers {model_name}' to list all {count} layers." if model_name
            else f"Call featuremap.layers.list_layers(model) to list all {count} layers.")
    if kind != "exact":
        return UnknownNameError(f"No layer of {cls} matches the {kind} '{request}'. {hint}")
    error = unknown_name("layer", request, all_names, hint=hint)
    message = str(error).replace(f"Unknown layer '{request}'.", f"Unknown layer '{request}' in "
                                 f"{cls}.", 1)
    return UnknownNameError(message, suggestions=error.suggestions)


def format_geometry(value: tuple[int, ...] | str | None) -> str:
    """A kernel/stride/padding value as table text: ``3`` for (3, 3), ``3x1``, ``same``, ``''``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return str(value[0]) if len(set(value)) == 1 else "x".join(map(str, value))

"""Address the layers of any ``nn.Module``: list them with output shapes, resolve names.

Layer names are ``named_modules()`` paths (``"layer3.1.conv2"``); the root module (name ``""``)
is not a layer. A requested name is matched by one rule, shared by :func:`resolve_layers` and the
``pattern`` filter of :func:`list_layers`:

- ``"re:EXPR"``, or a name holding a regex-only character (one of ``^ $ + \\ ( ) | { }``): a
  regular expression, matched with ``re.search`` (anchor it with ``^`` and ``$`` to match whole
  names);
- otherwise a name holding ``*``, ``?`` or ``[``: a glob (``fnmatch``, case-sensitive; ``*`` also
  crosses dots, so ``layer*.0.conv1`` matches ``layer1.0.conv1`` to ``layer4.0.conv1``);
- otherwise an exact name.

Shapes come from one forward pass under ``torch.no_grad`` on zeros ``(1, C, H, W)`` in eval mode;
the mode of every module is restored and every hook removed afterwards, also on errors.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featuremap.errors import ConfigError, FeaturemapError, UnknownNameError, unknown_name

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = ["LayerInfo", "list_layers", "resolve_layers"]

_REGEX_ONLY = set("^$+\\()|{}")
_GLOB = set("*?[")
_MAX_PROBE = 512  # largest input side tried when looking for the smallest working input


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


def list_layers(
    model: nn.Module,
    *,
    input_size: int | tuple[int, int] = 224,
    in_channels: int | None = None,
    types: str | type | Iterable[str | type] | None = None,
    pattern: str | None = None,
    leaves_only: bool = False,
    model_name: str | None = None,
) -> list[LayerInfo]:
    """List the named modules of ``model`` with their output shapes, in module order.

    Args:
        model: any ``torch.nn.Module`` taking one image batch ``(N, C, H, W)``.
        input_size: ``H = W`` as an int, or ``(H, W)``.
        in_channels: ``C``; by default the ``in_channels`` of the first ``Conv2d`` (else 3).
        types: keep modules whose class name contains this text (case-insensitive: ``"conv"``,
            ``"pool"``, ``"relu"``) or that are instances of this class; or a list of either.
        pattern: keep names matching this glob, regex or exact name (see the module docstring).
        leaves_only: keep only modules without children.
        model_name: the name the model was loaded by, for the hint of errors.

    Returns:
        One :class:`LayerInfo` per kept module.

    Raises:
        UnknownNameError: a pattern that matches no layer, a type no module has (both with
            did-you-mean suggestions).
        ConfigError: a bad option, or the forward pass fails, e.g. an input too small for the
            network (the message names the layer where the map would vanish).

    Example:
        >>> from torchvision.models import resnet18
        >>> [i.output_shape for i in list_layers(resnet18(), pattern="layer1")]
        [(64, 56, 56)]
    """
    height, width = _size_pair(input_size)
    channels = _in_channels(model) if in_channels is None else _positive(in_channels, "in_channels")
    shapes = _trace(model, (1, channels, height, width))
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
        infos.append(_info(name, module, shapes.get(name), height, width))
    return infos


def _info(
    name: str, module: nn.Module, shape: tuple[int, ...] | None, height: int, width: int
) -> LayerInfo:
    """Build the LayerInfo of one module from its recorded output shape."""
    return LayerInfo(
        name=name,
        type=type(module).__name__,
        output_shape=shape,
        params=sum(p.numel() for p in module.parameters()),
        leaf=next(module.children(), None) is None,
        depth=name.count(".") + 1,
        **_geometry(module),
        cumulative_stride=_cumulative(shape, height, width),
    )


def _geometry(module: nn.Module) -> dict[str, Any]:
    """kernel_size, stride, padding, dilation, groups of a conv or pool, as tuples."""
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


def _spatial_dims(module: nn.Module) -> int:
    name = type(module).__name__
    return 1 if name.endswith("1d") else 3 if name.endswith("3d") else 2


def _cumulative(shape: tuple[int, ...] | None, height: int, width: int) -> float | None:
    """Input height / output height for a (C, H, W) output (int when exact)."""
    if shape is None or len(shape) != 3 or shape[1] == 0:
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


def _size_pair(input_size: Any) -> tuple[int, int]:
    """``input_size`` as ``(H, W)``, or raise ConfigError."""
    if isinstance(input_size, (tuple, list)) and len(input_size) == 2:
        return _positive(input_size[0], "input_size"), _positive(input_size[1], "input_size")
    if isinstance(input_size, (tuple, list)):
        raise ConfigError(f"input_size must be an int or (H, W), got {input_size!r}.")
    side = _positive(input_size, "input_size")
    return side, side


def _in_channels(model: nn.Module) -> int:
    """The in_channels of the first Conv2d of ``model``, else 3."""
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return int(module.in_channels)
    return 3


# ----------------------------------------------------------------------------- forward pass


@contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Run in eval mode without gradients; restore every module's own mode afterwards."""
    import torch

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _zeros(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros of ``shape`` on the device and with the float dtype of ``model``'s parameters."""
    import torch

    first = next(model.parameters(), None)
    if first is None:
        first = next(model.buffers(), None)
    if first is None or not first.is_floating_point():
        return torch.zeros(shape)
    return torch.zeros(shape, dtype=first.dtype, device=first.device)


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor that stands for a module's output (see LayerInfo.output_shape)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        if isinstance(output.get("out"), torch.Tensor):
            return output["out"]
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _trace(model: nn.Module, shape: tuple[int, int, int, int]) -> dict[str, tuple[int, ...]]:
    """Run one forward pass on zeros of ``shape``; return ``{name: output shape}``.

    A module called several times keeps the shape of its first call.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    running: list[tuple[str, nn.Module, tuple[int, ...] | None]] = []

    def enter(name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
        tensor = _first_tensor(list(args))
        running.append((name, module, tuple(tensor.shape) if tensor is not None else None))

    def leave(name: str, output: Any) -> None:
        running.pop()
        tensor = _first_tensor(output)
        if tensor is not None and name not in shapes:
            shapes[name] = tuple(tensor.shape[1:])

    try:
        with _hooks(model, enter, leave), _eval_no_grad(model):
            model(_zeros(model, shape))
    except FeaturemapError:
        raise
    except (RuntimeError, ValueError, AssertionError, IndexError, TypeError) as exc:
        where = running[-1] if running else ("", model, shape)
        raise _pass_error(model, shape, where, exc) from exc
    return shapes


@contextmanager
def _hooks(
    model: nn.Module,
    enter: Callable[[str, nn.Module, tuple[Any, ...]], None],
    leave: Callable[[str, Any], None],
) -> Iterator[None]:
    """Register a forward pre-hook and a forward hook on every module; always remove them."""
    handles = []
    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: enter(name, m, args)))
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: leave(name, out)))
        yield
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------- forward-pass errors


def _pass_error(
    model: nn.Module,
    shape: tuple[int, ...],
    where: tuple[str, nn.Module, tuple[int, ...] | None],
    exc: BaseException,
) -> ConfigError:
    """Explain why the shape pass failed, naming the innermost module that was running."""
    name, module, in_shape = where
    size = f"{shape[2]}x{shape[3]}"
    label = f"layer '{name}' ({_describe(module)})" if name else f"{type(model).__name__}.forward"
    if _vanishes(module, in_shape) or (not _has_kernel(module) and _too_small_text(exc)):
        map_size = "x".join(str(s) for s in in_shape[2:]) if in_shape else "input"
        smallest = _smallest_input(model, shape)
        fix = f" Use an input of at least {smallest}x{smallest} pixels." if smallest else (
            " Use a larger input.")
        return ConfigError(
            f"input {size} is too small for {type(model).__name__}: at {label} the "
            f"{map_size} map would vanish.{fix}"
        )
    detail = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    end = "" if detail.endswith(("!", "?")) else "."
    return ConfigError(
        f"The forward pass of {type(model).__name__} on an input {shape[1]}x{size} failed at "
        f"{label}: {detail}{end} Check input_size and in_channels (the network may need a "
        "fixed size)."
    )


def _describe(module: nn.Module) -> str:
    """``Conv2d, kernel 3, stride 2`` (single numbers for square values)."""
    text = type(module).__name__
    geometry = _geometry(module)
    for key, word in (("kernel_size", "kernel"), ("stride", "stride")):
        value = geometry.get(key)
        if value is not None:
            text += f", {word} {value[0] if len(set(value)) == 1 else value}"
    return text


def _has_kernel(module: nn.Module) -> bool:
    return getattr(module, "kernel_size", None) is not None


def _too_small_text(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "too small" in text or "kernel size can't be greater" in text


def _vanishes(module: nn.Module, in_shape: tuple[int, ...] | None) -> bool:
    """True when a conv or pool of ``module`` gives an empty map on an input of ``in_shape``."""
    geometry = _geometry(module)
    if not geometry or in_shape is None or isinstance(geometry["padding"], str):
        return False
    sizes = in_shape[-len(geometry["kernel_size"]):]
    dilation = geometry["dilation"] or (1,) * len(sizes)
    padding = geometry["padding"] or (0,) * len(sizes)
    rounding = math.ceil if getattr(module, "ceil_mode", False) else math.floor
    for size, k, s, p, d in zip(sizes, geometry["kernel_size"], geometry["stride"], padding,
                                dilation):
        if rounding((size + 2 * p - d * (k - 1) - 1) / s) + 1 <= 0:
            return True
    return False


def _smallest_input(model: nn.Module, shape: tuple[int, ...]) -> int | None:
    """The smallest square side (<= 512) that runs, by doubling then bisection, or None."""
    low = min(shape[2], shape[3])
    high = low * 2
    while not _runs(model, (shape[0], shape[1], high, high)):
        low, high = high, high * 2
        if high > _MAX_PROBE:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _runs(model, (shape[0], shape[1], middle, middle)) else (
            middle, high)
    return high


def _runs(model: nn.Module, shape: tuple[int, ...]) -> bool:
    try:
        with _eval_no_grad(model):
            model(_zeros(model, shape))
    except Exception:  # noqa: BLE001 - any failure means "does not run at this size"
        return False
    return True


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
    requests = [names] if isinstance(names, str) else list(names)
    found: dict[str, None] = {}
    for request in requests:
        kind, _ = _kind(request)
        matches = [n for n in all_names if _matcher(request)(n)]
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

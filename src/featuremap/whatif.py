"""What if one convolution of a network had another stride, padding, dilation or depth?

:func:`what_if` builds a variant of the model in which one ``Conv2d`` has new settings (the rest
of the network shared, not copied), runs a shape pass to see how every later layer's output
changes, names the first layer that breaks (and why), and, when the changed layer still runs,
extracts its new maps. Its weights stay the layer's own: a smaller depth keeps the first filters,
a larger one adds filters of zeros; the result says which.

Example:
    >>> w = what_if(load_model("shapes"), "backbone.block2.conv1", stride=2)  # doctest: +SKIP
    >>> print(w)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from featuremap.capture import trace_shapes
from featuremap.errors import ConfigError, printable
from featuremap.layers import size_pair
from featuremap.model import Model, as_model

__all__ = ["WhatIf", "what_if", "with_layer"]


def _two(value: Any, name: str) -> tuple[int, int]:
    values = (value, value) if isinstance(value, int) else tuple(value)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ConfigError(f"{name} must be an integer or two, got {value!r}.")
    return int(values[0]), int(values[1])


def _variant(conv: nn.Conv2d, *, stride: Any, padding: Any, dilation: Any,
             out_channels: int | None) -> tuple[nn.Conv2d, list[str]]:
    """A new Conv2d with the changed settings, and notes on what happened to its weights."""
    depth = conv.out_channels if out_channels is None else out_channels
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= 4096:
        raise ConfigError(f"out_channels must be an integer from 1 to 4,096, got {depth!r}.")
    if depth % conv.groups:
        raise ConfigError(f"out_channels {depth} must be a multiple of the layer's groups "
                          f"({conv.groups}).")
    stride = _two(stride, "stride") if stride is not None else conv.stride
    dilation = _two(dilation, "dilation") if dilation is not None else conv.dilation
    if padding is None:
        padding = conv.padding
    elif not isinstance(padding, str):
        padding = _two(padding, "padding")
    if min(stride) < 1 or min(dilation) < 1 or (not isinstance(padding, str) and min(padding) < 0):
        raise ConfigError("stride and dilation must be >= 1 and padding >= 0.")
    if padding == "same" and max(stride) > 1:
        raise ConfigError("padding 'same' needs stride 1 (torch's rule for Conv2d).")
    new = nn.Conv2d(conv.in_channels, depth, conv.kernel_size, stride=stride, padding=padding,
                    dilation=dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, device=conv.weight.device,
                    dtype=conv.weight.dtype)
    notes = []
    keep = min(depth, conv.out_channels)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:keep] = conv.weight[:keep]
        if conv.bias is not None:
            new.bias.zero_()
            new.bias[:keep] = conv.bias[:keep]
    if depth < conv.out_channels:
        notes.append(f"depth {depth}: the layer's first {depth} of {conv.out_channels} filters "
                     "kept")
    elif depth > conv.out_channels:
        notes.append(f"depth {depth}: the layer's {conv.out_channels} filters, then "
                     f"{depth - conv.out_channels} filters of zeros (maps of zeros plus bias)")
    return new.train(conv.training), notes


def with_layer(module: nn.Module, name: str, replacement: nn.Module) -> nn.Module:
    """A view of ``module`` with the submodule ``name`` replaced: the modules on the path from
    the root are shallow copies, everything else (weights included) is shared, not copied."""
    root = copy.copy(module)
    root._modules = dict(module._modules)
    parent = root
    parts = name.split(".")
    for part in parts[:-1]:
        child = copy.copy(parent._modules[part])
        child._modules = dict(child._modules)
        parent._modules[part] = child
        parent = child
    parent._modules[parts[-1]] = replacement
    return root


@dataclass
class WhatIf:
    """A network with one convolution changed, and what changed downstream.

    Attributes:
        model_name, layer: where the change is.
        before, after: the layer's settings (``kernel_size``, ``stride``, ``padding``,
            ``dilation``, ``out_channels``).
        input_size: ``(H, W)`` of the shape pass.
        shapes: ``(layer, shape before, shape after)`` for every layer whose output changed,
            in module order (``None`` after: it did not run).
        broken: ``(layer, reason)`` of the first layer that fails, or None.
        maps: the changed layer's maps on ``image`` (a
            :class:`~featuremap.extraction.FeatureMaps`), when an image was given and the
            layer runs.
        notes: what happened to the weights.
    """

    model_name: str
    layer: str
    before: dict[str, Any]
    after: dict[str, Any]
    input_size: tuple[int, int]
    shapes: list[tuple[str, tuple | None, tuple | None]]
    broken: tuple[str, str] | None = None
    maps: Any = None
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        changed = ", ".join(f"{k} {self.before[k]} -> {self.after[k]}" for k in self.after
                            if self.after[k] != self.before[k]) or "no setting changed"
        lines = [f"{printable(self.model_name)} {printable(self.layer)}: {changed} (input "
                 f"{self.input_size[0]} x {self.input_size[1]})"]
        def shape(s: tuple | None) -> str:
            return " x ".join(map(str, s)) if s else "-"

        ran = [(n, a, b) for n, a, b in self.shapes if b is not None]
        lines += [f"  {printable(n)}: {shape(a)} -> {shape(b)}" for n, a, b in ran]
        stopped = len(self.shapes) - len(ran)
        if stopped:
            lines.append(f"  ... and {stopped} later layer(s) that no longer run")
        if self.broken:
            lines.append(f"breaks at {printable(self.broken[0])}: {printable(self.broken[1])}")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model_name, "layer": self.layer, "before": self.before,
                "after": self.after, "input_size": list(self.input_size),
                "shapes": [{"layer": n, "before": list(a) if a else None,
                            "after": list(b) if b else None} for n, a, b in self.shapes],
                "broken": ({"layer": self.broken[0], "reason": self.broken[1]}
                           if self.broken else None),
                "maps": self.maps.to_dict() if self.maps is not None else None,
                "notes": list(self.notes)}


def _settings(conv: nn.Conv2d) -> dict[str, Any]:
    padding = conv.padding if isinstance(conv.padding, str) else list(conv.padding)
    return {"kernel_size": list(conv.kernel_size), "stride": list(conv.stride),
            "padding": padding, "dilation": list(conv.dilation),
            "out_channels": conv.out_channels}


def what_if(model: Any, layer: str, *, stride: Any = None, padding: Any = None,
            dilation: Any = None, out_channels: int | None = None, image: Any = None,
            input_size: int | tuple[int, int] | None = None) -> WhatIf:
    """Change one ``Conv2d`` of ``model`` and see what follows.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module`` (left unchanged).
        layer: the ``Conv2d`` to change.
        stride, padding, dilation: new settings (an int or ``(h, w)``; padding also ``"same"``
            or ``"valid"``); None keeps the layer's.
        out_channels: the new depth (None keeps it).
        image: when given, the changed layer's new maps on it are extracted.
        input_size: the shape pass's input (default: the prepared image's, else the model's).

    Raises:
        ConfigError: a layer that is not a Conv2d, impossible settings.
    """
    from featuremap.extraction import extract

    m = as_model(model)
    name = m.one_layer(layer)
    conv = dict(m.module.named_modules())[name]
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"layer '{name}' ({type(conv).__name__}) is not a Conv2d: what-if "
                          "changes the stride, padding, dilation or depth of a convolution.")
    new, notes = _variant(conv, stride=stride, padding=padding, dilation=dilation,
                          out_channels=out_channels)
    variant = Model(with_layer(m.module, name, new), m.name, m.preprocess, m.categories,
                    m.task, m.weights, [], None, m.prefix_tokens, m.assumed_preprocess)
    prepared = m.prepare(image) if image is not None else None
    size = (tuple(prepared.batch.shape[2:]) if prepared is not None else
            size_pair(input_size) if input_size is not None else m.input_size)
    shape = (1, m.preprocess.channels, *size)
    old = trace_shapes(m.module, shape)
    broken = None
    try:
        new_shapes = trace_shapes(variant.module, shape)
    except ConfigError as err:
        new_shapes, broken = _partial(variant.module, shape), _where(str(err))
    order = [n for n, _ in m.module.named_modules() if n]
    changed = [(n, old.get(n), new_shapes.get(n)) for n in order
               if old.get(n) != new_shapes.get(n)]
    maps = None
    if prepared is not None and name in new_shapes:
        maps = extract(variant, prepared.batch, layers=[name])
    return WhatIf(m.name, name, _settings(conv), _settings(new), size, changed, broken, maps,
                  notes)


def _partial(module: nn.Module, shape: tuple[int, ...]) -> dict[str, tuple]:
    """The shapes of the layers that ran before the pass failed."""
    from featuremap.capture import first_tensor, hooked, inference_state

    seen: dict[str, tuple] = {}

    def keep(name: str):
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            tensor, _, _ = first_tensor(out)
            if tensor is not None and name not in seen:
                seen[name] = tuple(tensor.shape[1:])
        return hook

    names = [n for n, _ in module.named_modules() if n]
    try:
        with inference_state(module), torch.no_grad(), hooked(
                module, after={n: keep(n) for n in names}):
            module(torch.zeros(shape))
    except Exception:  # noqa: BLE001 - the failure itself is reported by the caller
        pass
    return seen


def _where(message: str) -> tuple[str, str]:
    """``(layer, reason)`` from the shape pass's one-line failure."""
    import re

    found = re.search(r"at layer '([^']+)' \([^)]*\)(?: the [^:]*)?: (.*)$", message)
    if found:
        return found.group(1), found.group(2)
    found = re.search(r"at layer '([^']+)'", message)
    return (found.group(1) if found else "", message)

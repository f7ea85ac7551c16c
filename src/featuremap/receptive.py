"""Receptive fields: which input pixels a value of a layer can depend on.

Analytic: the network is traced (torch.fx) and every node gets, per axis, the affine map from an
output index ``p`` to the input interval ``[p * jump + lo, p * jump + hi]`` (inclusive) that it
can see. Convolutions and pools grow it by their kernel, stride, padding and dilation; nodes with
several spatial inputs (skip connections ``x + f(x)``, concatenations) take the union of their
inputs' intervals; elementwise and normalisation nodes keep it. Empirical: the support of the
gradient of that one value with respect to the input, and the gradient magnitude as the
effective receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from featuremap.errors import ConfigError
from featuremap.layers import resolve_layers

__all__ = ["ReceptiveField", "empirical_receptive_field", "receptive_field"]

_Axis = tuple[float, float, float]  # jump, lo, hi (input pixels, inclusive)


@dataclass(frozen=True)
class ReceptiveField:
    """The input region one value of a layer depends on.

    Attributes:
        box: ``(y0, x0, y1, x1)`` in input pixels, end exclusive, not clipped to the image.
        clipped_box: the same, clipped to the input size.
        size: ``(h, w)`` of ``box``.
        stride: the layer's cumulative stride ``(sy, sx)``.
        offset: input coordinate ``(y, x)`` of the first pixel seen by position (0, 0).
    """

    box: tuple[int, int, int, int]
    clipped_box: tuple[int, int, int, int]
    size: tuple[int, int]
    stride: tuple[float, float]
    offset: tuple[float, float]


def _geometry(module: nn.Module) -> tuple[tuple[int, int], ...] | None:
    """(kernel, stride, padding, dilation) per axis for convs and fixed pools, else None."""
    if not isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        return None

    def two(v: Any) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))

    if isinstance(module, nn.Conv2d) and isinstance(module.padding, str):
        raise ConfigError(f"padding='{module.padding}' is not supported by the analytic "
                          "receptive field yet; use empirical_receptive_field.")
    dilation = getattr(module, "dilation", 1)
    stride = module.stride if module.stride is not None else module.kernel_size
    return (two(module.kernel_size), two(stride), two(module.padding), two(dilation))


def _grow(rf: tuple[_Axis, _Axis], geometry) -> tuple[_Axis, _Axis]:
    out = []
    for (jump, lo, hi), k, s, p, d in zip(rf, *geometry):
        out.append((jump * s, lo - p * jump, hi + (d * (k - 1) - p) * jump))
    return out[0], out[1]


_RESHAPING = ("AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Linear", "Flatten", "Upsample")


def _trace(model: nn.Module) -> Any:
    import torch.fx

    try:
        return torch.fx.symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure means the same to the user
        raise ConfigError(f"{type(model).__name__} cannot be traced for an analytic receptive "
                          f"field ({type(err).__name__}); use empirical_receptive_field.") from None


def _fields(model: nn.Module) -> dict[str, tuple[_Axis, _Axis] | None]:
    """Receptive field of every module's output, by module name (None: not spatial)."""
    graph = _trace(model)
    modules = dict(graph.named_modules())
    rf: dict[Any, tuple[_Axis, _Axis] | None] = {}
    by_module: dict[str, tuple[_Axis, _Axis] | None] = {}
    containers: dict[str, tuple[_Axis, _Axis] | None] = {}
    for node in graph.graph.nodes:
        inputs = [rf[a] for a in node.all_input_nodes if a in rf]
        if node.op == "placeholder":
            rf[node] = ((1.0, 0.0, 0.0), (1.0, 0.0, 0.0))
            continue
        known = [r for r in inputs if r is not None]
        target = modules.get(node.target) if node.op == "call_module" else None
        name = type(target).__name__ if target is not None else str(node.target)
        if not known or any(key in name for key in _RESHAPING) or any(r is None for r in inputs):
            rf[node] = None
        else:
            union = tuple((a[0][0], min(r[i][1] for r in known), max(r[i][2] for r in known))
                          for i, a in enumerate(zip(*known)))
            geometry = _geometry(target) if target is not None else None
            rf[node] = _grow(union, geometry) if geometry else (union[0], union[1])
        if node.op == "call_module":  # a reused module: its first call, as extract() keeps
            by_module.setdefault(node.target, rf[node])
        for entry in (node.meta.get("nn_module_stack") or {}).values():
            path = entry[0] if isinstance(entry, tuple) else str(entry)
            if path and path != node.target:  # a container ends with its last node
                containers[path] = rf[node]
    return {**containers, **by_module}


def receptive_field(model: Any, layer: str, *, position: tuple[int, int] = (0, 0),
                    input_size: int | tuple[int, int] = 224) -> ReceptiveField:
    """The analytic receptive field of ``layer``'s value at ``position = (y, x)``.

    Example:
        >>> receptive_field(torchvision.models.vgg16(), "features.30").size  # doctest: +SKIP
        (212, 212)
    """
    module = getattr(model, "module", model)
    name = resolve_layers(module, [layer])[0]
    fields = _fields(module)
    rf = fields.get(name)
    if rf is None:
        raise ConfigError(f"layer '{name}' has no spatial receptive field (its output is not a "
                          "map of the input, e.g. after global pooling or a Linear layer).")
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    (jy, ly, hy), (jx, lx, hx) = rf
    y, x = position
    box = (int(y * jy + ly), int(x * jx + lx), int(y * jy + hy) + 1, int(x * jx + hx) + 1)
    clipped = (max(box[0], 0), max(box[1], 0), min(box[2], h), min(box[3], w))
    return ReceptiveField(box, clipped, (box[2] - box[0], box[3] - box[1]), (jy, jx), (ly, lx))


def empirical_receptive_field(model: Any, layer: str, *, position: tuple[int, int],
                              channel: int | None = None, input_size: int | tuple[int, int] = 224,
                              image: torch.Tensor | None = None) -> tuple[ReceptiveField, Any]:
    """The support of d(value)/d(input): its bounding box and the gradient-magnitude map.

    Returns:
        ``(ReceptiveField of the support's bounding box, effective RF (H, W) numpy array)``.
    """
    module = getattr(model, "module", model)
    name = resolve_layers(module, [layer])[0]
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    x = (image if image is not None else torch.randn(1, 3, h, w)).clone().requires_grad_(True)
    seen: dict[str, torch.Tensor] = {}
    handle = dict(module.named_modules())[name].register_forward_hook(
        lambda _m, _i, out: seen.setdefault("out", out))
    try:
        module(x)
    finally:
        handle.remove()
    out = seen["out"]
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise ConfigError(f"layer '{name}' has no spatial receptive field (its output is not "
                          "feature maps (N, C, H, W)).")
    y0, x0 = position
    if not (0 <= y0 < out.shape[2] and 0 <= x0 < out.shape[3]):
        raise ConfigError(f"position {tuple(position)} is outside the {out.shape[2]} x "
                          f"{out.shape[3]} map of '{name}' (y in 0..{out.shape[2] - 1}, x in "
                          f"0..{out.shape[3] - 1}).")
    value = out[0, :, y0, x0].sum() if channel is None else out[0, channel, y0, x0]
    grad = torch.autograd.grad(value, x)[0][0].abs().sum(0)
    rows = torch.nonzero(grad.sum(1)).flatten()
    cols = torch.nonzero(grad.sum(0)).flatten()
    if rows.numel() == 0:
        raise ConfigError(f"the gradient of '{name}' at {position} is zero everywhere.")
    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    return (ReceptiveField(box, box, (box[2] - box[0], box[3] - box[1]), (float("nan"),) * 2,
                           (float("nan"),) * 2), grad.detach().numpy())

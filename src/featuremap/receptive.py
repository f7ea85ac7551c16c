"""Receptive fields: which input pixels a value of a layer can depend on.

Analytic: the network is traced (torch.fx; for timm models that plain tracing cannot follow,
with timm's own leaf modules) and one shape pass on zeros gives every node's output shape. Each
node whose output is a map of the input then carries, per spatial axis, the affine map from an
output index ``p`` to the input interval ``[p * jump + lo, p * jump + hi]`` (inclusive) that it
can see, and which tensor dims hold y and x:

- convolutions and fixed pools (modules, subclasses and functional calls) grow it by their
  kernel, stride, padding and dilation; padding done inside ``forward()`` (TensorFlow's 'SAME')
  is read from the shapes, ``F.pad`` shifts the map;
- nodes with several map inputs (skip connections ``x + f(x)``, concatenations) take the union;
- pointwise nodes (activations, batch norm, channels-last Linear layers) keep it; permutes and
  reshapes move the y and x dims, or merge them into tokens (class tokens put in front counted);
- attention (``scaled_dot_product_attention``, products of two maps) makes it the whole image;
- global pooling, spatial means, flattening and Linear layers on flattened maps give "global":
  the value depends on the whole input but is no longer a map; a global result multiplied back
  into the maps (squeeze-and-excitation) or a GroupNorm marks them ``global_context``;
- anything else that moves positions (upsampling, crops) is left undefined rather than guessed.

Empirical: the support of the gradient of one value with respect to the input, and the gradient
magnitude as the effective receptive field; it works on any model.
"""

from __future__ import annotations

import contextlib
import io
import math
import sys
import weakref
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from featuremap.capture import blank_input, inference_state
from featuremap.errors import ConfigError
from featuremap.layers import in_channels, resolve_layers, size_pair

__all__ = [
    "GLOBAL",
    "ReceptiveField",
    "UntraceableError",
    "check_position",
    "field_label",
    "field_labels",
    "receptive_field",
    "receptive_fields",
]


class UntraceableError(ConfigError):
    """torch.fx cannot trace the model: only the empirical (gradient) field is available."""


@dataclass(frozen=True)
class ReceptiveField:
    """The input region one value of a layer depends on.

    Attributes:
        box: ``(y0, x0, y1, x1)`` in input pixels, end exclusive, not clipped to the image.
        clipped_box: the same, clipped to the input size.
        size: ``(h, w)`` of ``box``.
        stride: the layer's cumulative stride ``(sy, sx)``.
        offset: input coordinate ``(y, x)`` of the first pixel seen by position (0, 0).
        global_context: True when the value also depends on every input pixel through a global
            operation on the way (the global pooling of a squeeze-and-excitation block, a
            GroupNorm): its gradient then reaches the whole image, and ``box`` is the field of
            the convolution path.
        whole: True when every value sees the whole input through attention: ``box`` is then
            the whole input and ``offset`` is 0.
    """

    box: tuple[int, int, int, int]
    clipped_box: tuple[int, int, int, int]
    size: tuple[int, int]
    stride: tuple[float, float]
    offset: tuple[float, float]
    global_context: bool = False
    whole: bool = False


_Axis = tuple[float, float, float]  # jump, lo, hi (input pixels, inclusive; -inf, inf: all)
GLOBAL = "global"  # depends on every input pixel, but is no longer a map (global pooling, Linear)
_ANALYSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> {key: fields}

# ops whose output, where the map's dims are gone or of size 1, pooled over every position
_REDUCERS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp",
             "adaptive_avg_pool2d", "adaptive_max_pool2d", "AdaptiveAvgPool2d",
             "AdaptiveMaxPool2d"}
# same shape out as in, yet every value depends on every position of its channel (group)
_SPATIAL_NORMS = ("GroupNorm", "InstanceNorm", "group_norm", "instance_norm")
# same shape out as in, but positions move: not modelled
_MOVERS = {"flip", "fliplr", "flipud", "roll", "rot90", "grid_sample", "interpolate",
           "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d", "pixel_shuffle",
           "pixel_unshuffle", "PixelShuffle", "PixelUnshuffle", "opaque"}
_METADATA = ("shape", "dtype", "device", "ndim", "is_cuda")
_MIXERS = {"scaled_dot_product_attention", "matmul", "bmm", "baddbmm", "einsum"}
_DIM_REDUCERS = {"mean", "sum", "amax", "amin", "logsumexp"}  # (input, dim, ...)
_RESHAPES = {"permute", "transpose", "swapaxes", "view", "reshape", "flatten", "Flatten",
             "unflatten"}
_KERNEL_OPS = {"Conv2d", "MaxPool2d", "AvgPool2d", "conv2d", "max_pool2d", "avg_pool2d",
               "max_pool2d_with_indices"}


@dataclass(frozen=True)
class _Field:
    """A node whose output is a map of the input: which tensor dims are (y, x), their sizes, the
    affine interval per axis, and whether a global operation also feeds it. Tokens have
    ``dims = (t, t)``: dim ``t`` holds ``prefix`` other tokens, then the map in raster order."""

    dims: tuple[int, int]
    sizes: tuple[int, int]
    axes: tuple[_Axis, _Axis]
    global_context: bool = False
    rank: int = 4
    prefix: int = 0

    @property
    def spots(self) -> tuple[tuple[int, ...], tuple[int, ...]]:  # (y, x) or the token dim
        if self.dims[0] == self.dims[1]:
            return self.dims[:1], (self.prefix + self.sizes[0] * self.sizes[1],)
        return self.dims, self.sizes

    whole = property(lambda self: math.isinf(self.axes[0][1]))  # every position sees all

    def at(self, dims: tuple[int, int], rank: int, **changes: Any) -> _Field:
        return replace(self, dims=dims, rank=rank, **changes)  # the same map, moved or changed


def _two(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


_KERNEL_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def _op_name(node: Any, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        module = modules[node.target]
        if isinstance(module, _KERNEL_MODULES):  # subclasses too (timm's Conv2dSame, ...)
            return next(c.__name__ for c in _KERNEL_MODULES if isinstance(module, c))
        if next(module.children(), None) is not None and any(
                isinstance(m, _KERNEL_MODULES) for m in module.modules()):
            return "opaque"  # a leaf of the trace with convolutions inside: not followed
        return type(module).__name__
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)


def _arg(node: Any, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def _kernel_geometry(node: Any, name: str, modules: dict[str, nn.Module]) -> tuple:
    """(kernel, stride, padding, dilation) per axis of a convolution or a fixed pool node."""
    if node.op == "call_module":
        m = modules[node.target]
        kernel, stride = m.kernel_size, m.stride if m.stride is not None else m.kernel_size
        padding, dilation = m.padding, getattr(m, "dilation", 1)
    elif name == "conv2d":
        kernel = (_shape(node.args[1]) or (0, 0, 1, 1))[-2:]
        stride, padding = _arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0)
        dilation = _arg(node, 5, "dilation", 1)
    else:  # max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1), avg_pool2d
        kernel, stride = _arg(node, 1, "kernel_size", 1), _arg(node, 2, "stride", None)
        padding = _arg(node, 3, "padding", 0)
        dilation = _arg(node, 4, "dilation", 1) if "max" in name else 1
        stride = stride if stride not in (None, [], ()) else kernel
    k, s, d = _two(kernel), _two(stride), _two(dilation)
    if isinstance(padding, str):  # 'same' pads d * (k - 1) // 2 before, 'valid' nothing
        padding = tuple(di * (ki - 1) // 2 for ki, di in zip(k, d)) if padding == "same" else 0
    p = list(_two(padding))
    sizes_in, sizes_out = (_shape(node.args[0]) or ())[-2:], (_shape(node) or ())[-2:]
    ceil = bool(getattr(modules.get(node.target), "ceil_mode", False)) if node.op == \
        "call_module" else bool(_arg(node, 5, "ceil_mode", False))
    for i, (n_in, n_out) in enumerate(zip(sizes_in, sizes_out)):
        span = n_in + 2 * p[i] - d[i] * (k[i] - 1) - 1
        if (-(-span // s[i]) if ceil else span // s[i]) + 1 != n_out:
            # padded in forward() (TensorFlow's 'SAME', e.g. timm's Conv2dSame): the extra
            # cells go half before the map, the odd one after it
            p[i] = max((n_out - 1) * s[i] + d[i] * (k[i] - 1) + 1 - n_in, 0) // 2
    return k, s, (p[0], p[1]), d


def _grow(axes: tuple[_Axis, _Axis], geometry) -> tuple[_Axis, _Axis]:
    out = []
    for (jump, lo, hi), k, s, p, d in zip(axes, *geometry):
        out.append((jump * s, lo - p * jump, hi + (d * (k - 1) - p) * jump))
    return out[0], out[1]


def _moved(field: _Field, node: Any, name: str) -> _Field | str | None:
    """Follow the spatial dims through permute/transpose and view/reshape/flatten."""
    out = _shape(node)
    if out is None:
        return None
    if name in ("permute", "transpose", "swapaxes"):
        rank = len(out)
        rest = [a for a in node.args[1:]] or list(node.kwargs.values())
        dims = [int(d) % rank for d in (rest[0] if len(rest) == 1 and isinstance(
            rest[0], (tuple, list)) else rest)]
        if name != "permute":
            a, b = dims
            dims = list(range(rank))
            dims[a], dims[b] = b, a
        return field.at(tuple(dims.index(d) for d in field.dims), rank)
    inp = _shape(node.args[0])
    flat = field.dims[0] == field.dims[1]
    if inp is None or field.dims[1] not in (field.dims[0], field.dims[0] + 1):
        return None
    before, count = math.prod(inp[:field.dims[0]]), field.sizes[0] * field.sizes[1]
    for i in range(len(out)):
        if math.prod(out[:i]) != before:
            continue
        if out[i:i + 2] == field.sizes and field.prefix == 0:  # (y, x), split again if tokens
            return field.at((i, i + 1), len(out))
        if out[i] == (field.spots[1][0] if flat else count):  # y and x merged: tokens
            return field.at((i, i), len(out))
    return GLOBAL if len(out) <= 2 else None  # flattened to a vector, or moved (windows)


def _step(node: Any, name: str, inputs: list, modules: dict[str, nn.Module]) -> Any:
    """The state of one node's output from its inputs' states."""
    if name in ("size", "dim") or name == "getattr" and node.args[1] in _METADATA:
        return "const"  # x.shape, x.size(0): numbers, not values of the map
    maps = [s for s in inputs if isinstance(s, _Field)]
    if any(s is None for s in inputs):
        return None
    if not maps:
        return GLOBAL if GLOBAL in inputs else "const"
    glob = GLOBAL in inputs or any(m.global_context for m in maps)
    first = maps[0]
    union = tuple((axis[0], min(m.axes[i][1] for m in maps), max(m.axes[i][2] for m in maps))
                  for i, axis in enumerate(first.axes))
    field = replace(first, axes=(union[0], union[1]), global_context=glob)
    out = _shape(node)
    if name in _KERNEL_OPS:
        if out is None or field.dims != (len(out) - 2, len(out) - 1):  # not an (N, C, H, W) map
            return None
        return field.at(field.dims, len(out), sizes=out[-2:], axes=_grow(
            field.axes, _kernel_geometry(node, name, modules)))
    if name == "pad":
        return _padded(field, node)
    if name in _RESHAPES:
        return _moved(field, node, name)
    if out is None:  # tuples and other containers pass the field on (getitem reads it)
        return field
    if name in ("cat", "concat", "concatenate") and field.dims[0] == field.dims[1]:
        return _tokens_joined(field, node, out, len(maps))
    if name in _DIM_REDUCERS and _reduces(field, _arg(node, 1, "dim", None)):
        return GLOBAL  # pooled over the positions: x.mean((2, 3)), tokens.mean(1)
    where, prefix = _where(field, out)
    if name in _MIXERS and len(maps) > 1:  # attention: every position sees every other
        field = replace(field, axes=tuple((j, -math.inf, math.inf) for j, _, _ in field.axes))
    if field.whole and where is None:  # whatever comes of it depends on the whole input
        return GLOBAL
    if name in _MOVERS:
        return None
    if name in ("linear", "Linear"):  # pointwise unless it mixes along a spatial dim
        return field.at(where, len(out), prefix=prefix) if where and max(
            where) < len(out) - 1 else GLOBAL
    if where is not None:  # the map's sizes at the same dims: pointwise in space
        spatial_norm = any(n in name for n in _SPATIAL_NORMS) or (
            name in ("LayerNorm", "layer_norm") and _normalises_space(node, modules, where))
        return field.at(where, len(out), prefix=prefix, global_context=glob or spatial_norm)
    if name in _REDUCERS and all(out[d] == 1 for d in field.dims if d < len(out)):
        return GLOBAL  # pooled over every position
    return None  # an op that moves positions in a way not modelled (crops, adaptive pools)


def _reduces(field: _Field, dim: Any) -> bool:
    dims = range(field.rank) if dim is None else dim if isinstance(dim, (tuple, list)) else [dim]
    return bool({int(d) % field.rank for d in dims} & set(field.spots[0]))


def _tokens_joined(field: _Field, node: Any, out: tuple[int, ...], fields: int) -> Any:
    """``torch.cat`` of constant (class, register) tokens in front of the map's: its prefix."""
    dim, (where, prefix) = int(_arg(node, 1, "dim", 0)) % len(out), _where(field, out)
    last = _shape(node.args[0][-1]) if isinstance(node.args[0], (list, tuple)) else None
    if dim == field.dims[0] and fields == 1 and last and last[dim] == field.spots[1][0]:
        where, prefix = field.dims, out[dim] - field.sizes[0] * field.sizes[1]
    return field.at(where, len(out), prefix=prefix) if where else None


def _where(field: _Field, out: tuple[int, ...]) -> tuple[tuple[int, int] | None, int]:
    """The map's dims in ``out`` (counted from the front, else the back) and its prefix."""
    dims, sizes = field.spots
    allowed = [sizes] + ([(sizes[0] - field.prefix,)] if field.prefix else [])
    for found in (field.dims, tuple(len(out) + d - field.rank for d in field.dims)):
        if min(found) >= 0 and max(found) < len(out):
            got = tuple(out[d] for d in found[:len(dims)])
            if got in allowed:
                return found, field.prefix - (sizes[0] - got[0])
    return None, 0


def _padded(field: _Field, node: Any) -> _Field | None:
    """F.pad with constant amounts on the last two dims (the spatial ones): the map shifts."""
    pads = _arg(node, 1, "pad", ())
    out = _shape(node)
    if (out is None or field.dims != (len(out) - 2, len(out) - 1) or len(pads) > 4
            or not all(isinstance(v, int) for v in pads)):
        return None
    left, top = (list(pads) + [0, 0, 0, 0])[0], (list(pads) + [0, 0, 0, 0])[2]
    axes = tuple((j, lo - before * j, hi - before * j)
                 for (j, lo, hi), before in zip(field.axes, (top, left)))
    return field.at(field.dims, len(out), sizes=out[-2:], axes=(axes[0], axes[1]))


def _normalises_space(node: Any, modules: dict[str, nn.Module], dims: tuple[int, int]) -> bool:
    """True when a layer norm's normalised (last) dims include a spatial dim."""
    if node.op == "call_module":
        shape = modules[node.target].normalized_shape
    else:
        shape = _arg(node, 1, "normalized_shape", (1,))
    count = 1 if isinstance(shape, int) else len(shape)
    return max(dims) >= len(_shape(node) or ()) - count


def _symbolic_trace(model: nn.Module) -> Any:
    """torch.fx's trace; where it fails and timm is in use, again keeping as leaves what timm
    marks as not traceable (its padded-in-forward convolutions and pools, attention blocks)."""
    import torch.fx

    try:
        return torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001
        if "timm" not in sys.modules:
            raise
    try:  # timm's public names (timm >= 0.9); older releases kept them in a private module
        from timm.layers import get_notrace_functions, get_notrace_modules
    except ImportError:  # pragma: no cover - an older timm
        try:
            from timm.layers._fx import get_notrace_functions, get_notrace_modules
        except ImportError:
            raise RuntimeError("timm's tracing helpers are missing") from None
    leaves, functions = set(get_notrace_modules()), tuple(get_notrace_functions())

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return type(m) in leaves or super().is_leaf_module(m, qualname)

    tracer = Tracer(autowrap_functions=functions)
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def _trace(model: nn.Module, input_size: tuple[int, int]) -> Any:
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        with inference_state(model):  # trace the inference branches (no auxiliary heads)
            graph = _symbolic_trace(model)
    except Exception as err:  # noqa: BLE001 - any tracing failure means the same to the user
        raise UntraceableError(f"{type(model).__name__} cannot be traced for an analytic receptive "
                          f"field ({type(err).__name__}); use empirical_receptive_field.") from None
    shape = (1, in_channels(model), *input_size)
    try:  # ShapeProp prints a traceback of its own on failure: keep it off the terminal
        with inference_state(graph), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(graph).propagate(blank_input(model, shape))
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"the forward pass of {type(model).__name__} on an input "
                          f"{shape[2]}x{shape[3]} failed while tracing its receptive fields "
                          f"({type(err).__name__}); check input_size.") from None
    return graph


def _fields(model: nn.Module, input_size: tuple[int, int]) -> dict[str, Any]:
    """:func:`_analyse`, kept per module (weakly) and input size until the module changes."""
    key, kept = (input_size, str(model)), _ANALYSED.setdefault(model, {})
    if key not in kept:
        if len(kept) > 8:
            kept.clear()
        kept[key] = _analyse(model, input_size)
    return kept[key]


def _analyse(model: nn.Module, input_size: tuple[int, int]) -> dict[str, Any]:
    """The state of every module's output, by module name: a _Field for maps of the input,
    GLOBAL for outputs that depend on the whole input but are not maps, None when unknown."""
    graph = _trace(model, input_size)
    modules = dict(graph.named_modules())
    state: dict[Any, Any] = {}
    by_module: dict[str, Any] = {}
    containers: dict[str, Any] = {}
    image = True
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            state[node] = _Field((2, 3), tuple(input_size), ((1.0, 0.0, 0.0),) * 2) if image \
                else "const"
            image = False
            continue
        if node.op in ("get_attr", "output"):
            state[node] = "const" if node.op == "get_attr" else None
            continue
        inputs = [state[a] for a in node.all_input_nodes if a in state]
        name = _op_name(node, modules)
        state[node] = _step(node, name, [s for s in inputs if s != "const"], modules)
        if node.op == "call_module":  # a reused module: its first call, as extract() keeps
            by_module.setdefault(node.target, state[node])
            if name != "opaque":  # a leaf of the trace without kernels: its parts are pointwise
                for inner, _ in modules[node.target].named_modules(prefix=node.target):
                    by_module.setdefault(inner, state[node])
        for entry in (node.meta.get("nn_module_stack") or {}).values():
            path = entry[0] if isinstance(entry, tuple) else str(entry)
            if path and path != node.target:  # a container ends with its last node
                containers[path] = state[node]
    return {k: (None if v == "const" else v) for k, v in {**containers, **by_module}.items()}


def _box(field: _Field, position: tuple[int, int], size: tuple[int, int]) -> ReceptiveField:
    (jy, ly, hy), (jx, lx, hx) = field.axes
    if field.whole:
        box = (0, 0, size[0], size[1])
        return ReceptiveField(box, box, size, (jy, jx), (0.0, 0.0), field.global_context, True)
    y, x = position
    box = (int(y * jy + ly), int(x * jx + lx), int(y * jy + hy) + 1, int(x * jx + hx) + 1)
    clipped = (max(box[0], 0), max(box[1], 0), min(box[2], size[0]), min(box[3], size[1]))
    return ReceptiveField(box, clipped, (box[2] - box[0], box[3] - box[1]), (jy, jx), (ly, lx),
                          field.global_context)


def receptive_field(model: Any, layer: str, *, position: tuple[int, int] = (0, 0),
                    input_size: int | tuple[int, int] = 224) -> ReceptiveField:
    """The analytic receptive field of ``layer``'s value at ``position = (y, x)``.

    Args:
        model: a model from :func:`featuremap.load_model` or any ``nn.Module`` that torch.fx can
            trace.
        layer: a layer name (exact, glob or regex; the first match).
        position: ``(y, x)`` in the layer's output map.
        input_size: the input ``H = W`` or ``(H, W)``; it sets the map sizes and the clipping.

    Raises:
        ConfigError: a layer whose output is not a map of the input (after global pooling, a
            Linear layer, upsampling, windows), a position outside the map, an untraceable model.

    Example:
        >>> receptive_field(torchvision.models.vgg16(), "features.30").size  # doctest: +SKIP
        (212, 212)
    """
    module, size = getattr(model, "module", model), size_pair(input_size)
    name = resolve_layers(module, [layer], model_name=getattr(model, "name", None))[0]
    field = _fields(module, size).get(name)
    if not isinstance(field, _Field):
        why = ("it depends on the whole input but is not a map (after global pooling, flattening "
               "or a Linear layer)" if field == GLOBAL else "its output is not a map of the input"
               " that the analysis can follow (e.g. after upsampling, windows), or it did not run")
        raise ConfigError(f"layer '{name}' has no spatial receptive field: {why}.")
    check_position(position, field.sizes, name)
    return _box(field, position, size)


def check_position(position: Any, sizes: tuple[int, int], name: str) -> None:
    y, x = position
    if not (0 <= y < sizes[0] and 0 <= x < sizes[1]):
        raise ConfigError(f"position {tuple(position)} is outside the {sizes[0]} x {sizes[1]} "
                          f"map of '{name}' (y in 0..{sizes[0] - 1}, x in 0..{sizes[1] - 1}).")


def field_label(field: ReceptiveField | str | None) -> str:
    """A short label for pictures and listings: ``'field 16 px'``, ``'field 7 px + global'``,
    ``'field: whole image'``, or ``''`` where undefined."""
    if field == GLOBAL or getattr(field, "whole", False):
        return "field: whole image"
    if not isinstance(field, ReceptiveField):
        return ""
    size = "x".join(dict.fromkeys(str(s) for s in field.size))  # '16', or '16x9'
    return f"field {size} px" + (" + global" if field.global_context else "")


def field_labels(model: Any, layers: Any, *, input_size: int | tuple[int, int] = 224
                 ) -> dict[str, str]:
    """:func:`field_label` of each of ``layers`` (names), from one trace."""
    fields = receptive_fields(model, input_size=input_size)
    return {name: field_label(fields.get(name)) for name in layers}


def receptive_fields(model: Any, *, input_size: int | tuple[int, int] = 224
                     ) -> dict[str, ReceptiveField | str | None]:
    """The receptive field of position (0, 0) of every layer, from one trace.

    Returns:
        ``{layer name: ReceptiveField}`` for layers whose output is a map of the input (``size``
        and ``stride`` hold for every position); ``"global"`` for layers whose output depends on
        the whole input but is not a map (global pooling, Linear); ``None`` where undefined.
    """
    module, size = getattr(model, "module", model), size_pair(input_size)
    return {name: _box(f, (0, 0), size) if isinstance(f, _Field) else f
            for name, f in _fields(module, size).items()}

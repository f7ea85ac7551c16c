"""The one engine that runs a model and captures what its layers produce.

Every part of featuremap that runs a network goes through :class:`Capture` (or, for shapes alone,
:func:`trace_shapes`): extraction, Grad-CAM and CAM, the one-pass analysis, ``explain`` of a
network value, the empirical receptive field and the layer table. It

- takes the layers already resolved (``featuremap.layers.resolve_layers``) and, per layer, keeps
  its output (and, when asked, its input) in one of three ways (``keep``): ``"copy"`` (a detached
  copy taken the moment the layer runs, so a later in-place op cannot change it), ``"graph"``
  (the live tensor with its autograd graph, for gradients; the rest of the network gets a clone,
  so in-place ops after the layer change neither the values nor their gradient) or
  ``"buffers"`` (copied into buffers reused from the previous call);
- ends the forward pass once the last requested layer has run (``early_stop``): nothing after it
  runs;
- runs in eval mode with every parameter's ``requires_grad`` off, and restores each module's mode
  and each parameter's flag afterwards, also on errors (a model left in training mode would
  change its batch-norm statistics and its maps: the result's ``notes`` say so);
- unwraps outputs by one rule: a tensor is kept as it is; a dict keeps its ``'out'`` tensor, else
  its first tensor value; a tuple or list keeps its first tensor (nested ones searched depth
  first); a module called several times in one pass is captured at its first call;
- turns each output into ``(N, C, H, W)`` maps when it is one (see :mod:`featuremap.layouts`:
  channels-last outputs and transformer tokens included) and records the layout in
  :class:`LayerMeta`; other outputs are kept as they are, with the reason they are not maps.

Registering hooks happens in :func:`hooked` and nowhere else.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from featuremap.errors import ConfigError, FeaturemapError, did_not_run
from featuremap.layers import FoldedShape, describe_module, geometry
from featuremap.layouts import Layout, describe_output, layout_of, to_maps

__all__ = [
    "KEEP",
    "Capture",
    "Captured",
    "LayerMeta",
    "blank_input",
    "device_of",
    "explain_failure",
    "first_tensor",
    "hooked",
    "inference_state",
    "trace_shapes",
]

KEEP = ("copy", "graph", "buffers")
TRAINING_NOTE = ("the model was in training mode: its maps were captured in eval mode (batch norm "
                 "on its running statistics, no dropout) and its mode restored")
_MAX_PROBE = 512  # largest input side tried when looking for the smallest working input


class _Stop(BaseException):
    """Raised by a hook to end the forward pass once every requested layer has run."""


@dataclass(frozen=True)
class LayerMeta:
    """What is known of one captured layer.

    Attributes:
        name: the ``named_modules()`` path.
        type: the module's class name.
        shape: the shape of what was kept: ``(N, C, H, W)`` for feature maps.
        stride: input pixels per map pixel ``(sy, sx)``, None when the output is not a map.
        note: how the output was taken when it was not a plain NCHW tensor.
        layout: ``"NCHW"``, ``"NHWC"``, ``"tokens"``, ``"vector"`` or ``"other"``.
        source_shape: the shape the layer itself produced.
        prefix_tokens: class/register tokens dropped (layout ``"tokens"``).
        reason: why the output is not feature maps (``""`` when it is).
    """

    name: str
    type: str
    shape: tuple[int, ...]
    stride: tuple[float, float] | None
    note: str = ""
    layout: str = "NCHW"
    source_shape: tuple[int, ...] = ()
    prefix_tokens: int = 0
    reason: str = ""

    @property
    def is_map(self) -> bool:
        """True when the layer's output is feature maps ``(N, C, H, W)``."""
        return self.layout in ("NCHW", "NHWC", "tokens")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "shape": list(self.shape),
                "stride": list(self.stride) if self.stride else None, "note": self.note,
                "layout": self.layout, "source_shape": list(self.source_shape),
                "prefix_tokens": self.prefix_tokens, "reason": self.reason}


# ----------------------------------------------------------------------------- outputs


def first_tensor(output: Any) -> tuple[torch.Tensor | None, tuple, str]:
    """The tensor that stands for a module's output, where it sits, and a note on how it was
    taken (``""`` for a plain tensor); ``(None, (), "")`` when there is none."""
    if isinstance(output, torch.Tensor):
        return output, (), ""
    if isinstance(output, Mapping):
        if isinstance(output.get("out"), torch.Tensor):
            return output["out"], ("out",), "dict output: 'out' kept"
        for key, value in output.items():
            found, path, _ = first_tensor(value)
            if found is not None:
                return found, (key, *path), f"dict output: '{key}' kept"
        return None, (), ""
    if isinstance(output, (tuple, list)):
        for i, item in enumerate(output):
            found, path, _ = first_tensor(item)
            if found is not None:
                kind = type(output).__name__
                return found, (i, *path), f"{kind} output of {len(output)}: element {i} kept"
    return None, (), ""


def _replace(output: Any, path: tuple, new: torch.Tensor) -> Any:
    """``output`` with the tensor at ``path`` replaced by ``new`` (containers copied)."""
    if not path:
        return new
    key, rest = path[0], path[1:]
    if isinstance(output, Mapping):
        copy = dict(output)
        copy[key] = _replace(output[key], rest, new)
        return type(output)(copy) if type(output) is not dict else copy
    items = list(output)
    items[key] = _replace(items[key], rest, new)
    if isinstance(output, tuple):
        return type(output)._make(items) if hasattr(output, "_fields") else tuple(items)
    return items


# ------------------------------------------------------------------------------- hooks


@contextmanager
def hooked(module: nn.Module, *, before: Mapping[str, Callable] | None = None,
           after: Mapping[str, Callable] | None = None) -> Iterator[None]:
    """Register forward pre-hooks (``before[name](module, args)``) and forward hooks
    (``after[name](module, args, output)``) on the named submodules; always remove them."""
    modules = dict(module.named_modules())
    handles = []
    try:
        for name, hook in (before or {}).items():
            handles.append(modules[name].register_forward_pre_hook(hook))
        for name, hook in (after or {}).items():
            handles.append(modules[name].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def inference_state(module: nn.Module, *, notes: list[str] | None = None) -> Iterator[None]:
    """Eval mode and frozen parameters for the block; every module's mode and every parameter's
    ``requires_grad`` restored afterwards. A module found in training mode adds a note."""
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    if notes is not None and any(training for _, training in modes):
        notes.append(TRAINING_NOTE)
    try:
        module.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def device_of(module: nn.Module) -> torch.device:
    """Where the module's parameters (else buffers) are; the CPU for a module without any."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):  # the first only
        return tensor.device
    return torch.device("cpu")


def blank_input(module: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """Zeros of ``shape`` with the device and float dtype of ``module``'s parameters."""
    first = next((t for t in (*module.parameters(), *module.buffers())
                  if t.is_floating_point()), None)
    if first is None:
        return torch.zeros(shape)
    return torch.zeros(shape, dtype=first.dtype, device=first.device)


# ------------------------------------------------------------------------------- engine


@dataclass
class Captured:
    """What one forward pass captured.

    Attributes:
        maps: by layer, in request order: ``(N, C, H, W)`` maps where the output is one, else
            the output tensor as it is (see ``meta[name].reason``).
        meta: :class:`LayerMeta` by layer.
        inputs: the first input tensor of each layer whose input was asked for.
        output: the model's output, or None when the pass stopped early.
        notes: what the engine did that the caller should say (training mode, layouts).
    """

    maps: dict[str, torch.Tensor]
    meta: dict[str, LayerMeta]
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    output: Any = None
    notes: list[str] = field(default_factory=list)
    live: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    layouts: dict[str, Layout] = field(default_factory=dict, repr=False)

    def map(self, name: str) -> torch.Tensor:
        """The maps ``(N, C, H, W)`` of ``name``, or a ConfigError saying why it has none."""
        meta = self.meta[name]
        if not meta.is_map:
            raise ConfigError(f"layer '{name}' gives an output of shape {meta.source_shape}, not "
                              f"feature maps (N, C, H, W): {meta.reason}; pick layers with maps "
                              "('featuremap layers MODEL' lists every layer's output shape).")
        return self.maps[name]

    def grad(self, score: torch.Tensor, name: str) -> torch.Tensor | None:
        """d(score)/d(maps of ``name``) as ``(N, C, H, W)`` (``keep="graph"`` only); None when
        the score does not depend on the layer. Take ``score`` from :attr:`output` under
        ``torch.enable_grad()`` (indexing inside ``torch.no_grad()`` leaves the graph)."""
        if name not in self.live:
            raise ConfigError(f"gradients need keep='graph'; layer '{name}' was not kept live.")
        if not score.requires_grad:  # nothing kept live is on the score's path
            return None
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(score, self.live[name], allow_unused=True,
                                          retain_graph=True)
        return None if grad is None else to_maps(grad, self.layouts[name])


class Capture:
    """Run a model and keep the outputs (and inputs) of some of its layers.

    Args:
        module: the network.
        layers: resolved ``named_modules()`` paths whose outputs to keep, in order.
        inputs: resolved paths whose (first) input tensor to keep as well.
        keep: ``"copy"``, ``"graph"`` or ``"buffers"`` (see the module docstring).
        early_stop: end the pass once every requested output and input has been seen.
        model_name: the name used in messages.
        prefix_tokens: the model's number of class/register tokens, if it says.
        allocate: ``allocate(shape, dtype, device)`` gives the memory of each copy (default
            ``torch.empty``).
        allow_missing: layers that do not run are left out of the result instead of being an
            error (to capture "everything that runs").

    Example:
        >>> got = Capture(net, ["layer1"])(torch.zeros(1, 3, 64, 64))  # doctest: +SKIP
        >>> got.maps["layer1"].shape  # doctest: +SKIP
        torch.Size([1, 64, 16, 16])
    """

    def __init__(self, module: nn.Module, layers: Sequence[str], *, inputs: Sequence[str] = (),
                 keep: str = "copy", early_stop: bool = True, model_name: str = "",
                 prefix_tokens: int | None = None,
                 allocate: Callable[..., torch.Tensor] | None = None,
                 allow_missing: bool = False) -> None:
        if keep not in KEEP:
            raise ConfigError(f"keep must be one of {', '.join(KEEP)}, got {keep!r}.")
        self.module, self.layers, self.input_layers = module, list(layers), list(inputs)
        self.keep, self.early_stop, self.prefix_tokens = keep, early_stop, prefix_tokens
        self.model_name = model_name or type(module).__name__
        self.allocate = allocate or (lambda shape, dtype, device: torch.empty(
            shape, dtype=dtype, device=device))
        self._modules = dict(module.named_modules())
        self._buffers: dict[str, torch.Tensor] = {}
        self.allow_missing = allow_missing

    def _keep(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A copy of a (maps-layout) view, into fresh memory or this layer's buffer."""
        if self.keep == "buffers":
            buffer = self._buffers.get(name)
            if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
                buffer = self._buffers[name] = torch.empty(tensor.shape, dtype=tensor.dtype,
                                                           device=tensor.device)
            return buffer.copy_(tensor)
        return self.allocate(tuple(tensor.shape), tensor.dtype, tensor.device).copy_(tensor)

    def __call__(self, batch: torch.Tensor, *,
                 call: Callable[[nn.Module, torch.Tensor], Any] | None = None) -> Captured:
        """One forward pass of a prepared batch ``(N, C, H, W)``.

        ``call(module, batch)`` replaces ``module(batch)`` when the network is entered another
        way (a segmentation head fed by maps of an earlier pass); it runs in the same state.
        """
        got = Captured({}, {}, notes=[])
        pending = set(self.layers) | {("in", n) for n in self.input_layers}
        size, count = (int(batch.shape[-2]), int(batch.shape[-1])), int(batch.shape[0])

        def done(key: Any) -> None:
            pending.discard(key)
            if self.early_stop and not pending:
                raise _Stop

        def after(name: str) -> Callable:
            def hook(module: nn.Module, _args: Any, output: Any) -> Any:
                if name in got.meta:  # a reused module: its first call only
                    return None
                replaced = self._take(name, module, output, got, size, count)
                done(name)
                return replaced
            return hook

        def before(name: str) -> Callable:
            def hook(_module: nn.Module, args: Any) -> None:
                if name in got.inputs:
                    return
                tensor, _, _ = first_tensor(list(args))
                if tensor is not None:
                    got.inputs[name] = (tensor if self.keep == "graph"
                                        else tensor.detach().clone())
                done(("in", name))
            return hook

        grad = torch.enable_grad() if self.keep == "graph" else torch.no_grad()
        try:
            with inference_state(self.module, notes=got.notes), grad, hooked(
                    self.module, before={n: before(n) for n in self.input_layers},
                    after={n: after(n) for n in self.layers}):
                got.output = call(self.module, batch) if call else self.module(batch)
        except _Stop:
            got.output = None
        except FeaturemapError:
            raise
        except (RuntimeError, ValueError, AssertionError, IndexError, TypeError) as err:
            raise explain_failure(self.module, tuple(batch.shape), err, self.model_name) from None
        missing = [n for n in self.layers if n not in got.meta] + [
            n for n in self.input_layers if n not in got.inputs]
        if missing and not self.allow_missing:
            raise did_not_run(list(dict.fromkeys(missing)), self.model_name)
        got.maps = {n: got.maps[n] for n in self.layers if n in got.maps}
        got.meta = {n: got.meta[n] for n in self.layers if n in got.meta}
        return got

    def _take(self, name: str, module: nn.Module, output: Any, got: Captured,
              size: tuple[int, int], count: int) -> Any:
        """Keep one layer's output; return what the rest of the network should get (or None)."""
        tensor, path, note = first_tensor(output)
        if tensor is None:
            raise ConfigError(f"layer '{name}' ({type(module).__name__}) returned "
                              f"{describe_output(output)}, not a tensor: pick a layer whose "
                              "output is a feature map.")
        layout = layout_of(tuple(tensor.shape), module, batch=count, size=size,
                           prefix_hint=self.prefix_tokens)
        note = "; ".join(x for x in (note, layout.describe()) if x)
        got.layouts[name] = layout
        if self.keep == "graph":  # a leaf of the graph when nothing before it needs gradients
            live = tensor if tensor.requires_grad else tensor.detach().clone().requires_grad_()
            got.live[name] = live
            got.maps[name] = to_maps(live, layout)
            replaced = _replace(output, path, live.clone())
        else:
            got.maps[name] = self._keep(name, to_maps(tensor.detach(), layout))
            replaced = None
        kept = got.maps[name]
        stride = None
        if layout.is_map and kept.shape[2] > 0 and kept.shape[3] > 0:
            stride = (size[0] / kept.shape[2], size[1] / kept.shape[3])
        got.meta[name] = LayerMeta(name, type(module).__name__, tuple(kept.shape), stride, note,
                                   layout.kind, tuple(tensor.shape), layout.prefix, layout.reason)
        return replaced


# ------------------------------------------------------------------------ shapes alone


def trace_shapes(module: nn.Module, shape: tuple[int, int, int, int]) -> dict[str, tuple]:
    """One forward pass on zeros of ``shape`` (eval mode, no gradients): ``{name: output shape
    without the batch dim}`` for every module that ran (its first call). An output whose
    leading dim is not the batch (a module that folds something into it, such as the attention
    windows of a Swin block: ``(images x windows, heads, tokens, tokens)``) keeps its whole shape,
    which for a batch of one is the output of one image: it is not taken for ``(C, H, W)`` maps.

    Raises:
        ConfigError: the pass failed; the message names the innermost module that was running
            and, for an input too small for the network, the smallest input that works.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    running: list[tuple[str, nn.Module, tuple[int, ...] | None]] = []
    modules = dict(module.named_modules())

    def enter(name: str) -> Callable:
        def hook(m: nn.Module, args: Any) -> None:
            tensor, _, _ = first_tensor(list(args))
            running.append((name, m, tuple(tensor.shape) if tensor is not None else None))
        return hook

    def leave(name: str) -> Callable:
        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            running.pop()
            tensor, _, _ = first_tensor(output)
            if tensor is not None and name not in shapes:
                folded = tensor.dim() == 0 or tensor.shape[0] != shape[0]
                shapes[name] = (FoldedShape(tensor.shape) if folded
                                else tuple(tensor.shape[1:]))
        return hook

    try:
        with inference_state(module), torch.no_grad(), hooked(
                module, before={n: enter(n) for n in modules},
                after={n: leave(n) for n in modules}):
            module(blank_input(module, shape))
    except FeaturemapError:
        raise
    except (RuntimeError, ValueError, AssertionError, IndexError, TypeError) as exc:
        where = running[-1] if running else ("", module, shape)
        raise _pass_error(module, shape, where, exc) from exc
    return shapes


def explain_failure(module: nn.Module, shape: tuple[int, ...], err: BaseException,
                    model_name: str) -> ConfigError:
    """Why a forward pass on an input of ``shape`` failed: most often an input too small for
    the network (the shape pass names the layer); else the first line of the error."""
    if len(shape) == 4:
        try:
            trace_shapes(module, shape)
        except ConfigError as explained:
            return explained
        except Exception:  # noqa: BLE001 - the original error says more
            pass
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConfigError(f"the forward pass of {model_name} failed on an input of shape "
                       f"{tuple(shape)}: {first}")


def _pass_error(module: nn.Module, shape: tuple[int, ...],
                where: tuple[str, nn.Module, tuple[int, ...] | None],
                exc: BaseException) -> ConfigError:
    """Explain why the shape pass failed, naming the innermost module that was running."""
    name, inner, in_shape = where
    size = f"{shape[2]}x{shape[3]}"
    label = (f"layer '{name}' ({describe_module(inner)})" if name
             else f"{type(module).__name__}.forward")
    too_small = "too small" in str(exc).lower() or "kernel size can't be greater" in str(exc)
    if _vanishes(inner, in_shape) or (not geometry(inner) and too_small):
        map_size = "x".join(str(s) for s in in_shape[2:]) if in_shape else "input"
        smallest = _smallest_input(module, shape)
        fix = f" Use an input of at least {smallest}x{smallest} pixels." if smallest else (
            " Use a larger input.")
        return ConfigError(f"input {size} is too small for {type(module).__name__}: at {label} "
                           f"the {map_size} map would vanish.{fix}")
    detail = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
    end = "" if detail.endswith(("!", "?")) else "."
    return ConfigError(
        f"The forward pass of {type(module).__name__} on an input {shape[1]}x{size} failed at "
        f"{label}: {detail}{end} Check input_size and in_channels (the network may need a "
        "fixed size).")


def _vanishes(module: nn.Module, in_shape: tuple[int, ...] | None) -> bool:
    """True when a conv or pool of ``module`` gives an empty map on an input of ``in_shape``."""
    g = geometry(module)
    if not g or in_shape is None or isinstance(g["padding"], str):
        return False
    sizes = in_shape[-len(g["kernel_size"]):]
    dilation = g["dilation"] or (1,) * len(sizes)
    padding = g["padding"] or (0,) * len(sizes)
    rounding = math.ceil if getattr(module, "ceil_mode", False) else math.floor
    return any(rounding((n + 2 * p - d * (k - 1) - 1) / s) + 1 <= 0 for n, k, s, p, d in zip(
        sizes, g["kernel_size"], g["stride"], padding, dilation))


def _smallest_input(module: nn.Module, shape: tuple[int, ...]) -> int | None:
    """The smallest square side (<= 512) that runs, by doubling then bisection, or None."""
    low = min(shape[2], shape[3])
    high = low * 2
    while not _runs(module, (shape[0], shape[1], high, high)):
        low, high = high, high * 2
        if high > _MAX_PROBE:
            return None
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _runs(module, (shape[0], shape[1], middle, middle)) else (
            middle, high)
    return high


def _runs(module: nn.Module, shape: tuple[int, ...]) -> bool:
    try:
        with inference_state(module), torch.no_grad():
            module(blank_input(module, shape))
    except Exception:  # noqa: BLE001 - any failure means "does not run at this size"
        return False
    return True

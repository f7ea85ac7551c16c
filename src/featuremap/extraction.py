"""Feature maps of any layer of any PyTorch model: forward hooks, copy on capture, early stop.

:func:`extract` runs the eager model (so Python control flow works), copies each requested
layer's output the moment it is produced (an in-place op later in the network cannot change what
was captured), and ends the forward pass as soon as the last requested layer has fired: nothing
after it runs, the classifier head included. :class:`Extractor` does the same for batch after
batch and can reuse its output buffers, which saves the page faults of fresh memory.

Output rules: a tensor output is captured as it is; a tuple or list output captures its first
tensor; a dict output (torchvision's segmentation models) its ``'out'`` entry, else its first
tensor. A module called several times in one forward pass (torchvision's ResNet blocks reuse one
ReLU) is captured at its first call, the node torchvision's ``create_feature_extractor`` names
after the module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from featuremap.errors import ConfigError, did_not_run
from featuremap.images import Preprocess
from featuremap.layers import resolve_layers

__all__ = ["Extractor", "FeatureMaps", "LayerMeta", "extract", "overview_layers", "retain_memory"]


class _Stop(Exception):
    """Raised by a hook to end the forward pass once every requested layer has fired."""


@dataclass(frozen=True)
class LayerMeta:
    """What is known of one captured layer.

    Attributes:
        name: the ``named_modules()`` path.
        type: the module's class name.
        shape: the captured tensor's shape, ``(N, C, H, W)`` for feature maps.
        stride: input pixels per map pixel (``(sy, sx)``), None when the output is not spatial.
        note: how the output was taken when it was not a plain tensor.
    """

    name: str
    type: str
    shape: tuple[int, ...]
    stride: tuple[float, float] | None
    note: str = ""


@dataclass
class FeatureMaps(Mapping):
    """The maps of several layers from one forward pass, in request order.

    A mapping from layer name to a detached tensor ``(N, C, H, W)``; ``meta[name]`` says what
    each is. ``images`` holds the inputs as ``(N, 3, H, W)`` values in ``[0, 1]`` (before
    normalisation) when featuremap preprocessed them, for overlays.

    Example:
        >>> fm = extract(model, "sample:astronaut", layers=["layer1", "layer3"])  # doctest: +SKIP
        >>> fm["layer1"].shape                                                     # doctest: +SKIP
        torch.Size([1, 64, 56, 56])
    """

    maps: dict[str, torch.Tensor]
    meta: dict[str, LayerMeta]
    input_shape: tuple[int, ...]
    images: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    model_name: str = ""

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.maps[name]
        except KeyError:
            from featuremap.errors import unknown_name

            raise unknown_name("layer", name, self.maps,
                               hint="These maps hold: " + ", ".join(self.maps) + ".") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.maps)

    def __len__(self) -> int:
        return len(self.maps)

    def numpy(self) -> dict[str, np.ndarray]:
        """The maps as float32 NumPy arrays, by layer name."""
        return {k: v.float().cpu().numpy() for k, v in self.maps.items()}

    def show(self, layer: str | None = None, *, image: int = 0, top: int | None = 16, **kwargs):
        """A channel grid of one layer (default: the last), as a matplotlib Figure."""
        from featuremap.plot import plot_layer

        name = layer or list(self.maps)[-1]
        return plot_layer(self, name, image=image, top=top, **kwargs)

    def _repr_png_(self) -> bytes:
        from featuremap.plot import plot_overview
        from featuremap.report import png_bytes

        return png_bytes(plot_overview(self))

    def __repr__(self) -> str:
        rows = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.maps.items())
        return f"FeatureMaps({rows})"


def _first_tensor(output: Any) -> tuple[torch.Tensor | None, str]:
    if isinstance(output, torch.Tensor):
        return output, ""
    if isinstance(output, Mapping):
        if "out" in output and isinstance(output["out"], torch.Tensor):
            return output["out"], "dict output: 'out' kept"
        output = list(output.values())
        kind = "dict"
    else:
        kind = type(output).__name__
    if isinstance(output, (tuple, list)):
        for i, item in enumerate(output):
            if isinstance(item, torch.Tensor):
                return item, f"{kind} output of {len(output)}: element {i} kept"
    return None, ""


def _model_parts(model: Any) -> tuple[nn.Module, Preprocess, str]:
    """Accept a featuremap Model (``.module``, ``.preprocess``, ``.name``) or an nn.Module."""
    if isinstance(model, nn.Module):
        return model, Preprocess(), type(model).__name__
    module = getattr(model, "module", None)
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"model must be an nn.Module or a model from featuremap.load_model(), got "
            f"{type(model).__name__}."
        )
    return module, getattr(model, "preprocess", None) or Preprocess(), getattr(model, "name", "")


def prepare_images(images: Any, preprocess: Preprocess, *, device: torch.device | None = None
                   ) -> tuple[torch.Tensor, np.ndarray | None, list[str]]:
    """Turn images into a normalised batch ``(N, C, H, W)``; tensors are used as they are.

    Returns:
        ``(batch, images in [0, 1] or None, notes)``.
    """
    if isinstance(images, torch.Tensor):
        batch = images if images.dim() == 4 else images.unsqueeze(0)
        if batch.dim() != 4:
            raise ConfigError(f"a tensor input must be (N, C, H, W) or (C, H, W), got "
                              f"{tuple(images.shape)}.")
        return batch.to(device) if device is not None else batch, None, []
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ConfigError("no images given.")
    loaded = [preprocess.load(item) for item in items]
    notes = [f"image {i} is greyscale: its channel was repeated to RGB"
             for i, im in enumerate(loaded)
             if im.shape[0] == 3 and np.array_equal(im[0], im[1]) and np.array_equal(im[1], im[2])]
    sizes = {im.shape for im in loaded}
    if len(sizes) > 1:
        raise ConfigError(
            f"the images differ in size after preprocessing ({', '.join(map(str, sizes))}); "
            "give a crop size or pass them one at a time."
        )
    raw = np.stack(loaded)
    batch = torch.from_numpy(np.stack([preprocess.normalise(im) for im in loaded]))
    return (batch.to(device) if device is not None else batch), raw, notes


class Extractor:
    """Reusable extraction of the same layers from batch after batch.

    Args:
        model: an ``nn.Module`` or a model from :func:`featuremap.load_model`.
        layers: names, globs or regexes of ``named_modules()`` paths.
        reuse_buffers: copy each batch's maps into buffers kept from the previous call instead
            of fresh memory (faster on repeated batches; the maps returned by a call are then
            overwritten by the next call).
        early_stop: end the forward pass after the last requested layer has fired.
    """

    def __init__(self, model: Any, layers: str | Sequence[str], *, reuse_buffers: bool = False,
                 early_stop: bool = True) -> None:
        self.module, self.preprocess, self.name = _model_parts(model)
        requested = [layers] if isinstance(layers, str) else list(layers)
        self.layers = resolve_layers(self.module, requested, model_name=self.name or None)
        self.reuse_buffers = reuse_buffers
        self.early_stop = early_stop
        self._modules = dict(self.module.named_modules())
        self._buffers: dict[str, torch.Tensor] = {}

    def _hook(self, name: str, store: dict, notes: dict):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if name in store:  # a reused module: keep the first call
                return
            tensor, note = _first_tensor(output)
            if tensor is None:
                raise ConfigError(f"layer '{name}' returned {type(output).__name__}, not a "
                                  "tensor: pick a layer whose output is a feature map.")
            store[name] = self._copy(name, tensor.detach())
            notes[name] = note
            if self.early_stop and len(store) == len(self.layers):
                raise _Stop
        return hook

    def _copy(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        if not self.reuse_buffers:
            return tensor.clone()
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = self._buffers[name] = torch.empty_like(tensor)
        return buffer.copy_(tensor)

    def run(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """One forward pass of a prepared batch; returns the maps and the output notes."""
        store: dict[str, torch.Tensor] = {}
        notes: dict[str, str] = {}
        handles = [self._modules[n].register_forward_hook(self._hook(n, store, notes))
                   for n in self.layers]
        try:
            with torch.no_grad():
                self.module(batch)
        except _Stop:
            pass
        except RuntimeError as err:
            raise _too_small(self.module, batch, err, self.name) from None
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.layers if n not in store]
        if missing:
            raise did_not_run(missing, self.name or type(self.module).__name__)
        return {n: store[n] for n in self.layers}, notes

    def __call__(self, images: Any, *, device: torch.device | str | None = None) -> FeatureMaps:
        """Extract the maps of ``images`` (see :func:`extract`)."""
        dev = torch.device(device) if device is not None else _device_of(self.module)
        batch, raw, notes = prepare_images(images, self.preprocess, device=dev)
        maps, output_notes = self.run(batch)
        meta = {n: _meta(n, self._modules[n], t, batch.shape, output_notes.get(n, ""))
                for n, t in maps.items()}
        return FeatureMaps(maps=maps, meta=meta, input_shape=tuple(batch.shape), images=raw,
                           notes=notes, model_name=self.name)


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _meta(name: str, module: nn.Module, t: torch.Tensor, input_shape: Sequence[int],
          note: str) -> LayerMeta:
    stride = None
    if t.dim() == 4 and t.shape[2] > 0 and t.shape[3] > 0:
        stride = (input_shape[2] / t.shape[2], input_shape[3] / t.shape[3])
    return LayerMeta(name=name, type=type(module).__name__, shape=tuple(t.shape),
                     stride=stride, note=note)


def _too_small(module: nn.Module, batch: torch.Tensor, err: RuntimeError, name: str) -> Exception:
    """Explain a failed forward pass: most often an input too small for the network."""
    from featuremap.layers import list_layers

    try:
        list_layers(module, input_size=tuple(batch.shape[2:]), in_channels=batch.shape[1])
    except ConfigError as explained:
        return explained
    except Exception:  # noqa: BLE001 - the original error says more
        pass
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConfigError(f"the forward pass of {name or type(module).__name__} failed on an input "
                       f"of shape {tuple(batch.shape)}: {first}")


def extract(
    model: Any,
    images: Any,
    *,
    layers: str | Sequence[str],
    device: torch.device | str | None = None,
    early_stop: bool = True,
) -> FeatureMaps:
    """Feature maps of the requested layers, from one forward pass that stops after the last.

    Args:
        model: an ``nn.Module`` or a model from :func:`featuremap.load_model` (whose
            preprocessing is applied).
        images: a path, ``"sample:NAME"``, PIL image or array, a list of them, or a tensor
            ``(N, C, H, W)`` / ``(C, H, W)`` used as it is (no preprocessing).
        layers: ``named_modules()`` paths, globs (``"layer*.0.conv1"``) or regexes.
        device: where to run (default: where the model's parameters are).
        early_stop: end the pass once the last requested layer has fired.

    Returns:
        :class:`FeatureMaps`, in request order, detached copies.

    Raises:
        UnknownNameError: an unknown layer (with a did-you-mean).
        ConfigError: an input too small for the network (naming the layer), bad images.

    Example:
        >>> fm = extract(load_model("resnet18"), "sample:chelsea", layers="layer2")
    """
    return Extractor(model, layers, early_stop=early_stop)(images, device=device)


def overview_layers(module: nn.Module, *, input_size: int | tuple[int, int] = 224,
                    in_channels: int | None = None) -> list[str]:
    """Layers that show a network from low to high: the first convolution, then the last
    module at each cumulative stride (the end of each stage), while the maps are spatial.

    Example:
        >>> overview_layers(torchvision.models.resnet18())  # doctest: +SKIP
        ['conv1', 'relu', 'layer1', 'layer2', 'layer3', 'layer4']
    """
    from featuremap.layers import list_layers

    infos = [i for i in list_layers(module, input_size=input_size, in_channels=in_channels)
             if i.output_shape is not None and len(i.output_shape) == 3
             and i.cumulative_stride is not None and min(i.output_shape[1:]) > 1]
    if not infos:
        raise ConfigError(f"{type(module).__name__} has no layer with spatial feature maps.")
    infos = [i for i in infos if "Adaptive" not in i.type]
    chosen = [next((i.name for i in infos if i.type.startswith("Conv")), infos[0].name)]
    for depth in (1, 2, 3):  # the shallowest level whose modules span several strides
        stage_ends: dict[float, str] = {}
        for info in infos:
            if info.depth == depth:
                stage_ends[info.cumulative_stride] = info.name
        if len(stage_ends) >= 3:
            break
    chosen += [name for name in stage_ends.values() if name not in chosen]
    names = [name for name, _ in module.named_modules()]

    def finished(name: str) -> tuple[int, int]:  # a container finishes after its last child
        inside = [k for k, n in enumerate(names) if n == name or n.startswith(name + ".")]
        return max(inside), -len(name)

    return sorted(chosen, key=finished)


def retain_memory(*, mmap_threshold: int = 32 * 2**20, trim_threshold: int = 16 * 2**30,
                  top_pad: int = 256 * 2**20) -> bool:
    """Keep freed memory mapped in this process, so repeated forward passes stop page-faulting.

    With glibc's defaults every large activation tensor is a fresh ``mmap`` that the kernel must
    fault in and zero, page by page; on a CPU this can cost a quarter of a forward pass and
    dominates early layers (see ``benchmarks/bench_extract.py``). This raises glibc's mmap and
    trim thresholds (``mallopt``) so freed blocks are reused instead: the process's resident
    memory then stays at its peak. It changes the whole process, so featuremap never calls it
    on its own.

    Returns:
        True if the allocator was tuned, False where it is not glibc (nothing changed).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(bool(mallopt(option, value)) for option, value in (
        (m_mmap_threshold, mmap_threshold), (m_trim_threshold, trim_threshold),
        (m_top_pad, top_pad)))

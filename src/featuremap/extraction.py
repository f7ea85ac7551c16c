"""Feature maps of any layer of any PyTorch model: the public door onto the capture engine.

:func:`extract` runs the eager model (so Python control flow works) through
:class:`featuremap.capture.Capture`: each requested layer's output is copied the moment it is
produced (an in-place op later in the network cannot change what was captured), the forward pass
ends as soon as the last requested layer has run (nothing after it runs, the classifier head
included), the model runs in eval mode and its modes are restored. The copies go into memory
from :mod:`featuremap.buffers`, which takes back the memory of maps that nothing references any
more, so repeated extractions do not page-fault fresh memory, while every map returned stays the
user's for as long as it is held. :class:`Extractor` does the same for batch after batch and can
instead reuse its own output buffers (each call then overwrites the maps of the last).

Output rules (the engine's): a tensor output is captured as it is; a tuple or list output
captures its first tensor; a dict output (torchvision's segmentation models) its ``'out'``
entry, else its first tensor. A module called several times in one forward pass (torchvision's
ResNet blocks reuse one ReLU) is captured at its first call, the node torchvision's
``create_feature_extractor`` names after the module. Channels-last outputs and transformer
tokens become ``(N, C, H, W)`` maps (``meta[name].layout`` says how; see
:mod:`featuremap.layouts`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featuremap import buffers
from featuremap.capture import LayerMeta
from featuremap.errors import printable, unknown_name
from featuremap.model import Model, Prepared, as_model
from featuremap.preprocess import Preprocess

__all__ = ["Extractor", "FeatureMaps", "LayerMeta", "extract", "retain_memory"]


@dataclass
class FeatureMaps(Mapping):
    """The maps of several layers from one forward pass, in request order.

    A mapping from layer name to a detached tensor ``(N, C, H, W)`` (layers whose output is not
    a map keep their own shape; ``meta[name].reason`` says why); ``meta[name]`` says what each
    is. ``images`` holds the inputs as ``(N, C, H, W)`` values in ``[0, 1]`` (before
    normalisation) when featuremap preprocessed them, for overlays. ``notes`` says what was
    assumed or converted (preprocessing, training mode, layouts).

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
    fields: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> torch.Tensor:
        try:
            return self.maps[name]
        except KeyError:
            raise unknown_name("layer", name, self.maps,
                               hint="These maps hold: " + ", ".join(self.maps) + ".") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.maps)

    def __len__(self) -> int:
        return len(self.maps)

    def numpy(self) -> dict[str, np.ndarray]:
        """The maps as float32 NumPy arrays, by layer name."""
        return {k: v.detach().float().cpu().numpy() for k, v in self.maps.items()}

    def picture(self, index: int = 0) -> np.ndarray | None:
        """Input image ``index`` as ``(3, H, W)`` in ``[0, 1]``, or None when not known."""
        if self.images is None:
            return None
        image = self.images[index]
        return np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image

    def show(self, layer: str | None = None, *, image: int = 0, top: int | None = 16, **kwargs):
        """A channel grid of one layer (default: the last), as a matplotlib Figure."""
        from featuremap.plot import plot_layer

        name = layer or list(self.maps)[-1]
        return plot_layer(self, name, image=image, top=top, **kwargs)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the maps to ``path`` (``.npz``): one float32 array per layer, by layer name.

        Raises:
            ConfigError: another suffix, or an existing file without ``overwrite``.
        """
        from featuremap.outputs import atomic_path, check_output

        target = check_output(path, suffixes=(".npz",), default_suffix=".npz",
                              overwrite=overwrite, what="maps")
        with atomic_path(target) as tmp:
            np.savez(tmp, **{printable(k): v for k, v in self.numpy().items()})
        return target

    def lines(self) -> list[str]:
        """One line per layer: name, type, map shape, stride and receptive field."""
        width = max([8] + [len(n) for n in self.maps])
        rows = []
        for name, meta in self.meta.items():
            shape = " x ".join(map(str, meta.shape[1:]))
            row = f"{printable(name):{width}s} {meta.type:18s} {shape:>16s}"
            if meta.stride:
                row += f"  stride {meta.stride[0]:g}"
            if self.fields.get(name):
                row += f"  {self.fields[name]}"
            rows.append(row)
        return rows

    def __str__(self) -> str:
        return "\n".join(self.lines() + [f"note: {n}" for n in self.notes])

    def to_dict(self) -> dict[str, Any]:
        """What was captured (shapes, strides, layouts, notes), without the values."""
        return {"model": self.model_name, "input_shape": list(self.input_shape),
                "layers": {n: m.to_dict() for n, m in self.meta.items()},
                "fields": dict(self.fields), "notes": list(self.notes)}

    def _repr_png_(self) -> bytes:
        from featuremap.plot import plot_overview
        from featuremap.report import png_bytes

        return png_bytes(plot_overview(self))

    def __repr__(self) -> str:
        rows = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.maps.items())
        return f"FeatureMaps({rows})"


class Extractor:
    """Reusable extraction of the same layers from batch after batch.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        layers: names, globs or regexes of ``named_modules()`` paths.
        reuse_buffers: copy each batch's maps into buffers kept from the previous call (the
            maps returned by a call are then overwritten by the next call). Without it the maps
            are copied into memory of :mod:`featuremap.buffers` that no live tensor uses: each
            call's maps are independent and stay valid as long as they are held.
        early_stop: end the forward pass after the last requested layer has fired.
        preprocess: ``"model"`` (the model's own), a :class:`~featuremap.preprocess.Preprocess`,
            or None (images in ``[0, 1]`` at their own size, tensors as given).
        allow_missing: leave out layers that did not run instead of refusing them.
    """

    def __init__(self, model: Any, layers: str | Sequence[str], *, reuse_buffers: bool = False,
                 early_stop: bool = True, preprocess: Preprocess | str | None = "model",
                 allow_missing: bool = False) -> None:
        self.model: Model = as_model(model)
        self.module, self.name = self.model.module, self.model.name
        self.layers = self.model.resolve(layers)
        self.preprocess = preprocess
        self.engine = self.model.capture(self.layers, early_stop=early_stop,
                                         keep="buffers" if reuse_buffers else "copy",
                                         allocate=buffers.take, allow_missing=allow_missing)

    def run(self, batch: torch.Tensor):
        """One forward pass of a prepared batch: the engine's
        :class:`~featuremap.capture.Captured` (``.maps``, ``.meta``, ``.notes``)."""
        return self.engine(batch.to(self.model.device))

    def __call__(self, images: Any, *, device: torch.device | str | None = None) -> FeatureMaps:
        """Extract the maps of ``images`` (see :func:`extract`)."""
        if device is not None:
            self.model.to(device)
        prepared: Prepared = self.model.prepare(images, preprocess=self.preprocess)
        got = self.run(prepared.batch)
        return FeatureMaps(maps=got.maps, meta=got.meta, input_shape=tuple(prepared.batch.shape),
                           images=prepared.images, notes=prepared.notes + got.notes,
                           model_name=self.name)


def extract(
    model: Any,
    images: Any,
    *,
    layers: str | Sequence[str],
    device: torch.device | str | None = None,
    early_stop: bool = True,
    preprocess: Preprocess | str | None = "model",
    allow_missing: bool = False,
) -> FeatureMaps:
    """Feature maps of the requested layers, from one forward pass that stops after the last.

    Args:
        model: a model from :func:`featuremap.load_model` (whose preprocessing is applied) or
            an ``nn.Module`` (ImageNet preprocessing assumed, and a note says so).
        images: a path, ``"sample:NAME"``, PIL image or array, a list of them, or a tensor
            ``(N, C, H, W)`` / ``(C, H, W)`` used as it is (no preprocessing).
        layers: ``named_modules()`` paths, globs (``"layer*.0.conv1"``) or regexes.
        device: where to run (default: where the model's parameters are); the model is moved
            there.
        early_stop: end the pass once the last requested layer has fired.
        preprocess: ``"model"`` (default), a :class:`~featuremap.preprocess.Preprocess`, or None
            (no resize, crop or normalisation).
        allow_missing: leave out layers that did not run (a training-only head, a branch)
            instead of refusing them: extract "every layer that runs".

    Returns:
        :class:`FeatureMaps`, in request order, detached copies.

    Raises:
        UnknownNameError: an unknown layer (with a did-you-mean).
        ConfigError: an input too small for the network (naming the layer), bad images, no
            layers.

    Example:
        >>> fm = extract(load_model("resnet18"), "sample:chelsea", layers="layer2")
    """
    return Extractor(model, layers, early_stop=early_stop, preprocess=preprocess,
                     allow_missing=allow_missing)(images, device=device)


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

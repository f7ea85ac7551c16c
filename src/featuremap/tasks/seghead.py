"""A light segmentation head on frozen feature maps: the result of fitting it, its files, and
applying it to new images.

The head is one 1x1 convolution over the maps of a few layers, upsampled (bilinear) to the image
and concatenated. A 1x1 convolution and bilinear upsampling are both linear, so it equals the sum
over layers of the head's slice applied at each layer's own resolution and then upsampled:
:func:`head_logits` computes it that way (only the small maps are ever held). Fitting lives in
:mod:`featuremap.tasks.segfit`.

Example:
    >>> head = load_seg_head("head.safetensors")  # doctest: +SKIP
    >>> seg = apply_seg_head(load_model("shapes"), head, "scene.png")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featuremap.errors import ConfigError, WeightsError, printable
from featuremap.outputs import atomic_paths, check_output
from featuremap.tasks.segmentation import Segmentation, native, native_pass, upsample
from featuremap.tasks.topk import one_image

__all__ = ["SegHeadResult", "apply_seg_head", "head_logits", "load_seg_head"]


@dataclass
class SegHeadResult:
    """A 1x1-convolution head fitted on frozen maps, and how well it segments held-out images.

    Attributes:
        weight: ``(K, C_total, 1, 1)`` head weights, on the raw (unstandardised) maps
            concatenated in ``layers`` order; ``bias``: ``(K,)``.
        class_names: one per class index.
        layers, channels: the layers the head reads and their channel counts.
        model_name: the model it was fitted on.
        per_class_iou: IoU of every class on the held-out split (confusion matrix summed over
            its pixels); NaN for a class with no pixel in the split's masks.
        miou: mean IoU over the classes present in the split (NaN ones excluded).
        pixel_accuracy: the fraction of held-out pixels labelled right.
        confusion: ``(K, K)`` held-out pixel counts, rows truth, columns prediction.
        n_train, n_test: images in each split; skipped: files that could not be read.
        class_pixels: held-out pixels of each class (truth).
        history: mean training loss per epoch.
        seed, epochs, lr: how it was fitted.
        ignore_index, ignored_pixels: the label left out, and how many pixels (both splits)
            carried it.
        notes: what was done to the images that the user may not expect (not saved).
    """

    weight: torch.Tensor = field(repr=False)
    bias: torch.Tensor = field(repr=False)
    class_names: list[str]
    layers: list[str]
    channels: list[int]
    model_name: str
    per_class_iou: dict[str, float]
    miou: float
    pixel_accuracy: float
    confusion: np.ndarray = field(repr=False)
    n_train: int
    n_test: int
    skipped: list[str] = field(default_factory=list)
    class_pixels: dict[str, int] = field(default_factory=dict, repr=False)
    history: list[float] = field(default_factory=list, repr=False)
    seed: int = 0
    epochs: int = 0
    lr: float = 0.0
    ignore_index: int | None = None
    ignored_pixels: int = 0
    notes: list[str] = field(default_factory=list, repr=False)

    def check(self) -> None:
        """Refuse a head whose tensors do not fit its own description, or hold NaN/inf."""
        k, total = len(self.class_names), sum(self.channels)
        shape, bias = tuple(self.weight.shape), tuple(self.bias.shape)
        if shape != (k, total, 1, 1) or bias != (k,) or len(self.channels) != len(self.layers):
            raise WeightsError(
                f"the segmentation head does not fit its description: weight {shape} and bias "
                f"{bias}, but {k} classes over layers {', '.join(self.layers)} with "
                f"{list(self.channels)} channels need weight {(k, total, 1, 1)} and bias {(k,)}. "
                "Fit it again (featuremap fit-seg).")
        if not (bool(torch.isfinite(self.weight).all()) and bool(torch.isfinite(self.bias).all())):
            raise WeightsError("the segmentation head holds NaN or infinite weights (its fitting "
                               "diverged or the file is damaged): fit it again.")

    @property
    def title(self) -> str:
        return (f"held-out IoU ({self.n_train} train / {self.n_test} test images, "
                f"{len(self.skipped)} skipped)")

    def rows(self) -> list[tuple[str, str]]:
        """``(class, IoU)`` per class; a class absent from the held-out split says so."""
        return [(printable(name), "absent from test split" if math.isnan(iou) else f"{iou:.3f}")
                for name, iou in self.per_class_iou.items()]

    def summary_lines(self) -> list[str]:
        lines = [f"mIoU {self.miou:.3f}, pixel accuracy {self.pixel_accuracy:.3f}"]
        if self.ignored_pixels:
            lines.append(f"left out {self.ignored_pixels:,} pixels labelled {self.ignore_index} "
                         "(--ignore-index)")
        return lines + [f"note: {printable(n)}" for n in self.notes]

    def __str__(self) -> str:
        rows = self.rows()
        width = max([5] + [len(n) for n, _ in rows])
        return "\n".join([self.title] + [f"{n:<{width}}  {v:>8}" for n, v in rows]
                         + self.summary_lines())

    def to_dict(self) -> dict[str, Any]:
        return self._meta()

    def head(self) -> nn.Conv2d:
        """The head as ``nn.Conv2d(C_total, K, 1)`` (on upsampled, concatenated raw maps)."""
        conv = nn.Conv2d(self.weight.shape[1], self.weight.shape[0], 1)
        with torch.no_grad():
            conv.weight.copy_(self.weight)
            conv.bias.copy_(self.bias)
        return conv.eval()

    def predict(self, model: Any, image: Any) -> Segmentation:
        """Segment ``image`` with this head on ``model``'s maps (see :func:`apply_seg_head`)."""
        return apply_seg_head(model, self, image)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the head to ``path`` (``.safetensors``) and everything else to a ``.json`` beside.

        Raises:
            ConfigError: a path not ending in ``.safetensors``, a missing folder, or an existing
                file without ``overwrite=True``.
        """
        from safetensors.torch import save_file

        target, sidecar = _head_paths(path)
        if not target.parent.is_dir():
            raise ConfigError(f"cannot write '{target}': the folder '{target.parent}' does not "
                              "exist. Create it first or choose another path.")
        existing = [p for p in (target, sidecar) if p.exists()]
        if existing and not overwrite:
            raise ConfigError(f"'{existing[0]}' already exists; pass overwrite=True (--overwrite) "
                              "to replace it, or choose another path.")
        target = check_output(target, suffixes=(".safetensors",), overwrite=overwrite,
                              what="head", siblings=(".json",))
        with atomic_paths([target, sidecar]) as (weights, meta):
            save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()},
                      str(weights))
            meta.write_text(json.dumps(self._meta(), indent=2) + "\n")
        return target

    def _meta(self) -> dict[str, Any]:
        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "kind": "featuremap segmentation head (1x1 convolution on upsampled frozen maps)",
            "model_name": self.model_name, "layers": self.layers, "channels": self.channels,
            "class_names": self.class_names, "miou": clean(self.miou),
            "pixel_accuracy": self.pixel_accuracy,
            "per_class_iou": {k: clean(v) for k, v in self.per_class_iou.items()},
            "confusion": self.confusion.tolist(), "n_train": self.n_train, "n_test": self.n_test,
            "skipped": self.skipped, "class_pixels": self.class_pixels, "history": self.history,
            "seed": self.seed, "epochs": self.epochs, "lr": self.lr,
            "ignore_index": self.ignore_index, "ignored_pixels": self.ignored_pixels,
        }


def _head_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    target = Path(path).expanduser()
    if target.suffix.lower() != ".safetensors":
        raise ConfigError(f"a head is saved as a .safetensors file (with a .json beside it), "
                          f"got '{target}'; use e.g. '{target.with_suffix('.safetensors')}'.")
    return target, target.with_suffix(".json")


def load_seg_head(path: str | os.PathLike[str]) -> SegHeadResult:
    """Read a head written by :meth:`SegHeadResult.save` (the ``.safetensors`` and its ``.json``).

    Raises:
        WeightsError: a missing or unreadable file, or files that do not belong together.

    Example:
        >>> head = load_seg_head("head.safetensors")  # doctest: +SKIP
    """
    from safetensors.torch import load_file

    target, sidecar = _head_paths(path)
    for p in (target, sidecar):
        if not p.is_file():
            raise WeightsError(f"segmentation head file '{p}' does not exist; a head is a "
                               ".safetensors file with a .json beside it (fit_seg_head(...).save).")
    try:
        tensors, meta = load_file(str(target)), json.loads(sidecar.read_text())
        weight, bias = tensors["weight"], tensors["bias"]
        nan = float("nan")
        result = SegHeadResult(
            weight, bias, list(meta["class_names"]), list(meta["layers"]),
            [int(c) for c in meta["channels"]], str(meta["model_name"]),
            {k: nan if v is None else float(v) for k, v in meta["per_class_iou"].items()},
            nan if meta["miou"] is None else float(meta["miou"]), float(meta["pixel_accuracy"]),
            np.asarray(meta["confusion"], np.int64), int(meta["n_train"]), int(meta["n_test"]),
            list(meta.get("skipped", [])), dict(meta.get("class_pixels", {})),
            list(meta.get("history", [])), int(meta.get("seed", 0)), int(meta.get("epochs", 0)),
            float(meta.get("lr", 0.0)), ignore_index=meta.get("ignore_index"),
            ignored_pixels=int(meta.get("ignored_pixels", 0)))
    except Exception as exc:  # noqa: BLE001 - safetensors, json and key errors alike
        raise WeightsError(f"cannot read segmentation head '{printable(target)}' (with "
                           f"'{printable(sidecar.name)}'): "
                           f"{' '.join(str(exc).split())[:200] or type(exc).__name__}.") from None
    result.check()
    return result


def head_logits(weight: torch.Tensor, bias: torch.Tensor, maps: Sequence[torch.Tensor],
                 size: Sequence[int]) -> torch.Tensor:
    """``conv1x1(cat(upsample(maps)))`` computed as the sum of per-layer slices upsampled.

    Layers of one resolution are summed before they are upsampled (once per resolution).
    """
    by_size: dict[tuple[int, ...], torch.Tensor] = {}
    start = 0
    for m in maps:
        c = m.shape[1]
        part = F.conv2d(m, weight[:, start:start + c])
        key = tuple(m.shape[-2:])
        by_size[key] = part if key not in by_size else by_size[key] + part
        start += c
    out = bias.view(1, -1, 1, 1)
    for part in by_size.values():
        out = out + upsample(part, size)
    return out


def apply_seg_head(model: Any, head: SegHeadResult | str | os.PathLike[str],
                   image: Any) -> Segmentation:
    """Segment an image with a head from :func:`fit_seg_head` (or its saved file).

    The image is used at its own size (no resize or crop, as in fitting), normalised as the
    model expects; the head's layers come from one forward pass.

    Args:
        model: the model the head was fitted on.
        head: a :class:`SegHeadResult` or the path of its ``.safetensors`` file.
        image: a path, ``"sample:NAME"``, PIL image, array, or a tensor used as it is.

    Returns:
        A :class:`Segmentation` (method ``"fitted head"``) with probabilities and class names.

    Raises:
        ConfigError: the model's maps do not have the channels the head was fitted on.
        WeightsError: an unreadable head file.

    Example:
        >>> model = load_model("shapes")  # doctest: +SKIP
        >>> seg = apply_seg_head(model, "head.safetensors", "scene.png")  # doctest: +SKIP
    """
    result = head if isinstance(head, SegHeadResult) else load_seg_head(head)
    result.check()
    m, _ = one_image(model, None, classifier=False, prepare=False)
    layers = m.resolve(result.layers)
    prepared = m.prepare(image, preprocess=native(m.preprocess))
    if prepared.batch.shape[0] != 1:
        raise ConfigError(f"one image at a time, please: got a batch of "
                          f"{prepared.batch.shape[0]}.")
    notes = list(prepared.notes)
    got = native_pass(m, m.capture(layers), prepared.batch, notes)
    maps = [got.map(n).float().cpu() for n in layers]
    found = [t.shape[1] for t in maps]
    if found != list(result.channels):
        raise ConfigError(
            f"the head was fitted on {result.model_name} layers {', '.join(result.layers)} with "
            f"{result.channels} channels, but {m.name} gives {found}: use the model the head was "
            "fitted on.")
    with torch.no_grad():
        probs = head_logits(result.weight.float(), result.bias.float(), maps,
                            prepared.batch.shape[-2:]).softmax(1)[0]
    return Segmentation(probs.argmax(0).numpy().astype(np.int64), list(result.class_names),
                        prepared.picture(), probs.numpy(), "fitted head", m.name, layers,
                        notes + got.notes)

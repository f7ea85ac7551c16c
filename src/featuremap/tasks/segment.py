"""Image segmentation from feature maps: clusters, the model's own head, light heads on frozen maps.

Three ways to cut an image into regions, all returning a :class:`Segmentation`:

- :func:`cluster_segments` (no training): the maps of a few layers are upsampled to the input
  size, each pixel becomes one feature vector, and k-means groups the pixels into ``k`` segments.
- :func:`segment`: a network's own segmentation output: the bundled model's segmentation head
  (``ShapesNet.segment``) or a torchvision segmentation network (FCN, DeepLabV3, LR-ASPP).
- :func:`fit_seg_head` trains a 1x1-convolution head on the frozen maps of an image/mask folder
  and reports per-class IoU on a held-out split; :func:`apply_seg_head` runs it on new images.

A 1x1 convolution and bilinear upsampling are both linear, so a 1x1 head over the concatenation of
upsampled maps equals the sum over layers of the head's slice applied at each layer's own
resolution and then upsampled. :func:`fit_seg_head` uses this to keep only the small maps in
memory; :func:`cluster_segments` uses it to project onto principal components before upsampling.

Example:
    >>> model = load_model("shapes")  # doctest: +SKIP
    >>> segment(model, make_scene(60_000).image).names[:2]  # doctest: +SKIP
    ['background', 'circle']
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featuremap.errors import ConfigError, ImageError, WeightsError
from featuremap.extraction import Extractor, prepare_images
from featuremap.images import Preprocess

__all__ = [
    "SegHeadResult",
    "Segmentation",
    "apply_seg_head",
    "cluster_segments",
    "fit_seg_head",
    "load_seg_head",
    "segment",
]

Progress = Callable[[int, int], None]

PCA_DIMS = 32  # default dimensions k-means sees (principal components of the pixel features)
_FIT_PIXELS = 16_384  # pixels (drawn by seed) that fit the standardisation and the PCA
_KMEANS_INITS, _KMEANS_ITERS = 3, 60
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
_MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")
_SEG_NETWORKS = ("FCN", "DeepLabV3", "LRASPP")  # torchvision's segmentation model classes
_SEG_HINT = ("use a segmentation model ('featuremap models' lists them: 'shapes', fcn_resnet50, "
             "deeplabv3_resnet50, lraspp_mobilenet_v3_large, ...) or cluster its feature maps "
             "with cluster_segments (featuremap segment IMAGE --layers L --k K)")


# ------------------------------------------------------------------------------- the result


@dataclass
class Segmentation:
    """A label map of one image and what made it.

    Attributes:
        labels: ``(H, W)`` int64, an index into ``names`` for every pixel.
        names: one name per label: ``"segment 0"``, ... for clusters (0 is the largest),
            class names for heads and segmentation networks.
        image: ``(C, H, W)`` float32 in ``[0, 1]``: the input as the network saw it
            (preprocessed, before normalisation); ``labels`` has its size.
        probabilities: ``(K, H, W)`` softmax of a head's logits, None for clusters.
        method: ``"clusters"``, ``"segmentation head"`` (the model's own head),
            ``"segmentation network"`` (a torchvision network's ``out``) or ``"fitted head"``
            (:func:`apply_seg_head`).
        model_name: the model's name.
        layers: the layers whose maps were used (empty for a network's own output).
    """

    labels: np.ndarray
    names: list[str]
    image: np.ndarray
    probabilities: np.ndarray | None = None
    method: str = ""
    model_name: str = ""
    layers: list[str] = field(default_factory=list)

    def shares(self) -> dict[str, float]:
        """The fraction of pixels of every label, by name (in label order)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.names))
        return {n: float(c) / max(1, self.labels.size) for n, c in zip(self.names, counts)}

    def __repr__(self) -> str:
        h, w = self.labels.shape
        used = len(np.unique(self.labels))
        return (f"Segmentation({self.method}, {self.model_name}, {h} x {w}, "
                f"{used} of {len(self.names)} labels used)")


# ----------------------------------------------------------------------------- model input


def _parts(model: Any) -> tuple[nn.Module, Preprocess, str, tuple[str, ...] | None, str]:
    """(module, preprocess, name, categories, task) of a featuremap Model or an nn.Module."""
    if isinstance(model, nn.Module):
        return model, Preprocess(), type(model).__name__, None, "other"
    module = getattr(model, "module", None)
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model must be an nn.Module or a model from featuremap.load_model(), "
                          f"got {type(model).__name__}.")
    return (module, getattr(model, "preprocess", None) or Preprocess(),
            getattr(model, "name", "") or type(module).__name__,
            getattr(model, "categories", None), getattr(model, "task", "other"))


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _prepare_one(image: Any, preprocess: Preprocess, module: nn.Module
                 ) -> tuple[torch.Tensor, np.ndarray]:
    """One image as a normalised batch ``(1, C, H, W)`` and as values in [0, 1] ``(C, H, W)``."""
    batch, raw, _ = prepare_images(image, preprocess, device=_device(module))
    if batch.shape[0] != 1:
        raise ConfigError(f"segmentation takes one image at a time, got {batch.shape[0]}.")
    if raw is not None:
        return batch, raw[0]
    shown = batch[0].detach().float().cpu()  # a tensor used as it is: undo the normalisation
    if shown.shape[0] == len(preprocess.mean):
        shown = (shown * torch.tensor(preprocess.std).view(-1, 1, 1)
                 + torch.tensor(preprocess.mean).view(-1, 1, 1))
    return batch, shown.clamp(0, 1).numpy()


def _native(preprocess: Preprocess) -> Preprocess:
    """The model's normalisation without resize or crop: maps stay aligned with masks."""
    return Preprocess(resize=None, crop=None, mean=preprocess.mean, std=preprocess.std,
                      channels=preprocess.channels)


def _check_maps(maps: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """The captured maps as a list; a layer whose output is not ``(N, C, H, W)`` is refused."""
    for name, t in maps.items():
        if t.dim() != 4:
            raise ConfigError(
                f"layer '{name}' gives an output of shape {tuple(t.shape)}, not feature maps "
                "(N, C, H, W): pick convolutional layers ('featuremap layers MODEL' lists them "
                "with their shapes).")
    return [t.float() for t in maps.values()]


def _resize(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------- clusters


def cluster_segments(
    model: Any,
    image: Any,
    *,
    layers: str | Sequence[str],
    k: int = 4,
    seed: int = 0,
    dims: int | None = PCA_DIMS,
) -> Segmentation:
    """Segment an image without training: k-means of its per-pixel feature vectors.

    The layers' maps come from one forward pass; each is upsampled (bilinear) to the
    preprocessed input size and the maps are concatenated, so every pixel has one vector of all
    their channels. Channels are standardised (zero mean, unit variance over the pixels) and,
    when there are more than ``dims``, projected onto their first ``dims`` principal components
    (for speed: k-means then works on ``dims`` numbers per pixel). Mean, variance and components
    are fitted on up to 16,384 pixels drawn by ``seed`` (all pixels of images up to 128 x 128).
    k-means (k-means++ start, best of 3 starts) is deterministic for a seed; segments are
    numbered by size, the largest is ``segment 0``.

    Args:
        model: a model from :func:`featuremap.load_model` (its preprocessing is applied) or an
            ``nn.Module``.
        image: a path, ``"sample:NAME"``, PIL image, array, or a tensor used as it is.
        layers: layer names, globs or regexes whose outputs are ``(N, C, H, W)`` maps.
        k: the number of segments (2 .. number of pixels).
        seed: seeds the pixel sample and k-means.
        dims: principal components kept (None: no PCA, the standardised channels themselves).

    Returns:
        A :class:`Segmentation` with ``names`` ``["segment 0", ...]`` and no probabilities.

    Raises:
        ConfigError: ``k`` < 2 or above the number of pixels, a layer whose output is not
            feature maps, bad ``dims``.
        UnknownNameError: an unknown layer.

    Example:
        >>> seg = cluster_segments(load_model("shapes"), "sample:coins",  # doctest: +SKIP
        ...                        layers=["backbone.block1", "backbone.block2"], k=3)
        >>> seg.labels.shape, seg.names  # doctest: +SKIP
        ((64, 64), ['segment 0', 'segment 1', 'segment 2'])
    """
    _check_k(k)
    if dims is not None and (not isinstance(dims, int) or dims < 1):
        raise ConfigError(f"dims must be a positive integer or None, got {dims!r}.")
    extractor = Extractor(model, layers)
    batch, raw = _prepare_one(image, extractor.preprocess, extractor.module)
    size = tuple(batch.shape[-2:])
    if k > size[0] * size[1]:
        raise ConfigError(f"k={k} segments is more than the {size[0] * size[1]} pixels of the "
                          f"input ({size[0]} x {size[1]}); use a smaller k.")
    maps = _check_maps(extractor.run(batch)[0])
    with torch.no_grad():
        features = _pixel_features([m[:1].cpu() for m in maps], size, dims=dims, seed=seed)
        labels = _order_by_size(_kmeans(features, k, seed), k)
    return Segmentation(labels.reshape(size).numpy().astype(np.int64),
                        [f"segment {i}" for i in range(k)], raw, None, "clusters",
                        extractor.name, list(extractor.layers))


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"k must be an integer >= 2 (the number of segments), got {k!r}.")


def _sample_pixels(maps: list[torch.Tensor], size: tuple[int, int], seed: int) -> torch.Tensor:
    """``(C_total, S)``: the upsampled maps at up to 16,384 pixels drawn by ``seed``.

    ``grid_sample`` at pixel centres with border padding equals ``F.interpolate`` (bilinear,
    ``align_corners=False``) at those pixels, without upsampling every channel.
    """
    h, w = size
    n = h * w
    g = torch.Generator().manual_seed(int(seed))
    index = torch.randperm(n, generator=g)[:_FIT_PIXELS] if n > _FIT_PIXELS else torch.arange(n)
    x = (2 * (index % w).float() + 1) / w - 1
    y = (2 * (index // w).float() + 1) / h - 1
    grid = torch.stack([x, y], -1).view(1, 1, -1, 2)
    return torch.cat([F.grid_sample(m, grid, mode="bilinear", padding_mode="border",
                                    align_corners=False)[0, :, 0] for m in maps])


def _pixel_features(maps: list[torch.Tensor], size: tuple[int, int], *, dims: int | None,
                    seed: int) -> torch.Tensor:
    """``(H * W, d)``: standardised (and PCA-projected) per-pixel features of upsampled maps.

    Standardising and projecting are affine and bilinear upsampling preserves constants, so each
    layer is projected at its own resolution and only the ``d`` projected maps are upsampled.
    """
    sample = _sample_pixels(maps, size, seed).double()
    mean, std = sample.mean(1), sample.std(1)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant channels: keep at 0
    z = (sample - mean[:, None]) / std[:, None]
    channels = z.shape[0]
    if dims is not None and channels > dims:
        _, vectors = torch.linalg.eigh(z @ z.T / z.shape[1])
        basis = vectors[:, -dims:].flip(1)  # (C, d), largest variance first
    else:
        basis = torch.eye(channels, dtype=torch.float64)
    weight = (basis / std[:, None]).T.float()  # (d, C) applied to raw channels
    offset = (basis.T @ (mean / std)).float()
    out, start = -offset.view(1, -1, 1, 1), 0
    for m in maps:
        c = m.shape[1]
        part = F.conv2d(m, weight[:, start:start + c, None, None])
        out, start = out + _resize(part, size), start + c
    return out[0].reshape(out.shape[1], -1).T.contiguous()


def _kmeans(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Labels ``(N,)`` of the best of a few k-means++ runs (lowest inertia), by ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    best, best_inertia = None, math.inf
    for _ in range(_KMEANS_INITS):
        centres = _kmeans_pp(x, k, g)
        for _ in range(_KMEANS_ITERS):
            labels = torch.cdist(x, centres).argmin(1)
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
            if torch.allclose(moved, centres, atol=1e-6):
                break
            centres = moved
        distances = torch.cdist(x, centres)
        labels = distances.argmin(1)
        inertia = float((distances.gather(1, labels[:, None]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ start: each next centre drawn with probability proportional to D(x)^2."""
    first = int(torch.randint(x.shape[0], (1,), generator=g))
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0:
            i = int(torch.multinomial(d2.double() / total, 1, generator=g))
        else:  # every pixel alike: any pixel will do
            i = int(torch.randint(x.shape[0], (1,), generator=g))
        centres.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return torch.stack(centres)


def _order_by_size(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Renumber labels so that 0 is the largest segment (ties: the lower old label first)."""
    counts = torch.bincount(labels, minlength=k)
    order = sorted(range(k), key=lambda i: (-int(counts[i]), i))
    remap = torch.empty(k, dtype=torch.long)
    remap[torch.tensor(order)] = torch.arange(k)
    return remap[labels]


# ------------------------------------------------------------------ a network's own output


def segment(model: Any, image: Any) -> Segmentation:
    """Segment an image with a network's own segmentation output.

    Works for the bundled model (its segmentation head, ``ShapesNet.segment``) and torchvision's
    segmentation networks (FCN, DeepLabV3, LR-ASPP: the ``out`` logits). Logits are upsampled
    to the preprocessed input size if needed (bilinear), then softmax and argmax per pixel.

    Args:
        model: a model from :func:`featuremap.load_model` (its preprocessing is applied) or an
            ``nn.Module``.
        image: a path, ``"sample:NAME"``, PIL image, array, or a tensor used as it is.

    Returns:
        A :class:`Segmentation` at the preprocessed input size, with ``probabilities``
        ``(K, H, W)`` and class names: the model's categories (``background`` first for the
        bundled model), or ``"class 0"``, ... when its weights carry none (a weights file,
        random init).

    Raises:
        ConfigError: a model without segmentation output (a classification network), which
            names what works instead.

    Example:
        >>> seg = segment(load_model("shapes"), make_scene(60_000).image)  # doctest: +SKIP
        >>> seg.names[seg.labels[32, 32]]  # doctest: +SKIP
        'star'
    """
    module, preprocess, name, categories, task = _parts(model)
    method = _segmentation_kind(module, name, task)
    batch, raw = _prepare_one(image, preprocess, module)
    with torch.no_grad():
        logits = (module.segment(batch) if method == "segmentation head"
                  else _out(module(batch), name))
        probs = _resize(logits.float(), batch.shape[-2:]).softmax(1)[0].cpu()
    names = _class_names(categories, probs.shape[0], module)
    return Segmentation(probs.argmax(0).numpy().astype(np.int64), names, raw, probs.numpy(),
                        method, name, [])


def _segmentation_kind(module: nn.Module, name: str, task: str) -> str:
    """``"segmentation head"`` (a ``segment`` method), ``"segmentation network"`` (torchvision's
    FCN, DeepLabV3, LR-ASPP) or a ConfigError."""
    if callable(getattr(module, "segment", None)):
        return "segmentation head"
    if task == "segmentation" or type(module).__name__ in _SEG_NETWORKS:
        return "segmentation network"
    kind = "a classification model" if task == "classification" else "not a segmentation model"
    raise ConfigError(f"{name} is {kind} (no per-pixel output): {_SEG_HINT}.")


def _out(output: Any, name: str) -> torch.Tensor:
    """The per-pixel logits of a network's output: a 4-D tensor, or the ``'out'`` of a dict."""
    if isinstance(output, Mapping) and "out" in output:
        output = output["out"]
    if not isinstance(output, torch.Tensor) or output.dim() != 4:
        found = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(f"{name} gave {found}, not per-pixel logits (N, K, H, W): {_SEG_HINT}.")
    return output


def _class_names(categories: Sequence[str] | None, k: int, module: nn.Module) -> list[str]:
    """Names of ``k`` output channels: categories, background + categories, or ``class i``."""
    if categories is None and type(module).__name__ == "ShapesNet":
        from featuremap.shapenet import SEGMENTATION_CLASSES

        categories = SEGMENTATION_CLASSES
    if categories is not None and len(categories) == k:
        return list(categories)
    if categories is not None and len(categories) == k - 1:
        return ["background", *categories]
    return [f"class {i}" for i in range(k)]


# ------------------------------------------------------------------- a light fitted head


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
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()},
                  str(target))
        sidecar.write_text(json.dumps(self._meta(), indent=2) + "\n")
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
        return SegHeadResult(
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
        raise WeightsError(f"cannot read segmentation head '{target}' (with '{sidecar.name}'): "
                           f"{' '.join(str(exc).split())[:200] or type(exc).__name__}.") from None


def _head_logits(weight: torch.Tensor, bias: torch.Tensor, maps: Sequence[torch.Tensor],
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
        out = out + _resize(part, size)
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
    extractor = Extractor(model, result.layers)
    batch, raw = _prepare_one(image, _native(extractor.preprocess), extractor.module)
    maps = [m.cpu() for m in _check_maps(extractor.run(batch)[0])]
    found = [m.shape[1] for m in maps]
    if found != list(result.channels):
        raise ConfigError(
            f"the head was fitted on {result.model_name} layers {', '.join(result.layers)} with "
            f"{result.channels} channels, but {extractor.name} gives {found}: use the model the "
            "head was fitted on.")
    with torch.no_grad():
        probs = _head_logits(result.weight.float(), result.bias.float(), maps,
                             batch.shape[-2:]).softmax(1)[0]
    return Segmentation(probs.argmax(0).numpy().astype(np.int64), list(result.class_names), raw,
                        probs.numpy(), "fitted head", extractor.name, list(result.layers))


# ----------------------------------------------------------------- fitting: the dataset


def _find_pairs(root: Path) -> list[tuple[str, Path, Path]]:
    """``(stem, image, mask)`` of every image in ``root/images`` and its mask in ``root/masks``."""
    if not root.is_dir():
        raise ConfigError(f"data folder '{root}' does not exist (expected '{root}/images' and "
                          f"'{root}/masks').")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise ConfigError(f"'{root}' has no '{sub}' folder: a segmentation dataset holds "
                              "images/NAME.png and masks/NAME.png (label maps, same stem).")
    images, masks = _by_stem(root / "images"), _by_stem(root / "masks")
    if not images:
        raise ConfigError(f"'{root / 'images'}' holds no images ({', '.join(_IMAGE_SUFFIXES)}).")
    for missing, have, kind in ((sorted(set(images) - set(masks)), images, "image"),
                                (sorted(set(masks) - set(images)), masks, "mask")):
        if missing:
            other = "mask" if kind == "image" else "image"
            shown = ", ".join(have[s].name for s in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ConfigError(f"{len(missing)} {kind}(s) without a {other} of the same name in "
                              f"'{root}': {shown}{more}. Every image needs its mask.")
    return [(s, images[s], masks[s]) for s in sorted(images)]


def _by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES:
            if p.stem in found:
                raise ConfigError(f"two files named '{p.stem}' in '{folder}' ({found[p.stem].name}"
                                  f", {p.name}): keep one per name.")
            found[p.stem] = p
    return found


def _read_mask(path: Path) -> np.ndarray | None:
    """A label map ``(H, W)`` (uint8 or int32), None if unreadable; colour masks are refused."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = im.mode
            values = np.asarray(im) if mode in _MASK_MODES else None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    if values is None:
        raise ConfigError(
            f"mask '{path.name}' is a {mode} image, not a label map: save masks as single-channel "
            "PNGs (mode L, P or I) whose pixel values are class indices 0, 1, 2, ..., not colours.")
    if values.dtype == bool:
        values = values.astype(np.uint8)
    if values.ndim != 2 or values.min() < 0:
        raise ConfigError(f"mask '{path.name}' holds negative or non-2-D values; masks hold class "
                          "indices 0, 1, 2, ...")
    return values


def _dataset_classes(root: Path, max_label: int, where: str = "") -> list[str]:
    """Class names from ``classes.txt`` (one per line) or ``class 0`` .. ``class max``."""
    listing = root / "classes.txt"
    if not listing.is_file():
        return [f"class {i}" for i in range(max_label + 1)]
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if max_label >= len(names):
        mask = f" ('{where}')" if where else ""
        fix = ("if it marks unlabelled pixels, leave them out with ignore_index "
               f"(--ignore-index {max_label})" if max_label == 255 or max_label > 2 * len(names)
               else "add the missing names")
        raise ConfigError(f"a mask{mask} holds label {max_label}, but '{listing}' names only "
                          f"{len(names)} classes (0..{len(names) - 1}): {fix}.")
    return names


@dataclass
class _Item:
    """One image's frozen maps (at their own resolution) and its mask."""

    stem: str
    maps: list[torch.Tensor]
    mask: torch.Tensor


def _load_items(extractor: Extractor, pairs: list[tuple[str, Path, Path]], batch_size: int,
                tick: Callable[[int], None]) -> tuple[list[_Item], list[str]]:
    """Frozen maps of every readable pair: one forward pass per batch of equal-sized images."""
    preprocess = _native(extractor.preprocess)
    items: list[_Item] = []
    skipped: list[str] = []
    for start in range(0, len(pairs), batch_size):
        loaded: dict[tuple[int, ...], list[tuple[str, np.ndarray, np.ndarray]]] = {}
        for stem, image_path, mask_path in pairs[start:start + batch_size]:
            mask = _read_mask(mask_path)
            try:
                image = preprocess.load(image_path) if mask is not None else None
            except ImageError:
                image = None
            if image is None:
                skipped.append(image_path.name if mask is not None else mask_path.name)
                continue
            if image.shape[1:] != mask.shape:
                raise ConfigError(
                    f"mask '{mask_path.name}' is {mask.shape[1]} x {mask.shape[0]} pixels but its "
                    f"image is {image.shape[2]} x {image.shape[1]}: a mask must match its image.")
            loaded.setdefault(image.shape, []).append((stem, preprocess.normalise(image), mask))
        for group in loaded.values():
            items += _extract_group(extractor, group)
        tick(min(start + batch_size, len(pairs)))
    return items, skipped


def _extract_group(extractor: Extractor, group: list[tuple[str, np.ndarray, np.ndarray]]
                   ) -> list[_Item]:
    batch = torch.from_numpy(np.stack([g[1] for g in group])).to(_device(extractor.module))
    maps = [m.cpu() for m in _check_maps(extractor.run(batch)[0])]
    return [_Item(stem, [m[i:i + 1] for m in maps], torch.from_numpy(mask.astype(np.int64)))
            for i, (stem, _, mask) in enumerate(group)]


def _batches(items: Sequence[_Item]) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """Stack items of equal size: ``(maps per layer (n, C, h, w), masks (n, H, W))``."""
    groups: dict[tuple[int, ...], list[_Item]] = {}
    for item in items:
        groups.setdefault(tuple(item.mask.shape), []).append(item)
    for group in groups.values():
        maps = [torch.cat([it.maps[j] for it in group]) for j in range(len(group[0].maps))]
        yield maps, torch.stack([it.mask for it in group])


# ----------------------------------------------------------------- fitting: the head


def _standardiser(items: Sequence[_Item]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the training maps (concatenated over layers), streamed."""
    layers = len(items[0].maps)
    sums = [torch.zeros(items[0].maps[j].shape[1], dtype=torch.float64) for j in range(layers)]
    squares = [torch.zeros_like(v) for v in sums]
    counts = [0] * layers
    for item in items:
        for j, m in enumerate(item.maps):
            flat = m.transpose(0, 1).reshape(m.shape[1], -1).double()
            sums[j] += flat.sum(1)
            squares[j] += (flat * flat).sum(1)
            counts[j] += flat.shape[1]
    mean = torch.cat([s / n for s, n in zip(sums, counts)])
    square = torch.cat([q / n for q, n in zip(squares, counts)])
    std = (square - mean * mean).clamp_min(0).sqrt()
    return mean.float(), torch.where(std > 1e-6, std, torch.ones_like(std)).float()


def _unstandardise(head: nn.Conv2d, mean: torch.Tensor, std: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's weight and bias on raw maps, when ``head`` works on ``(maps - mean) / std``."""
    weight = head.weight / std.view(1, -1, 1, 1)
    return weight, head.bias - (weight[:, :, 0, 0] * mean).sum(1)


def _train_head(items: Sequence[_Item], k: int, *, epochs: int, lr: float, seed: int,
                batch_size: int, tick: Callable[[int], None], void: int = -1
                ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Fit ``nn.Conv2d(C_total, K, 1)`` with Adam on standardised maps; return it on raw maps.

    The loss is the cross-entropy over all pixels of a batch of images (each pixel counts once)
    but those labelled ``void``.
    """
    mean, std = _standardiser(items)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        head = nn.Conv2d(mean.numel(), k, 1)
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    history: list[float] = []
    for epoch in range(epochs):
        order = torch.randperm(len(items), generator=g).tolist()
        total = 0.0
        for start in range(0, len(order), batch_size):
            chosen = [items[i] for i in order[start:start + batch_size]]
            count = max(1, sum(int((it.mask != void).sum()) for it in chosen))
            opt.zero_grad(set_to_none=True)
            for maps, masks in _batches(chosen):
                logits = _head_logits(*_unstandardise(head, mean, std), maps, masks.shape[-2:])
                loss = F.cross_entropy(logits, masks, reduction="sum", ignore_index=void) / count
                loss.backward()
                total += float(loss.detach()) * count
            opt.step()
        history.append(total / max(1, sum(int((it.mask != void).sum()) for it in items)))
        tick(epoch + 1)
    with torch.no_grad():
        weight, bias = _unstandardise(head, mean, std)
    return weight.detach().clone(), bias.detach().clone(), history


def _evaluate(weight: torch.Tensor, bias: torch.Tensor, items: Sequence[_Item], k: int,
              void: int = -1) -> np.ndarray:
    """``(K, K)`` confusion matrix (rows truth, columns prediction) summed over ``items``,
    pixels labelled ``void`` left out."""
    confusion = torch.zeros(k * k, dtype=torch.long)
    with torch.no_grad():
        for maps, masks in _batches(items):
            pred = _head_logits(weight, bias, maps, masks.shape[-2:]).argmax(1)
            keep = masks != void
            confusion += torch.bincount((masks * k + pred)[keep], minlength=k * k)
    return confusion.view(k, k).numpy()


def _scores(confusion: np.ndarray, names: Sequence[str]) -> tuple[dict[str, float], float, float]:
    """(per-class IoU, mIoU, pixel accuracy); classes without truth pixels are NaN, not counted."""
    inter = np.diag(confusion).astype(np.float64)
    truth, predicted = confusion.sum(1), confusion.sum(0)
    union = truth + predicted - inter
    iou = np.where(truth > 0, inter / np.maximum(union, 1), np.nan)
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    accuracy = float(inter.sum() / max(1, confusion.sum()))
    return {n: float(v) for n, v in zip(names, iou)}, miou, accuracy


def _check_fit(epochs: Any, test_fraction: Any, batch_size: Any, lr: Any) -> None:
    problems = []
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        problems.append(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        problems.append(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        problems.append(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        problems.append(f"lr must be a positive number, got {lr!r}")
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def _split(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) indices of a seeded shuffle; at least one image in each."""
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    order = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(order[n_test:]), sorted(order[:n_test])


def fit_seg_head(
    model: Any,
    data_dir: str | os.PathLike[str],
    *,
    layers: str | Sequence[str],
    epochs: int = 30,
    seed: int = 0,
    test_fraction: float = 0.25,
    batch_size: int = 16,
    lr: float = 0.05,
    ignore_index: int | None = 255,
    progress: Progress | None = None,
) -> SegHeadResult:
    """Fit a 1x1-convolution segmentation head on the frozen maps of a folder of images and masks.

    ``data_dir`` holds ``images/NAME.png`` (any image format) and ``masks/NAME.png``: label maps
    of the same size whose pixel values are class indices (single-channel PNG: mode L, P or I).
    Classes are ``0 .. max label``, named by ``data_dir/classes.txt`` (one name per line) if
    present, else ``class 0``, ...; pixels labelled ``ignore_index`` (255, Pascal VOC's "void"
    border, by default) are neither trained on nor scored.

    Images are used at their own size (no resize or crop, so masks stay aligned), normalised as
    the model expects. All layers come from one forward pass per batch of ``batch_size`` images,
    once: the maps are kept at their own resolution, and the head (one ``nn.Conv2d(C_total, K,
    1)`` over the maps upsampled to the mask size, bilinear, concatenated) is trained on them
    with Adam and cross-entropy over pixels, on standardised channels (folded back into the
    head at the end). A seeded shuffle holds out ``test_fraction`` of the images; the scores
    come from one confusion matrix summed over the held-out pixels. A class without pixels in
    the held-out masks gets IoU NaN and is left out of the mIoU. Deterministic for a seed.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        data_dir: the folder with ``images/`` and ``masks/``.
        layers: layer names, globs or regexes whose outputs are feature maps.
        epochs: passes over the training images.
        seed: seeds the split, the head's initialisation and the shuffles.
        test_fraction: share of the images held out (at least one image each side).
        batch_size: images per forward pass and per optimiser step.
        lr: Adam's learning rate.
        ignore_index: the label of pixels to leave out (``None``: every label is a class).
        progress: called as ``progress(done, total)`` after each batch of images read (``done``
            counts images) and after each epoch (``total`` = images + epochs).

    Returns:
        A :class:`SegHeadResult` (scores, counts, the head; ``.save(path)``, ``.predict``).

    Raises:
        ConfigError: no ``images/`` or ``masks/`` folder, an image without its mask or a mask
            without its image (the first 3 named), a mask whose size differs from its image's,
            a colour (RGB) mask, labels beyond ``classes.txt``, fewer than 2 readable pairs, bad
            settings, layers that are not feature maps.
        UnknownNameError: an unknown layer.

    Example:
        >>> save_dataset("shapes_seg", 80, seed=1, layout="segmentation")  # doctest: +SKIP
        >>> result = fit_seg_head(load_model("shapes"), "shapes_seg",  # doctest: +SKIP
        ...                       layers=["backbone.block1", "backbone.block2"])
        >>> result.miou > 0.5  # doctest: +SKIP
        True
    """
    _check_fit(epochs, test_fraction, batch_size, lr)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(
            ignore_index, int) or ignore_index < 0):
        raise ConfigError(f"ignore_index must be a label >= 0 or None, got {ignore_index!r}.")
    void = -1 if ignore_index is None else int(ignore_index)
    root = Path(data_dir).expanduser()
    pairs = _find_pairs(root)
    extractor = Extractor(model, layers)
    total = len(pairs) + epochs

    def tick(done: int) -> None:
        if progress is not None:
            progress(done, total)

    items, skipped = _load_items(extractor, pairs, batch_size, tick)
    if len(items) < 2:
        raise ConfigError(f"{len(items)} readable image/mask pair(s) in '{root}' ({len(skipped)} "
                          "unreadable skipped): fitting and testing need at least 2.")
    labelled = [it.mask[it.mask != void] for it in items]
    if not any(m.numel() for m in labelled):
        raise ConfigError(f"every mask pixel in '{root}' is labelled {void} (ignore_index): "
                          "nothing to learn from.")
    top = max(int(m.max()) for m in labelled if m.numel())
    where = next(it.stem for it, m in zip(items, labelled) if m.numel() and int(m.max()) == top)
    names = _dataset_classes(root, top, where)
    train, test = _split(len(items), float(test_fraction), seed)
    weight, bias, history = _train_head(
        [items[i] for i in train], len(names), epochs=epochs, lr=float(lr), seed=seed,
        batch_size=batch_size, tick=lambda e: tick(len(pairs) + e), void=void)
    confusion = _evaluate(weight, bias, [items[i] for i in test], len(names), void)
    iou, miou, accuracy = _scores(confusion, names)
    return SegHeadResult(
        weight, bias, names, list(extractor.layers), [m.shape[1] for m in items[0].maps],
        extractor.name, iou, miou, accuracy, confusion, len(train), len(test), skipped,
        {n: int(c) for n, c in zip(names, confusion.sum(1))}, history, int(seed), epochs,
        float(lr), ignore_index=None if void < 0 else void,
        ignored_pixels=sum(int((it.mask == void).sum()) for it in items))

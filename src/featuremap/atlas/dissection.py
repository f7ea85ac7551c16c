"""Network dissection: which channels are detectors of which concept (Bau et al., 2017).

:func:`dissect` streams a dataset (or a store) twice, one batch of images in memory at a time:

1. every channel's maps are upsampled to the image (bilinear, as NetDissect) and the value
   exceeded by the top ``quantile`` (0.5%) of all its upsampled values over the dataset is
   estimated in one pass (:class:`~featuremap.atlas.quantile.TopQuantile`: a per-channel
   histogram of 4096 bins that widens as larger values arrive; off by at most one bin width);
2. each channel's upsampled maps, thresholded there, are compared with the pixels of every
   concept (:mod:`featuremap.atlas.concepts`): intersection and union counts summed over the
   dataset give one IoU per channel and concept (NetDissect's dataset-wide IoU).

On a dataset the network runs once per image: the first pass's maps of the dissected channels
are kept for the second while they fit in :data:`CACHE_BYTES` (256 MiB), and only when they do
not does the second pass run the network again.

A channel detects its best concept when that IoU passes ``threshold`` (0.04, as the paper);
else it detects none. Each layer then has a share of channels per category (colour, shape,
class, none), and :func:`featuremap.plot.plot_dissection` draws them from low to high layers.

Example:
    >>> d = dissect(load_model("shapes"), "scenes", layers="backbone.block*")  # doctest: +SKIP
    >>> print(d)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featuremap.atlas.concepts import Concept, ConceptSet, resolve_concepts
from featuremap.atlas.quantile import TopQuantile
from featuremap.atlas.sources import MapSource, Piece, open_source
from featuremap.bundled.scenes import CLASSES as SCENE_CLASSES
from featuremap.errors import ConfigError, printable

__all__ = ["Dissection", "LayerDissection", "concept_sets", "dissect", "dissect_source",
           "upsampled"]

ELEMENTS = 2**22  # upsampled values handled at once (n x C x H x W), to bound memory
CACHE_BYTES = 256 * 2**20  # the first pass's maps kept for the second when they fit in this
BINS = 4096
METHOD = (f"per-channel histogram of {BINS} bins from the smallest value of the first batch, "
          "widened by doubling as larger values arrive; read from the top, linearly "
          "interpolated in its bin (error at most one bin width)")


@dataclass
class LayerDissection:
    """The dissection of one layer.

    Attributes:
        layer: its name; concepts: every concept scored (shared by all layers).
        thresholds: ``(C,)`` each channel's top-quantile value; threshold_error: ``(C,)`` how
            far the estimate can be from the exact quantile (one bin width).
        iou: ``(C, K)`` the dataset-wide IoU of each channel with each concept.
        best: ``(C,)`` the index of each channel's best concept; best_iou: its IoU.
        detector: ``(C,)`` True where ``best_iou`` passes the threshold.
        active_share: ``(C,)`` the share of pixels above the threshold (about the quantile).
        channels: the channel number of each row when only some channels were dissected
            (:func:`featuremap.atlas.channel_atlas`); None: row ``c`` is channel ``c``.
    """

    layer: str
    concepts: tuple[Concept, ...]
    thresholds: np.ndarray
    threshold_error: np.ndarray
    iou: np.ndarray
    best: np.ndarray
    best_iou: np.ndarray
    detector: np.ndarray
    active_share: np.ndarray
    channels: tuple[int, ...] | None = None

    @property
    def n_channels(self) -> int:
        return len(self.thresholds)

    def number(self, row: int) -> int:
        """The channel number of row ``row``."""
        return row if self.channels is None else self.channels[row]

    def category(self, row: int) -> str:
        """What the channel of ``row`` detects: ``"colour"``, ``"shape"``, ``"class"`` or
        ``"none"``."""
        return self.concepts[self.best[row]].category if self.detector[row] else "none"

    def shares(self, categories: Sequence[str]) -> dict[str, float]:
        """``{category: share of channels}`` for ``categories`` and ``"none"``."""
        found = [self.category(c) for c in range(self.n_channels)]
        return {k: found.count(k) / max(1, len(found)) for k in (*categories, "none")}

    def best_in(self, category: str) -> np.ndarray:
        """``(C,)`` each channel's best IoU among the concepts of ``category`` (0 if none)."""
        columns = [k for k, c in enumerate(self.concepts) if c.category == category]
        return self.iou[:, columns].max(1) if columns else np.zeros(self.n_channels, np.float32)

    def detectors(self, category: str | None = None) -> list[tuple[int, Concept, float]]:
        """``(channel, concept, IoU)`` of the detector channels (of one category), best first."""
        rows = [(self.number(c), self.concepts[self.best[c]], float(self.best_iou[c]))
                for c in np.flatnonzero(self.detector).tolist()
                if category is None or self.concepts[self.best[c]].category == category]
        return sorted(rows, key=lambda r: -r[2])

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "channels": [
            {"channel": self.number(c), "concept": self.concepts[self.best[c]].to_dict(),
             "iou": float(self.best_iou[c]), "detector": bool(self.detector[c]),
             "category": self.category(c), "threshold": float(self.thresholds[c]),
             "threshold_error": float(self.threshold_error[c])}
            for c in range(self.n_channels)]}


@dataclass
class Dissection:
    """What every channel of some layers detects (from :func:`dissect`).

    Attributes:
        model, source: what was read; layers: per layer, low to high, a
            :class:`LayerDissection`.
        concepts: the concepts scored; categories: their categories, in order.
        quantile, threshold: the settings; method: how the quantiles were estimated.
        n_images: images read; skipped: ``{name: reason}`` of those not read.
        concept_share: ``(K,)`` the share of all pixels that each concept covers.
    """

    model: str
    source: str
    layers: list[LayerDissection]
    concepts: tuple[Concept, ...]
    categories: tuple[str, ...]
    quantile: float
    threshold: float
    method: str
    n_images: int
    skipped: dict[str, str]
    concept_share: np.ndarray
    notes: list[str] = field(default_factory=list)

    def layer(self, name: str) -> LayerDissection:
        for d in self.layers:
            if d.layer == name:
                return d
        raise ConfigError(f"layer '{printable(name)}' was not dissected: this dissection holds "
                          + ", ".join(printable(d.layer) for d in self.layers) + ".")

    @property
    def curve(self) -> dict[str, list[float]]:
        """``{category: [share of channels per layer, low to high]}``, ``"none"`` last."""
        rows = [d.shares(self.categories) for d in self.layers]
        return {k: [r[k] for r in rows] for k in (*self.categories, "none")}

    @property
    def iou_curve(self) -> dict[str, list[float]]:
        """``{category: [median over channels of the best IoU in that category, per layer]}``:
        how close each layer comes to each kind of concept, detector or not."""
        return {k: [float(np.median(d.best_in(k))) for d in self.layers]
                for k in self.categories}

    def __str__(self) -> str:
        keys = (*self.categories, "none")
        width = max([5] + [len(d.layer) for d in self.layers])
        lines = [f"dissection of {printable(self.model)} on {self.n_images:,} images from "
                 f"'{self.source}'" + (f" ({len(self.skipped)} skipped)" if self.skipped else "")
                 + f": {len(self.concepts)} concepts; top {self.quantile:.2%} of each channel "
                 f"vs each concept, detector when IoU >= {self.threshold:g}",
                 f"{'layer':{width}s}  {'channels':>8}  " + "  ".join(f"{k:>7}" for k in keys)
                 + "  best detectors"]
        for d in self.layers:
            shares = d.shares(self.categories)
            best = ", ".join(f"{c}:{concept.name} {iou:.2f}"
                             for c, concept, iou in d.detectors()[:3])
            lines.append(f"{printable(d.layer):{width}s}  {d.n_channels:>8}  "
                         + "  ".join(f"{shares[k]:>7.0%}" for k in keys) + f"  {best}")
        lines.append("median over channels of the best IoU per category: " + "; ".join(
            f"{k} " + " ".join(f"{v:.3f}" for v in values)
            for k, values in self.iou_curve.items()) + " (layers low to high)")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "source": self.source, "quantile": self.quantile,
                "threshold": self.threshold, "method": self.method,
                "n_images": self.n_images, "skipped": dict(self.skipped),
                "concepts": [c.to_dict() for c in self.concepts],
                "concept_share": [float(s) for s in self.concept_share],
                "categories": list(self.categories), "curve": self.curve,
                "iou_curve": self.iou_curve,
                "layers": [d.to_dict() for d in self.layers], "notes": list(self.notes)}


def upsampled(maps: torch.Tensor, size: tuple[int, int]) -> Iterator[torch.Tensor]:
    """``maps`` ``(n, C, h, w)`` upsampled to ``size`` (bilinear, as NetDissect), a few images
    at a time: ``(C, n' x H x W)`` float32 values per piece, channel first."""
    n, c = maps.shape[:2]
    step = max(1, ELEMENTS // max(1, c * size[0] * size[1]))
    for start in range(0, n, step):
        part = maps[start: start + step].float()
        if tuple(part.shape[2:]) != tuple(size):
            part = F.interpolate(part, size=size, mode="bilinear", align_corners=False)
        yield part.transpose(0, 1).reshape(c, -1)


def check_settings(quantile: Any, threshold: Any) -> None:
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) \
            or not 0 < quantile < 0.5:
        raise ConfigError(f"quantile is the top share of each channel's values, in (0, 0.5) "
                          f"(0.005 for the top 0.5%), got {quantile!r}.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0 <= threshold <= 1:
        raise ConfigError(f"threshold is an IoU in [0, 1] (0.04 as Bau et al.), got "
                          f"{threshold!r}.")


def dissect(
    model: Any,
    source: Any,
    *,
    layers: str | Sequence[str],
    concepts: Sequence[str | ConceptSet] | str | None = None,
    quantile: float = 0.005,
    threshold: float = 0.04,
    batch_size: int = 32,
    progress: Callable[[int, int], Any] | None = None,
) -> Dissection:
    """Which channels of ``layers`` detect which concept: colours, shapes, your classes.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``; with a store,
            the model that made it (checked) or None.
        source: anything :func:`featuremap.open_collection` reads (image/mask pairs run at
            their own size, so maps align with masks), or a store holding ``layers`` unpooled.
        layers: layer names, globs or regexes; reported from low to high.
        concepts: None (the colour terms, and the masks' classes where the source has masks),
            or a list of ``"colour"``, ``"masks"`` and
            :class:`~featuremap.atlas.concepts.ConceptSet` objects.
        quantile: the top share of each channel's upsampled values that marks where it fires.
        threshold: the IoU a channel's best concept must reach for a detector.
        batch_size: images per forward pass (a store reads its own chunks).
        progress: ``progress(done, total)`` over both passes (``total`` = 2 x images).

    Returns:
        :class:`Dissection`.

    Raises:
        ConfigError: bad settings, ``"masks"`` on a source without masks, a layer that is not
            feature maps or stored pooled, no readable image.
        UnknownNameError: an unknown layer or concept set (with a did-you-mean).
    """
    check_settings(quantile, threshold)
    maps_of = open_source(model, source, layers=layers, batch_size=batch_size, need_model=False)
    if maps_of.model is not None:
        order = {n: i for i, (n, _) in enumerate(maps_of.model.module.named_modules())}
        maps_of.layers.sort(key=lambda n: order.get(n, len(order)))
    sets = concept_sets(maps_of, concepts)
    return dissect_source(maps_of, sets, quantile=quantile, threshold=threshold,
                          progress=progress)


def concept_sets(source: MapSource, concepts: Any) -> list[ConceptSet]:
    """The concept sets ``concepts`` names, for what ``source`` holds (see :func:`dissect`)."""
    return resolve_concepts(concepts, classes=source.classes, has_masks=source.has_masks,
                            source=source.description, shape_classes=SCENE_CLASSES)


def dissect_source(source: MapSource, sets: list[ConceptSet], *, quantile: float,
                   threshold: float, progress: Callable[[int, int], Any] | None = None,
                   select: dict[str, Sequence[int]] | None = None,
                   tap: Callable[[Piece], Any] | None = None) -> Dissection:
    """:func:`dissect` on an open source, for engines that read more on the way.

    Args:
        select: per layer, the channels to dissect (the others are not read); default all.
        tap: called with every piece of the first pass (all channels), before it is used.
    """
    n = len(source)
    first = None if progress is None else (lambda done, _: progress(done, 2 * n))
    second = None if progress is None else (lambda done, _: progress(n + done, 2 * n))
    chosen = {k: torch.tensor(list(v), dtype=torch.long) for k, v in (select or {}).items()}
    cache = _Kept(CACHE_BYTES) if source.features is None else None
    quantiles, seen = _thresholds(source, quantile, first, chosen, tap, cache)
    if not seen:
        raise source.nothing_read()
    thresholds = {k: q.thresholds() for k, q in quantiles.items()}
    kept = cache.maps if cache is not None and cache.maps else None  # selected already
    counts = _overlaps(source, sets, thresholds, second, chosen if kept is None else {}, kept)
    concepts = tuple(c for s in sets for c in s.concepts)
    categories = tuple(dict.fromkeys(s.category for s in sets))
    layers_out = [_layer_result(k, concepts, thresholds[k], quantiles[k].max_error, counts[k],
                                counts["concept"], counts["pixels"], threshold)
                  for k in source.layers]
    for d in layers_out:
        if d.layer in chosen:
            d.channels = tuple(chosen[d.layer].tolist())
    return Dissection(source.model_name, source.description, layers_out, concepts, categories,
                      float(quantile), float(threshold), METHOD, seen, dict(source.skipped),
                      counts["concept"] / max(1, counts["pixels"]))


def _selected(piece: Piece, name: str, select: dict[str, torch.Tensor]) -> torch.Tensor:
    maps = piece.maps[name]
    if name not in select:
        return maps
    return maps.index_select(1, select[name].to(maps.device))


class _Kept:
    """The first pass's maps of a dataset (the dissected channels), by image, for the second
    pass, as long as they fit in ``limit`` bytes; past it none are kept and the second pass
    runs the network again (memory stays bounded whatever the dataset's size)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.bytes = limit, 0
        self.maps: dict[int, dict[str, torch.Tensor]] | None = {}

    def add(self, piece: Piece, name: str, maps: torch.Tensor) -> None:
        if self.maps is None:
            return
        self.bytes += maps.numel() * maps.element_size()
        if self.bytes > self.limit:
            self.maps = None
            return
        kept = maps.detach().clone()  # where it is (a GPU's second pass stays there)
        for row, index in enumerate(piece.indices.tolist()):
            self.maps.setdefault(index, {})[name] = kept[row]


def _thresholds(source: MapSource, quantile: float, progress: Any,
                select: dict[str, torch.Tensor], tap: Callable[[Piece], Any] | None,
                cache: _Kept | None = None) -> tuple[dict[str, TopQuantile], int]:
    """Pass 1: each layer's per-channel top-quantile estimator, and the images read (their
    maps kept in ``cache`` when they fit)."""
    estimators: dict[str, TopQuantile] = {}
    seen = 0
    for piece in source.stream(progress=progress):
        seen += len(piece.indices)
        if tap is not None:
            tap(piece)
        for name in source.layers:
            maps = _selected(piece, name, select)
            if cache is not None:
                cache.add(piece, name, maps)
            if name not in estimators:
                estimators[name] = TopQuantile(maps.shape[1], quantile, bins=BINS)
            for values in upsampled(maps, piece.size):
                estimators[name].add(values)
    return estimators, seen


def _overlaps(source: MapSource, sets: list[ConceptSet], thresholds: dict[str, torch.Tensor],
              progress: Any, select: dict[str, torch.Tensor],
              kept: dict[int, dict[str, torch.Tensor]] | None = None) -> dict[str, Any]:
    """Pass 2: per layer ``{"inter": (C, K), "active": (C,)}`` counts, and per concept its
    pixels (``"concept"``), and all pixels (``"pixels"``); with ``kept`` (the first pass's maps
    by image) the network does not run again."""
    colour = any(not s.needs_masks for s in sets)
    masks = any(s.needs_masks for s in sets)
    k = sum(len(s.names) for s in sets)
    out: dict[str, Any] = {"concept": np.zeros(k), "pixels": 0}
    for name, t in thresholds.items():
        out[name] = {"inter": torch.zeros(len(t), k, dtype=torch.float64),
                     "active": torch.zeros(len(t), dtype=torch.float64)}
    for piece in source.stream(images=colour, masks=masks, progress=progress, kept=kept):
        onehot = _onehot(piece, sets, k)  # (n x H x W, K)
        out["concept"] += onehot.sum(0).double().numpy()
        out["pixels"] += onehot.shape[0]
        for name, t in thresholds.items():
            start = 0
            for values in upsampled(_selected(piece, name, select), piece.size):
                active = (values > t.to(values.device)[:, None]).float()
                rows = onehot[start: start + active.shape[1]].to(values.device)
                start += active.shape[1]
                out[name]["inter"] += (active @ rows).double().cpu()
                out[name]["active"] += active.sum(1).double().cpu()
    return out


def _onehot(piece: Piece, sets: list[ConceptSet], k: int) -> torch.Tensor:
    """``(n x H x W, K)`` float32: 1 where a pixel shows a concept (image by image, row-major,
    as :func:`upsampled` orders its values)."""
    columns = []
    for s in sets:
        labels = torch.from_numpy(np.ascontiguousarray(s.labels(piece.images, piece.masks)))
        labels = labels.reshape(-1)
        block = torch.zeros(labels.shape[0], len(s.names) + 1)
        block[torch.arange(labels.shape[0]), torch.where(labels < 0, len(s.names), labels)] = 1
        columns.append(block[:, :-1])
    return torch.cat(columns, 1)


def _layer_result(layer: str, concepts: tuple[Concept, ...], thresholds: torch.Tensor,
                  error: torch.Tensor, counts: dict[str, torch.Tensor], area: np.ndarray,
                  pixels: int, threshold: float) -> LayerDissection:
    """IoU = intersection / (active + concept - intersection), summed over the dataset."""
    inter, active = counts["inter"].numpy(), counts["active"].numpy()
    union = active[:, None] + area[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    best = iou.argmax(1)
    best_iou = iou[np.arange(len(best)), best]
    return LayerDissection(layer, concepts, thresholds.cpu().numpy(), error.cpu().numpy(),
                           iou.astype(np.float32), best, best_iou.astype(np.float32),
                           best_iou >= threshold, (active / max(1, pixels)).astype(np.float32))

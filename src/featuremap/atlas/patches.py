"""Top-activating patches: for each channel, the image regions that drive it most.

:func:`top_patches` reads a dataset (the network runs) or a store once and keeps, per channel,
the ``k`` strongest values with their image and position, then crops each one's receptive field
from its image. The bookkeeping runs on the tensor side, per batch: the maximum of each map
over its positions (and where it is) gives ``(n, C)`` candidates, at most ``per_image`` per
image and channel; a stable sort of the running ``(k, C)`` best and the candidates keeps the
``k`` largest. Memory holds one batch and ``k x C`` winners, however many images the source
has. A second, cheap step reads again only the images that won, and crops the field of each
winner: the analytic field of the layer (:func:`featuremap.receptive_field`; for a model that
cannot be traced, the gradient's support, with a note), clipped at the image border, the part
of the field outside the image kept as a mask (``Patch.clipped``) and filled grey.

Ties go to the value met first: the earlier image, then the earlier position (row-major).

Example:
    >>> top = top_patches(load_model("shapes"), "scenes", layer="backbone.block2", k=9)
    ...     # doctest: +SKIP
    >>> print(top)  # doctest: +SKIP
    >>> top.channel(5)[0].crop.shape  # doctest: +SKIP
    (3, 16, 16)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from featuremap.atlas.sources import MapSource, open_source
from featuremap.budget import check_size
from featuremap.effective import empirical_receptive_field
from featuremap.errors import ConfigError, printable
from featuremap.model import as_model
from featuremap.receptive import ReceptiveField, receptive_field

__all__ = ["GREY", "Patch", "RunningTopK", "TopPatches", "crop_winners", "top_patches"]

GREY = 0.5  # what a crop shows where its field lies outside the image


@dataclass(frozen=True, eq=False)
class Patch:
    """One top-activating value of a channel and the region of its image it sees.

    Attributes:
        channel: the channel; rank: 0 for the strongest value of the channel.
        value: the map's value.
        image: the image's index in the source; name: its display name.
        position: ``(y, x)`` in the layer's map.
        box: ``(y0, x0, y1, x1)`` of the receptive field in image pixels, end exclusive, not
            clipped; clipped_box: the same, clipped to the image.
        crop: ``(C, y1 - y0, x1 - x0)`` float32 in ``[0, 1]``: the image under ``box``, grey
            (0.5) where the box lies outside the image.
        clipped: ``(y1 - y0, x1 - x0)`` bool: True where the box lies outside the image.
    """

    channel: int
    rank: int
    value: float
    image: int
    name: str
    position: tuple[int, int]
    box: tuple[int, int, int, int]
    clipped_box: tuple[int, int, int, int]
    crop: np.ndarray = field(repr=False)
    clipped: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the pixels (``crop_shape`` says their shape)."""
        return {"channel": self.channel, "rank": self.rank, "value": self.value,
                "image": self.image, "name": self.name, "position": list(self.position),
                "box": list(self.box), "clipped_box": list(self.clipped_box),
                "crop_shape": list(self.crop.shape),
                "clipped_share": float(self.clipped.mean()) if self.clipped.size else 0.0}


class RunningTopK:
    """Per channel, the ``k`` largest values seen so far, at most ``per_image`` per image.

    ``add(maps, indices)`` takes a batch ``(n, C, h, w)`` of maps of the images ``indices``
    (ascending, after every image added before); ties go to the value added first.

    Attributes after :meth:`add`: ``values`` ``(m, C')``, ``images``, ``ys``, ``xs`` (``m <=
    k`` rows, best first) for the ``C'`` kept channels.
    """

    def __init__(self, k: int, *, per_image: int | None = 1,
                 channels: Sequence[int] | None = None) -> None:
        self.k, self.per_image, self.wanted = k, per_image, channels
        self.channels: tuple[int, ...] | None = None
        self.values = self.images = self.ys = self.xs = None
        self._select: torch.Tensor | None = None

    def _start(self, maps: torch.Tensor, layer: str) -> None:
        n_channels = maps.shape[1]
        chosen = range(n_channels) if self.wanted is None else self.wanted
        self.channels = check_channels(chosen, n_channels, layer)
        if self.wanted is not None:
            self._select = torch.tensor(self.channels, dtype=torch.long, device=maps.device)
        empty = maps.new_empty((0, len(self.channels)), dtype=torch.float32)
        self.values = empty
        self.images, self.ys, self.xs = (empty.long() for _ in range(3))

    def add(self, maps: torch.Tensor, indices: np.ndarray, layer: str = "the layer") -> None:
        """Merge the per-image best values of ``maps`` into the running top ``k``."""
        if self.channels is None:
            self._start(maps, layer)
        n, c, w = maps.shape[0], len(self.channels), maps.shape[3]
        if self.per_image == 1:
            values, where = best_of_each_map(maps, self._select)
        else:
            x = maps if self._select is None else maps.index_select(1, self._select)
            j = min(x.shape[2] * x.shape[3], self.per_image or self.k, self.k)
            values, where = x.reshape(n * c, -1).float().topk(j, dim=1)  # best first
            values = values.view(n, c, j).permute(0, 2, 1).reshape(n * j, c)
            where = where.view(n, c, j).permute(0, 2, 1).reshape(n * j, c)
            indices = np.repeat(indices, j)
        images = torch.as_tensor(indices, device=values.device).view(-1, 1).expand(-1, c)
        values = torch.nan_to_num(values, nan=-float("inf"))
        merged = torch.cat([self.values, values])
        order = torch.sort(merged, dim=0, descending=True, stable=True).indices[: self.k]
        self.values = merged.gather(0, order)
        self.images = torch.cat([self.images, images]).gather(0, order)
        self.ys = torch.cat([self.ys, where // w]).gather(0, order)
        self.xs = torch.cat([self.xs, where % w]).gather(0, order)


def best_of_each_map(maps: torch.Tensor, select: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, where)``, each ``(n, C)``: the maximum of each map of ``maps`` ``(n, C, h,
    w)`` (the channels ``select``, or all) and its first flat position.

    On the CPU, NumPy does it on this thread: torch's threaded reductions stalled for a
    scheduler tick (about 16 ms against 0.2 ms) whenever the other core was busy.
    """
    if maps.device.type != "cpu":
        x = maps if select is None else maps.index_select(1, select)
        values, where = x.reshape(x.shape[0] * x.shape[1], -1).max(dim=1)
        return values.float().view(x.shape[:2]), where.view(x.shape[:2])
    a = maps.detach().numpy()
    if select is not None:
        a = a[:, select.numpy()]
    flat = a.reshape(a.shape[0] * a.shape[1], -1)
    where = flat.argmax(1)  # the first maximum, as torch's max
    values = flat[np.arange(len(flat)), where].astype(np.float32)
    return (torch.from_numpy(values).view(a.shape[:2]),
            torch.from_numpy(where).view(a.shape[:2]))


def check_channels(channels: Any, n_channels: int, layer: str) -> tuple[int, ...]:
    """``channels`` as a tuple of distinct ints in ``0 .. n_channels - 1``, or a ConfigError."""
    if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
        channels = [channels]
    try:
        chosen = [int(c) for c in channels]
        ok = all(not isinstance(c, bool) and float(c) == int(c) for c in channels)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"channels must be channel numbers (ints) or None for all, got "
                          f"{printable(repr(channels))[:80]}.")
    bad = [c for c in chosen if not 0 <= c < n_channels]
    if bad:
        raise ConfigError(f"channel {bad[0]} is outside the {n_channels} channels of "
                          f"'{layer}' (0..{n_channels - 1}).")
    if not chosen:
        raise ConfigError("channels is empty: name at least one channel, or None for all.")
    return tuple(dict.fromkeys(chosen))


@dataclass
class TopPatches:
    """The top-activating patches of some channels of one layer (from :func:`top_patches`).

    Attributes:
        model, layer: what was read; source: the dataset or store, printable.
        k, per_image: the settings (``per_image`` None: any number per image).
        channels: the channels, in the order asked.
        values: ``(len(channels), m)`` float32, best first (``m = min(k, images x
            per_image)``); images: the same shape, int64 image indices; positions: ``(...,
            2)`` int64 ``(y, x)`` in the map.
        patches: per channel (in :attr:`channels` order) its :class:`Patch` list.
        n_images: images read; skipped: ``{name: reason}`` of the images not read.
        field_size, stride: the receptive field's size ``(h, w)`` and stride of the layer.
        notes: what was assumed (a gradient-based field, ...).
    """

    model: str
    layer: str
    source: str
    k: int
    per_image: int | None
    channels: tuple[int, ...]
    values: np.ndarray
    images: np.ndarray
    positions: np.ndarray
    patches: list[list[Patch]]
    n_images: int
    skipped: dict[str, str]
    field_size: tuple[int, int]
    stride: tuple[float, float]
    notes: list[str] = field(default_factory=list)

    def channel(self, channel: int) -> list[Patch]:
        """The patches of ``channel`` (a channel number, not a row), best first."""
        if channel not in self.channels:
            raise ConfigError(f"channel {channel} was not kept: these patches hold channels "
                              f"{_ranges(self.channels)}.")
        return self.patches[self.channels.index(channel)]

    def __len__(self) -> int:
        return len(self.channels)

    def __str__(self) -> str:
        size = "x".join(dict.fromkeys(str(s) for s in self.field_size))
        m = self.values.shape[1]
        head = [f"top {m} patches per channel of {printable(self.model)} "
                f"{printable(self.layer)}: {len(self.channels)} channels, {self.n_images:,} "
                f"images from '{self.source}'"
                + (f" ({len(self.skipped)} skipped)" if self.skipped else "")
                + f"; field {size} px, stride {self.stride[0]:g}"
                + ("" if self.per_image is None else
                   f"; at most {self.per_image} per image")]
        width = max([5] + [len(p[0].name) for p in self.patches if p])
        head.append(f"{'channel':>7}  {'top value':>10}  {'image':{width}s}  {'at (y, x)':>10}"
                    f"  {'last value':>10}")
        for c, patches in zip(self.channels, self.patches):
            if not patches:
                continue
            best, last = patches[0], patches[-1]
            at = f"({best.position[0]}, {best.position[1]})"
            head.append(f"{c:>7}  {best.value:>10.4g}  {best.name:{width}s}  {at:>10}  "
                        f"{last.value:>10.4g}")
        return "\n".join(head + [f"note: {n}" for n in self.notes])

    def to_dict(self) -> dict[str, Any]:
        """What a web page receives: settings and every patch, without the pixels."""
        return {"model": self.model, "layer": self.layer, "source": self.source, "k": self.k,
                "per_image": self.per_image, "channels": list(self.channels),
                "n_images": self.n_images, "skipped": dict(self.skipped),
                "field_size": list(self.field_size), "stride": list(self.stride),
                "patches": [[p.to_dict() for p in row] for row in self.patches],
                "notes": list(self.notes)}


def _ranges(values: Sequence[int]) -> str:
    shown = ", ".join(str(v) for v in values[:8])
    return shown + (f" and {len(values) - 8} more" if len(values) > 8 else "")


def check_k(name: str, value: Any, *, none: bool = False) -> None:
    if value is None and none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        more = " or None" if none else ""
        raise ConfigError(f"{name} must be an integer >= 1{more}, got {value!r}.")


def top_patches(
    model: Any,
    source: Any,
    *,
    layer: str,
    k: int = 9,
    channels: Sequence[int] | int | None = None,
    per_image: int | None = 1,
    batch_size: int = 32,
    progress: Callable[[int, int], Any] | None = None,
) -> TopPatches:
    """Per channel of ``layer``, the ``k`` strongest values over a dataset and their patches.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``; with a store,
            the model that made it (checked; it gives the receptive fields).
        source: anything :func:`featuremap.open_collection` reads (image/mask pairs run at
            their own size), or a store (its folder or a :class:`~featuremap.store.Store`)
            holding ``layer`` unpooled.
        layer: one layer name (exact, glob or regex matching one layer).
        k: values kept per channel.
        channels: channel numbers, or None for every channel.
        per_image: at most this many values per image and channel (None: no limit).
        batch_size: images per forward pass (a store reads its own chunks).
        progress: ``progress(images passed, images)`` after each batch.

    Returns:
        :class:`TopPatches`.

    Raises:
        ConfigError: ``k`` or ``per_image`` below 1, channels outside the layer, a layer that
            is not feature maps, a store layer stored pooled, no readable image, crops too
            large for memory.
        UnknownNameError: an unknown layer (with a did-you-mean).

    Example:
        >>> top = top_patches(load_model("shapes"), "scenes", layer="backbone.block3", k=4,
        ...                   channels=[0, 7])  # doctest: +SKIP
        >>> [p.name for p in top.channel(7)]  # doctest: +SKIP
    """
    check_k("k", k)
    check_k("per_image", per_image, none=True)
    if model is not None:
        model = as_model(model)
        layer = model.one_layer(layer)
    maps_of = open_source(model, source, layers=[layer], batch_size=batch_size)
    layer = maps_of.layers[0]
    running = RunningTopK(k, per_image=per_image, channels=channels)
    seen = 0
    for piece in maps_of.stream(progress=progress):
        running.add(piece.maps[layer], piece.indices, layer)
        seen += len(piece.indices)
    if not seen:
        raise maps_of.nothing_read()
    return crop_winners(maps_of, layer, running, seen, k, per_image)


def crop_winners(source: MapSource, layer: str, running: RunningTopK, seen: int, k: int,
                 per_image: int | None) -> TopPatches:
    """The :class:`TopPatches` of a finished running top ``k``: the images that won are read
    again and the field of each winner is cropped."""
    values = running.values.cpu().numpy().T.copy()  # (C', m)
    images = running.images.cpu().numpy().T.copy()
    positions = np.stack([running.ys.cpu().numpy().T, running.xs.cpu().numpy().T], -1)
    fields = FieldFinder(source.model, layer)
    patches = crop_patches(source, fields, running.channels, values, images, positions)
    first = next((row[0] for row in patches if row), None)
    size = (first.box[2] - first.box[0], first.box[3] - first.box[1]) if first else (0, 0)
    return TopPatches(source.model_name, layer, source.description, k, per_image,
                      running.channels, values, images, positions, patches, seen,
                      dict(source.skipped), size, fields.stride, fields.notes)


class FieldFinder:
    """The receptive field of a position of ``layer`` for an input size, computed once each:
    analytic where the model can be traced, else the gradient's support (with a note)."""

    def __init__(self, model: Any, layer: str) -> None:
        self.model, self.layer = model, layer
        self.kept: dict[tuple, ReceptiveField] = {}
        self.notes: list[str] = []
        self.stride: tuple[float, float] = (float("nan"), float("nan"))

    def __call__(self, size: tuple[int, int], position: tuple[int, int]) -> ReceptiveField:
        key = (size, position)
        if key not in self.kept:
            self.kept[key] = self._find(size, position)
        return self.kept[key]

    def _find(self, size: tuple[int, int], position: tuple[int, int]) -> ReceptiveField:
        try:
            found = receptive_field(self.model, self.layer, position=position, input_size=size)
            self.stride = found.stride
            return found
        except ConfigError as error:
            why = " ".join(str(error).split())
        try:
            found = empirical_receptive_field(self.model, self.layer, position=position,
                                              input_size=size)[0]
        except ConfigError as error:
            raise ConfigError(f"no receptive field for '{self.layer}' at {position}: the "
                              f"analysis failed ({why[:120]}) and so did the gradient "
                              f"({' '.join(str(error).split())[:120]}).") from None
        note = (f"no analytic receptive field ({why[:120]}): boxes are the support of the "
                "gradient of each value on a random input")
        if note not in self.notes:
            self.notes.append(note)
        return found


def crop_patches(source: MapSource, fields: FieldFinder, channels: Sequence[int],
                 values: np.ndarray, images: np.ndarray, positions: np.ndarray
                 ) -> list[list[Patch]]:
    """Read each winning image once and crop the field of each of its winners."""
    winners: dict[int, list[tuple[int, int]]] = {}
    for row in range(values.shape[0]):
        for rank in range(values.shape[1]):
            winners.setdefault(int(images[row, rank]), []).append((row, rank))
    patches: list[list[Patch | None]] = [[None] * values.shape[1] for _ in channels]
    checked = False
    for index, picture in source.images(sorted(winners)):
        size = tuple(picture.shape[1:])
        for row, rank in winners[index]:
            y, x = (int(v) for v in positions[row, rank])
            rf = fields(size, (y, x))
            if not checked:  # the boxes of one layer share their size
                (y0, x0, y1, x1), n = rf.box, values.size
                check_size(n * picture.shape[0] * (y1 - y0) * (x1 - x0) * 5,
                           what=f"{n:,} crops of {y1 - y0} x {x1 - x0} pixels",
                           fix="ask for fewer channels (channels=...) or a smaller k")
                checked = True
            crop, clipped = cut(picture, rf)
            patches[row][rank] = Patch(channels[row], rank, float(values[row, rank]), index,
                                       source.names[index], (y, x), rf.box, rf.clipped_box,
                                       crop, clipped)
    return patches  # type: ignore[return-value]


def cut(image: np.ndarray, rf: ReceptiveField) -> tuple[np.ndarray, np.ndarray]:
    """``image`` under ``rf.box``, grey outside the image, and the mask of that outside part."""
    y0, x0, y1, x1 = rf.box
    cy0, cx0, cy1, cx1 = rf.clipped_box
    crop = np.full((image.shape[0], y1 - y0, x1 - x0), GREY, np.float32)
    clipped = np.ones((y1 - y0, x1 - x0), bool)
    if cy1 > cy0 and cx1 > cx0:
        inside = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
        crop[(slice(None), *inside)] = image[:, cy0:cy1, cx0:cx1]
        clipped[inside] = False
    return crop, clipped

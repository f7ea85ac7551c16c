"""Where the channel atlas reads feature maps from: a dataset (the network runs) or a store.

:func:`open_source` turns what a user passes (anything :func:`featuremap.open_collection`
reads, or a store that :func:`featuremap.extract_dataset` wrote) into a :class:`MapSource`,
which streams the maps of some layers one batch (or one store chunk) at a time, with the
images' pixels in ``[0, 1]`` and their masks when a caller needs them. Memory holds one batch,
however many images the source has.

- A dataset: images are decoded on a worker thread while the network runs (an
  :class:`~featuremap.extraction.Extractor` with reused buffers that stops after the last
  layer); image/mask pairs are fed at their own size (no resize or crop), so maps stay aligned
  with the masks, as a store of pairs does.
- A store: no network runs; its chunks are read one at a time; the layers must be stored
  unpooled (whole maps); images and masks are read again from the paths it records, with the
  preprocessing it records.

Example:
    >>> source = open_source(load_model("shapes"), "scenes", layers=["backbone.block2"])
    ...     # doctest: +SKIP
    >>> for piece in source.stream(images=True):  # doctest: +SKIP
    ...     piece.maps["backbone.block2"].shape, piece.images.shape
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featuremap.datasets import Item, Reader, batches, open_collection, read_mask
from featuremap.errors import ConfigError, printable
from featuremap.extraction import Extractor
from featuremap.model import Model, as_model
from featuremap.preprocess import Preprocess
from featuremap.store import Store
from featuremap.tasks.fromstore import StoreFeatures, as_store, use_store

__all__ = ["MapSource", "Piece", "open_source"]

Progress = Callable[[int, int], Any]


@dataclass
class Piece:
    """The maps of some images of a source, and what a caller asked for besides.

    Attributes:
        indices: ``(n,)`` positions of the images in the source, ascending.
        maps: by layer, ``(n, C, h, w)`` tensors (reused by the next piece of a dataset: use
            them before asking for the next).
        images: ``(n, C, H, W)`` float32 in ``[0, 1]`` (what the network saw, before its
            normalisation), or None when not asked for.
        masks: ``(n, H, W)`` label maps, or None when not asked for or there are none.
        size: ``(H, W)`` of the images (what the maps are upsampled to).
    """

    indices: np.ndarray
    maps: dict[str, torch.Tensor]
    images: np.ndarray | None = None
    masks: np.ndarray | None = None
    size: tuple[int, int] = (0, 0)


@dataclass
class MapSource:
    """A dataset or a store, ready to stream the maps of ``layers`` (from :func:`open_source`).

    Attributes:
        model: the model (None for a store read without one).
        model_name: the model's name (a store's own when no model is given).
        layers: the layers streamed, resolved.
        names: the display name of every image of the source, by index.
        paths: the image files, by index.
        masks: the mask files (image/mask pairs), by index, or None.
        classes: the class names of the masks (``classes.txt``), or of the class folders.
        preprocess: what an image goes through before the network's normalisation (resize,
            crop), to read an image again as the network saw it.
        description: the source as given, printable.
        skipped: ``{display name: reason}`` of the images that could not be read, filled as
            the stream runs (a store's failures from the start).
    """

    model: Model | None
    model_name: str
    layers: list[str]
    names: list[str]
    paths: list[str]
    masks: list[str | None] | None
    classes: tuple[str, ...] | None
    preprocess: Preprocess
    description: str
    batch_size: int = 32
    skipped: dict[str, str] = field(default_factory=dict)
    collection: Any = field(default=None, repr=False)
    features: StoreFeatures | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def has_masks(self) -> bool:
        return self.masks is not None and all(m is not None for m in self.masks)

    def nothing_read(self) -> ConfigError:
        """The error for a source of which no image could be read."""
        first = next(iter(self.skipped.items()), ("", "no images"))
        return ConfigError(f"none of the {len(self):,} images of '{self.description}' could be "
                           f"read (first: {first[0]}: {first[1]}).")

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as the network saw it: ``(C, H, W)`` float32 in ``[0, 1]``."""
        return self.preprocess.load(self.paths[index])

    def images(self, indices: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, image)`` of each of ``indices``, as :meth:`image` reads them, decoded on
        worker threads while the caller uses the previous ones.

        Raises:
            ConfigError: an image that cannot be read any more (moved or changed since).
        """
        items = [Item(Path(self.paths[i]), self.names[i]) for i in indices]
        with batches(items, load=Reader(self.preprocess.load), batch_size=16,
                     workers=2) as stream:
            for batch in stream:
                if batch.skipped:
                    gone = batch.skipped[0]
                    raise ConfigError(f"image '{gone.item.name}' cannot be read again "
                                      f"({gone.reason}): was it moved or changed since?")
                for group in batch.groups:
                    for at, image in zip(group.indices.tolist(), group.images):
                        yield indices[at], image

    def stream(self, *, images: bool = False, masks: bool = False,
               progress: Progress | None = None,
               kept: dict[int, dict[str, torch.Tensor]] | None = None) -> Iterator[Piece]:
        """The maps of every readable image, one piece at a time, in source order.

        Args:
            images: also give the images (``[0, 1]``, as the network saw them).
            masks: also give the masks (image/mask pairs only).
            progress: ``progress(images passed, images)`` after each piece.
            kept: a dataset's maps already computed, ``{image index: {layer: (C, h, w)}}``:
                the images are decoded but the network does not run (a store ignores it).
        """
        if masks and not self.has_masks:
            raise ConfigError(f"'{self.description}' has no masks: masks need image/mask pairs "
                              "(images/ and masks/ with one label map per image).")
        if self.features is not None:
            return self._store_pieces(images, masks, progress)
        return self._dataset_pieces(images, progress, kept)

    def _dataset_pieces(self, images: bool, progress: Progress | None,
                        kept: dict[int, dict[str, torch.Tensor]] | None = None
                        ) -> Iterator[Piece]:
        m = self.model
        extractor = None if kept is not None else Extractor(m, self.layers, reuse_buffers=True)
        pre = self.preprocess  # with images: raw pixels decoded, normalised here
        load = self.collection.reader(preprocess=pre.load if images else pre)
        with batches(self.collection, load=load, batch_size=self.batch_size,
                     progress=progress) as stream:
            for batch in stream:
                for skipped in batch.skipped:
                    self.skipped[skipped.item.name] = skipped.reason
                for group in batch.groups:
                    if extractor is None:
                        rows = group.indices.tolist()
                        maps = {name: torch.stack([kept[i][name] for i in rows])
                                for name in self.layers}
                    else:
                        pixels = torch.from_numpy(pre.normalise(group.images) if images
                                                  else group.images)
                        got = extractor.run(pixels)
                        maps = {name: _spatial(got.meta[name], got.maps[name])
                                for name in self.layers}
                    yield Piece(group.indices, maps, group.images if images else None,
                                group.masks, tuple(group.images.shape[2:]))

    def _store_pieces(self, images: bool, masks: bool, progress: Progress | None
                      ) -> Iterator[Piece]:
        classes = self.classes
        size = None  # every image of a store has one size
        for indices, maps in self.features.chunks(progress):
            pictures = None
            if images:
                read = dict(self.images(indices.tolist()))
                pictures = np.stack([read[i] for i in indices.tolist()])
            if size is None:
                size = tuple((pictures[0] if images else self.image(indices[0])).shape[1:])
            labels = None
            if masks:
                labels = np.stack([read_mask(self.masks[i], classes=classes) for i in indices])
            yield Piece(indices, maps, pictures, labels, size)


def _spatial(meta: Any, maps: torch.Tensor) -> torch.Tensor:
    if not meta.is_map:
        raise ConfigError(f"layer '{meta.name}' gives {meta.source_shape}, not feature maps "
                          f"(N, C, H, W): {meta.reason}; pick a layer with maps ('featuremap "
                          "layers MODEL' lists every layer's output shape).")
    return maps


def open_source(model: Any, source: Any, *, layers: Sequence[str] | str,
                batch_size: int = 32, need_model: bool = True) -> MapSource:
    """A dataset or a store as a :class:`MapSource` of ``layers``.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``; with a store, the
            model that made it (checked), or None when ``need_model`` is False.
        source: anything :func:`featuremap.open_collection` reads (a folder, class folders,
            image/mask pairs, a list, a glob), a store's folder, or a
            :class:`~featuremap.store.Store`.
        layers: layer names, globs or regexes of the model (with a store: layers it holds).
        batch_size: images per forward pass of a dataset (a store reads its own chunks).
        need_model: refuse ``model=None`` (a dataset always needs one).

    Raises:
        ConfigError: no model where one is needed, a store layer stored pooled, an incomplete
            store or one another model made, a source without images, bad ``batch_size``.
        UnknownNameError: an unknown layer (with a did-you-mean).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
    store = as_store(source)
    if store is not None:
        return _from_store(model, store, layers, need_model)
    if model is None:
        raise ConfigError("a dataset needs a model to compute its maps: pass one (model None "
                          "is for a store written by featuremap.extract_dataset).")
    m = as_model(model)
    names = m.resolve(layers)
    collection = open_collection(source, suffixes=None)
    pairs = collection.kind == "pairs"
    pre = m.preprocess
    if pairs:  # maps stay aligned with the masks: no resize, no crop (as a store of pairs)
        pre = Preprocess(resize=None, crop=None, mean=pre.mean, std=pre.std,
                         channels=pre.channels)
    items = collection.items
    return MapSource(m, m.name, names, [item.name for item in items],
                     [os.fspath(item.path) for item in items],
                     [os.fspath(item.mask) for item in items] if pairs else None,
                     collection.classes, pre, printable(os.fspath(collection.source)),
                     batch_size, collection=collection)


def _from_store(model: Any, store: Store, layers: Sequence[str] | str, need_model: bool
                ) -> MapSource:
    if model is None and need_model:
        raise ConfigError(f"a model is needed besides the store '{printable(store.path)}' "
                          "(to find each value's receptive field): pass the model that made it.")
    m = as_model(model) if model is not None else None
    requested = m.resolve(layers) if m is not None else layers
    features = use_store(m, store, requested)
    pooled = [k for k in features.layers if store.header.pool.get(k, "none") != "none"]
    if pooled:
        raise ConfigError(f"the store '{features.where}' holds layer '{printable(pooled[0])}' "
                          f"{store.header.pool[pooled[0]]}-pooled, but the atlas needs every "
                          "position of its maps: extract it with --pool none.")
    header = store.header
    pairs = header.kind == "pairs"
    masks = list(store.masks) if pairs else None
    classes = tuple(header.classes) if header.classes else None
    pre = {k: tuple(v) if isinstance(v, list) else v for k, v in header.preprocess.items()}
    source = MapSource(m, features.model_name, features.layers, list(store.images),
                       list(store.paths), masks, classes, Preprocess(**pre), features.where,
                       header.chunk, features=features)
    source.skipped.update({store.images[i]: reason for i, reason in store.failures.items()})
    return source

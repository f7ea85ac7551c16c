"""Fit a 1x1-convolution segmentation head on frozen feature maps of an image/mask folder.

The dataset streams: images and masks are decoded on a worker thread
(:func:`featuremap.datasets.batches`) while the backbone runs, each image's maps go once to a
temporary file on disk (:class:`featuremap.tasks.mapcache.MapCache`), and the epochs read them
back image by image. Memory stays flat however many images there are
(``benchmarks/bench_segfit.py`` measures it); the backbone runs once per image. From a store
that :func:`featuremap.extract_dataset` wrote, the backbone does not run at all: the stored maps
go to the same temporary file, one store chunk at a time, with the masks read from their files.

Example:
    >>> save_dataset("shapes_seg", 80, seed=1, layout="segmentation")  # doctest: +SKIP
    >>> result = fit_seg_head(load_model("shapes"), "shapes_seg",  # doctest: +SKIP
    ...                       layers=["backbone.block1", "backbone.block2"])
    >>> result = fit_seg_head(None, "shapes_seg.zarr")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from featuremap.datasets import Collection, batches, open_collection
from featuremap.datasets.masks import read_mask
from featuremap.errors import ConfigError, ImageError, printable
from featuremap.images import load_image
from featuremap.model import Model
from featuremap.store import Pooling, Store
from featuremap.tasks.fromstore import StoreFeatures, as_store, folder_model, use_store
from featuremap.tasks.mapcache import MapCache
from featuremap.tasks.seghead import SegHeadResult, head_logits
from featuremap.tasks.segmentation import native, native_pass

__all__ = ["check_fit", "fit_seg_head", "iou_scores"]

Progress = Callable[[int, int], None]


def check_fit(epochs: Any, test_fraction: Any, batch_size: Any, lr: Any) -> None:
    """Refuse bad fitting settings, all problems in one message."""
    problems = []
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= 10_000:
        problems.append(f"epochs must be an integer >= 1 (and at most 10,000), got {epochs!r}")
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        problems.append(f"test_fraction must be between 0 and 1 (exclusive), got {test_fraction!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not (
            1 <= batch_size <= 4096):
        problems.append(f"batch_size must be an integer >= 1 (and at most 4,096), got "
                        f"{batch_size!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        problems.append(f"lr must be a positive number, got {lr!r}")
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def _extract(m: Model, layers: list[str], collection: Collection, batch_size: int, void: int,
             cache: MapCache, tick: Callable[[int], None], notes: list[str]
             ) -> tuple[list[str], int]:
    """Pass 1: every readable pair's maps and mask into ``cache``, in collection order.

    Returns ``(skipped names, largest label that is not void)``; ``notes`` get what was done to
    the images.
    """
    reader = collection.reader(preprocess=native(m.preprocess),
                               ignore_index=None if void < 0 else void)
    engine = m.capture(layers)
    top = -1
    stream = batches(collection, load=reader, batch_size=batch_size,
                     progress=lambda done, _total: tick(done))
    with stream:
        for batch in stream:
            by_index: dict[int, tuple[list[torch.Tensor], np.ndarray]] = {}
            for group in batch.groups:
                got = native_pass(m, engine, torch.from_numpy(group.images).to(m.device), notes)
                maps = [got.map(n).float().cpu() for n in layers]
                for k, index in enumerate(group.indices):
                    by_index[int(index)] = ([t[k] for t in maps], group.masks[k])
            for index in sorted(by_index):
                top = max(top, _add(cache, *by_index[index], void, len(collection)))
    return [s.item.name for s in stream.skipped], top


def _add(cache: MapCache, maps: Sequence[torch.Tensor], mask: np.ndarray, void: int,
         n_images: int) -> int:
    """Append one image's maps and mask to ``cache`` (the first one checks that ``n_images``
    fit on the disk); returns its largest label that is not void (-1: none)."""
    if not len(cache):
        per_image = sum(t.numel() * 4 for t in maps) + mask.size * 4
        cache.check_space(per_image * n_images)
    cache.add(maps, mask)
    kept = mask[mask != void]
    return int(kept.max()) if kept.size else -1


def _store_source(model: Any, store: Store, layers: str | Sequence[str] | None,
                  notes: list[str]) -> StoreFeatures:
    """Check that a store can feed a head: masks, and maps (a grid pool is noted)."""
    source = use_store(model, store, layers)
    header = store.header
    if header.kind != "pairs" or any(store.masks[i] is None for i in source.done):
        raise ConfigError(f"the store '{source.where}' has no masks (it was extracted from "
                          f"'{printable(header.source)}', not from images/ and masks/): fit-seg "
                          "needs a store of image/mask pairs.")
    pools = {k: Pooling.parse(header.pool.get(k, "none")) for k in source.layers}
    flat = [k for k in source.layers if len(header.shapes[k]) != 3]
    for name, pool in pools.items():
        if pool.kind != "none" and pool.grid is None:
            raise ConfigError(f"the store '{source.where}' holds layer '{printable(name)}' "
                              f"pooled to one value per channel (pool {pool}): a segmentation "
                              "head needs maps; extract with --pool none (or a grid, e.g. avg8).")
    if flat:
        raise ConfigError(f"layer '{printable(flat[0])}' is stored as one vector per image "
                          f"{tuple(header.shapes[flat[0]])}, not as feature maps (C, H, W): pick "
                          "layers with maps.")
    for name, pool in pools.items():
        if pool.grid is not None:
            notes.append(f"the store holds layer '{name}' {pool}-pooled ({pool.grid} x "
                         f"{pool.grid} per channel): the head reads it upsampled to the masks, "
                         "coarser than the network's own maps")
    return source


def _read_store(source: StoreFeatures, void: int, cache: MapCache, tick: Callable[[int], None]
                ) -> tuple[list[str], int]:
    """As :func:`_extract`, from a store: its maps (chunk by chunk) and the masks from their
    files. The extraction's failures and unreadable masks are skipped."""
    store = source.store
    skipped = {i: store.images[i] for i in source.skipped()}
    size = _image_size(store.paths[int(source.done[0])])
    top = -1
    for indices, maps in source.chunks(lambda done, _total: tick(done)):
        for k, index in enumerate(indices.tolist()):
            try:
                mask = read_mask(store.masks[index], size=size, classes=store.classes,
                                 ignore_index=None if void < 0 else void)
            except (ImageError, OSError):
                skipped[index] = store.images[index]
                continue
            size = size or mask.shape
            top = max(top, _add(cache, [maps[n][k] for n in source.layers], mask, void,
                                len(source.done)))
    return [skipped[i] for i in sorted(skipped)], top


def _image_size(path: str) -> tuple[int, int] | None:
    """``(H, W)`` of a stored image (all of a pair store's images share it), None when its file
    is gone (then the first mask read sets the size the others must have)."""
    try:
        return tuple(load_image(path).shape[1:])  # type: ignore[return-value]
    except (ImageError, OSError):
        return None


def _items(cache: MapCache, indices: Sequence[int]
           ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
    """Stack cached images of equal size: ``(maps per layer (n, C, h, w), masks (n, H, W))``."""
    groups: dict[tuple[int, ...], list[tuple[list[torch.Tensor], torch.Tensor]]] = {}
    for i in indices:
        maps, mask = cache.get(i)
        groups.setdefault(tuple(mask.shape), []).append((maps, mask))
    for group in groups.values():
        maps = [torch.cat([g[0][j] for g in group]) for j in range(len(group[0][0]))]
        yield maps, torch.stack([g[1] for g in group])


def _standardiser(cache: MapCache, train: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the training maps (concatenated over layers), streamed."""
    sums = squares = None
    counts: list[int] = []
    for i in train:
        maps, _ = cache.get(i)
        if sums is None:
            sums = [torch.zeros(t.shape[1], dtype=torch.float64) for t in maps]
            squares = [torch.zeros_like(v) for v in sums]
            counts = [0] * len(maps)
        for j, t in enumerate(maps):
            flat = t.transpose(0, 1).reshape(t.shape[1], -1).double()
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


def _train_head(cache: MapCache, train: Sequence[int], k: int, *, epochs: int, lr: float,
                seed: int, batch_size: int, tick: Callable[[int], None], void: int = -1
                ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Fit ``nn.Conv2d(C_total, K, 1)`` with Adam on standardised maps; return it on raw maps.

    The loss is the cross-entropy over all pixels of a batch of images (each pixel counts once)
    but those labelled ``void``.
    """
    mean, std = _standardiser(cache, train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        head = nn.Conv2d(mean.numel(), k, 1)
    g = torch.Generator().manual_seed(int(seed))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    history: list[float] = []
    labelled = 0
    for epoch in range(epochs):
        order = torch.randperm(len(train), generator=g).tolist()
        total = 0.0
        for start in range(0, len(order), batch_size):
            chosen = [train[i] for i in order[start:start + batch_size]]
            parts = list(_items(cache, chosen))
            count = max(1, sum(int((masks != void).sum()) for _, masks in parts))
            if epoch == 0:
                labelled += sum(int((masks != void).sum()) for _, masks in parts)
            opt.zero_grad(set_to_none=True)
            for maps, masks in parts:
                logits = head_logits(*_unstandardise(head, mean, std), maps, masks.shape[-2:])
                loss = F.cross_entropy(logits, masks, reduction="sum", ignore_index=void) / count
                loss.backward()
                total += float(loss.detach()) * count
            opt.step()
        history.append(total / max(1, labelled))
        tick(epoch + 1)
    with torch.no_grad():
        weight, bias = _unstandardise(head, mean, std)
    return weight.detach().clone(), bias.detach().clone(), history


def _evaluate(weight: torch.Tensor, bias: torch.Tensor, cache: MapCache, test: Sequence[int],
              k: int, void: int = -1) -> tuple[np.ndarray, int]:
    """``(K, K)`` confusion matrix (rows truth, columns prediction) summed over ``test``, pixels
    labelled ``void`` left out; and the void pixels seen."""
    confusion = torch.zeros(k * k, dtype=torch.long)
    ignored = 0
    with torch.no_grad():
        for start in range(0, len(test), 64):
            for maps, masks in _items(cache, test[start:start + 64]):
                pred = head_logits(weight, bias, maps, masks.shape[-2:]).argmax(1)
                keep = masks != void
                ignored += int((~keep).sum())
                confusion += torch.bincount((masks * k + pred)[keep], minlength=k * k)
    return confusion.view(k, k).numpy(), ignored


def iou_scores(confusion: np.ndarray, names: Sequence[str]
               ) -> tuple[dict[str, float], float, float]:
    """(per-class IoU, mIoU, pixel accuracy); classes without truth pixels are NaN, not counted."""
    inter = np.diag(confusion).astype(np.float64)
    truth, predicted = confusion.sum(1), confusion.sum(0)
    union = truth + predicted - inter
    iou = np.where(truth > 0, inter / np.maximum(union, 1), np.nan)
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    accuracy = float(inter.sum() / max(1, confusion.sum()))
    return {n: float(v) for n, v in zip(names, iou)}, miou, accuracy


def _split(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) indices of a seeded shuffle; at least one image in each."""
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    order = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(order[n_test:]), sorted(order[:n_test])


def _void_pixels(cache: MapCache, indices: Sequence[int], void: int) -> int:
    return sum(int((cache.get(i)[1] == void).sum()) for i in indices) if void >= 0 else 0


def fit_seg_head(
    model: Any,
    data_dir: str | os.PathLike[str] | Store,
    *,
    layers: str | Sequence[str] | None = None,
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
    the model expects; a network that runs only at its input size (a vision transformer) gets
    them resized, whole, to it, and its maps are upsampled to the masks alike. All layers come
    from one forward pass per batch of ``batch_size`` images, once: the maps are kept at their
    own resolution on disk, and the head (one ``nn.Conv2d(C_total, K, 1)`` over the maps
    upsampled to the mask size, bilinear, concatenated) is trained on them with Adam and
    cross-entropy over pixels, on standardised channels (folded back into the head at the end). A
    seeded shuffle of the readable pairs holds out ``test_fraction`` of them; the scores come
    from one confusion matrix summed over the held-out pixels. A class without pixels in the
    held-out masks gets IoU NaN and is left out of the mIoU. Deterministic for a seed.

    ``data_dir`` may instead be a store (its folder, or a :class:`~featuremap.store.Store`)
    that :func:`featuremap.extract_dataset` wrote from such a folder: then no forward pass runs;
    the stored maps (``pool="none"``; a grid such as ``"avg8"`` is used too, upsampled like any
    map, with a note; ``"avg"``/``"max"`` vectors are refused) are read one chunk at a time and
    the masks from the files the store names. The extraction's failures are in ``skipped``; an
    incomplete store is refused. With ``pool="none"`` and float32 the result equals the one on
    the folder (exactly, when the store was extracted with the same batch size).

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``; with a store,
            None (the stored maps as they are) or the model that made it (checked: its name,
            weights digest and preprocessing).
        data_dir: the folder with ``images/`` and ``masks/``, or a store.
        layers: layer names, globs or regexes whose outputs are feature maps; with a store,
            among its layers (default: all of them).
        epochs: passes over the training images.
        seed: seeds the split, the head's initialisation and the shuffles.
        test_fraction: share of the images held out (at least one image each side).
        batch_size: images per forward pass (none with a store) and per optimiser step.
        lr: Adam's learning rate.
        ignore_index: the label of pixels to leave out (``None``: every label is a class).
        progress: called as ``progress(done, total)`` after each batch of images read (``done``
            counts images) and after each epoch (``total`` = images + epochs).

    Returns:
        A :class:`~featuremap.tasks.seghead.SegHeadResult` (scores, counts, the head;
        ``.save(path)``, ``.predict``).

    Raises:
        ConfigError: no ``images/`` or ``masks/`` folder, an image without its mask or a mask
            without its image (the first 3 named), a mask whose size differs from its image's,
            a colour (RGB) mask, labels beyond ``classes.txt``, fewer than 2 readable pairs, bad
            settings, layers that are not feature maps, maps that would not fit on the disk; for
            a store: one without masks, pooled to vectors, incomplete, or made with another
            model than ``model``.
        UnknownNameError: an unknown layer (for a store: one it does not hold).
    """
    check_fit(epochs, test_fraction, batch_size, lr)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(
            ignore_index, int) or ignore_index < 0):
        raise ConfigError(f"ignore_index must be a label >= 0 or None, got {ignore_index!r}.")
    void = -1 if ignore_index is None else int(ignore_index)
    notes: list[str] = []
    store = as_store(data_dir)
    if store is None:
        root = Path(data_dir).expanduser()
        m = folder_model(model, layers)
        names = m.resolve(layers)
        collection = open_collection(root, kind="pairs")
        n_items, classes, where, model_name = len(collection), collection.classes, root, m.name

        def fill(cache: MapCache, tick: Callable[[int], None]) -> tuple[list[str], int]:
            return _extract(m, names, collection, batch_size, void, cache, tick, notes)
    else:
        source = _store_source(model, store, layers, notes)
        names, n_items, where, model_name = (source.layers, len(store), store.path,
                                             source.model_name)
        classes = store.classes

        def fill(cache: MapCache, tick: Callable[[int], None]) -> tuple[list[str], int]:
            return _read_store(source, void, cache, tick)
    total = n_items + epochs

    def tick(done: int) -> None:
        if progress is not None:
            progress(done, total)

    with MapCache() as cache:
        skipped, top = fill(cache, tick)
        if len(cache) < 2:
            raise ConfigError(f"{len(cache)} readable image/mask pair(s) in '{printable(where)}' "
                              f"({len(skipped)} unreadable skipped): fitting and testing need "
                              "at least 2.")
        if top < 0:
            raise ConfigError(f"every mask pixel in '{printable(where)}' is labelled {void} "
                              "(ignore_index): nothing to learn from.")
        labels = list(classes) if classes else [f"class {i}" for i in range(top + 1)]
        train, test = _split(len(cache), float(test_fraction), seed)
        weight, bias, history = _train_head(
            cache, train, len(labels), epochs=epochs, lr=float(lr), seed=seed,
            batch_size=batch_size, tick=lambda e: tick(n_items + e), void=void)
        confusion, ignored_test = _evaluate(weight, bias, cache, test, len(labels), void)
        ignored = ignored_test + _void_pixels(cache, train, void)
        channels = [t.shape[1] for t in cache.get(0)[0]]
    iou, miou, accuracy = iou_scores(confusion, labels)
    return SegHeadResult(
        weight, bias, labels, names, channels, model_name, iou, miou, accuracy, confusion,
        len(train), len(test), skipped, {n: int(c) for n, c in zip(labels, confusion.sum(1))},
        history, int(seed), epochs, float(lr), ignore_index=None if void < 0 else void,
        ignored_pixels=ignored, notes=notes)

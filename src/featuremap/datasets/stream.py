"""Stream a collection in batches, decoding on worker threads while the caller computes."""


from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from featuremap.datasets.collection import Collection, Item
from featuremap.datasets.masks import Reader
from featuremap.errors import ConfigError, ImageError, printable

# ------------------------------------------------------------------------------ batches


@dataclass(frozen=True)
class Skipped:
    """An item that could not be read.

    Attributes:
        index: its position in the collection.
        item: the item.
        reason: the error's message, control characters escaped.
    """

    index: int
    item: Item
    reason: str

    def __str__(self) -> str:
        return f"{self.item.name}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """``{"index", "path", "name", "reason"}``."""
        return {"index": self.index, "path": os.fspath(self.item.path), "name": self.item.name,
                "reason": self.reason}


@dataclass(frozen=True)
class Group:
    """Items of one batch whose arrays have one shape, stacked.

    Attributes:
        images: ``(n, C, H, W)`` as the loader returned them (float32 for the default one).
        masks: ``(n, H, W)`` label maps, or None when the items have none.
        labels: ``(n,)`` int64 labels, or None when the items have none.
        indices: ``(n,)`` positions of the items in the collection (ascending).
        positions: ``(n,)`` positions of the items in their batch (into ``Batch.items``):
            ``out[group.positions] = f(group.images)`` puts results back in batch order.
    """

    images: np.ndarray
    masks: np.ndarray | None
    labels: np.ndarray | None
    indices: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class Batch:
    """One batch of a :class:`BatchStream`: the items ``start .. stop - 1`` of the collection.

    Attributes:
        number: 0 for the first batch.
        start, stop: the range of collection positions it covers (read or skipped).
        indices: ``(n,)`` positions of the items read, ascending.
        items: the items read, in that order.
        groups: the items read, stacked by shape (in order of first appearance); a batch of
            images of one size has one group.
        skipped: the items of the range that could not be read, with reasons.
        labels: ``(n,)`` int64 labels of the items read, in batch order, or None.

    A batch may hold no image at all (every file of its range skipped).
    """

    number: int
    start: int
    stop: int
    indices: np.ndarray
    items: tuple[Item, ...]
    groups: tuple[Group, ...]
    skipped: tuple[Skipped, ...]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The image shape ``(C, H, W)`` of each group."""
        return [tuple(g.images.shape[1:]) for g in self.groups]


def batches(
    collection: Sequence[Item],
    *,
    load: Callable[[Item], Any] | None = None,
    batch_size: int = 32,
    prefetch: int = 2,
    workers: int = 1,
    skip: tuple[type[BaseException], ...] = (ImageError, OSError),
    progress: Callable[[int, int], Any] | None = None,
) -> BatchStream:
    """Stream a collection in batches, decoding on a worker thread while the caller computes.

    Batches cover ``batch_size`` consecutive items each, in collection order. A worker thread
    (or ``workers`` threads) calls ``load(item)`` on each item; an exception of a type in
    ``skip`` skips that item (named in ``batch.skipped`` with its reason), any other exception
    stops the stream and is raised to the caller at the batch it belongs to. At most
    ``prefetch`` batches are decoded ahead of the one the caller holds, so memory stays bounded
    by ``prefetch + 1`` batches. Images of different sizes are stacked per shape
    (``batch.groups``), each group keeping its items' positions.

    Closing is automatic when the stream is exhausted, when the loop that consumes it ends
    early (``break``, an exception, ``KeyboardInterrupt``: the stream is closed as soon as
    nothing refers to it), and explicit with ``close()`` or ``with``; the worker threads
    stop and are joined (a decode under way finishes first).

    Args:
        collection: a :class:`Collection` or any sequence of :class:`Item`.
        load: ``load(item) -> image (C, H, W)`` or ``(image, mask (H, W) or None)``; default
            ``collection.reader()`` (RGB in ``[0, 1]``; pairs with their masks checked).
        batch_size: items per batch (>= 1).
        prefetch: batches decoded ahead (>= 0; 0 decodes a batch only when asked for it).
        workers: threads decoding the items of a batch in parallel (>= 1).
        skip: the exception types that mean "this file is unreadable".
        progress: called as ``progress(done, total)`` (items) as each batch is handed out.

    Returns:
        A :class:`BatchStream`: iterate it for :class:`Batch` objects; it counts ``done``,
        ``total``, ``n_read`` and ``skipped``.

    Raises:
        ConfigError: bad options; from the iteration, a ``load`` that returns something other
            than arrays, and whatever ``load`` raises outside ``skip``.

    Example:
        >>> data = open_collection("shapes_data", kind="classes", min_classes=2)  # doctest: +SKIP
        >>> load = data.reader(preprocess=model.preprocess)  # doctest: +SKIP
        >>> with batches(data, load=load, batch_size=32) as stream:  # doctest: +SKIP
        ...     for batch in stream:
        ...         for group in batch.groups:
        ...             features = run(group.images)  # (n, C, H, W), labels group.labels
        >>> [str(s) for s in stream.skipped]  # doctest: +SKIP
        ["circle/broken.png: Image file '...' is not an image Pillow can read ..."]
    """
    for name, value, low in (("batch_size", batch_size, 1), ("prefetch", prefetch, 0),
                             ("workers", workers, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")
    if load is None:
        load = collection.reader() if isinstance(collection, Collection) else Reader()
    elif not callable(load):
        raise ConfigError(f"load must be a function load(item) -> image array, got "
                          f"{type(load).__name__}.")
    return BatchStream(tuple(collection), load, batch_size=batch_size, prefetch=prefetch,
                       workers=workers, skip=tuple(skip), progress=progress)


class BatchStream:
    """An iterator of :class:`Batch` objects, decoded ahead on worker threads.

    Made by :func:`batches`. Attributes the caller can read at any time (they count what was
    handed out): ``done`` (items covered), ``total`` (items in all), ``n_read`` (items read),
    ``skipped`` (a list of :class:`Skipped`), ``n_batches``.
    """

    def __init__(self, items: tuple[Item, ...], load: Callable[[Item], Any], *, batch_size: int,
                 prefetch: int, workers: int, skip: tuple[type[BaseException], ...],
                 progress: Callable[[int, int], Any] | None) -> None:
        self.total = len(items)
        self.n_batches = -(-len(items) // batch_size)
        self.done = 0
        self.n_read = 0
        self.skipped: list[Skipped] = []
        self._progress = progress
        self._finished = False
        self._pipeline = _Pipeline(items, load, batch_size, prefetch, workers, skip)
        # the finaliser refers to the pipeline only, so dropping the stream closes it
        self._close = weakref.finalize(self, self._pipeline.close)
        self._pipeline.thread.start()

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        if self._finished:
            raise StopIteration
        outcome = self._pipeline.next()
        if outcome is _END or isinstance(outcome, _Failure):
            self.close()
            if outcome is _END:
                raise StopIteration
            raise outcome.error
        self.done = outcome.stop
        self.n_read += len(outcome)
        self.skipped.extend(outcome.skipped)
        if self._progress is not None:
            self._progress(self.done, self.total)
        return outcome

    def close(self) -> None:
        """Stop the worker threads and wait for them; later ``next()`` calls end the stream."""
        self._finished = True
        self._close()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<BatchStream {self.done}/{self.total} items, {self.n_read} read, "
                f"{len(self.skipped)} skipped>")


_END = object()


class _Failure:
    """An exception raised on the worker thread, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Pipeline:
    """The worker side: permits bound how far it runs ahead; a queue carries the batches.

    The producer takes one permit per batch it starts; the consumer gives one each time it
    asks for a batch. Starting with ``prefetch`` permits, batches started minus batches handed
    out never exceed ``prefetch``.
    """

    def __init__(self, items: tuple[Item, ...], load: Callable[[Item], Any], batch_size: int,
                 prefetch: int, workers: int, skip: tuple[type[BaseException], ...]) -> None:
        self.items, self.load, self.skip = items, load, skip
        self.batch_size, self.workers = batch_size, workers
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.permits = threading.Semaphore(prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="featuremap-batches", daemon=True)

    def next(self) -> Any:
        self.permits.release()
        return self.queue.get()

    def close(self) -> None:
        self.stop.set()
        self.permits.release()  # wake a producer waiting for a permit
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join()

    def run(self) -> None:
        pool = (ThreadPoolExecutor(self.workers, thread_name_prefix="featuremap-decode")
                if self.workers > 1 else None)
        try:
            for number, start in enumerate(range(0, len(self.items), self.batch_size)):
                self.permits.acquire()
                if self.stop.is_set():
                    return
                batch = self.batch(number, start, min(start + self.batch_size, len(self.items)),
                                   pool)
                if batch is None:
                    return
                self.queue.put(batch)
            self.queue.put(_END)
        except BaseException as error:  # carried to the consumer, which raises it
            self.queue.put(_Failure(error))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def batch(self, number: int, start: int, stop: int, pool: ThreadPoolExecutor | None
              ) -> Batch | None:
        """Read the items ``start .. stop - 1``; None if the stream was closed meanwhile."""
        indices = range(start, stop)
        outcomes = pool.map(self.read, indices) if pool is not None else map(self.read, indices)
        read: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        skipped: list[Skipped] = []
        for index, outcome in zip(indices, outcomes):
            if outcome is None:
                return None
            if isinstance(outcome, Skipped):
                skipped.append(outcome)
            else:
                read.append((index, *outcome))
        return _assemble(number, start, stop, self.items, read, skipped)

    def read(self, index: int) -> Skipped | tuple[np.ndarray, np.ndarray | None] | None:
        if self.stop.is_set():
            return None
        item = self.items[index]
        try:
            loaded = self.load(item)
        except self.skip as error:
            return Skipped(index, item, printable(str(error) or type(error).__name__))
        return _arrays(loaded, item)


def _arrays(loaded: Any, item: Item) -> tuple[np.ndarray, np.ndarray | None]:
    """Check what ``load`` returned: an image (C, H, W), or (image, mask (H, W) or None)."""
    image, mask = loaded if isinstance(loaded, tuple) and len(loaded) == 2 else (loaded, None)
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        found = (f"an array of shape {image.shape}" if isinstance(image, np.ndarray)
                 else type(image).__name__)
        raise ConfigError(f"load(item) must return an image array (C, H, W) or (image, mask); "
                          f"got {found} for '{item.name}'.")
    if mask is not None and (not isinstance(mask, np.ndarray) or mask.ndim != 2):
        found = (f"an array of shape {mask.shape}" if isinstance(mask, np.ndarray)
                 else type(mask).__name__)
        raise ConfigError(f"load(item) returned a mask that is not (H, W) for '{item.name}': "
                          f"{found}.")
    return image, mask


def _assemble(number: int, start: int, stop: int, items: tuple[Item, ...],
              read: list[tuple[int, np.ndarray, np.ndarray | None]], skipped: list[Skipped]
              ) -> Batch:
    """Stack the arrays read by shape into groups, keeping every item's positions."""
    by_shape: dict[tuple[Any, ...], list[int]] = {}
    for position, (_, image, mask) in enumerate(read):
        key = (image.shape, None if mask is None else mask.shape)
        by_shape.setdefault(key, []).append(position)
    labels = [items[index].label for index, _, _ in read]
    labelled = bool(read) and all(label is not None for label in labels)
    groups = []
    for positions in by_shape.values():
        members = [read[p] for p in positions]
        groups.append(Group(
            images=np.stack([image for _, image, _ in members]),
            masks=None if members[0][2] is None else np.stack([mask for _, _, mask in members]),
            labels=np.array([labels[p] for p in positions], np.int64) if labelled else None,
            indices=np.array([index for index, _, _ in members], np.int64),
            positions=np.array(positions, np.int64)))
    return Batch(number, start, stop, np.array([index for index, _, _ in read], np.int64),
                 tuple(items[index] for index, _, _ in read), tuple(groups), tuple(skipped),
                 np.array(labels, np.int64) if labelled else None)


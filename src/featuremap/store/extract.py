"""Extract the feature maps of a whole dataset into a resumable store.

:func:`extract_dataset` overlaps three things: decoding (worker threads of
:func:`featuremap.datasets.batches`), the forward pass (this thread: one pass per chunk that stops
after the last requested layer), and writing (a writer thread: compression and file writes).
Memory stays bounded by a few chunks however large the dataset. Each finished chunk is recorded;
the same call after any interruption computes only the chunks without a record.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from featuremap.datasets import batches
from featuremap.datasets.collection import count_text
from featuremap.errors import ConfigError, printable
from featuremap.extraction import Extractor
from featuremap.store.compute import compute_chunk
from featuremap.store.manifest import DONE, MANIFEST, read_records
from featuremap.store.plan import DryRun, Plan, Progress, free_space, plan, time_images
from featuremap.store.writer import Opened, StoreError, StoreWriter, disk_error

ENGINES = ("local", "ray")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during an extraction: what is stored stays valid; the message says how much."""


@dataclass
class ExtractResult:
    """What an extraction did.

    Attributes:
        path: the store; layers: the layers stored with their shapes per image.
        n_images: images in the store; done, failed: images stored / recorded as failed in
            this run; already: images found done before the run started (resumed).
        failures: ``{display name: reason}`` of the failures of this run.
        seconds: wall time of the run; engine: ``"local"`` or ``"ray"``.
        notes: plain sentences (the batch size of an existing store, for instance).
    """

    path: Path
    layers: dict[str, tuple[int, ...]]
    n_images: int
    done: int
    failed: int
    already: int
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    engine: str = "local"
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        n = self.done + self.failed
        return n / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        lines = [f"stored {printable(self.path)}: {count_text(self.n_images, 'image', 'images')}, "
                 f"{len(self.layers)} layer(s) ({self.engine} engine)"]
        lines += [f"  {printable(k)}: {' x '.join(str(s) for s in v)} per image"
                  for k, v in self.layers.items()]
        lines.append(f"done {self.done:,}, failed {self.failed:,}, skipped as done "
                     f"{self.already:,} in {self.seconds:.1f} s"
                     + (f" ({self.images_per_second:,.1f} images/s)" if self.done else ""))
        shown = list(self.failures.items())[:10]
        lines += [f"  failed: {printable(name)}: {printable(reason)}" for name, reason in shown]
        if len(self.failures) > len(shown):
            lines.append(f"  ... and {len(self.failures) - len(shown)} more (see the manifest)")
        lines += [f"note: {printable(n)}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"path": os.fspath(self.path),
                "layers": {k: list(v) for k, v in self.layers.items()},
                "n_images": self.n_images, "done": self.done, "failed": self.failed,
                "already": self.already, "failures": dict(self.failures),
                "seconds": self.seconds, "images_per_second": self.images_per_second,
                "engine": self.engine, "notes": list(self.notes)}


def extract_dataset(
    model: Any,
    source: Any,
    *,
    layers: Any,
    out: str | os.PathLike[str],
    pool: Any = "none",
    dtype: str = "float32",
    batch_size: int = 32,
    workers: int = 1,
    device: str | torch.device | None = None,
    compression: str = "zstd",
    kind: str = "auto",
    overwrite: bool = False,
    dry_run: bool = False,
    engine: str = "local",
    address: str | None = None,
    actors: int = 1,
    progress: Progress | None = None,
) -> ExtractResult | DryRun:
    """Feature maps of every image of a dataset, into a resumable Zarr store.

    The same call after an interruption (Ctrl-C, a crash, a killed process, a full disk)
    continues where the store stops: finished chunks are kept, the others are computed again,
    and the store ends equal to one written in one go. A store made with another model, weights,
    layers, pooling, dtype, batch size, compression or preprocessing, or from other images, is
    refused with what differs (``overwrite=True`` replaces it).

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        source: what :func:`featuremap.open_collection` reads (a folder, class folders,
            images/ + masks/, a list of paths, a glob) or a collection.
        layers: layer names, globs or regexes.
        out: the store's folder (created; its parent must exist).
        pool: ``"none"`` (maps ``(N, C, H, W)``), ``"avg"``/``"max"`` (``(N, C)``), or
            ``"avgN"``/``"maxN"`` (``(N, C, N, N)``): one rule for every layer, or per layer
            as ``"layer4=avg,layer2=none"`` or a dict (layers not named: ``"none"``).
        dtype: ``"float32"`` or ``"float16"`` (values beyond float16's range are refused).
        batch_size: images per forward pass and per chunk of the store.
        workers: threads decoding images.
        device: where the model runs (default: where it is).
        compression: ``"zstd"`` (default), ``"lz4"`` or ``"none"``.
        kind: how to read ``source`` (see :func:`featuremap.open_collection`).
        overwrite: replace an existing store made another way.
        dry_run: compute nothing: return a :class:`~featuremap.store.plan.DryRun` (bytes per
            image and layer, the total, the free space, the time of a short timed run).
        engine: ``"local"`` (this process) or ``"ray"`` (Ray Data, see
            :mod:`featuremap.store.distributed`).
        address: the Ray cluster to join (default: a local Ray).
        actors: Ray actors, each holding the model once.
        progress: ``progress(done, total)`` in images, as chunks are stored (with ``dry_run``,
            as the timed run's batches are computed).

    Returns:
        An :class:`ExtractResult` (a :class:`DryRun` with ``dry_run``).

    Raises:
        ConfigError: bad settings, an existing store made another way, a run that does not
            fit on the disk (checked before it starts).
        StoreError: the disk filled up or refused a write mid-run (what was stored stays valid;
            the same call resumes).
        Interrupted: Ctrl-C (a KeyboardInterrupt saying how many images are stored).

    Example:
        >>> r = extract_dataset(load_model("resnet18"), "photos", layers="layer4",
        ...                     pool="avg", out="photos.zarr")  # doctest: +SKIP
        >>> open_store("photos.zarr").to_numpy("layer4").shape  # doctest: +SKIP
        (1000, 512)
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}.")
    if device is not None:
        from featuremap.model import as_model

        model = as_model(model).to(device)
    if engine == "ray" and not dry_run:
        from featuremap.store.distributed import check_ray

        check_ray(address, actors)
    p = plan(model, source, layers=layers, out=out, pool=pool, dtype=dtype,
             batch_size=batch_size, workers=workers, compression=compression, kind=kind,
             reuse=not overwrite)
    finished = _finished(p, overwrite)
    if dry_run:
        return _dry_run(p, finished, progress)
    pending = _pending_images(p, finished)
    _check_free(p, pending)
    if engine == "ray":
        from featuremap.store.distributed import ray_running, run_ray

        with ray_running(address, actors, needed=pending > 0):  # before the store is touched
            opened = StoreWriter.open(p.out, p.header, p.items, overwrite=overwrite,
                                      finished=finished)
            return run_ray(p, opened, address=address, actors=actors, progress=progress)
    opened = StoreWriter.open(p.out, p.header, p.items, overwrite=overwrite,
                              finished=finished)
    return run_local(p, opened, progress=progress)


def _finished(p: Plan, overwrite: bool) -> dict[int, dict[str, str]] | None:
    """The records of the store at ``p.out`` (:func:`read_records`), read once per run: they
    count the pending images and are handed to :meth:`StoreWriter.open`. None where no store
    is resumed (none there yet, or ``overwrite`` replaces it)."""
    if overwrite or not (p.out / MANIFEST).is_file():
        return None
    return read_records(p.out)


def _pending_images(p: Plan, finished: Mapping[int, Any] | None) -> int:
    """Images still to compute: those of the chunks without a record (all for a new store)."""
    if finished is None:
        return len(p.collection)
    n, chunk = len(p.collection), p.batch_size
    return sum(min(s + chunk, n) - s for s in range(0, n, chunk) if s not in finished)


def _check_free(p: Plan, pending: int) -> None:
    need = sum(p.bytes_per_image.values()) * pending
    free = free_space(p.out)
    if need > free:
        from featuremap.budget import format_bytes

        raise ConfigError(
            f"the store would not fit: {pending:,} images x {sum(p.bytes_per_image.values()):,} "
            f"bytes = {format_bytes(need)} (before compression), {format_bytes(free)} free at "
            f"'{printable(p.out)}'; free space, pool the maps (--pool avg) or store float16.")


def _dry_run(p: Plan, finished: Mapping[int, Any] | None, progress: Progress | None
             ) -> DryRun:
    pending = _pending_images(p, finished)
    seconds, timed = time_images(p, min(len(p.collection), 2 * p.batch_size),
                                 progress=progress)
    return DryRun(p, pending, seconds, timed, free_space(p.out))


# ------------------------------------------------------------------------------- the work


class _Writer(threading.Thread):
    """Writes chunks handed over by the compute thread, at most ``depth`` waiting."""

    def __init__(self, store: StoreWriter, depth: int = 2) -> None:
        super().__init__(name="featuremap-store-writer", daemon=True)
        self.store = store
        self.jobs: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.written = 0
        self.failed = 0
        self.failures: dict[int, str] = {}

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if self.error is not None:
                continue  # drain: nothing more is written after a failure
            start, maps, status, failed = job
            try:
                self.store.write_chunk(start, maps, status, failed)
            except BaseException as error:  # carried to the compute thread
                self.error = error
                continue
            self.written += int((status == DONE).sum())
            self.failed += len(failed)
            self.failures.update(failed)

    def put(self, job: Any) -> None:
        while True:
            if self.error is not None:
                raise self.error
            try:
                self.jobs.put(job, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.jobs.put(None)
        self.join()


def run_local(p: Plan, opened: Opened, *, progress: Progress | None = None) -> ExtractResult:
    """The local engine: decode on worker threads, compute here, write on a writer thread."""
    store = opened.writer
    chunks = store.pending_chunks(opened.finished)
    already = p.header.n_images - sum(stop - start for start, stop in chunks)
    # absolute paths, as the Ray engine reads them: failures name the same images
    items = [item for start, stop in chunks for item in p.items[start:stop]]
    extractor = Extractor(p.model, p.layers, reuse_buffers=True)
    writer = _Writer(store)
    total = len(items)
    began = time.perf_counter()
    writer.start()
    stored = 0
    if progress is not None:
        progress(0, total)
    try:
        with batches(items, load=p.collection.reader(preprocess=p.preprocess),
                     batch_size=p.batch_size, workers=p.workers) as stream:
            for batch, (start, stop) in zip(stream, chunks):
                batch = reindexed(batch, start)
                writer.put((start,) + compute_chunk(p, extractor, batch, start, stop))
                stored += stop - start
                if progress is not None:
                    progress(stored, total)
    except KeyboardInterrupt:
        _close(writer)
        store.finish(p.items)
        raise interrupted(p, writer.written + writer.failed + already) from None
    except OSError as error:  # from the writer thread (put re-raises its error here)
        _close(writer)
        raise_write(error, p, writer.written + writer.failed + already)
    except BaseException:
        _close(writer)
        raise
    _close(writer)
    if writer.error is not None:
        raise_write(writer.error, p, writer.written + writer.failed + already)
    try:
        store.finish(p.items)
    except OSError as error:
        raise_write(error, p, writer.written + writer.failed + already)
    return make_result(p, writer.written, writer.failed, already, writer.failures, began,
                       "local")


def make_result(p: Plan, done: int, failed: int, already: int, failures: Mapping[int, str],
                began: float, engine: str) -> ExtractResult:
    """The result of a run that started at ``began`` (``time.perf_counter()``)."""
    return ExtractResult(p.out, {k: tuple(v) for k, v in p.header.shapes.items()},
                         p.header.n_images, done, failed, already, failures_by_name(p, failures),
                         time.perf_counter() - began, engine, list(p.notes))


def interrupted(p: Plan, stored: int) -> Interrupted:
    """Ctrl-C's message: how many images the store keeps, and how to resume."""
    return Interrupted(f"{stored:,} of {p.header.n_images:,} images are stored in "
                       f"'{printable(p.out)}'; run the same command to resume")


def _close(writer: _Writer) -> None:
    try:
        writer.close()
    except BaseException:  # a second Ctrl-C while the queued chunks are written
        writer.join()


def raise_write(error: BaseException, p: Plan, stored: int) -> None:
    if isinstance(error, OSError):
        raise disk_error(error, p.out, stored, p.header.n_images) from None
    raise error


def reindexed(batch: Any, start: int) -> Any:
    """A batch of the pending items, its indices moved to the images' places in the dataset.

    The stream numbers the pending items 0 .. M-1; each batch covers exactly one pending chunk
    (chunks are ``batch_size`` images, only the last may be shorter), so the offset of the
    batch's first item maps every index."""
    import dataclasses

    shift = start - batch.start
    if shift == 0:
        return batch
    groups = tuple(dataclasses.replace(g, indices=g.indices + shift) for g in batch.groups)
    skipped = tuple(dataclasses.replace(s, index=s.index + shift) for s in batch.skipped)
    return dataclasses.replace(batch, start=batch.start + shift, stop=batch.stop + shift,
                               indices=batch.indices + shift, groups=groups, skipped=skipped)


def failures_by_name(p: Plan, failed: Mapping[int, str]) -> dict[str, str]:
    """``{display name: reason}``."""
    return {p.collection.items[i].name: r for i, r in sorted(failed.items())}


__all__ = ["ExtractResult", "Interrupted", "StoreError", "compute_chunk", "extract_dataset",
           "run_local"]

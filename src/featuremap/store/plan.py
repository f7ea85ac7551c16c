"""Before a dataset is extracted: what each image costs on disk, whether it fits, how long.

:func:`plan` resolves everything a run needs (model, images, layers, pooling, the stored shape
of every layer, the header a store must match) without computing a single real map;
:func:`time_images` times a short pass over a few real images; a :class:`DryRun`
(``extract_dataset(dry_run=True)``) adds the free space at the destination and says whether
the run fits.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import featuremap
from featuremap.budget import check_size, format_bytes
from featuremap.capture import blank_input
from featuremap.datasets import Collection, batches, open_collection
from featuremap.datasets.collection import count_text
from featuremap.errors import ConfigError, printable
from featuremap.extraction import Extractor
from featuremap.model import Model, as_model
from featuremap.preprocess import Preprocess
from featuremap.store.compute import compute_chunk
from featuremap.store.manifest import Header, weights_digest
from featuremap.store.pooling import Pooling, pools
from featuremap.store.writer import COMPRESSIONS

Progress = Callable[[int, int], Any]
DTYPES = {"float32": 4, "float16": 2}
MAX_BATCH = 4096
MAX_WORKERS = 64


@dataclass
class Plan:
    """Everything an extraction needs, checked, before any real image is computed.

    Attributes:
        model: the model; collection: the images; out: the store's folder.
        layers: resolved layer names; pools: each layer's pooling; dtype, compression,
            batch_size, workers: settings.
        preprocess: what each image goes through (pairs keep their size: maps match masks).
        header: what the store records and a resumed run must match.
        input_shape: one image as the network receives it ``(C, H, W)``.
    """

    model: Model
    collection: Collection
    out: Path
    layers: list[str]
    pools: dict[str, Pooling]
    dtype: str
    compression: str
    batch_size: int
    workers: int
    preprocess: Preprocess
    header: Header
    input_shape: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)

    @functools.cached_property
    def items(self) -> list[Any]:
        """The images with absolute paths (masks too): a store compares image lists by absolute
        path, and its masks are read from wherever the store is used."""
        return [dataclasses.replace(item, path=Path(os.path.abspath(item.path)),
                                    mask=None if item.mask is None
                                    else Path(os.path.abspath(item.mask)))
                for item in self.collection.items]

    @property
    def bytes_per_image(self) -> dict[str, int]:
        """Bytes of one image's stored values, per layer (before compression)."""
        size = DTYPES[self.dtype]
        return {k: int(np.prod(v)) * size for k, v in self.header.shapes.items()}

    @property
    def total_bytes(self) -> int:
        """Bytes of every image's stored values (before compression)."""
        return sum(self.bytes_per_image.values()) * len(self.collection)


def check_settings(batch_size: Any, workers: Any, dtype: Any, compression: Any) -> None:
    """Refuse bad settings, all in one message."""
    problems = []
    for name, value, high in (("batch_size", batch_size, MAX_BATCH),
                              ("workers", workers, MAX_WORKERS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            problems.append(f"{name} must be an integer from 1 to {high:,}, got {value!r}")
    if dtype not in DTYPES:
        problems.append(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if compression not in COMPRESSIONS:
        problems.append(f"compression must be one of {', '.join(COMPRESSIONS)}, got "
                        f"{compression!r}")
    if problems:
        raise ConfigError("; ".join(problems) + ".")


def plan(model: Any, source: Any, *, layers: Any, out: str | os.PathLike[str],
         pool: Any = "none", dtype: str = "float32", batch_size: int = 32, workers: int = 1,
         compression: str = "zstd", kind: str = "auto", reuse: bool = True) -> Plan:
    """Resolve and check an extraction (see :func:`featuremap.store.extract_dataset`).

    The stored shapes come from one pass on zeros; with ``reuse``, a store already at ``out``
    made the same way (model, weights, preprocessing, layers, pooling, dtype, chunk,
    compression) gives them instead, and its run was checked against memory when it began:
    resuming a finished store costs no forward pass.

    Raises:
        ConfigError: bad settings, a source that holds no images, a layer whose output is
            neither maps nor one vector per image, images too small for the network.
        UnknownNameError: an unknown layer.
    """
    check_settings(batch_size, workers, dtype, compression)
    m = as_model(model)
    names = m.resolve(layers)
    spec = pools(pool, names)
    collection = source if isinstance(source, Collection) else open_collection(
        source, kind=kind, suffixes=None)
    if not len(collection):
        raise ConfigError(f"'{printable(collection.source)}' holds no images.")
    pre = m.preprocess
    if collection.kind == "pairs":  # maps stay aligned with the masks: no resize, no crop
        pre = Preprocess(resize=None, crop=None, mean=pre.mean, std=pre.std,
                         channels=pre.channels)
    input_shape = _input_shape(m, pre, collection)
    header = Header(
        model=m.name, weights=m.weights, weights_sha256=weights_digest(m.module),
        preprocess=pre.to_dict(), layers=list(names), shapes={},
        pool={k: str(v) for k, v in spec.items()}, dtype=dtype,
        compression=compression, chunk=batch_size, source=printable(os.fspath(collection.source)),
        kind=collection.kind, classes=list(collection.classes) if collection.classes else None,
        n_images=len(collection), featuremap_version=featuremap.__version__)
    known = _existing_shapes(Path(out), header) if reuse else None
    if known is not None:
        header.shapes = known
    else:
        shapes, captured = _stored_shapes(m, names, input_shape, spec)
        header.shapes = {k: list(v) for k, v in shapes.items()}
        in_flight = batch_size * (4 * int(np.prod(input_shape)) * (2 + 1)  # decoded, ahead
                                  + captured  # the kept maps of one pass
                                  + 4 * DTYPES[dtype] * sum(int(np.prod(v))
                                                            for v in shapes.values()))
        check_size(in_flight, what=f"a batch of {batch_size} images in flight (decoded images, "
                   "the maps of one pass, chunks waiting to be written)",
                   fix="lower --batch-size or pool the maps")
    return Plan(m, collection, Path(out), list(names), spec, dtype, compression, batch_size,
                workers, pre, header, input_shape)


def _existing_shapes(out: Path, header: Header) -> dict[str, list[int]] | None:
    """The shapes of a store at ``out`` made the same way as ``header`` says, else None."""
    from featuremap.store.manifest import IDENTITY, MANIFEST

    try:
        stored = Header.from_dict(json.loads((out / MANIFEST).read_text("utf-8"))["header"])
    except (OSError, ValueError, KeyError, TypeError, ConfigError):
        return None
    same = all(getattr(stored, k) == getattr(header, k) for k in IDENTITY if k != "shapes")
    return stored.shapes if same and set(stored.shapes) == set(header.layers) else None


def _input_shape(m: Model, pre: Preprocess, collection: Collection) -> tuple[int, int, int]:
    """What the network receives: the first readable image as preprocessed (with a crop every
    image gets its shape; without, every image must share it). A source whose first files
    are all unreadable is refused before a store is made."""
    reader = collection.reader(preprocess=pre)
    first = None
    for item in collection.items[:64]:
        try:
            return tuple(reader.image(item.path).shape)  # type: ignore[return-value]
        except (OSError, ValueError) as error:
            first = first or f"{item.name}: {printable(error)}"
    raise ConfigError(f"none of the first {min(64, len(collection))} files of "
                      f"'{printable(collection.source)}' could be read as an image (first: "
                      f"{first}).")


def _stored_shapes(m: Model, names: list[str], input_shape: tuple[int, int, int],
                   spec: dict[str, Pooling]) -> tuple[dict[str, tuple[int, ...]], int]:
    """Each layer's stored shape per image, and the bytes its kept maps take per image (before
    pooling), from one pass on zeros."""
    got = m.capture(names, keep="copy")(blank_input(m.module, (1, *input_shape)))
    shapes = {}
    for name in names:
        meta = got.meta[name]
        if not meta.is_map and meta.layout != "vector":
            raise ConfigError(f"layer '{printable(name)}' ({meta.type}) gives "
                              f"{meta.source_shape}, neither feature maps nor one vector per "
                              f"image: {meta.reason}; choose another layer ('featuremap layers "
                              f"{printable(m.name)}' lists every layer's output shape).")
        shapes[name] = spec[name].shape(tuple(got.maps[name].shape[1:]))
    return shapes, sum(t[0].numel() * t.element_size() for t in got.maps.values())


def free_space(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


@dataclass
class DryRun:
    """What a run would write and take, measured on a few real images (``--dry-run``).

    Attributes:
        plan: the checked plan; pending: images still to compute (all, for a new store).
        seconds_per_image: decode + forward + pooling of a short timed run (None: not timed).
        timed_images: how many images the timing used; free_bytes: free space at the store.
    """

    plan: Plan
    pending: int
    seconds_per_image: float | None
    timed_images: int
    free_bytes: int

    @property
    def needed_bytes(self) -> int:
        """Bytes the pending images add (before compression)."""
        return sum(self.plan.bytes_per_image.values()) * self.pending

    @property
    def fits(self) -> bool:
        return self.needed_bytes <= self.free_bytes

    @property
    def seconds(self) -> float | None:
        """Estimated time of the pending images."""
        return None if self.seconds_per_image is None else self.seconds_per_image * self.pending

    def __str__(self) -> str:
        p = self.plan
        width = max(5, *(len(printable(k)) for k in p.layers))
        images = count_text(len(p.collection), "image", "images")
        lines = [f"dry run: {printable(p.model.name)} on {images} "
                 f"from '{printable(p.collection.source)}' -> '{printable(p.out)}' "
                 f"({p.dtype}, compression {p.compression})",
                 f"{'layer':<{width}}  {'pool':>5}  {'stored shape':>16}  {'bytes/image':>12}"]
        for name, size in p.bytes_per_image.items():
            shape = " x ".join(str(s) for s in p.header.shapes[name])
            lines.append(f"{printable(name):<{width}}  {str(p.pools[name]):>5}  {shape:>16}  "
                         f"{size:>12,}")
        per = sum(p.bytes_per_image.values())
        lines.append(f"{'total':<{width}}  {'':>5}  {'':>16}  {per:>12,}")
        need, total = format_bytes(self.needed_bytes), format_bytes(p.total_bytes)
        lines.append(f"{self.pending:,} images to compute: {need} before compression (all "
                     f"{len(p.collection):,}: {total}); free at the destination: "
                     f"{format_bytes(self.free_bytes)}"
                     + ("" if self.fits else " -- does NOT fit"))
        if self.seconds is not None:
            lines.append(f"estimated time: {_duration(self.seconds)} "
                         f"({1 / self.seconds_per_image:,.1f} images/s over "
                         f"{self.timed_images} timed images)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": {k: {"shape": self.plan.header.shapes[k], "bytes_per_image": v,
                               "pool": str(self.plan.pools[k])}
                           for k, v in self.plan.bytes_per_image.items()},
                "images": len(self.plan.collection), "pending": self.pending,
                "needed_bytes": self.needed_bytes, "total_bytes": self.plan.total_bytes,
                "free_bytes": self.free_bytes, "fits": self.fits,
                "seconds_per_image": self.seconds_per_image, "seconds": self.seconds}


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def time_images(p: Plan, n: int, *, progress: Progress | None = None
                ) -> tuple[float | None, int]:
    """Seconds per image of decoding + forward + pooling on the first ``n`` images (the first
    batch warms up and is not counted when there is more than one): each batch goes through
    :func:`~featuremap.store.compute.compute_chunk`, a run's per-chunk work, and is not written.

    Args:
        progress: ``progress(done, total)`` in images, as the batches are computed.

    Raises:
        ConfigError: what a run would raise (float16 overflow, for instance).
    """
    extractor = Extractor(p.model, p.layers, reuse_buffers=True)
    items = p.collection.items[: max(1, n)]
    size = max(1, min(p.batch_size, (len(items) + 1) // 2))
    timed, seconds, first = 0, 0.0, True
    if progress is not None:
        progress(0, len(items))
    with batches(items, load=p.collection.reader(preprocess=p.preprocess),
                 batch_size=size, workers=p.workers) as stream:
        start = time.perf_counter()
        for batch in stream:
            compute_chunk(p, extractor, batch, batch.start, batch.stop)
            now = time.perf_counter()
            if not first or len(items) <= size:
                seconds += now - start
                timed += len(batch.items) + len(batch.skipped)
            first = False
            if progress is not None:
                progress(batch.stop, len(items))
            start = time.perf_counter()
    return (seconds / timed if timed else None), timed

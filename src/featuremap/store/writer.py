"""Create, check and fill a store: the arrays, the manifest and the chunk records.

:class:`StoreWriter` is a plain value (a path and a header) that any process can hold: the
local engine writes from a writer thread, Ray actors each write their own chunks. Writing a
chunk is ``write_chunk(start, maps, status, failed)``: every layer's chunk, then the status
chunk, then the record; a writer stopped anywhere leaves the chunk unrecorded, and a later
run writes it again whole.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featuremap.errors import ConfigError, FeaturemapError, printable
from featuremap.store.manifest import (
    DONE,
    FAILED,
    MANIFEST,
    PENDING,
    RECORDS,
    Header,
    differences,
    image_differences,
    image_entries,
    read_json,
    read_records,
    write_json,
    write_record,
)

COMPRESSIONS = ("zstd", "lz4", "none")


class StoreError(FeaturemapError):
    """Writing the store failed (disk full, permission denied): what was written stays valid and
    the same command resumes."""


def zarr_module() -> Any:
    try:
        import zarr
    except ImportError:  # pragma: no cover - zarr is a dependency
        raise ConfigError("the store needs zarr: pip install 'zarr>=3'.") from None
    return zarr


def _codecs(compression: str) -> Any:
    from zarr.codecs import BloscCodec, ZstdCodec

    if compression == "zstd":
        return [ZstdCodec(level=1)]
    if compression == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=4)]
    return None


def disk_error(error: OSError, root: Path, done: int, total: int) -> StoreError:
    """One line for a failed write: what happened, what is safe, what to do."""
    saved = f"{done} of {total} images are stored and recorded; run the same command to resume"
    if error.errno == errno.ENOSPC or error.errno == errno.EDQUOT:
        what = f"the disk holding '{printable(root)}' is full"
        fix = "free space (or choose --pool/--dtype float16 for smaller maps), then " + saved
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = f"permission denied writing '{printable(root)}'"
        fix = "make the folder writable, then " + saved
    else:
        what = f"writing '{printable(root)}' failed: {printable(error.strerror or error)}"
        fix = saved
    return StoreError(f"{what}; {fix}.")


@dataclass
class Opened:
    """A store ready to be written: its writer, what is already done, and what differs."""

    writer: StoreWriter
    finished: dict[int, dict[str, str]]  # chunk start -> failures, for chunks already done
    created: bool


class StoreWriter:
    """Writes one store (see :mod:`featuremap.store.manifest` for the layout).

    Attributes:
        root: the store's folder; header: how its maps are made.
    """

    def __init__(self, root: str | os.PathLike[str], header: Header) -> None:
        self.root = Path(root)
        self.header = header
        self._arrays: dict[str, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:  # zarr handles are reopened where it lands
        return {"root": self.root, "header": self.header, "_arrays": None}

    # ---------------------------------------------------------------------- opening
    @classmethod
    def open(cls, root: str | os.PathLike[str], header: Header, items: Sequence[Any], *,
             overwrite: bool = False,
             finished: Mapping[int, dict[str, str]] | None = None) -> Opened:
        """Create the store, or check an existing one against ``header`` and ``items`` (the
        dataset's :class:`~featuremap.datasets.Item` objects).

        ``finished``: the existing store's records when the caller has read them already
        (:func:`~featuremap.store.manifest.read_records`); without them they are read here.

        Raises:
            ConfigError: the path is a file, or a folder that is not a store and not empty;
                an existing store made another way (the message says what differs; pass
                ``overwrite`` to replace it); a parent folder that is missing.
            StoreError: the folder cannot be written.
        """
        path = Path(root)
        if os.path.lexists(path) and not path.is_dir():
            raise ConfigError(f"'{printable(path)}' exists and is not a folder: a store is a "
                              "folder; choose another --out.")
        if not path.parent.is_dir():
            raise ConfigError(f"the folder '{printable(path.parent)}' does not exist: create "
                              f"it first or choose another --out.")
        _remove_stale_creations(path)
        manifest = path / MANIFEST
        if path.is_dir() and any(path.iterdir()):
            if not manifest.is_file():
                raise ConfigError(f"'{printable(path)}' is a folder that is not a featuremap "
                                  "store and not empty: choose a new or empty folder (nothing "
                                  "in it is touched).")
            if not overwrite:
                writer = cls(path, _stored_header(path, header, items))
                writer.clean()
                return Opened(writer, read_records(path) if finished is None
                              else dict(finished), False)
            _remove_store(path)
        writer = cls(path, header)
        writer.create(items)
        return Opened(writer, {}, True)

    def create(self, items: Sequence[Any]) -> None:
        """Write a new, empty store: arrays filled with zeros, every image pending.

        The store is made in a temporary folder beside its place and renamed into it, so an
        interrupted creation leaves nothing behind."""
        zarr = zarr_module()
        h = self.header
        final = self.root
        try:
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name[:40]}.",
                                        suffix=".part"))
        except OSError as error:
            raise disk_error(error, final, 0, h.n_images) from None
        self.root = tmp
        try:
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            (tmp / RECORDS).mkdir()
            group.attrs["featuremap"] = h.to_dict()
            n, chunk = h.n_images, h.chunk
            maps = group.require_group("maps")
            for layer in h.layers:
                shape = tuple(h.shapes[layer])
                maps.create_array(layer, shape=(n, *shape), chunks=(chunk, *shape),
                                  dtype=h.dtype, fill_value=0, compressors=_codecs(h.compression))
            group.create_array("status", shape=(n,), chunks=(chunk,), dtype="int8",
                               fill_value=PENDING, compressors=None)
            labels = group.create_array("labels", shape=(n,), chunks=(max(n, 1),),
                                        dtype="int64", fill_value=-1, compressors=None)
            images = group.create_array("images", shape=(n,), chunks=(max(n, 1),), dtype=str)
            if n:
                images[:] = np.array([item.name for item in items], dtype=object)
                labels[:] = np.array([-1 if item.label is None else item.label
                                      for item in items], np.int64)
            self.finish(items, fsync=False)
            os.chmod(tmp, 0o777 & ~_umask())
            os.replace(tmp, final)  # POSIX rename replaces an empty folder
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(error, OSError):
                raise disk_error(error, final, 0, h.n_images) from None
            raise
        finally:
            self.root = final

    def clean(self) -> None:
        """Remove what an interrupted write left: temporary files of arrays and records."""
        for folder, _, files in os.walk(self.root):
            for name in files:
                if name.endswith(".partial") or (name.startswith(".") and name.endswith(".tmp")):
                    try:
                        os.unlink(os.path.join(folder, name))
                    except FileNotFoundError:
                        pass

    # ---------------------------------------------------------------------- writing
    def arrays(self) -> dict[str, Any]:
        """The layer arrays and ``status``, opened once per process."""
        if self._arrays is None:
            zarr = zarr_module()
            group = zarr.open_group(str(self.root), mode="r+", zarr_format=3)
            self._arrays = {layer: group["maps"][layer] for layer in self.header.layers}
            self._arrays["status"] = group["status"]
        return self._arrays

    def write_chunk(self, start: int, maps: Mapping[str, np.ndarray], status: np.ndarray,
                    failed: Mapping[int, str]) -> None:
        """Write one chunk: each layer's rows ``start .. start + len(status) - 1``, the status,
        then the record. Raises OSError as the disk does (see :func:`disk_error`)."""
        arrays = self.arrays()
        stop = start + len(status)
        for layer in self.header.layers:
            arrays[layer][start:stop] = maps[layer]
        arrays["status"][start:stop] = status
        write_record(self.root, start, stop, failed)

    def finish(self, items: Sequence[Any], *, fsync: bool = True) -> tuple[np.ndarray,
                                                                           dict[int, str]]:
        """Write the manifest from the records: every image's status and failure reason.

        Returns:
            ``(status (N,) int8, {image index: reason})``.
        """
        status, failed = self.status(read_records(self.root))
        write_json(self.root / MANIFEST, {
            "format": self.header.format, "header": self.header.to_dict(),
            "complete": bool((status != PENDING).all()),
            "counts": {"done": int((status == DONE).sum()),
                       "failed": int((status == FAILED).sum()),
                       "pending": int((status == PENDING).sum())},
            "images": image_entries(items, status, failed)}, fsync=fsync)
        return status, failed

    def status(self, records: Mapping[int, Mapping[str, str]]) -> tuple[np.ndarray,
                                                                        dict[int, str]]:
        """Every image's status from the chunk records."""
        n, chunk = self.header.n_images, self.header.chunk
        status = np.full(n, PENDING, np.int8)
        failed: dict[int, str] = {}
        for start, failures in records.items():
            status[start: min(start + chunk, n)] = DONE
            for index, reason in failures.items():
                status[int(index)] = FAILED
                failed[int(index)] = reason
        return status, dict(sorted(failed.items()))

    def pending_chunks(self, finished: Mapping[int, Any]) -> list[tuple[int, int]]:
        """``(start, stop)`` of every chunk not yet recorded, in order."""
        n, chunk = self.header.n_images, self.header.chunk
        return [(s, min(s + chunk, n)) for s in range(0, n, chunk) if s not in finished]


def _stored_header(path: Path, header: Header, items: Sequence[Any]) -> Header:
    """The header of the store at ``path``, checked against a run's ``header`` and ``items``.

    Raises:
        ConfigError: the store was made another way (the message says what differs).
    """
    stored = read_json(path / MANIFEST, "the manifest")
    found = Header.from_dict(stored.get("header", {}))
    problems = differences(found, header)
    other = image_differences([e.get("path") for e in stored.get("images", [])],
                              [os.fspath(item.path) for item in items])
    if other:
        problems.append(other)
    if problems:
        raise ConfigError(f"'{printable(path)}' holds a store made another way: "
                          + "; ".join(problems) + ". Use another --out, or --overwrite to "
                          "replace it.")
    return found


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_creations(path: Path) -> None:
    """Remove the temporary folders of creations of this store that were killed before their
    rename (named ``.NAME.*.part`` beside it, holding a store manifest)."""
    for entry in path.parent.glob(f".{glob.escape(path.name[:40])}.*.part"):
        if entry.is_dir() and not entry.is_symlink() and (entry / MANIFEST).is_file():
            shutil.rmtree(entry, ignore_errors=True)


def _remove_store(path: Path) -> None:
    """Empty a store's folder (``--overwrite``): only a folder with a manifest gets here."""
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)

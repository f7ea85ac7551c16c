"""Feature maps of many images kept on disk, read back one image at a time.

Training a head for several epochs needs the frozen maps of every training image again and
again. Keeping them in memory makes memory grow with the dataset; running the backbone again
every epoch multiplies its cost by the epochs. :class:`MapCache` writes each image's maps (at
their own resolution) and its mask once, to an unnamed temporary file that the system removes
when it is closed, and reads any of them back on demand with plain reads (no memory map, so the
process's memory stays flat however large the dataset is).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from featuremap.errors import ConfigError, printable

__all__ = ["MapCache"]


@dataclass(frozen=True)
class _Entry:
    offset: int
    shapes: tuple[tuple[int, ...], ...]  # maps (C, h, w) per layer, then the mask (H, W)


class MapCache:
    """Append-only store of ``(maps per layer, mask)`` per image in a temporary file.

    Args:
        folder: where the temporary file lives (default: the system's temporary folder).

    Example:
        >>> with MapCache() as cache:  # doctest: +SKIP
        ...     k = cache.add([torch.zeros(16, 32, 32)], np.zeros((64, 64), np.int64))
        ...     maps, mask = cache.get(k)
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self.folder = str(folder) if folder is not None else tempfile.gettempdir()
        try:
            self._file = tempfile.TemporaryFile(dir=self.folder)
        except OSError as err:
            raise ConfigError(f"cannot create a temporary file for the maps in "
                              f"'{printable(self.folder)}': {err.strerror or err}. Set TMPDIR to "
                              "a writable folder.") from None
        self._entries: list[_Entry] = []
        self._end = 0

    def check_space(self, n_bytes: int) -> None:
        """Refuse, before any work, a dataset whose maps would not fit on the disk."""
        free = shutil.disk_usage(self.folder).free
        if n_bytes > free:
            raise ConfigError(f"the maps of this dataset need about {n_bytes / 1e9:.2f} GB on "
                              f"disk in '{printable(self.folder)}', which has "
                              f"{free / 1e9:.2f} GB free: use fewer images or layers, or set "
                              "TMPDIR to a folder with more room.")

    def add(self, maps: Sequence[torch.Tensor], mask: np.ndarray) -> int:
        """Append one image's maps ``(C, h, w)`` per layer and its mask ``(H, W)``; returns its
        index."""
        arrays = [t.detach().float().cpu().contiguous().numpy() for t in maps]
        arrays.append(np.ascontiguousarray(mask, dtype=np.int32))
        self._file.seek(self._end)
        try:
            for a in arrays:
                self._file.write(a.tobytes())
            self._file.flush()
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise ConfigError(f"the disk holding '{printable(self.folder)}' is full: the "
                                  "maps of this dataset do not fit; use fewer images or layers, "
                                  "or set TMPDIR to a folder with more room.") from None
            raise
        self._entries.append(_Entry(self._end, tuple(a.shape for a in arrays)))
        self._end += sum(a.nbytes for a in arrays)
        return len(self._entries) - 1

    def get(self, index: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``(maps (1, C, h, w) per layer, mask (H, W) int64)`` of image ``index``."""
        entry = self._entries[index]
        self._file.seek(entry.offset)
        out = []
        for shape in entry.shapes[:-1]:
            a = np.fromfile(self._file, dtype=np.float32, count=int(np.prod(shape)))
            out.append(torch.from_numpy(a.reshape(shape))[None])
        m = np.fromfile(self._file, dtype=np.int32, count=int(np.prod(entry.shapes[-1])))
        return out, torch.from_numpy(m.reshape(entry.shapes[-1]).astype(np.int64))

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._end

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> MapCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

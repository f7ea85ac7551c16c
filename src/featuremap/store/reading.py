"""Read a store: lazy arrays per layer, the image list, labels, and NumPy/torch slices.

Example:
    >>> s = open_store("photos.zarr")  # doctest: +SKIP
    >>> s.layers, s["layer4"].shape  # doctest: +SKIP
    (['layer4'], (1000, 512))
    >>> x = s.to_torch("layer4", start=0, stop=100)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featuremap.errors import ConfigError, UnknownNameError, printable, unknown_name
from featuremap.store.manifest import (
    DONE,
    FAILED,
    MANIFEST,
    PENDING,
    Header,
    read_json,
    read_records,
)
from featuremap.store.writer import StoreWriter, zarr_module


@dataclass
class Store:
    """A store opened for reading (:func:`open_store`).

    Attributes:
        path: the folder; header: how the maps were made (model, weights digest,
            preprocessing, layers, shapes, pooling, dtype, chunk).
        images: display names, in store order; paths: the image files; masks: their masks
            (pairs) or None.
        status: ``(N,)`` int8: 0 pending, 1 done, 2 failed; failures: ``{index: reason}``.
    """

    path: Path
    header: Header
    images: list[str]
    paths: list[str]
    masks: list[str | None]
    status: np.ndarray
    failures: dict[int, str]
    _group: Any = field(repr=False, default=None)
    _labels: np.ndarray | None = field(repr=False, default=None)

    @property
    def layers(self) -> list[str]:
        return list(self.header.layers)

    @property
    def classes(self) -> list[str] | None:
        return self.header.classes

    @property
    def labels(self) -> np.ndarray | None:
        """``(N,)`` int64 class labels where the source had classes, else None."""
        return self._labels

    @property
    def complete(self) -> bool:
        """Every image done or failed (nothing pending)."""
        return bool((self.status != PENDING).all())

    @property
    def done(self) -> np.ndarray:
        """Indices of the images whose maps are stored."""
        return np.flatnonzero(self.status == DONE)

    def __len__(self) -> int:
        return self.header.n_images

    def __iter__(self) -> Iterator[str]:
        return iter(self.header.layers)

    def __getitem__(self, layer: str) -> Any:
        """The lazy Zarr array of ``layer`` (nothing is read until it is sliced)."""
        return self._group["maps"][self._layer(layer)]

    def _layer(self, layer: str) -> str:
        if layer not in self.header.layers:
            raise unknown_name("layer", layer, self.header.layers,
                               hint=f"the store '{printable(self.path)}' holds "
                                    + ", ".join(self.header.layers))
        return layer

    def to_numpy(self, layer: str, start: int | None = None, stop: int | None = None
                 ) -> np.ndarray:
        """The stored values of images ``start .. stop - 1`` (default: all) as one array.

        Failed and pending images read as zeros: check :attr:`status`.
        """
        lo, hi, _ = slice(start, stop).indices(len(self))
        return np.asarray(self[layer][lo:hi])

    def to_torch(self, layer: str, start: int | None = None, stop: int | None = None) -> Any:
        """As :meth:`to_numpy`, a torch tensor."""
        import torch

        return torch.from_numpy(self.to_numpy(layer, start, stop))

    def image(self, index: int) -> dict[str, np.ndarray]:
        """``{layer: values}`` of one image."""
        if not -len(self) <= index < len(self):
            raise ConfigError(f"image index {index} is out of range: the store holds "
                              f"{len(self)} images.")
        return {k: np.asarray(self[k][index]) for k in self.header.layers}

    def __str__(self) -> str:
        h = self.header
        counts = {name: int((self.status == code).sum())
                  for name, code in (("done", DONE), ("failed", FAILED), ("pending", PENDING))}
        lines = [f"store {printable(self.path)}: {printable(h.model)} "
                 f"(weights sha256 {h.weights_sha256[:12]}), {len(self):,} images: "
                 f"{counts['done']:,} done, {counts['failed']:,} failed, "
                 f"{counts['pending']:,} pending",
                 f"{h.dtype}, {h.compression}, chunks of {h.chunk} images"]
        lines += [f"  {printable(k)}: {' x '.join(str(s) for s in h.shapes[k])} per image"
                  + (f" (pool {h.pool[k]})" if h.pool.get(k, "none") != "none" else "")
                  for k in h.layers]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"path": os.fspath(self.path), "header": self.header.to_dict(),
                "complete": self.complete, "images": len(self),
                "done": int((self.status == DONE).sum()),
                "failed": int((self.status == FAILED).sum())}


def open_store(path: str | os.PathLike[str]) -> Store:
    """Open a store written by :func:`featuremap.extract_dataset`, lazily.

    The status of each image comes from the chunk records, so a store whose run was
    interrupted opens too (its pending images read as zeros).

    Raises:
        ConfigError: a missing folder, or one that is not a featuremap store.
    """
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"'{printable(root)}' is not a folder: a store is the folder "
                          "'featuremap extract --out' wrote.")
    manifest = read_json(root / MANIFEST, "the manifest")
    if not isinstance(manifest, dict) or "header" not in manifest:
        raise ConfigError(f"'{printable(root / MANIFEST)}' is not a featuremap store manifest.")
    header = Header.from_dict(manifest["header"])
    entries = manifest.get("images", [])
    status, failures = StoreWriter(root, header).status(read_records(root))
    zarr = zarr_module()
    try:
        group = zarr.open_group(str(root), mode="r", zarr_format=3)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"cannot open the arrays of '{printable(root)}': "
                          f"{printable(error)}") from None
    labels = None
    if header.classes:
        values = np.asarray(group["labels"][:], np.int64)
        labels = values if (values >= 0).all() else None
    return Store(root, header, [e["name"] for e in entries], [e["path"] for e in entries],
                 [e.get("mask") for e in entries], status, failures, group, labels)


__all__ = ["Store", "UnknownNameError", "open_store"]

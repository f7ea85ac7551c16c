"""Feature maps of whole datasets in a resumable on-disk store (Zarr v3), and reading it back.

- :func:`extract_dataset`: every image of a folder, class folders, image/mask pairs, a list or
  a glob through a model, the requested layers (optionally pooled) into one chunked array per
  layer, with a manifest; resumable after any interruption; ``engine="ray"`` runs the same on
  Ray Data (:mod:`featuremap.store.distributed`).
- :func:`open_store`: lazy arrays, the image list, labels, ``to_numpy``/``to_torch``.
- :func:`plan` / ``extract_dataset(dry_run=True)``: bytes per image and layer, the total, free
  space, and the time of a short timed run, before anything is written.

Any Zarr v3 reader opens a store: ``zarr.open_group(path)["maps"][layer]``; the group's
attribute ``featuremap`` says how the maps were made.

Example:
    >>> extract_dataset(load_model("resnet18"), "photos", layers="layer2,layer4",
    ...                 pool="avg", out="photos.zarr")  # doctest: +SKIP
    >>> open_store("photos.zarr").to_numpy("layer4").shape  # doctest: +SKIP
    (1000, 512)
"""

from __future__ import annotations

from featuremap.store.extract import ExtractResult, Interrupted, extract_dataset
from featuremap.store.manifest import Header, weights_digest
from featuremap.store.plan import DryRun, Plan, plan
from featuremap.store.pooling import Pooling
from featuremap.store.reading import Store, open_store
from featuremap.store.writer import StoreError, StoreWriter

__all__ = ["DryRun", "ExtractResult", "Header", "Interrupted", "Plan", "Pooling", "Store",
           "StoreError", "StoreWriter", "extract_dataset", "open_store", "plan",
           "weights_digest"]

"""Frozen features read from a store instead of computed: what probe and fit-seg share.

:func:`featuremap.tasks.probe.probe` and :func:`featuremap.tasks.segfit.fit_seg_head` take a
dataset folder (the backbone runs on every image) or a store that
:func:`featuremap.extract_dataset` wrote (extract once, use many times): then no forward pass
runs and the maps stream from the store one chunk at a time (the requested layers of one chunk
of images in memory, however many images the store holds). The task's own code (split, fit,
scores) is the same either way; only where the features come from differs.

Rules for a store:

- it must be complete (no pending image); only images stored (status done) are used, the failed
  ones are reported as skipped with their reasons;
- the layers are names, globs or regexes among the store's layers (all of them by default);
- a model is optional: None uses the maps as they are; a model given must be the one that made
  the store (same name, same weights digest, same preprocessing), else a ConfigError says what
  differs.

Example:
    >>> source = use_store(None, open_store("shapes.zarr"), None)  # doctest: +SKIP
    >>> for indices, maps in source.chunks():  # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featuremap.errors import ConfigError, UnknownNameError, printable, unknown_name
from featuremap.layers import match_names
from featuremap.model import Model, as_model
from featuremap.store import Store, open_store, weights_digest
from featuremap.store.manifest import DONE, MANIFEST, PENDING
from featuremap.tasks.segmentation import native

__all__ = ["StoreFeatures", "as_store", "check_model", "folder_model", "store_layers",
           "use_store"]

SHOWN = 8  # layers named in an error message before "and N more"


def as_store(data: Any) -> Store | None:
    """``data`` as a store: a :class:`~featuremap.store.Store`, or a folder holding a store's
    ``manifest.json`` (opened); None for anything else (a dataset folder)."""
    if isinstance(data, Store):
        return data
    if isinstance(data, (str, os.PathLike)) and (Path(data).expanduser() / MANIFEST).is_file():
        return open_store(Path(data).expanduser())
    return None


def folder_model(model: Any, layers: Any) -> Model:
    """The model of a run on a dataset folder (the network computes the maps): both needed."""
    if model is None:
        raise ConfigError("a dataset folder needs a model to compute its maps: pass one (model "
                          "None is for a store written by featuremap.extract_dataset).")
    if layers is None:
        raise ConfigError("name the layers (layers=...): only a store has default layers (the "
                          "ones it holds).")
    return as_model(model)


@dataclass
class StoreFeatures:
    """The maps of some of a store's layers, read chunk by chunk.

    Attributes:
        store: the store; layers: the layers read, in request order.
        model_name: the store's model (the same as the model given, when one was).
    """

    store: Store
    layers: list[str]
    model_name: str

    @property
    def done(self) -> np.ndarray:
        """Indices of the images that are stored (the ones used), ascending."""
        return self.store.done

    @property
    def where(self) -> str:
        """The store's folder, printable."""
        return printable(os.fspath(self.store.path))

    def skipped(self) -> dict[int, str]:
        """``{index: reason}`` of the images the extraction could not read."""
        return dict(self.store.failures)

    def chunks(self, progress: Callable[[int, int], Any] | None = None
               ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """``(indices, {layer: values (n, ...)})`` of the stored images, one store chunk at a
        time (chunks without a stored image are not read); ``progress(images passed, images)``
        after each chunk."""
        store = self.store
        n, chunk = len(store), store.header.chunk
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            rows = np.flatnonzero(store.status[start:stop] == DONE)
            if len(rows):
                yield rows + start, {k: torch.from_numpy(np.asarray(store[k][start:stop])[rows])
                                     for k in self.layers}
            if progress is not None:
                progress(stop, n)


def use_store(model: Any, store: Store, layers: str | Sequence[str] | None) -> StoreFeatures:
    """Check a store for a task and say what to read from it.

    Raises:
        ConfigError: an incomplete store, a store without any stored image, a model that did
            not make it.
        UnknownNameError: a layer the store does not hold.
    """
    n = len(store)
    pending = int((store.status == PENDING).sum())
    where = printable(os.fspath(store.path))
    if pending:
        raise ConfigError(f"the store '{where}' is incomplete: {pending:,} of {n:,} images are "
                          "still pending (its extraction stopped, or is running); run the same "
                          "'featuremap extract' command to finish it.")
    if not len(store.done):
        first = next(iter(store.failures.values()), "no images")
        raise ConfigError(f"none of the {n:,} images of the store '{where}' was stored (first "
                          f"failure: {printable(first)}).")
    names = store_layers(store, layers)
    return StoreFeatures(store, names, check_model(model, store))


def store_layers(store: Store, layers: str | Sequence[str] | None) -> list[str]:
    """Layer names, globs or regexes among the store's layers (None: all of them), in request
    order, duplicates removed.

    Raises:
        ConfigError: an empty request, an invalid regex.
        UnknownNameError: a name the store does not hold (with did-you-mean), or a glob or
            regex that matches none of its layers.
    """
    if layers is None:
        return store.layers
    requested = layers.split(",") if isinstance(layers, str) else list(layers)
    requested = [x.strip() if isinstance(x, str) else x for x in requested]
    requested = [x for x in requested if x != ""]
    held = _listing(store.layers)
    where = printable(os.fspath(store.path))
    if not requested:
        raise ConfigError(f"no layer given: the store '{where}' holds {held}.")
    found: dict[str, None] = {}
    for request in requested:
        kind, matches = match_names(request, store.layers)
        if not matches:
            hint = (f"The store '{where}' holds {held}; extract again with --layers to store "
                    "others.")
            if kind != "exact":
                raise UnknownNameError(f"No layer of the store matches the {kind} "
                                       f"'{printable(request)}'. {hint}")
            raise unknown_name("layer", printable(request), store.layers, hint=hint)
        found.update(dict.fromkeys(matches))
    return list(found)


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(printable(n) for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def check_model(model: Any, store: Store) -> str:
    """The store's model name; a model given must be the one that made the store.

    Compared: the name, the digest of every parameter and buffer
    (:func:`featuremap.store.weights_digest`) and the preprocessing (as the store applied it:
    without resize or crop for image/mask pairs).

    Raises:
        ConfigError: what differs, all of it in one message.
    """
    header = store.header
    if model is None:
        return header.model
    m = as_model(model)
    problems = []
    if m.name != header.model:
        problems.append(f"the model is {printable(m.name)}, the store's is "
                        f"{printable(header.model)}")
    digest = weights_digest(m.module)
    if digest != header.weights_sha256:
        problems.append(f"the weights differ (store: {printable(header.weights)}, sha256 "
                        f"{header.weights_sha256[:12]}; given: {printable(m.weights)}, sha256 "
                        f"{digest[:12]})")
    pre = native(m.preprocess) if header.kind == "pairs" else m.preprocess
    if _canonical(pre.to_dict()) != _canonical(header.preprocess):
        problems.append(f"the preprocessing differs (store: {_canonical(header.preprocess)}; "
                        f"given: {_canonical(pre.to_dict())})")
    if problems:
        raise ConfigError(f"the store '{printable(os.fspath(store.path))}' was not made with "
                          f"this model: {'; '.join(problems)}. Pass the model that made it, or "
                          "no model (model=None; on the command line no --model or --weights) "
                          "to use the stored maps as they are, or extract again.")
    return m.name


def _canonical(value: Any) -> str:
    return printable(json.dumps(value, sort_keys=True))

"""Linear probes: how well a linear classifier reads the classes off each layer's frozen maps.

:func:`probe` runs every requested layer from one forward pass per batch (or reads the maps from
a store that :func:`featuremap.extract_dataset` wrote), averages each layer's maps over space to
one vector per image, and fits one multinomial logistic regression per layer on a stratified
split, scored on the held-out part: low layers (edges) tell classes apart badly, high layers
well.

Example:
    >>> r = probe(load_model("shapes"), "shapes_data", layers=["backbone.block1",
    ...           "backbone.block4"])  # doctest: +SKIP
    >>> r = probe(None, "shapes.zarr", layers="backbone.block4")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featuremap.datasets import Collection, batches, open_collection
from featuremap.datasets.collection import KIND_TEXT
from featuremap.errors import ConfigError, printable
from featuremap.extraction import Extractor, LayerMeta
from featuremap.model import Model
from featuremap.outputs import atomic_paths, check_output
from featuremap.store import Store
from featuremap.tasks.fromstore import as_store, folder_model, use_store

__all__ = ["LinearProbe", "ProbeResult", "check_options", "probe"]


@dataclass
class LinearProbe:
    """One layer's probe: ``logits = ((x - mean) / std) @ weight.T + bias``.

    Attributes:
        layer: the layer name; dim: the feature dimension (channels).
        train_accuracy, test_accuracy: fraction correct on the training and held-out split.
        weight ``(K, dim)``, bias ``(K,)``, mean and std ``(dim,)``: float32 tensors.
    """

    layer: str
    dim: int
    train_accuracy: float
    test_accuracy: float
    weight: torch.Tensor = field(repr=False)
    bias: torch.Tensor = field(repr=False)
    mean: torch.Tensor = field(repr=False)
    std: torch.Tensor = field(repr=False)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Class indices ``(N,)`` of pooled features ``(N, dim)``."""
        z = (features.float() - self.mean) / self.std
        return (z @ self.weight.T + self.bias).argmax(dim=1)


@dataclass
class ProbeResult:
    """Linear probes of several layers on one dataset.

    Attributes:
        model_name: the model probed.
        classes: class names (the sub-folder names, sorted); index ``i`` is class ``i``.
        probes: one :class:`LinearProbe` per layer, in request order.
        n_train, n_test: images in each split.
        skipped: ``{path: reason}`` of files that could not be read.
        seed, test_fraction, l2: the settings used.
    """

    model_name: str
    classes: tuple[str, ...]
    probes: dict[str, LinearProbe]
    n_train: int
    n_test: int
    skipped: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    test_fraction: float = 0.25
    l2: float = 1e-3

    @property
    def layers(self) -> list[str]:
        """The layers probed, in request order."""
        return list(self.probes)

    @property
    def n_used(self) -> int:
        """Images read and used (train + test)."""
        return self.n_train + self.n_test

    @property
    def train_accuracy(self) -> dict[str, float]:
        """``{layer: training accuracy}``."""
        return {k: p.train_accuracy for k, p in self.probes.items()}

    @property
    def test_accuracy(self) -> dict[str, float]:
        """``{layer: held-out accuracy}``."""
        return {k: p.test_accuracy for k, p in self.probes.items()}

    def __str__(self) -> str:
        width = max([5] + [len(printable(k)) for k in self.probes])
        lines = [f"linear probes of {printable(self.model_name)}: {len(self.classes)} classes, "
                 f"{self.n_train} train / {self.n_test} test images, {len(self.skipped)} "
                 "skipped",
                 f"{'layer':<{width}}  {'dim':>5}  {'train acc':>9}  {'test acc':>8}"]
        lines += [f"{printable(k):<{width}}  {p.dim:>5}  {p.train_accuracy:9.3f}  "
                  f"{p.test_accuracy:8.3f}" for k, p in self.probes.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: what :meth:`save` writes beside the tensors."""
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """What the JSON sidecar holds (everything but the tensors)."""
        return {
            "format": "featuremap-probes/1", "model": self.model_name, "layers": self.layers,
            "classes": list(self.classes), "pooling": "global average over (H, W)",
            "accuracy": {k: {"train": p.train_accuracy, "test": p.test_accuracy, "dim": p.dim}
                         for k, p in self.probes.items()},
            "n_train": self.n_train, "n_test": self.n_test, "n_skipped": len(self.skipped),
            "skipped": dict(self.skipped), "seed": self.seed,
            "test_fraction": self.test_fraction, "l2": self.l2,
        }

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False
             ) -> tuple[Path, Path]:
        """Write the probes to ``path`` (``.safetensors``) and a ``.json`` sidecar beside it.

        The safetensors file holds ``{layer}.weight`` ``(K, dim)``, ``{layer}.bias``,
        ``{layer}.mean`` and ``{layer}.std`` per layer (float32); the sidecar holds
        :meth:`summary` (layers, classes, accuracies, model name, settings).

        Args:
            path: a file name ending in ``.safetensors``.
            overwrite: replace existing files (refused by default).

        Returns:
            ``(weights path, json path)``.

        Raises:
            ConfigError: another suffix, or a file that exists and ``overwrite`` is False.
        """
        from safetensors.torch import save_file

        target = Path(path)
        if target.suffix.lower() != ".safetensors":
            raise ConfigError(f"probes are saved as .safetensors, got '{target}': name the file "
                              "e.g. 'probes.safetensors'.")
        sidecar = target.with_suffix(".json")
        for p in (target, sidecar):
            if p.exists() and not overwrite:
                raise ConfigError(f"'{p}' exists: pass overwrite=True (--overwrite) or pick "
                                  "another name.")
        tensors = {f"{k}.{part}": getattr(p, part).detach().float().contiguous().cpu()
                   for k, p in self.probes.items() for part in ("weight", "bias", "mean", "std")}
        target = check_output(target, suffixes=(".safetensors",), overwrite=overwrite,
                              what="probes", siblings=(".json",))
        with atomic_paths([target, sidecar]) as (weights, meta):
            save_file(tensors, str(weights), metadata={"format": "featuremap-probes/1",
                                                       "model": self.model_name,
                                                       "classes": json.dumps(list(self.classes))})
            meta.write_text(json.dumps(self.summary(), indent=2) + "\n")
        return target, sidecar


def _pool(maps: torch.Tensor, layer: str) -> torch.Tensor:
    """One vector per image: maps (N, C, H, W) averaged over H, W (transformer tokens arrive as
    maps on the patch grid); vectors (N, D) as they are."""
    if maps.dim() == 4:
        return maps.float().mean(dim=(2, 3))
    if maps.dim() == 2:
        return maps.float()
    raise ConfigError(f"layer '{layer}' gives {tuple(maps.shape)}; a probe needs maps "
                      "(N, C, H, W) or one vector per image (N, D).")


def _check_features(meta: LayerMeta) -> None:
    """Maps and vectors are features; attention tensors and windows are not one row per image."""
    if meta.layout == "other":
        raise ConfigError(f"layer '{meta.name}' ({meta.type}) gives {meta.source_shape}, neither "
                          f"feature maps nor one vector per image: {meta.reason}; a probe reads "
                          "(N, C, H, W) maps or (N, D) vectors ('featuremap layers MODEL' lists "
                          "every layer's output shape).")


def _features(m: Model, extractor: Extractor, collection: Collection, batch_size: int,
              progress: Callable[[int, int], Any] | None
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, str]]:
    """Pooled features of every readable file (decoded on a worker thread while the network
    runs), their labels, and the skipped files with the reasons."""
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in extractor.layers}
    labels: list[np.ndarray] = []
    stream = batches(collection, load=collection.reader(preprocess=m.preprocess),
                     batch_size=batch_size, progress=progress)
    with stream:
        for batch in stream:
            pooled = {n: [None] * len(batch) for n in extractor.layers}
            for group in batch.groups:
                got = extractor.run(torch.from_numpy(group.images))
                for n in extractor.layers:
                    _check_features(got.meta[n])
                    for pos, row in zip(group.positions, _pool(got.maps[n], n).cpu()):
                        pooled[n][int(pos)] = row
            if len(batch):
                for n in extractor.layers:
                    chunks[n].append(torch.stack(pooled[n]))
                labels.append(batch.labels)
    skipped = {str(s.item.path): s.reason for s in stream.skipped}
    if not labels:
        raise ConfigError(f"none of the {len(collection)} files could be read as an image "
                          f"(first: {next(iter(skipped.values()), 'no files')}).")
    return ({n: torch.cat(v) for n, v in chunks.items()},
            torch.from_numpy(np.concatenate(labels)).long(), skipped)


def _stored_features(model: Any, store: Store, layers: str | Sequence[str] | None,
                     progress: Callable[[int, int], Any] | None
                     ) -> tuple[str, tuple[str, ...], dict[str, torch.Tensor], torch.Tensor,
                                dict[str, str]]:
    """As :func:`_features`, from a store (no forward pass): ``(model name, classes, pooled
    features, labels, skipped)``; the store's maps are read one chunk at a time."""
    source = use_store(model, store, layers)
    header = store.header
    if store.labels is None or not store.classes:
        raise ConfigError(f"the store '{source.where}' has no class labels (it was extracted "
                          f"from '{printable(header.source)}': "
                          f"{KIND_TEXT.get(header.kind, header.kind)}): a probe needs a store "
                          "extracted from class folders (DATA_DIR/<class>/<image>).")
    if len(store.classes) < 2:
        raise ConfigError(f"the store '{source.where}' has one class ("
                          f"'{printable(store.classes[0])}'): a probe needs at least 2 classes.")
    other = [k for k in source.layers if header.pool.get(k, "none") not in ("none", "avg")]
    if other:
        raise ConfigError(f"the store '{source.where}' holds layer '{printable(other[0])}' "
                          f"{header.pool[other[0]]}-pooled, but a probe averages each map over "
                          "space: extract with --pool avg (one average per channel) or --pool "
                          "none.")
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in source.layers}
    for _, maps in source.chunks(progress):
        for n, values in maps.items():
            chunks[n].append(_pool(values, n))
    labels = torch.from_numpy(np.asarray(store.labels)[source.done]).long()
    skipped = {store.paths[i]: reason for i, reason in source.skipped().items()}
    return (source.model_name, tuple(store.classes),
            {n: torch.cat(v) for n, v in chunks.items()}, labels, skipped)


def _split(labels: torch.Tensor, classes: Sequence[str], test_fraction: float, seed: int,
           skipped: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified split: per class a seeded permutation, ``round(n * fraction)`` (>= 1) held out."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c, name in enumerate(classes):
        index = np.flatnonzero(labels.numpy() == c)
        if len(index) < 2:
            raise ConfigError(
                f"class '{name}' has {len(index)} readable image(s) ({skipped} file(s) skipped "
                "in all); a train/test split needs at least 2 per class.")
        index = index[rng.permutation(len(index))]
        n_test = min(len(index) - 1, max(1, round(len(index) * test_fraction)))
        test += index[:n_test].tolist()
        train += index[n_test:].tolist()
    return torch.tensor(sorted(train)), torch.tensor(sorted(test))


def _fit(x: torch.Tensor, y: torch.Tensor, k: int, l2: float, max_iter: int = 300
         ) -> tuple[torch.Tensor, ...]:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS, float64).

    Starts from zeros, so the fit is deterministic; ``l2 / 2 * |W|^2`` is added to the mean
    cross-entropy.
    """
    x = x.double()
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    z = (x - mean) / std
    weight = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-7, tolerance_change=1e-10,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * l2 * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return (weight.detach().float(), bias.detach().float(), mean.float(), std.float())


def _accuracy(p: LinearProbe, x: torch.Tensor, y: torch.Tensor) -> float:
    return int((p.predict(x) == y).sum()) / len(y)


def check_options(test_fraction: float, batch_size: int, l2: float) -> None:
    if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ConfigError(f"test_fraction must be between 0 and 1, got {test_fraction!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not (
            1 <= batch_size <= 4096):
        raise ConfigError(f"batch_size must be an integer >= 1 (and at most 4,096), got "
                          f"{batch_size!r}.")
    if not isinstance(l2, (int, float)) or l2 < 0:
        raise ConfigError(f"l2 must be >= 0, got {l2!r}.")


def probe(
    model: Any,
    data_dir: str | os.PathLike[str] | Store,
    *,
    layers: str | Sequence[str] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    batch_size: int = 32,
    l2: float = 1e-3,
    progress: Callable[[int, int], Any] | None = None,
) -> ProbeResult:
    """Linear probes: how well a linear classifier reads the classes off each layer's maps.

    Every requested layer comes from one forward pass per batch (an
    :class:`~featuremap.extraction.Extractor` that stops after the last of them; the model's own
    preprocessing). Each layer's maps ``(N, C, H, W)`` (transformer tokens and channels-last
    outputs laid out as maps by the engine) are averaged over ``H, W`` to ``(N, C)``; ``(N, D)``
    outputs are used as they are; other outputs (attention tensors, a Swin block's windows) are
    refused.
    Per layer, a multinomial logistic regression on features standardised with the training
    split's mean and std (L-BFGS from zeros, ``l2``) is fit on the training split and scored on
    the held-out split. The split is stratified and seeded: per class, a seeded permutation of
    its readable files (sorted by path) holds out ``round(n * test_fraction)`` of them (at
    least 1, at most ``n - 1``). Same data, seed and machine: same result.

    ``data_dir`` may instead be a store (its folder, or a :class:`~featuremap.store.Store`)
    that :func:`featuremap.extract_dataset` wrote from class folders, with ``pool="none"`` or
    ``"avg"``: then no forward pass runs; each layer's stored maps are read one chunk at a time
    and averaged as above (``"avg"`` stores hold the averages already). The images the
    extraction could not read are in ``skipped``; an incomplete store is refused. The result
    equals the one on the folder itself (the same maps, the same split and fit; exactly, for a
    float32 store extracted with the same batch size).

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``; with a store,
            None (the stored maps as they are) or the model that made it (checked: its name,
            weights digest and preprocessing).
        data_dir: a folder with one sub-folder per class holding image files (any format
            :func:`featuremap.images.load_image` reads; hidden files are ignored; files that
            cannot be read are skipped and listed in ``skipped``), or a store.
        layers: layer names, globs or regexes (``named_modules()`` paths); with a store, among
            its layers (default: all of them).
        test_fraction: share of each class held out, in (0, 1).
        seed: seed of the split.
        batch_size: images per forward pass (unused with a store).
        l2: L2 penalty on the probe weights.
        progress: called as ``progress(files_done, files_total)`` after each batch.

    Returns:
        A :class:`ProbeResult`; ``result.save("probes.safetensors")`` writes it.

    Raises:
        ConfigError: a missing data folder or not a folder, no class sub-folders, fewer than 2
            classes, no readable image, a class with fewer than 2 readable images, bad options,
            a layer whose output is neither maps nor one vector per image; for a store: one
            without class labels, pooled other than none or avg, incomplete, or made with
            another model than ``model``.
        UnknownNameError: an unknown layer (for a store: one it does not hold).

    Example:
        >>> r = probe(load_model("shapes"), "shapes_data", layers=["backbone.block1",
        ...           "backbone.block4"])  # doctest: +SKIP
        >>> r.test_accuracy  # doctest: +SKIP
        {'backbone.block1': 0.46, 'backbone.block4': 1.0}
    """
    check_options(test_fraction, batch_size, l2)
    store = as_store(data_dir)
    if store is None:
        m = folder_model(model, layers)
        collection = open_collection(data_dir, kind="classes", min_classes=2, suffixes=None)
        classes = tuple(collection.classes)
        extractor = Extractor(m, layers)
        features, labels, skipped = _features(m, extractor, collection, batch_size, progress)
        model_name = m.name
    else:
        model_name, classes, features, labels, skipped = _stored_features(
            model, store, layers, progress)
    train, test = _split(labels, classes, test_fraction, seed, len(skipped))
    probes = {}
    for name, x in features.items():
        weight, bias, mean, std = _fit(x[train], labels[train], len(classes), l2)
        p = LinearProbe(name, x.shape[1], 0.0, 0.0, weight, bias, mean, std)
        p.train_accuracy = _accuracy(p, x[train], labels[train])
        p.test_accuracy = _accuracy(p, x[test], labels[test])
        probes[name] = p
    return ProbeResult(model_name, classes, probes, len(train), len(test), skipped, seed,
                       float(test_fraction), float(l2))

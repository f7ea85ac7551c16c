"""Layer similarity: linear CKA between the layers of one model, or of two, on the same images.

Centred kernel alignment (Kornblith et al., "Similarity of Neural Network Representations
Revisited", ICML 2019) compares two representations of the same ``n`` images through their
Gram matrices ``K = X Xᵀ`` and ``L = Y Yᵀ``::

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))

It is 1 for a layer with itself, and does not change under an orthogonal transform or an
isotropic scaling of either representation (it does change under an arbitrary invertible linear
map, unlike CCA), so it can compare layers of different widths, depths and networks.

Whole datasets do not fit in memory, so :func:`similarity` estimates it by minibatches (Nguyen,
Raghu and Kornblith, "Do Wide and Deep Networks Learn the Same Things?", ICLR 2021): per
minibatch of ``n >= 4`` images, the unbiased HSIC estimator (Song et al. 2012) of every pair of
layers, averaged over minibatches (weighted by their sizes), then the ratio above. Each
minibatch's HSIC estimate is unbiased, so the average converges to the full-data value as images
are added, whatever the minibatch size; only ``n`` x ``n`` Gram matrices are ever held.

Features: by default each image's maps are flattened, ``(n, C*H*W)`` (as Kornblith et al.):
position matters. ``pool="avg"`` averages each channel over space first, ``(n, C)``: what the
channels say, wherever they say it (cheaper, and comparable across input sizes). Features are
centred per minibatch and the Gram matrices formed in float64 (the unbiased estimator is exactly
invariant to a shift of the features, so centring only guards against rounding).

Example:
    >>> s = similarity(load_model("shapes"), "shapes-data", layers="backbone.block*")
    ...     # doctest: +SKIP
    >>> print(s)  # doctest: +SKIP
    >>> fig = plot_similarity(s)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featuremap.budget import check_size
from featuremap.datasets import Collection, batches, open_collection
from featuremap.errors import ConfigError, printable
from featuremap.model import Model, as_model

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from featuremap.store import Store

__all__ = [
    "MIN_BATCH",
    "POOLS",
    "Similarity",
    "cka",
    "gram",
    "minibatch_cka",
    "plot_similarity",
    "similarity",
    "unbiased_hsic",
]

MIN_BATCH = 4
"""The unbiased HSIC estimator divides by ``n (n - 3)``: a minibatch needs at least 4 images."""
POOLS = ("none", "avg")
CELL_VALUES = 144  # values are written in the heatmap's cells up to this many cells (12 x 12)


# ----------------------------------------------------------------------------- the estimator


def _features(values: torch.Tensor, pool: str) -> torch.Tensor:
    """``(n, D)`` float64, centred: the maps flattened (or averaged over space), one row each."""
    x = values.detach()
    if pool == "avg" and x.dim() > 2:
        x = x.flatten(2).mean(2)
    x = x.reshape(x.shape[0], -1).to(torch.float64)
    return x - x.mean(0, keepdim=True)


def gram(values: torch.Tensor | np.ndarray, *, pool: str = "none") -> torch.Tensor:
    """The linear Gram matrix ``(n, n)`` (float64) of ``n`` images' features.

    Args:
        values: ``(n, ...)``: maps ``(n, C, H, W)``, vectors ``(n, D)``, anything with one row
            per image.
        pool: ``"none"`` (flatten each image's values) or ``"avg"`` (average each channel over
            space first).
    """
    x = _features(torch.as_tensor(values), pool)
    return x @ x.T


def unbiased_hsic(k: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The unbiased HSIC estimator (Song et al. 2012) of every pair of Gram matrices.

    ``HSIC = [tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1] / (n (n-3))``, where ``K̃``
    is ``K`` with its diagonal set to zero.

    Args:
        k: ``(A, n, n)`` symmetric Gram matrices (K); g: ``(B, n, n)`` (L), of the same ``n``
            images.

    Returns:
        ``(A, B)``.
    """
    n = k.shape[-1]
    if n < MIN_BATCH:
        raise ConfigError(f"the unbiased HSIC needs at least {MIN_BATCH} images, got {n}.")
    eye = torch.eye(n, dtype=torch.bool, device=k.device)
    k, g = k.masked_fill(eye, 0), g.masked_fill(eye, 0)
    trace = torch.einsum("aij,bij->ab", k, g)
    sums = k.sum((1, 2))[:, None] * g.sum((1, 2))[None, :]
    rows = k.sum(2) @ g.sum(2).T
    return (trace + sums / ((n - 1) * (n - 2)) - 2 * rows / (n - 2)) / (n * (n - 3))


class _Accumulator:
    """Sums over minibatches of ``n * HSIC`` for every pair of layers and for each layer with
    itself; :meth:`value` gives the CKA matrix."""

    def __init__(self) -> None:
        self.cross: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None
        self.columns: torch.Tensor | None = None
        self.images = self.batches = 0

    def add(self, k: torch.Tensor, g: torch.Tensor | None = None) -> None:
        """One minibatch: Gram matrices ``k`` ``(A, n, n)`` and ``g`` ``(B, n, n)`` (None: the
        layers of ``k`` against themselves)."""
        n = k.shape[-1]
        if g is None:
            cross = unbiased_hsic(k, k)
            rows = columns = torch.diagonal(cross)
        else:
            cross = unbiased_hsic(k, g)
            rows = torch.diagonal(unbiased_hsic(k, k))
            columns = torch.diagonal(unbiased_hsic(g, g))
        if self.cross is None:
            self.cross, self.rows, self.columns = n * cross, n * rows, n * columns
        else:
            self.cross += n * cross
            self.rows += n * rows
            self.columns += n * columns
        self.images += n
        self.batches += 1

    def flat(self) -> tuple[np.ndarray, np.ndarray]:
        """Which rows' and which columns' layers do not vary (HSIC with themselves <= 0)."""
        return (self.rows <= 0).cpu().numpy(), (self.columns <= 0).cpu().numpy()

    def value(self) -> np.ndarray:
        """``(A, B)`` CKA; NaN where a layer's features do not vary (HSIC with itself <= 0)."""
        if self.cross is None:
            raise ConfigError(f"no minibatch of at least {MIN_BATCH} images was seen: CKA needs "
                              "more images.")
        rows, columns = self.rows.clamp(min=0), self.columns.clamp(min=0)
        norm = torch.sqrt(rows[:, None] * columns[None, :])
        return torch.where(norm > 0, self.cross / norm, torch.nan).cpu().numpy()


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or (
            batch_size < MIN_BATCH):
        raise ConfigError(f"batch_size must be an integer >= {MIN_BATCH} (the unbiased HSIC "
                          f"estimator needs n > 3 images per minibatch), got {batch_size!r}.")
    return int(batch_size)


def check_settings(batch_size: Any, pool: Any) -> int:
    """The minibatch size (an integer >= 4) and the pooling (``"none"`` or ``"avg"``) of
    :func:`similarity`, checked; returns the size."""
    size = _check_batch_size(batch_size)
    if pool not in POOLS:
        raise ConfigError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}.")
    return size


def _pairs(x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dim() < 2 or y.dim() < 2 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"x and y must hold one row per image, the same images: got shapes "
                          f"{tuple(x.shape)} and {tuple(y.shape)}.")
    if x.shape[0] < MIN_BATCH:
        raise ConfigError(f"CKA needs at least {MIN_BATCH} images, got {x.shape[0]}.")
    return x, y


def cka(x: Any, y: Any, *, unbiased: bool = True) -> float:
    """Linear CKA of two representations of the same images, all in one batch.

    Args:
        x: ``(n, ...)`` one row of features per image (flattened); y: ``(n, ...)``, the same
            images.
        unbiased: the unbiased HSIC estimator (what :func:`similarity` averages over
            minibatches); False: the plain, biased one of Kornblith et al. 2019.

    Returns:
        The CKA (NaN when one representation does not vary).

    Example:
        >>> x = torch.randn(50, 8, dtype=torch.float64)
        >>> round(cka(x, 3 * x), 6)
        1.0
    """
    x, y = _pairs(x, y)
    k, g = gram(x)[None], gram(y)[None]
    if unbiased:
        acc = _Accumulator()
        acc.add(k, g)
        return float(acc.value()[0, 0])
    cross, kk, gg = (float((a * b).sum()) for a, b in ((k, g), (k, k), (g, g)))
    return cross / math.sqrt(kk * gg) if kk > 0 and gg > 0 else math.nan


def minibatch_cka(x: Any, y: Any, *, batch_size: int = 64) -> float:
    """Linear CKA estimated by minibatches of consecutive rows (as :func:`similarity` does);
    a last minibatch of fewer than 4 rows is left out.

    Example:
        >>> x = torch.randn(200, 8, dtype=torch.float64)
        >>> round(minibatch_cka(x, -x, batch_size=50), 6)
        1.0
    """
    x, y = _pairs(x, y)
    size = _check_batch_size(batch_size)
    acc = _Accumulator()
    for start in range(0, x.shape[0], size):
        if min(x.shape[0], start + size) - start >= MIN_BATCH:
            acc.add(gram(x[start:start + size])[None], gram(y[start:start + size])[None])
    return float(acc.value()[0, 0])


# ----------------------------------------------------------------------------- the result


@dataclass
class Similarity:
    """Linear CKA between the layers of one model (rows and columns the same layers) or of two
    (rows: ``model``'s layers, columns: ``other``'s), on the same images.

    Attributes:
        matrix: ``(rows, columns)`` CKA; NaN where a layer's features do not vary. The unbiased
            estimator can fall slightly outside ``[0, 1]``.
        rows, columns: the layer names.
        model_name: the first model; other_name: the second, or None for one model.
        images: the images used; batches: the minibatches they came in; batch_size: the
            largest minibatch.
        pool: ``"none"`` (maps flattened) or ``"avg"`` (each channel averaged over space).
        notes: what the caller should know (skipped files, images left out, undefined values).
        skipped: ``{path: reason}`` of the files that could not be read.
    """

    matrix: np.ndarray
    rows: list[str]
    columns: list[str]
    model_name: str
    other_name: str | None
    images: int
    batches: int
    batch_size: int
    pool: str
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        who = (f"{self.model_name}" if self.other_name is None
               else f"{self.model_name} (rows) and {self.other_name} (columns)")
        how = "maps flattened" if self.pool == "none" else "channels averaged over space"
        return (f"linear CKA of {who}: {self.images:,} images in {self.batches} minibatch"
                f"{'es' if self.batches != 1 else ''} of up to {self.batch_size}, {how}")

    def __str__(self) -> str:
        width = max(len(printable(n)) for n in self.rows) + 5
        head = " " * width + "".join(f"{f'[{j}]':>7s}" for j in range(len(self.columns)))
        lines = [printable(self.title), head]
        for i, name in enumerate(self.rows):
            cells = "".join(f"{v:7.3f}" for v in self.matrix[i])
            lines.append(f"{f'[{i}] ' + printable(name):{width}s}{cells}")
        if self.other_name is not None or self.columns != self.rows:
            lines.append("columns: " + ", ".join(f"[{j}] {printable(n)}"
                                                 for j, n in enumerate(self.columns)))
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the matrix as lists (NaN as None), names, counts, notes."""
        matrix = [[None if math.isnan(v) else float(v) for v in row] for row in self.matrix]
        return {"model": self.model_name, "other": self.other_name, "rows": list(self.rows),
                "columns": list(self.columns), "matrix": matrix, "images": self.images,
                "batches": self.batches, "batch_size": self.batch_size, "pool": self.pool,
                "notes": list(self.notes), "skipped": dict(self.skipped)}

    def _repr_png_(self) -> bytes:
        from featuremap.report import png_bytes

        return png_bytes(plot_similarity(self))


# ------------------------------------------------------------------------- running models


class _Side:
    """One model's layers: one forward per minibatch, stopped after its last layer, and the
    Gram matrix of each layer."""

    def __init__(self, model: Any, layers: str | Sequence[str], pool: str) -> None:
        self.model: Model = as_model(model)
        self.layers = self.model.resolve(layers)
        self.engine = self.model.capture(self.layers, keep="buffers")
        self.pool = pool
        self._checked: set[tuple[int, ...]] = set()
        pre = self.model.preprocess
        self.mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1)

    def grams(self, batch: torch.Tensor, *, normalise: bool) -> torch.Tensor:
        """``(layers, n, n)`` of a batch (images in ``[0, 1]`` when ``normalise``)."""
        if normalise and batch.shape[1] == self.mean.shape[1]:
            batch = (batch - self.mean) / self.std
        batch = batch.to(self.model.device)
        if tuple(batch.shape[1:]) not in self._checked:
            self._check(batch)
        got = self.engine(batch)
        # small (n x n) and on the CPU: two models on two devices still add up
        return torch.stack([gram(got.maps[n], pool=self.pool) for n in self.layers]).cpu()

    def _check(self, batch: torch.Tensor) -> None:
        """Refuse, from one image's pass, layers without one row of features per image, and a
        minibatch whose maps and float64 features would not fit."""
        got = self.engine(batch[:1])
        for name, meta in got.meta.items():
            if meta.layout == "other":
                raise ConfigError(f"layer '{name}' ({meta.type}) gives {meta.source_shape}, "
                                  f"neither feature maps nor one vector per image: "
                                  f"{meta.reason}; pick layers with maps ('featuremap layers "
                                  "MODEL' lists every layer's output shape).")
        sizes = [math.prod(got.maps[n].shape[1:]) for n in self.layers]
        n = batch.shape[0]
        check_size(n * (4 * sum(sizes) + 16 * max(sizes)),
                   what=f"the maps of {len(sizes)} layer(s) of {self.model.name} for a minibatch "
                        f"of {n} images of {' x '.join(map(str, batch.shape[1:]))}",
                   fix="use a smaller batch_size, fewer layers or pool='avg'")
        self._checked.add(tuple(batch.shape[1:]))


def _tensor_batches(source: Any, batch_size: int) -> Iterator[torch.Tensor]:
    x = torch.as_tensor(source)
    if x.dim() != 4:
        raise ConfigError(f"images given as an array must be (N, C, H, W), got "
                          f"{tuple(x.shape)}.")
    for start in range(0, x.shape[0], batch_size):
        yield x[start:start + batch_size].float()


def _run_models(a: _Side, b: _Side | None, source: Any, batch_size: int,
                progress: Callable[[int, int], Any] | None
                ) -> tuple[_Accumulator, list[str], dict[str, str]]:
    """Accumulate HSIC over the minibatches of ``source``: a tensor (used as given) or a
    dataset (each model's normalisation applied to the same decoded images)."""
    acc, left_out, skipped, pairs = _Accumulator(), [0], {}, False

    def add(images: torch.Tensor, normalise: bool) -> None:
        if images.shape[0] < MIN_BATCH:
            left_out[0] += images.shape[0]
            return
        k = a.grams(images, normalise=normalise)
        acc.add(k, None if b is None else b.grams(images, normalise=normalise))

    if isinstance(source, (torch.Tensor, np.ndarray)):
        for images in _tensor_batches(source, batch_size):
            add(images, False)
    else:
        collection = source if isinstance(source, Collection) else open_collection(source)
        pre = a.model.preprocess
        raw = dataclasses.replace(pre, mean=(0.0,) * pre.channels, std=(1.0,) * pre.channels)
        pairs = collection.kind == "pairs"
        if pairs:  # image/mask pairs are read at their own size (as dissect reads them)
            raw = dataclasses.replace(raw, resize=None, crop=None)
        with batches(collection, load=collection.reader(preprocess=raw), batch_size=batch_size,
                     progress=progress) as stream:
            for batch in stream:
                for group in batch.groups:
                    add(torch.from_numpy(group.images), True)
        skipped = {printable(os.fspath(s.item.path)): s.reason for s in stream.skipped}
    notes = []
    if b is not None and pairs:
        notes.append("both models saw the images of the image/mask pairs at their own size, "
                     "each with its own normalisation")
    elif b is not None and not isinstance(source, (torch.Tensor, np.ndarray)):
        size = (a.model.preprocess.resize, a.model.preprocess.crop)
        if (b.model.preprocess.resize, b.model.preprocess.crop) != size:
            notes.append(f"both models saw the images resized and cropped as {a.model.name} "
                         f"expects ({a.model.preprocess.describe()}), each with its own "
                         "normalisation")
    if left_out[0]:
        notes.append(f"{left_out[0]} image(s) left out: minibatches of fewer than {MIN_BATCH} "
                     "images (the end of the data, or images of another size) give no estimate")
    if skipped:
        notes.append(f"{len(skipped)} file(s) could not be read and were skipped")
    return acc, notes, skipped


# ------------------------------------------------------------------------------- stores


def _run_stores(model: Any, store: Store, layers: Any, other: Any, other_layers: Any,
                batch_size: int, pool: str) -> tuple[_Accumulator, list[str], Any, Any]:
    """Accumulate HSIC over minibatches of the maps a store (and another store of the same
    images) holds: no network runs; the maps are read one minibatch at a time.

    Returns:
        ``(accumulator, notes, what is read of the store, of the other store or None)``.
    """
    from featuremap.tasks.fromstore import as_store, use_store

    a, b = use_store(model, store, layers), None
    rows = a.done
    if other is not None:
        second = as_store(other)
        if second is None:
            raise ConfigError("with a store as the source, the other side must be a store of "
                              "the same images too (or give a dataset folder to run both models "
                              "on it).")
        if list(second.paths) != list(store.paths):
            raise ConfigError(f"the stores '{a.where}' and '{printable(second.path)}' hold "
                              "different images: CKA compares layers on the same images.")
        b = use_store(None, second, other_layers if other_layers is not None else layers)
        rows = np.intersect1d(rows, b.done)
    acc = _Accumulator()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        if len(chunk) >= MIN_BATCH:
            k = _stored_grams(a.store, a.layers, chunk, pool)
            acc.add(k, None if b is None else _stored_grams(b.store, b.layers, chunk, pool))
    left = len(rows) - acc.images
    notes = [f"{left} image(s) left out: a last minibatch of fewer than {MIN_BATCH} images "
             "gives no estimate"] if left else []
    return acc, notes, a, b


def _stored_grams(store: Store, layers: list[str], rows: np.ndarray, pool: str) -> torch.Tensor:
    """``(layers, n, n)`` of the stored images ``rows`` (ascending), read as one range."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    return torch.stack([gram(np.asarray(store[k][lo:hi])[rows - lo], pool=pool)
                        for k in layers])


# ------------------------------------------------------------------------------ the door


def similarity(model: Any, source: Any, *, layers: str | Sequence[str] | None = None,
               other: Any = None, other_layers: str | Sequence[str] | None = None,
               batch_size: int = 64, pool: str = "none",
               progress: Callable[[int, int], Any] | None = None) -> Similarity:
    """Linear CKA between every pair of layers of one model, or between the layers of two
    models, on the same images, estimated by minibatches (see the module docstring).

    Args:
        model: a model from :func:`featuremap.load_model`, a :class:`~featuremap.model.Model`
            or an ``nn.Module``; with a store as ``source``, None or the model that made it.
        source: a dataset (a folder, class folders, a list file, a glob or a
            :class:`~featuremap.datasets.Collection`: decoded once, each model's normalisation
            applied to the same images, the first model's resize and crop; image/mask pairs
            at their own size, as :func:`featuremap.dissect` reads them), a tensor or array
            ``(N, C, H, W)`` of prepared images (used as given by both models), or a store
            written by :func:`featuremap.extract_dataset` (its maps read one minibatch at a
            time, no network runs).
        layers: names, globs or regexes of ``model``'s layers (a store's: default all).
        other: a second model (two checkpoints of one architecture, or two architectures), or
            with a store as ``source``, a store of the same images; None compares ``model``'s
            layers with each other.
        other_layers: ``other``'s layers (default: ``layers``).
        batch_size: images per minibatch (>= 4); one forward pass per minibatch per model,
            stopped after its last requested layer.
        pool: ``"none"`` (each image's maps flattened, ``C*H*W`` values) or ``"avg"`` (each
            channel averaged over space, ``C`` values).
        progress: ``progress(done, total)`` as a dataset's batches are handed out.

    Returns:
        :class:`Similarity`: the matrix, the layer names, what was used.

    Raises:
        UnknownNameError: an unknown layer (with a did-you-mean).
        ConfigError: ``batch_size`` < 4, an unknown pool (:func:`check_settings`), layers
            without features per image, no images, a minibatch too large for memory (refused
            before it runs).

    Example:
        >>> s = similarity(load_model("shapes"), "shapes-data", layers="backbone.block*",
        ...                batch_size=32)  # doctest: +SKIP
        >>> s.matrix.shape  # doctest: +SKIP
        (4, 4)
    """
    from featuremap.tasks.fromstore import as_store

    size = check_settings(batch_size, pool)
    store = as_store(source) if not isinstance(source, (torch.Tensor, np.ndarray)) else None
    if store is not None:
        acc, notes, a, b = _run_stores(model, store, layers, other, other_layers, size, pool)
        names = (a.model_name, None if b is None else b.model_name)
        rows, columns = a.layers, (a.layers if b is None else b.layers)
        skipped = {printable(store.paths[i]): r for i, r in a.skipped().items()}
    else:
        if model is None or layers is None:
            raise ConfigError("name a model and its layers (model and layers=...): only a "
                              "store's maps can be read without a model.")
        first = _Side(model, layers, pool)
        second = None if other is None else _Side(
            other, other_layers if other_layers is not None else layers, pool)
        acc, notes, skipped = _run_models(first, second, source, size, progress)
        names = (first.model.name, None if second is None else second.model.name)
        rows, columns = first.layers, (first.layers if second is None else second.layers)
    if names[1] is not None and names[1] == names[0]:  # two checkpoints of one network
        names = (names[0], f"{names[1]} (other)")
    matrix = acc.value()
    flat_rows, flat_columns = acc.flat()
    undefined = [n for n, flat in zip(rows, flat_rows) if flat]
    undefined += [n for n, flat in zip(columns, flat_columns) if flat and other is not None]
    if undefined:
        notes.append(f"undefined (NaN) where a layer's features are the same for every image: "
                     f"{', '.join(printable(n) for n in undefined)}")
    return Similarity(matrix, list(rows), list(columns), names[0], names[1], acc.images,
                      acc.batches, size, pool, notes, skipped)


# ------------------------------------------------------------------------------ figure


def plot_similarity(result: Similarity, *, values: bool | None = None) -> Figure:
    """The CKA matrix as a heatmap: layer names on both axes, a colour bar from 0 to 1, and the
    values written in the cells when there are few (up to 12 x 12).

    Args:
        result: what :func:`similarity` returned.
        values: write the values in the cells (default: when there are few).
    """
    from matplotlib import colormaps

    from featuremap.plot.figure import literal_text, new_figure, wrap_title
    from featuremap.plot.scale import SEQUENTIAL

    rows, columns = len(result.rows), len(result.columns)
    label = max(len(n) for n in (*result.rows, *result.columns))
    width = 2.8 + 0.5 * columns + 0.065 * label
    fig = new_figure(max(5.0, width), max(3.6, 1.9 + 0.45 * rows + 0.065 * label),
                     layout="constrained")
    ax = fig.add_subplot()
    cmap = colormaps[SEQUENTIAL].with_extremes(bad="0.8")  # NaN cells grey
    image = ax.imshow(np.ma.masked_invalid(result.matrix), cmap=cmap, vmin=0, vmax=1,
                      interpolation="nearest")
    ax.set_xticks(range(columns), [printable(n) for n in result.columns], rotation=45,
                  ha="right", rotation_mode="anchor", fontsize=8)
    ax.set_yticks(range(rows), [printable(n) for n in result.rows], fontsize=8)
    ax.set_xlabel(result.other_name or result.model_name, fontsize=9)
    ax.set_ylabel(result.model_name, fontsize=9)
    if values if values is not None else rows * columns <= CELL_VALUES:
        for (i, j), v in np.ndenumerate(result.matrix):
            ax.text(j, i, "nan" if math.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    fontsize=7, color="black" if not v < 0.6 else "white")
    bar = fig.colorbar(image, ax=ax, shrink=0.85)
    bar.set_label("linear CKA", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    # over the whole figure (the colour bar included), so that a long title never runs into it
    fig.suptitle(wrap_title(result.title, fig, 9), fontsize=9)
    return literal_text(fig)

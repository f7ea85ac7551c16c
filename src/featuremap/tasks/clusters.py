"""Segmentation without training: k-means of the per-pixel feature vectors of a few layers.

The layers' maps come from one forward pass; each is upsampled (bilinear) to the preprocessed
input size and the maps are concatenated, so every pixel has one vector of all their channels.
A 1x1 projection and bilinear upsampling are both linear, so the standardisation and the
projection onto principal components are applied at each layer's own resolution and only the
projected maps are upsampled.

Example:
    >>> seg = cluster_segments(load_model("shapes"), "sample:coins",  # doctest: +SKIP
    ...                        layers=["backbone.block1", "backbone.block2"], k=3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from featuremap.errors import ConfigError
from featuremap.tasks.segmentation import Segmentation, upsample
from featuremap.tasks.topk import one_image

__all__ = ["PCA_DIMS", "check_k", "cluster_maps", "cluster_segments", "pixel_features"]

PCA_DIMS = 32  # default dimensions k-means sees (principal components of the pixel features)
_FIT_PIXELS = 16_384  # pixels (drawn by seed) that fit the standardisation and the PCA
_KMEANS_INITS, _KMEANS_ITERS = 3, 60


def cluster_segments(
    model: Any,
    image: Any,
    *,
    layers: str | Sequence[str],
    k: int = 4,
    seed: int = 0,
    dims: int | None = PCA_DIMS,
) -> Segmentation:
    """Segment an image without training: k-means of its per-pixel feature vectors.

    The layers' maps come from one forward pass; each is upsampled (bilinear) to the
    preprocessed input size and the maps are concatenated, so every pixel has one vector of all
    their channels. Channels are standardised (zero mean, unit variance over the pixels) and,
    when there are more than ``dims``, projected onto their first ``dims`` principal components
    (for speed: k-means then works on ``dims`` numbers per pixel). Mean, variance and components
    are fitted on up to 16,384 pixels drawn by ``seed`` (all pixels of images up to 128 x 128).
    k-means (k-means++ start, best of 3 starts) is deterministic for a seed; segments are
    numbered by size, the largest is ``segment 0``.

    Args:
        model: a model from :func:`featuremap.load_model` (its preprocessing is applied) or an
            ``nn.Module``.
        image: a path, ``"sample:NAME"``, PIL image, array, or a tensor used as it is.
        layers: layer names, globs or regexes whose outputs are ``(N, C, H, W)`` maps.
        k: the number of segments (2 .. number of pixels).
        seed: seeds the pixel sample and k-means.
        dims: principal components kept (None: no PCA, the standardised channels themselves).

    Returns:
        A :class:`Segmentation` with ``names`` ``["segment 0", ...]`` and no probabilities.

    Raises:
        ConfigError: ``k`` < 2 or above the number of pixels, a layer whose output is not
            feature maps, bad ``dims``.
        UnknownNameError: an unknown layer.

    Example:
        >>> seg = cluster_segments(load_model("shapes"), "sample:coins",  # doctest: +SKIP
        ...                        layers=["backbone.block1", "backbone.block2"], k=3)
        >>> seg.labels.shape, seg.names  # doctest: +SKIP
        ((64, 64), ['segment 0', 'segment 1', 'segment 2'])
    """
    check_k(k)
    if dims is not None and (not isinstance(dims, int) or dims < 1):
        raise ConfigError(f"dims must be a positive integer or None, got {dims!r}.")
    m, prepared = one_image(model, image, classifier=False)
    names = m.resolve(layers)
    size = tuple(prepared.batch.shape[-2:])
    if k > size[0] * size[1]:
        raise ConfigError(f"k={k} segments is more than the {size[0] * size[1]} pixels of the "
                          f"input ({size[0]} x {size[1]}); use a smaller k.")
    got = m.capture(names)(prepared.batch)
    maps = [got.map(n) for n in names]
    return Segmentation(cluster_maps(maps, size, k=k, seed=seed, dims=dims),
                        [f"segment {i}" for i in range(k)], prepared.picture(), None, "clusters",
                        m.name, names, prepared.notes + got.notes)


def cluster_maps(maps: Sequence[torch.Tensor], size: tuple[int, int], *, k: int, seed: int = 0,
                 dims: int | None = PCA_DIMS) -> np.ndarray:
    """Labels ``(H, W)`` int64 of k-means over the pixels of ``maps`` (each ``(1, C, h, w)``)
    upsampled to ``size``; segment 0 is the largest. Shared with the one-pass analysis."""
    with torch.no_grad():
        features = pixel_features([t[:1].detach().float().cpu() for t in maps], size,
                                   dims=dims, seed=seed)
        labels = _order_by_size(_kmeans(features, k, seed), k)
    return labels.reshape(size).numpy().astype(np.int64)


def check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ConfigError(f"k must be an integer >= 2 (the number of segments), got {k!r}.")


def _sample_pixels(maps: list[torch.Tensor], size: tuple[int, int], seed: int) -> torch.Tensor:
    """``(C_total, S)``: the upsampled maps at up to 16,384 pixels drawn by ``seed``.

    ``grid_sample`` at pixel centres with border padding equals ``F.interpolate`` (bilinear,
    ``align_corners=False``) at those pixels, without upsampling every channel.
    """
    h, w = size
    n = h * w
    g = torch.Generator().manual_seed(int(seed))
    index = torch.randperm(n, generator=g)[:_FIT_PIXELS] if n > _FIT_PIXELS else torch.arange(n)
    x = (2 * (index % w).float() + 1) / w - 1
    y = (2 * (index // w).float() + 1) / h - 1
    grid = torch.stack([x, y], -1).view(1, 1, -1, 2)
    return torch.cat([F.grid_sample(m, grid, mode="bilinear", padding_mode="border",
                                    align_corners=False)[0, :, 0] for m in maps])


def pixel_features(maps: list[torch.Tensor], size: tuple[int, int], *, dims: int | None,
                    seed: int) -> torch.Tensor:
    """``(H * W, d)``: standardised (and PCA-projected) per-pixel features of upsampled maps.

    Standardising and projecting are affine and bilinear upsampling preserves constants, so each
    layer is projected at its own resolution and only the ``d`` projected maps are upsampled.
    """
    sample = _sample_pixels(maps, size, seed).double()
    mean, std = sample.mean(1), sample.std(1)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant channels: keep at 0
    z = (sample - mean[:, None]) / std[:, None]
    channels = z.shape[0]
    if dims is not None and channels > dims:
        _, vectors = torch.linalg.eigh(z @ z.T / z.shape[1])
        basis = vectors[:, -dims:].flip(1)  # (C, d), largest variance first
    else:
        basis = torch.eye(channels, dtype=torch.float64)
    weight = (basis / std[:, None]).T.float()  # (d, C) applied to raw channels
    offset = (basis.T @ (mean / std)).float()
    out, start = -offset.view(1, -1, 1, 1), 0
    for m in maps:
        c = m.shape[1]
        part = F.conv2d(m, weight[:, start:start + c, None, None])
        out, start = out + upsample(part, size), start + c
    return out[0].reshape(out.shape[1], -1).T.contiguous()


def _kmeans(x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Labels ``(N,)`` of the best of a few k-means++ runs (lowest inertia), by ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    best, best_inertia = None, math.inf
    for _ in range(_KMEANS_INITS):
        centres = _kmeans_pp(x, k, g)
        for _ in range(_KMEANS_ITERS):
            labels = torch.cdist(x, centres).argmin(1)
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
            if torch.allclose(moved, centres, atol=1e-6):
                break
            centres = moved
        distances = torch.cdist(x, centres)
        labels = distances.argmin(1)
        inertia = float((distances.gather(1, labels[:, None]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _kmeans_pp(x: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """k-means++ start: each next centre drawn with probability proportional to D(x)^2."""
    first = int(torch.randint(x.shape[0], (1,), generator=g))
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(d2.sum())
        if total > 0:
            i = int(torch.multinomial(d2.double() / total, 1, generator=g))
        else:  # every pixel alike: any pixel will do
            i = int(torch.randint(x.shape[0], (1,), generator=g))
        centres.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return torch.stack(centres)


def _order_by_size(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Renumber labels so that 0 is the largest segment (ties: the lower old label first)."""
    counts = torch.bincount(labels, minlength=k)
    order = sorted(range(k), key=lambda i: (-int(counts[i]), i))
    remap = torch.empty(k, dtype=torch.long)
    remap[torch.tensor(order)] = torch.arange(k)
    return remap[labels]

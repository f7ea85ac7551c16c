"""A toy convolution layer: a named filter bank applied to an image by the transparent engine.

This is the tutorial made runnable: the image is a grid of numbers, every filter slides over it
and yields one feature map, and stride, padding, dilation and depth change what comes out.
:func:`compute_maps` returns the maps with the arithmetic that produced their shape and cost;
:func:`explain_value` shows the products behind one value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featuremap.arithmetic import ConvCost, conv_cost
from featuremap.conv import Explanation, conv2d, explain
from featuremap.errors import ConfigError
from featuremap.filters import FilterBank, filter_bank
from featuremap.images import load_image

__all__ = ["ToyMaps", "compute_maps", "explain_value"]

CHANNEL_MODES = ("luminance", "per-channel")


@dataclass(frozen=True)
class ToyMaps:
    """Feature maps of a filter bank on one image, with how they were made.

    Attributes:
        maps: ``(D, H', W')`` float32, one map per output channel.
        names: one name per map (``"sobel_x"``, or ``"sobel_x[R]"`` per channel).
        input: ``(C, H, W)`` the image the filters saw (grey for ``channels='luminance'``).
        cost: shape formulas, MACs, parameters and bytes of this layer, and its ``notes``.
        settings: stride, padding, dilation, padding_mode and channels as used.
    """

    maps: np.ndarray
    names: tuple[str, ...]
    input: np.ndarray
    cost: ConvCost
    settings: dict

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.maps.shape)  # type: ignore[return-value]

    @property
    def notes(self) -> tuple[str, ...]:
        """Sentences about the settings, e.g. which rows and columns of each map see only
        padding (the cost's notes; printed with it)."""
        return self.cost.notes

    def stats(self) -> list[tuple[str, tuple[int, int], float, float, float]]:
        """One row per map: name, (H', W'), min, mean, max."""
        return [(n, tuple(m.shape), float(m.min()), float(m.mean()), float(m.max()))
                for n, m in zip(self.names, self.maps)]

    COLUMNS = ("filter", "output shape", "min", "mean", "max")

    def rows(self) -> list[tuple[str, str, str, str, str]]:
        """:meth:`stats` as table cells."""
        return [(name, " x ".join(map(str, shape)), f"{lo:.4g}", f"{mean:.4g}", f"{hi:.4g}")
                for name, shape, lo, mean, hi in self.stats()]

    def __str__(self) -> str:
        rows = [self.COLUMNS, *self.rows()]
        widths = [max(len(r[k]) for r in rows) for k in range(len(self.COLUMNS))]
        lines = ["  ".join(c.ljust(w) if k == 0 else c.rjust(w)
                           for k, (c, w) in enumerate(zip(r, widths))) for r in rows]
        return "\n".join(lines + [str(self.cost)])

    def to_dict(self) -> dict:
        """Settings, per-map statistics and the layer's arithmetic (not the maps themselves)."""
        return {"names": list(self.names), "shape": list(self.maps.shape),
                "input_shape": list(self.input.shape),
                "settings": {k: (list(v) if isinstance(v, tuple) else v)
                             for k, v in self.settings.items()},
                "stats": [{"name": n, "shape": list(sh), "min": lo, "mean": mean, "max": hi}
                          for n, sh, lo, mean, hi in self.stats()],
                "cost": str(self.cost)}


def _prepare(image, channels: str, short_side: int | None, max_pixels: int | None) -> np.ndarray:
    if channels not in CHANNEL_MODES:
        raise ConfigError(f"channels must be 'luminance' or 'per-channel', got '{channels}'.")
    mode = "gray" if channels == "luminance" else "rgb"
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] in (1, 3):
        x = image.astype(np.float32, copy=False)
        if mode == "gray" and x.shape[0] == 3:
            x = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), x, axes=1)[None]
        return x
    return load_image(image, mode=mode, short_side=short_side, max_pixels=max_pixels)


def _bank(filters: str | Sequence[str] | FilterBank, depth: int | None, seed: int) -> FilterBank:
    bank = filters if isinstance(filters, FilterBank) else filter_bank(filters, seed=seed)
    if depth is None:
        return bank
    if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
        raise ConfigError(f"depth must be a positive integer, got {depth!r}.")
    if depth > bank.depth:
        raise ConfigError(
            f"depth {depth} asks for more filters than the bank has ({bank.depth}: "
            f"{', '.join(bank.names[:6])}{', ...' if bank.depth > 6 else ''}). Add filters, "
            "e.g. 'random:16' or 'gabor:16'."
        )
    return bank[:depth]  # type: ignore[return-value]


def compute_maps(
    image,
    filters: str | Sequence[str] | FilterBank = "sobel",
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    padding_mode: str = "zeros",
    depth: int | None = None,
    channels: str = "luminance",
    seed: int = 0,
    short_side: int | None = None,
    max_pixels: int | None = 50_000_000,
) -> ToyMaps:
    """Apply a filter bank to an image: one feature map per filter.

    Args:
        image: anything :func:`featuremap.images.load_image` takes (a path, ``"sample:NAME"``,
            a PIL image, an ``(H, W[, C])`` array) or a ``(C, H, W)`` float array.
        filters: a bank spec such as ``"sobel,gabor:8,random:4"`` or a ``FilterBank``.
        stride, padding, dilation, padding_mode: as in :func:`featuremap.conv.conv2d`; padding
            larger than ``dilation * (kernel - 1)`` is computed as torch does, and ``notes`` say
            which rows and columns of each map then see only padding.
        depth: keep only the first ``depth`` filters of the bank.
        channels: ``'luminance'`` (filters see the grey image) or ``'per-channel'`` (each
            filter applied to R, G and B separately: 3 maps per filter).
        seed: seed of ``random`` filters.
        short_side, max_pixels: passed to ``load_image``.

    Returns:
        :class:`ToyMaps`.

    Raises:
        FeaturemapError: a bad image, filter spec or setting, with the fix.

    Example:
        >>> m = compute_maps("sample:camera", "sobel", stride=2, padding=1)
        >>> m.maps.shape
        (2, 256, 256)
    """
    x = _prepare(image, channels, short_side, max_pixels)
    bank = _bank(filters, depth, seed)
    weight, names, groups = bank.weight(x.shape[0], mode=channels)
    maps = conv2d(x, weight, stride=stride, padding=padding, dilation=dilation, groups=groups,
                  padding_mode=padding_mode)
    cost = conv_cost(x.shape[1:], bank.kernel_size, depth=weight.shape[0],
                     in_channels=x.shape[0], stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=False, padding_mode=padding_mode)
    settings = {"stride": cost.stride, "padding": cost.padding, "dilation": cost.dilation,
                "padding_mode": padding_mode, "channels": channels, "groups": groups,
                "kernel_size": cost.kernel_size}
    return ToyMaps(maps=maps, names=tuple(names), input=x, cost=cost, settings=settings)


def explain_value(
    image,
    filters: str | Sequence[str] | FilterBank = "sobel",
    *,
    at: tuple[int, int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    padding_mode: str = "zeros",
    channels: str = "luminance",
    seed: int = 0,
    short_side: int | None = None,
    max_pixels: int | None = 50_000_000,
) -> Explanation:
    """The patch x kernel arithmetic behind map ``at = (d, y, x)`` of :func:`compute_maps`.

    Example:
        >>> e = explain_value("sample:camera", "sobel_x", at=(0, 100, 100), padding=1)
        >>> round(e.value, 4) == round(float(compute_maps(
        ...     "sample:camera", "sobel_x", padding=1).maps[0, 100, 100]), 4)
        True
    """
    x = _prepare(image, channels, short_side, max_pixels)
    bank = _bank(filters, None, seed)
    weight, names, groups = bank.weight(x.shape[0], mode=channels)
    channel_names = ("grey",) if channels == "luminance" else ("R", "G", "B")[: x.shape[0]]
    d = at[0] if isinstance(at, (tuple, list)) and at else 0
    map_name = names[d] if isinstance(d, int) and 0 <= d < len(names) else ""
    return explain(x, weight, at=at, stride=stride, padding=padding, dilation=dilation,
                   groups=groups, padding_mode=padding_mode, map_name=map_name,
                   channel_names=channel_names)

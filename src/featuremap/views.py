"""What ``show`` and ``overview`` compute: one layer's maps, or a network low to high.

Each is a library value that a face only prints (``str``), sends (``to_dict``) or draws
(``figure()``):

- :func:`show`: one layer of a network on one image, drawn as a channel grid (the ``top`` by
  mean activation, or chosen channels), as an overlay on the image (the channel mean or one
  channel), or as the layer's filters.
- :func:`overview`: the end of every stage (or chosen layers), low to high.

Both extract with the capture engine, name each layer's receptive field, and keep the notes of
what was assumed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from featuremap.errors import ConfigError, FeaturemapError, printable
from featuremap.extraction import FeatureMaps, extract
from featuremap.model import Model, as_model
from featuremap.summary import overview_layers

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["DRAWS", "LayerView", "Overview", "overview", "show"]

DRAWS = ("grid", "overlay", "kernels")
MAX_CHANNELS = 1024  # channels one figure draws at most (each is a subplot)


def _labels(m: Model, fm: FeatureMaps) -> dict[str, str]:
    """'field 68 px' for every extracted layer, at the size the images ran at ({} untraceable)."""
    from featuremap.receptive import field_labels

    try:
        return field_labels(m, fm.meta, input_size=tuple(fm.input_shape[-2:]))
    except FeaturemapError:
        return {}


def _count(value: Any, name: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
            low <= value <= high):
        raise ConfigError(f"{name} must be an integer from {low} to {high}, got {value!r}.")
    return int(value)


@dataclass
class LayerView:
    """One layer of a network on one image, and how to draw it.

    Attributes:
        maps: the extraction (one layer).
        layer: the layer's name; draw: ``"grid"``, ``"overlay"`` or ``"kernels"``.
        top, channels, shared_scale: what the grid shows.
        kernels: the layer's weights ``(D, C, kH, kW)`` for ``draw="kernels"``.
        weights: which weights the model had (for the title).
    """

    maps: FeatureMaps
    layer: str
    draw: str = "grid"
    top: int | None = 16
    channels: list[int] | None = None
    shared_scale: bool = False
    kernels: np.ndarray | None = field(default=None, repr=False)
    weights: str = ""

    @property
    def meta(self):
        return self.maps.meta[self.layer]

    def figure(self) -> Figure:
        """The picture: channel grid, overlay or filters."""
        from featuremap.plot import plot_filters, plot_layer, plot_overlay

        name, fm = self.layer, self.maps
        note = f"weights: {self.weights}" if self.weights else ""
        if self.draw == "kernels":
            return plot_filters(self.kernels, title=f"{fm.model_name} {name}:")
        if self.draw == "overlay":
            maps = fm.numpy()[name][0]
            heat = maps[self.channels[0]] if self.channels else maps.mean(0)
            what = (f"channel {self.channels[0]}" if self.channels
                    else f"mean of {maps.shape[0]} channels")
            return plot_overlay(fm.picture(0), heat, label=what,
                                title=f"{fm.model_name} {name} ({what}, {note})")
        return plot_layer(fm, name, top=self.top, channels=self.channels,
                          shared_scale=self.shared_scale, note=note)

    def __str__(self) -> str:
        meta, fm = self.meta, self.maps
        label = fm.fields.get(self.layer)
        line = (f"{printable(fm.model_name)} {printable(self.layer)} ({meta.type}): maps "
                f"{' x '.join(map(str, meta.shape[1:]))}"
                + (f", stride {meta.stride[0]:g}" if meta.stride else "")
                + (f", {label}" if label else "")
                + f"; input {' x '.join(map(str, fm.input_shape[1:]))}")
        return "\n".join([line] + [f"note: {n}" for n in fm.notes])

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "draw": self.draw, "top": self.top,
                "channels": self.channels, "shared_scale": self.shared_scale,
                "maps": self.maps.to_dict()}


def show(model: Any, image: Any, *, layer: str, draw: str = "grid", top: int | None = 16,
         channels: Sequence[int] | None = None, shared_scale: bool = False) -> LayerView:
    """One layer of ``model`` on ``image``, ready to print and draw.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module``.
        image: one image (a path, ``"sample:NAME"``, PIL image, array or tensor).
        layer: the layer (exact name, glob or regex naming one layer).
        draw: ``"grid"`` (the maps), ``"overlay"`` (the channel mean, or the first of
            ``channels``, over the image) or ``"kernels"`` (the layer's filters).
        top: the grid shows the ``top`` channels by mean activation (None or 0: all).
        channels: show exactly these channels instead.
        shared_scale: one colour scale for all channels of the grid.

    Raises:
        ConfigError: an unknown ``draw``, a layer without filters for ``"kernels"``, a layer
            whose output is not feature maps, channels out of range.

    Example:
        >>> view = show(load_model("shapes"), "docs/scene.png", layer="backbone.block2")
        >>> fig = view.figure()  # doctest: +SKIP
    """
    if draw not in DRAWS:
        raise ConfigError(f"draw must be one of {', '.join(DRAWS)}, got '{printable(draw)}'.")
    m = as_model(model)
    name = m.one_layer(layer)
    kernels = None
    if draw == "kernels":
        weight = getattr(dict(m.module.named_modules())[name], "weight", None)
        if weight is None or weight.dim() != 4:
            kind = type(dict(m.module.named_modules())[name]).__name__
            raise ConfigError(f"layer '{name}' ({kind}) has no convolution filters to draw; pick "
                              f"a Conv2d layer (see 'featuremap layers {m.name} --type conv').")
        kernels = weight.detach().float().cpu().numpy()
    top = None if top in (None, 0) else _count(top, "top", low=1, high=MAX_CHANNELS)
    chosen = [int(c) for c in channels] if channels is not None else None
    if chosen is not None and not chosen:
        raise ConfigError("channels is empty: name at least one channel, e.g. 0,5,9.")
    if chosen is not None and len(chosen) > MAX_CHANNELS:
        raise ConfigError(f"{len(chosen)} channels asked for; one figure draws at most "
                          f"{MAX_CHANNELS}.")
    fm = extract(m, image, layers=[name])
    meta = fm.meta[name]
    if not meta.is_map:
        raise ConfigError(f"layer '{name}' ({meta.type}) gives {meta.source_shape}, not feature "
                          f"maps: {meta.reason}. Pick a layer with maps ('featuremap layers "
                          f"{m.name}' shows every layer's output shape).")
    depth = meta.shape[1]
    bad = [c for c in chosen or [] if not 0 <= c < depth]
    if bad:
        raise ConfigError(f"channel {bad[0]} is out of range: '{name}' has {depth} channels "
                          f"(0..{depth - 1}).")
    fm.fields = _labels(m, fm)
    return LayerView(fm, name, draw, top, chosen, shared_scale, kernels, m.weights)


def _default_layers(m: Model, most: int = 6) -> list[str]:
    stages = list(m.stage_layers or ())
    try:
        names = overview_layers(m.module, input_size=m.input_size,
                                in_channels=m.preprocess.channels)
    except ConfigError:  # no (N, C, H, W) maps: the declared stages may have tokens
        if not stages:
            raise
        names = []
    if not stages or set(stages) <= set(names):
        return names
    if len(stages) > most:
        stages = [stages[round(i * (len(stages) - 1) / (most - 1))] for i in range(most)]
    return list(dict.fromkeys([*names[:1], *stages]))


@dataclass
class Overview:
    """Several layers of a network on one image, low to high."""

    maps: FeatureMaps
    per_layer: int = 8
    weights: str = ""

    def figure(self) -> Figure:
        from featuremap.plot import plot_overview

        return plot_overview(self.maps, per_layer=self.per_layer,
                             note=f"weights: {self.weights}" if self.weights else "",
                             labels=self.maps.fields)

    def __str__(self) -> str:
        return str(self.maps)

    def to_dict(self) -> dict[str, Any]:
        return {"per_layer": self.per_layer, "maps": self.maps.to_dict()}


def overview(model: Any, image: Any, *, layers: str | Sequence[str] | None = None,
             per_layer: int = 8) -> Overview:
    """The feature maps of ``image`` from low to high layers: by default the first convolution
    and the end of every stage (:func:`featuremap.summary.overview_layers`; the stages the
    network declares when they are not all among those, as a vision transformer's blocks, at
    most six of them spread from the first to the last).

    Example:
        >>> print(overview(load_model("shapes"), "docs/scene.png"))  # doctest: +SKIP
    """
    m = as_model(model)
    per_layer = _count(per_layer, "per_layer", low=1, high=64)
    names = m.resolve(layers) if layers is not None else _default_layers(m)
    fm = extract(m, image, layers=names)
    flat = [meta for meta in fm.meta.values() if not meta.is_map]
    if flat:
        raise ConfigError(f"layer '{flat[0].name}' ({flat[0].type}) gives {flat[0].source_shape}, "
                          f"not feature maps: {flat[0].reason}. Pick layers with maps "
                          f"('featuremap layers {m.name}' shows every layer's output shape).")
    fm.fields = _labels(m, fm)
    return Overview(fm, per_layer, m.weights)

"""The channel atlas: everything featuremap can say of each channel of one layer, side by side.

:func:`channel_atlas` reads a dataset (or a store) twice and renders once:

1. first pass: per channel its running top ``k`` values (:mod:`~featuremap.atlas.patches`),
   its mean activation over every position of every image, and its top-quantile estimate for
   dissection (:mod:`~featuremap.atlas.dissection`); one forward pass per batch feeds all three;
2. second pass: the IoU of each channel's strongest region with every concept (dissection);
3. the images that won are read again and their receptive fields cropped;
4. a feature visualisation per channel (:func:`~featuremap.atlas.visualize`), channels in
   groups of :data:`GROUP`, the same image for a channel and seed whatever the group.

Only the channels asked for are dissected and rendered. :meth:`ChannelAtlas.save` writes one
self-contained HTML page sortable by every column (:mod:`featuremap.atlas.page`).

Example:
    >>> atlas = channel_atlas(load_model("shapes"), "scenes", layer="backbone.block3",
    ...                       channels=range(8), steps=64)  # doctest: +SKIP
    >>> atlas.save("atlas.html")  # doctest: +SKIP
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featuremap.atlas.dissection import (
    Dissection,
    LayerDissection,
    check_settings,
    concept_sets,
    dissect_source,
)
from featuremap.atlas.patches import RunningTopK, TopPatches, check_channels, check_k, crop_winners
from featuremap.atlas.sources import MapSource, Piece, open_source
from featuremap.atlas.visualization import Visualization, check_render, visualize
from featuremap.errors import ConfigError, printable
from featuremap.model import Model, as_model

__all__ = ["GROUP", "ChannelAtlas", "channel_atlas", "check_sort", "parse_channels"]

GROUP = 16  # channels rendered together (one batch of images)
SORT_KEYS = ("channel", "mean", "top", "iou", "concept", "rendered")

Progress = Callable[[str, int, int], Any]


@dataclass
class ChannelAtlas:
    """Per channel of one layer: top patches, mean activation, concept, rendered image.

    Attributes:
        model, layer, source: what was read (printable).
        channels: the channels, in the order asked.
        n_images: images read; skipped: ``{name: reason}`` of those that were not.
        mean: ``(len(channels),)`` each channel's mean activation over every position of
            every image read.
        patches: the top patches (:class:`~featuremap.atlas.patches.TopPatches`).
        dissection: the dissection of these channels (one layer; rows in :attr:`channels`
            order).
        visualization: the rendered images, or None when not asked for.
        seconds: wall time per stage (``"maps"``, ``"patches"``, ``"visualisation"``).
        notes: what was assumed.
    """

    model: str
    layer: str
    source: str
    channels: tuple[int, ...]
    n_images: int
    skipped: dict[str, str]
    mean: np.ndarray
    patches: TopPatches
    dissection: Dissection
    visualization: Visualization | None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.channels)

    @property
    def concepts(self) -> LayerDissection:
        """The layer's dissection, one row per channel of :attr:`channels`."""
        return self.dissection.layers[0]

    def row(self, channel: int) -> dict[str, Any]:
        """What the atlas says of ``channel`` (a channel number): its columns, without pixels."""
        if channel not in self.channels:
            raise ConfigError(f"channel {channel} is not in this atlas: it holds channels "
                              f"{_listed(self.channels)}.")
        i = self.channels.index(channel)
        d = self.concepts
        concept = d.concepts[d.best[i]]
        patches = self.patches.patches[i]
        vis = self.visualization
        return {"channel": channel, "mean": float(self.mean[i]),
                "top": patches[0].value if patches else None,
                "concept": concept.name, "category": concept.category,
                "iou": float(d.best_iou[i]), "detector": bool(d.detector[i]),
                "detects": d.category(i),
                "rendered": None if vis is None else float(vis.activation[i]),
                "rendered_start": None if vis is None else float(vis.start[i]),
                "patches": [p.to_dict() for p in patches]}

    def rows(self, *, sort: str = "channel", descending: bool | None = None
             ) -> list[dict[str, Any]]:
        """Every channel's :meth:`row`, sorted by one of ``channel``, ``mean``, ``top``,
        ``iou``, ``concept``, ``rendered`` (numbers largest first unless ``descending`` is
        False; channels and concepts in ascending order)."""
        check_sort(sort, rendered=self.visualization is not None)
        rows = [self.row(c) for c in self.channels]
        if descending is None:
            descending = sort not in ("channel", "concept")
        missing = -float("inf") if descending else float("inf")
        key = ((lambda r: (r["concept"], r["channel"])) if sort == "concept" else
               (lambda r: missing if r[sort] is None else r[sort]))
        return sorted(rows, key=key, reverse=descending)

    def __str__(self) -> str:
        d = self.dissection
        vis = self.visualization
        head = [f"channel atlas of {printable(self.model)} {printable(self.layer)}: "
                f"{len(self.channels)} channels, {self.n_images:,} images from "
                f"'{self.source}'" + (f" ({len(self.skipped)} skipped)" if self.skipped else "")
                + f"; top {self.patches.values.shape[1]} patches each; concepts: top "
                f"{d.quantile:.2%} vs {len(d.concepts)} concepts, detector when IoU >= "
                f"{d.threshold:g}" + ("" if vis is None else
                                      f"; rendered {vis.size} px, {vis.steps} steps"),
                f"{'channel':>7}  {'mean':>9}  {'top value':>9}  {'concept':18s}  {'IoU':>6}"
                + ("" if vis is None else f"  {'rendered':>9}")]
        for r in self.rows():
            concept = f"{r['concept']} ({r['category']})" if r["detector"] else "-"
            top = "-" if r["top"] is None else f"{r['top']:.4g}"
            head.append(f"{r['channel']:>7}  {r['mean']:>9.4g}  {top:>9}  "
                        f"{printable(concept)[:18]:18s}  {r['iou']:>6.3f}"
                        + ("" if vis is None else f"  {r['rendered']:>9.4g}"))
        shares = self.concepts.shares(d.categories)
        head.append("detectors: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
                    + "; " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return "\n".join(head + [f"note: {n}" for n in self.notes])

    def settings(self) -> dict[str, Any]:
        """How the atlas was made: model, layer, k, dissection's and rendering's settings, and
        the seconds per stage."""
        d, vis = self.dissection, self.visualization
        return {"model": self.model, "layer": self.layer, "k": self.patches.k,
                "quantile": d.quantile, "threshold": d.threshold,
                "visualization": None if vis is None else {
                    "size": vis.size, "steps": vis.steps, "seed": vis.seed,
                    "seconds_per_channel": vis.seconds_per_channel},
                "seconds": dict(self.seconds)}

    def to_dict(self) -> dict[str, Any]:
        """What a web page receives: the settings and every channel's row (no pixels)."""
        d = self.dissection
        return self.settings() | {
            "source": self.source, "channels": list(self.channels), "n_images": self.n_images,
            "skipped": dict(self.skipped), "field_size": list(self.patches.field_size),
            "stride": list(self.patches.stride), "concepts": [c.to_dict() for c in d.concepts],
            "shares": self.concepts.shares(d.categories), "rows": self.rows(),
            "notes": list(self.notes)}

    def html(self, *, sort: str = "channel") -> str:
        """The self-contained page :meth:`save` writes."""
        from featuremap.atlas.page import atlas_page

        return atlas_page(self, sort=sort)

    def save(self, path: str | Path, *, overwrite: bool = False, sort: str = "channel"
             ) -> Path:
        """Write the page (one self-contained HTML file, sortable) atomically; return its path.

        Raises:
            ConfigError: a suffix other than ``.html``/``.htm``, a missing or unwritable folder,
                or an existing file without ``overwrite``.
        """
        from featuremap.atlas.page import save_page

        return save_page(self, path, overwrite=overwrite, sort=sort)


def check_sort(sort: Any, *, rendered: bool = True, name: str = "sort") -> None:
    """Refuse a sort key that is not one of :data:`SORT_KEYS`, or ``"rendered"`` without
    rendered images (``name``: what the caller calls the option)."""
    if sort not in SORT_KEYS or (sort == "rendered" and not rendered):
        raise ConfigError(f"{name} must be one of {', '.join(SORT_KEYS)} ('rendered' needs the "
                          f"rendered images), got {printable(repr(sort))}.")


def parse_channels(text: str, *, limit: int = 1 << 20) -> list[int] | None:
    """Channels written as text: ``"0-15,32,40-47"`` (ranges inclusive, duplicates dropped),
    or ``"all"`` (None).

    Raises:
        ConfigError: a part that is not a number (ASCII digits, at most 9) or a range, a range
            that runs backwards, more than ``limit`` channels, nothing at all.

    Example:
        >>> parse_channels("0-3,9,2")
        [0, 1, 2, 3, 9]
    """
    words = [w for w in str(text).replace(" ", "").split(",") if w]
    if [w.lower() for w in words] == ["all"]:
        return None
    chosen: list[int] = []
    for word in words:
        found = re.fullmatch(r"([0-9]{1,9})(?:-([0-9]{1,9}))?", word)
        if found is None:
            raise ConfigError(f"channels: '{printable(word)[:20]}' is not a channel number or a "
                              "range: write them as 0-15,32 (or all).")
        a = int(found[1])
        b = int(found[2]) if found[2] is not None else a
        if b < a:
            raise ConfigError(f"channels: the range {a}-{b} runs backwards: write {b}-{a}.")
        if len(chosen) + b - a + 1 > limit:
            raise ConfigError(f"channels: at most {limit:,} channels at once; compute the "
                              "others in another run.")
        chosen.extend(range(a, b + 1))
    if not chosen:
        raise ConfigError("channels is empty: give numbers and ranges such as 0-15,32, or "
                          "all.")
    return list(dict.fromkeys(chosen))


def _listed(values: Sequence[int]) -> str:
    shown = ", ".join(str(v) for v in values[:8])
    return shown + (f" and {len(values) - 8} more" if len(values) > 8 else "")


class _Tap:
    """The first pass's extra readers: the running top ``k`` and the per-channel sums."""

    def __init__(self, layer: str, channels: tuple[int, ...], k: int, per_image: int | None
                 ) -> None:
        self.layer = layer
        self.top = RunningTopK(k, per_image=per_image, channels=channels)
        self.select = torch.tensor(channels, dtype=torch.long)
        self.sums = torch.zeros(len(channels), dtype=torch.float64)
        self.count = 0

    def __call__(self, piece: Piece) -> None:
        maps = piece.maps[self.layer]
        self.top.add(maps, piece.indices, self.layer)
        chosen = maps.index_select(1, self.select.to(maps.device))
        self.sums += chosen.double().sum((0, 2, 3)).cpu()
        self.count += chosen.shape[0] * chosen.shape[2] * chosen.shape[3]


def _depth(source: MapSource, m: Model, layer: str) -> int:
    """The channels of ``layer``: a store's own shape, else the model's (one blank pass)."""
    if source.features is not None:
        return int(source.features.store[layer].shape[1])
    return m.depth(layer)


def channel_atlas(
    model: Any,
    source: Any,
    *,
    layer: str,
    channels: Sequence[int] | int | None = None,
    k: int = 9,
    concepts: Sequence[Any] | str | None = None,
    quantile: float = 0.005,
    threshold: float = 0.04,
    visualize: bool = True,
    size: int | None = None,
    steps: int = 256,
    seed: int = 0,
    per_image: int | None = 1,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> ChannelAtlas:
    """Per channel of ``layer``: top patches, mean activation, concept and IoU, rendered image.

    Args:
        model: a model from :func:`featuremap.load_model` or an ``nn.Module`` (with a store:
            the model that made it, checked).
        source: anything :func:`featuremap.open_collection` reads, or a store holding
            ``layer`` unpooled.
        layer: one layer with feature maps.
        channels: channel numbers (in the order the page lists them first), or None for all.
        k: top patches per channel.
        concepts: as :func:`featuremap.dissect` (None: the colour terms, and the masks'
            classes when the source has masks).
        quantile, threshold: dissection's settings (top 0.5%, IoU 0.04).
        visualize: render one image per channel (the slow part: seconds per channel).
        size: rendered side in pixels (default: the model's input side, at most 128).
        steps, seed: the rendering's settings.
        per_image: at most this many top patches per image and channel (None: no limit).
        batch_size: images per forward pass (a store reads its own chunks).
        progress: ``progress(stage, done, total)``; stages ``"maps"`` (both passes, in
            images), ``"patches"`` (0 then 1: the winning images read again) and
            ``"visualisation"`` (optimisation steps).

    Returns:
        :class:`ChannelAtlas`.

    Raises:
        ConfigError: bad settings or channels (all checked before any pass), a layer without
            maps, a store layer stored pooled, no readable image, a rendering too large for
            memory.
        UnknownNameError: an unknown layer (with a did-you-mean).
    """
    check_k("k", k)
    check_k("per_image", per_image, none=True)
    check_settings(quantile, threshold)
    m = as_model(model)
    name = m.one_layer(layer)
    if size is None:
        size = min(128, *m.input_size)
    if visualize:
        size, steps, seed = check_render(size, steps, seed)
    maps_of = open_source(m, source, layers=[name], batch_size=batch_size)
    depth = _depth(maps_of, m, name)
    chosen = check_channels(range(depth) if channels is None else channels, depth, name)
    sets = concept_sets(maps_of, concepts)
    say = progress or (lambda *_: None)
    seconds: dict[str, float] = {}

    began = time.perf_counter()
    tap = _Tap(name, chosen, k, per_image)
    dissection = dissect_source(maps_of, sets, quantile=quantile, threshold=threshold,
                                progress=lambda done, total: say("maps", done, total),
                                select={name: chosen}, tap=tap)
    seconds["maps"] = time.perf_counter() - began

    began = time.perf_counter()
    say("patches", 0, 1)
    patches = crop_winners(maps_of, name, tap.top, dissection.n_images, k, per_image)
    say("patches", 1, 1)
    seconds["patches"] = time.perf_counter() - began

    vis = None
    if visualize:
        began = time.perf_counter()
        vis = _render(m, name, chosen, size, steps, seed, say)
        seconds["visualisation"] = time.perf_counter() - began
    notes = list(dict.fromkeys([*dissection.notes, *patches.notes,
                                *([] if vis is None else vis.notes)]))
    return ChannelAtlas(maps_of.model_name, name, maps_of.description, chosen,
                        dissection.n_images, dict(maps_of.skipped),
                        (tap.sums / max(1, tap.count)).numpy(), patches, dissection, vis,
                        seconds, notes)


def _render(m: Model, layer: str, channels: tuple[int, ...], size: int, steps: int, seed: int,
            say: Progress) -> Visualization:
    """:func:`visualize` in groups of :data:`GROUP` channels, joined into one result."""
    groups = [channels[i: i + GROUP] for i in range(0, len(channels), GROUP)]
    total = len(groups) * steps
    parts = []
    for g, group in enumerate(groups):
        parts.append(visualize(m, layer=layer, channels=list(group), size=size, steps=steps,
                               seed=seed, progress=lambda done, _, g=g:
                               say("visualisation", g * steps + done, total)))
    first = parts[0]
    return Visualization(first.model_name, layer, channels,
                         np.concatenate([p.images for p in parts]),
                         np.concatenate([p.activation for p in parts]),
                         np.concatenate([p.start for p in parts]), size, steps, seed,
                         sum(p.seconds for p in parts),
                         list(dict.fromkeys(n for p in parts for n in p.notes)))

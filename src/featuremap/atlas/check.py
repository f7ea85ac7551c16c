"""Check a dissection's labels: do a detector's top patches lie on its concept?

A channel that dissection calls a circle detector should fire on circles: :func:`check_labels`
takes the top ``k`` patches of every detector of a mask concept (a shape of the generated
scenes, or one of your classes) and counts how many lie on that concept, two ways:

- ``centre``: the pixel at the centre of the patch's receptive field (clipped to the image)
  carries the concept in the image's mask; ``base_rate`` is the share of all pixels of the
  dataset that carry it, what positions taken at random would score;
- ``cell``: some pixel of the position's own cell (the stride x stride pixels around that
  centre, which upsampling gives to that value) carries it: also a patch that fires at the
  concept's border.

Example:
    >>> d = dissect(model, "scenes", layers="backbone.block*")  # doctest: +SKIP
    >>> print(check_labels(model, "scenes", d))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from featuremap.atlas.dissection import Dissection
from featuremap.atlas.patches import Patch, top_patches
from featuremap.atlas.sources import MapSource, open_source
from featuremap.datasets import read_mask
from featuremap.errors import ConfigError, printable

__all__ = ["LabelCheck", "check_labels", "labelled_source", "on_concept"]


@dataclass(frozen=True)
class LabelCheck:
    """Per detector of a mask concept, the share of its top patches that lie on the concept.

    Attributes:
        rows: ``(layer, channel, concept, IoU, share centred on the concept, share whose cell
            touches it, patches, base rate)``.
        k: patches per channel.
    """

    rows: tuple[tuple[str, int, str, float, float, float, int, float], ...]
    k: int

    def __str__(self) -> str:
        """One line per layer and concept (detectors, medians and range of their shares); every
        detector's own row is in :attr:`rows` and :meth:`to_dict`."""
        if not self.rows:
            return "no channel detects a mask concept: nothing to check"
        groups: dict[tuple[str, str], list[tuple]] = {}
        for row in self.rows:
            groups.setdefault((row[0], row[2]), []).append(row)
        width = max(5, *(len(printable(r[0])) for r in self.rows))
        lines = [f"{'layer':{width}s}  {'concept':12s}  detectors  centre on (min-max)  "
                 "cell on  base rate  channels"]
        for (layer, concept), rows in groups.items():
            centre, cell = [r[4] for r in rows], [r[5] for r in rows]
            spread = f"{np.median(centre):.0%} ({min(centre):.0%}-{max(centre):.0%})"
            channels = ", ".join(str(r[1]) for r in rows[:6]) + (", ..." if len(rows) > 6
                                                                else "")
            lines.append(f"{printable(layer):{width}s}  {printable(concept):12s}  "
                         f"{len(rows):>9}  {spread:>19}  {np.median(cell):>7.0%}  "
                         f"{rows[0][7]:>9.1%}  {channels}")
        lines.append(f"median over {len(self.rows)} detectors (top {self.k} patches each): "
                     f"centre on the concept {np.median([r[4] for r in self.rows]):.0%}, "
                     f"cell on it {np.median([r[5] for r in self.rows]):.0%}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        keys = ("layer", "channel", "concept", "iou", "centre", "cell", "patches", "base_rate")
        return {"k": self.k, "rows": [dict(zip(keys, r)) for r in self.rows]}


def on_concept(patch: Patch, mask: np.ndarray, label: int, *,
               cell: tuple[float, float] | None = None) -> bool:
    """Whether ``label`` is in ``mask`` ``(H, W)`` at the centre of ``patch``'s field (clipped
    to the image), or with ``cell = (sy, sx)`` anywhere in the ``sy x sx`` pixels around it."""
    y0, x0, y1, x1 = patch.box
    y, x = (y0 + y1) // 2, (x0 + x1) // 2
    sy, sx = (1, 1) if cell is None else (max(1, int(cell[0])), max(1, int(cell[1])))
    top, left = max(0, y - sy // 2), max(0, x - sx // 2)
    region = mask[top: max(top + 1, y - sy // 2 + sy), left: max(left + 1, x - sx // 2 + sx)]
    if not region.size:  # the centre beyond the image: its nearest pixel
        region = mask[min(max(y, 0), mask.shape[0] - 1), min(max(x, 0), mask.shape[1] - 1)]
    return bool((region == label).any())


def labelled_source(model: Any, source: Any, layers: Any, *, batch_size: int = 32
                    ) -> MapSource:
    """The image/mask pairs (or a store of them) a label check reads, opened: no image is
    read, so a command can refuse a source without masks before it dissects.

    Raises:
        ConfigError: a source without masks or class names, no model, bad ``batch_size``.
        UnknownNameError: an unknown layer.
    """
    maps_of = open_source(model, source, layers=layers, batch_size=batch_size)
    if not maps_of.has_masks or not maps_of.classes:
        raise ConfigError(f"checking labels needs the image/mask pairs the dissection read; "
                          f"'{maps_of.description}' has no masks.")
    return maps_of


def check_labels(model: Any, source: Any, dissection: Dissection, *, k: int = 9,
                 batch_size: int = 32, progress: Callable[[int, int], Any] | None = None
                 ) -> LabelCheck:
    """For every detector of a shape or class in ``dissection``, the share of its top ``k``
    patches (at most one per image) whose field's centre lies on that concept.

    Args:
        model, source: the model and the image/mask pairs the dissection read.
        dissection: from :func:`featuremap.dissect`.
        k: patches per channel.
        batch_size: images per forward pass.
        progress: ``progress(done, total)`` over the passes (one per layer with detectors of
            a shape or class; ``total`` = those layers x images).

    Raises:
        ConfigError: a source without masks.
    """
    maps_of = labelled_source(model, source, [d.layer for d in dissection.layers],
                              batch_size=batch_size)
    share = dict(zip(dissection.concepts, dissection.concept_share))
    rows = []
    passes = [(d, [r for r in d.detectors() if r[1].category != "colour"])
              for d in dissection.layers]
    passes = [(d, found) for d, found in passes if found]
    for i, (d, found) in enumerate(passes):
        tick = None if progress is None else (
            lambda done, n, i=i: progress(i * n + done, len(passes) * n))
        top = top_patches(model, source, layer=d.layer, k=k, channels=[r[0] for r in found],
                          batch_size=batch_size, progress=tick)
        for channel, concept, iou in found:
            label = maps_of.classes.index(concept.name)
            patches = top.channel(channel)
            masks = [read_mask(maps_of.masks[p.image]) for p in patches]
            centre = [on_concept(p, m, label) for p, m in zip(patches, masks)]
            cell = [on_concept(p, m, label, cell=top.stride) for p, m in zip(patches, masks)]
            rows.append((d.layer, channel, concept.name, iou, float(np.mean(centre)),
                         float(np.mean(cell)), len(patches), float(share[concept])))
    return LabelCheck(tuple(rows), k)

"""How a layer's maps are reduced before they are stored: ``none``, ``avg``, ``max``, ``avgN``.

One rule for every layer (``"avg"``), or a rule per layer (``"layer4=avg,layer2=none"`` or a
dict; layers not named keep their maps whole).

Example:
    >>> spec = Pooling.parse("avg2")
    >>> spec.shape((512, 7, 7))
    (512, 2, 2)
    >>> {k: str(v) for k, v in pools("layer4=avg", ["layer2", "layer4"]).items()}
    {'layer2': 'none', 'layer4': 'avg'}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featuremap.errors import ConfigError, printable, unknown_name

CHOICES = "none, avg, max, avgN or maxN (N = 1 .. 64: an N x N grid of averages or maxima)"
_GRID = re.compile(r"(avg|max)(\d+)")
MAX_GRID = 64


@dataclass(frozen=True)
class Pooling:
    """A pooling rule.

    Attributes:
        kind: ``"none"`` (maps kept whole), ``"avg"`` or ``"max"``.
        grid: None for one value per channel (``(N, C)``), else the side of an adaptive grid
            (``(N, C, grid, grid)``).
    """

    kind: str = "none"
    grid: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> Pooling:
        """``"none"``, ``"avg"``, ``"max"``, ``"avgN"`` or ``"maxN"``.

        Raises:
            ConfigError: anything else.
        """
        value = "none" if text is None else str(text).strip().lower()
        if value in ("none", "avg", "max"):
            return cls(value)
        match = _GRID.fullmatch(value)
        if match and 1 <= int(match.group(2)) <= MAX_GRID:
            return cls(match.group(1), int(match.group(2)))
        raise ConfigError(f"pool must be one of {CHOICES}; got {text!r}.")

    def __str__(self) -> str:
        return self.kind if self.grid is None else f"{self.kind}{self.grid}"

    def shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The stored shape of one image's output ``shape`` (``(C, H, W)`` or ``(C,)``)."""
        if self.kind == "none" or len(shape) == 1:
            return tuple(shape)
        if self.grid is None:
            return (shape[0],)
        return (shape[0], self.grid, self.grid)

    def __call__(self, maps: torch.Tensor) -> torch.Tensor:
        """Pool a batch ``(N, C, H, W)`` (vectors ``(N, C)`` pass unchanged)."""
        if self.kind == "none" or maps.dim() != 4:
            return maps
        if self.grid is None:
            return maps.mean(dim=(2, 3)) if self.kind == "avg" else maps.amax(dim=(2, 3))
        pool = F.adaptive_avg_pool2d if self.kind == "avg" else F.adaptive_max_pool2d
        return pool(maps, self.grid)


def pools(rule: str | Mapping[str, str] | None, layers: Sequence[str]) -> dict[str, Pooling]:
    """The pooling of each layer: one rule for all, or ``LAYER=RULE`` pairs (a string separated
    by commas, or a dict) naming some of ``layers`` (the others: ``none``).

    Raises:
        ConfigError: a bad rule; UnknownNameError: a pair naming a layer not extracted.
    """
    if isinstance(rule, Mapping):
        pairs = dict(rule)
    elif rule is not None and "=" in str(rule):
        pairs = {}
        for part in str(rule).split(","):
            name, sep, value = part.partition("=")
            if not sep or not name.strip():
                raise ConfigError(f"pool pairs are LAYER=RULE separated by commas (rules: "
                                  f"{CHOICES}); got {printable(part)!r}.")
            pairs[name.strip()] = value.strip()
    else:
        one = Pooling.parse(rule)
        return {name: one for name in layers}
    for name in pairs:
        if name not in layers:
            raise unknown_name("layer", printable(name), layers,
                               hint="pool pairs name layers given to --layers.")
    return {name: Pooling.parse(pairs.get(name, "none")) for name in layers}

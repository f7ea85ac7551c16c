"""How a layer's maps are reduced before they are stored: ``none``, ``avg``, ``max``, ``avgN``.

Example:
    >>> spec = Pooling.parse("avg2")
    >>> spec.shape((512, 7, 7))
    (512, 2, 2)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featuremap.errors import ConfigError

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

"""Honest colour scales: maps with negative values get a diverging scale centred on zero (blue
negative, red positive); non-negative maps a sequential scale from their minimum to their
maximum."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DIVERGING", "SEQUENTIAL", "Scale"]

DIVERGING, SEQUENTIAL = "RdBu_r", "viridis"


@dataclass(frozen=True)
class Scale:
    """A colour scale: colormap name and limits."""

    cmap: str
    vmin: float
    vmax: float

    @classmethod
    def of(cls, values: np.ndarray) -> Scale:
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if lo < 0:
            m = max(abs(lo), abs(hi)) or 1.0
            return cls(DIVERGING, -m, m)
        return cls(SEQUENTIAL, lo, hi if hi > lo else lo + 1.0)

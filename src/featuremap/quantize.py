"""Feature maps as bytes: each map stretched to 0..255 on its own range, with that range kept.

A face that draws maps (a web page on a canvas, a notebook widget) needs neither float32 nor
PNG: :func:`quantize` turns ``(D, H, W)`` maps into one ``uint8`` array and each map's
``(min, max)``, so value ``v`` of map ``d`` is ``min + (max - min) * v / 255`` (within half a
step of the float value), and :func:`pack` puts a JSON header and the bytes in one binary
message. With the ranges a drawer can pick an honest colour scale per map, or one shared scale.

Example:
    >>> q = quantize(np.array([[[0.0, 1.0], [0.5, 0.25]]], dtype=np.float32))
    >>> q.data.tolist(), q.ranges
    ([[[0, 255], [128, 64]]], [(0.0, 1.0)])
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from featuremap.errors import ConfigError

__all__ = ["Quantized", "pack", "quantize", "unpack"]

MAGIC = b"FMAP"


@dataclass(frozen=True)
class Quantized:
    """``data`` ``(D, H, W)`` uint8 and ``ranges``: ``(min, max)`` of every map, as floats."""

    data: np.ndarray
    ranges: list[tuple[float, float]]

    def header(self) -> dict[str, Any]:
        d, h, w = self.data.shape
        return {"depth": d, "height": h, "width": w, "dtype": "uint8",
                "ranges": [list(r) for r in self.ranges]}

    def restore(self) -> np.ndarray:
        """The maps back as float32 (within half a quantisation step of the originals)."""
        lo = np.array([r[0] for r in self.ranges], np.float32)[:, None, None]
        hi = np.array([r[1] for r in self.ranges], np.float32)[:, None, None]
        return lo + (hi - lo) * self.data.astype(np.float32) / 255


def quantize(maps: Any) -> Quantized:
    """Maps ``(D, H, W)`` (or one ``(H, W)``; NumPy or torch) as uint8 on each map's own range.

    NaN and infinity are refused: they have no place on a colour scale. A constant map gets
    the range ``(v, v)`` and bytes of 0.

    Raises:
        ConfigError: not 2-D or 3-D, or non-finite values.
    """
    if hasattr(maps, "detach"):
        maps = maps.detach().float().cpu().numpy()
    a = np.asarray(maps, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ConfigError(f"maps must be (D, H, W) or (H, W), got shape {a.shape}.")
    if not np.isfinite(a).all():
        raise ConfigError("the maps hold NaN or infinite values: nothing to draw.")
    if a.size == 0:
        return Quantized(np.zeros(a.shape, np.uint8), [(0.0, 0.0)] * a.shape[0])
    lo = a.min(axis=(1, 2))
    hi = a.max(axis=(1, 2))
    span = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
    data = np.rint((a - lo[:, None, None]) * (255.0 / span)[:, None, None])
    return Quantized(np.clip(data, 0, 255).astype(np.uint8),
                     [(float(x), float(y)) for x, y in zip(lo, hi)])


def pack(header: dict[str, Any], *arrays: np.ndarray) -> bytes:
    """One binary message: ``b"FMAP"``, the JSON header's length (4 bytes, little endian), the
    UTF-8 JSON header, then each array's bytes in order (C order); the header's ``"sizes"``
    lists each array's byte count."""
    blobs = [np.ascontiguousarray(a).tobytes() for a in arrays]
    text = json.dumps({**header, "sizes": [len(b) for b in blobs]}, allow_nan=False).encode()
    return b"".join([MAGIC, struct.pack("<I", len(text)), text, *blobs])


def unpack(message: bytes) -> tuple[dict[str, Any], list[bytes]]:
    """The header and the raw byte blocks of a :func:`pack` message.

    Raises:
        ConfigError: not such a message.
    """
    if len(message) < 8 or message[:4] != MAGIC:
        raise ConfigError("not a featuremap maps message (it starts with b'FMAP').")
    (size,) = struct.unpack("<I", message[4:8])
    try:
        header = json.loads(message[8:8 + size])
    except ValueError:
        raise ConfigError("the maps message's header is not JSON.") from None
    blobs, start = [], 8 + size
    for n in header.get("sizes", []):
        blobs.append(message[start:start + n])
        start += n
    return header, blobs

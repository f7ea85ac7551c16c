"""One chunk's stored values from a decoded batch: the forward pass, pooling and dtype.

:func:`compute_chunk` is the per-chunk work of both engines (the local engine's compute thread,
each Ray actor) and of the dry run's timed pass (:func:`featuremap.store.plan.time_images`),
so that the time a dry run measures is the time of the work a run does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featuremap.errors import ConfigError, printable
from featuremap.store.manifest import DONE, FAILED

if TYPE_CHECKING:
    from featuremap.extraction import Extractor
    from featuremap.store.plan import Plan

FLOAT16_MAX = 65504.0


def compute_chunk(p: Plan, extractor: Extractor, batch: Any, start: int, stop: int
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, dict[int, str]]:
    """One chunk's stored values, status and failures, from a decoded batch of its images.

    Images that could not be read, and images whose size differs from the store's, are
    recorded as failed with the reason; their rows stay zero.

    Raises:
        ConfigError: a float16 store and values beyond float16's range.
    """
    n = stop - start
    maps = {k: np.zeros((n, *p.header.shapes[k]), dtype=p.dtype) for k in p.layers}
    status = np.full(n, DONE, np.int8)
    failed: dict[int, str] = {}
    for skipped in batch.skipped:
        failed[skipped.index] = skipped.reason
    for group in batch.groups:
        if tuple(group.images.shape[1:]) != p.input_shape:
            h, w = group.images.shape[2:]
            for index in group.indices.tolist():
                failed[index] = (f"its size {h} x {w} differs from the store's "
                                 f"{p.input_shape[1]} x {p.input_shape[2]} (every image of a "
                                 "store without a crop must share one size)")
            continue
        got = extractor.run(torch.from_numpy(group.images))
        rows = group.indices - start
        for name in p.layers:
            values = p.pools[name](got.maps[name]).detach()
            if p.dtype == "float16":
                values = _half(values, name)
            maps[name][rows] = values.cpu().numpy()
    for index in failed:
        status[index - start] = FAILED
    return maps, status, failed


def _half(values: torch.Tensor, name: str) -> torch.Tensor:
    finite = torch.isfinite(values)
    if bool((values.abs() > FLOAT16_MAX).logical_and(finite).any()):
        top = float(values[finite].abs().max())
        raise ConfigError(f"layer '{printable(name)}' has values up to {top:.4g}, beyond "
                          f"float16's {FLOAT16_MAX:g}: store float32 (--dtype float32).")
    return values.half()


__all__ = ["compute_chunk"]

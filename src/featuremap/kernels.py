"""The named kernels: edge detectors, blurs, Gabor wavelets and seeded random filters.

Kernels are written as the engine applies them, as cross-correlations (never flipped), with row
0 at the top of the image; :mod:`featuremap.filters` documents the conventions and builds banks
of them from a spec. NumPy and the standard library only.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "FIXED_KERNELS",
    "GABOR_GAMMA",
    "KERNEL_GROUPS",
    "box_kernel",
    "gabor_kernel",
    "gabor_name",
    "gaussian_kernel",
    "random_kernels",
]

GABOR_GAMMA = 0.5  # aspect ratio of the Gabor envelope (as OpenCV's default): elongated stripes


def _k(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


_SOBEL_X = _k([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
_PREWITT_X = _k([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]])
_SCHARR_X = _k([[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]])
FIXED_KERNELS: dict[str, tuple[np.ndarray, str]] = {  # name -> (kernel, description)
    "identity": (_k([[0, 0, 0], [0, 1, 0], [0, 0, 0]]), "3x3 identity: copies the input"),
    "sharpen": (_k([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]), "3x3 sharpen (sums to 1)"),
    "emboss": (_k([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]), "3x3 emboss, light from the top-left"),
    "sobel_x": (_SOBEL_X, "3x3 Sobel, positive where intensity increases to the right"),
    "sobel_y": (_SOBEL_X.T.copy(), "3x3 Sobel, positive where intensity increases downwards"),
    "prewitt_x": (_PREWITT_X, "3x3 Prewitt, positive where intensity increases to the right"),
    "prewitt_y": (_PREWITT_X.T.copy(), "3x3 Prewitt, positive where intensity increases downwards"),
    "scharr_x": (_SCHARR_X, "3x3 Scharr, positive where intensity increases to the right"),
    "scharr_y": (_SCHARR_X.T.copy(), "3x3 Scharr, positive where intensity increases downwards"),
    "laplacian": (_k([[0, 1, 0], [1, -4, 1], [0, 1, 0]]), "3x3 4-neighbour Laplacian (sums to 0)"),
}
KERNEL_GROUPS = {g: (f"{g}_x", f"{g}_y") for g in ("sobel", "prewitt", "scharr")}
"""Names that stand for two kernels: ``sobel`` is ``sobel_x`` and ``sobel_y``."""


def box_kernel(size: int) -> np.ndarray:
    """A ``(size, size)`` mean filter, summing to 1."""
    return np.full((size, size), 1.0 / (size * size), dtype=np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A Gaussian blur of size ``2 * ceil(3 * sigma) + 1``, summing to 1."""
    half = math.ceil(3 * sigma)
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2))
    kernel = np.outer(g, g)
    return (kernel / kernel.sum()).astype(np.float32)


def gabor_kernel(theta_deg: float, wavelength: float) -> np.ndarray:
    """Real (cosine) Gabor kernel; ``theta`` counter-clockwise from the x axis, y pointing up.

    ``sigma = 0.56 * wavelength`` (about one octave), envelope aspect ratio
    :data:`GABOR_GAMMA`, size ``2 * ceil(2.5 * sigma) + 1``, exactly zero-mean, positive taps
    summing to 1.
    """
    sigma = 0.56 * wavelength  # a bandwidth of about one octave
    half = math.ceil(2.5 * sigma)
    coords = np.arange(-half, half + 1, dtype=np.float64)
    x, y = coords[None, :], -coords[:, None]  # row 0 is the top of the image, so y = -row
    t = math.radians(theta_deg)
    xr = x * math.cos(t) + y * math.sin(t)
    yr = -x * math.sin(t) + y * math.cos(t)
    envelope = np.exp(-(xr**2 + GABOR_GAMMA**2 * yr**2) / (2 * sigma**2))
    carrier = np.cos(2 * math.pi * xr / wavelength)
    # Subtract the envelope-weighted mean of the carrier: exactly zero-mean, still zero at the rim.
    kernel = envelope * (carrier - (envelope * carrier).sum() / envelope.sum())
    return (2 * kernel / np.abs(kernel).sum()).astype(np.float32)


def gabor_name(angle: float) -> str:
    """The name of the Gabor filter at ``angle`` degrees: ``gabor_45deg``."""
    return f"gabor_{round(angle, 2):g}deg"


def random_kernels(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``(n, size, size)`` standard-normal float64 draws, each made zero-mean and of unit L2
    norm (not Kaiming-scaled): they ignore flat brightness and respond on comparable scales."""
    kernels = rng.standard_normal((n, size, size))
    kernels -= kernels.mean(axis=(1, 2), keepdims=True)
    kernels /= np.sqrt((kernels**2).sum(axis=(1, 2), keepdims=True))
    return kernels

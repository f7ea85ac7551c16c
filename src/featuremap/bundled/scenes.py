"""Synthetic scenes with a class label and a per-pixel mask: the bundled model's data.

Every scene is generated from one integer seed, so the same seed always gives the same scene. A
scene is a textured, noisy background (a colour gradient, sinusoidal stripes, smooth blobs and pixel
noise) with one main shape (the largest, its class is the scene's ``label``) and zero to two smaller
distractor shapes of other classes. Colours are random for every class, so only the outline tells
the class. Shapes are rasterised with signed distance functions on coordinate grids (anti-aliased
edges, no per-pixel Python loops): about 20,000 scenes of 64x64 pixels take a few seconds.

Example:
    >>> scene = make_scene(7)
    >>> scene.image.shape, scene.mask.shape, CLASSES[scene.label] in CLASSES[1:]
    ((3, 64, 64), (64, 64), True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from featuremap.budget import check_size
from featuremap.errors import ConfigError
from featuremap.outputs import atomic_folder

__all__ = [
    "CLASSES",
    "LAYOUTS",
    "MIN_SIZE",
    "Scene",
    "make_dataset",
    "make_scene",
    "save_dataset",
    "scene_seed",
]

CLASSES = ("background", "circle", "square", "triangle", "star", "cross", "ring", "crescent")
LAYOUTS = ("classes", "segmentation")
MIN_SIZE = 32
_BASE = 64.0  # sizes below are in pixels of a 64x64 scene and scale with the scene
_MAIN_RADIUS = (10.0, 19.0)
_DISTRACTOR_RADIUS = (6.5, 9.5)
_MIN_CONTRAST = 0.4  # RGB distance between a shape's colour and the background under it


@dataclass(frozen=True)
class Scene:
    """One synthetic scene.

    Attributes:
        image: ``(3, H, W)`` float32 in ``[0, 1]``.
        mask: ``(H, W)`` int64, the class index of every pixel (0 is background).
        label: class index (``1..len(CLASSES) - 1``) of the main, largest shape.
        seed: the seed the scene was generated from.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    seed: int


@dataclass(frozen=True)
class _Shape:
    cls: int
    cx: float
    cy: float
    radius: float
    angle: float
    extra: float  # ring: inner/outer ratio; crescent: direction of the bite
    colour: np.ndarray
    shade: np.ndarray  # colour change across the shape (3,) and its direction (2,)


def _check(size: int, seed: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ConfigError(f"Scene size must be an integer >= {MIN_SIZE} pixels, got {size!r}.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"Seed must be a non-negative integer, got {seed!r}.")


# Peak working memory of make_scene per pixel: measured about 140 bytes (float32 coordinate
# grids, background layers, the shapes' distance fields), with a margin.
_SCENE_BYTES_PER_PIXEL = 160
_DATASET_BYTES_PER_PIXEL = 3 * 4 + 8  # a float32 RGB image and an int64 mask per scene


def _check_scene_memory(size: int) -> None:
    check_size(_SCENE_BYTES_PER_PIXEL * size * size, what=f"generating a scene of {size} x "
               f"{size} pixels", fix="use a smaller size")


def scene_seed(seed: int, index: int) -> int:
    """The seed of scene ``index`` of the dataset generated from ``seed``.

    Datasets of different seeds never share a scene (for ``index < 2**32``).

    Example:
        >>> scene_seed(1, 2)
        4294967298
    """
    return int(seed) * 2**32 + int(index)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return yy, xx


@lru_cache(maxsize=16)
def _upsampler(low: int, size: int) -> np.ndarray:
    """``(size, low)`` matrix of linear interpolation from ``low`` to ``size`` samples."""
    pos = (np.arange(size) + 0.5) * low / size - 0.5
    eye = np.eye(low, dtype=np.float32)
    return np.stack([np.interp(pos, np.arange(low), eye[i]) for i in range(low)], 1).astype(
        np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Colour gradient + sinusoidal stripes + smooth blobs, ``(3, H, W)`` (before noise)."""
    yy, xx = _grid(size)
    u, v = xx / size, yy / size
    c0, c1 = rng.uniform(0.0, 1.0, (2, 3, 1, 1)).astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (u - 0.5) * np.cos(a) + (v - 0.5) * np.sin(a), 0, 1)
    image = c0 + (c1 - c0) * t
    for _ in range(2):
        freq, a, phase = rng.uniform(1.5, 9.0), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        amp = rng.uniform(0.0, 0.12, (3, 1, 1)).astype(np.float32)
        wave = np.sin(2 * np.pi * freq * (u * np.cos(a) + v * np.sin(a)) + phase)
        image = image + amp * wave
    low = int(rng.integers(3, 8))
    up = _upsampler(low, size)
    blobs = rng.normal(0.0, 1.0, (3, low, low)).astype(np.float32)
    amp = rng.uniform(0.0, 0.12)
    return image + amp * (up @ blobs @ up.T)


def _polygon_sdf(px: np.ndarray, py: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance to a closed polygon (negative inside), vectorised over the pixels."""
    d = (px - verts[0, 0]) ** 2 + (py - verts[0, 1]) ** 2
    sign = np.ones_like(px)
    for i in range(len(verts)):
        (xi, yi), (xj, yj) = verts[i], verts[i - 1]
        ex, ey = xj - xi, yj - yi
        wx, wy = px - xi, py - yi
        h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d = np.minimum(d, (wx - ex * h) ** 2 + (wy - ey * h) ** 2)
        c1, c2, c3 = py >= yi, py < yj, ex * wy > ey * wx
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        sign = np.where(flip, -sign, sign)
    return sign * np.sqrt(d)


def _star(points: int, outer: float, inner: float) -> np.ndarray:
    a = np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


_CROSS = np.array([(1, 0.34), (0.34, 0.34), (0.34, 1), (-0.34, 1), (-0.34, 0.34), (-1, 0.34),
                   (-1, -0.34), (-0.34, -0.34), (-0.34, -1), (0.34, -1), (0.34, -0.34),
                   (1, -0.34)])
# Polygons at radius 1; sizes chosen so that every class covers a similar area.
_POLYGONS = {
    "square": np.array([(1, 1), (-1, 1), (-1, -1), (1, -1)]) * 0.85,
    "triangle": _star(3, 1.0, 0.5) * 1.35,
    "star": _star(5, 1.3, 0.52),
    "cross": _CROSS * 1.1,
}


def _shape_sdf(name: str, px: np.ndarray, py: np.ndarray, extra: float) -> np.ndarray:
    """Signed distance in units of the shape's radius (local, rotated coordinates)."""
    if name in _POLYGONS:
        return _polygon_sdf(px, py, _POLYGONS[name])
    rho = np.sqrt(px * px + py * py)
    if name == "circle":
        return rho - 1.0
    if name == "ring":
        inner = 1.05 * extra
        return np.abs(rho - (1.05 + inner) / 2) - (1.05 - inner) / 2
    bx, by = 0.6 * np.cos(extra), 0.6 * np.sin(extra)  # crescent: a disc minus a shifted disc
    return np.maximum(rho - 1.1, 0.95 - np.sqrt((px - bx) ** 2 + (py - by) ** 2))


def _render(image: np.ndarray, mask: np.ndarray, s: _Shape) -> None:
    """Draw ``s`` into ``image`` (anti-aliased) and ``mask`` in place, inside its bounding box."""
    size = image.shape[-1]
    reach = 1.45 * s.radius + 2
    y0, y1 = max(0, int(s.cy - reach)), min(size, int(s.cy + reach) + 1)
    x0, x1 = max(0, int(s.cx - reach)), min(size, int(s.cx + reach) + 1)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = _grid(size)
    dx, dy = xx[y0:y1, x0:x1] - s.cx, yy[y0:y1, x0:x1] - s.cy
    cos, sin = np.cos(s.angle), np.sin(s.angle)
    px, py = (dx * cos + dy * sin) / s.radius, (dy * cos - dx * sin) / s.radius
    sdf = _shape_sdf(CLASSES[s.cls], px, py, s.extra) * s.radius  # in pixels
    alpha = np.clip(0.5 - sdf, 0.0, 1.0)
    shade = (dx * s.shade[3] + dy * s.shade[4]) / s.radius
    fill = s.colour[:, None, None] + s.shade[:3, None, None] * shade
    region = image[:, y0:y1, x0:x1]
    region += alpha * (fill - region)
    mask[y0:y1, x0:x1][sdf <= 0] = s.cls


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour far enough from the background colour ``under`` to be seen."""
    best, dist = None, -1.0
    for _ in range(20):
        colour = rng.uniform(0.0, 1.0, 3)
        d = float(np.linalg.norm(colour - under))
        if d >= _MIN_CONTRAST:
            return colour
        if d > dist:
            best, dist = colour, d
    return best


def _make_shape(rng, cls, cx, cy, radius, background) -> _Shape:
    size = background.shape[-1]
    iy, ix = int(np.clip(cy, 0, size - 1)), int(np.clip(cx, 0, size - 1))
    r = max(1, int(radius))
    under = background[:, max(0, iy - r): iy + r + 1, max(0, ix - r): ix + r + 1].mean((1, 2))
    extra = rng.uniform(0.4, 0.58) if CLASSES[cls] == "ring" else rng.uniform(0, 2 * np.pi)
    a = rng.uniform(0, 2 * np.pi)
    shade = np.concatenate([rng.uniform(-0.12, 0.12, 3), [np.cos(a), np.sin(a)]])
    return _Shape(cls, cx, cy, radius, rng.uniform(0, 2 * np.pi), extra,
                  _pick_colour(rng, under), shade)


def _layout(rng: np.random.Generator, background: np.ndarray) -> list[_Shape]:
    """Distractors first (drawn below), the main shape last; distractors avoid the main one."""
    size = background.shape[-1]
    k = len(CLASSES) - 1
    scale = size / _BASE
    main_cls = int(rng.integers(1, k + 1))
    r_main = rng.uniform(*_MAIN_RADIUS) * scale
    lo, hi = 0.85 * r_main, size - 0.85 * r_main
    main = _make_shape(rng, main_cls, rng.uniform(lo, hi), rng.uniform(lo, hi), r_main,
                       background)
    n_distractors = int(rng.choice(3, p=(0.3, 0.4, 0.3)))
    others = rng.permutation([c for c in range(1, k + 1) if c != main_cls])[:n_distractors]
    placed = [main]
    for cls in others:
        high = min(_DISTRACTOR_RADIUS[1], 0.7 * r_main / scale)  # >= the low end: r_main >= 10
        radius = rng.uniform(_DISTRACTOR_RADIUS[0], high) * scale
        for _ in range(12):
            cx, cy = rng.uniform(0.6 * radius, size - 0.6 * radius, 2)
            if all(np.hypot(cx - p.cx, cy - p.cy) >= 1.05 * (radius + p.radius) for p in placed):
                placed.append(_make_shape(rng, int(cls), cx, cy, radius, background))
                break
    return placed[1:] + [main]


def make_scene(seed: int, *, size: int = 64) -> Scene:
    """Generate one scene from ``seed``: the same seed always gives the same scene.

    Args:
        seed: non-negative integer.
        size: height and width in pixels (>= 32); shapes scale with it.

    Returns:
        a :class:`Scene` with ``image`` ``(3, H, W)`` float32 in ``[0, 1]``, ``mask`` ``(H, W)``
        int64 class indices, ``label`` the main shape's class.

    Raises:
        ConfigError: size below 32, a negative seed, or a size too large for memory (refused
            before anything is allocated).

    Example:
        >>> s = make_scene(3, size=48)
        >>> s.image.dtype, s.mask.dtype, int(s.mask.max()) <= len(CLASSES) - 1
        (dtype('float32'), dtype('int64'), True)
    """
    _check(size, seed)
    _check_scene_memory(size)
    rng = np.random.default_rng(seed)
    image = _background(rng, size)
    background = image.copy()
    mask = np.zeros((size, size), np.int64)
    shapes = _layout(rng, background)
    for shape in shapes:
        _render(image, mask, shape)
    image += rng.normal(0.0, rng.uniform(0.02, 0.07), image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0, out=image).astype(np.float32, copy=False)
    return Scene(image=image, mask=mask, label=shapes[-1].cls, seed=int(seed))


def make_dataset(
    n: int, *, seed: int, size: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` scenes; scene ``i`` is ``make_scene(scene_seed(seed, i), size=size)``.

    Args:
        n: number of scenes (>= 1).
        seed: non-negative integer; different seeds give different scenes.
        size: height and width in pixels (>= 32).

    Returns:
        ``images`` ``(N, 3, H, W)`` float32 in ``[0, 1]``, ``masks`` ``(N, H, W)`` int64 and
        ``labels`` ``(N,)`` int64.

    Raises:
        ConfigError: ``n < 1``, size below 32, a negative seed, or scenes too many or too
            large for memory (refused before anything is allocated).

    Example:
        >>> images, masks, labels = make_dataset(4, seed=0, size=32)
        >>> images.shape, masks.shape, labels.shape
        ((4, 3, 32, 32), (4, 32, 32), (4,))
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"Number of scenes must be an integer >= 1, got {n!r}.")
    _check(size, seed)
    check_size(_DATASET_BYTES_PER_PIXEL * n * size * size + _SCENE_BYTES_PER_PIXEL * size * size,
               what=f"{n} scenes of {size} x {size} pixels", fix="use fewer or smaller scenes")
    images = np.empty((n, 3, size, size), np.float32)
    masks = np.empty((n, size, size), np.int64)
    labels = np.empty(n, np.int64)
    for i in range(n):
        scene = make_scene(scene_seed(seed, i), size=size)
        images[i], masks[i], labels[i] = scene.image, scene.mask, scene.label
    return images, masks, labels


def save_dataset(
    folder: str | os.PathLike[str],
    n: int,
    *,
    seed: int,
    size: int = 64,
    layout: str = "classes",
) -> Path:
    """Write ``n`` scenes as PNG files, ready for ``featuremap probe`` or ``featuremap fit-seg``.

    Layouts:
        ``"classes"``: ``FOLDER/<class name>/scene_00000.png``, one sub-folder per shape class
        (as torchvision's ``ImageFolder``).
        ``"segmentation"``: ``FOLDER/images/scene_00000.png`` (RGB) and
        ``FOLDER/masks/scene_00000.png`` (uint8 class indices, same stem), plus
        ``FOLDER/classes.txt`` with one class name per index.

    The scenes are those of :func:`make_dataset`, generated and written one at a time (memory
    does not grow with ``n``). The folder appears whole or not at all: the files are written
    into a temporary folder beside it, renamed to ``folder`` at the end, and removed on an
    error or Ctrl-C.

    Args:
        folder: where to write: a new folder, or an empty one (its parents are created).
        n: number of scenes (>= 1).
        seed: non-negative integer, as for :func:`make_dataset`.
        size: height and width in pixels (>= 32).
        layout: ``"classes"`` or ``"segmentation"``.

    Returns:
        the folder as a ``Path``.

    Raises:
        ConfigError: an unknown layout, ``n < 1``, size below 32, a negative seed, a scene too
            large for memory, or a ``folder`` that is a file or a folder that is not empty.

    Example:
        >>> save_dataset("shapes_seg", 100, seed=1, layout="segmentation")  # doctest: +SKIP
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"Unknown layout '{layout}': use 'classes' or 'segmentation'.")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"Number of scenes must be an integer >= 1, got {n!r}.")
    _check(size, seed)
    _check_scene_memory(size)
    root = Path(folder)
    if root.parent != root:
        root.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(root) as tmp:
        _write_scenes(tmp, n, seed=seed, size=size, layout=layout)
    return root


def _write_scenes(root: Path, n: int, *, seed: int, size: int, layout: str) -> None:
    from PIL import Image  # lazily: only writing needs Pillow

    if layout == "classes":
        for name in CLASSES[1:]:
            (root / name).mkdir()
    else:
        (root / "images").mkdir()
        (root / "masks").mkdir()
        (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for i in range(n):
        scene = make_scene(scene_seed(seed, i), size=size)
        name = f"scene_{i:05d}.png"
        rgb = np.round(scene.image.transpose(1, 2, 0) * 255).astype(np.uint8)
        if layout == "classes":
            Image.fromarray(rgb).save(root / CLASSES[scene.label] / name)
        else:
            Image.fromarray(rgb).save(root / "images" / name)
            Image.fromarray(scene.mask.astype(np.uint8)).save(root / "masks" / name)

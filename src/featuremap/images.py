"""Load any image as a float array in ``[0, 1]`` with layout ``(C, H, W)``, and bundled samples.

One door, :func:`load_image`, takes a path, a ``"sample:NAME"`` string, a ``PIL.Image``, encoded
bytes or a NumPy array and returns ``float32`` values in ``[0, 1]``: 3 channels for
``mode="rgb"``, 1 for ``mode="gray"``. Every bad input raises :class:`~featuremap.errors.ImageError`
(or :class:`~featuremap.errors.UnknownNameError` for an unknown sample) with one line that says
what was given, what is wrong and how to fix it; no raw ``OSError`` or Pillow traceback escapes.

Sample images (:mod:`featuremap.samples`, re-exported here) are the files scikit-image ships in
``skimage/data``; they are located without importing scikit-image (which is slow to import).
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featuremap.errors import ImageError
from featuremap.samples import SAMPLE_PREFIX, list_samples, sample_path

__all__ = [
    "LUMA",
    "MODES",
    "is_grey",
    "list_samples",
    "load_image",
    "resize_short_side",
    "sample_path",
    "to_uint8_hwc",
]

ImageSource = str | os.PathLike[str] | bytes | Image.Image | np.ndarray

MODES = ("rgb", "gray")
_LIMIT_FIX = (
    "If you trust the file, raise the limit (max_pixels= in Python, --max-pixels in the CLI)."
)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Pillow raises many kinds of exception on damaged files; all of them mean "cannot decode".
DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
    struct.error, zlib.error,
)

# ------------------------------------------------------------------------------ public door


def load_image(
    source: ImageSource,
    *,
    mode: str = "rgb",
    short_side: int | None = None,
    max_pixels: int | None = 50_000_000,
    formats: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Load an image as ``float32`` values in ``[0, 1]`` with layout ``(C, H, W)``.

    Files may be PNG, JPEG, WebP, TIFF, BMP or GIF (first frame); EXIF orientation is applied.
    Pillow modes 1, L, LA, P (with or without transparency), RGB, RGBA, CMYK, I;16 (any byte
    order), I and F are read (and YCbCr, LAB, HSV through Pillow's RGB conversion). Alpha is
    composited onto a white background. 8-bit values are divided by 255 and 16-bit values by
    65535 (no detour through 8 bits). Mode I (32-bit integers) is divided by 65535 when its
    values lie in ``[0, 65535]``, else min-max scaled. Mode F (32-bit float) is kept when it lies
    in ``[0, 1]``, else min-max scaled (a constant image is clipped). Gray is the luminance
    ``0.299 R + 0.587 G + 0.114 B`` computed in float; gray sources give 3 equal channels in RGB.

    Args:
        source: a path (``str`` or ``Path``); ``"sample:NAME"`` (see :func:`list_samples`);
            the bytes of an encoded image file; a ``PIL.Image.Image``; or a NumPy array
            ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` (RGBA) of ``uint8`` (divided by 255),
            ``uint16`` (divided by 65535), ``bool`` or float already in ``[0, 1]``.
        mode: ``"rgb"`` (3 channels) or ``"gray"`` (1 channel).
        short_side: if given, resize (Lanczos, in float) so that the shorter side has this many
            pixels, keeping the aspect ratio.
        max_pixels: refuse files, PIL images and resize results with more pixels than this
            (checked from the header, before decoding); ``None`` lifts the limit, Pillow's
            decompression-bomb guard included (the guard is raised for the call only).
        formats: the Pillow formats a file or bytes may be (``("PNG", "JPEG")``), recognised
            from the content; None: any Pillow reads. A server decoding uploads names the
            common ones, so that no rarer decoder (or Ghostscript, for PostScript) sees them.

    Returns:
        A ``float32`` array ``(3, H, W)`` or ``(1, H, W)`` with values in ``[0, 1]``.

    Raises:
        ImageError: a missing, empty, truncated, corrupt or oversized file, something that is not
            an image, an unsupported pixel mode, an array of the wrong shape or dtype, or bad
            options.
        UnknownNameError: an unknown ``"sample:NAME"``.

    Example:
        >>> load_image("sample:astronaut").shape
        (3, 512, 512)
        >>> load_image("sample:camera", mode="gray", short_side=128).shape
        (1, 128, 128)
    """
    _check_options(mode, short_side, max_pixels)
    pixels, alpha = _decode(source, max_pixels, formats)
    if alpha is not None:
        pixels = _composite_on_white(pixels, alpha)
    image = _to_layout(pixels, mode)
    if short_side is not None:
        image = resize_short_side(image, short_side, max_pixels)
    return image


def to_uint8_hwc(image: np.ndarray) -> np.ndarray:
    """Turn a ``(C, H, W)`` float image in ``[0, 1]`` into ``uint8`` for display or saving.

    Args:
        image: ``(3, H, W)``, ``(1, H, W)`` or ``(H, W)`` floats; values are clipped to
            ``[0, 1]`` and rounded.

    Returns:
        ``(H, W, 3)`` for 3 channels, ``(H, W)`` for 1 channel or a 2-D input.

    Raises:
        ImageError: the array is not 2-D or ``(1 or 3, H, W)``, or holds NaN or infinity.

    Example:
        >>> to_uint8_hwc(load_image("sample:camera", mode="gray")).shape
        (512, 512)
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = array[0] if array.shape[0] == 1 else np.moveaxis(array, 0, -1)
    elif array.ndim != 2:
        raise ImageError(
            f"to_uint8_hwc expects an image (C, H, W) with C = 1 or 3, or (H, W); got shape "
            f"{array.shape}. Load images with load_image(), which returns that layout."
        )
    if array.dtype.kind not in "biuf" or not np.all(np.isfinite(array)):
        raise ImageError(
            f"to_uint8_hwc expects finite numbers in [0, 1]; got dtype {array.dtype} "
            f"{'with NaN or infinity' if array.dtype.kind == 'f' else ''}".rstrip() + "."
        )
    return np.round(np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


# ---------------------------------------------------------------------------------- options


def _check_options(mode: object, short_side: object, max_pixels: object) -> None:
    if mode not in MODES:
        raise ImageError(f"Unsupported mode {mode!r}: choose 'rgb' (3 channels) or 'gray' (1).")
    for name, value in (("short_side", short_side), ("max_pixels", max_pixels)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ImageError(f"{name} must be a positive integer or None, got {value!r}.")


def _check_pixels(size: tuple[int, int], label: str, max_pixels: int | None) -> None:
    """Refuse an image of ``size`` (width, height) with more than ``max_pixels`` pixels."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{label} is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"max_pixels={max_pixels:,}. {_LIMIT_FIX}"
        )


# --------------------------------------------------------------------------------- decoding

Decoded = tuple[np.ndarray, np.ndarray | None]  # (H, W) or (H, W, 3) floats; alpha (H, W)


def _decode(source: object, max_pixels: int | None,
            formats: tuple[str, ...] | None = None) -> Decoded:
    """Dispatch on the kind of ``source``; return float pixels and an optional alpha."""
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        return _read_pil(source, "the PIL image", max_pixels, opened=source)
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("The image bytes are empty (0 bytes). Pass the contents of a file.")
        return _read_pil(io.BytesIO(source), "the image bytes", max_pixels, formats=formats)
    if isinstance(source, str) and source.startswith(SAMPLE_PREFIX):
        path = sample_path(source)
        return _read_pil(path, f"sample '{source[len(SAMPLE_PREFIX):]}'", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = _check_file(Path(os.fspath(source)).expanduser())
        return _read_pil(path, f"Image file '{path}'", max_pixels, formats=formats)
    raise ImageError(
        f"Cannot load an image from a {type(source).__name__}: pass a path, 'sample:NAME', "
        "image bytes, a PIL image or a NumPy array (H, W[, 3 or 4])."
    )


def _check_file(path: Path) -> Path:
    """Raise a clear ImageError unless ``path`` is a non-empty readable file."""
    if not path.exists():
        hint = "Check the path."
        if not path.suffix and path.name.lower() in list_samples():
            hint = f"Did you mean the sample 'sample:{path.name.lower()}'?"
        raise ImageError(f"Image file '{path}' does not exist. {hint}")
    if path.is_dir():
        raise ImageError(f"'{path}' is a directory, not an image file. Pass one image file.")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"Cannot read image file '{path}': {exc.strerror or exc}.") from None
    if size == 0:
        raise ImageError(
            f"Image file '{path}' is empty (0 bytes). Re-export or re-download it."
        )
    return path


_LIFT_LOCK = threading.Lock()


@contextmanager
def _bomb_guard(max_pixels: int | None) -> Iterator[None]:
    """Turn Pillow's DecompressionBombWarning into an error for this call only.

    When ``max_pixels`` is above Pillow's own limit (or None), Pillow's limit is raised to it for
    the call, under a lock, and restored afterwards: the user asked for the larger size.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        limit = Image.MAX_IMAGE_PIXELS
        if limit is None or (max_pixels is not None and max_pixels <= limit):
            yield
            return
        with _LIFT_LOCK:
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                yield
            finally:
                Image.MAX_IMAGE_PIXELS = limit


def _read_pil(
    fp: Path | io.BytesIO | Image.Image, label: str, max_pixels: int | None, *,
    opened: Image.Image | None = None, formats: tuple[str, ...] | None = None,
) -> Decoded:
    """Open (unless ``opened``), check the size, decode fully and convert; map every failure."""
    try:
        with _bomb_guard(max_pixels):
            if opened is not None:
                _check_pixels(opened.size, label, max_pixels)
                return _from_pil(opened, label)
            with Image.open(fp, formats=formats) as image:
                _check_pixels(image.size, label, max_pixels)
                return _from_pil(image, label)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label} is too large to load safely: {exc} {_LIMIT_FIX}") from None
    except UnidentifiedImageError:
        raise ImageError(_not_an_image(fp, label, formats)) from None
    except DECODE_ERRORS as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ImageError(
            f"Cannot decode {_lower_first(label)}: it is truncated or corrupt ({detail}). "
            "Re-export or re-download it."
        ) from None


def _lower_first(label: str) -> str:
    return label[0].lower() + label[1:]


def _not_an_image(fp: object, label: str, formats: tuple[str, ...] | None = None) -> str:
    """Say that ``fp`` is no image Pillow knows, and whether it looks like text."""
    head = b""
    try:
        if isinstance(fp, Path):
            with open(fp, "rb") as file:
                head = file.read(64)
        elif isinstance(fp, io.BytesIO):
            head = fp.getvalue()[:64]
    except OSError:
        pass
    looks = ""
    if head and all(b in b"\t\n\r" or 32 <= b < 127 for b in head):
        looks = f" It looks like text (starts with {head[:24].decode('ascii')!r})."
    known = ", ".join(formats) if formats else "PNG, JPEG, WebP, TIFF, BMP, GIF, ..."
    which = f"in a format read here ({known})" if formats else f"Pillow can read ({known})"
    return f"{label} is not an image {which}.{looks} Check that it is really an image file."


def _from_pil(image: Image.Image, label: str) -> Decoded:
    """Decode ``image`` (applying EXIF orientation) into float pixels and optional alpha."""
    image.load()  # decode now, so truncation raises here (LOAD_TRUNCATED_IMAGES left alone)
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.float32) / np.float32(65535), None
    if mode == "I":
        return _scale_int32(np.asarray(image)), None
    if mode == "F":
        return _scale_float(np.asarray(image, dtype=np.float32), label), None
    if mode in ("1", "L", "RGB") and "transparency" not in image.info:
        return _unit(image.convert("L") if mode == "1" else image), None
    if mode in ("1", "L", "La"):
        image = image.convert("LA")
    elif mode not in ("LA", "RGBA"):
        image = _convert(image, "RGBA" if _has_alpha(image) else "RGB", label)
    values = _unit(image)
    if image.mode == "LA":
        return values[..., 0], values[..., 1]
    if image.mode == "RGBA":
        return values[..., :3], values[..., 3]
    return values, None


def _unit(image: Image.Image) -> np.ndarray:
    """8-bit Pillow image -> float32 in [0, 1]."""
    return np.asarray(image).astype(np.float32) / np.float32(255)


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info


def _convert(image: Image.Image, target: str, label: str) -> Image.Image:
    try:
        return image.convert(target)
    except ValueError:
        raise ImageError(
            f"{label} has Pillow mode '{image.mode}', which cannot be converted to {target}. "
            "Save it as an 8- or 16-bit RGB or grayscale image."
        ) from None


def _scale_int32(values: np.ndarray) -> np.ndarray:
    """Mode I: divide by 65535 when within 16 bits, else min-max scale."""
    values = values.astype(np.float64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        return _min_max(values)
    return (values / 65535.0).astype(np.float32)


def _scale_float(values: np.ndarray, label: str) -> np.ndarray:
    """Mode F or float arrays from files: keep within [0, 1], else min-max scale."""
    if not np.all(np.isfinite(values)):
        raise ImageError(f"{label} holds NaN or infinite values. Replace them before loading.")
    if values.size == 0 or (values.min() >= 0.0 and values.max() <= 1.0):
        return values.astype(np.float32)
    return _min_max(values.astype(np.float64))


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high == low:  # a constant image has no range to stretch
        return np.clip(values, 0.0, 1.0).astype(np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _from_array(array: np.ndarray) -> Decoded:
    """Validate a NumPy image (H, W), (H, W, 3) or (H, W, 4) and scale it to [0, 1] floats."""
    shape, dtype = array.shape, array.dtype
    if array.ndim == 3 and shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and shape[-1] in (3, 4))) or 0 in shape:
        hint = ""
        if array.ndim == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
            hint = " It looks channels-first: pass array.transpose(1, 2, 0)."
        raise ImageError(
            f"An image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {shape}.{hint}"
        )
    values = _array_values(array, dtype)
    if values.ndim == 3 and values.shape[-1] == 4:
        return values[..., :3], values[..., 3]
    return values, None


def _array_values(array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    if dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255)
    if dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535)
    if dtype == np.bool_:
        return array.astype(np.float32)
    if dtype.kind != "f":
        raise ImageError(
            f"An image array must be uint8, uint16, bool or float in [0, 1]; got dtype {dtype}. "
            "Convert it, e.g. array.astype(np.uint8) for 0-255 values."
        )
    if not np.all(np.isfinite(array)):
        raise ImageError("The image array holds NaN or infinite values. Replace them first.")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise ImageError(
            f"A float image array must lie in [0, 1]; got values in [{low:g}, {high:g}]. "
            "Scale it first (e.g. divide 0-255 values by 255)."
        )
    return array.astype(np.float32)


# ------------------------------------------------------------------------------- conversion


def _composite_on_white(pixels: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend ``pixels`` over white with ``alpha`` in [0, 1]."""
    weight = alpha[..., None] if pixels.ndim == 3 else alpha
    return (pixels * weight + (np.float32(1) - weight)).astype(np.float32)


def _to_layout(pixels: np.ndarray, mode: str) -> np.ndarray:
    """(H, W) or (H, W, 3) floats -> (3, H, W) or (1, H, W) float32 in [0, 1]."""
    if mode == "gray":
        gray = pixels if pixels.ndim == 2 else pixels @ LUMA
        image = gray[None]
    elif pixels.ndim == 2:
        image = np.repeat(pixels[None], 3, axis=0)
    else:
        image = np.moveaxis(pixels, -1, 0)
    return np.ascontiguousarray(np.clip(image, 0.0, 1.0), dtype=np.float32)


def resize_short_side(image: np.ndarray, short_side: int, max_pixels: int | None) -> np.ndarray:
    """Resize (C, H, W) floats with Lanczos so that min(H, W) == short_side."""
    _, height, width = image.shape
    scale = short_side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return image
    _check_pixels(size, f"Resizing to short_side={short_side} gives an image that", max_pixels)
    channels = [
        np.asarray(Image.fromarray(channel).resize(size, Image.Resampling.LANCZOS))
        for channel in image
    ]
    return np.clip(np.stack(channels), 0.0, 1.0).astype(np.float32)


_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def is_grey(source: ImageSource) -> bool:
    """True when ``source`` holds one channel of values (a grey file, PIL image or array).

    Reads only the header of a file. A colour image whose three channels happen to be equal is
    not grey: only the source's own kind counts.

    Example:
        >>> is_grey("sample:camera"), is_grey("sample:astronaut")
        (True, False)
    """
    if isinstance(source, np.ndarray):
        return source.ndim == 2 or (source.ndim == 3 and 1 in (source.shape[0], source.shape[-1])
                                    and min(source.shape[0], source.shape[-1]) == 1)
    try:
        if isinstance(source, Image.Image):
            return _pil_grey(source)
        if isinstance(source, (bytes, bytearray)):
            with Image.open(io.BytesIO(source)) as image:
                return _pil_grey(image)
        if isinstance(source, str) and source.startswith(SAMPLE_PREFIX):
            source = sample_path(source)
        if isinstance(source, (str, os.PathLike)):
            with Image.open(Path(os.fspath(source)).expanduser()) as image:
                return _pil_grey(image)
    except (OSError, UnidentifiedImageError, ValueError):
        return False
    return False


def _pil_grey(image: Image.Image) -> bool:
    if image.mode == "P":
        palette = image.getpalette() or []
        return all(palette[k] == palette[k + 1] == palette[k + 2]
                   for k in range(0, len(palette) - 2, 3))
    return image.mode in _GREY_MODES

"""Read label masks, checked, and read one item of a collection (image, mask)."""


from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featuremap.datasets.collection import MASK_MODES, MAX_CLASSES, MAX_PIXELS, Item, shown
from featuremap.errors import ConfigError, ImageError, printable
from featuremap.images import DECODE_ERRORS, load_image
from featuremap.preprocess import Preprocess

# ------------------------------------------------------------------------------- masks


def read_mask(
    path: str | os.PathLike[str],
    *,
    size: tuple[int, int] | None = None,
    classes: Sequence[str] | None = None,
    classes_file: str | os.PathLike[str] | None = None,
    ignore_index: int | None = None,
    max_classes: int = MAX_CLASSES,
    max_pixels: int | None = MAX_PIXELS,
) -> np.ndarray:
    """Read a label map ``(H, W)`` whose pixel values are class indices, and check it.

    Masks are single-channel integer images (Pillow modes 1, L, P, I;16 and I): 8-bit (PNG L
    or P), 16-bit (PNG I;16) or 32-bit (TIFF I). Checks, from the header before decoding where
    possible: the mode (colour masks are refused), the pixel count (``max_pixels``), the size
    (``size``); then, on the values other than ``ignore_index``: no negative values, the
    largest label within ``classes`` if given, and the classes it implies (largest label + 1)
    at most ``max_classes``, so that a 16-bit mask holding 65535 cannot make a caller allocate
    65,536 classes.

    Args:
        path: the mask file.
        size: ``(H, W)`` of its image; a mask of another size is refused.
        classes: the class names; a label ``>= len(classes)`` is refused.
        classes_file: where ``classes`` came from (named in the message).
        ignore_index: a label left out of the checks (a "void" value such as 255).
        max_classes: the most classes a mask may imply.
        max_pixels: refuse larger files before decoding (``None``: Pillow's own limit).

    Returns:
        The labels ``(H, W)``, in the file's integer type (uint8, uint16 or int32; mode 1 as
        uint8 0/1).

    Raises:
        ImageError: a file that is missing, empty, not an image, truncated or corrupt, or over
            ``max_pixels`` (a per-file problem: :func:`batches` skips it).
        ConfigError: a colour (or otherwise non-label) mask, a size that is not ``size``, a
            negative or non-2-D mask, a label beyond ``classes``, more than ``max_classes``
            implied classes (a dataset problem: it stops the run).

    Example:
        >>> read_mask("seg/masks/scene_00000.png", classes=CLASSES).shape  # doctest: +SKIP
        (64, 64)
    """
    from PIL import Image

    check_mask_options(ignore_index, max_classes, max_pixels)
    path = Path(path)
    name = printable(path.name)
    try:
        with Image.open(_mask_file(path)) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImageError(f"mask '{name}' is {image.width}x{image.height} = "
                                 f"{image.width * image.height:,} pixels, over the limit of "
                                 f"max_pixels={max_pixels:,}. If you trust the file, raise the "
                                 "limit.")
            if image.mode not in MASK_MODES:
                raise ConfigError(
                    f"mask '{name}' is a {image.mode} image, not a label map: save masks as "
                    "single-channel PNGs (mode L, P or I) whose pixel values are class indices "
                    "0, 1, 2, ..., not colours.")
            if size is not None and (image.height, image.width) != tuple(size):
                raise ConfigError(size_mismatch(name, (image.height, image.width), size))
            image.load()
            values = np.asarray(image)
    except (ImageError, ConfigError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"mask '{name}' is too large to load safely: {err}") from None
    except DECODE_ERRORS as err:
        detail = printable(" ".join(str(err).split()) or type(err).__name__)
        raise ImageError(f"Cannot read mask '{name}': it is not an image, or it is truncated or "
                         f"corrupt ({detail}). Re-export it.") from None
    values = _label_values(values, name)
    _check_labels(values, name, classes, classes_file, ignore_index, max_classes)
    return values


def _mask_file(path: Path) -> Path:
    """``path`` if it is a non-empty file, else an ImageError saying what it is."""
    try:
        size = path.stat().st_size
    except OSError:
        raise ImageError(f"mask file '{shown(path)}' does not exist or cannot be read.") from None
    if path.is_dir():
        raise ImageError(f"mask '{shown(path)}' is a folder, not an image file.")
    if size == 0:
        raise ImageError(f"mask '{printable(path.name)}' is empty (0 bytes). Re-export it.")
    return path


def check_mask_options(ignore_index: Any, max_classes: Any, max_pixels: Any) -> None:
    for name, value, low in (("ignore_index", ignore_index, 0), ("max_classes", max_classes, 1),
                             ("max_pixels", max_pixels, 1)):
        if value is None and name != "max_classes":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            none = "" if name == "max_classes" else " or None"
            raise ConfigError(f"{name} must be an integer >= {low}{none}, got {value!r}.")


def _label_values(values: np.ndarray, name: str) -> np.ndarray:
    if values.dtype == bool:
        values = values.astype(np.uint8)
    if values.dtype.byteorder not in ("=", "|"):  # I;16B: big-endian, made native
        values = values.astype(values.dtype.newbyteorder("="))
    if values.ndim != 2 or (values.size and values.min() < 0):
        raise ConfigError(f"mask '{name}' holds negative or non-2-D values; masks hold class "
                          "indices 0, 1, 2, ...")
    return values


def _check_labels(values: np.ndarray, name: str, classes: Sequence[str] | None,
                  classes_file: str | os.PathLike[str] | None, ignore_index: int | None,
                  max_classes: int) -> None:
    labelled = values if ignore_index is None else values[values != ignore_index]
    if not labelled.size:
        return
    top = int(labelled.max())
    if classes is not None and top >= len(classes):
        n = len(classes)
        listing = f"'{shown(classes_file)}'" if classes_file is not None else "the class list"
        fix = ("if it marks unlabelled pixels, leave them out with ignore_index "
               f"(--ignore-index {top})" if top == 255 or top > 2 * n else "add the missing names")
        raise ConfigError(f"a mask ('{name}') holds label {top}, but {listing} names only {n} "
                          f"classes (0..{n - 1}): {fix}.")
    if top + 1 > max_classes:
        bits = values.dtype.itemsize * 8
        raise ConfigError(
            f"mask '{name}' holds label {top:,} ({bits}-bit mask), which implies {top + 1:,} "
            f"classes, over the limit of max_classes={max_classes:,}: masks hold class indices "
            "0..K-1, so remap its values, leave a void value out with ignore_index "
            f"(--ignore-index {top}), or raise max_classes if there are that many classes.")


def size_mismatch(name: str, mask: Sequence[int], image: Sequence[int]) -> str:
    return (f"mask '{name}' is {mask[1]} x {mask[0]} pixels but its image is {image[1]} x "
            f"{image[0]}: a mask must match its image.")


# ------------------------------------------------------------------------------ reading


def check_native(preprocess: Any) -> None:
    if isinstance(preprocess, Preprocess) and (preprocess.resize or preprocess.crop):
        raise ConfigError(f"masks need their images at their own size, but the preprocessing "
                          f"resizes or crops ({preprocess.describe()}): pass "
                          "dataclasses.replace(preprocess, resize=None, crop=None).")


@dataclass(frozen=True)
class Reader:
    """Reads one :class:`Item`: its image, and for a pair its mask, checked against the image.

    A plain, picklable value (it can be sent to other processes). ``Collection.reader()``
    builds one with the collection's classes.

    Attributes:
        preprocess: ``None``: :func:`~featuremap.images.load_image` (RGB ``(3, H, W)`` in
            ``[0, 1]``); a :class:`~featuremap.images.Preprocess`: its ``__call__`` (resized,
            cropped, normalised; for pairs it must neither resize nor crop); any other callable:
            ``preprocess(path) -> (C, H, W)``.
        classes, classes_file, ignore_index, max_classes: the mask checks of :func:`read_mask`.
        max_pixels: refuse larger files before decoding.

    Example:
        >>> pairs = open_collection("seg")  # doctest: +SKIP
        >>> image, mask = pairs.reader()(pairs[0])  # doctest: +SKIP
    """

    preprocess: Callable[..., np.ndarray] | None = None
    classes: tuple[str, ...] | None = None
    classes_file: Path | None = None
    ignore_index: int | None = None
    max_classes: int = MAX_CLASSES
    max_pixels: int | None = MAX_PIXELS

    def __post_init__(self) -> None:
        check_mask_options(self.ignore_index, self.max_classes, self.max_pixels)

    def __call__(self, item: Item) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image (C, H, W), mask (H, W) or None)``.

        Raises:
            ImageError: an unreadable image or mask (the stream skips the item).
            ConfigError: a mask problem (see :func:`read_mask`) or a mask whose size differs
                from its image's.
        """
        mask = None
        if item.mask is not None:  # the mask first: a colour mask is refused before decoding
            check_native(self.preprocess)
            mask = read_mask(item.mask, classes=self.classes, classes_file=self.classes_file,
                             ignore_index=self.ignore_index, max_classes=self.max_classes,
                             max_pixels=self.max_pixels)
        image = self.image(item.path)
        if mask is not None and image.shape[1:] != mask.shape:
            raise ConfigError(size_mismatch(printable(item.mask.name), mask.shape,
                                             image.shape[1:]))
        return image, mask

    def image(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The image of ``path`` as :attr:`preprocess` makes it, ``(C, H, W)``."""
        if self.preprocess is None:
            return load_image(path, max_pixels=self.max_pixels)
        if isinstance(self.preprocess, Preprocess):
            return self.preprocess(path, max_pixels=self.max_pixels)
        return self.preprocess(path)



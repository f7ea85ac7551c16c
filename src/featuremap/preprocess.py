"""What a network expects of an image: resize, centre crop, normalise, and notes on what it cost.

:class:`Preprocess` mirrors torchvision's ``weights.transforms()``: resize the shorter side, crop
the centre, normalise per channel. :meth:`Preprocess.prepare` also says, in plain sentences, what
the user may not expect: a photo shrunk many times (fine detail is gone), a tiny image enlarged
(no detail is added), a crop that throws away much of a long image, a grey image repeated to
three channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featuremap.images import LUMA, ImageSource, is_grey, load_image, resize_short_side

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocess", "center_crop"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHRINK_NOTE = 4.0  # a short side shrunk more than this many times gets a note
CROP_NOTE = 0.5  # a centre crop that keeps less than this share of the image gets a note


@dataclass(frozen=True)
class Preprocess:
    """What a network expects of an image: resize, centre crop, normalise (as torchvision's
    ``weights.transforms()``).

    Attributes:
        resize: resize so the shorter side has this many pixels (None: keep the size).
        crop: centre-crop to ``crop x crop`` after resizing (None: no crop).
        mean, std: per-channel normalisation applied to values in ``[0, 1]``.
        channels: 3 for RGB networks, 1 for grey ones.

    Example:
        >>> Preprocess(resize=256, crop=224)("sample:astronaut").shape
        (3, 224, 224)
    """

    resize: int | None = 256
    crop: int | None = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3

    def prepare(self, source: ImageSource, *, max_pixels: int | None = 50_000_000,
                label: str = "the image") -> tuple[np.ndarray, list[str]]:
        """Load, resize and crop ``source`` and say what that did.

        Returns:
            ``(image, notes)``: ``(C, H, W)`` float32 in ``[0, 1]`` (not yet normalised) and
            plain sentences about conversions the user may not expect.
        """
        notes: list[str] = []
        if isinstance(source, np.ndarray) and source.ndim == 3 and source.shape[0] in (1, 3):
            image = source.astype(np.float32, copy=False)
            grey = image.shape[0] == 1
            if image.shape[0] != self.channels:
                image = (np.repeat(image, 3, axis=0) if self.channels == 3
                         else np.tensordot(LUMA, image, axes=1)[None])
        else:
            grey = is_grey(source)
            image = load_image(source, mode="rgb" if self.channels == 3 else "gray",
                               max_pixels=max_pixels)
        if grey and self.channels == 3:
            notes.append(f"{label} is greyscale: its channel was repeated to RGB")
        h0, w0 = image.shape[1:]
        if self.resize is not None:
            image = resize_short_side(image, self.resize, max_pixels)
            factor = self.resize / min(h0, w0)
            h1, w1 = image.shape[1:]
            if factor > 1:
                notes.append(f"{label} ({h0} x {w0}) was enlarged to {h1} x {w1} for the network "
                             "(its input size): enlarging adds no detail")
            elif 1 / factor > SHRINK_NOTE:
                notes.append(f"{label} ({h0} x {w0}) was shrunk {1 / factor:.0f}x to {h1} x {w1} "
                             "for the network (its input size): detail finer than "
                             f"{1 / factor:.0f} pixels is gone")
        if self.crop is not None:
            h1, w1 = image.shape[1:]
            kept = min(1.0, self.crop * self.crop / (h1 * w1))
            if kept < CROP_NOTE:
                notes.append(f"the centre crop {self.crop} x {self.crop} keeps {kept:.0%} of "
                             f"{label} ({h1} x {w1} after resizing)")
            image = center_crop(image, self.crop)
        return image, notes

    def load(self, source: ImageSource, *, max_pixels: int | None = 50_000_000) -> np.ndarray:
        """Load, resize and crop ``source``: ``(C, H, W)`` in ``[0, 1]``, not yet normalised."""
        return self.prepare(source, max_pixels=max_pixels)[0]

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """Apply mean and std to a ``(C, H, W)`` image in ``[0, 1]``."""
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return ((image - mean) / std).astype(np.float32)

    def __call__(self, source: ImageSource, *, max_pixels: int | None = 50_000_000) -> np.ndarray:
        """Load and prepare ``source`` for the network: ``(C, H, W)`` float32, normalised."""
        return self.normalise(self.load(source, max_pixels=max_pixels))

    def describe(self) -> str:
        """One line, e.g. ``resize 256, centre crop 224, normalise mean (...) std (...)``."""
        parts = [f"resize short side to {self.resize}" if self.resize else "no resize"]
        if self.crop:
            parts.append(f"centre crop {self.crop}x{self.crop}")
        parts.append("normalise mean (" + ", ".join(f"{m:.3g}" for m in self.mean) + ") std ("
                     + ", ".join(f"{s:.3g}" for s in self.std) + ")")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"resize": self.resize, "crop": self.crop, "mean": list(self.mean),
                "std": list(self.std), "channels": self.channels}


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size x size`` region of a ``(C, H, W)`` image (padded by edge values if
    the image is smaller)."""
    _, h, w = image.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        image = np.pad(image, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)),
                       mode="edge")
        _, h, w = image.shape
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top: top + size, left: left + size]

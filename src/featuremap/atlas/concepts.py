"""Concepts a channel can detect, as per-pixel labels that need no download.

A concept set labels every pixel of an image with at most one of its concepts
(:meth:`ConceptSet.labels`: ``-1`` where none); dissection scores each channel against each
concept by the overlap of the pixels it fires on and the pixels of the concept.

- :class:`ColourTerms`: the eleven basic colour terms of English (Berlin and Kay: black, blue,
  brown, grey, green, orange, pink, purple, red, white, yellow), computed from the pixels of
  any image: each pixel takes the term whose prototype is nearest in CIELAB (Euclidean,
  CIE76 delta E; sRGB with the D65 white). The prototypes (:data:`PROTOTYPES`) are typical
  members of each term, chosen by hand in sRGB.
- :class:`MaskClasses`: the per-pixel classes of image/mask pairs, named by ``classes.txt``:
  the shapes of the generated scenes (``featuremap scenes DIR --layout segmentation``, category
  ``"shape"``) or the user's own classes (category ``"class"``). A class named ``background``
  and the ``ignore_index`` value (void pixels) are not concepts.

Example:
    >>> names = colour_names(np.ones((3, 2, 2), np.float32))
    >>> [COLOUR_TERMS[i] for i in names.ravel()]
    ['white', 'white', 'white', 'white']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featuremap.errors import ConfigError, printable, unknown_name

__all__ = [
    "CATEGORIES",
    "COLOUR_TERMS",
    "PROTOTYPES",
    "ColourTerms",
    "Concept",
    "ConceptSet",
    "MaskClasses",
    "colour_names",
    "resolve_concepts",
    "srgb_to_lab",
]

CATEGORIES = ("colour", "shape", "class")
"""What a concept is; a channel whose best concept does not pass the threshold detects none."""

PROTOTYPES = {  # sRGB 0..255: a typical member of each basic colour term
    "black": (0, 0, 0),
    "blue": (40, 80, 200),
    "brown": (130, 80, 40),
    "grey": (128, 128, 128),
    "green": (40, 160, 60),
    "orange": (240, 140, 20),
    "pink": (240, 150, 190),
    "purple": (130, 50, 160),
    "red": (200, 30, 30),
    "white": (255, 255, 255),
    "yellow": (240, 220, 40),
}
COLOUR_TERMS = tuple(PROTOTYPES)

_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]], np.float64)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of sRGB values in ``[0, 1]``, the colour axis last: ``(..., 3)``.

    Example:
        >>> np.round(srgb_to_lab(np.array([1.0, 1.0, 1.0])), 3)
        array([100.,   0.,   0.])
    """
    c = np.clip(np.asarray(rgb, np.float64), 0.0, 1.0)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _WHITE_D65
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], -1)


_PROTOTYPE_LAB = srgb_to_lab(np.array(list(PROTOTYPES.values()), np.float64) / 255)


def colour_names(images: np.ndarray) -> np.ndarray:
    """The basic colour term of every pixel: ``(..., 3, H, W)`` in ``[0, 1]`` to ``(..., H, W)``
    int64 indices into :data:`COLOUR_TERMS` (grey images ``(..., 1, H, W)`` too)."""
    x = np.asarray(images, np.float32)
    if x.ndim < 3 or x.shape[-3] not in (1, 3):
        raise ConfigError(f"colour names need RGB images (..., 3, H, W), got shape {x.shape}.")
    rgb = np.moveaxis(np.broadcast_to(x, (*x.shape[:-3], 3, *x.shape[-2:])), -3, -1)
    lab = srgb_to_lab(rgb).astype(np.float32)
    cross = lab @ _PROTOTYPE_LAB.T.astype(np.float32)  # nearest: min |p|^2 - 2 x.p
    return np.argmin((_PROTOTYPE_LAB ** 2).sum(1).astype(np.float32) - 2 * cross, -1)


@dataclass(frozen=True)
class Concept:
    """One concept: its name and its category (``"colour"``, ``"shape"`` or ``"class"``)."""

    name: str
    category: str

    def __str__(self) -> str:
        return f"{self.name} ({self.category})"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "category": self.category}


class ConceptSet:
    """Concepts that label pixels, at most one per pixel.

    Subclasses set :attr:`names`, :attr:`category` and :attr:`needs_masks`, and implement
    :meth:`labels`.
    """

    names: tuple[str, ...] = ()
    category: str = "class"
    needs_masks: bool = False

    @property
    def concepts(self) -> tuple[Concept, ...]:
        return tuple(Concept(n, self.category) for n in self.names)

    def labels(self, images: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        """``(n, H, W)`` int64: the index of each pixel's concept in :attr:`names`, -1 none.

        Args:
            images: ``(n, C, H, W)`` float32 in ``[0, 1]``.
            masks: ``(n, H, W)`` label maps (when :attr:`needs_masks`).
        """
        raise NotImplementedError


class ColourTerms(ConceptSet):
    """The eleven basic colour terms, from the pixels (see :func:`colour_names`)."""

    names = COLOUR_TERMS
    category = "colour"

    def labels(self, images: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        return colour_names(images)

    def __repr__(self) -> str:
        return "ColourTerms()"


class MaskClasses(ConceptSet):
    """The classes of image/mask pairs: label ``i`` of a mask is ``classes[i]``.

    Args:
        classes: the class names, by label (``classes.txt``).
        category: ``"shape"`` (the generated scenes) or ``"class"`` (your own).
        background: a class with this name is not a concept (None: every class is).
        ignore_index: a mask value that marks unlabelled pixels.
    """

    needs_masks = True

    def __init__(self, classes: Sequence[str], *, category: str = "class",
                 background: str | None = "background", ignore_index: int | None = None
                 ) -> None:
        if category not in ("shape", "class"):
            raise ConfigError(f"a mask concept's category is 'shape' or 'class', got "
                              f"{printable(repr(category))}.")
        self.classes = tuple(str(c) for c in classes)
        self.category, self.ignore_index = category, ignore_index
        kept = [i for i, c in enumerate(self.classes)
                if background is None or c.lower() != background.lower()]
        if not kept:
            raise ConfigError("the masks name no class besides the background: no concept "
                              "to score.")
        self.names = tuple(self.classes[i] for i in kept)
        lookup = np.full(len(self.classes) + 1, -1, np.int64)  # the last: beyond the names
        lookup[kept] = np.arange(len(kept))
        self._lookup = lookup

    def labels(self, images: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
        if masks is None:
            raise ConfigError("mask concepts need image/mask pairs.")
        values = np.asarray(masks).astype(np.int64)
        top = len(self.classes)
        values = np.where((values < 0) | (values >= top), top, values)
        if self.ignore_index is not None:
            values = np.where(np.asarray(masks) == self.ignore_index, top, values)
        return self._lookup[values]

    def __repr__(self) -> str:
        return f"MaskClasses({len(self.classes)} classes, category={self.category!r})"


CONCEPT_NAMES = ("colour", "masks")
_ALIASES = {"colour": "colour", "color": "colour", "colours": "colour", "colors": "colour",
            "masks": "masks", "mask": "masks", "shapes": "masks", "classes": "masks"}


def resolve_concepts(concepts: Any, *, classes: Sequence[str] | None, has_masks: bool,
                     source: str, shape_classes: Sequence[str] = ()) -> list[ConceptSet]:
    """The concept sets a dissection scores.

    Args:
        concepts: None (colours, and the masks' classes where the source has masks), or a
            list of ``"colour"``, ``"masks"`` and :class:`ConceptSet` objects.
        classes: the masks' class names (``classes.txt``).
        has_masks: whether the source has masks.
        source: the source, printable, for messages.
        shape_classes: the generated scenes' classes: masks named so are of category
            ``"shape"``, others ``"class"``.

    Raises:
        ConfigError: ``"masks"`` without masks or class names, an empty list, a thing that is
            not a concept set; UnknownNameError: an unknown name (with a did-you-mean).
    """
    if concepts is None:
        concepts = ["colour"] + (["masks"] if has_masks else [])
    elif isinstance(concepts, (str, ConceptSet)):
        concepts = [concepts]
    out: list[ConceptSet] = []
    named: set[str] = set()  # a set named twice ('masks,shapes') is scored once
    for item in concepts:
        if isinstance(item, ConceptSet):
            out.append(item)
            continue
        if not isinstance(item, str):
            raise ConfigError(f"concepts are 'colour', 'masks' or ConceptSet objects, got "
                              f"{type(item).__name__}.")
        kind = _ALIASES.get(item.strip().lower())
        if kind is None:
            raise unknown_name("concept set", printable(item), CONCEPT_NAMES,
                               hint="Concept sets: colour (from the pixels), masks (the "
                                    "classes of image/mask pairs).")
        if kind in named:
            continue
        named.add(kind)
        if kind == "colour":
            out.append(ColourTerms())
        elif not has_masks or not classes:
            raise ConfigError(f"concepts 'masks' need image/mask pairs with class names "
                              f"(images/, masks/ and classes.txt), but '{source}' has "
                              f"{'no masks' if not has_masks else 'no classes.txt'}: score "
                              "the colour concepts only, or use such a dataset.")
        else:
            category = "shape" if tuple(classes) == tuple(shape_classes) else "class"
            out.append(MaskClasses(classes, category=category))
    if not out:
        raise ConfigError("concepts is empty: give 'colour', 'masks' or ConceptSet objects.")
    return out

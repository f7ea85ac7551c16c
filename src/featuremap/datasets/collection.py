"""The items of an image collection and the collection itself."""


from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featuremap.errors import printable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
LIST_SUFFIXES = (".txt", ".lst")
KINDS = ("auto", "folder", "classes", "pairs", "list", "glob")
MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")  # single-channel integer images
MAX_CLASSES = 1024
MAX_PIXELS = 50_000_000

KIND_TEXT = {"folder": "folder", "classes": "class folders", "pairs": "images/ and masks/",
              "list": "list of paths", "glob": "glob pattern"}
CLASS_LAYOUT = "expected one sub-folder per class: DATA_DIR/<class>/<image files>"
PAIR_LAYOUT = ("a segmentation dataset holds images/NAME.png and masks/NAME.png (label maps, "
                "same stem)")
SOURCES = ("pass a folder of images, a folder of class sub-folders, a folder with images/ and "
            "masks/, a list of paths (.txt or .lst) or a glob pattern such as 'photos/**/*.jpg'")
LIST_FORMAT = "one path per line, or PATH<TAB>LABEL; blank lines and # comments are skipped"
GLOB_CHARS = re.compile(r"[*?[]")

Suffixes = Sequence[str] | None


def shown(path: str | os.PathLike[str]) -> str:
    """A path as it may be printed (control characters escaped)."""
    return printable(os.fspath(path))


# ------------------------------------------------------------------------------- items


@dataclass(frozen=True, slots=True)
class Item:
    """One image of a collection.

    Attributes:
        path: the image file.
        name: the display name: the path relative to the collection's root (as written in a
            list), control characters escaped (:func:`printable`).
        label: the class index (class folders, labelled lists), else None.
        mask: the label map of a pair (``images/`` + ``masks/``), else None.
    """

    path: Path
    name: str
    label: int | None = None
    mask: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"path", "name", "label", "mask"}``, paths as strings."""
        return {"path": os.fspath(self.path), "name": self.name, "label": self.label,
                "mask": None if self.mask is None else os.fspath(self.mask)}


@dataclass(frozen=True)
class Collection:
    """The images of a dataset, in a fixed order (from :func:`open_collection`).

    Attributes:
        items: the :class:`Item` objects, sorted by path relative to the root (lists keep
            their own order).
        kind: ``"folder"``, ``"classes"``, ``"pairs"``, ``"list"`` or ``"glob"``.
        root: the folder the display names are relative to (a list's folder, a glob's fixed
            part).
        source: what was opened, as given.
        classes: class names (index ``i`` is label ``i``): the sub-folders, a list's labels, or
            ``classes.txt`` of pairs; None when the collection has none.
        classes_file: the ``classes.txt`` the pair classes come from, else None.

    Example:
        >>> c = open_collection("shapes_data")  # doctest: +SKIP
        >>> len(c), c.classes[:2], c[0].name  # doctest: +SKIP
        (140, ('circle', 'crescent'), 'circle/scene_00003.png')
    """

    items: tuple[Item, ...]
    kind: str
    root: Path
    source: str
    classes: tuple[str, ...] | None = None
    classes_file: Path | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, index: int | slice) -> Any:
        """An :class:`Item`, or for a slice a :class:`Collection` of those items."""
        if isinstance(index, slice):
            return dataclasses.replace(self, items=self.items[index])
        return self.items[index]

    def subset(self, indices: Iterable[int]) -> Collection:
        """A collection of the items at ``indices`` (in that order), e.g. a training split."""
        return dataclasses.replace(self, items=tuple(self.items[i] for i in indices))

    @property
    def labels(self) -> np.ndarray | None:
        """``(N,)`` int64 labels when every item has one, else None."""
        if not self.items or any(item.label is None for item in self.items):
            return None
        return np.fromiter((item.label for item in self.items), np.int64, len(self.items))

    @property
    def class_counts(self) -> dict[str, int] | None:
        """``{class name: items}`` for labelled collections, else None."""
        labels = self.labels
        if labels is None or self.classes is None:
            return None
        counts = np.bincount(labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}

    def reader(self, *, preprocess: Callable[..., np.ndarray] | None = None,
               ignore_index: int | None = None, max_classes: int = MAX_CLASSES,
               max_pixels: int | None = MAX_PIXELS) -> Any:
        """A :class:`Reader` for these items (pairs: masks checked against :attr:`classes`).

        Raises:
            ConfigError: pairs with a ``Preprocess`` that resizes or crops, bad options.
        """
        from featuremap.datasets.masks import Reader, check_native

        pairs = self.kind == "pairs"
        if pairs:
            check_native(preprocess)
        return Reader(preprocess, classes=self.classes if pairs else None,
                      classes_file=self.classes_file, ignore_index=ignore_index,
                      max_classes=max_classes, max_pixels=max_pixels)

    def __str__(self) -> str:
        n = len(self.items)
        what = (count_text(n, "image/mask pair", "image/mask pairs") if self.kind == "pairs"
                else count_text(n, "image", "images"))
        classes = "" if self.classes is None else " in " + count_text(len(self.classes), "class",
                                                                   "classes")
        return f"{what}{classes} from '{shown(self.source)}' ({KIND_TEXT[self.kind]})"

    def to_dict(self, *, items: bool = True) -> dict[str, Any]:
        """What a web page or a JSON file receives; ``items=False`` leaves the items out."""
        out: dict[str, Any] = {
            "kind": self.kind, "source": self.source, "root": os.fspath(self.root),
            "n_items": len(self.items), "classes": None if self.classes is None
            else list(self.classes), "class_counts": self.class_counts,
            "classes_file": None if self.classes_file is None else os.fspath(self.classes_file),
            "description": str(self)}
        if items:
            out["items"] = [item.to_dict() for item in self.items]
        return out


def count_text(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"



"""Image collections: find the images of a dataset, read them, and stream them in batches.

One door, :func:`open_collection`, turns a source into a :class:`Collection` of
:class:`Item` objects (a path, a label or None, a mask path or None, a display name). Kinds:

- ``"folder"``: every image file under a folder, at any depth.
- ``"classes"``: ``ROOT/<class>/<images...>``: classes are the sorted sub-folder names, labels
  ``0 .. K-1`` (as torchvision's ``ImageFolder``).
- ``"pairs"``: ``ROOT/images/NAME.*`` with ``ROOT/masks/NAME.png`` (label maps, same stem);
  ``ROOT/classes.txt`` names the classes, one per line, if present.
- ``"list"``: a text file (``.txt`` or ``.lst``) with one path per line, or ``PATH<TAB>LABEL``.
- ``"glob"``: a pattern such as ``"photos/**/*.jpg"`` (``**`` matches folders at any depth).

Files and folders whose names start with ``.`` are left out; items are sorted by their path
relative to the root, part by part, so the order is the same on every machine. Symbolic links
are followed (each folder once, so a link loop cannot recurse).

Reading follows one rule: a problem with one file (:class:`~featuremap.errors.ImageError`,
``OSError``: corrupt, truncated, empty, not an image, too large) skips that file, and the skip is
counted and named with its reason; a problem with the dataset
(:class:`~featuremap.errors.ConfigError`: a colour mask, a mask whose size differs from its
image's, labels beyond ``classes.txt``) or a bug stops the run and reaches the caller.
:func:`batches` decodes on a worker thread while the caller computes, at most ``prefetch``
batches ahead.

File names are data: every display name and message escapes control characters
(:func:`printable`), so a name cannot move the cursor, recolour a terminal or forge a line.

Example:
    >>> collection = open_collection("shapes_data")  # doctest: +SKIP
    >>> print(collection)  # doctest: +SKIP
    140 images in 7 classes from 'shapes_data' (class folders)
    >>> with batches(collection, batch_size=32) as stream:  # doctest: +SKIP
    ...     for batch in stream:
    ...         for group in batch.groups:
    ...             group.images.shape  # (n, 3, H, W) float32 in [0, 1]
"""

from __future__ import annotations

import dataclasses
import glob as globbing
import os
import queue
import re
import threading
import unicodedata
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from featuremap.errors import ConfigError, ImageError, unknown_name
from featuremap.images import _DECODE_ERRORS, Preprocess, load_image

__all__ = [
    "IMAGE_SUFFIXES",
    "KINDS",
    "MASK_MODES",
    "Batch",
    "BatchStream",
    "Collection",
    "Group",
    "Item",
    "Reader",
    "Skipped",
    "batches",
    "open_collection",
    "printable",
    "read_mask",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
LIST_SUFFIXES = (".txt", ".lst")
KINDS = ("auto", "folder", "classes", "pairs", "list", "glob")
MASK_MODES = ("1", "L", "P", "I", "I;16", "I;16L", "I;16B")  # single-channel integer images
MAX_CLASSES = 1024
MAX_PIXELS = 50_000_000

_KIND_TEXT = {"folder": "folder", "classes": "class folders", "pairs": "images/ and masks/",
              "list": "list of paths", "glob": "glob pattern"}
_CLASS_LAYOUT = "expected one sub-folder per class: DATA_DIR/<class>/<image files>"
_PAIR_LAYOUT = ("a segmentation dataset holds images/NAME.png and masks/NAME.png (label maps, "
                "same stem)")
_SOURCES = ("pass a folder of images, a folder of class sub-folders, a folder with images/ and "
            "masks/, a list of paths (.txt or .lst) or a glob pattern such as 'photos/**/*.jpg'")
_LIST_FORMAT = "one path per line, or PATH<TAB>LABEL; blank lines and # comments are skipped"
_GLOB_CHARS = re.compile(r"[*?[]")

Suffixes = Sequence[str] | None


# ------------------------------------------------------------------------------- names


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with control characters escaped as Python writes them (``\\x1b``, ``\\n``).

    Escaped: C0/C1 controls (ESC, newline, tab, DEL, ...), line and paragraph separators, the
    bidirectional overrides (which reorder what a terminal shows), and the bytes that are not
    UTF-8 in a file name (``os.fsdecode`` keeps them as lone surrogates, which cannot even be
    printed): shown as ``\\xff``. Everything else, accents and other scripts included, is kept.

    Args:
        text: a file name, a path or a message holding one.

    Returns:
        A string that is safe to print on one terminal line.

    Example:
        >>> printable("red\\x1b[31m\\nname.png")
        'red\\\\x1b[31m\\\\nname.png'
    """
    if text.isprintable():
        return text
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as os.fsdecode keeps it
        return f"\\x{code - 0xDC00:02x}"
    if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
        if code < 0x100:
            return f"\\x{code:02x}"
        return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    return ch


def _shown(path: str | os.PathLike[str]) -> str:
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
               max_pixels: int | None = MAX_PIXELS) -> Reader:
        """A :class:`Reader` for these items (pairs: masks checked against :attr:`classes`).

        Raises:
            ConfigError: pairs with a ``Preprocess`` that resizes or crops, bad options.
        """
        pairs = self.kind == "pairs"
        if pairs:
            _check_native(preprocess)
        return Reader(preprocess, classes=self.classes if pairs else None,
                      classes_file=self.classes_file, ignore_index=ignore_index,
                      max_classes=max_classes, max_pixels=max_pixels)

    def __str__(self) -> str:
        n = len(self.items)
        what = (_count(n, "image/mask pair", "image/mask pairs") if self.kind == "pairs"
                else _count(n, "image", "images"))
        classes = "" if self.classes is None else " in " + _count(len(self.classes), "class",
                                                                   "classes")
        return f"{what}{classes} from '{_shown(self.source)}' ({_KIND_TEXT[self.kind]})"

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


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


# ------------------------------------------------------------------------------ opening


def open_collection(
    source: str | os.PathLike[str],
    *,
    kind: str = "auto",
    suffixes: Suffixes = IMAGE_SUFFIXES,
    min_classes: int = 1,
) -> Collection:
    """Find the images of a dataset: a folder, class folders, image/mask pairs, a list or a glob.

    ``kind="auto"`` decides, in this order: an existing ``.txt``/``.lst`` file is a list; an
    existing folder with ``images/`` and ``masks/`` is pairs; an existing folder with no image
    files of its own whose every sub-folder holds images is class folders; another existing
    folder is a folder (recursive); a path that does not exist but holds ``*``, ``?`` or ``[``
    is a glob pattern.

    Lists: one path per line, relative paths relative to the list's folder, ``~`` expanded,
    leading and trailing spaces dropped; blank lines and lines starting with ``#`` skipped.
    ``PATH<TAB>LABEL`` labels an image with a class name: label every line or none; classes
    are the sorted labels (numerically when every label is a whole number). Listed files are
    taken as they are (no suffix filter); one that is missing is skipped when read.

    Args:
        source: a folder, a list file or a glob pattern.
        kind: ``"auto"``, ``"folder"``, ``"classes"``, ``"pairs"``, ``"list"`` or ``"glob"``.
        suffixes: the file endings that count as images in folders and globs
            (case-insensitive); ``None`` takes every file (unreadable ones are skipped when
            read).
        min_classes: refuse class folders or a labelled list with fewer classes (a probe
            needs 2).

    Returns:
        A :class:`Collection` (at least one item).

    Raises:
        ConfigError: a source that does not exist or is of the wrong kind, an empty or
            unreadable folder, no class sub-folders, fewer than ``min_classes`` classes, pairs
            with a missing ``images/``/``masks/`` folder, an image without its mask or a mask
            without its image (the first 3 named), two files with one stem, an unreadable or
            empty ``classes.txt``, a list with labels on some lines only, a glob that matches
            nothing.
        UnknownNameError: an unknown ``kind``.

    Example:
        >>> save_dataset("seg", 6, seed=1, layout="segmentation")  # doctest: +SKIP
        >>> print(open_collection("seg"))  # doctest: +SKIP
        6 image/mask pairs in 8 classes from 'seg' (images/ and masks/)
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"a collection source must be a path or a glob pattern, got "
                          f"{type(source).__name__}: {_SOURCES}.")
    if kind not in KINDS:
        raise unknown_name("collection kind", str(kind), KINDS,
                           hint="Kinds: " + ", ".join(KINDS) + ".")
    if isinstance(min_classes, bool) or not isinstance(min_classes, int) or min_classes < 1:
        raise ConfigError(f"min_classes must be an integer >= 1, got {min_classes!r}.")
    text = os.fspath(source)
    path = Path(text).expanduser()
    wanted = _suffixes(suffixes)
    if kind == "auto":
        kind = _detect(text, path, wanted)
    opener = {"folder": _open_folder, "classes": _open_classes, "pairs": _open_pairs,
              "list": _open_list, "glob": _open_glob}[kind]
    collection = opener(text, path, wanted, min_classes)
    if min_classes > 1 and (collection.kind not in ("classes", "list")
                            or collection.classes is None):
        raise ConfigError(f"'{_shown(text)}' ({_KIND_TEXT[collection.kind]}) has no class labels "
                          f"but min_classes={min_classes}: use class folders "
                          f"(DATA_DIR/<class>/<images>) or a list of PATH<TAB>LABEL lines.")
    return collection


def _suffixes(suffixes: Suffixes) -> tuple[str, ...] | None:
    if suffixes is None:
        return None
    if isinstance(suffixes, str) or not all(isinstance(s, str) and s.strip(".")
                                            for s in suffixes):
        raise ConfigError(f"suffixes must be a list of file endings such as ['.png', '.jpg'] "
                          f"or None (every file), got {suffixes!r}.")
    return tuple("." + s.lower().lstrip(".") for s in suffixes)


def _wanted(name: str, suffixes: tuple[str, ...] | None) -> bool:
    return suffixes is None or os.path.splitext(name)[1].lower() in suffixes


def _describe(suffixes: tuple[str, ...] | None) -> str:
    return "files" if suffixes is None else f"image files ({', '.join(suffixes)})"


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long, a NUL byte: nothing of that name exists
        return False


def _detect(text: str, path: Path, suffixes: tuple[str, ...] | None) -> str:
    if _exists(path):
        if path.is_dir():
            if (path / "images").is_dir() and (path / "masks").is_dir():
                return "pairs"
            return "classes" if _looks_like_classes(path, suffixes) else "folder"
        if path.suffix.lower() in LIST_SUFFIXES:
            return "list"
        raise ConfigError(f"'{_shown(text)}' is a file, not a collection of images: {_SOURCES}.")
    if _GLOB_CHARS.search(text):
        return "glob"
    raise ConfigError(f"'{_shown(text)}' does not exist: {_SOURCES}.")


def _looks_like_classes(root: Path, suffixes: tuple[str, ...] | None) -> bool:
    """No image files at the top, and every (visible) sub-folder holds at least one image."""
    folders = []
    for entry in _entries(root):
        if entry.name.startswith("."):
            continue
        if _is_dir(entry):
            folders.append(Path(entry.path))
        elif _is_file(entry) and _wanted(entry.name, suffixes):
            return False
    return bool(folders) and all(_walk(folder, suffixes, first=True) for folder in folders)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder``, or a one-line ConfigError saying why it cannot be read."""
    try:
        with os.scandir(folder) as listing:
            return list(listing)
    except OSError as err:
        raise ConfigError(f"cannot read folder '{_shown(folder)}' "
                          f"({err.strerror or type(err).__name__}): check that it exists and "
                          "that you may read it.") from None


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _walk(folder: Path, suffixes: tuple[str, ...] | None, *, first: bool = False
          ) -> list[tuple[str, ...]]:
    """Relative parts of the wanted files under ``folder``, hidden entries left out, sorted.

    Symbolic links to folders are followed, each folder once. ``first``: stop at the first
    file found (enough to tell whether a folder holds any).
    """
    found: list[tuple[str, ...]] = []
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[tuple[str, ...], Path]] = [((), folder)]
    while stack:
        parts, here = stack.pop()
        try:
            status = here.stat()
        except OSError:
            continue  # a link that leads nowhere
        if (status.st_dev, status.st_ino) in seen:
            continue
        seen.add((status.st_dev, status.st_ino))
        for entry in _entries(here):
            if entry.name.startswith("."):
                continue
            if _is_dir(entry):
                stack.append(((*parts, entry.name), Path(entry.path)))
            elif _is_file(entry) and _wanted(entry.name, suffixes):
                found.append((*parts, entry.name))
                if first:
                    return found
    return sorted(found)


def _open_folder(text: str, root: Path, suffixes: tuple[str, ...] | None, min_classes: int
                 ) -> Collection:
    if not _exists(root):
        raise ConfigError(f"data folder '{_shown(text)}' does not exist: {_SOURCES}.")
    if not root.is_dir():
        raise ConfigError(f"'{_shown(text)}' is not a folder: {_SOURCES}.")
    found = _walk(root, suffixes)
    if not found:
        raise ConfigError(f"'{_shown(text)}' holds no {_describe(suffixes)}, hidden files and "
                          "folders aside: add images or check the path.")
    items = tuple(Item(root.joinpath(*parts), printable("/".join(parts))) for parts in found)
    return Collection(items, "folder", root, text)


def _open_classes(text: str, root: Path, suffixes: tuple[str, ...] | None, min_classes: int
                  ) -> Collection:
    shown = _shown(text)
    if not _exists(root):
        raise ConfigError(f"data folder '{shown}' does not exist; {_CLASS_LAYOUT}.")
    if not root.is_dir():
        raise ConfigError(f"'{shown}' is not a folder; {_CLASS_LAYOUT}.")
    folders = sorted((Path(e.path) for e in _entries(root)
                      if not e.name.startswith(".") and _is_dir(e)), key=lambda p: p.name)
    if not folders:
        raise ConfigError(f"'{shown}' has no class sub-folders; {_CLASS_LAYOUT}.")
    classes = tuple(folder.name for folder in folders)
    _check_min_classes(shown, classes, min_classes, _CLASS_LAYOUT)
    items = tuple(Item(folder.joinpath(*parts), printable("/".join((folder.name, *parts))), label)
                  for label, folder in enumerate(folders) for parts in _walk(folder, suffixes))
    if not items:
        raise ConfigError(f"the class folders of '{shown}' hold no {_describe(suffixes)}; "
                          f"{_CLASS_LAYOUT}.")
    return Collection(items, "classes", root, text, classes)


def _check_min_classes(shown: str, classes: Sequence[str], min_classes: int, fix: str) -> None:
    if len(classes) >= min_classes:
        return
    names = ", ".join(f"'{printable(c)}'" for c in classes)
    has = "one class" if len(classes) == 1 else f"{len(classes)} classes"
    raise ConfigError(f"'{shown}' has {has} ({names}); at least {min_classes} classes are "
                      f"needed; {fix}.")


def _open_pairs(text: str, root: Path, suffixes: tuple[str, ...] | None, min_classes: int
                ) -> Collection:
    shown = _shown(text)
    if not root.is_dir():
        found = "is not a folder" if _exists(root) else "does not exist"
        start = "" if _exists(root) else "data folder "
        raise ConfigError(f"{start}'{shown}' {found} (expected '{shown}/images' and "
                          f"'{shown}/masks').")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise ConfigError(f"'{shown}' has no '{sub}' folder: {_PAIR_LAYOUT}.")
    images, masks = _by_stem(root / "images", suffixes), _by_stem(root / "masks", suffixes)
    if not images:
        raise ConfigError(f"'{_shown(root / 'images')}' holds no images "
                          f"({', '.join(suffixes or ('any file',))}).")
    for missing, have, kind in ((sorted(set(images) - set(masks)), images, "image"),
                                (sorted(set(masks) - set(images)), masks, "mask")):
        if missing:
            other = "mask" if kind == "image" else "image"
            listed = ", ".join(printable(have[s].name) for s in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise ConfigError(f"{len(missing)} {kind}(s) without a {other} of the same name in "
                              f"'{shown}': {listed}{more}. Every image needs its mask.")
    listing = root / "classes.txt"
    classes = _read_classes(listing)
    items = tuple(Item(images[s], printable(images[s].name), None, masks[s])
                  for s in sorted(images))
    return Collection(items, "pairs", root, text, classes, listing if classes else None)


def _by_stem(folder: Path, suffixes: tuple[str, ...] | None) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for entry in sorted(_entries(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or not _is_file(entry) or not _wanted(entry.name,
                                                                             suffixes):
            continue
        path = Path(entry.path)
        if path.stem in found:
            raise ConfigError(f"two files named '{printable(path.stem)}' in '{_shown(folder)}' "
                              f"({printable(found[path.stem].name)}, {printable(path.name)}): "
                              "keep one per name.")
        found[path.stem] = path
    return found


def _read_classes(listing: Path) -> tuple[str, ...] | None:
    """Class names from ``classes.txt`` (one per line, blank lines skipped), None if absent."""
    if not listing.is_file():
        return None
    try:
        text = listing.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise ConfigError(f"cannot read '{_shown(listing)}' ({reason}): it should be UTF-8 "
                          "text, one class name per line.") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise ConfigError(f"'{_shown(listing)}' names no classes: write one class name per line "
                          "(line i names label i), or delete it to name them 'class 0', "
                          "'class 1', ...")
    return names


def _open_list(text: str, listing: Path, suffixes: tuple[str, ...] | None, min_classes: int
               ) -> Collection:
    shown = _shown(text)
    if not _exists(listing):
        raise ConfigError(f"list '{shown}' does not exist: write a text file with "
                          f"{_LIST_FORMAT}.")
    if listing.is_dir():
        raise ConfigError(f"'{shown}' is a folder, not a list of paths: open it with "
                          "kind='auto' or kind='folder'.")
    try:  # surrogateescape: a path that is not UTF-8 still names its file
        content = listing.read_text(encoding="utf-8-sig", errors="surrogateescape")
    except OSError as err:
        raise ConfigError(f"cannot read list '{shown}' ({err.strerror or type(err).__name__}): "
                          "check that you may read it.") from None
    entries = _list_entries(content, shown)
    labelled = [(n, label) for n, _, label in entries if label is not None]
    if labelled and len(labelled) != len(entries):
        bare = next(n for n, _, label in entries if label is None)
        raise ConfigError(f"line {bare} of '{shown}' has no label but line {labelled[0][0]} has "
                          f"one ('{printable(labelled[0][1])}'): write PATH<TAB>LABEL on every "
                          "line, or no labels at all.")
    classes = _sorted_labels({label for _, label in labelled}) if labelled else None
    index = {name: i for i, name in enumerate(classes or ())}
    if classes is not None:
        _check_min_classes(shown, classes, min_classes, "label the lines PATH<TAB>LABEL")
    base = listing.parent
    items = tuple(Item(_resolve(base, written), printable(written),
                       None if label is None else index[label]) for _, written, label in entries)
    return Collection(items, "list", base, text, classes)


def _list_entries(content: str, shown: str) -> list[tuple[int, str, str | None]]:
    """``(line number, path as written, label or None)`` of every entry of a list."""
    entries = []
    for number, line in enumerate(content.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\0" in line:
            raise ConfigError(f"line {number} of '{shown}' holds a NUL byte: a list is a text "
                              f"file with {_LIST_FORMAT}.")
        written, _, label = line.partition("\t")
        if written.strip():
            entries.append((number, written.strip(), label.strip() or None))
    if not entries:
        raise ConfigError(f"'{shown}' lists no images: write {_LIST_FORMAT}.")
    return entries


def _sorted_labels(labels: set[str]) -> tuple[str, ...]:
    if all(label.isascii() and label.isdigit() for label in labels):
        return tuple(sorted(labels, key=int))
    return tuple(sorted(labels))


def _resolve(base: Path, written: str) -> Path:
    path = Path(written).expanduser()
    return path if path.is_absolute() else base / path


def _open_glob(text: str, path: Path, suffixes: tuple[str, ...] | None, min_classes: int
               ) -> Collection:
    pattern = os.path.expanduser(text)
    root = _glob_root(pattern)
    matches = dict.fromkeys(os.path.normpath(m) for m in globbing.glob(pattern, recursive=True)
                            if _wanted(m, suffixes) and os.path.isfile(m))
    if not matches:
        raise ConfigError(f"glob pattern '{_shown(text)}' matches no {_describe(suffixes)}: check "
                          "the pattern ('**' matches folders at any depth, e.g. "
                          "'photos/**/*.jpg'; names starting with '.' need the '.' written).")
    found = sorted((Path(os.path.relpath(m, root)).parts, m) for m in matches)
    items = tuple(Item(Path(m), printable("/".join(parts))) for parts, m in found)
    return Collection(items, "glob", root, text)


def _glob_root(pattern: str) -> Path:
    """The fixed folder a pattern starts from: its parts before the first wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    if len(fixed) == len(parts):  # no wildcard at all: the pattern names one file
        fixed = fixed[:-1]
    return Path(*fixed) if fixed else Path(".")


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

    _check_mask_options(ignore_index, max_classes, max_pixels)
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
                raise ConfigError(_size_mismatch(name, (image.height, image.width), size))
            image.load()
            values = np.asarray(image)
    except (ImageError, ConfigError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"mask '{name}' is too large to load safely: {err}") from None
    except _DECODE_ERRORS as err:
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
        raise ImageError(f"mask file '{_shown(path)}' does not exist or cannot be read.") from None
    if path.is_dir():
        raise ImageError(f"mask '{_shown(path)}' is a folder, not an image file.")
    if size == 0:
        raise ImageError(f"mask '{printable(path.name)}' is empty (0 bytes). Re-export it.")
    return path


def _check_mask_options(ignore_index: Any, max_classes: Any, max_pixels: Any) -> None:
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
        listing = f"'{_shown(classes_file)}'" if classes_file is not None else "the class list"
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


def _size_mismatch(name: str, mask: Sequence[int], image: Sequence[int]) -> str:
    return (f"mask '{name}' is {mask[1]} x {mask[0]} pixels but its image is {image[1]} x "
            f"{image[0]}: a mask must match its image.")


# ------------------------------------------------------------------------------ reading


def _check_native(preprocess: Any) -> None:
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
        _check_mask_options(self.ignore_index, self.max_classes, self.max_pixels)

    def __call__(self, item: Item) -> tuple[np.ndarray, np.ndarray | None]:
        """``(image (C, H, W), mask (H, W) or None)``.

        Raises:
            ImageError: an unreadable image or mask (the stream skips the item).
            ConfigError: a mask problem (see :func:`read_mask`) or a mask whose size differs
                from its image's.
        """
        mask = None
        if item.mask is not None:  # the mask first: a colour mask is refused before decoding
            _check_native(self.preprocess)
            mask = read_mask(item.mask, classes=self.classes, classes_file=self.classes_file,
                             ignore_index=self.ignore_index, max_classes=self.max_classes,
                             max_pixels=self.max_pixels)
        image = self.image(item.path)
        if mask is not None and image.shape[1:] != mask.shape:
            raise ConfigError(_size_mismatch(printable(item.mask.name), mask.shape,
                                             image.shape[1:]))
        return image, mask

    def image(self, path: str | os.PathLike[str]) -> np.ndarray:
        """The image of ``path`` as :attr:`preprocess` makes it, ``(C, H, W)``."""
        if self.preprocess is None:
            return load_image(path, max_pixels=self.max_pixels)
        if isinstance(self.preprocess, Preprocess):
            return self.preprocess(path, max_pixels=self.max_pixels)
        return self.preprocess(path)


# ------------------------------------------------------------------------------ batches


@dataclass(frozen=True)
class Skipped:
    """An item that could not be read.

    Attributes:
        index: its position in the collection.
        item: the item.
        reason: the error's message, control characters escaped.
    """

    index: int
    item: Item
    reason: str

    def __str__(self) -> str:
        return f"{self.item.name}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """``{"index", "path", "name", "reason"}``."""
        return {"index": self.index, "path": os.fspath(self.item.path), "name": self.item.name,
                "reason": self.reason}


@dataclass(frozen=True)
class Group:
    """Items of one batch whose arrays have one shape, stacked.

    Attributes:
        images: ``(n, C, H, W)`` as the loader returned them (float32 for the default one).
        masks: ``(n, H, W)`` label maps, or None when the items have none.
        labels: ``(n,)`` int64 labels, or None when the items have none.
        indices: ``(n,)`` positions of the items in the collection (ascending).
        positions: ``(n,)`` positions of the items in their batch (into ``Batch.items``):
            ``out[group.positions] = f(group.images)`` puts results back in batch order.
    """

    images: np.ndarray
    masks: np.ndarray | None
    labels: np.ndarray | None
    indices: np.ndarray
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class Batch:
    """One batch of a :class:`BatchStream`: the items ``start .. stop - 1`` of the collection.

    Attributes:
        number: 0 for the first batch.
        start, stop: the range of collection positions it covers (read or skipped).
        indices: ``(n,)`` positions of the items read, ascending.
        items: the items read, in that order.
        groups: the items read, stacked by shape (in order of first appearance); a batch of
            images of one size has one group.
        skipped: the items of the range that could not be read, with reasons.
        labels: ``(n,)`` int64 labels of the items read, in batch order, or None.

    A batch may hold no image at all (every file of its range skipped).
    """

    number: int
    start: int
    stop: int
    indices: np.ndarray
    items: tuple[Item, ...]
    groups: tuple[Group, ...]
    skipped: tuple[Skipped, ...]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The image shape ``(C, H, W)`` of each group."""
        return [tuple(g.images.shape[1:]) for g in self.groups]


def batches(
    collection: Sequence[Item],
    *,
    load: Callable[[Item], Any] | None = None,
    batch_size: int = 32,
    prefetch: int = 2,
    workers: int = 1,
    skip: tuple[type[BaseException], ...] = (ImageError, OSError),
    progress: Callable[[int, int], Any] | None = None,
) -> BatchStream:
    """Stream a collection in batches, decoding on a worker thread while the caller computes.

    Batches cover ``batch_size`` consecutive items each, in collection order. A worker thread
    (or ``workers`` threads) calls ``load(item)`` on each item; an exception of a type in
    ``skip`` skips that item (named in ``batch.skipped`` with its reason), any other exception
    stops the stream and is raised to the caller at the batch it belongs to. At most
    ``prefetch`` batches are decoded ahead of the one the caller holds, so memory stays bounded
    by ``prefetch + 1`` batches. Images of different sizes are stacked per shape
    (``batch.groups``), each group keeping its items' positions.

    Closing is automatic when the stream is exhausted, when the loop that consumes it ends
    early (``break``, an exception, ``KeyboardInterrupt``: the stream is closed as soon as
    nothing refers to it), and explicit with ``close()`` or ``with``; the worker threads
    stop and are joined (a decode under way finishes first).

    Args:
        collection: a :class:`Collection` or any sequence of :class:`Item`.
        load: ``load(item) -> image (C, H, W)`` or ``(image, mask (H, W) or None)``; default
            ``collection.reader()`` (RGB in ``[0, 1]``; pairs with their masks checked).
        batch_size: items per batch (>= 1).
        prefetch: batches decoded ahead (>= 0; 0 decodes a batch only when asked for it).
        workers: threads decoding the items of a batch in parallel (>= 1).
        skip: the exception types that mean "this file is unreadable".
        progress: called as ``progress(done, total)`` (items) as each batch is handed out.

    Returns:
        A :class:`BatchStream`: iterate it for :class:`Batch` objects; it counts ``done``,
        ``total``, ``n_read`` and ``skipped``.

    Raises:
        ConfigError: bad options; from the iteration, a ``load`` that returns something other
            than arrays, and whatever ``load`` raises outside ``skip``.

    Example:
        >>> data = open_collection("shapes_data", kind="classes", min_classes=2)  # doctest: +SKIP
        >>> load = data.reader(preprocess=model.preprocess)  # doctest: +SKIP
        >>> with batches(data, load=load, batch_size=32) as stream:  # doctest: +SKIP
        ...     for batch in stream:
        ...         for group in batch.groups:
        ...             features = run(group.images)  # (n, C, H, W), labels group.labels
        >>> [str(s) for s in stream.skipped]  # doctest: +SKIP
        ["circle/broken.png: Image file '...' is not an image Pillow can read ..."]
    """
    for name, value, low in (("batch_size", batch_size, 1), ("prefetch", prefetch, 0),
                             ("workers", workers, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}.")
    if load is None:
        load = collection.reader() if isinstance(collection, Collection) else Reader()
    elif not callable(load):
        raise ConfigError(f"load must be a function load(item) -> image array, got "
                          f"{type(load).__name__}.")
    return BatchStream(tuple(collection), load, batch_size=batch_size, prefetch=prefetch,
                       workers=workers, skip=tuple(skip), progress=progress)


class BatchStream:
    """An iterator of :class:`Batch` objects, decoded ahead on worker threads.

    Made by :func:`batches`. Attributes the caller can read at any time (they count what was
    handed out): ``done`` (items covered), ``total`` (items in all), ``n_read`` (items read),
    ``skipped`` (a list of :class:`Skipped`), ``n_batches``.
    """

    def __init__(self, items: tuple[Item, ...], load: Callable[[Item], Any], *, batch_size: int,
                 prefetch: int, workers: int, skip: tuple[type[BaseException], ...],
                 progress: Callable[[int, int], Any] | None) -> None:
        self.total = len(items)
        self.n_batches = -(-len(items) // batch_size)
        self.done = 0
        self.n_read = 0
        self.skipped: list[Skipped] = []
        self._progress = progress
        self._finished = False
        self._pipeline = _Pipeline(items, load, batch_size, prefetch, workers, skip)
        # the finaliser refers to the pipeline only, so dropping the stream closes it
        self._close = weakref.finalize(self, self._pipeline.close)
        self._pipeline.thread.start()

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        if self._finished:
            raise StopIteration
        outcome = self._pipeline.next()
        if outcome is _END or isinstance(outcome, _Failure):
            self.close()
            if outcome is _END:
                raise StopIteration
            raise outcome.error
        self.done = outcome.stop
        self.n_read += len(outcome)
        self.skipped.extend(outcome.skipped)
        if self._progress is not None:
            self._progress(self.done, self.total)
        return outcome

    def close(self) -> None:
        """Stop the worker threads and wait for them; later ``next()`` calls end the stream."""
        self._finished = True
        self._close()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<BatchStream {self.done}/{self.total} items, {self.n_read} read, "
                f"{len(self.skipped)} skipped>")


_END = object()


class _Failure:
    """An exception raised on the worker thread, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Pipeline:
    """The worker side: permits bound how far it runs ahead; a queue carries the batches.

    The producer takes one permit per batch it starts; the consumer gives one each time it
    asks for a batch. Starting with ``prefetch`` permits, batches started minus batches handed
    out never exceed ``prefetch``.
    """

    def __init__(self, items: tuple[Item, ...], load: Callable[[Item], Any], batch_size: int,
                 prefetch: int, workers: int, skip: tuple[type[BaseException], ...]) -> None:
        self.items, self.load, self.skip = items, load, skip
        self.batch_size, self.workers = batch_size, workers
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.permits = threading.Semaphore(prefetch)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="featuremap-batches", daemon=True)

    def next(self) -> Any:
        self.permits.release()
        return self.queue.get()

    def close(self) -> None:
        self.stop.set()
        self.permits.release()  # wake a producer waiting for a permit
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join()

    def run(self) -> None:
        pool = (ThreadPoolExecutor(self.workers, thread_name_prefix="featuremap-decode")
                if self.workers > 1 else None)
        try:
            for number, start in enumerate(range(0, len(self.items), self.batch_size)):
                self.permits.acquire()
                if self.stop.is_set():
                    return
                batch = self.batch(number, start, min(start + self.batch_size, len(self.items)),
                                   pool)
                if batch is None:
                    return
                self.queue.put(batch)
            self.queue.put(_END)
        except BaseException as error:  # carried to the consumer, which raises it
            self.queue.put(_Failure(error))
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def batch(self, number: int, start: int, stop: int, pool: ThreadPoolExecutor | None
              ) -> Batch | None:
        """Read the items ``start .. stop - 1``; None if the stream was closed meanwhile."""
        indices = range(start, stop)
        outcomes = pool.map(self.read, indices) if pool is not None else map(self.read, indices)
        read: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        skipped: list[Skipped] = []
        for index, outcome in zip(indices, outcomes):
            if outcome is None:
                return None
            if isinstance(outcome, Skipped):
                skipped.append(outcome)
            else:
                read.append((index, *outcome))
        return _assemble(number, start, stop, self.items, read, skipped)

    def read(self, index: int) -> Skipped | tuple[np.ndarray, np.ndarray | None] | None:
        if self.stop.is_set():
            return None
        item = self.items[index]
        try:
            loaded = self.load(item)
        except self.skip as error:
            return Skipped(index, item, printable(str(error) or type(error).__name__))
        return _arrays(loaded, item)


def _arrays(loaded: Any, item: Item) -> tuple[np.ndarray, np.ndarray | None]:
    """Check what ``load`` returned: an image (C, H, W), or (image, mask (H, W) or None)."""
    image, mask = loaded if isinstance(loaded, tuple) and len(loaded) == 2 else (loaded, None)
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        found = (f"an array of shape {image.shape}" if isinstance(image, np.ndarray)
                 else type(image).__name__)
        raise ConfigError(f"load(item) must return an image array (C, H, W) or (image, mask); "
                          f"got {found} for '{item.name}'.")
    if mask is not None and (not isinstance(mask, np.ndarray) or mask.ndim != 2):
        found = (f"an array of shape {mask.shape}" if isinstance(mask, np.ndarray)
                 else type(mask).__name__)
        raise ConfigError(f"load(item) returned a mask that is not (H, W) for '{item.name}': "
                          f"{found}.")
    return image, mask


def _assemble(number: int, start: int, stop: int, items: tuple[Item, ...],
              read: list[tuple[int, np.ndarray, np.ndarray | None]], skipped: list[Skipped]
              ) -> Batch:
    """Stack the arrays read by shape into groups, keeping every item's positions."""
    by_shape: dict[tuple[Any, ...], list[int]] = {}
    for position, (_, image, mask) in enumerate(read):
        key = (image.shape, None if mask is None else mask.shape)
        by_shape.setdefault(key, []).append(position)
    labels = [items[index].label for index, _, _ in read]
    labelled = bool(read) and all(label is not None for label in labels)
    groups = []
    for positions in by_shape.values():
        members = [read[p] for p in positions]
        groups.append(Group(
            images=np.stack([image for _, image, _ in members]),
            masks=None if members[0][2] is None else np.stack([mask for _, _, mask in members]),
            labels=np.array([labels[p] for p in positions], np.int64) if labelled else None,
            indices=np.array([index for index, _, _ in members], np.int64),
            positions=np.array(positions, np.int64)))
    return Batch(number, start, stop, np.array([index for index, _, _ in read], np.int64),
                 tuple(items[index] for index, _, _ in read), tuple(groups), tuple(skipped),
                 np.array(labels, np.int64) if labelled else None)

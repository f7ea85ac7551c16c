"""Open a collection from a folder, class folders, image/mask pairs, a list or a glob."""


from __future__ import annotations

import glob as globbing
import os
from collections.abc import Sequence
from pathlib import Path

from featuremap.datasets.collection import (
    CLASS_LAYOUT,
    GLOB_CHARS,
    IMAGE_SUFFIXES,
    KIND_TEXT,
    KINDS,
    LIST_FORMAT,
    LIST_SUFFIXES,
    PAIR_LAYOUT,
    SOURCES,
    Collection,
    Item,
    Suffixes,
)
from featuremap.datasets.collection import (
    shown as show_path,
)
from featuremap.errors import ConfigError, printable, unknown_name

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
                          f"{type(source).__name__}: {SOURCES}.")
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
        raise ConfigError(f"'{show_path(text)}' ({KIND_TEXT[collection.kind]}) has no class labels "
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
        raise ConfigError(f"'{show_path(text)}' is a file, not a collection of images: {SOURCES}.")
    if GLOB_CHARS.search(text):
        return "glob"
    raise ConfigError(f"'{show_path(text)}' does not exist: {SOURCES}.")


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
        raise ConfigError(f"cannot read folder '{show_path(folder)}' "
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
        raise ConfigError(f"data folder '{show_path(text)}' does not exist: {SOURCES}.")
    if not root.is_dir():
        raise ConfigError(f"'{show_path(text)}' is not a folder: {SOURCES}.")
    found = _walk(root, suffixes)
    if not found:
        raise ConfigError(f"'{show_path(text)}' holds no {_describe(suffixes)}, hidden files and "
                          "folders aside: add images or check the path.")
    items = tuple(Item(root.joinpath(*parts), printable("/".join(parts))) for parts in found)
    return Collection(items, "folder", root, text)


def _open_classes(text: str, root: Path, suffixes: tuple[str, ...] | None, min_classes: int
                  ) -> Collection:
    shown = show_path(text)
    if not _exists(root):
        raise ConfigError(f"data folder '{shown}' does not exist; {CLASS_LAYOUT}.")
    if not root.is_dir():
        raise ConfigError(f"'{shown}' is not a folder; {CLASS_LAYOUT}.")
    folders = sorted((Path(e.path) for e in _entries(root)
                      if not e.name.startswith(".") and _is_dir(e)), key=lambda p: p.name)
    if not folders:
        raise ConfigError(f"'{shown}' has no class sub-folders; {CLASS_LAYOUT}.")
    classes = tuple(folder.name for folder in folders)
    _check_min_classes(shown, classes, min_classes, CLASS_LAYOUT)
    items = tuple(Item(folder.joinpath(*parts), printable("/".join((folder.name, *parts))), label)
                  for label, folder in enumerate(folders) for parts in _walk(folder, suffixes))
    if not items:
        raise ConfigError(f"the class folders of '{shown}' hold no {_describe(suffixes)}; "
                          f"{CLASS_LAYOUT}.")
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
    shown = show_path(text)
    if not root.is_dir():
        found = "is not a folder" if _exists(root) else "does not exist"
        start = "" if _exists(root) else "data folder "
        raise ConfigError(f"{start}'{shown}' {found} (expected '{shown}/images' and "
                          f"'{shown}/masks').")
    for sub in ("images", "masks"):
        if not (root / sub).is_dir():
            raise ConfigError(f"'{shown}' has no '{sub}' folder: {PAIR_LAYOUT}.")
    images, masks = _by_stem(root / "images", suffixes), _by_stem(root / "masks", suffixes)
    if not images:
        raise ConfigError(f"'{show_path(root / 'images')}' holds no images "
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
            raise ConfigError(f"two files named '{printable(path.stem)}' in '{show_path(folder)}' "
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
        raise ConfigError(f"cannot read '{show_path(listing)}' ({reason}): it should be UTF-8 "
                          "text, one class name per line.") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if not names:
        raise ConfigError(f"'{show_path(listing)}' names no classes: write one class name per line "
                          "(line i names label i), or delete it to name them 'class 0', "
                          "'class 1', ...")
    return names


def _open_list(text: str, listing: Path, suffixes: tuple[str, ...] | None, min_classes: int
               ) -> Collection:
    shown = show_path(text)
    if not _exists(listing):
        raise ConfigError(f"list '{shown}' does not exist: write a text file with "
                          f"{LIST_FORMAT}.")
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
                              f"file with {LIST_FORMAT}.")
        written, _, label = line.partition("\t")
        if written.strip():
            entries.append((number, written.strip(), label.strip() or None))
    if not entries:
        raise ConfigError(f"'{shown}' lists no images: write {LIST_FORMAT}.")
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
        raise ConfigError(f"glob pattern '{show_path(text)}' matches no {_describe(suffixes)}: "
                          "check the pattern ('**' matches folders at any depth, e.g. "
                          "'photos/**/*.jpg'; names starting with '.' need the '.' written).")
    found = sorted((Path(os.path.relpath(m, root)).parts, m) for m in matches)
    items = tuple(Item(Path(m), printable("/".join(parts))) for parts, m in found)
    return Collection(items, "glob", root, text)


def _glob_root(pattern: str) -> Path:
    """The fixed folder a pattern starts from: its parts before the first wildcard."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if GLOB_CHARS.search(part):
            break
        fixed.append(part)
    if len(fixed) == len(parts):  # no wildcard at all: the pattern names one file
        fixed = fixed[:-1]
    return Path(*fixed) if fixed else Path(".")



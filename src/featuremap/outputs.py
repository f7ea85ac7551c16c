"""Output files: checked before any work is done, written whole or not at all.

:func:`check_output` answers, before a command computes anything, whether a path can be written
and which path that really is (``maps`` becomes ``maps.png`` when ``.png`` is the default, and the
overwrite check applies to ``maps.png``). :func:`free_path` picks a default name that overwrites
nothing. :func:`atomic_write`, :func:`atomic_path`, :func:`atomic_paths` and
:func:`atomic_folder` write into a temporary name in the target's own folder and move it into
place only once the writing succeeded: an error or Ctrl-C leaves no partial file, and an
existing file untouched; :func:`write_json` writes a result's ``to_dict()`` so (NaN as
``null``, :func:`finite`).

Standard library only (level 1): no NumPy, torch or matplotlib here. Paths shown in messages
pass through :func:`~featuremap.errors.printable`, so a hostile file name cannot reach the
terminal raw.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from featuremap.errors import ConfigError, printable

__all__ = [
    "FIGURE_SUFFIXES",
    "atomic_folder",
    "atomic_path",
    "atomic_paths",
    "atomic_write",
    "check_output",
    "finite",
    "free_path",
    "write_json",
]

FIGURE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg", ".webp")
"""What a figure can be saved as (matplotlib writes each; the suffix picks the format)."""

PathLike = str | os.PathLike[str]

_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))


def _q(path: object) -> str:
    """A path quoted for a message, control characters escaped."""
    return f"'{printable(path)}'"


def _suffix(text: str) -> str:
    s = text.lower()
    return s if s.startswith(".") else f".{s}"


def _suffix_list(suffixes: Iterable[str]) -> str:
    return ", ".join(suffixes)


def _as_path(path: PathLike, what: str) -> Path:
    text = os.fsdecode(os.fspath(path))
    if not text:
        raise ConfigError(f"{what}: an empty path; give a file name.")
    if "\0" in text:
        raise ConfigError(f"{what} {_q(text)} holds a NUL character, which no file name may.")
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        raise ConfigError(f"{what} {_q(text)} cannot be encoded as a file name on this "
                          "system; choose another name.") from None
    p = Path(text)
    if text.endswith(("/", os.sep)) or p.name in ("", ".", ".."):
        raise ConfigError(f"{what} {_q(text)} names a folder; give a file name such as "
                          f"{_q(p / 'out')}.")
    return p


def _check_folder(folder: Path, target: Path) -> None:
    """The folder that will hold ``target`` exists, is a folder, and we may create files in it."""
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        raise ConfigError(f"cannot write {_q(target)}: the folder {_q(folder)} does not exist. "
                          "Create it first or choose another path.") from None
    except NotADirectoryError:
        raise ConfigError(f"cannot write {_q(target)}: {_q(folder)} is not a folder (part of "
                          "the path is a file).") from None
    except OSError as e:
        raise ConfigError(f"cannot write {_q(target)}: the folder {_q(folder)} cannot be "
                          f"reached ({e.strerror or e}).") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"cannot write {_q(target)}: {_q(folder)} is not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {_q(target)}: no permission to create files in "
                          f"{_q(folder)} (or it is read-only); choose another folder.")


def _check_name_length(p: Path) -> None:
    try:
        limit = os.pathconf(p.parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    size = len(os.fsencode(p.name))
    if limit and size > limit:
        raise ConfigError(f"the file name {_q(p.name)} is {size} bytes long; this file system "
                          f"allows {limit}. Choose a shorter name.")


def _check_special(p: Path, what: str, *, example: Path) -> None:
    """An existing ``p`` that is a folder, a device, a FIFO or a socket is not a file name."""
    try:
        mode = os.stat(p).st_mode
    except OSError:
        return  # missing (or unreachable: the checks that follow say why)
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{what} {_q(p)} is a folder; give a file name such as "
                          f"{_q(example)}.")
    if not stat.S_ISREG(mode):
        kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
        raise ConfigError(f"{what} {_q(p)} is {kind}, not a regular file; choose a file name.")


def _check_target(p: Path, *, overwrite: bool, what: str) -> None:
    """``p`` is free, or (with ``overwrite``) a regular file: not a folder nor a special file."""
    try:
        os.stat(p)
    except FileNotFoundError:
        if os.path.lexists(p):
            raise ConfigError(f"{_q(p)} is a symbolic link to nothing; remove it or choose "
                              f"another {what}.") from None
        return
    except OSError as e:
        raise ConfigError(f"cannot write {_q(p)}: {e.strerror or e}.") from None
    _check_special(p, what, example=p / f"out{p.suffix}")
    if not overwrite:
        raise ConfigError(f"{_q(p)} exists: pass --overwrite to replace it, or choose another "
                          f"{what}.")


def check_output(
    path: PathLike,
    *,
    suffixes: Sequence[str],
    default_suffix: str | None = None,
    overwrite: bool = False,
    what: str = "output",
    siblings: Sequence[str] = (),
) -> Path:
    """The path that will really be written, checked before any work is done.

    Args:
        path: the file name asked for.
        suffixes: the suffixes allowed, e.g. ``(".png", ".svg")`` (case-insensitive, the dot
            optional).
        default_suffix: added to a name that has none (``maps`` -> ``maps.png``); the checks
            below then apply to that name. Without it a name with no suffix is refused.
        overwrite: an existing regular file may be replaced.
        what: how messages call the path, e.g. ``"--out"``.
        siblings: suffixes of files written beside it (``(".json",)`` for a sidecar
            ``maps.json``), checked like the path itself.

    Returns:
        The path to write: ``path``, with ``default_suffix`` when it had no suffix.

    Raises:
        ConfigError: a suffix not in ``suffixes`` (the message lists them), a folder that is
            missing, not a folder or not writable, a path that is a folder, a device, a FIFO or
            a socket, a dangling symbolic link, a name too long, or an existing file without
            ``overwrite``.

    Example:
        >>> check_output("maps", suffixes=(".png",), default_suffix=".png")  # doctest: +SKIP
        PosixPath('maps.png')
    """
    allowed = tuple(dict.fromkeys(_suffix(s) for s in suffixes))
    if not allowed:
        raise ValueError("check_output needs at least one allowed suffix.")
    default = _suffix(default_suffix) if default_suffix is not None else None
    if default is not None and default not in allowed:
        raise ValueError(f"default_suffix {default!r} is not one of {allowed}.")
    p = _as_path(path, what)
    # Before a suffix is added: 'results' names that folder, '/dev/null' that device; neither
    # means 'results.png' or '/dev/null.png'.
    _check_special(p, what, example=p / ("out" + (default or allowed[0])))
    suffix = p.suffix.lower()
    if not suffix:
        if default is None:
            raise ConfigError(f"{what} {_q(p)} has no suffix; end it with one of "
                              f"{_suffix_list(allowed)}.")
        p = p.with_name(p.name + default)
    elif suffix not in allowed:
        raise ConfigError(f"{what} {_q(p)}: unsupported suffix '{printable(p.suffix)}'; use one "
                          f"of {_suffix_list(allowed)}.")
    _check_folder(p.parent, p)
    _check_name_length(p)
    for target in [p, *(p.with_suffix(_suffix(s)) for s in siblings)]:
        _check_target(target, overwrite=overwrite, what=what)
    return p


def free_path(name: PathLike, *, siblings: Sequence[str] = ()) -> Path:
    """A default output path that overwrites nothing: ``name``, ``name-1``, ``name-2``, ...

    The suffix is kept (``maps.png``, ``maps-1.png``); ``siblings`` suffixes (a ``.json``
    sidecar) must be free too.

    Raises:
        ConfigError: the folder of ``name`` is missing, not a folder or not writable.

    Example:
        >>> free_path("maps.png")  # doctest: +SKIP
        PosixPath('maps-1.png')
    """
    p = _as_path(name, "output")
    _check_folder(p.parent, p)
    suffix = p.suffix
    stem = p.name[: len(p.name) - len(suffix)] if suffix else p.name
    candidate, k = p, 1

    def taken(c: Path) -> bool:
        return any(os.path.lexists(x) for x in [c, *(c.with_suffix(_suffix(s))
                                                    for s in siblings)])

    while taken(candidate):
        candidate = p.with_name(f"{stem}-{k}{suffix}")
        k += 1
    return candidate


# ------------------------------------------------------------------------------ atomic writes
@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) for the few system calls that must not be cut in two.

    Only the main thread receives KeyboardInterrupt, so elsewhere there is nothing to hold back.
    A Ctrl-C that arrives meanwhile is raised once the block is done.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield  # not the main thread, or a handler installed outside Python: leave it be
        return
    received: list[tuple[int, object]] = []
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: received.append((signum, frame)))
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(*received[0])
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt


def _umask() -> int:
    # Reading the umask means setting it; done and undone at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _resolved(path: Path) -> Path:
    """Where the data really goes: through a symbolic link to its target (replaced in place)."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def _temporary(target: Path) -> Path:
    """A new, empty temporary file beside ``target``, named after it, ending with its suffix
    (writers that choose a format by suffix, as Pillow does, still choose right)."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem[:40]}.",
                                suffix=f".part{target.suffix}")
    os.close(fd)
    return Path(name)


def _finish(tmp: Path, target: Path, *, fsync: bool) -> None:
    """Give ``tmp`` the permissions a new file (or the one it replaces) would have, flush it."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    os.chmod(tmp, mode)
    if fsync:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(paths: Iterable[Path]) -> None:
    with _interrupts_deferred():
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)


@contextlib.contextmanager
def atomic_paths(paths: Sequence[PathLike], *, fsync: bool = True) -> Iterator[list[Path]]:
    """Write several files as one unit: all of them, or none.

    Yields one temporary path per target, in the targets' own folders and ending with their
    suffixes; write each (with any library that takes a file name). When the block ends without
    an exception every temporary file is moved onto its target; on any exception, Ctrl-C
    included, they are removed and the targets stay as they were. The moves are made with
    Ctrl-C held back, and if one fails the targets already moved are put back.

    Args:
        paths: the files to write (distinct).
        fsync: flush each file to disk before it replaces its target.

    Example:
        >>> with atomic_paths(["head.safetensors", "head.json"]) as (weights, meta):
        ...     save_file(tensors, weights)  # doctest: +SKIP
        ...     meta.write_text(text)  # doctest: +SKIP
    """
    targets = [_resolved(Path(os.fspath(p))) for p in paths]
    if len({os.path.abspath(t) for t in targets}) != len(targets):
        raise ValueError(f"atomic_paths got the same path twice: {[str(t) for t in targets]}.")
    temps: list[Path] = []
    try:
        for t in targets:
            temps.append(_temporary(t))
        yield list(temps)
        for tmp, t in zip(temps, targets):
            _finish(tmp, t, fsync=fsync)
        with _interrupts_deferred():
            _commit(temps, targets)
    except BaseException:
        _remove(temps)
        raise
    for folder in {t.parent for t in targets} if fsync else ():
        _sync_folder(folder)


def _commit(temps: list[Path], targets: list[Path]) -> None:
    """Move every temporary file onto its target; on a failure put the old targets back."""
    if len(targets) == 1:
        os.replace(temps[0], targets[0])
        return
    backups: dict[Path, Path] = {}
    moved: list[Path] = []
    try:
        for t in targets:
            if os.path.lexists(t):
                backup = _temporary(t)
                os.unlink(backup)
                try:
                    os.link(t, backup)  # a second name for the old file, which replace keeps
                except OSError:
                    continue  # no hard links here: no way back for this one
                backups[t] = backup
        for tmp, t in zip(temps, targets):
            os.replace(tmp, t)
            moved.append(t)
    except BaseException:
        for t in moved:
            if t in backups:
                os.replace(backups.pop(t), t)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(t)
        raise
    finally:
        for backup in backups.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Write one file whole or not at all: yields a temporary path to write, moved onto
    ``path`` when the block succeeds and removed when it fails (Ctrl-C included).

    Example:
        >>> with atomic_path("maps.png") as tmp:  # doctest: +SKIP
        ...     image.save(tmp)
    """
    with atomic_paths([path], fsync=fsync) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_write(path: PathLike, *, mode: str = "wb", encoding: str | None = None,
                 fsync: bool = True) -> Iterator[IO]:
    """Open ``path`` for writing, whole or not at all: the file object writes a temporary file
    beside it, moved onto ``path`` when the block succeeds and removed when it fails (Ctrl-C
    included), leaving an existing ``path`` untouched.

    Args:
        path: the file to write.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: of a text file (default UTF-8).
        fsync: flush to disk before the move.

    Example:
        >>> with atomic_write("notes.txt", mode="w") as f:  # doctest: +SKIP
        ...     f.write("hello\\n")
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write writes a new file: mode 'w' or 'wb', not {mode!r}.")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """Fill a new folder whole or not at all: yields a temporary folder beside ``path``,
    renamed to ``path`` when the block succeeds and removed, with all it holds, when it fails.

    ``path`` must not exist, or be an empty folder (which the new one replaces). Files inside
    are not flushed one by one: this guards against an interruption, not a power cut.

    Raises:
        ConfigError: ``path`` is a file, a folder that is not empty, or its parent folder is
            missing or not writable.

    Example:
        >>> with atomic_folder("scenes") as tmp:  # doctest: +SKIP
        ...     (tmp / "a.txt").write_text("a")
    """
    target = Path(os.fspath(path))
    if target.name in ("", ".", ".."):
        target = Path(os.path.abspath(target))
    _check_folder(target.parent, target)
    _check_empty_folder(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name[:40]}.",
                                suffix=".part"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        with _interrupts_deferred():
            _check_empty_folder(target)  # filled meanwhile: refuse rather than merge
            os.replace(tmp, target)  # POSIX rename replaces an empty folder
    except BaseException:
        with _interrupts_deferred():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _check_empty_folder(target: Path) -> None:
    if os.path.lexists(target):
        if target.is_symlink():
            raise ConfigError(f"{_q(target)} is a symbolic link; choose a new folder.")
        if not target.is_dir():
            raise ConfigError(f"{_q(target)} exists and is not a folder; choose a new folder.")
        if any(target.iterdir()):
            raise ConfigError(f"{_q(target)} exists and is not an empty folder; choose a new "
                              "folder.")


def finite(data: Any) -> Any:
    """JSON without NaN or infinity (``null`` instead)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def write_json(path: PathLike, data: Any) -> Path:
    """``data`` as indented JSON (NaN and infinity as ``null``), written whole or not at all;
    returns the path written."""
    text = json.dumps(finite(data), indent=2, allow_nan=False) + "\n"
    with atomic_write(path, mode="w") as f:
        f.write(text)
    return Path(path)

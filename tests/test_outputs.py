from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from featuremap.errors import ConfigError
from featuremap.outputs import (
    atomic_folder,
    atomic_path,
    atomic_paths,
    atomic_write,
    check_output,
    free_path,
)
from strategies import hostile_names

PNG = (".png",)


def _leftovers(folder: Path) -> list[str]:
    """Temporary files a write left behind (they all start with a dot)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------- check_output
def test_check_output_returns_the_path_to_write(tmp_path):
    assert check_output(tmp_path / "maps.png", suffixes=PNG) == tmp_path / "maps.png"
    assert check_output(tmp_path / "MAPS.PNG", suffixes=["png"]) == tmp_path / "MAPS.PNG"
    assert check_output(tmp_path / "maps", suffixes=PNG, default_suffix=".png") == \
        tmp_path / "maps.png"


def test_default_suffix_and_overwrite_apply_to_the_file_really_written(tmp_path):
    (tmp_path / "maps.png").write_bytes(b"old")
    with pytest.raises(ConfigError, match=r"'.*maps\.png' exists: pass --overwrite to replace "
                                          r"it, or choose another --out\."):
        check_output(tmp_path / "maps", suffixes=PNG, default_suffix=".png", what="--out")
    assert check_output(tmp_path / "maps", suffixes=PNG, default_suffix=".png",
                        overwrite=True) == tmp_path / "maps.png"
    (tmp_path / "notes").write_bytes(b"a file without suffix: not what would be written")
    assert check_output(tmp_path / "notes", suffixes=PNG, default_suffix="png") == \
        tmp_path / "notes.png"


def test_unsupported_or_missing_suffix_lists_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unsupported suffix '\.txt'; use one of \.png, \.svg"):
        check_output(tmp_path / "maps.txt", suffixes=(".png", ".svg"))
    with pytest.raises(ConfigError, match=r"has no suffix; end it with one of \.png"):
        check_output(tmp_path / "maps", suffixes=PNG)


def test_folder_must_exist_be_a_folder_and_be_writable(tmp_path):
    with pytest.raises(ConfigError, match="the folder .* does not exist"):
        check_output(tmp_path / "missing" / "x.png", suffixes=PNG)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):  # works as root too
        check_output(tmp_path / "file" / "x.png", suffixes=PNG)


def test_unwritable_folder_is_refused(tmp_path, monkeypatch):
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path
                        else real(p, mode))
    with pytest.raises(ConfigError, match="no permission to create files in"):
        check_output(tmp_path / "x.png", suffixes=PNG)
    with pytest.raises(ConfigError, match="no permission"):
        free_path(tmp_path / "x.png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match="no permission"):
            check_output(folder / "x.png", suffixes=PNG)
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("name", ["out", "out.png"])
def test_a_folder_is_not_a_file(tmp_path, name):
    (tmp_path / name).mkdir()
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="is a folder; give a file name such as"):
            check_output(tmp_path / name, suffixes=PNG, default_suffix=".png",
                         overwrite=overwrite)
    with pytest.raises(ConfigError, match="names a folder"):
        check_output(f"{tmp_path}/new/", suffixes=PNG, default_suffix=".png")


def test_devices_fifos_and_sockets_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="character device"):
        check_output("/dev/null", suffixes=PNG, default_suffix=".png", overwrite=True)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="FIFO"):  # and no open(): that would block
        check_output(fifo, suffixes=PNG, overwrite=True)
    sock_path = tmp_path / "s.png"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(ConfigError, match="socket"):
            check_output(sock_path, suffixes=PNG, overwrite=True)


def test_symbolic_links(tmp_path):
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ConfigError, match="symbolic link to nothing"):
        check_output(tmp_path / "dangling.png", suffixes=PNG, overwrite=True)
    (tmp_path / "real.png").write_bytes(b"old")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    link = check_output(tmp_path / "link.png", suffixes=PNG, overwrite=True)
    with atomic_write(link) as f:
        f.write(b"new")
    assert (tmp_path / "link.png").is_symlink()  # the link is kept, its target replaced
    assert (tmp_path / "real.png").read_bytes() == b"new"


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="empty path"):
        check_output("", suffixes=PNG)
    with pytest.raises(ConfigError, match="NUL"):
        check_output(tmp_path / "a\0b.png", suffixes=PNG)
    with pytest.raises(ConfigError, match="bytes long"):
        check_output(tmp_path / ("x" * 300 + ".png"), suffixes=PNG)
    with pytest.raises(ConfigError, match="cannot be encoded"):
        check_output(tmp_path / "a\ud800.png", suffixes=PNG)


def test_siblings_are_checked_too(tmp_path):
    (tmp_path / "head.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"head\.json' exists"):
        check_output(tmp_path / "head.safetensors", suffixes=[".safetensors"],
                     siblings=[".json"])
    assert free_path(tmp_path / "head.safetensors", siblings=[".json"]) == \
        tmp_path / "head-1.safetensors"


def test_messages_show_hostile_names_escaped(tmp_path):
    name = "a\x1b[31m\nb[red].txt"
    with pytest.raises(ConfigError) as info:
        check_output(tmp_path / name, suffixes=PNG)
    message = str(info.value)
    assert "\x1b" not in message and "\n" not in message
    assert "a\\x1b[31m\\nb[red].txt" in message


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=hostile_names())
def test_any_valid_name_can_be_checked_and_written(tmp_path, name):
    suffix = Path(name).suffix.lower()
    if suffix not in ("", ".png"):
        with pytest.raises(ConfigError, match="unsupported suffix") as info:
            check_output(tmp_path / name, suffixes=PNG, default_suffix=".png")
        assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
        return
    if len(os.fsencode(name + ".png")) > 255 and not suffix:
        with pytest.raises(ConfigError, match="bytes long"):
            check_output(tmp_path / name, suffixes=PNG, default_suffix=".png")
        return
    path = check_output(tmp_path / name, suffixes=PNG, default_suffix=".png")
    assert path.parent == tmp_path and path.suffix.lower() == ".png"
    try:
        with atomic_write(path) as f:
            f.write(b"x")
        assert path.read_bytes() == b"x"
        # no temporary file left (bytes: undecodable names may decode back differently)
        assert os.listdir(os.fsencode(tmp_path)) == [os.fsencode(path.name)]
    finally:
        for entry in os.listdir(os.fsencode(tmp_path)):
            os.unlink(os.path.join(os.fsencode(tmp_path), entry))


def test_hostile_suffixes_are_refused_not_written(tmp_path):
    with pytest.raises(ConfigError, match="unsupported suffix"):
        check_output(tmp_path / "x.$a$", suffixes=PNG, default_suffix=".png")


# ------------------------------------------------------------------------------- free_path
def test_free_path_counts_up_and_keeps_the_folder(tmp_path):
    assert free_path(tmp_path / "maps.png") == tmp_path / "maps.png"
    (tmp_path / "maps.png").write_bytes(b"")
    (tmp_path / "maps-1.png").write_bytes(b"")
    assert free_path(tmp_path / "maps.png") == tmp_path / "maps-2.png"
    (tmp_path / "seg").symlink_to(tmp_path / "nowhere")  # a dangling link is a taken name
    assert free_path(tmp_path / "seg") == tmp_path / "seg-1"
    with pytest.raises(ConfigError, match="does not exist"):
        free_path(tmp_path / "missing" / "maps.png")


def test_free_path_relative_names_stay_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("maps.png").write_bytes(b"")
    assert free_path("maps.png") == Path("maps-1.png")


# ---------------------------------------------------------------------------- atomic writes
def test_atomic_write_writes_text_and_bytes_with_normal_permissions(tmp_path):
    with atomic_write(tmp_path / "a.txt", mode="w") as f:
        f.write("héllo\n")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~mask
    (tmp_path / "b.bin").write_bytes(b"old")
    (tmp_path / "b.bin").chmod(0o640)
    with atomic_write(tmp_path / "b.bin") as f:
        f.write(b"new")
    assert (tmp_path / "b.bin").read_bytes() == b"new"
    assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o640  # the old mode is kept
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "c", mode="a"):
            pass


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError, SystemExit])
def test_interrupted_write_leaves_nothing_and_the_old_file_untouched(tmp_path, error):
    with pytest.raises(error):
        with atomic_write(tmp_path / "new.png") as f:
            f.write(b"partial")
            raise error()
    assert not (tmp_path / "new.png").exists()
    (tmp_path / "old.png").write_bytes(b"old")
    with pytest.raises(error):
        with atomic_write(tmp_path / "old.png") as f:
            f.write(b"partial")
            raise error()
    assert (tmp_path / "old.png").read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_atomic_path_gives_a_name_with_the_suffix_for_writers_that_need_one(tmp_path):
    from PIL import Image

    with atomic_path(tmp_path / "dot.png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".")
        Image.new("RGB", (2, 2)).save(tmp)  # Pillow picks the format from the suffix
    with Image.open(tmp_path / "dot.png") as im:
        assert im.format == "PNG"
    assert _leftovers(tmp_path) == []


def test_atomic_paths_write_both_or_neither(tmp_path):
    weights, meta = tmp_path / "head.safetensors", tmp_path / "head.json"
    with pytest.raises(KeyboardInterrupt):
        with atomic_paths([weights, meta]) as (w, m):
            w.write_bytes(b"weights")
            raise KeyboardInterrupt
    assert not weights.exists() and not meta.exists() and _leftovers(tmp_path) == []
    with atomic_paths([weights, meta]) as (w, m):
        w.write_bytes(b"weights")
        m.write_text("{}")
    assert weights.read_bytes() == b"weights" and meta.read_text() == "{}"
    with pytest.raises(RuntimeError):  # replacing an existing pair: the old pair stays
        with atomic_paths([weights, meta]) as (w, m):
            w.write_bytes(b"new weights")
            raise RuntimeError
    assert weights.read_bytes() == b"weights" and meta.read_text() == "{}"
    assert _leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="same path twice"):
        with atomic_paths([weights, tmp_path / "." / "head.safetensors"]):
            pass


def test_atomic_paths_put_the_old_files_back_when_a_move_fails(tmp_path, monkeypatch):
    weights, meta = tmp_path / "head.safetensors", tmp_path / "head.json"
    weights.write_bytes(b"old weights")
    meta.write_text("old")
    real = os.replace

    def failing(src, dst):
        if Path(dst) == meta:
            raise OSError("disk on fire")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk on fire"):
        with atomic_paths([weights, meta]) as (w, m):
            w.write_bytes(b"new weights")
            m.write_text("new")
    monkeypatch.setattr(os, "replace", real)
    assert weights.read_bytes() == b"old weights" and meta.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_ctrl_c_during_the_moves_waits_until_both_are_in_place(tmp_path, monkeypatch):
    weights, meta = tmp_path / "head.safetensors", tmp_path / "head.json"
    real = os.replace

    def interrupted(src, dst):
        real(src, dst)
        if Path(dst) == weights:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C between the two moves

    monkeypatch.setattr(os, "replace", interrupted)
    # Ctrl-C as Python handles it by default, whatever the runner inherited (a shell starts
    # background jobs with SIGINT ignored)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic_paths([weights, meta]) as (w, m):
                w.write_bytes(b"weights")
                m.write_text("{}")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
    assert weights.read_bytes() == b"weights" and meta.read_text() == "{}"


def test_a_killed_writer_leaves_no_target(tmp_path):
    # Ctrl-C in a real process: the target never appears, the old one stays.
    (tmp_path / "old.bin").write_bytes(b"old")
    code = ("import os, signal, sys; from featuremap.outputs import atomic_write\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"  # even if inherited off
            "for name in ('new.bin', 'old.bin'):\n"
            "    try:\n"
            "        with atomic_write(os.path.join(sys.argv[1], name)) as f:\n"
            "            f.write(b'partial'); f.flush(); os.kill(os.getpid(), signal.SIGINT)\n"
            "    except KeyboardInterrupt:\n"
            "        pass\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, env=env,
                   timeout=60)
    assert not (tmp_path / "new.bin").exists()
    assert (tmp_path / "old.bin").read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- atomic folder
def test_atomic_folder_appears_whole(tmp_path):
    with atomic_folder(tmp_path / "data") as tmp:
        assert tmp.parent == tmp_path and not (tmp_path / "data").exists()
        (tmp / "a.txt").write_text("a")
    assert (tmp_path / "data" / "a.txt").read_text() == "a"
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o777 & ~mask
    (tmp_path / "empty").mkdir()
    with atomic_folder(tmp_path / "empty") as tmp:
        (tmp / "b.txt").write_text("b")
    assert (tmp_path / "empty" / "b.txt").exists()
    assert _leftovers(tmp_path) == []


def test_atomic_folder_interrupted_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_folder(tmp_path / "data") as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "a.txt").write_text("a")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_refuses_files_and_full_folders(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a folder"):
        with atomic_folder(tmp_path / "file"):
            pass
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not an empty folder"):
        with atomic_folder(tmp_path / "full"):
            pass
    with pytest.raises(ConfigError, match="does not exist"):
        with atomic_folder(tmp_path / "missing" / "data"):
            pass

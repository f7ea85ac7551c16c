"""Tests of featuremap.datasets: collections of every kind, reading, masks, the batch stream."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featuremap.bundled.scenes import CLASSES, save_dataset
from featuremap.datasets import (
    Collection,
    Item,
    Reader,
    batches,
    open_collection,
    printable,
    read_mask,
)
from featuremap.errors import ConfigError, ImageError, UnknownNameError
from featuremap.preprocess import Preprocess


def png(path: Path, size: tuple[int, int] = (8, 8), value: int = 0, mode: str = "RGB") -> Path:
    """Write a (H, W) = ``size`` image filled with ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = (value,) * len(mode) if mode in ("RGB", "RGBA") else value
    Image.new(mode, (size[1], size[0]), color).save(path)
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but holds no pixel data (a cheap bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def names(collection: Collection) -> list[str]:
    return [item.name for item in collection]


def read_all(collection, **options):
    """Every batch of a stream, and the stream (closed)."""
    with batches(collection, **options) as stream:
        return list(stream), stream


# ------------------------------------------------------------------------------- folders


def test_folder_is_recursive_sorted_and_skips_hidden_and_other_files(tmp_path):
    root = tmp_path / "photos"
    for rel in ("b.png", "a/z.JPG", "a.png", "a/b/c.webp", ".hidden.png", ".cache/x.png",
                "a/.git/y.png"):
        png(root / rel) if not rel.endswith((".JPG", ".webp")) else png(root / rel)
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "data.npy").write_bytes(b"x")
    collection = open_collection(root)
    assert collection.kind == "folder" and collection.classes is None
    # part by part: folder 'a' before file 'a.png'; names relative to the root
    assert names(collection) == ["a/b/c.webp", "a/z.JPG", "a.png", "b.png"]
    assert collection[0].path == root / "a" / "b" / "c.webp"
    assert collection.labels is None and all(item.mask is None for item in collection)
    assert str(collection) == f"4 images from '{root}' (folder)"
    assert names(open_collection(str(root), kind="folder")) == names(collection)
    everything = open_collection(root, kind="folder", suffixes=None)
    assert "notes.txt" in names(everything) and "a/data.npy" in names(everything)


def test_folder_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist: pass a folder of images"):
        open_collection(tmp_path / "missing")
    with pytest.raises(ConfigError, match="does not exist"):
        open_collection(tmp_path / "missing", kind="folder")
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    png(tmp_path / "empty" / ".hidden" / "a.png")
    (tmp_path / "empty" / "readme.md").write_text("hi")
    with pytest.raises(ConfigError, match=r"holds no image files \(.png, .jpg"):
        open_collection(tmp_path / "empty")
    png(tmp_path / "one.png")
    with pytest.raises(ConfigError, match="is a file, not a collection"):
        open_collection(tmp_path / "one.png")
    with pytest.raises(UnknownNameError, match="Unknown collection kind 'folders'.*'folder'"):
        open_collection(tmp_path, kind="folders")
    with pytest.raises(ConfigError, match="a path or a glob pattern"):
        open_collection(42)  # type: ignore[arg-type]


def test_unreadable_folder_is_one_line_config_error(tmp_path, monkeypatch):
    locked = tmp_path / "data" / "locked"
    png(locked / "a.png")
    png(tmp_path / "data" / "b.png")
    real = os.scandir

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ConfigError, match=r"cannot read folder '.*locked' \(Permission denied\)"
                                          r": check") as info:
        open_collection(tmp_path / "data", kind="folder")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------- classes


def test_class_folders_from_generated_dataset(tmp_path):
    root = save_dataset(tmp_path / "shapes-data", 20, seed=3, layout="classes")
    (root / ".DS_Store").write_bytes(b"x")
    (root / "README.txt").write_text("classes")  # files beside the class folders are ignored
    collection = open_collection(root)
    assert collection.kind == "classes"
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert collection.classes == tuple(found)
    assert len(collection) == 20 and collection.labels is not None
    for item in collection:
        assert item.path.parent.name == collection.classes[item.label]
        assert item.name == f"{item.path.parent.name}/{item.path.name}"
    assert list(collection.labels) == sorted(collection.labels)  # class by class
    assert sum(collection.class_counts.values()) == 20
    assert str(collection) == (f"20 images in {len(found)} classes from '{root}' "
                               "(class folders)")
    data = json.loads(json.dumps(collection.to_dict()))
    assert data["kind"] == "classes" and data["n_items"] == 20 and len(data["items"]) == 20
    assert data["items"][0]["label"] == 0 and "items" not in collection.to_dict(items=False)
    again = open_collection(str(root), kind="classes")
    assert again.items == collection.items  # deterministic


def test_class_folder_messages_match_probe(tmp_path):
    layout = "one sub-folder per class"
    with pytest.raises(ConfigError, match=f"data folder .* does not exist; expected {layout}"):
        open_collection(tmp_path / "missing", kind="classes")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is not a folder"):
        open_collection(tmp_path / "file.png", kind="classes")
    (tmp_path / "flat").mkdir()
    png(tmp_path / "flat" / "a.png")
    with pytest.raises(ConfigError, match="no class sub-folders.*DATA_DIR/<class>/"):
        open_collection(tmp_path / "flat", kind="classes")
    png(tmp_path / "one" / "circle" / "a.png")
    with pytest.raises(ConfigError, match="has one class \\('circle'\\); at least 2 classes"):
        open_collection(tmp_path / "one", kind="classes", min_classes=2)
    assert open_collection(tmp_path / "one", kind="classes").classes == ("circle",)
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    (tmp_path / "hollow" / "b").mkdir()
    with pytest.raises(ConfigError, match="the class folders of .* hold no image files"):
        open_collection(tmp_path / "hollow", kind="classes")
    with pytest.raises(ConfigError, match="min_classes"):
        open_collection(tmp_path / "flat", min_classes=2)


def test_auto_tells_classes_from_nested_folders(tmp_path):
    png(tmp_path / "a" / "x" / "1.png")
    png(tmp_path / "a" / "y" / "deep" / "2.png")
    assert open_collection(tmp_path / "a").kind == "classes"
    png(tmp_path / "a" / "top.png")  # an image of its own: a plain folder
    assert open_collection(tmp_path / "a").kind == "folder"
    png(tmp_path / "b" / "x" / "1.png")
    (tmp_path / "b" / "empty").mkdir()  # a sub-folder without images: a plain folder
    assert open_collection(tmp_path / "b").kind == "folder"


# --------------------------------------------------------------------------------- pairs


def test_pairs_from_generated_dataset(tmp_path):
    root = save_dataset(tmp_path / "seg", 4, seed=1, layout="segmentation")
    collection = open_collection(root)
    assert collection.kind == "pairs" and collection.classes == CLASSES
    assert collection.classes_file == root / "classes.txt"
    assert names(collection) == [f"scene_{i:05d}.png" for i in range(4)]
    assert all(item.mask == root / "masks" / item.path.name for item in collection)
    assert str(collection) == f"4 image/mask pairs in 8 classes from '{root}' (images/ and masks/)"
    (root / "classes.txt").unlink()
    assert open_collection(root, kind="pairs").classes is None
    (root / "classes.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="names no classes"):
        open_collection(root)


def test_pair_messages_match_fit_seg(tmp_path):
    (tmp_path / "only" / "images").mkdir(parents=True)
    with pytest.raises(ConfigError, match="has no 'masks' folder"):
        open_collection(tmp_path / "only", kind="pairs")
    with pytest.raises(ConfigError, match=r"data folder .* does not exist \(expected"):
        open_collection(tmp_path / "nope", kind="pairs")
    root = save_dataset(tmp_path / "a", 6, seed=9, layout="segmentation")
    for i in range(4):
        (root / "masks" / f"scene_{i:05d}.png").unlink()
    with pytest.raises(ConfigError, match=r"4 image\(s\) without a mask of the same name .*: "
                                          r"scene_00000.png, scene_00001.png, scene_00002.png "
                                          r"and 1 more"):
        open_collection(root)
    root = save_dataset(tmp_path / "b", 3, seed=9, layout="segmentation")
    (root / "images" / "scene_00002.png").unlink()
    with pytest.raises(ConfigError, match=r"1 mask\(s\) without a image .*scene_00002.png"):
        open_collection(root)
    root = save_dataset(tmp_path / "c", 2, seed=9, layout="segmentation")
    png(root / "images" / "scene_00001.jpg")
    with pytest.raises(ConfigError, match=r"two files named 'scene_00001' .*keep one per name"):
        open_collection(root)


# ---------------------------------------------------------------------------- lists, globs


def test_list_of_paths_with_comments_and_labels(tmp_path):
    png(tmp_path / "imgs" / "a.png")
    png(tmp_path / "imgs" / "b.png")
    elsewhere = png(tmp_path / "far" / "c.png")
    listing = tmp_path / "lists" / "train.txt"
    listing.parent.mkdir()
    listing.write_text(f"# a comment\n\n../imgs/b.png\t10\n  ../imgs/a.png \t2\r\n"
                       f"{elsewhere}\t2\n")
    collection = open_collection(listing)
    assert collection.kind == "list" and collection.root == listing.parent
    assert collection.classes == ("2", "10")  # whole numbers sort as numbers
    assert [item.path for item in collection] == [listing.parent / "../imgs/b.png",
                                                  listing.parent / "../imgs/a.png", elsewhere]
    assert list(collection.labels) == [1, 0, 0]
    assert names(collection)[0] == "../imgs/b.png"  # as written, in the list's order
    bare = tmp_path / "bare.lst"
    bare.write_text("imgs/a.png\nimgs/missing.png\n")
    plain = open_collection(bare)
    assert plain.classes is None and len(plain) == 2
    assert str(plain) == f"2 images from '{bare}' (list of paths)"
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("imgs/a.png\tcat\nimgs/b.png\n")
    with pytest.raises(ConfigError, match="line 2 of .* has no label but line 1 has one"):
        open_collection(mixed)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="lists no images"):
        open_collection(empty)
    with pytest.raises(ConfigError, match="list .* does not exist"):
        open_collection(tmp_path / "nope.txt", kind="list")


def test_list_reads_skip_missing_files(tmp_path):
    png(tmp_path / "a.png")
    listing = tmp_path / "l.txt"
    listing.write_text("a.png\nmissing.png\n")
    found, stream = read_all(open_collection(listing))
    assert stream.n_read == 1 and [s.item.name for s in stream.skipped] == ["missing.png"]
    assert "does not exist" in stream.skipped[0].reason


def test_glob_pattern(tmp_path, monkeypatch):
    png(tmp_path / "photos" / "2023" / "b.jpg")
    png(tmp_path / "photos" / "a.jpg")
    png(tmp_path / "photos" / "c.png")
    png(tmp_path / "photos" / ".secret" / "d.jpg")
    monkeypatch.chdir(tmp_path)
    collection = open_collection("photos/**/*.jpg")
    assert collection.kind == "glob" and collection.root == Path("photos")
    assert names(collection) == ["2023/b.jpg", "a.jpg"]
    assert str(collection) == "2 images from 'photos/**/*.jpg' (glob pattern)"
    assert names(open_collection(str(tmp_path / "photos" / "*.*"))) == ["a.jpg", "c.png"]
    with pytest.raises(ConfigError, match="matches no image files"):
        open_collection("photos/**/*.gif")


# -------------------------------------------------------------------------------- reading


def test_bad_files_are_skipped_counted_and_named(tmp_path):
    root = tmp_path / "data"
    png(root / "a.png")
    (root / "b.png").write_bytes(b"")
    (root / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "d.png").write_text("just some text")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "e.png")
    whole = (root / "e.png").read_bytes()
    (root / "e.png").write_bytes(whole[: len(whole) // 2])
    (root / "f.png").write_bytes(png_header(100_000, 100_000))  # 10 gigapixels
    png(root / "g.png")
    calls = []
    found, stream = read_all(open_collection(root), batch_size=3,
                             progress=lambda done, total: calls.append((done, total)))
    assert [b.start for b in found] == [0, 3, 6] and calls == [(3, 7), (6, 7), (7, 7)]
    assert stream.n_read == 2 and stream.done == stream.total == 7
    reasons = {s.item.name: s.reason for s in stream.skipped}
    assert list(reasons) == ["b.png", "c.png", "d.png", "e.png", "f.png"]
    assert "empty (0 bytes)" in reasons["b.png"]
    assert "looks like text" in reasons["d.png"]
    assert "not an image Pillow can read" in reasons["c.png"]
    assert "truncated or corrupt" in reasons["e.png"]
    assert "max_pixels" in reasons["f.png"]  # refused from the header, before decoding
    assert [s.index for s in stream.skipped] == [1, 2, 3, 4, 5]
    assert [list(b.indices) for b in found] == [[0], [], [6]]
    assert found[1].groups == () and len(found[1]) == 0 and len(found[1].skipped) == 3
    small = Reader(max_pixels=32)
    _, tight = read_all(open_collection(root), load=small)
    assert len(tight.skipped) == 7 and "over the limit of max_pixels=32" in tight.skipped[0].reason


def test_reader_with_preprocess(tmp_path):
    root = tmp_path / "data"
    png(root / "a.png", (10, 20), value=255)
    image, mask = Reader(Preprocess(resize=None, crop=None))(open_collection(root)[0])
    assert image.shape == (3, 10, 20) and mask is None
    np.testing.assert_allclose(image[0], (1 - 0.485) / 0.229, rtol=1e-5)
    image, _ = Reader(Preprocess(resize=8, crop=8))(open_collection(root)[0])
    assert image.shape == (3, 8, 8)
    image, _ = Reader(lambda path: np.zeros((1, 2, 2), np.float32))(open_collection(root)[0])
    assert image.shape == (1, 2, 2)


# ---------------------------------------------------------------------------------- masks


def test_read_mask_checks(tmp_path):
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4) % 3
    Image.fromarray(labels).save(tmp_path / "ok.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "ok.png", size=(3, 4)), labels)
    with pytest.raises(ConfigError, match=r"mask 'ok.png' is 4 x 3 pixels but its image is "
                                          r"5 x 3: a mask must match its image"):
        read_mask(tmp_path / "ok.png", size=(3, 5))
    Image.new("RGB", (4, 3), (255, 0, 0)).save(tmp_path / "rgb.png")
    with pytest.raises(ConfigError, match=r"mask 'rgb.png' is a RGB image, not a label map.* "
                                          r"not colours"):
        read_mask(tmp_path / "rgb.png")
    with pytest.raises(ConfigError, match=r"a mask \('ok.png'\) holds label 2, but 'c.txt' "
                                          r"names only 2 classes \(0..1\): add the missing"):
        read_mask(tmp_path / "ok.png", classes=("a", "b"), classes_file="c.txt")
    void = labels.copy()
    void[0, 0] = 255
    Image.fromarray(void).save(tmp_path / "void.png")
    with pytest.raises(ConfigError, match=r"holds label 255.*--ignore-index 255"):
        read_mask(tmp_path / "void.png", classes=("a", "b", "c"))
    assert read_mask(tmp_path / "void.png", classes=("a", "b", "c"), ignore_index=255)[0, 0] == 255
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="Cannot read mask 'junk.png'"):
        read_mask(tmp_path / "junk.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_mask(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="does not exist"):
        read_mask(tmp_path / "gone.png")
    with pytest.raises(ImageError, match="max_pixels=4"):
        read_mask(tmp_path / "ok.png", max_pixels=4)
    with pytest.raises(ConfigError, match="max_classes must be an integer >= 1"):
        read_mask(tmp_path / "ok.png", max_classes=0)


def test_sixteen_bit_masks(tmp_path):
    wide = np.zeros((4, 4), np.uint16)
    wide[0, 0] = 300
    Image.fromarray(wide).save(tmp_path / "wide.png")
    values = read_mask(tmp_path / "wide.png")
    assert values.dtype == np.uint16 and values.max() == 300  # 301 classes: within the limit
    wide[1, 1] = 65535
    Image.fromarray(wide).save(tmp_path / "huge.png")
    with pytest.raises(ConfigError, match=r"mask 'huge.png' holds label 65,535 \(16-bit mask\), "
                                          r"which implies 65,536 classes, over the limit of "
                                          r"max_classes=1,024"):
        read_mask(tmp_path / "huge.png")
    assert read_mask(tmp_path / "huge.png", ignore_index=65535).max() == 65535
    assert read_mask(tmp_path / "huge.png", max_classes=70_000).max() == 65535


def test_pair_batches_with_masks(tmp_path):
    root = save_dataset(tmp_path / "seg", 5, seed=2, layout="segmentation")
    (root / "images" / "scene_00003.png").write_bytes(b"not a png")
    (root / "masks" / "scene_00001.png").write_bytes(b"broken")
    found, stream = read_all(open_collection(root), batch_size=2)
    assert [s.item.name for s in stream.skipped] == ["scene_00001.png", "scene_00003.png"]
    assert "mask 'scene_00001.png'" in stream.skipped[0].reason
    group = found[0].groups[0]
    assert group.images.shape == (1, 3, 64, 64) and group.masks.shape == (1, 64, 64)
    assert group.masks.dtype == np.uint8 and group.labels is None
    np.testing.assert_array_equal(group.masks[0],
                                  np.asarray(Image.open(root / "masks" / "scene_00000.png")))
    with pytest.raises(ConfigError, match="masks need their images at their own size"):
        open_collection(root).reader(preprocess=Preprocess())


@pytest.mark.parametrize("problem, match", [
    ("size", r"mask 'scene_00001.png' is 32 x 64 pixels but its image is 64 x 64"),
    ("rgb", r"mask 'scene_00001.png' is a RGB image, not a label map"),
    ("classes", r"names only 2 classes"),
])
def test_dataset_errors_reach_the_consumer(tmp_path, problem, match):
    root = save_dataset(tmp_path / problem, 4, seed=1, layout="segmentation")
    if problem == "size":
        Image.new("L", (32, 64)).save(root / "masks" / "scene_00001.png")
    elif problem == "rgb":
        Image.new("RGB", (64, 64), (255, 0, 0)).save(root / "masks" / "scene_00001.png")
    else:
        (root / "classes.txt").write_text("background\ncircle\n")
    before = threading.active_count()
    with pytest.raises(ConfigError, match=match):
        for _ in batches(open_collection(root), batch_size=1):
            pass
    assert threading.active_count() == before


# -------------------------------------------------------------------------------- batches


def _mixed(tmp_path, sizes):
    root = tmp_path / "mixed"
    for i, size in enumerate(sizes):
        png(root / f"{i:02d}.png", size, value=i)
    return open_collection(root)


def test_mixed_sizes_are_grouped_and_order_kept(tmp_path):
    sizes = [(8, 8), (6, 10), (8, 8), (6, 10), (5, 5), (8, 8), (6, 10)]
    collection = _mixed(tmp_path, sizes)
    found, stream = read_all(collection, batch_size=4)
    assert [b.number for b in found] == [0, 1] and stream.n_batches == 2
    first = found[0]
    assert first.shapes == [(3, 8, 8), (3, 6, 10)]
    assert [list(g.indices) for g in first.groups] == [[0, 2], [1, 3]]
    assert [list(g.positions) for g in first.groups] == [[0, 2], [1, 3]]
    assert [list(g.indices) for g in found[1].groups] == [[4], [5], [6]]
    # restoring batch order from the groups gives every image in collection order
    for batch in found:
        means = np.empty(len(batch))
        for group in batch.groups:
            means[group.positions] = group.images.mean(axis=(1, 2, 3))
        np.testing.assert_allclose(means * 255, batch.indices, atol=1e-3)
        assert [item.name for item in batch.items] == [f"{i:02d}.png" for i in batch.indices]


def test_labels_follow_the_items(tmp_path):
    root = tmp_path / "cls"
    for cls, n in (("a", 3), ("b", 2)):
        for i in range(n):
            png(root / cls / f"{i}.png", (8, 8 + i))
    found, _ = read_all(open_collection(root), batch_size=5)
    batch = found[0]
    assert list(batch.labels) == [0, 0, 0, 1, 1]
    for group in batch.groups:
        np.testing.assert_array_equal(group.labels, batch.labels[group.positions])


def test_workers_give_the_same_batches(tmp_path):
    collection = _mixed(tmp_path, [(8, 8), (6, 10)] * 5)
    one, _ = read_all(collection, batch_size=3)
    four, _ = read_all(collection, batch_size=3, workers=4, prefetch=1)
    assert len(one) == len(four)
    for a, b in zip(one, four):
        assert list(a.indices) == list(b.indices)
        for ga, gb in zip(a.groups, b.groups):
            np.testing.assert_array_equal(ga.images, gb.images)


class Counting:
    """A loader that counts its calls (thread-safe) and makes tiny images."""

    def __init__(self, fail_at: int | None = None, error: BaseException | None = None):
        self.calls = 0
        self.lock = threading.Lock()
        self.fail_at, self.error = fail_at, error

    def __call__(self, item: Item) -> np.ndarray:
        with self.lock:
            self.calls += 1
        index = int(item.name.split(".")[0])
        if index == self.fail_at:
            raise self.error
        return np.full((1, 2, 2), index, np.float32)


def _items(n: int) -> list[Item]:
    return [Item(Path(f"{i}.png"), f"{i}.png") for i in range(n)]


def _wait_for(condition, timeout=2.0):
    end = time.monotonic() + timeout
    while not condition() and time.monotonic() < end:
        time.sleep(0.005)
    return condition()


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_prefetch_bounds_how_far_the_worker_runs_ahead(prefetch):
    load = Counting()
    with batches(_items(40), load=load, batch_size=2, prefetch=prefetch) as stream:
        assert _wait_for(lambda: load.calls == 2 * prefetch)
        time.sleep(0.05)  # a slow consumer: the worker must not go further
        assert load.calls == 2 * prefetch
        for taken in range(1, 4):
            next(stream)
            assert _wait_for(lambda t=taken: load.calls == 2 * (t + prefetch))
            time.sleep(0.02)
            assert load.calls == 2 * (taken + prefetch)


def test_early_close_stops_the_worker_threads():
    before = threading.active_count()
    load = Counting()
    for batch in batches(_items(100), load=load, batch_size=2, workers=3):
        if batch.number == 2:
            break
    assert threading.active_count() == before
    assert load.calls < 100

    stream = batches(_items(100), load=Counting(), batch_size=2)
    next(stream)
    del stream  # dropped without close: the finaliser stops the thread
    assert threading.active_count() == before

    with batches(_items(100), load=Counting(), batch_size=2) as stream:
        next(stream)
    assert threading.active_count() == before
    with pytest.raises(StopIteration):
        next(stream)


def test_errors_in_the_consumer_stop_the_worker():
    before = threading.active_count()

    def consume(error):
        for batch in batches(_items(100), load=Counting(), batch_size=2, workers=2):
            if batch.number == 1:
                raise error

    with pytest.raises(RuntimeError, match="boom"):
        consume(RuntimeError("boom"))
    assert threading.active_count() == before
    with pytest.raises(KeyboardInterrupt):
        consume(KeyboardInterrupt())
    assert threading.active_count() == before


@pytest.mark.parametrize("workers", [1, 2])
def test_loader_errors_propagate_after_the_batches_before_them(workers):
    before = threading.active_count()
    stream = batches(_items(10), load=Counting(fail_at=5, error=KeyError("bug")),
                     batch_size=2, workers=workers)
    assert [b.number for b in (next(stream), next(stream))] == [0, 1]
    with pytest.raises(KeyError, match="bug"):
        next(stream)
    assert threading.active_count() == before
    with pytest.raises(StopIteration):
        next(stream)
    # per-file errors are skipped instead
    found, quiet = read_all(_items(4), load=Counting(fail_at=1, error=ImageError("bad file")))
    assert [s.reason for s in quiet.skipped] == ["bad file"] and quiet.n_read == 3


def test_bad_loader_output_and_options():
    with pytest.raises(ConfigError, match=r"load\(item\) must return an image array"):
        read_all(_items(2), load=lambda item: np.zeros((2, 2)))
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
        batches(_items(2), load=Counting(), batch_size=0)
    with pytest.raises(ConfigError, match="prefetch must be an integer >= 0"):
        batches(_items(2), load=Counting(), prefetch=-1)
    found, stream = read_all(_items(0), load=Counting())
    assert found == [] and stream.total == 0


# ------------------------------------------------------------------------------- escaping


def test_names_and_messages_escape_control_characters(tmp_path):
    evil = "red\x1b[31m\nline.png"
    root = tmp_path / "data"
    png(root / "ok.png")
    (root / evil).write_bytes(b"not an image")
    collection = open_collection(root)
    assert names(collection) == ["ok.png", "red\\x1b[31m\\nline.png"]
    assert collection[1].path.name == evil  # the path itself is untouched
    _, stream = read_all(collection)
    (skipped,) = stream.skipped
    for text in (skipped.item.name, skipped.reason, str(skipped)):
        assert "\x1b" not in text and "\n" not in text
    assert "\\x1b[31m\\n" in skipped.reason
    seg = save_dataset(tmp_path / "seg", 2, seed=1, layout="segmentation")
    (seg / "images" / "scene_00000.png").rename(seg / "images" / "\x1b]0;x\x07.png")
    with pytest.raises(ConfigError) as info:
        open_collection(seg)
    assert "\x1b" not in str(info.value) and "\\x1b]0;x\\x07.png" in str(info.value)
    assert printable("a\u202eb\udcff\tc") == "a\\u202eb\\udcff\\tc"
    assert printable("café ☕") == "café ☕"

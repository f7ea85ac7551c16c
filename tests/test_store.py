"""The dataset store: values against extract(), plain Zarr, resume after SIGKILL anywhere, refusals,
disk full and permission errors, pooling, float16, the dry run and the CLI."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from clirun import run_error, run_ok
from featuremap.errors import FeaturemapError

LAYERS = ["backbone.block1", "backbone.block4"]
N_SCENES, CHUNK = 22, 4  # 6 chunks, the last one short


@pytest.fixture(scope="module")
def model():
    from featuremap import load_model

    return load_model("shapes")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Generated class folders with one unreadable file among them."""
    from featuremap.bundled.scenes import save_dataset

    root = save_dataset(tmp_path_factory.mktemp("scenes") / "data", N_SCENES, seed=3)
    (root / "circle" / "aa_broken.png").write_bytes(b"not an image")
    return root


def extract(model, data, out, **options):
    from featuremap.store import extract_dataset

    options = {"layers": LAYERS, "batch_size": CHUNK, **options}
    return extract_dataset(model, data, out=out, **options)


@pytest.fixture(scope="module")
def reference(model, data, tmp_path_factory) -> Path:
    """A store written in one go, uninterrupted."""
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    extract(model, data, out)
    return out


def snapshot(store: Path) -> dict:
    """Everything a store holds: every file's bytes (chunks, records, metadata, manifest)."""
    return {str(p.relative_to(store)): p.read_bytes()
            for p in sorted(store.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- values


def test_store_values_equal_extract(model, reference):
    from featuremap import extract as extract_maps
    from featuremap import open_store

    store = open_store(reference)
    assert len(store) == N_SCENES + 1 and store.layers == LAYERS
    assert store.complete and list(store.failures) == [0]
    assert "not an image" in store.failures[0] and store.images[0] == "circle/aa_broken.png"
    done = store.done
    assert len(done) == N_SCENES
    expected = extract_maps(model, [store.paths[i] for i in done[:8]], layers=LAYERS)
    for layer in LAYERS:
        assert np.array_equal(store.to_numpy(layer)[done[:8]], expected[layer].numpy())
        assert not store.to_numpy(layer)[0].any()  # the failed image's rows stay zero
        assert store.to_torch(layer, 2, 5).shape == (3, *store.header.shapes[layer])
    assert store.classes is not None and store.labels is not None
    assert [store.classes[i] for i in store.labels[done]] == [
        store.images[i].split("/")[0] for i in done]


def test_any_zarr_reader_opens_the_store(reference):
    import zarr

    from featuremap import open_store

    group = zarr.open_group(str(reference), mode="r")
    header = group.attrs["featuremap"]
    assert header["layers"] == LAYERS and header["chunk"] == CHUNK
    store = open_store(reference)
    for layer in LAYERS:
        array = group["maps"][layer]
        assert array.chunks[0] == CHUNK and array.shape == (len(store), *header["shapes"][layer])
        assert np.array_equal(array[:], store.to_numpy(layer))
    assert list(group["status"][:]) == list(store.status)
    assert list(group["images"][:]) == store.images


def test_manifest_lists_every_image_with_its_status(reference):
    manifest = json.loads((reference / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"] == {"done": N_SCENES, "failed": 1,
                                                          "pending": 0}
    header = manifest["header"]
    for key in ("model", "weights_sha256", "preprocess", "layers", "dtype", "pool",
                "featuremap_version"):
        assert header[key] not in (None, "")
    statuses = [image["status"] for image in manifest["images"]]
    assert statuses.count("failed") == 1 and "reason" in manifest["images"][0]


@pytest.mark.parametrize("pool, shape", [("avg", (128,)), ("max", (128,)),
                                         ("avg2", (128, 2, 2))])
def test_pooling(model, data, tmp_path, pool, shape):
    import torch.nn.functional as F

    from featuremap import open_store

    extract(model, data, tmp_path / "s.zarr", layers=["backbone.block4"], pool=pool)
    store = open_store(tmp_path / "s.zarr")
    full = extract(model, data, tmp_path / "full.zarr", layers=["backbone.block4"])
    maps = open_store(full.path).to_torch("backbone.block4")
    expected = {"avg": maps.mean(dim=(2, 3)), "max": maps.amax(dim=(2, 3)),
                "avg2": F.adaptive_avg_pool2d(maps, 2)}[pool]
    assert store["backbone.block4"].shape == (N_SCENES + 1, *shape)
    assert np.allclose(store.to_numpy("backbone.block4"), expected.numpy(), atol=1e-6)


def test_pooling_per_layer(model, data, reference, tmp_path):
    from featuremap import open_store
    from featuremap.errors import UnknownNameError

    extract(model, data, tmp_path / "s.zarr", pool="backbone.block4=avg")
    store, full = open_store(tmp_path / "s.zarr"), open_store(reference)
    assert store.header.pool == {"backbone.block1": "none", "backbone.block4": "avg"}
    assert np.array_equal(store.to_numpy("backbone.block1"), full.to_numpy("backbone.block1"))
    assert np.allclose(store.to_numpy("backbone.block4"),
                       full.to_numpy("backbone.block4").mean(axis=(2, 3)), atol=1e-6)
    with pytest.raises(UnknownNameError, match="Did you mean 'backbone.block4'"):
        extract(model, data, tmp_path / "t.zarr", pool="backbone.blok4=avg")
    with pytest.raises(FeaturemapError, match="pool must be one of"):
        extract(model, data, tmp_path / "t.zarr", pool={"backbone.block4": "sum"})


def test_float16(model, data, reference, tmp_path):
    from featuremap import open_store

    extract(model, data, tmp_path / "h.zarr", dtype="float16")
    half, full = open_store(tmp_path / "h.zarr"), open_store(reference)
    for layer in LAYERS:
        assert half[layer].dtype == np.float16
        assert np.allclose(half.to_numpy(layer), full.to_numpy(layer), rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------------------- resume

KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import featuremap.store.manifest as manifest
    import featuremap.store.writer as writer
    from featuremap import load_model
    from featuremap.store import extract_dataset

    point, nth = sys.argv[3], int(sys.argv[4])
    calls = {"n": 0}

    def die_on(n):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    if point == "chunk":  # between two layers' chunks of one write
        import zarr
        original = zarr.Array.__setitem__
        def setitem(self, key, value):
            original(self, key, value)
            if self.shape[1:] and self.shape[1] == 16:  # block1 written, block4 not yet
                die_on(nth)
        zarr.Array.__setitem__ = setitem
    elif point == "record":  # the record's temporary file written, not yet renamed
        original = os.replace
        def replace(src, dst):
            if "records" in str(dst):
                die_on(nth)
            return original(src, dst)
        os.replace = replace
    elif point in ("manifest", "create"):  # the manifest's update or the store's creation
        original = os.replace
        def replace(src, dst):
            target = "manifest.json" if point == "manifest" else ".part"
            if str(dst).endswith(target) or str(src).endswith(target):
                die_on(nth)
            return original(src, dst)
        os.replace = replace
    elif point == "status":  # maps written, status chunk not
        original = writer.StoreWriter.write_chunk
        def write_chunk(self, start, maps, status, failed):
            arrays = self.arrays()
            for layer in self.header.layers:
                arrays[layer][start:start + len(status)] = maps[layer]
            die_on(nth)
            return original(self, start, maps, status, failed)
        writer.StoreWriter.write_chunk = write_chunk
    extract_dataset(load_model("shapes"), sys.argv[1], out=sys.argv[2],
                    layers=%r, batch_size=%d)
    print("finished without being killed")
""") % (LAYERS, CHUNK)


@pytest.mark.parametrize("point, nth", [("create", 1), ("chunk", 3), ("status", 2),
                                        ("record", 4), ("manifest", 2)])
def test_resume_after_sigkill_equals_an_uninterrupted_run(model, data, reference, tmp_path,
                                                          point, nth):
    out = tmp_path / "s.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(data), str(out), point,
                           str(nth)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, (done.stdout, done.stderr)
    extract(model, data, out)  # the same call resumes
    assert snapshot(out) == snapshot(reference)
    assert not [p for p in tmp_path.iterdir() if p.name != "s.zarr"]  # no temporary folder


def test_resume_computes_only_what_is_missing(model, data, reference, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    records = sorted((out / "records").iterdir())
    for record in records[1:3]:
        record.unlink()
    seen = []
    result = extract(model, data, out, progress=lambda done, total: seen.append((done, total)))
    assert (result.done + result.failed, result.already) == (2 * CHUNK, N_SCENES + 1 - 2 * CHUNK)
    assert seen[-1] == (2 * CHUNK, 2 * CHUNK)
    assert snapshot(out) == snapshot(reference)
    again = extract(model, data, out)
    assert (again.done, again.failed, again.already) == (0, 0, N_SCENES + 1)


def test_resume_reads_each_record_once_before_it_starts(model, data, reference, tmp_path,
                                                       monkeypatch):
    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    (out / "records" / sorted(os.listdir(out / "records"))[2]).unlink()
    kept = sorted(os.listdir(out / "records"))
    reads, original = [], Path.read_text

    def read_text(self, *args, **kwargs):
        if self.parent.name == "records":
            reads.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    at_start = []
    extract(model, data, out, progress=lambda done, total: done or at_start.append(list(reads)))
    assert sorted(at_start[0]) == kept  # the free-space check and the opening share one read
    assert snapshot(out) == snapshot(reference)


def test_a_manifest_header_with_extra_still_opens_and_resumes(model, data, reference, tmp_path):
    """Stores written before Header.extra was removed hold ``"extra": {}`` in their header."""
    from featuremap import open_store

    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "extra" not in manifest["header"]
    manifest["header"]["extra"] = {}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "records" / sorted(os.listdir(out / "records"))[1]).unlink()
    assert open_store(out).header.layers == LAYERS
    result = extract(model, data, out)
    assert result.done + result.failed == CHUNK
    assert snapshot(out) == snapshot(reference)  # the manifest is rewritten without it


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("change, phrase", [
    ({"layers": ["backbone.block2"]}, "layers differs"),
    ({"pool": "avg"}, "pool differs"),
    ({"dtype": "float16"}, "dtype differs"),
    ({"batch_size": 8}, "chunk differs"),
])
def test_a_store_made_another_way_is_refused(model, data, reference, tmp_path, change, phrase):
    from featuremap.errors import ConfigError

    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    before = snapshot(out)
    with pytest.raises(ConfigError, match=phrase) as info:
        extract(model, data, out, **change)
    assert "--overwrite" in str(info.value)
    assert snapshot(out) == before  # nothing touched
    extract(model, data, out, overwrite=True, **change)  # replaced when asked
    assert snapshot(out) != before


def test_other_weights_and_other_images_are_refused(data, reference, tmp_path):
    from featuremap import load_model
    from featuremap.errors import ConfigError

    out = tmp_path / "s.zarr"
    shutil.copytree(reference, out)
    with pytest.raises(ConfigError, match="the weights differ"):
        extract(load_model("shapes", weights="random"), data, out)
    fewer = tmp_path / "fewer"
    shutil.copytree(data, fewer)
    shutil.rmtree(fewer / "circle")
    with pytest.raises(ConfigError, match="the source lists other images"):
        extract(load_model("shapes"), fewer, out)


def test_not_a_store_is_never_touched(model, data, tmp_path):
    from featuremap.errors import ConfigError

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a featuremap store"):
        extract(model, data, folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        extract(model, data, tmp_path / "file")
    with pytest.raises(ConfigError, match="does not exist"):
        extract(model, data, tmp_path / "missing" / "s.zarr")


@pytest.mark.parametrize("options, phrase", [
    ({"pool": "median"}, "pool must be one of"), ({"dtype": "int8"}, "dtype must be"),
    ({"batch_size": 0}, "batch_size must be"), ({"compression": "gzip"}, "compression must"),
    ({"layers": ["backbone.blok1"]}, "Did you mean"), ({"engine": "spark"}, "engine must"),
])
def test_bad_options_are_refused_before_any_work(model, data, tmp_path, options, phrase):
    from featuremap.errors import FeaturemapError

    with pytest.raises(FeaturemapError, match=phrase):
        extract(model, data, tmp_path / "s.zarr", **options)
    assert not (tmp_path / "s.zarr").exists()


# ---------------------------------------------------------------------------- the disk


@pytest.mark.parametrize("code, phrase", [(errno.ENOSPC, "is full"),
                                          (errno.EACCES, "permission denied")])
def test_a_failed_write_is_one_clear_error_and_resumable(model, data, reference, tmp_path,
                                                         monkeypatch, code, phrase):
    import featuremap.store.writer as writer
    from featuremap.store import StoreError

    original, calls = writer.write_record, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(code, os.strerror(code))
        return original(*args, **kwargs)

    monkeypatch.setattr(writer, "write_record", failing)
    out = tmp_path / "s.zarr"
    with pytest.raises(StoreError, match=phrase) as info:
        extract(model, data, out)
    assert "run the same command to resume" in str(info.value)
    monkeypatch.setattr(writer, "write_record", original)
    extract(model, data, out)
    assert snapshot(out) == snapshot(reference)


def test_a_run_that_does_not_fit_is_refused_before_it_starts(model, data, tmp_path,
                                                             monkeypatch):
    import featuremap.store.extract as extraction
    from featuremap.errors import ConfigError

    monkeypatch.setattr(extraction, "free_space", lambda path: 1000)
    with pytest.raises(ConfigError, match="would not fit"):
        extract(model, data, tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_a_real_full_disk(model, data, reference, tmp_path):
    """A small tmpfs (where this machine lets the tests mount one) that fills up mid-run: one
    clear error, and once space is freed the same call completes the store."""
    from featuremap.store import StoreError

    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("mounting a tmpfs needs root: covered by the injected failures above")
    try:
        filler = mount / "filler"

        def fill(done, total):
            if done >= 2 * CHUNK and not filler.exists():  # the disk fills up mid-run
                with open(filler, "wb") as f:
                    with contextlib.suppress(OSError):
                        while True:
                            f.write(b"\0" * 65536)

        with pytest.raises(StoreError, match="is full"):
            extract(model, data, mount / "s.zarr", progress=fill)
        filler.unlink()
        extract(model, data, mount / "s.zarr")
        assert snapshot(mount / "s.zarr") == snapshot(reference)
        with pytest.raises(FeaturemapError, match="would not fit"):
            extract(model, data, mount / "big.zarr", layers=["backbone.block1.conv1"])
    finally:
        subprocess.run(["umount", str(mount)], check=False)


# ---------------------------------------------------------------------------- dry run, CLI


def test_a_batch_too_large_for_memory_is_refused_before_any_work(model, data, tmp_path,
                                                                 refused_early, monkeypatch):
    monkeypatch.setenv("FEATUREMAP_MEMORY_LIMIT", "1GB")
    message = refused_early(lambda: extract(model, data, tmp_path / "s.zarr", batch_size=4096,
                                            layers=["backbone.block1.conv1"]),
                            "in flight")
    assert "--batch-size" in message and not (tmp_path / "s.zarr").exists()


def test_ctrl_c_keeps_what_is_stored_and_says_so(model, data, reference, tmp_path):
    from featuremap.store import Interrupted

    def interrupt(done, total):
        if done >= 2 * CHUNK:
            raise KeyboardInterrupt

    out = tmp_path / "s.zarr"
    with pytest.raises(Interrupted, match=r"of 23 images are stored .* run the same command"):
        extract(model, data, out, progress=interrupt)
    assert not open_store_complete(out)
    extract(model, data, out)
    assert snapshot(out) == snapshot(reference)


def open_store_complete(path) -> bool:
    from featuremap import open_store

    return open_store(path).complete


def test_dry_run_writes_nothing_and_estimates(model, data, tmp_path):
    from featuremap.store import DryRun

    seen = []
    dry = extract(model, data, tmp_path / "s.zarr", dry_run=True,
                  progress=lambda done, total: seen.append((done, total)))
    assert isinstance(dry, DryRun) and not (tmp_path / "s.zarr").exists()
    assert seen == [(0, 2 * CHUNK), (CHUNK, 2 * CHUNK), (2 * CHUNK, 2 * CHUNK)]
    per_image = {"backbone.block1": 16 * 32 * 32 * 4, "backbone.block4": 128 * 8 * 8 * 4}
    assert dry.plan.bytes_per_image == per_image
    assert dry.needed_bytes == sum(per_image.values()) * (N_SCENES + 1)
    assert dry.fits and dry.free_bytes > 0 and dry.seconds_per_image > 0
    text = str(dry)
    assert "bytes/image" in text and "free at the destination" in text and "estimated" in text
    assert json.dumps(dry.to_dict())


def test_cli_extract_resume_and_errors(data, tmp_path, capsys):
    out = tmp_path / "s.zarr"
    args = ["extract", str(data), "--layers", ",".join(LAYERS), "--out", str(out),
            "--batch-size", str(CHUNK)]
    text = run_ok(args, capsys)
    assert f"done {N_SCENES}, failed 1, skipped as done 0" in text
    assert "skipped as done 23" in run_ok(args, capsys)
    assert "bytes/image" in run_ok(args + ["--dry-run"], capsys)
    assert "layers differs" in run_error(args[:3] + ["backbone.block2"] + args[4:], capsys)
    assert "pool must be one of" in run_error(args + ["--pool", "sum"], capsys)
    assert "Did you mean" in run_error(["extract", str(data), "--layers", "backbone.blok1",
                                        "--out", str(tmp_path / "t.zarr")], capsys)
    records = str(tmp_path / "s.zarr" / "records")
    assert "could be read as an image" in run_error(
        ["extract", records, "--layers", LAYERS[0], "--out", str(tmp_path / "u.zarr")], capsys)


def test_open_store_errors(tmp_path):
    from featuremap import open_store
    from featuremap.errors import ConfigError

    with pytest.raises(ConfigError, match="not a folder"):
        open_store(tmp_path / "missing")
    with pytest.raises(ConfigError, match="manifest.json' is missing"):
        open_store(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ConfigError, match="cannot read"):
        open_store(tmp_path)

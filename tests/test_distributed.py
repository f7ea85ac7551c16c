"""The Ray engine (featuremap.store.distributed) on a local Ray of 2 CPUs.

One Ray for the whole file (starting one takes seconds): its temporary folder and HOME (Ray
writes ~/.ray) lie in a short folder under /tmp (Unix socket paths are limited to about 107
bytes; pytest's tmp_path may be longer), removed at the end. One actor: a pool that takes
every CPU leaves none to the read tasks and stalls (ray#44687). The last test shuts Ray down
and checks that none of its processes is left.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray  # the test extra installs it: these tests run in CI, never skip

from clirun import run_error, run_ok
from featuremap import load_model
from featuremap.bundled.scenes import save_dataset
from featuremap.errors import ConfigError
from featuremap.store import Interrupted, StoreWriter, extract_dataset, open_store, plan
from featuremap.store.distributed import run_ray

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

LAYERS = "backbone.block1,backbone.block4"
BATCH = 6
SCENES = 20  # and one unreadable file: 21 images, chunks of 6, 6, 6 and 3


class LocalRay:
    """A local Ray for this file, in a folder of its own; ``stop()`` says what it left."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="fmray"))
        self.env = {"RAY_TMPDIR": str(self.root), "HOME": str(self.root / "home"),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.saved = {k: os.environ.get(k) for k in self.env}
        self.real_ray_home = Path(os.path.expanduser("~")) / ".ray"
        self.real_ray_home_existed = self.real_ray_home.exists()
        os.environ.update(self.env)
        (self.root / "home").mkdir()
        self.info = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                             logging_level=logging.ERROR, _temp_dir=str(self.root / "ray"))
        self.pids = processes(str(self.root))
        self.stopped = False

    def stop(self) -> list[str]:
        """Shut Ray down, restore the environment, remove the folder; the Ray processes still
        alive 20 s later (none expected)."""
        if self.stopped:
            return []
        self.stopped = True
        ray.shutdown()
        deadline = time.monotonic() + 20
        left = processes(str(self.root))
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = processes(str(self.root))
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self.root, ignore_errors=True)
        return [f"{pid}: {cmd[:200]}" for pid, cmd in left.items()]


def processes(marker: str) -> dict[int, str]:
    """Live processes whose command line mentions ``marker`` (Ray's own pass their session
    folder on theirs)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker.encode() in raw:
            found[int(entry)] = raw.replace(b"\0", b" ").decode(errors="replace")
    return found


@pytest.fixture(scope="module")
def local_ray():
    cluster = LocalRay()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = save_dataset(tmp_path_factory.mktemp("ray") / "scenes", SCENES, seed=7)
    (root / "circle" / "scene_broken.png").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def model():
    return load_model("shapes")


@pytest.fixture(scope="module")
def reference(data, model, tmp_path_factory) -> Path:
    """The local engine's store, written in one go."""
    out = tmp_path_factory.mktemp("ref") / "local.zarr"
    r = extract_dataset(model, data, layers=LAYERS, out=out, batch_size=BATCH)
    assert (r.done, r.failed) == (SCENES, 1)
    return out


def files(store: Path) -> dict[str, bytes]:
    return {str(f.relative_to(store)): f.read_bytes()
            for f in sorted(store.rglob("*")) if f.is_file()}


def assert_same_store(got: Path, want: Path) -> None:
    """Byte for byte: every array chunk, the status, the records and the manifest."""
    a, b = files(got), files(want)
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, different
    s, t = open_store(got), open_store(want)
    assert s.complete and s.images == t.images and s.failures == t.failures
    for layer in t.layers:
        assert s.to_numpy(layer).tobytes() == t.to_numpy(layer).tobytes()
    manifest = json.loads((got / "manifest.json").read_text())
    assert manifest["counts"] == {"done": SCENES, "failed": 1, "pending": 0}


def test_cli_ray_engine_writes_the_local_engines_store(local_ray, data, reference, tmp_path,
                                                      capsys):
    out = tmp_path / "ray.zarr"
    text = run_ok(["extract", str(data), "--layers", LAYERS, "--out", str(out),
                   "--batch-size", str(BATCH), "--engine", "ray", "--actors", "1"], capsys)
    assert "(ray engine)" in text and "done 20, failed 1, skipped as done 0" in text
    assert "scene_broken.png" in text
    assert_same_store(out, reference)


def test_ray_finishes_a_store_the_local_engine_left_half_done(local_ray, data, model,
                                                              reference, tmp_path):
    out = tmp_path / "resumed.zarr"

    def stop_after_two_chunks(done: int, total: int) -> None:
        if done >= 2 * BATCH:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="images are stored"):
        extract_dataset(model, data, layers=LAYERS, out=out, batch_size=BATCH,
                        progress=stop_after_two_chunks)
    assert len(list((out / "records").iterdir())) == 2
    seen = []
    r = extract_dataset(model, data, layers=LAYERS, out=out, batch_size=BATCH, engine="ray",
                        progress=lambda done, total: seen.append((done, total)))
    assert (r.engine, r.already, r.done + r.failed) == ("ray", 2 * BATCH, SCENES + 1 - 2 * BATCH)
    assert seen[0] == (0, 9) and seen[-1] == (9, 9) and len(seen) == 3
    assert_same_store(out, reference)
    again = extract_dataset(model, data, layers=LAYERS, out=out, batch_size=BATCH, engine="ray")
    assert (again.done, again.failed, again.already) == (0, 0, SCENES + 1)
    assert_same_store(out, reference)


def test_ctrl_c_keeps_what_ray_stored_and_the_local_engine_finishes_it(local_ray, data, model,
                                                                      reference, tmp_path):
    out = tmp_path / "interrupted.zarr"

    def interrupt(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"^(6|12|18|21) of 21 images are stored") as info:
        extract_dataset(model, data, layers=LAYERS, out=out, batch_size=BATCH, engine="ray",
                        progress=interrupt)
    stored = int(str(info.value).split()[0])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["pending"] == SCENES + 1 - stored
    r = extract_dataset(model, data, layers=LAYERS, out=out, batch_size=BATCH)
    # an actor may record the chunk it was writing in the moment Ray takes to stop it
    assert r.engine == "local" and r.already >= stored
    assert_same_store(out, reference)


def test_a_killed_actor_is_replaced_and_every_image_is_done_once(local_ray, data, reference,
                                                                 tmp_path):
    """The actor's process dies (os._exit) at its first forward pass; Ray starts another
    actor and computes that chunk again: the store is the uninterrupted one."""
    marker = tmp_path / "killed-once"
    out = tmp_path / "killed.zarr"
    p = plan(load_model("shapes"), data, layers=LAYERS, out=out, batch_size=BATCH)
    opened = StoreWriter.open(p.out, p.header, p.items)

    def die_once(module, args):  # travels with the model (cloudpickle), runs in the actor
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)

    p.model.module.register_forward_pre_hook(die_once)
    r = run_ray(p, opened, address=None, actors=1)
    assert marker.exists()
    assert (r.done, r.failed, r.already) == (SCENES, 1, 0)
    assert list(r.failures) == ["circle/scene_broken.png"]
    assert sorted(int(f.stem) for f in (out / "records").iterdir()) == [0, 6, 12, 18]
    assert_same_store(out, reference)


def test_an_error_raised_in_an_actor_reaches_the_caller_as_raised(local_ray, data,
                                                                   tmp_path):
    """featuremap's errors (a float16 overflow, for instance) keep their type and their one
    line, without Ray's wrappers; the store stays resumable."""
    p = plan(load_model("shapes"), data, layers=LAYERS, out=tmp_path / "e.zarr",
             batch_size=BATCH)
    opened = StoreWriter.open(p.out, p.header, p.items)

    def refuse(module, args):
        raise ConfigError("layer 'x' has values beyond float16's 65504")

    p.model.module.register_forward_pre_hook(refuse)
    with pytest.raises(ConfigError) as info:
        run_ray(p, opened, address=None, actors=1)
    assert str(info.value) == "layer 'x' has values beyond float16's 65504"
    assert type(info.value) is ConfigError
    assert open_store(p.out).to_dict()["done"] == 0


def test_errors_are_one_line_without_ray_or_without_a_cluster(data, tmp_path):
    """In a fresh process (no Ray running): Ray missing, then an address where nothing
    listens."""
    held = socket.socket()  # bound, never listening: connections are refused, and no other
    held.bind(("127.0.0.1", 0))  # process can listen on the port while the test holds it
    port = held.getsockname()[1]
    args = ["extract", str(data), "--layers", LAYERS, "--out", str(tmp_path / "x.zarr"),
            "--engine", "ray"]
    script = f"""
import contextlib, io, json, sys
from featuremap.cli import main
def run(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit as stop:
            return stop.code, err.getvalue()
    return 0, err.getvalue()
sys.modules["ray"] = None
missing = run({args!r})
del sys.modules["ray"]
unreachable = run({args!r} + ["--address", "127.0.0.1:{port}"])
print(json.dumps([missing, unreachable]))
"""
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    finally:
        held.close()
    assert done.returncode == 0, done.stderr
    (code1, err1), (code2, err2) = json.loads(done.stdout.splitlines()[-1])
    for code, err in ((code1, err1), (code2, err2)):
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err
    assert "pip install 'featuremap[ray]'" in err1
    assert f"no Ray cluster answers at '127.0.0.1:{port}'" in err2 and "ray start --head" in err2


def test_bad_actor_counts_are_refused(data, tmp_path, capsys):
    line = run_error(["extract", str(data), "--layers", LAYERS, "--out",
                      str(tmp_path / "y.zarr"), "--engine", "ray", "--actors", "0"], capsys)
    assert "actors must be an integer from 1" in line


def test_no_ray_process_is_left_and_nothing_outside_the_test_folder(local_ray):
    """Last in this file: Ray shut down, none of its processes alive, its folders removed."""
    assert local_ray.pids, "the check sees Ray's processes while it runs"
    assert local_ray.stop() == []
    assert not local_ray.root.exists()
    assert local_ray.real_ray_home.exists() == local_ray.real_ray_home_existed

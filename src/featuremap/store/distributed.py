"""The Ray engine: the same extraction as the local engine, on Ray Data.

``extract_dataset(..., engine="ray")`` (``featuremap extract --engine ray``) runs a Ray Data
pipeline over the chunks the store still lacks, one row per chunk (``start``, ``stop``):

1. read: tasks decode each chunk's images (:func:`featuremap.datasets.batches`, the local
   engine's reader and preprocessing);
2. compute and write: ``map_batches`` with a fixed pool of ``actors`` actors, each holding the
   model once, computes the chunk (:func:`featuremap.store.compute.compute_chunk`, the local
   engine's code) and writes it into the store itself (:meth:`StoreWriter.write_chunk`:
   layer chunks, status chunk, then the chunk's record);
3. the driver (this process) gathers one small row per chunk (images done, failures) for the
   progress and the result, and writes the manifest at the end.

The store is therefore the local engine's, byte for byte, and resumes the same way: a chunk is
done when its record exists, whichever engine or machine wrote it; the same command after any
interruption computes only the chunks without one. Actors that die (a killed process, a lost
node) are restarted by Ray and their chunk is computed again; writing a chunk twice writes the
same bytes, so every image ends up stored once.

Ray: ``address=None`` joins the Ray this process already started (``ray.init()``), else the
cluster ``RAY_ADDRESS`` names, else starts a local one (no dashboard; ``RAY_TMPDIR`` chooses its
temporary folder) and shuts it down at the end; an address joins that cluster (``"auto"``,
``"HOST:6379"``, ``"ray://HOST:10001"``). Each actor takes one CPU, and one GPU when the model
is on CUDA. On a cluster every machine must see the images and the store at the same path
(shared storage; see docs/cluster.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pickle
import socket
import time
from collections.abc import Iterator
from typing import Any

from featuremap.datasets import batches
from featuremap.errors import ConfigError, FeaturemapError, printable
from featuremap.store.compute import compute_chunk
from featuremap.store.extract import (
    ExtractResult,
    Progress,
    interrupted,
    make_result,
    raise_write,
    reindexed,
)
from featuremap.store.manifest import DONE, PENDING
from featuremap.store.plan import Plan
from featuremap.store.writer import Opened, StoreWriter

INSTALL = "pip install 'featuremap[ray]'"
MAX_ACTORS = 4096
QUIET_LOGGERS = ("ray", "ray.data")
RETRY_NOTE = "\nFailed to "


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(f"the ray engine needs Ray Data: {INSTALL} (or use --engine "
                          "local).") from None
    return ray


def check_ray(address: str | None, actors: int) -> Any:
    """Refuse what would fail once Ray runs, before anything is written: a bad ``actors``,
    Ray missing, a ``HOST:PORT`` address where nothing answers. Returns the ``ray`` module."""
    if isinstance(actors, bool) or not isinstance(actors, int) or not 1 <= actors <= MAX_ACTORS:
        raise ConfigError(f"actors must be an integer from 1 to {MAX_ACTORS:,}, got {actors!r}.")
    ray = _ray()
    if _address(address) is not None and not ray.is_initialized():
        _check_reachable(_address(address), "--address" if address else "RAY_ADDRESS")
    return ray


def _address(address: str | None) -> str | None:
    """The cluster to join: ``address``, else ``RAY_ADDRESS`` (set for a Ray job's command),
    else None (a local Ray)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def run_ray(p: Plan, opened: Opened, *, address: str | None = None, actors: int = 1,
            progress: Progress | None = None) -> ExtractResult:
    """Compute the pending chunks of an opened store on Ray and finish the store.

    Args:
        p: the checked plan; opened: the store (:meth:`StoreWriter.open`).
        address: a Ray cluster to join (default: the Ray this process runs, else
            ``RAY_ADDRESS``, else a new local one, shut down at the end).
        actors: actors in the pool, each holding the model once.
        progress: ``progress(done, total)`` in images, as chunks are stored.

    Raises:
        ConfigError: Ray is not installed, the cluster cannot be reached, ``actors`` is not a
            positive integer; the errors of the local engine (float16 overflow, for instance).
        StoreError: a write failed (what was stored stays valid; the same call resumes).
        Interrupted: Ctrl-C.
    """
    ray = check_ray(address, actors)
    store = opened.writer
    chunks = store.pending_chunks(opened.finished)
    already = p.header.n_images - sum(stop - start for start, stop in chunks)
    began = time.perf_counter()
    done = failed = 0
    failures: dict[int, str] = {}
    if chunks:
        try:
            with ray_running(address, actors, needed=True), _quiet(ray):
                for row in _rows(ray, p, store, chunks, actors, progress):
                    done += row["done"]
                    failed += row["failed"]
                    failures.update(row["failures"])
        except KeyboardInterrupt:
            status, _ = store.finish(p.items)
            raise interrupted(p, int((status != PENDING).sum())) from None
        except Exception as error:
            raise_write(_cause(error), p, already + done + failed)
    try:
        store.finish(p.items)
    except OSError as error:
        raise_write(error, p, already + done + failed)
    return make_result(p, done, failed, already, failures, began, "ray")


# ------------------------------------------------------------------------------- Ray itself


@contextlib.contextmanager
def ray_running(address: str | None, actors: int, *, needed: bool = True) -> Iterator[None]:
    """Ray joined or started (when ``needed`` and this process is not connected yet), and shut
    down at the end if this call started it.

    Raises:
        ConfigError: what :func:`check_ray` refuses; Ray could not start or join the cluster.
    """
    ray = check_ray(address, actors)
    if not needed or ray.is_initialized():
        yield
        return
    _connect(ray, _address(address), actors)
    try:
        yield
    finally:
        ray.shutdown()


def _connect(ray: Any, address: str | None, actors: int) -> None:
    """Join the cluster at ``address``, or start a local Ray."""
    settings: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address is None:
        # A pool that takes every CPU leaves none to the read tasks and stalls (ray#44687).
        cpus = max(os.cpu_count() or 1, actors + 1)
        settings.update(num_cpus=cpus, include_dashboard=False)
    else:
        settings["address"] = address
    try:
        with _local_environment(local=address is None):
            ray.init(**settings)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
        where = "start a local Ray" if address is None else (
            f"join the Ray cluster at '{printable(address)}'")
        raise ConfigError(f"could not {where}: {printable(_first_line(error))}") from None


@contextlib.contextmanager
def _local_environment(*, local: bool) -> Iterator[None]:
    """While a local Ray starts (its processes inherit this environment): the folder this
    featuremap was imported from first on ``PYTHONPATH``, so that its workers unpickle this
    code and not another installed copy; no usage statistics. Restored afterwards."""
    if not local:
        yield
        return
    import featuremap

    here = os.path.dirname(os.path.dirname(os.path.abspath(featuremap.__file__)))
    path = os.environ.get("PYTHONPATH")
    changes = {"PYTHONPATH": os.pathsep.join([here] + ([path] if path else [])),
               "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0")}
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_reachable(address: str, given_by: str) -> None:
    """A plain ``HOST:PORT`` must accept a connection within seconds (``ray.init`` would wait
    a minute or more for an address where nothing listens)."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{given_by} must be HOST:PORT (the head's GCS port, 6379 by "
                          f"default), 'auto' or ray://HOST:PORT, got '{printable(address)}'.")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as error:
        fix = "leave --address out" if given_by == "--address" else f"unset {given_by}"
        raise ConfigError(f"no Ray cluster answers at '{printable(address)}' "
                          f"({printable(error.strerror or error)}): start one with 'ray start "
                          f"--head' there, or {fix} for a local Ray.") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


@contextlib.contextmanager
def _quiet(ray: Any) -> Iterator[None]:
    """No Ray Data progress bars or logs (the caller shows progress, and errors reach it as
    exceptions), and errors raised in tasks and actors as they were raised."""
    context = ray.data.DataContext.get_current()
    settings = {"enable_progress_bars": False, "print_on_execution_start": False,
                "raise_original_map_exception": True}
    saved = {name: getattr(context, name) for name in settings if hasattr(context, name)}
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    for name in saved:
        setattr(context, name, settings[name])
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _cause(error: BaseException) -> BaseException:
    """The error an actor or task raised, out of Ray's wrappers (featuremap's own errors and
    OSError keep their type: one line for the user, as with the local engine)."""
    seen = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "cause", None)  # RayTaskError: what the task raised
        if isinstance(inner, BaseException):
            current = inner
            continue
        if isinstance(current, FeaturemapError) or (
                isinstance(current, OSError) and not isinstance(current, ConnectionError)
                and current.errno is not None):
            return _without_retry_note(current)
        current = current.__cause__ or current.__context__
    return error


def _without_retry_note(error: BaseException) -> BaseException:
    """Ray Data appends lines on retries to the message of the error it raises again
    ("Failed to apply UDF transform after 1/1 attempts ..."): featuremap's messages are one
    line, so the first is kept."""
    if error.args and isinstance(error.args[0], str) and RETRY_NOTE in error.args[0]:
        error.args = (error.args[0].split(RETRY_NOTE, 1)[0],) + error.args[1:]
    return error


# ------------------------------------------------------------------------------- the pipeline


def _rows(ray: Any, p: Plan, store: StoreWriter, chunks: list[tuple[int, int]], actors: int,
          progress: Progress | None) -> Iterator[dict[str, Any]]:
    """Run the pipeline; yield ``{"done", "failed", "failures"}`` per chunk as it is stored."""
    cuda = p.model.device.type == "cuda"
    plan_ref = _put_plan(ray, p)
    total = sum(stop - start for start, stop in chunks)
    ds = ray.data.from_items([{"start": start, "stop": stop} for start, stop in chunks],
                             override_num_blocks=len(chunks))
    # Reading is its own stage (tasks, not fused into the actors: the memory each holds, a
    # decoded chunk, tells them apart), so that decoding overlaps computing.
    chunk_bytes = 4 * p.batch_size * math.prod(p.input_shape)
    ds = ds.map_batches(_decode, batch_size=1, num_cpus=1, memory=2 * chunk_bytes,
                        # images and masks by absolute path: workers elsewhere start elsewhere
                        fn_kwargs={"items": p.items,
                                   "reader": p.collection.reader(preprocess=p.preprocess),
                                   "workers": p.workers})
    # Ray Data restarts a dead actor and retries its task (max_restarts and max_task_retries
    # are -1 by default for actor pools). The plan travels as a reference, put once.
    ds = ds.map_batches(_Chunks, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                        fn_constructor_kwargs={"plan": [plan_ref], "store": store,
                                               "actors": actors, "cuda": cuda},
                        num_cpus=1, num_gpus=1 if cuda else 0)
    stored = 0
    if progress is not None:
        progress(0, total)
    # block by block as each is computed (iter_rows holds one back)
    blocks = iter(ds.iter_batches(batch_size=None, prefetch_batches=0, batch_format="numpy"))
    try:
        for rows in blocks:
            for i in range(len(rows["start"])):
                stored += int(rows["stop"][i]) - int(rows["start"][i])
                if progress is not None:
                    progress(stored, total)
                yield {"done": int(rows["done"][i]), "failed": int(rows["failed"][i]),
                       "failures": {int(k): v
                                    for k, v in json.loads(rows["failures"][i]).items()}}
    finally:  # Ctrl-C, an error: stop the pipeline and its actors now, not when collected
        close = getattr(blocks, "close", None)
        if close is not None:
            close()


def _put_plan(ray: Any, p: Plan) -> Any:
    """The plan in Ray's object store, its model's weights on the CPU (each actor moves them
    to its own GPU: the driver's device numbers mean nothing on other machines)."""
    device = p.model.device
    if device.type == "cpu":
        return ray.put(p)
    p.model.module.to("cpu")
    try:
        return ray.put(p)
    finally:
        p.model.module.to(device)


def _decode(rows: dict[str, Any], *, items: list[Any], reader: Any, workers: int
            ) -> dict[str, list[Any]]:
    """Read the images of one chunk (a Ray task): the decoded batch, pickled."""
    start, stop = int(rows["start"][0]), int(rows["stop"][0])
    with batches(items[start:stop], load=reader, batch_size=stop - start,
                 workers=workers) as stream:
        batch = reindexed(next(iter(stream)), start)
    return {"start": [start], "stop": [stop],
            "batch": [pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)]}


class _Chunks:
    """A Ray actor: the model once, then one chunk per call, computed and written."""

    def __init__(self, *, plan: list[Any], store: StoreWriter, actors: int, cuda: bool
                 ) -> None:
        import ray
        import torch

        from featuremap.extraction import Extractor

        p: Plan = ray.get(plan[0])
        if cuda:
            p.model.to("cuda")  # the GPU Ray gave this actor (CUDA_VISIBLE_DEVICES)
        else:  # Ray sets one thread per CPU asked for; use this machine's share instead
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // actors))
        self.plan = p
        self.store = store  # its arrays open once, at the first chunk
        self.extractor = Extractor(p.model, p.layers, reuse_buffers=True)

    def __call__(self, rows: dict[str, Any]) -> dict[str, list[Any]]:
        start, stop = int(rows["start"][0]), int(rows["stop"][0])
        batch = pickle.loads(rows["batch"][0])
        maps, status, failed = compute_chunk(self.plan, self.extractor, batch, start, stop)
        self.store.write_chunk(start, maps, status, failed)
        return {"start": [start], "stop": [stop], "done": [int((status == DONE).sum())],
                "failed": [len(failed)],
                "failures": [json.dumps({str(k): v for k, v in failed.items()})]}


__all__ = ["run_ray"]

"""The Channels view's server side: what each channel of a layer detects, as
:func:`featuremap.atlas.channel_atlas` says, over the data the explorer was started with.

- The data (a folder of images, image/mask pairs, a list, a glob or a store) is named at start-up
  (``featuremap explore --data FOLDER``) and checked then (:func:`check_data`): a client names a
  layer and channels, never a path.
- One computation per server, on a background thread, over its own copy of the model (the other
  views keep answering while it runs: the atlas hooks the network, freezes it and renders with
  gradients, which must not meet another request's forward pass). A start while one runs is
  refused (409); the page cancels it first.
- The page polls the progress (the library's stage, done and total) and fetches the result when
  it is done: the library's ``to_dict()`` with the pictures inline as data URIs
  (:func:`featuremap.atlas.page.image_uri`, as the atlas page).
- Cancel: the next progress call raises :class:`Cancelled`, which ends the library call (within
  one batch of images or one rendering step).

Caps (:mod:`featuremap.web.bodies`): at most 64 channels, 512 rendering steps and 32 top patches
a channel per request; the data's size is the one its owner named.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi.responses import Response
from pydantic import Field

from featuremap.errors import ConfigError, FeaturemapError, printable
from featuremap.web.bodies import DEFAULT_CHANNELS, MAX_CHANNELS, ChannelsBody
from featuremap.web.wire import json_response

__all__ = ["Busy", "Cancelled", "ChannelJobs", "Data", "NoResult", "check_data",
           "parse_channels", "register", "result_of"]

STARTED_WITHOUT = ("this explorer was started without data: start it with 'featuremap explore "
                   "--data FOLDER' (a folder of images, image/mask pairs or a store) to see what "
                   "each channel of a layer detects.")


@dataclass(frozen=True)
class Data:
    """The data the Channels view reads, checked at start-up.

    Attributes:
        source: what :func:`~featuremap.atlas.channel_atlas` is given (the path as named, or a
            :class:`~featuremap.store.Store`).
        description: the source, printable.
        images: how many images (files) it lists.
        kind: ``"dataset"`` or ``"store"``.
        masks: whether it has image/mask pairs (their classes are concepts).
        layers: a store's layers stored whole (the only ones it can serve); None for a dataset
            (any layer with maps).
    """

    source: Any
    description: str
    images: int
    kind: str
    masks: bool
    layers: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "images": self.images, "kind": self.kind,
                "masks": self.masks, "layers": None if self.layers is None else list(self.layers)}


def check_data(model: Any, data: Any) -> Data:
    """``data`` opened as the atlas opens it (:func:`featuremap.atlas.sources.open_source`),
    before the server starts.

    Raises:
        ConfigError: a missing path, no images, a store another model made, an incomplete store,
            a store whose layers are all pooled.
    """
    from featuremap.atlas.sources import open_source
    from featuremap.datasets import IMAGE_SUFFIXES
    from featuremap.model import as_model
    from featuremap.tasks.fromstore import as_store

    m = as_model(model)
    if isinstance(data, (str, os.PathLike)) and not str(data).strip():
        raise ConfigError("--data is empty: name a folder of images or a store.")
    store = as_store(data)
    if store is not None:
        whole = tuple(k for k in store.layers if store.header.pool.get(k, "none") == "none")
        if not whole:
            raise ConfigError(f"the store '{printable(os.fspath(store.path))}' holds every layer "
                              "pooled, but the Channels view needs every position of the maps: "
                              "extract it with --pool none.")
        source = open_source(m, store, layers=[whole[0]])
        return Data(store, source.description, len(source), "store", source.has_masks, whole)
    first = next((n for n, _ in m.module.named_modules() if n), None)
    if first is None:
        raise ConfigError(f"{printable(m.name)} has no layers to read channels of.")
    source = open_source(m, data, layers=[first])
    if not any(Path(p).suffix.lower() in IMAGE_SUFFIXES for p in source.paths):
        try:  # files without an image suffix may still be images
            source.image(0)
        except (FeaturemapError, OSError, ValueError) as err:
            n = len(source)
            why = printable(str(err))[:200].rstrip(". ")
            raise ConfigError(f"'{source.description}' holds no image: none of its {n:,} "
                              f"file{'s' if n != 1 else ''} is named as one, and the first "
                              f"({source.names[0]}) is not one: {why}.") from None
    return Data(data, source.description, len(source), "dataset", source.has_masks)


def parse_channels(text: str | None, depth: int, layer: str) -> tuple[int, ...]:
    """``"0-15,32"`` as channel numbers of a layer of ``depth`` channels (None or blank: the
    first 16), at most 64 (:mod:`featuremap.web.bodies`), duplicates dropped: the library's
    :func:`featuremap.atlas.channels.parse_channels` with the page's default and cap.

    Raises:
        ConfigError: a part that is not a number or a range, a channel outside the layer, too
            many channels.
    """
    from featuremap.atlas.channels import parse_channels as parse
    from featuremap.atlas.patches import check_channels

    if text is None or not text.strip():
        return tuple(range(min(DEFAULT_CHANNELS, depth)))
    chosen = parse(text, limit=MAX_CHANNELS)
    if chosen is None:  # 'all'
        if depth > MAX_CHANNELS:
            raise ConfigError(f"channels: '{printable(layer)}' has {depth} channels; at most "
                              f"{MAX_CHANNELS} at once: name some, such as 0-{MAX_CHANNELS - 1}.")
        chosen = list(range(depth))
    return check_channels(chosen, depth, layer)  # distinct, in range, not empty


class Cancelled(Exception):
    """Raised by the progress callback of a cancelled computation (it ends the library call)."""


@dataclass
class Job:
    """One computation: its settings, where it stands, and its result."""

    id: str
    settings: dict[str, Any]
    state: str = "running"  # running, done, failed, cancelled
    stage: str | None = None
    done: int = 0
    total: int = 0
    error: str | None = None
    began: float = field(default_factory=time.monotonic)
    ended: float | None = None
    result: dict[str, Any] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def status(self) -> dict[str, Any]:
        stages = ["maps", "patches"] + (["visualisation"] if self.settings["visualise"] else [])
        return {"job": self.id, "state": self.state, "stage": self.stage, "done": self.done,
                "total": self.total, "stages": stages, "settings": self.settings,
                "error": self.error, "cancelling": self.stop.is_set() and self.state == "running",
                "seconds": round((self.ended or time.monotonic()) - self.began, 3)}


class ChannelJobs:
    """The server's one channel computation at a time (see the module docstring)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.job: Job | None = None
        self._lock = threading.Lock()  # the job's fields
        self._starting = threading.Lock()  # one start at a time
        self._copies: dict[tuple[str, str], Any] = {}
        self._count = 0

    def _copy(self, model: Any) -> Any:
        """The job's own copy of ``model`` (made once per model; the last one kept)."""
        key = (model.name, model.weights)
        if key not in self._copies:
            self._copies.clear()
            self._copies[key] = copy.deepcopy(model)
        return self._copies[key]

    def status(self) -> dict[str, Any]:
        with self._lock:
            if self.job is None:
                return {"job": None, "state": "idle", "stage": None, "done": 0, "total": 0,
                        "stages": [], "settings": None, "error": None, "cancelling": False,
                        "seconds": 0.0}
            return self.job.status()

    def start(self, *, model: str | None, layer: str, channels: str | None, k: int,
              visualise: bool, steps: int) -> dict[str, Any]:
        """Check the settings and start the computation; its status.

        Raises:
            ConfigError: no data, bad settings (an unknown layer as UnknownNameError).
            Busy: a computation is running.
        """
        data = self.session.data
        if data is None:
            raise ConfigError(STARTED_WITHOUT)
        with self._starting:  # the checks may load a model: progress polls go on meanwhile
            self._refuse_if_running()
            served = self.session.get_model(model)
            name = served.one_layer(layer)
            if data.layers is not None and name not in data.layers:
                from featuremap.errors import unknown_name

                raise unknown_name("layer", printable(name), data.layers,
                                   hint=f"The store '{data.description}' holds these layers "
                                   "whole: " + ", ".join(data.layers[:12]) + ".")
            m = self._copy(served)
            chosen = parse_channels(channels, m.depth(name), name)
            settings = {"model": m.name, "layer": name, "channels": list(chosen), "k": k,
                        "visualise": visualise, "steps": steps}
            with self._lock:
                self._count += 1
                job = Job(str(self._count), settings)
                job.thread = threading.Thread(target=self._run, args=(job, m, data),
                                              name="featuremap-channels", daemon=True)
                self.job = job
            job.thread.start()
            return job.status()

    def _refuse_if_running(self) -> None:
        with self._lock:
            job = self.job
        if job is not None and job.state == "running":
            raise Busy(f"a channel computation is running (job {job.id}, "
                       f"{job.settings['layer']}): cancel it first.")

    def _run(self, job: Job, m: Any, data: Data) -> None:
        from featuremap.atlas import channel_atlas

        def progress(stage: str, done: int, total: int) -> None:
            if job.stop.is_set():
                raise Cancelled
            with self._lock:
                job.stage, job.done, job.total = stage, int(done), int(total)

        s = job.settings
        try:
            atlas = channel_atlas(m, data.source, layer=s["layer"], channels=s["channels"],
                                  k=s["k"], visualize=s["visualise"], steps=s["steps"],
                                  progress=progress)
            if job.stop.is_set():
                raise Cancelled
            result = result_of(atlas, job.id)
            outcome = {"state": "done", "result": result}
        except Cancelled:
            outcome = {"state": "cancelled"}
        except FeaturemapError as err:
            outcome = {"state": "failed", "error": " ".join(printable(str(err)).split())}
        except Exception as err:  # noqa: BLE001 - reported to the page as a one-line error
            outcome = {"state": "failed",
                       "error": f"internal error: {type(err).__name__}: {printable(str(err))}"}
        with self._lock:
            for key, value in outcome.items():
                setattr(job, key, value)
            job.ended = time.monotonic()

    def result(self, job_id: str | None = None) -> dict[str, Any]:
        """The last computation's result.

        Raises:
            NoResult: none computed, another job's asked for, still running, failed, cancelled.
        """
        with self._lock:
            job = self.job
        if job is None:
            raise NoResult("no channels computed yet: choose a layer and press Compute.")
        if job_id is not None and job_id != job.id:
            raise NoResult(f"job {printable(job_id)[:20]} is not the last computation (job "
                           f"{job.id} is).")
        if job.state == "running":
            raise Busy(f"job {job.id} is still computing ({job.stage or 'starting'}).")
        if job.result is None:
            raise NoResult(f"job {job.id} {job.state}" + (f": {job.error}" if job.error else "")
                           + ".")
        return job.result

    def cancel(self, wait: float = 3.0) -> dict[str, Any]:
        """Ask the running computation to stop; wait up to ``wait`` seconds for it; its status."""
        with self._lock:
            job = self.job
        if job is not None and job.state == "running":
            job.stop.set()
            if job.thread is not None and wait > 0:
                job.thread.join(wait)
        return self.status()


class Busy(ConfigError):
    """A computation is running (a 409)."""


class NoResult(ConfigError):
    """No result to send (a 404)."""


def result_of(atlas: Any, job_id: str) -> dict[str, Any]:
    """What the page receives: the atlas's ``to_dict()`` and its pictures as data URIs."""
    from featuremap.atlas.concepts import PROTOTYPES
    from featuremap.atlas.page import image_uri

    vis = atlas.visualization
    pictures = [{"channel": c,
                 "rendered": None if vis is None else image_uri(vis.images[i], largest=128),
                 "patches": [image_uri(p.crop) for p in atlas.patches.patches[i]]}
                for i, c in enumerate(atlas.channels)]
    info = atlas.to_dict()
    swatches = {c["name"]: list(PROTOTYPES[c["name"]]) for c in info["concepts"]
                if c["category"] == "colour" and c["name"] in PROTOTYPES}
    return {"job": job_id, "atlas": info, "pictures": pictures, "swatches": swatches}



def register(app: Any, session: Any) -> ChannelJobs:
    """Add the Channels view's routes to ``app``; the computations' holder (also
    ``session.channel_jobs``)."""
    jobs = ChannelJobs(session)
    session.channel_jobs = jobs

    @app.post("/api/channels", status_code=202)
    def channels_start(body: ChannelsBody) -> Response:
        status = jobs.start(model=body.model, layer=body.layer, channels=body.channels,
                            k=body.k, visualise=body.visualise, steps=body.steps)
        return json_response(status, status=202)

    @app.get("/api/channels/progress")
    def channels_progress() -> Response:
        return json_response(jobs.status())

    @app.get("/api/channels/result")
    def channels_result(job: Annotated[str, Field(max_length=20)] | None = None) -> Response:
        return json_response(jobs.result(job))

    @app.post("/api/channels/cancel")
    def channels_cancel() -> Response:
        return json_response(jobs.cancel())

    return jobs

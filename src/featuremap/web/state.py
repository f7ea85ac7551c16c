"""What the explorer's server keeps between requests: models, images, forward passes.

- Models come only from the server's own list (the model it was started with, the bundled one,
  torchvision's names); a client names one, never a path. A few are kept loaded at once.
- Images are uploaded bytes (capped, the content sniffed by the decoder among the common raster
  formats, never trusted by extension), samples or generated scenes, kept in memory under a
  server-made id (a client string never reaches the file system), within a count and a byte
  budget.
- Forward passes are cached per (model, image, preprocessing): the first request on an image
  captures every layer once, later requests (switching layers, channels) read the cache, which
  is bounded by a count and a byte budget (the newest pass is always kept).
- Superseded requests are dropped: a client sends a channel and a sequence number with requests
  that follow a slider; one waiting for the model while a newer one of the same channel arrived
  is answered "superseded" without computing.
"""

from __future__ import annotations

import collections
import hashlib
import io
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featuremap.errors import ConfigError, ImageError, printable

__all__ = ["UPLOAD_FORMATS", "Image", "Limits", "NoSuchImage", "Session", "Superseded"]

UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
"""What an upload may be, sniffed from its bytes (never from its name): the decoders of other
formats (PostScript through Ghostscript, and many rarer ones) are not offered to the network."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    upload_bytes: int = 20 * 2**20
    upload_pixels: int = 25_000_000
    images: int = 32  # kept in memory at once (least recently used dropped)
    image_bytes: int = 512 * 2**20  # their pixels together
    passes: int = 4  # forward passes cached
    pass_bytes: int = 1024 * 2**20  # their maps together (the newest pass is always kept)
    models: int = 3  # models loaded at once besides the one the server started with
    body_bytes: int = 2**20  # a JSON request body


class NoSuchImage(ConfigError):
    """An image id this server does not hold (a 404)."""


class Superseded(Exception):
    """A newer request of the same channel arrived while this one waited."""


@dataclass
class Image:
    """One image the server holds: ``pixels`` ``(H, W, 3)`` uint8 as decoded (for display) and
    the source handed to the library (the same pixels; or a sample's name)."""

    id: str
    name: str
    pixels: np.ndarray
    source: Any
    truth: np.ndarray | None = None  # the label mask of a generated scene
    truth_names: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        h, w = self.pixels.shape[:2]
        return {"id": self.id, "name": printable(self.name), "width": int(w), "height": int(h),
                "has_truth": self.truth is not None}


@dataclass
class Session:
    """The server's state; thread-safe."""

    model: Any  # the model the server was started with (a featuremap Model)
    limits: Limits = field(default_factory=Limits)
    choices: tuple[str, ...] = ()
    _models: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    _images: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    _passes: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    _overviews: collections.OrderedDict = field(default_factory=collections.OrderedDict)
    _latest: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one computation at a time
    _state: threading.Lock = field(default_factory=threading.Lock)
    _loading: threading.Lock = field(default_factory=threading.Lock)  # one model load at a time
    computations: int = 0  # how many requests reached the model (for tests and benchmarks)
    start_image: str | None = None  # the id of the image the server was started with
    data: Any = None  # the Channels view's data, checked (featuremap.web.channels.Data)
    channel_jobs: Any = None  # its computations (featuremap.web.channels.ChannelJobs)

    def __post_init__(self) -> None:
        self._models[self.model.name] = self.model
        if not self.choices:
            self.choices = tuple(dict.fromkeys([self.model.name, "shapes"]))

    # ---------------------------------------------------------------------------- models
    def get_model(self, name: str | None):
        """A model from the server's list (loaded once), by name."""
        from featuremap.zoo import load_model

        if name is None or name == self.model.name:
            return self.model
        if name not in self.choices:
            from featuremap.errors import unknown_name

            raise unknown_name("model", printable(name)[:80], self.choices,
                               hint="This explorer serves: " + ", ".join(self.choices) + ".")
        with self._loading:
            with self._state:
                found = self._models.get(name)
                if found is not None:
                    self._models.move_to_end(name)
                    return found
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded = load_model(name, weights="DEFAULT" if name == "shapes" else "random",
                                    device=self.model.device)
            with self._state:
                self._models[name] = loaded
                others = [k for k in self._models if k != self.model.name]
                for old in others[:max(0, len(others) - self.limits.models)]:
                    del self._models[old]
                    for key in [k for k in self._passes if k[0] == old]:
                        del self._passes[key]
            return loaded

    # ---------------------------------------------------------------------------- images
    def keep(self, image: Image) -> Image:
        """Hold ``image`` (the least recently used ones beyond the limits are dropped)."""
        with self._state:
            self._images[image.id] = image
            self._images.move_to_end(image.id)
            while len(self._images) > 1 and (
                    len(self._images) > self.limits.images
                    or sum(i.pixels.nbytes for i in self._images.values())
                    > self.limits.image_bytes):
                self._images.popitem(last=False)
        return image

    def add_upload(self, data: bytes, name: str = "upload") -> Image:
        """Decode uploaded bytes (any format the decoder recognises from the content itself).

        Raises:
            ImageError: too many bytes or pixels, or not an image.
        """
        from featuremap.images import load_image, to_uint8_hwc

        if len(data) > self.limits.upload_bytes:
            raise ImageError(f"the upload is {len(data):,} bytes, over the limit of "
                             f"{self.limits.upload_bytes:,} bytes; send a smaller image.")
        pixels = to_uint8_hwc(load_image(bytes(data), max_pixels=self.limits.upload_pixels,
                                         formats=UPLOAD_FORMATS))
        digest = hashlib.sha256(data).hexdigest()[:16]
        return self.keep(Image(digest, name[:200] or "upload", pixels, pixels))

    def add_sample(self, name: str) -> Image:
        from featuremap.images import load_image, to_uint8_hwc
        from featuremap.samples import list_samples

        if name not in list_samples():
            from featuremap.errors import unknown_name

            raise unknown_name("sample", printable(name), list_samples())
        pixels = to_uint8_hwc(load_image(f"sample:{name}"))
        return self.keep(Image(f"sample-{name}", f"sample:{name}", pixels, pixels))

    def add_scene(self, seed: int) -> Image:
        """A generated scene of shapes, with its true label mask."""
        from featuremap.bundled.scenes import CLASSES, make_scene
        from featuremap.images import to_uint8_hwc

        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise ConfigError(f"seed must be an integer from 0 to 2**31 - 1, got {seed!r}.")
        scene = make_scene(seed)
        pixels = to_uint8_hwc(scene.image)
        return self.keep(Image(f"scene-{seed}", f"scene {seed}", pixels, pixels,
                                scene.mask.astype(np.int64), list(CLASSES)))

    def image(self, image_id: str) -> Image:
        with self._state:
            found = self._images.get(image_id)
            if found is not None:
                self._images.move_to_end(image_id)
        if found is None:
            raise NoSuchImage(f"no image '{printable(image_id)[:40]}' on this server (it may "
                              "have been dropped: upload it again).")
        return found

    def png(self, image_id: str) -> bytes:
        from PIL import Image as PILImage

        buf = io.BytesIO()
        PILImage.fromarray(self.image(image_id).pixels).save(buf, format="PNG")
        return buf.getvalue()

    # ---------------------------------------------------------------------------- passes
    def maps(self, model, image: Image):
        """Every layer's output on ``image`` (one pass, cached per model and image)."""
        from featuremap.extraction import extract

        key = (model.name, model.weights, image.id, repr(model.preprocess))
        with self._state:
            found = self._passes.get(key)
            if found is not None:
                self._passes.move_to_end(key)
                return found
        names = [n for n, _ in model.module.named_modules() if n]
        fm = extract(model, image.source, layers=names, early_stop=False, allow_missing=True)
        with self._state:
            self._passes[key] = fm
            while len(self._passes) > 1 and (
                    len(self._passes) > self.limits.passes
                    or sum(_nbytes(f) for f in self._passes.values()) > self.limits.pass_bytes):
                self._passes.popitem(last=False)
        return fm

    def overview_names(self, model, input_size: tuple[int, int]) -> list[str]:
        """The layers an overview shows (one shape pass per model and input size, kept).
        Runs the model: call it under :attr:`lock` (within :meth:`compute`)."""
        from featuremap.summary import overview_layers

        key = (model.name, model.weights, tuple(input_size))
        with self._state:
            found = self._overviews.get(key)
        if found is None:
            found = overview_layers(model.module, input_size=tuple(input_size),
                                    in_channels=model.preprocess.channels)
            with self._state:
                self._overviews[key] = found
                while len(self._overviews) > 64:
                    self._overviews.popitem(last=False)
        return list(found)

    @property
    def cached_passes(self) -> int:
        """How many forward passes the cache holds."""
        with self._state:
            return len(self._passes)

    # ----------------------------------------------------------------------- supersession
    def ticket(self, client: str | None, channel: str | None, seq: int | None) -> None:
        """Record a request's sequence number in its channel (None: not a slider request)."""
        if client is None or channel is None or seq is None:
            return
        with self._state:
            key = (client[:64], channel[:32])
            self._latest[key] = max(self._latest.get(key, -1), seq)
            if len(self._latest) > 10_000:
                self._latest.clear()

    def check(self, client: str | None, channel: str | None, seq: int | None) -> None:
        """Raise :class:`Superseded` when a newer request of the same channel has arrived."""
        if client is None or channel is None or seq is None:
            return
        with self._state:
            latest = self._latest.get((client[:64], channel[:32]), seq)
        if seq < latest:
            raise Superseded

    def compute(self, client: str | None, channel: str | None, seq: int | None, work):
        """Run ``work()`` with the model to itself, unless it was superseded meanwhile."""
        self.ticket(client, channel, seq)
        with self.lock:
            self.check(client, channel, seq)
            self.computations += 1
            return work()


def _nbytes(fm) -> int:
    return sum(t.numel() * t.element_size() for t in fm.maps.values())


def new_client_id() -> str:
    return secrets.token_hex(8)

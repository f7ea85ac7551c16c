"""What a store holds and how it was made: the header, the image list, and per-chunk records.

A store is a folder:

- ``zarr.json``: a Zarr v3 group; its attribute ``featuremap`` repeats the header (so any Zarr
  reader sees how the maps were made).
- ``maps/<layer>``: one array per layer, ``(N, C, H, W)`` or ``(N, C)`` when pooled, chunked
  by ``chunk`` images (one chunk per write batch, so writers never share a chunk).
- ``images`` (strings: the display names), ``labels`` (int64, -1 where none), ``status``
  (int8: 0 pending, 1 done, 2 failed): arrays with the same chunks.
- ``manifest.json``: the header, and the image list with each image's status (and the reason
  of each failure): written whole (a temporary file renamed) when a run starts and ends.
- ``records/<start>.json``: one per finished chunk, written (renamed into place) after the
  chunk's arrays: a chunk counts as done when, and only when, its record exists. A run that
  stops anywhere leaves every chunk either recorded and whole, or unrecorded and redone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featuremap.errors import ConfigError, printable

FORMAT = "featuremap-store/1"
MANIFEST = "manifest.json"
RECORDS = "records"
PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}
# the header fields a resumed run must share with the store (version and timing may differ)
IDENTITY = ("model", "weights_sha256", "preprocess", "layers", "pool", "dtype", "chunk",
            "compression", "shapes")


@dataclass
class Header:
    """How a store's maps are made: two runs may write one store only if these agree.

    Attributes:
        model: the model's name; weights: what was loaded (a description);
        weights_sha256: a digest of every parameter and buffer (:func:`weights_digest`).
        preprocess: the preprocessing applied to each image (``Preprocess.to_dict()``).
        layers: the layers stored, in order; shapes: each layer's stored shape per image.
        pool, dtype, compression: how values are reduced, typed and compressed.
        chunk: images per chunk (and per write batch).
        source, kind, classes: what was read; n_images: how many images the list holds.
        featuremap_version: the version that created the store.
    """

    model: str
    weights: str
    weights_sha256: str
    preprocess: dict[str, Any]
    layers: list[str]
    shapes: dict[str, list[int]]
    pool: dict[str, str]
    dtype: str
    compression: str
    chunk: int
    source: str
    kind: str
    classes: list[str] | None
    n_images: int
    featuremap_version: str
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Header:
        """The header a manifest holds; keys it does not know are ignored (such as ``extra``,
        always empty, in the manifests of stores written by earlier versions)."""
        names = {f for f in cls.__dataclass_fields__}
        missing = sorted(names - set(data) - {"format"})
        if missing:
            raise ConfigError(f"the store's manifest lacks {', '.join(missing)}: not a store "
                              "written by featuremap, or damaged.")
        return cls(**{k: v for k, v in data.items() if k in names})


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer (names, dtypes, shapes and bytes, sorted by name):
    two modules with the same digest compute the same maps."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes()
                          if t.dtype != torch.bool else t.numpy().tobytes())
    return digest.hexdigest()


def differences(stored: Header, wanted: Header) -> list[str]:
    """What differs between a store's header and a new run's, one phrase per field."""
    out = []
    for name in IDENTITY:
        a, b = getattr(stored, name), getattr(wanted, name)
        if a == b or (name == "shapes" and (stored.layers, stored.pool) != (wanted.layers,
                                                                             wanted.pool)):
            continue
        if name == "weights_sha256":
            out.append(f"the weights differ (store: {printable(stored.weights)}, "
                       f"sha256 {a[:12]}; now: {printable(wanted.weights)}, sha256 {b[:12]})")
        elif name == "shapes":
            out.append(f"the stored shapes differ (store: {_short(a)}; now: {_short(b)})")
        else:
            out.append(f"{name} differs (store: {_short(a)}; now: {_short(b)})")
    return out


def image_differences(stored: Sequence[str], wanted: Sequence[str]) -> str | None:
    """A phrase naming how two image lists differ, or None when they are the same."""
    if list(stored) == list(wanted):
        return None
    first = next((i for i, (a, b) in enumerate(zip(stored, wanted)) if a != b),
                 min(len(stored), len(wanted)))
    where = (f"first difference at image {first}: store "
             f"'{printable(stored[first]) if first < len(stored) else '(none)'}', now "
             f"'{printable(wanted[first]) if first < len(wanted) else '(none)'}'")
    return (f"the source lists other images (store: {len(stored)}, now: {len(wanted)}; "
            f"{where})")


def _short(value: Any, limit: int = 120) -> str:
    text = printable(json.dumps(value, sort_keys=True) if not isinstance(value, str) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------- files


def write_json(path: Path, data: Any, *, fsync: bool = True) -> None:
    """Write ``data`` as JSON whole or not at all (a temporary file renamed onto ``path``)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(data, indent=1, sort_keys=False, ensure_ascii=True) + "\n"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file of the store; a missing or damaged file is a clear error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"'{printable(path)}' is missing: not a featuremap store, or "
                          f"damaged ({what}).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read '{printable(path)}' ({what}): "
                          f"{printable(error)}") from None


def record_name(start: int) -> str:
    """The record file of the chunk that starts at image ``start``."""
    return f"{start:012d}.json"


def read_records(root: Path) -> dict[int, dict[str, str]]:
    """``{chunk start: {image index: failure reason}}`` of every finished chunk.

    A record that cannot be parsed (never the case for a renamed file, but a disk can lie)
    counts as not finished: its chunk is redone.
    """
    folder = root / RECORDS
    out: dict[int, dict[str, str]] = {}
    if not folder.is_dir():
        return out
    for entry in os.scandir(folder):
        if not entry.name.endswith(".json") or entry.name.startswith("."):
            continue
        try:
            data = json.loads(Path(entry.path).read_text(encoding="utf-8"))
            out[int(data["start"])] = {str(k): str(v) for k, v in data["failed"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def write_record(root: Path, start: int, stop: int, failed: Mapping[int, str]) -> None:
    """Mark the chunk ``start .. stop - 1`` as finished, with the failures in it."""
    write_json(root / RECORDS / record_name(start),
               {"start": start, "stop": stop, "failed": {str(k): v for k, v in failed.items()}},
               fsync=False)


def image_entries(items: Iterable[Any], status: Sequence[int], failed: Mapping[int, str]
                  ) -> list[dict[str, Any]]:
    """The manifest's image list: name, path, label, status and, for a failure, its reason."""
    out = []
    for index, item in enumerate(items):
        entry = {"name": item.name, "path": os.fspath(item.path), "label": item.label,
                 "status": STATUS_NAMES[int(status[index])]}
        if item.mask is not None:
            entry["mask"] = os.fspath(item.mask)
        if index in failed:
            entry["reason"] = failed[index]
        out.append(entry)
    return out

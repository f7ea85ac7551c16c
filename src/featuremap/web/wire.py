"""How the explorer's results travel: JSON without NaN, and maps as one binary message."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response

from featuremap.errors import FeaturemapError, ImageError, printable
from featuremap.outputs import finite
from featuremap.quantize import pack

__all__ = ["BINARY", "binary", "error", "finite", "json_response", "one", "padding", "status_of"]

BINARY = "application/octet-stream"
LONGEST = 2000  # characters of an error line


def status_of(err: FeaturemapError) -> int:
    """The HTTP status of a library error: 404 for an unknown image or no channel result, 409
    while a channel computation runs, 413 for an image over the limits, 415 for bytes that are
    no image, 400 for everything else the library refuses."""
    from featuremap.web.channels import Busy, NoResult
    from featuremap.web.state import NoSuchImage

    if isinstance(err, (NoSuchImage, NoResult)):
        return 404
    if isinstance(err, Busy):
        return 409
    if isinstance(err, ImageError):
        text = str(err)
        if "is not an image" in text:
            return 415
        if "over the limit" in text or "too large to load" in text:
            return 413
    return 400


def one(value: list[int]) -> int | tuple[int, int]:
    return value[0] if len(value) == 1 else (value[0], value[1])


def padding(value: Any) -> Any:
    return value if isinstance(value, str) else one(value)


def binary(header: dict[str, Any], *arrays: np.ndarray) -> Response:
    return Response(pack(finite(header), *arrays), media_type=BINARY)


def error(status: int, message: str) -> JSONResponse:
    """``{"error": "one line"}`` (control characters escaped, at most 2,000 characters)."""
    line = " ".join(printable(message).split())
    if len(line) > LONGEST:
        line = line[:LONGEST - 3] + "..."
    return JSONResponse({"error": line}, status_code=status)


def json_response(data: Any, status: int = 200) -> Response:
    """``data`` as JSON, NaN and infinity as ``null``."""
    return Response(json.dumps(finite(data), allow_nan=False), status_code=status,
                    media_type="application/json")

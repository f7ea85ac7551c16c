"""How the explorer's results travel: JSON without NaN, and maps as one binary message."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response

from featuremap.errors import printable
from featuremap.quantize import pack

__all__ = ["BINARY", "binary", "error", "finite", "json_response", "one", "padding"]

BINARY = "application/octet-stream"


def one(value: list[int]) -> int | tuple[int, int]:
    return value[0] if len(value) == 1 else (value[0], value[1])


def padding(value: Any) -> Any:
    return value if isinstance(value, str) else one(value)


def finite(data: Any) -> Any:
    """JSON without NaN or infinity (``null`` instead)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def binary(header: dict[str, Any], *arrays: np.ndarray) -> Response:
    return Response(pack(finite(header), *arrays), media_type=BINARY)


def error(status: int, message: str) -> JSONResponse:
    line = " ".join(printable(message).split())
    return JSONResponse({"error": line}, status_code=status)


def json_response(data: Any) -> Response:
    """``data`` as JSON, NaN and infinity as ``null``."""
    return Response(json.dumps(finite(data), allow_nan=False), media_type="application/json")

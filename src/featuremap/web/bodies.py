"""The bodies the explorer's API accepts: strict types and bounds, unknown fields refused."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ChannelsBody",
    "ClassifyBody",
    "FieldBody",
    "Follow",
    "LabBody",
    "MapsBody",
    "OverviewBody",
    "SampleBody",
    "SceneBody",
    "SegmentBody",
    "WhatIfBody",
]

Small = Annotated[int, Field(ge=0, le=10_000)]
Pair = Annotated[list[Annotated[int, Field(ge=0, le=1024)]], Field(min_length=1, max_length=2)]
Name = Annotated[str, Field(min_length=1, max_length=300)]
BINARY = "application/octet-stream"

# The Channels view's caps: one request cannot tie up the machine for hours.
MAX_CHANNELS = 64  # channels per computation
MAX_STEPS = 512  # rendering steps
MAX_K = 32  # top patches per channel
DEFAULT_CHANNELS = 16  # without a channels field: the first 16
DEFAULT_STEPS = 128
DEFAULT_K = 9


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Follow(Body):
    """Fields every slider request may carry to drop superseded work."""

    channel: Annotated[str, Field(max_length=32)] | None = None
    seq: Annotated[int, Field(ge=0, le=2**53)] | None = None


class LabBody(Follow):
    image: Name
    filters: Annotated[str, Field(max_length=200)] | None = "sobel"
    model: Name | None = None
    layer: Name | None = None
    stride: Pair | None = None  # None: 1 for a filter bank, the layer's own for a layer
    padding: Pair | Literal["same", "valid"] | None = None
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"] | None = None
    dilation: Pair | None = None
    depth: Annotated[int, Field(ge=1, le=256)] | None = None
    channels: Literal["luminance", "per-channel"] = "luminance"
    short_side: Annotated[int, Field(ge=8, le=1024)] = 224
    at: Annotated[list[Small], Field(min_length=3, max_length=3)] | None = None


class MapsBody(Follow):
    image: Name
    model: Name | None = None
    layer: Name
    top: Annotated[int, Field(ge=0, le=1024)] = 16
    channels: Annotated[list[Annotated[int, Field(ge=0, le=100_000)]],
                        Field(max_length=1024)] | None = None


class OverviewBody(Follow):
    image: Name
    model: Name | None = None
    per_layer: Annotated[int, Field(ge=1, le=32)] = 8


class FieldBody(Follow):
    image: Name
    model: Name | None = None
    layer: Name
    at: Annotated[list[Small], Field(min_length=2, max_length=3)]
    map_channel: Annotated[int, Field(ge=0, le=100_000)] | None = None  # None: all, summed


class WhatIfBody(Follow):
    image: Name
    model: Name | None = None
    layer: Name
    stride: Pair | None = None
    padding: Pair | Literal["same", "valid"] | None = None
    dilation: Pair | None = None
    out_channels: Annotated[int, Field(ge=1, le=4096)] | None = None
    top: Annotated[int, Field(ge=1, le=64)] = 16


class ClassifyBody(Follow):
    image: Name
    model: Name | None = None
    top: Annotated[int, Field(ge=1, le=100)] = 5
    cam_layer: Name | None = None
    method: Literal["grad-cam", "cam"] = "grad-cam"


class SegmentBody(Follow):
    image: Name
    model: Name | None = None
    k: Annotated[int, Field(ge=2, le=16)] = 4
    layers: Annotated[list[Name], Field(min_length=1, max_length=8)] | None = None
    own: bool = False


class SampleBody(Body):
    name: Name


class SceneBody(Body):
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 7


class ChannelsBody(Body):
    """A channel computation (the Channels view): channels as text, e.g. ``"0-15,32"``."""

    model: Name | None = None
    layer: Name
    channels: Annotated[str, Field(max_length=300)] | None = None  # None: the first 16
    k: Annotated[int, Field(ge=1, le=MAX_K)] = DEFAULT_K
    visualise: bool = True
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] = DEFAULT_STEPS

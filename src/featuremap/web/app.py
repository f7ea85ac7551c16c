"""The explorer's HTTP API: each handler checks its input, makes one library call, and sends
the result's ``to_dict()`` (JSON) or its maps as bytes (:mod:`featuremap.quantize`'s messages).

Errors come back as ``{"error": "one line"}`` with a 4xx status: 400 for what the library
refuses (its one-line message), 403 for a request from another site (when the server listens on
this machine only), 404 for an unknown route or image, 409 for a request superseded by a newer
one of the same slider, 413 for an upload or a request body too large (refused before it is read
to the end), 415 for bytes that are not an image, 422 for a malformed request; an unexpected
failure is a 500 with the same one-line JSON. The Channels view's routes answer 409 to a start
while a computation runs and 404 for a result not (yet) computed. Every route and its body are
listed in :data:`ROUTES`.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from featuremap.errors import FeaturemapError, printable
from featuremap.web.bodies import SampleBody, SceneBody
from featuremap.web.guard import Guard
from featuremap.web.state import Limits, Session, Superseded
from featuremap.web.wire import error, finite, status_of

__all__ = ["ROUTES", "create_app"]

ROUTES = {
    "GET /api/info": "models, samples, filters, limits, the start image, how many requests "
                     "reached the model",
    "POST /api/images": "raw image bytes -> {id, name, width, height}",
    "POST /api/images/sample": "SampleBody -> image",
    "POST /api/images/scene": "SceneBody -> image with a true label mask",
    "GET /api/images/{id}.png": "the image as decoded",
    "GET /api/input/{id}.png": "?model= -> the image as the model sees it (resized, cropped)",
    "GET /api/layers": "?model= -> the layer table",
    "POST /api/lab": "LabBody -> maps (binary); with 'at': the arithmetic of one value (JSON)",
    "POST /api/maps": "MapsBody -> one layer's maps (binary)",
    "POST /api/overview": "OverviewBody -> the stages' strongest maps (binary)",
    "POST /api/field": "FieldBody -> receptive field (binary: erf) or, with 3 numbers in 'at' "
                       "on a convolution, its arithmetic (JSON)",
    "POST /api/whatif": "WhatIfBody -> shapes, first break, new maps (binary)",
    "POST /api/classify": "ClassifyBody -> top-k and a CAM (JSON)",
    "POST /api/segment": "SegmentBody -> labels (binary)",
    "POST /api/channels": "ChannelsBody -> starts the channel atlas of a layer over the data "
                          "named at start-up (202, its progress); 409 while one runs",
    "GET /api/channels/progress": "the computation's state, stage, done and total",
    "GET /api/channels/result": "?job= -> the atlas's to_dict() and its pictures as data URIs",
    "POST /api/channels/cancel": "stops the running computation -> its progress",
}


def create_app(session: Session, *, hosts: tuple[str, ...] | None = None) -> FastAPI:
    """The FastAPI application serving the page and the API over ``session``.

    Args:
        session: the models, images and cached passes.
        hosts: the host names the page may be reached by (``("127.0.0.1", "localhost",
            "::1")`` for a server on this machine): other ``Host`` headers (DNS rebinding) and
            requests that another site's page sends (their ``Origin``) are refused with 403.
            None: any.
    """
    app = FastAPI(title="featuremap explorer", docs_url=None, redoc_url=None,
                  openapi_url=None)
    static = resources.files("featuremap.web") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    app.add_middleware(Guard, body_bytes=session.limits.body_bytes, hosts=hosts,
                       streamed=("/api/images",))

    @app.exception_handler(FeaturemapError)
    async def libraryerror(_request: Request, err: FeaturemapError) -> JSONResponse:
        return error(status_of(err), str(err))

    @app.exception_handler(Superseded)
    async def superseded(_request: Request, _err: Superseded) -> JSONResponse:
        return error(409, "superseded by a newer request")

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(422, f"bad request: {where or 'body'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def httperror(_request: Request, err: HTTPException) -> JSONResponse:
        return error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, err: Exception) -> JSONResponse:
        return error(500, f"internal error: {type(err).__name__}: {err}")

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return (static / "index.html").read_text(encoding="utf-8")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        from featuremap import __version__
        from featuremap.filters import list_filters
        from featuremap.samples import list_samples
        from featuremap.web import bodies

        m = session.model
        limits: Limits = session.limits
        return {"version": __version__, "model": m.name, "weights": printable(m.weights),
                "models": list(session.choices), "samples": list_samples(),
                "filters": list_filters(), "image": session.start_image,
                "limits": {"upload_bytes": limits.upload_bytes,
                           "upload_pixels": limits.upload_pixels,
                           "channels": bodies.MAX_CHANNELS, "steps": bodies.MAX_STEPS,
                           "k": bodies.MAX_K},
                "data": None if session.data is None else session.data.to_dict(),
                "computations": session.computations}

    @app.post("/api/images")
    async def upload(request: Request) -> dict[str, Any]:
        data = bytearray()
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > session.limits.upload_bytes:
            return error(413, f"the upload is {int(declared):,} bytes, over the limit of "
                          f"{session.limits.upload_bytes:,} bytes; send a smaller image.")
        try:
            async for chunk in request.stream():
                data += chunk
                if len(data) > session.limits.upload_bytes:
                    return error(413, f"the upload is over the limit of "
                                  f"{session.limits.upload_bytes:,} bytes; send a smaller image.")
        except ClientDisconnect:
            return error(400, "the upload was cut off before its end: send the whole file.")
        if not data:
            return error(400, "the upload is empty: send the bytes of an image file.")
        name = request.headers.get("x-filename", "upload")
        return session.add_upload(bytes(data), name).to_dict()

    @app.post("/api/images/sample")
    def sample(body: SampleBody) -> dict[str, Any]:
        return session.add_sample(body.name).to_dict()

    @app.post("/api/images/scene")
    def scene(body: SceneBody) -> dict[str, Any]:
        return session.add_scene(body.seed).to_dict()

    @app.get("/api/images/{image_id}.png")
    def image_png(image_id: Annotated[str, Field(max_length=80)]) -> Response:
        return Response(session.png(image_id), media_type="image/png")

    @app.get("/api/layers")
    def layers(model: str | None = None) -> dict[str, Any]:
        from featuremap.summary import layer_table

        m = session.get_model(model)
        table = session.compute(None, None, None, lambda: layer_table(m))
        return finite({**table.to_dict(), "stages": [s.to_dict() for s in m.stages()],
                       "weights": printable(m.weights)})

    from featuremap.web import channels, routes

    routes.register(app, session)
    channels.register(app, session)
    return app

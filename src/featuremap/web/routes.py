"""The explorer's computing routes: each one library call on the session's model and image."""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Header
from fastapi.responses import Response
from pydantic import Field

from featuremap.errors import ConfigError, did_not_run
from featuremap.quantize import quantize
from featuremap.web.bodies import (
    ClassifyBody,
    FieldBody,
    LabBody,
    MapsBody,
    OverviewBody,
    SegmentBody,
    WhatIfBody,
)
from featuremap.web.state import Session
from featuremap.web.wire import binary, json_response, one, padding

__all__ = ["register"]


def _maps_header(q, names: list[str]) -> dict[str, Any]:
    return {**q.header(), "names": names}


def register(app: FastAPI, session: Session) -> None:  # noqa: C901 - one closure per route
    """Add the computing routes to ``app``."""

    def run(client: str | None, body: Any, work):
        return session.compute(client, body.channel, body.seq, work)

    @app.post("/api/lab")
    def lab(body: LabBody, x_client: str | None = Header(None)) -> Response:
        from featuremap.toy import compute_maps, explain_value
        from featuremap.value import explain, layer_lab

        image = session.image(body.image)
        chosen = {"stride": one(body.stride) if body.stride else None,
                  "padding": padding(body.padding) if body.padding is not None else None,
                  "dilation": one(body.dilation) if body.dilation else None,
                  "padding_mode": body.padding_mode}
        if body.layer is not None:
            model = session.get_model(body.model)
            if body.at is not None:
                e = run(x_client, body, lambda: explain(
                    model, image.source, layer=body.layer, at=tuple(body.at), depth=body.depth,
                    **chosen))
                return json_response(e.to_dict())
            result = run(x_client, body, lambda: layer_lab(
                model, image.source, layer=body.layer, depth=body.depth, **chosen))
        else:
            filters = body.filters or "sobel"
            defaults = {"stride": 1, "padding": 0, "dilation": 1, "padding_mode": "zeros"}
            settings = {k: v if v is not None else defaults[k] for k, v in chosen.items()}
            common = dict(channels=body.channels, short_side=body.short_side, **settings)
            if body.at is not None:
                e = run(x_client, body, lambda: explain_value(
                    image.source, filters, at=tuple(body.at), **common))
                return json_response(e.to_dict())
            result = run(x_client, body, lambda: compute_maps(
                image.source, filters, depth=body.depth, **common))
        q = quantize(result.maps)
        header = {**_maps_header(q, list(result.names)), "result": result.to_dict(),
                  "input": quantize(result.input).header()}
        return binary(header, q.data)

    @app.post("/api/maps")
    def maps(body: MapsBody, x_client: str | None = Header(None)) -> Response:
        from featuremap.plot import select_channels

        model = session.get_model(body.model)
        image = session.image(body.image)
        name = model.one_layer(body.layer)
        fm = run(x_client, body, lambda: session.maps(model, image))
        if name not in fm.meta:
            raise did_not_run([name], model.name)
        meta = fm.meta[name]
        if not meta.is_map:
            raise ConfigError(f"layer '{name}' ({meta.type}) gives {meta.source_shape}, not "
                              f"feature maps: {meta.reason}.")
        data = fm[name][0].float().cpu().numpy()
        chosen = select_channels(data, top=body.top or None, channels=body.channels)
        q = quantize(data[chosen])
        header = {**_maps_header(q, [f"ch {c}" for c in chosen]), "channels": chosen,
                  "layer": meta.to_dict(), "input_shape": list(fm.input_shape),
                  "notes": fm.notes, "mean": data.mean(axis=(1, 2))[chosen].tolist()}
        return binary(header, q.data)

    @app.post("/api/overview")
    def overview(body: OverviewBody, x_client: str | None = Header(None)) -> Response:
        from featuremap.plot import select_channels

        model = session.get_model(body.model)
        image = session.image(body.image)

        def work():
            fm = session.maps(model, image)
            return fm, session.overview_names(model, tuple(fm.input_shape[-2:]))

        fm, names = run(x_client, body, work)
        layers, blocks = [], []
        for name in names:
            if name not in fm.meta or not fm.meta[name].is_map:
                continue
            data = fm[name][0].float().cpu().numpy()
            chosen = select_channels(data, top=body.per_layer)
            q = quantize(data[chosen])
            layers.append({**q.header(), "name": name, "channels": chosen,
                           "meta": fm.meta[name].to_dict()})
            blocks.append(q.data)
        return binary({"layers": layers, "notes": fm.notes}, *blocks)

    @app.post("/api/field")
    def field(body: FieldBody, x_client: str | None = Header(None)):
        from featuremap.effective import trace_field

        model = session.get_model(body.model)
        image = session.image(body.image)
        if len(body.at) == 3:
            from featuremap.value import explain

            e = run(x_client, body, lambda: explain(model, image.source, layer=body.layer,
                                                    at=tuple(body.at)))
            return json_response(e.to_dict())
        trace = run(x_client, body, lambda: trace_field(
            model, image.source, layer=body.layer, at=tuple(body.at), channel=body.map_channel))
        q = quantize(trace.erf)
        return binary({**q.header(), "field": trace.to_dict(), "text": str(trace)}, q.data)

    @app.post("/api/whatif")
    def whatif(body: WhatIfBody, x_client: str | None = Header(None)) -> Response:
        from featuremap.plot import select_channels
        from featuremap.whatif import what_if

        model = session.get_model(body.model)
        image = session.image(body.image)
        result = run(x_client, body, lambda: what_if(
            model, body.layer, image=image.source,
            stride=one(body.stride) if body.stride else None,
            padding=padding(body.padding) if body.padding is not None else None,
            dilation=one(body.dilation) if body.dilation else None,
            out_channels=body.out_channels))
        header = {"whatif": result.to_dict(), "text": str(result)}
        if result.maps is None:
            return binary(header)
        data = result.maps[result.layer][0].float().cpu().numpy()
        chosen = select_channels(data, top=body.top)
        q = quantize(data[chosen])
        return binary({**header, **_maps_header(q, [f"ch {c}" for c in chosen]),
                        "channels": chosen}, q.data)

    @app.post("/api/classify")
    def classify(body: ClassifyBody, x_client: str | None = Header(None)) -> Response:
        from featuremap.tasks.cam import cam, default_cam_layer, grad_cam
        from featuremap.tasks.topk import classify as top_k

        model = session.get_model(body.model)
        image = session.image(body.image)

        def work() -> dict[str, Any]:
            result = top_k(model, image.source, top=body.top)
            layer = body.cam_layer or default_cam_layer(model)
            fn = grad_cam if body.method == "grad-cam" else cam
            heat = fn(model, image.source, layer=layer)
            return {"classification": result.to_dict(), "cam": heat.to_dict(),
                    "text": str(result) + "\n" + str(heat)}

        return json_response(run(x_client, body, work))

    @app.post("/api/segment")
    def segment(body: SegmentBody, x_client: str | None = Header(None)) -> Response:
        from featuremap.tasks.clusters import cluster_segments
        from featuremap.tasks.segnets import segment as own_segment

        model = session.get_model(body.model)
        image = session.image(body.image)

        def work():
            if body.own or (body.layers is None and model.segmentation is not None):
                return own_segment(model, image.source)
            layers = body.layers or [model.stage_names()[0]]
            return cluster_segments(model, image.source, layers=layers, k=body.k)

        seg = run(x_client, body, work)
        labels = seg.labels.astype(np.uint8)
        header = {"segmentation": {k: v for k, v in seg.to_dict().items() if k != "labels"},
                  "text": str(seg), "height": int(labels.shape[0]),
                  "width": int(labels.shape[1]), "truth": image.truth is not None,
                  "truth_names": image.truth_names}
        arrays = [labels]
        if image.truth is not None:
            arrays.append(image.truth.astype(np.uint8))
        return binary(header, *arrays)

    @app.get("/api/input/{image_id}.png")
    def model_input(image_id: Annotated[str, Field(max_length=80)],
                    model: Annotated[str, Field(max_length=300)] | None = None) -> Response:
        """The image as ``model`` sees it (resized and cropped, not normalised), as PNG: the
        picture that overlays (channels, receptive fields, CAMs, segments) are drawn on."""
        import io

        from PIL import Image as PILImage

        from featuremap.images import to_uint8_hwc

        m = session.get_model(model)
        pixels = to_uint8_hwc(m.preprocess.load(session.image(image_id).source))
        buf = io.BytesIO()
        PILImage.fromarray(pixels).save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png")

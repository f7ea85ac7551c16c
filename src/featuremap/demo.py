"""The demo report: every sentence of the tutorial, run on a real photo.

``build_demo`` assembles the self-contained HTML page that ``featuremap demo`` writes: the input
photo, the feature maps of a named filter bank with their shape arithmetic, the same filters at
other strides, paddings and depths side by side, and the products behind one value.
It sits with the CLI at the top of the dependency order because it composes pictures (plot) and
the page (report), which must not import each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from featuremap import plot
from featuremap.report import Report
from featuremap.toy import compute_maps, explain_value

__all__ = ["DEMO_FILTERS", "build_demo"]

DEMO_FILTERS = "sobel,laplacian,gaussian:2,gabor:4,random:8"
STRIDES = (1, 2, 4)


def _tutorial(report: Report, image, short_side: int) -> tuple:
    maps = compute_maps(image, DEMO_FILTERS, depth=8, padding="same", short_side=short_side)
    report.section("Input", "The image is a grid of numbers: here its luminance, one channel of "
                   "values in [0, 1]. Every filter below slides over this grid.")
    report.figure(plot.plot_image(maps.input, title="input (luminance)"),
                  "The input image, as the filters see it.")
    report.section("Filters make feature maps",
                   "Each filter is multiplied with every patch of the image and the products "
                   "summed; the results, one per position, form that filter's feature map. "
                   "N filters give N feature maps.")
    report.figure(plot.plot_maps(maps.maps, names=maps.names, title="filter bank"),
                  "One map per filter. Maps with negative values: blue negative, red positive "
                  "(a diverging scale centred on zero); non-negative maps (the Gaussian): "
                  "viridis from their minimum to their maximum. Each map is stretched to its "
                  "own range, written under it. The bright lines along the borders are real: "
                  "'same' padding adds zeros there, and the step from image to zero is an edge.")
    report.table(["map", "shape", "min", "mean", "max"], maps.stats(),
                 "Statistics of every map.")
    report.code(str(maps.cost))
    return maps


def _strip(report: Report, image, short_side: int, what: str, variants, caption: str) -> None:
    """One comparison strip and its table of shapes: variants are (label, compute_maps kwargs)."""
    panels, rows = [], []
    for label, kwargs in variants:
        m = compute_maps(image, short_side=short_side, **kwargs)
        panels.append(plot.Panel(label, m.maps, m.names))
        rows.append((label, m.shape, m.cost.formulas[0], f"{m.cost.macs:,}"))
    report.subsection(what)
    report.figure(plot.plot_comparison(panels, title=what), caption)
    report.table(["setting", "output (depth x H x W)", "height formula", "MACs"], rows)


def _tuning(report: Report, image, short_side: int) -> None:
    report.section("Tuning: stride, padding, depth",
                   "Stride is the jump between filter positions: stride N shrinks the map N "
                   "times. Padding appends pixels around the border, so the map keeps the input's "
                   "size. Depth is the number of filters: N filters give N maps.")
    four = "sobel,laplacian,gaussian:2"
    _strip(report, image, short_side, "Stride",
           [(f"stride {s}, padding same", dict(filters=four, stride=s, padding="same"))
            for s in STRIDES],
           "The same four filters at stride 1, 2 and 4, drawn at one pixel scale.")
    _strip(report, image, short_side, "Padding",
           [(f"padding {p}", dict(filters="gabor:4", padding=p)) for p in (0, "same")],
           "Padding 0 loses a border of (kernel - 1) / 2 pixels on each side; 'same' padding "
           "keeps the input's size.")
    _strip(report, image, short_side, "Depth",
           [(f"depth {d}", dict(filters="sobel,laplacian,gabor:13", depth=d, padding="same"))
            for d in (4, 16)],
           "Depth 4 against depth 16: one feature map per filter.")


def _explain(report: Report, image, short_side: int, maps) -> None:
    _, h, w = maps.maps.shape
    at = (0, h // 2, w // 2)
    e = explain_value(image, "sobel_x", at=at, padding=1, short_side=short_side)
    report.section("The arithmetic behind one value",
                   f"The value of the sobel_x map at row {at[1]}, column {at[2]}: the input "
                   "patch times the kernel, element by element, summed.")
    report.code(str(e))
    report.figure(plot.plot_explanation(e), "The same arithmetic drawn: the patch (hatched cells "
                  "lie in the padding), the kernel, and their products, whose sum is the value.")


RF_LAYERS = (("early", "backbone.block1.conv1"), ("middle", "backbone.block2"),
             ("late", "backbone.block4"))


def _receptive(report: Report, image, *, photo_size: int, device=None) -> None:
    """One value in an early, a middle and a late layer, and how its input region grows."""
    import dataclasses

    from featuremap.effective import empirical_receptive_field
    from featuremap.receptive import receptive_field, receptive_fields
    from featuremap.summary import list_layers
    from featuremap.zoo import load_model

    model = load_model("shapes", device=device)
    model = dataclasses.replace(model, preprocess=dataclasses.replace(
        model.preprocess, resize=photo_size, crop=photo_size), _stages={})
    prepared = model.prepare(image)
    batch, raw = prepared.batch, prepared.images
    size = tuple(batch.shape[2:])
    fields = receptive_fields(model, input_size=size)
    infos = {i.name: i for i in list_layers(model.module, input_size=size)}
    report.section(
        "Receptive fields: the region behind one value",
        "A value of an early map depends on a few pixels; every convolution and pool on the way "
        "adds (kernel - 1) x dilation x the stride so far, so a value of a late map depends on a "
        "large region: that is why early maps show edges and late maps show shapes. Below, the "
        "position nearest the photo's centre in three layers of the bundled network: the box is "
        "the analytic field (every pixel a value there can depend on, the same for all its "
        "channels), the heat is the effective field (how strongly the values there, all "
        "channels summed, change with each pixel: their gradient).")
    panels = []
    for stage, name in RF_LAYERS:
        f, (_, h, w) = fields[name], infos[name].output_shape
        at = tuple(min(max(round((c / 2 - (lo + hi) / 2) / j), 0), n - 1) for c, (j, lo, hi), n
                   in zip(size, ((f.stride[0], f.offset[0], f.offset[0] + f.size[0] - 1),
                                 (f.stride[1], f.offset[1], f.offset[1] + f.size[1] - 1)), (h, w)))
        field = receptive_field(model, name, position=at, input_size=size)
        _, erf = empirical_receptive_field(model, name, position=at, input_size=size,
                                           image=batch[:1])
        panels.append((f"{stage}: {name} at {at}\nfield {field.size[0]} px, stride "
                       f"{field.stride[0]:g}", field.box, erf))
    report.figure(plot.plot_receptive_fields(raw[0], panels, title=(
        f"One position in three layers, the photo at {size[0]} x {size[1]}")),
        "Analytic box (cyan) and effective field (heat) of one position per layer. The heat "
        "gathers in the middle of the box: central pixels reach the value along many more "
        "paths than those at the edge.")
    report.table(["layer", "kernel", "stride", "total stride before", "field", "arithmetic"],
                 _growth_rows(infos, fields),
                 "How the field grows through the backbone: field = previous field + "
                 "(kernel - 1) x dilation x the total stride before the layer.")


def _growth_rows(infos, fields) -> list[tuple]:
    from featuremap.layers import format_geometry

    rows, size, jump = [], 1, 1.0
    for name, info in infos.items():
        field = fields.get(name)
        if not name.startswith("backbone") or info.kernel_size is None or field is None:
            continue
        k, d = info.kernel_size[0], (info.dilation or (1,))[0]
        rows.append((name, format_geometry(info.kernel_size), format_geometry(info.stride),
                     f"{jump:g}", field.size[0],
                     f"{size} + ({k} - 1) x {d} x {jump:g} = {size + (k - 1) * d * jump:g}"))
        size, jump = field.size[0], field.stride[0]
    return rows


def _network(report: Report, image, *, scene_seed: int, photo_size: int, device=None) -> None:
    """The bundled network's maps, low to high, on a generated scene and on the photo."""
    import dataclasses

    import torch

    from featuremap.bundled.scenes import CLASSES, make_scene
    from featuremap.extraction import extract
    from featuremap.layers import format_geometry
    from featuremap.receptive import field_labels, receptive_fields
    from featuremap.summary import format_field, list_layers, overview_layers
    from featuremap.zoo import load_model

    model = load_model("shapes", device=device)
    size = model.preprocess.crop or 64
    layers = overview_layers(model.module, input_size=size)
    scene = make_scene(scene_seed, size=size)
    report.section(
        "A network's feature maps, low to high",
        "The bundled network (a small CNN trained on generated scenes of shapes) applies the "
        "same operation layer after layer: early maps respond to edges and colours, later, "
        "coarser maps to parts and whole shapes. Each row is one layer; its shape, cumulative "
        "stride and receptive field (the input pixels one value can depend on) are written on "
        "the left.")
    fm = extract(model, scene.image, layers=layers)
    report.figure(plot.plot_overview(fm, note=f"a generated scene: a {CLASSES[scene.label]}",
                                     labels=field_labels(model, fm, input_size=size)),
                  f"The bundled network on a generated {size}x{size} scene whose main shape is a "
                  f"{CLASSES[scene.label]}.")
    bigger = dataclasses.replace(model, preprocess=dataclasses.replace(
        model.preprocess, resize=photo_size, crop=photo_size), _stages={})
    fm = extract(bigger, image, layers=layers)
    report.figure(plot.plot_overview(fm, note=f"the photo at {photo_size}x{photo_size}",
                                     labels=field_labels(bigger, fm,
                                                         input_size=photo_size)),
                  "The same layers on the photo: the network never saw a photo in training, yet "
                  "its early layers still find edges and colour contrasts.")
    first, conv = next((n, m) for n, m in model.module.named_modules()
                       if isinstance(m, torch.nn.Conv2d))
    weight = conv.weight.detach().cpu().numpy()
    report.figure(plot.plot_filters(weight, title=f"{first}:"),
                  "The learned filters of the first convolution.")
    infos = list_layers(model.module, input_size=size, leaves_only=True)
    fields = receptive_fields(model, input_size=size)
    report.subsection(f"The shape of every layer (input 3 x {size} x {size})")
    g = format_geometry
    rows = [(i.name, i.type, i.output_shape or "-", f"{i.params:,}", g(i.kernel_size),
             g(i.stride), g(i.padding), *format_field(fields.get(i.name), i.cumulative_stride))
            for i in infos]
    report.table(["layer", "type", "output shape", "params", "kernel", "stride", "padding",
                  "total stride", "receptive field"], rows,
                 "Output shapes from one forward pass (recognition). '-': the layer runs only "
                 "in segment(), the segmentation head. Total stride: input pixels between "
                 "neighbouring values; receptive field: the input pixels one value can depend "
                 "on (see the next section).")


def _uses(report: Report, image, *, scene_seed: int, photo_size: int, device=None) -> None:
    """Recognition and segmentation, both fed by one backbone pass (feature sharing)."""
    import dataclasses

    from featuremap.bundled.scenes import CLASSES, make_scene
    from featuremap.tasks.clusters import cluster_segments
    from featuremap.tasks.shared import analyse
    from featuremap.zoo import load_model

    model = load_model("shapes", device=device)
    scene = make_scene(scene_seed, size=model.preprocess.crop or 64)
    shared = analyse(model, scene.image, top=3)
    report.section(
        "Using feature maps: recognition and segmentation",
        "The maps feed a classifier (object recognition) and can be turned into per-pixel labels "
        "(image segmentation). Below, one pass through the backbone feeds all three uses: the "
        "classifier, the class-activation map and the segmentation head share the same maps.")
    report.subsection("Object recognition")
    report.table(["rank", "class", "probability"],
                 [(r, name, f"{p:.4f}") for r, (_, name, p) in
                  enumerate(shared.classification.top, start=1)],
                 f"Top 3 for a generated scene whose main shape is a {CLASSES[scene.label]}.")
    c = shared.cam
    report.figure(plot.plot_overlay(c.image, c.heatmap, label="Grad-CAM", title=(
        f"Grad-CAM at {c.layer} for '{c.class_name}' (p = {c.probability:.3f})")),
        "Where the network looked: the Grad-CAM of the top class at the last block, upsampled "
        "from its 8 x 8 maps and drawn over the scene.")
    report.subsection("Image segmentation")
    report.figure(plot.plot_segmentation(shared.segmentation, truth=scene.mask,
                                         title="segmentation head against the ground truth"),
                  "The bundled segmentation head, fed by the same backbone pass, against the "
                  "scene's true mask.")
    bigger = dataclasses.replace(model, preprocess=dataclasses.replace(
        model.preprocess, resize=photo_size, crop=photo_size), _stages={})
    clusters = cluster_segments(bigger, image, layers=["backbone.block1", "backbone.block2"],
                                k=4)
    report.figure(plot.plot_segmentation(clusters, title="k-means of feature maps, k = 4"),
                  "Without any training: the photo's pixels clustered by their feature vectors "
                  "(backbone.block1 and block2, upsampled to the image) into 4 segments.")


def _channels(report: Report, *, scenes: int = 160, device=None) -> None:
    """What the bundled network's channels detect, layer by layer (the channel atlas)."""
    import tempfile

    from featuremap.atlas import channel_atlas, dissect
    from featuremap.bundled.scenes import save_dataset
    from featuremap.zoo import load_model

    model = load_model("shapes", device=device)
    layers = [f"backbone.block{i}" for i in range(1, 5)]
    report.section(
        "What does each channel detect?",
        "Early layers are said to capture low-level patterns and later ones high-level features. "
        f"Measured here instead of asserted: {scenes} held-out generated scenes with their masks, "
        "each channel's strongest 0.5% of values compared with 11 colour terms and the 7 shapes "
        "(network dissection: a channel detects a concept when the IoU reaches 0.04).")
    with tempfile.TemporaryDirectory(prefix="featuremap-demo-") as tmp:
        data = save_dataset(f"{tmp}/scenes", scenes, seed=12345, layout="segmentation")
        d = dissect(model, data, layers=layers)
        report.figure(plot.plot_dissection(d), "Share of channels per layer that detect a "
                      "colour, a shape or nothing (left), and how close the channels come to "
                      "each kind of concept (right).")
        report.text(_verdict(d.curve, layers))
        atlases = []
        for layer in d.layers:
            best = int(np.argmax(layer.best_iou))
            atlases.append(channel_atlas(model, data, layer=layer.layer, channels=[best], k=6,
                                         steps=128))
    report.figure(plot.plot_atlas_rows(atlases),
                  "One atlas row per layer: the channel with the best IoU of each block, the "
                  "image rendered to drive it, and the 6 scene regions that drive it hardest. "
                  "Every channel of a layer, sortable: featuremap atlas DIR --layer "
                  "backbone.block3 --out atlas.html.")


def _verdict(curve: dict[str, list[float]], layers: list[str]) -> str:
    """What the dissection curve says of 'low-level first, high-level later', in words."""
    shape, colour = curve["shape"], curve["colour"]
    low, high = layers[0].split(".")[-1], layers[-1].split(".")[-1]
    said = [f"Shape detectors (a high-level concept here): {low} {shape[0]:.0%}, {high} "
            f"{shape[-1]:.0%} ({', '.join(f'{v:.0%}' for v in shape)} from low to high): "
            + ("high-level later holds." if shape[-1] > shape[0] else
               "high-level later does not show in this measure.")]
    said.append(f"Colour detectors (low-level): {', '.join(f'{v:.0%}' for v in colour)}: "
                + ("low-level first holds." if colour[0] > colour[-1] else
                   "low-level first does not show as colour detectors. Early channels fire on "
                   "colour edges and textures (see their top patches): small parts of the "
                   "large areas a colour covers, which keeps their IoU with a whole colour "
                   "low."))
    return " ".join(said)


def build_demo(
    image: str = "sample:astronaut",
    *,
    out: str | Path = "featuremap-demo.html",
    short_side: int = 256,
    scene_seed: int = 7,
    photo_size: int = 160,
    device: Any = None,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the demo report for ``image`` to ``out`` and return its path.

    Example:
        >>> build_demo(out="/tmp/demo.html")  # doctest: +SKIP
    """
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    report = Report("What is a feature map?",
                    f"Feature maps of {image}, computed by featuremap's transparent engine.")
    say("filter bank")
    maps = _tutorial(report, image, short_side)
    say("stride, padding and depth")
    _tuning(report, image, short_side)
    say("one value explained")
    _explain(report, image, short_side, maps)
    say("the bundled network")
    _network(report, image, scene_seed=scene_seed, photo_size=photo_size, device=device)
    say("receptive fields")
    _receptive(report, image, photo_size=photo_size, device=device)
    say("recognition and segmentation")
    _uses(report, image, scene_seed=scene_seed, photo_size=photo_size, device=device)
    say("what each channel detects")
    _channels(report, device=device)
    report.text(f"Built in {time.perf_counter() - start:.1f} s.")
    return report.save(out)

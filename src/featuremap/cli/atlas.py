"""The channel atlas over a whole dataset: what each channel of a layer detects (atlas, one
sortable page), which channels detect which concept (dissect), and how similar layers are
(similarity), from a dataset folder or a store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from featuremap.cli.common import (
    DeviceOpt,
    ModelOpt,
    StoreLayers,
    StoreModelOpt,
    StoreWeightsOpt,
    WeightsOpt,
    app,
    data_and_model,
    emit,
    list_skipped,
    load,
    names,
    progress,
    target,
    wrote,
)
from featuremap.cli.common import Overwrite as PageOverwrite
from featuremap.errors import ConfigError

Source = Annotated[str, typer.Argument(
    metavar="SOURCE", help="The images: a folder (recursive), class sub-folders, images/ + "
    "masks/, a .txt list of paths, a glob such as 'photos/**/*.jpg', or a store that "
    "'featuremap extract' wrote (--pool none): its maps are read, no network runs.")]
FigureOut = Annotated[Path | None, typer.Option(
    "--out", help="Also draw the result into this figure (.png, .svg, .pdf, .jpg or .webp).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", metavar="",
                                         help="Replace --out and --json if they exist.")]
JsonOut = Annotated[Path | None, typer.Option(
    "--json", help="Also write the result as JSON (its to_dict()) into this .json file.")]


def _outputs(out: Path | None, json_out: Path | None, stem: str, overwrite: bool
             ) -> tuple[Path | None, Path | None]:
    """The figure and JSON paths asked for, checked before any work (suffix, folder, no
    overwrite without --overwrite)."""
    figure = None if out is None else target(out, f"{stem}.png", overwrite)
    data = None if json_out is None else target(json_out, f"{stem}.json", overwrite,
                                                suffixes=(".json",), what="--json")
    return figure, data


def _save(figure: Path | None, draw: Callable[[], Any], data: Path | None,
          content: Callable[[], dict[str, Any]]) -> None:
    """Write the figure and the JSON that were asked for, and say so."""
    from featuremap.outputs import write_json

    written = []
    if figure is not None:
        from featuremap.plot import save_figure

        written.append(save_figure(draw(), figure))
    if data is not None:
        written.append(write_json(data, content()))
    if written:
        wrote(*written)


@app.command(epilog="Examples:\n\n  featuremap scenes shapes-seg --n 120 --layout segmentation\n\n"
             "  featuremap dissect shapes-seg --layers 'backbone.block?' --out dissection.png\n\n"
             "  featuremap dissect shapes-seg --layers backbone.block3,backbone.block4 "
             "--check-labels --json dissection.json\n\n"
             "  featuremap extract shapes-seg --layers backbone.block3,backbone.block4 --out "
             "shapes-seg.zarr\n\n  featuremap dissect shapes-seg.zarr --layers backbone.block4\n\n"
             "  featuremap dissect my-pairs -m resnet18 --weights DEFAULT --layers layer2,layer4 "
             "--concepts masks\n\n"
             "Concepts: the eleven colour terms (from any images), and the classes of image/mask "
             "pairs (images/, masks/ and classes.txt): the shapes of generated scenes, or your "
             "own classes. Image/mask pairs run at their own size.")
def dissect(
    source: Source,
    layers: Annotated[str, typer.Option(
        "--layers", help="Comma-separated layers: names, globs such as 'backbone.block?', or "
        "re:REGEX; reported from low to high.")],
    model: StoreModelOpt = None,
    weights: StoreWeightsOpt = None,
    concepts: Annotated[str | None, typer.Option(
        help="Concept sets, comma-separated: colour (the eleven colour terms) and masks (the "
        "classes of image/mask pairs). Default: colour, and masks where SOURCE has them.")
    ] = None,
    quantile: Annotated[float, typer.Option(
        help="The top share of each channel's upsampled values that marks where it fires, in "
        "(0, 0.5).")] = 0.005,
    threshold: Annotated[float, typer.Option(
        help="The IoU (in [0, 1]) with its best concept that makes a channel a detector.")
    ] = 0.04,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass (a "
                                            "store reads its own chunks).")] = 32,
    labels: Annotated[bool, typer.Option(
        "--check-labels", metavar="", help="Then check every detector of a shape or class: "
        "the share of its top --k patches that lie on its concept (needs image/mask pairs; "
        "with a store, loads the store's model for the receptive fields).")] = False,
    k: Annotated[int, typer.Option("--k", help="Patches per detector for --check-labels.")
                 ] = 9,
    out: FigureOut = None,
    json_out: JsonOut = None,
    device: DeviceOpt = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Which channels detect a colour, a shape or a class of your masks (network dissection)."""
    from featuremap.atlas import check_labels, dissect
    from featuremap.atlas.check import labelled_source
    from featuremap.atlas.dissection import check_settings
    from featuremap.atlas.patches import check_k

    figure, data = _outputs(out, json_out, "dissection", overwrite)
    check_settings(quantile, threshold)
    if labels:
        check_k("--k", k)
    sets = None if concepts is None else [c.strip() for c in concepts.split(",") if c.strip()]
    images, loaded, chosen = data_and_model(source, layers, model, weights, device,
                                            need_model=labels)
    if labels:  # refused before the dissection: a source without masks
        labelled_source(loaded, images, chosen, batch_size=batch_size)
    bar, tick = progress("images (2 passes)")
    with bar:
        result = dissect(loaded, images, layers=chosen, concepts=sets, quantile=quantile,
                         threshold=threshold, batch_size=batch_size, progress=tick)
    emit(result)
    list_skipped(result.skipped)
    check = None
    if labels:
        bar, tick = progress("images (label check)")
        with bar:
            check = check_labels(loaded, images, result, k=k, batch_size=batch_size,
                                 progress=tick)
        emit(check)

    def content() -> dict[str, Any]:
        return result.to_dict() | ({} if check is None else {"label_check": check.to_dict()})

    from featuremap.plot import plot_dissection

    _save(figure, lambda: plot_dissection(result), data, content)


@app.command(epilog="Examples:\n\n  featuremap similarity shapes-seg --layers 'backbone.block?' "
             "--out cka.png\n\n"
             "  featuremap similarity photos/ -m resnet18 --weights DEFAULT --layers "
             "layer1,layer2,layer3,layer4 --other resnet34 --other-weights DEFAULT --pool avg\n\n"
             "  featuremap similarity shapes-data --layers 'backbone.block?' --other shapes "
             "--other-weights my-shapes/shapes.safetensors\n\n"
             "  featuremap extract shapes-data --layers backbone.block2,backbone.block4 --out "
             "a.zarr\n\n  featuremap similarity a.zarr --json cka.json\n\n"
             "Linear CKA (Kornblith et al. 2019), estimated by minibatches (unbiased HSIC, "
             "Nguyen et al. 2021): 1 for a layer with itself; rows are the layers of --model, "
             "columns those of --other (or --model again).")
def similarity(
    source: Source,
    layers: StoreLayers = None,
    model: StoreModelOpt = None,
    weights: StoreWeightsOpt = None,
    other: Annotated[str | None, typer.Option(
        help="A second model to compare with (its layers are the columns), e.g. resnet34, or "
        "shapes with --other-weights FILE; with a store as SOURCE, a store of the same images."
    )] = None,
    other_weights: Annotated[str | None, typer.Option(
        "--other-weights", help="The second model's weights, as --weights (default: DEFAULT).")
    ] = None,
    other_layers: Annotated[str | None, typer.Option(
        "--other-layers", help="The second model's or store's layers (default: --layers).")
    ] = None,
    pool: Annotated[str, typer.Option(
        help="none (each image's maps flattened: where things are counts) or avg (each "
        "channel averaged over space).")] = "none",
    batch_size: Annotated[int, typer.Option(
        "--batch-size", help="Images per minibatch (at least 4): one forward pass per "
        "minibatch and model.")] = 64,
    out: FigureOut = None,
    json_out: JsonOut = None,
    device: DeviceOpt = "auto",
    overwrite: Overwrite = False,
) -> None:
    """How similar layers are (linear CKA): of one model, of two models, or of two stores."""
    from featuremap.atlas import plot_similarity
    from featuremap.atlas import similarity as similarity_fn
    from featuremap.atlas.cka import check_settings
    from featuremap.store import Store

    figure, data = _outputs(out, json_out, "cka", overwrite)
    check_settings(batch_size, pool)
    second_layers = None if other_layers is None else names(other_layers, "other-layers")
    if other is None and (other_weights is not None or other_layers is not None):
        raise ConfigError("--other-weights and --other-layers are the second model's: give "
                          "--other too.")
    images, loaded, chosen = data_and_model(source, layers, model, weights, device)
    stored = isinstance(images, Store)
    if stored and other_weights is not None:
        raise ConfigError("--other-weights is for a second model; with a store as SOURCE, "
                          "--other is a store of the same images (its maps are used as they "
                          "are).")
    second = load(other, other_weights or "DEFAULT", device) if other and not stored else other
    bar, tick = progress("images")
    with bar:
        result = similarity_fn(loaded, images, layers=chosen, other=second,
                               other_layers=second_layers, batch_size=batch_size, pool=pool,
                               progress=tick)
    emit(result)
    list_skipped(result.skipped)
    _save(figure, lambda: plot_similarity(result), data, result.to_dict)


STAGES = {"maps": "reading maps (2 passes)", "patches": "cropping patches",
          "visualisation": "rendering channels"}


@app.command(epilog="Examples:\n\n  featuremap scenes shapes-seg --n 200 --layout segmentation"
             "\n\n  featuremap atlas shapes-seg --layer backbone.block3 --out block3.html\n\n"
             "  featuremap atlas photos/ -m resnet18 --weights DEFAULT --layer layer3 "
             "--channels 0-31 --steps 128 --out layer3.html\n\n"
             "  featuremap atlas photos.zarr -m resnet18 --weights DEFAULT --layer layer3 "
             "--no-visualize --sort iou\n\n"
             "The page shows, per channel: its top patches, an image rendered to drive it, its "
             "best concept and IoU, its mean activation; click a heading to sort.")
def atlas(
    source: Annotated[str, typer.Argument(
        help="The images: a folder, class folders, images/ + masks/ (their classes become "
        "concepts), a .txt list, a glob, or a store made by 'featuremap extract' (unpooled).")],
    layer: Annotated[str, typer.Option("--layer", "-l", help="One layer with feature maps.")],
    model: ModelOpt = "shapes",
    weights: WeightsOpt = "DEFAULT",
    channels: Annotated[str, typer.Option(help="Channels: numbers and ranges such as "
                                          "0-15,32, or all.")] = "all",
    k: Annotated[int, typer.Option("--k", "-k", help="Top patches per channel.")] = 9,
    concepts: Annotated[str | None, typer.Option(
        help="colour, masks, or colour,masks (default: colour, and the masks' classes when "
        "the images have masks).")] = None,
    quantile: Annotated[float, typer.Option(help="Top share of each channel's values that "
                                            "marks where it fires (0.005: top 0.5%).")
                        ] = 0.005,
    threshold: Annotated[float, typer.Option(help="IoU a channel's best concept must reach "
                                             "for a detector.")] = 0.04,
    visualize: Annotated[bool, typer.Option(" /--no-visualize", help="Skip the rendered "
                                            "images (the slow part).")] = True,
    size: Annotated[int | None, typer.Option(help="Rendered side in pixels (default: the "
                                             "model's input side, at most 128).")] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps per rendered image.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the rendered images.")] = 0,
    sort: Annotated[str, typer.Option(help="First order of the page: channel, mean, top, iou, "
                                      "concept or rendered.")] = "channel",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")
                          ] = 32,
    device: DeviceOpt = "auto",
    out: Annotated[Path | None, typer.Option(
        help="The page (.html; default featuremap-atlas.html, never overwritten).")] = None,
    overwrite: PageOverwrite = False,
) -> None:
    """What each channel of a layer detects: top patches, rendered image, concept, activation."""
    from featuremap.atlas.channels import channel_atlas, check_sort, parse_channels

    path = target(out, "featuremap-atlas.html", overwrite, suffixes=(".html", ".htm"))
    check_sort(sort, rendered=visualize, name="--sort")
    chosen = parse_channels(channels)
    sets = None if concepts is None else [c.strip() for c in concepts.split(",") if c.strip()]
    loaded = load(model, weights, device)
    bar, tick = _stages()
    with bar:
        result = channel_atlas(loaded, source, layer=layer, channels=chosen, k=k,
                               concepts=sets, quantile=quantile, threshold=threshold,
                               visualize=visualize, size=size, steps=steps, seed=seed,
                               batch_size=batch_size, progress=tick)
    emit(result)
    wrote(result.save(path, overwrite=overwrite, sort=sort))


def _stages():
    """A progress bar whose label names the stage, and a ``tick(stage, done, total)``."""
    bar, update = progress("atlas", rate=False)
    task = bar.task_ids[0]

    def tick(stage: str, done: int, total: int) -> None:
        bar.update(task, description=STAGES.get(stage, stage))
        update(done, total)

    return bar, tick

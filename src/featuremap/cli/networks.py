"""Commands on networks: list models and layers, show a layer, a network low to high, and the
receptive field of one value."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featuremap.cli.common import (
    DeviceOpt,
    Image,
    ModelOpt,
    Overwrite,
    SaveMaps,
    WeightsOpt,
    app,
    emit,
    int_list,
    ints,
    load,
    names,
    note,
    pair,
    table,
    target,
    wrote,
)


@app.command(epilog="Example:\n\n  featuremap models")
def models() -> None:
    """List the models --model accepts: the bundled one and torchvision's (timm:NAME too)."""
    from featuremap.zoo import list_models

    table("Models (any timm model as timm:NAME when timm is installed)", ("name", "kind"),
          list_models().items())


@app.command(epilog="Examples:\n\n  featuremap layers shapes\n\n"
             "  featuremap layers resnet18 --type conv --input-size 224\n\n"
             "  featuremap layers resnet50 --pattern 'layer*.0.conv*'")
def layers(
    model: Annotated[str, typer.Argument(help="Model name (see 'featuremap models').")],
    weights: WeightsOpt = "random",
    input_size: Annotated[str, typer.Option("--input-size", help="Input N or H,W "
                                            "(default: the model's crop size).")] = "",
    type: Annotated[str | None, typer.Option(
        "--type", help="Keep modules whose type contains this, e.g. conv, pool, relu.")] = None,
    pattern: Annotated[str | None, typer.Option(
        help="Keep names matching this glob or regex, e.g. 'layer*.0.*'.")] = None,
    leaves: Annotated[bool, typer.Option("--leaves", metavar="",
                                         help="Only modules without children.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Every named module with its type, output shape, parameters and kernel/stride/padding."""
    from featuremap.summary import COLUMNS, layer_table

    size = pair(input_size, "input-size") if input_size else None
    loaded = load(model, weights, device, quiet=True)
    result = layer_table(loaded, input_size=size, types=type, pattern=pattern,
                         leaves_only=leaves)
    for text in result.warnings:
        note(text)
    table(result.title, COLUMNS, result.rows(), caption="\n".join(result.notes) or None,
          right=COLUMNS[2:], no_wrap=True)


@app.command(epilog="Examples:\n\n  featuremap show sample:chelsea --model shapes --layer "
             "backbone.block2.conv2 --out grid.png\n\n"
             "  featuremap show photo.jpg -m resnet18 --weights DEFAULT --layer layer1 --top 32"
             "\n\n  featuremap show photo.jpg -m resnet18 --layer layer3 --draw overlay"
             "\n\n  featuremap show photo.jpg -m resnet18 --layer conv1 --draw kernels"
             "\n\n  featuremap show photo.jpg -m resnet18 --layer layer2 --save-maps maps.npz")
def show(
    image: Image,
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer name (see 'featuremap "
                                       "layers MODEL').")],
    model: ModelOpt = "shapes",
    weights: WeightsOpt = "DEFAULT",
    top: Annotated[int, typer.Option(help="Show the N channels with the highest mean "
                                     "activation (0: all).")] = 16,
    channels: Annotated[str | None, typer.Option(help="Show these channels, e.g. 0,5,9.")
                        ] = None,
    draw: Annotated[str, typer.Option(help="grid (the maps), overlay (channel mean, or the "
                                      "first --channels, over the image) or kernels (the "
                                      "layer's filters).")] = "grid",
    out: Annotated[Path | None, typer.Option(
        help="PNG to write (default: grid.png, never overwritten).")] = None,
    shared_scale: Annotated[bool, typer.Option("--shared-scale", metavar="",
                                               help="One colour scale for all channels.")] = False,
    save_maps: SaveMaps = None,
    device: DeviceOpt = "auto",
    overwrite: Overwrite = False,
) -> None:
    """The feature maps of one layer of a network: a channel grid, an overlay, or its filters."""
    from featuremap.plot import save_figure
    from featuremap.views import DRAWS
    from featuremap.views import show as show_view

    if draw not in DRAWS:
        from featuremap.errors import ConfigError

        raise ConfigError(f"--draw must be one of {', '.join(DRAWS)}, got '{draw}'.")
    path = target(out, "grid.png", overwrite)
    maps_path = target(save_maps, "maps.npz", overwrite, suffixes=(".npz",),
                       what="--save-maps") if save_maps else None
    chosen = int_list(channels, "channels") if channels else None
    view = show_view(load(model, weights, device), image, layer=layer, draw=draw, top=top,
                     channels=chosen, shared_scale=shared_scale)
    path = save_figure(view.figure(), path)
    emit(view)
    written = [path] + ([view.maps.save(maps_path, overwrite=overwrite)] if maps_path else [])
    wrote(*written)


@app.command(epilog="Examples:\n\n  featuremap overview sample:astronaut --model shapes\n\n"
             "  featuremap overview photo.jpg -m resnet50 --weights DEFAULT --out overview.png")
def overview(
    image: Image,
    model: ModelOpt = "shapes",
    weights: WeightsOpt = "DEFAULT",
    layers: Annotated[str | None, typer.Option(
        "--layers", help="Comma-separated layers (default: the end of every stage).")] = None,
    per_layer: Annotated[int, typer.Option("--per-layer", help="Channels per layer (1-64).")
                         ] = 8,
    out: Annotated[Path | None, typer.Option(
        help="PNG to write (default: overview.png, never overwritten).")] = None,
    save_maps: SaveMaps = None,
    device: DeviceOpt = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Feature maps from low to high layers: edges first, parts and objects later."""
    from featuremap.plot import save_figure
    from featuremap.views import overview as overview_view

    path = target(out, "overview.png", overwrite)
    maps_path = target(save_maps, "maps.npz", overwrite, suffixes=(".npz",),
                       what="--save-maps") if save_maps else None
    chosen = names(layers, "layers") if layers is not None else None
    if not 1 <= per_layer <= 64:
        from featuremap.errors import ConfigError

        raise ConfigError(f"--per-layer must be from 1 to 64, got {per_layer}.")
    view = overview_view(load(model, weights, device), image, layers=chosen,
                         per_layer=per_layer)
    path = save_figure(view.figure(), path)
    emit(view)
    written = [path] + ([view.maps.save(maps_path, overwrite=overwrite)] if maps_path else [])
    wrote(*written)


@app.command(epilog="Examples:\n\n  featuremap rf docs/scene.png --layer backbone.block2 --at 8,8"
             "\n\n  featuremap rf photo.jpg -m resnet18 --weights DEFAULT --layer layer3 "
             "--at 7,7 --out rf.png")
def rf(
    image: Image,
    layer: Annotated[str, typer.Option("--layer", "-l", help="Layer whose value to trace.")],
    at: Annotated[str, typer.Option(help="Position Y,X in that layer's map.")],
    channel: Annotated[int | None, typer.Option(
        help="The effective field of this channel's value (default: all channels at Y,X, "
        "summed; the analytic box is the same for every channel).")] = None,
    model: ModelOpt = "shapes",
    weights: WeightsOpt = "DEFAULT",
    out: Annotated[Path | None, typer.Option(
        help="PNG to write (default: rf.png, never overwritten).")] = None,
    device: DeviceOpt = "auto",
    overwrite: Overwrite = False,
) -> None:
    """The receptive field of one position: the analytic box and the gradient's heatmap."""
    from featuremap.effective import trace_field
    from featuremap.plot import plot_receptive_field, save_figure

    y, x = ints(at, "at", (2,))
    path = target(out, "rf.png", overwrite)
    result = trace_field(load(model, weights, device), image, layer=layer, at=(y, x),
                         channel=channel)
    path = save_figure(plot_receptive_field(result.picture, result.box, result.erf,
                                            title=result.title), path)
    for text in result.notes:
        note(text)
    emit(result)
    wrote(path)

"""Commands that need no network: a filter bank's maps, shape arithmetic, one value explained,
the sample photos and filters, and the demo report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featuremap.cli.common import (
    Channels,
    DeviceOpt,
    Dilation,
    Filters,
    Image,
    MaxPixels,
    ModelOpt,
    Overwrite,
    Padding,
    PaddingMode,
    Seed,
    ShortSide,
    Stride,
    WeightsOpt,
    app,
    console,
    emit,
    ints,
    load,
    padding_arg,
    pair,
    table,
    target,
    wrote,
)


@app.command(epilog="Examples:\n\n  featuremap conv sample:astronaut --filters sobel,gabor:8"
             " --stride 2 --padding same --out maps.png\n\n"
             "  featuremap conv photo.jpg -f laplacian --channels per-channel --out edges.png")
def conv(
    image: Image,
    filters: Filters = "sobel",
    stride: Stride = "1",
    padding: Padding = "0",
    padding_mode: PaddingMode = "zeros",
    dilation: Dilation = "1",
    depth: Annotated[int | None, typer.Option(help="Keep the first N filters of the bank.")] = None,
    channels: Channels = "luminance",
    seed: Seed = 0,
    out: Annotated[Path | None, typer.Option(
        help="PNG to write the channel grid to (default: maps.png, never overwritten).")] = None,
    shared_scale: Annotated[bool, typer.Option(
        "--shared-scale", metavar="", help="One colour scale for all maps (default: each map "
        "on its own range, printed under it).")] = False,
    short_side: ShortSide = None,
    max_pixels: MaxPixels = 50_000_000,
    overwrite: Overwrite = False,
) -> None:
    """Apply a filter bank to an image: print each map's shape and range, write the grid."""
    from featuremap.plot import plot_maps, save_figure
    from featuremap.toy import compute_maps

    path = target(out, "maps.png", overwrite)
    maps = compute_maps(image, filters, stride=pair(stride, "stride"),
                        padding=padding_arg(padding), dilation=pair(dilation, "dilation"),
                        padding_mode=padding_mode, depth=depth, channels=channels, seed=seed,
                        short_side=short_side, max_pixels=max_pixels)
    fig = plot_maps(maps.maps, names=maps.names, title=f"{image} / {filters}",
                    shared_scale=shared_scale)
    path = save_figure(fig, path)
    table(f"{len(maps.names)} feature maps of {image}", maps.COLUMNS, maps.rows(),
          right=maps.COLUMNS[1:])
    emit(maps.cost)
    wrote(path)


@app.command(epilog="Examples:\n\n  featuremap shape --input 224 --kernel 3 --stride 2 --padding 1"
             " --depth 64\n\n  featuremap shape --input 224,160 --kernel 7 --padding same"
             " --in-channels 64 --depth 128")
def shape(
    input: Annotated[str, typer.Option("--input", "--input-size", help="Input size: N or H,W.")
                     ] = "224",
    kernel: Annotated[str, typer.Option(help="Kernel size: N or H,W.")] = "3",
    stride: Stride = "1",
    padding: Padding = "0",
    padding_mode: PaddingMode = "zeros",
    dilation: Dilation = "1",
    depth: Annotated[int, typer.Option(help="Number of filters (feature maps).")] = 64,
    in_channels: Annotated[int, typer.Option("--in-channels", help="Input channels.")] = 3,
    groups: Annotated[int, typer.Option(help="Channel groups (in_channels for depthwise).")] = 1,
) -> None:
    """Output shape of a convolution with the formula, MACs and bytes: no image needed."""
    from featuremap.arithmetic import conv_cost

    emit(conv_cost(pair(input, "input"), pair(kernel, "kernel"), depth=depth,
                   in_channels=in_channels, stride=pair(stride, "stride"),
                   padding=padding_arg(padding), dilation=pair(dilation, "dilation"),
                   groups=groups, padding_mode=padding_mode))


@app.command(epilog="Examples:\n\n  featuremap explain sample:camera --filters sobel --at 0,100,120"
             "\n\n  featuremap explain photo.png -f laplacian --at 0,0,0 --padding 1"
             " --padding-mode reflect\n\n  featuremap explain docs/scene.png --model shapes "
             "--layer backbone.block2.conv1 --at 3,10,12 --out explain.png")
def explain(
    image: Image,
    at: Annotated[str, typer.Option(help="Which value: MAP,Y,X (map index, row, column).")],
    filters: Filters = "sobel",
    stride: Stride = "1",
    padding: Padding = "0",
    padding_mode: PaddingMode = "zeros",
    dilation: Dilation = "1",
    channels: Channels = "luminance",
    seed: Seed = 0,
    short_side: ShortSide = None,
    max_pixels: MaxPixels = 50_000_000,
    layer: Annotated[str | None, typer.Option(
        "--layer", "-l", help="A Conv2d layer of --model: explain the network's value instead "
        "(--at is then CHANNEL,Y,X of that layer's output).")] = None,
    model: ModelOpt = "shapes",
    weights: WeightsOpt = "DEFAULT",
    device: DeviceOpt = "auto",
    out: Annotated[Path | None, typer.Option(
        help="Also draw patch, kernel and products per input channel to this PNG.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Show the patch x kernel products whose sum is one value of a feature map."""
    path = target(out, "explain.png", overwrite) if out is not None else None
    where = ints(at, "at", (3,))
    if layer is not None:
        from featuremap.value import explain as explain_network

        e = explain_network(load(model, weights, device), image, layer=layer, at=where)
    else:
        from featuremap.toy import explain_value

        e = explain_value(image, filters, at=where, stride=pair(stride, "stride"),
                          padding=padding_arg(padding), dilation=pair(dilation, "dilation"),
                          padding_mode=padding_mode, channels=channels, seed=seed,
                          short_side=short_side, max_pixels=max_pixels)
    emit(e)
    if path is not None:
        from featuremap.plot import plot_explanation, save_figure

        wrote(save_figure(plot_explanation(e), path))


@app.command(epilog="Example:\n\n  featuremap samples")
def samples() -> None:
    """List the bundled sample photos, usable as sample:NAME wherever an image is taken."""
    from featuremap.samples import list_samples

    table("Sample images (use as sample:NAME)", ("name", "description"),
          ((f"sample:{name}", text) for name, text in list_samples().items()))


@app.command(epilog="Example:\n\n  featuremap filters")
def filters() -> None:
    """List the named filters that --filters accepts, with their arguments."""
    from featuremap.filters import list_filters

    table("Filters (combine with commas: sobel,gabor:8,random:4)", ("syntax", "description"),
          (tuple(text.split("  ", 1)) if "  " in text else (name, text)
           for name, text in list_filters().items()))


@app.command(epilog="Examples:\n\n  featuremap demo\n\n"
             "  featuremap demo --image sample:chelsea --out cat.html")
def demo(
    image: Annotated[str, typer.Option(help="Image file or sample:NAME.")] = "sample:astronaut",
    out: Annotated[Path | None, typer.Option(
        help="HTML file to write (default: featuremap-demo.html, never overwritten).")] = None,
    short_side: Annotated[int, typer.Option("--short-side", help="Work at this size.")] = 256,
    device: DeviceOpt = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Write a self-contained HTML report: feature maps from filters to what channels detect."""
    from featuremap.demo import build_demo
    from featuremap.images import load_image
    from featuremap.model import resolve_device

    path = target(out, "featuremap-demo.html", overwrite, suffixes=(".html", ".htm"))
    dev = resolve_device(device)
    load_image(image, max_pixels=50_000_000)  # a bad image is refused before the work
    with console().status("building the demo report") as status:
        path = build_demo(image, out=path, short_side=short_side, device=dev,
                          progress=lambda msg: status.update(f"building: {msg}"))
    wrote(Path(path).resolve())

"""The ``featuremap`` command line: each command translates flags into one library call.

Errors a user can cause are :class:`~featuremap.errors.FeaturemapError`; :func:`main` prints them
as one ``error: ...`` line and exits 2. Heavy libraries are imported inside the commands, so
``featuremap --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from featuremap.errors import ConfigError, FeaturemapError

app = typer.Typer(
    name="featuremap",
    help="Compute, see, tune and use the feature maps of convolutional neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

# ------------------------------------------------------------------ options shared by commands
Image = Annotated[str, typer.Argument(
    help="Image file, or sample:NAME (see 'featuremap samples').")]
Filters = Annotated[str, typer.Option(
    "--filters", "-f",
    help="Filter bank, e.g. 'sobel,gabor:8,random:4' (see 'featuremap filters').")]
Stride = Annotated[str, typer.Option(help="Step between filter positions: N or H,W.")]
Padding = Annotated[str, typer.Option(
    help="Border added to the input: N, H,W, 'same' or 'valid'.")]
PaddingMode = Annotated[str, typer.Option(
    "--padding-mode", help="Values of the border: zeros, reflect, replicate or circular.")]
Dilation = Annotated[str, typer.Option(help="Spacing between kernel taps: N or H,W.")]
Channels = Annotated[str, typer.Option(
    help="'luminance' (filters see the grey image) or 'per-channel' (R, G, B separately).")]
Seed = Annotated[int, typer.Option(help="Seed of random filters.")]
ShortSide = Annotated[int | None, typer.Option(
    "--short-side", help="Resize the image so its shorter side has this many pixels.")]
MaxPixels = Annotated[int, typer.Option(
    "--max-pixels", help="Refuse images with more pixels than this (decompression-bomb guard).")]


def _ints(text: str, name: str, count: tuple[int, ...] = (1, 2)) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) not in count:
        shapes = " or ".join({1: "N", 2: "H,W", 3: "D,Y,X"}[c] for c in count)
        raise ConfigError(f"--{name} must be {shapes} (integers), got '{text}'.")
    return values


def _pair_opt(text: str, name: str) -> int | tuple[int, int]:
    values = _ints(text, name)
    return values[0] if len(values) == 1 else (values[0], values[1])


def _padding_opt(text: str) -> int | tuple[int, int] | str:
    return text.lower() if text.lower() in ("same", "valid") else _pair_opt(text, "padding")


def _free_path(name: str) -> Path:
    """A default output path that overwrites nothing: name, name-1, name-2, ..."""
    path = Path(name)
    k = 1
    while path.exists():
        path = Path(f"{Path(name).stem}-{k}{Path(name).suffix}")
        k += 1
    return path


def _console():
    from rich.console import Console

    return Console()


# ------------------------------------------------------------------------------------ commands
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
        "--shared-scale", help="One colour scale for all maps (default: each map on its own "
        "range, printed under it).")] = False,
    short_side: ShortSide = None,
    max_pixels: MaxPixels = 50_000_000,
) -> None:
    """Apply a filter bank to an image: print each map's shape and range, write the grid."""
    from featuremap.plot import plot_maps, save_figure
    from featuremap.toy import compute_maps

    maps = compute_maps(image, filters, stride=_pair_opt(stride, "stride"),
                        padding=_padding_opt(padding), dilation=_pair_opt(dilation, "dilation"),
                        padding_mode=padding_mode, depth=depth, channels=channels, seed=seed,
                        short_side=short_side, max_pixels=max_pixels)
    target = out or _free_path("maps.png")
    fig = plot_maps(maps.maps, names=maps.names, title=f"{image} / {filters}",
                    shared_scale=shared_scale)
    save_figure(fig, target)
    _print_table(maps.stats(), f"{len(maps.names)} feature maps of {image}")
    typer.echo(str(maps.cost))
    _console().print(f"wrote {target}")


def _print_table(rows, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("filter", "output shape", "min", "mean", "max"):
        table.add_column(col, justify="left" if col == "filter" else "right")
    for name, shape, lo, mean, hi in rows:
        table.add_row(name, " x ".join(map(str, shape)), f"{lo:.4g}", f"{mean:.4g}", f"{hi:.4g}")
    _console().print(table)


@app.command(epilog="Examples:\n\n  featuremap shape --input 224 --kernel 3 --stride 2 --padding 1"
             " --depth 64\n\n  featuremap shape --input 224,160 --kernel 7 --padding same"
             " --in-channels 64 --depth 128")
def shape(
    input: Annotated[str, typer.Option("--input", help="Input size: N or H,W.")] = "224",
    kernel: Annotated[str, typer.Option(help="Kernel size: N or H,W.")] = "3",
    stride: Stride = "1",
    padding: Padding = "0",
    dilation: Dilation = "1",
    depth: Annotated[int, typer.Option(help="Number of filters (feature maps).")] = 64,
    in_channels: Annotated[int, typer.Option("--in-channels", help="Input channels.")] = 3,
    groups: Annotated[int, typer.Option(help="Channel groups (in_channels for depthwise).")] = 1,
) -> None:
    """Output shape of a convolution with the formula, MACs and bytes: no image needed."""
    from featuremap.arithmetic import conv_cost

    cost = conv_cost(_pair_opt(input, "input"), _pair_opt(kernel, "kernel"), depth=depth,
                     in_channels=in_channels, stride=_pair_opt(stride, "stride"),
                     padding=_padding_opt(padding), dilation=_pair_opt(dilation, "dilation"),
                     groups=groups)
    typer.echo(str(cost))


@app.command(epilog="Examples:\n\n  featuremap explain sample:camera --filters sobel --at 0,100,120"
             "\n\n  featuremap explain photo.png -f laplacian --at 0,0,0 --padding 1"
             " --padding-mode reflect")
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
) -> None:
    """Show the patch x kernel products whose sum is one value of a feature map."""
    from featuremap.toy import explain_value

    e = explain_value(image, filters, at=_ints(at, "at", (3,)), stride=_pair_opt(stride, "stride"),
                      padding=_padding_opt(padding), dilation=_pair_opt(dilation, "dilation"),
                      padding_mode=padding_mode, channels=channels, seed=seed,
                      short_side=short_side, max_pixels=max_pixels)
    typer.echo(str(e))


@app.command(epilog="Example:\n\n  featuremap samples")
def samples() -> None:
    """List the bundled sample photos, usable as sample:NAME wherever an image is taken."""
    from rich.table import Table

    from featuremap.images import list_samples

    table = Table(title="Sample images (use as sample:NAME)")
    table.add_column("name")
    table.add_column("description")
    for name, text in list_samples().items():
        table.add_row(f"sample:{name}", text)
    _console().print(table)


@app.command(epilog="Example:\n\n  featuremap filters")
def filters() -> None:
    """List the named filters that --filters accepts, with their arguments."""
    from rich.table import Table

    from featuremap.filters import list_filters

    table = Table(title="Filters (combine with commas: sobel,gabor:8,random:4)")
    table.add_column("name")
    table.add_column("description")
    for name, text in list_filters().items():
        table.add_row(name, text)
    _console().print(table)


@app.command(epilog="Examples:\n\n  featuremap demo\n\n"
             "  featuremap demo --image sample:chelsea --out cat.html")
def demo(
    image: Annotated[str, typer.Option(help="Image file or sample:NAME.")] = "sample:astronaut",
    out: Annotated[Path | None, typer.Option(
        help="HTML file to write (default: featuremap-demo.html, never overwritten).")] = None,
    short_side: Annotated[int, typer.Option("--short-side", help="Work at this size.")] = 256,
) -> None:
    """Write a self-contained HTML report: feature maps of a photo, tuned and explained."""
    from featuremap.demo import build_demo

    console = _console()
    with console.status("building the demo report") as status:
        path = build_demo(image, out=out or _free_path("featuremap-demo.html"),
                          short_side=short_side,
                          progress=lambda msg: status.update(f"building: {msg}"))
    console.print(f"wrote {path.resolve()}")


def _version(value: bool) -> None:
    if value:
        from featuremap import __version__

        typer.echo(f"featuremap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Compute, see, tune and use the feature maps of convolutional neural networks."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one 'error: ...' line and exit status 2."""
    try:
        app(args=argv)  # usage errors are reported by Typer itself, with exit status 2
    except FeaturemapError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except OSError as err:  # e.g. a file that cannot be written: permissions, disk full
        where = f": {err.filename}" if err.filename else ""
        typer.echo(f"error: {err.strerror or err}{where}", err=True)
        sys.exit(2)

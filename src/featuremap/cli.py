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
    epilog="Examples:\n\n  featuremap demo\n\n"
    "  featuremap conv sample:astronaut --filters sobel,gabor:8 --stride 2 --padding same\n\n"
    "  featuremap overview docs/scene.png --model shapes\n\n"
    "  featuremap classify docs/scene.png --cam auto\n\n"
    "Each command has its own examples: featuremap COMMAND --help",
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


Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.",
                                                 metavar="")]


def _target(out: Path | None, default: str, overwrite: bool) -> Path:
    """Where to write: --out (an existing file only with --overwrite), else a free default."""
    if out is None:
        return _free_path(default)
    if out.exists() and not out.is_dir() and not overwrite:
        raise ConfigError(f"'{out}' exists: pass --overwrite to replace it, or choose another "
                          "--out.")
    return out


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

    # Not a terminal (a pipe, a file): wide enough that tables are never squeezed.
    return Console(width=None if sys.stdout.isatty() else 200)


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
        "--shared-scale", metavar="", help="One colour scale for all maps (default: each map "
        "on its own range, printed under it).")] = False,
    short_side: ShortSide = None,
    max_pixels: MaxPixels = 50_000_000,
    overwrite: Overwrite = False,
) -> None:
    """Apply a filter bank to an image: print each map's shape and range, write the grid."""
    from featuremap.plot import plot_maps, save_figure
    from featuremap.toy import compute_maps

    maps = compute_maps(image, filters, stride=_pair_opt(stride, "stride"),
                        padding=_padding_opt(padding), dilation=_pair_opt(dilation, "dilation"),
                        padding_mode=padding_mode, depth=depth, channels=channels, seed=seed,
                        short_side=short_side, max_pixels=max_pixels)
    target = _target(out, "maps.png", overwrite)
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

    cost = conv_cost(_pair_opt(input, "input"), _pair_opt(kernel, "kernel"), depth=depth,
                     in_channels=in_channels, stride=_pair_opt(stride, "stride"),
                     padding=_padding_opt(padding), dilation=_pair_opt(dilation, "dilation"),
                     groups=groups, padding_mode=padding_mode)
    typer.echo(str(cost))


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
    out: Annotated[Path | None, typer.Option(
        help="Also draw patch, kernel and products per input channel to this PNG.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Show the patch x kernel products whose sum is one value of a feature map."""
    target = _target(out, "", overwrite) if out is not None else None
    seen = ""
    if layer is not None:
        from featuremap.extraction import prepare_images
        from featuremap.value import explain as explain_network

        loaded = _load(model, weights)
        batch, _, _ = prepare_images(image, loaded.preprocess)
        e = explain_network(loaded, batch[:1], layer=layer, at=_ints(at, "at", (3,)))
        seen = _image_region(loaded, layer, e.at[1:], tuple(batch.shape[2:]))
    else:
        from featuremap.toy import explain_value

        e = explain_value(image, filters, at=_ints(at, "at", (3,)),
                          stride=_pair_opt(stride, "stride"), padding=_padding_opt(padding),
                          dilation=_pair_opt(dilation, "dilation"), padding_mode=padding_mode,
                          channels=channels, seed=seed, short_side=short_side,
                          max_pixels=max_pixels)
    typer.echo(str(e))
    if seen:
        typer.echo(seen)
    if target is not None:
        from featuremap.plot import plot_explanation, save_figure

        typer.echo(f"wrote {save_figure(plot_explanation(e), target)}")


def _image_region(loaded, layer: str, at: tuple[int, int], size: tuple[int, int]) -> str:
    """'in the image: rows .. cols ..' of one value's receptive field ('' where undefined)."""
    from featuremap.receptive import receptive_field

    try:
        field = receptive_field(loaded, layer, position=at, input_size=size)
    except FeaturemapError:
        return ""
    y0, x0, y1, x1 = field.clipped_box
    extra = "; it also sees the whole image through global pooling" if (
        field.global_context) else ""
    return (f"in the {size[0]} x {size[1]} input image this value sees rows {y0}..{y1 - 1}, "
            f"cols {x0}..{x1 - 1} (receptive field {field.size[0]} x {field.size[1]} px, "
            f"stride {field.stride[0]:g}{extra}; 'featuremap rf' draws it)")


def _print_listing(title: str, columns: tuple[str, str], rows) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    _console().print(table)


@app.command(epilog="Example:\n\n  featuremap samples")
def samples() -> None:
    """List the bundled sample photos, usable as sample:NAME wherever an image is taken."""
    from featuremap.images import list_samples

    _print_listing("Sample images (use as sample:NAME)", ("name", "description"),
                   ((f"sample:{name}", text) for name, text in list_samples().items()))


@app.command(epilog="Example:\n\n  featuremap filters")
def filters() -> None:
    """List the named filters that --filters accepts, with their arguments."""
    from featuremap.filters import list_filters

    _print_listing("Filters (combine with commas: sobel,gabor:8,random:4)",
                   ("syntax", "description"),
                   (tuple(text.split("  ", 1)) if "  " in text else (name, text)
                    for name, text in list_filters().items()))


@app.command(epilog="Examples:\n\n  featuremap demo\n\n"
             "  featuremap demo --image sample:chelsea --out cat.html")
def demo(
    image: Annotated[str, typer.Option(help="Image file or sample:NAME.")] = "sample:astronaut",
    out: Annotated[Path | None, typer.Option(
        help="HTML file to write (default: featuremap-demo.html, never overwritten).")] = None,
    short_side: Annotated[int, typer.Option("--short-side", help="Work at this size.")] = 256,
    overwrite: Overwrite = False,
) -> None:
    """Write a self-contained HTML report: feature maps tuned and explained, a network low to
    high, receptive fields, recognition and segmentation."""
    from featuremap.demo import build_demo

    console = _console()
    with console.status("building the demo report") as status:
        path = build_demo(image, out=_target(out, "featuremap-demo.html", overwrite),
                          short_side=short_side,
                          progress=lambda msg: status.update(f"building: {msg}"))
    console.print(f"wrote {path.resolve()}")


# ------------------------------------------------------------------------ networks and layers
ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", help="Model name (see 'featuremap models'), e.g. shapes, resnet18, "
    "timm:resnet50.")]
WeightsOpt = Annotated[str, typer.Option(
    help="DEFAULT (trained: the bundled model's, or torchvision's from torch's cache), random, "
    "a torchvision weights name, or a .pth/.pt/.safetensors file.")]


def _load(model: str, weights: str, *, quiet: bool = False):
    """load_model with the CLI's weights words; its notes go to stderr as 'note: ...' (unless
    quiet: for commands whose output does not depend on the weights)."""
    import warnings

    from featuremap.extraction import retain_memory
    from featuremap.zoo import load_model

    retain_memory()  # this process is ours: reuse freed memory instead of page-faulting it in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # notes say what matters, once
        warnings.simplefilter("ignore", FutureWarning)  # torchvision's default-init notices
        loaded = load_model(model, weights=weights)
    for note in [] if quiet else loaded.notes:
        typer.echo(f"note: {note}", err=True)
    return loaded


def _notes(fm) -> None:
    for note in fm.notes:
        typer.echo(f"note: {note}", err=True)


@app.command(epilog="Example:\n\n  featuremap models")
def models() -> None:
    """List the models --model accepts: the bundled one and torchvision's (timm:NAME too)."""
    from featuremap.zoo import list_models

    _print_listing("Models (any timm model as timm:NAME when timm is installed)",
                   ("name", "kind"), list_models().items())


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
                                                    help="Only modules without children.")
                      ] = False,
) -> None:
    """Every named module with its type, output shape, parameters and kernel/stride/padding."""
    from rich.table import Table

    from featuremap.layers import format_geometry, list_layers
    from featuremap.receptive import format_field

    loaded = _load(model, weights, quiet=True)
    size = _pair_opt(input_size, "input-size") if input_size else _input_size(loaded)
    infos = list_layers(loaded.module, input_size=size, types=type, pattern=pattern,
                        leaves_only=leaves, model_name=loaded.name)
    fields = _fields_or_note(loaded, size)
    table = Table(title=f"{loaded.name}: {len(infos)} layers at input {_size_text(size)}")
    for col in ("name", "type", "output shape", "params", "kernel", "stride", "padding",
                "dilation", "total stride", "receptive field"):
        table.add_column(col, justify="left" if col in ("name", "type") else "right",
                         no_wrap=True)
    for i in infos:
        stride, field = format_field(fields.get(i.name), i.cumulative_stride)
        indent = "" if leaves or type or pattern else "  " * (i.depth - 1)
        table.add_row(indent + i.name, i.type, _shape_text(i.output_shape),
                      f"{i.params:,}", *(format_geometry(v) for v in (
                          i.kernel_size, i.stride, i.padding, i.dilation)), stride, field)
    notes = []
    if any(i.output_shape is None for i in infos):
        notes.append("- : did not run in the forward pass (a training-only or auxiliary head, "
                     "or one another method calls).")
    if any(getattr(f, "global_context", False) for f in fields.values()):
        notes.append("* also sees every pixel through a global pooling on the way "
                     "(squeeze-and-excitation) or a GroupNorm; the size is the convolution "
                     "path's.")
    table.caption = "\n".join(notes) or None
    _console().print(table)


def _fields_or_note(loaded, size) -> dict:
    """Every layer's receptive field, or {} with a note when the model cannot be traced."""
    from featuremap.receptive import receptive_fields

    try:
        return receptive_fields(loaded, input_size=size)
    except FeaturemapError as err:
        typer.echo(f"note: no receptive fields: {err}", err=True)
        return {}


def _input_size(loaded) -> int:
    pre = loaded.preprocess
    return pre.crop or pre.resize or 224


def _size_text(size) -> str:
    return f"{size}x{size}" if isinstance(size, int) else "x".join(map(str, size))


def _shape_text(shape) -> str:
    return " x ".join(map(str, shape)) if shape else "-"


def _int_list(text: str, name: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name} must be integers separated by commas, got '{text}'.") from None


SHOW_KINDS = ("grid", "overlay", "kernels")


@app.command(epilog="Examples:\n\n  featuremap show sample:chelsea --model shapes --layer "
             "backbone.block2.conv2 --out grid.png\n\n"
             "  featuremap show photo.jpg -m resnet18 --weights DEFAULT --layer layer1 --top 32"
             "\n\n  featuremap show photo.jpg -m resnet18 --layer layer3 --draw overlay"
             "\n\n  featuremap show photo.jpg -m resnet18 --layer conv1 --draw kernels")
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
    overwrite: Overwrite = False,
) -> None:
    """The feature maps of one layer of a network: a channel grid, an overlay, or its filters."""
    from featuremap.extraction import extract
    from featuremap.plot import plot_filters, plot_layer, plot_overlay, save_figure

    if draw not in SHOW_KINDS:
        raise ConfigError(f"--draw must be one of {', '.join(SHOW_KINDS)}, got '{draw}'.")
    loaded = _load(model, weights)
    fm = extract(loaded, image, layers=[layer])
    _notes(fm)
    name, meta = list(fm.meta.items())[0]
    chosen = _int_list(channels, "channels") if channels else None
    note = f"weights: {loaded.weights}"
    if draw == "kernels":
        weight = getattr(dict(loaded.module.named_modules())[name], "weight", None)
        if weight is None or weight.dim() != 4:
            raise ConfigError(f"layer '{name}' ({meta.type}) has no convolution filters to draw; "
                              "pick a Conv2d layer (see 'featuremap layers MODEL --type conv').")
        fig = plot_filters(weight.detach().cpu().numpy(), title=f"{loaded.name} {name}:")
    elif draw == "overlay":
        maps = fm.numpy()[name][0]
        heat = maps[chosen[0]] if chosen else maps.mean(0)
        what = f"channel {chosen[0]}" if chosen else f"mean of {maps.shape[0]} channels"
        fig = plot_overlay(fm.images[0], heat, label=what,
                           title=f"{loaded.name} {name} ({what}, {note})")
    else:
        fig = plot_layer(fm, name, top=top or None, channels=chosen, shared_scale=shared_scale,
                         note=note)
    target = save_figure(fig, _target(out, "grid.png", overwrite))
    label = _field_labels(loaded, fm).get(name)
    typer.echo(f"{loaded.name} {name} ({meta.type}): maps {_shape_text(meta.shape[1:])}"
               + (f", stride {meta.stride[0]:g}" if meta.stride else "")
               + (f", {label}" if label else "")
               + f"; input {_shape_text(fm.input_shape[1:])}")
    typer.echo(f"wrote {target}")


@app.command(epilog="Examples:\n\n  featuremap overview sample:astronaut --model shapes\n\n"
             "  featuremap overview photo.jpg -m resnet50 --weights DEFAULT --out overview.png")
def overview(
    image: Image,
    model: ModelOpt = "shapes",
    weights: WeightsOpt = "DEFAULT",
    layers: Annotated[str | None, typer.Option(
        "--layers", help="Comma-separated layers (default: the end of every stage).")] = None,
    per_layer: Annotated[int, typer.Option("--per-layer", help="Channels per layer.")] = 8,
    out: Annotated[Path | None, typer.Option(
        help="PNG to write (default: overview.png, never overwritten).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Feature maps from low to high layers: edges first, parts and objects later."""
    from featuremap.extraction import extract, overview_layers
    from featuremap.plot import plot_overview, save_figure

    loaded = _load(model, weights)
    names = layers.split(",") if layers else overview_layers(
        loaded.module, input_size=_input_size(loaded))
    fm = extract(loaded, image, layers=names)
    _notes(fm)
    labels = _field_labels(loaded, fm)
    fig = plot_overview(fm, per_layer=per_layer, note=f"weights: {loaded.weights}",
                        labels=labels)
    target = save_figure(fig, _target(out, "overview.png", overwrite))
    for name, meta in fm.meta.items():
        typer.echo(f"{name:32s} {meta.type:18s} {_shape_text(meta.shape[1:]):>16s}"
                   + (f"  stride {meta.stride[0]:g}" if meta.stride else "")
                   + (f"  {labels[name]}" if labels.get(name) else ""))
    typer.echo(f"wrote {target}")


def _field_labels(loaded, fm) -> dict[str, str]:
    """'field 68 px' for every extracted layer, at the size the images ran at ({} untraceable)."""
    from featuremap.receptive import field_labels

    try:
        return field_labels(loaded, fm.meta, input_size=tuple(fm.input_shape[-2:]))
    except FeaturemapError:
        return {}


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
    overwrite: Overwrite = False,
) -> None:
    """The receptive field of one position: the analytic box and the gradient's heatmap."""
    from featuremap.extraction import prepare_images
    from featuremap.plot import plot_receptive_field, save_figure
    from featuremap.receptive import (
        UntraceableError,
        empirical_receptive_field,
        receptive_field,
    )

    y, x = _ints(at, "at", (2,))
    target = _target(out, "rf.png", overwrite)
    loaded = _load(model, weights)
    batch, raw, _ = prepare_images(image, loaded.preprocess)
    size = tuple(batch.shape[2:])
    support, erf = empirical_receptive_field(loaded, layer, position=(y, x), channel=channel,
                                             input_size=size, image=batch[:1])  # checks (y, x)
    of = "all channels" if channel is None else f"channel {channel}"
    try:
        field = receptive_field(loaded, layer, position=(y, x), input_size=size)
    except UntraceableError as err:
        typer.echo(f"note: no analytic field ({err}); the box drawn is the gradient's support",
                   err=True)
        field = None
    shown = field or support
    words = f"stride {field.stride[0]:g}, field" if field else "gradient support"
    extra = " + global context" if field and field.global_context else ""
    fig = plot_receptive_field(raw[0], shown.box, erf, title=(
        f"{loaded.name} {layer} at ({y}, {x}), {of}: {words} {shown.size[0]} x "
        f"{shown.size[1]} px{extra}"))
    save_figure(fig, target)
    typer.echo(f"{loaded.name} {layer} at (y, x) = ({y}, {x}), input {size[0]} x {size[1]}")
    if field is not None:
        typer.echo(f"analytic box (y0, x0, y1, x1) {field.box}, clipped {field.clipped_box}, "
                   f"size {field.size[0]} x {field.size[1]}, stride {field.stride[0]:g}, offset "
                   f"{field.offset[0]:g}")
        if field.global_context:
            typer.echo("global context: a global pooling on the way (squeeze-and-excitation) "
                       "or a GroupNorm lets every pixel in; the box is the convolution path's")
    typer.echo(f"gradient support box {support.box} ({of})")
    typer.echo(f"wrote {target}")


# ------------------------------------------------------------------------------- recognition
@app.command(epilog="Examples:\n\n  featuremap classify docs/scene.png\n\n"
             "  featuremap classify docs/scene.png --cam backbone.block4 --out cam.png\n\n"
             "  featuremap classify photo.jpg -m resnet50 --weights DEFAULT --top 3 --cam layer4")
def classify(
    image: Image,
    model: ModelOpt = "shapes",
    weights: WeightsOpt = "DEFAULT",
    top: Annotated[int, typer.Option(help="How many classes to list.")] = 5,
    cam: Annotated[str | None, typer.Option(
        help="Draw a class-activation map of this layer ('auto': the last stage).")] = None,
    method: Annotated[str, typer.Option(help="grad-cam (any layer with feature maps) or cam "
                                        "(maps -> global pool -> one Linear layer).")
                      ] = "grad-cam",
    class_name: Annotated[str | None, typer.Option(
        "--class", help="Explain this class (name or index) instead of the top one.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="PNG for the CAM (default: cam.png, never overwritten).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """The top classes of an image, and where the network looked (class-activation map)."""
    from featuremap.tasks.classify import cam as cam_fn
    from featuremap.tasks.classify import classify as classify_fn
    from featuremap.tasks.classify import default_cam_layer, grad_cam

    if method not in ("grad-cam", "cam"):
        raise ConfigError(f"--method must be grad-cam or cam, got '{method}'.")
    loaded = _load(model, weights)
    typer.echo(str(classify_fn(loaded, image, top=top)))
    if cam is None:
        return
    from featuremap.plot import plot_overlay, save_figure

    layer = default_cam_layer(loaded) if cam == "auto" else cam
    index = int(class_name) if class_name and class_name.isdigit() else class_name
    fn = grad_cam if method == "grad-cam" else cam_fn
    result = fn(loaded, image, layer=layer, class_index=index)
    fig = plot_overlay(result.image, result.heatmap, label=result.method,
                       title=f"{result.method} at {result.layer}: '{result.class_name}' "
                       f"(p = {result.probability:.3f})")
    target = save_figure(fig, _target(out, "cam.png", overwrite))
    typer.echo(str(result))
    typer.echo(f"wrote {target}")


@app.command(epilog="Examples:\n\n  featuremap probe shapes-data --layers backbone.block1,"
             "backbone.block2,backbone.block4\n\n"
             "  featuremap probe my-photos -m resnet18 --weights DEFAULT --layers layer1,layer4"
             " --out probes.safetensors\n\nDATA_DIR holds one folder per class.")
def probe(
    data_dir: Annotated[Path, typer.Argument(help="A folder with one sub-folder of images per "
                                             "class.")],
    layers: Annotated[str, typer.Option("--layers", help="Comma-separated layers to probe.")],
    model: ModelOpt = "shapes",
    weights: WeightsOpt = "DEFAULT",
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Held-out share.")
                             ] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the split and the training.")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="Where to save the probes (.safetensors + .json; default probes.safetensors, "
        "never overwritten).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Linear probes on frozen maps: how well each layer's features tell the classes apart."""
    from rich.progress import Progress

    from featuremap.tasks.classify import probe as probe_fn

    target = _target(out, "probes.safetensors", overwrite)  # before the work, not after
    loaded = _load(model, weights)
    with Progress(console=_console(), transient=True, disable=not sys.stdout.isatty()) as bar:
        task = bar.add_task("images", total=None)
        result = probe_fn(loaded, data_dir, layers=[x for x in layers.split(",") if x],
                          test_fraction=test_fraction, seed=seed,
                          progress=lambda done, total: bar.update(task, completed=done,
                                                                  total=total))
    typer.echo(str(result))
    for path, why in list(result.skipped.items())[:5]:
        typer.echo(f"skipped {path}: {why}", err=True)
    if len(result.skipped) > 5:
        typer.echo(f"... and {len(result.skipped) - 5} more skipped", err=True)
    paths = result.save(target, overwrite=overwrite)
    typer.echo("wrote " + " and ".join(str(p) for p in paths))


# ------------------------------------------------------------------------------ segmentation
@app.command(epilog="Examples:\n\n  featuremap segment docs/scene.png\n\n"
             "  featuremap segment sample:coffee -m resnet18 --weights DEFAULT --layers "
             "layer1,layer2 --k 4\n\n  featuremap segment docs/scene.png --head head.safetensors")
def segment(
    image: Image,
    model: ModelOpt = "shapes",
    weights: WeightsOpt = "DEFAULT",
    layers: Annotated[str | None, typer.Option(
        "--layers", help="Cluster the per-pixel features of these layers (no training).")
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Number of clusters.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the clustering.")] = 0,
    head: Annotated[Path | None, typer.Option(
        help="A head fitted by 'featuremap fit-seg' (.safetensors).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="PNG to write (default: seg.png, never overwritten).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Per-pixel labels: clusters of feature maps, or the model's own segmentation head."""
    from featuremap.plot import plot_segmentation, save_figure
    from featuremap.tasks.segment import apply_seg_head, cluster_segments
    from featuremap.tasks.segment import segment as segment_fn

    if layers and head:
        raise ConfigError("give --layers (clusters) or --head (a fitted head), not both: the "
                          "head carries its own layers.")
    loaded = _load(model, weights)
    if head:
        seg = apply_seg_head(loaded, head, image)
    elif layers:
        seg = cluster_segments(loaded, image, layers=[x for x in layers.split(",") if x], k=k,
                               seed=seed)
    else:
        seg = segment_fn(loaded, image)
    target = save_figure(plot_segmentation(seg, title=f"{loaded.name}: {seg.method}"),
                         _target(out, "seg.png", overwrite))
    _print_shares(seg)
    typer.echo(f"wrote {target}")


def _print_shares(seg) -> None:
    from rich.table import Table

    h, w = seg.labels.shape
    table = Table(title=f"{seg.method} of {seg.model_name} ({h} x {w} pixels)", min_width=50)
    table.add_column("label")
    table.add_column("share of pixels", justify="right")
    for name, share in seg.shares().items():
        if share > 0:
            table.add_row(name, f"{share:.1%}")
    _console().print(table)


@app.command("fit-seg", epilog="Examples:\n\n  featuremap fit-seg scenes --layers "
             "backbone.block1,backbone.block2,backbone.block3,backbone.block4\n\n"
             "DATA_DIR holds images/ and masks/ (PNG label maps with the same file names).")
def fit_seg(
    data_dir: Annotated[Path, typer.Argument(help="A folder with images/ and masks/.")],
    layers: Annotated[str, typer.Option("--layers", help="Comma-separated frozen layers.")],
    model: ModelOpt = "shapes",
    weights: WeightsOpt = "DEFAULT",
    epochs: Annotated[int, typer.Option(help="Training epochs of the 1x1 head.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the split and the training.")] = 0,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Held-out share.")
                             ] = 0.25,
    ignore_index: Annotated[str, typer.Option(
        "--ignore-index", help="Mask label left out of training and scores (Pascal VOC's void "
        "border is 255), or 'none'.")] = "255",
    out: Annotated[Path | None, typer.Option(
        help="Where to save the head (.safetensors + .json; default head.safetensors, never "
        "overwritten).")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Train a 1x1-convolution segmentation head on frozen feature maps; report IoU per class."""
    from rich.progress import Progress

    from featuremap.tasks.segment import fit_seg_head

    target = _target(out, "head.safetensors", overwrite)
    void = None if ignore_index.strip().lower() == "none" else (
        int(ignore_index) if ignore_index.strip().isdigit() else None)
    if void is None and ignore_index.strip().lower() != "none":
        raise ConfigError(f"--ignore-index must be a mask label (an integer >= 0) or 'none', "
                          f"got '{ignore_index}'.")
    loaded = _load(model, weights)
    with Progress(console=_console(), transient=True, disable=not sys.stdout.isatty()) as bar:
        task = bar.add_task("fitting", total=None)
        result = fit_seg_head(loaded, data_dir, layers=[x for x in layers.split(",") if x],
                              epochs=epochs, seed=seed, test_fraction=test_fraction,
                              ignore_index=void,
                              progress=lambda done, total: bar.update(task, completed=done,
                                                                      total=total))
    _print_iou(result)
    saved = result.save(target, overwrite=overwrite)
    typer.echo(f"wrote {saved} and {saved.with_suffix('.json')}")


def _print_iou(result) -> None:
    import math

    from rich.table import Table

    table = Table(title=f"held-out IoU ({result.n_train} train / {result.n_test} test images, "
                        f"{len(result.skipped)} skipped)", min_width=60)
    table.add_column("class")
    table.add_column("IoU", justify="right")
    ious = result.per_class_iou
    pairs = ious.items() if isinstance(ious, dict) else zip(result.class_names, ious)
    for name, iou in pairs:
        table.add_row(name, "absent from test split" if math.isnan(iou) else f"{iou:.3f}")
    _console().print(table)
    typer.echo(f"mIoU {result.miou:.3f}, pixel accuracy {result.pixel_accuracy:.3f}")
    if getattr(result, "ignored_pixels", 0):
        typer.echo(f"left out {result.ignored_pixels:,} pixels labelled {result.ignore_index} "
                   "(--ignore-index)")


@app.command(epilog="Examples:\n\n  featuremap scenes shapes-data --n 140 --layout classes\n\n"
             "  featuremap scenes seg-data --n 80 --layout segmentation --seed 3")
def scenes(
    out: Annotated[Path, typer.Argument(help="A new folder to write the scenes into.")],
    n: Annotated[int, typer.Option("--n", help="Number of scenes.")] = 140,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same scenes.")] = 0,
    size: Annotated[int, typer.Option(help="Width and height in pixels.")] = 64,
    layout: Annotated[str, typer.Option(help="classes (one folder per class, for 'probe') or "
                                        "segmentation (images/ and masks/, for 'fit-seg').")
                      ] = "classes",
) -> None:
    """Write generated scenes of shapes as PNG files: a dataset for probe and fit-seg."""
    from featuremap.shapes import save_dataset

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"'{out}' exists and is not an empty folder; choose a new folder.")
    path = save_dataset(out, n, seed=seed, size=size, layout=layout)
    typer.echo(f"wrote {n} scenes ({layout} layout, {size}x{size}, seed {seed}) to {path}")


@app.command("train-demo", epilog="Examples:\n\n  featuremap train-demo --out my-shapes\n\n"
             "  featuremap show sample:coffee -m shapes --weights my-shapes/shapes.safetensors "
             "--layer backbone.block2")
def train_demo(
    out: Annotated[Path, typer.Option(help="Folder for shapes.safetensors and shapes.json.")
                   ] = Path("shapes-model"),
    seed: Annotated[int, typer.Option(help="Training seed (the shipped weights used 0).")] = 0,
    epochs: Annotated[int, typer.Option(help="Epochs of fresh scenes.")] = 10,
    n_train: Annotated[int, typer.Option("--n-train", help="Scenes per epoch.")] = 6000,
    eval_n: Annotated[int, typer.Option("--eval-n", help="Held-out scenes to evaluate on.")
                      ] = 1000,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="",
                                            help="Replace an existing model in --out.")] = False,
) -> None:
    """Train the bundled model from scratch with its recipe (about 5 minutes on 2 CPU cores)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from featuremap.train import build_bundle

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; give a folder.")
    existing = [p for p in (out / "shapes.safetensors", out / "shapes.json") if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"'{existing[0]}' exists; pass --overwrite to replace it, or choose "
                          "another --out folder.")
    columns = (TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} "
               "steps"), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, console=_console()) as bar:
        task = bar.add_task("train", total=None, info="")

        def tick(step: int, total: int, info: dict) -> None:
            bar.update(task, completed=step, total=total, info=f"loss {info['loss']:.3f}")
            if not sys.stdout.isatty() and step % max(1, total // epochs) == 0:
                # a pipe or a log file shows no live bar: one line per epoch instead
                typer.echo(f"epoch {step * epochs // total}/{epochs}: step {step}/{total}, "
                           f"loss {info['loss']:.3f}")

        meta = build_bundle(out, seed=seed, eval_n=eval_n, progress=tick, epochs=epochs,
                            n_train=n_train)
    m = meta["metrics"]
    typer.echo(f"held-out scenes (seed {m['seed']}, n {m['n']}): accuracy {m['accuracy']:.3f}, "
               f"mIoU {m['miou']:.3f}; trained in {meta['recipe']['train_seconds']:.0f} s")
    typer.echo(f"wrote {out / 'shapes.safetensors'} and {out / 'shapes.json'}")


def _version(value: bool) -> None:
    if value:
        from featuremap import __version__

        typer.echo(f"featuremap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar="",
                                          help="Print the version and exit.")] = False,
) -> None:
    """Compute, see, tune and use the feature maps of convolutional neural networks."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one 'error: ...' line and exit status 2."""
    try:
        code = app(args=argv, prog_name="featuremap", standalone_mode=False)
    except FeaturemapError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except OSError as err:  # e.g. a file that cannot be written: permissions, disk full
        where = f": {err.filename}" if err.filename else ""
        typer.echo(f"error: {err.strerror or err}{where}", err=True)
        sys.exit(2)
    except Exception as err:
        if not _usage_error(err):
            raise
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(err: Exception) -> bool:
    """Print a command-line usage error (unknown option, missing argument) as one line."""
    names = {c.__name__ for c in type(err).__mro__}
    if "Abort" in names:
        typer.echo("error: aborted.", err=True)
        return True
    if "UsageError" not in names:
        return False
    ctx = getattr(err, "ctx", None)
    path = ctx.command_path if ctx is not None else "featuremap"
    message = " ".join(err.format_message().split())
    if message:  # (none when the help was shown for a bare command)
        typer.echo(f"error: {message} (see '{path} --help')", err=True)
    return True

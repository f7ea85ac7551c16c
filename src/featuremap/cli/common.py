"""What every command shares: the app, option types, flag parsing, output paths, printing.

Printing rules: a result's text goes to stdout, its ``note: ...`` lines to stderr; every string
that came from the user or from a file (paths, names) is printed as data, never as markup or
terminal codes (:func:`featuremap.errors.printable`, rich's ``escape``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core

from featuremap.errors import ConfigError, printable
from featuremap.outputs import FIGURE_SUFFIXES


class _FlagHelp:
    """``--help`` shown as the flag it is (not as ``--help <bool>``)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class _Command(_FlagHelp, typer.core.TyperCommand):
    pass


class _Group(_FlagHelp, typer.core.TyperGroup):
    pass


class _App(typer.Typer):
    """The app whose commands show ``--help`` without a value type."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _App(
    cls=_Group,
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

# What this run wrote, so an interruption can say what is left.
WRITTEN: list[Path] = []

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
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.",
                                         metavar="")]
ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", help="Model name (see 'featuremap models'), e.g. shapes, resnet18, "
    "timm:resnet50.")]
WeightsOpt = Annotated[str, typer.Option(
    help="DEFAULT (trained: the bundled model's, or torchvision's from torch's cache), random, "
    "a torchvision weights name, or a .pth/.pt/.safetensors file.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", help="Where to run the network: cpu, cuda, cuda:N, mps, or auto (CUDA when "
    "available).")]
SaveMaps = Annotated[Path | None, typer.Option(
    "--save-maps", help="Also save the raw maps to this .npz file (float32, one array per "
    "layer).")]
# commands that read a dataset folder, or a store that 'featuremap extract' wrote from one
StoreModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Model name (see 'featuremap models'), e.g. shapes, resnet18. Default: "
    "shapes; with a store, none is loaded (its maps are used as they are): a model given is "
    "loaded and must be the one that made the store.")]
StoreWeightsOpt = Annotated[str | None, typer.Option(
    help="DEFAULT (the default), random, a torchvision weights name, or a .pth/.pt/.safetensors "
    "file; with a store, given alone, checks that the store's model had these weights.")]
StoreLayers = Annotated[str | None, typer.Option(
    "--layers", help="Comma-separated layers (required for a folder; with a store, default: "
    "all the layers it holds).")]

PICTURES = FIGURE_SUFFIXES  # what --out of a figure may be


# ------------------------------------------------------------------------------ flag parsing
def ints(text: str, name: str, count: tuple[int, ...] = (1, 2)) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) not in count:
        shapes = " or ".join({1: "N", 2: "H,W", 3: "D,Y,X"}[c] for c in count)
        raise ConfigError(f"--{name} must be {shapes} (integers), got '{printable(text)}'.")
    return values


def pair(text: str, name: str) -> int | tuple[int, int]:
    values = ints(text, name)
    return values[0] if len(values) == 1 else (values[0], values[1])


def padding_arg(text: str) -> int | tuple[int, int] | str:
    return text.lower() if text.lower() in ("same", "valid") else pair(text, "padding")


def int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name} must be integers separated by commas, got "
                          f"'{printable(text)}'.") from None
    if not values:
        raise ConfigError(f"--{name} is empty: give integers separated by commas, e.g. 0,5,9.")
    return values


def names(text: str, name: str) -> list[str]:
    """A comma-separated list of layer names; an empty one (``--layers ,``) is refused."""
    found = [x.strip() for x in text.split(",") if x.strip()]
    if not found:
        raise ConfigError(f"--{name} is empty: give one or more layer names separated by "
                          "commas ('featuremap layers MODEL' lists them).")
    return found


# ------------------------------------------------------------------------------ output paths
def target(out: Path | None, default: str, overwrite: bool, *,
           suffixes: Sequence[str] = PICTURES, what: str = "--out") -> Path:
    """Where to write, checked before any work: ``--out`` (its suffix, folder and whether it
    exists; a missing suffix gets the default's), else a default name that overwrites
    nothing."""
    from featuremap.outputs import check_output, free_path

    if out is None:
        return free_path(default)
    return check_output(out, suffixes=tuple(suffixes), default_suffix=Path(default).suffix,
                        overwrite=overwrite, what=what)


def wrote(*paths: Path) -> None:
    """Say which files were written (and remember them, for an interruption)."""
    WRITTEN.extend(paths)
    typer.echo("wrote " + " and ".join(printable(p) for p in paths))


# --------------------------------------------------------------------------------- printing
def console():
    from rich.console import Console

    # Not a terminal (a pipe, a file): wide enough that tables are never squeezed.
    return Console(width=None if sys.stdout.isatty() else 200)


def emit(result: Any) -> None:
    """A result's text on stdout; its ``note:`` lines on stderr (each line printed as data)."""
    for line in str(result).splitlines():
        typer.echo(printable(line), err=line.startswith("note: "))


def note(text: str) -> None:
    typer.echo(f"note: {printable(text)}", err=True)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
          caption: str | None = None, right: Sequence[str] = (), no_wrap: bool = False,
          min_width: int | None = None) -> None:
    """A rich table whose cells are data: never parsed for markup or emoji codes, control
    characters made visible."""
    from rich.table import Table
    from rich.text import Text

    def cell(value: Any) -> Text:
        return Text(printable(value))

    t = Table(title=cell(title), min_width=min_width, highlight=False)
    for column in columns:
        t.add_column(cell(column), justify="right" if column in right else "left",
                     no_wrap=no_wrap, highlight=False)
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    t.caption = cell(caption) if caption else None
    console().print(t)


def progress(label: str, *, rate: bool = False):
    """A transient progress bar (only on a terminal) and a ``tick(done, total)`` for it; with
    ``rate``, items per second and the time left too."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:,.1f} {label}/s" if task.speed else "")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(), Speed(), TextColumn("ETA"),
               TimeRemainingColumn()) if rate else Progress.get_default_columns()
    bar = Progress(*columns, console=console(), transient=True,
                   disable=not sys.stdout.isatty())
    task = bar.add_task(label, total=None)

    def tick(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, tick


def load(model: str, weights: str, device: str = "auto", *, quiet: bool = False):
    """load_model with the CLI's weights words; its notes go to stderr as 'note: ...' (unless
    quiet: for commands whose output does not depend on the weights)."""
    import warnings

    from featuremap.extraction import retain_memory
    from featuremap.zoo import load_model

    retain_memory()  # this process is ours: reuse freed memory instead of page-faulting it in
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # notes say what matters, once
        warnings.simplefilter("ignore", FutureWarning)  # torchvision's default-init notices
        loaded = load_model(model, weights=weights, device=device)
    for text in [] if quiet else loaded.notes:
        note(text)
    return loaded


def data_and_model(data: Any, layers: str | None, model: str | None, weights: str | None,
                   device: str, *, need_model: bool = False):
    """``(data, model, layers)`` of a command that reads a folder or a store: a folder needs a
    model (shapes unless --model says otherwise) and --layers; a store needs neither, and a
    model given (--model or --weights), or needed (``need_model``: the store's own), is loaded
    so that the library checks it made the store."""
    from featuremap.tasks.fromstore import as_store

    store = as_store(data)
    chosen = names(layers, "layers") if layers is not None else None
    if store is None:
        if chosen is None:
            raise ConfigError("--layers is required for a dataset folder (only a store has "
                              "default layers: the ones it holds).")
        return data, load(model or "shapes", weights or "DEFAULT", device), chosen
    if model is None and weights is None and not need_model:
        return store, None, chosen
    return store, load(model or store.header.model, weights or "DEFAULT", device), chosen


def list_skipped(skipped: Any) -> None:
    """The first five images a run could not read, with the reasons, on stderr."""
    items = list(skipped.items()) if isinstance(skipped, dict) else [(s, "") for s in skipped]
    for name, why in items[:5]:
        typer.echo(f"skipped {printable(name)}" + (f": {printable(why)}" if why else ""),
                   err=True)
    if len(items) > 5:
        typer.echo(f"... and {len(items) - 5} more skipped", err=True)

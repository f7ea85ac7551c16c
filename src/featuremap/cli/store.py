"""Whole datasets: extract the maps of every image into a resumable store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featuremap.cli.common import DeviceOpt, ModelOpt, Overwrite, WeightsOpt, app, emit, load
from featuremap.cli.common import names as layer_names
from featuremap.cli.common import progress as progress_bar


@app.command(epilog="Examples:\n\n  featuremap extract shapes-data --layers backbone.block1,"
             "backbone.block4 --out shapes.zarr\n\n"
             "  featuremap extract photos/ -m resnet18 --weights DEFAULT --layers layer2,layer4 "
             "--pool layer4=avg --out photos.zarr --dry-run\n\n"
             "  featuremap extract list.txt -m resnet50 --weights DEFAULT --layers layer4 --pool "
             "avg --dtype float16 --engine ray --out maps.zarr\n\n"
             "Run the same command again to resume an interrupted run; open the store with "
             "featuremap.open_store(PATH) or any Zarr reader.")
def extract(
    source: Annotated[str, typer.Argument(
        help="The images: a folder (recursive), class sub-folders, images/ + masks/, a .txt "
        "list of paths, or a glob such as 'photos/**/*.jpg'.")],
    layers: Annotated[str, typer.Option("--layers", help="Comma-separated layers to store.")],
    out: Annotated[Path, typer.Option("--out", help="The store's folder (Zarr v3; created, "
                                      "or resumed when it holds the same run).")],
    model: ModelOpt = "shapes",
    weights: WeightsOpt = "DEFAULT",
    pool: Annotated[str, typer.Option(
        help="none (maps N x C x H x W), avg or max (N x C), avgN or maxN (an N x N grid); "
        "per layer: layer4=avg,layer2=none (layers not named: none).")
    ] = "none",
    dtype: Annotated[str, typer.Option(help="float32 or float16.")] = "float32",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass and "
                                            "per chunk of the store.")] = 32,
    workers: Annotated[int, typer.Option(help="Threads decoding images.")] = 2,
    compression: Annotated[str, typer.Option(help="zstd, lz4 or none.")] = "zstd",
    device: DeviceOpt = "auto",
    engine: Annotated[str, typer.Option(help="local (this process) or ray (Ray Data; pip "
                                        "install 'featuremap[ray]').")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (default: a local "
                                                "Ray).")] = None,
    actors: Annotated[int, typer.Option(help="Ray actors, each holding the model once.")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", metavar="", help=(
        "Print the bytes per image and layer, the total, the free disk space and the estimated "
        "time (from a short timed run); write nothing."))] = False,
    overwrite: Overwrite = False,
) -> None:
    """Store the feature maps of every image of a dataset: resumable, on one machine or Ray."""
    from featuremap.store import extract_dataset
    from featuremap.store.plan import check_settings

    chosen = layer_names(layers, "layers")
    check_settings(batch_size, workers, dtype, compression)
    loaded = load(model, weights, device)
    bar, tick = progress_bar("images", rate=True)
    with bar:
        result = extract_dataset(loaded, source, layers=chosen, out=out, pool=pool, dtype=dtype,
                                 batch_size=batch_size, workers=workers,
                                 compression=compression, overwrite=overwrite, dry_run=dry_run,
                                 engine=engine, address=address, actors=actors, progress=tick)
    emit(result)
    if not dry_run and result.failed:
        typer.echo(f"{result.failed} image(s) could not be read: listed in the store's "
                   "manifest.json with the reasons", err=True)

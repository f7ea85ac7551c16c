"""The channel atlas of one layer: one sortable, self-contained page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from featuremap.cli.common import (
    DeviceOpt,
    ModelOpt,
    Overwrite,
    WeightsOpt,
    app,
    emit,
    load,
    target,
    wrote,
)

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
    overwrite: Overwrite = False,
) -> None:
    """What each channel of a layer detects: top patches, rendered image, concept, activation."""
    from featuremap.atlas.channels import SORT_KEYS, channel_atlas, parse_channels
    from featuremap.errors import ConfigError

    path = target(out, "featuremap-atlas.html", overwrite, suffixes=(".html", ".htm"))
    if sort not in SORT_KEYS or (sort == "rendered" and not visualize):
        raise ConfigError(f"--sort must be one of {', '.join(SORT_KEYS)} ('rendered' needs the "
                          f"rendered images), got '{sort}'.")
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
    from featuremap.cli.common import progress

    bar, update = progress("atlas", rate=False)
    task = bar.task_ids[0]

    def tick(stage: str, done: int, total: int) -> None:
        bar.update(task, description=STAGES.get(stage, stage))
        update(done, total)

    return bar, tick

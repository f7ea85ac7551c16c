"""Commands that use feature maps: recognition (classify, probe), segmentation (segment,
fit-seg), and the generated datasets and training of the bundled model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from featuremap.cli.common import (
    DeviceOpt,
    Image,
    ModelOpt,
    Overwrite,
    StoreLayers,
    StoreModelOpt,
    StoreWeightsOpt,
    WeightsOpt,
    app,
    console,
    data_and_model,
    emit,
    list_skipped,
    load,
    names,
    progress,
    table,
    target,
    wrote,
)
from featuremap.errors import ConfigError, printable

HEADS = (".safetensors",)
# probe and fit-seg read a dataset folder (the model computes the maps) or a store (it need not)
DataOrStore = Annotated[Path, typer.Argument(
    metavar="DATA_DIR", help="A dataset folder (see below), or a store that 'featuremap extract' "
    "wrote from one: its stored maps are used, no network runs.")]


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
    device: DeviceOpt = "auto",
    overwrite: Overwrite = False,
) -> None:
    """The top classes of an image, and where the network looked (class-activation map)."""
    from featuremap.tasks.cam import cam as cam_fn
    from featuremap.tasks.cam import default_cam_layer, grad_cam
    from featuremap.tasks.topk import check_top
    from featuremap.tasks.topk import classify as classify_fn

    if method not in ("grad-cam", "cam"):
        raise ConfigError(f"--method must be grad-cam or cam, got '{printable(method)}'.")
    check_top(top)
    path = target(out, "cam.png", overwrite) if cam is not None else None
    loaded = load(model, weights, device)
    layer = None
    if cam is not None:  # an unknown layer is refused before any work
        layer = default_cam_layer(loaded) if cam == "auto" else loaded.one_layer(cam)
    emit(classify_fn(loaded, image, top=top))
    if layer is None:
        return
    from featuremap.plot import plot_overlay, save_figure

    index = int(class_name) if class_name and class_name.isdigit() else class_name
    fn = grad_cam if method == "grad-cam" else cam_fn
    result = fn(loaded, image, layer=layer, class_index=index)
    fig = plot_overlay(result.image, result.heatmap, label=result.method, title=result.title)
    path = save_figure(fig, path)
    emit(result)
    wrote(path)


@app.command(epilog="Examples:\n\n  featuremap probe shapes-data --layers backbone.block1,"
             "backbone.block2,backbone.block4\n\n"
             "  featuremap probe my-photos -m resnet18 --weights DEFAULT --layers layer1,layer4"
             " --out probes.safetensors\n\n"
             "  featuremap extract shapes-data --layers backbone.block1,backbone.block4 --pool "
             "avg --out shapes.zarr\n\n  featuremap probe shapes.zarr --layers backbone.block4"
             "\n\nDATA_DIR holds one folder per class, or is a store extracted from such a "
             "folder (--pool none or avg): extract once, probe many times without running the "
             "network.")
def probe(
    data_dir: DataOrStore,
    layers: StoreLayers = None,
    model: StoreModelOpt = None,
    weights: StoreWeightsOpt = None,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Held-out share.")
                             ] = 0.25,
    seed: Annotated[int, typer.Option(help="Seed of the split and the training.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass "
                                            "(none with a store).")] = 32,
    out: Annotated[Path | None, typer.Option(
        help="Where to save the probes (.safetensors + .json; default probes.safetensors, "
        "never overwritten).")] = None,
    device: DeviceOpt = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Linear probes on frozen maps: how well each layer's features tell the classes apart."""
    from featuremap.tasks.probe import check_options
    from featuremap.tasks.probe import probe as probe_fn

    path = target(out, "probes.safetensors", overwrite, suffixes=HEADS)
    _sidecar_free(path, overwrite)
    check_options(test_fraction, batch_size, 1e-3)
    data, loaded, chosen = data_and_model(data_dir, layers, model, weights, device)
    bar, tick = progress("images")
    with bar:
        result = probe_fn(loaded, data, layers=chosen, test_fraction=test_fraction,
                          seed=seed, batch_size=batch_size, progress=tick)
    emit(result)
    list_skipped(result.skipped)
    wrote(*result.save(path, overwrite=overwrite))


def _sidecar_free(path: Path, overwrite: bool) -> None:
    """The .json written beside a .safetensors must not overwrite anything either."""
    sidecar = path.with_suffix(".json")
    if sidecar.exists() and not overwrite:
        raise ConfigError(f"'{printable(sidecar)}' exists (it would be written beside "
                          f"'{printable(path.name)}'): pass --overwrite to replace it, or choose "
                          "another --out.")


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
    device: DeviceOpt = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Per-pixel labels: clusters of feature maps, or the model's own segmentation head."""
    from featuremap.plot import plot_segmentation, save_figure
    from featuremap.tasks.clusters import check_k, cluster_segments
    from featuremap.tasks.seghead import apply_seg_head, load_seg_head
    from featuremap.tasks.segnets import segment as segment_fn

    if layers and head:
        raise ConfigError("give --layers (clusters) or --head (a fitted head), not both: the "
                          "head carries its own layers.")
    path = target(out, "seg.png", overwrite)
    chosen = names(layers, "layers") if layers is not None else None
    if chosen:
        check_k(k)
    fitted = load_seg_head(head) if head else None
    loaded = load(model, weights, device)
    if fitted is not None:
        seg = apply_seg_head(loaded, fitted, image)
    elif chosen:
        seg = cluster_segments(loaded, image, layers=chosen, k=k, seed=seed)
    else:
        seg = segment_fn(loaded, image)
    path = save_figure(plot_segmentation(seg, title=f"{loaded.name}: {seg.method}"), path)
    h, w = seg.labels.shape
    table(seg.title, ("label", "share of pixels"), seg.rows(), right=("share of pixels",),
          min_width=50)
    for text in seg.notes:
        typer.echo(f"note: {printable(text)}", err=True)
    wrote(path)
    del h, w


@app.command("fit-seg", epilog="Examples:\n\n  featuremap fit-seg scenes --layers "
             "backbone.block1,backbone.block2,backbone.block3,backbone.block4\n\n"
             "  featuremap extract scenes --layers backbone.block2,backbone.block4 --out "
             "scenes.zarr\n\n  featuremap fit-seg scenes.zarr --epochs 50\n\n"
             "DATA_DIR holds images/ and masks/ (PNG label maps with the same file names), or is "
             "a store extracted from such a folder (--pool none, or a grid such as avg8): its "
             "maps are read, the masks from their files, and the network does not run.")
def fit_seg(
    data_dir: DataOrStore,
    layers: StoreLayers = None,
    model: StoreModelOpt = None,
    weights: StoreWeightsOpt = None,
    epochs: Annotated[int, typer.Option(help="Training epochs of the 1x1 head.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the split and the training.")] = 0,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Held-out share.")
                             ] = 0.25,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass (none "
                                            "with a store) and per training step.")] = 16,
    ignore_index: Annotated[str, typer.Option(
        "--ignore-index", help="Mask label left out of training and scores (Pascal VOC's void "
        "border is 255), or 'none'.")] = "255",
    out: Annotated[Path | None, typer.Option(
        help="Where to save the head (.safetensors + .json; default head.safetensors, never "
        "overwritten).")] = None,
    device: DeviceOpt = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Train a 1x1-convolution segmentation head on frozen feature maps; report IoU per class."""
    from featuremap.tasks.segfit import check_fit, fit_seg_head

    path = target(out, "head.safetensors", overwrite, suffixes=HEADS)
    _sidecar_free(path, overwrite)
    void = None if ignore_index.strip().lower() == "none" else (
        int(ignore_index) if ignore_index.strip().isdigit() else None)
    if void is None and ignore_index.strip().lower() != "none":
        raise ConfigError(f"--ignore-index must be a mask label (an integer >= 0) or 'none', "
                          f"got '{printable(ignore_index)}'.")
    check_fit(epochs, test_fraction, batch_size, 0.05)
    data, loaded, chosen = data_and_model(data_dir, layers, model, weights, device)
    bar, tick = progress("fitting")
    with bar:
        result = fit_seg_head(loaded, data, layers=chosen, epochs=epochs, seed=seed,
                              test_fraction=test_fraction, batch_size=batch_size,
                              ignore_index=void, progress=tick)
    table(result.title, ("class", "IoU"), result.rows(), right=("IoU",), min_width=60)
    for line in result.summary_lines():
        typer.echo(line)
    list_skipped(result.skipped)
    saved = result.save(path, overwrite=overwrite)
    wrote(saved, saved.with_suffix(".json"))


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
    from featuremap.bundled.scenes import save_dataset

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"'{printable(out)}' exists and is not an empty folder; choose a new "
                          "folder.")
    _check_disk(out, n * size * size * 4, f"{n:,} scenes of {size} x {size}")
    path = save_dataset(out, n, seed=seed, size=size, layout=layout)
    typer.echo(f"wrote {n} scenes ({layout} layout, {size}x{size}, seed {seed}) to "
               f"{printable(path)}")


def _check_disk(out: Path, n_bytes: int, what: str) -> None:
    """Refuse, before writing, files that would not fit on the disk that holds ``out``."""
    import shutil

    folder = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    if n_bytes > free:
        raise ConfigError(f"{what} would take about {n_bytes / 1e9:.1f} GB on disk (at most 4 "
                          f"bytes a pixel), but '{printable(folder)}' has {free / 1e9:.1f} GB free;"
                          " write fewer or smaller scenes.")


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

    from featuremap.bundled.train import build_bundle, check_budget

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{printable(out)}' is a file; give a folder.")
    if not out.parent.is_dir():
        raise ConfigError(f"cannot write into '{printable(out)}': the folder "
                          f"'{printable(out.parent)}' does not exist.")
    existing = [p for p in (out / "shapes.safetensors", out / "shapes.json") if p.exists()]
    if existing and not overwrite:
        raise ConfigError(f"'{printable(existing[0])}' exists; pass --overwrite to replace it, "
                          "or choose another --out folder.")
    check_budget(epochs, n_train, 64, eval_n=eval_n)
    columns = (TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total} "
               "steps"), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, console=console()) as bar:
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
    wrote(out / "shapes.safetensors", out / "shapes.json")

"""The library's main paths on a CUDA device, against the same calls on the CPU, and timings.

Each check runs the same call on both devices (the bundled model, generated scenes; resnet18
with random weights seeded alike on both for the timings) and prints how far the results are
apart; TF32 is switched off so that the GPU computes in float32 as the CPU does. Nothing is
downloaded. Results also go to ``OUT/gpu_check.json``::

    python scripts/gpu_check.py --out results/
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

import featuremap as fm
from featuremap.bundled.scenes import save_dataset

BLOCKS = [f"backbone.block{i}" for i in range(1, 5)]
RESULTS: dict = {}
DEVICE = ["cuda"]  # --device cpu tries the script itself on a machine without a GPU


def check(name):
    def wrap(fn):
        def run(*args):
            began = time.perf_counter()
            try:
                RESULTS[name] = fn(*args)
                status = "ok"
            except Exception as err:  # noqa: BLE001 - report every check, whatever fails
                RESULTS[name] = {"error": f"{type(err).__name__}: {err}",
                                 "trace": traceback.format_exc(limit=4)}
                status = "FAILED"
            RESULTS[name]["check_seconds"] = round(time.perf_counter() - began, 2)
            print(f"[{status}] {name}: {json.dumps(RESULTS[name], default=str)[:600]}",
                  flush=True)
        return run
    return wrap


def sync() -> None:
    if DEVICE[0] == "cuda":
        torch.cuda.synchronize()


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1e-12, np.abs(b).max()))


@check("extract: every block, cuda vs cpu")
def extract(cpu, gpu, scenes):
    images = torch.stack([torch.from_numpy(cpu.preprocess(p)) for p in
                          sorted(Path(scenes, "images").iterdir())[:16]])
    a = fm.extract(cpu, images, layers=BLOCKS)
    b = fm.extract(gpu, images.to(DEVICE[0]), layers=BLOCKS)
    return {k: rel(b[k].cpu(), a[k]) for k in BLOCKS} | {"device": str(b[BLOCKS[0]].device)}


@check("top_patches block3, cuda vs cpu")
def patches(cpu, gpu, scenes):
    a = fm.top_patches(cpu, scenes, layer="backbone.block3", k=5)
    b = fm.top_patches(gpu, scenes, layer="backbone.block3", k=5)
    same = float(((a.images == b.images) & (a.positions == b.positions).all(-1)).mean())
    return {"same_winners": same, "values_rel": rel(b.values, a.values)}


@check("dissect blocks 1-4, cuda vs cpu")
def dissection(cpu, gpu, scenes):
    a = fm.dissect(cpu, scenes, layers=BLOCKS)
    b = fm.dissect(gpu, scenes, layers=BLOCKS)
    return {"iou_max_abs_diff": max(float(np.abs(x.iou - y.iou).max())
                                    for x, y in zip(a.layers, b.layers)),
            "detector_agreement": float(np.mean(np.concatenate(
                [x.detector == y.detector for x, y in zip(a.layers, b.layers)]))),
            "curve_cpu": a.curve, "curve_gpu": b.curve}


@check("channel_atlas block3 channels 0-7, cuda vs cpu")
def atlas(cpu, gpu, scenes, out):
    a = fm.channel_atlas(cpu, scenes, layer="backbone.block3", channels=range(8), k=4,
                         steps=64)
    b = fm.channel_atlas(gpu, scenes, layer="backbone.block3", channels=range(8), k=4,
                         steps=64)
    page = b.save(Path(out, "atlas-gpu.html"), overwrite=True)
    again = fm.channel_atlas(gpu, scenes, layer="backbone.block3", channels=range(8), k=4,
                             steps=64, seed=0)
    return {"concepts_equal": [r["concept"] for r in a.rows()] == [r["concept"] for r in b.rows()],
            "mean_rel": rel(b.mean, a.mean), "rendered_gpu": b.visualization.activation.tolist(),
            "start_gpu": b.visualization.start.tolist(),
            "rendered_beats_start": bool((b.visualization.activation >
                                          b.visualization.start).all()),
            "same_seed_images_max_diff": float(np.abs(b.visualization.images -
                                                      again.visualization.images).max()),
            "cpu_vs_gpu_images_max_diff": float(np.abs(a.visualization.images -
                                                       b.visualization.images).max()),
            "seconds": {"cpu": a.seconds, "gpu": b.seconds}, "page": str(page)}


@check("similarity blocks 1-4, cuda vs cpu")
def cka(cpu, gpu, scenes):
    a = fm.similarity(cpu, scenes, layers=BLOCKS, batch_size=16)
    b = fm.similarity(gpu, scenes, layers=BLOCKS, batch_size=16)
    return {"max_abs_diff": float(np.nanmax(np.abs(a.matrix - b.matrix)))}


@check("extract_dataset blocks 2 and 4, cuda vs cpu")
def store(cpu, gpu, scenes, tmp):
    a = fm.extract_dataset(cpu, scenes, layers=["backbone.block2", "backbone.block4"],
                           out=Path(tmp, "cpu.zarr"), pool="backbone.block4=avg", batch_size=16)
    b = fm.extract_dataset(gpu, scenes, layers=["backbone.block2", "backbone.block4"],
                           out=Path(tmp, "gpu.zarr"), pool="backbone.block4=avg", batch_size=16)
    x, y = fm.open_store(a.path), fm.open_store(b.path)
    return {k: rel(y.to_numpy(k), x.to_numpy(k)) for k in x.layers} | {
        "done": [int(len(x.done)), int(len(y.done))]}


@check("timing: visualize resnet18 layer3, 128 px, 256 steps, 16 channels")
def render_timing():
    torch.manual_seed(0)
    model = fm.load_model("resnet18", weights="random", device=DEVICE[0])
    fm.visualize(model, layer="layer3", channels=list(range(16)), size=128, steps=8)  # warm-up
    sync()
    v = fm.visualize(model, layer="layer3", channels=list(range(16)), size=128, steps=256)
    sync()
    return {"seconds_per_channel": round(v.seconds_per_channel, 3),
            "gain_min": float((v.activation / np.maximum(v.start, 1e-6)).min())}


@check("timing: channel_atlas resnet18 layer3 (no rendering), 256 images, cuda vs cpu")
def atlas_timing(tmp):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = Path(tmp, "photos")
    folder.mkdir()
    for i in range(256):
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), np.uint8)).save(folder / f"{i}.png")
    torch.manual_seed(0)
    cpu = fm.load_model("resnet18", weights="random")
    gpu = fm.load_model(copy.deepcopy(cpu.module), device=DEVICE[0])
    gpu.preprocess = cpu.preprocess
    times = {}
    for name, m in (("gpu", gpu), ("cpu", cpu), ("gpu_again", gpu)):
        began = time.perf_counter()
        r = fm.channel_atlas(m, folder, layer="layer3", k=9, visualize=False)
        times[name] = round(time.perf_counter() - began, 2)
    return {"seconds": times, "channels": len(r.channels),
            "cpu_over_gpu": round(times["cpu"] / times["gpu_again"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="skip the timings")
    args = parser.parse_args()
    DEVICE[0] = args.device
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    print(name, torch.__version__, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        scenes = save_dataset(Path(tmp, "scenes"), 64, seed=5, layout="segmentation")
        cpu, gpu = fm.load_model("shapes"), fm.load_model("shapes", device=args.device)
        extract(cpu, gpu, scenes)
        patches(cpu, gpu, scenes)
        dissection(cpu, gpu, scenes)
        atlas(cpu, gpu, scenes, args.out)
        cka(cpu, gpu, scenes)
        store(cpu, gpu, scenes, tmp)
        if not args.quick:
            render_timing()
            atlas_timing(tmp)
    RESULTS["device"] = name
    RESULTS["torch"] = torch.__version__
    (args.out / "gpu_check.json").write_text(json.dumps(RESULTS, indent=2, default=str))


if __name__ == "__main__":
    main()

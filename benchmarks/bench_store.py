"""The dataset store: what writing costs, whether memory stays flat, what resuming costs.

(a) Throughput: resnet18 (random weights), ``layer4`` average-pooled and ``layer2`` full,
    generated 224x224 images, batch 32. ``extract_dataset`` into a fresh store against the
    library's extraction without writing (the same decoding stream, the same engine, the same
    pooling and copy to NumPy, results dropped), interleaved round by round; the ratio is
    images/s with writing over images/s without, the median over rounds (target >= 0.98x).
    Each compression is measured as its own method in the same rounds.
(b) Peak memory: ``extract_dataset`` on 512 and on 4,096 images, each in a fresh process
    (``ru_maxrss``); target: within 10% of each other.
(c) Resume: the same call on a finished store of 4,096 images (target: under 2 s), and
    ``open_store`` on it.

Usage:
    python benchmarks/bench_store.py [--rounds 3] [--images 512] [--big 4096] [--parts abc]
                                     [--bc-model resnet18|shapes] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
LAYERS = ["layer2", "layer4"]


def make_images(folder: Path, n: int, size: int = 224) -> Path:
    """``n`` distinct JPEG photos-like images (smooth noise plus shapes), written once."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.random((n % 64 + 64, 8, 8, 3))
    for i in range(n):
        path = folder / f"img_{i:05d}.jpg"
        if path.exists():
            continue
        small = (base[i % len(base)] * 0.7 + rng.random((8, 8, 3)) * 0.3) * 255
        image = Image.fromarray(small.astype("uint8")).resize((size, size), Image.BILINEAR)
        image.save(path, quality=90)
    return folder


def baseline(model, data: Path, batch_size: int, workers: int) -> float:
    """The library's extraction without writing: images/s."""
    import torch

    from featuremap.datasets import batches, open_collection
    from featuremap.extraction import Extractor
    from featuremap.store.pooling import Pooling

    collection = open_collection(data, suffixes=None)
    extractor = Extractor(model, LAYERS, reuse_buffers=True)
    pools = {"layer2": Pooling.parse("none"), "layer4": Pooling.parse("avg")}
    start = time.perf_counter()
    with batches(collection, load=collection.reader(preprocess=model.preprocess),
                 batch_size=batch_size, workers=workers) as stream:
        for batch in stream:
            for group in batch.groups:
                got = extractor.run(torch.from_numpy(group.images))
                for name in LAYERS:
                    pools[name](got.maps[name]).detach().cpu().numpy().copy()
    return len(collection) / (time.perf_counter() - start)


def store_run(model, data: Path, out: Path, batch_size: int, workers: int, compression: str,
              pool: str = "layer4=avg") -> float:
    from featuremap.store import extract_dataset

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    extract_dataset(model, data, layers=LAYERS, out=out, pool=pool, batch_size=batch_size,
                    workers=workers, compression=compression)
    return len(os.listdir(data)) / (time.perf_counter() - start)


def part_a(args, tmp: Path) -> dict:
    import torch

    from featuremap import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model("resnet18", weights="random")
    data = make_images(tmp / "images", args.images)
    methods = {"no writing (baseline)": lambda: baseline(model, data, 32, args.workers)}
    for compression in ("none", "lz4", "zstd"):
        methods[f"store, {compression}"] = (
            lambda c=compression: store_run(model, data, tmp / "s.zarr", 32, args.workers, c))
    baseline(model, data, 32, args.workers)  # warm-up: page cache, allocator, threads
    rates: dict[str, list[float]] = {k: [] for k in methods}
    ratios: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(args.rounds):
        order = list(methods) if r % 2 == 0 else list(reversed(methods))
        got = {k: methods[k]() for k in order}
        for k, v in got.items():
            rates[k].append(v)
            ratios[k].append(v / got["no writing (baseline)"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f}/s" for k, v in got.items()),
              flush=True)
    rows = {k: {"images_per_s": statistics.median(rates[k]),
                "ratio": statistics.median(ratios[k])} for k in methods}
    print(f"\n(a) {args.images} images 224x224, resnet18, layer2 full + layer4, batch 32, "
          f"{args.workers} decode threads, {args.rounds} rounds")
    print(f"{'method':<24} {'images/s':>9} {'ratio':>7}")
    for k, v in rows.items():
        print(f"{k:<24} {v['images_per_s']:9.1f} {v['ratio']:7.3f}x")
    sizes = {}
    for compression in ("none", "lz4", "zstd"):
        store_run(model, data, tmp / f"size-{compression}.zarr", 32, args.workers, compression)
        sizes[compression] = sum(p.stat().st_size for p in
                                 (tmp / f"size-{compression}.zarr").rglob("*") if p.is_file())
        shutil.rmtree(tmp / f"size-{compression}.zarr")
    print("store size: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sizes.items()))
    return {"rows": rows, "store_bytes": sizes}


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {src!r})
import torch
torch.manual_seed(0)
from featuremap import load_model
from featuremap.store import extract_dataset, open_store
model = load_model({model!r}, weights={weights!r})
start = time.perf_counter()
extract_dataset(model, {data!r}, layers={layers!r}, out={out!r}, batch_size=32, workers=2,
                pool={pool!r})
first = time.perf_counter() - start
start = time.perf_counter()
again = extract_dataset(model, {data!r}, layers={layers!r}, out={out!r}, batch_size=32,
                        workers=2, pool={pool!r})
resume = time.perf_counter() - start
start = time.perf_counter()
store = open_store({out!r})
store.to_numpy({layers!r}[-1], 0, 32)
opened = time.perf_counter() - start
print(json.dumps({{"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": first, "resume_s": resume, "open_s": opened,
                  "already": again.already}}))
"""


def part_bc(args, tmp: Path) -> dict:
    out = {}
    for n in (args.images, args.big):
        data = make_images(tmp / f"images{n}", n)
        if args.bc_model == "shapes":  # the bundled 64 x 64 network: the same pipeline, faster
            model, weights, layers = "shapes", "DEFAULT", ["backbone.block2", "backbone.block4"]
        else:
            model, weights, layers = args.bc_model, "random", LAYERS
        code = CHILD.format(src=str(ROOT / "src"), data=str(data), layers=layers,
                            out=str(tmp / f"big{n}.zarr"), model=model, weights=weights,
                            pool=f"{layers[-1]}=avg")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True)
        out[n] = json.loads(done.stdout.strip().splitlines()[-1])
        shutil.rmtree(tmp / f"big{n}.zarr")
        print(f"(b/c) {args.bc_model}, {n} images: peak {out[n]['peak_mb']:.0f} MB, "
              f"{out[n]['seconds']:.1f} s "
              f"({n / out[n]['seconds']:.1f} images/s); resume of the finished store "
              f"{out[n]['resume_s']:.2f} s, open_store + one chunk {out[n]['open_s']:.3f} s",
              flush=True)
    a, b = out[args.images], out[args.big]
    print(f"peak memory {args.big} / {args.images} images: "
          f"{b['peak_mb'] / a['peak_mb']:.3f}x (target within 10%)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--big", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--parts", default="abc")
    parser.add_argument("--bc-model", default="resnet18",
                        help="model of parts b and c: resnet18 (random weights) or shapes")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    figures: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
                     "cpus": os.cpu_count(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="bench_store") as name:
        tmp = Path(name)
        if "a" in args.parts:
            figures["a"] = part_a(args, tmp)
        if "b" in args.parts or "c" in args.parts:
            figures["bc"] = part_bc(args, tmp)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

"""The Ray engine on this machine: what starting Ray costs, and its throughput against the local
engine on the same data in the same run.

(a) Start-up: the local Ray the engine starts (``ray_running(None, 1)``: ``ray.init`` with no
    dashboard), timed to ready; then the first task's round trip (a worker process started);
    then ``ray.shutdown``. Each round in the same process, the median over rounds.
(b) Throughput: resnet18 (random weights), ``layer4`` average-pooled and ``layer2`` full,
    generated 224x224 images, batch 32, into a fresh store each time: ``engine="local"``
    against ``engine="ray"`` (one actor, Ray already running), interleaved round by round, the
    order flipped every round. images/s is images over the whole call (for Ray: its actor's
    start, the model sent to it, every chunk); "steady" is the rate from the first stored
    chunk to the last (the fixed cost left out). The ratios are Ray over local in the same
    round, the median over rounds.

Usage:
    python benchmarks/bench_ray.py [--rounds 3] [--images 256] [--starts 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_store import LAYERS, make_images  # noqa: E402


def part_a(args) -> dict:
    import ray

    from featuremap.store.distributed import ray_running

    @ray.remote
    def nothing() -> int:
        return 1

    rows = []
    for r in range(args.starts):
        with contextlib.ExitStack() as stack:
            start = time.perf_counter()
            stack.enter_context(ray_running(None, 1))
            ready = time.perf_counter() - start
            start = time.perf_counter()
            ray.get(nothing.remote())
            first_task = time.perf_counter() - start
            start = time.perf_counter()
        shutdown = time.perf_counter() - start
        rows.append({"init_s": ready, "first_task_s": first_task, "shutdown_s": shutdown})
        print(f"start {r + 1}: ray.init {ready:.2f} s, first task {first_task:.2f} s, "
              f"shutdown {shutdown:.2f} s", flush=True)
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    print(f"\n(a) Ray start-up, median of {args.starts}: ray.init to ready {med['init_s']:.2f} s, "
          f"first task {med['first_task_s']:.2f} s, shutdown {med['shutdown_s']:.2f} s; "
          f"together {sum(med.values()):.1f} s")
    return {"rounds": rows, "median": med}


def timed_run(model, data: Path, out: Path, n: int, engine: str, workers: int) -> dict:
    from featuremap.store import extract_dataset

    shutil.rmtree(out, ignore_errors=True)
    stamps: list[tuple[float, int]] = []
    start = time.perf_counter()
    extract_dataset(model, data, layers=LAYERS, out=out, pool="layer4=avg", batch_size=32,
                    workers=workers, engine=engine,
                    progress=lambda done, total: stamps.append((time.perf_counter(), done)))
    seconds = time.perf_counter() - start
    chunks = [(t, d) for t, d in stamps if d > 0]
    (t0, d0), (t1, d1) = chunks[0], chunks[-1]
    shutil.rmtree(out, ignore_errors=True)
    return {"images_per_s": n / seconds, "seconds": seconds, "first_chunk_s": t0 - start,
            "steady_per_s": (d1 - d0) / (t1 - t0) if t1 > t0 else float("nan")}


def part_b(args, tmp: Path) -> dict:
    import ray
    import torch

    from featuremap import load_model
    from featuremap.store.distributed import ray_running

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model("resnet18", weights="random")
    data = make_images(tmp / "images", args.images)
    runs = {engine: (lambda e=engine: timed_run(model, data, tmp / f"{e}.zarr", args.images, e,
                                                args.workers))
            for engine in ("local", "ray")}
    with ray_running(None, 1):
        assert ray.is_initialized()
        runs["local"]()  # warm-up: page cache, allocator, threads
        got: dict[str, list[dict]] = {k: [] for k in runs}
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            this = {k: runs[k]() for k in order}
            for k, v in this.items():
                got[k].append(v)
            print(f"round {r + 1}: " + ", ".join(
                f"{k} {v['images_per_s']:.1f}/s (first chunk {v['first_chunk_s']:.1f} s, steady "
                f"{v['steady_per_s']:.1f}/s)" for k, v in this.items()), flush=True)
    rows = {k: {m: statistics.median(v[m] for v in got[k]) for m in got[k][0]} for k in got}
    ratio = statistics.median(b["images_per_s"] / a["images_per_s"]
                              for a, b in zip(got["local"], got["ray"]))
    steady = statistics.median(b["steady_per_s"] / a["steady_per_s"]
                               for a, b in zip(got["local"], got["ray"]))
    print(f"\n(b) {args.images} images 224x224, resnet18, layer2 full + layer4 avg, batch 32, "
          f"{args.workers} decode threads, one Ray actor, {args.rounds} rounds (medians)")
    print(f"{'engine':<7} {'images/s':>9} {'seconds':>8} {'first chunk s':>14} "
          f"{'steady images/s':>16}")
    for k, v in rows.items():
        print(f"{k:<7} {v['images_per_s']:9.1f} {v['seconds']:8.1f} {v['first_chunk_s']:14.2f} "
              f"{v['steady_per_s']:16.1f}")
    print(f"ray / local: {ratio:.3f}x over the whole call, {steady:.3f}x steady")
    return {"rows": rows, "rounds": got, "ratio": ratio, "steady_ratio": steady}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--parts", default="ab")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import ray
    import torch

    load = os.getloadavg()
    figures: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
                     "cpus": os.cpu_count(), "torch": torch.__version__,
                     "ray": ray.__version__, "load_average_before": load}
    print(f"load average before: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
          f"on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_ray") as name:
        if "a" in args.parts:
            figures["a"] = part_a(args)
        if "b" in args.parts:
            figures["b"] = part_b(args, Path(name))
    load = os.getloadavg()
    figures["load_average_after"] = load
    print(f"load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

"""The channel atlas: what top_patches costs over extraction, whether its memory stays flat, how
close dissect's streaming quantiles come to the exact ones, and the dissection of the bundled
model.

(a) Throughput: the bundled model on generated 64x64 scenes (class folders), batch 32. The
    library's extraction alone (the same decoding stream, an Extractor with reused buffers that
    stops after the layer, maps dropped) against ``top_patches`` on the same data: its streaming
    pass alone (the running top-k merged per batch), and the whole call (the pass, then reading
    the winning images again and cropping their fields); interleaved round by round, for an
    early layer (block1: the cheapest pass, the largest maps per channel) and the last
    (block4: the most channels and winners). The ratio is images/s with the bookkeeping over
    images/s without, the median over rounds (target >= 0.95x). On a busy machine whole passes
    vary more than the bookkeeping costs, so each round also times, batch by batch, the forward
    pass and the running top-k back to back: forward / (forward + top-k).
(b) Peak memory: ``top_patches`` (block2, k 9, every channel) on two dataset sizes, each in a
    fresh process (``ru_maxrss``), against a process that loads the model and extracts one
    batch; target: flat in the dataset size.
(c) Quantiles: on 100 segmentation scenes, every block's upsampled maps in memory: the
    streaming estimate of each channel's top-0.5% value against ``np.quantile``.
(d) Dissection: ``dissect`` of the four blocks of the bundled model on held-out segmentation
    scenes (seed 12345), the share of detectors per category from low to high, and
    ``check_labels``: for every shape detector, the share of its top 9 patches that lie on its
    shape. ``--figures DIR`` writes the dissection and one detector's patches as PNGs.
(e) The atlas of one layer (``channel_atlas``, every channel, no rendering) against the calls
    it joins, on the same segmentation scenes, interleaved round by round: ``dissect`` of the
    layer alone, and ``dissect`` then ``top_patches`` as a user would call them one after the
    other. One forward pass per batch feeds the top patches, the mean activation and the
    dissection's first pass, so the atlas should cost about ``dissect`` alone plus the crops,
    and less than the two calls together (target: atlas / (dissect + top_patches) < 0.8x).

Usage:
    python benchmarks/bench_atlas.py [--rounds 5] [--images 640] [--sizes 400,4000]
                                     [--scenes 300] [--parts abcde] [--figures DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
BLOCKS = ["backbone.block1", "backbone.block2", "backbone.block3", "backbone.block4"]


def extraction_alone(model, data: Path, layer: str) -> float:
    """Seconds for the library's extraction of ``layer`` over ``data``, results dropped."""
    import torch

    from featuremap.datasets import batches, open_collection
    from featuremap.extraction import Extractor

    collection = open_collection(data, suffixes=None)
    extractor = Extractor(model, [layer], reuse_buffers=True)
    start = time.perf_counter()
    with batches(collection, load=collection.reader(preprocess=model.preprocess),
                 batch_size=32) as stream:
        for batch in stream:
            for group in batch.groups:
                extractor.run(torch.from_numpy(group.images))
    return time.perf_counter() - start


def pass_only(model, data: Path, layer: str) -> float:
    """Seconds for top_patches' streaming pass alone (no crops)."""
    from featuremap.atlas.patches import RunningTopK
    from featuremap.atlas.sources import open_source

    start = time.perf_counter()
    source = open_source(model, data, layers=[layer], batch_size=32)
    running = RunningTopK(9)
    for piece in source.stream():
        running.add(piece.maps[layer], piece.indices, layer)
    return time.perf_counter() - start


def paired(model, data: Path, layer: str) -> tuple[float, float]:
    """Seconds of forward passes and of the running top-k, timed back to back per batch."""
    import torch

    from featuremap.atlas.patches import RunningTopK
    from featuremap.datasets import batches, open_collection
    from featuremap.extraction import Extractor

    collection = open_collection(data, suffixes=None)
    extractor = Extractor(model, [layer], reuse_buffers=True)
    running = RunningTopK(9)
    forward = bookkeeping = 0.0
    with batches(collection, load=collection.reader(preprocess=model.preprocess),
                 batch_size=32) as stream:
        for batch in stream:
            for group in batch.groups:
                start = time.perf_counter()
                got = extractor.run(torch.from_numpy(group.images))
                middle = time.perf_counter()
                running.add(got.maps[layer], group.indices, layer)
                bookkeeping += time.perf_counter() - middle
                forward += middle - start
    return forward, bookkeeping


def whole_call(model, data: Path, layer: str) -> float:
    from featuremap.atlas import top_patches

    start = time.perf_counter()
    top_patches(model, data, layer=layer, k=9, batch_size=32)
    return time.perf_counter() - start


def throughput(rounds: int, n: int, tmp: Path) -> dict:
    import torch

    from featuremap.bundled.scenes import save_dataset
    from featuremap.zoo import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model("shapes")
    data = save_dataset(tmp / "classes", n, seed=4, layout="classes")
    methods = {"extraction": extraction_alone, "pass": pass_only, "top_patches": whole_call}
    out = {}
    for layer in ("backbone.block1", "backbone.block4"):
        for method in methods.values():  # warm-up
            method(model, data, layer)
        times: dict[str, list[float]] = {k: [] for k in methods}
        for r in range(rounds):
            order = list(methods) if r % 2 == 0 else list(methods)[::-1]
            for name in order:
                times[name].append(methods[name](model, data, layer))
        ratios = {name: statistics.median(b / t for b, t in zip(times["extraction"], times[name]))
                  for name in ("pass", "top_patches")}
        pairs = [paired(model, data, layer) for _ in range(rounds)]
        ratios["per_batch"] = statistics.median(f / (f + b) for f, b in pairs)
        out[layer] = {"images": n, "rounds": rounds,
                      "images_per_s": {k: n / statistics.median(v) for k, v in times.items()},
                      "ratio": ratios,
                      "ms_per_batch": {"forward": 1e3 * statistics.median(f for f, _ in pairs)
                                       / (n / 32),
                                       "top_k": 1e3 * statistics.median(b for _, b in pairs)
                                       / (n / 32)}}
        print(f"{layer}: {n} images, {rounds} rounds; images/s: "
              + ", ".join(f"{k} {v:.0f}" for k, v in out[layer]["images_per_s"].items())
              + f"; ratio to extraction alone: pass {ratios['pass']:.3f}x, whole call "
              f"{ratios['top_patches']:.3f}x; per batch, forward "
              f"{out[layer]['ms_per_batch']['forward']:.1f} ms, top-k "
              f"{out[layer]['ms_per_batch']['top_k']:.2f} ms: {ratios['per_batch']:.4f}x "
              f"(target >= 0.95x)")
    return out


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {src!r})
import torch
torch.set_num_threads(2)
from featuremap import load_model, extract, top_patches
model = load_model("shapes")
start = time.perf_counter()
if {run!r}:
    top_patches(model, {data!r}, layer="backbone.block2", k=9)
else:
    extract(model, torch.zeros(32, 3, 64, 64), layers=["backbone.block2"])
print(json.dumps({{"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - start}}))
"""


def child(data: str, run: bool) -> dict:
    code = CHILD.format(src=str(ROOT / "src"), data=data, run=run)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(sizes: list[int], tmp: Path) -> dict:
    from featuremap.bundled.scenes import save_dataset

    base = child(str(tmp), run=False)
    print(f"baseline (model + one batch of 32): peak {base['peak_mb']:.0f} MB")
    out = {"baseline_mb": base["peak_mb"], "sizes": {}}
    for n in sizes:
        data = save_dataset(tmp / f"mem{n}", n, seed=5, layout="classes")
        got = child(str(data), run=True)
        out["sizes"][n] = got
        print(f"top_patches block2 k 9 on {n:,} images: peak {got['peak_mb']:.0f} MB "
              f"({got['peak_mb'] - base['peak_mb']:+.0f} MB over the baseline), "
              f"{got['seconds']:.1f} s")
    return out


def quantiles(tmp: Path) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from featuremap.atlas.dissection import BINS
    from featuremap.atlas.quantile import TopQuantile
    from featuremap.bundled.scenes import make_dataset
    from featuremap.extraction import Extractor
    from featuremap.zoo import load_model

    model = load_model("shapes")
    images, _, _ = make_dataset(100, seed=6)
    mean = torch.tensor(model.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocess.std).view(1, 3, 1, 1)
    maps = Extractor(model, BLOCKS).run((torch.from_numpy(images) - mean) / std).maps
    out = {}
    for layer, m in maps.items():
        estimator = TopQuantile(m.shape[1], 0.005, bins=BINS)
        values = []
        for start in range(0, 100, 20):  # batch by batch, as dissect streams them
            up = F.interpolate(m[start: start + 20], size=(64, 64), mode="bilinear",
                               align_corners=False).transpose(0, 1).reshape(m.shape[1], -1)
            estimator.add(up)
            values.append(up.numpy())
        x = np.concatenate(values, 1)
        exact = np.quantile(x, 0.995, axis=1)
        got = estimator.thresholds().numpy()
        error = np.abs(got - exact)
        spread = x.max(1) - x.min(1)
        above = (x > got[:, None]).mean(1)
        out[layer] = {"median_rel": float(np.median(error / np.abs(exact))),
                      "max_rel": float(np.max(error / np.abs(exact))),
                      "max_of_range": float(np.max(error / spread)),
                      "max_in_bins": float(np.max(error / estimator.max_error.numpy())),
                      "share_above": [float(above.min()), float(above.max())]}
        r = out[layer]
        print(f"{layer}: |estimate - np.quantile| median {r['median_rel']:.2e}, max "
              f"{r['max_rel']:.2e} of the value; max {r['max_of_range']:.2e} of the range "
              f"({r['max_in_bins']:.2f} bins); share above the estimate "
              f"{r['share_above'][0]:.4%}..{r['share_above'][1]:.4%}")
    return out


def dissection(n: int, tmp: Path, figures: Path | None) -> dict:
    from featuremap.atlas import check_labels, dissect, top_patches
    from featuremap.bundled.scenes import save_dataset
    from featuremap.plot import plot_dissection, plot_top_patches, save_figure
    from featuremap.zoo import load_model

    model = load_model("shapes")
    data = save_dataset(tmp / "seg", n, seed=12345, layout="segmentation")
    start = time.perf_counter()
    d = dissect(model, data, layers=BLOCKS)
    took = time.perf_counter() - start
    print(d)
    print(f"({took:.0f} s)")
    check = check_labels(model, data, d, k=9)
    print(check)
    by_shape: dict[str, list[tuple[float, float]]] = {}
    for row in check.rows:
        by_shape.setdefault(f"{row[0]} {row[2]}", []).append((row[4], row[5]))
    for key, shares in by_shape.items():
        centre = [a for a, _ in shares]
        print(f"  {key}: {len(shares)} detectors; centre on the shape: median "
              f"{statistics.median(centre):.0%} (min {min(centre):.0%}, max {max(centre):.0%})"
              f"; cell on it: median {statistics.median(b for _, b in shares):.0%}")
    if figures is not None:
        save_figure(plot_dissection(d), figures / "atlas-dissection.png", dpi=90)
        layer = d.layer("backbone.block4")
        circles = [c for c, concept, _ in layer.detectors("shape") if concept.name == "circle"]
        rings = [c for c, concept, _ in layer.detectors("shape") if concept.name == "ring"]
        chosen = (circles[:2] + rings[:1] + [c for c, _, _ in layer.detectors("shape")][:1])
        top = top_patches(model, data, layer="backbone.block4", k=6, channels=chosen)
        save_figure(plot_top_patches(top), figures / "atlas-patches.png", dpi=80)
    return {"dissection": d.to_dict()["curve"], "seconds": took, "check": check.to_dict()}


def joined(rounds: int, n: int, tmp: Path) -> dict:
    import torch

    from featuremap.atlas import channel_atlas, dissect, top_patches
    from featuremap.bundled.scenes import save_dataset
    from featuremap.zoo import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_model("shapes")
    data = save_dataset(tmp / "joined", n, seed=8, layout="segmentation")
    out = {}
    for layer in ("backbone.block1", "backbone.block3"):
        def one_dissect(layer: str = layer) -> None:
            dissect(model, data, layers=[layer])

        def both(layer: str = layer) -> None:
            dissect(model, data, layers=[layer])
            top_patches(model, data, layer=layer, k=9)

        def atlas(layer: str = layer) -> None:
            channel_atlas(model, data, layer=layer, k=9, visualize=False)

        methods = {"dissect": one_dissect, "dissect+top_patches": both, "atlas": atlas}
        for method in methods.values():  # warm-up
            method()
        times: dict[str, list[float]] = {k: [] for k in methods}
        for r in range(rounds):
            order = list(methods) if r % 2 == 0 else list(methods)[::-1]
            for name in order:
                start = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - start)
        ratio = {k: statistics.median(a / b for a, b in zip(times["atlas"], times[k]))
                 for k in ("dissect", "dissect+top_patches")}
        out[layer] = {"images": n, "rounds": rounds,
                      "seconds": {k: statistics.median(v) for k, v in times.items()},
                      "atlas_over": ratio}
        print(f"{layer}: {n} scenes, {rounds} rounds; seconds: " + ", ".join(
            f"{k} {v:.2f}" for k, v in out[layer]["seconds"].items())
            + f"; atlas / dissect {ratio['dissect']:.3f}x, atlas / (dissect + top_patches) "
            f"{ratio['dissect+top_patches']:.3f}x (target < 0.8x)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--sizes", default="400,4000")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--parts", default="abcde")
    parser.add_argument("--figures", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    figures: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.platform(),
                     "cpus": os.cpu_count(), "python": platform.python_version(),
                     "torch": torch.__version__, "load_average": os.getloadavg()}
    print(f"{figures['date']}, {figures['machine']}, {figures['cpus']} CPUs, torch "
          f"{figures['torch']}; load average {figures['load_average'][0]:.1f}")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if "a" in args.parts:
            figures["throughput"] = throughput(args.rounds, args.images, tmp)
        if "b" in args.parts:
            figures["memory"] = memory([int(s) for s in args.sizes.split(",")], tmp)
        if "c" in args.parts:
            figures["quantiles"] = quantiles(tmp)
        if "d" in args.parts:
            figures["dissection"] = dissection(args.scenes, tmp, args.figures)
        if "e" in args.parts:
            figures["atlas"] = joined(args.rounds, args.scenes, tmp)
    figures["load_average_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()

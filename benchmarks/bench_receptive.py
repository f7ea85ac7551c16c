"""Receptive fields and one value's arithmetic, against a plain forward pass, in one process.

(a) The analytic receptive field of every layer of resnet50 (one torch.fx trace and one shape
    pass) and the empirical field of one value (a forward and a backward pass), as ratios to
    one plain forward pass of one 224x224 image.
(b) ``featuremap.explain`` of one value of an early (layer1.0.conv2) and a late
    (layer4.2.conv2) convolution: the pass stops at the layer, then the engine forms the
    products; ratios to the same plain forward.

Rounds are interleaved (every method once per round) and the medians compared.

Run:  python benchmarks/bench_receptive.py [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date

import torch
import torchvision

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from featuremap.receptive import empirical_receptive_field, receptive_fields  # noqa: E402
from featuremap.value import explain  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    image = torch.rand(1, 3, 224, 224)

    def forward():
        with torch.no_grad():
            model(image)

    methods = {
        "forward (baseline)": forward,
        "analytic, every layer": lambda: receptive_fields(model, input_size=224),
        "empirical, one value (layer3)": lambda: empirical_receptive_field(
            model, "layer3", position=(7, 7), image=image),
        "explain layer1.0.conv2": lambda: explain(model, image, layer="layer1.0.conv2",
                                                  at=(5, 28, 28)),
        "explain layer4.2.conv2": lambda: explain(model, image, layer="layer4.2.conv2",
                                                  at=(5, 3, 3)),
    }
    for fn in methods.values():  # warm up
        fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["forward (baseline)"])
    fields = receptive_fields(model, input_size=224)
    print(f"resnet50, one 224x224 image, {args.rounds} interleaved rounds, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    print(f"{'method':34} {'median ms':>10} {'ratio':>7}")
    rows = {}
    for name, values in times.items():
        median = statistics.median(values)
        rows[name] = {"median_s": median, "ratio": median / base}
        print(f"{name:34} {median * 1e3:10.1f} {median / base:7.3f}")
    print(f"check: layer4 field {fields['layer4'].size} stride {fields['layer4'].stride}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"date": str(date.today()), "machine": platform.platform(),
                       "torch": torch.__version__, "torchvision": torchvision.__version__,
                       "threads": torch.get_num_threads(), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()

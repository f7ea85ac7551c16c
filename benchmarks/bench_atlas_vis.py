"""Feature visualisation and layer similarity: seconds per channel, and CKA against extraction.

(a) ``featuremap.visualize`` on resnet18 ``layer3`` (random weights: the cost does not depend on
    them) at 128 px, 256 steps, 8 channels in one batch, and on the bundled model's last block
    (``backbone.block4``) at its 64 px: seconds per channel (the call's time over its channels),
    against the target (<= 5 s per channel for resnet18 layer3) and as a ratio to a baseline of
    the same steps of plain torch: a forward pass of the same batch stopped after the layer by a
    hook, and the backward pass of the channels' means to the input. The process's CPU time per
    channel is printed too: on a shared machine it says what the work costs when wall time
    says mostly how busy the machine was.
(b) ``featuremap.similarity`` (linear CKA by minibatches, every pair of layers) against the
    extraction alone (``featuremap.Extractor`` over the same minibatches and layers): the bundled
    model's four blocks on 512 generated 64 x 64 scenes, and resnet18's four stages (random
    weights) on 128 random 224 x 224 images; minibatches of 64, maps flattened.

Rounds are interleaved (baseline, then featuremap, every round) and medians reported.

Run:  python benchmarks/bench_atlas_vis.py [--rounds 2] [--steps 256] [--threads N]
      [--parts ab] [--json out.json]
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
import featuremap as fm  # noqa: E402
from featuremap.bundled.network import normalize  # noqa: E402
from featuremap.bundled.scenes import make_dataset  # noqa: E402

TARGET = 5.0  # seconds per channel, resnet18 layer3, 128 px, 256 steps
CHANNELS = list(range(8))


class _Stop(Exception):
    pass


def plain_steps(module: torch.nn.Module, layer: str, size: int, steps: int) -> float:
    """Seconds of ``steps`` plain forward (stopped after ``layer``) and backward passes of a
    batch of ``len(CHANNELS)`` images, each to its channel's mean."""
    target = dict(module.named_modules())[layer]
    kept: list[torch.Tensor] = []

    def hook(_m, _a, out):
        kept.append(out)
        raise _Stop

    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    handle = target.register_forward_hook(hook)
    x = torch.rand(len(CHANNELS), 3, size, size, requires_grad=True)
    rows, cols = torch.arange(len(CHANNELS)), torch.tensor(CHANNELS)
    start = time.perf_counter()
    try:
        for _ in range(steps):
            try:
                module(x)
            except _Stop:
                pass
            kept.pop()[rows, cols].mean((1, 2)).sum().backward()
    finally:
        handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    return time.perf_counter() - start


def part_a(args) -> dict:
    torch.manual_seed(0)
    cases = {
        "resnet18 layer3, 128 px": (fm.Model.wrap(torchvision.models.resnet18().eval()),
                                    "layer3", 128),
        "shapes backbone.block4, 64 px": (fm.load_model("shapes"), "backbone.block4", 64),
    }
    rows = {}
    for name, (model, layer, size) in cases.items():
        fm.visualize(model, layer=layer, channels=CHANNELS, size=size, steps=2)  # warm up
        base, ours, cpu = [], [], []
        for _ in range(args.rounds):
            base.append(plain_steps(model.module, layer, size, args.steps))
            started = time.process_time()
            ours.append(fm.visualize(model, layer=layer, channels=CHANNELS, size=size,
                                     steps=args.steps).seconds)
            cpu.append(time.process_time() - started)
        per_channel = statistics.median(ours) / len(CHANNELS)
        ratio = statistics.median(o / b for o, b in zip(ours, base))
        rows[name] = {"seconds_per_channel": per_channel,
                      "cpu_seconds_per_channel": statistics.median(cpu) / len(CHANNELS),
                      "plain_seconds_per_channel": statistics.median(base) / len(CHANNELS),
                      "ratio_to_plain": ratio, "rounds": args.rounds, "steps": args.steps}
        print(f"{name:32} {per_channel:8.2f} s/channel, CPU "
              f"{rows[name]['cpu_seconds_per_channel']:.2f} s/channel (plain torch "
              f"{rows[name]['plain_seconds_per_channel']:.2f} s/channel; ratio {ratio:.2f})")
    verdict = rows["resnet18 layer3, 128 px"]["seconds_per_channel"]
    print(f"target: <= {TARGET:g} s per channel for resnet18 layer3 at 128 px, "
          f"{args.steps} steps: {verdict:.2f} ({'PASS' if verdict <= TARGET else 'FAIL'})")
    return rows


def _extraction(model, images: torch.Tensor, layers: list[str], batch: int) -> float:
    extractor = fm.Extractor(model, layers, reuse_buffers=True)
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        extractor.run(images[i:i + batch])
    return time.perf_counter() - start


def part_b(args) -> dict:
    torch.manual_seed(0)
    scenes = normalize(torch.from_numpy(make_dataset(512, seed=3, size=64)[0]))
    cases = {
        "shapes, 4 blocks, 512 x 64 px": (fm.load_model("shapes"), scenes,
                                          [f"backbone.block{i}" for i in range(1, 5)]),
        "resnet18, 4 stages, 128 x 224 px": (fm.Model.wrap(torchvision.models.resnet18().eval()),
                                             torch.rand(128, 3, 224, 224),
                                             ["layer1", "layer2", "layer3", "layer4"]),
    }
    rows = {}
    for name, (model, images, layers) in cases.items():
        fm.similarity(model, images[:8], layers=layers, batch_size=4)  # warm up
        base, ours = [], []
        for _ in range(args.rounds):
            base.append(_extraction(model, images, layers, 64))
            start = time.perf_counter()
            fm.similarity(model, images, layers=layers, batch_size=64)
            ours.append(time.perf_counter() - start)
        ratio = statistics.median(o / b for o, b in zip(ours, base))
        rows[name] = {"similarity_s": statistics.median(ours),
                      "extraction_s": statistics.median(base), "ratio": ratio}
        print(f"{name:34} CKA {rows[name]['similarity_s']:7.2f} s, extraction alone "
              f"{rows[name]['extraction_s']:7.2f} s, ratio {ratio:.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--parts", default="ab")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} "
          f"cores, {platform.machine()}; load average {os.getloadavg()[0]:.1f} at start")
    found = {}
    if "a" in args.parts:
        print(f"(a) visualize: {len(CHANNELS)} channels in one batch, {args.steps} steps, "
              f"{args.rounds} interleaved rounds")
        found["visualize"] = part_a(args)
    if "b" in args.parts:
        print(f"(b) similarity against extraction alone, {args.rounds} interleaved rounds")
        found["similarity"] = part_b(args)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"date": str(date.today()), "machine": platform.platform(),
                       "cores": os.cpu_count(), "torch": torch.__version__,
                       "torchvision": torchvision.__version__,
                       "threads": torch.get_num_threads(), "load": os.getloadavg(),
                       "rows": found}, fh, indent=2)


if __name__ == "__main__":
    main()

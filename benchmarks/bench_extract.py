"""Extraction overhead against a plain forward pass, in one process, interleaved.

(a) Every Conv2d output of resnet50 (batch 8, 224x224: about 339 MB of maps per batch), captured
    by: forward hooks keeping references, hooks that clone, torchvision's
    create_feature_extractor, featuremap's Extractor (copy on capture into fresh memory) and
    featuremap's Extractor reusing its buffers across batches. Ratios are to a plain forward.
    The floor is the plain forward plus copying the maps once into memory already mapped.
(b) resnet50's layer1 alone: featuremap's early stop and create_feature_extractor, as ratios
    to the full forward.

Run:  python benchmarks/bench_extract.py [--rounds 5] [--batch 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from datetime import date

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from featuremap.extraction import Extractor, retain_memory  # noqa: E402


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn):
    f0, t0 = faults(), time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    return dt, faults() - f0, out


def hooks_method(model, names, clone):
    modules = dict(model.named_modules())

    def run(x):
        store = {}
        handles = [modules[n].register_forward_hook(
            lambda _m, _i, o, n=n: store.__setitem__(n, o.detach().clone() if clone else o))
            for n in names]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        return store
    return run


def plain(model):
    def run(x):
        with torch.no_grad():
            return model(x)
    return run


def copy_time(nbytes: int, rounds: int) -> float:
    """Median time to copy nbytes into memory that is already mapped (the maps' traffic)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(max(3, rounds)):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleave(methods: dict, x, rounds: int) -> dict:
    for fn in methods.values():  # warm-up
        fn(x)
    times = {k: [] for k in methods}
    flts = {k: [] for k in methods}
    for _ in range(rounds):
        for k, fn in methods.items():
            dt, fl, out = timed(lambda fn=fn: fn(x))
            del out
            times[k].append(dt)
            flts[k].append(fl)
    return {"times": times, "faults": flts}


def report(result: dict, base: str, title: str) -> dict:
    print(f"\n{title}")
    print(f"{'method':38s} {'median s':>9s} {'ratio':>7s} {'faults/call':>12s}")
    summary = {}
    for k, ts in result["times"].items():
        ratios = [t / b for t, b in zip(ts, result["times"][base])]
        r = statistics.median(ratios)
        f = int(statistics.median(result["faults"][k]))
        summary[k] = {"median_s": statistics.median(ts), "ratio": r, "faults": f}
        print(f"{k:38s} {statistics.median(ts):9.3f} {r:6.3f}x {f:12,d}")
    return summary


def run_phase(model, convs, x, mb: float, rounds: int) -> dict:
    fx = create_feature_extractor(model, return_nodes=convs)
    reuse = Extractor(model, convs, reuse_buffers=True)
    fresh = Extractor(model, convs)
    a = interleave({
        "plain forward": plain(model),
        "hooks keeping references": hooks_method(model, convs, clone=False),
        "hooks with clone": hooks_method(model, convs, clone=True),
        "torchvision create_feature_extractor": lambda x: fx(x),
        "featuremap Extractor": lambda x: fresh(x),
        "featuremap Extractor(reuse_buffers)": lambda x: reuse(x),
    }, x, rounds)
    sa = report(a, "plain forward", "(a) every Conv2d output, ratio to a plain forward")
    t_copy = copy_time(int(mb * 1e6), rounds)
    floor = 1 + t_copy / sa["plain forward"]["median_s"]
    print(f"floor: one copy of the maps into mapped memory takes {t_copy * 1e3:.0f} ms "
          f"({mb / 1e3 / t_copy:.1f} GB/s), so no extractor that keeps copies can beat "
          f"{floor:.3f}x")
    sa["floor"] = {"copy_s": t_copy, "ratio": floor}
    fx1 = create_feature_extractor(model, return_nodes=["layer1"])
    early = Extractor(model, ["layer1"])
    b = interleave({
        "full forward": plain(model),
        "featuremap extract layer1 (early stop)": lambda x: early(x),
        "torchvision create_feature_extractor": lambda x: fx1(x),
    }, x, rounds)
    sb = report(b, "full forward", "(b) layer1 only, ratio to the full forward")
    ra = sa["featuremap Extractor(reuse_buffers)"]["ratio"]
    rb = sb["featuremap extract layer1 (early stop)"]["ratio"]
    print(f"\ntarget (a) <= 1.15x: {ra:.3f}x {'PASS' if ra <= 1.15 else 'FAIL'}; "
          f"target (b) <= 0.34x: {rb:.3f}x {'PASS' if rb <= 0.34 else 'FAIL'}")
    return {"a": sa, "b": sb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(args.batch, 3, 224, 224)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    sizes = hooks_method(model, convs, clone=False)(x)
    mb = sum(v.numel() * v.element_size() for v in sizes.values()) / 1e6
    del sizes
    print(f"resnet50, batch {args.batch}, 224x224, {len(convs)} Conv2d outputs = {mb:.0f} MB "
          f"of maps per batch; torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    for phase in ("glibc defaults", "retain_memory()"):
        if phase == "retain_memory()" and not retain_memory():
            print("\nretain_memory() is not available here (not glibc): skipped")
            break
        print(f"\n=== allocator: {phase} ===")
        results[phase] = run_phase(model, convs, x, mb, args.rounds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": str(date.today()), "machine": platform.platform(),
                       "cpus": os.cpu_count(), "torch": torch.__version__,
                       "batch": args.batch, "maps_mb": mb, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

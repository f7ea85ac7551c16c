"""Extraction overhead against a plain forward pass, in one process, interleaved.

(a) Every Conv2d output of resnet50 (batch 8, 224x224: 53 maps, 356 MB per batch), kept by
    featuremap: ``featuremap.extract(model, batch, layers=convs)`` exactly as a user calls it
    (a new call each time, a tensor input, default options: copies into memory from the pool of
    ``featuremap.buffers``), the same call with the previous result still held during the call
    (``fm = extract(...)`` in a loop), one ``Extractor`` called batch after batch, the same
    call copying into fresh memory (featuremap before the pool), and the Extractor reusing its
    buffers (opt-in: each call overwrites the last). Ratios are medians of per-round ratios to
    a plain forward in the same round, over the rounds in which other processes left the CPUs
    alone (the order of the methods turns each round). The floor, measured in the same rounds,
    is a plain forward followed by one copy of the maps' bytes (one block) into memory that is
    already mapped: the copy no method keeping correct maps can avoid, without a page fault.
(p) Where the default path's time above the floor goes: the parts of one extract() call
    outside the forward, timed alone (layer resolution, building the Extractor, preparing the
    tensor, hook setup), and the 53 copies into fresh memory, pooled memory and reused buffers.
(b) resnet50's layer1 alone: featuremap's early stop and create_feature_extractor, as ratios
    to the full forward.
(c) The same maps kept by other means: forward hooks keeping references (wrong under in-place
    ops), hooks that clone, torchvision's create_feature_extractor. Measured last, because
    fresh memory moves glibc's thresholds, and with them what fresh memory costs whatever runs
    after.

All of it is measured with glibc's default allocator, then after ``retain_memory()``.

On a machine that other processes keep busy, wall-clock ratios drift; ``--threads 1 --clock
cpu`` times each call by this process's CPU time instead (user and system, page faults
included), which waiting for a CPU does not inflate: a check of the ratios, not of the speed.

--leads adds two ways of getting the copies' memory that were measured for the pool: copies
into fresh huge pages (mmap + madvise(MADV_HUGEPAGE), unmapped when dropped), and the pool with
huge-page blocks. --thp sets THP_MEM_ALLOC_ENABLE=1 before torch allocates anything (c10 reads
it once, at the first CPU allocation of the process): every torch allocation of 2 MB or more,
the forward's own activations included, then asks for huge pages.

Run:  python benchmarks/bench_extract.py [--rounds 5] [--batch 8] [--leads] [--thp]
          [--phases "glibc defaults,retain_memory()"] [--threads N --clock wall|cpu]
          [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import mmap
import os
import platform
import resource
import statistics
import sys
import time
from datetime import date

if "--thp" in sys.argv[1:]:  # read by c10 at the first CPU allocation: before any tensor exists
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models.feature_extraction import create_feature_extractor  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from cpushare import busy_seconds, others_share  # noqa: E402

from featuremap import buffers  # noqa: E402
from featuremap.capture import hooked, inference_state  # noqa: E402
from featuremap.extraction import Extractor, extract, retain_memory  # noqa: E402
from featuremap.model import as_model  # noqa: E402

QUIET_SHARE = 0.10  # a call during which other processes used more of the CPUs is not quiet
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]  # what timed() measures (--clock)


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed(fn):
    """Seconds, minor page faults and the share of the CPUs others used, for one call."""
    start, f0, wall0, t0 = busy_seconds(), faults(), time.perf_counter(), clock()
    out = fn()
    dt, fl = clock() - t0, faults() - f0
    return dt, fl, others_share(start, wall0), out


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


def fresh_memory(shape, dtype, device):
    """featuremap's copies before the pool: fresh memory from torch's allocator."""
    return torch.empty(shape, dtype=dtype, device=device)


def with_allocate(extractor: Extractor, allocate) -> Extractor:
    extractor.engine.allocate = allocate
    return extractor


def held_between_calls(model, convs):
    """``fm = extract(...)`` in a loop: the previous result lives until the new one is made."""
    held = {}

    def run(x):
        held["fm"] = extract(model, x, layers=convs)
    return run, held


def huge_pages(nbytes: int) -> np.ndarray:
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_HUGEPAGE)
    return np.frombuffer(m, dtype=np.uint8)


class HugePagePool(buffers.MapPool):
    """The map pool with blocks that ask for huge pages (a lead)."""

    def _map(self, nbytes: int) -> np.ndarray:
        return huge_pages(nbytes)


def fresh_huge_pages(shape, dtype, device):
    """Copies into fresh huge pages, unmapped when dropped (a lead)."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    return torch.from_numpy(huge_pages(max(nbytes, 1))[:nbytes]).view(dtype).view(shape)


def forward_and_copy(model, nbytes: int):
    """The floor: a plain forward, then one copy of the maps' bytes into mapped memory."""
    src = torch.empty(nbytes // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    forward = plain(model)

    def run(x):
        out = forward(x)
        dst.copy_(src)
        return out
    return run, src, dst


def median_time(fn, trials: int) -> tuple[float, int]:
    """Median seconds of ``fn()`` after one untimed call, and its minor page faults per call."""
    fn()
    times, f0 = [], faults()
    for _ in range(trials):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times), (faults() - f0) // trials


def interleave(methods: dict, x, rounds: int) -> dict:
    for _ in range(2):  # warm-up: pools and reused buffers filled, the previous result held
        for fn in methods.values():
            fn(x)
    times = {k: [] for k in methods}
    flts = {k: [] for k in methods}
    shares = {k: [] for k in methods}  # the share of the CPUs others used during each call
    start, wall0 = busy_seconds(), time.perf_counter()
    keys = list(methods)
    for r in range(rounds):  # the order turns each round: no method always follows the same one
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            fn = methods[k]
            dt, fl, share, out = timed(lambda fn=fn: fn(x))
            del out
            times[k].append(dt)
            flts[k].append(fl)
            shares[k].append(share or 0.0)
    return {"times": times, "faults": flts, "shares": shares,
            "others": others_share(start, wall0)}


def report(result: dict, base: str, title: str) -> dict:
    """Per method, the median of its per-round ratios to ``base`` over the rounds in which
    neither call shared the CPUs with other processes (all rounds if fewer than 3 were quiet)."""
    times, shares = result["times"], result["shares"]
    print(f"\n{title}")
    print(f"{'method':52s} {'median s':>9s} {'ratio':>7s} {'faults/call':>12s} {'quiet':>6s}")
    summary = {}
    busy = False
    for k, ts in times.items():
        quiet = [r for r in range(len(ts))
                 if shares[k][r] <= QUIET_SHARE and shares[base][r] <= QUIET_SHARE]
        use = quiet if len(quiet) >= 3 and clock is CLOCKS["wall"] else range(len(ts))
        busy |= len(quiet) < 3
        r = statistics.median(ts[i] / times[base][i] for i in use)
        med = statistics.median(ts[i] for i in use)
        f = int(statistics.median(result["faults"][k]))
        summary[k] = {"median_s": med, "ratio": r, "faults": f, "quiet_rounds": len(quiet),
                      "rounds_s": ts, "others_per_call": shares[k]}
        print(f"{k:52s} {med:9.3f} {r:6.3f}x {f:12,d} {len(quiet):3d}/{len(ts)}")
    if clock is CLOCKS["cpu"]:
        print("seconds: this process's CPU time; medians over all rounds")
    else:
        print(f"quiet: rounds in which other processes used at most {QUIET_SHARE:.0%} of the "
              "CPUs during both this call and the baseline's; medians over those"
              + (" (all rounds where fewer than 3: the machine was busy, rerun)" if busy else ""))
    others = result["others"]
    if others is not None:
        print(f"other processes used {others:.0%} of the CPUs during the whole part")
    summary["others_share"] = others
    return summary


FLOOR = "floor: plain forward + one copy of the maps"
DEFAULT = "featuremap.extract(model, batch, layers=convs)"
HELD = "extract, previous result held"
EXTRACTOR = "featuremap Extractor(model, convs)"
BEFORE = "extract, fresh copies (before the pool)"
REUSE = "featuremap Extractor(reuse_buffers=True)"


def profile(model, convs, x, maps: dict, forward_s: float, trials: int) -> dict:
    """The parts of one default extract() call outside the forward, each timed alone."""
    wrapped = as_model(model)
    hooks = {n: (lambda _m, _a, _o: None) for n in convs}
    pooled = buffers.MapPool()
    kept: dict = {}

    def entered():
        with inference_state(model), hooked(model, after=hooks):
            pass

    def copies(allocate):
        def run():
            kept.clear()  # the previous copies die before the next are made, as in a loop
            for name, t in maps.items():
                kept[name] = allocate(tuple(t.shape), t.dtype, t.device).copy_(t)
        return run

    reused = {n: torch.empty_like(t) for n, t in maps.items()}
    parts = {
        "layer resolution (Model.resolve, 53 names)": lambda: wrapped.resolve(convs),
        "Extractor construction (wrap, resolve, engine)": lambda: Extractor(model, convs),
        "Model.prepare of the tensor": lambda: wrapped.prepare(x),
        "eval mode, frozen parameters, 53 hooks set and removed": entered,
        "53 copies into fresh memory (torch.empty)": copies(fresh_memory),
        "53 copies into pooled memory (MapPool)": copies(pooled.take),
        "53 copies into reused buffers": lambda: [reused[n].copy_(t) for n, t in maps.items()],
    }
    print(f"\n(p) parts of one call, each timed alone (median of {trials}), against the plain "
          f"forward ({forward_s * 1e3:.0f} ms)")
    print(f"{'part':56s} {'ms':>8s} {'of forward':>11s} {'faults':>9s}")
    out = {}
    for name, fn in parts.items():
        s, f = median_time(fn, trials)
        out[name] = {"ms": s * 1e3, "share": s / forward_s, "faults": f}
        print(f"{name:56s} {s * 1e3:8.2f} {s / forward_s:10.1%} {f:9,d}")
    kept.clear()
    pooled.release()
    return out


def run_phase(model, convs, x, maps: dict, mb: float, rounds: int, leads: bool) -> dict:
    buffers.release()  # the pool starts empty in each phase; the warm-up fills it
    reuse = Extractor(model, convs, reuse_buffers=True)
    once = Extractor(model, convs)
    held_run, held = held_between_calls(model, convs)
    floor_run, src, dst = forward_and_copy(model, int(mb * 1e6))
    methods = {
        "plain forward": plain(model),
        FLOOR: floor_run,
        DEFAULT: lambda x: extract(model, x, layers=convs),
        HELD: held_run,
        EXTRACTOR: lambda x: once(x),
        BEFORE: lambda x: with_allocate(Extractor(model, convs), fresh_memory)(x),
        REUSE: lambda x: reuse(x),
    }
    if leads:
        huge = HugePagePool()
        methods["lead: copies into fresh huge pages"] = lambda x: with_allocate(
            Extractor(model, convs), fresh_huge_pages)(x)
        methods["lead: pool of huge-page blocks"] = lambda x: with_allocate(
            Extractor(model, convs), huge.take)(x)
    a = interleave(methods, x, rounds)
    held.clear()
    sa = report(a, "plain forward", "(a) every Conv2d output by featuremap, ratio to a plain "
                "forward")
    copy = functools.partial(dst.copy_, src)
    t_copy, _ = median_time(copy, 2 * rounds)
    methods.clear()
    del src, dst, copy, floor_run
    floor = sa[FLOOR]["ratio"]
    print(f"floor: the plain forward plus one copy of the maps' {mb:.0f} MB into memory already "
          f"mapped ({t_copy * 1e3:.0f} ms alone, {mb / 1e3 / t_copy:.1f} GB/s): {floor:.3f}x; "
          "an extractor that keeps copies pays at least that copy")
    sa["floor"] = {"copy_s": t_copy, "ratio": floor}
    print(f"pool: {buffers.pool.idle_bytes / 1e6:.0f} MB idle, "
          f"{buffers.pool.lent_bytes / 1e6:.0f} MB lent after the rounds "
          f"(limit {buffers.pool.limit / 2**20:.0f} MiB idle)")
    sp = profile(model, convs, x, maps, sa["plain forward"]["median_s"], max(5, rounds))
    fx1 = create_feature_extractor(model, return_nodes=["layer1"])
    early = Extractor(model, ["layer1"])
    b = interleave({
        "full forward": plain(model),
        "featuremap extract layer1 (early stop)": lambda x: early(x),
        "torchvision create_feature_extractor": lambda x: fx1(x),
    }, x, rounds)
    sb = report(b, "full forward", "(b) layer1 only, ratio to the full forward")
    fx = create_feature_extractor(model, return_nodes=convs)
    c = interleave({
        "plain forward": plain(model),
        "hooks keeping references (wrong under in-place ops)": hooks_method(model, convs,
                                                                             clone=False),
        "hooks with clone (fresh memory)": hooks_method(model, convs, clone=True),
        "torchvision create_feature_extractor": lambda x: fx(x),
    }, x, rounds)
    sc = report(c, "plain forward", "(c) every Conv2d output by other means, ratio to a plain "
                "forward (measured after (a) and (b))")
    ra, re_, rr = sa[DEFAULT]["ratio"], sa[EXTRACTOR]["ratio"], sa[REUSE]["ratio"]
    rb = sb["featuremap extract layer1 (early stop)"]["ratio"]
    print(f"\ntarget (a) default path <= 1.15x: extract {ra:.3f}x, Extractor {re_:.3f}x "
          f"{'PASS' if max(ra, re_) <= 1.15 else 'FAIL'} (before the pool "
          f"{sa[BEFORE]['ratio']:.3f}x, reused buffers {rr:.3f}x, floor {floor:.3f}x); "
          f"target (b) <= 0.34x: {rb:.3f}x {'PASS' if rb <= 0.34 else 'FAIL'}")
    return {"a": sa, "p": sp, "b": sb, "c": sc}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--leads", action="store_true",
                   help="also measure fresh huge pages and a pool of huge-page blocks")
    p.add_argument("--thp", action="store_true",
                   help="run with THP_MEM_ALLOC_ENABLE=1 (set before torch allocates)")
    p.add_argument("--phases", default="glibc defaults,retain_memory()",
                   help="which allocator settings to run, in order, comma-separated")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch's threads (default: one per CPU)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="time calls by the wall clock, or by this process's CPU time (only "
                   "with --threads 1: idle threads spinning would count)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu needs --threads 1")
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval()
    x = torch.randn(args.batch, 3, 224, 224)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    maps = hooks_method(model, convs, clone=True)(x)
    mb = sum(v.numel() * v.element_size() for v in maps.values()) / 1e6
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "")
    print(f"resnet50, batch {args.batch}, 224x224, {len(convs)} Conv2d outputs = {mb:.0f} MB "
          f"of maps per batch; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"THP_MEM_ALLOC_ENABLE={thp or 'unset'}; {args.clock} clock")
    results = {}
    for phase in args.phases.split(","):
        if phase == "retain_memory()" and not retain_memory():
            print("\nretain_memory() is not available here (not glibc): skipped")
            break
        print(f"\n=== allocator: {phase} ===")
        results[phase] = run_phase(model, convs, x, maps, mb, args.rounds, args.leads)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": str(date.today()), "machine": platform.platform(),
                       "cpus": os.cpu_count(), "torch": torch.__version__,
                       "numpy": np.__version__, "python": platform.python_version(),
                       "batch": args.batch, "maps_mb": mb, "thp_mem_alloc_enable": thp,
                       "rounds": args.rounds, "threads": args.threads, "clock": args.clock,
                       "results": results}, f, indent=2)


if __name__ == "__main__":
    main()

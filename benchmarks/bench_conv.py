"""The NumPy engine ``featuremap.conv.conv2d`` against ``torch.nn.functional.conv2d``.

Both run on the same layers, in one process, interleaved (engine, torch, engine, torch ...: the
order flips every round), after a warm-up. Per layer it prints MACs, the median times, both
throughputs (2 * MACs / time) and the median over rounds of the per-round ratio
``torch time / engine time`` (the engine's throughput as a fraction of torch's; the machine is
shared and has slow phases, so only ratios of neighbouring calls are trusted). The last line
gives the median of the per-layer ratios against the target and PASS/FAIL.

In each round each library gets 0.1 s of quiet, one untimed call, then three timed calls whose
median is the round's time. Worker threads keep spinning after a call (OpenBLAS's for about
0.1 s, torch's OpenMP threads for a few ms), and a library's own threads sleep after a pause:
calls timed right after the other library's ran 3-10x slower here, or stalled for a 4 ms
scheduler tick in about half of the rounds; with the quiet and the untimed call, each library
runs at the speed it has when called again and again, as in a network's forward pass.

It also prints the minor page faults per call (fresh memory: torch's 3-channel stride-1 layer
faults 25 MB per call or none, as glibc's malloc thresholds stand in the process, which moves
its time 8x) and the share of the CPUs other processes used meanwhile (the run is not worth
comparing when that is more than a few percent).

OpenBLAS reads ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` once, when it loads. Where the
environment sets either, the figures are measured twice: as set, in this process, and with both
unset, in a subprocess (only there; nothing else is changed).

Run:
    python benchmarks/bench_conv.py [--rounds 15] [--json results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from cpushare import busy_seconds, others_share  # noqa: E402

from featuremap.conv import conv2d  # noqa: E402

TARGET = 0.25
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
WARMUP = 2
CALLS = 3  # timed calls per library per round (their median is the round's time)
QUIET = 0.1  # seconds of sleep before each library's calls in a round
QUIET_SHARE = 0.05  # above this share of the CPUs used by other processes, say so

# (name, input shape (N, C, H, W), depth, kernel, stride, padding)
LAYERS = [
    ("3ch k3 s1", (1, 3, 224, 224), 64, 3, 1, 1),
    ("3ch k3 s2", (1, 3, 224, 224), 64, 3, 2, 1),
    ("3ch k7 s2", (1, 3, 224, 224), 64, 7, 2, 3),
    ("64ch k3 s1 b8", (8, 64, 56, 56), 64, 3, 1, 1),
    ("64ch k3 s2 b8", (8, 64, 56, 56), 64, 3, 2, 1),
    ("256ch k3 s1", (1, 256, 14, 14), 256, 3, 1, 1),
]


def numpy_blas() -> str:
    """Which BLAS numpy was built with (threadpoolctl, when installed, also gives the threads)."""
    try:
        from threadpoolctl import threadpool_info

        libs = [f"{i['internal_api']} {i.get('version')} ({i['num_threads']} threads, "
                f"{i.get('architecture')})" for i in threadpool_info()
                if i.get("user_api") == "blas"]
        if libs:
            return "; ".join(libs)
    except ImportError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception:  # older numpy: no mode argument
        return "unknown (numpy.show_config() prints it)"


def env_state() -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in ENV_VARS}


def describe_env(env: dict[str, str | None]) -> str:
    set_vars = [f"{k}={v}" for k, v in env.items() if v is not None]
    return " ".join(set_vars) if set_vars else "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset"


def make_layer(shape, depth, k, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal((depth, shape[1], k, k), dtype=np.float32)
    return x, (w / np.float32(np.sqrt(shape[1] * k * k))).astype(np.float32)


def macs(shape, depth, k, stride, padding) -> int:
    n, c, h, w = shape
    oh = (h + 2 * padding - k) // stride + 1
    ow = (w + 2 * padding - k) // stride + 1
    return n * depth * oh * ow * c * k * k


def timed(fn) -> tuple[float, int]:
    """Seconds and minor page faults (fresh memory touched for the first time) of one call."""
    f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
    fn()
    return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


def prepare(i: int, name: str, shape, depth: int, k: int, s: int, p: int) -> dict:
    x, w = make_layer(shape, depth, k, seed=i)
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)

    def engine():
        return conv2d(x, w, stride=s, padding=p)

    def baseline():
        with torch.no_grad():
            return F.conv2d(tx, tw, stride=s, padding=p)

    expected = baseline().numpy()
    err = float(np.abs(engine() - expected).max() / np.abs(expected).max())
    for _ in range(WARMUP):
        engine()
        baseline()
    return dict(name=name, shape=shape, depth=depth, kernel=k, stride=s, padding=p,
                macs=macs(shape, depth, k, s, p), max_rel_err=err,
                run={"engine": engine, "torch": baseline},
                times={"engine": [], "torch": []}, faults={"engine": [], "torch": []})


def measure(rounds: int) -> tuple[list[dict], float | None]:
    """Per-layer figures, and the share of the CPUs that other processes used meanwhile."""
    cases = [prepare(i, *layer) for i, layer in enumerate(LAYERS)]
    start, wall0 = busy_seconds(), time.perf_counter()
    for r in range(rounds):  # rounds outside, layers inside: a slow phase hits every layer alike
        for case in cases:
            for lib in ("engine", "torch") if r % 2 == 0 else ("torch", "engine"):
                fn = case["run"][lib]
                time.sleep(QUIET)  # the other library's threads stop spinning
                fn()  # untimed: wakes this library's threads
                calls = [timed(fn) for _ in range(CALLS)]
                case["times"][lib].append(statistics.median(t for t, _ in calls))
                case["faults"][lib].append(statistics.median(f for _, f in calls))
    others = others_share(start, wall0)
    results = []
    for case in cases:
        te, tt = case["times"]["engine"], case["times"]["torch"]
        me, mt = statistics.median(te), statistics.median(tt)
        results.append({
            **{k: v for k, v in case.items() if k not in ("run", "times", "faults")},
            "engine_ms": me * 1e3, "torch_ms": mt * 1e3,
            "engine_gflops": 2 * case["macs"] / me / 1e9,
            "torch_gflops": 2 * case["macs"] / mt / 1e9,
            "ratio": statistics.median(b / a for a, b in zip(te, tt)),
            "engine_faults": statistics.median(case["faults"]["engine"]),
            "torch_faults": statistics.median(case["faults"]["torch"]),
            "engine_ms_rounds": [t * 1e3 for t in te], "torch_ms_rounds": [t * 1e3 for t in tt],
        })
    return results, others


def print_table(results: list[dict], others: float | None, title: str) -> float:
    print(f"\n{title}")
    head = (f"{'layer':<14} {'input':<12} {'D':>3} {'k/s/p':>5} {'MMACs':>6} {'rel err':>7} "
            f"{'eng ms':>7} {'torch ms':>8} {'eng GF/s':>8} {'torch GF/s':>10} "
            f"{'faults e/t':>11} {'ratio':>5}")
    print(head)
    print("-" * len(head))
    for r in results:
        shape = "x".join(map(str, r["shape"]))
        ksp = f"{r['kernel']}/{r['stride']}/{r['padding']}"
        faults = f"{r['engine_faults']:.0f}/{r['torch_faults']:.0f}"
        print(f"{r['name']:<14} {shape:<12} {r['depth']:>3} {ksp:>5} {r['macs'] / 1e6:>6.1f} "
              f"{r['max_rel_err']:>7.0e} {r['engine_ms']:>7.2f} {r['torch_ms']:>8.2f} "
              f"{r['engine_gflops']:>8.1f} {r['torch_gflops']:>10.1f} {faults:>11} "
              f"{r['ratio']:>5.2f}")
    median = statistics.median(r["ratio"] for r in results)
    print("ratio: median over rounds of torch time / engine time (the engine's throughput as a "
          "fraction of torch's);\nfaults e/t: minor page faults per call, engine/torch.")
    if others is not None:
        print(f"other processes used {others:.0%} of the CPUs meanwhile"
              + (": the machine was not quiet, rerun" if others > QUIET_SHARE else ""))
    print(f"median ratio over layers: {median:.2f}")
    return median


def run_unset_env(rounds: int) -> dict | None:
    """Measure again in a subprocess with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE both unset."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    cmd = [sys.executable, os.path.abspath(__file__), "--rounds", str(rounds), "--child"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"\nthe run without {' and '.join(ENV_VARS)} failed:\n{proc.stderr}")
        return None
    child = json.loads(proc.stdout)
    title = f"with {' and '.join(ENV_VARS)} unset (subprocess); numpy BLAS: {child['blas']}"
    print_table(child["results"], child["others"], title)
    return child


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--json", metavar="PATH", help="also save the figures to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    if args.child:  # the subprocess: figures only, as JSON on stdout
        results, others = measure(args.rounds)
        json.dump({"blas": numpy_blas(), "results": results, "others": others}, sys.stdout)
        return 0

    env = env_state()
    print(f"numpy {np.__version__}, BLAS: {numpy_blas()}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); {threads} cores; {platform.python_version()}")
    print(f"environment: {describe_env(env)}")
    results, others = measure(args.rounds)
    medians = {"as set": print_table(results, others, f"environment as set ({describe_env(env)})")}
    child = None
    if any(v is not None for v in env.values()):
        child = run_unset_env(args.rounds)
        if child is not None:
            medians["unset"] = statistics.median(r["ratio"] for r in child["results"])
    worst = min(medians.values())
    verdict = "PASS" if worst >= TARGET else "FAIL"

    if args.json:
        record = {
            "benchmark": "bench_conv", "date": datetime.date.today().isoformat(),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "cpu_count": os.cpu_count(), "python": platform.python_version()},
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__, "blas": numpy_blas(), "rounds": args.rounds,
            "target": TARGET, "environment": env, "results": results,
            "others_cpu_share": others, "median_ratio": medians["as set"], "verdict": verdict,
        }
        if child is not None:
            record["unset_environment"] = {"blas": child["blas"], "results": child["results"],
                                           "others_cpu_share": child["others"],
                                           "median_ratio": medians["unset"]}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
        print(f"\nsaved {args.json}")
    figures = ", ".join(f"{m:.2f} ({k})" for k, m in medians.items())
    print(f"median ratio {figures}; target >= {TARGET}: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

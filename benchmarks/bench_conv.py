"""The NumPy engine ``featuremap.conv.conv2d`` against ``torch.nn.functional.conv2d``.

Both run on the same layers, in one process, interleaved (engine, torch, engine, torch ...: the
order flips every round), after a warm-up. Per layer it prints MACs, the median times, both
throughputs (2 * MACs / time) and the median over rounds of the per-round ratio
``torch time / engine time`` (the engine's throughput as a fraction of torch's; the machine is
shared and has slow phases, so only ratios of neighbouring calls are trusted). The last line
gives the median of the per-layer ratios against the target and PASS/FAIL.

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
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from featuremap.conv import conv2d

TARGET = 0.25
ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
WARMUP = 2

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


def measure(rounds: int) -> list[dict]:
    cases = []
    for i, (name, shape, depth, k, s, p) in enumerate(LAYERS):
        x, w = make_layer(shape, depth, k, seed=i)
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)

        def engine(x=x, w=w, s=s, p=p):
            return conv2d(x, w, stride=s, padding=p)

        def baseline(tx=tx, tw=tw, s=s, p=p):
            with torch.no_grad():
                return F.conv2d(tx, tw, stride=s, padding=p)

        expected = baseline().numpy()
        err = float(np.abs(engine() - expected).max() / np.abs(expected).max())
        for _ in range(WARMUP):
            engine()
            baseline()
        cases.append(dict(name=name, shape=shape, depth=depth, kernel=k, stride=s, padding=p,
                          macs=macs(shape, depth, k, s, p), max_rel_err=err,
                          run=(engine, baseline), engine_s=[], torch_s=[]))
    for r in range(rounds):  # rounds outside, layers inside: a slow phase hits every layer alike
        for case in cases:
            engine, baseline = case["run"]
            order = [("engine_s", engine), ("torch_s", baseline)]
            for key, fn in order if r % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                fn()
                case[key].append(time.perf_counter() - t0)
    results = []
    for case in cases:
        te, tt = case.pop("engine_s"), case.pop("torch_s")
        case.pop("run")
        me, mt = statistics.median(te), statistics.median(tt)
        case.update(engine_ms=me * 1e3, torch_ms=mt * 1e3,
                    engine_gflops=2 * case["macs"] / me / 1e9,
                    torch_gflops=2 * case["macs"] / mt / 1e9,
                    ratio=statistics.median(b / a for a, b in zip(te, tt)))
        results.append(case)
    return results


def print_table(results: list[dict], title: str) -> float:
    print(f"\n{title}")
    head = (f"{'layer':<14} {'input':<15} {'D':>4} {'k/s/p':>6} {'MMACs':>7} {'max rel err':>11} "
            f"{'engine ms':>9} {'torch ms':>9} {'eng GF/s':>8} {'torch GF/s':>10} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    for r in results:
        shape = "x".join(map(str, r["shape"]))
        ksp = f"{r['kernel']}/{r['stride']}/{r['padding']}"
        print(f"{r['name']:<14} {shape:<15} {r['depth']:>4} {ksp:>6} {r['macs'] / 1e6:>7.1f} "
              f"{r['max_rel_err']:>11.1e} {r['engine_ms']:>9.2f} {r['torch_ms']:>9.2f} "
              f"{r['engine_gflops']:>8.1f} {r['torch_gflops']:>10.1f} {r['ratio']:>6.2f}")
    median = statistics.median(r["ratio"] for r in results)
    print(f"median ratio (torch time / engine time) over layers: {median:.2f}")
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
    print_table(child["results"], f"with {' and '.join(ENV_VARS)} unset (subprocess); "
                f"numpy BLAS: {child['blas']}")
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
        json.dump({"blas": numpy_blas(), "results": measure(args.rounds)}, sys.stdout)
        return 0

    env = env_state()
    print(f"numpy {np.__version__}, BLAS: {numpy_blas()}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); {threads} cores; {platform.python_version()}")
    print(f"environment: {describe_env(env)}")
    results = measure(args.rounds)
    medians = {"as set": print_table(results, f"environment as set ({describe_env(env)})")}
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
            "median_ratio": medians["as set"], "verdict": verdict,
        }
        if child is not None:
            record["unset_environment"] = {"blas": child["blas"], "results": child["results"],
                                           "median_ratio": medians["unset"]}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
        print(f"\nsaved {args.json}")
    figures = ", ".join(f"{m:.2f} ({k})" for k, m in medians.items())
    print(f"median ratio {figures}; target >= {TARGET}: {verdict}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

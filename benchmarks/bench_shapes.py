"""Held-out quality of the bundled ShapesNet on freshly generated scenes.

Loads the shipped weights, evaluates recognition accuracy and segmentation mIoU on ``--n`` scenes
of ``--seed`` (a seed never used in training), prints the IoU of every class and, as the last
line, ``accuracy=0.xxx miou=0.xxx``.

Usage:
    python benchmarks/bench_shapes.py --seed 12345 --n 1000
"""

from __future__ import annotations

import argparse
import time

from featuremap.bundled.network import bundled
from featuremap.bundled.train import evaluate_shapes


def main(argv: list[str] | None = None) -> None:
    """Parse ``--seed`` and ``--n``, evaluate the bundled model and print the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=12345, help="scene seed (default 12345)")
    parser.add_argument("--n", type=int, default=1000, help="number of scenes (default 1000)")
    args = parser.parse_args(argv)
    model, meta = bundled()
    start = time.perf_counter()
    result = evaluate_shapes(model, seed=args.seed, n=args.n, size=meta["input_size"])
    seconds = time.perf_counter() - start
    print(f"bundled ShapesNet on {args.n} scenes of seed {args.seed} ({seconds:.1f} s)")
    print("recorded:", ", ".join(f"{k}={v}" for k, v in meta["metrics"].items()
                                 if k in ("accuracy", "miou", "seed", "n")))
    for name, iou in result["per_class_iou"].items():
        print(f"  IoU {name:<12} {iou:.3f}")
    print(f"accuracy={result['accuracy']:.3f} miou={result['miou']:.3f}")


if __name__ == "__main__":
    main()

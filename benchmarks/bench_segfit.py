"""Peak memory of fit_seg_head as the dataset grows: it streams, so it must stay flat.

For each dataset size (generated scenes, segmentation layout) a fresh Python process fits a
1x1 head on the bundled model's four blocks and reports its peak resident memory (ru_maxrss),
the bytes of maps it kept on disk (what an in-memory design would have held), and the time. A
baseline process loads the same model and extracts one batch without fitting: the floor every
run shares (torch, the model, the decoder threads).

Usage:
    python benchmarks/bench_segfit.py [--sizes 200,2000] [--epochs 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = "backbone.block1,backbone.block2,backbone.block3,backbone.block4"

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {src!r})
import torch
torch.set_num_threads(2)
from featuremap import load_model
from featuremap.tasks import segfit
model = load_model("shapes")
kept = {{}}
original = segfit.MapCache.close
def close(self):
    kept["bytes"] = self.nbytes
    original(self)
segfit.MapCache.close = close
start = time.perf_counter()
if {fit!r}:
    r = segfit.fit_seg_head(model, {data!r}, layers={layers!r}.split(","), epochs={epochs},
                            seed=0)
    miou = r.miou
else:
    from featuremap import extract
    extract(model, torch.zeros(16, 3, 64, 64), layers={layers!r}.split(","))
    miou = None
print(json.dumps({{"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - start, "maps_mb": kept.get("bytes", 0) / 2**20,
                  "miou": miou}}))
"""


def child(data: str, *, fit: bool, epochs: int) -> dict:
    code = CHILD.format(src=str(ROOT / "src"), data=data, layers=LAYERS, epochs=epochs, fit=fit)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,2000")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from featuremap.bundled.scenes import save_dataset

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = child(tmp, fit=False, epochs=args.epochs)
        print(f"baseline (model + one batch of 16, no fitting): peak {base['peak_mb']:.0f} MB")
        for n in sizes:
            data = save_dataset(Path(tmp) / f"seg{n}", n, seed=3, layout="segmentation")
            got = child(str(data), fit=True, epochs=args.epochs)
            rows.append({"scenes": n, **got})
            extra = got["peak_mb"] - base["peak_mb"]
            print(f"{n:6d} scenes: peak {got['peak_mb']:.0f} MB (+{extra:.0f} MB over the "
                  f"baseline), maps kept on disk {got['maps_mb']:.0f} MB, "
                  f"{got['seconds']:.1f} s, mIoU {got['miou']:.3f}")
    first, last = rows[0], rows[-1]
    ratio = last["peak_mb"] / first["peak_mb"]
    print(f"peak memory {last['scenes']} / {first['scenes']} scenes: {ratio:.3f}x "
          f"(maps on disk grew {last['maps_mb'] / max(first['maps_mb'], 1e-9):.1f}x); "
          f"target within 10%: {'PASS' if ratio <= 1.10 else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
            "python": platform.python_version(), "baseline": base, "rows": rows,
            "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()

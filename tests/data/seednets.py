"""Make ``seednets.safetensors``: two small ShapesNets of one architecture, trained alike from two
random seeds, for the layer-similarity test (Kornblith et al. 2019: the layers of networks trained
from different initialisations correspond, so their CKA matrix has a diagonal that stands out).

Widths (8, 16, 32, 64), recognition head only, 800 Adam steps (learning rate 3e-3, batches of 32,
random horizontal flips) on 2,000 generated 32 x 32 scenes (seed 11); one CPU thread, so a rerun
gives the same weights. The weights are stored as float16 (keys ``seed0.*`` and ``seed1.*``);
the metadata records the recipe and each network's accuracy on 500 held-out scenes (seed 12).
About a minute on one core.

Run from the repository root:  python tests/data/seednets.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
from featuremap.bundled.network import ShapesNet, normalize  # noqa: E402
from featuremap.bundled.scenes import make_dataset  # noqa: E402

OUT = Path(__file__).resolve().parent / "seednets.safetensors"
WIDTHS = (8, 16, 32, 64)
RECIPE = {"widths": list(WIDTHS), "steps": 800, "batch_size": 32, "lr": 3e-3, "n_train": 2000,
          "train_seed": 11, "size": 32, "eval_seed": 12, "n_eval": 500}


def scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, _, labels = make_dataset(n, seed=seed, size=RECIPE["size"])
    return normalize(torch.from_numpy(images)), torch.from_numpy(labels) - 1  # 0 = background


def train(seed: int, x: torch.Tensor, y: torch.Tensor) -> ShapesNet:
    torch.manual_seed(seed)
    net = ShapesNet(widths=WIDTHS).train()
    opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"])
    g = torch.Generator().manual_seed(seed)
    for _ in range(RECIPE["steps"]):
        idx = torch.randint(0, len(x), (RECIPE["batch_size"],), generator=g)
        batch = x[idx].flip(3) if float(torch.rand(1, generator=g)) < 0.5 else x[idx]
        loss = F.cross_entropy(net(batch), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def main() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    x, y = scenes(RECIPE["n_train"], RECIPE["train_seed"])
    test_x, test_y = scenes(RECIPE["n_eval"], RECIPE["eval_seed"])
    tensors, meta = {}, {"recipe": json.dumps(RECIPE)}
    for seed in (0, 1):
        net = train(seed, x, y)
        with torch.no_grad():
            accuracy = float((net(test_x).argmax(1) == test_y).float().mean())
        meta[f"seed{seed}_accuracy"] = f"{accuracy:.3f}"
        tensors.update({f"seed{seed}.{k}": v.detach().to(torch.float16).contiguous()
                        for k, v in net.state_dict().items() if v.is_floating_point()})
        print(f"seed {seed}: held-out accuracy {accuracy:.3f}")
    save_file(tensors, str(OUT), metadata=meta)
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()

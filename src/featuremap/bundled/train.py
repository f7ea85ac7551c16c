"""Train, evaluate and save ShapesNet, the bundled model, on synthetic scenes.

:func:`train_shapes` trains the recognition and the segmentation head jointly from scratch
(AdamW, one-cycle schedule, cross-entropy on both heads, random flips and quarter turns), on
fresh scenes every epoch; for a fixed seed and thread count it gives the same weights every time.
:func:`evaluate_shapes` measures accuracy and mIoU on scenes of a seed never used in training.
:func:`save_bundled` writes the weights and metadata that
:func:`featuremap.bundled.network.bundled` reads.

Example:
    >>> model, history = train_shapes(seed=0, epochs=1, n_train=64)  # doctest: +SKIP
    >>> evaluate_shapes(model, seed=12345, n=200)["accuracy"]  # doctest: +SKIP
    0.3
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from featuremap.budget import check_size
from featuremap.bundled.network import MEAN, STD, ShapesNet, normalize
from featuremap.bundled.scenes import CLASSES, make_dataset
from featuremap.errors import ConfigError

__all__ = [
    "check_budget",
    "EVAL_SEED",
    "RECIPE",
    "build_bundle",
    "evaluate_shapes",
    "save_bundled",
    "train_data_seed",
    "train_shapes",
]

# The recipe of the shipped weights (featuremap/data/shapes.json records it too).
RECIPE = {
    "epochs": 10,
    "n_train": 6000,
    "batch_size": 64,
    "lr": 4e-3,
    "weight_decay": 1e-4,
    "seg_weight": 1.0,
    "cam_weight": 0.5,
}
EVAL_SEED = 12345  # held-out scenes of the shipped metrics (and of benchmarks/bench_shapes.py)
_TRAIN_SEED_BASE = 2**31  # training sets use dataset seeds far from the small seeds people pick

Progress = Callable[[int, int, dict], None]


def train_data_seed(seed: int, epoch: int) -> int:
    """Dataset seed of the scenes of ``epoch`` when training with ``seed`` (never a small seed).

    Example:
        >>> train_data_seed(0, 1)
        2147483649
    """
    return _TRAIN_SEED_BASE + 1000 * int(seed) + int(epoch)


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}.")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _augment(x: torch.Tensor, m: torch.Tensor, g: torch.Generator) -> tuple:
    """A random flip and quarter turn of the whole batch (labels do not change)."""
    k = int(torch.randint(4, (1,), generator=g))
    if int(torch.randint(2, (1,), generator=g)):
        x, m = x.flip(-1), m.flip(-1)
    return torch.rot90(x, k, (-2, -1)), torch.rot90(m, k, (-2, -1))


def _epoch(model, opt, sched, data, cfg: dict, g: torch.Generator, tick) -> dict:
    images, masks, labels = (torch.from_numpy(a) for a in data)
    order = torch.randperm(len(labels), generator=g)
    bs, total, correct, seen = cfg["batch_size"], 0.0, 0, 0
    model.train()
    for start in range(0, len(order), bs):
        idx = order[start: start + bs]
        x, m = _augment(normalize(images[idx]), masks[idx], g)
        x = x.contiguous(memory_format=torch.channels_last)
        maps = model.pyramid(x)  # one backbone pass feeds both heads and the CAM term
        logits, seg = model.classifier(maps[-1]), model.segmenter(x, maps)
        loss = F.cross_entropy(logits, labels[idx] - 1)
        loss = loss + cfg["seg_weight"] * F.cross_entropy(seg, m)
        loss = loss + cfg["cam_weight"] * _cam_loss(model, maps[-1], labels[idx], m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = float(loss.detach())
        total += value * len(idx)
        correct += int((logits.argmax(1) == labels[idx] - 1).sum())
        seen += len(idx)
        tick({"loss": value})
    return {"loss": total / seen, "train_accuracy": correct / seen}


def _cam_loss(model: ShapesNet, maps: torch.Tensor, labels: torch.Tensor,
              masks: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the class-activation map, as a distribution over the last maps'
    cells, and the share of each cell covered by the main object: it teaches the CAM to peak on
    the object itself (without it, rings and crescents peak in their hole or bite)."""
    cam = torch.einsum("nc,nchw->nhw", model.classifier.fc.weight[labels - 1], maps).flatten(1)
    covered = (masks == labels[:, None, None]).float()[:, None]
    share = F.adaptive_avg_pool2d(covered, maps.shape[-2:]).flatten(1)
    target = share / share.sum(1, keepdim=True).clamp_min(1e-6)
    return -(target * F.log_softmax(cam, 1)).sum(1).mean()


SCENE_BYTES_PER_PIXEL = 20  # a generated scene in memory: image, mask and work arrays


def check_budget(epochs: int, n_train: int, size: int, *, eval_n: int | None = None) -> None:
    """Refuse, before any work, settings that cannot train: counts below 1, scenes below 32
    pixels, or an epoch's scenes (or the held-out ones) that would not fit in memory."""
    for name, value in (("epochs", epochs), ("n_train", n_train), ("eval_n", eval_n)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"Training needs {name} >= 1 (an integer), got {name}={value!r}.")
    if size < 32:
        raise ConfigError(f"Scene size must be >= 32 pixels, got {size}.")
    if epochs > 10_000:
        raise ConfigError(f"epochs={epochs} is more than 10,000: each epoch takes about "
                          f"{n_train // 200 + 1} s here; use fewer.")
    for name, n in (("n_train", n_train), ("eval_n", eval_n or 0)):
        check_size(n * size * size * SCENE_BYTES_PER_PIXEL,
                   what=f"{n:,} generated scenes of {size} x {size} ({name})",
                   fix=f"use a smaller --{name.replace('_', '-')}")


def train_shapes(
    *,
    seed: int = 0,
    epochs: int = RECIPE["epochs"],
    n_train: int = RECIPE["n_train"],
    size: int = 64,
    batch_size: int = RECIPE["batch_size"],
    lr: float = RECIPE["lr"],
    progress: Progress | None = None,
    threads: int | None = None,
) -> tuple[ShapesNet, dict]:
    """Train ShapesNet from scratch, both heads jointly, on fresh synthetic scenes every epoch.

    Epoch ``e`` uses ``make_dataset(n_train, seed=train_data_seed(seed, e))``. With the default
    recipe this takes about 6 minutes on 2 CPU cores.

    Args:
        seed: seeds the weights, the batch order, the augmentation and the scenes.
        epochs: passes, each over ``n_train`` new scenes.
        n_train: scenes per epoch.
        size: scene height and width in pixels (>= 32).
        batch_size: scenes per optimiser step.
        lr: peak learning rate of the one-cycle schedule (AdamW).
        progress: called after every step as ``progress(step, total_steps, info)``.
        threads: torch CPU threads while training (None: leave as is).

    Returns:
        ``(model, history)``: the model in eval mode; ``history`` has one dict per epoch in
        ``"epochs"`` (loss, train_accuracy, seconds) and the total ``"seconds"``.

    Raises:
        ConfigError: epochs, n_train, size or threads out of range.

    Example:
        >>> model, history = train_shapes(epochs=1, n_train=64)  # doctest: +SKIP
    """
    check_budget(epochs, n_train, size)
    cfg = dict(RECIPE, batch_size=batch_size, lr=lr)
    with _threads(threads):
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        model = ShapesNet().to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg["weight_decay"])
        steps = epochs * -(-n_train // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
        done = [0]

        def tick(info: dict) -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], steps, info)

        history: dict = {"epochs": []}
        start = time.perf_counter()
        for epoch in range(epochs):
            t0 = time.perf_counter()
            data = make_dataset(n_train, seed=train_data_seed(seed, epoch), size=size)
            stats = _epoch(model, opt, sched, data, cfg, g, tick)
            history["epochs"].append(dict(stats, epoch=epoch, seconds=time.perf_counter() - t0))
        history["seconds"] = time.perf_counter() - start
    return model.eval(), history


def _confusion(pred: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(target.ravel() * k + pred.ravel(), minlength=k * k).reshape(k, k)


@torch.no_grad()
def evaluate_shapes(
    model: ShapesNet, *, seed: int, n: int, size: int = 64, batch_size: int = 100
) -> dict:
    """Recognition accuracy and segmentation mIoU on ``n`` fresh scenes of ``seed``.

    IoU per class comes from one confusion matrix summed over all pixels of all scenes; mIoU is
    their mean over every class, background included.

    Args:
        model: a ShapesNet (or any module with ``forward_all``) taking normalised images.
        seed: dataset seed of the scenes (pick one never used in training).
        n: number of scenes (>= 1).
        size: scene height and width in pixels.
        batch_size: scenes per forward pass.

    Returns:
        ``{"accuracy", "miou", "per_class_iou" (class name -> IoU), "seed", "n", "size"}``.

    Example:
        >>> model, meta = bundled()  # doctest: +SKIP
        >>> evaluate_shapes(model, seed=12345, n=1000)["miou"] > 0.85  # doctest: +SKIP
        True
    """
    images, masks, labels = make_dataset(n, seed=seed, size=size)
    k = len(CLASSES)
    confusion = np.zeros((k, k), np.int64)
    correct = 0
    stats = (getattr(model, "mean", MEAN), getattr(model, "std", STD))
    model.eval()
    for start in range(0, n, batch_size):
        x = normalize(torch.from_numpy(images[start: start + batch_size]), *stats)
        logits, seg = model.forward_all(x)
        correct += int((logits.argmax(1).numpy() + 1 == labels[start: start + batch_size]).sum())
        confusion += _confusion(seg.argmax(1).numpy(), masks[start: start + batch_size], k)
    inter = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    return {
        "accuracy": correct / n,
        "miou": float(np.nanmean(iou)),
        "per_class_iou": {name: float(v) for name, v in zip(CLASSES, iou)},
        "seed": int(seed),
        "n": int(n),
        "size": int(size),
    }


def save_bundled(model: ShapesNet, meta: dict, folder: str | os.PathLike[str]) -> Path:
    """Write ``shapes.safetensors`` (float32 weights) and ``shapes.json`` (``meta``) to ``folder``.

    Args:
        model: the trained ShapesNet.
        meta: metadata to store; ``categories``, ``segmentation_classes``, ``widths``, ``mean``,
            ``std``, ``config`` (ShapesNet's arguments), ``weights`` and ``date`` are filled in
            when missing.
        folder: where to write (created if missing).

    Returns:
        the path of the weights file.

    Example:
        >>> save_bundled(model, {"recipe": RECIPE}, "src/featuremap/bundled/data")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().float() if v.is_floating_point() else v.detach()).contiguous()
             for k, v in model.state_dict().items()}
    full = {
        "categories": list(CLASSES[1:]),
        "segmentation_classes": list(CLASSES),
        "config": {"num_classes": model.num_classes,
                   "widths": [block.conv1.out_channels for block in model.backbone]},
        "weights": "shapes.safetensors (trained on generated scenes; recipe in shapes.json)",
        "input_size": 64,
        "mean": list(model.mean),
        "std": list(model.std),
        "date": datetime.date.today().isoformat(),
    }
    full.update(meta)
    save_file(state, str(root / "shapes.safetensors"))
    (root / "shapes.json").write_text(json.dumps(full, indent=2) + "\n")
    return root / "shapes.safetensors"


def build_bundle(
    folder: str | os.PathLike[str], *, seed: int = 0, eval_seed: int = EVAL_SEED,
    eval_n: int = 1000, threads: int | None = 2, progress: Progress | None = None,
    epochs: int = RECIPE["epochs"], n_train: int = RECIPE["n_train"],
) -> dict:
    """Train with the default recipe, evaluate on held-out scenes and save the bundle.

    This is how ``featuremap/data/shapes.safetensors`` and ``shapes.json`` were made:
    ``python -m featuremap.bundled.train
    src/featuremap/bundled/data`` (about 5 minutes on 2 CPU cores).

    Args:
        folder: where to write ``shapes.safetensors`` and ``shapes.json``.
        seed: training seed.
        eval_seed, eval_n: the held-out scenes the recorded metrics come from.
        threads: torch CPU threads while training (the shipped weights used 2).
        progress: as for :func:`train_shapes`.
        epochs, n_train: as for :func:`train_shapes` (the shipped weights used the defaults).

    Returns:
        the metadata written to ``shapes.json``.
    """
    model, history = train_shapes(seed=seed, threads=threads, progress=progress, epochs=epochs,
                                  n_train=n_train)
    with _threads(threads):
        metrics = evaluate_shapes(model, seed=eval_seed, n=eval_n)
    metrics["date"] = datetime.date.today().isoformat()
    recipe = dict(RECIPE, seed=seed, threads=threads, epochs=epochs, n_train=n_train,
                  optimizer="AdamW", schedule="OneCycleLR",
                  loss="cross-entropy (recognition) + seg_weight * cross-entropy (pixels) + "
                       "cam_weight * cross-entropy (CAM cells vs the object's share of them)",
                  augmentation="random horizontal flip and quarter turn per batch",
                  data="fresh scenes every epoch: make_dataset(n_train, "
                       "seed=train_data_seed(seed, epoch))",
                  train_seconds=round(history["seconds"], 1), torch=torch.__version__)
    meta = {"recipe": recipe, "metrics": metrics,
            "history": [{k: round(v, 4) for k, v in e.items()} for e in history["epochs"]]}
    save_bundled(model, meta, folder)
    return meta


if __name__ == "__main__":
    import sys

    result = build_bundle(sys.argv[1] if len(sys.argv) > 1 else "shapes_bundle",
                          progress=lambda step, total, info: print(
                              f"\rstep {step}/{total} loss {info['loss']:.3f}", end=""))
    print("\n" + json.dumps(result["metrics"], indent=2))

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featuremap.bundled.network import ShapesNet, bundled
from featuremap.bundled.scenes import CLASSES
from featuremap.bundled.train import (
    RECIPE,
    evaluate_shapes,
    save_bundled,
    train_data_seed,
    train_shapes,
)
from featuremap.errors import ConfigError


@pytest.fixture(scope="module")
def tiny():
    calls = []
    model, history = train_shapes(seed=3, epochs=1, n_train=64, size=32, batch_size=32,
                                  progress=lambda step, total, info: calls.append((step, total)))
    return model, history, calls


def test_tiny_training_runs_and_reports_progress(tiny):
    model, history, calls = tiny
    assert isinstance(model, ShapesNet) and not model.training
    assert calls == [(1, 2), (2, 2)]
    (epoch,) = history["epochs"]
    assert np.isfinite(epoch["loss"]) and 0.0 <= epoch["train_accuracy"] <= 1.0
    assert history["seconds"] > 0


def test_training_is_deterministic(tiny):
    model, _, _ = tiny
    again, _ = train_shapes(seed=3, epochs=1, n_train=64, size=32, batch_size=32)
    other, _ = train_shapes(seed=4, epochs=1, n_train=64, size=32, batch_size=32)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert not torch.equal(model.classifier.fc.weight, other.classifier.fc.weight)


def test_training_seeds_never_collide_with_small_seeds():
    assert train_data_seed(0, 0) > 10**9
    assert train_data_seed(0, 1) != train_data_seed(1, 0)


def test_evaluate_returns_metrics_in_range(tiny):
    model, _, _ = tiny
    result = evaluate_shapes(model, seed=5, n=20, size=32)
    assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["miou"] <= 1.0
    assert list(result["per_class_iou"]) == list(CLASSES)
    assert (result["seed"], result["n"], result["size"]) == (5, 20, 32)


def test_save_bundled_round_trip(tiny, tmp_path):
    model, _, _ = tiny
    path = save_bundled(model, {"recipe": {"seed": 3}}, tmp_path)
    meta = json.loads((tmp_path / "shapes.json").read_text())
    assert path.name == "shapes.safetensors" and meta["recipe"] == {"seed": 3}
    assert meta["categories"] == list(CLASSES[1:]) and "date" in meta
    from safetensors.torch import load_file

    again = ShapesNet()
    again.load_state_dict(load_file(str(path)))
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_shipped_metrics_match_evaluation():
    model, meta = bundled()
    recorded = meta["metrics"]
    assert recorded["n"] >= 1000 and recorded["seed"] not in range(0, 1000)
    result = evaluate_shapes(model, seed=recorded["seed"], n=recorded["n"],
                             size=meta["input_size"])
    assert result["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-6)
    assert result["miou"] == pytest.approx(recorded["miou"], abs=1e-6)
    for name, iou in result["per_class_iou"].items():
        assert iou == pytest.approx(recorded["per_class_iou"][name], abs=1e-6)


def test_shipped_recipe_is_the_default():
    _, meta = bundled()
    for key in ("epochs", "n_train", "lr", "batch_size"):
        assert meta["recipe"][key] == RECIPE[key]


@pytest.mark.parametrize(
    "kwargs, words",
    [({"epochs": 0}, "epochs"), ({"n_train": 0}, "n_train"), ({"size": 16}, "size"),
     ({"threads": 0}, "threads")],
)
def test_bad_budget_raises_config_error(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        train_shapes(**kwargs)

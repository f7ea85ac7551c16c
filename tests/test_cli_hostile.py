"""Hostile and careless input through the command line: one test per class of failure.

Output paths are checked before the work and the real name is printed; options are validated
before the work they gate; file names (and names inside datasets) are data, never markup or
terminal codes; sizes that would exhaust memory are refused up front; weights and heads with
NaN, or of the wrong shape, are one clear line; Ctrl-C exits 130 saying what was written.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from PIL import Image

from clirun import run, run_error, run_ok
from strategies import hostile_names

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
def photo(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def never(*_args, **_kwargs):
    raise AssertionError("the work ran although an option was invalid")


# ------------------------------------------------------------------------------ output paths


def test_out_without_extension_writes_and_names_the_real_file(photo, tmp_path, capsys):
    out = run_ok(["conv", str(photo), "--out", str(tmp_path / "maps")], capsys)
    assert (tmp_path / "maps.png").is_file() and not (tmp_path / "maps").exists()
    assert out.strip().endswith(f"wrote {tmp_path / 'maps.png'}")
    # the guard checks the file really written: maps.png now exists
    error = run_error(["conv", str(photo), "--out", str(tmp_path / "maps")], capsys)
    assert "maps.png' exists" in error and "--overwrite" in error
    run_ok(["conv", str(photo), "--out", str(tmp_path / "maps"), "--overwrite"], capsys)


@pytest.mark.parametrize("command", [
    ["conv", "{photo}"],
    ["show", "{photo}", "--layer", "backbone.block1"],
    ["overview", "{photo}"],
    ["rf", "{photo}", "--layer", "backbone.block2", "--at", "1,1"],
    ["classify", "{photo}", "--cam", "auto"],
    ["segment", "{photo}"],
    ["explain", "{photo}", "--at", "0,1,1"],
])
def test_bad_out_is_refused_before_any_work(command, photo, tmp_path, capsys, monkeypatch):
    import featuremap.cli.common as common

    monkeypatch.setattr(common, "load", never)  # no network is loaded before the check
    monkeypatch.setattr("featuremap.toy.compute_maps", never)
    argv = [a.replace("{photo}", str(photo)) for a in command]
    folder = tmp_path / "a folder"
    folder.mkdir()
    cases = {
        str(tmp_path / "maps.txt"): "suffix",
        str(tmp_path / "missing" / "x.png"): "does not exist",
        str(folder): "folder",
        "/dev/null": "",
    }
    for out, words in cases.items():
        error = run_error(argv + ["--out", out], capsys)
        assert words.lower() in error.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a folder", "photo.png"]


def test_data_outputs_are_checked_before_the_work(tmp_path, capsys, monkeypatch):
    from featuremap.bundled.scenes import save_dataset

    data = save_dataset(tmp_path / "data", 14, seed=1)
    monkeypatch.setattr("featuremap.tasks.probe.probe", never)
    monkeypatch.setattr("featuremap.tasks.segfit.fit_seg_head", never)
    for command in (["probe", str(data), "--layers", "backbone.block1"],
                    ["fit-seg", str(data), "--layers", "backbone.block1"]):
        error = run_error(command + ["--out", str(tmp_path / "x.txt")], capsys)
        assert ".safetensors" in error
        (tmp_path / "y.json").write_text("{}")  # the sidecar would be overwritten
        error = run_error(command + ["--out", str(tmp_path / "y.safetensors")], capsys)
        assert "y.json" in error and "--overwrite" in error
    error = run_error(["demo", "--out", str(tmp_path / "missing" / "d.html")], capsys)
    assert "does not exist" in error
    error = run_error(["show", "x.png", "--layer", "backbone.block1", "--save-maps",
                       str(tmp_path / "m.txt")], capsys)
    assert ".npz" in error


# ---------------------------------------------------------------------- options before work


def test_options_are_validated_before_the_work_they_gate(photo, tmp_path, capsys,
                                                         monkeypatch):
    # an unknown CAM layer is refused before the classification is printed
    code, out, err = run(["classify", str(photo), "--cam", "backbone.block9"], capsys)
    assert code == 2 and out == "" and "Did you mean 'backbone.block4'" in err
    # empty layer lists
    for command in (["probe", str(tmp_path), "--layers", ","],
                    ["fit-seg", str(tmp_path), "--layers", " , "],
                    ["overview", str(photo), "--layers", ","],
                    ["segment", str(photo), "--layers", ","]):
        assert "is empty" in run_error(command, capsys)
    monkeypatch.setattr("featuremap.bundled.train.build_bundle", never)
    for flag in ("--eval-n", "--n-train", "--epochs"):
        error = run_error(["train-demo", "--out", str(tmp_path / "m"), flag, "0"], capsys)
        assert flag.lstrip("-").replace("-", "_") in error
    assert "--per-layer" in run_error(["overview", str(photo), "--per-layer", "0"], capsys)
    assert "--device" not in run_error(["show", str(photo), "--layer", "backbone.block1",
                                        "--device", "tpu"], capsys).split("Unknown")[0]


def test_layers_argument_refuses_empty_lists_in_python():
    from featuremap import extract, load_model
    from featuremap.errors import ConfigError

    model = load_model("shapes")
    for empty in ([], "", [" "], ","):
        with pytest.raises(ConfigError, match="no layer given"):
            extract(model, torch.zeros(1, 3, 64, 64), layers=empty)


# ------------------------------------------------------------------------- names are data


def _clean(text: str) -> bool:
    return CONTROL.search(text) is None


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=hostile_names(max_pieces=4))
def test_hostile_file_names_are_printed_as_data(name, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("names")
    image = folder / (name + ".png")
    Image.fromarray(np.zeros((24, 24, 3), np.uint8) + 90).save(image)
    shown = os.fsdecode(os.fsencode(str(image)))
    for argv in (["conv", str(image), "--filters", "sobel_x", "--out",
                  str(folder / (name + "-maps.png"))],
                 ["classify", str(image), "--top", "2", "--cam", "auto", "--out",
                  str(folder / (name + "-cam.png"))]):
        code, out, err = run(argv, capsys)
        assert code == 0, err
        assert _clean(out) and _clean(err), (out, err)
        assert "Traceback" not in out + err
        assert out.strip().splitlines()[-1].startswith("wrote ")
    assert len(list(folder.iterdir())) == 3, shown  # the image and the two pictures
    # the same name as a missing file: one line, escaped
    error = run_error(["conv", str(folder / (name + "-missing.png"))], capsys)
    assert _clean(error)


def test_names_inside_a_dataset_never_reach_the_terminal_raw(tmp_path, capsys):
    from featuremap.bundled.scenes import save_dataset

    data = save_dataset(tmp_path / "data", 42, seed=2)  # every class has 4 or more scenes
    first = sorted(p for p in data.iterdir())[0]
    first.rename(data / "circle\x1b[31m[red]$x$\nfake")  # a class folder with codes in it
    (data / "square" / "broken\x1b]0;owned\x07.png").write_bytes(b"not an image")
    code, out, err = run(["probe", str(data), "--layers", "backbone.block1", "--out",
                          str(tmp_path / "p.safetensors")], capsys)
    assert code == 0, err
    assert _clean(out) and _clean(err)
    assert "broken\\x1b]0;owned\\x07.png" in err  # named, escaped
    classes = json.loads((tmp_path / "p.json").read_text())["classes"]
    assert "circle\x1b[31m[red]$x$\nfake" in classes  # the data itself is kept as it is


def test_markup_and_mathtext_in_names_are_literal(tmp_path, capsys):
    image = tmp_path / "[bold]$\\frac{$ [red]x[red].png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    out = run_ok(["conv", str(image), "--out", str(tmp_path / "m.png")], capsys)
    # the table title (wrapped to the table's width) holds the name as written, not parsed
    assert "[bold]$\\frac{$[red]x[red].png" in "".join(out.split())


# ------------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize("argv, words", [
    (["conv", "sample:camera", "--filters", "random:100000000"], "filters"),
    (["conv", "sample:camera", "--filters", "gabor:3", "--padding", "100000"], "would take"),
    (["scenes", "{tmp}/s", "--n", "1000000000"], "GB"),
    (["scenes", "{tmp}/s", "--size", "200000", "--n", "2"], "would take"),
    (["show", "sample:camera", "--layer", "backbone.block1", "--top", "100000"], "top"),
    (["overview", "sample:camera", "--per-layer", "100000"], "--per-layer"),
    (["probe", "{tmp}", "--layers", "backbone.block1", "--batch-size", "100000"], "batch_size"),
    (["fit-seg", "{tmp}", "--layers", "backbone.block1", "--batch-size", "100000"],
     "batch_size"),
    (["train-demo", "--out", "{tmp}/m", "--n-train", "100000000"], "would take"),
])
def test_sizes_that_would_exhaust_memory_are_refused_up_front(argv, words, tmp_path, capsys):
    import tracemalloc

    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    tracemalloc.start()
    try:
        error = run_error(argv, capsys)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert words in error
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MB allocated before the refusal"


def test_a_16_bit_mask_implying_65536_classes_is_refused(tmp_path, capsys):
    from featuremap.bundled.scenes import save_dataset

    data = save_dataset(tmp_path / "seg", 6, seed=2, layout="segmentation")
    (data / "classes.txt").unlink()  # with it, label 65535 is refused as beyond its names
    mask = sorted((data / "masks").iterdir())[0]
    values = np.asarray(Image.open(mask)).astype(np.uint16)
    values[0, 0] = 65535
    Image.fromarray(values).save(mask)
    error = run_error(["fit-seg", str(data), "--layers", "backbone.block1", "--out",
                       str(tmp_path / "h.safetensors")], capsys)
    assert "65,536 classes" in error and "max_classes" in error


# ------------------------------------------------------------------------- weights and heads


def test_weights_with_nan_are_refused(tmp_path, capsys):
    from featuremap.zoo import load_model

    state = load_model("shapes").module.state_dict()
    state["backbone.block1.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(state, path)
    error = run_error(["classify", "sample:coins", "--weights", str(path)], capsys)
    assert "NaN or infinite" in error and "backbone.block1.conv1.weight" in error


def test_heads_with_nan_or_the_wrong_shape_are_refused(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from featuremap.bundled.scenes import save_dataset

    data = save_dataset(tmp_path / "seg", 10, seed=3, layout="segmentation")
    head = tmp_path / "head.safetensors"
    run_ok(["fit-seg", str(data), "--layers", "backbone.block1", "--epochs", "1", "--out",
            str(head)], capsys)
    tensors = load_file(str(head))
    bad = dict(tensors, weight=tensors["weight"][:, :3].contiguous())
    save_file(bad, str(head))
    error = run_error(["segment", "sample:coins", "--head", str(head)], capsys)
    assert "does not fit its description" in error
    bad = dict(tensors, bias=torch.full_like(tensors["bias"], float("nan")))
    save_file(bad, str(head))
    assert "NaN" in run_error(["segment", "sample:coins", "--head", str(head)], capsys)


# ------------------------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_exits_130_and_says_nothing_was_written(photo, tmp_path, capsys, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("featuremap.plot.save_figure", interrupted)
    code, out, err = run(["conv", str(photo), "--out", str(tmp_path / "m.png")], capsys)
    assert code == 130 and "Traceback" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted") and "nothing" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png"]


def test_ctrl_c_during_an_atomic_write_leaves_no_partial_file(tmp_path):
    from featuremap.outputs import atomic_paths

    with pytest.raises(KeyboardInterrupt):
        with atomic_paths([tmp_path / "a.safetensors", tmp_path / "a.json"]) as (a, b):
            a.write_bytes(b"x" * 100)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []

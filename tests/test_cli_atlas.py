"""featuremap dissect and featuremap similarity: what they print and write is what the library
returns for the same call; every bad input is one 'error: ...' line, exit 2, before the work."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

import featuremap.atlas
from clirun import run_error, run_ok
from featuremap.atlas import check_labels, dissect, similarity
from featuremap.bundled.scenes import save_dataset
from featuremap.outputs import finite
from featuremap.store import extract_dataset

CPU = ["--device", "cpu"]  # the library calls they are compared with run on the CPU
LAYERS = ["backbone.block1", "backbone.block4"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Generated scenes with masks (images/, masks/, classes.txt)."""
    return save_dataset(tmp_path_factory.mktemp("atlas-cli") / "pairs", 24, seed=4,
                        layout="segmentation")


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """Generated scenes in class folders: no masks."""
    return save_dataset(tmp_path_factory.mktemp("atlas-cli") / "classes", 14, seed=5)


@pytest.fixture(scope="module")
def stores(shapes, pairs):
    """Two unpooled stores of the same image/mask pairs."""
    first = extract_dataset(shapes, pairs, layers=["backbone.block3", "backbone.block4"],
                            out=pairs.parent / "a.zarr", batch_size=8)
    second = extract_dataset(shapes, pairs, layers="backbone.block2",
                             out=pairs.parent / "b.zarr", batch_size=8)
    return first.path, second.path


def printed(result) -> list[str]:
    """The lines a result puts on stdout (its 'note:' lines go to stderr)."""
    return [line for line in str(result).splitlines() if not line.startswith("note: ")]


def as_json(data) -> dict:
    return json.loads(json.dumps(finite(data)))


def never(*_args, **_kwargs):
    raise AssertionError("the work ran although an option was invalid")


# --------------------------------------------------------------------------------- dissect
def test_dissect_prints_and_writes_what_the_library_returns(shapes, pairs, tmp_path, capsys):
    figure, data = tmp_path / "d.png", tmp_path / "d.json"
    out = run_ok(["dissect", str(pairs), "--layers", ",".join(LAYERS), "--batch-size", "8",
                  "--out", str(figure), "--json", str(data), *CPU], capsys)
    expected = dissect(shapes, str(pairs), layers=LAYERS, batch_size=8)
    assert out.splitlines() == [*printed(expected), f"wrote {figure} and {data}"]
    assert json.loads(data.read_text()) == as_json(expected.to_dict())
    with Image.open(figure) as image:  # two layers: two panels side by side
        assert image.format == "PNG" and 600 < image.width < 1100 and 350 < image.height < 650


def test_dissect_options_and_the_label_check(shapes, pairs, tmp_path, capsys):
    data = tmp_path / "d.json"
    out = run_ok(["dissect", str(pairs), "--layers", "backbone.block4", "--concepts", "masks",
                  "--quantile", "0.01", "--threshold", "0.1", "--check-labels", "--k", "3",
                  "--json", str(data), *CPU], capsys)
    expected = dissect(shapes, str(pairs), layers="backbone.block4", concepts=["masks"],
                       quantile=0.01, threshold=0.1)
    check = check_labels(shapes, str(pairs), expected, k=3)
    assert out.splitlines() == [*printed(expected), *printed(check), f"wrote {data}"]
    assert expected.categories == ("shape",) and check.rows
    written = json.loads(data.read_text())
    assert written.pop("label_check") == as_json(check.to_dict())
    assert written == as_json(expected.to_dict())


def test_dissect_reads_a_store_without_a_model(pairs, stores, tmp_path, capsys):
    store, _ = stores
    data = tmp_path / "d.json"
    out = run_ok(["dissect", str(store), "--layers", "backbone.block4", "--json", str(data)],
                 capsys)
    expected = dissect(None, store, layers="backbone.block4")
    assert out.splitlines() == [*printed(expected), f"wrote {data}"]
    assert json.loads(data.read_text()) == as_json(expected.to_dict())


# ------------------------------------------------------------------------------ similarity
def test_similarity_prints_and_writes_what_the_library_returns(shapes, pairs, tmp_path,
                                                               capsys):
    figure, data = tmp_path / "cka.png", tmp_path / "cka.json"
    out = run_ok(["similarity", str(pairs), "--layers", ",".join(LAYERS), "--batch-size", "8",
                  "--out", str(figure), "--json", str(data), *CPU], capsys)
    expected = similarity(shapes, str(pairs), layers=LAYERS, batch_size=8)
    assert out.splitlines() == [*printed(expected), f"wrote {figure} and {data}"]
    assert json.loads(data.read_text()) == as_json(expected.to_dict())
    assert expected.images == 24 and expected.matrix[0, 0] == pytest.approx(1.0)
    with Image.open(figure) as image:  # a 2 x 2 heatmap and its colour bar
        assert image.format == "PNG" and 400 < image.width < 800 and 300 < image.height < 600


def test_similarity_of_two_models_with_avg_pooling(shapes, pairs, capsys):
    out = run_ok(["similarity", str(pairs), "--layers", ",".join(LAYERS), "--other", "shapes",
                  "--other-layers", "backbone.block2", "--pool", "avg", "--batch-size", "12",
                  *CPU], capsys)
    expected = similarity(shapes, str(pairs), layers=LAYERS, other=shapes,
                          other_layers=["backbone.block2"], pool="avg", batch_size=12)
    assert out.splitlines() == printed(expected)
    assert expected.matrix.shape == (2, 1) and "columns: [0] backbone.block2" in out


def test_similarity_of_two_stores_needs_no_model(stores, tmp_path, capsys):
    first, second = stores
    data = tmp_path / "cka.json"
    out = run_ok(["similarity", str(first), "--other", str(second), "--batch-size", "8",
                  "--json", str(data)], capsys)
    expected = similarity(None, first, other=second, batch_size=8)
    assert out.splitlines() == [*printed(expected), f"wrote {data}"]
    assert json.loads(data.read_text()) == as_json(expected.to_dict())
    assert expected.rows == ["backbone.block3", "backbone.block4"]
    assert expected.columns == ["backbone.block2"]


# ---------------------------------------------------------------------------- bad input
PAIRS, CLASSES, MISSING = "{pairs}", "{classes}", "{missing}"


@pytest.mark.parametrize(("argv", "match", "early"), [
    (["dissect", PAIRS, "--layers", "backbone.blok4"], "Did you mean 'backbone.block4'", False),
    (["similarity", PAIRS, "--layers", "backbone.blok4"], "Did you mean 'backbone.block4'",
     False),
    (["dissect", PAIRS, "--layers", "backbone.block4", "--quantile", "0.5"],
     r"quantile .* in \(0, 0.5\)", True),
    (["dissect", PAIRS, "--layers", "backbone.block4", "--quantile", "0"], "quantile", True),
    (["dissect", PAIRS, "--layers", "backbone.block4", "--threshold", "1.5"],
     r"threshold is an IoU in \[0, 1\]", True),
    (["dissect", PAIRS, "--layers", "backbone.block4", "--threshold", "-0.1"], "threshold",
     True),
    (["dissect", CLASSES, "--layers", "backbone.block4", "--concepts", "masks"],
     "need image/mask pairs", False),
    (["dissect", PAIRS, "--layers", "backbone.block4", "--concepts", "colr"],
     "Did you mean 'colour'", False),
    (["dissect", CLASSES, "--layers", "backbone.block4", "--check-labels"],
     "checking labels needs the image/mask pairs", True),
    (["dissect", PAIRS, "--layers", "backbone.block4", "--check-labels", "--k", "0"],
     "--k must be an integer >= 1", True),
    (["dissect", MISSING, "--layers", "backbone.block4"], "does not exist", False),
    (["similarity", MISSING, "--layers", "backbone.block4"], "does not exist", False),
    (["dissect", "--layers", "backbone.block4"], "Missing argument 'SOURCE'", True),
    (["similarity"], "Missing argument 'SOURCE'", True),
    (["dissect", PAIRS, "--layers", "backbone.block4", "--out", "{tmp}/d.gif"],
     "unsupported suffix '.gif'", True),
    (["similarity", PAIRS, "--layers", "backbone.block4", "--json", "{tmp}/cka.txt"],
     "--json .* unsupported suffix '.txt'", True),
    (["dissect", PAIRS, "--layers", "backbone.block4", "--out", "{tmp}/no/d.png"],
     "does not exist", True),
    (["similarity", PAIRS, "--layers", "backbone.block4", "--other", "resnet19"],
     "Unknown model 'resnet19'. Did you mean 'resnet18'", True),
    (["similarity", PAIRS, "--layers", "backbone.block4", "--pool", "max"],
     "pool must be one of none, avg", True),
    (["similarity", PAIRS, "--layers", "backbone.block4", "--batch-size", "3"],
     "batch_size must be an integer >= 4", True),
    (["similarity", PAIRS, "--layers", "backbone.block4", "--other-weights", "random"],
     "give --other too", True),
    (["similarity", PAIRS], "--layers is required for a dataset folder", True),
])
def test_bad_input_is_one_line_and_exit_2(argv, match, early, pairs, classes, tmp_path,
                                          capsys, monkeypatch):
    if early:  # refused before any pass over the images
        monkeypatch.setattr(featuremap.atlas, "dissect", never)
        monkeypatch.setattr(featuremap.atlas, "similarity", never)
    where = {"pairs": pairs, "classes": classes, "missing": tmp_path / "nope",
             "tmp": tmp_path}
    line = run_error([a.format(**where) for a in argv], capsys)
    assert re.search(match, line), line


def test_a_store_with_a_model_source_is_refused(stores, capsys):
    first, second = stores
    line = run_error(["similarity", str(first), "--other", "resnet18"], capsys)
    assert "the other side must be a store of the same images" in line
    line = run_error(["similarity", str(first), "--other", str(second), "--other-weights",
                      "random"], capsys)
    assert "--other-weights is for a second model" in line


def test_existing_outputs_are_never_overwritten_without_asking(pairs, tmp_path, capsys,
                                                               monkeypatch):
    figure, data = tmp_path / "mine.png", tmp_path / "mine.json"
    figure.write_bytes(b"precious")
    data.write_text("{}")
    with monkeypatch.context() as patch:
        patch.setattr(featuremap.atlas, "dissect", never)
        patch.setattr(featuremap.atlas, "similarity", never)
        for command in ("dissect", "similarity"):
            for option, path in (("--out", figure), ("--json", data)):
                line = run_error([command, str(pairs), "--layers", "backbone.block4", option,
                                  str(path)], capsys)
                assert "pass --overwrite" in line
    assert figure.read_bytes() == b"precious" and data.read_text() == "{}"
    out = run_ok(["similarity", str(pairs), "--layers", "backbone.block4", "--batch-size", "8",
                  "--out", str(figure), "--json", str(data), "--overwrite"], capsys)
    assert out.endswith(f"wrote {figure} and {data}\n")
    assert figure.read_bytes()[:4] == b"\x89PNG" and json.loads(data.read_text())["images"] == 24


@pytest.mark.parametrize(("command", "example"), [
    ("dissect", "featuremap scenes shapes-seg --n 120 --layout segmentation"),
    ("similarity", "featuremap similarity shapes-seg --layers 'backbone.block?'"),
])
def test_help_has_examples(command, example, capsys):
    out = run_ok([command, "--help"], capsys)
    assert "Examples:" in out and example in " ".join(out.split())

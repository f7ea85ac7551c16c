"""The command line: every command runs, and every bad input is one line on stderr, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirun import run, run_error, run_ok


@pytest.fixture
def photo(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_conv_prints_table_and_writes_grid(photo, tmp_path, capsys):
    out_png = tmp_path / "maps.png"
    out = run_ok(["conv", str(photo), "--filters", "sobel,gabor:4", "--stride", "2",
                  "--padding", "same", "--out", str(out_png)], capsys)
    assert "sobel_x" in out and "gabor_45deg" in out and "20 x 24" in out
    assert "(40 + 8+9 - 19) // 2 + 1 = 20" in out
    assert "MACs" in out
    with Image.open(out_png) as im:
        assert im.size[0] > 300


def test_conv_default_out_never_overwrites(photo, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "maps.png").write_bytes(b"precious")
    run_ok(["conv", str(photo)], capsys)
    assert (tmp_path / "maps.png").read_bytes() == b"precious"
    assert (tmp_path / "maps-1.png").stat().st_size > 0


def test_conv_per_channel_and_depth(photo, tmp_path, capsys):
    out = run_ok(["conv", str(photo), "-f", "sobel,laplacian", "--depth", "2", "--channels",
                  "per-channel", "--out", str(tmp_path / "m.png")], capsys)
    assert "sobel_y[B]" in out and "laplacian" not in out


def test_shape_prints_formula_macs_bytes(capsys):
    out = run_ok(["shape", "--input", "224", "--kernel", "3", "--stride", "2", "--padding", "1",
                  "--depth", "64"], capsys)
    assert "64 x 112 x 112" in out
    assert "(224 + 2*1 - 3) // 2 + 1 = 112" in out
    assert "21,676,032" in out and "3,211,264 bytes" in out


def test_shape_and_conv_note_padding_beyond_the_kernel(photo, tmp_path, capsys):
    note = ("note    padding 5 > dilation x (kernel - 1) = 2: in each map, the outer 3 rows and "
            "columns on each side see only padding (zeros).")
    out = run_ok(["shape", "--input", "10", "--kernel", "3", "--padding", "5"], capsys)
    assert "64 x 18 x 18" in out and note in out
    out = run_ok(["conv", str(photo), "--padding", "5", "--out", str(tmp_path / "m.png")], capsys)
    assert "2 x 48 x 56" in out and note in out
    assert "note" not in run_ok(["shape", "--padding", "1"], capsys)


def test_shape_padding_mode_limits(capsys):
    line = run_error(["shape", "--input", "4", "--kernel", "3", "--padding", "4",
                      "--padding-mode", "reflect"], capsys)
    assert "reflect padding 4 needs padding < the input size 4" in line
    out = run_ok(["shape", "--input", "4", "--kernel", "3", "--padding", "4", "--padding-mode",
                  "circular"], capsys)
    assert "64 x 10 x 10" in out and "(the image wrapped around from the opposite side)" in out


def test_explain_engine(photo, capsys):
    out = run_ok(["explain", str(photo), "--filters", "sobel", "--at", "1,0,5", "--padding",
                  "1"], capsys)
    assert "sobel_y" in out and "[0]" in out and "sum of products" in out


def test_samples_and_filters_list(capsys):
    assert "sample:astronaut" in run_ok(["samples"], capsys)
    assert "gabor" in run_ok(["filters"], capsys)


def test_demo_writes_self_contained_html(tmp_path, capsys):
    target = tmp_path / "demo.html"
    out = run_ok(["demo", "--out", str(target), "--short-side", "64"], capsys)
    assert str(target) in out.replace("\n", "")
    text = target.read_text()
    assert text.count("data:image/png;base64,") >= 5
    assert "src=\"http" not in text and "href=\"http" not in text
    for words in ("stride 4", "depth 16", "sum of products", "Object recognition",
                  "Image segmentation", "low to high", "Receptive fields",
                  "52 + (3 - 1) x 1 x 8 = 68", "whole image", "What does each channel detect?",
                  "One atlas row per layer"):
        assert words in text


def test_the_demo_s_verdict_follows_the_measured_curve():
    from featuremap.demo import _verdict

    layers = ["b.block1", "b.block2"]
    rising = _verdict({"shape": [0.1, 0.8], "colour": [0.5, 0.0]}, layers)
    assert "high-level later holds" in rising and "low-level first holds" in rising
    assert "block1 10%, block2 80%" in rising
    flat = _verdict({"shape": [0.5, 0.2], "colour": [0.0, 0.0]}, layers)
    assert "high-level later does not show" in flat and "low-level first does not show" in flat


def test_version(capsys):
    assert "featuremap" in run_ok(["--version"], capsys)


# ------------------------------------------------------------------------------ bad input
def _truncated(tmp_path, fmt):
    rng = np.random.default_rng(1)
    path = tmp_path / f"cut.{fmt}"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda t: t / "nope.png", "does not exist"),
        (lambda t: t, "is a directory"),
        (lambda t: (t / "empty.png").write_bytes(b"") and t / "empty.png" or t / "empty.png",
         "empty"),
        (lambda t: _truncated(t, "png"), "truncated"),
        (lambda t: _truncated(t, "jpg"), "truncated"),
        (lambda t: (t / "notes.png").write_text("hello") and t / "notes.png", "not an image"),
    ],
    ids=["missing", "directory", "zero-bytes", "truncated-png", "truncated-jpeg", "text-file"],
)
def test_bad_image_files(tmp_path, capsys, make, expect):
    line = run_error(["conv", str(make(tmp_path)), "--out", str(tmp_path / "o.png")], capsys)
    assert expect in line.lower()


def test_unknown_sample(capsys):
    line = run_error(["conv", "sample:astronot"], capsys)
    assert "astronaut" in line and "featuremap samples" in line


def test_unknown_filter_did_you_mean(photo, capsys):
    line = run_error(["conv", str(photo), "--filters", "sobol"], capsys)
    assert "Did you mean 'sobel'" in line


@pytest.mark.parametrize("stride", ["0", "-2"])
def test_bad_stride(photo, capsys, stride):
    line = run_error(["conv", str(photo), f"--stride={stride}"], capsys)
    assert f"stride must be a positive integer, got {stride}" in line


def test_negative_padding(photo, capsys):
    assert "padding must be >= 0" in run_error(["conv", str(photo), "--padding=-1"], capsys)


def test_kernel_larger_than_padded_input(tmp_path, capsys):
    path = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    line = run_error(["conv", str(path), "--filters", "gabor:2"], capsys)
    assert "does not fit input 8" in line and "output would be" in line


def test_at_outside_the_map(photo, capsys):
    line = run_error(["explain", str(photo), "--at", "0,40,0"], capsys)
    assert "outside the output" in line


def test_out_into_missing_folder(photo, tmp_path, capsys):
    line = run_error(["conv", str(photo), "--out", str(tmp_path / "no" / "maps.png")], capsys)
    assert "does not exist" in line


def test_bad_option_syntax(photo, capsys):
    assert "--at must be D,Y,X" in run_error(["explain", str(photo), "--at", "1,2"], capsys)
    assert "--stride must be" in run_error(["conv", str(photo), "--stride", "a"], capsys)


def test_impossible_shape(capsys):
    line = run_error(["shape", "--input", "224", "--kernel", "300"], capsys)
    assert "((224 + 0 - 300) // 1 + 1 <= 0)" in line


def test_console_script_exit_code_and_no_torch_on_help(tmp_path):
    code = ("import sys; from featuremap.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, 'heavy import'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    bad = subprocess.run([sys.executable, "-m", "featuremap", "conv", str(tmp_path / "x.png")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


def test_public_api_is_lazy_and_complete():
    code = ("import sys, featuremap\n"
            "assert 'numpy' not in sys.modules and 'torch' not in sys.modules\n"
            "for name in ['conv2d', 'compute_maps', 'explain_value', 'filter_bank', 'load_image',"
            " 'output_size', 'conv_cost', 'plot_maps']:\n    getattr(featuremap, name)\n"
            "assert 'torch' not in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
            "for name in featuremap.__all__:\n    getattr(featuremap, name)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------- networks
def test_models_lists_bundled_and_torchvision(capsys):
    out = run_ok(["models"], capsys)
    assert "shapes" in out and "resnet18" in out and "fcn_resnet50" in out


def test_layers_table_with_shapes_and_strides(capsys):
    out = run_ok(["layers", "resnet18", "--type", "conv", "--input-size", "64"], capsys)
    assert "layer1.0.conv1" in out and "64 x 16 x 16" in out and "20 layers" in out


def test_show_writes_grid_and_notes_random_weights(photo, tmp_path, capsys):
    target = tmp_path / "grid.png"
    code, out, err = run(["show", str(photo), "-m", "resnet18", "--weights", "random",
                          "--layer", "layer1", "--top", "4", "--out", str(target)], capsys)
    assert code == 0, err
    assert "note: random weights" in err
    assert "64 x 56 x 56" in out and "stride 4" in out
    with Image.open(target) as im:
        assert im.size[0] > 200


def test_overview_default_layers(photo, tmp_path, capsys):
    target = tmp_path / "ov.png"
    out = run_ok(["overview", str(photo), "-m", "resnet18", "--weights", "random",
                  "--per-layer", "3", "--out", str(target)], capsys)
    for name in ("conv1", "layer1", "layer4"):
        assert name in out
    assert target.stat().st_size > 0


def test_grey_image_into_rgb_model_is_converted_with_a_note(tmp_path, capsys):
    path = tmp_path / "grey.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), np.uint8)).save(path)
    code, _, err = run(["show", str(path), "-m", "resnet18", "--weights", "random", "--layer",
                        "conv1", "--out", str(tmp_path / "g.png")], capsys)
    assert code == 0 and "greyscale" in err


def test_unknown_model_did_you_mean(photo, capsys):
    line = run_error(["show", str(photo), "-m", "resnet19", "--layer", "conv1"], capsys)
    assert "Did you mean 'resnet18'" in line and "featuremap models" in line


def test_unknown_layer_did_you_mean(photo, capsys):
    line = run_error(["show", str(photo), "-m", "resnet18", "--weights", "random", "--layer",
                      "layer5"], capsys)
    assert "Did you mean 'layer4'" in line and "featuremap layers resnet18" in line


@pytest.mark.parametrize("kind", ["missing", "corrupt", "other-architecture"])
def test_bad_weights_files(photo, tmp_path, capsys, kind):
    import torch
    import torchvision

    path = tmp_path / "w.pth"
    if kind == "corrupt":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "other-architecture":  # a small one: vgg11's state dict is 530 MB
        torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    line = run_error(["show", str(photo), "-m", "resnet18", "--weights", str(path), "--layer",
                      "conv1"], capsys)
    expect = {"missing": "does not exist", "corrupt": "corrupt",
              "other-architecture": "does not fit resnet18"}[kind]
    assert expect in line


def test_weights_file_loads(photo, tmp_path, capsys, resnet18):
    import torch

    path = tmp_path / "w.pth"
    torch.save(resnet18.state_dict(), path)
    out = run_ok(["show", str(photo), "-m", "resnet18", "--weights", str(path), "--layer",
                  "layer2", "--out", str(tmp_path / "g.png")], capsys)
    assert "128 x 28 x 28" in out


def test_input_too_small_names_the_layer(tmp_path, capsys):
    line = run_error(["layers", "vgg11", "--input-size", "16"], capsys)
    assert "too small" in line and "features." in line


def _caught(monkeypatch) -> tuple[list, list]:
    """The models the command line loads and the figures it saves (each still loaded and
    saved): what a command computed, to hold against plain torch."""
    import featuremap.plot
    import featuremap.zoo

    models, figures = [], []
    load, save = featuremap.zoo.load_model, featuremap.plot.save_figure

    def loading(*args, **kwargs):
        models.append(load(*args, **kwargs))
        return models[-1]

    def saving(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(featuremap.zoo, "load_model", loading)
    monkeypatch.setattr(featuremap.plot, "save_figure", saving)
    return models, figures


def _field(module, layer: str) -> int:
    """The receptive field of ``layer`` in a torchvision ResNet, from its modules: along the
    main path (not the 1x1 downsample branch), each k x k window with stride s adds
    (k - 1) x (the product of the strides before it)."""
    import torch

    field, jump = 1, 1
    for name, m in module.named_modules():
        if "downsample" in name or not isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
            continue
        k, s = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride))
        field, jump = field + (k - 1) * jump, jump * s
        if name == layer or name.startswith(layer + "."):
            last = field
    return last


@pytest.mark.parametrize(("draw", "layer"), [("overlay", "layer2"), ("kernels", "conv1")])
def test_show_overlay_and_kernels(tmp_path, capsys, monkeypatch, draw, layer):
    """The maps ``show`` saves are the layer's output under a plain forward hook on the image
    as torchvision's own ImageNet preprocessing makes it; the printed line gives their shape,
    stride and field; the figure is the overlay of their channel mean on that image, or the
    layer's 64 filters."""
    import torch
    from torchvision.models import ResNet18_Weights

    photo = tmp_path / "photo.png"  # short side 256 already: the resize leaves it as it is
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 288, 3), np.uint8)).save(
        photo)
    models, figures = _caught(monkeypatch)
    target, saved = tmp_path / f"{draw}.png", tmp_path / "maps.npz"
    code, out, err = run(["show", str(photo), "-m", "resnet18", "--weights", "random",
                          "--layer", layer, "--draw", draw, "--out", str(target),
                          "--save-maps", str(saved)], capsys)
    assert code == 0, err
    (model,), (fig,) = models, figures
    module = model.module
    x = ResNet18_Weights.IMAGENET1K_V1.transforms()(Image.open(photo).convert("RGB"))[None]
    caught: list = []
    hook = module.get_submodule(layer).register_forward_hook(
        lambda _m, _i, output: caught.append(output.detach().float().cpu()))
    try:
        with torch.no_grad():
            module(x.to(next(module.parameters()).device))
    finally:
        hook.remove()
    want = caught[0].numpy()

    with np.load(saved) as z:
        assert z.files == [layer]
        got = z[layer]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))

    _, depth, height, width = want.shape
    kind = type(module.get_submodule(layer)).__name__
    assert out.splitlines()[0] == (
        f"resnet18 {layer} ({kind}): maps {depth} x {height} x {width}, stride "
        f"{x.shape[-1] // width}, field {_field(module, layer)} px; input "
        f"{' x '.join(map(str, x.shape[1:]))}")
    assert "random weights" in err and "enlarged" not in err
    with Image.open(target) as im:
        assert im.format == "PNG"

    panels = [ax for ax in fig.axes if ax.images]
    if draw == "overlay":
        (ax,) = panels  # and its colour bar
        assert len(fig.axes) == 2
        picture, heat = (im.get_array() for im in ax.images)
        crop = x[0] * torch.tensor([0.229, 0.224, 0.225])[:, None, None] + torch.tensor(
            [0.485, 0.456, 0.406])[:, None, None]  # the crop before normalising
        np.testing.assert_allclose(picture, crop.permute(1, 2, 0).numpy(), atol=1e-5)
        mean = torch.nn.functional.interpolate(torch.from_numpy(want.mean(1, keepdims=True)),
                                               size=tuple(x.shape[-2:]), mode="bilinear")[0, 0]
        np.testing.assert_allclose(heat, mean.numpy(), rtol=1e-4,
                                   atol=1e-4 * float(mean.abs().max()))
        assert f"mean of {depth} channels" in ax.get_title()
    else:
        weight = module.get_submodule(layer).weight.detach().float().cpu().numpy()
        assert len(panels) == len(fig.axes) == weight.shape[0] == 64
        assert panels[0].get_subplotspec().get_geometry()[:2] == (8, 8)
        for ax, w in zip(panels, weight, strict=True):
            f = np.moveaxis(w, 0, -1)
            np.testing.assert_allclose(ax.images[0].get_array(), 0.5 + 0.5 * f / np.abs(f).max(),
                                       atol=1e-6)
        assert fig._suptitle.get_text() == f"resnet18 {layer}: 64 filters 7x7 (RGB, grey = 0)"


def test_show_bad_draw_and_kernels_of_a_container(photo, capsys):
    base = ["show", str(photo), "-m", "resnet18", "--weights", "random"]
    assert "--draw must be one of" in run_error(base + ["--layer", "conv1", "--draw", "x"],
                                                capsys)
    line = run_error(base + ["--layer", "layer1", "--draw", "kernels"], capsys)
    assert "no convolution filters" in line
    assert "--channels must be integers" in run_error(base + ["--layer", "conv1",
                                                              "--channels", "a,b"], capsys)


def test_train_demo_small_budget_and_no_overwrite(tmp_path, capsys, photo):
    out = tmp_path / "model"
    text = run_ok(["train-demo", "--out", str(out), "--epochs", "1", "--n-train", "64",
                   "--eval-n", "20"], capsys)
    assert "held-out scenes (seed 12345, n 20)" in text
    weights = out / "shapes.safetensors"
    before = weights.read_bytes()
    line = run_error(["train-demo", "--out", str(out), "--epochs", "1", "--n-train", "64"],
                     capsys)
    assert "pass --overwrite" in line and weights.read_bytes() == before
    shown = run_ok(["show", str(photo), "-m", "shapes", "--weights", str(weights), "--layer",
                    "backbone.block1", "--out", str(tmp_path / "g.png")], capsys)
    assert "16 x 32 x 32" in shown


def test_shapes_model_default_and_random(photo, tmp_path, capsys):
    code, out, err = run(["show", str(photo), "--layer", "backbone.block4.relu2",
                          "--out", str(tmp_path / "a.png")], capsys)
    assert code == 0 and "128 x 8 x 8" in out and "random" not in err
    code, _, err = run(["show", str(photo), "--weights", "random", "--layer",
                        "backbone.block4", "--out", str(tmp_path / "b.png")], capsys)
    assert code == 0 and "note: random weights" in err


# ------------------------------------------------------------------------- recognition
def test_classify_top_k_and_cam(tmp_path, capsys):
    scene = Path(__file__).resolve().parents[1] / "docs" / "scene.png"
    target = tmp_path / "cam.png"
    out = run_ok(["classify", str(scene), "--top", "3", "--cam", "auto", "--out", str(target)],
                 capsys)
    assert "1      6  crescent" in out and "top 3 of 7" in out
    assert "grad-cam of shapes at 'backbone.block4'" in out
    with Image.open(target) as im:
        assert im.size[0] > 200
    out = run_ok(["classify", str(scene), "--cam", "backbone.block4", "--method", "cam",
                  "--out", str(tmp_path / "c2.png")], capsys)
    assert "cam of shapes" in out


def test_classify_bad_inputs(tmp_path, capsys):
    scene = Path(__file__).resolve().parents[1] / "docs" / "scene.png"
    line = run_error(["classify", str(scene), "--cam", "classifier.fc"], capsys)
    assert "is not convolutional" in line
    line = run_error(["classify", str(scene), "-m", "lraspp_mobilenet_v3_large", "--weights",
                      "random"], capsys)
    assert "classif" in line


def test_probe_on_generated_classes(tmp_path, capsys):
    from featuremap.bundled.scenes import save_dataset

    data = tmp_path / "data"
    save_dataset(data, 60, seed=3, layout="classes")
    (data / "circle" / "broken.png").write_bytes(b"not an image")
    target = tmp_path / "p.safetensors"
    code, out, err = run(["probe", str(data), "--layers", "backbone.block1,backbone.block4",
                          "--out", str(target)], capsys)
    assert code == 0, err
    assert "backbone.block4" in out and "1 skipped" in out and "broken.png" in err
    assert target.exists() and target.with_suffix(".json").exists()
    line = run_error(["probe", str(data), "--layers", "backbone.block4", "--out", str(target)],
                     capsys)
    assert "overwrite" in line


def test_probe_bad_data_dirs(tmp_path, capsys):
    assert "does not exist" in run_error(["probe", str(tmp_path / "nope"), "--layers",
                                          "backbone.block4"], capsys)
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "flat" / "a.png")
    line = run_error(["probe", str(tmp_path / "flat"), "--layers", "backbone.block4"], capsys)
    assert "folder" in line


# ------------------------------------------------------------------------- segmentation
def test_segment_head_and_clusters(tmp_path, capsys):
    scene = Path(__file__).resolve().parents[1] / "docs" / "scene.png"
    out = run_ok(["segment", str(scene), "--out", str(tmp_path / "s.png")], capsys)
    assert "crescent" in out and "triangle" in out and "background" in out
    out = run_ok(["segment", "sample:coffee", "--layers", "backbone.block1,backbone.block2",
                  "--k", "3", "--out", str(tmp_path / "c.png")], capsys)
    assert "segment 2" in out and "segment 3" not in out


def test_segment_bad_inputs(photo, capsys):
    line = run_error(["segment", str(photo), "--layers", "backbone.block1", "--k", "1"], capsys)
    assert "k" in line
    line = run_error(["segment", str(photo), "-m", "resnet18", "--weights", "random"], capsys)
    assert "classification model" in line
    line = run_error(["segment", str(photo), "--layers", "backbone.block1", "--head", "h"],
                     capsys)
    assert "not both" in line


def test_fit_seg_and_apply_head(tmp_path, capsys):
    from featuremap.bundled.scenes import save_dataset

    data = tmp_path / "scenes"
    save_dataset(data, 40, seed=5, layout="segmentation")
    head = tmp_path / "head.safetensors"
    out = run_ok(["fit-seg", str(data), "--layers", "backbone.block2,backbone.block4",
                  "--epochs", "5", "--out", str(head)], capsys)
    assert "mIoU" in out and head.exists()
    out = run_ok(["segment", str(data / "images" / sorted(p.name for p in (data / "images")
                                                          .iterdir())[0]),
                  "--head", str(head), "--out", str(tmp_path / "h.png")], capsys)
    assert "fitted head" in out
    assert "overwrite" in run_error(["fit-seg", str(data), "--layers", "backbone.block4",
                                     "--out", str(head)], capsys)


def test_fit_seg_mismatched_masks(tmp_path, capsys):
    from featuremap.bundled.scenes import save_dataset

    data = tmp_path / "scenes"
    save_dataset(data, 8, seed=5, layout="segmentation")
    next((data / "masks").iterdir()).unlink()
    line = run_error(["fit-seg", str(data), "--layers", "backbone.block4", "--out",
                      str(tmp_path / "h.safetensors")], capsys)
    assert "mask" in line


def test_scenes_writes_both_layouts_and_never_into_a_full_folder(tmp_path, capsys):
    out = run_ok(["scenes", str(tmp_path / "c"), "--n", "14", "--seed", "7"], capsys)
    assert "wrote 14 scenes" in out
    assert sum(1 for _ in (tmp_path / "c").rglob("*.png")) == 14
    run_ok(["scenes", str(tmp_path / "s"), "--n", "5", "--layout", "segmentation"], capsys)
    assert len(list((tmp_path / "s" / "masks").glob("*.png"))) == 5
    assert "not an empty folder" in run_error(["scenes", str(tmp_path / "c")], capsys)


def test_explicit_out_is_never_overwritten_without_asking(photo, tmp_path, capsys):
    target = tmp_path / "mine.png"
    target.write_bytes(b"precious")
    line = run_error(["conv", str(photo), "--out", str(target)], capsys)
    assert "pass --overwrite" in line and target.read_bytes() == b"precious"
    run_ok(["conv", str(photo), "--out", str(target), "--overwrite"], capsys)
    assert target.read_bytes()[:4] == b"\x89PNG"


def test_explain_a_network_value(capsys):
    scene = Path(__file__).resolve().parents[1] / "docs" / "scene.png"
    out = run_ok(["explain", str(scene), "--layer", "backbone.block2.conv1", "--at", "3,10,12"],
                 capsys)
    assert "backbone.block2.conv1, output channel 3" in out and "sum of products" in out
    assert ("in the 64 x 64 input image this value sees rows 16..25, cols 20..29 (receptive "
            "field 10 x 10 px, stride 2" in out)
    line = run_error(["explain", str(scene), "--layer", "backbone.block1.relu1", "--at",
                      "0,0,0"], capsys)
    assert "is not a Conv2d" in line
    line = run_error(["explain", str(scene), "--layer", "backbone.block2.conv1", "--at",
                      "3,40,0"], capsys)
    assert "outside the output of shape (32, 32, 32)" in line


def test_rf_unknown_layer_did_you_mean(capsys):
    scene = Path(__file__).resolve().parents[1] / "docs" / "scene.png"
    line = run_error(["rf", str(scene), "--layer", "backbone.blok2", "--at", "1,1"], capsys)
    assert "Did you mean 'backbone.block2'" in line and "featuremap layers shapes" in line


def test_rf_command_box_heatmap_and_bad_inputs(tmp_path, capsys):
    scene = Path(__file__).resolve().parents[1] / "docs" / "scene.png"
    out = run_ok(["rf", str(scene), "--layer", "backbone.block2", "--at", "8,8", "--out",
                  str(tmp_path / "rf.png")], capsys)
    assert "analytic box (y0, x0, y1, x1) (26, 26, 42, 42)" in out
    assert "gradient support box (26, 26, 42, 42)" in out
    assert "outside the 16 x 16 map" in run_error(["rf", str(scene), "--layer",
                                                   "backbone.block2", "--at", "40,8"], capsys)
    assert "no spatial receptive field" in run_error(["rf", str(scene), "--layer",
                                                      "classifier.fc", "--at", "0,0"], capsys)


def _row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if f" {name} " in line)
    return [cell.strip() for cell in line.strip("│┃ ").split("│")]


def test_layers_table_has_receptive_fields_and_strides(capsys):
    out = run_ok(["layers", "resnet18", "--pattern", "layer*", "--input-size", "224"], capsys)
    assert "receptive field" in out
    assert _row(out, "layer4")[-2:] == ["32", "435"]
    assert _row(out, "layer1.0.conv1")[-2:] == ["4", "19"]
    out = run_ok(["layers", "resnet18", "--pattern", "avgpool|fc", "--input-size", "100"],
                 capsys)
    assert _row(out, "fc")[-1] == "whole image"


def test_layers_table_marks_global_context(capsys):
    out = run_ok(["layers", "mobilenet_v3_small", "--pattern", "^features.[01]$"], capsys)
    assert _row(out, "features.0")[-1] == "3" and _row(out, "features.1")[-1] == "7*"
    assert "squeeze-and-excitation" in out


def test_explain_draws_the_figure_for_the_engine_and_a_network(photo, tmp_path, capsys):
    target = tmp_path / "explain.png"
    out = run_ok(["explain", str(photo), "--filters", "sobel", "--at", "0,3,5", "--out",
                  str(target)], capsys)
    assert f"wrote {target}" in out and target.read_bytes()[:4] == b"\x89PNG"
    line = run_error(["explain", str(photo), "--filters", "sobel", "--at", "0,3,5", "--out",
                      str(target)], capsys)
    assert "exists" in line and "--overwrite" in line
    scene = Path(__file__).resolve().parents[1] / "docs" / "scene.png"
    out = run_ok(["explain", str(scene), "--layer", "backbone.block3.conv1", "--at", "5,4,4",
                  "--out", str(target), "--overwrite"], capsys)
    assert "the 8 that contribute most" in out
    with Image.open(target) as im:
        assert im.size[0] > 400 and im.size[1] > 600


def test_rf_without_a_trace_falls_back_to_the_gradient(tmp_path, capsys, monkeypatch):
    import featuremap.receptive as receptive

    def untraceable(*_args, **_kwargs):
        raise receptive.UntraceableError("ShapesNet cannot be traced for an analytic receptive "
                                         "field (TraceError); use empirical_receptive_field.")

    monkeypatch.setattr(receptive, "receptive_field", untraceable)
    scene = Path(__file__).resolve().parents[1] / "docs" / "scene.png"
    code, out, err = run(["rf", str(scene), "--layer", "backbone.block2", "--at", "8,8",
                          "--out", str(tmp_path / "rf.png")], capsys)
    assert code == 0 and "analytic box" not in out
    assert "gradient support box (26, 26, 42, 42)" in out and "note: no analytic field" in err
    assert (tmp_path / "rf.png").read_bytes()[:4] == b"\x89PNG"


def test_rf_says_when_a_value_has_global_context(tmp_path, capsys):
    out = run_ok(["rf", "sample:chelsea", "-m", "mobilenet_v3_small", "--weights", "random",
                  "--layer", "features.2", "--at", "3,3", "--out", str(tmp_path / "rf.png")],
                 capsys)
    assert "global context" in out and "gradient support box (0, 0, 224, 224)" in out


def test_usage_errors_are_one_line(capsys):
    line = run_error(["layers", "shapes", "--input", "2"], capsys)
    assert "No such option: --input" in line and "--input-size" in line
    assert "Missing argument" in run_error(["layers"], capsys)


def test_layers_and_rf_errors_for_names_that_do_not_fit(capsys):
    line = run_error(["layers", "shapes", "--type", "linaer"], capsys)
    assert "Did you mean 'Linear'" in line
    line = run_error(["layers", "shapes", "--pattern", "backbone.blok2"], capsys)
    assert "Did you mean 'backbone.block2'" in line
    scene = Path(__file__).resolve().parents[1] / "docs" / "scene.png"
    line = run_error(["rf", str(scene), "--layer", "segmenter.head", "--at", "8,8"], capsys)
    assert "'segmenter.head' did not run in the forward pass" in line
    line = run_error(["rf", str(scene), "--layer", "backbone.block2", "--at", "8,8",
                      "--channel", "99"], capsys)
    assert "outside the 32 channels" in line


def test_rf_one_channel(tmp_path, capsys):
    scene = Path(__file__).resolve().parents[1] / "docs" / "scene.png"
    out = run_ok(["rf", str(scene), "--layer", "backbone.block2", "--at", "8,8", "--channel",
                  "5", "--out", str(tmp_path / "rf.png")], capsys)
    assert "(channel 5)" in out and "analytic box (y0, x0, y1, x1) (26, 26, 42, 42)" in out


def test_fit_seg_ignore_index_option(tmp_path, capsys):
    from featuremap.bundled.scenes import save_dataset

    data = tmp_path / "scenes"
    save_dataset(data, 6, seed=5, layout="segmentation")
    mask_path = sorted((data / "masks").iterdir())[0]
    mask = np.array(Image.open(mask_path))
    mask[0, :] = 200
    Image.fromarray(mask).save(mask_path)
    out = run_ok(["fit-seg", str(data), "--layers", "backbone.block4", "--epochs", "1",
                  "--ignore-index", "200", "--out", str(tmp_path / "h.safetensors")], capsys)
    assert "mIoU" in out and "left out 64 pixels labelled 200" in out
    line = run_error(["fit-seg", str(data), "--layers", "backbone.block4", "--epochs", "1",
                      "--ignore-index", "none", "--out", str(tmp_path / "h2.safetensors")],
                     capsys)
    assert "label 200" in line  # classes.txt names 8 classes: 200 would be a class beyond them
    assert "scene_00000" in line and "--ignore-index 200" in line
    line = run_error(["fit-seg", str(data), "--layers", "backbone.block4", "--ignore-index",
                      "abc"], capsys)
    assert "--ignore-index must be a mask label (an integer >= 0) or 'none'" in line


def test_overview_and_show_name_each_layers_receptive_field(tmp_path, capsys):
    scene = Path(__file__).resolve().parents[1] / "docs" / "scene.png"
    out = run_ok(["overview", str(scene), "--out", str(tmp_path / "ov.png")], capsys)
    assert "stride 1  field 3 px" in out and "stride 8  field 68 px" in out
    out = run_ok(["show", str(scene), "--layer", "backbone.block2", "--out",
                  str(tmp_path / "g.png")], capsys)
    assert "stride 4, field 16 px; input 3 x 64 x 64" in out

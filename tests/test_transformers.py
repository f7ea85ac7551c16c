"""Vision transformers and ConvNeXt (timm, random weights) in every command that takes a layer.

A ViT block's tokens, a Swin stage's channels-last maps and ConvNeXt's stages all become
``(N, C, H, W)`` maps: extract, show, overview, rf, explain, classify --cam, segment --layers,
probe and fit-seg work on them, through the library and the command line. Layers whose output
cannot be a map (a ViT attention's queries, a Swin block's windows, the classifier) are refused
with one line naming the reason. Oracles: timm's own ``forward_intermediates`` for the maps (the
library's and those the commands save and print), the network split by hand around the layer
for Grad-CAM, the network's value for ``explain``, its softmax for ``classify``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

import featuremap
from clirun import run_error, run_ok
from featuremap.bundled.scenes import make_scene, save_dataset
from featuremap.capture import inference_state
from featuremap.effective import empirical_receptive_field, trace_field
from featuremap.errors import ConfigError
from featuremap.receptive import receptive_field
from featuremap.summary import layer_table
from featuremap.tasks.cam import default_cam_layer, grad_cam
from featuremap.tasks.clusters import cluster_segments
from featuremap.tasks.probe import probe
from featuremap.tasks.segfit import fit_seg_head
from featuremap.tasks.seghead import apply_seg_head
from featuremap.value import explain
from featuremap.views import overview, show

CASES = {
    "vit": dict(name="timm:vit_tiny_patch16_224", layer="blocks.5", index=5, layout="tokens",
                shape=(1, 192, 14, 14), conv="patch_embed.proj", cam="blocks.10",
                seg=["blocks.3", "blocks.7"],
                overview=["patch_embed.proj", "blocks.0", "blocks.2", "blocks.4", "blocks.7",
                          "blocks.9", "blocks.11"],
                refused={"blocks.0.attn.q_norm": "attention weights or a reshaped tensor",
                         "head": "one vector per image"}),
    "convnext": dict(name="timm:convnext_atto", layer="stages.2", index=2, layout="NCHW",
                     shape=(1, 160, 14, 14), conv="stem.0", cam="stages.3",
                     seg=["stages.1", "stages.2"],
                     overview=["stem.0", "stages.0", "stages.1", "stages.2", "stages.3"],
                     refused={"head": "one vector per image"}),
    "swin": dict(name="timm:swin_tiny_patch4_window7_224", layer="layers.1", index=1,
                 layout="NHWC", shape=(1, 192, 28, 28), conv="patch_embed.proj", cam="layers.2",
                 seg=["layers.1", "layers.2"],
                 overview=["patch_embed.proj", "layers.0", "layers.1", "layers.2", "layers.3"],
                 refused={"layers.0.blocks.0.attn": "windows or patches of the image",
                          "head": "one vector per image"}),
}


@pytest.fixture(scope="module")
def built():
    """``built(name)``: the model of that name with random weights (seed 0), built once for
    this module; the tests only read it."""
    models = {}

    def get(name):
        if name not in models:
            torch.manual_seed(0)
            models[name] = featuremap.load_model(name, weights="random")
        return models[name]

    return get


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, built):
    """``(config, model)``: each model is built once for this module."""
    config = CASES[request.param]
    return config, built(config["name"])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 64 x 64 scene, 16 scenes in class folders (every class twice at least) and 16 with
    masks: the models' preprocessing resizes the scenes to 224."""
    root = tmp_path_factory.mktemp("transformers")
    Image.fromarray((np.moveaxis(make_scene(7).image, 0, -1) * 255).astype(np.uint8)).save(
        root / "scene.png")
    save_dataset(root / "classes", 16, seed=25, layout="classes")
    save_dataset(root / "seg", 16, seed=1, layout="segmentation")
    return root


@pytest.fixture
def cli(case, monkeypatch):
    """The command line loads the module's model (built once) for its name: same model, same
    code path from the flags on."""
    import featuremap.zoo

    config, model = case
    load = featuremap.zoo.load_model

    def cached(name, **options):
        if name == config["name"] and options.get("weights") == "random":
            return model
        return load(name, **options)

    monkeypatch.setattr(featuremap.zoo, "load_model", cached)
    return config


def _tensor(model, data):
    return model.prepare(str(data / "scene.png")).batch


# ------------------------------------------------------------------------------- library


def test_extract_equals_timms_intermediates(case, data):
    config, model = case
    fm = featuremap.extract(model, str(data / "scene.png"), layers=[config["layer"]])
    meta = fm.meta[config["layer"]]
    assert meta.layout == config["layout"] and meta.is_map and meta.shape == config["shape"]
    assert meta.stride == (224 / config["shape"][2],) * 2
    assert fm.input_shape == (1, 3, 224, 224)  # 64 x 64 enlarged by timm's preprocessing
    assert any("enlarged" in n for n in fm.notes)
    with torch.no_grad(), inference_state(model.module):
        want = model.module.forward_intermediates(_tensor(model, data), indices=[config["index"]],
                                                  norm=False, intermediates_only=True)[0]
    torch.testing.assert_close(fm[config["layer"]], want)


def test_show_and_overview(case, data):
    config, model = case
    image = str(data / "scene.png")
    view = show(model, image, layer=config["layer"], top=4)
    assert view.meta.shape == config["shape"] and "stride" in str(view)
    assert len(view.figure().axes) >= 4
    overlay = show(model, image, layer=config["layer"], draw="overlay", channels=[3])
    assert overlay.figure() is not None
    names = list(overview(model, image).maps)
    assert names == config["overview"]


def test_explain_on_the_patch_or_stem_convolution(case, data):
    config, model = case
    e = explain(model, str(data / "scene.png"), layer=config["conv"], at=(5, 3, 4))
    value = featuremap.extract(model, str(data / "scene.png"), layers=[config["conv"]])
    assert e.value == pytest.approx(float(value[config["conv"]][0, 5, 3, 4]), abs=1e-4)
    assert "receptive field" in e.context[0]


def _split_network(config, module):
    """``(front, back)``: the network written out up to the CAM layer and from it on."""
    if config["layout"] == "tokens":
        def front(x):
            x = module.norm_pre(module.patch_drop(module._pos_embed(module.patch_embed(x))))
            return module.blocks[:11](x)
        return front, lambda t: module.forward_head(module.norm(module.blocks[11](t)))
    if config["layout"] == "NHWC":
        return (lambda x: module.layers[:3](module.patch_embed(x)),
                lambda t: module.forward_head(module.norm(module.layers[3](t))))
    return (lambda x: module.stages(module.stem(x)),
            lambda t: module.forward_head(module.norm_pre(t)))


def test_grad_cam_equals_a_hand_written_one(case, data):
    config, model = case
    result = grad_cam(model, str(data / "scene.png"), layer=config["cam"])
    front, back = _split_network(config, model.module)
    with torch.enable_grad(), inference_state(model.module):
        t = front(_tensor(model, data)).detach().requires_grad_()
        logits = back(t)
        (grad,) = torch.autograd.grad(logits[0, result.class_index], t)
    maps, grads = t.detach(), grad
    if config["layout"] == "tokens":  # drop the class token, lay the 14 x 14 patches out
        maps, grads = (v[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2) for v in (maps, grad))
    elif config["layout"] == "NHWC":
        maps, grads = (v.permute(0, 3, 1, 2) for v in (maps, grad))
    want = torch.relu((grads.mean((2, 3), keepdim=True) * maps).sum(1))[0]
    assert result.heatmap.shape == tuple(want.shape) and result.upsampled.shape == (224, 224)
    np.testing.assert_allclose(result.heatmap, want.numpy(), rtol=1e-4, atol=1e-6)
    assert result.heatmap.max() > 0
    assert result.class_index == int(logits.argmax())


def test_receptive_fields_are_true(case, data):
    config, model = case
    image = str(data / "scene.png")
    block = trace_field(model, image, layer=config["layer"], at=(3, 4))
    conv = trace_field(model, image, layer=config["conv"], at=(3, 4))
    assert conv.field is not None and conv.support.box == conv.field.box  # the patch itself
    if config["layout"] == "tokens":  # attention: every pixel, as the gradient shows
        assert block.field.whole and block.field.box == block.support.box == (0, 0, 224, 224)
        assert block.field.stride == (16.0, 16.0) and "the whole image" in str(block)
    elif config["layout"] == "NHWC":  # shifted windows: not analysed, the gradient's support
        assert block.field is None and any("no analytic field" in n for n in block.notes)
        assert block.box == block.support.box and block.support.box != (0, 0, 224, 224)
    else:
        y0, x0, y1, x1 = block.field.clipped_box
        e0, f0, e1, f1 = block.support.box
        assert y0 <= e0 and x0 <= f0 and e1 <= y1 and f1 <= x1


def test_vit_fields_layer_table_and_stages(built):
    model = built(CASES["vit"]["name"])
    assert receptive_field(model, "patch_embed", position=(2, 3)).box == (32, 48, 48, 64)
    norm1 = receptive_field(model, "blocks.0.norm1", position=(2, 3))
    assert norm1.size == (16, 16) and not norm1.whole  # tokens before attention: one patch
    assert receptive_field(model, "blocks.0").whole
    _, erf = empirical_receptive_field(model, "blocks.0", position=(2, 3))
    assert (erf > 0).all()  # one block of attention already reaches every pixel
    rows = {r[0].strip(): r for r in layer_table(model).rows()}
    assert rows["patch_embed"][-2:] == ("16", "16")
    assert rows["blocks.0"][-2:] == ("16", "whole image")
    assert rows["head"][-2:] == ("", "whole image")
    stage = model.stages()[-1]
    assert (stage.name, stage.channels, stage.shape, stage.stride) == (
        "blocks.11", 192, (192, 14, 14), 16)
    assert default_cam_layer(model) == "blocks.10"
    with pytest.raises(ConfigError, match="reads the class token alone.*e.g. 'blocks.10'"):
        grad_cam(model, torch.zeros(1, 3, 224, 224), layer="blocks.11")


def test_swin_stages_are_channels_last_maps(built):
    model = built(CASES["swin"]["name"])
    assert [(s.channels, s.shape, s.stride) for s in model.stages()][:2] == [
        (96, (96, 56, 56), 4), (192, (192, 28, 28), 8)]
    got = model.capture(["layers.0.blocks.0.mlp", "layers.0.blocks.0.attn"], early_stop=False)(
        torch.zeros(1, 3, 224, 224))
    assert got.meta["layers.0.blocks.0.mlp"].layout == "tokens"  # (N, 56 * 56, C)
    assert got.meta["layers.0.blocks.0.attn"].layout == "other"


def test_swin_window_outputs_are_not_maps_in_the_layer_table(built):
    """Swin's attention runs on 64 windows folded into the batch dim: a (64, 3, 49, 49) softmax
    is not a 3 x 49 x 49 map with a total stride of 224 / 49."""
    from featuremap.summary import list_layers

    model = built(CASES["swin"]["name"])
    got = model.capture(["layers.0.blocks.0.attn.softmax", "layers.0.blocks.0.attn"],
                        early_stop=False)(torch.zeros(1, 3, 224, 224))
    info = {i.name: i for i in list_layers(model.module, input_size=224)}
    for name in ("layers.0.blocks.0.attn.softmax", "layers.0.blocks.0.attn"):
        assert info[name].output_shape == tuple(got.maps[name].shape), name  # batch of one
        assert info[name].cumulative_stride is None, name
    assert info["layers.0.blocks.0.norm1"].cumulative_stride == 4  # (56, 56, 96) tokens map
    assert info["patch_embed.proj"].cumulative_stride == 4


def test_clusters_probe_and_fitted_head(case, data):
    config, model = case
    seg = cluster_segments(model, str(data / "scene.png"), layers=config["seg"], k=3)
    assert seg.labels.shape == (224, 224) and len(np.unique(seg.labels)) == 3
    result = probe(model, data / "classes", layers=[config["layer"], config["conv"]])
    assert set(result.probes) == {config["layer"], config["conv"]} and result.n_test == 7
    fitted = fit_seg_head(model, data / "seg", layers=config["seg"], epochs=2, batch_size=8)
    assert fitted.n_train + fitted.n_test == 16
    resized = [n for n in fitted.notes if "resized, whole, to its input size 224 x 224" in n]
    assert bool(resized) == (config["layout"] != "NCHW")  # ViT and Swin take only 224 x 224
    labels = apply_seg_head(model, fitted, str(data / "scene.png"))
    assert labels.labels.shape == (64, 64)  # back on the image's own grid
    assert bool([n for n in labels.notes if "resized" in n]) == bool(resized)


# ---------------------------------------------------------------------------- command line


def _torch_maps(model, data, layers) -> dict[str, torch.Tensor]:
    """The maps of ``layers`` on the scene from the network itself: timm's
    ``forward_intermediates`` for its blocks or stages, a forward hook for any other layer (the
    patch or stem convolution)."""
    x = _tensor(model, data)
    stage = {n: int(n.split(".")[1]) for n in layers
             if n.count(".") == 1 and n.split(".")[0] in ("blocks", "stages", "layers")}
    maps: dict[str, torch.Tensor] = {}
    hooks = [model.module.get_submodule(n).register_forward_hook(
        lambda _m, _i, output, n=n: maps.__setitem__(n, output.detach()))
        for n in layers if n not in stage]
    try:
        with torch.no_grad(), inference_state(model.module):
            model.module(x)
            got = model.module.forward_intermediates(x, indices=sorted(set(stage.values())),
                                                     norm=False, intermediates_only=True)
    finally:
        for hook in hooks:
            hook.remove()
    at = dict(zip(sorted(set(stage.values())), got, strict=True))
    maps.update({n: at[i] for n, i in stage.items()})
    return maps


def _saved(path, want: dict[str, torch.Tensor], layers: list[str]) -> None:
    """The ``--save-maps`` file holds exactly ``layers``, each equal to the network's own."""
    with np.load(path) as saved:
        assert saved.files == layers
        for name in layers:
            torch.testing.assert_close(torch.from_numpy(saved[name]), want[name], msg=name)


def _shape(t: torch.Tensor) -> str:
    return " x ".join(map(str, t.shape[1:]))


def test_commands_give_maps(cli, case, data, tmp_path, capsys):
    """What each command prints and saves for the transformer, against the network itself:
    the maps ``show`` and ``overview`` save are timm's ``forward_intermediates`` (and the
    patch or stem convolution's output under a hook), and their printed shapes and strides
    are those maps'; ``explain``'s value is that convolution's; ``classify``'s top five and
    its Grad-CAM's class and logit are the network's softmax; ``rf`` and ``segment`` print
    what the library computes."""
    config, loaded = cli, case[1]
    image, model = str(data / "scene.png"), ["-m", config["name"], "--weights", "random"]
    layer, conv, name = config["layer"], config["conv"], config["name"]
    cam = default_cam_layer_of(config)
    want = _torch_maps(loaded, data, [layer, conv, cam, *config["overview"]])
    assert tuple(want[layer].shape) == config["shape"]
    kind = {n: type(loaded.module.get_submodule(n)).__name__ for n in want}

    def stride(n: str) -> int:
        return 224 // want[n].shape[-1]

    for draw in ("grid", "overlay"):
        out = run_ok(["show", image, "--layer", layer, "--draw", draw, *model, "--out",
                      str(tmp_path / f"{draw}.png"), "--save-maps",
                      str(tmp_path / f"{draw}.npz")], capsys)
        _saved(tmp_path / f"{draw}.npz", want, [layer])
        assert out.startswith(f"{name} {layer} ({kind[layer]}): maps {_shape(want[layer])}, "
                              f"stride {stride(layer)}")
        assert "; input 3 x 224 x 224\n" in out

    out = run_ok(["overview", image, *model, "--out", str(tmp_path / "ov.png"), "--save-maps",
                  str(tmp_path / "ov.npz")], capsys)
    _saved(tmp_path / "ov.npz", want, config["overview"])
    for n in config["overview"]:
        assert re.search(rf"^{re.escape(n)} +{kind[n]} +{_shape(want[n])} +stride {stride(n)}\b",
                         out, re.M), (n, out)

    out = run_ok(["rf", image, "--layer", layer, "--at", "3,4", *model, "--out",
                  str(tmp_path / "rf.png")], capsys)
    traced = trace_field(loaded, image, layer=layer, at=(3, 4))
    assert f"{name} {layer} at (y, x) = (3, 4), input 224 x 224\n" in out
    assert f"gradient support box {traced.support.box} (all channels)" in out

    out = run_ok(["explain", image, "--layer", conv, "--at", "0,3,4", *model], capsys)
    value = re.search(r"^sum of products \S+ \+ bias \S+ = (\S+)$", out, re.M)
    assert value and float(value.group(1)) == pytest.approx(float(want[conv][0, 0, 3, 4]),
                                                             rel=1e-5, abs=1e-5)
    assert f"of an output {_shape(want[conv])}\n" in out

    out = run_ok(["classify", image, "--cam", "auto", *model, "--out",
                  str(tmp_path / "cam.png")], capsys)
    with torch.no_grad(), inference_state(loaded.module):
        logits = loaded.module(_tensor(loaded, data))[0]
    p = logits.softmax(0)
    rows = [(int(i), float(q)) for i, q in re.findall(
        r"^ +\d+ +(\d+) +class \d+ +([\d.]+)$", out, re.M)]
    assert [i for i, _ in rows] == p.topk(5).indices.tolist()
    assert all(q == pytest.approx(float(p[i]), abs=5e-5) for i, q in rows)
    top = rows[0][0]
    _, _, h, w = want[cam].shape
    assert (f"grad-cam of {name} at '{cam}' ({h}x{w}) for class {top} 'class {top}' "
            f"(p = {float(p[top]):.3f}, logit {float(logits[top]):.3f})") in out

    out = run_ok(["segment", image, "--layers", ",".join(config["seg"]), "--k", "3", *model,
                  "--out", str(tmp_path / "seg.png")], capsys)
    segments = cluster_segments(loaded, image, layers=config["seg"], k=3)
    assert len(segments.rows()) == 3
    for label, share in segments.rows():
        assert re.search(rf"^.*{re.escape(label)} .* {re.escape(share)} ", out, re.M), out

    out = run_ok(["probe", str(data / "classes"), "--layers", layer, *model, "--out",
                  str(tmp_path / "p.safetensors")], capsys)
    assert "7 classes, 9 train / 7 test images" in out
    out = run_ok(["fit-seg", str(data / "seg"), "--layers", ",".join(config["seg"]), "--epochs",
                  "1", *model, "--out", str(tmp_path / "head.safetensors")], capsys)
    assert "mIoU" in out
    run_ok(["segment", image, "--head", str(tmp_path / "head.safetensors"), *model, "--out",
            str(tmp_path / "head.png")], capsys)
    for png in ("grid.png", "overlay.png", "ov.png", "rf.png", "cam.png", "seg.png", "head.png"):
        with Image.open(tmp_path / png) as im:
            assert im.format == "PNG"


def default_cam_layer_of(config) -> str:
    return "blocks.10" if config["layout"] == "tokens" else config["overview"][-1]


def test_layers_prints_every_field_without_a_traceback(capsys):
    out = run_ok(["layers", CASES["vit"]["name"], "--pattern", "blocks.0*"], capsys)
    assert "whole image" in out and "Traceback" not in out
    out = run_ok(["layers", CASES["vit"]["name"], "--leaves"], capsys)
    assert "attention on the way" in out


def test_layers_that_are_not_maps_are_refused_everywhere(cli, data, tmp_path, capsys):
    config = cli
    image, model = str(data / "scene.png"), ["-m", config["name"], "--weights", "random"]
    for layer, reason in config["refused"].items():
        commands = [
            ["show", image, "--layer", layer],
            ["overview", image, "--layers", f"{config['layer']},{layer}"],
            ["rf", image, "--layer", layer, "--at", "0,0"],
            ["classify", image, "--cam", layer],
            ["segment", image, "--layers", layer],
            ["fit-seg", str(data / "seg"), "--layers", layer, "--epochs", "1", "--batch-size",
             "2"],
        ]
        if layer != "head":  # a probe reads one vector per image: the classifier is one
            commands.append(["probe", str(data / "classes"), "--layers", layer, "--batch-size",
                             "2"])
        for argv in commands:
            line = run_error([*argv, *model, "--out", str(tmp_path / "x.png")
                              if argv[0] not in ("probe", "fit-seg") else
                              str(tmp_path / "x.safetensors")], capsys)
            assert f"'{layer}'" in line and reason in line, (argv[0], line)
        line = run_error(["explain", image, "--layer", layer, "--at", "0,0,0", *model], capsys)
        assert "is not a Conv2d" in line and config["conv"] in line

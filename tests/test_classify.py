"""Tests of featuremap.tasks.classify: top-k, Grad-CAM, CAM, linear probes."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from featuremap.bundled.scenes import CLASSES, make_scene, save_dataset
from featuremap.errors import ConfigError, UnknownNameError
from featuremap.extraction import extract
from featuremap.tasks.cam import CamResult, cam, default_cam_layer, grad_cam
from featuremap.tasks.probe import probe
from featuremap.tasks.topk import Classification, classify
from featuremap.zoo import load_model

FRESH = 50_000  # scene seeds far from the ones the bundled model was trained or evaluated on


def _quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights warn, as they should
        return load_model(*args, **kwargs)


@pytest.fixture(scope="module")
def shapes():
    return load_model("shapes")


@pytest.fixture(scope="module")
def scenes():
    return [make_scene(FRESH + i) for i in range(100)]


class TinyNet(nn.Module):
    """conv -> ReLU(inplace) -> conv -> ReLU(inplace) -> GAP -> MLP head (no CAM structure)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 8),
                                  nn.ReLU(), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TinySeg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (N, 3, H, W): per-pixel scores, no classifier


def _no_hooks(module: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in module.modules())


# ----------------------------------------------------------------------------------- classify


def test_classify_shapes_top1_is_the_scene_label(shapes, scenes):
    for scene in scenes[:20]:
        result = classify(shapes, scene.image, top=3)
        assert isinstance(result, Classification)
        index, name, _ = result.top[0]
        assert (index, name) == (scene.label - 1, CLASSES[scene.label])
    probs = [p for _, _, p in result.top]
    assert probs == sorted(probs, reverse=True) and len(probs) == 3
    assert result.probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert result.logits.shape == (7,) and result.model_name == "shapes"
    text = str(result)
    assert "rank" in text and "probability" in text and CLASSES[scenes[19].label] in text


def test_classify_values_are_softmax_of_the_model_output(shapes, scenes):
    result = classify(shapes, scenes[0].image, top=7)
    batch = shapes.prepare(scenes[0].image).batch
    with torch.no_grad():
        expected = torch.softmax(shapes.module(batch)[0], 0)
    for index, _, p in result.top:
        assert p == pytest.approx(expected[index].item(), abs=1e-6)


def test_classify_resnet18_weights_file_names_classes(tmp_path, scenes):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    path = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), path)
    model = load_model("resnet18", weights=path)
    result = classify(model, scenes[0].image)
    assert len(result.top) == 5 and result.logits.shape == (1000,)
    assert all(name == f"class {i}" for i, name, _ in result.top)
    assert any("class i" in note for note in result.notes)


def test_classify_top_is_clamped_or_refused(shapes, scenes):
    result = classify(shapes, scenes[0].image, top=10)
    assert len(result.top) == 7 and any("clamped" in n for n in result.notes)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="top must be"):
            classify(shapes, scenes[0].image, top=bad)


def test_classify_wraps_a_plain_module(scenes):
    net = TinyNet()
    x = torch.randn(1, 3, 16, 16)
    result = classify(net, x, top=2)
    assert result.model_name == "TinyNet" and result.top[0][1].startswith("class ")
    # classified in eval mode (said so), and the module's own mode given back
    assert net.training and any("training mode" in n for n in result.notes)
    with torch.no_grad():
        expected = net.eval()(x)[0]
    torch.testing.assert_close(result.logits, expected)


def test_no_classifier_is_a_one_line_config_error(scenes):
    seg = _quiet_load("lraspp_mobilenet_v3_large")
    with pytest.raises(ConfigError, match="segmentation model") as info:
        classify(seg, scenes[0].image)
    assert "\n" not in str(info.value) and "classification model" in str(info.value)
    with pytest.raises(ConfigError, match="has no classifier.*not class scores"):
        classify(TinySeg(), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="has no classifier"):
        grad_cam(TinySeg(), torch.zeros(1, 3, 8, 8), layer="conv")


def test_one_image_at_a_time(shapes):
    with pytest.raises(ConfigError, match="one image at a time"):
        classify(shapes, torch.zeros(2, 3, 64, 64))


# ---------------------------------------------------------------------------------- Grad-CAM


def _oracle_grad_cam(net: TinyNet, x: torch.Tensor, upto: int, k: int | None):
    """Grad-CAM by hand: maps after features[:upto], torch.autograd.grad, no hooks, no in-place."""
    h = x
    for i, layer in enumerate(net.features):
        if i == upto:
            h = h.detach().requires_grad_(True)
            maps = h
        h = torch.relu(h) if isinstance(layer, nn.ReLU) else layer(h)
    if upto == len(net.features):
        h = h.detach().requires_grad_(True)
        maps = h
    logits = net.head(h)
    k = int(logits[0].argmax()) if k is None else k
    (g,) = torch.autograd.grad(logits[0, k], maps)
    return torch.relu((g.mean((2, 3), keepdim=True) * maps).sum(1))[0].detach(), k


@pytest.mark.parametrize("layer, upto", [("features.2", 3), ("features.3", 4),
                                         ("features.0", 1)])
@pytest.mark.parametrize("class_index", [None, 3])
def test_grad_cam_matches_a_hand_computed_oracle(layer, upto, class_index):
    net = TinyNet().eval()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    expected, k = _oracle_grad_cam(net, x, upto, class_index)
    result = grad_cam(net, x, layer=layer, class_index=class_index)
    assert isinstance(result, CamResult) and result.method == "grad-cam"
    assert result.class_index == k and result.layer == layer
    np.testing.assert_allclose(result.heatmap, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert expected.abs().max() > 0  # the oracle is not trivially zero
    assert result.upsampled.shape == (12, 12) and result.image.shape == (3, 12, 12)


def test_grad_cam_leaves_the_model_as_it_was():
    net = TinyNet().eval()
    net.features[0].weight.requires_grad_(False)  # a partly frozen model
    flags = [p.requires_grad for p in net.parameters()]
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():  # grad_cam turns gradients on for itself only
        before = net(x)
        grad_cam(net, x, layer="features.2")
    assert _no_hooks(net) and not net.training
    assert [p.requires_grad for p in net.parameters()] == flags
    assert all(p.grad is None for p in net.parameters())
    with torch.no_grad():
        assert torch.equal(net(x), before)
    for p in net.parameters():  # fully frozen still works
        p.requires_grad_(False)
    assert grad_cam(net, x, layer="features.2").heatmap.shape == (6, 6)


def test_grad_cam_upsampled_is_bilinear_at_input_size(shapes, scenes):
    result = grad_cam(shapes, scenes[0].image, layer="backbone.block4")
    assert result.heatmap.shape == (8, 8) and result.upsampled.shape == (64, 64)
    np.testing.assert_allclose(result.image, scenes[0].image, atol=1e-6)
    up = torch.nn.functional.interpolate(torch.from_numpy(result.heatmap)[None, None],
                                         size=(64, 64), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(result.upsampled, up[0, 0].numpy(), atol=1e-6)
    assert 0 <= result.probability <= 1 and result.class_name == CLASSES[scenes[0].label]
    assert "grad-cam" in str(result)


def test_class_index_by_name_and_bad_class(shapes, scenes):
    by_name = grad_cam(shapes, scenes[0].image, layer="backbone.block4", class_index="Ring")
    assert by_name.class_index == CLASSES.index("ring") - 1
    with pytest.raises(ConfigError, match=r"class_index must be an integer in \[0, 6\]"):
        grad_cam(shapes, scenes[0].image, layer="backbone.block4", class_index=7)
    with pytest.raises(UnknownNameError, match="Did you mean 'star'"):
        cam(shapes, scenes[0].image, class_index="stra")


def test_non_convolutional_layer_is_refused(shapes, scenes):
    message = (r"layer 'classifier.fc' \(Linear\) is not convolutional.*class-activation maps "
               r"need a layer with feature maps \(N, C, H, W\); e.g. 'backbone.block4'")
    for method in (grad_cam, cam):
        with pytest.raises(ConfigError, match=message) as info:
            method(shapes, scenes[0].image, layer="classifier.fc")
        assert "\n" not in str(info.value)
    assert _no_hooks(shapes.module)
    with pytest.raises(ConfigError, match=r"matches \d+ layers"):
        grad_cam(shapes, scenes[0].image, layer="backbone.block*")


def test_default_cam_layer():
    assert default_cam_layer(load_model("shapes")) == "backbone.block4"
    from torchvision.models import resnet18

    assert default_cam_layer(resnet18()) == "layer4"


# --------------------------------------------------------------------------------------- CAM


def test_cam_equals_shapesnet_cam(shapes, scenes):
    bias = shapes.module.classifier.fc.bias
    for scene in scenes[:5]:
        result = cam(shapes, scene.image)
        assert result.layer == "backbone.block4" and result.method == "cam"
        batch = shapes.prepare(scene.image).batch
        with torch.no_grad():
            expected = shapes.module.cam(batch)[0]
        np.testing.assert_allclose(result.heatmap, expected.numpy(), rtol=1e-5, atol=1e-5)
        assert result.heatmap.mean() + bias[result.class_index].item() == pytest.approx(
            result.score, abs=1e-4)
        # With GAP + one Linear layer, Grad-CAM is ReLU(CAM) / (h * w).
        g = grad_cam(shapes, scene.image, layer="backbone.block4")
        np.testing.assert_allclose(g.heatmap, np.maximum(result.heatmap, 0) / 64, atol=1e-5)
    other = cam(shapes, scenes[0].image, class_index=0)  # a class that is not the prediction
    batch = shapes.prepare(scenes[0].image).batch
    with torch.no_grad():
        expected = shapes.module.cam(batch, 0)[0]
    np.testing.assert_allclose(other.heatmap, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_cam_on_resnet18(scenes):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18().eval()
    result = cam(net, scenes[0].image, class_index=5)
    assert result.layer == "layer4" and result.heatmap.shape == (7, 7)
    maps = extract(net, scenes[0].image, layers="layer4")["layer4"][0]
    expected = torch.einsum("c,chw->hw", net.fc.weight[5].detach(), maps)
    np.testing.assert_allclose(result.heatmap, expected.numpy(), rtol=1e-4, atol=1e-5)
    assert _no_hooks(net)


def test_cam_needs_gap_and_one_linear_layer(shapes, scenes):
    with pytest.raises(ConfigError, match="CAM needs .* global average pool .* grad_cam"):
        cam(TinyNet(), torch.zeros(1, 3, 12, 12), layer="features.3")
    with pytest.raises(ConfigError, match="feed the global average pool.*backbone.block4"):
        cam(shapes, scenes[0].image, layer="backbone.block3")


def test_cam_peak_falls_on_the_object(shapes, scenes):
    """The issue's quality bar, on 100 fresh scenes, for CAM and Grad-CAM on backbone.block4:
    the peak pixel of the upsampled map lies inside the main object's mask in >= 90% of images.

    Also checked: the peak cell of the 8x8 map touches the object (chance: about 26%). The
    recipe's CAM term (featuremap.bundled.train._cam_loss) is what makes rings and crescents peak on
    themselves rather than in their hole or bite.
    """
    strict = {"cam": 0, "grad-cam": 0}
    cells_hit = {"cam": 0, "grad-cam": 0}
    for scene in scenes:
        obj = scene.mask == scene.label
        cells = obj.reshape(8, 8, 8, 8).any(axis=(1, 3))  # does each 8x8 cell touch the object?
        for result in (cam(shapes, scene.image, layer="backbone.block4"),
                       grad_cam(shapes, scene.image, layer="backbone.block4")):
            hy, hx = np.unravel_index(np.argmax(result.heatmap), result.heatmap.shape)
            cells_hit[result.method] += bool(cells[hy, hx])
            strict[result.method] += bool(obj[result.peak])
    n = len(scenes)
    assert min(strict.values()) / n >= 0.9, strict
    assert min(cells_hit.values()) / n >= 0.9, cells_hit


# ------------------------------------------------------------------------------------ probes


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    return save_dataset(tmp_path_factory.mktemp("shapes_classes"), 140, seed=7, layout="classes")


def test_probe_one_pass_per_batch_and_high_layer_wins(shapes, shapes_data):
    calls = {"block1": 0, "fc": 0}
    handles = [
        shapes.module.backbone.block1.register_forward_hook(
            lambda *_: calls.__setitem__("block1", calls["block1"] + 1)),
        shapes.module.classifier.fc.register_forward_hook(
            lambda *_: calls.__setitem__("fc", calls["fc"] + 1)),
    ]
    progress = []
    try:
        result = probe(shapes, shapes_data, layers=["backbone.block1", "backbone.block4"],
                       batch_size=32, progress=lambda done, total: progress.append((done, total)))
    finally:
        for h in handles:
            h.remove()
    assert calls == {"block1": math.ceil(140 / 32), "fc": 0}  # one pass per batch, early stop
    assert progress == [(32, 140), (64, 140), (96, 140), (128, 140), (140, 140)]
    assert result.layers == ["backbone.block1", "backbone.block4"]
    assert result.n_used == 140 and not result.skipped
    assert result.classes == tuple(sorted(CLASSES[1:]))  # the sub-folders, sorted
    assert [p.dim for p in result.probes.values()] == [16, 128]
    assert result.test_accuracy["backbone.block4"] >= 0.9
    assert result.test_accuracy["backbone.block1"] < result.test_accuracy["backbone.block4"]
    assert "backbone.block4" in str(result) and "test acc" in str(result)
    again = probe(shapes, shapes_data, layers=["backbone.block1", "backbone.block4"])
    assert again.test_accuracy == result.test_accuracy
    assert again.train_accuracy == result.train_accuracy
    for name, p in result.probes.items():
        assert torch.equal(p.weight, again.probes[name].weight)


def test_probe_split_is_stratified_and_seeded(shapes, shapes_data):
    a = probe(shapes, shapes_data, layers="backbone.block4", seed=1, test_fraction=0.5)
    b = probe(shapes, shapes_data, layers="backbone.block4", seed=2, test_fraction=0.5)
    counts = [len(list((shapes_data / c).iterdir())) for c in a.classes]
    assert a.n_test == sum(max(1, min(n - 1, round(n * 0.5))) for n in counts)
    assert a.n_train + a.n_test == 140 and a.seed == 1
    assert a.probes["backbone.block4"].weight.shape == (7, 128)
    assert not torch.equal(a.probes["backbone.block4"].weight,
                           b.probes["backbone.block4"].weight)


def test_probe_save(shapes, shapes_data, tmp_path):
    from safetensors.torch import load_file

    result = probe(shapes, shapes_data, layers=["backbone.block2", "backbone.block4"])
    weights, sidecar = result.save(tmp_path / "probes.safetensors")
    tensors = load_file(str(weights))
    assert tensors["backbone.block4.weight"].shape == (7, 128)
    assert set(tensors) == {f"backbone.block{i}.{part}" for i in (2, 4)
                            for part in ("weight", "bias", "mean", "std")}
    meta = json.loads(sidecar.read_text())
    assert meta["model"] == "shapes" and meta["classes"] == sorted(CLASSES[1:])
    assert meta["accuracy"]["backbone.block4"]["test"] == result.test_accuracy["backbone.block4"]
    with pytest.raises(ConfigError, match="exists"):
        result.save(weights)
    assert result.save(weights, overwrite=True)[0] == weights
    with pytest.raises(ConfigError, match=".safetensors"):
        result.save(tmp_path / "probes.pt")
    x = torch.randn(3, 128)
    p = result.probes["backbone.block4"]
    expected = (((x - p.mean) / p.std) @ tensors["backbone.block4.weight"].T
                + tensors["backbone.block4.bias"]).argmax(1)
    assert torch.equal(p.predict(x), expected)


def _write_classes(root, per_class: dict[str, list[np.ndarray]]):
    from PIL import Image

    for name, images in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            rgb = np.round(np.moveaxis(image, 0, -1) * 255).astype(np.uint8)
            Image.fromarray(rgb).save(root / name / f"{i}.png")
    return root


def _two_classes(n: int) -> dict[str, list[np.ndarray]]:
    found: dict[str, list[np.ndarray]] = {"circle": [], "square": []}
    seed = FRESH + 1000
    while min(len(v) for v in found.values()) < n:
        scene = make_scene(seed, size=32)
        name = CLASSES[scene.label]
        if name in found and len(found[name]) < n:
            found[name].append(scene.image)
        seed += 1
    return found


def test_probe_resnet18(tmp_path):
    data = _write_classes(tmp_path / "data", _two_classes(4))
    model = _quiet_load("resnet18")
    result = probe(model, data, layers=["layer2", "avgpool", "fc"], batch_size=8)
    assert result.classes == ("circle", "square") and result.n_used == 8
    assert {k: p.dim for k, p in result.probes.items()} == {"layer2": 128, "avgpool": 512,
                                                            "fc": 1000}
    # Oracle: plain torch hooks give each layer's features of all 8 images; every probe's
    # predictions on them score what its train and test accuracies say together.
    import torch

    from featuremap.datasets import open_collection

    collection = open_collection(data)
    images = torch.from_numpy(np.stack([model.preprocess(item.path) for item in collection]))
    truth = torch.tensor([result.classes.index(item.path.parent.name) for item in collection])
    seen: dict[str, torch.Tensor] = {}
    handles = [dict(model.module.named_modules())[n].register_forward_hook(
        lambda _m, _i, out, n=n: seen.__setitem__(n, out.detach())) for n in result.probes]
    try:
        with torch.no_grad():
            model.module.eval()(images)
    finally:
        for h in handles:
            h.remove()
    for name, p in result.probes.items():
        features = seen[name].flatten(2).mean(2) if seen[name].dim() == 4 else seen[name]
        features = features.flatten(1)
        right = int((p.predict(features) == truth).sum())
        assert right == round(p.train_accuracy * result.n_train + p.test_accuracy *
                              result.n_test), name


def test_probe_bad_folders(shapes, tmp_path):
    with pytest.raises(ConfigError, match="does not exist.*one sub-folder per class"):
        probe(shapes, tmp_path / "missing", layers="backbone.block4")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ConfigError, match="is not a folder"):
        probe(shapes, tmp_path / "file.png", layers="backbone.block4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class sub-folders.*DATA_DIR/<class>/"):
        probe(shapes, tmp_path / "empty", layers="backbone.block4")
    one = _write_classes(tmp_path / "one", {"circle": _two_classes(3)["circle"]})
    with pytest.raises(ConfigError, match="one class.*at least 2 classes"):
        probe(shapes, one, layers="backbone.block4")
    with pytest.raises(ConfigError, match="test_fraction"):
        probe(shapes, one, layers="backbone.block4", test_fraction=1.0)


def test_probe_skips_unreadable_files(shapes, tmp_path):
    data = _write_classes(tmp_path / "data", _two_classes(3))
    (data / "circle" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (data / "square" / ".hidden").write_bytes(b"ignored")
    result = probe(shapes, data, layers="backbone.block4")
    assert result.n_used == 6 and list(result.skipped) == [str(data / "circle" / "broken.png")]
    assert "skipped" in str(result)


def test_probe_nothing_readable_or_too_few(shapes, tmp_path):
    junk = tmp_path / "junk"
    for name in ("a", "b"):
        (junk / name).mkdir(parents=True)
        (junk / name / "x.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="none of the 2 files could be read"):
        probe(shapes, junk, layers="backbone.block4")
    few = _two_classes(2)
    few["square"] = few["square"][:1]
    data = _write_classes(tmp_path / "few", few)
    with pytest.raises(ConfigError, match="class 'square' has 1 readable image.*at least 2"):
        probe(shapes, data, layers="backbone.block4")


def test_grad_cam_on_a_layer_the_scores_do_not_use():
    class SideBranch(TinyNet):
        def __init__(self) -> None:
            super().__init__()
            self.side = nn.Conv2d(3, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.side(x)  # runs, but the scores do not depend on it
            return super().forward(x)

    with pytest.raises(ConfigError, match="do not depend on layer 'side'"):
        grad_cam(SideBranch(), torch.zeros(1, 3, 12, 12), layer="side")
    with pytest.raises(ConfigError, match="did not run"):
        grad_cam(load_model("shapes"), torch.zeros(1, 3, 64, 64), layer="segmenter.head")

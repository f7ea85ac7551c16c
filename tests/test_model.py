"""The one model object: wrapping any module, honest preprocessing notes, devices, stages and
capabilities (no generic code asks for the bundled model's class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from featuremap import extract, load_model
from featuremap.errors import ConfigError
from featuremap.model import Model, as_model, resolve_device
from featuremap.preprocess import Preprocess

SRC = Path(__file__).resolve().parents[1] / "src" / "featuremap"


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


@pytest.fixture(scope="module")
def shapes() -> Model:
    return load_model("shapes")


def _png(path: Path, size: tuple[int, int], mode: str = "RGB", value=(200, 30, 60)) -> Path:
    Image.new(mode, size, value if mode == "RGB" else value[0]).save(path)
    return path


def test_wrap_and_as_model():
    net = Tiny()
    m = Model.wrap(net, categories=["a", "b"], name="tiny")
    assert m.module is net and m.name == "tiny" and m.categories == ("a", "b")
    assert m.task == "other" and m.assumed_preprocess and "ImageNet" in m.notes[0]
    own = Model.wrap(net, preprocess=Preprocess(resize=32, crop=32))
    assert not own.assumed_preprocess and own.notes == [] and own.input_size == (32, 32)
    assert as_model(m) is m and as_model(net).module is net
    with pytest.raises(ConfigError, match="nn.Module"):
        as_model("not a model")
    with pytest.raises(ConfigError, match="takes an nn.Module"):
        Model.wrap(object())


def test_a_plain_module_is_preprocessed_as_imagenet_and_says_so(tmp_path):
    net = Tiny()
    photo = _png(tmp_path / "p.png", (100, 80))
    fm = extract(net, photo, layers="conv")
    assert fm["conv"].shape == (1, 4, 224, 224)
    assert any("ImageNet defaults assumed" in n and "preprocess=None" in n for n in fm.notes)
    kept = extract(net, photo, layers="conv", preprocess=None)  # the image as it is, in [0, 1]
    assert kept["conv"].shape == (1, 4, 80, 100) and not any("ImageNet" in n for n in kept.notes)
    x = torch.rand(1, 3, 10, 12)
    as_given = extract(net, x, layers="conv", preprocess=None)
    with torch.no_grad():
        expected = net.conv(x)
    torch.testing.assert_close(as_given["conv"], expected)


def test_training_mode_is_used_as_eval_restored_and_said(tmp_path):
    net = Tiny().train()
    net.bn.running_mean.fill_(0.5)
    x = torch.randn(2, 3, 8, 8)
    fm = extract(net, x, layers="bn")
    assert net.training and net.bn.training  # given back as it was
    assert torch.all(net.bn.running_mean == 0.5)  # statistics untouched by the capture
    with torch.no_grad():
        expected = nn.functional.batch_norm(net.conv(x), net.bn.running_mean,
                                            net.bn.running_var, net.bn.weight, net.bn.bias)
    torch.testing.assert_close(fm["bn"], expected)
    assert any("training mode" in n for n in fm.notes)


def test_notes_say_when_an_image_is_shrunk_enlarged_or_cropped(shapes, tmp_path):
    big = _png(tmp_path / "big.png", (4000, 3000))
    notes = shapes.prepare(big).notes
    assert any("(3000 x 4000) was shrunk 47x to 64 x 85" in n for n in notes), notes
    tiny = _png(tmp_path / "tiny.png", (1, 1))
    notes = shapes.prepare(tiny).notes
    assert any("(1 x 1) was enlarged to 64 x 64" in n for n in notes), notes
    assert not any("greyscale" in n for n in notes)  # a 1x1 RGB image is colour
    long = _png(tmp_path / "long.png", (640, 64))
    assert any("keeps 10% of the image" in n for n in shapes.prepare(long).notes)
    grey = _png(tmp_path / "grey.png", (64, 64), mode="L")
    assert any("greyscale" in n for n in shapes.prepare(grey).notes)
    same = _png(tmp_path / "same.png", (64, 64))
    assert shapes.prepare(same).notes == []
    grey_rgb = _png(tmp_path / "grey_rgb.png", (64, 64), value=(90, 90, 90))
    assert shapes.prepare(grey_rgb).notes == []  # equal channels, but an RGB file


def test_resolve_device():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="Unknown device"):
        load_model("shapes", device="gpu0")


def test_model_runs_where_it_is(shapes, device):
    m = load_model("shapes", device=device)
    assert m.device.type == torch.device(device).type
    fm = extract(m, np.zeros((64, 64, 3), np.uint8), layers="backbone.block1")
    assert fm["backbone.block1"].device.type == torch.device(device).type


def test_stages_and_capabilities(shapes):
    assert shapes.stage_names() == [f"backbone.block{i}" for i in range(1, 5)]
    stages = shapes.stages()
    assert [s.channels for s in stages] == [16, 32, 64, 128]
    assert [s.stride for s in stages] == [2, 4, 8, 8] and stages[-1].field == "field 68 px"
    assert shapes.stages() is stages  # cached
    assert shapes.cam_head == ("classifier.pool", "classifier.fc")
    assert shapes.segmentation is not None and shapes.segmentation.layers == tuple(
        f"backbone.block{i}" for i in range(1, 5))
    r18 = Model.wrap(__import__("torchvision").models.resnet18())
    assert [s.name for s in r18.stages(64)][-4:] == ["layer1", "layer2", "layer3", "layer4"]
    assert r18.cam_head == ("avgpool", "fc") and r18.segmentation is None
    seg = load_model("lraspp_mobilenet_v3_large", weights="random")
    assert seg.segmentation is not None and seg.segmentation.kind == "segmentation network"


def test_no_generic_module_mentions_the_bundled_class():
    generic = [p for p in SRC.rglob("*.py") if "bundled" not in p.parts and p.name != "zoo.py"]
    offenders = [p.name for p in generic if "ShapesNet" in p.read_text()]
    assert offenders == []


def test_one_place_registers_hooks():
    found = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
             if "register_forward_hook" in p.read_text()
             or "register_forward_pre_hook" in p.read_text()]
    assert found == ["capture.py"]

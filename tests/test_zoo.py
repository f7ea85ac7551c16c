"""Tests of featuremap.zoo: every weights path, served from local files; never the network."""

from __future__ import annotations

import sys
import types
import urllib.error
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torchvision  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.models import get_model, get_model_weights  # noqa: E402

from featuremap.errors import (  # noqa: E402
    FeaturemapError,
    ModelError,
    UnknownNameError,
    WeightsError,
)
from featuremap.preprocess import Preprocess  # noqa: E402
from featuremap.zoo import RANDOM_NOTE, Model, list_models, load_model  # noqa: E402


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty torch hub cache, and a download function that fails like no network."""
    hub = tmp_path / "hub"
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    yield hub
    torch.hub.set_dir(old)


def quiet_load(*args: object, **kwargs: object) -> Model:
    """load_model without the random-weights warning (tested once, on its own)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return load_model(*args, **kwargs)


def random_state(name: str, **kwargs: object) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return get_model(name, weights=None, **kwargs).state_dict()


def assert_same_tensors(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        assert torch.equal(own[key], value), key


def place_in_cache(hub: Path, model_name: str, state: dict[str, torch.Tensor]) -> Path:
    """Save ``state`` where torch's cache keeps the DEFAULT weights of ``model_name``."""
    url = get_model_weights(model_name).DEFAULT.url
    path = hub / "checkpoints" / url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


# ---------------------------------------------------------------------------- list_models


def test_list_models_contents() -> None:
    models = list_models()
    assert next(iter(models)) == "shapes"
    assert models["resnet18"].startswith("classification (torchvision; DEFAULT = "
                                         "ResNet18_Weights.IMAGENET1K_V1, 11.7M params")
    assert models["fcn_resnet50"].startswith("segmentation")
    classification = torchvision.models.list_models(module=torchvision.models)
    segmentation = torchvision.models.list_models(module=torchvision.models.segmentation)
    assert set(models) == {"shapes", *classification, *segmentation}
    assert "fasterrcnn_resnet50_fpn" not in models and not any(":" in m for m in models)


# ----------------------------------------------------------------------------- random init


def test_random_init_warns_and_notes() -> None:
    with pytest.warns(UserWarning, match="random weights: untrained maps"):
        model = load_model("resnet18")
    assert model.weights == "random init" and RANDOM_NOTE in model.notes
    assert model.task == "classification" and model.categories is None
    assert not model.module.training
    assert model.preprocess == Preprocess()
    assert any(note.startswith("preprocess: assumed") for note in model.notes)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "squeezenet1_1", "ResNet18"])
def test_random_init_classifiers_run(name: str) -> None:
    model = quiet_load(name)
    assert model.name == name.lower()
    with torch.no_grad():
        assert model.module(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_random_init_segmentation_downloads_no_backbone() -> None:
    model = quiet_load("lraspp_mobilenet_v3_large")  # the offline fixture fails any download
    assert model.task == "segmentation" and model.weights == "random init"
    assert model.preprocess.resize == 520 and model.preprocess.crop is None
    with torch.no_grad():
        assert model.module(torch.zeros(1, 3, 64, 64))["out"].shape == (1, 21, 64, 64)


def test_unknown_model_did_you_mean() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_model("resnet19")
    assert str(info.value).startswith("Unknown model 'resnet19'. Did you mean 'resnet18'")
    assert str(info.value).endswith("Run 'featuremap models' to list them.")
    with pytest.raises(ModelError, match="must be a name or an nn.Module"):
        load_model(42)


# --------------------------------------------------------------------------- weights files


def test_pth_file_loaded_tensor_by_tensor(tmp_path: Path) -> None:
    state = random_state("resnet18")
    torch.save(state, tmp_path / "r18.pth")
    model = load_model("resnet18", weights=tmp_path / "r18.pth")
    assert_same_tensors(model.module, state)
    assert model.weights == str(tmp_path / "r18.pth") and model.categories is None
    assert RANDOM_NOTE not in model.notes and not model.module.training
    assert "classes are numbered 0..999" in " ".join(model.notes)


def test_safetensors_file_and_checkpoint_dict(tmp_path: Path) -> None:
    state = random_state("resnet18")
    save_file(state, str(tmp_path / "r18.safetensors"))
    assert_same_tensors(load_model("resnet18", weights=str(tmp_path / "r18.safetensors")).module,
                        state)
    wrapped = {"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(wrapped, tmp_path / "ckpt.pt")
    assert_same_tensors(load_model("resnet18", weights=str(tmp_path / "ckpt.pt")).module, state)
    assert_same_tensors(load_model("resnet18", weights=state).module, state)


def test_other_number_of_classes_rebuilds(tmp_path: Path) -> None:
    state = random_state("resnet18", num_classes=10)
    torch.save(state, tmp_path / "r10.pth")
    model = load_model("resnet18", weights=str(tmp_path / "r10.pth"))
    assert_same_tensors(model.module, state)
    assert model.module.fc.out_features == 10
    assert "rebuilt resnet18 with num_classes=10 to fit the weights" in model.notes
    assert "classes are numbered 0..9" in " ".join(model.notes)


def test_segmentation_file_with_aux_head_rebuilds(tmp_path: Path) -> None:
    state = random_state("deeplabv3_mobilenet_v3_large", weights_backbone=None, num_classes=5,
                         aux_loss=True)
    torch.save(state, tmp_path / "seg.pth")
    model = load_model("deeplabv3_mobilenet_v3_large", weights=str(tmp_path / "seg.pth"))
    assert_same_tensors(model.module, state)
    assert "aux_loss=True" in " ".join(model.notes) and "num_classes=5" in " ".join(model.notes)


def test_file_of_another_architecture(tmp_path: Path) -> None:
    torch.save(random_state("mobilenet_v3_small"), tmp_path / "mb.pth")
    with pytest.raises(WeightsError) as info:
        load_model("resnet18", weights=str(tmp_path / "mb.pth"))
    message = str(info.value)
    assert message.startswith(f"Weights file '{tmp_path / 'mb.pth'}' does not fit resnet18 "
                              "(ResNet): 102 missing keys (conv1.weight, bn1.weight, bn1.bias, "
                              "...), 244 unexpected keys (features.0.0.weight, ")
    assert "\n" not in message


def test_shape_mismatch_message_for_a_module(tmp_path: Path) -> None:
    torch.save(random_state("resnet18", num_classes=10), tmp_path / "r10.pth")
    with pytest.raises(WeightsError) as info:
        load_model(torchvision.models.resnet18(), weights=str(tmp_path / "r10.pth"))
    assert str(info.value) == (
        f"Weights file '{tmp_path / 'r10.pth'}' does not fit ResNet: 2 shape mismatches "
        "(fc.weight: file (10, 512) vs model (1000, 512), fc.bias: file (10,) vs model (1000,)). "
        "Only the classifier differs: the file has 10 classes, the model 1000; build the model "
        "with num_classes=10."
    )


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        ("missing.pth", None, "does not exist"),
        ("empty.pth", b"", r"is empty \(0 bytes\)"),
        ("corrupt.pth", b"not a zip or pickle", r"it is corrupt or not a \.pth file "
                                                r"\(Unsupported operand 110\)"),
        ("corrupt.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}", "corrupt or not a "
                                                                          ".safetensors file"),
        ("weights.txt", b"hello", r"unsupported extension '\.txt': use \.pth, \.pt, "
                                  r"\.safetensors"),
        ("missing.bin", None, "does not exist"),
    ],
)
def test_bad_files(tmp_path: Path, filename: str, content: bytes | None, expected: str) -> None:
    path = tmp_path / filename
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightsError, match=expected) as info:
        load_model("resnet18", weights=str(path))
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_folder_objects_and_no_state_dict(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="is a directory, not a weights file"):
        load_model("resnet18", weights=tmp_path)
    torch.save({"fc.weight": torch.zeros(2), "extra": Preprocess()}, tmp_path / "objects.pth")
    with pytest.raises(WeightsError, match=r"holds Python objects besides tensors "
                                           r"\(featuremap\.preprocess\.Preprocess\)"):
        load_model("resnet18", weights=tmp_path / "objects.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="holds no state dict"):
        load_model("resnet18", weights=tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="weights must be None, a name"):
        load_model("resnet18", weights=3.5)


# ------------------------------------------------------------------ published weights (cache)


def test_default_served_from_the_torch_cache(offline: Path) -> None:
    state = random_state("resnet18")
    place_in_cache(offline, "resnet18", state)
    model = load_model("resnet18", weights="DEFAULT")
    assert_same_tensors(model.module, state)
    assert model.weights == "DEFAULT (ResNet18_Weights.IMAGENET1K_V1)"
    assert model.categories is not None and len(model.categories) == 1000
    assert model.categories[:2] == ("tench", "goldfish")
    assert model.preprocess == Preprocess(resize=256, crop=224)
    assert not model.module.training and RANDOM_NOTE not in model.notes


@pytest.mark.parametrize("name", ["IMAGENET1K_V1", "imagenet1k_v1",
                                  "ResNet18_Weights.IMAGENET1K_V1"])
def test_weights_by_name(offline: Path, name: str) -> None:
    place_in_cache(offline, "resnet18", random_state("resnet18"))
    assert load_model("resnet18", weights=name).weights == "ResNet18_Weights.IMAGENET1K_V1"


def test_segmentation_default_from_the_cache(offline: Path) -> None:
    state = random_state("lraspp_mobilenet_v3_large", weights_backbone=None)
    place_in_cache(offline, "lraspp_mobilenet_v3_large", state)
    model = load_model("lraspp_mobilenet_v3_large", weights="DEFAULT")
    assert_same_tensors(model.module, state)
    assert model.preprocess.resize == 520 and model.preprocess.crop is None
    assert model.categories is not None and model.categories[0] == "__background__"


def test_offline_error_says_where_to_put_the_file(offline: Path) -> None:
    with pytest.raises(WeightsError) as info:
        load_model("resnet18", weights="DEFAULT")
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    path = offline / "checkpoints" / "resnet18-f37072fd.pth"
    message = str(info.value)
    assert message.startswith("Cannot download the weights ResNet18_Weights.IMAGENET1K_V1 for "
                              "resnet18 (<urlopen error no network in tests>)")
    assert f"put the file at {path} (from {url})" in message
    assert "--weights FILE" in message and "\n" not in message
    assert not path.exists()


def test_corrupt_cached_file(offline: Path) -> None:
    path = place_in_cache(offline, "resnet18", random_state("resnet18"))
    path.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="Cannot load the cached weights file .* Delete it"):
        load_model("resnet18", weights="DEFAULT")


def test_unknown_weights_name() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_model("resnet18", weights="IMAGENET1K_V2")
    assert str(info.value) == ("Unknown weights 'IMAGENET1K_V2'. Did you mean 'IMAGENET1K_V1'? "
                               "Weights of resnet18: IMAGENET1K_V1, DEFAULT.")
    with pytest.raises(WeightsError, match="do not belong to resnet18: its weights are "
                                           "ResNet18_Weights.IMAGENET1K_V1"):
        load_model("resnet18", weights="ResNet50_Weights.IMAGENET1K_V2")


# -------------------------------------------------------------------------------- nn.Module


def test_module_passthrough(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    module.train()
    model = load_model(module)
    assert model.module is module and not module.training
    assert (model.name, model.task, model.weights) == ("Sequential", "other", "as given")
    assert model.preprocess == Preprocess() and "ImageNet defaults assumed" in model.notes[0]
    state = {k: torch.ones_like(v) for k, v in module.state_dict().items()}
    torch.save(state, tmp_path / "ones.pth")
    assert_same_tensors(load_model(module, weights=tmp_path / "ones.pth").module, state)
    with pytest.raises(WeightsError, match="need a model name"):
        load_model(module, weights="DEFAULT")


# ------------------------------------------------------------------------------------- timm


def test_timm_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(ModelError) as info:
        load_model("timm:resnet18")
    assert "pip install 'featuremap[timm]'" in str(info.value)
    assert isinstance(info.value, FeaturemapError)


def fake_timm() -> types.ModuleType:
    """A stand-in for timm: two names, pretrained weights 'offline'."""
    timm = types.ModuleType("timm")
    timm.list_models = lambda: ["tinynet", "resnet18"]

    def create_model(name: str, pretrained: bool = False, num_classes: int = 7) -> nn.Module:
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(4, num_classes))
        module.pretrained_cfg = {"input_size": (3, 160, 160), "crop_pct": 0.8,
                                 "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
        return module

    timm.create_model = create_model
    return timm


def test_timm_with_a_stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "timm", fake_timm())
    model = quiet_load("timm:tinynet")
    assert (model.name, model.weights) == ("timm:tinynet", "random init")
    assert model.preprocess == Preprocess(resize=200, crop=160, mean=(0.5, 0.5, 0.5),
                                          std=(0.25, 0.25, 0.25))
    with pytest.raises(UnknownNameError, match="Unknown timm model 'tinynett'. Did you mean "
                                               "'tinynet'"):
        load_model("timm:tinynett")
    with pytest.raises(WeightsError, match="Cannot load timm's pretrained weights for 'tinynet'"):
        load_model("timm:tinynet", weights="DEFAULT")
    three = sys.modules["timm"].create_model("tinynet", num_classes=3)
    state = {k: torch.randn_like(v) for k, v in three.state_dict().items()}
    model = quiet_load("timm:tinynet", weights=state)
    assert_same_tensors(model.module, state)
    assert "rebuilt timm:tinynet with num_classes=3 to fit the weights" in model.notes


# ----------------------------------------------------------------------------------- shapes


def test_shapes_meta_with_a_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wrapping of featuremap.bundled.network.bundled(); the real model is tested elsewhere."""
    module = nn.Sequential(nn.Conv2d(3, 2, 3))
    meta = {"categories": ["circle", "square"], "input_size": 64, "mean": [0.5] * 3,
            "std": [0.2] * 3}
    fake = types.ModuleType("featuremap.bundled.network")
    fake.bundled = lambda: (module, meta)
    fake.segmentation_head = lambda _module: None
    import featuremap.bundled

    monkeypatch.setitem(sys.modules, "featuremap.bundled.network", fake)
    monkeypatch.setattr(featuremap.bundled, "network", fake, raising=False)
    model = load_model("shapes")
    assert model.module is module and model.categories == ("circle", "square")
    assert model.preprocess == Preprocess(resize=64, crop=64, mean=(0.5,) * 3, std=(0.2,) * 3)
    assert (model.task, model.weights) == ("classification", "bundled")
    assert load_model("shapes", weights="DEFAULT").module is module
    with pytest.raises(WeightsError, match="has its own weights"):
        load_model("shapes", weights="IMAGENET1K_V1")


def test_real_timm_model_extracts_like_create_feature_extractor() -> None:
    """timm is in the test extra: a real timm model, random init, end to end."""
    import timm  # noqa: F401
    import torch
    from torchvision.models.feature_extraction import create_feature_extractor

    from featuremap.extraction import extract

    with pytest.warns(UserWarning, match="random weights"):
        model = load_model("timm:resnet18")
    assert model.name == "timm:resnet18" and model.preprocess.crop == 224
    x = torch.randn(1, 3, 64, 64)
    fm = extract(model, x, layers=["layer1", "layer3"])
    with torch.no_grad():
        expected = create_feature_extractor(model.module, ["layer1", "layer3"])(x)
    for name in ("layer1", "layer3"):
        torch.testing.assert_close(fm[name], expected[name])

"""Tests of featuremap.layers: shapes against real forward passes, filters, name resolution."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torchvision.models import resnet18, squeezenet1_1  # noqa: E402

from featuremap.errors import ConfigError, FeaturemapError, UnknownNameError  # noqa: E402
from featuremap.layers import LayerInfo, resolve_layers  # noqa: E402
from featuremap.summary import list_layers  # noqa: E402


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet18()


def tiny_cnn(in_channels: int = 1) -> nn.Module:
    """conv(3, pad 1) -> pool 2 -> conv(3, stride 2) -> pool 2 -> global pool -> linear head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 8, 3, stride=2), nn.ReLU()),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def real_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Output shapes (batch dropped) of every named module in a plain forward pass."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, output: torch.Tensor) -> None:
        shapes.setdefault(name, tuple(output.shape[1:]))

    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: record(name, o))
        for name, module in model.named_modules() if name
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


# ------------------------------------------------------------------------------ list_layers


def test_shapes_equal_a_real_forward(resnet: nn.Module) -> None:
    infos = list_layers(resnet, input_size=64)
    expected = real_shapes(resnet, torch.zeros(1, 3, 64, 64))
    assert {i.name: i.output_shape for i in infos} == expected
    assert len(infos) == len(list(resnet.named_modules())) - 1  # the root is not a layer


def test_resnet_layer_shapes_and_cumulative_stride_at_224(resnet: nn.Module) -> None:
    infos = {i.name: i for i in list_layers(resnet, pattern="re:^layer\\d$")}
    assert infos["layer1"].output_shape == (64, 56, 56)
    assert infos["layer4"].output_shape == (512, 7, 7)
    assert [infos[f"layer{k}"].cumulative_stride for k in range(1, 5)] == [4, 8, 16, 32]
    assert infos["layer1"].depth == 1 and not infos["layer1"].leaf


def test_layer_info_fields(resnet: nn.Module) -> None:
    infos = {i.name: i for i in list_layers(resnet, input_size=64)}
    conv = infos["layer2.0.conv1"]
    assert conv == LayerInfo(
        name="layer2.0.conv1", type="Conv2d", output_shape=(128, 8, 8), params=64 * 128 * 9,
        leaf=True, depth=3, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1),
        dilation=(1, 1), groups=1, cumulative_stride=8,
    )
    pool = infos["maxpool"]
    assert (pool.kernel_size, pool.stride, pool.padding, pool.groups) == ((3, 3), (2, 2),
                                                                          (1, 1), None)
    assert infos["fc"].output_shape == (1000,) and infos["fc"].cumulative_stride is None
    assert infos["bn1"].kernel_size is None
    assert infos["layer1"].params == sum(p.numel() for p in resnet.layer1.parameters())


def test_non_square_input_and_in_channels() -> None:
    model = tiny_cnn(in_channels=1)
    infos = {i.name: i for i in list_layers(model, input_size=(32, 48))}
    assert infos["0"].output_shape == (4, 32, 48)
    assert infos["3.0"].output_shape == (8, 7, 11)
    assert infos["4"].output_shape == (8, 3, 5) and infos["4"].cumulative_stride == 10.667
    assert infos["7"].output_shape == (3,)
    with pytest.raises(ConfigError, match="in_channels"):
        list_layers(model, input_size=32, in_channels=0)
    with pytest.raises(ConfigError, match="input_size"):
        list_layers(model, input_size=(32, 0))


def test_type_filter(resnet: nn.Module) -> None:
    convs = list_layers(resnet, input_size=64, types="conv")
    assert len(convs) == 20 and {i.type for i in convs} == {"Conv2d"}
    pools = list_layers(resnet, input_size=64, types="POOL")
    assert [i.name for i in pools] == ["maxpool", "avgpool"]
    by_class = list_layers(resnet, input_size=64, types=[nn.BatchNorm2d, "relu"])
    assert {i.type for i in by_class} == {"BatchNorm2d", "ReLU"}


def test_pattern_and_leaves_only(resnet: nn.Module) -> None:
    names = [i.name for i in list_layers(resnet, input_size=64, pattern="layer3.*")]
    assert names[0] == "layer3.0" and all(n.startswith("layer3.") for n in names)
    leaves = list_layers(resnet, input_size=64, pattern="layer3.*", leaves_only=True)
    assert all(i.leaf for i in leaves) and "layer3.0" not in {i.name for i in leaves}


def test_tuple_and_dict_outputs_record_the_first_tensor() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x[:, :1], x

    class Seg(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.pair = Pair()

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"aux": x, "out": self.pair(self.conv(x))[0]}

    infos = {i.name: i.output_shape for i in list_layers(Seg(), input_size=8)}
    assert infos == {"conv": (2, 8, 8), "pair": (1, 8, 8)}


def test_module_that_did_not_run_has_no_shape() -> None:
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)
            self.unused = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    model = Skip()
    infos = {i.name: i for i in list_layers(model, input_size=8)}
    assert infos["unused"].output_shape is None and infos["unused"].cumulative_stride is None
    assert infos["conv"].output_shape == (2, 6, 6) and infos["conv"].cumulative_stride == 1.333


def test_mode_restored_and_no_hooks_left(resnet: nn.Module) -> None:
    resnet.train()
    resnet.layer1.eval()  # a mixed state must come back exactly
    list_layers(resnet, input_size=64)
    assert resnet.training and not resnet.layer1.training and resnet.layer2.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in resnet.modules())
    resnet.eval()


def test_hooks_removed_and_mode_restored_after_an_error() -> None:
    model = squeezenet1_1()
    model.train()
    with pytest.raises(ConfigError):
        list_layers(model, input_size=16)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_input_too_small_names_the_layer() -> None:
    with pytest.raises(ConfigError) as info:
        list_layers(squeezenet1_1(), input_size=16)
    assert str(info.value) == (
        "input 16x16 is too small for SqueezeNet: at layer 'features.8' (MaxPool2d, kernel 3, "
        "stride 2) the 1x1 map would vanish. Use an input of at least 17x17 pixels."
    )
    assert list_layers(squeezenet1_1(), input_size=17)  # the size it suggests does run


def test_input_too_small_at_a_conv() -> None:
    expected = (r"at layer '3\.0' \(Conv2d, kernel 3, stride 2\) the 2x2 map would vanish\. "
                r"Use an input of at least 10x10 pixels\.")
    with pytest.raises(ConfigError, match=expected):
        list_layers(tiny_cnn(), input_size=4)


def test_other_forward_failures_become_config_errors() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(ConfigError, match=r"failed at layer '2' \(Linear\): .*shapes cannot"):
        list_layers(model, input_size=8)


# --------------------------------------------------------------------------- resolve_layers


def test_resolve_exact_glob_regex_in_request_order(resnet: nn.Module) -> None:
    names = resolve_layers(resnet, ["layer4", "layer*.0.conv1", "re:^fc$", "layer4", "conv1"])
    assert names == ["layer4", "layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1",
                     "layer4.0.conv1", "fc", "conv1"]
    assert resolve_layers(resnet, "layer[23].1") == ["layer2.1", "layer3.1"]
    assert resolve_layers(resnet, r"layer4\.\d\.bn2$") == ["layer4.0.bn2", "layer4.1.bn2"]
    assert resolve_layers(resnet, "layer1.?.relu") == ["layer1.0.relu", "layer1.1.relu"]


def test_unknown_layer_message(resnet: nn.Module) -> None:
    with pytest.raises(UnknownNameError) as info:
        resolve_layers(resnet, ["layer1", "layer5"], model_name="resnet18")
    message = str(info.value)
    assert message.startswith("Unknown layer 'layer5' in ResNet. Did you mean 'layer4'")
    assert message.endswith("Run 'featuremap layers resnet18' to list all 67 layers.")
    assert info.value.suggestions[0] == "layer4"
    assert isinstance(info.value, FeaturemapError)


def test_unknown_layer_without_model_name(resnet: nn.Module) -> None:
    with pytest.raises(UnknownNameError, match=r"'layer1\.0\.conv3'.*'layer1\.0\.conv1'.*"
                                               r"list_layers\(model\) to list all 67 layers"):
        resolve_layers(resnet, "layer1.0.conv3")


def test_patterns_that_match_nothing(resnet: nn.Module) -> None:
    with pytest.raises(UnknownNameError, match=r"No layer of ResNet matches the glob 'layer9\*'"):
        resolve_layers(resnet, "layer9*", model_name="resnet18")
    with pytest.raises(UnknownNameError, match=r"matches the regex 're:\^head'"):
        resolve_layers(resnet, "re:^head")
    with pytest.raises(ConfigError, match="Invalid regular expression"):
        resolve_layers(resnet, "re:layer(")
    with pytest.raises(ConfigError, match="must be a string"):
        resolve_layers(resnet, [3])


def test_list_layers_refuses_a_pattern_or_type_that_matches_nothing(resnet: nn.Module) -> None:
    with pytest.raises(UnknownNameError, match="Unknown layer 'layer0'.*featuremap layers "
                                               "resnet18"):
        list_layers(resnet, pattern="layer0", model_name="resnet18")
    with pytest.raises(UnknownNameError, match="No module has a type containing 'linaer'. "
                                               "Did you mean 'Linear'"):
        list_layers(resnet, types="linaer")
    assert [i.name for i in list_layers(resnet, types="linear")] == ["fc"]


def test_layers_padded_in_forward_read_same() -> None:
    from timm.layers import Conv2dSame

    net = nn.Sequential(Conv2dSame(3, 4, 3, stride=2))
    info = list_layers(net, input_size=15)[0]
    assert info.padding == "same" and info.output_shape == (4, 8, 8)

"""Feature visualisation: rendered images drive their channels harder than any generated scene and
than their own starting noise; the same seed gives the same images; the model is given back as it
was; bad input is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import featuremap as fm
from featuremap.atlas import Visualization, plot_visualizations, visualize
from featuremap.bundled.scenes import make_dataset
from featuremap.errors import ConfigError, UnknownNameError

LAYER = "backbone.block4"
CHANNELS = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def model():
    return fm.load_model("shapes")


@pytest.fixture(scope="module")
def rendered(model) -> Visualization:
    return visualize(model, layer=LAYER, channels=CHANNELS, size=64, steps=64)


def _channel_means(model, images: np.ndarray) -> torch.Tensor:
    """``(N, C)``: each channel's mean over the layer's map, for images in [0, 1]."""
    mean = torch.tensor(model.preprocess.mean).view(1, -1, 1, 1)
    std = torch.tensor(model.preprocess.std).view(1, -1, 1, 1)
    batch = (torch.from_numpy(images) - mean) / std
    return fm.extract(model, batch, layers=LAYER)[LAYER].mean((2, 3))


def test_rendered_images_drive_their_channels_harder_than_any_scene_and_their_start(
        model, rendered):
    """The honest check, on the bundled model's last block.

    The dataset's strongest value is computed here simply, on 48 generated scenes: the largest,
    over the scenes, of the channel's mean activation over the map, the quantity the objective
    maximises (section 1's top patches, on another branch, rank per-position values instead).
    The rendered images are measured again here through ``extract``, not taken on trust.
    """
    scenes, _, _ = make_dataset(48, seed=2024, size=64)
    strongest = _channel_means(model, scenes).max(0).values[CHANNELS].numpy()
    measured = _channel_means(model, rendered.images)[range(len(CHANNELS)), CHANNELS].numpy()
    np.testing.assert_allclose(measured, rendered.activation, rtol=1e-4, atol=1e-5)
    assert (rendered.activation > 1.2 * strongest).all(), (rendered.activation, strongest)
    # channels 1-3 are zero everywhere on the near-grey start: the redirected ReLU gradient
    # wakes them; all four end far above where they began
    assert (rendered.activation >= 2 * rendered.start).all()
    assert (rendered.activation - rendered.start >= 1.0).all()


def test_result_shape_range_text_and_dict(rendered):
    assert rendered.images.shape == (4, 3, 64, 64) and rendered.images.dtype == np.float32
    assert 0 <= rendered.images.min() and rendered.images.max() <= 1
    assert rendered.channels == (0, 1, 2, 3) and rendered.activation.shape == (4,)
    assert rendered.seconds > 0 and rendered.seconds_per_channel == rendered.seconds / 4
    text = str(rendered)
    assert "shapes backbone.block4: 4 channel(s), 64 x 64 px, 64 steps, seed 0" in text
    assert "s per channel" in text and len(text.splitlines()) == 7
    data = json.loads(json.dumps(rendered.to_dict()))
    assert data["channels"] == CHANNELS and data["image_shape"] == [4, 3, 64, 64]
    assert data["activation"] == pytest.approx(rendered.activation.tolist())


def test_same_seed_same_images_and_state_restored(model):
    module = model.module
    module.train()
    flags = [p.requires_grad for p in module.parameters()]
    deterministic = torch.are_deterministic_algorithms_enabled()
    during: list[bool] = []  # on the CPU the process-wide switch is left alone
    hook = module.register_forward_pre_hook(
        lambda *_: during.append(torch.are_deterministic_algorithms_enabled()))
    try:
        first = visualize(model, layer="backbone.block3", channels=[5, 1], size=32, steps=5)
        again = visualize(model, layer="backbone.block3", channels=[5, 1], size=32, steps=5)
        other = visualize(model, layer="backbone.block3", channels=[5, 1], size=32, steps=5,
                          seed=1)
        assert module.training and all(m.training for m in module.modules())
    finally:
        hook.remove()
        module.eval()
    assert during and set(during) == {deterministic}
    assert [p.requires_grad for p in module.parameters()] == flags
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert not any("forward" in vars(m) for m in module.modules())  # ReLUs given back
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.activation, again.activation)
    assert not np.array_equal(first.images, other.images)
    assert first.channels == (5, 1) and first.images.shape == (2, 3, 32, 32)


def test_any_module_and_a_lone_channel():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    v = fm.visualize(net, layer="0", channels=2, size=16, steps=3)
    assert v.channels == (2,) and v.images.shape == (1, 3, 16, 16)
    assert "ImageNet defaults assumed" in v.notes[0]


def test_plot_labels_every_image(rendered, tmp_path):
    from featuremap.plot import save_figure

    fig = plot_visualizations(rendered, columns=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4 and titles[0].startswith("channel 0\nmean ")
    assert "backbone.block4" in fig._suptitle.get_text()
    assert save_figure(fig, tmp_path / "vis.png").stat().st_size > 5_000


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"layer": "backbone.blok4"}, UnknownNameError, "Did you mean 'backbone.block4'"),
    ({"channels": [0, 128]}, ConfigError, r"channel 128 is outside the 128 channels of "
                                          r"'backbone.block4' \(0..127\)"),
    ({"channels": -1}, ConfigError, "channel -1 is outside"),
    ({"channels": []}, ConfigError, "channels must be a channel index or a list"),
    ({"channels": [2, 2]}, ConfigError, "name a channel twice"),
    ({"channels": [1.5]}, ConfigError, "channels must be"),
    ({"steps": 0}, ConfigError, "steps must be an integer from 1 to 10000, got 0"),
    ({"steps": 10_001}, ConfigError, "steps must be an integer from 1 to 10000"),
    ({"size": 8}, ConfigError, "size must be an integer from 16 to 1024, got 8"),
    ({"size": 4096}, ConfigError, "size must be an integer from 16 to 1024"),
    ({"seed": -1}, ConfigError, "seed must be an integer"),
    ({"layer": "classifier.fc"}, ConfigError, "not feature maps"),
])
def test_bad_input_is_one_line(model, options, error, match):
    kwargs = {"layer": LAYER, "channels": [0], "size": 32, "steps": 2} | options
    with pytest.raises(error, match=match) as info:
        visualize(model, **kwargs)
    assert "\n" not in str(info.value)


def test_too_large_a_batch_is_refused_before_it_runs(model, monkeypatch):
    monkeypatch.setenv("FEATUREMAP_MEMORY_LIMIT", "20MB")
    with pytest.raises(ConfigError, match=r"optimising 128 image.* would take .*limit") as info:
        visualize(model, layer=LAYER, channels=list(range(128)), size=256, steps=1)
    assert "\n" not in str(info.value)

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from featuremap.errors import ConfigError, FeaturemapError
from featuremap.filters import filter_bank
from featuremap.toy import compute_maps, explain_value


@pytest.fixture
def image(rng):
    return rng.random((3, 24, 30), dtype=np.float32)


def test_maps_equal_torch_on_luminance(image):
    m = compute_maps(image, "sobel,gaussian:1", stride=2, padding=2, padding_mode="reflect")
    grey = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), image, axes=1)[None, None]
    bank = filter_bank("sobel,gaussian:1")
    x = F.pad(torch.from_numpy(grey), (2, 2, 2, 2), mode="reflect")
    expected = F.conv2d(x, torch.tensor(bank.kernels[:, None]), stride=2)[0].numpy()
    np.testing.assert_allclose(m.maps, expected, rtol=1e-5, atol=1e-5)
    assert m.names == ("sobel_x", "sobel_y", "gaussian")
    assert m.shape == m.cost.output_shape


def test_per_channel_gives_three_maps_per_filter(image):
    m = compute_maps(image, "laplacian", channels="per-channel", padding="same")
    assert m.shape == (3, 24, 30)
    assert m.names == ("laplacian[R]", "laplacian[G]", "laplacian[B]")
    k = torch.tensor(filter_bank("laplacian").kernels[:, None])
    for c in range(3):
        one = F.conv2d(torch.from_numpy(image[c][None, None]), k, padding=1)[0, 0].numpy()
        np.testing.assert_allclose(m.maps[c], one, rtol=1e-5, atol=1e-5)


def test_depth_keeps_first_filters(image):
    m = compute_maps(image, "sobel,laplacian,random:4", depth=3)
    assert m.names == ("sobel_x", "sobel_y", "laplacian")
    with pytest.raises(ConfigError, match="depth 9 asks for more filters than the bank has"):
        compute_maps(image, "sobel,laplacian", depth=9)
    with pytest.raises(ConfigError, match="depth must be a positive integer"):
        compute_maps(image, "sobel", depth=0)


def test_stats_rows(image):
    rows = compute_maps(image, "sobel").stats()
    assert [r[0] for r in rows] == ["sobel_x", "sobel_y"]
    assert all(r[2] <= r[3] <= r[4] for r in rows)


def test_sample_photo_and_cost():
    m = compute_maps("sample:camera", "sobel", stride=2, padding=1, short_side=64)
    assert m.shape == (2, 32, 32)
    assert m.cost.macs == 2 * 32 * 32 * 9


def test_explain_value_matches_map(image):
    m = compute_maps(image, "sobel,laplacian", stride=2, padding=1)
    e = explain_value(image, "sobel,laplacian", at=(2, 3, 4), stride=2, padding=1)
    assert e.value == pytest.approx(float(m.maps[2, 3, 4]), abs=1e-5)
    assert e.map_name == "laplacian"
    assert "laplacian" in str(e) and "grey" in str(e)


def test_padding_beyond_the_kernel_equals_torch_with_a_note(image):
    # once refused: padding 4 > dilation * (kernel - 1) = 2 for the 3x3 sobel filters
    m = compute_maps(image, "sobel", stride=2, padding=4, padding_mode="replicate")
    grey = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), image, axes=1)[None, None]
    x = F.pad(torch.from_numpy(grey), (4, 4, 4, 4), mode="replicate")
    k = torch.tensor(filter_bank("sobel").kernels[:, None])
    np.testing.assert_allclose(m.maps, F.conv2d(x, k, stride=2)[0].numpy(), rtol=1e-5, atol=1e-5)
    assert m.shape == m.cost.output_shape == (2, 15, 18)
    assert m.notes == m.cost.notes == (
        "padding 4 > dilation x (kernel - 1) = 2: in each map, the outer row and column on each "
        "side see only padding (copies of the border pixels).",)
    assert str(m.cost).endswith("note    " + m.notes[0])
    zeros = compute_maps(image, "sobel", padding=4)
    assert not zeros.maps[:, :2].any() and not zeros.maps[:, -2:].any()
    assert "the outer 2 rows and columns on each side see only padding (zeros)" in zeros.notes[0]
    assert compute_maps(image, "sobel", padding=1).notes == ()
    e = explain_value(image, "sobel", at=(0, 0, 5), padding=4)
    assert e.value == 0.0 and e.padded.all()
    assert "every kernel tap falls in the padding (zeros)" in str(e)


def test_padding_torch_refuses_is_refused(image):
    with pytest.raises(ConfigError, match="reflect padding 24 needs padding < the input size 24"):
        compute_maps(image, "sobel", padding=24, padding_mode="reflect")
    with pytest.raises(ConfigError, match="circular padding 31 needs padding <= the input size 30"):
        compute_maps(image, "sobel", padding=(0, 31), padding_mode="circular")


def test_bad_inputs(image):
    with pytest.raises(ConfigError, match="channels must be"):
        compute_maps(image, "sobel", channels="rgb")
    with pytest.raises(FeaturemapError, match="Did you mean 'sobel'"):
        compute_maps(image, "sobol")


def test_maps_too_large_are_refused_before_computing(refused_early, monkeypatch):
    monkeypatch.setenv("FEATUREMAP_MEMORY_LIMIT", "50MB")
    big = np.zeros((1, 1000, 1000), np.float32)
    refused_early(lambda: compute_maps(big, "gabor:16", padding="same"),
                  "computing 16 feature maps of 1000 x 1000 would take 132 MB "
                  r"\(limit 50.0 MB, set by FEATUREMAP_MEMORY_LIMIT\)")
    refused_early(lambda: compute_maps(big, "random:100000:99"), "the 100000 filters of 99 x 99")

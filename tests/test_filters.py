"""Tests of featuremap.filters: kernel values, spec parsing, the bank, conv2d weights, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from featuremap.errors import ConfigError, FeaturemapError, UnknownNameError
from featuremap.filters import FilterBank, filter_bank, list_filters

SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)


def _torch():
    return pytest.importorskip("torch")


def _conv(image: np.ndarray, weight: np.ndarray, groups: int) -> np.ndarray:
    """torch's conv2d (cross-correlation) of a (C, H, W) image, no padding."""
    torch = _torch()
    out = torch.nn.functional.conv2d(torch.from_numpy(image), torch.from_numpy(weight),
                                     groups=groups)
    return out.numpy()


# ------------------------------------------------------------------ fixed kernels


def test_sobel_is_the_textbook_matrix():
    bank = filter_bank("sobel")
    assert bank.names == ("sobel_x", "sobel_y")
    assert bank.kernels.dtype == np.float32
    np.testing.assert_array_equal(bank["sobel_x"], SOBEL_X)
    np.testing.assert_array_equal(bank["sobel_y"], SOBEL_X.T)


@pytest.mark.parametrize("group", ["sobel", "prewitt", "scharr"])
def test_x_and_y_are_transposes_and_sum_to_zero(group):
    bank = filter_bank(group)
    np.testing.assert_array_equal(bank[f"{group}_y"], bank[f"{group}_x"].T)
    assert bank[f"{group}_x"].sum() == 0
    assert (bank[f"{group}_x"][:, 2] > 0).all() and (bank[f"{group}_x"][:, 0] < 0).all()


def test_prewitt_and_scharr_values():
    np.testing.assert_array_equal(filter_bank("prewitt_x")[0], [[-1, 0, 1]] * 3)
    scharr = [[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]]
    np.testing.assert_array_equal(filter_bank("scharr_x")[0], scharr)


def test_laplacian_identity_sharpen_emboss():
    bank = filter_bank("laplacian,identity,sharpen,emboss")
    np.testing.assert_array_equal(bank["laplacian"], [[0, 1, 0], [1, -4, 1], [0, 1, 0]])
    assert bank["laplacian"].sum() == 0
    assert bank["identity"].sum() == 1 and bank["identity"][1, 1] == 1
    assert bank["sharpen"].sum() == 1
    assert bank["emboss"].sum() == 1
    np.testing.assert_array_equal(bank["emboss"], [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])


@pytest.mark.parametrize("sigma, size", [(1.0, 7), (0.5, 5), (1.5, 11), (2.0, 13), (0.1, 3)])
def test_gaussian_sums_to_one_is_symmetric_and_sized(sigma, size):
    kernel = filter_bank(f"gaussian:{sigma}")["gaussian"]
    assert kernel.shape == (size, size) == (2 * math.ceil(3 * sigma) + 1,) * 2
    assert kernel.sum() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(kernel, kernel.T)
    np.testing.assert_allclose(kernel, kernel[::-1])
    np.testing.assert_allclose(kernel, kernel[:, ::-1])
    assert kernel.argmax() == kernel.size // 2  # peak at the centre


def test_gaussian_default_sigma_is_one():
    assert filter_bank("gaussian").kernel_size == 7


@pytest.mark.parametrize("size", [1, 3, 5])
def test_box_sums_to_one(size):
    kernel = filter_bank(f"box:{size}")[0]
    assert kernel.shape == (size, size)
    assert kernel.sum() == pytest.approx(1.0)
    assert np.ptp(kernel) == 0
    assert filter_bank("box").kernel_size == 3


# ------------------------------------------------------------------ gabor


def test_gabor_names_count_and_default_size():
    bank = filter_bank("gabor")
    assert bank.names == ("gabor_0deg", "gabor_45deg", "gabor_90deg", "gabor_135deg")
    sigma = 0.56 * 6.0
    assert bank.kernel_size == 2 * math.ceil(2.5 * sigma) + 1 == 19
    eight = filter_bank("gabor:8")
    assert len(eight) == 8 and eight.names[1] == "gabor_22.5deg"
    assert filter_bank("gabor:3:4").names == ("gabor_0deg", "gabor_60deg", "gabor_120deg")


@pytest.mark.parametrize("spec", ["gabor", "gabor:8", "gabor:6:3", "gabor:5:2.5", "gabor:4:11"])
def test_gabor_kernels_are_zero_mean_and_odd(spec):
    bank = filter_bank(spec)
    assert bank.kernel_size % 2 == 1
    np.testing.assert_allclose(bank.kernels.sum(axis=(1, 2)), 0, atol=1e-5)
    # Scaled so that the positive taps sum to 1 (and the negative ones to -1).
    np.testing.assert_allclose(np.abs(bank.kernels).sum(axis=(1, 2)), 2, rtol=1e-5)


def test_gabor_rot90_maps_orientation_plus_90():
    bank = filter_bank("gabor:8")
    # The cosine Gabor is symmetric under 180 degrees, so rot90 either way adds 90 degrees;
    # the sense of the angles (counter-clockwise) is checked in the next test.
    for a, b in [("0", "90"), ("45", "135"), ("22.5", "112.5"), ("67.5", "157.5")]:
        rotated = np.rot90(bank[f"gabor_{a}deg"])
        np.testing.assert_allclose(rotated, bank[f"gabor_{b}deg"], atol=1e-6)
        np.testing.assert_allclose(np.rot90(rotated), bank[f"gabor_{a}deg"], atol=1e-6)
    assert not np.allclose(bank["gabor_22.5deg"], bank["gabor_157.5deg"], atol=1e-3)


def test_gabor_0deg_has_vertical_stripes_and_45deg_runs_up_right():
    bank = filter_bank("gabor")
    k0, c = bank["gabor_0deg"], bank.kernel_size // 2
    assert k0[c, c] > 0
    assert k0[c, c + 3] < 0  # half a wavelength (3 px) to the right: the opposite phase
    assert k0[c - 2, c] > 0 and k0[c + 2, c] > 0  # along the stripe: same phase
    # Angles turn counter-clockwise as displayed (row 0 on top): the 45 degree wave vector points
    # up-right, so its stripes run up-left to down-right.
    k45 = bank["gabor_45deg"]
    assert k45[c - 2, c - 2] > 0 and k45[c + 2, c + 2] > 0  # along the stripe: same phase
    assert k45[c - 2, c + 2] < 0 and k45[c + 2, c - 2] < 0  # across it (~half a period)
    np.testing.assert_allclose(np.flipud(k45), bank["gabor_135deg"], atol=1e-6)


def test_gabor_responds_most_to_matching_stripes():
    bank = filter_bank("gabor:4")
    cols = np.arange(40)
    stripes = np.cos(2 * np.pi * cols / 6.0)[None, :].repeat(40, 0).astype(np.float32)
    w, _, groups = bank.weight()
    out = _conv(stripes[None], w, groups)
    energy = np.abs(out).mean(axis=(1, 2))
    assert energy.argmax() == bank.names.index("gabor_0deg")


# ------------------------------------------------------------------ random


def test_random_is_seeded_and_zero_mean_unit_norm():
    a = filter_bank("random:4", seed=7)
    b = filter_bank("random:4", seed=7)
    c = filter_bank("random:4", seed=8)
    assert a == b
    assert not np.allclose(a.kernels, c.kernels)
    assert a.names == ("random_0", "random_1", "random_2", "random_3")
    np.testing.assert_allclose(a.kernels.sum(axis=(1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(np.sqrt((a.kernels**2).sum(axis=(1, 2))), 1, rtol=1e-6)


def test_random_size_default_and_numbering_across_items():
    assert filter_bank("random").names == ("random_0",)
    assert filter_bank("random:2").kernel_size == 3
    assert filter_bank("random:2:5").kernel_size == 5
    bank = filter_bank("random:2,random:2")
    assert bank.names == ("random_0", "random_1", "random_2", "random_3")
    assert not np.allclose(bank.kernels[:2], bank.kernels[2:])


def test_random_does_not_depend_on_fixed_filters_around_it():
    alone = filter_bank("random:3", seed=3)
    mixed = filter_bank("sobel,random:3,laplacian", seed=3)
    np.testing.assert_array_equal(mixed.select(alone.names).kernels, alone.kernels)


# ------------------------------------------------------------------ spec parsing


def test_spec_counts_and_unique_names():
    bank = filter_bank("sobel,gabor:8,random:4")
    assert len(bank) == bank.depth == 14
    assert len(set(bank.names)) == 14
    assert bank.kernels.shape == (14, 19, 19)


def test_spec_forms_are_equivalent():
    a = filter_bank("sobel,laplacian")
    assert filter_bank(["sobel", "laplacian"]) == a
    assert filter_bank(["sobel,laplacian"]) == a
    assert filter_bank(" Sobel , LAPLACIAN ") == a
    assert filter_bank(("sobel", "laplacian")) == a


def test_default_spec_is_sobel():
    assert filter_bank().names == ("sobel_x", "sobel_y")


def test_duplicates_get_suffixes():
    bank = filter_bank("sobel,sobel_x,gaussian,gaussian:2,sobel")
    assert bank.names == ("sobel_x", "sobel_y", "sobel_x_2", "gaussian", "gaussian_2",
                          "sobel_x_3", "sobel_y_2")
    assert bank["gaussian_2"].shape == (13, 13)


def test_every_listed_filter_builds():
    filters = list_filters()
    for name, text in filters.items():
        assert isinstance(text, str) and "\n" not in text and text.startswith(name)
        assert len(filter_bank(name)) >= 1
    assert {"sobel", "sobel_x", "gabor", "random", "gaussian", "box", "identity"} <= set(filters)
    assert "gabor[:N[:WAVELENGTH]]" in filters["gabor"]


def test_mixed_sizes_are_padded_centred():
    bank = filter_bank("sobel,gaussian,box:5")
    assert bank.kernel_size == 7
    padded = bank["sobel_x"]
    np.testing.assert_array_equal(padded[2:5, 2:5], SOBEL_X)
    assert np.count_nonzero(padded) == np.count_nonzero(SOBEL_X)
    box = bank["box"]
    assert box[1:6, 1:6].sum() == pytest.approx(1.0) and box[0].sum() == 0 and box[:, 6].sum() == 0
    # Centred: the identity stays an identity under 'same' padding.
    torch = _torch()
    image = np.random.default_rng(0).random((1, 9, 9)).astype(np.float32)
    ident = filter_bank("identity,gaussian").select("identity").weight()[0]
    out = torch.nn.functional.conv2d(torch.from_numpy(image), torch.from_numpy(ident),
                                     padding="same").numpy()
    np.testing.assert_allclose(out, image, atol=1e-6)


# ------------------------------------------------------------------ the bank


def test_getitem_by_int_name_slice():
    bank = filter_bank("sobel,laplacian")
    np.testing.assert_array_equal(bank[0], bank["sobel_x"])
    np.testing.assert_array_equal(bank[-1], bank["laplacian"])
    np.testing.assert_array_equal(bank[np.int64(1)], bank["sobel_y"])
    sub = bank[1:]
    assert isinstance(sub, FilterBank) and sub.names == ("sobel_y", "laplacian")
    assert [k.shape for k in bank] == [(3, 3)] * 3
    assert "laplacian" in bank and "gabor" not in bank
    with pytest.raises(IndexError, match="out of range"):
        bank[3]
    with pytest.raises(TypeError, match="indexed by int, name or slice"):
        bank[1.0]


def test_select_keeps_order_and_size():
    bank = filter_bank("sobel,gaussian")
    sub = bank.select(["sobel_y", 0])
    assert sub.names == ("sobel_y", "sobel_x")
    assert sub.kernel_size == 7
    assert bank.select("gaussian").names == ("gaussian",)


def test_add_concatenates_and_pads():
    a, b = filter_bank("sobel"), filter_bank("gaussian,sobel_x")
    both = a + b
    assert both.names == ("sobel_x", "sobel_y", "gaussian", "sobel_x_2")
    assert both.kernel_size == 7
    np.testing.assert_array_equal(both["sobel_x"], both["sobel_x_2"])
    assert (a + a).depth == 4


def test_kernels_are_read_only_float32_copies():
    source = SOBEL_X[None].astype(np.float64)
    bank = FilterBank(("edge",), source)
    assert bank.kernels.dtype == np.float32
    source[0, 0, 0] = 99
    assert bank["edge"][0, 0] == -1
    with pytest.raises(ValueError):
        bank.kernels[0, 0, 0] = 5
    assert "depth=1" in repr(bank) and "edge" in repr(bank)


@pytest.mark.parametrize(
    "names, kernels, match",
    [
        (("a",), np.zeros((1, 2, 2)), "must be odd"),
        (("a",), np.zeros((1, 3, 5)), r"shape \(D, k, k\)"),
        ((), np.zeros((0, 3, 3)), "at least one filter"),
        (("a", "b"), np.zeros((1, 3, 3)), "one non-empty name per kernel"),
        (("a", "a"), np.zeros((2, 3, 3)), "unique.*a"),
        (("a",), np.full((1, 3, 3), np.nan), "finite"),
    ],
)
def test_bank_constructor_validates(names, kernels, match):
    with pytest.raises(ConfigError, match=match):
        FilterBank(names, kernels)


# ------------------------------------------------------------------ weight()


def test_weight_shapes_luminance():
    bank = filter_bank("sobel,gaussian")
    weight, names, groups = bank.weight()
    assert weight.shape == (3, 1, 7, 7) and weight.dtype == np.float32
    assert names == bank.names and groups == 1
    weight[0, 0, 0, 0] = 42  # a fresh, writable copy
    assert bank.kernels[0, 0, 0] == 0


def test_weight_shapes_per_channel():
    bank = filter_bank("sobel,laplacian")
    weight, names, groups = bank.weight(3, mode="per-channel")
    assert weight.shape == (9, 1, 3, 3) and groups == 3
    assert names[:4] == ("sobel_x[R]", "sobel_y[R]", "laplacian[R]", "sobel_x[G]")
    assert names[-1] == "laplacian[B]"
    _, names2, groups2 = bank.weight(2, mode="per-channel")
    assert names2 == ("sobel_x[c0]", "sobel_y[c0]", "laplacian[c0]",
                      "sobel_x[c1]", "sobel_y[c1]", "laplacian[c1]")
    assert groups2 == 2
    assert bank.weight(1, mode="per-channel")[0].shape == (3, 1, 3, 3)


def test_per_channel_equals_luminance_on_each_channel():
    bank = filter_bank("sobel,gaussian:1,random:2")
    image = np.random.default_rng(1).random((3, 16, 12)).astype(np.float32)
    weight, names, groups = bank.weight(3, mode="per-channel")
    out = _conv(image, weight, groups)
    lum, _, g1 = bank.weight()
    for c, letter in enumerate("RGB"):
        expected = _conv(image[c : c + 1], lum, g1)
        for d, name in enumerate(bank.names):
            index = names.index(f"{name}[{letter}]")
            assert index == c * bank.depth + d  # channel-major
            np.testing.assert_allclose(out[index], expected[d], atol=1e-5)


def test_sobel_x_is_positive_on_dark_to_bright_step():
    image = np.zeros((1, 8, 8), dtype=np.float32)
    image[:, :, 4:] = 1.0  # dark on the left, bright on the right
    weight, _, groups = filter_bank("sobel").weight()
    out = _conv(image, weight, groups)
    sx, sy = out[0], out[1]
    assert sx.max() == 4.0 and sx.min() == 0.0  # 1 + 2 + 1 across the edge, never negative
    np.testing.assert_array_equal(sy, 0)
    image_down = np.ascontiguousarray(np.transpose(image, (0, 2, 1)))  # bright at the bottom
    assert _conv(image_down, weight, groups)[1].max() == 4.0


@pytest.mark.parametrize(
    "in_channels, mode, error, match",
    [
        (3, "luminance", ConfigError, "1-channel.*in_channels=3.*per-channel"),
        (0, "per-channel", ConfigError, "positive integer, got 0"),
        (2.0, "per-channel", ConfigError, "positive integer, got 2.0"),
        (True, "luminance", ConfigError, "positive integer, got True"),
        (3, "perchannel", UnknownNameError, "Unknown weight mode 'perchannel'.*'per-channel'"),
    ],
)
def test_weight_errors(in_channels, mode, error, match):
    with pytest.raises(error, match=match):
        filter_bank("sobel").weight(in_channels, mode=mode)


# ------------------------------------------------------------------ errors


def test_unknown_filter_suggests_and_lists():
    with pytest.raises(UnknownNameError) as info:
        filter_bank("sobel,sobol")
    message = str(info.value)
    assert message.startswith("Unknown filter 'sobol'. Did you mean 'sobel'")
    assert "Known filters: identity, box, gaussian" in message
    assert info.value.suggestions[0] == "sobel"
    assert isinstance(info.value, FeaturemapError) and isinstance(info.value, ValueError)


def test_unknown_name_in_bank():
    bank = filter_bank("sobel")
    with pytest.raises(UnknownNameError, match="Unknown filter 'sobelx'. Did you mean 'sobel_x'"):
        bank["sobelx"]
    with pytest.raises(UnknownNameError, match="This bank has: sobel_x, sobel_y"):
        bank.select(["laplacian"])


@pytest.mark.parametrize(
    "spec, match",
    [
        ("gabor:0", r"'gabor:0': N \(the number of orientations\) must be >= 1, got 0. "
                    r"Expected gabor\[:N\[:WAVELENGTH\]\]"),
        ("gabor:4:1", r"WAVELENGTH .* must be a finite number >= 2, got '1'"),
        ("gabor:2.5", r"N .* must be an integer, got '2.5'"),
        ("gabor:4:6:2", r"'gabor:4:6:2': 'gabor' takes at most 2 arguments, got 3"),
        ("gaussian:-1", r"'gaussian:-1': SIGMA must be a finite number > 0, got '-1'. "
                        r"Expected gaussian\[:SIGMA\], e.g. 'gaussian:2.0'"),
        ("gaussian:0", r"SIGMA must be a finite number > 0, got '0'"),
        ("gaussian:nan", r"SIGMA must be a finite number > 0, got 'nan'"),
        ("gaussian:", r"SIGMA must be a number, got ''"),
        ("box:0", r"'box:0': SIZE must be >= 1, got 0. Expected box\[:SIZE\]"),
        ("box:2", r"SIZE must be odd .* got 2"),
        ("box:3:3", r"'box' takes at most 1 argument, got 2"),
        ("random:abc", r"'random:abc': N \(the number of filters\) must be an integer, got 'abc'. "
                       r"Expected random\[:N\[:SIZE\]\]"),
        ("random:2:1", r"SIZE must be >= 3, got 1"),
        ("random:2:4", r"SIZE must be odd"),
        ("random:1:3:3", r"'random' takes at most 2 arguments, got 3"),
        ("sobel:3", r"'sobel:3': 'sobel' takes no arguments, got 1. Expected 'sobel' alone"),
        ("laplacian:1:2", r"'laplacian' takes no arguments, got 2"),
        ("", r"Empty filter spec ''; expected comma-separated filters such as 'sobel,gabor:8"),
        ("  ", r"Empty filter spec"),
        ([], r"Empty filter spec \[\]"),
        ("sobel,,laplacian", r"Empty item in filter spec 'sobel,,laplacian'"),
        ("sobel,", r"Empty item in filter spec 'sobel,'"),
        (["sobel", 3], r"a string or a list of strings, got \['sobel', 3\]"),
        (None, r"a string or a list of strings, got None"),
    ],
)
def test_bad_specs_raise_config_error(spec, match):
    with pytest.raises(ConfigError, match=match) as info:
        filter_bank(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("seed", [1.5, "0", None, True])
def test_bad_seed(seed):
    with pytest.raises(ConfigError, match="seed must be an integer"):
        filter_bank("random:2", seed=seed)


def test_empty_selection_and_slice():
    bank = filter_bank("sobel")
    with pytest.raises(ConfigError, match="Empty selection from a bank of 2 filters"):
        bank.select([])
    with pytest.raises(ConfigError, match="Empty selection"):
        bank[5:]


def test_module_imports_no_torch_or_scipy():
    import subprocess
    import sys

    code = ("import sys, featuremap.filters; "
            "print(any(m.split('.')[0] in ('torch', 'scipy') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("spec, words", [
    ("gabor:100000000", "the 100000000 filters of 19 x 19 would take 4.. GB"),
    ("sobel,random:1:100001", "the 3 filters of 100001 x 100001 would take"),
    ("box:99999", "the 1 filter of 99999 x 99999"),
    ("gaussian:1e300", "the 1 filter of 2e\\+30 x 2e\\+30 would take .* bytes"),
    ("gabor:4:1e308", "the 4 filters of 2e\\+30"),
])
def test_banks_too_large_are_refused_before_building(spec, words, refused_early):
    message = refused_early(lambda: filter_bank(spec), words)
    assert "use fewer filters" in message


def test_per_channel_weight_too_large_is_refused(refused_early):
    bank = filter_bank("gabor:8")
    refused_early(lambda: bank.weight(10**9, mode="per-channel"),
                  "the weight of 8 filters of 19 x 19 on each of 1000000000 channels")

"""Tests of featuremap.images: formats, modes, orientation, resizing, samples and bad input."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from featuremap.errors import FeaturemapError, ImageError, UnknownNameError
from featuremap.images import list_samples, load_image, sample_path, to_uint8_hwc

RNG = np.random.default_rng(0)
RGB = (RNG.random((20, 30, 3)) * 255).astype(np.uint8)  # (H, W, 3): height 20, width 30


def expected(image: Image.Image) -> np.ndarray:
    """What load_image should return for an opaque 8-bit image: (3, H, W) floats."""
    return np.moveaxis(np.asarray(image.convert("RGB"), dtype=np.float32) / 255, -1, 0)


def save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but holds no pixel data (cheap bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    "suffix, options",
    [(".png", {}), (".webp", {"lossless": True}), (".tiff", {}), (".bmp", {})],
)
def test_lossless_formats_round_trip_exactly(tmp_path, suffix, options):
    image = Image.fromarray(RGB)
    path = save(image, tmp_path / f"x{suffix}", **options)
    out = load_image(path)
    assert out.shape == (3, 20, 30) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected(image))


def test_jpeg_matches_pillow_decoding(tmp_path):
    ramp = np.linspace(0, 255, 30).astype(np.uint8)  # smooth, so JPEG keeps it closely
    smooth = np.stack(np.broadcast_arrays(ramp[None, :], ramp[::-1, None][:20], 128), -1)
    image = Image.fromarray(smooth.astype(np.uint8))
    path = save(image, tmp_path / "x.jpg", quality=95)
    out = load_image(str(path))
    np.testing.assert_array_equal(out, expected(Image.open(path)))
    assert np.abs(out - expected(image)).max() < 0.05


def test_gif_reads_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), color) for color in ("red", "blue", "green")]
    path = tmp_path / "x.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = load_image(path)
    assert out.shape == (3, 6, 8)
    np.testing.assert_array_equal(out[:, 0, 0], [1.0, 0.0, 0.0])


def test_bytes_source(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(RGB).save(buffer, "PNG")
    np.testing.assert_array_equal(load_image(buffer.getvalue()), expected(Image.fromarray(RGB)))


def test_result_is_contiguous_float32_in_unit_range(tmp_path):
    out = load_image(save(Image.fromarray(RGB), tmp_path / "x.png"))
    assert out.flags.c_contiguous and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0


# ------------------------------------------------------------------------------------ modes


def test_mode_1_is_black_and_white():
    image = Image.new("1", (3, 2), 0)
    image.putpixel((1, 0), 1)
    out = load_image(image, mode="gray")
    np.testing.assert_array_equal(out[0], [[0, 1, 0], [0, 0, 0]])


def test_mode_l_in_rgb_gives_three_equal_channels(tmp_path):
    gray = RGB[..., 0]
    out = load_image(save(Image.fromarray(gray), tmp_path / "g.png"))
    assert out.shape == (3, 20, 30)
    for channel in out:
        np.testing.assert_array_equal(channel, gray / np.float32(255))


def test_mode_la_composites_on_white():
    image = Image.new("LA", (2, 1))
    image.putpixel((0, 0), (0, 0))  # fully transparent black -> white
    image.putpixel((1, 0), (0, 255))  # opaque black
    out = load_image(image, mode="gray")
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0])


def test_mode_rgba_alpha_zero_is_white_and_half_alpha_blends(tmp_path):
    pixels = np.zeros((1, 3, 4), np.uint8)
    pixels[0, 0] = (255, 0, 0, 0)  # transparent red -> white
    pixels[0, 1] = (255, 0, 0, 255)  # opaque red
    pixels[0, 2] = (0, 0, 0, 51)  # 20% black over white -> 0.8
    out = load_image(save(Image.fromarray(pixels), tmp_path / "a.png"))
    np.testing.assert_allclose(out[:, 0, 0], [1, 1, 1])
    np.testing.assert_allclose(out[:, 0, 1], [1, 0, 0])
    np.testing.assert_allclose(out[:, 0, 2], [0.8, 0.8, 0.8], atol=1e-6)


def test_mode_p_with_palette(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    out = load_image(save(image, tmp_path / "p.png"))
    np.testing.assert_array_equal(out[:, 0, 0], [1, 0, 0])
    np.testing.assert_array_equal(out[:, 0, 1], [0, 0, 1])


def test_mode_p_with_transparency_is_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    path = save(image, tmp_path / "pt.png", transparency=0)
    assert Image.open(path).info.get("transparency") is not None
    out = load_image(path)
    np.testing.assert_array_equal(out[:, 0, 0], [1, 1, 1])
    np.testing.assert_array_equal(out[:, 0, 1], [0, 0, 1])


def test_mode_cmyk(tmp_path):
    image = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # no cyan, full magenta+yellow = red
    path = save(image, tmp_path / "c.jpg", quality=100)
    assert Image.open(path).mode == "CMYK"
    out = load_image(path)
    np.testing.assert_allclose(out[:, 0, 0], [1, 0, 0], atol=0.02)
    np.testing.assert_array_equal(load_image(image)[:, 0, 0], [1, 0, 0])


def test_mode_i16_keeps_16_bit_precision(tmp_path):
    values = np.array([[0, 1, 32768, 65535]], np.uint16)
    path = save(Image.fromarray(values), tmp_path / "16.png")
    assert Image.open(path).mode.startswith("I;16")
    out = load_image(path, mode="gray")
    assert out[0, 0, 3] == 1.0
    assert out[0, 0, 2] == np.float32(32768 / 65535)
    assert out[0, 0, 1] == np.float32(1 / 65535)  # would be 0 through 8 bits


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_mode_i16_byte_orders(mode):
    image = Image.new(mode, (2, 1))
    image.putpixel((1, 0), 40000)
    out = load_image(image, mode="gray")
    np.testing.assert_array_equal(out[0, 0], np.array([0, 40000 / 65535], np.float32))


def test_mode_i16_tiff_file(tmp_path):
    values = np.array([[0, 65535], [32768, 12345]], np.uint16)
    out = load_image(save(Image.fromarray(values), tmp_path / "16.tiff"))
    np.testing.assert_array_equal(out[1], values.astype(np.float32) / np.float32(65535))


def test_mode_i_within_16_bits_divides_by_65535():
    image = Image.fromarray(np.array([[0, 65535, 32768]], np.int32), mode="I")
    out = load_image(image, mode="gray")
    np.testing.assert_allclose(out[0, 0], [0, 1, 32768 / 65535], rtol=1e-7)


def test_mode_i_beyond_16_bits_is_min_max_scaled():
    image = Image.fromarray(np.array([[-100, 0, 100_000 - 100]], np.int32), mode="I")
    out = load_image(image, mode="gray")
    np.testing.assert_allclose(out[0, 0], [0.0, 0.001, 1.0], atol=1e-7)


def test_mode_f_within_unit_range_is_kept(tmp_path):
    values = np.array([[0.0, 0.25, 1.0]], np.float32)
    path = save(Image.fromarray(values), tmp_path / "f.tiff")
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(load_image(path, mode="gray")[0], values)


def test_mode_f_outside_unit_range_is_min_max_scaled():
    image = Image.fromarray(np.array([[-2.0, 0.0, 2.0]], np.float32))
    np.testing.assert_array_equal(load_image(image, mode="gray")[0, 0], [0.0, 0.5, 1.0])


def test_mode_f_with_nan_is_refused():
    image = Image.fromarray(np.array([[0.0, np.nan]], np.float32))
    with pytest.raises(ImageError, match="NaN"):
        load_image(image)


# ------------------------------------------------------------------- orientation, gray, size


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_transposes_jpeg(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(Image.fromarray(RGB), tmp_path / "o.jpg", exif=exif)
    assert load_image(path).shape == (3, 30, 20)


def test_exif_orientation_6_rotates_clockwise(tmp_path):
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = 255  # white top-left corner of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = load_image(save(Image.fromarray(pixels), tmp_path / "o.png", exif=exif), mode="gray")
    assert out.shape == (1, 3, 2)
    assert out[0, 0, 1] == 1.0 and out.sum() == 1.0  # it is now the top-right corner


def test_gray_is_luminance_in_float():
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 30]]], np.uint8)
    out = load_image(pixels, mode="gray")
    want = pixels.astype(np.float64) / 255 @ [0.299, 0.587, 0.114]
    assert out.shape == (1, 1, 4)
    np.testing.assert_allclose(out[0], want, rtol=1e-6)


@pytest.mark.parametrize(
    "size, short_side, shape",
    [((30, 20), 10, (10, 15)), ((20, 30), 10, (15, 10)), ((30, 20), 40, (40, 60))],
)
def test_short_side_resizes_keeping_aspect(size, short_side, shape):
    image = Image.new("RGB", size, (0, 128, 255))
    out = load_image(image, short_side=short_side)
    assert out.shape == (3, *shape)
    np.testing.assert_allclose(out[:, 3, 3], [0, 128 / 255, 1], atol=1e-5)
    assert load_image(image, mode="gray", short_side=short_side).shape == (1, *shape)


def test_short_side_keeps_16_bit_precision():
    values = np.full((8, 8), 1, np.uint16)  # 1/65535 would be 0 at 8 bits
    out = load_image(Image.fromarray(values), mode="gray", short_side=4)
    np.testing.assert_allclose(out, 1 / 65535, rtol=1e-4)


# ----------------------------------------------------------------------------------- arrays


def test_arrays_of_each_dtype():
    np.testing.assert_array_equal(load_image(RGB), expected(Image.fromarray(RGB)))
    u16 = np.array([[0, 65535]], np.uint16)
    np.testing.assert_array_equal(load_image(u16, mode="gray")[0], [[0, 1]])
    floats = np.array([[0.0, 0.5]], np.float64)
    np.testing.assert_array_equal(load_image(floats, mode="gray")[0], [[0, 0.5]])
    np.testing.assert_array_equal(load_image(np.eye(2, dtype=bool), mode="gray")[0], np.eye(2))
    assert load_image(RGB[..., :1]).shape == (3, 20, 30)


def test_rgba_array_composites_on_white():
    pixels = np.zeros((1, 1, 4), np.uint8)
    np.testing.assert_array_equal(load_image(pixels)[:, 0, 0], [1, 1, 1])


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((3, 20, 30), np.uint8), ["(3, 20, 30)", "transpose(1, 2, 0)"]),
        (np.zeros((4, 4, 2), np.uint8), ["(H, W, 3)", "(4, 4, 2)"]),
        (np.zeros((2, 2, 2, 3), np.uint8), ["(2, 2, 2, 3)"]),
        (np.zeros(5, np.uint8), ["(5,)"]),
        (np.zeros((0, 4), np.uint8), ["(0, 4)"]),
        (np.zeros((4, 4), np.int64), ["int64", "uint8"]),
        (np.zeros((4, 4), np.complex64), ["complex64"]),
        (np.full((4, 4), 255.0), ["[0, 1]", "255"]),
        (np.full((4, 4), np.nan), ["NaN"]),
    ],
)
def test_bad_arrays_are_refused(array, words):
    with pytest.raises(ImageError) as info:
        load_image(array)
    assert all(word in str(info.value) for word in words), str(info.value)


# ------------------------------------------------------------------------------- bad input


def one_line_error(source: object, **options: object) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source, **options)
    message = str(info.value)
    assert "\n" not in message and message.endswith((".", "?")), message
    return message


def test_missing_file(tmp_path):
    message = one_line_error(tmp_path / "nope.png")
    assert "nope.png" in message and "does not exist" in message


def test_missing_file_that_names_a_sample_suggests_it():
    assert "sample:astronaut" in one_line_error("astronaut")


def test_directory(tmp_path):
    message = one_line_error(tmp_path)
    assert "directory" in message and str(tmp_path) in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    message = one_line_error(path)
    assert "empty.png" in message and "0 bytes" in message


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_files(tmp_path, suffix):
    full = save(Image.fromarray(RGB), tmp_path / f"full{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    message = one_line_error(cut)
    assert f"cut{suffix}" in message and "truncated or corrupt" in message
    assert "re-download" in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncations_of_a_png_raise_image_error_or_give_all_pixels(tmp_path):
    data = save(Image.fromarray(RGB), tmp_path / "x.png").read_bytes()
    whole = expected(Image.fromarray(RGB))
    for length in [*range(1, len(data), 37), *range(len(data) - 24, len(data))]:
        try:
            out = load_image(data[:length])
        except ImageError:
            continue
        # Pillow checks no checksum: a cut after the last pixel byte still decodes fully.
        np.testing.assert_array_equal(out, whole)
        assert length > len(data) - 24


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("<html>404 Not Found</html>\n")
    message = one_line_error(path)
    assert "notes.png" in message and "not an image" in message and "looks like text" in message


def test_binary_garbage(tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(bytes(range(256)))
    assert "not an image" in one_line_error(path)


def test_unsupported_source_type():
    assert "list" in one_line_error([[0, 1]])


@pytest.mark.parametrize("mode", ["RGB", "grey", "cmyk", None])
def test_unsupported_mode_string(mode):
    message = one_line_error(RGB, mode=mode)
    assert repr(mode) in message and "'rgb'" in message and "'gray'" in message


@pytest.mark.parametrize("option", ["short_side", "max_pixels"])
@pytest.mark.parametrize("value", [0, -3, 2.5, True, "10"])
def test_bad_numeric_options(option, value):
    assert option in one_line_error(RGB, **{option: value})


def test_errors_are_featuremap_errors_and_value_errors(tmp_path):
    with pytest.raises(FeaturemapError):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ValueError):
        load_image(tmp_path / "nope.png")


# -------------------------------------------------------------------------- size limits


def test_max_pixels_is_checked_before_decoding(tmp_path):
    path = save(Image.fromarray(RGB), tmp_path / "x.png")
    message = one_line_error(path, max_pixels=100)
    assert "30x20" in message and "600 pixels" in message
    assert "max_pixels=" in message and "--max-pixels" in message
    assert load_image(path, max_pixels=600).shape == (3, 20, 30)


def test_max_pixels_applies_to_pil_images_and_resizing():
    assert "max_pixels" in one_line_error(Image.fromarray(RGB), max_pixels=100)
    message = one_line_error(Image.fromarray(RGB), short_side=200, max_pixels=10_000)
    assert "short_side=200" in message and "300x200" in message


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow's warning, then its error
def test_pillow_decompression_bomb_is_refused(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(side, side))
    filters = list(warnings.filters)
    limit = Image.MAX_IMAGE_PIXELS
    message = one_line_error(path)  # Pillow's guard fires while opening, before ours
    assert "bomb.png" in message and f"{side * side} pixels" in message
    assert "--max-pixels" in message
    assert warnings.filters == filters and Image.MAX_IMAGE_PIXELS == limit


def test_default_limit_refuses_large_header(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_header(8000, 8000))  # 64 M pixels: over 50 M, under Pillow's 89 M
    assert "64,000,000 pixels" in one_line_error(path)


def test_raising_max_pixels_lifts_pillows_guard_for_the_call_only(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_header(10_000, 10_000))
    limit = Image.MAX_IMAGE_PIXELS
    # Past both guards, decoding fails on the missing pixel data instead.
    message = one_line_error(path, max_pixels=None)
    assert "truncated or corrupt" in message
    assert Image.MAX_IMAGE_PIXELS == limit


# ---------------------------------------------------------------------------------- samples


def test_list_samples():
    samples = list_samples()
    assert {"astronaut", "camera", "coffee", "chelsea"} <= set(samples)
    assert list(samples) == sorted(samples)
    for name, description in samples.items():
        assert description and "\n" not in description
        assert sample_path(name).is_file()


def test_load_sample_astronaut():
    out = load_image("sample:astronaut")
    assert out.shape == (3, 512, 512) and out.dtype == np.float32
    assert load_image("sample:camera", mode="gray").shape == (1, 512, 512)


def test_sample_path_accepts_prefix_and_any_case():
    assert sample_path("sample:Astronaut") == sample_path("astronaut")


def test_unknown_sample_suggests_close_names():
    with pytest.raises(UnknownNameError) as info:
        load_image("sample:astronot")
    assert info.value.suggestions[0] == "astronaut"
    message = str(info.value)
    assert "'astronot'" in message and "Did you mean 'astronaut'" in message
    assert "featuremap samples" in message


def test_unknown_sample_without_suggestion():
    with pytest.raises(UnknownNameError, match="featuremap samples"):
        sample_path("zzzzzz")


# ------------------------------------------------------------------------------ to_uint8_hwc


def test_to_uint8_hwc_round_trips():
    out = to_uint8_hwc(load_image(RGB))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)
    gray = to_uint8_hwc(load_image(RGB[..., 0], mode="gray"))
    np.testing.assert_array_equal(gray, RGB[..., 0])
    np.testing.assert_array_equal(to_uint8_hwc(np.array([[-1.0, 0.5, 2.0]])), [[0, 128, 255]])


@pytest.mark.parametrize("bad", [np.zeros((2, 4, 4)), np.zeros(4), np.full((2, 2), np.nan)])
def test_to_uint8_hwc_refuses_bad_arrays(bad):
    with pytest.raises(ImageError):
        to_uint8_hwc(bad)


# ------------------------------------------------------------------------------ Preprocess
def test_preprocess_matches_torchvision_normalise_and_crop():
    import torch
    from torchvision.transforms import v2

    from featuremap.preprocess import Preprocess

    rng = np.random.default_rng(3)
    image = rng.random((3, 40, 50), dtype=np.float32)
    pre = Preprocess(resize=None, crop=32)
    ours = pre(image)
    pipeline = v2.Compose([v2.CenterCrop(32), v2.Normalize(pre.mean, pre.std)])
    expected = pipeline(torch.from_numpy(image.copy())).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_preprocess_resize_crop_and_channels():
    from featuremap.preprocess import Preprocess

    assert Preprocess(resize=64, crop=56)("sample:chelsea").shape == (3, 56, 56)
    assert Preprocess(resize=32, crop=None)("sample:coffee").shape == (3, 32, 48)
    grey = Preprocess(resize=None, crop=None, mean=(0.5,), std=(0.5,), channels=1)
    out = grey(np.ones((3, 8, 8), np.float32))
    assert out.shape == (1, 8, 8) and np.allclose(out, 1.0)
    rgb = Preprocess(resize=None, crop=None).load(np.zeros((1, 4, 4), np.float32))
    assert rgb.shape == (3, 4, 4)
    assert "centre crop 224x224" in Preprocess().describe()


def test_center_crop_pads_small_images():
    from featuremap.preprocess import center_crop

    small = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    assert center_crop(small, 4).shape == (1, 4, 4)
    big = np.arange(36, dtype=np.float32).reshape(1, 6, 6)
    np.testing.assert_array_equal(center_crop(big, 2)[0], [[14, 15], [20, 21]])

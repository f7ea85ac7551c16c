from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featuremap.arithmetic import (
    PADDING_MODES,
    RFStep,
    conv_cost,
    output_size,
    padding_notes,
    padding_only,
    resolve_padding,
    rf_step,
    same_padding,
)
from featuremap.errors import ConfigError


@st.composite
def conv_settings(draw):
    k = draw(st.integers(1, 7))
    d = draw(st.integers(1, 3))
    eff = d * (k - 1) + 1
    p = draw(st.integers(0, eff + 5))  # beyond eff - 1: outer rows see only padding
    s = draw(st.integers(1, 4))
    n = draw(st.integers(max(1, eff - 2 * p), 40))
    return n, k, s, p, d


@settings(max_examples=150, deadline=None)
@given(conv_settings())
def test_output_size_matches_torch(case):
    n, k, s, p, d = case
    conv = torch.nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d, bias=False)
    with torch.no_grad():
        real = conv(torch.zeros(1, 1, n, n + 1)).shape[-2:]
    assert output_size((n, n + 1), k, stride=s, padding=p, dilation=d) == tuple(real)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(1, 7), st.integers(1, 3))
def test_same_padding_matches_torch_at_stride_1(n, k, d):
    conv = torch.nn.Conv2d(1, 1, k, padding="same", dilation=d, bias=False)
    x = torch.randn(1, 1, n, n)
    (top, bottom), (left, right) = same_padding(n, k, dilation=d)
    padded = torch.nn.functional.pad(x, (left, right, top, bottom))
    with torch.no_grad():
        expected = conv(x)
        got = torch.nn.functional.conv2d(padded, conv.weight, dilation=d)
    assert output_size(n, k, padding="same", dilation=d) == (n, n)
    torch.testing.assert_close(got, expected)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 50), st.integers(1, 7), st.integers(1, 4))
def test_same_padding_gives_ceil_at_any_stride(n, k, s):
    assert output_size(n, k, stride=s, padding="same") == (-(-n // s),) * 2


def test_valid_is_zero_padding():
    assert resolve_padding("valid", 10, 3) == ((0, 0), (0, 0))
    assert output_size(10, 3, padding="valid") == (8, 8)


def test_pairs_per_axis():
    assert output_size((32, 20), (3, 5), stride=(1, 2), padding=(1, 2)) == (32, 10)


def test_error_kernel_too_large_names_formula():
    with pytest.raises(ConfigError) as err:
        output_size(224, 300)
    msg = str(err.value)
    assert "kernel 300 with dilation 1 does not fit input 224 + 2*0 padding" in msg
    assert "output would be 0x0" in msg
    assert "((224 + 0 - 300) // 1 + 1 <= 0)" in msg


@pytest.mark.parametrize("stride", [0, -2])
def test_error_stride(stride):
    with pytest.raises(ConfigError, match=f"stride must be a positive integer, got {stride}"):
        output_size(10, 3, stride=stride)


def test_error_negative_padding():
    with pytest.raises(ConfigError, match="padding must be >= 0, got -1"):
        output_size(10, 3, padding=-1)


def test_padding_larger_than_kernel_reach_is_computed_with_a_note():
    # once refused; torch computes it, so the outer rows and columns see only padding
    conv = torch.nn.Conv2d(1, 1, 3, padding=3, bias=False)
    with torch.no_grad():
        real = conv(torch.zeros(1, 1, 10, 10)).shape[-2:]
    assert output_size(10, 3, padding=3) == tuple(real) == (14, 14)
    cost = conv_cost(10, 3, depth=1, in_channels=1, padding=3)
    assert cost.output_shape == (1, 14, 14)
    assert cost.notes == ("padding 3 > dilation x (kernel - 1) = 2: in each map, the outer row "
                          "and column on each side see only padding (zeros).",)
    assert str(cost).endswith("\nnote    " + cost.notes[0])
    assert padding_only(10, 3, padding=3) == ((0, 13), (0, 13))


def test_padding_notes_name_the_rows_and_columns():
    assert padding_notes(10, 3, padding=5) == (
        "padding 5 > dilation x (kernel - 1) = 2: in each map, the outer 3 rows and columns on "
        "each side see only padding (zeros).",)
    h, w = padding_notes(10, 3, padding=(4, 3), stride=3)  # the stride skips the last column
    assert h == ("padding 4 > dilation x (kernel - 1) = 2: in each map, the outer row on each "
                 "side see only padding (zeros).")
    assert w == ("padding 3 > dilation x (kernel - 1) = 2: in each map, the first column sees "
                 "only padding (zeros).")
    assert padding_notes(10, 3, padding=(3, 0), padding_mode="reflect") == (
        "padding 3 > dilation x (kernel - 1) = 2: in each map, the outer row on each side see "
        "only padding (the image reflected at its border).",)
    # the taps of a dilated kernel can step over a small input without any large padding
    assert padding_notes(2, 2, padding=1, dilation=3)[0].startswith(
        "dilation 3 > input size 2 (the kernel taps step over the input): in each map, the only "
        "row and column")
    assert padding_notes(224, 3, padding=1) == () == conv_cost(224, 3, depth=1).notes
    assert "note" not in str(conv_cost(224, 3, depth=64, padding=1))


@st.composite
def axis_settings(draw):
    k, d, s = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    p = draw(st.integers(0, d * (k - 1) + 6))
    n = draw(st.integers(max(1, d * (k - 1) + 1 - 2 * p), 20))
    return n, k, s, p, d


@settings(max_examples=200, deadline=None)
@given(axis_settings(), axis_settings())
def test_padding_only_matches_torch(rows, cols):
    # ones convolved with ones, one axis at a time: 0 where every tap falls in the (zero) padding
    def blind(n, k, s, p, d):
        with torch.no_grad():
            out = torch.nn.functional.conv1d(torch.ones(1, 1, n), torch.ones(1, 1, k), stride=s,
                                             padding=p, dilation=d)[0, 0]
        return tuple(int(i) for i in torch.nonzero(out == 0).flatten())

    (nh, kh, sh, ph, dh), (nw, kw, sw, pw, dw) = rows, cols
    blind_rows, blind_cols = blind(*rows), blind(*cols)
    got = padding_only((nh, nw), (kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw))
    assert got == (blind_rows, blind_cols)
    notes = padding_notes((nh, nw), (kh, kw), stride=(sh, sw), padding=(ph, pw),
                          dilation=(dh, dw))
    assert bool(notes) == bool(blind_rows or blind_cols)
    assert all("see only padding (zeros)" in n or "sees only padding (zeros)" in n for n in notes)


def _torch_shape(n, k, s, p, d, mode):
    """Output (H, W) of torch's Conv2d on a (1, 1, n, n + 1) input, or None where torch refuses."""
    try:
        layer = torch.nn.Conv2d(1, 1, k, stride=s, padding=p, dilation=d, padding_mode=mode)
        with torch.no_grad():
            return tuple(layer(torch.zeros(1, 1, n, n + 1)).shape[-2:])
    except (RuntimeError, ValueError):
        return None


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 5), st.integers(1, 3), st.integers(0, 14),
       st.integers(1, 3), st.sampled_from(PADDING_MODES))
def test_conv_cost_matches_torch_or_both_refuse(n, k, s, p, d, mode):
    real = _torch_shape(n, k, s, p, d, mode)
    if real is None:
        with pytest.raises(ConfigError):
            conv_cost((n, n + 1), k, depth=1, in_channels=1, stride=s, padding=p, dilation=d,
                      padding_mode=mode)
        return
    cost = conv_cost((n, n + 1), k, depth=1, in_channels=1, stride=s, padding=p, dilation=d,
                     padding_mode=mode)
    assert cost.output_shape[1:] == real
    assert output_size((n, n + 1), k, stride=s, padding=p, dilation=d,
                       padding_mode=mode) == real


@pytest.mark.parametrize(
    ("mode", "size", "ok", "refused", "match"),
    [
        ("reflect", 4, 3, 4, "reflect padding 4 needs padding < the input size 4 along the height"),
        ("circular", 4, 4, 5, "circular padding 5 needs padding <= the input size 4 along the"),
        ("replicate", 4, 40, None, None),
        ("zeros", 4, 40, None, None),
    ],
)
def test_padding_mode_limits_are_torch_limits(mode, size, ok, refused, match):
    assert _torch_shape(size, 3, 1, ok, 1, mode) == output_size(
        (size, size + 1), 3, padding=ok, padding_mode=mode)
    if refused is not None:
        assert _torch_shape(size, 3, 1, refused, 1, mode) is None
        with pytest.raises(ConfigError, match=match) as err:
            output_size((size, size + 1), 3, padding=refused, padding_mode=mode)
        assert "\n" not in str(err.value) and "'zeros' or 'replicate'" in str(err.value)


def test_error_unknown_padding_mode():
    with pytest.raises(ConfigError, match="padding_mode must be one of zeros, reflect, replicate, "
                       "circular, got 'mirror'"):
        conv_cost(10, 3, depth=1, padding_mode="mirror")


@pytest.mark.parametrize("bad", ["full", 1.5, (1, 2, 3), True])
def test_error_bad_padding_value(bad):
    with pytest.raises(ConfigError):
        output_size(10, 3, padding=bad)


def test_conv_cost_matches_torch_layer():
    cost = conv_cost(224, 3, depth=64, in_channels=3, stride=2, padding=1)
    layer = torch.nn.Conv2d(3, 64, 3, stride=2, padding=1)
    with torch.no_grad():
        out = layer(torch.zeros(1, 3, 224, 224))
    assert cost.output_shape == tuple(out.shape[1:])
    assert cost.params == sum(p.numel() for p in layer.parameters())
    assert cost.macs == 64 * 112 * 112 * 3 * 9
    assert cost.output_bytes == out.numel() * 4
    assert cost.formulas[0] == "(224 + 2*1 - 3) // 2 + 1 = 112"
    assert "MACs" in str(cost)


def test_conv_cost_groups():
    cost = conv_cost(56, 3, depth=64, in_channels=64, groups=64, padding=1)
    layer = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64)
    assert cost.params == sum(p.numel() for p in layer.parameters())
    with pytest.raises(ConfigError, match="groups 3 must divide"):
        conv_cost(56, 3, depth=64, in_channels=64, groups=3)


def test_rf_step_chain_vgg_block():
    rf = RFStep(1, 1, 0.5)
    for _ in range(2):
        rf = rf_step(rf, 3, padding=1)
    rf = rf_step(rf, 2, stride=2)
    assert (rf.size, rf.jump) == (6, 2)


# ------------------------------------------------------------------------- memory guards
def test_format_bytes():
    from featuremap.arithmetic import format_bytes

    assert [format_bytes(n) for n in (0, 999, 1000, 12 * 10**9, 4 * 10**9, 999_600, 3e20)] == \
        ["0 B", "999 B", "1.00 kB", "12.0 GB", "4.00 GB", "1.00 MB", "300 EB"]
    assert format_bytes(1e40) == "1e+40 bytes"


def test_check_size_passes_below_and_refuses_above_the_limit():
    from featuremap.arithmetic import check_size

    assert check_size(100, what="x", limit=100) == 100
    with pytest.raises(ConfigError) as info:
        check_size(12 * 10**9, what="the 3000 filters of 1001 x 1001", fix="use fewer filters",
                   limit=4 * 10**9)
    assert str(info.value) == ("the 3000 filters of 1001 x 1001 would take 12.0 GB (limit "
                               "4.00 GB); use fewer filters.")


def test_default_limit_is_a_quarter_of_memory_and_the_environment_changes_it(monkeypatch):
    import os

    from featuremap.arithmetic import MEMORY_LIMIT_ENV, check_size, memory_limit

    monkeypatch.delenv(MEMORY_LIMIT_ENV, raising=False)
    limit, reason = memory_limit()
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < limit <= physical / 4 and reason == "a quarter of this machine's memory"
    with pytest.raises(ConfigError, match=r"would take 1.00 EB \(limit .* a quarter of this "
                                          r"machine's memory; FEATUREMAP_MEMORY_LIMIT changes"):
        check_size(10**18, what="it")
    for setting, value in [("2GB", 2e9), ("512 MiB", 512 * 2**20), ("1e9", 1e9),
                           ("1.5g", 1.5e9), ("none", float("inf"))]:
        monkeypatch.setenv(MEMORY_LIMIT_ENV, setting)
        assert memory_limit() == (value, f"set by {MEMORY_LIMIT_ENV}")
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1kB")
    with pytest.raises(ConfigError, match="set by FEATUREMAP_MEMORY_LIMIT"):
        check_size(2000, what="it")
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(ConfigError, match="is not a size; use e.g. 8GB"):
        memory_limit()

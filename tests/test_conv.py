from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from featuremap.arithmetic import conv_cost, padding_only, resolve_padding
from featuremap.conv import conv2d, explain
from featuremap.errors import ConfigError

TORCH_MODES = {"reflect": "reflect", "replicate": "replicate", "circular": "circular"}


def torch_conv(x, w, b, *, stride, padding, dilation, groups, padding_mode):
    """The oracle: F.pad for the padding, then F.conv2d with no padding."""
    (pt, pb), (pl, pr) = resolve_padding(
        padding, x.shape[-2:], w.shape[-2:], stride=stride, dilation=dilation
    )
    tx = torch.from_numpy(x)
    if padding_mode == "zeros":
        tx = F.pad(tx, (pl, pr, pt, pb))
    else:
        tx = F.pad(tx, (pl, pr, pt, pb), mode=TORCH_MODES[padding_mode])
    tb = None if b is None else torch.from_numpy(b)
    out = F.conv2d(tx, torch.from_numpy(w), tb, stride=stride, dilation=dilation, groups=groups)
    return out.numpy()


@st.composite
def conv_case(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    dg = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dil = draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    h = draw(st.integers(dil * (kh - 1) + 1, 16))
    w = draw(st.integers(dil * (kw - 1) + 1, 16))
    # up to 3 beyond dil * (k - 1), where the outer values see only padding
    limit_h = min(dil * (kh - 1) + 3, h - 1 if mode == "reflect" else h)
    limit_w = min(dil * (kw - 1) + 3, w - 1 if mode == "reflect" else w)
    padding = draw(st.one_of(
        st.tuples(st.integers(0, limit_h), st.integers(0, limit_w)),
        st.just("valid"),
        st.just("same") if mode == "zeros" else st.just("valid"),
    ))
    n = draw(st.integers(1, 2))
    batched = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return dict(groups=groups, cg=cg, dg=dg, k=(kh, kw), dilation=dil, stride=stride,
                mode=mode, hw=(h, w), padding=padding, n=n, batched=batched, seed=seed,
                bias=draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(conv_case())
def test_conv2d_matches_torch(case):
    rng = np.random.default_rng(case["seed"])
    c, d = case["groups"] * case["cg"], case["groups"] * case["dg"]
    x = rng.standard_normal((case["n"], c, *case["hw"])).astype(np.float32)
    w = rng.standard_normal((d, case["cg"], *case["k"])).astype(np.float32)
    b = rng.standard_normal(d).astype(np.float32) if case["bias"] else None
    opts = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=case["groups"], padding_mode=case["mode"])
    expected = torch_conv(x, w, b, **opts)
    got = conv2d(x if case["batched"] else x[0], w, b, **opts)
    if not case["batched"]:
        expected = expected[0]
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    scale = np.abs(expected).max() + 1e-6
    assert np.abs(got - expected).max() <= 1e-5 * scale + 1e-6


@st.composite
def any_case(draw):
    """Any setting, torch-accepted or not: small inputs, padding up to far beyond the kernel."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    dil = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    hw = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    padding = draw(st.one_of(
        st.tuples(st.integers(0, dil[0] * (kh - 1) + 5), st.integers(0, dil[1] * (kw - 1) + 5)),
        st.integers(0, 12),
        st.just("valid"),
        st.just("same") if stride == (1, 1) else st.just("valid"),  # torch: 'same' at stride 1
    ))
    return dict(groups=groups, cg=draw(st.integers(1, 2)), dg=draw(st.integers(1, 2)),
                k=(kh, kw), dilation=dil, stride=stride, mode=mode, hw=hw, padding=padding,
                n=draw(st.integers(1, 2)), bias=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)))


@settings(max_examples=300, deadline=None)
@given(any_case())
def test_conv2d_equals_torch_module_or_both_refuse(case):
    """nn.Conv2d is the oracle (it pads with F.pad for the non-zero modes): where it computes,
    conv2d gives the same values and conv_cost the same shape; where it refuses, so do they."""
    rng = np.random.default_rng(case["seed"])
    c, d = case["groups"] * case["cg"], case["groups"] * case["dg"]
    x = rng.standard_normal((case["n"], c, *case["hw"])).astype(np.float32)
    layer = torch.nn.Conv2d(c, d, case["k"], stride=case["stride"], padding=case["padding"],
                            dilation=case["dilation"], groups=case["groups"], bias=case["bias"],
                            padding_mode=case["mode"])
    w = layer.weight.detach().numpy()
    b = layer.bias.detach().numpy() if case["bias"] else None
    opts = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=case["groups"], padding_mode=case["mode"])
    cost_opts = dict(depth=d, in_channels=c, stride=case["stride"], padding=case["padding"],
                     dilation=case["dilation"], groups=case["groups"], padding_mode=case["mode"])
    try:
        with torch.no_grad():
            expected = layer(torch.from_numpy(x)).numpy()
    except RuntimeError:
        with pytest.raises(ConfigError) as err:
            conv2d(x, w, b, **opts)
        assert "\n" not in str(err.value)
        with pytest.raises(ConfigError):
            conv_cost(case["hw"], case["k"], **cost_opts)
        return
    got = conv2d(x, w, b, **opts)
    assert got.shape == expected.shape
    scale = np.abs(expected).max() + 1e-6
    assert np.abs(got - expected).max() <= 1e-5 * scale + 1e-6
    assert conv_cost(case["hw"], case["k"], **cost_opts).output_shape == expected.shape[1:]


def test_padding_beyond_the_kernel_equals_torch_and_outer_values_see_only_padding(rng):
    # once refused: padding 5 > dilation * (kernel - 1) = 2
    x = rng.standard_normal((2, 7, 9)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = np.array([0.5, -1.0, 2.0], np.float32)
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                        padding=5).numpy()
    got = conv2d(x, w, b, padding=5)
    assert got.shape == expected.shape == (3, 15, 17)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    rows, cols = padding_only((7, 9), 3, padding=5)
    assert rows == (0, 1, 2, 12, 13, 14) and cols == (0, 1, 2, 14, 15, 16)
    for r in rows:  # only the bias is left where every tap falls in the zeros
        np.testing.assert_array_equal(got[:, r], np.broadcast_to(b[:, None], got[:, r].shape))
    for q in cols:
        np.testing.assert_array_equal(got[:, :, q], np.broadcast_to(b[:, None], got[:, :, q].shape))
    e = explain(x, w, b, at=(1, 0, 4), padding=5)
    assert e.padded.all() and e.value == -1.0
    assert "every kernel tap falls in the padding (zeros)" in str(e)
    assert "every kernel tap" not in str(explain(x, w, b, at=(1, 3, 4), padding=5))


@pytest.mark.parametrize(
    ("mode", "padding", "match"),
    [
        ("reflect", 5, "reflect padding 5 needs padding < the input size 5 along the height"),
        ("reflect", (0, 6), "reflect padding 6 needs padding < the input size 6 along the width"),
        ("circular", 6, "circular padding 6 needs padding <= the input size 5 along the height"),
    ],
)
def test_padding_torch_refuses_for_its_mode_is_refused(mode, padding, match):
    x = np.ones((1, 5, 6), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    layer = torch.nn.Conv2d(1, 1, 3, padding=padding, padding_mode=mode)
    with pytest.raises(RuntimeError):
        layer(torch.from_numpy(x)[None])
    with pytest.raises(ConfigError, match=match):
        conv2d(x, w, padding=padding, padding_mode=mode)
    smaller = tuple(max(p - 1, 0) for p in (padding if isinstance(padding, tuple) else
                                               (padding, padding)))
    with torch.no_grad():
        expected = torch.nn.Conv2d(1, 1, 3, padding=smaller, padding_mode=mode, bias=False)
        expected.weight.fill_(1.0)
        np.testing.assert_allclose(conv2d(x, w, padding=smaller, padding_mode=mode),
                                   expected(torch.from_numpy(x)[None])[0].numpy(), rtol=1e-5)


def test_conv2d_matches_torch_module_with_padding_modes(rng):
    x = rng.standard_normal((2, 4, 12, 9)).astype(np.float32)
    for mode in ["zeros", "reflect", "replicate", "circular"]:
        layer = torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode=mode)
        w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
        with torch.no_grad():
            expected = layer(torch.from_numpy(x)).numpy()
        got = conv2d(x, w, b, stride=2, padding=1, padding_mode=mode)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_conv2d_same_matches_torch_same(rng):
    x = rng.standard_normal((1, 2, 10, 11)).astype(np.float32)
    w = rng.standard_normal((3, 2, 4, 3)).astype(np.float32)
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding="same").numpy()
    np.testing.assert_allclose(conv2d(x, w, padding="same"), expected, rtol=1e-5, atol=1e-5)


def test_conv2d_large_input_uses_tap_path(rng, monkeypatch):
    import featuremap.conv as conv

    monkeypatch.setattr(conv, "IM2COL_BYTES", 0)
    x = rng.standard_normal((2, 6, 15, 13)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1, groups=2).numpy()
    np.testing.assert_allclose(conv.conv2d(x, w, padding=1, groups=2), expected,
                               rtol=1e-5, atol=1e-5)


def test_depth_sets_number_of_maps(rng):
    x = rng.random((3, 20, 20), dtype=np.float32)
    for depth in (1, 4, 16):
        assert conv2d(x, np.ones((depth, 3, 3, 3)), padding=1).shape == (depth, 20, 20)


def test_stride_shrinks_maps(rng):
    x = rng.random((1, 32, 32), dtype=np.float32)
    shapes = [conv2d(x, np.ones((1, 1, 3, 3)), stride=s, padding=1).shape for s in (1, 2, 4)]
    assert shapes == [(1, 32, 32), (1, 16, 16), (1, 8, 8)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(stride=0), "stride must be a positive integer, got 0"),
        (dict(stride=-1), "stride must be a positive integer, got -1"),
        (dict(padding=-1), "padding must be >= 0"),
        (dict(padding="full"), "padding must be an integer, a pair, 'same' or 'valid'"),
        (dict(padding_mode="mirror"), "padding_mode must be one of"),
        (dict(groups=2), "groups 2 must divide"),
        (dict(dilation=0), "dilation must be a positive integer"),
    ],
)
def test_conv2d_bad_settings(rng, kwargs, match):
    x = rng.random((3, 8, 8), dtype=np.float32)
    with pytest.raises(ConfigError, match=match):
        conv2d(x, np.ones((4, 3, 3, 3)), **kwargs)


def test_conv2d_bad_shapes(rng):
    with pytest.raises(ConfigError, match="input must be"):
        conv2d(np.ones((8, 8)), np.ones((1, 1, 3, 3)))
    with pytest.raises(ConfigError, match="expects 2 input channels"):
        conv2d(np.ones((3, 8, 8)), np.ones((1, 2, 3, 3)))
    with pytest.raises(ConfigError, match="bias must have shape"):
        conv2d(np.ones((1, 8, 8)), np.ones((2, 1, 3, 3)), np.ones(3))
    with pytest.raises(ConfigError, match="does not fit input 8"):
        conv2d(np.ones((1, 8, 8)), np.ones((1, 1, 9, 9)))
    with pytest.raises(ConfigError, match="reflect padding 3 needs padding < the input size 3"):
        conv2d(np.ones((1, 3, 3)), np.ones((1, 1, 7, 7)), padding=3, padding_mode="reflect")


@settings(max_examples=100, deadline=None)
@given(conv_case(), st.data())
def test_explain_sums_to_conv_value(case, data):
    rng = np.random.default_rng(case["seed"])
    c, d = case["groups"] * case["cg"], case["groups"] * case["dg"]
    x = rng.standard_normal((c, *case["hw"])).astype(np.float32)
    w = rng.standard_normal((d, case["cg"], *case["k"])).astype(np.float32)
    b = rng.standard_normal(d).astype(np.float32) if case["bias"] else None
    opts = dict(stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
                groups=case["groups"], padding_mode=case["mode"])
    maps = conv2d(x, w, b, **opts)
    at = tuple(data.draw(st.integers(0, n - 1)) for n in maps.shape)
    e = explain(x, w, b, at=at, **opts)
    assert e.value == pytest.approx(float(maps[at]), rel=1e-4, abs=1e-4)
    np.testing.assert_allclose(e.products, e.patch * e.kernel)
    assert e.patch.shape == (case["cg"], *case["k"])
    assert len(e.channels) == case["cg"]


def test_explain_marks_padding_and_prints():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    w = np.ones((1, 1, 3, 3), np.float32)
    e = explain(x, w, np.array([0.5], np.float32), at=(0, 0, 0), padding=1)
    assert e.padded[0].all() and e.padded[:, 0].all() and not e.padded[1:, 1:].any()
    assert e.patch[0, 0, 0] == 0 and e.patch[0, 1, 1] == 0 and e.patch[0, 2, 2] == 5
    assert e.value == 0 + 1 + 4 + 5 + 0.5
    text = str(e)
    assert "[0]" in text and "= 10.5" in text and "rows -1..1" in text


def test_explain_reflect_padding_cells_hold_reflected_values():
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    e = explain(x, np.ones((1, 1, 3, 3)), at=(0, 0, 0), padding=1, padding_mode="reflect")
    assert e.patch[0, 0, 0] == x[0, 1, 1]
    assert e.padded[0, 0]


@pytest.mark.parametrize("at", [(1, 0, 0), (0, 4, 0), (0, 0, -1), (0, 0)])
def test_explain_at_outside(at):
    x = np.ones((1, 4, 4), np.float32)
    with pytest.raises(ConfigError, match="at"):
        explain(x, np.ones((1, 1, 3, 3)), at=at, padding=1)


def test_maps_too_large_are_refused_before_computing(refused_early, monkeypatch):
    x = np.zeros((1, 500, 500), np.float32)
    w = np.ones((64, 1, 3, 3), np.float32)
    monkeypatch.setenv("FEATUREMAP_MEMORY_LIMIT", "10MB")
    refused_early(lambda: conv2d(x, w), r"computing 64 feature maps of 498 x 498 would take "
                                        r"127 MB \(limit 10.0 MB")
    batch = np.zeros((40, 1, 250, 250), np.float32)
    refused_early(lambda: conv2d(batch, w[:8], stride=2),
                  "8 feature maps of 124 x 124 for 40 images")
    assert conv2d(x[:, :50, :50], w).shape == (64, 48, 48)  # small work still runs


def test_huge_padding_is_refused_before_padding(refused_early):
    x = np.zeros((1, 100, 100), np.float32)
    w = np.ones((1, 1, 3, 3), np.float32)
    refused_early(lambda: conv2d(x, w, padding=200_000, dilation=100_000, stride=1000),
                  "1 feature map of 201 x 201 from the input padded to 400100 x 400100")
    refused_early(lambda: explain(x, w, at=(0, 0, 0), padding=200_000, dilation=100_000),
                  r"padding the 1 x 100 x 100 input to 400100 x 400100 would take 640 GB")

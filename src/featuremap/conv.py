"""The transparent convolution engine (NumPy).

``conv2d`` computes exactly what ``torch.nn.functional.conv2d`` computes (cross-correlation, as
every deep-learning framework does: kernels are not flipped), with stride, padding (zeros,
reflect, replicate, circular; any amount torch accepts), dilation, groups and any depth.
``explain`` shows the products behind one value of the output.

The implementation is vectorised: the input windows are gathered into columns (im2col), band by
band into one reused buffer, and each band is multiplied by the filters as one matrix product;
only 1x1 kernels, or an output row larger than ``IM2COL_BYTES``, are multiplied tap by tap and
accumulated instead. No Python loop runs over pixels.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from featuremap.arithmetic import Padding, Pair, output_size, pair, resolve_padding
from featuremap.budget import check_size
from featuremap.errors import ConfigError

__all__ = ["Explanation", "conv2d", "explain", "pad"]

PADDING_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge",
                 "circular": "wrap"}  # torch's names -> np.pad's


def _as_input(input: np.ndarray) -> tuple[np.ndarray, bool]:
    """Return a float32 ``(N, C, H, W)`` array and whether the input had no batch axis."""
    x = np.asarray(input)
    if x.ndim not in (3, 4):
        raise ConfigError(
            f"input must be (C, H, W) or (N, C, H, W), got an array of shape {tuple(x.shape)}."
        )
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise ConfigError(f"input must hold real numbers, got dtype {x.dtype}.")
    x = x.astype(np.float32, copy=False)
    return (x[None], True) if x.ndim == 3 else (x, False)


def _check_weight(weight: np.ndarray, bias: np.ndarray | None, channels: int,
                  groups: int) -> tuple[np.ndarray, np.ndarray | None]:
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 4:
        raise ConfigError(
            f"weight must be (D, C // groups, kH, kW), got an array of shape {tuple(w.shape)}."
        )
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
        raise ConfigError(f"groups must be a positive integer, got {groups!r}.")
    if channels % groups or w.shape[0] % groups:
        raise ConfigError(
            f"groups {groups} must divide both the input channels ({channels}) and the depth "
            f"({w.shape[0]})."
        )
    if w.shape[1] != channels // groups:
        raise ConfigError(
            f"weight of shape {tuple(w.shape)} expects {w.shape[1] * groups} input channels "
            f"(with groups={groups}), but the input has {channels}."
        )
    if bias is None:
        return w, None
    b = np.asarray(bias, dtype=np.float32)
    if b.shape != (w.shape[0],):
        raise ConfigError(f"bias must have shape ({w.shape[0]},), got {tuple(b.shape)}.")
    return w, b


def _resolve(shape: tuple[int, int], weight: np.ndarray, stride, padding, dilation,
             padding_mode: str) -> tuple[Pair, Pair, Padding, Pair]:
    k = (int(weight.shape[2]), int(weight.shape[3]))
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    pads = resolve_padding(padding, shape, k, stride=s, dilation=d, padding_mode=padding_mode)
    out_hw = output_size(shape, k, stride=s, padding=padding, dilation=d)  # with formula
    return s, d, pads, out_hw


def pad(input: np.ndarray, padding: Padding, *, mode: str = "zeros") -> np.ndarray:
    """Pad the last two axes by ``((top, bottom), (left, right))`` with a torch padding mode."""
    width = [(0, 0)] * (input.ndim - 2) + [tuple(padding[0]), tuple(padding[1])]
    if all(p == (0, 0) for p in width):
        return input
    return np.pad(input, width, mode=PADDING_MODES[mode])


def conv2d(
    input: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> np.ndarray:
    """Compute feature maps: slide every filter over the input (cross-correlation, as torch).

    Args:
        input: ``(C, H, W)`` or ``(N, C, H, W)``, any real dtype (computed in float32).
        weight: ``(D, C // groups, kH, kW)``; D, the depth, is the number of feature maps.
        bias: ``(D,)`` or None.
        stride: step between filter positions, int or ``(sh, sw)``.
        padding: int, ``(ph, pw)``, ``'same'`` or ``'valid'`` (see ``featuremap.arithmetic``).
            Padding larger than ``dilation * (kernel - 1)`` is computed as torch computes it:
            the outer values then see only padding
            (:func:`featuremap.arithmetic.padding_notes` names them).
        dilation: spacing between kernel taps.
        groups: input channels and filters are split into this many independent groups.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.

    Returns:
        float32 feature maps ``(D, H', W')``, or ``(N, D, H', W')`` for a batched input.

    Raises:
        ConfigError: impossible shapes or settings, with the arithmetic that fails; what torch
            refuses (``'reflect'`` padding >= the input size, ``'circular'`` padding > it); maps
            too large for memory (refused before anything is computed).

    Example:
        >>> x = np.ones((1, 5, 5), np.float32); w = np.ones((2, 1, 3, 3), np.float32)
        >>> conv2d(x, w, padding=1).shape
        (2, 5, 5)
    """
    x, unbatched = _as_input(input)
    n, c, h, wd = x.shape
    w, b = _check_weight(weight, bias, c, groups)
    s, d, pads, out_hw = _resolve((h, wd), w, stride, padding, dilation, padding_mode)
    _check_memory(x.shape, w.shape[0], pads, s, out_hw)
    xp = pad(x, pads, mode=padding_mode)
    out = _correlate(xp, w, s, d, groups)
    if b is not None:
        out += b[None, :, None, None]
    return out[0] if unbatched else out


def _padded_bytes(shape: tuple[int, ...], pads: Padding) -> int:
    """Bytes of the padded float32 copy of an input ``(..., H, W)`` (0 without padding)."""
    if all(p == (0, 0) for p in pads):
        return 0
    lead = math.prod(shape[:-2])
    return 4 * lead * (shape[-2] + sum(pads[0])) * (shape[-1] + sum(pads[1]))


def _check_memory(shape: tuple[int, int, int, int], depth: int, pads: Padding, stride: Pair,
                  out_hw: Pair) -> None:
    """Refuse a convolution whose working memory would not fit, before computing it.

    The peak holds the padded input (twice with a stride: its phases are copied), the output
    and, tap by tap or for a band of images, one more output-sized product.
    """
    n, oh, ow = shape[0], *out_hw
    padded = _padded_bytes(shape, pads) * (2 if stride != (1, 1) else 1)
    need = padded + 2 * 4 * n * depth * oh * ow
    images = f" for {n} images" if n > 1 else ""
    maps = f"{depth} feature map{'s' if depth != 1 else ''}"
    source = ""
    if padded > 4 * n * depth * oh * ow:  # the padded input is what does not fit: say so
        source = f" from the input padded to {shape[2] + sum(pads[0])} x {shape[3] + sum(pads[1])}"
    check_size(need, what=f"computing {maps} of {oh} x {ow}{images}{source}",
               fix="use a smaller image, fewer filters, a larger stride or less padding")


IM2COL_BYTES = 8 * 2**20  # largest im2col buffer, kept per thread and reused band after band


def _correlate(xp: np.ndarray, w: np.ndarray, stride: tuple[int, int],
               dilation: tuple[int, int], groups: int) -> np.ndarray:
    """Valid cross-correlation of a padded ``(N, C, H, W)`` input by matrix products.

    The input windows are gathered as columns (im2col) into one buffer of at most
    ``IM2COL_BYTES``, a band at a time (several images, or some output rows of one image), and
    each band is multiplied by the filters; the buffer is reused, so memory stays small and warm.
    When even one output row would not fit (or the kernel is 1x1, whose one tap is the input
    itself), the ``kH * kW`` shifted inputs are multiplied by one kernel tap each instead, and
    accumulated.
    """
    n, c, h, wd = xp.shape
    depth, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh = (h - dh * (kh - 1) - 1) // sh + 1
    ow = (wd - dw * (kw - 1) - 1) // sw + 1
    tap = _tap_views(xp, (kh, kw), stride, dilation, ow)
    row_bytes = 4 * c * kh * kw * ow
    if row_bytes > IM2COL_BYTES or kh * kw == 1:
        return _tap_products(tap, w, groups, n, oh, ow)
    per_image = row_bytes * oh
    images = max(1, IM2COL_BYTES // per_image) if per_image <= IM2COL_BYTES else 1
    rows = oh if per_image <= IM2COL_BYTES else IM2COL_BYTES // row_bytes
    buf = _workspace(min(images, n) * c * kh * kw * rows * ow)
    out = np.empty((n, depth, oh * ow), np.float32)
    for b0 in range(0, n, images):
        b1 = min(n, b0 + images)
        for r0 in range(0, oh, rows):
            r1 = min(oh, r0 + rows)
            size = (b1 - b0) * c * kh * kw * (r1 - r0) * ow
            cols = buf[:size].reshape(c, kh, kw, b1 - b0, r1 - r0, ow)
            for i in range(kh):
                for j in range(kw):
                    cols[:, i, j] = tap(i, j, b0, b1, r0, r1).transpose(1, 0, 2, 3)
            _multiply(w, cols, groups, out[b0:b1, :, r0 * ow: r1 * ow])
    return out.reshape(n, depth, oh, ow)


_WORKSPACE = threading.local()


def _workspace(size: int) -> np.ndarray:
    """A float32 scratch buffer of ``size`` values, kept per thread from call to call (at most
    ``IM2COL_BYTES``): fresh memory costs page faults, which here measured as much as the
    gathers and up to half of a layer's time once other allocations (torch's) came between."""
    buf = getattr(_WORKSPACE, "buf", None)
    if buf is None or buf.size < size:
        buf = _WORKSPACE.buf = np.empty(size, np.float32)
    return buf[:size]


def _tap_views(xp: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
               dilation: tuple[int, int], ow: int) -> Callable[..., np.ndarray]:
    """``tap(i, j, b0, b1, r0, r1)``: the input under kernel tap (i, j) for images b0:b1 and
    output rows r0:r1, ``(b1 - b0, C, r1 - r0, OW)``.

    With a stride, the input is first split into its ``sh * sw`` phases (every sh-th row from
    row a, every sw-th column from column b), each made contiguous once: every tap is then a
    plain window of one phase, and the gathers copy whole rows instead of every other value.
    """
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    taps = Counter((i * dh % sh, j * dw % sw) for i in range(kh) for j in range(kw))
    phases: dict[tuple[int, int], np.ndarray] = {}

    def tap(i: int, j: int, b0: int, b1: int, r0: int, r1: int) -> np.ndarray:
        qi, a = divmod(i * dh, sh)
        qj, b = divmod(j * dw, sw)
        if (a, b) not in phases:
            phase = xp[:, :, a::sh, b::sw]
            # the copy (fresh memory) pays for itself when 5 taps or more read the phase
            phases[a, b] = np.ascontiguousarray(phase) if taps[a, b] >= 5 else phase
        return phases[a, b][b0:b1, :, qi + r0: qi + r1, qj: qj + ow]

    return tap


def _multiply(w: np.ndarray, cols: np.ndarray, groups: int, out: np.ndarray) -> None:
    """Filters ``(D, Cg, kH, kW)`` times columns ``(C, kH, kW, M, R, OW)`` of M images into
    ``out`` ``(M, D, R * OW)``: one plain 2-D product when groups == 1."""
    depth, m = w.shape[0], cols.shape[3]
    if groups == 1:
        w2, c2 = w.reshape(depth, -1), cols.reshape(w[0].size, -1)
        if m == 1:
            np.matmul(w2, c2, out=out[0])
        else:  # images side by side: one wide product, then back to (M, D, R * OW)
            out[...] = np.matmul(w2, c2).reshape(depth, m, -1).transpose(1, 0, 2)
        return
    cg = cols.reshape(groups, w[0].size, m, -1).transpose(2, 0, 1, 3)  # (M, G, K, R * OW)
    np.matmul(w.reshape(groups, depth // groups, -1), cg,
              out=out.reshape(m, groups, depth // groups, -1))


def _tap_products(tap: Callable[..., np.ndarray], w: np.ndarray, groups: int, n: int,
                  oh: int, ow: int) -> np.ndarray:
    """Sum over the kernel taps of (filters at that tap) x (input under that tap)."""
    depth, cg, kh, kw = w.shape
    wg = w.reshape(groups, depth // groups, cg, kh, kw)
    out = product = None
    for i in range(kh):
        for j in range(kw):
            x = tap(i, j, 0, n, 0, oh).reshape(n, groups, cg, oh * ow)
            if out is None:
                out = np.matmul(wg[:, :, :, i, j], x)
            else:  # one buffer for every later tap's product
                product = np.matmul(wg[:, :, :, i, j], x, out=product)
                out += product
    return out.reshape(n, depth, oh, ow)


@dataclass(frozen=True)
class Explanation:
    """The arithmetic behind one value of a feature map.

    Attributes:
        at: ``(d, y, x)``: map (filter) index and position in the map.
        channels: the input channels the filter sees (all of its group).
        rows, cols: input coordinates of each kernel tap (may lie in the padding: < 0 or >= H/W).
        patch: ``(C_g, kH, kW)`` input values under the kernel, padding cells included.
        padded: ``(kH, kW)`` bool, True where the tap falls in the padding.
        kernel: ``(C_g, kH, kW)`` the filter's weights.
        products: ``patch * kernel``.
        bias: the filter's bias (0.0 when there is none).
        value: ``products.sum() + bias``, equal to the feature map at ``at``.
    """

    at: tuple[int, int, int]
    channels: tuple[int, ...]
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    patch: np.ndarray = field(repr=False)
    padded: np.ndarray = field(repr=False)
    kernel: np.ndarray = field(repr=False)
    products: np.ndarray = field(repr=False)
    bias: float
    value: float
    settings: dict = field(default_factory=dict)
    channel_names: tuple[str, ...] = ()
    map_name: str = ""
    context: tuple[str, ...] = ()  # lines printed last: where the value sits in a network

    def __str__(self) -> str:
        return format_explanation(self)

    def to_dict(self) -> dict:
        """JSON-ready: position, settings, patch, kernel, products (nested lists), sums."""
        settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.settings.items()}
        return {"at": list(self.at), "map_name": self.map_name, "channels": list(self.channels),
                "channel_names": list(self.channel_names), "rows": list(self.rows),
                "cols": list(self.cols), "patch": self.patch.tolist(),
                "padded": self.padded.tolist(), "kernel": self.kernel.tolist(),
                "products": self.products.tolist(), "contributions":
                self.contributions().tolist(), "bias": self.bias, "value": self.value,
                "settings": settings, "context": list(self.context)}

    def contributions(self) -> np.ndarray:
        """``(C_g,)`` float64: the sum of products of each input channel."""
        return self.products.reshape(len(self.channels), -1).sum(1, dtype=np.float64)

    def top_channels(self, count: int) -> list[int]:
        """Indices into ``channels``: all in order when there are at most ``count``, else the
        ``count`` with the largest absolute contribution, largest first."""
        if len(self.channels) <= count:
            return list(range(len(self.channels)))
        return [int(k) for k in np.argsort(-np.abs(self.contributions()), kind="stable")[:count]]


def explain(
    input: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    at: tuple[int, int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    map_name: str = "",
    channel_names: tuple[str, ...] = (),
) -> Explanation:
    """Show the patch x kernel products whose sum is one value of ``conv2d``'s output.

    Args:
        input: ``(C, H, W)`` (or ``(1, C, H, W)``).
        weight, bias, stride, padding, dilation, groups, padding_mode: as in :func:`conv2d`.
        at: ``(d, y, x)``: which map and which position in it.
        map_name, channel_names: optional labels for the printed form.

    Returns:
        An :class:`Explanation`; ``print()`` it for the arithmetic as text.

    Raises:
        ConfigError: bad settings, or ``at`` outside the output (the message gives its shape).

    Example:
        >>> x = np.arange(9, dtype=np.float32).reshape(1, 3, 3)
        >>> explain(x, np.ones((1, 1, 3, 3)), at=(0, 0, 0)).value
        36.0
    """
    x, _ = _as_input(input)
    if x.shape[0] != 1:
        raise ConfigError(f"explain takes one image (C, H, W), got a batch of {x.shape[0]}.")
    c, h, wd = x.shape[1:]
    w, b = _check_weight(weight, bias, c, groups)
    s, d, pads, out_hw = _resolve((h, wd), w, stride, padding, dilation, padding_mode)
    dd, y, xx = _check_at(at, (w.shape[0], *out_hw))
    kh, kw = w.shape[2:]
    rows = [y * s[0] - pads[0][0] + i * d[0] for i in range(kh)]
    cols = [xx * s[1] - pads[1][0] + j * d[1] for j in range(kw)]
    cg = w.shape[1]
    group = dd // (w.shape[0] // groups)
    channels = tuple(range(group * cg, (group + 1) * cg))
    c_h_w = (c, h, wd)
    check_size(_padded_bytes(c_h_w, pads), what=f"padding the {c} x {h} x {wd} input to "
               f"{h + sum(pads[0])} x {wd + sum(pads[1])}", fix="use less padding")
    xp = pad(x[0], pads, mode=padding_mode)
    patch = xp[np.ix_(channels, [r + pads[0][0] for r in rows], [q + pads[1][0] for q in cols])]
    padded = np.logical_or.outer([r < 0 or r >= h for r in rows], [q < 0 or q >= wd for q in cols])
    kernel = w[dd]
    products = patch * kernel
    bias_value = float(b[dd]) if b is not None else 0.0
    settings = {"stride": s, "padding": pads, "dilation": d, "groups": groups,
                "padding_mode": padding_mode, "output_shape": (w.shape[0], *out_hw)}
    return Explanation(
        at=(dd, y, xx), channels=channels, rows=tuple(rows), cols=tuple(cols),
        patch=patch, padded=padded, kernel=kernel, products=products, bias=bias_value,
        value=float(products.sum(dtype=np.float64) + bias_value), settings=settings,
        channel_names=tuple(channel_names), map_name=map_name,
    )


def _check_at(at, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in at)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3:
        raise ConfigError(f"at must be (map, y, x), three integers, got {at!r}.")
    names = ("map", "y", "x")
    for v, n, name in zip(values, shape, names):
        if not 0 <= v < n:
            raise ConfigError(
                f"at {values} is outside the output of shape {shape} (depth x height x width): "
                f"{name} must be in 0..{n - 1}."
            )
    return values


def _fmt_grid(a: np.ndarray, mark: np.ndarray | None = None, width: int = 7) -> list[str]:
    lines = []
    for r in range(a.shape[0]):
        cells = []
        for q in range(a.shape[1]):
            text = f"{a[r, q] + 0.0:.3g}"  # + 0.0: no '-0' for products like 0 x -1
            if mark is not None and mark[r, q]:
                text = f"[{text}]"
            cells.append(text.rjust(width))
        lines.append(" ".join(cells))
    return lines


_TEXT_WIDTH = 160  # wider side-by-side blocks are printed one under another


def format_explanation(e: Explanation, *, max_channels: int = 8) -> str:
    """The printed form of an :class:`Explanation`: patch, kernel and products per channel.

    With more than ``max_channels`` input channels, the channels that contribute most (largest
    absolute sum of products) come first and the rest are summed in one line.
    """
    st = e.settings
    (pt, pb), (pl, pr) = st["padding"]
    d, y, x = e.at
    name = f" ({e.map_name})" if e.map_name else ""
    head = [
        f"map {d}{name}, row {y}, col {x} of an output {' x '.join(map(str, st['output_shape']))}",
        f"stride {st['stride']}, padding top/bottom {pt}/{pb} left/right {pl}/{pr} "
        f"({st['padding_mode']}), dilation {st['dilation']}, groups {st['groups']}",
        f"input rows {e.rows[0]}..{e.rows[-1]}, cols {e.cols[0]}..{e.cols[-1]}"
        + ("   [v] = padding cell" if e.padded.any() else ""),
    ]
    if e.padded.all():
        head.append(f"every kernel tap falls in the padding ({st['padding_mode']}): this value "
                    "sees no pixel of the input")
    width = max(7, max(len(f"[{v:.3g}]") for v in np.concatenate(
        [e.patch.ravel(), e.kernel.ravel(), e.products.ravel()])) + 1)
    body = []
    sums = e.contributions()
    order = e.top_channels(max_channels)
    if len(e.channels) > max_channels:
        body.append(f"\n{len(e.channels)} input channels; the {max_channels} that contribute "
                    "most are shown")
    for k in order:
        ch = e.channels[k]
        label = e.channel_names[ch] if ch < len(e.channel_names) else f"channel {ch}"
        body.append(f"\n{label}: patch x kernel = products (sum {sums[k]:.6g})")
        cols = [_fmt_grid(e.patch[k], e.padded, width), _fmt_grid(e.kernel[k], None, width),
                _fmt_grid(e.products[k], None, width)]
        if 3 * len(cols[0][0]) + 10 > _TEXT_WIDTH:  # a large kernel: one block under another
            for what, grid in zip(("patch", "kernel", "products"), cols):
                body += [f"{what}:", *grid]
            continue
        for r in range(len(cols[0])):
            sep = ("  x  ", "  =  ") if r == len(cols[0]) // 2 else ("     ", "     ")
            body.append(cols[0][r] + sep[0] + cols[1][r] + sep[1] + cols[2][r])
    total = e.products.sum(dtype=np.float64)
    rest = [k for k in range(len(e.channels)) if k not in order]
    tail = [f"\nthe other {len(rest)} channels: products sum to {sums[rest].sum():.6g}"] \
        if rest else []
    tail.append(f"\nsum of products {total:.6g} + bias {e.bias:.6g} = {e.value:.6g}")
    return "\n".join(head + body + tail + list(e.context))

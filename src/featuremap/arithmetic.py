"""Convolution arithmetic: output sizes, padding, cost and receptive-field steps.

Standard library only, so that shape questions are answered without importing NumPy or torch.
All sizes follow torch's ``Conv2d``::

    out = (in + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1

``padding`` may be an int, a pair ``(pad_h, pad_w)``, ``'valid'`` (no padding) or ``'same'``
(output size ``ceil(in / stride)``; for stride 1 this is torch's ``padding='same'``, the extra
cell of an odd total going after, i.e. bottom/right; for larger strides it is TensorFlow's rule).

Any padding >= 0 that torch accepts is accepted. Padding larger than ``dilation * (kernel - 1)``
makes the outer rows and columns of the map see nothing but padding; :func:`padding_only` finds
them and :func:`padding_notes` says so in words. The padding modes have torch's limits:
``'reflect'`` needs padding < the input size, ``'circular'`` padding <= the input size;
``'zeros'`` and ``'replicate'`` have none.

The memory guards (:func:`check_size`, :func:`memory_limit`, :func:`format_bytes`) live in
:mod:`featuremap.budget` and are importable from here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from featuremap.budget import (  # re-exported: callers import the memory guards from here too
    MEMORY_FRACTION,
    MEMORY_LIMIT_ENV,
    check_size,
    format_bytes,
    memory_limit,
)
from featuremap.errors import ConfigError
from featuremap.padding import describe_padding_only, padding_only_axis

__all__ = [
    "MEMORY_FRACTION",
    "MEMORY_LIMIT_ENV",
    "PADDING_MODES",
    "ConvCost",
    "check_size",
    "RFStep",
    "conv_cost",
    "format_bytes",
    "formula",
    "memory_limit",
    "output_size",
    "padding_notes",
    "padding_only",
    "pair",
    "resolve_padding",
    "rf_step",
    "same_padding",
]

Pair = tuple[int, int]
Padding = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def pair(value: int | tuple[int, int] | list[int], name: str) -> Pair:
    """Return ``value`` as an ``(h, w)`` pair of ints, or raise ConfigError."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be an integer or a pair of integers, got {value!r}.")
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"{name} must be an integer or a pair of integers, got {value!r}.")


def _check_positive(value: Pair, name: str, meaning: str) -> None:
    for v in value:
        if v <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {v} ({meaning}).")


def _effective(kernel: int, dilation: int) -> int:
    return dilation * (kernel - 1) + 1


def same_padding(
    input_size: int | Pair,
    kernel_size: int | Pair,
    *,
    stride: int | Pair = 1,
    dilation: int | Pair = 1,
) -> Padding:
    """The ``((top, bottom), (left, right))`` padding that makes the output ``ceil(in / stride)``.

    Example:
        >>> same_padding(224, 3)
        ((1, 1), (1, 1))
        >>> same_padding(224, 4)
        ((1, 2), (1, 2))
    """
    size, k, s, d = (pair(input_size, "input size"), pair(kernel_size, "kernel_size"),
                     pair(stride, "stride"), pair(dilation, "dilation"))
    _check_positive(s, "stride", "the step between filter positions; 1 visits every pixel")
    _check_positive(d, "dilation", "the spacing between kernel taps; 1 is a plain kernel")
    _check_positive(k, "kernel_size", "the filter's height and width")
    result = []
    for n, kk, ss, dd in zip(size, k, s, d):
        out = -(-n // ss)
        total = max((out - 1) * ss + _effective(kk, dd) - n, 0)
        result.append((total // 2, total - total // 2))
    return (result[0], result[1])


def resolve_padding(
    padding: int | Pair | str,
    input_size: int | Pair,
    kernel_size: int | Pair,
    *,
    stride: int | Pair = 1,
    dilation: int | Pair = 1,
    padding_mode: str = "zeros",
) -> Padding:
    """Turn any accepted padding into ``((top, bottom), (left, right))``, validating it.

    Padding larger than ``dilation * (kernel - 1)`` is accepted, as torch accepts it (see
    :func:`padding_notes`); what torch refuses is refused here too.

    Raises:
        ConfigError: negative padding, an unknown padding word or mode, or padding beyond the
            limit of the mode (``'reflect'``: < the input size, ``'circular'``: <= it).

    Example:
        >>> resolve_padding(5, 10, 3)
        ((5, 5), (5, 5))
    """
    if padding_mode not in PADDING_MODES:
        raise ConfigError(
            f"padding_mode must be one of {', '.join(PADDING_MODES)}, got '{padding_mode}'."
        )
    if isinstance(padding, str):
        word = padding.lower()
        if word == "valid":
            return ((0, 0), (0, 0))
        if word != "same":
            raise ConfigError(
                f"padding must be an integer, a pair, 'same' or 'valid', got '{padding}'."
            )
        pads = same_padding(input_size, kernel_size, stride=stride, dilation=dilation)
    else:
        p = pair(padding, "padding")
        for v in p:
            if v < 0:
                raise ConfigError(
                    f"padding must be >= 0, got {v} (padding adds rows and columns around the "
                    "input; use 0 for none)."
                )
        pads = ((p[0], p[0]), (p[1], p[1]))
    _check_mode_limit(pads, pair(input_size, "input size"), padding_mode)
    return pads


def _check_mode_limit(pads: Padding, size: Pair, mode: str) -> None:
    """torch's F.pad limits: reflect repeats no border pixel (padding < size), circular wraps
    around at most once (padding <= size)."""
    if mode not in ("reflect", "circular"):
        return
    for (p0, p1), n, axis in zip(pads, size, ("height", "width")):
        most = n - 1 if mode == "reflect" else n
        if max(p0, p1) > most:
            limit, why = (("<", "a reflection repeats no border pixel") if mode == "reflect"
                          else ("<=", "the input wraps around at most once"))
            raise ConfigError(
                f"{mode} padding {max(p0, p1)} needs padding {limit} the input size {n} along "
                f"the {axis} ({why}; torch refuses it too). Use padding {most} or less, or "
                "padding_mode 'zeros' or 'replicate'."
            )


def output_size(
    input_size: int | Pair,
    kernel_size: int | Pair,
    *,
    stride: int | Pair = 1,
    padding: int | Pair | str = 0,
    dilation: int | Pair = 1,
    padding_mode: str = "zeros",
) -> Pair:
    """Height and width of the feature map a convolution produces.

    Args:
        input_size: ``H`` or ``(H, W)`` of the input.
        kernel_size: ``k`` or ``(kH, kW)``.
        stride, dilation: int or pair, positive.
        padding: int, pair, ``'same'`` or ``'valid'``; any size torch accepts.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``; only its
            limits on the padding matter here.

    Returns:
        ``(H', W')``.

    Raises:
        ConfigError: with the formula and the user's numbers when the output would be empty;
            padding the mode does not allow (see :func:`resolve_padding`).

    Example:
        >>> output_size(224, 7, stride=2, padding=3)
        (112, 112)
    """
    size, k = pair(input_size, "input size"), pair(kernel_size, "kernel_size")
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    _check_positive(size, "input size", "the height and width of the input")
    _check_positive(k, "kernel_size", "the filter's height and width")
    _check_positive(s, "stride", "the step between filter positions; 1 visits every pixel")
    _check_positive(d, "dilation", "the spacing between kernel taps; 1 is a plain kernel")
    pads = resolve_padding(padding, size, k, stride=s, dilation=d, padding_mode=padding_mode)
    outs = [(n + sum(pp) - _effective(kk, dd)) // ss + 1
            for n, pp, kk, dd, ss in zip(size, pads, k, d, s)]
    if min(outs) <= 0:
        axis = 0 if outs[0] <= 0 else 1
        n, pp, kk, dd, ss = size[axis], pads[axis], k[axis], d[axis], s[axis]
        eff = _effective(kk, dd)
        pad_text = f"2*{pp[0]}" if pp[0] == pp[1] else f"{pp[0]}+{pp[1]}"
        shown = "x".join(str(max(o, 0)) for o in outs)
        raise ConfigError(
            f"kernel {kk} with dilation {dd} does not fit input {n} + {pad_text} padding: "
            f"output would be {shown} (({n} + {sum(pp)} - {eff}) // {ss} + 1 <= 0). "
            "Use a smaller kernel or dilation, or more padding."
        )
    return (outs[0], outs[1])


def formula(
    input_size: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: tuple[int, int] = (0, 0),
    dilation: int = 1,
) -> str:
    """The output-size formula for one axis with the numbers put in, as text."""
    eff = _effective(kernel_size, dilation)
    out = (input_size + sum(padding) - eff) // stride + 1
    pad = f"2*{padding[0]}" if padding[0] == padding[1] else f"{padding[0]}+{padding[1]}"
    dil = f"{dilation}*({kernel_size}-1)-1" if dilation != 1 else f"{kernel_size}"
    return f"({input_size} + {pad} - {dil}) // {stride} + 1 = {out}"


def padding_only(
    input_size: int | Pair,
    kernel_size: int | Pair,
    *,
    stride: int | Pair = 1,
    padding: int | Pair | str = 0,
    dilation: int | Pair = 1,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The output rows and columns whose every kernel tap falls in the padding.

    They exist when the padding is larger than ``dilation * (kernel - 1)`` (the outer rows and
    columns), or when the dilation is larger than the input (the taps step over it).

    Returns:
        ``(rows, columns)``: indices into the output's height and width, ascending.

    Example:
        >>> padding_only(4, 3, padding=3)
        ((0, 7), (0, 7))
    """
    size, k = pair(input_size, "input size"), pair(kernel_size, "kernel_size")
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    outs = output_size(size, k, stride=s, padding=padding, dilation=d)
    pads = resolve_padding(padding, size, k, stride=s, dilation=d)
    return (padding_only_axis(size[0], k[0], s[0], d[0], pads[0], outs[0]),
            padding_only_axis(size[1], k[1], s[1], d[1], pads[1], outs[1]))


def padding_notes(
    input_size: int | Pair,
    kernel_size: int | Pair,
    *,
    stride: int | Pair = 1,
    padding: int | Pair | str = 0,
    dilation: int | Pair = 1,
    padding_mode: str = "zeros",
) -> tuple[str, ...]:
    """Sentences naming the output rows and columns that see only padding; empty if none.

    Example:
        >>> print(padding_notes(10, 3, padding=5)[0])  # doctest: +NORMALIZE_WHITESPACE
        padding 5 > dilation x (kernel - 1) = 2: in each map, the outer 3 rows and columns
        on each side see only padding (zeros).
    """
    size, k = pair(input_size, "input size"), pair(kernel_size, "kernel_size")
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    pads = resolve_padding(padding, size, k, stride=s, dilation=d, padding_mode=padding_mode)
    outs = output_size(size, k, stride=s, padding=padding, dilation=d)
    blind = padding_only(size, k, stride=s, padding=padding, dilation=d)
    height, width = ((size[a], k[a], d[a], pads[a], outs[a], blind[a]) for a in (0, 1))
    return describe_padding_only((height, width), padding_mode)


@dataclass(frozen=True)
class ConvCost:
    """Shape and cost of one convolution layer.

    Attributes:
        input_shape: ``(C, H, W)``.
        output_shape: ``(D, H', W')``; D is the depth, the number of filters.
        padding: ``((top, bottom), (left, right))`` actually applied.
        macs: multiply-accumulates for one image: ``D * H' * W' * (C / groups) * kH * kW``.
        params: weights plus biases.
        output_bytes: bytes of the feature maps of one image at ``bytes_per_value``.
        formulas: the output-size formula per axis with the numbers put in.
        padding_mode: ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.
        notes: sentences about the padding, printed last: which rows and columns of each map
            see only padding (see :func:`padding_notes`); empty for most settings.
    """

    input_shape: tuple[int, int, int]
    output_shape: tuple[int, int, int]
    kernel_size: Pair
    stride: Pair
    dilation: Pair
    padding: Padding
    groups: int
    macs: int
    params: int
    output_bytes: int
    formulas: tuple[str, str]
    padding_mode: str = "zeros"
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready: every field (tuples as lists) and the printed text."""
        import dataclasses

        def plain(value: object) -> object:
            return [plain(v) for v in value] if isinstance(value, tuple) else value

        return {**{k: plain(v) for k, v in dataclasses.asdict(self).items()}, "text": str(self)}

    def __str__(self) -> str:
        c, h, w = self.input_shape
        d, oh, ow = self.output_shape
        return "\n".join([
            f"input   {c} x {h} x {w}  (channels x height x width)",
            f"output  {d} x {oh} x {ow}  (depth x height x width)",
            f"height  {self.formulas[0]}",
            f"width   {self.formulas[1]}",
            f"MACs    {self.macs:,}  ({_human(self.macs)} multiply-adds)",
            f"params  {self.params:,}",
            f"output  {self.output_bytes:,} bytes ({_human(self.output_bytes)}B)",
            *(f"note    {note}" for note in self.notes),
        ])


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.3g} {unit}".rstrip()
        n /= 1000
    return f"{n:.3g} P"


def conv_cost(
    input_size: int | Pair,
    kernel_size: int | Pair,
    *,
    depth: int,
    in_channels: int = 3,
    stride: int | Pair = 1,
    padding: int | Pair | str = 0,
    dilation: int | Pair = 1,
    groups: int = 1,
    bias: bool = True,
    bytes_per_value: int = 4,
    padding_mode: str = "zeros",
) -> ConvCost:
    """Output shape, MACs, parameters and output bytes of one convolution.

    Padding larger than ``dilation * (kernel - 1)`` is computed as torch computes it; the
    result's ``notes`` then say which rows and columns of each map see only padding.

    Raises:
        ConfigError: impossible shapes or settings, or padding the mode does not allow.

    Example:
        >>> conv_cost(224, 3, depth=64, stride=2, padding=1).output_shape
        (64, 112, 112)
        >>> conv_cost(10, 3, depth=1, padding=5).notes[0][:40]
        'padding 5 > dilation x (kernel - 1) = 2:'
    """
    size, k = pair(input_size, "input size"), pair(kernel_size, "kernel_size")
    s, d = pair(stride, "stride"), pair(dilation, "dilation")
    for value, name in ((depth, "depth"), (in_channels, "in_channels"), (groups, "groups")):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
    if in_channels % groups or depth % groups:
        raise ConfigError(
            f"groups {groups} must divide both in_channels {in_channels} and depth {depth}."
        )
    pads = resolve_padding(padding, size, k, stride=s, dilation=d, padding_mode=padding_mode)
    oh, ow = output_size(size, k, stride=s, padding=padding, dilation=d)
    per_out = (in_channels // groups) * k[0] * k[1]
    formulas = (
        formula(size[0], k[0], stride=s[0], padding=pads[0], dilation=d[0]),
        formula(size[1], k[1], stride=s[1], padding=pads[1], dilation=d[1]),
    )
    return ConvCost(
        input_shape=(in_channels, size[0], size[1]),
        output_shape=(depth, oh, ow),
        kernel_size=k, stride=s, dilation=d, padding=pads, groups=groups,
        macs=depth * oh * ow * per_out,
        params=depth * per_out + (depth if bias else 0),
        output_bytes=depth * oh * ow * bytes_per_value,
        formulas=formulas,
        padding_mode=padding_mode,
        notes=padding_notes(size, k, stride=s, padding=padding, dilation=d,
                            padding_mode=padding_mode),
    )


@dataclass(frozen=True)
class RFStep:
    """Receptive-field bookkeeping after one layer, per axis.

    Attributes:
        size: receptive-field size in input pixels.
        jump: distance in input pixels between neighbouring output positions (cumulative stride).
        start: input coordinate of the centre of the first output position's field.
    """

    size: float
    jump: float
    start: float


def rf_step(
    previous: RFStep,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> RFStep:
    """Grow a receptive field through one layer (one axis).

    Example:
        >>> rf_step(RFStep(1, 1, 0.5), 3, padding=1)
        RFStep(size=3, jump=1, start=0.5)
    """
    eff = _effective(kernel_size, dilation)
    return RFStep(
        size=previous.size + (eff - 1) * previous.jump,
        jump=previous.jump * stride,
        start=previous.start + ((eff - 1) / 2 - padding) * previous.jump,
    )

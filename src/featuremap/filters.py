"""Named filter banks: edge detectors, blurs, Gabor wavelets and seeded random filters.

A :class:`FilterBank` is a stack of square float32 kernels ``(D, k, k)`` with one unique name per
filter, all zero-padded (centred) to the largest, odd, size ``k``. Build one from a short spec::

    filter_bank("sobel,gabor:8,random:4")   # 2 + 8 + 4 = 14 filters

Convention: the engine (like ``torch.nn.functional.conv2d``) computes **cross-correlation**, so
kernels are applied as written and never flipped. ``sobel_x = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]``
is therefore positive where intensity increases to the right, and ``sobel_y`` (its transpose)
where it increases downwards (row 0 is the top of the image). Edge kernels keep their textbook,
unnormalised values.

Gabor filters are the real (cosine) part, ``sigma = 0.56 * wavelength`` (about one octave),
envelope aspect ratio 0.5, size ``2*ceil(2.5*sigma)+1``, made exactly zero-mean and scaled so the
positive taps sum to 1. Angles turn counter-clockwise from the x axis as the image is displayed:
``gabor_0deg`` has vertical stripes (like ``sobel_x``), ``gabor_45deg`` a wave running up-right,
and ``np.rot90(gabor_Adeg)`` equals ``gabor_(A+90)deg``. Random filters are standard-normal
draws made zero-mean and unit L2 norm (not Kaiming-scaled): they ignore flat brightness and
their responses are comparable in scale.

The kernels themselves are made in :mod:`featuremap.kernels`, and :class:`FilterBank` lives in
:mod:`featuremap.bank`. NumPy and the standard library only: no torch, no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from featuremap.bank import FILTER_OVERHEAD, FilterBank, bank_from_pairs
from featuremap.budget import check_size
from featuremap.errors import ConfigError, unknown_name
from featuremap.kernels import (
    FIXED_KERNELS,
    KERNEL_GROUPS,
    box_kernel,
    gabor_kernel,
    gabor_name,
    gaussian_kernel,
    random_kernels,
)

__all__ = ["FilterBank", "filter_bank", "list_filters"]  # FilterBank: featuremap.bank

_ORDER = ("identity", "box", "gaussian", "sharpen", "emboss", "sobel", "sobel_x", "sobel_y",
          "prewitt", "prewitt_x", "prewitt_y", "scharr", "scharr_x", "scharr_y", "laplacian",
          "gabor", "random")  # the order list_filters() shows

# --------------------------------------------------------------------------------------------
# Spec parsing


@dataclass
class _Item:
    """One parsed spec item, e.g. ``gabor:8:4`` -> name ``gabor``, args ``("8", "4")``."""

    text: str
    name: str
    args: tuple[str, ...]

    def error(self, problem: str) -> ConfigError:
        syntax, example = _SYNTAX[self.name], _EXAMPLE.get(self.name)
        expected = f"{syntax}, e.g. '{example}'" if example else f"'{syntax}' alone"
        return ConfigError(f"Bad filter spec '{self.text}': {problem}. Expected {expected}.")

    def int_arg(self, i: int, default: int, what: str, *, minimum: int = 1) -> int:
        if i >= len(self.args):
            return default
        try:
            value = int(self.args[i])
        except ValueError:
            raise self.error(f"{what} must be an integer, got '{self.args[i]}'") from None
        if value < minimum:
            raise self.error(f"{what} must be >= {minimum}, got {value}")
        return value

    def float_arg(
        self, i: int, default: float, what: str, *, minimum: float = 0.0, inclusive: bool = False
    ) -> float:
        if i >= len(self.args):
            return default
        try:
            value = float(self.args[i])
        except ValueError:
            raise self.error(f"{what} must be a number, got '{self.args[i]}'") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = f"{'>=' if inclusive else '>'} {minimum:g}"
            raise self.error(f"{what} must be a finite number {bound}, got '{self.args[i]}'")
        return value

    def odd_size(self, i: int, default: int, what: str, *, minimum: int) -> int:
        size = self.int_arg(i, default, what, minimum=minimum)
        if size % 2 == 0:
            raise self.error(f"{what} must be odd so the kernel has a centre pixel, got {size}")
        return size


@dataclass
class _State:
    """What builders share across the items of one spec."""

    rng: np.random.Generator
    n_random: int = 0  # random filters are numbered across items: random_0, random_1, ...


Pairs = list[tuple[str, np.ndarray]]


def _build_box(item: _Item, state: _State) -> Pairs:
    return [("box", box_kernel(item.odd_size(0, 3, "SIZE", minimum=1)))]


def _build_gaussian(item: _Item, state: _State) -> Pairs:
    return [("gaussian", gaussian_kernel(item.float_arg(0, 1.0, "SIGMA")))]


def _build_gabor(item: _Item, state: _State) -> Pairs:
    n = item.int_arg(0, 4, "N (the number of orientations)")
    # Below 2 pixels per period the stripes alias (Nyquist).
    wavelength = item.float_arg(1, 6.0, "WAVELENGTH (pixels per period)",
                                minimum=2.0, inclusive=True)
    angles = [180.0 * i / n for i in range(n)]
    return [(gabor_name(a), gabor_kernel(a, wavelength)) for a in angles]


def _build_random(item: _Item, state: _State) -> Pairs:
    n = item.int_arg(0, 1, "N (the number of filters)")
    # A zero-mean 1x1 kernel would be all zeros, hence size >= 3.
    size = item.odd_size(1, 3, "SIZE", minimum=3)
    kernels = random_kernels(state.rng, n, size)
    start, state.n_random = state.n_random, state.n_random + n
    return [(f"random_{start + i}", k.astype(np.float32)) for i, k in enumerate(kernels)]


def _odd_cells(radius: float) -> int:
    """``2 * ceil(radius) + 1``, the side of a kernel reaching ``radius`` pixels from its centre
    (capped far beyond any memory, so that huge arguments give a huge size, not an overflow)."""
    return 2 * math.ceil(min(radius, 1e30)) + 1


def _plan(item: _Item) -> tuple[int, int, int]:
    """``(filters, kernel size, scratch bytes)`` that building ``item`` makes, from its
    arguments alone (validated as the builders validate them), before anything is built."""
    if item.name == "box":
        size = item.odd_size(0, 3, "SIZE", minimum=1)
        return 1, size, 8 * size * size
    if item.name == "gaussian":
        size = _odd_cells(3 * item.float_arg(0, 1.0, "SIGMA"))
        return 1, size, 4 * 8 * size * size
    if item.name == "gabor":
        n = item.int_arg(0, 4, "N (the number of orientations)")
        size = _odd_cells(2.5 * 0.56 * item.float_arg(1, 6.0, "WAVELENGTH (pixels per period)",
                                                      minimum=2.0, inclusive=True))
        return n, size, 12 * 8 * size * size  # one kernel's float64 temporaries at a time
    if item.name == "random":
        n = item.int_arg(0, 1, "N (the number of filters)")
        size = item.odd_size(1, 3, "SIZE", minimum=3)
        return n, size, 3 * 8 * n * size * size  # the float64 draws and their temporaries
    return len(KERNEL_GROUPS.get(item.name, (item.name,))), 3, 0


def _check_plan(items: list[_Item]) -> None:
    """Refuse a bank too large to build, before building it.

    Every kernel is padded to the largest size and the padded kernels exist three times at
    once (padded, stacked, the bank's own copy): ``3 * 4 * D * k * k`` bytes, plus the largest
    item's float64 scratch.
    """
    plans = [_plan(item) for item in items]
    depth = sum(n for n, _, _ in plans)
    k = max(size for _, size, _ in plans)
    need = 3 * 4 * depth * k * k + max(scratch for _, _, scratch in plans) \
        + FILTER_OVERHEAD * depth
    side = f"{k}" if k < 10**9 else f"{k:.3g}"
    check_size(need, what=f"the {depth} filter{'s' if depth != 1 else ''} of {side} x {side}",
               fix="use fewer filters (a smaller N) or smaller kernels (a smaller SIZE, SIGMA or "
                   "WAVELENGTH)")


_BUILDERS: dict[str, Callable[[_Item, _State], Pairs]] = {
    "box": _build_box, "gaussian": _build_gaussian, "gabor": _build_gabor, "random": _build_random,
}
_MAX_ARGS = {"box": 1, "gaussian": 1, "gabor": 2, "random": 2}
_SYNTAX = {
    **{name: name for name in [*FIXED_KERNELS, *KERNEL_GROUPS]},
    "box": "box[:SIZE]", "gaussian": "gaussian[:SIGMA]",
    "gabor": "gabor[:N[:WAVELENGTH]]", "random": "random[:N[:SIZE]]",
}
_EXAMPLE = {"box": "box:5", "gaussian": "gaussian:2.0", "gabor": "gabor:8:4.0",
            "random": "random:4:5"}
_PARAMETRIC = {
    "box": "SIZExSIZE mean filter (sums to 1); SIZE odd >= 1, default 3",
    "gaussian": "Gaussian blur, size 2*ceil(3*SIGMA)+1, sums to 1; SIGMA > 0, default 1.0",
    "gabor": "N real Gabor filters at 0..180 deg (gabor_0deg, gabor_45deg, ...), zero-mean, "
             "sigma 0.56*WAVELENGTH; N default 4, WAVELENGTH >= 2 pixels, default 6.0",
    "random": "N seeded random filters (random_0, ...), zero-mean, unit L2 norm; N default 1, "
              "SIZE odd >= 3, default 3",
}


def _parse_item(text: str) -> _Item:
    name, *args = [part.strip() for part in text.strip().split(":")]
    name = name.lower()
    if name not in _SYNTAX:
        raise unknown_name("filter", name, list_filters(),
                           hint=f"Known filters: {', '.join(list_filters())}.")
    item = _Item(text.strip(), name, tuple(args))
    if len(args) > _MAX_ARGS.get(name, 0):
        took = _MAX_ARGS.get(name, 0)
        raise item.error(f"'{name}' takes {'no' if took == 0 else f'at most {took}'} "
                         f"argument{'' if took == 1 else 's'}, got {len(args)}")
    return item


def _split_spec(spec: str | Sequence[str]) -> list[str]:
    parts = [spec] if isinstance(spec, str) else list(spec) if isinstance(spec, Iterable) else None
    if parts is None or not all(isinstance(p, str) for p in parts):
        raise ConfigError(f"A filter spec is a string or a list of strings, got {spec!r}.")
    items = [item.strip() for part in parts for item in part.split(",")]
    if not parts or all(not item for item in items):
        raise ConfigError(f"Empty filter spec {spec!r}; expected comma-separated filters such as "
                          f"'sobel,gabor:8,random:4' (run 'featuremap filters' to list them).")
    if not all(items):
        raise ConfigError(f"Empty item in filter spec {spec!r}; expected comma-separated filters "
                          f"such as 'sobel,gabor:8,random:4' with no empty entries.")
    return items


def _build(item: _Item, state: _State) -> Pairs:
    if item.name in _BUILDERS:
        return _BUILDERS[item.name](item, state)
    members = KERNEL_GROUPS.get(item.name, (item.name,))
    return [(m, FIXED_KERNELS[m][0]) for m in members]


# --------------------------------------------------------------------------------------------
# Public functions


def filter_bank(spec: str | Sequence[str] = "sobel", *, seed: int = 0) -> FilterBank:
    """Build a :class:`FilterBank` from a spec such as ``"sobel,gabor:8,random:4"``.

    Each comma-separated item is ``name[:arg[:arg2]]`` (see :func:`list_filters`):
    ``box:SIZE``, ``gaussian:SIGMA``, ``gabor:N[:WAVELENGTH]``, ``random:N[:SIZE]``; ``sobel``,
    ``prewitt`` and ``scharr`` expand to their ``_x`` and ``_y`` filters. Kernels of mixed sizes
    are zero-padded, centred, to the largest. A name already in the bank gets a suffix
    (``sobel_x_2``); random filters are numbered across items (``random_0``, ``random_1``, ...).

    Args:
        spec: a comma-separated string, or a list of such strings. Names are case-insensitive.
        seed: seed of the random filters; the same spec and seed give the same bank.

    Returns:
        A :class:`FilterBank`, filters in the order of the spec.

    Raises:
        UnknownNameError: an unknown filter name (with a did-you-mean).
        ConfigError: an empty spec, a bad argument, too many arguments, or a bank too large
            for memory (refused before anything is built; see
            :func:`featuremap.budget.check_size`).

    Example:
        >>> bank = filter_bank("sobel,gabor:8,random:4", seed=1)
        >>> bank.depth, bank.kernel_size, bank.names[:3]
        (14, 19, ('sobel_x', 'sobel_y', 'gabor_0deg'))
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}.")
    state = _State(np.random.default_rng(int(seed)))
    items = [_parse_item(text) for text in _split_spec(spec)]  # validate all before building
    _check_plan(items)
    return bank_from_pairs([pair for item in items for pair in _build(item, state)])


def list_filters() -> dict[str, str]:
    """The filter names a spec may use, each with its syntax and a one-line description.

    Returns:
        ``{name: "syntax  description"}`` in a stable, teaching order (identity, blurs, edges,
        Gabor, random).

    Example:
        >>> list_filters()["gaussian"]
        'gaussian[:SIGMA]  Gaussian blur, size 2*ceil(3*SIGMA)+1, sums to 1; SIGMA > 0, default 1.0'
    """
    out = {}
    for name in _ORDER:
        if name in _PARAMETRIC:
            out[name] = f"{_SYNTAX[name]}  {_PARAMETRIC[name]}"
        elif name in KERNEL_GROUPS:
            x, y = KERNEL_GROUPS[name]
            out[name] = f"{name}  both {x} and {y} (2 filters)"
        else:
            out[name] = f"{name}  {FIXED_KERNELS[name][1]}"
    return out

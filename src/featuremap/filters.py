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

NumPy and the standard library only: no torch, no scipy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from featuremap.budget import check_size
from featuremap.errors import ConfigError, unknown_name

__all__ = ["FilterBank", "filter_bank", "list_filters"]

WEIGHT_MODES = ("luminance", "per-channel")
GABOR_GAMMA = 0.5  # aspect ratio of the Gabor envelope (as OpenCV's default): elongated stripes


# --------------------------------------------------------------------------------------------
# The bank


@dataclass(frozen=True, eq=False, repr=False)
class FilterBank:
    """A named stack of square float32 kernels ``(D, k, k)``, ``k`` odd, all centred.

    Build one with :func:`filter_bank`; construct directly only from kernels you already have.
    ``kernels`` is stored as a read-only float32 copy.

    Args:
        names: one unique name per filter, ``D`` names.
        kernels: array ``(D, k, k)`` with ``k`` odd (any real dtype; stored as float32).

    Raises:
        ConfigError: empty bank, wrong shape, even size, non-finite values, or names that do not
            match the kernels one to one.

    Example:
        >>> bank = filter_bank("sobel,laplacian")
        >>> len(bank), bank.kernel_size, bank.names
        (3, 3, ('sobel_x', 'sobel_y', 'laplacian'))
        >>> bank["sobel_x"][1]
        array([-2.,  0.,  2.], dtype=float32)
    """

    names: tuple[str, ...]
    kernels: np.ndarray

    def __post_init__(self) -> None:
        names = tuple(self.names) if not isinstance(self.names, str) else (self.names,)
        kernels = np.array(self.kernels, dtype=np.float32)  # always a private copy
        _check_bank(names, kernels)
        kernels.setflags(write=False)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "kernels", kernels)

    @property
    def depth(self) -> int:
        """The number of filters ``D`` (the depth of the feature maps they produce)."""
        return int(self.kernels.shape[0])

    @property
    def kernel_size(self) -> int:
        """The common, odd, kernel height and width ``k``."""
        return int(self.kernels.shape[-1])

    def __len__(self) -> int:
        return self.depth

    def __iter__(self) -> Iterator[np.ndarray]:
        """Iterate over the ``(k, k)`` kernels, in order."""
        return iter(self.kernels)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __getitem__(self, key: int | str | slice) -> np.ndarray | FilterBank:
        """``bank[i]`` or ``bank["sobel_x"]``: one ``(k, k)`` kernel; ``bank[1:3]``: a FilterBank.

        Raises:
            IndexError: an integer out of range.
            UnknownNameError: a name not in this bank (with a did-you-mean).
            ConfigError: a slice that selects no filter.
        """
        if isinstance(key, slice):
            return self.select(list(range(self.depth))[key])
        return self.kernels[self._index(key)]

    def _index(self, key: int | str) -> int:
        if isinstance(key, str):
            if key not in self.names:
                raise unknown_name("filter", key, self.names,
                                   hint=f"This bank has: {', '.join(self.names)}.")
            return self.names.index(key)
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            if not -self.depth <= key < self.depth:
                raise IndexError(f"filter index {key} out of range for a bank of {self.depth}.")
            return int(key) % self.depth
        raise TypeError(f"A FilterBank is indexed by int, name or slice, not {type(key).__name__}.")

    def select(self, names: str | int | Iterable[str | int]) -> FilterBank:
        """A new bank with only the given filters (by name or index), in the order given.

        The kernel size is kept (kernels are not cropped).

        Args:
            names: one name or index, or an iterable of them.

        Returns:
            A :class:`FilterBank` of ``len(names)`` filters.

        Raises:
            UnknownNameError: a name not in this bank.
            ConfigError: an empty selection or a filter selected twice.

        Example:
            >>> filter_bank("sobel,prewitt").select(["prewitt_y", "sobel_x"]).names
            ('prewitt_y', 'sobel_x')
        """
        keys = [names] if isinstance(names, (str, int, np.integer)) else list(names)
        idx = [self._index(k) for k in keys]
        if not idx:
            raise ConfigError(f"Empty selection from a bank of {self.depth} filters; "
                              f"pick at least one of: {', '.join(self.names)}.")
        return FilterBank(tuple(self.names[i] for i in idx), self.kernels[idx])

    def __add__(self, other: FilterBank) -> FilterBank:
        """Concatenate two banks; kernels are padded to the larger size, names kept unique."""
        if not isinstance(other, FilterBank):
            return NotImplemented
        pairs = list(zip(self.names, self.kernels)) + list(zip(other.names, other.kernels))
        return _bank_from(pairs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FilterBank):
            return NotImplemented
        return self.names == other.names and np.array_equal(self.kernels, other.kernels)

    __hash__ = None  # type: ignore[assignment]  # holds an array

    def __repr__(self) -> str:
        shown = ", ".join(self.names[:6]) + (", ..." if self.depth > 6 else "")
        return f"FilterBank(depth={self.depth}, kernel_size={self.kernel_size}, names=[{shown}])"

    def weight(
        self, in_channels: int = 1, *, mode: str = "luminance"
    ) -> tuple[np.ndarray, tuple[str, ...], int]:
        """The conv2d weight, output-channel names and ``groups`` to apply this bank.

        Use as ``conv2d(x, weight, groups=groups)`` with ``x`` of shape ``(C, H, W)`` or
        ``(N, C, H, W)``, in featuremap's engine or ``torch.nn.functional.conv2d`` (both
        cross-correlate: kernels are not flipped).

        Args:
            in_channels: ``C``, the channels of the input image.
            mode: ``"luminance"``: the input must have 1 channel (convert colour to grey first);
                weight ``(D, 1, k, k)``, groups 1, the bank's own names. ``"per-channel"``: every
                filter applied to each channel on its own; weight ``(C*D, 1, k, k)``, groups ``C``,
                outputs channel-major (all filters on channel 0, then channel 1, ...), as torch
                orders grouped outputs, named ``"sobel_x[R]"`` (``R, G, B`` when ``C == 3``, else
                ``c0, c1, ...``).

        Returns:
            ``(weight, names, groups)``: a fresh float32 array, one name per output channel, an int.

        Raises:
            ConfigError: ``in_channels`` not a positive int, or not 1 in luminance mode, or a
                per-channel weight too large for memory.
            UnknownNameError: an unknown mode.

        Example:
            >>> w, names, groups = filter_bank("sobel").weight(3, mode="per-channel")
            >>> w.shape, names[:3], groups
            ((6, 1, 3, 3), ('sobel_x[R]', 'sobel_y[R]', 'sobel_x[G]'), 3)
        """
        if mode not in WEIGHT_MODES:
            raise unknown_name("weight mode", mode, WEIGHT_MODES,
                               hint="Expected 'luminance' or 'per-channel'.")
        if isinstance(in_channels, bool) or not isinstance(in_channels, (int, np.integer)) \
                or in_channels < 1:
            raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}.")
        if mode == "luminance":
            if in_channels != 1:
                raise ConfigError(
                    f"mode='luminance' expects a 1-channel (grey) input, got in_channels="
                    f"{in_channels}; convert the image to grey first or use mode='per-channel'.")
            return self.kernels[:, None].copy(), self.names, 1
        check_size(4 * in_channels * self.kernels.size + _FILTER_OVERHEAD * in_channels
                   * self.depth, what=f"the weight of {self.depth} filters of {self.kernel_size}"
                   f" x {self.kernel_size} on each of {in_channels} channels",
                   fix="use fewer channels or filters")
        channels = ["R", "G", "B"] if in_channels == 3 else [f"c{c}" for c in range(in_channels)]
        weight = np.tile(self.kernels[:, None], (in_channels, 1, 1, 1))
        names = tuple(f"{n}[{c}]" for c in channels for n in self.names)
        return weight, names, int(in_channels)


def _check_bank(names: tuple[str, ...], kernels: np.ndarray) -> None:
    if kernels.ndim != 3 or kernels.shape[1] != kernels.shape[2]:
        raise ConfigError(f"A filter bank's kernels must have shape (D, k, k), "
                          f"got {kernels.shape}.")
    if kernels.shape[0] == 0:
        raise ConfigError("A filter bank needs at least one filter, got 0.")
    if kernels.shape[1] % 2 == 0:
        raise ConfigError(f"Kernel size must be odd so that kernels have a centre, "
                          f"got {kernels.shape[1]}.")
    if not np.all(np.isfinite(kernels)):
        raise ConfigError("A filter bank's kernels must be finite (found NaN or infinity).")
    if len(names) != kernels.shape[0] or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"A filter bank needs one non-empty name per kernel: "
                          f"{len(names)} names for {kernels.shape[0]} kernels.")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"Filter names must be unique, got duplicates: {', '.join(dupes)}.")


def _pad_to(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad an odd square kernel on all sides to ``size`` (odd), keeping it centred."""
    p = (size - kernel.shape[0]) // 2
    return np.pad(kernel, p) if p else kernel


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``, ... whichever is not taken yet."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    return candidate


def _bank_from(pairs: Sequence[tuple[str, np.ndarray]]) -> FilterBank:
    """A bank from ``(name, kernel)`` pairs of mixed odd sizes; duplicate names get suffixes."""
    size = max(k.shape[0] for _, k in pairs)
    taken: set[str] = set()
    names = []
    for name, _ in pairs:
        names.append(_unique(name, taken))
        taken.add(names[-1])
    return FilterBank(tuple(names), np.stack([_pad_to(np.asarray(k), size) for _, k in pairs]))


# --------------------------------------------------------------------------------------------
# Kernels


def _k(rows: list[list[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


_SOBEL_X = _k([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
_PREWITT_X = _k([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]])
_SCHARR_X = _k([[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]])
_FIXED: dict[str, tuple[np.ndarray, str]] = {
    "identity": (_k([[0, 0, 0], [0, 1, 0], [0, 0, 0]]), "3x3 identity: copies the input"),
    "sharpen": (_k([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]), "3x3 sharpen (sums to 1)"),
    "emboss": (_k([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]), "3x3 emboss, light from the top-left"),
    "sobel_x": (_SOBEL_X, "3x3 Sobel, positive where intensity increases to the right"),
    "sobel_y": (_SOBEL_X.T.copy(), "3x3 Sobel, positive where intensity increases downwards"),
    "prewitt_x": (_PREWITT_X, "3x3 Prewitt, positive where intensity increases to the right"),
    "prewitt_y": (_PREWITT_X.T.copy(), "3x3 Prewitt, positive where intensity increases downwards"),
    "scharr_x": (_SCHARR_X, "3x3 Scharr, positive where intensity increases to the right"),
    "scharr_y": (_SCHARR_X.T.copy(), "3x3 Scharr, positive where intensity increases downwards"),
    "laplacian": (_k([[0, 1, 0], [1, -4, 1], [0, 1, 0]]), "3x3 4-neighbour Laplacian (sums to 0)"),
}
_GROUPS = {g: (f"{g}_x", f"{g}_y") for g in ("sobel", "prewitt", "scharr")}
_ORDER = ("identity", "box", "gaussian", "sharpen", "emboss", "sobel", "sobel_x", "sobel_y",
          "prewitt", "prewitt_x", "prewitt_y", "scharr", "scharr_x", "scharr_y", "laplacian",
          "gabor", "random")  # the order list_filters() shows


def _box(size: int) -> np.ndarray:
    return np.full((size, size), 1.0 / (size * size), dtype=np.float32)


def _gaussian(sigma: float) -> np.ndarray:
    half = math.ceil(3 * sigma)
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2))
    kernel = np.outer(g, g)
    return (kernel / kernel.sum()).astype(np.float32)


def _gabor(theta_deg: float, wavelength: float) -> np.ndarray:
    """Real (cosine) Gabor kernel; ``theta`` counter-clockwise from the x axis, y pointing up."""
    sigma = 0.56 * wavelength  # a bandwidth of about one octave
    half = math.ceil(2.5 * sigma)
    coords = np.arange(-half, half + 1, dtype=np.float64)
    x, y = coords[None, :], -coords[:, None]  # row 0 is the top of the image, so y = -row
    t = math.radians(theta_deg)
    xr = x * math.cos(t) + y * math.sin(t)
    yr = -x * math.sin(t) + y * math.cos(t)
    envelope = np.exp(-(xr**2 + GABOR_GAMMA**2 * yr**2) / (2 * sigma**2))
    carrier = np.cos(2 * math.pi * xr / wavelength)
    # Subtract the envelope-weighted mean of the carrier: exactly zero-mean, still zero at the rim.
    kernel = envelope * (carrier - (envelope * carrier).sum() / envelope.sum())
    return (2 * kernel / np.abs(kernel).sum()).astype(np.float32)


def _angle_name(angle: float) -> str:
    return f"gabor_{round(angle, 2):g}deg"


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
    return [("box", _box(item.odd_size(0, 3, "SIZE", minimum=1)))]


def _build_gaussian(item: _Item, state: _State) -> Pairs:
    return [("gaussian", _gaussian(item.float_arg(0, 1.0, "SIGMA")))]


def _build_gabor(item: _Item, state: _State) -> Pairs:
    n = item.int_arg(0, 4, "N (the number of orientations)")
    # Below 2 pixels per period the stripes alias (Nyquist).
    wavelength = item.float_arg(1, 6.0, "WAVELENGTH (pixels per period)",
                                minimum=2.0, inclusive=True)
    angles = [180.0 * i / n for i in range(n)]
    return [(_angle_name(a), _gabor(a, wavelength)) for a in angles]


def _build_random(item: _Item, state: _State) -> Pairs:
    n = item.int_arg(0, 1, "N (the number of filters)")
    # A zero-mean 1x1 kernel would be all zeros, hence size >= 3.
    size = item.odd_size(1, 3, "SIZE", minimum=3)
    kernels = state.rng.standard_normal((n, size, size))
    kernels -= kernels.mean(axis=(1, 2), keepdims=True)
    kernels /= np.sqrt((kernels**2).sum(axis=(1, 2), keepdims=True))
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
    return len(_GROUPS.get(item.name, (item.name,))), 3, 0


_FILTER_OVERHEAD = 400  # bytes per filter beyond its kernel: name, tuple, array header


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
        + _FILTER_OVERHEAD * depth
    side = f"{k}" if k < 10**9 else f"{k:.3g}"
    check_size(need, what=f"the {depth} filter{'s' if depth != 1 else ''} of {side} x {side}",
               fix="use fewer filters (a smaller N) or smaller kernels (a smaller SIZE, SIGMA or "
                   "WAVELENGTH)")


_BUILDERS: dict[str, Callable[[_Item, _State], Pairs]] = {
    "box": _build_box, "gaussian": _build_gaussian, "gabor": _build_gabor, "random": _build_random,
}
_MAX_ARGS = {"box": 1, "gaussian": 1, "gabor": 2, "random": 2}
_SYNTAX = {
    **{name: name for name in [*_FIXED, *_GROUPS]},
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
    members = _GROUPS.get(item.name, (item.name,))
    return [(m, _FIXED[m][0]) for m in members]


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
    return _bank_from([pair for item in items for pair in _build(item, state)])


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
        elif name in _GROUPS:
            out[name] = f"{name}  both {_GROUPS[name][0]} and {_GROUPS[name][1]} (2 filters)"
        else:
            out[name] = f"{name}  {_FIXED[name][1]}"
    return out

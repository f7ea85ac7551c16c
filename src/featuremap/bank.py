"""FilterBank: a named stack of square kernels, centred and zero-padded to one odd size.

Banks are built from a spec by :func:`featuremap.filters.filter_bank` (which re-exports
:class:`FilterBank`); :meth:`FilterBank.weight` turns one into the weight of a convolution.
NumPy and the standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from featuremap.budget import check_size
from featuremap.errors import ConfigError, unknown_name

__all__ = ["FILTER_OVERHEAD", "WEIGHT_MODES", "FilterBank", "bank_from_pairs"]

WEIGHT_MODES = ("luminance", "per-channel")
FILTER_OVERHEAD = 400
"""Bytes per filter beyond its kernel (name, tuple, array header), for the memory guards."""


@dataclass(frozen=True, eq=False, repr=False)
class FilterBank:
    """A named stack of square float32 kernels ``(D, k, k)``, ``k`` odd, all centred.

    Build one with :func:`~featuremap.filters.filter_bank`; construct directly only from kernels
    you already have.
    ``kernels`` is stored as a read-only float32 copy.

    Args:
        names: one unique name per filter, ``D`` names.
        kernels: array ``(D, k, k)`` with ``k`` odd (any real dtype; stored as float32).

    Raises:
        ConfigError: empty bank, wrong shape, even size, non-finite values, or names that do not
            match the kernels one to one.

    Example:
        >>> from featuremap.filters import filter_bank
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
            >>> from featuremap.filters import filter_bank
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
        return bank_from_pairs(pairs)

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
            >>> from featuremap.filters import filter_bank
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
        check_size(4 * in_channels * self.kernels.size + FILTER_OVERHEAD * in_channels
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


def bank_from_pairs(pairs: Sequence[tuple[str, np.ndarray]]) -> FilterBank:
    """A bank from ``(name, kernel)`` pairs of mixed odd sizes: every kernel is zero-padded,
    centred, to the largest size, and a name already taken gets a suffix (``sobel_x_2``).

    Example:
        >>> bank_from_pairs([("a", np.ones((1, 1))), ("a", np.ones((3, 3)))]).names
        ('a', 'a_2')
    """
    size = max(k.shape[0] for _, k in pairs)
    taken: set[str] = set()
    names = []
    for name, _ in pairs:
        names.append(_unique(name, taken))
        taken.add(names[-1])
    return FilterBank(tuple(names), np.stack([_pad_to(np.asarray(k), size) for _, k in pairs]))

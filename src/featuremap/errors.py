"""The one exception hierarchy of featuremap.

Every error a user can cause is a :class:`FeaturemapError` (a ``ValueError``) whose message says
what was asked, what was found, and how to fix it. The CLI prints it as one line and exits 2.
"""

from __future__ import annotations

import difflib
import os
import unicodedata
from collections.abc import Iterable

__all__ = [
    "FeaturemapError",
    "ConfigError",
    "DidNotRunError",
    "ImageError",
    "ModelError",
    "UnknownNameError",
    "WeightsError",
    "did_you_mean",
    "one_line",
    "printable",
    "unknown_name",
]


class FeaturemapError(ValueError):
    """Base class of every error featuremap raises on bad input."""


class ConfigError(FeaturemapError):
    """Impossible settings: stride, padding, kernel size, dilation, groups, positions."""


class ImageError(FeaturemapError):
    """An image that is missing, unreadable, too large or of an unsupported kind."""


class ModelError(FeaturemapError):
    """A model that cannot be built: a missing optional package, a bad model argument."""


class WeightsError(FeaturemapError):
    """Weights that cannot be had or do not fit: offline, missing/corrupt file, wrong shapes."""


class UnknownNameError(FeaturemapError):
    """A name (filter, sample, model, layer, ...) that is not known; carries suggestions."""

    def __init__(self, message: str, *, suggestions: list[str] | None = None) -> None:
        super().__init__(message)
        self.suggestions = suggestions or []


def did_you_mean(name: str, candidates: Iterable[str], *, n: int = 3) -> list[str]:
    """Return up to ``n`` candidates close to ``name``, best first (case-insensitive)."""
    pool = list(dict.fromkeys(candidates))
    lowered = {c.lower(): c for c in pool}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    prefix = [c for c in pool if c.lower().startswith(name.lower()) and c.lower() not in close]
    return ([lowered[c] for c in close] + prefix)[:n]


def unknown_name(
    kind: str, name: str, candidates: Iterable[str], *, hint: str = ""
) -> UnknownNameError:
    """Build an :class:`UnknownNameError` with a did-you-mean and a hint on how to list names."""
    pool = list(candidates)
    suggestions = did_you_mean(name, pool)
    message = f"Unknown {kind} '{name}'."
    if suggestions:
        message += " Did you mean " + " or ".join(f"'{s}'" for s in suggestions) + "?"
    if hint:
        message += f" {hint}"
    return UnknownNameError(message, suggestions=suggestions)


class DidNotRunError(ConfigError):
    """Requested layers that the forward pass never called."""


def did_not_run(layers: Iterable[str], model: str) -> ConfigError:
    """The error for requested layers that the forward pass of ``model`` never called."""
    names = ", ".join(f"'{n}'" for n in layers)
    return DidNotRunError(f"layer {names} did not run in the forward pass of {model} on this input "
                       "(a branch the forward pass skips: an auxiliary or training-only head, or "
                       "one only another method calls, such as the bundled model's segmenter).")


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    """``text`` with control characters escaped as Python writes them (``\\x1b``, ``\\n``).

    Escaped: C0/C1 controls (ESC, newline, tab, DEL, ...), line and paragraph separators, the
    bidirectional overrides (which reorder what a terminal shows), and the bytes that are not
    UTF-8 in a file name (``os.fsdecode`` keeps them as lone surrogates, which cannot even be
    printed): shown as ``\\udcff``, so every name maps to one text and back. Everything else,
    accents and other scripts included, is kept.

    Args:
        text: a file name, a path or a message holding one.

    Returns:
        A string that is safe to print on one terminal line.

    Example:
        >>> printable("red\\x1b[31m\\nname.png")
        'red\\\\x1b[31m\\\\nname.png'
    """
    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    if text.isprintable():
        return text
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
        if code < 0x100:
            return f"\\x{code:02x}"
        return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
    return ch


def one_line(exc: BaseException) -> str:
    """The first 200 characters of an exception's message, on one line (its type's name when
    the message is empty), to quote inside a message of ours.

    Example:
        >>> one_line(OSError("timed out\\n  while reading"))
        'timed out while reading'
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."

"""The one exception hierarchy of featuremap.

Every error a user can cause is a :class:`FeaturemapError` (a ``ValueError``) whose message says
what was asked, what was found, and how to fix it. The CLI prints it as one line and exits 2.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = [
    "FeaturemapError",
    "ConfigError",
    "ImageError",
    "ModelError",
    "UnknownNameError",
    "WeightsError",
    "did_you_mean",
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


def did_not_run(layers: Iterable[str], model: str) -> ConfigError:
    """The error for requested layers that the forward pass of ``model`` never called."""
    names = ", ".join(f"'{n}'" for n in layers)
    return ConfigError(f"layer {names} did not run in the forward pass of {model} on this input "
                       "(a branch the forward pass skips: an auxiliary or training-only head, or "
                       "one only another method calls, such as the bundled model's segmenter).")


# Characters that must never reach a terminal, a log line or a figure raw: C0 controls and DEL
# (escape sequences, newlines, carriage returns, backspaces), C1 controls (U+0080-U+009F, among
# them the 8-bit CSI), line and paragraph separators, the bidirectional marks, embeddings,
# overrides and isolates that reorder what is shown (U+061C, U+200E-200F, U+202A-202E,
# U+2066-2069), and lone surrogates (undecodable bytes of a file name, which cannot even be
# encoded to print). Ordinary Unicode (accents, CJK, emoji and their joiners) is kept.
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                          r"\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    c = match.group()
    if c in _SHORT:
        return _SHORT[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` (a string, a path, anything ``str()`` takes) safe to show on one line.

    Control characters are written as ``repr`` writes them (``\\n``, ``\\t``, ``\\x1b``,
    ``\\u202e``), so a file name cannot move the cursor, colour or clear a terminal, break a
    message into several lines or reorder the text around it; every other character, accents,
    CJK and emoji included, is kept as is. Backslashes are kept too: the result is for people
    to read, not to parse back.

    Example:
        >>> printable("scan\\x1b[2J\\n.png")
        'scan\\\\x1b[2J\\\\n.png'
        >>> printable("café 猫 🐱.png")
        'café 猫 🐱.png'
    """
    return _UNPRINTABLE.sub(_escape, str(text))

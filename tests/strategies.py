"""Hypothesis strategies for hostile input: file names and texts that try to break a program.

Import them from a test module (``from strategies import hostile_names``); pytest puts this
folder on ``sys.path``.
"""

from __future__ import annotations

import os

from hypothesis import strategies as st

# Pieces that have broken or could break a face: rich markup and emoji codes, mathtext, terminal
# escape sequences (colour, title, cursor), line breaks, C1 controls (0x9b is an 8-bit CSI),
# bidi overrides and line separators, format strings, option-like leading dashes, quotes, globs,
# and ordinary Unicode that must survive (accents, CJK, emoji with joiners).
HOSTILE_PIECES = (
    "[red]", "[bold]", "[/]", "[link=https://example.com]x[/link]", "\\[", "]", "[",
    ":smile:", "$a$", "$x^2$", "$\\frac{$", "\\", "\\n", "\x1b[31m", "\x1b]0;owned\x07",
    "\x1b[2J", "\x1b[1A", "\n", "\r", "\t", "\x7f", "\x9b", "\x85", "\u202e",
    "\u2066", "\u200f", "\u2028", "\u2029", " ", "  ", "-", "--out", "-rf", "'", '"', "`",
    "*", "?", "%s", "{}", "{0}", "~", "..", ".", "é", "ß", "猫", "🐱", "👨\u200d👩\u200d👧",
    "ﷺ", "a" * 20,
)


def _valid_name(name: str) -> bool:
    """A name Linux accepts as one path component (and that is not '.' or '..')."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        return False
    try:
        return len(os.fsencode(name)) <= 255
    except UnicodeEncodeError:
        return False


def _undecodable() -> st.SearchStrategy[str]:
    """Names from raw bytes that are not UTF-8: Python sees them as lone surrogates."""
    raw = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b)
    return raw.map(os.fsdecode)


def hostile_names(*, max_pieces: int = 6) -> st.SearchStrategy[str]:
    """One file name (a path component) valid on Linux: no '/', no NUL, at most 255 bytes,
    built from hostile pieces, arbitrary characters and undecodable bytes, sometimes with a
    leading dash."""
    chars = st.text(st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
                    min_size=1, max_size=6)
    piece = st.one_of(st.sampled_from(HOSTILE_PIECES), chars, _undecodable())
    name = st.lists(piece, min_size=1, max_size=max_pieces).map("".join)
    dashed = st.tuples(st.sampled_from(["-", "--"]), name).map("".join)
    return st.one_of(name, dashed).filter(_valid_name)


def hostile_texts() -> st.SearchStrategy[str]:
    """Any text, hostile pieces mixed in: for functions that show text (names, titles)."""
    piece = st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(max_size=6))
    return st.lists(piece, max_size=8).map("".join)


def ordinary_texts() -> st.SearchStrategy[str]:
    """Text with no control, separator, bidi or surrogate character: shown as it is."""
    return st.text(st.characters(
        blacklist_categories=("Cc", "Cs", "Zl", "Zp"),
        blacklist_characters="\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                             "\u2066\u2067\u2068\u2069"))

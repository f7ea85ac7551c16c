from __future__ import annotations

import io
import re
import unicodedata

import pytest
from hypothesis import given

from featuremap.errors import printable
from strategies import hostile_names, hostile_texts, ordinary_texts

BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in BIDI


def _unescape(text: str) -> str:
    """Undo printable's escapes (valid for texts that held no backslash)."""
    short = {"n": "\n", "t": "\t", "r": "\r"}
    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[ntr])",
                  lambda m: short.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), text)


@pytest.mark.parametrize("text, shown", [
    ("a\x1b[31mb", "a\\x1b[31mb"),
    ("line\nbreak\r\t", "line\\nbreak\\r\\t"),
    ("\x00\x07\x7f\x85\x9b", "\\x00\\x07\\x7f\\x85\\x9b"),
    ("abc\u202edcba", "abc\\u202edcba"),
    ("x\u2028y\u2029z\u2066w\u200f", "x\\u2028y\\u2029z\\u2066w\\u200f"),
    ("bad\udcff.png", "bad\\udcff.png"),
    ("café 猫 🐱 👨\u200d👩\u200d👧 [bold] $x^2$", "café 猫 🐱 👨\u200d👩\u200d👧 [bold] $x^2$"),
    ("C:\\dir\\n", "C:\\dir\\n"),  # backslashes are kept: for reading, not parsing
])
def test_printable_escapes_controls_like_repr_and_keeps_the_rest(text, shown):
    assert printable(text) == shown
    for c in text:
        if _unsafe(c):
            assert repr(c)[1:-1] in printable(text)


def test_printable_takes_paths_and_objects(tmp_path):
    assert printable(tmp_path / "a\nb.png") == f"{tmp_path}/a\\nb.png"
    assert printable(3) == "3"


@given(hostile_texts())
def test_printable_output_has_no_control_character(text):
    shown = printable(text)
    assert not any(_unsafe(c) for c in shown)
    assert printable(shown) == shown  # idempotent: escaping twice changes nothing


@given(hostile_names())
def test_printable_names_are_one_line_and_can_be_encoded(name):
    shown = printable(name)
    assert "\n" not in shown and "\r" not in shown
    shown.encode("utf-8")  # a lone surrogate would raise here (and in print)
    if "\\" not in name:  # nothing is lost: the escapes decode back to the name
        assert _unescape(shown) == name


@given(ordinary_texts())
def test_printable_keeps_ordinary_text(text):
    assert printable(text) == text


@given(hostile_names())
def test_printable_name_prints_literally_through_rich(name):
    # The recipe for the console: printable() for controls, then a rich Text (never parsed for
    # markup or emoji codes such as ':smile:'), highlighting off. (rich.markup.escape is not
    # enough: a name ending in a backslash comes out with two.)
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = io.StringIO()
    console = Console(file=out, width=10_000, force_terminal=False, color_system=None)
    console.print(Text(printable(name)), highlight=False, soft_wrap=True)
    assert out.getvalue() == printable(name) + "\n"
    table = Table("file")
    table.add_row(Text(printable(name)))
    console.print(table)
    assert printable(name) in out.getvalue()

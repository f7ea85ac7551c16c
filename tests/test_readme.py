"""The README's Python examples run, and the values their comments claim are the values given.

A line ``EXPR  # VALUE`` (not an assignment, not a print) claims ``repr(EXPR) == VALUE``; text
after ``VALUE: `` is commentary.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
LINE = re.compile(r"^(\S.*?)\s+# (.+)$")
ASSIGNMENT = re.compile(r"^[\w.,\s]+=[^=]")


def claims(block: str) -> list[tuple[str, str]]:
    found = []
    for line in block.splitlines():
        match = LINE.match(line)
        if not match or ASSIGNMENT.match(match[1]) or match[1].startswith(("print", "import")):
            continue
        value = re.split(r":\s", match[2], maxsplit=1)[0].strip()
        found.append((match[1], value))
    return found


def test_readme_python_blocks_run_and_claims_hold(monkeypatch):
    monkeypatch.chdir(README.parent)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    checked = 0
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        for expr, value in claims(block):
            assert repr(eval(expr, namespace)) == value, expr
            checked += 1
    assert checked >= 7

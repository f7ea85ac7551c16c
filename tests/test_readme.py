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
    text = README.read_text()
    blocks = [(m.group(1), text[: m.start(1)].count("\n"))
              for m in re.finditer(r"```python\n(.*?)```", text, flags=re.S)]
    assert blocks
    checked = 0
    for block, offset in blocks:
        namespace: dict = {}  # padded so tracebacks give the README's own line numbers
        exec(compile("\n" * offset + block, "README.md", "exec"), namespace)
        for expr, value in claims(block):
            assert repr(eval(expr, namespace)) == value, expr
            checked += 1
    assert checked >= 7

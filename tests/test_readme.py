"""The README's Python examples run, and the values their comments claim are the values given."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
CLAIM = re.compile(r"^([\w.]+(?:\(.*\))?)\s+# (\(.*?\))")  # `expr   # (a, b, ...)`


def test_readme_python_blocks_run_and_claims_hold():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    checked = 0
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        for line in block.splitlines():
            claim = CLAIM.match(line)
            if claim:
                assert repr(eval(claim[1], namespace)) == claim[2], line
                checked += 1
    assert checked >= 4

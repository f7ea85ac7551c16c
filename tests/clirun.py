"""Run the command line in-process: exit code, stdout and stderr; the one-line error rule."""

from __future__ import annotations

import pytest

from featuremap.cli import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    out = capsys.readouterr()
    code = stop.value.code if stop.value.code is not None else 0
    return code, out.out, out.err


def run_ok(argv, capsys) -> str:
    code, out, err = run(argv, capsys)
    assert code == 0, err
    return out


def run_error(argv, capsys) -> str:
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert "Traceback" not in err + out
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]

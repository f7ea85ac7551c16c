"""The ``featuremap`` command line: each command parses flags, makes one library call, prints
the result and saves what was asked.

Errors a user can cause are :class:`~featuremap.errors.FeaturemapError`; :func:`main` prints them
as one ``error: ...`` line and exits 2. Ctrl-C exits 130 with one line saying what was written
(files are written whole or not at all). Heavy libraries are imported inside the commands, so
``featuremap --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

# isort: off
# the order of `featuremap --help`: first steps, networks, uses, datasets, the atlas, the explorer
from featuremap.cli import basics, networks, uses, store, atlas, explore  # noqa: F401
# isort: on
from featuremap.cli.common import WRITTEN, app
from featuremap.errors import FeaturemapError, printable

__all__ = ["app", "main"]


def _version(value: bool) -> None:
    if value:
        from featuremap import __version__

        typer.echo(f"featuremap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, metavar="",
                                          help="Print the version and exit.")] = False,
) -> None:
    """Compute, see, tune and use the feature maps of convolutional neural networks."""


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one 'error: ...' line and exit status 2, Ctrl-C one
    'interrupted' line and exit status 130."""
    if argv is None:  # this process's own command line: the process ends with this call
        import atexit
        import gc

        # With torch loaded the interpreter's last garbage collection takes about a second;
        # a frozen heap is skipped (Ctrl-C on 'featuremap explore' ends at once).
        atexit.register(gc.freeze)
    WRITTEN.clear()
    try:
        code = app(args=argv, prog_name="featuremap", standalone_mode=False)
    except FeaturemapError as err:
        typer.echo(f"error: {printable(str(err))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:
        if str(interrupt):  # the library said what is kept (a resumable store, for instance)
            typer.echo(f"interrupted: {printable(str(interrupt))}.", err=True)
            sys.exit(130)
        code = 130
    except OSError as err:  # e.g. a file that cannot be written: permissions, disk full
        where = f": {printable(err.filename)}" if err.filename else ""
        typer.echo(f"error: {err.strerror or err}{where}", err=True)
        sys.exit(2)
    except Exception as err:
        if not _usage_error(err):
            raise
        sys.exit(2)
    if code == 130:  # Ctrl-C (typer turns it into exit code 130)
        done = (" after writing " + ", ".join(printable(p) for p in WRITTEN)) if WRITTEN else (
            "; nothing was written")
        typer.echo(f"interrupted{done} (no file is left half-written).", err=True)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(err: Exception) -> bool:
    """Print a command-line usage error (unknown option, missing argument) as one line."""
    names = {c.__name__ for c in type(err).__mro__}
    if "Abort" in names:
        typer.echo("error: aborted.", err=True)
        return True
    if "UsageError" not in names:
        return False
    ctx = getattr(err, "ctx", None)
    path = ctx.command_path if ctx is not None else "featuremap"
    message = " ".join(err.format_message().split())
    if message:  # (none when the help was shown for a bare command)
        typer.echo(f"error: {printable(message)} (see '{path} --help')", err=True)
    return True

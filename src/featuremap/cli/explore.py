"""The explorer: a local web page on your own model."""

from __future__ import annotations

from typing import Annotated

import typer

from featuremap.cli.common import WeightsOpt, app, load, note


@app.command(epilog="Examples:\n\n  featuremap explore\n\n"
             "  featuremap explore photo.jpg --model resnet18 --weights DEFAULT\n\n"
             "  featuremap explore --port 8765 --no-browser\n\n"
             "  featuremap explore --data photos/   # the Channels view over a folder")
def explore(
    image: Annotated[str | None, typer.Argument(
        help="Image to open with (a file or sample:NAME; default: a generated scene).")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model to explore (see "
                                       "'featuremap models').")] = "shapes",
    weights: WeightsOpt = "DEFAULT",
    data: Annotated[str | None, typer.Option(
        "--data", help="What the Channels view reads to show what each channel detects: a "
        "folder of images, image/mask pairs, a list, a glob or a store made by the model "
        "(checked before the server starts).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: a free one).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (default 127.0.0.1: this "
                                      "machine only).")] = "127.0.0.1",
    no_browser: Annotated[bool, typer.Option("--no-browser", metavar="",
                                             help="Do not open a browser.")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N, mps or auto.")
                      ] = "auto",
) -> None:
    """Serve a local web page to see, tune and question the feature maps of a model."""
    from featuremap.errors import ConfigError
    from featuremap.web.server import check_stack, serve

    check_stack()
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"--port must be from 1 to 65535, got {port}.")
    if image is not None:
        from featuremap.images import load_image

        load_image(image)  # a bad image is refused before the server starts
    loaded = load(model, weights, device)
    try:
        serve(loaded, image, data, host=host, port=port, open_browser=not no_browser,
              say=lambda text: (note(text[9:]) if text.startswith("warning: ")
                                else typer.echo(text)))
    except KeyboardInterrupt:  # Ctrl-C is how the explorer is stopped
        pass
    typer.echo("explorer stopped")

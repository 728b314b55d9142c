"""The `shoeseg` command line: the one place that wires every part together.

Each area registers its commands from its own module; heavy imports (torch, the web app, rq) happen
inside the commands so that `shoeseg --help` and `shoeseg via ...` start fast.
"""

from __future__ import annotations

import logging

import typer

from shoeseg import __version__
from shoeseg_app.cli import al, core, loop, serve, up, via

app = typer.Typer(
    name="shoeseg",
    help="Shoe instance segmentation with people in the loop: data tools, Mask R-CNN training, "
    "a Label Studio ML backend and an RQ retraining worker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"shoeseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


via.register(app)
core.register(app)
serve.register(app)
loop.register(app)
al.register(app)
up.register(app)


def main() -> None:
    app()

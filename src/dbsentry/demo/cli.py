"""The ``dbsentry demo`` command."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dbsentry.logs import setup_logging


@click.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=".dbsentry-demo",
    show_default=True,
    help="Where the demo keeps its database, configuration, tokens and audit trail (reused by later runs).",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="The proxy's port [default: 6432 if free, else any free port].",
)
@click.option(
    "--http-port",
    type=click.IntRange(1, 65535),
    help="The console's port [default: 8080 if free, else any free port].",
)
@click.option(
    "--tour",
    is_flag=True,
    help="Run a scripted scenario against the demo, check each step, and exit (0 when all behaved).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="The proxy's log level; logs go to stderr [default: warning, error with --tour].",
)
def demo(
    directory: Path, port: int | None, http_port: int | None, tour: bool, log_level: str | None
) -> None:
    """Try dbsentry with nothing else installed.

    Starts an embedded PostgreSQL with a generated shop (customers with personal data,
    orders), the proxy and its console, and prints how to connect as an analyst, a DBA
    and an AI agent. Runs until Ctrl-C.
    """
    from dbsentry.demo.runner import DemoOptions, run_demo

    setup_logging("text", log_level or ("error" if tour else "warning"))
    sys.exit(run_demo(DemoOptions(directory, port, http_port, tour)))

"""Options every ``dbsentry`` subcommand shares, so they read and default the same way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

#: What ``-c/--config`` means when it is not given, for every subcommand.
DEFAULT_CONFIG = "dbsentry.yaml"


def config_option(f: F) -> F:
    """``-c/--config FILE``, default ``dbsentry.yaml`` in the working directory."""
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_CONFIG,
        show_default=True,
        help="The dbsentry configuration file.",
    )(f)


def comment_option(help: str) -> Callable[[F], F]:
    """``--comment TEXT`` for a review (the console's word), with ``--reason`` kept as a
    hidden alias for scripts written before it was renamed."""

    def decorate(f: F) -> F:
        f = click.option("--reason", "reason_alias", hidden=True, help="Old name of --comment.")(f)
        return click.option("--comment", help=help)(f)

    return decorate


def full_path(path: str | Path) -> str:
    """``path`` as an absolute path, for messages a user copies from."""
    return str(Path(path).expanduser().resolve())

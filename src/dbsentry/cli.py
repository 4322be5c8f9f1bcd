"""The ``dbsentry`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from dbsentry import __version__
from dbsentry.cli_options import config_option, full_path
from dbsentry.config import ConfigError, LoadedConfig, load_config
from dbsentry.logs import setup_logging

if TYPE_CHECKING:
    from dbsentry.identity.tokens import TokenStoreBase


def load_or_exit(path: Path) -> LoadedConfig:
    try:
        return load_config(path)
    except ConfigError as err:
        click.echo(f"dbsentry: invalid configuration {full_path(path)}:\n{err}", err=True)
        sys.exit(2)


class _Commands(click.Group):
    """The top-level group: the groups of other packages are imported only when run (or
    listed by ``--help``), so a command pays for its own imports, not for every command's."""

    elsewhere = {
        "access": "dbsentry.approvals.cli",
        "approvals": "dbsentry.approvals.cli",
        "audit": "dbsentry.audit.cli",
        "classify": "dbsentry.masking.cli",
        "demo": "dbsentry.demo.cli",
        "policy": "dbsentry.policy.cli",
        "report": "dbsentry.audit.cli",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.elsewhere})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = self.elsewhere.get(cmd_name)
        if module is None:
            return super().get_command(ctx, cmd_name)
        command = getattr(importlib.import_module(module), cmd_name)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="dbsentry")
def main() -> None:
    """dbsentry: an identity-aware database proxy."""


@main.command()
@config_option
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes sharing the listeners (default: the configuration's workers, else one per CPU).",
)
def serve(config_path: Path, log_format: str, log_level: str, workers: int | None) -> None:
    """Run the proxy."""
    setup_logging(log_format, log_level)
    loaded = load_or_exit(config_path)
    from dbsentry.server.workers import effective_workers, serve_workers

    count = effective_workers(loaded.config, workers)
    if count > 1:
        sys.exit(serve_workers(loaded, count))
    from dbsentry.server.proxy import install_uvloop
    from dbsentry.server.runner import run_server

    install_uvloop()
    asyncio.run(run_server(loaded))


@main.command("mcp")
@config_option
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the agent's token from this file (default: the DBSENTRY_TOKEN environment variable).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning", show_default=True)
def mcp_cmd(config_path: Path, token_file: Path | None, log_level: str) -> None:
    """Serve the MCP tools on stdin/stdout for a local AI agent (docs/mcp.md)."""
    import os

    setup_logging("text", log_level)  # on stderr: stdout carries the protocol
    loaded = load_or_exit(config_path)
    if token_file is not None:
        token = token_file.read_text().strip()
    else:
        token = os.environ.get("DBSENTRY_TOKEN", "").strip()
    if not token:
        click.echo("dbsentry mcp: no token: set DBSENTRY_TOKEN or pass --token-file", err=True)
        sys.exit(2)
    from dbsentry.agents.stdio import run_stdio

    sys.exit(run_stdio(loaded, token))


@contextlib.contextmanager
def _tokens(loaded: LoadedConfig) -> Iterator[TokenStoreBase]:
    """The token store of ``loaded``'s configuration (the control plane's when there is
    one); exits with status 2 and a message when the control plane cannot be reached."""
    from dbsentry.controlplane import ControlPlane, token_store
    from dbsentry.identity.ratelimit import ControlPlaneUnavailable

    try:
        if loaded.config.control_plane is not None:
            ControlPlane(loaded.config.control_plane).migrate()  # before any node started
        with token_store(loaded.config) as store:
            yield store
    except (ControlPlaneUnavailable, ConfigError) as err:
        click.echo(str(err) if str(err).startswith("dbsentry:") else f"dbsentry: {err}", err=True)
        sys.exit(2)


@main.group()
def token() -> None:
    """Create, list and revoke dbsentry access tokens."""


@token.command("create")
@config_option
@click.option("--identity", required=True, help="Who the token proves: a person's e-mail or an agent's name.")
@click.option("--group", "groups", multiple=True, help="A group of the identity (repeatable).")
@click.option("--agent", is_flag=True, help="The identity is an AI agent or automated job, not a person.")
@click.option("--ttl", default="8h", show_default=True, help="Lifetime: 30m, 8h, 7d, 1h30m, or 'never'.")
def token_create(config_path: Path, identity: str, groups: tuple[str, ...], agent: bool, ttl: str) -> None:
    """Create a token; prints only the token on stdout (it is not stored)."""
    from dbsentry.identity import parse_duration

    loaded = load_or_exit(config_path)
    try:
        seconds = None if ttl == "never" else parse_duration(ttl)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--ttl") from None
    with _tokens(loaded) as store:
        plaintext, info = store.create(identity, list(groups), "agent" if agent else "human", seconds)
    click.echo(plaintext)
    click.echo(f"created token {info.id} for {identity}", err=True)


@token.command("list")
@config_option
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def token_list(config_path: Path, include_revoked: bool, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    loaded = load_or_exit(config_path)
    with _tokens(loaded) as store:
        infos = store.list(include_revoked=include_revoked)
    now = time.time()

    def when(t: float | None) -> str:
        return "-" if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))

    if as_json:
        for i in infos:
            click.echo(
                json.dumps(
                    {
                        "id": i.id,
                        "identity": i.identity,
                        "groups": sorted(i.groups),
                        "kind": i.kind,
                        "created_at": when(i.created_at),
                        "expires_at": when(i.expires_at),
                        "revoked_at": when(i.revoked_at),
                        "active": i.active(now),
                    }
                )
            )
        return
    click.echo(f"{'ID':<14} {'IDENTITY':<28} {'KIND':<6} {'GROUPS':<24} {'EXPIRES':<21} STATUS")
    for i in infos:
        status = "revoked" if i.revoked_at else ("expired" if not i.active(now) else "active")
        click.echo(
            f"{i.id:<14} {i.identity:<28} {i.kind:<6} {','.join(sorted(i.groups)) or '-':<24} "
            f"{when(i.expires_at):<21} {status}"
        )


@token.command("revoke")
@config_option
@click.argument("token_id")
def token_revoke(config_path: Path, token_id: str) -> None:
    """Revoke a token by its id; sessions using it cannot log in again."""
    loaded = load_or_exit(config_path)
    with _tokens(loaded) as store:
        if not store.revoke(token_id):
            click.echo(f"dbsentry: no active token {token_id}", err=True)
            sys.exit(1)
    click.echo(f"revoked {token_id}", err=True)


@main.command("check-config")
@config_option
@click.option("--offline", is_flag=True, help="Do not connect upstream to check the roles of production connections.")
@click.option("--strict", is_flag=True, help="Exit with status 1 when there are warnings.")
def check_config(config_path: Path, offline: bool, strict: bool) -> None:
    """Validate the configuration file and its policy; warn about powerful upstream roles."""
    from dbsentry.config import check_environments
    from dbsentry.policy import PolicyError, default_policy, load_policy
    from dbsentry.policy.loader import declared_environments

    loaded = load_or_exit(config_path)
    config = loaded.config
    try:
        pol = load_policy(config.policy) if config.policy is not None else default_policy()
    except PolicyError as err:
        click.echo(f"dbsentry: invalid policy: {err}", err=True)
        sys.exit(2)
    try:
        check_environments(config, declared_environments(pol))
    except ConfigError as err:
        click.echo(f"dbsentry: invalid configuration {loaded.path}:\n{err}", err=True)
        sys.exit(2)
    warnings = 0
    if not offline and not config.passthrough:
        from dbsentry.server.roles import check_production_roles

        for level, message in asyncio.run(check_production_roles(config, pol.production_environments)):
            warnings += level == "warning"
            click.echo(f"{level.upper()}: {message}", err=True)
    production = sorted(n for n, c in config.connections.items() if c.environment in pol.production_environments)
    click.echo(
        f"{loaded.path}: ok ({len(config.connections)} connections; production: {', '.join(production) or 'none'})"
        + (f"; {warnings} warning{'s' if warnings != 1 else ''}" if warnings else "")
    )
    if strict and warnings:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()

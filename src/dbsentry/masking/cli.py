"""``dbsentry classify``: read a connection's upstream catalog and show what would be masked."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson

from dbsentry.config import ConfigError, ConnectionConfig, load_config
from dbsentry.masking.catalog import Catalog, ClassMap, classify_catalog, fetch_catalog


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def conninfo(conn: ConnectionConfig) -> dict[str, Any]:
    """psycopg connection keywords for a configured upstream."""
    params: dict[str, Any] = {
        "host": conn.host,
        "port": conn.port,
        "dbname": conn.database,
        "user": conn.user,
        "connect_timeout": max(1, int(conn.connect_timeout_seconds)),
        "application_name": "dbsentry classify",
    }
    password = conn.resolve_password()
    if password is not None:
        params["password"] = password
    params["sslmode"] = {"disable": "disable", "require": "require", "verify-full": "verify-full"}[
        conn.upstream_tls
    ]
    if conn.upstream_ca is not None:
        params["sslrootcert"] = str(conn.upstream_ca)
    return params


async def load_catalog(conn: ConnectionConfig) -> Catalog:
    import psycopg

    async with await psycopg.AsyncConnection.connect(**conninfo(conn)) as aconn:
        await aconn.set_read_only(True)
        catalog = await fetch_catalog(aconn)
        await aconn.rollback()
        return catalog


def rows(classmap: ClassMap) -> list[dict[str, str]]:
    out = []
    for src in sorted(classmap.columns):
        c = classmap.columns[src]
        out.append(
            {
                "table": f"{src.schema}.{src.table}",
                "column": src.column,
                "class": c.data_class.value,
                "source": c.source,
                "evidence": c.evidence,
            }
        )
    return out


@click.command("classify")
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="dbsentry.yaml",
    show_default=True,
    help="The configuration file.",
)
@click.option(
    "--connection", "connection", required=True, help="The connection whose upstream to read."
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line instead of a table."
)
def classify(config_path: Path, connection: str, as_json: bool) -> None:
    """Classify the upstream's columns into data classes (what masking will protect)."""
    try:
        loaded = load_config(config_path)
    except ConfigError as err:
        _fail(f"dbsentry: invalid configuration {config_path}:\n{err}", 2)
    conn = loaded.config.connections.get(connection)
    if conn is None:
        known = ", ".join(sorted(loaded.config.connections)) or "none"
        _fail(f"dbsentry: no connection named {connection!r} (known: {known})", 2)
    try:
        catalog = asyncio.run(load_catalog(conn))
    except ConfigError as err:
        _fail(f"dbsentry: {err}", 2)
    except Exception as err:  # psycopg's errors, OSError: say why and exit non-zero
        _fail(f"dbsentry: cannot read the catalog of {connection!r}: {str(err).strip()}")
    table = rows(classify_catalog(catalog, loaded.config.masking.overrides))
    if as_json:
        for r in table:
            click.echo(orjson.dumps(r).decode())
        return
    if not table:
        click.echo(f"no sensitive columns found in {len(catalog.relations)} relations")
        return
    headers = ("table", "column", "class", "evidence")
    widths = [max(len(h), *(len(r[h]) for r in table)) for h in headers]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in table:
        click.echo("  ".join(r[h].ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())

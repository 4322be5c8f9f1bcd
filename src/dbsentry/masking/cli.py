"""``dbsentry classify``: read a connection's upstream catalog and show what would be masked."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson

from dbsentry.cli_options import config_option, full_path
from dbsentry.config import ConfigError, ConnectionConfig, MaskingConfig, load_config
from dbsentry.engines.postgres.catalog import (
    CONCURRENT_DDL_RETRIES,
    dropped_meanwhile,
    fetch_catalog,
    fetch_samples,
)
from dbsentry.masking.catalog import Catalog, ClassMap, SampleReport, classify_catalog


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


async def load_catalog(
    conn: ConnectionConfig, masking: MaskingConfig | None = None, sample: bool = False
) -> tuple[Catalog, SampleReport | None]:
    """Read the catalog (read only) and, with ``sample``, sample the tables' values with
    the limits of ``masking`` (each sample in a read-only transaction rolled back)."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(**conninfo(conn)) as aconn:
        await aconn.set_read_only(True)
        for attempt in range(CONCURRENT_DDL_RETRIES + 1):
            try:
                catalog = await fetch_catalog(aconn)
                break
            except psycopg.Error as err:  # a table dropped while it was read: read it again
                await aconn.rollback()
                if attempt == CONCURRENT_DDL_RETRIES or not dropped_meanwhile(err):
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))
        await aconn.rollback()
        if not sample:
            return catalog, None
        m = masking or MaskingConfig()
        await aconn.set_autocommit(True)
        report = await fetch_samples(
            aconn,
            catalog,
            rows=m.sample_rows,
            timeout_ms=m.sample_timeout_ms,
            budget_seconds=m.sample_budget_seconds,
        )
        return catalog, report


def rows(classmap: ClassMap) -> list[dict[str, Any]]:
    """One row per classified or value-scanned column, by table and column."""
    out: list[dict[str, Any]] = []
    for src in sorted({*classmap.columns, *classmap.scan}):
        c = classmap.columns.get(src)
        out.append(
            {
                "table": f"{src.schema}.{src.table}",
                "column": src.column,
                "class": c.data_class.value if c is not None else None,
                "source": c.source if c is not None else "value",
                "scan": c is None,
                "evidence": c.evidence if c is not None else classmap.scan_evidence.get(src, ""),
            }
        )
    return out


@click.command("classify")
@config_option
@click.option(
    "--connection", "connection", required=True, help="The connection whose upstream to read."
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line instead of a table."
)
@click.option(
    "--no-sample",
    "no_sample",
    is_flag=True,
    help="Classify from the schema only: do not sample the tables' values.",
)
def classify(config_path: Path, connection: str, as_json: bool, no_sample: bool) -> None:
    """Classify the upstream's columns into data classes (what masking will protect).

    Columns are classified by name, type and comment and, unless --no-sample or
    masking.sample is false, by a sample of their values (masking.sample_rows per table);
    a column marked "scan" has no class but values that hold sensitive data inside
    longer text: those parts are masked.  The evidence says why, with sample hit rates."""
    try:
        loaded = load_config(config_path)
    except ConfigError as err:
        _fail(f"dbsentry: invalid configuration {full_path(config_path)}:\n{err}", 2)
    conn = loaded.config.connections.get(connection)
    if conn is None:
        known = ", ".join(sorted(loaded.config.connections)) or "none"
        _fail(f"dbsentry: no connection named {connection!r} (known: {known})", 2)
    masking = loaded.config.masking
    sample = masking.sample and not no_sample
    try:
        catalog, report = asyncio.run(load_catalog(conn, masking, sample))
    except ConfigError as err:
        _fail(f"dbsentry: {err}", 2)
    except Exception as err:  # psycopg's errors, OSError: say why and exit non-zero
        _fail(f"dbsentry: cannot read the catalog of {connection!r}: {str(err).strip()}")
    values = report.findings if report is not None else None
    table = rows(classify_catalog(catalog, masking.overrides, values))
    skipped = _skipped(catalog, report)
    if as_json:
        for r in table:
            click.echo(orjson.dumps(r).decode())
        for r in skipped:
            click.echo(orjson.dumps(r).decode())
        return
    if report is None:
        click.echo("values not sampled: classified from the schema only")
    else:
        click.echo(
            f"sampled the values of {len(report.sampled)} relations in {report.seconds:.1f}s"
            + (f" ({len(report.skipped)} skipped)" if report.skipped else "")
        )
    for r in skipped:
        click.echo(f"not sampled: {r['table']}: {r['not_sampled']}")
    if not table:
        click.echo(f"no sensitive columns found in {len(catalog.relations)} relations")
        return
    shown = [
        {**r, "class": r["class"] or "scan", "source": r["source"]}
        for r in table
    ]
    headers = ("table", "column", "class", "source", "evidence")
    widths = [max(len(h), *(len(r[h]) for r in shown)) for h in headers]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in shown:
        click.echo("  ".join(r[h].ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())


def _skipped(catalog: Catalog, report: SampleReport | None) -> list[dict[str, str]]:
    out = []
    for oid, why in sorted((report.skipped if report is not None else {}).items()):
        rel = catalog.relations.get(oid)
        if rel is not None:
            out.append({"table": f"{rel.schema}.{rel.name}", "not_sampled": why})
    return sorted(out, key=lambda r: r["table"])

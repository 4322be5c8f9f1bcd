"""Reads each connection's catalog for masking, on a side connection, and keeps it fresh.

PostgreSQL connections are read with psycopg (:mod:`dbsentry.engines.postgres.catalog`),
MySQL/MariaDB ones over the MySQL shell's own side connection
(:func:`dbsentry.server.mysql_proxy.side_connection`, :mod:`dbsentry.engines.mysql.catalog`);
both with the connection's own credentials, both classified and installed alike.

With ``masking.sample`` the same side connection then samples the rows of every table
(:func:`dbsentry.engines.postgres.catalog.fetch_samples`) so that columns are classified from their
values as well as their names.  Sampling is bounded: one query per table under
``masking.sample_timeout_ms``, nothing started after ``masking.sample_budget_seconds``, the
judgement of the values in a worker thread.  A table that errors, times out or is left out
by the budget keeps what its last sample found, and is sampled first next time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from dbsentry.config import Config, ConnectionConfig, MaskingConfig
from dbsentry.engines.mysql import catalog as mysql_catalog
from dbsentry.engines.postgres.catalog import (
    CONCURRENT_DDL_RETRIES,
    dropped_meanwhile,
    fetch_catalog,
    fetch_samples,
)
from dbsentry.engines.postgres.session.masking import MaskingService
from dbsentry.masking import Catalog, classify_catalog
from dbsentry.masking.catalog import Relation, SampleReport
from dbsentry.masking.sampling import SampledColumn, ValueFinding, classify_table_sample
from dbsentry.tasks import spawn

log = logging.getLogger("dbsentry.masking")

# Beyond the budget, how long the last table may take before the run is abandoned.
_GRACE_SECONDS = 5.0


class CatalogError(Exception):
    pass


@dataclass(slots=True)
class _Sampled:
    """What the samples of one relation found, and when they were taken."""

    at: float
    # column name -> (type oid, finding): a finding survives while the column's type does.
    findings: dict[str, tuple[int, ValueFinding]] = field(default_factory=dict)


@dataclass(slots=True)
class ValueMemory:
    """The findings of a connection's samples, kept across catalog reads."""

    relations: dict[int, _Sampled] = field(default_factory=dict)

    def priority(self) -> dict[int, float]:
        return {oid: s.at for oid, s in self.relations.items()}

    def update(self, catalog: Catalog, report: SampleReport, now: float) -> None:
        for oid in report.sampled:
            rel = catalog.relations.get(oid)
            if rel is None:
                continue
            types = {c.name: c.type_oid for c in rel.columns}
            found = report.findings.get(oid, {})
            self.relations[oid] = _Sampled(
                now, {name: (types[name], f) for name, f in found.items() if name in types}
            )
        for oid in list(self.relations):
            if oid not in catalog.relations:
                del self.relations[oid]

    def findings(self, catalog: Catalog) -> dict[int, dict[str, ValueFinding]]:
        """Every relation's last findings, for the columns whose type has not changed."""
        out: dict[int, dict[str, ValueFinding]] = {}
        for oid, sampled in self.relations.items():
            rel = catalog.relations.get(oid)
            if rel is None:
                continue
            types = {c.name: c.type_oid for c in rel.columns}
            kept = {n: f for n, (t, f) in sampled.findings.items() if types.get(n) == t}
            if kept:
                out[oid] = kept
        return out


class CatalogLoader:
    def __init__(self, config: Config, service: MaskingService) -> None:
        self.config = config
        self.service = service
        self._locks: dict[str, asyncio.Lock] = {}
        self._loaded_at: dict[str, float] = {}
        self._stale: set[str] = set()
        self._values: dict[str, ValueMemory] = {}
        self._oids: dict[str, _StableOids] = {}  # MySQL connections' relation numbers
        # Set with a control plane: tells every node that DDL ran on a connection (they read
        # its catalog again, ``refresh``).
        self.announce: Callable[[str], None] | None = None

    def reconfigure(self, config: Config) -> None:
        """A SIGHUP reload's connections: a changed one's catalog is read again at its next
        use, an added one's at its first; a removed one's stays for the sessions still open
        on it, and is no longer refreshed."""
        before, self.config = self.config.connections, config
        for name in self._loaded_at:
            if name in config.connections and config.connections[name] != before.get(name):
                self._stale.add(name)

    async def ensure(self, name: str) -> None:
        """The catalog of ``name`` is loaded (reading it now if it never was)."""
        if name in self._loaded_at:
            age = time.monotonic() - self._loaded_at[name]
            if name in self._stale or age > self.config.masking.refresh_seconds:
                self.refresh(name)
            return
        await self._load(name)

    def schema_changed(self, name: str) -> None:
        """DDL ran on ``name`` here: read its catalog again, and with a control plane tell
        every node (off the event loop; a failure is logged, the periodic refresh remains)."""
        self.refresh(name)
        announce = self.announce
        if announce is not None:
            spawn(asyncio.to_thread(_announce, announce, name), name="catalog-announce")

    def refresh(self, name: str) -> None:
        """Read the catalog again in the background; sessions keep the old one meanwhile."""
        self._stale.add(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        if not lock.locked():
            spawn(self._refresh(name), name="catalog-refresh")

    async def _refresh(self, name: str) -> None:
        if name not in self.config.connections:  # removed by a reload: kept as it was
            self._stale.discard(name)
            return
        try:
            await self._load(name)
            while name in self._stale:  # DDL while it was being read: read it again
                await self._load(name)
        except CatalogError as err:
            log.error("catalog refresh failed; keeping the previous one", extra={"fields": {"connection": name, "error": str(err)}})

    async def _load(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self._loaded_at and name not in self._stale:
                return
            self._stale.discard(name)
            conn = self.config.connections.get(name)
            if conn is None:  # removed by a reload since the session asking for it started
                raise CatalogError(f"connection {name!r} is no longer configured")
            memory = self._values.setdefault(name, ValueMemory())
            for attempt in range(CONCURRENT_DDL_RETRIES + 1):
                try:
                    if conn.engine == "mysql":
                        oids = self._oids.setdefault(name, _StableOids())
                        catalog = await _read_mysql(conn, self.config.masking, name, memory, oids)
                    else:
                        catalog = await _read(conn, self.config.masking, name, memory)
                    break
                except psycopg.Error as err:
                    if attempt < CONCURRENT_DDL_RETRIES and dropped_meanwhile(err):
                        await asyncio.sleep(0.05 * (attempt + 1))
                        continue
                    raise CatalogError(_first_line(err)) from None
                except OSError as err:
                    raise CatalogError(_first_line(err)) from None
            classmap = classify_catalog(catalog, self.config.masking.overrides, memory.findings(catalog))
            # MySQL has no OIDs nor attribute numbers that survive a change: a column is
            # not followed across renames there (by position it could be another one).
            self.service.install(name, catalog, classmap, follow_renames=conn.engine != "mysql")
            self._loaded_at[name] = time.monotonic()
            log.info(
                "catalog loaded",
                extra={"fields": {"connection": name, "relations": len(catalog.relations), "sensitive_columns": len(classmap.columns), "scanned_columns": len(classmap.scan)}},
            )


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


async def _judge(table: str, columns: Sequence[SampledColumn], rows: list[Any]) -> dict[str, ValueFinding]:
    # Detectors are regular expressions over up to rows x columns values: off the event loop.
    return await asyncio.to_thread(classify_table_sample, table, columns, rows)


async def sample(
    aconn: Any,
    catalog: Catalog,
    masking: MaskingConfig,
    name: str,
    memory: ValueMemory,
    fetch: Callable[..., Awaitable[SampleReport]] = fetch_samples,
    errors: tuple[type[Exception], ...] = (psycopg.Error, OSError),
) -> None:
    """Sample ``catalog``'s tables on ``aconn`` (a psycopg connection, or a MySQL query
    runner with ``fetch`` MySQL's ``fetch_samples``) into ``memory``; never raises for
    what one table does (nor for ``errors``), and gives up (keeping what was read) when
    the budget is spent."""
    report = SampleReport()
    run = fetch(
        aconn,
        catalog,
        rows=masking.sample_rows,
        timeout_ms=masking.sample_timeout_ms,
        budget_seconds=masking.sample_budget_seconds,
        priority=memory.priority(),
        classify=_judge,
        report=report,
    )
    limit = masking.sample_budget_seconds + masking.sample_timeout_ms / 1000 + _GRACE_SECONDS
    failed: str | None = None
    try:
        await asyncio.wait_for(run, limit)
    except TimeoutError:
        failed = f"sampling took longer than {limit:g}s"
    except errors as err:
        failed = _first_line(err)
    memory.update(catalog, report, time.monotonic())
    for oid, why in sorted(report.skipped.items()):
        rel = catalog.relations.get(oid)
        where = f"{rel.schema}.{rel.name}" if rel is not None else str(oid)
        log.warning(
            "table not sampled; keeping what its last sample found",
            extra={"fields": {"connection": name, "table": where, "reason": why}},
        )
    fields: dict[str, Any] = {
        "connection": name,
        "sampled": len(report.sampled),
        "skipped": len(report.skipped),
        "with_findings": len(report.findings),
        "seconds": round(report.seconds, 3),
    }
    if failed is not None:
        fields["error"] = failed
        log.warning("value sampling stopped early", extra={"fields": fields})
    else:
        log.info("values sampled", extra={"fields": fields})


async def _read(conn: ConnectionConfig, masking: MaskingConfig, name: str, memory: ValueMemory) -> Catalog:
    kwargs = conn.libpq_kwargs("dbsentry-catalog")
    async with await psycopg.AsyncConnection.connect(autocommit=True, **kwargs) as aconn:  # type: ignore[arg-type]
        catalog = await fetch_catalog(aconn)
        if masking.sample:
            await sample(aconn, catalog, masking, name, memory)
        return catalog


class _StableOids:
    """MySQL relations are numbered in the order one read returns them: renumbered here
    so that a table keeps its number across reads (what the value memory and cached
    plans key on), by schema and name."""

    def __init__(self) -> None:
        self.known: dict[tuple[str, str], int] = {}
        self.next = 1

    def renumber(self, catalog: Catalog) -> Catalog:
        relations: dict[int, Relation] = {}
        for rel in catalog.relations.values():
            key = (rel.schema, rel.name)
            oid = self.known.get(key)
            if oid is None:
                oid = self.known[key] = self.next
                self.next += 1
            relations[oid] = replace(rel, oid=oid)
        return replace(catalog, relations=relations)


async def _read_mysql(
    conn: ConnectionConfig, masking: MaskingConfig, name: str, memory: ValueMemory, oids: _StableOids
) -> Catalog:
    # The MySQL shell's side connection (imported here: the shells import this module).
    from dbsentry.server.mysql_proxy import SideQueryError, side_connection

    try:
        async with side_connection(conn, name) as run:
            catalog = await mysql_catalog.fetch_catalog(run)
            catalog = oids.renumber(catalog)
            if masking.sample:
                await sample(run, catalog, masking, name, memory, mysql_catalog.fetch_samples, (SideQueryError, OSError))
            return catalog
    except SideQueryError as err:
        raise CatalogError(_first_line(err)) from None


def _announce(announce: Callable[[str], None], name: str) -> None:
    try:
        announce(name)
    except Exception as err:  # the control plane is down: its own warning says so
        log.warning("could not tell the other nodes about DDL", extra={"fields": {"connection": name, "error": str(err)[:200]}})

"""The tools on PostgreSQL connections: psycopg to dbsentry's PostgreSQL listener, as the
agent (``dbsentry.approval=fail``: the tools wait for reviewers themselves)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.postgres import types as pg_types
from psycopg.types.string import TextLoader

from dbsentry.agents import statements
from dbsentry.agents.errors import ToolRefused
from dbsentry.agents.wire import (
    CANCEL_GRACE_SECONDS,
    Catalog,
    Login,
    Outcome,
    Statement,
    Where,
    database_refusal,
    timed_out,
)

if TYPE_CHECKING:
    from dbsentry.engines.postgres.session.governance import Governor

log = logging.getLogger("dbsentry.agents")

_TABLES_SQL = """SELECT n.nspname, c.relname, CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table'
 WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table' END,
 a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  AND ($1::text IS NULL OR n.nspname = $1::text)
ORDER BY n.nspname, c.relname, a.attnum"""

_RESOLVE_SQL = """SELECT c.oid::text, n.nspname, c.relname, c.relkind::text, c.reltuples::bigint::text
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass($1::text)"""

_COLUMNS_SQL = """SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull::text,
 pg_catalog.pg_get_expr(d.adbin, d.adrelid)
FROM pg_catalog.pg_attribute a
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"""

_INDEXES_SQL = """SELECT i.relname, x.indisprimary::text, x.indisunique::text, pg_catalog.pg_get_indexdef(x.indexrelid)
FROM pg_catalog.pg_index x JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid
WHERE x.indrelid = $1::oid ORDER BY i.relname"""

_KEYS_SQL = """SELECT conname, contype::text, pg_catalog.pg_get_constraintdef(oid)
FROM pg_catalog.pg_constraint WHERE conrelid = $1::oid AND contype IN ('p', 'u', 'f') ORDER BY conname"""

CATALOG = Catalog(
    tables=_TABLES_SQL,
    resolve=_RESOLVE_SQL,
    columns=_COLUMNS_SQL,
    indexes=_INDEXES_SQL,
    keys=_KEYS_SQL,
    resolve_params=lambda table: [table],
    key_params=lambda row: [row[0]],
    kinds={"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view", "f": "foreign table"},
)


def refusal(err: psycopg.Error, what: str = "the statement") -> ToolRefused:
    """A psycopg error as a tool error: SQLSTATE, the message, the approval it names."""
    diag = err.diag
    state = diag.sqlstate or getattr(err, "sqlstate", None) or "?"
    message = (diag.message_primary or str(err)).strip()
    return database_refusal(state, message, what)


def _text_everything(conn: psycopg.AsyncConnection[Any]) -> None:
    """Every built-in type loads as its text (types without a loader already do)."""
    for info in pg_types:
        conn.adapters.register_loader(info.oid, TextLoader)
        if info.array_oid:
            conn.adapters.register_loader(info.array_oid, TextLoader)


class PostgresSession:
    """One psycopg connection to the proxy's PostgreSQL listener."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    @property
    def usable(self) -> bool:
        return not self.conn.closed and not self.conn.broken

    async def ready(self) -> bool:
        from psycopg.pq import TransactionStatus

        if self.conn.info.transaction_status == TransactionStatus.ACTIVE:
            return False
        await end_transaction(self.conn)  # what a cancelled call may have left open
        return True

    async def run(self, stmt: Statement) -> Outcome:
        if stmt.read_only is None:
            return await self._run(stmt)
        try:
            await self.conn.execute(stmt.read_only + "BEGIN READ ONLY")
        except psycopg.Error as err:
            raise refusal(err) from None
        try:
            return await self._run(stmt)
        finally:
            await end_transaction(self.conn)

    async def _run(self, stmt: Statement) -> Outcome:
        """The server's own statement_timeout first; if it does not answer, a cancel
        request through the proxy."""
        conn, text, params, collector = self.conn, stmt.text, stmt.params, stmt.collector
        out = Outcome()
        cur = psycopg.AsyncRawCursor(conn)
        returns_rows = False
        try:
            async with asyncio.timeout(stmt.timeout_seconds + CANCEL_GRACE_SECONDS):
                if stmt.stream:
                    async for row in cur.stream(text, params):
                        if not returns_rows and cur.description is not None:
                            out.columns, returns_rows = _columns(cur), True
                        if not collector.add(row):
                            break
                else:  # a command tag: nothing to stream (a stray row set is still capped)
                    await cur.execute(text, params)
                    if cur.description is not None:
                        for row in await cur.fetchmany(collector.max_rows + 1):
                            if not collector.add(row):
                                break
                if not returns_rows and cur.description is not None:
                    out.columns, returns_rows = _columns(cur), True
                out.status = cur.statusmessage
                changed = cur.rowcount
        except TimeoutError:
            await conn.cancel_safe()
            raise timed_out(stmt.timeout_seconds) from None
        except psycopg.Error as err:
            if err.diag.sqlstate is None:  # not the server's answer: the client's state is unknown
                await self.close()
            raise refusal(err) from None
        finally:
            if not conn.closed:
                await cur.close()
                await end_transaction(conn)
        out.rows = collector.rows
        out.truncated, out.truncated_by = collector.truncated, collector.truncated_by
        out.row_count = len(out.rows) if returns_rows else max(changed, 0)
        return out

    async def close(self) -> None:
        await self.conn.close()


async def end_transaction(conn: psycopg.AsyncConnection[Any]) -> None:
    """Leave nothing open between calls (a DECLARE, a statement that began a block)."""
    from psycopg.pq import TransactionStatus

    if conn.closed or conn.broken or conn.info.transaction_status == TransactionStatus.IDLE:
        return
    if conn.info.transaction_status == TransactionStatus.ACTIVE:
        return  # still busy (a cancel is on its way); the next call waits for it
    try:
        await conn.execute("ROLLBACK")
    except psycopg.Error as err:
        log.info("MCP wire: rollback failed: %s", err)


def _columns(cur: psycopg.AsyncRawCursor[Any]) -> list[dict[str, str]]:
    out = []
    for col in cur.description or ():
        info = pg_types.get(col.type_code)
        out.append({"name": col.name, "type": info.name if info is not None else str(col.type_code)})
    return out


class PostgresDriver:
    """PostgreSQL connections: the proxy's PostgreSQL listener, pglast for the checks."""

    engine = "postgres"
    catalog = CATALOG

    async def connect(self, login: Login) -> PostgresSession:
        address, connection = login.address, login.connection
        try:
            conn = await psycopg.AsyncConnection.connect(
                host=address.host,
                port=address.port,
                dbname=connection,
                user=login.identity,
                password=login.token,
                sslmode=address.sslmode,
                connect_timeout=max(1, int(login.connect_timeout)),
                application_name=login.application_name,
                options="-c dbsentry.approval=fail",
                autocommit=True,
            )
        except psycopg.OperationalError as err:
            text = str(err).strip().splitlines()[-1] if str(err).strip() else "connection failed"
            raise ToolRefused(f"cannot connect to {connection!r} through dbsentry: {text}") from None
        _text_everything(conn)
        ms = int(login.timeout_seconds * 1000)
        try:  # the proxy may already force a lower one for agents (it refuses raising it)
            await conn.execute(f"SET statement_timeout = {ms}")
        except psycopg.Error as err:
            log.info("statement_timeout not lowered for MCP", extra={"fields": {"connection": connection, "error": str(err)}})
        return PostgresSession(conn)

    def one_statement(self, sql: object, max_bytes: int) -> str:
        return statements.one_statement(sql, max_bytes)

    def returns_rows(self, sql: str) -> bool:
        return statements.returns_rows(sql)

    def explain_text(self, sql: str) -> str:
        return statements.explain_text(sql)

    def verdict(self, governor: Governor, sql: str, who: Where, view: object | None) -> dict[str, object]:
        from dbsentry.engines.postgres.session.governance import classes_from
        from dbsentry.engines.postgres.session.masking import MaskingView
        from dbsentry.policy.cli import verdict_to_dict

        known = view if isinstance(view, MaskingView) else None
        check = governor.check(
            sql,
            who.identity,
            who.connection,
            who.environment,
            functions=known.functions if known is not None else None,
            classes=classes_from(known.catalog, known.classmap) if known is not None else None,
        )
        return dict(verdict_to_dict(check.verdict))

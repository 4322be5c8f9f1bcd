"""The tools' way to the database: dbsentry's own PostgreSQL listener, as the agent.

Each agent (by token) gets one connection per dbsentry connection name, opened on first
use with ``user=<identity>`` and ``password=<token>``: the proxy authenticates it, judges
every statement, masks results, asks for approvals and audits, exactly as for psql.
Values come back as PostgreSQL's text (what psql prints), never as Python objects.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.postgres import types as pg_types
from psycopg.types.string import TextLoader

from dbsentry.agents.errors import ToolRefused
from dbsentry.agents.limits import ResultCollector

log = logging.getLogger("dbsentry.agents")

_APPROVAL_ID = re.compile(r"\b(apr_[a-z0-9]{6,32})\b")
#: After the statement timeout, how long the client waits before it cancels itself.
CANCEL_GRACE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ProxyAddress:
    host: str
    port: int
    sslmode: str = "require"


@dataclass(slots=True)
class Outcome:
    """What one statement did: its columns and rows (cut by the collector), or its status."""

    columns: list[dict[str, str]] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    row_count: int = 0
    truncated: bool = False
    truncated_by: str | None = None
    status: str | None = None


def refusal(err: psycopg.Error, what: str = "the statement") -> ToolRefused:
    """A database error as a tool error: SQLSTATE, the message, the approval it names."""
    diag = err.diag
    state = diag.sqlstate or getattr(err, "sqlstate", None) or "?"
    message = (diag.message_primary or str(err)).strip()
    details: dict[str, object] = {"sqlstate": state, "database_message": message}
    found = _APPROVAL_ID.search(message)
    if found is not None:
        details["approval_request_id"] = found.group(1)
    if state == "57014":
        return ToolRefused(f"{what} was cancelled: it ran past the statement timeout ({message})", **details)
    return ToolRefused(f"{what} was refused or failed: ERROR {state}: {message}", **details)


def _text_everything(conn: psycopg.AsyncConnection[Any]) -> None:
    """Every built-in type loads as its text (types without a loader already do)."""
    for info in pg_types:
        conn.adapters.register_loader(info.oid, TextLoader)
        if info.array_oid:
            conn.adapters.register_loader(info.array_oid, TextLoader)


class Wire:
    """Connections to the proxy, per (token, connection); closed by :meth:`close`.

    Each holds a proxy session (and, once used, an upstream connection), so one unused for
    ``idle_seconds`` is closed, and beyond ``max_connections`` the least recently used goes.
    """

    def __init__(
        self,
        address: ProxyAddress,
        connect_timeout: float = 10.0,
        *,
        idle_seconds: float = 300.0,
        max_connections: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self.idle_seconds = idle_seconds
        self.max_connections = max_connections
        self._clock = clock
        self._conns: dict[tuple[str, str], psycopg.AsyncConnection[Any]] = {}
        self._used: dict[tuple[str, str], float] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def _sweep(self, keep: tuple[str, str]) -> None:
        now = self._clock()
        old = [k for k, at in self._used.items() if k != keep and now - at > self.idle_seconds]
        by_age = sorted((at, k) for k, at in self._used.items() if k != keep and k not in old)
        excess = len(by_age) - (self.max_connections - 1)  # room for ``keep``
        old.extend(k for _, k in by_age[: max(0, excess)])
        for key in old:
            lock = self._locks.get(key)
            if lock is not None and lock.locked():
                continue  # in use right now
            conn = self._conns.get(key)
            self._used.pop(key, None)
            self._locks.pop(key, None)
            if conn is not None:
                await self.discard(conn)

    def lock(self, token: str, connection: str) -> asyncio.Lock:
        key = (hashlib.sha256(token.encode()).hexdigest(), connection)
        return self._locks.setdefault(key, asyncio.Lock())

    async def connection(
        self, identity: str, token: str, connection: str, application_name: str, timeout_seconds: float
    ) -> psycopg.AsyncConnection[Any]:
        key = (hashlib.sha256(token.encode()).hexdigest(), connection)
        await self._sweep(key)
        self._used[key] = self._clock()
        conn = self._conns.get(key)
        if conn is not None and not conn.closed and not conn.broken:
            from psycopg.pq import TransactionStatus

            if conn.info.transaction_status != TransactionStatus.ACTIVE:
                await end_transaction(conn)  # what a cancelled call may have left open
                return conn
            await self.discard(conn)  # still busy with a cancelled statement: start afresh
        try:
            conn = await psycopg.AsyncConnection.connect(
                host=self.address.host,
                port=self.address.port,
                dbname=connection,
                user=identity,
                password=token,
                sslmode=self.address.sslmode,
                connect_timeout=max(1, int(self.connect_timeout)),
                application_name=application_name,
                options="-c dbsentry.approval=fail",
                autocommit=True,
            )
        except psycopg.OperationalError as err:
            text = str(err).strip().splitlines()[-1] if str(err).strip() else "connection failed"
            raise ToolRefused(f"cannot connect to {connection!r} through dbsentry: {text}") from None
        _text_everything(conn)
        ms = int(timeout_seconds * 1000)
        try:  # the proxy may already force a lower one for agents (it refuses raising it)
            await conn.execute(f"SET statement_timeout = {ms}")
        except psycopg.Error as err:
            log.info("statement_timeout not lowered for MCP", extra={"fields": {"connection": connection, "error": str(err)}})
        self._conns[key] = conn
        return conn

    async def run(
        self,
        conn: psycopg.AsyncConnection[Any],
        text: str,
        params: Sequence[str | None] | None,
        collector: ResultCollector,
        timeout_seconds: float,
        *,
        stream: bool = True,
    ) -> Outcome:
        """Run ``text`` (one statement) and read its rows into ``collector``; a statement
        past ``timeout_seconds`` is cancelled upstream (the server's own statement_timeout
        first; if it does not answer, a cancel request through the proxy)."""
        out = Outcome()
        cur = psycopg.AsyncRawCursor(conn)
        returns_rows = False
        try:
            async with asyncio.timeout(timeout_seconds + CANCEL_GRACE_SECONDS):
                if stream:
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
            raise ToolRefused(
                f"the statement was cancelled: it ran past the statement timeout of {timeout_seconds:g} s"
            ) from None
        except psycopg.Error as err:
            if err.diag.sqlstate is None:  # not the server's answer: the client's state is unknown
                await self.discard(conn)
            raise refusal(err) from None
        finally:
            if not conn.closed:
                await cur.close()
                await end_transaction(conn)
        out.rows = collector.rows
        out.truncated, out.truncated_by = collector.truncated, collector.truncated_by
        out.row_count = len(out.rows) if returns_rows else max(changed, 0)
        return out

    async def discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Close ``conn`` and forget it: the next call logs in afresh."""
        for key, held in list(self._conns.items()):
            if held is conn:
                del self._conns[key]
        try:
            await conn.close()
        except Exception as err:  # closing is best effort
            log.debug("MCP wire connection close failed: %s", err)

    async def close(self) -> None:
        for conn in list(self._conns.values()):
            try:
                await conn.close()
            except Exception as err:  # closing is best effort
                log.debug("MCP wire connection close failed: %s", err)
        self._conns.clear()
        self._used.clear()


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

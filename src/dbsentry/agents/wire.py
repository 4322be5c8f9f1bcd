"""The tools' way to the database: dbsentry's own listener for the connection's engine, as
the agent.

Each agent (by token) gets one connection per dbsentry connection name, opened on first
use with the agent's identity as the user and its token as the password: the proxy
authenticates it, judges every statement, masks results, asks for approvals and audits,
exactly as for psql or the mysql client.  Values come back as the database's text (what
psql or the mysql client prints), never as Python objects.

What differs per engine (the client library, the SQL the tools send, how a statement is
cancelled) is a :class:`Driver` (``agents/pg.py``, ``agents/mysql.py``); this module and
the tools are the same for every engine.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from dbsentry.agents.errors import ToolRefused
from dbsentry.agents.limits import ResultCollector

if TYPE_CHECKING:
    from dbsentry.engines.postgres.session.governance import Governor
    from dbsentry.identity.model import Identity

log = logging.getLogger("dbsentry.agents")

_APPROVAL_ID = re.compile(r"\b(apr_[a-z0-9]{6,32})\b")
#: After the statement timeout, how long the client waits before it cancels itself.
CANCEL_GRACE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ProxyAddress:
    """The proxy's listeners the tools log in to: PostgreSQL's, and MySQL's when it runs."""

    host: str
    port: int
    sslmode: str = "require"
    mysql_port: int | None = None


@dataclass(slots=True)
class Outcome:
    """What one statement did: its columns and rows (cut by the collector), or its status."""

    columns: list[dict[str, str]] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    row_count: int = 0
    truncated: bool = False
    truncated_by: str | None = None
    status: str | None = None


def database_refusal(state: str, message: str, what: str = "the statement", **more: object) -> ToolRefused:
    """The database's (or the proxy's) error as a tool error: SQLSTATE, the message, and the
    approval request it names."""
    details: dict[str, object] = {"sqlstate": state, "database_message": message, **more}
    found = _APPROVAL_ID.search(message)
    if found is not None:
        details["approval_request_id"] = found.group(1)
    if state in ("57014", "70100"):
        return ToolRefused(f"{what} was cancelled: it ran past the statement timeout ({message})", **details)
    return ToolRefused(f"{what} was refused or failed: ERROR {state}: {message}", **details)


@dataclass(frozen=True, slots=True)
class Where:
    """Who runs a statement on which connection, in which environment."""

    identity: Identity
    connection: str
    environment: str


@dataclass(frozen=True, slots=True)
class Login:
    """Who logs in to which connection through which listener."""

    address: ProxyAddress
    identity: str
    token: str
    connection: str
    application_name: str
    timeout_seconds: float  # the statement timeout the session should keep
    connect_timeout: float


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement to run: its text (one statement), params, where its rows go, and how
    long it may take; with ``read_only`` (the comment that tags its BEGIN) inside a
    read-only transaction that is rolled back."""

    text: str
    params: Sequence[str | None] | None
    collector: ResultCollector
    timeout_seconds: float
    stream: bool = True
    read_only: str | None = None


def timed_out(timeout_seconds: float) -> ToolRefused:
    return ToolRefused(f"the statement was cancelled: it ran past the statement timeout of {timeout_seconds:g} s")


class Session(Protocol):
    """One connection to the proxy's listener, as one agent, for one connection name."""

    @property
    def usable(self) -> bool:
        """Still open and not broken."""

    async def ready(self) -> bool:
        """Between calls: end what a cancelled call left open; False when it cannot be
        reused (still busy with a cancelled statement)."""

    async def run(self, stmt: Statement) -> Outcome:
        """Run ``stmt`` and read its rows into its collector.  A statement past its timeout
        is cancelled upstream; the database's error is a ToolRefused (:func:`database_refusal`)."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Catalog:
    """The SQL the tools send to describe a connection's tables, for one engine; every
    query's parameters are text, and each returns the columns the tools read.

    - ``tables`` (schema or None) -> schema, table, kind, column, type, not null ('true')
    - ``resolve`` (``resolve_params(table)``) -> key, schema, table, kind, row estimate
    - ``columns``/``indexes``/``keys`` (``key_params(resolved row)``) -> name, type, not
      null, default / name, primary, unique, definition / name, kind (p, u, f), definition
    """

    tables: str
    resolve: str
    columns: str
    indexes: str
    keys: str
    resolve_params: Callable[[str], list[str | None]]
    key_params: Callable[[Sequence[str | None]], list[str | None]]
    kinds: Mapping[str, str]


class Driver(Protocol):
    """One engine: how to log in to its listener, and the SQL the tools speak to it."""

    engine: str
    catalog: Catalog

    async def connect(self, login: Login) -> Session: ...

    def one_statement(self, sql: object, max_bytes: int) -> str:
        """``sql`` if it is text within ``max_bytes`` holding exactly one statement the tools
        take, else ToolRefused."""

    def returns_rows(self, sql: str) -> bool: ...

    def explain_text(self, sql: str) -> str:
        """The EXPLAIN (JSON format, nothing run) of one explainable statement."""

    def verdict(self, governor: Governor, sql: str, who: Where, view: object | None) -> dict[str, object]:
        """The in-process policy's verdict on ``sql`` run by ``who`` (``policy.cli.verdict_to_dict``)."""


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
        drivers: Mapping[str, Driver] | None = None,
    ) -> None:
        self.address = address
        self.connect_timeout = connect_timeout
        self.idle_seconds = idle_seconds
        self.max_connections = max_connections
        self._clock = clock
        self._drivers = dict(drivers) if drivers is not None else default_drivers()
        self._conns: dict[tuple[str, str], Session] = {}
        self._used: dict[tuple[str, str], float] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def driver(self, engine: str) -> Driver:
        found = self._drivers.get(engine)
        if found is None:
            raise ToolRefused(f"the tools do not serve engine {engine!r}")
        return found

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
        self, engine: str, identity: str, token: str, connection: str, application_name: str, timeout_seconds: float
    ) -> Session:
        key = (hashlib.sha256(token.encode()).hexdigest(), connection)
        await self._sweep(key)
        self._used[key] = self._clock()
        conn = self._conns.get(key)
        if conn is not None:
            if conn.usable and await conn.ready():
                return conn
            await self.discard(conn)  # broken, or still busy with a cancelled statement: start afresh
        login = Login(self.address, identity, token, connection, application_name, timeout_seconds, self.connect_timeout)
        conn = await self.driver(engine).connect(login)
        self._conns[key] = conn
        return conn

    async def discard(self, conn: Session) -> None:
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


def default_drivers() -> dict[str, Driver]:
    from dbsentry.agents.mysql import MySQLDriver
    from dbsentry.agents.pg import PostgresDriver

    return {"postgres": PostgresDriver(), "mysql": MySQLDriver()}

"""Connections of dbsentry's own PostgreSQL stores (audit, approvals)."""

from __future__ import annotations

import contextlib
import select
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg


def connect(
    dsn: str, application_name: str, *, connect_timeout: int, statement_timeout_ms: float, search_path: str | None = None
) -> psycopg.Connection[Any]:
    """An autocommit connection with a statement timeout and TCP keepalives, so that a
    store that stops answering is noticed instead of hanging the writer.  ``search_path``
    (a checked identifier) makes unqualified table names those of that schema."""
    options = f"-c statement_timeout={int(statement_timeout_ms)}"
    if search_path is not None:
        options += f" -c search_path={search_path}"
    return psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=connect_timeout,
        options=options,
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        application_name=application_name,
    )


def describe(dsn: str, schema: str) -> str:
    """``postgres:host:port/dbname schema S``, never the password."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"postgres:{info.get('host', '')}:{info.get('port', '')}/{info.get('dbname', '')} schema {schema}"


class Sql:
    """One open connection's statements, SQL with ``?`` placeholders (our statements hold
    no other ``?`` or ``%``)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), params)
            return list(cur.fetchall()) if cur.description is not None else []

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), params)
            return cur.rowcount


def _hung_up(conn: psycopg.Connection[Any]) -> bool:
    """An idle connection with something to read: the server closed it (or said why before
    closing), e.g. after a restart or a network cut.  One poll, no round trip; otherwise the
    first use after an outage would fail although the database is back."""
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class SharedConnection:
    """One connection shared by threads (a lock), opened on first use and opened again
    after an error: a database that was down is used again once it is back, with no
    restart.  Errors come out as ``fail(err)``."""

    def __init__(
        self,
        dsn: str,
        application_name: str,
        *,
        search_path: str,
        fail: Callable[[Exception], Exception],
        connect_timeout: int = 3,
        statement_timeout_ms: int = 5_000,
    ) -> None:
        self._dsn = dsn
        self._app = application_name
        self._search_path = search_path
        self._fail = fail
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = statement_timeout_ms
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is not None and not self._conn.closed and _hung_up(self._conn):
            self._drop()  # the server went away while it was idle: open a new one now
        if self._conn is None or self._conn.closed:
            self._conn = connect(
                self._dsn, self._app, connect_timeout=self._connect_timeout,
                statement_timeout_ms=self._statement_timeout_ms, search_path=self._search_path,
            )
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Sql]:
        """One transaction (commits when the block ends without an error)."""
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    yield Sql(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as err:
                self._drop()
                raise self._fail(err) from err
            except psycopg.Error as err:
                if self._conn is not None and self._conn.broken:
                    self._drop()
                raise self._fail(err) from err

    def close(self) -> None:
        with self._lock:
            self._drop()

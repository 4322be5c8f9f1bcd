"""One small client abstraction for the guardrail tests: run a list of statements in one
session through psql, psycopg (simple protocol, binary results, pipeline mode) or asyncpg,
and get back, per statement, what the client was told.

The five modes exercise both query protocols:

==================  ===================================================================
``psql``            psql reading a script on stdin (simple protocol)
``psycopg``         psycopg, text results; no parameters: simple protocol, else extended
``psycopg-binary``  psycopg with binary results (extended protocol, unnamed statement)
``psycopg-pipeline`` psycopg pipeline mode (extended protocol, Sync after each statement)
``asyncpg``         asyncpg prepared statements (extended protocol, named statements)
==================  ===================================================================

Statements are plain SQL or ``(sql, params)`` with psycopg's ``%s`` placeholders
(converted to ``$n`` for asyncpg).  psql has no bound parameters: use
:data:`PARAM_MODES` for those tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import re
import socket
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
from psycopg.pq import ExecStatus, TransactionStatus

from .pg import PgServer
from .proxy import RunningProxy, run_proxy, write_config


@dataclass(frozen=True)
class SchemaEnv:
    """A running proxy (production, default limits) and a schema of the test's own on the
    real PostgreSQL behind it."""

    proxy: RunningProxy
    pg: PgServer
    s: str  # the schema

    def direct(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.dsn(), autocommit=True)

    def through(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.proxy.dsn(), autocommit=True)


@contextlib.contextmanager
def schema_and_proxy(
    pg: PgServer, directory: Path, prefix: str, objects: Callable[[str], str], cleanup: Sequence[str] = ()
) -> Iterator[SchemaEnv]:
    """``objects(schema)`` run directly in a new schema ``<prefix>_<random>``, and a proxy in
    front; at the end the schema is dropped, then ``cleanup`` run (``{s}``: the schema)."""
    s = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.dsn(), autocommit=True) as c:
        c.execute(objects(s))
    config = write_config(directory, pg)
    try:
        with run_proxy(config) as proxy:
            yield SchemaEnv(proxy, pg, s)
    finally:
        with psycopg.connect(pg.dsn(), autocommit=True) as c:
            c.execute(f"drop schema if exists {s} cascade")
            for sql in cleanup:
                c.execute(sql.replace("{s}", s))


MODES: tuple[str, ...] = ("psql", "psycopg", "psycopg-binary", "psycopg-pipeline", "asyncpg")
#: The modes that can bind parameters (the extended protocol).
PARAM_MODES: tuple[str, ...] = ("psycopg", "psycopg-binary", "psycopg-pipeline", "asyncpg")
#: The modes that use the extended protocol for every statement.
EXTENDED_MODES: tuple[str, ...] = ("psycopg-binary", "psycopg-pipeline", "asyncpg")

Statement = str | tuple[str, Sequence[Any]]
_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
_APR = re.compile(r"\bapr_[0-9a-z]{10}\b")
# ``COPY (query) TO STDOUT``: psycopg and asyncpg run it with their COPY APIs.
_COPY_OUT = re.compile(r"(?is)^\s*copy\s*\((.*)\)\s*to\s+stdout\s*$")


@dataclass
class Login:
    identity: str = "alice@example.com"
    groups: tuple[str, ...] = ("eng",)
    agent: bool = False
    dbname: str = "prod"
    options: str | None = None  # libpq ``options`` (``-c name=value``)
    # Extra startup parameters (asyncpg sends them as they are; libpq clients only know
    # ``options`` and ``application_name``).
    startup: Mapping[str, str] = field(default_factory=dict)


HUMAN = Login()
AGENT = Login("bot@example.com", ("eng",), agent=True)
DBA = Login("dana@example.com", ("dba",))


@dataclass
class Outcome:
    """What the client was told about one statement."""

    sql: str
    sqlstate: str | None = None  # None: it succeeded
    message: str = ""
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    tag: str | None = None  # the command tag (psql: the last line it printed, if any)
    # After the statement: "I", "T", "E"; "B" when the client only tells "in a block"
    # (asyncpg); None when it cannot tell (psql).
    status: str | None = None

    @property
    def ok(self) -> bool:
        return self.sqlstate is None

    @property
    def request_ids(self) -> list[str]:
        return list(dict.fromkeys(_APR.findall(self.message)))

    def __str__(self) -> str:
        if self.ok:
            return f"{self.sql!r}: ok {self.tag or ''} {self.rows[:3]!r} ({self.status})"
        return f"{self.sql!r}: {self.sqlstate} {self.message} ({self.status})"


class ConnectFailed(Exception):
    """The session could not start: ``sqlstate`` and ``message`` of the refusal."""

    def __init__(self, sqlstate: str | None, message: str) -> None:
        super().__init__(f"{sqlstate}: {message}")
        self.sqlstate = sqlstate
        self.message = message


def _text(value: Any) -> Any:
    if isinstance(value, bool):
        return "t" if value else "f"
    if value is None:
        return None
    return str(value)


def _dsn(proxy: RunningProxy, login: Login) -> str:
    extra: dict[str, Any] = {}
    if login.options is not None:
        extra["options"] = login.options
    return proxy.dsn(
        login.identity, groups=login.groups, agent=login.agent, dbname=login.dbname, **extra
    )


def _as_dollar(sql: str) -> str:
    n = 0

    def repl(_: re.Match[str]) -> str:
        nonlocal n
        n += 1
        return f"${n}"

    return re.sub(r"%s", repl, sql).replace("%%", "%")


def run(
    mode: str, proxy: RunningProxy, statements: Sequence[Statement], login: Login = HUMAN
) -> list[Outcome]:
    """Run ``statements`` in one session (autocommit, as the client's own defaults) and
    return one :class:`Outcome` per statement, in order."""
    if mode == "psql":
        return _run_psql(proxy, statements, login)
    if mode.startswith("psycopg"):
        return _run_psycopg(mode, proxy, statements, login)
    if mode == "asyncpg":
        try:
            return asyncio.run(_run_asyncpg(proxy, statements, login))
        except ConnectFailed:
            collect_client_leaks()
            raise
    raise ValueError(f"unknown client mode {mode!r}")


def run_one(mode: str, proxy: RunningProxy, statement: Statement, login: Login = HUMAN) -> Outcome:
    return run(mode, proxy, [statement], login)[0]


# ---------------------------------------------------------------------------- psql

_END = "@@dbsentry-end@@"
_MSG = "@@dbsentry-msg@@"


def _run_psql(proxy: RunningProxy, statements: Sequence[Statement], login: Login) -> list[Outcome]:
    if login.startup:
        raise ValueError("psql cannot send arbitrary startup parameters")
    lines = []
    texts = []
    for st in statements:
        if not isinstance(st, str):
            raise ValueError("psql has no bound parameters; use PARAM_MODES")
        sql = st.strip()
        texts.append(sql)
        # A meta-command (\\d ...) takes no semicolon.
        lines.append(sql if sql.endswith(";") or sql.startswith("\\") else sql + ";")
        lines.append(f"\\echo {_END} :SQLSTATE")
        lines.append(f"\\if :ERROR\n\\echo {_MSG} :LAST_ERROR_MESSAGE\n\\endif")
    done = subprocess.run(
        ["psql", _dsn(proxy, login), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=0"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**_ENV, "LC_ALL": "C"},
    )
    if _END not in done.stdout:
        m = re.search(r"FATAL:\s+(?:([0-9A-Z]{5}): )?(.*)", done.stderr)
        raise ConnectFailed(m.group(1) if m else None, (m.group(2) if m else done.stderr).strip())
    out: list[Outcome] = []
    current: list[str] = []
    pending: Outcome | None = None
    for line in done.stdout.splitlines():
        if line.startswith(_END):
            if pending is not None:
                out.append(pending)
                pending = None
            o = Outcome(texts[len(out)])
            state = line[len(_END) :].strip()
            if state not in ("00000", "") and not state.startswith(":"):  # unset: no query ran
                o.sqlstate = state
            o.rows = [tuple(x.split("|")) for x in current if x != ""]
            o.tag = current[-1] if current else None
            current = []
            if o.ok:
                out.append(o)
            else:
                pending = o
        elif line.startswith(_MSG) and pending is not None:
            pending.message = line[len(_MSG) :].strip()
            out.append(pending)
            pending = None
        else:
            current.append(line)
    if pending is not None:
        out.append(pending)
    assert len(out) == len(texts), (done.stdout, done.stderr)
    return out


# ---------------------------------------------------------------------------- psycopg

_STATUS = {
    TransactionStatus.IDLE: "I",
    TransactionStatus.INTRANS: "T",
    TransactionStatus.INERROR: "E",
    TransactionStatus.ACTIVE: "A",
    TransactionStatus.UNKNOWN: "?",
}


def _run_psycopg(
    mode: str, proxy: RunningProxy, statements: Sequence[Statement], login: Login
) -> list[Outcome]:
    if login.startup:
        raise ValueError("libpq cannot send arbitrary startup parameters; use asyncpg")
    try:
        conn = psycopg.connect(_dsn(proxy, login), autocommit=True)
    except psycopg.OperationalError as err:
        diag = getattr(err, "diag", None)
        sqlstate = diag.sqlstate if diag is not None else None
        raise ConnectFailed(sqlstate, str(err).strip()) from None
    out: list[Outcome] = []
    with conn:
        for st in statements:
            sql, params = (st, None) if isinstance(st, str) else (st[0], tuple(st[1]))
            o = Outcome(sql)
            try:
                if _COPY_OUT.match(sql):
                    cur = conn.cursor()
                    with cur.copy(sql, params) as copy:
                        data = b"".join(bytes(chunk) for chunk in copy)
                    rows = [tuple(line.split("\t")) for line in data.decode().splitlines()]
                elif mode == "psycopg-pipeline":
                    with conn.pipeline() as p:
                        cur = conn.cursor()
                        cur.execute(sql, params)
                        p.sync()
                        rows = cur.fetchall() if cur.description is not None else []
                else:
                    cur = conn.cursor(binary=mode == "psycopg-binary")
                    cur.execute(sql, params)
                    rows = cur.fetchall() if cur.description is not None else []
                o.rows = [tuple(_text(v) for v in r) for r in rows]
                o.tag = cur.statusmessage
            except psycopg.Error as err:
                o.sqlstate = err.diag.sqlstate or "?????"
                o.message = err.diag.message_primary or str(err)
            o.status = _STATUS[conn.info.transaction_status]
            out.append(o)
    return out


# ---------------------------------------------------------------------------- asyncpg


def collect_client_leaks() -> None:
    """asyncpg sometimes leaves the transport of a refused login for the garbage collector,
    which then warns (ResourceWarning) during whichever test runs next.  Collect it now and
    drop that one warning: it is the client library's, not the proxy's."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, ResourceWarning):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        gc.collect()
    finally:
        sys.unraisablehook = previous


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _run_asyncpg(
    proxy: RunningProxy, statements: Sequence[Statement], login: Login
) -> list[Outcome]:
    settings = dict(login.startup)
    if login.options is not None:
        settings["options"] = login.options
    refused: ConnectFailed | None = None
    try:
        conn = await asyncpg.connect(
            host=proxy.host,
            port=proxy.port,
            user=login.identity,
            password=proxy.token(login.identity, login.groups, login.agent),
            database=login.dbname,
            ssl=_tls(),
            timeout=10,
            statement_cache_size=0,
            server_settings=settings or None,
        )
    except asyncpg.PostgresError as err:
        refused = ConnectFailed(err.sqlstate, str(err))
    if refused is not None:
        # Raised outside the except clause: asyncpg's error (whose traceback holds the
        # refused login's transport) is not kept as the context of ConnectFailed, so
        # collect_client_leaks can collect the transport now, not a later test.
        raise refused
    out: list[Outcome] = []
    try:
        for st in statements:
            sql, params = (st, ()) if isinstance(st, str) else (st[0], tuple(st[1]))
            o = Outcome(sql)
            try:
                copy_out = _COPY_OUT.match(sql)
                if copy_out:
                    buf = io.BytesIO()
                    query = copy_out.group(1)
                    o.tag = await conn.copy_from_query(
                        _as_dollar(query) if params else query, *params, output=buf
                    )
                    o.rows = [
                        tuple(line.split("\t")) for line in buf.getvalue().decode().splitlines()
                    ]
                else:
                    stmt = await conn.prepare(_as_dollar(sql) if params else sql)
                    rows = await stmt.fetch(*params)
                    o.rows = [tuple(_text(v) for v in r.values()) for r in rows]
                    o.tag = stmt.get_statusmsg()
            except asyncpg.PostgresError as err:
                o.sqlstate = err.sqlstate
                o.message = str(err)
            o.status = "B" if conn.is_in_transaction() else "I"
            out.append(o)
    finally:
        await conn.close(timeout=10)
    return out


# ---------------------------------------------------------------------------- checks


def any_refused(out: Sequence[Outcome]) -> bool:
    """Whether dbsentry refused any of the outcomes (its own error, not the server's)."""
    return any(o.sqlstate is not None and o.message.startswith("dbsentry:") for o in out)


def shown(out: Sequence[Outcome]) -> str:
    """The outcomes on one line, for an assertion's message."""
    return " | ".join(str(o) for o in out)


def scalar(connect: Callable[[], Any], sql: str) -> int:
    """The integer ``sql`` answers on a connection of ``connect`` (a direct one, say)."""
    with connect() as c:
        row = c.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def refused(o: Outcome, *needles: str, sqlstate: str = "42501") -> None:
    """``o`` is a refusal by dbsentry with ``sqlstate`` whose message names every needle."""
    assert o.sqlstate == sqlstate, f"expected a {sqlstate} refusal, got {o}"
    assert o.message.startswith("dbsentry:"), str(o)
    for needle in needles:
        assert needle in o.message, f"{needle!r} not in {o}"


def row_guard_refused(o: Outcome, changed: int | None = None) -> None:
    """``o`` is the row guard's refusal: the statement ran, was measured and rolled back."""
    refused(o, "rolled back")
    assert (
        "this statement would have changed" in o.message
        or "changed the system catalogs" in o.message
    ), str(o)
    if changed is not None:
        assert f"would have changed {changed} row" in o.message, str(o)


def in_failed_block(o: Outcome) -> None:
    """Right after a refusal inside a block: the block failed, as PostgreSQL fails it."""
    assert o.status in ("E", "B", None), str(o)


def failed_block_answer(o: Outcome) -> None:
    """A statement sent in a failed block gets 25P02."""
    assert o.sqlstate == "25P02", str(o)


def idle(o: Outcome) -> None:
    assert o.status in ("I", None), str(o)


def read_until(sock: Any, last: bytes, count: int = 1) -> list[tuple[bytes, bytes]]:
    """(type, body) of the server's messages on a raw socket, up to the ``count``-th
    message of type ``last`` (or the end of the stream)."""
    out: list[tuple[bytes, bytes]] = []
    buf = b""
    seen = 0
    while True:
        while len(buf) >= 5:
            n = int.from_bytes(buf[1:5], "big", signed=True)
            if len(buf) < n + 1:
                break
            t, body, buf = buf[:1], buf[5 : n + 1], buf[n + 1 :]
            out.append((t, body))
            if t == last:
                seen += 1
                if seen == count:
                    return out
        chunk = sock.recv(65536)
        if not chunk:
            return out
        buf += chunk


def msg(t: bytes, body: bytes = b"") -> bytes:
    """A protocol message of type ``t``."""
    return t + (len(body) + 4).to_bytes(4, "big") + body


def raw_session(proxy: RunningProxy, identity: str = "alice@example.com", timeout: float = 15) -> ssl.SSLSocket:
    """A TLS socket through the proxy, logged in as ``identity`` (group eng), at
    ReadyForQuery: for tests that write the protocol themselves."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    sock.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
    assert sock.recv(1) == b"S"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(sock)
    body = (196608).to_bytes(4, "big") + b"user\0" + identity.encode() + b"\0database\0prod\0\0"
    tls.sendall((len(body) + 4).to_bytes(4, "big") + body)
    read_until(tls, b"R")
    tls.sendall(msg(b"p", proxy.token(identity, ("eng",), False).encode() + b"\0"))
    read_until(tls, b"Z")
    return tls


def libpq_pipeline(conn: psycopg.Connection[Any], batches: Sequence[Sequence[str]]) -> list[tuple[str, str, str]]:
    """Each batch of statements (extended protocol, unnamed statements) and a Sync, all
    batches sent before any answer is read (libpq's pipeline mode); (status, command tag
    with a SELECT's first column, error) for every result, the Syncs' too."""
    out: list[tuple[str, str, str]] = []
    pg = conn.pgconn
    pg.enter_pipeline_mode()
    for batch in batches:
        for sql in batch:
            pg.send_query_params(sql.encode(), None)
        pg.pipeline_sync()
    syncs = 0
    while syncs < len(batches):
        r = pg.get_result()
        if r is None:
            continue
        if r.status == ExecStatus.PIPELINE_SYNC:
            syncs += 1
        tag = (r.command_status or b"").decode()
        if r.status == ExecStatus.TUPLES_OK and r.ntuples:
            tag += " " + repr([(r.get_value(i, 0) or b"").decode() for i in range(r.ntuples)])
        out.append((ExecStatus(r.status).name, tag, (r.error_message or b"").decode().strip()))
    pg.exit_pipeline_mode()
    return out

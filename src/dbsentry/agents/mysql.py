"""The tools on MySQL and MariaDB connections: PyMySQL to dbsentry's MySQL listener
(``listen.mysql``), as the agent, over TLS.

PyMySQL is synchronous: each statement runs in a worker thread while the event loop keeps
the time; past the statement timeout the proxy is sent ``KILL QUERY <the session's proxy
connection id>`` on a side connection of the same agent (the proxy routes it upstream, or
withdraws an approval the statement waits for).  Values are read without PyMySQL's
converters: the text the server sent (what the mysql client prints), binary strings as
text when they are UTF-8 and as ``0x...`` otherwise.  The SQL the tools send is MySQL's:
``information_schema`` for the tables, ``EXPLAIN FORMAT=JSON`` for plans, ``?`` for params
(bound as quoted literals where dbsentry's own MySQL lexer finds the placeholders, so the
proxy judges the text that runs).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pymysql
import pymysql.cursors
from pymysql.constants import CLIENT, FIELD_TYPE, SERVER_STATUS

from dbsentry.agents import statements, wire
from dbsentry.agents.errors import ToolRefused
from dbsentry.agents.limits import ResultCollector

if TYPE_CHECKING:
    from dbsentry.engines.postgres.session.governance import Governor

log = logging.getLogger("dbsentry.agents")

# The protocol's type names (the first of aliases: TINY before CHAR, ENUM before INTERVAL).
_TYPE_NAMES: dict[int, str] = {}
for _name, _code in vars(FIELD_TYPE).items():
    if _name.isupper() and isinstance(_code, int):
        _TYPE_NAMES.setdefault(_code, _name.lower())
# A connection's other statements of these kinds would leave state behind the call.
_TRANSACTION_WORDS = frozenset({"BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "XA", "LOCK", "UNLOCK"})
_ENCODERS_ONLY: dict[Any, Any] = dict(pymysql.converters.encoders)
_EXPLAINABLE = frozenset({"SELECT", "WITH", "INSERT", "REPLACE", "UPDATE", "DELETE", "TABLE"})

_TABLES_SQL = """SELECT c.TABLE_SCHEMA, c.TABLE_NAME,
 CASE t.TABLE_TYPE WHEN 'VIEW' THEN 'view' WHEN 'SYSTEM VIEW' THEN 'view' ELSE 'table' END,
 c.COLUMN_NAME, c.COLUMN_TYPE, IF(c.IS_NULLABLE = 'NO', 'true', 'false')
FROM information_schema.COLUMNS c JOIN information_schema.TABLES t
 ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME
WHERE c.TABLE_SCHEMA = COALESCE(?, DATABASE())
ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION"""

_RESOLVE_SQL = """SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME), TABLE_SCHEMA, TABLE_NAME,
 CASE TABLE_TYPE WHEN 'VIEW' THEN 'v' WHEN 'SYSTEM VIEW' THEN 'v' ELSE 'r' END, TABLE_ROWS
FROM information_schema.TABLES WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?"""

_COLUMNS_SQL = """SELECT COLUMN_NAME, COLUMN_TYPE, IF(IS_NULLABLE = 'NO', 'true', 'false'), COLUMN_DEFAULT
FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION"""

_INDEXES_SQL = """SELECT INDEX_NAME, IF(INDEX_NAME = 'PRIMARY', 'true', 'false'), IF(MIN(NON_UNIQUE) = 0, 'true', 'false'),
 CONCAT(IF(MIN(NON_UNIQUE) = 0, 'UNIQUE ', ''), 'INDEX ', INDEX_NAME, ' (',
  GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX SEPARATOR ', '), ')')
FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?
GROUP BY INDEX_NAME ORDER BY INDEX_NAME"""

_KEYS_SQL = """SELECT k.CONSTRAINT_NAME, CASE c.CONSTRAINT_TYPE WHEN 'PRIMARY KEY' THEN 'p' WHEN 'UNIQUE' THEN 'u' ELSE 'f' END,
 CONCAT(c.CONSTRAINT_TYPE, ' (', GROUP_CONCAT(k.COLUMN_NAME ORDER BY k.ORDINAL_POSITION SEPARATOR ', '), ')',
  IF(c.CONSTRAINT_TYPE = 'FOREIGN KEY', CONCAT(' REFERENCES ', MAX(k.REFERENCED_TABLE_SCHEMA), '.',
   MAX(k.REFERENCED_TABLE_NAME), ' (', GROUP_CONCAT(k.REFERENCED_COLUMN_NAME ORDER BY k.ORDINAL_POSITION SEPARATOR ', '),
   ')'), ''))
FROM information_schema.TABLE_CONSTRAINTS c JOIN information_schema.KEY_COLUMN_USAGE k
 ON k.CONSTRAINT_SCHEMA = c.CONSTRAINT_SCHEMA AND k.TABLE_NAME = c.TABLE_NAME AND k.CONSTRAINT_NAME = c.CONSTRAINT_NAME
WHERE c.TABLE_SCHEMA = ? AND c.TABLE_NAME = ? AND c.CONSTRAINT_TYPE IN ('PRIMARY KEY', 'UNIQUE', 'FOREIGN KEY')
GROUP BY k.CONSTRAINT_NAME, c.CONSTRAINT_TYPE ORDER BY k.CONSTRAINT_NAME"""


def _split_table(table: str) -> list[str | None]:
    """``db.t`` or ``t`` (backticks allowed) as [database or None for the current one, table]."""
    parts = [p.strip().strip("`") for p in table.split(".", 1)]
    return [parts[0], parts[1]] if len(parts) == 2 else [None, parts[0]]


CATALOG = wire.Catalog(
    tables=_TABLES_SQL,
    resolve=_RESOLVE_SQL,
    columns=_COLUMNS_SQL,
    indexes=_INDEXES_SQL,
    keys=_KEYS_SQL,
    resolve_params=_split_table,
    key_params=lambda row: [row[1], row[2]],
    kinds={"r": "table", "v": "view"},
)


def _refusal(err: pymysql.err.MySQLError) -> ToolRefused:
    """A PyMySQL error as a tool error, with the code and SQLSTATE the server (or the proxy) sent."""
    code = err.args[0] if err.args and isinstance(err.args[0], int) else None
    message = str(err.args[1]) if len(err.args) > 1 else str(err)
    state = getattr(err, "sqlstate", None) or "HY000"
    return wire.database_refusal(state, message, error_code=code)


def _client_side(err: pymysql.err.MySQLError) -> bool:
    """Not the server's answer (lost connection, protocol trouble): the session's state is unknown."""
    code = err.args[0] if err.args and isinstance(err.args[0], int) else 0
    return not isinstance(err, pymysql.err.ProgrammingError | pymysql.err.DataError | pymysql.err.IntegrityError) and (
        code == 0 or 2000 <= code < 3000
    )


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + bytes(value).hex()
    return str(value)


def _tls(sslmode: str) -> ssl.SSLContext | None:
    """TLS to the proxy as libpq's ``sslmode`` says: not verified for ``require`` (the proxy
    is local and its certificate may be self-signed), verified for ``verify-*``."""
    if sslmode == "disable":
        return None
    ctx = ssl.create_default_context()
    if not sslmode.startswith("verify"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _TlsFirst(pymysql.connections.Connection):
    """A PyMySQL connection that, asked for TLS, refuses a listener not offering it before
    anything secret is sent (PyMySQL before 1.2 would go on in plaintext)."""

    def _request_authentication(self) -> None:
        if getattr(self, "ctx", None) is not None and not int(getattr(self, "server_capabilities", 0)) & CLIENT.SSL:
            raise pymysql.err.OperationalError(2026, "the proxy's MySQL listener does not offer TLS")
        super()._request_authentication()  # type: ignore[misc]


def _login(login: wire.Login, database: str | None, program: str) -> pymysql.Connection[Any]:
    address = login.address
    if address.mysql_port is None:
        raise ToolRefused("this proxy has no MySQL listener (listen.mysql): MySQL connections are not served")
    tls = _tls(address.sslmode)
    try:
        conn = _TlsFirst(
            host=address.host,
            port=address.mysql_port,
            user=login.identity,
            password=login.token,
            database=database,
            ssl=tls,
            connect_timeout=max(1.0, login.connect_timeout),
            program_name=program,
            charset="utf8mb4",
            autocommit=True,
            conv=_ENCODERS_ONLY,  # no decoders: values stay the server's text
            ssl_disabled=tls is None,
        )
    except pymysql.err.MySQLError as err:
        text = str(err.args[1]) if len(err.args) > 1 else str(err)
        raise ToolRefused(f"cannot connect to {database or 'the MySQL listener'!r} through dbsentry: {text}") from None
    if tls is not None and not isinstance(getattr(conn, "_sock", None), ssl.SSLSocket):
        conn.close()  # never without TLS when TLS was asked for
        raise ToolRefused("the proxy's MySQL listener did not take TLS; the tools do not log in without it")
    return conn


def bind(conn: pymysql.Connection[Any], sql: str, params: Sequence[str | None] | None) -> str:
    """``sql`` with each ``?`` placeholder (as dbsentry's MySQL lexer finds them: not in
    strings, identifiers or comments) replaced by its param as a quoted literal."""
    if params is None:
        return sql
    from dbsentry.engines.mysql.sql.lexing import tokens
    from dbsentry.governance.facts import AnalysisRefused
    from dbsentry.governance.text import OTHER

    try:
        marks = [t for t in tokens(sql) if t.kind == OTHER and sql[t.start : t.end] == "?"]
    except AnalysisRefused as err:
        raise ToolRefused(f"the SQL does not parse: {err}") from None
    if len(marks) != len(params):
        raise ToolRefused(f"the SQL has {len(marks)} ? placeholders and params has {len(params)} values")
    out = sql
    for mark, value in zip(reversed(marks), reversed(params), strict=True):
        out = out[: mark.start] + ("NULL" if value is None else conn.escape(value)) + out[mark.end :]
    return out


class MySQLSession:
    """One PyMySQL connection to the proxy's MySQL listener."""

    def __init__(self, conn: pymysql.Connection[Any], login: wire.Login) -> None:
        self.conn = conn
        self._login = login  # the side connection of a KILL QUERY logs in the same way
        self._busy: asyncio.Future[Any] | None = None  # a cancelled statement's thread, still running

    @property
    def usable(self) -> bool:
        return bool(self.conn.open)

    async def ready(self) -> bool:
        # every call ends its own transaction (``_execute``); only a statement still running stops reuse
        return self._busy is None or self._busy.done()

    async def run(self, stmt: wire.Statement) -> wire.Outcome:
        sql = bind(self.conn, stmt.text, stmt.params)
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(None, self._execute, sql, stmt.collector, stmt.read_only)
        try:
            return await asyncio.wait_for(asyncio.shield(work), stmt.timeout_seconds)
        except asyncio.CancelledError:  # the call was cancelled: the thread still owns the connection
            self._abandon(work)
            raise
        except TimeoutError:
            await self._cancel(work)
            raise wire.timed_out(stmt.timeout_seconds) from None
        except pymysql.err.MySQLError as err:
            if _client_side(err):
                await self.close()
            raise _refusal(err) from None

    def _execute(self, sql: str, collector: ResultCollector, read_only: str | None) -> wire.Outcome:
        conn = self.conn
        out = wire.Outcome()
        try:
            if read_only is not None:
                conn.query(read_only + "START TRANSACTION READ ONLY")
            cur = conn.cursor(pymysql.cursors.SSCursor)  # unbuffered: rows read as kept
            cur.execute(sql)
            if cur.description is not None:
                out.columns = [{"name": d[0], "type": _TYPE_NAMES.get(int(d[1]), str(d[1]))} for d in cur.description]
                while (row := cur.fetchone()) is not None and collector.add([_text(v) for v in row]):
                    pass
                out.row_count = len(collector.rows)
                out.status = f"{out.row_count} rows in set"
            else:
                out.row_count = max(cur.rowcount, 0)
                out.status = f"Query OK, {out.row_count} rows affected"
            if collector.truncated:
                # The rest is not read: the connection is closed under it (the proxy kills the
                # statement of a client that leaves), and the next call logs in afresh.
                result = getattr(cur, "_result", None)
                if result is not None:
                    result.unbuffered_active = False  # nothing more is read from it (not even when collected)
                conn._force_close()  # type: ignore[attr-defined]
            else:
                cur.close()
        finally:
            if conn.open and int(getattr(conn, "server_status", 0)) & SERVER_STATUS.SERVER_STATUS_IN_TRANS:
                conn.rollback()  # nothing stays open between calls (autocommit=0, a read-only block)
        out.rows = collector.rows
        out.truncated, out.truncated_by = collector.truncated, collector.truncated_by
        return out

    async def _cancel(self, work: asyncio.Future[wire.Outcome]) -> None:
        """KILL QUERY of this session's proxy connection id, on a side connection of the same
        agent; a statement that does not stop leaves the session to be discarded."""
        thread_id = int(self.conn.thread_id())  # type: ignore[no-untyped-call]

        def kill() -> None:
            side = _login(self._login, None, "dbsentry-mcp cancel")
            try:
                side.query(f"KILL QUERY {int(thread_id)}")
            finally:
                side.close()

        try:
            await asyncio.to_thread(kill)
        except (ToolRefused, pymysql.err.MySQLError, OSError) as err:
            log.warning("MCP wire: KILL QUERY failed: %s", getattr(err, "message", err))
        try:
            await asyncio.wait_for(asyncio.shield(work), wire.CANCEL_GRACE_SECONDS)
        except TimeoutError:
            self._abandon(work)
        except Exception as err:  # the statement's own error (1317 interrupted): it stopped
            log.debug("MCP wire: cancelled statement ended: %s", err)

    def _abandon(self, work: asyncio.Future[wire.Outcome]) -> None:
        """Leave ``work`` running in its thread; the session is not reused (``ready``) but closed."""
        self._busy = work
        work.add_done_callback(lambda f: f.cancelled() or f.exception())  # its error is not wanted

    async def close(self) -> None:
        if self._busy is not None and not self._busy.done():
            try:  # the thread still reads: end the socket under it
                self.conn._force_close()  # type: ignore[attr-defined]
            except Exception as err:  # best effort
                log.debug("MCP wire: force close failed: %s", err)
            return
        if self.conn.open:
            await asyncio.to_thread(self.conn.close)


class MySQLDriver:
    """MySQL and MariaDB connections: the proxy's MySQL listener, dbsentry's MySQL lexer."""

    engine = "mysql"
    catalog = CATALOG

    async def connect(self, login: wire.Login) -> MySQLSession:
        conn = await asyncio.to_thread(_login, login, login.connection, login.application_name)
        return MySQLSession(conn, login)

    def one_statement(self, sql: object, max_bytes: int) -> str:
        text = statements.checked_text(sql, max_bytes)
        first = _first_words(text)
        if first[0] in _TRANSACTION_WORDS or first[:2] == ["SET", "AUTOCOMMIT"]:
            raise ToolRefused(statements.TRANSACTION_CONTROL)
        if first[0] == "LOAD":
            raise ToolRefused("LOAD DATA/XML is not taken through MCP; nothing ran")
        return text

    def returns_rows(self, sql: str) -> bool:
        return True  # the server's answer says (a result set or OK); rows are read as kept either way

    def explain_text(self, sql: str) -> str:
        first = _first_words(sql)[0]
        if first not in _EXPLAINABLE and first != "(":
            raise ToolRefused(
                f"explain shows plans of SELECT, INSERT, REPLACE, UPDATE and DELETE; this is a {first.title()} statement"
            )
        text = f"EXPLAIN FORMAT=JSON {sql.rstrip().rstrip(';')}"
        if _first_words(text)[:5] != ["EXPLAIN", "FORMAT", "=", "JSON", first]:
            raise ToolRefused("the SQL cannot be explained on its own")
        return text

    def verdict(self, governor: Governor, sql: str, who: wire.Where, view: object | None) -> dict[str, object]:
        from dbsentry.engines.mysql.sql.verdict import evaluate_sql
        from dbsentry.policy.cli import verdict_to_dict
        from dbsentry.policy.engine import EvalContext

        ctx = EvalContext(who.identity, who.connection, who.environment, governor.clock())
        return dict(verdict_to_dict(evaluate_sql(governor.policy, sql, ctx)))


def _first_words(sql: str) -> list[str]:
    """The first code tokens of the one statement in ``sql`` (upper case), as dbsentry's
    MySQL lexer reads it; refuses text it does not read and more than one statement."""
    from dbsentry.engines.mysql.sql.lexing import split, tokens
    from dbsentry.governance.facts import AnalysisRefused
    from dbsentry.governance.text import COMMENT

    try:
        parts = split(sql, tokens(sql))
    except AnalysisRefused as err:
        raise ToolRefused(f"the SQL does not parse: {err}") from None
    statements.check_count(len(parts))
    code = [t for t in parts[0][2] if t.kind != COMMENT]
    return [sql[t.start : t.end].upper() for t in code[:6]]

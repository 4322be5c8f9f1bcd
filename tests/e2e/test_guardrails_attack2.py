"""Second attack round on the row guard, least privilege and settings, end to end.

Every test here is an attack that should be refused (or, for the hangs, answered).  Where
a test fails, it found a hole; the module docstring of each section says what the hole is.
Every test checks the database directly, not only what the client was told.

Several attacks need control of the wire that no driver gives (a batch left unsynced, a
portal bound and then its statement replaced): :class:`Wire` is a minimal PostgreSQL
protocol client over TLS for those.

The schema objects exist before the proxy starts, as they would in a real database, so the
proxy's catalog knows them (the staleness tests change them afterwards, on purpose).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg
import pytest

from support.guard_clients import AGENT, HUMAN, Login, refused, run
from support.pg import PgServer, ensure_postgres_fdw
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

ROWS = 40
HUGE_ROWS = 12_000  # over the agents' row cap (10,000)
# How long a raw-protocol test waits for an answer the proxy owes before calling it a hang.
ANSWER_SECONDS = 4.0


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    pg: PgServer
    s: str
    role: str  # the upstream role of the "roled" connection
    fdw: bool

    @property
    def v(self) -> str:
        return f"{self.s}.victim"

    def direct(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.dsn(), autocommit=True)


def _objects(s: str, role: str) -> str:
    v = f"{s}.victim"
    children = "".join(
        f"create table {s}.inh_{i} () inherits ({s}.inh);"
        f"insert into {s}.inh_{i} select g, 'c' from generate_series({i * 9}, {i * 9 + 8}) g;"
        for i in range(10)
    )
    return f"""
    create role {role} nologin;
    create schema {s};
    grant usage on schema {s} to {role};
    create table {v} (id int primary key, note text);
    create table {s}.scratch (id int);
    create table {s}.plain (id int);
    create table {s}.huge (id int, secret text);
    insert into {s}.huge select g, md5(g::text) from generate_series(1, {HUGE_ROWS}) g;

    create function {s}.wipe() returns int language plpgsql as
      $$ begin delete from {v}; return 1; end $$;
    -- Replaced by a direct connection in the staleness test, after the proxy read it.
    create function {s}.safe(x int) returns int language sql immutable as $$ select x + 1 $$;

    create function {s}.trg_wipe() returns trigger language plpgsql as
      $$ begin delete from {v}; return new; end $$;
    -- The corpus shows INSERT INTO log is refused (an insert trigger wipes the victim).
    create table {s}.log (id serial primary key, msg text);
    create trigger log_wipe after insert on {s}.log for each row execute function {s}.trg_wipe();
    -- A deferred constraint trigger runs at COMMIT, after the guard's last measurement.
    create table {s}.deferred (id int);
    create constraint trigger deferred_wipe after insert on {s}.deferred
      deferrable initially deferred for each row execute function {s}.trg_wipe();

    -- An IMMUTABLE function may call a VOLATILE one; an index expression runs it on
    -- INSERT, REINDEX and ANALYZE, and the catalog's "code of a table" has no indexes.
    create function {s}.imm_wipe(x int) returns int language plpgsql immutable as
      $$ begin perform {s}.wipe(); return x; end $$;
    create table {s}.indexed (id int);
    insert into {s}.indexed values (1);
    create index indexed_expr on {s}.indexed ({s}.imm_wipe(id));

    -- A STABLE PL/pgSQL helper with dynamic SQL (a common "count rows where" utility):
    -- opaque to the catalog, allowed for agents.
    create function {s}.count_where(tbl text, cond text) returns bigint language plpgsql stable as
      $$ declare n bigint; begin execute format('select count(*) from %s where %s', tbl, cond) into n; return n; end $$;

    -- Inheritance: ten children of nine rows each (under min_rows_for_fraction each).
    create table {s}.inh (id int, note text);
    {children}

    grant select, insert, update, delete on all tables in schema {s} to {role};
    grant execute on all functions in schema {s} to {role};
    """


def _foreign_table(c: psycopg.Connection[Any], s: str, pg: PgServer) -> bool:
    if not ensure_postgres_fdw(c, pg):
        return False
    opts = f"host '{pg.host}', port '{pg.port}', dbname '{pg.dbname}'"
    c.execute(f"create server {s}_loop foreign data wrapper postgres_fdw options ({opts})")
    password = f", password '{pg.password}'" if pg.password else ""
    c.execute(
        f"create user mapping for current_user server {s}_loop options (user '{pg.user}'{password})"
    )
    c.execute(f"create table {s}.remote_rows (id int primary key, note text)")
    c.execute(
        f"create foreign table {s}.remote (id int, note text) server {s}_loop "
        f"options (schema_name '{s}', table_name 'remote_rows')"
    )
    return True


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tag = uuid.uuid4().hex[:10]
    s = f"ga2_{tag}"
    role = f"ga2_{tag}_app"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        c.execute(_objects(s, role))
        fdw = _foreign_table(c, s, pg_server)
    base: dict[str, Any] = {
        "host": pg_server.host,
        "port": pg_server.port,
        "database": pg_server.dbname,
        "user": pg_server.user,
    }
    if pg_server.password:
        base["password"] = pg_server.password
    config = write_config(
        tmp_path_factory.mktemp("guard_attack2"),
        pg_server,
        connections={
            "roled": {
                **base,
                "environment": "production",
                "roles": {"default": role, "agent": role},
            }
        },
    )
    try:
        with run_proxy(config) as proxy:
            yield Env(proxy, pg_server, s, role, fdw)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"drop server if exists {s}_loop cascade")
            c.execute(f"drop schema if exists {s} cascade")
            c.execute(f"drop owned by {role} cascade")
            c.execute(f"drop role if exists {role}")


@pytest.fixture
def victim(env: Env) -> str:
    with env.direct() as c:
        c.execute(f"truncate {env.v}")
        c.execute(f"insert into {env.v} select g, 'n' || g from generate_series(1, {ROWS}) g")
    return env.v


def intact(env: Env, table: str | None = None, n: int = ROWS) -> None:
    with env.direct() as c:
        rows = c.execute(f"select id, note from {table or env.v} order by id").fetchall()
    assert rows == [(i, f"n{i}") for i in range(1, n + 1)], (
        f"{table or env.v} has {len(rows)} of its {n} rows: the attack changed it"
    )


def fmt(env: Env, sql: str) -> str:
    return sql.format(v=env.v, s=env.s)


# ---------------------------------------------------------------------------- raw protocol


def _msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def _cstr(s: str) -> bytes:
    return s.encode() + b"\x00"


def Query(sql: str) -> bytes:
    return _msg(b"Q", _cstr(sql))


def Parse(name: str, sql: str) -> bytes:
    return _msg(b"P", _cstr(name) + _cstr(sql) + struct.pack("!H", 0))


def Bind(portal: str, statement: str, params: tuple[str, ...] = ()) -> bytes:
    body = _cstr(portal) + _cstr(statement) + struct.pack("!HH", 0, len(params))
    for p in params:
        raw = p.encode()
        body += struct.pack("!i", len(raw)) + raw
    return _msg(b"B", body + struct.pack("!H", 0))


def Execute(portal: str = "", rows: int = 0) -> bytes:
    return _msg(b"E", _cstr(portal) + struct.pack("!I", rows))


def Close(kind: str, name: str) -> bytes:
    return _msg(b"C", kind.encode() + _cstr(name))


SYNC = _msg(b"S")
FLUSH = _msg(b"H")


class Wire:
    """A PostgreSQL protocol client that sends exactly the bytes it is given."""

    def __init__(self, env: Env, login: Login = HUMAN, dbname: str = "prod") -> None:
        raw = socket.create_connection((env.proxy.host, env.proxy.port), timeout=10)
        raw.sendall(struct.pack("!II", 8, 80877103))
        assert raw.recv(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(raw)
        params = _cstr("user") + _cstr(login.identity) + _cstr("database") + _cstr(dbname) + b"\x00"
        self.sock.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
        self.buf = b""
        t, _ = self.read()
        assert t == b"R"
        token = env.proxy.token(login.identity, login.groups, login.agent)
        self.sock.sendall(_msg(b"p", _cstr(token)))
        self.until_ready()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, timeout: float = 10) -> tuple[bytes, bytes]:
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 5:
                n = struct.unpack("!I", self.buf[1:5])[0]
                if len(self.buf) >= 1 + n:
                    t, body = self.buf[:1], self.buf[5 : 1 + n]
                    self.buf = self.buf[1 + n :]
                    return t, body
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the proxy closed the connection")
            self.buf += data

    def until(
        self, stop: bytes, count: int = 1, timeout: float = ANSWER_SECONDS
    ) -> list[tuple[bytes, bytes]]:
        """Messages up to the ``count``-th of type ``stop``; fails the test on a hang."""
        out: list[tuple[bytes, bytes]] = []
        deadline = time.monotonic() + timeout
        seen = 0
        while seen < count:
            left = deadline - time.monotonic()
            try:
                t, body = self.read(max(left, 0.01))
            except TimeoutError:
                pytest.fail(f"no answer within {timeout}s (a hang); got only {describe(out)}")
            out.append((t, body))
            if t == stop:
                seen += 1
        return out

    def until_ready(
        self, count: int = 1, timeout: float = ANSWER_SECONDS
    ) -> list[tuple[bytes, bytes]]:
        return self.until(b"Z", count, timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(_msg(b"X"))
        self.sock.close()


def describe(msgs: list[tuple[bytes, bytes]]) -> str:
    out = []
    for t, body in msgs:
        if t == b"E":
            fields = {
                x[:1].decode(): x[1:].decode(errors="replace") for x in body.split(b"\x00") if x
            }
            out.append(f"Error[{fields.get('C')}: {fields.get('M', '')[:80]}]")
        elif t == b"C":
            out.append(f"Complete[{body.rstrip(bytes(1)).decode()}]")
        elif t == b"Z":
            out.append(f"Ready[{body.decode()}]")
        else:
            out.append(t.decode())
    return " ".join(out)


# ============================================================ 1. SQL text run by a built-in


# ts_rewrite(query tsquery, select text) runs its second argument as SQL (through SPI), like
# query_to_xml or ts_stat, which the baseline flags as dynamic SQL; ts_rewrite is not on that
# list.  The statement shows only a built-in: nothing is guarded, nothing is refused.
def _ts_rewrite(inner: str) -> str:
    quoted = inner.replace("'", "''")
    return f"select ts_rewrite('a'::tsquery, '{quoted}')"


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg", "psql"])
def test_ts_rewrite_runs_a_wipe_unguarded(env: Env, victim: str, mode: str) -> None:
    o = run(
        mode, env.proxy, [_ts_rewrite(fmt(env, "select {s}.wipe()::text::tsquery, 'b'::tsquery"))]
    )[0]
    assert o.sqlstate is not None, f"a wipe hidden in ts_rewrite's query text ran: {o}"
    intact(env)


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_agent_leaves_read_only_through_ts_rewrite(env: Env, victim: str, mode: str) -> None:
    """set_config is allowed in a read-only transaction: an agent turns its session
    read-write (and its statement timeout off), then runs a writing function."""
    out = run(
        mode,
        env.proxy,
        [
            _ts_rewrite(
                "select set_config('default_transaction_read_only', 'off', false)::tsquery, 'b'::tsquery"
            ),
            _ts_rewrite(
                "select set_config('statement_timeout', '0', false)::tsquery, 'b'::tsquery"
            ),
            "show default_transaction_read_only",
            _ts_rewrite(fmt(env, "select {s}.wipe()::text::tsquery, 'b'::tsquery")),
        ],
        AGENT,
    )
    show = out[2]
    assert show.rows in ([("on",)], []), f"the agent's session is read-write now: {show}"
    intact(env)


def test_setting_off_the_allow_list_through_ts_rewrite(env: Env) -> None:
    """session_replication_role = replica switches triggers and foreign keys off."""
    out = run(
        "psycopg",
        env.proxy,
        [
            _ts_rewrite(
                "select set_config('session_replication_role', 'replica', false)::tsquery, 'b'::tsquery"
            ),
            "show session_replication_role",
        ],
    )
    assert out[1].rows == [("origin",)], f"a setting off the allow-list was changed: {out[1]}"


def test_role_lock_through_ts_rewrite(env: Env) -> None:
    """Where ``roles`` is configured the upstream role cannot change."""
    out = run(
        "psycopg",
        env.proxy,
        [
            "select current_user",
            _ts_rewrite(
                f"select set_config('role', '{env.pg.user}', false)::tsquery, 'b'::tsquery"
            ),
            "select current_user",
        ],
        Login(dbname="roled"),
    )
    assert out[0].rows == [(env.role,)], str(out[0])
    assert out[2].rows == [(env.role,)], f"the session switched role: {out[2]}"


# ============================================================ 2. the guard's own statement


def test_guard_statistics_statement_can_be_replaced(env: Env, victim: str) -> None:
    """The guard's statistics query is a prepared statement of the session, listed in
    pg_prepared_statements; the client deallocates it and prepares one of its own under
    the same name that returns no rows: every statement then 'changed nothing'.  (A plain
    DELETE is still caught by its CommandComplete count; a CTE's tag is SELECT.)"""
    with psycopg.connect(env.proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"update {env.v} set note = note where id = 1")  # prepares the guard's query
        names = [r[0] for r in conn.execute("select name from pg_prepared_statements")]
        assert names, "the guard prepared nothing"
        for name in names:
            for sql in (f'deallocate "{name}"', f'prepare "{name}" as select 1 where false'):
                # refusing to touch the guard's statement is one way to hold
                with contextlib.suppress(psycopg.Error):
                    conn.execute(sql)
        with contextlib.suppress(psycopg.Error):
            conn.execute(
                f"with d as (delete from {env.v} where id > 0 returning 1) select count(*) from d"
            )
    intact(env)


# ============================================================ 3. portals and prepared statements


@pytest.mark.parametrize(
    "batch",
    [
        # The unnamed statement is replaced by a later Parse; the portal keeps the DELETE.
        lambda v: (
            Parse("", f"delete from {v} where id > $1")
            + Bind("p", "", ("-1",))
            + Parse("", "select 1")
            + Execute("p")
            + SYNC
        ),
        # A named statement is closed and parsed again under its name.
        lambda v: (
            Parse("s", f"delete from {v} where id > $1")
            + Bind("p", "s", ("-1",))
            + Close("S", "s")
            + Parse("s", "select 1")
            + Execute("p")
            + SYNC
        ),
    ],
    ids=["reparse-unnamed", "close-and-reparse-named"],
)
def test_portal_runs_the_statement_it_was_bound_to(env: Env, victim: str, batch: Any) -> None:
    """An Execute is judged by the statement now under the portal's statement name, not by
    the one the portal was bound to."""
    wire = Wire(env)
    try:
        wire.send(batch(env.v))
        answers = wire.until_ready()
    finally:
        wire.close()
    intact(env)
    assert any(t == b"E" for t, _ in answers), describe(answers)


# ============================================================ 4. the server skips to Sync


def _failed_batch(wire: Wire) -> None:
    """An extended-protocol request that fails, flushed but not synced: the server reports
    the error now and skips everything up to the next Sync."""
    wire.send(Parse("", "select 1/0") + Bind("", "") + Execute("") + FLUSH)
    got = wire.until(b"E")
    assert b"22012" in got[-1][1], describe(got)


def test_sync_and_wipe_in_one_chunk_after_an_error(env: Env, victim: str) -> None:
    """The session remembers 'the server skips to Sync' until the ReadyForQuery arrives, but
    the client's Sync already ended the skip: an Execute sent right after it is not guarded."""
    wire = Wire(env)
    try:
        _failed_batch(wire)
        wire.send(
            SYNC
            + Parse("", f"delete from {env.v} where id > $1")
            + Bind("", "", ("0",))
            + Execute("")
            + SYNC
        )
        answers = wire.until_ready(2)
    finally:
        wire.close()
    intact(env)
    assert any(b"dbsentry" in body for t, body in answers if t == b"E"), describe(answers)


def test_query_while_the_server_skips_to_sync(env: Env, victim: str) -> None:
    """PostgreSQL discards a Query sent while it skips to Sync.  The guard wraps it anyway;
    its own Sync ends the skip, so the Query runs outside the guard's BEGIN, in autocommit,
    and the session never answers again."""
    wire = Wire(env)
    try:
        wire.send(Query(f"update {env.v} set note = note where id = 1"))
        wire.until_ready()
        _failed_batch(wire)
        wire.send(Query(f"delete from {env.v} where id > 0"))
        time.sleep(0.5)
        intact(env)
        wire.send(SYNC)
        wire.until_ready()  # PostgreSQL answers the Sync
    finally:
        wire.close()
    intact(env)


def test_stale_block_state_after_an_error(env: Env, victim: str) -> None:
    """In a block, a failed unsynced batch, then Sync, ROLLBACK and a wipe in one chunk: the
    session still believes the block is open (its last ReadyForQuery said T), wraps the wipe
    as a statement inside a block, and the wipe commits by itself; the client is told it was
    rolled back and that its block failed."""
    wire = Wire(env)
    try:
        wire.send(Query("begin"))
        wire.until_ready()
        _failed_batch(wire)
        wire.send(SYNC + Query("rollback") + Query(f"delete from {env.v} where id > 0"))
        wire.until_ready(3)
    finally:
        wire.close()
    intact(env)


# ============================================================ 5. code that runs unguarded


@pytest.mark.parametrize(
    ("table", "column", "where"),
    [("log", "msg", None), ("scratch", "id", "{s}.wipe() > 0")],
    ids=["insert-trigger", "where-clause-function"],
)
@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_copy_from_stdin_runs_code_unguarded(
    env: Env, victim: str, mode: str, table: str, column: str, where: str | None
) -> None:
    """COPY FROM is never guarded (rows only come in), but it fires the table's triggers and
    evaluates its WHERE clause: the same wipe that INSERT INTO log is refused for."""
    cond = fmt(env, where) if where else None
    try:
        if mode == "psycopg":
            sql = f"copy {env.s}.{table} ({column}) from stdin" + (f" where {cond}" if cond else "")
            with (
                psycopg.connect(env.proxy.dsn(), autocommit=True) as conn,
                conn.cursor().copy(sql) as cp,
            ):
                cp.write(b"1\n")
        else:

            async def go() -> None:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                conn = await asyncpg.connect(
                    host=env.proxy.host,
                    port=env.proxy.port,
                    user=HUMAN.identity,
                    password=env.proxy.token(HUMAN.identity, HUMAN.groups),
                    database="prod",
                    ssl=ctx,
                    statement_cache_size=0,
                )
                try:
                    await conn.copy_to_table(
                        table,
                        schema_name=env.s,
                        columns=[column],
                        source=io.BytesIO(b"1\n"),
                        where=cond,
                    )
                finally:
                    await conn.close()

            asyncio.run(go())
    except (psycopg.Error, asyncpg.PostgresError):
        pass  # a refusal is what we want
    intact(env)


@pytest.mark.parametrize(
    "steps",
    [
        ["insert into {s}.deferred values (1)"],
        ["begin", "insert into {s}.deferred values (1)", "commit"],
    ],
    ids=["autocommit", "block"],
)
def test_deferred_trigger_fires_after_the_last_measurement(
    env: Env, victim: str, steps: list[str]
) -> None:
    """The guard measures right after the statement; a deferred constraint trigger fires at
    COMMIT (the guard's own, or the client's)."""
    run("psycopg", env.proxy, [fmt(env, st) for st in steps])
    intact(env)


@pytest.mark.parametrize(
    "sql",
    ["insert into {s}.indexed values (2)", "reindex table {s}.indexed", "analyze {s}.indexed"],
    ids=["insert", "reindex", "analyze"],
)
def test_index_expression_runs_a_wipe(env: Env, victim: str, sql: str) -> None:
    """An expression index evaluates its (IMMUTABLE, PL/pgSQL) function, which may call a
    VOLATILE one, on INSERT, REINDEX and ANALYZE; indexes are not in the catalog's code
    of a table, and none of these is guarded."""
    run("psycopg", env.proxy, [fmt(env, sql)])
    intact(env)


@pytest.mark.parametrize("change", ["replace-function", "add-trigger"])
def test_catalog_changed_by_a_direct_connection(env: Env, victim: str, change: str) -> None:
    """The proxy reads the catalog once (refreshing after DDL it forwards, or every
    masking.refresh_seconds): a function replaced, or a trigger added, by another
    connection is judged by what it was."""
    first = run("psycopg", env.proxy, [fmt(env, "select {s}.safe(1)")])[0]  # the catalog is loaded
    assert first.ok, str(first)
    s = env.s
    with env.direct() as c:
        if change == "replace-function":
            c.execute(
                f"create or replace function {s}.safe(x int) returns int language plpgsql volatile as "
                f"$$ begin perform {s}.wipe(); return x; end $$"
            )
            sql = f"select {s}.safe(1)"
        else:
            c.execute(
                f"create trigger plain_wipe after insert on {s}.plain for each row execute function {s}.trg_wipe()"
            )
            sql = f"insert into {s}.plain values (1)"
    try:
        run("psycopg", env.proxy, [sql])
        intact(env)
    finally:
        with env.direct() as c:
            c.execute(f"drop trigger if exists plain_wipe on {s}.plain")
            c.execute(
                f"create or replace function {s}.safe(x int) returns int language sql immutable as $$ select x + 1 $$"
            )


# ============================================================ 6. what the counters do not see


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_inheritance_children_each_under_the_share_minimum(env: Env, mode: str) -> None:
    """Partitions count together with their table; inheritance children do not: ten
    children of nine rows, every row deleted, no refusal."""
    with env.direct() as c:
        for i in range(10):
            c.execute(f"truncate {env.s}.inh_{i}")
            c.execute(
                f"insert into {env.s}.inh_{i} select g, 'c' from generate_series({i * 9}, {i * 9 + 8}) g"
            )
    o = run(mode, env.proxy, [f"delete from {env.s}.inh where id > -1"])[0]
    with env.direct() as c:
        left = c.execute(f"select count(*) from {env.s}.inh").fetchone()
    assert left == (90,), f"{90 - left[0]} of 90 rows deleted: {o}"  # type: ignore[index]


@pytest.mark.parametrize(
    "sql",
    [
        "with d as (delete from {s}.remote where id > -1 returning 1) select count(*) from d",
        "with u as (update {s}.remote set note = 'x' where id > -1 returning 1) select count(*) from u",
    ],
    ids=["cte-delete", "cte-update"],
)
def test_foreign_table_wipe_with_a_select_tag(env: Env, sql: str) -> None:
    """Rows a foreign table loses are counted from the statement's CommandComplete; a CTE's
    is ``SELECT 1``."""
    if not env.fdw:
        pytest.skip("postgres_fdw is not available with this PostgreSQL")
    table = f"{env.s}.remote_rows"
    with env.direct() as c:
        c.execute(f"truncate {table}")
        c.execute(f"insert into {table} select g, 'n' || g from generate_series(1, {ROWS}) g")
    run("psycopg", env.proxy, [fmt(env, sql)])
    intact(env, table)


# ============================================================ 7. agents


def test_agent_row_cap_cursor_pages_with_a_statement_between(env: Env) -> None:
    """Cursor pages count together, until any other result ends: one SELECT between two
    FETCHes starts the count again."""
    out = run(
        "psycopg",
        env.proxy,
        [
            "begin",
            f"declare c cursor for select * from {env.s}.huge",
            "fetch 7000 from c",
            "select 1",
            "fetch 7000 from c",
            "commit",
        ],
        AGENT,
    )
    got = len(out[2].rows) + len(out[4].rows)
    assert got <= 10_000, f"the agent received {got} rows of one cursor (cap 10,000)"


def test_agent_opaque_function_turns_read_only_off(env: Env, victim: str) -> None:
    """Agents may call opaque functions (a STABLE PL/pgSQL one is judged 'opaque', not
    'changes data'); the read-only session stops writes, not set_config."""
    out = run(
        "psycopg",
        env.proxy,
        [
            f"select {env.s}.count_where('{env.v}', 'set_config(''default_transaction_read_only'', ''off'', false) is not null')",
            "show default_transaction_read_only",
            f"select {env.s}.count_where('{env.v}', '{env.s}.wipe() = 1')",
        ],
        AGENT,
    )
    assert out[1].rows in ([("on",)], []), f"the agent's session is read-write: {out[1]}"
    intact(env)


# ============================================================ 8. catalog writes


def test_information_schema_insert_through_search_path(env: Env) -> None:
    """Catalog DML is DDL in production; information_schema's tables have no pg_ prefix, so
    unqualified under a search_path they are not recognised."""
    marker = 987_654_321
    try:
        out = run(
            "psycopg",
            env.proxy,
            [
                "set search_path = information_schema",
                f"insert into sql_sizing values ({marker}, 'dbsentry attack', 1, 'x')",
            ],
        )
        # the search path is refused (it names information_schema), so the insert finds no table
        refused(out[0], "information_schema")
        assert not out[1].ok, str(out[1])
        with env.direct() as c:
            assert c.execute("select count(*) from information_schema.sql_sizing where sizing_id = %s", (marker,)).fetchone() == (0,)
    finally:
        with env.direct() as c:
            c.execute("delete from information_schema.sql_sizing where sizing_id = %s", (marker,))


# ============================================================ 9. every request gets an answer


def test_query_after_an_unflushed_extended_batch_is_answered(env: Env) -> None:
    """Parse/Bind/Execute with neither Sync nor Flush, then a Query that the guard would wrap:
    PostgreSQL answers all of it; the proxy holds the Query until the batch is answered,
    which the server never sends before it reads the Query."""
    wire = Wire(env)
    try:
        wire.send(
            Parse("", "select 1")
            + Bind("", "")
            + Execute("")
            + Query(f"delete from {env.v} where id = -1")
        )
        answers = wire.until_ready()
    finally:
        wire.close()
    assert any((t == b"C" and body.startswith(b"DELETE")) or t == b"E" for t, body in answers), (
        describe(answers)
    )

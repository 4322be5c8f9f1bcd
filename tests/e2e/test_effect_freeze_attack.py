"""Attack on ``audit.durability: effect`` (the default): freeze durability, probe every channel.

The proxy runs one worker, so one audit helper process does every fsync.  A test SIGSTOPs
that helper: from then on no record becomes durable, while records are still written to
the OS.  Under the promise (docs/audit.md, Guarantees) nothing a statement produced may
reach its client (rows, CommandComplete, ReadyForQuery, errors, notices, ParameterStatus,
notifications, COPY data, PortalSuspended...) and no change may be committed (seen from a
direct connection to PostgreSQL) until the helper runs again.  Each probe waits a bounded
time while frozen, SIGCONTs the helper (always, in a ``finally``), then checks that the
statement completes normally and that its record is in the audit trail.

Probes that found a hole are kept, marked ``xfail(strict=True)`` with the finding.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from support.audit import search
from support.pg import PgServer, ensure_postgres_fdw
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

FROZEN_WAIT = 1.0  # how long a probe watches while durability is frozen
ANSWER_WAIT = 15.0  # how long a statement may take once the helper runs again


# --------------------------------------------------------------------------- the raw client


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def query(text: str) -> bytes:
    return msg(b"Q", text.encode() + b"\x00")


def parse(text: str, name: str = "") -> bytes:
    return msg(b"P", name.encode() + b"\x00" + text.encode() + b"\x00" + struct.pack("!h", 0))


def bind(portal: str = "", statement: str = "", params: tuple[str, ...] = ()) -> bytes:
    body = portal.encode() + b"\x00" + statement.encode() + b"\x00" + struct.pack("!hh", 0, len(params))
    for p in params:
        body += struct.pack("!I", len(p.encode())) + p.encode()
    return msg(b"B", body + struct.pack("!h", 0))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return msg(b"E", portal.encode() + b"\x00" + struct.pack("!I", max_rows))


def describe(kind: bytes, name: str = "") -> bytes:
    return msg(b"D", kind + name.encode() + b"\x00")


SYNC = msg(b"S")


def extended(text: str, params: tuple[str, ...] = (), max_rows: int = 0) -> bytes:
    return parse(text) + bind(params=params) + execute(max_rows=max_rows) + SYNC


@dataclass
class Raw:
    """A PostgreSQL wire-protocol client over TLS, with bounded waits everywhere."""

    sock: ssl.SSLSocket
    pid: int = 0
    secret: bytes = b""
    buf: bytes = b""
    seen: list[tuple[bytes, bytes]] = field(default_factory=list)

    @classmethod
    def login(cls, proxy: RunningProxy, dbname: str = "prod", identity: str = "alice@example.com") -> Raw:
        raw = socket.create_connection((proxy.host, proxy.port), timeout=10)
        raw.sendall(struct.pack("!II", 8, 80877103))
        assert raw.recv(1) == b"S"
        client = cls(_tls().wrap_socket(raw))
        params = f"user\x00{identity}\x00database\x00{dbname}\x00\x00".encode()
        client.sock.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
        while True:
            t, body = client.read(10)
            if t == b"R" and struct.unpack("!I", body[:4])[0] == 3:
                client.send(msg(b"p", proxy.token(identity, ("eng",)).encode() + b"\x00"))
            elif t == b"K":
                client.pid, client.secret = struct.unpack("!I", body[:4])[0], body[4:8]
            elif t == b"Z":
                return client
            assert t != b"E", body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _message(self) -> tuple[bytes, bytes] | None:
        if len(self.buf) < 5:
            return None
        n = struct.unpack("!I", self.buf[1:5])[0]
        if len(self.buf) < 1 + n:
            return None
        t, body, self.buf = self.buf[:1], self.buf[5 : 1 + n], self.buf[1 + n :]
        self.seen.append((t, body))
        return t, body

    def read(self, timeout: float) -> tuple[bytes, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            found = self._message()
            if found is not None:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no message in {timeout}s")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the proxy closed the connection")
            self.buf += chunk

    def silent_for(self, seconds: float = FROZEN_WAIT) -> bytes:
        """Every byte that arrives within ``seconds`` (b"": nothing got out)."""
        got = b""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                got += b"<closed>"
                break
            got += chunk
        self.buf += got.removesuffix(b"<closed>")
        return got

    def until_ready(self, timeout: float = ANSWER_WAIT, count: int = 1) -> list[tuple[bytes, bytes]]:
        """Messages up to and including the ``count``-th ReadyForQuery."""
        out: list[tuple[bytes, bytes]] = []
        while count:
            t, body = self.read(timeout)
            out.append((t, body))
            if t == b"Z":
                count -= 1
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(msg(b"X"))
        self.sock.close()


@contextlib.contextmanager
def raw_session(proxy: RunningProxy, dbname: str = "prod") -> Iterator[Raw]:
    client = Raw.login(proxy, dbname)
    try:
        yield client
    finally:
        client.close()


def types(messages: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(t for t, _ in messages)


def fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse."""
    out = {}
    for part in body.split(b"\x00"):
        if part:
            out[part[:1].decode()] = part[1:].decode(errors="replace")
    return out


# --------------------------------------------------------------------------- the environment


@dataclass
class Env:
    proxy: RunningProxy
    pg: PgServer
    s: str  # the schema of this module
    fdw: bool = False  # postgres_fdw is installed: the foreign table exists

    def direct(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.dsn(), autocommit=True)

    def one(self, query: str, *args: Any) -> Any:
        with self.direct() as conn:
            row = conn.execute(query, args or None).fetchone()
        return None if row is None else row[0]

    def committed(self, row_id: int) -> bool:
        """Whether a row with ``row_id`` is committed in the probes' table, read directly."""
        return bool(self.one(f"select count(*) from {self.s}.t where id = %s", row_id))

    def side_effects(self, via: str) -> int:
        """How many times hidden code wrote its row of log (read directly)."""
        return int(self.one(f"select count(*) from {self.s}.side_log where via = %s", via))

    def helper_pid(self) -> int:
        """The audit helper of the proxy's one worker (found by its node directory)."""
        node_root = str(self.proxy.state_dir / "audit-log")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    argv = (entry / "cmdline").read_bytes().split(b"\x00")
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                except OSError:
                    continue
                if b"dbsentry.audit.helper" in argv and any(a.decode(errors="replace").startswith(node_root) for a in argv) and state != "Z":
                    return int(entry.name)
            time.sleep(0.05)
        raise AssertionError("no audit helper process found")

    def recorded(self, text: str, timeout: float = 10) -> list[dict[str, Any]]:
        """The audit trail's statement records whose text holds ``text`` (the index follows
        the durable log every 250 ms: wait for it)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = search(self.proxy.config_path, "--text", text)
            if rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.3)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def frozen(env: Env, pid: int | None = None) -> Iterator[int]:
    """Nothing becomes durable inside the block: the audit helper is stopped (SIGSTOP),
    and always continued (SIGCONT) when the block ends."""
    pid = pid or env.helper_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5
        while _state(pid) not in ("T", "t"):
            assert time.monotonic() < deadline, "the helper did not stop"
            time.sleep(0.01)
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _objects(s: str) -> str:
    return f"""
    create schema {s};
    create table {s}.secrets (id int primary key, info text not null);
    insert into {s}.secrets values (1, 'hunter2-swordfish'), (2, 'opal-7781');
    create table {s}.t (id int primary key, v text);
    create sequence {s}.seq;
    create table {s}.serial_t (id serial primary key, v text);
    create function {s}.writer(i int) returns int language plpgsql volatile as
      $$ begin insert into {s}.t values (i, 'writer'); return i; end $$;
    create function {s}.noisy() returns int language plpgsql stable as
      $$ begin raise notice 'leak: %', (select info from {s}.secrets where id = 1); return 1; end $$;
    create procedure {s}.commit_inside(i int) language plpgsql as
      $$ begin insert into {s}.t values (i, 'proc'); commit; end $$;
    create function {s}.stale_fn(i int) returns int language sql stable as $$ select i $$;
    -- code that runs where the statement does not show it, writing a row of log each time
    create table {s}.side_log (n serial primary key, via text);
    create function {s}.log_side(via text) returns boolean language plpgsql volatile security definer as
      $$ begin insert into {s}.side_log (via) values (via); return true; end $$;
    -- row level security: the policy of a table that is only read
    create role {s}_r login;
    grant usage on schema {s} to {s}_r;
    create table {s}.rls_t (id int);
    insert into {s}.rls_t values (1);
    grant select on {s}.rls_t to {s}_r;
    alter table {s}.rls_t enable row level security;
    create policy p on {s}.rls_t for select using ({s}.log_side('rls'));
    """


def _foreign(conn: psycopg.Connection[Any], pg: PgServer, s: str) -> bool:
    """A postgres_fdw loopback foreign table over a view whose function writes."""
    if not ensure_postgres_fdw(conn, pg):
        return False
    conn.execute(f"create view {s}.remote_v as select {s}.log_side('fdw') as x")
    conn.execute(
        sql.SQL("create server {} foreign data wrapper postgres_fdw options (host %s, port %s, dbname %s)").format(
            sql.Identifier(f"{s}_loop")
        ).as_string(conn)
        % (sql.quote(pg.host), sql.quote(str(pg.port)), sql.quote(pg.dbname))
    )
    conn.execute(
        sql.SQL("create user mapping for current_user server {} options (user %s)").format(sql.Identifier(f"{s}_loop")).as_string(conn)
        % sql.quote(pg.user)
    )
    conn.execute(
        f"create foreign table {s}.ft (x boolean) server {s}_loop options (schema_name '{s}', table_name 'remote_v')"
    )
    return True


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"effect_freeze_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(_objects(s))
        fdw = _foreign(conn, pg_server, s)
    directory = tmp_path_factory.mktemp("effect_freeze")
    rls = {
        "prod_rls": {
            "host": pg_server.host,
            "port": pg_server.port,
            "database": pg_server.dbname,
            "user": f"{s}_r",
            "environment": "production",
        }
    }
    config = write_config(directory, pg_server, extra={"audit": {"durability": "effect"}}, connections=rls)
    try:
        with run_proxy(config) as proxy:
            yield Env(proxy, pg_server, s, fdw)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop schema if exists {s} cascade")
            conn.execute(f"drop server if exists {s}_loop cascade")
            conn.execute(f"drop role if exists {s}_r")


_next_id = iter(range(1000, 10**6))


def new_id() -> int:
    return next(_next_id)


# --------------------------------------------------------------------------- results


def _held_then_answered(env: Env, client: Raw, data: bytes, count: int = 1) -> list[tuple[bytes, bytes]]:
    """Send ``data`` while frozen: nothing may arrive; once continued, the answers up to
    ``count`` ReadyForQuery."""
    with frozen(env):
        client.send(data)
        leaked = client.silent_for()
    assert leaked == b"", f"got out while durability was frozen: {leaked[:300]!r}"
    return client.until_ready(count=count)


def test_rows_of_a_select_wait(env: Env) -> None:
    with raw_session(env.proxy) as client:
        got = _held_then_answered(env, client, query(f"select info from {env.s}.secrets where id = 1"))
    assert types(got) == b"TDCZ" and b"hunter2-swordfish" in got[1][1]
    assert env.recorded(f"select info from {env.s}.secrets where id = 1")


# --------------------------------------------------------------------------- commits


@dataclass
class Probe:
    got: list[tuple[bytes, bytes]]  # the answers, once durability resumed
    committed_while_frozen: bool


def committed_only_once_durable(
    env: Env, client: Raw, data: bytes, visible: Callable[[], bool], count: int = 1, helper: int | None = None
) -> Probe:
    """Send ``data`` while frozen, watching whether its change is ``visible`` from a direct
    connection and whether any answer reaches the client; continue, and check it then
    completes without error and is visible.  The caller asserts ``committed_while_frozen``
    last, so that a probe that finds a hole still checks the rest."""
    with frozen(env, helper):
        client.send(data)
        leaked = client.silent_for()
        seen = visible()
    got = client.until_ready(count=count)
    assert not [fields(b) for t, b in got if t == b"E"], got
    assert visible(), f"not committed once durable: {got}"
    if not seen:  # (an answer can only follow a change that ran)
        assert leaked == b"", f"got out while durability was frozen: {leaked[:300]!r}"
    return Probe(got, seen)


def test_stale_catalog_function_replaced_directly(env: Env) -> None:
    row_id = new_id()
    with raw_session(env.proxy) as client:
        # The proxy has read its catalog (the function is a STABLE SQL function reading).
        client.send(query(f"select {env.s}.stale_fn(1)"))
        assert b"E" not in types(client.until_ready())
        with env.direct() as conn:
            conn.execute(
                f"create or replace function {env.s}.stale_fn(i int) returns int language sql volatile as "
                f"$$ insert into {env.s}.t values (i, 'stale') returning i $$"
            )
        probe = committed_only_once_durable(env, client, query(f"select {env.s}.stale_fn({row_id})"), lambda: env.committed(row_id))
    assert b"C" in types(probe.got)
    assert env.recorded(f"stale_fn({row_id})")
    assert not probe.committed_while_frozen, "the write committed before its record was durable"


def test_stale_catalog_function_replaced_through_the_proxy(env: Env) -> None:
    """The same, with nothing but the proxy: its own DDL refreshes the catalog in the
    background, and the next statement is judged by the old one meanwhile."""
    fn = f"{env.s}.race_fn_{uuid.uuid4().hex[:6]}"
    row_id = new_id()
    helper = env.helper_pid()
    with raw_session(env.proxy, "staging") as client:  # production asks approval for DDL
        client.send(query(f"create function {fn}(i int) returns int language sql stable as $$ select i $$"))
        assert b"E" not in types(client.until_ready())
        time.sleep(1.5)  # the catalog is read again: the function is known, and reads only
        client.send(query(f"select {fn}(1)"))
        assert b"E" not in types(client.until_ready())
        client.send(
            query(
                f"create or replace function {fn}(i int) returns int language sql volatile as "
                f"$$ insert into {env.s}.t values (i, 'race') returning i $$"
            )
        )
        assert b"E" not in types(client.until_ready())
        probe = committed_only_once_durable(env, client, query(f"select {fn}({row_id})"), lambda: env.committed(row_id), helper=helper)
    assert b"C" in types(probe.got)
    assert env.recorded(f"{fn}({row_id})")
    assert not probe.committed_while_frozen, "the write committed before its record was durable"


def test_row_level_security_policy_of_a_read_table_writes(env: Env) -> None:
    """A non-superuser connection: the SELECT policy of the table it reads calls a function
    that writes.  The proxy judges the SELECT read-only (only views, and the code of tables
    written, are looked into), so it goes before its record is durable and commits."""
    before = env.side_effects("rls")
    with raw_session(env.proxy, "prod_rls") as client:
        probe = committed_only_once_durable(
            env, client, query(f"select id from {env.s}.rls_t"), lambda: env.side_effects("rls") > before
        )
    assert types(probe.got) == b"TDCZ"
    assert env.recorded(f"select id from {env.s}.rls_t")
    assert not probe.committed_while_frozen, "the policy's write committed before the record was durable"


def test_foreign_table_over_a_writing_view(env: Env) -> None:
    """A postgres_fdw foreign table: the remote side runs a view whose function writes; the
    remote transaction commits with the local one."""
    if not env.fdw:
        pytest.skip("postgres_fdw is not available")
    before = env.side_effects("fdw")
    with raw_session(env.proxy) as client:
        probe = committed_only_once_durable(
            env, client, query(f"select x from {env.s}.ft"), lambda: env.side_effects("fdw") > before
        )
    assert types(probe.got) == b"TDCZ"
    assert env.recorded(f"select x from {env.s}.ft")
    assert not probe.committed_while_frozen, "the remote write committed before the record was durable"


def _seq_value(env: Env) -> int:
    return int(env.one(f"select last_value from {env.s}.serial_t_id_seq"))


def test_serial_default_of_an_insert_in_a_block(env: Env) -> None:
    """In an open block an INSERT that calls no function goes once its record is written:
    but a serial column's default calls nextval, whose effect no ROLLBACK undoes."""
    with raw_session(env.proxy) as client:
        client.send(query("begin"))
        client.until_ready()
        before = _seq_value(env)
        with frozen(env):
            client.send(query(f"insert into {env.s}.serial_t (v) values ('x')"))
            leaked = client.silent_for()
            advanced = _seq_value(env) != before
        assert leaked == b""
        assert not advanced, "the sequence advanced (non-transactionally) while durability was frozen"
        got = client.until_ready()
        client.send(query("rollback"))
        client.until_ready()
    assert types(got) == b"CZ"


# --------------------------------------------------------------------------- probes that held


def test_error_quoting_data_waits(env: Env) -> None:
    with raw_session(env.proxy) as client:
        got = _held_then_answered(env, client, query(f"select info::int from {env.s}.secrets where id = 1"))
    assert types(got) == b"TEZ" and "hunter2-swordfish" in fields(got[1][1])["M"]


def test_unique_violation_detail_in_a_block_waits(env: Env) -> None:
    """In an open block an INSERT goes once written: its error naming the key still waits."""
    with raw_session(env.proxy) as client:
        client.send(query("begin"))
        client.until_ready()
        got = _held_then_answered(env, client, query(f"insert into {env.s}.secrets values (2, 'dup')"))
        client.send(query("rollback"))
        client.until_ready()
    assert types(got) == b"EZ" and fields(got[0][1])["C"] == "23505"


def test_parameter_status_waits(env: Env) -> None:
    with raw_session(env.proxy) as client:
        got = _held_then_answered(
            env, client, query(f"select set_config('application_name', (select info from {env.s}.secrets where id = 2), false)")
        )
    assert b"S" in types(got) and any(t == b"S" and b"opal-7781" in b for t, b in got)


def test_notice_from_a_function_waits(env: Env) -> None:
    with raw_session(env.proxy) as client:
        got = _held_then_answered(env, client, query(f"select {env.s}.noisy()"))
    assert b"N" in types(got), got


def test_copy_out_waits(env: Env) -> None:
    with raw_session(env.proxy) as client:
        got = _held_then_answered(env, client, query(f"copy (select info from {env.s}.secrets order by id) to stdout"))
    assert types(got) == b"HddcCZ"


def test_portal_suspended_waits(env: Env) -> None:
    text = f"select info from {env.s}.secrets order by id"
    with raw_session(env.proxy) as client:
        got = _held_then_answered(env, client, parse(text) + bind() + describe(b"P") + execute(max_rows=1) + SYNC)
    assert types(got) == b"12TDsZ"


def test_describe_of_a_named_statement(env: Env) -> None:
    text = f"select info, id as describe_only from {env.s}.secrets"
    with raw_session(env.proxy) as client:
        with frozen(env):
            client.send(parse(text, "named") + describe(b"S", "named") + SYNC)
            leaked = client.silent_for()
        got = client.until_ready()
    # (not a durability hole: a Parse and Describe run nothing and leave no record, so
    # nothing waits; the answer is metadata, ParseComplete, ParameterDescription,
    # RowDescription, and no data)
    assert types(got) == b"1tTZ" and leaked
    assert b"D" not in types(got) and b"hunter2" not in leaked
    assert env.recorded("describe_only", timeout=2) == []


def test_pipeline_of_reads_and_a_write_waits(env: Env) -> None:
    row_id = new_id()
    data = (
        extended(f"select info from {env.s}.secrets where id = $1", ("1",))
        + extended(f"insert into {env.s}.t values ($1, 'pipe')", (str(row_id),))
        + query(f"select count(*) from {env.s}.t where id = {row_id}")
    )
    with raw_session(env.proxy) as client:
        probe = committed_only_once_durable(env, client, data, lambda: env.committed(row_id), count=3)
    assert types(probe.got) == b"12DCZ" + b"12CZ" + b"TDCZ"
    assert not probe.committed_while_frozen


def test_cancel_racing_the_freeze(env: Env) -> None:
    with raw_session(env.proxy) as client:
        with frozen(env):
            client.send(query(f"select pg_sleep(3), info from {env.s}.secrets"))
            time.sleep(0.2)
            with socket.create_connection((env.proxy.host, env.proxy.port), timeout=5) as cancel:
                cancel.sendall(struct.pack("!III", 16, 80877102, client.pid) + client.secret)
                cancel.settimeout(5)
                assert cancel.recv(1) == b""
            leaked = client.silent_for()
        assert leaked == b""
        got = client.until_ready()
    assert types(got) == b"TEZ" or types(got) == b"EZ", got
    assert fields(got[-2][1])["C"] == "57014"


def test_notify_from_another_session_waits(env: Env) -> None:
    """NOTIFY through the proxy is a write: not sent, so neither the listening proxy
    session nor a direct listener hears anything while frozen."""
    channel = f"ch_{uuid.uuid4().hex[:8]}"
    with raw_session(env.proxy) as listener, raw_session(env.proxy) as notifier, env.direct() as direct:
        listener.send(query(f"listen {channel}"))
        listener.until_ready()
        direct.execute(f"listen {channel}")
        probe = committed_only_once_durable(
            env,
            notifier,
            query(f"notify {channel}, 'opal'"),
            lambda: any(n.payload == "opal" for n in direct.notifies(timeout=0.2, stop_after=1)),
        )
        t, body = listener.read(ANSWER_WAIT)
    assert t == b"A" and b"opal" in body
    assert types(probe.got) == b"CZ" and not probe.committed_while_frozen


def test_pg_notify_of_data_in_the_listening_session_waits(env: Env) -> None:
    channel = f"ch_{uuid.uuid4().hex[:8]}"
    with raw_session(env.proxy) as client:
        client.send(query(f"listen {channel}"))
        client.until_ready()
        got = _held_then_answered(
            env, client, query(f"select pg_notify('{channel}', info) from {env.s}.secrets where id = 2")
        )
    assert b"A" in types(got) and any(t == b"A" and b"opal-7781" in b for t, b in got)


COMMIT_PROBES: dict[str, tuple[str, Callable[[Env, int], str]]] = {
    # name: (the setup sent before the freeze, the probe)
    "autocommit insert": ("", lambda e, i: f"insert into {e.s}.t values ({i}, 'a')"),
    "two inserts in one query": ("", lambda e, i: f"insert into {e.s}.t values ({i + 1}, 'm'); insert into {e.s}.t values ({i}, 'm')"),
    "commit": ("begin; insert into {s}.t values ({i}, 'c')", lambda e, i: "commit"),
    "end": ("begin; insert into {s}.t values ({i}, 'c')", lambda e, i: "end"),
    "commit and chain": ("begin; insert into {s}.t values ({i}, 'c')", lambda e, i: "commit and chain; rollback"),
    "known writing function": ("", lambda e, i: f"select {e.s}.writer({i})"),
    "procedure that commits": ("", lambda e, i: f"call {e.s}.commit_inside({i})"),
    "do with commit": ("", lambda e, i: f"do $$ begin insert into {e.s}.t values ({i}, 'do'); commit; end $$"),
    "create table as": ("", lambda e, i: f"create table {e.s}.made_{i} as select 1 as x; insert into {e.s}.t values ({i}, 'ddl')"),
}


@pytest.mark.parametrize("name", list(COMMIT_PROBES))
def test_commit_waits(env: Env, name: str) -> None:
    setup, make = COMMIT_PROBES[name]
    row_id = new_id()
    new_id()
    # DDL, CALL and DO need approval in production: staging runs them under the same durability
    dbname = "staging" if name in ("procedure that commits", "do with commit", "create table as") else "prod"
    with raw_session(env.proxy, dbname) as client:
        for step in filter(None, setup.split("; ")):  # production wants them one by one
            client.send(query(step.format(s=env.s, i=row_id)))
            assert b"E" not in types(client.until_ready())
        probe = committed_only_once_durable(env, client, query(make(env, row_id)), lambda: env.committed(row_id))
    assert b"C" in types(probe.got)
    assert not probe.committed_while_frozen
    assert env.recorded(make(env, row_id).split(";")[0][:40])


def test_extended_autocommit_insert_waits(env: Env) -> None:
    row_id = new_id()
    with raw_session(env.proxy) as client:
        probe = committed_only_once_durable(
            env, client, extended(f"insert into {env.s}.t values ($1, 'x')", (str(row_id),)), lambda: env.committed(row_id)
        )
    assert types(probe.got) == b"12CZ" and not probe.committed_while_frozen


def _last_value(env: Env) -> str:
    return str(env.one(f"select (last_value, is_called)::text from {env.s}.seq"))


def test_nextval_waits(env: Env) -> None:
    before = _last_value(env)
    with raw_session(env.proxy) as client:
        probe = committed_only_once_durable(env, client, query(f"select nextval('{env.s}.seq')"), lambda: _last_value(env) != before)
    assert types(probe.got) == b"TDCZ" and not probe.committed_while_frozen


def test_function_call_message_waits(env: Env) -> None:
    oid = int(env.one("select 'pg_catalog.nextval(regclass)'::regprocedure::oid"))
    arg = f"{env.s}.seq".encode()
    call = msg(b"F", struct.pack("!Ihhh", oid, 1, 0, 1) + struct.pack("!I", len(arg)) + arg + struct.pack("!h", 0))
    before = _last_value(env)
    with raw_session(env.proxy) as client:
        with frozen(env):
            client.send(call)
            leaked = client.silent_for()
            advanced = _last_value(env) != before
        got = client.until_ready()
    assert not advanced
    if leaked:  # refused by the proxy itself, before anything was forwarded
        assert types(got) == b"EZ" and leaked.startswith(b"E"), (leaked, got)
        assert fields(got[0][1])["C"] == "42501", fields(got[0][1])
        assert _last_value(env) == before
    else:
        assert types(got) == b"VZ", got


def test_select_for_update_in_a_block_waits(env: Env) -> None:
    with raw_session(env.proxy) as client, env.direct() as direct:
        client.send(query("begin"))
        client.until_ready()

        def locked() -> bool:
            try:
                direct.execute(f"select 1 from {env.s}.secrets where id = 1 for update nowait")
            except psycopg.errors.LockNotAvailable:
                return True
            return False

        probe = committed_only_once_durable(env, client, query(f"select id from {env.s}.secrets where id = 1 for update"), locked)
        client.send(query("rollback"))
        client.until_ready()
    assert types(probe.got) == b"TDCZ" and not probe.committed_while_frozen


def test_copy_from_stdin_sent_blind_waits(env: Env) -> None:
    """COPY FROM STDIN with its data and CopyDone sent at once, without waiting for the
    CopyInResponse."""
    row_id = new_id()
    data = query(f"copy {env.s}.t (id, v) from stdin") + msg(b"d", f"{row_id}\tcopied\n".encode()) + msg(b"c")
    with raw_session(env.proxy) as client:
        probe = committed_only_once_durable(env, client, data, lambda: env.committed(row_id))
    assert types(probe.got) == b"GCZ" and not probe.committed_while_frozen


def test_client_gone_mid_freeze_commits_nothing_early(env: Env) -> None:
    row_id = new_id()
    client = Raw.login(env.proxy)
    with frozen(env):
        client.send(query(f"insert into {env.s}.t values ({row_id}, 'gone')"))
        client.close()
        time.sleep(FROZEN_WAIT)
        seen = env.committed(row_id)
    assert not seen
    time.sleep(1)
    if env.committed(row_id):  # it ran once durable: then its record is there
        assert env.recorded(f"values ({row_id}, 'gone')")


def test_helper_killed_while_frozen(env: Env) -> None:
    """SIGKILL of the stopped helper: the proxy restarts it; the waiting write either runs
    once its record is durable (and is in the trail) or is refused (58000) and never runs."""
    row_id = new_id()
    with raw_session(env.proxy) as client:
        with frozen(env) as pid:
            client.send(query(f"insert into {env.s}.t values ({row_id}, 'killed')"))
            leaked = client.silent_for()
            seen = env.committed(row_id)
            os.kill(pid, signal.SIGKILL)
        got = client.until_ready()
    assert leaked == b"" and not seen
    if types(got) == b"CZ":
        assert env.committed(row_id) and env.recorded(f"values ({row_id}, 'killed')")
    else:
        assert fields(got[0][1])["C"] == "58000" and not env.committed(row_id), got
    assert env.helper_pid() != pid
    # The proxy works again once it has recovered (it refuses with 58000 meanwhile: "try
    # again shortly"), within seconds.
    deadline = time.monotonic() + 10
    while True:
        with raw_session(env.proxy) as client:
            client.send(query("select 1"))
            got = client.until_ready()
        if types(got) == b"TDCZ" or time.monotonic() > deadline:
            break
        assert fields(got[0][1])["C"] == "58000", got
        time.sleep(0.2)
    assert types(got) == b"TDCZ", got

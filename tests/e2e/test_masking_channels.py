"""Every channel a server message can carry data through, masked for identities under
masking: notices, errors (message, detail, hint, context), notifications, reported
parameters and settings.  Through a running dbsentry with psql, psycopg (simple protocol
and pipeline mode) and asyncpg (prepared statements), each route is tried by a masked
identity (nothing may leak) and by a member of ``pii-readers`` (the real values arrive,
so the test proves the route works); harmless notices and errors arrive unchanged, with
their SQLSTATEs.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import psycopg
import pytest

from support.leaks import Secrets
from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

MASKED = ("eve@example.com", ("eng",))
READER = ("rita@example.com", ("eng", "pii-readers"))

NAME = "Ada Lovelace"
EMAIL = "ada.lovelace@example.com"
PHONE = "+1 415 555 0132"
SSN = "536-22-8714"
NAME2 = "Grace Hopper"
EMAIL2 = "grace.hopper@navy.example.org"
SECRETS = Secrets([NAME, EMAIL, PHONE, SSN, NAME2, EMAIL2])

CLIENTS = ("psql", "psycopg", "psycopg-pipeline", "asyncpg")


@dataclass(frozen=True)
class Schema:
    table: str
    suffix: str

    def sql(self, text: str) -> str:
        return text.replace("{T}", self.table).replace("{S}", self.suffix)


def _create(pg: PgServer) -> Schema:
    suffix = uuid.uuid4().hex[:8]
    s = Schema(f"chan_customers_{suffix}", suffix)
    stmts = [
        """create table {T} (id int primary key, full_name text, email text unique, phone text,
           ssn text, sku text unique not null, qty int not null check (qty >= 0))""",
        f"""insert into {{T}} values
           (1, '{NAME}', '{EMAIL}', '{PHONE}', '{SSN}', 'SKU-1', 5),
           (2, '{NAME2}', '{EMAIL2}', '(212) 555-0199', '471-93-2605', 'SKU-2', 7)""",
        # plpgsql: opaque to lineage
        """create function chan_notice_{S}(cid int) returns int language plpgsql as $$
           begin
             raise notice 'contact %', (select email from {T} where id = cid);
             raise notice '%', (select full_name from {T} where id = cid);
             return 1;
           end $$""",
        """create function chan_raise_{S}(cid int) returns int language plpgsql as $$
           declare r record;
           begin
             select * into r from {T} where id = cid;
             raise exception 'customer %', r.full_name using detail = 'mail ' || r.email, hint = r.phone;
           end $$""",
        """create function chan_hello_{S}() returns int language plpgsql as $$
           begin raise notice 'hello %', 42; return 1; end $$""",
        """create function chan_notify_{S}(cid int) returns int language plpgsql as $$
           begin
             perform pg_notify('chan_{S}', (select full_name || ' / ' || email from {T} where id = cid));
             return 1;
           end $$""",
        """create function chan_setconf_{S}(cid int) returns int language plpgsql as $$
           begin
             perform set_config('app.who_{S}', (select full_name from {T} where id = cid), false);
             perform set_config('app.mail_{S}', (select email from {T} where id = cid), false);
             return 1;
           end $$""",
    ]
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        for st in stmts:
            conn.execute(s.sql(st))
    return s


def _drop(pg: PgServer, s: Schema) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        for fn in ("notice", "raise", "notify", "setconf"):
            conn.execute(f"drop function if exists chan_{fn}_{s.suffix}(int)")
        conn.execute(f"drop function if exists chan_hello_{s.suffix}()")
        conn.execute(f"drop table if exists {s.table} cascade")


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    schema: Schema
    pg: PgServer


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    schema = _create(pg_server)
    try:
        # Errors must be masked whatever masking.predicates refuses ((reverse(email) ||
        # 'x')::int in a WHERE): test_masking_inference.py covers the refusals.
        config = write_config(
            tmp_path_factory.mktemp("masking_channels"), pg_server, extra={"masking": {"predicates": "allow"}}
        )
        with run_proxy(config) as proxy:
            yield Env(proxy, schema, pg_server)
    finally:
        _drop(pg_server, schema)


# ---------------------------------------------------------------------- one session


@dataclass
class Result:
    sql: str
    sqlstate: str | None = None
    message: str = ""  # the primary message
    text: str = ""  # everything the client was told about the statement's failure
    rows: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass
class Transcript:
    results: list[Result] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    raw: str = ""  # psql: its whole output

    def blob(self) -> str:
        """What the client was told (not the statements it sent)."""
        told = [(r.sqlstate, r.message, r.text, r.rows) for r in self.results]
        return repr((told, self.notices, self.notifications, self.parameters, self.raw))


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_PSQL_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}
_PSQL_ERR = re.compile(r"^(?:ERROR|FATAL):  ([0-9A-Z]{5}): (.*)$", re.M)


def session(
    client: str,
    env: Env,
    statements: Sequence[str],
    *,
    reader: bool,
    dbname: str = "prod",
    listen: str | None = None,
) -> Transcript:
    """Run ``statements`` in one session and collect everything the client was told."""
    identity, groups = READER if reader else MASKED
    statements = [env.schema.sql(s) for s in statements]
    out = Transcript()
    if client == "psql":
        script = "\\set VERBOSITY verbose\n\\set SHOW_CONTEXT always\n"
        if listen:
            script += f"LISTEN {listen};\n"
        script += "".join(f"{s};\n" for s in statements)
        if listen:
            script += "SELECT pg_sleep(0.2);\n"
        done = subprocess.run(
            ["psql", env.proxy.dsn(identity, groups=groups, dbname=dbname), "-X", "-A", "-t"],
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
            env=_PSQL_ENV,
        )
        out.raw = done.stdout + done.stderr
        for m in _PSQL_ERR.finditer(done.stderr):
            out.results.append(Result("?", m.group(1), m.group(2), m.group(2)))
        return out
    if client.startswith("psycopg"):
        with psycopg.connect(
            env.proxy.dsn(identity, groups=groups, dbname=dbname), autocommit=True
        ) as conn:
            conn.add_notice_handler(lambda d: out.notices.append(_diag_text(d)))
            conn.add_notify_handler(lambda n: out.notifications.append(n.payload))
            if listen:
                conn.execute(f"LISTEN {listen}")
            for sql in statements:
                r = Result(sql)
                try:
                    if client == "psycopg-pipeline":
                        with conn.pipeline() as p:
                            cur = conn.cursor()
                            cur.execute(sql)
                            p.sync()
                            r.rows = cur.fetchall() if cur.description is not None else []
                    else:
                        cur = conn.execute(sql)
                        r.rows = cur.fetchall() if cur.description is not None else []
                except psycopg.Error as err:
                    r.sqlstate = err.diag.sqlstate
                    r.message = err.diag.message_primary or ""
                    r.text = _diag_text(err.diag) + " " + str(err)
                out.results.append(r)
            if listen:
                time.sleep(0.2)
                conn.execute("select 1")  # notifications arrive with the next exchange
            for name in ("application_name", "search_path"):
                value = conn.info.parameter_status(name)
                if value is not None:
                    out.parameters[name] = value
        return out

    async def run() -> None:
        conn = await asyncpg.connect(
            host=env.proxy.host,
            port=env.proxy.port,
            user=identity,
            password=env.proxy.token(identity, groups),
            database=dbname,
            ssl=_tls(),
            timeout=10,
        )
        try:
            conn.add_log_listener(lambda _c, msg: out.notices.append(repr(msg.as_dict())))
            if listen:
                await conn.add_listener(
                    listen, lambda _c, _pid, _ch, payload: out.notifications.append(payload)
                )
            for sql in statements:
                r = Result(sql)
                try:
                    r.rows = [tuple(x.values()) for x in await conn.fetch(sql)]
                except asyncpg.PostgresError as err:
                    r.sqlstate = err.sqlstate
                    r.message = str(getattr(err, "message", "") or "")
                    r.text = repr(err.as_dict()) + " " + str(err)
                out.results.append(r)
            if listen:
                await asyncio.sleep(0.3)
            out.parameters["application_name"] = conn.get_settings().application_name
        finally:
            await conn.close(timeout=10)

    asyncio.run(run())
    return out


def _diag_text(d: Any) -> str:
    parts = [
        d.severity,
        d.sqlstate,
        d.message_primary,
        d.message_detail,
        d.message_hint,
        d.context,
        d.internal_query,
    ]
    return " | ".join(str(p) for p in parts if p)


def _states(t: Transcript) -> list[str | None]:
    return [r.sqlstate for r in t.results]


# ---------------------------------------------------------------------- notices


@pytest.mark.parametrize("client", CLIENTS)
def test_notices_from_procedural_code(env: Env, client: str) -> None:
    statements = [
        "select full_name from {T} order by id",  # the session is shown the names, masked
        "select chan_notice_{S}(1)",  # opaque: email by value, the name as a value seen
        "select chan_notice_{S}(id) from {T} where id = 2",  # reads the table: withheld
    ]
    masked = session(client, env, statements, reader=False)
    SECRETS.assert_no_leak(masked.blob(), context=client)
    assert _states(masked) == [None, None, None] or client == "psql"
    if client != "psql":
        assert len(masked.notices) == 4, masked.notices
        assert any("contact ****@example.com" in n for n in masked.notices), masked.notices
        assert any("<name>" in n for n in masked.notices), masked.notices
    real = session(client, env, statements, reader=True)
    text = real.blob()
    for value in (EMAIL, NAME, EMAIL2, NAME2):
        assert value in text, (value, text)


@pytest.mark.parametrize("client", CLIENTS)
def test_harmless_notices_pass_unchanged(env: Env, client: str) -> None:
    statements = ["select chan_hello_{S}()", "select full_name from {T}", "select chan_hello_{S}()"]
    masked = session(client, env, statements, reader=False)
    real = session(client, env, statements, reader=True)
    assert "withheld" not in masked.blob()
    if client == "psql":
        assert masked.raw.count("NOTICE:  00000: hello 42") == 2, masked.raw
    else:
        assert masked.notices == real.notices
        assert len(masked.notices) == 2 and all("hello 42" in n for n in masked.notices)
    do = "do $$ begin raise notice 'hello %', 42; end $$"
    staged = session(client, env, [do], reader=False, dbname="staging")
    assert "hello 42" in staged.blob() and "withheld" not in staged.blob()


def test_notice_from_do_block_in_staging(env: Env) -> None:
    do = "do $$ begin raise notice 'mail % ssn %', (select email from {T} where id = 1), (select ssn from {T} where id = 1); end $$"
    for client in ("psql", "psycopg", "asyncpg"):
        masked = session(client, env, [do], reader=False, dbname="staging")
        SECRETS.assert_no_leak(masked.blob(), context=client)
        assert "****@example.com" in masked.blob(), masked.blob()
        real = session(client, env, [do], reader=True, dbname="staging")
        assert EMAIL in real.blob() and SSN in real.blob()


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("client", CLIENTS)
def test_errors_that_quote_data(env: Env, client: str) -> None:
    statements = [
        "select email::int from {T} where id = 1",
        "select full_name::int from {T} where id = 1",
        "select reverse(full_name)::date from {T} where id = 1",
        "select 1 from {T} where (reverse(email) || 'x')::int > 0",
        "select full_name from {T} order by id",
        "select chan_raise_{S}(1)",  # opaque: by value and by the names seen
        "select chan_raise_{S}(id) from {T} where id = 2",  # reads the table: withheld
    ]
    masked = session(client, env, statements, reader=False)
    real = session(client, env, statements, reader=True)
    SECRETS.assert_no_leak(masked.blob(), context=client)
    assert _states(masked) == _states(real)
    if client != "psql":
        assert _states(real) == ["22P02", "22P02", "22007", "22P02", None, "P0001", "P0001"]
        assert masked.results[0].message == 'invalid input syntax for type integer: "<redacted>"'
        assert masked.results[2].message.startswith("invalid input syntax for type date")
        assert "customer <name>" in masked.results[5].message
    text = real.blob()
    for value in (EMAIL, NAME, NAME2, PHONE):
        assert value in text or value[::-1] in text, (value, text)


@pytest.mark.parametrize("client", CLIENTS)
def test_constraint_violations(env: Env, client: str) -> None:
    statements = [
        "update {T} set qty = -1 where id = 1",  # check: Failing row contains (... every column)
        f"insert into {{T}} (id, email, sku, qty) values (50, '{EMAIL}', 'SKU-50', 1)",  # unique email
        "insert into {T} (id, sku, qty) values (51, 'SKU-1', 1)",  # unique sku: harmless
        "insert into {T} (id, sku, qty) values (1, 'SKU-52', 1)",  # primary key: harmless
        "update {T} set sku = null where id = 2",  # not null: Failing row
    ]
    masked = session(client, env, statements, reader=False)
    real = session(client, env, statements, reader=True)
    SECRETS.assert_no_leak(masked.blob(), context=client)
    assert _states(masked) == _states(real)
    blob = masked.blob()
    assert "Key (sku)=(SKU-1) already exists." in blob, blob
    assert "Key (id)=(1) already exists." in blob, blob
    assert "Failing row contains (<redacted>)" in blob, blob
    assert NAME in real.blob() and NAME2 in real.blob()
    if client != "psql":
        assert _states(real) == ["23514", "23505", "23505", "23505", "23502"]


@pytest.mark.parametrize("client", CLIENTS)
def test_harmless_errors_are_not_withheld(env: Env, client: str) -> None:
    statements = [
        "select no_such_function_{S}(1)",
        "select email, no_such_function_{S}(email) from {T}",
        "execute no_such_statement_{S}",
        "selec 1",
        "select email from {T} where no_such_column = 1",
        "select email, 1 / (id - id) from {T}",
        "select 1 / 0",
    ]
    masked = session(client, env, statements, reader=False)
    real = session(client, env, statements, reader=True)
    assert _states(masked) == _states(real)
    assert [r.message for r in masked.results] == [r.message for r in real.results]
    assert "withheld" not in masked.blob()
    if client == "psql":
        assert masked.raw.replace("\n", " ").count("does not exist") >= 3
    else:
        assert _states(masked) == ["42883", "42883", "26000", "42601", "42703", "22012", "22012"]


# ---------------------------------------------------------------------- notifications


@pytest.mark.parametrize("client", CLIENTS)
def test_notifications(env: Env, client: str) -> None:
    channel = f"chan_{env.schema.suffix}"
    statements = [
        "select full_name from {T} order by id",
        f"notify {channel}, 'hello 42'",
        f"notify {channel}, 'mail {EMAIL2}'",
        "select chan_notify_{S}(1)",  # opaque: name seen, email by value
    ]
    masked = session(client, env, statements, reader=False, listen=channel)
    SECRETS.assert_no_leak(masked.blob(), context=client)
    real = session(client, env, statements, reader=True, listen=channel)
    assert f"{NAME} / {EMAIL}" in real.blob()
    if client == "psql":
        assert 'payload "hello 42"' in masked.raw, masked.raw
    else:
        assert masked.notifications[0] == "hello 42"
        assert masked.notifications[1] == "mail ****@navy.example.org"
        assert masked.notifications[2] == "<name> / ****@example.com", masked.notifications
        assert real.notifications[2] == f"{NAME} / {EMAIL}"


@pytest.mark.parametrize("client", CLIENTS)
def test_pg_notify_of_sensitive_reads_is_refused(env: Env, client: str) -> None:
    channel = f"chan_{env.schema.suffix}"
    statements = [
        f"select pg_notify('{channel}', email) from {{T}} where id = 1",
        f"select pg_notify('{channel}', 'job ' || 7)",
    ]
    masked = session(client, env, statements, reader=False, listen=channel)
    SECRETS.assert_no_leak(masked.blob(), context=client)
    assert "masking.side_channel" in masked.blob()
    if client != "psql":
        assert _states(masked) == ["42501", None]
        assert masked.notifications == ["job 7"]
    real = session(client, env, statements, reader=True, listen=channel)
    assert EMAIL in real.blob()


def test_notification_from_another_session(env: Env) -> None:
    """What another session (here a direct connection) sends reaches a masked listener
    masked by value."""
    channel = f"chan_x_{env.schema.suffix}"

    async def main(reader: bool) -> list[str]:
        identity, groups = READER if reader else MASKED
        got: list[str] = []
        conn = await asyncpg.connect(
            host=env.proxy.host,
            port=env.proxy.port,
            user=identity,
            password=env.proxy.token(identity, groups),
            database="prod",
            ssl=_tls(),
            timeout=10,
        )
        try:
            await conn.add_listener(channel, lambda _c, _p, _ch, payload: got.append(payload))
            with psycopg.connect(env.pg.dsn(), autocommit=True) as direct:
                direct.execute(f"notify {channel}, 'call {PHONE} or {EMAIL}, ssn {SSN}'")
            for _ in range(30):
                if got:
                    break
                await asyncio.sleep(0.1)
        finally:
            await conn.close(timeout=10)
        return got

    masked = asyncio.run(main(False))
    assert len(masked) == 1, masked
    SECRETS.assert_no_leak(masked)
    assert masked[0].startswith("call ")
    real = asyncio.run(main(True))
    assert real == [f"call {PHONE} or {EMAIL}, ssn {SSN}"]


# ---------------------------------------------------------------------- settings


@pytest.mark.parametrize("dbname", ["prod", "staging"])
@pytest.mark.parametrize("client", CLIENTS)
def test_settings(env: Env, client: str, dbname: str) -> None:
    """Production refuses settings off its allow-list anyway (baseline.prod.settings);
    staging allows them, and masking refuses a setting fed by a sensitive read."""
    statements = [
        "select set_config('app.direct_{S}', (select email from {T} where id = 1), false)",
        "select full_name from {T} order by id",
        "select chan_setconf_{S}(1)",  # opaque: sets a name and an email
        "select current_setting('app.who_{S}'), current_setting('app.mail_{S}')",
        "show app.who_{S}",
        "select setting from pg_settings where name in ('app.who_{S}', 'app.mail_{S}') order by name",
        "select set_config('application_name', 'reporting', false)",
    ]
    masked = session(client, env, statements, reader=False, dbname=dbname)
    SECRETS.assert_no_leak(masked.blob(), context=client)
    real = session(client, env, statements, reader=True, dbname=dbname)
    assert NAME in real.blob() and EMAIL in real.blob()
    rule = "masking.side_channel" if dbname == "staging" else "baseline.prod.settings"
    assert rule in masked.blob()
    if client != "psql":
        assert _states(masked) == ["42501", None, None, None, None, None, None]
        assert masked.results[3].rows == [("<name>", "****@example.com")]
        assert masked.results[4].rows == [("<name>",)]
        assert masked.results[6].rows == [("reporting",)]
        assert masked.parameters["application_name"] == "reporting"


@pytest.mark.parametrize("client", ["psycopg", "psycopg-pipeline", "asyncpg"])
def test_application_name_parameter_status(env: Env, client: str) -> None:
    statements = [f"set application_name = '{EMAIL}'", "show application_name"]
    masked = session(client, env, statements, reader=False)
    SECRETS.assert_no_leak(masked.blob(), context=client)
    assert masked.parameters["application_name"] == "****@example.com"
    assert masked.results[1].rows == [("****@example.com",)]
    real = session(client, env, statements, reader=True)
    assert real.parameters["application_name"] == EMAIL
    plain = session(client, env, ["set application_name = 'nightly report'"], reader=False)
    assert plain.parameters["application_name"] == "nightly report"


# ---------------------------------------------------------------------- FunctionCall


def _function_call(
    env: Env, reader: bool, dbname: str, oid: int, arg: str
) -> list[tuple[bytes, bytes]]:
    """Log in with the raw protocol (TLS, token as password), send one FunctionCall and
    return the messages that answer it, up to ReadyForQuery."""
    import socket
    import struct

    identity, groups = READER if reader else MASKED
    raw = socket.create_connection((env.proxy.host, env.proxy.port), timeout=10)
    raw.sendall(struct.pack("!II", 8, 80877103))
    assert raw.recv(1) == b"S"
    sock = _tls().wrap_socket(raw)
    buf = b""

    def read() -> tuple[bytes, bytes]:
        nonlocal buf
        while len(buf) < 5 or len(buf) < 1 + struct.unpack("!I", buf[1:5])[0]:
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            buf += chunk
        n = struct.unpack("!I", buf[1:5])[0]
        t, body, buf = buf[:1], buf[5 : 1 + n], buf[1 + n :]
        return t, body

    def send(t: bytes, body: bytes) -> None:
        sock.sendall(t + struct.pack("!I", len(body) + 4) + body)

    params = b"user\x00" + identity.encode() + b"\x00database\x00" + dbname.encode() + b"\x00\x00"
    sock.sendall(struct.pack("!II", len(params) + 8, 196608) + params)
    while True:
        t, body = read()
        if t == b"R" and struct.unpack("!I", body[:4])[0] == 3:
            send(b"p", env.proxy.token(identity, groups).encode() + b"\x00")
        elif t == b"Z":
            break
        assert t != b"E", body
    value = arg.encode()
    send(
        b"F",
        struct.pack("!Ihhh", oid, 1, 0, 1)  # one text argument
        + struct.pack("!I", len(value))
        + value
        + struct.pack("!h", 0),
    )
    out: list[tuple[bytes, bytes]] = []
    while True:
        t, body = read()
        out.append((t, body))
        if t == b"Z":
            break
    send(b"X", b"")
    sock.close()
    return out


def test_function_call_is_refused_for_masked_identities(env: Env) -> None:
    with psycopg.connect(env.pg.dsn(), autocommit=True) as conn:
        row = conn.execute("select 'pg_catalog.quote_literal(text)'::regprocedure::oid").fetchone()
    assert row is not None
    oid = int(row[0])
    masked = _function_call(env, False, "staging", oid, EMAIL)
    assert [t for t, _ in masked] == [b"E", b"Z"], masked
    assert b"masking.function_call" in masked[0][1] and b"C42501\x00" in masked[0][1]
    SECRETS.assert_no_leak(repr(masked))
    real = _function_call(env, True, "staging", oid, EMAIL)
    assert [t for t, _ in real] == [b"V", b"Z"], real
    assert f"'{EMAIL}'".encode() in real[0][1]
    prod = _function_call(env, True, "prod", oid, EMAIL)
    assert b"baseline.function_call" in prod[0][1]


# ---------------------------------------------------------------------- attack variants


@pytest.mark.parametrize("client", ["psql", "psycopg", "asyncpg"])
def test_attack_variants_in_staging(env: Env, client: str) -> None:
    channel = f"chan_{env.schema.suffix}"
    statements = [
        "select full_name from {T} order by id",
        # side channels hidden in other statements
        "explain analyze select set_config('app.v_{S}', email, false) from {T}",
        f"select (select pg_notify('{channel}', email) from {{T}} limit 1)",
        f"prepare chan_p_{{S}} as select pg_notify('{channel}', full_name) from {{T}}",
        f"select pg_notify('{channel}', chan_notice_{{S}}(1)::text)",
        # dynamic SQL that quotes data in a class-42 error, an internal query, a context
        "do $$ begin execute format('select %I', (select email from {T} where id = 1)); end $$",
        "do $$ begin execute format('select %I', (select full_name from {T} where id = 2)); end $$",
        "do $$ begin execute 'select ' || quote_literal((select full_name from {T} where id = 1)) || '::int'; end $$",
        # a transformed value in a cast error
        "select upper(replace(full_name, ' ', '-'))::int from {T} where id = 1",
        "select encode(convert_to(full_name, 'UTF8'), 'base64')::int from {T} where id = 1",
    ]
    masked = session(client, env, statements, reader=False, dbname="staging", listen=channel)
    SECRETS.assert_no_leak(masked.blob(), context=client)
    assert masked.notifications == []
    if client != "psql":
        states = _states(masked)
        assert states[1:5] == ["42501"] * 4, states
        assert states[5:] == ["42703", "42703", "22P02", "22P02", "22P02"], states
    real = session(client, env, statements, reader=True, dbname="staging", listen=channel)
    assert NAME2 in real.blob() and EMAIL in real.blob()

"""Bypass attempts against masking must fail: through a running dbsentry to the real
PostgreSQL, with psql (simple protocol, text), psycopg (simple, prepared, binary) and
asyncpg (Describe Statement then Bind/Execute, binary results).

The schema is created directly upstream *before* the proxy starts, so the catalog the
proxy reads at its first session already knows it.  Every attempt is also run by a member
of ``pii-readers``: that session must see the real values, so an attempt that masks
nothing for anyone, or masks everyone, fails.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import re
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import errors

from support.pg import PgServer
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

MASKED = "eve@example.com"  # an engineer: sees masked values
READER = "rita@example.com"  # in pii-readers: sees real values
MASKED_GROUPS = ("eng",)
READER_GROUPS = ("eng", "pii-readers")

# Realistic, valid values: the cards pass Luhn and their issuer ranges, the SSNs are in
# valid areas/groups/serials, the IBANs pass mod 97.
ROWS: tuple[tuple[Any, ...], ...] = (
    (
        1,
        "Ada Lovelace",
        "ada.lovelace@example.com",
        "+1 415 555 0132",
        "536-22-8714",
        "4539 1488 0343 6467",
        "DE89 3704 0044 0532 0130 00",
        "prefers morning calls",
    ),
    (
        2,
        "Grace Hopper",
        "grace.hopper@navy.example.org",
        "(212) 555-0199",
        "471-93-2605",
        "5555 5555 5555 4444",
        "GB82 WEST 1234 5698 7654 32",
        None,
    ),
)
COLUMNS = ("id", "full_name", "email", "phone", "ssn", "card_number", "iban", "notes")
SENSITIVE = {"full_name", "email", "phone", "ssn", "card_number", "iban"}


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def _fragments() -> tuple[str, ...]:
    """Pieces of the real values that no masked output may contain (normalized: lower
    case, letters and digits only, so upper(), casts and separators do not hide them)."""
    out: set[str] = set()
    for _, name, email, phone, ssn, card, iban, _notes in ROWS:
        local = email.split("@")[0]
        out |= {_norm(name), _norm(name.split()[1]), _norm(local), _norm(email)}
        out.add(_norm(ssn))
        out.add(_norm(ssn)[:5])  # the partial mask keeps the last four digits only
        out.add(_norm(card)[:12])
        out.add(_norm(iban)[4:16])
        out.add(_norm(phone)[:-4])
        for value in (email, ssn, card, name):
            out.add(hashlib.md5(value.encode()).hexdigest())
            out.add(value.encode().hex())
            out.add(_norm(base64.b64encode(value.encode()).decode()))
    return tuple(sorted(out))


FRAGMENTS = _fragments()


def leaks(blob: str) -> list[str]:
    """The real-value fragments found in ``blob`` (also spelled backwards: reverse())."""
    norm = _norm(blob)
    rev = norm[::-1]
    return [f for f in FRAGMENTS if f in norm or f in rev]


# ---------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Schema:
    table: str
    view: str
    sql_fn: str  # LANGUAGE sql, returns the email
    plpgsql_fn: str  # LANGUAGE plpgsql, returns the email (opaque to lineage)

    def sql(self, text: str) -> str:
        return (
            text.replace("{T}", self.table)
            .replace("{V}", self.view)
            .replace("{F}", self.sql_fn)
            .replace("{P}", self.plpgsql_fn)
        )


def _create_schema(pg: PgServer) -> Schema:
    suffix = uuid.uuid4().hex[:10]
    s = Schema(
        f"customers_{suffix}",
        f"customer_contacts_{suffix}",
        f"customer_email_{suffix}",
        f"customer_email_pl_{suffix}",
    )
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(
            f"""create table {s.table} (
                id int primary key, full_name text, email text, phone text, ssn text,
                card_number text, iban text, notes text)"""
        )
        with conn.cursor() as cur:
            cur.executemany(f"insert into {s.table} values (%s, %s, %s, %s, %s, %s, %s, %s)", ROWS)
        conn.execute(
            f"create view {s.view} as select id, full_name as who, email as contact, notes from {s.table}"
        )
        conn.execute(
            f"create function {s.sql_fn}(cid int) returns text language sql stable "
            f"as 'select email from {s.table} where id = cid'"
        )
        conn.execute(
            f"create function {s.plpgsql_fn}(cid int) returns text language plpgsql stable "
            f"as $$ begin return (select email from {s.table} where id = cid); end $$"
        )
    return s


def _drop_schema(pg: PgServer, s: Schema) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"drop function if exists {s.sql_fn}(int)")
        conn.execute(f"drop function if exists {s.plpgsql_fn}(int)")
        conn.execute(f"drop table if exists {s.table} cascade")


def _direct(pg: PgServer, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        return conn.execute(sql).fetchall()


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    schema: Schema
    pg: PgServer


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    schema = _create_schema(pg_server)
    try:
        # What is returned must be masked whatever masking.predicates refuses (aggregates,
        # UNION): test_masking_inference.py covers the refusals.
        config = write_config(
            tmp_path_factory.mktemp("masking_bypass"), pg_server, extra={"masking": {"predicates": "allow"}}
        )
        with run_proxy(config) as proxy:
            yield Env(proxy, schema, pg_server)
    finally:
        _drop_schema(pg_server, schema)


# ---------------------------------------------------------------------- the clients

_PSQL_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"LC_ALL": "C"}


def psql(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``psql -X`` with unaligned, tuples-only output."""
    return subprocess.run(
        ["psql", dsn, "-X", "-q", "-A", "-t", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=_PSQL_ENV,
    )


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _asyncpg_connect(
    proxy: RunningProxy, reader: bool, database: str = "prod"
) -> asyncpg.Connection:
    identity, groups = (READER, READER_GROUPS) if reader else (MASKED, MASKED_GROUPS)
    return await asyncpg.connect(
        host=proxy.host,
        port=proxy.port,
        user=identity,
        password=proxy.token(identity, groups),
        database=database,
        ssl=_tls(),
        timeout=10,
    )


def _dsn(proxy: RunningProxy, reader: bool, dbname: str = "prod") -> str:
    if reader:
        return proxy.dsn(READER, groups=READER_GROUPS, dbname=dbname)
    return proxy.dsn(MASKED, groups=MASKED_GROUPS, dbname=dbname)


CLIENTS = ("psql", "psycopg", "psycopg-prepared", "psycopg-binary", "asyncpg")


def fetch(
    client: str, proxy: RunningProxy, sql: str, *, reader: bool, dbname: str = "prod"
) -> list[tuple[Any, ...]]:
    """The rows of one statement as ``client`` returns them (psql: strings, '' for NULL)."""
    if client == "psql":
        done = psql(_dsn(proxy, reader, dbname), "-v", "ON_ERROR_STOP=1", "-c", sql)
        assert done.returncode == 0, done.stderr
        return [tuple(line.split("|")) for line in done.stdout.splitlines()]
    if client.startswith("psycopg"):
        with psycopg.connect(_dsn(proxy, reader, dbname), autocommit=True) as conn:
            if client == "psycopg":
                return conn.execute(sql).fetchall()  # no parameters: the simple protocol
            if client == "psycopg-prepared":
                # Parse once, then Bind + Describe (portal) + Execute: Describe after Bind.
                conn.execute(sql, prepare=True).fetchall()
                return conn.execute(sql, prepare=True).fetchall()
            with conn.cursor(binary=True) as cur:
                return cur.execute(sql).fetchall()

    async def main() -> list[tuple[Any, ...]]:
        conn = await _asyncpg_connect(proxy, reader, dbname)
        try:
            return [tuple(r.values()) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(main())


def _null(value: Any) -> bool:
    return value is None or value == ""


def assert_masked(
    masked: Sequence[tuple[Any, ...]], real: Sequence[tuple[Any, ...]], *, keep: Sequence[int] = ()
) -> None:
    """Same shape; no fragment of a real value anywhere; every non-NULL cell differs from
    the real one, except the columns in ``keep`` which must be identical."""
    assert len(masked) == len(real), (masked, real)
    blob = repr(masked)
    assert leaks(blob) == [], f"real values leaked: {leaks(blob)} in {blob}"
    for mrow, rrow in zip(masked, real, strict=True):
        assert len(mrow) == len(rrow)
        for i, (mv, rv) in enumerate(zip(mrow, rrow, strict=True)):
            if i in keep:
                assert mv == rv, (i, mrow, rrow)
            elif not _null(rv):
                assert mv != rv, f"column {i} not masked: {mrow} (real {rrow})"


# ---------------------------------------------------------------------- bypass attempts

# Every output column derives from a sensitive column, unless its index is listed in
# the third element (those must be returned unaltered).
ATTEMPTS: list[tuple[str, str, tuple[int, ...]]] = [
    ("alias", "select email as contact, full_name as who, ssn as x from {T} c order by id", ()),
    (
        "cast-text",
        "select email::text, ssn::text, card_number::text, iban::text from {T} order by id",
        (),
    ),
    ("cast-bytea", "select email::bytea, full_name::bytea from {T} order by id", ()),
    (
        "cast-varchar3",
        "select email::varchar(3), ssn::varchar(3), card_number::varchar(3) from {T} order by id",
        (),
    ),
    ("upper-lower", "select upper(email), lower(full_name), upper(iban) from {T} order by id", ()),
    (
        "substr-left-right",
        "select substr(ssn, 1, 6), left(card_number, 9), right(email, 10) from {T} order by id",
        (),
    ),
    (
        "overlay-reverse",
        "select overlay(email placing 'x' from 1 for 1), reverse(email), reverse(ssn) from {T} order by id",
        (),
    ),
    (
        "concat",
        "select concat(email, '!'), email || ' ' || phone, 'n:' || full_name from {T} order by id",
        (),
    ),
    ("md5", "select md5(email), md5(ssn) from {T} order by id", ()),
    ("base64", "select encode(convert_to(email, 'UTF8'), 'base64') from {T} order by id", ()),
    ("row_to_json", "select row_to_json(c) from {T} c order by id", ()),
    ("to_jsonb", "select to_jsonb(c.*) from {T} c order by id", ()),
    ("whole-row", "select c from {T} c order by id", ()),
    ("json_agg", "select json_agg(email order by id) from {T}", ()),
    (
        "string_agg",
        "select string_agg(email, ',' order by id), string_agg(ssn, ';' order by id) from {T}",
        (),
    ),
    ("array_agg", "select array_agg(ssn order by id), array_agg(email order by id) from {T}", ()),
    ("select-star", "select * from {T} order by id", (0, 7)),
    ("alias-star", "select c.* from {T} c order by id", (0, 7)),
    ("union-harmless", "select email from {T} union all select 'harmless' order by 1", ()),
    (
        "union-positions",
        "select id, email from {T} union all select id, notes from {T} order by 1, 2",
        (0,),
    ),
    (
        "scalar-subquery",
        "select (select email from {T} i where i.id = o.id) from {T} o order by id",
        (),
    ),
    (
        "from-subquery",
        "select x.e, x.s from (select id, email as e, ssn as s from {T}) x order by x.id",
        (),
    ),
    (
        "cte",
        "with w as (select id, email, card_number from {T}) select email, card_number from w order by id",
        (),
    ),
    (
        "lateral",
        "select l.x from {T} c cross join lateral (select c.email as x) l order by c.id",
        (),
    ),
    ("view", "select id, who, contact, notes from {V} order by id", (0, 3)),
    ("sql-function", "select {F}(id) from {T} order by id", ()),
    (
        "coalesce-case",
        "select coalesce(email, 'none'), case when id > 0 then ssn end from {T} order by id",
        (),
    ),
    ("format", "select format('%s/%s', email, phone) from {T} order by id", ()),
]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize(("sql", "keep"), [pytest.param(a[1], a[2], id=a[0]) for a in ATTEMPTS])
def test_bypass_attempt_is_masked(env: Env, client: str, sql: str, keep: tuple[int, ...]) -> None:
    query = env.schema.sql(sql)
    real = fetch(client, env.proxy, query, reader=True)
    masked = fetch(client, env.proxy, query, reader=False)
    assert leaks(repr(real)) or any(
        not _null(v) for r in real for i, v in enumerate(r) if i not in keep
    ), "the attempt returns nothing sensitive: it cannot fail"
    assert_masked(masked, real, keep=keep)


def test_pii_readers_see_the_real_values(env: Env) -> None:
    table = env.schema.table
    direct = _direct(env.pg, f"select * from {table} order by id")
    assert direct == [tuple(r) for r in ROWS]
    for client in ("psycopg", "psycopg-prepared", "psycopg-binary", "asyncpg"):
        assert (
            fetch(client, env.proxy, f"select * from {table} order by id", reader=True) == direct
        ), client
    lines = fetch("psql", env.proxy, f"select * from {table} order by id", reader=True)
    assert lines == [tuple("" if v is None else str(v) for v in r) for r in ROWS]


@pytest.mark.parametrize("client", CLIENTS)
def test_columns_that_are_not_sensitive_are_never_altered(env: Env, client: str) -> None:
    table = env.schema.table
    sql = f"select id, notes, id * 2, length(notes), notes || '!' from {table} order by id"
    got = fetch(client, env.proxy, sql, reader=False)
    direct = _direct(env.pg, sql)
    if client == "psql":
        direct = [tuple("" if v is None else str(v) for v in r) for r in direct]
    assert got == direct


@pytest.mark.parametrize("client", CLIENTS)
def test_binary_and_text_results_decode_to_the_masked_values(env: Env, client: str) -> None:
    """Partial masks keep the shape a user expects, whatever the format."""
    table = env.schema.table
    rows = fetch(
        client,
        env.proxy,
        f"select email, ssn, card_number, iban from {table} order by id",
        reader=False,
    )
    assert [tuple(r) for r in rows] == [
        ("****@example.com", "***-**-8714", "**** **** **** 6467", "DE** **** **** **** **30 00"),
        (
            "****@navy.example.org",
            "***-**-2605",
            "**** **** **** 4444",
            "GB** **** **** **** **54 32",
        ),
    ]


# ---------------------------------------------------------------------- several results


def test_every_result_of_a_multi_statement_query_is_masked(env: Env) -> None:
    t = env.schema.table
    sql = f"select id, email from {t} order by id; select ssn, notes from {t} order by id; select upper(full_name) from {t} order by id"

    def sets(reader: bool) -> list[list[tuple[Any, ...]]]:
        out = []
        with psycopg.connect(_dsn(env.proxy, reader), autocommit=True) as conn:
            cur = conn.execute(sql)
            while True:
                out.append(cur.fetchall())
                if not cur.nextset():
                    break
        return out

    real, masked = sets(True), sets(False)
    assert len(real) == len(masked) == 3
    assert_masked(masked[0], real[0], keep=(0,))
    assert_masked(masked[1], real[1], keep=(1,))
    assert_masked(masked[2], real[2])

    out = psql(_dsn(env.proxy, False), "-c", sql)
    assert out.returncode == 0, out.stderr
    assert leaks(out.stdout) == [], out.stdout
    assert (
        "****@example.com" in out.stdout and "***-**-2605" in out.stdout and "<name>" in out.stdout
    )
    real_out = psql(_dsn(env.proxy, True), "-c", sql)
    assert "536-22-8714" in real_out.stdout and "ADA LOVELACE" in real_out.stdout


# ---------------------------------------------------------------------- COPY


def _copy_psycopg(proxy: RunningProxy, sql: str, reader: bool) -> str:
    with (
        psycopg.connect(_dsn(proxy, reader), autocommit=True) as conn,
        conn.cursor() as cur,
        cur.copy(sql) as copy,
    ):
        return b"".join(bytes(chunk) for chunk in copy).decode()


def _copy_asyncpg(proxy: RunningProxy, sql: str, reader: bool) -> str:
    async def main() -> str:
        conn = await _asyncpg_connect(proxy, reader)
        try:
            out = io.BytesIO()
            inner = sql.removeprefix("copy (").partition(") to stdout")[0]
            if sql.startswith("copy ("):
                fmt = "csv" if "csv" in sql.rpartition("to stdout")[2] else "text"
                await conn.copy_from_query(inner, output=out, format=fmt)
            else:
                table = sql.split()[1]
                fmt = "csv" if "csv" in sql else "text"
                await conn.copy_from_table(
                    table, output=out, format=fmt, header=True if "header" in sql else None
                )
            return out.getvalue().decode()
        finally:
            await conn.close()

    return asyncio.run(main())


def _copy_psql(proxy: RunningProxy, sql: str, reader: bool) -> str:
    done = psql(_dsn(proxy, reader), "-v", "ON_ERROR_STOP=1", "-c", sql)
    assert done.returncode == 0, done.stderr
    return done.stdout


COPIES = [
    pytest.param(
        "copy (select id, email, ssn, notes from {T} order by id) to stdout", "\t", id="query-text"
    ),
    pytest.param(
        "copy (select id, email, ssn, notes from {T} order by id) to stdout with (format csv)",
        ",",
        id="query-csv",
    ),
    pytest.param("copy {T} to stdout", "\t", id="table-text"),
    pytest.param("copy {T} to stdout with (format csv, header)", ",", id="table-csv"),
]


@pytest.mark.parametrize("client", ["psql", "psycopg", "asyncpg"])
@pytest.mark.parametrize(("sql", "sep"), COPIES)
def test_copy_to_stdout_is_masked(env: Env, client: str, sql: str, sep: str) -> None:
    query = env.schema.sql(sql)
    run = {"psql": _copy_psql, "psycopg": _copy_psycopg, "asyncpg": _copy_asyncpg}[client]
    real, masked = run(env.proxy, query, True), run(env.proxy, query, False)
    assert "ada.lovelace@example.com" in real and "536-22-8714" in real
    assert leaks(masked) == [], masked
    real_lines, masked_lines = real.splitlines(), masked.splitlines()
    assert len(real_lines) == len(masked_lines)
    if "header" in sql:
        assert masked_lines[0] == real_lines[0] == ",".join(COLUMNS)
        real_lines, masked_lines = real_lines[1:], masked_lines[1:]
    # id (first) and notes (last) are not sensitive: identical, even where CSV quotes them.
    for r, mline in zip(real_lines, masked_lines, strict=True):
        assert mline.split(sep)[0] == r.split(sep)[0]
        assert mline.rsplit(sep, 1)[1] == r.rsplit(sep, 1)[1]
        assert mline != r
    assert "****@example.com" in masked


def test_binary_copy_of_sensitive_columns_is_refused(env: Env) -> None:
    sql = f"copy {env.schema.table} to stdout (format binary)"
    with (
        psycopg.connect(_dsn(env.proxy, False), autocommit=True) as conn,
        pytest.raises(errors.InsufficientPrivilege),
        conn.cursor().copy(sql) as copy,
    ):
        for _ in copy:
            pass
    with (
        psycopg.connect(_dsn(env.proxy, True), autocommit=True) as conn,
        conn.cursor().copy(sql) as copy,
    ):
        data = b"".join(bytes(c) for c in copy)
    assert b"ada.lovelace@example.com" in data


# ---------------------------------------------------------------------- RETURNING


def _returning(
    client: str, proxy: RunningProxy, statements: Sequence[str], reader: bool, dbname: str
) -> list[list[tuple[Any, ...]]]:
    """Run write statements with RETURNING in one session, each on its own."""
    if client == "psql":
        out = []
        for sql in statements:
            done = psql(_dsn(proxy, reader, dbname), "-v", "ON_ERROR_STOP=1", "-c", sql)
            assert done.returncode == 0, done.stderr
            out.append(
                [
                    tuple(line.split("|"))
                    for line in done.stdout.splitlines()
                    if not line.startswith(("INSERT", "UPDATE", "DELETE"))
                ]
            )
        return out
    if client.startswith("psycopg"):
        with psycopg.connect(_dsn(proxy, reader, dbname), autocommit=True) as conn:
            res = []
            for sql in statements:
                if client == "psycopg-binary":
                    with conn.cursor(binary=True) as cur:
                        res.append(cur.execute(sql).fetchall())
                else:
                    res.append(conn.execute(sql).fetchall())
            return res

    async def main() -> list[list[tuple[Any, ...]]]:
        conn = await _asyncpg_connect(proxy, reader, dbname)
        try:
            return [[tuple(r.values()) for r in await conn.fetch(sql)] for sql in statements]
        finally:
            await conn.close()

    return asyncio.run(main())


@pytest.mark.parametrize("client", ["psql", "psycopg", "psycopg-binary", "asyncpg"])
def test_returning_of_insert_update_delete_is_masked(env: Env, client: str) -> None:
    t = env.schema.table
    new = (
        900,
        "Alan Turing",
        "alan.turing@example.com",
        "+44 20 7946 0958",
        "219-84-5512",
        "4539 1488 0343 6467",
        "DE89 3704 0044 0532 0130 00",
        "new",
    )

    def statements(rid: int) -> list[str]:
        values = ", ".join([str(rid)] + [f"'{v}'" for v in new[1:]])
        return [
            f"insert into {t} values ({values}) returning email, ssn, card_number, id, notes",
            f"update {t} set notes = 'touched' where id = {rid} returning full_name, iban, phone, id, notes",
            f"delete from {t} where id = {rid} returning email, ssn, id, notes",
        ]

    try:
        real = _returning(client, env.proxy, statements(900), True, "staging")
        masked = _returning(client, env.proxy, statements(901), False, "staging")
    finally:
        with psycopg.connect(env.pg.dsn(), autocommit=True) as conn:
            conn.execute(f"delete from {t} where id in (900, 901)")
    assert "alan.turing@example.com" in repr(real) and "219-84-5512" in repr(real)
    blob = repr(masked)
    assert "alan.turing" not in blob and "219-84-5512" not in blob and "Alan Turing" not in blob
    assert "0343 6467" not in blob.replace("**** **** **** 6467", "")
    assert leaks(blob) == [], blob
    for stmt_masked, stmt_real in zip(masked, real, strict=True):
        assert len(stmt_masked) == len(stmt_real) == 1
        m, r = stmt_masked[0], stmt_real[0]
        assert str(m[-1]) == str(r[-1])  # notes
        assert str(m[-2]) == str(int(r[-2]) + 1)  # id
        assert all(mv != rv for mv, rv in zip(m[:-2], r[:-2], strict=True))


def test_update_returning_in_production_is_masked(env: Env) -> None:
    t = env.schema.table
    sql = f"update {t} set notes = notes where id = 1 returning email, ssn, notes"
    with psycopg.connect(_dsn(env.proxy, False), autocommit=True) as conn:
        masked = conn.execute(sql).fetchall()
    with psycopg.connect(_dsn(env.proxy, True), autocommit=True) as conn:
        real = conn.execute(sql).fetchall()
    assert real == [("ada.lovelace@example.com", "536-22-8714", "prefers morning calls")]
    assert masked == [("****@example.com", "***-**-8714", "prefers morning calls")]


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize("client", CLIENTS)
def test_a_failed_cast_does_not_reveal_the_value(env: Env, client: str) -> None:
    sql = f"select email::int from {env.schema.table} where id = 1"

    def message(reader: bool) -> str:
        if client == "psql":
            done = psql(_dsn(env.proxy, reader), "-c", sql)
            assert done.returncode != 0
            return done.stderr
        try:
            fetch(client, env.proxy, sql, reader=reader)
        except (psycopg.Error, asyncpg.PostgresError) as err:
            diag = getattr(err, "diag", None)
            parts = [str(err), repr(getattr(err, "as_dict", lambda: {})())]
            if diag is not None:
                parts += [str(diag.message_detail), str(diag.message_hint), str(diag.context)]
            return "\n".join(parts)
        raise AssertionError("the cast did not fail")

    real = message(True)
    assert "ada.lovelace@example.com" in real  # what PostgreSQL says: the value itself
    masked = message(False)
    assert "ada.lovelace" not in masked and leaks(masked) == [], masked
    # The value is redacted, the rest of the message stays useful.
    assert "withheld" not in masked
    assert 'invalid input syntax for type integer: "<redacted>"' in masked, masked


# ---------------------------------------------------------------------- writing masks back


@pytest.mark.parametrize("value", ["<email>", "****@example.com"], ids=["placeholder", "partial"])
@pytest.mark.parametrize("who", ["masked", "reader"])
def test_writing_a_masked_value_back_is_refused(env: Env, value: str, who: str) -> None:
    t = env.schema.table
    with psycopg.connect(_dsn(env.proxy, who == "reader"), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"update {t} set email = '{value}' where id = 1")
        # A write that carries no mask goes through (the refusal is not a blanket one).
        conn.execute(f"update {t} set notes = 'prefers morning calls' where id = 1")
    assert _direct(env.pg, f"select email from {t} where id = 1") == [("ada.lovelace@example.com",)]
    done = psql(_dsn(env.proxy, False), "-c", f"update {t} set email = '{value}' where id = 2")
    assert done.returncode != 0 and "writing a masked value back is refused" in done.stderr
    assert _direct(env.pg, f"select email from {t} where id = 2") == [
        ("grace.hopper@navy.example.org",)
    ]


@pytest.mark.parametrize("value", ["note: ****", "see the <email> field", "Password: ****", "*important*"])
def test_text_that_merely_contains_a_marker_is_written(env: Env, value: str) -> None:
    """Only a value that is, as a whole, what the proxy emits is refused; prose that
    contains ``****`` or ``<email>`` is ordinary data, as a literal and as a parameter."""
    t = env.schema.table
    try:
        with psycopg.connect(_dsn(env.proxy, False), autocommit=True) as conn:
            conn.execute(f"update {t} set notes = '{value}' where id = 1")
            assert _direct(env.pg, f"select notes from {t} where id = 1") == [(value,)]
            conn.execute(f"update {t} set notes = %s where id = 1", (value + "!",))
            assert _direct(env.pg, f"select notes from {t} where id = 1") == [(value + "!",)]
    finally:
        with psycopg.connect(env.pg.dsn(), autocommit=True) as direct:
            direct.execute(f"update {t} set notes = 'prefers morning calls' where id = 1")


@pytest.mark.parametrize("client", ["psycopg", "asyncpg"])
def test_writing_a_masked_value_back_through_a_parameter_is_refused(env: Env, client: str) -> None:
    """What an application or ORM does: read a row, change a field, save it with bind
    parameters.  The masked email it read must not overwrite the real one."""
    t = env.schema.table
    try:
        if client == "psycopg":
            with psycopg.connect(_dsn(env.proxy, False), autocommit=True) as conn:
                (email,) = conn.execute(f"select email from {t} where id = 1").fetchone() or ("",)
                assert email == "****@example.com"
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(
                        f"update {t} set email = %s, notes = %s where id = %s", (email, "x", 1)
                    )
        else:

            async def main() -> None:
                conn = await _asyncpg_connect(env.proxy, False)
                try:
                    email = await conn.fetchval(f"select email from {t} where id = 1")
                    assert email == "****@example.com"
                    with pytest.raises(asyncpg.InsufficientPrivilegeError):
                        await conn.execute(f"update {t} set email = $1 where id = $2", email, 1)
                finally:
                    await conn.close()

            asyncio.run(main())
        assert _direct(env.pg, f"select email, notes from {t} where id = 1") == [
            ("ada.lovelace@example.com", "prefers morning calls")
        ]
    finally:
        with psycopg.connect(env.pg.dsn(), autocommit=True) as conn:
            conn.execute(
                f"update {t} set email = %s, notes = %s where id = 1", ROWS[0][2:3] + ROWS[0][7:8]
            )


# ---------------------------------------------------------------------- unresolved lineage


@pytest.mark.parametrize("client", CLIENTS)
def test_detect_masks_an_email_returned_by_plpgsql(env: Env, client: str) -> None:
    sql = env.schema.sql("select {P}(id) from {T} order by id")
    real = fetch(client, env.proxy, sql, reader=True)
    masked = fetch(client, env.proxy, sql, reader=False)
    assert [tuple(r) for r in real] == [
        ("ada.lovelace@example.com",),
        ("grace.hopper@navy.example.org",),
    ]
    assert_masked(masked, real)
    assert all("@" in str(r[0]) or "<" in str(r[0]) for r in masked)


@pytest.fixture(scope="module")
def deny_env(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    config = write_config(
        tmp_path_factory.mktemp("masking_deny"), env.pg, extra={"masking": {"unresolved": "deny"}}
    )
    with run_proxy(config) as proxy:
        yield Env(proxy, env.schema, env.pg)


@pytest.mark.parametrize("client", CLIENTS)
def test_deny_refuses_what_lineage_cannot_follow(deny_env: Env, client: str) -> None:
    sql = deny_env.schema.sql("select {P}(id) from {T} order by id")
    real = fetch(client, deny_env.proxy, sql, reader=True)
    assert [tuple(r) for r in real] == [
        ("ada.lovelace@example.com",),
        ("grace.hopper@navy.example.org",),
    ]
    if client == "psql":
        done = psql(_dsn(deny_env.proxy, False), "-c", sql)
        assert done.returncode != 0 and "masking.unresolved" in done.stderr, done
        assert "ada.lovelace" not in done.stdout + done.stderr
    else:
        with pytest.raises(
            (errors.InsufficientPrivilege, asyncpg.InsufficientPrivilegeError)
        ) as info:
            fetch(client, deny_env.proxy, sql, reader=False)
        assert "masking.unresolved" in str(info.value)
    # What lineage follows is still served, masked.
    masked = fetch(
        client,
        deny_env.proxy,
        deny_env.schema.sql("select email from {T} order by id"),
        reader=False,
    )
    assert [str(r[0]) for r in masked] == ["****@example.com", "****@navy.example.org"]


# ---------------------------------------------------------------------- prepared statements, cursors


def test_asyncpg_prepared_statement_and_cursor(env: Env) -> None:
    """Describe Statement, then Bind/Execute many times; a cursor's portal is executed in
    pieces (PortalSuspended between them)."""
    t = env.schema.table

    async def main(reader: bool) -> tuple[list[Any], list[Any]]:
        conn = await _asyncpg_connect(env.proxy, reader)
        try:
            stmt = await conn.prepare(f"select email, ssn, notes from {t} where id = $1")
            first = [tuple(await stmt.fetchrow(i)) for i in (1, 2, 1)]
            pieces: list[Any] = []
            async with conn.transaction():
                cur = await conn.cursor(f"select id, card_number, full_name from {t} order by id")
                pieces += [tuple(r) for r in await cur.fetch(1)]
                pieces += [tuple(r) for r in await cur.fetch(1)]
            return first, pieces
        finally:
            await conn.close()

    real_first, real_pieces = asyncio.run(main(True))
    masked_first, masked_pieces = asyncio.run(main(False))
    assert real_first[0] == ("ada.lovelace@example.com", "536-22-8714", "prefers morning calls")
    assert_masked(masked_first, real_first, keep=(2,))
    assert_masked(masked_pieces, real_pieces, keep=(0,))


def test_sql_prepare_execute_and_cursors(env: Env) -> None:
    t = env.schema.table
    script = (
        f"prepare p as select email, ssn from {t} order by id; execute p; deallocate p; "
        f"begin; declare c cursor for select full_name, card_number, notes from {t} order by id; "
        "fetch 1 from c; fetch all from c; commit"
    )

    def run(reader: bool) -> str:
        done = psql(_dsn(env.proxy, reader), "-v", "ON_ERROR_STOP=1", "-c", script)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "536-22-8714" in run(True) and "Grace Hopper" in run(True)
    masked = run(False)
    assert leaks(masked) == [], masked
    assert "prefers morning calls" in masked


# ---------------------------------------------------------------------- laundering through writes


def test_copying_sensitive_data_into_a_temporary_table_does_not_unmask_it(env: Env) -> None:
    """Temporary objects need no approval in production; reading them back must not
    return the real values of the columns they were filled from."""
    t = env.schema.table
    script = (
        f"create temp table tt as select id, full_name, email, ssn from {t}; "
        "select full_name, email, ssn from tt order by id"
    )
    real = psql(_dsn(env.proxy, True), "-v", "ON_ERROR_STOP=1", "-c", script)
    assert real.returncode == 0 and "ada.lovelace@example.com" in real.stdout, real
    masked = psql(_dsn(env.proxy, False), "-v", "ON_ERROR_STOP=1", "-c", script)
    assert leaks(masked.stdout) == [] or masked.returncode != 0, masked.stdout
    view = psql(
        _dsn(env.proxy, False),
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        f"create temp view tv as select email from {t}; select * from tv",
    )
    assert leaks(view.stdout) == [] or view.returncode != 0, view.stdout


def test_copying_a_sensitive_column_into_a_plain_one_does_not_unmask_it(env: Env) -> None:
    """UPDATE with WHERE is allowed in production; moving the email into ``notes`` and
    reading ``notes`` must not reveal it."""
    t = env.schema.table
    try:
        with psycopg.connect(_dsn(env.proxy, False), autocommit=True) as conn:
            try:
                conn.execute(f"update {t} set notes = email where id = 1")
            except errors.InsufficientPrivilege:
                return  # refused: nothing was copied
            (notes,) = conn.execute(f"select notes from {t} where id = 1").fetchone() or ("",)
        assert "ada.lovelace" not in str(notes)
    finally:
        with psycopg.connect(env.pg.dsn(), autocommit=True) as conn:
            conn.execute(f"update {t} set notes = %s where id = 1", (ROWS[0][7],))


# ---------------------------------------------------------------------- audit


def test_the_audit_record_lists_masked_columns_and_classes(env: Env) -> None:
    t = env.schema.table
    marker = f"mask_audit_{uuid.uuid4().hex[:8]}"
    sql = f"select email, upper(ssn) as {marker}, notes from {t} order by id"
    with psycopg.connect(_dsn(env.proxy, False), autocommit=True) as conn:
        assert conn.execute(sql).fetchall()[0][0] == "****@example.com"
    with psycopg.connect(_dsn(env.proxy, True), autocommit=True) as conn:
        assert conn.execute(sql).fetchall()[0][0] == "ada.lovelace@example.com"
    done = dbsentry_cli("audit", "search", "--json", "--text", marker, config=env.proxy.config_path)
    records = {r["identity"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert set(records) == {MASKED, READER}, records
    masked = records[MASKED]
    assert masked["masked_columns"] == [f"public.{t}.email", f"public.{t}.ssn"]
    assert masked["masked_classes"] == ["email", "national_id"]
    assert records[READER]["masked_columns"] == [] and records[READER]["masked_classes"] == []
    assert leaks(json.dumps(masked)) == []


# ---------------------------------------------------------------------- classify


def _classify(config: Path, *args: str) -> tuple[int, str]:
    """``dbsentry classify`` as a user runs it; through the command object when the CLI
    does not register it (yet)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "dbsentry", "--help"], capture_output=True, text=True, timeout=60
    )
    if re.search(r"^\s+classify\b", help_text.stdout, re.M):
        done = dbsentry_cli("classify", *args, config=config, check=False)
        return done.returncode, done.stdout + done.stderr
    from dbsentry.masking.cli import classify

    result = CliRunner().invoke(classify, ["-c", str(config), *args])
    return result.exit_code, result.output


def test_classify_lists_the_sensitive_columns(env: Env) -> None:
    t = env.schema.table
    code, out = _classify(env.proxy.config_path, "--connection", "prod")
    assert code == 0, out
    mine = [line.split() for line in out.splitlines() if line.startswith(f"public.{t} ")]
    got = {cols[1]: cols[2] for cols in mine}
    assert got == {
        "full_name": "person_name",
        "email": "email",
        "phone": "phone",
        "ssn": "national_id",
        "card_number": "payment_card",
        "iban": "iban",
    }
    assert all(len(cols) >= 4 for cols in mine)  # with evidence

    code, out = _classify(env.proxy.config_path, "--connection", "prod", "--json")
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    mine_json = {r["column"]: r for r in rows if r["table"] == f"public.{t}"}
    assert {c: r["class"] for c, r in mine_json.items()} == got
    assert all(r["evidence"] for r in mine_json.values())
    assert "id" not in mine_json and "notes" not in mine_json


def test_classify_shows_the_overrides_the_proxy_applies(env: Env, tmp_path: Path) -> None:
    t = env.schema.table
    overrides = {f"{t}.notes": "email", f"public.{t}.phone": "none"}
    # The safety net would still mask the phone number by its value: this is about the
    # classification, so it is off here.
    config = write_config(
        tmp_path, env.pg, extra={"masking": {"overrides": overrides, "safety_net": "off"}}
    )
    with (
        run_proxy(config) as proxy,
        psycopg.connect(proxy.dsn(MASKED, groups=MASKED_GROUPS), autocommit=True) as conn,
    ):
        row = conn.execute(f"select notes, phone from {t} where id = 1").fetchone()
    assert row is not None and row[0] != "prefers morning calls" and row[1] == "+1 415 555 0132"
    code, out = _classify(config, "--connection", "prod", "--json")
    assert code == 0, out
    mine = {
        r["column"]: r["class"]
        for r in map(json.loads, out.splitlines())
        if r["table"] == f"public.{t}"
    }
    assert mine.get("notes") == "email" and "phone" not in mine, mine

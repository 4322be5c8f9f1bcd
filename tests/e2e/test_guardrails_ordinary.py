"""Ordinary work in production is not blocked: no false positives from the guardrails.

Everything here runs on the production connection, where the baseline applies, and checks
its effect directly on the server.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg.pq import TransactionStatus

from support.pg import PgServer
from support.proxy import RunningProxy

pytestmark = pytest.mark.e2e

_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
ROWS = [(1, "one"), (2, "two"), (3, "three")]


def psql(dsn: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``psql -X`` with ON_ERROR_STOP: any refusal makes it exit non-zero."""
    return subprocess.run(
        ["psql", dsn, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=30,
        env={**_ENV, "LC_ALL": "C"},
    )


@pytest.fixture
def direct(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        yield c


@pytest.fixture
def table(direct: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"g_ord_{uuid.uuid4().hex[:12]}"
    direct.execute(f"create table {name} (id int primary key, note text)")
    with direct.cursor() as cur:
        cur.executemany(f"insert into {name} values (%s, %s)", ROWS)
    yield name
    direct.execute(f"drop table if exists {name} cascade")


@pytest.fixture
def conn(proxy: RunningProxy) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(proxy.dsn(), autocommit=True) as c:
        yield c


def rows(direct: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    return direct.execute(f"select id, note from {table} order by id").fetchall()


def test_crud_with_real_where(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any], table: str
) -> None:
    assert conn.execute(f"select note from {table} where id = 2").fetchone() == ("two",)
    conn.execute(f"insert into {table} values (4, 'four')")
    conn.execute(
        f"insert into {table} (id, note) select 5, 'five' where not exists (select 1 from {table} where id = 5)"
    )
    conn.execute(f"update {table} set note = 'ONE' where id = 1")
    conn.execute(f"update {table} set note = %s where id in (%s, %s)", ("p", 4, 5))
    conn.execute(f"delete from {table} where id = 3")
    conn.execute(f"delete from {table} where note = %s and id > %s", ("p", 4))
    conn.execute(
        f"with u as (update {table} set note = 'cte' where id = 2 returning id) select * from u"
    )
    conn.execute(
        f"merge into {table} t using (values (4, 'merged')) v(id, note) on t.id = v.id "
        "when matched then update set note = v.note when not matched then insert values (v.id, v.note)"
    )
    assert rows(direct, table) == [(1, "ONE"), (2, "cte"), (4, "merged")]


def test_crud_with_psql(proxy: RunningProxy, direct: psycopg.Connection[Any], table: str) -> None:
    script = (
        f"insert into {table} values (4, 'four');\n"
        f"update {table} set note = 'changed' where id = 1;\n"
        f"delete from {table} where id = 2;\n"
        f"select id from {table} where id > 2 order by id;\n"
    )
    done = psql(proxy.dsn(), input=script)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "3\n4\n"
    assert rows(direct, table) == [(1, "changed"), (3, "three"), (4, "four")]


def test_transactions_and_savepoints(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any], table: str
) -> None:
    conn.execute("begin")
    conn.execute(f"insert into {table} values (10, 'a')")
    conn.execute("savepoint s1")
    conn.execute(f"insert into {table} values (11, 'b')")
    conn.execute("rollback to savepoint s1")
    conn.execute("savepoint s2")
    conn.execute(f"insert into {table} values (12, 'c')")
    conn.execute("release savepoint s2")
    assert conn.info.transaction_status == TransactionStatus.INTRANS
    conn.execute("commit")
    conn.execute("start transaction isolation level repeatable read")
    conn.execute(f"insert into {table} values (13, 'rolled back')")
    conn.execute("rollback")
    assert rows(direct, table) == [*ROWS, (10, "a"), (12, "c")]


def test_settings_set_show_reset(conn: psycopg.Connection[Any]) -> None:
    conn.execute("set search_path = pg_catalog, public")
    conn.execute("set statement_timeout = '5s'")
    conn.execute("set application_name = 'guardrails'")
    conn.execute("set local lock_timeout = '1s'")
    conn.execute("select set_config('work_mem', '8MB', false)")
    assert conn.execute("show search_path").fetchone() == ("pg_catalog, public",)
    assert conn.execute("show statement_timeout").fetchone() == ("5s",)
    assert conn.execute("show work_mem").fetchone() == ("8MB",)
    assert conn.execute("select current_setting('application_name')").fetchone() == ("guardrails",)
    conn.execute("reset statement_timeout")
    conn.execute("reset all")
    assert conn.execute("show application_name").fetchone() != ("guardrails",)


def test_listen_notify(proxy: RunningProxy) -> None:
    channel = f"g_ch_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute(f"listen {channel}")
        conn.execute(f"notify {channel}, 'hello'")
        conn.execute("select 1")
        got = [(n.channel, n.payload) for n in conn.notifies(timeout=2, stop_after=1)]
        conn.execute(f"unlisten {channel}")
    assert got == [(channel, "hello")]


def test_prepare_execute_deallocate_discard(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any], table: str
) -> None:
    conn.execute(f"prepare g_get(int) as select note from {table} where id = $1")
    conn.execute(f"prepare g_upd(text, int) as update {table} set note = $1 where id = $2")
    assert conn.execute("execute g_get(2)").fetchone() == ("two",)
    conn.execute("execute g_upd('prepared', 3)")
    conn.execute("deallocate g_get")
    conn.execute("deallocate all")
    conn.execute("set application_name = 'before discard'")
    conn.execute("discard all")
    assert conn.execute("show application_name").fetchone() != ("before discard",)
    assert rows(direct, table) == [(1, "one"), (2, "two"), (3, "prepared")]


def test_copy_from_stdin_and_to_stdout(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any], table: str
) -> None:
    with conn.cursor() as cur:
        with cur.copy(f"copy {table} (id, note) from stdin") as copy:
            copy.write_row((7, "copied"))
            copy.write_row((8, "in"))
        with cur.copy(
            f"copy (select id, note from {table} where id > 6 order by id) to stdout"
        ) as copy:
            out = b"".join(bytes(chunk) for chunk in copy)
    assert out == b"7\tcopied\n8\tin\n"
    assert rows(direct, table) == [*ROWS, (7, "copied"), (8, "in")]


def test_psql_copy(proxy: RunningProxy, direct: psycopg.Connection[Any], table: str) -> None:
    done = psql(
        proxy.dsn(),
        "-c",
        f"copy {table} from stdin",
        "-c",
        f"copy {table} to stdout",
        input="9\tpsql copy\n\\.\n",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1\tone\n2\ttwo\n3\tthree\n9\tpsql copy\n"
    assert rows(direct, table) == [*ROWS, (9, "psql copy")]


def test_explain(
    conn: psycopg.Connection[Any], direct: psycopg.Connection[Any], table: str
) -> None:
    plan = conn.execute(f"explain select * from {table} where id = 1").fetchall()
    assert plan and "Scan" in plan[0][0]
    plan = conn.execute(
        f"explain (analyze, costs off) update {table} set note = 'x' where id = 1"
    ).fetchall()
    assert any("Update on" in line[0] for line in plan)
    # EXPLAIN without ANALYZE does not execute: the unbounded write inside is harmless.
    conn.execute(f"explain delete from {table}")
    assert rows(direct, table) == [(1, "x"), (2, "two"), (3, "three")]


def test_psql_describe(proxy: RunningProxy, table: str) -> None:
    done = psql(
        proxy.dsn(),
        "-c",
        f"\\d {table}",
        "-c",
        "\\dt",
        "-c",
        "\\dn",
        "-c",
        "\\df pg_sleep",
        "-c",
        "\\l",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("id|integer||not null|\nnote|text|||\n")
    assert f"public|{table}|table|postgres" in done.stdout


def test_harmless_functions(conn: psycopg.Connection[Any]) -> None:
    assert conn.execute("select pg_sleep(0.1), 'slept'").fetchone() == ("", "slept")
    assert conn.execute("select 1").fetchone() == (1,)
    row = conn.execute(
        "select version(), current_setting('server_version_num')::int >= 150000, now() is not null"
    ).fetchone()
    assert row is not None and row[0].startswith("PostgreSQL") and row[1:] == (True, True)


def test_temp_tables_for_humans(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute(f"create temp table scratch as select * from {table} where id < 3")
    conn.execute("select id into temp scratch2 from scratch")
    conn.execute("create temporary table scratch3 (x int)")
    assert conn.execute("select count(*) from scratch2").fetchone() == (2,)


def test_agent_reads_in_production(proxy: RunningProxy, table: str) -> None:
    with psycopg.connect(proxy.dsn("bot@example.com", agent=True), autocommit=True) as conn:
        assert conn.execute(f"select count(*) from {table} where id > %s", (0,)).fetchone() == (3,)
        assert conn.execute(
            f"select note from {table} order by id limit 1", prepare=True
        ).fetchone() == ("one",)
        conn.execute(f"explain select * from {table}")
        conn.execute("set statement_timeout = '10s'")
        assert conn.execute("show statement_timeout").fetchone() == ("10s",)
        conn.execute("begin")
        conn.execute(f"select * from {table}")
        conn.execute("commit")
    done = psql(
        proxy.dsn("bot@example.com", agent=True),
        "-c",
        f"\\d {table}",
        "-c",
        f"select count(*) from {table}",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n3\n")


def test_psycopg_connection_setup_and_types(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        # psycopg looks types up in the catalog (composite, enum, range info).
        info = psycopg.types.TypeInfo.fetch(conn, "int4range")
        assert info is not None and info.name == "int4range"
        assert conn.execute("select %s::int4range", ("[1,3)",)).fetchone() is not None


def test_asyncpg_connection_setup_and_introspection(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    async def main() -> None:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        conn = await asyncpg.connect(
            host=proxy.host,
            port=proxy.port,
            user="alice@example.com",
            password=proxy.token("alice@example.com", ("eng",)),
            database="prod",
            ssl=tls,
            timeout=10,
        )
        try:
            # Non-builtin types make asyncpg run its catalog introspection queries.
            got = await conn.fetchval("select $1::int4range", asyncpg.Range(1, 3))
            assert got == asyncpg.Range(1, 3)
            assert await conn.fetchval("select array[1.5, 2.5]::numeric[]") is not None
            await conn.execute(f"update {table} set note = $1 where id = $2", "asyncpg", 1)
            async with conn.transaction():
                await conn.execute(f"delete from {table} where id = $1", 3)
            stmt = await conn.prepare(f"select note from {table} where id = $1")
            assert await stmt.fetchval(2) == "two"
        finally:
            await conn.close()

    asyncio.run(main())
    assert rows(direct, table) == [(1, "asyncpg"), (2, "two")]

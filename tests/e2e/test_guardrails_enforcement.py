"""How a refusal reaches the client: SQLSTATE and message, transaction blocks, the extended
protocol, the statement size limit, approvals, and the same statements outside production.

Every test checks the database directly on the server, not only what the client was told.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
ROWS = [(1, "one"), (2, "two"), (3, "three")]


def psql(dsn: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", dsn, "-X", "-q", "-A", "-t", "-v", "VERBOSITY=verbose", *args],
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
    name = f"g_enf_{uuid.uuid4().hex[:12]}"
    direct.execute(f"create table {name} (id int primary key, note text)")
    with direct.cursor() as cur:
        cur.executemany(f"insert into {name} values (%s, %s)", ROWS)
    yield name
    direct.execute(f"drop table if exists {name} cascade")


def rows(direct: psycopg.Connection[Any], table: str) -> list[tuple[Any, ...]]:
    return direct.execute(f"select id, note from {table} order by id").fetchall()


def assert_refusal(err: psycopg.Error, rule: str, sqlstate: str = "42501") -> str:
    message = err.diag.message_primary or ""
    assert err.diag.sqlstate == sqlstate, message
    assert message.startswith("dbsentry:"), message
    assert rule in message, message
    return message


# ---------------------------------------------------------------- transaction blocks


def test_denial_fails_the_block_and_commit_does_not_commit(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute(f"insert into {table} values (10, 'earlier in the block')")
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            conn.execute(f"delete from {table}")
        assert_refusal(caught.value, "baseline.prod.unbounded-write")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction) as failed:
            conn.execute("select 1")
        assert failed.value.diag.sqlstate == "25P02"
        # COMMIT of a failed block is answered with ROLLBACK, exactly as by PostgreSQL.
        cur = conn.execute("commit")
        assert cur.statusmessage == "ROLLBACK"
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
        conn.commit()
    assert rows(direct, table) == ROWS


def test_rollback_after_denial_and_session_goes_on(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    with psycopg.connect(proxy.dsn()) as conn:
        conn.execute(f"update {table} set note = 'changed' where id = 1")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"truncate {table}")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.rollback()
        assert conn.info.transaction_status == TransactionStatus.IDLE
        conn.execute(f"insert into {table} values (11, 'after rollback')")
        conn.commit()
    assert rows(direct, table) == [*ROWS, (11, "after rollback")]


def test_rollback_to_savepoint_recovers_like_postgres(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("begin")
        conn.execute(f"insert into {table} values (12, 'before savepoint')")
        conn.execute("savepoint s1")
        conn.execute(f"insert into {table} values (13, 'inside savepoint')")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"drop table {table}")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.execute("rollback to savepoint s1")
        conn.execute(f"insert into {table} values (14, 'after savepoint')")
        conn.execute("commit")
    assert rows(direct, table) == [*ROWS, (12, "before savepoint"), (14, "after savepoint")]


def test_psql_block_with_denial_commits_nothing(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    script = (
        "begin;\n"
        f"insert into {table} values (20, 'in block');\n"
        f"delete from {table} where 1 = 1;\n"
        "select 'not reached';\n"
        "commit;\n"
        "select 'after: ' || count(*) from " + table + ";\n"
    )
    done = psql(proxy.dsn(), input=script)
    assert (
        "ERROR:  42501: dbsentry: " in done.stderr
        and "baseline.prod.unbounded-write" in done.stderr
    )
    assert "ERROR:  25P02: current transaction is aborted" in done.stderr
    assert done.stdout == "after: 3\n", done.stderr
    assert rows(direct, table) == ROWS


def test_denial_in_implicit_block_of_a_query_string(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    """A multi-statement Query with explicit BEGIN/COMMIT: refused as a whole, nothing runs."""
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(
                f"begin; insert into {table} values (21, 'x'); alter system set work_mem = '77MB'; commit"
            )
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert conn.execute("select 1").fetchone() == (1,)
    assert rows(direct, table) == ROWS
    assert ("work_mem", "77MB") not in direct.execute(
        "select name, setting from pg_file_settings where sourcefile like '%postgresql.auto.conf'"
    ).fetchall()


# ---------------------------------------------------------------- extended protocol


def test_extended_protocol_with_params(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            conn.execute(f"update {table} set note = %s", ("overwritten",))
        assert_refusal(caught.value, "baseline.prod.unbounded-write")
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            conn.execute(f"delete from {table} where %s::int > 0 or true", (1,))
        assert_refusal(caught.value, "baseline.prod.unbounded-write")
        # Usable afterwards, with parameters too.
        assert conn.execute("select %s::int + 1", (41,)).fetchone() == (42,)
        conn.execute(f"update {table} set note = %s where id = %s", ("param ok", 2))
    assert rows(direct, table) == [(1, "one"), (2, "param ok"), (3, "three")]


def test_extended_protocol_prepared(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        for _ in range(3):  # refused each time, also once psycopg would have prepared it
            with pytest.raises(errors.InsufficientPrivilege) as caught:
                conn.execute(f"delete from {table} where id = %s or id = id", (1,), prepare=True)
            assert_refusal(caught.value, "baseline.prod.unbounded-write")
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            conn.execute("select pg_read_file(%s)", ("PG_VERSION",), prepare=True)
        assert_refusal(caught.value, "baseline.prod.file-access")
        for i in range(6):
            assert conn.execute(
                f"select count(*) + %s from {table}", (i,), prepare=True
            ).fetchone() == (3 + i,)
    assert rows(direct, table) == ROWS


def test_extended_protocol_pipeline_in_block(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    with psycopg.connect(proxy.dsn()) as conn:
        with pytest.raises(errors.InsufficientPrivilege), conn.pipeline():
            conn.execute(f"insert into {table} values (%s, %s)", (30, "pipelined"))
            conn.execute(f"update {table} set note = %s", ("all rows",))
            conn.execute(f"insert into {table} values (%s, %s)", (31, "after"))
        assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("select %s::text", ("ok",)).fetchone() == ("ok",)
    assert rows(direct, table) == ROWS


def test_executemany_of_a_dangerous_statement(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with conn.cursor() as cur, pytest.raises(errors.InsufficientPrivilege):
            cur.executemany(f"delete from {table} where id = %s or 1 = 1", [(1,), (2,)])
        assert conn.execute("select 1").fetchone() == (1,)
    assert rows(direct, table) == ROWS


def test_asyncpg_denied_and_usable(
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
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as caught:
                await conn.execute(f"update {table} set note = $1", "asyncpg")
            assert caught.value.sqlstate == "42501"
            assert str(caught.value).startswith("dbsentry:")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"truncate {table}")  # simple protocol
            async with conn.transaction():
                await conn.execute(f"insert into {table} values ($1, $2)", 40, "asyncpg ok")
            assert await conn.fetchval(f"select count(*) from {table}") == 4
        finally:
            await conn.close()

    asyncio.run(main())
    assert rows(direct, table) == [*ROWS, (40, "asyncpg ok")]


def test_sql_prepare_of_dangerous_statement_then_execute(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            conn.execute(f"prepare g_del as delete from {table}")
        assert_refusal(caught.value, "baseline.prod.unbounded-write")
        # It was never prepared upstream.
        with pytest.raises(errors.InvalidSqlStatementName):
            conn.execute("execute g_del")
    assert rows(direct, table) == ROWS


# ---------------------------------------------------------------- statement size limit


@pytest.fixture
def small_limit_proxy(pg_server: PgServer, tmp_path: Path) -> Iterator[RunningProxy]:
    with run_proxy(
        write_config(tmp_path, pg_server, extra={"limits": {"max_statement_bytes": 200}})
    ) as running:
        yield running


def test_statement_over_the_size_limit(
    small_limit_proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    big = f"insert into {table} values (50, '{'x' * 300}')"
    with psycopg.connect(small_limit_proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(big)
        message = caught.value.diag.message_primary or ""
        assert caught.value.diag.sqlstate == "54000", message
        assert message == (
            f"dbsentry: statement of {len(big)} bytes exceeds the limit of 200 bytes (limits.max_statement_bytes)"
        )
        # Extended protocol: the same limit on the statement text.
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(big.replace("(50,", "(%s,"), (51,))
        assert caught.value.diag.sqlstate == "54000"
        assert "limits.max_statement_bytes" in (caught.value.diag.message_primary or "")
        # A statement under the limit, with a long parameter value, is fine.
        conn.execute(f"insert into {table} values (%s, %s)", (52, "y" * 1000))
    done = psql(small_limit_proxy.dsn(), "-c", big, "-c", "select 'psql still here'")
    assert "ERROR:  54000: dbsentry: statement of" in done.stderr
    assert done.stdout == "psql still here\n"
    assert rows(direct, table) == [*ROWS, (52, "y" * 1000)]


# ---------------------------------------------------------------- approvals and staging

# (id, SQL template, rule, a query on the server that is true when the change happened)
DDL_CASES: list[tuple[str, str, str, str]] = [
    (
        "create-index",
        "CREATE INDEX {t}_note_ix ON {t} (note)",
        "baseline.prod.ddl-approval",
        "select count(*) = 1 from pg_indexes where indexname = '{t}_note_ix'",
    ),
    (
        "alter-table-add-column",
        "ALTER TABLE {t} ADD COLUMN extra int",
        "baseline.prod.ddl-approval",
        "select count(*) = 1 from information_schema.columns where table_name = '{t}' and column_name = 'extra'",
    ),
    (
        "create-table",
        "create table {t}_new (id int)",
        "baseline.prod.ddl-approval",
        "select to_regclass('{t}_new') is not null",
    ),
    (
        "create-view",
        "create view {t}_v as select id from {t}",
        "baseline.prod.ddl-approval",
        "select to_regclass('{t}_v') is not null",
    ),
    (
        "alter-table-rename",
        "alter table {t} rename column note to remark",
        "baseline.prod.ddl-approval",
        "select count(*) = 1 from information_schema.columns where table_name = '{t}' and column_name = 'remark'",
    ),
    (
        "grant",
        "GRANT SELECT ON {t} TO {t}_role",
        "baseline.prod.role-approval",
        "select has_table_privilege('{t}_role', '{t}', 'SELECT')",
    ),
    (
        "create-role",
        "CREATE ROLE {t}_newrole",
        "baseline.prod.role-approval",
        "select count(*) = 1 from pg_roles where rolname = '{t}_newrole'",
    ),
]


@pytest.fixture
def ddl_table(direct: psycopg.Connection[Any], table: str) -> Iterator[str]:
    direct.execute(f"create role {table}_role nologin")
    yield table
    direct.execute(f"drop table if exists {table}_new")
    direct.execute(f"drop view if exists {table}_v")
    direct.execute(f"drop table if exists {table} cascade")
    direct.execute(f"drop role if exists {table}_role")
    direct.execute(f"drop role if exists {table}_newrole")


@pytest.mark.parametrize(
    ("template", "rule", "happened"), [c[1:] for c in DDL_CASES], ids=[c[0] for c in DDL_CASES]
)
def test_ddl_needs_approval_in_production(
    proxy: RunningProxy,
    direct: psycopg.Connection[Any],
    ddl_table: str,
    template: str,
    rule: str,
    happened: str,
) -> None:
    sql = template.format(t=ddl_table)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            conn.execute(sql)
        message = assert_refusal(caught.value, rule)
        assert "approval" in message and "dba" in message, message
        assert conn.execute("select 1").fetchone() == (1,)
    done = psql(proxy.dsn(), "-c", sql)
    assert (
        "ERROR:  42501: dbsentry: " in done.stderr and "dba" in done.stderr and rule in done.stderr
    )
    assert direct.execute(happened.format(t=ddl_table)).fetchone() == (False,)


@pytest.mark.parametrize(
    ("template", "happened"), [(c[1], c[3]) for c in DDL_CASES], ids=[c[0] for c in DDL_CASES]
)
def test_same_ddl_is_allowed_in_staging(
    proxy: RunningProxy,
    direct: psycopg.Connection[Any],
    ddl_table: str,
    template: str,
    happened: str,
) -> None:
    with psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as conn:
        conn.execute(template.format(t=ddl_table))
    assert direct.execute(happened.format(t=ddl_table)).fetchone() == (True,)


def test_staging_allows_what_production_denies(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    done = psql(
        proxy.dsn(dbname="staging"),
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        f"update {table} set note = 'all' where 1 = 1",
        "-c",
        f"delete from {table} where id = id and id = 3",
    )
    assert done.returncode == 0, done.stderr
    assert rows(direct, table) == [(1, "all"), (2, "all")]
    with psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as conn:
        conn.execute(f"truncate {table}")
        assert rows(direct, table) == []
        conn.execute(f"drop table {table}")
    assert direct.execute("select to_regclass(%s)", (table,)).fetchone() == (None,)


def test_agent_writes_allowed_in_staging(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    with psycopg.connect(
        proxy.dsn("bot@example.com", agent=True, dbname="staging"), autocommit=True
    ) as conn:
        conn.execute(f"insert into {table} values (60, 'agent in staging')")
    assert rows(direct, table) == [*ROWS, (60, "agent in staging")]


@pytest.mark.parametrize("dbname", ["prod", "staging"])
@pytest.mark.parametrize(
    "sql",
    [
        "SELEC 1",
        "select 1 from",
        "select (1",
        "select 1; selec 2",
        "insert into {t} values (70, 'x'); bogus",
    ],
)
def test_unparsable_is_denied_everywhere(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str, dbname: str, sql: str
) -> None:
    text = sql.format(t=table)
    # PostgreSQL's own answer (42601, with its position), never sent: nothing of the string
    # runs, not even the statements before the error.
    with psycopg.connect(proxy.dsn(dbname=dbname), autocommit=True) as conn:
        with pytest.raises(errors.SyntaxError) as caught:
            conn.execute(text)
        assert caught.value.diag.message_hint == "dbsentry: the statement was not sent to the database"
        assert caught.value.diag.statement_position is not None
        assert conn.execute("select 1").fetchone() == (1,)
    done = psql(proxy.dsn(dbname=dbname), "-c", text, "-c", "select 'alive'")
    assert "ERROR:  42601: syntax error" in done.stderr, done.stderr
    assert "HINT:  dbsentry: the statement was not sent to the database" in done.stderr
    assert done.stdout == "alive\n"
    assert rows(direct, table) == ROWS

"""Copies of classified data: refused to masked identities, inherited by their target.

A masked identity may not store classified values anywhere else, however the values get
there: whole-row references (``c::text``, ``row_to_json(c)``), SQL and PL/pgSQL functions,
subqueries, data-modifying CTEs, EXPLAIN ANALYZE, MERGE, CREATE TABLE AS.  Someone who may
see real values (``pii-readers``) may copy them, but the column the copy lands in inherits
the class: a masked identity reading it later, in another session or after a restart of
the proxy, sees it masked.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.guard_clients import MODES, Login, run
from support.leaks import Secrets
from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

EMAIL = "ada.lovelace@example.com"
NAME = "Ada Lovelace"
SECRETS = Secrets([EMAIL, NAME])
MASKED = Login("eve@example.com", ("eng",))
READER = Login("rita@example.com", ("eng", "pii-readers"))


@dataclass(frozen=True)
class Env:
    config: Path
    pg: PgServer
    s: str

    def direct(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.pg.dsn(), autocommit=True) as c:
            cur = c.execute(sql)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def proxy(env: Env) -> Iterator[RunningProxy]:
    with run_proxy(env.config) as running:
        yield running


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"mc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        c.execute(f"create schema {s}")
        c.execute(f"create table {s}.customers (id int primary key, email text, full_name text, city text)")
        c.execute(f"insert into {s}.customers values (1, %s, %s, 'London')", (EMAIL, NAME))
        c.execute(f"create table {s}.log (id serial, msg text)")
        c.execute(f"create table {s}.notes (id int, body text)")
        c.execute(f"insert into {s}.notes values (1, 'hello')")
        c.execute(
            f"create function {s}.sql_email(int) returns text language sql stable as "
            f"$$ select email from {s}.customers where id = $1 $$"
        )
        c.execute(
            f"create function {s}.pl_email(int) returns text language plpgsql stable as "
            f"$$ begin return (select email from {s}.customers where id = $1); end $$"
        )
    config = write_config(tmp_path_factory.mktemp("copies"), pg_server)
    try:
        yield Env(config, pg_server, s)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"drop schema {s} cascade")


COPIES = [
    "insert into {s}.log (msg) select c::text from {s}.customers c",
    "insert into {s}.log (msg) select row_to_json(c)::text from {s}.customers c",
    "insert into {s}.log (msg) select to_jsonb(c.*)->>'email' from {s}.customers c",
    "insert into {s}.log (msg) select {s}.sql_email(id) from {s}.customers",
    "insert into {s}.log (msg) select {s}.pl_email(1)",
    "insert into {s}.log (msg) values ((select full_name from {s}.customers limit 1))",
    "update {s}.notes set body = (select email from {s}.customers limit 1) where id = 1",
    "update {s}.notes n set body = c.full_name from {s}.customers c where c.id = n.id",
    "with x as (insert into {s}.log (msg) select email from {s}.customers returning 1) select count(*) from x",
    "explain analyze insert into {s}.log (msg) select upper(email) from {s}.customers",
    "merge into {s}.notes n using {s}.customers c on c.id = n.id when matched then update set body = c.email",
    "insert into {s}.notes (id, body) select 1, email from {s}.customers on conflict do nothing",
    "prepare cp as insert into {s}.log (msg) select email from {s}.customers",
    "create temp table loot as select row_to_json(c)::text as j from {s}.customers c",
    "select email as c1 into temp loot2 from {s}.customers",
    "create temp table t3 as select 1 as x; insert into t3 select 1 from {s}.customers; "
    "create temp table t4 (m text); insert into t4 select email from {s}.customers",
]


def _copied(env: Env) -> str:
    return str(env.direct(f"select msg from {env.s}.log")) + str(env.direct(f"select body from {env.s}.notes"))


@pytest.mark.parametrize("mode", ["psql", "psycopg", "asyncpg"])
@pytest.mark.parametrize("sql", COPIES)
def test_masked_identities_may_not_copy(env: Env, proxy: RunningProxy, mode: str, sql: str) -> None:
    (o,) = run(mode, proxy, [sql.format(s=env.s)], MASKED)
    assert o.sqlstate == "42501", str(o)
    SECRETS.assert_no_leak(_copied(env), context=f"copied by {sql!r}")


@pytest.mark.parametrize("mode", ["psql", "psycopg"])
def test_harmless_copies_and_own_column_updates_pass(env: Env, proxy: RunningProxy, mode: str) -> None:
    out = run(
        mode,
        proxy,
        [
            f"insert into {env.s}.log (msg) select city from {env.s}.customers",
            f"update {env.s}.customers set email = lower(email) where id = 1",
            f"delete from {env.s}.log where msg = 'London'",
            "create temp table mine (x text)",
            "insert into mine values ('mine')",
        ],
        MASKED,
    )
    for o in out:
        assert o.ok, str(o)


def test_a_copy_made_by_a_reader_stays_masked(env: Env, tmp_path: Path) -> None:
    table = f"{env.s}.archive_{uuid.uuid4().hex[:6]}"
    env.direct(f"create table {table} (id int, c1 text, c2 text, c3 text)")
    config = write_config(tmp_path, env.pg)  # a proxy of its own: its state is what counts
    with run_proxy(config) as proxy:
        # The catalog must know the table (it was created directly, before this proxy).
        (o,) = run(
            "psycopg",
            proxy,
            [
                f"insert into {table} select id, upper(email), c::text, city from {env.s}.customers c"
            ],
            READER,
        )
        assert o.ok, str(o)
        for mode in MODES:
            (seen,) = run(mode, proxy, [f"select c1, c2, c3 from {table}"], MASKED)
            assert seen.ok and seen.rows and seen.rows[0][2] == "London", str(seen)
            SECRETS.assert_no_leak(seen.rows, context=mode)
        (real,) = run("psycopg", proxy, [f"select c1 from {table}"], READER)
        assert real.rows == [(EMAIL.upper(),)], str(real)
    # After a restart the copy is still known.
    with run_proxy(config) as proxy:
        for mode in ("psql", "asyncpg"):
            (seen,) = run(mode, proxy, [f"select upper(c1), c2 from {table}"], MASKED)
            assert seen.ok, str(seen)
            SECRETS.assert_no_leak(seen.rows, context=f"after a restart, {mode}")


def test_a_table_created_from_a_copy_stays_masked(env: Env, tmp_path: Path) -> None:
    table = f"{env.s}.made_{uuid.uuid4().hex[:6]}"
    with run_proxy(write_config(tmp_path, env.pg)) as proxy:
        login = Login(READER.identity, READER.groups, dbname="staging")
        (o,) = run("psycopg", proxy, [f"create table {table} as select full_name as who, city from {env.s}.customers"], login)
        assert o.ok, str(o)
        for mode in MODES:
            (seen,) = run(mode, proxy, [f"select who || '' as w, city from {table}"], Login(MASKED.identity, MASKED.groups, dbname="staging"))
            assert seen.ok and seen.rows and seen.rows[0][1] == "London", str(seen)
            SECRETS.assert_no_leak(seen.rows, context=mode)


@pytest.mark.parametrize("change", ["rename", "comment"])
def test_a_renamed_or_recommented_column_keeps_its_class(env: Env, tmp_path: Path, change: str) -> None:
    table = f"{env.s}.people_{uuid.uuid4().hex[:6]}"
    env.direct(f"create table {table} (id int, email text, full_name text)")
    env.direct(f"insert into {table} values (1, '{EMAIL}', '{NAME}')")
    ddl = {
        "rename": [f"alter table {table} rename column email to c1", f"alter table {table} rename column full_name to c2"],
        "comment": [f"comment on column {table}.email is 'pii:none'", f"comment on column {table}.full_name is 'pii:none'"],
    }[change]
    cols = "c1, c2" if change == "rename" else "email, full_name"
    with run_proxy(write_config(tmp_path, env.pg)) as proxy:
        staging = Login(READER.identity, READER.groups, dbname="staging")
        before = run("psycopg", proxy, [f"select email, full_name from {table}"], Login(MASKED.identity, MASKED.groups, dbname="staging"))
        SECRETS.assert_no_leak(before[0].rows)
        for o in run("psycopg", proxy, ddl, staging):
            assert o.ok, str(o)
        # The catalog is read again in the background after DDL: before and after that.
        for mode in ("psql", "psycopg", "asyncpg") * 2:
            (seen,) = run(mode, proxy, [f"select {cols} from {table}"], Login(MASKED.identity, MASKED.groups, dbname="staging"))
            assert seen.ok, str(seen)
            SECRETS.assert_no_leak(seen.rows, context=f"{change}, {mode}")


def test_a_statement_prepared_before_a_classification_is_planned_again(env: Env, proxy: RunningProxy) -> None:
    """A column classified (a comment) after a client prepared a statement that reads it:
    the next execution of that prepared statement is masked, as the server re-plans it too.
    Planned once at Parse, it kept returning the column unmasked until a reconnect."""
    table = f"{env.s}.staff_{uuid.uuid4().hex[:6]}"
    env.direct(f"create table {table} (id int primary key, nick text)")
    env.direct(f"insert into {table} values (1, '{NAME}')")
    dsn = proxy.dsn(MASKED.identity, groups=MASKED.groups, dbname="staging")
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = f"select nick from {table} where id = %s"
        assert conn.execute(query, (1,), prepare=True).fetchone() == (NAME,)  # nothing classified yet
        with psycopg.connect(proxy.dsn(READER.identity, groups=READER.groups, dbname="staging"), autocommit=True) as other:
            other.execute(f"comment on column {table}.nick is 'pii:person_name'")
        deadline = time.monotonic() + 10
        while True:  # the catalog is read again in the background
            row = conn.execute(query, (1,), prepare=True).fetchone()
            assert row is not None
            if NAME not in str(row[0]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        SECRETS.assert_no_leak(repr(row), context="the prepared statement after the comment")


def test_ddl_in_a_transaction_is_read_once_it_commits(env: Env, proxy: RunningProxy) -> None:
    """DDL inside BEGIN ... COMMIT: the catalog is read again when the transaction ends. Read
    at the DDL's own completion, it saw the catalog as it was and kept it (300 s)."""
    table = f"{env.s}.crew_{uuid.uuid4().hex[:6]}"
    env.direct(f"create table {table} (id int primary key, nick text)")
    env.direct(f"insert into {table} values (1, '{NAME}')")
    masked = psycopg.connect(proxy.dsn(MASKED.identity, groups=MASKED.groups, dbname="staging"), autocommit=True)
    with masked, psycopg.connect(proxy.dsn(READER.identity, groups=READER.groups, dbname="staging")) as reader:
        assert masked.execute(f"select nick from {table}").fetchone() == (NAME,)  # nothing classified yet
        reader.execute(f"comment on column {table}.nick is 'pii:person_name'")  # psycopg opened a transaction
        time.sleep(1.5)  # a catalog read started now would see the old comment
        reader.commit()
        deadline = time.monotonic() + 10
        while True:
            row = masked.execute(f"select nick from {table}").fetchone()
            assert row is not None
            if NAME not in str(row[0]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        SECRETS.assert_no_leak(repr(row), context="after the transaction's COMMIT")

"""What the guardrails must not stop: ordinary application and agent work in production.

Point updates and deletes, batches under the limits, transactions with savepoints, the
catalog queries ORMs and drivers send, everyday settings, small upserts, executemany and
pipelines, agents' analytical reads, a pgbench TPC-B run.  Each through real clients, with
the effect checked directly on the server.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg
import pytest

from support.guard_clients import AGENT, MODES, PARAM_MODES, Login, refused, run
from support.pg import PgServer
from support.pgbench import ENV as _ENV
from support.pgbench import ensure_pgbench_tables
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

ACCOUNTS = 1000


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    pg: PgServer
    s: str

    @property
    def acct(self) -> str:
        return f"{self.s}.accounts"

    def direct(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.dsn(), autocommit=True)


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"gfp_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        c.execute(
            f"""
            create schema {s};
            create table {s}.accounts (id int primary key, owner text not null, balance numeric not null default 0,
                                       note text);
            create table {s}.orders (id serial primary key, account int references {s}.accounts on delete cascade,
                                     amount numeric, placed date default current_date);
            create table {s}.tiny (id int primary key, note text);
            create type {s}.pair as (a int, b text);
            create type {s}.mood as enum ('ok', 'great');
            create function {s}.balance_of(int) returns numeric stable language sql as
              $$ select balance from {s}.accounts where id = $1 $$;
            create function {s}.double(int) returns int immutable language sql as $$ select $1 * 2 $$;
            create function {s}.order_count(int) returns bigint stable language plpgsql as
              $$ begin return (select count(*) from {s}.orders where account = $1); end $$;
            create function {s}.bump(int) returns int language plpgsql as
              $$ begin update {s}.accounts set balance = balance + 1 where id = $1; return 1; end $$;
            create view {s}.rich as select id, owner from {s}.accounts where balance > 100;
            """
        )
    config = write_config(tmp_path_factory.mktemp("guard_false_positives"), pg_server)
    try:
        with run_proxy(config) as proxy:
            yield Env(proxy, pg_server, s)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"drop schema if exists {s} cascade")


@pytest.fixture
def accounts(env: Env) -> str:
    with env.direct() as c:
        c.execute(f"truncate {env.acct} cascade")
        c.execute(
            f"insert into {env.acct} select g, 'owner' || g, g, null from generate_series(1, {ACCOUNTS}) g"
        )
        c.execute(
            f"insert into {env.s}.orders (account, amount) select (g % 50) + 1, g from generate_series(1, 200) g"
        )
        c.execute(f"truncate {env.s}.tiny")
        c.execute(f"insert into {env.s}.tiny select g, 't' || g from generate_series(1, 9) g")
    return env.acct


def q(env: Env, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with env.direct() as c:
        return c.execute(sql, params or None).fetchall()


def all_ok(out: list[Any]) -> None:
    bad = [str(o) for o in out if not o.ok]
    assert not bad, "refused: " + " | ".join(bad)


# ================================================================ writes people make


@pytest.mark.parametrize("mode", MODES)
def test_point_updates_and_deletes(env: Env, accounts: str, mode: str) -> None:
    a = env.acct
    all_ok(
        run(
            mode,
            env.proxy,
            [
                f"update {a} set note = 'vip' where id = 1",
                f"update {a} set balance = balance - 10 where id = 2 and balance >= 10",
                f"delete from {a} where id = 3",
                f"delete from {a} where id in (4, 5)",
                f"insert into {a} (id, owner) values (2001, 'new')",
                f"update {a} set note = 'x' where owner = 'owner6'",
                f"delete from {a} where id = any(array[7, 8])",
                f"select {env.s}.bump(9)",
            ],
        )
    )
    assert q(env, f"select id, note from {a} where id in (1, 6) order by id") == [
        (1, "vip"),
        (6, "x"),
    ]
    assert q(env, f"select count(*) from {a}") == [(ACCOUNTS - 5 + 1,)]
    assert q(env, f"select balance from {a} where id in (2, 9) order by id") == [(2,), (10,)]


@pytest.mark.parametrize("mode", PARAM_MODES)
def test_point_writes_with_parameters(env: Env, accounts: str, mode: str) -> None:
    a = env.acct
    all_ok(
        run(
            mode,
            env.proxy,
            [
                (f"update {a} set note = %s where id = %s", ("param", 10)),
                (f"delete from {a} where id = %s", (11,)),
                (f"delete from {a} where %s = %s and id = 12", ("1", "2")),
                (
                    f"insert into {a} (id, owner) values (%s, %s) on conflict (id) do update set owner = excluded.owner",
                    (13, "upserted"),
                ),
            ],
        )
    )
    assert q(env, f"select id, owner, note from {a} where id between 10 and 13 order by id") == [
        (10, "owner10", "param"),
        (12, "owner12", None),
        (13, "upserted", None),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_batches_under_the_limits(env: Env, accounts: str, mode: str) -> None:
    a = env.acct
    out = run(
        mode,
        env.proxy,
        [
            f"update {a} set note = 'batch' where id <= 100",
            f"update {a} set balance = balance * 2 where id % 10 = 0",
            f"delete from {a} where id > 600",
            f"update {env.s}.tiny set note = 'all nine' where id > 0",
            f"delete from {env.s}.orders where account = 1",
            f"insert into {a} (id, owner) select g, 'bulk' from generate_series(5001, 10000) g",
        ],
    )
    all_ok(out)
    assert q(env, f"select count(*) from {a} where note = 'batch'") == [(100,)]
    assert q(env, f"select count(*) from {a}") == [(600 + 5000,)]
    assert q(env, f"select count(*) from {env.s}.tiny where note = 'all nine'") == [(9,)]


@pytest.mark.parametrize("mode", MODES)
def test_a_table_the_last_transaction_changed_is_measured_from_its_count_in_a_block(
    env: Env, accounts: str, mode: str
) -> None:
    """PostgreSQL keeps a transaction's row counts until the backend reports them (at most
    once a second), so the next transaction starts with them.  The reading after the
    block's first statement looks only at the tables it locked; the second statement, on
    the table the previous transaction changed, must still be measured from that count:
    150 of the 600 rows left (25 %), not 550 of 1000 (over the 50 % share)."""
    a = env.acct
    out = run(
        mode,
        env.proxy,
        [
            f"update {env.s}.tiny set note = 'warm' where id = 2",
            f"delete from {a} where id > 600",
            "begin",
            f"update {env.s}.tiny set note = 'first' where id = 1",
            f"delete from {a} where id > 450",
            "commit",
        ],
    )
    all_ok(out)
    assert q(env, f"select count(*) from {a}") == [(450,)]


@pytest.mark.parametrize("mode", MODES)
def test_application_transaction_with_savepoints(env: Env, accounts: str, mode: str) -> None:
    a = env.acct
    out = run(
        mode,
        env.proxy,
        [
            "begin",
            f"insert into {a} (id, owner) values (3001, 'in block')",
            "savepoint before_risky",
            f"update {a} set note = 'undone' where id = 20",
            "rollback to savepoint before_risky",
            f"update {a} set note = 'kept' where id = 21",
            "savepoint again",
            f"delete from {a} where id = 22",
            "release savepoint again",
            f"update {a} set note = 'batch' where id between 100 and 199",
            "commit",
        ],
    )
    all_ok(out)
    assert out[-1].status in ("I", None)
    assert q(env, f"select id, note from {a} where id in (20, 21, 22, 3001) order by id") == [
        (20, None),
        (21, "kept"),
        (3001, None),
    ]
    assert q(env, f"select count(*) from {a} where note = 'batch'") == [(100,)]


@pytest.mark.parametrize("mode", MODES)
def test_small_upserts(env: Env, accounts: str, mode: str) -> None:
    a = env.acct
    all_ok(
        run(
            mode,
            env.proxy,
            [
                f"insert into {a} (id, owner) values (1, 'up1'), (2, 'up2'), (4001, 'new') "
                "on conflict (id) do update set owner = excluded.owner",
                f"insert into {a} (id, owner) values (3, 'nothing') on conflict do nothing",
                f"merge into {a} t using (values (5, 'merged')) s(id, owner) on t.id = s.id "
                "when matched then update set owner = s.owner when not matched then insert (id, owner) values (s.id, s.owner)",
            ],
        )
    )
    assert q(env, f"select id, owner from {a} where id in (1, 2, 3, 5, 4001) order by id") == [
        (1, "up1"),
        (2, "up2"),
        (3, "owner3"),
        (5, "merged"),
        (4001, "new"),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_foreign_key_cascade_of_a_few_rows(env: Env, accounts: str, mode: str) -> None:
    all_ok(run(mode, env.proxy, [f"delete from {env.acct} where id = 2"]))
    assert q(env, f"select count(*) from {env.s}.orders where account = 2") == [(0,)]
    assert q(env, f"select count(*) from {env.s}.orders") == [(196,)]


@pytest.mark.parametrize("mode", MODES)
def test_temporary_tables_are_scratch_space(env: Env, accounts: str, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            f"create temp table work as select id, balance from {env.acct} where id <= 50",
            "update work set balance = 0 where id > 0",
            "select count(*) from work where balance = 0",
            f"update {env.acct} a set note = 'from temp' from work w where a.id = w.id and w.id <= 5",
        ],
    )
    all_ok(out)
    assert out[2].rows == [("50",)], str(out[2])
    assert q(env, f"select count(*) from {env.acct} where note = 'from temp'") == [(5,)]


@pytest.mark.parametrize("mode", MODES)
def test_prepared_point_update_and_explain(env: Env, accounts: str, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            f"prepare pay(int, numeric) as update {env.acct} set balance = balance + $2 where id = $1",
            "execute pay(30, 5)",
            "execute pay(31, 5)",
            "deallocate pay",
            f"explain select * from {env.acct} where id = 1",
            f"explain analyze update {env.acct} set note = 'explained' where id = 32",
        ],
    )
    all_ok(out)
    assert q(env, f"select id, balance from {env.acct} where id in (30, 31) order by id") == [
        (30, 35),
        (31, 36),
    ]
    assert q(env, f"select note from {env.acct} where id = 32") == [("explained",)]


# ================================================================ settings people use


@pytest.mark.parametrize("mode", MODES)
def test_everyday_settings(env: Env, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            f"set search_path to {env.s}, public",
            "set statement_timeout = '5s'",
            "set lock_timeout to 2000",
            "set application_name = 'billing-job'",
            "set time zone 'UTC'",
            "set datestyle = iso, mdy",
            "set work_mem = '8MB'",
            "reset work_mem",
            "set work_mem to default",
            "set client_min_messages = warning",
            "set extra_float_digits = 3",
            "set names 'UTF8'",
            "set enable_seqscan = off",
            "reset enable_seqscan",
            "select set_config('application_name', 'from set_config', false)",
            "set default_transaction_isolation = 'repeatable read'",
            "set session characteristics as transaction isolation level read committed",
            "select count(*) from accounts where id < 0",
            "show application_name",
            "show timezone",
        ],
    )
    all_ok(out)
    assert out[-2].rows == [("from set_config",)], str(out[-2])
    assert out[-1].rows == [("UTC",)], str(out[-1])


@pytest.mark.parametrize("mode", MODES)
def test_transaction_settings(env: Env, accounts: str, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            "begin isolation level serializable",
            f"select count(*) from {env.acct}",
            "commit",
            "begin",
            "set transaction isolation level repeatable read",
            "set local statement_timeout = '3s'",
            "set local work_mem = '16MB'",
            "select set_config('search_path', 'public', true)",
            f"update {env.acct} set note = 'rr' where id = 40",
            "show statement_timeout",
            "commit",
            "show statement_timeout",
            "start transaction read only",
            "select 1",
            "commit",
            "begin read write",
            f"update {env.acct} set note = 'rw' where id = 41",
            "commit",
        ],
    )
    all_ok(out)
    assert out[9].rows == [("3s",)], str(out[9])
    assert out[11].rows != [("3s",)], str(out[11])
    assert q(env, f"select id, note from {env.acct} where id in (40, 41) order by id") == [
        (40, "rr"),
        (41, "rw"),
    ]


def test_discard_all_and_notify(env: Env) -> None:
    all_ok(
        run(
            "psycopg",
            env.proxy,
            [
                "listen jobs",
                "notify jobs, 'hello'",
                "select pg_notify('jobs', 'again')",
                "unlisten *",
                "discard all",
            ],
        )
    )


# ================================================================ catalog queries of tools


SQLALCHEMY_HAS_TABLE = """
SELECT pg_catalog.pg_class.relname FROM pg_catalog.pg_class
JOIN pg_catalog.pg_namespace ON pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace
WHERE pg_catalog.pg_class.relname = 'accounts'
  AND pg_catalog.pg_class.relkind = ANY (ARRAY['r', 'p', 'f', 'v', 'm'])
  AND pg_catalog.pg_namespace.nspname = '{s}'
"""
SQLALCHEMY_COLUMNS = """
SELECT pg_catalog.pg_attribute.attname AS name,
       pg_catalog.format_type(pg_catalog.pg_attribute.atttypid, pg_catalog.pg_attribute.atttypmod) AS format_type,
       (SELECT pg_catalog.pg_get_expr(pg_catalog.pg_attrdef.adbin, pg_catalog.pg_attrdef.adrelid)
          FROM pg_catalog.pg_attrdef
         WHERE pg_catalog.pg_attrdef.adrelid = pg_catalog.pg_attribute.attrelid
           AND pg_catalog.pg_attrdef.adnum = pg_catalog.pg_attribute.attnum
           AND pg_catalog.pg_attribute.atthasdef) AS "default",
       pg_catalog.pg_attribute.attnotnull AS not_null,
       pg_catalog.pg_class.relname AS table_name,
       pg_catalog.pg_description.description AS comment,
       pg_catalog.pg_attribute.attgenerated AS generated,
       (SELECT json_build_object('always', pg_catalog.pg_attribute.attidentity = 'a')
         WHERE pg_catalog.pg_attribute.attidentity != '') AS identity_options
FROM pg_catalog.pg_class
LEFT OUTER JOIN pg_catalog.pg_attribute ON pg_catalog.pg_class.oid = pg_catalog.pg_attribute.attrelid
     AND pg_catalog.pg_attribute.attnum > 0 AND NOT pg_catalog.pg_attribute.attisdropped
LEFT OUTER JOIN pg_catalog.pg_description ON pg_catalog.pg_description.objoid = pg_catalog.pg_attribute.attrelid
     AND pg_catalog.pg_description.objsubid = pg_catalog.pg_attribute.attnum
JOIN pg_catalog.pg_namespace ON pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace
WHERE pg_catalog.pg_class.relkind = ANY (ARRAY['r', 'p', 'f', 'v', 'm'])
  AND pg_catalog.pg_namespace.nspname = '{s}' AND pg_catalog.pg_class.relname IN ('accounts')
ORDER BY pg_catalog.pg_class.relname, pg_catalog.pg_attribute.attnum
"""
PSYCOPG_TYPEINFO = """
SELECT typname AS name, oid, typarray AS array_oid, oid::regtype::text AS regtype, typdelim AS delimiter
FROM pg_type t WHERE t.oid = to_regtype('{s}.pair') ORDER BY t.oid
"""
CATALOG_QUERIES = [
    "select pg_catalog.version()",
    "select current_schema(), current_database(), current_user",
    "show standard_conforming_strings",
    "select t.oid, typarray from pg_type t join pg_namespace ns on typnamespace = ns.oid where typname = 'hstore'",
    SQLALCHEMY_HAS_TABLE,
    SQLALCHEMY_COLUMNS,
    PSYCOPG_TYPEINFO,
    "select n.nspname, c.relname from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
    "where pg_catalog.pg_table_is_visible(c.oid) limit 5",
    "select conname, pg_catalog.pg_get_constraintdef(r.oid, true) from pg_catalog.pg_constraint r "
    "where r.conrelid = '{s}.accounts'::regclass",
    "select indexrelid::regclass, pg_get_indexdef(indexrelid) from pg_index where indrelid = '{s}.accounts'::regclass",
    "select * from information_schema.columns where table_schema = '{s}' and table_name = 'accounts'",
    "select pid, state from pg_stat_activity where datname = current_database()",
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("login", [Login(), AGENT], ids=["human", "agent"])
def test_catalog_queries_of_orms_and_drivers(env: Env, mode: str, login: Login) -> None:
    out = run(mode, env.proxy, [sql.format(s=env.s) for sql in CATALOG_QUERIES], login)
    all_ok(out)
    assert out[4].rows == [("accounts",)], str(out[4])
    assert [r[0] for r in out[5].rows] == ["id", "owner", "balance", "note"], str(out[5])


def test_psql_describe_commands(env: Env) -> None:
    for login in (Login(), AGENT):
        out = run(
            "psql",
            env.proxy,
            [f"\\d {env.acct}", f"\\dt {env.s}.*", f"\\df {env.s}.*", "\\dn", "\\l"],
            login,
        )
        all_ok(out)


def test_asyncpg_type_introspection(env: Env) -> None:
    """asyncpg reads composite and enum types from the catalog with a recursive query."""

    async def main() -> list[Any]:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        conn = await asyncpg.connect(
            host=env.proxy.host,
            port=env.proxy.port,
            user=AGENT.identity,
            password=env.proxy.token(AGENT.identity, AGENT.groups, True),
            database="prod",
            ssl=tls,
            timeout=10,
        )
        try:
            return [
                await conn.fetchval(f"select (1, 'x')::{env.s}.pair"),
                await conn.fetchval(f"select 'great'::{env.s}.mood"),
                await conn.fetchval(f"select array[(2, 'y')::{env.s}.pair]"),
            ]
        finally:
            await conn.close()

    pair, mood, arr = asyncio.run(main())
    assert tuple(pair) == (1, "x") and mood == "great" and tuple(arr[0]) == (2, "y")


# ================================================================ agents' reads


AGENT_READS = [
    (
        "join",
        "select a.id, count(o.id) from {s}.accounts a join {s}.orders o on o.account = a.id "
        "where a.id <= 3 group by a.id order by a.id",
    ),
    (
        "cte",
        "with top as (select id, balance from {s}.accounts order by balance desc limit 3) select count(*) from top",
    ),
    (
        "recursive-cte",
        "with recursive n(i) as (select 1 union all select i + 1 from n where i < 10) select sum(i) from n",
    ),
    (
        "window",
        "select id, rank() over (order by balance desc) from {s}.accounts order by balance desc limit 2",
    ),
    ("json-agg", "select json_agg(json_build_object('id', id)) from {s}.accounts where id <= 2"),
    ("stable-sql-function", "select {s}.balance_of(7)"),
    ("immutable-function", "select {s}.double(21)"),
    ("view", "select count(*) from {s}.rich"),
    ("explain", "explain select * from {s}.accounts where id = 1"),
    ("explain-analyze-select", "explain analyze select count(*) from {s}.accounts"),
    (
        "lateral",
        "select a.id, x.n from {s}.accounts a, lateral (select count(*) n from {s}.orders o where o.account = a.id) x where a.id = 1",
    ),
    (
        "grouping-sets",
        "select account, sum(amount) from {s}.orders where account <= 2 group by grouping sets ((account), ()) order by 1",
    ),
    (
        "settings-read",
        "select current_setting('statement_timeout'), current_setting('default_transaction_read_only')",
    ),
    ("read-only-block", "begin"),
]


@pytest.mark.parametrize("sql", [r[1] for r in AGENT_READS], ids=[r[0] for r in AGENT_READS])
@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_agent_reads(env: Env, accounts: str, mode: str, sql: str) -> None:
    all_ok(
        run(
            mode,
            env.proxy,
            [sql.format(s=env.s), "rollback"] if sql == "begin" else [sql.format(s=env.s)],
            AGENT,
        )
    )


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_agents_may_not_call_procedural_functions(env: Env, accounts: str, mode: str) -> None:
    """A STABLE PL/pgSQL function may still EXECUTE a volatile one or run set_config (which
    a read-only session allows): agents get only functions whose SQL dbsentry can read."""
    (o,) = run(mode, env.proxy, [f"select {env.s}.order_count(1)"], AGENT)
    refused(o, "baseline.prod.agent-side-effects")


@pytest.mark.parametrize("mode", MODES)
def test_agent_reads_in_every_client(env: Env, accounts: str, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            f"select {env.s}.balance_of(7), {env.s}.double(21), 4",
            f"select json_agg(id order by id) from {env.s}.accounts where id <= 3",
            f"copy (select id from {env.s}.accounts where id <= 2 order by id) to stdout",
        ],
        AGENT,
    )
    all_ok(out)
    assert out[0].rows == [("7", "42", "4")], str(out[0])
    assert [line[0] for line in out[2].rows] == ["1", "2"], str(out[2])


# ================================================================ volume


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_asyncpg_executemany_of_200_point_updates(env: Env, accounts: str) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(
            host=env.proxy.host,
            port=env.proxy.port,
            user="alice@example.com",
            password=env.proxy.token("alice@example.com", ("eng",)),
            database="prod",
            ssl=_tls(),
            timeout=10,
        )
        try:
            await conn.executemany(
                f"update {env.acct} set note = $1 where id = $2",
                [(f"many{i}", i) for i in range(1, 201)],
            )
            async with conn.transaction():
                await conn.executemany(
                    f"delete from {env.acct} where id = $1", [(i,) for i in range(901, 951)]
                )
        finally:
            await conn.close()

    asyncio.run(main())
    assert q(env, f"select count(*) from {env.acct} where note like 'many%'") == [(200,)]
    assert q(env, f"select note from {env.acct} where id = 137") == [("many137",)]
    assert q(env, f"select count(*) from {env.acct}") == [(ACCOUNTS - 50,)]


def test_psycopg_pipeline_of_50_point_updates(env: Env, accounts: str) -> None:
    with psycopg.connect(env.proxy.dsn(), autocommit=True) as conn:
        with conn.pipeline():
            for i in range(1, 51):
                conn.execute(f"update {env.acct} set note = %s where id = %s", (f"pipe{i}", i))
        with conn.cursor() as cur:
            cur.executemany(
                f"update {env.acct} set balance = %s where id = %s",
                [(0, i) for i in range(51, 101)],
            )
        with conn.transaction(), conn.pipeline():
            for i in range(101, 111):
                conn.execute(f"delete from {env.acct} where id = %s", (i,))
    assert q(env, f"select count(*) from {env.acct} where note like 'pipe%'") == [(50,)]
    assert q(env, f"select count(*) from {env.acct} where balance = 0") == [(50,)]
    assert q(env, f"select count(*) from {env.acct}") == [(ACCOUNTS - 10,)]


def test_copy_in_and_out(env: Env, accounts: str) -> None:
    with psycopg.connect(env.proxy.dsn(), autocommit=True) as conn:
        with conn.cursor().copy(f"copy {env.acct} (id, owner) from stdin") as copy:
            for i in range(7001, 7101):
                copy.write_row((i, f"copied{i}"))
        with conn.cursor().copy(
            f"copy (select id from {env.acct} where id > 7095 order by id) to stdout"
        ) as copy:
            out = b"".join(bytes(c) for c in copy)
    assert out.decode().split() == ["7096", "7097", "7098", "7099", "7100"]
    assert q(env, f"select count(*) from {env.acct} where owner like 'copied%'") == [(100,)]


def test_asyncpg_copy_records(env: Env, accounts: str) -> None:
    """asyncpg's copy_records_to_table (binary COPY FROM STDIN) into tables that take part in
    a foreign key (PostgreSQL's own RI triggers are on both)."""

    async def main() -> None:
        conn = await asyncpg.connect(
            host=env.proxy.host,
            port=env.proxy.port,
            user="alice@example.com",
            password=env.proxy.token("alice@example.com", ("eng",)),
            database="prod",
            ssl=_tls(),
            timeout=10,
        )
        try:
            await conn.copy_records_to_table(
                "accounts",
                schema_name=env.s,
                columns=["id", "owner"],
                records=[(i, f"rec{i}") for i in range(8001, 8051)],
            )
            await conn.copy_records_to_table(
                "orders",
                schema_name=env.s,
                columns=["account", "amount"],
                records=[(8001, 1), (8002, 2)],
            )
        finally:
            await conn.close()

    asyncio.run(main())
    assert q(env, f"select count(*) from {env.acct} where owner like 'rec%'") == [(50,)]
    assert q(env, f"select count(*) from {env.s}.orders where account > 8000") == [(2,)]


def test_staging_is_not_limited(env: Env, accounts: str) -> None:
    all_ok(
        run(
            "psycopg",
            env.proxy,
            [f"update {env.acct} set note = 'staging' where id > 0"],
            Login(dbname="staging"),
        )
    )
    assert q(env, f"select count(*) from {env.acct} where note = 'staging'") == [(ACCOUNTS,)]


# ================================================================ pgbench


@pytest.fixture(scope="module")
def pgbench_tables(pg_server: PgServer) -> None:
    ensure_pgbench_tables(pg_server)


@pytest.mark.usefixtures("pgbench_tables")
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_tpcb(env: Env, mode: str) -> None:
    """The TPC-B-like script: BEGIN, three point UPDATEs (one of a one-row table), SELECT,
    INSERT, END."""
    with env.direct() as c:
        before = c.execute("select count(*) from pgbench_history").fetchone()
    identity = "bench@example.com"
    done = subprocess.run(
        [
            "pgbench",
            "-n",
            "-c",
            "2",
            "-j",
            "2",
            "-t",
            "20",
            "-M",
            mode,
            "-h",
            env.proxy.host,
            "-p",
            str(env.proxy.port),
            "-U",
            identity,
            "prod",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**_ENV, "PGPASSWORD": env.proxy.token(identity, ("eng",)), "PGSSLMODE": "require"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    processed = re.search(r"number of transactions actually processed: (\d+)/(\d+)", done.stdout)
    assert processed is not None and processed.group(1) == processed.group(2) == "40", done.stdout
    with env.direct() as c:
        after = c.execute("select count(*) from pgbench_history").fetchone()
    assert before is not None and after is not None and after[0] - before[0] == 40

"""The planner's statistics hold samples of every column: masked like the column itself.

After ANALYZE, ``pg_stats.most_common_vals`` and ``histogram_bounds`` (and the same in
``pg_statistic``, ``pg_stats_ext``...) list real values of a table's columns.  A masked
identity reading them gets NULL there, however the query spells it; ``pii-readers`` see
them, and the rest of the row (names, fractions) stays readable for everybody.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from support.guard_clients import MODES, Login, run
from support.leaks import Secrets
from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

EMAILS = [f"person{i}.lovelace@example.com" for i in range(5)]
SECRETS = Secrets(EMAILS)
MASKED = Login("eve@example.com", ("eng",))
READER = Login("rita@example.com", ("eng", "pii-readers"))


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    schema: str


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"ms_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        c.execute(f"create schema {s}; create table {s}.customers (id int, email text, tags text[])")
        for i in range(200):
            c.execute(f"insert into {s}.customers values (%s, %s, %s)", (i, EMAILS[i % 5], [EMAILS[i % 5]]))
        c.execute(f"create statistics {s}.st (mcv) on id, email from {s}.customers")
        c.execute(f"analyze {s}.customers")
    try:
        with run_proxy(write_config(tmp_path_factory.mktemp("statistics"), pg_server)) as proxy:
            yield Env(proxy, s)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"drop schema {s} cascade")


QUERIES = [
    "select * from pg_stats where schemaname = '{s}'",
    "select most_common_vals::text, histogram_bounds::text from pg_stats where schemaname = '{s}'",
    "select array_to_string(most_common_vals, ',') from pg_catalog.pg_stats where schemaname = '{s}'",
    "select upper(most_common_elems::text) from pg_stats where schemaname = '{s}'",
    "select stavalues1::text, stavalues2::text, stavalues3::text from pg_statistic s join pg_class c on c.oid = s.starelid join pg_namespace n on n.oid = c.relnamespace where n.nspname = '{s}'",
    "select most_common_vals::text from pg_stats_ext where schemaname = '{s}'",
    "select d.stxdmcv::text from pg_statistic_ext_data d join pg_statistic_ext e on e.oid = d.stxoid join pg_namespace n on n.oid = e.stxnamespace where n.nspname = '{s}'",
    "select m.values::text from pg_statistic_ext e join pg_namespace n on n.oid = e.stxnamespace join pg_statistic_ext_data d on d.stxoid = e.oid, pg_mcv_list_items(d.stxdmcv) m where n.nspname = '{s}'",
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("query", QUERIES)
def test_statistics_are_masked(env: Env, mode: str, query: str) -> None:
    if mode == "asyncpg" and query.startswith("select *"):
        pytest.skip("asyncpg cannot decode anyarray columns, directly either")
    (o,) = run(mode, env.proxy, [query.format(s=env.schema)], MASKED)
    if o.ok:
        assert o.rows, str(o)
    SECRETS.assert_no_leak(o.rows, o.message, context=mode)


@pytest.mark.parametrize("mode", ["psql", "psycopg", "asyncpg"])
def test_pii_readers_see_statistics(env: Env, mode: str) -> None:
    (o,) = run(mode, env.proxy, [QUERIES[1].format(s=env.schema)], READER)
    assert o.ok and SECRETS.leaks(o.rows), str(o)


@pytest.mark.parametrize("mode", ["psql", "psycopg", "asyncpg"])
def test_the_rest_of_pg_stats_stays_readable(env: Env, mode: str) -> None:
    (o,) = run(
        mode,
        env.proxy,
        [f"select attname, null_frac::text from pg_stats where schemaname = '{env.schema}' order by attname"],
        MASKED,
    )
    assert o.ok and [r[0] for r in o.rows] == ["email", "id", "tags"], str(o)

"""The row guard's statistics query stays cheap to plan and run as a database grows.

It runs before and after every guarded statement.  PostgreSQL compiles a query with JIT
when the planner's cost estimate passes ``jit_above_cost`` (100,000 by default), which
costs 20-30 ms per reading: a first version of the query ran a recursive subquery once per
row the planner expected and crossed that threshold on the test database (a few hundred
relations), making every guarded INSERT take 45 ms.  Here: a schema with many tables, an
inheritance tree and a partitioned table, rows changed in several of them, and the query
as the guard prepares it must be estimated below the threshold, run without JIT, and
still name each changed table's root.  The reading of the system catalogs and the tables
the backend holds a lock on (after a statement) must find the user tables by pg_class's
index, and find the same tables.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import psycopg
import pytest

from dbsentry.engines.postgres.session.guard import LOCKED_STATS_SQL, STATS_SQL
from support.pg import PgServer

# As the guard binds it before the first statement of a session's transaction: no tables known.
LOCKED = LOCKED_STATS_SQL.replace("$1::", "'{}'::")

pytestmark = pytest.mark.e2e


def test_the_statistics_query_is_never_worth_compiling(pg_server: PgServer) -> None:
    s = f"gc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"create schema {s}")
        try:
            for i in range(300):
                conn.execute(f"create table {s}.t{i} (id int primary key)")
            conn.execute(f"create table {s}.parent (id int)")
            conn.execute(f"create table {s}.child () inherits ({s}.parent)")
            conn.execute(f"create table {s}.grandchild () inherits ({s}.child)")
            conn.execute(f"create table {s}.part (id int) partition by range (id)")
            for i in range(20):
                conn.execute(f"create table {s}.part{i} partition of {s}.part for values from ({i * 10}) to ({i * 10 + 10})")
            conn.execute("analyze pg_catalog.pg_class")
            with conn.transaction():
                for i in range(5):
                    conn.execute(f"insert into {s}.t{i} values (1)")
                conn.execute(f"insert into {s}.grandchild values (1)")
                conn.execute(f"insert into {s}.part values (15), (25)")
                jit_above = float(conn.execute("select setting from pg_settings where name = 'jit_above_cost'").fetchone()[0])  # type: ignore[index]
                found = {}
                for sql in (STATS_SQL, LOCKED):
                    plan: Any = conn.execute(f"explain (format json) {sql}").fetchone()
                    tree = (orjson.loads(plan[0]) if isinstance(plan[0], str) else plan[0])[0]["Plan"]
                    cost = tree["Total Cost"]
                    assert cost < min(jit_above, 100_000) / 5, f"estimated at {cost}: every reading would be JIT-compiled"
                    analyzed = "\n".join(r[0] for r in conn.execute(f"explain (analyze, costs off) {sql}"))
                    assert "JIT:" not in analyzed, analyzed
                    rows = conn.execute(sql).fetchall()
                    found[sql] = {r[0]: r[1:] for r in rows if r[8] == s}
                    roots = {r[9]: r[12] for r in rows if r[8] == s}
                    assert roots == {
                        **{f"t{i}": f"t{i}" for i in range(5)},
                        "grandchild": "parent",
                        "part1": "part",
                        "part2": "part",
                    }, roots
                assert found[STATS_SQL] == found[LOCKED]
                assert "Seq Scan on pg_class" in "\n".join(r[0] for r in conn.execute(f"explain {STATS_SQL}"))
                # The user tables it reads are found by pg_class's index, whatever their number
                # (the system catalogs, a range of it, are read by the index or a scan, as the
                # planner finds cheaper).
                locked_plan = "\n".join(r[0] for r in conn.execute(f"explain {LOCKED}"))
                assert "Index Cond: ((oid >= '16384'::oid) AND (oid = ANY" in locked_plan, locked_plan
                raise psycopg.Rollback
        finally:
            conn.execute(f"drop schema {s} cascade")

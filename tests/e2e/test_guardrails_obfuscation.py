"""Disguised dangerous statements through a running dbsentry, against the real PostgreSQL.

Each case is sent by psycopg and by psql to the production connection.  Every case
asserts two things a user would see: the refusal (SQLSTATE 42501, a message starting
``dbsentry:`` that names the rule, the session still usable) and that the database was not
changed (a snapshot of the objects the case could touch, taken directly on the server
before and after).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors

from support.pg import PgServer
from support.proxy import RunningProxy

pytestmark = pytest.mark.e2e

_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
ROWS = [(1, "one"), (2, "two"), (3, "three")]


def psql(dsn: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``psql -X`` (no psqlrc), unaligned tuples-only output, SQLSTATEs in error messages."""
    return subprocess.run(
        ["psql", dsn, "-X", "-q", "-A", "-t", "-v", "VERBOSITY=verbose", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=30,
        env={**_ENV, "LC_ALL": "C"},
    )


@dataclass
class World:
    """Objects of one test, all named with its suffix, created directly on the server."""

    suffix: str
    datadir: str

    def names(self) -> dict[str, str]:
        s = self.suffix
        return {
            "t": f"g_t_{s}",
            "v": f"g_v_{s}",
            "f": f"g_f_{s}",
            "seq": f"g_seq_{s}",
            "sc": f"g_sc_{s}",
            "ix": f"g_ix_{s}",
            "role": f"g_role_{s}",
            "new": f"g_new_{s}",
            "file": f"{self.datadir}/g_file_{s}.out",
        }

    @staticmethod
    def snapshot_settings(direct: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
        return direct.execute(
            "select name, setting from pg_file_settings where sourcefile like '%postgresql.auto.conf' order by 1"
        ).fetchall()

    def snapshot(self, direct: psycopg.Connection[Any]) -> dict[str, Any]:
        n = self.names()
        like = f"%{self.suffix}"

        def q(sql: str, *params: Any) -> list[tuple[Any, ...]]:
            return direct.execute(sql, params).fetchall()

        return {
            "rows": q(f"select id, note from {n['t']} order by id"),
            "columns": q(
                "select column_name from information_schema.columns where table_name = %s order by ordinal_position",
                n["t"],
            ),
            "relations": q(
                "select relname, relkind from pg_class where relname like %s order by 1", like
            ),
            "acl": q("select relacl::text from pg_class where relname = %s", n["t"]),
            "schemas": q("select nspname from pg_namespace where nspname like %s", like),
            "functions": q("select proname from pg_proc where proname like %s", like),
            "roles": q("select rolname from pg_roles where rolname like %s", like),
            "sequence": q(f"select last_value, is_called from {n['seq']}"),
            "auto_conf": self.snapshot_settings(direct),
            "file": q("select (pg_stat_file(%s, true)).size is not null", n["file"]),
        }


@pytest.fixture
def direct(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        yield c


@pytest.fixture
def world(direct: psycopg.Connection[Any]) -> Iterator[World]:
    row = direct.execute("select current_setting('data_directory')").fetchone()
    assert row is not None
    w = World(uuid.uuid4().hex[:10], row[0])
    n = w.names()
    direct.execute(f"create table {n['t']} (id int primary key, note text)")
    with direct.cursor() as cur:
        cur.executemany(f"insert into {n['t']} values (%s, %s)", ROWS)
    # Nothing depends on the table, so that a DROP that got through would succeed.
    direct.execute(f"create view {n['v']} as select 1 as one")
    direct.execute(f"create function {n['f']}() returns int language sql as 'select 1'")
    direct.execute(f"create sequence {n['seq']}")
    direct.execute(f"select nextval('{n['seq']}')")
    direct.execute(f"create schema {n['sc']}")
    direct.execute(f"create index {n['ix']} on {n['t']} (note)")
    direct.execute(f"create role {n['role']} nologin")
    yield w
    direct.execute(f"drop schema if exists {n['sc']} cascade")
    direct.execute(f"drop view if exists {n['v']}")
    direct.execute(f"drop table if exists {n['t']}, {n['new']} cascade")
    direct.execute(f"drop function if exists {n['f']}()")
    direct.execute(f"drop sequence if exists {n['seq']}")
    direct.execute(f"drop role if exists {n['role']}")
    if ("work_mem", "77MB") in w.snapshot_settings(direct):
        direct.execute("alter system reset work_mem")  # an ALTER SYSTEM got through


def u_escape(name: str) -> str:
    """``U&"\\0067..."``: every character of an identifier as a Unicode escape."""
    return 'U&"' + "".join(f"\\{ord(ch):04x}" for ch in name) + '"'


# (id, SQL template, rule that must be named, agent?)
DENY = "deny"
CASES: list[tuple[str, str, str, bool]] = [
    # letter case, comments, whitespace, BOM
    ("mixed-case-delete", "DeLeTe FrOm {t}", "baseline.prod.unbounded-write", False),
    ("mixed-case-drop", "dRoP tAbLe {t}", "baseline.prod.drop", False),
    (
        "comments-between-keywords",
        "DELETE/**/FROM/* where id = 1 */{t}",
        "baseline.prod.unbounded-write",
        False,
    ),
    ("nested-comment", "DROP /* a /* nested */ comment */ TABLE {t}", "baseline.prod.drop", False),
    ("leading-line-comment", "-- harmless report\nDROP TABLE {t}", "baseline.prod.drop", False),
    ("leading-whitespace", " \t\r\n\n   TRUNCATE {t}", "baseline.prod.truncate", False),
    ("leading-bom", "\ufeffDROP TABLE {t}", "baseline.prod.drop", False),
    (
        "leading-block-comment-newlines",
        "/* select 1 */\n\n\tdelete\nfrom\n{t}",
        "baseline.prod.unbounded-write",
        False,
    ),
    # identifiers
    ("quoted-identifiers", 'DROP TABLE "public"."{t}"', "baseline.prod.drop", False),
    ("schema-qualified", "DELETE FROM public.{t}", "baseline.prod.unbounded-write", False),
    ("unicode-escaped-identifier", "DROP TABLE {t_u}", "baseline.prod.drop", False),
    ("unicode-escaped-truncate", "TRUNCATE public.{t_u}", "baseline.prod.truncate", False),
    # dollar quoting, DO, dynamic SQL
    (
        "do-dollar-quoted",
        "DO $$BEGIN EXECUTE 'DROP TABLE {t}'; END$$",
        "baseline.prod.dynamic-sql",
        False,
    ),
    (
        "do-tagged-dollar-format",
        "DO $x$ BEGIN EXECUTE format('DELETE FROM %I', '{t}'); END $x$",
        "baseline.prod.dynamic-sql",
        False,
    ),
    (
        "do-language",
        "DO LANGUAGE plpgsql $b$BEGIN TRUNCATE {t}; END$b$",
        "baseline.prod.dynamic-sql",
        False,
    ),
    (
        "query-to-xml",
        "select query_to_xml('select * from {t}', true, false, '')",
        "baseline.prod.dynamic-sql",
        False,
    ),
    # stacked statements: none of them runs
    ("stacked-after-select", "select 1; DROP TABLE {t}", "baseline.prod.drop", False),
    (
        "stacked-after-insert",
        "insert into {t} values (99, 'stacked'); delete from {t}",
        "baseline.prod.unbounded-write",
        False,
    ),
    (
        "stacked-after-update",
        "update {t} set note = 'changed' where id = 1; truncate {t}",
        "baseline.prod.truncate",
        False,
    ),
    (
        "stacked-in-one-line",
        "insert into {t} values (98, 'x');DROP TABLE {t};select 1",
        "baseline.prod.drop",
        False,
    ),
    # WHERE that is not a WHERE, and tautologies
    (
        "where-in-line-comment",
        "DELETE FROM {t} -- WHERE id = 1",
        "baseline.prod.unbounded-write",
        False,
    ),
    (
        "where-in-block-comment",
        "DELETE FROM {t} /* WHERE id = 1 */",
        "baseline.prod.unbounded-write",
        False,
    ),
    (
        "where-in-string",
        "UPDATE {t} SET note = 'WHERE id = 1'",
        "baseline.prod.unbounded-write",
        False,
    ),
    ("where-1-eq-1", "DELETE FROM {t} WHERE 1=1", "baseline.prod.unbounded-write", False),
    ("where-true", "UPDATE {t} SET note = 'x' WHERE true", "baseline.prod.unbounded-write", False),
    ("where-id-eq-id", "DELETE FROM {t} WHERE id = id", "baseline.prod.unbounded-write", False),
    ("where-a-eq-a", "DELETE FROM {t} WHERE 'a' = 'a'", "baseline.prod.unbounded-write", False),
    (
        "where-not-false",
        "UPDATE {t} SET note = 'x' WHERE NOT false",
        "baseline.prod.unbounded-write",
        False,
    ),
    ("where-1-in-1", "DELETE FROM {t} WHERE 1 IN (1)", "baseline.prod.unbounded-write", False),
    (
        "where-or-true",
        "DELETE FROM {t} WHERE id = 1 OR true",
        "baseline.prod.unbounded-write",
        False,
    ),
    # statements inside statements
    (
        "data-modifying-cte",
        "WITH d AS (DELETE FROM {t} RETURNING *) SELECT count(*) FROM d",
        "baseline.prod.unbounded-write",
        False,
    ),
    (
        "data-modifying-cte-update",
        "WITH u AS (UPDATE {t} SET note = 'x' WHERE 1 = 1 RETURNING id) SELECT * FROM u",
        "baseline.prod.unbounded-write",
        False,
    ),
    (
        "explain-analyze-delete",
        "EXPLAIN ANALYZE DELETE FROM {t}",
        "baseline.prod.unbounded-write",
        False,
    ),
    (
        "explain-analyze-options",
        "EXPLAIN (ANALYZE, COSTS OFF) UPDATE {t} SET note = 'x'",
        "baseline.prod.unbounded-write",
        False,
    ),
    (
        "prepare-delete",
        "PREPARE g_p AS DELETE FROM {t}; EXECUTE g_p",
        "baseline.prod.unbounded-write",
        False,
    ),
    ("select-into", "SELECT * INTO {new} FROM {t}", "baseline.prod.ddl-approval", False),
    (
        "create-table-as",
        "CREATE TABLE {new} AS SELECT * FROM {t}",
        "baseline.prod.ddl-approval",
        False,
    ),
    # server files, programs, settings, roles
    ("pg-read-file", "select pg_read_file('PG_VERSION')", "baseline.prod.file-access", False),
    ("pg-ls-dir", "select * from pg_ls_dir('.')", "baseline.prod.file-access", False),
    ("copy-to-program", "COPY {t} TO PROGRAM 'cat > {file}'", "baseline.prod.copy-program", False),
    (
        "copy-query-to-program",
        "copy (select 1) to program 'cat > {file}'",
        "baseline.prod.copy-program",
        False,
    ),
    ("copy-to-server-file", "COPY {t} TO '{file}'", "baseline.prod.copy-server-file", False),
    ("alter-system", "ALTER SYSTEM SET work_mem = '77MB'", "baseline.prod.alter-system", False),
    ("set-role", "SET ROLE {role}", "baseline.prod.role-switch", False),
    ("set-local-role", "SET LOCAL ROLE {role}", "baseline.prod.role-switch", False),
    (
        "set-session-authorization",
        "SET SESSION AUTHORIZATION {role}",
        "baseline.prod.role-switch",
        False,
    ),
    (
        "set-config-role",
        "select set_config('role', '{role}', false)",
        "baseline.prod.role-switch",
        False,
    ),
    ("truncate", "TRUNCATE {t}", "baseline.prod.truncate", False),
    (
        "truncate-table-only",
        "TRUNCATE TABLE ONLY {t} RESTART IDENTITY",
        "baseline.prod.truncate",
        False,
    ),
    ("drop-table", "DROP TABLE IF EXISTS {t} CASCADE", "baseline.prod.drop", False),
    ("drop-view", "DROP VIEW {v}", "baseline.prod.drop", False),
    ("drop-function", "DROP FUNCTION {f}()", "baseline.prod.drop", False),
    ("drop-sequence", "DROP SEQUENCE {seq}", "baseline.prod.drop", False),
    ("drop-schema", "DROP SCHEMA {sc} CASCADE", "baseline.prod.drop", False),
    ("drop-index", "DROP INDEX {ix}", "baseline.prod.drop", False),
    ("drop-role", "DROP ROLE {role}", "baseline.prod.drop", False),
    ("alter-table-drop-column", "ALTER TABLE {t} DROP COLUMN note", "baseline.prod.drop", False),
    (
        "dblink",
        "select * from dblink('host=127.0.0.1', 'delete from {t}') as x(n int)",
        "baseline.prod.remote-connection",
        False,
    ),
    (
        "dblink-exec",
        "select dblink_exec('host=127.0.0.1', 'drop table {t}')",
        "baseline.prod.remote-connection",
        False,
    ),
    # agents: read-only, no side effects
    ("agent-insert", "insert into {t} values (50, 'agent')", "baseline.prod.agent-read-only", True),
    (
        "agent-update",
        "update {t} set note = 'agent' where id = 1",
        "baseline.prod.agent-read-only",
        True,
    ),
    ("agent-delete", "delete from {t} where id = 1", "baseline.prod.agent-read-only", True),
    ("agent-create-table", "create table {new} (id int)", "baseline.prod.agent-read-only", True),
    (
        "agent-create-temp-table",
        "create temp table {new} (id int)",
        "baseline.prod.agent-read-only",
        True,
    ),
    ("agent-select-into", "select * into {new} from {t}", "baseline.prod.agent-read-only", True),
    (
        "agent-cte-delete",
        "with d as (delete from {t} where id = 1 returning *) select * from d",
        "baseline.prod.agent-read-only",
        True,
    ),
    (
        "agent-explain-analyze-update",
        "explain analyze update {t} set note = 'a' where id = 2",
        "baseline.prod.agent-read-only",
        True,
    ),
    ("agent-setval", "select setval('{seq}', 1000)", "baseline.prod.agent-side-effects", True),
    ("agent-nextval", "select nextval('{seq}')", "baseline.prod.agent-side-effects", True),
    (
        "agent-nextval-in-where",
        "select * from {t} where id < nextval('{seq}')",
        "baseline.prod.agent-side-effects",
        True,
    ),
    (
        "agent-terminate-backend",
        "select pg_terminate_backend({victim})",
        "baseline.prod.agent-side-effects",
        True,
    ),
    (
        "agent-select-for-update",
        "select * from {t} where id = 1 for update",
        "baseline.prod.agent-side-effects",
        True,
    ),
]


def render(template: str, world: World, victim: int) -> str:
    n = world.names()
    return template.format(**n, t_u=u_escape(n["t"]), victim=victim)


@pytest.fixture
def victim(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    """A backend that pg_terminate_backend would kill."""
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        yield c


def assert_victim_alive(victim: psycopg.Connection[Any]) -> None:
    assert victim.execute("select 'alive'").fetchone() == ("alive",)


@pytest.mark.parametrize(
    ("template", "rule", "agent"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_psycopg_refused_and_nothing_changed(
    proxy: RunningProxy,
    direct: psycopg.Connection[Any],
    world: World,
    victim: psycopg.Connection[Any],
    template: str,
    rule: str,
    agent: bool,
) -> None:
    sql = render(template, world, victim.info.backend_pid)
    before = world.snapshot(direct)
    dsn = proxy.dsn("bot@example.com" if agent else "alice@example.com", agent=agent)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            conn.execute(sql)
        diag = caught.value.diag
        assert diag.sqlstate == "42501"
        assert diag.message_primary is not None
        assert diag.message_primary.startswith("dbsentry:"), diag.message_primary
        assert rule in diag.message_primary
        # The session is still usable, and still the same upstream session (no reconnect).
        assert conn.execute("select 'still here'").fetchone() == ("still here",)
        assert conn.execute("select current_user, session_user").fetchone() == (
            "postgres",
            "postgres",
        )
    assert world.snapshot(direct) == before
    assert_victim_alive(victim)


@pytest.mark.parametrize(
    ("template", "rule", "agent"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_psql_refused_and_nothing_changed(
    proxy: RunningProxy,
    direct: psycopg.Connection[Any],
    world: World,
    victim: psycopg.Connection[Any],
    template: str,
    rule: str,
    agent: bool,
) -> None:
    sql = render(template, world, victim.info.backend_pid)
    before = world.snapshot(direct)
    dsn = proxy.dsn("bot@example.com" if agent else "alice@example.com", agent=agent)
    # Two -c in one psql run: the refused one, then a query on the same session.
    done = psql(dsn, "-c", sql, "-c", "select 'still ' || current_user")
    assert "ERROR:  42501: dbsentry: " in done.stderr, done.stderr
    assert rule in done.stderr
    assert done.stdout == "still postgres\n", done.stderr
    assert world.snapshot(direct) == before
    assert_victim_alive(victim)


def test_psql_stop_on_error_exit_status(
    proxy: RunningProxy, direct: psycopg.Connection[Any], world: World
) -> None:
    """A script run with ON_ERROR_STOP stops at the refusal, as at any other error."""
    t = world.names()["t"]
    script = f"insert into {t} values (10, 'before');\ndelete from {t};\ninsert into {t} values (11, 'after');\n"
    done = psql(proxy.dsn(), "-v", "ON_ERROR_STOP=1", input=script)
    assert done.returncode == 3, done.stderr
    assert "dbsentry:" in done.stderr and "baseline.prod.unbounded-write" in done.stderr
    # psql sends each statement of a script on its own: the first ran, the last never did.
    assert direct.execute(f"select id from {t} order by id").fetchall() == [(1,), (2,), (3,), (10,)]


def test_dollar_quoted_text_is_only_text(
    proxy: RunningProxy, direct: psycopg.Connection[Any], world: World
) -> None:
    """The other side of dollar quoting: dangerous words inside a string are data."""
    t = world.names()["t"]
    before = world.snapshot(direct)
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        got = conn.execute(
            f"select $q$; DROP TABLE {t}; $q$, 'DELETE FROM {t}' -- DROP TABLE {t}"
        ).fetchone()
    assert got == (f"; DROP TABLE {t}; ", f"DELETE FROM {t}")
    assert world.snapshot(direct) == before


def test_stacked_statement_in_transaction_block_fails_it(
    proxy: RunningProxy, direct: psycopg.Connection[Any], world: World
) -> None:
    """Stacked inside an explicit block: the allowed part did not run, the block is failed."""
    t = world.names()["t"]
    with psycopg.connect(proxy.dsn()) as conn:  # not autocommit: psycopg opens a block
        conn.execute(f"insert into {t} values (20, 'in block')")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"insert into {t} values (21, 'stacked'); drop table {t}")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
    assert direct.execute(f"select id from {t} order by id").fetchall() == [(1,), (2,), (3,)]

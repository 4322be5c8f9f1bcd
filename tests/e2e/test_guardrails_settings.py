"""Settings by allow-list, environments that fail closed, statements too deep to analyse,
and constructs the analysis must understand before it lets them through.

In production, ``SET``, ``SET LOCAL``, ``RESET``, ``set_config()``, startup ``options`` and
startup packet parameters accept only the allow-list of ``ALLOWED_SETTINGS``; the rest
(``session_replication_role`` switches off triggers and foreign keys, ``track_counts``
blinds the row guard, ``allow_system_table_mods`` opens the catalogs...) is refused with
the setting named.  A connection without ``environment`` is production; an unknown
environment name is a configuration error.  Every test checks the database directly.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from support.guard_clients import (
    AGENT,
    MODES,
    ConnectFailed,
    Login,
    refused,
    run,
    run_one,
)
from support.pg import PgServer
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

ROWS = 40
REAL_EMAIL = "ada.lovelace@example.com"


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    pg: PgServer
    s: str

    @property
    def v(self) -> str:
        return f"{self.s}.victim"

    def direct(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.dsn(), autocommit=True)


def _base(pg: PgServer) -> dict[str, Any]:
    base: dict[str, Any] = {
        "host": pg.host,
        "port": pg.port,
        "database": pg.dbname,
        "user": pg.user,
    }
    if pg.password:
        base["password"] = pg.password
    return base


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"gs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        c.execute(
            f"""
            create schema {s};
            create table {s}.victim (id int primary key, note text);
            create table {s}.audit_log (id int, what text);
            create function {s}.log_delete() returns trigger language plpgsql as
              $$ begin insert into {s}.audit_log values (old.id, 'deleted'); return old; end $$;
            create trigger victim_audit after delete on {s}.victim
              for each row execute function {s}.log_delete();
            create table {s}.people (id int primary key, full_name text, email text);
            insert into {s}.people values (1, 'Ada Lovelace', '{REAL_EMAIL}');
            """
        )
    config = write_config(
        tmp_path_factory.mktemp("guard_settings"),
        pg_server,
        connections={"noenv": _base(pg_server)},
    )
    try:
        with run_proxy(config) as proxy:
            yield Env(proxy, pg_server, s)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"drop schema if exists {s} cascade")


@pytest.fixture
def victim(env: Env) -> str:
    with env.direct() as c:
        c.execute(f"truncate {env.v}, {env.s}.audit_log")
        c.execute(f"insert into {env.v} select g, 'n' || g from generate_series(1, {ROWS}) g")
    return env.v


def intact(env: Env) -> None:
    with env.direct() as c:
        rows = c.execute(f"select id, note from {env.v} order by id").fetchall()
    assert rows == [(i, f"n{i}") for i in range(1, ROWS + 1)]


# ================================================================ run-time settings


DENIED = [
    ("session_replication_role", "replica"),
    ("session_preload_libraries", "'auto_explain'"),
    ("allow_system_table_mods", "on"),
    ("zero_damaged_pages", "on"),
    ("log_statement", "'none'"),
    ("track_counts", "off"),
    ("local_preload_libraries", "'auto_explain'"),
    ("ignore_checksum_failure", "on"),
    ("log_min_duration_statement", "-1"),
]


@pytest.mark.parametrize(("name", "value"), DENIED, ids=[d[0] for d in DENIED])
@pytest.mark.parametrize("dbname", ["prod", "noenv"])
def test_denied_setting(env: Env, dbname: str, name: str, value: str) -> None:
    login = Login(dbname=dbname)
    before = run_one("psycopg", env.proxy, f"show {name}", login).rows
    out = run(
        "psycopg",
        env.proxy,
        [
            f"set {name} = {value}",
            f"set session {name} to {value}",
            f"select set_config('{name}', {value if value.startswith(chr(39)) else repr(value)}, false)",
            f"show {name}",
        ],
        login,
    )
    for o in out[:3]:
        refused(o, name)
    assert out[3].rows == before, f"{name} changed: {out[3]}"


SPELLINGS = [
    ("upper", "SET SESSION_REPLICATION_ROLE = REPLICA"),
    ("quoted", "set \"session_replication_role\" = 'replica'"),
    ("to", "set session_replication_role to replica"),
    ("reset", "reset session_replication_role"),
    ("to-default", "set session_replication_role to default"),
    ("set-config-upper", "select set_config('SESSION_REPLICATION_ROLE', 'replica', false)"),
    ("set-config-from", "select * from set_config('session_replication_role', 'replica', false)"),
    (
        "set-config-cte",
        "with x as (select set_config('session_replication_role', 'replica', false)) select * from x",
    ),
    (
        "set-config-explain",
        "explain analyze select set_config('session_replication_role', 'replica', false)",
    ),
    (
        "set-config-copy",
        "copy (select set_config('session_replication_role', 'replica', false)) to stdout",
    ),
    (
        "set-config-where",
        "select 1 where set_config('session_replication_role', 'replica', false) is not null",
    ),
]


@pytest.mark.parametrize("sql", [s[1] for s in SPELLINGS], ids=[s[0] for s in SPELLINGS])
@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_denied_setting_spellings(env: Env, mode: str, sql: str) -> None:
    o, show = run(mode, env.proxy, [sql, "show session_replication_role"])
    refused(o, "session_replication_role")
    assert show.rows == [("origin",)], str(show)


NON_CONSTANT = [
    ("expr-name", "select set_config(lower('SESSION_REPLICATION_ROLE'), 'replica', false)"),
    ("concat-name", "select set_config('session_' || 'replication_role', 'replica', false)"),
    (
        "values-name",
        "select set_config(n, 'replica', false) from (values ('session_replication_role')) v(n)",
    ),
    ("prepared", "prepare s(text) as select set_config($1, 'replica', false)"),
]


@pytest.mark.parametrize("sql", [s[1] for s in NON_CONSTANT], ids=[s[0] for s in NON_CONSTANT])
def test_set_config_with_a_name_that_is_not_a_constant(env: Env, sql: str) -> None:
    out = run(
        "psycopg",
        env.proxy,
        [sql, "execute s('session_replication_role')", "show session_replication_role"],
    )
    refused(out[0])
    assert out[2].rows == [("origin",)], str(out[2])


@pytest.mark.parametrize("mode", MODES)
def test_set_local_in_a_block(env: Env, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            "begin",
            "set local session_replication_role = replica",
            "show session_replication_role",
            "rollback",
            "begin",
            "select set_config('session_replication_role', 'replica', true)",
            "rollback",
            "show session_replication_role",
        ],
    )
    refused(out[1], "session_replication_role")
    assert out[2].sqlstate == "25P02", str(out[2])
    refused(out[5], "session_replication_role")
    assert out[7].rows == [("origin",)], str(out[7])


@pytest.mark.parametrize("mode", MODES)
def test_replica_role_cannot_skip_triggers(env: Env, victim: str, mode: str) -> None:
    """With session_replication_role = replica an ordinary trigger (here: an audit log of
    deletes) does not fire: the delete would leave no trace."""
    out = run(
        mode,
        env.proxy,
        ["set session_replication_role = replica", f"delete from {env.v} where id = 1"],
    )
    refused(out[0], "session_replication_role")
    with env.direct() as c:
        logged = c.execute(f"select id, what from {env.s}.audit_log").fetchall()
    if out[1].ok:
        assert logged == [(1, "deleted")], "a delete escaped the audit trigger"


@pytest.mark.parametrize("mode", MODES)
def test_track_counts_off_cannot_blind_the_row_guard(env: Env, victim: str, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            "set track_counts = off",
            "select set_config('track_counts', 'off', false)",
            f"delete from {env.v} where id > -1",
        ],
    )
    refused(out[0], "track_counts")
    refused(out[1], "track_counts")
    refused(out[2], "rolled back")
    intact(env)


def test_track_counts_off_inside_a_block(env: Env, victim: str) -> None:
    out = run(
        "psql",
        env.proxy,
        [
            "begin",
            "set local track_counts = off",
            f"update {env.v} set note = 'x' where id > 0",
            "commit",
        ],
    )
    refused(out[1], "track_counts")
    intact(env)


# ================================================================ startup settings


@pytest.mark.parametrize(
    ("options", "startup", "name"),
    [
        ("-c session_replication_role=replica", {}, "session_replication_role"),
        ("--session-replication-role=replica", {}, "session_replication_role"),
        ("-c SESSION_REPLICATION_ROLE=replica", {}, "session_replication_role"),
        ("-c track_counts=off", {}, "track_counts"),
        ("-c allow_system_table_mods=on", {}, "allow_system_table_mods"),
        ("-c search_path=public -c zero_damaged_pages=on", {}, "zero_damaged_pages"),
        (None, {"session_replication_role": "replica"}, "session_replication_role"),
        (None, {"Log_Statement": "none"}, "log_statement"),
        (None, {"track_counts": "off"}, "track_counts"),
    ],
    ids=[
        "option",
        "long-option",
        "upper",
        "track-counts",
        "system-table-mods",
        "second",
        "param",
        "param-case",
        "param-track",
    ],
)
@pytest.mark.parametrize("dbname", ["prod", "noenv"])
def test_startup_setting_refused(
    env: Env, dbname: str, options: str | None, startup: dict[str, str], name: str
) -> None:
    login = Login(dbname=dbname, options=options, startup=startup)
    with pytest.raises(ConnectFailed) as caught:
        run(
            "asyncpg" if startup else "psycopg", env.proxy, ["show session_replication_role"], login
        )
    assert name in caught.value.message.lower(), caught.value.message


@pytest.mark.parametrize("mode", MODES)
def test_startup_setting_refused_in_every_client(env: Env, mode: str) -> None:
    login = Login(options="-c session_replication_role=replica")
    with pytest.raises(ConnectFailed) as caught:
        run(mode, env.proxy, ["show session_replication_role"], login)
    assert "session_replication_role" in caught.value.message, caught.value.message


@pytest.mark.parametrize("mode", MODES)
def test_allowed_startup_settings(env: Env, mode: str) -> None:
    login = Login(options="-c search_path=public -c statement_timeout=7s -c DateStyle=ISO,DMY")
    out = run(
        mode, env.proxy, ["show search_path", "show statement_timeout", "show datestyle"], login
    )
    assert [o.rows for o in out] == [[("public",)], [("7s",)], [("ISO, DMY",)]], [
        str(o) for o in out
    ]


def test_agent_default_timeout(env: Env) -> None:
    """Without configuration, an agent's session has a statement timeout (30s)."""
    (o,) = run("psycopg", env.proxy, ["show statement_timeout"], AGENT)
    assert o.rows == [("30s",)], str(o)


# ================================================================ environments fail closed


def _config_with(tmp_path: Path, pg: PgServer, environment: str | None) -> Path:
    conn = _base(pg)
    if environment is not None:
        conn["environment"] = environment
    return write_config(tmp_path, pg, connections={"bad": conn})


@pytest.mark.parametrize("environment", ["prod", "Production", "prd", "live"])
def test_unknown_environment_is_a_configuration_error(
    pg_server: PgServer, tmp_path: Path, environment: str
) -> None:
    config = _config_with(tmp_path, pg_server, environment)
    done = dbsentry_cli("check-config", config=config, check=False)
    assert done.returncode != 0, done.stdout
    assert "connections.bad.environment" in done.stderr, done.stderr
    assert environment in done.stderr, done.stderr
    # serve refuses to start: it exits with an error and never listens.
    port = yaml.safe_load(config.read_text())["listen"]["postgres"].rpartition(":")[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbsentry", "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            if _listening("127.0.0.1", int(port)):
                break
            time.sleep(0.1)
        started = proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
    assert not started, f"dbsentry serve started with environment {environment!r}"
    assert proc.returncode != 0
    assert "connections.bad.environment" in output, output


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("environment", [None, "production", "staging", "development", "test"])
def test_known_environments_are_valid(
    pg_server: PgServer, tmp_path: Path, environment: str | None
) -> None:
    done = dbsentry_cli(
        "check-config", config=_config_with(tmp_path, pg_server, environment), check=False
    )
    assert done.returncode == 0, done.stderr


# ================================================================ deep nesting


DEEP = [
    ("not-2001", "select " + "not " * 2001 + "true"),
    ("lower-300", "select " + "lower(" * 300 + "'x'" + ")" * 300),
    ("subquery-200", "select " + "(select " * 200 + "1" + ")" * 200),
    ("delete-where-not", "delete from {v} where " + "not " * 2001 + "false"),
    (
        "in-subqueries",
        "delete from {v} where id in "
        + "(select id from {v} where id in " * 150
        + "(-1)"
        + ")" * 150,
    ),
]


@pytest.mark.parametrize("sql", [d[1] for d in DEEP], ids=[d[0] for d in DEEP])
@pytest.mark.parametrize("mode", MODES)
def test_deep_nesting_is_refused_fast(env: Env, victim: str, mode: str, sql: str) -> None:
    started = time.monotonic()
    o, after = run(mode, env.proxy, [sql.format(v=env.v), "select 'alive'"])
    took = time.monotonic() - started
    if sql.startswith("select lower("):
        # PostgreSQL itself takes 300 nested calls: an answer or a 54001, fast either way.
        assert (o.ok and o.rows == [("x",)]) or o.sqlstate == "54001", str(o)
    elif sql.startswith("delete from {v} where id in (select"):
        # 150 nested subqueries are within what the analysis reads: judged and run (they
        # match nothing), or refused as too complex; fast either way, nothing changed.
        assert o.ok or o.sqlstate == "54001", str(o)
    else:
        refused(o, "too complex", sqlstate="54001")
    assert after.rows == [("alive",)], str(after)
    assert took < 10, f"took {took:.1f}s"
    intact(env)


# ================================================================ constructs the analysis does not know

JSON_TABLE = "json_table('[1, 2]'::jsonb, '$[*]' columns (a int path '$'))"


@pytest.mark.parametrize("dbname", ["prod", "staging"])
@pytest.mark.parametrize("mode", MODES)
def test_unknown_construct_is_refused_everywhere(
    env: Env, victim: str, mode: str, dbname: str
) -> None:
    """A construct on no allow-list (JSON_TABLE) is refused, named, in every environment,
    also deep inside a statement that would change data."""
    out = run(
        mode,
        env.proxy,
        [
            f"select * from {JSON_TABLE}",
            f"delete from {env.v} where id in (select a from {JSON_TABLE}) or id > -1",
            "select 'alive'",
        ],
        Login(dbname=dbname),
    )
    refused(out[0], "JSON_TABLE")
    refused(out[1], "JSON_TABLE")
    assert out[2].rows == [("alive",)], str(out[2])
    intact(env)


# ================================================================ constructs: TABLESAMPLE is a read


@pytest.mark.parametrize("mode", MODES)
def test_tablesample_is_a_masked_read(env: Env, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            f"select email from {env.s}.people where id = 1",
            f"select email from {env.s}.people tablesample system (100) where id = 1",
            f"select p.email from {env.s}.people p tablesample bernoulli (100) repeatable (7) limit 1",
        ],
    )
    for o in out:
        assert o.ok and len(o.rows) == 1, str(o)
        assert REAL_EMAIL not in repr(o.rows) and "ada.lovelace" not in repr(o.rows), (
            f"unmasked: {o}"
        )


def test_tablesample_for_agents(env: Env) -> None:
    (o,) = run(
        "asyncpg",
        env.proxy,
        [f"select count(*) from {env.s}.people tablesample system (100)"],
        AGENT,
    )
    assert o.ok and o.rows == [("1",)], str(o)

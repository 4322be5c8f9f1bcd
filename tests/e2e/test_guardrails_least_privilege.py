"""Least privilege at the database: agents are read-only upstream, connections with
``roles`` log in as a role clients cannot change, catalog writes are DDL, and dangerous
administration is refused in production.

An agent must change nothing in production, by any route: the proxy refuses what it sees,
and the upstream session (``default_transaction_read_only=on``, a statement timeout) stops
what it does not see, so anything that turns read-only off must be refused.  Every test
checks the database directly.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import psycopg
import pytest

from support.guard_clients import (
    AGENT,
    MODES,
    ConnectFailed,
    Login,
    Outcome,
    refused,
    run,
    run_one,
)
from support.pg import LARGE_OBJECTS, PgServer, exclusive
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

ROWS = 40
AGENT_TIMEOUT = "1s"


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    pg: PgServer
    s: str
    app_role: str
    agent_role: str
    dba_role: str
    nobody: str

    @property
    def v(self) -> str:
        return f"{self.s}.victim"

    def direct(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.pg.dsn(), autocommit=True)


def _objects(s: str, app: str, agent: str, dba: str, nobody: str) -> str:
    v = f"{s}.victim"
    return f"""
    create role {app} nologin;
    create role {agent} nologin;
    create role {dba} nologin;
    create role {nobody} nologin;
    create schema {s};
    grant usage on schema {s} to {app}, {agent}, {dba};
    create table {v} (id int primary key, note text);
    create table {s}.secret (id int, note text);
    create table {s}.scratch (id int);
    create sequence {s}.seq;
    grant select, insert, update, delete on {v} to {app};
    grant select on {v} to {agent};
    grant all on all tables in schema {s} to {dba};
    grant all on all sequences in schema {s} to {app}, {agent}, {dba};

    create function {s}.wipe() returns int language plpgsql as
      $$ begin delete from {v}; return 1; end $$;
    create function {s}.stable_wrap() returns int language plpgsql stable as
      $$ begin return {s}.wipe(); end $$;
    create function {s}.agg_step(int, int) returns int language plpgsql as
      $$ begin delete from {v}; return 1; end $$;
    create aggregate {s}.evil_agg(int) (sfunc = {s}.agg_step, stype = int, initcond = '0');
    create function {s}.op_fn(int, int) returns boolean language plpgsql as
      $$ begin delete from {v}; return true; end $$;
    create operator {s}.### (leftarg = int, rightarg = int, function = {s}.op_fn);
    create view {s}.wipe_view as select {s}.wipe() as w;
    create function {s}.volatile_reader() returns bigint language sql as $$ select count(*) from {v} $$;
    create function {s}.stable_reader() returns bigint stable language sql as $$ select count(*) from {v} $$;
    create procedure {s}.wipe_proc(x int) language plpgsql as
      $$ begin delete from {v} where id > x; end $$;
    grant execute on all functions in schema {s} to {app}, {agent}, {dba};
    grant select on {s}.wipe_view to {app}, {agent}, {dba};
    """


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tag = uuid.uuid4().hex[:10]
    s = f"glp_{tag}"
    roles = (f"glp_{tag}_app", f"glp_{tag}_agent", f"glp_{tag}_dba", f"glp_{tag}_nobody")
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        c.execute(_objects(s, *roles))
    base: dict[str, Any] = {
        "host": pg_server.host,
        "port": pg_server.port,
        "database": pg_server.dbname,
        "user": pg_server.user,
    }
    if pg_server.password:
        base["password"] = pg_server.password
    role_map = {"agent": roles[1], "default": roles[0], "groups": {"dba": roles[2]}}
    config = write_config(
        tmp_path_factory.mktemp("guard_least_privilege"),
        pg_server,
        connections={
            "roled": {**base, "environment": "production", "roles": role_map},
            "roled_stg": {**base, "environment": "staging", "roles": role_map},
        },
        extra={"guardrails": {"agent_statement_timeout": AGENT_TIMEOUT}},
    )
    try:
        # The tests count the database's large objects before and after each attempt: no
        # other module makes or removes one meanwhile (test_masking_attack_round.py's do).
        with exclusive(pg_server, LARGE_OBJECTS), run_proxy(config) as proxy:
            yield Env(proxy, pg_server, s, *roles)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"drop schema if exists {s} cascade")
            c.execute("delete from pg_description where description like %s", (f"marker-{s}%",))
            for role in roles:
                c.execute(f"drop owned by {role} cascade")
                c.execute(f"drop role if exists {role}")


@pytest.fixture
def victim(env: Env) -> str:
    with env.direct() as c:
        c.execute(f"truncate {env.v}")
        c.execute(f"insert into {env.v} select g, 'n' || g from generate_series(1, {ROWS}) g")
        c.execute(f"select setval('{env.s}.seq', 1, false)")
    return env.v


@dataclass(frozen=True)
class State:
    rows: list[tuple[Any, ...]]
    seq: tuple[Any, ...]
    large_objects: int
    tables: int
    descriptions: int


def state(env: Env) -> State:
    with env.direct() as c:
        return State(
            c.execute(f"select id, note from {env.v} order by id").fetchall(),
            c.execute(f"select last_value, is_called from {env.s}.seq").fetchone() or (),
            c.execute("select count(*) from pg_largeobject_metadata").fetchone()[0],  # type: ignore[index]
            c.execute(
                "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = %s",
                (env.s,),
            ).fetchone()[0],  # type: ignore[index]
            c.execute(_DESCRIPTIONS, {"s": env.s}).fetchone()[0],  # type: ignore[index]
        )


# Comments on the test's own schema and what is in it (other tests add and drop commented
# tables of their own in the same database meanwhile).
_DESCRIPTIONS = """
select count(*) from pg_description d
where (d.classoid = 'pg_namespace'::regclass and d.objoid = to_regnamespace(%(s)s))
   or (d.classoid = 'pg_class'::regclass and d.objoid in (select oid from pg_class where relnamespace = to_regnamespace(%(s)s)))
   or (d.classoid = 'pg_proc'::regclass and d.objoid in (select oid from pg_proc where pronamespace = to_regnamespace(%(s)s)))
   or (d.classoid = 'pg_type'::regclass and d.objoid in (select oid from pg_type where typnamespace = to_regnamespace(%(s)s)))
   or (d.classoid = 'pg_operator'::regclass and d.objoid in (select oid from pg_operator where oprnamespace = to_regnamespace(%(s)s)))
"""


def intact(env: Env) -> None:
    with env.direct() as c:
        rows = c.execute(f"select id, note from {env.v} order by id").fetchall()
    assert rows == [(i, f"n{i}") for i in range(1, ROWS + 1)]


def refused_by_proxy(o: Outcome) -> bool:
    return o.sqlstate is not None and o.message.startswith("dbsentry:")


# ================================================================ the agent's session


@pytest.mark.parametrize("mode", MODES)
def test_agent_session_is_read_only_with_a_timeout(env: Env, victim: str, mode: str) -> None:
    ro, timeout, view = run(
        mode,
        env.proxy,
        [
            "show default_transaction_read_only",
            "show statement_timeout",
            f"select * from {env.s}.wipe_view",
        ],
        AGENT,
    )
    assert ro.rows == [("on",)], str(ro)
    assert timeout.rows == [(AGENT_TIMEOUT,)], str(timeout)
    assert view.sqlstate is not None, f"an agent changed data through a view: {view}"
    intact(env)


@pytest.mark.parametrize("mode", MODES)
def test_agent_statement_timeout_is_enforced(env: Env, mode: str) -> None:
    slow, after = run(mode, env.proxy, ["select pg_sleep(3)", "select 'after'"], AGENT)
    assert slow.sqlstate == "57014", str(slow)
    assert after.rows == [("after",)], str(after)


@pytest.mark.parametrize(
    "steps",
    [
        ["set statement_timeout = 0"],
        ["select set_config('statement_timeout', '0', false)"],
        ["set statement_timeout to default"],
        ["begin", "set local statement_timeout = 0"],
        ["begin", "select set_config('statement_timeout', '1h', true)"],
    ],
    ids=["set", "set-config", "to-default", "set-local", "set-config-local"],
)
def test_agent_cannot_lift_the_statement_timeout(env: Env, steps: list[str]) -> None:
    """The timeout the proxy sets for agents holds whatever the agent sets."""
    out = run("psycopg", env.proxy, [*steps, "select pg_sleep(1.6)", "rollback"], AGENT)
    sleep = out[len(steps)]
    assert not sleep.ok, (
        f"an agent ran a statement longer than its timeout: {' | '.join(map(str, out))}"
    )


# Every way to turn read-only off; each is followed by writes the parser cannot see
# (a view and a STABLE wrapper that call a VOLATILE function), which only the read-only
# session stops.
READ_WRITE: list[tuple[str, list[str]]] = [
    ("set", ["set default_transaction_read_only = off"]),
    ("set-mixed-case-quoted", ["SET Default_Transaction_Read_Only TO 'off'"]),
    ("set-quoted-name", ['set "default_transaction_read_only" = false']),
    ("set-zero", ["set default_transaction_read_only = 0"]),
    ("set-session", ["set session default_transaction_read_only to off"]),
    ("session-characteristics", ["set session characteristics as transaction read write"]),
    ("set-config", ["select set_config('default_transaction_read_only', 'off', false)"]),
    (
        "set-config-expr-value",
        ["select set_config('default_transaction_read_only', 'of' || 'f', false)"],
    ),
    (
        "set-config-expr-name",
        ["select set_config(lower('DEFAULT_TRANSACTION_READ_ONLY'), 'off', false)"],
    ),
    (
        "set-config-from-values",
        ["select set_config(n, 'off', false) from (values ('default_transaction_read_only')) v(n)"],
    ),
    (
        "set-config-in-cte",
        [
            "with x as (select set_config('default_transaction_read_only', 'off', false)) select * from x"
        ],
    ),
    ("begin-read-write", ["begin read write"]),
    ("start-transaction-read-write", ["start transaction read write"]),
    ("begin-isolation-read-write", ["begin isolation level serializable, read write"]),
    ("set-transaction-read-write", ["begin", "set transaction read write"]),
    ("set-local-transaction-read-only", ["begin", "set local transaction_read_only = off"]),
    ("set-transaction-read-only", ["begin", "set transaction_read_only to off"]),
]


def _writes(env: Env) -> list[str]:
    return [f"select * from {env.s}.wipe_view", f"select {env.s}.stable_wrap()", "commit"]


@pytest.mark.parametrize("steps", [r[1] for r in READ_WRITE], ids=[r[0] for r in READ_WRITE])
@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_agent_cannot_turn_read_only_off(
    env: Env, victim: str, mode: str, steps: list[str]
) -> None:
    out = run(mode, env.proxy, [*steps, *_writes(env), "show default_transaction_read_only"], AGENT)
    flip = out[len(steps) - 1]
    refused(flip)
    assert out[-1].rows == [("on",)], str(out[-1])
    intact(env)


@pytest.mark.parametrize("mode", MODES)
def test_agent_read_only_in_every_client(env: Env, victim: str, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            "set default_transaction_read_only = off",
            "begin read write",
            f"select * from {env.s}.wipe_view",
            "rollback",
            "discard all",
            "show default_transaction_read_only",
            "show transaction_read_only",
        ],
        AGENT,
    )
    refused(out[0])
    refused(out[1])
    assert out[5].rows == [("on",)] and out[6].rows == [("on",)], [str(o) for o in out]
    intact(env)


@pytest.mark.parametrize(
    ("options", "startup"),
    [
        ("-c default_transaction_read_only=off", {}),
        ("-c DEFAULT_TRANSACTION_READ_ONLY=off", {}),
        ("--default-transaction-read-only=off", {}),
        ("-c transaction_read_only=off", {}),
        ("-c statement_timeout=0", {}),
        (None, {"default_transaction_read_only": "off"}),
        (None, {"Default_Transaction_Read_Only": "off"}),
        (None, {"statement_timeout": "0"}),
    ],
    ids=[
        "option",
        "option-upper",
        "long-option",
        "transaction",
        "timeout",
        "param",
        "param-case",
        "param-timeout",
    ],
)
def test_agent_startup_settings_are_refused(
    env: Env, victim: str, options: str | None, startup: dict[str, str]
) -> None:
    login = Login(AGENT.identity, AGENT.groups, agent=True, options=options, startup=startup)
    mode = "asyncpg" if startup else "psycopg"
    try:
        out = run(
            mode,
            env.proxy,
            [f"select * from {env.s}.wipe_view", "show default_transaction_read_only"],
            login,
        )
    except ConnectFailed as err:
        assert "dbsentry" in err.message, err.message
    else:
        raise AssertionError(
            f"an agent logged in with its own read-only setting: {[str(o) for o in out]}"
        )
    intact(env)


@pytest.mark.parametrize("mode", ["psql", "psycopg-pipeline"])
def test_agent_startup_option_refused_in_every_client(env: Env, mode: str) -> None:
    login = Login(
        AGENT.identity, AGENT.groups, agent=True, options="-c default_transaction_read_only=off"
    )
    with pytest.raises(ConnectFailed) as caught:
        run(mode, env.proxy, ["select 1"], login)
    assert "default_transaction_read_only" in caught.value.message, caught.value.message


# Routes by which an agent could change something.  None may: whatever refuses it (the
# proxy, or PostgreSQL's read-only session), the database must be as it was.
AGENT_ROUTES: list[tuple[str, list[str]]] = [
    ("function", ["select {s}.wipe()"]),
    ("stable-wrapper", ["select {s}.stable_wrap()"]),
    ("aggregate", ["select {s}.evil_agg(1)"]),
    ("operator", ["select 1 operator({s}.###) 1"]),
    ("view", ["select * from {s}.wipe_view"]),
    ("cte", ["with d as (delete from {v} where id > 0 returning *) select count(*) from d"]),
    ("delete", ["delete from {v} where id = 1"]),
    ("update", ["update {v} set note = 'agent' where id = 1"]),
    ("insert", ["insert into {v} values (999, 'agent')"]),
    (
        "upsert",
        ["insert into {v} values (1, 'agent') on conflict (id) do update set note = 'agent'"],
    ),
    (
        "merge",
        ["merge into {v} t using (select 1 as id) s on t.id = s.id when matched then delete"],
    ),
    ("copy-query", ["copy (delete from {v} where id = 1 returning id) to stdout"]),
    ("explain-analyze", ["explain analyze delete from {v} where id = 1"]),
    ("prepare-execute", ["prepare d as delete from {v} where id = 1", "execute d"]),
    ("do", ["do $$ begin delete from {v}; end $$"]),
    ("call", ["call {s}.wipe_proc(0)"]),
    ("cursor", ["begin", "declare c cursor for select {s}.wipe()", "fetch all from c", "commit"]),
    ("cursor-with-hold", ["declare c cursor with hold for select {s}.wipe()", "close c"]),
    ("nextval", ["select nextval('{s}.seq')"]),
    ("setval", ["select setval('{s}.seq', 100)"]),
    ("large-object", ["select lo_create(0)"]),
    ("lo-from-bytea", ["select lo_from_bytea(0, 'x')"]),
    ("temp-table", ["create temp table agent_tmp (x int)", "insert into agent_tmp values (1)"]),
    ("select-into", ["select * into temp agent_copy from {v}"]),
    (
        "temp-view",
        ["create temp view agent_view as select {s}.wipe() as w", "select * from agent_view"],
    ),
    ("truncate", ["truncate {v}"]),
    ("create-table", ["create table {s}.agent_made (x int)"]),
    (
        "catalog-insert",
        [
            "insert into pg_description values ('{v}'::regclass, 'pg_class'::regclass, 0, 'marker-{s}')"
        ],
    ),
    ("for-update", ["begin", "select * from {v} for update", "commit"]),
    ("lock", ["begin", "lock table {v} in access exclusive mode", "commit"]),
    ("advisory-lock", ["select pg_advisory_lock(1)"]),
]


@pytest.mark.parametrize("steps", [r[1] for r in AGENT_ROUTES], ids=[r[0] for r in AGENT_ROUTES])
@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_agent_changes_nothing(env: Env, victim: str, mode: str, steps: list[str]) -> None:
    before = state(env)
    out = run(mode, env.proxy, [st.format(v=env.v, s=env.s) for st in steps], AGENT)
    assert any(o.sqlstate is not None for o in out), "every step succeeded: " + " | ".join(
        map(str, out)
    )
    assert state(env) == before


@pytest.mark.parametrize("mode", MODES)
def test_agent_changes_nothing_in_every_client(env: Env, victim: str, mode: str) -> None:
    before = state(env)
    statements = [
        f"select {env.s}.wipe()",
        f"select * from {env.s}.wipe_view",
        f"select 1 operator({env.s}.###) 1",
        f"with d as (delete from {env.v} where id > 0 returning *) select count(*) from d",
        f"select nextval('{env.s}.seq')",
    ]
    out = run(mode, env.proxy, statements, AGENT)
    assert all(o.sqlstate is not None for o in out), " | ".join(map(str, out))
    assert state(env) == before


@pytest.mark.parametrize("mode", MODES)
def test_agent_user_functions_by_volatility(env: Env, victim: str, mode: str) -> None:
    """A user-defined function is a side effect for an agent unless it is IMMUTABLE or
    STABLE with a read-only body; VOLATILE counts even when its body only reads."""
    wipe, volatile, stable = run(
        mode,
        env.proxy,
        [
            f"select {env.s}.wipe()",
            f"select {env.s}.volatile_reader()",
            f"select {env.s}.stable_reader()",
        ],
        AGENT,
    )
    refused(wipe, "baseline.prod.agent-side-effects")
    refused(volatile, "baseline.prod.agent-side-effects")
    assert stable.ok and stable.rows == [(str(ROWS),)], str(stable)
    intact(env)


def test_agent_copy_from_stdin(env: Env, victim: str) -> None:
    before = state(env)
    with psycopg.connect(
        env.proxy.dsn(AGENT.identity, groups=AGENT.groups, agent=True), autocommit=True
    ) as conn:
        with pytest.raises(psycopg.Error), conn.cursor().copy(f"copy {env.v} from stdin") as copy:
            copy.write_row((500, "copied"))
        assert conn.execute("select 1").fetchone() == (1,)
    assert state(env) == before


@pytest.mark.parametrize("mode", MODES)
def test_agent_result_rows_are_capped(env: Env, mode: str) -> None:
    """guardrails.agent_max_rows (default 10,000): an agent never receives more rows, as a
    result set, through COPY TO STDOUT or from a cursor."""
    out = run(
        mode,
        env.proxy,
        [
            "select g from generate_series(1, 5000) g",
            "select g from generate_series(1, 20000) g",
            "copy (select g from generate_series(1, 20000) g) to stdout",
            "begin",
            "declare big cursor for select g from generate_series(1, 20000) g",
            "fetch all from big",
            "rollback",
        ],
        AGENT,
    )
    small = out[0]
    assert small.ok and len(small.rows) == 5000, str(small)
    for large in (out[1], out[2], out[5]):
        assert not (large.ok and len(large.rows) > 10_000), (
            f"an agent received {len(large.rows)} rows: {large.sql}"
        )


def test_agent_row_cap_holds_for_cursors(env: Env) -> None:
    """One query's result read in pieces (psycopg's server-side cursor: DECLARE and FETCH;
    asyncpg's cursor: Execute with a row limit, portal suspended) is still one result."""
    query = "select g from generate_series(1, 20000) g"
    with psycopg.connect(env.proxy.dsn(AGENT.identity, groups=AGENT.groups, agent=True)) as conn:
        got = 0
        try:
            with conn.cursor(name="agent_cursor") as cur:
                cur.itersize = 2000
                cur.execute(query)
                for _ in cur:
                    got += 1
        except psycopg.Error:
            pass
        assert got <= 10_000, f"an agent read {got} rows of one result through a server-side cursor"

    async def by_asyncpg() -> int:
        conn = await asyncpg.connect(
            host=env.proxy.host,
            port=env.proxy.port,
            user=AGENT.identity,
            password=env.proxy.token(AGENT.identity, AGENT.groups, True),
            database="prod",
            ssl=_tls(),
            timeout=10,
        )
        n = 0
        try:
            async with conn.transaction():
                async for _ in conn.cursor(query, prefetch=1000):
                    n += 1
        except asyncpg.PostgresError:
            pass
        finally:
            await conn.close()
        return n

    got = asyncio.run(by_asyncpg())
    assert got <= 10_000, f"an agent read {got} rows of one result through an asyncpg cursor"


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ================================================================ upstream roles


@pytest.mark.parametrize("mode", MODES)
def test_upstream_role_by_identity(env: Env, mode: str) -> None:
    for login, role in [
        (Login(dbname="roled"), env.app_role),
        (Login(AGENT.identity, AGENT.groups, agent=True, dbname="roled"), env.agent_role),
        (Login("dana@example.com", ("dba",), dbname="roled"), env.dba_role),
    ]:
        (o,) = run(mode, env.proxy, ["select current_user"], login)
        assert o.rows == [(role,)], str(o)


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_least_privilege_is_real(env: Env, mode: str) -> None:
    """The mapped role has only its grants: the superuser the proxy logs in as is not used."""
    secret, victim_read = run(
        mode,
        env.proxy,
        [f"select * from {env.s}.secret", f"select count(*) from {env.v}"],
        Login(dbname="roled"),
    )
    assert secret.sqlstate == "42501" and "permission denied" in secret.message, str(secret)
    assert victim_read.ok, str(victim_read)


ROLE_SWITCHES: list[tuple[str, list[str]]] = [
    ("set-role", ["set role postgres"]),
    ("set-role-none", ["set role none"]),
    ("reset-role", ["reset role"]),
    ("set-session-authorization", ["set session authorization postgres"]),
    ("session-authorization-default", ["set session authorization default"]),
    ("reset-session-authorization", ["reset session authorization"]),
    ("set-local-role", ["begin", "set local role postgres"]),
    ("set-config-role", ["select set_config('role', 'postgres', false)"]),
    ("set-config-role-upper", ["select set_config('ROLE', 'postgres', false)"]),
    ("set-config-role-expr", ["select set_config(lower('ROLE'), 'postgres', false)"]),
    (
        "set-config-session-authorization",
        ["select set_config('session_authorization', 'postgres', false)"],
    ),
    (
        "set-config-in-cte",
        ["with x as (select set_config('role', 'postgres', true)) select * from x"],
    ),
    (
        "prepared-set-config",
        ["prepare r as select set_config('role', 'postgres', false)", "execute r"],
    ),
    # A temporary view hides the call from the statement that runs it.
    (
        "temp-view",
        [
            "create temp view rv as select set_config('role', 'postgres', false) as r",
            "select * from rv",
        ],
    ),
]


@pytest.mark.parametrize("steps", [r[1] for r in ROLE_SWITCHES], ids=[r[0] for r in ROLE_SWITCHES])
@pytest.mark.parametrize("dbname", ["roled", "roled_stg"])
def test_role_cannot_be_changed(env: Env, dbname: str, steps: list[str]) -> None:
    out = run("psycopg", env.proxy, [*steps, "select current_user"], Login(dbname=dbname))
    assert any(refused_by_proxy(o) for o in out[:-1]), " | ".join(map(str, out))
    last = out[-1]
    assert last.sqlstate == "25P02" or last.rows == [(env.app_role,)], str(last)
    if last.sqlstate == "25P02":
        (after,) = run("psycopg", env.proxy, ["select current_user"], Login(dbname=dbname))
        assert after.rows == [(env.app_role,)]


@pytest.mark.parametrize("mode", MODES)
def test_role_switch_refused_in_every_client(env: Env, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            "set role postgres",
            "reset role",
            "select set_config('role', 'postgres', false)",
            "select current_user",
        ],
        Login(dbname="roled"),
    )
    for o in out[:3]:
        refused(o, "roles")
    assert out[3].rows == [(env.app_role,)], str(out[3])


def test_discard_all_keeps_the_role(env: Env) -> None:
    out = run(
        "psycopg",
        env.proxy,
        ["discard all", "reset all", "select current_user"],
        Login(dbname="roled"),
    )
    assert out[2].rows == [(env.app_role,)], [str(o) for o in out]


@pytest.mark.parametrize(
    ("options", "startup"),
    [
        ("-c role=postgres", {}),
        ("-c ROLE=postgres", {}),
        ("--role=postgres", {}),
        ("-c session_authorization=postgres", {}),
        (None, {"role": "postgres"}),
        (None, {"session_authorization": "postgres"}),
    ],
    ids=[
        "option",
        "option-upper",
        "long-option",
        "session-authorization",
        "param",
        "param-session-authorization",
    ],
)
@pytest.mark.parametrize("dbname", ["roled", "roled_stg"])
def test_startup_role_is_refused(
    env: Env, dbname: str, options: str | None, startup: dict[str, str]
) -> None:
    login = Login(dbname=dbname, options=options, startup=startup)
    mode = "asyncpg" if startup else "psycopg"
    with pytest.raises(ConnectFailed) as caught:
        run(mode, env.proxy, ["select current_user"], login)
    assert "dbsentry" in caught.value.message, caught.value.message


# ================================================================ catalog writes are DDL


@pytest.fixture
def scratch(env: Env) -> Iterator[None]:
    """A fresh {s}.scratch, whatever an earlier test's catalog write did to it."""

    def reset(c: psycopg.Connection[Any]) -> None:
        for (name,) in c.execute(
            "select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = %s and c.relkind = 'r' and c.relname <> all(%s)",
            (env.s, ["victim", "secret"]),
        ).fetchall():
            c.execute(f'drop table {env.s}."{name}"')
        c.execute(f"create table {env.s}.scratch (id int)")
        c.execute("update pg_authid set rolsuper = false where rolname = %s", (env.nobody,))

    with env.direct() as c:
        reset(c)
    yield
    with env.direct() as c:
        reset(c)


CATALOG_DML: list[tuple[str, str, str]] = [
    (
        "update-pg-class",
        "update pg_class set relname = '{s}_renamed' where oid = '{s}.scratch'::regclass",
        "select count(*) = 0 from pg_class where relname = '{s}_renamed'",
    ),
    (
        "delete-pg-class",
        "delete from pg_class where relname = '{s}_no_such_relation'",
        "select true",
    ),
    (
        "update-pg-authid",
        "update pg_authid set rolsuper = true where rolname = '{nobody}'",
        "select not rolsuper from pg_authid where rolname = '{nobody}'",
    ),
    (
        "insert-pg-description",
        "insert into pg_description values ('{s}.scratch'::regclass, 'pg_class'::regclass, 0, 'marker-{s}')",
        "select count(*) = 0 from pg_description where description = 'marker-{s}'",
    ),
    (
        "qualified-insert",
        "insert into pg_catalog.pg_description select '{s}.scratch'::regclass, 'pg_class'::regclass, 1, 'marker-{s}-q'",
        "select count(*) = 0 from pg_description where description = 'marker-{s}-q'",
    ),
    (
        "cte-update",
        "with x as (update pg_catalog.pg_class set relname = '{s}_cte' where oid = '{s}.scratch'::regclass returning 1) "
        "select count(*) from x",
        "select count(*) = 0 from pg_class where relname = '{s}_cte'",
    ),
    (
        "information-schema",
        "update information_schema.sql_features set comments = 'marker-{s}' where feature_id = 'B011'",
        "select count(*) = 0 from information_schema.sql_features where comments = 'marker-{s}'",
    ),
]


@pytest.mark.parametrize(
    ("template", "unchanged"), [c[1:] for c in CATALOG_DML], ids=[c[0] for c in CATALOG_DML]
)
@pytest.mark.parametrize("dbname", ["prod", "staging"])
@pytest.mark.usefixtures("scratch")
def test_catalog_dml_is_ddl(env: Env, dbname: str, template: str, unchanged: str) -> None:
    sql = template.format(s=env.s, nobody=env.nobody)
    try:
        o = run_one("psycopg", env.proxy, sql, Login(dbname=dbname))
        refused(o)
        if dbname == "staging":
            assert "approval" in o.message, f"outside production catalog DML needs an approval: {o}"
    finally:
        with env.direct() as c:
            ok = c.execute(unchanged.format(s=env.s, nobody=env.nobody)).fetchone()
            c.execute(
                "update information_schema.sql_features set comments = '' where comments like 'marker-%'"
            )
    assert ok == (True,), f"the catalog changed: {sql}"


@pytest.mark.usefixtures("scratch")
@pytest.mark.parametrize("mode", MODES)
def test_catalog_insert_refused_in_every_client(env: Env, mode: str) -> None:
    marker = f"marker-{env.s}-{mode}"
    o = run_one(
        mode,
        env.proxy,
        f"insert into pg_description values ('{env.s}.scratch'::regclass, 'pg_class'::regclass, 2, '{marker}')",
    )
    refused(o)
    with env.direct() as c:
        assert c.execute(
            "select count(*) from pg_description where description = %s", (marker,)
        ).fetchone() == (0,)


# ================================================================ administration in production


def _filenode(env: Env, rel: str) -> Any:
    with env.direct() as c:
        return c.execute("select pg_relation_filenode(%s::regclass)", (rel,)).fetchone()


@pytest.mark.parametrize("mode", MODES)
def test_terminate_backend_refused(env: Env, mode: str) -> None:
    with env.direct() as other:
        pid = other.info.backend_pid
        out = run(
            mode,
            env.proxy,
            [f"select pg_terminate_backend({pid})", f"select pg_cancel_backend({pid})"],
        )
        for o in out:
            refused(o)
        assert other.execute("select 'survived'").fetchone() == ("survived",)


ADMIN: list[tuple[str, list[str], str | None]] = [
    ("lock-default-mode", ["begin", "lock table {v}", "rollback"], None),
    (
        "lock-access-exclusive",
        ["begin", "lock table {v} in access exclusive mode", "rollback"],
        None,
    ),
    ("vacuum-full", ["vacuum full {v}"], "{v}"),
    ("cluster", ["cluster {v} using victim_pkey"], "{v}"),
    ("reindex-system", ["reindex system {db}"], "pg_catalog.pg_class_oid_index"),
    ("reindex-database", ["reindex database {db}"], "{s}.victim_pkey"),
    ("reload-conf", ["select pg_reload_conf()"], None),
    ("switch-wal", ["select pg_switch_wal()"], None),
    ("stat-reset", ["select pg_stat_reset()"], None),
    ("stat-reset-table", ["select pg_stat_reset_single_table_counters('{v}'::regclass)"], None),
    ("stat-reset-shared", ["select pg_stat_reset_shared('bgwriter')"], None),
]


@pytest.mark.parametrize(
    ("steps", "relation"), [(a[1], a[2]) for a in ADMIN], ids=[a[0] for a in ADMIN]
)
def test_dangerous_administration_is_refused(
    env: Env, victim: str, steps: list[str], relation: str | None
) -> None:
    fmt = {"v": env.v, "s": env.s, "db": env.pg.dbname}
    rel = relation.format(**fmt) if relation else None
    node = _filenode(env, rel) if rel else None
    with env.direct() as c:
        reset_before = c.execute(
            "select stats_reset from pg_stat_database where datname = current_database()"
        ).fetchone()
    out = run("psycopg", env.proxy, [st.format(**fmt) for st in steps])
    assert any(refused_by_proxy(o) for o in out), " | ".join(map(str, out))
    if rel:
        assert _filenode(env, rel) == node, f"{rel} was rewritten"
    with env.direct() as c:
        assert (
            c.execute(
                "select stats_reset from pg_stat_database where datname = current_database()"
            ).fetchone()
            == reset_before
        )
    intact(env)

"""Second round on ``audit.durability: effect`` for reads: a statement judged read-only is
forwarded before its record is durable unless ``Session._effect_durable`` (through
``FunctionSafety.reads_beyond``) finds code it may run.  Each probe freezes the audit
helper (SIGSTOP), sends a statement that runs a writing function where the statement does
not name one, and watches from a direct connection whether the write commits before the
helper runs again.  Technique and fixtures: ``test_effect_freeze_attack``.

Probes that found a hole are kept, marked ``xfail(strict=True, reason="FINDING: ...")``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from test_effect_freeze_attack import (  # type: ignore[import-not-found]
    Env,
    _objects,
    committed_only_once_durable,
    new_id,
    query,
    raw_session,
    types,
)

from support.pg import PgServer
from support.proxy import run_proxy, write_config

pytestmark = pytest.mark.e2e


def _extra(s: str) -> str:
    """Objects the proxy's catalog knows from its start, all reading only then."""
    return f"""
    create function {s}.eq_ro(a int, b int) returns boolean language sql stable as $$ select a = b $$;
    create operator {s}.=~= (leftarg = int, rightarg = int, function = {s}.eq_ro);
    create function {s}.eq_ro2(a int, b int) returns boolean language sql stable as $$ select a = b $$;
    create operator {s}.=~~ (leftarg = int, rightarg = int, function = {s}.eq_ro2);
    create view {s}.op_view as select 1 operator({s}.=~~) 1 as hit;
    create function {s}.positive(i int) returns boolean language sql stable as $$ select i > 0 $$;
    create domain {s}.pos as int check ({s}.positive(value));
    create function {s}.imm_known(i int) returns int language plpgsql immutable as
      $$ begin perform {s}.writer(i); return i; end $$;
    """


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"effect_freeze2_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(_objects(s))
        conn.execute(_extra(s))
    directory = tmp_path_factory.mktemp("effect_freeze2")
    config = write_config(directory, pg_server, extra={"audit": {"durability": "effect"}})
    try:
        with run_proxy(config) as proxy:
            yield Env(proxy, pg_server, s)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop schema if exists {s} cascade")
            conn.execute(f"drop role if exists {s}_r")


def _warm(client: Any, env: Env) -> None:
    """One statement first: the proxy has read its catalog."""
    client.send(query(f"select id from {env.s}.t where id = 0"))
    assert b"E" not in types(client.until_ready())


def _writer_body(env: Env, via: str, returns: str = "true") -> str:
    return f"$$ begin insert into {env.s}.side_log (via) values ('{via}'); return {returns}; end $$"


# --------------------------------------------------------------------------- findings


@pytest.mark.xfail(
    strict=True,
    reason="LIMIT (documented in docs/audit.md): a user function named like a built-in (initcap) with a new argument type, "
    "created since the catalog was read: calls_user_code takes an unqualified built-in name "
    "for the built-in, so 'select initcap(<int>)' goes before its record is durable and its "
    "write commits",
)
def test_user_overload_of_a_builtin_name(env: Env) -> None:
    row_id = new_id()
    with raw_session(env.proxy) as client:
        _warm(client, env)
        client.send(query(f"set search_path = {env.s}, public"))
        assert b"E" not in types(client.until_ready())
        with env.direct() as conn:
            conn.execute(
                f"create function {env.s}.initcap(i int) returns text language plpgsql volatile as "
                f"$$ begin insert into {env.s}.t values (i, 'overload'); return 'x'; end $$"
            )
        probe = committed_only_once_durable(
            env, client, query(f"select initcap({row_id})"), lambda: env.committed(row_id)
        )
    assert env.recorded(f"initcap({row_id})")
    assert not probe.committed_while_frozen, "the write committed before its record was durable"


def test_user_operator_created_since_the_catalog(env: Env) -> None:
    before = env.side_effects("new_op")
    with raw_session(env.proxy) as client:
        _warm(client, env)
        with env.direct() as conn:
            conn.execute(
                f"create function {env.s}.op_new(a int, b int) returns boolean language plpgsql volatile as "
                + _writer_body(env, "new_op")
            )
            conn.execute(
                f"create operator {env.s}.<~~> (leftarg = int, rightarg = int, function = {env.s}.op_new)"
            )
        probe = committed_only_once_durable(
            env,
            client,
            query(f"select 1 operator({env.s}.<~~>) 2 as new_op_probe"),
            lambda: env.side_effects("new_op") > before,
        )
    assert env.recorded("new_op_probe")
    assert not probe.committed_while_frozen, "the write committed before its record was durable"


def test_operator_function_replaced_since_the_catalog(env: Env) -> None:
    before = env.side_effects("op_replaced")
    with raw_session(env.proxy) as client:
        _warm(client, env)
        with env.direct() as conn:
            conn.execute(
                f"create or replace function {env.s}.eq_ro(a int, b int) returns boolean language plpgsql "
                "volatile as " + _writer_body(env, "op_replaced")
            )
        probe = committed_only_once_durable(
            env,
            client,
            query(f"select 3 operator({env.s}.=~=) 4 as op_replaced_probe"),
            lambda: env.side_effects("op_replaced") > before,
        )
    assert env.recorded("op_replaced_probe")
    assert not probe.committed_while_frozen, "the write committed before its record was durable"


def test_view_over_an_operator_whose_function_was_replaced(env: Env) -> None:
    before = env.side_effects("op_view")
    with raw_session(env.proxy) as client:
        _warm(client, env)
        with env.direct() as conn:
            conn.execute(
                f"create or replace function {env.s}.eq_ro2(a int, b int) returns boolean language plpgsql "
                "volatile as " + _writer_body(env, "op_view")
            )
        probe = committed_only_once_durable(
            env,
            client,
            query(f"select hit from {env.s}.op_view"),
            lambda: env.side_effects("op_view") > before,
        )
    assert env.recorded(f"select hit from {env.s}.op_view")
    assert not probe.committed_while_frozen, "the write committed before its record was durable"


def test_domain_check_function_replaced_since_the_catalog(env: Env) -> None:
    before = env.side_effects("domain")
    with raw_session(env.proxy) as client:
        _warm(client, env)
        with env.direct() as conn:
            conn.execute(
                f"create or replace function {env.s}.positive(i int) returns boolean language plpgsql "
                "volatile as " + _writer_body(env, "domain")
            )
        probe = committed_only_once_durable(
            env,
            client,
            query(f"select 5::{env.s}.pos as domain_probe"),
            lambda: env.side_effects("domain") > before,
        )
    assert env.recorded("domain_probe")
    assert not probe.committed_while_frozen, "the write committed before its record was durable"


@pytest.mark.xfail(
    strict=True,
    reason="LIMIT (documented in docs/audit.md): a function a superuser created in pg_catalog: calls_user_code and "
    "FunctionSafety.function skip every pg_catalog-qualified name, so the call goes before "
    "its record is durable and commits its write (needs a superuser to plant)",
)
def test_user_function_planted_in_pg_catalog(env: Env) -> None:
    name = f"dbsentry_probe_{uuid.uuid4().hex[:8]}"
    row_id = new_id()
    with env.direct() as conn:
        conn.execute(
            f"create function pg_catalog.{name}(i int) returns int language plpgsql volatile as "
            f"$$ begin insert into {env.s}.t values (i, 'pg_catalog'); return i; end $$"
        )
    try:
        with raw_session(env.proxy) as client:
            _warm(client, env)
            probe = committed_only_once_durable(
                env,
                client,
                query(f"select pg_catalog.{name}({row_id})"),
                lambda: env.committed(row_id),
            )
        assert env.recorded(f"{name}({row_id})")
        assert not probe.committed_while_frozen, "the write committed before its record was durable"
    finally:
        with env.direct() as conn:
            conn.execute(f"drop function if exists pg_catalog.{name}(int)")


def test_explain_constant_folding_an_immutable_wrapper_waits(env: Env) -> None:
    row_id = new_id()
    _held(
        env,
        f"explain select {env.s}.imm_wrap({row_id})",
        row_id,
        f"create or replace function {env.s}.imm_wrap(i int) returns int language plpgsql immutable as "
        f"$$ begin perform {env.s}.writer(i); return i; end $$",
    )


# --------------------------------------------------------------------------- probes that held


def _held(env: Env, text: str, row_id: int, setup: str | None = None, dbname: str = "prod") -> None:
    with raw_session(env.proxy, dbname) as client:
        _warm(client, env)
        if setup is not None:
            with env.direct() as conn:
                conn.execute(setup)
        probe = committed_only_once_durable(env, client, query(text), lambda: env.committed(row_id))
    assert env.recorded(text)
    assert not probe.committed_while_frozen, "the write committed before its record was durable"


def test_cte_calling_a_replaced_function_waits(env: Env) -> None:
    row_id = new_id()
    _held(
        env,
        f"with x as (select {env.s}.stale_fn({row_id}) as v) select v from x",
        row_id,
        f"create or replace function {env.s}.stale_fn(i int) returns int language sql volatile as "
        f"$$ insert into {env.s}.t values (i, 'cte') returning i $$",
    )


def test_values_calling_a_writer_waits(env: Env) -> None:
    row_id = new_id()
    _held(env, f"values ({env.s}.writer({row_id}))", row_id)


def test_hold_cursor_over_a_writer_waits(env: Env) -> None:
    row_id = new_id()
    """(production refuses it: staging, where it runs)"""
    _held(
        env,
        f"declare c_{row_id} cursor with hold for select {env.s}.writer({row_id})",
        row_id,
        dbname="staging",
    )


def test_function_in_a_new_schema_on_the_search_path_waits(env: Env) -> None:
    """An unqualified name that is no built-in, created since the catalog was read."""
    row_id = new_id()
    _held(
        env,
        f"select {env.s}.fresh_fn({row_id})",
        row_id,
        f"create function {env.s}.fresh_fn(i int) returns int language plpgsql volatile as "
        f"$$ begin insert into {env.s}.t values (i, 'fresh'); return i; end $$",
    )


def test_explain_of_a_known_immutable_wrapper_waits(env: Env) -> None:
    row_id = new_id()
    _held(env, f"explain select {env.s}.imm_known({row_id})", row_id)


def test_sql_prepared_before_the_function_was_replaced_waits(env: Env) -> None:
    row_id = new_id()
    name = f"p_{row_id}"
    with raw_session(env.proxy) as client:
        _warm(client, env)
        client.send(query(f"prepare {name}(int) as select {env.s}.stale_fn($1)"))
        assert b"E" not in types(client.until_ready())
        with env.direct() as conn:
            conn.execute(
                f"create or replace function {env.s}.stale_fn(i int) returns int language sql volatile as "
                f"$$ insert into {env.s}.t values (i, 'prepared') returning i $$"
            )
        text = f"execute {name}({row_id})"
        probe = committed_only_once_durable(env, client, query(text), lambda: env.committed(row_id))
    assert env.recorded(name), env.recorded(str(row_id))
    assert not probe.committed_while_frozen, "the write committed before its record was durable"


def test_cast_through_a_user_function_created_since_the_catalog(env: Env) -> None:
    row_id = new_id()
    s = env.s
    _held(
        env,
        f"select ({row_id})::{s}.boxed_{row_id} as cast_probe",
        row_id,
        f"create type {s}.boxed_{row_id} as (v int);"
        f"create function {s}.box_{row_id}(i int) returns {s}.boxed_{row_id} language plpgsql volatile as "
        f"$$ begin insert into {s}.t values (i, 'cast'); return row(i); end $$;"
        f"create cast (int as {s}.boxed_{row_id}) with function {s}.box_{row_id}(int)",
    )


@pytest.mark.parametrize("runner", ["query_to_xml('{q}', true, true, '')", "ts_stat('{q}')"])
def test_builtin_that_runs_a_query_text_waits(env: Env, runner: str) -> None:
    """Built-ins that run the query text they are given (the writer is named only inside a
    string literal; production refuses them: staging)."""
    row_id = new_id()
    inner = f"select {env.s}.writer({row_id})::text::tsvector"
    _held(env, "select " + runner.format(q=inner.replace("'", "''")), row_id, dbname="staging")

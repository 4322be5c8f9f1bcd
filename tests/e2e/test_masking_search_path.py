"""Masking follows the session's search_path.

Two tables share a name: ``<pub>.things`` is harmless, ``<hr>.things`` holds people's
names and national ids (classified by their comments).  Whatever way the session's path
comes to put ``<hr>`` first (startup options, SET, set_config with a constant or not, a
function that sets it, a statement prepared before the change), an unqualified ``things``
read by a masked identity is masked; ``pii-readers`` see the real values, and the harmless
table read on the default path is never altered.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from support.guard_clients import MODES, Login, Outcome, run
from support.leaks import Secrets
from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

NAME = "Ada Lovelace"
SSN = "536-22-8714"
SECRETS = Secrets([NAME, SSN])
MASKED = Login("eve@example.com", ("eng",))
READER = Login("rita@example.com", ("eng", "pii-readers"))


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    hr: str
    pub: str


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tag = uuid.uuid4().hex[:8]
    hr, pub = f"sp_hr_{tag}", f"sp_pub_{tag}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        c.execute(f"create schema {hr}; create schema {pub}")
        c.execute(f"create table {pub}.things (id int, name text, code text)")
        c.execute(f"insert into {pub}.things values (1, 'Widget Pro', 'W-100')")
        c.execute(f"create table {hr}.things (id int, name text, code text)")
        c.execute(f"comment on column {hr}.things.name is 'pii:person_name'")
        c.execute(f"comment on column {hr}.things.code is 'pii:national_id'")
        c.execute(f"insert into {hr}.things values (1, %s, %s)", (NAME, SSN))
        c.execute(
            f"create function {pub}.go_hr() returns int language plpgsql as "
            f"$$ begin perform set_config('search_path', '{hr}, {pub}', false); return 1; end $$"
        )
        c.execute(
            f"create function {pub}.go_hr_sql() returns text language sql as "
            f"$$ select set_config('search_path', '{hr}, {pub}', false) $$"
        )
        c.execute(
            f"create function {pub}.staff_name() returns text language sql stable "
            f"set search_path = {hr} as $$ select name from things limit 1 $$"
        )
        c.execute(f"create function {pub}.hr_name() returns text language sql as $$ select 'x'::text $$")
        c.execute(f"create function {hr}.hr_name() returns text language sql as $$ select name from {hr}.things $$")
    config = write_config(tmp_path_factory.mktemp("search_path"), pg_server)
    try:
        with run_proxy(config) as proxy:
            yield Env(proxy, hr, pub)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"drop schema {hr} cascade; drop schema {pub} cascade")


# Expressions hide the table from RowDescription: only lineage can mask them.
READS = ["select upper(name) as n, code || '' as c from things", "select * from things", "select hr_name()"]


def _blob(out: list[Outcome]) -> str:
    return " ".join(f"{o.rows} {o.message}" for o in out)


def _ways(e: Env) -> dict[str, tuple[list[str], str | None]]:
    """Statements that make ``things`` mean <hr>.things, and startup options doing so."""
    path = f"{e.hr}, {e.pub}"
    return {
        "set": ([f"set search_path = {path}"], None),
        "set-to": ([f"set search_path to {e.hr}, {e.pub}"], None),
        "set-quoted": ([f"set search_path = '{e.hr}', '{e.pub}'"], None),
        "set-config": ([f"select set_config('search_path', '{path}', false)"], None),
        "set-config-computed": ([f"select set_config('search_path', concat('{e.hr}', ', ', '{e.pub}'), false)"], None),
        "set-config-subquery": ([f"select set_config('search_path', (select '{path}'), false)"], None),
        "block": (["begin", f"set local search_path = {path}"], None),
        "function": ([f"set search_path = {e.pub}", f"select {e.pub}.go_hr()"], None),
        "startup": ([], f"-c search_path={e.hr},{e.pub}"),
        "sql-function": ([f"set search_path = {e.pub}", f"select {e.pub}.go_hr_sql()"], None),
        # outside production: a DO block, an UPDATE of pg_settings
        "do": ([f"do $$ begin perform set_config('search_path', '{path}', false); end $$"], None),
        "pg-settings": ([f"update pg_settings set setting = '{path}' where name = 'search_path'"], None),
    }


STAGING = {"do", "pg-settings"}


WAYS = [
    "set",
    "set-to",
    "set-quoted",
    "set-config",
    "set-config-computed",
    "set-config-subquery",
    "block",
    "function",
    "startup",
    "sql-function",
    "do",
    "pg-settings",
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("way", WAYS)
def test_unqualified_names_follow_the_path(env: Env, mode: str, way: str) -> None:
    setup, options = _ways(env)[way]
    db = "staging" if way in STAGING else "prod"
    masked = run(mode, env.proxy, [*setup, *READS], Login(MASKED.identity, MASKED.groups, dbname=db, options=options))
    if all(o.ok for o in masked[: len(setup)]):
        for o in masked[len(setup) :]:
            assert o.ok, str(o)
    else:  # refused (a path computed at run time, in production): then nothing to read
        assert any(o.sqlstate == "42501" for o in masked[: len(setup)]), _blob(masked)
    SECRETS.assert_no_leak(_blob(masked), context=f"({way}, {mode})")

    if not all(o.ok for o in masked[: len(setup)]):
        return
    real = run(mode, env.proxy, [*setup, *READS], Login(READER.identity, READER.groups, dbname=db, options=options))
    blob = _blob(real)
    assert "adalovelace" in blob.lower().replace(" ", ""), f"pii-readers see real values: {blob[:300]}"


@pytest.mark.parametrize("mode", ["psql", "psycopg", "asyncpg"])
def test_statement_prepared_before_the_path_changed(env: Env, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            f"set search_path = {env.pub}",
            "prepare p as select upper(name) as n, code || '' as c from things",
            "execute p",
            f"set search_path = {env.hr}, {env.pub}",
            "execute p",
        ],
        MASKED,
    )
    assert out[2].ok and "WIDGET PRO" in str(out[2].rows), str(out[2])
    assert out[4].ok, str(out[4])
    SECRETS.assert_no_leak(_blob(out), context=f"({mode})")


@pytest.mark.parametrize("mode", MODES)
def test_the_harmless_table_is_not_altered(env: Env, mode: str) -> None:
    (o,) = run(mode, env.proxy, [f"select upper(name) as n, code || '' as c from {env.pub}.things"], MASKED)
    assert o.ok and o.rows == [("WIDGET PRO", "W-100")], str(o)
    out = run(mode, env.proxy, [f"set search_path = {env.pub}", "select upper(name) as n, code from things"], MASKED)
    assert out[1].ok and out[1].rows == [("WIDGET PRO", "W-100")], str(out[1])


@pytest.mark.parametrize("mode", MODES)
def test_a_functions_own_search_path_resolves_its_body(env: Env, mode: str) -> None:
    """``SET search_path`` on the function: its body reads <hr>.things, whatever the
    caller's path says."""
    out = run(mode, env.proxy, [f"set search_path = {env.pub}", f"select {env.pub}.staff_name() as n"], MASKED)
    assert out[1].ok, str(out[1])
    SECRETS.assert_no_leak(_blob(out), context=mode)
    real = run(mode, env.proxy, [f"select {env.pub}.staff_name() as n"], READER)
    assert real[0].rows == [(NAME,)], str(real[0])

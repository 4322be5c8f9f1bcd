"""Prepared statements keep the mask plan of the statement the server really has.

A PREPARE or Parse that fails (a duplicate name) leaves the old statement in place, so its
old plan must stay; a DEALLOCATE followed by a new PREPARE of the same name gets the new
statement's plan, so harmless columns are not masked by the old one's.
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

EMAIL = "ada.lovelace@example.com"
SECRETS = Secrets([EMAIL])
MASKED = Login("eve@example.com", ("eng",))


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    t: str


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"mp_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        c.execute(f"create schema {s}; create table {s}.customers (id int, email text, city text)")
        c.execute(f"insert into {s}.customers values (1, %s, 'London')", (EMAIL,))
    try:
        with run_proxy(write_config(tmp_path_factory.mktemp("prepared"), pg_server)) as proxy:
            yield Env(proxy, f"{s}.customers")
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"drop schema {s} cascade")


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_prepare_keeps_the_old_plan(env: Env, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            f"prepare p as select email, city from {env.t}",
            f"prepare p as select city, email from {env.t}",  # fails: p exists
            "execute p",
        ],
        MASKED,
    )
    assert out[1].sqlstate == "42P05", str(out[1])
    assert out[2].ok and out[2].rows and out[2].rows[0][1] == "London", str(out[2])
    SECRETS.assert_no_leak(str(out[2].rows), context=mode)


@pytest.mark.parametrize("mode", MODES)
def test_a_failed_prepare_in_a_block_keeps_the_old_plan(env: Env, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            f"prepare p as select email, city from {env.t}",
            "begin",
            "select 1/0",
            "prepare p2 as select 1",
            "rollback",
            "deallocate p2",
            "execute p",
        ],
        MASKED,
    )
    assert out[-1].ok and out[-1].rows[0][1] == "London", str(out[-1])
    SECRETS.assert_no_leak(str(out[-1].rows), context=mode)


@pytest.mark.parametrize("mode", MODES)
def test_deallocate_then_prepare_gets_the_new_plan(env: Env, mode: str) -> None:
    out = run(
        mode,
        env.proxy,
        [
            f"prepare p as select email, city from {env.t}",
            "execute p",
            "deallocate p",
            f"prepare p as select city, id::text as n from {env.t}",
            "execute p",
        ],
        MASKED,
    )
    SECRETS.assert_no_leak(str(out[1].rows), context=mode)
    assert out[4].ok and out[4].rows == [("London", "1")], f"harmless columns are left alone: {out[4]}"

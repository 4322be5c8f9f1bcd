"""Functions the lineage cannot see into (PL/pgSQL) that return classified values.

People get their results masked by value detection; agents in production may not call
them at all, unless the policy vouches for the function (``baseline.safe_functions``),
and then its results are still masked by value detection.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from support.guard_clients import MODES, Login, run
from support.leaks import Secrets
from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

EMAIL = "ada.lovelace@example.com"
SSN = "536-22-8714"
SECRETS = Secrets([EMAIL, SSN])
PERSON = Login("eve@example.com", ("eng",))
AGENT = Login("bot@example.com", ("eng",), agent=True)
READER = Login("rita@example.com", ("eng", "pii-readers"))


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    s: str


def _policy(path: Path, s: str) -> Path:
    path.write_text(f"version: 1\nbaseline:\n  safe_functions: [{s}.get_email]\n")
    return path


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"mo_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        c.execute(f"create schema {s}; create table {s}.customers (id int, email text, ssn text)")
        c.execute(f"insert into {s}.customers values (1, %s, %s)", (EMAIL, SSN))
        for fn, col in (("get_email", "email"), ("get_ssn", "ssn")):
            c.execute(
                f"create function {s}.{fn}(int) returns text language plpgsql stable as "
                f"$$ begin return (select {col} from {s}.customers where id = $1); end $$"
            )
    directory = tmp_path_factory.mktemp("opaque")
    config = write_config(directory, pg_server, extra={"policy": str(_policy(directory / "policy.yaml", s))})
    try:
        with run_proxy(config) as proxy:
            yield Env(proxy, s)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"drop schema {s} cascade")


@pytest.mark.parametrize("mode", MODES)
def test_people_get_opaque_results_masked_by_value(env: Env, mode: str) -> None:
    out = run(mode, env.proxy, [f"select {env.s}.get_email(1)", f"select {env.s}.get_ssn(1) as x, 'plain' as y"], PERSON)
    for o in out:
        assert o.ok, str(o)
    assert out[1].rows[0][1] == "plain", str(out[1])
    SECRETS.assert_no_leak([o.rows for o in out], context=mode)
    real = run(mode, env.proxy, [f"select {env.s}.get_email(1)"], READER)
    assert real[0].rows == [(EMAIL,)], str(real[0])


@pytest.mark.parametrize("mode", MODES)
def test_agents_may_not_call_them_unless_vouched_for(env: Env, mode: str) -> None:
    refused, vouched = run(mode, env.proxy, [f"select {env.s}.get_ssn(1)", f"select {env.s}.get_email(1)"], AGENT)
    assert refused.sqlstate == "42501", str(refused)
    assert vouched.ok, f"the policy vouches for get_email: {vouched}"
    SECRETS.assert_no_leak(refused.rows, refused.message, vouched.rows, context=mode)

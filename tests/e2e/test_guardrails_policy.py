"""Policy as code, end to end: a policy file enforced by a running proxy, reloaded on SIGHUP
and on file change without dropping sessions, an invalid file rejected, and the
``dbsentry policy check / explain / test`` commands."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from support.clock import ENTRY as CLOCK_ENTRY
from support.clock import ENV as CLOCK_ENV
from support.clock import set_clock
from support.pg import PgServer
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

CASES_DIR = Path(__file__).parent / "policy_cases"
CONTRACTOR = ("carol@example.com", ("contractors",))
ENGINEER = ("alice@example.com", ("eng",))


def policy_yaml(table: str, group: str, message: str, rule: str = "no-secrets") -> str:
    return (
        "version: 1\n"
        "rules:\n"
        f"  - name: {rule}\n"
        "    description: secrets are not for everyone\n"
        f"    match: {{groups: [{group}], tables: [{table}], commands: [SELECT]}}\n"
        "    action: deny\n"
        f"    message: {message}\n"
    )


INVALID_POLICY = (
    "version: 1\n"
    "rules:\n"
    "  - name: broken\n"
    "    match: {groups: [eng]}\n"
    "    action: block\n"  # line 5: not an action
)


@pytest.fixture
def direct(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        yield c


@pytest.fixture
def secrets(direct: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"secrets_tbl_{uuid.uuid4().hex[:10]}"
    direct.execute(f"create table {name} (id int primary key, codename text)")
    direct.execute(f"insert into {name} values (1, 'hunter2')")
    yield name
    direct.execute(f"drop table if exists {name}")


@pytest.fixture
def policy_file(tmp_path: Path, secrets: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(policy_yaml(secrets, "contractors", "contractors may not read secrets"))
    return path


@pytest.fixture
def policy_proxy(pg_server: PgServer, tmp_path: Path, policy_file: Path) -> Iterator[RunningProxy]:
    with run_proxy(
        write_config(tmp_path, pg_server, extra={"policy": str(policy_file)})
    ) as running:
        yield running


def connect(proxy: RunningProxy, who: tuple[str, tuple[str, ...]]) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(who[0], groups=who[1]), autocommit=True)


def read_secret(conn: psycopg.Connection[Any], table: str) -> str | None:
    """The secret, or None when dbsentry refused (and the session is still usable)."""
    try:
        row = conn.execute(f"select codename from {table} where id = 1").fetchone()
    except errors.InsufficientPrivilege as err:
        assert (err.diag.message_primary or "").startswith("dbsentry:")
        assert conn.execute("select 1").fetchone() == (1,)
        return None
    assert row is not None
    return str(row[0])


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def rewrite_unseen(path: Path, text: str) -> None:
    """Rewrite with the same size and modification time, so only SIGHUP can notice."""
    old = path.stat()
    padded = text + "#" * (old.st_size - len(text.encode()) - 1) + "\n"
    assert len(padded.encode()) == old.st_size, "new policy text must not be longer than the old"
    path.write_text(padded)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))


# ---------------------------------------------------------------- enforcement


def test_custom_rule_enforced(policy_proxy: RunningProxy, secrets: str) -> None:
    with connect(policy_proxy, CONTRACTOR) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            conn.execute(f"SELECT * FROM {secrets}")
        assert caught.value.diag.sqlstate == "42501"
        assert (
            caught.value.diag.message_primary
            == "dbsentry: contractors may not read secrets (rule: no-secrets)"
        )
        # Disguises do not help: the facts come from PostgreSQL's parser.
        for disguised in (
            f'select/**/codename from public."{secrets}"',
            f"select 1; select * from {secrets.upper()}",
            f"with s as (select * from {secrets}) select count(*) from s",
            f"select (select codename from {secrets} limit 1)",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(disguised)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"select codename from {secrets} where id = %s", (1,))
        assert conn.execute("select 'other tables are fine'").fetchone() == (
            "other tables are fine",
        )
    with connect(policy_proxy, ENGINEER) as conn:
        assert read_secret(conn, secrets) == "hunter2"


def test_reload_on_sighup_keeps_sessions(
    policy_proxy: RunningProxy, policy_file: Path, secrets: str
) -> None:
    with (
        connect(policy_proxy, CONTRACTOR) as contractor,
        connect(policy_proxy, ENGINEER) as engineer,
    ):
        pids = (contractor.info.backend_pid, engineer.info.backend_pid)
        assert read_secret(contractor, secrets) is None
        assert read_secret(engineer, secrets) == "hunter2"

        rewrite_unseen(
            policy_file, policy_yaml(secrets, "eng", "eng lost access", rule="no-secrets-v2")
        )
        time.sleep(3)  # longer than the file watcher's poll: it must not have noticed
        assert read_secret(engineer, secrets) == "hunter2"

        policy_proxy.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: read_secret(engineer, secrets) is None, timeout=5)
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            engineer.execute(f"select * from {secrets}")
        assert (
            caught.value.diag.message_primary == "dbsentry: eng lost access (rule: no-secrets-v2)"
        )
        assert read_secret(contractor, secrets) == "hunter2"
        # The same sessions, never dropped.
        assert (contractor.info.backend_pid, engineer.info.backend_pid) == pids
    assert "policy reloaded" in policy_proxy.log_text()


def test_reload_on_file_change_keeps_sessions(
    policy_proxy: RunningProxy, policy_file: Path, secrets: str
) -> None:
    with (
        connect(policy_proxy, CONTRACTOR) as contractor,
        connect(policy_proxy, ENGINEER) as engineer,
    ):
        pid = engineer.info.backend_pid
        assert read_secret(engineer, secrets) == "hunter2"
        policy_file.write_text(policy_yaml(secrets, "eng", "eng lost access by file change"))
        time.sleep(3)
        assert wait_until(lambda: read_secret(engineer, secrets) is None, timeout=5)
        assert read_secret(contractor, secrets) == "hunter2"
        assert engineer.info.backend_pid == pid


@pytest.mark.parametrize("trigger", ["sighup", "file-change"])
def test_invalid_policy_keeps_the_old_one(
    policy_proxy: RunningProxy, policy_file: Path, secrets: str, trigger: str
) -> None:
    with (
        connect(policy_proxy, CONTRACTOR) as contractor,
        connect(policy_proxy, ENGINEER) as engineer,
    ):
        assert read_secret(contractor, secrets) is None
        policy_file.write_text(INVALID_POLICY)
        if trigger == "sighup":
            policy_proxy.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "policy reload rejected" in policy_proxy.log_text(), timeout=6)
        log = policy_proxy.log_text()
        assert f"{policy_file}:5:" in log, log[-2000:]
        # The old policy is still in force, in the open sessions and in new ones.
        assert read_secret(contractor, secrets) is None
        assert read_secret(engineer, secrets) == "hunter2"
        with connect(policy_proxy, CONTRACTOR) as fresh:
            assert read_secret(fresh, secrets) is None
        assert policy_proxy.alive()
        # A valid policy after the invalid one is picked up again.
        policy_file.write_text(policy_yaml(secrets, "eng", "fixed"))
        policy_proxy.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: read_secret(engineer, secrets) is None, timeout=5)


def test_invalid_policy_at_startup_refuses_to_start(pg_server: PgServer, tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(INVALID_POLICY)
    config = write_config(tmp_path, pg_server, extra={"policy": str(path)})
    with pytest.raises(RuntimeError, match="invalid policy; not starting"), run_proxy(config):
        pass


def test_extended_protocol_statement_rechecked_after_reload(
    policy_proxy: RunningProxy, policy_file: Path, secrets: str
) -> None:
    """A statement prepared (Parse) under the old policy is judged by the new one at Bind."""
    with connect(policy_proxy, ENGINEER) as conn:
        query = f"select codename from {secrets} where id = %s"
        for _ in range(3):
            assert conn.execute(query, (1,), prepare=True).fetchone() == ("hunter2",)
        policy_file.write_text(policy_yaml(secrets, "eng", "eng lost access"))
        policy_proxy.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: read_secret(conn, secrets) is None, timeout=5)
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            conn.execute(query, (1,), prepare=True)
        assert "eng lost access" in (caught.value.diag.message_primary or "")
        assert conn.execute("select %s::int", (5,), prepare=True).fetchone() == (5,)


def test_sql_execute_rechecked_after_reload(
    policy_proxy: RunningProxy, policy_file: Path, secrets: str
) -> None:
    """SQL-level PREPARE under the old policy, EXECUTE under the new one.

    docs/policy.md: "EXECUTE name is evaluated by the session against the facts of the
    statement it prepared."
    """
    with connect(policy_proxy, ENGINEER) as conn:
        conn.execute(f"prepare g_secret as select codename from {secrets} where id = 1")
        assert conn.execute("execute g_secret").fetchone() == ("hunter2",)
        policy_file.write_text(policy_yaml(secrets, "eng", "eng lost access"))
        policy_proxy.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: read_secret(conn, secrets) is None, timeout=5)
        with pytest.raises(errors.InsufficientPrivilege) as caught:
            conn.execute("execute g_secret")
        assert "eng lost access" in (caught.value.diag.message_primary or "")


# ---------------------------------------------------------------- the policy CLI


@pytest.fixture
def cli_config(pg_server: PgServer, tmp_path: Path, policy_file: Path) -> Path:
    return write_config(tmp_path, pg_server, extra={"policy": str(policy_file)})


def test_policy_check(cli_config: Path, policy_file: Path) -> None:
    ok = dbsentry_cli("policy", "check", config=cli_config, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"{policy_file}: ok, 1 rules, ")

    policy_file.write_text(INVALID_POLICY)
    bad = dbsentry_cli("policy", "check", config=cli_config, check=False)
    assert bad.returncode != 0
    assert bad.stderr.startswith(f"{policy_file}:5: "), bad.stderr
    assert "action" in bad.stderr

    policy_file.write_text(
        "version: 1\nrules:\n  - name: x\n    match: {tabels: [t]}\n    action: deny\n"
    )
    typo = dbsentry_cli("policy", "check", config=cli_config, check=False)
    assert typo.returncode != 0
    assert typo.stderr.startswith(f"{policy_file}:4: "), typo.stderr

    policy_file.write_text("version: 1\nrules: [\n")
    yaml_error = dbsentry_cli("policy", "check", config=cli_config, check=False)
    assert yaml_error.returncode != 0
    assert yaml_error.stderr.startswith(f"{policy_file}:"), yaml_error.stderr


def test_policy_explain(cli_config: Path, secrets: str) -> None:
    done = dbsentry_cli(
        "policy",
        "explain",
        "--identity",
        "carol@example.com",
        "--group",
        "contractors",
        "--connection",
        "prod",
        f"select 1; SELECT/**/secret FROM {secrets}",
        config=cli_config,
    )
    out = json.loads(done.stdout)
    assert out["environment"] == "production"
    assert out["decision"]["action"] == "deny"
    assert out["decision"]["rules"] == ["no-secrets"]
    assert out["decision"]["message"] == "contractors may not read secrets"
    assert [s["decision"]["action"] for s in out["statements"]] == ["allow", "deny"]
    second = out["statements"][1]["facts"]
    assert second["command"] == "SELECT"
    assert any(t.endswith(secrets) for t in second["tables_read"])

    agent = dbsentry_cli(
        "policy",
        "explain",
        "--identity",
        "bot",
        "--agent",
        "--connection",
        "prod",
        f"WITH d AS (DELETE FROM {secrets} WHERE id = 1 RETURNING *) SELECT * FROM d",
        config=cli_config,
    )
    out = json.loads(agent.stdout)
    assert out["decision"]["action"] == "deny"
    assert "baseline.prod.agent-read-only" in out["decision"]["rules"]
    assert "DELETE" in out["statements"][0]["facts"]["commands"]

    staging = dbsentry_cli(
        "policy",
        "explain",
        "--identity",
        "alice",
        "--connection",
        "staging",
        "TRUNCATE t",
        config=cli_config,
    )
    assert json.loads(staging.stdout)["decision"]["action"] == "allow"


def _cases_yaml(table: str, expect_contractor: str) -> str:
    return (
        "cases:\n"
        "  - name: contractors may not read secrets\n"
        f"    sql: select * from {table}\n"
        "    identity: carol@example.com\n"
        "    groups: [contractors]\n"
        "    connection: prod\n"
        f"    expect: {expect_contractor}\n"
        "    expect_rules: [no-secrets]\n"
        "  - name: engineers may\n"
        f"    sql: select * from {table}\n"
        "    identity: alice@example.com\n"
        "    groups: [eng]\n"
        "    connection: prod\n"
        "    expect: allow\n"
    )


def test_policy_test_passing_and_failing(cli_config: Path, tmp_path: Path, secrets: str) -> None:
    passing = tmp_path / "pass.yaml"
    passing.write_text(_cases_yaml(secrets, "deny"))
    done = dbsentry_cli("policy", "test", str(passing), config=cli_config, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "2/2 passed"

    failing = tmp_path / "fail.yaml"
    failing.write_text(_cases_yaml(secrets, "allow"))
    done = dbsentry_cli("policy", "test", str(failing), config=cli_config, check=False)
    assert done.returncode == 1
    assert (
        "FAIL  contractors may not read secrets: expected allow, got deny by no-secrets"
        in done.stdout
    )
    assert done.stdout.splitlines()[-1] == "1/2 passed"


def test_policy_test_baseline_table(pg_server: PgServer, tmp_path: Path) -> None:
    """The shipped case table of obfuscations passes against the baseline alone."""
    config = write_config(tmp_path, pg_server)
    done = dbsentry_cli(
        "policy", "test", str(CASES_DIR / "guardrails_baseline.yaml"), config=config, check=False
    )
    assert done.returncode == 0, done.stdout
    assert "FAIL" not in done.stdout and "ERROR" not in done.stdout


def test_prepared_statements_rechecked_when_a_time_window_opens(
    pg_server: PgServer, tmp_path: Path, secrets: str
) -> None:
    """A deny rule with a time window: statements prepared before it opens are judged at
    execution, like any other statement (no policy reload involved).

    The proxy's policy clock is the test's (support/clock.py): a minute before the window,
    then inside it, where the wall clock would take up to a minute to get there.
    """
    start = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    end = start + timedelta(minutes=1)
    clock = tmp_path / "clock"
    set_clock(clock, start - timedelta(seconds=30))
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\n"
        "rules:\n"
        "  - name: secrets-closed\n"
        f"    match: {{tables: [{secrets}], commands: [SELECT], "
        f'time: {{hours: "{start:%H:%M}-{end:%H:%M}", timezone: UTC}}}}\n'
        "    action: deny\n"
        "    message: secrets are closed now\n"
    )
    query = f"select codename from {secrets} where id = %s"
    config = write_config(tmp_path, pg_server, extra={"policy": str(path)})
    with (
        run_proxy(config, env={CLOCK_ENV: str(clock)}, entry=CLOCK_ENTRY) as running,
        connect(running, ENGINEER) as conn,
    ):
        assert conn.execute(query, (1,), prepare=True).fetchone() == ("hunter2",)
        conn.execute(f"prepare g_closed as select codename from {secrets} where id = 1")
        assert conn.execute("execute g_closed").fetchone() == ("hunter2",)
        set_clock(clock, start + timedelta(seconds=1))

        def outcome(
            sql: str, params: tuple[Any, ...] | None = None, prepare: bool | None = None
        ) -> str:
            try:
                conn.execute(sql, params, prepare=prepare)
            except errors.InsufficientPrivilege as err:
                assert "secrets are closed now" in (err.diag.message_primary or "")
                return "denied"
            return "allowed"

        got = {
            "new statement": outcome(f"select codename from {secrets} where id = 1"),
            "extended protocol, prepared before": outcome(query, (1,), prepare=True),
            "SQL EXECUTE, prepared before": outcome("execute g_closed"),
        }
    assert got == dict.fromkeys(got, "denied")

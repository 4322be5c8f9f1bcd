"""The audit log's disk fills up under a running proxy: fail closed, recover by itself.

The log lives on a small tmpfs that the test fills up (a real ENOSPC from ``write``).
Statements must then be refused with SQLSTATE 58000 without running; once space is freed,
statements run again by themselves, without restarting anything, and the trail records the
outage.  The search index in PostgreSQL (a schema of its own, written by a role of its own)
must show what the SQLite index shows.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql

from dbsentry.audit.logwriter import ALLOCATE_AHEAD
from support.audit import raw_records, search, verify
from support.disk import fill, small_disk
from support.pg import PgServer
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

UNAVAILABLE = "the audit trail is unavailable"
RECOVERY_SECONDS = 15
EARLY = 10_000  # ids of the statements run after the disk filled, before the first refusal


@contextlib.contextmanager
def make_table(pg_server: PgServer) -> Iterator[str]:
    name = f"audit_unavail_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"create table {name} (id int primary key)")
    try:
        yield name
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
            direct.execute(f"drop table if exists {name}")


def stored_ids(pg_server: PgServer, table: str) -> set[int]:
    with psycopg.connect(pg_server.dsn()) as direct:
        return {r[0] for r in direct.execute(f"select id from {table}")}


def assert_refused(
    conn: psycopg.Connection[Any], statement: str, params: tuple[Any, ...] | None = None
) -> None:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(statement, params)
    assert info.value.sqlstate == "58000", info.value
    assert UNAVAILABLE in str(info.value)


def insert_until_it_runs(conn: psycopg.Connection[Any], table: str, first_id: int) -> int:
    """Insert first_id, first_id + 1, ... until one is accepted; returns its id."""
    t0 = time.monotonic()
    row_id = first_id
    while True:
        try:
            conn.execute(f"insert into {table} values (%t)", (row_id,))
            return row_id
        except psycopg.Error as err:
            assert err.sqlstate == "58000", err
            assert time.monotonic() - t0 < RECOVERY_SECONDS, (
                f"no recovery after {RECOVERY_SECONDS}s: {err}"
            )
            row_id += 1
            time.sleep(0.2)


@dataclass
class Outage:
    """What a proxy left behind after its log's disk filled up and was freed."""

    table: str
    config: Path
    stored: set[int]  # ids in the table, read directly
    accepted: set[int]  # ids whose INSERT the proxy accepted
    refused: set[int]  # ids whose INSERT was refused with 58000
    rows: list[dict[str, Any]]  # audit search --json
    raw: list[dict[str, Any]]  # audit export --raw
    verified: subprocess.CompletedProcess[str]

    def recovered_events(self) -> list[dict[str, Any]]:
        return [
            i["record"]
            for i in self.raw
            if i["record"]["type"] == "system" and i["record"]["event"] == "audit_store_recovered"
        ]


@pytest.fixture(scope="module")
def outage(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    directory = tmp_path_factory.mktemp("outage")
    with small_disk(directory / "log") as disk, make_table(pg_server) as table:
        config = write_config(directory, pg_server, extra={"audit": {"log_dir": str(disk)}})
        refused = {2, 3, 4, 5}
        with run_proxy(config) as proxy, psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute(f"insert into {table} values (1)")
            assert stored_ids(pg_server, table) == {1}
            filler = fill(disk)
            # The log has room for records still in the space it allocated ahead of its end
            # (ALLOCATE_AHEAD, written with zeros before the disk filled): they are recorded
            # and run; the first that does not fit is refused.
            early = set()
            for row_id in range(EARLY, EARLY + 6000):
                try:
                    conn.execute(f"insert into {table} values ({row_id})")
                    early.add(row_id)
                except psycopg.Error as err:
                    assert err.sqlstate == "58000" and UNAVAILABLE in str(err), err
                    refused.add(row_id)
                    break
            assert refused - {2, 3, 4, 5}, f"{len(early)} statements recorded on a full disk, none refused"
            assert len(early) * 300 < ALLOCATE_AHEAD, "more was recorded than the space allocated ahead holds"
            t0 = time.monotonic()
            assert_refused(conn, f"insert into {table} values (2)")
            assert time.monotonic() - t0 < 2, "a full disk must be refused at once"
            assert_refused(conn, f"insert into {table} values (%t)", (3,))  # extended protocol
            assert_refused(conn, "select 1")
            # A new session is refused the same way.
            with psycopg.connect(proxy.dsn("bob@example.com"), autocommit=True) as other:
                assert_refused(other, f"insert into {table} values (4)")
                assert_refused(other, f"insert into {table} values (5); select 1")
            assert stored_ids(pg_server, table) == {1, *early}, "a refused statement ran"
            assert proxy.alive()
            filler.unlink()
            # Space is back: statements run again, on the same session and new ones.
            row_id = insert_until_it_runs(conn, table, 100)
            refused |= set(range(100, row_id))
            with psycopg.connect(proxy.dsn("bob@example.com"), autocommit=True) as other:
                other.execute(f"insert into {table} values (6)")
        yield Outage(
            table,
            config,
            stored_ids(pg_server, table),
            {1, row_id, 6, *early},
            refused,
            search(config),
            raw_records(config),
            verify(config),
        )


@pytest.mark.serial  # the outage fixture times the proxy
def test_refused_statements_did_not_run_and_accepted_ones_did(outage: Outage) -> None:
    assert outage.stored == outage.accepted


@pytest.mark.serial  # the outage fixture times the proxy
def test_accepted_statements_are_recorded(outage: Outage) -> None:
    t = outage.table
    ran = [r for r in outage.rows if r["rows"] is not None]
    early = sorted(i for i in outage.accepted if i >= EARLY)
    assert sorted((r["statement"], r["params"]) for r in ran) == sorted(
        [
            (f"insert into {t} values (1)", None),
            *((f"insert into {t} values ({i})", None) for i in early),
            (f"insert into {t} values ($1)", [str(max(i for i in outage.accepted if 100 <= i < 1000))]),
            (f"insert into {t} values (6)", None),
        ]
    )
    assert all(r["rows"] == 1 and r["error"] is None for r in ran)


@pytest.mark.serial  # the outage fixture times the proxy
def test_refused_statements_are_not_recorded_as_run(outage: Outage) -> None:
    """A statement the proxy refused may be missing (the store was down) or recorded, but
    never with an outcome that says it ran."""
    for row in outage.rows:
        if row["rows"] is None:
            assert row["error"], {k: row[k] for k in ("statement", "params", "rows", "error", "sqlstate", "decision")}


@pytest.mark.serial  # the outage fixture times the proxy
def test_chain_verifies_after_outage(outage: Outage) -> None:
    assert outage.verified.returncode == 0, outage.verified.stdout + outage.verified.stderr
    assert "chain: INTACT" in outage.verified.stdout


@pytest.mark.serial  # the outage fixture times the proxy
def test_outage_is_recorded(outage: Outage) -> None:
    """The trail says that it was unavailable, since when, why, and how much it refused."""
    events = outage.recovered_events()
    assert len(events) == 1, events
    detail = events[0]["detail"]
    assert detail["error"] and detail["outage_started"]
    assert detail["refused_appends"] >= 4


@pytest.mark.serial  # the outage fixture times the proxy
def test_every_completion_has_its_statement(outage: Outage) -> None:
    statements = {i["record"]["id"] for i in outage.raw if i["record"]["type"] == "statement"}
    orphans = [
        i["record"]
        for i in outage.raw
        if i["record"]["type"] == "completion" and i["record"]["statement_id"] not in statements
    ]
    assert not orphans, (
        f"{len(orphans)} completion records name statements the trail does not have: {orphans}"
    )


@pytest.mark.serial  # the outage fixture times the proxy
def test_refused_statement_leaves_no_record(outage: Outage) -> None:
    """The write of a refused statement's record failed: the trail does not claim it."""
    late = [r for r in outage.rows if r["statement"] == f"insert into {outage.table} values (2)"]
    assert late == []


@pytest.mark.serial  # the outage fixture times the proxy
def test_log_continues_in_a_new_segment(outage: Outage) -> None:
    log_dir = next(p for p in (outage.config.parent / "log").iterdir() if p.is_dir())
    assert len(list(log_dir.glob("*.seg"))) == 2


@dataclass(frozen=True)
class AuditRole:
    role: str
    schema: str
    dsn: str
    admin: psycopg.Connection[Any]  # superuser, autocommit

    def audit_config(self, **more: Any) -> dict[str, Any]:
        return {"audit": {"store": "postgres", "dsn": self.dsn, "pg_schema": self.schema, **more}}

    def set_login(self, allowed: bool) -> None:
        action = "login" if allowed else "nologin"
        self.admin.execute(sql.SQL("alter role {} " + action).format(sql.Identifier(self.role)))

    def terminate_sessions(self) -> None:
        self.admin.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
            (self.role,),
        )


@contextlib.contextmanager
def make_audit_role(pg_server: PgServer) -> Iterator[AuditRole]:
    """A login role that may create schemas in the test database, dropped with its schema."""
    suffix = uuid.uuid4().hex[:10]
    role, schema = f"audit_{suffix}", f"dbsentry_audit_{suffix}"
    admin = psycopg.connect(pg_server.dsn(), autocommit=True)
    admin.execute(sql.SQL("create role {} login").format(sql.Identifier(role)))
    admin.execute(
        sql.SQL("grant create on database {} to {}").format(
            sql.Identifier(pg_server.dbname), sql.Identifier(role)
        )
    )
    audit_role = AuditRole(role, schema, pg_server.dsn(user=role, password=None), admin)
    try:
        yield audit_role
    finally:
        audit_role.set_login(True)
        audit_role.terminate_sessions()
        admin.execute(sql.SQL("drop schema if exists {} cascade").format(sql.Identifier(schema)))
        admin.execute(sql.SQL("drop owned by {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("drop role {}").format(sql.Identifier(role)))
        admin.close()


@pytest.fixture
def audit_role(pg_server: PgServer) -> Iterator[AuditRole]:
    with make_audit_role(pg_server) as role:
        yield role


def run_mixed_traffic(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
        conn.execute("select %t::int * 2", (21,))
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("drop table pg_store_nothing")
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 1/0")
    with psycopg.connect(
        proxy.dsn("bot@example.com", groups=(), agent=True), autocommit=True
    ) as conn:
        conn.execute("select 'agent was here'")


def test_postgres_store_same_as_sqlite(
    pg_server: PgServer, tmp_path: Path, audit_role: AuditRole
) -> None:
    results: dict[str, list[dict[str, Any]]] = {}
    configs: dict[str, Path] = {}
    for store in ("sqlite", "postgres"):
        extra = audit_role.audit_config() if store == "postgres" else {}
        (tmp_path / store).mkdir()
        configs[store] = write_config(tmp_path / store, pg_server, extra=extra)
        with run_proxy(configs[store]) as proxy:
            run_mixed_traffic(proxy)
        results[store] = search(configs[store])

    volatile = ("seq", "id", "time", "session_id", "duration_ms")

    def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k not in volatile} for r in rows]

    assert len(results["postgres"]) == 4
    assert comparable(results["postgres"]) == comparable(results["sqlite"])
    pg_cfg = configs["postgres"]
    assert [r["statement"] for r in search(pg_cfg, "--decision", "deny")] == [
        "drop table pg_store_nothing"
    ]
    assert [r["identity"] for r in search(pg_cfg, "--kind", "agent")] == ["bot@example.com"]
    assert [r["sqlstate"] for r in search(pg_cfg, "--text", "1/0")] == ["22012"]
    kinds = [(i["record"]["type"], i["record"].get("event")) for i in raw_records(pg_cfg)]
    assert kinds.count(("session", "opened")) == kinds.count(("session", "closed")) == 2
    done = verify(pg_cfg)
    assert done.returncode == 0 and "chain: INTACT" in done.stdout, done.stdout + done.stderr

    # Tampering with the PostgreSQL index is caught: its rows must agree with the log.
    denied_seq = search(pg_cfg, "--decision", "deny")[0]["seq"]
    s = sql.Identifier(audit_role.schema)
    audit_role.admin.execute(sql.SQL("drop trigger records_append_only on {}.records").format(s))
    audit_role.admin.execute(
        sql.SQL(
            "update {}.records set payload = replace(payload, '\"deny\"', '\"allow\"'), decision = 'allow' where seq = %s"
        ).format(s),
        (denied_seq,),
    )
    done = dbsentry_cli("audit", "verify", config=pg_cfg, check=False)
    assert done.returncode == 1, done.stdout + done.stderr

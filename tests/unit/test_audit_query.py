"""Search, tail, export and the ``audit`` CLI over a populated SQLite store."""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from dbsentry.audit.cli import audit, report
from dbsentry.audit.keys import Signer, load_or_create_signing_key
from dbsentry.audit.query import export_csv, export_jsonl, parse_when, search, tail
from dbsentry.audit.records import ApprovalRecord, CompletionRecord, SessionEvent, StatementRecord
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import SearchFilter, encode

T0 = 1_714_560_000.0  # 2024-05-01T10:40:00Z


def populate(store: SQLiteStore, signer: Signer) -> dict[str, StatementRecord]:
    s_alice = StatementRecord(
        time=T0 + 1,
        session_id="sa",
        identity="alice@example.com",
        identity_kind="human",
        connection="prod",
        environment="production",
        statement="SELECT email FROM public.users WHERE id = 1",
        command="SELECT",
        statement_class="read",
        tables=("public.users",),
        columns_read=("users.email",),
        data_classes=("pii.email",),
        masked_columns=("users.email",),
        masked_classes=("pii.email",),
        decision="mask",
        rules=("mask-pii",),
        fingerprint="fp1",
    )
    s_denied = StatementRecord(
        time=T0 + 2,
        session_id="sa",
        identity="alice@example.com",
        identity_kind="human",
        connection="prod",
        environment="production",
        statement="DROP TABLE orders",
        command="DROP TABLE",
        statement_class="ddl",
        risk="high",
        tables=("public.orders",),
        decision="deny",
        rules=("no-ddl-prod",),
    )
    s_agent = StatementRecord(
        time=T0 + 3,
        session_id="sb",
        identity="agent-42",
        identity_kind="agent",
        connection="staging",
        environment="staging",
        statement="select count(*) from orders",
        command="SELECT",
        statement_class="read",
        tables=("orders",),
        decision="allow",
    )
    s_err = StatementRecord(
        time=T0 + 4,
        session_id="sb",
        identity="agent-42",
        identity_kind="agent",
        connection="staging",
        environment="staging",
        statement="select * from nope",
        command="SELECT",
        tables=("nope",),
        decision="allow",
        data_classes=("financial",),
    )
    s_grant = StatementRecord(
        time=T0 + 5,
        session_id="sc",
        identity="bob@example.com",
        identity_kind="human",
        connection="prod",
        environment="production",
        statement="GRANT SELECT ON users TO analyst",
        command="GRANT",
        statement_class="dcl",
        decision="allow",
        approval_id="ap-1",
    )
    records = [
        SessionEvent(
            time=T0,
            event="opened",
            session_id="sa",
            identity="alice@example.com",
            identity_kind="human",
            connection="prod",
            environment="production",
            tls=True,
            tls_version="TLSv1.3",
            client_addr="10.0.0.5",
        ),
        SessionEvent(
            time=T0,
            event="opened",
            session_id="sb",
            identity="agent-42",
            identity_kind="agent",
            connection="staging",
            environment="staging",
        ),
        s_alice,
        CompletionRecord(
            time=T0 + 1.1, statement_id=s_alice.id, session_id="sa", rows=1, duration_ms=2.5
        ),
        s_denied,
        s_agent,
        CompletionRecord(
            time=T0 + 3.1, statement_id=s_agent.id, session_id="sb", rows=1, duration_ms=0.7
        ),
        s_err,
        CompletionRecord(
            time=T0 + 4.1,
            statement_id=s_err.id,
            session_id="sb",
            duration_ms=0.3,
            sqlstate="42P01",
            error='relation "nope" does not exist',
        ),
        ApprovalRecord(
            time=T0 + 4.5,
            approval_id="ap-1",
            event="requested",
            requester="bob@example.com",
            reason="onboarding analyst",
            connection="prod",
            environment="production",
            statement="GRANT SELECT ON users TO analyst",
        ),
        ApprovalRecord(
            time=T0 + 4.8,
            approval_id="ap-1",
            event="approved",
            requester="bob@example.com",
            reviewer="carol@example.com",
            decision="approved",
            decided_at=T0 + 4.8,
        ),
        s_grant,
        SessionEvent(
            time=T0 + 6,
            event="closed",
            session_id="sa",
            identity="alice@example.com",
            identity_kind="human",
            duration_ms=6000,
            end_reason="client_terminate",
        ),
    ]
    store.append_batch([encode(r) for r in records])
    store.add_checkpoint(signer)
    return {"alice": s_alice, "denied": s_denied, "agent": s_agent, "err": s_err, "grant": s_grant}


@pytest.fixture
def state(tmp_path: Path) -> tuple[Path, SQLiteStore, Signer, dict[str, StatementRecord]]:
    cfg = tmp_path / "dbsentry.yaml"
    cfg.write_text("state_dir: state\n")
    store = SQLiteStore(tmp_path / "state" / "audit.db")
    signer = Signer(load_or_create_signing_key(tmp_path / "state" / "audit_signing.key"))
    recs = populate(store, signer)
    yield cfg, store, signer, recs  # type: ignore[misc]
    store.close()


Fixture = tuple[Path, SQLiteStore, Signer, dict[str, StatementRecord]]


def ids(rows: Iterator[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


def test_parse_when() -> None:
    assert parse_when("30m", now=10_000) == 10_000 - 1800
    assert parse_when("7d", now=10**6) == 10**6 - 7 * 86400
    assert parse_when("2024-05-01T10:40:00Z") == T0
    assert parse_when("2024-05-01T10:40:00") == T0  # no offset: UTC
    assert parse_when("2024-05-01T12:40:00+02:00") == T0
    with pytest.raises(ValueError, match="not a time"):
        parse_when("yesterday")


def test_search_filters(state: Fixture) -> None:
    _, store, _, r = state
    every = SearchFilter()
    assert ids(search(store, every, newest_first=False)) == [
        r[k].id for k in ("alice", "denied", "agent", "err", "grant")
    ]
    assert ids(search(store, SearchFilter(identity="agent-42"), newest_first=False)) == [
        r["agent"].id,
        r["err"].id,
    ]
    assert ids(search(store, SearchFilter(identity_kind="agent"))) == [r["err"].id, r["agent"].id]
    assert ids(search(store, SearchFilter(connection="prod", decision="deny"))) == [r["denied"].id]
    assert ids(search(store, SearchFilter(environment="staging"), limit=1)) == [r["err"].id]
    # "orders" matches both "orders" and "public.orders"; "users" does not match "users_x"
    assert set(ids(search(store, SearchFilter(table="orders")))) == {r["denied"].id, r["agent"].id}
    assert ids(search(store, SearchFilter(table="public.users"))) == [r["alice"].id]
    assert ids(search(store, SearchFilter(table="users"))) == [r["alice"].id]
    assert ids(search(store, SearchFilter(text="drop TABLE"))) == [r["denied"].id]
    assert ids(search(store, SearchFilter(text="100%"))) == []
    assert ids(search(store, SearchFilter(since=T0 + 2, until=T0 + 4))) == [
        r["agent"].id,
        r["denied"].id,
    ]
    assert ids(search(store, SearchFilter(session_id="sc"))) == [r["grant"].id]


def test_search_row_has_completion_fields(state: Fixture) -> None:
    _, store, _, _ = state
    row = next(search(store, SearchFilter(identity="alice@example.com", decision="mask")))
    for key in (
        "time",
        "session_id",
        "identity",
        "identity_kind",
        "connection",
        "environment",
        "statement",
        "command",
        "class",
        "tables",
        "decision",
        "rules",
        "masked_columns",
        "rows",
        "duration_ms",
        "error",
    ):
        assert key in row
    assert row["time"] == "2024-05-01T10:40:01.000Z"
    assert (row["rows"], row["duration_ms"], row["error"]) == (1, 2.5, None)
    assert (
        row["class"] == "read"
        and row["masked_columns"] == ["users.email"]
        and row["rules"] == ["mask-pii"]
    )
    err = next(search(store, SearchFilter(text="nope")))
    assert err["sqlstate"] == "42P01" and "does not exist" in err["error"] and err["rows"] is None
    denied = next(search(store, SearchFilter(decision="deny")))
    assert denied["rows"] is None and denied["duration_ms"] is None


def test_export_streams(state: Fixture) -> None:
    _, store, _, _ = state
    yielded = 0
    original = store.search_statements

    def counting(*a: Any, **kw: Any) -> Iterator[Any]:
        nonlocal yielded
        for item in original(*a, **kw):
            yielded += 1
            yield item

    store.search_statements = counting  # type: ignore[method-assign]

    class Out(io.BytesIO):
        first_write_at: int | None = None

        def write(self, b: Any) -> int:
            if self.first_write_at is None:
                self.first_write_at = yielded
            return super().write(b)

    out = Out()
    assert export_jsonl(store, SearchFilter(), out) == 5
    assert out.first_write_at == 1  # written as rows arrive, not after reading them all
    rows = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert [row["seq"] for row in rows] == sorted(row["seq"] for row in rows)


def test_export_raw_and_csv(state: Fixture) -> None:
    _, store, _, _ = state
    out = io.BytesIO()
    assert export_jsonl(store, SearchFilter(), out, raw=True) == 13
    first = orjson.loads(out.getvalue().splitlines()[0])
    assert {"seq", "prev_hash", "hash", "record"} <= set(first)
    text = io.StringIO()
    assert export_csv(store, SearchFilter(decision="mask"), text) == 1
    rows = list(csv.DictReader(io.StringIO(text.getvalue())))
    assert rows[0]["masked_classes"] == "pii.email" and rows[0]["rows"] == "1"


def test_tail(state: Fixture) -> None:
    _, store, _, _ = state
    last = list(tail(store, last=3))
    assert [r.seq for r in last] == [11, 12, 13]
    calls = iter([False, True])
    store.append_batch(
        [
            encode(
                StatementRecord(
                    session_id="x",
                    identity="z",
                    identity_kind="human",
                    statement="select 1",
                    decision="allow",
                )
            )
        ]
    )
    followed = list(tail(store, last=1, follow=True, poll_seconds=0.01, stop=lambda: next(calls)))
    assert [r.seq for r in followed] == [14]


def test_cli_search_json(state: Fixture) -> None:
    cfg, *_ = state
    res = CliRunner().invoke(
        audit, ["search", "-c", str(cfg), "--kind", "agent", "--json", "--oldest-first"]
    )
    assert res.exit_code == 0, res.output
    rows = [orjson.loads(line) for line in res.stdout.splitlines()]
    assert [row["identity"] for row in rows] == ["agent-42", "agent-42"]
    assert rows[1]["error"] and rows[0]["rows"] == 1


def test_cli_search_text_and_since(state: Fixture) -> None:
    cfg, *_ = state
    res = CliRunner().invoke(audit, ["search", "-c", str(cfg), "--since", "2024-05-01T10:40:04Z"])
    assert res.exit_code == 0, res.output
    assert "GRANT SELECT" in res.stdout and "DROP TABLE" not in res.stdout
    bad = CliRunner().invoke(audit, ["search", "-c", str(cfg), "--since", "soon"])
    assert bad.exit_code != 0 and "not a time" in bad.output


def test_cli_tail_export_verify_archive(state: Fixture, tmp_path: Path) -> None:
    cfg, store, _, _ = state
    runner = CliRunner()
    res = runner.invoke(audit, ["tail", "-c", str(cfg), "-n", "2"])
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 2
    out = tmp_path / "x.csv"
    res = runner.invoke(audit, ["export", "-c", str(cfg), "--format", "csv", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert len(out.read_text().splitlines()) == 6
    res = runner.invoke(audit, ["verify", "-c", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "INTACT" in res.stdout
    arch = tmp_path / "arch.jsonl"
    res = runner.invoke(
        audit, ["archive", "-c", str(cfg), "--before", "2024-05-01T10:40:02.5Z", "-o", str(arch)]
    )
    assert res.exit_code == 0, res.output
    assert "archived 5 records" in res.stdout
    assert runner.invoke(audit, ["verify", "-c", str(cfg)]).exit_code == 0
    assert runner.invoke(audit, ["verify", "-c", str(cfg), "--archive", str(arch)]).exit_code == 0
    # now tamper and see verify fail naming the record
    conn = sqlite3.connect(store.path)
    conn.execute("DROP TRIGGER records_append_only")
    conn.execute(
        "UPDATE records SET payload = replace(payload, 'agent-42', 'agent-43') WHERE seq = 8"
    )
    conn.commit()
    conn.close()
    res = runner.invoke(audit, ["verify", "-c", str(cfg)])
    assert res.exit_code == 1
    assert "changed: record 8" in res.output


def test_cli_missing_store(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("state_dir: nowhere\n")
    res = CliRunner().invoke(audit, ["search", "-c", str(cfg)])
    assert res.exit_code != 0 and "no audit database" in res.output
    assert not (tmp_path / "nowhere" / "audit.db").exists()


def test_cli_report(state: Fixture, tmp_path: Path) -> None:
    cfg, *_ = state
    out = tmp_path / "rep"
    res = CliRunner().invoke(
        report,
        [
            "-c",
            str(cfg),
            "--since",
            "2024-05-01T00:00Z",
            "--until",
            "2024-05-02T00:00Z",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "5 statements, chain intact" in res.stdout
    assert (out / "report.html").exists() and (out / "manifest.sig").exists()

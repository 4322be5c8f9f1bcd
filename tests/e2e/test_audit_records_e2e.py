"""The audit trail through a running proxy against the real PostgreSQL.

Two identities (a person with a token, an AI agent with an agent token) run allowed,
denied, masked, failing and multi-statement queries with psql (simple protocol) and
psycopg (simple and extended protocol, with parameters).  Afterwards ``dbsentry audit``
must show one record per statement, attributed to the right identity, with its decision,
rules and outcome; its filters must find them; sessions must be recorded as they open and
close; and the chain must verify.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from support.audit import psql, raw_records, search, verify
from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

HUMAN = "alice@example.com"
AGENT = "report-bot@example.com"
TRACE_LEADING = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
TRACE_TRAILING = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")

REQUIRED_FIELDS = (
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
)


def traceparent(trace: tuple[str, str]) -> str:
    return f"00-{trace[0]}-{trace[1]}-01"


@dataclass
class Traffic:
    config: Path
    table: str
    rows: list[dict[str, Any]]  # audit search --json, oldest first
    raw: list[dict[str, Any]]  # audit export --raw

    def one(self, needle: str, identity: str | None = None) -> dict[str, Any]:
        """The single statement row whose text contains ``needle``."""
        found = [
            r for r in self.rows if needle in r["statement"] and identity in (None, r["identity"])
        ]
        assert len(found) == 1, (
            f"{len(found)} records contain {needle!r}: {[r['statement'] for r in found]}"
        )
        return found[0]


def _policy(table: str) -> str:
    return (
        "version: 1\n"
        "rules:\n"
        "  - name: mask-agent-emails\n"
        f"    match: {{kind: agent, tables: [{table}], classes: [READ]}}\n"
        "    action: mask\n"
        "    mask: {strategy: redact, columns: [email]}\n"
    )


@pytest.fixture(scope="module")
def traffic(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traffic]:
    table = f"audit_e2e_{uuid.uuid4().hex[:10]}"
    directory = tmp_path_factory.mktemp("audit_records")
    policy = directory / "policy.yaml"
    policy.write_text(_policy(table))
    config = write_config(directory, pg_server, extra={"policy": str(policy)})
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"create table {table} (id int primary key, email text, note text)")
        direct.execute(
            f"insert into {table} values (1, 'a@example.com', 'one'), (2, 'b@example.com', 'two')"
        )
    try:
        with run_proxy(config) as proxy:
            _run_traffic(proxy, table, pg_server)
        # The proxy has stopped: every completion and session record is written.
        yield Traffic(config, table, search(config), raw_records(config))
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
            direct.execute(f"drop table if exists {table}")


def _psql_ok(dsn: str, sql: str) -> str:
    done = psql(dsn, "-c", sql)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _run_traffic(proxy: RunningProxy, table: str, pg_server: PgServer) -> None:
    human = proxy.dsn(HUMAN, groups=("eng",))
    # psql: simple protocol, one session per command.
    assert _psql_ok(human, f"select count(*) from {table}") == "2\n"
    multi = psql(human, "-c", "select 1 as a; select 1/0; select 3")
    assert "division by zero" in multi.stderr
    dropped = psql(human, "-c", f"drop table {table}")
    assert dropped.returncode != 0 and "baseline.prod.drop" in dropped.stderr
    lead = f"/* traceparent='{traceparent(TRACE_LEADING)}' */ select note from {table} where id = 1"
    assert _psql_ok(human, lead) == "one\n"
    trail = (
        f"select note from {table} where id = 2 /* traceparent='{traceparent(TRACE_TRAILING)}' */"
    )
    assert _psql_ok(human, trail) == "two\n"

    # psycopg: extended protocol with parameters (text format), and simple protocol.
    with psycopg.connect(human, autocommit=True) as conn:
        assert conn.execute(f"select note from {table} where id = %t", (2,)).fetchone() == ("two",)
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 1 / %t", (0,))
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"update {table} set note = %t", ("overwritten",))
        cur = conn.execute("select 10 as ten; select 20 as twenty")
        assert cur.fetchone() == (10,)
        assert cur.nextset() and cur.fetchone() == (20,)

    agent = proxy.dsn(AGENT, groups=(), agent=True)
    with psycopg.connect(agent, autocommit=True) as conn:
        conn.execute(f"select email from {table} where id = %t", (1,)).fetchall()
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"insert into {table} values (%t, %t, %t)", (3, "c@example.com", "three"))
        assert conn.execute("select 42").fetchone() == (42,)

    with psycopg.connect(pg_server.dsn()) as direct:
        got = direct.execute(f"select id, note from {table} order by id").fetchall()
    assert got == [(1, "one"), (2, "two")], "a denied statement ran"


# The statements the traffic sends, as the audit trail should show them.
def expected_statements(table: str) -> list[tuple[str, str]]:
    return sorted(
        [
            (HUMAN, f"select count(*) from {table}"),
            (HUMAN, "select 1 as a"),
            (HUMAN, "select 1/0"),
            (HUMAN, "select 3"),
            (HUMAN, f"drop table {table}"),
            (HUMAN, f"select note from {table} where id = 1"),
            (
                HUMAN,
                f"select note from {table} where id = 2 /* traceparent='{traceparent(TRACE_TRAILING)}' */",
            ),
            (HUMAN, f"select note from {table} where id = $1"),
            (HUMAN, "select 1 / $1"),
            (HUMAN, f"update {table} set note = $1"),
            (HUMAN, "select 10 as ten"),
            (HUMAN, "select 20 as twenty"),
            (AGENT, f"select email from {table} where id = $1"),
            (AGENT, f"insert into {table} values ($1, $2, $3)"),
            (AGENT, "select 42"),
        ]
    )


def test_one_record_per_statement(traffic: Traffic) -> None:
    got = sorted(
        (r["identity"], re.sub(r"^/\*.*?\*/\s*", "", r["statement"])) for r in traffic.rows
    )
    assert got == expected_statements(traffic.table)
    assert len({r["id"] for r in traffic.rows}) == len(traffic.rows)


def test_required_fields_and_identity(traffic: Traffic) -> None:
    for row in traffic.rows:
        missing = [f for f in REQUIRED_FIELDS if f not in row]
        assert not missing, f"{row['statement']!r} lacks {missing}"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row["time"]), row["time"]
        assert row["identity_kind"] == ("agent" if row["identity"] == AGENT else "human")
        assert (row["connection"], row["environment"], row["database"]) == (
            "prod",
            "production",
            "test",
        )
        assert re.fullmatch(r"[0-9a-f]{16}", row["session_id"])
    # psql runs each -c in a session of its own; psycopg keeps one per identity.
    sessions = {(r["identity"], r["session_id"]) for r in traffic.rows}
    assert sum(1 for who, _ in sessions if who == HUMAN) == 5 + 1
    assert sum(1 for who, _ in sessions if who == AGENT) == 1


def test_allowed_statements(traffic: Traffic) -> None:
    t = traffic.table
    count = traffic.one(f"select count(*) from {t}")
    assert (count["decision"], count["rules"], count["command"], count["class"]) == (
        "allow",
        [],
        "SELECT",
        "READ",
    )
    assert count["tables"] == [t]
    assert (count["rows"], count["sqlstate"], count["error"]) == (1, None, None)
    assert count["duration_ms"] is not None and count["duration_ms"] > 0
    assert count["params"] is None
    assert count["application_name"] == "psql"


def test_failed_and_skipped_statements(traffic: Traffic) -> None:
    first, failed, skipped = (traffic.one(s) for s in ("select 1 as a", "select 1/0", "select 3"))
    assert first["session_id"] == failed["session_id"] == skipped["session_id"]
    assert (first["rows"], first["error"]) == (1, None)
    assert (failed["decision"], failed["rows"], failed["sqlstate"]) == ("allow", None, "22012")
    assert failed["error"] == "division by zero"
    assert (
        skipped["rows"] is None
        and skipped["error"] is not None
        and "not executed" in skipped["error"]
    )
    extended = traffic.one("select 1 / $1")
    assert extended["params"] == ["0"]
    assert (extended["sqlstate"], extended["error"]) == ("22012", "division by zero")


def test_denied_statements(traffic: Traffic) -> None:
    t = traffic.table
    drop = traffic.one(f"drop table {t}")
    assert (drop["decision"], drop["rules"], drop["command"], drop["class"]) == (
        "deny",
        ["baseline.prod.drop"],
        "DROP TABLE",
        "DDL",
    )
    assert drop["tables"] == [t]
    update = traffic.one(f"update {t} set note = $1")
    assert (update["decision"], update["rules"], update["command"]) == (
        "deny",
        ["baseline.prod.unbounded-write"],
        "UPDATE",
    )
    insert = traffic.one(f"insert into {t} values ($1, $2, $3)")
    assert (insert["identity"], insert["identity_kind"], insert["decision"]) == (
        AGENT,
        "agent",
        "deny",
    )
    assert insert["rules"] == ["baseline.prod.agent-read-only"]
    for row in (drop, update, insert):
        assert row["rows"] is None, "a denied statement reported rows"


def test_masked_statement(traffic: Traffic) -> None:
    masked = traffic.one(f"select email from {traffic.table} where id = $1")
    assert (masked["identity"], masked["identity_kind"]) == (AGENT, "agent")
    assert (masked["decision"], masked["rules"]) == ("mask", ["mask-agent-emails"])
    assert masked["params"] == ["1"]
    assert (masked["rows"], masked["error"]) == (1, None)


def test_multi_statement_simple_protocol(traffic: Traffic) -> None:
    ten, twenty = traffic.one("select 10 as ten"), traffic.one("select 20 as twenty")
    assert ten["session_id"] == twenty["session_id"]
    assert ten["seq"] < twenty["seq"]
    assert (ten["rows"], twenty["rows"]) == (1, 1)
    assert ten["params"] is None and twenty["params"] is None


def test_extended_protocol_params(traffic: Traffic) -> None:
    t = traffic.table
    assert traffic.one(f"select note from {t} where id = $1")["params"] == ["2"]
    assert traffic.one(f"select note from {t} where id = $1")["rows"] == 1


@pytest.mark.parametrize(
    "trace", [TRACE_TRAILING, TRACE_LEADING], ids=["trailing-comment", "leading-comment"]
)
def test_traceparent_in_comment_is_correlated(traffic: Traffic, trace: tuple[str, str]) -> None:
    where = "id = 2" if trace is TRACE_TRAILING else "id = 1"
    row = traffic.one(f"select note from {traffic.table} where {where}")
    assert row["correlation"] == {
        "traceparent": traceparent(trace),
        "trace_id": trace[0],
        "span_id": trace[1],
    }


def test_search_filters(traffic: Traffic) -> None:
    cfg, t = traffic.config, traffic.table
    everyone = traffic.rows
    by_human = search(cfg, "--identity", HUMAN)
    assert by_human == [r for r in everyone if r["identity"] == HUMAN] and len(by_human) == 12
    agents = search(cfg, "--kind", "agent")
    assert agents == [r for r in everyone if r["identity_kind"] == "agent"] and len(agents) == 3
    denied = search(cfg, "--decision", "deny")
    assert {r["statement"] for r in denied} == {
        f"drop table {t}",
        f"update {t} set note = $1",
        f"insert into {t} values ($1, $2, $3)",
    }
    both = search(cfg, "--kind", "agent", "--decision", "deny")
    assert [r["statement"] for r in both] == [f"insert into {t} values ($1, $2, $3)"]
    on_table = search(cfg, "--table", t)
    assert on_table == [r for r in everyone if t in r["tables"]] and len(on_table) == 8
    assert search(cfg, "--table", f"public.{t}") == [], (
        "a bare name in the statement is not schema-qualified"
    )
    text = search(cfg, "--text", "DROP TABLE")
    assert [r["statement"] for r in text] == [f"drop table {t}"]
    assert search(cfg, "--identity", "nobody@example.com") == []


def test_session_open_and_close_recorded(traffic: Traffic) -> None:
    sessions: dict[str, dict[str, dict[str, Any]]] = {}
    seq_of: dict[str, dict[str, int]] = {}
    for item in traffic.raw:
        rec = item["record"]
        if rec["type"] == "session":
            sessions.setdefault(rec["session_id"], {})[rec["event"]] = rec
            seq_of.setdefault(rec["session_id"], {})[rec["event"]] = item["seq"]
    used = {r["session_id"]: r for r in traffic.rows}
    assert set(sessions) == set(used)
    for sid, row in used.items():
        opened, closed = sessions[sid].get("opened"), sessions[sid].get("closed")
        assert opened is not None and closed is not None, f"session {sid}: {sessions[sid]}"
        for ev in (opened, closed):
            assert (ev["identity"], ev["identity_kind"], ev["connection"], ev["environment"]) == (
                row["identity"],
                row["identity_kind"],
                "prod",
                "production",
            )
            assert ev["tls"] is True and ev["token_id"]
            assert ev["client_addr"].startswith("127.0.0.1:")
        assert opened["groups"] == (["eng"] if row["identity"] == HUMAN else [])
        assert closed["end_reason"] and closed["duration_ms"] >= 0
        stmt_seqs = [r["seq"] for r in traffic.rows if r["session_id"] == sid]
        assert seq_of[sid]["opened"] < min(stmt_seqs) and max(stmt_seqs) < seq_of[sid]["closed"]


def test_completions_link_to_their_statements(traffic: Traffic) -> None:
    statements = {
        i["record"]["id"]: i["seq"] for i in traffic.raw if i["record"]["type"] == "statement"
    }
    completions = [i for i in traffic.raw if i["record"]["type"] == "completion"]
    for item in completions:
        ref = item["record"]["statement_id"]
        assert ref in statements and statements[ref] < item["seq"]
    refs = [i["record"]["statement_id"] for i in completions]
    assert len(refs) == len(set(refs)), "a statement completed twice"


def test_chain_verifies(traffic: Traffic) -> None:
    """The proxy's log (one node) verifies, and every index row agrees with it."""
    done = verify(traffic.config)
    assert done.returncode == 0, done.stdout + done.stderr
    blocks = [line for line in done.stdout.splitlines() if line.startswith("node ")]
    assert len(blocks) == 1 and blocks[0].endswith(" chain: INTACT"), done.stdout
    n = len(traffic.raw)
    assert f"records: {n} (seq 1..{n}, anchor 0)" in done.stdout
    assert f"index: {n} of {n} rows agree with the log" in done.stdout


def test_redact_literals(pg_server: PgServer, tmp_path: Path) -> None:
    table = f"audit_redact_{uuid.uuid4().hex[:10]}"
    config = write_config(tmp_path, pg_server, extra={"audit": {"redact_literals": True}})
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"create table {table} (id int primary key, secret text)")
    try:
        with run_proxy(config) as proxy:
            dsn = proxy.dsn()
            sql = (
                f"select id from {table} where secret = 'literal-s3cret' and id = 1987654321 "
                f"/* traceparent='{traceparent(TRACE_TRAILING)}' */"
            )
            done = psql(dsn, "-c", sql)
            assert done.returncode == 0, done.stderr
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"select id from {table} where secret = %t", ("param-s3cret",))
                conn.execute(f"select id from {table} where secret = %t", (None,))
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
            direct.execute(f"drop table if exists {table}")
    rows = search(config)
    assert [r["statement"] for r in rows] == [
        f"select id from {table} where secret = ? and id = ?",
        f"select id from {table} where secret = $1",
        f"select id from {table} where secret = $1",
    ]
    assert [r["params"] for r in rows] == [None, ["?"], [None]]
    # The trace context is read before the comment is dropped.
    assert rows[0]["correlation"]["trace_id"] == TRACE_TRAILING[0]
    raw = [i["record"] for i in raw_records(config) if i["record"]["type"] == "statement"]
    assert all(r["statement_redacted"] is True for r in raw)
    # Nowhere in the store: not in the statement, the parameters or any other field.
    state = Path(config).parent / "state"
    stored = b"".join(p.read_bytes() for p in state.glob("audit.db*"))
    # (a number long enough that no hex digest or signature in the file spells it by chance:
    # "4242" did, about one run in seven)
    for secret in (b"literal-s3cret", b"1987654321", b"param-s3cret"):
        assert secret not in stored

"""Records: canonical form, literal redaction, parameter caps, correlation ids."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.audit.records import (
    REDACTED_STATEMENT,
    ApprovalRecord,
    CompletionRecord,
    SessionEvent,
    StatementRecord,
    extract_correlation,
    prepare_params,
    redact_literals,
)
from dbsentry.engines.postgres.sql.parse import tokens
from dbsentry.identity.model import Identity

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM t WHERE a = 'secret' AND b = 42", "SELECT * FROM t WHERE a = ? AND b = ?"),
        ("select 'it''s', E'a\\'b', $$dollar$$, $tag$x$tag$", "select ?, ?, ?, ?"),
        ("select 3.5e2, -7, 0x1F, B'101', X'ff', U&'d\\0061t'", "select ?, -?, ?, ?, ?, ?"),
        ("insert into t (a, b) values ($1, $2)", "insert into t (a, b) values ($1, $2)"),
        ("select true, null, now()", "select true, null, now()"),
        ("select 'é' from \"Tbl\"", 'select ? from "Tbl"'),
        ("select date '2024-01-01'", "select date ?"),
    ],
)
def test_redact_literals(sql: str, expected: str) -> None:
    assert redact_literals(sql, tokens) == expected


def test_redact_drops_comments() -> None:
    sql = f"/* traceparent='{TP}' */ select 1 -- password hunter2\n"
    out = redact_literals(sql, tokens)
    assert "hunter2" not in out and TP not in out
    assert out == "select ?"


@pytest.mark.parametrize("sql", ["select 'unterminated", "select $$x", "select 1 /* open"])
def test_redact_untokenizable_keeps_nothing(sql: str) -> None:
    assert redact_literals(sql, tokens) == REDACTED_STATEMENT


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40).filter(lambda s: "'" not in s and "\\" not in s and "$" not in s))
def test_redacted_string_never_leaks(secret: str) -> None:
    sql = f"SELECT * FROM users WHERE name = '{secret}xyzzy'"
    out = redact_literals(sql, tokens)
    assert "xyzzy" not in out


def test_redact_is_fast_enough() -> None:
    sql = "SELECT " + ", ".join(f"'v{i}'" for i in range(2000)) + " FROM t"
    out = redact_literals(sql, tokens)
    assert out.count("?") == 2000


def test_correlation_traceparent_and_sqlcommenter() -> None:
    sql = (
        "SELECT * FROM orders "
        f"/*action='%2Fparam*d',controller='index',framework='spring',traceparent='{TP}',tracestate='congo%3Dt61rcWkgMzE'*/"
    )
    c = extract_correlation(sql, tokens)
    assert c["traceparent"] == TP
    assert c["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert c["span_id"] == "b7ad6b7169203331"
    assert c["action"] == "/param*d"
    assert c["controller"] == "index"
    assert c["tracestate"] == "congo=t61rcWkgMzE"


def test_correlation_leading_comment_and_dash_comment() -> None:
    assert extract_correlation(f"/* traceparent='{TP}' */ select 1", tokens)["trace_id"] == TP.split("-")[1]
    assert extract_correlation(f"select 1 -- traceparent='{TP}'", tokens)["span_id"] == TP.split("-")[2]


def test_correlation_ignores_strings_and_bad_traceparent() -> None:
    assert extract_correlation(f"select 'traceparent=''{TP}'''", tokens) == {}
    assert "traceparent" not in extract_correlation("/* traceparent='00-zz-yy-01' */ select 1", tokens)
    zero = "00-00000000000000000000000000000000-b7ad6b7169203331-01"
    assert "traceparent" not in extract_correlation(f"/* traceparent='{zero}' */ select 1", tokens)
    assert extract_correlation("select 1", tokens) == {}


def test_correlation_caps() -> None:
    pairs = ",".join(f"k{i}='{'v' * 400}'" for i in range(40))
    c = extract_correlation(f"/*{pairs}*/ select 1", tokens)
    assert len(c) == 16
    assert all(len(v) <= 256 for v in c.values())


def test_prepare_params_caps_and_redacts() -> None:
    values, cut = prepare_params(["a", None, b"\xff\x00", "x" * 50], max_value=10, max_total=1000)
    assert values[0] == "a" and values[1] is None
    assert values[2] == "\\xff00"
    assert values[3] is not None and values[3].startswith("x" * 10) and "(+40)" in values[3]
    assert cut
    many, cut = prepare_params(["y" * 10] * 10, max_value=100, max_total=35)
    assert many[3] is not None and len(many[3]) <= 15
    assert many[-1] == "…" and cut
    redacted, _ = prepare_params(["secret", None], redact=True)
    assert redacted == ("?", None)


def test_statement_create_redacts_caps_and_correlates() -> None:
    r = StatementRecord.create(
        sql=f"/* traceparent='{TP}' */ SELECT * FROM users WHERE ssn = '123-45-6789'",
        params=["p1"],
        redact=True,
        session_id="s",
        identity="alice",
        identity_kind="human",
        decision="allow",
    )
    assert "123-45-6789" not in r.statement and r.statement_redacted
    assert r.params == ("?",)
    assert r.correlation["traceparent"] == TP
    long = StatementRecord.create(
        sql="select " + "1," * 1000 + "1",
        max_statement_chars=300,
        session_id="s",
        identity="a",
        identity_kind="human",
        decision="allow",
    )
    assert len(long.statement) == 300 and long.statement_truncated


def test_canonical_is_sorted_and_stable() -> None:
    r = StatementRecord(
        session_id="s",
        identity="a",
        identity_kind="human",
        statement="select 1",
        decision="allow",
        statement_class="read",
        correlation={"z": "1", "a": "2"},
    )
    data = orjson.loads(r.canonical())
    assert data["type"] == "statement" and data["class"] == "read"
    assert "statement_class" not in data
    assert list(data) == sorted(data)
    assert r.canonical() == r.canonical()


def test_session_event_from_identity() -> None:
    ident = Identity("bot-1", frozenset({"b", "a"}), "agent", "tok_1", "token")
    ev = SessionEvent.for_identity(
        "opened",
        ident,
        session_id="s9",
        tls=True,
        tls_version="TLSv1.3",
        client_addr="10.0.0.1:5000",
    )
    d = ev.to_dict()
    assert d["groups"] == ["a", "b"] and d["identity_kind"] == "agent" and d["token_id"] == "tok_1"


def test_other_record_types_serialise() -> None:
    for rec in (
        CompletionRecord(
            statement_id="x",
            session_id="s",
            rows=1,
            duration_ms=2.0,
            sqlstate="42P01",
            error="no table",
        ),
        ApprovalRecord(
            approval_id="ap1",
            event="approved",
            requester="a",
            reviewer="b",
            decision="approved",
            reason="incident 42",
        ),
    ):
        assert orjson.loads(rec.canonical())["type"] == rec.TYPE


def test_canonical_form_is_the_json_of_to_dict_for_every_record_type() -> None:
    from dbsentry.audit.records import (
        ApprovalRecord,
        CompletionRecord,
        SessionEvent,
        StatementRecord,
        SystemEvent,
        canonical_json,
    )

    records = [
        StatementRecord.create(
            sql="SELECT 1 /* traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' */",
            params=["1", None, b"\x00"],
            session_id="s",
            identity="alice",
            identity_kind="human",
            decision="allow",
            tables=("public.t",),
        ),
        CompletionRecord(statement_id="x", session_id="s", rows=3, duration_ms=1.5),
        SessionEvent(event="opened", session_id="s", identity="alice", identity_kind="agent", groups=("a", "b")),
        ApprovalRecord(approval_id="a1", event="requested", requester="bob"),
        SystemEvent(event="audit_store_recovered", detail={"kept_records": 3}),
    ]
    for record in records:
        assert record.canonical() == canonical_json(record.to_dict()), type(record).__name__


def test_record_ids_are_unique_and_increase_within_a_process() -> None:
    from dbsentry.audit.records import new_record_id

    ids = [new_record_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert ids == sorted(ids)


def test_a_record_id_is_time_then_process_then_counter_in_hex(monkeypatch: pytest.MonkeyPatch) -> None:
    import itertools

    from dbsentry.audit import records

    for ns in (0, 1_765_000_000_123_456_789, (1 << 64) + 5):
        assert records._record_id(ns)[:24] == f"{ns & ((1 << 64) - 1):016x}{records._id_prefix}"
    # then a 32-bit counter, which wraps
    monkeypatch.setattr(records, "_id_counter", itertools.count(0xFFFFFFFF))
    assert [records._record_id(0)[24:] for _ in range(2)] == ["ffffffff", "00000000"]

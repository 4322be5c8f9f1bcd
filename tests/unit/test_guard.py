"""The row guard without sockets: the exchange tracker, the verdict on a statement's effect,
and whole brackets driven message by message."""

from __future__ import annotations

import itertools
import re
import struct
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dbsentry.engines.postgres.masking.rows import decode_data_row
from dbsentry.engines.postgres.session.exchange import CLIENT, Exchange
from dbsentry.engines.postgres.session.guard import (
    FAIL_SQL,
    LOCKED_STATS_SQL,
    STATS_SQL,
    Effect,
    Guard,
    Limits,
    Mode,
    Statement,
    TableCounts,
    Verdict,
    effects,
    judge,
    parse_counts,
)
from dbsentry.engines.postgres.session.rowcap import RowCap
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m
from support.playbook import frames

LIMITS = Limits(max_rows=1000, max_fraction=0.5, min_rows_for_fraction=10)


def data_row(*values: str | None) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            body += struct.pack("!i", -1)
        else:
            raw = v.encode()
            body += struct.pack("!i", len(raw)) + raw
    return codec.frame(b"D", body)


def stats_row(
    oid: int, upd: int, dele: int, ins: int, size: int = 8192, reltuples: float = -1, live: int = 0,
    can: bool = True, name: str = "acc", root: int | None = None, root_name: str = "", deferred: bool = False,
    user_code: bool = False,
) -> bytes:  # fmt: skip
    root = oid if root is None else root
    flag = "t" if can else "f"
    return data_row(
        str(oid), str(upd), str(dele), str(ins), str(size), str(reltuples), str(live), flag, "public", name,
        str(root), "public", root_name or name, flag, "f", "t" if deferred else "f", "t" if user_code else "f",
    )  # fmt: skip


ROW_DESC = codec.frame(b"T", struct.pack("!h", 0))
READY_I = codec.encode_ready("I")
READY_T = codec.encode_ready("T")
READY_E = codec.encode_ready("E")


def cc(tag: str) -> bytes:
    return codec.encode_command_complete(tag)


CLOSE_DONE = codec.frame(b"3")
PARSE_DONE = codec.frame(b"1")
BIND_DONE = codec.frame(b"2")


def stats_answer(*rows: bytes, ready: bytes | None = READY_T, first: bool = False) -> bytes:
    """The answers to the statistics query: its Close and Parse the first time, then Bind,
    rows, Execute, Close of the portal, and ReadyForQuery for its Sync (simple protocol)."""
    head = CLOSE_DONE + PARSE_DONE if first else b""
    tail = ready if ready is not None else b""
    return head + BIND_DONE + b"".join(rows) + cc(f"SELECT {len(rows)}") + CLOSE_DONE + tail


def check_answer(ready: bytes | None = READY_T, replaced: int = 0, counting: str = "on") -> bytes:
    """The answers to the guard's check that its statistics statements are its own (parsed
    afresh each time): Close, Parse, Bind, the count of replaced ones and track_counts,
    Close."""
    tail = ready if ready is not None else b""
    row = data_row(str(replaced), counting)
    return CLOSE_DONE + PARSE_DONE + BIND_DONE + row + cc("SELECT 1") + CLOSE_DONE + tail


def after_answer(*rows: bytes, ready: bytes | None = READY_T, first: bool = False) -> bytes:
    """The answers to the reading after the statement and to the check after it (one cycle:
    a ReadyForQuery for both in the simple protocol)."""
    return stats_answer(*rows, ready=None, first=first) + check_answer(ready)


def feed(guard: Guard, data: bytes) -> tuple[list[tuple[str, bytes]], list[bytes], object]:
    _, spans = codec.FrameSplitter().split(data)
    out_buf, _, out = guard.received(data, spans)
    return (frames(out_buf) if out_buf else []), out.upstream, out


def sent_queries(data: bytes) -> list[str]:
    return [body[:-1].decode() for t, body in frames(data) if t == "Q"]


# ---------------------------------------------------------------------------- the exchange


def test_exchange_follows_a_simple_query_to_its_ready() -> None:
    ex = Exchange()
    ex.sent(m.Q_QUERY, 7)
    assert ex.outstanding(7) == 1
    for t in (m.R_ROW_DESCRIPTION, m.R_DATA_ROW, m.R_COMMAND_COMPLETE, m.R_ERROR):
        assert ex.received(t) == (7, False)
    assert ex.received(m.R_READY) == (7, True)
    assert ex.idle and ex.outstanding(7) == 0


def test_exchange_extended_error_skips_to_sync() -> None:
    ex = Exchange()
    for t in (m.Q_PARSE, m.Q_BIND, m.Q_DESCRIBE, m.Q_EXECUTE):
        ex.sent(t)
    for t in (m.Q_PARSE, m.Q_BIND, m.Q_EXECUTE):
        ex.sent(t, 9)  # the proxy's own, skipped with the rest
    ex.sent(m.Q_SYNC)
    assert ex.received(ord("1")) == (CLIENT, True)
    assert ex.received(m.R_ERROR) == (CLIENT, True)  # the Bind failed
    assert ex.outstanding(9) == 0
    assert ex.received(m.R_READY) == (CLIENT, True)
    assert ex.idle


def test_exchange_describe_execute_and_notices() -> None:
    ex = Exchange()
    for t in (m.Q_PARSE, m.Q_DESCRIBE, m.Q_EXECUTE, m.Q_CLOSE, m.Q_SYNC):
        ex.sent(t, 3)
    assert ex.received(m.R_NOTICE) == (3, False)
    assert ex.received(ord("1"))[1]
    assert ex.received(ord("t")) == (3, False)  # ParameterDescription, then
    assert ex.received(m.R_ROW_DESCRIPTION) == (3, True)
    assert ex.received(m.R_DATA_ROW) == (3, False)
    assert ex.received(m.R_PORTAL_SUSPENDED) == (3, True)
    assert ex.received(ord("3")) == (3, True)
    assert ex.received(m.R_READY) == (3, True)
    assert ex.received(m.R_NOTIFICATION) == (CLIENT, False)


def test_exchange_reown_and_forget() -> None:
    ex = Exchange()
    ex.sent(m.Q_QUERY, 5)
    ex.sent(m.Q_QUERY, 6)
    ex.reown(5)
    ex.forget(6)
    assert ex.outstanding(5) == 0 and ex.outstanding(6) == 0 and not ex.proxy_requests
    assert ex.received(m.R_READY) == (CLIENT, True)
    assert ex.idle


@given(st.lists(st.sampled_from([m.Q_QUERY, m.Q_PARSE, m.Q_BIND, m.Q_DESCRIBE, m.Q_EXECUTE, m.Q_CLOSE, m.Q_SYNC, m.Q_FLUSH]), max_size=30),
       st.lists(st.sampled_from([m.R_READY, m.R_ERROR, m.R_COMMAND_COMPLETE, m.R_DATA_ROW, ord("1"), ord("2"), ord("3"), m.R_ROW_DESCRIPTION, m.R_NO_DATA, m.R_NOTICE]), max_size=60))  # fmt: skip
def test_exchange_never_fails_on_any_sequence(requests: list[int], answers: list[int]) -> None:
    ex = Exchange()
    for i, t in enumerate(requests):
        ex.sent(t, i % 3)
    for t in answers:
        owner, _ = ex.received(t)
        assert owner in (0, 1, 2)
    assert all(ex.outstanding(o) >= 0 for o in (1, 2))


# ---------------------------------------------------------------------------- the verdict


def decode(row: bytes) -> list[bytes | None]:
    return decode_data_row(frames(row)[0][1])


def table(oid: int, upd: int, dele: int, ins: int, **kw: object) -> dict[int, TableCounts]:
    return parse_counts([decode(stats_row(oid, upd, dele, ins, **kw))])  # type: ignore[arg-type]


def test_effects_are_the_change_of_the_counters() -> None:
    before = table(1, 5, 10, 0)
    after = {**table(1, 5, 50, 2), **table(2, 3, 0, 0, name="other")}
    got = {e.table.oid: (e.changed, e.inserted, e.deleted) for e in effects(before, after)}
    assert got == {1: (40, 2, 40), 2: (3, 0, 0)}
    with pytest.raises(ValueError, match="backwards"):
        effects(table(1, 9, 9, 9), table(1, 1, 1, 1))


def test_judge_absolute_limit() -> None:
    found = effects({}, table(1, 0, 1001, 0, size=10**9, reltuples=1e9))
    v = judge(LIMITS, found)
    assert not v.ok and "would have changed 1001 rows (limit 1000" in v.message and v.rule.endswith("max_rows_changed")
    assert judge(Limits(None, None), found).ok
    # what the statement reported counts too (a foreign table's rows change on another server)
    assert not judge(LIMITS, [], reported=5000, written=("ft",)).ok


def test_judge_counts_a_bounded_number_of_rows() -> None:
    found = effects({}, table(1, 0, 40, 0, reltuples=-1))
    v = judge(LIMITS, found)
    assert v.ok and [u.key for u in v.counts_needed] == ["t1"]
    # 40 deleted at 50%: the table must have kept more than 40 rows
    assert v.counts_needed[0].count_sql(0.5) == '(SELECT pg_catalog.count(*) FROM (SELECT 1 FROM ONLY "public"."acc" LIMIT 41) s)'
    v = judge(LIMITS, found, {"t1": 0})  # nothing left after deleting 40: it had 40
    assert not v.ok and "100% of the 40 rows of public.acc" in v.message
    assert judge(LIMITS, found, {"t1": 41}).ok
    # statistics that say the table is large do not matter when it can be counted
    inflated = effects({}, table(1, 0, 40, 0, reltuples=200_000, live=200_000))
    assert judge(LIMITS, inflated).counts_needed and not judge(LIMITS, inflated, {"t1": 3}).ok


def test_judge_fraction_from_estimate_and_unknown_size() -> None:
    big = effects({}, table(1, 600, 0, 0, reltuples=1000, can=False))
    assert not judge(LIMITS, big).ok
    fine = effects({}, table(1, 400, 0, 0, reltuples=1000, can=False))
    assert judge(LIMITS, fine).ok
    unknown = effects({}, table(1, 20, 0, 0, reltuples=-1, live=0, can=False))
    v = judge(LIMITS, unknown)
    assert not v.ok and "could not be measured" in v.message
    few = effects({}, table(1, 9, 0, 0, reltuples=9))
    assert judge(LIMITS, few).ok  # under min_rows_for_fraction


def test_judge_partitions_count_together() -> None:
    parts = {}
    for i in range(10):  # 9 rows deleted in each of 10 partitions of 9 rows
        parts |= table(100 + i, 0, 9, 0, name=f"p{i}", root=99, root_name="parted")
    found = effects({}, parts)
    v = judge(LIMITS, found)
    assert [u.key for u in v.counts_needed] == ["r99"]
    assert v.counts_needed[0].count_sql(0.5).startswith('(SELECT pg_catalog.count(*) FROM (SELECT 1 FROM "public"."parted" LIMIT')
    v = judge(LIMITS, found, {"r99": 0})
    assert not v.ok and "public.parted (with its partitions or children)" in v.message


# ---------------------------------------------------------------------------- brackets


def begin_autocommit(guard: Guard, sql: str = "DELETE FROM acc WHERE id > -1") -> bytes:
    sent = guard.wrap_query(codec.encode_query(sql), Mode.AUTOCOMMIT, 0, Statement(sql), LIMITS)
    assert sent_queries(sent) == ["BEGIN", sql]
    kinds = "".join(t for t, _ in frames(sent))
    assert kinds == "QCPBECSQCPBECCPBECS"  # BEGIN, statistics (prepared first), the statement, statistics (of the locked tables)
    parsed = [body for t, body in frames(sent) if t == "P"]
    assert STATS_SQL.encode() in parsed[0] and LOCKED_STATS_SQL.encode() in parsed[1]
    return sent


def test_autocommit_over_the_limit_rolls_back_and_tells_the_client() -> None:
    guard = Guard(1 << 20)
    begin_autocommit(guard)
    answer = cc("BEGIN") + READY_T + stats_answer(first=True) + cc("DELETE 40") + READY_T
    answer += after_answer(stats_row(1, 0, 40, 0, size=8192), first=True)
    to_client, upstream, out = feed(guard, answer)
    assert to_client == [] and sent_queries(b"".join(upstream)) == [
        'SELECT (SELECT pg_catalog.count(*) FROM (SELECT 1 FROM ONLY "public"."acc" LIMIT 41) s)'
    ]
    to_client, upstream, out = feed(guard, ROW_DESC + data_row("0") + cc("SELECT 1") + READY_T)
    assert to_client == [] and out.ask is not None and "100% of the 40 rows" in out.ask.message  # type: ignore[attr-defined]
    result = guard.approval(False, None)
    assert sent_queries(b"".join(result.upstream)) == ["ROLLBACK"] and not result.finished
    to_client, upstream, out = feed(guard, cc("ROLLBACK") + READY_I)
    assert [t for t, _ in to_client] == ["E", "Z"] and to_client[1][1] == b"I"
    assert out.finished and not guard.active  # type: ignore[attr-defined]
    err = codec.decode_error_fields(to_client[0][1], 0, len(to_client[0][1]))
    assert err.sqlstate == "42501" and err.message.endswith("it was rolled back")


def test_autocommit_within_limits_commits_and_reports_idle() -> None:
    guard = Guard(1 << 20)
    begin_autocommit(guard, "DELETE FROM acc WHERE id = 1")
    answer = cc("BEGIN") + READY_T + stats_answer(stats_row(1, 0, 3, 0), first=True) + cc("DELETE 1") + READY_T
    to_client, upstream, _ = feed(guard, answer + after_answer(stats_row(1, 0, 4, 0), first=True))
    assert to_client == [] and sent_queries(b"".join(upstream)) == ["COMMIT"]
    to_client, _, out = feed(guard, cc("COMMIT") + READY_I)
    assert to_client == [("C", b"DELETE 1\x00"), ("Z", b"I")] and out.finished  # type: ignore[attr-defined]


def test_autocommit_commit_failure_replaces_the_statement_result() -> None:
    guard = Guard(1 << 20)
    begin_autocommit(guard, "UPDATE acc SET v = 1 WHERE id = 1")
    answer = cc("BEGIN") + READY_T + stats_answer(first=True) + cc("UPDATE 1") + READY_T + after_answer(stats_row(1, 1, 0, 0), first=True)
    feed(guard, answer)
    commit_error = codec.error_response("23503", "deferred constraint")
    to_client, _, _ = feed(guard, commit_error + READY_I)
    assert [t for t, _ in to_client] == ["E", "Z"] and to_client[1][1] == b"I"


def test_statement_error_passes_and_autocommit_block_is_rolled_back() -> None:
    guard = Guard(1 << 20)
    begin_autocommit(guard)
    err = codec.error_response("23503", "violates foreign key")
    answer = cc("BEGIN") + READY_T + stats_answer(first=True) + err + READY_E + codec.error_response("25P02", "aborted") + READY_E
    to_client, upstream, out = feed(guard, answer)  # (the reading after and the check: one error, one ReadyForQuery)
    assert to_client == [] and sent_queries(b"".join(upstream)) == ["ROLLBACK"] and out.ask is None  # type: ignore[attr-defined]
    to_client, _, _ = feed(guard, cc("ROLLBACK") + READY_I)
    assert [t for t, _ in to_client] == ["E", "Z"] and b"violates foreign key" in to_client[0][1] and to_client[1][1] == b"I"


def test_block_refusal_fails_the_block() -> None:
    guard = Guard(1 << 20)
    sql = "SELECT 1; DELETE FROM acc"
    sent = guard.wrap_query(codec.encode_query(sql), Mode.BLOCK, 1, Statement(sql), LIMITS)
    assert sent_queries(sent) == [sql]
    answer = stats_answer(first=True) + ROW_DESC + data_row("1") + cc("SELECT 1") + data_row("x") + cc("DELETE 5000") + READY_T
    to_client, _, _ = feed(guard, answer)
    # the SELECT's answers pass at once; the DELETE's RETURNING row is held
    assert [t for t, _ in to_client] == ["T", "D", "C"]
    to_client, _, out = feed(guard, after_answer(stats_row(1, 0, 5000, 0, size=10**9, reltuples=10**6), first=True))
    assert out.ask is not None  # type: ignore[attr-defined]
    result = guard.approval(False, "dbsentry: refused, request apr_1")
    assert sent_queries(b"".join(result.upstream)) == [FAIL_SQL]
    assert [f[:1] for f in result.client] == [b"E", b"Z"] and result.client[1][5:] == b"E" and result.finished
    assert b"apr_1" in result.client[0]
    # the failing statement's answers never reach the client
    to_client, _, _ = feed(guard, codec.error_response("22P02", "invalid input") + READY_E)
    assert to_client == []


def test_block_approved_statement_goes_through() -> None:
    guard = Guard(1 << 20)
    sql = "DELETE FROM acc"
    guard.wrap_query(codec.encode_query(sql), Mode.BLOCK, 0, Statement(sql), LIMITS)
    feed(guard, stats_answer(first=True) + cc("DELETE 5000") + READY_T)
    _, _, out = feed(guard, after_answer(stats_row(1, 0, 5000, 0, size=10**9, reltuples=10**6), first=True))
    assert out.ask is not None  # type: ignore[attr-defined]
    result = guard.approval(True, None)
    assert result.upstream == [] and [f[:1] for f in result.client] == [b"C", b"Z"] and result.finished


def test_extended_refusal_fails_the_batch_before_its_sync() -> None:
    guard = Guard(1 << 20)
    execute = codec.encode_execute(m.Execute(""))
    for t in (m.Q_PARSE, m.Q_BIND):
        guard.exchange.sent(t)
    sent = guard.wrap_execute(execute, Statement("DELETE FROM acc WHERE id > $1", ("-1",)), LIMITS)
    kinds = [t for t, _ in frames(sent)]
    assert kinds == ["C", "P", "B", "E", "C", "E", "C", "P", "B", "E", "C", "C", "P", "B", "E", "C", "H"]
    answer = codec.frame(b"1") + codec.frame(b"2")  # the client's Parse and Bind
    answer += stats_answer(stats_row(1, 0, 2, 0), ready=None, first=True)
    answer += data_row("7") + cc("DELETE 1500")
    answer += after_answer(stats_row(1, 0, 1502, 0, size=10**9, reltuples=10**7), ready=None, first=True)
    to_client, _, out = feed(guard, answer)
    assert [t for t, _ in to_client] == ["1", "2"] and out.ask is not None  # type: ignore[attr-defined]
    result = guard.approval(False, None)
    assert [t for t, _ in frames(b"".join(result.upstream))] == ["E"]  # a portal that does not exist
    assert [f[:1] for f in result.client] == [b"E"] and result.finished
    # the failing Execute's error is not the client's
    to_client, _, _ = feed(guard, codec.error_response("34000", "portal does not exist") + READY_I)
    assert to_client == [("Z", b"I")]


def test_extended_statement_skipped_after_an_earlier_error() -> None:
    guard = Guard(1 << 20)
    guard.exchange.sent(m.Q_PARSE)
    guard.wrap_execute(codec.encode_execute(m.Execute("")), Statement("DELETE FROM acc"), LIMITS)
    to_client, _, out = feed(guard, codec.error_response("42601", "syntax error"))
    assert [t for t, _ in to_client] == ["E"] and out.finished and not guard.active  # type: ignore[attr-defined]


def test_failed_measurement_refuses() -> None:
    guard = Guard(1 << 20)
    sql = "UPDATE acc SET v = 2 WHERE id = 3"
    guard.wrap_query(codec.encode_query(sql), Mode.BLOCK, 0, Statement(sql), LIMITS)
    answer = stats_answer(first=True) + cc("UPDATE 1") + READY_T + BIND_DONE + codec.error_response("57014", "canceling statement") + READY_E
    _, _, out = feed(guard, answer + check_answer())
    assert out.ask is not None and "could not be measured" in out.ask.message  # type: ignore[attr-defined]



def test_statistics_statements_replaced_by_the_statement_refuse_it() -> None:
    """Code the statement calls can DEALLOCATE the guard's statistics statements and
    PREPARE others under their names (an attack round did: they answered "no rows changed"
    and a 1,500-row wipe committed).  The check after the reading, parsed afresh, counts
    statements made by SQL PREPARE under those names: one, and the statement is refused
    (no approval can measure it), and the next bracket parses the readings again."""
    guard = Guard(1 << 20)
    sql = "SELECT s.hijack_and_wipe()"
    sent = guard.wrap_query(codec.encode_query(sql), Mode.BLOCK, 0, Statement(sql), LIMITS)
    check = [body for t, body in frames(sent) if t == "P"][-1]
    assert b"from_sql" in check and b"_stats0" in check and b"_stats1" in check
    answer = stats_answer(first=True) + ROW_DESC + data_row("1") + cc("SELECT 1") + READY_T
    to_client, _, out = feed(guard, answer + stats_answer(ready=None, first=True) + check_answer(replaced=1))
    assert out.ask is None and out.finished  # type: ignore[attr-defined]
    assert [t for t, _ in to_client] == ["E", "Z"] and b"guardrails.measurement" in to_client[0][1]
    assert _block_update(guard) == "CPBECSQCPBECCPBECS"  # both readings parsed again


def test_statistics_statements_dropped_by_the_statement_are_prepared_again() -> None:
    """A function's DEALLOCATE of the reading after: its Bind fails (26000), the statement
    is refused as not measured, and the next bracket prepares both readings again instead
    of failing every guarded statement of the session from then on."""
    guard = Guard(1 << 20)
    sql = "SELECT s.drop_them()"
    guard.wrap_query(codec.encode_query(sql), Mode.BLOCK, 0, Statement(sql), LIMITS)
    gone = codec.error_response("26000", 'prepared statement "dbsentry_guard_x_stats1" does not exist')
    answer = stats_answer(first=True) + ROW_DESC + data_row("1") + cc("SELECT 1") + READY_T
    _, _, out = feed(guard, answer + CLOSE_DONE + PARSE_DONE + gone + READY_E)
    assert out.ask is not None and "could not be measured" in out.ask.message  # type: ignore[attr-defined]
    guard.approval(False, None)
    assert _block_update(guard) == "CPBECSQCPBECCPBECS"

def test_held_answers_over_the_cap_refuse_without_asking() -> None:
    guard = Guard(100)
    sql = "UPDATE acc SET v = v RETURNING *"
    guard.wrap_query(codec.encode_query(sql), Mode.BLOCK, 0, Statement(sql), LIMITS)
    rows = b"".join(data_row("x" * 40) for _ in range(5))
    to_client, upstream, out = feed(guard, stats_answer(first=True) + rows + cc("UPDATE 5") + READY_T + after_answer(stats_row(1, 5, 0, 0), first=True))
    assert out.ask is None and out.finished  # type: ignore[attr-defined]
    assert [t for t, _ in to_client] == ["E", "Z"] and b"more than the proxy holds" in to_client[0][1]
    assert sent_queries(b"".join(upstream)) == [FAIL_SQL]


def test_cancel_forgets_the_bracket_but_not_the_statement() -> None:
    guard = Guard(1 << 20)
    guard.wrap_query(codec.encode_query("DELETE FROM acc"), Mode.AUTOCOMMIT, 0, Statement("DELETE FROM acc"), LIMITS)
    guard.cancel()
    assert not guard.active and not guard.exchange.proxy_requests
    assert guard.exchange.received(m.R_READY) == (CLIENT, True) and guard.exchange.idle


def test_effect_dataclass_is_plain() -> None:
    e = Effect(next(iter(table(1, 1, 0, 0).values())), 1, 0, 0)
    assert e.table.qualified == '"public"."acc"'


def test_judge_refuses_catalog_changes() -> None:
    row = data_row("1259", "1", "0", "0", "0", "0", "0", "t", "pg_catalog", "pg_class", "1259", "pg_catalog", "pg_class", "t", "f", "f", "f")
    truncate = [Effect(parse_counts([decode(row)])[1259], 1, 0, 0)]
    v = judge(LIMITS, truncate)
    assert not v.ok and v.rule == "guardrails.catalog_changes" and "pg_catalog.pg_class" in v.message


def test_judge_refuses_rows_added_to_any_catalog() -> None:
    """A table, an index, a domain's check, a function, a trigger, a policy, a role created
    inside a statement add rows to the catalogs: DDL, refused (attack rounds added unique
    indexes, domain checks, children of a table and functions from inside a function)."""
    for name in ("pg_class", "pg_attribute", "pg_depend", "pg_index", "pg_constraint", "pg_inherits", "pg_namespace",
                 "pg_proc", "pg_trigger", "pg_rewrite", "pg_policy", "pg_authid", "pg_user_mapping", "pg_enum"):  # fmt: skip
        row = data_row("99", "0", "0", "2", "0", "0", "0", "t", "pg_catalog", name, "99", "pg_catalog", name, "t", "f", "f", "f")
        v = judge(LIMITS, [Effect(parse_counts([decode(row)])[99], 0, 2, 0)])
        assert not v.ok and v.rule == "guardrails.catalog_changes" and f"pg_catalog.{name}" in v.message, name


def test_judge_refuses_rows_changed_in_a_table_with_deferrable_triggers() -> None:
    """What the database says at the measurement, not what the catalog read earlier: a
    deferrable trigger's work comes at COMMIT, after the measurement."""
    one = effects({}, table(1, 1, 0, 0, deferred=True, name="audit_me"))
    v = judge(LIMITS, one)
    assert not v.ok and v.rule == "guardrails.deferred_triggers" and "public.audit_me" in v.message
    temp = effects({}, table(2, 0, 0, 1, deferred=True, name="tt"))
    assert not judge(Limits(None, None), temp).ok  # a temporary table's triggers too, and with no limits
    # a table with such triggers that this statement did not change does not matter
    assert judge(LIMITS, effects(table(1, 1, 0, 0, deferred=True), table(1, 1, 0, 0, deferred=True))).ok
    assert judge(LIMITS, effects({}, table(1, 1, 0, 0))).ok
    with pytest.raises(ValueError):
        parse_counts([decode(stats_row(1, 1, 0, 0))[:15]])  # the old shape is not read


# ---------------------------------------------------------------------------- the agent row cap


def _cap(cap: RowCap, data: bytes) -> list[tuple[str, bytes]]:
    _, spans = codec.FrameSplitter().split(data)
    out, _ = cap.filter(data, spans)
    return frames(out) if out else []


def test_row_cap_passes_small_results_untouched() -> None:
    cap = RowCap(3)
    data = ROW_DESC + data_row("1") + data_row("2") + data_row("3") + cc("SELECT 3") + READY_I
    _, spans = codec.FrameSplitter().split(data)
    assert cap.filter(data, spans)[0] is data


def test_row_cap_cuts_the_result_and_skips_to_ready() -> None:
    cap = RowCap(2)
    data = ROW_DESC + data_row("1") + data_row("2") + data_row("3") + data_row("4") + cc("SELECT 4")
    data += ROW_DESC + data_row("later statement") + cc("SELECT 1")  # skipped, as after an error
    cut = len(ROW_DESC + data_row("1") + data_row("2"))  # chunks end at frame boundaries
    got = _cap(cap, data[:cut]) + _cap(cap, data[cut:] + READY_T)
    assert [t for t, _ in got] == ["T", "D", "D", "E", "Z"]
    err = next(body for t, body in got if t == "E")
    assert b"54000" in err and b"guardrails.agent_max_rows" in err
    again = _cap(cap, ROW_DESC + data_row("1") + cc("SELECT 1") + READY_I)
    assert [t for t, _ in again] == ["T", "D", "C", "Z"]


def test_row_cap_counts_copy_rows_and_portal_pages() -> None:
    cap = RowCap(2)
    copy = codec.frame(b"H", b"\x00\x00\x00") + b"".join(codec.frame(b"d", b"%d\n" % i) for i in range(4))
    got = _cap(cap, copy + codec.frame(b"c") + cc("COPY 4") + READY_I)
    assert [t for t, _ in got] == ["H", "d", "d", "E", "Z"]
    pages = data_row("1") + data_row("2") + codec.frame(b"s") + data_row("3") + cc("SELECT 3") + READY_I
    assert [t for t, _ in _cap(RowCap(2), pages)] == ["D", "D", "s", "E", "Z"]


def test_statistics_query_is_prepared_once_and_again_after_deallocate() -> None:
    guard = Guard(1 << 20)
    sql = "UPDATE acc SET v = 2 WHERE id = 3"

    def run() -> str:
        sent = guard.wrap_query(codec.encode_query(sql), Mode.BLOCK, 0, Statement(sql), LIMITS)
        return "".join(t for t, _ in frames(sent))

    assert run() == "CPBECSQCPBECCPBECS"
    feed(guard, stats_answer(first=True) + cc("UPDATE 1") + READY_T + after_answer(stats_row(1, 1, 0, 0), first=True))
    assert not guard.active
    guard.forget_baseline()  # (something else ran between: the counters are read again)
    assert run() == "BECSQBECCPBECS"
    feed(guard, stats_answer() + cc("UPDATE 1") + READY_T + after_answer(stats_row(1, 1, 0, 0)))
    guard.forget_baseline()
    guard.statements_dropped()
    assert run() == "CPBECSQCPBECCPBECS"
    # its Parse fails (the transaction had failed): the next bracket parses again
    feed(guard, CLOSE_DONE + codec.error_response("25P02", "aborted") + READY_E)
    feed(guard, (codec.error_response("25P02", "aborted") + READY_E) * 3)
    assert not guard.active
    assert run() == "CPBECSQCPBECCPBECS"


def test_row_cap_counts_the_pages_of_a_cursor_until_the_transaction_ends() -> None:
    cap = RowCap(3)
    page = data_row("1") + data_row("2") + cc("FETCH 2") + READY_T
    assert [t for t, _ in _cap(cap, page)] == ["D", "D", "C", "Z"]
    assert [t for t, _ in _cap(cap, page)] == ["D", "E", "Z"]  # the 4th row of the cursor
    # a new transaction starts counting again
    _cap(cap, cc("COMMIT") + READY_I)
    assert [t for t, _ in _cap(cap, page)] == ["D", "D", "C", "Z"]


def _run_block(cuts: list[int], deleted: int) -> tuple[list[tuple[str, bytes]], list[bytes], bool, bool]:
    """A guarded DELETE in the client's block, its answers fed in pieces cut at ``cuts``
    (frame indexes): what reached the client, what went upstream, asked, finished."""
    guard = Guard(1 << 20)
    sql = "SELECT 1; DELETE FROM acc"
    guard.wrap_query(codec.encode_query(sql), Mode.BLOCK, 1, Statement(sql), LIMITS)
    answer = stats_answer(stats_row(1, 0, 2, 0), first=True) + ROW_DESC + data_row("1") + cc("SELECT 1")
    answer += data_row("x") + cc(f"DELETE {deleted}") + READY_T
    answer += after_answer(stats_row(1, 0, 2 + deleted, 0, size=10**9, reltuples=10**6), first=True)
    whole = [codec.frame(t.encode(), body) for t, body in frames(answer)]
    to_client: list[tuple[str, bytes]] = []
    upstream: list[bytes] = []
    asked = finished = False
    bounds = sorted({0, len(whole), *(c % (len(whole) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        got, up, out = feed(guard, b"".join(whole[lo:hi]))
        to_client += got
        upstream += up
        asked = asked or out.ask is not None  # type: ignore[attr-defined]
        finished = finished or out.finished  # type: ignore[attr-defined]
    return to_client, upstream, asked, finished


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=12), st.sampled_from([1, 5000]))
def test_answers_in_any_pieces_give_what_one_piece_gives(cuts: list[int], deleted: int) -> None:
    """The bracket moves on only when a request ends: however the server's answers are
    cut into reads, the client gets the same frames and the same decision."""
    assert _run_block(cuts, deleted) == _run_block([], deleted)
    to_client, _, asked, finished = _run_block(cuts, deleted)
    if deleted == 1:
        assert finished and not asked and [t for t, _ in to_client] == ["T", "D", "C", "D", "C", "Z"]
    else:
        assert asked and not finished and [t for t, _ in to_client] == ["T", "D", "C"]


def _block_update(guard: Guard, sql: str = "UPDATE acc SET v = 2 WHERE id = 3") -> str:
    sent = guard.wrap_query(codec.encode_query(sql), Mode.BLOCK, 0, Statement(sql), LIMITS)
    return "".join(t for t, _ in frames(sent))


BIG: dict[str, Any] = {"size": 10**9, "reltuples": 10**6, "can": False}  # estimated, not counted


def test_the_next_statement_of_a_block_reuses_the_counters_read_after_the_last() -> None:
    guard = Guard(1 << 20)
    assert _block_update(guard) == "CPBECSQCPBECCPBECS"
    feed(guard, stats_answer(first=True) + cc("UPDATE 1") + READY_T + after_answer(stats_row(1, 1, 0, 0, **BIG), first=True))
    assert not guard.active
    # Nothing ran between: the counters are read once, after the statement...
    assert _block_update(guard) == "QBECCPBECS"
    # ...and measured from the last reading: 1001 updated so far, 1000 by this statement,
    # within max_rows (1000); counted from zero it would be 1001, over it.
    to_client, _, out = feed(guard, cc("UPDATE 1000") + READY_T + after_answer(stats_row(1, 1001, 0, 0, **BIG)))
    assert [t for t, _ in to_client] == ["C", "Z"] and out.finished and out.ask is None  # type: ignore[attr-defined]
    # and again from that reading: 1 more row over the limit is refused.
    assert _block_update(guard) == "QBECCPBECS"
    _, _, out = feed(guard, cc("UPDATE 1001") + READY_T + after_answer(stats_row(1, 2002, 0, 0, **BIG)))
    assert out.ask is not None  # type: ignore[attr-defined]



def test_a_table_the_reading_after_did_not_see_keeps_the_count_the_reading_before_saw() -> None:
    """The reading after a statement sees only the tables the backend holds a lock on (the
    statement's); a table an earlier transaction changed (its counts are not reset until
    the backend reports them) is seen only by the reading before.  When the block's next
    statement changes that table, it is measured from that count, not from zero."""
    guard = Guard(1 << 20)
    _block_update(guard)
    stale = stats_row(2, 0, 950, 0, name="other", **BIG)  # deleted by an earlier transaction
    feed(guard, stats_answer(stale, first=True) + cc("UPDATE 1") + READY_T + after_answer(stats_row(1, 1, 0, 0), first=True))
    assert not guard.active
    assert _block_update(guard, "DELETE FROM other WHERE id < 100") == "QBECCPBECS"
    # 99 more rows deleted in "other": within the limit (1000); from zero it would be 1049...
    to_client, _, out = feed(guard, cc("DELETE 99") + READY_T + after_answer(stats_row(2, 0, 1049, 0, name="other", **BIG)))
    assert [t for t, _ in to_client] == ["C", "Z"] and out.finished and out.ask is None  # type: ignore[attr-defined]
    # ...and the third statement starts from 1049: 2 more rows are 2, not 1051.
    assert _block_update(guard, "DELETE FROM other WHERE id < 102") == "QBECCPBECS"
    _, _, out = feed(guard, cc("DELETE 2") + READY_T + after_answer(stats_row(2, 0, 1051, 0, name="other", **BIG)))
    assert out.finished and out.ask is None  # type: ignore[attr-defined]


def _before_reading(sent: bytes) -> bytes:
    """The Bind of the first statistics reading in ``sent``."""
    return next(body for t, body in frames(sent) if t == "B")


def test_the_reading_before_a_statement_asks_for_the_tables_the_last_reading_saw() -> None:
    """Counts of earlier transactions linger until the backend reports them: the reading
    before an autocommit statement looks at every table, unless the session knows which
    tables have counts (the last bracket read them, and nothing unmeasured ran since)."""
    guard = Guard(1 << 20)
    first = begin_autocommit(guard)
    assert b"_stats0\x00" in _before_reading(first)  # every table
    stale = stats_row(2, 0, 950, 0, name="other")
    answer = cc("BEGIN") + READY_T + stats_answer(stale, first=True) + cc("DELETE 3") + READY_T
    feed(guard, answer + after_answer(stats_row(1, 0, 3, 0), first=True) + cc("COMMIT") + READY_I)
    assert not guard.active
    sql = "DELETE FROM acc WHERE id = 9"
    second = guard.wrap_query(codec.encode_query(sql), Mode.AUTOCOMMIT, 0, Statement(sql), LIMITS)
    bind = _before_reading(second)
    assert b"_stats1\x00" in bind and b"{1,2}" in bind  # the locked tables and those two
    # measured from those counts: 1 row, not 951
    answer = cc("BEGIN") + READY_T + stats_answer(stale, stats_row(1, 0, 3, 0)) + cc("DELETE 1") + READY_T
    _, _, out = feed(guard, answer + after_answer(stats_row(2, 0, 951, 0, name="other")) + cc("COMMIT") + READY_I)
    assert out.finished and out.ask is None  # type: ignore[attr-defined]
    # something unmeasured went upstream: every table again
    guard.unseen_changes()
    third = guard.wrap_query(codec.encode_query(sql), Mode.AUTOCOMMIT, 0, Statement(sql), LIMITS)
    assert b"_stats0\x00" in _before_reading(third)



def test_a_fresh_backend_needs_no_reading_before_its_first_statement() -> None:
    """A session's upstream connection is opened for it: no table has counts yet, so its
    first statement is measured from zero, with only the reading after it."""
    guard = Guard(1 << 20, fresh=True)
    sql = "DELETE FROM acc WHERE id = 9"
    sent = guard.wrap_query(codec.encode_query(sql), Mode.AUTOCOMMIT, 0, Statement(sql), LIMITS)
    assert "".join(t for t, _ in frames(sent)) == "QQCPBECCPBECS"  # BEGIN, the statement, the reading after, the check
    parsed = [body for t, body in frames(sent) if t == "P"]
    assert LOCKED_STATS_SQL.encode() in parsed[0]
    answer = cc("BEGIN") + READY_T + cc("DELETE 3") + READY_T + after_answer(stats_row(1, 0, 3, 0), first=True)
    _, upstream, out = feed(guard, answer)
    assert sent_queries(b"".join(upstream)) == ["COMMIT"] and out.ask is None  # type: ignore[attr-defined]
    # Over the limit from zero: 1,001 rows are 1,001.
    guard = Guard(1 << 20, fresh=True)
    guard.wrap_query(codec.encode_query(sql), Mode.AUTOCOMMIT, 0, Statement(sql), LIMITS)
    answer = cc("BEGIN") + READY_T + cc("DELETE 1001") + READY_T
    _, _, out = feed(guard, answer + after_answer(stats_row(1, 0, 1001, 0, size=8 << 20), first=True))
    assert out.ask is not None  # type: ignore[attr-defined]


def _autocommit(guard: Guard, sql: str = "DELETE FROM acc WHERE id = 9") -> bytes:
    return guard.wrap_query(codec.encode_query(sql), Mode.AUTOCOMMIT, 0, Statement(sql), LIMITS)


def _run_autocommit(guard: Guard, after: bytes, before: bytes | None = None, first: bool = False) -> None:
    """Answers to an autocommit bracket (with a reading before it when ``before``), its
    COMMIT, and the ReadyForQuery "I" after it."""
    answer = cc("BEGIN") + READY_T
    if before is not None:
        answer += stats_answer(before, first=first)
    answer += cc("DELETE 3") + READY_T + after_answer(after, first=first and before is None)
    _, upstream, out = feed(guard, answer)
    assert sent_queries(b"".join(upstream)) == ["COMMIT"], upstream
    _, _, out = feed(guard, cc("COMMIT") + READY_I)
    assert out.finished  # type: ignore[attr-defined]


def test_the_check_asks_the_backend_to_report_its_counters_from_postgresql_15() -> None:
    """From PostgreSQL 15 the check after each reading calls pg_stat_force_next_flush():
    the backend reports (and so zeroes) every counter at its next idle moment."""
    for flush in (True, False):
        sent = _autocommit(Guard(1 << 20, fresh=True, flush=flush))
        check = [body for t, body in frames(sent) if t == "P"][-1]
        assert b"pg_prepared_statements" in check
        assert (b"pg_catalog.pg_stat_force_next_flush()" in check) is flush


def test_after_a_reported_transaction_the_next_statement_needs_no_reading_before_it() -> None:
    """Once the check asked for a report and the server said it is idle with nothing else
    asked of it, every counter is zero: the next statement is measured from zero.  Without
    the report asked (PostgreSQL 14), or after something unmeasured went upstream, it reads
    them before the statement as before."""
    guard = Guard(1 << 20, fresh=True, flush=True)
    _autocommit(guard)
    _run_autocommit(guard, stats_row(1, 0, 3, 0), first=True)
    guard.idle_ready(True)
    assert "".join(t for t, _ in frames(_autocommit(guard))) == "QQBECCPBECS"  # no reading before it
    _run_autocommit(guard, stats_row(1, 0, 3, 0))
    # Without a report asked: a reading before the statement (of the tables it knows).
    guard = Guard(1 << 20, fresh=True, flush=False)
    _autocommit(guard)
    _run_autocommit(guard, stats_row(1, 0, 3, 0), first=True)
    guard.idle_ready(True)
    sent = _autocommit(guard)
    assert "".join(t for t, _ in frames(sent)) == "QBECSQBECCPBECS"
    assert b"{1}" in _before_reading(sent)
    # A report asked, then something unmeasured sent after the idle moment: every table.
    guard = Guard(1 << 20, fresh=True, flush=True)
    _autocommit(guard)
    _run_autocommit(guard, stats_row(1, 0, 3, 0), first=True)
    guard.idle_ready(True)
    guard.unseen_changes()
    assert b"_stats0\x00" in _before_reading(_autocommit(guard))


def test_a_report_is_used_once() -> None:
    """The backend reports at its first idle moment after the check; a later idle moment
    (after statements no check followed) says nothing about the counters."""
    guard = Guard(1 << 20, fresh=True, flush=True)
    _autocommit(guard)
    _run_autocommit(guard, stats_row(1, 0, 3, 0), first=True)
    guard.idle_ready(True)
    guard.unseen_changes()  # say, a function call nobody measured, in its own transaction
    guard.idle_ready(True)  # ... which ended: not reported (no check asked it)
    assert b"_stats0\x00" in _before_reading(_autocommit(guard))


def test_counts_left_by_a_wrong_zero_are_counted_too_much_never_too_little() -> None:
    """Were some counter not zero after all, the reading after would count it as the
    statement's: a refusal the limits did not call for, never a change let through."""
    guard = Guard(1 << 20, fresh=True, flush=True)
    _autocommit(guard)
    answer = cc("BEGIN") + READY_T + cc("DELETE 3") + READY_T
    # 998 rows left over by an earlier transaction, and 3 of this statement: 1,001.
    _, _, out = feed(guard, answer + after_answer(stats_row(1, 0, 1001, 0, size=8 << 20), first=True))
    assert out.ask is not None  # type: ignore[attr-defined]


def test_a_statement_that_failed_leaves_counts_no_reading_saw() -> None:
    guard = Guard(1 << 20)
    begin_autocommit(guard)
    err = codec.error_response("23503", "violates foreign key constraint")
    answer = cc("BEGIN") + READY_T + stats_answer(first=True) + err + READY_E
    feed(guard, answer + (codec.error_response("25P02", "aborted") + READY_E) * 2 + cc("ROLLBACK") + READY_I)
    assert not guard.active
    sql = "DELETE FROM acc WHERE id = 9"
    sent = guard.wrap_query(codec.encode_query(sql), Mode.AUTOCOMMIT, 0, Statement(sql), LIMITS)
    assert b"_stats0\x00" in _before_reading(sent)  # the failed DELETE's attempts count

def _guard_after_one_statement() -> Guard:
    guard = Guard(1 << 20)
    _block_update(guard)
    feed(guard, stats_answer(first=True) + cc("UPDATE 1") + READY_T + after_answer(stats_row(1, 1, 0, 0), first=True))
    assert not guard.active
    return guard


def test_the_counters_are_read_again_once_anything_may_have_changed_them() -> None:
    for between in (
        cc("COMMIT") + READY_I,  # the transaction ended: the counters restart
        codec.error_response("25P02", "aborted") + READY_E,  # it failed
        codec.error_response("42P01", "no such table"),  # an error, before its ReadyForQuery
    ):
        guard = _guard_after_one_statement()
        guard.exchange.sent(m.Q_QUERY)
        feed(guard, between)
        assert _block_update(guard) == "BECSQBECCPBECS", between
    guard = _guard_after_one_statement()
    guard.forget_baseline()  # the session forwarded something but a plain read
    assert _block_update(guard) == "BECSQBECCPBECS"
    guard = _guard_after_one_statement()
    # the guard's own block (autocommit) never reuses, and ends the reuse
    sent = guard.wrap_query(codec.encode_query("DELETE FROM acc"), Mode.AUTOCOMMIT, 0, Statement("x"), LIMITS)
    assert "".join(t for t, _ in frames(sent)) == "QBECSQBECCPBECS"


def test_a_refused_or_failed_statement_leaves_no_counters_to_reuse() -> None:
    guard = _guard_after_one_statement()
    assert _block_update(guard) == "QBECCPBECS"
    feed(guard, codec.error_response("23505", "duplicate") + READY_E + stats_answer() + check_answer())
    assert not guard.active and _block_update(guard) == "BECSQBECCPBECS"
    guard = _guard_after_one_statement()
    _block_update(guard)
    _, _, out = feed(guard, cc("DELETE 5000") + READY_T + after_answer(stats_row(1, 1, 5000, 0, **BIG)))
    assert out.ask is not None  # type: ignore[attr-defined]
    guard.approval(False, None)
    assert _block_update(guard) == "BECSQBECCPBECS"


def test_an_execute_in_an_open_block_starts_from_the_last_reading_and_leaves_its_own() -> None:
    """When the session knows the client's explicit block is open and nothing is in flight
    (``in_block``), an Execute starts from the last reading (a Sync cannot end an explicit
    block) and leaves its "after" for the next guarded statement."""
    guard = _guard_after_one_statement()
    update = codec.encode_execute(m.Execute(""))
    wrapped = guard.wrap_execute(update, Statement("UPDATE acc SET v = 1"), LIMITS, in_block=True)
    assert "".join(t for t, _ in frames(wrapped)) == "EBECCPBECH"  # the statement, counters, the check, Flush
    feed(guard, cc("UPDATE 1") + BIND_DONE + stats_row(1, 2, 0, 0) + cc("SELECT 1") + CLOSE_DONE + check_answer(None))
    assert not guard.active
    wrapped = guard.wrap_execute(update, Statement("UPDATE acc SET v = 2"), LIMITS, in_block=True)
    assert "".join(t for t, _ in frames(wrapped)) == "EBECCPBECH"
    # measured from the last reading: 2 -> 1500 rows updated is 1,498, over the limit
    _, _, out = feed(guard, cc("UPDATE 1498") + BIND_DONE + stats_row(1, 1500, 0, 0, **BIG) + cc("SELECT 1") + CLOSE_DONE + check_answer(None))
    assert out.ask is not None  # type: ignore[attr-defined]
    guard.approval(False, None)
    # not known to be in a block: it reads first, whatever was read before
    guard = _guard_after_one_statement()
    wrapped = guard.wrap_execute(update, Statement("UPDATE acc SET v = 1"), LIMITS)
    assert "".join(t for t, _ in frames(wrapped)) == "BECEBECCPBECH"


def test_an_execute_reads_the_counters_before_it_and_ends_the_reuse() -> None:
    """An Execute does not wait for the answers before it (a Sync or Query among them may
    have ended an implicit transaction, and the counters restarted): it reads them first,
    and the next guarded Query reads them again too."""
    guard = _guard_after_one_statement()
    wrapped = guard.wrap_execute(codec.encode_execute(m.Execute("")), Statement("UPDATE acc SET v = 1"), LIMITS)
    assert "".join(t for t, _ in frames(wrapped)) == "BECEBECCPBECH"  # counters, the statement, counters, Flush
    feed(guard, BIND_DONE + cc("SELECT 0") + CLOSE_DONE + cc("UPDATE 1") + BIND_DONE + stats_row(1, 2, 0, 0) + cc("SELECT 1") + CLOSE_DONE + check_answer(None))
    assert not guard.active
    assert _block_update(guard) == "BECSQBECCPBECS"


@given(
    changes=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(0, 12)), min_size=1, max_size=4),
    reported=st.integers(0, 30),
)
@example(changes=[(10, 0, 0)], reported=0)  # exactly min_rows_for_fraction: looked at
@example(changes=[(0, 0, 0)], reported=10)
@example(changes=[(9, 0, 0)], reported=0)
def test_fewer_rows_than_the_share_limit_looks_at_pass_without_counting(
    changes: list[tuple[int, int, int]], reported: int
) -> None:
    """judge's shortcut: when the statement changed fewer rows in all than
    min_rows_for_fraction, no table can reach the share limit, so nothing is counted and it
    passes; from that many rows on, the share limit is looked at as before (the written
    table counted first, a table of unknown size refused)."""
    found = [
        Effect(table(i + 1, upd, dele, ins, reltuples=-1, can=False)[i + 1], upd + dele, ins, dele)
        for i, (upd, dele, ins) in enumerate(changes)
    ]
    seen = sum(e.changed for e in found)
    unseen = max(reported - seen, 0)  # rows the counters missed: the written table's
    verdict = judge(LIMITS, found, reported=reported, written=("public.acc",))
    if seen + unseen < LIMITS.min_rows_for_fraction:
        assert verdict == Verdict(True)
    elif unseen >= LIMITS.min_rows_for_fraction:
        assert verdict.counts_needed  # the written table is counted first
    elif any(e.changed >= LIMITS.min_rows_for_fraction for e in found):
        assert not verdict.ok  # a table of unknown size: refused


def test_statistics_rows_are_parsed_once_per_bytes() -> None:
    """The reading's rows are remembered parsed by their bytes (a table's row comes back
    unchanged in each reading of a transaction): the same bytes give the same counts, other
    bytes their own, and the memory stays bounded."""
    guard = Guard(1 << 20)
    first = stats_row(1, 3, 0, 0)[5:]
    again = guard._counts([first, stats_row(2, 1, 0, 0)[5:]])
    assert guard._counts([first])[1] is again[1] and again[1].updated == 3 and again[2].updated == 1
    assert guard._counts([stats_row(1, 4, 0, 0)[5:]])[1].updated == 4
    for oid in range(1000):
        guard._counts([stats_row(oid, 1, 0, 0)[5:]])
    assert len(guard._rows) <= 256
    with pytest.raises(ValueError):
        guard._counts([data_row("1", "2")[5:]])


def test_counting_turned_off_refuses_the_statement() -> None:
    """The check also reads track_counts: off (code the session ran turned it off), the
    backend counted nothing, and the statement is rolled back, with no approval asked."""
    guard = Guard(1 << 20, fresh=True, flush=True)
    _autocommit(guard)
    answer = cc("BEGIN") + READY_T + cc("DELETE 3") + READY_T
    answer += stats_answer(ready=None, first=True) + check_answer(counting="off")
    _, upstream, out = feed(guard, answer)
    assert sent_queries(b"".join(upstream)) == ["ROLLBACK"] and out.ask is None  # type: ignore[attr-defined]
    to_client, _, out = feed(guard, cc("ROLLBACK") + READY_I)
    assert out.finished  # type: ignore[attr-defined]
    assert b"track_counts is off" in to_client[0][1] and b"guardrails.measurement" in to_client[0][1]


def test_an_idle_moment_with_more_sent_behind_it_spends_the_report() -> None:
    """The backend reports at its first idle moment after the check.  When more was sent
    behind what that moment answered (a pipeline), those statements may leave counts the
    next idle moment does not report: no zero then, nor later."""
    guard = Guard(1 << 20, fresh=True, flush=True)
    _autocommit(guard)
    _run_autocommit(guard, stats_row(1, 0, 3, 0), first=True)
    guard.idle_ready(False)  # a failed UPDATE was pipelined behind it
    guard.idle_ready(True)
    assert "".join(t for t, _ in frames(_autocommit(guard))).startswith("QBECS")  # read before it


def test_a_revoked_report_function_refuses_once_then_the_check_asks_for_none() -> None:
    """EXECUTE on pg_stat_force_next_flush() revoked from the upstream role: the check
    fails (42501), so that statement is not measured and is refused; the next checks do
    not call the function (and the readings before statements come back)."""
    guard = Guard(1 << 20, fresh=True, flush=True)
    _autocommit(guard)
    denied = codec.error_response("42501", "permission denied for function pg_stat_force_next_flush")
    answer = cc("BEGIN") + READY_T + cc("DELETE 3") + READY_T
    answer += stats_answer(stats_row(1, 0, 3, 0), ready=None, first=True) + CLOSE_DONE + PARSE_DONE + BIND_DONE
    _, upstream, out = feed(guard, answer + denied + READY_E)
    assert upstream == [] and out.ask is not None and "could not be measured" in out.ask.message  # type: ignore[attr-defined]
    assert sent_queries(b"".join(guard.approval(False, None).upstream)) == ["ROLLBACK"]  # no approval
    _, _, out = feed(guard, cc("ROLLBACK") + READY_I)
    assert out.finished  # type: ignore[attr-defined]
    guard.idle_ready(True)  # no report was made: no zero
    sent = _autocommit(guard)
    check = [body for t, body in frames(sent) if t == "P"][-1]
    assert b"pg_prepared_statements" in check and b"force_next_flush" not in check
    assert re.match(r"Q(CP)?BECSQ", "".join(t for t, _ in frames(sent)))  # a reading before it again

"""The MySQL row guard's pure parts (engines/mysql/session/guard.py): what it measures,
what it refuses before a statement runs, and its decision on what a statement changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dbsentry.engines.mysql.session import commands as c
from dbsentry.engines.mysql.session import events as e
from dbsentry.engines.mysql.session import guard as g
from dbsentry.engines.mysql.session.session import State
from dbsentry.engines.mysql.sql.facts import analyze
from dbsentry.engines.mysql.wire import constants as k
from dbsentry.engines.mysql.wire import generic as gw
from dbsentry.engines.mysql.wire import results as res
from dbsentry.engines.mysql.wire.packets import encode_packet

LIMITS = g.Limits(20, 0.5)
T = ("shop", "orders")


def catalog(**kw: object) -> g.Catalog:
    cat = g.Catalog()
    cat.tables[T] = (True, "BASE TABLE")
    for name, value in kw.items():
        setattr(cat, name, value)
    return cat


@pytest.mark.parametrize(
    ("sql", "guarded"),
    [
        ("UPDATE t SET v = 1 WHERE id > -1", True),
        ("DELETE a FROM a JOIN b ON a.id = b.id WHERE b.x = 1", True),
        ("INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE v = 1", True),
        ("REPLACE INTO t VALUES (1)", True),
        ("SELECT f(1)", True),  # a stored function may write
        ("CALL p()", True),
        ("SELECT 1", False),
        ("SELECT NOW()", False),
        ("PREPARE s FROM 'DELETE FROM t WHERE id = 1'", False),  # defines, runs nothing
    ],
)
def test_which_statements_run_under_the_guard(sql: str, guarded: bool) -> None:
    assert g.changes_rows(analyze(sql)[0]) is guarded


def test_plan_refuses_what_cannot_be_undone_or_counted() -> None:
    f = analyze("UPDATE orders SET v = 1 WHERE id = 1")
    cat = catalog()
    cat.tables[T] = (False, "BASE TABLE")
    assert "engine without transactions" in str(g.plan(cat, [T], f))
    cat.tables[T] = (True, "VIEW")
    assert "through a view" in str(g.plan(cat, [T], f))
    # code on a server holding a MyISAM table
    cat = catalog(triggers={T}, non_transactional=[("shop", "legacy")])
    assert "shop.legacy" in str(g.plan(cat, [T], f))
    # cascades the counts cannot see
    child = ("shop", "lines")
    cat = catalog(cascades=[g.Cascade(child, T, "SET NULL", "RESTRICT")])
    assert "ON DELETE SET NULL" in str(g.plan(cat, [T], analyze("DELETE FROM orders WHERE id = 1")))
    cat = catalog(cascades=[g.Cascade(child, T, "RESTRICT", "CASCADE")])
    assert "ON UPDATE CASCADE" in str(g.plan(cat, [T], f))
    # ... which a DELETE does not set off
    assert isinstance(g.plan(cat, [T], analyze("DELETE FROM orders WHERE id = 1")), g.Plan)


def test_plan_watches_every_table_a_delete_cascade_reaches() -> None:
    a, b, c, other = ("shop", "a"), ("shop", "b"), ("shop", "c"), ("shop", "other")
    cat = catalog(cascades=[g.Cascade(a, T, "CASCADE", "RESTRICT"), g.Cascade(b, a, "CASCADE", "NO ACTION"),
                            g.Cascade(c, other, "CASCADE", "RESTRICT")])  # fmt: skip
    p = g.plan(cat, [T], analyze("DELETE FROM orders WHERE id = 1"))
    assert isinstance(p, g.Plan) and p.children == (a, b) and p.tables == (T,)
    # a trigger may delete anywhere: every cascade child is watched
    cat.triggers = {T}
    p = g.plan(cat, [T], analyze("DELETE FROM orders WHERE id = 1"))
    assert isinstance(p, g.Plan) and p.children == (a, b, c)


def test_snapshot_sql_quotes_names_and_bounds_counts() -> None:
    p = g.Plan((("sh`op", "li'nes"),), (T,))
    sql = g.snapshot_sql(p, True, LIMITS, before=True)
    assert "information_schema.SESSION_STATUS" in sql and "`sh``op`.`li'nes`" in sql
    assert "LIMIT 41)" in sql  # 20 / 0.5 + 1: a bigger table cannot reach the share
    assert "performance_schema.session_status" in g.snapshot_sql(p, False, LIMITS, before=False)
    assert "LIMIT" not in g.snapshot_sql(p, True, LIMITS, before=False)
    assert g.literal("a'b\\") == "'a''b\\\\'"


def _snap(upd: int, dele: int, children: tuple[int, ...] = (), tables: tuple[tuple[int, int], ...] = ()) -> g.Snapshot:
    return g.Snapshot(upd, dele, children, tables)


def test_judge_counts_handlers_cascades_and_the_reported_rows() -> None:
    p = g.Plan((("shop", "lines"),), ())
    before = _snap(100, 50, (40,))
    ok = g.judge(LIMITS, p, before, _snap(105, 50, (40,)))
    assert ok.ok and ok.changed == 5
    over = g.judge(LIMITS, p, before, _snap(100, 51, (15,)))
    assert not over.ok and over.changed == 26 and over.rule == g.RULE_ROWS
    assert over.message == "this statement would have changed 26 rows (limit 20, guardrails.max_rows_changed); it was rolled back"
    assert g.judge(LIMITS, p, before, _snap(100, 50, (40,)), reported=21).changed == 21
    with pytest.raises(ValueError, match="backwards"):
        g.judge(LIMITS, p, before, _snap(99, 50, (40,)))


def test_judge_share_of_a_table() -> None:
    p = g.Plan((), (T,))
    before = _snap(0, 0, (), ((30, 28),))
    refused = g.judge(LIMITS, p, before, _snap(0, 16))
    assert not refused.ok and refused.rule == g.RULE_FRACTION
    assert "16 rows, 53% of the 30 rows of shop.orders" in refused.message
    assert g.judge(LIMITS, p, before, _snap(0, 14)).ok
    assert g.judge(LIMITS, p, _snap(0, 0, (), ((3, 3),)), _snap(0, 3)).ok  # under min_rows_for_fraction
    # counted up to the cap: the estimate decides beyond it
    big = _snap(0, 0, (), ((41, 10_000),))
    assert g.judge(LIMITS, p, big, _snap(0, 20)).ok


def test_parse_info_and_snapshot_fail_on_surprises() -> None:
    cat = g.parse_info([[b"table", b"shop", b"orders", b"YES", b"BASE TABLE"], [b"fk", b"shop.l", b"shop.orders", b"CASCADE", b"RESTRICT"]])
    assert cat.tables == {T: (True, "BASE TABLE")} and cat.cascades[0].child == ("shop", "l")
    with pytest.raises(ValueError):
        g.parse_info([[b"what", b"", b"", b"", b""]])
    with pytest.raises(ValueError):
        g.parse_snapshot([b"1"], g.Plan((), ()), before=False)
    with pytest.raises(ValueError):
        g.parse_snapshot([b"1", None], g.Plan((), ()), before=False)
    assert g.parse_snapshot([b"1", b"2", b"3", b"4"], g.Plan((), (T,)), before=True) == g.Snapshot(1, 2, (), ((3, 4),))


def test_end_commands() -> None:
    assert g.end_sql(g.Mode.TRANSACTION, True) == (b"COMMIT",)
    assert g.end_sql(g.Mode.SAVEPOINT, False) == (b"ROLLBACK TO SAVEPOINT dbsentry_row_guard", b"RELEASE SAVEPOINT dbsentry_row_guard")


# ---------------------------------------------------------------- the bracket, without sockets


def _result(rows: list[tuple[bytes | None, ...]], width: int) -> Any:
    from test_mysql_session import CAPS, answer

    col = res.ColumnDefinition("c", k.ColumnType.VAR_STRING, charset=45, length=100)
    return answer([
        res.encode_column_count(res.ColumnCount(width), CAPS),
        *(res.encode_column_definition(col) for _ in range(width)),
        *(res.encode_text_row(res.TextRow(r)) for r in rows),
        gw.encode_ok(gw.OK(status=k.SERVER_STATUS_AUTOCOMMIT | k.SERVER_STATUS_IN_TRANS, header=0xFE), CAPS),
    ])  # fmt: skip


def _ok(status: int, affected: int = 0) -> Any:
    from test_mysql_session import CAPS, answer

    return answer([gw.encode_ok(gw.OK(affected, 0, status), CAPS)])


def _sent_sql(out: list[Any]) -> list[bytes]:
    from test_mysql_session import upstream_sent

    return [d[5:] for d in upstream_sent(out)]


@pytest.mark.parametrize("updated", [3, 2000])
def test_bracket_hides_its_own_answers_and_fixes_the_status(tmp_path: Path, updated: int) -> None:
    from test_mysql_session import CAPS, logged_in, packets

    s, _ = logged_in(tmp_path)
    out = s.handle(e.ClientData(encode_packet(b"\x03UPDATE t SET v = 1 WHERE id > -1", 0)[0]))
    assert len(out) == 1 and isinstance(out[0], c.AuditGate)
    assert _sent_sql(out[0].then)[0].startswith(b"SELECT 'table'")  # the catalog first
    out = s.handle(_result([(b"table", b"shop", b"t", b"YES", b"BASE TABLE")], 5))
    assert _sent_sql(out) == [b"START TRANSACTION"] and packets(out) == []
    out = s.handle(_ok(k.SERVER_STATUS_AUTOCOMMIT | k.SERVER_STATUS_IN_TRANS))
    assert _sent_sql(out)[0].startswith(b"SELECT (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS")
    out = s.handle(_result([(b"10", b"5", b"41", b"5000")], 4))
    assert _sent_sql(out) == [b"UPDATE t SET v = 1 WHERE id > -1"]
    out = s.handle(_ok(k.SERVER_STATUS_AUTOCOMMIT | k.SERVER_STATUS_IN_TRANS, affected=updated))
    assert _sent_sql(out)[0].startswith(b"SELECT (SELECT") and packets(out) == []
    out = s.handle(_result([(str(10 + updated).encode(), b"5")], 2))
    assert _sent_sql(out) == ([b"COMMIT"] if updated < 1000 else [b"ROLLBACK"])
    out = s.handle(_ok(k.SERVER_STATUS_AUTOCOMMIT))
    (only,) = packets(out)  # the client sees one answer: its statement's, or the refusal
    if updated < 1000:
        ok = gw.decode_ok(only, CAPS)
        assert ok.affected_rows == 3 and ok.status & k.SERVER_STATUS_AUTOCOMMIT and not ok.status & k.SERVER_STATUS_IN_TRANS
    else:
        err = gw.decode_err(only)
        assert (err.code, err.sqlstate) == (1227, "42000")
        assert err.message == "dbsentry: this statement would have changed 2000 rows (limit 1000, guardrails.max_rows_changed); it was rolled back"
        denied = [cmd.record for cmd in out if isinstance(cmd, c.Audit) and getattr(cmd.record, "decision", "") == "deny"]
        assert denied and denied[0].rules == ("guardrails.max_rows_changed",)
    assert s.state is State.READY
    sent = b"".join(cmd.data for cmd in out if isinstance(cmd, c.SendClient))
    assert sent[3] == 1  # the answer's sequence id follows the client's command


def test_reads_are_not_bracketed(tmp_path: Path) -> None:
    from test_mysql_session import logged_in

    s, _ = logged_in(tmp_path)
    query = encode_packet(b"\x03SELECT v FROM t WHERE id > -1", 0)[0]
    out = s.handle(e.ClientData(query))
    assert isinstance(out[0], c.AuditGate) and out[0].then == [c.SendUpstream(query)]


def test_lock_tables_is_not_released_by_the_guards_transaction(tmp_path: Path) -> None:
    """START TRANSACTION would release LOCK TABLES: outside a transaction a guarded write
    is refused while they may be held; UNLOCK TABLES lifts that."""
    from test_mysql_session import logged_in, packets

    s, _ = logged_in(tmp_path)
    s.approvals = True
    lock = encode_packet(b"\x03LOCK TABLES t WRITE", 0)[0]
    s.handle(e.ClientData(lock))  # in production it needs an approval
    out = s.handle(e.ApprovalAnswered("apr_lock"))
    assert isinstance(out[0], c.AuditGate) and out[0].then == [c.SendUpstream(lock)]
    s.handle(_ok(k.SERVER_STATUS_AUTOCOMMIT))
    out = s.handle(e.ClientData(encode_packet(b"\x03UPDATE t SET v = 1 WHERE id = 1", 0)[0]))
    err = gw.decode_err(packets(out)[-1])
    assert err.code == 1227 and "release the session's LOCK TABLES" in err.message
    unlock = encode_packet(b"\x03UNLOCK TABLES", 0)[0]
    out = s.handle(e.ClientData(unlock))
    assert isinstance(out[0], c.AuditGate) and out[0].then == [c.SendUpstream(unlock)]
    s.handle(_ok(k.SERVER_STATUS_AUTOCOMMIT))
    out = s.handle(e.ClientData(encode_packet(b"\x03UPDATE t SET v = 1 WHERE id = 1", 0)[0]))
    assert isinstance(out[0], c.AuditGate) and _sent_sql(out[0].then)[0].startswith(b"SELECT 'table'")

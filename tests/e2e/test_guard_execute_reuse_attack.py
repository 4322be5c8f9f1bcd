# ruff: noqa: F811  (the fixtures imported from test_guardrails_effect are parameters here)
"""Attacks on the row guard's reuse of its last reading by an Execute "in the client's open
explicit block" (``_Chunk.in_block``: the last ReadyForQuery said ``T`` and no Query or
Execute awaits its answer; a bracket that ran so leaves its "after" as the next "before").

The session's ``txn_status`` is what the last ReadyForQuery said.  An extended-protocol
``COMMIT`` (or ``ROLLBACK``, ``END``, ``ABORT``) ends the block at its Execute, and no
ReadyForQuery comes until the client sends a Sync: once that Execute is answered (a Flush),
or when it is earlier in the same write, nothing is in flight and the status still says
``T``.  The statements after it run in an implicit transaction, which the next Sync
commits; the backend then reports its statistics (at most once a second) and its row
counters restart, so a reading taken before that Sync is too high for an Execute pipelined
after it: the Execute is undercounted by it (or, for a small statement, found "going
backwards" and refused).

Every test checks the table directly.  Tests that fail show an attack that succeeds.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from psycopg import pq
from test_guard_baseline_attack import _extended, _msg, _notes, _raw_session
from test_guardrails_effect import BIG_ROWS, VICTIM_ROWS, Env, big, env, intact, victim  # noqa: F401

from support.guard_clients import read_until as _read_until

pytestmark = pytest.mark.e2e

SYNC = _msg(b"S", b"")
FLUSH = _msg(b"H", b"")


def _errors(answers: list[tuple[bytes, bytes]]) -> list[str]:
    return [body.decode(errors="replace") for t, body in answers if t == b"E"]


def _tags(answers: list[tuple[bytes, bytes]]) -> list[str]:
    """CommandComplete tags and ReadyForQuery states, in order."""
    return [body.rstrip(b"\0").decode() for t, body in answers if t in (b"C", b"Z")]


def _in_block(env: Env, pause: float = 1.2) -> Any:
    """A raw session through the proxy in an explicit block the proxy saw open (``T``);
    ``pause``: the backend reports its statistics at most once a second."""
    tls = _raw_session(env)
    tls.sendall(_msg(b"Q", b"begin\0"))
    _read_until(tls, b"Z")
    time.sleep(pause)
    return tls


def _updates(v: str, starts: tuple[int, ...] = (1, 10, 19), width: int = 9) -> bytes:
    """Allowed updates (fewer than 10 rows each: no fraction limit applies)."""
    return b"".join(_extended(f"update {v} set note = note where id between {a} and {a + width - 1}") for a in starts)


def _wipe(v: str) -> bytes:
    return _extended(f"update {v} set note = 'pwned' where id > -1")


def _report(answers: list[tuple[bytes, bytes]]) -> str:
    return f"{_tags(answers)} {_errors(answers)}"


# ---------------------------------------------------------------- FINDING: a block ended by an Execute


def test_commit_by_execute_then_sync_then_wipe_in_one_write(env: Env, victim: str) -> None:
    """BEGIN (answered: ``T``); then in one write: Execute COMMIT, three 9-row UPDATEs,
    Sync, an UPDATE of all 40 rows, Sync.  The UPDATEs run in the implicit transaction after
    the COMMIT, the proxy still thinks ``in_block``: their last reading (27 updated) is the
    wipe's "before"; the Sync commits and the counters restart, so the wipe measures
    40 - 27 = 13 rows (< 50%) and is committed."""
    v = victim
    tls = _in_block(env)
    try:
        tls.sendall(_extended("commit") + _updates(v) + SYNC + _wipe(v) + SYNC)
        answers = _read_until(tls, b"Z", 2)
    finally:
        tls.close()
    notes = _notes(env, v)
    assert notes.get("pwned", 0) < VICTIM_ROWS // 2, f"overwritten: {notes} {_report(answers)}"
    intact(env)


@pytest.mark.parametrize("ender", ["commit", "rollback"])  # END and ABORT: the same
def test_block_ended_by_execute_answered_before_the_sync(env: Env, victim: str, ender: str) -> None:
    """The same across writes: the ending Execute answered through a Flush (no
    ReadyForQuery), then the UPDATEs (Flush), then Sync and the wipe."""
    v = victim
    tls = _in_block(env)
    try:
        tls.sendall(_extended(ender) + FLUSH)
        answers = _read_until(tls, b"C")
        tls.sendall(_updates(v) + FLUSH)
        answers += _read_until(tls, b"C", 3)
        tls.sendall(SYNC + _wipe(v) + SYNC)
        answers += _read_until(tls, b"Z", 2)
    finally:
        tls.close()
    notes = _notes(env, v)
    assert notes.get("pwned", 0) < VICTIM_ROWS // 2, f"overwritten: {notes} {_report(answers)}"
    intact(env)


def test_over_max_rows_after_commit_by_execute(env: Env, big: str) -> None:
    """The absolute limit: two 700-row updates (each allowed) after the COMMIT leave 1,400;
    all 1,500 rows are then updated and measured as 100 (in a CTE, so that no
    CommandComplete reports the rows)."""
    tls = _in_block(env)
    try:
        wipe = f"with u as (update {big} set note = 'pwned' where id > -1 returning 1) select count(*) from u"
        tls.sendall(_extended("commit") + _updates(big, (1, 701), 700) + SYNC + _extended(wipe) + SYNC)
        answers = _read_until(tls, b"Z", 2)
    finally:
        tls.close()
    notes = _notes(env, big)
    assert notes.get("pwned", 0) <= 1000, f"{notes.get('pwned')} of {BIG_ROWS} rows overwritten: {_report(answers)}"
    intact(env, big, BIG_ROWS)


def test_libpq_pipeline_after_a_manual_begin(env: Env, victim: str) -> None:
    """The same through an ordinary driver: psycopg's libpq connection in pipeline mode
    (what psycopg's own Pipeline does, without waiting for results at each sync)."""
    v = victim
    out = []
    with psycopg.connect(env.proxy.dsn(), autocommit=True) as conn:
        conn.execute("begin")
        time.sleep(1.2)
        pg = conn.pgconn
        pg.enter_pipeline_mode()
        for sql in ["commit"] + [f"update {v} set note = note where id between {a} and {a + 8}" for a in (1, 10, 19)]:
            pg.send_query_params(sql.encode(), None)
        pg.pipeline_sync()
        pg.send_query_params(f"update {v} set note = 'pwned' where id > -1".encode(), None)
        pg.pipeline_sync()
        syncs = 0
        while syncs < 2:
            r = pg.get_result()
            if r is None:
                continue
            syncs += r.status == pq.ExecStatus.PIPELINE_SYNC
            out.append(((r.command_status or b"").decode(), (r.error_message or b"").decode().strip()))
        pg.exit_pipeline_mode()
    notes = _notes(env, v)
    assert notes.get("pwned", 0) < VICTIM_ROWS // 2, f"overwritten: {notes} {out}"
    intact(env)


def test_no_false_refusal_after_commit_by_execute(env: Env, victim: str) -> None:
    """The other side: a 1-row UPDATE after the Sync starts from the 9-row reading taken
    before it; the restarted counters then "went backwards" and legitimate work is refused."""
    v = victim
    tls = _in_block(env)
    try:
        one = _extended(f"update {v} set note = note where id = 1")
        tls.sendall(_extended("commit") + _updates(v, (1,)) + SYNC + one + SYNC)
        answers = _read_until(tls, b"Z", 2)
    finally:
        tls.close()
    assert not _errors(answers), _report(answers)
    assert _tags(answers) == ["COMMIT", "UPDATE 9", "I", "UPDATE 1", "I"], _report(answers)


# ---------------------------------------------------------------- FINDING (older): the same stale status, no reuse needed


def test_query_after_commit_by_execute_runs_as_if_in_the_block(env: Env, victim: str) -> None:
    """Execute COMMIT, Flush (answered, no ReadyForQuery), then a simple Query wiping the
    table.  The guarded Query waits for an idle upstream, then takes ``T`` for an open block
    (Mode.BLOCK): it measures the wipe and "refuses" it by failing a block that no longer
    exists; the Query committed itself.  The client is told "it was rolled back"."""
    v = victim
    tls = _in_block(env, 0)
    try:
        tls.sendall(_extended("commit") + FLUSH)
        answers = _read_until(tls, b"C")
        tls.sendall(_msg(b"Q", f"update {v} set note = 'pwned' where id > -1\0".encode()))
        answers += _read_until(tls, b"Z")
    finally:
        tls.close()
    notes = _notes(env, v)
    assert notes.get("pwned", 0) < VICTIM_ROWS // 2, f"overwritten: {notes} {_report(answers)}"
    intact(env)


def test_call_of_a_committing_procedure_after_commit_by_execute(env: Env, victim: str) -> None:
    """A CALL is let through in extended mode only "inside BEGIN ... COMMIT" (the status is
    ``T`` and nothing is in flight): after an Execute COMMIT answered through a Flush it is
    not, and a procedure that COMMITs by itself commits its wipe before any measurement."""
    v = victim
    tls = _in_block(env, 0)
    try:
        tls.sendall(_extended("commit") + FLUSH)
        answers = _read_until(tls, b"C")
        tls.sendall(_extended(f"call {env.s}.wipe_commit(0)") + SYNC)
        answers += _read_until(tls, b"Z")
    finally:
        tls.close()
    left = sum(_notes(env, v).values())
    assert left == VICTIM_ROWS, f"{VICTIM_ROWS - left} rows deleted: {_report(answers)}"
    intact(env)


# ---------------------------------------------------------------- sequences that held


def test_reuse_in_a_real_block_with_savepoints_and_syncs(env: Env, victim: str) -> None:
    """Inside the block, with Syncs, savepoints (released, rolled back to) and plain reads
    between the statements: every allowed UPDATE passes, the wipe is refused, the block
    fails."""
    v = victim
    tls = _in_block(env)
    try:
        batch = _updates(v, (1,)) + SYNC + _extended("savepoint a") + _updates(v, (10,)) + _extended("rollback to a")
        batch += _extended("select 1") + SYNC + _updates(v, (19,)) + _extended("release a") + SYNC
        batch += _extended("savepoint b") + _updates(v, (28,)) + SYNC + _wipe(v) + SYNC
        tls.sendall(batch)
        answers = _read_until(tls, b"Z", 5)
        tls.sendall(_msg(b"Q", b"commit\0"))
        answers += _read_until(tls, b"Z")
    finally:
        tls.close()
    errors = _errors(answers)
    assert len(errors) == 1 and "dbsentry" in errors[0], _report(answers)
    assert _tags(answers)[-2:] == ["ROLLBACK", "I"], _report(answers)
    intact(env)


def test_reuse_after_deallocate_all_and_a_suspended_portal(env: Env, victim: str) -> None:
    """DEALLOCATE ALL drops the guard's statistics statement; a portal run 5 rows at a time;
    the allowed UPDATEs around them pass and the wipe is refused."""
    v = victim
    tls = _in_block(env)
    try:
        portal = (
            _msg(b"P", f"\0select id from {v}\0".encode() + b"\0\0")
            + _msg(b"B", b"cur\0\0" + b"\0\0\0\0\0\0")
            + _msg(b"E", b"cur\0" + (5).to_bytes(4, "big"))
            + _msg(b"E", b"cur\0" + (5).to_bytes(4, "big"))
        )
        tls.sendall(_updates(v, (1,)) + _extended("deallocate all") + _updates(v, (10,)) + SYNC)
        answers = _read_until(tls, b"Z")
        tls.sendall(portal + _updates(v, (19,)) + FLUSH)
        answers += _read_until(tls, b"C")
        tls.sendall(_wipe(v) + SYNC + _msg(b"Q", b"rollback\0"))
        answers += _read_until(tls, b"Z", 2)
    finally:
        tls.close()
    errors = _errors(answers)
    assert len(errors) == 1 and "dbsentry" in errors[0], _report(answers)
    assert [t for t in _tags(answers) if t.startswith("UPDATE")] == ["UPDATE 9"] * 3, _report(answers)
    intact(env)


def test_commit_by_query_in_the_same_write_holds(env: Env, victim: str) -> None:
    """A simple Query COMMIT ahead of them instead: its ReadyForQuery ``I`` comes before the
    UPDATEs' readings, and the session forgets the reading on it."""
    v = victim
    tls = _in_block(env)
    try:
        tls.sendall(_msg(b"Q", b"commit\0") + _updates(v) + SYNC + _wipe(v) + SYNC)
        answers = _read_until(tls, b"Z", 3)
    finally:
        tls.close()
    notes = _notes(env, v)
    assert notes.get("pwned", 0) == 0, f"overwritten: {notes} {_report(answers)}"
    assert any("dbsentry" in e for e in _errors(answers)), _report(answers)
    intact(env)

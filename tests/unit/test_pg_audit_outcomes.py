"""The outcomes SessionAudit records (PostgreSQL): a statement's completion says what the
server did, including a rollback of the implicit transaction it ran in, which the
statement's own CommandComplete does not tell."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.records import CompletionRecord, StatementRecord
from dbsentry.engines.postgres.session.auditing import SessionAudit
from dbsentry.identity.model import Identity

ALICE = Identity("alice@example.com", frozenset({"dev"}), "human", "t1", "token")
ROLLED_BACK = "implicit transaction was rolled back"


def audit() -> SessionAudit:
    return SessionAudit(AuditConfig(), "s1", ALICE, "prod", "production", "app", "127.0.0.1", None)


def sent(a: SessionAudit, command: str | None, cycle: int, *, writes: bool = True, extended: bool = False) -> StatementRecord:
    rec = StatementRecord(session_id="s1", identity=ALICE.name, identity_kind="human", statement=str(command), decision="allow", command=command)
    a.expect(rec, cycle, writes=writes, extended=extended)
    return rec


def outcome(records: list[CompletionRecord], rec: StatementRecord) -> CompletionRecord:
    (done,) = [r for r in records if r.statement_id == rec.id]
    return done


def rolled_back(done: CompletionRecord) -> bool:
    return done.error is not None and ROLLED_BACK in done.error


def test_autocommit_write_completes_ok_at_its_ready() -> None:
    a = audit()
    rec = sent(a, "INSERT", 1)
    assert a.command_complete("INSERT 0 1") == []  # its transaction's end is not known yet
    done = outcome(a.ready(1, "I"), rec)
    assert done.error is None and done.sqlstate is None and done.rows == 1


def test_error_at_the_implicit_commit_rolls_back_the_write() -> None:
    """Parse/Bind/Execute/Sync of an INSERT whose deferred constraint fails at the Sync."""
    a = audit()
    rec = sent(a, "INSERT", 1, extended=True)
    assert a.command_complete("INSERT 0 1") == []
    assert a.error("23505", 'duplicate key value violates unique constraint "d_fk"', 1) == []
    done = outcome(a.ready(1, "I"), rec)
    assert done.sqlstate == "23505" and done.rows == 1 and rolled_back(done)


def test_a_later_statements_error_rolls_back_the_earlier_write_of_its_string() -> None:
    a = audit()
    first, second = sent(a, "INSERT", 1), sent(a, "SELECT", 1, writes=False)
    got = [*a.command_complete("INSERT 0 1"), *a.error("22012", "division by zero", 1)]
    assert outcome(got, second).sqlstate == "22012"
    got += a.ready(1, "I")
    assert outcome(got, first).sqlstate == "22012" and rolled_back(outcome(got, first))


def test_a_read_is_recorded_as_it_ran_even_when_its_transaction_fails() -> None:
    """``SELECT 1; INSERT ...; SELECT 1/0``: the read's rows left; the INSERT is undone."""
    a = audit()
    read, ins = sent(a, "SELECT", 1, writes=False), sent(a, "INSERT", 1)
    sent(a, "SELECT", 1, writes=False)
    (done,) = a.command_complete("SELECT 1")
    assert done.statement_id == read.id and done.error is None and done.rows == 1
    assert a.command_complete("INSERT 0 1") == []
    got = [*a.error("22012", "division by zero", 1), *a.ready(1, "I")]
    assert rolled_back(outcome(got, ins))


def test_an_error_the_proxy_made_fails_the_transaction_too() -> None:
    """An INSERT, then a statement the proxy refused (it fails upstream as a marker)."""
    a = audit()
    ins = sent(a, "INSERT", 1, extended=True)
    a.command_complete("INSERT 0 1")
    a.failed("26000", "prepared statement is not known to dbsentry")
    assert rolled_back(outcome(a.ready(1, "I"), ins))


def test_the_next_cycle_starts_clean() -> None:
    a = audit()
    sent(a, "INSERT", 1)
    a.command_complete("INSERT 0 1")
    a.error("23505", "duplicate", 1)
    a.ready(1, "I")
    rec = sent(a, "INSERT", 2)
    a.command_complete("INSERT 0 1")
    assert outcome(a.ready(2, "I"), rec).error is None


def test_in_an_explicit_block_the_outcome_is_recorded_at_once() -> None:
    a = audit()
    a.ready(1, "T")  # BEGIN's ReadyForQuery
    rec = sent(a, "INSERT", 2)
    (done,) = a.command_complete("INSERT 0 1")
    assert done.statement_id == rec.id and done.error is None
    a.error("22012", "division by zero", 2)
    assert a.ready(2, "E") == []


def test_commit_inside_the_string_commits_what_ran_before_it() -> None:
    """``INSERT; COMMIT; INSERT; SELECT 1/0``: the first INSERT committed, the second ran in
    the implicit transaction the error rolled back."""
    a = audit()
    first, commit, second = sent(a, "INSERT", 1), sent(a, "COMMIT", 1), sent(a, "INSERT", 1)
    boom = sent(a, "SELECT", 1, writes=False)
    got = [*a.command_complete("INSERT 0 1")]
    got += a.command_complete("COMMIT")
    assert outcome(got, first).error is None and outcome(got, commit).error is None
    got += [*a.command_complete("INSERT 0 1"), *a.error("22012", "division by zero", 1), *a.ready(1, "I")]
    assert rolled_back(outcome(got, second)) and outcome(got, boom).sqlstate == "22012"


def test_a_block_ended_inside_the_string_leaves_the_rest_implicit() -> None:
    """In a block, ``COMMIT; INSERT; SELECT 1/0``: the INSERT after the COMMIT is undone."""
    a = audit()
    a.ready(1, "T")
    sent(a, "COMMIT", 2)
    ins = sent(a, "INSERT", 2)
    sent(a, "SELECT", 2, writes=False)
    got = [*a.command_complete("COMMIT"), *a.command_complete("INSERT 0 1"), *a.error("22012", "division by zero", 2)]
    got += a.ready(2, "I")
    assert rolled_back(outcome(got, ins))


def test_rollback_in_the_string_rolls_back_the_writes_before_it() -> None:
    a = audit()
    ins, rollback = sent(a, "INSERT", 1), sent(a, "ROLLBACK", 1)
    got = [*a.command_complete("INSERT 0 1"), *a.command_complete("ROLLBACK"), *a.ready(1, "I")]
    assert rolled_back(outcome(got, ins)) and outcome(got, ins).sqlstate is None
    assert outcome(got, rollback).error is None


def test_begin_in_the_string_makes_the_writes_before_it_part_of_the_block() -> None:
    a = audit()
    ins = sent(a, "INSERT", 1)
    sent(a, "BEGIN", 1)
    got = [*a.command_complete("INSERT 0 1"), *a.command_complete("BEGIN")]
    assert outcome(got, ins).error is None  # its fate is the block's COMMIT's
    assert a.ready(1, "T") == []


def test_a_failed_savepoint_ends_nothing() -> None:
    """``INSERT; SAVEPOINT sp`` outside a block: the SAVEPOINT fails (25P01), the INSERT is undone."""
    a = audit()
    ins, sp = sent(a, "INSERT", 1), sent(a, "SAVEPOINT", 1)
    got = [*a.command_complete("INSERT 0 1"), *a.error("25P01", "SAVEPOINT can only be used in transaction blocks", 1)]
    got += a.ready(1, "I")
    assert rolled_back(outcome(got, ins)) and outcome(got, sp).sqlstate == "25P01"


def test_a_procedure_on_the_extended_protocol_may_commit_by_itself() -> None:
    """Execute INSERT, Execute CALL (which may COMMIT, then fail), Sync: no rollback is
    claimed for the INSERT (which of them committed is not known)."""
    a = audit()
    ins = sent(a, "INSERT", 1, extended=True)
    sent(a, "CALL", 1, extended=True)
    got = [*a.command_complete("INSERT 0 1"), *a.error("P0001", "boom", 1), *a.ready(1, "I")]
    assert outcome(got, ins).error is None


def test_a_procedure_in_a_query_string_cannot_commit() -> None:
    """In a Query string of several statements PostgreSQL runs one block, in which a
    procedure cannot commit: ``INSERT; CALL p()`` failing undoes the INSERT."""
    a = audit()
    ins = sent(a, "INSERT", 1)
    sent(a, "CALL", 1)
    got = [*a.command_complete("INSERT 0 1"), *a.error("P0001", "boom", 1), *a.ready(1, "I")]
    assert rolled_back(outcome(got, ins))


def test_a_statement_of_unknown_command_may_have_committed() -> None:
    a = audit()
    unknown = sent(a, None, 1)
    ins = sent(a, "INSERT", 1)
    got = [*a.command_complete("SELECT 1"), *a.command_complete("INSERT 0 1"), *a.error("XX000", "boom", 1), *a.ready(1, "I")]
    assert outcome(got, ins).error is None and outcome(got, unknown).error is None


def test_session_end_before_the_ready_says_the_outcome_is_unknown() -> None:
    a = audit()
    rec = sent(a, "INSERT", 1)
    a.command_complete("INSERT 0 1")
    done = outcome(a.abandoned(), rec)
    assert done.error is not None and "outcome unknown" in done.error and done.rows == 1


_COMMANDS = ["INSERT", "UPDATE", "SELECT", "COMMIT", "ROLLBACK", "BEGIN", "SAVEPOINT", "CALL", "PREPARE TRANSACTION"]


@given(
    st.lists(st.tuples(st.sampled_from(_COMMANDS), st.booleans()), min_size=1, max_size=7),
    st.sampled_from(["I", "T", "E"]),
    st.booleans(),
)
def test_each_outcome_follows_the_transaction(cycle: list[tuple[str, bool]], before: str, error_after: bool) -> None:
    """One Query string (``cycle``: each statement and whether it fails), begun in
    transaction state ``before``, with or without an error after its statements (its
    implicit COMMIT failing): every statement is completed exactly once, and a write is
    recorded rolled back exactly when the transaction it ran in was rolled back."""
    a = audit()
    if before != "I":
        a.ready(0, before)
    recs: list[tuple[StatementRecord, str]] = []
    got: list[CompletionRecord] = []
    status, failed = before, False
    implicit: list[int] = []  # writes of the implicit transaction now open (indexes into recs)
    expected: dict[int, str] = {}
    for command, fails in cycle:
        rec = sent(a, command, 1, writes=command in ("INSERT", "UPDATE", "CALL"))
        i = len(recs)
        recs.append((rec, command))
        if failed:
            expected[i] = "skipped"
            continue
        fails = fails or (status == "E" and command not in ("COMMIT", "ROLLBACK"))
        if command == "SAVEPOINT" and status == "I":
            fails = True  # SAVEPOINT can only be used in transaction blocks
        if fails:
            got += a.error("22012", "boom", 1)
            expected[i] = "error"
            failed = True
            continue
        got += a.command_complete(command)
        expected[i] = "ok"
        if command in ("INSERT", "UPDATE", "CALL") and status == "I":
            implicit.append(i)
        elif command in ("COMMIT", "PREPARE TRANSACTION"):
            implicit, status = [], "I"
        elif command == "BEGIN":
            implicit, status = [], "T"
        elif command == "ROLLBACK":
            expected.update({j: "rolled" for j in implicit})
            implicit, status = [], "I"
    if error_after and not failed:
        got += a.error("23505", "at commit", 1)
        failed = True
    if failed and status == "I":
        expected.update({j: "rolled" for j in implicit})
    after = status if not failed else ("I" if status == "I" else "E")
    got += a.ready(1, after)
    assert sorted(r.statement_id for r in got) == sorted(rec.id for rec, _ in recs)
    for i, (rec, _) in enumerate(recs):
        done = outcome(got, rec)
        kind = "rolled" if rolled_back(done) else "skipped" if done.error and "not executed" in done.error else "error" if done.error else "ok"
        assert kind == expected[i], (i, cycle, before, error_after, done)

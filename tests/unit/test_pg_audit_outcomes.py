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


def audit() -> SessionAudit:
    return SessionAudit(AuditConfig(), "s1", ALICE, "prod", "production", "app", "127.0.0.1", None)


def sent(a: SessionAudit, command: str, cycle: int) -> StatementRecord:
    rec = StatementRecord(
        session_id="s1",
        identity=ALICE.name,
        identity_kind="human",
        statement=command,
        decision="allow",
        command=command,
    )
    a.expect(rec, cycle)
    return rec


def outcome(records: list[CompletionRecord | None], rec: StatementRecord) -> CompletionRecord:
    (done,) = [r for r in records if r is not None and r.statement_id == rec.id]
    return done


def test_autocommit_statement_completes_ok_at_its_ready() -> None:
    a = audit()
    rec = sent(a, "INSERT", 1)
    assert a.command_complete("INSERT 0 1") is None  # its transaction's end is not known yet
    done = outcome(list(a.ready(1, "I")), rec)
    assert done.error is None and done.sqlstate is None and done.rows == 1


def test_error_at_the_implicit_commit_rolls_back_the_statement() -> None:
    """Parse/Bind/Execute/Sync of an INSERT whose deferred constraint fails at the Sync."""
    a = audit()
    rec = sent(a, "INSERT", 1)
    assert a.command_complete("INSERT 0 1") is None
    assert a.error("23505", 'duplicate key value violates unique constraint "d_fk"', 1) is None
    done = outcome(list(a.ready(1, "I")), rec)
    assert done.sqlstate == "23505" and done.rows == 1
    assert done.error is not None and "implicit transaction was rolled back" in done.error


def test_a_later_statements_error_rolls_back_the_earlier_one_of_its_string() -> None:
    a = audit()
    first, second = sent(a, "INSERT", 1), sent(a, "SELECT", 1)
    got: list[CompletionRecord | None] = [
        a.command_complete("INSERT 0 1"),
        a.error("22012", "division by zero", 1),
    ]
    assert outcome(got, second).sqlstate == "22012"
    got += a.ready(1, "I")
    assert outcome(got, first).sqlstate == "22012"


def test_the_next_cycle_starts_clean() -> None:
    a = audit()
    sent(a, "INSERT", 1)
    a.command_complete("INSERT 0 1")
    a.error("23505", "duplicate", 1)
    a.ready(1, "I")
    rec = sent(a, "INSERT", 2)
    a.command_complete("INSERT 0 1")
    done = outcome(list(a.ready(2, "I")), rec)
    assert done.error is None


def test_a_read_is_recorded_as_it_ran_even_when_its_transaction_fails() -> None:
    """``SELECT 1; INSERT ...; SELECT 1/0``: the read's rows left; the INSERT is undone."""
    a = audit()
    read = StatementRecord(session_id="s1", identity=ALICE.name, identity_kind="human", statement="SELECT 1", decision="allow", command="SELECT", statement_class="READ")
    a.expect(read, 1)
    ins = sent(a, "INSERT", 1)
    sent(a, "SELECT", 1)
    done = a.command_complete("SELECT 1")
    assert done is not None and done.statement_id == read.id and done.error is None and done.rows == 1
    assert a.command_complete("INSERT 0 1") is None
    got = [a.error("22012", "division by zero", 1), *a.ready(1, "I")]
    assert outcome(got, ins).sqlstate == "22012"


def test_in_an_explicit_block_the_outcome_is_recorded_at_once() -> None:
    a = audit()
    a.ready(1, "T")  # BEGIN's ReadyForQuery
    rec = sent(a, "INSERT", 2)
    done = a.command_complete("INSERT 0 1")
    assert done is not None and done.statement_id == rec.id and done.error is None
    a.error("22012", "division by zero", 2)
    assert a.ready(2, "E") == []


def test_transaction_control_in_the_cycle_keeps_each_outcome() -> None:
    """``INSERT; COMMIT; SELECT 1/0``: the COMMIT committed the INSERT before the error."""
    a = audit()
    ins, commit = sent(a, "INSERT", 1), sent(a, "COMMIT", 1)
    boom = sent(a, "SELECT", 1)
    a.command_complete("INSERT 0 1")
    a.command_complete("COMMIT")
    got: list[CompletionRecord | None] = [a.error("22012", "division by zero", 1), *a.ready(1, "I")]
    assert outcome(got, ins).error is None and outcome(got, commit).error is None
    assert outcome(got, boom).sqlstate == "22012"


def test_a_statement_of_unknown_command_keeps_each_outcome() -> None:
    """A statement whose command the proxy does not know (a FunctionCall) may have
    committed: no rollback is claimed for the cycle."""
    a = audit()
    rec = StatementRecord(
        session_id="s1",
        identity=ALICE.name,
        identity_kind="human",
        statement="<FunctionCall>",
        decision="allow",
    )
    a.expect(rec, 1)
    ins = sent(a, "INSERT", 1)
    a.command_complete("SELECT 1")
    a.command_complete("INSERT 0 1")
    got = [a.error("XX000", "boom", 1), *a.ready(1, "I")]
    assert outcome(got, ins).error is None


def test_session_end_before_the_ready_says_the_outcome_is_unknown() -> None:
    a = audit()
    rec = sent(a, "INSERT", 1)
    a.command_complete("INSERT 0 1")
    done = outcome(list(a.abandoned()), rec)
    assert done.error is not None and "outcome unknown" in done.error and done.rows == 1


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["INSERT", "UPDATE", "SELECT", "COMMIT", "CALL", "BEGIN"]),
            st.booleans(),
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from(["I", "T", "E"]),
    st.booleans(),
)
def test_every_statement_gets_exactly_one_completion(
    cycle: list[tuple[str, bool]], before: str, error_after: bool
) -> None:
    """Whatever a cycle holds, each statement forwarded is completed exactly once by its
    ReadyForQuery; a rollback is claimed only for an idle-to-idle cycle with an error and no
    transaction control that ran; and then it is claimed for every statement that succeeded."""
    a = audit()
    if before != "I":
        a.ready(0, before)
    recs = []
    got: list[CompletionRecord | None] = []
    failed = controls = False
    for command, fails in cycle:
        rec = sent(a, command, 1)
        recs.append(rec)
        if failed:
            continue  # skipped after the error: completed by the ReadyForQuery
        controls = controls or command in ("COMMIT", "CALL", "BEGIN")  # it ran (or failed running)
        if fails:
            got.append(a.error("22012", "division by zero", 1))
            failed = True
        else:
            got.append(a.command_complete(f"{command} 1"))
    if error_after and not failed:
        got.append(a.error("23505", "at commit", 1))
        failed = True
    after = "I" if before == "I" else ("E" if failed else before)
    got += a.ready(1, after)
    done = [r for r in got if r is not None]
    assert sorted(r.statement_id for r in done) == sorted(r.id for r in recs)
    claimed = [
        r for r in done if r.error is not None and "implicit transaction was rolled back" in r.error
    ]
    if claimed:
        assert before == "I" and failed and not controls
    if before == "I" and failed and not controls:
        assert all(r.error is not None for r in done)  # none of them is recorded ok

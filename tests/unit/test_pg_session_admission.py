"""The unit of all-or-none admission is the pipeline segment up to its Sync (or Flush),
whatever the reads it arrives in.

A stand-in for the shell admits each ``AuditGate`` as the proxy does
(``ApprovalStore.consume_all``: every statement that needs approval has its own, and
they are used together, or none is used and the gate is refused with ``HeldRefused``).
The same pipeline, split at every byte and at random places, must give the same gates,
the same refusals naming each statement's approval, and use up no approval unless the
whole segment is admitted.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.records import CompletionRecord, StatementRecord
from dbsentry.config import parse_config
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import (
    ClientClosed,
    ClientData,
    HeldRefused,
    PasswordVerified,
)
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.engines.postgres.session.pg import ClientInfo, Session
from dbsentry.engines.postgres.session.upstream import UpstreamReady
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m
from dbsentry.identity.model import Identity
from dbsentry.policy import parse_policy
from support.playbook import frames

POLICY = """
rules:
  - name: ledger-needs-a-dba
    match: {tables: [ledger]}
    action: require_approval
    approvers: [dba]
    message: changes to the ledger need a DBA
"""
ALICE = Identity("alice@example.com", frozenset({"eng"}), "human", "tok-a", "token")
FIRST = "UPDATE ledger SET balance = balance + 1 WHERE id = 1"
SECOND = "UPDATE ledger SET balance = balance + 2 WHERE id = 2"


class NoGrants:
    """Approvals are on; nobody holds a just-in-time grant."""

    def effective_identity(self, identity: Identity) -> Identity:
        return identity

    def connection_granted(self, identity: str, connection: str) -> bool:
        return False


def ready_session(limit: int | None = None) -> Session:
    limits = {"limits": {"max_message_bytes": limit}} if limit is not None else {}
    config = parse_config(
        {"connections": {"app": {"database": "app_db", "user": "svc", "environment": "production"}}, **limits},
        Path("."),
    )
    s = Session(
        config,
        ClientInfo("203.0.113.9:5000", tls=True),
        7,
        b"key!",
        governor=Governor(parse_policy(POLICY)),
        audit_config=AuditConfig(),
        approvals=NoGrants(),
    )
    s.handle(ClientData(codec.encode_startup((("user", ALICE.name), ("database", "app")))))
    s.handle(ClientData(codec.encode_password("tok")))
    s.handle(PasswordVerified(ALICE))
    s.handle(UpstreamReady(b"", {}, 1, b"up!!", "I"))
    return s


def statement(sql: str) -> bytes:
    """One statement of a pipeline, as psycopg sends it in pipeline mode."""
    return (
        codec.encode_parse(m.Parse("", sql))
        + codec.encode_bind(m.Bind("", ""))
        + codec.frame(b"D", b"P\x00")
        + codec.encode_execute(m.Execute(""))
    )


# A pipeline: a plain SELECT, the two statements that need approval, one Sync.
PIPELINE = statement("SELECT 1") + statement(FIRST) + statement(SECOND) + codec.SYNC


@dataclass
class Shell:
    """Admits gates all or none, like the proxy (``ClientConnection._approve``)."""

    session: Session
    approved: set[str]  # statements whose approval is granted and unused
    used: list[str] = field(default_factory=list)
    gates: list[tuple[tuple[str, ...], str | None]] = field(default_factory=list)  # (statements, refusal)
    sent: list[bytes] = field(default_factory=list)

    def feed(self, data: bytes) -> None:
        self.run(self.session.handle(ClientData(data)))

    def run(self, commands: list[c.Command]) -> None:
        for cmd in commands:
            if isinstance(cmd, c.SendUpstream):
                self.sent.append(cmd.data)
            elif isinstance(cmd, c.AuditGate):
                self.gate(cmd)
            elif isinstance(cmd, c.SendClient):
                raise AssertionError(f"unexpected answer to the client: {cmd.data!r}")

    def gate(self, gate: c.AuditGate) -> None:
        asks = tuple(a.sql for a in gate.approvals)
        if not asks:  # only waits for its audit records
            self.run(gate.then)
            return
        missing = [sql for sql in asks if sql not in self.approved]
        if not missing:
            self.used.extend(asks)
            self.approved.difference_update(asks)
            self.gates.append((asks, None))
            self.run(gate.then)
            return
        refusal = "dbsentry: needs approval: " + "; ".join(f"request for {sql!r}" for sql in missing)
        self.gates.append((asks, refusal))
        self.run(self.session.handle(HeldRefused(gate.frames, gate.records, "42501", refusal)))


def admit(pieces: list[bytes], approved: set[str]) -> Shell:
    shell = Shell(ready_session(), set(approved))
    for piece in pieces:
        shell.feed(piece)
    return shell


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


ONE_PIECE = {
    frozenset(): admit([PIPELINE], set()),
    frozenset({FIRST}): admit([PIPELINE], {FIRST}),
    frozenset({FIRST, SECOND}): admit([PIPELINE], {FIRST, SECOND}),
}


def test_in_one_piece_the_segment_is_one_gate() -> None:
    refused = ONE_PIECE[frozenset({FIRST})]
    assert refused.used == []
    ((asks, refusal),) = refused.gates
    assert asks == (FIRST, SECOND)
    assert refusal is not None and repr(SECOND) in refusal and repr(FIRST) not in refusal
    admitted = ONE_PIECE[frozenset({FIRST, SECOND})]
    assert admitted.used == [FIRST, SECOND] and admitted.gates == [((FIRST, SECOND), None)]
    assert b"".join(admitted.sent) == PIPELINE  # forwarded as sent, once
    refused_executes = [body for t, body in upstream(refused) if t == "E"]
    assert all(body.startswith(b"<refused>") for body in refused_executes)  # none runs


def upstream(shell: Shell) -> list[tuple[str, bytes]]:
    """What reached the upstream, frame by frame; a refused statement's marker (named
    after a random prefix and a counter) as the same word."""
    return [(t, re.sub(rb"dbsentry refused statement [0-9a-f]+-[0-9]+", b"<refused>", body)) for t, body in frames(b"".join(shell.sent))]


def assert_same_outcome(pieces: list[bytes]) -> None:
    for approved, whole in ONE_PIECE.items():
        got = admit(pieces, set(approved))
        assert got.gates == whole.gates, pieces
        assert got.used == whole.used, pieces
        # The same frames reach the upstream, each once, and the Executes that need approval
        # the same way: as sent when admitted, as markers that fail when refused.  (The
        # SELECT before them may run when it arrived apart: it needs no approval, and the
        # refusal after it rolls its implicit transaction back.)
        sent, expected = upstream(got), upstream(whole)
        assert [t for t, _ in sent] == [t for t, _ in expected], pieces
        assert [b for t, b in sent if t == "E"][1:] == [b for t, b in expected if t == "E"][1:], pieces


@pytest.mark.parametrize("at", range(1, len(PIPELINE)))
def test_split_at_every_byte_the_segment_is_still_one_gate(at: int) -> None:
    assert_same_outcome([PIPELINE[:at], PIPELINE[at:]])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(PIPELINE) - 1), max_size=12))
def test_split_anywhere_the_segment_is_still_one_gate(cuts: list[int]) -> None:
    assert_same_outcome(split(PIPELINE, cuts))


def test_a_flush_ends_the_segment() -> None:
    """Flush asks the server for what it has: what came before it is admitted then."""
    first = statement(FIRST) + codec.FLUSH
    shell = Shell(ready_session(), {FIRST, SECOND})
    shell.feed(first)
    assert shell.gates == [((FIRST,), None)] and b"".join(shell.sent) == first
    shell.feed(statement(SECOND) + codec.SYNC)
    assert shell.gates == [((FIRST,), None), ((SECOND,), None)]


def test_what_ends_before_the_held_statement_goes_on() -> None:
    """A segment that ended (its Sync arrived) is forwarded at once, even when the next
    segment's statement that needs approval waits for its Sync: the client may wait for
    the first answer before it sends the second Sync."""
    done = statement("SELECT 1") + codec.SYNC
    execute = codec.encode_execute(m.Execute(""))
    shell = Shell(ready_session(), {FIRST})
    shell.feed(done + statement(FIRST))
    # What comes before the Execute (Parse, Bind, Describe) runs nothing: it goes too.
    assert b"".join(shell.sent) == done + statement(FIRST)[: -len(execute)] and shell.gates == []
    shell.feed(codec.SYNC)
    assert shell.gates == [((FIRST,), None)]
    assert b"".join(shell.sent) == done + statement(FIRST) + codec.SYNC


def test_what_is_held_is_bounded() -> None:
    """A segment that does not end within limits.max_message_bytes fails closed."""
    shell = Shell(ready_session(limit=4096), {FIRST})
    shell.feed(statement(FIRST))
    filler = statement("SELECT 1")
    got: list[c.Command] = []
    for _ in range(4096 // len(filler) + 2):
        got = shell.session.handle(ClientData(filler))
        if got:
            break
    (fatal,) = [cmd for cmd in got if isinstance(cmd, c.SendClient)]
    assert b"54000" in fatal.data and b"Sync" in fatal.data
    assert any(isinstance(cmd, c.CloseClient) for cmd in got)
    assert shell.used == [] and not any(isinstance(cmd, c.AuditGate) for cmd in got)


@pytest.mark.parametrize("goodbye", ["terminate", "close"])
def test_a_segment_the_client_leaves_unfinished_never_runs(goodbye: str) -> None:
    """Terminate or a closed socket before the Sync: what was held is not forwarded, no
    approval is used, and the audit trail records the held statement as not executed."""
    shell = Shell(ready_session(), {FIRST})
    shell.feed(statement(FIRST))
    got = shell.session.handle(ClientData(codec.TERMINATE) if goodbye == "terminate" else ClientClosed())
    records = [cmd.record for cmd in got if isinstance(cmd, c.Audit)]
    (statement_record,) = [r for r in records if isinstance(r, StatementRecord)]
    assert statement_record.statement == FIRST
    (completion,) = [r for r in records if isinstance(r, CompletionRecord) and r.statement_id == statement_record.id]
    assert completion.error is not None and "not executed" in completion.error and "Sync" in completion.error
    assert shell.used == [] and shell.gates == []
    assert not any(isinstance(cmd, c.SendUpstream | c.AuditGate) for cmd in got)

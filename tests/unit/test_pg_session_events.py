"""The session's one entry point: typed events in (``session/events.py``), commands out,
through ``Session.handle`` and nothing else."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Literal, cast, get_args

import pytest
from test_guard import READY_T, ROW_DESC, after_answer, cc, data_row, stats_row

from dbsentry.audit.config import AuditConfig
from dbsentry.config import parse_config
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session import pg
from dbsentry.engines.postgres.session.events import (
    AuditFailed,
    ClientClosed,
    ClientData,
    ClientTLSStarted,
    Event,
    GuardApprovalAnswered,
    HeldRefused,
    LoginWaitTimedOut,
    PasswordVerified,
    StartupTimedOut,
    UpstreamClosed,
    UpstreamData,
    UpstreamFailed,
    UpstreamReady,
    WaitedLoginEnded,
)
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.engines.postgres.session.pg import AUDIT_UNAVAILABLE, ClientInfo, Session, State
from dbsentry.engines.postgres.wire import codec
from dbsentry.identity.model import Identity
from support.playbook import Playbook, error_fields, frames

ANN = Identity("ann@example.com", frozenset({"eng"}), "human", "t", "token")
READY = UpstreamReady(b"", {}, 42, b"abcd", "I")

# One of each event.  A new event type without a sample here fails
# test_every_event_has_a_sample, so the tests below always cover the whole union.
SAMPLES: dict[type[Any], Event] = {
    ClientData: ClientData(codec.SYNC),
    UpstreamData: UpstreamData(codec.encode_ready("I")),
    ClientTLSStarted: ClientTLSStarted("TLSv1.3"),
    PasswordVerified: PasswordVerified(ANN),
    WaitedLoginEnded: WaitedLoginEnded(),
    LoginWaitTimedOut: LoginWaitTimedOut(),
    StartupTimedOut: StartupTimedOut(),
    UpstreamReady: READY,
    UpstreamFailed: UpstreamFailed("08001", "dbsentry: could not connect"),
    AuditFailed: AuditFailed((b"", []), ()),
    HeldRefused: HeldRefused((b"", []), (), "42501", "dbsentry: refused"),
    GuardApprovalAnswered: GuardApprovalAnswered(False, None),
    ClientClosed: ClientClosed(),
    UpstreamClosed: UpstreamClosed(),
}


def session(environment: str = "staging", durability: Literal["sync"] | None = None) -> Session:
    config = parse_config(
        {
            "tls": {"require_client_tls": False},
            "connections": {"app": {"database": "app", "user": "postgres", "environment": environment}},
        },
        Path("."),
    )
    return Session(
        config,
        ClientInfo("127.0.0.1:5000"),
        1,
        b"1234",
        governor=Governor.from_path(None),
        audit_config=AuditConfig(durability=durability) if durability is not None else None,
    )


def logged_in(s: Session) -> Session:
    s.handle(ClientData(codec.encode_startup((("user", ANN.name), ("database", "app")))))
    s.handle(ClientData(codec.encode_password("token")))
    s.handle(PasswordVerified(ANN))
    s.handle(READY)
    assert s.state is State.READY
    return s


def test_every_event_has_a_sample() -> None:
    assert set(SAMPLES) == set(get_args(Event))
    for cls, event in SAMPLES.items():
        assert type(event) is cls


@pytest.mark.parametrize("event", list(SAMPLES.values()), ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("ready", [False, True], ids=["startup", "ready"])
def test_handle_handles_every_event(event: Event, ready: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime side of the exhaustive match (mypy checks the static side): no event
    falls through to ``assert_never``, whatever state the session is in."""

    def not_handled(arg: object) -> None:
        raise AssertionError(f"{type(arg).__name__} is not handled by Session.handle")

    monkeypatch.setattr(pg, "assert_never", not_handled)
    s = logged_in(session()) if ready else session()
    got = s.handle(event)
    assert isinstance(got, list)
    assert all(isinstance(cmd, get_args(c.Command)) for cmd in got)


def test_what_is_not_an_event_is_not_handled() -> None:
    with pytest.raises(AssertionError, match="unreachable"):
        session().handle(cast(Event, "client_data"))


@pytest.mark.parametrize("cls", get_args(Event), ids=lambda cls: cls.__name__)
def test_events_are_frozen_slotted_and_final(cls: type[Any]) -> None:
    """Frozen, but for the two of every network read (made twice per statement: a frozen
    dataclass costs twice as much to make)."""
    hot = cls in (ClientData, UpstreamData)
    assert cls.__dataclass_params__.frozen is not hot
    assert getattr(cls, "__final__", False)  # Session.handle tells the hot ones by exact type
    assert "__slots__" in cls.__dict__
    event = SAMPLES[cls]
    assert not hasattr(event, "__dict__")
    if not hot:
        for f in dataclasses.fields(cls):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(event, f.name, None)


def test_handle_is_the_only_way_in() -> None:
    """No public per-event method is left beside ``handle``."""
    public = {
        name
        for name, member in inspect.getmembers(Session)
        if not name.startswith("_") and inspect.isfunction(member)
    }
    assert public == {"handle"}
    for old in (
        "client_data", "upstream_data", "client_tls_started", "password_verified", "waited_login_ended",
        "login_wait_timed_out", "upstream_ready", "upstream_failed", "audit_failed", "refuse_held",
        "guard_approval", "client_closed", "upstream_closed", "startup_timeout",
    ):  # fmt: skip
        assert not hasattr(Session, old), old


# ---------------------------------------------------------------- whole sessions, events only


def test_a_session_from_its_first_byte_to_its_last() -> None:
    s = session()
    pb = Playbook(s)
    pb.client(codec.encode_ssl_request()).expect(c.SendClient(b"S"), c.StartClientTLS())
    pb.event(ClientTLSStarted("TLSv1.3")).expect_nothing()
    assert s.client.tls and s.client.tls_version == "TLSv1.3"
    pb.client(codec.encode_startup((("user", ANN.name), ("database", "app")))).expect(
        c.SendClient(codec.AUTH_CLEARTEXT_FRAME)
    )
    pb.client(codec.encode_password("token")).expect(c.VerifyPassword(ANN.name, "token"))
    pb.event(PasswordVerified(ANN)).expect(c.OpenUpstream("app", (("database", "app"),)))
    pb.event(READY).expect(
        c.LoginComplete(),
        c.SendClient(codec.AUTH_OK_FRAME + codec.encode_backend_key(1, b"1234") + codec.encode_ready("I")),
    )
    query = codec.encode_query("select 1")
    pb.client(query).expect(c.SendUpstream(query))
    answer = codec.encode_command_complete("SELECT 1") + codec.encode_ready("I")
    pb.upstream(answer).expect(c.SendClient(answer))
    pb.event(ClientClosed()).expect(c.CloseUpstream())
    assert s.state is State.CLOSED
    pb.event(UpstreamClosed()).expect_nothing()


def _refused_statement(marker_query: bytes) -> bytes:
    """What PostgreSQL answers to the statement that replaces a refused one."""
    (t, body), = frames(marker_query)
    assert t == "Q"
    marker = body[:-1].decode().split("'")[1]
    return codec.error_response("22P02", f'invalid input syntax for type integer: "{marker}"') + codec.encode_ready("I")


def _gated_query(s: Session, sql: str) -> c.AuditGate:
    (gate,) = s.handle(ClientData(codec.encode_query(sql)))
    assert isinstance(gate, c.AuditGate) and gate.then == [c.SendUpstream(codec.encode_query(sql))]
    return gate


def test_audit_failed_refuses_the_held_statements() -> None:
    s = logged_in(session(durability="sync"))
    gate = _gated_query(s, "select 1")
    got = s.handle(AuditFailed(gate.frames, gate.records))
    (completion,) = [cmd.record for cmd in got if isinstance(cmd, c.Audit)]
    assert completion.sqlstate == "58000"  # type: ignore[union-attr]
    (sent,) = [cmd.data for cmd in got if isinstance(cmd, c.SendUpstream)]
    assert b"select 1" not in sent
    (back,) = s.handle(UpstreamData(_refused_statement(sent)))
    assert isinstance(back, c.SendClient)
    err = error_fields(back.data[: -len(codec.encode_ready("I"))])
    assert (err.sqlstate, err.message) == ("58000", AUDIT_UNAVAILABLE)
    assert back.data.endswith(codec.encode_ready("I"))


def test_held_refused_fails_the_held_statements_with_the_reason() -> None:
    s = logged_in(session(durability="sync"))
    gate = _gated_query(s, "select 2")
    message = "dbsentry: approval request apr_7 was rejected by bob@example.com"
    got = s.handle(HeldRefused(gate.frames, gate.records, "42501", message))
    (sent,) = [cmd.data for cmd in got if isinstance(cmd, c.SendUpstream)]
    assert b"select 2" not in sent
    (back,) = s.handle(UpstreamData(_refused_statement(sent)))
    assert isinstance(back, c.SendClient)
    err = error_fields(back.data[: -len(codec.encode_ready("I"))])
    assert (err.sqlstate, err.message) == ("42501", message)


def _over_the_row_limit(s: Session) -> c.GuardApproval:
    """A production DELETE that changed 40 of 40 rows (over the 50 % limit): the guard asks."""
    (wrapped,) = s.handle(ClientData(codec.encode_query("DELETE FROM acc WHERE id > -1")))
    assert isinstance(wrapped, c.SendUpstream)
    assert [body for t, body in frames(wrapped.data) if t == "Q"][:2] == [b"BEGIN\x00", b"DELETE FROM acc WHERE id > -1\x00"]
    # (the session's own new backend: measured from zero, no reading before it)
    answer = cc("BEGIN") + READY_T + cc("DELETE 40") + READY_T
    (count,) = s.handle(UpstreamData(answer + after_answer(stats_row(1, 0, 40, 0, size=8192), first=True)))
    assert isinstance(count, c.SendUpstream)  # how many rows the table has
    (ask,) = s.handle(UpstreamData(ROW_DESC + data_row("0") + cc("SELECT 1") + READY_T))
    assert isinstance(ask, c.GuardApproval) and ask.rule == "guardrails.max_fraction_changed"
    return ask


def test_guard_approval_answered_no_rolls_the_statement_back() -> None:
    s = logged_in(session(environment="production"))
    _over_the_row_limit(s)
    message = "dbsentry: over the row limit; approval request apr_1 waits for review"
    assert s.handle(GuardApprovalAnswered(False, message)) == [c.SendUpstream(codec.encode_query("ROLLBACK"))]
    (back,) = s.handle(UpstreamData(codec.encode_command_complete("ROLLBACK") + codec.encode_ready("I")))
    assert isinstance(back, c.SendClient)
    err = error_fields(back.data[: -len(codec.encode_ready("I"))])
    assert (err.sqlstate, err.message) == ("42501", message)
    assert back.data.endswith(codec.encode_ready("I"))


def test_guard_approval_answered_yes_commits_it() -> None:
    s = logged_in(session(environment="production"))
    _over_the_row_limit(s)
    got = Playbook(s).event(GuardApprovalAnswered(True, None)).take()
    assert got == [c.SendUpstream(codec.encode_query("COMMIT"))]
    (back,) = s.handle(UpstreamData(codec.encode_command_complete("COMMIT") + codec.encode_ready("I")))
    assert back == c.SendClient(codec.encode_command_complete("DELETE 40") + codec.encode_ready("I"))

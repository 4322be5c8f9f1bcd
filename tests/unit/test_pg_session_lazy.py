"""A lazy upstream: clients are logged in from known server parameters, and the upstream
is opened for their first message that needs the database."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.records import SessionEvent
from dbsentry.config import Config, parse_config
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import (
    ClientClosed,
    PasswordVerified,
    StartupTimedOut,
    UpstreamFailed,
)
from dbsentry.engines.postgres.session.pg import ClientInfo, Session, State
from dbsentry.engines.postgres.session.server_params import ServerParams
from dbsentry.engines.postgres.session.upstream import UpstreamReady
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m
from dbsentry.identity.model import Identity
from support.playbook import Fatal, Playbook, frames

PROXY_PID = 4242
PROXY_SECRET = b"proxy-key-00001!"
ALICE = Identity("alice@example.com", frozenset({"dev"}), "human", "tok-1", "token")
SERVER = {"application_name": "", "client_encoding": "UTF8", "server_version": "16.2", "TimeZone": "UTC"}


def make_config(lazy: bool = True, per_connection: bool | None = None) -> Config:
    return parse_config(
        {
            "connections": {
                "app": {"database": "app_db", "user": "svc_app", "lazy_upstream": per_connection},
            },
            "limits": {"max_message_bytes": 4096, "lazy_upstream": lazy},
        },
        Path("."),
    )


CONFIG = make_config()


def params_frames(params: dict[str, str]) -> bytes:
    return b"".join(codec.encode_parameter_status(k, v) for k, v in params.items())


def upstream_ready(params: dict[str, str] = SERVER, notices: bytes = b"") -> UpstreamReady:
    return UpstreamReady(params_frames(params) + notices, dict(params), 777, b"upstream", "I")


def greeting(params: dict[str, str] = SERVER) -> bytes:
    return (
        codec.AUTH_OK_FRAME
        + params_frames(params)
        + codec.encode_backend_key(PROXY_PID, PROXY_SECRET)
        + codec.encode_ready("I")
    )


def session(cache: ServerParams, config: Config = CONFIG, audit: bool = False) -> Session:
    return Session(
        config,
        ClientInfo("203.0.113.7:50000", tls=True),
        PROXY_PID,
        PROXY_SECRET,
        server_params=cache,
        audit_config=AuditConfig() if audit else None,
    )


def login(pb: Playbook, *params: tuple[str, str]) -> list[c.Command]:
    """Startup and token; what the session answers once the identity is verified."""
    startup = codec.encode_startup((("user", "alice"), ("database", "app"), *params))
    pb.client(startup + codec.encode_password("tok")).take()
    return pb.event(PasswordVerified(ALICE)).take()


def known_cache() -> ServerParams:
    """A cache filled by a first, eager, session."""
    cache = ServerParams()
    pb = Playbook(session(cache))
    assert login(pb) == [c.OpenUpstream("app", (("database", "app_db"),))]
    pb.event(upstream_ready()).expect(c.LoginComplete(), c.SendClient(greeting()))
    return cache


def greeted(cache: ServerParams | None = None, *params: tuple[str, str], audit: bool = False) -> Playbook:
    pb = Playbook(session(cache or known_cache(), audit=audit))
    got = login(pb, *params)
    assert not any(isinstance(cmd, c.OpenUpstream) for cmd in got)
    assert pb.session.state is State.GREETED
    return pb


def test_the_first_client_of_a_connection_logs_in_upstream_and_fills_the_cache() -> None:
    cache = ServerParams()
    pb = Playbook(session(cache))
    assert login(pb) == [c.OpenUpstream("app", (("database", "app_db"),))]
    assert pb.session.state is State.CONNECTING
    pb.event(upstream_ready()).expect(c.LoginComplete(), c.SendClient(greeting()))
    assert cache.known("app")


def test_a_later_client_is_greeted_from_the_cache_without_an_upstream() -> None:
    pb = Playbook(session(known_cache()))
    assert login(pb) == [c.LoginComplete(), c.SendClient(greeting())]
    assert pb.session.state is State.GREETED
    assert pb.session.txn_status == "I"
    # Nothing that only matters once the upstream answers exists yet.
    assert pb.session.masking is None


def test_greeting_uses_the_proxy_backend_key_and_reports_idle() -> None:
    pb = Playbook(session(known_cache()))
    _, sent = login(pb)
    assert isinstance(sent, c.SendClient)
    got = frames(sent.data)
    assert [t for t, _ in got] == ["R", "S", "S", "S", "S", "K", "Z"]
    key = got[-2][1]
    assert codec.decode_backend_key(key, 0, len(key)) == m.BackendKeyData(PROXY_PID, PROXY_SECRET)
    assert got[-1] == ("Z", b"I")


def test_startup_settings_are_reflected_as_the_server_reports_them() -> None:
    cache = known_cache()
    # latin1 was never seen: this client logs in upstream, and the cache learns how the
    # server spells it.
    first = Playbook(session(cache))
    assert isinstance(login(first, ("client_encoding", "latin1"))[-1], c.OpenUpstream)
    first.event(upstream_ready({**SERVER, "client_encoding": "LATIN1"})).take()
    pb = Playbook(session(cache))
    got = login(pb, ("client_encoding", "latin1"), ("application_name", "billing"))
    assert got == [
        c.LoginComplete(),
        c.SendClient(greeting({**SERVER, "application_name": "billing", "client_encoding": "LATIN1"})),
    ]


@pytest.mark.parametrize(
    "params",
    [
        (("client_encoding", "SQL_ASCII"),),  # never seen
        (("application_name", "caf\u00e9"),),  # escaped by the server, by version
        (("options", "-e"),),  # a switch whose effect on reported parameters is not known
        (("search_path", "app"),),  # never seen: is it even valid?
    ],
)
def test_unknown_settings_log_in_upstream_first(params: tuple[tuple[str, str], ...]) -> None:
    pb = Playbook(session(known_cache()))
    got = login(pb, *params)
    assert isinstance(got[-1], c.OpenUpstream)
    assert pb.session.state is State.CONNECTING


def test_settings_in_options_count_too() -> None:
    cache = known_cache()
    first = Playbook(session(cache))
    login(first, ("options", "-c search_path=app -c TimeZone=europe/paris"))
    first.event(upstream_ready({**SERVER, "TimeZone": "Europe/Paris"})).take()
    pb = Playbook(session(cache))
    assert login(pb, ("options", "-c search_path=app --timezone=europe/paris")) == [
        c.LoginComplete(),
        c.SendClient(greeting({**SERVER, "TimeZone": "Europe/Paris"})),
    ]


@pytest.mark.parametrize(("lazy", "per_connection"), [(False, None), (True, False)])
def test_lazy_upstream_can_be_turned_off(lazy: bool, per_connection: bool | None) -> None:
    pb = Playbook(session(known_cache(), make_config(lazy, per_connection)))
    assert login(pb) == [c.OpenUpstream("app", (("database", "app_db"),))]


def test_a_connection_can_turn_it_on_alone() -> None:
    pb = Playbook(session(known_cache(), make_config(False, True)))
    assert login(pb) == [c.LoginComplete(), c.SendClient(greeting())]


def test_sync_and_flush_are_answered_without_an_upstream() -> None:
    pb = greeted()
    pb.client(codec.SYNC).expect(c.SendClient(codec.encode_ready("I")))
    pb.client(codec.FLUSH + codec.SYNC + codec.SYNC).expect(c.SendClient(codec.encode_ready("I") * 2))
    assert pb.session.state is State.GREETED


def test_terminate_closes_without_an_upstream() -> None:
    pb = greeted(audit=True)
    got = pb.client(codec.SYNC + codec.TERMINATE).take()
    assert got[0] == c.SendClient(codec.encode_ready("I"))
    assert got[-1] == c.CloseClient()
    closed = [cmd.record for cmd in got if isinstance(cmd, c.Audit)]
    assert len(closed) == 1 and isinstance(closed[0], SessionEvent) and closed[0].event == "closed"
    assert not any(isinstance(cmd, (c.OpenUpstream, c.CloseUpstream, c.SendUpstream)) for cmd in got)
    assert pb.session.state is State.CLOSED


def test_the_first_query_opens_the_upstream_and_runs_once_it_is_ready() -> None:
    pb = greeted(None, ("application_name", "app1"))
    q = codec.encode_query("select 1")
    pb.client(codec.SYNC + q).expect(
        c.SendClient(codec.encode_ready("I")),
        c.OpenUpstream("app", (("database", "app_db"), ("application_name", "app1"))),
    )
    assert pb.session.state is State.OPENING
    # More messages wait with it, in order.
    q2 = codec.encode_query("select 2")
    pb.client(q2[:3]).client(q2[3:]).expect_nothing()
    pb.event(upstream_ready({**SERVER, "application_name": "app1"})).expect(
        c.SendUpstream(q + q2)
    )
    assert pb.session.state is State.READY
    assert pb.session.pending_syncs == 2


@pytest.mark.parametrize(
    "first",
    [
        codec.encode_parse(m.Parse("", "select 1")) + codec.SYNC,
        codec.encode_describe("S", "x") + codec.SYNC,
        codec.frame(b"F", b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"),
    ],
)
def test_any_message_that_needs_the_database_opens_the_upstream(first: bytes) -> None:
    pb = greeted()
    got = pb.client(first).take()
    assert got == [c.OpenUpstream("app", (("database", "app_db"),))]
    pb.event(upstream_ready()).expect(c.SendUpstream(first))


def test_a_query_split_across_chunks_opens_the_upstream_when_complete() -> None:
    pb = greeted()
    q = codec.encode_query("select 1")
    pb.client(q[:4]).expect_nothing()
    pb.client(q[4:]).expect(c.OpenUpstream("app", (("database", "app_db"),)))
    pb.event(upstream_ready()).expect(c.SendUpstream(q))


def test_a_query_pipelined_behind_the_password_opens_the_upstream_at_once() -> None:
    pb = Playbook(session(known_cache()))
    q = codec.encode_query("select 1")
    startup = codec.encode_startup((("user", "alice"), ("database", "app")))
    pb.client(startup + codec.encode_password("tok") + q).take()
    pb.event(PasswordVerified(ALICE)).expect(
        c.LoginComplete(), c.SendClient(greeting()), c.OpenUpstream("app", (("database", "app_db"),))
    )
    pb.event(upstream_ready()).expect(c.SendUpstream(q))


def test_parameters_that_changed_since_the_greeting_are_sent_before_anything_else() -> None:
    pb = greeted()
    q = codec.encode_query("select 1")
    pb.client(q).take()
    notice = codec.notice_response("the server is shutting down soon")
    moved = {**SERVER, "server_version": "16.3", "in_hot_standby": "off"}
    pb.event(upstream_ready(moved, notice)).expect(
        c.SendClient(
            codec.encode_parameter_status("server_version", "16.3")
            + codec.encode_parameter_status("in_hot_standby", "off")
            + notice
        ),
        c.SendUpstream(q),
    )
    assert pb.session.upstream_params == moved


def test_the_client_was_told_its_own_application_name() -> None:
    pb = greeted(None, ("application_name", "report"))
    pb.client(codec.encode_query("select 1")).take()
    # The server reports the same: nothing new for the client.
    pb.event(upstream_ready({**SERVER, "application_name": "report"})).expect(
        c.SendUpstream(codec.encode_query("select 1"))
    )


def test_an_unreachable_upstream_fails_the_first_query() -> None:
    pb = greeted(audit=True)
    pb.client(codec.encode_query("select 1")).take()
    got = pb.event(UpstreamFailed("08001", "dbsentry: could not connect")).take()
    assert Fatal("08001", "could not connect") in got
    assert c.CloseClient() in got
    closed = [cmd.record for cmd in got if isinstance(cmd, c.Audit)]
    assert [r.event for r in closed if isinstance(r, SessionEvent)] == ["closed"]
    assert pb.session.state is State.CLOSED
    pb.event(upstream_ready()).expect(c.CloseUpstream())


def test_the_session_is_audited_as_opened_at_login() -> None:
    pb = Playbook(session(known_cache(), audit=True))
    got = login(pb, ("application_name", "nightly"))
    opened = [cmd.record for cmd in got if isinstance(cmd, c.Audit)]
    assert len(opened) == 1
    event = opened[0]
    assert isinstance(event, SessionEvent)
    assert (event.event, event.application_name, event.connection) == ("opened", "nightly", "app")
    # Opening the upstream later adds no second "opened".
    pb.client(codec.encode_query("select 1")).take()
    got = pb.event(upstream_ready({**SERVER, "application_name": "nightly"})).take()
    assert not any(isinstance(cmd, c.Audit) and isinstance(cmd.record, SessionEvent) for cmd in got)


def test_the_startup_timeout_no_longer_applies_once_greeted() -> None:
    pb = greeted()
    pb.event(StartupTimedOut()).expect_nothing()
    pb.client(codec.encode_query("select 1")).take()
    pb.event(StartupTimedOut()).expect_nothing()


def test_client_leaving_while_the_upstream_opens_closes_it() -> None:
    pb = greeted()
    pb.client(codec.encode_query("select 1")).take()
    got = pb.event(ClientClosed()).take()
    assert got[-1] == c.CloseUpstream()
    assert c.CancelUpstream() not in got


def test_the_upstream_login_teaches_the_cache_too() -> None:
    cache = known_cache()
    pb = greeted(cache)
    pb.client(codec.encode_query("select 1")).take()
    pb.event(upstream_ready({**SERVER, "server_version": "17.0"})).take()
    later = Playbook(session(cache))
    assert login(later) == [c.LoginComplete(), c.SendClient(greeting({**SERVER, "server_version": "17.0"}))]


def test_oversized_message_while_greeted_is_refused_from_its_header() -> None:
    pb = greeted()
    got = pb.client(b"Q" + (10_000).to_bytes(4, "big")).take()
    assert Fatal("54000") in got
    assert pb.session.state is State.CLOSED


CACHE = known_cache()  # greeted sessions only read it
_FRAMES = st.sampled_from(
    [codec.SYNC, codec.FLUSH, codec.TERMINATE, codec.encode_query("select 1"), codec.frame(b"d", b"x"), b"Q\x00\x00"]
)


@settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(st.binary(min_size=1, max_size=40) | _FRAMES, max_size=8))
def test_random_client_bytes_never_crash_a_greeted_session(data: list[bytes]) -> None:
    pb = greeted(CACHE)
    for chunk in data:
        pb.client(chunk)
    got = pb.take()
    for cmd in got:
        assert isinstance(cmd, c.SendClient | c.OpenUpstream | c.CloseClient | c.CloseUpstream | c.Audit)
    assert sum(isinstance(cmd, c.OpenUpstream) for cmd in got) <= 1
    assert pb.session.state in (State.GREETED, State.OPENING, State.CLOSED)
    if pb.session.state is State.CLOSED:
        assert c.CloseClient() in got

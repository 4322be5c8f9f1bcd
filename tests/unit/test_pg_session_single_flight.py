"""Single flight for a connection's first logins: while no greeting is known for a
client's settings, one session logs in upstream and the clients with the same settings
wait for its login rather than each opening a backend too."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.config import Config, parse_config
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import (
    ClientClosed,
    ClientData,
    Event,
    LoginWaitTimedOut,
    PasswordVerified,
    StartupTimedOut,
    UpstreamClosed,
    UpstreamFailed,
    WaitedLoginEnded,
)
from dbsentry.engines.postgres.session.pg import ClientInfo, Session, State
from dbsentry.engines.postgres.session.server_params import ServerParams
from dbsentry.engines.postgres.session.upstream import UpstreamReady
from dbsentry.engines.postgres.wire import codec
from dbsentry.identity.model import Identity
from support.playbook import Fatal, Playbook

ALICE = Identity("alice@example.com", frozenset({"dev"}), "human", "tok-1", "token")
SERVER = {"application_name": "", "client_encoding": "UTF8", "server_version": "16.2", "TimeZone": "UTC"}
SECRET = b"proxy-key-00001!"
OPEN = c.OpenUpstream("app", (("database", "app_db"),))


def make_config(lazy: bool = True, connect_timeout: float = 10.0) -> Config:
    return parse_config(
        {
            "connections": {
                "app": {"database": "app_db", "user": "svc_app", "connect_timeout_seconds": connect_timeout},
                "other": {"database": "other_db", "user": "svc_app"},
            },
            "limits": {"max_message_bytes": 4096, "lazy_upstream": lazy},
        },
        Path("."),
    )


CONFIG = make_config()


def upstream_ready(params: dict[str, str] = SERVER) -> UpstreamReady:
    frames = b"".join(codec.encode_parameter_status(k, v) for k, v in params.items())
    return UpstreamReady(frames, dict(params), 777, b"upstream", "I")


def greeting(pid: int, params: dict[str, str] = SERVER) -> bytes:
    return (
        codec.AUTH_OK_FRAME
        + b"".join(codec.encode_parameter_status(k, v) for k, v in params.items())
        + codec.encode_backend_key(pid, SECRET)
        + codec.encode_ready("I")
    )


def client(
    cache: ServerParams, pid: int, *params: tuple[str, str], config: Config = CONFIG, database: str = "app"
) -> tuple[Playbook, list[c.Command]]:
    """A client of ``database`` that sent its startup and token; what the session answers
    once the identity is verified."""
    pb = Playbook(Session(config, ClientInfo(f"203.0.113.7:{50000 + pid}", tls=True), pid, SECRET, server_params=cache))
    startup = codec.encode_startup((("user", "alice"), ("database", database), *params))
    pb.client(startup + codec.encode_password("tok")).take()
    return pb, pb.event(PasswordVerified(ALICE)).take()


def wait(seconds: float = 10.0) -> c.WaitForLogin:
    return c.WaitForLogin("app", seconds)


def test_clients_arriving_during_the_first_login_wait_for_it_then_are_greeted() -> None:
    cache = ServerParams()
    first, got = client(cache, 1)
    assert got == [OPEN]
    assert first.session.state is State.CONNECTING
    second, got = client(cache, 2)
    assert got == [wait()]
    assert second.session.state is State.WAITING
    # Its own application_name does not matter: the server reports it as given, and the
    # first login teaches the default of those that set none.
    third, got = client(cache, 3, ("application_name", "report"))
    assert got == [wait()]
    first.event(upstream_ready()).expect(
        c.LoginComplete(), c.SendClient(greeting(1)), c.WakeWaiting((2, 3))
    )
    assert cache.logins_in_flight() == 0
    second.event(WaitedLoginEnded()).expect(c.LoginComplete(), c.SendClient(greeting(2)))
    assert second.session.state is State.GREETED
    third.event(WaitedLoginEnded()).expect(
        c.LoginComplete(), c.SendClient(greeting(3, {**SERVER, "application_name": "report"}))
    )
    # Later clients are greeted at once, as before.
    _, got = client(cache, 4)
    assert got == [c.LoginComplete(), c.SendClient(greeting(4))]


def test_the_wait_is_bounded_by_the_connections_connect_timeout() -> None:
    cache = ServerParams()
    config = make_config(connect_timeout=2.5)
    client(cache, 1, config=config)
    _, got = client(cache, 2, config=config)
    assert got == [wait(2.5)]


def test_the_first_login_alone_waits_for_nothing_and_wakes_nobody() -> None:
    cache = ServerParams()
    first, _ = client(cache, 1)
    first.event(upstream_ready()).expect(c.LoginComplete(), c.SendClient(greeting(1)))
    assert cache.logins_in_flight() == 0


@pytest.mark.parametrize(
    ("params", "database"),
    [
        ((("client_encoding", "latin1"),), "app"),  # another login would teach its greeting
        ((("application_name", "caf\u00e9"),), "app"),  # escaped by the server: a setting
        ((("options", "-e"),), "app"),  # no greeting can be known for it
        ((), "other"),  # another connection
    ],
)
def test_clients_a_login_in_flight_would_not_teach_log_in_at_once(
    params: tuple[tuple[str, str], ...], database: str
) -> None:
    cache = ServerParams()
    client(cache, 1)
    pb, got = client(cache, 2, *params, database=database)
    assert isinstance(got[-1], c.OpenUpstream)
    assert pb.session.state is State.CONNECTING


def test_without_lazy_upstream_nobody_waits() -> None:
    cache = ServerParams()
    config = make_config(lazy=False)
    client(cache, 1, config=config)
    _, got = client(cache, 2, config=config)
    assert got == [OPEN]
    assert cache.logins_in_flight() == 0


def test_a_login_that_set_application_name_does_not_teach_clients_that_set_none() -> None:
    cache = ServerParams()
    named, got = client(cache, 1, ("application_name", "a"))
    assert isinstance(got[-1], c.OpenUpstream)
    plain, got = client(cache, 2)
    assert got == [OPEN]  # its greeting needs the default application_name
    also_named, got = client(cache, 3, ("application_name", "b"))
    assert got == [wait()]
    named.event(upstream_ready({**SERVER, "application_name": "a"})).expect(
        c.LoginComplete(), c.SendClient(greeting(1, {**SERVER, "application_name": "a"})), c.WakeWaiting((3,))
    )
    also_named.event(WaitedLoginEnded()).expect(
        c.LoginComplete(), c.SendClient(greeting(3, {**SERVER, "application_name": "b"}))
    )
    assert plain.session.state is State.CONNECTING


def test_a_client_with_new_settings_leads_the_clients_with_the_same() -> None:
    cache = ServerParams()
    first, _ = client(cache, 1)
    first.event(upstream_ready()).take()
    latin, got = client(cache, 2, ("client_encoding", "latin1"))
    assert got == [c.OpenUpstream("app", (("database", "app_db"), ("client_encoding", "latin1")))]
    other, got = client(cache, 3, ("client_encoding", "latin1"))
    assert got == [wait()]
    latin.event(upstream_ready({**SERVER, "client_encoding": "LATIN1"})).take()
    other.event(WaitedLoginEnded()).expect(
        c.LoginComplete(), c.SendClient(greeting(3, {**SERVER, "client_encoding": "LATIN1"}))
    )


def test_when_the_login_fails_one_waiting_client_logs_in_and_the_others_wait_for_it() -> None:
    cache = ServerParams()
    first, _ = client(cache, 1)
    second, _ = client(cache, 2)
    third, _ = client(cache, 3)
    got = first.event(UpstreamFailed("53300", "dbsentry: upstream refused the connection: too many")).take()
    assert Fatal("53300") in got
    assert got[0] == c.WakeWaiting((2, 3))
    # Nothing was learned: the first one woken logs in itself ...
    second.event(WaitedLoginEnded()).expect(OPEN)
    assert second.session.state is State.CONNECTING
    # ... and the next waits for it, within its first deadline (no new timer).
    third.event(WaitedLoginEnded()).expect_nothing()
    assert third.session.state is State.WAITING
    second.event(upstream_ready()).expect(
        c.LoginComplete(), c.SendClient(greeting(2)), c.WakeWaiting((3,))
    )
    third.event(WaitedLoginEnded()).expect(c.LoginComplete(), c.SendClient(greeting(3)))
    assert cache.logins_in_flight() == 0


@pytest.mark.parametrize(
    "ending",
    [
        ClientClosed(),
        StartupTimedOut(),
        UpstreamClosed(),  # the upstream went away while the masking catalog was read
        UpstreamFailed("08001", "dbsentry: could not connect"),
    ],
)
def test_a_login_that_ends_without_teaching_wakes_the_waiting_clients(ending: Event) -> None:
    cache = ServerParams()
    first, _ = client(cache, 1)
    client(cache, 2)
    got = first.event(ending).take()
    assert c.WakeWaiting((2,)) in got
    assert first.session.state is State.CLOSED
    assert cache.logins_in_flight() == 0


def test_a_waiting_client_gives_up_after_the_timeout_and_logs_in_itself() -> None:
    cache = ServerParams()
    first, _ = client(cache, 1)
    second, _ = client(cache, 2)
    third, _ = client(cache, 3)
    second.event(LoginWaitTimedOut()).expect(OPEN)
    assert second.session.state is State.CONNECTING
    # It no longer waits, and its own login is nobody's to wait for.
    first.event(upstream_ready()).expect(
        c.LoginComplete(), c.SendClient(greeting(1)), c.WakeWaiting((3,))
    )
    second.event(upstream_ready()).expect(c.LoginComplete(), c.SendClient(greeting(2)))
    third.event(WaitedLoginEnded()).expect(c.LoginComplete(), c.SendClient(greeting(3)))
    assert cache.logins_in_flight() == 0


def test_a_waiting_client_greeted_by_the_time_it_gives_up() -> None:
    # The timer may fire in the same turn as the wake: whichever comes second does nothing.
    cache = ServerParams()
    first, _ = client(cache, 1)
    second, _ = client(cache, 2)
    first.event(upstream_ready()).take()
    second.event(WaitedLoginEnded()).take()
    second.event(LoginWaitTimedOut()).expect_nothing()
    second.event(WaitedLoginEnded()).expect_nothing()
    assert second.session.state is State.GREETED


@pytest.mark.parametrize(
    "ending",
    [
        ClientClosed(),
        StartupTimedOut(),
        ClientData(codec.frame(b"Q", b"x" * 5000)),  # too much pipelined before login
    ],
)
def test_a_waiting_client_that_goes_away_waits_no_more(ending: Event) -> None:
    cache = ServerParams()
    first, _ = client(cache, 1)
    second, _ = client(cache, 2)
    client(cache, 3)
    got = second.event(ending).take()
    assert not any(isinstance(cmd, c.WakeWaiting | c.OpenUpstream) for cmd in got)
    assert second.session.state is State.CLOSED
    if isinstance(ending, StartupTimedOut):
        assert Fatal("08P01") in got
    first.event(upstream_ready()).expect(
        c.LoginComplete(), c.SendClient(greeting(1)), c.WakeWaiting((3,))
    )
    second.event(WaitedLoginEnded()).expect_nothing()
    second.event(LoginWaitTimedOut()).expect_nothing()


def test_queries_pipelined_behind_the_password_run_once_the_waiting_client_is_in() -> None:
    cache = ServerParams()
    first, _ = client(cache, 1)
    pb = Playbook(Session(CONFIG, ClientInfo("203.0.113.7:50002", tls=True), 2, SECRET, server_params=cache))
    q = codec.encode_query("select 1")
    startup = codec.encode_startup((("user", "alice"), ("database", "app")))
    pb.client(startup + codec.encode_password("tok") + q[:3]).take()
    pb.event(PasswordVerified(ALICE)).expect(wait())
    pb.client(q[3:]).expect_nothing()
    first.event(upstream_ready()).take()
    pb.event(WaitedLoginEnded()).expect(c.LoginComplete(), c.SendClient(greeting(2)), OPEN)
    pb.event(upstream_ready()).expect(c.SendUpstream(q))


# ---------------------------------------------------------------------------------------
# any order of events


_STEPS = st.lists(
    st.tuples(st.sampled_from(["arrive", "ready", "fail", "timeout", "leave"]), st.integers(0, 30)),
    max_size=40,
)
_APPS: tuple[tuple[tuple[str, str], ...], ...] = ((), (("application_name", "a"),), (("application_name", "b"),))


@settings(max_examples=300, deadline=None)
@given(steps=_STEPS)
def test_at_most_one_login_per_key_is_in_flight_but_for_clients_that_gave_up(steps: list[tuple[str, int]]) -> None:
    cache = ServerParams()
    sessions: dict[int, Session] = {}
    keys: dict[int, object] = {}
    gave_up: set[int] = set()

    def run(pid: int, commands: list[c.Command]) -> None:
        """What the shell does with the commands that matter here."""
        for cmd in commands:
            if isinstance(cmd, c.WakeWaiting):
                for waiting in cmd.sessions:
                    assert sessions[waiting].state is State.WAITING
                    run(waiting, sessions[waiting].handle(WaitedLoginEnded()))
            elif isinstance(cmd, c.WaitForLogin):
                assert sessions[pid].state is State.WAITING

    def pick(state: State, n: int) -> int | None:
        found = [pid for pid, s in sessions.items() if s.state is state]
        return found[n % len(found)] if found else None

    for action, n in steps:
        if action == "arrive":
            pid = len(sessions) + 1
            pb, got = client(cache, pid, *_APPS[n % 3])
            sessions[pid] = pb.session
            keys[pid] = ServerParams.login_key("app", _APPS[n % 3])
            run(pid, got)
        elif action == "timeout":
            pid = pick(State.WAITING, n)
            if pid is not None:
                gave_up.add(pid)
                run(pid, sessions[pid].handle(LoginWaitTimedOut()))
        elif action == "leave":
            pid = pick(State.WAITING if n % 2 else State.CONNECTING, n // 2)
            if pid is not None:
                run(pid, sessions[pid].handle(ClientClosed()))
        else:
            pid = pick(State.CONNECTING, n)
            if pid is not None:
                s = sessions[pid]
                run(pid, s.handle(upstream_ready()) if action == "ready" else s.handle(UpstreamFailed("08001", "x")))
        leading = [keys[pid] for pid, s in sessions.items() if s.state is State.CONNECTING and pid not in gave_up]
        assert len(leading) == len(set(leading))
    # Let every login in flight complete: nobody is left waiting.
    while (pid := pick(State.CONNECTING, 0)) is not None:
        run(pid, sessions[pid].handle(upstream_ready()))
    assert not any(s.state is State.WAITING for s in sessions.values())
    assert cache.logins_in_flight() == 0

"""Unit tests for the PostgreSQL session state machine, driven without sockets."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsentry.config import Config, parse_config
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import (
    ClientClosed,
    ClientTLSStarted,
    PasswordVerified,
    StartupTimedOut,
    UpstreamClosed,
    UpstreamFailed,
)
from dbsentry.engines.postgres.session.pg import (
    TRANSITIONS,
    ClientInfo,
    Session,
    SessionStateError,
    State,
    split_options,
)
from dbsentry.engines.postgres.session.upstream import UpstreamReady
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m
from dbsentry.identity.model import Identity
from dbsentry.identity.ratelimit import ControlPlaneUnavailable
from support.playbook import Fatal, Playbook, error_fields, frames

PROXY_PID = 4242
PROXY_SECRET = b"proxy-key-00001!"
UPSTREAM_PID = 777
UPSTREAM_SECRET = b"upstream-secret!"
MAX_MESSAGE = 4096


def make_config(require_client_tls: bool = True) -> Config:
    return parse_config(
        {
            "tls": {"require_client_tls": require_client_tls},
            "connections": {
                "app": {"database": "app_db", "user": "svc_app", "password": "pw"},
                "alice": {"database": "alice_db", "user": "svc_alice"},
                "finance": {"database": "fin_db", "user": "svc_fin", "allow_groups": ["finance"]},
            },
            "limits": {"max_message_bytes": MAX_MESSAGE},
        },
        Path("."),
    )


CONFIG = make_config()
ALICE = Identity("alice@example.com", frozenset({"dev"}), "human", "tok-1", "token")


def new_session(*, tls: bool = True, config: Config = CONFIG) -> Session:
    return Session(config, ClientInfo("203.0.113.7:50000", tls=tls), PROXY_PID, PROXY_SECRET)


def startup(*params: tuple[str, str], version: int = m.PROTOCOL_3_0) -> bytes:
    return codec.encode_startup(params, version)


ALICE_APP = startup(("user", "alice"), ("database", "app"))
PARAM_FRAMES = codec.encode_parameter_status(
    "server_version", "16.2"
) + codec.encode_parameter_status("client_encoding", "UTF8")
UPSTREAM_READY = UpstreamReady(
    PARAM_FRAMES,
    {"server_version": "16.2", "client_encoding": "UTF8"},
    UPSTREAM_PID,
    UPSTREAM_SECRET,
    "I",
)
GREETING = (
    codec.AUTH_OK_FRAME
    + PARAM_FRAMES
    + codec.encode_backend_key(PROXY_PID, PROXY_SECRET)
    + codec.encode_ready("I")
)


def open_upstream(
    params: tuple[tuple[str, str], ...] = (("database", "app_db"),),
) -> c.OpenUpstream:
    return c.OpenUpstream("app", params)


def logged_in(session: Session | None = None) -> Playbook:
    """A playbook whose session reached READY on connection "app" as alice."""
    pb = Playbook(session or new_session())
    pb.client(ALICE_APP).expect(c.SendClient(codec.AUTH_CLEARTEXT_FRAME))
    pb.client(codec.encode_password("tok")).expect(c.VerifyPassword("alice", "tok"))
    pb.event(PasswordVerified(ALICE)).expect(open_upstream())
    pb.event(UPSTREAM_READY).expect(c.LoginComplete(), c.SendClient(GREETING))
    assert pb.session.state is State.READY
    return pb


CLOSE = (c.CloseClient(), c.CloseUpstream())


def state_of(pb: Playbook) -> State:
    return pb.session.state


# ---------------------------------------------------------------------------------------
# startup: SSL, GSSENC, cancel


def test_ssl_request_starts_tls() -> None:
    pb = Playbook(new_session(tls=False))
    pb.client(codec.encode_ssl_request()).expect(c.SendClient(b"S"), c.StartClientTLS())
    pb.event(ClientTLSStarted("TLSv1.3")).expect_nothing()
    pb.client(ALICE_APP).expect(c.SendClient(codec.AUTH_CLEARTEXT_FRAME))
    assert pb.session.client.tls_version == "TLSv1.3"


def test_ssl_request_arriving_in_pieces() -> None:
    pb = Playbook(new_session(tls=False))
    data = codec.encode_ssl_request()
    pb.client(data[:3]).client(data[3:7]).expect_nothing()
    pb.client(data[7:]).expect(c.SendClient(b"S"), c.StartClientTLS())


def test_ssl_request_with_trailing_bytes_is_refused_cve_2021_23214() -> None:
    # A man in the middle could append a plaintext startup/query to the SSLRequest; it
    # must never be read as part of the encrypted session.
    pb = Playbook(new_session(tls=False))
    pb.client(codec.encode_ssl_request() + ALICE_APP).expect(Fatal("08P01"), *CLOSE)
    assert pb.session.state is State.CLOSED
    pb.client(codec.encode_password("tok")).expect_nothing()


def test_second_ssl_request_inside_tls_is_refused() -> None:
    pb = Playbook(new_session(tls=True))
    pb.client(codec.encode_ssl_request()).expect(Fatal("08P01"), *CLOSE)


def test_gssenc_request_is_declined_and_startup_continues() -> None:
    gss = struct.pack("!II", 8, m.GSSENC_REQUEST_CODE)
    pb = Playbook(new_session())
    pb.client(gss).expect(c.SendClient(b"N"))
    pb.client(ALICE_APP).expect(c.SendClient(codec.AUTH_CLEARTEXT_FRAME))
    # The same in one chunk.
    Playbook(new_session()).client(gss + ALICE_APP).expect(
        c.SendClient(b"N"), c.SendClient(codec.AUTH_CLEARTEXT_FRAME)
    )


def test_gssenc_then_ssl_request() -> None:
    gss = struct.pack("!II", 8, m.GSSENC_REQUEST_CODE)
    pb = Playbook(new_session(tls=False))
    pb.client(gss).expect(c.SendClient(b"N"))
    pb.client(codec.encode_ssl_request()).expect(c.SendClient(b"S"), c.StartClientTLS())


def test_cancel_request_is_forwarded_and_the_shell_closes_the_client_once_delivered() -> None:
    pb = Playbook(new_session(tls=False))
    pb.client(codec.encode_cancel_request(PROXY_PID, PROXY_SECRET)).expect(
        c.ForwardCancel(PROXY_PID, PROXY_SECRET)
    )
    assert pb.session.state is State.CLOSED


def test_garbage_protocol_version_is_refused() -> None:
    packet = struct.pack("!II", 9, 1234 << 16) + b"\x00"
    Playbook(new_session()).client(packet).expect(Fatal("08P01"), *CLOSE)


def test_oversized_startup_packet_is_refused() -> None:
    Playbook(new_session()).client(struct.pack("!II", 100_000, 196608)).expect(Fatal("54000"), *CLOSE)


def test_early_terminate_is_closed_without_a_word() -> None:
    # A Terminate where the start-up packet belongs: no FATAL frame, as PostgreSQL does.
    got = Playbook(new_session()).client(b"X\0\0\0\x04").take()
    assert got == [*CLOSE]


# ---------------------------------------------------------------------------------------
# startup: TLS requirement, password, identity checks


def test_plaintext_startup_is_refused_before_any_password_request() -> None:
    pb = Playbook(new_session(tls=False))
    pb.client(ALICE_APP + codec.encode_password("tok"))
    got = pb.take()
    assert got == [Fatal("28000"), *CLOSE]
    # The client never learns that a password would have been accepted, and the token
    # that followed the startup packet was not read.
    assert c.SendClient(codec.AUTH_CLEARTEXT_FRAME) not in got
    assert not any(isinstance(cmd, c.VerifyPassword) for cmd in got)
    err = error_fields(got[0].data)  # type: ignore[union-attr]
    assert "TLS" in err.message
    assert err.get("H")


def test_plaintext_is_fine_when_tls_is_not_required() -> None:
    pb = Playbook(new_session(tls=False, config=make_config(require_client_tls=False)))
    pb.client(ALICE_APP).expect(c.SendClient(codec.AUTH_CLEARTEXT_FRAME))


def test_startup_without_user_is_refused() -> None:
    Playbook(new_session()).client(startup(("database", "app"))).expect(Fatal("28000"), *CLOSE)


def test_replication_connections_are_refused() -> None:
    pb = Playbook(new_session())
    pb.client(startup(("user", "alice"), ("database", "app"), ("replication", "database")))
    pb.expect(Fatal("0A000"), *CLOSE)


@pytest.mark.parametrize("value", ["false", "off", "0"])
def test_replication_off_is_fine(value: str) -> None:
    pb = Playbook(new_session())
    pb.client(startup(("user", "alice"), ("database", "app"), ("replication", value)))
    pb.expect(c.SendClient(codec.AUTH_CLEARTEXT_FRAME))


def test_password_is_handed_over_for_verification() -> None:
    pb = Playbook(new_session())
    pb.client(ALICE_APP).expect(c.SendClient(codec.AUTH_CLEARTEXT_FRAME))
    assert pb.session.state is State.AUTH
    pb.client(codec.encode_password("dbs_tok_ünï")).expect(c.VerifyPassword("alice", "dbs_tok_ünï"))
    assert state_of(pb) is State.VERIFYING


def test_startup_and_password_in_one_chunk() -> None:
    Playbook(new_session()).client(ALICE_APP + codec.encode_password("tok")).expect(
        c.SendClient(codec.AUTH_CLEARTEXT_FRAME), c.VerifyPassword("alice", "tok")
    )


@given(cuts=st.lists(st.integers(0, len(ALICE_APP) + 9), max_size=8))
def test_startup_and_password_split_anywhere(cuts: list[int]) -> None:
    data = ALICE_APP + codec.encode_password("tok")
    bounds = [0, *sorted(cuts), len(data)]
    pb = Playbook(new_session())
    for a, b in itertools.pairwise(bounds):
        if a < b:  # asyncio never delivers an empty chunk
            pb.client(data[a:b])
    assert pb.take() == [c.SendClient(codec.AUTH_CLEARTEXT_FRAME), c.VerifyPassword("alice", "tok")]


def test_terminate_instead_of_password_closes_quietly() -> None:
    pb = Playbook(new_session())
    pb.client(ALICE_APP).take()
    pb.client(codec.TERMINATE).expect(c.CloseClient())


def test_other_message_instead_of_password_is_refused() -> None:
    pb = Playbook(new_session())
    pb.client(ALICE_APP).take()
    pb.client(codec.encode_query("select 1")).expect(Fatal("08P01"), *CLOSE)


def test_huge_password_message_is_refused_from_its_header() -> None:
    pb = Playbook(new_session())
    pb.client(ALICE_APP).take()
    pb.client(b"p" + struct.pack("!I", 10_000_000)).expect(Fatal("54000"), *CLOSE)


def test_unknown_token_is_refused_28p01() -> None:
    pb = Playbook(new_session())
    pb.client(ALICE_APP + codec.encode_password("bad")).take()
    pb.event(PasswordVerified(None)).expect(Fatal("28P01", 'user "alice"'), *CLOSE)
    assert pb.session.identity is None


def test_login_while_the_control_plane_is_down_is_refused_57p03() -> None:
    """Not the credentials' fault: cannot_connect_now, naming the control plane."""
    pb = Playbook(new_session())
    pb.client(ALICE_APP + codec.encode_password("tok")).take()
    (fatal, *rest) = pb.event(PasswordVerified(ControlPlaneUnavailable("cp.example:5432/dbsentry_control: refused"))).take()
    assert rest == [*CLOSE]
    err = error_fields(fatal.data)  # type: ignore[attr-defined]
    assert err.get("C") == "57P03"
    assert "the control plane is unavailable" in err.message and "cp.example" in err.message
    assert pb.session.identity is None


def test_unknown_connection_is_refused_3d000() -> None:
    pb = Playbook(new_session())
    pb.client(startup(("user", "alice"), ("database", "nope")) + codec.encode_password("t")).take()
    pb.event(PasswordVerified(ALICE)).expect(Fatal("3D000", '"nope"'), *CLOSE)


def test_connection_defaults_to_the_user_name() -> None:
    # libpq's rule: no database means database = user.
    pb = Playbook(new_session())
    pb.client(startup(("user", "alice")) + codec.encode_password("t")).take()
    pb.event(PasswordVerified(ALICE)).expect(
        c.OpenUpstream("alice", (("database", "alice_db"),))
    )


def test_allow_groups_mismatch_is_refused_42501() -> None:
    pb = Playbook(new_session())
    pb.client(
        startup(("user", "alice"), ("database", "finance")) + codec.encode_password("t")
    ).take()
    pb.event(PasswordVerified(ALICE)).expect(Fatal("42501"), *CLOSE)


def test_allow_groups_match_opens_the_upstream() -> None:
    bob = Identity("bob@example.com", frozenset({"finance", "dev"}), "human", "tok-2", "token")
    pb = Playbook(new_session())
    pb.client(startup(("user", "bob"), ("database", "finance")) + codec.encode_password("t")).take()
    pb.event(PasswordVerified(bob)).expect(c.OpenUpstream("finance", (("database", "fin_db"),)))
    assert pb.session.identity == bob
    assert pb.session.state is State.CONNECTING


def test_verification_result_after_close_is_ignored() -> None:
    pb = Playbook(new_session())
    pb.client(ALICE_APP + codec.encode_password("t")).take()
    pb.event(StartupTimedOut()).take()
    pb.event(PasswordVerified(ALICE)).expect_nothing()


def test_client_data_while_verifying_is_kept_for_later() -> None:
    # Like PostgreSQL, queries pipelined behind the password run once the session is ready.
    pb = Playbook(new_session())
    pb.client(ALICE_APP + codec.encode_password("t")).take()
    pb.client(codec.encode_query("select 1")).expect()


# ---------------------------------------------------------------------------------------
# what is forwarded to the upstream


def test_upstream_parameters_are_rewritten() -> None:
    params = (
        ("user", "alice"),
        ("database", "app"),
        ("application_name", "psql"),
        ("options", r"-c dbsentry.approval=wait -c search_path=app\ schema -cgeqo=off"),
        ("dbsentry.reason", "INC 42"),
        ("DbSentry.Ticket", "T-1"),
        ("_pq_.compression", "on"),
        ("client_encoding", "UTF8"),
    )
    pb = Playbook(new_session())
    pb.client(codec.encode_startup(params, m.PROTOCOL_3_0 + 2))
    pb.expect(
        c.SendClient(codec.encode_negotiate_protocol_version(0, ["_pq_.compression"])),
        c.SendClient(codec.AUTH_CLEARTEXT_FRAME),
    )
    assert pb.session.settings == {"approval": "wait", "reason": "INC 42", "ticket": "T-1"}
    pb.client(codec.encode_password("tok")).take()
    pb.event(PasswordVerified(ALICE)).expect(
        c.OpenUpstream(
            "app",
            (
                ("database", "app_db"),  # the connection's database, not the client's name for it
                ("application_name", "psql"),
                ("client_encoding", "UTF8"),
                ("options", r"-c search_path=app\ schema -c geqo=off"),
            ),
        )
    )


def test_user_is_never_forwarded() -> None:
    # The shell logs in as the configured upstream user; the client's name is an identity.
    pb = Playbook(new_session())
    pb.client(ALICE_APP + codec.encode_password("t")).take()
    (cmd,) = pb.event(PasswordVerified(ALICE)).take()
    assert isinstance(cmd, c.OpenUpstream)
    assert [k for k, _ in cmd.params] == ["database"]


def test_options_with_only_dbsentry_settings_are_not_forwarded() -> None:
    pb = Playbook(new_session())
    opts = ("options", "-c dbsentry.approval=wait")
    pb.client(
        startup(("user", "alice"), ("database", "app"), opts) + codec.encode_password("t")
    ).take()
    pb.event(PasswordVerified(ALICE)).expect(open_upstream())
    assert pb.session.settings == {"approval": "wait"}


def test_protocol_3_2_is_negotiated_down_to_3_0() -> None:
    pb = Playbook(new_session())
    pb.client(startup(("user", "alice"), ("database", "app"), version=m.PROTOCOL_3_0 + 2))
    first, second = pb.take()
    assert second == c.SendClient(codec.AUTH_CLEARTEXT_FRAME)
    assert isinstance(first, c.SendClient)
    ((t, body),) = frames(first.data)
    assert t == "v"
    assert codec.decode_negotiate_protocol_version(
        body, 0, len(body)
    ) == m.NegotiateProtocolVersion(0, ())


def test_protocol_3_0_gets_no_negotiation() -> None:
    pb = Playbook(new_session())
    pb.client(ALICE_APP).expect(c.SendClient(codec.AUTH_CLEARTEXT_FRAME))


# ---------------------------------------------------------------------------------------
# upstream ready: the greeting


def test_greeting_uses_the_proxy_backend_key() -> None:
    pb = logged_in()
    assert pb.history[-1][1] == [c.LoginComplete(), c.SendClient(GREETING)]
    got = frames(GREETING)
    assert [t for t, _ in got] == ["R", "S", "S", "K", "Z"]
    key = got[3][1]
    assert codec.decode_backend_key(key, 0, len(key)) == m.BackendKeyData(PROXY_PID, PROXY_SECRET)
    # The upstream's real key never reaches the client.
    assert UPSTREAM_SECRET not in GREETING
    assert struct.pack("!I", UPSTREAM_PID) + UPSTREAM_SECRET not in GREETING
    assert pb.session.upstream_params == {"server_version": "16.2", "client_encoding": "UTF8"}


def test_greeting_reports_the_upstream_transaction_status() -> None:
    pb = Playbook(new_session())
    pb.client(ALICE_APP + codec.encode_password("t")).take()
    pb.event(PasswordVerified(ALICE)).take()
    ready = UpstreamReady(b"", {}, UPSTREAM_PID, UPSTREAM_SECRET, "I")
    pb.event(ready).expect(
        c.LoginComplete(),
        c.SendClient(
            codec.AUTH_OK_FRAME
            + codec.encode_backend_key(PROXY_PID, PROXY_SECRET)
            + codec.encode_ready("I")
        )
    )


def test_leftover_upstream_bytes_follow_the_greeting() -> None:
    pb = Playbook(new_session())
    pb.client(ALICE_APP + codec.encode_password("t")).take()
    pb.event(PasswordVerified(ALICE)).take()
    notice = codec.notice_response("hello")
    ready = UpstreamReady(PARAM_FRAMES, {}, UPSTREAM_PID, UPSTREAM_SECRET, "I", leftover=notice)
    pb.event(ready).expect(c.LoginComplete(), c.SendClient(GREETING), c.SendClient(notice))


def test_upstream_ready_in_the_wrong_state_closes_that_upstream() -> None:
    pb = Playbook(new_session())
    pb.event(UPSTREAM_READY).expect(c.CloseUpstream())
    assert pb.session.state is State.STARTUP


def test_upstream_failure_during_login() -> None:
    pb = Playbook(new_session())
    pb.client(ALICE_APP + codec.encode_password("t")).take()
    pb.event(PasswordVerified(ALICE)).take()
    pb.event(UpstreamFailed("28P01", "upstream refused")).expect(Fatal("28P01"), *CLOSE)
    pb.event(UpstreamFailed("08006", "again")).expect_nothing()


# ---------------------------------------------------------------------------------------
# ready: forwarding


def test_query_is_forwarded_unchanged_and_counted() -> None:
    pb = logged_in()
    q = codec.encode_query("select 1")
    pb.client(q)
    (cmd,) = pb.take()
    assert cmd == c.SendUpstream(q)
    assert pb.session.pending_syncs == 1
    reply = (
        codec.frame(b"T", b"\x00\x00")
        + codec.frame(b"D", b"\x00\x00")
        + codec.encode_command_complete("SELECT 1")
        + codec.encode_ready("I")
    )
    pb.upstream(reply).expect(c.SendClient(reply))
    assert pb.session.pending_syncs == 0


def test_extended_protocol_counts_syncs_and_function_calls() -> None:
    pb = logged_in()
    batch = (
        codec.encode_parse(m.Parse("", "select $1", (23,)))
        + codec.encode_bind(m.Bind("", "", (), (b"1",), ()))
        + codec.encode_execute(m.Execute("", 0))
        + codec.SYNC
        + codec.encode_execute(m.Execute("", 0))
        + codec.SYNC
        + codec.frame(b"F", b"\x00\x00\x04\xd2\x00\x00\x00\x00\x00\x00")
        + codec.FLUSH
    )
    pb.client(batch).expect(c.SendUpstream(batch))
    assert pb.session.pending_syncs == 3
    pb.upstream(codec.encode_ready("I") + codec.encode_ready("I")).take()
    assert pb.session.pending_syncs == 1
    pb.upstream(codec.encode_ready("I")).take()
    assert pb.session.pending_syncs == 0
    # An unsolicited ReadyForQuery does not drive the count negative.
    pb.upstream(codec.encode_ready("I")).take()
    assert pb.session.pending_syncs == 0


def test_transaction_status_follows_ready_for_query() -> None:
    pb = logged_in()
    assert pb.session.txn_status == "I"
    pb.client(codec.encode_query("begin")).take()
    pb.upstream(codec.encode_command_complete("BEGIN") + codec.encode_ready("T")).take()
    assert pb.session.txn_status == "T"
    pb.client(codec.encode_query("select 1/0")).take()
    pb.upstream(codec.error_response("22012", "division by zero") + codec.encode_ready("E")).take()
    assert pb.session.txn_status == "E"
    pb.client(codec.encode_query("rollback")).take()
    pb.upstream(codec.encode_ready("I")).take()
    assert pb.session.txn_status == "I"


def test_partial_client_frame_waits_for_the_rest() -> None:
    pb = logged_in()
    q = codec.encode_query("select 42")
    pb.client(q[:6]).expect_nothing()
    assert pb.session.pending_syncs == 0
    pb.client(q[6:]).expect(c.SendUpstream(q))
    assert pb.session.pending_syncs == 1


client_frame = st.one_of(
    st.text(max_size=30).filter(lambda s: "\x00" not in s).map(codec.encode_query),
    st.just(codec.SYNC),
    st.just(codec.FLUSH),
    st.binary(max_size=40).map(lambda b: codec.frame(b"F", b)),
    st.binary(max_size=40).map(lambda b: codec.frame(b"d", b)),
    st.just(codec.encode_parse(m.Parse("s", "select $1", (25,)))),
    st.just(codec.encode_bind(m.Bind("", "s", (1,), (None, b"\x00"), (1,)))),
    st.just(codec.encode_describe("P", "")),
    st.just(codec.encode_execute(m.Execute("", 10))),
)
server_frame = st.one_of(
    st.sampled_from("ITE").map(codec.encode_ready),
    st.binary(max_size=60).map(lambda b: codec.frame(b"D", b)),
    st.binary(max_size=60).map(lambda b: codec.frame(b"T", b)),
    st.just(codec.encode_command_complete("SELECT 1")),
    st.just(codec.notice_response("note")),
    st.just(codec.error_response("42P01", "no such table")),
    st.just(codec.encode_parameter_status("TimeZone", "UTC")),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at ``cuts``, without empty pieces (asyncio never delivers those)."""
    bounds = [0, *sorted(min(x, len(data)) for x in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if a < b]


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    to_upstream=st.lists(client_frame, max_size=15),
    to_client=st.lists(server_frame, max_size=15),
    up_cuts=st.lists(st.integers(0, 2000), max_size=12),
    down_cuts=st.lists(st.integers(0, 2000), max_size=12),
)
def test_ready_forwarding_is_byte_exact_under_any_split(
    to_upstream: list[bytes], to_client: list[bytes], up_cuts: list[int], down_cuts: list[int]
) -> None:
    pb = logged_in()
    upstream_bytes = b"".join(to_upstream)
    for chunk in chunked(upstream_bytes, up_cuts):
        pb.client(chunk)
    sent_up = pb.take()
    assert all(isinstance(cmd, c.SendUpstream) and cmd.data for cmd in sent_up)
    # Each command carries whole frames, and together they are the client's bytes.
    for cmd in sent_up:
        frames(cmd.data)  # type: ignore[union-attr]
    assert b"".join(cmd.data for cmd in sent_up) == upstream_bytes  # type: ignore[union-attr]
    syncs = sum(f[0] in b"QSF" for f in to_upstream)
    assert pb.session.pending_syncs == syncs

    client_bytes = b"".join(to_client)
    for chunk in chunked(client_bytes, down_cuts):
        pb.upstream(chunk)
    sent_down = pb.take()
    assert all(isinstance(cmd, c.SendClient) and cmd.data for cmd in sent_down)
    assert b"".join(cmd.data for cmd in sent_down) == client_bytes  # type: ignore[union-attr]
    readies = [f for f in to_client if f[:1] == b"Z"]
    assert pb.session.pending_syncs == max(0, syncs - len(readies))
    assert pb.session.txn_status == (chr(readies[-1][5]) if readies else "I")
    assert pb.session.state is State.READY


# ---------------------------------------------------------------------------------------
# ready: endings


def test_terminate_closes_both_sides_without_forwarding_it() -> None:
    pb = logged_in()
    pb.client(codec.TERMINATE).expect(c.CloseUpstream(), c.CloseClient())
    assert pb.session.state is State.CLOSED


def test_frames_before_terminate_are_forwarded_but_terminate_is_not() -> None:
    pb = logged_in()
    q = codec.encode_query("insert into t values (1)")
    pb.client(q + codec.TERMINATE + codec.encode_query("select 'after'"))
    pb.expect(c.SendUpstream(q), c.CloseUpstream(), c.CloseClient())
    pb.client(codec.encode_query("select 2")).expect_nothing()


def test_terminate_split_across_chunks() -> None:
    pb = logged_in()
    q = codec.encode_query("select 1")
    data = q + codec.TERMINATE
    pb.client(data[: len(q) + 2]).expect(c.SendUpstream(q))
    pb.client(data[len(q) + 2 :]).expect(c.CloseUpstream(), c.CloseClient())


def test_client_vanishing_mid_query_cancels_it() -> None:
    pb = logged_in()
    pb.client(codec.encode_query("select pg_sleep(3600)")).take()
    pb.event(ClientClosed()).expect(c.CancelUpstream(), c.CloseUpstream())
    assert pb.session.state is State.CLOSED


def test_client_vanishing_while_idle_only_closes() -> None:
    pb = logged_in()
    pb.client(codec.encode_query("select 1")).take()
    pb.upstream(codec.encode_command_complete("SELECT 1") + codec.encode_ready("I")).take()
    pb.event(ClientClosed()).expect(c.CloseUpstream())


def test_client_vanishing_during_login_only_closes() -> None:
    pb = Playbook(new_session())
    pb.client(ALICE_APP + codec.encode_password("t")).take()
    pb.event(PasswordVerified(ALICE)).take()
    pb.event(ClientClosed()).expect(c.CloseUpstream())


def test_upstream_closing_unexpectedly_tells_the_client() -> None:
    pb = logged_in()
    pb.event(UpstreamClosed()).expect(Fatal("08006"), c.CloseClient())
    assert pb.session.state is State.CLOSED
    pb.event(UpstreamClosed()).expect_nothing()


def test_upstream_fatal_is_not_followed_by_a_second_error() -> None:
    pb = logged_in()
    shutdown = codec.error_response(
        "57P01", "terminating connection due to administrator command", severity="FATAL"
    )
    pb.upstream(shutdown).expect(c.SendClient(shutdown))
    pb.event(UpstreamClosed()).expect(c.CloseClient())


def test_upstream_non_fatal_error_still_gets_08006_on_close() -> None:
    pb = logged_in()
    pb.upstream(codec.error_response("42P01", "no such table") + codec.encode_ready("I")).take()
    pb.event(UpstreamClosed()).expect(Fatal("08006"), c.CloseClient())


@pytest.mark.parametrize("stage", ["startup", "auth", "verifying", "connecting"])
def test_startup_timeout_before_ready(stage: str) -> None:
    pb = Playbook(new_session())
    if stage != "startup":
        pb.client(ALICE_APP)
    if stage in ("verifying", "connecting"):
        pb.client(codec.encode_password("t"))
    if stage == "connecting":
        pb.event(PasswordVerified(ALICE))
    pb.take()
    pb.event(StartupTimedOut()).expect(Fatal("08P01"), *CLOSE)
    assert pb.session.state is State.CLOSED


def test_startup_timeout_during_the_tls_handshake_closes_without_a_word_in_clear() -> None:
    """Bytes in clear in the middle of the client's TLS handshake are garbage to it (the
    client reported "wrong version number"): the connection is closed, nothing is written."""
    pb = Playbook(new_session(tls=False))
    pb.client(codec.encode_ssl_request()).expect(c.SendClient(b"S"), c.StartClientTLS())
    out = pb.session.handle(StartupTimedOut())
    assert not [cmd for cmd in out if isinstance(cmd, c.SendClient)], out
    assert c.CloseClient() in out and pb.session.state is State.CLOSED
    # after the handshake, the timeout is said over TLS as before
    pb = Playbook(new_session(tls=False))
    pb.client(codec.encode_ssl_request()).take()
    pb.event(ClientTLSStarted("TLSv1.3")).take()
    pb.event(StartupTimedOut()).expect(Fatal("08P01"), *CLOSE)


def test_startup_timeout_after_ready_does_nothing() -> None:
    pb = logged_in()
    pb.event(StartupTimedOut()).expect_nothing()
    assert pb.session.state is State.READY


def test_oversized_client_message_after_login_is_refused_from_its_header() -> None:
    pb = logged_in()
    pb.client(b"Q" + struct.pack("!I", MAX_MESSAGE + 1)).expect(Fatal("54000"), *CLOSE)
    assert pb.session.state is State.CLOSED


def test_message_at_the_limit_after_login_is_forwarded() -> None:
    pb = logged_in()
    q = codec.frame(b"Q", b"x" * (MAX_MESSAGE - 5) + b"\x00")
    pb.client(q).expect(c.SendUpstream(q))


def test_oversized_upstream_message_is_refused() -> None:
    pb = logged_in()
    pb.upstream(b"D" + struct.pack("!I", MAX_MESSAGE + 1)).expect(Fatal("54000"), *CLOSE)


def test_empty_ready_for_query_from_upstream_is_a_protocol_error() -> None:
    # A malformed ReadyForQuery (no status byte) must end the session cleanly with an
    # error, not raise out of the state machine into the I/O shell.
    pb = logged_in()
    pb.upstream(b"Z\x00\x00\x00\x04").expect(Fatal("08P01"), *CLOSE)


# Frames with plausible types and arbitrary (often empty or short) bodies reach the
# per-type handling that uniform noise rarely does.
fuzz_frame = st.builds(
    lambda t, body: codec.frame(t.encode(), body),
    st.sampled_from("ZEDTCSNKRA"),
    st.binary(max_size=12),
)


@settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.binary(min_size=1, max_size=80) | fuzz_frame, max_size=6),
    cuts=st.lists(st.integers(0, 500), max_size=4),
)
def test_random_upstream_bytes_never_crash_the_session(data: list[bytes], cuts: list[int]) -> None:
    pb = logged_in()
    for chunk in chunked(b"".join(data), cuts):
        pb.upstream(chunk)
    for cmd in pb.take():
        assert isinstance(cmd, c.SendClient | c.CloseClient | c.CloseUpstream)


@settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(st.binary(min_size=1, max_size=80), max_size=6),
    stage=st.sampled_from(["startup", "auth", "ready"]),
    tls=st.booleans(),
)
def test_random_client_bytes_never_crash_the_session(
    data: list[bytes], stage: str, tls: bool
) -> None:
    if stage == "ready":
        pb = logged_in()
    else:
        pb = Playbook(new_session(tls=tls))
        if stage == "auth":
            pb.client(ALICE_APP).take()
    for chunk in data:
        pb.client(chunk)
    got = pb.take()
    # Whatever the bytes, an error ends with the client being closed.
    fatal = [cmd for cmd in got if cmd == Fatal("08P01") or cmd == Fatal("54000")]
    if fatal:
        assert c.CloseClient() in got
        assert pb.session.state is State.CLOSED


# ---------------------------------------------------------------------------------------
# split_options


@pytest.mark.parametrize(
    ("options", "ours", "rest"),
    [
        ("", {}, ""),
        (
            "-c dbsentry.approval=wait -c search_path=app",
            {"approval": "wait"},
            "-c search_path=app",
        ),
        ("-csearch_path=app", {}, "-c search_path=app"),
        ("-cdbsentry.reason=ticket", {"reason": "ticket"}, ""),
        ("-c DBSentry.Approval=wait", {"approval": "wait"}, ""),
        (r"-c application_name=my\ app", {}, r"-c application_name=my\ app"),
        (r"-c dbsentry.reason=fix\ prod\ now", {"reason": "fix prod now"}, ""),
        (r"-c a=back\\slash", {}, r"-c a=back\\slash"),
        ("--search_path=app", {}, "-c search_path=app"),
        ("--dbsentry.approval=wait", {"approval": "wait"}, ""),
        ("--enable-seqscan=off", {}, "-c enable_seqscan=off"),
        ("-e -c geqo=off", {}, "-e -c geqo=off"),
        ("-c dbsentry.approval=wait -c dbsentry.approval=deny", {"approval": "deny"}, ""),
        ("-c", {}, "-c"),
        ("  -c   geqo=off  ", {}, "-c geqo=off"),
    ],
)
def test_split_options(options: str, ours: dict[str, str], rest: str) -> None:
    assert split_options(options) == (ours, rest)


def test_long_option_dashes_become_underscores_in_the_name_only() -> None:
    # PostgreSQL's ParseLongOption turns '-' into '_' in the name; the value is untouched.
    assert split_options("--search-path=my-schema") == ({}, "-c search_path=my-schema")
    assert split_options("--dbsentry.reason=INC-1234") == ({"reason": "INC-1234"}, "")


def test_quotes_are_literal_in_options() -> None:
    # PostgreSQL splits options on unescaped whitespace only; quotes have no meaning.
    # An apostrophe in one setting must not make the proxy ignore its own settings.
    assert split_options("-c dbsentry.approval=wait -c application_name=it's") == (
        {"approval": "wait"},
        "-c application_name=it's",
    )


def pg_split_opts(options: str) -> list[str]:
    """PostgreSQL's pg_split_opts (src/backend/utils/init/postinit.c), in Python."""
    words: list[str] = []
    i, n = 0, len(options)
    while i < n:
        while i < n and options[i] in " \t\n\r\f\v":
            i += 1
        if i >= n:
            break
        word: list[str] = []
        escaped = False
        while i < n:
            ch = options[i]
            if ch in " \t\n\r\f\v" and not escaped:
                break
            if not escaped and ch == "\\":
                escaped = True
            else:
                escaped = False
                word.append(ch)
            i += 1
        words.append("".join(word))
    return words


def pg_escape(word: str) -> str:
    return word.replace("\\", "\\\\").replace(" ", "\\ ")


setting_name = st.from_regex(r"(dbsentry\.)?[a-z][a-z_]{0,10}", fullmatch=True)
setting_value = st.text(st.sampled_from("ab-_=.' \"\\,x1"), max_size=12)


@settings(max_examples=200)
@given(st.lists(st.tuples(setting_name, setting_value), max_size=6))
def test_split_options_agrees_with_postgresql(pairs: list[tuple[str, str]]) -> None:
    options = " ".join("-c " + pg_escape(f"{name}={value}") for name, value in pairs)
    ours, rest = split_options(options)
    expected_ours = {n[len("dbsentry.") :]: v for n, v in pairs if n.startswith("dbsentry.")}
    expected_rest = [
        w for n, v in pairs if not n.startswith("dbsentry.") for w in ("-c", f"{n}={v}")
    ]
    assert ours == expected_ours
    # What the upstream will read from the forwarded string is exactly the other settings.
    assert pg_split_opts(rest) == expected_rest


def test_the_transition_table_names_every_state_and_a_closed_session_stays_closed() -> None:
    assert set(TRANSITIONS) == set(State)
    for state, targets in TRANSITIONS.items():
        assert State.CLOSED in targets, state  # every state can end
    assert TRANSITIONS[State.CLOSED] == {State.CLOSED}
    assert TRANSITIONS[State.READY] == {State.CLOSED}  # a logged-in session never logs in again


@pytest.mark.parametrize(
    ("start", "target"),
    [(State.STARTUP, State.READY), (State.AUTH, State.CONNECTING), (State.READY, State.AUTH), (State.CLOSED, State.READY)],
)
def test_a_transition_outside_the_table_raises_and_closes_the_session(start: State, target: State) -> None:
    session = new_session()
    session.state = start
    with pytest.raises(SessionStateError, match=f"{start.value} -> {target.value} is not a transition"):
        session._enter(target)
    assert session.state is State.CLOSED

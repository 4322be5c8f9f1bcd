"""Unit tests for the sans-IO upstream login, against a PostgreSQL server simulated here."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import struct
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsentry.engines.postgres.session.upstream import (
    HandshakeStep,
    UpstreamHandshake,
    UpstreamReady,
)
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m

USER = "svc_app"
PASSWORD = "correct horse battery staple"
PARAMS = (("database", "app_db"), ("application_name", "psql"))
PARAM_FRAMES = (
    codec.encode_parameter_status("server_version", "16.2")
    + codec.encode_parameter_status("client_encoding", "UTF8")
    + codec.encode_parameter_status("TimeZone", "Europe/Paris")
)
KEY = codec.encode_backend_key(31337, b"\x01\x02\x03\x04")
AFTER_AUTH = PARAM_FRAMES + KEY + codec.encode_ready("I")


def handshake(password: str | None = PASSWORD, **kw: object) -> UpstreamHandshake:
    return UpstreamHandshake(USER, password, PARAMS, **kw)  # type: ignore[arg-type]


def client_frames(data: bytes) -> list[tuple[str, bytes]]:
    splitter = codec.FrameSplitter()
    buf, spans = splitter.split(data)
    assert splitter.pending == 0
    return [(chr(t), bytes(buf[s:e])) for t, s, e in spans]


def assert_ready(step: HandshakeStep) -> UpstreamReady:
    assert step.refused is None, step.refused
    assert step.ready is not None
    ready = step.ready
    assert ready.params == {
        "server_version": "16.2",
        "client_encoding": "UTF8",
        "TimeZone": "Europe/Paris",
    }
    assert ready.parameter_frames == PARAM_FRAMES
    assert (ready.backend_pid, ready.backend_secret) == (31337, b"\x01\x02\x03\x04")
    assert ready.status == "I"
    return ready


def feed_in_chunks(hs: UpstreamHandshake, data: bytes, cuts: list[int]) -> HandshakeStep:
    """Feed ``data`` in pieces; return the merged result (sends joined, last outcome)."""
    bounds = [0, *sorted(min(x, len(data)) for x in cuts), len(data)]
    sent = b""
    last = HandshakeStep()
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        step = hs.receive(data[a:b])
        assert last.ready is None and last.refused is None, "bytes fed after the outcome"
        sent += step.send
        last = step
    return HandshakeStep(sent, last.ready, last.refused)


cuts_st = st.lists(st.integers(0, 400), max_size=10)


# ---------------------------------------------------------------------------------------
# the startup message


def test_startup_message_names_the_configured_user_and_params() -> None:
    data = handshake().startup_message()
    got = codec.read_startup_packet(data)
    assert got is not None
    msg, used = got
    assert used == len(data)
    assert msg == m.StartupMessage(m.PROTOCOL_3_0, (("user", USER), *PARAMS))


# ---------------------------------------------------------------------------------------
# trust, cleartext, md5


def test_trust_login() -> None:
    step = handshake().receive(codec.AUTH_OK_FRAME + AFTER_AUTH)
    assert step.send == b""
    ready = assert_ready(step)
    assert ready.leftover == b""


@given(cuts=cuts_st)
def test_trust_login_split_anywhere(cuts: list[int]) -> None:
    step = feed_in_chunks(handshake(), codec.AUTH_OK_FRAME + AFTER_AUTH, cuts)
    assert step.send == b""
    assert assert_ready(step).leftover == b""


def test_notices_and_negotiation_during_login_are_kept_for_the_client() -> None:
    notice = codec.notice_response("password expires soon", sqlstate="01000")
    npv = codec.encode_negotiate_protocol_version(0, ["_pq_.x"])
    step = handshake().receive(npv + codec.AUTH_OK_FRAME + notice + AFTER_AUTH)
    assert step.ready is not None
    assert step.ready.parameter_frames == notice + PARAM_FRAMES


def test_leftover_bytes_after_ready_are_returned() -> None:
    notification = codec.frame(b"A", struct.pack("!I", 1) + b"chan\x00payload\x00")
    partial = codec.notice_response("half")[:7]
    step = handshake().receive(codec.AUTH_OK_FRAME + AFTER_AUTH + notification + partial)
    ready = assert_ready(step)
    assert ready.leftover == notification + partial


def test_leftover_partial_frame_after_ready_in_a_later_chunk() -> None:
    hs = handshake()
    tail = codec.notice_response("hi")
    assert hs.receive(codec.AUTH_OK_FRAME + PARAM_FRAMES + KEY).ready is None
    step = hs.receive(codec.encode_ready("T") + tail[:3])
    assert step.ready is not None
    assert step.ready.status == "T"
    assert step.ready.leftover == tail[:3]


def test_cleartext_password() -> None:
    hs = handshake()
    step = hs.receive(codec.AUTH_CLEARTEXT_FRAME)
    assert (step.ready, step.refused) == (None, None)
    assert client_frames(step.send) == [("p", PASSWORD.encode() + b"\x00")]
    assert_ready(hs.receive(codec.AUTH_OK_FRAME + AFTER_AUTH))


def test_md5_password() -> None:
    salt = b"\x9a\x01\xff\x00"
    hs = handshake()
    step = hs.receive(codec.encode_auth(m.AUTH_MD5, salt))
    # Computed independently: md5(hex(md5(password || user)) || salt), prefixed "md5".
    inner = hashlib.md5((PASSWORD + USER).encode()).hexdigest()
    expected = b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode() + b"\x00"
    assert client_frames(step.send) == [("p", expected)]
    assert_ready(hs.receive(codec.AUTH_OK_FRAME + AFTER_AUTH))


def test_md5_with_a_bad_salt_is_refused() -> None:
    step = handshake().receive(codec.encode_auth(m.AUTH_MD5, b"\x00\x01"))
    assert step.refused is not None
    assert step.refused.sqlstate == "08P01"
    assert step.send == b""


@pytest.mark.parametrize("code", [m.AUTH_CLEARTEXT, m.AUTH_MD5, m.AUTH_SASL])
def test_password_demanded_but_none_configured(code: int) -> None:
    data = (
        b"SCRAM-SHA-256\x00\x00"
        if code == m.AUTH_SASL
        else b"salt"[: 4 if code == m.AUTH_MD5 else 0]
    )
    step = handshake(password=None).receive(codec.encode_auth(code, data))
    assert step.refused is not None
    assert step.refused.sqlstate == "08004"
    assert not step.refused.from_server
    assert step.send == b""


# ---------------------------------------------------------------------------------------
# refusals


def test_error_response_is_refused_with_its_sqlstate() -> None:
    err = codec.error_response(
        "28P01", f'password authentication failed for user "{USER}"', severity="FATAL"
    )
    step = handshake().receive(err)
    assert step.refused is not None
    assert step.refused.sqlstate == "28P01"
    assert step.refused.message == f'password authentication failed for user "{USER}"'
    assert step.refused.from_server
    assert step.ready is None


def test_error_after_password_is_refused() -> None:
    hs = handshake()
    hs.receive(codec.AUTH_CLEARTEXT_FRAME)
    step = hs.receive(
        codec.error_response("3D000", 'database "app_db" does not exist', severity="FATAL")
    )
    assert step.refused is not None
    assert step.refused.sqlstate == "3D000"


def test_error_without_sqlstate_is_refused_as_08006() -> None:
    step = handshake().receive(codec.encode_error_fields(b"E", [("S", "FATAL"), ("M", "no")]))
    assert step.refused is not None
    assert step.refused.sqlstate == "08006"


@pytest.mark.parametrize(
    ("code", "name"), [(7, "GSSAPI"), (9, "SSPI"), (2, "Kerberos"), (6, "SCM")]
)
def test_unsupported_methods_are_refused_08004(code: int, name: str) -> None:
    step = handshake().receive(codec.encode_auth(code))
    assert step.refused is not None
    assert step.refused.sqlstate == "08004"
    assert name in step.refused.message
    assert not step.refused.from_server
    assert step.send == b""


def test_unknown_method_is_refused_08004() -> None:
    step = handshake().receive(codec.encode_auth(99))
    assert step.refused is not None
    assert step.refused.sqlstate == "08004"


def test_unexpected_message_during_login_is_a_protocol_error() -> None:
    step = handshake().receive(codec.frame(b"D", b"\x00\x00"))
    assert step.refused is not None
    assert step.refused.sqlstate == "08P01"
    assert not step.refused.from_server


def test_oversized_message_during_login_is_refused_from_its_header() -> None:
    step = handshake(max_message=1024).receive(b"S" + struct.pack("!I", 1_000_000))
    assert step.refused is not None
    assert step.refused.sqlstate == "08P01"
    assert step.ready is None


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.lists(
        st.binary(min_size=1, max_size=60)
        | st.builds(
            lambda t, body: codec.frame(t.encode(), body),
            st.sampled_from("RSKZENv"),
            st.binary(max_size=20),
        )
        | st.builds(
            lambda code, body: codec.encode_auth(code, body),
            st.sampled_from([0, 3, 5, 10, 11, 12]),
            st.binary(max_size=20),
        ),
        max_size=6,
    )
)
def test_random_server_bytes_never_crash_the_handshake(data: list[bytes]) -> None:
    hs = handshake()
    for chunk in data:
        step = hs.receive(chunk)
        assert isinstance(step, HandshakeStep)
        if step.ready is not None or step.refused is not None:
            break


# ---------------------------------------------------------------------------------------
# SCRAM-SHA-256, against a server simulated from RFC 5802 / RFC 7677


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


@dataclass
class ScramServer:
    """The server half of SCRAM-SHA-256, for a user whose password is ``password``."""

    password: str
    salt: bytes = b"pepper and salt!"
    iterations: int = 4096
    server_nonce: str = "c2VydmVyIG5vbmNlIQ"
    mechanisms: tuple[str, ...] = ("SCRAM-SHA-256",)
    channel_binding: bytes | None = None  # tls-server-end-point data, when PLUS is on offer
    mechanism: str = ""
    client_first_bare: bytes = b""
    gs2_header: bytes = b""
    server_first: bytes = b""
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.salted = hashlib.pbkdf2_hmac(
            "sha256", self.password.encode(), self.salt, self.iterations
        )

    def hello(self) -> bytes:
        body = b"".join(name.encode() + b"\x00" for name in self.mechanisms) + b"\x00"
        return codec.encode_auth(m.AUTH_SASL, body)

    def on_initial(self, data: bytes) -> bytes:
        ((t, body),) = client_frames(data)
        assert t == "p"
        name, _, rest = body.partition(b"\x00")
        self.mechanism = name.decode()
        (length,) = struct.unpack("!i", rest[:4])
        client_first = rest[4:]
        assert len(client_first) == length
        # gs2-header is "<cbind-flag>,<authzid>,"; the bare message follows.
        flag, authzid, bare = client_first.split(b",", 2)
        self.gs2_header = flag + b"," + authzid + b","
        self.client_first_bare = bare
        attrs = dict(part.split(b"=", 1) for part in bare.split(b","))
        self.nonce = attrs[b"r"] + self.server_nonce.encode()
        self.server_first = (
            b"r="
            + self.nonce
            + b",s="
            + base64.b64encode(self.salt)
            + b",i="
            + str(self.iterations).encode()
        )
        return codec.encode_auth(m.AUTH_SASL_CONTINUE, self.server_first)

    def verify_client_final(self, data: bytes) -> tuple[bool, bytes]:
        """Check the client's proof; return (ok, server signature)."""
        ((t, body),) = client_frames(data)
        assert t == "p"
        without_proof, _, proof_b64 = body.rpartition(b",p=")
        attrs = dict(part.split(b"=", 1) for part in without_proof.split(b","))
        bound = self.gs2_header.startswith(b"p=")
        expected_cbind = self.gs2_header + ((self.channel_binding or b"") if bound else b"")
        if base64.b64decode(attrs[b"c"]) != expected_cbind:
            self.log.append("channel binding mismatch")
            return False, b""
        if attrs[b"r"] != self.nonce:
            self.log.append("nonce mismatch")
            return False, b""
        auth_message = self.auth_message(without_proof)
        client_key_expected = _hmac(self.salted, b"Client Key")
        stored_key = hashlib.sha256(client_key_expected).digest()
        signature = _hmac(stored_key, auth_message)
        proof = base64.b64decode(proof_b64)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if hashlib.sha256(client_key).digest() != stored_key:
            self.log.append("bad proof")
            return False, b""
        return True, self.signature(without_proof)

    def auth_message(self, client_final_without_proof: bytes) -> bytes:
        return self.client_first_bare + b"," + self.server_first + b"," + client_final_without_proof

    def signature(self, client_final_without_proof: bytes) -> bytes:
        """ServerSignature, as a server holding this password's verifier computes it."""
        return _hmac(
            _hmac(self.salted, b"Server Key"), self.auth_message(client_final_without_proof)
        )

    def on_final(self, data: bytes) -> bytes:
        ok, server_signature = self.verify_client_final(data)
        if not ok:
            return codec.error_response(
                "28P01", f'password authentication failed for user "{USER}"', severity="FATAL"
            )
        return codec.encode_auth(m.AUTH_SASL_FINAL, b"v=" + base64.b64encode(server_signature))


def scram_login(
    hs: UpstreamHandshake,
    server: ScramServer,
    cuts: list[int] | None = None,
    tail: bytes = AFTER_AUTH,
) -> HandshakeStep:
    cuts = cuts or []
    step = feed_in_chunks(hs, server.hello(), cuts)
    assert step.refused is None, step.refused
    step = feed_in_chunks(hs, server.on_initial(step.send), cuts)
    assert step.refused is None, step.refused
    final = server.on_final(step.send)
    if final[:1] == b"E":
        return feed_in_chunks(hs, final, cuts)
    return feed_in_chunks(hs, final + codec.AUTH_OK_FRAME + tail, cuts)


def test_scram_login_succeeds() -> None:
    server = ScramServer(PASSWORD)
    step = scram_login(handshake(), server)
    assert server.log == []
    assert server.mechanism == "SCRAM-SHA-256"
    assert server.gs2_header == b"n,,"
    assert assert_ready(step).leftover == b""


def test_scram_with_a_wrong_password_is_refused_by_the_server() -> None:
    server = ScramServer("another password")
    step = scram_login(handshake(), server)
    assert server.log == ["bad proof"]
    assert step.refused is not None
    assert step.refused.sqlstate == "28P01"


def test_scram_with_a_non_ascii_password() -> None:
    # SASLprep: U+00A0 NO-BREAK SPACE maps to an ASCII space before hashing.
    server = ScramServer("pass word")
    assert_ready(scram_login(handshake(password="pass\u00a0word"), server))


@settings(max_examples=40, deadline=None)
@given(cuts=cuts_st)
def test_scram_login_split_anywhere(cuts: list[int]) -> None:
    server = ScramServer(PASSWORD, iterations=16)
    assert_ready(scram_login(handshake(), server, cuts))
    assert server.log == []


def test_scram_channel_binding_when_the_upstream_offers_plus() -> None:
    binding = hashlib.sha256(b"server certificate").digest()
    server = ScramServer(
        PASSWORD, mechanisms=("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"), channel_binding=binding
    )
    step = scram_login(handshake(tls_binding=binding), server)
    assert server.mechanism == "SCRAM-SHA-256-PLUS"
    assert server.gs2_header == b"p=tls-server-end-point,,"
    assert server.log == []
    assert_ready(step)


def test_scram_channel_binding_to_another_certificate_is_refused() -> None:
    # A man in the middle terminating TLS presents its own certificate: the bindings differ.
    server = ScramServer(
        PASSWORD,
        mechanisms=("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"),
        channel_binding=hashlib.sha256(b"the real server").digest(),
    )
    step = scram_login(handshake(tls_binding=hashlib.sha256(b"the mitm").digest()), server)
    assert server.log == ["channel binding mismatch"]
    assert step.refused is not None


def test_scram_bad_server_signature_is_refused() -> None:
    hs = handshake()
    server = ScramServer(PASSWORD)
    step = hs.receive(server.hello())
    step = hs.receive(server.on_initial(step.send))
    ok, _ = server.verify_client_final(step.send)
    assert ok
    forged = b"v=" + base64.b64encode(b"\x00" * 32)
    step = hs.receive(
        codec.encode_auth(m.AUTH_SASL_FINAL, forged) + codec.AUTH_OK_FRAME + AFTER_AUTH
    )
    assert step.ready is None
    assert step.refused is not None
    assert step.refused.sqlstate == "08006"
    assert not step.refused.from_server


def test_scram_server_that_does_not_know_the_password_is_refused() -> None:
    # An impostor accepts any proof, then signs with a key derived from a wrong password.
    hs = handshake()
    impostor = ScramServer("a guess")
    step = hs.receive(impostor.hello())
    step = hs.receive(impostor.on_initial(step.send))
    without_proof = client_frames(step.send)[0][1].rpartition(b",p=")[0]
    guessed = impostor.signature(without_proof)
    step = hs.receive(
        codec.encode_auth(m.AUTH_SASL_FINAL, b"v=" + base64.b64encode(guessed))
        + codec.AUTH_OK_FRAME
        + AFTER_AUTH
    )
    assert step.ready is None
    assert step.refused is not None


def test_scram_auth_ok_before_sasl_final_is_refused() -> None:
    # A server that skips SASLFinal never proved it knows the password.
    hs = handshake()
    server = ScramServer(PASSWORD)
    step = hs.receive(server.hello())
    step = hs.receive(server.on_initial(step.send))
    assert step.send
    step = hs.receive(codec.AUTH_OK_FRAME + AFTER_AUTH)
    assert step.ready is None
    assert step.refused is not None
    assert step.refused.sqlstate == "08006"


def test_auth_ok_right_after_sasl_offer_is_refused() -> None:
    hs = handshake()
    hs.receive(ScramServer(PASSWORD).hello())
    step = hs.receive(codec.AUTH_OK_FRAME + AFTER_AUTH)
    assert step.ready is None
    assert step.refused is not None


def test_scram_server_nonce_not_extending_ours_is_refused() -> None:
    hs = handshake()
    server = ScramServer(PASSWORD)
    step = hs.receive(server.hello())
    server.on_initial(step.send)
    bogus = b"r=someone-elses-nonce,s=" + base64.b64encode(server.salt) + b",i=4096"
    step = hs.receive(codec.encode_auth(m.AUTH_SASL_CONTINUE, bogus))
    assert step.refused is not None
    assert step.send == b""


def test_sasl_without_a_supported_mechanism_is_refused() -> None:
    step = handshake().receive(codec.encode_auth(m.AUTH_SASL, b"SCRAM-SHA-1\x00\x00"))
    assert step.refused is not None
    assert step.send == b""


@pytest.mark.parametrize("code", [m.AUTH_SASL_CONTINUE, m.AUTH_SASL_FINAL])
def test_sasl_continuation_without_a_start_is_a_protocol_error(code: int) -> None:
    step = handshake().receive(codec.encode_auth(code, b"r=x,s=eA==,i=1"))
    assert step.refused is not None
    assert step.refused.sqlstate == "08P01"

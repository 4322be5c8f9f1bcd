"""Unit tests for dbsentry.engines.postgres.wire.codec: round trips, framing, caps and fuzzing."""

from __future__ import annotations

import contextlib
import itertools
import struct
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m

# ---------------------------------------------------------------------------------------
# strategies

# Wire strings are NUL-terminated UTF-8: no NUL, no lone surrogates, anything else goes.
wire_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)
wire_name = wire_text.filter(bool)
i16 = st.integers(-(2**15), 2**15 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
u32 = st.integers(0, 2**32 - 1)
secrets_ = st.binary(min_size=4, max_size=256)


def one_frame(data: bytes) -> tuple[int, bytes, int, int]:
    """Split ``data``, which must be exactly one frame: (type, buf, body_start, end)."""
    splitter = codec.FrameSplitter()
    buf, spans = splitter.split(data)
    assert splitter.pending == 0
    assert len(spans) == 1
    t, start, end = spans[0]
    assert (start, end) == (5, len(data))
    return t, buf, start, end


# ---------------------------------------------------------------------------------------
# round trips: startup phase


@given(
    params=st.lists(st.tuples(wire_name, wire_text), max_size=10),
    version=st.sampled_from([m.PROTOCOL_3_0, m.PROTOCOL_3_0 + 2, m.PROTOCOL_3_0 + 0xFFFF]),
)
def test_startup_round_trip(params: list[tuple[str, str]], version: int) -> None:
    data = codec.encode_startup(params, version)
    got = codec.read_startup_packet(data)
    assert got == (m.StartupMessage(version, tuple(params)), len(data))


def test_startup_unicode_params_and_get() -> None:
    params = [("user", "zoë"), ("application_name", "日本語 app"), ("options", "-c a=b")]
    got = codec.read_startup_packet(codec.encode_startup(params))
    assert got is not None
    msg = got[0]
    assert isinstance(msg, m.StartupMessage)
    assert (msg.major, msg.minor) == (3, 0)
    assert msg.get("user") == "zoë"
    assert msg.get("application_name") == "日本語 app"
    assert msg.get("database") is None


def test_startup_packet_followed_by_more_bytes_reports_what_it_used() -> None:
    data = codec.encode_startup([("user", "a")])
    got = codec.read_startup_packet(data + b"p\x00\x00")
    assert got is not None
    assert got[1] == len(data)


@given(pid=u32, secret=secrets_)
def test_cancel_request_round_trip(pid: int, secret: bytes) -> None:
    data = codec.encode_cancel_request(pid, secret)
    assert codec.read_startup_packet(data) == (m.CancelRequest(pid, secret), len(data))


def test_ssl_and_gssenc_requests() -> None:
    assert codec.read_startup_packet(codec.encode_ssl_request()) == (m.SSLRequest(), 8)
    gss = struct.pack("!II", 8, m.GSSENC_REQUEST_CODE)
    assert codec.read_startup_packet(gss) == (m.GSSENCRequest(), 8)


# ---------------------------------------------------------------------------------------
# round trips: client messages


@given(sql=wire_text)
def test_query_round_trip(sql: str) -> None:
    t, buf, start, end = one_frame(codec.encode_query(sql))
    assert t == m.Q_QUERY
    assert codec.decode_query(buf, start, end) == m.Query(sql)


@given(name=wire_text, sql=wire_text, types=st.lists(u32, max_size=40))
def test_parse_round_trip(name: str, sql: str, types: list[int]) -> None:
    msg = m.Parse(name, sql, tuple(types))
    t, buf, start, end = one_frame(codec.encode_parse(msg))
    assert t == m.Q_PARSE
    assert codec.decode_parse(buf, start, end) == msg


@given(
    portal=wire_text,
    statement=wire_text,
    formats=st.lists(i16, max_size=12),
    params=st.lists(st.none() | st.binary(max_size=64), max_size=12),
    result_formats=st.lists(i16, max_size=12),
)
def test_bind_round_trip(
    portal: str,
    statement: str,
    formats: list[int],
    params: list[bytes | None],
    result_formats: list[int],
) -> None:
    msg = m.Bind(portal, statement, tuple(formats), tuple(params), tuple(result_formats))
    t, buf, start, end = one_frame(codec.encode_bind(msg))
    assert t == m.Q_BIND
    assert codec.decode_bind(buf, start, end) == msg


def test_bind_null_empty_and_binary_params_stay_distinct() -> None:
    # NULL (-1), an empty value (0 bytes) and binary data with NULs must not be confused.
    msg = m.Bind("", "s1", (0, 1, 1), (None, b"", b"\x00\xff\x00"), (1,))
    _, buf, start, end = one_frame(codec.encode_bind(msg))
    got = codec.decode_bind(buf, start, end)
    assert got.params == (None, b"", b"\x00\xff\x00")
    assert got.param_formats == (0, 1, 1)
    assert got.result_formats == (1,)


@given(portal=wire_text, rows=i32)
def test_execute_round_trip(portal: str, rows: int) -> None:
    msg = m.Execute(portal, rows)
    t, buf, start, end = one_frame(codec.encode_execute(msg))
    assert t == m.Q_EXECUTE
    assert codec.decode_execute(buf, start, end) == msg


@given(kind=st.sampled_from("SP"), name=wire_text, close=st.booleans())
def test_describe_and_close_round_trip(kind: str, name: str, close: bool) -> None:
    encode = codec.encode_close if close else codec.encode_describe
    t, buf, start, end = one_frame(encode(kind, name))
    assert t == (m.Q_CLOSE if close else m.Q_DESCRIBE)
    assert codec.decode_describe_or_close(buf, start, end) == (kind, name)


@pytest.mark.parametrize("kind", ["X", "s", "\x00"])
def test_describe_with_an_invalid_target_is_refused(kind: str) -> None:
    data = codec.frame(b"D", kind.encode() + b"name\x00")
    with pytest.raises(codec.ProtocolError):
        codec.decode_describe_or_close(data, 5, len(data))


@given(
    data=st.binary(max_size=64), mechanism=st.sampled_from(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"])
)
def test_sasl_frames_carry_their_payload(data: bytes, mechanism: str) -> None:
    t, buf, start, end = one_frame(codec.encode_sasl_initial(mechanism, data))
    assert t == m.Q_PASSWORD
    body = buf[start:end]
    name, _, rest = body.partition(b"\x00")
    assert name.decode() == mechanism
    assert struct.unpack("!i", rest[:4])[0] == len(data)
    assert rest[4:] == data
    t, buf, start, end = one_frame(codec.encode_sasl_response(data))
    assert buf[start:end] == data


def test_password_round_trip_strips_the_terminator() -> None:
    # PasswordMessage.data is documented as "cleartext password (null-stripped)".
    data = codec.encode_password("s3cret")
    t, buf, start, end = one_frame(data)
    assert t == m.Q_PASSWORD
    assert codec.decode_password(buf, start, end) == m.PasswordMessage(b"s3cret")


def test_fixed_frames() -> None:
    assert codec.SYNC == b"S\x00\x00\x00\x04"
    assert codec.FLUSH == b"H\x00\x00\x00\x04"
    assert codec.TERMINATE == b"X\x00\x00\x00\x04"


# ---------------------------------------------------------------------------------------
# round trips: server messages


@given(code=i32, data=st.binary(max_size=64))
def test_auth_round_trip(code: int, data: bytes) -> None:
    t, buf, start, end = one_frame(codec.encode_auth(code, data))
    assert t == m.R_AUTH
    assert codec.decode_auth(buf, start, end) == m.Authentication(code, data)


def test_auth_constant_frames() -> None:
    assert codec.AUTH_OK_FRAME == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert codec.AUTH_CLEARTEXT_FRAME == b"R\x00\x00\x00\x08\x00\x00\x00\x03"


def test_sasl_mechanisms() -> None:
    data = b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"
    assert codec.decode_sasl_mechanisms(data) == ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]


@given(name=wire_name, value=wire_text)
def test_parameter_status_round_trip(name: str, value: str) -> None:
    t, buf, start, end = one_frame(codec.encode_parameter_status(name, value))
    assert t == m.R_PARAMETER_STATUS
    assert codec.decode_parameter_status(buf, start, end) == m.ParameterStatus(name, value)


@given(pid=u32, secret=secrets_)
def test_backend_key_round_trip(pid: int, secret: bytes) -> None:
    t, buf, start, end = one_frame(codec.encode_backend_key(pid, secret))
    assert t == m.R_BACKEND_KEY
    assert codec.decode_backend_key(buf, start, end) == m.BackendKeyData(pid, secret)


@given(status=st.sampled_from("ITE"))
def test_ready_round_trip(status: str) -> None:
    t, buf, start, end = one_frame(codec.encode_ready(status))
    assert t == m.R_READY
    assert codec.decode_ready(buf, start, end) == m.ReadyForQuery(status)


def test_ready_with_a_wrong_length_is_refused() -> None:
    for body in (b"", b"II"):
        data = codec.frame(b"Z", body)
        with pytest.raises(codec.ProtocolError):
            codec.decode_ready(data, 5, len(data))


error_code = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


@given(fields=st.lists(st.tuples(error_code, wire_text), max_size=12), notice=st.booleans())
def test_error_fields_round_trip(fields: list[tuple[str, str]], notice: bool) -> None:
    type_byte = b"N" if notice else b"E"
    t, buf, start, end = one_frame(codec.encode_error_fields(type_byte, fields))
    assert t == ord(type_byte)
    assert codec.decode_error_fields(buf, start, end) == m.ErrorFields(tuple(fields))


def test_error_response_helper_fields() -> None:
    data = codec.error_response("42501", "denied", severity="FATAL", detail="why", hint="how")
    t, buf, start, end = one_frame(data)
    err = codec.decode_error_fields(buf, start, end)
    assert t == m.R_ERROR
    assert (err.severity, err.sqlstate, err.message) == ("FATAL", "42501", "denied")
    assert (err.get("S"), err.get("D"), err.get("H")) == ("FATAL", "why", "how")
    notice = codec.notice_response("careful", sqlstate="01000")
    t, buf, start, end = one_frame(notice)
    assert t == m.R_NOTICE
    assert codec.decode_error_fields(buf, start, end).sqlstate == "01000"


@given(minor=st.integers(0, 0xFFFF), options=st.lists(wire_name, max_size=8))
def test_negotiate_protocol_version_round_trip(minor: int, options: list[str]) -> None:
    t, buf, start, end = one_frame(codec.encode_negotiate_protocol_version(minor, options))
    assert t == m.R_NEGOTIATE_VERSION
    assert codec.decode_negotiate_protocol_version(buf, start, end) == m.NegotiateProtocolVersion(
        minor, tuple(options)
    )


@given(tag=wire_text)
def test_command_complete_round_trip(tag: str) -> None:
    t, buf, start, end = one_frame(codec.encode_command_complete(tag))
    assert t == m.R_COMMAND_COMPLETE
    assert codec.decode_command_complete(buf, start, end) == m.CommandComplete(tag)


# ---------------------------------------------------------------------------------------
# FrameSplitter

any_frame = st.builds(
    codec.frame,
    st.integers(0, 255).map(lambda b: bytes([b])),
    st.binary(max_size=300),
)


@st.composite
def stream_and_chunks(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    frames = draw(st.lists(any_frame, max_size=12))
    data = b"".join(frames)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return frames, [data[a:b] for a, b in itertools.pairwise(bounds)]


@given(stream_and_chunks())
def test_any_split_yields_the_same_frames(case: tuple[list[bytes], list[bytes]]) -> None:
    frames, chunks = case
    splitter = codec.FrameSplitter()
    out: list[bytes] = []
    got_frames: list[bytes] = []
    for chunk in chunks:
        buf, spans = splitter.split(chunk)
        out.append(bytes(buf))
        pos = 0
        for t, start, end in spans:
            # Spans tile the returned buffer exactly, and each names its own type byte.
            assert start - 5 == pos
            assert buf[start - 5] == t
            assert struct.unpack_from("!I", buf, start - 4)[0] == end - start + 4
            got_frames.append(bytes(buf[start - 5 : end]))
            pos = end
        assert pos == len(buf)
    assert splitter.pending == 0
    assert b"".join(out) == b"".join(frames)
    assert got_frames == frames


def test_partial_frame_is_kept_until_complete() -> None:
    data = codec.encode_query("select 1") + codec.SYNC
    splitter = codec.FrameSplitter()
    buf, spans = splitter.split(data[:3])
    assert (buf, spans) == (b"", [])
    assert splitter.pending == 3
    buf, spans = splitter.split(data[3:-2])
    assert buf == codec.encode_query("select 1")
    assert [t for t, _, _ in spans] == [m.Q_QUERY]
    assert splitter.pending == 3
    assert splitter.take_pending() == codec.SYNC[:3]
    assert splitter.pending == 0


def test_no_copy_when_a_chunk_ends_on_a_boundary() -> None:
    splitter = codec.FrameSplitter()
    chunk = codec.encode_query("select 1") + codec.SYNC
    buf, _ = splitter.split(chunk)
    assert buf is chunk
    # Still true after a partial frame was completed and cleared.
    splitter.split(chunk[:4])
    splitter.split(chunk[4:])
    again = codec.encode_query("select 2")
    buf, _ = splitter.split(again)
    assert buf is again


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_frame_length_below_four_is_a_protocol_error(length: int) -> None:
    with pytest.raises(codec.ProtocolError) as info:
        codec.FrameSplitter().split(b"Q" + struct.pack("!I", length))
    assert type(info.value) is codec.ProtocolError
    assert info.value.sqlstate == "08P01"


def test_frame_too_large_is_refused_from_its_header_alone() -> None:
    splitter = codec.FrameSplitter(max_len=1000)
    with pytest.raises(codec.MessageTooLarge) as info:
        splitter.split(b"Q" + struct.pack("!I", 1001))
    assert info.value.sqlstate == "54000"
    # The limit itself is fine.
    ok = codec.FrameSplitter(max_len=1000)
    assert ok.split(b"Q" + struct.pack("!I", 1000)) == (b"", [])
    assert ok.pending == 5


def test_frame_too_large_is_refused_when_the_header_arrives_in_pieces() -> None:
    splitter = codec.FrameSplitter(max_len=1000)
    header = b"d" + struct.pack("!I", 2**31)
    for byte in header[:-1]:
        assert splitter.split(bytes([byte])) == (b"", [])
    with pytest.raises(codec.MessageTooLarge):
        splitter.split(header[-1:])


@pytest.mark.serial
def test_splitting_one_big_frame_in_small_chunks_is_linear() -> None:
    # A client (or upstream) that dribbles a large message must not make the proxy copy
    # the pending bytes again for every chunk: that is O(n^2) and a cheap CPU attack.
    # 8 MiB in 2 KiB chunks takes milliseconds when the work is O(bytes read); re-copying
    # the pending bytes for each chunk moves about 16 GiB.
    body = b"x" * (8 * 1024 * 1024)
    data = codec.frame(b"d", body)
    chunk = 2 * 1024
    splitter = codec.FrameSplitter()
    spans_seen = 0
    started = time.perf_counter()
    for i in range(0, len(data), chunk):
        _, spans = splitter.split(data[i : i + chunk])
        spans_seen += len(spans)
    elapsed = time.perf_counter() - started
    assert spans_seen == 1
    assert elapsed < 0.3, f"splitting took {elapsed:.2f}s: pending bytes are re-copied per chunk"


# ---------------------------------------------------------------------------------------
# read_startup_packet caps


@pytest.mark.parametrize("length", [0, 4, 7])
def test_startup_length_below_eight_is_a_protocol_error(length: int) -> None:
    with pytest.raises(codec.ProtocolError):
        codec.read_startup_packet(struct.pack("!II", length, m.PROTOCOL_3_0))


def test_startup_too_large_is_refused_from_its_length_and_version() -> None:
    # A plausible length waits for the protocol version: protocol 3 gets the clear error.
    assert codec.read_startup_packet(struct.pack("!I", 10_001)) is None
    with pytest.raises(codec.MessageTooLarge):
        codec.read_startup_packet(struct.pack("!II", 10_001, m.PROTOCOL_3_0))
    # The limit itself is accepted (and waits for the body).
    assert codec.read_startup_packet(struct.pack("!I", 10_000)) is None


@pytest.mark.parametrize(
    "data",
    [
        b"X\x00\x00\x00\x04",  # Terminate: a length of 1476395008
        b"GET / HTTP/1.1\r\n",
        struct.pack("!II", 10_001, 1234),  # plausible length, not protocol 3
        struct.pack("!I", 3),
    ],
)
def test_not_a_startup_packet_is_told_apart(data: bytes) -> None:
    # The session closes these silently, as PostgreSQL does, instead of answering FATAL.
    with pytest.raises(codec.NotAStartupPacket):
        codec.read_startup_packet(data)


def test_partial_startup_packet_needs_more() -> None:
    data = codec.encode_startup([("user", "alice"), ("database", "app")])
    for n in range(len(data)):
        assert codec.read_startup_packet(data[:n]) is None
    assert codec.read_startup_packet(data) is not None


@pytest.mark.parametrize(
    "body",
    [
        b"user\x00alice",  # not NUL-terminated
        b"user\x00alice\x00database\x00\x00",  # a name without a value
        b"\x00alice\x00\x00",  # an empty name
        b"user\x00\xff\xfe\x00\x00",  # not UTF-8
    ],
)
def test_malformed_startup_parameters_are_refused(body: bytes) -> None:
    packet = struct.pack("!II", len(body) + 8, m.PROTOCOL_3_0) + body
    with pytest.raises(codec.ProtocolError):
        codec.read_startup_packet(packet)


def test_unsupported_protocol_major_is_refused() -> None:
    packet = struct.pack("!II", 9, 2 << 16) + b"\x00"
    with pytest.raises(codec.ProtocolError):
        codec.read_startup_packet(packet)


@pytest.mark.parametrize("secret_len", [0, 3, 257])
def test_cancel_request_with_a_bad_length_is_refused(secret_len: int) -> None:
    with pytest.raises(codec.ProtocolError):
        codec.read_startup_packet(codec.encode_cancel_request(1, b"k" * secret_len))


# ---------------------------------------------------------------------------------------
# random bytes never crash or hang

Decoder = Callable[[bytes, int, int], object]
DECODERS: list[Decoder] = [
    codec.decode_query,
    codec.decode_parse,
    codec.decode_bind,
    codec.decode_execute,
    codec.decode_describe_or_close,
    codec.decode_password,
    codec.decode_auth,
    codec.decode_parameter_status,
    codec.decode_backend_key,
    codec.decode_ready,
    codec.decode_error_fields,
    codec.decode_command_complete,
    codec.decode_negotiate_protocol_version,
]

fuzz = settings(max_examples=300, deadline=500, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(data=st.binary(max_size=600), cut=st.integers(0, 600), decoder=st.sampled_from(DECODERS))
def test_random_bodies_never_crash_a_decoder(data: bytes, cut: int, decoder: Decoder) -> None:
    start = min(cut, len(data))
    with contextlib.suppress(codec.ProtocolError):
        decoder(data, start, len(data))


@fuzz
@given(data=st.binary(max_size=600))
def test_random_bytes_never_crash_sasl_mechanisms(data: bytes) -> None:
    assert all(isinstance(name, str) for name in codec.decode_sasl_mechanisms(data))


# Bodies shaped like the real thing reach deeper than uniform noise.
structured_body = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda a, b: a + b"\x00" + b, st.binary(max_size=20), st.binary(max_size=40)),
    st.builds(
        lambda s, n, rest: s + b"\x00" + struct.pack("!h", n) + rest,
        st.binary(max_size=10),
        st.integers(-(2**15), 2**15 - 1),
        st.binary(max_size=40),
    ),
    st.builds(lambda n, rest: struct.pack("!ii", 3, n) + rest, i32, st.binary(max_size=40)),
)


@fuzz
@given(body=structured_body, decoder=st.sampled_from(DECODERS))
def test_structured_garbage_never_crashes_a_decoder(body: bytes, decoder: Decoder) -> None:
    data = b"?" + struct.pack("!I", len(body) + 4) + body
    with contextlib.suppress(codec.ProtocolError):
        decoder(data, 5, len(data))


@fuzz
@given(data=st.binary(max_size=2000), chunk=st.integers(1, 64), max_len=st.integers(4, 300))
def test_random_bytes_never_crash_the_splitter(data: bytes, chunk: int, max_len: int) -> None:
    splitter = codec.FrameSplitter(max_len)
    seen = 0
    try:
        for i in range(0, len(data), chunk):
            buf, spans = splitter.split(data[i : i + chunk])
            seen += len(buf)
            for _t, start, end in spans:
                assert 5 <= end - start + 5 <= max_len + 1
    except codec.ProtocolError:
        return
    assert seen + splitter.pending == len(data)


@fuzz
@given(data=st.binary(max_size=400))
def test_random_bytes_never_crash_read_startup_packet(data: bytes) -> None:
    try:
        got = codec.read_startup_packet(data)
    except codec.ProtocolError:
        return
    if got is not None:
        packet, used = got
        assert 8 <= used <= len(data)
        assert isinstance(
            packet, m.SSLRequest | m.GSSENCRequest | m.CancelRequest | m.StartupMessage
        )


@fuzz
@given(
    code=st.sampled_from(
        [m.PROTOCOL_3_0, m.PROTOCOL_3_0 + 2, m.CANCEL_REQUEST_CODE, m.SSL_REQUEST_CODE]
    ),
    body=st.binary(max_size=300),
)
def test_plausible_startup_headers_with_random_bodies_never_crash(code: int, body: bytes) -> None:
    data = struct.pack("!II", len(body) + 8, code) + body
    with contextlib.suppress(codec.ProtocolError):
        codec.read_startup_packet(data)


def test_negotiate_protocol_version_carries_the_full_version_code() -> None:
    # libpq reads the whole 32-bit version: 3.0 is 0x00030000, never a bare minor number.
    body = codec.encode_negotiate_protocol_version(0, [])[5:9]
    assert body == b"\x00\x03\x00\x00"

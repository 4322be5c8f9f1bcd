"""engines/mysql/wire: packet framing (continuation packets, sequence ids, caps) and the
protocol's primitives (length-encoded integers and strings, NUL-terminated strings)."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsentry.engines.mysql.wire import primitives as p
from dbsentry.engines.mysql.wire.packets import (
    Packet,
    PacketOutOfOrder,
    PacketSplitter,
    PacketTooLarge,
    encode_packet,
    encode_packets,
)
from dbsentry.errors import ProtocolError

MAX = 0xFFFFFF

# ---------------------------------------------------------------------- framing


def test_known_packet_bytes() -> None:
    # COM_QUERY "select @@version_comment limit 1", as in the protocol documentation.
    wire = bytes.fromhex("210000000373656c65637420404076657273696f6e5f636f6d6d656e74206c696d69742031")
    [packet] = PacketSplitter().feed(wire)
    assert packet == Packet(0, b"\x03select @@version_comment limit 1", 0)
    assert encode_packet(packet.payload, 0) == (wire, 1)


def test_empty_payload_is_one_packet() -> None:
    assert encode_packet(b"", 7) == (b"\x00\x00\x00\x07", 8)
    assert PacketSplitter(first_seq=7).feed(b"\x00\x00\x00\x07") == [Packet(7, b"", 7)]


def test_sequence_ids_wrap_around() -> None:
    data, nxt = encode_packets([b"a", b"b", b"c"], 254)
    assert nxt == 1
    assert [pk.seq for pk in PacketSplitter(first_seq=254).feed(data)] == [254, 255, 0]


def test_payload_of_exactly_16_mib_minus_1_gets_an_empty_trailer() -> None:
    payload = b"x" * MAX
    data, nxt = encode_packet(payload, 0)
    assert nxt == 2
    assert len(data) == 4 + MAX + 4
    assert data[MAX + 4 :] == b"\x00\x00\x00\x01"
    assert PacketSplitter(max_payload=MAX).feed(data) == [Packet(0, payload, 1)]


def test_continuation_packets_are_joined_fed_in_chunks() -> None:
    payload = bytes(range(256)) * (2 * MAX // 256 + 3)  # more than two full packets
    data, nxt = encode_packet(payload + b"", 3)
    assert nxt == 6
    splitter = PacketSplitter(max_payload=3 * MAX, first_seq=3)
    out: list[Packet] = []
    step = 1 << 20
    for i in range(0, len(data), step):
        out += splitter.feed(data[i : i + step])
    assert out == [Packet(3, payload, 5)]
    assert splitter.pending == 0
    assert splitter.next_seq == 6


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=8),
    seq=st.integers(0, 255),
    cuts=st.lists(st.integers(1, 50), min_size=1, max_size=20),
)
def test_split_anywhere_round_trip(payloads: list[bytes], seq: int, cuts: list[int]) -> None:
    data, _ = encode_packets(payloads, seq)
    splitter = PacketSplitter(first_seq=seq)
    out: list[Packet] = []
    pos = 0
    i = 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        out += splitter.feed(data[pos : pos + step])
        pos += step
        i += 1
    assert [pk.payload for pk in out] == payloads
    assert [pk.seq for pk in out] == [(seq + k) & 0xFF for k in range(len(payloads))]
    assert splitter.pending == 0


def test_wrong_sequence_id_is_refused() -> None:
    splitter = PacketSplitter(first_seq=0)
    with pytest.raises(PacketOutOfOrder, match="got packet sequence id 2, expected 0"):
        splitter.feed(b"\x01\x00\x00\x02x")


def test_wrong_sequence_id_inside_continuation_is_refused() -> None:
    splitter = PacketSplitter(max_payload=2 * MAX)
    splitter.feed(b"\xff\xff\xff\x00" + bytes(MAX))
    with pytest.raises(PacketOutOfOrder, match="expected 1"):
        splitter.feed(b"\x00\x00\x00\x05")


def test_expect_none_takes_any_first_id_then_checks_the_next() -> None:
    splitter = PacketSplitter(first_seq=None)
    assert splitter.feed(b"\x01\x00\x00\x09a") == [Packet(9, b"a", 9)]
    assert splitter.next_seq == 10
    splitter.expect(0)
    with pytest.raises(PacketOutOfOrder):
        splitter.feed(b"\x01\x00\x00\x0ab")


def test_header_over_the_cap_is_refused_before_its_body() -> None:
    splitter = PacketSplitter(max_payload=1000)
    with pytest.raises(PacketTooLarge, match="exceeds the limit of 1000"):
        splitter.feed(b"\xe9\x03\x00\x00")  # 1001 bytes announced, none sent
    assert PacketSplitter(max_payload=1000).feed(b"\xe8\x03\x00\x00" + bytes(1000))[0].payload == bytes(1000)


def test_continuation_flood_is_refused_at_the_first_header_over_the_cap() -> None:
    splitter = PacketSplitter(max_payload=MAX + 10)
    assert splitter.feed(b"\xff\xff\xff\x00" + bytes(MAX)) == []
    assert splitter.pending == MAX
    with pytest.raises(PacketTooLarge):
        splitter.feed(b"\xff\xff\xff\x01")  # another full packet announced: refused unread


def test_take_pending_and_expect_inside_a_continuation() -> None:
    splitter = PacketSplitter()
    splitter.feed(b"\x05\x00\x00\x00ab")
    assert splitter.take_pending() == b"\x05\x00\x00\x00ab"
    splitter = PacketSplitter(max_payload=2 * MAX)
    splitter.feed(b"\xff\xff\xff\x00" + bytes(MAX))
    with pytest.raises(ProtocolError):
        splitter.expect(0)
    with pytest.raises(ProtocolError):
        splitter.take_pending()


@pytest.mark.serial
def test_dribbled_large_packet_costs_linear_time() -> None:
    payload = bytes(2_000_000)
    data, _ = encode_packet(payload, 0)
    splitter = PacketSplitter()
    start = time.perf_counter()
    out: list[Packet] = []
    for i in range(0, len(data), 1000):
        out += splitter.feed(data[i : i + 1000])
    assert out[0].payload == payload
    assert time.perf_counter() - start < 2


fuzz = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@fuzz
@given(
    data=st.binary(max_size=3000),
    chunk=st.integers(1, 97),
    max_payload=st.integers(0, 500),
    first=st.one_of(st.none(), st.integers(0, 255)),
)
def test_random_bytes_into_the_splitter(data: bytes, chunk: int, max_payload: int, first: int | None) -> None:
    splitter = PacketSplitter(max_payload=max_payload, first_seq=first)
    try:
        for i in range(0, len(data), chunk):
            for packet in splitter.feed(data[i : i + chunk]):
                assert len(packet.payload) <= max_payload
            assert splitter.pending <= max_payload + 4 + chunk
    except ProtocolError:
        pass


# ---------------------------------------------------------------------- primitives


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, "00"),
        (250, "fa"),
        (251, "fcfb00"),
        (65535, "fcffff"),
        (65536, "fd000001"),
        (2**24 - 1, "fdffffff"),
        (2**24, "fe0000000100000000"),
        (2**64 - 1, "feffffffffffffffff"),
    ],
)
def test_lenenc_int_known_forms(value: int, wire: str) -> None:
    raw = bytes.fromhex(wire)
    assert p.lenenc_int(value) == raw
    r = p.Reader(raw)
    assert r.lenenc_int() == value
    assert r.at_end()


def test_lenenc_null_and_invalid_markers() -> None:
    assert p.Reader(b"\xfb").lenenc_int_or_null() is None
    assert p.Reader(b"\xfb").lenenc_bytes_or_null() is None
    with pytest.raises(ProtocolError, match="unexpected NULL"):
        p.Reader(b"\xfb").lenenc_int()
    with pytest.raises(ProtocolError, match=r"invalid length-encoded integer \(0xff\)"):
        p.Reader(b"\xff").lenenc_int()
    # A non-minimal form is read (servers may send one).
    assert p.Reader(b"\xfc\x05\x00").lenenc_int() == 5


@pytest.mark.parametrize("truncated", ["", "fc", "fc01", "fd0102", "fe01020304050607"])
def test_truncated_lenenc_int(truncated: str) -> None:
    with pytest.raises(ProtocolError, match="shorter"):
        p.Reader(bytes.fromhex(truncated)).lenenc_int()


@pytest.mark.serial
def test_lenenc_string_claiming_a_huge_length_is_refused_without_allocating() -> None:
    start = time.perf_counter()
    for claim in (b"\xfe" + (2**63).to_bytes(8, "little"), b"\xfd\xff\xff\xff", b"\xfc\xff\xff"):
        with pytest.raises(ProtocolError, match="shorter than its"):
            p.Reader(claim + b"abc").lenenc_bytes()
    assert time.perf_counter() - start < 0.1


@given(st.integers(0, 2**64 - 1))
def test_lenenc_int_round_trip(value: int) -> None:
    r = p.Reader(p.lenenc_int(value) + b"tail")
    assert r.lenenc_int() == value
    assert r.rest() == b"tail"


@given(st.binary(max_size=300))
def test_lenenc_bytes_round_trip(value: bytes) -> None:
    r = p.Reader(p.lenenc_bytes(value))
    assert r.lenenc_bytes() == value
    assert r.at_end()


@given(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40))
def test_cstr_round_trip(text: str) -> None:
    r = p.Reader(p.cstr(text) + b"rest")
    assert r.cstr() == text
    assert r.rest() == b"rest"


def test_names_that_are_not_utf8_survive() -> None:
    raw = b"caf\xe9"  # latin-1
    r = p.Reader(p.lenenc_bytes(raw))
    name = r.lenenc_text()
    assert p.lenenc_text(name) == p.lenenc_bytes(raw)


def test_cstr_needs_its_nul_unless_the_end_may_stand_in() -> None:
    with pytest.raises(ProtocolError, match="unterminated"):
        p.Reader(b"abc").cstr()
    assert p.Reader(b"abc").cstr(or_end=True) == "abc"
    with pytest.raises(ValueError):
        p.cstr("a\x00b")


@given(
    v1=st.integers(0, 255), v2=st.integers(0, 2**16 - 1), v3=st.integers(0, 2**24 - 1),
    v4=st.integers(0, 2**32 - 1), v8=st.integers(0, 2**64 - 1),
)  # fmt: skip
def test_fixed_ints_round_trip(v1: int, v2: int, v3: int, v4: int, v8: int) -> None:
    r = p.Reader(p.int1(v1) + p.int2(v2) + p.int3(v3) + p.int4(v4) + p.int8(v8))
    assert (r.int1(), r.int2(), r.int3(), r.int4(), r.int8()) == (v1, v2, v3, v4, v8)
    assert r.at_end()
    with pytest.raises(ProtocolError):
        r.int1()

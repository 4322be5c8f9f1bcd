"""MySQL packet framing, sans-IO.

A physical packet is a 3-byte little-endian payload length, a sequence id and the payload.
A payload of 16 MiB - 1 (``0xFFFFFF``) or more travels as several physical packets: every
one but the last is exactly ``0xFFFFFF`` long, and the last is shorter (possibly empty).
:class:`PacketSplitter` joins them back into one logical :class:`Packet`;
:func:`encode_packet` cuts a payload the same way.

Sequence ids count physical packets modulo 256 and restart at 0 with every command (and the
handshake). Both directions share the count: a command goes out as 0, its answer comes back
from 1. The splitter checks the ids against what it expects; the session tells it where a
new exchange starts (:meth:`PacketSplitter.expect`). A wrong id is a
:class:`PacketOutOfOrder`.

Caps: the reassembled payload is limited to ``max_payload``; the limit is checked on every
header, before its body is buffered, so a flood of continuation packets is refused at the
first header that would cross it, and the work done stays O(bytes read).
"""

from __future__ import annotations

from dataclasses import dataclass

from dbsentry.engines.mysql.wire.constants import MAX_PACKET_PAYLOAD
from dbsentry.errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "Packet",
    "PacketOutOfOrder",
    "PacketSplitter",
    "PacketTooLarge",
    "encode_packet",
    "encode_packets",
]

DEFAULT_MAX_PAYLOAD = 64 * 1024 * 1024  # MySQL's default max_allowed_packet


class PacketTooLarge(ProtocolError):
    """A payload (reassembled from continuation packets) longer than the cap."""

    sqlstate = "08S01"


class PacketOutOfOrder(ProtocolError):
    """A packet whose sequence id is not the next one (ER_NET_PACKETS_OUT_OF_ORDER)."""

    sqlstate = "08S01"


@dataclass(frozen=True, slots=True)
class Packet:
    """One logical packet: ``seq`` is the id of its first physical packet, ``last_seq``
    that of its last (they differ only for payloads of 16 MiB - 1 or more)."""

    seq: int
    payload: bytes
    last_seq: int


class PacketSplitter:
    """Incrementally splits a byte stream into logical packets.

    ``feed(data)`` takes any chunk of the stream and returns the packets it completed.
    With ``expect(n)`` (or ``first_seq`` at construction) the next packet must carry
    sequence id ``n``; every later physical packet must carry the next id. ``None`` means
    "any id" for the next packet, continuation packets are still checked.
    """

    __slots__ = ("_buf", "_next_seq", "_parts", "_parts_len", "_start_seq", "commands", "max_payload")

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD, first_seq: int | None = 0) -> None:
        if max_payload < 0:
            raise ValueError("max_payload must not be negative")
        self.max_payload = max_payload
        # Command phase of a client's stream: every logical packet is a command that
        # starts its own exchange, so the next one must carry sequence id 0 again.
        self.commands = False
        self._buf = bytearray()
        self._next_seq = first_seq
        self._parts: list[bytes] = []  # continuation packets of a payload not finished yet
        self._parts_len = 0
        self._start_seq = 0

    @property
    def next_seq(self) -> int | None:
        """The sequence id the next physical packet must carry (None: any)."""
        return self._next_seq

    @property
    def pending(self) -> int:
        """Bytes received that belong to no complete packet yet."""
        return len(self._buf) + self._parts_len

    def expect(self, seq: int | None) -> None:
        """A new exchange starts: the next packet must carry ``seq`` (None: any)."""
        if self._parts:
            raise ProtocolError("a new exchange starts inside a packet split in continuation packets")
        if seq is not None and not 0 <= seq <= 255:
            raise ValueError("sequence ids are 0..255")
        self._next_seq = seq

    def take_pending(self) -> bytes:
        """Hand over the bytes of an incomplete packet (when the stream changes hands,
        e.g. to TLS after an SSLRequest)."""
        if self._parts:
            raise ProtocolError("stream handed over inside a packet split in continuation packets")
        pending = bytes(self._buf)
        self._buf = bytearray()
        return pending

    def feed(self, data: bytes, limit: int | None = None) -> list[Packet]:
        """The whole packets ``data`` completes (at most ``limit``: the rest stays
        buffered, read by the next call)."""
        buf = self._buf
        buf += data
        out: list[Packet] = []
        pos = 0
        n = len(buf)
        max_payload = self.max_payload
        while n - pos >= 4:
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            seq = buf[pos + 3]
            expected = self._next_seq
            if expected is not None and seq != expected:
                raise PacketOutOfOrder(f"got packet sequence id {seq}, expected {expected}")
            if self._parts_len + length > max_payload:
                raise PacketTooLarge(
                    f"packet of more than {self._parts_len + length} bytes exceeds the limit of {max_payload}"
                )
            end = pos + 4 + length
            if end > n:
                break
            # The header is good and the body is complete: consume it.
            self._next_seq = (seq + 1) & 0xFF
            body = bytes(buf[pos + 4 : end])
            pos = end
            if not self._parts:
                self._start_seq = seq
            if length == MAX_PACKET_PAYLOAD:
                self._parts.append(body)
                self._parts_len += length
                continue
            if self._parts:
                self._parts.append(body)
                payload = b"".join(self._parts)
                self._parts = []
                self._parts_len = 0
            else:
                payload = body
            out.append(Packet(self._start_seq, payload, seq))
            if self.commands:
                self._next_seq = 0
            if limit is not None and len(out) >= limit:
                break
        if pos:
            del buf[:pos]
        return out


def encode_packet(payload: bytes, seq: int) -> tuple[bytes, int]:
    """Frame ``payload`` starting with sequence id ``seq``: the bytes, and the sequence id
    the next packet of the exchange takes."""
    if not 0 <= seq <= 255:
        raise ValueError("sequence ids are 0..255")
    out = bytearray()
    pos = 0
    n = len(payload)
    while True:
        chunk = min(n - pos, MAX_PACKET_PAYLOAD)
        out += chunk.to_bytes(3, "little")
        out.append(seq)
        out += payload[pos : pos + chunk]
        pos += chunk
        seq = (seq + 1) & 0xFF
        if chunk < MAX_PACKET_PAYLOAD:
            return bytes(out), seq


def encode_packets(payloads: list[bytes], seq: int) -> tuple[bytes, int]:
    """Frame consecutive payloads of one exchange."""
    out = []
    for payload in payloads:
        data, seq = encode_packet(payload, seq)
        out.append(data)
    return b"".join(out), seq

"""The session's Bind decoder (its every extended-protocol statement) reads exactly what
``codec.decode_bind`` reads (but the result formats, which it checks and does not keep),
and refuses what it refuses, with its errors."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsentry.engines.postgres.session.pg import _bind_parts, _decode_bind
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m

names = st.text(max_size=6).map(lambda s: s.replace("\x00", ""))
binds = st.builds(
    m.Bind,
    names,
    names,
    st.lists(st.sampled_from([0, 1]), max_size=4).map(tuple),
    st.lists(st.one_of(st.none(), st.binary(max_size=12)), max_size=5).map(tuple),
    st.lists(st.sampled_from([0, 1]), max_size=4).map(tuple),
)


def codec_parts(buf: bytes, start: int, end: int, enc: str) -> object:
    return _bind_parts(codec.decode_bind(buf, start, end, enc))


def outcome(fn: object, buf: bytes, start: int, end: int) -> object:
    try:
        return fn(buf, start, end, "utf-8")  # type: ignore[operator]
    except codec.ProtocolError as err:
        return (type(err), str(err))


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(binds, st.data())
def test_the_bind_decoder_reads_what_the_codec_reads(bind: m.Bind, data: st.DataObject) -> None:
    body = codec.encode_bind(bind)[5:]
    # as sent, cut anywhere, with bytes changed, or followed by another frame in the buffer
    cut = data.draw(st.integers(0, len(body)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(len(body) - 1, 0)), st.integers(0, 255)), max_size=2))
    changed = bytearray(body)
    for at, value in flips:
        if changed:
            changed[at] = value
    for candidate in (body, body[:cut], bytes(changed)):
        buf = b"junk" + candidate + codec.SYNC + struct.pack("!hi", 1, 5)
        start, end = 4, 4 + len(candidate)
        assert outcome(_decode_bind, buf, start, end) == outcome(codec_parts, buf, start, end)

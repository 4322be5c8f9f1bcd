"""The log's frame reader: every way a segment's bytes can be wrong is named, and what
precedes it is kept."""

from __future__ import annotations

import pytest

from dbsentry.audit.log import (
    KIND_CHECKPOINT,
    KIND_HEADER,
    frame,
    json_frame,
    link_hash,
    parse_frames,
    record_frame,
)


def _records(n: int) -> bytes:
    out = [json_frame(KIND_HEADER, {"format": "x", "node": "n"})]
    prev = bytes(32)
    for seq in range(1, n + 1):
        payload = b'{"n":%d}' % seq
        digest = link_hash(prev, seq, payload)
        out.append(record_frame(seq, prev, digest, payload))
        prev = digest
    return b"".join(out)


def test_whole_frames_read_back() -> None:
    data = _records(3) + json_frame(KIND_CHECKPOINT, {"seq": 3})
    frames, end, error = parse_frames(data)
    assert error is None and end == len(data)
    assert [f.kind for f in frames] == [KIND_HEADER, 0x52, 0x52, 0x52, KIND_CHECKPOINT]
    assert [f.seq for f in frames[1:4]] == [1, 2, 3]
    assert frames[2].payload == b'{"n":2}' and frames[2].prev_hash == frames[1].hash
    assert frames[0].meta == {"format": "x", "node": "n"}
    assert frames[1].offset == frames[0].end


def test_reading_from_an_offset() -> None:
    data = _records(3)
    first, _, _ = parse_frames(data)
    frames, end, error = parse_frames(data, first[2].offset)
    assert error is None and end == len(data) and [f.seq for f in frames] == [2, 3]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d, at: d[: at + 5] + bytes([d[at + 5] ^ 1]) + d[at + 6 :], "checksum mismatch"),
        (lambda d, at: d[: at + 7], "partial frame"),
        (lambda d, at: d[:at] + b"\x00" * 12 + b"\x01", "not a frame"),  # zeros, then something
        (lambda d, at: d[: len(d) - 1], "partial frame"),
    ],
    ids=["flipped bit", "torn header", "zeroes", "torn body"],
)
def test_damage_stops_at_the_first_bad_frame(damage, message) -> None:  # type: ignore[no-untyped-def]
    data = _records(3)
    good, _, _ = parse_frames(data)
    at = good[3].offset  # the last record
    frames, end, error = parse_frames(damage(data, at))
    assert error is not None and error.startswith(message) and f"offset {at}" in error
    assert end == at and [f.seq for f in frames[1:]] == [1, 2]


@pytest.mark.parametrize("zeros", [1, 8, 9, 4096])
def test_zeros_after_the_last_frame_are_the_end(zeros: int) -> None:
    """The writer allocates the open segment ahead with zeros (no frame starts with a zero
    byte): they end the frames, they are no damage; anything else after them is."""
    data = _records(3)
    frames, end, error = parse_frames(data + bytes(zeros))
    assert error is None and end == len(data) and [f.seq for f in frames[1:]] == [1, 2, 3]
    frames, end, error = parse_frames(data + bytes(zeros) + b"R")
    assert error is not None and end == len(data) and len(frames) == 4


def test_a_record_frame_too_short_for_its_hashes() -> None:
    data = _records(1) + frame(0x52, b"\x00" * 71)
    frames, end, error = parse_frames(data)
    assert error is not None and error.startswith("record frame too short") and len(frames) == 2 and end == len(_records(1))


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]"])
def test_an_unreadable_header_or_checkpoint(body: bytes) -> None:
    data = _records(1) + frame(KIND_CHECKPOINT, body)
    _frames, end, error = parse_frames(data)
    assert error is not None and error.startswith("unreadable C frame") and end == len(_records(1))

"""A binary number whose bytes look like a mask placeholder is not a masked value written
back: the int2 10794 is 0x2a2a, "**" (a pipelined bulk INSERT through psycopg, which sends
small ints as binary int2, was refused 53 times in 150,000 rows)."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any

from dbsentry.engines.postgres.session.pg import _binds_masked_value
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m

WRITE: Any = SimpleNamespace(verdict=SimpleNamespace(facts=[SimpleNamespace(statement_class="WRITE")]))


def _bind(params: tuple[bytes, ...], formats: tuple[int, ...]) -> tuple[bytes, int, int]:
    frame = codec.encode_bind(m.Bind("", "s1", formats, params, ()))
    return frame, 5, len(frame)


def test_binary_numbers_are_not_placeholders() -> None:
    buf, start, end = _bind((struct.pack("!h", 10794), struct.pack("!q", 0x2A2A2A2A2A2A2A2A)), (1, 1))
    assert not _binds_masked_value(WRITE, buf, start, end, "utf-8", (21, 20))


def test_placeholders_as_text_or_binary_text_are_refused() -> None:
    for formats, types in (((0,), ()), ((1,), (25,)), ((1,), (0,))):
        buf, start, end = _bind((b"****",), formats)
        assert _binds_masked_value(WRITE, buf, start, end, "utf-8", types), (formats, types)


def test_unreadable_binary_is_not_text() -> None:
    buf, start, end = _bind((b"\x00\x00**",), (1,))
    assert not _binds_masked_value(WRITE, buf, start, end, "utf-8", (0,))

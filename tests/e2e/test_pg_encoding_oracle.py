"""The proxy reads client text as the server does: PostgreSQL itself is the oracle.

For the encodings whose second bytes can look like ASCII quotes and backslashes (SJIS,
BIG5, GBK, UHC, GB18030, JOHAB), random byte strings dense in lead bytes followed by ``'``,
``\\`` and ``;`` are read by dbsentry's codec and by the server's own conversion
(``convert_from``, the code the server runs on client text).  Whenever both read them, they
read the same characters, so the statement dbsentry judges is the statement the server
runs; when dbsentry cannot read them, it refuses them (22021).  A second property: SQL
built from characters of the encoding is judged the same after the round trip through its
bytes as the original text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsentry.engines.postgres.sql.facts import SQLParseError, analyze
from dbsentry.engines.postgres.wire import codec, encodings
from support.pg import PgServer

pytestmark = pytest.mark.e2e

ENCODINGS = ["SJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB", "SHIFT_JIS_2004", "EUC_JP", "LATIN9", "WIN1252"]
TRICKY = [0x27, 0x5C, 0x3B, 0x22, 0x2D, 0x2F, 0x2A, 0x24, 0x40, 0x7E, 0x41]


@pytest.fixture(scope="module")
def server(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        yield c


def _server_reads(conn: psycopg.Connection[Any], data: bytes, encoding: str) -> str | None:
    try:
        row = conn.execute("select convert_from(%s::bytea, %s)", (data, encoding)).fetchone()
    except (psycopg.errors.CharacterNotInRepertoire, psycopg.errors.UntranslatableCharacter):
        return None
    assert row is not None
    return str(row[0])


def _proxy_reads(data: bytes, encoding: str) -> str | None:
    frame = data + b"\x00"
    enc = encodings.codec_for(encoding)
    assert enc is not None
    try:
        return codec.decode_query(frame, 0, len(frame), enc).sql
    except codec.BadEncoding:
        return None


_bytes = st.lists(
    st.one_of(st.integers(0x80, 0xFF), st.sampled_from(TRICKY), st.integers(0x20, 0x7E)), min_size=1, max_size=24
).map(bytes)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_proxy_reads_bytes_as_the_server_does(server: psycopg.Connection[Any], encoding: str) -> None:
    disagreements: list[tuple[bytes, str, str]] = []

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(_bytes)
    def check(data: bytes) -> None:
        ours = _proxy_reads(data, encoding)
        if ours is None:
            return  # refused (22021): never judged wrongly
        theirs = _server_reads(server, data, encoding)
        if theirs is None:
            return  # the server refuses it too
        if ours != theirs:
            # The characters may map differently (vendor variants); what matters is that
            # they are the same number of characters with the same ASCII at the same place.
            shape = lambda s: [ch if ch < "\x80" else None for ch in s]  # noqa: E731
            if shape(ours) != shape(theirs):
                disagreements.append((data, ours, theirs))

    check()
    assert disagreements == []


_CHARS = {
    "SJIS": "ソ表能十予申暴構 ",
    "BIG5": "功許蓋餐 ",
    "GBK": "乗縗 ",
    "UHC": "한국어 ",
    "GB18030": "中文字 ",
    "JOHAB": "한국 ",
    "SHIFT_JIS_2004": "ソ表 ",
    "EUC_JP": "日本語 ",
    "LATIN9": "é€Ÿ ",
    "WIN1252": "é€š ",
}
_pieces = st.sampled_from(["'", "\\", ";", " ", "E'", "--", "/*", "*/", "$$", "select ", "drop table t", "x", '"'])


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_judgement_survives_the_round_trip(encoding: str) -> None:
    pycodec = encodings.codec_for(encoding)
    assert pycodec is not None
    chars = st.sampled_from(list(_CHARS[encoding]))

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.lists(st.one_of(chars, _pieces), min_size=1, max_size=20).map("".join))
    def check(sql: str) -> None:
        data = sql.encode(pycodec)
        read = _proxy_reads(data, encoding)
        assert read == sql
        try:
            before = [(f.command, f.tables_written, f.flags) for f in analyze(sql)]
        except SQLParseError as err:
            before = [("error", str(err))]  # type: ignore[list-item]
        try:
            after = [(f.command, f.tables_written, f.flags) for f in analyze(read)]
        except SQLParseError as err:
            after = [("error", str(err))]  # type: ignore[list-item]
        assert before == after

    check()

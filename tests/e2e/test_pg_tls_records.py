"""Large results over TLS reach drivers that wait on the socket (psycopg's async and
sync waits): dbsentry sends TLS records of at most 8 KiB of data, as PostgreSQL does.

psycopg's own suite found the hang this prevents (``test_copy_to_leaks``, text format, in
about one run of sixteen tests in three): with whole results written as one TLS write,
the client sometimes waited forever for the end of a COPY that dbsentry had sent, and
never over plaintext or through PgBouncer with TLS.  libpq reads at least 8 KiB at a
time, which a record of PostgreSQL's size always fits.  The timing that makes it hang is
not reproduced here; the record sizes on the wire are checked instead, and the results
these tests read would hang the test (not pass) should it come back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from support.proxy import RunningProxy
from support.tcpproxy import TcpForwarder

pytestmark = pytest.mark.e2e

# Results of many small rows, from under one 16 KiB TLS record to several: libpq's buffer
# stays small, so the end of some result falls inside a record it reads only in part.
SHAPES = [(rows, width) for rows in (20, 45, 120) for width in range(400, 2600, 97)]


async def _selects(dsn: str) -> list[int]:
    got = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for n, width in SHAPES:
            cur = await conn.execute("select repeat('x', %s) from generate_series(1, %s)", (width, n))
            got.append(len(await cur.fetchall()))
    return got


async def _copies(dsn: str) -> list[int]:
    got = []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for n, width in SHAPES:
            rows = 0
            async with conn.cursor().copy(f"copy (select repeat('y', {width}) from generate_series(1, {n})) to stdout") as copy:
                while await copy.read_row() is not None:
                    rows += 1
            got.append(rows)
    return got


@pytest.mark.parametrize("reader", [_selects, _copies], ids=["select", "copy-to-stdout"])
def test_every_large_result_arrives_whole_over_tls(proxy: RunningProxy, reader: Any) -> None:
    dsn = proxy.dsn(dbname="staging", sslmode="require")
    try:
        got = asyncio.run(asyncio.wait_for(reader(dsn), 60))
    except TimeoutError:
        pytest.fail("the client waited for the end of a result that dbsentry had sent")
    assert got == [n for n, _ in SHAPES]


def test_a_large_result_arrives_whole_over_tls_with_blocking_waits(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(dbname="staging", sslmode="require"), autocommit=True) as conn:
        conn.execute("set statement_timeout = '20s'")
        for n, width in SHAPES:
            rows = conn.execute("select repeat('z', %s) from generate_series(1, %s)", (width, n)).fetchall()
            assert len(rows) == n


async def _copy_after_writes(dsn: str) -> list[int]:
    """psycopg's test_copy_to_leaks, in short: in one transaction a table is made and
    filled with a pipelined executemany, then copied out row by row; a new connection
    each time."""
    got = []
    for i in range(12):
        table = f"tls_copy_{i}"
        async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.cursor() as cur:
            await cur.execute(f"drop table if exists {table}")
            cols = ", ".join(f"f{j} text" for j in range(20))
            await cur.execute(f"create table {table} (id int, {cols})")
            names = ", ".join(f"f{j}" for j in range(20))
            marks = ", ".join(["%s"] * 21)
            rows = [(r, *(f"{r}-{j}-" + "v" * (40 + 7 * ((r * j + i) % 13)) for j in range(20))) for r in range(20)]
            await cur.executemany(f"insert into {table} (id, {names}) values ({marks})", rows)
            n = 0
            async with cur.copy(f"copy (select {names} from {table} order by id) to stdout (format text)") as copy:
                while await copy.read_row() is not None:
                    n += 1
            got.append(n)
            await cur.execute(f"drop table {table}")
    return got


def test_a_copy_after_pipelined_writes_arrives_whole_over_tls(proxy: RunningProxy) -> None:
    dsn = proxy.dsn(dbname="staging", sslmode="require")
    try:
        got = asyncio.run(asyncio.wait_for(_copy_after_writes(dsn), 90))
    except TimeoutError:
        pytest.fail("the client waited for the end of a COPY that dbsentry had sent")
    assert got == [20] * 12


def _tls_records(stream: bytes) -> list[tuple[int, int]]:
    """(content type, length) of each TLS record in ``stream``."""
    out, i = [], 0
    while i + 5 <= len(stream):
        length = int.from_bytes(stream[i + 3 : i + 5], "big")
        out.append((stream[i], length))
        i += 5 + length
    assert i == len(stream), "the stream does not end on a record boundary"
    return out


def test_no_tls_record_carries_more_than_postgresql_would(proxy: RunningProxy) -> None:
    with TcpForwarder(proxy.host, proxy.port, record_back=True) as fwd:
        dsn = make_conninfo(proxy.dsn(dbname="staging", sslmode="require"), host=fwd.host, port=fwd.port)
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute("select repeat('x', 1500) from generate_series(1, 200)").fetchall()
            assert len(rows) == 200
        received = bytes(fwd.received)
    assert received[:1] == b"S"  # the answer to SSLRequest, then TLS only
    records = _tls_records(received[1:])
    data = [n for kind, n in records if kind == 23]  # application_data
    assert sum(data) > 300_000
    # 8 KiB of data per record, plus what TLS adds (TLS 1.3: type and tag; 1.2: nonce, tag)
    assert max(data) <= 8192 + 64, sorted(data)[-5:]

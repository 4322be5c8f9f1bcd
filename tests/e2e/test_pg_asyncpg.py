"""asyncpg through a running dbsentry: its own protocol implementation (extended protocol,
binary formats everywhere, its own cancel requests)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import psycopg
import pytest

from support.pg import PgServer
from support.proxy import RunningProxy

pytestmark = pytest.mark.e2e


def client_tls() -> ssl.SSLContext:
    """sslmode=require: encrypted, certificate not checked (the proxy's is self-signed)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def connect(
    proxy: RunningProxy, identity: str = "alice@example.com", **kw: Any
) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=proxy.host,
        port=proxy.port,
        user=identity,
        password=proxy.token(identity, ("eng",)),
        database=kw.pop("database", "prod"),
        ssl=client_tls(),
        timeout=10,
        **kw,
    )


def run(
    proxy: RunningProxy,
    body: Callable[[asyncpg.Connection], Awaitable[None]],
    database: str = "prod",
) -> None:
    async def main() -> None:
        conn = await connect(proxy, database=database)
        try:
            await body(conn)
        finally:
            await conn.close()

    asyncio.run(main())


def test_query_with_params(proxy: RunningProxy) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        assert await conn.fetchval("select $1::int + $2::int", 40, 2) == 42
        row = await conn.fetchrow("select $1::text as a, $2::text is null as b", "x'y", None)
        assert dict(row) == {"a": "x'y", "b": True}
        rows = await conn.fetch("select g from generate_series(1, $1::int) g", 1000)
        assert [r["g"] for r in rows] == list(range(1, 1001))

    run(proxy, body)


def test_binary_types_round_trip(proxy: RunningProxy) -> None:
    values: list[tuple[str, Any]] = [
        ("int8", 2**62),
        ("numeric", Decimal("12345678901234567890.000000001")),
        ("timestamptz", dt.datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=dt.UTC)),
        ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("bytea", bytes(range(256))),
        ("int4[]", [1, None, 3]),
        ("text[]", ["a", "b,c", 'quote"d', ""]),
        ("bool", True),
        ("float8", 0.1),
        ("date", dt.date(1999, 12, 31)),
        ("interval", dt.timedelta(days=3, seconds=5)),
    ]

    async def body(conn: asyncpg.Connection) -> None:
        for type_name, value in values:
            got = await conn.fetchval(f"select $1::{type_name}", value)
            assert got == value, type_name
        doc = {"k": [1, 2, {"n": None}], "s": "ü"}
        assert json.loads(await conn.fetchval("select $1::jsonb", json.dumps(doc))) == doc
        # Values computed by the server, decoded from binary.
        row = await conn.fetchrow(
            "select 1.5::numeric n, '2000-01-01T00:00:00Z'::timestamptz t, '\\x00ff'::bytea b, array[[1,2],[3,4]] a"
        )
        assert tuple(row) == (
            Decimal("1.5"),
            dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
            b"\x00\xff",
            [[1, 2], [3, 4]],
        )

    run(proxy, body)


def test_prepared_statement_reused(proxy: RunningProxy) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        stmt = await conn.prepare("select $1::int * 2, $2::text")
        for i in range(300):
            assert tuple(await stmt.fetchrow(i, str(i))) == (i * 2, str(i))
        assert [a.name for a in stmt.get_attributes()] == ["?column?", "text"]

    run(proxy, body)


def test_executemany_and_copy_records(proxy: RunningProxy, pg_server: PgServer) -> None:
    name = f"t_apg_{uuid.uuid4().hex[:12]}"

    async def body(conn: asyncpg.Connection) -> None:
        await conn.execute(f"create table {name} (id int primary key, note text, amount numeric)")
        try:
            await conn.executemany(
                f"insert into {name} values ($1, $2, $3)",
                [(i, f"n{i}", Decimal(i)) for i in range(500)],
            )
            assert await conn.fetchval(f"select count(*) from {name}") == 500
            await conn.copy_records_to_table(
                name,
                records=[(i, f"c{i}", Decimal(i) / 2) for i in range(500, 5500)],
                columns=["id", "note", "amount"],
            )
            total = await conn.fetchrow(f"select count(*), sum(amount) from {name}")
            assert tuple(total) == (
                5500,
                Decimal(sum(range(500))) + Decimal(sum(range(500, 5500))) / 2,
            )
            with psycopg.connect(pg_server.dsn()) as direct:
                assert direct.execute(f"select note from {name} where id = 5499").fetchone() == (
                    "c5499",
                )
            out = await conn.fetch(f"select note from {name} where id in (0, 500) order by id")
            assert [r["note"] for r in out] == ["n0", "c500"]
        finally:
            await conn.execute(f"drop table {name}")

    run(proxy, body, database="staging")


@pytest.mark.serial
def test_timeout_cancels_query(proxy: RunningProxy, pg_server: PgServer) -> None:
    marker = f"apg-timeout-{uuid.uuid4().hex[:8]}"

    async def body(conn: asyncpg.Connection) -> None:
        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval(f"select pg_sleep(30) /* {marker} */", timeout=0.5)
        assert time.monotonic() - start < 2.0
        # asyncpg waited for its CancelRequest to land: the connection is usable at once.
        assert await conn.fetchval("select 'usable'") == "usable"

    run(proxy, body)
    with psycopg.connect(pg_server.dsn()) as direct:
        row = direct.execute(
            "select count(*) from pg_stat_activity where state = 'active' and query like %s and pid <> pg_backend_pid()",
            (f"%{marker}%",),
        ).fetchone()
    assert row == (0,)


def test_transactions(proxy: RunningProxy) -> None:
    name = f"t_apg_tx_{uuid.uuid4().hex[:12]}"

    async def body(conn: asyncpg.Connection) -> None:
        await conn.execute(f"create table {name} (id int)")
        try:
            async with conn.transaction():
                await conn.execute(f"insert into {name} values (1)")
            with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
                async with conn.transaction():
                    await conn.execute(f"insert into {name} values (2)")
                    await conn.execute("select 1/0")
            async with conn.transaction():
                await conn.execute(f"insert into {name} values (3)")
                with pytest.raises(asyncpg.exceptions.UniqueViolationError):
                    async with conn.transaction():  # a savepoint
                        await conn.execute(f"create unique index on {name} (id)")
                        await conn.execute(f"insert into {name} values (3)")
                await conn.execute(f"insert into {name} values (4)")
            assert not conn.is_in_transaction()
            assert [r["id"] for r in await conn.fetch(f"select id from {name} order by id")] == [
                1,
                3,
                4,
            ]
        finally:
            await conn.execute(f"drop table {name}")

    run(proxy, body, database="staging")


def test_server_settings_and_pid(proxy: RunningProxy) -> None:
    async def main() -> None:
        conn = await connect(
            proxy, server_settings={"application_name": "apg-test", "search_path": "myschema"}
        )
        try:
            assert await conn.fetchval("show search_path") == "myschema"
            assert conn.get_settings().application_name == "apg-test"
            assert conn.get_server_pid() != await conn.fetchval("select pg_backend_pid()")
        finally:
            await conn.close()

    asyncio.run(main())


def test_wrong_token_is_invalid_password(proxy: RunningProxy) -> None:
    async def main() -> None:
        with pytest.raises(
            asyncpg.exceptions.InvalidPasswordError,
            match=re.escape('password authentication failed for user "alice@example.com"'),
        ):
            await asyncpg.connect(
                host=proxy.host,
                port=proxy.port,
                user="alice@example.com",
                password="nope",
                database="prod",
                ssl=client_tls(),
            )
        # One failure does not lock the address out; a success clears it.
        conn = await connect(proxy)
        await conn.close()

    asyncio.run(main())

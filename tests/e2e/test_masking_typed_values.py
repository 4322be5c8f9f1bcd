"""Masked values of types that cannot hold a placeholder, through a running dbsentry.

A masked date of birth or IP address used to come back as NULL, which a reader cannot tell
from missing data.  Each type now has a masked value of its own (docs/masking.md, "Types
without a placeholder"): the checks run through psql, psycopg in text and binary format,
psycopg's pipeline and asyncpg (binary), so both wire formats are decoded by real clients.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from support.guard_clients import MODES, Login, run
from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

MASKED = Login("eve@example.com", ("eng",))
READER = Login("rita@example.com", ("eng", "pii-readers"))

REAL = {
    "born": "1984-03-17",
    "seen": "2024-05-06 07:08:09+00",
    "ip": "203.0.113.77",
    "net": "198.51.100.0/24",
    "card": "4539148803436467",
    "phone": "4155550132",
    "ref": "5c7e1b9e-3f2a-4b8e-9d41-0a6b2c3d4e5f",
    "iban": "1999-12-31",
}


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    table: str


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    table = f"typed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(
            f"""create table {table} (id int primary key, born date, seen timestamptz,
            ip inet, net cidr, card bigint, phone bigint, ref uuid, iban date)"""
        )
        conn.execute(
            f"insert into {table} values (1, %s, %s, %s, %s, %s, %s, %s, %s)",
            [REAL[k] for k in ("born", "seen", "ip", "net", "card", "phone", "ref", "iban")],
        )
    overrides = {
        f"public.{table}.born": "date_of_birth",
        f"public.{table}.seen": "date_of_birth",
        f"public.{table}.ip": "ip_address",
        f"public.{table}.net": "ip_address",
        f"public.{table}.card": "payment_card",
        f"public.{table}.phone": "phone",
        f"public.{table}.ref": "national_id",
        f"public.{table}.iban": "iban",
    }
    try:
        config = write_config(
            tmp_path_factory.mktemp("masking_typed"),
            pg_server,
            extra={
                "masking": {
                    "overrides": overrides,
                    # configured so: phone numbers are NULL, whatever their type
                    "strategies": {"phone": "null", "iban": "redact"},
                    "safety_net": "off",
                }
            },
        )
        with run_proxy(config) as proxy:
            yield Env(proxy, table)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop table if exists {table}")


def _row(env: Env, mode: str, login: Login) -> dict[str, str | None]:
    cols = ("born", "seen", "ip", "net", "card", "phone", "ref", "iban")
    (outcome,) = run(mode, env.proxy, [f"select {', '.join(cols)} from {env.table}"], login)
    assert outcome.ok, str(outcome)
    (row,) = outcome.rows
    # psql prints NULL as an empty field
    return {c: (None if v in (None, "") else str(v)) for c, v in zip(cols, row, strict=True)}


@pytest.mark.parametrize("mode", MODES)
def test_typed_columns_come_back_masked_not_null(env: Env, mode: str) -> None:
    got = _row(env, mode, MASKED)
    assert got["born"] == "1900-01-01"
    seen = got["seen"]
    assert seen is not None and seen.startswith("1900-01-01 00:00:00")
    assert got["ip"] == "203.0.0.0"  # partial: the network half, as for text
    assert got["net"] == "198.51.0.0/24"
    assert got["card"] == "0"
    assert got["phone"] is None  # masking.strategies: {phone: null}
    assert got["ref"] == "00000000-0000-0000-0000-000000000000"
    assert got["iban"] == "1900-01-01"
    assert not {REAL[k] for k in REAL} & {v for v in got.values() if v}


@pytest.mark.parametrize("mode", ["psycopg", "asyncpg"])
def test_pii_readers_get_the_real_values(env: Env, mode: str) -> None:
    got = _row(env, mode, READER)
    assert got["born"] == REAL["born"]
    assert got["ip"] == REAL["ip"]
    assert got["card"] == REAL["card"]


def test_copy_of_the_table_writes_the_same_masked_values(env: Env) -> None:
    dsn = env.proxy.dsn(MASKED.identity, groups=MASKED.groups)
    sql = f"copy {env.table} (born, ip, card, phone) to stdout"
    with psycopg.connect(dsn) as conn, conn.cursor().copy(sql) as copy:
        data = b"".join(bytes(chunk) for chunk in copy)
    assert data == b"1900-01-01\t203.0.0.0\t0\t\\N\n"

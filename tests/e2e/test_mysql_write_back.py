"""Masked values written back are refused on the MySQL listener (``masking.write_back``),
as on the PostgreSQL one: a masked identity reads ``e***@example.com`` and sends it back in
an UPDATE (a string constant, or a prepared statement's parameter); the real value
survives, checked directly on the server."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator

import pytest

from support.mysql import (
    MySQLProxy,
    root_connect,
    run_mysql_proxy,
    server_reason,
)

_REASON = server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
pymysql = pytest.importorskip("pymysql")

PERSON = "eve@example.com"
REAL = "eve.real@example.com"
_NO_VERIFY = {"check_hostname": False, "verify_mode": ssl.CERT_NONE}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MySQLProxy, str]]:
    t = f"mwb_{uuid.uuid4().hex[:8]}"
    with root_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {t} (id INT PRIMARY KEY, email VARCHAR(80), note VARCHAR(80))")
        cur.execute(f"INSERT INTO {t} VALUES (1, %s, 'n'), (2, 'bob.real@example.org', 'n')", (REAL,))
    try:
        with run_mysql_proxy(tmp_path_factory.mktemp("mysql-write-back"), extra={"masking": {"sample_budget_seconds": 5}}) as mp:
            yield mp, t
    finally:
        with root_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {t}")


def _email(t: str) -> str:
    with root_connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT email FROM {t} WHERE id = 1")
        return str(cur.fetchone()[0])


def test_masked_value_written_back_is_refused(env: tuple[MySQLProxy, str]) -> None:
    mp, t = env
    with pymysql.connect(
        host="127.0.0.1", port=mp.port, user=PERSON, password=mp.token(PERSON), database="dev",
        ssl=_NO_VERIFY, connect_timeout=10, autocommit=True,
    ) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT email FROM {t} WHERE id = 1")
        masked = cur.fetchone()[0]
        assert masked != REAL and "*" in masked, masked
        for sql, args in (
            (f"UPDATE {t} SET email = '{masked}' WHERE id = 1", None),
            (f"UPDATE {t} SET email = %s WHERE id = 1", (masked,)),
            (f"INSERT INTO {t} VALUES (3, '{masked}', 'n')", None),
        ):
            with pytest.raises(pymysql.err.OperationalError) as err:
                cur.execute(sql, args)
            assert err.value.args == (1142, "dbsentry: writing a masked value back is refused (masking.write_back)")
        # text that merely contains stars is ordinary data
        cur.execute(f"UPDATE {t} SET note = 'rated ***** by a***@x' WHERE id = 1")
        assert cur.rowcount == 1
    assert _email(t) == REAL


def test_prepared_parameter_written_back_is_refused(env: tuple[MySQLProxy, str]) -> None:
    connector = pytest.importorskip("mysql.connector")
    mp, t = env
    conn = connector.connect(
        host="127.0.0.1", port=mp.port, user=PERSON, password=mp.token(PERSON), database="dev",
        use_pure=True, ssl_verify_cert=False, connection_timeout=10, autocommit=True,
    )
    try:
        cur = conn.cursor(prepared=True)
        cur.execute(f"SELECT email FROM {t} WHERE id = ?", (1,))
        masked = cur.fetchall()[0][0]
        assert masked != REAL and "*" in str(masked)
        with pytest.raises(connector.Error) as err:
            cur.execute(f"UPDATE {t} SET email = ? WHERE id = ?", (masked, 1))
        assert err.value.errno == 1142 and "masking.write_back" in str(err.value.msg)
    finally:
        conn.close()
    assert _email(t) == REAL

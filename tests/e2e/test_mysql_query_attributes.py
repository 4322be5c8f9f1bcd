"""Query attributes (``CLIENT_QUERY_ATTRIBUTES``, MySQL 8.0.23+) through a running dbsentry
to the real MariaDB, which does not read them: mysql-connector-python (pure) sends them with
text and prepared statements; the proxy reads them, records them in the statement's audit
record (``correlation``: ``query_attribute.<name>``), strips them before the server sees
them, and answers malformed ones with an ERR for that command alone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.mysql import MySQLProxy, audit_rows, run_mysql_proxy, server_reason

_REASON = server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
connector = pytest.importorskip("mysql.connector")

ALICE = "alice@example.com"
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MySQLProxy]:
    with run_mysql_proxy(tmp_path_factory.mktemp("mysql-query-attributes")) as running:
        yield running


def _connect(mp: MySQLProxy) -> Any:
    return connector.connect(
        host="127.0.0.1", port=mp.port, user=ALICE, password=mp.token(), database="dev",
        use_pure=True, ssl_verify_cert=False, connection_timeout=10, autocommit=True,
    )


def test_text_and_prepared_statements_carry_attributes_into_the_audit(proxy: MySQLProxy) -> None:
    marker = f"qa_marker_{time.time_ns()}"
    conn = _connect(proxy)
    try:
        cur = conn.cursor()
        cur.add_attribute("traceparent", TRACE)
        cur.add_attribute("tenant", 42)
        cur.execute(f"SELECT '{marker}', 1")
        assert cur.fetchall() == [(marker, 1)]
        prepared = conn.cursor(prepared=True)
        prepared.add_attribute("request", "r-7")
        prepared.execute(f"SELECT ? + 1, '{marker}-p'", (1,))
        assert prepared.fetchall()[0][0] == 2
        # again, with the types bound before (the statement's own parameter only upstream)
        prepared.execute(f"SELECT ? + 1, '{marker}-p'", (5,))
        assert prepared.fetchall()[0][0] == 6
    finally:
        conn.close()
    rows = audit_rows(proxy, marker, lambda rows: len(rows) >= 3, "--connection", "dev")
    text = [r for r in rows if f"{marker}-p" not in r["statement"]]
    assert text and text[0]["correlation"]["query_attribute.traceparent"] == TRACE
    assert text[0]["correlation"]["query_attribute.tenant"] == "42"
    executed = [r for r in rows if f"{marker}-p" in r["statement"]]
    assert {tuple(r["params"]) for r in executed} == {("1",), ("5",)}
    assert all(r["correlation"]["query_attribute.request"] == "r-7" for r in executed)


def test_malformed_attributes_get_an_err_and_the_session_goes_on(proxy: MySQLProxy) -> None:
    from mysql.connector.constants import ServerCmd

    conn = _connect(proxy)
    try:
        # one attribute, one parameter set, no NULLs, but no types bound
        with pytest.raises(connector.Error) as err:
            conn._handle_result(conn._send_cmd(ServerCmd.QUERY, b"\x01\x01\x00\x00SELECT 1"))
        assert err.value.errno == 1835 and err.value.sqlstate == "HY000"
        assert err.value.msg == (
            "dbsentry: COM_QUERY: the query attributes cannot be read: "
            "parameters sent without their types, and none were bound before"
        )
        with pytest.raises(connector.Error) as err:
            conn._handle_result(conn._send_cmd(ServerCmd.QUERY, b"\x00\x02SELECT 1"))
        assert err.value.errno == 1835 and "parameter set count 2" in err.value.msg
        cur = conn.cursor()
        cur.execute("SELECT 41 + 1")
        assert cur.fetchall() == [(42,)]
    finally:
        conn.close()

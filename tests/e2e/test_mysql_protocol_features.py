"""Two protocol features through a running dbsentry to the real MariaDB, with
mysql-connector-python (pure Python).

Query attributes (``CLIENT_QUERY_ATTRIBUTES``, MySQL 8.0.23+), which MariaDB does not read:
sent with text and prepared statements, read by the proxy, recorded in the statement's
audit record (``correlation``: ``query_attribute.<name>``), stripped before the server sees
them; malformed ones get an ERR for that command alone.

COM_CHANGE_USER: the client logs in again with a token (the same rules as at login), the
upstream session is reset, and the statements that follow are the new identity's, audited
in a session of its own; a wrong token ends the session, as a failed login does."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from support.mysql import MySQLProxy, audit_rows, connector_connect, run_mysql_proxy, server_reason

_REASON = server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
connector = pytest.importorskip("mysql.connector")

ALICE, BOB = "alice@example.com", "bob@example.com"
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MySQLProxy]:
    with run_mysql_proxy(tmp_path_factory.mktemp("mysql-protocol")) as running:
        yield running


def test_text_and_prepared_statements_carry_attributes_into_the_audit(proxy: MySQLProxy) -> None:
    marker = f"qa_marker_{time.time_ns()}"
    conn = connector_connect(proxy)
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

    conn = connector_connect(proxy)
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


# ---------------------------------------------------------------- COM_CHANGE_USER


def test_change_user_with_a_token_starts_a_new_identitys_session(proxy: MySQLProxy) -> None:
    marker = f"cu_marker_{time.time_ns()}"
    conn = connector_connect(proxy)
    try:
        cur = conn.cursor()
        cur.execute("SET @left_behind = 1")
        cur.execute(f"SELECT '{marker}-alice'")
        cur.fetchall()
        conn.cmd_change_user(username=BOB, password=proxy.token(BOB), database="dev")
        cur = conn.cursor()
        cur.execute(f"SELECT @left_behind, '{marker}-bob'")
        assert cur.fetchall() == [(None, f"{marker}-bob")]  # nothing of alice's session survives
    finally:
        conn.close()
    rows = audit_rows(proxy, marker, lambda rows: len(rows) >= 2, "--connection", "dev")
    by_text = {r["statement"].rsplit("'", 2)[-2]: r for r in rows}
    assert by_text[f"{marker}-alice"]["identity"] == ALICE
    assert by_text[f"{marker}-bob"]["identity"] == BOB
    assert by_text[f"{marker}-alice"]["session_id"] != by_text[f"{marker}-bob"]["session_id"]


def test_change_user_with_a_wrong_token_ends_the_session(proxy: MySQLProxy) -> None:
    conn = connector_connect(proxy)
    try:
        with pytest.raises(connector.Error) as err:
            conn.cmd_change_user(username=BOB, password="not-a-token", database="dev")
        assert err.value.errno == 1045 and str(err.value.msg).startswith("dbsentry: access denied for user 'bob@example.com'")
    finally:
        conn.close()


def test_change_user_to_another_connection_is_refused(proxy: MySQLProxy) -> None:
    conn = connector_connect(proxy)
    try:
        with pytest.raises(connector.Error) as err:
            conn.cmd_change_user(username=ALICE, password=proxy.token(ALICE), database="prod")
        assert err.value.errno == 1235 and "one connection per session" in str(err.value.msg)
    finally:
        conn.close()

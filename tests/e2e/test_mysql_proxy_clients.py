"""Real MySQL clients through a running dbsentry to the real MariaDB: PyMySQL,
mysql-connector-python (pure and C, text and prepared = binary protocol), the mariadb
command-line client; guardrails (42000 ``dbsentry:``), transactions, the audit trail
(engine mysql), KILL routing. One proxy for the module, TLS required (the default)."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from support.mysql import MySQLProxy, mariadb_cli, run_mysql_proxy, server_reason
from support.pg import free_port
from support.proxy import dbsentry_cli

_REASON = server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
pymysql = pytest.importorskip("pymysql")

ALICE = "alice@example.com"
_NO_VERIFY = {"check_hostname": False, "verify_mode": ssl.CERT_NONE}


@pytest.fixture(scope="module")
def mysql_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MySQLProxy]:
    directory = tmp_path_factory.mktemp("mysql-proxy")
    port = free_port()
    # "chain": the proxy as its own upstream, over TLS checked against its own certificate,
    # logging in as alice with her token (caching_sha2_password, full authentication).
    chain = {
        "engine": "mysql", "host": "127.0.0.1", "port": port, "database": "dev", "user": ALICE,
        "password_file": str(directory / "alice.token"), "environment": "development",
        "upstream_tls": "verify-full", "upstream_ca": str(directory / "state" / "tls" / "server.crt"),
    }
    with run_mysql_proxy(directory, port=port, connections={"chain": chain}) as running:
        (directory / "alice.token").write_text(running.token())
        yield running


def connect(mp: MySQLProxy, database: str | None = "dev", *, user: str = ALICE, password: str | None = None, **kw: Any) -> Any:
    return pymysql.connect(
        host="127.0.0.1",
        port=mp.port,
        user=user,
        password=mp.token(user) if password is None else password,
        database=database,
        ssl=_NO_VERIFY,
        connect_timeout=10,
        **kw,
    )


@pytest.fixture(scope="module")
def table(mysql_proxy: MySQLProxy) -> str:
    with connect(mysql_proxy) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS dbs_proxy_t (id INT PRIMARY KEY, v VARCHAR(40), d DATETIME, n DECIMAL(8,2))")
        cur.execute("DELETE FROM dbs_proxy_t WHERE id > 0")
        cur.execute("INSERT INTO dbs_proxy_t VALUES (1, 'one', '2024-01-02 03:04:05', 1.50), (2, 'two', NULL, NULL)")
        conn.commit()
    return "dbs_proxy_t"


def test_pymysql_select_insert_update_and_transaction_status(mysql_proxy: MySQLProxy, table: str) -> None:
    with connect(mysql_proxy) as conn, conn.cursor() as cur:
        assert conn.get_server_info().endswith("MariaDB-0+deb12u1") or conn.get_server_info()
        cur.execute("SELECT id, v FROM dbs_proxy_t ORDER BY id")
        assert cur.fetchall() == ((1, "one"), (2, "two"))
        cur.execute("INSERT INTO dbs_proxy_t VALUES (%s, %s, NULL, NULL)", (3, "three"))
        assert conn.server_status & 1  # SERVER_STATUS_IN_TRANS: PyMySQL runs with autocommit off
        cur.execute("UPDATE dbs_proxy_t SET v = %s WHERE id = %s", ("THREE", 3))
        assert cur.rowcount == 1
        conn.rollback()
        assert not conn.server_status & 1
        cur.execute("SELECT COUNT(*) FROM dbs_proxy_t WHERE id = 3")
        assert cur.fetchone() == (0,)
        cur.execute("SELECT DATABASE()")
        assert cur.fetchone() == ("test",)  # the connection's database, whatever its name
        # multi-statements: each judged, each result forwarded
        conn.autocommit(True)
        assert conn.thread_id() != 0


def test_drop_table_in_production_is_blocked_and_session_stays_usable(mysql_proxy: MySQLProxy, table: str) -> None:
    with connect(mysql_proxy, "prod") as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute("DROP TABLE dbs_proxy_t")
        code, message = err.value.args
        assert code == 1227
        assert message.startswith("dbsentry:") and "baseline." in message
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute("DELETE FROM dbs_proxy_t")
        assert err.value.args[0] == 1227
        assert err.value.args[1].startswith("dbsentry:") and "baseline.prod.unbounded-write" in err.value.args[1]
        cur.execute("SELECT COUNT(*) FROM dbs_proxy_t")
        assert cur.fetchone()[0] >= 2
    # the SQLSTATE on the wire, as the mariadb client shows it
    if shutil.which("mariadb"):
        out = _cli(mysql_proxy, "prod", "DROP TABLE dbs_proxy_t", check=False)
        assert "ERROR 1227 (42000)" in out.stderr and "dbsentry:" in out.stderr


def test_unparsable_statement_is_refused_fail_closed(mysql_proxy: MySQLProxy) -> None:
    with connect(mysql_proxy) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.MySQLError) as err:
            cur.execute("SELECT /*!50000 1 */")
        assert err.value.args[1].startswith("dbsentry:")
        with pytest.raises(pymysql.err.MySQLError) as err:
            cur.execute("USE mysql")
        assert "one connection per session" in err.value.args[1]
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_connector_pure_and_c_text_and_prepared(mysql_proxy: MySQLProxy, table: str) -> None:
    connector = pytest.importorskip("mysql.connector")
    kinds = [True]
    if connector.HAVE_CEXT:
        kinds.append(False)
    for pure in kinds:
        conn = connector.connect(
            host="127.0.0.1", port=mysql_proxy.port, user=ALICE, password=mysql_proxy.token(), database="dev",
            use_pure=pure, ssl_verify_cert=False, connection_timeout=10,
        )
        try:
            cur = conn.cursor(prepared=True)
            cur.execute("SELECT id, v, d, n FROM dbs_proxy_t WHERE id = ?", (1,))
            row = cur.fetchall()[0]
            assert (row[0], row[1], str(row[2]), str(row[3])) == (1, "one", "2024-01-02 03:04:05", "1.50")
            cur.execute("UPDATE dbs_proxy_t SET v = ? WHERE id = ?", ("uno", 1))
            conn.rollback()
            text = conn.cursor()
            text.execute("SELECT v FROM dbs_proxy_t WHERE id = 1")
            assert text.fetchall() == [("one",)]
        finally:
            conn.close()
    if not connector.HAVE_CEXT:
        pytest.skip("mysql-connector-python's C extension does not load here; the pure one passed")


def _cli(mp: MySQLProxy, database: str, sql: str, *, check: bool = True, args: tuple[str, ...] = ("--ssl", "--ssl-verify-server-cert=0")) -> subprocess.CompletedProcess[str]:
    cmd = ["mariadb", "-h", "127.0.0.1", "-P", str(mp.port), "-u", ALICE, f"-p{mp.token()}", *args, "-D", database, "-e", sql]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


@pytest.mark.skipif(shutil.which("mariadb") is None, reason="the mariadb command-line client is not installed")
def test_mariadb_cli_batch_and_vertical(mysql_proxy: MySQLProxy, table: str) -> None:
    out = _cli(mysql_proxy, "dev", "SELECT id, v FROM dbs_proxy_t ORDER BY id")
    assert out.stdout.splitlines() == ["id\tv", "1\tone", "2\ttwo"]
    out = _cli(mysql_proxy, "dev", "SELECT id, v FROM dbs_proxy_t WHERE id = 2\\G")
    assert "*************************** 1. row ***************************" in out.stdout
    assert "v: two" in out.stdout
    out = _cli(mysql_proxy, "dev", "status")
    assert "Cipher in use" in out.stdout


def test_bad_token_and_plaintext_refused(mysql_proxy: MySQLProxy) -> None:
    with pytest.raises(pymysql.err.OperationalError) as err:
        connect(mysql_proxy, password="not-a-token")
    assert err.value.args[0] == 1045
    assert err.value.args[1].startswith("dbsentry: access denied for user 'alice@example.com'")
    with pytest.raises(pymysql.err.OperationalError) as err:
        pymysql.connect(host="127.0.0.1", port=mysql_proxy.port, user=ALICE, password=mysql_proxy.token(), database="dev", ssl_disabled=True)
    assert err.value.args[0] == 3159
    assert err.value.args[1].startswith("dbsentry: TLS is required")
    with pytest.raises(pymysql.err.OperationalError) as err:
        connect(mysql_proxy, "restricted")
    assert err.value.args[0] == 1044  # ER_DBACCESS_DENIED_ERROR, as the server says it
    assert err.value.args[1] == "dbsentry: identity 'alice@example.com' is not allowed to use connection 'restricted'"
    with pytest.raises(pymysql.err.OperationalError) as err:
        connect(mysql_proxy, "nope")
    assert err.value.args[0] == 1049
    assert "connection 'nope' does not exist" in err.value.args[1] and "dev, prod" in err.value.args[1]


def test_init_db_change_user_and_commands(mysql_proxy: MySQLProxy) -> None:
    with connect(mysql_proxy) as conn:
        conn.ping()
        conn.select_db("dev")  # the same connection: fine
        with pytest.raises(pymysql.err.OperationalError) as err:
            conn.select_db("mysql")
        assert err.value.args == (1227, "dbsentry: one connection per session: cannot change to 'mysql'; connect again with it as the database")
        with conn.cursor() as cur:
            cur.execute("SELECT 2")
            assert cur.fetchone() == (2,)


def test_kill_query_cancels_sleep_within_a_second(mysql_proxy: MySQLProxy) -> None:
    victim = connect(mysql_proxy)
    bob = connect(mysql_proxy, None, user="bob@example.com")
    # without a database: a session for KILL only, as the mariadb client's Ctrl-C opens
    killer = connect(mysql_proxy, None)
    result: dict[str, Any] = {}

    def sleep() -> None:
        started = time.monotonic()
        try:
            with victim.cursor() as cur:
                cur.execute("SELECT SLEEP(30)")
                result["rows"] = cur.fetchall()
        except pymysql.err.MySQLError as exc:
            result["error"] = exc.args
        result["seconds"] = time.monotonic() - started
        result["ended"] = time.monotonic()

    thread = threading.Thread(target=sleep)
    thread.start()
    time.sleep(0.5)
    with pytest.raises(pymysql.err.OperationalError) as err:
        bob.cursor().execute(f"KILL QUERY {victim.thread_id()}")
    assert err.value.args[0] == 1095  # not bob's session
    bob.close()
    with killer.cursor() as cur:
        killed_at = time.monotonic()
        cur.execute(f"KILL QUERY {victim.thread_id()}")
        thread.join(5)
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute("KILL QUERY 999999999")
        assert err.value.args == (1094, "dbsentry: unknown thread id: 999999999")
    killer.close()
    assert result["ended"] - killed_at < 1.0, result
    assert result.get("error", (0,))[0] == 1317 or result.get("rows") == ((1,),)
    with victim.cursor() as cur:
        cur.execute("SELECT 3")
        assert cur.fetchone() == (3,)
    victim.close()


def test_audit_records_name_the_engine(mysql_proxy: MySQLProxy, table: str) -> None:
    marker = f"audit_marker_{time.time_ns()}"
    with connect(mysql_proxy, "prod") as conn, conn.cursor() as cur:
        cur.execute(f"SELECT '{marker}' AS m, COUNT(*) FROM dbs_proxy_t")
        cur.fetchall()
        with pytest.raises(pymysql.err.OperationalError):
            cur.execute(f"DELETE FROM dbs_proxy_t /* {marker} */")
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = dbsentry_cli("audit", "search", "--connection", "prod", "--json", config=mysql_proxy.proxy.config_path)
        rows = [json.loads(line) for line in out.stdout.splitlines() if marker in line]
        if len(rows) >= 2 and all(r.get("rows") is not None or r["decision"] == "deny" for r in rows):
            break
        time.sleep(0.3)
    by_decision = {r["decision"]: r for r in rows}
    assert set(by_decision) == {"allow", "deny"}, rows
    assert all(r["engine"] == "mysql" for r in rows)
    assert by_decision["allow"]["rows"] == 1
    assert by_decision["deny"]["rules"] == ["baseline.prod.unbounded-write"]
    assert by_decision["allow"]["identity"] == ALICE


def test_multi_statements_on_and_off(mysql_proxy: MySQLProxy, table: str) -> None:
    from pymysql.constants import CLIENT

    with connect(mysql_proxy, "prod", client_flag=CLIENT.MULTI_STATEMENTS) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1; SELECT 2")
        assert cur.fetchall() == ((1,),)
        assert cur.nextset() and cur.fetchall() == ((2,),)
        # one statement the policy refuses refuses the whole string: nothing of it runs
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute("SELECT 1; DROP TABLE dbs_proxy_t")
        assert err.value.args[0] == 1227 and err.value.args[1].startswith("dbsentry:")
        cur.execute("SELECT COUNT(*) FROM dbs_proxy_t")
        assert cur.fetchone()[0] >= 2
    with connect(mysql_proxy, "prod") as conn, conn.cursor() as cur:  # SQL-level PREPARE / EXECUTE
        cur.execute("PREPARE p1 FROM 'SELECT 41 + 1'")
        cur.execute("EXECUTE p1")
        assert cur.fetchall() == ((42,),)
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute("PREPARE p2 FROM 'DELETE FROM dbs_proxy_t'")
        assert "baseline.prod.unbounded-write" in err.value.args[1]
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute("EXECUTE p2")
        assert err.value.args[1] == "dbsentry: EXECUTE p2: no statement of that name was prepared through dbsentry in this session"
    with connect(mysql_proxy, "dev") as conn, conn.cursor() as cur:  # off: the server refuses the second
        with pytest.raises(pymysql.err.ProgrammingError) as perr:
            cur.execute("SELECT 1; SELECT 2")
        assert perr.value.args[0] == 1064
        cur.execute("SELECT 5")
        assert cur.fetchone() == (5,)


@pytest.mark.skipif(shutil.which("mariadb") is None, reason="the mariadb command-line client is not installed")
def test_ctrl_c_in_the_mariadb_client_cancels_sleep(mysql_proxy: MySQLProxy) -> None:
    with mariadb_cli(mysql_proxy.port, ALICE, mysql_proxy.token(), "prod") as cli:
        seconds, out = cli.ctrl_c_a_sleep()
        assert seconds < 1.0, out
        assert b"query killed" in out and b"ERROR 1317" in out


def test_a_client_leaving_mid_statement_kills_it_upstream(mysql_proxy: MySQLProxy) -> None:
    marker = f"leave_{time.time_ns()}"
    conn = connect(mysql_proxy)
    conn._sock.settimeout(0.3)  # type: ignore[attr-defined]
    with pytest.raises(pymysql.err.OperationalError), conn.cursor() as cur:
        cur.execute(f"SELECT SLEEP(30) AS `{marker}`")
    conn._force_close()  # type: ignore[attr-defined]
    running = -1
    with pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test") as direct, direct.cursor() as cur:
        deadline = time.monotonic() + 3
        while running != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE %s AND info NOT LIKE %s",
                (f"%{marker}%", "%processlist%"),
            )
            running = cur.fetchone()[0]
    assert running == 0  # killed, not left running for 30 s


def test_statement_needing_approval_fails_with_how_to_then_runs_once_approved(mysql_proxy: MySQLProxy) -> None:
    import re

    name = f"dbs_proxy_appr_{time.time_ns() % 10**9}"
    sql = f"CREATE TABLE {name} (id INT)"
    with connect(mysql_proxy, "prod") as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute(sql)
        code, message = err.value.args
        assert code == 1227 and message.startswith("dbsentry: ") and "(baseline.prod.ddl-approval)" in message
        assert "send the same statement again; it runs once" in message
        found = re.search(r"Approval request (apr_\w+) is pending review by dba", message)
        assert found is not None, message
        reviewer = mysql_proxy.token("dana@example.com", ("dba",))
        dbsentry_cli("approvals", "approve", found.group(1), "--token", reviewer, "--comment", "ok", config=mysql_proxy.proxy.config_path)
        cur.execute(sql)  # approved: runs once
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute(f"DROP TABLE IF EXISTS {name}")  # prod: a DROP is denied outright
    with connect(mysql_proxy, "dev") as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE {name}")
    out = dbsentry_cli("audit", "search", "--connection", "prod", "--json", config=mysql_proxy.proxy.config_path)
    approved = [json.loads(line) for line in out.stdout.splitlines() if name in line and '"approved"' in line]
    assert approved and approved[0]["approval_id"] == found.group(1) and approved[0]["engine"] == "mysql"


def test_upstream_tls_verify_full_and_caching_sha2_full_authentication(mysql_proxy: MySQLProxy) -> None:
    """The proxy as the upstream of its own connection "chain": the login upstream goes
    over TLS (verify-full) and answers caching_sha2_password's full authentication."""
    with connect(mysql_proxy, "chain") as conn, conn.cursor() as cur:
        cur.execute("SELECT 6 * 7, DATABASE()")
        assert cur.fetchone() == (42, "test")


def test_agents_are_read_only_in_production(mysql_proxy: MySQLProxy, table: str) -> None:
    token = mysql_proxy.token("bot@example.com", (), agent=True)
    with connect(mysql_proxy, "prod", user="bot@example.com", password=token) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM dbs_proxy_t")
        assert cur.fetchone()[0] >= 2
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute("UPDATE dbs_proxy_t SET v = 'x' WHERE id = 1")
        assert err.value.args[0] == 1227 and err.value.args[1].startswith("dbsentry:") and "agent" in err.value.args[1]
        # and the server itself holds the session read-only (defence in depth)
        cur.execute("SELECT @@tx_read_only")
        assert cur.fetchone() == (1,)
        conn.ping()
        with pytest.raises(pymysql.err.OperationalError) as err:
            cur.execute("SET SESSION TRANSACTION READ WRITE")
        assert "baseline.prod.agent-read-write" in err.value.args[1]

"""What drivers' own test suites check, through a running dbsentry: client encodings,
PostgreSQL's own syntax errors, notification pids, and refusals that leave a plain trail in
the server's log.  Each test compares with a direct connection where that is the contract."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors, pq

from support.audit import psql, search
from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config
from support.tcpproxy import TcpForwarder

pytestmark = pytest.mark.e2e

TEXT = "café € Ÿ"  # € and Ÿ exist in LATIN9, not in LATIN1


@pytest.fixture
def staging(proxy: RunningProxy) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as c:
        yield c


@pytest.fixture
def direct(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        yield c


# ---------------------------------------------------------------------------------------
# client encodings


@pytest.mark.parametrize("encoding", ["LATIN9", "WIN1252", "UTF8"])
def test_text_round_trips_in_the_client_encoding(proxy: RunningProxy, encoding: str) -> None:
    text = TEXT if encoding != "WIN1252" else "café € Ÿ š"
    with psycopg.connect(proxy.dsn(dbname="staging", client_encoding=encoding), autocommit=True) as c:
        assert c.execute("show client_encoding").fetchone() == (encoding,)
        # simple protocol (literal in the text), extended (a parameter), and a name
        assert c.execute(f"select '{text}'::text", prepare=False).fetchone() == (text,)
        cur = c.cursor()
        cur.execute(f"select '{text}' as \"{text}\"")
        assert cur.fetchone() == (text,)
        assert cur.description is not None and cur.description[0].name == text
        assert c.execute("select %s::text", (text,)).fetchone() == (text,)
        assert c.execute("select %s::text", (text,), prepare=True).fetchone() == (text,)


def test_set_client_encoding_and_names_are_followed(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as c:
        for how, encoding in (("set client_encoding to 'LATIN9'", "LATIN9"), ("set names 'WIN1251'", "WIN1251"), ("reset client_encoding", "UTF8")):
            c.execute(how)
            text = {"LATIN9": TEXT, "WIN1251": "привет", "UTF8": "日本語 ✓"}[encoding]
            assert c.execute(f"select '{text}'").fetchone() == (text,), encoding
        # a SET rolled back restores the encoding, and the proxy follows the server
        c.execute("begin")
        c.execute("set client_encoding to 'LATIN1'")
        assert c.execute("select 'é'").fetchone() == ("é",)
        c.execute("rollback")
        assert c.execute("show client_encoding").fetchone() == ("UTF8",)
        assert c.execute("select '日本'").fetchone() == ("日本",)


def test_error_messages_in_the_client_encoding(proxy: RunningProxy, direct: psycopg.Connection[Any]) -> None:
    # psycopg's test_error_message_encoding: a server error naming a non-ASCII identifier.
    messages = []
    for conn_dsn in (proxy.dsn(dbname="staging", client_encoding="LATIN9"), None):
        with psycopg.connect(conn_dsn or direct.info.dsn, client_encoding="LATIN9", autocommit=True) as c:
            with pytest.raises(errors.UndefinedColumn) as info:
                c.execute('select "€ colonne" from (select 1) as t')
            messages.append(str(info.value.diag.message_primary))
            assert c.execute("select 1").fetchone() == (1,)
    assert messages[0] == messages[1] == 'column "€ colonne" does not exist'


@pytest.mark.parametrize("encoding", ["SJIS", "BIG5", "GBK"])
def test_multibyte_second_bytes_that_look_like_quotes_and_backslashes(proxy: RunningProxy, encoding: str) -> None:
    # "ソ" is 0x83 0x5C in SJIS: its second byte is a backslash.  Read byte by byte (or as
    # UTF-8), E'ソ' would escape its closing quote; the server sees one character.
    text = {"SJIS": "ソ表能", "BIG5": "功許蓋", "GBK": "乗縗"}[encoding]
    pycodec = {"SJIS": "cp932", "BIG5": "cp950", "GBK": "gbk"}[encoding]
    assert any(b == 0x5C for b in text.encode(pycodec))
    with psycopg.connect(proxy.dsn(dbname="staging", client_encoding=encoding), autocommit=True) as c:
        assert c.execute(f"select E'{text}', '{text}'").fetchone() == (text, text)
        assert c.execute(f"select E'{text}' || 'x' as \"{text}\"").fetchone() == (text + "x",)


def test_sjis_trail_byte_cannot_smuggle_a_statement(proxy: RunningProxy) -> None:
    # Bytes that a reader in the wrong encoding would split into two statements, the second
    # a DROP: the proxy reads them as the server does, so its judgement is the server's.
    with psycopg.connect(proxy.dsn(dbname="prod", client_encoding="SJIS"), autocommit=True) as c:
        name = f"t_enc_{uuid.uuid4().hex[:8]}"
        sql = f"select E'ソ'; drop table {name}"
        with pytest.raises(errors.InsufficientPrivilege, match="dbsentry"):
            c.execute(sql)
        assert c.execute("select 'ok'").fetchone() == ("ok",)


def test_invalid_bytes_get_22021_and_the_session_goes_on(proxy: RunningProxy, direct: psycopg.Connection[Any]) -> None:
    bad = b"select '\xff\xfe'"
    got = []
    for dsn in (proxy.dsn(dbname="staging"), direct.info.dsn):
        conn = pq.PGconn.connect(dsn.encode())
        assert conn.status == pq.ConnStatus.OK, conn.error_message
        try:
            res = conn.exec_(bad)
            got.append((res.error_field(pq.DiagnosticField.SQLSTATE), res.error_field(pq.DiagnosticField.MESSAGE_PRIMARY)))
            assert conn.exec_(b"select 1").status == pq.ExecStatus.TUPLES_OK
        finally:
            conn.finish()
    assert got[0] == got[1] == (b"22021", b'invalid byte sequence for encoding "UTF8": 0xff')


def test_pipelined_text_after_an_encoding_change(proxy: RunningProxy) -> None:
    # Sent before the server has answered a SET client_encoding: text that reads as the
    # same statement in every encoding goes (the server reads it in the new one), text that
    # would be another statement is refused (test_enc_attacks.py has the dangerous ones).
    with psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as c:
        with c.pipeline():
            c.execute("set client_encoding to 'LATIN9'")
            ascii_ = c.execute("select 'ascii'")
            same = c.execute("select 'é'")  # UTF-8 bytes, read by the server as LATIN9
        assert ascii_.fetchone() == ("ascii",)
        assert same.fetchone() is not None  # ran (what psycopg decodes it as is its business)
        with pytest.raises(errors.ObjectNotInPrerequisiteState, match="reads differently in another client encoding"), c.pipeline():
            c.execute("set client_encoding to 'UTF8'")
            c.execute("select * from \"€\"")  # a name: another table in another encoding
        assert c.execute("select 'é'").fetchone() == ("é",)


# ---------------------------------------------------------------------------------------
# syntax errors: PostgreSQL's answer, never forwarded


SYNTAX_ERRORS = [
    "SELEC 1",
    "select * form t",
    "select 'ééé' form t",
    "select 1; select * from",
    "select 'abc",
    "select 1abc",
]


@pytest.mark.parametrize("sql", SYNTAX_ERRORS)
@pytest.mark.parametrize("prepare", [False, True])
def test_syntax_error_is_postgresqls_own(staging: psycopg.Connection[Any], direct: psycopg.Connection[Any], sql: str, prepare: bool) -> None:
    got = []
    for c in (staging, direct):
        with pytest.raises(errors.SyntaxError) as info:
            c.execute(sql, prepare=prepare)
        diag = info.value.diag
        got.append((diag.sqlstate, diag.message_primary, diag.statement_position))
        assert c.execute("select 1").fetchone() == (1,)
    assert got[0] == got[1]
    assert info.value.diag.message_hint is None
    with pytest.raises(errors.SyntaxError) as ours:
        staging.execute(sql, prepare=prepare)
    assert ours.value.diag.message_hint == "dbsentry: the statement was not sent to the database"


def test_syntax_error_in_a_transaction_fails_it_as_postgresql_does(staging: psycopg.Connection[Any]) -> None:
    staging.execute("begin")
    with pytest.raises(errors.SyntaxError):
        staging.execute("selec 1")
    assert staging.info.transaction_status == pq.TransactionStatus.INERROR
    staging.execute("rollback")
    assert staging.execute("select 1").fetchone() == (1,)


def test_psql_shows_the_caret(proxy: RunningProxy, pg_server: PgServer) -> None:
    ours = psql(proxy.dsn(dbname="staging"), "-c", "select * form t")
    theirs = psql(pg_server.conninfo, "-c", "select * form t")
    assert ours.returncode == theirs.returncode == 1
    assert "LINE 1: select * form t" in ours.stderr
    ours_lines = [line for line in ours.stderr.splitlines() if not line.startswith("HINT")]
    assert ours_lines == theirs.stderr.splitlines()


def test_syntax_error_is_audited_as_refused(proxy: RunningProxy) -> None:
    marker = f"selec_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as c, pytest.raises(errors.SyntaxError):
        c.execute(f"{marker} 1")
    records = [r for r in search(proxy.config_path) if marker in (r.get("statement") or "")]
    assert [(r["decision"], r["rules"]) for r in records] == [("deny", ["baseline.unparsable"])]


# ---------------------------------------------------------------------------------------
# what the server sees of a refusal


@pytest.fixture
def recorded(pg_server: PgServer, tmp_path: Any) -> Iterator[tuple[RunningProxy, TcpForwarder]]:
    with TcpForwarder(pg_server.host, pg_server.port, record=True) as fwd:
        conns = {"wire": {"host": fwd.host, "port": fwd.port, "database": pg_server.dbname, "user": pg_server.user, "environment": "production"}}
        with run_proxy(write_config(tmp_path, pg_server, connections=conns)) as running:
            yield running, fwd


def test_refusals_reach_the_server_as_a_plain_marker(recorded: tuple[RunningProxy, TcpForwarder]) -> None:
    proxy, fwd = recorded
    with psycopg.connect(proxy.dsn(dbname="wire"), autocommit=True) as c:
        with pytest.raises(errors.InsufficientPrivilege):
            c.execute("drop table if exists t_never_dropped")  # simple protocol
        with pytest.raises(errors.InsufficientPrivilege), c.pipeline():
            c.execute("select 1")
            c.execute("drop table if exists t_never_dropped", prepare=True)  # extended
        with pytest.raises(errors.SyntaxError):
            c.execute("selec 1")
        assert c.execute("select 'after'").fetchone() == ("after",)
    sent = bytes(fwd.sent)
    assert b"t_never_dropped" not in sent and b"selec 1" not in sent
    assert sent.count(b"'dbsentry refused statement ") == 3
    assert b'FROM "dbsentry' not in sent  # no relation names in the server's log


# ---------------------------------------------------------------------------------------
# notifications


def test_notifications_name_the_pids_clients_know(proxy: RunningProxy, direct: psycopg.Connection[Any]) -> None:
    channel = f"ch_{uuid.uuid4().hex[:8]}"
    with (
        psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as listener,
        psycopg.connect(proxy.dsn("bob@example.com", dbname="staging"), autocommit=True) as other,
    ):
        listener.execute(f"listen {channel}")
        listener.execute(f"notify {channel}, 'self'")  # psycopg's test_notify_self
        other.execute(f"notify {channel}, 'other'")
        direct.execute(f"notify {channel}, 'direct'")
        got = {n.payload: n.pid for n in listener.notifies(timeout=5, stop_after=3)}
        assert got == {
            "self": listener.info.backend_pid,
            "other": other.info.backend_pid,
            # A backend dbsentry does not front keeps its real pid (it has no other).
            "direct": direct.info.backend_pid,
        }


def test_notification_while_idle_reaches_the_client(proxy: RunningProxy) -> None:
    channel = f"ch_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as listener:
        listener.execute(f"listen {channel}")
        pid = listener.info.backend_pid

        def send() -> None:
            with psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as s:
                s.execute(f"notify {channel}, 'x'")

        t = threading.Thread(target=send)
        t.start()
        got = list(listener.notifies(timeout=5, stop_after=1))
        t.join()
    assert len(got) == 1 and got[0].pid != pid and got[0].payload == "x"


# ---------------------------------------------------------------------------------------
# masking in the client's encoding

PEOPLE = [
    # (email, name, note with an email and a card number, card)
    ("josé.müller@exämple.com", "José Müller", "écrire à josé.müller@exämple.com, carte 4539 1488 0343 6467", "4539 1488 0343 6467"),
    ("zoë@example.com", "Zoë Ÿves", "€ reçu de zoë@example.com", "5555 5555 5555 4444"),
]


@pytest.fixture(scope="module")
def masked_people(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningProxy, str]]:
    table = f"people_enc_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        c.execute(f"create table {table} (id int primary key, email text, full_name text, note text, card text)")
        for i, row in enumerate(PEOPLE):
            c.execute(f"insert into {table} values (%s, %s, %s, %s, %s)", (i, *row))
    try:
        with run_proxy(write_config(tmp_path_factory.mktemp("enc"), pg_server)) as running:
            yield running, table
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
            c.execute(f"drop table {table}")


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("encoding", ["LATIN9", "WIN1252"])
def test_masking_is_the_same_in_every_client_encoding(masked_people: tuple[RunningProxy, str], encoding: str, binary: bool) -> None:
    proxy, table = masked_people
    results = {}
    for enc in ("UTF8", encoding):
        with psycopg.connect(proxy.dsn("eve@example.com", dbname="staging", client_encoding=enc), autocommit=True) as c:
            cur = c.cursor(binary=binary)
            results[enc] = cur.execute(f"select email, full_name, note, card from {table} order by id").fetchall()
            copied = []
            with cur.copy(f"copy (select email, note from {table} order by id) to stdout") as copy:
                copied.extend(copy.rows())
            results[enc + "-copy"] = copied
    assert results["UTF8"] == results[encoding]
    assert results["UTF8-copy"] == results[encoding + "-copy"]
    flat = repr(results)
    for email, _name, _note, card in PEOPLE:
        assert email not in flat and card not in flat

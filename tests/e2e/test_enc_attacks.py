"""Attacks on the proxy's reading of client encodings (see docs/security.md, "Client
encodings"): each test asserts the secure behaviour; a failing test is a working attack."""

from __future__ import annotations

import socket
import ssl
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from support.pg import PgServer
from support.proxy import RunningProxy

pytestmark = pytest.mark.e2e

SSL_REQUEST = struct.pack("!II", 8, 80877103)
# UTF-8 "ぁ" (E3 81 81): valid UTF-8; read as SJIS it is [E3 81][81 5C] when a backslash
# follows, so E'ぁ\' ends the string for a server reading SJIS, not for a UTF-8 reader.
HIRAGANA_A = "\u3041".encode()


def typed(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def query(sql: bytes | str) -> bytes:
    return typed(b"Q", (sql.encode() if isinstance(sql, str) else sql) + b"\0")


def fields(body: bytes) -> dict[str, bytes]:
    return {chr(p[0]): p[1:] for p in body.rstrip(b"\0").split(b"\0") if p}


class Raw:
    """A hand-driven client over TLS: sends whole pipelines in one write."""

    def __init__(self, proxy: RunningProxy, identity: str = "alice@example.com", dbname: str = "prod", groups: tuple[str, ...] = ("eng",), **params: str) -> None:
        sock = socket.create_connection((proxy.host, proxy.port), timeout=10)
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(sock)
        self.buf = b""
        token = proxy.token(identity, groups)
        body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in {"user": identity, "database": dbname, **params}.items()) + b"\0"
        self.sock.sendall(struct.pack("!II", len(body) + 8, 196608) + body)
        t, b = self.read()
        assert t == b"R", (t, b)
        self.sock.sendall(typed(b"p", token.encode() + b"\0"))
        self.read_until_ready()

    def close(self) -> None:
        try:
            self.sock.sendall(typed(b"X", b""))
        finally:
            self.sock.close()

    def read(self) -> tuple[bytes, bytes]:
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack("!I", self.buf[1:5])[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        (n,) = struct.unpack("!I", self.buf[1:5])
        t, body, self.buf = self.buf[:1], self.buf[5 : 1 + n], self.buf[1 + n :]
        return t, body

    def read_until_ready(self, count: int = 1) -> list[tuple[bytes, bytes]]:
        out = []
        while count:
            t, b = self.read()
            if t == b"E":
                b = fields(b)  # type: ignore[assignment]
            out.append((t, b))
            if t == b"Z":
                count -= 1
        return out

    def run(self, *sqls: bytes | str) -> list[tuple[bytes, bytes]]:
        """Send the queries in one write (pipelined) and read all their answers."""
        self.sock.sendall(b"".join(query(s) for s in sqls))
        return self.read_until_ready(len(sqls))


def errors_of(msgs: list[tuple[bytes, Any]]) -> list[dict[str, bytes]]:
    return [b for t, b in msgs if t == b"E"]


@pytest.fixture
def direct(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as c:
        yield c


@pytest.fixture
def victim(direct: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"enc_victim_{uuid.uuid4().hex[:8]}"
    direct.execute(f"create table {name} (id int)")
    direct.execute(f"insert into {name} values (1), (2)")
    yield name
    direct.execute(f"drop table if exists {name}")


def exists(direct: psycopg.Connection[Any], table: str) -> bool:
    return direct.execute("select to_regclass(%s) is not null", (table,)).fetchone() == (True,)


def smuggled_drop(table: str) -> bytes:
    # UTF-8 reader: one SELECT of a string.  SJIS reader: SELECT E'<kanji><fullwidth \>'; DROP TABLE ...
    return b"SELECT E'" + HIRAGANA_A + b"\\'; DROP TABLE " + table.encode() + b"; --'"




def parse_msg(name: str, sql: str) -> bytes:
    return typed(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!H", 0))


def bind_msg(portal: str, stmt: str) -> bytes:
    return typed(b"B", portal.encode() + b"\0" + stmt.encode() + b"\0" + struct.pack("!HHH", 0, 0, 0))


def execute_msg(portal: str, rows: int = 0) -> bytes:
    return typed(b"E", portal.encode() + b"\0" + struct.pack("!I", rows))


SYNC = typed(b"S", b"")
SECRET_EMAIL = "alice.secret@example.com"
SECRET_CARD = "4539 1488 0343 6467"


@pytest.fixture
def people(direct: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"people_encx_{uuid.uuid4().hex[:8]}"
    direct.execute(f"create table {name} (id int primary key, email text, full_name text, card text)")
    direct.execute(f"insert into {name} values (1, %s, 'Alice Secret', %s)", (SECRET_EMAIL, SECRET_CARD))
    yield name
    direct.execute(f"drop table if exists {name}")


def smuggled_select(table: str) -> bytes:
    # UTF-8 reader: SELECT of one string constant.  SJIS reader: SELECT '<kanji><fullwidth backslash>' AS a, email, card FROM table
    return b"SELECT E'" + HIRAGANA_A + b"\\' AS a, email, card FROM " + table.encode() + b" --'"


def via_staging(proxy: RunningProxy, sql: str) -> None:
    with psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as s:
        s.execute(sql)


# ---------------------------------------------------------------------------------------
# 1. client_encoding changed by a statement the proxy does not see as changing it: the
#    next pipelined Query is read as UTF-8 by the proxy, as SJIS by the server.


def test_smuggled_bytes_are_read_as_the_server_reads_them(proxy: RunningProxy, direct: psycopg.Connection[Any], victim: str) -> None:
    # Control: in a session known to be SJIS the same bytes are two statements, the DROP refused.
    c = Raw(proxy, dbname="prod", client_encoding="SJIS")
    out = c.run(smuggled_drop(victim))
    c.close()
    assert errors_of(out) and errors_of(out)[0]["C"] == b"42501"
    assert exists(direct, victim)


def test_fetch_from_a_cursor_that_calls_set_config(proxy: RunningProxy, direct: psycopg.Connection[Any], victim: str) -> None:
    # DECLARE is judged (set_config is seen) but runs nothing; FETCH runs set_config and is
    # not seen as changing the encoding, so the pipelined Query is read in UTF-8 while the
    # server reads it in SJIS: the DROP runs in production.
    c = Raw(proxy, dbname="prod")
    c.run("BEGIN", "DECLARE enc_c CURSOR FOR SELECT set_config('client_encoding', 'SJIS', false)")
    out = c.run("FETCH enc_c", smuggled_drop(victim))
    c.run("COMMIT")
    c.close()
    assert (b"C", b"DROP TABLE\0") not in out
    assert exists(direct, victim)


def test_move_on_a_cursor_that_calls_set_config(proxy: RunningProxy, direct: psycopg.Connection[Any], victim: str) -> None:
    c = Raw(proxy, dbname="prod")
    c.run("BEGIN", "DECLARE enc_c CURSOR FOR SELECT set_config('client_encoding', 'SJIS', false)")
    out = c.run("MOVE enc_c", smuggled_drop(victim))
    c.run("COMMIT")
    c.close()
    assert (b"C", b"DROP TABLE\0") not in out
    assert exists(direct, victim)


def test_execute_of_a_portal_bound_in_an_earlier_cycle(proxy: RunningProxy, direct: psycopg.Connection[Any], victim: str) -> None:
    # In a transaction a named portal outlives its Sync: the Bind was noted (its cycle ended,
    # nothing ran); the Execute that runs set_config later is not.
    c = Raw(proxy, dbname="prod")
    c.run("BEGIN")
    c.sock.sendall(parse_msg("s_enc", "SELECT set_config('client_encoding', 'SJIS', false)") + bind_msg("p_enc", "s_enc") + SYNC)
    c.read_until_ready()
    c.sock.sendall(execute_msg("p_enc") + SYNC + query(smuggled_drop(victim)))
    out = c.read_until_ready(2)
    c.run("COMMIT")
    c.close()
    assert (b"C", b"DROP TABLE\0") not in out
    assert exists(direct, victim)


HIDDEN = {
    # works on main: the catalog vouches for these, yet they call set_config
    "view": ("create view enc_s_{u}.v as select set_config('client_encoding','SJIS',false) as x", "SELECT * FROM enc_s_{u}.v"),
    "domain_check": (
        "create function enc_s_{u}.f(text) returns bool immutable language sql as $$select set_config('client_encoding','SJIS',false) is not null$$;"
        " create domain enc_s_{u}.d as text check (enc_s_{u}.f(value))",
        "SELECT 'a'::enc_s_{u}.d",
    ),
    "operator": (
        "create function enc_s_{u}.f(int, int) returns int immutable language sql as $$select length(set_config('client_encoding','SJIS',false)) + $1 + $2$$;"
        " create operator enc_s_{u}.### (function = enc_s_{u}.f, leftarg = int, rightarg = int)",
        "SELECT 1 OPERATOR(enc_s_{u}.###) 2",
    ),
    # blocked on main (user function calls run under the row guard, which holds the rest)
    "stable_plpgsql_function": (
        "create function enc_s_{u}.f() returns text stable language plpgsql as $$begin return set_config('client_encoding','SJIS',false); end$$",
        "SELECT enc_s_{u}.f()",
    ),
    "immutable_sql_function": (
        "create function enc_s_{u}.f() returns text immutable language sql as $$select set_config('client_encoding','SJIS',false)$$",
        "SELECT enc_s_{u}.f()",
    ),
    "column_default": (
        "create function enc_s_{u}.f() returns text language sql as $$select set_config('client_encoding','SJIS',false)$$;"
        " create table enc_s_{u}.t (id int, x text default enc_s_{u}.f())",
        "INSERT INTO enc_s_{u}.t (id) VALUES (1)",
    ),
    "trigger": (
        "create table enc_s_{u}.t (id int); create function enc_s_{u}.f() returns trigger language plpgsql as"
        " $$begin perform set_config('client_encoding','SJIS',false); return new; end$$;"
        " create trigger tr before insert on enc_s_{u}.t for each row execute function enc_s_{u}.f()",
        "INSERT INTO enc_s_{u}.t (id) VALUES (1)",
    ),
    "update_pg_settings": ("select 1", "UPDATE pg_settings SET setting = 'SJIS' WHERE name = 'client_encoding'"),
}


@pytest.mark.parametrize("kind", list(HIDDEN))
def test_encoding_changed_by_code_the_statement_does_not_show(proxy: RunningProxy, direct: psycopg.Connection[Any], victim: str, kind: str) -> None:
    u = uuid.uuid4().hex[:8]
    setup, changer = (s.format(u=u) for s in HIDDEN[kind])
    via_staging(proxy, f"create schema enc_s_{u}; {setup}")  # objects made earlier, where DDL is allowed
    try:
        c = Raw(proxy, dbname="prod")
        out = c.run(changer, smuggled_drop(victim))
        c.close()
    finally:
        direct.execute(f"drop schema enc_s_{u} cascade")
    assert (b"C", b"DROP TABLE\0") not in out, kind
    assert exists(direct, victim), kind


def test_masking_bypassed_by_an_unnoticed_encoding_change(proxy: RunningProxy, people: str) -> None:
    # The proxy reads SELECT E'ぁ\' AS a, email, card FROM t --' as one string constant (no
    # masking plan); the server, now in SJIS, returns the real email and card.
    via_staging(proxy, f"create view enc_mv_{people} as select set_config('client_encoding','SJIS',false) as x")
    try:
        c = Raw(proxy, "eve@example.com", dbname="staging")
        out = c.run(f"SELECT * FROM enc_mv_{people}", smuggled_select(people))
        c.close()
    finally:
        via_staging(proxy, f"drop view enc_mv_{people}")
    assert SECRET_EMAIL.encode() not in repr(out).encode()
    assert SECRET_CARD.encode() not in repr(out).encode()


# ---------------------------------------------------------------------------------------
# 2. A masked value leaks through the server's conversion error in a non-UTF-8 session:
#    "character with byte sequence 0x.. 0x.. in encoding "UTF8" has no equivalent in
#    encoding "LATIN1"" names the bytes of the value; only the quoted names are redacted.


def test_untranslatable_character_of_a_masked_value_is_not_shown(proxy: RunningProxy, direct: psycopg.Connection[Any]) -> None:
    name = f"people_cyr_{uuid.uuid4().hex[:8]}"
    direct.execute(f"create table {name} (id int, full_name text)")
    direct.execute(f"insert into {name} values (1, 'Жанна Секретова')")
    try:
        c = Raw(proxy, "eve@example.com", dbname="staging", client_encoding="LATIN1")
        out = c.run(f"SELECT full_name FROM {name}")
        c.close()
        msg = errors_of(out)[0]["M"]
        assert b"0xd0 0x96" not in msg, msg  # Ж, the first letter of the masked name
    finally:
        direct.execute(f"drop table {name}")


def test_masked_value_exfiltrated_through_conversion_errors(proxy: RunningProxy, people: str) -> None:
    # chr(ascii(substr(email, k, 1)) + 1024) is masked as an output value, but LATIN1 has no
    # Cyrillic: the server's error names the character's bytes, one query per character.
    c = Raw(proxy, "eve@example.com", dbname="staging", client_encoding="LATIN1")
    got = ""
    for k in range(1, len(SECRET_EMAIL) + 2):
        errs = errors_of(c.run(f"SELECT chr(ascii(substr(email, {k}, 1)) + 1024) AS x FROM {people}"))
        if not errs or b"byte sequence 0x" not in errs[0]["M"]:
            break
        hexes = errs[0]["M"].decode().split("byte sequence ")[1].split(" in ")[0].split()
        code = ord(bytes(int(h, 16) for h in hexes).decode()) - 1024
        if code == 0:
            break
        got += chr(code)
    c.close()
    assert got != SECRET_EMAIL


# ---------------------------------------------------------------------------------------
# 3. Blocked: regressions.


@pytest.mark.parametrize("how", ["client_encoding", "options"])
def test_startup_encoding_is_known_from_the_first_statement(proxy: RunningProxy, direct: psycopg.Connection[Any], victim: str, how: str) -> None:
    params = {"client_encoding": "SJIS"} if how == "client_encoding" else {"options": "-c client_encoding=SJIS"}
    for _ in range(2):  # the second login may be greeted without an upstream (lazy)
        c = Raw(proxy, dbname="prod", **params)
        out = c.run(smuggled_drop(victim))
        c.close()
        assert errors_of(out)[0]["C"] == b"42501"
    assert exists(direct, victim)


@pytest.mark.parametrize(
    "changer",
    [
        "SET client_encoding TO 'SJIS'",
        "SET NAMES 'SJIS'",
        "SET SESSION client_encoding = 'SJIS'",
        "SELECT pg_catalog.set_config('client_encoding', 'SJIS', false)",
        "SELECT * FROM ROWS FROM (set_config('client_encoding', 'SJIS', false))",
    ],
)
def test_pipelined_text_refused_while_the_encoding_changes(proxy: RunningProxy, direct: psycopg.Connection[Any], victim: str, changer: str) -> None:
    c = Raw(proxy, dbname="staging")
    out = c.run(changer, smuggled_drop(victim))
    c.close()
    assert errors_of(out)[-1]["C"] == b"55000"
    assert exists(direct, victim)


def test_rollback_after_set_in_a_transaction(proxy: RunningProxy, direct: psycopg.Connection[Any], victim: str) -> None:
    c = Raw(proxy, dbname="prod", client_encoding="SJIS")
    c.run("BEGIN", "SET client_encoding TO 'UTF8'")
    out = c.run("ROLLBACK", smuggled_drop(victim))  # back to SJIS: the bytes are two statements
    c.close()
    assert errors_of(out)[-1]["C"] == b"55000"
    assert exists(direct, victim)


def test_syntax_error_runs_nothing_of_the_string(proxy: RunningProxy, direct: psycopg.Connection[Any], victim: str) -> None:
    c = Raw(proxy, dbname="staging")
    out = c.run(f"DELETE FROM {victim} WHERE id = 1; SELEC 1")
    c.close()
    err = errors_of(out)[0]
    assert err["C"] == b"42601" and err["P"]
    assert direct.execute(f"select count(*) from {victim}").fetchone() == (2,)


def test_marker_text_from_the_client_is_not_taken_for_a_refusal(proxy: RunningProxy) -> None:
    c = Raw(proxy, dbname="prod")
    out = c.run("DROP TABLE enc_nope", "SELECT 'dbsentry refused statement 00000000-1'::pg_catalog.int4", "SELECT 'dbsentry refused statement '::int4")
    c.close()
    errs = errors_of(out)
    assert [e["C"] for e in errs] == [b"42501", b"22P02", b"22P02"]
    assert b"invalid input syntax" in errs[1]["M"]

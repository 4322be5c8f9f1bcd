"""Attack round on MySQL/MariaDB statement outcomes and COM_CHANGE_USER (commit 3d78d54).

The promises: a CALL's result sets do not complete it, its own final OK or ERR does, and
every other statement is completed by its own answer (docs/audit.md, Guarantees); commands
pipelined behind COM_CHANGE_USER wait for the new login and run as the new identity, under
its policy; a refused token ends the session and nothing pipelined behind it runs
(docs/mysql.md).

Each probe writes unique markers through the proxy, reads directly what MariaDB stored, and
compares that with the statement records and their completions.  Probes that found a hole
were ``xfail(strict=True)`` asserting the secure behaviour until fixed (marked ``FINDING,
fixed``); the others are plain tests.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from test_mysql_audit_completeness_attack import (  # type: ignore[import-not-found]
    ALICE,
    LONGLONG,
    VAR_STRING,
    Env,
    Raw,
    Trail,
    complete,
    executed,
    lenenc_str,
    marker,
    trail,
)

from dbsentry.engines.mysql.wire import commands as w
from dbsentry.engines.mysql.wire import constants as c
from dbsentry.engines.mysql.wire.packets import encode_packet
from support.mysql import root_connect, run_mysql_proxy, server_reason

_REASON = server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

BOB = "bob@example.com"
BOT = "bot@example.com"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = uuid.uuid4().hex[:8]
    t = f"oam_marks_{s}"
    procs = {
        f"oam_two_{s}": f"(IN v VARCHAR(100)) BEGIN SELECT 1; SELECT 2 UNION SELECT 3; INSERT INTO {t} (tag) VALUES (v); END",
        f"oam_err_{s}": f"(IN v VARCHAR(100)) BEGIN SELECT 1; INSERT INTO {t} (tag) VALUES (v); SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'oam boom'; END",
        f"oam_out_{s}": f"(IN v VARCHAR(100), OUT o INT) BEGIN INSERT INTO {t} (tag) VALUES (v); SELECT 5 INTO o; END",
        f"oam_outsel_{s}": f"(IN v VARCHAR(100), OUT o INT) BEGIN SELECT 1; INSERT INTO {t} (tag) VALUES (v); SELECT 6 INTO o; END",
        f"oam_outer_{s}": f"(IN v VARCHAR(100)) BEGIN CALL oam_two_{s}(v); SELECT 4; END",
        f"oam_noset_{s}": f"(IN v VARCHAR(100)) BEGIN INSERT INTO {t} (tag) VALUES (v); END",
    }
    with root_connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {t} (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(200))")
        for name, body in procs.items():
            cur.execute(f"CREATE PROCEDURE {name}{body}")
    try:
        extra = {"approvals": {"modes": [{"connections": ["prod"], "mode": "fail"}]}}
        with run_mysql_proxy(tmp_path_factory.mktemp("mysql-outcome-attack"), extra=extra) as mp:
            yield Env(mp, t, s)
    finally:
        with root_connect() as conn, conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {t}")
            for name in procs:
                cur.execute(f"DROP PROCEDURE IF EXISTS {name}")


def ins(env: Env, tag: str) -> str:
    return f"INSERT INTO {env.t} (tag) VALUES ('{tag}')"


def by_tag(
    got: Trail, tags: list[str]
) -> dict[str, list[tuple[dict[str, Any], dict[str, Any] | None]]]:
    """For each tag, the records whose statement or parameters hold it exactly (quoted), with
    their completions."""
    out: dict[str, list[tuple[dict[str, Any], dict[str, Any] | None]]] = {}
    for tag in tags:
        out[tag] = [
            (s, got.completions.get(s["id"]))
            for s in got.statements
            if f"'{tag}'" in (s.get("statement") or "") or tag in (s.get("params") or ())
        ]
    return out


def is_ok(done: dict[str, Any] | None) -> bool:
    return done is not None and done.get("error") is None and done.get("sqlstate") is None


def packets(*payloads: bytes) -> bytes:
    return b"".join(encode_packet(p, 0)[0] for p in payloads)


# ------------------------------------------------------------------ CALL through other commands


# FINDING, fixed: SQL EXECUTE of a prepared CALL: its command is EXECUTE, so each result set of
# the procedure completes a pending statement: the next statement of the string takes the
# procedure's second result set (ok) though it failed 42S02
def test_sql_execute_of_prepared_call_then_failing_statement(env: Env) -> None:
    m = marker()
    with Raw(env) as raw:
        assert raw.query(f"PREPARE oam_s FROM 'CALL oam_two_{env.s}(?)'")[0][0] == "ok"
        answers = raw.query(
            f"SET @v = '{m}a'; EXECUTE oam_s USING @v; INSERT INTO oam_no_such_{env.s} VALUES ('{m}b')"
        )
    assert answers[-1][0] == "err", answers
    assert executed(env, m) == [f"{m}a"]
    got = trail(env, m, complete(1))
    rec = [
        (s, got.completions.get(s["id"])) for s in got.statements if "oam_no_such" in s["statement"]
    ]
    assert len(rec) == 1 and rec[0][1] is not None and rec[0][1]["sqlstate"] == "42S02", rec


# FINDING, fixed: SQL EXECUTE of a prepared CALL then an INSERT in the same string: the INSERT's
# completion is a result set of the procedure (rows from a SELECT), the EXECUTE completed at its
# first result set
def test_sql_execute_of_prepared_call_then_insert_rows(env: Env) -> None:
    m = marker()
    with Raw(env) as raw:
        raw.query(f"PREPARE oam_s2 FROM 'CALL oam_two_{env.s}(?)'")
        answers = raw.query(
            f"SET @v = '{m}a'; EXECUTE oam_s2 USING @v; {ins(env, m + 'b')}; SELECT 1"
        )
    assert all(a[0] != "err" for a in answers), answers
    assert executed(env, m) == [f"{m}a", f"{m}b"]
    got = trail(env, m, complete(1))
    rec = by_tag(got, [f"{m}b"])[f"{m}b"]
    assert len(rec) == 1 and is_ok(rec[0][1]) and rec[0][1]["rows"] == 1, rec


# FINDING, fixed: EXECUTE IMMEDIATE 'CALL ...': as SQL EXECUTE, the procedure's result sets
# complete the following statements of the string
def test_execute_immediate_call_then_failing_statement(env: Env) -> None:
    m = marker()
    with Raw(env) as raw:
        answers = raw.query(
            f"EXECUTE IMMEDIATE 'CALL oam_two_{env.s}(''{m}a'')'; INSERT INTO oam_no_such_{env.s} VALUES ('{m}b')"
        )
    assert answers[-1][0] == "err", answers
    got = trail(env, m, complete(2))
    rec = [
        (s, got.completions.get(s["id"])) for s in got.statements if "oam_no_such" in s["statement"]
    ]
    assert len(rec) == 1 and rec[0][1] is not None and rec[0][1]["sqlstate"] == "42S02", rec


# FINDING, fixed: SQL EXECUTE of a prepared CALL whose procedure fails (SIGNAL 45000) after a
# result set: the EXECUTE is completed ok (rows 1) at the result set; the procedure's ERR
# completes nothing
def test_sql_execute_of_prepared_call_that_fails(env: Env) -> None:
    """EXECUTE of a prepared CALL whose procedure fails after a result set: the EXECUTE's
    completion must not say ok."""
    m = marker()
    with Raw(env) as raw:
        raw.query(f"PREPARE s_{m} FROM 'CALL oam_err_{env.s}(?)'")
        answers = raw.query(f"SET @v = '{m}'; EXECUTE s_{m} USING @v")
    assert answers[-1][0] == "err", answers
    assert executed(env, m) == [m]  # the procedure ran its INSERT, then failed (not a transaction)
    got = trail(env, m, complete(3))
    rec = [
        (s, got.completions.get(s["id"]))
        for s in got.statements
        if s["statement"].startswith("EXECUTE")
    ]
    assert len(rec) == 1 and rec[0][1] is not None and rec[0][1]["sqlstate"] == "45000", rec


def test_executable_comment_call(env: Env) -> None:
    """``/*!CALL p() */``: the server runs a CALL; its result sets must not complete the next
    statement of the string."""
    m = marker()
    with Raw(env) as raw:
        answers = raw.query(
            f"/*!CALL oam_two_{env.s}('{m}a') */; INSERT INTO oam_no_such_{env.s} VALUES ('{m}b')"
        )
    ran = executed(env, m)
    if not ran:
        assert answers[0][0] == "err", answers
        return  # refused (an executable comment is): nothing ran, nothing to attribute
    got = trail(
        env,
        m,
        lambda t: (
            bool(t.statements)
            and all(s["id"] in t.completions or s["decision"] == "deny" for s in t.statements)
        ),
    )
    rec = [
        (s, got.completions.get(s["id"])) for s in got.statements if "oam_no_such" in s["statement"]
    ]
    assert answers[-1][0] == "err", answers
    assert len(rec) == 1 and rec[0][1] is not None and rec[0][1]["sqlstate"] == "42S02", rec


# ------------------------------------------------------------------ CALL in strings and binary protocol


def test_call_failing_midway_between_statements(env: Env) -> None:
    m = marker()
    with Raw(env) as raw:
        answers = raw.query(
            f"{ins(env, m + 'a')}; CALL oam_err_{env.s}('{m}b'); {ins(env, m + 'c')}"
        )
    assert answers[0] == ("ok", 1) and answers[-1][0] == "err", answers
    assert executed(env, m) == [f"{m}a", f"{m}b"]
    got = trail(env, m, complete(3))
    recs = by_tag(got, [f"{m}a", f"{m}b", f"{m}c"])
    assert is_ok(recs[f"{m}a"][0][1]) and recs[f"{m}a"][0][1]["rows"] == 1, recs
    assert (recs[f"{m}b"][0][1] or {}).get("sqlstate") == "45000", recs
    assert "not executed" in ((recs[f"{m}c"][0][1] or {}).get("error") or ""), recs


def test_nested_call_then_failing_statement(env: Env) -> None:
    m = marker()
    with Raw(env) as raw:
        answers = raw.query(
            f"CALL oam_outer_{env.s}('{m}a'); INSERT INTO oam_no_such_{env.s} VALUES ('{m}b'); {ins(env, m + 'c')}"
        )
    assert answers[-1][0] == "err", answers
    assert executed(env, m) == [f"{m}a"]
    got = trail(env, m, complete(3))
    recs = by_tag(got, [f"{m}a", f"{m}b", f"{m}c"])
    assert is_ok(recs[f"{m}a"][0][1]), recs
    assert (recs[f"{m}b"][0][1] or {}).get("sqlstate") == "42S02", recs
    assert "not executed" in ((recs[f"{m}c"][0][1] or {}).get("error") or ""), recs


@pytest.mark.parametrize("proc", ["oam_out", "oam_outsel"])
def test_binary_call_with_out_parameter_then_statement(env: Env, proc: str) -> None:
    """COM_STMT_EXECUTE of ``CALL p(?, ?)`` with an OUT parameter (an extra result set of the
    OUT values), then a COM_QUERY that fails: each completes at its own answer."""
    m = marker()
    with Raw(env) as raw:
        ok = raw.prepare(f"CALL {proc}_{env.s}(?, ?)")
        body = (
            b"\x00"
            + b"\x01"
            + bytes((VAR_STRING, 0, LONGLONG, 0))
            + lenenc_str(m.encode())
            + (0).to_bytes(8, "little")
        )
        raw.send(
            b"\x17"
            + ok.statement_id.to_bytes(4, "little")
            + b"\x00"
            + (1).to_bytes(4, "little")
            + body
        )
        first = raw.answer(binary=True)
        second = raw.query(f"INSERT INTO oam_no_such_{env.s} VALUES ('{m}z')")
        third = raw.query(ins(env, m + "y"))
    assert all(a[0] != "err" for a in first), first
    assert second[0][0] == "err" and third == [("ok", 1)], (second, third)
    assert executed(env, m) == [m, f"{m}y"]
    got = trail(env, m, complete(3))
    call = [
        (s, got.completions.get(s["id"]))
        for s in got.statements
        if s["statement"].startswith("CALL")
    ]
    nosuch = [
        (s, got.completions.get(s["id"])) for s in got.statements if "oam_no_such" in s["statement"]
    ]
    last = by_tag(got, [f"{m}y"])[f"{m}y"]
    assert len(call) == 1 and is_ok(call[0][1]), call
    assert len(nosuch) == 1 and (nosuch[0][1] or {}).get("sqlstate") == "42S02", nosuch
    assert len(last) == 1 and is_ok(last[0][1]) and last[0][1]["rows"] == 1, last


def test_binary_call_with_cursor_flag(env: Env) -> None:
    """COM_STMT_EXECUTE of a CALL with CURSOR_TYPE_READ_ONLY, then a failing statement."""
    m = marker()
    with Raw(env) as raw:
        ok = raw.prepare(f"CALL oam_two_{env.s}(?)")
        body = b"\x00" + b"\x01" + bytes((VAR_STRING, 0)) + lenenc_str(m.encode())
        raw.send(
            b"\x17"
            + ok.statement_id.to_bytes(4, "little")
            + b"\x01"
            + (1).to_bytes(4, "little")
            + body
        )
        first = raw.answer(binary=True)
        second = raw.query(f"INSERT INTO oam_no_such_{env.s} VALUES ('{m}z')")
    assert second[0][0] == "err", (first, second)
    got = trail(env, m, complete(2))
    call = [
        (s, got.completions.get(s["id"]))
        for s in got.statements
        if s["statement"].startswith("CALL")
    ]
    nosuch = [
        (s, got.completions.get(s["id"])) for s in got.statements if "oam_no_such" in s["statement"]
    ]
    assert len(call) == 1 and call[0][1] is not None, call
    assert bool(executed(env, m)) == is_ok(call[0][1]), (executed(env, m), call)
    assert len(nosuch) == 1 and (nosuch[0][1] or {}).get("sqlstate") == "42S02", nosuch


# ------------------------------------------------------------------ COM_CHANGE_USER


def change_user(raw: Raw, user: str, auth: bytes, plugin: str, database: str = "dev") -> bytes:
    return w.encode_command(w.ChangeUser(user, auth, database, 45, plugin), raw.caps | c.CLIENT_SSL)


# FINDING, fixed: a command pipelined behind the last authentication packet of a multi-round
# COM_CHANGE_USER (caching_sha2 full authentication) ends the session (08S01 'got packet sequence
# id 0, expected 3'); nothing runs
def test_change_user_sha2_full_auth_with_pipelined_command(env: Env) -> None:
    """COM_CHANGE_USER with caching_sha2_password: the proxy asks for full authentication,
    the client sends the token and, without waiting, its next command (as a server would
    take it)."""
    m = marker()
    with Raw(env) as raw:
        raw.send(change_user(raw, BOB, b"\x11" * 32, "caching_sha2_password"))
        more = raw.read()
        assert more[:1] == b"\x01", more
        data = encode_packet(env.mp.token(BOB).encode() + b"\x00", 2)[0]
        data += packets(f"\x03{ins(env, m)}".encode())
        raw.sock.sendall(data)
        try:
            changed = raw.read()
            answer = raw.answer()
        except ConnectionError as exc:
            changed, answer = b"", [("closed", str(exc))]
    ran = executed(env, m)
    assert changed[:1] == b"\x00" and answer == [("ok", 1)] and ran == [m], (changed, answer, ran)
    got = trail(env, m, complete(1))
    assert [s["identity"] for s in got.statements] == [BOB], got.statements


def test_change_user_with_refused_token_and_pipelined_write(env: Env) -> None:
    m = marker()
    with Raw(env) as raw:
        data = packets(
            change_user(raw, BOB, b"not-a-token\x00", "mysql_clear_password"),
            f"\x03{ins(env, m)}".encode(),
        )
        raw.sock.sendall(data)
        seen = []
        try:
            for _ in range(3):
                seen.append(raw.read())
        except (ConnectionError, OSError):
            pass
    time.sleep(1)
    assert seen and seen[0][:1] == b"\xff", seen
    assert executed(env, m) == []
    got = trail(env, m, seconds=2)
    assert [s for s in got.statements if s["decision"] != "deny"] == [], got.statements


def test_change_user_to_agent_in_production_pipelined_write_refused(env: Env) -> None:
    m = marker()
    with Raw(env, "prod") as raw:
        token = env.mp.token(BOT, agent=True).encode() + b"\x00"
        data = packets(
            change_user(raw, BOT, token, "mysql_clear_password", "prod"),
            f"\x03{ins(env, m)}".encode(),
        )
        raw.sock.sendall(data)
        changed = raw.read()
        answer = raw.answer()
        later = raw.query(f"{ins(env, m + 'x')}")
    assert changed[:1] == b"\x00", changed
    assert answer[0][0] == "err" and later[0][0] == "err", (answer, later)
    assert executed(env, m) == []
    got = trail(env, m, lambda t: len(t.statements) >= 2)
    assert {s["identity"] for s in got.statements} == {BOT}, got.statements
    assert all(
        s["decision"] == "deny" or not is_ok(got.completions.get(s["id"])) for s in got.statements
    ), got


def test_change_user_twice_pipelined(env: Env) -> None:
    """alice: INSERT; change to bob; INSERT; change to alice again; INSERT: all pipelined."""
    m = marker()
    with Raw(env) as raw:
        data = packets(
            f"\x03{ins(env, m + '-1')}".encode(),
            change_user(raw, BOB, env.mp.token(BOB).encode() + b"\x00", "mysql_clear_password"),
            f"\x03{ins(env, m + '-2')}".encode(),
            change_user(raw, ALICE, env.mp.token(ALICE).encode() + b"\x00", "mysql_clear_password"),
            f"\x03{ins(env, m + '-3')}".encode(),
        )
        raw.sock.sendall(data)
        got_answers = [raw.answer(), raw.read()[:1], raw.answer(), raw.read()[:1], raw.answer()]
    assert got_answers == [[("ok", 1)], b"\x00", [("ok", 1)], b"\x00", [("ok", 1)]], got_answers
    assert executed(env, m) == [f"{m}-1", f"{m}-2", f"{m}-3"]
    got = trail(env, m, complete(3))
    who = {s["statement"].split("'")[1][-1]: s["identity"] for s in got.statements}
    assert who == {"1": ALICE, "2": BOB, "3": ALICE}, who


def test_change_user_pipelined_behind_a_call_with_result_sets(env: Env) -> None:
    m = marker()
    with Raw(env) as raw:
        data = packets(
            f"\x03CALL oam_two_{env.s}('{m}-1')".encode(),
            change_user(raw, BOB, env.mp.token(BOB).encode() + b"\x00", "mysql_clear_password"),
            f"\x03{ins(env, m + '-2')}".encode(),
        )
        raw.sock.sendall(data)
        first = raw.answer()
        changed = raw.read()
        second = raw.answer()
    assert first[-1] == ("ok", 0) or first[-1][0] == "ok", first
    assert changed[:1] == b"\x00" and second == [("ok", 1)], (changed, second)
    got = trail(env, m, complete(2))
    who = {
        s["statement"].split("'")[1][-1]: (s["identity"], is_ok(got.completions.get(s["id"])))
        for s in got.statements
    }
    assert who == {"1": (ALICE, True), "2": (BOB, True)}, who


# FINDING, fixed: a command pipelined behind the last authentication packet of a multi-round
# COM_CHANGE_USER (auth switch, then full authentication) ends the session (08S01 'got packet
# sequence id 0, expected 3'); nothing runs
def test_change_user_auth_switch_with_pipelined_command(env: Env) -> None:
    """COM_CHANGE_USER naming mysql_native_password: the proxy switches to caching_sha2,
    asks for full authentication; the client answers, then pipelines its command."""
    m = marker()
    with Raw(env) as raw:
        raw.send(change_user(raw, BOB, b"\x22" * 20, "mysql_native_password"))
        switch = raw.read()
        assert switch[:1] == b"\xfe", switch
        raw.send(b"\x33" * 32, 2)
        more = raw.read()
        assert more[:1] == b"\x01", more
        data = encode_packet(env.mp.token(BOB).encode() + b"\x00", 4)[0] + packets(
            f"\x03{ins(env, m)}".encode()
        )
        raw.sock.sendall(data)
        try:
            changed = raw.read()
            answer = raw.answer()
        except ConnectionError as exc:
            changed, answer = b"", [("closed", str(exc))]
    ran = executed(env, m)
    assert changed[:1] == b"\x00" and answer == [("ok", 1)] and ran == [m], (changed, answer, ran)

"""Attack round 4 on the outcome of PostgreSQL statements in the audit trail (commit dc483fd).

The fixes under attack: a Sync the server ignores while a COPY FROM STDIN reads is no cycle
(pg.py ``_copy_cycle``/``_copy_syncs``/``_copy_reading``, ``_copy_failed``; exchange.py
``syncs_ignored``), and a Query or FunctionCall behind unsynced extended-protocol messages
ends the session (``_ext_unsynced``).  Each probe writes unique markers through the proxy,
reads directly what PostgreSQL committed, and compares that with the completion records
(helpers of rounds 1-3: test_outcome_attack3_pg.py, test_audit_completeness_attack.py).
Probes that found a hole are ``xfail(strict=True, reason="FINDING: ...")`` asserting the
secure behaviour; the others are plain tests.

What PostgreSQL does (protocol.sgml, "COPY Operations"; copyfromparse.c CopyGetData):
during copy-in it ignores Sync and Flush; on an error during copy-in (bad data, CopyFail) it
leaves copy mode: on the simple protocol it answers ReadyForQuery at once, on the extended
protocol it skips to the next Sync; from then on CopyData/CopyDone/CopyFail are dropped, and
a Sync is answered.  Whether a Sync the client sends during COPY is ignored thus depends on
whether the server's error came before it in the stream, which the proxy cannot know when it
forwards the Sync.  And a Query string may hold several COPY FROM STDIN: each reads data.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from test_audit_completeness_attack import (  # type: ignore[import-not-found]
    Env,
    errors,
    mark,
    ok,
)
from test_effect_freeze_attack import (  # type: ignore[import-not-found]
    SYNC,
    Raw,
    bind,
    execute,
    msg,
    parse,
    query,
    raw_session,
)
from test_outcome_attack3_pg import (  # type: ignore[import-not-found]
    after_desync,
    completions_of,
    ins,
    outcome,
    truthful,
)

from support.pg import PgServer
from support.proxy import run_proxy, write_config

pytestmark = pytest.mark.e2e

FLUSH = msg(b"H")
COPY_DONE = msg(b"c")


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"outcome4_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(
            f"""
            create schema {s};
            create table {s}.t (id serial primary key, v text);
            create table {s}.n (id int, v text);
            """
        )
    directory = tmp_path_factory.mktemp("outcome_attack4_pg")
    config = write_config(
        directory, pg_server, extra={"audit": {"durability": "effect", "redact_literals": False}}
    )
    try:
        with run_proxy(config) as proxy:
            yield Env(proxy, pg_server, s)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop schema if exists {s} cascade")


def data(line: str) -> bytes:
    return msg(b"d", f"{line}\n".encode())


def until_copy_in(client: Raw, timeout: float = 10) -> list[tuple[bytes, bytes]]:
    got = []
    while True:
        t, body = client.read(timeout)
        got.append((t, body))
        if t == b"G":
            return got
        if t == b"E":
            raise AssertionError(f"no CopyInResponse: {got}")


def bad_row(c: str) -> bytes:
    """A row that ``COPY n (id, v)`` cannot read (an integer column given text)."""
    return data(f"zz\t{c}")


def ran_n(env: Env, c: str) -> int:
    return int(env.one(f"select count(*) from {env.s}.n where v = %s", c))


def each_ready(client: Raw, request: bytes, count: int = 1) -> list[tuple[bytes, bytes]]:
    client.send(request)
    return client.until_ready(timeout=10, count=count)


# --------------------------------------------------------------------------- a COPY fails mid-stream


@pytest.mark.xfail(
    strict=True,
    reason="FINDING: simple-protocol COPY FROM STDIN, then in one write: a bad row, Sync, "
    "CopyDone, Query 'INSERT m'. PostgreSQL fails the COPY on the bad row (ErrorResponse, "
    "ReadyForQuery), then answers the Sync (copy mode has ended) and runs the INSERT, which "
    "commits. The proxy took the Sync for one the COPY ignores (_copy_reading was set when it "
    "was forwarded; _copy_failed adds nothing back while reading), so the Sync's ReadyForQuery "
    "ends the INSERT's cycle: the committed INSERT is recorded 'not executed: skipped after an "
    "earlier error'",
)
@pytest.mark.parametrize("wait", [True, False], ids=["at-copy-in", "one-write"])
def test_simple_copy_bad_row_then_sync_then_insert(env: Env, wait: bool) -> None:
    c, m = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        copy = query(f"COPY {env.s}.n (id, v) FROM STDIN /* {c} */")
        if wait:
            client.send(copy)
            until_copy_in(client)
            copy = b""
        client.send(copy + bad_row(c) + SYNC + COPY_DONE + query(ins(env, m)))
        got = client.until_ready(timeout=10, count=3)
        assert errors(got), got
        assert not errors(each_ready(client, query("SELECT 1")))
    assert ran_n(env, c) == 0 and env.ran(m) == 1
    good, _, comp = truthful(env, m)
    assert good, comp


@pytest.mark.xfail(
    strict=True,
    reason="FINDING: extended-protocol COPY FROM STDIN (Parse/Bind/Describe/Execute/Sync as "
    "libpq sends it), then in one write: a bad row, Sync, CopyDone, Sync, Query 'INSERT m'. "
    "PostgreSQL fails the COPY on the bad row and skips to the next Sync (answered), drops the "
    "CopyDone, answers the last Sync, runs the INSERT (committed): three ReadyForQuery where "
    "the proxy counted two (the Sync after the bad row was taken for one the COPY ignores): the "
    "committed INSERT is recorded 'not executed: skipped after an earlier error'",
)
def test_extended_copy_bad_row_then_syncs_then_insert(env: Env) -> None:
    c, m = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(
            parse(f"COPY {env.s}.n (id, v) FROM STDIN /* {c} */")
            + bind()
            + msg(b"D", b"P\x00")
            + execute()
            + SYNC
        )
        until_copy_in(client)
        client.send(bad_row(c) + SYNC + COPY_DONE + SYNC + query(ins(env, m)))
        got = client.until_ready(timeout=10, count=3)
        assert errors(got), got
        assert not errors(each_ready(client, query("SELECT 1")))
    assert ran_n(env, c) == 0 and env.ran(m) == 1
    good, _, comp = truthful(env, m)
    assert good, comp


@pytest.mark.xfail(
    strict=True,
    reason="FINDING: COPY FROM STDIN, one write of a bad row, Sync, CopyDone, then (next "
    "write) 'INSERT a; SELECT 1/0' and 'INSERT m': the Sync PostgreSQL answers after the "
    "COPY's error is not counted; the extra ReadyForQuery closes the string's cycle early "
    "(both statements 'skipped') and the INSERT m that committed is recorded as skipped",
)
def test_simple_copy_bad_row_then_sync_then_pipelined_strings(env: Env) -> None:
    c, a, m = mark(), mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"COPY {env.s}.n (id, v) FROM STDIN /* {c} */"))
        until_copy_in(client)
        client.send(
            bad_row(c) + SYNC + COPY_DONE + query(f"{ins(env, a)}; SELECT 1/0") + query(ins(env, m))
        )
        client.until_ready(timeout=10, count=4)
    assert env.ran(a) == 0 and env.ran(m) == 1
    good_a, _, comp_a = truthful(env, a)
    good_m, _, comp_m = truthful(env, m)
    assert good_a and good_m, (comp_a, comp_m)


@pytest.mark.xfail(
    strict=True,
    reason="FINDING: COPY FROM STDIN, one write of a bad row, Sync, CopyDone, Query 'INSERT a', "
    "Query 'INSERT b; SELECT 1/0': the uncounted ReadyForQuery of the Sync closes INSERT a as "
    "skipped; INSERT a's CommandComplete then completes INSERT b, which the next "
    "ReadyForQuery settles ok: INSERT b, rolled back by its string's error, is recorded ok "
    "(and the committed INSERT a 'not executed')",
)
def test_simple_copy_bad_row_then_sync_then_rolled_back_write_recorded_ok(env: Env) -> None:
    c, a, b = mark(), mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"COPY {env.s}.n (id, v) FROM STDIN /* {c} */"))
        until_copy_in(client)
        client.send(
            bad_row(c) + SYNC + COPY_DONE + query(ins(env, a)) + query(f"{ins(env, b)}; SELECT 1/0")
        )
        client.until_ready(timeout=10, count=4)
    assert env.ran(a) == 1 and env.ran(b) == 0
    good_b, _, comp_b = truthful(env, b)
    good_a, _, comp_a = truthful(env, a)
    assert good_b, comp_b
    assert good_a, comp_a


# --------------------------------------------------------------------------- data sent before CopyInResponse


@pytest.mark.xfail(
    strict=True,
    reason="FINDING: one write: Query '<fails>; COPY t FROM STDIN' (or a COPY that fails "
    "before reading), Sync, CopyData, CopyDone, Query 'INSERT m'. The COPY never reads: "
    "PostgreSQL answers the Sync. The proxy put the Sync in _copy_syncs, then the CopyDone "
    "cleared _copy_cycle before the error came back, so _copy_failed never gave the Sync its "
    "cycle: its ReadyForQuery ends the INSERT's cycle, and the INSERT that committed is "
    "recorded 'not executed: skipped after an earlier error'",
)
@pytest.mark.parametrize(
    "copy",
    [
        "SELECT 1/0; COPY {s}.t (v) FROM STDIN",
        "COPY {s}.t (v) FROM STDIN WITH (FORMAT nosuch)",
    ],
    ids=["earlier-statement-fails", "copy-fails"],
)
def test_copy_that_never_reads_data_streamed_before_copy_in(env: Env, copy: str) -> None:
    c, m = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(
            query(copy.format(s=env.s) + f" /* {c} */")
            + SYNC
            + data(c)
            + COPY_DONE
            + query(ins(env, m))
        )
        got = client.until_ready(timeout=10, count=3)
        assert errors(got), got
        assert not errors(each_ready(client, query("SELECT 1")))
    assert env.ran(c) == 0 and env.ran(m) == 1
    good, _, comp = truthful(env, m)
    assert good, comp


@pytest.mark.xfail(
    strict=True,
    reason="FINDING: the same on the extended protocol, as libpq orders it but streamed "
    "without waiting for CopyInResponse: Parse/Bind/Execute of a COPY that fails, Sync, "
    "CopyDone, Sync, Query 'INSERT m': three ReadyForQuery, two counted: the committed "
    "INSERT is recorded 'not executed'",
)
def test_extended_copy_that_fails_data_streamed_before_copy_in(env: Env) -> None:
    c, m = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(
            parse(f"COPY {env.s}.t (v) FROM STDIN WITH (FORMAT nosuch) /* {c} */")
            + bind()
            + execute()
            + SYNC
            + data(c)
            + COPY_DONE
            + SYNC
            + query(ins(env, m))
        )
        got = client.until_ready(timeout=10, count=3)
        assert errors(got), got
        assert not errors(each_ready(client, query("SELECT 1")))
    assert env.ran(m) == 1
    good, _, comp = truthful(env, m)
    assert good, comp


@pytest.mark.xfail(
    strict=True,
    reason="FINDING: production: COPY FROM STDIN, Sync, data and CopyDone in one write (not "
    "waiting for CopyInResponse): the Sync went to the row guard's exchange as one to answer "
    "(_copy_reading was not set yet) and the CopyDone cleared _copy_cycle before the "
    "CopyInResponse came, so syncs_ignored is never called: the exchange waits for a "
    "ReadyForQuery that never comes, and the next UPDATE (held until the upstream is idle) "
    "hangs",
)
@pytest.mark.parametrize("protocol", ["simple", "extended"])
def test_prod_copy_streamed_before_copy_in_then_guarded_update(env: Env, protocol: str) -> None:
    c, n = mark(), mark()
    copy = f"COPY {env.s}.t (v) FROM STDIN /* {c} */"
    with raw_session(env.proxy, "prod") as client:
        if protocol == "simple":
            client.send(query(copy) + SYNC + data(c) + COPY_DONE)
        else:
            client.send(parse(copy) + bind() + execute() + SYNC + data(c) + COPY_DONE + SYNC)
        got = client.until_ready(timeout=10)
        if errors(got):
            pytest.skip(f"COPY FROM STDIN refused in production: {got}")
        client.send(query(f"UPDATE {env.s}.t SET v = '{n}' WHERE v = '{c}'"))
        answer = client.until_ready(timeout=8)
    assert not errors(answer), answer
    comps = [cc for r, cc in env.trail(n) if r["statement"].startswith("UPDATE")]
    assert len(comps) == 1 and ok(comps[0]) and comps[0][0]["rows"] == 1, comps


def test_copy_streamed_before_copy_in_staging(env: Env) -> None:
    """Control (staging, no row guard): COPY, Sync, data, CopyDone in one write: later
    outcomes are their own."""
    c = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"COPY {env.s}.t (v) FROM STDIN /* {c} */") + SYNC + data(c) + COPY_DONE)
        assert not errors(client.until_ready(timeout=10))
        m, n = after_desync(env, client)
    assert env.ran(c) == 1
    good_m, _, comp_m = truthful(env, m)
    good_n, _, comp_n = truthful(env, n)
    assert good_m and good_n, (comp_m, comp_n)


def test_libpq_extended_copy_bad_row_then_later_statements(env: Env) -> None:
    """Control: libpq's own order (data, CopyDone, Sync) when a row is bad: one
    ReadyForQuery for the COPY's two Syncs; later outcomes are their own."""
    c = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(
            parse(f"COPY {env.s}.n (id, v) FROM STDIN /* {c} */")
            + bind()
            + msg(b"D", b"P\x00")
            + execute()
            + SYNC
        )
        until_copy_in(client)
        client.send(data(f"1\t{c}") + bad_row(c) + COPY_DONE + SYNC)
        got = client.until_ready(timeout=10)
        assert errors(got), got
        m, n = after_desync(env, client)
    assert ran_n(env, c) == 0 and env.ran(m) == 1 and env.ran(n) == 0
    good_m, _, comp_m = truthful(env, m)
    good_n, _, comp_n = truthful(env, n)
    assert good_m and good_n, (comp_m, comp_n)


def test_libpq_itself_copy_bad_row_then_later_statements(env: Env) -> None:
    """Control through the real libpq (psycopg's pgconn): a COPY on the extended protocol whose
    second row is bad; then the usual sequence."""
    c, m, n = mark(), mark(), mark()
    with psycopg.connect(env.proxy.dsn(dbname="staging"), autocommit=True) as conn:
        pg = conn.pgconn
        pg.send_query_params(f"COPY {env.s}.n (id, v) FROM STDIN /* {c} */".encode(), None)
        res = pg.get_result()
        assert res is not None and res.status == psycopg.pq.ExecStatus.COPY_IN
        pg.put_copy_data(f"1\t{c}\nzz\t{c}\n".encode())
        pg.put_copy_end()
        statuses = []
        while (res := pg.get_result()) is not None:
            statuses.append(res.status)
        assert psycopg.pq.ExecStatus.FATAL_ERROR in statuses
        conn.execute(ins(env, m))
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute(f"{ins(env, n)}; SELECT 1/0")
    assert ran_n(env, c) == 0 and env.ran(m) == 1 and env.ran(n) == 0
    good_m, _, comp_m = truthful(env, m)
    good_n, _, comp_n = truthful(env, n)
    assert good_m and good_n, (comp_m, comp_n)


@pytest.mark.parametrize("end", ["copydone", "copyfail"])
def test_simple_copy_bad_row_then_end_then_sync(env: Env, end: str) -> None:
    """Control: a bad row, then CopyDone (or CopyFail), then a Sync: PostgreSQL answers the
    Sync (copy mode ended with the error); the proxy counts it."""
    c = mark()
    finish = COPY_DONE if end == "copydone" else msg(b"f", b"gave up\x00")
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"COPY {env.s}.n (id, v) FROM STDIN /* {c} */"))
        until_copy_in(client)
        client.send(bad_row(c) + finish + SYNC)
        got = client.until_ready(timeout=10, count=2)
        assert errors(got), got
        m, n = after_desync(env, client)
    good_m, _, comp_m = truthful(env, m)
    good_n, _, comp_n = truthful(env, n)
    assert good_m and good_n, (comp_m, comp_n)


def test_copy_fail_then_sync_then_later_statements(env: Env) -> None:
    """Control: simple COPY ended by CopyFail, then a Sync (answered: copy mode is over)."""
    c = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"COPY {env.s}.t (v) FROM STDIN /* {c} */"))
        until_copy_in(client)
        client.send(data(c) + msg(b"f", b"gave up\x00") + SYNC)
        got = client.until_ready(timeout=10, count=2)
        assert errors(got), got
        m, n = after_desync(env, client)
    assert env.ran(c) == 0
    good_m, _, comp_m = truthful(env, m)
    good_n, _, comp_n = truthful(env, n)
    assert good_m and good_n, (comp_m, comp_n)


@pytest.mark.parametrize(
    "head",
    ["SELECT 1/0; ", "SELECT pg_sleep(0.3); SELECT 1/0; "],
    ids=["fails-at-once", "fails-later"],
)
def test_copy_that_never_reads_with_syncs_already_sent(env: Env, head: str) -> None:
    """Control: ``<failing statement>; COPY ... FROM STDIN`` with two Syncs sent right behind
    it: the COPY never reads, PostgreSQL answers both Syncs."""
    c = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"{head}COPY {env.s}.t (v) FROM STDIN /* {c} */") + SYNC + SYNC)
        got = client.until_ready(timeout=10, count=3)
        assert errors(got), got
        m, n = after_desync(env, client)
    good_m, _, comp_m = truthful(env, m)
    good_n, _, comp_n = truthful(env, n)
    assert good_m and good_n, (comp_m, comp_n)


def test_flush_and_sync_during_copy_then_later_statements(env: Env) -> None:
    """Control: Flush and Sync between rows of a simple-protocol COPY that succeeds: both
    ignored."""
    c = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"COPY {env.s}.t (v) FROM STDIN /* {c} */"))
        until_copy_in(client)
        client.send(data(c) + FLUSH + SYNC + data(c) + FLUSH + COPY_DONE)
        got = client.until_ready(timeout=10)
        assert not errors(got), got
        m, n = after_desync(env, client)
    assert env.ran(c) == 2
    good_m, _, comp_m = truthful(env, m)
    good_n, _, comp_n = truthful(env, n)
    assert good_m and good_n, (comp_m, comp_n)


def test_copy_out_with_syncs_pipelined(env: Env) -> None:
    """Control: COPY TO STDOUT answers a Sync sent behind it (nothing is read from the
    client)."""
    m = mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(query(f"COPY {env.s}.t TO STDOUT") + SYNC + query(ins(env, m)) + SYNC)
        got = client.until_ready(timeout=10, count=4)
        assert not errors(got), got
    good, ran, comp = truthful(env, m)
    assert ran == 1 and good, comp


# --------------------------------------------------------------------------- two COPYs in one string


@pytest.mark.xfail(
    strict=True,
    reason="FINDING: Query 'COPY t FROM STDIN; COPY t FROM STDIN': the first CopyDone clears "
    "_copy_cycle, so a Sync sent while the second COPY reads counts as a cycle though PostgreSQL "
    "ignores it: the proxy waits for one ReadyForQuery more than will come, and later outcomes "
    "shift: an INSERT that committed in its own Query is recorded rolled back with the next "
    "string's error (and a failing SELECT recorded ok)",
)
def test_two_copies_in_one_string_sync_during_the_second(env: Env) -> None:
    c1, c2 = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(
            query(
                f"COPY {env.s}.t (v) FROM STDIN /* {c1} */; COPY {env.s}.t (v) FROM STDIN /* {c2} */"
            )
        )
        until_copy_in(client)
        client.send(data(c1) + COPY_DONE)
        until_copy_in(client)
        client.send(SYNC + data(c2) + COPY_DONE)
        got = client.until_ready(timeout=10)
        assert not errors(got), got
        m, n = after_desync(env, client)
    assert env.ran(c1) == 1 and env.ran(c2) == 1 and env.ran(m) == 1 and env.ran(n) == 0
    good_m, _, comp_m = truthful(env, m)
    good_n, _, comp_n = truthful(env, n)
    probe = completions_of(env, f"{m}-probe")
    assert good_m and good_n, (comp_m, comp_n)
    assert len(probe) == 1 and len(probe[0]) == 1 and probe[0][0]["sqlstate"] == "22012", probe


def test_two_copies_in_one_string_no_sync(env: Env) -> None:
    """Control: the same string without a Sync during the COPYs."""
    c1, c2 = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(
            query(
                f"COPY {env.s}.t (v) FROM STDIN /* {c1} */; COPY {env.s}.t (v) FROM STDIN /* {c2} */"
            )
        )
        until_copy_in(client)
        client.send(data(c1) + SYNC + COPY_DONE)
        until_copy_in(client)
        client.send(data(c2) + COPY_DONE)
        got = client.until_ready(timeout=10)
        assert not errors(got), got
        m, n = after_desync(env, client)
    good_m, _, comp_m = truthful(env, m)
    good_n, _, comp_n = truthful(env, n)
    assert good_m and good_n, (comp_m, comp_n)


@pytest.mark.xfail(
    strict=True,
    reason="FINDING: production: 'COPY t FROM STDIN; COPY t FROM STDIN' with a Sync while the "
    "second COPY reads: the proxy's exchange keeps waiting for that Sync's ReadyForQuery, so a "
    "later UPDATE (run under the row guard once the upstream is idle) is held forever: the "
    "session hangs",
)
def test_prod_two_copies_sync_during_the_second_then_guarded_update(env: Env) -> None:
    c1, c2, n = mark(), mark(), mark()
    with raw_session(env.proxy, "prod") as client:
        client.send(
            query(
                f"COPY {env.s}.t (v) FROM STDIN /* {c1} */; COPY {env.s}.t (v) FROM STDIN /* {c2} */"
            )
        )
        t, body = client.read(10)
        while t not in (b"G", b"E"):
            t, body = client.read(10)
        if t == b"E":
            pytest.skip(f"COPY FROM STDIN refused in production: {body!r}")
        client.send(data(c1) + COPY_DONE)
        until_copy_in(client)
        client.send(SYNC + data(c2) + COPY_DONE)
        assert not errors(client.until_ready(timeout=10))
        client.send(query(f"UPDATE {env.s}.t SET v = '{n}' WHERE v = '{c2}'"))
        answer = client.until_ready(timeout=8)
    assert not errors(answer), answer
    comps = [cc for r, cc in env.trail(n) if r["statement"].startswith("UPDATE")]
    assert len(comps) == 1 and ok(comps[0]) and comps[0][0]["rows"] == 1, comps


def test_prod_copy_bad_row_then_sync_then_guarded_update(env: Env) -> None:
    """production: COPY, a bad row then a Sync (answered by PostgreSQL after the error) then
    the CopyDone and an UPDATE under the row guard, all in one write: the UPDATE is answered
    and its completion is its own."""
    c, m = mark(), mark()
    with env.direct() as conn:
        conn.execute(f"insert into {env.s}.t (v) values (%s)", (c,))
    for _ in range(3):
        with raw_session(env.proxy, "prod") as client:
            client.send(query(f"COPY {env.s}.n (id, v) FROM STDIN /* {c} */"))
            t, body = client.read(10)
            while t not in (b"G", b"E"):
                t, body = client.read(10)
            if t == b"E":
                pytest.skip(f"COPY FROM STDIN refused in production: {body!r}")
            client.send(
                bad_row(c)
                + SYNC
                + COPY_DONE
                + query(f"UPDATE {env.s}.t SET v = '{m}' WHERE v = '{c}'")
            )
            got = client.until_ready(timeout=8, count=3)
            assert errors(got), got
            client.send(query(f"UPDATE {env.s}.t SET v = '{c}' WHERE v = '{m}'"))
            assert not errors(client.until_ready(timeout=8))
    comps = [
        cc
        for r, cc in env.trail(m, want=6)
        if r["statement"].startswith(f"UPDATE {env.s}.t SET v = '{m}'")
    ]
    assert len(comps) == 3 and all(ok(x) and x[0]["rows"] == 1 for x in comps), comps


# --------------------------------------------------------------------------- real drivers (refusal)


def test_psycopg_pipeline_with_fetches_and_commit(env: Env) -> None:
    """psycopg 3 pipeline mode (libpq pipeline, flush requests when a result is fetched,
    Sync at commit and exit), a transaction, reads and writes: nothing is refused, each
    outcome is its own."""
    a, b, c = mark(), mark(), mark()
    with (
        psycopg.connect(env.proxy.dsn(dbname="staging")) as conn,
        conn.pipeline() as p,
        conn.cursor() as cur,
    ):
        cur.execute(f"INSERT INTO {env.s}.t (v) VALUES (%s)", (a,))
        cur.execute("SELECT %s::text", (a,))
        assert cur.fetchone() == (a,)  # a flush request, no Sync yet
        cur.execute(f"INSERT INTO {env.s}.t (v) VALUES (%s)", (b,))
        conn.commit()
        cur.execute(f"INSERT INTO {env.s}.t (v) VALUES (%s)", (c,))
        p.sync()
        conn.rollback()
    assert (env.ran(a), env.ran(b), env.ran(c)) == (1, 1, 0)
    for x in (a, b):
        comps = [cc for r, cc in env.trail(x) if r["statement"].startswith("INSERT")]
        assert len(comps) == 1 and ok(comps[0]), comps


def test_psycopg_pipeline_error_then_more(env: Env) -> None:
    """psycopg pipeline in autocommit: a failing statement in the middle; psycopg syncs and
    the pipeline goes on."""
    a, b = mark(), mark()
    with psycopg.connect(env.proxy.dsn(dbname="staging"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute(f"INSERT INTO {env.s}.t (v) VALUES (%s)", (a,))
            conn.execute("SELECT 1/0")
        with conn.pipeline():
            conn.execute(f"INSERT INTO {env.s}.t (v) VALUES (%s)", (b,))
        conn.execute("SELECT 1")
    assert env.ran(b) == 1
    for x in (a, b):
        good, _, comp = truthful(env, x)
        assert good, (x, comp)


# FINDING, fixed (the refusal was reverted before it shipped) (refusal of a libpq sequence):
# pipeline mode, INSERT a sent with send_query_params and a flush request (no Sync), its result
# read; libpq then lets the client leave pipeline mode (nothing uncollected) and send a simple
# Query 'INSERT b': PostgreSQL runs it in the same implicit transaction and commits both. The
# proxy ends the session (08P01, _ext_unsynced), which a direct connection does not
def test_libpq_flush_request_exit_pipeline_then_simple_query(env: Env) -> None:
    a, b = mark(), mark()
    with psycopg.connect(env.proxy.dsn(dbname="staging"), autocommit=True) as conn:
        pg = conn.pgconn
        pg.enter_pipeline_mode()
        pg.send_query_params(f"INSERT INTO {env.s}.t (v) VALUES ('{a}')".encode(), None)
        pg.send_flush_request()
        pg.flush()
        res = pg.get_result()
        assert res is not None and res.status == psycopg.pq.ExecStatus.COMMAND_OK, res.error_message
        assert pg.get_result() is None
        pg.exit_pipeline_mode()
        res = pg.exec_(f"INSERT INTO {env.s}.t (v) VALUES ('{b}')".encode())
        assert res.status == psycopg.pq.ExecStatus.COMMAND_OK, res.error_message
    assert env.ran(a) == 1 and env.ran(b) == 1
    good_a, _, comp_a = truthful(env, a)
    good_b, _, comp_b = truthful(env, b)
    assert good_a and good_b, (comp_a, comp_b)


def test_libpq_flush_request_exit_pipeline_direct(env: Env) -> None:
    """What the probe above does, on a direct connection: both rows commit (the premise)."""
    a, b = mark(), mark()
    with env.direct() as conn:
        pg = conn.pgconn
        pg.enter_pipeline_mode()
        pg.send_query_params(f"INSERT INTO {env.s}.t (v) VALUES ('{a}')".encode(), None)
        pg.send_flush_request()
        pg.flush()
        res = pg.get_result()
        assert res is not None and res.status == psycopg.pq.ExecStatus.COMMAND_OK
        assert pg.get_result() is None
        pg.exit_pipeline_mode()
        res = pg.exec_(f"INSERT INTO {env.s}.t (v) VALUES ('{b}')".encode())
        assert res.status == psycopg.pq.ExecStatus.COMMAND_OK
    assert env.ran(a) == 1 and env.ran(b) == 1


def test_libpq_low_level_pipeline(env: Env) -> None:
    """libpq through psycopg's pgconn: send_prepare, send_query_prepared, send_query_params,
    a flush request, pipeline_sync; then a simple Query: nothing refused."""
    a, b = mark(), mark()
    with psycopg.connect(env.proxy.dsn(dbname="staging"), autocommit=True) as conn:
        pg = conn.pgconn
        pg.enter_pipeline_mode()
        pg.send_prepare(b"ins4", f"INSERT INTO {env.s}.t (v) VALUES ($1)".encode())
        pg.send_query_prepared(b"ins4", [a.encode()])
        pg.send_flush_request()
        pg.send_query_params(f"INSERT INTO {env.s}.t (v) VALUES ($1)".encode(), [b.encode()])
        pg.pipeline_sync()
        pg.flush()
        seen = []
        while len(seen) < 4:
            res = pg.get_result()
            if res is not None:
                seen.append(res.status)
        assert seen[-1] == psycopg.pq.ExecStatus.PIPELINE_SYNC, seen
        pg.exit_pipeline_mode()
        assert pg.exec_(b"SELECT 1").status == psycopg.pq.ExecStatus.TUPLES_OK
    for x in (a, b):
        good, ran, comp = truthful(env, x)
        assert ran == 1 and good, comp


def _tls_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _asyncpg_connect(env: Env) -> Any:
    asyncpg = pytest.importorskip("asyncpg")
    return await asyncpg.connect(
        host=env.proxy.host,
        port=env.proxy.port,
        user="alice@example.com",
        password=env.proxy.token("alice@example.com", ("eng",)),
        database="staging",
        ssl=_tls_ctx(),
        timeout=10,
    )


def test_asyncpg_executemany_prepared_and_transaction(env: Env) -> None:
    """asyncpg: executemany, a prepared statement fetched, a transaction: not refused, each
    write recorded ok."""
    a, b, d = mark(), mark(), mark()

    async def go() -> None:
        conn = await _asyncpg_connect(env)
        try:
            await conn.executemany(f"INSERT INTO {env.s}.t (v) VALUES ($1)", [(a,), (a,), (a,)])
            stmt = await conn.prepare(f"INSERT INTO {env.s}.t (v) VALUES ($1)")
            await stmt.fetch(b)
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {env.s}.t (v) VALUES ($1)", d)
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(go(), 30))
    assert (env.ran(a), env.ran(b), env.ran(d)) == (3, 1, 1)
    # (asyncpg sends text parameters in binary, with no declared type: recorded in hex)
    for x, count in ((a, 3), (b, 1), (d, 1)):
        comps = [cc for r, cc in env.trail(x.encode().hex(), want=count) if r["decision"] != "deny"]
        assert len(comps) == count and all(ok(cc) for cc in comps), (x, comps)


# FINDING, fixed (the refusal was reverted before it shipped) (a mainstream driver refused):
# asyncpg's copy_records_to_table prepares its introspection query with Parse, Describe and Flush
# (asyncpg coreproto.pyx _prepare_and_describe sends no Sync: 'we don't send a sync during the
# parse/describe sequence but send a FLUSH instead'), then sends the COPY as a simple Query: the
# proxy takes it for a Query behind unsynced extended messages and ends the session (08P01);
# PostgreSQL runs it
def test_asyncpg_copy_records_to_table(env: Env) -> None:
    c = mark()

    async def go() -> None:
        conn = await _asyncpg_connect(env)
        try:
            await conn.copy_records_to_table(
                "t", schema_name=env.s, columns=["v"], records=[(c,), (c,)]
            )
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(go(), 30))
    assert env.ran(c) == 2


# FINDING, fixed (the refusal was reverted before it shipped) (a mainstream driver refused):
# asyncpg conn.prepare() sends Parse, Describe, Flush and no Sync; the next call that uses the
# simple protocol (execute() without arguments, the BEGIN of conn.transaction()) is a Query behind
# unsynced extended messages: the proxy ends the session (08P01)
@pytest.mark.parametrize("then", ["execute", "transaction"])
def test_asyncpg_prepare_then_simple_query(env: Env, then: str) -> None:
    m = mark()

    async def go() -> None:
        conn = await _asyncpg_connect(env)
        try:
            await conn.prepare("SELECT $1::int")
            if then == "execute":
                await conn.execute(f"INSERT INTO {env.s}.t (v) VALUES ('{m}')")
            else:
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {env.s}.t (v) VALUES ($1)", m)
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(go(), 30))
    assert env.ran(m) == 1
    comps = [cc for r, cc in env.trail(m) + env.trail(m.encode().hex()) if r["decision"] != "deny"]
    assert len(comps) == 1 and ok(comps[0]), comps


def test_asyncpg_copy_to_and_from_table_and_cursor(env: Env) -> None:
    """asyncpg: copy_to_table from a file object, copy_from_table into one, a cursor read in
    a transaction with simple statements between its fetches: nothing refused, writes ok."""
    import io

    c, m = mark(), mark()

    async def go() -> None:
        conn = await _asyncpg_connect(env)
        try:
            await conn.copy_to_table(
                "t", schema_name=env.s, columns=["v"], source=io.BytesIO(f"{c}\n{c}\n".encode())
            )
            out = io.BytesIO()
            await conn.copy_from_table("t", schema_name=env.s, columns=["v"], output=out)
            assert c.encode() in out.getvalue()
            async with conn.transaction():
                cur = await conn.cursor(f"SELECT v FROM {env.s}.t WHERE v = $1", c)
                assert (await cur.fetchrow())[0] == c
                await conn.execute(f"INSERT INTO {env.s}.t (v) VALUES ('{m}')")
                assert (await cur.fetchrow())[0] == c
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(go(), 30))
    assert env.ran(c) == 2 and env.ran(m) == 1
    good, _, comp = truthful(env, m)
    assert good, comp


def test_asyncpg_prepare_then_simple_query_direct(env: Env) -> None:
    """The premise of the probe above, on a direct connection: PostgreSQL runs it."""
    asyncpg = pytest.importorskip("asyncpg")
    m = mark()

    async def go() -> None:
        conn = await asyncpg.connect(
            host=env.pg.host,
            port=env.pg.port,
            user=env.pg.user,
            password=env.pg.password,
            database=env.pg.dbname,
            ssl=False,
        )
        try:
            await conn.prepare("SELECT $1::int")
            await conn.execute(f"INSERT INTO {env.s}.t (v) VALUES ('{m}')")
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(go(), 30))
    assert env.ran(m) == 1


def _psql_env(env: Env, dbname: str) -> dict[str, str]:
    return {
        **os.environ,
        "PGHOST": env.proxy.host,
        "PGPORT": str(env.proxy.port),
        "PGUSER": "alice@example.com",
        "PGPASSWORD": env.proxy.token("alice@example.com", ("eng",)),
        "PGDATABASE": dbname,
        "PGSSLMODE": "require",
        "PGCONNECT_TIMEOUT": "10",
    }


@pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench not installed")
@pytest.mark.parametrize("mode", ["extended", "prepared"])
def test_pgbench_pipeline_script(env: Env, mode: str, tmp_path: Any) -> None:
    """pgbench -M extended/prepared, two clients, a script with \\startpipeline ...
    \\endpipeline: nothing refused, every write committed and recorded ok."""
    m = mark()
    script = tmp_path / "pipe.sql"
    script.write_text(
        "\\startpipeline\n"
        f"INSERT INTO {env.s}.t (v) VALUES ('{m}');\n"
        "SELECT 1;\n"
        f"INSERT INTO {env.s}.t (v) VALUES ('{m}');\n"
        "\\endpipeline\n"
    )
    done = subprocess.run(
        ["pgbench", "-n", "-M", mode, "-c", "2", "-t", "3", "-f", str(script)],
        env=_psql_env(env, "staging"),
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert env.ran(m) == 12
    comps = [cc for r, cc in env.trail(m, want=12) if r["statement"].startswith("INSERT")]
    assert len(comps) == 12 and all(ok(x) for x in comps), comps


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql not installed")
def test_psql_script_with_copy_and_bind(env: Env) -> None:
    """psql: \\bind (psql 16+) when it has it, COPY FROM STDIN, a failing statement: the
    session survives and outcomes are their own."""
    a, c, m = mark(), mark(), mark()
    version = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout
    major = int(version.split()[-1].split(".")[0])
    bind_line = (
        f"INSERT INTO {env.s}.t (v) VALUES ($1) \\bind {a} \\g\n"
        if major >= 16
        else f"INSERT INTO {env.s}.t (v) VALUES ('{a}');\n"
    )
    script = (
        bind_line
        + f"COPY {env.s}.t (v) FROM STDIN;\n{c}\n{c}\n\\.\n"
        + "SELECT 1/0;\n"
        + f"INSERT INTO {env.s}.t (v) VALUES ('{m}');\n"
    )
    done = subprocess.run(
        ["psql", "-X", "-q", "-f", "-"],
        input=script,
        env=_psql_env(env, "staging"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "division by zero" in done.stderr, done.stderr
    assert "08P01" not in done.stderr and "Sync" not in done.stderr, done.stderr
    assert env.ran(a) == 1 and env.ran(c) == 2 and env.ran(m) == 1
    for x in (a, m):
        good, _, comp = truthful(env, x)
        assert good, (x, comp)


def test_flush_alone_then_query(env: Env) -> None:
    """A Flush alone (no extended message before it) then a Query: no unsynced extended
    message, so nothing is refused."""
    m = mark()
    with raw_session(env.proxy, "staging") as client:
        got = each_ready(client, FLUSH + query(ins(env, m)))
    assert not errors(got), got
    good, ran, comp = truthful(env, m)
    assert ran == 1 and good, comp


def test_query_after_sync_in_same_write_is_not_refused(env: Env) -> None:
    """Parse/Bind/Execute, Sync, then a Query in the same write: synced, so the Query runs."""
    a, b = mark(), mark()
    with raw_session(env.proxy, "staging") as client:
        client.send(parse(ins(env, a)) + bind() + execute() + SYNC + query(ins(env, b)))
        got = client.until_ready(timeout=10, count=2)
    assert not errors(got), got
    for x in (a, b):
        good, ran, comp = truthful(env, x)
        assert ran == 1 and good, comp


def test_outcome_helper_sanity(env: Env) -> None:
    """The helpers see an ordinary committed INSERT as ok (guards the probes above)."""
    m = mark()
    with raw_session(env.proxy, "staging") as client:
        assert not errors(each_ready(client, query(ins(env, m))))
    assert ok(outcome(env, m))

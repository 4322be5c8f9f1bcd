"""psql through a running dbsentry: what a person at a terminal sees."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from support.pg import PgServer
from support.proxy import RunningProxy

pytestmark = pytest.mark.e2e

_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def psql(
    dsn: str, *args: str, input: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``psql -X`` (no psqlrc) with unaligned, tuples-only output."""
    return subprocess.run(
        ["psql", dsn, "-X", "-q", "-A", "-t", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env={**_ENV, "LC_ALL": "C"},
    )


@pytest.fixture
def table(proxy: RunningProxy, pg_server: PgServer) -> Iterator[str]:
    """A table of the test's own, created and dropped through the proxy (on the staging
    connection: in production the baseline policy holds DDL for approval)."""
    name = f"t_psql_{uuid.uuid4().hex[:12]}"
    done = psql(
        proxy.dsn(dbname="staging"),
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        f"create table {name} (id int primary key, note text)",
    )
    assert done.returncode == 0, done.stderr
    yield name
    dropped = psql(proxy.dsn(dbname="staging"), "-c", f"drop table if exists {name}")
    assert dropped.returncode == 0, dropped.stderr
    with psycopg.connect(pg_server.dsn()) as direct:
        assert direct.execute("select to_regclass(%s)", (name,)).fetchone() == (None,)


def test_query(proxy: RunningProxy) -> None:
    done = psql(proxy.dsn(), "-c", "select 40 + 2, current_database()")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "42|test\n"
    assert done.stderr == ""


def test_copy_round_trip(
    proxy: RunningProxy, pg_server: PgServer, table: str, tmp_path: Path
) -> None:
    rows = "1\thello\n2\twith spaces and \\t tab\n3\t\\N\n4\tünïcødé\n"
    source = tmp_path / "in.tsv"
    source.write_text(rows, encoding="utf-8")
    target = tmp_path / "out.tsv"

    loaded = psql(proxy.dsn(), "-v", "ON_ERROR_STOP=1", "-c", f"\\copy {table} from '{source}'")
    assert loaded.returncode == 0, loaded.stderr
    with psycopg.connect(pg_server.dsn()) as direct:
        got = direct.execute(f"select id, note from {table} order by id").fetchall()
    assert got == [(1, "hello"), (2, "with spaces and \t tab"), (3, None), (4, "ünïcødé")]

    dumped = psql(
        proxy.dsn(),
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        f"\\copy (select * from {table} order by id) to '{target}'",
    )
    assert dumped.returncode == 0, dumped.stderr
    assert target.read_text(encoding="utf-8") == rows

    # The session is still in step after COPY: a plain query in the same psql run works.
    both = psql(
        proxy.dsn(),
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        f"\\copy {table} to '{target}'",
        "-c",
        f"select count(*) from {table}",
    )
    assert both.returncode == 0, both.stderr
    assert both.stdout == "4\n"


def test_copy_from_bad_data_reports_error_and_keeps_session(
    proxy: RunningProxy, table: str, tmp_path: Path
) -> None:
    source = tmp_path / "bad.tsv"
    source.write_text("1\tok\nnot-a-number\toops\n")
    done = psql(
        proxy.dsn(), "-c", f"\\copy {table} from '{source}'", "-c", f"select count(*) from {table}"
    )
    assert 'invalid input syntax for type integer: "not-a-number"' in done.stderr
    assert done.stdout == "0\n"  # COPY is atomic, and the next query ran


_NOTIFY_RE = re.compile(
    r'Asynchronous notification "(\w+)" with payload "([^"]*)" received from server process with PID (\d+)\.'
)


def test_listen_notify_shows_the_pid_the_client_was_given(proxy: RunningProxy) -> None:
    script = "LISTEN ch;\nNOTIFY ch, 'x';\nselect pg_backend_pid();\n"
    done = psql(proxy.dsn(), "-v", "ON_ERROR_STOP=1", input=script)
    assert done.returncode == 0, done.stderr
    notes = _NOTIFY_RE.findall(done.stdout)
    assert len(notes) == 1, done.stdout
    channel, payload, pid = notes[0]
    assert (channel, payload) == ("ch", "x")
    # The notifying process is this session: psql is told the pid it got in BackendKeyData
    # (the proxy's), not the upstream backend's that pg_backend_pid() reports (a documented
    # difference: docs/compatibility.md).
    backend_pid = int(done.stdout.strip().splitlines()[-1])
    assert int(pid) > 0 and int(pid) != backend_pid


def test_listen_receives_notify_from_other_session(
    proxy: RunningProxy, pg_server: PgServer
) -> None:
    marker = f"sleep-{uuid.uuid4().hex[:8]}"
    script = f"LISTEN ch2;\nselect pg_sleep(1.5) /* {marker} */;\nselect 'done';\n"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        notifier_pid = direct.info.backend_pid
        result: dict[str, subprocess.CompletedProcess[str]] = {}
        runner = threading.Thread(
            target=lambda: result.setdefault("r", psql(proxy.dsn(), input=script))
        )
        runner.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = direct.execute(
                "select count(*) from pg_stat_activity where state = 'active' and query like %s and pid <> pg_backend_pid()",
                (f"%{marker}%",),
            ).fetchone()
            if row == (1,):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the psql session never started its pg_sleep")
        direct.execute("NOTIFY ch2, 'from-outside'")
        runner.join(30)
    done = result["r"]
    assert done.returncode == 0, done.stderr
    assert _NOTIFY_RE.findall(done.stdout) == [("ch2", "from-outside", str(notifier_pid))]
    assert done.stdout.strip().endswith("done")


@pytest.mark.serial
def test_ctrl_c_cancels_running_query(proxy: RunningProxy) -> None:
    proc = subprocess.Popen(
        ["psql", proxy.dsn(), "-X", "-c", "select pg_sleep(30)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**_ENV, "LC_ALL": "C"},
    )
    try:
        time.sleep(1.0)
        assert proc.poll() is None, proc.communicate()
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=1.5)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 1.5
    assert "canceling statement due to user request" in err
    assert proc.returncode == 1


def test_multi_statement_string(proxy: RunningProxy) -> None:
    done = psql(proxy.dsn(), "-c", "select 1; select 2")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1\n2\n"


def test_error_keeps_session_usable(proxy: RunningProxy) -> None:
    script = "select 1/0;\nselect 'still here', pg_backend_pid() = pg_backend_pid();\n"
    done = psql(proxy.dsn(), "-v", "ON_ERROR_STOP=0", input=script)
    assert "ERROR:  division by zero" in done.stderr
    assert done.stdout == "still here|t\n"


def test_error_inside_transaction_then_rollback(proxy: RunningProxy, pg_server: PgServer) -> None:
    name = f"t_psql_tx_{uuid.uuid4().hex[:12]}"
    script = (
        "begin;\n"
        f"create table {name} (id int);\n"
        "select 1/0;\n"
        "select 'ignored';\n"
        "rollback;\n"
        f"select coalesce(to_regclass('{name}')::text, 'gone');\n"
    )
    done = psql(proxy.dsn(dbname="staging"), "-v", "ON_ERROR_STOP=0", input=script)
    assert "ERROR:  division by zero" in done.stderr
    assert (
        "ERROR:  current transaction is aborted, commands ignored until end of transaction block"
        in done.stderr
    )
    assert done.stdout == "gone\n"
    with psycopg.connect(pg_server.dsn()) as direct:
        assert direct.execute("select to_regclass(%s)", (name,)).fetchone() == (None,)

"""``dbsentry demo`` as a user runs it: a real subprocess, an embedded PostgreSQL, psql."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from dbsentry.demo.embedded import find_bindir
from dbsentry.demo.tour import MYSQL_STEPS, STEPS
from support.demo import CLUSTER, Clusters
from support.processes import interrupt

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        find_bindir() is None, reason="no PostgreSQL binaries (pip install pgserver)"
    ),
]

_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
    "PYTHONIOENCODING": "utf-8",
    "NO_COLOR": "1",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _demo_cmd(directory: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "dbsentry", "demo", "--dir", str(directory),
        "--port", str(_free_port()), "--http-port", str(_free_port()), *extra,
    ]  # fmt: skip


def _run_tour(
    directory: Path, cwd: Path, clusters: Clusters
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(
        _demo_cmd(directory, "--tour"),
        cwd=cwd,
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    clusters.note(proc.stdout)
    return proc, time.monotonic() - started


def _mysql_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 3306), timeout=1):
            return True
    except OSError:
        return False


def _assert_tour_passed(proc: subprocess.CompletedProcess[str]) -> None:
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    # The MySQL leg runs when a MySQL/MariaDB server answers (root on 127.0.0.1:3306 here).
    mysql = _mysql_reachable()
    steps = STEPS + (MYSQL_STEPS if mysql else ())
    for number, title in enumerate(steps, start=1):
        assert f"✓ {number}/{len(steps)} {title}" in out, out
    assert "✗" not in out, out
    assert f"tour passed: all {len(steps)} steps behaved" in out
    assert "PostgreSQL stopped" in out
    if mysql:
        assert re.search(r"^MySQL/MariaDB \S+ on 127\.0\.0\.1:3306$", out, re.M), out
        assert re.search(r"ERROR 1\d{3}: dbsentry: ", out), out
        assert re.search(r"the agent receives: \S.* \| .*\*.*", out.split("MySQL: the agent's SELECT")[1]), out
    else:
        assert "MySQL leg skipped: no MySQL/MariaDB server answered" in out, out


def _cluster_stopped(output: str, cwd: Path) -> bool:
    match = CLUSTER.search(output)
    assert match is not None, output
    root = Path(match.group(1))
    root = root if root.is_absolute() else cwd / root
    return not (root / "data" / "postmaster.pid").exists()


@pytest.mark.timeout(600)
def test_tour_passes_and_passes_again_reusing_the_directory(
    tmp_path: Path, clusters: Clusters
) -> None:
    directory = tmp_path / "demo"

    first, first_seconds = _run_tour(directory, tmp_path, clusters)
    _assert_tour_passed(first)
    assert "created a new cluster" in first.stdout
    assert "loading shop: 50,000 customers, 250,000 orders" in first.stdout
    # Masked values, not the real ones, reach the agent.
    assert re.search(
        r"the agent receives: <name> \| \*+@\S+ \| \*\*\*-\*\*-\d{4} \| \*+\d{4}", first.stdout
    )
    assert "ERROR 42501: dbsentry: DROP" in first.stdout
    assert re.search(
        r"NOTICE: dbsentry: waiting up to \d+s for approval request apr_", first.stdout
    )
    report = re.search(r"report: (\S+report\.html)", first.stdout)
    assert report is not None
    assert (tmp_path / report.group(1)).is_file()
    assert _cluster_stopped(first.stdout, tmp_path)

    tokens_path = directory / "tokens.json"
    assert tokens_path.stat().st_mode & 0o777 == 0o600
    tokens_before = tokens_path.read_text()
    assert (directory / "dbsentry.yaml").is_file()

    second, second_seconds = _run_tour(directory, tmp_path, clusters)
    _assert_tour_passed(second)
    assert "reusing the cluster" in second.stdout
    assert "dataset already loaded" in second.stdout
    assert tokens_path.read_text() == tokens_before  # still valid, so reused
    assert _cluster_stopped(second.stdout, tmp_path)
    print(f"first tour {first_seconds:.1f}s, second {second_seconds:.1f}s")


class _Lines:
    """Collects a process's stdout in a thread, so the pipe never fills."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise AssertionError(f"no {text!r} in the output:\n{self.text}")
                self._cond.wait(min(left, 0.5))
            return self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@pytest.mark.timeout(300)
def test_demo_prints_connection_strings_serves_psql_and_stops_on_sigint(
    tmp_path: Path, clusters: Clusters
) -> None:
    directory = tmp_path / "demo"
    proc = subprocess.Popen(
        _demo_cmd(directory),
        cwd=tmp_path,
        env=_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    out = _Lines(proc.stdout)
    try:
        banner = out.wait_for("Press Ctrl-C to stop.", timeout=200)
        clusters.note(banner)
        found = re.findall(
            r'psql "(host=127\.0\.0\.1 port=\d+ dbname=prod user=(\S+) password=dbs_\S+ sslmode=require)"',
            banner,
        )
        strings = {user: conninfo for conninfo, user in found}
        assert set(strings) == {
            "analyst@example.com",
            "dba@example.com",
            "lead@example.com",
            "ai-agent",
        }, banner
        console = re.search(r"console +(http://127\.0\.0\.1:\d+/)", banner)
        assert console is not None, banner
        assert "dbsentry approvals approve <request id>" in banner

        analyst = strings["analyst@example.com"]
        if shutil.which("psql"):
            done = subprocess.run(
                ["psql", analyst, "-X", "-A", "-t", "-c", "SELECT count(*) FROM orders"],
                capture_output=True,
                text=True,
                timeout=60,
                env={**_ENV, "LC_ALL": "C"},
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == "250000"
        with psycopg.connect(analyst, connect_timeout=10) as conn:
            row = conn.execute("SELECT email, ssn FROM customers ORDER BY id LIMIT 1").fetchone()
            assert row is not None
            assert row[0].startswith("****@") and row[1].startswith("***-**-"), row
            # dbsentry logs in upstream with its own role; the analyst never sees its password.
            assert conn.execute("SELECT current_user").fetchone() == ("shop",)

        # The MySQL leg's printed command works as printed (the mariadb client, a token as
        # the password, TLS), and the connection's account is dbsentry's, not the client's.
        mysql_lines = re.findall(r"^    (mariadb -h 127\.0\.0\.1 -P \d+ -u (\S+) -p\S+ .*prod_mysql)$", banner, re.M)
        if _mysql_reachable() and shutil.which("mariadb"):
            assert {user for _, user in mysql_lines} == {"ai-agent", "analyst@example.com"}, banner
            command = dict((user, line) for line, user in mysql_lines)["analyst@example.com"]
            done = subprocess.run(
                [*command.split(), "-N", "-B", "-e", "SELECT COUNT(*), CURRENT_USER() FROM orders"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            count, account = done.stdout.split()
            assert count == "20000" and account.startswith("dbsentry_demo_"), done.stdout
        elif not _mysql_reachable():
            assert mysql_lines == [] and "MySQL leg skipped" in banner, banner

        with urllib.request.urlopen(console.group(1) + "healthz", timeout=10) as resp:
            assert resp.status == 200

        # One demo per directory.
        again = subprocess.run(
            _demo_cmd(directory), cwd=tmp_path, env=_ENV, capture_output=True, text=True, timeout=60
        )
        assert again.returncode == 2
        assert re.search(r"another dbsentry demo \(pid \d+\) is running", again.stdout)
        assert "To tour the running demo:" in again.stdout

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        out.join(10)
        assert "dbsentry stopped" in out.text
        assert "PostgreSQL stopped" in out.text
        assert _cluster_stopped(out.text, tmp_path)
    finally:
        interrupt(proc, timeout=30)
        proc.stdout.close()

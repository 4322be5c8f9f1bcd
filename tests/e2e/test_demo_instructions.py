"""The demo's printed instructions, followed verbatim as a new user would.

The demo runs as the README's quickstart leaves it: ``.venv/bin/dbsentry demo``, with the
virtualenv *not* on PATH.  Every command the banner prints then runs in a shell
(``bash -c``) from another directory, in the order the banner gives; the SQL it suggests
is pasted into the printed psql command of the identity it names.  Placeholders the user
fills in (``<request id>``) are filled from what the previous step printed.  At the end,
every command line of the banner must have been run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dbsentry.demo.embedded import find_bindir
from support.demo import Clusters
from support.pg import free_port
from support.processes import interrupt

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        find_bindir() is None, reason="no PostgreSQL binaries (pip install pgserver)"
    ),
    pytest.mark.skipif(shutil.which("psql") is None, reason="needs psql"),
]

SCRIPT = Path(sys.executable).parent / "dbsentry"
_VENV_BIN = str(SCRIPT.parent)
# A shell as the quickstart leaves it: the virtualenv is not activated.
_ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "VIRTUAL_ENV"},
    "PATH": os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != _VENV_BIN
    ),
    "PYTHONIOENCODING": "utf-8",
    "NO_COLOR": "1",
    "LC_ALL": "C.UTF-8",
    # The MySQL leg's printed command is checked by tests/e2e/test_demo.py; here the leg is
    # left out (port 1 answers nothing), so two demos never share the MySQL database.
    "DBSENTRY_DEMO_MYSQL": "mysql://root@127.0.0.1:1",
}
_APR = re.compile(r"\bapr_[0-9a-z]{10}\b")


@dataclass
class Banner:
    """The banner, read as a user reads it."""

    text: str
    psql: dict[str, str] = field(default_factory=dict)  # identity -> its psql command
    tries: dict[str, list[tuple[str, str]]] = field(
        default_factory=dict
    )  # identity -> (sql line, note)
    commands: list[str] = field(default_factory=list)  # every shell command line, in order

    @classmethod
    def parse(cls, text: str) -> Banner:
        b = cls(text)
        who: str | None = None
        for raw in text.splitlines():
            line = raw.strip()
            ident = re.match(r"^  (\S+@\S+|ai-agent)  (human|agent), groups", raw)
            if ident:
                who = ident.group(1)
                continue
            as_who = re.match(r"^  as (\S+) \(", raw)
            if as_who:
                who = as_who.group(1)
                continue
            if not raw.startswith("    "):
                continue
            if line.startswith("psql ") or line.startswith(str(SCRIPT)):
                b.commands.append(line)
                if line.startswith("psql ") and who is not None and "approval=wait" not in line:
                    b.psql.setdefault(who, line)
            elif re.match(r"^(SELECT|DROP|ALTER|DELETE|CREATE)\b", line) and who is not None:
                _, _, note = line.partition("  -- ")
                b.tries.setdefault(who, []).append((line, note))
        return b

    def command(self, *words: str) -> str:
        """The printed command line that has all these words."""
        found = [c for c in self.commands if all(w in c for w in words)]
        assert found, f"no printed command with {words}:\n{self.text}"
        return found[0]


class Shell:
    """Runs command lines in ``bash -c`` from a directory of its own, and remembers them."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.ran: list[str] = []

    def run(self, line: str, *, fill: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
        self.ran.append(line)
        for placeholder, value in (fill or {}).items():
            line = line.replace(placeholder, value)
        return subprocess.run(
            ["bash", "-c", line],
            cwd=self.cwd,
            env=_ENV,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def sql(self, psql: str, sql_line: str) -> subprocess.CompletedProcess[str]:
        """Paste one line into psql (as ``psql ... -c``)."""
        self.ran.append(psql)
        return subprocess.run(
            ["bash", "-c", f"{psql} -X -v ON_ERROR_STOP=1 -c {shlex.quote(sql_line)}"],
            cwd=self.cwd,
            env=_ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )


def _expect(result: subprocess.CompletedProcess[str], note: str, line: str) -> None:
    refused = note.startswith(("blocked", "refused"))
    if refused:
        assert result.returncode != 0 and "ERROR:" in result.stderr, (line, result)
    else:
        assert result.returncode == 0, (line, result.stdout, result.stderr)


def _request_id(result: subprocess.CompletedProcess[str]) -> str:
    found = _APR.findall(result.stderr)
    assert found, result.stderr
    return found[0]


class _Output:
    """A process's stdout, collected in a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._stream = proc.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line)

    def join(self) -> None:
        self._thread.join(30)
        self._stream.close()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while text not in "".join(self.lines):
            assert time.monotonic() < deadline and self._thread.is_alive(), "".join(self.lines)
            time.sleep(0.2)
        return "".join(self.lines)


@pytest.mark.timeout(900)
def test_every_printed_instruction_works_as_printed(tmp_path: Path, clusters: Clusters) -> None:
    assert SCRIPT.is_file()
    home = tmp_path / "checkout"
    elsewhere = tmp_path / "another-terminal"
    home.mkdir()
    elsewhere.mkdir()
    demo = subprocess.Popen(
        [str(SCRIPT), "demo", "--port", str(free_port()), "--http-port", str(free_port())],
        cwd=home,
        env=_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    out = _Output(demo)
    try:
        banner = Banner.parse(out.wait_for("Press Ctrl-C to stop.", timeout=400))
        _follow(banner, Shell(elsewhere), home)
    finally:
        interrupt(demo, timeout=90)
        out.join()
        clusters.note("".join(out.lines))
    assert "PostgreSQL stopped" in "".join(out.lines)


def _follow(banner: Banner, sh: Shell, home: Path) -> None:
    # The venv is not on PATH, so the banner names the dbsentry it runs with in full.
    assert f"{SCRIPT} approvals list -c {home / '.dbsentry-demo' / 'dbsentry.yaml'}" in banner.text
    assert set(banner.psql) == {
        "analyst@example.com",
        "dba@example.com",
        "lead@example.com",
        "ai-agent",
    }

    # each identity's psql command connects
    for who, psql in banner.psql.items():
        hello = sh.sql(psql, "SELECT current_user;")
        assert hello.returncode == 0 and "shop" in hello.stdout, (who, hello)

    # as ai-agent: masked values, the DROP blocked
    for line, note in banner.tries["ai-agent"]:
        result = sh.sql(banner.psql["ai-agent"], line)
        _expect(result, note, line)
        if line.startswith("SELECT full_name"):
            assert "****@" in result.stdout and "<name>" in result.stdout, result.stdout
        if "date_of_birth" in line:
            assert "1900-01-01" in result.stdout, result.stdout

    # as the analyst: the ALTER TABLE names a request, the DELETE is blocked
    (alter, alter_note), (delete, delete_note) = banner.tries["analyst@example.com"]
    first = sh.sql(banner.psql["analyst@example.com"], alter)
    _expect(first, alter_note, alter)
    analyst_request = _request_id(first)
    _expect(sh.sql(banner.psql["analyst@example.com"], delete), delete_note, delete)

    listed = sh.run(banner.command("approvals list"))
    assert listed.returncode == 0 and analyst_request in listed.stdout, listed
    dba_token = re.search(r"user=dba@example.com password=(\S+) ", banner.psql["dba@example.com"])
    lead_token = re.search(
        r"user=lead@example.com password=(\S+) ", banner.psql["lead@example.com"]
    )
    assert dba_token and lead_token
    approve_as_dba = banner.command("approvals approve <request id>", dba_token.group(1))
    approved = sh.run(approve_as_dba, fill={"<request id>": analyst_request})
    assert approved.returncode == 0 and "approved" in approved.stdout, approved
    again = sh.sql(banner.psql["analyst@example.com"], alter)
    assert again.returncode == 0, again  # runs, once

    # as the DBA: real values; their own CREATE INDEX waits for the lead
    (select, select_note), (index, index_note) = banner.tries["dba@example.com"]
    real = sh.sql(banner.psql["dba@example.com"], select)
    _expect(real, select_note, select)
    assert "****" not in real.stdout and re.search(r"\d{3}-\d{2}-\d{4}", real.stdout), real.stdout
    own = sh.sql(banner.psql["dba@example.com"], index)
    _expect(own, index_note, index)
    dba_request = _request_id(own)
    assert "by someone other than dba@example.com" in own.stderr
    self_review = sh.run(approve_as_dba, fill={"<request id>": dba_request})
    assert self_review.returncode == 1 and "another member of dba must" in self_review.stderr
    approve_as_lead = banner.command("approvals approve <request id>", lead_token.group(1))
    by_lead = sh.run(approve_as_lead, fill={"<request id>": dba_request})
    assert by_lead.returncode == 0, by_lead
    assert sh.sql(banner.psql["dba@example.com"], index).returncode == 0

    # wait mode: the statement waits, a reviewer approves, it runs
    wait = banner.command("psql ", "approval=wait")
    sh.ran.append(wait)
    waiting = subprocess.Popen(
        ["bash", "-c", f"{wait} -X -v ON_ERROR_STOP=1 -c {shlex.quote(alter)}"],
        cwd=sh.cwd,
        env=_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        pending = None
        while pending is None:
            assert time.monotonic() < deadline, "no pending request for the waiting statement"
            listing = sh.run(banner.command("approvals list")).stdout
            pending = next(
                (
                    m.group(0)
                    for ln in listing.splitlines()
                    if "pending" in ln and "analyst@example.com" in ln
                    for m in [_APR.search(ln)]
                    if m
                ),
                None,
            )
            time.sleep(0.5)
        assert waiting.poll() is None  # still waiting for the review
        assert sh.run(approve_as_dba, fill={"<request id>": pending}).returncode == 0
        _, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert f"waiting up to 600s for approval request {pending}" in err
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()

    # the audit trail and the report
    tail = sh.run(banner.command("audit tail"))
    assert tail.returncode == 0 and "statement" in tail.stdout, tail
    verify = sh.run(banner.command("audit verify"))
    assert verify.returncode == 0 and "INTACT" in verify.stdout, verify
    report = sh.run(banner.command(" report -c "))
    assert report.returncode == 0, report
    written = re.search(r"wrote (/\S+report\.html)", report.stdout)
    assert written and Path(written.group(1)).is_file(), report.stdout
    assert Path(written.group(1)).is_relative_to(home / ".dbsentry-demo")

    # the scripted tour, against the demo that runs
    tour = sh.run(banner.command("demo --tour --dir"), timeout=300)
    assert tour.returncode == 0, tour.stdout + tour.stderr
    assert "the tour runs against it" in tour.stdout
    assert "tour passed: all 5 steps behaved" in tour.stdout
    for cmd in re.findall(r"`([^`<]+)` checks", tour.stdout):  # what the tour says it did
        assert sh.run(cmd).returncode == 0, cmd

    # a second demo on the same directory: it says what to do instead
    second = sh.run(f"{SCRIPT} demo --dir {home / '.dbsentry-demo'}", timeout=120)
    assert second.returncode == 2
    assert "Stop it with Ctrl-C in its terminal" in second.stdout
    assert f"{SCRIPT} demo --tour --dir {home / '.dbsentry-demo'}" in second.stdout
    assert f"{SCRIPT} demo --dir {home / '.dbsentry-demo-2'}" in second.stdout

    missed = [c for c in banner.commands if c not in sh.ran]
    assert not missed, f"printed but not run: {missed}"

#!/usr/bin/env python3
"""Run psycopg 3's own test suite directly against PostgreSQL and through dbsentry, and compare.

What it does, in order:

1. obtains psycopg's test suite (``tests/`` and ``tools/`` of psycopg's source tree) from a
   checkout (``--psycopg-src``), a git directory and ref (``--psycopg-git``, ``--ref``), a
   source archive file or URL (``--psycopg-archive``), or psycopg's sdist on PyPI
   (``--pypi-sdist``, only works for a release whose sdist ships the tests);
2. creates a virtualenv of its own for the suite (psycopg of the suite's version and the
   suite's test dependencies; nothing is added to dbsentry's environment);
3. recreates the database the suite uses (``psycopg_test`` by default) and runs the suite
   directly against PostgreSQL;
4. recreates it again, starts dbsentry with a temporary configuration and state directory
   on a free port (one ``staging`` environment connection to that database, logging in
   upstream as the admin user), creates a token for an identity in group ``pii-readers``
   and runs the suite again through dbsentry with the same pytest options;
5. reruns, through dbsentry, the tests that passed directly but failed through dbsentry,
   to tell consistent failures from flaky ones;
6. prints the comparison and writes it as ``report.md`` and ``summary.json``.

Run it with the Python of dbsentry's own virtualenv (it starts ``python -m dbsentry``):

    .venv/bin/python compat/psycopg_suite.py --psycopg-src ../psycopg

Exit status: 0 when no test fails only through dbsentry, 1 when some do, 2 when the
harness itself could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import venv
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK = REPO / ".compat-work" / "psycopg"

# Not run: psycopg_pool's tests, CockroachDB's, Windows-only ones. (Tests that need an
# optional module or a Python build we do not have skip themselves.)
IGNORED_PATHS = ("tests/pool", "tests/crdb", "tests/test_windows.py")
# mypy: those tests type-check example files with mypy; they never talk to the database.
DEFAULT_NOT_MARKERS = ("mypy",)
# What psycopg's `test` extra declares (pyproject.toml), less mypy and pytest-cov, plus
# pytest-timeout for our per-test timeout and the optional modules that unlock more
# database tests (dnspython: test_dns*, numpy: tests/types/test_numpy.py).
SUITE_REQUIREMENTS = (
    "pytest>=8",
    "pytest-timeout>=2.3",
    "pytest-randomly>=3.5",
    "anyio>=4.0",
    "pproxy>=2.7",
    "dnspython>=2.1",
    "numpy",
)
IDENTITY = "psycopg-suite@example.com"
GROUP = "pii-readers"


def log(msg: str) -> None:
    print(f"[compat] {msg}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    pass


# ------------------------------------------------------------------------------------------
# Getting the suite


def _version_from_pyproject(text: str) -> str | None:
    m = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
    return m.group(1) if m else None


def _release_key(tag: str) -> tuple[int, ...] | None:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", tag)
    return tuple(int(p) for p in m.groups()) if m else None


def installed_psycopg_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("psycopg")
    except Exception:
        return None


def _copy_suite(root: Path, dest: Path) -> None:
    """Copy what the suite needs (tests/, tools/, pyproject.toml) from a source tree."""
    if not (root / "tests" / "conftest.py").is_file():
        raise HarnessError(f"{root} has no tests/conftest.py: not a psycopg source tree")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copytree(root / "tests", dest / "tests", ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    if (root / "tools").is_dir():
        shutil.copytree(root / "tools", dest / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    if (root / "pyproject.toml").is_file():  # pytest settings: filterwarnings=error, testpaths
        shutil.copy2(root / "pyproject.toml", dest / "pyproject.toml")
    if (root / "psycopg").is_dir():  # kept beside the suite, not on its import path
        shutil.copytree(root / "psycopg", dest / "_psycopg_src", ignore=shutil.ignore_patterns("__pycache__", "build"))


def _find_source_root(top: Path) -> Path:
    for cand in [top, *sorted(p for p in top.iterdir() if p.is_dir())]:
        if (cand / "tests" / "conftest.py").is_file():
            return cand
    raise HarnessError(f"no psycopg test suite (tests/conftest.py) in {top}")


def _extract(archive: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            z.extractall(into)
    else:
        with tarfile.open(archive) as t:
            t.extractall(into, filter="data")
    return into


def source_version(root: Path) -> str | None:
    for p in (root / "_psycopg_src" / "pyproject.toml", root / "psycopg" / "pyproject.toml", root / "PKG-INFO"):
        if p.is_file():
            text = p.read_text()
            v = _version_from_pyproject(text)
            if v:
                return v
            m = re.search(r"^Version:\s*(\S+)", text, re.M)
            if m:
                return m.group(1)
    return None


def obtain_suite(args: argparse.Namespace, work: Path) -> tuple[Path, str, str]:
    """Return (suite dir, psycopg version, where it came from)."""
    dest = work / "suite"
    if args.psycopg_src:
        root = Path(args.psycopg_src).resolve()
        _copy_suite(root, dest)
        version = args.psycopg_version or source_version(dest) or source_version(root)
        origin = f"checkout {root.name}"
    elif args.psycopg_git:
        gitdir = Path(args.psycopg_git).resolve()
        git = ["git", f"--git-dir={gitdir}"]
        ref = args.ref
        if not ref:
            tags = subprocess.run([*git, "tag"], capture_output=True, text=True, check=True).stdout.split()
            wanted = args.psycopg_version or installed_psycopg_version()
            if wanted in tags:
                ref = wanted
            else:
                releases = sorted((t for t in tags if _release_key(t)), key=_release_key)  # type: ignore[arg-type]
                below = [t for t in releases if wanted and _release_key(t) <= (_release_key(wanted) or (999,))]  # type: ignore[operator]
                if not below:
                    raise HarnessError(f"no release tag in {gitdir}; pass --ref")
                ref = below[-1]
                log(f"tag {wanted} is not in the git directory; using the newest release tag below it, {ref}")
        with tempfile.TemporaryDirectory() as tmp:
            tar = Path(tmp) / "src.tar"
            with open(tar, "wb") as f:
                subprocess.run([*git, "archive", ref], stdout=f, check=True)
            _extract(tar, Path(tmp) / "x")
            _copy_suite(_find_source_root(Path(tmp) / "x"), dest)
        version = args.psycopg_version or source_version(dest)
        origin = f"git ref {ref}"
    elif args.psycopg_archive:
        with tempfile.TemporaryDirectory() as tmp:
            src = args.psycopg_archive
            if re.match(r"https?://", src):
                local = Path(tmp) / "archive"
                log(f"downloading {src}")
                urllib.request.urlretrieve(src, local)
            else:
                local = Path(src).resolve()
            _extract(local, Path(tmp) / "x")
            _copy_suite(_find_source_root(Path(tmp) / "x"), dest)
        version = args.psycopg_version or source_version(dest)
        origin = f"archive {Path(args.psycopg_archive).name}"
    elif args.pypi_sdist:
        version = args.psycopg_version or installed_psycopg_version()
        if not version:
            raise HarnessError("--pypi-sdist needs --psycopg-version (psycopg is not installed here)")
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", f"psycopg=={version}", "--no-binary", ":all:", "--no-deps", "-d", tmp],
                check=True,
            )
            archives = list(Path(tmp).glob("psycopg-*"))
            if not archives:
                raise HarnessError(f"pip downloaded no sdist of psycopg {version}")
            _extract(archives[0], Path(tmp) / "x")
            try:
                root = _find_source_root(Path(tmp) / "x")
            except HarnessError:
                raise HarnessError(
                    f"psycopg {version}'s sdist on PyPI does not include the test suite; "
                    "use --psycopg-src, --psycopg-git or --psycopg-archive"
                ) from None
            _copy_suite(root, dest)
        origin = f"PyPI sdist {version}"
    else:
        raise HarnessError("say where psycopg's test suite is: --psycopg-src, --psycopg-git, --psycopg-archive or --pypi-sdist")
    if not version:
        raise HarnessError("cannot tell the psycopg version of that suite; pass --psycopg-version")
    return dest, version, origin


# ------------------------------------------------------------------------------------------
# The suite's virtualenv


def suite_venv(work: Path, version: str, suite: Path, extra: list[str]) -> tuple[Path, dict[str, str]]:
    """A virtualenv with psycopg ``version`` and the suite's dependencies; reused when it
    already has exactly those requirements. Returns (python, extra environment)."""
    env: dict[str, str] = {}
    from_source = "dev" in version or "+" in version
    if from_source:
        src = suite / "_psycopg_src"
        if not src.is_dir():
            raise HarnessError(f"psycopg {version} is not a release; the suite's source tree must include psycopg/")
        psycopg_req = str(src)
        env["PSYCOPG_IMPL"] = "python"
    else:
        psycopg_req = f"psycopg[binary]=={version}"
    reqs = [psycopg_req, *SUITE_REQUIREMENTS, *extra]
    path = work / f"venv-{version}"
    python = path / "bin" / "python"
    stamp = path / "requirements.json"
    if python.exists() and stamp.is_file() and json.loads(stamp.read_text()) == reqs:
        return python, env
    log(f"creating the suite's virtualenv ({len(reqs)} requirements)")
    if path.exists():
        shutil.rmtree(path)
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    r = subprocess.run([*pip, *reqs], capture_output=True, text=True)
    if r.returncode != 0:
        raise HarnessError(f"installing the suite's requirements failed:\n{r.stdout}\n{r.stderr}")
    stamp.write_text(json.dumps(reqs))
    return python, env


# ------------------------------------------------------------------------------------------
# PostgreSQL and dbsentry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def recreate_database(admin_dsn: str, dbname: str, owner: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("create database {} owner {}").format(sql.Identifier(dbname), sql.Identifier(owner)))


def conninfo(**kw: Any) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo("", **{k: v for k, v in kw.items() if v is not None})


@dataclass
class Proxy:
    port: int
    config: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None


DBSENTRY_CMD: list[str] = [sys.executable, "-m", "dbsentry"]


def dbsentry_cmd() -> list[str]:
    return DBSENTRY_CMD


@contextlib.contextmanager
def run_dbsentry(args: argparse.Namespace, up: dict[str, Any], results: Path) -> Iterator[Proxy]:
    import yaml

    with tempfile.TemporaryDirectory(prefix="dbsentry-compat-") as tmp:
        port = free_port()
        connection: dict[str, Any] = {
            "host": up["host"],
            "port": int(up["port"]),
            "database": args.database,
            "user": up["user"],
            "environment": "staging",
        }
        if up.get("password"):
            connection["password"] = up["password"]
        data: dict[str, Any] = {
            "state_dir": str(Path(tmp) / "state"),
            "listen": {"postgres": f"127.0.0.1:{port}", "http": None},
            "workers": 1,  # one process, as the suite's recorded results were made with
            "tls": {"require_client_tls": args.require_client_tls},
            # psycopg's suite logs in with wrong credentials on purpose: no lockout.
            "identity": {"max_failures": 1_000_000},
            # Clients select the connection by dbname: use the database's own name, so the
            # suite's `conn.info.dbname` checks see what they would see directly.
            "connections": {args.database: connection},
        }
        config = Path(tmp) / "dbsentry.yaml"
        config.write_text(yaml.safe_dump(data))
        log_path = results / "dbsentry-serve.log"
        with open(log_path, "ab" if args.resume else "wb") as logf:
            proc = subprocess.Popen(
                [*dbsentry_cmd(), "serve", "-c", str(config), "--log-level", args.dbsentry_log_level],
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise HarnessError(f"dbsentry exited with {proc.returncode}; see {log_path}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise HarnessError(f"dbsentry did not listen on port {port}; see {log_path}") from None
                    time.sleep(0.1)
            yield Proxy(port, config, log_path, proc)
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def create_token(config: Path) -> str:
    r = subprocess.run(
        [*dbsentry_cmd(), "token", "create", "-c", str(config), "--identity", IDENTITY, "--group", GROUP, "--ttl", "24h"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        raise HarnessError(f"dbsentry token create failed: {r.stderr}")
    return r.stdout.strip()


# ------------------------------------------------------------------------------------------
# Running pytest and reading its results


def pytest_command(python: Path, args: argparse.Namespace, junit: Path, cache_dir: Path, nodeids: list[str] | None = None) -> list[str]:
    cmd = [
        str(python), "-m", "pytest", "-q", "-p", "no:randomly", "-p", "_suite_progress",
        f"--timeout={args.timeout}",
        f"--junitxml={junit}", "-o", "junit_family=xunit1",
        "-o", f"cache_dir={cache_dir}",
    ]
    for p in IGNORED_PATHS:
        cmd.append(f"--ignore={p}")
    not_markers = [m for m in args.not_markers.split(",") if m]
    if not_markers:
        cmd += ["-m", " and ".join(f"not {m}" for m in not_markers)]
    if nodeids:
        # A rerun of chosen tests: the options, without the test paths given to the run.
        return cmd + [a for a in args.pytest_args if not _is_test_path(a)] + nodeids
    cmd += args.pytest_args
    if not any(_is_test_path(a) for a in args.pytest_args):
        cmd.append("tests")
    return cmd


def _is_test_path(arg: str) -> bool:
    return arg == "tests" or arg.startswith("tests/")


@dataclass
class Outcome:
    nodeid: str
    status: str  # passed, failed, error, skipped, xfailed, crashed, hung
    message: str = ""


BAD = ("failed", "error", "crashed", "hung")


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:400]
    return ""


def read_progress(path: Path) -> tuple[dict[str, Outcome], str | None]:
    """Outcomes from the progress plugin's file, and the test that started and never
    finished (the one running when the process died), if any."""
    reports: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    order: list[str] = []
    running: str | None = None
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            nodeid = rec["nodeid"]
            if rec["event"] == "start":
                running = nodeid
                reports.pop(nodeid, None)  # started again (a resumed run): the new result counts
                if nodeid not in order:
                    order.append(nodeid)
            elif rec["event"] == "report":
                reports[nodeid][rec["when"]] = rec
            elif rec["event"] == "finish" and running == nodeid:
                running = None
    out: dict[str, Outcome] = {}
    for nodeid in order:
        phases = reports.get(nodeid, {})
        if "teardown" not in phases:
            continue  # not run to its end: the process died during it
        setup, call, teardown = phases.get("setup"), phases.get("call"), phases.get("teardown")
        status, message = "passed", ""
        if setup and setup["outcome"] == "failed":
            status, message = "error", "setup: " + _first_line(setup["message"])
        elif setup and setup["outcome"] == "skipped":
            status, message = ("xfailed" if setup["xfail"] else "skipped"), _first_line(setup["message"])
        elif call:
            if call["outcome"] == "failed":
                status, message = "failed", _first_line(call["message"])
            elif call["outcome"] == "skipped":
                status, message = ("xfailed" if call["xfail"] else "skipped"), _first_line(call["message"])
        if teardown and teardown["outcome"] == "failed":
            td = "teardown: " + _first_line(teardown["message"])
            if status in ("passed", "skipped", "xfailed"):
                status, message = "error", td
            else:
                message += " | " + td
        out[nodeid] = Outcome(nodeid, status, message)
    return out, running


def run_suite(
    label: str, python: Path, args: argparse.Namespace, suite: Path, dsn: str, env_extra: dict[str, str],
    results: Path, name: str, nodeids: list[str] | None = None, resume: bool = False,
) -> tuple[dict[str, Outcome], float]:
    """Run the suite (or ``nodeids``) with pytest; should the test process die (a crash
    of the driver, say), record the test it was running as crashed and resume after it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PSYCOPG_", "PYTEST_", "COMPAT_"))}
    env.update(env_extra)
    env["PSYCOPG_TEST_DSN"] = dsn  # in the environment, not on the command line: it holds a token
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent)  # the progress plugin
    progress, skip, crashes = results / f"{name}.progress.jsonl", results / f"{name}.skip", results / f"{name}.crashed.json"
    env["COMPAT_PROGRESS_FILE"], env["COMPAT_SKIP_FILE"] = str(progress), str(skip)
    logs = [f for f in results.glob(f"{name}*.log") if re.fullmatch(rf"{re.escape(name)}(-\d+)?\.log", f.name)]
    crashed: dict[str, Outcome] = {}
    first = 1
    if resume and progress.is_file():
        # Go on from an interrupted run: skip what finished (or crashed) then.
        if crashes.is_file():
            crashed = {o["nodeid"]: Outcome(**o) for o in json.loads(crashes.read_text())}
        done, _ = read_progress(progress)
        skip.write_text("\n".join([*done, *crashed]) + "\n")
        first = len(logs) + 1
        log(f"{label}: resuming after {len(done)} finished and {len(crashed)} crashed tests")
    else:
        for f in (progress, skip, crashes, *logs):
            f.unlink(missing_ok=True)
    start = time.monotonic()
    for attempt in range(first, first + args.max_crashes + 1):
        suffix = "" if attempt == 1 else f"-{attempt}"
        log_path, cache = results / f"{name}{suffix}.log", results / f"cache-{name}"
        shutil.rmtree(cache, ignore_errors=True)  # psycopg's conftest refuses to run after a crash it recorded there
        cmd = pytest_command(python, args, results / f"{name}{suffix}.xml", cache, nodeids)
        remaining = args.run_timeout - (time.monotonic() - start)
        again = " (resumed)" if attempt == first and resume else " again, after the crash" if attempt > 1 else ""
        log(f"{label}: running psycopg's suite{again} (log: {log_path.name})")
        with open(log_path, "wb") as out:
            out.write((" ".join(cmd) + "\n\n").encode())
            out.flush()
            proc = subprocess.Popen(cmd, cwd=suite, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc, hung = _watch(proc, progress, time.monotonic() + max(remaining, 1), args.hang_timeout)
            except BaseException:  # ^C or SIGTERM of the harness: do not leave pytest running
                _stop(proc)
                raise
            if rc is None:
                log(f"{label}: the run exceeded {args.run_timeout}s, stopping it")
                rc = _stop(proc)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
        log(f"{label}: pytest exited {rc} after {time.monotonic() - start:.0f}s: {tail[0] if tail else ''}")
        outcomes, running = read_progress(progress)
        if running is None or rc in (0, 1, 2, 3, 4, 5) or time.monotonic() - start >= args.run_timeout:
            break
        if hung:
            log(f"{label}: no test finished for {args.hang_timeout}s; stopped the test process (SIGABRT: stacks in the log) in {running}")
            crashed[running] = Outcome(running, "hung", f"hung: nothing finished for {args.hang_timeout}s although pytest-timeout is {args.timeout}s; stopped")
        else:
            why = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
            log(f"{label}: the test process died ({why}) in {running}")
            crashed[running] = Outcome(running, "crashed", f"the test process died ({why}) during this test")
        crashes.write_text(json.dumps([asdict(o) for o in crashed.values()], indent=1))
        skip.write_text("\n".join([*outcomes, *crashed]) + "\n")
    else:
        log(f"{label}: stopped after {args.max_crashes} crashes")
    outcomes, _ = read_progress(progress)
    outcomes.update(crashed)
    return outcomes, time.monotonic() - start


def _watch(proc: subprocess.Popen[bytes], progress: Path, deadline: float, hang_timeout: float) -> tuple[int | None, bool]:
    """Wait for pytest to exit: (exit status, hung), or (None, False) at the deadline. A test
    can hang past pytest-timeout (its exception swallowed by an event loop that then waits
    forever for tasks to finish): when the progress file has not changed for
    ``hang_timeout`` seconds, SIGABRT the test process (faulthandler prints its stacks)."""
    last, last_change = -1.0, time.monotonic()
    while True:
        rc = proc.poll()
        if rc is not None:
            return rc, False
        now = time.monotonic()
        if now >= deadline:
            return None, False
        with contextlib.suppress(OSError):
            mtime = progress.stat().st_mtime
            if mtime != last:
                last, last_change = mtime, now
        if now - last_change > hang_timeout:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGABRT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(), True
        time.sleep(min(2.0, max(hang_timeout / 10, 0.1)))


def _stop(proc: subprocess.Popen[bytes]) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)  # pytest still writes its reports on ^C
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def save_outcomes(path: Path, outcomes: dict[str, Outcome]) -> None:
    path.write_text(json.dumps([asdict(o) for o in outcomes.values()], indent=1))


def load_outcomes(path: Path) -> dict[str, Outcome]:
    if not path.is_file():
        raise HarnessError(f"no earlier results in {path.name}: run both sides first")
    return {o["nodeid"]: Outcome(**o) for o in json.loads(path.read_text())}


def totals(results: dict[str, Outcome]) -> dict[str, int]:
    c = Counter(o.status for o in results.values())
    return {k: c.get(k, 0) for k in ("passed", "failed", "error", "crashed", "hung", "skipped", "xfailed")} | {"total": len(results)}


_NORMALISE = [
    (re.compile(r"0x[0-9a-f]+"), "0x…"),
    (re.compile(r"\b\d+(\.\d+)?\b"), "N"),
    (re.compile(r"'[^']*'"), "'…'"),
    (re.compile(r'"[^"]*"'), '"…"'),
]


def signature(message: str) -> str:
    """The message with numbers and quoted names blurred, to group failures by cause."""
    s = message
    for rx, rep in _NORMALISE:
        s = rx.sub(rep, s)
    return s[:200]


@dataclass
class Comparison:
    direct: dict[str, int]
    dbsentry: dict[str, int]
    only_dbsentry: list[dict[str, str]] = field(default_factory=list)
    skipped_only_dbsentry: list[dict[str, str]] = field(default_factory=list)
    only_direct: list[dict[str, str]] = field(default_factory=list)
    missing_dbsentry: list[str] = field(default_factory=list)
    both_failed: int = 0



def compare(direct: dict[str, Outcome], proxied: dict[str, Outcome], recheck: dict[str, Outcome] | None) -> Comparison:
    cmp = Comparison(totals(direct), totals(proxied))
    for nodeid, d in sorted(direct.items()):
        p = proxied.get(nodeid)
        if p is None:
            if d.status == "passed":
                cmp.missing_dbsentry.append(nodeid)
            continue
        if d.status == "passed" and p.status in BAD:
            entry = {"test": nodeid, "status": p.status, "error": p.message}
            if recheck is not None:
                r = recheck.get(nodeid)
                entry["recheck"] = r.status if r else "not run"
                if r and r.status in BAD and r.message != p.message:
                    entry["recheck_error"] = r.message
            cmp.only_dbsentry.append(entry)
        elif d.status == "passed" and p.status == "skipped":
            cmp.skipped_only_dbsentry.append({"test": nodeid, "reason": p.message})
        elif d.status in BAD and p.status == "passed":
            cmp.only_direct.append({"test": nodeid, "error": d.message})
        elif d.status in BAD and p.status in BAD:
            cmp.both_failed += 1
    return cmp


def render(cmp: Comparison, meta: dict[str, Any]) -> str:
    lines = [
        "# psycopg test suite: directly vs through dbsentry",
        "",
        f"- psycopg suite: {meta['suite']}; psycopg {meta['version']} ({meta['impl']}); server {meta['server']}",
        f"- pytest options: `{meta['pytest_options']}`",
        f"- run time: directly {meta['elapsed_direct']:.0f}s, through dbsentry {meta['elapsed_dbsentry']:.0f}s",
        "",
        "| | passed | failed | error | crashed | hung | skipped | xfailed | total |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, t in (("directly", cmp.direct), ("through dbsentry", cmp.dbsentry)):
        lines.append(f"| {label} | {t['passed']} | {t['failed']} | {t['error']} | {t['crashed']} | {t['hung']} | {t['skipped']} | {t['xfailed']} | {t['total']} |")
    lines += ["", f"## Pass directly, fail through dbsentry: {len(cmp.only_dbsentry)}", ""]
    if cmp.only_dbsentry and "recheck" in cmp.only_dbsentry[0]:
        flaky = [e for e in cmp.only_dbsentry if e["recheck"] == "passed"]
        lines.append(f"Rerun through dbsentry: {len(cmp.only_dbsentry) - len(flaky)} failed again, {len(flaky)} passed (flaky).")
        lines.append("")
    groups: dict[str, list[dict[str, str]]] = defaultdict(list)
    for e in cmp.only_dbsentry:
        groups[signature(e["error"])].append(e)
    for sig, entries in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        lines.append(f"### {len(entries)} x {sig or '(no message)'}")
        lines.append("")
        for e in entries:
            extra = f" [rerun: {e['recheck']}]" if "recheck" in e else ""
            lines.append(f"- `{e['test']}` ({e['status']}){extra}: {e['error']}")
        lines.append("")
    if cmp.skipped_only_dbsentry:
        lines += [f"## Pass directly, skipped through dbsentry: {len(cmp.skipped_only_dbsentry)}", ""]
        lines += [f"- `{e['test']}`: {e['reason']}" for e in cmp.skipped_only_dbsentry]
        lines.append("")
    if cmp.missing_dbsentry:
        lines += [f"## Pass directly, not reported through dbsentry (run stopped?): {len(cmp.missing_dbsentry)}", ""]
        lines += [f"- `{t}`" for t in cmp.missing_dbsentry[:200]]
        lines.append("")
    lines += [f"## Fail directly, pass through dbsentry: {len(cmp.only_direct)}", ""]
    lines += [f"- `{e['test']}`: {e['error']}" for e in cmp.only_direct]
    lines += ["", f"Fail both ways: {cmp.both_failed}", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("where psycopg's test suite comes from (one of)")
    src.add_argument("--psycopg-src", metavar="DIR", help="a psycopg source tree (git checkout or unpacked archive)")
    src.add_argument("--psycopg-git", metavar="GITDIR", help="a psycopg git directory (bare is fine); see --ref")
    src.add_argument("--ref", help="with --psycopg-git: the tag or commit (default: the tag of the installed psycopg's version, else the newest release tag below it)")
    src.add_argument("--psycopg-archive", metavar="FILE_OR_URL", help="a .tar.gz/.zip of psycopg's source, e.g. GitHub's archive of a release tag")
    src.add_argument("--pypi-sdist", action="store_true", help="psycopg's sdist from PyPI (only if that release ships its tests)")
    p.add_argument("--psycopg-version", help="psycopg version for the suite's virtualenv (default: the version of the source tree)")
    p.add_argument("--pg", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres", help="admin connection string to PostgreSQL (default: %(default)s)")
    p.add_argument("--database", default="psycopg_test", help="database the suite runs in; dropped and recreated before each run (default: %(default)s)")
    p.add_argument("--work", default=str(DEFAULT_WORK), help="working directory: suite copy, virtualenv, results (default: .compat-work/psycopg in the repository)")
    p.add_argument("--only", choices=["both", "direct", "dbsentry"], default="both", help="run one side only (the other side's previous results are reused for the comparison)")
    p.add_argument("--timeout", type=int, default=180, help="per-test timeout in seconds (pytest-timeout; default: %(default)s)")
    p.add_argument("--run-timeout", type=int, default=4 * 3600, help="timeout of one whole pytest run in seconds (default: %(default)s)")
    p.add_argument("--hang-timeout", type=int, default=600, help="stop the test process when no test finished for this many seconds (default: %(default)s)")
    p.add_argument("--max-crashes", type=int, default=20, help="resume a run after at most this many crashes or hangs of the test process (default: %(default)s)")
    p.add_argument("--not-markers", default=",".join(DEFAULT_NOT_MARKERS), help="comma-separated pytest markers to deselect (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="go on with an interrupted run (with --only: that side's), skipping the tests it finished; the database is not recreated")
    p.add_argument("--no-recheck", dest="recheck", action="store_false", help="do not rerun the tests that failed only through dbsentry")
    p.add_argument("--require-client-tls", action="store_true", help="keep dbsentry's default of refusing plaintext clients (the suite's pproxy tests connect with sslmode=disable)")
    p.add_argument("--sslmode", default="require", help="sslmode of the suite's connections to dbsentry (default: %(default)s)")
    p.add_argument("--dbsentry", metavar="CMD", help="how to run dbsentry, e.g. 'path/to/.venv/bin/dbsentry' (default: this Python's -m dbsentry)")
    p.add_argument("--dbsentry-log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--extra-requirement", action="append", default=[], help="another package for the suite's virtualenv (repeatable), e.g. gevent")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    return p.parse_args(argv)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    if args.dbsentry:
        DBSENTRY_CMD[:] = shlex.split(args.dbsentry)
    work = Path(args.work).resolve()
    results = work / "results"
    results.mkdir(parents=True, exist_ok=True)
    try:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        log("run this with the Python of dbsentry's virtualenv (it needs psycopg, PyYAML and dbsentry)")
        return 2
    try:
        suite, version, origin = obtain_suite(args, work)
        log(f"psycopg suite from {origin}, psycopg {version}")
        python, env_extra = suite_venv(work, version, suite, args.extra_requirement)
        impl = subprocess.run(
            [str(python), "-c", "import psycopg; print(psycopg.__version__, psycopg.pq.__impl__)"],
            capture_output=True, text=True, check=True, env={**os.environ, **env_extra},
        ).stdout.strip()
        up = conninfo_to_dict(args.pg)
        up.setdefault("host", "127.0.0.1")
        up.setdefault("port", 5432)
        up.setdefault("user", "postgres")
        with psycopg.connect(args.pg) as c:
            server = c.execute("show server_version").fetchone()[0]  # type: ignore[index]
        # The port only when it is not libpq's default: test_get_params expects every
        # keyword of the DSN back from conn.info.get_parameters(), which omits defaults.
        port = None if str(up["port"]) == "5432" else up["port"]
        direct_dsn = conninfo(host=up["host"], port=port, user=up["user"], password=up.get("password"), dbname=args.database)

        elapsed_direct = elapsed_proxy = 0.0
        if args.only in ("both", "direct"):
            if not args.resume:
                recreate_database(args.pg, args.database, up["user"])
            direct, elapsed_direct = run_suite("direct", python, args, suite, direct_dsn, env_extra, results, "direct", resume=args.resume)
            save_outcomes(results / "direct.outcomes.json", direct)
        else:
            direct = load_outcomes(results / "direct.outcomes.json")
        recheck: dict[str, Outcome] | None = None
        if args.only in ("both", "dbsentry"):
            if not args.resume:
                recreate_database(args.pg, args.database, up["user"])
            with run_dbsentry(args, up, results) as proxy:
                token = create_token(proxy.config)
                proxy_dsn = conninfo(
                    host="127.0.0.1", port=proxy.port, user=IDENTITY, password=token, dbname=args.database, sslmode=args.sslmode
                )
                proxied, elapsed_proxy = run_suite(
                    "dbsentry", python, args, suite, proxy_dsn, env_extra, results, "dbsentry", resume=args.resume
                )
                save_outcomes(results / "dbsentry.outcomes.json", proxied)
                if not proxy.alive():
                    log(f"dbsentry died during the run (exit {proxy.process.returncode}); see {proxy.log_path}")
                elif args.recheck:
                    ids = [e["test"] for e in compare(direct, proxied, None).only_dbsentry]
                    if ids:
                        recheck, _ = run_suite(
                            f"dbsentry, rerun of {len(ids)}", python, args, suite, proxy_dsn, env_extra, results, "dbsentry-recheck", ids
                        )
                        save_outcomes(results / "dbsentry-recheck.outcomes.json", recheck)
        else:
            proxied = load_outcomes(results / "dbsentry.outcomes.json")
        if not direct or not proxied:
            raise HarnessError("no results to compare (" + ("direct run" if not direct else "run through dbsentry") + " has none)")
        cmp = compare(direct, proxied, recheck)
        meta = {
            "suite": origin,
            "version": version,
            "impl": impl,
            "server": server,
            "pytest_options": " ".join(pytest_command(Path("python"), args, Path("RESULT.xml"), Path("CACHE"))[3:]),
            "elapsed_direct": elapsed_direct,
            "elapsed_dbsentry": elapsed_proxy,
        }
        report = render(cmp, meta)
        (results / "report.md").write_text(report)
        (results / "summary.json").write_text(json.dumps({"meta": meta, **asdict(cmp)}, indent=2))
        print(report)
        log(f"written {results / 'report.md'} and summary.json")
        return 1 if cmp.only_dbsentry else 0
    except (HarnessError, subprocess.CalledProcessError, OSError, psycopg.Error) as exc:
        log(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())

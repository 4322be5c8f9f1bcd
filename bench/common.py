"""Shared pieces of the benchmarks: messages, child-process helpers, the PostgreSQL to
measure against, and readings of a process tree's CPU time and memory from /proc."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

try:
    import psycopg
    import psycopg.sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("the benchmarks need psycopg: pip install -e '.[test]'")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO / "bench" / "results"


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A setup step failed; the message says which and why."""


def raise_interrupt(signum: int, frame: Any) -> None:
    """Signal handler: SIGTERM and SIGHUP unwind like Ctrl-C, so that cleanup runs."""
    raise KeyboardInterrupt


def run_main(
    args: Any, bench: Callable[[Any, contextlib.ExitStack], int]
) -> int:
    """Run ``bench(args, stack)`` the way every benchmark script does: every process it
    starts goes on ``stack`` and is stopped on exit, error, Ctrl-C, kill or a closed
    terminal. Exit status: bench's own, 2 on a setup error, 130 when interrupted."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_interrupt)
    try:
        with contextlib.ExitStack() as stack:
            return bench(args, stack)
    except BenchError as exc:
        say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        say("interrupted; stopped the proxies")
        return 130


# --------------------------------------------------------------------------------------
# Small helpers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(
    host: str, port: int, proc: subprocess.Popen[bytes], log: Path, name: str, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with status {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on {host}:{port} within {timeout:.0f} s:\n{tail(log)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run(
    cmd: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with captured text output, a timeout and a readable error."""
    try:
        proc = subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{cmd[0]} took longer than {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        raise BenchError(
            f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def find_binary(name: str) -> str | None:
    """``name`` on PATH, or in the sbin directories a non-root PATH may lack."""
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def first_line(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])


def loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_facts() -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "platform": platform.platform(),
        "loadavg_at_start": loadavg(),
    }


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return rev.stdout.strip() or "unknown"


def dbsentry_version() -> str:
    try:
        from dbsentry import __version__

        return str(__version__)
    except ImportError:
        return "unknown"


def display_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


def raise_nofile_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (and, as root, the hard
    limit itself up to ``wanted`` when it is lower); child processes inherit it.  Returns
    the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < wanted:
        ceiling = wanted
        with contextlib.suppress(OSError, ValueError):
            ceiling = min(wanted, int(Path("/proc/sys/fs/nr_open").read_text()))
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, ceiling))
            soft, hard = ceiling, ceiling
    if soft != hard:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 30


# --------------------------------------------------------------------------------------
# A process tree's CPU time and memory, from /proc (Linux)

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _parent_map() -> dict[int, list[int]]:
    """Every running process's children, from the ppid field of /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its running descendants."""
    children = _parent_map()
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (all its threads) and its running descendants,
    from the utime and stime fields of /proc/<pid>/stat; None when it is gone."""
    total = 0
    seen = False
    for p in process_tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # after "pid (comm)": state is field 3, utime 14 and stime 15 (1-based)
        total += int(fields[11]) + int(fields[12])
        seen = True
    return total / _TICKS if seen else None


def rss_kib(pid: int) -> int | None:
    """Resident memory (VmRSS) of ``pid`` and its running descendants, in KiB."""
    total = 0
    seen = False
    for p in process_tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                seen = True
                break
    return total if seen else None


# --------------------------------------------------------------------------------------
# PostgreSQL


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int
    user: str
    dbname: str
    password: str | None
    source: str

    def conninfo(self, **overrides: Any) -> str:
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.dbname,
            "password": self.password,
        }
        params.update(overrides)
        return make_conninfo("", **{k: v for k, v in params.items() if v is not None})


def _answers(up: Upstream) -> bool:
    try:
        with psycopg.connect(up.conninfo(connect_timeout=3)) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def find_upstream() -> Upstream:
    env = os.environ.get("BENCH_PG_DSN")
    if env:
        p = conninfo_to_dict(env)
        return Upstream(
            host=str(p.get("host", "127.0.0.1")),
            port=int(str(p.get("port") or 5432)),
            user=str(p.get("user", "postgres")),
            dbname=str(p.get("dbname", "test")),
            password=str(p["password"]) if "password" in p else None,
            source="$BENCH_PG_DSN",
        )
    local = Upstream("127.0.0.1", 5432, "postgres", "test", None, "127.0.0.1:5432")
    if _answers(local):
        return local
    say("no PostgreSQL on 127.0.0.1:5432; starting an embedded one (tests/support/pg.py)")
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from support.pg import find_postgres  # type: ignore[import-not-found]

        srv = find_postgres()
    except Exception as exc:
        raise BenchError(f"could not start an embedded PostgreSQL: {exc}") from exc
    except BaseException as exc:  # pytest.skip raises a BaseException subclass
        if type(exc).__name__ == "Skipped":
            raise BenchError(f"no PostgreSQL available: {exc}") from None
        raise
    return Upstream(
        srv.host, srv.port, srv.user, srv.dbname, srv.password, "embedded (pgserver binaries)"
    )


def server_facts(up: Upstream) -> dict[str, Any]:
    with psycopg.connect(up.conninfo(connect_timeout=10), autocommit=True) as conn:

        def show(name: str) -> str:
            row = conn.execute(f"SHOW {name}").fetchone()
            return str(row[0]) if row else ""

        return {
            "server_version": show("server_version"),
            "ssl": show("ssl") == "on",
            "max_connections": int(show("max_connections")),
            "superuser_reserved_connections": int(show("superuser_reserved_connections")),
            "shared_buffers": show("shared_buffers"),
        }


def free_connection_slots(up: Upstream, reserved: int) -> int | None:
    """Connections the server would still accept from an ordinary role (None: unknown)."""
    try:
        with psycopg.connect(up.conninfo(connect_timeout=5), autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_setting('max_connections')::int - count(*)::int "
                "FROM pg_stat_activity WHERE backend_type = 'client backend'"
            ).fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) - reserved if row else None


def bench_database(up: Upstream, name: str) -> Upstream:
    """The upstream, switched to a database of the benchmark's own (created if missing), so
    that nothing else using the server's database re-initialises pgbench tables under it."""
    if not name or name == up.dbname:
        return up
    try:
        with psycopg.connect(up.conninfo(connect_timeout=10), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                say(f"creating database {name}")
                conn.execute(
                    psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name))
                )
    except psycopg.Error as exc:
        say(f"warning: cannot use a database of our own ({exc}); using {up.dbname}")
        return up
    return replace(up, dbname=name)


def ensure_pgbench_tables(up: Upstream, pgbench: str, scale: int) -> None:
    wanted = scale * 100_000
    rows: int | None
    try:
        with psycopg.connect(up.conninfo(connect_timeout=10)) as conn:
            row = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
            rows = int(row[0]) if row else 0
    except psycopg.errors.UndefinedTable:
        rows = None
    if rows == wanted:
        say(f"pgbench tables present (scale {scale}, {rows} accounts)")
        return
    what = "missing" if rows is None else f"at another scale ({rows} accounts)"
    say(f"pgbench tables {what}: running pgbench -i -q -s {scale} (drops and recreates pgbench_*)")
    run([pgbench, "-i", "-q", "-s", str(scale), up.conninfo()], timeout=1800)


def fdatasync_probe(directory: Path, count: int = 300, record_bytes: int = 800) -> dict[str, float]:
    """What an ``fdatasync`` costs where the audit logs are: ``record_bytes`` written into
    a file that holds zeros ahead of its end (as the audit log's open segment does), then
    ``fdatasync``, ``count`` times; p50 and p99 of the fdatasync in ms, and its mean CPU in
    µs.  Issue 17 bounds ``effect``'s added latency by this p50."""
    path = Path(directory) / "fdatasync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, bytes(count * record_bytes + 4096), 0)
        os.fsync(fd)
        sync = getattr(os, "fdatasync", os.fsync)
        record = b"r" * record_bytes
        waits: list[float] = []
        cpu = 0.0
        for i in range(count):
            os.pwrite(fd, record, i * record_bytes)
            c0, t0 = time.process_time(), time.perf_counter()
            sync(fd)
            waits.append(time.perf_counter() - t0)
            cpu += time.process_time() - c0
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    waits.sort()
    return {
        "p50_ms": waits[len(waits) // 2] * 1000,
        "p99_ms": waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1000,
        "cpu_us": cpu / count * 1e6,
        "count": count,
    }

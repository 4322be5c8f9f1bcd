#!/usr/bin/env python3
"""Throughput and latency of dbsentry against PgBouncer and a direct connection.

Runs the same read-only pgbench workload (``pgbench -n -S``: one primary-key SELECT per
transaction) against three targets that all reach the same PostgreSQL database:

* ``direct``    pgbench -> PostgreSQL
* ``pgbouncer`` pgbench -> PgBouncer (session pooling) -> PostgreSQL
* ``dbsentry``  pgbench -> dbsentry (token login, one worker) -> PostgreSQL

The targets are measured alternately, round after round (the order rotates every round),
so that noise on the machine hits all of them alike; the median over the rounds is
reported.  With ``--tls`` the clients also talk TLS to PgBouncer and dbsentry (and to
PostgreSQL directly when its ``ssl`` is on), compared only with each other.

Usage::

    python bench/compare.py --quick                       # CI smoke: 1 round of 2 s
    python bench/compare.py --rounds 3 --duration 10 --clients 8
    python bench/compare.py --modes prepared --tls --json out.json
    python bench/compare.py --profile                     # also py-spy the proxy

PostgreSQL: ``$BENCH_PG_DSN`` (a libpq connection string), else 127.0.0.1:5432 as user
``postgres``, database ``test`` when that answers, else an embedded server started by
the test support code (``tests/support/pg.py``).  The pgbench tables are created there
(``pgbench -i``) when missing or of another scale.

Results go to ``bench/results/<timestamp>.json`` (git-ignored) unless ``--json`` says
otherwise.  See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

try:
    import psycopg
    import psycopg.sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("bench/compare.py needs psycopg: pip install -e '.[test]'")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO / "bench" / "results"
CONNECTION_NAME = "bench"  # the dbsentry connection and the PgBouncer database name
IDENTITY = "bench@example.com"
ALL_MODES = ("simple", "extended", "prepared")
TARGET_ORDER = ("direct", "pgbouncer", "dbsentry")


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A setup step failed; the message says which and why."""


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
    return (
        (out.stdout or out.stderr).strip().splitlines()[0]
        if (out.stdout or out.stderr).strip()
        else "unknown"
    )


def percentile(sorted_values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])


# --------------------------------------------------------------------------------------
# Child processes: started in their own session, stopped on exit, Ctrl-C or error


@dataclass
class Service:
    """A proxy process: its own session (so it survives our terminal's Ctrl-C until we
    stop it), its output in ``stdout_log``, its errors in ``log``; restartable."""

    name: str
    cmd: list[str]
    port: int
    log: Path
    stdout_log: Path
    user: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        with open(self.stdout_log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=self.user,
                group=pwd.getpwnam(self.user).pw_gid if self.user else None,
            )
        try:
            wait_for_port("127.0.0.1", self.port, self.proc, self.log, self.name)
        except BaseException:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_status(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


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
            "shared_buffers": show("shared_buffers"),
        }


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


# --------------------------------------------------------------------------------------
# TLS material (one self-signed EC P-256 certificate for PgBouncer and dbsentry alike)


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "bench.crt", directory / "bench.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.chmod(0o644)
    key_path.chmod(0o600)
    return cert_path, key_path


# --------------------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    name: str  # direct | pgbouncer | dbsentry
    tls: bool
    conninfo: str  # without the password
    password: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}{'+tls' if self.tls else ''}"

    @property
    def env(self) -> dict[str, str]:
        return {"PGPASSWORD": self.password} if self.password else {}


def check_target(t: Target) -> None:
    """One query through the target, so a wrong setup fails before any measurement."""
    try:
        with psycopg.connect(t.conninfo, password=t.password, connect_timeout=10) as conn:
            conn.execute("SELECT abalance FROM pgbench_accounts WHERE aid = 1").fetchone()
    except psycopg.Error as exc:
        raise BenchError(f"cannot query through {t.label}: {exc}") from exc


def pgbouncer_user() -> str | None:
    """The OS user PgBouncer runs as: it refuses to run as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise BenchError(
        "running as root and neither a 'postgres' nor a 'nobody' user exists for PgBouncer"
    )


def ensure_pgbouncer() -> str | None:
    found = find_binary("pgbouncer")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("pgbouncer not found: installing the Debian package (apt-get install pgbouncer)")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "pgbouncer"]
        if run(install, timeout=600, env=env, check=False).returncode != 0:
            run(["apt-get", "update"], timeout=600, env=env, check=False)  # stale package lists
            run(install, timeout=600, env=env, check=False)
        found = find_binary("pgbouncer")
        if found:
            return found
    say(
        "PgBouncer is not installed and cannot be installed from here (needs root and apt-get); "
        "install it (Debian/Ubuntu: apt-get install pgbouncer; macOS: brew install pgbouncer) "
        "to get the PgBouncer rows. Continuing without them."
    )
    return None


def pgbouncer_settings(clients: int, tls: bool) -> dict[str, str]:
    """The PgBouncer settings that matter for the comparison (paths added at start)."""
    settings = {
        "pool_mode": "session",
        "listen_addr": "127.0.0.1",
        "auth_type": "trust",
        "max_client_conn": str(max(100, 2 * clients + 10)),
        "default_pool_size": str(clients + 2),
        "ignore_startup_parameters": "extra_float_digits,options",
        "server_tls_sslmode": "disable",
        "log_connections": "0",
        "log_disconnections": "0",
        "log_pooler_errors": "1",
        "log_stats": "0",
        "stats_period": "60",
        "verbose": "0",
    }
    if tls:
        settings["client_tls_sslmode"] = "require"
    else:
        settings["client_tls_sslmode"] = "disable"
    return settings


def start_pgbouncer(
    binary: str, up: Upstream, workdir: Path, clients: int, tls_files: tuple[Path, Path] | None
) -> tuple[Service, Target, dict[str, str]]:
    tls = tls_files is not None
    user = pgbouncer_user()
    directory = workdir / f"pgbouncer{'-tls' if tls else ''}"
    directory.mkdir()
    port = free_port()
    settings = pgbouncer_settings(clients, tls)
    db_params = {
        "host": up.host,
        "port": up.port,
        "dbname": up.dbname,
        "user": up.user,
        "password": up.password,
    }
    db_line = " ".join(f"{k}={v}" for k, v in db_params.items() if v is not None)
    auth_file = directory / "userlist.txt"
    auth_file.write_text(f'"{up.user}" ""\n')
    files = {
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_file": str(auth_file),
        "logfile": str(directory / "pgbouncer.log"),
    }
    if tls_files:
        cert, key = tls_files
        shutil.copy(cert, directory / cert.name)
        shutil.copy(key, directory / key.name)
        (directory / key.name).chmod(0o600)
        files["client_tls_cert_file"] = str(directory / cert.name)
        files["client_tls_key_file"] = str(directory / key.name)
    lines = ["[databases]", f"{CONNECTION_NAME} = {db_line}", "", "[pgbouncer]"]
    lines += [f"{k} = {v}" for k, v in {**settings, **files}.items()]
    ini = directory / "pgbouncer.ini"
    ini.write_text("\n".join(lines) + "\n")
    if user:
        uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
        for path in (directory, *directory.iterdir()):
            os.chown(path, uid, gid)
        workdir.chmod(0o755)  # let the unprivileged user reach its directory
    service = Service(
        f"pgbouncer{'+tls' if tls else ''}",
        [binary, str(ini)],
        port,
        log=directory / "pgbouncer.log",
        stdout_log=directory / "stdout.log",
        user=user,
    )
    service.start()
    target = Target(
        "pgbouncer",
        tls,
        make_conninfo(
            "",
            host="127.0.0.1",
            port=port,
            dbname=CONNECTION_NAME,
            user=up.user,
            sslmode="require" if tls else "disable",
        ),
    )
    return service, target, {**settings, "run_as": user or "(current user)"}


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def start_dbsentry(
    up: Upstream, workdir: Path, tls_files: tuple[Path, Path] | None, extra: dict[str, Any]
) -> tuple[Service, Target, dict[str, Any]]:
    import yaml

    tls = tls_files is not None
    directory = workdir / f"dbsentry{'-tls' if tls else ''}"
    directory.mkdir()
    port = free_port()
    connection: dict[str, Any] = {
        "host": up.host,
        "port": up.port,
        "database": up.dbname,
        "user": up.user,
        "environment": "development",
    }
    if up.password:
        connection["password"] = up.password
    tls_section: dict[str, Any] = {"require_client_tls": tls}
    if tls_files:
        tls_section.update(cert=str(tls_files[0]), key=str(tls_files[1]))
    config = {
        "state_dir": str(directory / "state"),
        "listen": {"postgres": f"127.0.0.1:{port}", "http": None},
        "tls": tls_section,
        "connections": {CONNECTION_NAME: connection},
    }
    config = merge(config, extra)
    config_path = directory / "dbsentry.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "dbsentry"]
    create = ["token", "create", "-c", str(config_path), "--identity", IDENTITY, "--group", "bench"]
    token = run([*cli, *create, "--ttl", "24h"], timeout=60).stdout.strip()
    if not token:
        raise BenchError("dbsentry token create printed no token")
    log = directory / "dbsentry.log"
    service = Service(
        f"dbsentry{'+tls' if tls else ''}",
        [*cli, "serve", "-c", str(config_path), "--log-level", "warning"],
        port,
        log=log,
        stdout_log=log,
    )
    service.start()
    target = Target(
        "dbsentry",
        tls,
        make_conninfo(
            "",
            host="127.0.0.1",
            port=port,
            dbname=CONNECTION_NAME,
            user=IDENTITY,
            sslmode="require" if tls else "disable",
        ),
        password=token,
    )
    return service, target, {"config": describe_config(config), "log_level": "warning"}


def describe_config(config: dict[str, Any]) -> dict[str, Any]:
    """The dbsentry config for the results: no temp paths, no passwords."""
    shown: dict[str, Any] = json.loads(json.dumps(config))
    shown["state_dir"] = "<temp dir>"
    if "cert" in shown.get("tls", {}):
        shown["tls"]["cert"] = shown["tls"]["key"] = "<generated self-signed EC P-256>"
    for conn in shown.get("connections", {}).values():
        if "password" in conn:
            conn["password"] = "***"
    return shown


# --------------------------------------------------------------------------------------
# pgbench runs


@dataclass
class RunResult:
    round: int
    mode: str
    target: str  # label: direct, pgbouncer+tls, ...
    tps: float | None = None
    latency_avg_ms: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    transactions: int | None = None
    failed: int | None = None
    initial_connection_ms: float | None = None
    error: str | None = None


_PATTERNS = {
    "tps": re.compile(r"^tps = ([\d.]+) \(without initial connection time\)", re.M),
    "latency_avg_ms": re.compile(r"^latency average = ([\d.]+) ms", re.M),
    "transactions": re.compile(r"^number of transactions actually processed: (\d+)", re.M),
    "failed": re.compile(r"^number of failed transactions: (\d+)", re.M),
    "initial_connection_ms": re.compile(r"^initial connection time = ([\d.]+) ms", re.M),
}


_COUNTS = ("transactions", "failed")


def parse_pgbench(output: str, result: RunResult) -> None:
    for key, pattern in _PATTERNS.items():
        m = pattern.search(output)
        if m:
            number = m.group(1)
            setattr(result, key, int(number) if key in _COUNTS else float(number))


def latency_percentiles(log_dir: Path, prefix: str) -> tuple[float, float] | None:
    """p50 and p99 in ms from pgbench's per-transaction logs (3rd column: latency in us)."""
    values: list[int] = []
    for path in log_dir.glob(f"{prefix}.*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                # "failed" and "skipped" rows have no latency
                if len(parts) >= 3 and parts[2].isdigit():
                    values.append(int(parts[2]))
        path.unlink()
    if not values:
        return None
    values.sort()
    return percentile(values, 50) / 1000, percentile(values, 99) / 1000


@dataclass
class Workload:
    pgbench: str
    clients: int
    threads: int
    duration: int
    latency_log: bool
    log_dir: Path

    def command(
        self, target: Target, mode: str, duration: int, log_prefix: str | None
    ) -> list[str]:
        cmd = [self.pgbench, "-n", "-S", "-c", str(self.clients), "-j", str(self.threads)]
        cmd += ["-T", str(duration), "-M", mode]
        if log_prefix:
            cmd += ["-l", f"--log-prefix={self.log_dir / log_prefix}"]
        return [*cmd, target.conninfo]

    def run(self, target: Target, mode: str, round_no: int) -> RunResult:
        result = RunResult(round_no, mode, target.label)
        prefix = f"{target.label}-{mode}-r{round_no}" if self.latency_log else None
        cmd = self.command(target, mode, self.duration, prefix)
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=self.duration + 120,
                env={**os.environ, **target.env},
            )
        except subprocess.TimeoutExpired:
            result.error = f"pgbench did not finish within {self.duration + 120} s"
            return result
        parse_pgbench(proc.stdout, result)
        if proc.returncode != 0 or result.tps is None:
            lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
            result.error = lines[-1]
        if prefix:
            pct = latency_percentiles(self.log_dir, prefix)
            if pct:
                result.p50_ms, result.p99_ms = pct
        return result

    def warm_up(self, target: Target, mode: str, seconds: int) -> None:
        subprocess.run(
            self.command(target, mode, seconds, None),
            capture_output=True,
            timeout=seconds + 120,
            env={**os.environ, **target.env},
        )


# --------------------------------------------------------------------------------------
# Summary


@dataclass
class Summary:
    mode: str
    target: str
    rounds: int
    tps: float | None
    tps_min: float | None
    tps_max: float | None
    latency_avg_ms: float | None
    p50_ms: float | None
    p99_ms: float | None
    failed: int
    errors: list[str] = field(default_factory=list)
    tps_vs_pgbouncer: float | None = None
    tps_vs_direct: float | None = None


def median_of(results: list[RunResult], attr: str) -> float | None:
    values = [getattr(r, attr) for r in results if getattr(r, attr) is not None]
    return statistics.median(values) if values else None


def summarise(results: list[RunResult], modes: list[str], labels: list[str]) -> list[Summary]:
    summaries: list[Summary] = []
    for mode in modes:
        by_label: dict[str, Summary] = {}
        for label in labels:
            rs = [r for r in results if r.mode == mode and r.target == label]
            good = [r for r in rs if r.error is None]
            tps_values = [r.tps for r in good if r.tps is not None]
            by_label[label] = Summary(
                mode=mode,
                target=label,
                rounds=len(good),
                tps=median_of(good, "tps"),
                tps_min=min(tps_values) if tps_values else None,
                tps_max=max(tps_values) if tps_values else None,
                latency_avg_ms=median_of(good, "latency_avg_ms"),
                p50_ms=median_of(good, "p50_ms"),
                p99_ms=median_of(good, "p99_ms"),
                failed=sum(r.failed or 0 for r in rs),
                errors=[f"round {r.round}: {r.error}" for r in rs if r.error],
            )
        for label, s in by_label.items():
            suffix = "+tls" if label.endswith("+tls") else ""
            if s.tps is None:
                continue
            pgbouncer, direct = by_label.get("pgbouncer" + suffix), by_label.get("direct" + suffix)
            if s.target.startswith("dbsentry") and pgbouncer is not None and pgbouncer.tps:
                s.tps_vs_pgbouncer = s.tps / pgbouncer.tps
            if not s.target.startswith("direct") and direct is not None and direct.tps:
                s.tps_vs_direct = s.tps / direct.tps
        summaries.extend(by_label.values())
    return summaries


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(summaries: list[Summary]) -> str:
    header = f"{'mode':<9} {'target':<14} {'tps (median)':>12} {'tps min-max':>15} {'avg ms':>7} {'p50 ms':>7} {'p99 ms':>7} {'failed':>6} {'/pgbouncer':>10} {'/direct':>8}"
    lines = [header, "-" * len(header)]
    previous_mode = None
    for s in summaries:
        if previous_mode is not None and s.mode != previous_mode:
            lines.append("")
        previous_mode = s.mode
        spread = (
            f"{fmt(s.tps_min, '.0f')}-{fmt(s.tps_max, '.0f')}" if s.tps_min is not None else "-"
        )
        lines.append(
            f"{s.mode:<9} {s.target:<14} {fmt(s.tps, '.0f'):>12} {spread:>15} {fmt(s.latency_avg_ms, '.3f'):>7} "
            f"{fmt(s.p50_ms, '.3f'):>7} {fmt(s.p99_ms, '.3f'):>7} {s.failed:>6} "
            f"{fmt(s.tps_vs_pgbouncer, '.2f'):>10} {fmt(s.tps_vs_direct, '.2f'):>8}"
        )
        for e in s.errors:
            lines.append(f"          ! {s.target} {e}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Profiling (optional): py-spy on the dbsentry process during an extra, unmeasured run


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def summarise_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Top frames by own ("self") and inclusive samples from py-spy's --format raw output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f]
        # drop the "process"/"thread" pseudo-frames py-spy may prepend
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + count

    def shorten(frame: str) -> str:
        # "func (/long/path/site-packages/pkg/mod.py:123)" -> "func (pkg/mod.py:123)"
        return re.sub(r"\((?:[^()]*/)?(site-packages|src|lib/python[\d.]+)/", "(", frame)

    def ranked(d: dict[str, int]) -> list[dict[str, Any]]:
        return [
            {
                "frame": shorten(f),
                "samples": n,
                "percent": round(100 * n / total, 1) if total else 0.0,
            }
            for f, n in sorted(d.items(), key=lambda kv: kv[1], reverse=True)[:top]
        ]

    return {"samples": total, "top_self": ranked(own), "top_inclusive": ranked(inclusive)}


def profile_dbsentry(
    py_spy: str,
    workload: Workload,
    target: Target,
    service: Service,
    mode: str,
    out_dir: Path,
    stamp: str,
) -> dict[str, Any]:
    raw = out_dir / f"{stamp}-profile-{target.label}-{mode}.txt"
    seconds = workload.duration
    if service.proc is None:
        return {"error": f"{service.name} is not running"}
    record = [py_spy, "record", "--pid", str(service.proc.pid), "--rate", "250"]
    record += ["--duration", str(seconds), "--format", "raw", "--nonblocking", "--output", str(raw)]
    spy = subprocess.Popen(
        record,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        subprocess.run(
            workload.command(target, mode, seconds, None),
            capture_output=True,
            timeout=seconds + 120,
            env={**os.environ, **target.env},
        )
        _, err = spy.communicate(timeout=seconds + 60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if not raw.exists():
        return {"error": (err or "py-spy wrote no output").strip()[-500:]}
    summary = summarise_collapsed(raw)
    summary["raw_file"] = raw.name
    return summary


# --------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="1 round of 2 s per target and mode (CI smoke run)"
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per pgbench run (default 10)")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds over all targets (default 3); the median is reported",
    )
    p.add_argument("--clients", type=int, default=8, help="pgbench clients, -c (default 8)")
    p.add_argument("--threads", type=int, default=2, help="pgbench threads, -j (default 2)")
    p.add_argument(
        "--modes", default="simple,extended,prepared", help="pgbench -M protocols, comma separated"
    )
    p.add_argument(
        "--database",
        default="dbsentry_bench",
        help="database for the pgbench tables, created if missing (default dbsentry_bench; "
        "'' for the server's own)",
    )
    p.add_argument("--scale", type=int, default=10, help="pgbench scale factor for -i (default 10)")
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="unmeasured seconds per target and mode before round 1 (default 2)",
    )
    p.add_argument(
        "--tls", action="store_true", help="also measure with TLS between pgbench and the targets"
    )
    p.add_argument("--no-pgbouncer", action="store_true", help="leave PgBouncer out")
    p.add_argument("--no-latency-log", action="store_true", help="skip pgbench -l (no p50/p99)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the rounds, py-spy the dbsentry process during one extra run per mode",
    )
    p.add_argument(
        "--passthrough",
        action="store_true",
        help="run dbsentry with passthrough: true (no policy, no audit): the bare proxy",
    )
    p.add_argument(
        "--dbsentry-config",
        metavar="JSON",
        default="{}",
        help='extra dbsentry settings merged into its config, e.g. \'{"audit": {"durability": "async"}}\'',
    )
    p.add_argument(
        "--json",
        type=Path,
        help="where to write the JSON results (default bench/results/<timestamp>.json)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 2, 0
    try:
        args.dbsentry_extra = json.loads(args.dbsentry_config)
    except json.JSONDecodeError as exc:
        p.error(f"--dbsentry-config is not JSON: {exc}")
    if not isinstance(args.dbsentry_extra, dict):
        p.error("--dbsentry-config must be a JSON object")
    if args.passthrough:
        args.dbsentry_extra["passthrough"] = True
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.modes if m not in ALL_MODES]
    if bad:
        p.error(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(ALL_MODES)}")
    if args.clients < 1 or args.rounds < 1 or args.duration < 1:
        p.error("--clients, --rounds and --duration must be at least 1")
    args.threads = max(1, min(args.threads, args.clients))
    return args


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


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@dataclass
class Setup:
    """Everything started for one benchmark: the targets and how they were configured."""

    targets: list[Target]
    services: list[Service]
    settings: dict[str, Any]
    notes: list[str]
    pgbouncer_bin: str | None


def start_targets(
    args: argparse.Namespace, up: Upstream, ssl_on: bool, workdir: Path, stack: contextlib.ExitStack
) -> Setup:
    """Start PgBouncer and dbsentry (plaintext, and TLS with --tls); stopped by ``stack``."""
    setup = Setup([], [], {"pgbouncer": {}, "dbsentry": {}}, [], None)

    def stop_services() -> None:
        for service in reversed(setup.services):
            service.stop()

    stack.callback(stop_services)

    setup.pgbouncer_bin = None if args.no_pgbouncer else ensure_pgbouncer()
    if setup.pgbouncer_bin is None:
        reason = "--no-pgbouncer" if args.no_pgbouncer else "pgbouncer not installed"
        setup.notes.append(f"PgBouncer rows missing: {reason}")
    tls_files = write_self_signed(workdir) if args.tls else None
    for tls in [False, True] if args.tls else [False]:
        if not tls or ssl_on:
            sslmode = "require" if tls else "disable"
            conninfo = up.conninfo(sslmode=sslmode, password=None)
            setup.targets.append(Target("direct", tls, conninfo, up.password))
        else:
            setup.notes.append("direct+tls skipped: the PostgreSQL server has ssl = off")
            say(setup.notes[-1])
        files = tls_files if tls else None
        if setup.pgbouncer_bin:
            service, target, used = start_pgbouncer(
                setup.pgbouncer_bin, up, workdir, args.clients, files
            )
            setup.services.append(service)
            setup.targets.append(target)
            setup.settings["pgbouncer"][target.label] = used
        service, target, used_ds = start_dbsentry(up, workdir, files, args.dbsentry_extra)
        setup.services.append(service)
        setup.targets.append(target)
        setup.settings["dbsentry"][target.label] = used_ds
    # like with like: the plaintext targets first, then the TLS ones
    setup.targets.sort(key=lambda t: (t.tls, TARGET_ORDER.index(t.name)))
    for t in setup.targets:
        check_target(t)
    return setup


MAX_RESTARTS = 3


def revive(setup: Setup, where: str) -> None:
    """Restart any proxy that exited (something outside the benchmark may have stopped it);
    the restart is recorded in the notes."""
    for service in setup.services:
        if service.alive():
            continue
        status = service.exit_status()
        if service.restarts >= MAX_RESTARTS:
            raise BenchError(
                f"{service.name} keeps exiting (status {status}):\n{tail(service.log)}"
            )
        setup.notes.append(f"{service.name} exited (status {status}) {where}; restarted")
        say(setup.notes[-1])
        service.restarts += 1
        service.start()


def stopped_during(service: Service, result: RunResult, grace: float = 5.0) -> bool:
    """Whether the proxy went away during a run (a failed run gives it time to finish exiting)."""
    deadline = time.monotonic() + (grace if result.error else 0)
    while service.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not service.alive()


def run_rounds(args: argparse.Namespace, workload: Workload, setup: Setup) -> list[RunResult]:
    """All targets, alternately, round after round; the order rotates every round."""
    if args.warmup:
        say(f"warming up ({args.warmup} s per target and mode)")
        for mode in args.modes:
            for t in setup.targets:
                workload.warm_up(t, mode, args.warmup)
    services = {s.name: s for s in setup.services}
    results: list[RunResult] = []
    targets = setup.targets
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(targets)
        order = targets[shift:] + targets[:shift]
        for mode in args.modes:
            for t in order:
                for attempt in (1, 2):
                    revive(setup, f"before round {round_no} {mode} {t.label}")
                    r = workload.run(t, mode, round_no)
                    service = services.get(t.label)
                    if service is None or not stopped_during(service, r):
                        break
                    r.error = f"{service.name} exited during the run"
                    if attempt == 1:
                        say(f"round {round_no}/{args.rounds} {mode} {t.label}: {r.error}; retrying")
                results.append(r)
                status = f"tps {r.tps:.0f}" if r.tps is not None else "no tps"
                error = f"  ERROR: {r.error}" if r.error else ""
                say(f"round {round_no}/{args.rounds} {mode:<8} {t.label:<14} {status}{error}")
    return results


def run_profiles(
    args: argparse.Namespace, workload: Workload, setup: Setup, out_dir: Path, stamp: str
) -> dict[str, Any]:
    py_spy = find_py_spy()
    if py_spy is None:
        say("--profile: py-spy not found (pip install py-spy); skipping")
        return {}
    profiles: dict[str, Any] = {}
    proxies = [t for t in setup.targets if t.name == "dbsentry"]
    services = {s.name: s for s in setup.services}
    for t in proxies:
        for mode in args.modes:
            revive(setup, f"before profiling {t.label} {mode}")
            say(f"profiling {t.label} {mode} with py-spy ({args.duration} s, not measured)")
            prof = profile_dbsentry(py_spy, workload, t, services[t.label], mode, out_dir, stamp)
            profiles[f"{t.label}/{mode}"] = prof
            for row in prof.get("top_self", [])[:10]:
                print(f"  {t.label} {mode} self {row['percent']:5.1f}%  {row['frame']}")
    return profiles


def print_report(summaries: list[Summary], notes: list[str]) -> dict[str, dict[str, float | None]]:
    print()
    print(render_table(summaries))
    print()
    ratios: dict[str, dict[str, float | None]] = {}
    for s in summaries:
        if s.target.startswith("dbsentry"):
            ratios[f"{s.mode}/{s.target}"] = {
                "vs_pgbouncer": s.tps_vs_pgbouncer,
                "vs_direct": s.tps_vs_direct,
            }
            print(
                f"{s.target:<12} {s.mode:<8}: {fmt(s.tps_vs_pgbouncer, '.2f')} x PgBouncer tps, "
                f"{fmt(s.tps_vs_direct, '.2f')} x direct tps"
            )
    for n in notes:
        print(f"note: {n}")
    return ratios


def loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def bench(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    machine = machine_facts()
    pgbench = find_binary("pgbench")
    if pgbench is None:
        raise BenchError(
            "pgbench not found: install the PostgreSQL client (apt-get install postgresql-client)"
        )

    up = find_upstream()
    facts = server_facts(up)
    ssl_text = "on" if facts["ssl"] else "off"
    say(
        f"PostgreSQL {facts['server_version']} at {up.host}:{up.port} ({up.source}), ssl={ssl_text}"
    )
    needed = 2 * args.clients + 5  # PgBouncer keeps its pool open while the direct run connects
    if facts["max_connections"] < needed:
        say(f"warning: max_connections={facts['max_connections']} is below {needed}")
    up = bench_database(up, args.database)
    ensure_pgbench_tables(up, pgbench, args.scale)

    workdir = Path(tempfile.mkdtemp(prefix="dbsentry-bench-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    setup = start_targets(args, up, facts["ssl"], workdir, stack)
    labels = [t.label for t in setup.targets]
    say(
        f"targets: {', '.join(labels)}; modes: {', '.join(args.modes)}; "
        f"{args.rounds} round(s) x {args.duration} s; {args.clients} clients, {args.threads} threads"
    )

    log_dir = workdir / "pgbench-logs"
    log_dir.mkdir()
    workload = Workload(
        pgbench, args.clients, args.threads, args.duration, not args.no_latency_log, log_dir
    )
    results = run_rounds(args, workload, setup)
    summaries = summarise(results, args.modes, labels)
    ratios = print_report(summaries, setup.notes)

    out_path: Path = args.json or DEFAULT_RESULTS_DIR / f"{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    profiles = run_profiles(args, workload, setup, out_path.parent, stamp) if args.profile else {}

    pgbench_cmd = f"pgbench -n -S -c {args.clients} -j {args.threads} -T {args.duration} -M <mode>"
    document = {
        "schema": 1,
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "loadavg_at_end": loadavg()},
        "versions": {
            "dbsentry": _dbsentry_version(),
            "git": git_revision(),
            "python": platform.python_version(),
            "postgresql": facts["server_version"],
            "pgbench": first_line([pgbench, "--version"]),
            "pgbouncer": first_line([setup.pgbouncer_bin, "--version"])
            if setup.pgbouncer_bin
            else None,
        },
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "clients": args.clients,
            "threads": args.threads,
            "modes": args.modes,
            "tls": args.tls,
            "scale": args.scale,
            "latency_log": not args.no_latency_log,
            "pgbench": pgbench_cmd + ("" if args.no_latency_log else " -l"),
            "upstream": {
                "source": up.source,
                "database": up.dbname,
                "ssl": facts["ssl"],
                "max_connections": facts["max_connections"],
                "shared_buffers": facts["shared_buffers"],
                "same_host": up.host in ("127.0.0.1", "localhost", "::1"),
            },
            **setup.settings,
        },
        "summary": [asdict(s) for s in summaries],
        "ratios": ratios,
        "runs": [asdict(r) for r in results],
        "profiles": profiles,
        "notes": setup.notes,
    }
    out_path.write_text(json.dumps(document, indent=2) + "\n")
    say(f"results written to {_display_path(out_path)}")
    failed = any(r.error for r in results) or any(s.failed for s in summaries)
    return 1 if failed else 0


def _dbsentry_version() -> str:
    try:
        from dbsentry import __version__

        return str(__version__)
    except ImportError:
        return "unknown"


def _display_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)  # clean up on Ctrl-C, kill, closed terminal
    try:
        with contextlib.ExitStack() as stack:
            return bench(args, stack)
    except BenchError as exc:
        say(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        say("interrupted; stopped the proxies")
        return 130


if __name__ == "__main__":
    sys.exit(main())

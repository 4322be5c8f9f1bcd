"""The workloads of bench/compare.py, and one run of each against one target.

========  ===========================================================================
select    ``pgbench -S``: one primary-key SELECT per transaction
tpcb      pgbench's built-in TPC-B-like script: BEGIN, 3 UPDATEs, a SELECT, an INSERT,
          END (7 statements per transaction)
rows100   a pgbench script (``-f``): 100 consecutive rows of a table with sensitive
          columns (``SELECT id, full_name, email, phone ... WHERE id BETWEEN`` a random
          start and start + 99), masked through the governed dbsentry
export    the whole table with sensitive columns, by COPY and by SELECT (psql, from
          bench/masked_export.py): rows/s
connect   ``pgbench -S -C``: a new connection (start-up, login) for every transaction
idle      thousands of idle client connections held at once (bench/idle.py)
========  ===========================================================================

Every run also reads the proxy's CPU time (utime + stime of the process and its
children, /proc/<pid>/stat) before and after, and its resident memory after.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import masked_export
from common import cpu_seconds, percentile, rss_kib
from idle import IdleResult, hold_idle
from targets import Target

ALL_MODES = ("simple", "extended", "prepared")
PGBENCH_WORKLOADS = ("select", "tpcb", "rows100", "connect")
ALL_WORKLOADS = ("select", "tpcb", "rows100", "export", "connect", "idle")
EXPORT_KINDS = ("copy", "select")
# what one unit of the rate is, and what the CPU figure is divided by
UNITS = {
    "select": ("tps", "stmt"),
    "tpcb": ("tps", "stmt"),
    "rows100": ("tps", "stmt"),
    "connect": ("conn/s", "conn"),
    "export": ("rows/s", "row"),
    "idle": ("conn/s", "conn"),
}
STATEMENTS_PER_TRANSACTION = {"select": 1, "tpcb": 7, "rows100": 1, "connect": 1}


@dataclass(frozen=True)
class Cell:
    """One line of the results: a workload in one protocol mode at one client count."""

    workload: str
    mode: str  # pgbench -M, or copy/select for export, "-" for idle
    clients: int

    @property
    def key(self) -> str:
        return f"{self.workload}/{self.mode}/c{self.clients}"


@dataclass
class RunResult:
    round: int
    mode: str
    target: str  # label: direct, pgbouncer+tls, ...
    workload: str = "select"
    clients: int = 0
    tps: float | None = None  # the rate: transactions, connections or rows per second
    latency_avg_ms: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    transactions: int | None = None  # or rows, or connections
    failed: int | None = None
    initial_connection_ms: float | None = None
    proxy_cpu_s: float | None = None
    proxy_cpu_us_per_op: float | None = None
    proxy_rss_kib: int | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# pgbench

_PATTERNS = {
    "tps": re.compile(
        r"^tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)",
        re.M,
    ),
    "latency_avg_ms": re.compile(r"^latency average = ([\d.]+) ms", re.M),
    "transactions": re.compile(r"^number of transactions actually processed: (\d+)", re.M),
    "failed": re.compile(r"^number of failed transactions: (\d+)", re.M),
    "initial_connection_ms": re.compile(
        r"^(?:initial|average) connection time = ([\d.]+) ms", re.M
    ),
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


def rows100_script(directory: Path, table: str) -> Path:
    """The pgbench script of the rows100 workload (``-D rows=<rows in the table>``)."""
    path = directory / "rows100.sql"
    path.write_text(
        "\\set start random(1, :rows - 99)\n"
        "\\set stop :start + 99\n"
        f"SELECT id, full_name, email, phone FROM {table} WHERE id BETWEEN :start AND :stop;\n"
    )
    return path


@dataclass
class Workload:
    """pgbench runs of one script; ``script_args`` select it (``-S`` by default)."""

    pgbench: str
    clients: int
    threads: int
    duration: int
    latency_log: bool
    log_dir: Path
    script_args: tuple[str, ...] = ("-S",)
    transactions: int | None = None  # pgbench -t per client instead of -T duration

    def command(
        self, target: Target, mode: str, duration: int, log_prefix: str | None
    ) -> list[str]:
        cmd = [self.pgbench, "-n", *self.script_args, "-c", str(self.clients)]
        cmd += ["-j", str(self.threads), "-M", mode]
        cmd += ["-t", str(self.transactions)] if self.transactions else ["-T", str(duration)]
        if log_prefix:
            cmd += ["-l", f"--log-prefix={self.log_dir / log_prefix}"]
        return [*cmd, target.conninfo]

    def run(self, target: Target, mode: str, round_no: int) -> RunResult:
        result = RunResult(round_no, mode, target.label, clients=self.clients)
        prefix = f"{target.label}-{mode}-c{self.clients}-r{round_no}" if self.latency_log else None
        cmd = self.command(target, mode, self.duration, prefix)
        limit = (self.duration if not self.transactions else 60) + 120
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=limit,
                env={**os.environ, **target.env},
            )
        except subprocess.TimeoutExpired:
            result.error = f"pgbench did not finish within {limit} s"
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
        cmd = [self.pgbench, "-n", *self.script_args, "-c", str(self.clients)]
        cmd += ["-j", str(self.threads), "-M", mode, "-T", str(seconds), target.conninfo]
        subprocess.run(
            cmd, capture_output=True, timeout=seconds + 120, env={**os.environ, **target.env}
        )


def pgbench_workload(
    name: str,
    *,
    pgbench: str,
    clients: int,
    threads: int,
    duration: int,
    transactions: int | None,
    latency_log: bool,
    log_dir: Path,
    rows100: tuple[Path, int] | None,
) -> Workload:
    if name == "select":
        script: tuple[str, ...] = ("-S",)
    elif name == "tpcb":
        script = ()
    elif name == "connect":
        script = ("-S", "-C")
    elif name == "rows100":
        assert rows100 is not None
        path, rows = rows100
        script = ("-f", str(path), "-D", f"rows={rows}")
    else:
        raise ValueError(name)
    return Workload(
        pgbench,
        clients,
        max(1, min(threads, clients)),
        duration,
        latency_log,
        log_dir,
        script_args=script,
        transactions=transactions,
    )


def measured(target: Target, result: RunResult, cpu_before: float | None, ops: int | None) -> None:
    """The proxy's CPU time since ``cpu_before`` (per operation) and its memory now."""
    pid = target.service.pid if target.service else None
    if pid is None:
        return
    after = cpu_seconds(pid)
    if cpu_before is not None and after is not None:
        result.proxy_cpu_s = round(after - cpu_before, 3)
        if ops:
            result.proxy_cpu_us_per_op = result.proxy_cpu_s * 1e6 / ops
    result.proxy_rss_kib = rss_kib(pid)


def proxy_cpu(target: Target) -> float | None:
    pid = target.service.pid if target.service else None
    return cpu_seconds(pid) if pid is not None else None


def run_pgbench_cell(workload: Workload, cell: Cell, target: Target, round_no: int) -> RunResult:
    before = proxy_cpu(target)
    result = workload.run(target, cell.mode, round_no)
    result.workload = cell.workload
    statements = (result.transactions or 0) * STATEMENTS_PER_TRANSACTION[cell.workload]
    measured(target, result, before, statements)
    if result.proxy_cpu_s is not None and result.transactions:
        result.details["proxy_cpu_us_per_transaction"] = (
            result.proxy_cpu_s * 1e6 / result.transactions
        )
    return result


# --------------------------------------------------------------------------------------
# export: bench/masked_export.py's table and psql client


def run_export_cell(
    client: masked_export.Client, cell: Cell, target: Target, round_no: int
) -> RunResult:
    before = proxy_cpu(target)
    r = client.run(target, cell.mode, round_no)
    result = RunResult(
        round_no,
        cell.mode,
        target.label,
        workload="export",
        clients=1,
        tps=r.rows_per_s,
        transactions=r.rows,
        failed=0 if r.error is None else None,
        error=r.error,
        details={"seconds": r.seconds, "wall_seconds": r.wall_seconds, "bytes": r.bytes_out},
    )
    measured(target, result, before, r.rows)
    return result


# --------------------------------------------------------------------------------------
# idle connections


@dataclass
class IdleSettings:
    count: int
    hold_s: float
    sample: int
    concurrency: int


def run_idle_cell(
    settings: IdleSettings, cell: Cell, target: Target, round_no: int
) -> RunResult:
    result = RunResult(round_no, cell.mode, target.label, workload="idle", clients=settings.count)
    host, port, user = target.endpoint()
    pid = target.service.pid if target.service else None
    rss_before = rss_kib(pid) if pid else None
    cpu_before = cpu_seconds(pid) if pid else None
    held: dict[str, Any] = {}

    def on_held() -> None:
        if pid:
            held["rss"] = rss_kib(pid)
            held["cpu"] = cpu_seconds(pid)

    try:
        idle: IdleResult = asyncio.run(
            hold_idle(
                host,
                port,
                user,
                target.idle_dbname or "",
                target.password,
                count=settings.count,
                tls=target.tls,
                hold_s=settings.hold_s,
                sample=settings.sample,
                concurrency=settings.concurrency,
                on_held=on_held,
            )
        )
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    idle.rss_before_kib, idle.rss_held_kib = rss_before, held.get("rss")
    if cpu_before is not None and held.get("cpu") is not None:
        idle.cpu_open_s = round(held["cpu"] - cpu_before, 3)
    logins = sorted(idle.login_ms)
    result.transactions = idle.opened
    result.failed = idle.requested - idle.opened
    if idle.open_s and idle.opened:
        result.tps = idle.opened / idle.open_s
    if logins:
        result.p50_ms, result.p99_ms = percentile(logins, 50), percentile(logins, 99)
        result.latency_avg_ms = sum(logins) / len(logins)
    if idle.cpu_open_s is not None and idle.opened:
        result.proxy_cpu_s = idle.cpu_open_s
        result.proxy_cpu_us_per_op = idle.cpu_open_s * 1e6 / idle.opened
    result.proxy_rss_kib = idle.rss_held_kib
    kib_per_conn = None
    if idle.rss_held_kib is not None and rss_before is not None and idle.opened:
        kib_per_conn = (idle.rss_held_kib - rss_before) / idle.opened
    result.details = {
        "requested": idle.requested,
        "opened": idle.opened,
        "failed_logins": idle.failed,
        "stopped_early": idle.stopped_early,
        "open_s": idle.open_s,
        "held_s": idle.held_s,
        "rss_before_kib": rss_before,
        "rss_held_kib": idle.rss_held_kib,
        "kib_per_connection": kib_per_conn,
        "sample": idle.sample,
        "sample_ok": idle.sample_ok,
        "first_error": idle.first_error,
        "first_sqlstate": idle.first_sqlstate,
        "sample_error": idle.sample_error,
        "summary": idle.summary(),
    }
    if idle.opened < idle.requested or idle.sample_ok < idle.sample:
        result.error = idle.summary()
    return result


def idle_not_applicable(facts: dict[str, Any], count: int) -> str | None:
    """Why the direct target cannot hold ``count`` connections, if it cannot."""
    limit = int(facts["max_connections"]) - int(facts.get("superuser_reserved_connections", 0))
    if count > limit - 10:
        return (
            f"n/a: PostgreSQL max_connections = {facts['max_connections']} "
            f"(one server process per connection) cannot hold {count} connections"
        )
    return None


def export_client(psql: str, table: str, rows: int) -> masked_export.Client:
    return masked_export.Client("psql", psql, table, rows, timeout=1800)

#!/usr/bin/env python3
"""Bulk export through dbsentry with masking: rows per second against a direct connection.

A table ``bench_customers`` (1,000,000 rows of id, full_name, email, phone, ssn, notes;
generated in SQL, created when missing) is read whole, in two ways:

* ``copy``    ``COPY (SELECT * FROM bench_customers) TO STDOUT``
* ``select``  ``SELECT * FROM bench_customers``, every row fetched

through three targets that reach the same database:

* ``direct``       client -> PostgreSQL
* ``masked``       client -> dbsentry (default settings: masking on, audit sync; the
                   identity is not in an exempt group, so email, phone, ssn and full_name
                   are masked) -> PostgreSQL
* ``passthrough``  client -> dbsentry with ``passthrough: true`` (no policy, no audit, no
                   masking: the bare proxy) -> PostgreSQL

The targets alternate round after round (the order rotates each round) and the median
rows/s over the rounds is reported, with the ratios masked/direct and
passthrough/direct.  The client is ``psql`` (C; its output is read and counted) by
default, so the client's own CPU stays small next to the proxy's, and rows/s come from
psql's own ``\\timing`` of the statement (from sending it to the last row: connection
and login are not included; the wall time of the whole psql process is reported too).
``--client psycopg`` fetches with psycopg instead (text rows parsed to Python objects;
COPY read block by block).  One row is
fetched through each target first to check that the proxy really masks.

Usage::

    python bench/masked_export.py                       # 3 rounds, 1,000,000 rows
    python bench/masked_export.py --rounds 5 --rows 200000 --table bench_customers_200k
    python bench/masked_export.py --no-profile --json out.json
    python bench/masked_export.py --compare-safety-net   # and masked with safety_net: off

PostgreSQL is found as in bench/compare.py (``$BENCH_PG_DSN``, 127.0.0.1:5432, or an
embedded server); the table lives in the database ``dbsentry_bench`` (``--database``).
After the rounds, py-spy records the masked dbsentry process during one extra, unmeasured
``SELECT`` (``--no-profile`` skips it).  Results go to
``bench/results/masked-export-<timestamp>.json``.  See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import profiling
import psycopg
import psycopg.sql
import targets as bench_targets
from common import BenchError, Upstream, say
from targets import Service, Target

TARGETS = ("direct", "masked", "passthrough")
WORKLOADS = ("copy", "select")


# --------------------------------------------------------------------------------------
# The table


def table_sql(table: str, rows: int) -> list[psycopg.sql.Composable]:
    """CREATE TABLE and one INSERT ... SELECT generate_series of realistic-looking rows:
    emails ``user<n>@example.com``, phones ``+1 415 555 <nnnn>``, US SSNs in a valid format
    (area 001-665, group 01-99, serial 0001-9999), names from two lists, harmless notes."""
    ident = psycopg.sql.Identifier(table)
    create = psycopg.sql.SQL(
        "CREATE TABLE {} (id bigint PRIMARY KEY, full_name text NOT NULL, email text NOT NULL, "
        "phone text NOT NULL, ssn text NOT NULL, notes text)"
    ).format(ident)
    insert = psycopg.sql.SQL(
        """
        INSERT INTO {} (id, full_name, email, phone, ssn, notes)
        SELECT n,
               (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','John',
                      'Margaret','Dennis','Katherine','Ken','Radia','Tim','Hedy','Linus'])[1 + n % 16]
               || ' ' ||
               (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Allen',
                      'McCarthy','Hamilton','Ritchie','Johnson','Thompson','Perlman',
                      'Berners-Lee','Lamarr','Torvalds','Wirth'])[1 + (n / 16) % 17],
               'user' || n || '@example.com',
               '+1 415 555 ' || lpad((n % 10000)::text, 4, '0'),
               lpad((1 + n % 665)::text, 3, '0') || '-' ||
               lpad((1 + (n / 665) % 99)::text, 2, '0') || '-' ||
               lpad((1 + n % 9999)::text, 4, '0'),
               'customer since ' || (2000 + n % 25) || ', tier ' || (n % 5) ||
               ', ' || (ARRAY['prefers mail','no marketing','annual plan','monthly plan',
                             'enterprise account','trial converted'])[1 + n % 6]
        FROM generate_series(1, {}) AS n
        """
    ).format(ident, psycopg.sql.Literal(rows))
    return [create, insert]


def ensure_table(up: Upstream, table: str, rows: int) -> None:
    ident = psycopg.sql.Identifier(table)
    with psycopg.connect(up.conninfo(connect_timeout=10), autocommit=True) as conn:
        try:
            row = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()
            have: int | None = int(row[0]) if row else 0
        except psycopg.errors.UndefinedTable:
            have = None
        if have == rows:
            say(f"table {table} present ({rows} rows)")
            return
        what = "missing" if have is None else f"has {have} rows"
        say(f"table {table} {what}: creating it with {rows} rows (generate_series)")
        started = time.monotonic()
        conn.execute(psycopg.sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
        with conn.transaction():
            for stmt in table_sql(table, rows):
                conn.execute(stmt)
        conn.execute(psycopg.sql.SQL("VACUUM ANALYZE {}").format(ident))
        say(f"created {table} in {time.monotonic() - started:.1f} s")


def table_size(up: Upstream, table: str) -> str:
    with psycopg.connect(up.conninfo(connect_timeout=10)) as conn:
        row = conn.execute(
            "SELECT pg_size_pretty(pg_table_size(%s::regclass))", (table,)
        ).fetchone()
        return str(row[0]) if row else "?"


# --------------------------------------------------------------------------------------
# Targets


def start_proxy(
    up: Upstream, workdir: Path, name: str, extra: dict[str, Any]
) -> tuple[Service, Target, dict[str, Any]]:
    directory = workdir / name
    directory.mkdir()
    service, target, used = bench_targets.start_dbsentry(up, directory, None, extra)
    service.name = f"dbsentry-{name}"
    target.name = name
    return service, target, used


def fetch_check_row(t: Target, table: str) -> dict[str, Any]:
    """Row 1 by SELECT and by COPY through the target (as text)."""
    ident = psycopg.sql.Identifier(table)
    with psycopg.connect(t.conninfo, password=t.password, connect_timeout=10) as conn:
        cur = conn.execute(psycopg.sql.SQL("SELECT * FROM {} WHERE id = 1").format(ident))
        names = [d.name for d in cur.description or []]
        row = cur.fetchone()
        selected = dict(zip(names, row, strict=True)) if row else {}
        copied = b""
        with conn.cursor().copy(
            psycopg.sql.SQL("COPY (SELECT * FROM {} WHERE id = 1) TO STDOUT").format(ident)
        ) as cp:
            for block in cp:
                copied += bytes(block)
    return {"select": {k: str(v) for k, v in selected.items()}, "copy": copied.decode().rstrip("\n")}


def verify_masking(targets: dict[str, Target], table: str) -> dict[str, Any]:
    rows = {name: fetch_check_row(t, table) for name, t in targets.items()}
    real, masked, bare = rows["direct"], rows["masked"], rows.get("passthrough")
    problems = []
    for col in ("email", "ssn", "phone", "full_name"):
        if masked["select"].get(col) == real["select"].get(col):
            problems.append(f"SELECT {col} is not masked: {masked['select'].get(col)!r}")
    for value in (real["select"]["email"], real["select"]["ssn"]):
        if value in masked["copy"]:
            problems.append(f"COPY output carries the real value {value!r}")
    if not re.fullmatch(r"\*+@example\.com", masked["select"]["email"]):
        problems.append(f"email not partially masked: {masked['select']['email']!r}")
    if not re.fullmatch(r"\*\*\*-\*\*-\d{4}", masked["select"]["ssn"]):
        problems.append(f"ssn not partially masked: {masked['select']['ssn']!r}")
    if bare is not None and bare["select"] != real["select"]:
        problems.append("passthrough changed the row")
    if masked["select"]["id"] != real["select"]["id"] or masked["select"]["notes"] != real["select"]["notes"]:
        problems.append("a column that is not sensitive changed")
    if problems:
        raise BenchError("masking check failed:\n  " + "\n  ".join(problems))
    say(f"masking check: direct   {real['select']}")
    say(f"masking check: masked   {masked['select']}")
    say(f"masking check: COPY     {masked['copy']!r}")
    return rows


# --------------------------------------------------------------------------------------
# Runs


@dataclass
class Run:
    round: int
    workload: str
    target: str
    seconds: float | None = None  # the statement: sent to last row (no connection set-up)
    wall_seconds: float | None = None  # the whole client process / connection
    rows: int | None = None
    rows_per_s: float | None = None
    bytes_out: int | None = None
    error: str | None = None


def statement(workload: str, table: str) -> str:
    if workload == "copy":
        return f"COPY (SELECT * FROM {table}) TO STDOUT"
    return f"SELECT * FROM {table}"


class Client:
    def __init__(self, kind: str, psql: str | None, table: str, expected_rows: int, timeout: float):
        self.kind, self.psql, self.table = kind, psql, table
        self.expected_rows, self.timeout = expected_rows, timeout

    def run(self, t: Target, workload: str, round_no: int) -> Run:
        r = Run(round_no, workload, t.name)
        try:
            if self.kind == "psql":
                r.seconds, r.rows, r.bytes_out, r.wall_seconds = self._psql(t, workload)
            else:
                r.seconds, r.rows, r.bytes_out, r.wall_seconds = self._psycopg(t, workload)
        except (BenchError, psycopg.Error, subprocess.TimeoutExpired) as exc:
            r.error = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            return r
        if r.rows != self.expected_rows:
            r.error = f"got {r.rows} rows, expected {self.expected_rows}"
        r.rows_per_s = r.rows / r.seconds if r.seconds else None
        return r

    def _psql(self, t: Target, workload: str) -> tuple[float, int, int, float]:
        """psql's own ``\\timing`` of the statement (sending it to the last row received;
        connection and login not included), the rows and bytes written, and the wall time
        of the whole psql process."""
        assert self.psql is not None
        cmd = [self.psql, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", t.conninfo]
        cmd += ["-c", "\\timing on", "-c", statement(workload, self.table)]
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **t.env},
        )
        assert proc.stdout is not None
        n_bytes = n_lines = 0
        last = b""
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                block = proc.stdout.read(1 << 20)
                if not block:
                    break
                n_bytes += len(block)
                n_lines += block.count(b"\n")
                last = (last + block)[-4096:]
                if time.monotonic() > deadline:
                    raise BenchError(f"psql took longer than {self.timeout:.0f} s")
            err = proc.stderr.read() if proc.stderr else b""
            status = proc.wait()
        except BaseException:  # a timeout, Ctrl-C, SIGTERM: psql goes too
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - started
        if status != 0:
            raise BenchError(f"psql failed ({status}): {err.decode(errors='replace').strip()}")
        m = re.search(rb"Time: ([\d.]+) ms[^\n]*\n?$", last)
        if not m:
            raise BenchError("psql printed no timing")
        n_bytes -= len(m.group(0))
        return float(m.group(1)) / 1000, n_lines - 1, n_bytes, wall

    def _psycopg(self, t: Target, workload: str) -> tuple[float, int, int, float]:
        """Time from sending the statement to the last row (connection not included)."""
        wall_started = time.perf_counter()
        with psycopg.connect(t.conninfo, password=t.password, connect_timeout=10) as conn:
            started = time.perf_counter()
            n_bytes = n_rows = 0
            if workload == "copy":
                with conn.cursor().copy(statement(workload, self.table)) as cp:
                    for block in cp:
                        n_bytes += len(block)
                        n_rows += 1
            else:
                rows = conn.execute(statement(workload, self.table)).fetchall()
                n_rows = len(rows)
            done = time.perf_counter()
        return done - started, n_rows, n_bytes, time.perf_counter() - wall_started


def connect_ms(psql: str | None, t: Target) -> float | None:
    """Wall time of ``psql -c 'SELECT 1'``: what each psql-timed run includes besides rows."""
    if psql is None:
        return None
    started = time.perf_counter()
    proc = subprocess.run(
        [psql, "-X", "-A", "-t", "-q", "-d", t.conninfo, "-c", "SELECT 1"],
        capture_output=True,
        timeout=60,
        env={**os.environ, **t.env},
    )
    return (time.perf_counter() - started) * 1000 if proc.returncode == 0 else None


def run_rounds(
    args: argparse.Namespace, client: Client, targets: list[Target], services: dict[str, Service]
) -> tuple[list[Run], dict[str, list[float]]]:
    runs: list[Run] = []
    connects: dict[str, list[float]] = {t.name: [] for t in targets}
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(targets)
        order = targets[shift:] + targets[:shift]
        for workload in args.workloads:
            for t in order:
                service = services.get(t.name)
                if service is not None and not service.alive():
                    raise BenchError(f"{service.name} exited:\n{common.tail(service.log)}")
                r = client.run(t, workload, round_no)
                runs.append(r)
                shown = f"{r.rows_per_s:>10,.0f} rows/s ({r.seconds:.2f} s)" if r.rows_per_s else "-"
                error = f"  ERROR: {r.error}" if r.error else ""
                say(f"round {round_no}/{args.rounds} {workload:<6} {t.name:<12} {shown}{error}")
        for t in targets:
            ms = connect_ms(client.psql if client.kind == "psql" else None, t)
            if ms is not None:
                connects[t.name].append(ms)
    return runs, connects


# --------------------------------------------------------------------------------------
# Summary


def summarise(runs: list[Run], workloads: Sequence[str], targets: Sequence[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for w in workloads:
        medians: dict[str, float | None] = {}
        for name in targets:
            good = [r for r in runs if r.workload == w and r.target == name and r.error is None]
            values = [r.rows_per_s for r in good if r.rows_per_s]
            medians[name] = statistics.median(values) if values else None
            secs = [r.seconds for r in good if r.seconds]
            out.append(
                {
                    "workload": w,
                    "target": name,
                    "rounds": len(good),
                    "rows_per_s": medians[name],
                    "rows_per_s_min": min(values) if values else None,
                    "rows_per_s_max": max(values) if values else None,
                    "seconds": statistics.median(secs) if secs else None,
                    "wall_seconds": statistics.median([r.wall_seconds for r in good if r.wall_seconds])
                    if any(r.wall_seconds for r in good)
                    else None,
                    "mb_per_s": (
                        statistics.median(
                            [r.bytes_out / r.seconds / 1e6 for r in good if r.bytes_out and r.seconds]
                        )
                        if any(r.bytes_out for r in good)
                        else None
                    ),
                    "errors": [f"round {r.round}: {r.error}" for r in runs
                               if r.workload == w and r.target == name and r.error],
                }
            )
        direct = medians.get("direct")
        for row in out[-len(targets):]:
            row["vs_direct"] = row["rows_per_s"] / direct if direct and row["rows_per_s"] else None
    return out


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(summary: list[dict[str, Any]], target_ratio: float) -> str:
    header = (
        f"{'workload':<8} {'target':<12} {'rows/s (median)':>15} {'min-max':>19} "
        f"{'query s':>7} {'wall s':>6} {'MB/s':>6} {'/direct':>8}"
    )
    lines = [header, "-" * len(header)]
    prev = None
    for s in summary:
        if prev is not None and s["workload"] != prev:
            lines.append("")
        prev = s["workload"]
        spread = (
            f"{fmt(s['rows_per_s_min'], ',.0f')}-{fmt(s['rows_per_s_max'], ',.0f')}"
            if s["rows_per_s_min"]
            else "-"
        )
        mark = ""
        if s["target"] == "masked" and s["vs_direct"] is not None:
            mark = "  ok" if s["vs_direct"] >= target_ratio else f"  below {target_ratio}x"
        lines.append(
            f"{s['workload']:<8} {s['target']:<12} {fmt(s['rows_per_s'], ',.0f'):>15} {spread:>19} "
            f"{fmt(s['seconds'], '.2f'):>7} {fmt(s['wall_seconds'], '.2f'):>6} {fmt(s['mb_per_s'], '.1f'):>6} "
            f"{fmt(s['vs_direct'], '.2f'):>8}{mark}"
        )
        for e in s["errors"]:
            lines.append(f"         ! {e}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Profile


def summarise_by_function(path: Path, top: int = 20) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks summed per function (line numbers dropped): own
    samples, and inclusive samples of dbsentry's own functions (each counted once per
    stack).  Shares are of all samples of all threads."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [
            re.sub(r":\d+\)$", ")", f)
            for f in stack.split(";")
            if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            if "dbsentry/" in f and "__main__" not in f and "cli.py" not in f:
                inclusive[f] = inclusive.get(f, 0) + count

    def short(frame: str) -> str:
        return re.sub(r"\((?:[^()]*/)?(site-packages|src|lib/python[\d.]+)/", "(", frame)

    def ranked(d: dict[str, int]) -> list[dict[str, Any]]:
        return [
            {"function": short(f), "samples": n, "percent": round(100 * n / total, 1) if total else 0.0}
            for f, n in sorted(d.items(), key=lambda kv: kv[1], reverse=True)[:top]
        ]

    return {"samples": total, "own_by_function": ranked(own), "inclusive_dbsentry": ranked(inclusive)}


def profile_select(
    py_spy: str, client: Client, t: Target, service: Service, workload: str, out: Path, rate: int
) -> dict[str, Any]:
    if service.proc is None:
        return {"error": "not running"}
    record = [py_spy, "record", "--pid", str(service.proc.pid), "--rate", str(rate)]
    record += ["--format", "raw", "--nonblocking", "--output", str(out)]
    spy = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        r = client.run(t, workload, 0)
        time.sleep(0.2)
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
    if not out.exists():
        return {"error": (err or "py-spy wrote no output").strip()[-500:]}
    summary = profiling.summarise_collapsed(out, top=25)
    summary.update(summarise_by_function(out))
    summary["raw_file"] = out.name
    summary["run"] = asdict(r)
    return summary


# --------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=1_000_000, help="rows in the table (default 1,000,000)")
    p.add_argument("--table", default="bench_customers", help="table name (default bench_customers)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all targets (default 3)")
    p.add_argument("--database", default="dbsentry_bench", help="database (created if missing)")
    p.add_argument("--client", choices=("psql", "psycopg"), default="psql")
    p.add_argument(
        "--workloads", default="copy,select", help="comma separated: copy, select (default both)"
    )
    p.add_argument("--no-passthrough", action="store_true", help="leave the passthrough proxy out")
    p.add_argument(
        "--compare-safety-net",
        action="store_true",
        help="add a target masked-nonet: the masked proxy with masking.safety_net off",
    )
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    p.add_argument(
        "--profile-workloads", default="select,copy", help="what to profile (default select,copy)"
    )
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples/s (default 200)")
    p.add_argument("--target-ratio", type=float, default=0.5, help="masked/direct goal (0.5)")
    p.add_argument(
        "--dbsentry-config",
        metavar="JSON",
        default="{}",
        help="extra settings merged into the masked dbsentry's config",
    )
    p.add_argument("--json", type=Path, help="default bench/results/masked-export-<timestamp>.json")
    args = p.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if bad := [w for w in args.workloads if w not in WORKLOADS]:
        p.error(f"unknown workload(s): {', '.join(bad)}")
    if args.rows < 1 or args.rounds < 1:
        p.error("--rows and --rounds must be at least 1")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.table):
        p.error("--table must be a plain lower-case identifier")
    args.profile_workloads = [w.strip() for w in args.profile_workloads.split(",") if w.strip()]
    args.extra = json.loads(args.dbsentry_config)
    return args


def bench(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    machine = common.machine_facts()
    psql = common.find_binary("psql")
    if args.client == "psql" and psql is None:
        raise BenchError("psql not found (apt-get install postgresql-client), or use --client psycopg")

    up = common.find_upstream()
    facts = common.server_facts(up)
    say(f"PostgreSQL {facts['server_version']} at {up.host}:{up.port} ({up.source})")
    up = common.bench_database(up, args.database)
    ensure_table(up, args.table, args.rows)
    size = table_size(up, args.table)

    workdir = Path(tempfile.mkdtemp(prefix="dbsentry-masked-export-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    services: dict[str, Service] = {}

    def stop_all() -> None:
        for s in services.values():
            s.stop()

    stack.callback(stop_all)
    targets = [Target("direct", False, up.conninfo(sslmode="disable", password=None), up.password)]
    settings: dict[str, Any] = {}
    service, target, used = start_proxy(up, workdir, "masked", args.extra)
    services["masked"], settings["masked"] = service, used
    targets.append(target)
    if args.compare_safety_net:
        # the same masked proxy with the safety net off, in the same rounds
        extra = dict(args.extra)
        extra["masking"] = {**extra.get("masking", {}), "safety_net": "off"}
        service, target, used = start_proxy(up, workdir, "masked-nonet", extra)
        services["masked-nonet"], settings["masked-nonet"] = service, used
        targets.append(target)
    if not args.no_passthrough:
        service, target, used = start_proxy(up, workdir, "passthrough", {"passthrough": True})
        services["passthrough"], settings["passthrough"] = service, used
        targets.append(target)
    by_name = {t.name: t for t in targets}

    check = verify_masking(by_name, args.table)
    client = Client(args.client, psql, args.table, args.rows, timeout=1800)
    say("warming up: one unmeasured COPY per target (page cache, proxy catalog and plan caches)")
    for t in targets:
        client.run(t, "copy", 0)
    say(f"targets: {', '.join(by_name)}; workloads: {', '.join(args.workloads)}; "
        f"{args.rounds} round(s); client {args.client}; {args.rows:,} rows ({size})")
    runs, connects = run_rounds(args, client, targets, services)
    summary = summarise(runs, args.workloads, list(by_name))

    print()
    print(render(summary, args.target_ratio))
    print()
    ratios: dict[str, float | None] = {}
    for s in summary:
        if s["target"] != "direct":
            ratios[f"{s['workload']}/{s['target']}"] = s["vs_direct"]
    for w in args.workloads:
        m = ratios.get(f"{w}/masked")
        pt = ratios.get(f"{w}/passthrough")
        nonet = ratios.get(f"{w}/masked-nonet")
        print(f"{w:<6}: masked/direct {fmt(m, '.2f')}x (goal >= {args.target_ratio}x), "
              f"passthrough/direct {fmt(pt, '.2f')}x"
              + (f", safety net off/direct {fmt(nonet, '.2f')}x" if nonet is not None else ""))
    conn_median = {k: (statistics.median(v) if v else None) for k, v in connects.items()}
    if any(conn_median.values()):
        print("psql connect + login + 'SELECT 1' (in the wall time, not in rows/s), median ms: "
              + ", ".join(f"{k} {fmt(v, '.0f')}" for k, v in conn_median.items()))

    out_path: Path = args.json or common.DEFAULT_RESULTS_DIR / f"masked-export-{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    profiles: dict[str, Any] = {}
    if not args.no_profile:
        py_spy = profiling.find_py_spy()
        if py_spy is None:
            say("py-spy not found (pip install py-spy); no profile")
        for workload in args.profile_workloads if py_spy else []:
            raw = out_path.parent / f"masked-export-{stamp}-profile-{workload}.txt"
            say(f"profiling the masked dbsentry during one {workload} with py-spy (not measured)")
            prof = profile_select(
                py_spy, client, by_name["masked"], services["masked"], workload, raw, args.profile_rate
            )
            profiles[workload] = prof
            if "own_by_function" not in prof:
                say(f"profile failed: {prof.get('error')}")
                continue
            print(f"\nprofile of the masked {workload} ({prof['samples']} samples), own time by function:")
            for row in prof["own_by_function"][:15]:
                print(f"  {row['percent']:5.1f}%  {row['function']}")
            print("inclusive, dbsentry functions:")
            for row in prof["inclusive_dbsentry"][:15]:
                print(f"  {row['percent']:5.1f}%  {row['function']}")

    document = {
        "schema": 1,
        "benchmark": "masked_export",
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "loadavg_at_end": common.loadavg()},
        "versions": {
            "dbsentry": common.dbsentry_version(),
            "git": common.git_revision(),
            "python": platform.python_version(),
            "postgresql": facts["server_version"],
            "psql": common.first_line([psql, "--version"]) if psql else None,
        },
        "settings": {
            "rows": args.rows,
            "table": args.table,
            "table_size": size,
            "rounds": args.rounds,
            "client": args.client,
            "workloads": {w: statement(w, args.table) for w in args.workloads},
            "database": up.dbname,
            "dbsentry": settings,
        },
        "masking_check": check,
        "summary": summary,
        "ratios": ratios,
        "connect_ms_median": conn_median,
        "runs": [asdict(r) for r in runs],
        "profiles": profiles,
    }
    out_path.write_text(json.dumps(document, indent=2) + "\n")
    say(f"results written to {common.display_path(out_path)}")
    return 1 if any(r.error for r in runs) else 0


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(parse_args(argv), bench)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Throughput, latency, CPU and memory of dbsentry against PgBouncer and a direct connection.

One run starts (or reuses) PostgreSQL, starts PgBouncer and the dbsentry processes, and
measures the same workloads against each of these targets, all reaching one database:

* ``direct``          client -> PostgreSQL
* ``pgbouncer``       client -> PgBouncer (session pooling) -> PostgreSQL
* ``passthrough``     client -> dbsentry, ``passthrough: true`` (governance off) -> PostgreSQL
* ``governed``        client -> dbsentry, default settings (baseline policy, audit with
                      ``durability: effect``, masking on) -> PostgreSQL
* ``governed-write``  the same with ``audit.durability: write`` (``--targets all``)
* ``governed-sync``   the same with ``audit.durability: sync`` (``--targets all``)

Workloads (``--workloads``; see bench/workloads.py): ``select`` (``pgbench -S`` in each
``--modes`` protocol), ``tpcb`` (pgbench's TPC-B-like writes), ``rows100`` (100 rows with
sensitive columns per statement, masked by the governed target), each at every
``--clients`` count; ``export`` (a whole table with sensitive columns by COPY and by
SELECT, from bench/masked_export.py); ``connect`` (``pgbench -S -C``: a new connection per
transaction); ``idle`` (``--idle-connections`` client connections logged in and held).

The targets are measured alternately, round after round (the order rotates every round),
so that noise on the machine hits all of them alike; the median over the rounds is
reported.  The idle-connections workload runs once per target, in round 1.  With
``--tls`` every target is measured over TLS as well, compared only with each other.

Usage::

    python bench/compare.py --quick                       # smoke run: well under a minute
    python bench/compare.py                               # the full matrix, 3 rounds x 10 s
    python bench/compare.py --workloads select --modes prepared --clients 8 --tls
    python bench/compare.py --targets pgbouncer,governed --json out.json
    python bench/compare.py --profile                     # also py-spy the dbsentry processes
    python bench/compare.py --workers 2 --targets passthrough,governed   # two worker processes each

PostgreSQL: ``$BENCH_PG_DSN`` (a libpq connection string), else 127.0.0.1:5432 as user
``postgres``, database ``test`` when that answers, else an embedded server started by
the test support code (``tests/support/pg.py``).  The tables live in the database
``dbsentry_bench`` (created when missing).

Results go to ``bench/results/<timestamp>.json`` (git-ignored) unless ``--json`` says
otherwise.  See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import masked_export
import profiling
from common import (
    DEFAULT_RESULTS_DIR,
    BenchError,
    Upstream,
    bench_database,
    dbsentry_version,
    display_path,
    ensure_pgbench_tables,
    fdatasync_probe,
    find_binary,
    find_upstream,
    first_line,
    free_connection_slots,
    git_revision,
    loadavg,
    machine_facts,
    raise_nofile_limit,
    run_main,
    say,
    server_facts,
)
from report import (
    Summary,
    check_targets,
    ratios,
    render_idle,
    render_ratios,
    render_table,
    render_targets,
    summarise,
)
from targets import (
    IDLE_ROLE_PREFIX,
    KINDS,
    IdleRole,
    Service,
    Setup,
    Target,
    create_idle_role,
    drop_idle_role,
    release_pgbouncer_servers,
    revive,
    start_targets,
)
from workloads import (
    ALL_MODES,
    ALL_WORKLOADS,
    PGBENCH_WORKLOADS,
    STATEMENTS_PER_TRANSACTION,
    Cell,
    IdleSettings,
    RunResult,
    Workload,
    export_client,
    idle_not_applicable,
    pgbench_workload,
    rows100_script,
    run_export_cell,
    run_idle_cell,
    run_pgbench_cell,
)

FULL_EXPORT_ROWS = 1_000_000


def csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        "--smoke",
        action="store_true",
        help="smoke run: 1 round, -t 20 per client instead of -T, clients 1,8, "
        "a 20,000-row export, 200 idle connections",
    )
    p.add_argument(
        "--targets",
        default="direct,pgbouncer,passthrough,governed",
        help=f"comma separated, of {', '.join(KINDS)}, or 'all' (default direct,pgbouncer,passthrough,governed)",
    )
    p.add_argument(
        "--workloads",
        default=",".join(ALL_WORKLOADS),
        help=f"comma separated, of {', '.join(ALL_WORKLOADS)} (default all)",
    )
    p.add_argument(
        "--modes", default=",".join(ALL_MODES), help="pgbench -M protocols of select (default all)"
    )
    p.add_argument(
        "--other-mode",
        default="simple",
        choices=ALL_MODES,
        help="pgbench -M of tpcb, rows100 and connect (default simple)",
    )
    p.add_argument("--clients", help="pgbench -c values, comma separated (default 1,8,64)")
    p.add_argument("--threads", type=int, default=2, help="pgbench -j, at most -c (default 2)")
    p.add_argument("--duration", type=int, help="seconds per pgbench run, -T (default 10)")
    p.add_argument(
        "--transactions",
        type=int,
        help="pgbench -t: transactions per client instead of a duration",
    )
    p.add_argument(
        "--rounds", type=int, help="rounds over all targets (default 3); the median is reported"
    )
    p.add_argument(
        "--warmup",
        type=int,
        help="unmeasured seconds per target and pgbench workload before round 1 (default 2)",
    )
    p.add_argument(
        "--database",
        default="dbsentry_bench",
        help="database for the tables, created if missing (default dbsentry_bench; "
        "'' for the server's own)",
    )
    p.add_argument("--scale", type=int, default=10, help="pgbench scale factor for -i (default 10)")
    p.add_argument(
        "--export-rows",
        type=int,
        help=f"rows of the table with sensitive columns (default {FULL_EXPORT_ROWS:,})",
    )
    p.add_argument(
        "--idle-connections", type=int, help="idle client connections to hold (default 10000)"
    )
    p.add_argument("--idle-hold", type=float, help="seconds to hold them (default 5)")
    p.add_argument(
        "--idle-sample", type=int, default=10, help="connections that run SELECT 1 (default 10)"
    )
    p.add_argument(
        "--idle-concurrency", type=int, default=100, help="logins in flight at once (default 100)"
    )
    p.add_argument(
        "--tls", action="store_true", help="also measure with TLS between the client and targets"
    )
    p.add_argument("--no-latency-log", action="store_true", help="skip pgbench -l (no p50/p99)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the rounds, py-spy each dbsentry process during one extra select run per mode",
    )
    p.add_argument(
        "--dbsentry-config",
        metavar="JSON",
        default="{}",
        help="extra settings merged into both dbsentry configs, "
        'e.g. \'{"audit": {"durability": "async"}}\'',
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of each dbsentry target (workers: N, docs/deployment.md; default 1)",
    )
    p.add_argument(
        "--json",
        type=Path,
        help="where to write the JSON results (default bench/results/<timestamp>.json)",
    )
    args = p.parse_args(argv)

    quick = args.quick
    defaults: dict[str, Any] = {
        "clients": "1,8" if quick else "1,8,64",
        "duration": 1 if quick else 10,
        "transactions": 20 if quick and args.duration is None else None,
        "rounds": 1 if quick else 3,
        "warmup": 0 if quick else 2,
        "export_rows": 20_000 if quick else FULL_EXPORT_ROWS,
        "idle_connections": 200 if quick else 10_000,
        "idle_hold": 1.0 if quick else 5.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    try:
        args.dbsentry_extra = json.loads(args.dbsentry_config)
    except json.JSONDecodeError as exc:
        p.error(f"--dbsentry-config is not JSON: {exc}")
    if not isinstance(args.dbsentry_extra, dict):
        p.error("--dbsentry-config must be a JSON object")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    args.dbsentry_extra.setdefault("workers", args.workers)

    def choose(option: str, given: str, allowed: Sequence[str]) -> list[str]:
        chosen = csv(given)
        if bad := [x for x in chosen if x not in allowed]:
            p.error(f"unknown {option} {', '.join(bad)}; choose from {', '.join(allowed)}")
        if not chosen:
            p.error(f"{option} is empty")
        return [x for x in allowed if x in chosen]  # canonical order

    args.targets = choose("--targets", ",".join(KINDS) if args.targets == "all" else args.targets, KINDS)
    args.workloads = choose("--workloads", args.workloads, ALL_WORKLOADS)
    args.modes = choose("--modes", args.modes, ALL_MODES)
    try:
        args.clients = sorted({int(c) for c in csv(args.clients)})
    except ValueError:
        p.error("--clients takes whole numbers, e.g. 1,8,64")
    if not args.clients or min(args.clients) < 1:
        p.error("--clients needs numbers of at least 1")
    for name in ("rounds", "duration", "threads", "idle_connections", "export_rows"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.export_rows < 100:
        p.error("--export-rows must be at least 100 (rows100 reads 100 rows at a time)")
    if args.transactions is not None and args.transactions < 1:
        p.error("--transactions must be at least 1")
    args.idle_sample = max(0, args.idle_sample)
    args.idle_concurrency = max(1, args.idle_concurrency)
    return args


def build_cells(args: argparse.Namespace) -> list[Cell]:
    cells: list[Cell] = []
    for workload in args.workloads:
        if workload == "select":
            cells += [Cell("select", m, c) for m in args.modes for c in args.clients]
        elif workload in PGBENCH_WORKLOADS:
            cells += [Cell(workload, args.other_mode, c) for c in args.clients]
        elif workload == "export":
            cells += [Cell("export", kind, 1) for kind in ("copy", "select")]
        elif workload == "idle":
            cells.append(Cell("idle", "-", args.idle_connections))
    return cells


def export_table(rows: int) -> str:
    return "bench_customers" if rows == FULL_EXPORT_ROWS else f"bench_customers_{rows}"


# --------------------------------------------------------------------------------------
# The benchmark


@dataclass
class Context:
    """What the rounds need: the setup, the workloads and how to run each cell."""

    args: argparse.Namespace
    up: Upstream
    facts: dict[str, Any]
    setup: Setup
    pgbench: str | None
    log_dir: Path
    table: str
    rows100: Path | None = None
    export: masked_export.Client | None = None
    idle: IdleSettings | None = None
    not_applicable: dict[tuple[str, str], str] = field(default_factory=dict)
    workloads: dict[tuple[str, int], Workload] = field(default_factory=dict)

    def pgbench_workload(self, name: str, clients: int) -> Workload:
        key = (name, clients)
        if key not in self.workloads:
            assert self.pgbench is not None
            self.workloads[key] = pgbench_workload(
                name,
                pgbench=self.pgbench,
                clients=clients,
                threads=self.args.threads,
                duration=self.args.duration,
                transactions=self.args.transactions,
                latency_log=not self.args.no_latency_log,
                log_dir=self.log_dir,
                rows100=(self.rows100, self.args.export_rows) if self.rows100 else None,
            )
        return self.workloads[key]

    def ensure_headroom(self, clients: int) -> None:
        """Before a pgbench run: enough free connection slots on the server for its clients
        (PgBouncer keeps its server connections after a run; they are closed when short)."""
        needed = clients + 2
        reserved = int(self.facts["superuser_reserved_connections"])
        free = free_connection_slots(self.up, reserved)
        if free is None or free >= needed:
            return
        for t in self.setup.targets:
            if t.name == "pgbouncer" and t.service is not None and t.service.alive():
                release_pgbouncer_servers(t)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            free = free_connection_slots(self.up, reserved)
            if free is None or free >= needed:
                return
            time.sleep(0.2)
        self.setup.note(
            f"the server had only {free} free connection slots for a run with {clients} clients "
            f"(max_connections = {self.facts['max_connections']}, shared with other work)"
        )

    def run_cell(self, cell: Cell, target: Target, round_no: int) -> RunResult:
        if cell.workload in PGBENCH_WORKLOADS:
            self.ensure_headroom(cell.clients)
            workload = self.pgbench_workload(cell.workload, cell.clients)
            return run_pgbench_cell(workload, cell, target, round_no)
        if cell.workload == "export":
            assert self.export is not None
            return run_export_cell(self.export, cell, target, round_no)
        assert self.idle is not None
        return run_idle_cell(self.idle, cell, target, round_no)


def stopped_during(service: Service, result: RunResult, grace: float = 5.0) -> bool:
    """Whether the proxy went away during a run (a failed run gives it time to finish exiting)."""
    deadline = time.monotonic() + (grace if result.error else 0)
    while service.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not service.alive()


def describe(r: RunResult, unit: str) -> str:
    shown = f"{r.tps:,.0f} {unit}" if r.tps is not None else "no result"
    if r.proxy_cpu_us_per_op is not None:
        shown += f", proxy cpu {r.proxy_cpu_us_per_op:.1f} us/op"
    if r.workload == "idle" and r.details:
        shown += f", {r.details['summary']}"
    elif r.error:
        shown += f"  ERROR: {r.error}"
    return shown


def warm_up(ctx: Context, cells: list[Cell]) -> None:
    seconds = ctx.args.warmup
    seen: set[tuple[str, str]] = set()
    for cell in cells:
        if cell.workload not in PGBENCH_WORKLOADS or cell.workload == "connect":
            continue
        if (cell.workload, cell.mode) in seen:
            continue
        seen.add((cell.workload, cell.mode))
        clients = max(c.clients for c in cells if c.workload == cell.workload)
        workload = ctx.pgbench_workload(cell.workload, clients)
        for t in ctx.setup.targets:
            ctx.ensure_headroom(clients)
            workload.warm_up(t, cell.mode, seconds)


def run_rounds(ctx: Context, cells: list[Cell]) -> list[RunResult]:
    """All targets, alternately, round after round; the order rotates every round."""
    args, setup = ctx.args, ctx.setup
    if args.warmup and any(c.workload in PGBENCH_WORKLOADS for c in cells):
        say(f"warming up ({args.warmup} s per target and pgbench workload)")
        warm_up(ctx, cells)
    if args.warmup and ctx.export is not None:
        direct = Target("direct", False, ctx.up.conninfo(sslmode="disable", password=None), ctx.up.password)
        ctx.export.run(direct, "copy", 0)  # the table into the page cache
    results: list[RunResult] = []
    targets = setup.targets
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(targets)
        order = targets[shift:] + targets[:shift]
        for cell in cells:
            if cell.workload == "idle" and round_no > 1:
                continue  # memory freed by Python stays in the process: once is honest
            unit = {"export": "rows/s", "idle": "conn/s", "connect": "conn/s"}.get(cell.workload, "tps")
            for t in order:
                if (cell.key, t.label) in ctx.not_applicable:
                    continue
                for attempt in (1, 2):
                    revive(setup, f"before round {round_no} {cell.key} {t.label}")
                    r = ctx.run_cell(cell, t, round_no)
                    if t.service is None or not stopped_during(t.service, r):
                        break
                    r.error = f"{t.service.name} exited during the run"
                    if attempt == 1:
                        say(f"round {round_no}/{args.rounds} {cell.key} {t.label}: {r.error}; retrying")
                if cell.workload == "idle" and t.name == "pgbouncer":
                    release_pgbouncer_servers(t)  # its pool would hold the role's few slots
                results.append(r)
                say(f"round {round_no}/{args.rounds} {cell.key:<22} {t.label:<16} {describe(r, unit)}")
    return results


def run_profiles(ctx: Context, out_dir: Path, stamp: str) -> dict[str, Any]:
    py_spy = profiling.find_py_spy()
    if py_spy is None:
        say("--profile: py-spy not found (pip install py-spy); skipping")
        return {}
    assert ctx.pgbench is not None
    clients = max(ctx.args.clients)
    workload = pgbench_workload(
        "select",
        pgbench=ctx.pgbench,
        clients=clients,
        threads=ctx.args.threads,
        duration=ctx.args.duration,
        transactions=None,
        latency_log=False,
        log_dir=ctx.log_dir,
        rows100=None,
    )
    profiles: dict[str, Any] = {}
    for t in ctx.setup.targets:
        if t.name not in ("passthrough", "governed", "governed-write") or t.service is None:
            continue
        for mode in ctx.args.modes:
            revive(ctx.setup, f"before profiling {t.label} {mode}")
            ctx.ensure_headroom(clients)
            say(f"profiling {t.label} select {mode} c{clients} with py-spy ({ctx.args.duration} s, not measured)")
            prof = profiling.profile_dbsentry(py_spy, workload, t, t.service, mode, out_dir, stamp)
            profiles[f"{t.label}/{mode}"] = prof
            for row in prof.get("top_self", [])[:10]:
                print(f"  {t.label} {mode} self {row['percent']:5.1f}%  {row['frame']}")
    return profiles


def prepare_idle(args: argparse.Namespace, up: Upstream, facts: dict[str, Any], notes: list[str]) -> IdleRole | None:
    """File-descriptor limits for the idle connections, and the connection-limited role
    the proxies use for them."""
    needed = args.idle_connections + 1024
    soft = raise_nofile_limit(2 * args.idle_connections + 1024)
    if soft < needed:
        fitting = max(1, soft - 1024)
        notes.append(
            f"idle connections: {args.idle_connections} asked for, but the open-files limit is "
            f"{soft}; holding {fitting}"
        )
        args.idle_connections = fitting
    reserved = int(facts["superuser_reserved_connections"])
    free = free_connection_slots(up, reserved) or 20
    limit = max(1, min(max(2 * args.idle_sample, 10), free // 4))
    args.idle_sample = min(args.idle_sample, limit)
    role = create_idle_role(up, limit)
    if role is None:
        notes.append(
            f"idle connections: could not create a role {IDLE_ROLE_PREFIX}<pid>; the proxies "
            "log in to PostgreSQL as the benchmark's own user, whose connections are not limited"
        )
    return role


def bench(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    machine = machine_facts()
    cells = build_cells(args)
    uses_pgbench = any(c.workload in PGBENCH_WORKLOADS for c in cells)
    pgbench = find_binary("pgbench")
    if pgbench is None:
        raise BenchError(
            "pgbench not found: install the PostgreSQL client (apt-get install postgresql-client)"
        )
    psql = find_binary("psql")

    up = find_upstream()
    facts = server_facts(up)
    ssl_text = "on" if facts["ssl"] else "off"
    say(
        f"PostgreSQL {facts['server_version']} at {up.host}:{up.port} ({up.source}), "
        f"ssl={ssl_text}, max_connections={facts['max_connections']}"
    )
    needed = max(args.clients) + 5
    if uses_pgbench and facts["max_connections"] - facts["superuser_reserved_connections"] < needed:
        say(f"warning: max_connections={facts['max_connections']} is too small for {max(args.clients)} clients")
    up = bench_database(up, args.database)
    ensure_pgbench_tables(up, pgbench, args.scale)  # check_target reads pgbench_accounts
    table = export_table(args.export_rows)
    if {"export", "rows100"} & set(args.workloads):
        masked_export.ensure_table(up, table, args.export_rows)

    setup = Setup()
    idle_role = None
    proxies = [k for k in args.targets if k != "direct"]
    if "idle" in args.workloads and proxies:
        idle_role = prepare_idle(args, up, facts, setup.notes)
        if idle_role is not None:
            stack.callback(drop_idle_role, up, idle_role)  # after the proxies have stopped
        cells = build_cells(args)  # the count may have been lowered to the open-files limit
    stack.callback(setup.stop)
    workdir = Path(tempfile.mkdtemp(prefix="dbsentry-bench-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    # where the dbsentry targets keep their audit logs: issue 17 bounds effect's latency by it
    fsync = fdatasync_probe(workdir)
    say(f"fdatasync where the audit logs are: p50 {fsync['p50_ms'] * 1000:.0f} us, p99 {fsync['p99_ms'] * 1000:.0f} us, {fsync['cpu_us']:.0f} us CPU")
    tls_modes = [False, True] if args.tls else [False]
    start_targets(
        up,
        kinds=args.targets,
        tls_modes=tls_modes,
        server_ssl=facts["ssl"],
        clients=max(args.clients),
        idle_role=idle_role,
        idle_clients=args.idle_connections if "idle" in args.workloads else 0,
        dbsentry_extra=args.dbsentry_extra,
        workdir=workdir,
        setup=setup,
    )
    for t in setup.targets:
        if t.name == "direct":
            t.idle_dbname = up.dbname
    labels = [t.label for t in setup.targets]
    if not labels:
        raise BenchError("no target to measure")

    log_dir = workdir / "pgbench-logs"
    log_dir.mkdir()
    ctx = Context(args, up, facts, setup, pgbench, log_dir, table)
    if "rows100" in args.workloads:
        ctx.rows100 = rows100_script(workdir, table)
    masking_check: dict[str, Any] = {}
    if {"export", "rows100"} & set(args.workloads):
        direct = Target("direct", False, up.conninfo(sslmode="disable", password=None), up.password)
        for t in setup.targets:
            if t.name == "governed":
                group = {"direct": direct, "masked": t}
                group.update({p.name: p for p in setup.targets if p.name == "passthrough" and p.tls == t.tls})
                masking_check[t.label] = masked_export.verify_masking(group, table)
    if "export" in args.workloads:
        if psql is None:
            say("psql not found: the export workload reads with psycopg instead")
            ctx.export = masked_export.Client("psycopg", None, table, args.export_rows, timeout=1800)
        else:
            ctx.export = export_client(psql, table, args.export_rows)
    if "idle" in args.workloads:
        ctx.idle = IdleSettings(
            args.idle_connections, args.idle_hold, args.idle_sample, args.idle_concurrency
        )
        reason = idle_not_applicable(facts, args.idle_connections)
        for cell in cells:
            for t in setup.targets:
                if cell.workload == "idle" and t.name == "direct" and reason:
                    ctx.not_applicable[(cell.key, t.label)] = reason

    length = f"-t {args.transactions} per client" if args.transactions else f"{args.duration} s"
    pgbench_part = (
        f" x {length}; clients {','.join(map(str, args.clients))}" if uses_pgbench else ""
    )
    say(
        f"targets: {', '.join(labels)}; workloads: {', '.join(args.workloads)}; "
        f"{args.rounds} round(s){pgbench_part}; {len(cells)} cells"
    )
    results = run_rounds(ctx, cells)
    summaries = summarise(results, cells, labels, ctx.not_applicable)
    ratio_map = print_report(summaries, setup.notes, args.idle_hold)
    targets = check_targets(summaries, fsync["p50_ms"])
    if targets:
        print()
        print(render_targets(targets))

    out_path: Path = args.json or DEFAULT_RESULTS_DIR / f"{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    profiles = run_profiles(ctx, out_path.parent, stamp) if args.profile else {}

    document = {
        "schema": 2,
        "benchmark": "compare",
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "loadavg_at_end": loadavg()},
        "versions": {
            "dbsentry": dbsentry_version(),
            "git": git_revision(),
            "python": platform.python_version(),
            "postgresql": facts["server_version"],
            "pgbench": first_line([pgbench, "--version"]),
            "psql": first_line([psql, "--version"]) if psql else None,
            "pgbouncer": first_line([setup.pgbouncer_bin, "--version"])
            if setup.pgbouncer_bin
            else None,
        },
        "settings": settings_document(args, up, facts, setup, table, idle_role),
        "masking_check": masking_check,
        "summary": [asdict(s) for s in summaries],
        "ratios": ratio_map,
        "fdatasync": fsync,
        "targets": [t.row() for t in targets],
        "runs": [asdict(r) for r in results],
        "profiles": profiles,
        "notes": setup.notes,
    }
    out_path.write_text(json.dumps(document, indent=2) + "\n")
    say(f"results written to {display_path(out_path)}")
    failed = any(r.error for r in results) or any(s.failed for s in summaries)
    return 1 if failed else 0


def pgbench_commands(args: argparse.Namespace, table: str) -> dict[str, str]:
    length = f"-t {args.transactions}" if args.transactions else f"-T {args.duration}"
    log = "" if args.no_latency_log else " -l"
    common = f"-c <clients> -j min(<clients>, {args.threads}) {length}{log}"
    return {
        "select": f"pgbench -n -S -M <mode> {common}",
        "tpcb": f"pgbench -n -M {args.other_mode} {common}",
        "rows100": f"pgbench -n -f rows100.sql -D rows={args.export_rows} -M {args.other_mode} "
        f"{common}  # SELECT id, full_name, email, phone FROM {table} WHERE id BETWEEN "
        ":start AND :start + 99",
        "connect": f"pgbench -n -S -C -M {args.other_mode} {common}",
        "export": f"psql -c 'COPY (SELECT * FROM {table}) TO STDOUT' and "
        f"'SELECT * FROM {table}', rows/s from psql's \\timing",
        "idle": f"{args.idle_connections} raw-protocol logins held {args.idle_hold:g} s, then "
        f"SELECT 1 on {args.idle_sample} of them",
    }


def settings_document(
    args: argparse.Namespace,
    up: Upstream,
    facts: dict[str, Any],
    setup: Setup,
    table: str,
    idle_role: IdleRole | None,
) -> dict[str, Any]:
    return {
        "quick": args.quick,
        "targets": args.targets,
        "workloads": args.workloads,
        "rounds": args.rounds,
        "duration_s": None if args.transactions else args.duration,
        "transactions_per_client": args.transactions,
        "warmup_s": args.warmup,
        "clients": args.clients,
        "threads": args.threads,
        "modes": args.modes,
        "other_mode": args.other_mode,
        "tls": args.tls,
        "scale": args.scale,
        "latency_log": not args.no_latency_log,
        "statements_per_transaction": STATEMENTS_PER_TRANSACTION,
        "commands": pgbench_commands(args, table),
        "export": {"table": table, "rows": args.export_rows},
        "idle": {
            "connections": args.idle_connections,
            "hold_s": args.idle_hold,
            "sample": args.idle_sample,
            "concurrency": args.idle_concurrency,
            "upstream_role": (
                {"name": idle_role.name, "connection_limit": idle_role.limit} if idle_role else None
            ),
        },
        "upstream": {
            "source": up.source,
            "database": up.dbname,
            "ssl": facts["ssl"],
            "max_connections": facts["max_connections"],
            "shared_buffers": facts["shared_buffers"],
            "same_host": up.host in ("127.0.0.1", "localhost", "::1"),
        },
        **setup.settings,
    }


def print_report(
    summaries: list[Summary], notes: list[str], hold_s: float
) -> dict[str, dict[str, float | None]]:
    print()
    print(render_table(summaries))
    print(textwrap.fill(
        "rate: median over the rounds; avg/p50/p99: pgbench's latency (connect: avg includes the "
        "connection, p50/p99 the query only; idle: the login); cpu us/op: the proxy's user+system "
        "CPU time (/proc/<pid>/stat, with its children) per statement, connection or row, "
        "'~' when under 0.1 s was measured; RSS: the proxy's largest VmRSS after a run; "
        "fail: failed transactions (idle: connections not opened)",
        width=110,
    ))
    idle = render_idle(summaries, hold_s)
    if idle:
        print()
        print(idle)
    lines = render_ratios(summaries)
    if lines:
        print()
        print(lines)
    for n in notes:
        print(f"note: {n}")
    return ratios(summaries)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(parse_args(argv), bench)


if __name__ == "__main__":
    sys.exit(main())

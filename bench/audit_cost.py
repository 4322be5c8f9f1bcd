#!/usr/bin/env python3
"""What the audit trail costs: pgbench through dbsentry with sync audit, async audit and no
audit at all, alternating in rounds, plus a direct connection for reference.

Targets, all reaching the same database (the pgbench tables of bench/compare.py):

* ``direct``    pgbench -> PostgreSQL
* ``sync``      pgbench -> dbsentry, ``audit.durability: sync`` (the default: a statement
                is forwarded once its record is committed, group commit) -> PostgreSQL
* ``async``     pgbench -> dbsentry, ``audit.durability: async`` (records committed every
                ``async_flush_ms``) -> PostgreSQL
* ``noaudit``   pgbench -> dbsentry, ``passthrough: true`` (no policy, no audit, no
                masking) -> PostgreSQL

Workloads (``pgbench -n -c 8 -j 2 -T <duration>``):

* ``select``         ``-S``: one primary-key SELECT per transaction, ``-M simple`` and
                     ``-M prepared``
* ``tpcb``           the default TPC-B-like script (BEGIN; 3 UPDATEs, SELECT, INSERT; END),
                     ``-M simple``
* ``simple-update``  ``-N`` (TPC-B without the branch and teller updates), ``-M simple``

Every round runs every workload on every target, the target order rotating each round;
medians over the rounds are reported with the ratios sync/noaudit and async/noaudit (and
each target against direct).  Each dbsentry also listens for HTTP so that its Prometheus
counters give the audit records and commits of each run: their quotient is the mean
group-commit batch.  At the end ``dbsentry audit verify`` checks the chains.

Usage::

    python bench/audit_cost.py                        # 3 rounds x 6 s
    python bench/audit_cost.py --rounds 5 --duration 10 --write-modes simple,prepared
    python bench/audit_cost.py --workloads select --json out.json

PostgreSQL and the pgbench tables are found/created as in bench/compare.py.  Results go to
``bench/results/audit-cost-<timestamp>.json``.  See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import targets as bench_targets
from common import BenchError, Upstream, say
from targets import Service, Target
from workloads import ALL_MODES, RunResult, Workload

TARGETS = ("direct", "sync", "async", "noaudit")
SCRIPTS = {"select": ["-S"], "tpcb": [], "simple-update": ["-N"]}
PROXY_CONFIG: dict[str, dict[str, Any]] = {
    "sync": {"audit": {"durability": "sync"}},
    "async": {"audit": {"durability": "async"}},
    "noaudit": {"passthrough": True},
}


@dataclass
class ScriptWorkload(Workload):
    """workloads.Workload with another pgbench script than ``-S``."""

    script: str = "select"

    def command(
        self, target: Target, mode: str, duration: int, log_prefix: str | None
    ) -> list[str]:
        cmd = [self.pgbench, "-n", *SCRIPTS[self.script], "-c", str(self.clients)]
        cmd += ["-j", str(self.threads), "-T", str(duration), "-M", mode]
        if log_prefix:
            cmd += ["-l", f"--log-prefix={self.log_dir / log_prefix}"]
        return [*cmd, target.conninfo]


@dataclass
class Run:
    round: int
    workload: str  # script/mode
    target: str
    tps: float | None = None
    latency_avg_ms: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    transactions: int | None = None
    failed: int | None = None
    audit_records: int | None = None
    audit_commits: int | None = None
    audit_commit_s: float | None = None
    error: str | None = None

    @property
    def batch(self) -> float | None:
        if self.audit_records and self.audit_commits:
            return self.audit_records / self.audit_commits
        return None


@dataclass
class Proxy:
    service: Service
    target: Target
    http_port: int
    config_path: Path
    settings: dict[str, Any] = field(default_factory=dict)

    def audit_counters(self) -> tuple[float, float, float] | None:
        """(records, commits, seconds spent committing) so far, from /metrics."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/metrics", timeout=5
            ) as resp:
                text = resp.read().decode()
        except OSError:
            return None

        def value(name: str) -> float:
            m = re.search(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M)
            return float(m.group(1)) if m else 0.0

        return (
            value("dbsentry_audit_records_total"),
            value("dbsentry_audit_commit_seconds_count"),
            value("dbsentry_audit_commit_seconds_sum"),
        )


def start_proxy(up: Upstream, workdir: Path, name: str, extra: dict[str, Any]) -> Proxy:
    directory = workdir / name
    directory.mkdir()
    http_port = common.free_port()
    extra = bench_targets.merge(extra, {"listen": {"http": f"127.0.0.1:{http_port}"}})
    service, target, used = bench_targets.start_dbsentry(up, directory, None, extra)
    service.name = f"dbsentry-{name}"
    target.name = name
    used["config"]["listen"]["http"] = "127.0.0.1:<free port> (for /metrics)"
    return Proxy(service, target, http_port, directory / "dbsentry" / "dbsentry.yaml", used)


def check(t: Target) -> None:
    bench_targets.check_target(t)


def one_run(
    workload: ScriptWorkload, mode: str, t: Target, proxy: Proxy | None, round_no: int
) -> Run:
    before = proxy.audit_counters() if proxy else None
    r: RunResult = workload.run(t, mode, round_no)
    if proxy:
        time.sleep(0.3)  # async: let the last flush land in the counters
    after = proxy.audit_counters() if proxy else None
    run = Run(
        round_no,
        f"{workload.script}/{mode}",
        t.name,
        tps=r.tps,
        latency_avg_ms=r.latency_avg_ms,
        p50_ms=r.p50_ms,
        p99_ms=r.p99_ms,
        transactions=r.transactions,
        failed=r.failed,
        error=r.error,
    )
    if before and after and t.name != "noaudit":
        run.audit_records = int(after[0] - before[0])
        run.audit_commits = int(after[1] - before[1])
        run.audit_commit_s = round(after[2] - before[2], 3)
    return run


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: list[Run], workloads: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for w in workloads:
        rows: dict[str, dict[str, Any]] = {}
        for name in TARGETS:
            rs = [r for r in runs if r.workload == w and r.target == name]
            good = [r for r in rs if r.error is None and r.tps is not None]
            if not rs:
                continue
            tps = [r.tps for r in good if r.tps is not None]
            rows[name] = {
                "workload": w,
                "target": name,
                "rounds": len(good),
                "tps": median(tps),
                "tps_min": min(tps) if tps else None,
                "tps_max": max(tps) if tps else None,
                "latency_avg_ms": median([r.latency_avg_ms for r in good if r.latency_avg_ms is not None]),
                "p50_ms": median([r.p50_ms for r in good if r.p50_ms is not None]),
                "p99_ms": median([r.p99_ms for r in good if r.p99_ms is not None]),
                "failed": sum(r.failed or 0 for r in rs),
                "audit_records_per_s": median(
                    [
                        r.audit_records / (r.transactions / r.tps)
                        for r in good
                        if r.audit_records and r.transactions and r.tps
                    ]
                ),
                "mean_batch": median([b for r in good if (b := r.batch) is not None]),
                "commits_per_s": median(
                    [
                        r.audit_commits / (r.transactions / r.tps)
                        for r in good
                        if r.audit_commits and r.transactions and r.tps
                    ]
                ),
                "errors": [f"round {r.round}: {r.error}" for r in rs if r.error],
            }
        base, direct = rows.get("noaudit", {}).get("tps"), rows.get("direct", {}).get("tps")
        for row in rows.values():
            row["vs_noaudit"] = row["tps"] / base if base and row["tps"] else None
            row["vs_direct"] = row["tps"] / direct if direct and row["tps"] else None
        out.extend(rows.values())
    return out


def fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def render(summary: list[dict[str, Any]]) -> str:
    header = (
        f"{'workload':<22} {'target':<8} {'tps':>7} {'min-max':>12} {'avg ms':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'fail':>4} {'/noaudit':>8} {'/direct':>7} {'rec/s':>6} {'batch':>6}"
    )
    lines = [header, "-" * len(header)]
    prev = None
    for s in summary:
        if prev is not None and s["workload"] != prev:
            lines.append("")
        prev = s["workload"]
        spread = f"{fmt(s['tps_min'], '.0f')}-{fmt(s['tps_max'], '.0f')}" if s["tps_min"] else "-"
        lines.append(
            f"{s['workload']:<22} {s['target']:<8} {fmt(s['tps'], '.0f'):>7} {spread:>12} "
            f"{fmt(s['latency_avg_ms'], '.2f'):>7} {fmt(s['p50_ms'], '.2f'):>7} "
            f"{fmt(s['p99_ms'], '.2f'):>7} {s['failed']:>4} {fmt(s['vs_noaudit'], '.2f'):>8} "
            f"{fmt(s['vs_direct'], '.2f'):>7} {fmt(s['audit_records_per_s'], '.0f'):>6} "
            f"{fmt(s['mean_batch'], '.1f'):>6}"
        )
        for e in s["errors"]:
            lines.append(f"      ! {s['target']} {e}")
    return "\n".join(lines)


def verify(proxy: Proxy) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "dbsentry", "audit", "verify", "-c", str(proxy.config_path), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"error": (proc.stderr or proc.stdout).strip()[-500:], "status": proc.returncode}
    result["status"] = proc.returncode
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--duration", type=int, default=6, help="seconds per pgbench run (default 6)")
    p.add_argument("--clients", type=int, default=8, help="pgbench -c (default 8)")
    p.add_argument("--threads", type=int, default=2, help="pgbench -j (default 2)")
    p.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    p.add_argument("--database", default="dbsentry_bench", help="database (created if missing)")
    p.add_argument(
        "--workloads",
        default="select,tpcb,simple-update",
        help="comma separated: select, tpcb, simple-update (default all)",
    )
    p.add_argument("--select-modes", default="simple,prepared", help="-M for select")
    p.add_argument("--write-modes", default="simple", help="-M for tpcb and simple-update")
    p.add_argument("--no-direct", action="store_true", help="leave the direct target out")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured seconds per target (2)")
    p.add_argument("--no-latency-log", action="store_true", help="skip pgbench -l (no p50/p99)")
    p.add_argument("--json", type=Path, help="default bench/results/audit-cost-<timestamp>.json")
    args = p.parse_args(argv)
    scripts = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if bad := [w for w in scripts if w not in SCRIPTS]:
        p.error(f"unknown workload(s): {', '.join(bad)}")
    args.combos = []
    for script in scripts:
        modes = args.select_modes if script == "select" else args.write_modes
        for mode in (m.strip() for m in modes.split(",") if m.strip()):
            if mode not in ALL_MODES:
                p.error(f"unknown mode {mode}")
            args.combos.append((script, mode))
    return args


def bench(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    machine = common.machine_facts()
    pgbench = common.find_binary("pgbench")
    if pgbench is None:
        raise BenchError("pgbench not found (apt-get install postgresql-client)")
    up = common.find_upstream()
    facts = common.server_facts(up)
    say(f"PostgreSQL {facts['server_version']} at {up.host}:{up.port} ({up.source})")
    up = common.bench_database(up, args.database)
    common.ensure_pgbench_tables(up, pgbench, args.scale)

    workdir = Path(tempfile.mkdtemp(prefix="dbsentry-audit-cost-"))
    stack.callback(shutil.rmtree, workdir, ignore_errors=True)
    proxies: dict[str, Proxy] = {}

    def stop_all() -> None:
        for p in proxies.values():
            p.service.stop()

    stack.callback(stop_all)
    targets: list[Target] = []
    if not args.no_direct:
        targets.append(Target("direct", False, up.conninfo(sslmode="disable", password=None), up.password))
    for name, extra in PROXY_CONFIG.items():
        proxies[name] = start_proxy(up, workdir, name, extra)
        targets.append(proxies[name].target)
    for t in targets:
        check(t)

    log_dir = workdir / "pgbench-logs"
    log_dir.mkdir()
    workloads = {
        script: ScriptWorkload(
            pgbench, args.clients, min(args.threads, args.clients), args.duration,
            not args.no_latency_log, log_dir, script=script,
        )
        for script in {s for s, _ in args.combos}
    }
    if args.warmup:
        say(f"warming up ({args.warmup} s per target and workload)")
        for script, mode in args.combos:
            for t in targets:
                workloads[script].warm_up(t, mode, args.warmup)
    say(f"targets: {', '.join(t.name for t in targets)}; workloads: "
        f"{', '.join(f'{s}/{m}' for s, m in args.combos)}; {args.rounds} round(s) x {args.duration} s, "
        f"{args.clients} clients")
    runs: list[Run] = []
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(targets)
        order = targets[shift:] + targets[:shift]
        for script, mode in args.combos:
            for t in order:
                proxy = proxies.get(t.name)
                if proxy and not proxy.service.alive():
                    raise BenchError(f"{proxy.service.name} exited:\n{common.tail(proxy.service.log)}")
                r = one_run(workloads[script], mode, t, proxy, round_no)
                runs.append(r)
                batch = f" batch {r.batch:.1f}" if r.batch else ""
                err = f"  ERROR: {r.error}" if r.error else ""
                say(f"round {round_no}/{args.rounds} {script + '/' + mode:<22} {t.name:<8} "
                    f"tps {fmt(r.tps, '.0f')}{batch}{err}")
    workload_names = [f"{s}/{m}" for s, m in args.combos]
    summary = summarise(runs, workload_names)
    print()
    print(render(summary))
    print()
    ratios: dict[str, dict[str, float | None]] = {}
    for w in workload_names:
        by = {s["target"]: s for s in summary if s["workload"] == w}
        ratios[w] = {
            "sync/noaudit": by.get("sync", {}).get("vs_noaudit"),
            "async/noaudit": by.get("async", {}).get("vs_noaudit"),
            "noaudit/direct": by.get("noaudit", {}).get("vs_direct"),
        }
        print(f"{w:<22} sync/noaudit {fmt(ratios[w]['sync/noaudit'], '.2f')}x   "
              f"async/noaudit {fmt(ratios[w]['async/noaudit'], '.2f')}x   "
              f"noaudit/direct {fmt(ratios[w]['noaudit/direct'], '.2f')}x")
    verified = {}
    for name in ("sync", "async"):
        proxies[name].service.stop()  # flush, write the final checkpoint
        verified[name] = verify(proxies[name])
        v = verified[name]
        say(f"audit verify {name}: {v.get('status')} "
            + json.dumps({k: v[k] for k in v if k in ('ok', 'records', 'checkpoints', 'valid_checkpoints', 'unsigned_tail', 'error')})[:300])

    out_path: Path = args.json or common.DEFAULT_RESULTS_DIR / f"audit-cost-{stamp}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "schema": 1,
        "benchmark": "audit_cost",
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {**machine, "loadavg_at_end": common.loadavg()},
        "versions": {
            "dbsentry": common.dbsentry_version(),
            "git": common.git_revision(),
            "python": platform.python_version(),
            "postgresql": facts["server_version"],
            "pgbench": common.first_line([pgbench, "--version"]),
        },
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "clients": args.clients,
            "threads": args.threads,
            "scale": args.scale,
            "workloads": {
                f"{s}/{m}": " ".join(["pgbench", "-n", *SCRIPTS[s], "-c", str(args.clients),
                                      "-j", str(args.threads), "-T", str(args.duration), "-M", m])
                for s, m in args.combos
            },
            "database": up.dbname,
            "dbsentry": {name: p.settings for name, p in proxies.items()},
        },
        "summary": summary,
        "ratios": ratios,
        "audit_verify": verified,
        "runs": [{**asdict(r), "mean_batch": r.batch} for r in runs],
    }
    out_path.write_text(json.dumps(document, indent=2) + "\n")
    say(f"results written to {common.display_path(out_path)}")
    return 1 if any(r.error for r in runs) else 0


def main(argv: Sequence[str] | None = None) -> int:
    return common.run_main(parse_args(argv), bench)


if __name__ == "__main__":
    sys.exit(main())

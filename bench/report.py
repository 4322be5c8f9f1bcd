"""Medians over the rounds, the ratios between targets, and the printed tables."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from workloads import UNITS, Cell, RunResult

DBSENTRY_KINDS = ("passthrough", "governed", "governed-write", "governed-sync")
ROUGH_CPU_S = 0.1  # /proc/<pid>/stat counts clock ticks (10 ms): below this, a rough figure


@dataclass
class Summary:
    workload: str
    mode: str
    clients: int
    target: str
    unit: str  # of the rate
    per: str  # what the proxy CPU time is divided by
    rounds: int = 0
    rate: float | None = None  # median
    rate_min: float | None = None
    rate_max: float | None = None
    latency_avg_ms: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    proxy_cpu_us_per_op: float | None = None
    proxy_cpu_rough: bool = False  # from fewer than ROUGH_TICKS clock ticks of CPU time
    proxy_rss_kib: int | None = None  # the largest seen after a run
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    vs_pgbouncer: float | None = None
    vs_direct: float | None = None
    not_applicable: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.workload}/{self.mode}/c{self.clients}/{self.target}"


def kind_of(label: str) -> str:
    return label.removesuffix("+tls")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(
    results: list[RunResult],
    cells: list[Cell],
    labels: list[str],
    not_applicable: dict[tuple[str, str], str],
) -> list[Summary]:
    summaries: list[Summary] = []
    for cell in cells:
        unit, per = UNITS[cell.workload]
        by_label: dict[str, Summary] = {}
        for label in labels:
            s = Summary(cell.workload, cell.mode, cell.clients, label, unit, per)
            by_label[label] = s
            reason = not_applicable.get((cell.key, label))
            if reason is not None:
                s.not_applicable = reason
                continue
            rs = [
                r
                for r in results
                if r.workload == cell.workload
                and r.mode == cell.mode
                and r.clients == cell.clients
                and r.target == label
            ]
            good = [r for r in rs if r.error is None and r.tps is not None]
            rates = [r.tps for r in good if r.tps is not None]
            s.rounds = len(good)
            s.rate = _median(rates)
            s.rate_min = min(rates) if rates else None
            s.rate_max = max(rates) if rates else None
            s.latency_avg_ms = _median([r.latency_avg_ms for r in good if r.latency_avg_ms is not None])
            s.p50_ms = _median([r.p50_ms for r in good if r.p50_ms is not None])
            s.p99_ms = _median([r.p99_ms for r in good if r.p99_ms is not None])
            s.proxy_cpu_us_per_op = _median(
                [r.proxy_cpu_us_per_op for r in good if r.proxy_cpu_us_per_op is not None]
            )
            cpu = [r.proxy_cpu_s for r in good if r.proxy_cpu_s is not None]
            s.proxy_cpu_rough = bool(cpu) and statistics.median(cpu) < ROUGH_CPU_S
            rss = [r.proxy_rss_kib for r in rs if r.proxy_rss_kib is not None]
            s.proxy_rss_kib = max(rss) if rss else None
            s.failed = sum(r.failed or 0 for r in rs)
            s.errors = [f"round {r.round}: {r.error}" for r in rs if r.error]
            if cell.workload == "idle" and rs:
                s.details = dict(rs[0].details)
        for label, s in by_label.items():
            if s.rate is None:
                continue
            suffix = "+tls" if label.endswith("+tls") else ""
            pgbouncer, direct = by_label.get("pgbouncer" + suffix), by_label.get("direct" + suffix)
            if kind_of(label) in DBSENTRY_KINDS and pgbouncer is not None and pgbouncer.rate:
                s.vs_pgbouncer = s.rate / pgbouncer.rate
            if kind_of(label) != "direct" and direct is not None and direct.rate:
                s.vs_direct = s.rate / direct.rate
        summaries.extend(by_label.values())
    return summaries


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def render_table(summaries: list[Summary]) -> str:
    header = (
        f"{'workload':<8} {'mode':<8} {'c':>5} {'target':<16} {'rate':>11} {'unit':<6} "
        f"{'min-max':>19} {'avg ms':>7} {'p50 ms':>7} {'p99 ms':>7} {'cpu us/op':>12} "
        f"{'RSS MiB':>7} {'fail':>5} {'/pgbouncer':>10} {'/direct':>7}"
    )
    lines = [header, "-" * len(header)]
    previous = None
    for s in summaries:
        group = (s.workload, s.mode, s.clients)
        if previous is not None and group != previous:
            lines.append("")
        previous = group
        lead = f"{s.workload:<8} {s.mode:<8} {s.clients:>5} {s.target:<16}"
        if s.not_applicable:
            lines.append(f"{lead} {s.not_applicable}")
            continue
        spread = f"{_rate(s.rate_min)}-{_rate(s.rate_max)}" if s.rate_min is not None else "-"
        cpu = "-"
        if s.proxy_cpu_us_per_op is not None:
            rough = "~" if s.proxy_cpu_rough else ""
            cpu = f"{rough}{s.proxy_cpu_us_per_op:.1f}/{s.per}"
        rss = fmt(s.proxy_rss_kib / 1024 if s.proxy_rss_kib is not None else None, ".1f")
        lines.append(
            f"{lead} {_rate(s.rate):>11} {s.unit:<6} {spread:>19} {fmt(s.latency_avg_ms, '.3f'):>7} "
            f"{fmt(s.p50_ms, '.3f'):>7} {fmt(s.p99_ms, '.3f'):>7} {cpu:>12} {rss:>7} "
            f"{s.failed:>5} {fmt(s.vs_pgbouncer, '.2f'):>10} {fmt(s.vs_direct, '.2f'):>7}"
        )
        for e in s.errors:
            lines.append(f"{'':<24} ! {s.target} {e}")
    return "\n".join(lines)


def render_idle(summaries: list[Summary], hold_s: float) -> str:
    rows = [s for s in summaries if s.workload == "idle"]
    if not rows:
        return ""
    header = (
        f"{'target':<16} {'opened':>13} {'open s':>7} {'conn/s':>8} {'login p50/p99 ms':>17} "
        f"{'RSS before/held MiB':>20} {'KiB/conn':>9} {'cpu us/login':>12}  SELECT 1"
    )
    lines = [f"idle connections: held {hold_s:g} s, then SELECT 1 on a sample", header]
    lines.append("-" * len(header))
    for s in rows:
        if s.not_applicable:
            lines.append(f"{s.target:<16} {s.not_applicable}")
            continue
        d = s.details
        if not d:
            lines.append(f"{s.target:<16} {'; '.join(s.errors) or 'no result'}")
            continue

        def mib(kib: int | None) -> str:
            return "-" if kib is None else f"{kib / 1024:.1f}"

        opened = f"{d['opened']}/{d['requested']}"
        latency = f"{fmt(s.p50_ms, '.1f')}/{fmt(s.p99_ms, '.1f')}"
        memory = f"{mib(d['rss_before_kib'])}/{mib(d['rss_held_kib'])}"
        sample = f"{d['sample_ok']}/{d['sample']} ok"
        lines.append(
            f"{s.target:<16} {opened:>13} {fmt(d['open_s'], '.2f'):>7} {_rate(s.rate):>8} "
            f"{latency:>17} {memory:>20} {fmt(d['kib_per_connection'], '.1f'):>9} "
            f"{fmt(s.proxy_cpu_us_per_op, '.0f'):>12}  {sample}"
        )
        if d.get("first_error") or d.get("sample_error"):
            lines.append(f"{'':<16} ! {d['summary']}")
    return "\n".join(lines)


def ratios(summaries: list[Summary]) -> dict[str, dict[str, float | None]]:
    """dbsentry/PgBouncer and dbsentry/direct of the rate, per dbsentry row."""
    return {
        s.key: {"vs_pgbouncer": s.vs_pgbouncer, "vs_direct": s.vs_direct}
        for s in summaries
        if kind_of(s.target) in DBSENTRY_KINDS and not s.not_applicable
    }


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def render_ratios(summaries: list[Summary]) -> str:
    """One line per cell: both dbsentry targets against PgBouncer and direct."""
    lines = []
    cells: dict[tuple[str, str, int, bool], dict[str, Summary]] = {}
    for s in summaries:
        tls = s.target.endswith("+tls")
        cells.setdefault((s.workload, s.mode, s.clients, tls), {})[kind_of(s.target)] = s
    for (workload, mode, clients, tls), by_kind in cells.items():
        parts = []
        for kind in DBSENTRY_KINDS:
            row = by_kind.get(kind)
            if row is None or row.not_applicable:
                continue
            if row.vs_pgbouncer is None and row.vs_direct is None:
                continue
            parts.append(f"{kind} {_x(row.vs_pgbouncer)} PgBouncer, {_x(row.vs_direct)} direct")
        if parts:
            name = f"{workload} {mode} c{clients}{' tls' if tls else ''}"
            lines.append(f"{name:<30} " + "; ".join(parts))
    return "\n".join(lines)


# --------------------------------------------------------------------------- issue 17's targets

#: Issue 17's throughput targets: (workload, modes, target kind, least ratio to PgBouncer), at
#: ``TARGET_CLIENTS`` clients.
THROUGHPUT_TARGETS: tuple[tuple[str, tuple[str, ...], str, float], ...] = (
    ("select", ("simple", "prepared"), "governed", 0.6),
    ("select", ("simple", "prepared"), "governed-write", 0.7),
    ("select", ("simple", "prepared"), "governed-sync", 0.3),
    ("tpcb", (), "governed", 0.6),
)
TARGET_CLIENTS = 8
#: ``-c 1`` added p50 over direct: ``write`` at most this; ``effect`` at most an fdatasync's
#: p50 plus this (ms).
WRITE_ADDED_P50_MS = 0.040
EFFECT_ADDED_P50_MS = 0.050


@dataclass(frozen=True)
class TargetCheck:
    """One of issue 17's "done when" figures, as one run measured it."""

    cell: str  # "select prepared c8"
    target: str  # "governed" ...
    goal: str  # ">= 0.60x PgBouncer", "added p50 <= 40 us"
    measured: str
    met: bool

    def row(self) -> dict[str, Any]:
        return {"cell": self.cell, "target": self.target, "goal": self.goal, "measured": self.measured, "met": self.met}


def check_targets(summaries: list[Summary], fsync_p50_ms: float | None) -> list[TargetCheck]:
    """Issue 17's targets for the cells this run measured (plaintext only; a cell or target
    it did not measure is left out)."""
    rows = {(s.workload, s.mode, s.clients, s.target): s for s in summaries if not s.not_applicable}
    checks: list[TargetCheck] = []
    for workload, modes, kind, least in THROUGHPUT_TARGETS:
        for (w, mode, clients, target), s in rows.items():
            if w != workload or target != kind or clients != TARGET_CLIENTS or (modes and mode not in modes):
                continue
            if s.vs_pgbouncer is None:
                continue
            checks.append(
                TargetCheck(
                    f"{w} {mode} c{clients}", kind, f">= {least:.2f}x PgBouncer", _x(s.vs_pgbouncer), s.vs_pgbouncer >= least
                )
            )
    for (w, mode, clients, target), s in rows.items():
        if w != "select" or clients != 1 or target not in ("governed", "governed-write"):
            continue
        direct = rows.get((w, mode, clients, "direct"))
        if s.p50_ms is None or direct is None or direct.p50_ms is None:
            continue
        added = s.p50_ms - direct.p50_ms
        if target == "governed-write":
            bound, goal = WRITE_ADDED_P50_MS, f"added p50 <= {WRITE_ADDED_P50_MS * 1000:.0f} us"
        elif fsync_p50_ms is None:
            continue
        else:
            bound = fsync_p50_ms + EFFECT_ADDED_P50_MS
            goal = f"added p50 <= fdatasync p50 {fsync_p50_ms * 1000:.0f} + {EFFECT_ADDED_P50_MS * 1000:.0f} us"
        checks.append(TargetCheck(f"{w} {mode} c{clients}", target, goal, f"{added * 1000:+.0f} us", added <= bound))
    return checks


def render_targets(checks: list[TargetCheck]) -> str:
    if not checks:
        return ""
    lines = ["issue 17's targets (this run):"]
    for c in checks:
        lines.append(f"  {c.cell:<22} {c.target:<15} {c.goal:<40} {c.measured:>10}  {'met' if c.met else 'NOT met'}")
    return "\n".join(lines)

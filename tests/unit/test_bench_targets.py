"""bench/compare.py prints issue 17's "done when" figures from one run: each throughput
ratio against its bound at 8 clients, and the added p50 at one client against the bound
(``write``: 40 µs; ``effect``: the fdatasync p50 measured where the logs are, plus 50 µs)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def report() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCH))
    try:
        import report

        yield report
    finally:
        sys.path.remove(str(BENCH))


def _row(report: ModuleType, workload: str, mode: str, clients: int, target: str, **kw: object) -> object:
    s = report.Summary(workload, mode, clients, target, "tps", "stmt")
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_throughput_and_latency_targets(report: ModuleType) -> None:
    rows = [
        _row(report, "select", "prepared", 8, "governed", vs_pgbouncer=0.17),
        _row(report, "select", "prepared", 8, "governed-write", vs_pgbouncer=0.71),
        _row(report, "select", "simple", 8, "governed-sync", vs_pgbouncer=0.30),
        _row(report, "select", "prepared", 64, "governed", vs_pgbouncer=0.9),  # not a target's clients
        _row(report, "tpcb", "simple", 8, "governed", vs_pgbouncer=0.15),
        _row(report, "select", "prepared", 1, "direct", p50_ms=0.100),
        _row(report, "select", "prepared", 1, "governed-write", p50_ms=0.139),
        _row(report, "select", "prepared", 1, "governed", p50_ms=0.300),
        _row(report, "select", "simple", 1, "governed-write", p50_ms=0.2),  # no direct row: left out
        _row(report, "select", "extended", 8, "governed", vs_pgbouncer=0.05, not_applicable="skipped"),
    ]
    checks = {(c.cell, c.target): c for c in report.check_targets(rows, fsync_p50_ms=0.085)}
    assert set(checks) == {
        ("select prepared c8", "governed"),
        ("select prepared c8", "governed-write"),
        ("select simple c8", "governed-sync"),
        ("tpcb simple c8", "governed"),
        ("select prepared c1", "governed-write"),
        ("select prepared c1", "governed"),
    }
    assert not checks[("select prepared c8", "governed")].met
    assert checks[("select prepared c8", "governed-write")].met
    assert checks[("select simple c8", "governed-sync")].met  # the bound is inclusive
    assert not checks[("tpcb simple c8", "governed")].met
    write = checks[("select prepared c1", "governed-write")]
    assert write.met and write.measured == "+39 us"
    effect = checks[("select prepared c1", "governed")]
    assert not effect.met and effect.measured == "+200 us" and "fdatasync p50 85" in effect.goal
    text = report.render_targets(list(checks.values()))
    assert text.count("NOT met") == 3 and text.count(" met") == 6


def test_effect_latency_needs_the_fdatasync_figure(report: ModuleType) -> None:
    rows = [
        _row(report, "select", "prepared", 1, "direct", p50_ms=0.1),
        _row(report, "select", "prepared", 1, "governed", p50_ms=0.12),
    ]
    assert report.check_targets(rows, fsync_p50_ms=None) == []
    assert [c.met for c in report.check_targets(rows, fsync_p50_ms=0.0)] == [True]


def test_the_fdatasync_probe_measures_where_it_is_asked(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import common
    finally:
        sys.path.remove(str(BENCH))
    got = common.fdatasync_probe(tmp_path, count=20)
    assert got["count"] == 20 and 0 < got["p50_ms"] <= got["p99_ms"]
    assert os.listdir(tmp_path) == []  # its file is gone

"""``bench/compare.py --quick`` end to end: it runs, and its JSON has a result for every
target and every workload.  Nothing here is timed or compared: the numbers are not
checked, only that each run produced one without failures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.pg import PgServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("direct", "pgbouncer", "passthrough", "governed")
WORKLOADS = ("select", "tpcb", "rows100", "export", "connect", "idle")


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


@pytest.fixture(scope="module")
def smoke(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    for tool, package in (("pgbench", "postgresql-client"), ("pgbouncer", "pgbouncer"), ("psql", "postgresql-client")):
        if _binary(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: apt-get install {package}); bench/compare.py needs it")
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["BENCH_PG_DSN"] = pg_server.dsn()
    cmd = [
        sys.executable,
        str(REPO / "bench" / "compare.py"),
        "--quick",
        "--database", "dbsentry_bench_smoke",  # its own tables, scale 1: nobody else's re-initialised
        "--scale", "1",
        "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=840, env=env, cwd=REPO)
    if not out.exists():
        pytest.fail(f"no JSON written; exit status {done.returncode}:\n{done.stderr[-4000:]}")
    document: dict[str, Any] = json.loads(out.read_text())
    return done, document


def _problems(row: dict[str, Any]) -> list[str]:
    where = f"{row['workload']}/{row['mode']}/c{row['clients']}/{row['target']}"
    problems = []
    if not row["rate"] or row["rate"] <= 0:
        problems.append(f"{where}: no rate ({row['errors']})")
    if row["failed"]:
        problems.append(f"{where}: {row['failed']} failed")
    if row["errors"]:
        problems.append(f"{where}: {row['errors']}")
    return problems


def test_exits_zero(smoke: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    done, _ = smoke
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_every_target_has_a_result(
    smoke: tuple[subprocess.CompletedProcess[str], dict[str, Any]], workload: str
) -> None:
    _, document = smoke
    rows = [r for r in document["summary"] if r["workload"] == workload]
    assert {r["target"] for r in rows} == set(TARGETS), rows
    problems: list[str] = []
    for row in rows:
        if row["not_applicable"]:
            # PostgreSQL itself cannot hold thousands of idle connections: that row says why
            assert (workload, row["target"]) == ("idle", "direct"), row
            assert row["not_applicable"].startswith("n/a: ")
            continue
        problems += _problems(row)
        if workload in ("select", "tpcb", "rows100", "connect"):
            run = [
                r
                for r in document["runs"]
                if r["workload"] == workload and r["target"] == row["target"]
                and r["mode"] == row["mode"] and r["clients"] == row["clients"]
            ]
            assert run and all(r["transactions"] and r["failed"] == 0 for r in run), run
    assert not problems, "\n".join(problems)


def test_fdatasync_and_the_targets_are_reported(smoke: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    """The fdatasync where the logs are, and the performance targets of the cells the run
    measured (governed only here: one throughput ratio per select mode and TPC-B at 8
    clients, one latency bound per select mode at 1 client), each said met or not."""
    done, document = smoke
    fsync = document["fdatasync"]
    assert 0 < fsync["p50_ms"] <= fsync["p99_ms"] and fsync["count"] > 0
    targets = document["targets"]
    cells = {(t["cell"], t["target"]) for t in targets}
    modes = {r["mode"] for r in document["summary"] if r["workload"] == "select"}
    expected = {(f"select {m} c8", "governed") for m in modes & {"simple", "prepared"}}
    expected |= {(f"select {m} c1", "governed") for m in modes}
    expected |= {(f"tpcb {r['mode']} c8", "governed") for r in document["summary"] if r["workload"] == "tpcb"}
    assert cells == expected, targets
    assert all(isinstance(t["met"], bool) and t["measured"] for t in targets)
    assert "issue 17's targets (this run):" in done.stdout

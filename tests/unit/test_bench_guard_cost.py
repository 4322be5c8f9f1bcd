"""bench/guard_cost.py keeps working: a production session with the row guard runs
pgbench's TPC-B transactions against its scripted server without an error or a refusal,
in each of its set-ups (the bench asserts both), and the guard with PostgreSQL 15+ reads
the counters less often than without the report it asks for."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dbsentry.engines.postgres.wire import codec

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def guard_cost():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    try:
        import guard_cost

        yield guard_cost
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.parametrize(("version", "guard"), [("16.4", True), ("14.12", True), ("16.4", False)])
def test_tpcb_transactions_run_through_the_guard(guard_cost, version: str, guard: bool) -> None:  # type: ignore[no-untyped-def]
    session = guard_cost.new_session(version, guard)
    assert guard_cost.run(session, 30) > 0
    assert (session.guard is not None) is guard


def test_the_report_spares_the_reading_before_each_transaction(guard_cost, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Statistics readings sent in 20 TPC-B transactions: four per transaction (after each
    guarded statement) from PostgreSQL 15, five before it (one before the first)."""
    sent: list[bytes] = []
    answer = guard_cost.FakeServer.answer

    def spy(self, data: bytes) -> bytes:  # type: ignore[no-untyped-def]
        sent.append(data)
        return answer(self, data)  # type: ignore[no-any-return]

    monkeypatch.setattr(guard_cost.FakeServer, "answer", spy)
    counts = {}
    for version in ("16.4", "14.12"):
        sent.clear()
        guard_cost.run(guard_cost.new_session(version), 20)
        binds = [buf[a:b] for d in sent for buf, spans in [codec.FrameSplitter().split(d)] for t, a, b in spans if t == ord("B")]
        counts[version] = sum(b"_stats" in body for body in binds)
    assert counts == {"16.4": 80, "14.12": 99}, counts

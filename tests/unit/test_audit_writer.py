"""Group commit, durability modes, fail-closed behaviour and recovery of AuditWriter."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from dbsentry.audit.keys import Signer, load_or_create_signing_key
from dbsentry.audit.records import CompletionRecord, StatementRecord
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import AuditStoreError, EncodedRecord
from dbsentry.audit.verify import verify
from dbsentry.audit.writer import AuditUnavailable, AuditWriter


class FlakyStore(SQLiteStore):
    """A real SQLite store that can be told to fail or to be slow, and counts transactions."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail = False
        self.delay = 0.0
        self.calls = 0
        self.sizes: list[int] = []

    def append_batch(self, records: Sequence[EncodedRecord]) -> list[int]:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise AuditStoreError("disk full (simulated)")
        self.sizes.append(len(records))
        return super().append_batch(records)

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        if self.fail:
            raise AuditStoreError("disk full (simulated)")
        return super().existing_ids(ids)


def stmt(i: int) -> StatementRecord:
    return StatementRecord(
        session_id=f"s{i % 8}",
        identity="alice",
        identity_kind="human",
        statement=f"select {i}",
        decision="allow",
    )


@pytest.fixture
def store(tmp_path: Path) -> FlakyStore:
    s = FlakyStore(tmp_path / "audit.db")
    yield s  # type: ignore[misc]
    s.close()


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer(load_or_create_signing_key(tmp_path / "k.key"))


def wait_for(cond: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_concurrent_appends_are_batched(store: FlakyStore, signer: Signer) -> None:
    store.delay = 0.01  # a commit takes a while, so callers pile up behind it

    async def main() -> list[int]:
        w = AuditWriter(store, "sync", signer=signer, checkpoint_every=100)
        w.start()
        try:
            return await asyncio.gather(*(w.append(stmt(i)) for i in range(300)))
        finally:
            await w.aclose()

    seqs = asyncio.run(main())
    assert sorted(seqs) == list(range(1, 301))
    assert len(store.sizes) < 30, store.sizes  # 300 records, far fewer transactions
    assert max(store.sizes) > 10
    result = verify(store, signer.public_key)
    assert result.ok and result.unsigned_tail == 0 and result.valid_checkpoints >= 1


def test_sync_append_returns_after_commit(store: FlakyStore) -> None:
    async def main() -> None:
        w = AuditWriter(store, "sync")
        w.start()
        seq = await w.append(stmt(1))
        # committed: visible to a fresh reader at once
        assert [r.seq for r in store.iter_records()] == [seq]
        await w.aclose()

    asyncio.run(main())


def test_append_before_start_or_after_close_is_refused(store: FlakyStore) -> None:
    async def main() -> None:
        w = AuditWriter(store, "sync")
        with pytest.raises(AuditUnavailable):
            await w.append(stmt(1))
        w.start()
        await w.aclose()
        with pytest.raises(AuditUnavailable):
            await w.append(stmt(2))
        with pytest.raises(AuditUnavailable):
            w.append_nowait(stmt(3))

    asyncio.run(main())


def test_store_failure_fails_closed_then_recovers(store: FlakyStore, signer: Signer) -> None:
    async def main() -> None:
        w = AuditWriter(store, "sync", signer=signer, retry_min=0.02, retry_max=0.1)
        w.start()
        s1 = stmt(1)
        await w.append(s1)
        store.fail = True
        t0 = time.monotonic()
        results = await asyncio.gather(
            *(w.append(stmt(i)) for i in range(2, 12)), return_exceptions=True
        )
        assert all(isinstance(r, AuditUnavailable) for r in results), results
        assert time.monotonic() - t0 < 1.0  # quick, not a timeout
        assert not w.healthy
        assert "disk full" in (w.last_error or "")
        # new appends are refused at once
        with pytest.raises(AuditUnavailable):
            await w.append(stmt(99))
        # completion records are kept while the store is down
        w.append_nowait(CompletionRecord(statement_id=s1.id, session_id="s1", rows=1))
        await asyncio.sleep(0.2)
        assert not w.healthy
        store.fail = False
        await asyncio.to_thread(wait_for, lambda: w.healthy)
        assert await w.append(stmt(100)) > 0
        await w.aclose()

    asyncio.run(main())
    types = [r.record.type for r in store.iter_records()]
    assert types[0] == "statement"
    assert "completion" in types
    system = [r.data() for r in store.iter_records(types=["system"])]
    assert len(system) == 1 and system[0]["event"] == "audit_store_recovered"
    assert system[0]["detail"]["refused_appends"] >= 11
    assert system[0]["detail"]["kept_records"] == 1
    assert verify(store, signer.public_key).ok


def test_stalled_store_times_out_then_recovers(store: FlakyStore) -> None:
    async def main() -> None:
        w = AuditWriter(store, "sync", sync_timeout=0.2)
        w.start()
        store.delay = 0.8
        t0 = time.monotonic()
        with pytest.raises(AuditUnavailable, match="no commit within"):
            await w.append(stmt(1))
        assert time.monotonic() - t0 < 0.6
        assert not w.healthy
        with pytest.raises(AuditUnavailable):
            await w.append(stmt(2))
        store.delay = 0
        await asyncio.to_thread(wait_for, lambda: w.healthy)
        assert await w.append(stmt(3)) == 3  # seq 1 the stalled record, seq 2 the outage record
        await w.aclose()

    asyncio.run(main())


def test_async_mode_returns_at_once_and_flushes(store: FlakyStore) -> None:
    async def main() -> None:
        w = AuditWriter(store, "async", async_flush_ms=50)
        w.start()
        store.delay = 0.05
        t0 = time.monotonic()
        for i in range(100):
            assert await w.append(stmt(i)) == 0
        assert time.monotonic() - t0 < 0.05  # did not wait for any commit
        await asyncio.to_thread(wait_for, lambda: store.head().seq == 100, 3.0)
        assert len(store.sizes) <= 5
        await w.aclose()

    asyncio.run(main())


def test_async_mode_refuses_when_down(store: FlakyStore) -> None:
    async def main() -> None:
        w = AuditWriter(store, "async", async_flush_ms=5, retry_min=0.02)
        w.start()
        store.fail = True
        await w.append(stmt(1))  # accepted, its write fails in the background
        await asyncio.to_thread(wait_for, lambda: not w.healthy)
        with pytest.raises(AuditUnavailable):
            await w.append(stmt(2))
        store.fail = False
        await asyncio.to_thread(wait_for, lambda: w.healthy)
        await w.aclose()

    asyncio.run(main())
    # the accepted record was not lost
    assert [r.record.type for r in store.iter_records()] == ["statement", "system"]


def test_close_flushes_and_signs(store: FlakyStore, signer: Signer) -> None:
    async def main() -> None:
        w = AuditWriter(
            store, "async", signer=signer, async_flush_ms=10_000, checkpoint_every=10**6
        )
        w.start()
        for i in range(5):
            await w.append(stmt(i))
        w.append_nowait(stmt(99))
        await w.aclose()

    asyncio.run(main())
    assert store.head().seq == 6
    result = verify(store, signer.public_key)
    assert result.ok and result.last_checkpoint_seq == 6


def test_periodic_checkpoint_by_time(store: FlakyStore, signer: Signer) -> None:
    async def main() -> None:
        w = AuditWriter(
            store, "sync", signer=signer, checkpoint_every=10**6, checkpoint_seconds=0.1
        )
        w.start()
        await w.append(stmt(1))
        await asyncio.to_thread(wait_for, lambda: w.stats.checkpoints >= 1, 3.0)
        await w.aclose()

    asyncio.run(main())


def test_unserialisable_record_fails_alone(store: FlakyStore) -> None:
    bad = StatementRecord(
        session_id="s",
        identity="a",
        identity_kind="human",
        statement="x",
        decision="allow",
        correlation={"k": object()},
    )  # type: ignore[dict-item]

    async def main() -> None:
        w = AuditWriter(store, "sync")
        w.start()
        results = await asyncio.gather(w.append(bad), w.append(stmt(1)), return_exceptions=True)
        assert isinstance(results[0], TypeError)
        assert results[1] == 1
        assert w.healthy
        await w.aclose()

    asyncio.run(main())


def test_appends_from_several_event_loops(store: FlakyStore) -> None:
    w = AuditWriter(store, "sync")
    w.start()
    out: list[int] = []

    def worker(base: int) -> None:
        async def go() -> list[int]:
            return await asyncio.gather(*(w.append(stmt(base + i)) for i in range(50)))

        out.extend(asyncio.run(go()))

    threads = [threading.Thread(target=worker, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    assert sorted(out) == list(range(1, 201))


# --- submit(): the proxy's callback API ------------------------------------------------------


def _submit_all(w: AuditWriter, batches: list[list[StatementRecord]]) -> list[AuditUnavailable | None]:
    """Submit every batch from one loop iteration; return each callback's argument."""

    async def main() -> list[AuditUnavailable | None]:
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[AuditUnavailable | None]] = [loop.create_future() for _ in batches]
        for fut, records in zip(futs, batches, strict=True):
            w.submit(records, fut.set_result)
        return list(await asyncio.gather(*futs))

    return asyncio.run(main())


def test_submit_calls_back_once_every_record_is_committed(store: FlakyStore, signer: Signer) -> None:
    w = AuditWriter(store, "sync", signer=signer)
    w.start()
    batches = [[stmt(i), stmt(100 + i)] for i in range(20)]
    assert _submit_all(w, batches) == [None] * 20
    w.close()
    # Submitted in one loop iteration: handed to the writer together, in few transactions.
    assert sum(store.sizes) == 40 and len(store.sizes) <= 3
    ids = {r.id for b in batches for r in b}
    assert store.existing_ids(list(ids)) == ids
    assert verify(store, signer.public_key).ok


def test_submit_reports_a_failed_commit_and_later_completions_are_not_written(
    store: FlakyStore, signer: Signer
) -> None:
    w = AuditWriter(store, "sync", signer=signer, retry_min=10)
    w.start()
    store.fail = True
    first = stmt(1)
    [err] = _submit_all(w, [[first]])
    assert isinstance(err, AuditUnavailable) and "disk full" in str(err)
    assert not w.healthy
    # While the store is down a new submit is refused at once.
    [again] = _submit_all(w, [[stmt(2)]])
    assert isinstance(again, AuditUnavailable)

    async def complete() -> None:
        w.append_soon(CompletionRecord(statement_id=first.id, session_id="s1", rows=1))

    store.fail = False
    asyncio.run(complete())
    w.close()
    assert store.existing_ids([first.id]) == set()
    rows = list(store.iter_records())
    assert all(r.record.ref != first.id for r in rows)  # no completion of an unrecorded statement


def test_submit_refuses_when_the_store_stalls(store: FlakyStore, signer: Signer) -> None:
    store.delay = 2.0
    w = AuditWriter(store, "sync", signer=signer, sync_timeout=0.3)
    w.start()
    started = time.monotonic()
    [err] = _submit_all(w, [[stmt(1)]])
    assert isinstance(err, AuditUnavailable) and "no commit within" in str(err)
    assert time.monotonic() - started < 1.9  # refused by the watchdog, not by the commit ending
    assert not w.healthy
    w.close()


def test_write_durability_waits_for_the_commit_but_not_for_fsync(tmp_path: Path, signer: Signer) -> None:
    from dbsentry.audit.config import AuditConfig
    from dbsentry.audit.store import open_store

    st = open_store(AuditConfig(durability="write"), tmp_path)
    assert isinstance(st, SQLiteStore)
    assert st._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    w = AuditWriter(st, "write", signer=signer)
    w.start()
    r = stmt(1)
    assert _submit_all(w, [[r]]) == [None]
    assert st.existing_ids([r.id]) == {r.id}  # committed before the callback ran
    w.close()
    st.close()
    full = open_store(AuditConfig(), tmp_path)
    assert isinstance(full, SQLiteStore)
    assert full._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    full.close()

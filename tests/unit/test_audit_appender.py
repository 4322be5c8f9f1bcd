"""The audit log's writer: framing, chain, torn tails, failures, durability waits."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from dbsentry.audit.appender import AuditLog, AuditUnavailable
from dbsentry.audit.index import catch_up, reindex
from dbsentry.audit.keys import Signer
from dbsentry.audit.log import (
    KIND_CHECKPOINT,
    LogTailer,
    genesis,
    link_hash,
    list_segments,
    parse_frames,
    recover,
    scan_segment,
)
from dbsentry.audit.logwriter import LogFile, OsFileOps
from dbsentry.audit.records import CompletionRecord, StatementRecord, payload_bytes
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.governance.hold import PAUSE_BYTES, ResultHold


def stmt(i: int) -> StatementRecord:
    return StatementRecord(session_id="s1", identity="alice", identity_kind="human", statement=f"select {i}", decision="allow")


def records_of(node_dir: Path) -> list[tuple[int, bytes]]:
    return [(r.seq, r.payload) for r in LogTailer(node_dir).read(0)]


class FailingOps(OsFileOps):
    """Real files; writes (or fsyncs) fail with ENOSPC while ``fail_write`` (``fail_sync``)."""

    def __init__(self) -> None:
        self.fail_write = False
        self.fail_sync = False
        self.fsyncs = 0

    def write(self, fd: int, data: bytes) -> int:
        if self.fail_write:
            # a partial write, then the error: what a filling disk does
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(fd, data)

    def fdatasync(self, fd: int) -> None:
        if self.fail_sync:
            raise OSError(errno.EIO, "Input/output error")
        self.fsyncs += 1
        super().fdatasync(fd)


def test_records_chain_from_the_node_genesis_and_survive_reopening(tmp_path: Path) -> None:
    log = LogFile(tmp_path, "node-a")
    log.open()
    payloads = [payload_bytes(stmt(i)) for i in range(5)]
    for p in payloads:
        log.append(p)
    assert log.flush() == 5
    log.close()
    got = list(LogTailer(tmp_path / "node-a").read(0))
    assert [r.payload for r in got] == payloads
    prev = genesis("node-a")
    for r in got:
        assert r.prev_hash == prev
        assert r.hash == link_hash(bytes.fromhex(prev), r.seq, r.payload).hex()
        prev = r.hash
    # Another start continues the chain in a new segment.
    again = LogFile(tmp_path, "node-a")
    tail = again.open()
    assert (tail.seq, tail.hash.hex()) == (5, prev)
    again.append(payloads[0])
    again.flush()
    again.close()
    assert [s for s, _ in records_of(tmp_path / "node-a")] == [1, 2, 3, 4, 5, 6]
    assert len(list_segments(tmp_path / "node-a")) == 2


def test_another_node_has_another_chain() -> None:
    assert genesis("node-a") != genesis("node-b")


def test_torn_tail_is_cut_kept_and_recorded(tmp_path: Path) -> None:
    log = LogFile(tmp_path, "n1")
    log.open()
    for i in range(3):
        log.append(payload_bytes(stmt(i)))
    log.flush()
    log.close()
    seg = list_segments(tmp_path / "n1")[-1][1]
    whole = seg.stat().st_size
    with seg.open("ab") as fh:  # a record whose write was cut short by a crash
        fh.write(b"R\x00\x00\x02\x00" + b"x" * 100)
    tail = recover(tmp_path / "n1", "n1")
    assert (tail.seq, tail.cut_bytes) == (3, 105)
    assert seg.stat().st_size == whole
    assert tail.kept_as is not None and tail.kept_as.read_bytes().startswith(b"R")

    async def run() -> None:
        with seg.open("ab") as fh:
            fh.write(b"garbage")
        audit = AuditLog(LogFile(tmp_path, "n1"), "sync")
        audit.start()
        await audit.drain(5)
        audit.close()

    asyncio.run(run())
    cut = [orjson.loads(p) for _, p in records_of(tmp_path / "n1") if b"audit_log_tail_cut" in p]
    assert len(cut) == 1 and cut[0]["detail"]["bytes"] == 7 and cut[0]["node"] == "n1"


def test_segments_roll_over_sealed_and_signed(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    log = LogFile(tmp_path, "n1", signer=signer, segment_bytes=2000)
    log.open()
    for i in range(40):
        log.append(payload_bytes(stmt(i)))
        log.flush()
    log.close()
    segments = list_segments(tmp_path / "n1")
    assert len(segments) > 5
    for _, path in segments[:-1]:
        scan = scan_segment(path)
        assert scan.error is None
        last = scan.frames[-1]
        assert last.kind == KIND_CHECKPOINT and last.meta["kind"] == "seal"
        records = list(scan.records)
        assert last.meta["seq"] == records[-1].seq and last.meta["hash"] == records[-1].hash.hex()
    assert [s for s, _ in records_of(tmp_path / "n1")] == list(range(1, 41))


def test_failed_write_rolls_back_and_the_chain_continues(tmp_path: Path) -> None:
    ops = FailingOps()
    log = LogFile(tmp_path, "n1", ops=ops)
    log.open()
    log.append(b'{"a":1}')
    log.flush()
    log.append(b'{"a":2}')
    ops.fail_write = True
    with pytest.raises(OSError) as info:
        log.flush()
    assert info.value.unwritten == [b'{"a":2}']  # type: ignore[attr-defined]
    ops.fail_write = False
    log.reopen()
    log.append(b'{"a":3}')
    log.flush()
    log.close()
    assert records_of(tmp_path / "n1") == [(1, b'{"a":1}'), (2, b'{"a":3}')]


def test_statements_are_refused_while_the_log_fails_and_the_outage_is_recorded(tmp_path: Path) -> None:
    ops = FailingOps()

    async def run() -> list[object]:
        audit = AuditLog(LogFile(tmp_path, "n1", ops=ops), "effect", retry_min=0.01, retry_max=0.02)
        audit.start()
        results: list[object] = []
        assert await audit.append(stmt(1)) == 1
        ops.fail_write = True
        with pytest.raises(AuditUnavailable):
            await audit.append(stmt(2))  # its write fails
        assert not audit.healthy
        with pytest.raises(AuditUnavailable):
            await audit.append(stmt(3))  # refused at once
        audit.append_soon(CompletionRecord(statement_id="x", session_id="s1", duration_ms=1.0))  # kept
        ops.fail_write = False
        for _ in range(200):
            if audit.healthy:
                break
            await asyncio.sleep(0.01)
        assert audit.healthy
        results.append(await audit.append(stmt(4)))
        await audit.drain(5)
        audit.close()
        return results

    asyncio.run(run())
    payloads = [orjson.loads(p) for _, p in records_of(tmp_path / "n1")]
    texts = [p.get("statement") for p in payloads if p["type"] == "statement"]
    assert texts == ["select 1", "select 4"]  # 2 and 3 never ran: no record claims them
    kinds = [p["type"] for p in payloads]
    assert kinds == ["statement", "completion", "system", "statement"]
    outage = payloads[2]
    assert outage["event"] == "audit_store_recovered" and outage["detail"]["refused_appends"] == 2
    assert outage["detail"]["kept_records"] == 1


def test_durability_levels_wait_for_what_they_promise(tmp_path: Path) -> None:
    async def run(durability: str) -> tuple[int, int]:
        ops = FailingOps()
        log = LogFile(tmp_path / durability, "n1", ops=ops)
        audit = AuditLog(log, durability)  # type: ignore[arg-type]
        audit.start()
        seen: list[tuple[int, int]] = []
        done = asyncio.get_running_loop().create_future()

        def called(err: AuditUnavailable | None) -> None:
            seen.append((log.written_seq, log.durable_seq))
            done.set_result(err)

        seq = audit.submit([stmt(1)], called)
        assert seen == []  # never before submit returns
        assert await done is None
        audit.close()
        return seq, seen[0][1] if durability == "sync" else seen[0][0]

    seq, covered = asyncio.run(run("sync"))
    assert covered >= seq  # durable before the callback
    seq, covered = asyncio.run(run("write"))
    assert covered >= seq  # written before the callback


def test_results_are_held_until_the_record_is_durable(tmp_path: Path) -> None:
    """The shell's contract with the log: ``when_durable`` calls back only once the
    fsync thread has reported the seq durable."""
    gate = threading.Event()

    class SlowSync(OsFileOps):
        def fdatasync(self, fd: int) -> None:
            gate.wait(5)
            super().fdatasync(fd)

    async def run() -> None:
        log = LogFile(tmp_path, "n1", ops=SlowSync())
        audit = AuditLog(log, "effect")
        audit.start()
        gate.set()
        await audit.drain(5)
        gate.clear()
        seq = audit.append_soon(stmt(1))
        fired = asyncio.get_running_loop().create_future()
        audit.when_durable(seq, lambda err: fired.set_result((err, log.durable_seq)))
        await asyncio.sleep(0.05)
        assert not fired.done() and log.written_seq >= seq and log.durable_seq < seq
        gate.set()
        err, durable = await asyncio.wait_for(fired, 5)
        assert err is None and durable >= seq
        audit.close()

    asyncio.run(run())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("stmt"), st.integers(1, 3)), st.tuples(st.just("send"), st.integers(0, 9)), st.tuples(st.just("durable"), st.integers(0, 3))), max_size=60))
def test_result_hold_releases_nothing_early_and_everything_in_order(events: list[tuple[str, int]]) -> None:
    hold: ResultHold[tuple[int, int]] = ResultHold()
    durable = 0
    appended = 0
    sent: list[tuple[int, int]] = []  # (command number, seq it needed)
    made: list[tuple[int, int]] = []
    sizes: dict[tuple[int, int], int] = {}
    waiting: int | None = None
    for kind, n in events:
        if kind == "stmt":
            appended += n
            hold.statement(appended)
        elif kind == "send":
            cmd = (len(made), hold.seq)  # a result of what was forwarded so far
            made.append(cmd)
            if hold.must_hold(durable):
                if hold.hold(cmd, n * 40_000):
                    waiting = hold.waiting_for()
                sizes[cmd] = n * 40_000
            else:
                sent.append(cmd)
        else:
            durable = min(appended, durable + n)
            if waiting is not None and waiting <= durable:
                out = hold.release(durable)
                assert all(needed <= durable for _, needed in out)  # nothing before its record
                sent.extend(out)
                waiting = hold.waiting_for()
        # the bytes held are counted exactly: the shell pauses the server on them
        still = [cmd for cmd in made if cmd not in sent and cmd in sizes]
        assert hold.held_bytes == sum(sizes[cmd] for cmd in still)
        assert hold.should_pause() == (hold.held_bytes > PAUSE_BYTES)
    durable = appended
    sent.extend(hold.release(durable))
    assert sent == made  # nothing lost, nothing reordered


def test_index_follows_the_log_and_rebuilds(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "log", "n1", segment_bytes=1500)
    log.open()
    for i in range(30):
        log.append(payload_bytes(stmt(i)))
        log.flush()
    log.close()
    store = SQLiteStore(tmp_path / "audit.db")
    try:
        assert catch_up(store, tmp_path / "log", "n1", upto=10) == 10
        assert catch_up(store, tmp_path / "log", "n1") == 30
        assert catch_up(store, tmp_path / "log", "n1") == 30  # nothing twice
        rows = list(store.iter_index("n1"))
        assert [r.node_seq for r in rows] == list(range(1, 31))
        assert [orjson.loads(r.payload)["statement"] for r in rows][:2] == ["select 0", "select 1"]
        assert list(store.iter_records(legacy=True)) == []
        assert reindex(store, tmp_path / "log") == (30, 30)
    finally:
        store.close()


def test_write_durability_never_waits_for_fsync(tmp_path: Path) -> None:
    """``durable`` (a statement that changes data) means fsync'd only under ``effect``;
    ``write`` promises the OS, and an fsync at least every fsync_interval_ms."""
    gate = threading.Event()

    class NoSync(OsFileOps):
        def fdatasync(self, fd: int) -> None:
            gate.wait(5)
            super().fdatasync(fd)

    async def run() -> None:
        audit = AuditLog(LogFile(tmp_path, "n1", ops=NoSync()), "write")
        audit.start()
        done = asyncio.get_running_loop().create_future()
        audit.submit([stmt(1)], lambda err: done.set_result(err), durable=True)
        assert await asyncio.wait_for(done, 2) is None  # no fsync happened meanwhile
        gate.set()
        audit.close()

    asyncio.run(run())


def test_an_outcome_rides_with_the_next_write_and_waits_at_most_later_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One write per statement at one client: the completion record of statement n goes
    out with statement n+1's record; the last one within LATER_S; order is kept."""
    from dbsentry.audit import appender

    # long enough that a loaded machine's slow loop iteration does not fire the timer
    # between a completion and the next statement (which made the count flaky)
    monkeypatch.setattr(appender, "LATER_S", 0.5)
    LATER_S = appender.LATER_S

    class Counting(OsFileOps):
        writes = 0

        def write(self, fd: int, data: bytes) -> int:
            Counting.writes += 1
            return super().write(fd, data)

    async def run() -> None:
        log = LogFile(tmp_path, "n1", ops=Counting())
        audit = AuditLog(log, "write")
        audit.start()
        loop = asyncio.get_running_loop()
        await asyncio.sleep(0)
        before = Counting.writes
        for i in range(20):
            done = loop.create_future()
            rec = stmt(i)
            audit.submit([rec], lambda err, d=done: d.set_result(err))
            assert await done is None
            audit.append_later(CompletionRecord(session_id="s1", statement_id=rec.id, rows=1))
            await asyncio.sleep(0)  # the next client message comes in a later loop iteration
        assert Counting.writes - before == 20  # 20 statements, 20 completions: 20 writes
        assert log.written_seq == log.seq - 1  # the last completion is still buffered
        await asyncio.sleep(LATER_S * 4)
        assert log.written_seq == log.seq  # ... and written within LATER_S
        audit.close()

    asyncio.run(run())
    kinds = [orjson.loads(p)["type"] for _, p in records_of(tmp_path / "n1")]
    data = [k for k in kinds if k in ("statement", "completion")]
    assert data == ["statement", "completion"] * 20


# ---------------------------------------------------------------- space allocated ahead


def _crash_copy(src: Path, dst: Path) -> Path:
    """The node directory as a crash would leave it (the writer still open)."""
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_the_open_segment_is_allocated_ahead_and_a_crash_leaves_nothing_to_cut(tmp_path: Path) -> None:
    """The open segment's file holds zeros past what is written (an fdatasync of written
    blocks costs less than one that grows the file); readers stop at them, a crash leaves
    them behind, and the next writer takes them as the end, not as a torn tail."""
    from dbsentry.audit.verify import verify_all

    signer = Signer(Ed25519PrivateKey.generate())
    log = LogFile(tmp_path / "live", "n1", signer=signer, checkpoint_every=3)
    log.open()
    payloads = [payload_bytes(stmt(i)) for i in range(7)]
    for p in payloads:
        log.append(p)
    log.flush()
    seg = list_segments(tmp_path / "live" / "n1")[-1][1]
    data = seg.read_bytes()
    written = len(data.rstrip(b"\x00"))
    assert len(data) > written + 64 * 1024  # zeros ahead of the end
    assert [p for _, p in records_of(tmp_path / "live" / "n1")] == payloads  # read while open
    crashed = _crash_copy(tmp_path / "live", tmp_path / "crashed")
    tail = recover(crashed / "n1", "n1")
    assert (tail.seq, tail.cut_bytes, tail.kept_as) == (7, 0, None)
    result = verify_all(None, crashed, [signer.public_key])
    assert result.ok, result.describe()
    # the next writer continues the chain after the zeros, in the same segment or a new one
    for continue_last in (True, False):
        again = _crash_copy(crashed, tmp_path / f"again-{continue_last}")
        nxt = LogFile(again, "n1", signer=signer)
        assert nxt.open(continue_last=continue_last).cut_bytes == 0
        nxt.append(payload_bytes(stmt(99)))
        nxt.flush()
        nxt.close()
        assert [s for s, _ in records_of(again / "n1")] == list(range(1, 9))
        assert verify_all(None, again, [signer.public_key]).ok
        for _, path in list_segments(again / "n1"):
            assert not path.read_bytes().endswith(b"\x00" * 8)  # closed: cut to its size
    log.close()
    assert seg.read_bytes() == seg.read_bytes().rstrip(b"\x00") and len(seg.read_bytes()) > written


def test_a_sealed_segment_ends_with_its_seal(tmp_path: Path) -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    log = LogFile(tmp_path, "n1", signer=signer, segment_bytes=2048)
    log.open()
    for i in range(30):
        log.append(payload_bytes(stmt(i)))
        log.flush()
    log.close()
    segments = list_segments(tmp_path / "n1")
    assert len(segments) > 3
    for _, path in segments:
        frames, end, error = parse_frames(path.read_bytes())
        assert error is None and end == path.stat().st_size and frames[-1].kind == KIND_CHECKPOINT


def test_a_torn_record_before_the_zeros_is_cut_and_only_it_is_reported(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "live", "n1")
    log.open()
    for i in range(3):
        log.append(payload_bytes(stmt(i)))
    log.flush()
    crashed = _crash_copy(tmp_path / "live", tmp_path / "crashed")
    log.close()
    seg = list_segments(crashed / "n1")[-1][1]
    data = seg.read_bytes()
    end = len(data.rstrip(b"\x00"))
    torn = b"R\x00\x00\x02\x00" + b"x" * 100  # a record whose write a crash cut short
    seg.write_bytes(data[:end] + torn + data[end + len(torn) :])
    tail = recover(crashed / "n1", "n1")
    assert (tail.seq, tail.cut_bytes) == (3, 105)
    assert tail.kept_as is not None and tail.kept_as.read_bytes() == torn
    assert seg.stat().st_size == end


def test_a_failed_write_leaves_no_gap_before_the_next_one(tmp_path: Path) -> None:
    """A write that fails half way is cut off; the next write goes where it started (the
    file is no longer opened for appending: it writes at its position)."""
    ops = FailingOps()
    log = LogFile(tmp_path, "n1", ops=ops)
    log.open()
    log.append(payload_bytes(stmt(1)))
    log.flush()
    ops.fail_write = True
    log.append(payload_bytes(stmt(2)))
    with pytest.raises(OSError):
        log.flush()
    ops.fail_write = False
    third = payload_bytes(stmt(3))
    log.append(third)
    log.flush()
    log.close()
    got = records_of(tmp_path / "n1")
    assert [s for s, _ in got] == [1, 2] and got[1][1] == third
    assert parse_frames(list_segments(tmp_path / "n1")[-1][1].read_bytes())[2] is None

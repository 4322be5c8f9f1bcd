"""CPU of the audit helper process per record: fsync answers and the search index.

    python bench/audit_index_bench.py [--statements 20000] [--rate 1500] [--per-write 2]
                                      [--durability effect|write] [--mode helper|index|wakeups]

``helper`` (default): a log in a temporary directory, written from an asyncio loop the way
a proxy worker writes it (``--per-write`` statements per loop iteration, each a statement
record and its completion, ``--rate`` statements a second), with the real helper process
(``dbsentry.audit.helper``, ``--index`` into an embedded SQLite store) fsyncing and
indexing it.  ``effect`` asks for an fsync after every write, ``write`` at most every
``fsync_interval_ms`` (20 ms).  After the last write the helper is closed (it indexes the
rest and exits) and its CPU (user + system, ``getrusage`` of the reaped child) is divided
by the records; so is its CPU while it writes and indexes (``/proc``, from a second after
its start to the end of indexing: its start and exit left out).  Also printed: how long a record took to become searchable (the index's
cursor polled every 20 ms) and whether every record is in the index.

``wakeups``: the helper without an index, asked for one fsync at a time and answering
each (what a client at ``-c 1`` costs it under ``effect``); its CPU per request.

``index``: the index alone, in this process: the log grows by ``--batch`` records, then
``catch_up`` indexes them, as the helper's index thread does; the CPU of that thread only.

The records are ``audit_bench.py``'s statements (a SELECT with a trace comment), each
with its completion.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.helper import ProcessSyncer
from dbsentry.audit.index import catch_up
from dbsentry.audit.log import LogTailer
from dbsentry.audit.logwriter import LogFile
from dbsentry.audit.records import CompletionRecord, payload_bytes
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.tasks import spawn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audit_bench import record

NODE = "bench"


def pair(i: int) -> tuple[bytes, bytes]:
    """A statement record (``audit_bench``'s) and its completion."""
    s = record(i, i % 8)
    c = CompletionRecord(statement_id=s.id, session_id=s.session_id, rows=1, duration_ms=0.41)
    return payload_bytes(s), payload_bytes(c)


def _proc_cpu(pid: int) -> tuple[float, float]:
    """A process's user and system CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _index_cursor(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    try:
        row = conn.execute("SELECT seq FROM log_cursor WHERE node = ?", (NODE,)).fetchone()
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
    return int(row[0]) if row else 0


async def run_helper(tmp: Path, statements: int, rate: float, per_write: int, durability: str) -> None:
    state = tmp / "state"
    config = AuditConfig.model_validate({"durability": durability})
    db = config.sqlite_path(state)
    SQLiteStore(db, fsync=False).close()  # the schema, as the proxy makes it before starting
    spec = orjson.dumps({"audit": config.model_dump(mode="json"), "state_dir": str(state)}).decode()
    lazy = durability in ("write", "async")
    durable = 0
    flushed: list[tuple[float, int]] = []  # (when written, last seq), waiting for "durable"
    waits: list[float] = []

    def on_durable(seq: int) -> None:
        nonlocal durable
        durable = max(durable, seq)
        now = time.monotonic()
        while flushed and flushed[0][1] <= seq:
            waits.append(now - flushed.pop(0)[0])

    def on_error(err: OSError) -> None:
        raise err

    log_dir = config.log_path(state)
    syncer = ProcessSyncer(
        log_dir / NODE, on_durable, on_error, index=spec, min_interval=config.fsync_interval_ms / 1000 if lazy else 0.0
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    file = LogFile(log_dir, NODE, syncer=syncer)
    file.open()
    payloads = [pair(i) for i in range(statements)]
    await asyncio.sleep(1.0)  # the helper has started (imports, the index opened)
    assert syncer._proc is not None
    pid = syncer._proc.pid
    cpu0 = _proc_cpu(pid)
    written: list[tuple[float, int]] = []  # (when written, last seq)
    lags: list[float] = []
    done = False

    async def poll() -> None:
        while not done:
            await asyncio.sleep(0.02)
            cursor = await asyncio.to_thread(_index_cursor, db)
            now = time.monotonic()
            while written and written[0][1] <= cursor:
                lags.append(now - written.pop(0)[0])

    poller = spawn(poll(), name="index-poller")
    start = time.monotonic()
    for i in range(0, statements, per_write):
        for s, c in payloads[i : i + per_write]:
            file.append(s)
            file.append(c)
        seq = file.flush()
        written.append((time.monotonic(), seq))
        flushed.append(written[-1])
        due = start + (i + per_write) / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    elapsed = time.monotonic() - start
    for _ in range(250):  # up to 5 s for the index to catch up
        if not written:
            break
        await asyncio.sleep(0.02)
    done = True
    await poller
    cpu1 = _proc_cpu(pid)
    steady_user, steady_system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    file.close()  # the helper indexes the rest, answers and exits (reaped by close)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    records = file.written_seq
    user = after.ru_utime - before.ru_utime
    system = after.ru_stime - before.ru_stime
    indexed = _index_cursor(db)
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT count(*) FROM records WHERE node = ?", (NODE,)).fetchone()[0]
    conn.close()
    print(
        f"helper, durability {durability}: {records} records ({statements} statements, {per_write} per write) "
        f"in {elapsed:.1f} s ({records / elapsed:.0f} records/s), durable up to {durable}"
    )
    print(
        f"  helper CPU {user + system:.2f} s (user {user:.2f}, system {system:.2f}): "
        f"{(user + system) / records * 1e6:.1f} us per record, {(user + system) / statements * 1e6:.1f} us per statement"
    )
    print(
        f"  of which while writing and indexing (no start, no exit): "
        f"{(steady_user + steady_system) / records * 1e6:.1f} us per record "
        f"(user {steady_user / records * 1e6:.1f}, system {steady_system / records * 1e6:.1f})"
    )
    if waits:
        waits.sort()
        print(
            f"  durable answer after a write: p50 {statistics.median(waits) * 1000:.2f} ms, "
            f"p99 {waits[len(waits) * 99 // 100] * 1000:.2f} ms"
        )
    if lags:
        lags.sort()
        print(
            f"  searchable after: p50 {statistics.median(lags) * 1000:.0f} ms, "
            f"max {lags[-1] * 1000:.0f} ms ({len(lags)} writes seen, {len(written)} not)"
        )
    print(f"  index: cursor {indexed}, rows {rows} (of {records})")


def run_index(tmp: Path, statements: int, batch: int) -> None:
    store = SQLiteStore(tmp / "audit.db", fsync=False)
    file = LogFile(tmp / "log", NODE)
    file.open()
    tailer = LogTailer(tmp / "log" / NODE)
    cpu = 0.0
    cursor = 0
    per = max(1, batch // 2)
    for i in range(0, statements, per):
        for s, c in (pair(j) for j in range(i, min(i + per, statements))):
            file.append(s)
            file.append(c)
        upto = file.flush()
        t0 = time.thread_time()
        cursor = catch_up(store, tmp / "log", NODE, upto, tailer, cursor)
        cpu += time.thread_time() - t0
    file.close()
    print(f"index alone, batches of {batch}: {cursor} records, {cpu / cursor * 1e6:.1f} us CPU per record")


def run_wakeups(tmp: Path, count: int) -> None:
    """The helper without an index, asked for one fsync at a time (a client at ``-c 1``
    under ``effect``): its CPU per request."""
    file = LogFile(tmp, NODE)  # its own fsync thread makes the segment durable too; not counted
    file.open()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dbsentry.audit.helper", str(tmp / NODE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    payload = pair(0)[0]
    proc.stdin.write(b"S 1 0\n")
    proc.stdin.flush()
    proc.stdout.readline()  # started
    user0, system0 = _proc_cpu(proc.pid)
    for _ in range(count):
        file.append(payload)
        proc.stdin.write(b"S 1 %d\n" % file.flush())
        proc.stdin.flush()
        proc.stdout.readline()
    user1, system1 = _proc_cpu(proc.pid)
    proc.stdin.close()
    proc.wait()
    file.close()
    print(
        f"helper without index, one fsync request at a time: {count} requests, per request "
        f"user {(user1 - user0) / count * 1e6:.1f} us, system {(system1 - system0) / count * 1e6:.1f} us"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["helper", "index", "wakeups"], default="helper")
    ap.add_argument("--statements", type=int, default=20000)
    ap.add_argument("--rate", type=float, default=1500.0, help="statements a second (helper)")
    ap.add_argument("--per-write", type=int, default=2, help="statements per write (helper)")
    ap.add_argument("--durability", choices=["effect", "write"], default="effect")
    ap.add_argument("--batch", type=int, default=500, help="records per catch_up (index)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dbsentry-audit-index-bench-") as tmp:
        if args.mode == "index":
            run_index(Path(tmp), args.statements, args.batch)
        elif args.mode == "wakeups":
            run_wakeups(Path(tmp), args.statements)
        else:
            asyncio.run(run_helper(Path(tmp), args.statements, args.rate, args.per_write, args.durability))


if __name__ == "__main__":
    main()

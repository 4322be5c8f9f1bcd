"""Throughput and latency of appending to the audit log, alone (no proxy, no database).

    python bench/audit_bench.py [--appenders 8] [--seconds 5] [--durability effect|sync|write|async] [--thread-fsync]

N asyncio tasks each append statement records in a loop, each waiting for what its
durability promises (``sync``: fsync'd; ``effect`` and ``write``: written to the OS),
into a log in a temporary directory.  fsync runs in the audit helper process, as in the
proxy (``--thread-fsync``: in a thread of this process instead).  Prints records/s,
writes, fsyncs and append latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from dbsentry.audit.appender import AuditLog
from dbsentry.audit.helper import ProcessSyncer
from dbsentry.audit.keys import Signer, load_or_create_signing_key
from dbsentry.audit.logwriter import LogFile
from dbsentry.audit.records import StatementRecord


def record(i: int, task: int) -> StatementRecord:
    return StatementRecord.create(
        sql=f"SELECT id, email FROM public.users WHERE id = {i} /* traceparent='00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01' */",
        session_id=f"session-{task}",
        identity=f"user{task}@example.com",
        identity_kind="human",
        connection="prod",
        environment="production",
        decision="allow",
        command="SELECT",
        statement_class="read",
        tables=("public.users",),
        columns_read=("users.id", "users.email"),
        rules=("default-allow",),
    )


def _unset(_: object) -> None:
    raise AssertionError


async def run(log_dir: Path, signer: Signer, appenders: int, seconds: float, durability: str, thread: bool) -> None:
    syncer = None if thread else ProcessSyncer(log_dir / "bench", _unset, _unset)
    w = AuditLog(LogFile(log_dir, "bench", signer=signer, syncer=syncer), durability)  # type: ignore[arg-type]
    w.start()
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def appender(task: int) -> int:
        n = 0
        while time.monotonic() < stop:
            r = record(n, task)
            t0 = time.perf_counter()
            await w.append(r)
            latencies.append(time.perf_counter() - t0)
            n += 1
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(appender(k) for k in range(appenders)))
    await w.drain(60)
    total = time.perf_counter() - t0
    await w.aclose()
    n = sum(counts)
    lat = sorted(latencies)
    print(f"durability       {durability}, {appenders} concurrent appenders, {seconds:g}s, fsync in a {'thread' if thread else 'helper process'}")
    print(f"records          {n}  ({n / total:,.0f} records/s, all durable at the end)")
    print(f"writes           {w.stats.batches}  (mean {w.stats.records / max(1, w.stats.batches):.1f} records, largest {w.stats.largest_batch}); fsyncs {w.stats.fsyncs}")
    print(
        f"append latency   p50 {lat[len(lat) // 2] * 1e6:.0f} us, p99 {lat[int(len(lat) * 0.99)] * 1e6:.0f} us, mean {statistics.fmean(lat) * 1e6:.0f} us"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--appenders", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--durability", choices=["effect", "sync", "write", "async"], default="sync")
    ap.add_argument("--thread-fsync", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:  # the disk the state dir is on
        signer = Signer(load_or_create_signing_key(Path(tmp) / "audit_signing.key"))
        asyncio.run(run(Path(tmp) / "log", signer, args.appenders, args.seconds, args.durability, args.thread_fsync))


if __name__ == "__main__":
    main()

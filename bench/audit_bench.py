"""Throughput of the audit writer's group commit.

    python bench/audit_bench.py [--appenders 8] [--seconds 5] [--durability sync|async] [--pg DSN]

N asyncio tasks each append statement records in a loop (each waiting for its own commit in
sync mode), against SQLite (WAL, synchronous=FULL) in a temporary directory, or PostgreSQL
in a throwaway schema.  Prints records/s, transactions, mean batch size and append latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from dbsentry.audit.keys import Signer, load_or_create_signing_key
from dbsentry.audit.records import StatementRecord
from dbsentry.audit.store import AuditStore
from dbsentry.audit.writer import AuditWriter


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


async def run(
    store: AuditStore, signer: Signer, appenders: int, seconds: float, durability: str
) -> None:
    w = AuditWriter(store, durability, signer=signer)  # type: ignore[arg-type]
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
            if durability == "async" and n % 64 == 0:
                await asyncio.sleep(0)
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*(appender(k) for k in range(appenders)))
    appended = time.perf_counter() - t0
    await asyncio.to_thread(w.flush, 60)
    total = time.perf_counter() - t0
    await w.aclose()
    n = sum(counts)
    lat = sorted(latencies)
    print(f"store            {store.describe()}")
    print(f"durability       {durability}, {appenders} concurrent appenders, {seconds:g}s")
    print(f"records          {n}  ({n / total:,.0f} records/s committed)")
    print(
        f"transactions     {w.stats.batches}  (mean batch {w.stats.records / max(1, w.stats.batches):.1f}, largest {w.stats.largest_batch})"
    )
    print(
        f"append latency   p50 {lat[len(lat) // 2] * 1000:.2f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.2f} ms, mean {statistics.fmean(lat) * 1000:.2f} ms"
    )
    print(f"appending took   {appended:.2f}s, checkpoints {w.stats.checkpoints}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--appenders", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--durability", choices=["sync", "async"], default="sync")
    ap.add_argument("--pg", metavar="DSN", help="benchmark the PostgreSQL store instead of SQLite")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        signer = Signer(load_or_create_signing_key(Path(tmp) / "audit_signing.key"))
        store: AuditStore
        if args.pg:
            from dbsentry.audit.pg_store import PostgresStore

            pg = PostgresStore(args.pg, schema=f"dbsentry_audit_bench_{uuid.uuid4().hex[:8]}")
            store = pg
            try:
                asyncio.run(run(store, signer, args.appenders, args.seconds, args.durability))
            finally:
                pg.drop_schema()
        else:
            from dbsentry.audit.sqlite_store import SQLiteStore

            store = SQLiteStore(Path(tmp) / "audit.db")
            asyncio.run(run(store, signer, args.appenders, args.seconds, args.durability))
            store.close()


if __name__ == "__main__":
    main()

"""The proxy's side of the audit log: durability levels, waiting, outages, backpressure.

``AuditLog`` wraps this node's :class:`~dbsentry.audit.logwriter.LogFile` for asyncio
code.  Records appended during one event-loop iteration are written with one ``write``
at its end; the fsync thread reports what is durable.  What a statement waits for before
it is forwarded (``submit``) depends on ``audit.durability``:

- ``effect`` (default): its record written to the OS (survives ``kill -9``); statements
  that may change data, and COMMITs, wait until it is durable; the shell holds back what
  the statement produces until ``durable_seq`` covers its record (``when_durable``);
- ``sync``: its record durable;
- ``write``: written to the OS; the fsync thread syncs at least every ``fsync_interval_ms``;
- ``async``: nothing; records are written every ``async_flush_ms``.

Nothing is dropped while the log works: the log's ``write`` does not queue, and the shell
stops reading from a client whose statements wait (backpressure).  When a write or an
fsync fails, statements are refused (``AuditUnavailable``) until a new segment can be
opened; records nobody waits for are kept in memory meanwhile (up to ``max_queue``; beyond
that they are counted as dropped) and written after the outage, with a ``system`` record
that documents it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from dbsentry import metrics
from dbsentry.audit.logwriter import LogFile
from dbsentry.audit.records import CompletionRecord, Record, SystemEvent, payload_bytes

log = logging.getLogger("dbsentry.audit")
# A record nobody waits for (a statement's outcome) is written with the next write, or
# after this long at the latest.
LATER_S = 0.005

Durability = Literal["effect", "sync", "write", "async"]
DURABILITIES: tuple[Durability, ...] = ("effect", "sync", "write", "async")
Callback = Callable[["AuditUnavailable | None"], None]


class AuditUnavailable(Exception):
    """The audit trail cannot record right now; the statement must not go ahead."""


@dataclass(slots=True)
class WriterStats:
    records: int = 0  # written to the log
    batches: int = 0  # writes (one per event-loop iteration with records)
    largest_batch: int = 0
    failures: int = 0  # failed writes or fsyncs
    refused: int = 0  # statements refused because the log was down
    dropped: int = 0  # records given up on (kept while down, beyond max_queue)
    checkpoints: int = 0
    fsyncs: int = 0


def resolves(fut: asyncio.Future[AuditUnavailable | None]) -> Callback:
    """A callback that completes ``fut`` with its argument (once)."""

    def done(error: AuditUnavailable | None) -> None:
        if not fut.done():
            fut.set_result(error)

    return done


class AuditLog:
    """Appends records to this node's log from asyncio code (and, ``append_nowait``, from
    any thread)."""

    def __init__(
        self,
        file: LogFile,
        durability: Durability = "effect",
        *,
        async_flush_ms: int = 200,
        max_queue: int = 100_000,
        retry_min: float = 0.05,
        retry_max: float = 5.0,
    ) -> None:
        if durability not in DURABILITIES:
            raise ValueError(f"durability must be one of {', '.join(DURABILITIES)}, not {durability!r}")
        self.file = file
        self.node = file.node
        self.durability: Durability = durability
        self._flush_s = async_flush_ms / 1000
        self._max_queue = max_queue
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._backoff = retry_min
        self.stats = WriterStats()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._flush_pending = False
        # (last seq, callback), oldest first: resolved when written / when durable
        self._written_waiters: deque[tuple[int, int, Callback, Sequence[Record]]] = deque()
        # a heap: sessions wait for older seqs than others have appended since
        self._durable_waiters: list[tuple[int, int, int, Callback, Sequence[Record]]] = []
        self._tie = itertools.count()
        self._healthy = True
        self._last_error: str | None = None
        self._outage_start: float | None = None
        self._refused_in_outage = 0
        self._dropped_in_outage = 0
        self._kept: list[bytes] = []  # payloads kept while down
        self._unrecorded: dict[str, None] = {}  # statement ids refused: skip their completions
        self._retry: asyncio.TimerHandle | None = None
        self._tick: asyncio.TimerHandle | None = None
        self._later: asyncio.TimerHandle | None = None  # the bound on a lazy record's wait
        self._closed = False
        self._lock = threading.Lock()  # appends from other threads
        self.index_wakeup = threading.Event()  # set when closing: index the rest now
        file.on_durable = self._durable_from_thread
        file.on_sync_error = self._sync_failed_from_thread
        if file.syncer is not None:  # a helper process: its answers arrive on the loop
            file.syncer.on_durable = self._durable_now
            file.syncer.on_error = self._sync_failed_now

    # ---------------------------------------------------------------- state

    def start(self) -> None:
        """Open the log (recovering a torn tail) and, on a running loop, bind to it."""
        tail = self.file.open()
        with contextlib.suppress(RuntimeError):
            self._bind(asyncio.get_running_loop())
        if tail.cut_bytes:
            log.warning(
                "audit log: torn tail cut",
                extra={"fields": {"segment": tail.cut_segment, "bytes": tail.cut_bytes, "reason": tail.cut_reason}},
            )
            self.append_nowait(
                SystemEvent(
                    event="audit_log_tail_cut",
                    node=self.node,
                    detail={
                        "segment": tail.cut_segment,
                        "bytes": tail.cut_bytes,
                        "reason": tail.cut_reason,
                        "kept_as": tail.kept_as.name if tail.kept_as is not None else None,
                        "last_seq": tail.seq,
                    },
                )
            )

        if tail.unvouched is not None:
            segment, first, last = tail.unvouched
            log.error(
                "audit log: records no signed checkpoint vouches for (checkpoints removed?); recorded for verify",
                extra={"fields": {"segment": segment, "first_seq": first, "last_seq": last}},
            )
            self.append_nowait(
                SystemEvent(
                    event="audit_log_unvouched",
                    node=self.node,
                    detail={"segment": segment, "first_seq": first, "last_seq": last},
                )
            )
        if tail.damaged_segment is not None:
            log.error(
                "audit log: a damaged segment, whole records after the damage: left as it is for verify",
                extra={"fields": {"segment": tail.damaged_segment, "reason": tail.damage_reason}},
            )
            self.append_nowait(
                SystemEvent(
                    event="audit_log_damaged",
                    node=self.node,
                    detail={"segment": tail.damaged_segment, "reason": tail.damage_reason, "last_seq": tail.seq},
                )
            )

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread_id = threading.get_ident()
        self._tick = loop.call_later(1.0, self._on_tick)

    def _on_tick(self) -> None:
        """Once a second: write due checkpoints and roll segments over by age."""
        self._tick = None
        if self._closed or self._loop is None:
            return
        if self._healthy:
            self._flush()
        self._tick = self._loop.call_later(1.0, self._on_tick)

    @property
    def healthy(self) -> bool:
        return self._healthy

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def durable_seq(self) -> int:
        return self.file.durable_seq

    @property
    def last_seq(self) -> int:
        return self.file.seq

    # ---------------------------------------------------------------- appending

    def _append(self, record: Record) -> int:
        if type(record) is CompletionRecord and self._unrecorded and record.statement_id in self._unrecorded:
            del self._unrecorded[record.statement_id]
            return 0
        payload = payload_bytes(record)
        if not self._healthy:
            self._keep(payload)
            return 0
        return self.file.append(payload)

    def _keep(self, payload: bytes) -> None:
        if len(self._kept) >= self._max_queue:
            self.stats.dropped += 1
            self._dropped_in_outage += 1
            metrics.audit_error("dropped")
            return
        self._kept.append(payload)

    def _forget(self, records: Sequence[Record]) -> None:
        for r in records:
            self._unrecorded[r.id] = None
        while len(self._unrecorded) > self._max_queue:
            del self._unrecorded[next(iter(self._unrecorded))]

    def _refuse(self, records: Sequence[Record]) -> AuditUnavailable:
        self._forget(records)
        self.stats.refused += 1
        self._refused_in_outage += 1
        metrics.audit_error("refused")
        return AuditUnavailable(f"audit log unavailable: {self._last_error or 'not started'}")

    def submit(self, records: Sequence[Record], callback: Callback, *, durable: bool = False) -> int:
        """Append ``records``; call ``callback(None)`` on this loop once they are written
        (``sync`` durability, or ``durable`` under ``effect``: once fsync'd), or
        ``callback(error)`` when they cannot be.  Never calls back before returning.  Returns the last seq (0 when
        nothing was appended)."""
        loop = self._loop_for_call()
        if not self._healthy or self._closed:
            loop.call_soon(callback, self._refuse(records))
            return 0
        first = self.file.seq + 1
        for r in records:
            self._append(r)
        last = self.file.seq
        if self.durability == "async" or last < first:
            loop.call_soon(callback, None)
        elif self.durability == "sync" or (durable and self.durability == "effect"):
            heapq.heappush(self._durable_waiters, (last, next(self._tie), first, callback, records))
        else:
            self._written_waiters.append((first, last, callback, records))
        self._schedule(loop)
        return last

    def append_soon(self, record: Record) -> int:
        """Append without waiting (on the loop's thread); its seq."""
        seq = self._append(record)
        self._schedule(self._loop_for_call())
        return seq

    def append_later(self, record: Record) -> int:
        """Append a record nobody waits for, on the loop's thread: a statement's outcome
        (``CompletionRecord``).  It rides with the next write (the next statement's
        record, usually in the same or the next loop iteration), and is written within
        :data:`LATER_S` at the latest; its seq.  Records keep their order in the log, so
        a COMMIT that waits for its own record to be durable waits for this one too."""
        seq = self._append(record)
        if self.durability == "async":
            self._schedule(self._loop_for_call())
        elif not self._flush_pending and self._later is None and not self._closed:
            self._later = self._loop_for_call().call_later(LATER_S, self._flush_later)
        return seq

    def _flush_later(self) -> None:
        self._later = None
        if not self._flush_pending and not self._closed:
            self._flush()

    def append_nowait(self, record: Record) -> None:
        """Append without waiting, from any thread (approvals, the console)."""
        if self._loop is not None and threading.get_ident() == self._thread_id:
            self.append_soon(record)
            return
        with self._lock:
            self._append(record)
        loop = self._loop
        if loop is None or loop.is_closed():
            self._flush()  # no loop (tools, tests): write now
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._schedule, loop)

    async def append(self, record: Record) -> int:
        """Append and wait as ``submit`` would; the record's seq."""
        fut: asyncio.Future[AuditUnavailable | None] = asyncio.get_running_loop().create_future()
        seq = self.submit([record], resolves(fut))
        err = await fut
        if err is not None:
            raise err
        return seq

    def when_durable(self, seq: int, callback: Callback) -> None:
        """Call ``callback`` on the loop once ``seq`` is durable (at once if it is)."""
        loop = self._loop_for_call()
        if seq <= self.file.durable_seq:
            loop.call_soon(callback, None)
        elif not self._healthy:
            loop.call_soon(callback, AuditUnavailable(f"audit log unavailable: {self._last_error}"))
        else:
            heapq.heappush(self._durable_waiters, (seq, next(self._tie), seq, callback, ()))

    def _loop_for_call(self) -> asyncio.AbstractEventLoop:
        bound = self._loop
        if bound is not None and self._thread_id == threading.get_ident() and bound.is_running():
            return bound  # the one loop running on this thread (asking asyncio costs a getpid())
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._tick is not None:
                self._tick.cancel()
            self._bind(loop)
        return loop

    # ---------------------------------------------------------------- writing

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._flush_pending or self._closed:
            return
        self._flush_pending = True
        if self.durability == "async":
            loop.call_later(self._flush_s, self._flush)
        else:
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        before = self.file.written_seq
        try:
            with self._lock:
                written = self.file.flush()
        except OSError as err:
            self._failed(err, getattr(err, "unwritten", []), self.file.written_seq)
            return
        n = written - before
        if n > 0:
            self.stats.records += n
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, n)
            metrics.audit_commit(0.0, n)
        waiters = self._written_waiters
        while waiters and waiters[0][1] <= written:
            waiters.popleft()[2](None)

    def _durable_from_thread(self, seq: int) -> None:
        self.stats.fsyncs += 1
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._durable, seq)

    def _durable_now(self, seq: int) -> None:
        self.stats.fsyncs += 1
        if seq > self.file.durable_seq:
            self.file.durable_seq = seq
        self._durable(seq)

    def _sync_failed_now(self, err: OSError) -> None:
        self._failed(err, [], self.file.durable_seq)

    def _durable(self, seq: int) -> None:
        waiters = self._durable_waiters
        while waiters and waiters[0][0] <= seq:
            heapq.heappop(waiters)[3](None)

    # ---------------------------------------------------------------- outages

    def _sync_failed_from_thread(self, err: OSError) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._failed, err, [], self.file.durable_seq)

    def _failed(self, err: OSError, unwritten: list[bytes], good_seq: int) -> None:
        """A write or fsync failed: refuse what waits beyond ``good_seq``, keep what nobody
        waits for, and retry in a new segment."""
        self.stats.failures += 1
        metrics.audit_error("commit")
        if self._healthy:
            self._outage_start = time.time()
            log.error("audit log failed, refusing statements until it recovers: %s", err)
        self._healthy = False
        metrics.set_audit_healthy(False)
        self._last_error = str(err) or type(err).__name__
        exc = AuditUnavailable(f"audit log unavailable: {self._last_error}")
        waited: set[int] = set()
        failed: list[Callback] = []
        keep: deque[tuple[int, int, Callback, Sequence[Record]]] = deque()
        written = self.file.written_seq
        for entry in self._written_waiters:
            if entry[1] <= good_seq:
                keep.append(entry)
            else:
                waited.update(range(entry[0], entry[1] + 1))
                failed.append(entry[2])
                if entry[0] > written:
                    self._forget(entry[3])  # never written, never run: no completion follows
        self._written_waiters = keep
        kept: list[tuple[int, int, int, Callback, Sequence[Record]]] = []
        for e in self._durable_waiters:
            if e[0] <= good_seq:
                kept.append(e)
            else:
                if e[4]:
                    waited.update(range(e[2], e[0] + 1))
                    if e[2] > written:
                        self._forget(e[4])
                failed.append(e[3])
        heapq.heapify(kept)
        self._durable_waiters = kept
        first_lost = self.file.written_seq + 1  # the failed write held the seqs after it
        for i, payload in enumerate(unwritten):
            if first_lost + i not in waited:
                self._keep(payload)
        self.stats.refused += len(failed)
        self._refused_in_outage += len(failed)
        for cb in failed:
            cb(exc)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._retry is not None or self._closed or self._loop is None:
            return
        self._retry = self._loop.call_later(self._backoff, self._try_recover)
        self._backoff = min(self._backoff * 2, self._retry_max)

    def _try_recover(self) -> None:
        self._retry = None
        try:
            with self._lock:
                self.file.reopen()
                for payload in self._kept:
                    self.file.append(payload)
                event = SystemEvent(
                    event="audit_store_recovered",
                    node=self.node,
                    detail={
                        "outage_started": self._outage_start,
                        "error": self._last_error,
                        "refused_appends": self._refused_in_outage,
                        "kept_records": len(self._kept),
                        "dropped_records": self._dropped_in_outage,
                    },
                )
                self.file.append(payload_bytes(event))
                self.file.flush()
        except OSError as err:
            self._last_error = str(err) or type(err).__name__
            log.debug("audit log still unavailable: %s", err)
            self._schedule_retry()
            return
        log.warning("audit log recovered after %s", self._last_error)
        self._kept = []
        self._healthy = True
        self._last_error = None
        self._outage_start = None
        self._refused_in_outage = self._dropped_in_outage = 0
        self._backoff = self._retry_min
        metrics.set_audit_healthy(True)

    # ---------------------------------------------------------------- closing

    def flush(self, timeout: float | None = None) -> bool:
        """From a thread other than the loop's: wait until everything appended so far is
        durable; False on timeout or outage."""
        target = self.file.seq
        if self._loop is None or self._loop.is_closed():
            self._flush()
        else:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._schedule, self._loop)
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.file.durable_seq < target:
            if not self._healthy:
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    async def drain(self, wait_seconds: float | None = None) -> bool:
        """Everything appended so far durable (or False after ``wait_seconds``)."""
        if self._flush_pending or self.file.pending:
            self._flush()
        return await asyncio.to_thread(self.flush, wait_seconds)

    def _closing(self) -> None:
        self._closed = True
        for handle in (self._retry, self._tick):
            if handle is not None:
                handle.cancel()
        if self._kept:
            self.stats.dropped += len(self._kept)
            log.error("audit log closed with %d records not written (log unavailable)", len(self._kept))

    def _closed_waiters(self) -> None:
        self.index_wakeup.set()
        exc = AuditUnavailable("audit log closed")
        durable = self.file.durable_seq
        callbacks = [(e[1], e[2]) for e in self._written_waiters]
        callbacks += [(e[0], e[3]) for e in sorted(self._durable_waiters, key=lambda e: (e[0], e[1]))]
        self._written_waiters.clear()
        self._durable_waiters = []
        for last, cb in callbacks:
            cb(None if last <= durable else exc)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is buffered, sign a ``close`` checkpoint, fsync, stop (on the loop's
        thread, or with no loop)."""
        if self._closed:
            return
        self._closing()
        self.file.close()
        self._closed_waiters()

    async def aclose(self, wait_seconds: float = 10.0) -> None:
        if self._closed:
            return
        if self._flush_pending or self.file.pending:
            self._flush()
        self._closing()
        await asyncio.to_thread(self.file.close)
        self._closed_waiters()

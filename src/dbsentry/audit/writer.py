"""Group commit: many sessions' records written in few transactions, off the event loop.

``AuditWriter`` owns one thread that does all store I/O.  Coroutines hand it records and
(in ``sync`` durability) wait for the commit; whatever arrived while the previous commit
was in flight goes into the next transaction, so under load one fsync covers many records.

Failure is loud and quick: when the store fails, the waiting ``append`` calls and every new
one raise ``AuditUnavailable`` (the proxy then refuses the statement), while the thread keeps
retrying with backoff.  Records already accepted without waiting (``append_nowait``, or
``async`` durability) are kept in memory, up to ``max_queue``, and written when the store is
back, followed by a ``system`` record that documents the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from dbsentry import metrics
from dbsentry.audit.keys import Signer
from dbsentry.audit.records import CompletionRecord, Record, SystemEvent
from dbsentry.audit.store import AuditStore, EncodedRecord, encode

log = logging.getLogger("dbsentry.audit")

Durability = Literal["sync", "write", "async"]


class AuditUnavailable(Exception):
    """The audit trail cannot record right now; the statement must not go ahead."""


@dataclass(slots=True)
class WriterStats:
    records: int = 0  # committed
    batches: int = 0  # committed transactions
    largest_batch: int = 0
    failures: int = 0  # failed transactions
    refused: int = 0  # appends refused with AuditUnavailable
    dropped: int = 0  # accepted records given up on (queue overflow, close while down)
    checkpoints: int = 0


class _Waiter(Protocol):
    """Who waits for a record's commit: an ``asyncio.Future`` or a :class:`Ticket`."""

    def get_loop(self) -> asyncio.AbstractEventLoop: ...
    def done(self) -> bool: ...
    def set_result(self, result: int, /) -> None: ...
    def set_exception(self, exception: type | BaseException, /) -> None: ...


class Ticket:
    """Several records committed for one caller, who is called back once on its loop.

    The proxy's hot path: no task, coroutine or future per statement.  ``callback(None)``
    once every record is committed, ``callback(error)`` as soon as one cannot be.
    Resolved only on the loop's thread (results arrive via ``call_soon_threadsafe``).
    """

    __slots__ = ("_done", "_loop", "callback", "remaining", "submitted")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        count: int,
        callback: Callable[[AuditUnavailable | None], None],
    ) -> None:
        self._loop = loop
        self.remaining = count
        self.callback = callback
        self.submitted = time.monotonic()
        self._done = False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def done(self) -> bool:
        return self._done

    def set_result(self, result: int, /) -> None:
        self.remaining -= 1
        if self.remaining <= 0 and not self._done:
            self._done = True
            self.callback(None)

    def set_exception(self, exception: type | BaseException, /) -> None:
        if self._done:
            return
        self._done = True
        if isinstance(exception, AuditUnavailable):
            self.callback(exception)
        else:
            self.callback(AuditUnavailable(f"audit record not written: {exception!r}"))


@dataclass(slots=True)
class _Item:
    record: Record
    encoded: EncodedRecord | None = None
    future: _Waiter | None = None


def _resolve(results: list[tuple[_Waiter, int | BaseException]]) -> None:
    for fut, value in results:
        if fut.done():
            continue
        if isinstance(value, BaseException):
            fut.set_exception(value)
        else:
            fut.set_result(value)


class AuditWriter:
    """Appends records to an ``AuditStore`` from asyncio code, with group commit.

    ``durability="sync"``: ``await append(r)`` returns ``r``'s seq once it is committed.
    ``durability="async"``: ``append`` returns 0 at once; records are committed at least every
    ``async_flush_ms`` while the store is healthy, so a crash loses at most the records of the
    last ``async_flush_ms`` plus one commit.
    """

    def __init__(
        self,
        store: AuditStore,
        durability: Durability = "sync",
        *,
        signer: Signer | None = None,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 60.0,
        async_flush_ms: int = 200,
        sync_timeout: float = 5.0,
        max_batch: int = 1000,
        max_queue: int = 100_000,
        retry_min: float = 0.05,
        retry_max: float = 5.0,
        node: str | None = None,
    ) -> None:
        if durability not in ("sync", "write", "async"):
            raise ValueError(f"durability must be 'sync', 'write' or 'async', not {durability!r}")
        self.store = store
        self.durability: Durability = durability
        self._signer = signer
        self._checkpoint_every = checkpoint_every
        self._checkpoint_seconds = checkpoint_seconds
        self._flush_s = async_flush_ms / 1000
        self._sync_timeout = sync_timeout
        self._max_batch = max_batch
        self._max_queue = max_queue
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._node = node
        self.stats = WriterStats()

        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._retained: deque[_Item] = deque()  # accepted, not yet committed, store down
        self._inflight = 0
        self._healthy = True
        self._last_error: str | None = None
        self._outage_start: float | None = None
        self._refused_in_outage = 0
        # Ids of statement records known not to be stored (refused, or their commit failed):
        # completions naming them are not written.  Bounded; oldest forgotten first.
        self._unrecorded: dict[str, None] = {}
        self._closing = False
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="dbsentry-audit-writer", daemon=True)
        self._started = False
        # Tickets waiting for their commit, oldest first (event loop side), and the
        # watchdog that refuses them when the store stalls.
        self._tickets: deque[Ticket] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        # Records appended on an event loop, handed to the writer thread once per loop
        # iteration: one lock and one wake-up for all the statements of an iteration.
        self._batches: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        self._queued_since = time.monotonic()  # the oldest queued record is younger
        # Commit without lingering: somebody waits for a queued record, or (sync and write
        # durability) every record is to be searchable at once.
        self._urgent = False

    # --- the asyncio side --------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    @property
    def healthy(self) -> bool:
        """False while the store is failing; appends then raise ``AuditUnavailable``."""
        return self._healthy

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def _forget(self, record: Record) -> None:
        self._unrecorded[record.id] = None
        while len(self._unrecorded) > self._max_queue:
            del self._unrecorded[next(iter(self._unrecorded))]

    def _unavailable(self, record: Record | None = None) -> AuditUnavailable:
        if record is not None:
            self._forget(record)
        self.stats.refused += 1
        self._refused_in_outage += 1
        return AuditUnavailable(f"audit store unavailable: {self._last_error or 'not started'}")

    async def append(self, record: Record) -> int:
        """Queue ``record``; in sync durability, wait until it is committed and return its seq.

        Raises ``AuditUnavailable`` if the store is failing or does not commit within
        ``sync_timeout`` seconds.
        """
        if self.durability == "async":
            with self._cond:
                if not self._healthy:
                    raise self._unavailable()
            self.append_nowait(record)
            return 0
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        with self._cond:
            if not self._healthy or self._closing or not self._started:
                raise self._unavailable(record)
            if len(self._queue) >= self._max_queue:
                raise self._unavailable(record)
            self._queue.append(_Item(record, future=fut))
            self._urgent = True
            self._cond.notify()
        try:
            async with asyncio.timeout(self._sync_timeout):
                return await fut
        except TimeoutError:
            with self._cond:
                self._stalled()
                self.stats.refused += 1
                self._refused_in_outage += 1
            raise AuditUnavailable(f"audit store unavailable: {self._last_error}") from None

    def submit(
        self, records: Sequence[Record], callback: Callable[[AuditUnavailable | None], None]
    ) -> None:
        """Commit ``records`` and then call ``callback(None)`` on this event loop, or
        ``callback(error)`` when they cannot be committed (store down, stalled past
        ``sync_timeout``).  In ``async`` durability the records are queued and the callback
        runs at once.  The callback never runs before ``submit`` returns.
        """
        loop = asyncio.get_running_loop()
        if self.durability == "async":
            try:
                with self._cond:
                    if not self._healthy:
                        raise self._unavailable()
                for record in records:
                    self.append_nowait(record)
            except AuditUnavailable as refused:
                loop.call_soon(callback, refused)
                return
            loop.call_soon(callback, None)
            return
        ticket = Ticket(loop, len(records), callback)
        if not self._healthy or self._closing or not self._started:
            with self._cond:
                down = self._unavailable()
                for record in records:
                    self._forget(record)
            loop.call_soon(ticket.set_exception, down)
            return
        self._local(loop).extend(_Item(r, future=ticket) for r in records)
        self._tickets.append(ticket)
        if self._watchdog is None:
            self._watchdog = loop.call_later(min(self._sync_timeout, 0.5), self._watch, loop)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Refuse tickets whose commit takes longer than ``sync_timeout`` (a stalled store)."""
        self._watchdog = None
        tickets = self._tickets
        while tickets and tickets[0].done():
            tickets.popleft()
        if not tickets:
            return
        if time.monotonic() - tickets[0].submitted >= self._sync_timeout:
            with self._cond:
                self._stalled()
                err = AuditUnavailable(f"audit store unavailable: {self._last_error}")
                stalled = [t for t in tickets if not t.done()]
                tickets.clear()
                self.stats.refused += len(stalled)
                self._refused_in_outage += len(stalled)
            for ticket in stalled:
                ticket.set_exception(err)
            return
        self._watchdog = loop.call_later(min(self._sync_timeout, 0.5), self._watch, loop)

    def _stalled(self) -> None:
        """A commit takes longer than ``sync_timeout``: refuse statements until it recovers
        (call with the lock held)."""
        if self._healthy:
            self._healthy = False
            self._last_error = f"no commit within {self._sync_timeout:g}s"
            self._outage_start = time.time()
            log.error("audit store stalled: %s", self._last_error)

    def append_soon(self, record: Record) -> None:
        """``append_nowait`` for code running on an event loop (the proxy's sessions): the
        record is handed to the writer thread with the others of this loop iteration."""
        if self._closing or not self._started:
            with self._cond:
                raise self._unavailable()
        self._local(asyncio.get_running_loop()).append(_Item(record))

    def _local(self, loop: asyncio.AbstractEventLoop) -> list[_Item]:
        items = self._batches.get(loop)
        if items is None:
            items = self._batches[loop] = []
            loop.call_soon(self._handoff, loop)
        return items

    def _handoff(self, loop: asyncio.AbstractEventLoop) -> None:
        """Move this loop's records to the writer thread's queue (on the loop's thread)."""
        items = self._batches.pop(loop, None)
        if not items:
            return
        refused: list[_Waiter] = []
        with self._cond:
            for item in items:
                waiter = item.future
                if waiter is None:
                    record = item.record
                    if isinstance(record, CompletionRecord) and record.statement_id in self._unrecorded:
                        del self._unrecorded[record.statement_id]  # its statement was never stored
                    elif self._closing or len(self._queue) + len(self._retained) >= self._max_queue:
                        self.stats.dropped += 1
                        log.error("audit record dropped: writer closing or queue full (%s)", record.TYPE)
                    else:
                        (self._queue if self._healthy else self._retained).append(item)
                elif waiter.done():
                    self._forget(item.record)  # refused meanwhile (stalled store)
                elif not self._healthy or self._closing:
                    self._forget(item.record)
                    refused.append(waiter)
                else:
                    self._queue.append(item)
                    self._urgent = True
            if refused:
                err = self._unavailable()
            if self._queue and self.durability != "async":
                self._urgent = True  # a denied statement shows up in search at once
            if self._urgent or len(self._queue) >= self._max_batch:
                # Otherwise (async) the writer looks by itself every async_flush_ms.
                self._cond.notify()
        for waiter in dict.fromkeys(refused):
            waiter.set_exception(err)

    def append_nowait(self, record: Record) -> None:
        """Queue ``record`` without waiting (completion records; everything in async mode).

        While the store is down the record is kept for later, up to ``max_queue`` records;
        beyond that, or after ``close``, this raises ``AuditUnavailable``.
        """
        with self._cond:
            if isinstance(record, CompletionRecord) and record.statement_id in self._unrecorded:
                del self._unrecorded[record.statement_id]  # its statement was never stored
                return
            if self._closing or not self._started:
                raise self._unavailable()
            if len(self._queue) + len(self._retained) >= self._max_queue:
                self.stats.dropped += 1
                raise self._unavailable()
            target = self._queue if self._healthy else self._retained
            target.append(_Item(record))
            if self.durability != "async":
                self._urgent = True
            self._cond.notify()

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything queued so far is committed; False on timeout or outage."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._urgent = True
            self._cond.notify()
            while self._queue or self._retained or self._inflight:
                if not self._healthy and not self._inflight and not self._queue:
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 0.5)
            return True

    async def drain(self, wait_seconds: float | None = None) -> bool:
        """``flush`` without blocking the event loop."""
        self._handoff(asyncio.get_running_loop())
        return await asyncio.to_thread(self.flush, wait_seconds)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (if the store works), sign a final checkpoint, stop the thread."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._cond.notify_all()
        if self._started:
            self._thread.join(timeout)
        lost = len(self._queue) + len(self._retained)
        if lost:
            self.stats.dropped += lost
            log.error("audit writer closed with %d records not written (store unavailable)", lost)
            self._fail_sync_items(self._queue, AuditUnavailable("audit writer closed"))

    async def aclose(self, wait_seconds: float = 10.0) -> None:
        """``close`` without blocking the event loop."""
        self._handoff(asyncio.get_running_loop())
        await asyncio.to_thread(self.close, wait_seconds)

    # --- the writer thread ------------------------------------------------------------------

    def _take_batch(self) -> list[_Item] | None:
        """Wait for work; return the next batch (may be empty: checkpoint due), None to stop.

        With sync and write durability a batch goes at once (a statement waits for it, and
        records are searchable as soon as they exist); in async durability records linger
        to share a commit, but never longer than ``async_flush_ms``.
        """
        with self._cond:
            while True:
                if not self._healthy:
                    return []  # retry path
                if self._queue:
                    if self._urgent or self._closing or len(self._queue) >= self._max_batch:
                        break
                    remaining = self._queued_since + self._flush_s - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                    continue
                if self._closing:
                    return None
                # Records may arrive without a wake-up: look again every async_flush_ms.
                self._cond.wait(min(self._checkpoint_wait(), self._flush_s))
                if not self._queue and self._checkpoint_due():
                    return []
            n = min(len(self._queue), self._max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            self._queued_since = time.monotonic()
            self._urgent = bool(self._queue) and (
                self.durability != "async" or any(i.future is not None for i in self._queue)
            )
            self._inflight = n
            return batch

    def _checkpoint_wait(self) -> float:
        if self._signer is None or self._since_checkpoint == 0:
            return 1.0
        return max(
            0.01, min(1.0, self._last_checkpoint + self._checkpoint_seconds - time.monotonic())
        )

    def _checkpoint_due(self) -> bool:
        if self._signer is None or self._since_checkpoint == 0:
            return False
        return (
            self._since_checkpoint >= self._checkpoint_every
            or time.monotonic() - self._last_checkpoint >= self._checkpoint_seconds
        )

    def _run(self) -> None:
        backoff = self._retry_min
        while True:
            batch = self._take_batch()
            if batch is None:
                self._checkpoint(kind="close")
                return
            if not self._healthy:
                if self._closing:
                    self._retry_once()  # one last attempt, then give up
                    with self._cond:
                        if not self._healthy:
                            self._fail_sync_items(
                                self._queue, AuditUnavailable("audit writer closed")
                            )
                            return
                    continue
                with self._cond:
                    self._cond.wait(backoff)
                if self._retry_once():
                    backoff = self._retry_min
                else:
                    backoff = min(backoff * 2, self._retry_max)
                continue
            if batch:
                self._write(batch)
            if self._checkpoint_due():
                self._checkpoint()

    def _encode(
        self, batch: list[_Item]
    ) -> tuple[list[_Item], list[tuple[_Waiter, int | BaseException]]]:
        ok: list[_Item] = []
        failed: list[tuple[_Waiter, int | BaseException]] = []
        for item in batch:
            if item.encoded is None:
                try:
                    item.encoded = encode(item.record)
                except (
                    Exception
                ) as err:  # a record that cannot be serialised is a bug, not an outage
                    log.error("audit record cannot be serialised: %r", err)
                    if item.future is not None:
                        failed.append((item.future, err))
                    continue
            ok.append(item)
        return ok, failed

    def _write(self, batch: list[_Item]) -> None:
        items, results = self._encode(batch)
        started = time.monotonic()
        try:
            seqs = self.store.append_batch([i.encoded for i in items if i.encoded is not None])
        except Exception as err:
            metrics.audit_error("commit")
            self._on_failure(items, results, err)
            return
        metrics.audit_commit(time.monotonic() - started, len(items))
        for item, seq in zip(items, seqs, strict=True):
            if item.future is not None:
                results.append((item.future, seq))
        self._deliver(results)
        with self._cond:
            self._inflight = 0
            self._committed(len(items))
            if not self._healthy:  # a stalled commit finished after all
                kept = len(self._retained)
                outage = _Item(self._outage_event(kept=kept))
                self._recovered()
                self._queue.insert(kept, outage)  # after the kept records, before new work
            self._cond.notify_all()

    def _committed(self, n: int) -> None:
        if n:
            self.stats.records += n
            self.stats.batches += 1
            self.stats.largest_batch = max(self.stats.largest_batch, n)
            self._since_checkpoint += n

    @staticmethod
    def _deliver(results: list[tuple[_Waiter, int | BaseException]]) -> None:
        by_loop: dict[
            asyncio.AbstractEventLoop, list[tuple[_Waiter, int | BaseException]]
        ] = {}
        for fut, value in results:
            by_loop.setdefault(fut.get_loop(), []).append((fut, value))
        for loop, group in by_loop.items():
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, group)

    def _fail_sync_items(self, items: Iterable[_Item], exc: AuditUnavailable) -> None:
        results: list[tuple[_Waiter, int | BaseException]] = [
            (i.future, exc) for i in items if i.future is not None
        ]
        self._deliver(results)

    def _on_failure(
        self,
        items: list[_Item],
        results: list[tuple[_Waiter, int | BaseException]],
        err: Exception,
    ) -> None:
        exc = AuditUnavailable(f"audit store unavailable: {err}")
        with self._cond:
            self.stats.failures += 1
            if self._healthy:
                self._outage_start = time.time()
                log.error("audit store failed, refusing statements until it recovers: %s", err)
            self._healthy = False
            self._last_error = str(err)
            # Waiting callers learn at once; records nobody waits for are kept to retry.
            queued = list(self._queue)
            self._queue.clear()
            waiting = [i for i in items + queued if i.future is not None]
            for i in items + queued:
                if i.future is None:
                    self._retained.append(i)
                else:
                    self._forget(i.record)
            self._inflight = 0
            self.stats.refused += len(waiting)
            self._refused_in_outage += len(waiting)
            self._cond.notify_all()
        results.extend((i.future, exc) for i in waiting if i.future is not None)
        self._deliver(results)

    def _retry_once(self) -> bool:
        """Try to write the kept records plus a record of the outage; True if it worked."""
        with self._cond:
            batch = [
                self._retained.popleft() for _ in range(min(len(self._retained), self._max_batch))
            ]
            self._inflight = len(batch)
            last_batch = not self._retained
        items, results = self._encode(batch)
        try:
            # A failed commit may still have landed (connection lost after COMMIT): skip those.
            ids = [i.encoded.id for i in items if i.encoded is not None]
            present = self.store.existing_ids(ids) if ids else set()
            todo = [i for i in items if i.encoded is not None and i.encoded.id not in present]
            records = [i.encoded for i in todo if i.encoded is not None]
            if last_batch:
                records.append(encode(self._outage_event(kept=len(records))))
            self.store.append_batch(records)
        except Exception as err:
            with self._cond:
                self._retained.extendleft(reversed(batch))
                self._inflight = 0
                self._last_error = str(err)
                self.stats.failures += 1
                self._cond.notify_all()
            log.debug("audit store still unavailable: %s", err)
            return False
        with self._cond:
            self._inflight = 0
            self._committed(len(records))
            if last_batch:
                self._recovered()
            self._cond.notify_all()
        self._deliver(results)
        return True

    def _outage_event(self, kept: int) -> SystemEvent:
        """The record that documents the outage now ending."""
        return SystemEvent(
            event="audit_store_recovered",
            node=self._node,
            detail={
                "outage_started": self._outage_start,
                "error": self._last_error,
                "refused_appends": self._refused_in_outage,
                "kept_records": kept,
            },
        )

    def _recovered(self) -> None:
        log.warning("audit store recovered after %s", self._last_error)
        self._healthy = True
        self._last_error = None
        self._outage_start = None
        self._refused_in_outage = 0
        # Anything that arrived via append_nowait while down goes out next, before new work.
        self._queue.extendleft(reversed(self._retained))
        self._retained.clear()

    def _checkpoint(self, kind: str = "periodic") -> None:
        if self._signer is None or (self._since_checkpoint == 0 and kind == "periodic"):
            return
        if not self._healthy:
            return
        try:
            cp = self.store.add_checkpoint(self._signer, kind)
        except Exception as err:
            log.warning("audit checkpoint failed (will retry): %s", err)
            return
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        if cp is not None:
            self.stats.checkpoints += 1

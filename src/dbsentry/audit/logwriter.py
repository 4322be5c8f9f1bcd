"""Appending to this node's audit log: one write per event-loop iteration, group fsync.

``LogFile`` owns the open segment.  ``append`` numbers, hashes and frames a record (on
any thread, under a lock) into a buffer; ``flush`` writes the buffer with one ``write``
call; a dedicated thread loops on ``fdatasync`` (which releases the interpreter lock)
and reports "durable up to seq N" through ``on_durable``.  So a record costs the event
loop a hash and a buffer append, and one fsync covers everything written since the last.

Segments roll over by size and age: the old one ends with a signed ``seal`` checkpoint
and is fsync'd and closed by the fsync thread; periodic checkpoints are written every
``checkpoint_every`` records or ``checkpoint_seconds``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dbsentry.audit.keys import KeyRing, Signer
from dbsentry.audit.log import (
    FORMAT,
    KIND_CHECKPOINT,
    KIND_HEADER,
    Tail,
    check_node_id,
    json_frame,
    link_hash,
    record_frame,
    recover,
    scan_segment,
    segment_name,
    unvouched_end,
)
from dbsentry.audit.nodes import tools_node

log = logging.getLogger("dbsentry.audit")
ALLOCATE_AHEAD = 1024 * 1024  # zeros written ahead of the open segment's end, a chunk at a time


class FileOps(Protocol):
    """The system calls the log uses (tests swap in failing ones)."""

    def open(self, path: Path) -> int: ...
    def write(self, fd: int, data: bytes) -> int: ...
    def fdatasync(self, fd: int) -> None: ...
    def close(self, fd: int) -> None: ...
    def truncate(self, fd: int, size: int) -> None: ...
    def allocate(self, fd: int, offset: int, length: int) -> None: ...
    def sync_dir(self, path: Path) -> None: ...


class OsFileOps:
    def open(self, path: Path) -> int:
        # not O_APPEND: the file may hold zeros allocated ahead, which writes overwrite
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)

    def write(self, fd: int, data: bytes) -> int:
        return os.write(fd, data)

    def fdatasync(self, fd: int) -> None:
        (getattr(os, "fdatasync", None) or os.fsync)(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def truncate(self, fd: int, size: int) -> None:
        """Cut the file at ``size``; the next write goes there."""
        os.ftruncate(fd, size)
        os.lseek(fd, size, os.SEEK_SET)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """Write zeros at ``offset`` (past what is written; the file position stays)."""
        os.pwrite(fd, bytes(length), offset)

    def sync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_all(ops: FileOps, fd: int, data: bytes) -> None:
    while data:
        n = ops.write(fd, data)
        if n <= 0:
            raise OSError("write wrote nothing")
        data = data[n:]


@dataclass(slots=True)
class _Sync:
    fd: int
    seq: int
    close: bool = False
    new_dir_entry: bool = False


class Syncer(Protocol):
    """Makes segments durable elsewhere (another process: see ``audit.helper``) and
    reports it, on the event loop, through ``on_durable`` (or ``on_error``)."""

    on_durable: Callable[[int], None]
    on_error: Callable[[OSError], None]

    def start(self) -> None: ...
    def request(self, segment: int, seq: int) -> None: ...
    def close(self) -> None: ...


class LogFile:
    """This node's log, open for appending.  Not for several processes at once: each node
    (and, with several workers, each worker) has its own node id and directory."""

    def __init__(
        self,
        log_dir: Path,
        node: str,
        *,
        signer: Signer | None = None,
        segment_bytes: int = 64 * 1024 * 1024,
        segment_seconds: float = 3600.0,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 60.0,
        fsync_interval: float = 0.0,
        ops: FileOps | None = None,
        on_durable: Callable[[int], None] | None = None,
        on_sync_error: Callable[[OSError], None] | None = None,
        syncer: Syncer | None = None,
    ) -> None:
        self.node = check_node_id(node)
        self.dir = Path(log_dir) / node
        self._signer = signer
        self._segment_bytes = segment_bytes
        self._segment_seconds = segment_seconds
        self._checkpoint_every = checkpoint_every
        self._checkpoint_seconds = checkpoint_seconds
        self._fsync_interval = fsync_interval
        self._ops: FileOps = ops if ops is not None else OsFileOps()
        self.on_durable = on_durable
        self.on_sync_error = on_sync_error
        self._lock = threading.Lock()
        self._buf: list[bytes] = []
        self._buf_seqs: list[tuple[int, bytes]] = []  # (seq, payload) of buffered records
        self.seq = 0  # last appended
        self._hash = b""
        self.written_seq = 0  # last handed to the OS
        self._written_hash = b""
        self.durable_seq = 0  # last fsync'd
        self._fd = -1
        self._segment = 0
        self._segment_size = 0
        # The open segment's file holds zeros past what is written, up to here: an
        # fdatasync of blocks already written (no new size, no new extent to record in
        # the filesystem's journal) costs about two thirds of an appending one.  Readers
        # take zeros after the last frame as the end; a closed segment is cut to its size.
        self._allocated = 0
        self._allocate_bytes = min(ALLOCATE_AHEAD, segment_bytes)
        self._segment_opened = 0.0
        self._segment_first = 1
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._cond = threading.Condition()
        self._syncs: list[_Sync] = []
        self._closing = False
        self._thread: threading.Thread | None = None
        self.tail: Tail | None = None
        self.sync_error: OSError | None = None
        # None: a thread of this process fsyncs (tools, tests); the proxy hands fsync to a
        # helper process, so that no thread of its own competes for the interpreter lock
        self.syncer = syncer

    # ---------------------------------------------------------------- opening

    def open(self, *, continue_last: bool = False) -> Tail:
        """Recover the log's end, open a new segment (``continue_last``: append to the last
        one if it is not sealed), start the fsync thread."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tail = recover(self.dir, self.node)
        if self._signer is not None:
            # (twice the checkpoint interval: a crash between a flush's records and its
            # checkpoint leaves up to one batch more than the interval unsigned)
            ring = KeyRing([self._signer.public_key])
            tail.unvouched = unvouched_end(self.dir, self.node, ring, 2 * self._checkpoint_every)
        self.tail = tail
        self.seq = self.written_seq = self.durable_seq = tail.seq
        self._hash = self._written_hash = tail.hash
        if self.syncer is not None:
            self.syncer.start()
        else:
            self._thread = threading.Thread(target=self._sync_loop, name="dbsentry-audit-fsync", daemon=True)
            self._thread.start()
        if not (continue_last and self._reopen_last(tail)):
            self._open_segment(tail.next_segment)
        with self._lock:
            # Sign where the log stood when this writer found it (a new node: the chain's
            # start): a segment a crash left unsealed is vouched for, and a node's log has a
            # signed checkpoint from its first moment (verify requires both).
            self._write_checkpoint_locked("start")
        return tail

    def _reopen_last(self, tail: Tail) -> bool:
        """Append to the last segment if it ends cleanly and is not sealed."""
        number = tail.next_segment - 1
        path = self.dir / segment_name(number)
        if number < 1 or not path.exists():
            return False
        scan = scan_segment(path, number)
        if scan.error is not None or scan.header is None:
            return False
        last = scan.frames[-1]
        if last.kind == KIND_CHECKPOINT and last.meta.get("kind") in ("seal", "close"):
            return False
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self._ops.truncate(fd, scan.valid_end)  # (zeros a writer allocated ahead)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        self._segment = number
        self._segment_size = self._allocated = scan.valid_end
        self._segment_opened = time.monotonic()
        self._segment_first = int(scan.header.get("first_seq", 1))
        return True

    def _queue_sync(self, fd: int, *, close: bool = False, new: bool = False) -> None:
        """Have what is written to ``fd`` (the open segment's) made durable."""
        if self.syncer is not None:
            self.syncer.request(self._segment, self.written_seq)
            if close:
                self._ops.close(fd)  # the helper syncs the file by its name
            return
        with self._cond:
            self._syncs.append(_Sync(fd, self.written_seq, close=close, new_dir_entry=new))
            self._cond.notify()

    def _open_segment(self, number: int) -> None:
        path = self.dir / segment_name(number)
        fd = self._ops.open(path)
        header = json_frame(
            KIND_HEADER,
            {
                "format": FORMAT,
                "node": self.node,
                "segment": number,
                "first_seq": self.written_seq + 1,
                "prev_hash": self._written_hash.hex(),
                "created": time.time(),
            },
        )
        try:
            write_all(self._ops, fd, header)
        except OSError:
            with contextlib.suppress(OSError):
                self._ops.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()  # so that the next attempt can make it again
            raise
        self._fd = fd
        self._segment = number
        self._segment_size = self._allocated = len(header)
        self._segment_opened = time.monotonic()
        self._segment_first = self.written_seq + 1
        self._queue_sync(fd, new=True)

    # ---------------------------------------------------------------- appending

    def append(self, payload: bytes) -> int:
        """Number, hash and buffer one record; its seq.  Written by the next ``flush``."""
        with self._lock:
            seq = self.seq + 1
            prev = self._hash
            digest = link_hash(prev, seq, payload)
            self._buf.append(record_frame(seq, prev, digest, payload))
            self._buf_seqs.append((seq, payload))
            self.seq = seq
            self._hash = digest
            return seq

    @property
    def pending(self) -> bool:
        return bool(self._buf)

    def flush(self) -> int:
        """Write what is buffered to the OS in one call; the last written seq.

        On ``OSError`` nothing of the buffer counts as written: the segment is cut back to
        its last whole frame, the chain continues from the last written record, and the
        error is raised with the lost records' payloads in ``err.unwritten`` (oldest first).
        """
        with self._lock:
            if not self._buf:
                self._maybe_checkpoint_locked()
                return self.written_seq
            data = b"".join(self._buf)
            entries = self._buf_seqs
            self._buf = []
            self._buf_seqs = []
            try:
                if self._fd < 0:
                    raise OSError("the audit log has no open segment")
                if self._segment_size + len(data) > self._allocated:
                    self._allocate_locked(self._segment_size + len(data))
                write_all(self._ops, self._fd, data)
            except OSError as err:
                self._rollback_locked(entries)
                err.unwritten = [p for _, p in entries]  # type: ignore[attr-defined]
                raise
            self._segment_size += len(data)
            self.written_seq = entries[-1][0]
            self._written_hash = self._hash
            self._since_checkpoint += len(entries)
            fd = self._fd
            self._maybe_checkpoint_locked()
            if fd == self._fd:  # (a roll-over has queued the old segment's sync)
                self._queue_sync(fd)
            return self.written_seq

    def _allocate_locked(self, end: int) -> None:
        """Zeros past ``end`` (what the next write reaches): a chunk at a time.  Best
        effort: the writes go on without it (a full disk fails them soon enough)."""
        size = end + self._allocate_bytes
        try:
            self._ops.allocate(self._fd, self._allocated, size - self._allocated)
        except OSError as err:
            log.debug("audit log: no space allocated ahead: %s", err)
        self._allocated = size  # (not tried again before then)

    def _close_segment_locked(self) -> None:
        """Cut the open segment to what is written (the zeros allocated ahead go) and have
        it synced and closed."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        if self._allocated > self._segment_size:
            with contextlib.suppress(OSError):
                self._ops.truncate(fd, self._segment_size)
        self._queue_sync(fd, close=True)

    def _rollback_locked(self, entries: list[tuple[int, bytes]]) -> None:
        """A write failed: forget the buffered records and cut the partial write off."""
        self.seq = self.written_seq
        self._hash = self._written_hash
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self._ops.truncate(self._fd, self._segment_size)
            self._allocated = self._segment_size

    def _maybe_checkpoint_locked(self) -> None:
        now = time.monotonic()
        if self._fd < 0:
            return
        roll = self.written_seq >= self._segment_first and (
            self._segment_size >= self._segment_bytes or now - self._segment_opened >= self._segment_seconds
        )
        if roll:
            self._roll_locked()
            return
        if (
            self._signer is not None
            and self._since_checkpoint > 0
            and (
                self._since_checkpoint >= self._checkpoint_every
                or now - self._last_checkpoint >= self._checkpoint_seconds
            )
        ):
            self._write_checkpoint_locked("periodic")

    def _write_checkpoint_locked(self, kind: str) -> None:
        if self._signer is None or self._fd < 0:
            return
        now = time.time()
        cp = self._signer.sign(self.written_seq, self._written_hash.hex(), now, f"{kind}:{self.node}")
        data = json_frame(
            KIND_CHECKPOINT,
            {
                "node": self.node,
                "segment": self._segment,
                "seq": cp.seq,
                "hash": cp.hash,
                "time": cp.time,
                "kind": kind,
                "key_id": cp.key_id,
                "signature": cp.signature,
            },
        )
        try:
            write_all(self._ops, self._fd, data)
        except OSError as err:  # records are safe; the checkpoint is retried later
            log.warning("audit checkpoint not written: %s", err)
            with contextlib.suppress(OSError):
                self._ops.truncate(self._fd, self._segment_size)
            self._allocated = self._segment_size
            return
        self._segment_size += len(data)
        # Past the space written ahead (the start checkpoint of a new segment is): the file
        # is that long now, and the next allocation starts after it, not over it.
        self._allocated = max(self._allocated, self._segment_size)
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()

    def _roll_locked(self) -> None:
        """Seal the open segment and open the next."""
        self._write_checkpoint_locked("seal")
        self._close_segment_locked()
        try:
            self._open_segment(self._segment + 1)
        except OSError as err:
            log.error("cannot open a new audit log segment: %s", err)
            raise

    def reopen(self) -> None:
        """After a failure: continue in a new segment (raises ``OSError`` if still failing)."""
        with self._lock:
            self._close_segment_locked()
            self.sync_error = None
            self._open_segment(self._segment + 1)

    # ---------------------------------------------------------------- the fsync thread

    def _sync_loop(self) -> None:
        dir_synced = False
        while True:
            with self._cond:
                while not self._syncs and not self._closing:
                    self._cond.wait()
                if not self._syncs and self._closing:
                    return
                todo = self._syncs
                self._syncs = []
            try:
                if any(s.new_dir_entry for s in todo) or not dir_synced:
                    self._ops.sync_dir(self.dir)
                    dir_synced = True
                done_fds: set[int] = set()
                for s in reversed(todo):  # the last entry per fd covers the earlier ones
                    if s.fd not in done_fds:
                        self._ops.fdatasync(s.fd)
                        done_fds.add(s.fd)
                for s in todo:
                    if s.close:
                        self._ops.close(s.fd)
            except OSError as err:
                self.sync_error = err
                log.error("audit log fsync failed: %s", err)
                for s in todo:
                    if s.close:
                        with contextlib.suppress(OSError):
                            self._ops.close(s.fd)
                if self.on_sync_error is not None:
                    self.on_sync_error(err)
                continue
            top = max(s.seq for s in todo)
            if top > self.durable_seq:
                self.durable_seq = top
                if self.on_durable is not None:
                    self.on_durable(top)
            if self._fsync_interval > 0 and not self._closing:
                time.sleep(self._fsync_interval)  # write durability: fsync at most this often

    # ---------------------------------------------------------------- closing

    def close_open(self) -> None:
        """Flush, sign a ``periodic`` checkpoint, fsync and stop, leaving the segment open
        for the next writer of this node (tools that append a few records at a time)."""
        self.flush()
        with self._lock:
            if self._signer is not None and self._fd >= 0 and self._since_checkpoint:
                self._write_checkpoint_locked("periodic")
            self._close_segment_locked()
        self._stop_syncing()
        if self.durable_seq < self.written_seq:
            raise OSError(errno.EIO, "the audit log could not be made durable")

    def _stop_syncing(self) -> None:
        if self.syncer is not None:
            self.syncer.close()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)

    def close(self) -> None:
        """Flush, sign a ``close`` checkpoint, fsync, and stop the thread."""
        with contextlib.suppress(OSError):
            self.flush()
        with self._lock:
            if self._signer is not None and self._fd >= 0:
                self._write_checkpoint_locked("close")
            self._close_segment_locked()
        self._stop_syncing()


def append_from_tool(log_dir: Path, node: str, payloads: list[bytes], signer: Signer | None = None) -> int:
    """Append records from a command-line tool (not the proxy, which owns ``node``'s log):
    to the log of node ``<node>-tools``, under an exclusive lock, continuing its last
    segment; durable when this returns.  The last seq."""
    import fcntl

    tools = tools_node(node)
    node_dir = Path(log_dir) / tools
    node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(node_dir / ".lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        log = LogFile(log_dir, tools, signer=signer, checkpoint_every=1)
        log.open(continue_last=True)
        try:
            for p in payloads:
                log.append(p)
            seq = log.flush()
        finally:
            log.close_open()
    return seq

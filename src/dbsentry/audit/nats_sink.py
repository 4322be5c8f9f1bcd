"""Publishing this node's audit log to NATS JetStream (``audit.nats``).

``NatsPublisher``, a thread with an event loop of its own, follows the durable part of the
node's log, like the index follower, and publishes each record as it is stored (the
canonical JSON payload) to the configured subject, with the headers

    Nats-Msg-Id     the record's id (the payload's "id"), so JetStream drops a second copy
    Dbsentry-Node   the node that wrote it
    Dbsentry-Seq    its sequence number in that node's log

Delivery is at least once.  The cursor, the last seq that JetStream acknowledged, is kept
next to the log in ``<log_dir>/<node>.nats-cursor`` (written atomically after every
acknowledged batch); after a restart publishing resumes from it, so a crash between an
acknowledgement and the cursor's write publishes up to one batch again, which JetStream
drops as duplicates when it comes within the stream's duplicate window (two minutes on a
stream created here); a consumer that must never see one twice also de-duplicates by
``Nats-Msg-Id``.

The log is the buffer: while NATS cannot be reached (or refuses the records), the publisher
retries with a growing pause (0.5 s up to 15 s), logs one warning per outage and one line
when it publishes again, and nothing is dropped; the proxy never waits for it.  The audit
helper (``audit/helper.py``) runs it in a process of its own (``PublisherProcess``) that it
feeds the durable seq, so that its work does not compete with the helper's fsync for the
interpreter lock.  Records are published in batches of
up to ``batch`` whose acknowledgements are awaited together (pipelined), in log order; after
a failed batch the records from the first unacknowledged one are published again, so a
consumer can see a record after later ones: order by ``Dbsentry-Seq`` where it matters.

``nats`` (nats-py) is imported only when a publisher starts: a proxy without ``audit.nats``
never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from dbsentry.audit.log import LogRecord, LogTailer

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext
    from nats.js.api import PubAck

    from dbsentry.audit.config import NatsConfig

log = logging.getLogger("dbsentry.audit")

CURSOR_SUFFIX = ".nats-cursor"
DUPLICATE_WINDOW = 120.0  # seconds, of a stream created here
BATCH = 1000
ACK_TIMEOUT = 10.0
CONNECT_TIMEOUT = 2
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 15.0
HEADER_ID = "Nats-Msg-Id"
HEADER_NODE = "Dbsentry-Node"
HEADER_SEQ = "Dbsentry-Seq"


def cursor_path(log_dir: Path, node: str) -> Path:
    """Where the publisher of ``node`` keeps the last seq JetStream acknowledged."""
    return Path(log_dir) / f"{node}{CURSOR_SUFFIX}"


def read_cursor(path: Path) -> int:
    """The seq in a cursor file; 0 (publish the whole log) when there is none."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return 0
    except (OSError, orjson.JSONDecodeError) as err:
        log.warning("unreadable NATS cursor %s (%s): publishing the whole log again", path, err)
        return 0
    seq = data.get("seq") if isinstance(data, dict) else None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        log.warning("unreadable NATS cursor %s: publishing the whole log again", path)
        return 0
    return seq


def write_cursor(path: Path, seq: int) -> None:
    """Replace the cursor file atomically (a temporary file, fsync'd, renamed over it; one
    per process, should an old publisher still be finishing while a new one starts)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    data = orjson.dumps({"seq": seq, "time": time.time()}) + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def message_id(record: LogRecord) -> str:
    """The record's id (its payload's ``"id"``); ``<node>:<seq>`` for a payload without one."""
    try:
        data = orjson.loads(record.payload)
    except orjson.JSONDecodeError:
        data = None
    rid = data.get("id") if isinstance(data, dict) else None
    return rid if isinstance(rid, str) and rid else f"{record.node}:{record.seq}"


def tls_context(config: NatsConfig) -> ssl.SSLContext | None:
    tls = config.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file is not None else None)
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    return ctx


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    name = type(err).__name__
    return f"{name}: {text}" if text and text != name else name


class _NoAck(Exception):
    """A publish that JetStream did not acknowledge in time, or whose connection closed."""


class NatsPublisher:
    """Publishes ``node``'s durable records (seq <= ``durable_seq()``) to JetStream from a
    thread with its own event loop; ``stop`` publishes what is left (when NATS is
    reachable) and ends it."""

    def __init__(
        self,
        config: NatsConfig,
        log_dir: Path,
        node: str,
        durable_seq: Callable[[], int],
        *,
        interval: float = 0.1,
        batch: int = BATCH,
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        self.config = config
        self.node = node
        self.subject = config.subject_for(node)
        self.cursor_file = cursor_path(log_dir, node)
        self.durable_seq = durable_seq
        self.interval = interval
        self.batch = batch
        self.ack_timeout = ack_timeout
        self.cursor = read_cursor(self.cursor_file)
        self.published = 0  # records JetStream stored
        self.duplicates = 0  # records JetStream acknowledged as duplicates (published before)
        self.failures = 0  # failed attempts (connect, stream, publish)
        self.last_error: str | None = None
        self._tailer = LogTailer(Path(log_dir) / node)
        self._reader: Iterator[LogRecord] | None = None
        self._ahead: LogRecord | None = None
        self._taken = self.cursor  # the seq of the last record read for publishing
        self._outage_since: float | None = None
        self._stopping = threading.Event()
        self._stop_timeout = 5.0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._inflight: list[asyncio.Future[PubAck]] = []
        self._window_warned = False
        self._client_error: str | None = None

    # ------------------------------------------------------------------ the thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dbsentry-audit-nats", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish what is durable and not yet published (for up to ``timeout`` seconds, and
        only while NATS answers: in an outage it stays in the log for the next start), then
        end the thread."""
        self._stop_timeout = timeout
        self._stopping.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended already
                loop.call_soon_threadsafe(wake.set)
        if self._thread is not None:
            self._thread.join(timeout + CONNECT_TIMEOUT + 1.0)

    @property
    def in_outage(self) -> bool:
        return self._outage_since is not None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # a bug: the log keeps the records, the next start resumes
            log.exception("audit NATS publisher stopped")

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if self._stopping.is_set():
            self._wake.set()
        backoff = BACKOFF_FIRST
        deadline: float | None = None
        try:
            while True:
                ack_wait = self.ack_timeout
                if self._stopping.is_set():
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self._stop_timeout
                    if self.in_outage or now >= deadline or self.cursor >= self.durable_seq():
                        break
                    ack_wait = min(ack_wait, deadline - now)
                try:
                    sent = await self._step(ack_wait)
                except Exception as err:
                    self._rewind()
                    self._failed(err)
                    await self._disconnect()
                    await self._pause(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = BACKOFF_FIRST
                if sent == 0 and self._stopping.is_set():
                    break  # nothing more can be read
                if sent < self.batch:
                    await self._pause(self.interval)
        finally:
            await self._disconnect()

    async def _pause(self, seconds: float) -> None:
        assert self._wake is not None
        if self._stopping.is_set():
            return  # stopping: the loop above decides
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # ------------------------------------------------------------------ publishing

    async def _step(self, ack_wait: float) -> int:
        """Publish the next batch of durable records; how many were published."""
        await self._connect()
        upto = self.durable_seq()
        if upto <= self.cursor:
            self._recovered()
            return 0
        records = self._take(upto)
        if not records:
            return 0
        acked, error = await self._publish(records, ack_wait)
        if acked:
            self.cursor = records[acked - 1].seq
        if acked < len(records):
            self._rewind()  # the rest is published again
        if acked:
            write_cursor(self.cursor_file, self.cursor)
        if error is not None:
            raise error
        self._recovered()
        return len(records)

    def _take(self, upto: int) -> list[LogRecord]:
        """The next records (at most a batch) after the last taken, up to seq ``upto``.

        One reading of the log serves batch after batch (a segment is read once, not once
        per batch, when there is a backlog to catch up); a record read beyond ``upto`` (not
        yet durable) waits in ``_ahead``."""
        out: list[LogRecord] = []
        while len(out) < self.batch:
            r, self._ahead = self._ahead, None
            if r is None:
                if self._reader is None:
                    self._reader = self._tailer.read(self._taken)
                r = next(self._reader, None)
                if r is None:
                    self._reader = None  # all that is written: the next call reads on
                    break
            if r.seq > upto:
                self._ahead = r
                break
            out.append(r)
            self._taken = r.seq
        return out

    def _rewind(self) -> None:
        """Read again from the cursor (after a publish that failed)."""
        self._reader = None
        self._ahead = None
        self._taken = self.cursor

    async def _publish(self, records: list[LogRecord], ack_wait: float) -> tuple[int, BaseException | None]:
        """Publish ``records`` pipelined; (how many from the first were acknowledged, the
        first error)."""
        js = self._js
        assert js is not None
        futures: list[asyncio.Future[PubAck]] = []
        self._inflight = futures
        error: BaseException | None = None
        try:
            for r in records:
                headers = {HEADER_ID: message_id(r), HEADER_NODE: r.node, HEADER_SEQ: str(r.seq)}
                # No wait_stall: a batch never exceeds the pending limit (the last batch's
                # futures are all done or cancelled), and a timeout here would make every
                # publish yield to the loop, so each message would go out in a write of its own.
                fut = await js.publish_async(self.subject, r.payload, stream=self.config.stream, headers=headers)
                futures.append(fut)
        except Exception as err:  # not sent: the connection is gone, a record too large...
            error = err
        try:
            if futures:
                _, pending = await asyncio.wait(futures, timeout=ack_wait)
                for fut in pending:
                    fut.cancel()
        finally:
            self._inflight = []
        acked = 0
        for fut in futures:
            if fut.cancelled():
                closed = self._nc is None or self._nc.is_closed
                reason = "the connection to NATS closed" if closed else f"no acknowledgement within {ack_wait:.1f}s"
                return acked, _NoAck(reason)
            exc = fut.exception()
            if exc is not None:
                return acked, exc
            if fut.result().duplicate:
                self.duplicates += 1
            else:
                self.published += 1
            acked += 1
        return acked, error

    async def _connect(self) -> None:
        if self._nc is not None and self._nc.is_connected:
            return
        await self._disconnect()
        import nats

        nc = await nats.connect(
            servers=self.config.resolve_url(),
            name=f"dbsentry-audit-{self.node}",
            # Reconnecting, with backoff, is done here: nats-py's own loop would wait 2 s
            # between up to 60 attempts before it gives up on the first connection.
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            connect_timeout=CONNECT_TIMEOUT,
            error_cb=self._on_error,
            closed_cb=self._on_closed,
            user_credentials=str(self.config.creds_file) if self.config.creds_file is not None else None,
            tls=tls_context(self.config),
        )
        self._nc = nc
        self._js = nc.jetstream(publish_async_max_pending=self.batch)
        try:
            await self._ensure_stream()
        except BaseException:
            await self._disconnect()
            raise

    async def _ensure_stream(self) -> None:
        """Create the stream when it is missing; a stream that exists is left as it is."""
        from nats.js.errors import NotFoundError

        js = self._js
        assert js is not None
        name = self.config.stream
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            subjects = self.config.stream_subjects(self.node)
            try:
                await js.add_stream(name=name, subjects=subjects, duplicate_window=DUPLICATE_WINDOW)
            except Exception as err:
                try:
                    info = await js.stream_info(name)  # another node created it meanwhile
                except NotFoundError:
                    raise err from None
            else:
                log.warning("created the NATS JetStream stream %s (subjects %s)", name, ", ".join(subjects))
                return
        window = info.config.duplicate_window or 0.0
        if window < DUPLICATE_WINDOW and not self._window_warned:
            self._window_warned = True
            log.warning(
                "the NATS stream %s de-duplicates within %.0fs only: a record published again "
                "later (after a restart) is stored twice",
                name,
                window,
            )

    async def _disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _on_error(self, err: Exception) -> None:
        self._client_error = _describe(err)  # why a server could not be reached
        log.debug("NATS: %s", self._client_error)

    async def _on_closed(self) -> None:
        for fut in self._inflight:  # their acknowledgements will not come
            if not fut.done():
                fut.cancel()

    # ------------------------------------------------------------------ outages

    def _failed(self, err: BaseException) -> None:
        from nats.errors import NoServersError

        self.failures += 1
        self.last_error = _describe(err)
        if isinstance(err, NoServersError) and self._client_error is not None:
            self.last_error += f" ({self._client_error})"
        self._client_error = None
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "audit records not published to NATS (stream %s, subject %s): %s; retrying, "
                "they wait in the log from seq %d",
                self.config.stream,
                self.subject,
                self.last_error,
                self.cursor + 1,
            )

    def _recovered(self) -> None:
        if self._outage_since is not None:
            log.warning(
                "audit records published to NATS again after %.1fs (up to seq %d)",
                time.monotonic() - self._outage_since,
                self.cursor,
            )
            self._outage_since = None
            self.last_error = None


# --------------------------------------------------------------------------- its own process

# The publisher does real work per record (reading, headers, the client's bookkeeping); as a
# thread of the audit helper it would hold the interpreter lock while the helper's fsync
# returns, and every statement waiting for durability would wait for it too.  So the helper
# runs it in a process of its own and only feeds it the durable seq (``PublisherProcess``).

CONFIG_ENV = "DBSENTRY_AUDIT_NATS"  # the settings (a URL may hold a password: not on argv)
RESTART_FIRST = 1.0
RESTART_MAX = 30.0


class PublisherProcess:
    """Runs ``python -m dbsentry.audit.nats_sink NODE_DIR`` and writes ``durable_seq()`` to
    its stdin as it grows (from a thread that wakes every ``interval``: no work that competes
    with the helper's fsync); restarts it if it exits; ``stop`` closes its stdin, and it
    publishes what is left (as ``NatsPublisher.stop``) and exits."""

    def __init__(self, config: NatsConfig, node_dir: Path, durable_seq: Callable[[], int], *, interval: float = 0.1) -> None:
        self.config = config
        self.node_dir = Path(node_dir)
        self.durable_seq = durable_seq
        self.interval = interval
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._sent = -1
        self._started = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self._spawn()
        self._thread = threading.Thread(target=self._feed, name="dbsentry-audit-nats-feed", daemon=True)
        self._thread.start()

    def _spawn(self) -> None:
        env = {**os.environ, CONFIG_ENV: self.config.model_dump_json()}
        # stdout is not inherited: the helper's is its answer pipe to the proxy
        proc = subprocess.Popen(
            [sys.executable, "-m", "dbsentry.audit.nats_sink", str(self.node_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        assert proc.stdin is not None
        os.set_blocking(proc.stdin.fileno(), False)
        self._proc, self._sent, self._started = proc, -1, time.monotonic()

    def _feed(self) -> None:
        backoff = RESTART_FIRST
        while not self._stopping.wait(self.interval):
            proc = self._proc
            assert proc is not None
            if proc.poll() is None:
                self._send(proc)
                continue
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if time.monotonic() - self._started > 60:
                backoff = RESTART_FIRST
            log.warning("the NATS publisher exited (%s); restarting it in %.0fs", proc.returncode, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, RESTART_MAX)
            self._spawn()
            self.restarts += 1

    def _send(self, proc: subprocess.Popen[bytes]) -> None:
        seq = self.durable_seq()
        if seq == self._sent or proc.stdin is None:
            return
        try:
            os.write(proc.stdin.fileno(), b"%d\n" % seq)  # atomic (< PIPE_BUF) or EAGAIN
        except OSError:  # full (it is behind: the next one will do) or gone (poll sees it)
            return
        self._sent = seq

    def stop(self, timeout: float = 5.0) -> None:
        """Let it publish what is durable (for up to ``timeout`` seconds, while NATS answers)
        and wait for it to exit."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        if proc.poll() is None:
            os.set_blocking(proc.stdin.fileno(), True)
            with contextlib.suppress(OSError):
                proc.stdin.write(b"%d\n" % self.durable_seq())
        with contextlib.suppress(OSError):
            proc.stdin.close()  # it publishes what is left and exits
        try:
            proc.wait(timeout + CONNECT_TIMEOUT + 2.0)
        except subprocess.TimeoutExpired:
            proc.kill()  # what it did not publish waits in the log for the next start
            proc.wait()


def start_publisher(config: NatsConfig, node_dir: Path, durable_seq: Callable[[], int]) -> PublisherProcess:
    """Start publishing the log in ``node_dir`` (``<log_dir>/<node>``) from a process of its own."""
    publisher = PublisherProcess(config, node_dir, durable_seq)
    publisher.start()
    return publisher


def main(argv: list[str] | None = None) -> None:
    """The publisher process: durable seqs, one a line, on stdin; its end ends it."""
    import argparse
    import signal

    from dbsentry.audit.config import NatsConfig

    parser = argparse.ArgumentParser(prog="dbsentry.audit.nats_sink")
    parser.add_argument("node_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="dbsentry audit nats: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the proxy ends first, then this
    config = NatsConfig.model_validate_json(os.environ[CONFIG_ENV])
    durable = 0
    publisher = NatsPublisher(config, args.node_dir.parent, args.node_dir.name, lambda: durable)
    publisher.start()
    buf = b""
    while data := os.read(0, 4096):
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.strip().isdigit():
                durable = max(durable, int(line))
    publisher.stop()


if __name__ == "__main__":
    main()

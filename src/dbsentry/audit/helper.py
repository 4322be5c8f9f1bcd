"""The audit helper process: fsyncs this node's log and keeps the search index up to date.

The proxy's event loop writes the log; waiting for ``fdatasync`` in a thread of the proxy
would make that thread wait for the interpreter lock each time it returns (up to the
5 ms switch interval while the loop is busy), and every statement waiting for durability
with it.  So fsync happens here, in a process of its own: the proxy sends ``S <segment>
<seq>`` when it has written up to ``seq`` into that segment; the helper fdatasyncs the
segments asked for (one fsync for everything asked since the last) and answers ``D <seq>``
(durable up to ``seq``) or ``E <errno> <message>``.  The answers arrive in the proxy as
readable events on a pipe: no thread, no lock.  With ``--index`` the helper also follows
the durable part of the log into the search index (a thread of its own, in this process).

    python -m dbsentry.audit.helper NODE_DIR

(the index settings come in the environment, ``DBSENTRY_AUDIT_INDEX``: they may hold a
database password, which a command line would show to every user of the machine.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from dbsentry.audit.index import IndexFollower
from dbsentry.audit.log import segment_name
from dbsentry.audit.nats_sink import PublisherProcess, start_publisher

log = logging.getLogger("dbsentry.audit")
INDEX_ENV = "DBSENTRY_AUDIT_INDEX"


# --------------------------------------------------------------------------- the proxy's side


class ProcessSyncer:
    """Runs the helper and talks to it from the event loop (see ``LogFile.syncer``)."""

    def __init__(
        self,
        node_dir: Path,
        on_durable: Callable[[int], None],
        on_error: Callable[[OSError], None],
        *,
        index: str | None = None,
        min_interval: float = 0.0,
    ) -> None:
        self.node_dir = Path(node_dir)
        # durability write/async: fsync at most this often (the helper's fsyncs cost CPU)
        self._min_interval = min_interval
        self._last_sent = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.on_durable = on_durable
        self.on_error = on_error
        self._index = index
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out = b""
        self._pending: dict[int, int] = {}  # requests the pipe could not take yet
        self._writing = False
        self._last: tuple[int, int] | None = None
        self._closing = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn()

    def _spawn(self) -> None:
        argv = [sys.executable, "-m", "dbsentry.audit.helper", str(self.node_dir)]
        env = {k: v for k, v in os.environ.items() if k != INDEX_ENV}
        if self._index is not None:
            env[INDEX_ENV] = self._index
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, close_fds=True, env=env)
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdin.fileno(), False)
        os.set_blocking(proc.stdout.fileno(), False)
        self._proc = proc
        self._out = b""
        assert self._loop is not None
        self._loop.add_reader(proc.stdout.fileno(), self._readable)

    def request(self, segment: int, seq: int) -> None:
        """Ask for ``segment`` to be durable; ``on_durable(seq)`` follows (on the loop)."""
        self._last = (segment, seq)
        pending = self._pending
        if seq > pending.get(segment, -1):
            pending[segment] = seq
        if self._writing or self._timer is not None:
            return
        if self._min_interval:
            assert self._loop is not None
            wait = self._last_sent + self._min_interval - self._loop.time()
            if wait > 0:
                self._timer = self._loop.call_later(wait, self._send_later)
                return
            self._last_sent = self._loop.time()
        self._send()

    def _send_later(self) -> None:
        self._timer = None
        assert self._loop is not None
        self._last_sent = self._loop.time()
        if not self._writing:
            self._send()

    def _send(self) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        data = b"".join(b"S %d %d\n" % item for item in sorted(self._pending.items()))
        try:
            n = os.write(proc.stdin.fileno(), data)
        except BlockingIOError:
            n = 0
        except OSError as err:  # the helper is gone: _readable sees its end
            log.debug("audit helper pipe: %s", err)
            return
        if n == len(data):
            self._pending.clear()
            if self._writing:
                self._writing = False
                assert self._loop is not None
                self._loop.remove_writer(proc.stdin.fileno())
        elif not self._writing:
            # The helper is behind (a slow disk): whole lines are resent once it reads;
            # only the latest seq per segment matters.
            self._writing = True
            assert self._loop is not None
            self._loop.add_writer(proc.stdin.fileno(), self._send)

    def _readable(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            data = os.read(proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._gone()
            return
        self._out += data
        *lines, self._out = self._out.split(b"\n")
        durable = 0
        for line in lines:
            if line.startswith(b"D "):
                durable = max(durable, int(line[2:]))
            elif line.startswith(b"E "):
                code, _, text = line[2:].partition(b" ")
                self.on_error(OSError(int(code), text.decode(errors="replace")))
        if durable:
            self.on_durable(durable)

    def _gone(self) -> None:
        proc = self._proc
        if proc is None:
            return
        assert self._loop is not None and proc.stdout is not None
        self._loop.remove_reader(proc.stdout.fileno())
        if self._writing and proc.stdin is not None:
            self._loop.remove_writer(proc.stdin.fileno())
            self._writing = False
        with contextlib.suppress(OSError):
            proc.stdout.close()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        code = proc.wait()
        self._proc = None
        if self._closing:
            return
        log.error("audit helper exited (%s); restarting it", code)
        self.on_error(OSError(errno.EIO, f"the audit fsync helper exited ({code})"))
        self._spawn()
        if self._last is not None:
            self.request(*self._last)  # what was written is made durable by the new one

    def close(self) -> None:
        """Stop the helper after it has answered what was asked (blocking, at shutdown)."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(proc.stdout.fileno())
                if self._writing:
                    self._loop.remove_writer(proc.stdin.fileno())
        os.set_blocking(proc.stdin.fileno(), True)
        os.set_blocking(proc.stdout.fileno(), True)
        with contextlib.suppress(OSError):
            if self._pending:
                proc.stdin.write(b"".join(b"S %d %d\n" % i for i in sorted(self._pending.items())))
            proc.stdin.close()  # the helper syncs what was asked, answers, indexes, and exits
        rest = self._out + proc.stdout.read()
        proc.stdout.close()
        proc.wait(30)
        self._proc = None
        durable = [int(line[2:]) for line in rest.split(b"\n") if line.startswith(b"D ")]
        if durable:
            self.on_durable(max(durable))


# --------------------------------------------------------------------------- the helper


class _Helper:
    def __init__(self, node_dir: Path, index: str | None) -> None:
        self.dir = node_dir
        self.fds: dict[int, int] = {}
        self.dir_synced: set[int] = set()
        self.durable = 0
        self.index_wake = threading.Event()
        self.index: IndexFollower | None = None
        self.nats: PublisherProcess | None = None  # audit.nats: records to NATS JetStream
        if index is not None:
            self._start_index(index)

    def _start_index(self, spec: str) -> None:
        import orjson

        from dbsentry.audit.config import AuditConfig
        from dbsentry.audit.store import open_store

        data = orjson.loads(spec)
        config = AuditConfig.model_validate(data["audit"])
        store = open_store(config, Path(data["state_dir"]))
        follower = IndexFollower(store, self.dir.parent, self.dir.name, lambda: self.durable, self.index_wake)
        follower.start()
        self.index = follower
        if config.nats is not None:
            self.nats = start_publisher(config.nats, self.dir, lambda: self.durable)

    def sync(self, requests: dict[int, int]) -> int:
        """fdatasync every segment asked for; the highest seq asked."""
        for segment in sorted(requests):
            fd = self.fds.get(segment)
            if fd is None:
                fd = os.open(self.dir / segment_name(segment), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                self.fds[segment] = fd
            if segment not in self.dir_synced:  # the new file's directory entry
                dfd = os.open(self.dir, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
                self.dir_synced.add(segment)
            (getattr(os, "fdatasync", None) or os.fsync)(fd)
        newest = max(requests)
        for segment in [s for s in self.fds if s < newest]:  # sealed: no more writes
            os.close(self.fds.pop(segment))
        return max(requests.values())

    def run(self) -> None:
        buf = b""
        while True:
            data = os.read(0, 65536)
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            requests: dict[int, int] = {}
            for line in lines:
                if line.startswith(b"S "):
                    segment, seq = (int(x) for x in line[2:].split())
                    requests[segment] = max(seq, requests.get(segment, 0))
            if not requests:
                continue
            try:
                seq = self.sync(requests)
            except OSError as err:
                text = str(err.strerror or err).replace("\n", " ")
                os.write(1, b"E %d %s\n" % (err.errno or errno.EIO, text.encode()))
                continue
            self.durable = max(self.durable, seq)
            os.write(1, b"D %d\n" % self.durable)
        if self.index is not None:
            self.index.stop()
        if self.nats is not None:
            self.nats.stop()  # publishes what is left while NATS answers (5 s at most)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dbsentry.audit.helper")
    parser.add_argument("node_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="dbsentry audit helper: %(message)s")
    # The proxy ends it by closing its stdin, after the last requests (Ctrl-C reaches the
    # whole process group: the proxy shuts down first, then this).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _Helper(args.node_dir, os.environ.get(INDEX_ENV)).run()


if __name__ == "__main__":
    main()

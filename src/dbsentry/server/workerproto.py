"""What the workers of one node say to each other (``workers: N``, docs/deployment.md).

Each worker listens on a Unix socket of its own, ``<state_dir>/run/w<k>.sock`` (mode 0600,
in a 0700 directory).  A message is one frame: its length (4 bytes, big-endian), an
HMAC-SHA256 of the body under the node's secret (32 bytes), and the body (JSON).  The
secret is drawn by the supervisor at start and inherited by the workers it forks; it is
never written anywhere.  A frame whose MAC does not verify, or whose time stamp is more than
:data:`MAX_SKEW_SECONDS` away, is ignored and logged.

The messages:

- ``cancel`` ``{pid, secret}``: a client's CancelRequest that the kernel handed to another
  worker than the one holding the session (the worker is in the pid: :func:`pid_worker`);
- ``catalog`` ``{connection}``: a worker saw DDL on ``connection``: read its catalog again;
- ``sessions``: the worker answers with its live sessions as console rows (one frame, the
  same framing, MAC'd too);
- ``mysql-kill`` ``{target, query_only, identity, reviewer}``: a MySQL ``KILL`` of a
  session this worker holds (its connection id names the worker, as a backend pid does);
  the worker answers ``{error}`` (None: killed), the answer the asking client gets.

The key encoding and the framing are pure functions, tested without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("dbsentry.workers")

#: The low bits of a client's backend pid name the worker that holds its session.
WORKER_BITS = 6
MAX_WORKERS = 1 << WORKER_BITS
_RANDOM_LIMIT = (2**31 - 1) >> WORKER_BITS  # pid stays a positive int32

MAC_BYTES = 32
MAX_FRAME = 4 * 1024 * 1024
MAX_SKEW_SECONDS = 30.0
#: How long a worker waits for another's answer (the console's live sessions).
ASK_TIMEOUT_SECONDS = 1.0
_LEN = struct.Struct(">I")


def worker_pid(worker: int, rand: int) -> int:
    """A backend pid for a client of ``worker``: ``rand`` (1 .. 2**25-1) above the worker."""
    if not 0 <= worker < MAX_WORKERS:
        raise ValueError(f"worker index {worker} out of range 0..{MAX_WORKERS - 1}")
    if not 1 <= rand <= _RANDOM_LIMIT:
        raise ValueError("rand out of range")
    return (rand << WORKER_BITS) | worker


#: With a control plane (several nodes) the next bits name the node's slot (controlplane.registry).
NODE_BITS = 8
MAX_NODES = 1 << NODE_BITS
_NODE_RANDOM_LIMIT = (2**31 - 1) >> (WORKER_BITS + NODE_BITS)


def node_worker_pid(slot: int, worker: int, rand: int) -> int:
    """A backend pid for a client of ``worker`` of the node in ``slot``: ``rand`` (1 ..
    2**17-1) above the slot, above the worker; the secret key's 32 random bits stay the
    guard against guessing."""
    if not 0 <= slot < MAX_NODES:
        raise ValueError(f"node slot {slot} out of range 0..{MAX_NODES - 1}")
    if not 1 <= rand <= _NODE_RANDOM_LIMIT:
        raise ValueError("rand out of range")
    return worker_pid(worker, (rand << NODE_BITS) | slot)


def pid_slot(pid: int) -> int:
    """The node slot a backend pid made by :func:`node_worker_pid` belongs to."""
    return (pid >> WORKER_BITS) & (MAX_NODES - 1)


def new_node_pid(slot: int, worker: int, taken: Mapping[int, object]) -> int:
    """A fresh backend pid of ``worker`` of the node in ``slot``, not in ``taken``."""
    while True:
        pid = node_worker_pid(slot, worker, secrets.randbelow(_NODE_RANDOM_LIMIT) + 1)
        if pid not in taken:
            return pid


def new_session_id(slot: int | None, worker: int | None, taken: Mapping[int, object]) -> int:
    """A fresh id for a client's session (a PostgreSQL backend pid, a MySQL connection id),
    not in ``taken``: it names the node's ``slot`` (with a control plane) and the ``worker``
    (with workers), so a cancel or KILL that reaches another process finds its owner; a
    positive int32 either way, which both protocols carry."""
    if slot is not None:
        return new_node_pid(slot, worker or 0, taken)
    if worker is not None:
        return new_pid(worker, taken)
    while True:
        pid = secrets.randbelow(2**31 - 1) + 1
        if pid not in taken:
            return pid


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds the session an id names, seen from one worker: this worker (both None),
    ``worker`` of this node (``slot`` None), or ``worker`` of the node in ``slot``."""

    slot: int | None = None
    worker: int | None = None

    @property
    def here(self) -> bool:
        return self.slot is None and self.worker is None


def owner_of(pid: int, slot: int | None, info: WorkerInfo | None) -> Owner:
    """Where the session ``pid`` (made by :func:`new_session_id`) lives, asked by worker
    ``info`` of the node in ``slot``.  An id no process can have given out (out of range, a
    worker index beyond the node's) is answered here, as an unknown one."""
    if not 1 <= pid <= 2**31 - 1:
        return Owner()
    if slot is not None and pid_slot(pid) != slot:
        return Owner(pid_slot(pid), pid_worker(pid))
    if info is not None and not info.owns(pid) and pid_worker(pid) < info.count:
        return Owner(None, pid_worker(pid))
    return Owner()


def pid_worker(pid: int) -> int:
    """The worker a backend pid made by :func:`worker_pid` belongs to."""
    return pid & (MAX_WORKERS - 1)


def new_pid(worker: int, taken: Mapping[int, object]) -> int:
    """A fresh backend pid of ``worker``, not in ``taken``."""
    while True:
        pid = worker_pid(worker, secrets.randbelow(_RANDOM_LIMIT) + 1)
        if pid not in taken:
            return pid


def seal(key: bytes, body: Mapping[str, Any], *, now: float | None = None) -> bytes:
    """One frame: length, MAC, body (with its time stamp ``ts``)."""
    payload = orjson.dumps({**body, "ts": time.time() if now is None else now})
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    return _LEN.pack(MAC_BYTES + len(payload)) + mac + payload


def unseal(key: bytes, frame: bytes, *, now: float | None = None) -> dict[str, Any] | None:
    """The body of a frame's content (what follows its length), or None when the MAC does not
    verify, the time stamp is stale, or the body is not a JSON object."""
    if len(frame) < MAC_BYTES:
        return None
    mac, payload = frame[:MAC_BYTES], frame[MAC_BYTES:]
    if not hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).digest()):
        return None
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    ts = body.get("ts")
    t = time.time() if now is None else now
    if not isinstance(ts, int | float) or abs(t - ts) > MAX_SKEW_SECONDS:
        return None
    return body


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """Who this worker is among its node's workers, and how to reach the others."""

    index: int
    count: int
    key: bytes  # the node's secret for the messages between workers
    run_dir: Path  # where the workers' sockets are

    def socket_path(self, index: int) -> Path:
        return self.run_dir / f"w{index}.sock"

    def others(self) -> list[int]:
        return [k for k in range(self.count) if k != self.index]

    def owns(self, pid: int) -> bool:
        return pid_worker(pid) == self.index


Handler = Callable[[dict[str, Any]], Awaitable[Any]]

#: How long a KILL forwarded to another worker or node may take to be answered (the owner
#: logs in upstream and kills there: its own time limits are shorter).
KILL_ANSWER_SECONDS = 30.0


async def ask_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes, body: Mapping[str, Any]
) -> Any:
    """Send one sealed message on a fresh connection and read the sealed answer's
    ``answer``; raises OSError when it cannot be had or does not verify (the caller bounds
    the wait).  Closes the connection."""
    try:
        writer.write(seal(key, body))
        await writer.drain()
        frame = await read_frame(reader)
    finally:
        writer.close()
    answer = unseal(key, frame) if frame is not None else None
    if answer is None:
        raise OSError("no answer, or one that does not verify")
    return answer.get("answer")


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readexactly(_LEN.size)
        (size,) = _LEN.unpack(head)
        if size > MAX_FRAME:
            return None
        return await reader.readexactly(size)
    except (asyncio.IncompleteReadError, OSError):
        return None


class WorkerChannel:
    """This worker's socket and its messages to the others."""

    def __init__(self, info: WorkerInfo, handlers: Mapping[str, Handler]) -> None:
        self.info = info
        self.handlers = dict(handlers)
        self._server: asyncio.AbstractServer | None = None

    def on(self, op: str, handler: Handler) -> None:
        """Answer ``op`` with ``handler`` from now on (the MySQL listener's messages)."""
        self.handlers[op] = handler

    async def start(self) -> None:
        path = self.info.socket_path(self.info.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead predecessor's
        self._server = await asyncio.start_unix_server(self._serve, path=str(path))
        os.chmod(path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            with contextlib.suppress(OSError):
                self.info.socket_path(self.info.index).unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            frame = await asyncio.wait_for(read_frame(reader), ASK_TIMEOUT_SECONDS * 5)
            body = unseal(self.info.key, frame) if frame is not None else None
            if body is None:
                log.warning("forged or stale message between workers ignored", extra={"fields": {"worker": self.info.index}})
                return
            handler = self.handlers.get(str(body.get("op")))
            if handler is None:
                log.warning("unknown message between workers ignored", extra={"fields": {"op": str(body.get("op"))[:32]}})
                return
            answer = await handler(body)
            if answer is not None:
                writer.write(seal(self.info.key, {"answer": answer}))
                await writer.drain()
        except (OSError, TimeoutError) as err:
            log.debug("message between workers dropped: %s", err)
        finally:
            writer.close()

    async def send(self, index: int, op: str, **fields: Any) -> bool:
        """Deliver one message to worker ``index``; False when it cannot be reached."""
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(self.info.socket_path(index))), ASK_TIMEOUT_SECONDS
            )
            writer.write(seal(self.info.key, {"op": op, **fields}))
            await writer.drain()
            writer.close()
            return True
        except (OSError, TimeoutError) as err:
            log.warning("worker not reachable", extra={"fields": {"worker": index, "op": op, "error": str(err)}})
            return False

    async def ask(self, index: int, op: str, **fields: Any) -> Any:
        """Worker ``index``'s answer to ``op``; raises OSError when it cannot be had (the
        caller bounds the wait)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(self.info.socket_path(index))), ASK_TIMEOUT_SECONDS
        )
        return await ask_stream(reader, writer, self.info.key, {"op": op, **fields})

    async def broadcast(self, op: str, **fields: Any) -> None:
        await asyncio.gather(*(self.send(k, op, **fields) for k in self.info.others()))

    def ask_blocking(self, index: int, op: str, **fields: Any) -> Any:
        """Worker ``index``'s answer to ``op`` (blocking: call it off the event loop);
        raises OSError when it cannot be had."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(ASK_TIMEOUT_SECONDS)
            sock.connect(str(self.info.socket_path(index)))
            sock.sendall(seal(self.info.key, {"op": op, **fields}))
            head = _recv_exact(sock, _LEN.size)
            (size,) = _LEN.unpack(head)
            if size > MAX_FRAME:
                raise OSError("answer too large")
            body = unseal(self.info.key, _recv_exact(sock, size))
        if body is None:
            raise OSError("answer does not verify")
        return body.get("answer")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise OSError("connection closed early")
        out += chunk
    return bytes(out)

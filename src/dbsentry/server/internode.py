"""Messages between nodes of one control plane (``control_plane:``, docs/deployment.md
"Several nodes"): the CancelRequests that a client sent to another node than the one holding
its session (``cancel``, not answered), the MySQL ``KILL`` of a session another node holds
(``mysql-kill``, answered with the error the asking client gets, or None), and the console's
questions about each worker's live sessions and readiness (``status``).

Every worker listens on TCP (``control_plane.listen``, worker k on port + k, or a free port)
and registers that address in the control plane.  A message is one frame of
:mod:`.workerproto` (length, HMAC-SHA256 of the body, the body with a time stamp) under the
cluster's secret (``control_plane.secret_env``/``secret_file``, or the one the control plane
keeps).  A frame that does not verify, or is stale, is ignored and logged with its peer.

The messages:

- ``cancel`` ``{pid, secret, source}``: no answer;
- ``mysql-kill``: answered ``{answer}`` in one frame under the same key (``NodeChannel.on``);
- ``status`` ``{nonce}``: the worker answers with one frame, sealed the same way,
  ``{op: "status.answer", nonce, node, worker, ready, checks, sessions, left_off}``: its live
  sessions as console rows (each with its node and worker) and its readiness checks (names
  and booleans only).  A ``status`` whose nonce was already seen is a replay and goes
  unanswered; an answer whose nonce is not the question's is not believed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dbsentry.server.workerproto import (
    ASK_TIMEOUT_SECONDS,
    MAX_SKEW_SECONDS,
    Handler,
    ask_stream,
    read_frame,
    seal,
    unseal,
)

log = logging.getLogger("dbsentry.internode")

#: Cancel a session's statement; returns once the upstream has the request.
Cancel = Callable[[int, bytes, str], Awaitable[None]]
#: This worker's status for another node's console: (live session rows, readiness checks).
Status = Callable[[], tuple[list[dict[str, Any]], dict[str, bool]]]
#: At most this many session rows in one answer (the frame stays far below MAX_FRAME).
MAX_ANSWER_SESSIONS = 2000


class SeenNonces:
    """The nonces of the questions answered within the last ``MAX_SKEW_SECONDS`` (older
    ones are refused as stale by :func:`unseal` anyway): a question replayed by someone who
    recorded it is not answered again."""

    def __init__(self, limit: int = 100_000) -> None:
        self._seen: dict[str, float] = {}
        self._limit = limit

    def first_time(self, nonce: str, now: float) -> bool:
        """True the first time ``nonce`` is offered (within the window), False after."""
        while self._seen:  # the oldest first (a dict keeps the order they came in)
            oldest, seen_at = next(iter(self._seen.items()))
            if seen_at >= now - 2 * MAX_SKEW_SECONDS:
                break
            del self._seen[oldest]
        if nonce in self._seen or len(self._seen) >= self._limit:
            return False  # a replay; or a flood of sealed questions: none until they age out
        self._seen[nonce] = now
        return True


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """What one worker of one node answered (or that it did not)."""

    node: str
    worker: int
    address: str
    answered: bool
    ready: bool | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)
    left_off: int = 0  # sessions it did not send (over MAX_ANSWER_SESSIONS)
    error: str | None = None


def status_answer(node: str, worker: int, nonce: str, status: Status | None) -> dict[str, Any]:
    """The body of this worker's answer to a ``status`` question (before it is sealed)."""
    if status is None:  # still starting: nothing to show, and not ready
        rows: list[dict[str, Any]] = []
        checks: dict[str, bool] = {"started": False}
    else:
        rows, checks = status()
    return {
        "op": "status.answer",
        "nonce": nonce,
        "node": node,
        "worker": worker,
        "ready": all(checks.values()),
        "checks": {str(k): bool(v) for k, v in checks.items()},
        "sessions": [{**r, "node": node, "worker": worker} for r in rows[:MAX_ANSWER_SESSIONS]],
        "left_off": max(0, len(rows) - MAX_ANSWER_SESSIONS),
    }


def read_status(body: dict[str, Any] | None, nonce: str, node: str, worker: int, address: str) -> WorkerStatus:
    """The answer to the question ``nonce`` asked of ``(node, worker)``, checked: a body that
    is missing, answers another question or names another worker counts as no answer."""
    if body is None:
        return WorkerStatus(node, worker, address, answered=False, error="no valid answer")
    if body.get("op") != "status.answer" or body.get("nonce") != nonce or body.get("node") != node or body.get("worker") != worker:
        return WorkerStatus(node, worker, address, answered=False, error="an answer to another question")
    rows = body.get("sessions")
    checks = body.get("checks")
    left_off = body.get("left_off")
    return WorkerStatus(
        node,
        worker,
        address,
        answered=True,
        ready=body.get("ready") is True,
        checks={str(k): v for k, v in checks.items() if isinstance(v, bool)} if isinstance(checks, dict) else {},
        sessions=[{**r, "node": node, "worker": worker} for r in rows if isinstance(r, dict)] if isinstance(rows, list) else [],
        left_off=left_off if isinstance(left_off, int) and left_off > 0 else 0,
    )


@dataclass(frozen=True, slots=True)
class NodeLink:
    """What a worker's proxy needs to route cancels between nodes."""

    slot: int  # this node's slot (the bits of the backend pids it gives out)
    channel: NodeChannel
    address_of: Callable[[int, int], str | None]  # (slot, worker) -> its inter-node address


class NodeChannel:
    """This worker's inter-node listener (cancels; questions from other nodes' consoles), and
    the sender of forwarded cancels and of those questions."""

    def __init__(self, key: bytes, host: str, port: int, on_cancel: Cancel) -> None:
        self.key = key
        self.host = host
        self.port = port
        self.on_cancel = on_cancel
        # who this worker is, and what it says when asked (set once the worker has joined
        # and its listeners run; unset, it answers "not started")
        self.node = ""
        self.worker = 0
        self.status: Status | None = None
        self._seen = SeenNonces()
        self.handlers: dict[str, Handler] = {}  # other messages answered (``on``)
        self._server: asyncio.Server | None = None

    def on(self, op: str, handler: Handler) -> None:
        """Answer ``op`` with ``handler`` (the MySQL listener's ``mysql-kill``)."""
        self.handlers[op] = handler

    async def start(self) -> tuple[str, int]:
        """Listen; the address bound (the port chosen when ``port`` is 0)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        sock = self._server.sockets[0].getsockname()
        return str(sock[0]), int(sock[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        try:
            frame = await asyncio.wait_for(read_frame(reader), ASK_TIMEOUT_SECONDS * 5)
            body = unseal(self.key, frame) if frame is not None else None
            if body is None:
                log.warning("forged or stale message from another node ignored", extra={"fields": {"peer": where}})
                return
            # Every message carries a nonce: one already seen within the time a frame stays
            # fresh is a replay (a recorded cancel or KILL sent again) and is ignored.
            nonce = body.get("nonce")
            if not isinstance(nonce, str) or not 16 <= len(nonce) <= 64:
                log.warning("malformed message from another node ignored", extra={"fields": {"peer": where}})
                return
            if not self._seen.first_time(nonce, time.time()):
                log.warning("replayed message from another node ignored", extra={"fields": {"peer": where, "op": str(body.get("op"))[:20]}})
                return
            if body.get("op") == "status":
                await self._answer_status(nonce, writer)
                return
            handler = self.handlers.get(str(body.get("op")))
            if handler is not None:
                answer = await handler(body)
                writer.write(seal(self.key, {"answer": answer}))
                await writer.drain()
                return
            pid, secret = body.get("pid"), body.get("secret")
            if body.get("op") != "cancel" or not isinstance(pid, int) or not isinstance(secret, str):
                log.warning("malformed message from another node ignored", extra={"fields": {"peer": where}})
                return
            try:
                key = bytes.fromhex(secret)
            except ValueError:
                log.warning("malformed message from another node ignored", extra={"fields": {"peer": where}})
                return
            log.info("cancel request from another node", extra={"fields": {"peer": where}})
            # closing the connection after this tells the sender the upstream has it
            await self.on_cancel(pid, key, str(body.get("source", "?"))[:80])
        except (OSError, TimeoutError) as err:
            log.debug("message from another node dropped: %s", err)
        finally:
            writer.close()

    async def _answer_status(self, nonce: str, writer: asyncio.StreamWriter) -> None:
        writer.write(seal(self.key, status_answer(self.node, self.worker, nonce, self.status)))
        await asyncio.wait_for(writer.drain(), ASK_TIMEOUT_SECONDS)

    async def ask_status(self, address: str, node: str, worker: int) -> WorkerStatus:
        """Ask the worker at ``address`` for its live sessions and readiness; within
        ``ASK_TIMEOUT_SECONDS``, else it counts as not answering (it is dead, or cut off)."""
        nonce = secrets.token_hex(16)
        host, _, port = address.rpartition(":")
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(ASK_TIMEOUT_SECONDS):
                reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
                writer.write(seal(self.key, {"op": "status", "nonce": nonce}))
                await writer.drain()
                frame = await read_frame(reader)
        except (OSError, TimeoutError, ValueError) as err:
            return WorkerStatus(node, worker, address, answered=False, error=str(err) or type(err).__name__)
        finally:
            if writer is not None:
                writer.close()
        return read_status(unseal(self.key, frame) if frame is not None else None, nonce, node, worker, address)

    async def ask(self, address: str, op: str, **fields: Any) -> Any:
        """The answer of the worker at ``address`` to ``op``; raises OSError (or ValueError for
        an address that is no host:port) when it cannot be had (the caller bounds the wait)."""
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), ASK_TIMEOUT_SECONDS)
        return await ask_stream(reader, writer, self.key, {"op": op, "nonce": secrets.token_hex(16), **fields})

    async def send_cancel(self, address: str, pid: int, secret: bytes, source: str) -> bool:
        """Hand a CancelRequest to the worker at ``address`` and wait until it closes the
        connection (it has passed the request on upstream); False when it cannot be reached.
        The caller bounds the wait."""
        host, _, port = address.rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), ASK_TIMEOUT_SECONDS)
            body = {"op": "cancel", "nonce": secrets.token_hex(16), "pid": pid, "secret": secret.hex(), "source": source}
            writer.write(seal(self.key, body))
            await writer.drain()
            await reader.read()
            writer.close()
            return True
        except (OSError, TimeoutError, ValueError) as err:
            log.warning("the node holding a session is not reachable", extra={"fields": {"address": address, "error": str(err)}})
            return False

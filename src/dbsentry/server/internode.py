"""Messages between nodes of one control plane (``control_plane:``, docs/deployment.md
"Several nodes"): the CancelRequests that a client sent to another node than the one
holding its session (``cancel``, not answered), and the MySQL ``KILL`` of a session another
node holds (``mysql-kill``, answered with the error the asking client gets, or None).

Every worker listens on TCP (``control_plane.listen``, worker k on port + k, or a free port)
and registers that address in the control plane.  A message is one frame of
:mod:`.workerproto` (length, HMAC-SHA256 of the body, the body with a time stamp) under the
cluster's secret (``control_plane.secret_env``/``secret_file``, or the one the control plane
keeps).  A frame that does not verify, or is stale, is ignored and logged with its peer;
an answer is one frame of the same kind, under the same key.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dbsentry.server.workerproto import (
    ASK_TIMEOUT_SECONDS,
    Handler,
    ask_stream,
    read_frame,
    seal,
    unseal,
)

log = logging.getLogger("dbsentry.internode")

Cancel = Callable[[int, bytes, str], None]


@dataclass(frozen=True, slots=True)
class NodeLink:
    """What a worker's proxy needs to route cancels between nodes."""

    slot: int  # this node's slot (the bits of the backend pids it gives out)
    channel: NodeChannel
    address_of: Callable[[int, int], str | None]  # (slot, worker) -> its inter-node address


class NodeChannel:
    """This worker's inter-node listener, and the sender of forwarded cancels."""

    def __init__(self, key: bytes, host: str, port: int, on_cancel: Cancel) -> None:
        self.key = key
        self.host = host
        self.port = port
        self.on_cancel = on_cancel
        self.handlers: dict[str, Handler] = {}  # the messages answered (``on``)
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
            self.on_cancel(pid, key, str(body.get("source", "?"))[:80])
        except (OSError, TimeoutError) as err:
            log.debug("message from another node dropped: %s", err)
        finally:
            writer.close()

    async def ask(self, address: str, op: str, **fields: Any) -> Any:
        """The answer of the worker at ``address`` to ``op``; raises OSError (or ValueError for
        an address that is no host:port) when it cannot be had (the caller bounds the wait)."""
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), ASK_TIMEOUT_SECONDS)
        return await ask_stream(reader, writer, self.key, {"op": op, **fields})

    async def send_cancel(self, address: str, pid: int, secret: bytes, source: str) -> bool:
        """Hand a CancelRequest to the worker at ``address``; False when it cannot be reached."""
        host, _, port = address.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), ASK_TIMEOUT_SECONDS)
            writer.write(seal(self.key, {"op": "cancel", "pid": pid, "secret": secret.hex(), "source": source}))
            await writer.drain()
            writer.close()
            return True
        except (OSError, TimeoutError, ValueError) as err:
            log.warning("the node holding a session is not reachable", extra={"fields": {"address": address, "error": str(err)}})
            return False

"""Waiting inside a tool call for a reviewer's decision (docs/mcp.md, "Approvals").

The reviewer is another person (in the console, the API or the CLI), so nothing the agent's
own user could answer (elicitation) decides a request.  What the protocol offers for "this
call waits on an outside party" and the SDK implements is a long call with progress
notifications: a client that asks for progress (it sends a ``progressToken``) gets
``request_approval`` / ``approval_status`` held open while the request is pending, a
progress notification every few seconds, and the final status as the result.  A client
that asks for no progress gets the answer at once and polls ``approval_status``.

The wait is the approvals service's own (:meth:`Approvals.watch`: one background thread
polls the store's change counter), bounded by ``mcp.approval_wait_seconds``, and ends with
the call: a client's cancellation cancels the handler, which drops the watch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from dbsentry.approvals.service import Approvals

if TYPE_CHECKING:
    from dbsentry.approvals.config import ApprovalsConfig
    from dbsentry.approvals.model import ApprovalRequest
    from dbsentry.approvals.store import ApprovalStore

PROGRESS_EVERY_SECONDS = 5.0

Tick = Callable[[float, float], Awaitable[None]]


class _Watcher(Approvals):
    """The approvals service's waiting, and nothing else: it expires nothing (the proxy's
    own service does, and audits and announces it), notifies nobody, records nothing."""

    def expire_due(self) -> list[ApprovalRequest]:
        return []


class Waits:
    """Waits on approval requests for the tools of one MCP server (started on first use)."""

    def __init__(self, config: ApprovalsConfig, store: Callable[[], ApprovalStore | None]) -> None:
        self._config = config
        self._store = store
        self._lock = threading.Lock()
        self._watcher: _Watcher | None = None

    def _started(self) -> _Watcher | None:
        with self._lock:
            if self._watcher is None:
                store = self._store()
                if store is None:
                    return None
                self._watcher = _Watcher(self._config, store, expire_interval=float("inf"))
                self._watcher.start()
            return self._watcher

    async def until_decided(self, request_id: str, seconds: float, tick: Tick) -> bool:
        """Wait until ``request_id`` is no longer pending, at most ``seconds``; whether it was
        decided.  ``tick(elapsed, seconds)`` is awaited at the start and every few seconds."""
        watcher = self._started()
        if watcher is None or seconds <= 0:
            return False
        fut = watcher.watch(request_id)
        try:
            decided = asyncio.wrap_future(fut)
            start = time.monotonic()
            while True:
                elapsed = time.monotonic() - start
                if elapsed >= seconds:
                    return False
                await tick(elapsed, seconds)
                with anyio.move_on_after(min(PROGRESS_EVERY_SECONDS, seconds - elapsed)):
                    await asyncio.shield(decided)
                    return True
        finally:
            watcher.unwatch(request_id, fut)

    def close(self) -> None:
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.close()

"""The console's view of every node sharing this node's control plane (docs/deployment.md
"Several nodes", docs/console.md "Nodes").

The console of any node asks every live worker of the registry, over the inter-node
channel (:mod:`.internode`, HMAC under the cluster's secret), for its live sessions and its
readiness, all at once and within ``ASK_TIMEOUT_SECONDS``.  A worker that does not answer
(killed, cut off) is reported as such and its sessions are not shown: a node killed with
``kill -9`` has its sessions vanish at the next look, and its rows leave the registry
``node_ttl_seconds`` after its last heartbeat.  Nothing is cached: every look asks again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from dbsentry.controlplane.registry import NodeAgent, NodeRow
from dbsentry.server.internode import NodeChannel, WorkerStatus
from dbsentry.server.workerproto import ASK_TIMEOUT_SECONDS


class ClusterView:
    """Asks the registry's workers; called from the web routes' threads (blocking), while
    the asking itself runs on the worker's event loop ``loop``."""

    def __init__(self, agent: NodeAgent, channel: NodeChannel, loop: asyncio.AbstractEventLoop) -> None:
        self.agent = agent
        self.channel = channel
        self.loop = loop

    def ask(self, *, other_nodes_only: bool) -> list[tuple[NodeRow, WorkerStatus]]:
        """Every live worker (of the other nodes only, with ``other_nodes_only``) and what it
        answered."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:  # it would wait for itself: every worker "not answering"
            raise RuntimeError("ClusterView.ask blocks: call it from a thread, not from its event loop")
        rows = [r for r in self.agent.live_nodes() if not (other_nodes_only and r.node == self.agent.node)]
        if not rows:
            return []

        async def every() -> list[WorkerStatus]:
            return list(await asyncio.gather(*(self.channel.ask_status(r.address, r.node, r.worker) for r in rows)))

        future = asyncio.run_coroutine_threadsafe(every(), self.loop)
        try:
            answers = future.result(ASK_TIMEOUT_SECONDS * 3)
        except concurrent.futures.TimeoutError:  # the loop itself is stuck: nobody answered
            future.cancel()
            answers = [WorkerStatus(r.node, r.worker, r.address, answered=False, error="no answer in time") for r in rows]
        return list(zip(rows, answers, strict=True))

    def remote_sessions(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The other nodes' live sessions (rows with their node and worker), and the workers
        whose sessions are missing from them (did not answer, or sent only some)."""
        rows: list[dict[str, Any]] = []
        missing: list[dict[str, Any]] = []
        for reg, status in self.ask(other_nodes_only=True):
            rows.extend(status.sessions)
            if not status.answered or status.left_off:
                missing.append(
                    {
                        "node": reg.node,
                        "worker": reg.worker,
                        "address": reg.address,
                        "answered": status.answered,
                        "left_off": status.left_off,
                        "error": status.error,
                    }
                )
        return rows, missing

    def node_rows(self) -> list[dict[str, Any]]:
        """Every live worker of every node (this one's too): the registry's row and what the
        worker answered (readiness, how many sessions)."""
        return [
            {
                "node": reg.node,
                "worker": reg.worker,
                "slot": reg.slot,
                "address": reg.address,
                "pid": reg.pid,
                "started_at": reg.started_at,
                "heartbeat_age_seconds": round(reg.age, 3),
                "this_node": reg.node == self.agent.node,
                "answered": status.answered,
                "ready": status.ready,
                "checks": status.checks,
                "sessions": len(status.sessions) + status.left_off if status.answered else None,
                "error": status.error,
            }
            for reg, status in self.ask(other_nodes_only=False)
        ]

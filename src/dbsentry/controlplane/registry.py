"""The node registry and the change feed of the control plane, for one worker process.

At start a worker registers (:meth:`NodeAgent.register`): its node id, its worker index, the
address other nodes reach it at, and the node's *slot*, a small number (0..255) that the
backend keys its clients get carry so that a CancelRequest arriving at any node finds its
owner.  The workers of one node share their node's slot; a new node takes the lowest slot no
live node holds.  Times are the database's clock, so the nodes' clocks need not agree.

Then a thread keeps one connection that ``LISTEN``s on the control plane's channel and, every
``heartbeat_seconds``, heartbeats and reads the live nodes (those whose heartbeat is younger
than ``node_ttl_seconds``; a node killed with ``kill -9`` drops out that much later).  A
notification calls the callbacks registered for its topic; after an outage every callback is
called once (what was announced meanwhile was missed) and the stores' own periodic re-reads
(the approvals poll) stay the fallback.  When the database is unreachable the thread retries
every second and says so once in the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from dbsentry.controlplane import ControlPlane
from dbsentry.identity.ratelimit import ControlPlaneUnavailable

log = logging.getLogger("dbsentry.controlplane")

#: How many nodes one control plane can tell apart in backend keys (see workerproto).
MAX_SLOTS = 256
_NOW = "extract(epoch from clock_timestamp())"


@dataclass(frozen=True, slots=True)
class NodeRow:
    node: str
    worker: int
    slot: int
    address: str
    pid: int
    started_at: float
    age: float  # seconds since its last heartbeat


class NodeAgent:
    """This worker's registration, heartbeat and notifications."""

    def __init__(self, plane: ControlPlane, node: str, worker: int, address: str) -> None:
        self.plane = plane
        self.node = node
        self.worker = worker
        self.address = address
        self.slot: int | None = None
        self.up = False  # the listening connection is open
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._live: list[NodeRow] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn = plane.connection("dbsentry-registry")

    # --- registration (blocking) ------------------------------------------------------------

    def register(self) -> int:
        """Register this worker; its node's slot.  Raises ControlPlaneUnavailable."""
        ttl = self.plane.config.node_ttl_seconds
        with self._conn.transaction() as tx:
            tx.run("SELECT pg_advisory_xact_lock(hashtext(?))", ("dbsentry.nodes:" + self.plane.schema,))
            mine = tx.rows("SELECT slot FROM nodes WHERE node = ? ORDER BY heartbeat_at DESC LIMIT 1", (self.node,))
            taken = {
                int(r[0])
                for r in tx.rows(f"SELECT slot FROM nodes WHERE node <> ? AND heartbeat_at > {_NOW} - ?", (self.node, ttl))
            }
            if mine and int(mine[0][0]) not in taken:
                slot = int(mine[0][0])
            else:
                free = [s for s in range(MAX_SLOTS) if s not in taken]
                if not free:
                    raise ControlPlaneUnavailable(f"more than {MAX_SLOTS} live nodes")
                slot = free[0]
            # the dead holders of the slot go (their rows would name it twice)
            tx.run(f"DELETE FROM nodes WHERE slot = ? AND node <> ? AND heartbeat_at <= {_NOW} - ?", (slot, self.node, ttl))
            tx.run(
                f"INSERT INTO nodes (node, worker, slot, address, pid, started_at, heartbeat_at) "
                f"VALUES (?, ?, ?, ?, ?, {_NOW}, {_NOW}) ON CONFLICT (node, worker) DO UPDATE SET "
                "slot = excluded.slot, address = excluded.address, pid = excluded.pid, "
                "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
                (self.node, self.worker, slot, self.address, os.getpid()),
            )
        self.slot = slot
        self.up = True
        self._refresh()
        log.info("registered in the control plane", extra={"fields": {"node": self.node, "slot": slot, "address": self.address}})
        return slot

    def _heartbeat(self) -> None:
        with self._conn.transaction() as tx:
            found = tx.run(f"UPDATE nodes SET heartbeat_at = {_NOW} WHERE node = ? AND worker = ? AND slot = ?", (self.node, self.worker, self.slot))
        if found == 0:  # expired while the control plane was away: register again
            log.warning("this node's registration had expired; registering again", extra={"fields": {"node": self.node}})
            if self.register() != self.slot:
                log.error("this node's slot was taken meanwhile")
        self._refresh()

    def _refresh(self) -> None:
        ttl = self.plane.config.node_ttl_seconds
        with self._conn.transaction() as tx:
            rows = tx.rows(
                f"SELECT node, worker, slot, address, pid, started_at, {_NOW} - heartbeat_at FROM nodes "
                f"WHERE heartbeat_at > {_NOW} - ? ORDER BY node, worker",
                (ttl,),
            )
        live = [NodeRow(str(r[0]), int(r[1]), int(r[2]), str(r[3]), int(r[4]), float(r[5]), float(r[6])) for r in rows]
        with self._lock:
            self._live = live

    def leave(self) -> None:
        with contextlib.suppress(ControlPlaneUnavailable), self._conn.transaction() as tx:
            tx.run("DELETE FROM nodes WHERE node = ? AND worker = ?", (self.node, self.worker))

    def announce(self, topic: str) -> None:
        """Tell every worker of every node (this one too) about ``topic`` (blocking: call
        it off the event loop).  Raises ControlPlaneUnavailable."""
        with self._conn.transaction() as tx:
            tx.run("SELECT pg_notify(?, ?)", (self.plane.channel, topic))

    # --- what the rest of the process asks (non-blocking) -----------------------------------

    def live_nodes(self) -> list[NodeRow]:
        with self._lock:
            return list(self._live)

    def address_of(self, slot: int, worker: int) -> str | None:
        """Where worker ``worker`` of the node in ``slot`` listens, if it is alive."""
        for row in self.live_nodes():
            if row.slot == slot and row.worker == worker:
                return row.address
        return None

    def on(self, topic: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` (in this agent's thread) when ``topic`` is announced.  May be
        called once the thread runs (a SIGHUP reload's added connections): the mapping is
        replaced, never changed while that thread reads it."""
        self._callbacks = {**self._callbacks, topic: [*self._callbacks.get(topic, ()), callback]}

    # --- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dbsentry-controlplane", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 3.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.leave()
        self._conn.close()

    def _fire(self, topics: list[str] | None) -> None:
        for topic, callbacks in self._callbacks.items():
            if topics is None or topic in topics:
                for cb in callbacks:
                    try:
                        cb()
                    except Exception:
                        log.exception("control-plane callback failed", extra={"fields": {"topic": topic}})

    def _run(self) -> None:
        every = self.plane.config.heartbeat_seconds
        down_since: float | None = None
        while not self._stop.is_set():
            conn: Any = None
            try:
                conn = self.plane.connect("dbsentry-listen")
                conn.execute(f"LISTEN {self.plane.channel}")
                self._heartbeat()
                if down_since is not None:
                    log.warning("control plane reachable again", extra={"fields": {"after_seconds": round(time.monotonic() - down_since, 1)}})
                    down_since = None
                    self._fire(None)  # what was announced while we were away
                self.up = True
                next_beat = time.monotonic() + every
                while not self._stop.is_set():
                    wait = max(0.0, next_beat - time.monotonic())
                    topics = [n.payload for n in conn.notifies(timeout=wait, stop_after=64)]
                    if topics:
                        self._fire(topics)
                    if time.monotonic() >= next_beat:
                        self._heartbeat()
                        next_beat = time.monotonic() + every
            except (psycopg.Error, OSError, ControlPlaneUnavailable) as err:
                self.up = False
                if down_since is None:
                    down_since = time.monotonic()
                    log.error(
                        "control plane unreachable; retrying every second",
                        extra={"fields": {"control_plane": self.plane.describe(), "error": str(err).strip()[:200]}},
                    )
                self._stop.wait(1.0)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

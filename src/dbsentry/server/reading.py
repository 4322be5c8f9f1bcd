"""When a session's upstream socket is read: the one rule both listeners' shells follow.

uvloop reads a busy socket up to 32 times (256 KiB each) before it runs anything else:
8 MiB of rows to relay and mask in one go, seconds (with the safety net looking at every
value, more than ten) in which nothing else in the worker runs: other sessions, the MCP
tools, the timers, the news that a client has left. After a large read the next one waits
for the loop's next turn. Reads far below :data:`TURN_BYTES` (pgbench-sized results) pay
nothing for it: no system call, no callback.
"""

from __future__ import annotations

import asyncio

#: An upstream read this large leaves the next one for the loop's next turn.
TURN_BYTES = 65536


class UpstreamReading:
    """Whether one session's upstream is read now. It is not while the client reads slowly
    (its transport called ``pause_writing``), while results wait for their audit records
    (``held``), or after a large read, until the loop's next turn."""

    __slots__ = ("_held", "_next", "_slow")

    def __init__(self) -> None:
        self._slow = False
        self._held = False
        self._next: tuple[asyncio.Handle, asyncio.Transport] | None = None

    def large_read(self, upstream: asyncio.Transport) -> None:
        """``upstream`` was just read at least :data:`TURN_BYTES`, and the bytes handled:
        its next read waits for the loop's next turn."""
        if self._next is None and not upstream.is_closing():
            upstream.pause_reading()
            self._next = (asyncio.get_running_loop().call_soon(self._turn), upstream)

    def client_slow(self, upstream: asyncio.Transport | None, slow: bool) -> None:
        """The client's transport is full (``pause_writing``) or has room again."""
        self._slow = slow
        self._apply(upstream)

    def results_held(self, upstream: asyncio.Transport | None, held: bool) -> None:
        """Results wait (for the audit log) beyond what the proxy keeps, or have left."""
        self._held = held
        self._apply(upstream)

    def _turn(self) -> None:
        assert self._next is not None
        upstream = self._next[1]
        self._next = None
        self._apply(upstream)

    def _apply(self, upstream: asyncio.Transport | None) -> None:
        if upstream is None or upstream.is_closing():
            return
        if self._slow or self._held or self._next is not None:
            upstream.pause_reading()
        else:
            upstream.resume_reading()


def client_gone(transport: asyncio.BaseTransport | None) -> bool:
    """Whether the client's socket has failed or is closing. A write to a client that has
    left fails at once, but its ``connection_lost`` comes on a later turn of the loop: until
    then, whatever the upstream sends would be relayed (and masked) for nobody. ``transport``
    is the socket's own, not a TLS layer over it (which learns of the failure only then)."""
    return transport is None or transport.is_closing()

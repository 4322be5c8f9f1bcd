"""Whether each connection's upstream answers: a TCP connect per connection, in the
background, every ``limits.upstream_check_seconds``.

It feeds ``/readyz`` (which names the failing connection and its address) and the log: a
connection that stops answering is logged at WARNING once, and again at INFO when it
answers again.  A connect is cheap for the database (no backend is started) and needs no
credentials, so it can run often; a failed login is what a session itself reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from dbsentry.config import ConnectionConfig

__all__ = ["UpstreamHealth", "UpstreamStatus"]

log = logging.getLogger("dbsentry.upstream")

#: A probe gives up after this long (or the connection's own connect timeout, if shorter).
PROBE_TIMEOUT_SECONDS = 3.0

Probe = Callable[[str, int], Awaitable[None]]


async def tcp_probe(host: str, port: int) -> None:
    """Connect and hang up; raises OSError when the address does not answer."""
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):  # a reset on close still means the server answered
        await writer.wait_closed()


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    """What the last probe of one connection found; ``reachable`` is None before the first."""

    connection: str
    address: str
    reachable: bool | None = None
    error: str | None = None
    checked_at: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "reachable": self.reachable,
            "error": self.error,
            "checked_at": self.checked_at,
        }


def _reason(err: BaseException) -> str:
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


class UpstreamHealth:
    """The reachability of every configured connection's upstream."""

    def __init__(
        self,
        connections: Mapping[str, ConnectionConfig],
        interval: float,
        *,
        probe: Probe = tcp_probe,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self._connections = dict(connections)
        self._probe = probe
        self._clock = clock
        self._status = {
            name: UpstreamStatus(name, f"{conn.host}:{conn.port}")
            for name, conn in self._connections.items()
        }

    def reconfigure(self, connections: Mapping[str, ConnectionConfig]) -> None:
        """A SIGHUP reload's connections: added ones are probed from now on (their state
        unknown until then), removed ones no longer; a changed address starts unknown."""
        self._connections = dict(connections)
        old = self._status
        self._status = {}
        for name, conn in self._connections.items():
            address = f"{conn.host}:{conn.port}"
            before = old.get(name)
            self._status[name] = before if before is not None and before.address == address else UpstreamStatus(name, address)

    def snapshot(self) -> dict[str, UpstreamStatus]:
        return dict(self._status)

    def unreachable(self) -> list[UpstreamStatus]:
        return [s for s in self._status.values() if s.reachable is False]

    async def check_all(self) -> None:
        """Probe every connection once, all at the same time."""
        await asyncio.gather(*(self._check(name) for name in self._connections))

    async def _check(self, name: str) -> None:
        conn = self._connections[name]
        timeout = min(PROBE_TIMEOUT_SECONDS, conn.connect_timeout_seconds)
        before = self._status[name]
        try:
            async with asyncio.timeout(timeout):
                await self._probe(conn.host, conn.port)
        except (OSError, TimeoutError) as err:
            now = UpstreamStatus(name, before.address, False, _reason(err), self._clock())
            if before.reachable is not False:
                log.warning(
                    "upstream unreachable",
                    extra={
                        "fields": {
                            "connection": name,
                            "address": before.address,
                            "error": now.error,
                        }
                    },
                )
        else:
            now = UpstreamStatus(name, before.address, True, None, self._clock())
            if before.reachable is False:
                log.info(
                    "upstream reachable again",
                    extra={"fields": {"connection": name, "address": before.address}},
                )
        if self._connections.get(name) is conn:  # not removed nor changed by a reload meanwhile
            self._status[name] = now

    async def run(self, stop: asyncio.Event) -> None:
        """Probe every ``interval`` seconds until ``stop`` is set (the first round is
        :meth:`check_all`'s caller's to make)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                await self.check_all()

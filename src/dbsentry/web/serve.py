"""Running the app with uvicorn inside the proxy's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from dbsentry.tasks import spawn

log = logging.getLogger("dbsentry.web")


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the proxy owns SIGINT, SIGTERM and SIGHUP."""

    def install_signal_handlers(self) -> None:  # uvicorn before 0.29
        return None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn 0.29 and later
        yield


#: The largest request head (request line and headers) h11 buffers.
MAX_HEAD_BYTES = 16 * 1024


class _TimedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request head.

    uvicorn times out idle keep-alive connections but not a client that connects and then
    sends its headers a byte at a time (slow loris).  Here a connection waiting for a
    request's head (right after connecting, or after its previous response) is closed when
    the head is not complete within ``header_timeout`` seconds.  Bodies are timed by the
    request gate, which reads them.
    """

    header_timeout = 10.0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _watch_head(self) -> None:
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._stop_head_timer()
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_overdue)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug("HTTP request head not received in time: closing", extra={"fields": {"client": self.client}})
            self.transport.close()


def _protocol(header_timeout: float) -> type[asyncio.Protocol]:
    return type("TimedH11", (_TimedH11,), {"header_timeout": header_timeout})


def bind_http(host: str, port: int) -> socket.socket:
    """The listening socket; raises OSError (address in use ...) before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=512)
    sock.setblocking(False)
    return sock


async def serve_http(
    app: Any,
    host: str,
    port: int,
    stop_event: asyncio.Event,
    *,
    sock: socket.socket | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until ``stop_event`` is set, then shut down gracefully.

    Binding fails with OSError here, not inside uvicorn (which would exit the process).
    Pass ``sock`` (from :func:`bind_http`) to bind earlier or to learn a port chosen by the OS.
    """
    if sock is None:
        sock = bind_http(host, port)
    services = getattr(getattr(app, "state", None), "web_services", None)
    header_timeout = services.web.header_timeout_seconds if services is not None else 10.0
    config = uvicorn.Config(
        app,
        http=_protocol(header_timeout),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        log_config=None,  # keep dbsentry's logging setup
        access_log=False,
        server_header=False,
        proxy_headers=False,  # client addresses feed the login failure limiter: no spoofing
        lifespan="on",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=5,
    )
    server = _Server(config)
    where = sock.getsockname()
    log.info("listening", extra={"fields": {"http": f"{where[0]}:{where[1]}"}})
    task = spawn(server.serve(sockets=[sock]), name="http")
    stopper = spawn(stop_event.wait(), name="http-stop")
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if services is not None:
            services.stopping.set()  # ends the live feeds, which would hold shutdown up
        server.should_exit = True
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()

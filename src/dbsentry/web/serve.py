"""Running the app with uvicorn inside the proxy's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn

from dbsentry.server.tasks import spawn

log = logging.getLogger("dbsentry.web")


class _Server(uvicorn.Server):
    """uvicorn without its signal handling: the proxy owns SIGINT, SIGTERM and SIGHUP."""

    def install_signal_handlers(self) -> None:  # uvicorn before 0.29
        return None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # uvicorn 0.29 and later
        yield


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
    config = uvicorn.Config(
        app,
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
        services = getattr(getattr(app, "state", None), "web_services", None)
        if services is not None:
            services.stopping.set()  # ends the live feeds, which would hold shutdown up
        server.should_exit = True
        stopper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()

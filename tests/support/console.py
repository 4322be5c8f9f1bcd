"""The console in a real browser: an HTTP server thread for an app, and Debian's Chromium.

Playwright drives ``/usr/bin/chromium`` (``apt-get install chromium``); Playwright's own
browser download is never used.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dbsentry.config import Config
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.identity import Authenticator, TokenStore
from dbsentry.web import WebConfig, WebContext, bind_http, create_app, serve_http

from .auditlog import Indexer, fresh_store, open_log

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


class ServerThread:
    """Serves an ASGI app on a free port of 127.0.0.1 in a thread with its own event loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = bind_http("127.0.0.1", 0)
        # Accepted connections inherit TCP_NODELAY (Linux). Without it every answer on a
        # kept-alive connection waits ~40 ms for the client's delayed ACK (Nagle), which made
        # request-heavy tests (schemathesis: ~2,000 requests) mostly wait. Latency only: no
        # test here measures it.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = self.sock.getsockname()[1]
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await serve_http(self.app, "127.0.0.1", self.port, self._stop, sock=self.sock)

        asyncio.run(main())

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "the HTTP server did not stop"


@contextmanager
def serve_console(
    config: Config,
    store_path: Path,
    tokens: TokenStore,
    *,
    governor: Governor | None,
    approvals: Any | None,
) -> Iterator[str]:
    """The console and API over an audit trail in SQLite (with a writer, as the proxy
    runs it), served on a free port; yields the base URL."""
    writer = open_log(config.state_dir)
    ctx = WebContext(
        config=config,
        authenticator=Authenticator(config, tokens=tokens),
        audit_store=lambda: fresh_store(store_path, config.state_dir),
        governor=governor,
        audit_writer=writer,
        approvals=approvals,
        web=WebConfig(stream_poll_seconds=0.3),
    )
    server = ServerThread(create_app(ctx))
    server.start()
    try:
        with Indexer(store_path, config.state_dir):
            yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()
        writer.close()

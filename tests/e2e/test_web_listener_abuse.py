"""The HTTP listener against slow and oversized clients, over raw sockets: 200 clients
trickling their headers are all disconnected within a bounded time, and a 1 GiB body
without a token is answered 401 before any of it is sent."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.config import parse_config
from dbsentry.identity import Authenticator
from dbsentry.web import WebConfig, WebContext, create_app
from support.console import ServerThread

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 1.0


class Server(ServerThread):
    """The console's test server as a context manager."""

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    config = parse_config({"state_dir": str(tmp_path / "state"), "connections": {}}, tmp_path)
    auth = Authenticator(config)
    ctx = WebContext(
        config=config,
        authenticator=auth,
        audit_store=lambda: SQLiteStore(tmp_path / "audit.db"),
        web=WebConfig(header_timeout_seconds=HEADER_TIMEOUT),
    )
    with Server(create_app(ctx)) as running:
        yield running
    auth.close()


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(65536) == b""
    except ConnectionResetError:
        return True


@pytest.mark.serial
def test_trickling_headers_are_cut_off(server: Server) -> None:
    clients = [connect(server.port) for _ in range(200)]
    start = time.monotonic()
    deadline = start + 15
    request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
    open_ = list(clients)
    sent = 0
    while open_ and time.monotonic() < deadline:
        for s in list(open_):
            try:
                s.send(request[sent : sent + 1] if sent < len(request) else b"a")
            except OSError:
                open_.remove(s)  # the server closed it
        sent += 1
        time.sleep(0.2)
    elapsed = time.monotonic() - start
    assert not open_, f"{len(open_)} of 200 slow clients still open after {elapsed:.1f} s"
    for s in clients:
        s.settimeout(5)
        assert closed_by_server(s)
        s.close()
    # a well-behaved client is served meanwhile and after
    with connect(server.port) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


@pytest.mark.serial
def test_silent_client_is_closed(server: Server) -> None:
    with connect(server.port) as s:
        s.settimeout(HEADER_TIMEOUT + 10)
        start = time.monotonic()
        assert closed_by_server(s)
        assert time.monotonic() - start < HEADER_TIMEOUT + 5


def test_huge_body_without_a_token_is_refused_unread(server: Server) -> None:
    with connect(server.port) as s:
        s.sendall(
            b"POST /api/v1/policy/check HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n"
        )
        answer = s.recv(65536)  # nothing of the body was sent, and the answer is there
        assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
        assert b"connection: close" in answer.lower()
        # the server does not wait for the gigabyte: it closes the connection
        s.settimeout(10)
        while True:
            try:
                if s.recv(65536) == b"":
                    break
            except ConnectionResetError:
                break

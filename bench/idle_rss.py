#!/usr/bin/env python3
"""Memory of dbsentry per idle client connection.

Starts a dbsentry process, logs ``--clients`` raw-protocol clients in with a token (they
then stay idle), and reads the proxy's resident set size (``VmRSS`` in
``/proc/PID/status``) before and after: the difference divided by the number of clients
is the cost of one idle client connection.  A sample of the clients then runs
``SELECT 1`` to show that they are really logged in.

The upstream is either the PostgreSQL on 127.0.0.1:5432 (``--upstream real``; its
``max_connections`` bounds how many clients can hold an upstream connection of their own)
or a tiny fake server started by this script (``--upstream fake``: trust login, answers
any simple Query with one row), so that a proxy that opens one upstream connection per
client can be measured with thousands of clients too.

Usage::

    python bench/idle_rss.py --clients 2000                 # fake upstream, plaintext
    python bench/idle_rss.py --clients 2000 --tls           # clients speak TLS to dbsentry
    python bench/idle_rss.py --clients 2000 --eager         # limits.lazy_upstream: false
    python bench/idle_rss.py --clients 300 --upstream real  # the real PostgreSQL
    python bench/idle_rss.py --clients 10000 --json out.json

Linux only (``/proc``).  Needs the development environment (``pip install -e '.[test]'``).
See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

_PARAMS = {
    "application_name": "",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "default_transaction_read_only": "off",
    "in_hot_standby": "off",
    "integer_datetimes": "on",
    "IntervalStyle": "postgres",
    "is_superuser": "on",
    "server_encoding": "UTF8",
    "server_version": "15.0 (fake)",
    "session_authorization": "postgres",
    "standard_conforming_strings": "on",
    "TimeZone": "UTC",
}


def _frame(t: bytes, body: bytes = b"") -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


def _ready() -> bytes:
    return _frame(b"Z", b"I")


# ----------------------------------------------------------------- fake upstream


class _FakeBackend(asyncio.Protocol):
    """Just enough of a PostgreSQL server: trust login, one row for any simple Query."""

    def __init__(self) -> None:
        self.buf = b""
        self.started = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while True:
            if not self.started:
                if len(self.buf) < 8:
                    return
                (length,) = struct.unpack("!I", self.buf[:4])
                if len(self.buf) < length:
                    return
                (code,) = struct.unpack("!I", self.buf[4:8])
                self.buf = self.buf[length:]
                if code == 80877103:  # SSLRequest
                    self.transport.write(b"N")
                    continue
                if code == 80877102:  # CancelRequest
                    self.transport.close()
                    return
                self.started = True
                out = [_frame(b"R", struct.pack("!i", 0))]
                out += [_frame(b"S", k.encode() + b"\0" + v.encode() + b"\0") for k, v in _PARAMS.items()]
                out += [_frame(b"K", struct.pack("!I", os.getpid()) + b"fake"), _ready()]
                self.transport.write(b"".join(out))
                continue
            if len(self.buf) < 5:
                return
            t = self.buf[:1]
            (length,) = struct.unpack("!I", self.buf[1:5])
            if len(self.buf) < 1 + length:
                return
            self.buf = self.buf[1 + length :]
            if t == b"X":
                self.transport.close()
                return
            if t == b"Q":
                field = b"?column?\0" + struct.pack("!IhIhih", 0, 0, 23, 4, -1, 0)
                self.transport.write(
                    _frame(b"T", struct.pack("!h", 1) + field)
                    + _frame(b"D", struct.pack("!hi", 1, 1) + b"1")
                    + _frame(b"C", b"SELECT 1\0")
                    + _ready()
                )
            elif t == b"S":
                self.transport.write(_ready())


async def _serve_fake(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_FakeBackend, "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


# ----------------------------------------------------------------- clients


class Client:
    """One raw-protocol client: logs in with a token, then idles."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read_until_ready(self) -> list[tuple[bytes, bytes]]:
        got = []
        while True:
            head = await self.reader.readexactly(5)
            (length,) = struct.unpack("!I", head[1:])
            body = await self.reader.readexactly(length - 4)
            got.append((head[:1], body))
            if head[:1] == b"E" and b"SFATAL\0" in body:
                raise RuntimeError(body.decode(errors="replace"))
            if head[:1] == b"Z":
                return got

    async def select_one(self) -> bool:
        self.writer.write(_frame(b"Q", b"SELECT 1\0"))
        got = await self.read_until_ready()
        return any(t == b"D" for t, _ in got)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(_frame(b"X"))
            self.writer.close()


async def login(host: str, port: int, user: str, token: str, database: str, tls: ssl.SSLContext | None, app: str) -> Client:
    reader, writer = await asyncio.open_connection(host, port)
    if tls is not None:
        writer.write(struct.pack("!II", 8, 80877103))
        if await reader.readexactly(1) != b"S":
            raise RuntimeError("the proxy refused TLS")
        await writer.start_tls(tls)
    params = {"user": user, "database": database, "application_name": app}
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    writer.write(struct.pack("!II", len(body) + 8, 196608) + body)
    client = Client(reader, writer)
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!I", head[1:])
    body = await reader.readexactly(length - 4)
    if head[:1] != b"R" or struct.unpack("!i", body[:4])[0] != 3:
        raise RuntimeError(f"expected a password request, got {head[:1]!r} {body!r}")
    writer.write(_frame(b"p", token.encode() + b"\0"))
    await client.read_until_ready()
    return client


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# With --tracemalloc the proxy runs under tracemalloc and dumps a snapshot on SIGUSR1.
_TRACED = """
import asyncio, signal, sys, tracemalloc
tracemalloc.start(int(sys.argv[3]))
from dbsentry.config import load_config
from dbsentry.server.proxy import install_uvloop
from dbsentry.server.runner import run_server
n = [0]
def dump(*_):
    tracemalloc.take_snapshot().dump(f"{sys.argv[2]}/snap{n[0]}.bin")
    n[0] += 1
signal.signal(signal.SIGUSR1, dump)
install_uvloop()
asyncio.run(run_server(load_config(sys.argv[1])))
"""


async def _settle(pid: int, seconds: float = 1.0, snapshot: bool = False) -> int:
    await asyncio.sleep(seconds)
    if snapshot:
        os.kill(pid, signal.SIGUSR1)
        await asyncio.sleep(seconds + 2)
    return rss_kib(pid)


def _top(directory: Path, clients: int, limit: int = 25) -> None:
    import tracemalloc

    old = tracemalloc.Snapshot.load(str(directory / "snap0.bin"))
    new = tracemalloc.Snapshot.load(str(directory / "snap1.bin"))
    stats = new.compare_to(old, "traceback")
    total = sum(s.size_diff for s in stats)
    print(f"tracemalloc: {total / clients:.0f} bytes per client in Python allocations", file=sys.stderr)
    for s in stats[:limit]:
        print(f"{s.size_diff / clients:8.0f} B/client {s.count_diff / clients:6.2f} blocks/client", file=sys.stderr)
        for line in s.traceback.format()[-6:]:
            print("     " + line, file=sys.stderr)


async def measure(args: argparse.Namespace, proxy_pid: int, port: int, token: str) -> dict[str, Any]:
    tls = None
    if args.tls:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    user = "bench@example.com"

    async def one(i: int) -> Client:
        return await login("127.0.0.1", port, user, token, "bench", tls, f"idle-bench-{i}")

    # Warm up: the first login fills caches (parameters, catalog, imports) and the first
    # few hundred prime the allocator; they are closed before the baseline is read.
    warm = [await one(-1)]
    assert await warm[0].select_one()
    warm += await asyncio.gather(*(one(-2 - i) for i in range(min(200, args.clients))))
    for w in warm:
        w.close()
    before = await _settle(proxy_pid, 2.0, args.tracemalloc)
    sem = asyncio.Semaphore(args.concurrency)

    async def limited(i: int) -> Client:
        async with sem:
            return await one(i)

    started = time.monotonic()
    clients = await asyncio.gather(*(limited(i) for i in range(args.clients)))
    login_seconds = time.monotonic() - started
    after = await _settle(proxy_pid, 2.0, args.tracemalloc)
    sample = clients[:: max(1, len(clients) // args.sample)][: args.sample]
    ok = sum(await asyncio.gather(*(c.select_one() for c in sample)))
    for c in clients:
        c.close()
    per = (after - before) / args.clients
    return {
        "clients": args.clients,
        "tls": args.tls,
        "upstream": args.upstream,
        "lazy": not args.eager,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_idle_client": round(per, 2),
        "login_seconds": round(login_seconds, 2),
        "sample_select_1_ok": f"{ok}/{len(sample)}",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--tls", action="store_true", help="clients talk TLS to dbsentry")
    p.add_argument("--upstream", choices=["fake", "real"], default="fake")
    p.add_argument("--eager", action="store_true", help="limits.lazy_upstream: false (one upstream per client at login)")
    p.add_argument("--sample", type=int, default=20, help="clients that run SELECT 1 afterwards")
    p.add_argument("--concurrency", type=int, default=200, help="logins in flight at once")
    p.add_argument("--dbsentry-config", default="{}", help="JSON merged into the generated config")
    p.add_argument("--json", type=Path, help="write the result here too")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES", help="trace the proxy's allocations and show where the idle clients' memory went (RSS is then inflated)")
    p.add_argument("--serve-fake-upstream", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_fake_upstream:
        asyncio.run(_serve_fake(args.serve_fake_upstream))
        return 0
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="dbsentry-idle-") as tmp:
            d = Path(tmp)
            if args.upstream == "fake":
                up_port = _free_port()
                procs.append(subprocess.Popen([sys.executable, __file__, "--serve-fake-upstream", str(up_port)]))
                _wait_port(up_port, procs[-1])
                conn = {"host": "127.0.0.1", "port": up_port, "database": "test", "user": "postgres"}
            else:
                conn = {"host": "127.0.0.1", "port": 5432, "database": "test", "user": "postgres"}
            port = _free_port()
            config: dict[str, Any] = {
                "state_dir": str(d / "state"),
                "listen": {"postgres": f"127.0.0.1:{port}", "http": None},
                "tls": {"require_client_tls": args.tls},
                "connections": {"bench": {**conn, "environment": "development"}},
                # The fake upstream cannot answer the catalog queries masking makes.
                "masking": {"enabled": args.upstream == "real"},
                "limits": {"lazy_upstream": not args.eager},
            }
            config.update(json.loads(args.dbsentry_config))
            cfg = d / "dbsentry.yaml"
            cfg.write_text(yaml.safe_dump(config))
            token = subprocess.run(
                [sys.executable, "-m", "dbsentry", "token", "create", "-c", str(cfg), "--identity", "bench@example.com", "--ttl", "1h"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            with open(d / "dbsentry.log", "wb") as logf:
                serve = (
                    [sys.executable, "-c", _TRACED, str(cfg), str(d), str(args.tracemalloc)]
                    if args.tracemalloc
                    else [sys.executable, "-m", "dbsentry", "serve", "-c", str(cfg), "--log-level", "warning"]
                )
                procs.append(
                    subprocess.Popen(
                        serve,
                        stdout=logf,
                        stderr=subprocess.STDOUT,
                    )
                )
            proxy = procs[-1]
            _wait_port(port, proxy)
            try:
                with contextlib.suppress(ImportError):
                    import uvloop

                    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
                result = asyncio.run(measure(args, proxy.pid, port, token))
                if args.tracemalloc:
                    _top(d, args.clients)
            except Exception:
                print((d / "dbsentry.log").read_text()[-4000:], file=sys.stderr)
                raise
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Many idle client connections held through a proxy, with a small raw-protocol client.

Each connection does the full PostgreSQL start-up: TCP connect, optional SSLRequest and
TLS handshake, StartupMessage, authentication (trust, cleartext password or MD5), and
waits for ReadyForQuery; then all of them stay open and idle for a while, and one query
(``SELECT 1``) runs on a sample of them to show they work.  The client keeps only a
stream pair per connection (no driver objects), so that 10,000 of them stay cheap in
the benchmark process.

Opening stops early once enough logins have failed (a proxy that cannot hold the
connections fails fast, and the first error says why); the result tells how many were
opened of how many asked for.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class LoginError(Exception):
    """The server refused the login, or it broke off; ``sqlstate`` when the server said."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _startup(user: str, dbname: str) -> bytes:
    params = b"".join(
        k.encode() + b"\0" + v.encode() + b"\0"
        for k, v in (("user", user), ("database", dbname), ("application_name", "bench-idle"))
    )
    body = struct.pack("!i", 196608) + params + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


async def _read(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    header = await reader.readexactly(5)
    (length,) = struct.unpack("!i", header[1:])
    return header[:1], await reader.readexactly(length - 4)


def _error(body: bytes) -> LoginError:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode(errors="replace")
    code = fields.get(b"C")
    return LoginError(f"{code or '?'} {fields.get(b'M', 'error')}", code)


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    login_s: float


async def login(
    host: str,
    port: int,
    user: str,
    dbname: str,
    password: str | None,
    tls: ssl.SSLContext | None,
) -> Conn:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if tls is not None:
            writer.write(struct.pack("!ii", 8, 80877103))  # SSLRequest
            if await reader.readexactly(1) != b"S":
                raise LoginError("the server does not accept TLS")
            await writer.start_tls(tls)
        writer.write(_startup(user, dbname))
        while True:
            kind, body = await _read(reader)
            if kind == b"R":
                (code,) = struct.unpack("!i", body[:4])
                if code == 0:
                    continue
                if password is None:
                    raise LoginError(f"the server asks for a password (authentication {code})")
                if code == 3:  # cleartext
                    writer.write(_message(b"p", password.encode() + b"\0"))
                elif code == 5:  # md5
                    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                    writer.write(_message(b"p", b"md5" + outer.encode() + b"\0"))
                else:
                    raise LoginError(f"authentication method {code} is not supported here")
            elif kind == b"E":
                raise _error(body)
            elif kind == b"Z":
                return Conn(reader, writer, time.perf_counter() - started)
            # S (parameter status), K (backend key), N (notice): nothing to do
    except BaseException:
        writer.close()
        raise


async def query_one(conn: Conn) -> None:
    """``SELECT 1`` and its answer."""
    conn.writer.write(_message(b"Q", b"SELECT 1\0"))
    value = None
    while True:
        kind, body = await _read(conn.reader)
        if kind == b"D":
            (length,) = struct.unpack("!i", body[2:6])
            value = body[6 : 6 + length]
        elif kind == b"E":
            raise _error(body)
        elif kind == b"Z":
            break
    if value != b"1":
        raise LoginError(f"SELECT 1 returned {value!r}")


@dataclass
class IdleResult:
    requested: int
    opened: int = 0
    failed: int = 0
    stopped_early: bool = False
    open_s: float | None = None  # from the first connect to the last login
    login_ms: list[float] = field(default_factory=list)
    held_s: float | None = None
    sample: int = 0
    sample_ok: int = 0
    first_error: str | None = None
    first_sqlstate: str | None = None
    sample_error: str | None = None
    # filled in by the caller, from /proc
    rss_before_kib: int | None = None
    rss_held_kib: int | None = None
    cpu_open_s: float | None = None

    def summary(self) -> str:
        text = f"opened {self.opened} of {self.requested}"
        if self.stopped_early:
            text += f" (stopped after {self.failed} failed logins)"
        elif self.failed:
            text += f" ({self.failed} failed)"
        if self.first_error:
            text += f": {self.first_error}"
        if self.sample:
            text += f"; SELECT 1 ok on {self.sample_ok} of {self.sample}"
            if self.sample_error:
                text += f": {self.sample_error}"
        return text


def _describe(exc: BaseException) -> tuple[str, str | None]:
    if isinstance(exc, LoginError):
        return str(exc), exc.sqlstate
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the server closed the connection during login", None
    if isinstance(exc, TimeoutError):
        return "timed out", None
    return f"{type(exc).__name__}: {exc}", None


async def hold_idle(
    host: str,
    port: int,
    user: str,
    dbname: str,
    password: str | None,
    *,
    count: int,
    tls: bool = False,
    hold_s: float = 5.0,
    sample: int = 10,
    concurrency: int = 100,
    timeout_s: float = 30.0,
    on_held: Callable[[], None] | None = None,
) -> IdleResult:
    """Open ``count`` connections, hold them ``hold_s`` seconds (calling ``on_held`` at the
    end, while they are still open: the caller reads the proxy's memory then), run
    ``SELECT 1`` on ``sample`` of them, close them all."""
    ctx: ssl.SSLContext | None = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    result = IdleResult(count)
    give_up_after = max(20, count // 100)
    conns: list[Conn] = []
    gate = asyncio.Semaphore(concurrency)
    stop = False

    async def one() -> None:
        nonlocal stop
        async with gate:
            if stop:
                return
            try:
                async with asyncio.timeout(timeout_s):
                    conn = await login(host, port, user, dbname, password, ctx)
            except (OSError, LoginError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError) as exc:
                result.failed += 1
                if result.first_error is None:
                    result.first_error, result.first_sqlstate = _describe(exc)
                if result.failed >= give_up_after:
                    stop = True
                return
            conns.append(conn)
            result.login_ms.append(conn.login_s * 1000)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(one() for _ in range(count)))
        result.open_s = time.perf_counter() - started
        result.opened = len(conns)
        result.stopped_early = stop
        held = time.perf_counter()
        await asyncio.sleep(hold_s)
        if on_held is not None:
            on_held()
        result.held_s = time.perf_counter() - held
        if conns and sample:
            step = max(1, len(conns) // sample)
            chosen = conns[::step][:sample]
            result.sample = len(chosen)
            outcomes = await asyncio.gather(
                *(asyncio.wait_for(query_one(c), timeout_s) for c in chosen), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    if result.sample_error is None:
                        result.sample_error = _describe(outcome)[0]
                else:
                    result.sample_ok += 1
    finally:
        for c in conns:
            if not c.writer.is_closing():
                c.writer.write(_message(b"X", b""))
                c.writer.close()
        await asyncio.gather(*(c.writer.wait_closed() for c in conns), return_exceptions=True)
    return result

"""The thin asyncio shell of the MySQL/MariaDB listener (``listen.mysql``).

No protocol rule lives here: what the shell learns (bytes read, a timer, the answer to a
command) goes into a :class:`~dbsentry.engines.mysql.session.session.Session` as an event,
and the commands it returns are carried out in order (:meth:`MySQLClient._execute`, an
exhaustive match). Sockets, TLS, timers, the audit log, the approvals service and KILL
routing are here.

With ``workers: N`` every worker serves the listener (``SO_REUSEPORT``, as PostgreSQL's);
the connection ids it gives out name its worker and, with a control plane, its node's slot
(``workerproto.new_session_id``, as PostgreSQL backend pids do), so a ``KILL`` that reaches
another worker or node is forwarded to the owner over the workers' sockets or the
inter-node channel, which checks and kills as for its own clients and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, assert_never, cast

from dbsentry import metrics
from dbsentry.approvals import Approvals, ApprovalStoreError
from dbsentry.approvals.service import Gate
from dbsentry.audit.appender import AuditLog, AuditUnavailable, resolves
from dbsentry.audit.redaction import LiteralRedactor, redactor_from_config
from dbsentry.config import Config, ConfigError, ConnectionConfig
from dbsentry.engines.mysql.session import commands as c
from dbsentry.engines.mysql.session.events import (
    ApprovalAnswered,
    AuditFailed,
    ClientClosed,
    ClientData,
    ClientTLSStarted,
    Event,
    KillAnswered,
    PasswordVerified,
    StartupTimedOut,
    UpstreamClosed,
    UpstreamData,
    UpstreamFailed,
    UpstreamReady,
)
from dbsentry.engines.mysql.session.governance import MySQLGovernor
from dbsentry.engines.mysql.session.literals import MYSQL_LITERALS
from dbsentry.engines.mysql.session.session import ClientInfo, Session
from dbsentry.engines.mysql.session.upstream import LoginStep, UpstreamLogin
from dbsentry.engines.mysql.wire import constants as k
from dbsentry.engines.mysql.wire.generic import ERR, decode_err
from dbsentry.engines.mysql.wire.handshake import Handshake, decode_server_greeting
from dbsentry.engines.mysql.wire.packets import PacketSplitter, encode_packet
from dbsentry.engines.mysql.wire.results import ResultReader, TextRow
from dbsentry.errors import ProtocolError
from dbsentry.identity.model import Identity
from dbsentry.identity.ratelimit import login
from dbsentry.policy.engine import Policy
from dbsentry.server import tls
from dbsentry.server.internode import NodeLink
from dbsentry.server.proxy import Authenticator, drain
from dbsentry.server.reading import TURN_BYTES, UpstreamReading, client_gone
from dbsentry.server.workerproto import (
    KILL_ANSWER_SECONDS,
    WorkerChannel,
    WorkerInfo,
    new_session_id,
    owner_of,
)
from dbsentry.tasks import spawn

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

    from dbsentry.server.catalogs import CatalogLoader

log = logging.getLogger("dbsentry.mysql")

FALLBACK_VERSION = "8.0.0-dbsentry"
_READ = 65536


def load_or_create_rsa_key(path: Path) -> RSAPrivateKey:
    """The proxy's RSA key for caching_sha2_password on plaintext (clients that ask for it
    encrypt the token with it); made on first use, mode 0600."""
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} is not an RSA private key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return key


async def _connect(
    conn: ConnectionConfig, name: str, login_: UpstreamLogin
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, UpstreamReady]:
    """Connect to a connection's server and log in; raises :class:`UpstreamError`."""
    where = f'the upstream of connection "{name}"'
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(conn.host, conn.port), conn.connect_timeout_seconds)
    except (OSError, TimeoutError) as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise UpstreamError(2003, "08001", f"dbsentry: could not connect to {where}: {reason}") from None
    try:
        ready = await asyncio.wait_for(_log_in(conn, reader, writer, login_), conn.connect_timeout_seconds)
    except TimeoutError:
        writer.close()
        raise UpstreamError(2013, "08001", f"dbsentry: {where} did not complete login within {conn.connect_timeout_seconds:g}s") from None
    except UpstreamError:
        writer.close()
        raise
    except (OSError, ssl.SSLError, ConnectionError) as err:
        writer.close()
        raise UpstreamError(2013, "08001", f"dbsentry: {where}: {err}") from None
    return reader, writer, ready


class UpstreamError(Exception):
    def __init__(self, code: int, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.code, self.sqlstate, self.message = code, sqlstate, message


async def _log_in(conn: ConnectionConfig, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, login_: UpstreamLogin) -> UpstreamReady:
    while True:
        data = await reader.read(_READ)
        if not data:
            raise UpstreamError(2013, "08S01", f"dbsentry: {login_.where} closed the connection during login")
        step: LoginStep = login_.receive(data)
        while True:
            if step.send:
                writer.write(step.send)
            if step.refused is not None:
                r = step.refused
                raise UpstreamError(r.code, r.sqlstate, r.message)
            if step.ready is not None:
                return step.ready
            if not step.start_tls:
                break
            ctx = tls.upstream_context(conn)
            assert ctx is not None
            await writer.drain()
            await writer.start_tls(ctx, server_hostname=conn.host if conn.upstream_tls == "verify-full" else None)
            step = login_.tls_started()


def _new_login(conn: ConnectionConfig, name: str, caps: int, charset: int, attributes: tuple[tuple[str, str], ...] = ()) -> UpstreamLogin:
    return UpstreamLogin(
        conn.user,
        conn.resolve_password(),
        conn.database,
        caps,
        charset,
        attributes,
        tls=conn.upstream_tls != "disable",
        where=f'the upstream of connection "{name}"',
    )


class SideQueryError(Exception):
    """A query on a side connection failed (the server's error, or the connection's)."""


#: How long one query of a side connection may take (the catalog's; samples have their own
#: statement time limit).
SIDE_QUERY_SECONDS = 60.0


@contextlib.asynccontextmanager
async def side_connection(conn: ConnectionConfig, name: str) -> AsyncIterator[Callable[[str], Awaitable[list[tuple[Any, ...]]]]]:
    """A side connection to a MySQL connection's server with its own credentials (the
    shell's login, as for KILL), as a query runner: ``await run(sql)`` gives the rows of
    one statement (text as ``str``, binary-collation values as ``bytes``, NULL as None)
    and raises :class:`SideQueryError` on a server error. For the catalog reader
    (``engines/mysql/catalog``)."""
    try:
        login_ = _new_login(conn, name, k.CLIENT_PROTOCOL_41 | k.CLIENT_MULTI_RESULTS, 45, (("program_name", "dbsentry-catalog"),))
        reader, writer, ready = await _connect(conn, name, login_)
    except UpstreamError as err:
        raise SideQueryError(err.message) from None
    except ConfigError as err:
        raise SideQueryError(str(err)) from None
    caps = ready.capabilities
    splitter = PacketSplitter(1 << 30, first_seq=1)

    async def run(sql: str) -> list[tuple[Any, ...]]:
        splitter.expect(1)
        writer.write(encode_packet(b"\x03" + sql.encode("utf-8"), 0)[0])
        answer = ResultReader(caps)
        rows: list[tuple[Any, ...]] = []
        error: str | None = None
        try:
            async with asyncio.timeout(SIDE_QUERY_SECONDS):
                while not answer.done:
                    data = await reader.read(_READ)
                    if not data:
                        raise SideQueryError("the server closed the side connection")
                    for packet in splitter.feed(data):
                        ev = answer.feed(packet.payload)
                        if isinstance(ev, ERR):
                            error = f"{ev.code} ({ev.sqlstate}): {ev.message}"
                        elif isinstance(ev, TextRow):
                            binary = [col.charset == 63 for col in answer.columns]
                            rows.append(
                                tuple(
                                    v if v is None or binary[i] else v.decode("utf-8", "replace")
                                    for i, v in enumerate(ev.values)
                                )
                            )
        except TimeoutError:
            raise SideQueryError(f"the query took longer than {SIDE_QUERY_SECONDS:g}s") from None
        except ProtocolError as err:
            raise SideQueryError(f"the server's answer cannot be read: {err}") from None
        if error is not None:
            raise SideQueryError(error)
        return rows

    try:
        yield run
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.write(encode_packet(b"\x01", 0)[0])  # COM_QUIT
        writer.close()


class MySQLProxyServer:
    """Listens for MySQL/MariaDB clients and runs one session per connection."""

    def __init__(
        self,
        config: Config,
        authenticator: Authenticator,
        governor: MySQLGovernor | None = None,
        audit_writer: AuditLog | None = None,
        approvals: Approvals | None = None,
        redactor: LiteralRedactor | None = None,
        *,
        auth_needs_io: bool = False,
        catalogs: CatalogLoader | None = None,
        worker: WorkerInfo | None = None,
        channel: WorkerChannel | None = None,
        node: NodeLink | None = None,
    ) -> None:
        self.config = config
        # Each connection's classified catalog (shared with the PostgreSQL listener);
        # masking applies when masking.enabled.
        self.catalogs = catalogs
        self.authenticator = authenticator
        self.governor = governor
        self.audit_writer = audit_writer
        self.approvals = approvals
        self.redactor = redactor
        self.auth_needs_io = auth_needs_io
        self.server_ssl = tls.server_context(config)
        self.rsa_key: RSAPrivateKey | None = None
        self.server_version = FALLBACK_VERSION
        self.sessions: dict[int, MySQLClient] = {}
        self.drained: asyncio.Event | None = None  # set when the last session ends (close)
        self._server: asyncio.Server | None = None
        # workers: N: the listener is shared with the node's other workers; KILLs of their
        # sessions go over the workers' channel, of other nodes' over the inter-node one
        # (both the PostgreSQL listener's, which answer this listener's messages too).
        self.worker = worker
        self.channel = channel
        self.node = node
        if channel is not None:
            channel.on("mysql-kill", self._kill_message)
        if node is not None:
            node.channel.on("mysql-kill", self._kill_from_node)

    async def start(self) -> tuple[str, int]:
        addr = self.config.listen.mysql_addr
        assert addr is not None
        if not self.config.tls.require_client_tls:
            self.rsa_key = load_or_create_rsa_key(self.config.state_dir / "tls" / "mysql-rsa.key")
        self.server_version = await self._probe_version()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: MySQLClient(self), addr[0], addr[1], reuse_address=True, backlog=2048, reuse_port=self.worker is not None
        )
        metrics.set_listener_up("mysql", True)
        sock = self._server.sockets[0].getsockname()
        log.info("listening", extra={"fields": {"mysql": f"{sock[0]}:{sock[1]}", "server_version": self.server_version}})
        return sock[0], sock[1]

    async def _probe_version(self) -> str:
        """The version the MySQL connections' servers give (the first that answers, in
        configuration order): clients read the greeting's version before they say which
        connection they want. All are asked at once, for two seconds at most."""
        conns = [conn for conn in self.config.connections.values() if conn.engine == "mysql"]
        if not conns:
            return FALLBACK_VERSION
        results = await asyncio.gather(*(self._greeting_version(conn) for conn in conns))
        return next((v for v in results if v is not None), FALLBACK_VERSION)

    @staticmethod
    async def _greeting_version(conn: ConnectionConfig) -> str | None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(conn.host, conn.port), 2)
        except (OSError, TimeoutError):
            return None
        try:
            splitter = PacketSplitter(1 << 16)
            async with asyncio.timeout(2):
                while True:
                    data = await reader.read(_READ)
                    if not data:
                        return None
                    packets = splitter.feed(data)
                    if packets:
                        greeting = decode_server_greeting(packets[0].payload)
                        return greeting.server_version if isinstance(greeting, Handshake) else None
        except (OSError, TimeoutError, ProtocolError):
            return None
        finally:
            writer.close()

    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def stop_listening(self) -> None:
        """Accept no new client (the sessions open go on)."""
        if self._server is not None:
            self._server.close()
            metrics.set_listener_up("mysql", False)

    async def close(self, drain_seconds: float = 0.0) -> None:
        """Stop listening; with ``drain_seconds``, let open sessions end by themselves for
        up to that long (as the PostgreSQL listener's ``close``) before closing the rest."""
        self.stop_listening()
        await drain(self, drain_seconds, "MySQL sessions")
        for client in list(self.sessions.values()):
            client.abort()
        if self._server is not None:
            await self._server.wait_closed()

    def new_id(self) -> int:
        """A connection id for a new client: the proxy's own, never an upstream's; it names
        this worker and node (``workerproto.new_session_id``), for KILL routing."""
        return new_session_id(
            self.node.slot if self.node is not None else None, self.worker.index if self.worker is not None else None, self.sessions
        )

    async def kill(self, cmd: c.Kill) -> str | None:
        """KILL [QUERY] with a proxy connection id: done here when this worker holds that
        session, else asked of the worker (or node) that does; the error for the client, or
        None when done."""
        owner = owner_of(cmd.target, self.node.slot if self.node is not None else None, self.worker)
        if owner.here:
            return await self.kill_here(cmd)
        fields = {"target": cmd.target, "query_only": cmd.query_only, "identity": cmd.identity, "reviewer": cmd.reviewer}
        index = owner.worker or 0
        try:
            async with asyncio.timeout(KILL_ANSWER_SECONDS):
                if owner.slot is None:
                    assert self.channel is not None  # owner_of gives a worker only with workers
                    log.debug("KILL forwarded to another worker", extra={"fields": {"worker": index}})
                    answer = await self.channel.ask(index, "mysql-kill", **fields)
                else:
                    node = self.node
                    assert node is not None  # owner_of gives a slot only with a control plane
                    address = node.address_of(owner.slot, index)
                    if address is None:  # no live node holds that slot
                        return _unknown_thread(cmd.target)
                    log.info("KILL forwarded to another node", extra={"fields": {"slot": owner.slot, "worker": index}})
                    answer = await node.channel.ask(address, "mysql-kill", **fields)
        except (OSError, ValueError) as err:
            log.warning("the worker holding a MySQL session did not answer a KILL", extra={"fields": {"slot": owner.slot, "worker": index, "error": str(err)}})
            return f"dbsentry: the process holding thread {cmd.target} did not answer; try again"
        if isinstance(answer, dict) and "error" in answer and (answer["error"] is None or isinstance(answer["error"], str)):
            return answer["error"]
        return f"dbsentry: the process holding thread {cmd.target} gave no answer to read; try again"

    async def _kill_message(self, body: dict[str, Any]) -> dict[str, Any]:
        """``mysql-kill`` from another worker of this node."""
        return await self._kill_forwarded(body, "another worker")

    async def _kill_from_node(self, body: dict[str, Any]) -> dict[str, Any]:
        """``mysql-kill`` another node forwarded."""
        return await self._kill_forwarded(body, "another node")

    async def _kill_forwarded(self, body: dict[str, Any], source: str) -> dict[str, Any]:
        """A KILL forwarded here: done only for this worker's own sessions (never passed on
        again, so no two processes can bounce one); the answer is the asking client's."""
        cmd = _kill_of(body)
        if cmd is None:
            log.warning(f"malformed KILL from {source} ignored")
            return {"error": "dbsentry: malformed KILL"}
        log.info(f"KILL from {source}", extra={"fields": {"target": cmd.target, "query_only": cmd.query_only}})
        if not owner_of(cmd.target, self.node.slot if self.node is not None else None, self.worker).here:
            return {"error": _unknown_thread(cmd.target)}
        return {"error": await self.kill_here(cmd)}

    async def kill_here(self, cmd: c.Kill) -> str | None:
        """KILL [QUERY] of a session of this worker: routed to that session's upstream
        connection id, on a side connection with the connection's credentials."""
        target = self.sessions.get(cmd.target)
        if target is None:
            return _unknown_thread(cmd.target)
        session = target.session
        if session.identity is None or (session.identity.name != cmd.identity and not cmd.reviewer):
            return f"dbsentry: you are not owner of thread {cmd.target} (KILL works on your own sessions)"
        if target.approval_wait is not None and not target.approval_wait.done():
            target.approval_wait.set_result(None)  # its statement waits for approval: withdrawn
            return None
        conn, name, upstream_id = session.connection, session.connection_name, session.upstream_id
        if conn is None or name is None or upstream_id is None:
            if not cmd.query_only:
                target.abort()
            return None  # nothing runs upstream
        return await self.kill_upstream(conn, name, upstream_id, cmd.query_only)

    def session_rows(self) -> list[dict[str, Any]]:
        """This worker's live MySQL sessions as the console shows them, each with its worker."""
        from dbsentry.web.views import live_session_row

        index = self.worker.index if self.worker is not None else 0
        return [{**row, "worker": index} for client in list(self.sessions.values()) if (row := live_session_row(client)) is not None]

    async def kill_upstream(self, conn: ConnectionConfig, name: str, upstream_id: int, query_only: bool) -> str | None:
        """``KILL [QUERY]`` of an upstream connection id, on a side connection."""
        what = "query" if query_only else "connection"
        try:
            login_ = _new_login(conn, name, k.CLIENT_PROTOCOL_41, 45)
            reader, writer, _ = await _connect(conn, name, login_)
        except (UpstreamError, ConfigError, OSError) as err:
            return f"dbsentry: cannot reach the upstream to kill the {what}: {err}"
        try:
            sql = f"KILL {'QUERY' if query_only else 'CONNECTION'} {upstream_id}".encode()
            writer.write(encode_packet(b"\x03" + sql, 0)[0])
            splitter = PacketSplitter(1 << 20, first_seq=1)
            while True:
                data = await asyncio.wait_for(reader.read(_READ), 10)
                if not data:
                    return f"dbsentry: the upstream closed the connection before the {what} was killed"
                packets = splitter.feed(data)
                if packets:
                    payload = packets[0].payload
                    if payload[:1] == b"\xff":
                        refused = decode_err(payload)
                        return f"dbsentry: the upstream refused to kill the {what}: {refused.message}"
                    return None
        except (OSError, TimeoutError, ProtocolError) as err:
            return f"dbsentry: killing the {what} failed: {err}"
        finally:
            writer.close()


def _unknown_thread(target: int) -> str:
    return f"dbsentry: unknown thread id: {target}"


def _kill_of(body: dict[str, Any]) -> c.Kill | None:
    """The ``Kill`` a forwarded ``mysql-kill`` message carries (None: malformed)."""
    target, query_only, identity, reviewer = (body.get(f) for f in ("target", "query_only", "identity", "reviewer"))
    if not isinstance(target, int) or isinstance(target, bool) or not isinstance(identity, str):
        return None
    if not isinstance(query_only, bool) or not isinstance(reviewer, bool):
        return None
    return c.Kill(target, query_only, identity, reviewer)


class _ServerTLS:
    """TLS towards a client over memory buffers: a MySQL client sends its TLS handshake
    right after the SSLRequest, without waiting for an answer, so the first TLS bytes may
    come in the same read as the SSLRequest; they are fed here, which a transport's
    ``start_tls`` cannot do."""

    __slots__ = ("incoming", "obj", "outgoing", "ready")

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.ready = False

    def feed(self, data: bytes) -> tuple[bytes, bool, bytes]:
        """(plaintext read, the handshake just completed, bytes to send)."""
        self.incoming.write(data)
        started = False
        if not self.ready:
            try:
                self.obj.do_handshake()
                self.ready = started = True
            except ssl.SSLWantReadError:
                return b"", False, self.outgoing.read()
        chunks = []
        while True:
            try:
                chunk = self.obj.read(_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), started, self.outgoing.read()

    def wrap(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self.outgoing.read()


class _Upstream(asyncio.Protocol):
    """The upstream connection of a logged-in session."""

    def __init__(self, client: MySQLClient) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.upstream_data(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.client.closed:
            self.client.feed(UpstreamClosed())

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()


class MySQLClient(asyncio.Protocol):
    """One client socket and, once logged in, its upstream connection."""

    def __init__(self, proxy: MySQLProxyServer) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.address = "?"
        self.closed = False
        self.upstream: asyncio.Transport | None = None
        self._reading = UpstreamReading()
        self.approval_wait: asyncio.Future[None] | None = None  # set while a statement waits for approval
        self._keep: asyncio.StreamWriter | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tls: _ServerTLS | None = None
        self.session: Session

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        proxy = self.proxy
        cid = proxy.new_id()
        self.session = Session(
            proxy.config,
            ClientInfo(self.address),
            cid,
            governor=proxy.governor,
            audit_config=proxy.config.audit if proxy.audit_writer is not None else None,
            redactor=proxy.redactor,
            grants=proxy.approvals,
            approvals=proxy.approvals is not None,
            rsa_key=proxy.rsa_key,
            masking=proxy.catalogs.service if proxy.catalogs is not None and proxy.config.masking.enabled else None,
            server_version=proxy.server_version,
        )
        proxy.sessions[cid] = self
        self.transport.write(self.session.greeting())
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(proxy.config.limits.startup_timeout_seconds, self._startup_timeout)

    def data_received(self, data: bytes) -> None:
        if self._tls is not None:
            self._tls_data(data)
            return
        self.feed(ClientData(data))

    def _tls_data(self, data: bytes) -> None:
        tls_ = self._tls
        assert tls_ is not None and self.transport is not None
        try:
            plain, started, out = tls_.feed(data)
        except ssl.SSLError as err:
            log.info("client TLS failed", extra={"fields": {"client": self.address, "error": str(err)}})
            self.abort()
            return
        if out:
            self.transport.write(out)
        if started:
            self.feed(ClientTLSStarted(tls_.obj.version()))
        if plain and not self.closed:
            self.feed(ClientData(plain))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.closed = True
        if self.proxy.sessions.get(self.session.proxy_id) is self:
            del self.proxy.sessions[self.session.proxy_id]
            if not self.proxy.sessions and self.proxy.drained is not None:
                self.proxy.drained.set()
        self.feed(ClientClosed())

    def pause_writing(self) -> None:
        self._reading.client_slow(self.upstream, True)  # the client reads slowly: so does the proxy

    def resume_writing(self) -> None:
        self._reading.client_slow(self.upstream, False)

    def upstream_data(self, data: bytes) -> None:
        """The upstream's bytes, a large read at most per turn of the event loop
        (server/reading.py). A client already gone (a write to it failed; its
        ``connection_lost`` comes on a later turn) ends the session now: the rest of the
        result is not read, relayed to nobody and masked for nothing."""
        if self.closed or client_gone(self.transport):
            self.feed(ClientClosed())  # the session cancels the statement and closes the upstream
            return
        self.feed(UpstreamData(data))
        up = self.upstream
        if len(data) >= TURN_BYTES and up is not None:
            self._reading.large_read(up)

    def _startup_timeout(self) -> None:
        self._timer = None
        self.feed(StartupTimedOut())

    # ------------------------------------------------------------------ commands

    def feed(self, event: Event) -> None:
        """Hand ``event`` to the session and carry out its commands. A failure inside the
        session is a bug: that connection alone is dropped (fail closed), the others go on."""
        try:
            commands = self.session.handle(event)
        except Exception:
            log.exception("MySQL session failed; closing its connection", extra={"fields": {"session": self.session.session_id, "client": self.address}})
            self.closed = True
            self.abort()
            return
        self.run(commands)

    def run(self, commands: list[c.Command]) -> None:
        for cmd in commands:
            self._execute(cmd)

    def _execute(self, cmd: c.Command) -> None:
        """Carry out one command (exhaustive: mypy checks ``assert_never``)."""
        match cmd:
            case c.SendClient(data=data):
                if not self.closed and self.transport is not None and not self.transport.is_closing():
                    self.transport.write(self._tls.wrap(data) if self._tls is not None else data)
            case c.SendUpstream(data=data):
                up = self.upstream
                if up is not None and not up.is_closing():
                    up.write(data)
            case c.StartClientTLS(early=early):
                self._tls = _ServerTLS(self.proxy.server_ssl)
                if early:
                    self._tls_data(early)
            case c.VerifyPassword():
                self._verify(cmd)
            case c.LoginComplete():
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            case c.OpenUpstream():
                spawn(self._open_upstream(cmd), name="mysql-upstream")
            case c.CloseClient():
                if self.transport is not None and not self.transport.is_closing():
                    if self._tls is not None and self._tls.ready:
                        with contextlib.suppress(ssl.SSLError):
                            self._tls.obj.unwrap()
                        self.transport.write(self._tls.outgoing.read())
                    self.transport.close()
            case c.CloseUpstream():
                self._close_upstream()
            case c.Audit(record=record):
                metrics.observe(record, self.session.connection_name)
                writer = self.proxy.audit_writer
                if writer is not None:
                    try:
                        writer.append_soon(record)
                    except AuditUnavailable as err:
                        log.error("audit record dropped", extra={"fields": {"error": str(err), "type": record.TYPE}})
            case c.AuditGate():
                self._gate(cmd)
            case c.AskApproval():
                spawn(self._approve(cmd), name="mysql-approval")
            case c.Kill():
                spawn(self._kill(cmd), name="mysql-kill")
            case c.CancelUpstream():
                s = self.session
                if s.connection is not None and s.connection_name is not None and s.upstream_id is not None:
                    spawn(self.proxy.kill_upstream(s.connection, s.connection_name, s.upstream_id, True), name="mysql-cancel")
            case c.SchemaChanged(connection=name):
                if self.proxy.catalogs is not None:
                    self.proxy.catalogs.schema_changed(name)
            case c.InheritClasses(connection=name, copies=copies):
                if self.proxy.catalogs is not None:
                    self.proxy.catalogs.service.inherit(name, copies)
            case c.Log():
                log.log(cmd.level, cmd.event, extra={"fields": {"session": self.session.session_id, **cmd.fields}})
                if cmd.event == "session.refused" and str(cmd.fields.get("sqlstate", "")).startswith("28"):
                    metrics.login_failed("password")
            case _:
                assert_never(cmd)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._close_upstream()

    def _close_upstream(self) -> None:
        up = self.upstream
        if up is not None and not up.is_closing():
            up.write(encode_packet(b"\x01", 0)[0])  # COM_QUIT
            up.close()
        self.upstream = None
        self._keep = None

    def _gate(self, cmd: c.AuditGate) -> None:
        for record in cmd.records:
            metrics.observe(record, self.session.connection_name)
        writer = self.proxy.audit_writer
        if writer is None:
            self.run(cmd.then)
            return
        fut: asyncio.Future[AuditUnavailable | None] = asyncio.get_running_loop().create_future()
        writer.submit(cmd.records, resolves(fut), durable=cmd.durable)

        def done(f: asyncio.Future[AuditUnavailable | None]) -> None:
            if self.closed:
                return
            error = f.result()
            if error is None:
                self.run(cmd.then)
            else:
                log.error("statement refused: audit unavailable", extra={"fields": {"error": str(error)}})
                self.feed(AuditFailed(str(error)))

        fut.add_done_callback(done)

    def _verify(self, cmd: c.VerifyPassword) -> None:
        auth = self.proxy.authenticator
        source = self.address.rsplit(":", 1)[0]
        if not self.proxy.auth_needs_io and self.proxy.approvals is None:
            self.feed(PasswordVerified(login(auth.authenticate, cmd.user, cmd.password, source)))
            return

        async def verify() -> None:
            loop = asyncio.get_running_loop()
            identity = await loop.run_in_executor(None, login, auth.authenticate, cmd.user, cmd.password, source)
            svc = self.proxy.approvals
            if isinstance(identity, Identity) and svc is not None:
                try:
                    await loop.run_in_executor(None, svc.load_grants, identity.name)
                except (ApprovalStoreError, OSError) as err:
                    log.error("cannot read access grants", extra={"fields": {"error": str(err)}})
            if not self.closed:
                self.feed(PasswordVerified(identity))

        spawn(verify(), name="mysql-verify")

    async def _open_upstream(self, cmd: c.OpenUpstream) -> None:
        conn = self.session.config.connections[cmd.connection]  # as it was when the session started
        try:
            login_ = _new_login(conn, cmd.connection, cmd.capabilities, cmd.charset, cmd.attributes)
            _, writer, ready = await _connect(conn, cmd.connection, login_)
        except (ConfigError, OSError) as err:
            self.feed(UpstreamFailed(2003, "08004", f"dbsentry: connection {cmd.connection!r} is misconfigured: {err}"))
            return
        except UpstreamError as err:
            log.warning(
                "upstream failed",
                extra={"fields": {"session": self.session.session_id, "connection": cmd.connection, "address": f"{conn.host}:{conn.port}", "error": err.message, "server": login_.detail}},
            )
            self.feed(UpstreamFailed(err.code, err.sqlstate, err.message))
            return
        catalogs = self.proxy.catalogs
        if catalogs is not None:
            # Masking must know the schema before the first statement: fail closed
            # otherwise (read on the first session, then every masking.refresh_seconds).
            from dbsentry.server.catalogs import CatalogError

            try:
                await catalogs.ensure(cmd.connection)
            except CatalogError as err:
                if self.proxy.config.masking.enabled:
                    writer.close()
                    log.error("cannot read the catalog", extra={"fields": {"connection": cmd.connection, "error": str(err)}})
                    self.feed(
                        UpstreamFailed(
                            2003,
                            "08004",
                            f'dbsentry: cannot read the schema of connection "{cmd.connection}" to classify sensitive data: {err}',
                        )
                    )
                    return
                log.warning("cannot read the catalog", extra={"fields": {"connection": cmd.connection, "error": str(err)}})
        if self.closed:
            writer.close()
            return
        # From here on the upstream's bytes go straight to the session (a protocol, not a
        # stream: no task switch per read). Nothing is buffered: the server sends nothing
        # after its login OK until it gets a command.
        transport = cast(asyncio.Transport, writer.transport)
        transport.set_protocol(_Upstream(self))
        self.upstream = transport
        self._keep = writer  # a StreamWriter closes its transport when collected
        self.feed(ready)

    async def _approve(self, cmd: c.AskApproval) -> None:
        svc = self.proxy.approvals
        session = self.session
        if svc is None or session.identity is None or session.connection_name is None or session.connection is None:
            self.feed(ApprovalAnswered(None, "dbsentry: this statement requires approval"))
            return
        loop = asyncio.get_running_loop()
        try:
            gate = await loop.run_in_executor(
                None,
                lambda: svc.statement_gate(
                    identity=session.identity,  # type: ignore[arg-type]
                    connection=session.connection_name or "",
                    environment=session.connection.environment if session.connection else None,
                    sql=cmd.sql,
                    params=cmd.params,
                    decision=cmd.decision,
                    facts=cmd.facts,
                    session_id=session.session_id,
                    display_sql=cmd.display_sql,
                    key=cmd.key,
                    client_mode=cmd.client_mode,
                ),
            )
        except (ApprovalStoreError, OSError) as err:
            log.error("approvals unavailable", extra={"fields": {"error": str(err)}})
            answer = ApprovalAnswered(None, "dbsentry: approvals are unavailable, so the statement was not run")
        else:
            if gate.outcome == "run":
                answer = ApprovalAnswered(gate.request.id)
            elif gate.outcome == "wait":
                answer = await self._wait_for_approval(svc, gate, cmd.key)
            else:
                answer = ApprovalAnswered(None, gate.message)
        if not self.closed:
            self.feed(answer)

    async def _wait_for_approval(self, svc: Approvals, gate: Gate, key: str) -> ApprovalAnswered:
        """Wait mode: the statement waits (the client sees it running) until a reviewer
        decides, ``approvals.wait_timeout_seconds`` pass, or a KILL QUERY withdraws it."""
        loop = asyncio.get_running_loop()
        request = gate.request
        session = self.session
        who = session.identity.name if session.identity is not None else None
        log.info("statement waits for approval", extra={"fields": {"session": session.session_id, "request": request.id}})
        fut = svc.watch(request.id)
        watched = asyncio.wrap_future(fut)
        self.approval_wait = loop.create_future()
        try:
            waits: set[asyncio.Future[Any]] = {watched, self.approval_wait}
            done, _ = await asyncio.wait(waits, timeout=svc.config.wait_timeout_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled = self.approval_wait.done()
            self.approval_wait = None
        try:
            if watched not in done:
                svc.unwatch(request.id, fut)
                await loop.run_in_executor(None, svc.withdraw, request.id, who)
                if cancelled:
                    return ApprovalAnswered(None, f"dbsentry: approval request {request.id} withdrawn: the statement was killed")
                return ApprovalAnswered(None, svc.timeout_message(request))
            decided = watched.result()
            if decided.status != "approved":
                return ApprovalAnswered(None, svc.outcome_message(decided))
            assert session.identity is not None and session.connection_name is not None
            used = await loop.run_in_executor(None, svc.consume_all, session.identity.name, session.connection_name, [key])
        except (ApprovalStoreError, OSError) as err:
            log.error("approvals unavailable", extra={"fields": {"error": str(err)}})
            return ApprovalAnswered(None, "dbsentry: approvals are unavailable, so the statement was not run")
        if not used:
            return ApprovalAnswered(None, "dbsentry: the approval this statement needs was used meanwhile; send it again")
        return ApprovalAnswered(used[0].id)

    async def _kill(self, cmd: c.Kill) -> None:
        error = await self.proxy.kill(cmd)
        if not self.closed:
            self.feed(KillAnswered(error))


async def start_mysql_listener(
    config: Config,
    authenticator: Authenticator,
    policy: Callable[[], Policy] | None,
    writer: AuditLog | None,
    approvals: Approvals | None,
    *,
    auth_needs_io: bool = False,
    catalogs: CatalogLoader | None = None,
    worker: WorkerInfo | None = None,
    channel: WorkerChannel | None = None,
    node: NodeLink | None = None,
) -> MySQLProxyServer | None:
    """The MySQL listener when ``listen.mysql`` is set (None otherwise), started.
    ``policy``: the current policy (None: passthrough, nothing checked or audited);
    ``worker``, ``channel``, ``node``: this worker's, with workers and a control plane
    (the PostgreSQL listener's channels, which then carry KILLs too)."""
    if config.listen.mysql is None:
        return None
    governor = MySQLGovernor(policy) if policy is not None else None
    # Constants compared with (or stored in) classified columns are redacted by the catalog.
    views = catalogs.service.current if catalogs is not None else None
    redactor = redactor_from_config(config.audit, config.state_dir, views, MYSQL_LITERALS) if governor is not None else None
    server = MySQLProxyServer(
        config,
        authenticator,
        governor,
        writer if governor is not None else None,
        approvals,
        redactor,
        auth_needs_io=auth_needs_io,
        catalogs=catalogs,
        worker=worker,
        channel=channel,
        node=node,
    )
    await server.start()
    return server


__all__ = ["MySQLClient", "MySQLProxyServer", "start_mysql_listener"]

"""The thin asyncio shell: sockets, TLS and timers around the session state machines.

No protocol rule lives here.  What the shell learns (bytes read, a timer fired, the answer
to a command) goes into a :class:`~dbsentry.engines.postgres.session.pg.Session` as an event
(``Session.handle``), commands come out and are carried out in order.  Forwarding uses asyncio protocols (not
streams) so a chunk read from one socket is written to the other without extra copies
or task switches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import logging
import secrets
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol, assert_never, cast

from dbsentry import metrics
from dbsentry.approvals import Approvals, ApprovalStoreError
from dbsentry.approvals.model import ApprovalRequest
from dbsentry.approvals.service import Gate
from dbsentry.audit.appender import AuditLog, AuditUnavailable, resolves
from dbsentry.audit.records import CompletionRecord, Record
from dbsentry.config import Config, ConfigError, ConnectionConfig
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import (
    AuditFailed,
    ClientClosed,
    ClientData,
    ClientTLSStarted,
    GuardApprovalAnswered,
    HeldRefused,
    LoginWaitTimedOut,
    PasswordVerified,
    StartupTimedOut,
    UpstreamClosed,
    UpstreamData,
    UpstreamFailed,
    WaitedLoginEnded,
)
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.engines.postgres.session.pg import ClientInfo, Session
from dbsentry.engines.postgres.session.server_params import ServerParams
from dbsentry.engines.postgres.session.upstream import UpstreamHandshake, UpstreamReady
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire.auth import AuthError, tls_server_end_point_hash
from dbsentry.governance.admission import approvals_by_record, stamp_approved
from dbsentry.governance.facts import StatementFacts
from dbsentry.governance.hold import ResultHold
from dbsentry.identity.model import Identity
from dbsentry.identity.ratelimit import login
from dbsentry.policy.engine import Decision
from dbsentry.server import tls
from dbsentry.server.catalogs import CatalogError, CatalogLoader
from dbsentry.server.internode import NodeLink
from dbsentry.server.reading import TURN_BYTES, UpstreamReading, client_gone
from dbsentry.server.workerproto import (
    WorkerChannel,
    WorkerInfo,
    new_session_id,
    owner_of,
    pid_slot,
)
from dbsentry.tasks import spawn

log = logging.getLogger("dbsentry.proxy")


class Authenticator(Protocol):
    def authenticate(self, user: str, password: str, source: str) -> Identity | None: ...


class ProxyServer:
    """Listens for PostgreSQL clients and runs one session per connection."""

    def __init__(
        self,
        config: Config,
        authenticator: Authenticator,
        governor: Governor | None = None,
        audit_writer: AuditLog | None = None,
        catalogs: CatalogLoader | None = None,
        approvals: Approvals | None = None,
        *,
        auth_needs_io: bool = False,
        worker: WorkerInfo | None = None,
    ) -> None:
        self.approvals = approvals
        self.config = config
        self.governor = governor
        self.audit_writer = audit_writer
        # audit.durability "effect": what a statement produces waits for its record
        self.hold_results = audit_writer is not None and audit_writer.durability == "effect"
        self.catalogs = catalogs
        self.authenticator = authenticator
        self.auth_needs_io = auth_needs_io
        self.server_ssl = tls.server_context(config)
        self.sessions: dict[int, ClientConnection] = {}
        # (connection, upstream backend pid) -> the pid its client was given, so that
        # notifications name the sessions their clients know.
        self.backend_pids: dict[tuple[str, int], int] = {}
        # What each connection's server reports at login, for clients greeted before
        # their upstream connection exists (limits.lazy_upstream).
        self.server_params = ServerParams()
        self._server: asyncio.Server | None = None
        # workers: N (server/workers.py): the listener is shared with the node's other
        # workers (SO_REUSEPORT); cancels and DDL reach them over this worker's channel.
        self.worker = worker
        self.drained: asyncio.Event | None = None  # set when the last session ends (a drain)
        # control_plane (several nodes): backend pids name the node too, and a cancel for
        # another node's session goes there (server/internode.py); set by the runner.
        self.node: NodeLink | None = None
        # The other listeners' live sessions as console rows (the MySQL listener's, set by
        # the runner): what this worker answers when asked for its sessions.
        self.more_rows: list[Callable[[], list[dict[str, Any]]]] = []
        self.channel: WorkerChannel | None = (
            WorkerChannel(
                worker,
                {
                    "cancel": self._cancel_message,
                    "catalog": self._catalog_message,
                    "derived": self._derived_message,
                    "sessions": self._sessions_message,
                },
            )
            if worker is not None
            else None
        )
        if not config.tls.require_client_tls:
            log.warning(
                "tls.require_client_tls is false: tokens may cross the network in plaintext",
                extra={"fields": {"setting": "tls.require_client_tls"}},
            )

    async def start(self) -> tuple[str, int]:
        host, port = self.config.listen.postgres_addr
        loop = asyncio.get_running_loop()
        if self.channel is not None:
            await self.channel.start()
        self._server = await loop.create_server(
            lambda: ClientConnection(self), host, port, reuse_address=True, backlog=2048,
            reuse_port=self.worker is not None,
        )
        metrics.set_listener_up("postgres", True)
        sock = self._server.sockets[0].getsockname()
        log.info("listening", extra={"fields": {"postgres": f"{sock[0]}:{sock[1]}"}})
        return sock[0], sock[1]

    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def close(self, drain_seconds: float = 0.0) -> None:
        """Stop listening; with ``drain_seconds``, let open sessions end by themselves for
        up to that long before closing the rest."""
        if self._server is not None:
            self._server.close()
            metrics.set_listener_up("postgres", False)
        await drain(self, drain_seconds, "sessions")
        for conn in list(self.sessions.values()):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
        if self.channel is not None:
            await self.channel.close()

    async def cancel(self, pid: int, secret: bytes, source: str) -> None:
        """A client's CancelRequest for ``pid``: cancel its statement here, or hand it to the
        worker (or node) that holds the session.  Returns once the upstream has the request
        (or it could not be delivered): the client's cancel connection is closed after that,
        as PostgreSQL closes it only once the backend is signalled, so a cancel that finds
        nothing running never stops the statement the client sends next."""
        owner = owner_of(pid, self.node.slot if self.node is not None else None, self.worker)
        if owner.slot is not None and self.node is not None:
            slot, index = owner.slot, owner.worker or 0
            address = self.node.address_of(slot, index)
            if address is None:
                log.info("cancel request for no live node ignored", extra={"fields": {"slot": slot, "client": source}})
                return
            log.info("cancel request forwarded to another node", extra={"fields": {"slot": slot, "worker": index, "client": source}})
            await self.node.channel.send_cancel(address, pid, secret, source)
            return
        if owner.worker is not None and self.channel is not None:
            log.debug("cancel request forwarded", extra={"fields": {"to_worker": owner.worker, "client": source}})
            try:
                await self.channel.ask(owner.worker, "cancel", pid=pid, secret=secret.hex(), source=source)
            except OSError as err:
                log.warning("worker not reachable", extra={"fields": {"worker": owner.worker, "op": "cancel", "error": str(err)}})
            return
        target = self.sessions.get(pid)
        if target is not None and hmac.compare_digest(target.session.proxy_secret, secret):
            await target.cancel_statement()
        else:
            log.info("cancel request with an unknown key ignored", extra={"fields": {"client": source}})

    async def cancel_from_node(self, pid: int, secret: bytes, source: str) -> None:
        """A CancelRequest another node forwarded: only for this node's sessions (a pid of
        another slot is not passed on again, so no two nodes can bounce one)."""
        if self.node is None or pid_slot(pid) != self.node.slot:
            log.warning("cancel from another node for a session not of this node ignored", extra={"fields": {"client": source}})
            return
        await self.cancel(pid, secret, source)

    async def _cancel_message(self, body: dict[str, Any]) -> bool:
        """Another worker's client asked to cancel a session of this worker; the answer (once
        the upstream has the request) lets that worker close its client's cancel connection."""
        pid, secret = body.get("pid"), body.get("secret")
        if not isinstance(pid, int) or not isinstance(secret, str) or self.worker is None or not self.worker.owns(pid):
            log.warning("malformed cancel from another worker ignored")
            return False
        try:
            key = bytes.fromhex(secret)
        except ValueError:
            log.warning("malformed cancel from another worker ignored")
            return False
        await self.cancel(pid, key, str(body.get("source", "?"))[:80])
        return True

    async def _catalog_message(self, body: dict[str, Any]) -> None:
        name = body.get("connection")
        if self.catalogs is not None and isinstance(name, str) and name in self.config.connections:
            self.catalogs.refresh(name)

    def derived_changed(self) -> None:
        """Copies made through this worker made columns inherit classes (saved in the state
        directory): the other workers take them up too."""
        if self.channel is not None:
            spawn(self.channel.broadcast("derived"), name="derived-broadcast")

    async def _derived_message(self, body: dict[str, Any]) -> None:
        if self.catalogs is None:
            return
        from dbsentry.masking.derived import DerivedClassFile

        service = self.catalogs.service
        for connection, copies in DerivedClassFile(self.config.state_dir / "masking-derived-classes.json").load().items():
            if connection in self.config.connections:
                service.inherit(connection, copies)  # saves (the union) only when it learnt something

    async def _sessions_message(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        return self.session_rows()

    def session_rows(self) -> list[dict[str, Any]]:
        """This worker's live sessions (of every listener) as the console shows them, each
        with its worker."""
        from dbsentry.web.views import live_session_row

        index = self.worker.index if self.worker is not None else 0
        rows = []
        for conn in list(self.sessions.values()):
            row = live_session_row(conn)
            if row is not None:
                rows.append({**row, "worker": index})
        for more in self.more_rows:
            rows.extend(more())
        return rows

    def schema_changed(self, connection: str) -> None:
        """DDL ran on ``connection``: its catalog is read again here and in the other workers."""
        if self.catalogs is not None:
            self.catalogs.schema_changed(connection)
            if self.channel is not None:
                spawn(self.channel.broadcast("catalog", connection=connection), name="catalog-broadcast")

    def new_backend_key(self) -> tuple[int, bytes]:
        """A backend pid naming this node and worker (workerproto), and a random secret."""
        slot = self.node.slot if self.node is not None else None
        index = self.worker.index if self.worker is not None else None
        return new_session_id(slot, index, self.sessions), secrets.token_bytes(4)

    async def send_cancel(self, conn: ConnectionConfig, pid: int, secret: bytes) -> None:
        """Open a fresh connection to the upstream and send a CancelRequest with its real key."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(conn.host, conn.port), conn.connect_timeout_seconds
            )
            ctx = tls.upstream_context(conn)
            if ctx is not None:
                writer.write(codec.encode_ssl_request())
                if await reader.readexactly(1) == b"S":
                    await writer.start_tls(ctx, server_hostname=conn.host if conn.upstream_tls == "verify-full" else None)
            writer.write(codec.encode_cancel_request(pid, secret))
            await writer.drain()
            # The server closes the connection once it has read the request.
            await asyncio.wait_for(reader.read(1), 5)
            writer.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ssl.SSLError) as err:
            log.warning("cancel could not reach the upstream", extra={"fields": {"error": str(err)}})


class _Draining(Protocol):
    drained: asyncio.Event | None  # set by whoever removes the last session

    @property
    def sessions(self) -> Mapping[int, Any]: ...


async def drain(listener: _Draining, seconds: float, what: str) -> None:
    """Let ``listener``'s open sessions end by themselves for up to ``seconds`` (SIGTERM with
    workers); the caller closes what is left."""
    if seconds <= 0 or not listener.sessions:
        return
    log.info(f"draining {what}", extra={"fields": {"sessions": len(listener.sessions), "seconds": seconds}})
    listener.drained = asyncio.Event()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(listener.drained.wait(), seconds)
    if listener.sessions:
        log.warning(f"{what} still open after the drain: closed", extra={"fields": {"sessions": len(listener.sessions)}})


MAX_GATED_CHUNKS = 64
#: The longest a client's cancel connection stays open waiting for its request to be delivered.
CANCEL_DELIVERY_SECONDS = 10.0
#: The most plaintext one TLS record to a client carries (see ``ClientConnection._write``).
TLS_PIECE = 8192

# Most connections never hold a statement back: they share this empty queue until one does.
_NO_GATE: deque[_GateEntry] = deque(maxlen=0)


class _GateEntry:
    """Client chunks waiting for their audit records to commit, in arrival order."""

    __slots__ = ("after", "cancel", "cmd", "done", "last", "ok", "refusal")

    def __init__(self, cmd: c.AuditGate) -> None:
        self.cmd = cmd
        self.last = 0  # the seq of its last record in the audit log
        self.after: list[c.Command] = []
        self.done = False
        self.ok = False
        self.refusal: tuple[str, str] | None = None  # (sqlstate, message): not approved
        self.cancel: asyncio.Future[None] | None = None  # set while waiting for an approval


class ClientConnection(asyncio.Protocol):
    """One client socket and, once it needs one, its upstream socket."""

    # Thousands may idle at once: no instance dict, and nothing created before it is needed.
    __slots__ = (
        "_backend",
        "_gate",
        "_grants_for",
        "_hold_results",
        "_socket",
        "_timer",
        "_wait",
        "address",
        "closed",
        "proxy",
        "session",
        "transport",
        "upstream",
    )

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        # The socket's own transport: under TLS, ``transport`` is a layer over it that
        # learns of a failed write only on the loop's next turn.
        self._socket: asyncio.BaseTransport | None = None
        self.upstream: UpstreamConnection | None = None
        self.closed = False
        self.address = "?"
        self._timer: asyncio.TimerHandle | None = None
        self._wait: asyncio.TimerHandle | None = None  # waiting for another session's login
        self._gate: deque[_GateEntry] = _NO_GATE
        # audit.durability "effect": client-bound commands wait for the session's records
        self._hold_results: ResultHold[c.SendClient | c.CloseClient] | None = None
        self._grants_for: str | None = None
        self._backend: tuple[str, int] | None = None  # (connection, upstream backend pid)
        self.session: Session

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._socket = transport
        peer = transport.get_extra_info("peername")
        self.address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        pid, secret = self.proxy.new_backend_key()
        self.session = Session(
            self.proxy.config,
            ClientInfo(self.address),
            pid,
            secret,
            governor=self.proxy.governor,
            audit_config=self.proxy.config.audit if self.proxy.audit_writer is not None else None,
            masking_service=(
                self.proxy.catalogs.service
                if self.proxy.catalogs is not None and self.proxy.config.masking.enabled
                else None
            ),
            catalog_service=self.proxy.catalogs.service if self.proxy.catalogs is not None else None,
            approvals=self.proxy.approvals,
            server_params=self.proxy.server_params,
            backend_pids=self.proxy.backend_pids,
        )
        self.proxy.sessions[pid] = self
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.proxy.config.limits.startup_timeout_seconds, self._startup_timeout)

    def data_received(self, data: bytes) -> None:
        self.run(self.session.handle(ClientData(data)))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._wait is not None:
            self._wait.cancel()
            self._wait = None
        left = self.closed  # the session knows already (upstream_data)
        self.closed = True
        sessions = self.proxy.sessions
        sessions.pop(self.session.proxy_pid, None)
        if not sessions and self.proxy.drained is not None:
            self.proxy.drained.set()
        self._forget_backend()
        if self._grants_for is not None and self.proxy.approvals is not None:
            self.proxy.approvals.release_grants(self._grants_for)
            self._grants_for = None
        if not left:
            self.run(self.session.handle(ClientClosed()))

    def pause_writing(self) -> None:
        up = self.upstream
        if up is not None:
            up.reading.client_slow(up.transport, True)  # the client reads slowly: so does the proxy

    def resume_writing(self) -> None:
        up = self.upstream
        if up is not None:
            up.reading.client_slow(up.transport, False)

    def upstream_data(self, data: bytes) -> None:
        """The logged-in upstream's bytes, a large read at most per turn of the event loop
        (server/reading.py). For a client that has left (a write to it failed; its
        ``connection_lost`` comes on a later turn) the session ends now: it cancels the
        statement and closes the upstream, and the rest is not relayed for nobody."""
        if self.closed:
            return
        if client_gone(self._socket):
            self.closed = True
            self.run(self.session.handle(ClientClosed()))
            return
        self.run(self.session.handle(UpstreamData(data)))
        if len(data) >= TURN_BYTES:
            up = self.upstream
            if up is not None and up.transport is not None:
                up.reading.large_read(up.transport)

    # ------------------------------------------------------------------ commands

    def run(self, commands: list[c.Command]) -> None:
        gate = self._gate
        for cmd in commands:
            t = type(cmd)
            if gate and (t is c.SendUpstream or t is c.CloseUpstream):
                # Behind a statement whose audit record is not committed yet: keep the order.
                gate[-1].after.append(cmd)
            else:
                self._execute(cmd)

    def _execute(self, cmd: c.Command) -> None:
        """Carry out one command.  The match is exhaustive (mypy checks ``assert_never``):
        a new command the shell does not carry out is a type error, not a silent drop."""
        match cmd:
            case c.SendUpstream(data=data):
                up = self.upstream
                if up is not None and up.transport is not None and not up.transport.is_closing():
                    up.transport.write(data)
            case c.SendClient(data=data):
                hold = self._hold_results
                if hold is not None and hold.must_hold(self._durable_seq()):
                    self._hold(cmd)
                # (a transport closing already, say after a start-up timeout, refuses writes)
                elif not self.closed and self.transport is not None and not self.transport.is_closing():
                    self._write(data)
            case c.Log():
                log.log(cmd.level, cmd.event, extra={"fields": {"session": self.session.session_id, **cmd.fields}})
                if cmd.event == "session.refused" and str(cmd.fields.get("sqlstate", "")).startswith("28"):
                    metrics.login_failed("password" if cmd.fields["sqlstate"] == "28P01" else "refused")
            case c.CloseClient():
                if self._hold_results is not None and self._hold_results.held is not None:
                    self._hold(cmd)
                else:
                    self._close_client()
            case c.CloseUpstream():
                self._close_upstream()
            case c.StartClientTLS():
                # Nothing more is read as plaintext: the client's TLS handshake follows the
                # "S" at once, and bytes read before start_tls takes the socket over would
                # reach the session as a start-up packet (and its error go back in
                # plaintext). start_tls resumes reading for the TLS layer itself.
                if self.transport is not None:
                    self.transport.pause_reading()
                spawn(self._start_tls(), name="client-tls")
            case c.VerifyPassword():
                self._verify(cmd)
            case c.OpenUpstream():
                spawn(self._open_upstream(cmd), name="upstream-connect")
            case c.LoginComplete():
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                if self._wait is not None:
                    self._wait.cancel()
                    self._wait = None
            case c.Audit():
                self._audit_nowait(cmd)
            case c.AuditGate():
                self._start_gate(cmd)
            case c.GuardApproval():
                self._guard_approval(cmd)
            case c.SchemaChanged():
                self.proxy.schema_changed(cmd.connection)
            case c.CancelUpstream():
                self.cancel_upstream()
            case c.ForwardCancel():
                spawn(self._forward_cancel(cmd), name="cancel-forward")
            case c.WaitForLogin():
                self._wait = asyncio.get_running_loop().call_later(cmd.seconds, self._login_wait_timed_out)
            case c.WakeWaiting():
                sessions = self.proxy.sessions
                for pid in cmd.sessions:
                    waiting = sessions.get(pid)
                    if waiting is not None:
                        waiting.run(waiting.session.handle(WaitedLoginEnded()))
            case _:
                assert_never(cmd)

    # ------------------------------------------------------------------ audit

    def _observe(self, record: Record) -> None:
        """Prometheus metrics, read off the audit records as they pass."""
        metrics.observe(record, self.session.connection_name)

    def _audit_nowait(self, cmd: c.Audit) -> None:
        self._observe(cmd.record)
        writer = self.proxy.audit_writer
        if writer is None:
            return
        try:
            if type(cmd.record) is CompletionRecord:
                writer.append_later(cmd.record)  # an outcome: it rides with the next write
            else:
                writer.append_soon(cmd.record)
        except AuditUnavailable as err:
            log.error("audit record dropped", extra={"fields": {"error": str(err), "type": cmd.record.TYPE}})

    def _start_gate(self, cmd: c.AuditGate) -> None:
        for record in cmd.records:
            self._observe(record)
        entry = _GateEntry(cmd)
        if self._gate is _NO_GATE:
            self._gate = deque()
        self._gate.append(entry)
        if len(self._gate) > MAX_GATED_CHUNKS and self.transport is not None:
            self.transport.pause_reading()
        writer = self.proxy.audit_writer
        if cmd.approvals or writer is None:
            spawn(self._commit(entry), name="audit-commit")
            return
        # The hot path: no task per statement; the log calls back once written (or durable).
        entry.last = writer.submit(cmd.records, functools.partial(self._committed, entry), durable=cmd.durable)

    def _held_by(self, seq: int) -> None:
        hold = self._hold_results
        if hold is None:
            hold = self._hold_results = ResultHold()
        hold.statement(seq)

    # ------------------------------------------------------------------ effect durability

    def _durable_seq(self) -> int:
        writer = self.proxy.audit_writer
        return writer.durable_seq if writer is not None else 0

    def _hold(self, cmd: c.SendClient | c.CloseClient) -> None:
        """Keep ``cmd`` until the log is durable up to this session's last statement record
        (nothing a statement produced leaves before its record is durable)."""
        hold = self._hold_results
        writer = self.proxy.audit_writer
        assert hold is not None and writer is not None
        if hold.hold(cmd, len(cmd.data) if type(cmd) is c.SendClient else 0):
            writer.when_durable(hold.seq, self._release)
        if hold.should_pause():
            hold.paused = True
            up = self.upstream
            if up is not None:
                up.reading.results_held(up.transport, True)  # backpressure: the server waits, not our memory

    def _release(self, error: AuditUnavailable | None) -> None:
        hold = self._hold_results
        writer = self.proxy.audit_writer
        if hold is None or writer is None or hold.held is None:
            return
        if error is not None:
            # The statement ran but its record may not be durable: its results never leave.
            log.error("results withheld: audit log unavailable", extra={"fields": {"error": str(error)}})
            hold.drop()
            if not self.closed and self.transport is not None and not self.transport.is_closing():
                self.transport.write(codec.error_response("58000", f"dbsentry: {error}; the results were withheld", severity="FATAL"))
            self.abort()
            return
        for cmd in hold.release(writer.durable_seq):
            if isinstance(cmd, c.CloseClient):
                self._close_client()
            elif not self.closed and self.transport is not None and not self.transport.is_closing():
                self._write(cmd.data)
        waiting = hold.waiting_for()
        if waiting is not None:
            writer.when_durable(waiting, self._release)
            return
        if hold.paused:
            hold.paused = False
            up = self.upstream
            if up is not None and not self.closed:
                up.reading.results_held(up.transport, False)

    def _committed(self, entry: _GateEntry, error: AuditUnavailable | None) -> None:
        if error is None:
            entry.ok = True
            if self.proxy.hold_results:
                self._held_by(entry.last)  # what the statements produce waits for these records
        else:
            log.error("statement refused: audit unavailable", extra={"fields": {"error": str(error)}})
        entry.done = True
        self._drain_gate()

    async def _commit(self, entry: _GateEntry) -> None:
        writer = self.proxy.audit_writer
        records = entry.cmd.records
        try:
            if entry.cmd.approvals:
                approvals = await self._approve(entry)
                if approvals is None:
                    if writer is not None:
                        for r in records:
                            self._audit_nowait(c.Audit(r))
                    return
                records = stamp_approved(records, approvals)
                entry.cmd.records = records
            if records:
                if writer is None:
                    raise AuditUnavailable("audit is not configured")
                done: asyncio.Future[AuditUnavailable | None] = asyncio.get_running_loop().create_future()
                last = writer.submit(records, resolves(done), durable=entry.cmd.durable)
                failed = await done
                if failed is not None:
                    raise failed
                if self.proxy.hold_results:
                    self._held_by(last)
            entry.ok = True
        except AuditUnavailable as err:
            log.error("statement refused: audit unavailable", extra={"fields": {"error": str(err)}})
        finally:
            entry.done = True
            self._drain_gate()

    async def _approve(self, entry: _GateEntry) -> dict[str, str] | None:
        """Admit a held chunk's statements that need approval, all or none (see
        governance.admission): record id -> the approval it runs under, or None when the
        chunk is refused (``entry.refusal`` says why; no approval was used)."""
        svc = self.proxy.approvals
        session = self.session
        asks = entry.cmd.approvals
        if svc is None or session.identity is None or session.connection_name is None:
            entry.refusal = ("42501", "dbsentry: this statement requires approval")
            return None
        identity, connection = session.identity.name, session.connection_name
        keys = [a.key for a in asks]
        loop = asyncio.get_running_loop()
        try:
            used = await loop.run_in_executor(None, svc.consume_all, identity, connection, keys)
            if used is None:
                # Some statement has no approval yet: its request is made (or found), and in
                # wait mode the session waits for each; nothing is used up before all are there.
                refused: list[Gate] = []
                for ask in asks:
                    gate = await self._statement_gate(
                        svc, ask.sql, ask.params, ask.key, ask.decision, ask.facts, session.settings.get("approval"), consume=False
                    )
                    if gate.outcome == "refuse":
                        refused.append(gate)  # every statement's request is made, for one review
                    elif gate.outcome == "wait" and await self._wait_for_approval(entry, svc, gate) is None:
                        return None
                if refused:
                    more = [g.request.id for g in refused[1:] if g.request.id != refused[0].request.id]
                    also = f" (this batch also waits for {', '.join(more)})" if more else ""
                    entry.refusal = ("42501", refused[0].message + also)
                    return None
                used = await loop.run_in_executor(None, svc.consume_all, identity, connection, keys)
                if used is None:
                    entry.refusal = ("42501", "dbsentry: an approval this statement needs was used meanwhile; send it again")
                    return None
        except (ApprovalStoreError, OSError) as err:
            log.error("approvals unavailable", extra={"fields": {"error": str(err)}})
            where = " (the control plane cannot be reached)" if self.proxy.config.control_plane is not None else ""
            entry.refusal = ("58000", f"dbsentry: approvals are unavailable{where}, so the statement was not run")
            return None
        return approvals_by_record([a.records for a in asks], [r.id for r in used])

    async def _statement_gate(
        self,
        svc: Approvals,
        sql: str,
        params: tuple[str | None, ...] | None,
        key: str,
        decision: Decision,
        facts: tuple[StatementFacts, ...],
        client_mode: str | None,
        *,
        consume: bool = True,
    ) -> Gate:
        """``Approvals.statement_gate`` for this session, off the event loop."""
        session = self.session
        assert session.identity is not None and session.connection_name is not None
        return await asyncio.get_running_loop().run_in_executor(
            None,
            functools.partial(
                svc.statement_gate,
                identity=session.identity,
                connection=session.connection_name,
                environment=session.connection.environment if session.connection else None,
                sql=sql,
                params=params,
                key=key,
                decision=decision,
                facts=facts,
                session_id=session.session_id,
                client_mode=client_mode,
                consume=consume,
            ),
        )

    def _guard_approval(self, cmd: c.GuardApproval) -> None:
        """A statement over the row limit: commit it only with an approved request for it."""
        svc = self.proxy.approvals
        session = self.session
        if svc is None or session.identity is None or session.connection_name is None:
            self.run(session.handle(GuardApprovalAnswered(False, None)))
            return
        decision = Decision("require_approval", (cmd.rule,), cmd.message, min_approvals=1)

        async def ask() -> None:
            try:
                # the transaction is open, so never wait for a person
                gate = await self._statement_gate(svc, cmd.sql, cmd.params, cmd.key, decision, cmd.facts, "fail")
            except (ApprovalStoreError, OSError) as err:
                log.error("approvals unavailable", extra={"fields": {"error": str(err)}})
                if not self.closed:
                    self.run(session.handle(GuardApprovalAnswered(False, None)))
                return
            if not self.closed:
                # A pending request for the same text may carry an older message: say what
                # this run would have done.
                message = svc.refusal_message(dataclasses.replace(gate.request, message=cmd.message))
                self.run(session.handle(GuardApprovalAnswered(gate.outcome == "run", message)))

        spawn(ask(), name="guard-approval")

    async def _wait_for_approval(self, entry: _GateEntry, svc: Approvals, gate: Gate) -> ApprovalRequest | None:
        loop = asyncio.get_running_loop()
        request = gate.request
        if not self.closed and self.transport is not None:
            self.transport.write(codec.notice_response(gate.message))
        fut = svc.watch(request.id)
        entry.cancel = loop.create_future()
        watched = asyncio.wrap_future(fut)
        timeout = svc.config.wait_timeout_seconds
        waits: set[asyncio.Future[Any]] = {watched, entry.cancel}
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        who = self.session.identity.name if self.session.identity else None
        if watched not in done:
            svc.unwatch(request.id, fut)
            await loop.run_in_executor(None, svc.withdraw, request.id, who)
            if entry.cancel in done:
                entry.refusal = ("57014", f"dbsentry: approval request {request.id} withdrawn: canceled by the client")
            else:
                entry.refusal = ("57014", svc.timeout_message(request))
            return None
        decided = watched.result()
        if decided.status == "approved":
            return decided  # used by the caller, with the chunk's other approvals
        entry.refusal = ("42501", svc.outcome_message(decided))
        return None

    def _drain_gate(self) -> None:
        gate = self._gate
        while gate and gate[0].done:
            entry = gate.popleft()
            if entry.ok:
                todo = entry.cmd.then
            elif entry.refusal is not None:
                todo = self.session.handle(HeldRefused(entry.cmd.frames, entry.cmd.records, *entry.refusal))
            else:
                todo = self.session.handle(AuditFailed(entry.cmd.frames, entry.cmd.records))
            for cmd in [*todo, *entry.after]:
                if self.closed and type(cmd) is c.SendUpstream:
                    # The client left while its statement waited for its audit record (or
                    # an approval): it is not sent now (the cancel sent when the client
                    # left would have come before it, and nobody reads its result).
                    continue
                self._execute(cmd)
        if len(gate) <= MAX_GATED_CHUNKS and self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._close_upstream()

    def _close_client(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _close_upstream(self) -> None:
        up = self.upstream
        if up is not None and up.transport is not None and not up.transport.is_closing():
            if up.ready:
                up.transport.write(codec.TERMINATE)
            up.transport.close()

    def _startup_timeout(self) -> None:
        self.run(self.session.handle(StartupTimedOut()))

    def _login_wait_timed_out(self) -> None:
        self._wait = None
        self.run(self.session.handle(LoginWaitTimedOut()))

    def cancel_upstream(self) -> None:
        spawn(self.cancel_statement(), name="cancel")

    async def cancel_statement(self) -> None:
        """Withdraw the approval request the session waits for, or cancel its upstream
        statement; returns once the upstream has the CancelRequest."""
        for entry in self._gate:
            if entry.cancel is not None and not entry.cancel.done():
                entry.cancel.set_result(None)  # a client cancel withdraws the approval request
                return
        up = self.upstream
        if up is None or up.backend_pid is None or self.session.connection is None:
            return
        await self.proxy.send_cancel(self.session.connection, up.backend_pid, up.backend_secret)

    async def _forward_cancel(self, cmd: c.ForwardCancel) -> None:
        """This connection is a CancelRequest: close it once the request is delivered (what
        libpq waits for before its cancel returns), or after CANCEL_DELIVERY_SECONDS."""
        try:
            async with asyncio.timeout(CANCEL_DELIVERY_SECONDS):
                await self.proxy.cancel(cmd.pid, cmd.secret, self.address)
        except TimeoutError:
            log.warning("cancel request not delivered in time", extra={"fields": {"client": self.address}})
        finally:
            self._close_client()

    def _write(self, data: bytes) -> None:
        """Send ``data`` to the client.  Over TLS, in pieces of at most
        :data:`TLS_PIECE` bytes, each its own TLS record, as PostgreSQL sends: libpq reads
        8 KiB at a time, and a bigger record leaves the rest decrypted inside OpenSSL where
        a driver that waits on the socket (psycopg) never sees it, so the end of a large
        result could hang until more data came."""
        transport = self.transport
        assert transport is not None
        if not self.session.client.tls or len(data) <= TLS_PIECE:
            transport.write(data)
            return
        view = memoryview(data)
        for i in range(0, len(data), TLS_PIECE):
            transport.write(view[i : i + TLS_PIECE])

    async def _start_tls(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(
                self.transport,
                self,
                self.proxy.server_ssl,
                server_side=True,
                ssl_handshake_timeout=self.proxy.config.limits.startup_timeout_seconds,  # part of the startup
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as err:
            log.info("client TLS handshake failed", extra={"fields": {"client": self.address, "error": str(err)}})
            self.abort()
            return
        if new is None:
            return
        self.transport = new
        ssl_obj = new.get_extra_info("ssl_object")
        self.run(self.session.handle(ClientTLSStarted(ssl_obj.version() if ssl_obj is not None else None)))

    def _verify(self, cmd: c.VerifyPassword) -> None:
        auth = self.proxy.authenticator
        source = self.address.rsplit(":", 1)[0]
        if not self.proxy.auth_needs_io and self.proxy.approvals is None:
            self.run(self.session.handle(PasswordVerified(login(auth.authenticate, cmd.user, cmd.password, source))))
            return

        async def verify() -> None:
            loop = asyncio.get_running_loop()
            identity = await loop.run_in_executor(None, login, auth.authenticate, cmd.user, cmd.password, source)
            svc = self.proxy.approvals
            if isinstance(identity, Identity) and svc is not None:
                try:
                    await loop.run_in_executor(None, svc.load_grants, identity.name)
                    self._grants_for = identity.name
                except (ApprovalStoreError, OSError) as err:
                    log.error("cannot read access grants", extra={"fields": {"error": str(err)}})
            if not self.closed:
                self.run(self.session.handle(PasswordVerified(identity)))

        spawn(verify(), name="verify")

    async def _open_upstream(self, cmd: c.OpenUpstream) -> None:
        # the connection as it was when the session started (a SIGHUP reload changes the
        # proxy's, for the sessions after it)
        conn = self.session.config.connections[cmd.connection]
        loop = asyncio.get_running_loop()
        try:
            password = conn.resolve_password()
        except (ConfigError, OSError) as err:
            self.run(self.session.handle(UpstreamFailed("08004", f"dbsentry: connection {cmd.connection!r} is misconfigured: {err}")))
            return
        where = f'the upstream of connection "{cmd.connection}"'
        try:
            transport, proto = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(self), conn.host, conn.port),
                conn.connect_timeout_seconds,
            )
        except (OSError, TimeoutError) as err:
            reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
            self._log_upstream_failure(cmd.connection, conn, f"could not connect: {reason}")
            self.run(self.session.handle(UpstreamFailed("08001", f"dbsentry: could not connect to {where}: {reason}")))
            return
        self.upstream = proto
        if self.closed:
            transport.close()
            return
        binding: bytes | None = None
        ctx = tls.upstream_context(conn)
        if ctx is not None:
            try:
                proto.tls_answer = loop.create_future()
                transport.write(codec.encode_ssl_request())
                answer = await asyncio.wait_for(proto.tls_answer, conn.connect_timeout_seconds)
                if answer != b"S":
                    raise ConnectionError("the upstream server does not accept TLS connections")
                hostname = conn.host if conn.upstream_tls == "verify-full" else None
                new = await loop.start_tls(transport, proto, ctx, server_hostname=hostname)
                if new is None:
                    raise ConnectionError("TLS setup failed")
                transport = new
                proto.transport = new
                ssl_obj = new.get_extra_info("ssl_object")
                der = ssl_obj.getpeercert(binary_form=True) if ssl_obj is not None else None
                if der:
                    try:
                        binding = tls_server_end_point_hash(der)
                    except AuthError:
                        binding = None  # a certificate type channel binding cannot use (Ed25519)
            except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as err:
                transport.close()
                self._log_upstream_failure(cmd.connection, conn, f"TLS failed: {err}")
                self.run(self.session.handle(UpstreamFailed("08001", f"dbsentry: TLS to {where} failed: {err}")))
                return
        proto.start_handshake(
            UpstreamHandshake(conn.user, password, cmd.params, binding, self.proxy.config.limits.max_message_bytes)
        )
        proto.login_timer = loop.call_later(conn.connect_timeout_seconds, proto.login_timed_out, where, conn.connect_timeout_seconds)

    def _log_upstream_failure(self, name: str, conn: ConnectionConfig, reason: str) -> None:
        # The operator's view, with the address the client is not told.
        log.warning(
            "upstream failed",
            extra={"fields": {"session": self.session.session_id, "connection": name, "address": f"{conn.host}:{conn.port}", "error": reason}},
        )

    # ------------------------------------------------------------------ from the upstream

    def on_upstream_ready(self, ready: UpstreamReady) -> None:
        catalogs = self.proxy.catalogs
        name = self.session.connection_name
        if catalogs is not None and name is not None:
            # Masking must know the schema before the first statement: fail closed otherwise.
            spawn(self._ready_with_catalog(catalogs, name, ready), name="catalog")
            return
        self._ready(ready)

    async def _ready_with_catalog(self, catalogs: CatalogLoader, name: str, ready: UpstreamReady) -> None:
        try:
            await catalogs.ensure(name)
        except CatalogError as err:
            if not self.proxy.config.masking.enabled:
                # Without masking the catalog only refines guardrails; the database's own
                # read-only agents and the row guard hold without it.
                log.warning("cannot read the catalog", extra={"fields": {"connection": name, "error": str(err)}})
                if not self.closed:
                    self._ready(ready)
                return
            self.run(
                self.session.handle(
                    UpstreamFailed(
                        "08004", f'dbsentry: cannot read the schema of connection "{name}" to classify sensitive data: {err}'
                    )
                )
            )
            return
        if not self.closed:
            self._ready(ready)

    def _ready(self, ready: UpstreamReady) -> None:
        name = self.session.connection_name
        if name is not None and ready.backend_pid:
            self._backend = (name, ready.backend_pid)
            self.proxy.backend_pids[self._backend] = self.session.proxy_pid
        self.run(self.session.handle(ready))

    def _forget_backend(self) -> None:
        if self._backend is not None:
            if self.proxy.backend_pids.get(self._backend) == self.session.proxy_pid:
                del self.proxy.backend_pids[self._backend]
            self._backend = None

    def on_upstream_failed(self, sqlstate: str, message: str, from_server: bool) -> None:
        name = self.session.connection_name
        if from_server and sqlstate.startswith("28"):
            # The upstream refused the proxy's own credentials: the client's token was fine.
            conn = self.session.config.connections.get(name or "")
            if conn is not None and name is not None:
                self._log_upstream_failure(name, conn, f"the upstream rejected the proxy's credentials: {message}")
            sqlstate, message = "08004", f'dbsentry: the upstream of connection "{name}" rejected the proxy\'s credentials'
        elif from_server:
            message = f"dbsentry: upstream refused the connection: {message}"
        self.run(self.session.handle(UpstreamFailed(sqlstate, message)))


class UpstreamConnection(asyncio.Protocol):
    __slots__ = (
        "_on_data",
        "backend_pid",
        "backend_secret",
        "client",
        "handshake",
        "login_timer",
        "reading",
        "ready",
        "tls_answer",
        "transport",
    )

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.tls_answer: asyncio.Future[bytes] | None = None
        self.handshake: UpstreamHandshake | None = None
        self.ready = False
        self.backend_pid: int | None = None
        self.backend_secret = b""
        self._on_data: Callable[[bytes], Any] = self._ignore
        self.login_timer: asyncio.TimerHandle | None = None
        self.reading = UpstreamReading()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def start_handshake(self, hs: UpstreamHandshake) -> None:
        self.handshake = hs
        self._on_data = self._handshake_data
        assert self.transport is not None
        self.transport.write(hs.startup_message())

    def data_received(self, data: bytes) -> None:
        if self.ready:
            self.client.upstream_data(data)
            return
        if self.tls_answer is not None and not self.tls_answer.done():
            if len(data) != 1:
                self.tls_answer.set_exception(ConnectionError("unexpected data after SSLRequest"))
            else:
                self.tls_answer.set_result(data)
            return
        self._on_data(data)

    def _ignore(self, data: bytes) -> None:
        pass

    def login_timed_out(self, where: str, seconds: float) -> None:
        if self.handshake is None or self.ready:
            return
        self.handshake = None
        self._on_data = self._ignore
        if self.transport is not None:
            self.transport.close()
        self.client.on_upstream_failed("08001", f"dbsentry: {where} did not complete login within {seconds:g}s", False)

    def _stop_login_timer(self) -> None:
        if self.login_timer is not None:
            self.login_timer.cancel()
            self.login_timer = None

    def _handshake_data(self, data: bytes) -> None:
        assert self.handshake is not None and self.transport is not None
        step = self.handshake.receive(data)
        if step.send:
            self.transport.write(step.send)
        if step.refused is not None or step.ready is not None:
            self._stop_login_timer()
        if step.refused is not None:
            self.handshake = None
            self._on_data = self._ignore
            self.transport.close()
            r = step.refused
            self.client.on_upstream_failed(r.sqlstate, r.message, r.from_server)
        elif step.ready is not None:
            self.handshake = None
            self.ready = True
            self.backend_pid = step.ready.backend_pid
            self.backend_secret = step.ready.backend_secret
            self.client.on_upstream_ready(step.ready)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_login_timer()
        if self.tls_answer is not None and not self.tls_answer.done():
            self.tls_answer.set_exception(ConnectionError("connection closed during TLS negotiation"))
        if self.ready:
            self.ready = False
            self.client.run(self.client.session.handle(UpstreamClosed()))
        elif self.handshake is not None:
            self.handshake = None
            self.client.on_upstream_failed("08006", "dbsentry: the upstream closed the connection during login", False)

    def pause_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client.transport is not None:
            self.client.transport.resume_reading()


def install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


__all__ = ["ClientConnection", "ProxyServer", "install_uvloop"]

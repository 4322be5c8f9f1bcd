"""Wires the parts together and runs until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from dbsentry import metrics
from dbsentry.approvals import Approvals, ApprovalStoreError, Notifier, open_approval_store
from dbsentry.audit import AuditStoreError, Signer, open_store, redaction
from dbsentry.audit.appender import AuditLog
from dbsentry.audit.helper import ProcessSyncer
from dbsentry.audit.index import CatchUp
from dbsentry.audit.log import node_id
from dbsentry.audit.logwriter import LogFile
from dbsentry.audit.redaction import redactor_from_config
from dbsentry.config import Config, ConfigError, LoadedConfig, check_environments
from dbsentry.controlplane import ControlPlane
from dbsentry.controlplane.registry import NodeAgent
from dbsentry.engines.postgres.masking.literals import POSTGRES_LITERALS
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.engines.postgres.session.masking import MaskingService, load_or_create_key
from dbsentry.identity import Authenticator
from dbsentry.identity.ratelimit import ControlPlaneUnavailable
from dbsentry.masking.catalog import SourceColumn
from dbsentry.masking.classes import Classification
from dbsentry.masking.derived import DerivedClassFile
from dbsentry.policy import PolicyError
from dbsentry.policy.loader import declared_environments
from dbsentry.server.catalogs import CatalogLoader
from dbsentry.server.cluster import ClusterView
from dbsentry.server.internode import NodeChannel, NodeLink, Status
from dbsentry.server.proxy import ProxyServer
from dbsentry.server.reload import ConfigReloader
from dbsentry.server.roles import log_production_roles
from dbsentry.server.upstream_health import UpstreamHealth
from dbsentry.server.workerproto import WorkerInfo
from dbsentry.tasks import spawn

log = logging.getLogger("dbsentry")
POLICY_POLL_SECONDS = 2.0


async def _watch_policy(governor: Governor, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), POLICY_POLL_SECONDS)
        except TimeoutError:
            governor.reload_if_changed()


def open_audit(config: Config, worker: WorkerInfo | None = None) -> AuditLog:
    """This node's audit log, open, with its helper process (fsync and the search index);
    a worker's own (``<node>-w<k>``) when ``worker`` is given."""
    acfg = config.audit
    state = config.state_dir
    try:
        open_store(acfg, state).close()  # the index opens (and its schema is made) now
    except AuditStoreError as err:
        log.error("cannot open the audit index; not starting", extra={"fields": {"reason": str(err)}})
        sys.exit(2)
    try:
        signer = Signer.from_path(acfg.signing_key_path(state))
        node = node_id(acfg.node, state)
        if worker is not None:
            from dbsentry.server.workers import lock_node_dir, worker_node

            node = worker_node(node, worker.index)
            lock_node_dir(acfg.log_path(state) / node)
        index = orjson.dumps({"audit": acfg.model_dump(mode="json"), "state_dir": str(state)}).decode()
        lazy = acfg.durability in ("write", "async")
        syncer = ProcessSyncer(
            acfg.log_path(state) / node, _unset, _unset, index=index, min_interval=acfg.fsync_interval_ms / 1000 if lazy else 0.0
        )
        file = LogFile(
            acfg.log_path(state),
            node,
            signer=signer,
            segment_bytes=acfg.segment_mb * 1024 * 1024,
            segment_seconds=acfg.segment_seconds,
            checkpoint_every=acfg.checkpoint_every,
            checkpoint_seconds=acfg.checkpoint_seconds,
            syncer=syncer,
        )
        writer = AuditLog(file, acfg.durability, async_flush_ms=acfg.async_flush_ms, max_queue=acfg.max_queue)
        writer.start()
        metrics.set_audit_healthy(True)  # with workers, /metrics shows the lowest of theirs
    except (OSError, ValueError) as err:
        log.error("cannot open the audit log; not starting", extra={"fields": {"reason": str(err)}})
        sys.exit(2)
    return writer


def _mcp_endpoint(
    config: Config,
    authenticator: Authenticator,
    governor: Governor,
    approvals: Approvals | None,
    catalogs: CatalogLoader | None,
    writer: AuditLog | None,
    reloader: ConfigReloader,
) -> object:
    """The MCP server at /mcp (docs/mcp.md): its tools log in to this proxy's own listener."""
    from dbsentry.agents.http import build_http

    async def views(name: str) -> object:
        if catalogs is None:
            return None
        try:
            await catalogs.ensure(name)
        except Exception as err:  # list_tables then says the classes are unknown
            log.warning("MCP: catalog of %s not read: %s", name, err)
        return catalogs.service.current(name)

    from dbsentry.agents.auditref import AuditLookup

    audit = None
    if writer is not None:  # the call's statement record, as the console reads it
        catch_up = CatchUp(config.audit.log_path(config.state_dir), writer.node, lambda: writer.durable_seq)
        audit = AuditLookup(lambda: open_store(config.audit, config.state_dir), catch_up)
    endpoint = build_http(config, authenticator, governor, lambda: approvals.store if approvals is not None else None, views, audit)
    reloader.targets.append(endpoint.reconfigure)  # its tools list and use the connections
    return endpoint


def _every_worker_sessions(proxy: ProxyServer) -> Callable[[], list[dict[str, Any]]]:
    """The console's live sessions with workers: this worker's and every other's."""
    from dbsentry.server.workers import sessions_everywhere

    return lambda: sessions_everywhere(proxy)


DerivedSet = Mapping[str, Mapping[SourceColumn, Classification]]


def _tell_workers(save: Callable[[DerivedSet], None], proxies: list[ProxyServer]) -> Callable[[DerivedSet], None]:
    def saved(derived: DerivedSet) -> None:
        save(derived)
        for proxy in proxies:
            proxy.derived_changed()

    return saved


def _on_hup(governor: Governor | None, reloader: ConfigReloader) -> Callable[[], None]:
    """SIGHUP: the policy file, then the configuration's connections (checked against the
    environments the new policy declares)."""

    def reload() -> None:
        if governor is not None:
            governor.reload()
        reloader.reload()

    return reload


def _unset(_: object) -> None:
    raise AssertionError("set by AuditLog")


def _on_node(rows: Callable[[], Iterable[Any]], node: str) -> Callable[[], list[dict[str, Any]]]:
    """``rows`` (live sessions, or rows of them) as console rows, each naming its node (and
    its worker: 0 when the node has one process)."""
    from dbsentry.web.views import live_session_row

    def tagged() -> list[dict[str, Any]]:
        out = []
        for obj in rows():
            row = live_session_row(obj)
            if row is not None:
                out.append({"worker": 0, **row, "node": node})
        return out

    return tagged


def _worker_status(
    proxy: ProxyServer, mysql: Any, writer: AuditLog | None, health: UpstreamHealth | None, agent: NodeAgent
) -> Status:
    """What this worker tells another node's console: its own live sessions (PostgreSQL, and
    MySQL on the worker that runs that listener) and its readiness checks."""
    from dbsentry.web.views import live_session_row

    index = proxy.worker.index if proxy.worker is not None else 0

    def status() -> tuple[list[dict[str, Any]], dict[str, bool]]:
        rows = proxy.session_rows()
        if mysql is not None:
            rows += [{**r, "worker": index} for r in map(live_session_row, list(mysql.sessions.values())) if r is not None]
        checks = {"listener": proxy.listening(), "control_plane": agent.up}
        if mysql is not None:
            checks["listener:mysql"] = mysql.listening()
        if writer is not None:
            checks["audit_writer"] = writer.healthy
        if health is not None:
            checks.update({f"upstream:{name}": up.reachable is not False for name, up in health.snapshot().items()})
        return rows, checks

    return status


def _refresher(catalogs: CatalogLoader, loop: asyncio.AbstractEventLoop, name: str) -> Callable[[], None]:
    def refresh() -> None:  # in the agent's thread: the refresh runs in the loop
        loop.call_soon_threadsafe(catalogs.refresh, name)

    return refresh


def _reload_targets(
    reloader: ConfigReloader,
    proxy: ProxyServer,
    mysql: Any,
    catalogs: CatalogLoader | None,
    health: UpstreamHealth | None,
    agent: NodeAgent | None,
    governor: Governor | None,
) -> None:
    """The parts that read the configuration's connections take a SIGHUP reload's: the
    listeners (for their new sessions), the catalogs, the readiness probes, and with a
    control plane the other nodes' DDL announcements of an added connection.  Added and
    changed production connections get the start-up check of their upstream role."""
    loop = asyncio.get_running_loop()
    subscribed = set(reloader.config.connections)

    def apply(config: Config) -> None:
        before = proxy.config.connections
        if governor is not None:
            fresh = {n: c for n, c in config.connections.items() if before.get(n) != c}
            check = config.model_copy(update={"connections": fresh})
            spawn(log_production_roles(check, governor.policy.production_environments), name="role-check-reload")
        proxy.config = config
        if mysql is not None:
            mysql.config = config
        if catalogs is not None:
            catalogs.reconfigure(config)
            if agent is not None:
                for name in sorted(set(config.connections) - subscribed):
                    agent.on(f"catalog:{name}", _refresher(catalogs, loop, name))
                    subscribed.add(name)
        if health is not None:
            health.reconfigure(config.connections)
            spawn(health.check_all(), name="upstream-health-reload")

    reloader.targets.append(apply)


async def _join_control_plane(
    config: Config, proxy: ProxyServer, approvals: Approvals | None, worker: WorkerInfo | None
) -> NodeAgent | None:
    """With ``control_plane``: listen for the other nodes, register this worker, and follow
    the control plane's changes (docs/deployment.md, "Several nodes").  Exits when the
    control plane cannot be reached at start."""
    if config.control_plane is None:
        return None
    cp = config.control_plane
    loop = asyncio.get_running_loop()
    index = worker.index if worker is not None else 0
    try:
        plane = ControlPlane(cp)
        await loop.run_in_executor(None, plane.migrate)
        key = await loop.run_in_executor(None, plane.secret)
        host, port = cp.listen_addr
        channel = NodeChannel(key, host, port + index if port else 0, proxy.cancel_from_node)
        bound_host, bound_port = await channel.start()
        agent = NodeAgent(plane, node_id(config.audit.node, config.state_dir), index, f"{cp.advertise_host or bound_host}:{bound_port}")
        slot = await loop.run_in_executor(None, agent.register)
    except (ControlPlaneUnavailable, ConfigError, ApprovalStoreError, OSError) as err:
        log.error("cannot join the control plane; not starting", extra={"fields": {"reason": str(err)}})
        sys.exit(2)
    proxy.node = NodeLink(slot, channel, agent.address_of)
    channel.node, channel.worker = agent.node, index  # what it answers as (its status: later)
    if approvals is not None:
        agent.on("approvals", approvals.changed)
    catalogs = proxy.catalogs
    if catalogs is not None:
        # DDL seen by any worker of any node: every node reads that catalog again
        catalogs.announce = lambda name: agent.announce(f"catalog:{name}")
        for name in config.connections:
            agent.on(f"catalog:{name}", _refresher(catalogs, loop, name))
    agent.start()
    return agent


async def run_server(
    loaded: LoadedConfig,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[], None] | None = None,
    worker: WorkerInfo | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or ``stop`` is set); ``on_ready`` is called once serving.

    Signal handlers are installed only in the main thread.  ``worker``: this process is one
    of the node's workers (``server/workers.py``).
    """
    config = loaded.config
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    governor: Governor | None = None
    writer: AuditLog | None = None
    if config.passthrough:
        log.warning("passthrough: statements are neither checked nor audited (benchmarking only)")
    else:
        try:
            governor = Governor.from_path(config.policy)
        except PolicyError as err:
            log.error("invalid policy; not starting", extra={"fields": {"reason": str(err)}})
            sys.exit(2)
        try:
            check_environments(config, declared_environments(governor.policy))
        except ConfigError as err:
            log.error("invalid configuration; not starting", extra={"fields": {"reason": str(err)}})
            sys.exit(2)
        writer = open_audit(config, worker)
    catalogs: CatalogLoader | None = None
    proxies: list[ProxyServer] = []  # the proxy, once made (for _tell_workers)
    if not config.passthrough:
        # The catalog serves masking and tells which functions may change data.
        key_path = config.masking.hash_key_file or config.state_dir / "masking.key"
        derived = DerivedClassFile(config.state_dir / "masking-derived-classes.json")
        # With workers, a class one worker's sessions made a copy inherit reaches the others.
        save = derived.save if worker is None else _tell_workers(derived.save, proxies)
        service = MaskingService(config.masking, load_or_create_key(key_path), derived.load(), save)
        catalogs = CatalogLoader(config, service)
        try:  # sensitive values in audit records and approval requests become keyed tokens
            redaction.install(
                redactor_from_config(config.audit, config.state_dir, catalogs.service.current, POSTGRES_LITERALS)
            )
        except (OSError, ValueError) as err:
            log.error("cannot load the audit redaction key; not starting", extra={"fields": {"reason": str(err)}})
            sys.exit(2)
    approvals: Approvals | None = None
    if writer is not None:
        try:
            store = open_approval_store(config.audit, config.state_dir, config.control_plane)
        except ApprovalStoreError as err:
            log.error("cannot open the approvals store; not starting", extra={"fields": {"reason": str(err)}})
            sys.exit(2)
        acfg = config.approvals
        if "console_url" not in acfg.model_fields_set and config.listen.http is not None:
            # Links in approval messages point at this proxy's own console by default.
            acfg = acfg.model_copy(update={"console_url": f"http://{config.listen.http}"})
        approvals = Approvals(acfg, store, notifier=Notifier(acfg), audit=writer.append_nowait)
        approvals.start()
    if worker is not None or config.control_plane is not None:
        from dbsentry.server.workers import shared_authenticator

        # failed logins counted across the workers (and the nodes, with a control plane)
        authenticator = shared_authenticator(config)
    else:
        authenticator = Authenticator(config)
    reloader = ConfigReloader(loaded.path, config, governor)
    proxy = ProxyServer(
        config, authenticator, governor, writer, catalogs, approvals, auth_needs_io=authenticator.needs_io, worker=worker
    )
    proxies.append(proxy)
    agent = await _join_control_plane(config, proxy, approvals, worker)
    await proxy.start()
    # listen.mysql (docs/mysql.md); None when not set. With workers every worker serves it
    # (SO_REUSEPORT); KILLs of another worker's or node's sessions go over the PostgreSQL
    # listener's channels.
    mysql = None
    if config.listen.mysql is not None:  # the MySQL engine is imported only when it serves
        from dbsentry.server.mysql_proxy import start_mysql_listener

        mysql = await start_mysql_listener(
            config, authenticator, (lambda: governor.policy) if governor is not None else None, writer, approvals,
            auth_needs_io=authenticator.needs_io, catalogs=catalogs, worker=worker, channel=proxy.channel, node=proxy.node,
        )
    if mysql is not None:
        proxy.more_rows.append(mysql.session_rows)
    stop = stop if stop is not None else asyncio.Event()
    health: UpstreamHealth | None = None
    if config.limits.upstream_check_seconds > 0:  # with none yet: a SIGHUP reload may add some
        health = UpstreamHealth(config.connections, config.limits.upstream_check_seconds)
        await health.check_all()  # so "ready" says whether the upstreams answer
    _reload_targets(reloader, proxy, mysql, catalogs, health, agent, governor)
    if agent is not None and proxy.node is not None:  # other nodes' consoles may ask now
        proxy.node.channel.status = _worker_status(proxy, mysql, writer, health, agent)
    cluster = ClusterView(agent, proxy.node.channel, asyncio.get_running_loop()) if agent is not None and proxy.node is not None else None
    http_task = None
    http_addr = config.listen.http_addr if worker is None or worker.index == 0 else None  # one HTTP listener a node
    if http_addr is not None:
        # the web framework is imported only when it serves
        from dbsentry.web import WebContext, bind_http, create_app, serve_http

        try:
            sock = bind_http(*http_addr)
        except OSError as err:
            log.error("cannot listen for HTTP; not starting", extra={"fields": {"address": config.listen.http, "error": str(err)}})
            sys.exit(2)
        ctx = WebContext(
            config=config,
            authenticator=authenticator,
            audit_store=lambda: open_store(config.audit, config.state_dir),
            governor=governor,
            audit_writer=writer,
            index_catch_up=(
                CatchUp(config.audit.log_path(config.state_dir), writer.node, lambda: writer.durable_seq)
                if writer is not None
                else None
            ),
            approvals=approvals,
            # both listeners' sessions (with workers: every worker's, asked over their
            # sockets), each with its node and worker
            live_sessions=_on_node(
                (lambda: [*proxy.sessions.values(), *(mysql.sessions.values() if mysql is not None else ())])
                if worker is None
                else _every_worker_sessions(proxy),
                agent.node if agent is not None else node_id(config.audit.node, config.state_dir),
            ),
            # with a control plane: the other nodes' sessions, asked at each look
            remote_sessions=cluster.remote_sessions if cluster is not None else None,
            listener_up=proxy.listening,
            mysql_listener_up=mysql.listening if mysql is not None else None,
            upstreams=health.snapshot if health is not None else None,
            classification=(
                (lambda: {name: view.classmap for name, view in catalogs.service.views.items()})
                if catalogs is not None
                else None
            ),
            nodes=cluster.node_rows if cluster is not None else None,
            control_plane_up=(lambda: agent.up) if agent is not None else None,
        )
        if config.mcp.http and governor is not None:
            ctx.mcp = _mcp_endpoint(config, authenticator, governor, approvals, catalogs, writer, reloader)
        reloader.targets.append(functools.partial(setattr, ctx, "config"))  # the console's lists
        http_task = spawn(serve_http(create_app(ctx), *http_addr, stop, sock=sock), name="http")
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, _on_hup(governor, reloader))
        # The process is ours (not a test's thread): what start-up loaded (modules, policy,
        # catalogs) lives for good, so the collector's full passes no longer walk it; a
        # statement that builds a large tree then costs its own objects, not the heap's.
        gc.freeze()
    down = health.unreachable() if health is not None else []
    log.log(
        logging.WARNING if down else logging.INFO,
        "dbsentry ready, but upstreams do not answer" if down else "dbsentry ready",
        extra={
            "fields": {
                **({"unreachable": [f"{s.connection} ({s.address}): {s.error}" for s in down]} if down else {}),
                "config": str(loaded.path),
                "connections": sorted(config.connections),
                "policy": governor.version if governor else "passthrough",
                "audit": f"{config.audit.store}/{config.audit.durability}" if writer else "off",
                "masking": "on" if catalogs else "off",
                "http": config.listen.http if http_addr is not None else "off",
            }
        },
    )
    watcher = (
        asyncio.ensure_future(_watch_policy(governor, stop))  # noqa: TID251 - awaited below
        if governor is not None and config.policy
        else None
    )
    roles_check = (
        spawn(log_production_roles(config, governor.policy.production_environments), name="role-check")
        if governor is not None
        else None
    )
    health_task = spawn(health.run(stop), name="upstream-health") if health is not None else None
    stop_metrics = metrics.flush_every(asyncio.get_running_loop())  # per-statement counts, in batches
    if on_ready is not None:
        on_ready()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        if watcher is not None:
            await watcher
        if roles_check is not None and not roles_check.done():
            roles_check.cancel()
        if health_task is not None and not health_task.done():
            health_task.cancel()
        if http_task is not None:
            await http_task
        drain = config.limits.drain_seconds if worker is not None else 0.0
        if mysql is not None:
            mysql.stop_listening()  # neither listener takes new clients while the sessions drain
            await asyncio.gather(proxy.close(drain), mysql.close(drain))  # both drain at once
        else:
            await proxy.close(drain)
        if agent is not None:
            await asyncio.get_running_loop().run_in_executor(None, agent.close)
        if proxy.node is not None:
            await proxy.node.channel.close()
        if approvals is not None:
            approvals.close()
        if writer is not None:
            await writer.aclose()
        stop_metrics()
        authenticator.close()

"""Wires the parts together and runs until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from dbsentry.audit import AuditStoreError, AuditWriter, Signer, open_store
from dbsentry.config import Config, LoadedConfig
from dbsentry.identity import Authenticator
from dbsentry.policy import PolicyError
from dbsentry.server.catalogs import CatalogLoader
from dbsentry.server.proxy import ProxyServer
from dbsentry.session.governance import Governor
from dbsentry.session.masking import MaskingService, load_or_create_key

log = logging.getLogger("dbsentry")
POLICY_POLL_SECONDS = 2.0


async def _watch_policy(governor: Governor, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), POLICY_POLL_SECONDS)
        except TimeoutError:
            governor.reload_if_changed()


def open_writer(config: Config) -> AuditWriter:
    """The audit store and its group-commit writer, started."""
    acfg = config.audit
    try:
        store = open_store(acfg, config.state_dir)
    except AuditStoreError as err:
        log.error("cannot open the audit store; not starting", extra={"fields": {"reason": str(err)}})
        sys.exit(2)
    writer = AuditWriter(
        store,
        acfg.durability,
        signer=Signer.from_path(acfg.signing_key_path(config.state_dir)),
        checkpoint_every=acfg.checkpoint_every,
        checkpoint_seconds=acfg.checkpoint_seconds,
        async_flush_ms=acfg.async_flush_ms,
        sync_timeout=acfg.sync_timeout_seconds,
        max_batch=acfg.max_batch,
        max_queue=acfg.max_queue,
    )
    writer.start()
    return writer


async def run_server(loaded: LoadedConfig) -> None:
    config = loaded.config
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    governor: Governor | None = None
    writer: AuditWriter | None = None
    if config.passthrough:
        log.warning("passthrough: statements are neither checked nor audited (benchmarking only)")
    else:
        try:
            governor = Governor.from_path(config.policy)
        except PolicyError as err:
            log.error("invalid policy; not starting", extra={"fields": {"reason": str(err)}})
            sys.exit(2)
        writer = open_writer(config)
    catalogs: CatalogLoader | None = None
    if not config.passthrough and config.masking.enabled:
        key_path = config.masking.hash_key_file or config.state_dir / "masking.key"
        catalogs = CatalogLoader(config, MaskingService(config.masking, load_or_create_key(key_path)))
    authenticator = Authenticator(config)
    proxy = ProxyServer(config, authenticator, governor, writer, catalogs, auth_needs_io=authenticator.needs_io)
    await proxy.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if governor is not None:
        loop.add_signal_handler(signal.SIGHUP, governor.reload)
    log.info(
        "dbsentry ready",
        extra={
            "fields": {
                "config": loaded.path.name,
                "connections": sorted(config.connections),
                "policy": governor.version if governor else "passthrough",
                "audit": f"{config.audit.store}/{config.audit.durability}" if writer else "off",
                "masking": "on" if catalogs else "off",
            }
        },
    )
    watcher = (
        asyncio.ensure_future(_watch_policy(governor, stop))  # noqa: TID251 - awaited below
        if governor is not None and config.policy
        else None
    )
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        if watcher is not None:
            await watcher
        await proxy.close()
        if writer is not None:
            await writer.aclose()
        authenticator.close()

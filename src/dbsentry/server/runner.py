"""Wires the parts together and runs until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from dbsentry.config import LoadedConfig
from dbsentry.identity import Authenticator
from dbsentry.policy import PolicyError
from dbsentry.server.proxy import ProxyServer
from dbsentry.session.governance import Governor

log = logging.getLogger("dbsentry")
POLICY_POLL_SECONDS = 2.0


async def _watch_policy(governor: Governor, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), POLICY_POLL_SECONDS)
        except TimeoutError:
            governor.reload_if_changed()


async def run_server(loaded: LoadedConfig) -> None:
    config = loaded.config
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        governor = Governor.from_path(config.policy)
    except PolicyError as err:
        log.error("invalid policy; not starting", extra={"fields": {"reason": str(err)}})
        sys.exit(2)
    authenticator = Authenticator(config)
    proxy = ProxyServer(config, authenticator, governor, auth_needs_io=authenticator.needs_io)
    await proxy.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, governor.reload)
    log.info(
        "dbsentry ready",
        extra={
            "fields": {
                "config": loaded.path.name,
                "connections": sorted(config.connections),
                "policy": governor.version,
            }
        },
    )
    watcher = asyncio.ensure_future(_watch_policy(governor, stop)) if config.policy else None  # noqa: TID251
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        if watcher is not None:
            await watcher
        await proxy.close()
        authenticator.close()

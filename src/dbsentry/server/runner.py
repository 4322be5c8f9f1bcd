"""Wires the parts together and runs until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from dbsentry.config import LoadedConfig
from dbsentry.identity import Authenticator
from dbsentry.server.proxy import ProxyServer

log = logging.getLogger("dbsentry")


async def run_server(loaded: LoadedConfig) -> None:
    config = loaded.config
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    authenticator = Authenticator(config)
    proxy = ProxyServer(config, authenticator, auth_needs_io=authenticator.needs_io)
    await proxy.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("dbsentry ready", extra={"fields": {"config": loaded.path.name, "connections": sorted(config.connections)}})
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await proxy.close()
        authenticator.close()

"""What a tools instance needs from the configuration: the proxy's address, the policy,
the approvals store and (outside the proxy's process) the masking classification."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from dbsentry.agents.wire import ProxyAddress

if TYPE_CHECKING:
    from dbsentry.approvals.store import ApprovalStore
    from dbsentry.config import Config


def proxy_address(config: Config) -> ProxyAddress:
    """Where the tools connect: ``mcp.proxy_host``/``proxy_port``, else ``listen.postgres``;
    MySQL connections to the same host at ``listen.mysql``'s port (None: not served)."""
    host, port = config.listen.postgres_addr
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    mysql = config.listen.mysql_addr
    return ProxyAddress(
        config.mcp.proxy_host or host, config.mcp.proxy_port or port, "require", mysql[1] if mysql is not None else None
    )


def lazy_approval_store(config: Config) -> tuple[Callable[[], ApprovalStore | None], Callable[[], None]]:
    """The approvals store of ``config``, opened on first use; and a function that closes it."""
    from dbsentry.approvals import ApprovalStoreError, open_approval_store

    lock = threading.Lock()
    held: list[ApprovalStore] = []

    def get() -> ApprovalStore | None:
        with lock:
            if not held:
                try:
                    held.append(open_approval_store(config.audit, config.state_dir, config.control_plane))
                except ApprovalStoreError:
                    return None
            return held[0]

    def close() -> None:
        with lock:
            for store in held:
                store.close()
            held.clear()

    return get, close

"""What the web app needs from the running proxy, handed to :func:`create_app`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dbsentry.webconfig import WebConfig

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from dbsentry.audit import AuditLog, AuditStore
    from dbsentry.config import Config
    from dbsentry.engines.postgres.session.governance import Governor
    from dbsentry.identity import Authenticator


class UpstreamState(Protocol):
    """What the last probe of a connection's upstream found (the proxy's
    ``server.upstream_health.UpstreamStatus``): None before the first probe."""

    @property
    def reachable(self) -> bool | None: ...

    def to_dict(self) -> dict[str, object]: ...


def _no_sessions() -> Iterable[Any]:
    return ()


@dataclass(slots=True)
class WebContext:
    """The proxy's parts the console reads and acts through.

    ``audit_store`` is called once, when the app starts, for a store used only for reading
    (it opens its own connections; the writer keeps its own).  ``live_sessions`` returns the
    proxy's open client connections (objects with a ``.session``) or the sessions
    themselves.  ``approvals`` is the approvals store when that feature is present;
    ``classification`` returns each connection's classification map when masking is.
    ``listener_up`` says whether the PostgreSQL listener accepts connections (and
    ``mysql_listener_up`` the MySQL one, when there is one) and
    ``upstreams`` what the last probe of each connection's upstream found (readiness).
    """

    config: Config
    authenticator: Authenticator
    audit_store: Callable[[], AuditStore]
    governor: Governor | None = None
    audit_writer: AuditLog | None = None
    approvals: Any | None = None
    live_sessions: Callable[[], Iterable[Any]] = _no_sessions
    web: WebConfig | None = None
    listener_up: Callable[[], bool] | None = None
    mysql_listener_up: Callable[[], bool] | None = None
    upstreams: Callable[[], Mapping[str, UpstreamState]] | None = None
    classification: Callable[[], Mapping[str, Any]] | None = None
    # with control_plane: the other nodes' live sessions (rows) and the workers whose sessions
    # are missing (they did not answer); the live nodes' workers (rows, with their answer);
    # whether the control plane is reachable
    remote_sessions: Callable[[], tuple[list[dict[str, Any]], list[dict[str, Any]]]] | None = None
    nodes: Callable[[], list[dict[str, Any]]] | None = None
    control_plane_up: Callable[[], bool] | None = None
    public_keys: Callable[[], Sequence[Ed25519PublicKey]] | None = None
    # brings the index up to date with the logs before a read (the proxy passes one)
    index_catch_up: Callable[[AuditStore], None] | None = None
    # the MCP endpoint (dbsentry.agents.http.McpHttp): an ASGI app for its ``paths``, with
    # a ``lifespan()`` the app runs
    mcp: Any | None = None
    clock: Callable[[], float] = field(default=time.time)

    @property
    def web_config(self) -> WebConfig:
        """``web`` if given, else the configuration's ``web:`` section, else the defaults."""
        if self.web is not None:
            return self.web
        section = getattr(self.config, "web", None)
        return section if isinstance(section, WebConfig) else WebConfig()

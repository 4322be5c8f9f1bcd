"""The web console, the HTTP API and Prometheus metrics, served by the proxy's process.

    app = create_app(WebContext(config, authenticator, audit_store=..., governor=...))
    await serve_http(app, host, port, stop_event)

The proxy reports what happens through :mod:`dbsentry.metrics`.  The names below are
imported on first use, so reading the configuration does not load the web framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbsentry.web.app import create_app
    from dbsentry.web.context import WebContext
    from dbsentry.web.serve import bind_http, serve_http
    from dbsentry.webconfig import WebConfig

_WHERE = {
    "create_app": "dbsentry.web.app",
    "WebConfig": "dbsentry.webconfig",
    "WebContext": "dbsentry.web.context",
    "bind_http": "dbsentry.web.serve",
    "serve_http": "dbsentry.web.serve",
}

__all__ = ["WebConfig", "WebContext", "bind_http", "create_app", "serve_http"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(name)

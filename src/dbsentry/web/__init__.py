"""The web console, the HTTP API and Prometheus metrics, served by the proxy's process.

    app = create_app(WebContext(config, authenticator, audit_store=..., governor=...))
    await serve_http(app, host, port, stop_event)

The proxy reports what happens through :mod:`dbsentry.metrics`.  The names below are
imported on first use, so reading the configuration does not load the web framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dbsentry.lazy import exports

if TYPE_CHECKING:
    from dbsentry.web.app import create_app
    from dbsentry.web.context import WebContext
    from dbsentry.web.serve import bind_http, serve_http
    from dbsentry.webconfig import WebConfig

__all__ = ["WebConfig", "WebContext", "bind_http", "create_app", "serve_http"]

if not TYPE_CHECKING:  # imported when first used (dbsentry/lazy.py)
    __getattr__ = exports(
        __name__,
        {"app": ("create_app",), "context": ("WebContext",), "serve": ("bind_http", "serve_http"), "dbsentry.webconfig": ("WebConfig",)},
    )

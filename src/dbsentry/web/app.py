"""The ASGI app: the API, the console's static files, health, readiness and metrics."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dbsentry import __version__ as _version
from dbsentry import metrics
from dbsentry.web.access import Capability, require
from dbsentry.web.api import GATE_ERRORS, ErrorBody, errors
from dbsentry.web.auth import AuthError
from dbsentry.web.context import WebContext
from dbsentry.web.gate import Gate, error_headers
from dbsentry.web.routes import build_router
from dbsentry.web.service import WebServices

log = logging.getLogger("dbsentry.web")

STATIC_DIR = Path(__file__).parent / "static"

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'; object-src 'none'"
)
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", _CSP.encode()),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


class _Headers:
    """Security headers on every response, ``no-store`` on the API, and request metrics.

    Plain ASGI rather than BaseHTTPMiddleware so the live feed streams unbuffered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        api = path.startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(_SECURITY_HEADERS)
                if api:
                    if not any(k == b"cache-control" for k, _ in headers):
                        headers.append((b"cache-control", b"no-store"))
                    metrics.api_request(int(message["status"]))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(ctx: WebContext) -> FastAPI:
    """The console and API over ``ctx``; serve it with :func:`serve_http`."""
    svc = WebServices(ctx)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            if ctx.mcp is not None:
                async with ctx.mcp.lifespan():
                    yield
            else:
                yield
        finally:
            svc.stopping.set()
            await anyio.to_thread.run_sync(svc.close)

    app = FastAPI(
        title="dbsentry",
        version=_version,
        summary="Identity-aware PostgreSQL proxy: sessions, audit, approvals, policy",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # Swagger UI loads from a CDN; the console links the JSON instead
        redoc_url=None,
        lifespan=lifespan,
        # Starlette would answer /static or /api/v1/me/ with a redirect to an absolute URL
        # built from the Host header; a wrong path is a 404 instead.
        redirect_slashes=False,
    )
    app.state.web_services = svc
    api = build_router(svc)
    app.include_router(api)
    public = [Depends(require(Capability.PUBLIC))]

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, err: AuthError) -> JSONResponse:
        return JSONResponse(
            {"detail": err.message}, status_code=err.status, headers=error_headers(err)
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in err.errors()
        ]
        first = problems[0] if problems else {"loc": [], "msg": "invalid input"}
        where = ".".join(first["loc"])
        detail = f"{where}: {first['msg']}" if where else str(first["msg"])
        body = ErrorBody(detail=detail, errors=problems)
        return JSONResponse(body.model_dump(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": str(err.detail)}, status_code=err.status_code, headers=err.headers
        )

    @app.get(
        "/healthz",
        tags=["health"],
        summary="Liveness: the process answers",
        dependencies=public,
        responses=errors(*GATE_ERRORS),
    )
    async def healthz() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        summary="Readiness: the audit trail (every worker's), the listeners and every upstream work",
        dependencies=public,
        responses={
            **errors(*GATE_ERRORS),
            503: {"description": "not ready: the checks, and `failing`: which parts fail (an upstream with its address and error)"},
        },
    )
    def readyz() -> JSONResponse:
        checks: dict[str, Any] = {}
        failing: list[str] = []
        writer = ctx.audit_writer
        if writer is not None:
            checks["audit_writer"] = writer.healthy
        else:
            try:
                svc.store.head()
                checks["audit_store"] = True
            except Exception as err:
                log.warning("readiness: audit store unreadable: %s", err)
                checks["audit_store"] = False
        # With workers this is worker 0; the others' audit trails count too (their lowest).
        every_worker = metrics.workers_audit_healthy()
        if every_worker is not None:
            checks["audit_workers"] = every_worker
        # With workers, a listener counts when every live worker's accepts clients (their
        # dbsentry_listener_up), this one's included; how many do is in the body.
        listening: dict[str, dict[str, int]] = {}
        for name, check, own in (("postgres", "listener", ctx.listener_up), ("mysql", "listener:mysql", ctx.mysql_listener_up)):
            if own is None:
                continue
            ok = bool(own())
            workers = metrics.workers_listening(name)
            if workers is not None:
                serving, reported = workers
                listening[name] = {"workers": reported, "listening": serving}
                ok = ok and serving == reported
            checks[check] = ok
        if ctx.control_plane_up is not None:
            checks["control_plane"] = bool(ctx.control_plane_up())
        failing += [name for name, ok in checks.items() if not ok]
        body: dict[str, Any] = {"checks": checks}
        if listening:
            body["workers_listening"] = listening
        if ctx.upstreams is not None:
            upstreams = ctx.upstreams()
            for name, up in upstreams.items():
                checks[f"upstream:{name}"] = up.reachable is not False  # unknown until probed
                if up.reachable is False:
                    d = up.to_dict()
                    failing.append(f"upstream:{name} ({d['address']}): {d['error']}")
            body["upstreams"] = {name: up.to_dict() for name, up in upstreams.items()}
        ready = not failing
        if failing:
            body["failing"] = failing
        return JSONResponse(
            {"status": "ready" if ready else "not ready", **body},
            status_code=200 if ready else 503,
        )

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        response_class=Response,
        dependencies=public,
        responses={
            **errors(*GATE_ERRORS),
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        },
    )
    def prometheus() -> Response:
        if ctx.audit_writer is not None:
            metrics.set_audit_healthy(ctx.audit_writer.healthy)
        try:
            pending = svc.approvals.pending_count()
        except Exception as err:  # the approvals store failing must not break scraping
            log.warning("metrics: pending approvals unknown: %s", err)
            pending = None
        if pending is not None:
            metrics.set_pending_approvals(pending)
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False, dependencies=public)
    async def console() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/approvals/{request_id}", include_in_schema=False, dependencies=public)
    async def approval_link(request_id: str) -> FileResponse:
        # Approval notifications link here; the console shows the request.
        return await console()

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if ctx.mcp is not None:  # streamable HTTP for AI agents and its metadata (docs/mcp.md)
        for path in ctx.mcp.paths:
            app.router.routes.append(Route(path, endpoint=ctx.mcp, include_in_schema=False))

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a dbsentry token (dbs_...) or an OIDC JWT",
                }
            }
            for path, ops in schema.get("paths", {}).items():
                for op in ops.values():
                    if path.startswith("/api/"):
                        op["security"] = [{"bearer": []}]
                    # one error shape everywhere, 422 included (not FastAPI's default)
                    bad = op.get("responses", {}).get("422")
                    if bad is not None:
                        bad["content"] = {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorBody"}
                            }
                        }
            components = schema.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # The gate runs inside _Headers, so its own answers carry the security headers too.
    app.state.routes = lambda: [
        *api.routes,
        *(r for r in app.router.routes if isinstance(r, Route | Mount)),  # APIRoute is a Route
    ]
    app.add_middleware(Gate, svc=svc, routes=app.state.routes)
    app.add_middleware(_Headers)
    return app

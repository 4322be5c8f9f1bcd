"""Streamable HTTP at ``/mcp`` on the proxy's HTTP listener, with bearer tokens.

A request needs ``Authorization: Bearer <dbsentry token or OIDC JWT>``; without a valid one
it gets 401 and ``WWW-Authenticate: Bearer ... resource_metadata="<url>"`` pointing at the
protected-resource metadata document (RFC 9728, as MCP's authorization spec requires),
served at ``/.well-known/oauth-protected-resource/mcp``: it names the OIDC issuer, when
one is configured, as the authorization server.  The token is verified by the proxy's own
authenticator (and its failed-login limiter), and the tools then log in to the proxy's
PostgreSQL listener with that same token.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import orjson
from mcp.server.mcpserver import Context
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import Receive, Scope, Send

from dbsentry.agents.auditref import AuditLookup
from dbsentry.agents.errors import ToolRefused
from dbsentry.agents.runs import new_run_id
from dbsentry.agents.server import build_server
from dbsentry.agents.tools import Agent, Tools

if TYPE_CHECKING:
    from dbsentry.config import Config
    from dbsentry.identity import Authenticator

log = logging.getLogger("dbsentry.agents")

MCP_PATH = "/mcp"
METADATA_PATH = "/.well-known/oauth-protected-resource/mcp"
_STATE_KEY = "dbsentry_mcp_agent"


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str
    headers: dict[str, str]


def _base_url(config: Config, scope: Scope) -> str:
    if config.web.public_url:
        return config.web.public_url.rstrip("/")
    host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
    if host is None:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope.get('scheme', 'http')}://{host}"


def metadata_document(config: Config, base: str) -> dict[str, Any]:
    """The protected-resource metadata of ``/mcp`` (RFC 9728)."""
    doc: dict[str, Any] = {
        "resource": base + MCP_PATH,
        "bearer_methods_supported": ["header"],
        "resource_name": "dbsentry MCP server",
        "resource_documentation": "https://github.com/dbsentry/dbsentry/blob/main/docs/mcp.md",
    }
    oidc = config.identity.oidc
    doc["authorization_servers"] = [oidc.issuer] if oidc is not None else []
    return doc


class McpHttp:
    """The ASGI app for ``/mcp`` and its metadata document; :meth:`lifespan` runs the sessions."""

    paths = (MCP_PATH, METADATA_PATH)

    def __init__(self, config: Config, authenticator: Authenticator, tools: Tools) -> None:
        self.config = config
        self.authenticator = authenticator
        self.tools = tools

        async def agent_of(ctx: Context) -> Agent:
            request = ctx.request_context.request
            state = getattr(request, "scope", {}).get("state", {}) if request is not None else {}
            agent = state.get(_STATE_KEY)
            if not isinstance(agent, Agent):
                raise ToolRefused("not authenticated")
            return agent

        self.server = build_server(tools, agent_of, new_run_id)
        self.manager = StreamableHTTPSessionManager(
            app=self.server._lowlevel_server,
            json_response=False,
            stateless=False,
            # The console's gate checks the Host header before this app sees the request.
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )

    def reconfigure(self, config: Config) -> None:
        """A SIGHUP reload's connections (the rest of ``config`` is as it was)."""
        self.config = config
        self.tools.config = config

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with self.manager.run():
            try:
                yield
            finally:
                await self.tools.wire.close()
                self.tools.waits.close()
                if self.tools.audit is not None:
                    self.tools.audit.close()

    def _authenticate(self, scope: Scope) -> Agent | Refusal:
        from dbsentry.web.auth import AuthError, authenticate, bearer_token

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client = scope.get("client")
        source = client[0] if client else "unknown"
        header = headers.get("authorization")
        base = _base_url(self.config, scope)
        challenge = f'Bearer realm="dbsentry", resource_metadata="{base}{METADATA_PATH}"'
        try:
            principal = authenticate(self.authenticator, self.config.web, header, source)
        except AuthError as err:
            if err.status == 429:
                return Refusal(429, err.message, {"Retry-After": str(err.retry_after or 60)})
            given = header is not None and bearer_token(header) is not None
            extra = ', error="invalid_token", error_description="the token is invalid, expired or revoked"' if given else ""
            return Refusal(401, err.message, {"WWW-Authenticate": challenge + extra})
        if principal.identity.kind != "agent" and not self.config.mcp.allow_humans:
            return Refusal(403, f"{principal.name} is a person, not an agent: the MCP server takes agents' tokens (mcp.allow_humans)", {})
        token = bearer_token(header)
        assert token is not None
        return Agent(principal.identity, token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == METADATA_PATH:
            body = orjson.dumps(metadata_document(self.config, _base_url(self.config, scope)))
            await _send(send, 200, body, {"content-type": "application/json", "cache-control": "max-age=300"})
            return
        got = await anyio.to_thread.run_sync(self._authenticate, scope)
        if isinstance(got, Refusal):
            await _send(send, got.status, orjson.dumps({"detail": got.message}), {"content-type": "application/json", **got.headers})
            return
        scope.setdefault("state", {})[_STATE_KEY] = got
        await self.manager.handle_request(scope, receive, send)


async def _send(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def build_http(
    config: Config,
    authenticator: Authenticator,
    governor: Any,
    approvals: Callable[[], Any],
    views: Callable[[str], Any] | None,
    audit: AuditLookup | None = None,
) -> McpHttp:
    """The ``/mcp`` endpoint of a running proxy (built by the runner, mounted by the web app)."""
    from dbsentry.agents.local import proxy_address
    from dbsentry.agents.wire import Wire

    tools = Tools(config, Wire(proxy_address(config)), governor=governor, approvals=approvals, views=views, audit=audit)
    return McpHttp(config, authenticator, tools)

"""The request gate: what every HTTP request passes before the app reads a byte of its body.

In order: the Host header against the allow-list (400); the caller's token and the route's
capability (401, 429, 403); the body's size (413), its arrival in time (408) and, for JSON,
its nesting (422).  The API audits every request here, including the refused ones, unless
its handler recorded it already.  Plain ASGI, so the live feed streams unbuffered.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import orjson
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dbsentry.web.access import Capability, Require
from dbsentry.web.auth import AuthError, Principal

if TYPE_CHECKING:
    from dbsentry.web.service import WebServices

log = logging.getLogger("dbsentry.web")

#: JSON bodies nest at most this deep (ours nest two levels).
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")
_REASON_BYTES = 600


class Refused(Exception):
    """A request the gate answers itself."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def error_headers(err: AuthError) -> dict[str, str]:
    if err.status == 401:
        return {"WWW-Authenticate": 'Bearer realm="dbsentry"'}
    if err.status == 429:
        return {"Retry-After": str(err.retry_after or 60)}
    return {}


def json_depth(body: bytes) -> int:
    """How deep ``body`` nests arrays and objects (strings skipped); O(len(body))."""
    depth = deepest = 0
    for m in _JSON_BRACKET.finditer(_JSON_STRING.sub(b'""', body)):
        if m.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def host_allowed(host: str | None, allowed: list[str] | None, public_url: str | None) -> bool:
    """``host`` (a Host header) against ``web.allowed_hosts``; see WebConfig for None."""
    if host is None:
        return True  # HTTP/1.0 without Host: no browser sends that, so no rebinding
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host
    else:
        name, sep, port = host.rpartition(":")
        if not sep or not port.isdigit():
            name = host
    name = name.rstrip(".")
    if allowed is not None:
        return "*" in allowed or name in allowed or host in allowed
    if name == "localhost" or (public_url is not None and name == urlsplit(public_url).hostname):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Gate:
    """The ASGI middleware in front of the app; ``routes`` gives the app's routes."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        svc: WebServices,
        routes: Callable[[], list[BaseRoute]],
    ) -> None:
        self.app = app
        self.svc = svc
        self.routes = routes
        self._declared: dict[int, Require | None] = {}

    def requirement(self, scope: Scope) -> tuple[Require | None, str | None, set[str]]:
        """The capability the request's route declares, the route's path template, and
        (when only the method is wrong) the methods the path takes.

        An API path that matches no route still needs a signed-in caller (it gets its 404 or
        405 after that); an API route that declares nothing is refused to everyone."""
        api = scope["path"].startswith("/api/")
        template = None
        allow: set[str] = set()
        for route in self.routes():
            match, _ = route.matches(scope)
            if match is Match.FULL:
                declared = self._declaration(route)
                template = getattr(route, "path", None)
                if declared is not None:
                    return declared, template, set()
                if hasattr(route, "dependant") and api:
                    return None, template, set()  # declares no capability: refused to all
                return Require(Capability.PUBLIC), template, set()
            if match is Match.PARTIAL:
                template = template or getattr(route, "path", None)
                allow.update(getattr(route, "methods", None) or ())
        return Require(Capability.SIGNED_IN if api else Capability.PUBLIC), template, allow

    def _declaration(self, route: BaseRoute) -> Require | None:
        key = id(route)
        if key not in self._declared:
            dependant = getattr(route, "dependant", None)
            found = [
                d.call
                for d in (dependant.dependencies if dependant is not None else [])
                if isinstance(d.call, Require)
            ]
            self._declared[key] = found[0] if len(found) == 1 else None
        return self._declared[key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")
        state: dict[str, Any] = scope.setdefault("state", {})
        sent: dict[str, Any] = {"status": None, "reason": b""}

        async def tracking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = int(message["status"])
            elif message["type"] == "http.response.body" and (sent["status"] or 0) >= 400:
                sent["reason"] = (sent["reason"] + message.get("body", b""))[:_REASON_BYTES]
            await send(message)

        template: str | None = None
        try:
            try:
                required, template, allow = self.requirement(scope)
                if required is None:
                    raise Refused(403, "this route declares no capability")
                receive = await self._admit(scope, receive, required)
                if allow:  # every method the path takes, not only the first route's
                    raise Refused(405, "Method Not Allowed", {"Allow": ", ".join(sorted(allow))})
            except Refused as err:
                await _answer(tracking_send, err.status, err.detail, err.headers)
                return
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("HTTP request failed: %s %s", scope.get("method"), scope["path"])
            if sent["status"] is None:
                await _answer(tracking_send, 500, "internal error; the proxy's log says more")
            else:
                raise
        finally:
            if api:
                self._audit(scope, state, template, sent)

    async def _admit(self, scope: Scope, receive: Receive, required: Require) -> Receive:
        """Check the Host, the caller and the body; the ``receive`` to give the app."""
        web = self.svc.web
        headers = _headers(scope)
        if not host_allowed(headers.get("host"), web.allowed_hosts, web.public_url):
            raise Refused(400, "this Host is not in web.allowed_hosts")
        if required.capability is not Capability.PUBLIC:
            try:
                await anyio.to_thread.run_sync(self.svc.admit, scope, required)
            except AuthError as err:
                raise Refused(err.status, err.message, error_headers(err)) from None
        limit = max(web.max_body_bytes, required.max_body or 0)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or len(length) > 15:
                raise Refused(400, "Content-Length is not a number")
            if int(length) > limit:
                raise Refused(413, f"the body is larger than this route's limit of {limit} bytes")
            if int(length) == 0:
                return receive
        elif "chunked" not in headers.get("transfer-encoding", ""):
            return receive
        body = await _read_body(receive, limit, web.body_timeout_seconds)
        if "json" in headers.get("content-type", "") and json_depth(body) > MAX_JSON_DEPTH:
            raise Refused(422, f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
        return _replay(body, receive)

    def _audit(
        self, scope: Scope, state: dict[str, Any], template: str | None, sent: dict[str, Any]
    ) -> None:
        status = sent["status"] or 500
        if state.get("audited") and status < 400:
            return
        reason = None
        if status >= 400:
            try:
                reason = str(orjson.loads(sent["reason"]).get("detail"))[:300]
            except (orjson.JSONDecodeError, AttributeError):
                reason = None
        client = scope.get("client")
        who = state.get("principal")
        try:
            self.svc.audit(
                who if isinstance(who, Principal) else None,
                state.get("action") or f"{scope['method']} {template or 'unknown path'}",
                client[0] if client else None,
                {"status": status, "reason": reason, "path": None if template else scope["path"][:200]},
            )
        except Exception as err:  # a read is served even when it cannot be audited
            log.warning("API request not audited: %s", err)


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        name = k.decode("latin-1").lower()
        value = v.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out and name != "host" else value
    return out


async def _read_body(receive: Receive, limit: int, seconds: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(seconds):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Refused(400, "the client went away")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise Refused(413, f"the body is larger than this route's limit of {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise Refused(408, f"the body did not arrive within {seconds:g} s") from None


def _replay(body: bytes, receive: Receive) -> Receive:
    done = False

    async def replay() -> Message:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = orjson.dumps({"detail": detail})
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()),
    ]
    raw.append((b"connection", b"close"))  # what is left of the request is never read
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})

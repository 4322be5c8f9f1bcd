"""Who is calling the API: a bearer token (dbsentry token or OIDC JWT) and its roles.

The token proves the identity by itself, so unlike a database login no user name is
given.  Failures count against the caller's address in the authenticator's failure
limiter, the same one database logins use, so the API is no easier to guess tokens at.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from dbsentry.identity.model import Identity
from dbsentry.identity.tokens import TOKEN_PREFIX
from dbsentry.web.config import Role, WebConfig

log = logging.getLogger("dbsentry.web")

MAX_TOKEN_CHARS = 64 * 1024


class AuthError(Exception):
    """The request is not authenticated (401), is rate limited (429) or lacks a role (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated API caller."""

    identity: Identity
    roles: frozenset[Role]

    @property
    def name(self) -> str:
        return self.identity.name

    def has(self, roles: Iterable[Role]) -> bool:
        return not self.roles.isdisjoint(roles)


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def identify(authenticator: object, token: str, source: str) -> Identity | None:
    """The identity ``token`` proves, or None; counts failures against ``source``.

    Blocking (SQLite, maybe the OIDC provider's keys): call it from a worker thread.
    """
    limiter = getattr(authenticator, "limiter", None)
    if limiter is not None and limiter.blocked(source):
        raise AuthError(429, "too many failed logins from this address; try again later")
    identity: Identity | None = None
    if len(token) <= MAX_TOKEN_CHARS:
        if token.startswith(TOKEN_PREFIX):
            tokens = getattr(authenticator, "tokens", None)
            identity = tokens.verify(token) if tokens is not None else None
        elif token.count(".") == 2:
            oidc = getattr(authenticator, "oidc", None)
            identity = oidc.verify(token) if oidc is not None else None
    if limiter is not None:
        if identity is None:
            limiter.record_failure(source)
        else:
            limiter.record_success(source)
    if identity is None:
        log.info("API login from %s failed", source)
    return identity


def principal_for(identity: Identity, web: WebConfig) -> Principal:
    return Principal(identity, web.roles_for(identity.groups))

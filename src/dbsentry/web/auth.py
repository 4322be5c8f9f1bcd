"""Who is calling the API: a bearer token (dbsentry token or OIDC JWT) and its roles.

The token proves the identity by itself, so unlike a database login no user name is
given.  Failures count in the authenticator's login limiter, the one database logins use,
by address and by the identity the token claims, so the API is no easier to guess at.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dbsentry.identity.model import Identity
from dbsentry.identity.ratelimit import LoginThrottled
from dbsentry.webconfig import Role, WebConfig

if TYPE_CHECKING:
    from dbsentry.identity import Authenticator

log = logging.getLogger("dbsentry.web")

MAX_TOKEN_CHARS = 64 * 1024


class AuthError(Exception):
    """The request is not authenticated (401), is rate limited (429) or may not (403)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


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


def authenticate(
    authenticator: Authenticator, web: WebConfig, header: str | None, source: str
) -> Principal:
    """The caller an ``Authorization`` header proves, or AuthError (401, or 429 when the
    login limiter refuses the attempt unchecked).

    Blocking (SQLite, maybe the OIDC provider's keys): call it from a worker thread.
    """
    token = bearer_token(header)
    if token is None:
        raise AuthError(401, "send Authorization: Bearer <dbsentry token or OIDC JWT>")
    if len(token) > MAX_TOKEN_CHARS:
        raise AuthError(401, "the token is invalid, expired or revoked")
    try:
        identity = authenticator.authenticate_token(token, source)
    except LoginThrottled as refused:
        raise AuthError(429, refused.message, refused.retry_after) from None
    if identity is None:
        raise AuthError(401, "the token is invalid, expired or revoked")
    return principal_for(identity, web)


def principal_for(identity: Identity, web: WebConfig) -> Principal:
    return Principal(identity, web.roles_for(identity.groups))

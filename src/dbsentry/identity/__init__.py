"""Who is connecting: dbsentry tokens, OIDC JWTs and failed-login limiting.

A client connects with ``user=<identity>`` and ``password=<token>``, where the token is a
dbsentry token (``dbs_...``) or a JWT from the configured OIDC provider.
:meth:`Authenticator.authenticate` turns that pair into an :class:`Identity`, or None.

It is synchronous.  It touches the token store (local SQLite, or the shared control plane), and, only when OIDC is configured
with ``jwks_url`` and the keys need refreshing, the network (up to ten seconds).  So the shell
calls it directly when :attr:`Authenticator.needs_io` is false and in a thread executor
(``loop.run_in_executor``) when it is true; everything here is thread-safe.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from dbsentry.identity.model import Identity, Kind
from dbsentry.identity.ratelimit import Limits, LoginLimiter, LoginThrottled
from dbsentry.identity.tokens import (
    TOKEN_PREFIX,
    TokenInfo,
    TokenStore,
    TokenStoreBase,
    parse_duration,
)
from dbsentry.lazy import exports

if TYPE_CHECKING:
    from dbsentry.config import Config
    from dbsentry.identity.oidc import OIDCVerifier

__all__ = [
    "Authenticator",
    "Identity",
    "Kind",
    "LoginLimiter",
    "LoginThrottled",
    "OIDCVerifier",
    "TokenInfo",
    "TokenStore",
    "parse_duration",
]

log = logging.getLogger("dbsentry.identity")

# Far above any real token (a JWT with a long group list is a few KB); longer passwords are
# rejected before any parsing.
MAX_PASSWORD_CHARS = 64 * 1024


def _looks_like_jwt(password: str) -> bool:
    return password.count(".") == 2


class Authenticator:
    """Checks a client's user name and password (a token) against the configured sources."""

    def __init__(
        self,
        config: Config,
        *,
        tokens: TokenStoreBase | None = None,
        oidc: OIDCVerifier | None = None,
        limiter: Limits | None = None,
        fetch: Callable[[str], bytes] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Builds the parts from ``config``; any given part is used instead (for tests).

        ``fetch`` and ``clock`` go to the OIDC verifier and the failure limiter it builds.
        """
        ident = config.identity
        if tokens is None:
            from dbsentry.controlplane import token_store  # the control plane's, if configured

            tokens = token_store(config)
        self.tokens: TokenStoreBase = tokens
        if oidc is None and ident.oidc is not None:
            from dbsentry.identity.oidc import OIDCVerifier  # JWT and cryptography: only when used

            oidc = OIDCVerifier(ident.oidc, fetch, clock=clock)
        self.oidc = oidc
        self.limiter: Limits = (
            limiter
            if limiter is not None
            else LoginLimiter(
                ident.max_failures,
                ident.failure_window_seconds,
                max_failures_per_address=ident.max_failures_per_address,
                max_backoff_seconds=ident.max_backoff_seconds,
                clock=clock,
            )
        )

    @property
    def needs_io(self) -> bool:
        """True if authenticate may block on the network: call it in a thread executor."""
        return self.oidc is not None and self.oidc.needs_io

    def close(self) -> None:
        self.tokens.close()

    def authenticate(self, user: str, password: str, source: str) -> Identity | None:
        """The identity proved by ``password`` if its name is exactly ``user``, else None.

        ``source`` is the client's address (without the port).  Raises
        :class:`LoginThrottled`, without checking the password, after too many failures for
        ``user`` from ``source`` or from ``source`` as a whole.
        """
        identity = self._attempt(source, user, password, user)
        if identity is None:
            log.info("login as %r from %s failed", user, source)
        return identity

    def authenticate_token(self, token: str, source: str) -> Identity | None:
        """The identity ``token`` proves by itself (the HTTP API: no user name is sent).

        Failures count against the identity the token claims (see :func:`claimed_identity`);
        raises :class:`LoginThrottled` like :meth:`authenticate`.
        """
        identity = self._attempt(source, self.claimed_identity(token), token, None)
        if identity is None:
            log.info("API login from %s failed", source)
        return identity

    def claimed_identity(self, token: str) -> str:
        """Who ``token`` says it is, unverified: the key its failures count under."""
        if len(token) > MAX_PASSWORD_CHARS:
            return "?"
        if token.startswith(TOKEN_PREFIX):
            return "token:" + token[len(TOKEN_PREFIX) :].partition("_")[0][:64]
        if self.oidc is not None and _looks_like_jwt(token):
            return "jwt:" + self.oidc.claimed_name(token)[:256]
        return "?"

    def _attempt(
        self, source: str, claimed: str, secret: str, user: str | None
    ) -> Identity | None:
        """Check ``secret`` (and that it names ``user``, when given) unless throttled."""
        self.limiter.check(source, claimed)
        identity = self._check(secret)
        if identity is not None and user is not None and identity.name != user:
            log.debug("login from %s: token for %r presented with user %r", source, identity.name, user)
            identity = None
        if identity is None:
            self.limiter.failure(source, claimed)
        else:
            self.limiter.success(source, claimed)
        return identity

    def _check(self, password: str) -> Identity | None:
        if len(password) > MAX_PASSWORD_CHARS:
            return None
        if password.startswith(TOKEN_PREFIX):
            return self.tokens.verify(password)
        if self.oidc is not None and _looks_like_jwt(password):
            return self.oidc.verify(password)
        return None


if not TYPE_CHECKING:  # imported when first used (dbsentry/lazy.py)
    __getattr__ = exports(__name__, {"oidc": ("OIDCVerifier",)})

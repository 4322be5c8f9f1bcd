"""Who is connecting: dbsentry tokens, OIDC JWTs and failed-login limiting.

A client connects with ``user=<identity>`` and ``password=<token>``, where the token is a
dbsentry token (``dbs_...``) or a JWT from the configured OIDC provider.
:meth:`Authenticator.authenticate` turns that pair into an :class:`Identity`, or None.

It is synchronous.  It touches the local SQLite token store, and, only when OIDC is configured
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
from dbsentry.identity.oidc import OIDCVerifier
from dbsentry.identity.ratelimit import FailureLimiter
from dbsentry.identity.tokens import TOKEN_PREFIX, TokenInfo, TokenStore, parse_duration

if TYPE_CHECKING:
    from dbsentry.config import Config

__all__ = [
    "Authenticator",
    "FailureLimiter",
    "Identity",
    "Kind",
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
        tokens: TokenStore | None = None,
        oidc: OIDCVerifier | None = None,
        limiter: FailureLimiter | None = None,
        fetch: Callable[[str], bytes] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Builds the parts from ``config``; any given part is used instead (for tests).

        ``fetch`` and ``clock`` go to the OIDC verifier and the failure limiter it builds.
        """
        ident = config.identity
        self.tokens = tokens if tokens is not None else TokenStore(config.state_dir)
        if oidc is None and ident.oidc is not None:
            oidc = OIDCVerifier(ident.oidc, fetch, clock=clock)
        self.oidc = oidc
        self.limiter = (
            limiter
            if limiter is not None
            else FailureLimiter(ident.max_failures, ident.failure_window_seconds, clock)
        )

    @property
    def needs_io(self) -> bool:
        """True if authenticate may block on the network: call it in a thread executor."""
        return self.oidc is not None and self.oidc.needs_io

    def close(self) -> None:
        self.tokens.close()

    def authenticate(self, user: str, password: str, source: str) -> Identity | None:
        """The identity proved by ``password`` if its name is exactly ``user``, else None.

        ``source`` is the client's address (without the port); too many failures from it
        within the configured window block it, without checking the password.
        """
        if self.limiter.blocked(source):
            log.info("login as %r from %s refused: too many failed logins", user, source)
            return None
        identity = self._check(password)
        if identity is not None and identity.name != user:
            log.debug(
                "login from %s: token for %r presented with user %r", source, identity.name, user
            )
            identity = None
        if identity is None:
            self.limiter.record_failure(source)
            log.info("login as %r from %s failed", user, source)
            return None
        self.limiter.record_success(source)
        return identity

    def _check(self, password: str) -> Identity | None:
        if len(password) > MAX_PASSWORD_CHARS:
            return None
        if password.startswith(TOKEN_PREFIX):
            return self.tokens.verify(password)
        if self.oidc is not None and _looks_like_jwt(password):
            return self.oidc.verify(password)
        return None

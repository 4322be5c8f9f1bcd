"""A session logged in and connected upstream, as the shell would leave it."""

from __future__ import annotations

from dbsentry.engines.postgres.session.events import ClientData, PasswordVerified
from dbsentry.engines.postgres.session.pg import Session
from dbsentry.engines.postgres.session.upstream import UpstreamReady
from dbsentry.engines.postgres.wire import codec
from dbsentry.identity.model import Identity


def logged_in(session: Session, identity: Identity, database: str) -> Session:
    """``session`` after a startup for ``database``, a password, ``identity`` verified
    and the upstream ready (idle)."""
    session.handle(ClientData(codec.encode_startup((("user", identity.name), ("database", database)))))
    session.handle(ClientData(codec.encode_password("token")))
    session.handle(PasswordVerified(identity))
    session.handle(UpstreamReady(b"", {}, 42, b"abcd", "I"))
    return session

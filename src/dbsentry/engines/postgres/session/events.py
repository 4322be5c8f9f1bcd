"""What happens to a session: the events its I/O shell feeds it.

The shell turns everything it learns (bytes read, a timer that fired, the answer to a
command) into one of these and calls :meth:`Session.handle
<dbsentry.engines.postgres.session.pg.Session.handle>`, which returns the commands to carry
out (:mod:`dbsentry.engines.postgres.session.commands`).  ``Session.handle`` matches on
:data:`Event` exhaustively: an event added here and not handled there is a type error.

Events are frozen, but for the two of every network read (see below) (the session never
changes what it was told; ``AuditFailed`` and
``HeldRefused`` carry the frames and records of the ``AuditGate`` they answer as they are)
and final (``handle`` tells the hot ones by their exact type).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

from dbsentry.audit.records import Record
from dbsentry.identity.model import Identity
from dbsentry.identity.ratelimit import LoginThrottled

# ---------------------------------------------------------------- bytes (the hot path)


# The two events of every network read are slotted but not frozen: a frozen dataclass
# costs twice as much to make (its ``__init__`` goes through ``object.__setattr__``), about
# 0.1 µs per event, two per statement; the session never changes them either.


@final
@dataclass(slots=True)
class ClientData:
    """Bytes read from the client."""

    data: bytes


@final
@dataclass(slots=True)
class UpstreamData:
    """Bytes read from the upstream after its login."""

    data: bytes


# ---------------------------------------------------------------- the client's login


@final
@dataclass(frozen=True, slots=True)
class ClientTLSStarted:
    """The client's TLS handshake (after ``StartClientTLS``) completed."""

    version: str | None


@final
@dataclass(frozen=True, slots=True)
class PasswordVerified:
    """The answer to ``VerifyPassword``: who the token names, ``None`` for a bad token, or
    the refusal of a throttled login."""

    identity: Identity | LoginThrottled | None


@final
@dataclass(frozen=True, slots=True)
class WaitedLoginEnded:
    """The login this session waited for (``WaitForLogin``) ended: sent by the shell to every
    session that ``WakeWaiting`` names."""


@final
@dataclass(frozen=True, slots=True)
class LoginWaitTimedOut:
    """``WaitForLogin.seconds`` passed before the session was logged in."""


@final
@dataclass(frozen=True, slots=True)
class StartupTimedOut:
    """``limits.startup_timeout_seconds`` passed before ``LoginComplete``."""


# ---------------------------------------------------------------- the upstream's login


@final
@dataclass(frozen=True, slots=True)
class UpstreamReady:
    """The upstream accepted the login (``OpenUpstream``) and is ready for queries.

    The upstream handshake (:mod:`~dbsentry.engines.postgres.session.upstream`) makes it;
    the shell hands it on once the connection's catalog is loaded.
    """

    parameter_frames: bytes  # ParameterStatus and NoticeResponse frames, as received
    params: dict[str, str]
    backend_pid: int
    backend_secret: bytes
    status: str
    leftover: bytes = b""  # what the upstream sent after its ReadyForQuery


@final
@dataclass(frozen=True, slots=True)
class UpstreamFailed:
    """The upstream could not be connected or logged in to (or its catalog not read): the
    client is told ``sqlstate`` and ``message``."""

    sqlstate: str
    message: str


# ---------------------------------------------------------------- answers about held statements


@final
@dataclass(frozen=True, slots=True)
class AuditFailed:
    """The records of an ``AuditGate`` could not be committed: none of its statements runs."""

    frames: tuple[bytes, list[tuple[int, int, int]]]
    records: Sequence[Record] = ()


@final
@dataclass(frozen=True, slots=True)
class HeldRefused:
    """The statements of an ``AuditGate`` will not run after all (an approval refused,
    withdrawn or timed out, approvals unavailable): they fail with ``sqlstate`` and
    ``message``."""

    frames: tuple[bytes, list[tuple[int, int, int]]]
    records: Sequence[Record]
    sqlstate: str
    message: str


@final
@dataclass(frozen=True, slots=True)
class GuardApprovalAnswered:
    """The answer to ``GuardApproval``: may the statement over the row limit commit, and
    what the client is told when it may not."""

    approved: bool
    message: str | None


# ---------------------------------------------------------------- endings


@final
@dataclass(frozen=True, slots=True)
class ClientClosed:
    """The client's connection is gone."""


@final
@dataclass(frozen=True, slots=True)
class UpstreamClosed:
    """The upstream's connection closed after its login."""


Event = (
    ClientData
    | UpstreamData
    | ClientTLSStarted
    | PasswordVerified
    | WaitedLoginEnded
    | LoginWaitTimedOut
    | StartupTimedOut
    | UpstreamReady
    | UpstreamFailed
    | AuditFailed
    | HeldRefused
    | GuardApprovalAnswered
    | ClientClosed
    | UpstreamClosed
)

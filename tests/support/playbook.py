"""A small Playbook DSL for the sans-IO session, after mitmproxy's ``tutils.Playbook``.

A playbook feeds events (:mod:`dbsentry.engines.postgres.session.events`) to a
:class:`~dbsentry.engines.postgres.session.pg.Session` through ``Session.handle`` and compares
the commands it returns with the ones a test expects, step by step::

    pb = Playbook(session)
    pb.client(ssl_request()).expect(c.SendClient(b"S"), c.StartClientTLS())
    pb.event(StartupTimedOut()).expect(Fatal("08P01"), c.CloseClient(), c.CloseUpstream())

``Log`` commands are dropped unless the playbook is built with ``logs=True``: they are
diagnostics, not behaviour the client or the upstream sees.  Matchers such as
:class:`Fatal` compare equal to the commands they describe, so an
expectation can say "a FATAL with SQLSTATE 28000" without spelling out the message text.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import ClientData, Event, UpstreamData
from dbsentry.engines.postgres.session.pg import Session
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m


def frames(data: bytes) -> list[tuple[str, bytes]]:
    """Split complete frames into ``(type, body)`` pairs; fail on any leftover bytes."""
    splitter = codec.FrameSplitter()
    buf, spans = splitter.split(data)
    assert splitter.pending == 0, f"incomplete frame at the end of {data!r}"
    return [(chr(t), bytes(buf[s:e])) for t, s, e in spans]


def error_fields(data: bytes) -> m.ErrorFields:
    """Decode the single ErrorResponse frame that ``data`` must be."""
    got = frames(data)
    assert len(got) == 1 and got[0][0] == "E", f"expected one ErrorResponse, got {got!r}"
    body = got[0][1]
    return codec.decode_error_fields(body, 0, len(body))


@dataclass(eq=False)
class Fatal:
    """Matches ``SendClient`` carrying one ErrorResponse with severity FATAL and ``sqlstate``."""

    sqlstate: str
    message_contains: str = ""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, c.SendClient):
            return NotImplemented
        try:
            err = error_fields(other.data)
        except AssertionError:
            return False
        return (
            err.get("S") == "FATAL"
            and err.get("V") == "FATAL"
            and err.sqlstate == self.sqlstate
            and self.message_contains in err.message
        )

    def __repr__(self) -> str:
        return f"Fatal({self.sqlstate!r})"


@dataclass
class Playbook:
    """Feed events to a session; collect and check the commands it returns."""

    session: Session
    logs: bool = False
    pending: list[c.Command] = field(default_factory=list)
    history: list[tuple[str, list[c.Command]]] = field(default_factory=list)

    def event(self, event: Event) -> Playbook:
        got = self.session.handle(event)
        name = type(event).__name__
        assert isinstance(got, list), f"{name} returned {got!r}, not a list of commands"
        if not self.logs:
            got = [cmd for cmd in got if not isinstance(cmd, c.Log)]
        self.history.append((name, got))
        self.pending.extend(got)
        return self

    def client(self, data: bytes) -> Playbook:
        return self.event(ClientData(data))

    def upstream(self, data: bytes) -> Playbook:
        return self.event(UpstreamData(data))

    def take(self) -> list[c.Command]:
        """The commands returned since the last ``expect``/``take``, and forget them."""
        got, self.pending = self.pending, []
        return got

    def expect(self, *expected: object) -> Playbook:
        """Assert that exactly ``expected`` came out since the last check, in order."""
        got = self.take()
        assert list(expected) == got, (
            "commands differ\n  expected: " + repr(list(expected)) + "\n  got:      " + repr(got)
        )
        return self

    def expect_nothing(self) -> Playbook:
        return self.expect()

"""Which request each upstream message answers.

The server answers requests strictly in order.  :class:`Exchange` keeps one item per
request that gets an answer (a Query, each Parse/Bind/Describe/Execute/Close, a Sync, a
FunctionCall), tagged with who sent it (0: the client; other numbers: the proxy's own
requests), and matches every server message against the head of that queue, following
the protocol's rules: a Query or FunctionCall is answered up to its ReadyForQuery; an
extended-protocol error fails its request and makes the server skip everything up to the
next Sync.  With it the session can run statements of its own in between the client's and
take their answers out of the stream (see :mod:`dbsentry.engines.postgres.session.guard`).
"""

from __future__ import annotations

from collections import deque

from dbsentry.engines.postgres.wire import messages as m

# Kinds of request, by how the server answers them.
QUERY = 0  # Query or FunctionCall: everything up to ReadyForQuery
ONE = 1  # Parse, Bind, Close: ParseComplete / BindComplete / CloseComplete
DESCRIBE = 2  # Describe: [ParameterDescription] RowDescription or NoData
EXECUTE = 3  # Execute: rows, then CommandComplete, EmptyQueryResponse or PortalSuspended
SYNC = 4  # Sync: ReadyForQuery
PARSE = 5  # Parse: ParseComplete (its outcome is reported, see Exchange.parse_outcomes)

CLIENT = 0

_KIND_OF_REQUEST = {
    m.Q_QUERY: QUERY,
    m.Q_FUNCTION_CALL: QUERY,
    m.Q_PARSE: PARSE,
    m.Q_BIND: ONE,
    m.Q_CLOSE: ONE,
    m.Q_DESCRIBE: DESCRIBE,
    m.Q_EXECUTE: EXECUTE,
    m.Q_SYNC: SYNC,
}
_ONE_DONE = frozenset({ord("1"), ord("2"), ord("3")})
_EXECUTE_DONE = frozenset({m.R_COMMAND_COMPLETE, m.R_EMPTY_QUERY, m.R_PORTAL_SUSPENDED})
_DESCRIBE_DONE = frozenset({m.R_ROW_DESCRIPTION, m.R_NO_DATA})
# For Exchange.received_all: the kinds answered up to a ReadyForQuery, and by kind, what
# ends a request of the client's (a Parse's end is reported: left to received).
_WHOLE = frozenset({QUERY, SYNC})
_ENDS: dict[int, frozenset[int]] = {
    ONE: _ONE_DONE, DESCRIBE: _DESCRIBE_DONE, EXECUTE: _EXECUTE_DONE, PARSE: frozenset(), QUERY: frozenset(), SYNC: frozenset()
}


def request_kind(t: int) -> int | None:
    """The kind of a client message that gets an answer; None for Flush, CopyData..."""
    return _KIND_OF_REQUEST.get(t)


class Exchange:
    """The requests sent upstream and not answered yet, oldest first."""

    __slots__ = ("_items", "_open", "parse_outcomes", "skipping")

    def __init__(self) -> None:
        self._items: deque[tuple[int, int]] = deque()  # (kind, owner)
        self._open: dict[int, int] = {}  # owner -> unanswered requests (proxy owners only)
        # Whether each of the client's Parse messages took effect, in order: False when it
        # failed or was skipped (the server then still has the statement it had before).
        self.parse_outcomes: deque[bool] = deque()
        # An extended-protocol request failed and no Sync was sent after it: the server
        # ignores what is sent now (Flush too) until it reads a Sync.
        self.skipping = False

    def sent(self, t: int, owner: int = CLIENT) -> None:
        """A message of type ``t`` went upstream (after every one sent before it)."""
        kind = _KIND_OF_REQUEST.get(t)
        if kind is None:
            return
        if kind == SYNC:
            self.skipping = False  # what comes after this Sync runs again
        self._items.append((kind, owner))
        if owner != CLIENT:
            self._open[owner] = self._open.get(owner, 0) + 1

    def outstanding(self, owner: int) -> int:
        """How many of ``owner``'s requests are neither answered nor skipped yet."""
        return self._open.get(owner, 0)

    @property
    def idle(self) -> bool:
        return not self._items

    @property
    def proxy_requests(self) -> bool:
        """Whether requests of the proxy's own are waiting for answers."""
        return bool(self._open)

    def head_owner(self) -> int:
        return self._items[0][1] if self._items else CLIENT

    def _pop(self, done: bool = False) -> tuple[int, int]:
        kind, owner = self._items.popleft()
        if kind == PARSE and owner == CLIENT:
            self.parse_outcomes.append(done)
        if owner != CLIENT:
            left = self._open[owner] - 1
            if left:
                self._open[owner] = left
            else:
                del self._open[owner]
        return kind, owner

    def received(self, t: int) -> tuple[int, bool]:
        """A server message of type ``t``: who it answers, and whether it ends that request.

        Messages that answer no request (notices, notifications, parameter changes sent
        between requests, a FATAL error) belong to whoever is at the head, or the client.
        """
        items = self._items
        if not items:
            return CLIENT, False
        kind, owner = items[0]
        if t == m.R_READY:
            self.skipping = False
            # Ends the first Query/FunctionCall/Sync; anything before it went unanswered.
            while items:
                kind, owner = self._pop()
                if kind in (QUERY, SYNC):
                    return owner, True
            return owner, True
        if kind in (QUERY, SYNC):
            return owner, False  # everything up to its ReadyForQuery
        if t == m.R_ERROR:
            # The request failed; the server skips everything up to the next Sync (and
            # requests sent from now on, if that Sync is not sent yet).
            self._pop()
            while items and items[0][0] != SYNC:
                self._pop()
            self.skipping = not items
            return owner, True
        if kind in (ONE, PARSE):
            if t in _ONE_DONE:
                self._pop(done=True)
                return owner, True
        elif kind == EXECUTE:
            if t in _EXECUTE_DONE:
                self._pop()
                return owner, True
        elif kind == DESCRIBE and t in _DESCRIBE_DONE:
            self._pop()
            return owner, True
        return owner, False

    def syncs_ignored(self, count: int) -> None:
        """The server reads a COPY's data and ignores the first ``count`` of the client's
        Syncs sent since the COPY began: they get no answer."""
        kept: deque[tuple[int, int]] = deque()
        for kind, owner in self._items:
            if count and kind == SYNC and owner == CLIENT:
                count -= 1
                continue
            kept.append((kind, owner))
        self._items = kept

    def received_all(self, spans: list[tuple[int, int, int]]) -> None:
        """:meth:`received` for each of these server messages but result rows (which
        answer nothing and end nothing), in order, the answers not wanted.  The client's
        BindComplete, RowDescription, CommandComplete... (every statement's) are matched
        here, inline; anything else goes through :meth:`received`."""
        items = self._items
        for t, _, _ in spans:
            if t == m.R_DATA_ROW or t == m.COPY_DATA:
                continue
            if items and t != m.R_ERROR:
                kind, owner = items[0]
                if owner == CLIENT:  # what received and _pop do for them
                    if kind in _WHOLE:  # a Query's or a Sync's answers, up to its ReadyForQuery
                        if t == m.R_READY:
                            self.skipping = False
                            items.popleft()
                        continue
                    if t in _ENDS[kind]:
                        items.popleft()
                        continue
            self.received(t)

    @property
    def runs_pending(self) -> bool:
        """Whether a request that runs statements (and may change the transaction state)
        is waiting for its answer."""
        return any(kind in (QUERY, EXECUTE) for kind, _ in self._items)

    def reown(self, owner: int, new: int = CLIENT) -> None:
        """``owner``'s requests are someone else's after all (sent in another form)."""
        if owner not in self._open:
            return
        self._items = deque((k, new if o == owner else o) for k, o in self._items)
        count = self._open.pop(owner)
        if new != CLIENT:
            self._open[new] = self._open.get(new, 0) + count

    def forget(self, owner: int) -> None:
        """Drop ``owner``'s requests that were queued but will not be sent after all."""
        if owner not in self._open:
            return
        self._items = deque(item for item in self._items if item[1] != owner)
        del self._open[owner]

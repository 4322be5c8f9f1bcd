"""A cap on the rows one result may return to an agent (``guardrails.agent_max_rows``).

An agent that runs ``SELECT * FROM events`` against production pulls millions of rows into
a model's context or a pipeline nobody watches.  Past the cap the proxy drops the rest of
the result and answers the statement with an error instead of its CommandComplete (a
truncated result that looks complete would be worse), then drops every further answer up
to the next ReadyForQuery, as PostgreSQL skips to the end of the query or the next Sync
after an error.  The pages of cursors (FETCH) and portals (Execute with a row limit) count
together until the transaction ends (agents may not declare cursors WITH HOLD).
"""

from __future__ import annotations

from collections.abc import Callable

from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m

_ROW = frozenset({m.R_DATA_ROW, m.COPY_DATA})
_END_OF_RESULT = frozenset({m.R_COMMAND_COMPLETE, m.R_EMPTY_QUERY, m.R_ERROR, m.R_PORTAL_SUSPENDED})


def _cursor_page(t: int, buf: bytes, start: int) -> bool:
    """The end of a page of a cursor (FETCH, MOVE): its rows count with the cursor's others."""
    return t == m.R_COMMAND_COMPLETE and buf[start : start + 5] in (b"FETCH", b"MOVE ")


class RowCap:
    __slots__ = ("_count", "_error", "_pages", "_skipping", "_tripped", "limit")

    def __init__(self, limit: int, error: Callable[[str, str], bytes] | None = None) -> None:
        """``error``: the ErrorResponse for (sqlstate, message); the session marks its own
        so that masking never withholds it."""
        self.limit = limit
        self._count = 0  # rows of the current result
        self._pages = 0  # rows of earlier pages of cursors and portals in this transaction
        self._tripped = False  # this result passed the cap: its rows are dropped
        self._skipping = False  # answered with the cap's error: drop up to ReadyForQuery
        self._error = error or (lambda sqlstate, message: codec.error_response(sqlstate, message))

    def error(self) -> bytes:
        return self._error(
            "54000",
            f"dbsentry: the result has more than {self.limit} rows, the cap for agents "
            "(guardrails.agent_max_rows); ask for fewer rows (LIMIT, filters or aggregates)",
        )

    def filter(self, buf: bytes, spans: list[tuple[int, int, int]]) -> tuple[bytes, list[tuple[int, int, int]]]:
        """The frames to pass on, as a buffer and its spans (``buf`` itself when unchanged)."""
        pieces: list[bytes] | None = None
        last = 0
        for t, start, end in spans:
            drop = False
            replace: bytes | None = None
            if self._skipping:
                if t == m.R_READY:
                    self._skipping = False
                    self._count = 0
                    if buf[start : start + 1] == b"I":
                        self._pages = 0
                elif t != m.R_NOTIFICATION and t != m.R_PARAMETER_STATUS:
                    drop = True
            elif t in _ROW:
                self._count += 1
                if self._count + self._pages > self.limit:
                    self._tripped = True
                    drop = True
            elif self._tripped and (t in _END_OF_RESULT or t == m.COPY_DONE):
                if t == m.COPY_DONE:
                    drop = True
                else:
                    replace = self.error()
                    self._tripped = False
                    self._skipping = True
            elif t == m.R_READY:
                if buf[start : start + 1] == b"I":
                    self._count = self._pages = 0  # cursors and portals end with the transaction
            elif t == m.R_PORTAL_SUSPENDED or _cursor_page(t, buf, start):
                # A page of a cursor or portal: its rows count with the transaction's other pages.
                self._pages += self._count
                self._count = 0
            elif t in _END_OF_RESULT:
                self._count = 0
            if drop or replace is not None:
                if pieces is None:
                    pieces = []
                pieces.append(buf[last : start - 5])
                if replace is not None:
                    pieces.append(replace)
                last = end
        if pieces is None:
            return buf, spans
        pieces.append(buf[last:])
        out = b"".join(pieces)
        _, new_spans = codec.FrameSplitter().split(out) if out else (b"", [])
        return out, new_spans

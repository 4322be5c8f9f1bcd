"""A cap on the rows one result may return to an agent (``guardrails.agent_max_rows``).

An agent that runs ``SELECT * FROM events`` against production pulls millions of rows into
a model's context or a pipeline nobody watches.  Past the cap the proxy drops the rest of
the result and answers the statement with an error instead of its CommandComplete (a
truncated result that looks complete would be worse), then drops every further answer up
to the next ReadyForQuery, as PostgreSQL skips to the end of the query or the next Sync
after an error.
"""

from __future__ import annotations

from dbsentry.wire.pg import codec
from dbsentry.wire.pg import messages as m

_ROW = frozenset({m.R_DATA_ROW, m.COPY_DATA})
_END_OF_RESULT = frozenset({m.R_COMMAND_COMPLETE, m.R_EMPTY_QUERY, m.R_ERROR, m.R_PORTAL_SUSPENDED})


class RowCap:
    __slots__ = ("_count", "_skipping", "_tripped", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count = 0
        self._tripped = False  # this result passed the cap: its rows are dropped
        self._skipping = False  # answered with the cap's error: drop up to ReadyForQuery

    def error(self) -> bytes:
        return codec.error_response(
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
                elif t != m.R_NOTIFICATION and t != m.R_PARAMETER_STATUS:
                    drop = True
            elif t in _ROW:
                self._count += 1
                if self._count > self.limit:
                    self._tripped = True
                    drop = True
            elif self._tripped and (t in _END_OF_RESULT or t == m.COPY_DONE):
                if t == m.COPY_DONE:
                    drop = True
                else:
                    replace = self.error()
                    self._tripped = False
                    self._skipping = True
            elif t in _END_OF_RESULT or t == m.R_READY:
                self._count = 0 if t != m.R_PORTAL_SUSPENDED else self._count
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

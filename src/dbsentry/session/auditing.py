"""The audit side of one session: builds its records and follows each statement to its end.

Pure bookkeeping, no I/O: the session hands records to its shell as commands.  A statement
record is made when the statement is about to be forwarded (Query, Execute,
FunctionCall); the server's answers (CommandComplete, ErrorResponse, EmptyQueryResponse,
PortalSuspended) complete the statements in order, and ReadyForQuery closes every
statement of its cycle that never ran (skipped after an earlier error).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.records import CompletionRecord, SessionEvent, StatementRecord
from dbsentry.audit.redaction import LiteralRedactor, current
from dbsentry.identity.model import Identity
from dbsentry.policy.engine import Decision
from dbsentry.session.masking import StatementPlan
from dbsentry.sql.facts import StatementFacts


def rows_from_tag(tag: str) -> int | None:
    """The row count of a CommandComplete tag: ``SELECT 5``, ``INSERT 0 5``, ``UPDATE 3``."""
    last = tag.rpartition(" ")[2]
    return int(last) if last.isdigit() else None


@dataclass(slots=True)
class _Pending:
    record_id: str
    cycle: int
    started: float


# Sessions that have nothing pending share this empty queue (an idle one never has).
_NOTHING_PENDING: deque[_Pending] = deque(maxlen=0)


def _nothing_pending() -> deque[_Pending]:
    return _NOTHING_PENDING


@dataclass(slots=True)
class SessionAudit:
    config: AuditConfig
    session_id: str
    identity: Identity
    connection: str
    environment: str
    database: str
    client_addr: str
    tls_version: str | None
    application_name: str | None = None
    opened_at: float = field(default_factory=time.monotonic)
    _pending: deque[_Pending] = field(default_factory=_nothing_pending)
    # Turns sensitive values into tokens (audit.redact_literals); default: the process's.
    redactor: LiteralRedactor | None = None

    def _redactor(self) -> LiteralRedactor:
        return self.redactor if self.redactor is not None else current()

    def _error_text(self, message: str) -> str:
        """An error text as stored: PostgreSQL quotes values in errors (``invalid input
        syntax for type integer: "4111..."``), so detected values become tokens."""
        if self.config.redact_literals is False:
            return message[:1000]
        return self._redactor().text(message[:4000])[:1000]

    @property
    def wait(self) -> bool:
        """Whether a statement waits for its record to be committed before it is forwarded."""
        return self.config.durability != "async"

    def session_event(self, event: str, reason: str | None = None) -> SessionEvent:
        closed = event == "closed"
        return SessionEvent.for_identity(
            "closed" if closed else "opened",
            self.identity,
            session_id=self.session_id,
            client_addr=self.client_addr,
            application_name=self.application_name,
            tls=self.tls_version is not None,
            tls_version=self.tls_version,
            connection=self.connection,
            environment=self.environment,
            database=self.database,
            duration_ms=round((time.monotonic() - self.opened_at) * 1000, 3) if closed else None,
            end_reason=reason if closed else None,
        )

    def statement(
        self,
        sql: str,
        facts: StatementFacts | None,
        decision: Decision,
        params: tuple[str | None, ...] | None = None,
        command: str | None = None,
        correlation: Mapping[str, str] | None = None,
        masks: StatementPlan | None = None,
    ) -> StatementRecord:
        """``correlation``: ids read from the whole message the statement came in (a comment
        before the first statement of a Query is not part of its text); by default read
        from ``sql``."""
        cfg = self.config
        fields: dict[str, object] = {}
        if facts is not None:
            fields = {
                "fingerprint": facts.fingerprint,
                "command": facts.command,
                "statement_class": facts.statement_class,
                "risk": facts.risk,
                "tables": tuple(sorted({*facts.tables_read, *facts.tables_written})),
                "columns_read": tuple(sorted(facts.columns_read)),
            }
        elif command is not None:
            fields = {"command": command}
        if correlation is not None:
            fields["correlation"] = correlation
        action = decision.action
        if masks is not None:
            fields["masked_columns"] = masks.masked_columns
            fields["masked_classes"] = masks.masked_classes
            fields["data_classes"] = masks.masked_classes
            if action == "allow" and masks.masked_columns:
                action = "mask"  # allowed by policy, its results masked
        return StatementRecord.create(
            sql=sql,
            params=params,
            redact=cfg.redact_literals,
            redactor=self._redactor() if cfg.redact_literals == "sensitive" else None,
            max_statement_chars=cfg.max_statement_chars,
            max_param_chars=cfg.max_param_chars,
            max_params_chars=cfg.max_params_chars,
            session_id=self.session_id,
            identity=self.identity.name,
            identity_kind=self.identity.kind,
            connection=self.connection,
            environment=self.environment,
            database=self.database,
            decision=action,
            rules=decision.rules,
            application_name=self.application_name,
            **fields,
        )

    # ------------------------------------------------------------------ outcomes

    def expect(self, record: StatementRecord, cycle: int) -> None:
        """``record`` was forwarded; its outcome arrives before ReadyForQuery number ``cycle``."""
        if self._pending is _NOTHING_PENDING:
            self._pending = deque()
        self._pending.append(_Pending(record.id, cycle, time.monotonic()))

    def _complete(self, rows: int | None = None, sqlstate: str | None = None, error: str | None = None) -> CompletionRecord | None:
        if not self._pending:
            return None
        p = self._pending.popleft()
        return CompletionRecord(
            statement_id=p.record_id,
            session_id=self.session_id,
            rows=rows,
            duration_ms=round((time.monotonic() - p.started) * 1000, 3),
            sqlstate=sqlstate,
            error=error,
        )

    def command_complete(self, tag: str) -> CompletionRecord | None:
        return self._complete(rows=rows_from_tag(tag))

    def empty_or_suspended(self) -> CompletionRecord | None:
        return self._complete(rows=0)

    def error(self, sqlstate: str, message: str) -> CompletionRecord | None:
        return self._complete(sqlstate=sqlstate, error=self._error_text(message))

    def ready(self, cycle: int) -> list[CompletionRecord]:
        """ReadyForQuery number ``cycle`` arrived: what is still pending from it never ran."""
        out = []
        while self._pending and self._pending[0].cycle <= cycle:
            rec = self._complete(error="not executed: skipped after an earlier error")
            if rec is not None:
                out.append(rec)
        return out

    def refused(self, record_ids: Iterable[str], sqlstate: str, message: str) -> list[CompletionRecord]:
        """These statements were refused after all (their records could not be committed)."""
        ids = set(record_ids)
        out = []
        keep: deque[_Pending] = deque()
        for p in self._pending:
            if p.record_id in ids:
                out.append(
                    CompletionRecord(
                        statement_id=p.record_id,
                        session_id=self.session_id,
                        duration_ms=round((time.monotonic() - p.started) * 1000, 3),
                        sqlstate=sqlstate,
                        error=self._error_text(f"not executed: {message}"),
                    )
                )
            else:
                keep.append(p)
        self._pending = keep
        return out

    def abandoned(self) -> list[CompletionRecord]:
        """The session ended with statements whose outcome never arrived."""
        out = []
        while self._pending:
            rec = self._complete(error="session ended before the statement completed")
            if rec is not None:
                out.append(rec)
        return out

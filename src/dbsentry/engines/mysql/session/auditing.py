"""The audit side of one MySQL session: its session and statement records (named
``engine: mysql``) and the completion of each statement, in order. Pure bookkeeping: the
session hands the records to its shell as commands."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.records import (
    CompletionRecord,
    SessionEvent,
    StatementRecord,
    extract_correlation,
    session_record,
)
from dbsentry.audit.redaction import LiteralRedactor, current
from dbsentry.engines.mysql.masking import MysqlMaskPlan
from dbsentry.engines.mysql.session.literals import MYSQL_LITERALS
from dbsentry.governance.facts import StatementFacts
from dbsentry.identity.model import Identity
from dbsentry.policy.engine import Decision

ENGINE = "mysql"


@dataclass(slots=True)
class MySQLAudit:
    config: AuditConfig
    session_id: str
    identity: Identity
    connection: str
    environment: str
    database: str
    client_addr: str
    tls_version: str | None
    application_name: str | None = None
    redactor: LiteralRedactor | None = None
    opened_at: float = field(default_factory=time.monotonic)
    # Statements forwarded and not answered yet: (record id, when forwarded, whether a CALL).
    pending: deque[tuple[str, float, bool]] = field(default_factory=deque)
    # the query attributes of the command being handled (CLIENT_QUERY_ATTRIBUTES)
    attributes: tuple[tuple[str, str | None], ...] = ()

    def _redactor(self) -> LiteralRedactor:
        return self.redactor if self.redactor is not None else current(MYSQL_LITERALS)

    @property
    def wait(self) -> bool:
        """Whether a statement waits for its record to be written before it is forwarded."""
        return self.config.durability != "async"

    def session_event(self, event: str, reason: str | None = None) -> SessionEvent:
        return session_record(
            event,
            self.identity,
            session_id=self.session_id,
            opened_at=self.opened_at,
            reason=reason,
            tls_version=self.tls_version,
            client_addr=self.client_addr,
            application_name=self.application_name,
            connection=self.connection,
            environment=self.environment,
            database=self.database,
            engine=ENGINE,
        )

    def statement(
        self,
        sql: str,
        facts: StatementFacts | None,
        decision: Decision,
        params: tuple[str | None, ...] | None = None,
        command: str | None = None,
        approval_id: str | None = None,
        masks: MysqlMaskPlan | None = None,
    ) -> StatementRecord:
        """``masks``: the statement's mask plan (its masked columns and classes are
        recorded; an allowed statement whose results are masked is recorded ``mask``)."""
        cfg = self.config
        extra: dict[str, object] = {}
        if facts is not None:
            extra = {
                "fingerprint": facts.fingerprint,
                "command": facts.command,
                "statement_class": facts.statement_class,
                "risk": facts.risk,
                "tables": tuple(sorted({*facts.tables_read, *facts.tables_written})),
                "columns_read": tuple(sorted(facts.columns_read)),
            }
        elif command is not None:
            extra = {"command": command}
        if self.attributes:
            extra["correlation"] = self._correlation(sql)
        action = "approved" if approval_id is not None else decision.action
        if masks is not None:
            classes = tuple(sorted(str(d.value) for d in masks.data_classes))
            extra["masked_columns"] = tuple(sorted(str(s) for s in masks.masked_columns))
            extra["masked_classes"] = classes
            extra["data_classes"] = classes
            if action == "allow" and masks.masked_columns:
                action = "mask"  # allowed by policy, its results masked
        return StatementRecord.create(
            sql=sql,
            params=params,
            redact=cfg.redact_literals,
            max_statement_chars=cfg.max_statement_chars,
            max_param_chars=cfg.max_param_chars,
            max_params_chars=cfg.max_params_chars,
            redactor=self._redactor(),
            session_id=self.session_id,
            identity=self.identity.name,
            identity_kind=self.identity.kind,
            decision=action,
            rules=decision.rules,
            approval_id=approval_id,
            connection=self.connection,
            environment=self.environment,
            database=self.database,
            application_name=self.application_name,
            engine=ENGINE,
            **extra,
        )

    def _correlation(self, sql: str) -> dict[str, str]:
        """What the statement's comments carry (sqlcommenter, ``traceparent``) and its query
        attributes, as ``query_attribute.<name>`` (a NULL as ``NULL``). Under
        ``audit.redact_literals: true`` an attribute's value is kept only for trace ids."""
        out = dict(extract_correlation(sql, self._redactor().lex))
        hide = self.config.redact_literals is True
        for name, value in self.attributes:
            shown = "NULL" if value is None else value[: self.config.max_param_chars]
            out[f"query_attribute.{name}"] = "?" if hide and name.lower() not in ("traceparent", "tracestate") else shown
        return out

    def display(self, sql: str, params: tuple[str | None, ...] | None) -> str:
        """The statement as reviewers may see it (sensitive values as tokens)."""
        return self._redactor().redact(sql, params, self.connection).text

    def expect(self, record: StatementRecord, calls: bool | None = None) -> None:
        """``record`` was forwarded; ``calls``: it runs a CALL (default: its command is one)."""
        self.pending.append((record.id, time.monotonic(), record.command == "CALL" if calls is None else calls))

    def result_ended(self, rows: int) -> CompletionRecord | None:
        """A result set ended: the outcome of the next pending statement, unless that is a
        CALL. A procedure's result sets come before the CALL's own answer (an OK, or an ERR
        when it fails after them), which completes it; taking the first result set as its
        outcome recorded a failing procedure as a success, and the next statement of the
        string as completed by the CALL's OK (an attack round)."""
        if self.pending and self.pending[0][2]:
            return None
        return self.complete(rows)

    def complete(self, rows: int | None = None, sqlstate: str | None = None, error: str | None = None) -> CompletionRecord | None:
        """The next pending statement's outcome (None when nothing is pending)."""
        if not self.pending:
            return None
        record_id, started, _ = self.pending.popleft()
        if error is not None and self.config.redact_literals is not False:
            error = self._redactor().text(error[:4000])  # errors quote values
        return CompletionRecord(
            statement_id=record_id,
            session_id=self.session_id,
            rows=rows,
            duration_ms=round((time.monotonic() - started) * 1000, 3),
            sqlstate=sqlstate,
            error=error[:1000] if error is not None else None,
        )

    def rest(self, error: str) -> list[CompletionRecord]:
        """What is still pending never ran (or its outcome never came): ``error`` says why."""
        out = []
        while self.pending:
            rec = self.complete(error=error)
            if rec is not None:
                out.append(rec)
        return out

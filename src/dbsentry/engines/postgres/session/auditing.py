"""The audit side of one session: builds its records and follows each statement to its end.

Pure bookkeeping, no I/O: the session hands records to its shell as commands.  A statement
record is made when the statement is about to be forwarded (Query, Execute,
FunctionCall); the server's answers (CommandComplete, ErrorResponse, EmptyQueryResponse,
PortalSuspended) complete the statements in order, and ReadyForQuery closes every
statement of its cycle that never ran (skipped after an earlier error).

A cycle the server began idle runs as one implicit transaction (the statements of one
Query string, or of the extended-protocol messages up to a Sync): an error anywhere in it,
its COMMIT at the end included (a deferred constraint), rolls back what its statements did
although each one's CommandComplete came first.  So the completions of its statements that
are not reads wait for the cycle's ReadyForQuery, which tells whether the transaction
committed (a read ran, and its rows left, either way).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.records import (
    CompletionRecord,
    RecordTemplate,
    SessionEvent,
    StatementRecord,
    extract_correlation,
    session_record,
    statement_parts,
)
from dbsentry.audit.redaction import LiteralRedactor, current
from dbsentry.engines.postgres.masking.literals import POSTGRES_LITERALS
from dbsentry.engines.postgres.session.masking import StatementPlan
from dbsentry.engines.postgres.sql import shape
from dbsentry.engines.postgres.sql.facts import TRANSACTION_COMMANDS, StatementFacts
from dbsentry.engines.postgres.sql.parse import tokens
from dbsentry.identity.model import Identity
from dbsentry.policy.engine import Decision


def rows_from_tag(tag: str) -> int | None:
    """The row count of a CommandComplete tag: ``SELECT 5``, ``INSERT 0 5``, ``UPDATE 3``."""
    last = tag.rpartition(" ")[2]
    return int(last) if last.isdigit() else None


# What varies between the records of one statement (see SessionAudit.statement).
_VARYING = ("statement", "statement_redacted", "statement_truncated", "params", "params_truncated", "correlation")
_MAX_TEMPLATES = 256


# A statement forwarded and not answered yet: (its record's id, the cycle whose
# ReadyForQuery ends it, when it was forwarded, its kind (below), its command).
_Pending = tuple[str, int, float, int, str | None]
# A write of an implicit transaction that succeeded: (its record's id, its rows, its
# duration), until the transaction's end is known.
_Settling = tuple[str, int | None, float]

# The kinds of statements, for what their outcome tells of the transaction around them.
_READ = 0  # reads only: its rows left whatever becomes of the transaction
_WRITE = 1  # may change data (itself or through what it calls)
_TRANSACTION = 2  # transaction control: BEGIN, COMMIT, ROLLBACK, savepoints...
_MAY_COMMIT = 3  # may commit by itself: a procedure or DO block on the extended protocol
# (in a Query string of several statements PostgreSQL runs them as one block, in which a
# procedure cannot commit), or a statement whose command is not known

# Transaction control whose success ends the transaction: the one it committed, or (the
# second set) rolled back.
_ENDS_COMMITTED = frozenset({"COMMIT", "PREPARE TRANSACTION"})
_ENDS_ROLLED_BACK = frozenset({"ROLLBACK"})
_BEGINS = frozenset({"BEGIN", "START TRANSACTION"})


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
    # Statement records share the session's values and their statement's (facts, decision,
    # masks): made from a template per statement (see RecordTemplate), kept by the ids of
    # what they were made from (the entry holds those objects, so the ids stay theirs).
    _templates: dict[tuple[object, ...], tuple[object, object, object, RecordTemplate[StatementRecord]]] | None = None
    _completions: RecordTemplate[CompletionRecord] | None = None
    # The transaction status, as the server reported it last (ReadyForQuery) and as the
    # transaction control of the cycle now answered changed it since: "I" in an implicit
    # transaction.
    status: str = "I"
    _settling: list[_Settling] | None = None
    # The first error of the cycle now answered (sqlstate, message), if any.
    _cycle_error: tuple[str, str] | None = None
    # Whether a statement of the cycle now answered may have committed by itself (a
    # procedure or DO block on the extended protocol, a statement of unknown command).
    _cycle_unsure: bool = False

    def _redactor(self) -> LiteralRedactor:
        return self.redactor if self.redactor is not None else current(POSTGRES_LITERALS)

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
        redact = cfg.redact_literals
        record: StatementRecord = self._template(facts, decision, command, masks).make(
            *statement_parts(
                sql,
                params,
                redact,
                correlation,
                self.connection,
                cfg.max_statement_chars,
                cfg.max_param_chars,
                cfg.max_params_chars,
                self._redactor(),
            )
        )
        return record

    def values_only(self, text: str) -> int | None:
        """See :meth:`LiteralRedactor.values_only` (None unless redaction is ``sensitive``)."""
        if self.config.redact_literals != "sensitive":
            return None
        return self._redactor().values_only(text, self.connection)

    def shape_statement(
        self,
        sql: str,
        parts: Sequence[str],
        constants: Sequence[str],
        span: tuple[int, int],
        facts: StatementFacts,
        decision: Decision,
        masks: StatementPlan | None,
        redaction: int | None,
    ) -> StatementRecord | None:
        """The record :meth:`statement` makes of the statement ``sql[start:len(sql) -
        tail].strip()`` (``span`` is ``(start, tail)``), a text of a shape (``parts``
        between its ``constants``, see :mod:`dbsentry.engines.postgres.sql.shape`) whose every constant is
        redacted by its value alone (``redaction``: the catalog version for which
        :meth:`values_only` said so).  None when that does not hold now, or redaction is
        ``true`` (every constant ``?``): then :meth:`statement`."""
        cfg = self.config
        redact = cfg.redact_literals
        start, tail = span
        if redact is False:
            shown, changed = sql, False
        elif redact == "sensitive":
            r = self._redactor()
            if redaction is None or r.catalog_version(self.connection) != redaction:
                return None
            out = [parts[0]]
            changed = False
            for constant, part in zip(constants, parts[1:], strict=True):
                replacement = r.constant(shape.value(constant))
                if out[-1].endswith("-") and (replacement is not None or r.constant("-" + shape.value(constant))):
                    return None  # ``-5``: the minus may be the constant's own (see shape.certified)
                if replacement is None:
                    out.append(constant)
                else:
                    out.append(replacement)
                    changed = True
                out.append(part)
            shown = "".join(out) if changed else sql
        else:
            return None
        if extract_correlation(sql, tokens):
            return None
        text = shown[start : len(shown) - tail].strip()
        truncated = len(text) > cfg.max_statement_chars
        if truncated:
            text = text[: cfg.max_statement_chars]
        record: StatementRecord = self._template(facts, decision, None, masks).make(
            text, changed, truncated, None, False, {}
        )
        return record

    def _template(
        self, facts: StatementFacts | None, decision: Decision, command: str | None, masks: StatementPlan | None
    ) -> RecordTemplate[StatementRecord]:
        templates = self._templates
        if templates is None:
            templates = self._templates = {}
        key = (id(facts), id(decision), id(masks), command, self.application_name)
        entry = templates.get(key)
        if entry is None or entry[0] is not facts or entry[1] is not decision or entry[2] is not masks:
            if len(templates) >= _MAX_TEMPLATES:
                templates.clear()
            entry = templates[key] = (facts, decision, masks, self._statement_template(facts, decision, command, masks))
        return entry[3]

    def _statement_template(
        self, facts: StatementFacts | None, decision: Decision, command: str | None, masks: StatementPlan | None
    ) -> RecordTemplate[StatementRecord]:
        """What every record of this statement shares: the session's values, the facts,
        the decision and the masks."""
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
        action = decision.action
        if masks is not None:
            fields["masked_columns"] = masks.masked_columns
            fields["masked_classes"] = masks.masked_classes
            fields["data_classes"] = masks.masked_classes
            if action == "allow" and masks.masked_columns:
                action = "mask"  # allowed by policy, its results masked
        return RecordTemplate(
            StatementRecord,
            {
                "session_id": self.session_id,
                "identity": self.identity.name,
                "identity_kind": self.identity.kind,
                "connection": self.connection,
                "environment": self.environment,
                "database": self.database,
                "decision": action,
                "rules": decision.rules,
                "application_name": self.application_name,
                **fields,
            },
            _VARYING,
        )

    # ------------------------------------------------------------------ outcomes

    def expect(self, record: StatementRecord, cycle: int, *, writes: bool = True, extended: bool = False) -> None:
        """``record`` was forwarded; its outcome arrives before ReadyForQuery number ``cycle``.
        ``writes``: it may change data; ``extended``: it came in an Execute."""
        if self._pending is _NOTHING_PENDING:
            self._pending = deque()
        command = record.command
        if command is None or (extended and command in ("CALL", "DO")):
            kind = _MAY_COMMIT
        elif command in TRANSACTION_COMMANDS:
            kind = _TRANSACTION
        else:
            kind = _WRITE if writes else _READ
        self._pending.append((record.id, cycle, time.monotonic(), kind, command))

    def _succeeded(self, rows: int | None) -> list[CompletionRecord]:
        pending = self._pending
        if not pending:
            return []
        p = pending[0]
        kind = p[3]
        if kind == _WRITE and self.status == "I":
            # An implicit transaction: the outcome of a write waits for its end.
            pending.popleft()
            if self._settling is None:
                self._settling = []
            self._settling.append((p[0], rows, round((time.monotonic() - p[2]) * 1000, 3)))
            return []
        out = []
        done = self._complete(rows=rows)
        if done is not None:
            out.append(done)
        if kind == _MAY_COMMIT:
            self._cycle_unsure = True
        elif kind == _TRANSACTION:
            command = p[4]
            if command in _ENDS_COMMITTED or command in _BEGINS:
                # committed, or (BEGIN) part of the block it opened: its fate is its COMMIT's
                out.extend(self._settle(None))
                self.status = "T" if command in _BEGINS else "I"
            elif command in _ENDS_ROLLED_BACK:
                out.extend(self._settle((None, f"{command} rolled it back")))
                self.status = "I"
        return out

    def _settle(self, failed: tuple[str | None, str] | None) -> list[CompletionRecord]:
        """The writes of the implicit transaction are complete: rolled back (``failed``:
        the sqlstate and what undid them) or not."""
        settling, self._settling = self._settling, None
        if settling is None:
            return []
        if failed is None:
            return [self._ok(*settled) for settled in settling]
        text = self._error_text(f"its implicit transaction was rolled back (the statement ran): {failed[1]}")
        return [self._settled(settled, text, failed[0]) for settled in settling]

    def _ok(self, statement_id: str, rows: int | None, duration: float) -> CompletionRecord:
        completions = self._completions
        if completions is None:
            completions = self._completions = RecordTemplate(
                CompletionRecord,
                {"session_id": self.session_id, "sqlstate": None, "error": None},
                ("statement_id", "rows", "duration_ms"),
            )
        record: CompletionRecord = completions.make(statement_id, rows, duration)
        return record

    def _complete(self, rows: int | None = None, sqlstate: str | None = None, error: str | None = None) -> CompletionRecord | None:
        if not self._pending:
            return None
        p = self._pending.popleft()
        duration = round((time.monotonic() - p[2]) * 1000, 3)
        if sqlstate is None and error is None:
            return self._ok(p[0], rows, duration)
        return CompletionRecord(
            statement_id=p[0],
            session_id=self.session_id,
            rows=rows,
            duration_ms=duration,
            sqlstate=sqlstate,
            error=error,
        )

    def command_complete(self, tag: str) -> list[CompletionRecord]:
        pending = self._pending
        if pending and tag == "ROLLBACK" and pending[0][4] == "COMMIT":
            # A COMMIT (or END) of a failed block: the server rolled it back (an attack
            # round had it recorded as a COMMIT that succeeded, the block's writes with it)
            done = self._complete(error="rolled back: the transaction had failed before its COMMIT (the server answered ROLLBACK)")
            self.status = "I"
            return [done] if done is not None else []
        return self._succeeded(rows_from_tag(tag))

    def empty_or_suspended(self) -> list[CompletionRecord]:
        return self._succeeded(0)

    def function_called(self) -> list[CompletionRecord]:
        """A FunctionCall's answer (FunctionCallResponse): it ran."""
        return self._succeeded(None)

    def error(self, sqlstate: str, message: str, cycle: int) -> list[CompletionRecord]:
        """An ErrorResponse before ReadyForQuery number ``cycle``: the outcome of the oldest
        pending statement if that is one of this cycle's.  Otherwise it answers something
        else (a Describe, a Parse or Bind of its own cycle, a COMMIT at its Sync), and the
        statements of later cycles are not its (an attack round had a Describe's error and a
        failed implicit COMMIT recorded as the next statement's outcome).  Either way, in
        an implicit transaction it rolls back what the cycle's statements did (see ready)."""
        self.failed(sqlstate, message)
        pending = self._pending
        if not pending or pending[0][1] != cycle:
            return []
        if pending[0][3] == _MAY_COMMIT:
            self._cycle_unsure = True  # (a procedure may commit, then fail)
        done = self._complete(sqlstate=sqlstate, error=self._error_text(message))
        return [done] if done is not None else []

    def failed(self, sqlstate: str, message: str) -> None:
        """An error of the cycle now answered, whether or not it is a statement's outcome
        (the proxy's own refusals included: they fail upstream as any error does)."""
        if self._cycle_error is None:
            self._cycle_error = (sqlstate, message)

    def ready(self, cycle: int, status: str = "I") -> list[CompletionRecord]:
        """ReadyForQuery number ``cycle`` arrived, reporting transaction ``status``: what is
        still pending from it never ran, and the writes of an implicit transaction that
        succeeded are complete: rolled back when the cycle had an error and ended idle (the
        transaction did not commit), unless a statement of the cycle may have committed by
        itself (then each stays as its CommandComplete said)."""
        out = []
        while self._pending and self._pending[0][1] <= cycle:
            rec = self._complete(error="not executed: skipped after an earlier error")
            if rec is not None:
                out.append(rec)
        failed = self._cycle_error
        out.extend(self._settle(failed if failed is not None and status == "I" and not self._cycle_unsure else None))
        self._cycle_error = None
        self._cycle_unsure = False
        self.status = status
        return out

    def _settled(self, settled: _Settling, error: str, sqlstate: str | None = None) -> CompletionRecord:
        statement_id, rows, duration = settled
        return CompletionRecord(
            statement_id=statement_id,
            session_id=self.session_id,
            rows=rows,
            duration_ms=duration,
            sqlstate=sqlstate,
            error=error,
        )

    def refused(self, record_ids: Iterable[str], sqlstate: str, message: str) -> list[CompletionRecord]:
        """These statements were refused after all (their records could not be committed)."""
        ids = set(record_ids)
        out = []
        keep: deque[_Pending] = deque()
        for p in self._pending:
            if p[0] in ids:
                out.append(
                    CompletionRecord(
                        statement_id=p[0],
                        session_id=self.session_id,
                        duration_ms=round((time.monotonic() - p[2]) * 1000, 3),
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
        out: list[CompletionRecord] = []
        if self._settling is not None:
            unknown = "outcome unknown: the session ended before the server said whether its transaction committed"
            out.extend(self._settled(settled, unknown) for settled in self._settling)
            self._settling = None
        while self._pending:
            rec = self._complete(error="outcome unknown: the session ended before the server answered (the statement may have run)")
            if rec is not None:
                out.append(rec)
        return out

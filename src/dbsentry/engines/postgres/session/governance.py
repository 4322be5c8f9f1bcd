"""The governance point shared by all sessions: the current policy and its caches.

Sessions ask :meth:`Governor.check` about every statement; the answer is pure and
synchronous (facts in, decision out).  A policy reload swaps :attr:`Governor.policy`
atomically: sessions keep running and the next statement is judged by the new policy
(the policy version is part of every cache key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from dbsentry.engines.postgres.masking.inference import StatementClasses, statement_classes
from dbsentry.engines.postgres.session.functions import FunctionSafety
from dbsentry.engines.postgres.sql.facts import StatementFacts
from dbsentry.engines.postgres.sql.verdict import evaluate_sql, facts_cache
from dbsentry.identity.model import Identity
from dbsentry.masking.catalog import Catalog, ClassMap
from dbsentry.policy import (
    DecisionCache,
    EvalContext,
    Policy,
    PolicyError,
    Verdict,
    combine,
    default_policy,
    load_policy,
)
from dbsentry.policy.baseline import setting_allowed
from dbsentry.policy.engine import Decision
from dbsentry.policy.verdict import denial_message as denial_message  # shared by every engine

#: The data classes each statement of a query string reads and writes (one per facts).
ClassSource = Callable[[str, Sequence[StatementFacts]], Sequence[StatementClasses]]


def classes_from(catalog: Catalog, classmap: ClassMap) -> ClassSource:
    """Data classes from a connection's catalog: lineage of the statement text, and the
    tables of its facts when lineage cannot be had."""

    def source(sql: str, facts: Sequence[StatementFacts]) -> Sequence[StatementClasses]:
        tables = [(f.tables_read, f.tables_written) for f in facts]
        return statement_classes(sql, tables, catalog, classmap)

    return source

log = logging.getLogger("dbsentry.policy")


@dataclass(frozen=True, slots=True)
class Check:
    """What a session needs to know about one query string."""

    verdict: Verdict

    @property
    def decision(self) -> Decision:
        return self.verdict.decision

    @property
    def allowed(self) -> bool:
        return self.verdict.decision.allowed


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Governor:
    #: The time a statement is judged at (the policy's time windows).  The wall clock;
    #: replaceable so that a test can open a time window without waiting for it
    #: (tests/support/clock.py).
    clock: Callable[[], datetime] = staticmethod(_utc_now)

    def __init__(self, policy: Policy, path: Path | None = None) -> None:
        self.policy = policy
        self.path = path
        self.facts_cache = facts_cache()
        self.decision_cache = DecisionCache()
        self._mtime = self._stat()

    @classmethod
    def from_path(cls, path: Path | None) -> Governor:
        """Load the policy file (or the baseline alone); raises PolicyError when invalid."""
        return cls(load_policy(path) if path is not None else default_policy(), path)

    @property
    def version(self) -> str:
        return self.policy.version

    def check(
        self,
        sql: str,
        identity: Identity,
        connection: str,
        environment: str,
        functions: FunctionSafety | None = None,
        classes: ClassSource | None = None,
    ) -> Check:
        """``functions``: the connection's catalog, to mark calls of functions that may
        change data (``volatile_function``).  ``classes``: the data classes each statement
        reads and writes, asked only when a rule matches on them."""
        ctx = EvalContext(identity, connection, environment, self.clock())
        verdict = evaluate_sql(self.policy, sql, ctx, self.facts_cache, self.decision_cache)
        if not verdict.facts:
            return Check(verdict)
        facts = verdict.facts
        if functions is not None:
            functions = functions.trusting(self.policy.safe_functions)
            facts = tuple(functions.mark(f) for f in verdict.facts)
        ctxs = [ctx for _ in facts]
        if classes is not None and self.policy.uses_data_classes:
            ctxs = [
                replace(ctx, data_classes=c.reads, written_data_classes=c.writes)
                for c in classes(sql, facts)
            ]
        if any(a is not b for a, b in zip(facts, verdict.facts, strict=True)) or any(c is not ctx for c in ctxs):
            decisions = tuple(self.decision_cache.evaluate(self.policy, f, c) for f, c in zip(facts, ctxs, strict=True))
            verdict = replace(verdict, facts=facts, decisions=decisions, decision=combine(decisions))
        return Check(verdict)

    def setting_allowed(self, name: str) -> bool:
        """Whether a run-time setting is on the production allow-list (the baseline's and
        the policy's ``baseline.allow_settings``)."""
        return setting_allowed(name, self.policy.allowed_settings)

    def reload(self) -> bool:
        """Re-read the policy file; an invalid one is rejected and the old policy stays."""
        if self.path is None:
            return False
        self._mtime = self._stat()
        try:
            new = load_policy(self.path)
        except PolicyError as err:
            log.error("policy reload rejected; keeping the previous policy", extra={"fields": {"reason": str(err)}})
            return False
        if new.version != self.policy.version:
            self.policy = new
            log.info("policy reloaded", extra={"fields": {"version": new.version, "source": str(self.path)}})
        return True

    def reload_if_changed(self) -> bool:
        if self.path is None or self._stat() == self._mtime:
            return False
        return self.reload()

    def _stat(self) -> tuple[float, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

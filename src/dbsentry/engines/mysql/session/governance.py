"""The governance point of MySQL sessions: the proxy's current policy (the same policy
and production baseline as PostgreSQL's, reloaded by the PostgreSQL governor) with MySQL's
analysis, one facts cache per ``sql_mode`` reading."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from dbsentry.engines.mysql.sql.lexing import SqlMode
from dbsentry.engines.mysql.sql.verdict import evaluate_sql, facts_cache
from dbsentry.identity.model import Identity
from dbsentry.policy.cache import DecisionCache, FactsCache
from dbsentry.policy.engine import EvalContext, Policy
from dbsentry.policy.verdict import Verdict

_MAX_MODES = 8  # sql_mode readings kept (sessions rarely use more than one or two)


class MySQLGovernor:
    """``policy()`` gives the current policy (a reload swaps it; decisions are cached by
    policy version)."""

    def __init__(self, policy: Callable[[], Policy]) -> None:
        self._policy = policy
        self._facts: dict[SqlMode, FactsCache] = {}
        self.decision_cache = DecisionCache()

    @property
    def policy(self) -> Policy:
        return self._policy()

    def check(self, sql: str, identity: Identity, connection: str, environment: str, mode: SqlMode) -> Verdict:
        """Every statement of ``sql`` analysed as MySQL reads it under ``mode`` and judged."""
        cache = self._facts.get(mode)
        if cache is None:
            if len(self._facts) >= _MAX_MODES:
                self._facts.clear()
            cache = self._facts[mode] = facts_cache(mode=mode)
        ctx = EvalContext(identity, connection, environment, datetime.now(UTC))
        return evaluate_sql(self.policy, sql, ctx, cache, self.decision_cache, mode=mode)

"""The policy on PostgreSQL text: :func:`dbsentry.policy.verdict.evaluate_text` with
PostgreSQL's analysis (or a :class:`~dbsentry.policy.cache.FactsCache` of it)."""

from __future__ import annotations

from dbsentry.engines.postgres.sql.facts import analyze
from dbsentry.policy.cache import DecisionCache, FactsCache
from dbsentry.policy.engine import EvalContext, Policy
from dbsentry.policy.verdict import Verdict, evaluate_text

__all__ = ["evaluate_sql", "facts_cache"]


def facts_cache(maxsize: int = 4096, max_text: int = 16384) -> FactsCache:
    """PostgreSQL's analysis, memoized by exact text."""
    return FactsCache(analyze, maxsize, max_text)


def evaluate_sql(
    policy: Policy,
    sql: str,
    ctx: EvalContext,
    facts_cache: FactsCache | None = None,
    decision_cache: DecisionCache | None = None,
) -> Verdict:
    """PostgreSQL text judged by ``policy``: every statement analysed (through
    ``facts_cache`` when given), evaluated (through ``decision_cache``), combined."""
    return evaluate_text(policy, sql, ctx, facts_cache.analyze if facts_cache is not None else analyze, decision_cache)

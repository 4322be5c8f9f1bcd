"""The policy on MySQL/MariaDB text: :func:`dbsentry.policy.verdict.evaluate_text` with the
MySQL analysis (under the session's ``sql_mode``), or a
:class:`~dbsentry.policy.cache.FactsCache` of it."""

from __future__ import annotations

from dbsentry.engines.mysql.sql.facts import analyzer
from dbsentry.engines.mysql.sql.lexing import DEFAULT_MODE, SqlMode
from dbsentry.policy.cache import DecisionCache, FactsCache
from dbsentry.policy.engine import EvalContext, Policy
from dbsentry.policy.verdict import Verdict, evaluate_text

__all__ = ["evaluate_sql", "facts_cache"]


def facts_cache(
    maxsize: int = 4096, max_text: int = 16384, mode: SqlMode = DEFAULT_MODE
) -> FactsCache:
    """The MySQL analysis in ``mode``, memoized by exact text (one cache per mode: the same
    text reads differently under ``NO_BACKSLASH_ESCAPES`` or ``ANSI_QUOTES``)."""
    return FactsCache(analyzer(mode), maxsize, max_text)


def evaluate_sql(
    policy: Policy,
    sql: str,
    ctx: EvalContext,
    facts_cache: FactsCache | None = None,
    decision_cache: DecisionCache | None = None,
    mode: SqlMode = DEFAULT_MODE,
) -> Verdict:
    """MySQL text judged by ``policy``: every statement analysed (through ``facts_cache``
    when given, which must be of the same ``mode``), evaluated (through
    ``decision_cache``), combined."""
    analyze = facts_cache.analyze if facts_cache is not None else analyzer(mode)
    return evaluate_text(policy, sql, ctx, analyze, decision_cache)

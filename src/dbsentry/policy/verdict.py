"""From SQL text to one decision: analyze every statement, evaluate each, combine."""

from __future__ import annotations

from dataclasses import dataclass

from dbsentry.policy.cache import DecisionCache, FactsCache
from dbsentry.policy.engine import (
    Decision,
    EvalContext,
    Policy,
    combine,
    evaluate,
    unparsable_decision,
)
from dbsentry.sql.facts import SQLParseError, StatementFacts, analyze


@dataclass(frozen=True, slots=True)
class Verdict:
    """The facts and decision per statement, and the combined decision for the string."""

    facts: tuple[StatementFacts, ...]
    decisions: tuple[Decision, ...]
    decision: Decision
    parse_error: str | None = None


def evaluate_sql(
    policy: Policy,
    sql: str,
    ctx: EvalContext,
    facts_cache: FactsCache | None = None,
    decision_cache: DecisionCache | None = None,
) -> Verdict:
    """Unparsable text is denied by ``baseline.unparsable`` (fail closed)."""
    try:
        facts = facts_cache.analyze(sql) if facts_cache is not None else tuple(analyze(sql))
    except SQLParseError as err:
        decision = unparsable_decision(str(err))
        return Verdict((), (), decision, str(err))
    if decision_cache is not None:
        decisions = tuple(decision_cache.evaluate(policy, f, ctx) for f in facts)
    else:
        decisions = tuple(evaluate(policy, f, ctx) for f in facts)
    return Verdict(facts, decisions, combine(decisions))

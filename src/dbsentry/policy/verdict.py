"""From SQL text to one decision: analyze every statement, evaluate each, combine."""

from __future__ import annotations

from dataclasses import dataclass

from dbsentry.engines.postgres.sql.facts import (
    SQLParseError,
    SQLTooComplex,
    SQLUnsupported,
    StatementFacts,
    analyze,
)
from dbsentry.policy.cache import DecisionCache, FactsCache
from dbsentry.policy.engine import (
    Decision,
    EvalContext,
    Policy,
    combine,
    evaluate,
    too_complex_decision,
    unparsable_decision,
    unsupported_decision,
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The facts and decision per statement, and the combined decision for the string."""

    facts: tuple[StatementFacts, ...]
    decisions: tuple[Decision, ...]
    decision: Decision
    parse_error: str | None = None
    # PostgreSQL's parser rejected the text itself (not a construct dbsentry refuses): the
    # client is answered as PostgreSQL would, 42601 at this character (from 0; None: the end)
    syntax_error: bool = False
    error_position: int | None = None

    @property
    def sqlstate(self) -> str:
        """The SQLSTATE a refusal of this string carries (54001 for a statement too
        complex to analyse, 42501 otherwise)."""
        return self.decision.sqlstate


def parse_error_decision(err: SQLParseError) -> Decision:
    """The ``baseline.unparsable`` deny for an error of :func:`dbsentry.engines.postgres.sql.facts.analyze`."""
    if isinstance(err, SQLTooComplex):
        return too_complex_decision(err.detail)
    if isinstance(err, SQLUnsupported):
        return unsupported_decision(str(err))
    return unparsable_decision(str(err))


def evaluate_sql(
    policy: Policy,
    sql: str,
    ctx: EvalContext,
    facts_cache: FactsCache | None = None,
    decision_cache: DecisionCache | None = None,
) -> Verdict:
    """Unparsable text is denied by ``baseline.unparsable`` (fail closed), and so is text
    with a construct dbsentry does not analyse or too complex to analyse (SQLSTATE 54001)."""
    try:
        facts = facts_cache.analyze(sql) if facts_cache is not None else tuple(analyze(sql))
    except SQLParseError as err:
        syntax = type(err) is SQLParseError
        return Verdict((), (), parse_error_decision(err), str(err), syntax, err.position if syntax else None)
    if decision_cache is not None:
        decisions = tuple(decision_cache.evaluate(policy, f, ctx) for f in facts)
    else:
        decisions = tuple(evaluate(policy, f, ctx) for f in facts)
    return Verdict(facts, decisions, combine(decisions))

"""From SQL text to one decision: analyze every statement, evaluate each, combine.

The analysis is the engine's (an :data:`~dbsentry.governance.facts.Analyzer`); PostgreSQL's
text goes through :func:`dbsentry.engines.postgres.sql.verdict.evaluate_sql`."""

from __future__ import annotations

from dataclasses import dataclass

from dbsentry.governance.facts import AnalysisRefused, Analyzer, StatementFacts
from dbsentry.policy.cache import DecisionCache
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


def parse_error_decision(err: AnalysisRefused) -> Decision:
    """The ``baseline.unparsable`` deny for a text the engine's analysis refused."""
    if err.sqlstate == "54001":
        return too_complex_decision(err.detail or str(err))
    if err.sqlstate == "0A000":
        return unsupported_decision(str(err))
    return unparsable_decision(str(err))


def evaluate_text(
    policy: Policy,
    sql: str,
    ctx: EvalContext,
    analyze: Analyzer,
    decision_cache: DecisionCache | None = None,
) -> Verdict:
    """Unparsable text is denied by ``baseline.unparsable`` (fail closed), and so is text
    with a construct dbsentry does not analyse or too complex to analyse (SQLSTATE 54001)."""
    try:
        facts = tuple(analyze(sql))
    except AnalysisRefused as err:
        syntax = err.sqlstate == "42601"
        return Verdict((), (), parse_error_decision(err), str(err), syntax, err.position if syntax else None)
    if decision_cache is not None:
        decisions = tuple(decision_cache.evaluate(policy, f, ctx) for f in facts)
    else:
        decisions = tuple(evaluate(policy, f, ctx) for f in facts)
    return Verdict(facts, decisions, combine(decisions))


def denial_message(decision: Decision) -> str:
    """The error text of a refused statement: ``dbsentry:`` and the rule that refused it."""
    rules = ", ".join(decision.rules) or "policy"
    if decision.action == "require_approval":
        who = ", ".join(decision.approvers) or "an approver"
        text = decision.message or f"this statement requires approval by {who}"
    else:
        text = decision.message or "statement denied by policy"
    if decision.rules and all(r in text for r in decision.rules):
        return f"dbsentry: {text}"  # the rule's message already names it
    return f"dbsentry: {text} (rule: {rules})"

"""Policy as code: rules in YAML, a production baseline, pure evaluation."""

from dbsentry.policy.baseline import baseline_rule_names, baseline_rules
from dbsentry.policy.cache import DecisionCache, FactsCache, decision_key
from dbsentry.policy.engine import (
    Decision,
    EvalContext,
    MaskSpec,
    Policy,
    combine,
    evaluate,
    unparsable_decision,
)
from dbsentry.policy.loader import PolicyError, default_policy, load_policy, parse_policy
from dbsentry.policy.verdict import Verdict, evaluate_text

__all__ = [
    "Decision",
    "DecisionCache",
    "EvalContext",
    "FactsCache",
    "MaskSpec",
    "Policy",
    "PolicyError",
    "Verdict",
    "baseline_rule_names",
    "baseline_rules",
    "combine",
    "decision_key",
    "default_policy",
    "evaluate",
    "evaluate_text",
    "load_policy",
    "parse_policy",
    "unparsable_decision",
]

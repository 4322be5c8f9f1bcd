"""Evaluating statement facts against a policy: pure, synchronous, no I/O.

Precedence: ``deny`` > ``require_approval`` > ``mask`` > ``allow``.  Every rule that
matches is evaluated; the most restrictive action wins and the decision names every
rule that asked for it.

Set-valued facts (commands, classes, tables, functions, flags) match differently by
action, so that a broad fact never widens access:

- for ``deny``, ``require_approval`` and ``mask`` a condition holds when *any* element
  matches (a data-modifying CTE makes a SELECT also a DELETE);
- for ``allow`` it holds when there is at least one element and *every* element
  matches (an allow for ``reports`` neither covers a statement that also touches
  ``salaries`` nor one that touches no table at all).

A rule's ``unless`` uses the opposite semantics to its rule, for the same reason.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from dbsentry.governance.facts import StatementFacts
from dbsentry.identity.model import Identity
from dbsentry.policy.model import Action, Match, Rule, TimeWindow

# Bump when the baseline or matching semantics change, so cached decisions expire.
ENGINE_REVISION = "3"

PRECEDENCE: dict[str, int] = {"allow": 0, "mask": 1, "require_approval": 2, "deny": 3}
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class EvalContext:
    """Who runs the statement, where and when."""

    identity: Identity
    connection: str
    environment: str
    now: datetime  # timezone-aware
    # From lineage and the classifier, when the connection's catalog is known: the data
    # classes of the columns the statement reads, and of those it writes.
    data_classes: frozenset[str] = frozenset()
    written_data_classes: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class MaskSpec:
    rule: str
    strategy: str
    columns: tuple[str, ...] | None
    params: tuple[tuple[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one statement (or, combined, for a query string)."""

    action: Action
    rules: tuple[str, ...]  # the rules that asked for ``action``
    message: str | None = None
    approvers: tuple[str, ...] = ()
    min_approvals: int = 0
    masks: tuple[MaskSpec, ...] = ()  # apply when action is mask or (once approved) require_approval
    matched: tuple[str, ...] = ()  # every rule that matched, whatever its action
    sqlstate: str = "42501"  # the SQLSTATE a refusal carries (insufficient_privilege)

    @property
    def allowed(self) -> bool:
        return self.action in ("allow", "mask")


# -- compiled matching -------------------------------------------------------------------

Pred = Callable[[StatementFacts, EvalContext], bool]


def _globs(patterns: Iterable[str], fold: bool = True) -> re.Pattern[str]:
    flags = re.IGNORECASE if fold else 0
    return re.compile("|".join(fnmatch.translate(p) for p in patterns), flags)


def _elements(values: Sequence[str], test: Callable[[str], bool], every: bool) -> bool:
    if every:
        return bool(values) and all(test(v) for v in values)
    return any(test(v) for v in values)


def _table_test(patterns: list[str], every: bool) -> Callable[[str], bool]:
    """An unqualified table may live in any schema on the search path.  Restrictive rules
    assume it does (``hr.salaries`` catches ``salaries``); allow rules assume only
    ``public`` (so ``hr.salaries`` in an allow does not cover a bare ``salaries``)."""
    full = _globs(patterns)
    by_relname: list[tuple[re.Pattern[str], re.Pattern[str] | None]] = []
    for p in patterns:
        schema, dot, rel = p.rpartition(".")
        by_relname.append((_globs([rel]), _globs([schema]) if dot else None))

    def test(table: str) -> bool:
        if full.fullmatch(table):
            return True
        _, dot, rel = table.rpartition(".")
        for rel_re, schema_re in by_relname:
            if schema_re is None:
                # pattern without schema: matches the relation in any schema
                if rel_re.fullmatch(rel):
                    return True
            elif not dot and rel_re.fullmatch(rel) and (not every or schema_re.fullmatch("public")):
                return True
        return False

    return test


def _function_test(patterns: list[str]) -> Callable[[str], bool]:
    """A pattern without a schema matches the function in any schema."""
    full = _globs(patterns)
    bare = _globs([p for p in patterns if "." not in p] or ["\x00"])

    def test(fn: str) -> bool:
        return bool(full.fullmatch(fn) or bare.fullmatch(fn.rpartition(".")[2]))

    return test


def _time_test(window: TimeWindow) -> Pred:
    tz = ZoneInfo(window.timezone)
    days = {_WEEKDAYS.index(d) for d in window.weekdays} if window.weekdays else None
    span: tuple[int, int] | None = None
    if window.hours:
        start, end = window.hours.split("-")
        sh, sm = (int(x) for x in start.split(":"))
        eh, em = (int(x) for x in end.split(":"))
        span = (sh * 60 + sm, eh * 60 + em)

    def test(facts: StatementFacts, ctx: EvalContext) -> bool:
        # minute resolution on purpose: the decision cache keys on the minute
        local = ctx.now.astimezone(tz)
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if span is not None:
            s, e = span
            if s <= e:
                inside = s <= minute < e
            else:  # wraps past midnight: the window belongs to the day it starts
                inside = minute >= s or minute < e
                if inside and minute < e:
                    day = (day - 1) % 7
            if not inside:
                return False
        return days is None or day in days

    return test


def compile_match(m: Match, every: bool) -> list[Pred]:
    """Predicates that must all hold.  ``every`` selects allow semantics (see module doc)."""
    preds: list[Pred] = []
    if m.identities is not None:
        ident = _globs(m.identities)
        preds.append(lambda f, c: bool(ident.fullmatch(c.identity.name)))
    if m.groups is not None:
        groups = frozenset(m.groups)
        preds.append(lambda f, c: not groups.isdisjoint(c.identity.groups))
    if m.kind is not None:
        kind = m.kind
        preds.append(lambda f, c: c.identity.kind == kind)
    if m.connections is not None:
        conns = _globs(m.connections, fold=False)
        preds.append(lambda f, c: bool(conns.fullmatch(c.connection)))
    if m.environments is not None:
        envs = frozenset(m.environments)
        preds.append(lambda f, c: c.environment in envs)
    if m.commands is not None:
        cmd = _globs(m.commands)
        preds.append(lambda f, c: _elements(f.commands, lambda v: bool(cmd.fullmatch(v)), every))
    if m.classes is not None:
        classes = frozenset(m.classes)
        preds.append(lambda f, c: _elements(f.classes, classes.__contains__, every))
    if m.tables is not None:
        ttest = _table_test(m.tables, every)

        def tables(f: StatementFacts, c: EvalContext) -> bool:
            if every:
                touched = (*f.tables_read, *f.tables_written)
                return bool(touched) and all(ttest(t) for t in touched)
            return any(ttest(t) for t in f.tables_read) or any(ttest(t) for t in f.tables_written)

        preds.append(tables)
    if m.functions is not None:
        ftest = _function_test(m.functions)
        preds.append(lambda f, c: _elements(f.functions, ftest, every))
    if m.settings is not None:
        # setting names are case-insensitive; "?" (a name that is not a constant) is matched
        # only by a pattern that matches "?", e.g. "*"
        setting = _globs(m.settings)
        preds.append(lambda f, c: _elements(f.settings, lambda v: bool(setting.fullmatch(v)), every))
    if m.flags is not None:
        wanted = frozenset(m.flags)
        if every:
            preds.append(lambda f, c: bool(f.flags) and f.flags <= wanted)
        else:
            preds.append(lambda f, c: not wanted.isdisjoint(f.flags))
    if m.data_classes is not None:
        dcs = frozenset(m.data_classes)
        if every:
            preds.append(lambda f, c: bool(c.data_classes) and c.data_classes <= dcs)
        else:
            preds.append(lambda f, c: not dcs.isdisjoint(c.data_classes))
    if m.writes_data_classes is not None:
        wdcs = frozenset(m.writes_data_classes)
        if every:
            preds.append(lambda f, c: bool(c.written_data_classes) and c.written_data_classes <= wdcs)
        else:
            preds.append(lambda f, c: not wdcs.isdisjoint(c.written_data_classes))
    if m.risk is not None:
        risks = frozenset(m.risk)
        preds.append(lambda f, c: f.risk in risks)
    if m.time is not None:
        preds.append(_time_test(m.time))
    return preds


@dataclass(frozen=True, slots=True)
class CompiledRule:
    rule: Rule
    preds: tuple[Pred, ...]
    unless: tuple[Pred, ...] | None
    baseline: bool = False

    @property
    def name(self) -> str:
        return self.rule.name

    def matches(self, facts: StatementFacts, ctx: EvalContext) -> bool:
        for p in self.preds:
            if not p(facts, ctx):
                return False
        if self.unless is not None:
            return not all(p(facts, ctx) for p in self.unless)
        return True


def compile_rule(rule: Rule, baseline: bool = False) -> CompiledRule:
    every = rule.action == "allow"
    # ``unless`` narrows the rule, so it uses the opposite semantics from the rule itself:
    # a deny "unless temporary" must not be escaped by a statement that is only partly so.
    unless = tuple(compile_match(rule.unless, not every)) if rule.unless is not None else None
    return CompiledRule(rule, tuple(compile_match(rule.match, every)), unless, baseline)


# -- the policy --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """Compiled rules (baseline first) and what the decision cache must key on."""

    rules: tuple[CompiledRule, ...]
    default: Action = "allow"
    version: str = ""
    source: str = "<baseline>"
    production_environments: frozenset[str] = frozenset({"production"})
    environments: frozenset[str] = frozenset()  # other environment names the policy declares
    allowed_settings: tuple[str, ...] = ()  # beyond the baseline's allow-list (globs)
    safe_functions: frozenset[str] = frozenset()  # user functions vouched for (schema.name globs)
    uses_identity_names: bool = False
    uses_time: bool = False
    uses_data_classes: bool = False
    _by_name: dict[str, CompiledRule] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        rules: Sequence[CompiledRule],
        *,
        default: Action = "allow",
        content: bytes = b"",
        source: str = "<baseline>",
        production_environments: Iterable[str] = ("production",),
        environments: Iterable[str] = (),
        allowed_settings: Iterable[str] = (),
        safe_functions: Iterable[str] = (),
    ) -> Policy:
        digest = hashlib.sha256(ENGINE_REVISION.encode() + b"\0" + content).hexdigest()[:16]
        return cls(
            rules=tuple(rules),
            default=default,
            version=digest,
            source=source,
            production_environments=frozenset(production_environments),
            environments=frozenset(environments),
            allowed_settings=tuple(allowed_settings),
            safe_functions=frozenset(safe_functions),
            uses_identity_names=any(_uses(r, "identities") for r in rules),
            uses_time=any(_uses(r, "time") for r in rules),
            uses_data_classes=any(_uses(r, "data_classes") or _uses(r, "writes_data_classes") for r in rules),
            _by_name={r.name: r for r in rules},
        )

    def rule(self, name: str) -> CompiledRule | None:
        return self._by_name.get(name)

    def evaluate(self, facts: StatementFacts, ctx: EvalContext) -> Decision:
        return evaluate(self, facts, ctx)


def _fill(rule: Rule, facts: StatementFacts) -> str:
    """A rule message may name the settings the statement changes: ``{settings}`` (those
    the rule's ``unless`` does not excuse)."""
    message = rule.message or ""
    if "{settings}" not in message:
        return message
    names = facts.settings
    excused = rule.unless.settings if rule.unless is not None else None
    if excused:
        pattern = _globs(excused)
        names = tuple(n for n in names if not pattern.fullmatch(n)) or names
    return message.replace("{settings}", ", ".join(names) or "?")


def _uses(rule: CompiledRule, attr: str) -> bool:
    m, u = rule.rule.match, rule.rule.unless
    return getattr(m, attr) is not None or (u is not None and getattr(u, attr) is not None)


def evaluate(policy: Policy, facts: StatementFacts, ctx: EvalContext) -> Decision:
    """The decision for one statement."""
    matched = [r for r in policy.rules if r.matches(facts, ctx)]
    if not matched:
        if policy.default == "deny":
            return Decision("deny", ("default",), "no policy rule allows this statement")
        return Decision("allow", ())
    action: Action = max((r.rule.action for r in matched), key=PRECEDENCE.__getitem__)
    winners = [r.rule for r in matched if r.rule.action == action]
    masks = tuple(
        MaskSpec(
            r.rule.name,
            r.rule.mask.strategy,
            tuple(r.rule.mask.columns) if r.rule.mask.columns is not None else None,
            tuple(sorted(r.rule.mask.params.items())),
        )
        for r in matched
        if r.rule.action == "mask" and r.rule.mask is not None
    )
    message: str | None = None
    approvers: tuple[str, ...] = ()
    min_approvals = 0
    if action == "deny":
        message = "; ".join(
            _fill(w, facts) if w.message else f"denied by policy rule {w.name}" for w in winners
        )
    elif action == "require_approval":
        approvers = tuple(dict.fromkeys(g for w in winners for g in (w.approvers or ())))
        min_approvals = max(w.min_approvals for w in winners)
        message = "; ".join(_fill(w, facts) for w in winners if w.message) or (
            f"needs approval by {', '.join(approvers)}"
        )
    return Decision(
        action=action,
        rules=tuple(w.name for w in winners),
        message=message,
        approvers=approvers,
        min_approvals=min_approvals,
        masks=masks if action in ("mask", "require_approval") else (),
        matched=tuple(r.name for r in matched),
    )


UNPARSABLE_RULE = "baseline.unparsable"
#: statement_too_complex: the SQLSTATE of a statement too deep or too large to analyse
TOO_COMPLEX_SQLSTATE = "54001"


def unparsable_decision(reason: str) -> Decision:
    """Fail closed: what the proxy cannot parse, it cannot govern.  Applies in every
    environment and cannot be disabled."""
    return Decision(
        "deny",
        (UNPARSABLE_RULE,),
        f"statement rejected: PostgreSQL's parser cannot read it ({reason})",
        matched=(UNPARSABLE_RULE,),
    )


def unsupported_decision(reason: str) -> Decision:
    """Fail closed on a construct dbsentry does not analyse; ``reason`` names it
    (``dbsentry cannot analyse JSON_TABLE (JsonTable)``).  Part of ``baseline.unparsable``."""
    return Decision("deny", (UNPARSABLE_RULE,), f"statement rejected: {reason}", matched=(UNPARSABLE_RULE,))


def too_complex_decision(detail: str) -> Decision:
    """Fail closed on a statement nested too deeply or too large to analyse, with SQLSTATE
    54001 (statement_too_complex).  Part of ``baseline.unparsable``."""
    return Decision(
        "deny",
        (UNPARSABLE_RULE,),
        f"statement too complex ({detail})",
        matched=(UNPARSABLE_RULE,),
        sqlstate=TOO_COMPLEX_SQLSTATE,
    )


def combine(decisions: Sequence[Decision]) -> Decision:
    """One decision for a multi-statement query string: the most restrictive one, with
    rules, approvers and masks of the statements that share that action."""
    if not decisions:
        return Decision("allow", ())
    action: Action = max((d.action for d in decisions), key=PRECEDENCE.__getitem__)
    same = [d for d in decisions if d.action == action]
    if len(same) == 1 and len(decisions) == 1:
        return same[0]
    messages = [d.message for d in same if d.message]
    return Decision(
        sqlstate=same[0].sqlstate,
        action=action,
        rules=tuple(dict.fromkeys(r for d in same for r in d.rules)),
        message="; ".join(dict.fromkeys(messages)) or None,
        approvers=tuple(dict.fromkeys(a for d in same for a in d.approvers)),
        min_approvals=max(d.min_approvals for d in same),
        masks=tuple(dict.fromkeys(m for d in decisions for m in d.masks))
        if action in ("mask", "require_approval")
        else (),
        matched=tuple(dict.fromkeys(r for d in decisions for r in d.matched)),
    )

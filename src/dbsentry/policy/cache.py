"""Caches for the hot path: facts by exact text, decisions by facts.

Why not key decisions on the fingerprint?  libpg_query's fingerprint ignores constants:
``DELETE FROM t WHERE 1=1`` and ``DELETE FROM t WHERE 2=1`` share one, yet only the
first has an always-true WHERE.  So:

- :class:`FactsCache` maps the *exact* statement text to its facts (the text determines
  the parse, so this is trivially sound);
- :class:`DecisionCache` maps (policy version, the parts of the context rules can read,
  the facts) to a decision.  ``evaluate`` is a pure function of the policy, the facts
  and the context; the key holds every input it can read, so a hit returns what
  ``evaluate`` would.  Facts compare by value, ignoring only their text and span, which
  no rule reads; literal-dependent facts (``where_trivially_true``, the flags, the
  ``set_config`` target...) are fields of the facts and therefore part of the key.
  The context parts are the groups and kind always, the identity name only when some
  rule matches on names, the connection and environment, the data classes when some
  rule matches on them, and the minute of ``now`` when some rule has a time window
  (time windows have minute resolution).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

from dbsentry.governance.facts import Analyzer, StatementFacts
from dbsentry.policy.engine import Decision, EvalContext, Policy, evaluate

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A bounded mapping that drops the least recently used entry."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        try:
            value = self._data[key]
        except KeyError:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


class FactsCache:
    """An engine's ``analyze`` memoized by exact text.  Refusals are not cached."""

    def __init__(self, analyze: Analyzer, maxsize: int = 4096, max_text: int = 16384) -> None:
        self._analyze = analyze
        self._lru: LRU[str, tuple[StatementFacts, ...]] = LRU(maxsize)
        self._max_text = max_text  # huge one-off statements would just evict useful entries

    def analyze(self, sql: str) -> tuple[StatementFacts, ...]:
        hit = self._lru.get(sql)
        if hit is not None:
            return hit
        facts = tuple(self._analyze(sql))
        if len(sql) <= self._max_text:
            self._lru.put(sql, facts)
        return facts


DecisionKey = tuple[object, ...]


def decision_key(policy: Policy, facts: StatementFacts, ctx: EvalContext) -> DecisionKey:
    """Every input ``evaluate(policy, facts, ctx)`` can read (see the module docstring)."""
    ident = ctx.identity
    minute = ctx.now.replace(second=0, microsecond=0).timestamp() if policy.uses_time else None
    return (
        policy.version,
        ident.groups,
        ident.kind,
        ident.name if policy.uses_identity_names else None,
        ctx.connection,
        ctx.environment,
        (ctx.data_classes, ctx.written_data_classes) if policy.uses_data_classes else None,
        minute,
        facts,
    )


class DecisionCache:
    """``evaluate`` memoized; safe to share across sessions and policy reloads (the
    policy version is in the key)."""

    def __init__(self, maxsize: int = 16384) -> None:
        self._lru: LRU[DecisionKey, Decision] = LRU(maxsize)

    @property
    def stats(self) -> tuple[int, int]:
        return self._lru.hits, self._lru.misses

    def evaluate(self, policy: Policy, facts: StatementFacts, ctx: EvalContext) -> Decision:
        key = decision_key(policy, facts, ctx)
        hit = self._lru.get(key)
        if hit is not None:
            return hit
        decision = evaluate(policy, facts, ctx)
        self._lru.put(key, decision)
        return decision

    def __len__(self) -> int:
        return len(self._lru)

    def clear(self) -> None:
        self._lru.clear()

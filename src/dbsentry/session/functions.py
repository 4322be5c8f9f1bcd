"""Which functions may change data: PostgreSQL's own volatility, and what SQL bodies do.

A function is *safe* when the catalog says it is IMMUTABLE or STABLE (PostgreSQL runs such
functions read-only) and, for LANGUAGE sql, its body only reads (and calls safe functions).
Built-in functions are known by name and judged by their own flags (``nextval``, file access
and the like are flagged by the statement facts).  Everything else may change data:
VOLATILE user-defined functions, procedures, and names the catalog does not know (created
since it was read): a statement that calls one is marked ``volatile_function``, which keeps
agents from calling it and runs it under the row guard for people.
"""

from __future__ import annotations

from dataclasses import replace

from dbsentry.masking.catalog import Catalog, Function
from dbsentry.sql.facts import SQLParseError, StatementFacts, analyze

FLAG = "volatile_function"
_MAX_DEPTH = 5
_READ_ONLY_CLASSES = frozenset({"READ"})
_UNSAFE_FLAGS = frozenset({"side_effect_function", "dynamic_sql", "file_access", "remote_connection", "row_lock", FLAG})


class FunctionSafety:
    """Judges the functions of one catalog; memoized, so build one per catalog."""

    __slots__ = ("_by_name", "_catalog", "_memo")

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._by_name: dict[str, list[Function]] = {}
        for fn in catalog.functions.values():
            self._by_name.setdefault(fn.name, []).append(fn)
        self._memo: dict[str, bool] = {}

    @property
    def known(self) -> bool:
        """Whether the catalog names the built-in functions (else nothing is judged)."""
        return bool(self._catalog.builtin_functions)

    def may_change_data(self, name: str, depth: int = 0) -> bool:
        """``name`` as a statement calls it: ``fn``, ``schema.fn`` or ``db.schema.fn``."""
        hit = self._memo.get(name)
        if hit is not None:
            return hit
        parts = name.split(".")
        base = parts[-1]
        schema = parts[-2] if len(parts) >= 2 else None
        if schema == "pg_catalog":
            verdict = False
        else:
            candidates = [f for f in self._by_name.get(base, ()) if schema is None or f.schema == schema]
            if candidates:
                # Any overload or same-named function on some schema could be the one called.
                verdict = any(self._unsafe(f, depth) for f in candidates)
            else:
                verdict = not (schema is None and base in self._catalog.builtin_functions)
        self._memo[name] = verdict
        return verdict

    def _unsafe(self, fn: Function, depth: int) -> bool:
        if fn.kind == "p" or fn.volatility not in ("i", "s"):
            return True
        if fn.language != "sql":
            return False  # PostgreSQL runs non-volatile functions read-only
        if fn.body is None or depth >= _MAX_DEPTH:
            return True
        try:
            statements = analyze(fn.body)
        except (SQLParseError, RecursionError):
            return True
        for facts in statements:
            if not _READ_ONLY_CLASSES.issuperset(facts.classes) or facts.flags & _UNSAFE_FLAGS:
                return True
            if any(self.may_change_data(called, depth + 1) for called in facts.functions):
                return True
        return False

    def mark(self, facts: StatementFacts) -> StatementFacts:
        """``facts`` with :data:`FLAG` (and ``side_effect_function``) when it calls a
        function that may change data."""
        if not facts.functions or FLAG in facts.flags or not self.known:
            return facts
        if not any(self.may_change_data(name) for name in facts.functions):
            return facts
        flags = facts.flags | {FLAG, "side_effect_function"}
        risk = facts.risk if facts.risk == "high" else "moderate"
        return replace(facts, flags=frozenset(flags), risk=risk)

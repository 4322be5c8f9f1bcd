"""Which statements run code that may change data: functions (PostgreSQL's own volatility,
what SQL bodies do), views over such functions, and triggers or rules on written tables.

A function is *safe* when the catalog says it is IMMUTABLE or STABLE (PostgreSQL runs such
functions read-only) and, for LANGUAGE sql, its body only reads (and calls safe functions).
Built-in functions are known by name and judged by their own flags (``nextval``, file access
and the like are flagged by the statement facts).  Everything else may change data:
VOLATILE user-defined functions, procedures, and names the catalog does not know (created
since it was read).  A statement that calls one, reads a view that does, or writes a
table with triggers or rules is marked ``volatile_function``, which keeps agents from
running it and runs it under the row guard for people.
"""

from __future__ import annotations

from dataclasses import replace

from dbsentry.masking.catalog import Catalog, Function, Relation
from dbsentry.policy.cache import LRU
from dbsentry.sql.facts import SQLParseError, StatementFacts, analyze

FLAG = "volatile_function"
_MAX_DEPTH = 5
_READ_ONLY_CLASSES = frozenset({"READ"})
_UNSAFE_FLAGS = frozenset({"side_effect_function", "dynamic_sql", "file_access", "remote_connection", "row_lock", FLAG})


class FunctionSafety:
    """Judges the functions of one catalog; memoized, so build one per catalog."""

    __slots__ = ("_by_name", "_catalog", "_marked", "_memo", "_relations", "_views")

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._by_name: dict[str, list[Function]] = {}
        for fn in catalog.functions.values():
            self._by_name.setdefault(fn.name, []).append(fn)
        self._relations: dict[str, list[Relation]] = {}
        for rel in catalog.relations.values():
            self._relations.setdefault(rel.name, []).append(rel)
        self._memo: dict[str, bool] = {}
        self._views: dict[int, bool] = {}
        # Statement text -> marked facts (the text decides the facts).
        self._marked: LRU[str, tuple[StatementFacts, StatementFacts]] = LRU(4096)

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

    def _relations_named(self, table: str) -> list[Relation]:
        parts = table.split(".")
        schema = parts[-2] if len(parts) >= 2 else None
        return [r for r in self._relations.get(parts[-1], ()) if schema is None or r.schema == schema]

    def _view_may_change_data(self, view: Relation, depth: int) -> bool:
        """A view whose definition calls such a function (reading it runs the function)."""
        hit = self._views.get(view.oid)
        if hit is not None:
            return hit
        self._views[view.oid] = True  # a cycle, or a definition that cannot be read: unsafe
        verdict = True
        if view.definition is not None and depth < _MAX_DEPTH:
            try:
                statements = analyze(view.definition)
            except (SQLParseError, RecursionError):
                statements = []
            verdict = not statements or any(self._runs_unsafe_code(f, depth + 1) for f in statements)
        self._views[view.oid] = verdict
        return verdict

    def _runs_unsafe_code(self, facts: StatementFacts, depth: int = 0) -> bool:
        if any(self.may_change_data(name, depth) for name in facts.functions):
            return True
        for table in facts.tables_written:
            if any(r.runs_code for r in self._relations_named(table)):
                return True  # triggers or rules run on the write
        for table in facts.tables_read:
            if any(r.is_view and self._view_may_change_data(r, depth) for r in self._relations_named(table)):
                return True
        return False

    def mark(self, facts: StatementFacts) -> StatementFacts:
        """``facts`` with :data:`FLAG` (and ``side_effect_function``) when running it runs
        code that may change data: a function, a view over one, a trigger or rule."""
        if FLAG in facts.flags or not self.known:
            return facts
        if not (facts.functions or facts.tables_read or facts.tables_written):
            return facts
        hit = self._marked.get(facts.text)
        if hit is not None and (hit[0] is facts or hit[0] == facts):
            return hit[1]
        marked = facts
        if self._runs_unsafe_code(facts):
            flags = facts.flags | {FLAG, "side_effect_function"}
            risk = facts.risk if facts.risk == "high" else "moderate"
            marked = replace(facts, flags=frozenset(flags), risk=risk)
        self._marked.put(facts.text, (facts, marked))
        return marked

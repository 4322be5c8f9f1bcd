"""Which statements run code that may change data, from the connection's catalog.

Code runs where a statement does not show it: in functions it calls (and the functions
those call), in views it reads, in the triggers, rules, defaults and checks of the tables
it writes (and of their partitions), in domain constraints and casts of the types it names,
in the functions behind user-defined operators.  Two verdicts, for two uses:

- **changes data**: a user function that is VOLATILE, a procedure, an aggregate or window
  function (its transition functions are not judged), a LANGUAGE sql function whose body
  writes, changes settings or calls such a function, or a name the catalog does not know
  (created since it was read);
- **opaque**: the above, and any function in a procedural language (PL/pgSQL, PL/Python...)
  even when STABLE: it may call a volatile one, or ``set_config`` (which a read-only session
  allows).

A statement that runs opaque code is marked ``volatile_function`` and
``side_effect_function``: the production baseline denies it to agents, it runs under the
row guard for people, and views and cursors over it are refused in production.

Built-in functions are judged by the statement facts' own flags (``nextval``, file access...);
C functions of extensions are trusted to be what their volatility says.  A write to a table
the catalog does not know (created since it was read, or temporary) counts as opaque.
"""

from __future__ import annotations

import fnmatch
from dataclasses import replace

from dbsentry.engines.postgres.sql.facts import (
    SQLParseError,
    StatementFacts,
    analyze,
    operators_and_types,
)
from dbsentry.masking.catalog import Catalog, Function, Relation
from dbsentry.policy.cache import LRU

FLAG = "volatile_function"
SIDE_EFFECT = "side_effect_function"
_MAX_DEPTH = 5
_TRUSTED_LANGUAGES = frozenset({"sql", "c", "internal"})
_WRITING_FLAGS = frozenset(
    {SIDE_EFFECT, "dynamic_sql", "file_access", "remote_connection", "row_lock", "read_write_transaction", "role_switch"}
)

# The setting without which PostgreSQL counts no changed rows (the row guard's measure).
_COUNTING = "track_counts"
# Maintenance runs the code of a table's indexes, not its triggers.
_MAINTENANCE = frozenset({"VACUUM", "ANALYZE", "REINDEX", "CLUSTER"})
# Statements whose CommandComplete reports the rows they changed.
_REPORTING = frozenset({"UPDATE", "DELETE", "MERGE", "INSERT"})

# A verdict: (changes data, opaque); opaque includes changes data.
_SAFE = (False, False)
_OPAQUE = (False, True)
_CHANGES = (True, True)


# Operators and types a statement may name without running user code (as the parser gives
# them: a type written as a keyword, int or varchar, comes as pg_catalog.int4 ...).  Any
# other name may be a user's, created since the catalog was read (effect durability, see
# FunctionSafety.reads_beyond); a built-in one not listed only makes a read wait.
_BUILTIN_OPERATORS = frozenset(
    [
        "=", "<>", "!=", "<", ">", "<=", ">=", "+", "-", "*", "/", "%", "^", "||", "~~", "!~~", "~~*", "!~~*",
        "~", "!~", "~*", "!~*", "@>", "<@", "&&", "->", "->>", "#>", "#>>", "?", "?|", "?&", "@@", "@?", "<<",
        ">>", "&", "|", "#", "@", "|/", "||/", "<->", "-|-", "&<", "&>", "^@", "!!",
    ]
)
_BUILTIN_TYPES = frozenset(
    [
        "text", "varchar", "char", "bpchar", "name", "int2", "int4", "int8", "smallint", "integer", "bigint",
        "int", "numeric", "decimal", "real", "float4", "float8", "bool", "boolean", "date", "time", "timetz",
        "timestamp", "timestamptz", "interval", "uuid", "json", "jsonb", "bytea", "inet", "cidr", "macaddr",
        "macaddr8", "oid", "regclass", "regtype", "regproc", "regprocedure", "regoper", "regnamespace",
        "regrole", "money", "xml", "bit", "varbit", "tsvector", "tsquery", "point", "line", "lseg", "box",
        "path", "polygon", "circle", "record", "void", "anyelement", "unknown", "int4range", "int8range",
        "numrange", "tsrange", "tstzrange", "daterange", "pg_lsn", "txid_snapshot", "pg_snapshot", "xid", "xid8",
        "cid", "tid",
    ]
)


def _definition(view: Relation, depth: int) -> list[StatementFacts]:
    """The statements of a view's definition ([]: none, unreadable, or nested too deep)."""
    if view.definition is None or depth >= _MAX_DEPTH:
        return []
    try:
        return analyze(view.definition)
    except (SQLParseError, RecursionError):
        return []


def names_user_code(text: str, catalog: Catalog | None = None) -> bool:
    """Whether ``text`` names an operator or a type that is not built in (a user's operator
    runs its function; a cast runs a type's input or a cast function, a domain its CHECK),
    or one ``catalog`` knows runs code; a text that does not parse: yes."""
    if not text:
        return False
    try:
        operators, types = operators_and_types(text)
    except (SQLParseError, RecursionError):
        return True
    for names, builtin, code in (
        (operators, _BUILTIN_OPERATORS, catalog.operator_code if catalog is not None else {}),
        (types, _BUILTIN_TYPES, catalog.type_code if catalog is not None else {}),
    ):
        for name in names:
            schema, _, base = name.rpartition(".")
            if schema and schema.split(".")[-1] != "pg_catalog":
                return True
            if not schema and base.lower() not in builtin:
                return True
            if any(n == base for (_, n) in code):
                return True
    return False


def _worst(a: tuple[bool, bool], b: tuple[bool, bool]) -> tuple[bool, bool]:
    return (a[0] or b[0], a[1] or b[1])


class FunctionSafety:
    """Judges what the statements of one catalog run; memoized, so build one per catalog."""

    __slots__ = (
        "_beyond", "_by_name", "_catalog", "_fn_memo", "_marked", "_name_memo", "_relations", "_trusted", "_trusting",
        "_views",
    )  # fmt: skip

    def __init__(self, catalog: Catalog, trusted: frozenset[str] = frozenset()) -> None:
        self._catalog = catalog
        # Functions the policy vouches for (``baseline.safe_functions``: schema.name globs).
        self._trusted = trusted
        self._trusting: dict[frozenset[str], FunctionSafety] = {}
        self._by_name: dict[str, list[Function]] = {}
        for fn in catalog.functions.values():
            self._by_name.setdefault(fn.name, []).append(fn)
        self._relations: dict[str, list[Relation]] = {}
        for rel in catalog.relations.values():
            self._relations.setdefault(rel.name, []).append(rel)
        self._name_memo: dict[str, tuple[bool, bool]] = {}
        self._fn_memo: dict[int, tuple[bool, bool]] = {}
        self._views: dict[int, tuple[bool, bool]] = {}
        self._beyond: dict[int, bool] = {}  # views: see reads_beyond
        # Statement text -> (facts, marked facts): the text decides the facts.
        self._marked: LRU[str, tuple[StatementFacts, StatementFacts]] = LRU(4096)

    def trusting(self, trusted: frozenset[str]) -> FunctionSafety:
        """The same judge, vouching for the functions ``trusted`` names (kept per set, so
        its memos survive between statements)."""
        if trusted == self._trusted:
            return self
        found = self._trusting.get(trusted)
        if found is None:
            found = self._trusting[trusted] = FunctionSafety(self._catalog, trusted)
        return found

    def _vouched(self, fn: Function) -> bool:
        name = f"{fn.schema}.{fn.name}".lower()
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self._trusted)

    @property
    def known(self) -> bool:
        """Whether the catalog names the built-in functions (else nothing is judged)."""
        return bool(self._catalog.builtin_functions)

    # ------------------------------------------------------------------ functions

    def function(self, name: str, depth: int = 0) -> tuple[bool, bool]:
        """``name`` as a statement calls it: ``fn``, ``schema.fn`` or ``db.schema.fn``."""
        hit = self._name_memo.get(name)
        if hit is not None:
            return hit
        parts = name.split(".")
        schema = parts[-2] if len(parts) >= 2 else None
        if schema == "pg_catalog":
            verdict = _SAFE
        else:
            candidates = self._named(name)
            if candidates:
                # Any overload, or a same-named function in any schema, could be the one called.
                verdict = _SAFE
                for fn in candidates:
                    verdict = _worst(verdict, self._function(fn, depth))
            elif schema is None and parts[-1] in self._catalog.builtin_functions:
                verdict = _SAFE
            else:
                verdict = _CHANGES  # not known: created since the catalog was read
        self._name_memo[name] = verdict
        return verdict

    def _by_oid(self, oid: int, depth: int) -> tuple[bool, bool]:
        fn = self._catalog.functions.get(oid)
        return _CHANGES if fn is None else self._function(fn, depth)

    def _function(self, fn: Function, depth: int) -> tuple[bool, bool]:
        hit = self._fn_memo.get(fn.oid)
        if hit is not None:
            return hit
        self._fn_memo[fn.oid] = _CHANGES  # recursion through itself: the worst
        verdict = self._judge(fn, depth)
        self._fn_memo[fn.oid] = verdict
        return verdict

    def _judge(self, fn: Function, depth: int) -> tuple[bool, bool]:
        if self._trusted and self._vouched(fn):
            return _SAFE  # the policy vouches for it
        if fn.kind in ("p", "a", "w") or fn.volatility not in ("i", "s"):
            return _CHANGES
        if fn.language not in _TRUSTED_LANGUAGES:
            return _OPAQUE  # PostgreSQL runs it read-only, but it may call a volatile one
        if fn.language != "sql":
            return _SAFE
        if fn.body is None or depth >= _MAX_DEPTH:
            return _CHANGES
        try:
            statements = analyze(fn.body)
        except (SQLParseError, RecursionError):
            return _CHANGES
        verdict = _SAFE
        for facts in statements:
            if not frozenset(facts.classes) <= {"READ"} or facts.flags & _WRITING_FLAGS or facts.settings:
                return _CHANGES  # writes, or changes the session (set_config: read-only off)
            verdict = _worst(verdict, self._runs(facts, depth + 1))
        return verdict

    # ------------------------------------------------------------------ statements

    def _relations_named(self, table: str) -> list[Relation]:
        parts = table.split(".")
        schema = parts[-2] if len(parts) >= 2 else None
        return [r for r in self._relations.get(parts[-1], ()) if schema is None or r.schema == schema]

    def _view(self, view: Relation, depth: int) -> tuple[bool, bool]:
        """A view whose definition runs such code (reading it runs it)."""
        hit = self._views.get(view.oid)
        if hit is not None:
            return hit
        self._views[view.oid] = _CHANGES  # a cycle, or a definition that cannot be read
        verdict = _CHANGES
        statements = _definition(view, depth)
        if statements:
            verdict = _SAFE
            for f in statements:
                verdict = _worst(verdict, self._runs(f, depth + 1))
        self._views[view.oid] = verdict
        return verdict

    def _code(self, functions: frozenset[int], depth: int) -> tuple[bool, bool]:
        verdict = _SAFE
        for oid in functions:
            verdict = _worst(verdict, _CHANGES if oid == 0 else self._by_oid(oid, depth))  # 0: a rule
        return verdict

    def _runs(self, facts: StatementFacts, depth: int = 0) -> tuple[bool, bool]:
        verdict = _SAFE
        for name in facts.functions:
            verdict = _worst(verdict, self.function(name, depth))
        catalog = self._catalog
        creates = "DDL" in facts.classes  # the relation it writes may be the one it creates
        maintains = facts.command in _MAINTENANCE  # triggers do not run, index expressions do
        for table in facts.tables_written:
            rels = self._relations_named(table)
            if not rels and not creates and not maintains and not table.startswith(("pg_catalog.", "information_schema.")):
                verdict = _worst(verdict, _OPAQUE)  # created since the catalog was read
            for rel in rels:
                if not maintains:
                    verdict = _worst(verdict, self._code(catalog.code.get(rel.oid, frozenset()), depth))
                verdict = _worst(verdict, self._code(catalog.index_code.get(rel.oid, frozenset()), depth))
        for table in facts.tables_read:
            for rel in self._relations_named(table):
                if rel.is_view:
                    verdict = _worst(verdict, self._view(rel, depth))
        if (catalog.type_code or catalog.operator_code) and verdict != _CHANGES:
            verdict = _worst(verdict, self._types_and_operators(facts.text, depth))
        return verdict

    def _types_and_operators(self, text: str, depth: int) -> tuple[bool, bool]:
        """Domain constraints, casts and user operators the statement names."""
        try:
            operators, types = operators_and_types(text)
        except (SQLParseError, RecursionError):
            return _CHANGES
        verdict = _SAFE
        for names, table in ((types, self._catalog.type_code), (operators, self._catalog.operator_code)):
            for name in names:
                schema, _, base = name.rpartition(".")
                for (s, n), functions in table.items():
                    if n == base and (not schema or schema.split(".")[-1] == s):
                        verdict = _worst(verdict, self._code(functions, depth))
        return verdict

    def reads_beyond(self, facts: StatementFacts, depth: int = 0) -> bool:
        """Whether a statement judged to change nothing may still do so by what it reads,
        whatever the catalog said of the code (for ``audit.durability: effect``, which
        forwards such a statement before its record is durable): it calls a function that
        is not built in (replaced since the catalog was read, it may write), or reads a
        relation that is not known (created since), a foreign table (the other side runs
        what it likes), one with row-level security (its policies call functions), or a
        view over any of these."""
        if self.calls_user_code(facts):
            return True
        if facts.inner is not None and self.reads_beyond(facts.inner, depth):
            return True  # EXPLAIN plans its statement: planning folds (runs) what it calls
        if names_user_code(facts.text, self._catalog):
            return True
        for table in facts.tables_read:
            if table.startswith(("pg_catalog.", "information_schema.")):
                continue
            rels = self._relations_named(table)
            if not rels:
                return True
            for rel in rels:
                if rel.kind == "f" or rel.row_security:
                    return True
                if rel.is_view and self._view_reads_beyond(rel, depth):
                    return True
        return False

    def _view_reads_beyond(self, view: Relation, depth: int) -> bool:
        hit = self._beyond.get(view.oid)
        if hit is not None:
            return hit
        self._beyond[view.oid] = True  # a cycle, or a definition that cannot be read
        statements = _definition(view, depth)
        verdict = not statements or any(self.reads_beyond(f, depth + 1) for f in statements)
        self._beyond[view.oid] = verdict
        return verdict

    def calls_user_code(self, facts: StatementFacts) -> bool:
        """Whether the statement calls a function that is not built in, whatever the catalog
        last said of it (a direct connection may have replaced it since)."""
        builtins = self._catalog.builtin_functions
        for name in facts.functions:
            parts = name.split(".")
            schema = parts[-2] if len(parts) >= 2 else None
            if schema == "pg_catalog":
                continue
            if schema is not None or parts[-1] not in builtins:
                return True
        return False

    def _named(self, name: str) -> list[Function]:
        """The functions a call of ``name`` may run (any overload, any schema it may be in)."""
        parts = name.split(".")
        schema = parts[-2] if len(parts) >= 2 else None
        return [f for f in self._by_name.get(parts[-1], ()) if schema is None or f.schema == schema]

    def unguardable(self, facts: StatementFacts) -> str | None:
        """Why the row guard could not hold this statement (it is then refused), or None."""
        written = [r for t in facts.tables_written for r in self._relations_named(t)]
        # A function whose SET clause turns track_counts off changes rows PostgreSQL does
        # not count (an attack round wiped a table through one), and the setting is back
        # when it returns, where the guard's check could see it.
        called = [fn for name in facts.functions for fn in self._named(name)]
        fired = [self._catalog.functions.get(oid) for r in written for oid in self._catalog.code.get(r.oid, ())]
        if any(fn is not None and _COUNTING in fn.settings for fn in (*called, *fired)):
            return "it calls a function that turns row counting off while it runs (SET track_counts), out of the row limit's reach"
        if any(r.oid in self._catalog.deferred for r in written):
            return "it writes a table with deferrable triggers, which fire at COMMIT, out of the row limit's reach"
        if facts.copy is not None and facts.copy.direction == "from":
            # Known code only: a table created since the catalog was read runs none yet
            # (a trigger added by a direct connection since is a documented limit).
            code = _SAFE
            for r in written:
                known = self._catalog.code.get(r.oid, frozenset()) | self._catalog.index_code.get(r.oid, frozenset())
                code = _worst(code, self._code(known, 0))
            for name in facts.functions:
                code = _worst(code, self.function(name))
            if code[1]:
                return "COPY FROM into a table whose triggers, defaults or checks run code cannot be held under the row limit; use INSERT"
        elif facts.command in _MAINTENANCE and (FLAG in facts.flags or self._runs(facts)[1]):
            return f"{facts.command} of a table whose indexes run code that may change data cannot run under the row limit"
        foreign = [r for r in written if r.kind == "f"]
        if foreign and (facts.command not in _REPORTING or len(facts.tables_written) > 1):
            # The rows of a foreign table change on another server: only the statement's own
            # CommandComplete can tell how many.
            return "it changes a foreign table in a way the row limit cannot count (inside a CTE or with other tables)"
        return None

    def mark(self, facts: StatementFacts) -> StatementFacts:
        """``facts`` with :data:`FLAG` when running it runs opaque code, and
        ``side_effect_function`` as well when that code may change data."""
        if FLAG in facts.flags or not self.known or not facts.text:
            return facts
        catalog = self._catalog
        if not (facts.functions or facts.tables_read or facts.tables_written or catalog.type_code or catalog.operator_code):
            return facts
        hit = self._marked.get(facts.text)
        if hit is not None and (hit[0] is facts or hit[0] == facts):
            return hit[1]
        _, opaque = self._runs(facts)
        marked = facts
        if opaque:
            # Agents get neither: a STABLE PL/pgSQL function can still run set_config or
            # EXECUTE a volatile one, and a read-only session does not stop set_config.
            flags = set(facts.flags)
            flags.add(FLAG)
            flags.add(SIDE_EFFECT)
            risk = facts.risk if facts.risk == "high" else "moderate"
            marked = replace(facts, flags=frozenset(flags), risk=risk)
        self._marked.put(facts.text, (facts, marked))
        return marked

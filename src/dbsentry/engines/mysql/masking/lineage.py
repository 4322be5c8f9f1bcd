"""Column lineage of MySQL/MariaDB queries: which source columns each output column derives
from, and where source columns are used other than as output values.

The statement comes from :func:`dbsentry.engines.mysql.sql.facts.parse_queries`: sqlglot's
MySQL tree, read only after dbsentry's lexer agreed with sqlglot's tokenizer and the facts'
allow-list walk accepted it.  The rules are PostgreSQL's (``engines/postgres/masking/
lineage.py``, docs/masking.md "Lineage"), on MySQL's tree:

- A column reference derives from the column it names, resolved through table aliases,
  database qualification and the session's current database, derived tables, CTEs
  (recursive ones to a fixpoint), set operations (column *i* from column *i* of every
  branch) and views (``information_schema.VIEWS`` definitions, expanded recursively up to
  :data:`MAX_DEPTH`; the view's own column is a source too).  Column names are matched
  without regard to case, as MySQL does; table names exactly, then without regard to case.
- Any other expression derives from every column it mentions: casts, operators,
  ``CONCAT``, ``SUBSTRING``, ``LOWER``, ``CASE`` conditions and branches, ``IF``,
  ``COALESCE``/``IFNULL``/``NULLIF``, aggregates (``GROUP_CONCAT``...), scalar subqueries.
  ``direct`` marks a value that *is* a source value (aliases, casts, COALESCE/IFNULL,
  ``MIN``/``MAX``, views, unions): only those may get a ``partial`` mask.
- ``IS [NOT] NULL``, ``EXISTS``, ``COUNT()`` and ranking window functions derive from
  nothing (presence, not content).
- **Fail closed.** A stored or loadable function (any name not built into both MySQL and
  MariaDB, any ``db.f()``), a user variable (``@v``, which ``SELECT ... INTO @v`` may have
  filled with anything), a table or view the catalog does not know, a view whose
  definition cannot be read or analysed: the value is ``unknown``, and for functions and
  variables the statement ``reads_unknown`` (it may carry any table's data).  A ``*`` over
  a relation whose columns are unknown, or over a join with ``USING``/``NATURAL`` (MySQL
  reorders the merged columns), makes the positions inexact.  :func:`dbsentry.masking.plans.
  plan_masks` then masks every unknown column of a statement that may read sensitive data
  by value detection (``masking.unresolved: detect``) or refuses it (``deny``); an inexact
  result masks every column with the most sensitive class it may hold.
- WHERE, JOIN ... ON/USING, GROUP BY, HAVING, ORDER BY, DISTINCT, UNION (not UNION ALL),
  window PARTITION BY/ORDER BY, LIMIT, aggregate arguments, CASE/IF conditions: every
  column they use is a :class:`~dbsentry.masking.plans.PredicateUse` for
  ``masking.predicates`` (point lookups ``col = constant``, ``col IN (constants)``,
  ``col <=> constant`` and their negations in WHERE and ON are ``equality``; ``IS NULL``
  and ``COUNT(col)`` are ``presence``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from sqlglot import exp

from dbsentry.engines.mysql.sql.facts import ParsedQuery, parse_queries
from dbsentry.engines.mysql.sql.functions import BUILTIN_FUNCTIONS
from dbsentry.masking.catalog import Catalog, Relation, SourceColumn
from dbsentry.masking.plans import ColumnLineage, PredicateUse, Shape

__all__ = [
    "MAX_DEPTH",
    "LineageError",
    "StatementLineage",
    "WriteLineage",
    "lineage_of_query",
    "lineage_of_write",
    "predicates_of_write",
]

MAX_DEPTH = 12  # nested views
_MAX_CTE_ROUNDS = 10
MAX_NODES = 100_000

TableName = tuple[str, str]  # (schema, table); schema "" when the table is not in the catalog


class LineageError(ValueError):
    """The query could not be analysed (an unexpected tree, too large); the caller fails
    closed."""


@dataclass(frozen=True, slots=True)
class StatementLineage:
    """What :func:`dbsentry.masking.plans.plan_masks` and ``violation`` read."""

    columns: tuple[ColumnLineage, ...]
    tables_read: frozenset[TableName]
    returns_rows: bool
    exact: bool = True
    reads_unknown: bool = False
    predicates: tuple[PredicateUse, ...] = ()
    #: What ``@v := expr`` stores in user variables (a copy that outlives the statement).
    copied: frozenset[SourceColumn] = frozenset()
    copied_unknown: bool = False


@dataclass(frozen=True, slots=True)
class WriteLineage:
    """What a write stores: per written column ``((schema, table), lineage)`` (the table as
    the catalog names it, or as written when the catalog does not know it yet), for
    :func:`dbsentry.masking.derived.copied_classes`.  ``temporary``: the table is the
    session's own (``CREATE TEMPORARY TABLE``)."""

    writes: tuple[tuple[TableName, ColumnLineage], ...]
    tables_read: frozenset[TableName]
    reads_unknown: bool = False
    temporary: bool = False


class _L(NamedTuple):
    sources: frozenset[SourceColumn]
    unknown: bool
    direct: bool
    bare: bool = False  # the stored value itself (a column reference), for point lookups


_EMPTY = _L(frozenset(), False, False)
_UNKNOWN = _L(frozenset(), True, False)


def _union(items: Iterable[_L], transparent: bool = False) -> _L:
    sources: set[SourceColumn] = set()
    unknown = False
    direct = True
    contributed = False
    for it in items:
        if it.sources or it.unknown:
            contributed = True
            sources |= it.sources
            unknown = unknown or it.unknown
            direct = direct and it.direct
    if not contributed:
        return _EMPTY
    return _L(frozenset(sources), unknown, transparent and direct)


Cols = list[tuple[str, _L]]


@dataclass(slots=True)
class _Entry:
    """A relation in a FROM list, by the name queries use for it."""

    name: str
    rel: TableName | None
    cols: Cols
    opaque: bool = False  # columns unknown: any name resolves to unknown
    seed: bool = False  # a recursive CTE's first round: any name resolves to nothing yet


@dataclass(slots=True)
class _Scope:
    entries: list[_Entry]
    parent: _Scope | None
    ctes: dict[str, Cols | None]  # None: a recursive CTE being computed (seed round)
    outputs: Cols = field(default_factory=list)  # output aliases (GROUP BY/HAVING/ORDER BY)
    inexact_star: bool = False  # a join with USING/NATURAL reorders ``*``


# Functions whose value is one of their arguments as is.
_TRANSPARENT = (exp.Coalesce, exp.Max, exp.Min)
# Window functions that number rows: presence, not content.
_RANKING = (exp.RowNumber, exp.Rank, exp.DenseRank, exp.PercentRank, exp.CumeDist, exp.Ntile)
_CONSTANTS = (exp.Literal, exp.Null, exp.Boolean, exp.Placeholder)
_QUERIES = (exp.Select, exp.Union, exp.Intersect, exp.Except)


# Casts that keep the whole value (no length, no precision): text, binary, integers, dates,
# JSON, another character set.
_WHOLE_VALUE_TYPES = frozenset({
    exp.DataType.Type.CHAR, exp.DataType.Type.NCHAR, exp.DataType.Type.VARCHAR,
    exp.DataType.Type.NVARCHAR, exp.DataType.Type.TEXT, exp.DataType.Type.BINARY,
    exp.DataType.Type.VARBINARY, exp.DataType.Type.CHARACTER_SET, exp.DataType.Type.BIGINT,
    exp.DataType.Type.UBIGINT, exp.DataType.Type.DATE, exp.DataType.Type.DATETIME,
    exp.DataType.Type.JSON,
})  # fmt: skip


def _whole_value_cast(to: object) -> bool:
    return isinstance(to, exp.DataType) and not to.expressions and to.this in _WHOLE_VALUE_TYPES


def _constant(node: exp.Expression | None) -> bool:
    if node is None:
        return False
    if isinstance(node, exp.Paren):
        return _constant(node.this)
    if isinstance(node, exp.Neg):
        return _constant(node.this)
    if isinstance(node, exp.Cast):
        return _constant(node.this)
    return isinstance(node, _CONSTANTS)


_NUMERIC_TYPES = frozenset({"smallint", "integer", "bigint", "numeric", "real", "double precision", "boolean"})


def _numeric_constant(node: exp.Expression) -> bool:
    """A number (or TRUE/FALSE), which makes MySQL compare as numbers."""
    while isinstance(node, exp.Paren | exp.Neg):
        node = node.this
    return isinstance(node, exp.Boolean) or (isinstance(node, exp.Literal) and not node.is_string)


def _bare_column(node: exp.Expression | None) -> bool:
    while isinstance(node, exp.Paren):
        node = node.this
    return isinstance(node, exp.Column) and isinstance(node.this, exp.Identifier)


@dataclass(slots=True)
class _Walk:
    catalog: Catalog
    database: str | None
    depth: int = 0
    reads: set[TableName] = field(default_factory=set)
    exact: bool = True
    opaque_reads: bool = False
    opaque_calls: bool = False  # the statement calls stored functions (from the tokens)
    uses: dict[PredicateUse, None] = field(default_factory=dict)
    copied: set[SourceColumn] = field(default_factory=set)
    copied_unknown: bool = False
    exists: bool = False  # the next SELECT is an EXISTS's: what it selects is never looked at
    clause: str | None = None
    shape: Shape = "other"
    nodes: int = 0

    # ---- where columns are used

    @contextlib.contextmanager
    def within(self, clause: str | None) -> Iterator[None]:
        saved = (self.clause, self.shape)
        self.clause, self.shape = clause, "other"
        try:
            yield
        finally:
            self.clause, self.shape = saved

    def note(self, value: _L, clause: str | None = None, shape: Shape = "other") -> None:
        clause = clause or self.clause
        if clause is None:
            return
        for src in sorted(value.sources):
            self.uses.setdefault(PredicateUse(src, clause, shape), None)

    def filter(self, node: exp.Expression | None, scope: _Scope, clause: str) -> None:
        if node is None:
            return
        with self.within(clause):
            self._condition(node, scope)

    def _condition(self, node: exp.Expression, scope: _Scope) -> None:
        if isinstance(node, exp.Paren):
            self._condition(node.this, scope)
            return
        if isinstance(node, exp.And | exp.Or):
            self._condition(node.this, scope)
            self._condition(node.expression, scope)
            return
        if isinstance(node, exp.Not):
            self._condition(node.this, scope)
            return
        if isinstance(node, exp.EQ | exp.NEQ | exp.NullSafeEQ | exp.NullSafeNEQ):
            left, right = node.this, node.expression
            if _bare_column(left) and _constant(right):
                self.point(left, [right], scope)
                return
            if _bare_column(right) and _constant(left):
                self.point(right, [left], scope)
                return
        if (
            isinstance(node, exp.In)
            and _bare_column(node.this)
            and not node.args.get("query")
            and node.expressions
            and all(_constant(e) for e in node.expressions)
        ):
            self.point(node.this, node.expressions, scope)
            return
        self.expr(node, scope)

    def point(self, column: exp.Expression, constants: list[exp.Expression], scope: _Scope) -> _L:
        """``col = constant``, ``col IN (constants)``: a lookup of the stored value, unless
        MySQL compares them as numbers while the column holds text: a string is then its
        numeric prefix (``ssn = 501`` matches every ssn that starts ``501-``), and the
        question is about a part of the value."""
        value = self.shaped(column, scope, "equality")
        if any(_numeric_constant(c) for c in constants) and not self.numeric(value):
            self.note(value)
        return value

    def numeric(self, value: _L) -> bool:
        """Every column ``value`` comes from is of a numeric type."""
        for src in value.sources:
            types = [
                c.type_name
                for r in self.relations(src.schema, src.table)
                for c in r.columns
                if c.name.lower() == src.column.lower()
            ]
            if not types or any(t not in _NUMERIC_TYPES for t in types):
                return False
        return True

    def shaped(self, node: exp.Expression, scope: _Scope, shape: Shape) -> _L:
        self.shape = shape
        try:
            return self.expr(node, scope)
        finally:
            self.shape = "other"

    def ordering(
        self, items: Iterable[exp.Expression], scope: _Scope, out: Cols, clause: str
    ) -> None:
        """GROUP BY / ORDER BY items: positions and output names refer to output columns."""
        names: dict[str, list[_L]] = {}
        for n, c in out:
            names.setdefault(n.lower(), []).append(c)
        with self.within(clause):
            for item in items:
                node = item.this if isinstance(item, exp.Ordered) else item
                if isinstance(node, exp.Literal) and not node.is_string:
                    try:
                        pos = int(node.this)
                    except ValueError:
                        pos = 0
                    if 1 <= pos <= len(out):
                        self.note(out[pos - 1][1])
                        continue
                if (
                    isinstance(node, exp.Column)
                    and not node.table
                    and isinstance(node.this, exp.Identifier)
                    and node.name.lower() in names
                ):
                    # an output alias, or a column of the same name: MySQL's choice
                    # depends on the clause; both count
                    for c in names[node.name.lower()]:
                        self.note(c)
                    if self.resolve(node.name, scope, quiet=True) is None:
                        continue
                self.expr(node, scope)

    def clauses(self, q: exp.Expression, scope: _Scope, out: Cols) -> None:
        """ORDER BY / LIMIT / OFFSET of a query (SELECT, set operation, subquery)."""
        order = q.args.get("order")
        if isinstance(order, exp.Order):
            self.ordering(order.expressions, scope, out, "ORDER BY")
        for key in ("limit", "offset"):
            v = q.args.get(key)
            if isinstance(v, exp.Expression):
                with self.within("LIMIT/OFFSET"):
                    self.expr(v, scope)

    # ---- queries

    def count(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise LineageError(f"more than {MAX_NODES} nodes")

    def query(self, q: exp.Expression, parent: _Scope | None, ctes: dict[str, Cols | None]) -> Cols:
        self.count()
        if isinstance(q, exp.Subquery):
            inner = self.query(q.this, parent, ctes)
            self.clauses(q, _Scope([], parent, ctes, inner), inner)
            return inner
        if isinstance(q, exp.Select):
            return self.select(q, parent, ctes)
        if isinstance(q, exp.Union | exp.Intersect | exp.Except):
            ctes = self.with_(q.args.get("with_") or q.args.get("with"), parent, ctes)
            left = self.query(q.this, parent, ctes)
            right = self.query(q.expression, parent, ctes)
            if len(left) != len(right):
                raise LineageError("set operation branches of different widths")
            out = [
                (n, _union((a, b), transparent=True)) for (n, a), (_, b) in zip(left, right, strict=True)
            ]
            if q.args.get("distinct") or not isinstance(q, exp.Union):
                what = type(q).__name__.upper()
                for _, c in out:
                    self.note(c, what)
            self.clauses(q, _Scope([], parent, ctes, out), out)
            return out
        raise LineageError(f"{type(q).__name__} as a query")

    def with_(
        self, w: exp.Expression | None, parent: _Scope | None, ctes: dict[str, Cols | None]
    ) -> dict[str, Cols | None]:
        if w is None:
            return ctes
        if not isinstance(w, exp.With):
            raise LineageError(type(w).__name__)
        ctes = dict(ctes)
        recursive = bool(w.args.get("recursive"))
        for cte in w.expressions:
            if not isinstance(cte, exp.CTE):
                raise LineageError(type(cte).__name__)
            name = cte.alias
            names = [c.name for c in (cte.args["alias"].columns if cte.args.get("alias") else [])]
            with self.within(None):  # a CTE's values are used where referenced
                if recursive:
                    ctes[name] = self._recursive(name, names, cte.this, parent, ctes)
                else:
                    ctes[name] = _rename(self.query(cte.this, parent, ctes), names)
        return ctes

    def _recursive(
        self,
        name: str,
        names: list[str],
        q: exp.Expression,
        parent: _Scope | None,
        ctes: dict[str, Cols | None],
    ) -> Cols:
        inner = dict(ctes)
        inner[name] = None
        cols = _rename(self.query(q, parent, inner), names)
        for _ in range(_MAX_CTE_ROUNDS):
            inner[name] = cols
            again = _rename(self.query(q, parent, inner), names)
            merged = [
                (n, _union((a, b), transparent=True)) for (n, a), (_, b) in zip(cols, again, strict=False)
            ]
            if merged == cols:
                return cols
            cols = merged
        return [(n, _UNKNOWN._replace(sources=c.sources)) for n, c in cols]

    def select(self, s: exp.Select, parent: _Scope | None, ctes: dict[str, Cols | None]) -> Cols:
        quiet = self.exists
        self.exists = False
        ctes = self.with_(s.args.get("with_") or s.args.get("with"), parent, ctes)
        scope = _Scope([], parent, ctes)
        frm = s.args.get("from_") or s.args.get("from")
        if frm is not None:
            self.from_item(frm.this, scope)
        for j in s.args.get("joins") or []:
            self.join(j, scope)
        out: Cols = []
        with self.within(None) if quiet else contextlib.nullcontext():
            self.projections(s, scope, out)
        scope.outputs = out
        where = s.args.get("where")
        if isinstance(where, exp.Where):
            self.filter(where.this, scope, "WHERE")
        group = s.args.get("group")
        if isinstance(group, exp.Group):
            items = list(group.expressions)
            for k in ("rollup", "cube", "grouping_sets"):
                v = group.args.get(k)
                if isinstance(v, list):
                    items.extend(v)
                elif isinstance(v, exp.Expression):
                    items.append(v)
            self.ordering(items, scope, out, "GROUP BY")
        having = s.args.get("having")
        if isinstance(having, exp.Having):
            with self.within("HAVING"):
                self.expr(having.this, scope)
        for w in s.args.get("windows") or []:
            self.window_spec(w, scope)
        if s.args.get("distinct"):
            for _, c in out:
                self.note(c, "DISTINCT")
        self.clauses(s, scope, out)
        return out

    def projections(self, s: exp.Select, scope: _Scope, out: Cols) -> None:
        for item in s.expressions:
            if isinstance(item, exp.Star):
                out.extend(self.star(None, scope))
            elif isinstance(item, exp.Column) and isinstance(item.this, exp.Star):
                out.extend(self.star(item, scope))
            else:
                name = item.alias_or_name if isinstance(item, exp.Alias | exp.Column) else item.sql("mysql")
                node = item.this if isinstance(item, exp.Alias) else item
                out.append((name, self.expr(node, scope)))

    def star(self, col: exp.Column | None, scope: _Scope) -> Cols:
        if col is None:
            entries = scope.entries
            if scope.inexact_star:
                self.exact = False
        else:
            e = self.find_entry(col, scope)
            if e is None:
                self.exact = False
                return [("*", _UNKNOWN)]
            entries = [e]
        out: Cols = []
        for e in entries:
            if e.opaque or e.seed:
                self.exact = False
                out.append(("*", _UNKNOWN if e.opaque else _EMPTY))
                continue
            out.extend(e.cols)
        return out

    def from_item(self, item: exp.Expression, scope: _Scope) -> None:
        self.count()
        if isinstance(item, exp.Table):
            scope.entries.append(self.table(item, scope))
            for j in item.args.get("joins") or []:
                self.join(j, scope)
        elif isinstance(item, exp.Subquery):
            with self.within(None):  # a derived table's values are used where referenced
                cols = self.query(item.this, scope.parent, scope.ctes)
            alias = item.args.get("alias")
            names = [c.name for c in alias.columns] if isinstance(alias, exp.TableAlias) else []
            scope.entries.append(_Entry(item.alias, None, _rename(cols, names)))
            for j in item.args.get("joins") or []:
                self.join(j, scope)
        else:
            raise LineageError(f"{type(item).__name__} in FROM")

    def join(self, j: exp.Expression, scope: _Scope) -> None:
        if not isinstance(j, exp.Join):
            raise LineageError(type(j).__name__)
        before = len(scope.entries)
        self.from_item(j.this, scope)
        if j.args.get("on") is not None:
            self.filter(j.args["on"], scope, "JOIN ... ON")
        using = j.args.get("using")
        natural = "NATURAL" in str(j.args.get("method") or "").upper()
        if using or natural:
            scope.inexact_star = True
            left, right = scope.entries[:before], scope.entries[before:]
            if natural:
                lnames = {n.lower() for e in left for n, _ in e.cols}
                names = [n for e in right for n, _ in e.cols if n.lower() in lnames]
            else:
                names = [u.name for u in using or ()]
            for n in names:
                for e in scope.entries:
                    self.note(_union(c for cn, c in e.cols if cn.lower() == n.lower()), "JOIN ... USING")

    def table(self, t: exp.Table, scope: _Scope) -> _Entry:
        name = t.name
        alias = t.alias or name
        db = t.args.get("db")
        dbname = db.name if isinstance(db, exp.Identifier) else None
        if dbname is None:
            s: _Scope | None = scope
            while s is not None:
                if name in s.ctes:
                    cols = s.ctes[name]
                    if cols is None:
                        return _Entry(alias, None, [], seed=True)
                    return _Entry(alias, None, list(cols))
                s = s.parent
            if name.lower() == "dual" and not t.alias:
                return _Entry("", None, [])
        rels = self.relations(dbname, name)
        if not rels:
            self.reads.add((dbname or "", name))
            return _Entry(alias, None, [], opaque=True)
        cols_per: list[Cols] = []
        for rel in rels:
            self.reads.add((rel.schema, rel.name))
            cols_per.append(self.relation_cols(rel))
        if len(cols_per) == 1:
            return _Entry(alias, (rels[0].schema, rels[0].name), cols_per[0])
        # the name may mean several relations (no current database): each column derives
        # from every candidate's column of that name; positions are not known for sure
        self.exact = False
        merged: dict[str, list[_L]] = {}
        for cols in cols_per:
            for n, c in cols:
                merged.setdefault(n.lower(), []).append(c)
        return _Entry(alias, None, [(n, _union(v, transparent=True)) for n, v in merged.items()])

    def relations(self, schema: str | None, name: str) -> list[Relation]:
        cat = self.catalog
        schemas = [schema] if schema is not None else ([self.database] if self.database else [])
        for s in schemas:
            rel = cat.relation(s, name)
            if rel is not None:
                return [rel]
        # without regard to case (lower_case_table_names), and every schema when the
        # current database is not known
        out = []
        for rel in cat.relations.values():
            if rel.name.lower() != name.lower():
                continue
            if schemas and rel.schema.lower() not in {x.lower() for x in schemas}:
                continue
            out.append(rel)
        return out

    def relation_cols(self, rel: Relation) -> Cols:
        own = [(c.name, _L(frozenset({rel.source(c.name)}), False, True, True)) for c in rel.columns]
        if rel.kind != "v":
            return own
        expanded = self.expand_view(rel)
        if expanded is None or len(expanded) != len(own):
            return [(n, _L(c.sources, True, False)) for n, c in own]
        return [
            (n, _L(c.sources | e.sources, e.unknown, e.direct))
            for (n, c), (_, e) in zip(own, expanded, strict=True)
        ]

    def expand_view(self, rel: Relation) -> Cols | None:
        if not rel.definition or self.depth >= MAX_DEPTH:
            return None
        key = ("mysql-view", rel.schema, rel.name, rel.definition)
        if key not in self.catalog.cache:
            try:
                parsed = parse_queries(rel.definition)
            except Exception:
                parsed = ()
            self.catalog.cache[key] = parsed[0] if len(parsed) == 1 else None
        cached = self.catalog.cache[key]
        if not isinstance(cached, ParsedQuery):
            return None
        sub = _Walk(self.catalog, rel.schema, self.depth + 1, opaque_calls=cached.opaque_calls)
        try:
            cols = sub.query(cached.tree, None, {})
        except LineageError:
            return None
        self.reads |= sub.reads
        self.opaque_reads = self.opaque_reads or sub.opaque_reads
        if not sub.exact:
            return None
        return cols  # the view's own WHERE, GROUP BY...: its owner's business

    def find_entry(self, col: exp.Column, scope: _Scope) -> _Entry | None:
        qual = col.table
        db = col.args.get("db")
        dbname = db.name if isinstance(db, exp.Identifier) else None
        s: _Scope | None = scope
        while s is not None:
            for e in s.entries:
                if dbname is not None:
                    if e.rel is not None and e.rel[0].lower() == dbname.lower() and e.rel[1].lower() == qual.lower():
                        return e
                elif e.name == qual:
                    return e
            for e in s.entries:
                if dbname is None and e.name.lower() == qual.lower():
                    return e
            s = s.parent
        return None

    # ---- expressions

    def resolve(self, name: str, scope: _Scope, quiet: bool = False) -> _L | None:
        s: _Scope | None = scope
        low = name.lower()
        while s is not None:
            found = [c for e in s.entries for n, c in e.cols if n.lower() == low]
            if any(e.opaque for e in s.entries):
                found.append(_UNKNOWN)
            if found:
                return _union(found, transparent=True)._replace(bare=len(found) == 1 and found[0].bare)
            if any(e.seed for e in s.entries):
                return _EMPTY
            s = s.parent
        if quiet:
            return None
        for n, c in scope.outputs:  # HAVING / ORDER BY may name an output alias
            if n.lower() == low:
                return c
        return _UNKNOWN

    def column(self, c: exp.Column, scope: _Scope) -> _L:
        if not isinstance(c.this, exp.Identifier):
            if isinstance(c.this, exp.Star):  # t.* as a value
                return _union((x for _, x in self.star(c, scope)), transparent=False)
            raise LineageError("a column reference")
        if not c.table:
            found = self.resolve(c.name, scope)
            assert found is not None
        else:
            e = self.find_entry(c, scope)
            if e is None or e.opaque:
                found = _UNKNOWN
            elif e.seed:
                found = _EMPTY
            else:
                hits = [x for n, x in e.cols if n.lower() == c.name.lower()]
                found = _union(hits, transparent=True)._replace(bare=len(hits) == 1 and hits[0].bare) if hits else _UNKNOWN
        if self.clause is not None:
            self.note(found, shape=self.shape if found.bare else "other")
        return found

    def exprs(self, nodes: Iterable[exp.Expression], scope: _Scope) -> list[_L]:
        return [self.expr(n, scope) for n in nodes]

    def children(self, node: exp.Expression) -> list[exp.Expression]:
        out: list[exp.Expression] = []
        for v in node.args.values():
            if isinstance(v, exp.Expression):
                out.append(v)
            elif isinstance(v, list):
                out.extend(x for x in v if isinstance(x, exp.Expression))
        return out

    def expr(self, node: exp.Expression | None, scope: _Scope) -> _L:
        if node is None:
            return _EMPTY
        self.count()
        if isinstance(node, exp.Column):
            return self.column(node, scope)
        if isinstance(node, (*_CONSTANTS, exp.DataType, exp.Var, exp.Identifier, exp.Star)):
            return _EMPTY
        if isinstance(node, exp.Paren):
            return self.expr(node.this, scope)
        if isinstance(node, exp.Alias):
            return self.expr(node.this, scope)
        if isinstance(node, exp.PropertyEQ):  # @v := expr: stored in the variable too
            value = self.expr(node.expression, scope)
            self.copied |= value.sources
            self.copied_unknown = self.copied_unknown or value.unknown
            self.opaque_reads = True
            return _union([value, _UNKNOWN])
        if isinstance(node, exp.SessionParameter):
            return _EMPTY  # @@settings: the server's, not table data
        if isinstance(node, exp.Parameter):
            # @v: SELECT ... INTO @v may have filled it with anything
            self.opaque_reads = True
            return _UNKNOWN
        if isinstance(node, exp.Subquery | exp.Select | exp.Union | exp.Intersect | exp.Except):
            cols = self.query(node, scope, scope.ctes)
            value = _union((c for _, c in cols), transparent=True)
            if self.clause is not None:
                self.note(value)
            return value._replace(bare=False)
        if isinstance(node, exp.Exists):
            with self.within(self.clause or "EXISTS"):
                self.exists = True
                self.query(node.this, scope, scope.ctes)
                self.exists = False
            return _EMPTY
        if isinstance(node, exp.In):
            parts = [self.expr(node.this, scope), *self.exprs(node.expressions, scope)]
            q = node.args.get("query")
            if isinstance(q, exp.Expression):
                parts.append(self.expr(q, scope))
            return _union(parts)
        if isinstance(node, exp.Is):
            with self.within(self.clause or "IS NULL"):
                if _bare_column(node.this):
                    self.shaped(node.this, scope, "presence")
                else:
                    self.expr(node.this, scope)
            self.expr(node.expression, scope)
            return _EMPTY
        if isinstance(node, exp.Count):
            arg = node.this
            with self.within(self.clause or "an aggregate"):
                if _bare_column(arg):
                    self.shaped(arg, scope, "presence")
                else:
                    self.expr(arg, scope)  # COUNT(DISTINCT x), COUNT(f(x)): a use
            return _EMPTY
        if isinstance(node, exp.Window):
            with self.within("OVER (PARTITION BY)"):
                for p in node.args.get("partition_by") or []:
                    self.expr(p, scope)
            order = node.args.get("order")
            if isinstance(order, exp.Order):
                with self.within("OVER (ORDER BY)"):
                    for o in order.expressions:
                        self.expr(o, scope)
            spec = node.args.get("spec")
            if isinstance(spec, exp.Expression):
                with self.within("a window frame"):
                    self.expr(spec, scope)
            f = node.this
            if isinstance(f, _RANKING):
                return _EMPTY
            return self.expr(f, scope)
        if isinstance(node, exp.Case):
            conds: list[_L] = []
            branches: list[_L] = []
            base = node.this
            with self.within(self.clause or "CASE"):
                if base is not None:
                    c0 = self.expr(base, scope)
                    self.note(c0)
                    conds.append(c0)
                for i in node.args.get("ifs") or []:
                    c1 = self.expr(i.this, scope)
                    self.note(c1)
                    conds.append(c1)
            for i in node.args.get("ifs") or []:
                branches.append(self.expr(i.args.get("true"), scope))
            branches.append(self.expr(node.args.get("default"), scope))
            return _union([_union(conds), _union(branches, transparent=True)], transparent=False)
        if isinstance(node, exp.If):
            with self.within(self.clause or "IF"):
                c = self.expr(node.this, scope)
                self.note(c)
            a = self.expr(node.args.get("true"), scope)
            b = self.expr(node.args.get("false"), scope)
            return _union([c, _union([a, b], transparent=True)])
        if isinstance(node, exp.Cast | exp.TryCast | exp.Collate | exp.Convert):
            v = self.expr(node.this, scope)
            for extra in self.children(node)[1:]:
                self.expr(extra, scope)
            if isinstance(node, exp.Collate) or _whole_value_cast(node.args.get("to")):
                return v._replace(bare=False)
            # CAST(ssn AS CHAR(8)): the value is cut, and a partial mask of the cut value
            # would show characters the whole value's mask hides: derived, not direct
            return v._replace(bare=False, direct=False)
        if isinstance(node, exp.Anonymous):
            args = self.exprs(node.expressions, scope)
            if node.name.lower() not in BUILTIN_FUNCTIONS:
                self.opaque_reads = True
                return _union([*args, _UNKNOWN])
            return _union(args)
        if isinstance(node, exp.Dot):
            # db.f(args): a stored function; its value is unknown, and derives from its
            # arguments too (sys.quote_identifier(name) is the name, quoted)
            args = self.exprs(self.children(node), scope)
            self.opaque_reads = True
            return _union([*args, _UNKNOWN])
        if isinstance(node, exp.AggFunc | exp.GroupConcat):
            with self.within(self.clause or "an aggregate"):
                args = self.exprs(self.children(node), scope)
                for a in args:
                    self.note(a)
            return _union(args, transparent=isinstance(node, _TRANSPARENT))
        if isinstance(node, exp.Greatest | exp.Least):
            # the value is the argument that sorts last (first); which one it is, and so the
            # shape of its masked value (GREATEST(ssn, '5') gives '*' or '***-**-1234'),
            # answers an order question about each argument: a use, like CASE
            with self.within(self.clause or node.key.upper()):
                args = self.exprs(self.children(node), scope)
                for a in args:
                    self.note(a)
            return _union(args, transparent=True)
        if isinstance(node, exp.Nullif):
            # NULL exactly when the two are equal: a lookup of a stored value by a constant,
            # anything else an unrestricted question about the value
            left, right = node.this, node.expression
            with self.within(self.clause or "NULLIF"):
                if _bare_column(left) and _constant(right):
                    a, b = self.point(left, [right], scope), self.expr(right, scope)
                elif _bare_column(right) and _constant(left):
                    a, b = self.expr(left, scope), self.point(right, [left], scope)
                else:
                    a, b = self.expr(left, scope), self.expr(right, scope)
                    self.note(a)
                    self.note(b)
            return _union([a, b], transparent=True)
        if isinstance(node, exp.Func):
            args = self.exprs(self.children(node), scope)
            value = _union(args, transparent=isinstance(node, _TRANSPARENT))
            if self.opaque_calls:
                # the statement calls a stored function, and sqlglot may have read its name
                # as a built-in of another dialect: any function's value is unknown
                self.opaque_reads = True
                return _union([value, _UNKNOWN])
            return value
        return _union(self.exprs(self.children(node), scope))

    # ---- writes (what each written column stores)

    def written(self, t: exp.Expression) -> tuple[TableName, list[str] | None]:
        """A written table as the catalog names it, with its columns in order (None: a
        table the catalog does not know, named as written)."""
        if not isinstance(t, exp.Table):
            raise LineageError(f"{type(t).__name__} as a written table")
        db = t.args.get("db")
        dbname = db.name if isinstance(db, exp.Identifier) else None
        rels = self.relations(dbname, t.name)
        if len(rels) > 1:
            raise LineageError(f"the written table {t.name} may be any of {len(rels)} tables")
        if rels:
            rel = rels[0]
            return (rel.schema, rel.name), [c.name for c in sorted(rel.columns, key=lambda c: c.attnum)]
        schema = dbname or self.database
        if not schema:
            raise LineageError(f"the database of the written table {t.name} is not known")
        return (schema, t.name), None

    def insert(self, tree: exp.Insert) -> list[tuple[TableName, str, _L]]:
        """INSERT / REPLACE: VALUES rows (subqueries in them, ``SET a = ...``), a query,
        and what ``ON DUPLICATE KEY UPDATE`` assigns."""
        ctes = self.with_(tree.args.get("with_") or tree.args.get("with"), None, {})
        target = tree.this
        listed: list[str] | None = None
        if isinstance(target, exp.Schema):
            listed = [c.name for c in target.expressions]
            target = target.this
        table, known = self.written(target)
        if listed is None and known is None:
            raise LineageError("an INSERT without a column list into a table the catalog does not know")
        names = [_spelled(n, known) for n in listed] if listed is not None else list(known or ())
        source = tree.args.get("expression")
        scope = _Scope([], None, ctes)
        values: list[_L]
        if isinstance(source, exp.Values):
            values = [_EMPTY for _ in names]
            for row in source.expressions:
                items = row.expressions if isinstance(row, exp.Tuple) else [row]
                if len(items) != len(names):
                    raise LineageError("a VALUES row of another width than its column list")
                values = [_union((v, self.expr(e, scope)), transparent=True) for v, e in zip(values, items, strict=True)]
        elif isinstance(source, exp.Expression):
            values = [c for _, c in self.query(source, None, ctes)]
        else:
            raise LineageError("an INSERT without values")
        if not self.exact:
            # positions not known for sure: any column may hold any value read
            anything = _union(values)
            values = [anything for _ in names]
        if len(values) != len(names):
            raise LineageError("an INSERT of another width than its column list")
        out = [(table, n, v) for n, v in zip(names, values, strict=True)]
        conflict = tree.args.get("conflict")
        if isinstance(conflict, exp.OnConflict):
            # ON DUPLICATE KEY UPDATE: the row's own columns, VALUES(col) and the new
            # row's alias (``AS new``) are the values being inserted; anything else unknown
            new = list(zip(names, values, strict=True))
            entries = [self.table(target, scope), _Entry(_NEW_ROW, None, new)]
            alias = source.args.get("alias") if isinstance(source, exp.Values) else None
            if isinstance(alias, exp.TableAlias):
                entries.append(_Entry(alias.name, None, _rename(new, [c.name for c in alias.columns])))
            upd = _Scope(entries, None, ctes)
            for a in conflict.expressions:
                col = _assigned(a)
                value = self.expr(a.expression.transform(_values_ref), upd)
                self.changed(value, "ON DUPLICATE KEY UPDATE")
                out.append((table, _spelled(col.name, known), value))
        return out

    def changed(self, value: _L, clause: str) -> None:
        """An assigned value computed from columns: the affected rows of the OK count the
        rows where it differs from the stored one (``SET n = n + (name > 'M')`` changes
        exactly the rows whose name sorts after M), a question about each column."""
        if not value.direct:
            self.note(value, clause)

    def update(self, tree: exp.Update) -> list[tuple[TableName, str, _L]]:
        """UPDATE t [JOIN u ...] SET col = expr: each assigned column stores its value."""
        ctes = self.with_(tree.args.get("with_") or tree.args.get("with"), None, {})
        top = tree.this
        if not isinstance(top, exp.Table):
            raise LineageError(f"{type(top).__name__} as an UPDATE target")
        scope = _Scope([], None, ctes)
        self.from_item(top, scope)
        tables: dict[str, tuple[TableName, list[str] | None]] = {}
        for t in [top, *(j.this for j in top.args.get("joins") or [] if isinstance(j, exp.Join))]:
            if isinstance(t, exp.Table) and t.name not in ctes:
                tables[t.alias or t.name] = self.written(t)
        out: list[tuple[TableName, str, _L]] = []
        for a in tree.expressions:
            col = _assigned(a)
            value = self.expr(a.expression, scope)
            if col.table:
                hits = [tables[col.table]] if col.table in tables else []
            else:
                hits = [t for t in tables.values() if t[1] is not None and _spelled(col.name, t[1]) in t[1]]
            for table, known in hits or list(tables.values()):  # unclear: every table
                out.append((table, _spelled(col.name, known), value))
        return out

    def matched(self, tree: exp.Update | exp.Delete) -> None:
        """The conditions of the rows an UPDATE or DELETE matches (its tables and joins,
        USING, WHERE, ORDER BY) and the values an UPDATE computes: the counts its OK
        reports answer them."""
        ctes = self.with_(tree.args.get("with_") or tree.args.get("with"), None, {})
        scope = _Scope([], None, ctes)
        self.from_item(tree.this, scope)
        for u in tree.args.get("using") or []:
            self.from_item(u, scope)
        if isinstance(tree, exp.Update):
            for a in tree.expressions:
                self.changed(self.expr(a.expression if isinstance(a, exp.EQ) else a, scope), "UPDATE ... SET")
        where = tree.args.get("where")
        if isinstance(where, exp.Where):
            self.filter(where.this, scope, "WHERE")
        order = tree.args.get("order")
        if isinstance(order, exp.Order):
            self.ordering(order.expressions, scope, [], "ORDER BY")

    def create(self, tree: exp.Create) -> list[tuple[TableName, str, _L]]:
        """CREATE TABLE ... [AS] SELECT: each column of the query, by its name."""
        query = tree.args.get("expression")
        if str(tree.args.get("kind") or "").upper() != "TABLE" or query is None:
            return []
        this = tree.this
        target = this.this if isinstance(this, exp.Schema) else this
        table, known = self.written(target)
        cols = self.query(query, None, {})
        if not self.exact:
            anything = _union(c for _, c in cols)
            cols = [(n, anything) for n, _ in cols]
        return [(table, _spelled(n, known), c) for n, c in cols if n != "*"]

    def window_spec(self, w: exp.Expression, scope: _Scope) -> None:
        with self.within("OVER (PARTITION BY)"):
            self.exprs(self.children(w), scope)


_NEW_ROW = "\x00values"  # the entry VALUES(col) reads in ON DUPLICATE KEY UPDATE


def _values_ref(node: exp.Expression) -> exp.Expression:
    """``VALUES(col)``: the value being inserted into ``col``."""
    if isinstance(node, exp.Anonymous) and node.name.upper() == "VALUES" and len(node.expressions) == 1:
        arg = node.expressions[0]
        name = arg.name if isinstance(arg, exp.Identifier | exp.Column) else ""
        if name:
            return exp.column(name, table=_NEW_ROW)
    return node


def _assigned(a: exp.Expression) -> exp.Column:
    if not isinstance(a, exp.EQ) or not isinstance(a.this, exp.Column) or not isinstance(a.this.this, exp.Identifier):
        raise LineageError("an assignment of another form than col = value")
    return a.this


def _spelled(name: str, known: list[str] | None) -> str:
    """``name`` as the catalog spells the column (names match without regard to case)."""
    for n in known or ():
        if n.lower() == name.lower():
            return n
    return name


def _rename(cols: Cols, names: list[str]) -> Cols:
    if not names:
        return cols
    if len(names) != len(cols):
        raise LineageError("a column list of another width than its query")
    return [(n, c) for n, (_, c) in zip(names, cols, strict=True)]


@contextlib.contextmanager
def _failing_closed(what: str) -> Iterator[None]:
    """Any error of the analysis is a :class:`LineageError` (the caller fails closed)."""
    try:
        yield
    except Exception as err:
        if isinstance(err, LineageError):
            raise
        deep = isinstance(err, RecursionError)
        raise LineageError("nested too deeply" if deep else f"could not analyse {what} ({type(err).__name__}: {err})") from err


def lineage_of_query(
    tree: exp.Expression,
    catalog: Catalog,
    database: str | None,
    *,
    opaque_calls: bool = False,
    into: bool = False,
) -> StatementLineage:
    """The lineage of one query tree (from ``parse_queries``), unqualified names in
    ``database`` (None: not known, every schema is a candidate).  Raises
    :class:`LineageError` when it cannot be analysed."""
    w = _Walk(catalog, database, opaque_calls=opaque_calls)
    with _failing_closed("the query"):
        cols = w.query(tree, None, {})
    return StatementLineage(
        tuple(ColumnLineage(n, c.sources, c.unknown, c.direct) for n, c in cols),
        frozenset(w.reads),
        not into,
        w.exact,
        w.opaque_reads,
        tuple(w.uses),
        frozenset(w.copied),
        w.copied_unknown,
    )


def lineage_of_write(parsed: ParsedQuery, catalog: Catalog, database: str | None) -> WriteLineage:
    """What an ``INSERT``, ``REPLACE``, ``UPDATE`` or ``CREATE TABLE ... SELECT`` (from
    :func:`dbsentry.engines.mysql.sql.facts.parse_writes`) stores in each written column,
    unqualified names in ``database``.  Raises :class:`LineageError` when it cannot be
    analysed."""
    tree = parsed.tree
    w = _Walk(catalog, database, opaque_calls=parsed.opaque_calls)
    temporary = False
    with _failing_closed("the statement"):
        if isinstance(tree, exp.Insert):
            writes = w.insert(tree)
        elif isinstance(tree, exp.Update):
            writes = w.update(tree)
        elif isinstance(tree, exp.Create):
            props = tree.args.get("properties")
            temporary = isinstance(props, exp.Properties) and any(
                isinstance(p, exp.TemporaryProperty) for p in props.expressions
            )
            writes = w.create(tree)
        else:
            raise LineageError(f"{type(tree).__name__} as a write")
    return WriteLineage(
        tuple((t, ColumnLineage(n, c.sources, c.unknown, c.direct)) for t, n, c in writes),
        frozenset(w.reads),
        w.opaque_reads,
        temporary,
    )


def predicates_of_write(parsed: ParsedQuery, catalog: Catalog, database: str | None) -> tuple[PredicateUse, ...]:
    """Where an ``INSERT ... SELECT``, ``UPDATE`` or ``DELETE`` (from
    ``parse_writes(..., deletes=True)``) uses source columns other than as values: the
    rows it matches, which the affected rows of its OK count, answer them.  Raises
    :class:`LineageError` when it cannot be analysed."""
    tree = parsed.tree
    w = _Walk(catalog, database, opaque_calls=parsed.opaque_calls)
    with _failing_closed("the statement"):
        if isinstance(tree, exp.Insert):
            w.insert(tree)
        elif isinstance(tree, exp.Update | exp.Delete):
            w.matched(tree)
        else:
            raise LineageError(f"{type(tree).__name__} as a write")
    return tuple(w.uses)

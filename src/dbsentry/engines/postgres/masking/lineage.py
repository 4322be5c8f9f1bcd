"""Column lineage: which source columns each output column of a statement derives from.

The statement is parsed by PostgreSQL's own parser (pglast ``parse_sql_json``, loaded with
orjson) and walked as plain dicts, like :mod:`dbsentry.engines.postgres.sql.facts`.  The rules, in one place:

- A column reference derives from the column it names, resolved through table aliases,
  schema qualification and the search path, and through subqueries, CTEs (recursive ones to
  a fixpoint), set operations (column *i* from column *i* of every branch) and views
  (their definitions, expanded recursively up to :data:`MAX_DEPTH`).  A view's own column is
  a source too, so a comment on it classifies it.
- Any other expression derives from every column it mentions: casts, operators, function
  arguments, ``CASE`` conditions and branches, scalar and array subqueries.  A bare table
  alias (``row_to_json(c)``, ``to_jsonb(c.*)``, ``ROW(c.*)``) derives from all of its columns.
- A LANGUAGE sql function derives from its arguments and from every output column of its
  body; a function the walk cannot see into (PL/pgSQL, other procedural languages,
  ``query_to_xml`` and other dynamic-SQL functions) makes the column ``unknown``.
- Only ``IS [NOT] NULL``, ``IS [NOT] TRUE``..., ``EXISTS`` and ``count()`` derive from
  nothing: they reveal presence, not content.  WHERE, GROUP BY, ORDER BY, JOIN conditions
  and window definitions do not feed a column's value; every column they use (and every
  aggregate argument, CASE condition, set operation...) is recorded as a
  :class:`PredicateUse`, for ``masking.predicates`` (see :mod:`dbsentry.engines.postgres.masking.inference`).
- ``direct`` marks a column whose value *is* a source value (through aliases, casts,
  COALESCE, min/max, views, unions): a partial mask is only meaningful for those.
- A ``*`` over a relation whose columns are unknown makes the positions of the output
  columns unknown: ``exact`` is False and the caller must treat every column as unresolved.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

import orjson
from pglast import parser as _pg

from dbsentry.engines.postgres.sql import parse as sqlparse
from dbsentry.engines.postgres.sql.facts import DYNAMIC_SQL_FUNCTIONS, OUTSIDE_DATA_FUNCTIONS
from dbsentry.masking.catalog import Catalog, Function, Relation, SourceColumn
from dbsentry.masking.plans import (
    ColumnLineage,
    ColumnMask,
    MaskPlan,
    MaskSettings,
    PredicateUse,
    Shape,
    plan_masks,
)

__all__ = [
    "MAX_DEPTH",
    "ColumnLineage",
    "ColumnMask",
    "CopyOptions",
    "LineageError",
    "MaskPlan",
    "MaskSettings",
    "PredicateUse",
    "StatementLineage",
    "analyze_lineage",
    "created_function_sources",
    "lineage_of_tree",
    "plan_masks",
]

MAX_DEPTH = 12  # nested views and SQL functions
_MAX_CTE_ROUNDS = 10

TableName = tuple[str, str]  # (schema, relation); schema "" when the relation is not in the catalog



def _grouping_items(items: Iterable[Any], inside: bool = False) -> Iterator[Any]:
    """The items of an ORDER BY, GROUP BY or DISTINCT ON, with ROLLUP, CUBE and GROUPING
    SETS opened: PostgreSQL reads a number inside them as a position too (``GROUP BY
    ROLLUP (1)`` groups by the first output column), and ``(1, 2)`` inside them as a list."""
    for item in items:
        kind, body = _unwrap(item)
        if kind == "GroupingSet":
            yield from _grouping_items(body.get("content") or (), True)
        elif kind == "RowExpr" and inside:
            yield from _grouping_items(body.get("args") or (), True)
        else:
            yield item

class LineageError(ValueError):
    """The SQL could not be parsed or analysed (too deep, too large, an unexpected tree);
    the caller fails closed."""


MAX_TREE_NODES = 250_000  # like dbsentry.engines.postgres.sql.facts: larger trees are not analysed


@dataclass(frozen=True, slots=True)
class CopyOptions:
    """How a ``COPY ... TO STDOUT`` formats its rows (for the COPY maskers)."""

    format: Literal["text", "csv", "binary"] = "text"
    delimiter: str = "\t"
    null: str = "\\N"
    quote: str = '"'
    escape: str = '"'
    header: bool = False
    type_oids: tuple[int | None, ...] | None = None  # known for COPY table only
    encoding: str | None = None  # COPY's ENCODING option: the data's, not the session's


@dataclass(frozen=True, slots=True)
class StatementLineage:
    command: str
    columns: tuple[ColumnLineage, ...]
    tables_read: frozenset[TableName]
    returns_rows: bool
    exact: bool = True  # the output columns' number and order are known
    reads_unknown: bool = (
        False  # may read tables not in tables_read (dynamic SQL, PL/pgSQL, FETCH...)
    )
    copy: CopyOptions | None = None
    declares: str | None = None  # DECLARE name CURSOR FOR ...: the lineage is the cursor's
    fetches: str | None = None  # FETCH ... FROM name: look up the cursor's lineage
    prepares: str | None = None  # PREPARE name AS ...: the lineage is the statement's
    executes: str | None = None  # EXECUTE name: look up the prepared statement's lineage
    # What it stores in tables (INSERT, UPDATE, MERGE, CREATE TABLE AS, SELECT INTO): each
    # (table, column lineage named after the target column) with what the value derives from.
    writes: tuple[tuple[TableName, ColumnLineage], ...] = ()
    # Where source columns are used other than as output values (in order of appearance).
    predicates: tuple[PredicateUse, ...] = ()
    # Source columns whose stored values the statement changes (INSERT, UPDATE SET, every
    # column of the rows a DELETE or MERGE may remove or change, COPY FROM).
    columns_written: frozenset[SourceColumn] = frozenset()
    # Source columns the statement reads: its output values, its predicates, the values it
    # writes elsewhere (views and function bodies count by their own output columns).
    columns_read: frozenset[SourceColumn] = frozenset()


class _L(NamedTuple):
    """The lineage of one value while walking."""

    sources: frozenset[SourceColumn]
    unknown: bool
    direct: bool
    # The value is a stored column value, unchanged (no cast, function, COALESCE...): what
    # a predicate may compare as a point lookup (``ssn::varchar(1) = '5'`` is no lookup).
    bare: bool = False


_EMPTY = _L(frozenset(), False, False)
_UNKNOWN = _L(frozenset(), True, False)


def _union(items: Iterable[_L], transparent: bool = False, bare: bool = False) -> _L:
    """Several values combined.  ``transparent``: the result is one of them (COALESCE,
    UNION, CASE), so it stays ``direct`` when every contributor is.  ``bare``: the result
    is one of them as stored (a name resolved, a set operation), so it stays ``bare``."""
    sources: set[SourceColumn] = set()
    unknown = False
    direct = True
    all_bare = True
    contributed = False
    for it in items:
        if it.sources or it.unknown:
            contributed = True
            sources |= it.sources
            unknown = unknown or it.unknown
            direct = direct and it.direct
            all_bare = all_bare and it.bare
    if not contributed:
        return _EMPTY
    return _L(frozenset(sources), unknown, transparent and direct, bare and all_bare)


def _indirect(x: _L) -> _L:
    return x._replace(direct=False, bare=False) if x.direct or x.bare else x


def _computed(x: _L) -> _L:
    """The value of an expression over ``x`` that may still be ``direct`` (a cast, lag()),
    but is no longer the stored value."""
    return x._replace(bare=False) if x.bare else x


Cols = list[tuple[str, _L]]


@dataclass(slots=True)
class _Entry:
    """A relation in a FROM list, by the name queries use for it."""

    name: str | None
    rel: TableName | None
    cols: Cols
    opaque: bool = False  # columns unknown: any column name resolves to unknown
    # For an opaque entry made from expressions (a record-returning function in FROM):
    # what every one of its columns may derive from, besides being unknown.
    origin: _L | None = None

    def whole(self) -> _L:
        if self.opaque:
            return self.any_column()
        return _indirect(_union((c for _, c in self.cols), transparent=False))

    def any_column(self) -> _L:
        """What a column of an opaque entry derives from."""
        return _UNKNOWN if self.origin is None else _union([_UNKNOWN, self.origin])


@dataclass(slots=True)
class _Scope:
    entries: list[_Entry]
    star: Cols | None  # the expansion of an unqualified *; None: positions unknown
    parent: _Scope | None
    ctes: dict[str, Cols]
    params: bool = False  # a function body: unresolved names are parameters


# -- helpers over the JSON tree ------------------------------------------------------------


def _unwrap(node: Any) -> tuple[str, Any]:
    if isinstance(node, dict) and len(node) == 1:
        ((k, v),) = node.items()
        return k, v
    return "", node


def _strings(items: Any) -> list[str]:
    out = []
    for it in items or ():
        s = it.get("String") if isinstance(it, dict) else None
        if s is not None:
            out.append(s.get("sval", ""))
    return out


def _func_name(funcname: Any) -> tuple[str | None, str]:
    names = _strings(funcname)
    if not names:
        return None, ""
    return (names[-2] if len(names) > 1 else None), names[-1]


def _parse(sql: str) -> list[dict[str, Any]]:
    try:
        tree_json = sqlparse.parse_json(sql)
        if len(tree_json) > MAX_TREE_NODES and tree_json.count("{") > MAX_TREE_NODES:
            raise LineageError("statement too complex to analyse (too many parse tree nodes)")
        tree = orjson.loads(tree_json)
    except _pg.ParseError as err:
        raise LineageError(str(err.args[0]) if err.args else "parse error") from None
    except (orjson.JSONDecodeError, RecursionError):
        raise LineageError("statement too complex to analyse (nesting too deep)") from None
    stmts: list[dict[str, Any]] = tree.get("stmts", []) if isinstance(tree, dict) else []
    return stmts


# Dynamic SQL (the statement is text the parser never sees) and data from outside the
# statement's tables: what such a function returns cannot be traced to columns.
_DYNAMIC_RE = re.compile("|".join(fnmatch.translate(p) for p in (*DYNAMIC_SQL_FUNCTIONS, *OUTSIDE_DATA_FUNCTIONS)))
# Functions whose value reveals presence or size, not content.
_NO_LINEAGE = frozenset({"count", "pg_typeof", "pg_column_size", "num_nulls", "num_nonnulls", "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "grouping"})  # fmt: skip
# Functions that return one of their arguments' values unchanged.
# Built-in functions that return other sessions' statement texts (what pg_stat_activity's
# query column shows, and is classified for): their values are that column's.  The
# statistics functions behind the view, and pg_stat_statements (in whatever schema the
# extension is: it keeps utility statements, passwords included, as they were written).
_STATEMENT_TEXT_FUNCTIONS = frozenset({"pg_stat_get_activity", "pg_stat_get_backend_activity"})
_STATEMENT_TEXT = _L(frozenset({SourceColumn("pg_catalog", "pg_stat_activity", "query")}), False, True)


def returns_statement_texts(schema: str | None, name: str) -> bool:
    """Whether calling ``schema.name`` returns other sessions' statement texts."""
    name = name.lower()
    return name == "pg_stat_statements" or (
        name in _STATEMENT_TEXT_FUNCTIONS and schema in (None, "pg_catalog")
    )


_TRANSPARENT = frozenset({"min", "max", "any_value", "first_value", "last_value", "nth_value", "lag", "lead", "mode", "nullif", "coalesce", "greatest", "least"})  # fmt: skip
# Set-returning built-ins and how many columns they yield.
_SRF_WIDTH = {
    "unnest": -1,  # one per argument
    "generate_series": 1, "generate_subscripts": 1, "regexp_matches": 1, "regexp_split_to_table": 1,
    "string_to_table": 1, "json_array_elements": 1, "jsonb_array_elements": 1,
    "json_array_elements_text": 1, "jsonb_array_elements_text": 1, "json_object_keys": 1,
    "jsonb_object_keys": 1, "jsonb_path_query": 1, "json_each": 2, "jsonb_each": 2,
    "json_each_text": 2, "jsonb_each_text": 2, "upper": 1, "lower": 1, "substr": 1, "md5": 1,
    "concat": 1, "concat_ws": 1, "format": 1, "to_json": 1, "to_jsonb": 1, "row_to_json": 1,
}  # fmt: skip
# Functions of _NO_LINEAGE whose argument's only revealed property is whether it is null.
_PRESENCE = frozenset({"count", "num_nulls", "num_nonnulls", "pg_typeof", "grouping"})
# Set-returning built-ins that expand a value into its elements.
_EXPANSIONS = frozenset({
    "unnest", "json_array_elements", "jsonb_array_elements", "json_array_elements_text",
    "jsonb_array_elements_text", "json_object_keys", "jsonb_object_keys", "json_each",
    "jsonb_each", "json_each_text", "jsonb_each_text",
})  # fmt: skip
# Set-returning built-ins: among output values, how many rows they yield depends on
# their arguments' values (regexp_matches(ssn, '^5') is a filter).
_SETOF = frozenset({
    "unnest", "generate_series", "generate_subscripts", "regexp_matches", "regexp_split_to_table",
    "string_to_table", "json_array_elements", "jsonb_array_elements", "json_array_elements_text",
    "jsonb_array_elements_text", "json_object_keys", "jsonb_object_keys", "jsonb_path_query",
    "json_each", "jsonb_each", "json_each_text", "jsonb_each_text", "json_populate_recordset",
    "jsonb_populate_recordset", "json_to_recordset", "jsonb_to_recordset", "ts_parse", "ts_token_type",
})  # fmt: skip
# Built-in aggregates (a call with DISTINCT, ORDER BY, FILTER or * is one whatever its name).
_AGGREGATES = frozenset({
    "count", "sum", "avg", "min", "max", "any_value", "string_agg", "array_agg", "json_agg",
    "jsonb_agg", "json_object_agg", "jsonb_object_agg", "json_agg_strict", "jsonb_agg_strict",
    "json_object_agg_strict", "jsonb_object_agg_strict", "json_object_agg_unique",
    "jsonb_object_agg_unique", "json_object_agg_unique_strict", "jsonb_object_agg_unique_strict",
    "xmlagg", "bool_and", "bool_or", "every", "bit_and", "bit_or", "bit_xor", "range_agg",
    "range_intersect_agg", "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop",
    "var_samp", "corr", "covar_pop", "covar_samp", "regr_avgx", "regr_avgy", "regr_count",
    "regr_intercept", "regr_r2", "regr_slope", "regr_sxx", "regr_sxy", "regr_syy", "mode",
    "percentile_cont", "percentile_disc", "rank", "dense_rank", "percent_rank", "cume_dist",
})  # fmt: skip
_SRF_NAMES = {"json_each": ("key", "value"), "jsonb_each": ("key", "value"), "json_each_text": ("key", "value"), "jsonb_each_text": ("key", "value")}  # fmt: skip
_WALK_SKIP = frozenset({"location", "typeName", "over", "agg_filter", "agg_order", "funcname", "name", "stmt_location", "stmt_len"})  # fmt: skip


def _effective_path(search_path: Iterable[str], user: str | None) -> tuple[str, ...]:
    out = []
    for s in search_path:
        s = s.strip().strip('"')
        if s == "$user":
            if user:
                out.append(user)
            continue
        if s:
            out.append(s)
    return tuple(out)


# -- the walk -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Walk:
    catalog: Catalog
    search_path: tuple[str, ...]
    depth: int = 0
    # Other schemas an unqualified name may resolve to (the session's path is not known
    # for sure): a name is masked by every candidate.  ``ANY_SCHEMA`` among them: all.
    candidates: frozenset[str] = frozenset()
    reads: set[TableName] = field(default_factory=set)
    exact: bool = True
    opaque_reads: bool = False  # ran code that may read any table (dynamic SQL, PL/pgSQL)
    # Walking the definition of one of the server's own views (pg_catalog): its column
    # names are the server's, not a client's (see statement_text_columns).
    system_view: bool = False
    # What the statement stores: (table, column, the lineage of the value written).
    writes: list[tuple[TableName, str, _L]] = field(default_factory=list)
    # Source columns used other than as output values, in order (see PredicateUse).
    uses: dict[PredicateUse, None] = field(default_factory=dict)
    written: set[SourceColumn] = field(default_factory=set)
    copied: set[SourceColumn] = field(default_factory=set)  # values written elsewhere
    # Where the walk is: None while walking output values, else the clause a column
    # reference would be used in; the shape of the next bare column reference.
    clause: str | None = None
    shape: Shape = "other"

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
        """Record that ``value``'s source columns are used in ``clause`` (default: the
        current one; nothing while walking output values)."""
        clause = clause or self.clause
        if clause is None:
            return
        for src in sorted(value.sources):
            self.uses.setdefault(PredicateUse(src, clause, shape), None)

    def shaped(self, node: Any, scope: _Scope, shape: Shape) -> _L:
        """Walk a column reference whose use has ``shape`` if it is a stored value."""
        self.shape = shape
        try:
            return self.expr(node, scope)
        finally:
            self.shape = "other"

    def argument(self, name: str, node: Any, scope: _Scope) -> _L:
        """An argument of a set-returning function: expanding a stored value (its array
        elements, its JSON keys) reveals its size, like count(); anything else counts."""
        if name in _EXPANSIONS and _kind(node) == "ColumnRef":
            return self.shaped(node, scope, "presence")
        return self.expr(node, scope)

    def filter(self, node: Any, scope: _Scope, clause: str) -> None:
        """A condition that filters rows (WHERE, JOIN ... ON, FILTER): point lookups of a
        column are told apart from every other use."""
        with self.within(clause):
            self._condition(node, scope)

    def _condition(self, node: Any, scope: _Scope) -> None:
        kind, body = _unwrap(node)
        if kind == "BoolExpr":  # AND, OR, NOT of lookups are lookups
            for arg in body.get("args", ()):
                self._condition(arg, scope)
            return
        if kind == "A_Expr" and self._lookup(body, scope):
            return
        if kind == "NullTest":
            _null_test(self, body, scope)
            return
        self.expr(node, scope)

    def _lookup(self, body: dict[str, Any], scope: _Scope) -> bool:
        """``col = c``, ``c = col``, ``col <> c``, ``col IN (c, ...)``, ``col NOT IN (...)``,
        ``col = ANY(c)``, ``col <> ALL(c)``, ``col IS [NOT] DISTINCT FROM c``, where ``c``
        is a constant or a parameter: walked as a lookup; False for anything else."""
        schema, op = _func_name(body.get("name"))
        if schema not in (None, "pg_catalog"):
            return False
        kind = body.get("kind")
        left, right = body.get("lexpr"), body.get("rexpr")
        if kind in ("AEXPR_OP", "AEXPR_DISTINCT", "AEXPR_NOT_DISTINCT") and op in ("=", "<>"):
            if _kind(right) != "ColumnRef" and _kind(left) == "ColumnRef" and _constant(right):
                col = left
            elif _kind(left) != "ColumnRef" and _kind(right) == "ColumnRef" and _constant(left):
                col = right
            else:
                return False
        elif kind == "AEXPR_IN" and op in ("=", "<>"):
            items = (
                right
                if isinstance(right, list)
                else _unwrap(right)[1].get("items")
                if _kind(right) == "List"
                else None
            )
            if _kind(left) != "ColumnRef" or not items or not all(_constant(i) for i in items):
                return False
            col = left
        elif (kind, op) in (("AEXPR_OP_ANY", "="), ("AEXPR_OP_ALL", "<>")):
            if _kind(left) != "ColumnRef" or not _constant(right):
                return False
            col = left
        else:
            return False
        self.shaped(col, scope, "equality")
        return True

    def ordering(self, items: Iterable[Any], scope: _Scope, out: Cols, clause: str) -> None:
        """ORDER BY, GROUP BY, DISTINCT ON items: positions (``ORDER BY 1``) and output
        names (``ORDER BY alias``) refer to the output columns."""
        names: dict[str, list[_L]] = {}
        for n, c in out:
            names.setdefault(n, []).append(c)
        with self.within(clause):
            for item in _grouping_items(items):
                kind, body = _unwrap(item)
                node = body.get("node") if kind == "SortBy" else item
                nkind, nbody = _unwrap(node)
                if nkind == "A_Const" and "ival" in nbody:
                    pos = nbody["ival"].get("ival", 0)
                    if isinstance(pos, int) and 1 <= pos <= len(out):
                        self.note(out[pos - 1][1])
                        continue
                if nkind == "ColumnRef":
                    fields = _strings(nbody.get("fields"))
                    if len(fields) == 1 and fields[0] in names:
                        for c in names[fields[0]]:
                            self.note(c)
                self.expr(node, scope)

    def clauses(self, body: dict[str, Any], scope: _Scope, out: Cols) -> None:
        """The clauses of a SELECT besides its output values."""
        if body.get("whereClause"):
            self.filter(body["whereClause"], scope, "WHERE")
        if body.get("groupClause"):
            self.ordering(body["groupClause"], scope, out, "GROUP BY")
        if body.get("havingClause"):
            with self.within("HAVING"):
                self.expr(body["havingClause"], scope)
        for wd in body.get("windowClause") or ():
            self.window(_unwrap(wd)[1], scope)
        distinct = body.get("distinctClause")
        if distinct:
            if all(not d for d in distinct):  # plain DISTINCT compares every output column
                for _, c in out:
                    self.note(c, "DISTINCT")
            else:
                self.ordering(distinct, scope, out, "DISTINCT ON")
        if body.get("sortClause"):
            self.ordering(body["sortClause"], scope, out, "ORDER BY")
        for key in ("limitCount", "limitOffset"):
            if body.get(key):
                with self.within("LIMIT/OFFSET"):
                    self.expr(body[key], scope)

    def window(self, body: Any, scope: _Scope) -> None:
        if not isinstance(body, dict):
            return
        with self.within("OVER (PARTITION BY)"):
            self.expr(body.get("partitionClause"), scope)
        with self.within("OVER (ORDER BY)"):
            self.expr(body.get("orderClause"), scope)
        with self.within("a window frame"):
            self.expr([body.get("startOffset"), body.get("endOffset")], scope)

    # ---- statements

    def statement(self, node: Any, scope: _Scope | None) -> Cols | None:
        """Output columns of a row-returning statement (None: it returns no rows)."""
        kind, body = _unwrap(node)
        if kind == "SelectStmt":
            return self.select(body, scope)
        if kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            return self.dml(kind, body, scope)
        return None

    def _with(self, body: dict[str, Any], scope: _Scope | None) -> dict[str, Cols]:
        ctes = dict(scope.ctes) if scope is not None else {}
        wc = body.get("withClause")
        if not wc:
            return ctes
        recursive = bool(wc.get("recursive"))
        for item in wc.get("ctes", ()):
            cte = item.get("CommonTableExpr", {})
            name = cte.get("ctename", "")
            aliases = _strings(cte.get("aliascolnames"))
            query = cte.get("ctequery")
            inner = _Scope([], [], scope, ctes, scope.params if scope else False)
            with self.within(None):
                if recursive:
                    cols = self._recursive_cte(name, aliases, query, inner)
                else:
                    cols = self.statement(query, inner) or []
                    cols = _rename(cols, aliases)
            ctes[name] = self._search_cycle(cte, cols)
        return ctes

    def _search_cycle(self, cte: dict[str, Any], cols: Cols) -> Cols:
        """The columns ``SEARCH ... SET seq`` and ``CYCLE ... SET mark USING path`` add to a
        recursive CTE, after its own, in that order.  The sequence column is a record (or
        an array of records) of the searched columns' values, the path an array of records
        of the cycle columns' values: both derive from them.  The mark says whether a row
        repeats an earlier one, which compares the cycle columns like DISTINCT does."""
        search = cte.get("search_clause")
        cycle = cte.get("cycle_clause")
        if not search and not cycle:
            return cols
        names: dict[str, list[_L]] = {}
        for n, c in cols:
            names.setdefault(n, []).append(c)

        def named(items: Any) -> _L:
            found: list[_L] = []
            for n in _strings(items):
                found.extend(names.get(n) or [_UNKNOWN])  # PostgreSQL would refuse it
            return _indirect(_union(found))

        out = list(cols)
        if search:
            out.append((str(search.get("search_seq_column", "?column?")), named(search.get("search_col_list"))))
        if cycle:
            compared = named(cycle.get("cycle_col_list"))
            self.note(compared, "CYCLE")
            out.append((str(cycle.get("cycle_mark_column", "?column?")), _EMPTY))
            out.append((str(cycle.get("cycle_path_column", "?column?")), compared))
        return out

    def _recursive_cte(self, name: str, aliases: list[str], query: Any, scope: _Scope) -> Cols:
        kind, body = _unwrap(query)
        seed: Cols = []
        if (
            kind == "SelectStmt"
            and body.get("op", "SETOP_NONE") != "SETOP_NONE"
            and body.get("larg")
        ):
            seed = self.select(body["larg"], scope)
        current = _rename(seed, aliases)
        for _ in range(_MAX_CTE_ROUNDS):
            scope.ctes = {**scope.ctes, name: current}
            result = _rename(self.statement(query, scope) or [], aliases)
            merged = _merge_positional(current, result, transparent=True)
            if merged == current:
                return current
            current = merged
        return [(n, _UNKNOWN) for n, _ in current]

    def select(self, body: dict[str, Any], parent: _Scope | None) -> Cols:
        ctes = self._with(body, parent)
        op = body.get("op", "SETOP_NONE")
        if op != "SETOP_NONE":
            sub = _Scope([], [], parent, ctes, parent.params if parent else False)
            left = self.select(body.get("larg", {}), sub)
            right = self.select(body.get("rarg", {}), sub)
            if len(left) != len(right):
                self.exact = False
            merged = _merge_positional(left, right, transparent=True)
            if op != "SETOP_UNION" or not body.get("all"):
                # UNION, INTERSECT and EXCEPT compare every column's values
                clause = op.removeprefix("SETOP_")
                for _, c in (*left, *right):
                    self.note(c, clause)
            self.clauses(body, sub, merged)
            return merged
        scope = _Scope([], [], parent, ctes, parent.params if parent else False)
        if "valuesLists" in body:
            rows = [
                self.exprs(lst.get("List", {}).get("items", []), scope)
                for lst in body["valuesLists"]
            ]
            width = max((len(r) for r in rows), default=0)
            return [
                (f"column{i + 1}", _union((r[i] for r in rows if i < len(r)), transparent=True))
                for i in range(width)
            ]
        for item in body.get("fromClause", ()):
            entries, star = self.from_item(item, scope)
            scope.entries.extend(entries)
            if star is None or scope.star is None:
                scope.star = None
            else:
                scope.star.extend(star)
        out = self.targets(body.get("targetList", ()), scope)
        self.clauses(body, scope, out)
        if body.get("intoClause"):
            self.into(body["intoClause"], out)
            return []
        return out

    def into(self, into: dict[str, Any], cols: Cols) -> None:
        """CREATE TABLE AS / SELECT INTO: the new table's columns store ``cols``."""
        rv = into.get("rel") or {}
        names = _strings(into.get("colNames"))
        cols = _rename(cols, names) if names else cols
        schema = rv.get("schemaname")
        if rv.get("relpersistence") == "t":
            schemas: Iterable[str] = ("pg_temp",)  # the session's own
        elif schema is not None:
            schemas = (schema,)
        else:
            first = [p for p in self.search_path if p not in ("pg_catalog", "pg_temp")][:1]
            schemas = {*first, *(c for c in self.candidates if c != ANY_SCHEMA)}
        for sch in schemas:
            for n, c in cols:
                self.writes.append(((sch, rv.get("relname", "")), n, c))

    def _wrote(self, target: _Entry, values: Mapping[str, _L]) -> None:
        if target.rel is None:
            return
        rel = target.rel
        if not rel[0]:
            # Not in the catalog (a temporary table, or one created since): it is where the
            # path says, as far as can be told.
            first = [p for p in self.search_path if p != "pg_catalog"][:1]
            rel = (first[0] if first else "pg_temp", rel[1])
        for n, v in values.items():
            self.writes.append((rel, n, v))

    def targets(self, targets: Iterable[Any], scope: _Scope) -> Cols:
        out: Cols = []
        for t in targets:
            rt = t.get("ResTarget", t) if isinstance(t, dict) else {}
            val = rt.get("val")
            kind, body = _unwrap(val)
            if kind == "ColumnRef":
                fields = body.get("fields", [])
                if fields and "A_Star" in fields[-1]:
                    expanded = self.star(_strings(fields[:-1]), scope)
                    for _, c in expanded:
                        self.note(c)  # inside a subquery of a clause
                    out.extend(expanded)
                    continue
            if kind == "A_Indirection" and any("A_Star" in i for i in body.get("indirection", ()) if isinstance(i, dict)):
                # ``(row(...)::t).*``: as many columns as the type has, each from the value
                self.exact = False
                out.append(("*", _union([_UNKNOWN, _indirect(self.expr(val, scope))])))
                continue
            out.append((rt.get("name") or _column_name(val), self.expr(val, scope)))
        return out

    def star(self, qual: list[str], scope: _Scope) -> Cols:
        if not qual:
            if scope.star is None:
                self.exact = False
                opaque = [e.any_column() for e in scope.entries if e.opaque]
                return [("*", _union([_UNKNOWN, *opaque]))]
            return list(scope.star)
        entry = self.find_entry(qual, scope)
        if entry is None or entry.opaque:
            self.exact = False
            return [("*", _UNKNOWN if entry is None else entry.any_column())]
        return list(entry.cols)

    # ---- FROM

    def from_item(self, node: Any, scope: _Scope) -> tuple[list[_Entry], Cols | None]:
        kind, body = _unwrap(node)
        if kind == "RangeVar":
            entry = self.range_var(body, scope)
            return [entry], (None if entry.opaque else list(entry.cols))
        if kind == "RangeSubselect":
            with self.within(None):
                cols = self.statement(body.get("subquery"), _lateral(scope)) or []
            alias = body.get("alias") or {}
            if any(n == "*" for n, _ in cols):
                # its columns cannot be told apart (``(row(...)::t).*``, a * over the unknown)
                origin = _indirect(_union(c for _, c in cols))
                return [_Entry(alias.get("aliasname"), None, [], opaque=True, origin=origin)], None
            cols = _rename(cols, _strings(alias.get("colnames")))
            entry = _Entry(alias.get("aliasname"), None, cols)
            return [entry], list(cols)
        if kind == "RangeFunction":
            # how many rows a function yields may depend on its arguments' values
            with self.within("a function in FROM"):
                return self.range_function(body, scope)
        if kind == "JoinExpr":
            return self.join(body, scope)
        if kind == "RangeTableSample":
            return self.from_item(body.get("relation"), scope)
        if kind == "RangeTableFunc":  # XMLTABLE
            with self.within("a function in FROM"):
                src = _indirect(
                    self.expr(
                        [body.get("docexpr"), body.get("rowexpr"), body.get("columns")], scope
                    )
                )
            names = [
                c.get("RangeTableFuncCol", {}).get("colname", "?column?")
                for c in body.get("columns", ())
            ]
            alias = body.get("alias") or {}
            cols = [(n, src) for n in names]
            return [_Entry(alias.get("aliasname"), None, cols)], cols
        # JSON_TABLE and anything newer: its columns are not known here
        alias = (body.get("alias") or {}) if isinstance(body, dict) else {}
        self.expr(body, scope)
        return [_Entry(alias.get("aliasname"), None, [], opaque=True)], None

    def range_var(self, rv: dict[str, Any], scope: _Scope) -> _Entry:
        schema = rv.get("schemaname")
        name = rv.get("relname", "")
        alias = rv.get("alias") or {}
        colnames = _strings(alias.get("colnames"))
        entry_name = alias.get("aliasname") or name
        if schema is None and name in scope.ctes:
            return _Entry(entry_name, None, _rename(scope.ctes[name], colnames))
        rel = self.catalog.relation(schema, name, self.search_path)
        others = self._other_candidates(schema, name, rel.schema if rel is not None else None)
        if rel is None and others:
            rel, others = others[0], others[1:]
        if rel is None:
            self.reads.add((schema or "", name))
            return _Entry(entry_name, (schema or "", name), [], opaque=True)
        self.reads.add((rel.schema, rel.name))
        cols = self.relation_cols(rel)
        if others:
            cols = self._merge_candidates(cols, others)
        return _Entry(entry_name, (rel.schema, rel.name), _rename(cols, colnames))

    def _other_candidates(self, schema: str | None, name: str, found: str | None) -> list[Relation]:
        """Relations named ``name`` in the candidate schemas other than ``found``."""
        if schema is not None or not self.candidates:
            return []
        out = []
        for s in _candidate_schemas(self.catalog, self.candidates):
            if s != found and (rel := self.catalog.relation(s, name)) is not None:
                out.append(rel)
        return out

    def _merge_candidates(self, cols: Cols, others: list[Relation]) -> Cols:
        """The columns of one of several relations a name may mean: each derives from the
        same-named column of every candidate; columns only some have are added, and the
        output positions are no longer certain."""
        merged = dict(cols)
        order = [n for n, _ in cols]
        for rel in others:
            self.reads.add((rel.schema, rel.name))
            other = self.relation_cols(rel)
            if [n for n, _ in other] != order:
                self.exact = False
            for n, c in other:
                if n in merged:
                    merged[n] = _union([merged[n], c], bare=True)
                else:
                    merged[n] = c
                    order.append(n)
        return [(n, merged[n]) for n in order]

    def _functions(self, schema: str | None, name: str) -> list[Function]:
        """The functions an unqualified call may mean: on the path, and in every candidate
        schema."""
        first = self.catalog.functions_named(schema, name, self.search_path)
        if schema is not None or not self.candidates:
            return first
        seen = {f.oid for f in first}
        out = list(first)
        for s in _candidate_schemas(self.catalog, self.candidates):
            for f in self.catalog.functions_named(s, name):
                if f.oid not in seen:
                    seen.add(f.oid)
                    out.append(f)
        return out

    def relation_cols(self, rel: Relation) -> Cols:
        if not rel.is_view:
            return [
                (c.name, _L(frozenset({rel.source(c.name)}), False, True, True))
                for c in rel.columns
            ]
        key = ("view", rel.oid)
        cached = self.catalog.cache.get(key)
        if cached is None:
            cached = self._expand_view(rel)
            self.catalog.cache[key] = cached
        cols, reads = cached
        self.reads.update(reads)
        return list(cols)

    def _expand_view(self, rel: Relation) -> tuple[Cols, frozenset[TableName]]:
        own = [(c.name, rel.source(c.name)) for c in rel.columns]
        inner_cols: Cols | None = None
        reads: set[TableName] = set()
        if rel.definition and self.depth < MAX_DEPTH:
            try:
                stmts = _parse(rel.definition)
            except LineageError:
                stmts = []
            if len(stmts) == 1:
                # views resolve names with the search path they were read with
                sub = _Walk(self.catalog, self.catalog.search_path, self.depth + 1)
                sub.system_view = rel.schema == "pg_catalog"
                inner_cols = sub.statement(stmts[0].get("stmt"), None)
                reads = sub.reads
                if not sub.exact:
                    inner_cols = None
        if inner_cols is None or len(inner_cols) != len(own):
            return [(n, _L(frozenset({s}), True, True)) for n, s in own], frozenset(reads)
        out = [
            (n, _L(c.sources | {s}, c.unknown, c.direct, c.bare))
            for (n, s), (_, c) in zip(own, inner_cols, strict=True)
        ]
        return out, frozenset(reads)

    def join(self, body: dict[str, Any], scope: _Scope) -> tuple[list[_Entry], Cols | None]:
        le, ls = self.from_item(body.get("larg"), scope)
        partial = _Scope([*scope.entries, *le], None, scope.parent, scope.ctes, scope.params)
        re_, rs = self.from_item(body.get("rarg"), partial)
        entries = [*le, *re_]
        using = _strings(body.get("usingClause"))
        if body.get("isNatural") and ls is not None and rs is not None:
            right_names = {n for n, _ in rs}
            using = [n for n, _ in ls if n in right_names]
        star: Cols | None
        if ls is None or rs is None:
            star = None
        elif using:
            lmap = dict(ls)
            rmap = dict(rs)
            merged = [
                (n, _union([lmap.get(n, _EMPTY), rmap.get(n, _EMPTY)], transparent=True, bare=True))
                for n in using
            ]
            star = (
                merged + [c for c in ls if c[0] not in using] + [c for c in rs if c[0] not in using]
            )
            ua = body.get("join_using_alias")
            if ua:
                entries.append(_Entry(ua.get("aliasname"), None, merged))
            for n in using:
                self.note(lmap.get(n, _EMPTY), "JOIN ... USING")
                self.note(rmap.get(n, _EMPTY), "JOIN ... USING")
        else:
            star = ls + rs
        quals = body.get("quals")
        if quals:
            self.filter(
                quals,
                _Scope([*scope.entries, *entries], star, scope.parent, scope.ctes, scope.params),
                "JOIN ... ON",
            )
        alias = body.get("alias")
        if alias:
            cols = _rename(star or [], _strings(alias.get("colnames")))
            entries = [_Entry(alias.get("aliasname"), None, cols, opaque=star is None)]
        return entries, star

    def range_function(
        self, body: dict[str, Any], scope: _Scope
    ) -> tuple[list[_Entry], Cols | None]:
        inner = _lateral(scope)
        alias = body.get("alias") or {}
        texts = self.statement_text_columns(body, _strings(alias.get("colnames")), inner)
        if texts is not None:
            return [_Entry(alias.get("aliasname"), None, texts)], list(texts)
        cols: Cols | None = []
        first_name = "?column?"
        for item in body.get("functions", ()):
            parts = item.get("List", {}).get("items", []) if isinstance(item, dict) else []
            call = parts[0] if parts else None
            coldef = parts[1].get("List", {}).get("items") if len(parts) > 1 and parts[1] else None
            fcols = self.function_cols(call, coldef, inner)
            kind, fbody = _unwrap(call)
            if kind == "FuncCall":
                first_name = (
                    _func_name(fbody.get("funcname"))[1] if first_name == "?column?" else first_name
                )
            if fcols is None or cols is None:
                cols = None
            else:
                cols.extend(fcols)
        coldeflist = body.get("coldeflist")
        alias = body.get("alias") or {}
        colnames = _strings(alias.get("colnames"))
        if cols is None and coldeflist:
            union = self.expr(body.get("functions"), inner)
            cols = [(_coldef_name(c), _indirect(union)) for c in coldeflist]
        if cols is not None and body.get("ordinality"):
            cols.append(("ordinality", _EMPTY))
        name = alias.get("aliasname") or first_name
        if cols is None:
            # ``json_populate_record(null::t, json_build_object('a', c.name))``: the record's
            # columns come from the arguments, whatever the row type says.
            origin = _indirect(self.expr(body.get("functions"), inner))
            return [_Entry(name, None, [], opaque=True, origin=origin)], None
        if len(cols) == 1 and not colnames and cols[0][0] != name and not alias.get("aliasname"):
            cols = [(name, cols[0][1])]
        cols = _rename(cols, colnames)
        return [_Entry(name, None, cols)], list(cols)

    def statement_text_columns(
        self, body: dict[str, Any], colnames: list[str], scope: _Scope
    ) -> Cols | None:
        """``pg_stat_get_activity(NULL) s(datid, pid, ..., query, ...)`` in the definition
        of pg_stat_activity (or another pg_catalog view): only ``query`` is the statement
        text.  Anywhere else the names are a client's to choose (``a(datid, pid, usesysid,
        application_name, query, state)`` would call the text ``state``): every column is
        the text (the generic path), which is more than needed but never less."""
        functions = body.get("functions", ())
        if not self.system_view or len(functions) != 1 or not colnames or body.get("ordinality"):
            return None
        parts = functions[0].get("List", {}).get("items", []) if isinstance(functions[0], dict) else []
        kind, call = _unwrap(parts[0]) if parts else (None, {})
        if kind != "FuncCall" or not returns_statement_texts(*_func_name(call.get("funcname"))):
            return None
        args = _indirect(self.exprs_union(call.get("args", []), scope))
        self.reads.add(("pg_catalog", "pg_stat_activity"))
        text = _union([args, _STATEMENT_TEXT], True)
        return [(n, text if n.lower() == "query" else args) for n in colnames]

    def function_cols(self, call: Any, coldef: Any, scope: _Scope) -> Cols | None:
        """The columns a function in FROM yields, or None when their number is unknown."""
        kind, body = _unwrap(call)
        if kind != "FuncCall":
            return [(_column_name(call), self.expr(call, scope))]
        schema, name = _func_name(body.get("funcname"))
        args = body.get("args", [])
        fns = self._functions(schema, name)
        if fns:
            per_col = self.user_function_cols(fns, args, scope)
            if per_col is not None:
                return per_col
            if coldef:
                union = _indirect(self.expr(call, scope))
                return [(_coldef_name(c), union) for c in coldef]
            return None
        union = _indirect(self.expr(call, scope))
        if coldef:
            return [(_coldef_name(c), union) for c in coldef]
        width = _SRF_WIDTH.get(name)
        if width == -1:
            return [(name, _indirect(self.argument(name, a, scope))) for a in args]
        if width is None:
            return None
        names = _SRF_NAMES.get(name, (name,))
        return [(names[i] if i < len(names) else name, union) for i in range(width)]

    def user_function_cols(
        self, fns: list[Function], args: list[Any], scope: _Scope
    ) -> Cols | None:
        arg_l = _indirect(self.exprs_union(args, scope))
        if len(fns) != 1:
            return None
        fn = fns[0]
        out_names = fn.out_names
        width: int | None = len(out_names) if out_names else None
        if width is None and fn.result_relid:
            rel = self.catalog.relation_by_oid(fn.result_relid)
            width = len(rel.columns) if rel is not None else None
            out_names = tuple(c.name for c in rel.columns) if rel is not None else ()
        if width is None:
            if fn.returns_set and not fn.result_relid and fn.language == "sql":
                body_cols = self.function_body(fn)
                if body_cols is not None and len(body_cols) == 1:
                    return [(fn.name, _indirect(_union([body_cols[0][1], arg_l])))]
                return None
            width = 1
            out_names = (fn.name,)
        if fn.language == "sql":
            body_cols = self.function_body(fn)
            if body_cols is not None and len(body_cols) == width:
                return [
                    (n, _union([_indirect(c), arg_l]))
                    for n, (_, c) in zip(out_names, body_cols, strict=True)
                ]
            if body_cols is not None:
                union = _union([_indirect(_union(c for _, c in body_cols)), arg_l])
                return [(n, union) for n in out_names]
            return [(n, _UNKNOWN) for n in out_names]
        if fn.language in ("c", "internal"):
            return [(n, arg_l) for n in out_names]
        self.opaque_reads = True
        return [(n, _union([_UNKNOWN, arg_l])) for n in out_names]

    def function_body(self, fn: Function) -> Cols | None:
        """Output columns of a SQL function's last statement; None when not analysable."""
        # Its own SET search_path clause, else the caller's path, resolves its body's names.
        path, candidates = (
            (_effective_path(fn.search_path, None), frozenset[str]())
            if fn.search_path is not None
            else (self.search_path, self.candidates)
        )
        key = ("fn", fn.oid, path, candidates)
        if key in self.catalog.cache:
            cols, reads = self.catalog.cache[key]
            self.reads.update(reads)
            if cols is None:
                self.opaque_reads = True
            return cols  # type: ignore[no-any-return]
        self.catalog.cache[key] = (None, frozenset())  # recursion guard
        result: Cols | None = None
        sub = _Walk(self.catalog, path, self.depth + 1, candidates=candidates)
        if fn.body and self.depth < MAX_DEPTH:
            text = fn.body.strip()
            upper = text[:16].upper()
            if upper.startswith("RETURN"):
                text = "SELECT " + text[6:]
            elif upper.startswith("BEGIN ATOMIC"):
                text = text[12:].rstrip().removesuffix(";")
                text = text.rstrip()[:-3] if text.rstrip().upper().endswith("END") else text
            try:
                stmts = _parse(text)
            except LineageError:
                stmts = []
            if stmts:
                fscope = _Scope([], [], None, {}, params=True)
                # every statement runs; the last one gives the result
                for st in stmts[:-1]:
                    sub.statement(st.get("stmt"), fscope)
                result = sub.statement(stmts[-1].get("stmt"), fscope)
                if not sub.exact:
                    result = None
        if sub.opaque_reads or result is None:
            self.opaque_reads = True
        self.catalog.cache[key] = (result, frozenset(sub.reads))
        self.reads.update(sub.reads)
        return result

    # ---- DML

    def dml(self, kind: str, body: dict[str, Any], parent: _Scope | None) -> Cols | None:
        ctes = self._with(body, parent)
        scope = _Scope([], [], parent, ctes, parent.params if parent else False)
        rv = body.get("relation") or {}
        target = self.range_var(rv, scope)
        stored = dict(target.cols)  # the target's columns as stored, before this statement
        if kind == "InsertStmt":
            cols = [r.get("ResTarget", {}).get("name") for r in body.get("cols", ())]
            with self.within(None):
                values = (
                    self.statement(body.get("selectStmt"), scope) if body.get("selectStmt") else []
                )
            values = values or []
            names = [c for c in cols if c] or [n for n, _ in target.cols]
            if not names:  # a relation the catalog does not know: its columns by position
                names = [f"?column{i + 1}?" for i in range(len(values))]
            fed = {n: v for n, (_, v) in zip(names, values, strict=False)}
            self._written(stored, names, fed.values())
            self._wrote(target, fed)
            target.cols = [
                (n, _union([c, fed.get(n, _EMPTY)], transparent=True, bare=True))
                for n, c in target.cols
            ]
            scope.entries.append(target)
            occ = body.get("onConflictClause") or {}
            excluded = _Entry("excluded", None, list(target.cols))
            cscope = _Scope([target, excluded], None, parent, ctes, scope.params)
            infer = occ.get("infer") or {}
            for elem in infer.get("indexElems") or ():
                # the inserted value is looked up among the stored ones
                ie = _unwrap(elem)[1]
                if isinstance(ie, dict) and ie.get("name"):
                    self.note(stored.get(ie["name"], _EMPTY), "ON CONFLICT", "equality")
                elif isinstance(ie, dict):
                    with self.within("ON CONFLICT"):
                        self.expr(ie.get("expr"), cscope)
            if infer.get("whereClause"):
                self.filter(infer["whereClause"], cscope, "ON CONFLICT")
            if occ.get("whereClause"):
                self.filter(occ["whereClause"], cscope, "WHERE")
            if occ.get("targetList"):
                self._apply_sets(target, occ["targetList"], cscope, stored)
        else:
            scope.entries.append(target)
            extra = body.get("fromClause") if kind == "UpdateStmt" else body.get("usingClause")
            if kind == "MergeStmt":
                extra = [body["sourceRelation"]] if body.get("sourceRelation") else []
            for item in extra or ():
                entries, _ = self.from_item(item, scope)
                scope.entries.extend(entries)
            if body.get("whereClause"):  # it sees the rows as stored
                self.filter(body["whereClause"], scope, "WHERE")
            if kind == "UpdateStmt":
                self._apply_sets(target, body.get("targetList", ()), scope, stored)
            if kind == "DeleteStmt":
                self._written(stored, list(stored), ())
            if kind == "MergeStmt":
                if body.get("joinCondition"):
                    self.filter(body["joinCondition"], scope, "MERGE ... ON")
                self._written(stored, list(stored), (e.whole() for e in scope.entries[1:]))
                merged = _indirect(_union(e.whole() for e in scope.entries[1:]))
                target.cols = [(n, _union([c, merged])) for n, c in target.cols]
                # (a target the catalog does not know, such as a temporary table: its
                # columns are not known, what it may store is)
                self._wrote(target, {n: merged for n, _ in target.cols} if not target.opaque else {"?column?": merged})
                for clause in body.get("mergeWhenClauses") or ():
                    mw = _unwrap(clause)[1]
                    if isinstance(mw, dict) and mw.get("condition"):
                        self.filter(mw["condition"], scope, "MERGE ... WHEN")
                    self.expr(
                        {k: v for k, v in mw.items() if k != "condition"}
                        if isinstance(mw, dict)
                        else mw,
                        scope,
                    )
        returning = body.get("returningList")
        rc = body.get("returningClause")
        if rc:
            returning = rc.get("exprs")
        if not returning:
            return None
        # PostgreSQL 18: RETURNING old.* / new.*
        scope.entries.append(_Entry("old", target.rel, target.cols, target.opaque))
        scope.entries.append(_Entry("new", target.rel, target.cols, target.opaque))
        scope.star = None if target.opaque else list(target.cols)
        return self.targets(returning, scope)

    def _written(self, stored: dict[str, _L], names: Iterable[str], values: Iterable[_L]) -> None:
        for n in names:
            self.written |= stored.get(n, _EMPTY).sources
        for v in values:
            self.copied |= v.sources

    def _apply_sets(
        self, target: _Entry, targets: Iterable[Any], scope: _Scope, stored: dict[str, _L]
    ) -> None:
        assigned: dict[str, _L] = {}
        for t in targets:
            rt = t.get("ResTarget", {})
            name = rt.get("name")
            val = rt.get("val")
            kind, body = _unwrap(val)
            if kind == "MultiAssignRef":
                val = body.get("source")
            if name:
                assigned[name] = _union([assigned.get(name, _EMPTY), self.expr(val, scope)], True)
        self._written(stored, list(assigned), assigned.values())
        self._wrote(target, assigned)
        target.cols = [
            (n, _union([c, assigned.get(n, _EMPTY)], transparent=True, bare=True))
            for n, c in target.cols
        ]

    # ---- expressions

    def exprs(self, nodes: Iterable[Any], scope: _Scope) -> list[_L]:
        return [self.expr(n, scope) for n in nodes]

    def exprs_union(self, nodes: Iterable[Any], scope: _Scope) -> _L:
        return _union(self.expr(n, scope) for n in nodes)

    def expr(self, node: Any, scope: _Scope) -> _L:
        if isinstance(node, list):
            return _union(self.expr(n, scope) for n in node)
        if not isinstance(node, dict):
            return _EMPTY
        if len(node) == 1:
            ((kind, body),) = node.items()
            if kind[:1].isupper():
                handler = _EXPR.get(kind)
                if handler is not None:
                    result: _L = handler(self, body, scope)
                    return result
                if kind in _DERIVED:
                    return _indirect(self.generic(body, scope))
                # a node this walk does not know: walked for the tables it reads, but what
                # its value derives from is not guessed
                self.generic(body, scope)
                return _UNKNOWN
        return self.generic(node, scope)

    def generic(self, body: Any, scope: _Scope, transparent: bool = False) -> _L:
        if isinstance(body, list):
            return _union((self.expr(n, scope) for n in body), transparent)
        if not isinstance(body, dict):
            return _EMPTY
        parts: list[_L] = []
        for k, v in body.items():
            if k in _WALK_SKIP:
                continue
            if isinstance(v, list):
                parts.extend(self.expr(item, scope) for item in v)
            elif isinstance(v, dict):
                parts.append(self.expr(v, scope))
        return _union(parts, transparent)

    def column_ref(self, body: dict[str, Any], scope: _Scope) -> _L:
        shape, self.shape = self.shape, "other"
        value = self._column_ref(body, scope)
        if self.clause is not None:
            self.note(value, shape=shape if value.bare else "other")
        return value

    def _column_ref(self, body: dict[str, Any], scope: _Scope) -> _L:
        fields = body.get("fields", [])
        star = bool(fields) and "A_Star" in fields[-1]
        names = _strings(fields[:-1] if star else fields)
        if star:
            entry = self.find_entry(names, scope) if names else None
            if entry is not None:
                return entry.whole()
            if not names:
                s: _Scope | None = scope
                while s is not None:
                    if s.entries:
                        return _indirect(_union(e.whole() for e in s.entries))
                    s = s.parent
            return _EMPTY if scope.params else _UNKNOWN
        if len(names) == 1:
            return self.resolve_name(names[0], scope) or _UNKNOWN
        qual, col = names[:-1], names[-1]
        level: _Scope | None = scope
        while level is not None:
            entry = _entry_in(qual, level)
            if entry is not None:
                if entry.opaque:
                    return entry.any_column()
                found = [c for n, c in entry.cols if n == col]
                return _union(found, transparent=True, bare=True) if found else _UNKNOWN
            level = level.parent
        # ``compositecol.field`` or ``function_name.param``
        if len(names) == 2:
            base = self.resolve_name(names[0], scope, quiet=True)
            if base is not None:
                return _indirect(base)
        return _EMPTY if scope.params else _UNKNOWN

    def resolve_name(self, name: str, scope: _Scope, quiet: bool = False) -> _L | None:
        level: _Scope | None = scope
        while level is not None:
            found = [c for e in level.entries for n, c in e.cols if n == name]
            if found:
                return _union(found, transparent=True, bare=True)
            opaque = [e for e in level.entries if e.opaque]
            if opaque:
                return _union([_UNKNOWN, *(e.any_column() for e in opaque)])
            for e in level.entries:
                if e.name == name:
                    return e.whole()  # a whole-row reference
            level = level.parent
        if quiet:
            return None
        return _EMPTY if scope.params else _UNKNOWN

    def find_entry(self, qual: list[str], scope: _Scope) -> _Entry | None:
        level: _Scope | None = scope
        while level is not None:
            e = _entry_in(qual, level)
            if e is not None:
                return e
            level = level.parent
        return None

    def func_call(self, body: dict[str, Any], scope: _Scope) -> _L:
        schema, name = _func_name(body.get("funcname"))
        clause = self.clause
        if clause is None:
            # among output values, an aggregate's arguments are compared, ordered or
            # counted, and these functions reveal something of a value they do not return
            if self._aggregate(body, schema, name):
                clause = "an aggregate"
            elif name in _NO_LINEAGE and schema in (None, "pg_catalog"):
                # their value derives from nothing and is not masked: only a bare column's
                # presence may go in (num_nulls(nullif(substr(ssn, 1, 1), '5')) may not)
                clause = f"{name}()"
            elif self._returns_set(schema, name):
                clause = "a set-returning function"
        with self.within(clause):
            return self._func_call(body, scope, schema, name)

    def _unknown_function(self, schema: str | None, name: str) -> bool:
        """A function the catalog does not hold that is not built in.  (A catalog without
        the names of the built-in functions judges none.)"""
        builtins = self.catalog.builtin_functions
        if not builtins:
            return False
        return schema not in (None, "pg_catalog") or name not in builtins

    def _returns_set(self, schema: str | None, name: str) -> bool:
        fns = self.catalog.functions_named(schema, name, self.search_path)
        if fns:
            return any(f.returns_set for f in fns)
        return name in _SETOF and schema in (None, "pg_catalog")

    def _aggregate(self, body: dict[str, Any], schema: str | None, name: str) -> bool:
        if any(
            body.get(k)
            for k in ("agg_star", "agg_distinct", "agg_order", "agg_filter", "agg_within_group")
        ):
            return True
        fns = self.catalog.functions_named(schema, name, self.search_path)
        if fns:
            return any(f.kind == "a" for f in fns)
        return name in _AGGREGATES and schema in (None, "pg_catalog")

    def _call_clauses(self, body: dict[str, Any], scope: _Scope, order: bool = True) -> None:
        if body.get("agg_filter"):
            self.filter(body["agg_filter"], scope, "FILTER")
        if order and body.get("agg_order"):
            with self.within("ORDER BY"):
                self.expr(body["agg_order"], scope)
        if isinstance(body.get("over"), dict):
            self.window(body["over"], scope)

    def _func_call(self, body: dict[str, Any], scope: _Scope, schema: str | None, name: str) -> _L:
        args = body.get("args", [])
        if returns_statement_texts(schema, name):
            self.reads.add(("pg_catalog", "pg_stat_activity"))  # what it reads, in effect
            return _union([_indirect(self.exprs_union(args, scope)), _STATEMENT_TEXT], True)
        if _DYNAMIC_RE.fullmatch(name):
            self.opaque_reads = True
            return _union([_UNKNOWN, _indirect(self.exprs_union(args, scope))])
        fns = self._functions(schema, name)
        if fns:
            arg_l = _indirect(self.exprs_union(args, scope))
            parts = [arg_l]
            for fn in fns:
                if fn.language == "sql":
                    cols = self.function_body(fn)
                    parts.append(
                        _UNKNOWN if cols is None else _indirect(_union(c for _, c in cols))
                    )
                elif fn.language not in ("c", "internal"):
                    self.opaque_reads = True
                    parts.append(_UNKNOWN)
            for part in parts[1:]:
                self.note(part)  # a SQL function's value compared: its body's columns count
            return _union(parts)
        if self._unknown_function(schema, name):
            # Created since the catalog was read, or where the catalog does not look (a
            # temporary function in pg_temp): its body may read anything.
            self.opaque_reads = True
            return _union([_UNKNOWN, _indirect(self.exprs_union(args, scope))])
        if name in _NO_LINEAGE and schema in (None, "pg_catalog"):
            presence = name in _PRESENCE and not body.get("agg_distinct")
            for a in args:
                if presence and _kind(a) == "ColumnRef":
                    self.shaped(a, scope, "presence")
                else:
                    self.expr(a, scope)
            # the ordered-set rank('x') WITHIN GROUP (ORDER BY col) places a guess among
            # the values: its ORDER BY counts
            self._call_clauses(body, scope)
            return _EMPTY
        self._call_clauses(body, scope)
        transparent = name in _TRANSPARENT and schema in (None, "pg_catalog") and len(args) >= 1
        if transparent and name in ("lag", "lead", "nth_value", "first_value", "last_value"):
            return _computed(self.expr(args[0], scope))
        if name in _EXPANSIONS and self.clause in ("a function in FROM", "a set-returning function"):
            return _union((self.argument(name, a, scope) for a in args), transparent)
        return _union((self.expr(a, scope) for a in args), transparent)

    def sublink(self, body: dict[str, Any], scope: _Scope) -> _L:
        kind = body.get("subLinkType", "")
        if kind == "EXISTS_SUBLINK":
            # what EXISTS selects is never looked at; its own clauses count
            with self.within(None):
                self.statement(body.get("subselect"), scope)
            return _EMPTY
        # the subquery's output values are used where the subquery is
        cols = self.statement(body.get("subselect"), scope) or []
        inner = _union((c for _, c in cols), transparent=kind == "EXPR_SUBLINK")
        if kind in ("EXPR_SUBLINK", "ARRAY_SUBLINK", "MULTIEXPR_SUBLINK"):
            return inner if kind == "EXPR_SUBLINK" else _indirect(inner)
        return _indirect(_union([inner, self.expr(body.get("testexpr"), scope)]))


def _presence(w: _Walk, body: Any, scope: _Scope) -> _L:
    w.generic(body, scope)
    return _EMPTY


def _leaf(w: _Walk, body: Any, scope: _Scope) -> _L:
    return _EMPTY


def _transparent(w: _Walk, body: Any, scope: _Scope) -> _L:
    return w.generic(body, scope, transparent=True)


def _min_max(w: _Walk, body: dict[str, Any], scope: _Scope) -> _L:
    """GREATEST/LEAST: the value is the argument that sorts last (first).  Which argument
    it is, and so the shape of its masked value (``greatest(ssn, '5')`` gives ``*`` or
    ``***-**-1234``), answers an order question about each argument: a use, like CASE."""
    name = "GREATEST" if body.get("op") == "IS_GREATEST" else "LEAST"
    with w.within(w.clause or name):
        args = [w.expr(a, scope) for a in body.get("args") or ()]
    return _union(args, transparent=True)


# Casts that keep the whole value, given without a length or precision (``::text``,
# ``::varchar``, ``::int8``, ``::date``): the value stays direct (partially maskable).
_WHOLE_VALUE_TYPES = frozenset({
    "text", "varchar", "bpchar", "bytea", "citext", "int2", "int4", "int8", "numeric",
    "date", "timestamp", "timestamptz", "json", "jsonb", "unknown",
})  # fmt: skip


def _type_cast(w: _Walk, body: dict[str, Any], scope: _Scope) -> _L:
    """A cast is the value it casts, unless it may cut it: ``ssn::varchar(8)``,
    ``ssn::char`` (one character), ``"char"``, ``name``, a domain: a partial mask of a cut
    value would show characters the whole value's mask hides (``***-*1-3``), so those are
    derived values (redacted)."""
    value = _transparent(w, body, scope)
    type_name = body.get("typeName") or {}
    names = _strings(type_name.get("names"))
    if not type_name.get("typmods") and names and names[-1].lower() in _WHOLE_VALUE_TYPES:
        return value
    return _indirect(value)


def _a_expr(w: _Walk, body: dict[str, Any], scope: _Scope) -> _L:
    if body.get("kind") == "AEXPR_NULLIF":
        # NULL exactly when the two are equal: a lookup of a stored value by a constant,
        # anything else an unrestricted question about the value
        lexpr, rexpr = body.get("lexpr"), body.get("rexpr")
        with w.within(w.clause or "NULLIF"):
            if _kind(lexpr) == "ColumnRef" and _constant(rexpr):
                left, right = w.shaped(lexpr, scope, "equality"), w.expr(rexpr, scope)
            elif _kind(rexpr) == "ColumnRef" and _constant(lexpr):
                left, right = w.expr(lexpr, scope), w.shaped(rexpr, scope, "equality")
            else:
                left, right = w.expr(lexpr, scope), w.expr(rexpr, scope)
        return _union([left, _indirect(right)], transparent=True)
    return _indirect(w.generic(body, scope))


def _case(w: _Walk, body: dict[str, Any], scope: _Scope) -> _L:
    whens = [when.get("CaseWhen", {}) for when in body.get("args", ())]
    with w.within(w.clause or "CASE"):  # conditions are predicates, even among outputs
        parts = [_indirect(w.expr(body.get("arg"), scope))]
        parts.extend(_indirect(w.expr(cw.get("expr"), scope)) for cw in whens)
    parts.extend(w.expr(cw.get("result"), scope) for cw in whens)
    parts.append(w.expr(body.get("defresult"), scope))
    return _union(parts, transparent=True)


def _null_test(w: _Walk, body: dict[str, Any], scope: _Scope) -> _L:
    """Presence of a column; of anything else, a question about its value (its value
    derives from nothing, so it is not masked: among output values it is a use too)."""
    arg = body.get("arg")
    if _kind(arg) == "ColumnRef":
        with w.within(w.clause or "IS NULL"):
            w.shaped(arg, scope, "presence")
    else:
        with w.within(w.clause or "IS NULL"):
            w.expr(arg, scope)
    return _EMPTY


def _boolean_test(w: _Walk, body: dict[str, Any], scope: _Scope) -> _L:
    """``x IS [NOT] TRUE``...: the value of ``x`` itself, unmasked."""
    with w.within(w.clause or "IS TRUE / IS FALSE"):
        w.expr(body.get("arg"), scope)
    return _EMPTY


def _window(w: _Walk, body: Any, scope: _Scope) -> _L:
    w.window(body, scope)
    return _EMPTY


def _kind(node: Any) -> str:
    return _unwrap(node)[0]


def _constant(node: Any) -> bool:
    """A constant or a parameter (cast or not), or an ARRAY[...] of them."""
    kind, body = _unwrap(node)
    if kind in ("A_Const", "ParamRef"):
        return True
    if kind == "TypeCast":
        return _constant(body.get("arg"))
    if kind == "A_ArrayExpr":
        return all(_constant(e) for e in body.get("elements") or ())
    return False


_EXPR: dict[str, Any] = {
    "ColumnRef": _Walk.column_ref,
    "FuncCall": _Walk.func_call,
    "SubLink": _Walk.sublink,
    "A_Const": _leaf,
    "ParamRef": _leaf,
    "SQLValueFunction": _leaf,
    "TypeName": _leaf,
    "String": _leaf,
    "Integer": _leaf,
    "Float": _leaf,
    "Boolean": _leaf,
    "BitString": _leaf,
    "A_Star": _leaf,
    "SetToDefault": _leaf,
    "CurrentOfExpr": _leaf,
    "MergeSupportFunc": _leaf,
    "ColumnDef": _leaf,  # a column definition list declares types, it holds no values
    "JsonFormat": _leaf,
    "JsonOutput": _leaf,
    "JsonReturning": _leaf,
    "NullTest": _null_test,
    "BooleanTest": _boolean_test,
    "GroupingFunc": _presence,
    "TypeCast": _type_cast,
    "CollateClause": _transparent,
    "CoalesceExpr": _transparent,
    "MinMaxExpr": _min_max,
    "A_Expr": _a_expr,
    "CaseExpr": _case,
    "SortBy": lambda w, b, s: w.expr(b.get("node"), s),
    "WindowDef": _window,
    "RangeSubselect": lambda w, b, s: _indirect(
        _union(c for _, c in (w.statement(b.get("subquery"), s) or []))
    ),
    "SelectStmt": lambda w, b, s: _indirect(_union(c for _, c in w.select(b, s))),
}


# Expressions whose value is computed from all of their operands (and nothing else).
_DERIVED = frozenset({
    "BoolExpr", "A_ArrayExpr", "A_Indirection", "A_Indices", "RowExpr", "NamedArgExpr",
    "GroupingSet", "XmlExpr", "XmlSerialize", "ResTarget", "MultiAssignRef", "List",
    "CaseWhen", "RangeTableFuncCol", "MergeWhenClause", "OnConflictClause", "InferClause",
    "IndexElem", "ReturningClause", "JsonObjectConstructor", "JsonArrayConstructor",
    "JsonArrayQueryConstructor", "JsonObjectAgg", "JsonArrayAgg", "JsonAggConstructor",
    "JsonKeyValue", "JsonValueExpr", "JsonFuncExpr", "JsonParseExpr", "JsonScalarExpr",
    "JsonSerializeExpr", "JsonArgument", "JsonBehavior", "JsonIsPredicate",
})  # fmt: skip


def _entry_in(qual: list[str], scope: _Scope) -> _Entry | None:
    if len(qual) > 2:
        qual = qual[-2:]  # catalog.schema.table: the database name is the current one
    if len(qual) == 1:
        for e in scope.entries:
            if e.name == qual[0]:
                return e
        return None
    for e in scope.entries:
        if e.rel is not None and e.rel == (qual[0], qual[1]) and e.name == qual[1]:
            return e
    return None


def _lateral(scope: _Scope) -> _Scope:
    """The scope a FROM-list subquery or function sees: the outer query's, plus (for
    LATERAL) the FROM items before it.  Non-lateral references would be errors anyway."""
    return _Scope(list(scope.entries), None, scope.parent, scope.ctes, scope.params)


def _rename(cols: Cols, names: list[str]) -> Cols:
    if not names:
        return list(cols)
    return [(names[i] if i < len(names) else n, c) for i, (n, c) in enumerate(cols)]


def _merge_positional(left: Cols, right: Cols, transparent: bool) -> Cols:
    out: Cols = []
    for i in range(max(len(left), len(right))):
        parts = [c[i][1] for c in (left, right) if i < len(c)]
        name = left[i][0] if i < len(left) else right[i][0]
        out.append((name, _union(parts, transparent, bare=True)))
    return out


def _coldef_name(node: Any) -> str:
    _, body = _unwrap(node)
    return str(body.get("colname", "?column?")) if isinstance(body, dict) else "?column?"


def _column_name(node: Any) -> str:
    """The name PostgreSQL gives an unnamed output column (roughly FigureColname)."""
    kind, body = _unwrap(node)
    if kind == "ColumnRef":
        names = _strings(body.get("fields"))
        return names[-1] if names else "?column?"
    if kind == "FuncCall":
        return _func_name(body.get("funcname"))[1] or "?column?"
    if kind == "TypeCast":
        inner = _column_name(body.get("arg"))
        if inner != "?column?":
            return inner
        names = _strings(body.get("typeName", {}).get("names"))
        return names[-1] if names else "?column?"
    if kind == "CoalesceExpr":
        return "coalesce"
    if kind == "CaseExpr":
        return "case"
    if kind == "SubLink" and body.get("subLinkType") == "EXPR_SUBLINK":
        sub = body.get("subselect", {}).get("SelectStmt", {})
        tl = sub.get("targetList") or []
        if tl:
            rt = tl[0].get("ResTarget", {})
            return str(rt.get("name") or _column_name(rt.get("val")))
    return "?column?"


# -- statements -------------------------------------------------------------------------------


def _copy_options(body: dict[str, Any]) -> CopyOptions:
    opts: dict[str, Any] = {}
    for o in body.get("options", ()):
        d = o.get("DefElem", {})
        name = d.get("defname", "")
        _, arg = _unwrap(d.get("arg"))
        value = arg.get("sval") if isinstance(arg, dict) else None
        if name == "format" and value in ("text", "csv", "binary"):
            opts["format"] = value
        elif name in ("delimiter", "null", "quote", "escape") and isinstance(value, str):
            opts[name] = value
        elif name == "encoding" and isinstance(value, str):
            opts["encoding"] = value
        elif name == "header":
            ival = arg.get("ival") if isinstance(arg, dict) else None
            bval = arg.get("boolval") if isinstance(arg, dict) else None
            opts["header"] = (
                d.get("arg") is None
                or bool(bval)
                or bool(ival)
                or (isinstance(value, str) and value.lower() not in ("false", "off", "0", "no"))
            )
    fmt = opts.get("format", "text")
    if fmt == "csv":
        opts.setdefault("delimiter", ",")
        opts.setdefault("null", "")
        opts.setdefault("escape", opts.get("quote", '"'))
    return CopyOptions(**opts)


#: Among the candidate schemas: the session's path is not known at all (every schema).
ANY_SCHEMA = "*"


def _candidate_schemas(catalog: Catalog, candidates: frozenset[str]) -> tuple[str, ...]:
    if ANY_SCHEMA not in candidates:
        return tuple(sorted(candidates))
    key = ("schemas",)
    found = catalog.cache.get(key)
    if found is None:
        found = tuple(
            sorted({r.schema for r in catalog.relations.values()} | {f.schema for f in catalog.functions.values()})
        )
        catalog.cache[key] = found
    return tuple(found)


def _lineage_of_tree(
    stmt: Any,
    catalog: Catalog,
    search_path: Iterable[str] = ("public",),
    user: str | None = None,
    candidates: frozenset[str] = frozenset(),
) -> StatementLineage:
    """Lineage of one parsed statement (a ``{"SelectStmt": ...}`` node from the JSON tree)."""
    path = _effective_path(search_path, user)
    w = _Walk(catalog, path, candidates=candidates)
    kind, body = _unwrap(stmt)
    body = body if isinstance(body, dict) else {}

    def done(command: str, cols: Cols | None, **kw: Any) -> StatementLineage:
        columns = tuple(ColumnLineage(n, c.sources, c.unknown, c.direct) for n, c in cols or ())
        read = {s for c in columns for s in c.sources} | {u.column for u in w.uses} | w.copied
        writes = tuple((t, ColumnLineage(n, c.sources, c.unknown, c.direct)) for t, n, c in w.writes)
        return StatementLineage(
            command, columns, frozenset(w.reads), cols is not None or kw.pop("rows", False),
            exact=w.exact and kw.pop("exact", True),
            reads_unknown=w.opaque_reads or kw.pop("reads_unknown", False), writes=writes,
            predicates=tuple(w.uses), columns_written=frozenset(w.written),
            columns_read=frozenset(read), **kw,
        )  # fmt: skip

    if kind in ("SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
        command = {"SelectStmt": "SELECT", "InsertStmt": "INSERT", "UpdateStmt": "UPDATE", "DeleteStmt": "DELETE", "MergeStmt": "MERGE"}[kind]  # fmt: skip
        cols = w.statement(stmt, None)
        if kind == "SelectStmt" and body.get("intoClause"):
            return done("SELECT INTO", None)
        return done(command, cols)
    if kind == "CopyStmt":
        if body.get("is_from") and body.get("relation"):
            target = w.range_var(body["relation"], _Scope([], [], None, {}))
            stored = dict(target.cols)
            w._written(stored, _strings(body.get("attlist")) or list(stored), ())
        if body.get("is_from") or body.get("filename") is not None or body.get("is_program"):
            if body.get("query"):
                w.statement(body["query"], None)  # COPY (query) TO a file or program
            return done("COPY", None)
        opts = _copy_options(body)
        if body.get("query"):
            cols = w.statement(body["query"], None)
            return done("COPY", cols, copy=opts)
        rv = body.get("relation") or {}
        scope = _Scope([], [], None, {})
        entry = w.range_var(rv, scope)
        attlist = _strings(body.get("attlist"))
        rel = catalog.relation(rv.get("schemaname"), rv.get("relname", ""), path)
        if entry.opaque or rel is None:
            w.exact = False
            return done("COPY", [("*", _UNKNOWN)], copy=opts)
        by_name = dict(entry.cols)
        names = attlist or [n for n, _ in entry.cols]
        types = {c.name: c.type_oid for c in rel.columns}
        cols = [(n, by_name.get(n, _UNKNOWN)) for n in names]
        opts = CopyOptions(**{**_asdict(opts), "type_oids": tuple(types.get(n) for n in names)})
        return done("COPY", cols, copy=opts)
    if kind == "ExplainStmt":
        # EXPLAIN ANALYZE runs the statement: what it stores counts.  A plan's row counts
        # (ANALYZE) and estimates (from the columns' statistics) answer its predicates:
        # they count too; its output values are never returned.
        inner = _lineage_of_tree(body.get("query"), catalog, search_path, user, candidates)
        return replace(
            done("EXPLAIN", [("QUERY PLAN", _EMPTY)]), writes=inner.writes, predicates=inner.predicates
        )
    if kind == "DeclareCursorStmt":
        inner = _lineage_of_tree(body.get("query"), catalog, search_path, user, candidates)
        return replace(
            inner, command="DECLARE CURSOR", returns_rows=False, declares=body.get("portalname")
        )
    if kind == "PrepareStmt":
        inner = _lineage_of_tree(body.get("query"), catalog, search_path, user, candidates)
        return replace(inner, command="PREPARE", returns_rows=False, prepares=body.get("name"))
    if kind == "FetchStmt":
        if body.get("ismove"):
            return done("MOVE", None)
        return done(
            "FETCH",
            None,
            rows=True,
            exact=False,
            reads_unknown=True,
            fetches=body.get("portalname"),
        )
    if kind == "ExecuteStmt":
        w.expr(body.get("params"), _Scope([], [], None, {}))
        return done(
            "EXECUTE", None, rows=True, exact=False, reads_unknown=True, executes=body.get("name")
        )
    if kind == "VariableShowStmt":
        return done("SHOW", [(body.get("name", "setting"), _EMPTY)])
    if kind == "CallStmt":
        call = body.get("funccall", {})
        lin = w.expr({"FuncCall": call}, _Scope([], [], None, {}))
        # a procedure with OUT parameters returns one row; its width is not known here
        return done("CALL", [("*", _union([lin, _UNKNOWN]))], exact=False)
    if kind == "AlterTableStmt" and body.get("relation"):
        w._wrote(*_stored_expressions(w, body))
        return done("ALTER TABLE", None)
    if kind == "CreateTableAsStmt":
        cols = w.statement(body.get("query"), None)
        if body.get("objtype") != "OBJECT_MATVIEW" and cols is not None:
            w.into(body.get("into") or {}, cols)  # a materialized view is read through its definition
        return done("CREATE TABLE AS", None)
    return done(kind.removesuffix("Stmt").upper() or "EMPTY", None)


def created_function_sources(
    sql: str, catalog: Catalog, search_path: Iterable[str], candidates: frozenset[str] = frozenset()
) -> frozenset[SourceColumn]:
    """The source columns that the LANGUAGE sql functions and procedures ``sql`` creates
    return or store: their bodies are queries kept to run later, like a view's, and run
    before the catalog is read again (a temporary function, in ``pg_temp``, never is).
    Other languages are opaque (their results are masked by value detection).  Raises
    :class:`LineageError` when a body cannot be analysed."""
    out: set[SourceColumn] = set()
    with _failing_closed():
        for s in _parse(sql):
            kind, body = _unwrap(s.get("stmt"))
            if kind != "CreateFunctionStmt" or not isinstance(body, dict):
                continue
            options: dict[str, Any] = {}
            for o in body.get("options") or ():
                d = o.get("DefElem", {}) if isinstance(o, dict) else {}
                options[str(d.get("defname"))] = d.get("arg")
            stmts = _sql_function_body(body, options)
            path: Iterable[str] = search_path
            own = _unwrap(options.get("set"))[1] if options.get("set") else None
            if isinstance(own, dict) and own.get("name") == "search_path":
                path = [str(_unwrap(a)[1].get("sval", {}).get("sval", "")) for a in own.get("args", ())]
            w = _Walk(catalog, _effective_path(path, None), candidates=candidates)
            fscope = _Scope([], [], None, {}, params=True)
            for st in stmts:
                for _, c in w.statement(st, fscope) or ():
                    out |= c.sources
            out |= {src for _, _, c in w.writes for src in c.sources}
    return frozenset(out)


def _sql_function_body(body: dict[str, Any], options: Mapping[str, Any]) -> list[Any]:
    """The statements of a CREATE FUNCTION's body when its language is sql (none else):
    ``RETURN expr`` as a SELECT, ``BEGIN ATOMIC ... END``, or the ``AS`` string parsed."""
    sql_body = body.get("sql_body")
    if sql_body is not None:
        kind, ret = _unwrap(sql_body)
        if kind == "ReturnStmt":
            return [{"SelectStmt": {"targetList": [{"ResTarget": {"val": ret.get("returnval")}}]}}]
        return [st for lst in ret.get("items", ()) for st in _unwrap(lst)[1].get("items", ())]
    language = _strings([options["language"]]) if options.get("language") else []
    if [x.lower() for x in language] != ["sql"]:
        return []
    text = " ".join(_strings(_unwrap(options.get("as"))[1].get("items", ())[:1]))
    return [st.get("stmt") for st in _parse(text)] if text.strip() else []


def _stored_expressions(w: _Walk, body: dict[str, Any]) -> tuple[_Entry, dict[str, _L]]:
    """What an ALTER TABLE stores in the table's columns from expressions over its rows:
    a generated column (``ADD COLUMN x text GENERATED ALWAYS AS (name) STORED``) and a
    column rewritten by ``ALTER COLUMN x TYPE t USING name``."""
    target = w.range_var(body["relation"], _Scope([], [], None, {}))
    scope = _Scope([target], None, None, {})
    values: dict[str, _L] = {}
    for item in body.get("cmds") or ():
        cmd = item.get("AlterTableCmd", {}) if isinstance(item, dict) else {}
        kind, d = _unwrap(cmd.get("def")) if cmd.get("def") else ("", {})
        if not isinstance(d, dict):
            continue
        subtype = cmd.get("subtype")
        if subtype == "AT_AddColumn" and kind == "ColumnDef":
            for con in d.get("constraints") or ():
                expr = _unwrap(con)[1].get("raw_expr") if isinstance(con, dict) else None
                if expr is not None:
                    values[str(d.get("colname", ""))] = w.expr(expr, scope)
        elif subtype == "AT_AlterColumnType" and kind == "ColumnDef" and d.get("raw_default") is not None:
            values[str(cmd.get("name", ""))] = w.expr(d["raw_default"], scope)
        elif subtype == "AT_SetExpression":  # PostgreSQL 17: ALTER COLUMN x SET EXPRESSION AS (...)
            values[str(cmd.get("name", ""))] = w.expr(cmd.get("def"), scope)
    return target, values


def _asdict(opts: CopyOptions) -> dict[str, Any]:
    return {f: getattr(opts, f) for f in CopyOptions.__slots__}


def analyze_lineage(
    sql: str,
    catalog: Catalog,
    search_path: Iterable[str] = ("public",),
    user: str | None = None,
    candidates: frozenset[str] = frozenset(),
) -> list[StatementLineage]:
    """Lineage of every statement in ``sql``.  ``search_path`` is the session's (``$user``
    is replaced by ``user``); ``candidates`` are other schemas it may hold (the session's
    path is not known for sure; :data:`ANY_SCHEMA`: any), and an unqualified name derives
    from every relation or function it may mean there.  Raises :class:`LineageError` when
    the SQL does not parse."""
    path = tuple(search_path)
    with _failing_closed():
        return [_lineage_of_tree(s.get("stmt"), catalog, path, user, candidates) for s in _parse(sql)]


def lineage_of_tree(
    stmt: Any, catalog: Catalog, search_path: Iterable[str] = ("public",), user: str | None = None
) -> StatementLineage:
    """Lineage of one parsed statement (a ``{"SelectStmt": ...}`` node from the JSON tree).
    Raises :class:`LineageError` when the tree cannot be analysed."""
    with _failing_closed():
        return _lineage_of_tree(stmt, catalog, search_path, user)


@contextlib.contextmanager
def _failing_closed() -> Iterator[None]:
    """Only :class:`LineageError` leaves the analysis: a tree too deep for the walk, or one
    it did not expect, fails closed like an unparsable statement."""
    try:
        yield
    except LineageError:
        raise
    except (RecursionError, MemoryError):
        raise LineageError("statement too complex to analyse (nesting too deep)") from None
    except Exception as err:
        raise LineageError(
            f"could not analyse the statement ({type(err).__name__}: {err})"
        ) from err

"""What the upstream database holds: tables, columns, views and SQL functions.

The proxy reads the catalog on a side connection with the SQL strings below and builds a
:class:`Catalog` from the result rows; everything after the fetch is pure.  ``fetch_catalog``
is a thin helper over a psycopg ``AsyncConnection`` for the CLI and tests.

View definitions come from ``pg_get_viewdef``, which qualifies names only when they are not
visible on the search path of the connection that reads them; that search path is kept in
:attr:`Catalog.search_path` and views are analysed with it.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dbsentry.masking.classes import Classification, DataClass, most_sensitive, parse_class
from dbsentry.masking.detect import IGNORED_NONE_NOTE, classify_column, comment_says_none
from dbsentry.masking.sampling import (
    MAX_VALUE_CHARS,
    SampledColumn,
    ValueFinding,
    classify_fields,
    classify_table_sample,
)

__all__ = [
    "BUILTIN_FUNCTIONS_SQL",
    "CODE_SQL",
    "COMPOSITES_SQL",
    "FUNCTIONS_SQL",
    "FUNCTIONS_SQL_PRE14",
    "INHERITS_SQL",
    "OPERATORS_SQL",
    "RELATIONS_SQL",
    "SAMPLE_SIZES_SQL",
    "SEARCH_PATH_SQL",
    "TYPES_SQL",
    "VIEWS_SQL",
    "Catalog",
    "ClassMap",
    "Column",
    "Function",
    "Relation",
    "SampleReport",
    "SourceColumn",
    "classify_catalog",
    "fetch_catalog",
    "fetch_samples",
    "functions_sql",
    "sample_column",
    "sample_sql",
]


class SourceColumn(NamedTuple):
    """A column of a relation in the database: where data comes from."""

    schema: str
    table: str
    column: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"


# -- the SQL ---------------------------------------------------------------------------

# System schemas are left out, except the few catalogs that hold credentials, so that
# ``SELECT rolpassword FROM pg_authid`` is masked like any other secret, and the planner
# statistics, which hold samples of every column's values.
_SCHEMA_FILTER = """(n.nspname NOT IN ('pg_catalog', 'information_schema')
         AND n.nspname !~ '^pg_(toast|temp_)'
       OR n.nspname = 'pg_catalog'
         AND c.relname IN ('pg_authid', 'pg_shadow', 'pg_user_mapping', 'pg_user_mappings',
                           'pg_statistic', 'pg_statistic_ext_data', 'pg_stats', 'pg_stats_ext',
                           'pg_stats_ext_exprs'))"""

#: One row per column: relation oid, schema, name, relkind, attnum, column name, type oid
#: (a domain's base type, as RowDescription reports it), ``format_type`` spelling (a domain
#: keeps its own name), type modifier, column comment, the base type's ``typcategory``
#: followed by its element's for arrays (``S`` text, ``AS`` text[], ``C`` composite...).
RELATIONS_SQL = f"""
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text,
       a.attnum::int4, a.attname::text,
       (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)::int8,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.atttypmod::int4,
       pg_catalog.col_description(c.oid, a.attnum),
       bt.typcategory::text || COALESCE(et.typcategory::text, '')
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
JOIN pg_catalog.pg_type bt ON bt.oid = (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)
LEFT JOIN pg_catalog.pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND {_SCHEMA_FILTER}
ORDER BY 1, 5
"""

#: One row per view or materialized view: oid, definition (a SELECT, parse-able).
VIEWS_SQL = f"""
SELECT c.oid::int8, pg_catalog.pg_get_viewdef(c.oid, false)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('v', 'm')
  AND {_SCHEMA_FILTER}
"""

_FUNCTIONS_SELECT = """
SELECT p.oid::int8, n.nspname::text, p.proname::text, l.lanname::text,
       CASE WHEN l.lanname = 'sql' THEN {body} END,
       p.proretset, p.pronargs::int4,
       COALESCE(p.proargnames, '{{}}'::text[]),
       COALESCE(p.proargmodes::text[], '{{}}'::text[]),
       t.typrelid::int8,
       p.prokind::text,
       p.provolatile::text,
       COALESCE(p.proconfig, '{{}}'::text[])
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
JOIN pg_catalog.pg_language l ON l.oid = p.prolang
JOIN pg_catalog.pg_type t ON t.oid = p.prorettype
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
"""
#: One row per function or procedure outside the system schemas: oid, schema, name,
#: language, SQL body (LANGUAGE sql only; ``BEGIN ATOMIC``/``RETURN`` bodies through
#: ``pg_get_function_sqlbody``), returns a set, argument count, argument names, argument
#: modes, the relation oid of a composite return type (0 otherwise), kind (f/p/a/w),
#: volatility (i/s/v), its own settings (``SET search_path = ...`` clauses).
FUNCTIONS_SQL = _FUNCTIONS_SELECT.format(
    body="CASE WHEN p.prosqlbody IS NOT NULL THEN pg_catalog.pg_get_function_sqlbody(p.oid) ELSE p.prosrc END"
)
#: The same for servers older than PostgreSQL 14 (no SQL-standard bodies).
FUNCTIONS_SQL_PRE14 = _FUNCTIONS_SELECT.format(body="p.prosrc")

#: The names of the built-in functions: any other name a statement calls is user-defined,
#: or unknown to this catalog (created since it was read).
BUILTIN_FUNCTIONS_SQL = """
SELECT DISTINCT p.proname::text FROM pg_catalog.pg_proc p
WHERE p.pronamespace = 'pg_catalog'::pg_catalog.regnamespace
"""

_USER_FUNCTION = "p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace"

#: Code that runs when a relation is written: one row per (relation, kind, user function)
#: for its user triggers (kind ``d`` when deferrable: they fire at COMMIT), its columns'
#: defaults and checks, its columns' domain constraints and defaults, the functions of its
#: expression indexes (kind ``i``: they run on writes and on ANALYZE, REINDEX, CLUSTER) and
#: function 0 for a rule; a partitioned or inheritance parent gets its descendants' rows
#: too (a write to it may land in them).
CODE_SQL = f"""
WITH RECURSIVE tree(root, rel) AS (
  SELECT c.oid, c.oid FROM pg_catalog.pg_class c WHERE c.relkind IN ('r', 'p', 'f', 'v')
  UNION
  SELECT t.root, i.inhrelid FROM tree t JOIN pg_catalog.pg_inherits i ON i.inhparent = t.rel
), code(rel, fn, kind) AS (
  SELECT tg.tgrelid, tg.tgfoid, CASE WHEN tg.tgdeferrable THEN 'd' ELSE 'c' END
  FROM pg_catalog.pg_trigger tg WHERE NOT tg.tgisinternal
  UNION ALL
  SELECT r.ev_class, 0::oid, 'c' FROM pg_catalog.pg_rewrite r WHERE r.rulename <> '_RETURN'
  UNION ALL
  SELECT ix.indrelid, d.refobjid, 'i' FROM pg_catalog.pg_index ix
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = ix.indexrelid
   AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
  UNION ALL
  SELECT ad.adrelid, d.refobjid, 'c' FROM pg_catalog.pg_attrdef ad
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid = ad.oid
   AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
  UNION ALL
  SELECT co.conrelid, d.refobjid, 'c' FROM pg_catalog.pg_constraint co
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.objid = co.oid
   AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
  WHERE co.conrelid <> 0
  UNION ALL
  SELECT a.attrelid, d.refobjid, 'c' FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_constraint co ON co.contypid = a.atttypid
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.objid = co.oid
   AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
  WHERE a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT a.attrelid, d.refobjid, 'c' FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.objid = a.atttypid
   AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
  WHERE a.attnum > 0 AND NOT a.attisdropped
)
SELECT DISTINCT t.root::int8, code.kind::text, code.fn::int8
FROM tree t JOIN code ON code.rel = t.rel
LEFT JOIN pg_catalog.pg_proc p ON p.oid = code.fn
WHERE code.fn = 0 OR {_USER_FUNCTION}
"""

#: User functions that run where a statement names a type or an operator: one row per
#: (schema, name, function oid) of domain constraints and defaults, casts to the type, and
#: user-defined operators.
TYPES_SQL = f"""
SELECT n.nspname::text, t.typname::text, d.refobjid::int8
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
JOIN pg_catalog.pg_constraint co ON co.contypid = t.oid
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.objid = co.oid
 AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid WHERE {_USER_FUNCTION}
UNION
SELECT n.nspname::text, t.typname::text, d.refobjid::int8
FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.objid = t.oid
 AND d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
JOIN pg_catalog.pg_proc p ON p.oid = d.refobjid WHERE {_USER_FUNCTION}
UNION
SELECT n.nspname::text, t.typname::text, ca.castfunc::int8
FROM pg_catalog.pg_cast ca JOIN pg_catalog.pg_type t ON t.oid = ca.casttarget
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
JOIN pg_catalog.pg_proc p ON p.oid = ca.castfunc WHERE {_USER_FUNCTION}
"""
OPERATORS_SQL = f"""
SELECT n.nspname::text, o.oprname::text, o.oprcode::oid::int8
FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode WHERE {_USER_FUNCTION}
"""

#: The search path of the connection that read the catalog (for view definitions).
SEARCH_PATH_SQL = "SELECT pg_catalog.current_schemas(false)::text[]"

#: The fields of the composite types that columns use (and of their composite fields, and
#: of arrays of them): one row per (type oid, field number, field name, field type
#: ``format_type``, the field's type oid); an array type's rows are its element's.
COMPOSITES_SQL = """
WITH RECURSIVE used(typ) AS (
  SELECT DISTINCT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END
  FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
  WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  UNION
  SELECT f.atttypid FROM used u
  JOIN pg_catalog.pg_type t ON t.oid = u.typ
  JOIN pg_catalog.pg_type ct ON ct.oid = CASE WHEN t.typelem <> 0 AND t.typcategory = 'A' THEN t.typelem ELSE t.oid END
  JOIN pg_catalog.pg_attribute f ON f.attrelid = ct.typrelid AND f.attnum > 0 AND NOT f.attisdropped
  WHERE ct.typtype = 'c'
)
SELECT u.typ::int8, f.attnum::int4, f.attname::text,
       pg_catalog.format_type(f.atttypid, f.atttypmod), f.atttypid::int8
FROM used u
JOIN pg_catalog.pg_type t ON t.oid = u.typ
JOIN pg_catalog.pg_type ct ON ct.oid = CASE WHEN t.typelem <> 0 AND t.typcategory = 'A' THEN t.typelem ELSE t.oid END
JOIN pg_catalog.pg_attribute f ON f.attrelid = ct.typrelid AND f.attnum > 0 AND NOT f.attisdropped
WHERE ct.typtype = 'c'
ORDER BY 1, 2
"""

#: Inheritance and partitioning: one row per (child relation, parent relation).  A query
#: of the parent returns the children's rows, so their classes count for it.
INHERITS_SQL = """
SELECT i.inhrelid::int8, i.inhparent::int8 FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid WHERE c.relkind IN ('r', 'p', 'f')
"""

#: What value sampling reads: one row per table, partition or materialized view with data
#: outside the system schemas: oid, estimated rows (-1 or 0 when never analysed).
SAMPLE_SIZES_SQL = """
SELECT c.oid::int8, c.reltuples::float8
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND c.relispopulated
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_)'
"""


def functions_sql(server_version_num: int) -> str:
    return FUNCTIONS_SQL if server_version_num >= 140000 else FUNCTIONS_SQL_PRE14


# -- the model --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    attnum: int
    name: str
    type_oid: int
    type_name: str
    typmod: int
    comment: str | None
    #: The base type's ``typcategory``, then its element's for arrays ("" when not read).
    category: str = ""


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # r table, p partitioned table, v view, m materialized view, f foreign table
    columns: tuple[Column, ...]
    definition: str | None = None  # views and materialized views

    @property
    def is_view(self) -> bool:
        return self.kind in ("v", "m")

    def source(self, column: str) -> SourceColumn:
        return SourceColumn(self.schema, self.name, column)


@dataclass(frozen=True, slots=True)
class Function:
    oid: int
    schema: str
    name: str
    language: str
    body: str | None  # LANGUAGE sql only
    returns_set: bool
    nargs: int
    arg_names: tuple[str, ...]
    arg_modes: tuple[str, ...]  # empty when every argument is IN
    result_relid: int  # the relation of a composite return type, 0 otherwise
    kind: str = "f"
    volatility: str = "v"  # i immutable, s stable, v volatile (the worst when unknown)
    search_path: tuple[str, ...] | None = None  # its own ``SET search_path`` clause

    @property
    def out_names(self) -> tuple[str, ...]:
        """Names of the result columns declared by OUT/INOUT/TABLE arguments."""
        if not self.arg_modes:
            return ()
        names = self.arg_names or ("",) * len(self.arg_modes)
        return tuple(n for n, m in zip(names, self.arg_modes, strict=False) if m in ("o", "b", "t"))

    @property
    def in_names(self) -> tuple[str, ...]:
        if not self.arg_modes:
            return self.arg_names[: self.nargs]
        return tuple(
            n for n, m in zip(self.arg_names, self.arg_modes, strict=False) if m in ("i", "b", "v")
        )


def parse_search_path(value: str) -> tuple[str, ...]:
    """A search_path value as PostgreSQL reads it: a comma-separated list of names, quoted
    ones kept as written, others folded to lower case."""
    out = []
    for item in value.split(","):
        item = item.strip()
        if len(item) >= 2 and item[0] == item[-1] == '"':
            out.append(item[1:-1].replace('""', '"'))
        elif item:
            out.append(item.lower())
    return tuple(out)


def _effective_path(search_path: Iterable[str]) -> tuple[str, ...]:
    path = tuple(search_path)
    return path if "pg_catalog" in path else ("pg_catalog", *path)


@dataclass(slots=True)
class Catalog:
    """Relations and functions of one database, looked up the way PostgreSQL does."""

    relations: Mapping[int, Relation]
    functions: Mapping[int, Function]
    search_path: tuple[str, ...] = ("public",)
    #: Names of pg_catalog's functions (empty: not read, nothing is known to be built in).
    builtin_functions: frozenset[str] = frozenset()
    #: Relation oid -> user functions that run when it is written (0: a rule); see CODE_SQL.
    code: Mapping[int, frozenset[int]] = field(default_factory=dict)
    #: Relation oid -> user functions of its expression indexes.
    index_code: Mapping[int, frozenset[int]] = field(default_factory=dict)
    #: Relations with deferrable user triggers (they fire at COMMIT).
    deferred: frozenset[int] = frozenset()
    #: (schema, type name) -> user functions that run where a statement names the type.
    type_code: Mapping[tuple[str, str], frozenset[int]] = field(default_factory=dict)
    #: (schema, operator) -> the user function behind it.
    operator_code: Mapping[tuple[str, str], frozenset[int]] = field(default_factory=dict)
    #: Composite type oid (or an array of it) -> its fields as (dotted path, type name),
    #: nested composites flattened; see COMPOSITES_SQL.
    composites: Mapping[int, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    #: Relation oid -> the relations it inherits from (partitions: their parent).
    parents: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    _by_name: dict[tuple[str, str], Relation] = field(default_factory=dict, repr=False)
    _funcs_by_name: dict[tuple[str, str], list[Function]] = field(default_factory=dict, repr=False)
    _columns: dict[tuple[int, int], Column] = field(default_factory=dict, repr=False)
    #: Memo for analyses that depend only on the catalog (view expansions, function bodies).
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for rel in self.relations.values():
            self._by_name[(rel.schema, rel.name)] = rel
            for col in rel.columns:
                self._columns[(rel.oid, col.attnum)] = col
        for fn in self.functions.values():
            self._funcs_by_name.setdefault((fn.schema, fn.name), []).append(fn)

    @classmethod
    def from_rows(
        cls,
        relation_rows: Iterable[Sequence[Any]],
        view_rows: Iterable[Sequence[Any]] = (),
        function_rows: Iterable[Sequence[Any]] = (),
        search_path: Iterable[str] = ("public",),
        builtin_functions: Iterable[str] = (),
    ) -> Catalog:
        """Build from the rows of :data:`RELATIONS_SQL`, :data:`VIEWS_SQL` and
        :data:`FUNCTIONS_SQL`, in the order those queries give their columns."""
        defs = {int(r[0]): r[1] for r in view_rows}
        heads: dict[int, tuple[str, str, str]] = {}
        cols: dict[int, list[Column]] = {}
        for row in relation_rows:
            oid, schema, name, kind, attnum, attname, type_oid, type_name, typmod, comment = row[:10]
            category = str(row[10] or "") if len(row) > 10 else ""
            heads[int(oid)] = (schema, name, kind)
            cols.setdefault(int(oid), []).append(
                Column(int(attnum), attname, int(type_oid), type_name or "", int(typmod), comment, category)
            )
        relations = {
            oid: Relation(oid, s, n, k, tuple(cols[oid]), defs.get(oid))
            for oid, (s, n, k) in heads.items()
        }
        functions = {}
        for row in function_rows:
            oid, schema, name, lang, body, retset, nargs, argnames, argmodes, relid, kind = row[:11]
            volatility = row[11] if len(row) > 11 and row[11] else "v"
            path = None
            for setting in (row[12] if len(row) > 12 and row[12] else ()):
                key, _, value = str(setting).partition("=")
                if key.lower() == "search_path":
                    path = parse_search_path(value)
            functions[int(oid)] = Function(
                int(oid), schema, name, lang, body, bool(retset), int(nargs),
                tuple(a or "" for a in argnames or ()), tuple(argmodes or ()), int(relid or 0), kind or "f",
                volatility, path,
            )  # fmt: skip
        return cls(relations, functions, tuple(search_path), frozenset(builtin_functions))

    def with_code(
        self,
        code_rows: Iterable[Sequence[Any]],
        type_rows: Iterable[Sequence[Any]] = (),
        operator_rows: Iterable[Sequence[Any]] = (),
    ) -> Catalog:
        """This catalog with the rows of :data:`CODE_SQL`, :data:`TYPES_SQL` and
        :data:`OPERATORS_SQL`."""

        def grouped(rows: Iterable[Sequence[Any]], key: Any) -> dict[Any, frozenset[int]]:
            out: dict[Any, set[int]] = {}
            for r in rows:
                out.setdefault(key(r), set()).add(int(r[-1]))
            return {k: frozenset(v) for k, v in out.items()}

        code_rows = list(code_rows)
        return Catalog(
            self.relations,
            self.functions,
            self.search_path,
            self.builtin_functions,
            code=grouped((r for r in code_rows if r[1] != "i"), lambda r: int(r[0])),
            index_code=grouped((r for r in code_rows if r[1] == "i"), lambda r: int(r[0])),
            deferred=frozenset(int(r[0]) for r in code_rows if r[1] == "d"),
            type_code=grouped(type_rows, lambda r: (str(r[0]), str(r[1]))),
            operator_code=grouped(operator_rows, lambda r: (str(r[0]), str(r[1]))),
            composites=self.composites,
            parents=self.parents,
        )

    def with_types(
        self,
        composite_rows: Iterable[Sequence[Any]] = (),
        inherits_rows: Iterable[Sequence[Any]] = (),
    ) -> Catalog:
        """This catalog with the rows of :data:`COMPOSITES_SQL` and :data:`INHERITS_SQL`."""
        direct: dict[int, list[tuple[str, str, int]]] = {}
        for typ, _attnum, name, type_name, field_type in composite_rows:
            direct.setdefault(int(typ), []).append((str(name), str(type_name or ""), int(field_type)))

        def flatten(typ: int, prefix: str, depth: int) -> list[tuple[str, str]]:
            out: list[tuple[str, str]] = []
            for name, type_name, field_type in direct.get(typ, ()):
                path = f"{prefix}{name}"
                out.append((path, type_name))
                if field_type in direct and depth < 8:
                    out.extend(flatten(field_type, f"{path}.", depth + 1))
            return out

        parents: dict[int, list[int]] = {}
        for child, parent in inherits_rows:
            parents.setdefault(int(child), []).append(int(parent))
        cat = Catalog(
            self.relations,
            self.functions,
            self.search_path,
            self.builtin_functions,
            code=self.code,
            index_code=self.index_code,
            deferred=self.deferred,
            type_code=self.type_code,
            operator_code=self.operator_code,
            composites={t: tuple(flatten(t, "", 0)) for t in direct},
            parents={k: tuple(v) for k, v in parents.items()},
        )
        return cat

    def relation(
        self, schema: str | None, name: str, search_path: Iterable[str] | None = None
    ) -> Relation | None:
        """The relation ``schema.name``, or the first ``name`` on the search path
        (``pg_catalog`` first unless the path places it)."""
        if schema is not None:
            return self._by_name.get((schema, name))
        for s in _effective_path(self.search_path if search_path is None else search_path):
            rel = self._by_name.get((s, name))
            if rel is not None:
                return rel
        return None

    def functions_named(
        self, schema: str | None, name: str, search_path: Iterable[str] | None = None
    ) -> list[Function]:
        """Every overload of ``name`` in the first schema on the path that has one.
        An empty list means a built-in (or unknown) function."""
        if schema is not None:
            return self._funcs_by_name.get((schema, name), [])
        for s in _effective_path(self.search_path if search_path is None else search_path):
            found = self._funcs_by_name.get((s, name))
            if found:
                return found
        return []

    def column_at(self, table_oid: int, attnum: int) -> tuple[Relation, Column] | None:
        """The column RowDescription names by table oid and attribute number."""
        col = self._columns.get((table_oid, attnum))
        if col is None:
            return None
        return self.relations[table_oid], col

    def relation_by_oid(self, oid: int) -> Relation | None:
        return self.relations.get(oid)


async def fetch_catalog(conn: Any) -> Catalog:
    """Read the catalog through a psycopg ``AsyncConnection`` (any object with the same
    ``cursor()``/``info.server_version`` API)."""
    version = int(conn.info.server_version)
    async with conn.cursor() as cur:
        await cur.execute(RELATIONS_SQL)
        rel_rows = await cur.fetchall()
        await cur.execute(VIEWS_SQL)
        view_rows = await cur.fetchall()
        await cur.execute(functions_sql(version))
        fn_rows = await cur.fetchall()
        await cur.execute(BUILTIN_FUNCTIONS_SQL)
        builtins = [r[0] for r in await cur.fetchall()]
        await cur.execute(CODE_SQL)
        code_rows = await cur.fetchall()
        await cur.execute(TYPES_SQL)
        type_rows = await cur.fetchall()
        await cur.execute(OPERATORS_SQL)
        operator_rows = await cur.fetchall()
        await cur.execute(COMPOSITES_SQL)
        composite_rows = await cur.fetchall()
        await cur.execute(INHERITS_SQL)
        inherits_rows = await cur.fetchall()
        await cur.execute(SEARCH_PATH_SQL)
        row = await cur.fetchone()
    path = tuple(row[0]) if row and row[0] else ("public",)
    catalog = Catalog.from_rows(rel_rows, view_rows, fn_rows, path, builtins)
    return catalog.with_code(code_rows, type_rows, operator_rows).with_types(
        composite_rows, inherits_rows
    )


# -- value sampling ---------------------------------------------------------------------------

_OID_BYTEA = 17
_OID_INT8 = 20
_OID_JSON = 114
_OID_XML = 142
_OID_NUMERIC = 1700
_OID_JSONB = 3802
_DOCUMENT_BYTES = 65_536  # larger documents are not sampled (pg_column_size, compressed)


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sample_column(col: Column, catalog: Catalog) -> tuple[SampledColumn, str] | None:
    """How value sampling reads a column: (what it is, the SQL expression), or None for
    columns whose type cannot hold what the detectors find (dates, booleans, int4...)."""
    ref = _ident(col.name)
    cat = col.category
    fields = catalog.composites.get(col.type_oid, ())
    if col.type_oid == _OID_BYTEA:
        return SampledColumn(col.name, "bytea"), f"substring({ref} from 1 for {MAX_VALUE_CHARS * 4})"
    if col.type_oid in (_OID_JSON, _OID_JSONB):
        return SampledColumn(col.name, "json"), (
            f"CASE WHEN pg_catalog.pg_column_size({ref}) <= {_DOCUMENT_BYTES} THEN {ref}::text END"
        )
    if cat[:1] == "C" or (cat[:1] == "A" and cat[1:] in ("S", "C", "U", "N")):
        return SampledColumn(col.name, "json", fields), (
            f"CASE WHEN pg_catalog.pg_column_size({ref}) <= {_DOCUMENT_BYTES}"
            f" THEN pg_catalog.to_jsonb({ref})::text END"
        )
    if cat == "S" or col.type_oid == _OID_XML:
        return SampledColumn(col.name, "text"), f"pg_catalog.left({ref}::text, {MAX_VALUE_CHARS})"
    if col.type_oid in (_OID_INT8, _OID_NUMERIC):
        return SampledColumn(col.name, "number"), f"{ref}::text"
    return None


def sample_sql(
    rel: Relation, catalog: Catalog, rows: int, reltuples: float
) -> tuple[str, tuple[SampledColumn, ...]] | None:
    """One bounded query that samples ``rel``'s columns worth judging by value: the first
    ``rows`` rows of a small table, a ``TABLESAMPLE SYSTEM`` of a big one (by its
    estimated row count), then the columns it reads; None when no column is worth it.
    ``ONLY``: inheritance children and partitions are sampled on their own."""
    picked = [p for c in rel.columns if (p := sample_column(c, catalog)) is not None]
    if not picked:
        return None
    exprs = ", ".join(e for _, e in picked)
    sql = f"SELECT {exprs} FROM ONLY {_ident(rel.schema)}.{_ident(rel.name)}"
    if reltuples > 10 * rows:
        pct = min(100.0, max(0.0001, 100.0 * 4 * rows / reltuples))
        sql += f" TABLESAMPLE SYSTEM ({pct:.4f})"
    sql += f" LIMIT {int(rows)}"
    return sql, tuple(c for c, _ in picked)


@dataclass(slots=True)
class SampleReport:
    """What a sampling run found and what it could not read."""

    #: Relation oid -> column name -> what its values say.
    findings: dict[int, dict[str, ValueFinding]] = field(default_factory=dict)
    #: Relations read (with or without findings).
    sampled: set[int] = field(default_factory=set)
    #: Relation oid -> why it was not read (an error, the statement timeout, the budget).
    skipped: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0


async def fetch_samples(
    conn: Any,
    catalog: Catalog,
    *,
    rows: int = 200,
    timeout_ms: int = 2000,
    budget_seconds: float = 20.0,
    priority: Mapping[int, float] | None = None,
    classify: Any = None,
    report: SampleReport | None = None,
) -> SampleReport:
    """Sample every table, partition and materialized view through a psycopg
    ``AsyncConnection``: one bounded query per relation, each under ``statement_timeout``
    and in a read-only transaction that is rolled back; relations that fail or time out are
    skipped (and said so in the report), and nothing is started once ``budget_seconds``
    have passed.  ``priority`` (oid -> when it was last sampled) puts the relations
    sampled longest ago first; ``classify`` runs the pure judgement (default: inline; the
    proxy passes one that runs it in a thread).  ``report`` is filled as relations are
    read, so that a caller that gives up early keeps what was found."""
    report = report if report is not None else SampleReport()
    start = time.monotonic()
    async with conn.cursor() as cur:
        await cur.execute(SAMPLE_SIZES_SQL)
        sizes = {int(r[0]): float(r[1] or 0) for r in await cur.fetchall()}
    order = sorted(
        (oid for oid in sizes if oid in catalog.relations),
        key=lambda oid: ((priority or {}).get(oid, 0.0), oid),
    )
    timeout_ms = max(1, int(timeout_ms))
    for oid in order:
        rel = catalog.relations[oid]
        built = sample_sql(rel, catalog, rows, sizes[oid])
        if built is None:
            report.sampled.add(oid)
            continue
        if time.monotonic() - start >= budget_seconds:
            report.skipped[oid] = "sampling budget spent"
            continue
        sql, columns = built
        try:
            result = await _run_sample(conn, sql, timeout_ms)
            if not result and sizes[oid] > 10 * rows:  # an unlucky TABLESAMPLE: read the first rows
                result = await _run_sample(conn, sql.partition(" TABLESAMPLE ")[0] + f" LIMIT {int(rows)}", timeout_ms)
        except Exception as err:  # the driver's errors: skip the table, never the catalog
            if getattr(conn, "closed", False):
                raise
            text = str(err).strip()
            report.skipped[oid] = text.splitlines()[0] if text else type(err).__name__
            continue
        table = f"{rel.schema}.{rel.name}"
        if classify is None:
            found = classify_table_sample(table, columns, result)
        else:
            found = await classify(table, columns, result)
        report.sampled.add(oid)
        if found:
            report.findings[oid] = found
    report.seconds = time.monotonic() - start
    return report


async def _run_sample(conn: Any, sql: str, timeout_ms: int) -> list[Any]:
    # A transaction of its own (a savepoint when the caller has one open), read only and
    # always rolled back; the timeouts are LOCAL to it.
    async with conn.transaction(force_rollback=True), conn.cursor() as cur:
        await cur.execute("SET TRANSACTION READ ONLY")
        await cur.execute(f"SET LOCAL statement_timeout = {timeout_ms}")
        await cur.execute(f"SET LOCAL lock_timeout = {timeout_ms}")
        await cur.execute(sql)
        return list(await cur.fetchall())


# -- classification -------------------------------------------------------------------------

# Credentials in the system catalogs whose column names do not say so.
_SAMPLES = Classification(
    DataClass.SECRET, "policy", "built in: planner statistics hold samples of any column's values"
)
_BUILTIN: dict[SourceColumn, Classification] = {
    SourceColumn("pg_catalog", "pg_user_mapping", "umoptions"): Classification(
        DataClass.SECRET, "policy", "built in: user mapping options hold passwords"
    ),
    SourceColumn("pg_catalog", "pg_user_mappings", "umoptions"): Classification(
        DataClass.SECRET, "policy", "built in: user mapping options hold passwords"
    ),
    **{
        SourceColumn("pg_catalog", rel, col): _SAMPLES
        for rel, cols in (
            ("pg_stats", ("most_common_vals", "histogram_bounds", "most_common_elems")),
            ("pg_stats_ext", ("most_common_vals",)),
            ("pg_stats_ext_exprs", ("most_common_vals", "histogram_bounds", "most_common_elems")),
            ("pg_statistic", tuple(f"stavalues{i}" for i in range(1, 6))),
            ("pg_statistic_ext_data", ("stxdmcv", "stxdexpr")),
        )
        for col in cols
    },
}


@dataclass(frozen=True, slots=True)
class ClassMap:
    """The data class of every sensitive column, by name and by (table oid, attnum), and
    the columns with no class whose values must be value-scanned (free text that was
    found to hold sensitive data: only the spans the detectors find are masked)."""

    columns: Mapping[SourceColumn, Classification]
    attrs: Mapping[tuple[int, int], Classification] = field(default_factory=dict)
    scan: frozenset[SourceColumn] = frozenset()
    #: Why each ``scan`` column is scanned (counts and classes, never values).
    scan_evidence: Mapping[SourceColumn, str] = field(default_factory=dict)

    @property
    def tables(self) -> frozenset[tuple[str, str]]:
        """Relations with a sensitive or value-scanned column."""
        return frozenset((s.schema, s.table) for s in (*self.columns, *self.scan))

    def get(self, column: SourceColumn) -> Classification | None:
        return self.columns.get(column)

    def __len__(self) -> int:
        return len(self.columns)


def _override_value(key: str, value: str) -> DataClass | None:
    if value.strip().lower() == "none":
        return None
    cls = parse_class(value)
    if cls is None:
        known = ", ".join(c.value for c in DataClass)
        raise ValueError(
            f"masking override {key!r}: unknown data class {value!r} (known: none, {known})"
        )
    return cls


def compile_overrides(overrides: Mapping[str, str] | None) -> list[tuple[str, DataClass | None]]:
    """Validate ``{"schema.table.column": "none" | "<class>"}``; keys may leave out the
    schema (any schema) and use ``*``/``?`` globs.  Raises ValueError."""
    out = []
    for key, value in (overrides or {}).items():
        if key.count(".") not in (1, 2):
            raise ValueError(
                f"masking override {key!r}: expected schema.table.column or table.column"
            )
        out.append((key, _override_value(key, value)))
    return out


def _override_for(
    src: SourceColumn, compiled: list[tuple[str, DataClass | None]]
) -> tuple[bool, DataClass | None, str]:
    full = f"{src.schema}.{src.table}.{src.column}"
    short = f"{src.table}.{src.column}"
    for key, cls in compiled:  # exact names first
        if key in (full, short):
            return True, cls, key
    for key, cls in compiled:
        target = full if key.count(".") == 2 else short
        if fnmatch.fnmatchcase(target, key):
            return True, cls, key
    return False, None, ""


def _ancestors(catalog: Catalog, oid: int) -> list[int]:
    out: list[int] = []
    stack = list(catalog.parents.get(oid, ()))
    while stack:
        p = stack.pop()
        if p not in out and p != oid:
            out.append(p)
            stack.extend(catalog.parents.get(p, ()))
    return out


def _with_descendants(
    catalog: Catalog, values: Mapping[int, Mapping[str, ValueFinding]]
) -> dict[int, dict[str, list[ValueFinding]]]:
    """Each relation's own findings, plus those of its partitions and inheritance
    children (a query of the parent returns their rows)."""
    out: dict[int, dict[str, list[ValueFinding]]] = {}
    for oid, found in values.items():
        rel = catalog.relations.get(oid)
        if rel is None:
            continue
        for name, f in found.items():
            out.setdefault(oid, {}).setdefault(name, []).append(f)
        for parent in _ancestors(catalog, oid):
            for name, f in found.items():
                out.setdefault(parent, {}).setdefault(name, []).append(
                    ValueFinding(f.data_class, f"in {rel.schema}.{rel.name}: {f.evidence}", f.scan)
                )
    return out


def _combine(found: list[Classification]) -> Classification | None:
    """The most sensitive class of several pieces of evidence, naming the others."""
    if not found:
        return None
    best_class = most_sensitive([c.data_class for c in found])
    best = next(c for c in found if c.data_class is best_class)
    others = [c.evidence for c in found if c is not best]
    if not others:
        return best
    return Classification(best.data_class, best.source, "; also ".join([best.evidence, *others]))


def classify_catalog(
    catalog: Catalog,
    overrides: Mapping[str, str] | None = None,
    values: Mapping[int, Mapping[str, ValueFinding]] | None = None,
) -> ClassMap:
    """Classify every column of every relation.

    Evidence only adds: a column's class is the most sensitive of what its name, type and
    comment say (:func:`classify_column`), what the fields of its composite type say, and
    what its sampled ``values`` say (relation oid -> column -> :class:`ValueFinding`, from
    :func:`fetch_samples`; a parent also gets its partitions' and children's).  A column
    with no class whose values hold sensitive data inside longer text is in
    :attr:`ClassMap.scan`.  Only ``overrides`` (policy) remove a class, or a scan."""
    compiled = compile_overrides(overrides)
    columns: dict[SourceColumn, Classification] = {}
    attrs: dict[tuple[int, int], Classification] = {}
    scan: dict[SourceColumn, str] = {}
    by_values = _with_descendants(catalog, values or {})
    for rel in catalog.relations.values():
        rel_values = by_values.get(rel.oid, {})
        table = f"{rel.schema}.{rel.name}"
        for col in rel.columns:
            src = rel.source(col.name)
            evidence: list[Classification] = []
            builtin = _BUILTIN.get(src)
            schema = builtin or classify_column(table, col.name, col.type_name, col.comment)
            if schema is not None:
                evidence.append(schema)
            fields = catalog.composites.get(col.type_oid, ())
            if fields:
                by_field = classify_fields(table, fields)
                if by_field:
                    cls = most_sensitive([c for c, _ in by_field])
                    assert cls is not None
                    evidence.append(
                        Classification(cls, "schema-name", "; ".join(e for _, e in by_field))
                    )
            scanned: list[str] = []
            for f in rel_values.get(col.name, ()):
                c = f.classification
                if c is not None:
                    evidence.append(c)
                elif f.scan:
                    scanned.append(f.evidence)
            found = _combine(evidence)
            if comment_says_none(col.comment) and (found is not None or scanned):
                note = IGNORED_NONE_NOTE
                if found is not None and note not in found.evidence:
                    found = Classification(found.data_class, found.source, f"{found.evidence}; {note}")
                scanned = [*scanned, note] if scanned else scanned
            if compiled:
                hit, override, key = _override_for(src, compiled)
                if hit:
                    scanned = []
                    found = (
                        Classification(override, "policy", f"override {key}")
                        if override is not None
                        else None
                    )
            if found is not None:
                columns[src] = found
                attrs[(rel.oid, col.attnum)] = found
            elif scanned:
                scan[src] = "; ".join(scanned)
    return ClassMap(columns, attrs, frozenset(scan), scan)

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dbsentry.masking.classes import Classification, DataClass, parse_class
from dbsentry.masking.detect import classify_column

__all__ = [
    "BUILTIN_FUNCTIONS_SQL",
    "CODE_SQL",
    "FUNCTIONS_SQL",
    "FUNCTIONS_SQL_PRE14",
    "OPERATORS_SQL",
    "RELATIONS_SQL",
    "SEARCH_PATH_SQL",
    "TYPES_SQL",
    "VIEWS_SQL",
    "Catalog",
    "ClassMap",
    "Column",
    "Function",
    "Relation",
    "SourceColumn",
    "classify_catalog",
    "fetch_catalog",
    "functions_sql",
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
#: keeps its own name), type modifier, column comment.
RELATIONS_SQL = f"""
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text,
       a.attnum::int4, a.attname::text,
       (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)::int8,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.atttypmod::int4,
       pg_catalog.col_description(c.oid, a.attnum)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
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
       p.provolatile::text
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
#: volatility (i/s/v).
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
            heads[int(oid)] = (schema, name, kind)
            cols.setdefault(int(oid), []).append(
                Column(int(attnum), attname, int(type_oid), type_name or "", int(typmod), comment)
            )
        relations = {
            oid: Relation(oid, s, n, k, tuple(cols[oid]), defs.get(oid))
            for oid, (s, n, k) in heads.items()
        }
        functions = {}
        for row in function_rows:
            oid, schema, name, lang, body, retset, nargs, argnames, argmodes, relid, kind = row[:11]
            volatility = row[11] if len(row) > 11 and row[11] else "v"
            functions[int(oid)] = Function(
                int(oid), schema, name, lang, body, bool(retset), int(nargs),
                tuple(a or "" for a in argnames or ()), tuple(argmodes or ()), int(relid or 0), kind or "f",
                volatility,
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
        )

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
        await cur.execute(SEARCH_PATH_SQL)
        row = await cur.fetchone()
    path = tuple(row[0]) if row and row[0] else ("public",)
    catalog = Catalog.from_rows(rel_rows, view_rows, fn_rows, path, builtins)
    return catalog.with_code(code_rows, type_rows, operator_rows)


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
    """The data class of every sensitive column, by name and by (table oid, attnum)."""

    columns: Mapping[SourceColumn, Classification]
    attrs: Mapping[tuple[int, int], Classification] = field(default_factory=dict)

    @property
    def tables(self) -> frozenset[tuple[str, str]]:
        return frozenset((s.schema, s.table) for s in self.columns)

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


def classify_catalog(catalog: Catalog, overrides: Mapping[str, str] | None = None) -> ClassMap:
    """Classify every column of every relation; ``overrides`` (policy) win."""
    compiled = compile_overrides(overrides)
    columns: dict[SourceColumn, Classification] = {}
    attrs: dict[tuple[int, int], Classification] = {}
    for rel in catalog.relations.values():
        for col in rel.columns:
            src = rel.source(col.name)
            found: Classification | None = _BUILTIN.get(src)
            if found is None:
                found = classify_column(
                    f"{rel.schema}.{rel.name}", col.name, col.type_name, col.comment
                )
            if compiled:
                hit, cls, key = _override_for(src, compiled)
                if hit:
                    found = (
                        Classification(cls, "policy", f"override {key}")
                        if cls is not None
                        else None
                    )
            if found is not None:
                columns[src] = found
                attrs[(rel.oid, col.attnum)] = found
    return ClassMap(columns, attrs)

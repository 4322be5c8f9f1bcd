"""PostgreSQL's catalog reader: the SQL that reads tables, columns, views, functions, types
and operators from ``pg_catalog`` into a :class:`dbsentry.masking.catalog.Catalog`, and the
bounded, read-only, rolled-back queries that sample column values for classification.

``fetch_catalog`` and ``fetch_samples`` drive any object with psycopg's
``AsyncConnection`` API (the shell's side connection, the CLI, tests); this module itself
opens nothing.

View definitions come from ``pg_get_viewdef``, which qualifies names only when they are not
visible on the search path of the connection that reads them; that search path is kept in
:attr:`Catalog.search_path` and views are analysed with it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from dbsentry.masking.catalog import Catalog, Column, Relation, SampleReport
from dbsentry.masking.sampling import MAX_VALUE_CHARS, SampledColumn, classify_table_sample

__all__ = [
    "BUILTIN_FUNCTIONS_SQL",
    "CODE_SQL",
    "COMPOSITES_SQL",
    "CONCURRENT_DDL_RETRIES",
    "FUNCTIONS_SQL",
    "FUNCTIONS_SQL_PRE14",
    "INHERITS_SQL",
    "OPERATORS_SQL",
    "RELATIONS_SQL",
    "SAMPLE_SIZES_SQL",
    "SEARCH_PATH_SQL",
    "TYPES_SQL",
    "VIEWS_SQL",
    "dropped_meanwhile",
    "fetch_catalog",
    "fetch_samples",
    "functions_sql",
    "sample_column",
    "sample_sql",
]


# -- the SQL ---------------------------------------------------------------------------

# System schemas are left out, except the few catalogs that hold credentials, so that
# ``SELECT rolpassword FROM pg_authid`` is masked like any other secret, and the planner
# statistics, which hold samples of every column's values.
_SCHEMA_FILTER = """(n.nspname NOT IN ('pg_catalog', 'information_schema')
         AND n.nspname !~ '^pg_(toast|temp_)'
       OR n.nspname = 'pg_catalog'
         AND c.relname IN ('pg_authid', 'pg_shadow', 'pg_user_mapping', 'pg_user_mappings',
                           'pg_statistic', 'pg_statistic_ext_data', 'pg_stats', 'pg_stats_ext',
                           'pg_stats_ext_exprs', 'pg_stat_activity'))"""

#: One row per column: relation oid, schema, name, relkind, attnum, column name, type oid
#: (a domain's base type, as RowDescription reports it), ``format_type`` spelling (a domain
#: keeps its own name), type modifier, column comment, the base type's ``typcategory``
#: followed by its element's for arrays (``S`` text, ``AS`` text[], ``C`` composite...),
#: and whether row-level security is on for the relation (its policies run when it is read).
RELATIONS_SQL = f"""
SELECT c.oid::int8, n.nspname::text, c.relname::text, c.relkind::text,
       a.attnum::int4, a.attname::text,
       (CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END)::int8,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.atttypmod::int4,
       pg_catalog.col_description(c.oid, a.attnum),
       bt.typcategory::text || COALESCE(et.typcategory::text, ''),
       c.relrowsecurity
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


# Reading the catalog while another session drops a table can fail on the vanished object
# ("could not open relation with OID", "cache lookup failed"): the reader reads it again.
CONCURRENT_DDL_RETRIES = 3


def dropped_meanwhile(err: Exception) -> bool:
    """Whether ``err`` (a psycopg error) says an object vanished while the catalog was read."""
    text = str(err)
    return "could not open relation with OID" in text or "cache lookup failed" in text


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

"""MySQL's and MariaDB's catalog reader: the SQL that reads tables, views and columns (with
their types and comments) from ``information_schema`` into a
:class:`dbsentry.masking.catalog.Catalog`, and the bounded, read-only queries that sample
column values for classification (the same limits as PostgreSQL's:
:mod:`dbsentry.masking.sampling`, docs/masking.md "Classification from values").

Like ``dbsentry.engines.postgres.catalog``, this module opens nothing: ``fetch_catalog``
and ``fetch_samples`` drive a *query runner* the caller passes (``await run(sql)`` returns
the rows of one statement as sequences of values, text as ``str``, binary as ``bytes``;
it raises on a server error).  The shell's side connection, the CLI and tests provide it.

How MySQL differs from PostgreSQL here:

- There are no OIDs: relations are numbered in the order the catalog query returns them
  (stable within one read; :attr:`Relation.oid` means nothing across reads).
- A column's type is given to the neutral classification as the PostgreSQL spelling of
  the nearest type (:func:`neutral_type`): ``varchar(255)`` is ``text``, ``int`` is
  ``integer``, ``tinyint(1)`` (``BOOL``) is ``boolean``, ``datetime`` is ``timestamp``,
  ``blob`` is ``bytea``.  So ``email_verified tinyint(1)`` and ``email datetime`` are no
  emails, and a type the mapping does not know counts as text (it may hold anything).
- Column comments classify exactly as in PostgreSQL (``COMMENT 'pii:email'``); table
  comments are read and kept on the relation rows but, as in PostgreSQL, classify nothing.
- View definitions come from ``information_schema.VIEWS.VIEW_DEFINITION``, which MariaDB
  and MySQL write fully qualified; a view the reading user may not see the definition of
  (no ``SHOW VIEW``) has an empty definition, and lineage treats its columns as unknown.
- The server's own credential and statement tables are read too, and their sensitive
  columns are classified ``secret`` by a built-in comment (:data:`BUILTIN_SECRETS`):
  ``mysql.user`` passwords, ``mysql.global_priv`` (MariaDB's account JSON), the column
  statistics that hold sampled values (``mysql.column_stats``,
  ``information_schema.COLUMN_STATISTICS``) and other sessions' statement texts
  (``PROCESSLIST``, ``performance_schema`` statement events, the general and slow logs).
- Sampling: MySQL has no ``TABLESAMPLE``; every table is read with ``LIMIT N`` (the first
  rows the engine returns), in a ``READ ONLY`` transaction that is rolled back, with the
  statement time limit (MariaDB ``max_statement_time``, MySQL ``MAX_EXECUTION_TIME``) and
  ``lock_wait_timeout`` of ``sample_timeout_ms``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from dbsentry.masking.catalog import Catalog, Column, Relation, SampleReport
from dbsentry.masking.sampling import MAX_VALUE_CHARS, SampledColumn, classify_table_sample

__all__ = [
    "BUILTIN_SECRETS",
    "RELATIONS_SQL",
    "SAMPLE_SIZES_SQL",
    "SYSTEM_SCHEMAS",
    "VIEWS_SQL",
    "Runner",
    "catalog_from_rows",
    "fetch_catalog",
    "fetch_samples",
    "neutral_type",
    "sample_column",
    "sample_sql",
]

#: ``await run(sql)``: the rows of one statement.
Runner = Callable[[str], Awaitable[Sequence[Sequence[Any]]]]

SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")

_SECRET = "pii:secret (built in: {})"
#: (schema, table) -> column -> why it is a secret.  Names as information_schema spells
#: them (MySQL's ``information_schema`` tables are upper case).
BUILTIN_SECRETS: dict[tuple[str, str], dict[str, str]] = {
    ("mysql", "user"): {
        "authentication_string": "account password hashes",
        "Password": "account password hashes",
    },
    ("mysql", "global_priv"): {"Priv": "account settings with password hashes"},
    ("mysql", "column_stats"): {
        "min_value": "column statistics hold values of any column",
        "max_value": "column statistics hold values of any column",
        "histogram": "column statistics hold values of any column",
    },
    ("information_schema", "COLUMN_STATISTICS"): {
        "HISTOGRAM": "column statistics hold values of any column"
    },
    ("information_schema", "PROCESSLIST"): {"INFO": "the text of other sessions' statements"},
    ("performance_schema", "threads"): {
        "PROCESSLIST_INFO": "the text of other sessions' statements"
    },
    **{
        ("performance_schema", t): {"SQL_TEXT": "the text of other sessions' statements"}
        for t in (
            "events_statements_current",
            "events_statements_history",
            "events_statements_history_long",
            "prepared_statements_instances",
        )
    },
    ("mysql", "general_log"): {"argument": "the text of every session's statements"},
    ("mysql", "slow_log"): {"sql_text": "the text of every session's statements"},
}


#: In the system schemas, a column of text named like these holds statement texts (or
#: messages and traces quoting their values): ``PROCESSLIST.INFO_BINARY``,
#: ``INNODB_TRX.trx_query``, ``sys.session.current_statement``, ``MESSAGE_TEXT``,
#: ``OPTIMIZER_TRACE.TRACE``... : a secret wherever the server adds one.
STATEMENT_TEXT_NAMES = re.compile(
    r"(^|_)(info|info_binary|query|sql_text|message_text|trace|sample_text)$|^(current_|last_)statement$|^argument$"
)
_TEXT_TYPES = frozenset({"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "blob", "longblob", "mediumblob"})


def _statement_text(schema: str, col: str, data_type: str) -> bool:
    return (
        schema.lower() in SYSTEM_SCHEMAS
        and data_type.lower() in _TEXT_TYPES
        and STATEMENT_TEXT_NAMES.search(col.lower()) is not None
    )


def _quote_text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


_BUILTIN_PAIRS = ", ".join(
    f"({_quote_text(s)}, {_quote_text(t)})" for s, t in sorted(BUILTIN_SECRETS)
)
_SYSTEM_LIST = ", ".join(_quote_text(s) for s in SYSTEM_SCHEMAS)

#: One row per column: schema, table, table type (``BASE TABLE``, ``VIEW``, ``SYSTEM
#: VIEW``, ``SYSTEM VERSIONED``, ``SEQUENCE``...), position, column name, ``DATA_TYPE``,
#: ``COLUMN_TYPE``, column comment, table comment.  User schemas, plus the server's own
#: tables of :data:`BUILTIN_SECRETS` and those with a column of :data:`STATEMENT_TEXT_NAMES`.
RELATIONS_SQL = f"""
SELECT c.TABLE_SCHEMA, c.TABLE_NAME, t.TABLE_TYPE, c.ORDINAL_POSITION, c.COLUMN_NAME,
       c.DATA_TYPE, c.COLUMN_TYPE, c.COLUMN_COMMENT, t.TABLE_COMMENT
FROM information_schema.COLUMNS c
JOIN information_schema.TABLES t
  ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME
WHERE c.TABLE_SCHEMA NOT IN ({_SYSTEM_LIST})
   OR (c.TABLE_SCHEMA, c.TABLE_NAME) IN ({_BUILTIN_PAIRS})
   OR (c.TABLE_SCHEMA, c.TABLE_NAME) IN (
        SELECT s.TABLE_SCHEMA, s.TABLE_NAME FROM information_schema.COLUMNS s
        WHERE s.TABLE_SCHEMA IN ({_SYSTEM_LIST})
          AND LOWER(s.COLUMN_NAME) REGEXP '{STATEMENT_TEXT_NAMES.pattern}')
ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION
"""

#: One row per view outside the system schemas: schema, name, definition (a SELECT,
#: empty when the reading user may not see it).
VIEWS_SQL = f"""
SELECT TABLE_SCHEMA, TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS
WHERE TABLE_SCHEMA NOT IN ({_SYSTEM_LIST})
"""

#: The database of the reading connection (unqualified names in view definitions).
DATABASE_SQL = "SELECT DATABASE(), VERSION()"

#: What value sampling reads: one row per base table outside the system schemas:
#: schema, name, estimated rows.
SAMPLE_SIZES_SQL = f"""
SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_ROWS FROM information_schema.TABLES
WHERE TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED')
  AND TABLE_SCHEMA NOT IN ({_SYSTEM_LIST})
"""

# -- types ---------------------------------------------------------------------------------

_NEUTRAL: dict[str, str] = {
    "tinyint": "smallint", "smallint": "smallint", "mediumint": "integer", "int": "integer",
    "integer": "integer", "bigint": "bigint", "year": "smallint", "bit": "bit",
    "decimal": "numeric", "numeric": "numeric", "dec": "numeric", "fixed": "numeric",
    "float": "real", "double": "double precision", "real": "double precision",
    "double precision": "double precision",
    "date": "date", "datetime": "timestamp", "timestamp": "timestamp", "time": "time",
    "char": "text", "varchar": "text", "tinytext": "text", "text": "text",
    "mediumtext": "text", "longtext": "text", "enum": "text", "set": "text",
    "binary": "bytea", "varbinary": "bytea", "tinyblob": "bytea", "blob": "bytea",
    "mediumblob": "bytea", "longblob": "bytea",
    "json": "json", "inet4": "inet", "inet6": "inet", "uuid": "uuid", "vector": "point",
    "geometry": "point", "point": "point", "linestring": "point", "polygon": "point",
    "multipoint": "point", "multilinestring": "point", "multipolygon": "point",
    "geometrycollection": "point", "geomcollection": "point", "boolean": "boolean",
    "bool": "boolean",
}  # fmt: skip


def neutral_type(data_type: str, column_type: str = "") -> str:
    """The PostgreSQL spelling of the nearest type, which the neutral classification reads
    (:func:`dbsentry.masking.detect.classify_column`): what the type can hold.  ``BOOL``
    (``tinyint(1)``) is ``boolean``; an unknown type is ``text``."""
    dt = (data_type or "").strip().lower()
    ct = (column_type or "").strip().lower()
    if dt == "tinyint" and re.match(r"tinyint\(1\)", ct):
        return "boolean"
    return _NEUTRAL.get(dt, "text")


# -- the catalog -----------------------------------------------------------------------------

_KINDS = {"VIEW": "v"}


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes | bytearray):
        return bytes(v).decode("utf-8", "replace")
    return str(v)


def catalog_from_rows(
    relation_rows: Iterable[Sequence[Any]],
    view_rows: Iterable[Sequence[Any]] = (),
    database: str | None = None,
) -> Catalog:
    """Build the catalog from the rows of :data:`RELATIONS_SQL` and :data:`VIEWS_SQL`.
    ``database``: the reading connection's (its ``search_path``)."""
    defs = {(_text(r[0]), _text(r[1])): _text(r[2]) for r in view_rows}
    heads: dict[tuple[str, str], str] = {}
    cols: dict[tuple[str, str], list[Column]] = {}
    for row in relation_rows:
        schema, name, ttype, pos, col, data_type, column_type, comment = (_text(v) for v in row[:8])
        key = (schema, name)
        heads.setdefault(key, _KINDS.get(ttype.upper(), "r"))
        builtin = BUILTIN_SECRETS.get(key, {}).get(col)
        if builtin is None and _statement_text(schema, col, data_type):
            builtin = "statement texts and messages of the server's sessions"
        note = _SECRET.format(builtin) if builtin else comment
        if builtin and comment:
            note = f"{note}; {comment}"
        cols.setdefault(key, []).append(
            Column(int(pos), col, 0, neutral_type(data_type, column_type), -1, note or None)
        )
    relations: dict[int, Relation] = {}
    for oid, key in enumerate(sorted(heads), start=1):
        kind = heads[key]
        definition = defs.get(key) if kind == "v" else None
        relations[oid] = Relation(oid, key[0], key[1], kind, tuple(cols[key]), definition or None)
    return Catalog(relations, {}, (database,) if database else ())


async def fetch_catalog(run: Runner) -> Catalog:
    """Read the catalog through ``run``."""
    rel_rows = await run(RELATIONS_SQL)
    view_rows = await run(VIEWS_SQL)
    info = await run(DATABASE_SQL)
    database = _text(info[0][0]) if info and info[0][0] is not None else None
    return catalog_from_rows(rel_rows, view_rows, database)


# -- value sampling ----------------------------------------------------------------------------

_DOCUMENT_BYTES = 65_536  # larger JSON documents are not sampled


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def sample_column(col: Column) -> tuple[SampledColumn, str] | None:
    """How value sampling reads a column: (what it is, the SQL expression), or None for
    columns whose type cannot hold what the detectors find (dates, booleans, int...)."""
    ref = _ident(col.name)
    kind = col.type_name
    if kind == "text":
        return SampledColumn(col.name, "text"), f"LEFT({ref}, {MAX_VALUE_CHARS})"
    if kind == "json":
        return SampledColumn(col.name, "json"), (
            f"CASE WHEN LENGTH({ref}) <= {_DOCUMENT_BYTES} THEN {ref} END"
        )
    if kind == "bytea":
        return SampledColumn(col.name, "bytea"), f"LEFT({ref}, {MAX_VALUE_CHARS * 4})"
    if kind in ("bigint", "numeric"):
        return SampledColumn(col.name, "number"), f"CAST({ref} AS CHAR)"
    return None


def sample_sql(
    rel: Relation, rows: int, timeout_ms: int = 2000, mariadb: bool = True
) -> tuple[str, tuple[SampledColumn, ...]] | None:
    """One bounded query that samples ``rel``'s columns worth judging by value (the first
    ``rows`` rows), with the statement time limit and lock wait of ``timeout_ms``; None
    when no column is worth it."""
    picked = [p for c in rel.columns if (p := sample_column(c)) is not None]
    if not picked:
        return None
    exprs = ", ".join(e for _, e in picked)
    seconds = max(1, -(-int(timeout_ms) // 1000))  # lock_wait_timeout is whole seconds
    body = f"{exprs} FROM {_ident(rel.schema)}.{_ident(rel.name)} LIMIT {int(rows)}"
    if mariadb:
        sql = (
            f"SET STATEMENT max_statement_time={int(timeout_ms) / 1000:.3f},"
            f" lock_wait_timeout={seconds} FOR SELECT {body}"
        )
    else:
        sql = (
            f"SELECT /*+ MAX_EXECUTION_TIME({int(timeout_ms)})"
            f" SET_VAR(lock_wait_timeout={seconds}) */ {body}"
        )
    return sql, tuple(c for c, _ in picked)


async def fetch_samples(
    run: Runner,
    catalog: Catalog,
    *,
    rows: int = 200,
    timeout_ms: int = 2000,
    budget_seconds: float = 20.0,
    priority: Mapping[int, float] | None = None,
    classify: Any = None,
    report: SampleReport | None = None,
) -> SampleReport:
    """Sample every base table through ``run``: one bounded query per table, in a
    read-only transaction that is rolled back; tables that fail or time out are skipped
    (and said so in the report), and nothing is started once ``budget_seconds`` have
    passed.  ``priority``, ``classify`` and ``report`` as in PostgreSQL's
    ``fetch_samples``."""
    report = report if report is not None else SampleReport()
    start = time.monotonic()
    info = await run(DATABASE_SQL)
    mariadb = bool(info) and "mariadb" in _text(info[0][1]).lower()
    by_name = {(r.schema, r.name): oid for oid, r in catalog.relations.items()}
    sized = [by_name[k] for r in await run(SAMPLE_SIZES_SQL) if (k := (_text(r[0]), _text(r[1]))) in by_name]
    order = sorted(sized, key=lambda oid: ((priority or {}).get(oid, 0.0), oid))
    for oid in order:
        rel = catalog.relations[oid]
        built = sample_sql(rel, rows, timeout_ms, mariadb)
        if built is None:
            report.sampled.add(oid)
            continue
        if time.monotonic() - start >= budget_seconds:
            report.skipped[oid] = "sampling budget spent"
            continue
        sql, columns = built
        try:
            await run("START TRANSACTION READ ONLY")
            try:
                result = list(await run(sql))
            finally:
                await run("ROLLBACK")
        except Exception as err:  # the driver's errors: skip the table, never the catalog
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

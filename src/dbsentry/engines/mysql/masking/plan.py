"""What the MySQL session asks masking before it forwards a statement: per statement, a
:class:`MysqlMaskPlan` (which output column is masked how) or a :class:`Refusal`.

``plan_for`` runs the lineage of every query (:mod:`~dbsentry.engines.mysql.masking.
lineage`), the neutral :func:`~dbsentry.masking.plans.plan_masks` and the
``masking.predicates`` rules.  Pure: the catalog and classification come in.

Statements other than queries: ``SHOW``, ``EXPLAIN``, ``DESCRIBE``, ``ANALYZE`` return
metadata, not table rows: whatever rows they return are value-scanned (``detect``).
The statement texts of other sessions in ``SHOW [FULL] PROCESSLIST``, ``SHOW BINLOG|RELAYLOG
EVENTS`` and ``SHOW ENGINE ... STATUS`` are redacted whole, like
``information_schema.PROCESSLIST.INFO``.
``HANDLER t READ`` returns rows of ``t``: every column is masked with the most sensitive
class of ``t`` (redacted), or value-scanned when ``t`` has none; its reads by key values
are predicates, and ``HANDLER t OPEN AS h`` of such a table is refused.  Statements that
hold another one (``EXECUTE IMMEDIATE 'text'``, ``PREPARE``, ``EXPLAIN``, ``ANALYZE``) are
planned by it; SQL text built at run time is refused.  ``CALL`` (a procedure's
result sets) and ``EXECUTE`` (the plan of its ``PREPARE``, which only the session knows)
return rows dbsentry cannot trace: value-scanned under ``masking.unresolved: detect``,
refused under ``deny``.  Statements that return no rows get :data:`NO_ROWS`.

Writes that read a classified column of another table (``INSERT ... SELECT``,
``REPLACE``, ``CREATE TABLE ... AS SELECT``, ``UPDATE ... JOIN``, a subquery in
``VALUES``) are refused (``masking.copy_out``): a masked identity may not store classified
values elsewhere.  Coarse: a column read only in the statement's WHERE or ON counts too,
and a copy inside the same table is not seen.  The conditions of the rows a write
matches (``UPDATE``/``DELETE``/``INSERT ... SELECT``), which its OK counts, are
predicates like a query's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dbsentry.engines.mysql.masking.lineage import (
    LineageError,
    StatementLineage,
    lineage_of_query,
    predicates_of_write,
)
from dbsentry.engines.mysql.sql.facts import ParsedQuery, analyze, parse_queries, parse_writes
from dbsentry.engines.mysql.sql.lexing import DEFAULT_MODE, SqlMode
from dbsentry.governance.facts import AnalysisRefused, StatementFacts
from dbsentry.masking.catalog import Catalog, ClassMap, SourceColumn
from dbsentry.masking.classes import DataClass, most_sensitive
from dbsentry.masking.plans import (
    ColumnMask,
    MaskSettings,
    PredicateMode,
    permitted,
    plan_masks,
    refusal_message,
    violation,
)

__all__ = ["NO_ROWS", "MysqlMaskPlan", "Refusal", "plan_for"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """The statement may not run for this identity.  ``sqlstate`` for the ERR packet
    (``42501``; MySQL error 1142 fits it), ``message`` with the ``dbsentry:`` prefix,
    ``rule`` for the audit record."""

    sqlstate: str
    message: str
    rule: str


@dataclass(frozen=True, slots=True)
class MysqlMaskPlan:
    """How to mask the rows of one statement's result sets.

    ``columns``: one :class:`~dbsentry.masking.plans.ColumnMask` (or None) per output
    column; ``rest`` the mask of any column past them (statements whose result columns
    are not known in advance, inexact positions).  ``exact``: the positions are known (a
    result of another width is then value-scanned whole).  ``reads_sensitive``: the
    statement may read a table with classified or value-scanned columns."""

    columns: tuple[ColumnMask | None, ...] = ()
    rest: ColumnMask | None = None
    exact: bool = True
    reads_sensitive: bool = False
    lineage: StatementLineage | None = None

    @property
    def active(self) -> bool:
        return self.rest is not None or any(c is not None for c in self.columns)

    @property
    def data_classes(self) -> frozenset[DataClass]:
        out = {c.data_class for c in (*self.columns, self.rest) if c is not None and c.data_class is not None}
        return frozenset(out)

    @property
    def masked_columns(self) -> frozenset[SourceColumn]:
        """Source columns masked (for the audit record's ``masked_columns``)."""
        return frozenset(
            s for c in (*self.columns, self.rest) if c is not None and c.data_class is not None for s in c.sources
        )


NO_ROWS = MysqlMaskPlan()

_METADATA = frozenset({"SHOW", "EXPLAIN", "EXPLAIN ANALYZE", "ANALYZE", "USE", "SET"})
_OPAQUE_ROWS = frozenset({"CALL", "EXECUTE", "EXECUTE IMMEDIATE"})
# SHOW forms whose rows carry statement texts: the column that does (SHOW [FULL]
# PROCESSLIST's Info, SHOW BINLOG|RELAYLOG EVENTS' Info, SHOW ENGINE ... STATUS's Status,
# where InnoDB prints the statements of the last deadlock).
_STATEMENT_TEXTS = {"show_processlist": 7, "show_log_events": 5, "show_engine_status": 2}


def _detect() -> ColumnMask:
    return ColumnMask(-1, None, "detect", frozenset(), "unresolved")


def _table_classes(
    tables: Sequence[str], catalog: Catalog, classmap: ClassMap, database: str | None
) -> dict[SourceColumn, DataClass]:
    out: dict[SourceColumn, DataClass] = {}
    for t in tables:
        schema, _, name = t.rpartition(".")
        schema = schema or database or ""
        for src, c in classmap.columns.items():
            if src.table.lower() == name.lower() and (not schema or src.schema.lower() == schema.lower()):
                out[src] = c.data_class
    return out


# Statements that store what they read elsewhere.  A view stores no rows, but until the
# catalog is read again it is a relation no plan knows, whose rows are value-scanned only
# (a name classified by its column's name or comment is nothing a scan finds).
_WRITES = frozenset({"INSERT", "REPLACE", "UPDATE", "CREATE TABLE AS", "CREATE VIEW"})


def _split(name: str, database: str | None) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return (schema or database or "").lower(), table.lower()


def _copied_columns(
    facts: StatementFacts, classmap: ClassMap, database: str | None
) -> list[SourceColumn]:
    """Classified columns of tables other than the written ones that a write reads: what
    it may store elsewhere (coarse: a column read only in a WHERE counts too)."""
    written = {_split(t, database) for t in facts.tables_written}
    read = {_split(t, database) for t in facts.tables_read}
    sensitive = [*classmap.columns, *classmap.scan]

    out: list[SourceColumn] = []
    for ref in facts.columns_read:
        parts = ref.split(".")
        col = parts[-1].lower()
        tables = [_split(".".join(parts[:-1]), database)] if len(parts) > 1 else list(read)
        for src in sensitive:
            key = (src.schema.lower(), src.table.lower())
            if col not in ("*", src.column.lower()):
                continue
            for schema, table in tables:
                if key[1] == table and (not schema or key[0] == schema) and key not in written:
                    out.append(src)
    return sorted(set(out))


def _other_statement(
    facts: StatementFacts,
    catalog: Catalog,
    classmap: ClassMap,
    settings: MaskSettings,
    database: str | None,
    predicates: PredicateMode = "allow",
) -> MysqlMaskPlan | Refusal:
    sensitive = bool(classmap.columns) or bool(classmap.scan)
    if facts.command in _WRITES and facts.tables_read:
        copied = _copied_columns(facts, classmap, database)
        if copied:
            return Refusal(
                "42501",
                f"dbsentry: a masked identity may not copy classified values into other tables or views"
                f" ({', '.join(map(str, copied))}; masking.copy_out)",
                "masking.copy_out",
            )
    if facts.command in ("CREATE TABLE", "ALTER TABLE") and facts.columns_read:
        # a generated column or a DEFAULT (expr) reading a classified column of its own
        # table stores the value in a column whose name classifies nothing
        named = {c.rsplit(".", 1)[-1].strip("`").lower() for c in facts.columns_read}
        found = _table_classes(facts.tables_written, catalog, classmap, database)
        stored = sorted(str(src) for src in found if src.column.lower() in named)
        if stored:
            return Refusal(
                "42501",
                "dbsentry: a masked identity may not define columns computed from classified ones"
                f" ({', '.join(stored)}; masking.copy_out)",
                "masking.copy_out",
            )
    if facts.command in ("SET", "DO") and _table_classes(facts.tables_read, catalog, classmap, database):
        return Refusal(
            "42501",
            f"dbsentry: a masked identity may not copy classified values into variables ({facts.command}"
            " reading a table with classified columns; masking.copy_out)",
            "masking.copy_out",
        )
    if facts.command in _METADATA:
        # settings, plans: scanned like the safety net (no IP addresses, which server
        # settings are full of)
        scan = ColumnMask(-1, None, "detect", frozenset(), "safety-net")
        text = next((i for flag, i in _STATEMENT_TEXTS.items() if flag in facts.flags), None)
        if text is None:
            return MysqlMaskPlan((), scan, False, False)
        # other sessions' statement texts: redacted whole, as information_schema.PROCESSLIST.INFO
        # (a name or an address in a literal is nothing a value scan finds)
        before = (ColumnMask(i, None, "detect", frozenset(), "safety-net") for i in range(text))
        secret = ColumnMask(text, DataClass.SECRET, "redact", frozenset(), "inexact")
        return MysqlMaskPlan((*before, secret), scan, False, True)
    if facts.command == "HANDLER":
        # by the table's name in any schema: HANDLER db.t OPEN reads as t
        found = _table_classes(facts.tables_read, catalog, classmap, None)
        if found and "handler_alias" in facts.flags:
            # its reads would name the alias, which no plan can tie to the table
            return Refusal(
                "42501",
                "dbsentry: a masked identity opens a HANDLER on a table with masked columns under"
                " the table's own name (masking.handler)",
                "masking.handler",
            )
        lookup = "handler_key_lookup" in facts.flags and predicates == "deny"
        if found and predicates != "allow" and (lookup or "handler_key_range" in facts.flags):
            # READ index >= (value): a row or none answers a question about the index's
            # columns, as a WHERE would
            return Refusal(
                "42501",
                "dbsentry: HANDLER ... READ by key values may look up masked columns of"
                f" {', '.join(sorted(facts.tables_read))} (masking.predicates = {predicates})",
                "masking.predicates",
            )
        if found:
            cls = most_sensitive(list(found.values()))
            assert cls is not None
            strategy = settings.strategy_for(cls, found)
            strategy = "redact" if strategy == "partial" else strategy
            return MysqlMaskPlan((), ColumnMask(-1, cls, strategy, frozenset(found), "inexact"), False, True)
        return MysqlMaskPlan((), _detect(), False, sensitive)
    if facts.command in _OPAQUE_ROWS or "volatile_function" in facts.flags:
        if sensitive and settings.unresolved == "deny":
            return Refusal(
                "42501",
                f"dbsentry: the rows of {facts.command} cannot be traced to their columns"
                " (masking.unresolved = deny)",
                "masking.unresolved",
            )
        return MysqlMaskPlan((), _detect(), False, sensitive)
    if _touches(facts, classmap):
        # no rows, but the server's errors and warnings quote the values it read or wrote
        # ("Incorrect integer value: 'Ada' for column ..."), also when it runs as EXECUTE s
        return MysqlMaskPlan(reads_sensitive=True)
    return NO_ROWS


def _touches(facts: StatementFacts, classmap: ClassMap) -> bool:
    """The statement reads or writes a table with classified or value-scanned columns, by
    table name in any schema (more, never less)."""
    sensitive = {table.lower() for _, table in classmap.tables}
    return any(
        name.rsplit(".", 1)[-1].strip("`").lower() in sensitive for name in (*facts.tables_read, *facts.tables_written)
    )


def _query_plan(
    q: ParsedQuery,
    catalog: Catalog,
    classmap: ClassMap,
    settings: MaskSettings,
    predicates: PredicateMode,
    database: str | None,
) -> MysqlMaskPlan | Refusal:
    sensitive = bool(classmap.tables)
    try:
        lin = lineage_of_query(q.tree, catalog, database, opaque_calls=q.opaque_calls, into=q.into)
    except LineageError as err:
        if not sensitive:
            return MysqlMaskPlan((), _detect(), False, False)
        if settings.unresolved == "deny" or predicates != "allow":
            return Refusal(
                "42501",
                f"dbsentry: the statement's columns cannot be traced ({err}); it may read masked data",
                "masking.unresolved",
            )
        return MysqlMaskPlan((), _detect(), False, True)
    if lin.reads_unknown or not lin.tables_read.isdisjoint(classmap.tables):
        stored = set(lin.copied)
        unknown = lin.copied_unknown
        if q.into:
            stored.update(s for c in lin.columns for s in c.sources)
            unknown = unknown or any(c.unknown for c in lin.columns)
        copied = sorted(str(s) for s in stored if s in classmap.columns or s in classmap.scan)
        if copied or unknown:
            what = ", ".join(copied) or "columns that cannot be traced"
            return Refusal(
                "42501",
                f"dbsentry: a masked identity may not copy classified values ({what})"
                " into variables or files (masking.copy_out)",
                "masking.copy_out",
            )
    use = violation((lin,), classmap, predicates)
    if use is not None:
        return Refusal("42501", f"dbsentry: {refusal_message(use, predicates)}", "masking.predicates")
    plan = plan_masks(lin, classmap, settings)
    if plan.deny:
        return Refusal("42501", f"dbsentry: {plan.reason} (masking.unresolved = deny)", "masking.unresolved")
    rest = None
    if not lin.exact and plan.reads_sensitive:
        rest = next((c for c in plan.columns if c is not None), None)
    return MysqlMaskPlan(plan.columns, rest, lin.exact, plan.reads_sensitive, lin)


def plan_for(
    sql: str,
    catalog: Catalog,
    classmap: ClassMap,
    *,
    settings: MaskSettings | None = None,
    predicates: PredicateMode = "allow",
    database: str | None = None,
    mode: SqlMode = DEFAULT_MODE,
    facts: Sequence[StatementFacts] | None = None,
) -> tuple[MysqlMaskPlan | Refusal, ...]:
    """One plan or refusal per statement of ``sql`` for an identity under masking.

    ``database``: the session's current database (``USE``; None: not known, an
    unqualified table may be in any schema and is masked by every candidate);
    ``predicates``: the identity's ``masking.predicates``; ``mode``: the session's
    ``sql_mode``; ``facts``: the statements' facts if the session has them (else they are
    analysed again).  A text the analysis refuses gives a single :class:`Refusal`.

    Plans are cached per text, catalog, classification, settings, mode, database and
    predicates mode (the same objects: a new catalog read is a new cache key)."""
    settings = settings or _DEFAULT_SETTINGS
    key = (sql, id(catalog), id(classmap), id(settings), predicates, database, mode)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is catalog and hit[1] is classmap and hit[2] is settings:
        _CACHE.move_to_end(key)
        return hit[3]
    result = _plan_for(sql, catalog, classmap, settings, predicates, database, mode, facts)
    _CACHE[key] = (catalog, classmap, settings, result)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result


_CACHE: OrderedDict[tuple[Any, ...], tuple[Catalog, ClassMap, MaskSettings, tuple[MysqlMaskPlan | Refusal, ...]]] = OrderedDict()
_CACHE_SIZE = 2048
_DEFAULT_SETTINGS = MaskSettings()


def _plan_for(
    sql: str,
    catalog: Catalog,
    classmap: ClassMap,
    settings: MaskSettings,
    predicates: PredicateMode,
    database: str | None,
    mode: SqlMode,
    facts: Sequence[StatementFacts] | None,
) -> tuple[MysqlMaskPlan | Refusal, ...]:
    try:
        queries = parse_queries(sql, mode)
        all_facts = tuple(facts) if facts is not None else analyze(sql, mode)
    except AnalysisRefused as err:
        return (Refusal(err.sqlstate, f"dbsentry: {err}", "masking.analysis"),)
    if len(all_facts) != len(queries):
        return (Refusal("XX000", "dbsentry: the statements could not be matched", "masking.analysis"),)
    out: list[MysqlMaskPlan | Refusal] = []
    for q, f in zip(queries, all_facts, strict=True):
        if q is not None:
            out.append(_query_plan(q, catalog, classmap, settings, predicates, database))
        elif f.command in _RUNS_TEXT or f.command in _EXPLAINS:
            ctx = _Context(catalog, classmap, settings, predicates, database, mode)
            out.append(_statement_inside(f, ctx))
        else:
            planned = _other_statement(f, catalog, classmap, settings, database, predicates)
            if f.command in _MATCHING and predicates != "allow" and isinstance(planned, MysqlMaskPlan):
                planned = _matched_rows(f, planned, _Context(catalog, classmap, settings, predicates, database, mode))
            out.append(planned)
    return tuple(out)


# Writes whose OK counts the rows their conditions matched ("Rows matched: 4")
_MATCHING = frozenset({"UPDATE", "DELETE", "INSERT", "REPLACE"})


def _matched_rows(f: StatementFacts, planned: MysqlMaskPlan, ctx: _Context) -> MysqlMaskPlan | Refusal:
    """``planned``, or a refusal when the write's conditions use a masked column as
    ``masking.predicates`` does not permit: ``UPDATE t SET id = id WHERE name LIKE 'A%'``
    answers the LIKE by its count of matched rows, as ``SELECT COUNT(*)`` would."""
    if not _touches(f, ctx.classmap):
        return planned
    try:
        (parsed,) = parse_writes(f.text or "", ctx.mode, deletes=True)
        uses = predicates_of_write(parsed, ctx.catalog, ctx.database) if parsed is not None else ()
    except (AnalysisRefused, LineageError, ValueError) as err:
        return Refusal(
            "42501",
            f"dbsentry: the conditions of the write cannot be traced ({err}); it may use masked data",
            "masking.unresolved",
        )
    for use in uses:
        if use.column in ctx.classmap.columns and not permitted(use, ctx.predicates):
            return Refusal("42501", f"dbsentry: {refusal_message(use, ctx.predicates)}", "masking.predicates")
    return planned


# Statements that hold another statement: the text they run (PREPARE, EXECUTE IMMEDIATE)
# and the statement whose plan they show (EXPLAIN, ANALYZE).
_RUNS_TEXT = frozenset({"PREPARE", "EXECUTE IMMEDIATE"})
_EXPLAINS = frozenset({"EXPLAIN", "EXPLAIN ANALYZE"})


@dataclass(frozen=True, slots=True)
class _Context:
    """What a plan is made with (``plan_for``'s arguments)."""

    catalog: Catalog
    classmap: ClassMap
    settings: MaskSettings
    predicates: PredicateMode
    database: str | None
    mode: SqlMode


def _statement_inside(f: StatementFacts, ctx: _Context) -> MysqlMaskPlan | Refusal:
    """The plan of a statement that holds another one: the inner statement is planned as
    if it were sent itself (its predicates, copies and columns), so that wrapping it
    changes nothing a masked identity may learn."""
    catalog, classmap, settings, database = ctx.catalog, ctx.classmap, ctx.settings, ctx.database
    sensitive = bool(classmap.columns) or bool(classmap.scan)
    inner = f.inner
    if inner is None or not inner.text or "dynamic_sql" in f.flags:
        if f.command in _EXPLAINS:  # EXPLAIN of a table (DESCRIBE): its columns
            return _other_statement(f, catalog, classmap, settings, database, ctx.predicates)
        if not sensitive:
            return MysqlMaskPlan((), _detect(), False, False) if f.command == "EXECUTE IMMEDIATE" else NO_ROWS
        # PREPARE s FROM @v, EXECUTE IMMEDIATE CONCAT(...), ... USING: text built at run
        # time, which no plan can follow (value detection cannot find what a column's
        # name or comment classifies)
        return Refusal(
            "42501",
            f"dbsentry: a masked identity may not run SQL text built at run time ({f.command} of"
            " anything but one string constant): what it reads cannot be traced (masking.dynamic_sql)",
            "masking.dynamic_sql",
        )
    if f.command in _RUNS_TEXT and "show_diagnostics" in inner.flags and sensitive:
        # the session withholds SHOW WARNINGS/ERRORS after a statement that read masked data
        # when they are sent themselves; prepared, they would show what it quoted
        return Refusal(
            "42501",
            f"dbsentry: a masked identity may not read the server's warnings through {f.command}"
            " (send SHOW WARNINGS itself; masking.diagnostics)",
            "masking.diagnostics",
        )
    planned = _plan_for(inner.text, catalog, classmap, settings, ctx.predicates, database, ctx.mode, (inner,))
    if len(planned) != 1:
        return Refusal("XX000", "dbsentry: the statements could not be matched", "masking.analysis")
    plan = planned[0]
    if isinstance(plan, Refusal) or f.command == "EXECUTE IMMEDIATE":
        return plan
    if f.command == "PREPARE":
        return NO_ROWS  # its rows come at EXECUTE, with the plan of this text (the session's)
    # EXPLAIN / ANALYZE: the plan of the statement, not its rows.  Its row counts and
    # estimates answer the statement's predicates (checked above); the plan printed as
    # text (FORMAT=JSON/TREE) carries the values of rows the optimizer read while
    # planning (a row found by its primary key becomes constants in the conditions that
    # name its columns): redacted whole, with the most sensitive class the statement reads.
    scan = ColumnMask(-1, None, "detect", frozenset(), "safety-net")
    if "plan_text" in f.flags and plan.reads_sensitive and _prints_values(plan, catalog, classmap):
        found = _table_classes(f.tables_read, catalog, classmap, database)
        cls = most_sensitive(list(found.values())) if found else None
        return MysqlMaskPlan((), ColumnMask(-1, cls or DataClass.SECRET, "redact", frozenset(found), "inexact"), False, True)
    return MysqlMaskPlan((), scan, False, plan.reads_sensitive)


def _prints_values(plan: MysqlMaskPlan, catalog: Catalog, classmap: ClassMap) -> bool:
    """Whether a printed plan of the statement may show stored values of classified
    columns: its conditions (WHERE, ON, HAVING...) name one, or those of a view it reads
    may, or the statement cannot be traced."""
    lin = plan.lineage
    if lin is None or lin.reads_unknown:
        return True
    sensitive = {*classmap.columns, *classmap.scan}
    if any(u.column in sensitive for u in lin.predicates):
        return True
    views = {(r.schema, r.name) for r in catalog.relations.values() if r.kind == "v"}
    return not views.isdisjoint(lin.tables_read)

"""Inference through predicates, and the data classes a statement reads and writes.

Masking rewrites the values a statement returns; it cannot rewrite what a statement asks
of the values.  ``WHERE ssn LIKE '5%'``, ``ORDER BY ssn``, ``GROUP BY substr(email, 1, 1)``,
``count(DISTINCT ssn)``, ``min(ssn)``, a join on a table of guesses: each answers a question
about a masked value with rows, row counts or their order, and repeated, they rebuild it
character by character.  Lineage records every such use (:class:`PredicateUse`); this
module judges them against ``masking.predicates``:

- ``allow``: masking only masks values;
- ``equality``: a masked column may be looked up by value (``col = constant | $n``,
  ``col IN (...)``, ``col = ANY($1)``, their negations, ``IS [NOT] DISTINCT FROM``) in a
  condition that filters rows (WHERE, JOIN ... ON, FILTER, MERGE), and tested for presence
  (``col IS [NOT] NULL``, ``count(col)``) anywhere; nothing else;
- ``deny``: a masked column may only be returned (masked), never used otherwise.

Pure: lineage and the classification come in, a verdict goes out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dbsentry.engines.postgres.masking.lineage import (
    LineageError,
    StatementLineage,
    analyze_lineage,
)
from dbsentry.masking.catalog import Catalog, ClassMap, SourceColumn
from dbsentry.masking.plans import (
    FILTERS,
    PredicateMode,
    permitted,
    refusal_message,
    violation,
)

__all__ = [
    "FILTERS",
    "PredicateMode",
    "StatementClasses",
    "lineages_of",
    "permitted",
    "refusal_message",
    "statement_classes",
    "violation",
]

# -- data classes as facts for the policy ------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatementClasses:
    """The data classes of the columns one statement reads (its output values, its
    predicates, the values it copies) and writes."""

    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()


NONE = StatementClasses()


def _classes(columns: Iterable[SourceColumn], classmap: ClassMap) -> frozenset[str]:
    return frozenset(
        c.data_class.value for s in columns if (c := classmap.columns.get(s)) is not None
    )


def _of_tables(tables: Iterable[str], classmap: ClassMap) -> frozenset[str]:
    """Every class of every sensitive column of ``tables`` (``schema.table`` or a bare
    name, which may be in any schema): what a statement may touch when its columns are
    not known."""
    wanted = {t.replace('"', "").lower() for t in tables}
    bare = {t for t in wanted if "." not in t}
    return frozenset(
        c.data_class.value
        for s, c in classmap.columns.items()
        if f"{s.schema}.{s.table}".lower() in wanted or s.table.lower() in bare
    )


def lineage_classes(lin: StatementLineage, classmap: ClassMap) -> StatementClasses:
    if lin.executes is not None or lin.fetches is not None:
        return NONE  # judged when the statement was prepared or the cursor declared
    reads = _classes(lin.columns_read, classmap)
    if lin.reads_unknown:  # dynamic SQL, PL/pgSQL: may read anything
        reads = frozenset(c.data_class.value for c in classmap.columns.values())
    elif not lin.exact:  # a * over something unknown: whatever its tables hold
        reads = reads | _classes(
            (s for s in classmap.columns if (s.schema, s.table) in lin.tables_read), classmap
        )
    return StatementClasses(reads, _classes(lin.columns_written, classmap))


# Lineage of a statement text per catalog: the policy asks for classes before masking
# computes its own plan, and the same text comes again and again.
_CACHE: OrderedDict[
    tuple[int, str, tuple[str, ...], frozenset[str]],
    tuple[Catalog, tuple[StatementLineage, ...] | None],
] = OrderedDict()
_CACHE_SIZE = 2048


def lineages_of(
    sql: str,
    catalog: Catalog,
    search_path: tuple[str, ...] | None = None,
    candidates: frozenset[str] = frozenset(),
) -> tuple[StatementLineage, ...] | None:
    """The lineage of every statement of ``sql`` (None when it cannot be analysed), with
    unqualified names on ``search_path`` (default: the catalog's) and ``candidates``,
    cached per catalog, text and path."""
    path = search_path if search_path is not None else catalog.search_path
    key = (id(catalog), sql, path, candidates)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is catalog:
        _CACHE.move_to_end(key)
        return hit[1]
    try:
        result: tuple[StatementLineage, ...] | None = tuple(
            analyze_lineage(sql, catalog, path, candidates=candidates)
        )
    except LineageError:
        result = None
    _CACHE[key] = (catalog, result)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result


def statement_classes(
    sql: str,
    tables: Sequence[tuple[Sequence[str], Sequence[str]]],
    catalog: Catalog,
    classmap: ClassMap,
) -> tuple[StatementClasses, ...]:
    """One :class:`StatementClasses` per statement of ``sql``.  ``tables`` gives, per
    statement, the tables it reads and writes (from its facts): when lineage cannot be
    had, every class of those tables counts (a superset never widens a policy's reach)."""
    if not classmap.columns:
        return tuple(NONE for _ in tables)
    lineages = lineages_of(sql, catalog)
    if lineages is None or len(lineages) != len(tables):
        return tuple(
            StatementClasses(_of_tables((*read, *written), classmap), _of_tables(written, classmap))
            for read, written in tables
        )
    return tuple(lineage_classes(lin, classmap) for lin in lineages)

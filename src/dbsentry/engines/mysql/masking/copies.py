"""Copies of classified data in MySQL writes: the columns they are stored in inherit the
class (docs/mysql.md "Masking", docs/masking.md "Copies").

``INSERT INTO staff_copy SELECT name FROM staff``, ``CREATE TABLE t AS SELECT ...``,
``UPDATE notes JOIN staff ... SET notes.body = staff.name``: :func:`copies_of` gives, per
statement, the columns it stores classified values in with the class each inherits
(:func:`dbsentry.masking.derived.copied_classes` on the MySQL lineage of the write).  The
session hands them to the shared masking service once the statement succeeded.  Pure.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from dbsentry.engines.mysql.masking.lineage import LineageError, lineage_of_write
from dbsentry.engines.mysql.sql.facts import parse_writes
from dbsentry.engines.mysql.sql.lexing import DEFAULT_MODE, SqlMode
from dbsentry.governance.facts import AnalysisRefused
from dbsentry.masking.catalog import Catalog, ClassMap, SourceColumn
from dbsentry.masking.classes import Classification
from dbsentry.masking.derived import copied_classes

__all__ = ["Copies", "copies_of"]

Copies = dict[SourceColumn, Classification]


def copies_of(
    sql: str, catalog: Catalog, classmap: ClassMap, database: str | None, mode: SqlMode = DEFAULT_MODE
) -> tuple[Copies | None, ...] | None:
    """Per statement of ``sql``: the columns it stores classified values in, with the
    class each inherits (empty: it copies nothing classified; None: it cannot be analysed).
    None for a text the analysis refuses.  ``CREATE TEMPORARY TABLE`` copies nothing that
    outlives the session.  Cached per text, catalog, classification, database and mode."""
    key = (sql, id(catalog), id(classmap), database, mode)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is catalog and hit[1] is classmap:
        _CACHE.move_to_end(key)
        return hit[2]
    result = _copies_of(sql, catalog, classmap, database, mode)
    _CACHE[key] = (catalog, classmap, result)
    if len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result


_CACHE: OrderedDict[tuple[Any, ...], tuple[Catalog, ClassMap, tuple[Copies | None, ...] | None]] = OrderedDict()
_CACHE_SIZE = 1024


def _copies_of(
    sql: str, catalog: Catalog, classmap: ClassMap, database: str | None, mode: SqlMode
) -> tuple[Copies | None, ...] | None:
    try:
        parsed = parse_writes(sql, mode)
    except AnalysisRefused:
        return None
    out: list[Copies | None] = []
    for p in parsed:
        if p is None:
            out.append({})
            continue
        try:
            lin = lineage_of_write(p, catalog, database)
        except LineageError:
            out.append(None)
            continue
        out.append({} if lin.temporary else copied_classes((lin,), classmap))
    return tuple(out)

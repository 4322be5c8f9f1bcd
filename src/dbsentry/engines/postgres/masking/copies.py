"""Copies of classified data: the columns a statement stores them in inherit their class.

``INSERT INTO log (msg) SELECT c::text FROM customers c``, ``CREATE TABLE t AS SELECT
row_to_json(c) FROM customers c`` or ``UPDATE notes SET body = sql_email(id)`` store
classified values in a column whose name says nothing.  Lineage tells what each stored
value derives from (whole rows, ``*`` and SQL function bodies included); a value it cannot
follow (an opaque function) in a statement that reads classified data may carry any class
read there.  :func:`copied_classes` gives the classes the written columns inherit;
``dbsentry.masking.derived`` adds them to a ``ClassMap`` and keeps them across restarts.
"""

from __future__ import annotations

from collections.abc import Iterable

from dbsentry.engines.postgres.masking.lineage import StatementLineage
from dbsentry.masking.catalog import (
    ClassMap,
    SourceColumn,
)
from dbsentry.masking.classes import Classification, DataClass, most_sensitive


def copied_classes(
    lineages: Iterable[StatementLineage], classmap: ClassMap
) -> dict[SourceColumn, Classification]:
    """The columns ``lineages`` store classified values in, with the class each inherits
    (the most sensitive of what it stores) and where it came from."""
    out: dict[SourceColumn, Classification] = {}
    for lin in lineages:
        read_classes = _classes_read(lin, classmap)
        for (schema, table), col in lin.writes:
            classes: set[DataClass] = set()
            origins: set[str] = set()
            for src in col.sources:
                found = classmap.get(src)
                if found is not None:
                    classes.add(found.data_class)
                    origins.add(str(src))
            if col.unknown and read_classes:
                # An opaque value in a statement that reads classified data may be any of it.
                classes |= read_classes
                origins.add("a value the analysis cannot follow")
            best = most_sensitive(classes)
            if best is None:
                continue
            target = SourceColumn(schema, table, col.name)
            if target in col.sources and len(origins) == 1 and str(target) in origins:
                continue  # the column keeps its own value (UPDATE ... SET a = a)
            evidence = "copied from " + ", ".join(sorted(origins))
            if not (col.direct and len(classes) == 1):
                # A whole row, a concatenation, a function's result: no partial mask of it
                # is safe (it would show the other values), so it is redacted like a secret.
                best, evidence = DataClass.SECRET, f"{evidence} (a composite of {', '.join(sorted(c.value for c in classes))})"
            found = Classification(best, "copy", evidence)
            old = out.get(target)
            if old is None or most_sensitive({old.data_class, best}) != old.data_class:
                out[target] = found
    return out


def _classes_read(lin: StatementLineage, classmap: ClassMap) -> set[DataClass]:
    if lin.reads_unknown:
        return {c.data_class for c in classmap.columns.values()}
    read = lin.tables_read
    return {c.data_class for src, c in classmap.columns.items() if (src.schema, src.table) in read}

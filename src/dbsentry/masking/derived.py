"""Classes that columns inherited from copies of classified data (an engine's analysis
finds the copies: PostgreSQL's is ``dbsentry.engines.postgres.masking.copies``).

:func:`with_derived` adds them to a :class:`ClassMap`, so that later readers, in any
session, see them masked; only the policy (``masking.overrides``) can take a class away.
:func:`with_new_tables` makes tables created by a copy known before the catalog is read
again.  :class:`DerivedClassFile` keeps them across restarts (one JSON file in the state
directory; the only I/O here, used by the shell).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from dbsentry.masking.catalog import (
    Catalog,
    ClassMap,
    Column,
    Relation,
    SourceColumn,
    _override_for,
    compile_overrides,
)
from dbsentry.masking.classes import Classification, most_sensitive, parse_class


def with_derived(
    catalog: Catalog,
    classmap: ClassMap,
    derived: Mapping[SourceColumn, Classification],
    overrides: Mapping[str, str] | None = None,
) -> ClassMap:
    """``classmap`` plus the classes columns inherited from copies (the most sensitive
    wins; a policy override of the column, ``none`` included, wins over both)."""
    if not derived:
        return classmap
    compiled = compile_overrides(overrides)
    columns = dict(classmap.columns)
    attrs = dict(classmap.attrs)
    for src, found in derived.items():
        if compiled and _override_for(src, compiled)[0]:
            continue  # the policy decided this column already
        old = columns.get(src)
        if old is not None and most_sensitive({old.data_class, found.data_class}) == old.data_class:
            continue
        columns[src] = found
        rel = catalog.relation(src.schema, src.table)
        if rel is not None:
            for col in rel.columns:
                if col.name == src.column:
                    attrs[(rel.oid, col.attnum)] = found
    return replace(classmap, columns=columns, attrs=attrs)


def with_new_tables(catalog: Catalog, copies: Mapping[SourceColumn, Classification]) -> Catalog:
    """``catalog`` plus the tables ``copies`` were made into that it does not know yet
    (``CREATE TABLE AS`` since it was read), with the columns the copies name, so that
    readers are masked before the catalog is read again."""
    new: dict[tuple[str, str], list[str]] = {}
    for src in copies:
        if src.schema.startswith("pg_temp") or src.column.startswith("?column"):
            continue
        if catalog.relation(src.schema, src.table) is None:
            cols = new.setdefault((src.schema, src.table), [])
            if src.column not in cols:
                cols.append(src.column)
    if not new:
        return catalog
    relations = dict(catalog.relations)
    oid = min(0, *relations) - 1  # oids no real relation has
    for (schema, table), names in new.items():
        columns = tuple(Column(i + 1, n, 0, "unknown", -1, None) for i, n in enumerate(names))
        relations[oid] = Relation(oid, schema, table, "r", columns)
        oid -= 1
    return replace(catalog, relations=relations, cache={}, _by_name={}, _funcs_by_name={}, _columns={})


class DerivedClassFile:
    """The inherited classes of every connection, in one JSON file (written whole, then
    renamed over the old one, so a crash leaves the old or the new file)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, dict[SourceColumn, Classification]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        out: dict[str, dict[SourceColumn, Classification]] = {}
        for connection, columns in data.items():
            found: dict[SourceColumn, Classification] = {}
            for key, value in columns.items():
                schema, table, column = json.loads(key)
                cls = parse_class(value["class"])
                if cls is not None:
                    found[SourceColumn(schema, table, column)] = Classification(
                        cls, "copy", str(value.get("evidence", ""))
                    )
            out[connection] = found
        return out

    def save(self, derived: Mapping[str, Mapping[SourceColumn, Classification]]) -> None:
        data = {
            connection: {
                json.dumps([s.schema, s.table, s.column]): {
                    "class": c.data_class.value,
                    "evidence": c.evidence,
                }
                for s, c in sorted(columns.items())
            }
            for connection, columns in derived.items()
        }
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

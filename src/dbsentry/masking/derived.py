"""Classes that columns inherited from copies of classified data (an engine's lineage
finds what each write stores: PostgreSQL's ``engines/postgres/masking/lineage.py``, MySQL's
``engines/mysql/masking/lineage.py``).

:func:`copied_classes` gives the classes the written columns inherit.
:func:`with_derived` adds them to a :class:`ClassMap`, so that later readers, in any
session, see them masked; only the policy (``masking.overrides``) can take a class away.
:func:`with_new_tables` makes tables created by a copy known before the catalog is read
again.  :class:`DerivedClassFile` keeps them across restarts (one JSON file in the state
directory; the only I/O here, used by the shell).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from dbsentry.masking.catalog import (
    Catalog,
    ClassMap,
    Column,
    Relation,
    SourceColumn,
    _override_for,
    compile_overrides,
)
from dbsentry.masking.classes import Classification, DataClass, most_sensitive, parse_class
from dbsentry.masking.plans import ColumnLineage


class WriteLineage(Protocol):
    """What a statement stores: per written column ``((schema, table), lineage)``, and
    what it reads."""

    @property
    def writes(self) -> Sequence[tuple[tuple[str, str], ColumnLineage]]: ...

    @property
    def tables_read(self) -> Set[tuple[str, str]]: ...

    @property
    def reads_unknown(self) -> bool: ...


def copied_classes(lineages: Iterable[WriteLineage], classmap: ClassMap) -> dict[SourceColumn, Classification]:
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


def _classes_read(lin: WriteLineage, classmap: ClassMap) -> set[DataClass]:
    if lin.reads_unknown:
        return {c.data_class for c in classmap.columns.values()}
    read = lin.tables_read
    return {c.data_class for src, c in classmap.columns.items() if (src.schema, src.table) in read}


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
    renamed over the old one, so a crash leaves the old or the new file; saves add to
    what it holds)."""

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
        """Add ``derived`` to the file: what it holds already stays (the most sensitive
        class of a column wins), so that processes saving at once (workers) lose nothing
        the other saved; under a lock file."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = os.open(self.path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = self.load()
            for connection, columns in derived.items():
                known = merged.setdefault(connection, {})
                for src, found in columns.items():
                    old = known.get(src)
                    if old is None or most_sensitive({old.data_class, found.data_class}) != old.data_class:
                        known[src] = found
            self._write(merged)
        finally:
            os.close(lock)  # releases the lock

    def _write(self, derived: Mapping[str, Mapping[SourceColumn, Classification]]) -> None:
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
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

"""What the upstream database holds: tables, columns, views and SQL functions, and how
each column is classified.

The model is built from catalog rows that each engine reads (PostgreSQL's reader is
``dbsentry.engines.postgres.catalog``); everything here is pure.

View definitions are analysed on the search path of the connection that read them
(:attr:`Catalog.search_path`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dbsentry.masking.classes import Classification, DataClass, most_sensitive, parse_class
from dbsentry.masking.detect import IGNORED_NONE_NOTE, classify_column, comment_says_none
from dbsentry.masking.sampling import (
    ValueFinding,
    classify_fields,
)

__all__ = [
    "Catalog",
    "ClassMap",
    "Column",
    "Function",
    "Relation",
    "SampleReport",
    "SourceColumn",
    "classify_catalog",
]


class SourceColumn(NamedTuple):
    """A column of a relation in the database: where data comes from."""

    schema: str
    table: str
    column: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.table}.{self.column}"


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
    row_security: bool = False  # row-level security on: its policies run when it is read

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
    settings: tuple[str, ...] = ()  # the settings its SET clause sets (lower case)

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
        secured: set[int] = set()
        cols: dict[int, list[Column]] = {}
        for row in relation_rows:
            oid, schema, name, kind, attnum, attname, type_oid, type_name, typmod, comment = row[:10]
            category = str(row[10] or "") if len(row) > 10 else ""
            if len(row) > 11 and row[11]:
                secured.add(int(oid))
            heads[int(oid)] = (schema, name, kind)
            cols.setdefault(int(oid), []).append(
                Column(int(attnum), attname, int(type_oid), type_name or "", int(typmod), comment, category)
            )
        relations = {
            oid: Relation(oid, s, n, k, tuple(cols[oid]), defs.get(oid), oid in secured)
            for oid, (s, n, k) in heads.items()
        }
        functions = {}
        for row in function_rows:
            oid, schema, name, lang, body, retset, nargs, argnames, argmodes, relid, kind = row[:11]
            volatility = row[11] if len(row) > 11 and row[11] else "v"
            path = None
            keys = []
            for setting in (row[12] if len(row) > 12 and row[12] else ()):
                key, _, value = str(setting).partition("=")
                keys.append(key.lower())
                if key.lower() == "search_path":
                    path = parse_search_path(value)
            functions[int(oid)] = Function(
                int(oid), schema, name, lang, body, bool(retset), int(nargs),
                tuple(a or "" for a in argnames or ()), tuple(argmodes or ()), int(relid or 0), kind or "f",
                volatility, path, tuple(keys),
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
    # Other sessions' statements, with the values they carry.
    SourceColumn("pg_catalog", "pg_stat_activity", "query"): Classification(
        DataClass.SECRET, "policy", "built in: the text of other sessions' statements"
    ),
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
    ``dbsentry.engines.postgres.catalog.fetch_samples``; a parent also gets its partitions' and children's).  A column
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

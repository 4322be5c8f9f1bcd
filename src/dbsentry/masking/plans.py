"""Mask plans and predicate rules, as every engine's lineage feeds them.

An engine's lineage analysis (PostgreSQL: ``dbsentry.engines.postgres.masking.lineage``,
MySQL: ``dbsentry.engines.mysql.masking.lineage``) says, per output column of a statement,
which source columns it derives from (:class:`ColumnLineage`) and where source columns are
used other than as output values (:class:`PredicateUse`).  This module is what follows
from that and knows no engine: :func:`plan_masks` (the class and strategy per output
column, the conservative choice for unresolved columns) and the ``masking.predicates``
rules (:func:`permitted`, :func:`violation`).  Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from dbsentry.masking.catalog import ClassMap, SourceColumn
from dbsentry.masking.classes import DataClass, most_sensitive
from dbsentry.masking.strategies import DEFAULT_STRATEGIES, STRATEGIES

__all__ = [
    "FILTERS",
    "NO_MASKS",
    "ColumnLineage",
    "ColumnMask",
    "Lineage",
    "MaskPlan",
    "MaskSettings",
    "PredicateMode",
    "PredicateUse",
    "Shape",
    "Unresolved",
    "permitted",
    "plan_masks",
    "refusal_message",
    "violation",
]


@dataclass(frozen=True, slots=True)
class ColumnLineage:
    name: str
    sources: frozenset[SourceColumn]
    unknown: bool = False  # could not be resolved (opaque function, unknown relation...)
    direct: bool = False  # the value is a source value as is (aliases, casts, views, unions)


Shape = Literal["equality", "presence", "other"]


@dataclass(frozen=True, slots=True)
class PredicateUse:
    """A source column used other than as an output value: filtered, joined, grouped,
    ordered, aggregated, deduplicated on.  ``clause`` says where, as a reader would name it
    (``WHERE``, ``ORDER BY``, ``an aggregate``...).  ``shape`` is ``equality`` for a point
    lookup (``col = constant | $n``, ``col IN (...)``, ``col = ANY($1)``, their negations,
    ``IS [NOT] DISTINCT FROM``) of the stored value itself, ``presence`` for
    ``col IS [NOT] NULL`` and ``count(col)``, ``other`` for everything else."""

    column: SourceColumn
    clause: str
    shape: Shape = "other"


class Lineage(Protocol):
    """What :func:`plan_masks` and :func:`violation` read of an engine's statement lineage."""

    @property
    def columns(self) -> tuple[ColumnLineage, ...]: ...
    @property
    def tables_read(self) -> frozenset[tuple[str, str]]: ...
    @property
    def returns_rows(self) -> bool: ...
    @property
    def exact(self) -> bool: ...
    @property
    def reads_unknown(self) -> bool: ...
    @property
    def predicates(self) -> tuple[PredicateUse, ...]: ...


# -- mask plans --------------------------------------------------------------------------------

Unresolved = Literal["detect", "deny"]


@dataclass(frozen=True, slots=True)
class MaskSettings:
    """What to do with what lineage found.

    ``strategies`` gives the strategy per data class (defaults: :data:`DEFAULT_STRATEGIES`);
    ``column_strategies`` one per source column (``"schema.table.column"``: strategy),
    e.g. from a policy's mask rule.  ``unresolved`` is the conservative choice for a column
    whose lineage is unknown in a statement that reads a table with sensitive columns:
    ``"detect"`` masks its values by value detection, ``"deny"`` refuses the statement.
    """

    strategies: Mapping[DataClass, str] = field(default_factory=lambda: dict(DEFAULT_STRATEGIES))
    column_strategies: Mapping[str, str] = field(default_factory=dict)
    unresolved: Unresolved = "detect"

    def __post_init__(self) -> None:
        for s in (*self.strategies.values(), *self.column_strategies.values()):
            if s not in STRATEGIES:
                raise ValueError(f"unknown masking strategy {s!r} (known: {', '.join(STRATEGIES)})")

    def strategy_for(self, data_class: DataClass, sources: Iterable[SourceColumn]) -> str:
        chosen: str | None = None
        for src in sources:
            s = self.column_strategies.get(str(src))
            if s is not None and (chosen is None or STRATEGIES.index(s) > STRATEGIES.index(chosen)):
                chosen = s  # the strictest of several
        return chosen or self.strategies.get(data_class, DEFAULT_STRATEGIES[data_class])


@dataclass(frozen=True, slots=True)
class ColumnMask:
    """How to mask one output column.  ``data_class`` None with strategy ``"detect"``: find
    sensitive values by value detection and mask those."""

    index: int
    data_class: DataClass | None
    strategy: str
    sources: frozenset[SourceColumn]
    reason: Literal["lineage", "unresolved", "row-description", "values", "safety-net", "inexact"]


@dataclass(frozen=True, slots=True)
class MaskPlan:
    columns: tuple[ColumnMask | None, ...]
    reads_sensitive: bool = False
    deny: bool = False
    reason: str | None = None

    @property
    def active(self) -> bool:
        return self.deny or any(c is not None for c in self.columns)

    @property
    def data_classes(self) -> frozenset[DataClass]:
        return frozenset(
            c.data_class for c in self.columns if c is not None and c.data_class is not None
        )


NO_MASKS = MaskPlan(())


def plan_masks(
    lineage: Lineage, classmap: ClassMap, settings: MaskSettings | None = None
) -> MaskPlan:
    """Per output column: the class and strategy to mask with, ``detect`` when its lineage
    is unknown and the statement reads a table with sensitive columns, ``detect`` (reason
    ``values``) when it derives from a column whose values must be scanned
    (:attr:`ClassMap.scan`: free text that holds sensitive data), or nothing."""
    settings = settings or MaskSettings()
    sensitive_tables = classmap.tables
    reads_sensitive = bool(sensitive_tables) and (
        lineage.reads_unknown or not sensitive_tables.isdisjoint(lineage.tables_read)
    )
    if not lineage.returns_rows:
        return MaskPlan((), reads_sensitive)
    if reads_sensitive and not lineage.exact:
        # Columns that cannot be told apart: each may be any of them.  What they derive
        # from together masks them all (redacted); without a class, value detection.
        every = frozenset(s for c in lineage.columns for s in c.sources)
        classes = {c.data_class for s in every if (c := classmap.columns.get(s)) is not None}
        if classes:
            cls = most_sensitive(classes)
            assert cls is not None
            found = frozenset(s for s in every if s in classmap.columns)
            strategy = settings.strategy_for(cls, found)
            strategy = "redact" if strategy == "partial" else strategy
            return MaskPlan(
                tuple(ColumnMask(i, cls, strategy, found, "inexact") for i in range(max(len(lineage.columns), 1))),
                True,
            )
        if settings.unresolved == "deny":
            return MaskPlan(
                (),
                True,
                True,
                "the result columns of a statement that reads sensitive data could not be resolved",
            )
        return MaskPlan(
            tuple(
                ColumnMask(i, None, "detect", c.sources, "unresolved")
                for i, c in enumerate(lineage.columns)
            ),
            True,
        )
    out: list[ColumnMask | None] = []
    unresolved: list[str] = []
    for i, col in enumerate(lineage.columns):
        classes = {c.data_class for s in col.sources if (c := classmap.columns.get(s)) is not None}
        if classes:
            cls = most_sensitive(classes)
            assert cls is not None
            hits = [s for s in col.sources if s in classmap.columns]
            strategy = settings.strategy_for(cls, hits)
            if strategy == "partial" and not (col.direct and len(classes) == 1):
                strategy = (
                    "redact"  # a partial view of a composite value can show another value's part
                )
            out.append(ColumnMask(i, cls, strategy, frozenset(hits), "lineage"))
        elif col.unknown and reads_sensitive:
            unresolved.append(col.name)
            out.append(ColumnMask(i, None, "detect", col.sources, "unresolved"))
        elif classmap.scan and not classmap.scan.isdisjoint(col.sources):
            scanned = frozenset(s for s in col.sources if s in classmap.scan)
            out.append(ColumnMask(i, None, "detect", scanned, "values"))
        else:
            out.append(None)
    if unresolved and settings.unresolved == "deny":
        return MaskPlan(
            (), True, True, f"cannot tell what column(s) {', '.join(unresolved)} derive from"
        )
    return MaskPlan(tuple(out), reads_sensitive)


# -- masked columns in predicates (masking.predicates) --------------------------------

PredicateMode = Literal["deny", "equality", "allow"]

#: Conditions that filter rows, where ``equality`` allows point lookups.
# Where a lookup by value may be: conditions that filter rows, and NULLIF (NULL exactly
# when the stored value equals the constant tells as much as ``WHERE col = constant``).
FILTERS = frozenset(
    {"WHERE", "JOIN ... ON", "FILTER", "MERGE ... ON", "MERGE ... WHEN", "ON CONFLICT", "NULLIF"}
)


def permitted(use: PredicateUse, mode: PredicateMode) -> bool:
    """Whether ``mode`` lets a masked column be used this way."""
    if mode == "allow":
        return True
    if mode == "deny":
        return False
    if use.shape == "presence":
        return True
    return use.shape == "equality" and use.clause in FILTERS


def violation(
    lineages: Iterable[Lineage], classmap: ClassMap, mode: PredicateMode
) -> PredicateUse | None:
    """The first use of a sensitive column that ``mode`` does not permit, or None."""
    if mode == "allow" or not classmap.columns:
        return None
    for lin in lineages:
        for use in lin.predicates:
            if use.column in classmap.columns and not permitted(use, mode):
                return use
    return None


def refusal_message(use: PredicateUse, mode: PredicateMode) -> str:
    """``masked column public.customers.ssn may not be used in ORDER BY (masking.predicates
    = equality)`` (the session adds the ``dbsentry:`` prefix)."""
    return (
        f"masked column {use.column} may not be used in {use.clause} (masking.predicates = {mode})"
    )

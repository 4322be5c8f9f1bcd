"""Masking in a session: which result columns to mask, and masking them on the wire.

Two parts, both free of I/O:

- :class:`MaskingService` is shared by all sessions.  It holds, per connection, the
  classified catalog (a :class:`MaskingView`, loaded by the shell) and caches the mask
  plan of each statement text.
- :class:`SessionMasking` follows one session's protocol exchange.  Every message the
  proxy forwards upstream that the server answers is queued as an expectation; every
  server message is matched against the head of that queue, so each RowDescription,
  DataRow and CopyData is tied to the statement that produced it, in the simple and
  the extended protocol (Describe before or after Bind, pipelines, errors that skip to
  Sync).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from pglast import parser as pg_parser

from dbsentry.config import MaskingConfig
from dbsentry.engines.postgres.masking.channels import (
    ChannelMasker,
    TouchedValues,
    classified_columns,
)
from dbsentry.engines.postgres.masking.copies import copied_classes
from dbsentry.engines.postgres.masking.inference import lineages_of
from dbsentry.engines.postgres.masking.inference import refusal_message as predicate_refusal
from dbsentry.engines.postgres.masking.inference import violation as predicate_violation
from dbsentry.engines.postgres.masking.lineage import (
    ANY_SCHEMA,
    LineageError,
    MaskPlan,
    MaskSettings,
    StatementLineage,
    analyze_lineage,
    created_function_sources,
    plan_masks,
    returns_statement_texts,
)
from dbsentry.engines.postgres.masking.rows import (
    CopyMasker,
    Field,
    RowMasker,
    UnsupportedCopy,
    compile_copy_masker,
    compile_row_masker,
    decode_data_row,
    decode_row_description,
    encode_data_row,
    mask_data_row,
    mask_data_rows,
    text_type_oids,
)
from dbsentry.engines.postgres.session.functions import FunctionSafety
from dbsentry.engines.postgres.sql import parse as sqlparse
from dbsentry.engines.postgres.sql.facts import StatementFacts, setting_values
from dbsentry.engines.postgres.wire import codec, encodings
from dbsentry.engines.postgres.wire import messages as m
from dbsentry.identity.model import Identity
from dbsentry.masking import Catalog, ClassMap, DataClass
from dbsentry.masking.catalog import SourceColumn, parse_search_path
from dbsentry.masking.classes import Classification, most_sensitive, parse_class
from dbsentry.masking.derived import with_derived, with_new_tables
from dbsentry.masking.writeback import looks_masked as looks_masked  # (pg.py imports it from here)
from dbsentry.policy.cache import LRU
from dbsentry.policy.engine import Decision


@dataclass(frozen=True, slots=True)
class StatementPlan:
    lineage: StatementLineage
    plan: MaskPlan

    @property
    def active(self) -> bool:
        return self.plan.active

    @property
    def masked_columns(self) -> tuple[str, ...]:
        return tuple(sorted({str(s) for c in self.plan.columns if c is not None for s in c.sources}))

    @property
    def masked_classes(self) -> tuple[str, ...]:
        return tuple(sorted(str(d.value) for d in self.plan.data_classes))


@dataclass(frozen=True, slots=True)
class MaskingView:
    """A connection's catalog and what in it is sensitive."""

    catalog: Catalog
    classmap: ClassMap
    version: int
    # Relation names (unqualified, lower case) whose reading may yield sensitive data:
    # tables with sensitive columns and every view.  User-defined function names.
    sensitive_relnames: frozenset[str]
    user_functions: frozenset[str]
    functions: FunctionSafety  # which of its functions may change data

    @classmethod
    def build(cls, catalog: Catalog, classmap: ClassMap, version: int) -> MaskingView:
        relnames = {t for _, t in classmap.tables}
        for rel in catalog.relations.values():
            if rel.is_view:
                relnames.add(rel.name)
        functions = {f.name for f in catalog.functions.values() if f.schema != "pg_catalog"}
        return cls(
            catalog,
            classmap,
            version,
            frozenset(n.lower() for n in relnames),
            frozenset(functions),
            FunctionSafety(catalog),
        )

    def copies_sensitive_columns(self, facts: StatementFacts) -> bool:
        """Whether the values a write (or CREATE ... AS) stores come from a sensitive column.

        Columns only filtered on (WHERE, JOIN ... ON) or returned (RETURNING, masked like
        any result) do not count.
        """
        names = copied_column_names(facts.text)
        if names is None:
            return True  # cannot tell: assume the worst
        if not names:
            return False
        sensitive = self._sensitive_pairs
        tables: set[str] = set()
        for f in (facts, facts.inner) if facts.inner is not None else (facts,):
            for t in (*f.tables_read, *f.tables_written):
                tables.add(t.rpartition(".")[2].strip('"').lower())
        for name in names:
            if name == "*":
                if any(t in self._sensitive_tables for t in tables):
                    return True
            elif any((t, name) in sensitive for t in tables):
                return True
        return False

    @property
    def _sensitive_pairs(self) -> frozenset[tuple[str, str]]:
        return frozenset((c.table.lower(), c.column.lower()) for c in self.classmap.columns)

    @property
    def _sensitive_tables(self) -> frozenset[str]:
        return frozenset(c.table.lower() for c in self.classmap.columns)

    def reads_classified(self, facts: StatementFacts) -> bool:
        """Whether the statement itself reads a relation with classified columns (or a
        view): then text its errors quote, and notices raised meanwhile, may be their
        values.  Calling a function that reads them does not count (it is opaque)."""
        if not self.classmap.columns:
            return False
        return any(t.rpartition(".")[2].strip('"').lower() in self.sensitive_relnames for t in facts.tables_read)

    def may_read_sensitive(self, facts: StatementFacts) -> bool:
        """A cheap test: could this statement read sensitive data at all?"""
        if not self.classmap.columns and not self.classmap.scan:
            return False
        if facts.command in _ALWAYS_ANALYSE:
            return True
        for table in facts.tables_read:
            if table.rpartition(".")[2].strip('"').lower() in self.sensitive_relnames:
                return True
        # A function that is not built in may read anything: one of the catalog's, or one
        # created since it was read (a temporary function is never in it).
        return self.functions.calls_user_code(facts) or any(
            (name := fn.rpartition(".")[2]) in self.user_functions
            or returns_statement_texts(fn.rpartition(".")[0] or None, name)
            for fn in facts.functions
        )


# Statements whose results come from elsewhere: a cursor, a prepared statement, a table copy.
_ALWAYS_ANALYSE = frozenset({"EXECUTE", "FETCH", "COPY", "MOVE"})


# Parts of a statement whose column references filter, order or return rows rather than
# store values elsewhere.
_NOT_COPIED = frozenset(
    {
        "whereClause",
        "returningList",
        "returningClause",
        "havingClause",
        "quals",
        "sortClause",
        "groupClause",
        "joinCondition",
    }
)


def copied_column_names(sql: str) -> set[str] | None:
    """Column names (lower case; ``*`` for a star) whose values the statement stores."""
    try:
        tree = orjson.loads(sqlparse.parse_json(sql))
    except (pg_parser.ParseError, orjson.JSONDecodeError, RecursionError):
        return None
    out: set[str] = set()
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _NOT_COPIED:
                    continue
                if key == "ColumnRef":
                    fields = value.get("fields", ())
                    if fields:
                        last = fields[-1]
                        if "A_Star" in last:
                            out.add("*")
                        elif "String" in last:
                            out.add(str(last["String"].get("sval", "")).lower())
                    continue
                if isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    return out


def _may_set_path(view: MaskingView, facts: StatementFacts) -> bool:
    """Whether the statement runs user code that could change the session's search_path
    (``set_config`` in a function lasts beyond it): code the catalog cannot vouch for, or
    that changes something."""
    for fn in facts.functions:
        if fn.rpartition(".")[2] in view.user_functions and view.functions.function(fn)[1]:
            return True
    return False


def writes_masked_literal(sql: str) -> bool:
    """Whether a string constant of ``sql`` is a masked value (see :func:`looks_masked`)."""
    if "*" not in sql and "<" not in sql and ".invalid" not in sql:
        return False
    try:
        tree = orjson.loads(sqlparse.parse_json(sql))
    except (pg_parser.ParseError, orjson.JSONDecodeError, RecursionError):
        return True  # cannot tell: the statement is refused elsewhere anyway
    stack: list[Any] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            const = node.get("A_Const")
            if isinstance(const, dict):
                sval = const.get("sval")
                if isinstance(sval, dict) and looks_masked(str(sval.get("sval", ""))):
                    return True
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(node)
    return False


def load_or_create_key(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        return key


class MaskingService:
    """Shared by all sessions: the classified catalog of each connection, and plans."""

    def __init__(
        self,
        config: MaskingConfig,
        key: bytes,
        derived: Mapping[str, Mapping[SourceColumn, Classification]] | None = None,
        save_derived: Callable[[Mapping[str, Mapping[SourceColumn, Classification]]], None] | None = None,
    ) -> None:
        self.config = config
        self.key = key
        # Classes columns inherited from copies of classified data, per connection; kept by
        # ``save_derived`` (the shell's file) across restarts.
        self.derived: dict[str, dict[SourceColumn, Classification]] = {k: dict(v) for k, v in (derived or {}).items()}
        self._save_derived = save_derived
        self._base: dict[str, tuple[Catalog, ClassMap]] = {}
        # (found,): None is a result too (the statement cannot be analysed)
        self._copies: LRU[tuple[object, ...], tuple[dict[SourceColumn, Classification] | None]] = LRU(4096)
        self._version = 0
        self.exempt_groups = frozenset(config.exempt_groups)
        strategies: dict[DataClass, str] = {}
        for name, strategy in config.strategies.items():
            cls = parse_class(name)
            if cls is not None:
                strategies[cls] = strategy
        self.settings = MaskSettings(unresolved=config.unresolved)
        if strategies:
            self.settings = MaskSettings(
                strategies={**self.settings.strategies, **strategies}, unresolved=config.unresolved
            )
        self.views: dict[str, MaskingView] = {}
        self._plans: LRU[tuple[object, ...], tuple[StatementPlan, ...] | None] = LRU(4096)

    def current(self, connection: str) -> MaskingView | None:
        return self.views.get(connection)

    def safety_net_for(self, production: bool) -> bool:
        """Whether a session's results get the safety net (``masking.safety_net``)."""
        mode = self.config.safety_net
        return mode == "always" or (mode == "production" and production)

    def install(self, connection: str, catalog: Catalog, classmap: ClassMap, *, follow_renames: bool = True) -> MaskingView:
        """Install a connection's catalog read.  ``follow_renames``: a column renamed (same
        relation oid and attribute number) keeps its class; off where those numbers do not
        name the same column across reads (MySQL)."""
        self._base[connection] = (catalog, classmap)
        old = self.views.get(connection)
        if old is not None and follow_renames:
            self._keep_lost_classes(connection, old, catalog, classmap)
        merged = with_derived(catalog, classmap, self.derived.get(connection, {}), self.config.overrides)
        # Versions are unique across connections: plans are cached by version and text.
        self._version += 1
        view = MaskingView.build(catalog, merged, self._version)
        self.views[connection] = view
        return view

    def _keep_lost_classes(self, connection: str, old: MaskingView, catalog: Catalog, classmap: ClassMap) -> None:
        """A column keeps its class when a rename or a new comment would take it away
        (columns are the same by table oid and attribute number); only the policy removes
        one (an override wins in :func:`with_derived`)."""
        lost: dict[SourceColumn, Classification] = {}
        for (oid, attnum), found in old.classmap.attrs.items():
            if (oid, attnum) in classmap.attrs:
                continue
            hit = catalog.column_at(oid, attnum)
            if hit is None:
                continue  # dropped
            rel, col = hit
            src = rel.source(col.name)
            lost[src] = Classification(found.data_class, "copy", f"kept from before a change of name or comment: {found.evidence}")
        if lost:
            self.inherit(connection, lost, reinstall=False)

    def copies(
        self,
        view: MaskingView,
        sql: str,
        search_path: tuple[str, ...] | None = None,
        candidates: frozenset[str] = frozenset(),
    ) -> dict[SourceColumn, Classification] | None:
        """The columns ``sql`` stores classified values in, with the class each would
        inherit; None when the statement cannot be analysed.  Cached like plans: a write
        is analysed once per text, not at every run."""
        path = search_path if search_path is not None else view.catalog.search_path
        key = (view.version, sql, path, candidates)
        cached = self._copies.get(key)
        if cached is not None:
            return cached[0]
        found: dict[SourceColumn, Classification] | None
        try:
            found = copied_classes(analyze_lineage(sql, view.catalog, path, candidates=candidates), view.classmap)
        except LineageError:
            found = None
        self._copies.put(key, (found,))
        return found

    def inherit(self, connection: str, copies: Mapping[SourceColumn, Classification], reinstall: bool = True) -> None:
        """Columns that now hold copies of classified data keep their class, for every
        session from now on and after a restart."""
        known = self.derived.setdefault(connection, {})
        changed = False
        for src, found in copies.items():
            if src.schema in ("pg_temp", "") or src.schema.startswith("pg_temp_"):
                continue  # the session's own, gone with it
            old = known.get(src)
            if old is None or most_sensitive({old.data_class, found.data_class}) != old.data_class:
                known[src] = found
                changed = True
        if not changed:
            return
        if self._save_derived is not None:
            self._save_derived(self.derived)
        base = self._base.get(connection)
        if base is not None and reinstall:
            self.install(connection, with_new_tables(base[0], copies), base[1])

    def plans(
        self,
        view: MaskingView,
        sql: str,
        facts: Sequence[StatementFacts],
        decision: Decision,
        search_path: tuple[str, ...] | None = None,
        candidates: frozenset[str] = frozenset(),
        safety_net: bool = False,
    ) -> tuple[StatementPlan | None, ...]:
        """One plan per statement (None where nothing can be sensitive), with unqualified
        names resolved on ``search_path`` (default: the catalog's) and in ``candidates``;
        with ``safety_net`` a COPY keeps its plan, for its format."""
        copies = safety_net and any(f.command == "COPY" for f in facts)
        if not copies and not any(view.may_read_sensitive(f) for f in facts):
            return tuple(None for _ in facts)
        path = search_path if search_path is not None else view.catalog.search_path
        key = (view.version, sql, decision.masks, path, candidates)
        cached = self._plans.get(key)
        if cached is None:
            settings = self._settings_for(decision)
            try:
                lineages = analyze_lineage(sql, view.catalog, path, candidates=candidates)
            except LineageError:
                lineages = []
            if len(lineages) != len(facts):
                # Cannot tie lineage to statements: judge every result by its values.
                cached = tuple(StatementPlan(_UNKNOWN_LINEAGE, _rescan_plan(self.config.unresolved)) for _ in facts)
            else:
                cached = tuple(StatementPlan(lin, _plan(lin, view.classmap, settings)) for lin in lineages)
            self._plans.put(key, cached)
        return tuple(p if _matters(p) or (copies and p.lineage.copy is not None) else None for p in cached)

    def _settings_for(self, decision: Decision) -> MaskSettings:
        columns: dict[str, str] = {}
        for spec in decision.masks:
            for col in spec.columns or ():
                columns[col] = spec.strategy
        if not columns:
            return self.settings
        return MaskSettings(self.settings.strategies, columns, self.settings.unresolved)


def _plan(lin: StatementLineage, classmap: ClassMap, settings: MaskSettings) -> MaskPlan:
    if lin.prepares is not None or lin.declares is not None:
        # PREPARE / DECLARE CURSOR return nothing themselves: plan the rows that EXECUTE /
        # FETCH will return, so that the session can use it for them.
        return plan_masks(replace(lin, returns_rows=True), classmap, settings)
    return plan_masks(lin, classmap, settings)


def _matters(p: StatementPlan) -> bool:
    """A plan the session needs: it masks or refuses something, or its result has columns
    nobody can name (EXECUTE, FETCH, inexact ``*``) while sensitive data may be read."""
    lin = p.lineage
    return p.active or (p.plan.reads_sensitive and lin.returns_rows and not lin.exact)


def _rescan_plan(unresolved: str) -> MaskPlan:
    """Results whose lineage is not known: every column judged by its values (or refused)."""
    return MaskPlan((), reads_sensitive=True, deny=unresolved == "deny", reason="lineage unavailable")


_UNKNOWN_LINEAGE = StatementLineage("UNKNOWN", (), frozenset(), True, exact=False, reads_unknown=True)
def _result_formats(formats: tuple[int, ...] | bytes) -> tuple[int, ...]:
    """The result formats of a Bind kept whole (see SessionMasking.sent)."""
    if isinstance(formats, bytes):
        return codec.decode_bind(formats, 0, len(formats)).result_formats
    return formats


def _may_scan(fields: Sequence[Field] | None) -> bool:
    """Whether the safety net may scan a column of these fields (unknown: it may), so
    that their result formats matter."""
    return fields is None or any(f.type_oid in _NET_OIDS or f.type_oid >= 16384 for f in fields)


# text, varchar, bpchar, name, unknown, json, jsonb: what the safety net scans (with the
# extension types); see pg_values.make_safety_net_masker
_NET_OIDS = frozenset({25, 1043, 1042, 19, 705, 114, 3802})
# What a result without a plan is compiled against: the safety net alone.
_NO_PLAN = StatementPlan(StatementLineage("SELECT", (), frozenset(), True), MaskPlan(()))


# ---------------------------------------------------------------------- per session


@dataclass(slots=True)
class _Query:
    """A simple Query (or FunctionCall): answered statement by statement, then ReadyForQuery."""

    plans: tuple[StatementPlan | None, ...]
    # per statement: it reads classified columns (see MaskingView.reads_classified)
    strict: tuple[bool, ...] = ()
    settings: tuple[bool, ...] = ()  # per statement: its result shows settings
    index: int = 0
    rows: RowMasker | None = None
    copy: CopyMasker | None = None
    touch: tuple[tuple[int, DataClass], ...] = ()  # columns whose raw values are remembered
    touched_rows: int = 0
    fields: tuple[Field, ...] | None = None  # of the current result, when it shows settings
    # Statement index -> (name, plan) of each SQL PREPARE: known once it completed.
    prepares: dict[int, tuple[str, StatementPlan | None]] = field(default_factory=dict)

    @property
    def plan(self) -> StatementPlan | None:
        return self.plans[self.index] if self.index < len(self.plans) else None

    @property
    def reads_classified(self) -> bool:
        return self.index < len(self.strict) and self.strict[self.index]

    @property
    def shows_settings(self) -> bool:
        return self.index < len(self.settings) and self.settings[self.index]

    def next_statement(self) -> None:
        self.index += 1
        self.rows = None
        self.copy = None
        self.touch = ()
        self.touched_rows = 0


@dataclass(slots=True)
class _Simple:
    """Parse, Bind or Close: answered by one ParseComplete / BindComplete / CloseComplete."""


@dataclass(slots=True)
class _Parse:
    """A Parse: its plan counts once ParseComplete says the statement exists."""

    name: str
    plan: StatementPlan | None


@dataclass(slots=True)
class _Describe:
    kind: str
    name: str


@dataclass(slots=True)
class _Execute:
    portal: str
    plan: StatementPlan | None
    fields: tuple[Field, ...] | None
    formats: tuple[int, ...] | bytes  # bytes: the Bind, decoded when the formats matter
    reads_classified: bool = False
    shows_settings: bool = False
    rows: RowMasker | None = None
    compiled: bool = False
    touch: tuple[tuple[int, DataClass], ...] = ()
    touched_rows: int = 0
    prepares: tuple[str, StatementPlan | None] | None = None  # it runs a SQL PREPARE


@dataclass(slots=True)
class _Sync:
    pass


_Item = _Query | _Simple | _Parse | _Describe | _Execute | _Sync
_SIMPLE = _Simple()
_SYNC = _Sync()
# Rows of each result whose classified values are remembered (TouchedValues): decoding
# rows a second time costs, and a bulk export would fill the set with its first rows anyway.
TOUCH_ROWS = 1000
# Functions that carry a value out of the statement by another channel than its result.
SIDE_CHANNEL_FUNCTIONS = frozenset(
    {
        "pg_notify",
        "set_config",
        # state another statement reads back: locks in pg_locks, large objects, sequences
        *(f"pg_{t}advisory_{x}lock{s}" for t in ("", "try_") for x in ("", "xact_") for s in ("", "_shared")),
        "lo_from_bytea",
        "lo_put",
        "lo_create",
        "lo_import",
        "lowrite",
        "setval",
        "pg_logical_emit_message",
    }
)


def _never() -> bool:
    return False


@dataclass(slots=True)
class SessionMasking:
    service: MaskingService
    connection: str
    # Whether the identity sees real values right now (exempt groups, live grants).
    exempt: Callable[[], bool] = _never
    expect: deque[_Item] = field(default_factory=deque)
    statements: dict[str, StatementPlan | None] = field(default_factory=dict)
    statement_fields: dict[str, tuple[Field, ...] | None] = field(default_factory=dict)
    portals: dict[str, tuple[str, tuple[int, ...] | bytes]] = field(default_factory=dict)
    portal_fields: dict[str, tuple[Field, ...] | None] = field(default_factory=dict)
    cursors: dict[str, StatementPlan | None] = field(default_factory=dict)  # DECLARE name -> plan
    # statement name -> whether it reads classified columns
    statement_strict: dict[str, bool] = field(default_factory=dict)
    # raw values of classified columns this session's masked results contained
    touched: TouchedValues = field(default_factory=TouchedValues)
    _pending_strict: tuple[bool, ...] = ()  # of the last plan(), for the frame sent next
    _pending_settings: tuple[bool, ...] = ()
    statement_settings: dict[str, bool] = field(default_factory=dict)
    _channels: tuple[int, ChannelMasker] | None = None
    # The session's search_path as far as the proxy can tell (None: the connection's
    # default, the catalog's), and the other schemas it may hold: a SET that failed or
    # was rolled back, a value that is not a constant (ANY_SCHEMA), a function that may
    # have set it.  Unqualified names are masked by every candidate.
    search_path: tuple[str, ...] | None = None
    path_candidates: frozenset[str] = frozenset()
    # What each prepared statement was planned from, to plan it again when the path
    # changes: (sql, facts, decision, statement index).
    sources: dict[str, tuple[str, tuple[StatementFacts, ...], Decision, int]] = field(default_factory=dict)
    # Prepared statements sent but not confirmed yet (a PREPARE or Parse may fail, e.g. a
    # duplicate name: the statement of that name stays what it was).
    pending: dict[str, StatementPlan | None] = field(default_factory=dict)
    _planned: tuple[tuple[StatementPlan | None, ...], dict[int, tuple[str, StatementPlan | None]]] | None = None
    # Protocol statement name -> the SQL PREPARE it runs (name, plan).
    sql_prepares: dict[str, tuple[str, StatementPlan | None]] = field(default_factory=dict)
    _last_source: tuple[str, tuple[StatementFacts, ...], Decision] | None = None
    # masking.safety_net for this session: results without a plan are scanned too.
    safety_net: bool = False
    # The Python codec of the session's client_encoding (names, values, notices are in it).
    enc: str = "utf-8"
    _net_none: dict[tuple[bytes | tuple[Field, ...], tuple[int, ...] | None], None] = field(default_factory=dict)
    _sources: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    _decoded: dict[bytes, tuple[Field, ...]] = field(default_factory=dict)
    _described_sources: dict[tuple[str, tuple[int, ...]], tuple[Field, ...]] = field(default_factory=dict)
    # The catalog version the prepared statements' plans were made against: a newer one
    # (DDL, a classification, a comment, through any session, worker or node) plans them
    # again, as PostgreSQL itself re-plans them.
    _statements_version: int = 0
    # What each statement the server confirmed was planned from (``sources`` also holds
    # the text of a PREPARE that then failed, which must not replace the server's one).
    _confirmed_sources: dict[str, tuple[str, tuple[StatementFacts, ...], Decision, int] | None] = field(
        default_factory=dict
    )

    # -------------------------------------------------------------- client side

    def start_search_path(self, settings: Sequence[tuple[str, str]] | None, users: Sequence[str] = ()) -> None:
        """The search_path the session starts with: the client's startup setting (None:
        options the proxy cannot read), and ``$user`` may be any of ``users``."""
        self.path_candidates = frozenset(u for u in users if u)
        if settings is None:
            self.path_candidates |= {ANY_SCHEMA}
            return
        for name, value in settings:
            if name == "search_path":
                self._set_path(parse_search_path(value))

    def follow_settings(self, facts: Sequence[StatementFacts]) -> None:
        """Before statements run: what they may do to the session's search_path."""
        view = self.service.current(self.connection)
        for f in facts:
            if f.command in ("RESET ALL", "DISCARD ALL"):
                self._set_path(None)
            elif "search_path" in f.settings or "?" in f.settings:
                for value in setting_values(f.text, "search_path"):
                    if value is None:
                        self._set_path(None)
                    elif isinstance(value, str):
                        self._set_path(parse_search_path(value))
                    else:
                        self._any_schema()
                if "?" in f.settings:  # a setting not named (UPDATE pg_settings ...)
                    self._any_schema()
            if ANY_SCHEMA not in self.path_candidates and (
                f.dynamic_sql or (view is not None and _may_set_path(view, f))
            ):
                self._any_schema()

    def _any_schema(self) -> None:
        """The path may now be anything: every schema is a candidate."""
        if ANY_SCHEMA not in self.path_candidates:
            self.path_candidates |= {ANY_SCHEMA}
            for name in self.statements:
                self.statements[name] = self._replan(name)
            for name in self.pending:
                self.pending[name] = self._replan(name)

    def _set_path(self, path: tuple[str, ...] | None) -> None:
        view = self.service.current(self.connection)
        default = view.catalog.search_path if view is not None else ()
        old = self.search_path if self.search_path is not None else default
        new = path if path is not None else default
        # Both stay candidates: the change may fail or be rolled back.
        before = self.path_candidates
        self.path_candidates |= {*old, *new, *(s.lower() for s in new)}
        self.search_path = path
        if new != old or self.path_candidates != before:
            # PostgreSQL analyses a prepared statement again with the new path: so do we.
            for name in self.statements:
                self.statements[name] = self._replan(name)
            for name in self.pending:
                self.pending[name] = self._replan(name)

    def _replan(self, name: str) -> StatementPlan | None:
        view = self.service.current(self.connection)
        source = self.sources.get(name)
        if view is None or source is None:
            # Not known how it was planned: judge its results by their values.
            return StatementPlan(_UNKNOWN_LINEAGE, _rescan_plan(self.service.config.unresolved))
        sql, facts, decision, index = source
        return self._plans(view, sql, facts, decision)[index]

    def _plans(
        self, view: MaskingView, sql: str, facts: Sequence[StatementFacts], decision: Decision
    ) -> tuple[StatementPlan | None, ...]:
        path = self.search_path if self.search_path is not None else view.catalog.search_path
        return self.service.plans(view, sql, facts, decision, path, self.path_candidates - set(path), self.safety_net)

    def statement(self, name: str) -> StatementPlan | None:
        """The plan of prepared statement ``name`` as the server will run it next."""
        view = self.service.current(self.connection)
        if view is not None and view.version != self._statements_version:
            if self._statements_version:
                # planned against an older catalog: again, from what the server has (a
                # statement whose text is not known keeps its plan: judging it by values
                # instead could show less)
                for n in self.statements:
                    source = self._confirmed_sources.get(n)
                    if source is not None:
                        self.statements[n] = self._plans(view, *source[:3])[source[3]]
            self._statements_version = view.version
        if name in self.pending:
            return self.pending[name]
        return self.statements.get(name)

    def copies(self, sql: str) -> dict[SourceColumn, Classification] | None:
        """See :meth:`MaskingService.copies`, with this session's search_path."""
        view = self.service.current(self.connection)
        if view is None:
            return {}
        path = self.search_path if self.search_path is not None else view.catalog.search_path
        return self.service.copies(view, sql, path, self.path_candidates - set(path))

    def stores_prepared(self, facts: StatementFacts) -> bool:
        """Whether ``CREATE TABLE t AS EXECUTE name`` stores what the prepared statement
        returns of classified (or unknown) columns; True when the statement is unknown."""
        inner = facts.inner
        if facts.command != "CREATE TABLE AS" or inner is None or inner.command != "EXECUTE":
            return False
        view = self.service.current(self.connection)
        name = inner.prepared_name
        if view is None or name is None or (name not in self.statements and name not in self.pending):
            return view is not None
        plan = self.statement(name)
        if plan is None:
            return False  # it reads nothing sensitive
        return any(c.unknown or any(s in view.classmap.columns for s in c.sources) for c in plan.lineage.columns)

    def creates_classified_function(self, facts: StatementFacts) -> bool:
        """Whether the statement creates a LANGUAGE sql function or procedure whose body
        returns or stores values of classified columns (True when it cannot tell)."""
        if facts.command != "CREATE FUNCTION":  # (CREATE PROCEDURE too)
            return False
        view = self.service.current(self.connection)
        if view is None:
            return False
        path = self.search_path if self.search_path is not None else view.catalog.search_path
        try:
            sources = created_function_sources(facts.text, view.catalog, path, self.path_candidates - set(path))
        except LineageError:
            return True
        return any(src in view.classmap.columns for src in sources)

    def plan(self, sql: str, facts: Sequence[StatementFacts], decision: Decision) -> tuple[StatementPlan | None, ...]:
        view = self.service.current(self.connection)
        if view is None:
            return tuple(None for _ in facts)
        self.follow_settings(facts)
        plans = list(self._plans(view, sql, facts, decision))
        self._pending_strict = tuple(view.reads_classified(f) for f in facts)
        self._pending_settings = tuple(shows_settings(f) for f in facts)
        self._last_source = (sql, tuple(facts), decision)
        prepares: dict[int, tuple[str, StatementPlan | None]] = {}
        local: dict[str, StatementPlan | None] = {}
        for i, (f, p) in enumerate(zip(facts, plans, strict=False)):
            if f.command == "PREPARE" and f.prepared_name is not None:
                # SQL and protocol names share one namespace.  A plan of None replaces an
                # older plan too, once the PREPARE succeeded.
                prepares[i] = (f.prepared_name, p)
                local[f.prepared_name] = p
                self.sources[f.prepared_name] = (sql, tuple(facts), decision, i)
                continue
            if p is None:
                continue
            lin = p.lineage
            if lin.declares is not None:
                self.cursors[lin.declares] = p
            elif lin.executes is not None and (lin.executes in local or lin.executes in self.statements or lin.executes in self.pending):
                plans[i] = local[lin.executes] if lin.executes in local else self.statement(lin.executes)
            elif lin.fetches is not None and lin.fetches in self.cursors:
                plans[i] = self.cursors[lin.fetches]
        out = tuple(plans)
        self._planned = (out, prepares) if prepares else None
        return out

    def path_state(self) -> tuple[object, ...]:
        """What plans depend on besides the statement: the view, the search path as far
        as it is known, whether the identity is exempt now."""
        return (self.service.current(self.connection), self.search_path, self.path_candidates, self.exempt())

    def planned_state(self) -> tuple[tuple[bool, ...], tuple[bool, ...], object]:
        """What :meth:`plan` left for the frame sent next and for :meth:`parsed`."""
        return self._pending_strict, self._pending_settings, self._last_source

    def replay_planned(
        self, strict: tuple[bool, ...], settings: tuple[bool, ...], source: tuple[str, tuple[StatementFacts, ...], Decision] | None
    ) -> None:
        """Leave what :meth:`plan` left for a statement of the same shape (see
        ``Session._shape_ruling``): ``source`` None when it left no source."""
        self._pending_strict = strict
        self._pending_settings = settings
        if source is not None:
            self._last_source = source
        self._planned = None

    def sent(
        self,
        t: int,
        buf: bytes,
        start: int,
        end: int,
        plans: tuple[StatementPlan | None, ...] = (),
        names: tuple[str, str] | None = None,
    ) -> None:
        """A frame of type ``t`` went upstream; queue what the server will answer.
        ``names``: what the session read of the frame's names already (see
        ``Session._frame_names``), in this session's encoding."""
        strict, self._pending_strict = self._pending_strict, ()
        settings, self._pending_settings = self._pending_settings, ()
        if t == m.Q_QUERY or t == m.Q_FUNCTION_CALL:
            item = _Query(plans, strict, settings) if t == m.Q_QUERY else _Query(plans)
            planned, self._planned = self._planned, None
            if planned is not None and planned[0] is plans:
                item.prepares = planned[1]
                for name, plan in planned[1].values():
                    self.pending[name] = plan
            self.expect.append(item)
        elif t == m.Q_PARSE:
            name = names[0] if names is not None else codec.read_cstr(buf, start, end, self.enc)[0]
            plan = self.statement(name)  # as parsed() planned it
            self.pending[name] = plan
            self.expect.append(_Parse(name, plan))
        elif t == m.Q_BIND:
            if names is not None:
                portal, stmt = names
            else:
                portal, pos = codec.read_cstr(buf, start, end, self.enc)
                stmt, _ = codec.read_cstr(buf, pos, end, self.enc)
            # Result formats matter only where something may be masked: skip the decode
            # for statements with nothing sensitive (the usual case).
            formats: tuple[int, ...] | bytes = ()
            if self.statement(stmt) or self.statement_settings.get(stmt):
                formats = codec.decode_bind(buf, start, end, self.enc).result_formats
            elif self.safety_net and _may_scan(self.statement_fields.get(stmt)):
                formats = bytes(buf[start:end])  # the safety net may need them: decoded then
            self.portals[portal] = (stmt, formats)
            self.portal_fields.pop(portal, None)
            self.expect.append(_SIMPLE)
        elif t == m.Q_DESCRIBE:
            kind, name = names if names is not None else codec.decode_describe_or_close(buf, start, end, self.enc)
            self.expect.append(_Describe(kind, name))
        elif t == m.Q_EXECUTE:
            if names is not None and buf.find(b"\x00", start, end) + 5 <= end:
                portal = names[0]  # what decode_execute reads of a whole Execute
            else:
                portal = codec.decode_execute(buf, start, end, self.enc).portal
            stmt, formats = self.portals.get(portal, ("", ()))
            fields = self.portal_fields.get(portal) or self.statement_fields.get(stmt)
            execute = _Execute(portal, self.statement(stmt), fields, formats)
            execute.prepares = self.sql_prepares.get(stmt)
            execute.reads_classified = self.statement_strict.get(stmt, False) or _classified(execute.plan)
            execute.shows_settings = self.statement_settings.get(stmt, False)
            if execute.prepares is not None:
                self.pending[execute.prepares[0]] = execute.prepares[1]
            self.expect.append(execute)
        elif t == m.Q_CLOSE:
            kind, name = names if names is not None else codec.decode_describe_or_close(buf, start, end, self.enc)
            if kind == "S":
                self.statements.pop(name, None)
                self.pending.pop(name, None)
                self.sources.pop(name, None)
                self.statement_fields.pop(name, None)
                self.statement_strict.pop(name, None)
                self.statement_settings.pop(name, None)
                self._sources.pop(name, None)
            else:
                self.portals.pop(name, None)
                self.portal_fields.pop(name, None)
            self.expect.append(_SIMPLE)
        elif t == m.Q_SYNC:
            self.expect.append(_SYNC)

    def inference(
        self, sql: str, facts: Sequence[StatementFacts], decision: Decision, identity: Identity, environment: str, production: bool
    ) -> Decision | None:
        """A refusal when the statement uses a masked column other than as an output value
        in a way ``masking.predicates`` does not permit for this identity (its caller has
        checked that the identity is not exempt), or None."""
        view = self.service.current(self.connection)
        mode = self.service.config.predicates.mode_for(identity.kind, identity.groups, environment, production)
        if view is None or mode == "allow" or not any(
            view.may_read_sensitive(f) or any(t.rpartition(".")[2].strip('"').lower() in view.sensitive_relnames for t in f.tables_written)
            for f in facts
        ):
            return None
        # UPDATE and DELETE read what they change: lineage of every statement touching a
        # sensitive table, with the session's search path as plan() followed it
        path = self.search_path if self.search_path is not None else view.catalog.search_path
        lineages = lineages_of(sql, view.catalog, path, self.path_candidates - set(path))
        if lineages is None:
            message = f"dbsentry cannot tell how this statement uses masked columns (masking.predicates = {mode})"
            return Decision("deny", ("masking.predicates",), message)
        use = predicate_violation(lineages, view.classmap, mode)
        if use is None:
            return None
        return Decision("deny", ("masking.predicates",), predicate_refusal(use, mode))

    def parsed(self, name: str, plan: StatementPlan | None, source: tuple[str, tuple[int, ...]] | None = None) -> None:
        """A Parse of ``name`` is about to be sent, planned by the last :meth:`plan` of its
        text (None: refused, nothing to plan); ``source`` is its text and parameter types.
        A statement parsed again gets the fields a Describe of the same source told
        (asyncpg re-parses its unnamed statement before each Bind without another
        Describe, and may parse its type queries in between)."""
        self.pending[name] = plan
        sql = source[0] if source is not None else None
        last = self._last_source
        self.sql_prepares.pop(name, None)
        if sql is not None and last is not None and last[0] == sql:
            self.sources[name] = (*last, 0)
            facts = last[1]
            if len(facts) == 1 and facts[0].command == "PREPARE" and facts[0].prepared_name is not None:
                self.sql_prepares[name] = (facts[0].prepared_name, plan)
        else:
            self.sources.pop(name, None)
        fields = self._described_sources.get(source) if source is not None else None
        if fields is not None:
            self.statement_fields[name] = fields
        else:
            self.statement_fields.pop(name, None)
        if source is None:
            self._sources.pop(name, None)
        else:
            self._sources[name] = source
        strict, self._pending_strict = self._pending_strict, ()
        settings, self._pending_settings = self._pending_settings, ()
        self.statement_strict[name] = bool(strict and strict[0])
        self.statement_settings[name] = bool(settings and settings[0])

    def side_channel(self, facts: Sequence[StatementFacts]) -> str | None:
        """Why a statement of an identity under masking is refused for sending a value
        out by another channel than its result (``pg_notify``, ``set_config``) while it
        may read sensitive data; None when it is not.  Literal values (``NOTIFY ch,
        'x'``, ``SET application_name = 'x'``) and statements that read nothing
        sensitive pass."""
        view = self.service.current(self.connection)
        if view is None:
            return None
        for f in facts:
            called = {fn.rpartition(".")[2].lower() for fn in f.functions} & SIDE_CHANNEL_FUNCTIONS
            if called and view.may_read_sensitive(f):
                name = sorted(called)[0]
                return f"{name}() may not carry data of a statement that reads sensitive columns"
        return None

    def _confirm(self, name: str, plan: StatementPlan | None) -> None:
        """The server created prepared statement ``name``."""
        if self.pending.get(name, plan) is plan:
            self.pending.pop(name, None)
        self.statements[name] = plan
        self._confirmed_sources[name] = self.sources.get(name)

    # -------------------------------------------------------------- server side

    def received(self, t: int, buf: bytes, start: int, end: int) -> bytes | None:
        """A server frame; returns the frame to send instead, or None to pass it as is."""
        expect = self.expect
        head = expect[0] if expect else None
        # DataRow and CopyData frames come through received_rows, in runs.
        if t == m.R_ROW_DESCRIPTION:
            # Decoded only for results that may need masking (a statement with a plan).
            if isinstance(head, _Query):
                plan = head.plan
                head.fields = decode_row_description(bytes(buf[start:end])) if head.shows_settings else None
                if plan is not None:
                    fields = decode_row_description(bytes(buf[start:end]))
                    head.rows = self._compile(plan, fields, None)
                    head.touch = _touch_columns(head.rows, fields, None)
                elif self.safety_net:
                    head.rows = self._net_only(bytes(buf[start:end]), None)
                else:
                    head.rows = None
            elif isinstance(head, _Describe):
                if self._describes_plan(head):
                    self._described(head, decode_row_description(bytes(buf[start:end])))
                elif self.safety_net:
                    self._described(head, self._fields_of(bytes(buf[start:end])))
                else:
                    self._described(head, None)
                expect.popleft()
            return None
        if t == m.R_COMMAND_COMPLETE or t == m.R_EMPTY_QUERY:
            if isinstance(head, _Query):
                prepared = head.prepares.pop(head.index, None)
                if prepared is not None:
                    self._confirm(*prepared)
                head.next_statement()
            elif isinstance(head, _Execute):
                expect.popleft()
                if head.prepares is not None:
                    self._confirm(*head.prepares)
            return None
        if t == m.R_PORTAL_SUSPENDED:
            if isinstance(head, _Execute):
                expect.popleft()
            return None
        if t == m.R_ERROR:
            strict = self._reads_classified(head)
            if isinstance(head, _Query):
                head.plans = head.plans[: head.index]  # the rest of the string is skipped
                self._unconfirmed(name for name, _ in head.prepares.values())
                head.prepares.clear()
            else:
                while expect and not isinstance(expect[0], _Sync):
                    item = expect.popleft()  # the server skips to the next Sync
                    if isinstance(item, _Parse):
                        self._unconfirmed((item.name,))
                    elif isinstance(item, _Execute) and item.prepares is not None:
                        self._unconfirmed((item.prepares[0],))
            return self._masked_fields(b"E", buf, start, end, strict)
        if t == m.R_NOTICE:
            return self._masked_fields(b"N", buf, start, end, self._reads_classified(head))
        if t == m.R_NOTIFICATION:
            if self.exempt():
                return None
            note = codec.decode_notification(buf, start, end, self.enc)
            payload = self.channels().notification(note.channel, note.payload)
            return None if payload is None else codec.encode_notification(replace(note, payload=payload), self.enc)
        if t == m.R_PARAMETER_STATUS:
            if self.exempt():
                return None
            ps = codec.decode_raw_parameter_status(buf, start, end, self.enc)
            value = self.channels().parameter(ps.name, ps.value)
            return None if value is None else codec.encode_raw_parameter_status(ps.name, value, self.enc)
        if t == m.R_FUNCTION_CALL_RESPONSE:
            # FunctionCall is refused for identities under masking (see Session); should
            # one be answered anyway (a grant that ended meanwhile), its value is NULL.
            return None if self.exempt() else codec.frame(b"V", b"\xff\xff\xff\xff")
        if t == m.R_READY:
            while expect and not isinstance(expect[0], _Query | _Sync):
                expect.popleft()
            if expect:
                expect.popleft()
            return None
        if t in _ONE_ANSWER:
            if isinstance(head, _Parse):
                self._confirm(head.name, head.plan)
                expect.popleft()
            elif expect and isinstance(head, _Simple):
                expect.popleft()
            return None
        if t == m.R_NO_DATA:
            if isinstance(head, _Describe):
                self._described(head, None)
                expect.popleft()
            return None
        if t == m.R_COPY_OUT:
            if isinstance(head, _Query) and head.plan is not None and not self.exempt():
                plan = head.plan
                copy = plan.lineage.copy
                if copy is not None:
                    try:
                        head.copy = compile_copy_masker(
                            plan.plan, copy, key=self.service.key, safety_net=self.safety_net
                        )
                    except UnsupportedCopy:
                        head.copy = None  # refused before forwarding; see Session
            return None
        return None

    def _unconfirmed(self, names: Iterable[str]) -> None:
        """PREPAREs or Parses that failed (or were skipped): those names keep the plan of
        the statement the server still has, if any."""
        for name in names:
            self.pending.pop(name, None)

    def received_rows(self, buf: bytes, spans: Sequence[tuple[int, int, int]], i: int) -> tuple[bytes | None, int, int]:
        """The DataRow or CopyData frames from ``spans[i]`` on, all of that frame's type, in
        one go (they change nothing in the exchange, so the masking of a result is the
        same for all of them).  Returns the frames to send in their place (None to pass them
        as they are), how many frames that covers, and where the last of them ends."""
        t, start, _ = spans[i]
        expect = self.expect
        head = expect[0] if expect else None
        if t == m.R_DATA_ROW and self._shows_settings(head):
            # Settings are free text that procedural code may have filled with anything;
            # their results are small: masked row by row, like notices.
            rows = self._rows(head)
            _, s, e = spans[i]
            frame = self._settings_row(head, buf, s, e, rows)
            return frame, 1, e
        if t == m.R_DATA_ROW:
            rows = self._rows(head)
            if rows is not None:
                if self.enc == "utf-8" or not rows.text:
                    result = self._checked(spans, i, mask_data_rows(buf, start - 5, rows))
                else:
                    result = self._checked(spans, i, _mask_rows_in_utf8(buf, spans, i, rows, self.enc))
                self._remember(head, buf, spans[i : i + result[1]])
                return result
        elif t == COPY_DATA and isinstance(head, _Query) and head.copy is not None:
            copy = head.copy
            enc = encodings.codec_for(copy.options.encoding) or "ascii" if copy.options.encoding else self.enc
            if enc == "utf-8" or copy.options.format == "binary":
                return self._checked(spans, i, copy.mask_frames(buf, start - 5))
            return self._checked(spans, i, _mask_copy_in_utf8(buf, spans, i, copy, enc))
        j = i + 1
        n = len(spans)
        while j < n and spans[j][0] == t:
            j += 1
        return None, j - i, spans[j - 1][2]

    @staticmethod
    def _checked(spans: Sequence[tuple[int, int, int]], i: int, result: tuple[bytes | None, int, int]) -> tuple[bytes | None, int, int]:
        _, count, end = result
        if count < 1 or i + count > len(spans) or spans[i + count - 1][2] != end:
            raise codec.ProtocolError("result rows do not follow the message boundaries")
        return result

    # -------------------------------------------------------------- other channels

    def channels(self) -> ChannelMasker:
        """The masker of notices, errors, notifications and parameters (per catalog)."""
        view = self.service.current(self.connection)
        version = view.version if view is not None else 0
        cached = self._channels
        if cached is None or cached[0] != version:
            svc = self.service
            tables = classified_columns(view.classmap) if view is not None else {}
            cached = (version, ChannelMasker(dict(svc.settings.strategies), svc.key, self.touched, tables))
            self._channels = cached
        return cached[1]

    def _shows_settings(self, head: _Item | None) -> bool:
        if isinstance(head, _Query):
            return head.shows_settings and not self.exempt()
        if isinstance(head, _Execute):
            return head.shows_settings and not self.exempt()
        return False

    def _settings_row(
        self, head: _Item | None, buf: bytes, start: int, end: int, rows: RowMasker | None
    ) -> bytes | None:
        """A DataRow of a result that shows settings: masked by its plan, then its text
        values masked like a notice."""
        body = bytes(buf[start:end])
        if rows is not None:
            self._remember(head, buf, ((m.R_DATA_ROW, start, end),))
            if self.enc == "utf-8" or not rows.text:
                body = mask_data_row(body, rows)
            else:
                frame, _, _ = _mask_rows_in_utf8(buf, ((m.R_DATA_ROW, start, end),), 0, rows, self.enc)
                body = body if frame is None else frame[5:]
        fields: Sequence[Field] | None = None
        formats: tuple[int, ...] = ()
        if isinstance(head, _Query):
            fields = head.fields
        elif isinstance(head, _Execute):
            fields = head.fields or self.portal_fields.get(head.portal)
            formats = _result_formats(head.formats)
        values = decode_data_row(body)
        channels = self.channels()
        changed = False
        for i, raw in enumerate(values):
            if raw is None or not _text_field(i, fields, formats):
                continue
            text = raw.decode(self.enc, "surrogateescape")
            masked = channels.text(text)
            if masked != text:
                values[i] = codec.encode_text(masked, self.enc)
                changed = True
        if not changed:
            return None if body == bytes(buf[start:end]) else codec.frame(b"D", body)
        return codec.frame(b"D", encode_data_row(values))

    def _reads_classified(self, head: _Item | None) -> bool:
        if isinstance(head, _Query):
            return head.reads_classified or _classified(head.plan)
        if isinstance(head, _Execute):
            return head.reads_classified
        return False

    def _masked_fields(self, t: bytes, buf: bytes, start: int, end: int, strict: bool) -> bytes | None:
        if self.exempt():
            return None
        fields = self.channels().fields(codec.decode_raw_fields(buf, start, end, self.enc), notice=t == b"N", strict=strict)
        return None if fields is None else codec.encode_raw_fields(t, fields, self.enc)

    def _remember(self, head: _Item | None, buf: bytes, spans: Sequence[tuple[int, int, int]]) -> None:
        """Remember the raw values of classified columns in these rows of a masked result."""
        if not isinstance(head, _Query | _Execute) or not head.touch or head.touched_rows >= TOUCH_ROWS:
            return
        touched = self.touched
        take = spans[: TOUCH_ROWS - head.touched_rows]
        head.touched_rows += len(take)
        for _, start, end in take:
            values = decode_data_row(bytes(buf[start:end]))
            for index, cls in head.touch:
                if index < len(values):
                    raw = values[index]
                    if raw is not None and len(raw) <= 1024:
                        with contextlib.suppress(UnicodeDecodeError):
                            touched.add(raw.decode(self.enc), cls)

    def _current_plan(self, head: _Item | None) -> StatementPlan | None:
        if isinstance(head, _Query):
            return head.plan
        if isinstance(head, _Execute):
            return head.plan
        return None

    def _describes_plan(self, item: _Describe) -> bool:
        """Whether the described statement or portal has a mask plan (its fields matter)."""
        if item.kind == "S":
            return self.statement(item.name) is not None or self.statement_settings.get(item.name, False)
        portal = self.portals.get(item.name)
        return (
            portal is None
            or self.statement(portal[0]) is not None
            or self.statement_settings.get(portal[0], False)
        )

    def _described(self, item: _Describe, fields: tuple[Field, ...] | None) -> None:
        if item.kind == "S":
            self.statement_fields[item.name] = fields
            source = self._sources.get(item.name)
            if source is not None and fields is not None:
                if len(self._described_sources) >= 256:
                    self._described_sources.clear()
                self._described_sources[source] = fields
        else:
            self.portal_fields[item.name] = fields
            # The Executes of this portal up to its next Describe (which answers for the
            # ones after it): stopping there keeps a pipeline of N statements linear.
            for pending in self.expect:
                if isinstance(pending, _Execute) and pending.portal == item.name and not pending.compiled:
                    pending.fields = fields
                elif isinstance(pending, _Describe) and pending.kind != "S" and pending.name == item.name:
                    break

    def _rows(self, head: _Item | None) -> RowMasker | None:
        if isinstance(head, _Query):
            return head.rows
        if isinstance(head, _Execute):
            if not head.compiled:
                head.compiled = True
                if head.plan is not None:
                    fields = head.fields or self.portal_fields.get(head.portal)
                    formats = _result_formats(head.formats)
                    head.rows = self._compile(head.plan, fields, formats)
                    head.touch = _touch_columns(head.rows, fields, formats)
                elif self.safety_net:
                    fields = head.fields or self.portal_fields.get(head.portal)
                    if fields is not None and _may_scan(fields):
                        head.rows = self._net_only(tuple(fields), _result_formats(head.formats))
            return head.rows
        return None

    def _compile(self, plan: StatementPlan, fields: Sequence[Field] | None, formats: Sequence[int] | None) -> RowMasker | None:
        if self.exempt():
            return None
        svc = self.service
        view = svc.current(self.connection)
        if fields is None:
            # No RowDescription was seen for this result (the client never asked): the
            # planned columns are masked as text-typed values.
            n = len(plan.plan.columns)
            fields = tuple(Field("", 0, 0, 25, -1, -1, 0) for _ in range(n))
        return compile_row_masker(
            plan.plan,
            fields,
            key=svc.key,
            result_formats=formats or None,
            classmap=view.classmap if view is not None else None,
            strategies=dict(svc.settings.strategies),
            safety_net=self.safety_net,
            text_oids=text_type_oids(view.catalog) if view is not None else frozenset(),
        )

    def _fields_of(self, body: bytes) -> tuple[Field, ...]:
        """decode_row_description, remembered for the RowDescriptions the safety net sees
        again and again (pgbench's Describe of every portal)."""
        fields = self._decoded.get(body)
        if fields is None:
            fields = decode_row_description(body)
            if len(self._decoded) >= 256:
                self._decoded.clear()
            self._decoded[body] = fields
        return fields

    def _net_only(self, result: bytes | tuple[Field, ...], formats: tuple[int, ...] | None) -> RowMasker | None:
        """The safety net of a result without a plan (``result``: its RowDescription's body,
        or its fields).  Most such results have no text column (or the identity is exempt):
        remember those results, so that they are not decoded and compiled again."""
        key = (result, formats)
        if key in self._net_none:
            return None
        fields = self._fields_of(result) if isinstance(result, bytes) else result
        rows = self._compile(_NO_PLAN, fields, formats)
        if rows is None and not self.exempt() and len(self._net_none) < 256:
            self._net_none[key] = None
        return rows


# -- sessions in another client encoding than UTF-8 ---------------------------------------------
#
# The maskers read and write UTF-8.  A session in another encoding has its text values
# transcoded to UTF-8 before masking and back after; a value masking left alone is sent as
# the server sent it, byte for byte.


def _run_end(spans: Sequence[tuple[int, int, int]], i: int) -> int:
    t = spans[i][0]
    j = i
    while j < len(spans) and spans[j][0] == t:
        j += 1
    return j


def _frames(data: bytes) -> Iterable[bytes]:
    """The bodies of the frames in ``data`` (frames the proxy built itself)."""
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from("!I", data, pos + 1)
        yield data[pos + 5 : pos + 1 + length]
        pos += 1 + length


def _mask_rows_in_utf8(
    buf: bytes, spans: Sequence[tuple[int, int, int]], i: int, rows: RowMasker, enc: str
) -> tuple[bytes | None, int, int]:
    j = _run_end(spans, i)
    cols = rows.text
    originals: list[list[bytes | None]] = []
    converted: list[list[bytes | None]] = []
    for _, s, e in spans[i:j]:
        values = decode_data_row(bytes(buf[s:e]))
        conv = list(values)
        for k in cols:
            v = conv[k] if k < len(conv) else None
            if v is not None:
                conv[k] = v.decode(enc, "surrogateescape").encode("utf-8", "surrogateescape")
        originals.append(values)
        converted.append(conv)
    utf8 = b"".join(codec.frame(b"D", encode_data_row(conv)) for conv in converted)
    out, count, _ = mask_data_rows(utf8, 0, rows)
    if out is None:
        return None, j - i, spans[j - 1][2]
    if count != j - i:
        raise codec.ProtocolError("result rows do not follow the message boundaries")
    back = []
    for r, body in enumerate(_frames(out)):
        values = decode_data_row(body)
        for k in cols:
            v = values[k] if k < len(values) else None
            if v is None:
                continue
            # what masking did not change goes out as the server sent it
            values[k] = originals[r][k] if v == converted[r][k] else codec.encode_text(v.decode("utf-8", "surrogateescape"), enc)
        back.append(codec.frame(b"D", encode_data_row(values)))
    return b"".join(back), j - i, spans[j - 1][2]


def _mask_copy_in_utf8(
    buf: bytes, spans: Sequence[tuple[int, int, int]], i: int, copy: CopyMasker, enc: str
) -> tuple[bytes | None, int, int]:
    j = _run_end(spans, i)
    payloads = [bytes(buf[s:e]) for _, s, e in spans[i:j]]
    utf8 = b"".join(codec.frame(b"d", p.decode(enc, "surrogateescape").encode("utf-8", "surrogateescape")) for p in payloads)
    out, count, _ = copy.mask_frames(utf8, 0)
    if out is None:
        return None, j - i, spans[j - 1][2]
    if count != j - i:
        raise codec.ProtocolError("COPY data does not follow the message boundaries")
    back = b"".join(codec.frame(b"d", codec.encode_text(p.decode("utf-8", "surrogateescape"), enc)) for p in _frames(out))
    return back, j - i, spans[j - 1][2]


def _classified(plan: StatementPlan | None) -> bool:
    """Whether a plan masks classified columns (not only columns judged by their values)."""
    return plan is not None and bool(plan.plan.data_classes)


def _touch_columns(
    rows: RowMasker | None, fields: Sequence[Field] | None, formats: Sequence[int] | None
) -> tuple[tuple[int, DataClass], ...]:
    """The columns of a masked result whose raw values are text of a classified column."""
    if rows is None:
        return ()
    out: list[tuple[int, DataClass]] = []
    for i, mask in enumerate(rows.masks):
        if mask is None or mask.data_class is None or mask.strategy == "detect":
            continue
        if formats:
            fmt = formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)
        else:
            fmt = fields[i].format if fields is not None and i < len(fields) else 0
        oid = fields[i].type_oid if fields is not None and i < len(fields) else 25
        # text format, or a text type (whose binary form is its text)
        if fmt == 0 or oid in _TEXT_OIDS:
            out.append((i, mask.data_class))
    return tuple(out)


_TEXT_OIDS = frozenset({25, 1043, 1042, 19, 705, 18})
# Functions and relations whose results show settings' values.
_SETTINGS_FUNCTIONS = frozenset({"current_setting", "pg_show_all_settings", "current_setting_text"})
_SETTINGS_RELATIONS = frozenset({"pg_settings", "pg_file_settings", "pg_db_role_setting"})


def shows_settings(facts: StatementFacts) -> bool:
    """Whether the statement's result may show settings' values (``SHOW``,
    ``current_setting()``, ``pg_settings``)."""
    for f in (facts, facts.inner) if facts.inner is not None else (facts,):
        if f.command == "SHOW":
            return True
        if any(fn.rpartition(".")[2].lower() in _SETTINGS_FUNCTIONS for fn in f.functions):
            return True
        if any(t.rpartition(".")[2].strip('"').lower() in _SETTINGS_RELATIONS for t in f.tables_read):
            return True
    return False


def _text_field(i: int, fields: Sequence[Field] | None, formats: Sequence[int]) -> bool:
    """Whether column ``i`` is text on the wire (text format, or a text type)."""
    if formats:
        fmt = formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)
    elif fields is not None and i < len(fields):
        fmt = fields[i].format
    else:
        fmt = 0
    if fmt == 0:
        return True
    return fields is not None and i < len(fields) and fields[i].type_oid in _TEXT_OIDS
COPY_DATA = m.COPY_DATA
_ONE_ANSWER = frozenset({ord("1"), ord("2"), ord("3")})

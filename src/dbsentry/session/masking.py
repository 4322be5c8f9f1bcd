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

import os
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from pglast import parser as pg_parser

from dbsentry.config import MaskingConfig
from dbsentry.identity.model import Identity
from dbsentry.masking import (
    Catalog,
    ClassMap,
    CopyMasker,
    DataClass,
    MaskPlan,
    MaskSettings,
    RowMasker,
    StatementLineage,
    analyze_lineage,
    compile_copy_masker,
    compile_row_masker,
    decode_row_description,
    mask_data_row,
    plan_masks,
)
from dbsentry.masking.catalog import Function
from dbsentry.masking.classes import parse_class
from dbsentry.masking.inference import lineages_of
from dbsentry.masking.inference import refusal_message as predicate_refusal
from dbsentry.masking.inference import violation as predicate_violation
from dbsentry.masking.lineage import ANY_SCHEMA, LineageError
from dbsentry.masking.rows import Field, UnsupportedCopy, mask_data_rows
from dbsentry.masking.strategies import PLACEHOLDERS
from dbsentry.policy.cache import LRU
from dbsentry.policy.engine import Decision
from dbsentry.session.functions import FunctionSafety
from dbsentry.sql.facts import StatementFacts, setting_values
from dbsentry.wire.pg import codec
from dbsentry.wire.pg import messages as m


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

    def may_read_sensitive(self, facts: StatementFacts) -> bool:
        """A cheap test: could this statement read sensitive data at all?"""
        if not self.classmap.columns:
            return False
        if facts.command in _ALWAYS_ANALYSE:
            return True
        for table in facts.tables_read:
            if table.rpartition(".")[2].strip('"').lower() in self.sensitive_relnames:
                return True
        return any(fn.rpartition(".")[2] in self.user_functions for fn in facts.functions)


# Statements whose results come from elsewhere: a cursor, a prepared statement, a table copy.
_ALWAYS_ANALYSE = frozenset({"EXECUTE", "FETCH", "COPY", "MOVE"})
_MASK_MARKERS = (*tuple(v for v in PLACEHOLDERS.values()), "****")


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
        tree = orjson.loads(pg_parser.parse_sql_json(sql))
    except pg_parser.ParseError:
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


def _may_set_path(view: MaskingView, facts: StatementFacts) -> bool:
    """Whether the statement runs user code that could change the session's search_path
    (``set_config`` inside a PL/pgSQL function lasts beyond it)."""
    for fn in facts.functions:
        schema, _, name = fn.rpartition(".")
        if name not in view.user_functions:
            continue
        found: list[Function] = (
            view.catalog.functions_named(schema, name)
            if schema
            else [f for f in view.catalog.functions.values() if f.name == name]
        )
        if any(f.language not in ("sql", "c", "internal") for f in found):
            return True
    return False


def looks_masked(text: str) -> bool:
    """Whether ``text`` carries a mask placeholder (writing one back would corrupt data)."""
    return any(marker in text for marker in _MASK_MARKERS)


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

    def __init__(self, config: MaskingConfig, key: bytes) -> None:
        self.config = config
        self.key = key
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

    def install(self, connection: str, catalog: Catalog, classmap: ClassMap) -> MaskingView:
        old = self.views.get(connection)
        view = MaskingView.build(catalog, classmap, (old.version + 1) if old else 1)
        self.views[connection] = view
        return view

    def plans(
        self,
        view: MaskingView,
        sql: str,
        facts: Sequence[StatementFacts],
        decision: Decision,
        search_path: tuple[str, ...] | None = None,
        candidates: frozenset[str] = frozenset(),
    ) -> tuple[StatementPlan | None, ...]:
        """One plan per statement (None where nothing can be sensitive), with unqualified
        names resolved on ``search_path`` (default: the catalog's) and in ``candidates``."""
        if not any(view.may_read_sensitive(f) for f in facts):
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
        return tuple(p if _matters(p) else None for p in cached)

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


# ---------------------------------------------------------------------- per session


@dataclass(slots=True)
class _Query:
    """A simple Query (or FunctionCall): answered statement by statement, then ReadyForQuery."""

    plans: tuple[StatementPlan | None, ...]
    index: int = 0
    rows: RowMasker | None = None
    copy: CopyMasker | None = None
    # Statement index -> (name, plan) of each SQL PREPARE: known once it completed.
    prepares: dict[int, tuple[str, StatementPlan | None]] = field(default_factory=dict)

    @property
    def plan(self) -> StatementPlan | None:
        return self.plans[self.index] if self.index < len(self.plans) else None

    def next_statement(self) -> None:
        self.index += 1
        self.rows = None
        self.copy = None


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
    formats: tuple[int, ...]
    rows: RowMasker | None = None
    compiled: bool = False
    prepares: tuple[str, StatementPlan | None] | None = None  # it runs a SQL PREPARE


@dataclass(slots=True)
class _Sync:
    pass


_Item = _Query | _Simple | _Parse | _Describe | _Execute | _Sync
_SIMPLE = _Simple()
_SYNC = _Sync()
WITHHELD = "dbsentry: the error message was withheld because the statement reads masked data"


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
    portals: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    portal_fields: dict[str, tuple[Field, ...] | None] = field(default_factory=dict)
    cursors: dict[str, StatementPlan | None] = field(default_factory=dict)  # DECLARE name -> plan
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
                        self.path_candidates |= {ANY_SCHEMA}
            if view is not None and ANY_SCHEMA not in self.path_candidates and _may_set_path(view, f):
                self.path_candidates |= {ANY_SCHEMA}

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
        return self.service.plans(view, sql, facts, decision, path, self.path_candidates - set(path))

    def statement(self, name: str) -> StatementPlan | None:
        """The plan of prepared statement ``name`` as the server will run it next."""
        if name in self.pending:
            return self.pending[name]
        return self.statements.get(name)

    def plan(self, sql: str, facts: Sequence[StatementFacts], decision: Decision) -> tuple[StatementPlan | None, ...]:
        view = self.service.current(self.connection)
        if view is None:
            return tuple(None for _ in facts)
        self.follow_settings(facts)
        plans = list(self._plans(view, sql, facts, decision))
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

    def sent(self, t: int, buf: bytes, start: int, end: int, plans: tuple[StatementPlan | None, ...] = ()) -> None:
        """A frame of type ``t`` went upstream; queue what the server will answer."""
        if t == m.Q_QUERY or t == m.Q_FUNCTION_CALL:
            item = _Query(plans)
            planned, self._planned = self._planned, None
            if planned is not None and planned[0] is plans:
                item.prepares = planned[1]
                for name, plan in planned[1].values():
                    self.pending[name] = plan
            self.expect.append(item)
        elif t == m.Q_PARSE:
            name, _ = codec.read_cstr(buf, start, end)
            plan = self.statement(name)  # as parsed() planned it
            self.pending[name] = plan
            self.expect.append(_Parse(name, plan))
        elif t == m.Q_BIND:
            portal, pos = codec.read_cstr(buf, start, end)
            stmt, _ = codec.read_cstr(buf, pos, end)
            # Result formats matter only where something may be masked: skip the decode
            # for statements with nothing sensitive (the usual case).
            formats = codec.decode_bind(buf, start, end).result_formats if self.statement(stmt) else ()
            self.portals[portal] = (stmt, formats)
            self.portal_fields.pop(portal, None)
            self.expect.append(_SIMPLE)
        elif t == m.Q_DESCRIBE:
            kind, name = codec.decode_describe_or_close(buf, start, end)
            self.expect.append(_Describe(kind, name))
        elif t == m.Q_EXECUTE:
            portal = codec.decode_execute(buf, start, end).portal
            stmt, formats = self.portals.get(portal, ("", ()))
            fields = self.portal_fields.get(portal) or self.statement_fields.get(stmt)
            execute = _Execute(portal, self.statement(stmt), fields, formats)
            execute.prepares = self.sql_prepares.get(stmt)
            if execute.prepares is not None:
                self.pending[execute.prepares[0]] = execute.prepares[1]
            self.expect.append(execute)
        elif t == m.Q_CLOSE:
            kind, name = codec.decode_describe_or_close(buf, start, end)
            if kind == "S":
                self.statements.pop(name, None)
                self.pending.pop(name, None)
                self.sources.pop(name, None)
                self.statement_fields.pop(name, None)
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

    def parsed(self, name: str, plan: StatementPlan | None, sql: str | None = None) -> None:
        """A Parse of ``sql`` as statement ``name`` is about to be sent, planned by the last
        :meth:`plan` of that text (None: refused, nothing to plan)."""
        self.pending[name] = plan
        last = self._last_source
        self.sql_prepares.pop(name, None)
        if sql is not None and last is not None and last[0] == sql:
            self.sources[name] = (*last, 0)
            facts = last[1]
            if len(facts) == 1 and facts[0].command == "PREPARE" and facts[0].prepared_name is not None:
                self.sql_prepares[name] = (facts[0].prepared_name, plan)
        else:
            self.sources.pop(name, None)
        self.statement_fields.pop(name, None)

    def _confirm(self, name: str, plan: StatementPlan | None) -> None:
        """The server created prepared statement ``name``."""
        if self.pending.get(name, plan) is plan:
            self.pending.pop(name, None)
        self.statements[name] = plan

    # -------------------------------------------------------------- server side

    def received(self, t: int, buf: bytes, start: int, end: int) -> bytes | None:
        """A server frame; returns the frame to send instead, or None to pass it as is."""
        expect = self.expect
        head = expect[0] if expect else None
        if t == m.R_DATA_ROW:
            rows = self._rows(head)
            if rows is None:
                return None
            body = bytes(buf[start:end])
            masked = mask_data_row(body, rows)
            return None if masked is body else codec.frame(b"D", masked)
        if t == COPY_DATA:
            if isinstance(head, _Query) and head.copy is not None:
                return codec.frame(b"d", head.copy.mask(bytes(buf[start:end])))
            return None
        if t == m.R_ROW_DESCRIPTION:
            # Decoded only for results that may need masking (a statement with a plan).
            if isinstance(head, _Query):
                plan = head.plan
                head.rows = (
                    self._compile(plan, decode_row_description(bytes(buf[start:end])), None)
                    if plan is not None
                    else None
                )
            elif isinstance(head, _Describe):
                needed = self._describes_plan(head)
                self._described(head, decode_row_description(bytes(buf[start:end])) if needed else None)
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
            sensitive = self._current_plan(head) is not None and not self.exempt()
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
            if sensitive:
                err = codec.decode_error_fields(buf, start, end)
                return codec.error_response(err.sqlstate, WITHHELD, severity=err.severity or "ERROR")
            return None
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
                        head.copy = compile_copy_masker(plan.plan, copy, key=self.service.key)
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
        if t == m.R_DATA_ROW:
            rows = self._rows(head)
            if rows is not None:
                return self._checked(spans, i, mask_data_rows(buf, start - 5, rows))
        elif t == COPY_DATA and isinstance(head, _Query) and head.copy is not None:
            return self._checked(spans, i, head.copy.mask_frames(buf, start - 5))
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

    def _current_plan(self, head: _Item | None) -> StatementPlan | None:
        if isinstance(head, _Query):
            return head.plan
        if isinstance(head, _Execute):
            return head.plan
        return None

    def _describes_plan(self, item: _Describe) -> bool:
        """Whether the described statement or portal has a mask plan (its fields matter)."""
        if item.kind == "S":
            return self.statement(item.name) is not None
        portal = self.portals.get(item.name)
        return portal is None or self.statement(portal[0]) is not None

    def _described(self, item: _Describe, fields: tuple[Field, ...] | None) -> None:
        if item.kind == "S":
            self.statement_fields[item.name] = fields
        else:
            self.portal_fields[item.name] = fields
            for pending in self.expect:
                if isinstance(pending, _Execute) and pending.portal == item.name and not pending.compiled:
                    pending.fields = fields

    def _rows(self, head: _Item | None) -> RowMasker | None:
        if isinstance(head, _Query):
            return head.rows
        if isinstance(head, _Execute):
            if not head.compiled:
                head.compiled = True
                if head.plan is not None:
                    fields = head.fields or self.portal_fields.get(head.portal)
                    if fields is not None:
                        head.rows = self._compile(head.plan, fields, head.formats)
                    else:
                        head.rows = self._compile(head.plan, None, head.formats)
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
        )


COPY_DATA = m.COPY_DATA
_ONE_ANSWER = frozenset({ord("1"), ord("2"), ord("3")})

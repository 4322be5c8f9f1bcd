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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from pglast import parser as pg_parser

from dbsentry.config import MaskingConfig
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
from dbsentry.masking.classes import parse_class
from dbsentry.masking.lineage import LineageError
from dbsentry.masking.rows import Field, UnsupportedCopy, mask_data_rows, text_type_oids
from dbsentry.masking.strategies import PLACEHOLDERS
from dbsentry.policy.cache import LRU
from dbsentry.policy.engine import Decision
from dbsentry.session.functions import FunctionSafety
from dbsentry.sql.facts import StatementFacts
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
        self._plans: LRU[tuple[int, str, tuple[object, ...]], tuple[StatementPlan, ...] | None] = LRU(4096)

    def current(self, connection: str) -> MaskingView | None:
        return self.views.get(connection)

    def safety_net_for(self, production: bool) -> bool:
        """Whether a session's results get the safety net (``masking.safety_net``)."""
        mode = self.config.safety_net
        return mode == "always" or (mode == "production" and production)

    def install(self, connection: str, catalog: Catalog, classmap: ClassMap) -> MaskingView:
        old = self.views.get(connection)
        view = MaskingView.build(catalog, classmap, (old.version + 1) if old else 1)
        self.views[connection] = view
        return view

    def plans(
        self, view: MaskingView, sql: str, facts: Sequence[StatementFacts], decision: Decision, safety_net: bool = False
    ) -> tuple[StatementPlan | None, ...]:
        """One plan per statement (None where nothing can be sensitive; with ``safety_net``
        a COPY keeps its plan, for its format)."""
        copies = safety_net and any(f.command == "COPY" for f in facts)
        if not copies and not any(view.may_read_sensitive(f) for f in facts):
            return tuple(None for _ in facts)
        key = (view.version, sql, decision.masks)
        cached = self._plans.get(key)
        if cached is None:
            settings = self._settings_for(decision)
            try:
                lineages = analyze_lineage(sql, view.catalog, view.catalog.search_path)
            except LineageError:
                lineages = []
            if len(lineages) != len(facts):
                # Cannot tie lineage to statements: judge every result by its values.
                cached = tuple(
                    StatementPlan(_UNKNOWN_LINEAGE, MaskPlan((), reads_sensitive=True, deny=self.config.unresolved == "deny", reason="lineage unavailable"))
                    for _ in facts
                )
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
# extension types); see strategies.make_safety_net_masker
_NET_OIDS = frozenset({25, 1043, 1042, 19, 705, 114, 3802})
# What a result without a plan is compiled against: the safety net alone.
_NO_PLAN = StatementPlan(StatementLineage("SELECT", (), frozenset(), True), MaskPlan(()))


# ---------------------------------------------------------------------- per session


@dataclass(slots=True)
class _Query:
    """A simple Query (or FunctionCall): answered statement by statement, then ReadyForQuery."""

    plans: tuple[StatementPlan | None, ...]
    index: int = 0
    rows: RowMasker | None = None
    copy: CopyMasker | None = None

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
class _Describe:
    kind: str
    name: str


@dataclass(slots=True)
class _Execute:
    portal: str
    plan: StatementPlan | None
    fields: tuple[Field, ...] | None
    formats: tuple[int, ...] | bytes  # bytes: the Bind, decoded when the formats matter
    rows: RowMasker | None = None
    compiled: bool = False


@dataclass(slots=True)
class _Sync:
    pass


_Item = _Query | _Simple | _Describe | _Execute | _Sync
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
    portals: dict[str, tuple[str, tuple[int, ...] | bytes]] = field(default_factory=dict)
    portal_fields: dict[str, tuple[Field, ...] | None] = field(default_factory=dict)
    cursors: dict[str, StatementPlan | None] = field(default_factory=dict)  # DECLARE name -> plan
    # masking.safety_net for this session: results without a plan are scanned too.
    safety_net: bool = False
    _net_none: dict[tuple[bytes | tuple[Field, ...], tuple[int, ...] | None], None] = field(default_factory=dict)
    _sources: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)
    _decoded: dict[bytes, tuple[Field, ...]] = field(default_factory=dict)
    _described_sources: dict[tuple[str, tuple[int, ...]], tuple[Field, ...]] = field(default_factory=dict)

    # -------------------------------------------------------------- client side

    def plan(self, sql: str, facts: Sequence[StatementFacts], decision: Decision) -> tuple[StatementPlan | None, ...]:
        view = self.service.current(self.connection)
        if view is None:
            return tuple(None for _ in facts)
        plans = list(self.service.plans(view, sql, facts, decision, self.safety_net))
        for i, p in enumerate(plans):
            if p is None:
                continue
            lin = p.lineage
            if lin.prepares is not None:
                self.statements[lin.prepares] = p  # SQL and protocol names share one namespace
            elif lin.declares is not None:
                self.cursors[lin.declares] = p
            elif lin.executes is not None and lin.executes in self.statements:
                plans[i] = self.statements[lin.executes]
            elif lin.fetches is not None and lin.fetches in self.cursors:
                plans[i] = self.cursors[lin.fetches]
        return tuple(plans)

    def sent(self, t: int, buf: bytes, start: int, end: int, plans: tuple[StatementPlan | None, ...] = ()) -> None:
        """A frame of type ``t`` went upstream; queue what the server will answer."""
        if t == m.Q_QUERY or t == m.Q_FUNCTION_CALL:
            self.expect.append(_Query(plans))
        elif t == m.Q_PARSE:
            self.expect.append(_SIMPLE)
        elif t == m.Q_BIND:
            portal, pos = codec.read_cstr(buf, start, end)
            stmt, _ = codec.read_cstr(buf, pos, end)
            # Result formats matter only where something may be masked: skip the decode
            # for statements with nothing sensitive (the usual case).
            formats: tuple[int, ...] | bytes = ()
            if self.statements.get(stmt):
                formats = codec.decode_bind(buf, start, end).result_formats
            elif self.safety_net and _may_scan(self.statement_fields.get(stmt)):
                formats = bytes(buf[start:end])  # the safety net may need them: decoded then
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
            self.expect.append(_Execute(portal, self.statements.get(stmt), fields, formats))
        elif t == m.Q_CLOSE:
            kind, name = codec.decode_describe_or_close(buf, start, end)
            if kind == "S":
                self.statements.pop(name, None)
                self.statement_fields.pop(name, None)
                self._sources.pop(name, None)
            else:
                self.portals.pop(name, None)
                self.portal_fields.pop(name, None)
            self.expect.append(_SIMPLE)
        elif t == m.Q_SYNC:
            self.expect.append(_SYNC)

    def parsed(self, name: str, plan: StatementPlan | None, source: tuple[str, tuple[int, ...]] | None = None) -> None:
        """A Parse of ``name``; ``source`` is its text and parameter types.  A statement
        parsed again gets the fields a Describe of the same source told (asyncpg re-parses
        its unnamed statement before each Bind without another Describe, and may parse
        its type queries in between)."""
        self.statements[name] = plan
        fields = self._described_sources.get(source) if source is not None else None
        if fields is not None:
            self.statement_fields[name] = fields
        else:
            self.statement_fields.pop(name, None)
        if source is None:
            self._sources.pop(name, None)
        else:
            self._sources[name] = source

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
                if plan is not None:
                    head.rows = self._compile(plan, decode_row_description(bytes(buf[start:end])), None)
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
                head.next_statement()
            elif isinstance(head, _Execute):
                expect.popleft()
            return None
        if t == m.R_PORTAL_SUSPENDED:
            if isinstance(head, _Execute):
                expect.popleft()
            return None
        if t == m.R_ERROR:
            sensitive = self._current_plan(head) is not None and not self.exempt()
            if isinstance(head, _Query):
                head.plans = head.plans[: head.index]  # the rest of the string is skipped
            else:
                while expect and not isinstance(expect[0], _Sync):
                    expect.popleft()  # the server skips to the next Sync
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
            if expect and isinstance(head, _Simple):
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
            return self.statements.get(item.name) is not None
        portal = self.portals.get(item.name)
        return portal is None or self.statements.get(portal[0]) is not None

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
                    formats = _result_formats(head.formats)
                    if fields is not None:
                        head.rows = self._compile(head.plan, fields, formats)
                    else:
                        head.rows = self._compile(head.plan, None, formats)
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


COPY_DATA = m.COPY_DATA
_ONE_ANSWER = frozenset({ord("1"), ord("2"), ord("3")})

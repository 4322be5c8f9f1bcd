"""Limits on real effect: a data-changing statement runs under a guard that counts what it
actually changed and undoes it when that is too much.

No syntactic check can decide whether ``WHERE id > -1`` matches every row, or what a
function called from a SELECT deletes.  The database can: in production the session runs
such a statement (the *guarded request*: a Query, or an extended-protocol Execute) inside a
bracket of its own requests:

- the simple protocol outside a transaction block: ``BEGIN``, a snapshot of the
  transaction's per-table row counters, the statement, the counters again, then ``COMMIT``
  or ``ROLLBACK``; the client sees its statement's own answers and ReadyForQuery ``I``;
- the simple protocol inside a block: the counters before and after; a refused statement
  fails the block (state ``E``), so nothing it changed can be committed;
- the extended protocol: the counters before and after the Execute and a Flush; the
  client's following messages (its Sync, which would commit) are held until the decision;
  a refused statement fails the transaction before its Sync.

The counters are PostgreSQL's own (``pg_stat_get_xact_tuples_updated/deleted/inserted``),
which count every row a statement changed: through CTEs, functions, triggers and foreign
key cascades.  Only their change across the statement counts (they are not reset between
transactions until the backend reports its statistics, which it never does inside one).
A statement is refused when it updated or deleted more than ``max_rows_changed`` rows, or
at least ``min_rows_for_fraction`` rows and at least ``max_fraction_changed`` of a table's
rows: counted exactly inside the guard when the table is small (``exact_count_max_bytes``),
estimated from the statistics otherwise.  A measurement that fails refuses the statement.

Every request of the bracket is sent in one write with the statement, so a guarded
statement costs no extra round trip inside a transaction; outside one, ``COMMIT`` is one.
Inside the client's transaction block the counters read after one guarded Query are the
next guarded Query's "before" when nothing but plain reads went upstream in between (the
session says so: :meth:`Guard.forget_baseline`) and every answer since said the block is
open (a guarded Query waits until the upstream has answered everything before it).  An
Execute goes without waiting: it starts from them only when the session knows the client's
explicit block is open (``in_block``: see :meth:`Guard.wrap_execute`); otherwise it reads
them first, since a Sync or a Query ahead of it may have ended an implicit transaction
(PostgreSQL then reports and resets its counters).
:class:`~dbsentry.engines.postgres.session.exchange.Exchange` tells which upstream message answers which
request, so the bracket's own answers never reach the client, and the statement's answers
are held until the decision (a refused statement's ``RETURNING`` rows never leave).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from dbsentry.engines.postgres.masking.rows import decode_data_row
from dbsentry.engines.postgres.session.exchange import CLIENT, Exchange
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m

RULE_ROWS = "guardrails.max_rows_changed"
RULE_FRACTION = "guardrails.max_fraction_changed"
RULE_CATALOG = "guardrails.catalog_changes"
RULE_DEFERRED = "guardrails.deferred_triggers"
_CATALOG_SCHEMAS = frozenset({"pg_catalog", "information_schema"})

# Everything is qualified with pg_catalog (operators too), so that no search_path and no
# object of the client's can change what these statements do.
# The tables with counters above zero are found first, in one of two ways:
#
# - all of them (STATS_SQL), a scan of pg_class calling the counters' functions: its cost
#   grows with the database (3 ms per reading with 3,000 tables).  The counters are not
#   reset between transactions until the backend reports them (at most once a second,
#   when idle), so a transaction starts with the counts of earlier ones: a reading before a
#   statement must see every table with counts, unless the session knows them all;
# - the system catalogs (oids below FirstNormalObjectId, 16384, a range of pg_class's
#   index) and the tables this backend holds a lock on (LOCKED_STATS_SQL, through
#   pg_locks and that index: 0.2 ms however large the database).  A statement that
#   changes a table's rows locks it (RowExclusiveLock or stronger) until the transaction
#   ends, through triggers, cascades and functions too, and a subtransaction hands its
#   locks to its parent when it commits.  PostgreSQL releases its locks on system
#   catalogs as soon as it has written them (DDL run inside a function changed
#   pg_attribute unseen: an attack round found it), hence the range.  A rolled-back
#   subtransaction's locks go too, with the rows it changed: those are unchanged.  So the
#   reading after a statement sees every table the statement changed, and the tables it
#   does not see kept their earlier counts, unless a subtransaction was rolled back
#   (PostgreSQL counts its attempts): see Guard._carry.  With the tables the last reading
#   saw, it is also the reading before the next statement, even in a new transaction,
#   while the session knows that nothing but plain reads and measured statements went
#   upstream since (Guard.unseen_changes): only those tables can have counts then.
#
# The root of each changed table's partition or inheritance tree is found for those few
# tables at once, and what the guard needs to know of a root is looked up by oid.  The
# planner must not think this costly: past jit_above_cost every reading would be compiled
# first (20-30 ms).  A first version ran the roots' recursive query once per row the
# planner expected and crossed it on a database with a few hundred relations.
_CHANGED = """
  SELECT x.oid, x.relname, x.relnamespace, x.reltuples, x.relpersistence, x.relhasrules FROM pg_catalog.pg_class x
  WHERE {among}x.relkind OPERATOR(pg_catalog.=) ANY ('{r,f}'::pg_catalog."char"[])
    AND pg_catalog.pg_stat_get_xact_tuples_updated(x.oid) OPERATOR(pg_catalog.+)
        pg_catalog.pg_stat_get_xact_tuples_deleted(x.oid) OPERATOR(pg_catalog.+)
        pg_catalog.pg_stat_get_xact_tuples_inserted(x.oid) OPERATOR(pg_catalog.>) 0"""
_STATS_SQL = """WITH RECURSIVE changed AS MATERIALIZED ({changed}
), up(rel, top, depth) AS (
  SELECT changed.oid, changed.oid, 0 FROM changed
  UNION ALL
  SELECT up.rel, i.inhparent, up.depth OPERATOR(pg_catalog.+) 1
  FROM up JOIN pg_catalog.pg_inherits i ON i.inhrelid OPERATOR(pg_catalog.=) up.top
  WHERE up.depth OPERATOR(pg_catalog.<) 64
), root AS (
  SELECT DISTINCT ON (up.rel) up.rel, up.top FROM up ORDER BY up.rel, up.depth DESC
)
SELECT c.oid::pg_catalog.int8,
  pg_catalog.pg_stat_get_xact_tuples_updated(c.oid),
  pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid),
  pg_catalog.pg_stat_get_xact_tuples_inserted(c.oid),
  pg_catalog.pg_relation_size(c.oid),
  c.reltuples::pg_catalog.float8,
  pg_catalog.pg_stat_get_live_tuples(c.oid),
  pg_catalog.has_table_privilege(c.oid, 'SELECT'),
  n.nspname::pg_catalog.text, c.relname::pg_catalog.text,
  root.top::pg_catalog.int8,
  (SELECT rn.nspname::pg_catalog.text FROM pg_catalog.pg_class r JOIN pg_catalog.pg_namespace rn
    ON rn.oid OPERATOR(pg_catalog.=) r.relnamespace WHERE r.oid OPERATOR(pg_catalog.=) root.top),
  (SELECT r.relname::pg_catalog.text FROM pg_catalog.pg_class r WHERE r.oid OPERATOR(pg_catalog.=) root.top),
  pg_catalog.has_table_privilege(root.top, 'SELECT'),
  c.relpersistence OPERATOR(pg_catalog.=) 't'::pg_catalog."char",
  EXISTS (SELECT FROM pg_catalog.pg_trigger tg WHERE tg.tgrelid OPERATOR(pg_catalog.=) c.oid
    AND tg.tgdeferrable AND NOT tg.tgisinternal),
  c.relhasrules OR EXISTS (SELECT FROM pg_catalog.pg_trigger tg WHERE tg.tgrelid OPERATOR(pg_catalog.=) c.oid
    AND NOT tg.tgisinternal)
FROM changed c
JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
JOIN root ON root.rel OPERATOR(pg_catalog.=) c.oid
WHERE n.nspname OPERATOR(pg_catalog.<>) 'pg_toast'::pg_catalog.name"""
#: Every table of the database with counters above zero (a scan of pg_class).
STATS_SQL = _STATS_SQL.replace("{changed}", _CHANGED.replace("{among}", ""))
#: The system catalogs, the tables this backend holds a lock on, and those of $1 (the
#: tables the last reading saw): each part through an index of pg_class.
LOCKED_STATS_SQL = _STATS_SQL.replace(
    "{changed}",
    _CHANGED.replace("{among}", "x.oid OPERATOR(pg_catalog.<) 16384::pg_catalog.oid\n    AND ")
    + "\n  UNION ALL"
    + _CHANGED.replace(
        "{among}",
        """x.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid
    AND x.oid OPERATOR(pg_catalog.=) ANY (ARRAY(SELECT l.relation FROM pg_catalog.pg_locks l
      WHERE l.pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid()
        AND l.locktype OPERATOR(pg_catalog.=) 'relation'::pg_catalog.text)
      OPERATOR(pg_catalog.||) $1::pg_catalog.oid[])
    AND """,
    ),
)
_FULL, _LOCKED = 0, 1
_STATS = (STATS_SQL, LOCKED_STATS_SQL)
# How many of the guard's statistics statements were replaced by SQL PREPARE: code the
# client's statement ran (a function's dynamic SQL) can DEALLOCATE them and PREPARE others
# under their names, which would answer what it likes (an attack round did).  Only the
# client's own protocol messages make statements that are not from SQL, and the session
# refuses the guard's names in them; so this, parsed afresh after every guarded statement,
# tells whether the readings can be trusted.  {names}: the statements' names.
# It also says whether the backend counts rows at all: code the client ran can turn
# track_counts off for the session (a function's dynamic set_config, with a superuser
# upstream: an attack round did), and nothing is counted then.
CHECK_SQL = (
    "SELECT pg_catalog.count(*), pg_catalog.current_setting('track_counts')"
    " FROM pg_catalog.pg_prepared_statements p{flush}"
    " WHERE p.name OPERATOR(pg_catalog.=) ANY ('{names}'::pg_catalog.text[]) AND p.from_sql"
)
# PostgreSQL 15 and later: the check also asks the backend to report its counters at its
# next idle moment, all of them, whatever other backends do (pg_stat_force_next_flush():
# pgstat_report_stat(force), which waits for its locks and leaves nothing pending).  That
# moment comes before the ReadyForQuery that says the transaction is over, and only then
# (stats are reported outside transactions only): from it, every counter of the backend is
# zero, and the next guarded statement needs no reading before it (Guard.idle_ready).
FLUSH_CHECK = ", pg_catalog.pg_stat_force_next_flush() f"
RULE_MEASUREMENT = "guardrails.measurement"
# Always fails, whatever the client created: fails the transaction of a refused statement.
FAIL_SQL = "SELECT 'dbsentry: refused by the row limit'::pg_catalog.int4"


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int | None
    max_fraction: float | None
    min_rows_for_fraction: int = 10


@dataclass(frozen=True, slots=True)
class TableCounts:
    """One row of :data:`STATS_SQL`: a table's counters and what the guard may need to
    know about it and about the root of its partition tree (itself when it is none)."""

    oid: int
    updated: int
    deleted: int
    inserted: int
    size: int
    reltuples: float
    live: int
    can_count: bool
    schema: str
    name: str
    root: int = 0
    root_schema: str = ""
    root_name: str = ""
    root_can_count: bool = False
    temporary: bool = False  # the session's own scratch space: no limit applies
    # It has deferrable user triggers: their effects come at COMMIT, after any measurement.
    deferred: bool = False
    # It has rules or user triggers: code of the client's may have run with the statement.
    user_code: bool = False

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def catalog(self) -> bool:
        return self.schema in _CATALOG_SCHEMAS

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}" if self.schema else quote_ident(self.name)

    @property
    def partition(self) -> bool:
        return self.root not in (0, self.oid)


#: How many rows of the statistics readings a guard remembers parsed (see Guard._counts).
ROW_CACHE = 256


def parse_counts(rows: list[list[bytes | None]]) -> dict[int, TableCounts]:
    out: dict[int, TableCounts] = {}
    for r in rows:
        if len(r) != 17 or any(v is None for v in r[:8]) or any(v is None for v in r[10:]):
            raise ValueError("unexpected row from the statistics query")
        text = [v.decode() if v is not None else "" for v in r]
        t = TableCounts(
            int(text[0]), int(text[1]), int(text[2]), int(text[3]), int(text[4]),
            float(text[5]), int(text[6]), text[7] == "t", text[8], text[9],
            int(text[10]), text[11], text[12], text[13] == "t", text[14] == "t", text[15] == "t",
            text[16] == "t",
        )  # fmt: skip
        out[t.oid] = t
    return out


@dataclass(frozen=True, slots=True)
class Effect:
    """What the statement changed in one table."""

    table: TableCounts
    changed: int  # rows updated or deleted
    inserted: int
    deleted: int


def effects(before: dict[int, TableCounts], after: dict[int, TableCounts]) -> list[Effect]:
    out = []
    for oid, a in after.items():
        b = before.get(oid)
        upd = a.updated - (b.updated if b else 0)
        dele = a.deleted - (b.deleted if b else 0)
        ins = a.inserted - (b.inserted if b else 0)
        if upd < 0 or dele < 0 or ins < 0:
            # The counters only grow inside a transaction; anything else means the
            # measurement cannot be trusted.
            raise ValueError(f"the row counters of {a.display} went backwards")
        if upd or dele or ins:
            out.append(Effect(a, upd + dele, ins, dele))
    return out


@dataclass(frozen=True, slots=True)
class Unit:
    """What the share limit is checked on: one table (its own rows), or the top of an
    inheritance or partition tree with all of it (a statement that empties many small
    partitions or children empties the table)."""

    key: str
    display: str
    qualified: str  # for COUNT
    only: bool  # count the table's own rows (ONLY), not its partitions' or children's
    can_count: bool
    estimate: float  # rows, from the statistics, when it cannot be counted
    changed: int
    inserted: int
    deleted: int

    def need(self, fraction: float) -> int:
        """How many rows must remain for the change to stay under ``fraction`` of the
        rows the table had (had = remaining + deleted - inserted)."""
        return math.floor(self.changed / fraction - self.deleted + self.inserted) + 1

    def count_sql(self, fraction: float) -> str:
        only = "ONLY " if self.only else ""
        return f"(SELECT pg_catalog.count(*) FROM (SELECT 1 FROM {only}{self.qualified} LIMIT {self.need(fraction)}) s)"


def _own_unit(e: Effect) -> Unit:
    t = e.table
    return Unit(
        f"t{t.oid}", t.display, t.qualified, True, t.can_count, max(t.reltuples, t.live, 0), e.changed, e.inserted, e.deleted
    )


def units(found: list[Effect], unseen: int = 0, written: tuple[str, ...] = ()) -> list[Unit]:
    """The units the statement changed (see :class:`Unit`).  ``unseen``: rows its
    CommandComplete reported beyond what the counters saw (a foreign table's rows are
    changed by another server): they are the written table's."""
    out = [_own_unit(e) for e in found]
    roots: dict[int, list[Effect]] = {}
    for e in found:
        if e.table.partition:
            roots.setdefault(e.table.root, []).append(e)
    for root, members in roots.items():
        t = members[0].table
        out.append(
            Unit(
                f"r{root}",
                f"{t.root_schema}.{t.root_name} (with its partitions or children)",
                f"{quote_ident(t.root_schema)}.{quote_ident(t.root_name)}",
                False,
                t.root_can_count,
                -1,
                sum(e.changed for e in members),
                sum(e.inserted for e in members),
                sum(e.deleted for e in members),
            )
        )
    if unseen > 0 and len(written) == 1:
        name = written[0]
        quoted = ".".join(quote_ident(p) for p in name.split("."))
        out.append(Unit(f"w{name}", name, quoted, True, True, -1, unseen, 0, unseen))
    return out


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    message: str = ""  # for a refusal: what the client is told (without "dbsentry: ")
    rule: str = RULE_ROWS
    counts_needed: tuple[Unit, ...] = ()  # count these first (see Unit.count_sql)


def judge(
    limits: Limits,
    found: list[Effect],
    counted: dict[str, int] | None = None,
    reported: int = 0,
    written: tuple[str, ...] = (),
) -> Verdict:
    """The decision on a statement's effect; asks for the counts it lacks (once).

    Changed rows of the system catalogs mean DDL (TRUNCATE, DROP, ALTER, GRANT...) or
    catalog writes ran inside the statement, typically in a function: refused, as DDL
    needs an approval in production; so do rows added to them (a function, a trigger, a
    policy, an index, a table, a temporary one too: an attack round added unique indexes,
    domain checks and children of a table from inside a function).  Counts are
    bounded (``LIMIT``): a large table answers as soon as it shows enough rows, so the
    statistics, which can be made to lie, are used only when the table cannot be read."""
    catalog = [e for e in found if e.table.catalog and (e.changed or e.inserted)]
    if catalog:
        names = ", ".join(sorted(e.table.display for e in catalog))
        return Verdict(
            False,
            f"this statement changed the system catalogs ({names}): DDL or catalog writes ran inside it, "
            f"which need an approval in production ({RULE_CATALOG}); it was rolled back",
            RULE_CATALOG,
        )
    deferred = sorted({e.table.display for e in found if e.table.deferred})
    if deferred:
        # The database says so at the measurement, whatever the catalog read earlier: rows
        # changed in a table with deferrable triggers queue work that runs at COMMIT.
        return Verdict(
            False,
            f"this statement changed rows of {', '.join(deferred)}, whose deferrable triggers would run at COMMIT, "
            f"after the row limit measured ({RULE_DEFERRED}); it was rolled back",
            RULE_DEFERRED,
        )
    # What the counters did not see (a foreign table's rows change on another server), as
    # the statement's CommandComplete reports it.
    unseen = max(reported - sum(e.changed for e in found), 0)
    found = [e for e in found if not e.table.catalog and not e.table.temporary]
    total = sum(e.changed for e in found) + unseen
    rows_word = "row" if total == 1 else "rows"
    if limits.max_rows is not None and total > limits.max_rows:
        return Verdict(
            False,
            f"this statement would have changed {total} {rows_word} (limit {limits.max_rows}, "
            f"{RULE_ROWS}); it was rolled back",
            RULE_ROWS,
        )
    fraction = limits.max_fraction
    if fraction is None or total < limits.min_rows_for_fraction:
        # (every unit changed at most ``total`` rows: none can reach the share limit)
        return Verdict(True)
    candidates = [
        u for u in units(found, unseen, written) if u.changed >= limits.min_rows_for_fraction and u.need(fraction) > 0
    ]
    if counted is None:
        need = tuple(u for u in candidates if u.can_count)
        if need:
            return Verdict(True, counts_needed=need)
        counted = {}
    pct = round(fraction * 100)
    for u in candidates:
        if u.key in counted:
            remaining = counted[u.key]
            if remaining >= u.need(fraction):
                continue  # it has enough rows left
            had = remaining + u.deleted - u.inserted
        else:
            had = int(u.estimate)
            if had <= 0:
                return Verdict(
                    False,
                    f"this statement would have changed {u.changed} rows of {u.display}, a table whose size "
                    f"could not be measured (limit {pct}% of a table, {RULE_FRACTION}); it was rolled back",
                    RULE_FRACTION,
                )
            if u.changed < fraction * had:
                continue
        share = min(100, round(100 * u.changed / had)) if had > 0 else 100
        return Verdict(
            False,
            f"this statement would have changed {u.changed} rows, {share}% of the {max(had, u.changed)} rows "
            f"of {u.display} (limit {pct}% of a table, {RULE_FRACTION}); it was rolled back",
            RULE_FRACTION,
        )
    return Verdict(True)


class Mode(Enum):
    AUTOCOMMIT = "autocommit"  # simple protocol, no transaction block: the guard opens one
    BLOCK = "block"  # simple protocol inside the client's transaction block
    EXTENDED = "extended"  # an Execute; the client's Sync is held until the decision


@dataclass(frozen=True, slots=True)
class Statement:
    """The guarded statement as the audit and approvals know it."""

    sql: str
    params: tuple[str | None, ...] | None = None
    key_params: tuple[str | None, ...] | None = None
    facts: tuple[Any, ...] = ()  # its statement facts, for the approval request


@dataclass(frozen=True, slots=True)
class ApprovalNeeded:
    """The statement exceeded a limit: may an approval let it commit?"""

    statement: Statement
    message: str
    rule: str
    # What the statement did, as the approval is bound to it: an approval of one effect
    # does not cover a larger one of the same text.
    effect: str = ""


@dataclass(slots=True)
class Out:
    """What a step of the guard produced."""

    client: list[bytes] = field(default_factory=list)  # frames for the client path, in order
    upstream: list[bytes] = field(default_factory=list)
    ask: ApprovalNeeded | None = None
    finished: bool = False  # the bracket is over: held client messages may go on


class _Phase(Enum):
    RUNNING = 1
    COUNTING = 2
    APPROVAL = 3
    ENDING = 4


_PARSE_COMPLETE = ord("1")

# Owner offsets of a bracket's requests (its base owner number plus these).
_BEFORE, _STMT, _AFTER, _COUNT, _END, _FAIL, _CHECK = range(1, 8)
_STEP = 8


@dataclass(slots=True)
class _Bracket:
    base: int
    mode: Mode
    statement: Statement
    limits: Limits
    hold_from: int  # simple protocol: answers of statements from this index on are held
    phase: _Phase = _Phase.RUNNING
    held: list[bytes] = field(default_factory=list)
    held_bytes: int = 0
    overflow: bool = False
    completions: int = 0  # statements of the guarded Query answered so far
    stmt_failed: bool = False
    stmt_done: bool = False
    last_complete: int | None = None  # index in held of the last CommandComplete
    stmt_ready: bytes | None = None  # the guarded Query's ReadyForQuery, held
    rows: dict[int, list[list[bytes | None]]] = field(default_factory=dict)
    readings: dict[int, list[bytes]] = field(default_factory=dict)  # the statistics rows, as sent
    failed: dict[int, str] = field(default_factory=dict)  # our request -> error message
    errors: dict[int, bytes] = field(default_factory=dict)  # our request -> its ErrorResponse
    before: dict[int, TableCounts] | None = None  # set when sent: the last bracket's "after"
    after: dict[int, TableCounts] | None = None
    found: list[Effect] | None = None
    verdict: Verdict | None = None
    end_frames: list[bytes] = field(default_factory=list)  # answers to COMMIT/ROLLBACK
    reported: int = 0  # rows changed as the statement's CommandComplete reports them
    in_block: bool = False  # an Execute known to run in the client's open explicit block
    known: frozenset[int] | None = None  # the tables with counts the reading before asks for
    zero: bool = False  # every counter was zero when it was sent: no reading before it
    carry: bool = False  # its readings stand for every table with counts (see Guard._carry)

    def owner(self, offset: int) -> int:
        return self.base + offset


_CHANGE_TAGS = (b"UPDATE ", b"DELETE ", b"MERGE ")


def _reported_rows(frame: bytes) -> int:
    """The rows an UPDATE/DELETE/MERGE CommandComplete reports (0 for other tags)."""
    tag = frame[5:].rstrip(b"\x00")
    if not tag.startswith(_CHANGE_TAGS):
        return 0
    last = tag.rpartition(b" ")[2]
    return int(last) if last.isdigit() else 0


def _written(b: _Bracket) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for f in b.statement.facts for t in getattr(f, "tables_written", ())))


class Guard:
    """The guard of one session: follows the exchange, runs at most one bracket at a time."""

    __slots__ = (
        "_baseline", "_check_frames", "_error", "_flush", "_flush_asked", "_known", "_names", "_parse_owner",
        "_prepared", "_rows", "_runs", "_seq", "_zero", "bracket", "exchange", "max_held",
    )  # fmt: skip

    def __init__(
        self, max_held: int, error: Callable[[str], bytes] | None = None, *, fresh: bool = False, flush: bool = False
    ) -> None:
        """``error``: the ErrorResponse frame that refuses a statement with a message (the
        session marks its own, so that nothing downstream mistakes it for the server's).
        ``flush``: the server has pg_stat_force_next_flush() (PostgreSQL 15 and later; see
        FLUSH_CHECK)."""
        self.exchange = Exchange()
        self.bracket: _Bracket | None = None
        self.max_held = max_held
        self._error = error or (lambda message: codec.error_response("42501", message))
        self._seq = 0
        self._names = f"dbsentry_guard_{secrets.token_hex(4)}"
        self._flush = flush
        self._check_frames = self._build_check()
        # The statistics queries (all tables, locked tables) are prepared once per session
        # (named statements): planning them costs more than running them.
        self._prepared = [False, False]
        self._parse_owner: list[int | None] = [None, None]  # the owners whose requests carry their Parse
        # The counters the last bracket read after its statement, while they still hold: the
        # client's transaction is open and nothing sent since can have changed them (see
        # forget_baseline).  The next bracket in that transaction then reads them only after
        # its statement (TPC-B's second and third UPDATE).
        self._baseline: dict[int, TableCounts] | None = None
        # The tables with counts above zero as the last bracket read them, while they are
        # all the tables with counts (see unseen_changes); None: unknown, the reading
        # before the next statement looks at every table.  ``fresh``: the backend has
        # changed no rows yet (a connection opened for the session; had it changed some,
        # the error would be towards counting too much, never too little).
        self._known: frozenset[int] | None = frozenset() if fresh else None
        # Every counter of the backend is zero, and nothing sent since can have changed one
        # (a new backend; or see idle_ready): the next bracket needs no reading before its
        # statement.  Were some not zero after all, the reading after would count them as
        # the statement's: too much, never too little.
        self._zero = fresh
        # A check asked the backend to report its counters at its next idle moment.
        self._flush_asked = False
        # Statistics rows parsed, by their bytes: a table's row comes back unchanged in
        # every reading of a transaction after the statement that changed it.
        self._rows: dict[bytes, TableCounts] = {}
        # The Bind, Execute and Close of a statistics reading, by kind and tables asked for.
        self._runs: dict[tuple[int, frozenset[int]], bytes] = {}

    def _build_check(self) -> bytes:
        """The check after each reading (see CHECK_SQL), the same bytes every time."""
        names = ",".join(f"{self._names}_stats{kind}" for kind in (_FULL, _LOCKED))
        check = f"{self._names}_chk"
        sql = CHECK_SQL.replace("{names}", "{" + names + "}").replace("{flush}", FLUSH_CHECK if self._flush else "")
        return b"".join(
            (
                codec.encode_close("S", check),
                codec.encode_parse(m.Parse(check, sql)),
                codec.encode_bind(m.Bind(f"{self._names}_cp", check)),
                codec.encode_execute(m.Execute(f"{self._names}_cp")),
                codec.encode_close("P", f"{self._names}_cp"),
            )
        )

    @property
    def active(self) -> bool:
        return self.bracket is not None

    # ------------------------------------------------------------------ client side

    def _new(self, mode: Mode, statement: Statement, limits: Limits, hold_from: int) -> _Bracket:
        assert self.bracket is None
        self._seq += 1
        b = _Bracket(self._seq * _STEP, mode, statement, limits, hold_from)
        b.known = self._known
        b.zero = self._zero
        # Known again only once both readings of this bracket are read (a statement that
        # failed, or a reading that did, leaves counts no reading saw).
        self._known = None
        self._zero = False
        self.bracket = b
        return b

    def _before(self, b: _Bracket, sync: bool) -> bytes:
        """The reading before the statement: of the locked tables and those the session
        knows to have counts, or of every table when it does not know."""
        if b.known is None:
            return self._stats(b.owner(_BEFORE), sync)
        return self._stats(b.owner(_BEFORE), sync, _LOCKED, b.known)

    def _query(self, sql: str, owner: int) -> bytes:
        self.exchange.sent(m.Q_QUERY, owner)
        return codec.encode_query(sql)

    def _extended(self, sql: str, owner: int) -> bytes:
        """Parse, Bind, Execute and Close of a statement of the guard's own (named, so the
        client's unnamed statement and portal are left alone)."""
        name = f"{self._names}_{owner}"
        for t in (m.Q_PARSE, m.Q_BIND, m.Q_EXECUTE, m.Q_CLOSE, m.Q_CLOSE):
            self.exchange.sent(t, owner)
        return b"".join(
            (
                codec.encode_parse(m.Parse(name, sql)),
                codec.encode_bind(m.Bind(name, name)),
                codec.encode_execute(m.Execute(name)),
                codec.encode_close("P", name),
                codec.encode_close("S", name),
            )
        )

    def _check(self, owner: int, sync: bool) -> bytes:
        """Whether the statistics statements are still the guard's own (see CHECK_SQL):
        a statement parsed afresh, which nothing the client ran before can have replaced."""
        for t in (m.Q_CLOSE, m.Q_PARSE, m.Q_BIND, m.Q_EXECUTE, m.Q_CLOSE):
            self.exchange.sent(t, owner)
        if not sync:
            return self._check_frames
        self.exchange.sent(m.Q_SYNC, owner)
        return self._check_frames + codec.SYNC

    def _stats(self, owner: int, sync: bool, kind: int = _FULL, known: frozenset[int] = frozenset()) -> bytes:
        """Run a statistics query (``kind``: every table, or the locked ones and ``known``):
        its prepared statement (parsed first if it is not yet), in a portal of the guard's
        own; ``sync`` ends it as a cycle of its own."""
        name = f"{self._names}_stats{kind}"
        portal = f"{self._names}_p"
        parts = []
        parsing = self._parse_owner[kind]
        if parsing is not None and self.exchange.outstanding(parsing) == 0:
            parsing = self._parse_owner[kind] = None  # that Parse failed or was skipped
        if not self._prepared[kind] and parsing is None:
            # Closing a statement that does not exist is no error: whatever the client did
            # to the session's prepared statements, the Parse then succeeds.
            self._parse_owner[kind] = owner
            self.exchange.sent(m.Q_CLOSE, owner)
            self.exchange.sent(m.Q_PARSE, owner)
            parts.append(codec.encode_close("S", name))
            parts.append(codec.encode_parse(m.Parse(name, _STATS[kind])))
        for t in (m.Q_BIND, m.Q_EXECUTE, m.Q_CLOSE):
            self.exchange.sent(t, owner)
        run = self._runs.get((kind, known))
        if run is None:
            if kind == _LOCKED:
                oids = "{" + ",".join(map(str, sorted(known))) + "}"
                bind = codec.encode_bind(m.Bind(portal, name, (0,), (oids.encode(),)))
            else:
                bind = codec.encode_bind(m.Bind(portal, name))
            run = bind + codec.encode_execute(m.Execute(portal)) + codec.encode_close("P", portal)
            if len(self._runs) >= ROW_CACHE:
                self._runs.clear()
            self._runs[(kind, known)] = run
        parts.append(run)
        if sync:
            self.exchange.sent(m.Q_SYNC, owner)
            parts.append(codec.SYNC)
        return b"".join(parts)

    def statements_dropped(self) -> None:
        """The client ran DEALLOCATE ALL or DISCARD ALL: the statistics queries are gone too."""
        self._prepared = [False, False]
        self._known = None

    @staticmethod
    def _carry(b: _Bracket) -> bool:
        """May the counts this bracket read stand for every table with counts (the next
        reading before a statement asks only for those)?  Not when code of the client's
        can have run with the statement: a function or a trigger that changed a table in
        a subtransaction it then rolled back left counts (PostgreSQL counts attempts) in
        a table it no longer locks, which the reading after did not see.  (Counting them
        later would refuse a statement the limits allow.)"""
        assert b.after is not None
        if any(t.user_code for t in b.after.values()):
            return False
        return not any(getattr(f, "functions", ()) for f in b.statement.facts)

    def unseen_changes(self) -> None:
        """Something went upstream that may change row counts and that no reading follows
        (anything but a plain read, a message that runs nothing, or a guarded statement):
        the reading before the next statement looks at every table again."""
        self._known = None
        self._zero = False

    def idle_ready(self, last: bool) -> None:
        """The server said it is idle outside a transaction (ReadyForQuery "I").  If a check
        asked for a report since the last such moment, the backend made it before saying
        so, and the request is spent.  ``last``: nothing was sent after what this answered
        (then every counter is zero; otherwise what was sent after may have left counts,
        and the next idle moment reports nothing unless a check asks again: an attack
        round pipelined a failed UPDATE and ANALYZE behind a Sync)."""
        if self._flush_asked:
            self._flush_asked = False
            if last:
                self._zero = True
                self._known = frozenset()

    def forget_baseline(self) -> None:
        """Something went upstream that may change the row counters (anything but a plain
        read, or a message that runs nothing): the next bracket reads them before its
        statement again."""
        self._baseline = None

    def _reuse(self, b: _Bracket) -> bool:
        """Take the last bracket's counters as this one's "before", when they still hold."""
        counts = self._baseline
        if counts is None:
            return False
        self._baseline = None
        b.before = counts
        return True

    def wrap_query(self, frame: bytes, mode: Mode, hold_from: int, statement: Statement, limits: Limits) -> bytes:
        """The bytes to send instead of the guarded Query ``frame``."""
        b = self._new(mode, statement, limits, hold_from)
        parts = []
        if mode is Mode.AUTOCOMMIT:
            # The snapshot is taken inside the block: statistics are only reported (and the
            # counters reset) between transactions.
            self._baseline = None
            parts.append(self._query("BEGIN", b.owner(_BEFORE)))
        if b.zero:
            b.before = {}  # every counter is zero (see idle_ready)
        elif mode is Mode.AUTOCOMMIT or not self._reuse(b):
            parts.append(self._before(b, sync=True))
        self.exchange.sent(m.Q_QUERY, b.owner(_STMT))
        parts.append(frame)
        parts.append(self._stats(b.owner(_AFTER), sync=False, kind=_LOCKED))
        parts.append(self._check(b.owner(_CHECK), sync=True))  # one cycle with the reading
        return b"".join(parts)

    def wrap_execute(
        self, frame: bytes, statement: Statement, limits: Limits, t: int = m.Q_EXECUTE, in_block: bool = False
    ) -> bytes:
        """The bytes to send instead of the guarded Execute ``frame`` (and a Flush, so the
        answers come now; the client's next messages wait for :attr:`Out.finished`).  A
        Bind can be guarded the same way (``t``): planning runs non-volatile functions.

        ``in_block``: the session knows the client's explicit transaction block is open and
        will be when this runs (the server said so, and every request before this one has
        its answer: nothing in flight can end it, and a Sync does not end an explicit
        block).  Only then may the last reading be this statement's "before": an Execute
        goes without waiting, and in an implicit transaction a Sync ahead of it ends the
        transaction and lets PostgreSQL restart its counters (an attack round found that)."""
        b = self._new(Mode.EXTENDED, statement, limits, 0)
        b.in_block = in_block
        before = b""
        if b.zero:
            self._baseline = None
            b.before = {}  # every counter is zero (see idle_ready)
        elif not (in_block and self._reuse(b)):
            self._baseline = None
            before = self._before(b, sync=False)
        self.exchange.sent(t, b.owner(_STMT))
        after = self._stats(b.owner(_AFTER), sync=False, kind=_LOCKED) + self._check(b.owner(_CHECK), sync=False)
        return before + frame + after + codec.FLUSH

    def cancel(self) -> None:
        """The bracket's requests were never sent (the client's chunk was refused as a whole)."""
        b = self.bracket
        if b is None:
            return
        for kind, parsing in enumerate(self._parse_owner):
            if parsing is not None and b.base < parsing < b.base + _STEP:
                self._parse_owner[kind] = None
        for offset in range(1, _STEP):
            if offset == _STMT:
                self.exchange.reown(b.owner(offset))  # sent all the same, refused by a marker
            else:
                self.exchange.forget(b.owner(offset))
        self.bracket = None

    # ------------------------------------------------------------------ upstream side

    def received(self, buf: bytes, spans: list[tuple[int, int, int]]) -> tuple[bytes, list[tuple[int, int, int]], Out]:
        """Take the bracket's answers out of a chunk from the upstream.

        Returns the frames to pass on to the client path (a new buffer and its spans) and
        what the bracket produced.  Frames that answer the client's other requests pass
        through in place; the bracket's results are added where it finishes.
        """
        exchange = self.exchange
        out = Out()
        pieces: list[bytes] = []
        for t, start, end in spans:
            frame = buf[start - 5 : end]
            if t == m.R_ERROR or (t == m.R_READY and buf[start : start + 1] != b"T"):
                self._baseline = None  # the transaction ended or failed: the counters restart
            owner, ends = exchange.received(t)
            b = self.bracket
            if owner == CLIENT:
                pieces.append(frame)
            elif t == m.R_NOTIFICATION or (t == m.R_PARAMETER_STATUS and (b is None or owner != b.owner(_STMT))):
                pieces.append(frame)  # not an answer to anything: the client's
            elif b is not None and b.base < owner < b.base + _STEP:
                pieces.extend(self._frame(b, owner - b.base, t, frame, ends, out))
            # else: an answer to a request of a bracket that is over (its failing statement)
            # What the bracket waits for changes only when a request ends (an answer, an
            # error skipping the rest, a ReadyForQuery): only then can it move on.
            if ends and b is not None and self.bracket is b:
                pieces.extend(self._advance(b, out))
        frames = b"".join(pieces)
        _, new_spans = codec.FrameSplitter().split(frames) if frames else (b"", [])
        return frames, new_spans, out

    def _frame(self, b: _Bracket, offset: int, t: int, frame: bytes, ends: bool, out: Out) -> list[bytes]:
        """One answer to a request of the bracket; returns frames to pass on now."""
        if offset == _STMT:
            return self._statement_frame(b, t, frame, ends)
        if t == m.R_DATA_ROW:
            if offset in (_BEFORE, _AFTER):
                b.readings.setdefault(offset, []).append(frame[5:])  # parsed when measured
            else:
                b.rows.setdefault(offset, []).append(decode_data_row(frame[5:]))
            if offset == _CHECK and self._flush:
                self._flush_asked = True  # the check ran: so did its pg_stat_force_next_flush()
        elif t == _PARSE_COMPLETE and b.owner(offset) in self._parse_owner:
            kind = self._parse_owner.index(b.owner(offset))
            self._prepared[kind] = True
            self._parse_owner[kind] = None
        elif t == m.R_ERROR:
            fields = codec.decode_error_fields(frame, 5, len(frame))
            if fields.sqlstate == "26000" and offset in (_BEFORE, _AFTER):
                # A reading's statement is gone (a function's dynamic SQL can DEALLOCATE it):
                # the statement is refused, and the next bracket prepares the readings again.
                self._prepared = [False, False]
            if fields.sqlstate == "42501" and offset == _CHECK and self._flush:
                # EXECUTE on pg_stat_force_next_flush() revoked from the upstream role: this
                # statement is refused (not measured), the next checks ask for no report.
                self._flush = False
                self._check_frames = self._build_check()
            if offset not in b.failed:
                b.failed[offset] = f"{fields.sqlstate}: {fields.message}"
                b.errors[offset] = frame
        if offset == _END and t in (m.R_ERROR, m.R_READY):
            b.end_frames.append(frame)
        return []

    def _hold(self, b: _Bracket, frame: bytes) -> None:
        if b.overflow:
            return
        b.held_bytes += len(frame)
        if b.held_bytes > self.max_held:
            b.overflow = True
            b.held.clear()
            return
        b.held.append(frame)

    def _statement_frame(self, b: _Bracket, t: int, frame: bytes, ends: bool) -> list[bytes]:
        live: list[bytes] = []
        if b.mode is Mode.EXTENDED:
            if t == m.R_ERROR:
                b.stmt_failed = True
            if ends:
                b.stmt_done = True
            if t == m.R_COMMAND_COMPLETE:
                b.reported = max(b.reported, _reported_rows(frame))
            self._hold(b, frame)
        else:
            if t == m.R_READY:
                b.stmt_ready = frame
                b.stmt_done = True
                b.stmt_failed = b.stmt_failed or frame[5:6] == b"E"
            elif b.completions < b.hold_from:
                live.append(frame)
                if t in (m.R_COMMAND_COMPLETE, m.R_EMPTY_QUERY, m.R_ERROR):
                    b.completions += 1
                    b.stmt_failed = b.stmt_failed or t == m.R_ERROR
            else:
                if t in (m.R_COMMAND_COMPLETE, m.R_EMPTY_QUERY, m.R_ERROR):
                    b.completions += 1
                    b.stmt_failed = b.stmt_failed or t == m.R_ERROR
                    if t == m.R_COMMAND_COMPLETE and not b.overflow:
                        b.last_complete = len(b.held)
                if t == m.R_COMMAND_COMPLETE:
                    b.reported = max(b.reported, _reported_rows(frame))
                self._hold(b, frame)
        return live

    def _answered(self, b: _Bracket, offset: int) -> bool:
        return self.exchange.outstanding(b.owner(offset)) == 0

    def _advance(self, b: _Bracket, out: Out) -> list[bytes]:
        """Move the bracket on once what it waits for has arrived."""
        if b.phase is _Phase.RUNNING:
            answered = self._answered
            if not (answered(b, _CHECK) and answered(b, _AFTER) and answered(b, _STMT) and answered(b, _BEFORE)):
                return []
            if b.mode is not Mode.EXTENDED and not b.stmt_done:
                return []
            return self._measured(b, out)
        if b.phase is _Phase.COUNTING:
            if not self._answered(b, _COUNT):
                return []
            if _COUNT in b.failed:
                return self._refuse(b, f"the effect of this statement could not be measured ({b.failed[_COUNT]}); it was rolled back", RULE_ROWS, out)
            counted: dict[str, int] = {}
            assert b.verdict is not None and b.found is not None
            rows = b.rows.get(_COUNT, [])
            if len(rows) != 1 or len(rows[0]) != len(b.verdict.counts_needed):
                return self._refuse(b, "the effect of this statement could not be measured; it was rolled back", RULE_ROWS, out)
            for u, value in zip(b.verdict.counts_needed, rows[0], strict=True):
                counted[u.key] = int(value or b"0")
            return self._decided(b, judge(b.limits, b.found, counted, b.reported, _written(b)), out)
        if b.phase is _Phase.ENDING:
            if not self._answered(b, _END):
                return []
            return self._ended(b, out)
        return []

    def _measured(self, b: _Bracket, out: Out) -> list[bytes]:
        if b.mode is Mode.EXTENDED and not b.stmt_done:
            # Skipped after an earlier error.  If that error was the snapshot's (the client's
            # transaction had failed already), it is the one the Execute would have had.
            if _BEFORE in b.errors:
                b.held = [b.errors[_BEFORE]]
            return self._pass(b, out)
        if b.stmt_failed:
            return self._pass(b, out)  # it failed by itself: nothing to limit
        if _BEFORE in b.failed or _AFTER in b.failed or _CHECK in b.failed:
            reason = b.failed.get(_AFTER) or b.failed.get(_BEFORE) or b.failed.get(_CHECK, "")
            return self._refuse(b, f"the effect of this statement could not be measured ({reason}); it was rolled back", RULE_ROWS, out)
        check = b.rows.get(_CHECK)
        if check is not None and len(check) == 1 and len(check[0]) == 2 and check[0][1] != b"on":
            self._known = None
            return self._refuse(
                b,
                "the backend does not count rows (track_counts is off: code the session ran turned it off), so "
                f"the effect of this statement cannot be measured ({RULE_MEASUREMENT}); it was rolled back",
                RULE_MEASUREMENT,
                out,
                ask=False,
            )
        if check != [[b"0", b"on"]]:
            self._prepared = [False, False]  # parsed again (Close first) by the next bracket
            self._known = None
            return self._refuse(
                b,
                "the guard's own statements were replaced while this statement ran (a DEALLOCATE and PREPARE "
                f"in code it called), so its effect cannot be measured ({RULE_MEASUREMENT}); it was rolled back",
                RULE_MEASUREMENT,
                out,
                ask=False,
            )
        try:
            if b.before is None:
                b.before = self._counts(b.readings.get(_BEFORE, ()))
            b.after = self._counts(b.readings.get(_AFTER, ()))
            b.found = effects(b.before, b.after)
            b.carry = self._carry(b)
            if b.carry:
                self._known = frozenset(b.before) | frozenset(b.after)
        except (ValueError, codec.ProtocolError) as err:
            return self._refuse(b, f"the effect of this statement could not be measured ({err}); it was rolled back", RULE_ROWS, out)
        return self._decided(b, judge(b.limits, b.found, None, b.reported, _written(b)), out)

    def _counts(self, bodies: Iterable[bytes]) -> dict[int, TableCounts]:
        """The rows of a statistics reading (DataRow bodies), parsed (see parse_counts)."""
        cache = self._rows
        out: dict[int, TableCounts] = {}
        for body in bodies:
            t = cache.get(body)
            if t is None:
                (t,) = parse_counts([decode_data_row(body)]).values()
                if len(cache) >= ROW_CACHE:
                    cache.clear()
                cache[body] = t
            out[t.oid] = t
        return out

    def _decided(self, b: _Bracket, verdict: Verdict, out: Out) -> list[bytes]:
        b.verdict = verdict
        if b.overflow:
            return self._refuse(
                b,
                f"the answer of this statement exceeds {self.max_held} bytes, more than the proxy holds while it "
                "checks what the statement changed; it was rolled back",
                RULE_ROWS,
                out,
                ask=False,
            )
        if verdict.counts_needed:
            b.phase = _Phase.COUNTING
            fraction = b.limits.max_fraction or 1.0
            sql = "SELECT " + ", ".join(u.count_sql(fraction) for u in verdict.counts_needed)
            if b.mode is Mode.EXTENDED:
                out.upstream.append(self._extended(sql, b.owner(_COUNT)) + codec.FLUSH)
            else:
                out.upstream.append(self._query(sql, b.owner(_COUNT)))
            return []
        if verdict.ok:
            return self._commit(b, out)
        # No approval can cover what no measurement sees.
        return self._refuse(b, verdict.message, verdict.rule, out, ask=verdict.rule != RULE_DEFERRED)

    def _refuse(self, b: _Bracket, message: str, rule: str, out: Out, ask: bool = True) -> list[bytes]:
        if ask and not b.stmt_failed:
            b.phase = _Phase.APPROVAL
            b.verdict = Verdict(False, message, rule)
            changed = sorted(f"{e.table.display}={e.changed}" for e in b.found or () if e.changed)
            out.ask = ApprovalNeeded(b.statement, message, rule, f"{rule}:{','.join(changed)}")
            return []
        return self._rollback(b, f"dbsentry: {message}", out)

    def approval(self, approved: bool, message: str | None) -> Out:
        """The answer to :attr:`Out.ask`: commit after all, or refuse with ``message``."""
        out = Out()
        b = self.bracket
        if b is None or b.phase is not _Phase.APPROVAL:
            return out
        if approved:
            out.client.extend(self._commit(b, out))
        else:
            assert b.verdict is not None
            out.client.extend(self._rollback(b, message or f"dbsentry: {b.verdict.message}", out))
        return out

    # ------------------------------------------------------------------ endings

    def _pass(self, b: _Bracket, out: Out) -> list[bytes]:
        """The statement failed by itself: its answers go as they are."""
        return self._end_as_is(b, out, "ROLLBACK")

    def _commit(self, b: _Bracket, out: Out) -> list[bytes]:
        if b.mode is Mode.BLOCK or b.in_block:
            # The statement stays in the client's transaction: what the counters were after
            # it is what they are before the next guarded statement, if that one can know
            # the transaction is still open when it runs (a Query waits for every answer
            # before it; an Execute only reuses it in_block).  The session forgets this on
            # an error, on a ReadyForQuery other than "T", and on anything sent but plain
            # reads.  The reading after it saw the tables the statement changed (they are
            # locked); the others kept the counts the reading before it saw.
            assert b.before is not None and b.after is not None
            self._baseline = {**b.before, **b.after} if b.carry else None
        return self._end_as_is(b, out, "COMMIT")

    def _end_as_is(self, b: _Bracket, out: Out, ending: str) -> list[bytes]:
        """The statement's answers go as they are; the guard's own block (outside the
        client's) ends with ``ending`` first."""
        if b.mode is Mode.AUTOCOMMIT:
            b.phase = _Phase.ENDING
            b.verdict = Verdict(True)
            out.upstream.append(self._query(ending, b.owner(_END)))
            return []
        return self._finish(b, out, self._held_answers(b))

    def _rollback(self, b: _Bracket, message: str, out: Out) -> list[bytes]:
        error = self._error(message)
        b.verdict = Verdict(False, message)
        if b.mode is Mode.AUTOCOMMIT:
            b.phase = _Phase.ENDING
            b.held = [error]
            b.last_complete = None
            b.stmt_failed = True
            out.upstream.append(self._query("ROLLBACK", b.owner(_END)))
            return []
        if b.mode is Mode.BLOCK:
            # Fail the client's block: what the statement changed can only be rolled back.
            out.upstream.append(self._query(FAIL_SQL, b.owner(_FAIL)))
            return self._finish(b, out, [error, codec.encode_ready("E")])
        out.upstream.append(codec.encode_execute(m.Execute(f"{self._names}_{b.owner(_FAIL)}")))
        self.exchange.sent(m.Q_EXECUTE, b.owner(_FAIL))
        return self._finish(b, out, [error])

    def _held_answers(self, b: _Bracket) -> list[bytes]:
        frames = list(b.held)
        if b.stmt_ready is not None:
            frames.append(b.stmt_ready)
        return frames

    def _ended(self, b: _Bracket, out: Out) -> list[bytes]:
        """COMMIT or ROLLBACK of the guard's own block answered."""
        ready = next((f for f in b.end_frames if f[:1] == b"Z"), codec.encode_ready("I"))
        error = next((f for f in b.end_frames if f[:1] == b"E"), None)
        frames = list(b.held)
        if error is not None and not b.stmt_failed:
            # COMMIT failed (a deferred constraint): the statement's error, as PostgreSQL
            # reports it outside a block.
            if b.last_complete is not None and b.last_complete < len(frames):
                del frames[b.last_complete]
            frames.append(error)
        frames.append(ready)
        return self._finish(b, out, frames)

    def _finish(self, b: _Bracket, out: Out, frames: list[bytes]) -> list[bytes]:
        self.bracket = None
        out.finished = True
        return frames

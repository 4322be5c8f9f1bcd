"""Limits on real effect for MySQL/MariaDB: a data-changing statement runs inside a bracket
that measures what it actually changed and undoes it when that is too much.

As for PostgreSQL (``engines/postgres/session/guard.py``), no syntactic check decides
whether ``WHERE id > -1`` matches every row; the server does. In production the session
runs such a statement (the *guarded statement*: a ``COM_QUERY`` or a ``COM_STMT_EXECUTE``)
as a sequence of its own commands, one at a time:

1. ``INFO``: what the catalog says about the tables the statement writes (their engines,
   their triggers), the foreign keys whose actions cascade, and whether the server holds
   tables that cannot roll back;
2. ``START TRANSACTION`` outside a transaction, or ``SAVEPOINT`` inside one (autocommit off
   counts as inside: the server keeps a transaction open);
3. ``BEFORE``: the session's ``Handler_update`` and ``Handler_delete`` counters, the rows
   of the cascade children it watches, and the rows of each written table (bounded);
4. the statement itself, its answer held;
5. ``AFTER``: the counters and the children's rows again;
6. ``COMMIT`` (or ``RELEASE SAVEPOINT``) when the change is within the limits, else
   ``ROLLBACK`` (or ``ROLLBACK TO SAVEPOINT`` and ``RELEASE SAVEPOINT``).

The counters are the server's own and count every row its handlers updated or deleted:
through multi-table forms, triggers, ``REPLACE`` and ``ON DUPLICATE KEY UPDATE``, rows that
really changed only (an ``UPDATE`` that sets a value to itself counts nothing), whatever
``CLIENT_FOUND_ROWS`` makes the OK packet report. InnoDB's foreign key cascades do not go
through the handlers (measured on MariaDB 10.11): the rows of every table that an
``ON DELETE CASCADE`` can reach from the written tables are counted before and after
instead (every cascade child of the server when the statement may run code: a trigger or
a stored function). Cascades the counts cannot see (``SET NULL``, ``ON UPDATE CASCADE``
for a statement that may update) refuse the statement before it runs, as do writes to a
table that cannot roll back (an engine without transactions, such as MyISAM or Aria), a
write through a view, and code (triggers, stored functions) on a server holding such a
table. A measurement that fails refuses the statement (rolled back).

The client sees its statement's answer only, with the server status flags it would have
had without the bracket (out of a transaction after a ``COMMIT``); a refusal is an ERR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from dbsentry.governance.facts import StatementFacts

RULE_ROWS = "guardrails.max_rows_changed"
RULE_FRACTION = "guardrails.max_fraction_changed"
SAVEPOINT = "dbsentry_row_guard"
# Beyond this many rows a table is measured by the server's estimate (information_schema)
# when no absolute limit bounds the count.
MAX_COUNT = 1_000_000
_SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")

# Commands that change rows, or run code that may (the flags below).
_CHANGES_ROWS = frozenset({"UPDATE", "DELETE", "INSERT", "REPLACE", "LOAD DATA", "MERGE"})
_RUNS_CODE = frozenset({"side_effect_function", "volatile_function"})
# Commands that only define a statement without running it.
_DEFINES_ONLY = frozenset({"PREPARE", "EXPLAIN", "DESCRIBE", "CREATE TRIGGER", "CREATE FUNCTION", "CREATE PROCEDURE"})


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int | None
    max_fraction: float | None
    min_rows_for_fraction: int = 10

    def count_cap(self) -> int:
        """Rows worth counting in a table for the share limit: a table with more rows
        cannot reach the share once the absolute limit holds."""
        if self.max_rows is None or self.max_fraction is None:
            return MAX_COUNT
        return min(MAX_COUNT, math.floor(self.max_rows / self.max_fraction) + 1)


def changes_rows(facts: StatementFacts) -> bool:
    """Whether running the statement may change rows (SQL ``EXECUTE`` is judged by the
    caller, which knows what was prepared)."""
    if facts.command in _DEFINES_ONLY:
        return False
    return bool(_CHANGES_ROWS.intersection(facts.commands) or _RUNS_CODE & facts.flags or facts.command == "CALL")


def runs_code(facts: Sequence[StatementFacts]) -> bool:
    return any(_RUNS_CODE & f.flags for f in facts)


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def split_name(name: str, database: str) -> tuple[str, str]:
    """A written table as the facts name it (``table`` or ``schema.table``)."""
    schema, dot, table = name.rpartition(".")
    return (schema if dot else database), table


class Mode(Enum):
    TRANSACTION = "transaction"  # outside a transaction: START TRANSACTION ... COMMIT/ROLLBACK
    SAVEPOINT = "savepoint"  # inside one: SAVEPOINT ... RELEASE / ROLLBACK TO


@dataclass(frozen=True, slots=True)
class Cascade:
    """A foreign key whose action changes its child table's rows."""

    child: tuple[str, str]
    parent: tuple[str, str]
    on_delete: str
    on_update: str


@dataclass(slots=True)
class Catalog:
    """What ``INFO`` said."""

    tables: dict[tuple[str, str], tuple[bool, str]] = field(default_factory=dict)  # -> (transactional, type)
    cascades: list[Cascade] = field(default_factory=list)
    triggers: set[tuple[str, str]] = field(default_factory=set)
    non_transactional: list[tuple[str, str]] = field(default_factory=list)


def info_sql(written: Sequence[tuple[str, str]]) -> str:
    """One query, five text columns a row: ``table``, ``fk``, ``trigger`` and ``nontx`` rows."""
    pairs = ", ".join(f"({literal(s)}, {literal(t)})" for s, t in written) or "('', '')"
    system = ", ".join(literal(s) for s in _SYSTEM_SCHEMAS)
    return (
        "SELECT 'table', t.TABLE_SCHEMA, t.TABLE_NAME, IFNULL(e.TRANSACTIONS, 'NO'), t.TABLE_TYPE"
        " FROM information_schema.TABLES t LEFT JOIN information_schema.ENGINES e ON e.ENGINE = t.ENGINE"
        f" WHERE (t.TABLE_SCHEMA, t.TABLE_NAME) IN ({pairs})"
        " UNION ALL SELECT 'fk', CONCAT(r.CONSTRAINT_SCHEMA, '.', r.TABLE_NAME),"
        " CONCAT(r.UNIQUE_CONSTRAINT_SCHEMA, '.', r.REFERENCED_TABLE_NAME), r.DELETE_RULE, r.UPDATE_RULE"
        " FROM information_schema.REFERENTIAL_CONSTRAINTS r"
        " WHERE r.DELETE_RULE NOT IN ('RESTRICT', 'NO ACTION') OR r.UPDATE_RULE NOT IN ('RESTRICT', 'NO ACTION')"
        " UNION ALL SELECT 'trigger', g.EVENT_OBJECT_SCHEMA, g.EVENT_OBJECT_TABLE, '', ''"
        f" FROM information_schema.TRIGGERS g WHERE (g.EVENT_OBJECT_SCHEMA, g.EVENT_OBJECT_TABLE) IN ({pairs})"
        " UNION ALL (SELECT 'nontx', n.TABLE_SCHEMA, n.TABLE_NAME, '', ''"
        " FROM information_schema.TABLES n JOIN information_schema.ENGINES ne ON ne.ENGINE = n.ENGINE"
        f" WHERE n.TABLE_TYPE = 'BASE TABLE' AND ne.TRANSACTIONS <> 'YES' AND n.TABLE_SCHEMA NOT IN ({system}) LIMIT 1)"
    )


def _pair(text: str) -> tuple[str, str]:
    schema, _, table = text.partition(".")
    return schema, table


def parse_info(rows: Sequence[Sequence[bytes | None]]) -> Catalog:
    cat = Catalog()
    for row in rows:
        if len(row) != 5 or any(v is None for v in row):
            raise ValueError("unexpected row from the catalog query")
        kind, a, b, x, y = (v.decode("utf-8", "replace") for v in row if v is not None)
        if kind == "table":
            cat.tables[(a, b)] = (x == "YES", y)
        elif kind == "fk":
            cat.cascades.append(Cascade(_pair(a), _pair(b), x, y))
        elif kind == "trigger":
            cat.triggers.add((a, b))
        elif kind == "nontx":
            cat.non_transactional.append((a, b))
        else:
            raise ValueError(f"unexpected row kind {kind!r} from the catalog query")
    return cat


@dataclass(frozen=True, slots=True)
class Plan:
    """What the bracket measures, once the catalog is known."""

    children: tuple[tuple[str, str], ...]  # cascade children whose rows are counted
    tables: tuple[tuple[str, str], ...]  # written tables, counted for the share limit


def plan(cat: Catalog, written: Sequence[tuple[str, str]], facts: Sequence[StatementFacts]) -> Plan | str:
    """The measurement plan, or why the statement cannot be held (it is then refused)."""
    for name in written:
        found = cat.tables.get(name)
        if found is None:
            continue  # a temporary table (the session's own) or none: the server answers
        transactional, kind = found
        if kind == "VIEW":
            return f"a write through a view ({name[0]}.{name[1]}) cannot be measured"
        if not transactional:
            return f"{name[0]}.{name[1]} is stored by an engine without transactions, so a change to it cannot be undone"
    code = runs_code(facts) or any(name in cat.triggers for name in written)
    if code and cat.non_transactional:
        s, t = cat.non_transactional[0]
        return (
            "the statement runs code (a trigger or a stored function) on a server holding a table that cannot roll "
            f"back ({s}.{t}), so what it changes cannot be undone"
        )
    updates = code or any({"UPDATE", "REPLACE"} & set(f.commands) for f in facts)
    # The children an ON DELETE CASCADE reaches (all of them when code runs).
    reached: set[tuple[str, str]] = set()
    frontier = set(written)
    edges = [e for e in cat.cascades if e.on_delete == "CASCADE" or code]
    while True:
        new = {e.child for e in edges if (code or e.parent in frontier) and e.child not in reached}
        if not new:
            break
        reached |= new
        frontier = new
    for e in cat.cascades:
        parent_hit = code or e.parent in written or e.parent in reached
        if not parent_hit:
            continue
        if e.on_delete == "SET NULL" or e.on_delete == "SET DEFAULT":
            return f"the foreign key of {e.child[0]}.{e.child[1]} sets columns on delete (ON DELETE {e.on_delete}): its effect cannot be counted"
        if updates and e.on_update not in ("RESTRICT", "NO ACTION"):
            return f"the foreign key of {e.child[0]}.{e.child[1]} acts on update (ON UPDATE {e.on_update}): its effect cannot be counted"
    return Plan(tuple(sorted(reached)), tuple(dict.fromkeys(n for n in written if n in cat.tables)))


def snapshot_sql(p: Plan, mariadb: bool, limits: Limits, before: bool) -> str:
    """The counters, the children's rows and (``before``) the written tables' rows (each
    counted up to :meth:`Limits.count_cap` and its estimate from information_schema)."""
    status = "information_schema.SESSION_STATUS" if mariadb else "performance_schema.session_status"
    cols = [
        f"(SELECT VARIABLE_VALUE FROM {status} WHERE UPPER(VARIABLE_NAME) = 'HANDLER_UPDATE')",
        f"(SELECT VARIABLE_VALUE FROM {status} WHERE UPPER(VARIABLE_NAME) = 'HANDLER_DELETE')",
    ]
    cols += [f"(SELECT COUNT(*) FROM {quote(s)}.{quote(t)})" for s, t in p.children]
    if before:
        cap = limits.count_cap()
        for s, t in p.tables:
            cols.append(f"(SELECT COUNT(*) FROM (SELECT 1 FROM {quote(s)}.{quote(t)} LIMIT {cap}) dbsentry_n)")
            cols.append(
                "(SELECT IFNULL(TABLE_ROWS, 0) FROM information_schema.TABLES"
                f" WHERE TABLE_SCHEMA = {literal(s)} AND TABLE_NAME = {literal(t)})"
            )
    return "SELECT " + ", ".join(cols)


@dataclass(frozen=True, slots=True)
class Snapshot:
    updated: int
    deleted: int
    children: tuple[int, ...]
    tables: tuple[tuple[int, int], ...]  # (counted up to the cap, estimate)


def parse_snapshot(row: Sequence[bytes | None] | None, p: Plan, before: bool) -> Snapshot:
    want = 2 + len(p.children) + (2 * len(p.tables) if before else 0)
    if row is None or len(row) != want:
        raise ValueError("the server did not answer the measurement")
    values: list[int] = []
    for v in row:
        if v is None:
            raise ValueError("the server did not answer the measurement (NULL)")
        values.append(int(v))
    n = len(p.children)
    rest = values[2 + n :]
    return Snapshot(values[0], values[1], tuple(values[2 : 2 + n]), tuple(zip(rest[0::2], rest[1::2], strict=True)))


@dataclass(frozen=True, slots=True)
class Judgement:
    ok: bool
    changed: int
    message: str = ""  # without "dbsentry: "
    rule: str = RULE_ROWS


def judge(limits: Limits, p: Plan, before: Snapshot, after: Snapshot, reported: int = 0) -> Judgement:
    """The decision on what the statement changed: rows updated or deleted by the server's
    handlers, rows removed from cascade children, and at least what its OK reported for an
    UPDATE/DELETE (``reported``)."""
    upd = after.updated - before.updated
    dele = after.deleted - before.deleted
    cascaded = [b - a for b, a in zip(before.children, after.children, strict=True)]
    if upd < 0 or dele < 0:
        raise ValueError("the session's row counters went backwards")
    changed = max(upd + dele + sum(max(x, 0) for x in cascaded), reported)
    word = "row" if changed == 1 else "rows"
    if limits.max_rows is not None and changed > limits.max_rows:
        return Judgement(
            False, changed, f"this statement would have changed {changed} {word} (limit {limits.max_rows}, {RULE_ROWS}); it was rolled back"
        )
    fraction = limits.max_fraction
    if fraction is None or changed < limits.min_rows_for_fraction or not p.tables:
        return Judgement(True, changed)
    # Conservative: every changed row is counted against each written table, and the
    # smallest of them decides.
    cap = limits.count_cap()
    pct = round(fraction * 100)
    for (s, t), (counted, estimate) in zip(p.tables, before.tables, strict=True):
        had = counted if counted < cap else max(counted, estimate)
        if changed >= fraction * had:
            share = min(100, round(100 * changed / had)) if had > 0 else 100
            return Judgement(
                False,
                changed,
                f"this statement would have changed {changed} {word}, {share}% of the {had} rows of {s}.{t} "
                f"(limit {pct}% of a table, {RULE_FRACTION}); it was rolled back",
                RULE_FRACTION,
            )
    return Judgement(True, changed)


def begin_sql(mode: Mode) -> bytes:
    return b"START TRANSACTION" if mode is Mode.TRANSACTION else f"SAVEPOINT {SAVEPOINT}".encode()


def end_sql(mode: Mode, commit: bool) -> tuple[bytes, ...]:
    if mode is Mode.TRANSACTION:
        return (b"COMMIT",) if commit else (b"ROLLBACK",)
    release = f"RELEASE SAVEPOINT {SAVEPOINT}".encode()
    return (release,) if commit else (f"ROLLBACK TO SAVEPOINT {SAVEPOINT}".encode(), release)

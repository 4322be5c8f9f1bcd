"""What a statement does, in an engine-neutral vocabulary: the facts governance rules on.

An engine's SQL analysis (PostgreSQL: :mod:`dbsentry.engines.postgres.sql.facts`, with libpg_query) turns a
statement's text into :class:`StatementFacts`; policy, approvals, masking decisions and the
audit read only these. ``statement_class`` follows pgAudit's classes, ``flags`` the risk
markers in :data:`FLAGS`, and ``risk`` sums them up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "FLAGS",
    "AnalysisRefused",
    "Analyzer",
    "CopyFacts",
    "Risk",
    "StatementClass",
    "StatementFacts",
    "risk_of",
]

StatementClass = Literal["READ", "WRITE", "FUNCTION", "ROLE", "DDL", "MISC", "MISC_SET"]
Risk = Literal["low", "moderate", "high"]

#: Every flag an engine's analysis can set, and what it means.
FLAGS: dict[str, str] = {
    "no_where": "an UPDATE or DELETE without a WHERE clause",
    "always_true_where": "an UPDATE/DELETE WHERE (or a MERGE ON that updates or deletes) that is always true",
    "drop": "drops an object (DROP ..., ALTER TABLE ... DROP COLUMN/CONSTRAINT)",
    "truncate": "TRUNCATE",
    "alter_system": "ALTER SYSTEM",
    "copy_program": "COPY to or from a server-side program",
    "copy_server_file": "COPY to or from a file on the database server",
    "file_access": "calls a server-file or large-object function",
    "remote_connection": "opens or configures connections to other servers (dblink, FDW servers and user mappings, subscriptions)",
    "role_switch": "SET/RESET ROLE, SET/RESET SESSION AUTHORIZATION, set_config of those",
    "dynamic_sql": "runs SQL text the parser cannot see (DO blocks, query_to_xml(), dblink_exec()...)",
    "side_effect_function": "calls a function with side effects (nextval, pg_terminate_backend, advisory locks...)",
    "row_lock": "SELECT ... FOR UPDATE/SHARE, or LOCK TABLE",
    "temporary": "creates only temporary objects (CREATE TEMP TABLE, SELECT INTO TEMP)",
    "load": "LOAD of a shared library",
    "catalog_write": "INSERT/UPDATE/DELETE/MERGE/TRUNCATE/COPY FROM into a system catalog (pg_catalog, information_schema, pg_toast*, an unqualified name of one of pg_catalog's relations)",
    "read_write_transaction": "makes a transaction read-write or turns read-only off (BEGIN/SET TRANSACTION ... READ WRITE, SET [default_]transaction_read_only = off, set_config of those or of a setting whose name is not a constant)",
    "disruptive_maintenance": "LOCK in ACCESS EXCLUSIVE mode, VACUUM FULL, CLUSTER, REINDEX DATABASE/SYSTEM",
    "hold_cursor": "DECLARE ... WITH HOLD: a cursor that outlives its transaction",
    "local_infile": "LOAD DATA/XML LOCAL INFILE (MySQL): the server reads a file from the client's machine, and may ask for any file",
    "volatile_function": "runs code that may change data: a VOLATILE or writing user function (or one the catalog does not know), a view over one, a trigger, rule, default or check of a written table (set from the connection's catalog)",
}


@dataclass(frozen=True, slots=True)
class CopyFacts:
    """What a COPY moves and where."""

    direction: Literal["from", "to"]  # "from": into the database
    program: bool  # COPY ... PROGRAM 'cmd'
    server_file: bool  # a file on the server, not STDIN/STDOUT
    target: str | None  # the file name or program text, None for STDIN/STDOUT


@dataclass(frozen=True, slots=True)
class StatementFacts:
    """What one SQL statement does.  Hash and equality ignore the text, its span and the
    predicate trees kept for the engine's ``where_true_with``, so two statements with equal facts
    get the same policy decision."""

    command: str
    statement_class: StatementClass
    commands: tuple[str, ...]
    classes: tuple[StatementClass, ...]
    tables_read: tuple[str, ...]
    tables_written: tuple[str, ...]
    columns_read: tuple[str, ...]
    functions: tuple[str, ...]
    has_where: bool  # meaningful for UPDATE and DELETE
    where_trivially_true: bool
    flags: frozenset[str]
    risk: Risk
    copy: CopyFacts | None = None
    prepared_name: str | None = None  # PREPARE / EXECUTE / DEALLOCATE name
    inner: StatementFacts | None = None  # EXPLAIN, PREPARE, CREATE TABLE AS, COPY (query)...
    # lower-case names of the settings the statement changes, "?" for a name not known
    settings: tuple[str, ...] = ()
    # an UPDATE/DELETE WHERE (or a destructive MERGE condition) that mentions $n and is
    # not always true as written: bind the parameters and ask where_true_with()
    where_params: bool = False
    # EXECUTE name(args): each argument as text, None for NULL, UNKNOWN_PARAM if not constant
    execute_params: tuple[object, ...] | None = None
    span: tuple[int, int] = field(default=(0, 0), compare=False)  # [start, end) in the input
    text: str = field(default="", compare=False, repr=False)
    # the engine's fingerprint of a text (its parser's, constants ignored); None: the text
    fingerprinter: Callable[[str], str] | None = field(default=None, compare=False, repr=False)
    # the conditions behind where_params, in the engine's own form (PostgreSQL: tuples of
    # parse trees that must all be true); only the engine reads them
    where_predicates: tuple[tuple[Any, ...], ...] = field(default=(), compare=False, repr=False)
    _fingerprint: list[str] = field(default_factory=list, compare=False, repr=False)

    @property
    def dynamic_sql(self) -> bool:
        return "dynamic_sql" in self.flags

    @property
    def fingerprint(self) -> str:
        """The engine's fingerprint of the text (constants ignored), computed on first use."""
        if not self._fingerprint:
            fp = self.fingerprinter
            self._fingerprint.append(fp(self.text) if fp is not None else self.text)
        return self._fingerprint[0]


class AnalysisRefused(ValueError):
    """An engine's analysis gives no facts for a text, and every caller denies it (fail
    closed).  ``sqlstate`` says why: ``42601`` the engine's parser rejected the text
    (``position``: where, in characters from 0; None: at the end), ``0A000`` it holds a
    construct the analysis does not understand, ``54001`` it is too complex to analyse
    (``detail`` says how), ``XX000`` the analysis itself failed."""

    sqlstate = "42601"
    detail: str | None = None

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


#: An engine's analysis: a text (one or several statements) in, their facts out; raises
#: :class:`AnalysisRefused`.
Analyzer = Callable[[str], Sequence[StatementFacts]]


# Flags that make a statement high risk whatever else it does, and moderate ones.
_HIGH_FLAGS = frozenset(
    {
        "no_where",
        "always_true_where",
        "drop",
        "truncate",
        "alter_system",
        "copy_program",
        "copy_server_file",
        "file_access",
        "remote_connection",
        "role_switch",
        "dynamic_sql",
        "load",
        "catalog_write",
        "local_infile",
    }
)
_MODERATE_FLAGS = frozenset({"side_effect_function", "read_write_transaction", "disruptive_maintenance"})


def risk_of(classes: Iterable[str], flags: frozenset[str]) -> Risk:
    """A statement's risk from its classes and flags, the same for every engine."""
    classes = tuple(classes)
    if flags & _HIGH_FLAGS or "ROLE" in classes:
        return "high"
    if any(c in ("WRITE", "DDL", "FUNCTION") for c in classes) or flags & _MODERATE_FLAGS:
        return "moderate"
    return "low"

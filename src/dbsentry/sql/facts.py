"""Statement facts: what a SQL string does, read by PostgreSQL's own parser.

``analyze(sql)`` parses with libpg_query (through pglast) and walks the parse tree as
plain dicts: ``parse_sql_json`` loaded with orjson.  Building pglast's Python AST is
roughly ten times slower and is deliberately not used on this path.

Because the real parser does the work, comments, letter case, quoting, ``U&"..."``
identifiers, dollar quoting and stacked statements are already resolved when the
walk starts: obfuscation has nothing to hide behind.  Anything the parser rejects
raises :class:`SQLParseError`, and callers deny it (fail closed).

The facts are a fixed vocabulary so that policy rules can match on them:

- ``command``: the statement's command tag (``"DELETE"``, ``"DROP TABLE"``,
  ``"EXPLAIN ANALYZE"``...); ``commands`` adds every command that runs *inside* it
  (data-modifying CTEs, the statement under ``EXPLAIN ANALYZE``, ``PREPARE``,
  ``CREATE TABLE AS``, ``COPY (query)``, ``DECLARE CURSOR``).
- ``statement_class``: the pgAudit class (READ, WRITE, FUNCTION, ROLE, DDL, MISC,
  MISC_SET); ``classes`` again includes what runs inside.
- ``flags``: risk markers, see :data:`FLAGS`.
"""

from __future__ import annotations

import fnmatch
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pglast import parser as _pg

StatementClass = Literal["READ", "WRITE", "FUNCTION", "ROLE", "DDL", "MISC", "MISC_SET"]
Risk = Literal["low", "moderate", "high"]

#: Every flag ``analyze`` can set, and what it means.
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
}

# Functions that read or write files on the database server or move large objects.
FILE_ACCESS_FUNCTIONS: tuple[str, ...] = (
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_*",
    "pg_stat_file",
    "pg_file_*",
    "lo_*",
    "pg_logdir_ls",
)
# Functions that run SQL given as text, so the parser cannot see the statement.
DYNAMIC_SQL_FUNCTIONS: tuple[str, ...] = (
    "query_to_xml",
    "query_to_xml_and_xmlschema",
    "query_to_xmlschema",
    "cursor_to_xml",
    "table_to_xml*",
    "schema_to_xml*",
    "database_to_xml*",
    "ts_stat",
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_send_query",
)
REMOTE_CONNECTION_FUNCTIONS: tuple[str, ...] = ("dblink*",)
# Functions that change state beyond the statement: sequences, settings, other sessions,
# locks, server housekeeping.  An agent is read-only, so a SELECT calling one is a write.
SIDE_EFFECT_FUNCTIONS: tuple[str, ...] = (
    "nextval",
    "setval",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_advisory_*lock*",
    "pg_try_advisory_*lock*",
    "pg_notify",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_promote",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay_*",
    "pg_create_*_replication_slot",
    "pg_drop_replication_slot",
    "pg_copy_*_replication_slot",
    "pg_replication_origin_*",
    "pg_replication_slot_advance",
    "pg_logical_emit_message",
    "pg_logical_slot_get_*",
    "pg_stat_reset*",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
    "lo_*",
    "pg_file_*",
    "dblink*",
    "txid_current",
    "pg_current_xact_id",
)


def _glob_re(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(p) for p in patterns))


_FILE_RE = _glob_re(FILE_ACCESS_FUNCTIONS)
_DYNAMIC_RE = _glob_re(DYNAMIC_SQL_FUNCTIONS)
_REMOTE_RE = _glob_re(REMOTE_CONNECTION_FUNCTIONS)
_SIDE_RE = _glob_re(SIDE_EFFECT_FUNCTIONS)


class SQLParseError(ValueError):
    """PostgreSQL's parser rejected the text; the caller must deny it."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


@dataclass(frozen=True, slots=True)
class CopyFacts:
    """What a COPY moves and where."""

    direction: Literal["from", "to"]  # "from": into the database
    program: bool  # COPY ... PROGRAM 'cmd'
    server_file: bool  # a file on the server, not STDIN/STDOUT
    target: str | None  # the file name or program text, None for STDIN/STDOUT


@dataclass(frozen=True, slots=True)
class StatementFacts:
    """What one SQL statement does.  Hash and equality ignore the text and its span,
    so two statements with equal facts get the same policy decision."""

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
    span: tuple[int, int] = field(default=(0, 0), compare=False)  # [start, end) in the input
    text: str = field(default="", compare=False, repr=False)
    _fingerprint: list[str] = field(default_factory=list, compare=False, repr=False)

    @property
    def dynamic_sql(self) -> bool:
        return "dynamic_sql" in self.flags

    @property
    def fingerprint(self) -> str:
        """libpg_query's fingerprint (constants ignored), computed on first use."""
        if not self._fingerprint:
            self._fingerprint.append(_pg.fingerprint(self.text))
        return self._fingerprint[0]


# -- command names and classes -------------------------------------------------------

_SIMPLE: dict[str, tuple[str, StatementClass]] = {
    "InsertStmt": ("INSERT", "WRITE"),
    "UpdateStmt": ("UPDATE", "WRITE"),
    "DeleteStmt": ("DELETE", "WRITE"),
    "MergeStmt": ("MERGE", "WRITE"),
    "TruncateStmt": ("TRUNCATE", "WRITE"),
    "CreateStmt": ("CREATE TABLE", "DDL"),
    "IndexStmt": ("CREATE INDEX", "DDL"),
    "ViewStmt": ("CREATE VIEW", "DDL"),
    "CreateSeqStmt": ("CREATE SEQUENCE", "DDL"),
    "AlterSeqStmt": ("ALTER SEQUENCE", "DDL"),
    "CreateSchemaStmt": ("CREATE SCHEMA", "DDL"),
    "CreatedbStmt": ("CREATE DATABASE", "DDL"),
    "DropdbStmt": ("DROP DATABASE", "DDL"),
    "AlterDatabaseStmt": ("ALTER DATABASE", "DDL"),
    "AlterDatabaseSetStmt": ("ALTER DATABASE", "DDL"),
    "CreateTrigStmt": ("CREATE TRIGGER", "DDL"),
    "CreateEventTrigStmt": ("CREATE EVENT TRIGGER", "DDL"),
    "RuleStmt": ("CREATE RULE", "DDL"),
    "CommentStmt": ("COMMENT", "DDL"),
    "SecLabelStmt": ("SECURITY LABEL", "DDL"),
    "CompositeTypeStmt": ("CREATE TYPE", "DDL"),
    "CreateEnumStmt": ("CREATE TYPE", "DDL"),
    "CreateRangeStmt": ("CREATE TYPE", "DDL"),
    "AlterEnumStmt": ("ALTER TYPE", "DDL"),
    "CreateDomainStmt": ("CREATE DOMAIN", "DDL"),
    "CreateExtensionStmt": ("CREATE EXTENSION", "DDL"),
    "AlterExtensionStmt": ("ALTER EXTENSION", "DDL"),
    "CreatePolicyStmt": ("CREATE POLICY", "DDL"),
    "AlterPolicyStmt": ("ALTER POLICY", "DDL"),
    "CreateForeignServerStmt": ("CREATE SERVER", "DDL"),
    "AlterForeignServerStmt": ("ALTER SERVER", "DDL"),
    "CreateUserMappingStmt": ("CREATE USER MAPPING", "DDL"),
    "AlterUserMappingStmt": ("ALTER USER MAPPING", "DDL"),
    "DropUserMappingStmt": ("DROP USER MAPPING", "DDL"),
    "CreateForeignTableStmt": ("CREATE FOREIGN TABLE", "DDL"),
    "ImportForeignSchemaStmt": ("IMPORT FOREIGN SCHEMA", "DDL"),
    "CreateFdwStmt": ("CREATE FOREIGN DATA WRAPPER", "DDL"),
    "CreateSubscriptionStmt": ("CREATE SUBSCRIPTION", "DDL"),
    "AlterSubscriptionStmt": ("ALTER SUBSCRIPTION", "DDL"),
    "DropSubscriptionStmt": ("DROP SUBSCRIPTION", "DDL"),
    "CreatePublicationStmt": ("CREATE PUBLICATION", "DDL"),
    "AlterPublicationStmt": ("ALTER PUBLICATION", "DDL"),
    "CreateTableSpaceStmt": ("CREATE TABLESPACE", "DDL"),
    "DropTableSpaceStmt": ("DROP TABLESPACE", "DDL"),
    "RefreshMatViewStmt": ("REFRESH MATERIALIZED VIEW", "DDL"),
    "AlterSystemStmt": ("ALTER SYSTEM", "DDL"),
    "DropOwnedStmt": ("DROP OWNED", "DDL"),
    "ReassignOwnedStmt": ("REASSIGN OWNED", "DDL"),
    "CreateStatsStmt": ("CREATE STATISTICS", "DDL"),
    "CreateCastStmt": ("CREATE CAST", "DDL"),
    "CreateConversionStmt": ("CREATE CONVERSION", "DDL"),
    "CreateOpClassStmt": ("CREATE OPERATOR CLASS", "DDL"),
    "CreatePLangStmt": ("CREATE LANGUAGE", "DDL"),
    "CreateTransformStmt": ("CREATE TRANSFORM", "DDL"),
    "CreateAmStmt": ("CREATE ACCESS METHOD", "DDL"),
    "AlterFunctionStmt": ("ALTER FUNCTION", "DDL"),
    "AlterDefaultPrivilegesStmt": ("ALTER DEFAULT PRIVILEGES", "ROLE"),
    "AlterRoleStmt": ("ALTER ROLE", "ROLE"),
    "AlterRoleSetStmt": ("ALTER ROLE", "ROLE"),
    "DropRoleStmt": ("DROP ROLE", "ROLE"),
    "DoStmt": ("DO", "FUNCTION"),
    "CallStmt": ("CALL", "FUNCTION"),
    "VariableShowStmt": ("SHOW", "MISC"),
    "ListenStmt": ("LISTEN", "MISC"),
    "UnlistenStmt": ("UNLISTEN", "MISC"),
    "NotifyStmt": ("NOTIFY", "MISC"),
    "DeclareCursorStmt": ("DECLARE CURSOR", "READ"),
    "ClosePortalStmt": ("CLOSE", "MISC"),
    "LockStmt": ("LOCK TABLE", "MISC"),
    "ClusterStmt": ("CLUSTER", "MISC"),
    "ReindexStmt": ("REINDEX", "MISC"),
    "CheckPointStmt": ("CHECKPOINT", "MISC"),
    "LoadStmt": ("LOAD", "MISC"),
    "ExecuteStmt": ("EXECUTE", "MISC"),
    "PrepareStmt": ("PREPARE", "MISC"),
    "ConstraintsSetStmt": ("SET CONSTRAINTS", "MISC"),
}

_TRANSACTION = {
    "TRANS_STMT_BEGIN": "BEGIN",
    "TRANS_STMT_START": "START TRANSACTION",
    "TRANS_STMT_COMMIT": "COMMIT",
    "TRANS_STMT_ROLLBACK": "ROLLBACK",
    "TRANS_STMT_SAVEPOINT": "SAVEPOINT",
    "TRANS_STMT_RELEASE": "RELEASE",
    "TRANS_STMT_ROLLBACK_TO": "ROLLBACK TO SAVEPOINT",
    "TRANS_STMT_PREPARE": "PREPARE TRANSACTION",
    "TRANS_STMT_COMMIT_PREPARED": "COMMIT PREPARED",
    "TRANS_STMT_ROLLBACK_PREPARED": "ROLLBACK PREPARED",
}

# Object types whose names are relations (so a DROP of them writes a table-like thing).
_RELATION_OBJECTS = {
    "OBJECT_TABLE",
    "OBJECT_VIEW",
    "OBJECT_MATVIEW",
    "OBJECT_FOREIGN_TABLE",
    "OBJECT_SEQUENCE",
    "OBJECT_INDEX",
}
_DROP_SUBTYPES = {"AT_DropColumn", "AT_DropConstraint", "AT_DetachPartition"}
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
    }
)
_SPLIT_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def _object_name(objtype: str | None) -> str:
    return (objtype or "OBJECT_UNKNOWN").removeprefix("OBJECT_").replace("_", " ")


def _generic_command(node_type: str) -> str:
    return " ".join(_SPLIT_CAMEL.split(node_type.removesuffix("Stmt"))).upper()


def _strings(items: Any) -> list[str]:
    out = []
    for it in items or ():
        s = it.get("String") if isinstance(it, dict) else None
        if s is not None:
            out.append(s.get("sval", ""))
    return out


def _range_name(rv: dict[str, Any]) -> str:
    schema = rv.get("schemaname")
    rel: str = rv.get("relname", "")
    return f"{schema}.{rel}" if schema else rel


def _unwrap(node: Any) -> tuple[str, Any]:
    """``{"SelectStmt": {...}}`` -> ``("SelectStmt", {...})``."""
    if isinstance(node, dict) and len(node) == 1:
        ((k, v),) = node.items()
        return k, v
    return "", node


# -- constant folding for WHERE clauses ------------------------------------------------


class _Unknown:
    pass


_UNKNOWN = _Unknown()
_TRUE_STRINGS = {"t", "true", "y", "yes", "on", "1"}
_FALSE_STRINGS = {"f", "false", "n", "no", "off", "0"}
_INT_TYPES = {"int2", "int4", "int8", "int", "integer", "smallint", "bigint", "numeric"}


def _const(node: Any) -> Any:
    """The value of a constant expression, or ``_UNKNOWN``.  NULL is ``None``."""
    kind, body = _unwrap(node)
    if kind == "A_Const":
        if body.get("isnull"):
            return None
        if "ival" in body:
            return int(body["ival"].get("ival", 0))
        if "fval" in body:
            try:
                return float(body["fval"].get("fval", "0"))
            except ValueError:
                return _UNKNOWN
        if "sval" in body:
            return str(body["sval"].get("sval", ""))
        if "boolval" in body:
            return bool(body["boolval"].get("boolval", False))
        if "bsval" in body:
            return str(body["bsval"].get("bsval", ""))
        return _UNKNOWN
    if kind == "TypeCast":
        value = _const(body.get("arg"))
        if value is _UNKNOWN or value is None:
            return value
        names = _strings(body.get("typeName", {}).get("names"))
        tname = names[-1] if names else ""
        if tname in ("bool", "boolean"):
            text = str(value).strip().lower()
            if text in _TRUE_STRINGS:
                return True
            if text in _FALSE_STRINGS:
                return False
            return _UNKNOWN
        if tname in _INT_TYPES:
            try:
                return int(str(value).strip())
            except ValueError:
                return _UNKNOWN
        if tname in ("text", "varchar", "bpchar", "name"):
            return value if isinstance(value, str) else _UNKNOWN
        return _UNKNOWN
    if kind == "BoolExpr" or kind in ("A_Expr", "NullTest", "BooleanTest", "SubLink"):
        return _truth(node)
    if kind == "CoalesceExpr":
        for arg in body.get("args", ()):
            value = _const(arg)
            if value is _UNKNOWN or value is not None:
                return value
        return None
    return _UNKNOWN


def _strip_locations(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_locations(v) for k, v in node.items() if k != "location"}
    if isinstance(node, list):
        return [_strip_locations(v) for v in node]
    return node


def _same_column(a: Any, b: Any) -> bool:
    ka, _ = _unwrap(a)
    kb, _ = _unwrap(b)
    return ka == kb == "ColumnRef" and _strip_locations(a) == _strip_locations(b)


_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "<>": operator.ne,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}


def _compare(op: str, a: Any, b: Any) -> Any:
    """``a op b`` for constants of one kind (numbers, strings, booleans); NULL gives None."""
    if a is None or b is None:
        return None
    fn = _COMPARISONS.get(op)
    if fn is None or isinstance(a, bool) != isinstance(b, bool):
        return _UNKNOWN
    numeric = (int, float)
    if (isinstance(a, numeric) and isinstance(b, numeric)) or (
        isinstance(a, str) and isinstance(b, str)
    ):
        return fn(a, b)
    return _UNKNOWN


def _like(value: str, pattern: str) -> bool:
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _select_is_constant_true(sel: Any) -> Any:
    """``(SELECT true)``: a FROM-less SELECT of one constant, else unknown."""
    kind, body = _unwrap(sel)
    if kind != "SelectStmt" or body.get("fromClause") or body.get("whereClause"):
        return _UNKNOWN
    targets: list[Any] = body.get("targetList") or []
    if len(targets) != 1 or "limitCount" in body or "havingClause" in body:
        return _UNKNOWN
    return _const(targets[0].get("ResTarget", {}).get("val"))


def _truth(node: Any) -> Any:
    """True/False when ``node`` is a boolean expression that does not depend on the row,
    ``None`` for NULL, ``_UNKNOWN`` otherwise.  ``col = col`` counts as true."""
    kind, body = _unwrap(node)
    if kind == "BoolExpr":
        op = body.get("boolop")
        values = [_truth(a) for a in body.get("args", ())]
        if op == "NOT_EXPR":
            v = values[0] if values else _UNKNOWN
            return (not v) if isinstance(v, bool) else v
        if op == "AND_EXPR":
            if any(v is False for v in values):
                return False
            return True if all(v is True for v in values) else _UNKNOWN
        if op == "OR_EXPR":
            if any(v is True for v in values):
                return True
            return False if all(v is False for v in values) else _UNKNOWN
        return _UNKNOWN
    if kind == "A_Expr":
        akind = body.get("kind")
        names = _strings(body.get("name"))
        op = names[-1] if names else ""
        lexpr, rexpr = body.get("lexpr"), body.get("rexpr")
        if akind == "AEXPR_OP":
            if lexpr is None:  # prefix operator, e.g. unary minus
                value = _const(rexpr)
                if op == "-" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    return -value
                return _UNKNOWN
            if op in ("=", "<=", ">=") and _same_column(lexpr, rexpr):
                return True
            a, b = _const(lexpr), _const(rexpr)
            if a is _UNKNOWN or b is _UNKNOWN:
                return _UNKNOWN
            if op in ("+", "-", "*") and type(a) in (int, float) and type(b) in (int, float):
                return a + b if op == "+" else a - b if op == "-" else a * b
            if op == "||" and isinstance(a, str) and isinstance(b, str):
                return a + b
            return _compare(op, a, b)
        if akind in ("AEXPR_NOT_DISTINCT", "AEXPR_DISTINCT"):
            if _same_column(lexpr, rexpr):
                return akind == "AEXPR_NOT_DISTINCT"
            a, b = _const(lexpr), _const(rexpr)
            if a is _UNKNOWN or b is _UNKNOWN:
                return _UNKNOWN
            same = a == b if (a is not None and b is not None) else (a is None and b is None)
            return same if akind == "AEXPR_NOT_DISTINCT" else not same
        if akind in ("AEXPR_IN", "AEXPR_OP_ANY"):
            _, rbody = _unwrap(rexpr)
            items = rbody.get("items") or rbody.get("elements") if isinstance(rbody, dict) else None
            if items is None:
                return _UNKNOWN
            positive = op == "="
            if not positive and op not in ("<>", "!="):
                return _UNKNOWN
            if positive and any(_same_column(lexpr, it) for it in items):
                return True
            a = _const(lexpr)
            values = [_const(it) for it in items]
            if a is _UNKNOWN or any(v is _UNKNOWN for v in values):
                return _UNKNOWN
            hit = any(_compare("=", a, v) is True for v in values)
            return hit if positive else (not hit and all(_compare("=", a, v) is False for v in values))
        if akind in ("AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN"):
            _, rbody = _unwrap(rexpr)
            items = rbody.get("items", []) if isinstance(rbody, dict) else []
            if len(items) != 2:
                return _UNKNOWN
            a, lo, hi = _const(lexpr), _const(items[0]), _const(items[1])
            ge, le = _compare(">=", a, lo), _compare("<=", a, hi)
            if not isinstance(ge, bool) or not isinstance(le, bool):
                return _UNKNOWN
            return (ge and le) if akind == "AEXPR_BETWEEN" else not (ge and le)
        if akind in ("AEXPR_LIKE", "AEXPR_ILIKE"):
            a, b = _const(lexpr), _const(rexpr)
            if not isinstance(a, str) or not isinstance(b, str):
                return _UNKNOWN
            if akind == "AEXPR_ILIKE":
                a, b = a.lower(), b.lower()
            hit = _like(a, b)
            return hit if op in ("~~", "~~*") else not hit
        return _UNKNOWN
    if kind == "NullTest":
        arg = body.get("arg")
        value = _const(arg)
        if value is _UNKNOWN:
            return _UNKNOWN
        is_null = value is None
        return is_null if body.get("nulltesttype") == "IS_NULL" else not is_null
    if kind == "BooleanTest":
        value = _const(body.get("arg"))
        if value is _UNKNOWN or not (value is None or isinstance(value, bool)):
            return _UNKNOWN
        test = body.get("booltesttype")
        return {
            "IS_TRUE": value is True,
            "IS_NOT_TRUE": value is not True,
            "IS_FALSE": value is False,
            "IS_NOT_FALSE": value is not False,
            "IS_UNKNOWN": value is None,
            "IS_NOT_UNKNOWN": value is not None,
        }.get(test or "", _UNKNOWN)
    if kind == "SubLink":
        link = body.get("subLinkType")
        if link == "EXISTS_SUBLINK":
            _, sel = _unwrap(body.get("subselect"))
            if not isinstance(sel, dict) or sel.get("fromClause") or "limitCount" in sel:
                return _UNKNOWN
            if "havingClause" in sel or "larg" in sel or "valuesLists" in sel:
                return _UNKNOWN
            where = sel.get("whereClause")
            return True if where is None else (True if _truth(where) is True else _UNKNOWN)
        if link == "EXPR_SUBLINK":
            return _select_is_constant_true(body.get("subselect"))
        return _UNKNOWN
    value = _const(node) if kind in ("A_Const", "TypeCast", "CoalesceExpr") else _UNKNOWN
    return value


def _always_true(where: Any) -> bool:
    return _truth(where) is True


# -- the walk --------------------------------------------------------------------------


class _Walk:
    """Collects facts from one statement's tree (and the statements inside it)."""

    __slots__ = (
        "classes",
        "columns",
        "commands",
        "ctes",
        "flags",
        "functions",
        "reads",
        "scopes",
        "writes",
    )

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.writes: set[str] = set()
        self.columns: set[str] = set()
        self.functions: set[str] = set()
        self.flags: set[str] = set()
        self.commands: list[str] = []
        self.classes: list[StatementClass] = []
        self.ctes: list[frozenset[str]] = []
        self.scopes: list[dict[str, str | None]] = []

    # generic traversal: dispatch wrapped nodes, descend through everything else.
    # Iterative and type()-based because this loop is most of the cost of analyze().
    def visit(self, node: Any) -> None:
        handlers = _HANDLERS
        stack = [node]
        pop, push, extend = stack.pop, stack.append, stack.extend
        while stack:
            n = pop()
            tn = type(n)
            if tn is dict:
                for key, value in n.items():
                    handler = handlers.get(key)
                    if handler is None:
                        tv = type(value)
                        if tv is dict or tv is list:
                            push(value)
                    elif handler is not _skip:
                        handler(self, value)
            elif tn is list:
                extend(n)

    def _is_cte(self, rv: dict[str, Any]) -> bool:
        if rv.get("schemaname"):
            return False
        name = rv.get("relname", "")
        return any(name in level for level in self.ctes)

    def _with(self, with_clause: Any) -> bool:
        if not with_clause:
            return False
        ctes = [c.get("CommonTableExpr", {}) for c in with_clause.get("ctes", ())]
        if with_clause.get("recursive"):
            self.ctes.append(frozenset(c.get("ctename", "") for c in ctes))
            for cte in ctes:
                self.nested(cte.get("ctequery"))
            return True
        # Without RECURSIVE a CTE sees only the CTEs before it: in
        # ``WITH t AS (SELECT * FROM t)`` the inner ``t`` is the real table.
        self.ctes.append(frozenset())
        for cte in ctes:
            self.nested(cte.get("ctequery"))
            self.ctes[-1] = self.ctes[-1] | {cte.get("ctename", "")}
        return True

    def nested(self, stmt: Any) -> None:
        """A statement that runs inside the current one (CTE, subquery, COPY query)."""
        kind, body = _unwrap(stmt)
        if kind == "SelectStmt":
            self.select(body)
        elif kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
            command, klass = _SIMPLE[kind]
            self.commands.append(command)
            self.classes.append(klass)
            _STATEMENT_HANDLERS[kind](self, body)
        elif kind:
            self.visit(stmt)

    def target(self, rv: dict[str, Any], scope: dict[str, str | None]) -> str:
        name = _range_name(rv)
        self.writes.add(name)
        alias = rv.get("alias", {}).get("aliasname")
        scope[alias or rv.get("relname", "")] = name
        return name

    def from_item(self, item: Any, scope: dict[str, str | None]) -> None:
        kind, body = _unwrap(item)
        if kind == "RangeVar":
            alias = body.get("alias", {}).get("aliasname") or body.get("relname", "")
            if self._is_cte(body):
                scope[alias] = None
            else:
                name = _range_name(body)
                self.reads.add(name)
                scope[alias] = name
        elif kind == "JoinExpr":
            self.from_item(body.get("larg"), scope)
            self.from_item(body.get("rarg"), scope)
            self.visit(body.get("quals"))
            self.visit(body.get("usingClause"))
        elif kind == "RangeSubselect":
            self.nested(body.get("subquery"))
            alias = body.get("alias", {}).get("aliasname")
            if alias:
                scope[alias] = None
        else:
            self.visit(item)
            alias = body.get("alias", {}).get("aliasname") if isinstance(body, dict) else None
            if alias:
                scope[alias] = None

    def select(self, s: dict[str, Any]) -> None:
        pushed = self._with(s.get("withClause"))
        if "larg" in s:
            self.select(s["larg"].get("SelectStmt", s["larg"]))
            self.select(s["rarg"].get("SelectStmt", s["rarg"]))
            for key in ("sortClause", "limitCount", "limitOffset"):
                self.visit(s.get(key))
        else:
            scope: dict[str, str | None] = {}
            self.scopes.append(scope)
            for item in s.get("fromClause", ()):
                self.from_item(item, scope)
            for key in (
                "targetList",
                "whereClause",
                "groupClause",
                "havingClause",
                "windowClause",
                "sortClause",
                "limitCount",
                "limitOffset",
                "valuesLists",
                "distinctClause",
            ):
                value = s.get(key)
                if value is not None:
                    self.visit(value)
            into = s.get("intoClause")
            if into:
                self.writes.add(_range_name(into.get("rel", {})))
            if s.get("lockingClause"):
                self.flags.add("row_lock")
            self.scopes.pop()
        if pushed:
            self.ctes.pop()

    def dml(self, s: dict[str, Any], kind: str) -> None:
        pushed = self._with(s.get("withClause"))
        scope: dict[str, str | None] = {}
        self.scopes.append(scope)
        name = self.target(s.get("relation", {}), scope)
        for key in ("fromClause", "usingClause"):
            for item in s.get(key, ()):
                self.from_item(item, scope)
        if kind == "MergeStmt":
            self.from_item(s.get("sourceRelation"), scope)
            self.visit(s.get("joinCondition"))
            self.visit(s.get("mergeWhenClauses"))
            destructive = any(
                w.get("MergeWhenClause", {}).get("commandType") in ("CMD_DELETE", "CMD_UPDATE")
                and w.get("MergeWhenClause", {}).get("matchKind") == "MERGE_WHEN_MATCHED"
                and w.get("MergeWhenClause", {}).get("condition") is None
                for w in s.get("mergeWhenClauses", ())
            )
            if destructive and _always_true(s.get("joinCondition")):
                self.flags.add("always_true_where")
        if kind == "InsertStmt":
            self.nested(s.get("selectStmt"))
            self.visit(s.get("onConflictClause"))
        else:
            self.visit(s.get("targetList"))
        if kind in ("UpdateStmt", "DeleteStmt"):
            where = s.get("whereClause")
            if where is None:
                self.flags.add("no_where")
            else:
                self.visit(where)
                if _always_true(where):
                    self.flags.add("always_true_where")
        returning = s.get("returningClause") or s.get("returningList")
        if returning:
            self.reads.add(name)
            self.visit(returning)
        self.scopes.pop()
        if pushed:
            self.ctes.pop()

    def column(self, body: dict[str, Any]) -> None:
        parts: list[str] = []
        for f in body.get("fields", ()):
            if "String" in f:
                parts.append(f["String"].get("sval", ""))
            else:
                parts.append("*")
        if not parts:
            return
        col = parts[-1]
        if len(parts) >= 2:
            qualifier = parts[-2]
            for scope in reversed(self.scopes):
                if qualifier in scope:
                    table = scope[qualifier]
                    self.columns.add(f"{table}.{col}" if table else f"{qualifier}.{col}")
                    return
            self.columns.add(".".join(parts))
            return
        if self.scopes:
            tables = self.scopes[-1]
            if len(tables) == 1:
                (table,) = tables.values()
                if table:
                    self.columns.add(f"{table}.{col}")
                    return
        self.columns.add(col)

    def func(self, body: dict[str, Any]) -> None:
        names = _strings(body.get("funcname"))
        name = ".".join(names)
        self.functions.add(name)
        base = names[-1] if names else ""
        if _FILE_RE.match(base):
            self.flags.add("file_access")
        if _DYNAMIC_RE.match(base):
            self.flags.add("dynamic_sql")
        if _REMOTE_RE.match(base):
            self.flags.add("remote_connection")
        if _SIDE_RE.match(base):
            self.flags.add("side_effect_function")
        if base == "set_config":
            args = body.get("args") or ()
            setting = _const(args[0]) if args else _UNKNOWN
            if not isinstance(setting, str) or setting.lower() in (
                "role",
                "session_authorization",
            ):
                self.flags.add("role_switch")
        for key in ("args", "agg_order", "agg_filter", "over"):
            value = body.get(key)
            if value is not None:
                self.visit(value)


def _skip(w: _Walk, body: Any) -> None:
    """Leaves with nothing to collect: constants, type names, parameters."""


def _h_select(w: _Walk, body: Any) -> None:
    w.select(body)


def _h_column(w: _Walk, body: Any) -> None:
    w.column(body)


def _h_func(w: _Walk, body: Any) -> None:
    w.func(body)


def _h_rangevar(w: _Walk, body: Any) -> None:
    # a RangeVar met outside a FROM list (e.g. in DDL): the relation is acted upon
    if not w._is_cte(body):
        w.writes.add(_range_name(body))


def _h_nested_dml(kind: str) -> Any:
    def handler(w: _Walk, body: Any) -> None:
        w.nested({kind: body})

    return handler


_HANDLERS: dict[str, Any] = {
    "A_Const": _skip,
    "String": _skip,
    "Integer": _skip,
    "Float": _skip,
    "Boolean": _skip,
    "TypeName": _skip,
    "typeName": _skip,
    "ParamRef": _skip,
    "SQLValueFunction": _skip,
    "A_Star": _skip,
    "SelectStmt": _h_select,
    "ColumnRef": _h_column,
    "FuncCall": _h_func,
    "RangeVar": _h_rangevar,
    "InsertStmt": _h_nested_dml("InsertStmt"),
    "UpdateStmt": _h_nested_dml("UpdateStmt"),
    "DeleteStmt": _h_nested_dml("DeleteStmt"),
    "MergeStmt": _h_nested_dml("MergeStmt"),
}


def _dml_handler(kind: str) -> Any:
    def handler(w: _Walk, body: Any) -> None:
        w.dml(body, kind)

    return handler


_STATEMENT_HANDLERS: dict[str, Any] = {
    k: _dml_handler(k) for k in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")
}


# -- per statement -----------------------------------------------------------------------


@dataclass(slots=True)
class _Top:
    command: str
    klass: StatementClass
    has_where: bool = True
    where_true: bool = False
    copy: CopyFacts | None = None
    prepared: str | None = None
    inner: StatementFacts | None = None
    merge_inner: bool = False


def _relation_walk(w: _Walk, body: dict[str, Any]) -> None:
    rel = body.get("relation")
    if isinstance(rel, dict) and "relname" in rel:
        w.writes.add(_range_name(rel))
    w.visit({k: v for k, v in body.items() if k != "relation"})


def _top(w: _Walk, kind: str, body: dict[str, Any], text: str, span: tuple[int, int]) -> _Top:
    """Classify one top-level statement and walk it into ``w``."""
    if kind == "SelectStmt":
        into = body.get("intoClause")
        top = _Top("SELECT INTO" if into else "SELECT", "DDL" if into else "READ")
        if into and into.get("rel", {}).get("relpersistence") == "t":
            w.flags.add("temporary")
        w.select(body)
        return top
    if kind in ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"):
        command, klass = _SIMPLE[kind]
        w.dml(body, kind)
        return _Top(
            command,
            klass,
            has_where=kind not in ("UpdateStmt", "DeleteStmt") or "whereClause" in body,
            where_true=kind in ("UpdateStmt", "DeleteStmt")
            and _always_true(body.get("whereClause")),
        )
    if kind in ("ExplainStmt", "PrepareStmt", "CreateTableAsStmt", "DeclareCursorStmt"):
        inner = _facts(body.get("query"), text, span)
        if kind == "ExplainStmt":
            analyze = False
            for opt in body.get("options", ()):
                d = opt.get("DefElem", {})
                if d.get("defname") == "analyze":
                    analyze = _defelem_true(d.get("arg"))
            if analyze:
                return _Top("EXPLAIN ANALYZE", inner.statement_class, inner=inner, merge_inner=True)
            return _Top("EXPLAIN", "MISC", inner=inner)
        if kind == "PrepareStmt":
            return _Top("PREPARE", "MISC", prepared=body.get("name"), inner=inner, merge_inner=True)
        if kind == "DeclareCursorStmt":
            return _Top("DECLARE CURSOR", "READ", inner=inner, merge_inner=True)
        into = body.get("into", {})
        rel = into.get("rel", {})
        w.writes.add(_range_name(rel))
        if rel.get("relpersistence") == "t":
            w.flags.add("temporary")
        command = (
            "CREATE MATERIALIZED VIEW"
            if body.get("objtype") == "OBJECT_MATVIEW"
            else "SELECT INTO"
            if body.get("is_select_into")
            else "CREATE TABLE AS"
        )
        return _Top(command, "DDL", inner=inner, merge_inner=True)
    if kind == "CopyStmt":
        is_from = bool(body.get("is_from"))
        filename = body.get("filename")
        program = bool(body.get("is_program"))
        copy = CopyFacts(
            "from" if is_from else "to", program, filename is not None and not program, filename
        )
        if program:
            w.flags.add("copy_program")
        elif filename is not None:
            w.flags.add("copy_server_file")
        rel = body.get("relation")
        if rel:
            name = _range_name(rel)
            (w.writes if is_from else w.reads).add(name)
            for col in _strings(body.get("attlist")):
                if not is_from:
                    w.columns.add(f"{name}.{col}")
            w.visit(body.get("whereClause"))
        query = _facts(body["query"], text, span) if body.get("query") else None
        return _Top("COPY", "WRITE" if is_from else "READ", copy=copy, inner=query, merge_inner=True)
    if kind == "TransactionStmt":
        return _Top(_TRANSACTION.get(body.get("kind", ""), "TRANSACTION"), "MISC")
    if kind == "VariableSetStmt":
        name = body.get("name", "")
        vkind = body.get("kind", "")
        reset = vkind in ("VAR_RESET", "VAR_RESET_ALL")
        if name in ("role", "session_authorization"):
            w.flags.add("role_switch")
            label = "ROLE" if name == "role" else "SESSION AUTHORIZATION"
            return _Top(f"{'RESET' if reset else 'SET'} {label}", "MISC_SET")
        if vkind == "VAR_RESET_ALL":
            return _Top("RESET ALL", "MISC_SET")
        if vkind == "VAR_SET_MULTI":
            return _Top(f"SET {name.upper()}", "MISC_SET")
        w.visit(body.get("args"))
        return _Top("RESET" if reset else "SET", "MISC_SET")
    if kind == "ExecuteStmt":
        w.visit(body.get("params"))
        return _Top("EXECUTE", "MISC", prepared=body.get("name"))
    if kind == "DeallocateStmt":
        if body.get("isall") or body.get("name") is None:
            return _Top("DEALLOCATE ALL", "MISC")
        return _Top("DEALLOCATE", "MISC", prepared=body.get("name"))
    if kind == "DiscardStmt":
        target = body.get("target", "DISCARD_ALL").removeprefix("DISCARD_")
        return _Top(f"DISCARD {target}", "MISC")
    if kind == "FetchStmt":
        return _Top("MOVE" if body.get("ismove") else "FETCH", "MISC")
    if kind == "VacuumStmt":
        w.visit(body.get("rels"))
        return _Top("VACUUM" if body.get("is_vacuumcmd") else "ANALYZE", "MISC")
    if kind == "DoStmt":
        w.flags.add("dynamic_sql")
        return _Top("DO", "FUNCTION")
    if kind == "CallStmt":
        w.func(body.get("funccall", {}))
        return _Top("CALL", "FUNCTION")
    if kind == "LoadStmt":
        w.flags.add("load")
        return _Top("LOAD", "MISC")
    if kind == "LockStmt":
        w.flags.add("row_lock")
        for rv in body.get("relations", ()):
            w.reads.add(_range_name(rv.get("RangeVar", rv)))
        return _Top("LOCK TABLE", "MISC")
    if kind == "TruncateStmt":
        w.flags.add("truncate")
        for rv in body.get("relations", ()):
            w.writes.add(_range_name(rv.get("RangeVar", rv)))
        return _Top("TRUNCATE", "WRITE")
    if kind == "DropStmt":
        w.flags.add("drop")
        obj = body.get("removeType")
        if obj in _RELATION_OBJECTS:
            for o in body.get("objects", ()):
                names = _strings(o.get("List", {}).get("items"))
                if names:
                    w.writes.add(".".join(names[-2:]))
        return _Top(f"DROP {_object_name(obj)}", "DDL")
    if kind in ("GrantStmt", "GrantRoleStmt"):
        command = "GRANT" if body.get("is_grant") else "REVOKE"
        if kind == "GrantStmt" and body.get("objtype") == "OBJECT_TABLE":
            for o in body.get("objects", ()):
                rv = o.get("RangeVar")
                if rv:
                    w.writes.add(_range_name(rv))
        return _Top(command, "ROLE")
    if kind == "CreateRoleStmt":
        sub = body.get("stmt_type", "ROLESTMT_ROLE").removeprefix("ROLESTMT_")
        return _Top(f"CREATE {sub}", "ROLE")
    if kind == "AlterTableStmt":
        if any(
            c.get("AlterTableCmd", {}).get("subtype") in _DROP_SUBTYPES for c in body.get("cmds", ())
        ):
            w.flags.add("drop")
        _relation_walk(w, body)
        return _Top(f"ALTER {_object_name(body.get('objtype'))}", "DDL")
    if kind in ("RenameStmt", "AlterOwnerStmt", "AlterObjectSchemaStmt"):
        obj = body.get("renameType") or body.get("objectType")
        suffix = {"RenameStmt": "RENAME", "AlterOwnerStmt": "OWNER", "AlterObjectSchemaStmt": "SET SCHEMA"}
        _relation_walk(w, body)
        return _Top(f"ALTER {_object_name(obj)} {suffix[kind]}", "DDL")
    if kind == "CreateFunctionStmt":
        return _Top("CREATE PROCEDURE" if body.get("is_procedure") else "CREATE FUNCTION", "DDL")
    if kind == "DefineStmt":
        return _Top(f"CREATE {_object_name(body.get('kind'))}", "DDL")
    if kind == "CreateStmt":
        if body.get("relation", {}).get("relpersistence") == "t":
            w.flags.add("temporary")
        _relation_walk(w, body)
        return _Top("CREATE TABLE", "DDL")
    if kind == "ViewStmt":
        w.writes.add(_range_name(body.get("view", {})))
        if body.get("view", {}).get("relpersistence") == "t":
            w.flags.add("temporary")
        inner = _facts(body.get("query"), text, span)
        return _Top("CREATE VIEW", "DDL", inner=inner)
    if kind in (
        "CreateForeignServerStmt",
        "AlterForeignServerStmt",
        "CreateUserMappingStmt",
        "AlterUserMappingStmt",
        "CreateSubscriptionStmt",
        "AlterSubscriptionStmt",
        "ImportForeignSchemaStmt",
    ):
        w.flags.add("remote_connection")
    if kind == "CreateExtensionStmt" and body.get("extname") in ("dblink", "postgres_fdw"):
        w.flags.add("remote_connection")
    if kind == "AlterSystemStmt":
        w.flags.add("alter_system")
    if kind.startswith("Drop"):
        w.flags.add("drop")
    command, klass = _SIMPLE.get(kind, (_generic_command(kind), "DDL"))
    _relation_walk(w, body)
    return _Top(command, klass)


def _defelem_true(arg: Any) -> bool:
    """An option's boolean value; a bare option (no value) is true, and anything not
    clearly false counts as true so that an odd spelling cannot hide an ANALYZE."""
    if arg is None:
        return True
    kind, body = _unwrap(arg)
    if kind == "String":
        return str(body.get("sval", "")).lower() not in _FALSE_STRINGS
    if kind == "Integer":
        return int(body.get("ival", 0)) != 0
    if kind == "Boolean":
        return bool(body.get("boolval", False))
    return True


def _risk(klass: StatementClass, classes: Iterable[str], flags: frozenset[str]) -> Risk:
    if flags & _HIGH_FLAGS or "ROLE" in classes:
        return "high"
    if any(c in ("WRITE", "DDL", "FUNCTION") for c in classes) or "side_effect_function" in flags:
        return "moderate"
    return "low"


def _facts(stmt: Any, text: str, span: tuple[int, int]) -> StatementFacts:
    kind, body = _unwrap(stmt)
    if not isinstance(body, dict):
        body = {}
    w = _Walk()
    top = _top(w, kind, body, text, span)
    commands = [top.command, *w.commands]
    classes: list[StatementClass] = [top.klass, *w.classes]
    flags = set(w.flags)
    if top.inner is not None and top.merge_inner:
        inner = top.inner
        commands.extend(inner.commands)
        classes.extend(inner.classes)
        w.reads.update(inner.tables_read)
        w.writes.update(inner.tables_written)
        w.columns.update(inner.columns_read)
        w.functions.update(inner.functions)
        flags.update(inner.flags)
    frozen_flags = frozenset(flags)
    unique_classes = tuple(dict.fromkeys(classes))
    return StatementFacts(
        command=top.command,
        statement_class=top.klass,
        commands=tuple(dict.fromkeys(commands)),
        classes=unique_classes,
        tables_read=tuple(sorted(w.reads)),
        tables_written=tuple(sorted(w.writes)),
        columns_read=tuple(sorted(w.columns)),
        functions=tuple(sorted(w.functions)),
        has_where=top.has_where,
        where_trivially_true=top.where_true,
        flags=frozen_flags,
        risk=_risk(top.klass, unique_classes, frozen_flags),
        copy=top.copy,
        prepared_name=top.prepared,
        inner=top.inner,
        span=span,
        text=text,
    )


def _prepare(sql: str) -> tuple[str, int]:
    # libpg_query does not skip a byte order mark; a client that sends one means nothing by it
    return (sql[1:], 1) if sql.startswith("\ufeff") else (sql, 0)


def _parse(sql: str) -> list[dict[str, Any]]:
    try:
        tree = orjson.loads(_pg.parse_sql_json(sql))
    except _pg.ParseError as err:
        location = err.args[1] if len(err.args) > 1 else None
        raise SQLParseError(str(err.args[0]), location if isinstance(location, int) else None) from None
    stmts: list[dict[str, Any]] = tree.get("stmts", [])
    return stmts


def _spans(sql: str, stmts: list[dict[str, Any]], shift: int) -> list[tuple[int, int]]:
    """Character spans of each statement, moved by ``shift``; libpg_query reports UTF-8
    byte offsets."""
    ascii_only = sql.isascii()
    raw = sql if ascii_only else sql.encode()
    out = []
    for raw_stmt in stmts:
        start = raw_stmt.get("stmt_location", 0)
        length = raw_stmt.get("stmt_len", 0)
        end = start + length if length else len(raw)
        if ascii_only:
            out.append((start + shift, end + shift))
        else:
            assert isinstance(raw, bytes)
            s = len(raw[:start].decode(errors="ignore"))
            e = s + len(raw[start:end].decode(errors="ignore"))
            out.append((s + shift, e + shift))
    return out


def analyze(sql: str) -> list[StatementFacts]:
    """Facts for every statement in ``sql``, in order.  Empty input gives ``[]``.

    Spans index into ``sql`` as given (a leading U+FEFF is skipped, not removed).
    Raises :class:`SQLParseError` if PostgreSQL would reject the text.
    """
    body, shift = _prepare(sql)
    stmts = _parse(body)
    spans = _spans(body, stmts, shift)
    out = []
    for raw_stmt, span in zip(stmts, spans, strict=True):
        text = sql[span[0] : span[1]].strip()
        out.append(_facts(raw_stmt.get("stmt"), text, span))
    return out


def split_statement_spans(sql: str) -> list[tuple[int, int]]:
    """``[start, end)`` character spans of each statement of ``sql``, without the
    separating semicolons (a leading U+FEFF is skipped).  Raises :class:`SQLParseError`."""
    body, shift = _prepare(sql)
    return _spans(body, _parse(body), shift)

"""Statement facts: what a SQL string does, read by PostgreSQL's own parser.

``analyze(sql)`` parses with libpg_query (through pglast) and walks the parse tree as
plain dicts: ``parse_sql_json`` loaded with orjson.  Building pglast's Python AST is
roughly ten times slower and is deliberately not used on this path.

Because the real parser does the work, comments, letter case, quoting, ``U&"..."``
identifiers, dollar quoting and stacked statements are already resolved when the
walk starts: obfuscation has nothing to hide behind.  Anything the parser rejects
raises :class:`SQLParseError`, and callers deny it (fail closed).

Unknown means no: the walk is built on an allow-list (:mod:`dbsentry.engines.postgres.sql.nodes`).  A
statement holding any node the allow-list does not name, anywhere in its tree, raises
:class:`SQLUnsupported`; a tree too deep or too large to analyse quickly raises
:class:`SQLTooComplex`; any other failure inside the analysis raises
:class:`SQLAnalysisError`.  All three are :class:`SQLParseError`, so a caller that denies
parse errors denies them too.

The facts are a fixed vocabulary so that policy rules can match on them:

- ``command``: the statement's command tag (``"DELETE"``, ``"DROP TABLE"``,
  ``"EXPLAIN ANALYZE"``...); ``commands`` adds every command that runs *inside* it
  (data-modifying CTEs, the statement under ``EXPLAIN ANALYZE``, ``PREPARE``,
  ``CREATE TABLE AS``, ``COPY (query)``, ``DECLARE CURSOR``, ``CREATE SCHEMA``
  elements, the UPDATE of ``INSERT ... ON CONFLICT DO UPDATE``).
- ``statement_class``: the pgAudit class (READ, WRITE, FUNCTION, ROLE, DDL, MISC,
  MISC_SET); ``classes`` again includes what runs inside.  A write into the system
  catalogs is DDL.
- ``settings``: the run-time settings the statement changes (``SET``, ``RESET``,
  ``set_config()``...).
- ``flags``: risk markers, see :data:`FLAGS`.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pglast import parser as _pg

from dbsentry.engines.postgres.sql import parse
from dbsentry.engines.postgres.sql.fold import (
    UNKNOWN,
    UNKNOWN_PARAM,
    as_bool,
    bind,
    const,
    parse_bool,
    truth,
)
from dbsentry.engines.postgres.sql.fold import strings as _strings
from dbsentry.engines.postgres.sql.fold import unwrap as _unwrap
from dbsentry.engines.postgres.sql.nodes import (
    ALLOWED,
    RANGEVAR_PLACES,
    STATEMENTS,
    STRUCT_FIELDS,
    construct_name,
    first_unsupported,
    tags_of,
)
from dbsentry.engines.postgres.sql.system_relations import CATALOG_RELATIONS
from dbsentry.governance.facts import (
    FLAGS,
    AnalysisRefused,
    CopyFacts,
    StatementClass,
    StatementFacts,
    risk_of,
)

__all__ = [
    "FLAGS",
    "MAX_TREE_NODES",
    "UNKNOWN_PARAM",
    "CopyFacts",
    "SQLAnalysisError",
    "SQLParseError",
    "SQLTooComplex",
    "SQLUnsupported",
    "StatementClass",
    "StatementFacts",
    "analyze",
    "split_statement_spans",
    "where_true_with",
]


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
# Functions that run SQL given as text (or fetch what such SQL returned), so the parser
# cannot see the statement.  The one list: facts flag them ``dynamic_sql``, and column
# lineage cannot follow what they return (masking.lineage).
DYNAMIC_SQL_FUNCTIONS: tuple[str, ...] = (
    "query_to_xml*",
    "cursor_to_xml*",
    "table_to_xml*",
    "schema_to_xml*",
    "database_to_xml*",
    "ts_stat",
    "ts_rewrite",  # its second argument is a query it runs
    "xpath_table",  # xml2: a query built from its arguments
    "crosstab*",  # tablefunc
    "connectby",
    "dblink*",
)
# Functions whose result is data from outside the statement's tables: files, large
# objects, logical decoding.  Lineage cannot follow it either.
OUTSIDE_DATA_FUNCTIONS: tuple[str, ...] = (
    "pg_read_file",
    "pg_read_binary_file",
    "lo_get",
    "loread",
    "lo_export",
    "pg_logical_slot_*_changes",
    "pg_logical_slot_*_binary_changes",
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


#: Trees with more nodes than this are not analysed (:class:`SQLTooComplex`): loading and
#: walking them would take longer than a statement may wait (about 2 microseconds a node).
MAX_TREE_NODES = 250_000


class SQLParseError(AnalysisRefused):
    """PostgreSQL's parser rejected the text, or dbsentry cannot analyse it; the caller
    must deny it."""

    sqlstate = "42601"


class SQLUnsupported(SQLParseError):
    """The statement holds a construct dbsentry does not analyse (not on the allow-list,
    or where it cannot stand); ``construct`` is its node tag, e.g. ``"JsonTable"``."""

    sqlstate = "0A000"

    def __init__(self, construct: str, what: str | None = None) -> None:
        super().__init__(f"dbsentry cannot analyse {what or construct_name(construct)} ({construct})")
        self.construct = construct


class SQLTooComplex(SQLParseError):
    """The statement is nested too deeply or too large to analyse."""

    sqlstate = "54001"

    def __init__(self, detail: str) -> None:
        super().__init__(f"statement too complex to analyse ({detail})")
        self.detail = detail


class SQLAnalysisError(SQLParseError):
    """Something unexpected went wrong while analysing a statement that did parse."""

    sqlstate = "XX000"




def where_true_with(facts: StatementFacts, params: Sequence[object]) -> bool:
    """Whether an UPDATE/DELETE WHERE (or destructive MERGE condition) of ``facts`` that
    mentions ``$n`` is always true once ``params`` are bound: ``params[0]`` is ``$1``,
    each a ``str`` (the text value), ``None`` (NULL) or :data:`UNKNOWN_PARAM`.

    ``DELETE FROM t WHERE $1 = $2`` is always true with ``("1", "1")``, not with
    ``("1", "2")``; ``WHERE id > $1`` never is.  A predicate that cannot be folded (too
    deep, or anything unexpected) counts as always true: the answer fails closed."""
    if not facts.where_predicates:
        return False
    bound = bind(params)
    folded: dict[int, bool] = {}  # a condition shared by several predicates is folded once

    def holds(part: Any) -> bool:
        key = id(part)
        if key not in folded:
            folded[key] = as_bool(truth(part, bound)) is True
        return folded[key]

    try:
        return any(all(holds(part) for part in pred) for pred in facts.where_predicates)
    except Exception:  # RecursionError included
        return True


# -- names ------------------------------------------------------------------------------

_DML = ("InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt")
_FROM_ITEMS = frozenset({"RangeVar", "JoinExpr", "RangeSubselect", "RangeFunction", "RangeTableSample", "RangeTableFunc"})  # fmt: skip
_DDL_LEAVES = frozenset({"A_Const", "String", "Integer", "Float", "Boolean", "BitString", "A_Star", "ParamRef", "SQLValueFunction", "SetToDefault", "CurrentOfExpr", "MergeSupportFunc"})  # fmt: skip
_LEAVES = frozenset({"A_Const", "String", "Integer", "Float", "Boolean", "BitString", "A_Star", "ParamRef", "SQLValueFunction", "SetToDefault", "CurrentOfExpr", "MergeSupportFunc", "TypeName", "typeName", "RoleSpec", "Alias", "alias"})  # fmt: skip

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

# The commands of transaction control.
TRANSACTION_COMMANDS = frozenset(_TRANSACTION.values())

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
# Flags a statement kind always has.
_STATEMENT_FLAGS: dict[str, frozenset[str]] = {
    **{
        k: frozenset({"drop"})
        for k in STATEMENTS
        if k.startswith("Drop")  # DropStmt, DropRoleStmt, DropOwnedStmt, DropdbStmt...
    },
    **{
        k: frozenset({"remote_connection"})
        for k in (
            "CreateForeignServerStmt",
            "AlterForeignServerStmt",
            "CreateUserMappingStmt",
            "AlterUserMappingStmt",
            "CreateSubscriptionStmt",
            "AlterSubscriptionStmt",
            "ImportForeignSchemaStmt",
        )
    },
    "AlterSystemStmt": frozenset({"alter_system"}),
    "DoStmt": frozenset({"dynamic_sql"}),
    "LoadStmt": frozenset({"load"}),
    "TruncateStmt": frozenset({"truncate"}),
    "LockStmt": frozenset({"row_lock"}),
    "ClusterStmt": frozenset({"disruptive_maintenance"}),
}
_READ_ONLY_SETTINGS = frozenset({"transaction_read_only", "default_transaction_read_only"})
_ACCESS_EXCLUSIVE = 8  # LOCKMODE AccessExclusiveLock, also the mode of a bare LOCK t
_SET_CONFIG_ARGS = ("setting_name", "new_value", "is_local")


def _name(value: Any) -> str | None:
    """A name field (prepared statement, file): a string or absent."""
    if value is None or isinstance(value, str):
        return value
    raise SQLAnalysisError("unexpected parse tree shape: a name that is not a string")


def _object_name(objtype: str | None) -> str:
    return (objtype or "OBJECT_UNKNOWN").removeprefix("OBJECT_").replace("_", " ")



def _range_name(rv: dict[str, Any]) -> str:
    schema = rv.get("schemaname")
    rel: str = rv.get("relname", "")
    return f"{schema}.{rel}" if schema else rel



def _alias(body: Any) -> str | None:
    alias = body.get("alias") if type(body) is dict else None
    return alias.get("aliasname") if type(alias) is dict else None


def _is_catalog(rv: dict[str, Any]) -> bool:
    """A relation in the system catalogs: pg_catalog, information_schema, pg_toast*, or an
    unqualified name of one of pg_catalog's relations (pg_catalog comes first on every
    search path; any other ``pg_*`` name is a user's table)."""
    schema = rv.get("schemaname")
    if schema:
        s = str(schema).lower()
        return s in ("pg_catalog", "information_schema") or s.startswith("pg_toast")
    return str(rv.get("relname", "")).lower() in CATALOG_RELATIONS


def _is_pg_settings(rv: dict[str, Any]) -> bool:
    """UPDATE pg_settings SET setting = ... is set_config() in disguise."""
    schema = rv.get("schemaname")
    return str(rv.get("relname", "")).lower() == "pg_settings" and (
        not schema or str(schema).lower() == "pg_catalog"
    )


def _defelem_true(arg: Any) -> bool:
    """An option's boolean value; a bare option (no value) is true, and anything not
    clearly false counts as true so that an odd spelling cannot hide an ANALYZE."""
    if arg is None:
        return True
    kind, body = _unwrap(arg)
    if kind == "String":
        return parse_bool(str(body.get("sval", ""))) is not False
    if kind == "Integer":
        return int(body.get("ival", 0)) != 0
    if kind == "Boolean":
        return bool(body.get("boolval", False))
    if kind == "A_Const":
        value = const(arg)
        if isinstance(value, str):
            return parse_bool(value) is not False
        return value is not False and value != 0
    return True


def _clearly_on(node: Any) -> bool:
    """A setting value that is certainly boolean true (``on``, ``true``, ``1``, ``'yes'``...)."""
    value = const(node)
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value == 1
    if isinstance(value, str):
        return parse_bool(value) is True
    return False


def _option(opts: Any, name: str) -> tuple[bool, Any]:
    """(given, value) of DefElem ``name`` in an options list."""
    found, value = False, None
    for opt in opts or ():
        d = opt.get("DefElem") if type(opt) is dict else None
        if type(d) is dict and d.get("defname") == name:
            found, value = True, d.get("arg")
    return found, value


def _setting_names(body: dict[str, Any]) -> list[str]:
    """The settings a SET/RESET changes (VariableSetStmt)."""
    kind = body.get("kind", "")
    name = str(body.get("name", ""))
    if kind == "VAR_RESET_ALL":
        return []
    if kind == "VAR_SET_MULTI":
        if name == "TRANSACTION":
            return [str(d.get("defname", "?")).lower() for d in _defelems(body.get("args"))]
        if name == "SESSION CHARACTERISTICS":
            return ["default_" + str(d.get("defname", "?")).lower() for d in _defelems(body.get("args"))]
        if name == "TRANSACTION SNAPSHOT":
            return ["transaction_snapshot"]
    return [name.lower() or "?"]


def _defelems(items: Any) -> list[dict[str, Any]]:
    out = []
    for it in items or ():
        d = it.get("DefElem") if type(it) is dict else None
        if type(d) is dict:
            out.append(d)
    return out


def _turns_read_only_off(body: dict[str, Any], stored: bool = False) -> bool:
    """Whether a SET/RESET (VariableSetStmt) may make transactions read-write.  ``stored``:
    the SET of ALTER ROLE/DATABASE/SYSTEM, where RESET ALL also drops a stored
    ``default_transaction_read_only = on`` (a session's RESET ALL only undoes its own
    SETs, like DISCARD ALL, and is not flagged)."""
    kind = body.get("kind", "")
    name = str(body.get("name", "")).lower()
    if kind == "VAR_RESET_ALL":
        return stored
    if kind == "VAR_SET_MULTI":
        # SET TRANSACTION / SET SESSION CHARACTERISTICS AS TRANSACTION ... READ WRITE
        return any(
            d.get("defname") == "transaction_read_only" and not _clearly_on(d.get("arg"))
            for d in _defelems(body.get("args"))
        )
    if name not in _READ_ONLY_SETTINGS:
        return False
    if kind == "VAR_SET_VALUE":
        args = body.get("args") or []
        return not args or not all(_clearly_on(a) for a in args)
    return True  # DEFAULT, RESET, FROM CURRENT: back to a value that may be off


def _call_args(args: list[Any], names: tuple[str, ...]) -> list[Any]:
    """A function call's arguments by position, named ones (``name => value``) moved to
    their place; a missing one is None."""
    out: list[Any] = [None] * len(names)
    for i, a in enumerate(args):
        kind, body = _unwrap(a)
        if kind == "NamedArgExpr":
            name = body.get("name")
            if name in names:
                out[names.index(name)] = body.get("arg")
        elif i < len(out):
            out[i] = a
    return out


def _mentions_param(node: Any) -> bool:
    stack = [node]
    while stack:
        n = stack.pop()
        if type(n) is dict:
            if "ParamRef" in n:
                return True
            stack.extend(v for v in n.values() if type(v) in (dict, list))
        elif type(n) is list:
            stack.extend(n)
    return False


def _param_text(node: Any) -> object:
    """An EXECUTE argument as a parameter value: its text, None for NULL, or UNKNOWN_PARAM."""
    kind, body = _unwrap(node)
    if kind == "A_Const" and "fval" in body:
        return str(body["fval"].get("fval", "0"))  # exactly as written
    value = const(node)
    if value is UNKNOWN:
        return UNKNOWN_PARAM
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return UNKNOWN_PARAM


# -- the walk ----------------------------------------------------------------------------


class _Walk:
    """Collects facts from one statement's tree (and the statements inside it).

    Two walks share the collected state: the query walk (:meth:`select`, :meth:`dml`,
    :meth:`visit` for expressions) knows the shape of queries and scopes names; the DDL
    walk (:meth:`ddl`) goes through every field of a node of known type, so that each
    table reference it meets has a place in :data:`RANGEVAR_PLACES`."""

    __slots__ = (
        "classes",
        "columns",
        "commands",
        "ctes",
        "flags",
        "functions",
        "has_params",
        "reads",
        "scopes",
        "settings",
        "span",
        "text",
        "where_preds",
        "writes",
    )

    def __init__(self, text: str, span: tuple[int, int], has_params: bool) -> None:
        self.reads: set[str] = set()
        self.writes: set[str] = set()
        self.columns: set[str] = set()
        self.functions: set[str] = set()
        self.flags: set[str] = set()
        self.settings: set[str] = set()
        self.commands: list[str] = []
        self.classes: list[StatementClass] = []
        self.ctes: list[frozenset[str]] = []
        self.scopes: list[dict[str, str | None]] = []
        self.where_preds: list[tuple[Any, ...]] = []
        self.text = text
        self.span = span
        self.has_params = has_params

    # -- expressions: dispatch tagged nodes, descend through everything else.
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
        ctes = [c.get("CommonTableExpr") or {} for c in with_clause.get("ctes", ())]
        if with_clause.get("recursive"):
            self.ctes.append(frozenset(c.get("ctename", "") for c in ctes))
            for cte in ctes:
                self._cte(cte)
            return True
        # Without RECURSIVE a CTE sees only the CTEs before it: in
        # ``WITH t AS (SELECT * FROM t)`` the inner ``t`` is the real table.
        self.ctes.append(frozenset())
        for cte in ctes:
            self._cte(cte)
            self.ctes[-1] = self.ctes[-1] | {cte.get("ctename", "")}
        return True

    def _cte(self, cte: dict[str, Any]) -> None:
        self.nested(cte.get("ctequery"))
        cycle = cte.get("cycle_clause")
        if cycle:
            self.visit(cycle)

    def nested(self, stmt: Any) -> None:
        """A statement that runs inside the current one (CTE, subquery, rule action, CREATE
        SCHEMA element, SQL function body): its facts join this statement's."""
        kind, body = _unwrap(stmt)
        if kind == "SelectStmt":
            self.select(body)
        elif kind in _DML:
            command, klass = STATEMENTS[kind]
            self.commands.append(command)
            self.classes.append(klass)
            self.dml(body, kind)
        elif kind == "VariableSetStmt":
            self.attached_set(body)
        elif kind in STATEMENTS:
            inner = _facts(stmt, self.text, self.span, self.has_params)
            # CREATE SCHEMA s CREATE TEMP VIEW ... does not create only temporary objects
            self.merge(inner, temporary=False)
        else:
            raise _unexpected(kind, "a statement")

    def merge(self, inner: StatementFacts, temporary: bool = True) -> None:
        self.commands.extend(inner.commands)
        self.classes.extend(inner.classes)
        self.reads.update(inner.tables_read)
        self.writes.update(inner.tables_written)
        self.columns.update(inner.columns_read)
        self.functions.update(inner.functions)
        self.flags.update(inner.flags if temporary else inner.flags - {"temporary"})
        self.settings.update(inner.settings)
        self.where_preds.extend(inner.where_predicates)

    def attached_set(self, body: dict[str, Any]) -> None:
        """A SET that is part of another statement (ALTER SYSTEM/ROLE/DATABASE ... SET,
        CREATE FUNCTION ... SET): it changes nothing in this session now, but may still
        turn read-only off for later transactions."""
        if _turns_read_only_off(body, stored=True):
            self.flags.add("read_write_transaction")
        self.visit(body.get("args"))

    def target(self, rv: dict[str, Any], scope: dict[str, str | None]) -> str:
        name = _range_name(rv)
        self.writes.add(name)
        if _is_catalog(rv):
            self.flags.add("catalog_write")
        alias = _alias(rv)
        scope[alias or rv.get("relname", "")] = name
        return name

    def from_item(self, item: Any, scope: dict[str, str | None]) -> None:
        kind, body = _unwrap(item)
        if kind == "RangeVar":
            alias = _alias(body) or body.get("relname", "")
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
        elif kind == "RangeSubselect":
            self.nested(body.get("subquery"))
            self._scope_alias(body, scope)
        elif kind == "RangeFunction":
            self.visit(body.get("functions"))
            self.visit(body.get("coldeflist"))
            self._scope_alias(body, scope)
        elif kind == "RangeTableSample":
            # TABLESAMPLE reads its relation; the method is a name, its arguments expressions
            self.from_item(body.get("relation"), scope)
            self.visit(body.get("args"))
            self.visit(body.get("repeatable"))
        elif kind == "RangeTableFunc":
            # XMLTABLE: the document, row and column expressions are read like any others
            for key in ("docexpr", "rowexpr", "namespaces", "columns"):
                self.visit(body.get(key))
            self._scope_alias(body, scope)
        else:
            raise _unexpected(kind, "a FROM list")

    @staticmethod
    def _scope_alias(body: dict[str, Any], scope: dict[str, str | None]) -> None:
        alias = _alias(body)
        if alias:
            scope[alias] = None

    def select(self, s: dict[str, Any]) -> None:
        pushed = self._with(s.get("withClause"))
        if s.get("larg") is not None or s.get("rarg") is not None:
            self.select(s.get("larg") or {})
            self.select(s.get("rarg") or {})
            for key in ("sortClause", "limitCount", "limitOffset"):
                value = s.get(key)
                if value is not None:
                    self.visit(value)
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
                self.writes.add(_range_name(into.get("rel") or {}))
            self.scopes.pop()
        # FOR UPDATE OF names FROM items that are already read
        if s.get("lockingClause"):
            self.flags.add("row_lock")
        if pushed:
            self.ctes.pop()

    def dml(self, s: dict[str, Any], kind: str) -> bool:
        """An INSERT/UPDATE/DELETE/MERGE; True when its own WHERE is always true."""
        pushed = self._with(s.get("withClause"))
        scope: dict[str, str | None] = {}
        self.scopes.append(scope)
        rel = s.get("relation") or {}
        name = self.target(rel, scope)
        if _is_pg_settings(rel):
            # UPDATE pg_settings SET setting = ... changes settings like set_config()
            self.settings.add("?")
            self.flags.add("read_write_transaction")
        for key in ("fromClause", "usingClause"):
            for item in s.get(key, ()):
                self.from_item(item, scope)
        where_true = False
        if kind == "MergeStmt":
            self.from_item(s.get("sourceRelation"), scope)
            join = s.get("joinCondition")
            self.visit(join)
            whens = s.get("mergeWhenClauses") or []
            self.visit(whens)
            self._merge_bounds(join, whens)
        if kind == "InsertStmt":
            self.visit(s.get("cols"))
            if s.get("selectStmt") is not None:
                self.nested(s.get("selectStmt"))
            occ = s.get("onConflictClause")
            if occ:
                self.visit(occ)
                if occ.get("action") == "ONCONFLICT_UPDATE":
                    self.commands.append("UPDATE")
                    self.classes.append("WRITE")
        else:
            self.visit(s.get("targetList"))
        if kind in ("UpdateStmt", "DeleteStmt"):
            where = s.get("whereClause")
            if where is None:
                self.flags.add("no_where")
            else:
                self.visit(where)
                where_true = self._bound(where)
        rc = s.get("returningClause")
        returning = (rc.get("exprs") if type(rc) is dict else None) or s.get("returningList")
        if returning:
            self.reads.add(name)
            self.visit(returning)
        self.scopes.pop()
        if pushed:
            self.ctes.pop()
        return where_true

    def _bound(self, where: Any) -> bool:
        """Check the WHERE that bounds an UPDATE/DELETE: always true -> flag; mentions $n
        -> keep it for where_true_with()."""
        if as_bool(truth(where)) is True:
            self.flags.add("always_true_where")
            return True
        if self.has_params and _mentions_param(where):
            self.where_preds.append((where,))
        return False

    def _merge_bounds(self, join: Any, whens: list[Any]) -> None:
        """A MERGE updates or deletes every target row when a WHEN MATCHED action runs for
        every row (ON always true) or a WHEN NOT MATCHED BY SOURCE action does (ON never
        true); an always-true AND condition does not narrow it.  Each condition is folded
        once, however many WHEN clauses share it."""
        join_truth = as_bool(truth(join))
        join_params = self.has_params and _mentions_param(join)
        # ON is not true for the row: IS NOT TRUE, so that NULL counts as well
        not_join = {"BooleanTest": {"arg": join, "booltesttype": "IS_NOT_TRUE"}}
        kept: set[tuple[str, int]] = set()
        for w in whens:
            c = w.get("MergeWhenClause") if type(w) is dict else None
            if type(c) is not dict or c.get("commandType") not in ("CMD_DELETE", "CMD_UPDATE"):
                continue
            match = c.get("matchKind")
            if match == "MERGE_WHEN_MATCHED":
                on_true, on_part = join_truth is True, join
            elif match == "MERGE_WHEN_NOT_MATCHED_BY_SOURCE":
                on_true, on_part = join_truth is False or join_truth is None, not_join
            else:
                continue
            cond = c.get("condition")
            cond_true = cond is None or as_bool(truth(cond)) is True
            if on_true and cond_true:
                self.flags.add("always_true_where")
                continue
            cond_params = cond is not None and self.has_params and _mentions_param(cond)
            if (join_params or cond_params) and (match, id(cond)) not in kept:
                kept.add((match, id(cond)))
                self.where_preds.append((on_part,) if cond is None else (on_part, cond))

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
            self.set_config(body.get("args") or [])
        for key in ("args", "agg_order", "agg_filter", "over"):
            value = body.get(key)
            if value is not None:
                self.visit(value)

    def set_config(self, args: list[Any]) -> None:
        name_arg, value_arg, _ = _call_args(args, _SET_CONFIG_ARGS)
        setting = const(name_arg)
        if not isinstance(setting, str):
            # the name is not a constant: it could be any setting
            self.settings.add("?")
            self.flags.update(("role_switch", "read_write_transaction"))
            return
        name = setting.lower()
        self.settings.add(name)
        if name in ("role", "session_authorization"):
            self.flags.add("role_switch")
        if name in _READ_ONLY_SETTINGS and not _clearly_on(value_arg):
            self.flags.add("read_write_transaction")

    # -- DDL: a typed walk through every field of a node.
    def ddl(self, tag: str, body: Any) -> None:
        if type(body) is not dict:
            return
        for key, value in body.items():
            struct = STRUCT_FIELDS.get((tag, key))
            if struct is not None:
                if type(value) is not dict:
                    continue
                if struct == "VariableSetStmt":  # ALTER SYSTEM/ROLE/DATABASE ... SET
                    self.attached_set(value)
                elif struct in STATEMENTS:
                    # part of this statement (CREATE FOREIGN TABLE's table, ALTER DEFAULT
                    # PRIVILEGES' grant), not a statement of its own
                    self.ddl(struct, value)
                else:
                    self.ddl_node(struct, value, tag, key)
                continue
            tv = type(value)
            if tv is dict:
                self.ddl_item(value, tag, key)
            elif tv is list:
                for item in value:
                    self.ddl_item(item, tag, key)

    def ddl_item(self, node: Any, parent: str, field: str) -> None:
        """A tagged node standing in ``field`` of a ``parent`` node."""
        kind, body = _unwrap(node)
        if kind == "List":
            for item in (body or {}).get("items", ()):
                self.ddl_item(item, parent, field)
        elif kind[:1].isupper():
            self.ddl_node(kind, body, parent, field)
        elif node is not None and node != {}:  # {} is a NULL entry of a list
            raise SQLAnalysisError(f"unexpected parse tree shape in {parent}.{field}")

    def ddl_node(self, kind: str, body: Any, parent: str, field: str) -> None:
        if type(body) is not dict:
            raise SQLAnalysisError(f"unexpected parse tree shape in {parent}.{field}")
        if kind in _DDL_LEAVES:
            return
        if kind == "RangeVar":
            place = RANGEVAR_PLACES.get((parent, field))
            if place == "write":
                self.writes.add(_range_name(body))
            elif place in ("read", "from"):
                self.reads.add(_range_name(body))
            elif place not in ("locked", "name"):
                raise _unexpected(kind, f"{parent}.{field}")
        elif kind in _FROM_ITEMS:
            self.from_item({kind: body}, {})
        elif kind in STATEMENTS:
            self.nested({kind: body})
        elif kind == "ColumnRef":
            self.column(body)
        elif kind == "FuncCall":
            self.func(body)
        elif kind in ALLOWED:
            self.ddl(kind, body)
        else:
            raise SQLUnsupported(kind)


def _unexpected(kind: str, place: str) -> SQLParseError:
    if not kind:
        return SQLAnalysisError(f"unexpected parse tree shape in {place}")
    if kind == "RangeVar":
        return SQLUnsupported(kind, f"a table reference in {place}")
    if kind in ALLOWED:
        return SQLUnsupported(kind, f"{kind} in {place}")
    return SQLUnsupported(kind)


def _skip(w: _Walk, body: Any) -> None:
    """Leaves with nothing to collect: constants, type names, parameters."""


def _h_nested(kind: str) -> Callable[[_Walk, Any], None]:
    def handler(w: _Walk, body: Any) -> None:
        w.nested({kind: body})

    return handler


def _h_unexpected(kind: str) -> Callable[[_Walk, Any], None]:
    def handler(w: _Walk, body: Any) -> None:
        # a table reference, FROM item or statement inside an expression: no place for it
        raise _unexpected(kind, "an expression")

    return handler


_HANDLERS: dict[str, Callable[[_Walk, Any], None]] = {
    **dict.fromkeys(_LEAVES, _skip),
    **{k: _h_unexpected(k) for k in (*STATEMENTS, *_FROM_ITEMS)},
    **{k: _h_nested(k) for k in _DML},
    "SelectStmt": _Walk.select,
    "ColumnRef": _Walk.column,
    "FuncCall": _Walk.func,
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
    execute_params: tuple[object, ...] | None = None


_Handler = Callable[[_Walk, str, dict[str, Any]], _Top]


def _t_ddl(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    """Any statement without a handler of its own: its command and class from
    :data:`STATEMENTS`, every field walked by the typed DDL walk."""
    command, klass = STATEMENTS[kind]
    w.ddl(kind, body)
    return _Top(command, klass)


def _t_select(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    into = body.get("intoClause")
    top = _Top("SELECT INTO" if into else "SELECT", "DDL" if into else "READ")
    if into and (into.get("rel") or {}).get("relpersistence") == "t":
        w.flags.add("temporary")
    w.select(body)
    return top


def _t_dml(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    command, klass = STATEMENTS[kind]
    where_true = w.dml(body, kind)
    bounded = kind in ("UpdateStmt", "DeleteStmt")
    return _Top(
        command,
        klass,
        has_where=not bounded or "whereClause" in body,
        where_true=bounded and where_true,
    )


def _t_explain(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    inner = _facts(body.get("query"), w.text, w.span, w.has_params)
    given, arg = _option(body.get("options"), "analyze")
    if given and _defelem_true(arg):
        return _Top("EXPLAIN ANALYZE", inner.statement_class, inner=inner, merge_inner=True)
    return _Top("EXPLAIN", "MISC", inner=inner)


def _t_prepare(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    inner = _facts(body.get("query"), w.text, w.span, w.has_params)
    return _Top("PREPARE", "MISC", prepared=_name(body.get("name")), inner=inner, merge_inner=True)


_CURSOR_OPT_HOLD = 0x0020


def _t_declare(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    inner = _facts(body.get("query"), w.text, w.span, w.has_params)
    if int(body.get("options") or 0) & _CURSOR_OPT_HOLD:
        w.flags.add("hold_cursor")
    return _Top("DECLARE CURSOR", "READ", prepared=_name(body.get("portalname")), inner=inner, merge_inner=True)


def _t_create_table_as(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    inner = _facts(body.get("query"), w.text, w.span, w.has_params)
    into = body.get("into") or {}
    rel = into.get("rel") or {}
    w.writes.add(_range_name(rel))
    if rel.get("relpersistence") == "t":
        w.flags.add("temporary")
    w.ddl("IntoClause", {k: v for k, v in into.items() if k != "rel"})
    command = (
        "CREATE MATERIALIZED VIEW"
        if body.get("objtype") == "OBJECT_MATVIEW"
        else "SELECT INTO"
        if body.get("is_select_into")
        else "CREATE TABLE AS"
    )
    return _Top(command, "DDL", inner=inner, merge_inner=True)


def _t_view(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    view = body.get("view") or {}
    w.writes.add(_range_name(view))
    if view.get("relpersistence") == "t":
        w.flags.add("temporary")
    inner = _facts(body.get("query"), w.text, w.span, w.has_params)
    w.ddl("ViewStmt", {k: v for k, v in body.items() if k not in ("view", "query")})
    # What the view's query calls runs whenever the view is read: its facts are the view's.
    return _Top("CREATE VIEW", "DDL", inner=inner, merge_inner=True)


def _t_copy(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    is_from = bool(body.get("is_from"))
    filename = _name(body.get("filename"))
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
        if is_from and _is_catalog(rel):
            w.flags.add("catalog_write")
        if not is_from:
            for col in _strings(body.get("attlist")):
                w.columns.add(f"{name}.{col}")
        scope: dict[str, str | None] = {rel.get("relname", ""): name}
        w.scopes.append(scope)
        w.visit(body.get("whereClause"))
        w.scopes.pop()
    w.visit(body.get("options"))
    query = _facts(body["query"], w.text, w.span, w.has_params) if body.get("query") else None
    return _Top("COPY", "WRITE" if is_from else "READ", copy=copy, inner=query, merge_inner=True)


def _t_transaction(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    for d in _defelems(body.get("options")):
        if d.get("defname") == "transaction_read_only" and not _clearly_on(d.get("arg")):
            w.flags.add("read_write_transaction")  # BEGIN / START TRANSACTION ... READ WRITE
    return _Top(_TRANSACTION.get(body.get("kind", ""), "TRANSACTION"), "MISC")


def _t_set(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    name = str(body.get("name", ""))
    vkind = body.get("kind", "")
    reset = vkind in ("VAR_RESET", "VAR_RESET_ALL")
    w.settings.update(_setting_names(body))
    if _turns_read_only_off(body):
        w.flags.add("read_write_transaction")
    w.visit(body.get("args"))
    if name in ("role", "session_authorization"):
        w.flags.add("role_switch")
        label = "ROLE" if name == "role" else "SESSION AUTHORIZATION"
        return _Top(f"{'RESET' if reset else 'SET'} {label}", "MISC_SET")
    if vkind == "VAR_RESET_ALL":
        return _Top("RESET ALL", "MISC_SET")
    if vkind == "VAR_SET_MULTI":
        return _Top(f"SET {name.upper()}", "MISC_SET")
    return _Top("RESET" if reset else "SET", "MISC_SET")


def _t_execute(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    params = body.get("params") or []
    w.visit(params)
    values = tuple(_param_text(p) for p in params)
    return _Top("EXECUTE", "MISC", prepared=_name(body.get("name")), execute_params=values)


def _t_deallocate(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    if body.get("isall") or body.get("name") is None:
        return _Top("DEALLOCATE ALL", "MISC")
    return _Top("DEALLOCATE", "MISC", prepared=_name(body.get("name")))


def _t_discard(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    target = str(body.get("target", "DISCARD_ALL")).removeprefix("DISCARD_")
    return _Top(f"DISCARD {target}", "MISC")


def _t_fetch(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    return _Top("MOVE" if body.get("ismove") else "FETCH", "MISC")


def _t_vacuum(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    given, arg = _option(body.get("options"), "full")
    if given and _defelem_true(arg):
        w.flags.add("disruptive_maintenance")
    w.ddl(kind, body)
    return _Top("VACUUM" if body.get("is_vacuumcmd") else "ANALYZE", "MISC")


def _t_reindex(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    if body.get("kind") in ("REINDEX_OBJECT_DATABASE", "REINDEX_OBJECT_SYSTEM"):
        w.flags.add("disruptive_maintenance")
    w.ddl(kind, body)
    return _Top("REINDEX", "MISC")


def _t_call(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    w.func(body.get("funccall") or {})
    return _Top("CALL", "FUNCTION")


def _t_lock(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    if body.get("mode", _ACCESS_EXCLUSIVE) == _ACCESS_EXCLUSIVE:
        w.flags.add("disruptive_maintenance")
    w.ddl(kind, body)
    return _Top("LOCK TABLE", "MISC")


def _t_truncate(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    for rv in body.get("relations", ()):
        _, rel = _unwrap(rv)
        if type(rel) is dict and _is_catalog(rel):
            w.flags.add("catalog_write")
    w.ddl(kind, body)
    return _Top("TRUNCATE", "WRITE")


def _t_drop(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    obj = body.get("removeType")
    if obj in _RELATION_OBJECTS:
        for o in body.get("objects", ()):
            names = _strings((o.get("List") or {}).get("items"))
            if names:
                w.writes.add(".".join(names[-2:]))
    w.ddl(kind, body)
    return _Top(f"DROP {_object_name(obj)}", "DDL")


def _t_grant(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    w.ddl(kind, body)
    return _Top("GRANT" if body.get("is_grant") else "REVOKE", "ROLE")


def _t_create_role(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    w.ddl(kind, body)
    sub = str(body.get("stmt_type", "ROLESTMT_ROLE")).removeprefix("ROLESTMT_")
    return _Top(f"CREATE {sub}", "ROLE")


def _t_alter_table(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    for c in body.get("cmds", ()):
        if (c.get("AlterTableCmd") or {}).get("subtype") in _DROP_SUBTYPES:
            w.flags.add("drop")
    w.ddl(kind, body)
    return _Top(f"ALTER {_object_name(body.get('objtype'))}", "DDL")


def _t_alter_object(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    obj = body.get("renameType") or body.get("objectType") or body.get("objtype")
    suffix = {
        "RenameStmt": " RENAME",
        "AlterOwnerStmt": " OWNER",
        "AlterObjectSchemaStmt": " SET SCHEMA",
        "AlterObjectDependsStmt": " DEPENDS ON EXTENSION",
    }.get(kind, "")
    w.ddl(kind, body)
    return _Top(f"ALTER {_object_name(obj)}{suffix}", "DDL")


def _t_create_function(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    # The body and the parameter defaults are defined now and run later, when the function
    # is called: walked (so they are checked like everything else) but not counted.
    defined = ("sql_body", "parameters")
    w.ddl(kind, {k: v for k, v in body.items() if k not in defined})
    _Walk(w.text, w.span, w.has_params).ddl(kind, {k: v for k, v in body.items() if k in defined})
    return _Top("CREATE PROCEDURE" if body.get("is_procedure") else "CREATE FUNCTION", "DDL")


def _t_define(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    w.ddl(kind, body)
    return _Top(f"CREATE {_object_name(body.get('kind'))}", "DDL")


def _t_create(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    if (body.get("relation") or {}).get("relpersistence") == "t":
        w.flags.add("temporary")
    w.ddl(kind, body)
    return _Top("CREATE TABLE", "DDL")


def _t_create_extension(w: _Walk, kind: str, body: dict[str, Any]) -> _Top:
    if body.get("extname") in ("dblink", "postgres_fdw"):
        w.flags.add("remote_connection")
    return _t_ddl(w, kind, body)


_TOP: dict[str, _Handler] = {
    "SelectStmt": _t_select,
    **dict.fromkeys(_DML, _t_dml),
    "ExplainStmt": _t_explain,
    "PrepareStmt": _t_prepare,
    "DeclareCursorStmt": _t_declare,
    "CreateTableAsStmt": _t_create_table_as,
    "ViewStmt": _t_view,
    "CopyStmt": _t_copy,
    "TransactionStmt": _t_transaction,
    "VariableSetStmt": _t_set,
    "ExecuteStmt": _t_execute,
    "DeallocateStmt": _t_deallocate,
    "DiscardStmt": _t_discard,
    "FetchStmt": _t_fetch,
    "VacuumStmt": _t_vacuum,
    "ReindexStmt": _t_reindex,
    "CallStmt": _t_call,
    "LockStmt": _t_lock,
    "TruncateStmt": _t_truncate,
    "DropStmt": _t_drop,
    "GrantStmt": _t_grant,
    "GrantRoleStmt": _t_grant,
    "CreateRoleStmt": _t_create_role,
    "AlterTableStmt": _t_alter_table,
    "AlterTableMoveAllStmt": _t_alter_table,
    "RenameStmt": _t_alter_object,
    "AlterOwnerStmt": _t_alter_object,
    "AlterObjectSchemaStmt": _t_alter_object,
    "AlterObjectDependsStmt": _t_alter_object,
    "CreateFunctionStmt": _t_create_function,
    "DefineStmt": _t_define,
    "CreateStmt": _t_create,
    "CreateExtensionStmt": _t_create_extension,
}


def _facts(stmt: Any, text: str, span: tuple[int, int], has_params: bool) -> StatementFacts:
    kind, body = _unwrap(stmt)
    if kind not in STATEMENTS:
        raise _unexpected(kind, "a statement")
    if type(body) is not dict:
        raise SQLAnalysisError(f"unexpected parse tree shape in {kind}")
    w = _Walk(text, span, has_params)
    w.flags.update(_STATEMENT_FLAGS.get(kind, ()))
    top = _TOP.get(kind, _t_ddl)(w, kind, body)
    klass = top.klass
    commands = [top.command, *w.commands]
    classes: list[StatementClass] = [klass, *w.classes]
    if top.inner is not None and top.merge_inner:
        w.merge(top.inner)
        commands.extend(top.inner.commands)
        classes.extend(top.inner.classes)
    flags = frozenset(w.flags)
    if "catalog_write" in flags:
        # writing the system catalogs changes the schema, whatever the verb
        klass = "DDL"
        classes.append("DDL")
    unique_classes = tuple(dict.fromkeys(classes))
    preds = tuple(w.where_preds)
    return StatementFacts(
        command=top.command,
        statement_class=klass,
        commands=tuple(dict.fromkeys(commands)),
        classes=unique_classes,
        tables_read=tuple(sorted(w.reads)),
        tables_written=tuple(sorted(w.writes)),
        columns_read=tuple(sorted(w.columns)),
        functions=tuple(sorted(w.functions)),
        has_where=top.has_where,
        where_trivially_true=top.where_true,
        flags=flags,
        risk=risk_of(unique_classes, flags),
        copy=top.copy,
        prepared_name=top.prepared,
        inner=top.inner,
        settings=tuple(sorted(w.settings)),
        where_params=bool(preds),
        execute_params=top.execute_params,
        span=span,
        text=text,
        where_predicates=preds,
        fingerprinter=parse.fingerprint,
    )


# -- parsing -----------------------------------------------------------------------------


def _prepare(sql: str) -> tuple[str, int]:
    # libpg_query does not skip a byte order mark; a client that sends one means nothing by it
    return (sql[1:], 1) if sql.startswith("\ufeff") else (sql, 0)


_TOO_DEEP = ("stack depth limit exceeded", "memory exhausted")


def _parse_json(sql: str) -> str:
    """pglast's JSON text for ``sql``; raises SQLParseError (SQLTooComplex for depth and
    size problems)."""
    try:
        tree_json = parse.parse_json(sql)
    except _pg.ParseError as err:
        message = str(err.args[0]) if err.args else "parse error"
        location = err.args[1] if len(err.args) > 1 else None
        if any(m in message for m in _TOO_DEEP):
            raise SQLTooComplex(message) from None
        raise SQLParseError(message, location if isinstance(location, int) else None) from None
    except RecursionError:
        raise SQLTooComplex("nesting too deep") from None
    # every node is at least one "{"; count them only when there can be too many
    if len(tree_json) > MAX_TREE_NODES:
        nodes = tree_json.count("{")
        if nodes > MAX_TREE_NODES:
            raise SQLTooComplex(f"{nodes} parse tree nodes, more than {MAX_TREE_NODES}")
    return tree_json


def _load(tree_json: str) -> list[dict[str, Any]]:
    try:
        tree = orjson.loads(tree_json)
    except orjson.JSONDecodeError as err:
        if "depth" in str(err) or "recursion" in str(err):
            raise SQLTooComplex("nesting too deep") from None
        raise SQLAnalysisError(f"unreadable parse tree: {err}") from None
    except RecursionError:
        raise SQLTooComplex("nesting too deep") from None
    stmts: list[dict[str, Any]] = tree.get("stmts", []) if type(tree) is dict else []
    return stmts


def _share_parse(
    sql: str, body: str, shift: int, tree_json: str, index: int, alone: bool, span: tuple[int, int], text: str
) -> None:
    """Hand the parse of one statement to what reads its text next (redaction, the
    fingerprint, lineage: sql.parse), so it is not parsed again on its own."""
    if text == body:
        return  # parse_json(body) is kept already
    start = span[0] + (len(sql[span[0] : span[1]]) - len(sql[span[0] : span[1]].lstrip())) - shift
    offset = start if body.isascii() else len(body[:start].encode())
    parse.seed(text, tree_json, index, offset, alone)


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
    Raises :class:`SQLParseError` if PostgreSQL would reject the text, and its subclasses
    :class:`SQLUnsupported` (a construct not on the allow-list), :class:`SQLTooComplex`
    (too deep or too large) and :class:`SQLAnalysisError` (anything else unexpected).
    """
    body, shift = _prepare(sql)
    try:
        tree_json = _parse_json(body)
    except SQLParseError as err:
        if shift and err.position is not None:
            err.position += shift
        raise
    return _analyze_tree(sql, body, shift, tree_json)


def _analyze_tree(sql: str, body: str, shift: int, tree_json: str) -> list[StatementFacts]:
    """The facts of an already parsed ``tree_json`` (pglast's JSON for ``body``)."""
    tags = tags_of(tree_json)
    bad = first_unsupported(tree_json, tags)
    if bad is not None:
        raise SQLUnsupported(bad)
    stmts = _load(tree_json)
    has_params = "ParamRef" in tags
    try:
        spans = _spans(body, stmts, shift)
        out = []
        for index, (raw_stmt, span) in enumerate(zip(stmts, spans, strict=True)):
            text = sql[span[0] : span[1]].strip()
            out.append(_facts(raw_stmt.get("stmt"), text, span, has_params))
            _share_parse(sql, body, shift, tree_json, index, len(stmts) == 1, span, text)
        return out
    except SQLParseError:
        raise
    except (RecursionError, MemoryError):
        raise SQLTooComplex("nesting too deep") from None
    except Exception as err:
        raise SQLAnalysisError(
            f"dbsentry could not analyse the statement ({type(err).__name__}: {err})"
        ) from err


def _tree_nodes(sql: str) -> list[Any]:
    """Every dict of ``sql``'s parse tree (for the rare questions the facts do not answer)."""
    body, _ = _prepare(sql)
    stack: list[Any] = list(_load(_parse_json(body)))
    out: list[Any] = []
    while stack:
        n = stack.pop()
        if type(n) is dict:
            out.append(n)
            stack.extend(v for v in n.values() if type(v) in (dict, list))
        elif type(n) is list:
            stack.extend(n)
    return out


def operators_and_types(sql: str) -> tuple[frozenset[str], frozenset[str]]:
    """The operators (``=``, ``s.###``) and the type names (``int4``, ``s.dom``) that
    ``sql`` names anywhere: casts, ``OPERATOR()``, column definitions.  Raises
    :class:`SQLParseError`."""
    operators: set[str] = set()
    types: set[str] = set()
    for node in _tree_nodes(sql):
        expr = node.get("A_Expr")
        if type(expr) is dict:
            operators.add(".".join(_strings(expr.get("name"))))
        for key in ("TypeName", "typeName"):
            tn = node.get(key)
            if type(tn) is dict:
                types.add(".".join(_strings(tn.get("names"))))
    return frozenset(operators), frozenset(types)


def setting_values(sql: str, name: str) -> list[object]:
    """The values ``sql`` gives setting ``name`` (lower case): the text of each ``SET``
    value or ``set_config`` argument, None for RESET / DEFAULT (the session's default), and
    :data:`UNKNOWN_PARAM` for anything not a constant (a set_config whose name is not a
    constant counts as setting every name)."""
    out: list[object] = []
    for node in _tree_nodes(sql):
        vs = node.get("VariableSetStmt")
        if type(vs) is dict and name in _setting_names(vs):
            kind = vs.get("kind", "")
            if kind in ("VAR_RESET", "VAR_SET_DEFAULT"):
                out.append(None)
            else:
                args = vs.get("args") or []
                values = [const(a) for a in args]
                known = bool(values) and all(v is not UNKNOWN and v is not None for v in values)
                # a list setting (search_path = a, b) reads as PostgreSQL prints it
                out.append(", ".join(str(v) for v in values) if known else UNKNOWN_PARAM)
        fc = node.get("FuncCall")
        if type(fc) is dict and _strings(fc.get("funcname"))[-1:] == ["set_config"]:
            setting, value, _ = _call_args(list(fc.get("args") or []), _SET_CONFIG_ARGS)
            target = const(setting) if setting is not None else UNKNOWN
            if target is UNKNOWN or not isinstance(target, str) or target.lower() == name:
                folded = const(value) if value is not None else UNKNOWN
                out.append(str(folded) if folded is not UNKNOWN and folded is not None else UNKNOWN_PARAM)
    return out


def split_statement_spans(sql: str) -> list[tuple[int, int]]:
    """``[start, end)`` character spans of each statement of ``sql``, without the
    separating semicolons (a leading U+FEFF is skipped).  Raises :class:`SQLParseError`."""
    body, shift = _prepare(sql)
    return _spans(body, _load(_parse_json(body)), shift)

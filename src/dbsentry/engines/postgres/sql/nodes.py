"""The allow-list: every node tag of PostgreSQL's raw parse tree, and what dbsentry does
with it.

"Enforce by construction, not by enumeration": :func:`dbsentry.engines.postgres.sql.facts.analyze` reads
only trees whose every node tag is in :data:`STATEMENTS` or :data:`CLAUSES`.  A tag in
:data:`REFUSED`, or in no table at all (a node a newer parser invented), makes the
statement unsupported, so a construct the walk does not understand is refused instead of
being guessed at.  The check reads the whole tree (:func:`first_unsupported`), including
subtrees the walk has no reason to enter.

- :data:`STATEMENTS`: every statement kind, with its command tag and pgAudit class (the
  walk refines some commands, e.g. ``DROP TABLE`` from ``DropStmt``);
- :data:`CLAUSES`: expressions, clauses and DDL parts, each with what it means to the walk;
- :data:`REFUSED`: nodes dbsentry will not analyse, with the name the refusal gives them.
  Planner and executor nodes (``Var``, ``OpExpr``, ``Query``...) never occur in a raw
  parse tree; they are refused so that a tree that holds one is not read at all.

pglast's JSON writes a node as ``{"Tag": {fields}}``; a field typed as one particular
struct is written without the tag (:data:`STRUCT_FIELDS` names those, for the walks that
need a node's type).  :data:`RANGEVAR_PLACES` is every place a table reference
(``RangeVar``) can stand, and what the reference does there; a table reference anywhere
else is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Literal

from dbsentry.governance.facts import StatementClass

__all__ = [
    "ALLOWED",
    "CLAUSES",
    "RANGEVAR_PLACES",
    "REFUSED",
    "STATEMENTS",
    "STRUCT_FIELDS",
    "StatementClass",
    "construct_name",
    "first_unsupported",
    "tags_of",
]


#: Statement tag -> (command tag, class).  Every statement pglast knows is here or in
#: :data:`REFUSED` (``PLAssignStmt``, ``SetOperationStmt``).
STATEMENTS: dict[str, tuple[str, StatementClass]] = {
    # queries and data changes
    "SelectStmt": ("SELECT", "READ"),
    "InsertStmt": ("INSERT", "WRITE"),
    "UpdateStmt": ("UPDATE", "WRITE"),
    "DeleteStmt": ("DELETE", "WRITE"),
    "MergeStmt": ("MERGE", "WRITE"),
    "TruncateStmt": ("TRUNCATE", "WRITE"),
    "CopyStmt": ("COPY", "READ"),  # WRITE for COPY FROM
    # statements around other statements
    "ExplainStmt": ("EXPLAIN", "MISC"),  # EXPLAIN ANALYZE: the class of what it runs
    "PrepareStmt": ("PREPARE", "MISC"),
    "ExecuteStmt": ("EXECUTE", "MISC"),
    "DeallocateStmt": ("DEALLOCATE", "MISC"),
    "DeclareCursorStmt": ("DECLARE CURSOR", "READ"),
    "FetchStmt": ("FETCH", "MISC"),  # MOVE
    "ClosePortalStmt": ("CLOSE", "MISC"),
    "CreateTableAsStmt": ("CREATE TABLE AS", "DDL"),  # SELECT INTO, CREATE MATERIALIZED VIEW
    # sessions and transactions
    "TransactionStmt": ("BEGIN", "MISC"),  # the command is the transaction verb
    "VariableSetStmt": ("SET", "MISC_SET"),  # SET ROLE, RESET, SET TRANSACTION...
    "VariableShowStmt": ("SHOW", "MISC"),
    "DiscardStmt": ("DISCARD ALL", "MISC"),
    "ConstraintsSetStmt": ("SET CONSTRAINTS", "MISC"),
    "ListenStmt": ("LISTEN", "MISC"),
    "UnlistenStmt": ("UNLISTEN", "MISC"),
    "NotifyStmt": ("NOTIFY", "MISC"),
    "LockStmt": ("LOCK TABLE", "MISC"),
    "LoadStmt": ("LOAD", "MISC"),
    "DoStmt": ("DO", "FUNCTION"),
    "CallStmt": ("CALL", "FUNCTION"),
    # maintenance
    "VacuumStmt": ("VACUUM", "MISC"),  # ANALYZE
    "ClusterStmt": ("CLUSTER", "MISC"),
    "ReindexStmt": ("REINDEX", "MISC"),
    "CheckPointStmt": ("CHECKPOINT", "MISC"),
    # roles and privileges
    "GrantStmt": ("GRANT", "ROLE"),  # REVOKE
    "GrantRoleStmt": ("GRANT", "ROLE"),  # REVOKE
    "AlterDefaultPrivilegesStmt": ("ALTER DEFAULT PRIVILEGES", "ROLE"),
    "CreateRoleStmt": ("CREATE ROLE", "ROLE"),  # CREATE USER, CREATE GROUP
    "AlterRoleStmt": ("ALTER ROLE", "ROLE"),
    "AlterRoleSetStmt": ("ALTER ROLE", "ROLE"),
    "DropRoleStmt": ("DROP ROLE", "ROLE"),
    # DDL
    "CreateStmt": ("CREATE TABLE", "DDL"),
    "CreateForeignTableStmt": ("CREATE FOREIGN TABLE", "DDL"),
    "AlterTableStmt": ("ALTER TABLE", "DDL"),  # ALTER <object type>
    "AlterTableMoveAllStmt": ("ALTER TABLE", "DDL"),  # ALTER <object type> ALL IN TABLESPACE
    "DropStmt": ("DROP", "DDL"),  # DROP <object type>
    "RenameStmt": ("ALTER RENAME", "DDL"),  # ALTER <object type> RENAME
    "AlterOwnerStmt": ("ALTER OWNER", "DDL"),  # ALTER <object type> OWNER
    "AlterObjectSchemaStmt": ("ALTER SET SCHEMA", "DDL"),  # ALTER <object type> SET SCHEMA
    "AlterObjectDependsStmt": ("ALTER DEPENDS ON EXTENSION", "DDL"),  # ALTER <object type> ...
    "IndexStmt": ("CREATE INDEX", "DDL"),
    "ViewStmt": ("CREATE VIEW", "DDL"),
    "RefreshMatViewStmt": ("REFRESH MATERIALIZED VIEW", "DDL"),
    "CreateSeqStmt": ("CREATE SEQUENCE", "DDL"),
    "AlterSeqStmt": ("ALTER SEQUENCE", "DDL"),
    "CreateSchemaStmt": ("CREATE SCHEMA", "DDL"),
    "CreatedbStmt": ("CREATE DATABASE", "DDL"),
    "AlterDatabaseStmt": ("ALTER DATABASE", "DDL"),
    "AlterDatabaseSetStmt": ("ALTER DATABASE", "DDL"),
    "AlterDatabaseRefreshCollStmt": ("ALTER DATABASE", "DDL"),
    "DropdbStmt": ("DROP DATABASE", "DDL"),
    "CreateTableSpaceStmt": ("CREATE TABLESPACE", "DDL"),
    "AlterTableSpaceOptionsStmt": ("ALTER TABLESPACE", "DDL"),
    "DropTableSpaceStmt": ("DROP TABLESPACE", "DDL"),
    "CreateFunctionStmt": ("CREATE FUNCTION", "DDL"),  # CREATE PROCEDURE
    "AlterFunctionStmt": ("ALTER FUNCTION", "DDL"),
    "DefineStmt": ("CREATE", "DDL"),  # CREATE AGGREGATE/OPERATOR/TYPE/COLLATION/TEXT SEARCH...
    "CompositeTypeStmt": ("CREATE TYPE", "DDL"),
    "CreateEnumStmt": ("CREATE TYPE", "DDL"),
    "CreateRangeStmt": ("CREATE TYPE", "DDL"),
    "AlterEnumStmt": ("ALTER TYPE", "DDL"),
    "AlterTypeStmt": ("ALTER TYPE", "DDL"),
    "CreateDomainStmt": ("CREATE DOMAIN", "DDL"),
    "AlterDomainStmt": ("ALTER DOMAIN", "DDL"),
    "AlterCollationStmt": ("ALTER COLLATION", "DDL"),
    "CreateConversionStmt": ("CREATE CONVERSION", "DDL"),
    "CreateCastStmt": ("CREATE CAST", "DDL"),
    "CreateTransformStmt": ("CREATE TRANSFORM", "DDL"),
    "CreateOpClassStmt": ("CREATE OPERATOR CLASS", "DDL"),
    "CreateOpFamilyStmt": ("CREATE OPERATOR FAMILY", "DDL"),
    "AlterOpFamilyStmt": ("ALTER OPERATOR FAMILY", "DDL"),
    "AlterOperatorStmt": ("ALTER OPERATOR", "DDL"),
    "AlterTSConfigurationStmt": ("ALTER TEXT SEARCH CONFIGURATION", "DDL"),
    "AlterTSDictionaryStmt": ("ALTER TEXT SEARCH DICTIONARY", "DDL"),
    "CreateStatsStmt": ("CREATE STATISTICS", "DDL"),
    "AlterStatsStmt": ("ALTER STATISTICS", "DDL"),
    "CreatePLangStmt": ("CREATE LANGUAGE", "DDL"),
    "CreateAmStmt": ("CREATE ACCESS METHOD", "DDL"),
    "CreateTrigStmt": ("CREATE TRIGGER", "DDL"),
    "CreateEventTrigStmt": ("CREATE EVENT TRIGGER", "DDL"),
    "AlterEventTrigStmt": ("ALTER EVENT TRIGGER", "DDL"),
    "RuleStmt": ("CREATE RULE", "DDL"),
    "CreatePolicyStmt": ("CREATE POLICY", "DDL"),
    "AlterPolicyStmt": ("ALTER POLICY", "DDL"),
    "CommentStmt": ("COMMENT", "DDL"),
    "SecLabelStmt": ("SECURITY LABEL", "DDL"),
    "CreateExtensionStmt": ("CREATE EXTENSION", "DDL"),
    "AlterExtensionStmt": ("ALTER EXTENSION", "DDL"),
    "AlterExtensionContentsStmt": ("ALTER EXTENSION", "DDL"),
    "CreateFdwStmt": ("CREATE FOREIGN DATA WRAPPER", "DDL"),
    "AlterFdwStmt": ("ALTER FOREIGN DATA WRAPPER", "DDL"),
    "CreateForeignServerStmt": ("CREATE SERVER", "DDL"),
    "AlterForeignServerStmt": ("ALTER SERVER", "DDL"),
    "CreateUserMappingStmt": ("CREATE USER MAPPING", "DDL"),
    "AlterUserMappingStmt": ("ALTER USER MAPPING", "DDL"),
    "DropUserMappingStmt": ("DROP USER MAPPING", "DDL"),
    "ImportForeignSchemaStmt": ("IMPORT FOREIGN SCHEMA", "DDL"),
    "CreatePublicationStmt": ("CREATE PUBLICATION", "DDL"),
    "AlterPublicationStmt": ("ALTER PUBLICATION", "DDL"),
    "CreateSubscriptionStmt": ("CREATE SUBSCRIPTION", "DDL"),
    "AlterSubscriptionStmt": ("ALTER SUBSCRIPTION", "DDL"),
    "DropSubscriptionStmt": ("DROP SUBSCRIPTION", "DDL"),
    "AlterSystemStmt": ("ALTER SYSTEM", "DDL"),
    "DropOwnedStmt": ("DROP OWNED", "DDL"),
    "ReassignOwnedStmt": ("REASSIGN OWNED", "DDL"),
}

_LEAF = "a constant, name or marker: nothing to collect"
_EXPR = "an expression: its operands are walked as expressions"
_DDL = "part of a DDL statement: walked for the relations, functions and queries it names"
_JSON = "SQL/JSON constructor, predicate or query function: its operands are walked as expressions"

#: Non-statement tags the walk understands, and what they mean to it.
CLAUSES: dict[str, str] = {
    # structure
    "RawStmt": "one statement of the input (the top of every tree)",
    "List": "a list inside a list: its items stand where the list stands",
    # constants and names
    "A_Const": _LEAF,
    "String": _LEAF,
    "Integer": _LEAF,
    "Float": _LEAF,
    "Boolean": _LEAF,
    "BitString": _LEAF,
    "A_Star": "* in a column reference or count(*)",
    "ParamRef": "a parameter $n: folded when its value is bound (where_true_with)",
    "SQLValueFunction": "CURRENT_USER, CURRENT_DATE...: a value without side effects",
    "SetToDefault": "DEFAULT in INSERT VALUES / UPDATE SET",
    "CurrentOfExpr": "WHERE CURRENT OF cursor: one row, never always true",
    "MergeSupportFunc": "merge_action() in MERGE ... RETURNING",
    "TypeName": "a type name (type modifiers are not evaluated as data)",
    "Alias": "a table alias and its column names",
    "RoleSpec": "a role name",
    "AccessPriv": "a privilege in GRANT/REVOKE",
    "ObjectWithArgs": "a function or operator signature",
    "TriggerTransition": "REFERENCING OLD/NEW TABLE in CREATE TRIGGER",
    # expressions
    "ColumnRef": "a column reference: recorded in columns_read, resolved through aliases",
    "FuncCall": "a function call: recorded in functions (flags by name), arguments walked",
    "NamedArgExpr": "a named argument name => value",
    "A_Expr": _EXPR,
    "BoolExpr": _EXPR,
    "TypeCast": _EXPR,
    "CollateClause": _EXPR,
    "CaseExpr": _EXPR,
    "CaseWhen": _EXPR,
    "A_ArrayExpr": _EXPR,
    "A_Indirection": _EXPR,
    "A_Indices": _EXPR,
    "RowExpr": _EXPR,
    "CoalesceExpr": _EXPR,
    "MinMaxExpr": _EXPR,
    "NullTest": _EXPR,
    "BooleanTest": _EXPR,
    "GroupingFunc": _EXPR,
    "XmlExpr": _EXPR,
    "XmlSerialize": _EXPR,
    "SubLink": "a subquery in an expression: its query is walked as a nested SELECT",
    "JsonObjectConstructor": _JSON,
    "JsonArrayConstructor": _JSON,
    "JsonArrayQueryConstructor": "JSON_ARRAY(query): its query is walked as a nested SELECT",
    "JsonObjectAgg": _JSON,
    "JsonArrayAgg": _JSON,
    "JsonAggConstructor": _JSON,
    "JsonKeyValue": _JSON,
    "JsonValueExpr": _JSON,
    "JsonIsPredicate": _JSON,
    "JsonFuncExpr": _JSON,
    "JsonParseExpr": _JSON,
    "JsonScalarExpr": _JSON,
    "JsonSerializeExpr": _JSON,
    "JsonArgument": _JSON,
    "JsonBehavior": _JSON,
    "JsonFormat": _LEAF,
    "JsonOutput": _LEAF,
    "JsonReturning": _LEAF,
    # query clauses
    "ResTarget": "a target list entry or SET column: its value (and subscripts) walked",
    "MultiAssignRef": "SET (a, b) = (...): the source walked",
    "SortBy": _EXPR,
    "WindowDef": "a window: partition and order expressions walked",
    "GroupingSet": _EXPR,
    "WithClause": "WITH: every CTE walked as a nested statement, its name scoped",
    "CommonTableExpr": "one CTE: its query walked as a nested statement",
    "CTESearchClause": "SEARCH ... SET: column names",
    "CTECycleClause": "CYCLE ... SET: column names and constant marks",
    "LockingClause": "FOR UPDATE/SHARE: flag row_lock (the relations named are FROM items)",
    "IntoClause": "SELECT INTO / CREATE TABLE AS target: a relation written",
    "OnConflictClause": "ON CONFLICT: DO UPDATE adds UPDATE to the commands; its SET and WHERE walked",
    "InferClause": "ON CONFLICT (...) arbiter: expressions walked",
    "IndexElem": "an index column or expression",
    "MergeWhenClause": "WHEN [NOT] MATCHED: its condition, SET and VALUES walked",
    "ReturningClause": "RETURNING: reads the target relation",
    "ReturningOption": "RETURNING WITH (OLD AS o, NEW AS n)",
    "RangeVar": "a table reference: read, written or refused by where it stands (RANGEVAR_PLACES)",
    "RangeSubselect": "a subquery in FROM: walked as a nested SELECT",
    "RangeFunction": "a function in FROM: its calls walked as expressions",
    "RangeTableSample": "TABLESAMPLE: reads its relation; the sampling arguments walked",
    "RangeTableFunc": "XMLTABLE: its document, row and column expressions walked as reads",
    "RangeTableFuncCol": "an XMLTABLE column: its path and default walked",
    "JoinExpr": "a join: both sides are FROM items, the condition an expression",
    # DDL parts
    "DefElem": "an option: its value walked (booleans read by the statement)",
    "ColumnDef": _DDL,
    "Constraint": _DDL,
    "TableLikeClause": _DDL,
    "PartitionElem": _DDL,
    "PartitionSpec": _DDL,
    "PartitionBoundSpec": _DDL,
    "PartitionCmd": _DDL,
    "AlterTableCmd": _DDL,
    "ATAlterConstraint": _DDL,
    "ReplicaIdentityStmt": _DDL,
    "FunctionParameter": _DDL,
    "CreateOpClassItem": _DDL,
    "StatsElem": _DDL,
    "PublicationObjSpec": _DDL,
    "PublicationTable": _DDL,
    "VacuumRelation": "a VACUUM/ANALYZE target",
    "ReturnStmt": "RETURN expr in a SQL function body",
}

_PLANNER = "a planner node"

#: Tags dbsentry refuses, and the name the refusal gives them.
REFUSED: dict[str, str] = {
    # raw-tree nodes without a sound meaning here
    "JsonTable": "JSON_TABLE",
    "JsonTableColumn": "JSON_TABLE",
    "JsonTablePathSpec": "JSON_TABLE",
    # never in a raw parse tree
    "PLAssignStmt": "a PL/pgSQL assignment",
    "SetOperationStmt": _PLANNER,
    "PartitionRangeDatum": _PLANNER,  # made from the bound expressions by parse analysis
    "Query": _PLANNER,
    "Var": _PLANNER,
    "Param": _PLANNER,
    "Aggref": _PLANNER,
    "WindowFunc": _PLANNER,
    "WindowFuncRunCondition": _PLANNER,
    "MergeAction": _PLANNER,
    "SubscriptingRef": _PLANNER,
    "FuncExpr": _PLANNER,
    "OpExpr": _PLANNER,
    "ScalarArrayOpExpr": _PLANNER,
    "SubPlan": _PLANNER,
    "AlternativeSubPlan": _PLANNER,
    "FieldSelect": _PLANNER,
    "FieldStore": _PLANNER,
    "RelabelType": _PLANNER,
    "CoerceViaIO": _PLANNER,
    "ArrayCoerceExpr": _PLANNER,
    "ConvertRowtypeExpr": _PLANNER,
    "CollateExpr": _PLANNER,
    "CaseTestExpr": _PLANNER,
    "ArrayExpr": _PLANNER,
    "RowCompareExpr": _PLANNER,
    "CoerceToDomain": _PLANNER,
    "CoerceToDomainValue": _PLANNER,
    "InferenceElem": _PLANNER,
    "ReturningExpr": _PLANNER,
    "TargetEntry": _PLANNER,
    "RangeTblRef": _PLANNER,
    "RangeTblEntry": _PLANNER,
    "RangeTblFunction": _PLANNER,
    "RTEPermissionInfo": _PLANNER,
    "FromExpr": _PLANNER,
    "OnConflictExpr": _PLANNER,
    "SortGroupClause": _PLANNER,
    "WindowClause": _PLANNER,
    "RowMarkClause": _PLANNER,
    "WithCheckOption": _PLANNER,
    "TableFunc": _PLANNER,
    "TableSampleClause": _PLANNER,
    "JsonConstructorExpr": _PLANNER,
    "JsonExpr": _PLANNER,
    "CallContext": "an executor node",
    "InlineCodeBlock": "an executor node",
    "Expr": "an abstract node",
    "ValUnion": "an abstract node",
}

#: Every tag a statement may contain.
ALLOWED: frozenset[str] = frozenset(STATEMENTS) | frozenset(CLAUSES)

#: (node type, field) -> the struct type pglast writes there without its tag.
STRUCT_FIELDS: dict[tuple[str, str], str] = {
    ("AlterDatabaseSetStmt", "setstmt"): "VariableSetStmt",
    ("AlterDefaultPrivilegesStmt", "action"): "GrantStmt",
    ("AlterFunctionStmt", "func"): "ObjectWithArgs",
    ("AlterObjectDependsStmt", "relation"): "RangeVar",
    ("AlterObjectDependsStmt", "extname"): "String",
    ("AlterObjectSchemaStmt", "relation"): "RangeVar",
    ("AlterOperatorStmt", "opername"): "ObjectWithArgs",
    ("AlterOwnerStmt", "relation"): "RangeVar",
    ("AlterOwnerStmt", "newowner"): "RoleSpec",
    ("AlterPolicyStmt", "table"): "RangeVar",
    ("AlterRoleSetStmt", "role"): "RoleSpec",
    ("AlterRoleSetStmt", "setstmt"): "VariableSetStmt",
    ("AlterRoleStmt", "role"): "RoleSpec",
    ("AlterSeqStmt", "sequence"): "RangeVar",
    ("AlterSystemStmt", "setstmt"): "VariableSetStmt",
    ("AlterTableCmd", "newowner"): "RoleSpec",
    ("AlterTableStmt", "relation"): "RangeVar",
    ("AlterUserMappingStmt", "user"): "RoleSpec",
    ("CallStmt", "funccall"): "FuncCall",
    ("ClusterStmt", "relation"): "RangeVar",
    ("ColumnDef", "typeName"): "TypeName",
    ("ColumnDef", "identitySequence"): "RangeVar",
    ("ColumnDef", "collClause"): "CollateClause",
    ("CommonTableExpr", "search_clause"): "CTESearchClause",
    ("CommonTableExpr", "cycle_clause"): "CTECycleClause",
    ("CompositeTypeStmt", "typevar"): "RangeVar",
    ("Constraint", "pktable"): "RangeVar",
    ("CopyStmt", "relation"): "RangeVar",
    ("CreateCastStmt", "sourcetype"): "TypeName",
    ("CreateCastStmt", "targettype"): "TypeName",
    ("CreateCastStmt", "func"): "ObjectWithArgs",
    ("CreateDomainStmt", "typeName"): "TypeName",
    ("CreateDomainStmt", "collClause"): "CollateClause",
    ("CreateForeignTableStmt", "base"): "CreateStmt",
    ("CreateFunctionStmt", "returnType"): "TypeName",
    ("CreateOpClassItem", "name"): "ObjectWithArgs",
    ("CreateOpClassItem", "storedtype"): "TypeName",
    ("CreateOpClassStmt", "datatype"): "TypeName",
    ("CreatePolicyStmt", "table"): "RangeVar",
    ("CreateSchemaStmt", "authrole"): "RoleSpec",
    ("CreateSeqStmt", "sequence"): "RangeVar",
    ("CreateStmt", "relation"): "RangeVar",
    ("CreateStmt", "partbound"): "PartitionBoundSpec",
    ("CreateStmt", "partspec"): "PartitionSpec",
    ("CreateStmt", "ofTypename"): "TypeName",
    ("CreateTableAsStmt", "into"): "IntoClause",
    ("CreateTableSpaceStmt", "owner"): "RoleSpec",
    ("CreateTransformStmt", "type_name"): "TypeName",
    ("CreateTransformStmt", "fromsql"): "ObjectWithArgs",
    ("CreateTransformStmt", "tosql"): "ObjectWithArgs",
    ("CreateTrigStmt", "relation"): "RangeVar",
    ("CreateTrigStmt", "constrrel"): "RangeVar",
    ("CreateUserMappingStmt", "user"): "RoleSpec",
    ("DeleteStmt", "relation"): "RangeVar",
    ("DeleteStmt", "returningClause"): "ReturningClause",
    ("DeleteStmt", "withClause"): "WithClause",
    ("DropUserMappingStmt", "user"): "RoleSpec",
    ("FuncCall", "over"): "WindowDef",
    ("FunctionParameter", "argType"): "TypeName",
    ("GrantRoleStmt", "grantor"): "RoleSpec",
    ("GrantStmt", "grantor"): "RoleSpec",
    ("IndexStmt", "relation"): "RangeVar",
    ("InsertStmt", "relation"): "RangeVar",
    ("InsertStmt", "onConflictClause"): "OnConflictClause",
    ("InsertStmt", "returningClause"): "ReturningClause",
    ("InsertStmt", "withClause"): "WithClause",
    ("IntoClause", "rel"): "RangeVar",
    ("JoinExpr", "join_using_alias"): "Alias",
    ("JoinExpr", "alias"): "Alias",
    ("JsonAggConstructor", "output"): "JsonOutput",
    ("JsonAggConstructor", "over"): "WindowDef",
    ("JsonArgument", "val"): "JsonValueExpr",
    ("JsonArrayAgg", "constructor"): "JsonAggConstructor",
    ("JsonArrayAgg", "arg"): "JsonValueExpr",
    ("JsonArrayConstructor", "output"): "JsonOutput",
    ("JsonArrayQueryConstructor", "output"): "JsonOutput",
    ("JsonArrayQueryConstructor", "format"): "JsonFormat",
    ("JsonFuncExpr", "context_item"): "JsonValueExpr",
    ("JsonFuncExpr", "output"): "JsonOutput",
    ("JsonFuncExpr", "on_empty"): "JsonBehavior",
    ("JsonFuncExpr", "on_error"): "JsonBehavior",
    ("JsonIsPredicate", "format"): "JsonFormat",
    ("JsonKeyValue", "value"): "JsonValueExpr",
    ("JsonObjectAgg", "constructor"): "JsonAggConstructor",
    ("JsonObjectAgg", "arg"): "JsonKeyValue",
    ("JsonObjectConstructor", "output"): "JsonOutput",
    ("JsonOutput", "typeName"): "TypeName",
    ("JsonOutput", "returning"): "JsonReturning",
    ("JsonParseExpr", "expr"): "JsonValueExpr",
    ("JsonParseExpr", "output"): "JsonOutput",
    ("JsonReturning", "format"): "JsonFormat",
    ("JsonScalarExpr", "output"): "JsonOutput",
    ("JsonSerializeExpr", "expr"): "JsonValueExpr",
    ("JsonSerializeExpr", "output"): "JsonOutput",
    ("JsonValueExpr", "format"): "JsonFormat",
    ("MergeStmt", "relation"): "RangeVar",
    ("MergeStmt", "returningClause"): "ReturningClause",
    ("MergeStmt", "withClause"): "WithClause",
    ("OnConflictClause", "infer"): "InferClause",
    ("PartitionCmd", "name"): "RangeVar",
    ("PartitionCmd", "bound"): "PartitionBoundSpec",
    ("PublicationObjSpec", "pubtable"): "PublicationTable",
    ("PublicationTable", "relation"): "RangeVar",
    ("RangeFunction", "alias"): "Alias",
    ("RangeSubselect", "alias"): "Alias",
    ("RangeTableFunc", "alias"): "Alias",
    ("RangeTableFuncCol", "typeName"): "TypeName",
    ("RangeVar", "alias"): "Alias",
    ("ReassignOwnedStmt", "newrole"): "RoleSpec",
    ("RefreshMatViewStmt", "relation"): "RangeVar",
    ("ReindexStmt", "relation"): "RangeVar",
    ("RenameStmt", "relation"): "RangeVar",
    ("RuleStmt", "relation"): "RangeVar",
    ("SelectStmt", "intoClause"): "IntoClause",
    ("SelectStmt", "withClause"): "WithClause",
    ("SelectStmt", "larg"): "SelectStmt",
    ("SelectStmt", "rarg"): "SelectStmt",
    ("TableLikeClause", "relation"): "RangeVar",
    ("TypeCast", "typeName"): "TypeName",
    ("UpdateStmt", "relation"): "RangeVar",
    ("UpdateStmt", "returningClause"): "ReturningClause",
    ("UpdateStmt", "withClause"): "WithClause",
    ("VacuumRelation", "relation"): "RangeVar",
    ("ViewStmt", "view"): "RangeVar",
    ("XmlSerialize", "typeName"): "TypeName",
}

#: Every place a table reference can stand, and what the reference does there:
#: ``read``/``write`` (recorded in tables_read/tables_written), ``from`` (a FROM item:
#: read, handled by the query walk), ``locked`` (FOR UPDATE OF names FROM items that are
#: already read) or ``name`` (not a relation at all).  A table reference anywhere else is
#: refused.
RANGEVAR_PLACES: dict[tuple[str, str], Literal["read", "write", "from", "locked", "name"]] = {
    # queries and data changes
    ("SelectStmt", "fromClause"): "from",
    ("UpdateStmt", "fromClause"): "from",
    ("DeleteStmt", "usingClause"): "from",
    ("MergeStmt", "sourceRelation"): "from",
    ("JoinExpr", "larg"): "from",
    ("JoinExpr", "rarg"): "from",
    ("RangeTableSample", "relation"): "from",
    ("LockingClause", "lockedRels"): "locked",
    ("ConstraintsSetStmt", "constraints"): "name",  # SET CONSTRAINTS [schema.]constraint
    ("InsertStmt", "relation"): "write",
    ("UpdateStmt", "relation"): "write",
    ("DeleteStmt", "relation"): "write",
    ("MergeStmt", "relation"): "write",
    ("IntoClause", "rel"): "write",
    ("CopyStmt", "relation"): "read",  # written by COPY FROM
    ("TruncateStmt", "relations"): "write",
    ("LockStmt", "relations"): "read",
    # maintenance: the relation is acted upon
    ("VacuumRelation", "relation"): "write",
    ("ClusterStmt", "relation"): "write",
    ("ReindexStmt", "relation"): "write",
    ("RefreshMatViewStmt", "relation"): "write",
    # DDL: the relation created or altered is written; one only looked at is read
    ("CreateStmt", "relation"): "write",
    ("CreateStmt", "inhRelations"): "write",  # INHERITS / PARTITION OF: the parent changes
    ("AlterTableStmt", "relation"): "write",
    ("AlterTableCmd", "def"): "write",  # INHERIT / NO INHERIT parent
    ("PartitionCmd", "name"): "write",  # ATTACH / DETACH PARTITION
    ("RenameStmt", "relation"): "write",
    ("AlterOwnerStmt", "relation"): "write",
    ("AlterObjectSchemaStmt", "relation"): "write",
    ("AlterObjectDependsStmt", "relation"): "write",
    ("IndexStmt", "relation"): "write",
    ("ViewStmt", "view"): "write",
    ("CreateSeqStmt", "sequence"): "write",
    ("AlterSeqStmt", "sequence"): "write",
    ("CompositeTypeStmt", "typevar"): "write",
    ("ColumnDef", "identitySequence"): "write",
    ("CreateTrigStmt", "relation"): "write",
    ("CreateTrigStmt", "constrrel"): "read",
    ("RuleStmt", "relation"): "write",
    ("CreatePolicyStmt", "table"): "write",
    ("AlterPolicyStmt", "table"): "write",
    ("CreateStatsStmt", "relations"): "write",
    ("GrantStmt", "objects"): "write",
    ("ImportForeignSchemaStmt", "table_list"): "write",
    ("Constraint", "pktable"): "read",  # REFERENCES
    ("TableLikeClause", "relation"): "read",  # LIKE
    ("PublicationTable", "relation"): "read",  # published: its rows leave the server
}

# A tag is the only key of a JSON object, so it always follows "{"; fields are lower-case.
# Inside a JSON string every quote is escaped, so '{"' + a capital + '":' is always a key.
_TAG_RE = re.compile(r'\{"([A-Z][A-Za-z0-9_]*)":')


def tags_of(tree_json: str) -> set[str]:
    """Every node tag in ``tree_json`` (pglast's JSON text), wherever it stands: one pass
    over the text, so no subtree can escape."""
    return set(_TAG_RE.findall(tree_json))


def first_unsupported(tree_json: str, tags: set[str] | None = None) -> str | None:
    """The first tag in ``tree_json`` that is not allowed, or None."""
    bad = (tags if tags is not None else tags_of(tree_json)) - ALLOWED
    if not bad:
        return None
    return min(bad, key=lambda t: tree_json.index('{"' + t + '":'))


def construct_name(tag: str) -> str:
    """What a refusal calls ``tag``: ``JSON_TABLE`` for ``JsonTable``."""
    return REFUSED.get(tag) or "an unknown construct"


def objects(root: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object of a loaded parse tree (nodes and their field dicts), in no
    particular order."""
    stack: list[Any] = [root]
    while stack:
        node = stack.pop()
        if type(node) is list:
            stack.extend(node)
        elif type(node) is dict:
            yield node
            stack.extend(v for v in node.values() if type(v) in (dict, list))

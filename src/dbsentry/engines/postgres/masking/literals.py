"""Which constants and bound parameters of a statement meet a sensitive column.

A value *meets* a column when the statement compares it with the column (``WHERE email =
'ada@example.com'``, ``ssn IN (...)``, ``lower(email) LIKE $1``), inserts it into the column
(``INSERT INTO customers (email) VALUES ($1)``, ``INSERT ... SELECT 'x'``) or assigns it to
the column (``UPDATE ... SET ssn = '...'``, ``ON CONFLICT DO UPDATE SET``, ``MERGE ...
UPDATE SET``/``INSERT VALUES``).  The audit trail uses this to hash such values before
they are stored (see ``dbsentry.audit.redaction``); value detection covers the rest.

Pure: a parse (``parse_sql_json``), the catalog and its ``ClassMap`` go in, positions come
out.  Column references are resolved against the relations the statement names (by alias
or name, anywhere in the statement: a deliberately coarse scope that can only find more).
A column of a relation the catalog does not know (a CTE, a temporary table, a catalog not
loaded yet) is classified by its name, as ``classify_column`` would classify it.

The result is conservative where it cannot see: the arguments of SQL ``EXECUTE`` go into
a statement prepared elsewhere, so they all count as meeting an unknown class (``None``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from dbsentry.audit.redaction import ConstantRedactor, detect_constant, quote_constant
from dbsentry.engines.postgres.sql import parse as sqlparse
from dbsentry.engines.postgres.sql.nodes import objects
from dbsentry.governance.text import REDACTED_STATEMENT
from dbsentry.masking.catalog import Catalog, ClassMap
from dbsentry.masking.classes import DataClass, most_sensitive
from dbsentry.masking.detect import classify_column
from dbsentry.masking.meets import NOTHING_MEETS, LiteralMeets, Meets

__all__ = ["POSTGRES_LITERALS", "LiteralMeets", "Meets", "PostgresLiterals", "find_literal_meets", "meets_values_only"]

_MAX_DEPTH = 400  # the facts walk refuses deeper trees long before this
_SHORT_TREE = 8192  # characters of JSON: too few for a tree too deep to load


_NOTHING = NOTHING_MEETS


def _byte_to_char(sql: str) -> Any:
    """A function mapping libpg_query's byte offsets to ``sql``'s character offsets."""
    if sql.isascii():
        return lambda b: b
    raw = sql.encode("utf-8")
    table: list[int] = []
    for i, ch in enumerate(sql):
        table.extend([i] * len(ch.encode("utf-8")))
    table.append(len(sql))

    def conv(b: int) -> int:
        return table[b] if 0 <= b < len(table) else len(raw)

    return conv


def _strings(fields: Any) -> list[str] | None:
    """The names of a ColumnRef's fields, or None when it ends in ``*``."""
    out: list[str] = []
    for f in fields or ():
        if not isinstance(f, dict):
            return None
        s = f.get("String")
        if s is None:
            return None
        out.append(str(s.get("sval", "")))
    return out


@functools.lru_cache(maxsize=4096)
def _class_by_name(table: str, column: str) -> DataClass | None:
    found = classify_column(table, column)
    return found.data_class if found is not None else None


class _Resolver:
    """Column name -> class, within the relations one statement names."""

    def __init__(
        self,
        tree: Any,
        catalog: Catalog | None,
        classmap: ClassMap | None,
        search_path: Iterable[str] | None,
    ) -> None:
        self.catalog = catalog
        self.classmap = classmap
        self.search_path = tuple(search_path) if search_path is not None else None
        # alias or relation name (lower case) -> [(schema or None, relname)]
        self.names: dict[str, list[tuple[str | None, str]]] = {}
        self.relations: list[tuple[str | None, str]] = []
        for rv in _range_vars(tree, 0, []):
            rel = (rv.get("schemaname"), str(rv.get("relname", "")))
            if rel not in self.relations:
                self.relations.append(rel)
            alias = (rv.get("alias") or {}).get("aliasname")
            for key in {rel[1], str(alias or rel[1])}:
                bucket = self.names.setdefault(key, [])
                if rel not in bucket:
                    bucket.append(rel)
        self._cache: dict[tuple[str | None, str], DataClass | None] = {}
        # relations the statement makes itself (CTEs, subqueries in FROM, VALUES lists):
        # name -> their queries.  A constant in one meets what its column is compared with.
        self.derived: dict[str, list[Any]] = {}
        for name, query in _derived_relations(tree):
            self.derived.setdefault(name, []).append(query)

    @functools.cache  # noqa: B019 (one resolver per statement)
    def whole(self, name: str) -> DataClass | None:
        """The most sensitive class of the columns of the catalog relation(s) ``name``
        means (a whole-row reference: ``to_jsonb(c)``, ``c.*``)."""
        classes = set()
        for rel in self.names.get(name) or ():
            for col in self.relation_columns(rel) or ():
                cls = self.in_relation(rel, col)[1]
                if cls is not None:
                    classes.add(cls)
        return most_sensitive(classes)

    def relation_columns(self, rel: tuple[str | None, str]) -> list[str] | None:
        if self.catalog is None:
            return None
        found = self.catalog.relation(rel[0], rel[1], self.search_path)
        if found is None:
            return None
        return [c.name for c in sorted(found.columns, key=lambda c: c.attnum)]

    def in_relation(
        self, rel: tuple[str | None, str], column: str
    ) -> tuple[bool, DataClass | None]:
        """(whether the catalog knows the relation, the column's class there)."""
        if self.catalog is None:
            return False, None
        found = self.catalog.relation(rel[0], rel[1], self.search_path)
        if found is None:
            return False, None
        if not any(c.name == column for c in found.columns):
            return True, None
        cls = self.classmap.get(found.source(column)) if self.classmap is not None else None
        return True, (cls.data_class if cls is not None else None)

    def column(self, qualifier: str | None, column: str) -> DataClass | None:
        key = (qualifier, column)
        if key in self._cache:
            return self._cache[key]
        if qualifier is not None:
            candidates = self.names.get(qualifier) or [(None, qualifier)]
        else:
            candidates = self.relations
        classes: set[DataClass] = set()
        unknown: list[str] = []
        for rel in candidates:
            known, cls = self.in_relation(rel, column)
            if cls is not None:
                classes.add(cls)
            elif not known:
                unknown.append(rel[1])
        if not candidates:
            unknown.append("")
        if not classes:
            for table in unknown:  # not in the catalog: judge the name
                guess = _class_by_name(table, column)
                if guess is not None:
                    classes.add(guess)
        result = most_sensitive(classes)
        self._cache[key] = result
        return result


def _tagged(node: Any, depth: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``(key, node)`` of a parse tree whose node is a dict, depth first."""
    if depth > _MAX_DEPTH:
        return
    items = node.items() if type(node) is dict else enumerate(node) if type(node) is list else ()
    for k, v in items:
        if type(v) is dict:
            yield str(k), v
        if type(v) is dict or type(v) is list:
            yield from _tagged(v, depth + 1)


def _sublinks(node: Any, depth: int = 0) -> Iterator[dict[str, Any]]:
    """The SubLinks of an expression, not those inside them (each is walked on its own)."""
    if depth > _MAX_DEPTH:
        return
    items = node.items() if type(node) is dict else enumerate(node) if type(node) is list else ()
    for k, v in items:
        if k == "SubLink" and type(v) is dict:
            yield v
        elif k != "SelectStmt" and (type(v) is dict or type(v) is list):
            yield from _sublinks(v, depth + 1)


def _derived_relations(tree: Any) -> list[tuple[str, Any]]:
    """``(name, query)`` of every CTE and aliased subquery in FROM (VALUES included)."""
    out: list[tuple[str, Any]] = []
    for k, v in _tagged(tree):
        if k == "CommonTableExpr" and v.get("ctename"):
            out.append((str(v["ctename"]), v.get("ctequery")))
        elif k == "RangeSubselect" and (v.get("alias") or {}).get("aliasname"):
            out.append((str(v["alias"]["aliasname"]), v.get("subquery")))
    return out


def _column_refs(node: Any, depth: int = 0) -> Iterator[list[Any]]:
    """The ``fields`` of every ColumnRef of an expression, not inside its subqueries."""
    if depth > _MAX_DEPTH:
        return
    items = node.items() if type(node) is dict else enumerate(node) if type(node) is list else ()
    for k, v in items:
        if k == "ColumnRef" and type(v) is dict:
            yield list(v.get("fields") or ())
        elif k not in ("SubLink", "SelectStmt") and (type(v) is dict or type(v) is list):
            yield from _column_refs(v, depth + 1)


def _range_vars(node: Any, depth: int, out: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if depth > _MAX_DEPTH:
        return out
    if type(node) is dict:
        for k, v in node.items():
            if type(v) is dict:
                if k == "RangeVar" or (k == "relation" and "relname" in v):
                    out.append(v)  # RangeVar, or the target of INSERT/UPDATE/DELETE/MERGE
                _range_vars(v, depth + 1, out)
            elif type(v) is list:
                _range_vars(v, depth + 1, out)
    elif type(node) is list:
        for item in node:
            if type(item) is dict or type(item) is list:
                _range_vars(item, depth + 1, out)
    return out


class _Finder:
    def __init__(self, resolver: _Resolver, to_char: Any) -> None:
        self.r = resolver
        self.to_char = to_char
        self.literals: dict[int, Meets] = {}
        self.params: dict[int, Meets] = {}
        self.values: dict[int, str] = {}
        self._derived_memo: dict[str, set[DataClass]] = {}
        self._derived_marked: set[tuple[str, DataClass]] = set()

    # -- marking --------------------------------------------------------------------------

    @staticmethod
    def _merge_into(found: dict[int, Meets], key: int, cls: Meets) -> None:
        """The most sensitive class wins; a known class wins over an unknown one."""
        if key not in found or found[key] is None:
            found[key] = cls
        elif cls is not None:
            found[key] = most_sensitive([found[key], cls])  # type: ignore[list-item]

    def _mark_literal(self, loc: int, cls: Meets) -> None:
        self._merge_into(self.literals, self.to_char(loc), cls)

    def _mark_param(self, number: int, cls: Meets) -> None:
        self._merge_into(self.params, number, cls)

    def mark(self, node: Any, cls: Meets, strings_only: bool = False, depth: int = 0) -> None:
        """Every constant and parameter in ``node`` meets ``cls`` (subqueries excepted:
        their own comparisons decide)."""
        if depth > _MAX_DEPTH:
            return
        if isinstance(node, list):
            for item in node:
                self.mark(item, cls, strings_only, depth + 1)
            return
        if not isinstance(node, dict):
            return
        for k, v in node.items():
            if k == "A_Const" and isinstance(v, dict):
                if v.get("isnull") or "boolval" in v:
                    continue
                if strings_only and "sval" not in v:
                    continue
                loc = v.get("location")
                if isinstance(loc, int) and loc >= 0:
                    self._mark_literal(loc, cls)
            elif k == "ParamRef" and isinstance(v, dict):
                n = v.get("number")
                if isinstance(n, int) and n > 0:
                    self._mark_param(n, cls)
            elif k in ("SubLink", "SelectStmt"):
                continue
            elif type(v) is dict or type(v) is list:
                self.mark(v, cls, strings_only, depth + 1)

    # -- what meets what ------------------------------------------------------------------

    def classes(self, node: Any, depth: int = 0) -> set[DataClass]:
        """The classes of the columns ``node`` mentions (subqueries included)."""
        out: set[DataClass] = set()
        if depth > _MAX_DEPTH:
            return out
        if isinstance(node, list):
            for item in node:
                out |= self.classes(item, depth + 1)
            return out
        if not isinstance(node, dict):
            return out
        for k, v in node.items():
            if k == "ColumnRef" and isinstance(v, dict):
                names = _strings(v.get("fields"))
                cls = None
                if names:
                    qualifier = names[-2] if len(names) >= 2 else None
                    cls = self.r.column(qualifier, names[-1])
                if cls is None:  # a whole row (``c``, ``c.*``), or a column of a CTE...
                    whole, derived = self._relations_of(list(v.get("fields") or ()))
                    found = {c for c in map(self.r.whole, whole) if c is not None}
                    for relation in derived:
                        found |= self._derived_classes(relation)
                    cls = most_sensitive(found)
                if cls is not None:
                    out.add(cls)
            elif type(v) is dict or type(v) is list:
                out |= self.classes(v, depth + 1)
        return out

    def _derived_classes(self, relation: str) -> set[DataClass]:
        """The classes of what a CTE or subquery in FROM selects, once per statement."""
        memo = self._derived_memo
        found = memo.get(relation)
        if found is None:
            memo[relation] = set()  # a cycle (a recursive CTE) adds nothing more
            found = set()
            for query in self.r.derived.get(relation, ()):
                found |= self.classes(_target_values(query))
            memo[relation] = found
        return found

    def _relations_of(self, fields: list[Any]) -> tuple[list[str], list[str]]:
        """What a ColumnRef may take its value from besides a catalog column: the catalog
        relations it names as a whole row (``c``, ``c.*``, ``*``), and the relations the
        statement makes whose output it may be (``v.n``; an unqualified ``n``: any)."""
        names = [str((f.get("String") or {}).get("sval", "")) if isinstance(f, dict) else "" for f in fields]
        derived = self.r.derived
        if bool(fields) and isinstance(fields[-1], dict) and "A_Star" in fields[-1]:
            if len(names) >= 2:
                return [names[-2]], [names[-2]]
            return list(self.r.names), list(derived)
        if len(names) >= 2:
            return [], [names[-2]]
        if not names:
            return [], []
        whole = [names[0]] if names[0] in self.r.names else []
        return whole, [names[0]] if names[0] in derived else list(derived)

    def walk(self, node: Any, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            return
        if isinstance(node, list):
            for item in node:
                self.walk(item, depth + 1)
            return
        if not isinstance(node, dict):
            return
        for k, v in node.items():
            if type(v) is list:
                self.walk(v, depth + 1)
                continue
            if type(v) is not dict:
                continue
            if k == "A_Const":
                loc = v.get("location")
                value = _const_value(v)
                if isinstance(loc, int) and loc >= 0 and value is not None:
                    self.values[self.to_char(loc)] = value
                continue
            if k == "A_Expr":
                self._compare(v.get("lexpr"), v.get("rexpr"))
            elif k == "SubLink":
                test = v.get("testexpr")
                if test is not None:
                    self._compare(test, _target_values(v.get("subselect")))
            elif k == "FuncCall":
                self._siblings(v.get("args") or [])
            elif k == "CoalesceExpr" or k == "MinMaxExpr":
                self._siblings(v.get("args") or [], strings_only=False)
            elif k == "CaseExpr":
                arg = v.get("arg")
                if arg is not None:  # CASE email WHEN 'x' THEN ...
                    cls = most_sensitive(self.classes(arg))
                    if cls is not None:
                        for when in v.get("args") or []:
                            self.mark((when.get("CaseWhen") or {}).get("expr"), cls)
            elif k == "InsertStmt":
                self._insert(v)
            elif k == "UpdateStmt":
                self._assignments(v.get("relation"), v.get("targetList") or [])
            elif k == "OnConflictClause":
                pass  # handled with its InsertStmt
            elif k == "MergeStmt":
                self._merge(v)
            elif k == "ExecuteStmt":
                self.mark(v.get("params"), None)
            self.walk(v, depth + 1)

    def _compare(self, left: Any, right: Any) -> None:
        lcls = most_sensitive(self.classes(left)) if left is not None else None
        rcls = most_sensitive(self.classes(right)) if right is not None else None
        if lcls is not None and right is not None:
            self.meet(right, lcls)
        if rcls is not None and left is not None:
            self.meet(left, rcls)

    def meet(self, node: Any, cls: DataClass) -> None:
        """Every constant and parameter that reaches ``node`` meets ``cls``: its own, and
        those of the CTEs and subqueries in FROM whose columns it uses."""
        self.mark(node, cls)
        self._mark_derived(node, cls)
        for sub in _sublinks(node):  # = (SELECT 'x'), = (VALUES ('x')), ARRAY(SELECT ...)
            if sub.get("subLinkType") in ("EXPR_SUBLINK", "ARRAY_SUBLINK"):
                for value in _target_values(sub.get("subselect")):
                    self.meet(value, cls)

    def _mark_derived(self, node: Any, cls: DataClass) -> None:
        """The constants that reach ``node`` through the columns of a CTE or a subquery
        in FROM (``WITH v(n) AS (VALUES ('Ada')) ... WHERE c.name = v.n``) meet ``cls``
        (each relation once per class and statement)."""
        for fields in _column_refs(node):
            for relation in self._relations_of(fields)[1]:
                if (relation, cls) in self._derived_marked or relation not in self.r.derived:
                    continue
                self._derived_marked.add((relation, cls))
                for query in self.r.derived[relation]:
                    for value in _target_values(query):
                        self.mark(value, cls)
                        self._mark_derived(value, cls)

    def _siblings(self, args: list[Any], strings_only: bool = True) -> None:
        """In ``f(email, 'ada@...')`` the string meets the column it is handled with."""
        if len(args) < 2:
            return
        per_arg = [most_sensitive(self.classes(a)) for a in args]
        for i, arg in enumerate(args):
            others = [c for j, c in enumerate(per_arg) if j != i and c is not None]
            if others:
                self.mark(arg, most_sensitive(others), strings_only=strings_only)

    def _column_class(self, relation: Any, column: str) -> DataClass | None:
        if not isinstance(relation, dict):
            return None
        rel = (relation.get("schemaname"), str(relation.get("relname", "")))
        known, cls = self.r.in_relation(rel, column)
        if known:
            return cls
        return _class_by_name(rel[1], column)

    def _assignments(self, relation: Any, targets: list[Any]) -> None:
        for t in targets:
            rt = t.get("ResTarget") if isinstance(t, dict) else None
            if not isinstance(rt, dict) or not rt.get("name"):
                continue
            cls = self._column_class(relation, str(rt["name"]))
            if cls is None:
                continue
            val = rt.get("val")
            multi = val.get("MultiAssignRef") if isinstance(val, dict) else None
            if isinstance(multi, dict):  # SET (a, b) = ('x', 'y'): the colno-th value
                source = multi.get("source") or {}
                row = source.get("RowExpr") if isinstance(source, dict) else None
                colno = multi.get("colno")
                if isinstance(row, dict) and isinstance(colno, int):
                    args = row.get("args") or []
                    if 0 < colno <= len(args):
                        self.meet(args[colno - 1], cls)
                continue
            self.meet(val, cls)

    def _insert(self, stmt: dict[str, Any]) -> None:
        relation = stmt.get("relation")
        cols = [
            str((c.get("ResTarget") or {}).get("name", ""))
            for c in stmt.get("cols") or []
            if isinstance(c, dict)
        ]
        if not cols and isinstance(relation, dict):
            known = self.r.relation_columns(
                (relation.get("schemaname"), str(relation.get("relname", "")))
            )
            cols = known or []
        classes = [self._column_class(relation, c) for c in cols]
        if any(c is not None for c in classes):
            self._insert_values(stmt.get("selectStmt"), classes, 0)
        conflict = stmt.get("onConflictClause")
        if isinstance(conflict, dict):
            self._assignments(relation, conflict.get("targetList") or [])

    def _insert_values(self, select: Any, classes: list[DataClass | None], depth: int) -> None:
        if not isinstance(select, dict) or depth > _MAX_DEPTH:
            return
        sel = select.get("SelectStmt")
        if not isinstance(sel, dict):
            return
        if sel.get("op") not in (None, "SETOP_NONE"):
            self._insert_values(sel.get("larg") and {"SelectStmt": sel["larg"]}, classes, depth + 1)
            self._insert_values(sel.get("rarg") and {"SelectStmt": sel["rarg"]}, classes, depth + 1)
            return
        for row in sel.get("valuesLists") or []:
            items = (row.get("List") or {}).get("items") if isinstance(row, dict) else None
            for i, item in enumerate(items or []):
                if i < len(classes) and (cls := classes[i]) is not None:
                    self.meet(item, cls)
        for i, t in enumerate(sel.get("targetList") or []):
            rt = t.get("ResTarget") if isinstance(t, dict) else None
            if isinstance(rt, dict) and i < len(classes) and (cls := classes[i]) is not None:
                self.meet(rt.get("val"), cls)

    def _merge(self, stmt: dict[str, Any]) -> None:
        relation = stmt.get("relation")
        for clause in stmt.get("mergeWhenClauses") or []:
            w = clause.get("MergeWhenClause") if isinstance(clause, dict) else None
            if not isinstance(w, dict):
                continue
            targets = w.get("targetList") or []
            if w.get("commandType") == "CMD_INSERT":
                cols = [str((t.get("ResTarget") or {}).get("name", "")) for t in targets]
                if not cols and isinstance(relation, dict):
                    cols = (
                        self.r.relation_columns(
                            (relation.get("schemaname"), str(relation.get("relname", "")))
                        )
                        or []
                    )
                for i, values in enumerate(w.get("values") or []):
                    if i < len(cols):
                        cls = self._column_class(relation, cols[i])
                        if cls is not None:
                            self.meet(values, cls)
            else:
                self._assignments(relation, targets)


def _const_value(node: dict[str, Any]) -> str | None:
    for kind, inner in (("sval", "sval"), ("ival", "ival"), ("fval", "fval"), ("bsval", "bsval")):
        if kind in node:
            v = node[kind]
            got = v.get(inner) if isinstance(v, dict) else None
            if got is None:  # protobuf JSON leaves out defaults: 0 and ''
                return "0" if kind == "ival" else ""
            return str(got)
    return None


_COLUMN_REF_RE = re.compile(r'"ColumnRef":\{"fields":\[([^\]]*)\]')
_SVAL_RE = re.compile(r'"sval":"((?:[^"\\]|\\.)*)"')
_RELATION_NAME_RE = re.compile(r'"(?:relname|aliasname|ctename)":"((?:[^"\\]|\\.)*)"')
_TARGET_NAME_RE = re.compile(r'"ResTarget":\{"name":"((?:[^"\\]|\\.)*)"')
# Statements whose values meet columns the text does not name (MERGE ... INSERT VALUES)
# or any column at all (EXECUTE); an INSERT without a column list too (_insert_names_all).
_ALWAYS_WALK = ('"MergeStmt"', '"ExecuteStmt"')
_SENSITIVE_NAMES: dict[int, frozenset[str]] = {}


def _sensitive_names(classmap: ClassMap | None) -> frozenset[str]:
    if classmap is None:
        return frozenset()
    key = id(classmap)
    names = _SENSITIVE_NAMES.get(key)
    if names is None:
        if len(_SENSITIVE_NAMES) > 64:
            _SENSITIVE_NAMES.clear()
        names = _SENSITIVE_NAMES[key] = frozenset(c.column for c in classmap.columns)
    return names


def _inserts_name_their_columns(raw: str) -> bool:
    """Whether every INSERT of the parse lists its columns (``INSERT INTO t (a, b) ...``):
    then the columns its values meet are named in the text (``ResTarget`` names, read as
    any other target's); without a list they are the table's, which the text does not name."""
    try:
        tree = orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError):
        return False
    for node in objects(tree):
        insert = node.get("InsertStmt")
        if insert is not None and not (type(insert) is dict and insert.get("cols")):
            return False
    return True


def _may_meet(raw: str, classmap: ClassMap | None) -> bool:
    """Whether any column the parse names may be sensitive (the catalog's classified
    names, or a name that classifies by itself), read from the JSON text: a cheap test
    that lets most statements skip the walk."""
    if any(marker in raw for marker in _ALWAYS_WALK):
        return True
    if '"InsertStmt"' in raw and not _inserts_name_their_columns(raw):
        return True
    known = _sensitive_names(classmap)
    names = set(_TARGET_NAME_RE.findall(raw))
    refs = _COLUMN_REF_RE.findall(raw)
    for fields in refs:
        names.update(_SVAL_RE.findall(fields))
    # a whole row (``to_jsonb(c)``, ``c.*``) holds every column of its relation; the
    # columns of a CTE or a subquery in FROM hold what their queries select
    if any('"A_Star"' in fields for fields in refs) or names & set(_RELATION_NAME_RE.findall(raw)):
        return True
    # "customers": a people-ish table, so that a bare ``name`` counts too
    return any("\\" in n or n in known or _class_by_name("customers", n) is not None for n in names)


def _const_values(raw: str, to_char: Any) -> dict[int, str]:
    """The value of every constant in a parse tree's JSON text, by character position."""
    out: dict[int, str] = {}
    for match in sqlparse.A_CONST_RE.finditer(raw):
        node = orjson.loads(match.group(1))
        loc = node.get("location")
        value = _const_value(node)
        if isinstance(loc, int) and loc >= 0 and value is not None:
            out[to_char(loc)] = value
    return out


def _target_values(select: Any) -> Any:
    """The output expressions of a subquery (``email IN (SELECT 'x' UNION SELECT $1)``)."""
    out: list[Any] = []
    stack = [select]
    while stack:
        node = stack.pop()
        sel = node.get("SelectStmt") if isinstance(node, dict) else None
        if not isinstance(sel, dict):
            continue
        if sel.get("op") not in (None, "SETOP_NONE"):
            stack.extend({"SelectStmt": sel[k]} for k in ("larg", "rarg") if sel.get(k))
            continue
        for t in sel.get("targetList") or []:
            rt = t.get("ResTarget") if isinstance(t, dict) else None
            if isinstance(rt, dict):
                out.append(rt.get("val"))
        for row in sel.get("valuesLists") or []:
            out.append(row)
    return out


def meets_values_only(sql: str, classmap: ClassMap | None = None) -> bool:
    """Whether :func:`find_literal_meets` of ``sql`` (with ``classmap``) finds no constant
    meeting a column: it reads only the constants' values, because no column the
    statement names may be sensitive (the names are all it looks at to decide)."""
    try:
        raw = sqlparse.parse_json(sql)
    except Exception:
        return False
    if '"A_Const"' not in raw and '"ParamRef"' not in raw:
        return True
    if _may_meet(raw, classmap):
        return False
    if len(raw) > _SHORT_TREE:
        try:
            orjson.loads(raw)
        except (orjson.JSONDecodeError, RecursionError):
            return False
    return True


def find_literal_meets(
    sql: str,
    catalog: Catalog | None = None,
    classmap: ClassMap | None = None,
    search_path: Iterable[str] | None = None,
) -> LiteralMeets:
    """The constants and ``$n`` parameters of ``sql`` that meet a sensitive column.

    ``catalog`` and ``classmap`` are a connection's classified catalog; without them every
    column is judged by its name.  Never raises: a text that cannot be parsed gives
    ``LiteralMeets(parsed=False)``.
    """
    try:
        raw = sqlparse.parse_json(sql)
    except Exception:
        return LiteralMeets(parsed=False)
    if '"A_Const"' not in raw and '"ParamRef"' not in raw:
        return _NOTHING  # nothing that could carry a value
    if not _may_meet(raw, classmap):
        # no column it names can be sensitive: only the constants' values are needed,
        # read from the JSON text (no walk of the tree).  A tree too deep to load (its
        # text is long: each level takes several characters) is not read at all.
        if len(raw) > _SHORT_TREE:
            try:
                orjson.loads(raw)
            except (orjson.JSONDecodeError, RecursionError):
                return LiteralMeets(parsed=False)
        return LiteralMeets(values=_const_values(raw, _byte_to_char(sql)))
    try:
        tree = orjson.loads(raw)
    except (orjson.JSONDecodeError, RecursionError):
        return LiteralMeets(parsed=False)  # nested too deep to read: every constant goes
    try:
        to_char = _byte_to_char(sql)
        finder = _Finder(_Resolver(tree, catalog, classmap, search_path), to_char)
        finder.walk(tree.get("stmts") or [])
    except RecursionError:
        return LiteralMeets(parsed=False)
    return LiteralMeets(finder.literals, finder.params, finder.values)


_LITERAL_TOKENS = frozenset({"SCONST", "USCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})


def _unquote(token: str) -> str:
    """The value of a constant token when the parse tree did not give it (approximate:
    it is only hashed and scanned)."""
    t = token
    if t[:1] in "eEbBxXnN" and t[1:2] == "'":
        t = t[1:]
    elif t[:3].upper() == "U&'":
        t = t[2:]
    if t.startswith("'") and t.endswith("'") and len(t) >= 2:
        return t[1:-1].replace("''", "'")
    if t.startswith("$"):
        end = t.find("$", 1)
        if end > 0:
            tag = t[: end + 1]
            if t.endswith(tag) and len(t) >= 2 * len(tag):
                return t[len(tag) : -len(tag)]
    return t


class PostgresLiterals:
    """PostgreSQL's side of the audit's literal redaction
    (``dbsentry.audit.redaction.StatementLiterals``): its lexer, which constants meet
    which columns, and the statement text with the sensitive ones replaced, spelled as
    PostgreSQL string constants (so the stored text still parses)."""

    lex = staticmethod(sqlparse.tokens)

    def meets(
        self, sql: str, catalog: Catalog | None, classmap: ClassMap | None, search_path: Iterable[str] | None
    ) -> LiteralMeets:
        return find_literal_meets(sql, catalog, classmap, search_path)

    def values_only(self, sql: str, classmap: ClassMap | None) -> bool:
        return meets_values_only(sql, classmap)

    def rewrite(self, sql: str, meets: LiteralMeets, redactor: ConstantRedactor) -> tuple[str, bool]:
        """``sql`` with each constant that meets a classified column (or that value
        detection knows) replaced by its token, and detected values in comments and quoted
        identifiers replaced; (text, changed).  Text the scanner rejects is not kept."""
        try:
            tokens = sqlparse.scan(sql)
        except Exception:
            return REDACTED_STATEMENT, True
        out: list[str] = []
        pos = 0
        changed = False
        i = 0
        n = len(tokens)
        while i < n:
            tok = tokens[i]
            name = tok.name
            start = tok.start
            if name in _COMMENT_TOKENS:
                comment = sql[tok.start : tok.end + 1]
                scanned = redactor.text(comment)
                if scanned != comment:
                    out.append(sql[pos:start])
                    out.append(scanned)
                    pos = tok.end + 1
                    changed = True
                i += 1
                continue
            if name == "IDENT" and sql[start] == '"':
                # a quoted identifier is free text too ("ada@example.com" as a name)
                inner = sql[start + 1 : tok.end].replace('""', '"')
                scanned = redactor.text(inner)
                if scanned != inner:
                    out.append(sql[pos:start])
                    out.append('"' + scanned.replace('"', '""') + '"')
                    pos = tok.end + 1
                    changed = True
                i += 1
                continue
            # A negative number is one constant: ``-`` then the number.
            negative = (
                name == "ASCII_45"
                and start in meets.values
                and i + 1 < n
                and tokens[i + 1].name in ("ICONST", "FCONST")
            )
            if name not in _LITERAL_TOKENS and not negative:
                i += 1
                continue
            j = i + 1 if negative else i
            end = tokens[j].end
            # 'abc'<newline>'def' is one constant in SQL: take the continuations with it.
            while (
                tokens[j].name == "SCONST"
                and j + 1 < n
                and tokens[j + 1].name == "SCONST"
                and "\n" in sql[end + 1 : tokens[j + 1].start]
                and not sql[end + 1 : tokens[j + 1].start].strip()
            ):
                j += 1
                end = tokens[j].end
            value = meets.values.get(start)
            if value is None:
                value = "".join(
                    _unquote(sql[t.start : t.end + 1])
                    for t in tokens[i + (1 if negative else 0) : j + 1]
                )
                if negative:
                    value = "-" + value
            replacement: str | None = None
            if start in meets.literals or not meets.parsed:
                cls = meets.literals.get(start)
                if cls is None:
                    cls = detect_constant(value)
                replacement = quote_constant(redactor.token(value, cls))
            else:
                replacement = redactor.constant(value)
            if replacement is not None:
                out.append(sql[pos:start])
                out.append(replacement)
                pos = end + 1
                changed = True
            i = j + 1
        if not changed:
            return sql, False
        out.append(sql[pos:])
        return "".join(out), True


POSTGRES_LITERALS = PostgresLiterals()

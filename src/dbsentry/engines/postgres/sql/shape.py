"""Statements that differ only in their constants: one *shape*, one ruling.

``pgbench -S -M simple`` sends ``SELECT abalance FROM pgbench_accounts WHERE aid = 4711;``
with a new constant every time; parsing and judging each text again costs far more than
forwarding it.  A shape is a statement's text with its constants taken out: two texts of
one shape differ only in the values of their constants, of the same kinds, at the same
places.

When is a ruling (facts, decision, masking plan) a function of the shape alone?  Not in
general: ``DELETE FROM t WHERE 1=1`` and ``... WHERE 2=1`` share a shape, only the first
has an always-true WHERE; ``set_config('role', ...)`` names its setting by a constant;
``ORDER BY 2`` names an output column by one.  So a shape is used only when

1. its text is in a small lexical subset (:func:`split`, :func:`kinds`): ASCII; no
   comments, quoted identifiers, dollar quotes, parameters, backslashes or escape-string
   prefixes (``E'``, ``U&'``, ``B'``, ``X'``, ``N'``); one statement; constants are plain
   numbers and plain ``'...'`` strings; so that PostgreSQL's scanner sees the same tokens
   in every text of the shape, constants of the same kinds (ICONST, FCONST, SCONST) at
   the same places, whatever their values;
2. its parse (:func:`certified`) is a single plain ``SELECT`` (no INTO), or an ``INSERT``,
   ``UPDATE`` or ``DELETE`` without a WITH clause, in which every constant of the text
   became one constant of the tree at its own place (none consumed by the grammar, like
   ``float(10)``'s precision; none merged with the next string; a minus written right
   before a number, ``-5``, is folded into it by the grammar whatever the number is, and
   stays in the shape's text), and no constant stands where a position is read from it
   (``ORDER BY 2``, ``GROUP BY 2``, ``DISTINCT ON (2)``); the grammar then builds the
   same tree for every text of the shape but for the constants' values;
3. its facts show nothing read from a constant: only one of those commands runs (no
   data-modifying CTE), no ``set_config``, no settings, no parameters, no always-true
   WHERE; the facts walk reads constant values nowhere else than in the WHERE of a write
   (``dbsentry.engines.postgres.sql.facts``: constants are leaves of the expression walk;
   the always-true question folds the WHERE, ``dbsentry.engines.postgres.sql.fold``), and
   in a write every constant of every WHERE must be compared with a bare column (``aid =
   5``, ``id IN (1, 2)``, ``id BETWEEN 1 AND 9``), which folds to "unknown" whatever its
   value, so ``id = 1 OR 1 = 2`` keeps its statement to its text; column lineage reads
   constants only at ordinal positions (excluded above);
4. and, as a check of all of the above at the time the shape is first seen, the same
   text with other constants has equal facts.

Everything else is judged by its exact text, as before.  The caller keeps what it knows
per shape (see ``dbsentry.engines.postgres.session.pg``); this module says what a shape is and when one
may be used.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from dbsentry.engines.postgres.sql import parse
from dbsentry.engines.postgres.sql.facts import StatementFacts, analyze
from dbsentry.engines.postgres.sql.nodes import objects

# Constants: a digit run that starts a word (never inside a name: ``t1``), or a plain
# string.  What separates them is the shape's text, checked once per shape (kinds()).
_SPLIT = re.compile(r"(?a)(\b[0-9][0-9.]*|'[^'\\]*(?:''[^'\\]*)*')")  # ASCII: faster, and all it reads
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_INT4_MAX = 2147483647
# What a shape's text may hold around its constants (no quotes, no $, no backslash, no
# braces, no question marks: nothing that starts a token of another kind).
_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ \t\r\n(),.*=<>+-/%^|!~@#&:[];")
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$.&'")
_SPACE = " \t\r\n"

INT = "i"  # ICONST: an integer that fits int4
NUMERIC = "f"  # FCONST: a decimal, or an integer too large for int4
STRING = "s"  # SCONST


def split(sql: str) -> tuple[str, list[str]] | None:
    """``(key, constants)``: the shape's key (the text between the constants) and the
    constants as written; None for text outside the subset at a glance (not ASCII)."""
    if not sql.isascii():
        return None
    parts = _SPLIT.split(sql)
    return "\x00".join(parts[0::2]), parts[1::2]


def kind(constant: str) -> str | None:
    """The scanner's token kind of a constant as :func:`split` cut it; None if it is
    not one plain token (``1.2.3``)."""
    if constant[0] == "'":
        return STRING
    if "." in constant:
        return NUMERIC if _NUMBER.fullmatch(constant) else None
    return INT if len(constant) < 10 or int(constant) <= _INT4_MAX else NUMERIC


def same_kinds(constants: list[str], kinds: tuple[str, ...]) -> bool:
    """Whether ``constants`` (of a text whose key is a shape's) are of the shape's kinds."""
    if len(constants) != len(kinds):
        return False
    for constant, want in zip(constants, kinds, strict=True):
        if want == INT:  # the usual case, without a call
            if constant[0] == "'" or "." in constant or (len(constant) >= 10 and int(constant) > _INT4_MAX):
                return False
        elif kind(constant) != want:
            return False
    return True


def kinds(key: str, constants: list[str]) -> tuple[str, ...] | None:
    """The kinds of the constants when the text of ``key`` is in the lexical subset
    (see the module docstring), else None.  Asked once per shape."""
    parts = key.split("\x00")
    if len(parts) != len(constants) + 1:
        return None
    for part in parts:
        if not _ALLOWED.issuperset(part) or "--" in part or "/*" in part or "*/" in part:
            return None
    body = parts[-1].rstrip(_SPACE)
    if body.endswith(";"):
        body = body[:-1]
    if any(";" in p for p in parts[:-1]) or ";" in body:
        return None  # one statement, at most a semicolon after it
    if any(not p for p in parts[1:-1]):
        return None  # two constants side by side
    out: list[str] = []
    for i, constant in enumerate(constants):
        before, after = parts[i][-1:], parts[i + 1][:1]
        if (before and before in _WORD) or (after and after in _WORD):
            return None  # glued to a name, a prefix (E'...), a dot, another constant
        found = kind(constant)
        if found is None:
            return None
        if found == STRING and i and out[-1] == STRING and not parts[i].strip(_SPACE):
            return None  # 'a' <newline> 'b' is one constant
        out.append(found)
    return tuple(out)


def text_of(key: str, constants: list[str]) -> str:
    """The text of a shape with these constants (the inverse of :func:`split`)."""
    parts = key.split("\x00")
    out = [parts[0]]
    for constant, part in zip(constants, parts[1:], strict=True):
        out += [constant, part]
    return "".join(out)


def value(constant: str) -> str:
    """A constant's value as the parse tree gives it: an int4 as its number (``007`` is
    7), a numeric as written, a string without its quotes."""
    first = constant[0]
    if first == "'":
        return constant[1:-1].replace("''", "'")
    if first != "0" and "." not in constant and len(constant) < 10:
        return constant  # already as the number prints
    if "." not in constant and (len(constant) < 10 or int(constant) <= _INT4_MAX):
        return str(int(constant))
    return constant


def probe(constant: str, kind_: str) -> str:
    """Another constant of the same kind, of another value and another length (to check
    that nothing depends on either)."""
    if kind_ == STRING:
        return "'x'" if len(constant) != 3 else "'xy'"
    if kind_ == INT:
        return "1" if len(constant) != 1 else "12"
    return "1.5" if len(constant) != 3 else "12.5"


_ORDINAL_CLAUSES = ("sortClause", "groupClause", "distinctClause")


def certified(sql: str, key: str, constants: list[str], kinds_: tuple[str, ...]) -> bool:
    """Whether the parse of ``sql`` (of shape ``key``) is one in which the constants are
    only values (rule 2 of the module docstring).  Raises what the parser raises."""
    tree = orjson.loads(parse.parse_json(sql))
    stmts = tree.get("stmts") or []
    if len(stmts) != 1:
        return False
    top = stmts[0].get("stmt") or {}
    select = top.get("SelectStmt")
    if type(select) is dict:
        if select.get("intoClause") is not None:
            return False
    else:
        write = next((top.get(k) for k in _WRITES if k in top), None)
        if type(write) is not dict or write.get("withClause") is not None or not _wheres_compare_columns(write):
            return False
    # The places of the constants in the text (ASCII: characters are bytes).
    wanted: dict[int, str] = {}
    pos = 0
    parts = key.split("\x00")
    for i, constant in enumerate(constants):
        pos += len(parts[i])
        wanted[pos] = kinds_[i]
        pos += len(constant)
    found: dict[int, str] = {}
    for node in objects(tree):
        if "GroupingSet" in node:
            return False  # ROLLUP (1): a position too, wherever it stands in the set
        for clause in _ORDINAL_CLAUSES:
            items = node.get(clause)
            for item in items if type(items) is list else ():
                sort = item.get("SortBy") if type(item) is dict else None
                inner = sort.get("node") if type(sort) is dict else item
                if type(inner) is dict and "A_Const" in inner:
                    return False  # a position (ORDER BY 2): lineage reads its value
        const = node.get("A_Const")
        if type(const) is dict:
            kinds_here = [k for k in ("ival", "fval", "sval", "bsval") if k in const]
            if not kinds_here:
                continue  # NULL, TRUE, FALSE: keywords, part of the shape
            if kinds_here != ["ival"] and kinds_here != ["fval"] and kinds_here != ["sval"]:
                return False
            loc = const.get("location")
            kind_ = {"ival": INT, "fval": NUMERIC, "sval": STRING}[kinds_here[0]]
            if type(loc) is not int:
                return False
            if kind_ != STRING and sql[loc : loc + 1] == "-" and loc + 1 in wanted:
                # ``-5``: the grammar folds the minus (in the shape's text) into the
                # number (its value), whatever the number is
                loc += 1
            if loc in found:
                return False
            found[loc] = kind_
    return found == wanted


_WRITES = ("InsertStmt", "UpdateStmt", "DeleteStmt")
_COMPARE = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
_SHAPED_COMMANDS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})


def _is(node: Any, kind: str) -> bool:
    return type(node) is dict and kind in node


def _compared_with_a_column(expr: dict[str, Any]) -> list[Any]:
    """The constants an ``A_Expr`` compares with a bare column (``id = 5``, ``id IN (1,
    2)``, ``id BETWEEN 1 AND 9``): folding it gives "unknown" whatever their values."""
    kind = expr.get("kind")
    left, right = expr.get("lexpr"), expr.get("rexpr")
    if kind == "AEXPR_OP":
        names = expr.get("name") or []
        op = (names[-1].get("String") or {}).get("sval") if len(names) == 1 and type(names[-1]) is dict else None
        if op not in _COMPARE:
            return []
        if _is(left, "ColumnRef") and _is(right, "A_Const"):
            return [right]
        if _is(right, "ColumnRef") and _is(left, "A_Const"):
            return [left]
        return []
    if kind in ("AEXPR_IN", "AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN") and _is(left, "ColumnRef") and _is(right, "List"):
        body = right.get("List") if type(right) is dict else None
        items = (body.get("items") if type(body) is dict else None) or []
        if items and all(_is(item, "A_Const") for item in items):
            return list(items)
    return []


def _wheres_compare_columns(write: dict[str, Any]) -> bool:
    """Rule 2 for a write: every constant in any WHERE of it is compared with a bare
    column, so the always-true-WHERE question (the only place the analysis reads a
    constant's value: ``dbsentry.engines.postgres.sql.fold``) has the same answer for every
    text of the shape."""
    for node in objects(write):
        where = node.get("whereClause")
        if where is None:
            continue
        allowed: set[int] = set()
        constants: list[int] = []
        for inner in objects(where):
            expr = inner.get("A_Expr")
            if type(expr) is dict:
                allowed.update(id(c) for c in _compared_with_a_column(expr))
            body = inner.get("A_Const")
            if type(body) is dict and any(k in body for k in ("ival", "fval", "sval", "bsval")):
                constants.append(id(inner))
        if not allowed.issuperset(constants):
            return False
    return True


def constant_free(facts: StatementFacts) -> bool:
    """Rule 3 of the module docstring: facts in which nothing was read from a constant."""
    return (
        facts.command in _SHAPED_COMMANDS
        and facts.commands == (facts.command,)
        and "always_true_where" not in facts.flags
        and not facts.settings
        and not facts.where_params
        and facts.execute_params is None
        and facts.copy is None
        and facts.inner is None
        and facts.prepared_name is None
        and not any(fn.rpartition(".")[2] == "set_config" for fn in facts.functions)
    )


def shape_of(sql: str, facts: tuple[StatementFacts, ...]) -> tuple[str, tuple[str, ...]] | None:
    """``(key, kinds)`` when the ruling of ``sql`` (whose facts are ``facts``) may be
    used for every text of its shape (all four rules of the module docstring); else
    None.  Parses ``sql`` (kept by ``sql.parse``) and a probe text of the same shape."""
    got = split(sql)
    if got is None or len(facts) != 1 or not constant_free(facts[0]):
        return None
    key, constants = got
    kinds_ = kinds(key, constants)
    if kinds_ is None:
        return None
    try:
        if not certified(sql, key, constants, kinds_):
            return None
        other = text_of(key, [probe(c, k) for c, k in zip(constants, kinds_, strict=True)])
        if not constants:
            return key, kinds_
        probed = tuple(analyze(other))
        if not certified(other, key, split(other)[1], kinds_):  # type: ignore[index]
            return None
        if probed != facts or probed[0].fingerprint != facts[0].fingerprint:
            return None
    except Exception:  # the parser or the analysis refused it: judged by its text
        return None
    return key, kinds_

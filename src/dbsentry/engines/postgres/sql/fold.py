"""Constant folding over pglast's JSON parse tree: is a WHERE clause always true?

:func:`truth` answers True/False when a boolean expression does not depend on the row,
``None`` for NULL and :data:`UNKNOWN` otherwise; :func:`const` gives the value of a
constant expression.  Both take an optional ``params`` sequence: the values bound to
``$1``, ``$2``... (see :func:`bind`), so that a WHERE clause can be folded again once a
client's parameters are known.

Types follow PostgreSQL closely enough to be sound for "always true":

- a quoted literal (``'1'``) has no type of its own (:class:`Untyped`): compared with a
  number it is read as a number, with a boolean as a boolean, in a boolean context
  (``WHERE 't'``) as a boolean, and with another literal as text;
- a bound parameter value (:class:`Param`) is a literal whose type we do not know at
  all (the client may have declared it ``int4``): where reading it as text, as a number
  or as a boolean would give different answers (``'1' = '01'``), the answer is unknown;
- casts (``$1::int``, ``'t'::boolean``, ``x::text``) fold to the cast's type.

Anything else is unknown, and unknown never counts as true.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, Final

__all__ = [
    "UNKNOWN",
    "UNKNOWN_PARAM",
    "Param",
    "Untyped",
    "as_bool",
    "bind",
    "const",
    "parse_bool",
    "truth",
]


class _Unknown:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


class _UnknownParam:
    """The value of a parameter that is not known (not bound yet, or not a constant)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN_PARAM"

    def __reduce__(self) -> str:
        return "UNKNOWN_PARAM"


#: The result of folding something that is not a constant.
UNKNOWN: Final = _Unknown()
#: A parameter value that is not known; use it in the ``params`` of
#: :func:`dbsentry.engines.postgres.sql.facts.where_true_with`.
UNKNOWN_PARAM: Final = _UnknownParam()


class Untyped(str):
    """A quoted literal: PostgreSQL gives it the type its context asks for."""

    __slots__ = ()


class Param(Untyped):
    """A bound parameter's text value: its type is not known here."""

    __slots__ = ()


Params = Sequence[Any] | None

_INT_TYPES = frozenset({"int2", "int4", "int8", "int", "integer", "smallint", "bigint"})
_FLOAT_TYPES = frozenset({"numeric", "decimal", "float4", "float8", "real", "double precision"})
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name", "char", "character varying"})
_BOOL_TYPES = frozenset({"bool", "boolean"})


def parse_bool(text: str) -> bool | None:
    """PostgreSQL's ``boolin``: surrounding white space ignored, case-insensitive,
    unique prefixes of true/false/yes/no, ``on``/``off`` (at least two letters), 1/0.
    ``None`` when the text is not a boolean."""
    s = text.strip().lower()
    if not s:
        return None
    if "true".startswith(s) or "yes".startswith(s) or s == "1":
        return True
    if "false".startswith(s) or "no".startswith(s) or s == "0":
        return False
    if len(s) >= 2 and "on".startswith(s):
        return True
    if len(s) >= 2 and "off".startswith(s):
        return False
    return None


def _number(text: str) -> int | float | None:
    s = text.strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        value = float(s)
    except ValueError:
        return None
    return value if math.isfinite(value) else None  # NaN and infinities: not folded


def strings(items: Any) -> list[str]:
    """The ``sval`` of each String node of a list (names, operators)."""
    out = []
    for it in items or ():
        s = it.get("String") if type(it) is dict else None
        if s is not None:
            out.append(s.get("sval", ""))
    return out


def unwrap(node: Any) -> tuple[str, Any]:
    """``{"SelectStmt": {...}}`` -> ``("SelectStmt", {...})``."""
    if type(node) is dict and len(node) == 1:
        ((k, v),) = node.items()
        return k, v
    return "", node


def bind(values: Sequence[object]) -> list[Any]:
    """Parameter values as the folding sees them: ``str`` -> :class:`Param`, ``None`` ->
    NULL, anything else (:data:`UNKNOWN_PARAM` included) -> unknown."""
    out: list[Any] = []
    for v in values:
        if v is None:
            out.append(None)
        elif isinstance(v, str):
            out.append(Param(v))
        else:
            out.append(UNKNOWN)
    return out


def _cast(value: Any, tname: str) -> Any:
    if value is UNKNOWN or value is None:
        return value
    if tname in _BOOL_TYPES:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            b = parse_bool(value)
            return UNKNOWN if b is None else b
        return UNKNOWN
    if tname in _INT_TYPES:
        if isinstance(value, bool):
            return UNKNOWN
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if not math.isfinite(value) or abs(value) > _INT_LIMIT:
                return UNKNOWN
            # numeric -> integer rounds half away from zero
            return int(math.copysign(math.floor(abs(value) + 0.5), value))
        try:
            return int(str(value).strip())
        except ValueError:
            return UNKNOWN
    if tname in _FLOAT_TYPES:
        if isinstance(value, bool):
            return UNKNOWN
        if isinstance(value, (int, float)):
            return value
        n = _number(str(value))
        return UNKNOWN if n is None else n
    if tname in _TEXT_TYPES:
        # a typed text value: no longer re-read as a number or boolean
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, int)):
            return str(value)
        return UNKNOWN
    return UNKNOWN


def const(node: Any, params: Params = None) -> Any:
    """The value of a constant expression, or :data:`UNKNOWN`.  NULL is ``None``."""
    kind, body = unwrap(node)
    if kind == "A_Const":
        if body.get("isnull"):
            return None
        if "ival" in body:
            return int(body["ival"].get("ival", 0))
        if "fval" in body:
            n = _number(str(body["fval"].get("fval", "0")))
            return UNKNOWN if n is None else n
        if "sval" in body:
            return Untyped(body["sval"].get("sval", ""))
        if "boolval" in body:
            return bool(body["boolval"].get("boolval", False))
        return UNKNOWN
    if kind == "ParamRef":
        if params is None:
            return UNKNOWN
        number = body.get("number", 0)
        if type(number) is int and 1 <= number <= len(params):
            return params[number - 1]
        return UNKNOWN
    if kind == "TypeCast":
        value = const(body.get("arg"), params)
        names = strings((body.get("typeName") or {}).get("names"))
        tname = names[-1] if names else ""
        if (body.get("typeName") or {}).get("arrayBounds"):
            return UNKNOWN
        return _cast(value, tname)
    if kind in ("BoolExpr", "A_Expr", "NullTest", "BooleanTest", "SubLink"):
        return truth(node, params)
    if kind == "CoalesceExpr":
        for arg in body.get("args", ()):
            value = const(arg, params)
            if value is UNKNOWN or value is not None:
                return value
        return None
    return UNKNOWN


def as_bool(value: Any) -> Any:
    """A value in a boolean context (WHERE, AND/OR/NOT): an untyped literal or parameter
    is read as a boolean."""
    if value is None or value is UNKNOWN or isinstance(value, bool):
        return value
    if isinstance(value, Untyped):
        b = parse_bool(value)
        return UNKNOWN if b is None else b
    return UNKNOWN


def _strip_locations(node: Any) -> Any:
    if type(node) is dict:
        return {k: _strip_locations(v) for k, v in node.items() if k != "location"}
    if type(node) is list:
        return [_strip_locations(v) for v in node]
    return node


def _same_column(a: Any, b: Any) -> bool:
    ka, _ = unwrap(a)
    kb, _ = unwrap(b)
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


def _resolve(untyped: str, typed: Any) -> Any:
    """An untyped value read as the type of ``typed``; None when it does not read."""
    if isinstance(typed, bool):
        return parse_bool(untyped)
    if isinstance(typed, (int, float)):
        return _number(untyped)
    if isinstance(typed, str):
        return str(untyped)
    return None


def _typed_pair(a: Any, b: Any) -> tuple[Any, Any] | None:
    """Resolve an untyped side against a typed one, the way PostgreSQL types a literal
    from the other operand.  None when they cannot be compared."""
    ua, ub = isinstance(a, Untyped), isinstance(b, Untyped)
    if ua and not ub:
        ra = _resolve(a, b)
        return None if ra is None else (ra, b)
    if ub and not ua:
        rb = _resolve(b, a)
        return None if rb is None else (a, rb)
    if isinstance(a, bool) != isinstance(b, bool):
        return None
    numeric = (int, float)
    if (isinstance(a, numeric) and isinstance(b, numeric)) or (
        isinstance(a, str) and isinstance(b, str)
    ):
        return a, b
    return None


def _compare(op: str, a: Any, b: Any) -> Any:
    """``a op b`` for constants; NULL gives None, incomparable values UNKNOWN."""
    if a is None or b is None:
        return None
    if a is UNKNOWN or b is UNKNOWN:
        return UNKNOWN
    fn = _COMPARISONS.get(op)
    if fn is None:
        return UNKNOWN
    if isinstance(a, Untyped) and isinstance(b, Untyped):
        as_text = fn(str(a), str(b))
        if not (isinstance(a, Param) or isinstance(b, Param)):
            return as_text  # two literals: PostgreSQL compares them as text
        # a parameter's type is unknown: every reading must agree
        answers = {as_text}
        na, nb = _number(a), _number(b)
        if na is not None and nb is not None:
            answers.add(fn(na, nb))
        ba, bb = parse_bool(a), parse_bool(b)
        if ba is not None and bb is not None:
            answers.add(fn(ba, bb))
        return as_text if len(answers) == 1 else UNKNOWN
    pair = _typed_pair(a, b)
    if pair is None:
        return UNKNOWN
    return fn(*pair)


_LIKE_LIMIT = 1_000_000  # characters x pattern elements; beyond it the answer is unknown


def _like(value: str, pattern: str) -> bool | None:
    """SQL LIKE (``%``, ``_``, backslash escapes) in O(len(value) * len(pattern)), without
    regular expressions (a pattern must not be able to make the check slow).  None when
    the pattern is malformed or the inputs are too long to check."""
    tokens: list[str | None] = []  # None: %, "": _, else a literal character
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 >= len(pattern):
                return None  # PostgreSQL: "LIKE pattern must not end with escape character"
            tokens.append(pattern[i + 1])
            i += 2
            continue
        if c == "%":
            if not tokens or tokens[-1] is not None:
                tokens.append(None)
        elif c == "_":
            tokens.append("")
        else:
            tokens.append(c)
        i += 1
    if len(value) * max(len(tokens), 1) > _LIKE_LIMIT:
        return None
    # greedy matching with one backtrack point (the last %): linear per attempt
    v = t = 0
    star_t, star_v = -1, 0
    while v < len(value):
        if t < len(tokens) and tokens[t] is not None and (tokens[t] == "" or tokens[t] == value[v]):
            v += 1
            t += 1
        elif t < len(tokens) and tokens[t] is None:
            star_t, star_v = t, v
            t += 1
        elif star_t >= 0:
            star_v += 1
            v = star_v
            t = star_t + 1
        else:
            return False
    while t < len(tokens) and tokens[t] is None:
        t += 1
    return t == len(tokens)


def _select_is_constant(sel: Any, params: Params) -> Any:
    """``(SELECT true)``: a FROM-less SELECT of one constant, else unknown."""
    kind, body = unwrap(sel)
    if kind != "SelectStmt" or body.get("fromClause") or body.get("whereClause"):
        return UNKNOWN
    targets: list[Any] = body.get("targetList") or []
    if len(targets) != 1 or "limitCount" in body or "havingClause" in body:
        return UNKNOWN
    if "groupClause" in body or "larg" in body or "valuesLists" in body:
        return UNKNOWN
    return const((targets[0].get("ResTarget") or {}).get("val"), params)


_INT_LIMIT = 1 << 128  # larger integers are not folded (nor multiplied without end)


def _arith(op: str, a: Any, b: Any) -> Any:
    if isinstance(a, Untyped) and type(b) in (int, float):
        a = _number(a)
    if isinstance(b, Untyped) and type(a) in (int, float):
        b = _number(b)
    if type(a) in (int, float) and type(b) in (int, float):
        if abs(a) > _INT_LIMIT or abs(b) > _INT_LIMIT:
            return UNKNOWN
        result = a + b if op == "+" else a - b if op == "-" else a * b
        if isinstance(result, float) and not math.isfinite(result):
            return UNKNOWN
        return result
    return UNKNOWN


def truth(node: Any, params: Params = None) -> Any:
    """True/False when ``node`` is a boolean expression that does not depend on the row,
    ``None`` for NULL, :data:`UNKNOWN` otherwise.  ``col = col`` counts as true."""
    kind, body = unwrap(node)
    if kind == "BoolExpr":
        op = body.get("boolop")
        args = body.get("args", ())
        if op == "NOT_EXPR":
            v = as_bool(truth(args[0], params)) if args else UNKNOWN
            return (not v) if isinstance(v, bool) else v
        if op == "AND_EXPR":
            all_true = True
            for a in args:
                v = as_bool(truth(a, params))
                if v is False:
                    return False
                all_true = all_true and v is True
            return True if all_true and args else UNKNOWN
        if op == "OR_EXPR":
            all_false = True
            for a in args:
                v = as_bool(truth(a, params))
                if v is True:
                    return True
                all_false = all_false and v is False
            return False if all_false and args else UNKNOWN
        return UNKNOWN
    if kind == "A_Expr":
        akind = body.get("kind")
        names = strings(body.get("name"))
        op = names[-1] if names else ""
        lexpr, rexpr = body.get("lexpr"), body.get("rexpr")
        if akind == "AEXPR_OP":
            if lexpr is None:  # prefix operator, e.g. unary minus
                value = const(rexpr, params)
                if op == "-" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    return -value
                return UNKNOWN
            if op in ("=", "<=", ">=") and _same_column(lexpr, rexpr):
                return True
            a, b = const(lexpr, params), const(rexpr, params)
            if a is UNKNOWN or b is UNKNOWN:
                return UNKNOWN
            if op in ("+", "-", "*"):
                return _arith(op, a, b)
            if op == "||" and isinstance(a, str) and isinstance(b, str):
                return str(a) + str(b)  # text
            return _compare(op, a, b)
        if akind in ("AEXPR_NOT_DISTINCT", "AEXPR_DISTINCT"):
            if _same_column(lexpr, rexpr):
                return akind == "AEXPR_NOT_DISTINCT"
            a, b = const(lexpr, params), const(rexpr, params)
            if a is UNKNOWN or b is UNKNOWN:
                return UNKNOWN
            if a is None or b is None:
                same: Any = a is None and b is None
            else:
                same = _compare("=", a, b)
                if not isinstance(same, bool):
                    return UNKNOWN
            return same if akind == "AEXPR_NOT_DISTINCT" else not same
        if akind in ("AEXPR_IN", "AEXPR_OP_ANY"):
            _, rbody = unwrap(rexpr)
            items = (rbody.get("items") or rbody.get("elements")) if type(rbody) is dict else None
            if items is None:
                return UNKNOWN
            positive = op == "="
            if not positive and op not in ("<>", "!="):
                return UNKNOWN
            if positive and any(_same_column(lexpr, it) for it in items):
                return True
            a = const(lexpr, params)
            values = [const(it, params) for it in items]
            if a is UNKNOWN or any(v is UNKNOWN for v in values):
                return UNKNOWN
            results = [_compare("=", a, v) for v in values]
            if any(r is UNKNOWN for r in results):
                return UNKNOWN
            if positive:
                return True if any(r is True for r in results) else (False if all(r is False for r in results) else None)
            return False if any(r is True for r in results) else (True if all(r is False for r in results) else None)
        if akind in ("AEXPR_BETWEEN", "AEXPR_NOT_BETWEEN"):
            _, rbody = unwrap(rexpr)
            items = rbody.get("items", []) if type(rbody) is dict else []
            if len(items) != 2:
                return UNKNOWN
            a, lo, hi = const(lexpr, params), const(items[0], params), const(items[1], params)
            ge, le = _compare(">=", a, lo), _compare("<=", a, hi)
            if not isinstance(ge, bool) or not isinstance(le, bool):
                return UNKNOWN
            return (ge and le) if akind == "AEXPR_BETWEEN" else not (ge and le)
        if akind in ("AEXPR_LIKE", "AEXPR_ILIKE"):
            a, b = const(lexpr, params), const(rexpr, params)
            if not isinstance(a, str) or not isinstance(b, str):
                return UNKNOWN
            if akind == "AEXPR_ILIKE":
                a, b = a.lower(), b.lower()
            hit = _like(a, b)
            if hit is None:
                return UNKNOWN
            return hit if op in ("~~", "~~*") else not hit
        return UNKNOWN
    if kind == "NullTest":
        value = const(body.get("arg"), params)
        if value is UNKNOWN:
            return UNKNOWN
        is_null = value is None
        return is_null if body.get("nulltesttype") == "IS_NULL" else not is_null
    if kind == "BooleanTest":
        value = as_bool(const(body.get("arg"), params))
        if value is UNKNOWN:
            return UNKNOWN
        return {
            "IS_TRUE": value is True,
            "IS_NOT_TRUE": value is not True,
            "IS_FALSE": value is False,
            "IS_NOT_FALSE": value is not False,
            "IS_UNKNOWN": value is None,
            "IS_NOT_UNKNOWN": value is not None,
        }.get(body.get("booltesttype") or "", UNKNOWN)
    if kind == "SubLink":
        link = body.get("subLinkType")
        if link == "EXISTS_SUBLINK":
            _, sel = unwrap(body.get("subselect"))
            if type(sel) is not dict or sel.get("fromClause") or "limitCount" in sel:
                return UNKNOWN
            if "havingClause" in sel or "larg" in sel or "valuesLists" in sel or "groupClause" in sel:
                return UNKNOWN
            where = sel.get("whereClause")
            if where is None:
                return True
            return True if as_bool(truth(where, params)) is True else UNKNOWN
        if link == "EXPR_SUBLINK":
            return _select_is_constant(body.get("subselect"), params)
        return UNKNOWN
    if kind in ("A_Const", "TypeCast", "CoalesceExpr", "ParamRef"):
        return const(node, params)
    return UNKNOWN

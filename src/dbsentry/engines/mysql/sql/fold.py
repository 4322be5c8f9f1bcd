"""Constant folding over sqlglot's MySQL tree, with MySQL's own semantics: is an
UPDATE/DELETE WHERE always true?

The PostgreSQL side (``engines/postgres/sql/fold.py``) folds pglast's JSON trees with
PostgreSQL's types; MySQL converts far more freely, so this is its own module with the
same contract: :func:`always_true` says True when the condition holds for every row, and
anything that depends on the row is unknown, which never counts as true.

MySQL's conversions, as the server does them:

- a string in a numeric or boolean context is the number its longest numeric prefix
  spells (``'1abc'`` is 1, ``'abc'`` is 0: ``WHERE 'abc' = 0`` is true);
- a number compared with a string compares as numbers; two strings compare by the
  collation, which the analysis does not know: both a binary and a case- and
  accent-insensitive, trailing-space-insensitive reading are tried;
- a hex or bit literal (``x'41'``, ``0x41``, ``b'1'``) is a binary string or a number
  depending on its context: both readings are tried;
- ``||`` and ``&&`` are OR and AND, ``<=>`` is NULL-safe equality, TRUE is 1;
- division has four more decimal digits than its dividend (``1/3 = 0.3333`` is true).

The condition is folded once per reading ("world"); it is always true if it is in any
world, so an unknown collation or literal type can only make the answer stricter.
A column compared with itself (``id = id``, ``id <=> id``, ``id >= id``, ``id IN (id)``,
``id LIKE '%'``) counts as true, as on the PostgreSQL side.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any, Final

from sqlglot import exp

__all__ = ["UNKNOWN", "always_true", "mysql_number"]


class _Unknown:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()


class _Bin(str):
    """A hex or bit literal read as a (binary) string."""

    __slots__ = ()


_NUM_PREFIX = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")
_MAX_DIGITS = 80


def mysql_number(text: str) -> Decimal:
    """A string in a numeric context: its longest numeric prefix, 0 when none."""
    m = _NUM_PREFIX.match(text)
    if not m:
        return Decimal(0)
    try:
        return Decimal(m.group(1))
    except InvalidOperation:
        return Decimal(0)


class _World:
    __slots__ = ("ci", "hex_number", "params")

    def __init__(self, ci: bool, hex_number: bool, params: Sequence[object] | None) -> None:
        self.ci = ci
        self.hex_number = hex_number
        self.params = params


def _num(v: Any) -> Any:
    if v is None or v is UNKNOWN:
        return v
    if isinstance(v, Decimal):
        return v
    if isinstance(v, str):
        return mysql_number(v)
    return UNKNOWN


def _truthy(v: Any) -> Any:
    n = _num(v)
    if n is None or n is UNKNOWN:
        return n
    return n != 0


def _bool(b: Any) -> Any:
    if b is None or b is UNKNOWN:
        return b
    return Decimal(1) if b else Decimal(0)


def _fold_text(s: str, ci: bool) -> str:
    s = s.rstrip(" ")
    if not ci:
        return s
    s = unicodedata.normalize("NFKD", s)
    return "".join(c for c in s if not unicodedata.combining(c)).casefold()


def _same_column(a: exp.Expression, b: exp.Expression) -> bool:
    return isinstance(a, exp.Column) and isinstance(b, exp.Column) and a == b


def _cmp(op: type[exp.Expression], a: Any, b: Any, w: _World) -> Any:
    if op is exp.NullSafeEQ:
        if a is UNKNOWN or b is UNKNOWN:
            return UNKNOWN
        if a is None or b is None:
            return a is None and b is None
        op = exp.EQ
    if a is UNKNOWN or b is UNKNOWN:
        return UNKNOWN
    if a is None or b is None:
        return None
    x: Any
    y: Any
    if isinstance(a, str) and isinstance(b, str):
        x, y = _fold_text(a, w.ci), _fold_text(b, w.ci)
    else:
        x, y = _num(a), _num(b)
    if op is exp.EQ:
        return x == y
    if op is exp.NEQ:
        return x != y
    if op is exp.GT:
        return x > y
    if op is exp.GTE:
        return x >= y
    if op is exp.LT:
        return x < y
    if op is exp.LTE:
        return x <= y
    return UNKNOWN


_CMP = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ)
_SELF_TRUE = (exp.EQ, exp.GTE, exp.LTE, exp.NullSafeEQ)


def _like(value: str, pattern: str, escape: str, ci: bool) -> bool:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == escape and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    flags = re.DOTALL | (re.IGNORECASE if ci else 0)
    return re.fullmatch("".join(out), value, flags) is not None or (
        ci and re.fullmatch("".join(out), _fold_text(value, True), flags) is not None
    )


def _arith(node: exp.Expression, a: Any, b: Any) -> Any:
    a, b = _num(a), _num(b)
    if a is UNKNOWN or b is UNKNOWN:
        return UNKNOWN
    if a is None or b is None:
        return None
    with localcontext() as ctx:
        ctx.prec = _MAX_DIGITS
        if isinstance(node, exp.Add):
            return a + b
        if isinstance(node, exp.Sub):
            return a - b
        if isinstance(node, exp.Mul):
            return a * b
        if isinstance(node, exp.Div | exp.IntDiv | exp.Mod):
            if b == 0:
                return None
            if isinstance(node, exp.IntDiv):
                return Decimal(int(a / b))
            if isinstance(node, exp.Mod):
                return a % b
            exponent = a.as_tuple().exponent
            scale = -exponent if isinstance(exponent, int) and exponent < 0 else 0
            return (a / b).quantize(Decimal(1).scaleb(-(scale + 4)), rounding=ROUND_HALF_UP)
    return UNKNOWN


def _value(node: exp.Expression, w: _World, depth: int = 0) -> Any:
    if depth > 200:
        raise RecursionError("condition nested too deeply")
    d = depth + 1
    if isinstance(node, exp.Paren):
        return _value(node.this, w, d)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return str(node.this)
        try:
            return Decimal(str(node.this))
        except InvalidOperation:
            return UNKNOWN
    if isinstance(node, exp.Boolean):
        return Decimal(1) if node.this else Decimal(0)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.National):
        return str(node.this)
    if isinstance(node, exp.Introducer):
        return _value(node.expression, w, d)
    if isinstance(node, exp.HexString | exp.BitString):
        try:
            number = int(str(node.this), 16 if isinstance(node, exp.HexString) else 2)
        except ValueError:
            return UNKNOWN
        if w.hex_number:
            return Decimal(number)
        raw = number.to_bytes((number.bit_length() + 7) // 8 or 1, "big")
        return _Bin(raw.decode("latin-1"))
    if isinstance(node, exp.Placeholder):
        return UNKNOWN
    if isinstance(node, _CMP):
        a, b = node.this, node.expression
        if isinstance(node, _SELF_TRUE) and _same_column(a, b):
            return Decimal(1)
        if isinstance(node, exp.NEQ | exp.GT | exp.LT) and _same_column(a, b):
            return Decimal(0)
        return _bool(_cmp(type(node), _value(a, w, d), _value(b, w, d), w))
    if isinstance(node, exp.And):
        a, b = _truthy(_value(node.this, w, d)), _truthy(_value(node.expression, w, d))
        if a is False or b is False:
            return Decimal(0)
        if a is UNKNOWN or b is UNKNOWN:
            return UNKNOWN
        if a is None or b is None:
            return None
        return Decimal(1)
    if isinstance(node, exp.Or):
        a, b = _truthy(_value(node.this, w, d)), _truthy(_value(node.expression, w, d))
        if a is True or b is True:
            return Decimal(1)
        if a is UNKNOWN or b is UNKNOWN:
            return UNKNOWN
        if a is None or b is None:
            return None
        return Decimal(0)
    if isinstance(node, exp.Xor):
        a, b = _truthy(_value(node.this, w, d)), _truthy(_value(node.expression, w, d))
        if a is UNKNOWN or b is UNKNOWN:
            return UNKNOWN
        if a is None or b is None:
            return None
        return _bool(a != b)
    if isinstance(node, exp.Not):
        v = _truthy(_value(node.this, w, d))
        return v if v is None or v is UNKNOWN else _bool(not v)
    if isinstance(node, exp.Is):
        v = _value(node.this, w, d)
        target = node.expression
        if isinstance(target, exp.Null):
            if v is UNKNOWN:
                return UNKNOWN
            return _bool(v is None)
        if isinstance(target, exp.Boolean):
            t = _truthy(v)
            if t is UNKNOWN:
                return UNKNOWN
            return _bool(t is bool(target.this))
        return UNKNOWN
    if isinstance(node, exp.Neg):
        v = _num(_value(node.this, w, d))
        return v if v is None or v is UNKNOWN else -v
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div | exp.IntDiv | exp.Mod):
        return _arith(node, _value(node.this, w, d), _value(node.expression, w, d))
    if isinstance(node, exp.BitwiseNot):
        v = _num(_value(node.this, w, d))
        if v is None or v is UNKNOWN:
            return v
        return Decimal(~int(v) & 0xFFFFFFFFFFFFFFFF)
    if isinstance(node, exp.In):
        if node.args.get("query") is not None or node.args.get("unnest") is not None:
            return UNKNOWN
        left = node.this
        items = node.expressions
        if any(_same_column(left, i) for i in items):
            return Decimal(1)
        lv = _value(left, w, d)
        results = [_cmp(exp.EQ, lv, _value(i, w, d), w) for i in items]
        if any(r is True for r in results):
            return Decimal(1)
        if any(r is UNKNOWN for r in results):
            return UNKNOWN
        if any(r is None for r in results):
            return None
        return Decimal(0)
    if isinstance(node, exp.Between):
        v = _value(node.this, w, d)
        lo = _cmp(exp.GTE, v, _value(node.args["low"], w, d), w)
        hi = _cmp(exp.LTE, v, _value(node.args["high"], w, d), w)
        if lo is False or hi is False:
            return Decimal(0)
        if lo is UNKNOWN or hi is UNKNOWN:
            return UNKNOWN
        if lo is None or hi is None:
            return None
        return Decimal(1)
    if isinstance(node, exp.Like | exp.Escape):
        return _like_value(node, w, d)
    if isinstance(node, exp.If):
        c = _truthy(_value(node.this, w, d))
        if c is UNKNOWN:
            return UNKNOWN
        branch = node.args.get("true") if c is True else node.args.get("false")
        return None if branch is None else _value(branch, w, d)
    if isinstance(node, exp.Case):
        if node.this is not None:
            return UNKNOWN
        for branch in node.args.get("ifs") or []:
            c = _truthy(_value(branch.this, w, d))
            if c is UNKNOWN:
                return UNKNOWN
            if c is True:
                return _value(branch.args["true"], w, d)
        default = node.args.get("default")
        return None if default is None else _value(default, w, d)
    if isinstance(node, exp.Coalesce):
        for item in [node.this, *node.expressions]:
            v = _value(item, w, d)
            if v is UNKNOWN or v is not None:
                return v
        return None
    if isinstance(node, exp.Nullif):
        a, b = _value(node.this, w, d), _value(node.expression, w, d)
        eq = _cmp(exp.EQ, a, b, w)
        if eq is UNKNOWN:
            return UNKNOWN
        return None if eq is True else a
    if isinstance(node, exp.Exists):
        q = node.this
        if isinstance(q, exp.Select) and _constant_select(q):
            return Decimal(1)
        return UNKNOWN
    if isinstance(node, exp.Subquery):
        q = node.this
        if isinstance(q, exp.Select) and _constant_select(q) and len(q.expressions) == 1:
            return _value(q.expressions[0], w, d)
        return UNKNOWN
    if isinstance(node, exp.Cast):
        return _cast(_value(node.this, w, d), node.to)
    return UNKNOWN


def _like_value(node: exp.Expression, w: _World, d: int) -> Any:
    escape = "\\"
    like = node
    if isinstance(node, exp.Escape):
        like = node.this
        e = _value(node.expression, w, d)
        if not isinstance(e, str) or len(e) != 1:
            return UNKNOWN
        escape = e
    if not isinstance(like, exp.Like):
        return UNKNOWN
    pattern = _value(like.expression, w, d)
    negate = bool(like.args.get("negate"))
    if (
        isinstance(like.this, exp.Column)
        and isinstance(pattern, str)
        and pattern
        and set(pattern) == {"%"}
    ):
        return Decimal(0) if negate else Decimal(1)
    value = _value(like.this, w, d)
    if value is UNKNOWN or pattern is UNKNOWN:
        return UNKNOWN
    if value is None or pattern is None:
        return None
    text = value if isinstance(value, str) else _number_text(value)
    pat = pattern if isinstance(pattern, str) else _number_text(pattern)
    matched = _like(text, pat, escape, w.ci)
    return _bool(matched != negate)


def _number_text(v: Any) -> str:
    return format(v, "f") if isinstance(v, Decimal) else str(v)


def _constant_select(q: exp.Select) -> bool:
    """A SELECT without FROM (or FROM DUAL), WHERE, GROUP BY, HAVING or LIMIT: one row."""
    frm = q.args.get("from_") or q.args.get("from")
    if frm is not None:
        t = frm.this
        if not (isinstance(t, exp.Table) and t.name.lower() == "dual" and not t.args.get("db")):
            return False
    if q.args.get("joins"):
        return False
    return not any(
        q.args.get(k) for k in ("where", "group", "having", "limit", "offset", "qualify")
    )


def _cast(v: Any, to: Any) -> Any:
    if v is UNKNOWN or v is None or not isinstance(to, exp.DataType):
        return v if v is None else UNKNOWN
    t = to.this
    T = exp.DataType.Type
    if t in (T.CHAR, T.VARCHAR, T.TEXT, T.NCHAR, T.NVARCHAR, T.BINARY, T.VARBINARY):
        return v if isinstance(v, str) else _number_text(v)
    if t in (T.BIGINT, T.INT, T.UBIGINT, T.UINT, T.SMALLINT, T.TINYINT):
        n = _num(v)
        return n if n is UNKNOWN else Decimal(int(n))
    if t in (T.DECIMAL, T.DOUBLE, T.FLOAT):
        return _num(v)
    return UNKNOWN


_WORLDS = ((False, False), (True, False), (False, True), (True, True))


def always_true(cond: exp.Expression) -> bool:
    """Whether ``cond`` is true for every row, in any reading of its collation and literal
    types.  Raises RecursionError for conditions nested too deeply."""
    for ci, hex_number in _WORLDS:
        if _truthy(_value(cond, _World(ci, hex_number, None))) is True:
            return True
    return False

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
  depending on its context (MySQL and MariaDB differ): it is never folded, it "may be
  true" (below);
- a string in a numeric context, and an approximate literal (``1e0``), is a DOUBLE:
  compared as doubles, never used in folded arithmetic;
- ``||`` and ``&&`` are OR and AND, ``<=>`` is NULL-safe equality, TRUE is 1;
- division has four more decimal digits than its dividend (``1/3 = 0.3333`` is true).

The condition is folded once per collation reading; it is always true if it is in any,
so an unknown collation can only make the answer stricter.  **A part of the condition
that does not depend on the row but cannot be folded** (an operator or function the
folding does not evaluate, a variable, a parameter, a hex literal, readings that
disagree) "may be true": the condition counts as always true when such a part could
make it so (``WHERE id = 5 OR @x`` does, ``WHERE id = 5 AND @x`` does not).
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

__all__ = ["MAYBE", "UNKNOWN", "always_true", "mysql_number", "never_true"]


class _Unknown:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()


class _Maybe:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MAYBE"


#: A value that is the same for every row but that the folding cannot compute (a function
#: it does not evaluate, a variable, a parameter, an operator it does not fold): it may be
#: true, so a condition that is MAYBE counts as always true.
MAYBE: Final = _Maybe()


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
    __slots__ = ("ci", "hex_number", "memo", "params")

    def __init__(
        self, ci: bool, hex_number: bool, params: Sequence[object] | None, memo: dict[int, bool]
    ) -> None:
        self.ci = ci
        self.hex_number = hex_number
        self.params = params
        self.memo = memo


def _unk(v: Any) -> bool:
    return v is UNKNOWN or v is MAYBE


def _num(v: Any) -> Any:
    if v is None or _unk(v):
        return v
    if isinstance(v, Decimal | float):
        return v
    if isinstance(v, _Bin):
        return Decimal(int.from_bytes(v.encode("latin-1"), "big"))
    if isinstance(v, str):
        # a string in a numeric context is a DOUBLE
        return float(mysql_number(v))
    return UNKNOWN


def _truthy(v: Any) -> Any:
    n = _num(v)
    if n is None or _unk(n):
        return n
    return n != 0


def _bool(b: Any) -> Any:
    if b is None or _unk(b):
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


def _cmp(op: type[exp.Expression], a: Any, b: Any, w: _World, numeric: bool = False) -> Any:
    if _unk(a) or _unk(b):
        return UNKNOWN
    if a is MAYBE or b is MAYBE:
        return MAYBE
    if op is exp.NullSafeEQ:
        if _unk(a) or _unk(b):
            return UNKNOWN
        if a is None or b is None:
            return a is None and b is None
        op = exp.EQ
    if _unk(a) or _unk(b):
        return UNKNOWN
    if a is None or b is None:
        return None
    x: Any
    y: Any
    if isinstance(a, str) and isinstance(b, str) and not numeric:
        x, y = _fold_text(a, w.ci), _fold_text(b, w.ci)
    else:
        x, y = _num(a), _num(b)
        if isinstance(x, float) or isinstance(y, float):
            # a DOUBLE on either side: both compare as DOUBLE
            x, y = float(x), float(y)
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
    if _unk(a) or _unk(b):
        return UNKNOWN
    if a is MAYBE or b is MAYBE:
        return MAYBE
    if a is None or b is None:
        return None
    if isinstance(a, float) or isinstance(b, float):
        return MAYBE  # DOUBLE arithmetic: its rounding is the server's, not folded here
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
            exact = a / b
            rounded = exact.quantize(Decimal(1).scaleb(-(scale + 4)), rounding=ROUND_HALF_UP)
            # MySQL's division keeps 4 more digits; past that its rounding is its own
            return rounded if rounded == exact else MAYBE
    return UNKNOWN


def _row_dependent(node: exp.Expression, memo: dict[int, bool]) -> bool:
    """Whether ``node`` may differ from row to row: it names a column or reads a table."""
    key = id(node)
    got = memo.get(key)
    if got is None:
        if isinstance(node, exp.Column | exp.Star) or (
            isinstance(node, exp.Select) and not _constant_select(node)
        ):
            got = True
        else:
            got = any(
                _row_dependent(v, memo)
                for arg in node.args.values()
                for v in (arg if isinstance(arg, list) else [arg])
                if isinstance(v, exp.Expression)
            )
        memo[key] = got
    return got


def _value(node: exp.Expression, w: _World, depth: int = 0) -> Any:
    if depth > 200:
        raise RecursionError("condition nested too deeply")
    v = _fold(node, w, depth)
    if v is UNKNOWN and not _row_dependent(node, w.memo):
        return MAYBE
    return v


def _fold(node: exp.Expression, w: _World, depth: int) -> Any:
    d = depth + 1
    if isinstance(node, exp.Paren):
        return _value(node.this, w, d)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return str(node.this)
        text = str(node.this)
        if "e" in text.lower():
            return float(text)  # an approximate-value literal is a DOUBLE
        try:
            return Decimal(text)
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
        # a binary string or a number depending on its context, and MySQL and MariaDB do
        # not agree on every context: never folded
        return MAYBE
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
        if _unk(a) or _unk(b):
            return UNKNOWN
        if a is MAYBE or b is MAYBE:
            return MAYBE
        if a is None or b is None:
            return None
        return Decimal(1)
    if isinstance(node, exp.Or):
        a, b = _truthy(_value(node.this, w, d)), _truthy(_value(node.expression, w, d))
        if a is True or b is True:
            return Decimal(1)
        if a is MAYBE or b is MAYBE:
            return MAYBE  # it may be true, and then so is the OR
        if _unk(a) or _unk(b):
            return UNKNOWN
        if a is None or b is None:
            return None
        return Decimal(0)
    if isinstance(node, exp.Xor):
        a, b = _truthy(_value(node.this, w, d)), _truthy(_value(node.expression, w, d))
        if _unk(a) or _unk(b):
            return UNKNOWN
        if a is MAYBE or b is MAYBE:
            return MAYBE
        if a is None or b is None:
            return None
        return _bool(a != b)
    if isinstance(node, exp.Not):
        v = _truthy(_value(node.this, w, d))
        return v if v is None or _unk(v) else _bool(not v)
    if isinstance(node, exp.Is):
        v = _value(node.this, w, d)
        target = node.expression
        if isinstance(target, exp.Null):
            if _unk(v):
                return UNKNOWN
            return _bool(v is None)
        if isinstance(target, exp.Boolean):
            t = _truthy(v)
            if _unk(t):
                return UNKNOWN
            return _bool(t is bool(target.this))
        return UNKNOWN
    if isinstance(node, exp.Neg):
        v = _num(_value(node.this, w, d))
        return v if v is None or _unk(v) else -v
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div | exp.IntDiv | exp.Mod):
        return _arith(node, _value(node.this, w, d), _value(node.expression, w, d))
    if isinstance(node, exp.BitwiseNot):
        v = _num(_value(node.this, w, d))
        if v is None or _unk(v):
            return v
        if isinstance(v, float) or v != v.to_integral_value() or not -(2**63) <= v < 2**64:
            return MAYBE  # MySQL rounds (and clamps) to a 64-bit integer first, its own way
        return Decimal(~int(v) & 0xFFFFFFFFFFFFFFFF)
    if isinstance(node, exp.In):
        if node.args.get("query") is not None or node.args.get("unnest") is not None:
            return UNKNOWN
        left = node.this
        items = node.expressions
        if any(_same_column(left, i) for i in items):
            return Decimal(1)
        lv = _value(left, w, d)
        values = [_value(i, w, d) for i in items]
        # mixed types: MySQL may compare all as numbers or pair by pair; both are tried
        readings = [[_cmp(exp.EQ, lv, v, w, numeric) for v in values] for numeric in (False, True)]
        out: list[Any] = []
        for results in readings:
            if any(r is True for r in results):
                out.append(Decimal(1))
            elif any(_unk(r) for r in results):
                out.append(UNKNOWN)
            elif any(r is None for r in results):
                out.append(None)
            else:
                out.append(Decimal(0))
        return _either(out)
    if isinstance(node, exp.Between):
        v = _value(node.this, w, d)
        low, high = _value(node.args["low"], w, d), _value(node.args["high"], w, d)
        ranged: list[Any] = []
        for numeric in (False, True):
            lo = _cmp(exp.GTE, v, low, w, numeric)
            hi = _cmp(exp.LTE, v, high, w, numeric)
            if lo is False or hi is False:
                ranged.append(Decimal(0))
            elif _unk(lo) or _unk(hi):
                ranged.append(UNKNOWN)
            elif lo is None or hi is None:
                ranged.append(None)
            else:
                ranged.append(Decimal(1))
        return _either(ranged)
    if isinstance(node, exp.Like | exp.Escape):
        return _like_value(node, w, d)
    if isinstance(node, exp.If | exp.Case | exp.Coalesce | exp.Nullif):
        return _typed_result(_choice(node, w, d), node, w, d)
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


def _branches(node: exp.Expression) -> list[exp.Expression]:
    """The expressions IF, CASE, COALESCE/IFNULL and NULLIF may return."""
    if isinstance(node, exp.If):
        out = [node.args.get("true"), node.args.get("false")]
    elif isinstance(node, exp.Case):
        out = [b.args.get("true") for b in node.args.get("ifs") or []] + [node.args.get("default")]
    elif isinstance(node, exp.Coalesce):
        out = [node.this, *node.expressions]
    else:
        out = [node.this]
    return [b for b in out if isinstance(b, exp.Expression)]


def _choice(node: exp.Expression, w: _World, d: int) -> Any:
    if isinstance(node, exp.If):
        c = _truthy(_value(node.this, w, d))
        if _unk(c):
            return UNKNOWN
        branch = node.args.get("true") if c is True else node.args.get("false")
        return None if branch is None else _value(branch, w, d)
    if isinstance(node, exp.Case):
        if node.this is not None:
            return UNKNOWN
        for branch in node.args.get("ifs") or []:
            c = _truthy(_value(branch.this, w, d))
            if _unk(c):
                return UNKNOWN
            if c is True:
                return _value(branch.args["true"], w, d)
        default = node.args.get("default")
        return None if default is None else _value(default, w, d)
    if isinstance(node, exp.Coalesce):
        for item in [node.this, *node.expressions]:
            v = _value(item, w, d)
            if _unk(v) or v is not None:
                return v
        return None
    a, b = _value(node.this, w, d), _value(node.expression, w, d)
    eq = _cmp(exp.EQ, a, b, w)
    if _unk(eq):
        return UNKNOWN
    return None if eq is True else a


def _typed_result(value: Any, node: exp.Expression, w: _World, d: int) -> Any:
    """The value of IF/CASE/COALESCE/NULLIF has the type of all its branches together: a
    number among strings is returned as a string, so when the branches mix kinds (or one
    is not a constant) the value's kind is not known."""
    if value is None or _unk(value):
        return value
    kinds = set()
    for b in _branches(node):
        v = _value(b, w, d)
        if _unk(v):
            return MAYBE
        if v is not None:
            kinds.add(str if isinstance(v, str) else Decimal if isinstance(v, Decimal) else float)
    return value if len(kinds) <= 1 else MAYBE


def _either(readings: list[Any]) -> Any:
    """One value from several readings of the same constants: the value they agree on,
    else MAYBE (it may be true), UNKNOWN if one depends on the row."""
    first = readings[0]
    if any(_unk(r) for r in readings):
        return UNKNOWN
    if all(r == first and (r is None) == (first is None) for r in readings):
        return first
    return MAYBE


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
    if _unk(value) or _unk(pattern):
        return UNKNOWN
    if value is None or pattern is None:
        return None
    if isinstance(value, float) or isinstance(pattern, float):
        return MAYBE  # a DOUBLE's text is the server's
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
    if _unk(v) or v is None or not isinstance(to, exp.DataType):
        return v if v is None else UNKNOWN
    t = to.this
    T = exp.DataType.Type
    if t in (T.CHAR, T.VARCHAR, T.TEXT, T.NCHAR, T.NVARCHAR, T.BINARY, T.VARBINARY):
        if to.expressions or isinstance(v, float):
            return MAYBE  # a length may cut it; a DOUBLE's text is the server's
        return v if isinstance(v, str) else _number_text(v)
    if t in (T.BIGINT, T.INT, T.UBIGINT, T.UINT, T.SMALLINT, T.TINYINT):
        n = _num(v)
        if _unk(n) or isinstance(n, float) or n != n.to_integral_value():
            return MAYBE  # MySQL rounds to an integer its own way
        if t in (T.UBIGINT, T.UINT) and n < 0:
            return MAYBE  # wraps around to a huge number
        return Decimal(int(n))
    return MAYBE  # DECIMAL(m, d), DOUBLE, dates...: rounded or converted the server's way


_WORLDS = ((False, False), (True, False))


def always_true(cond: exp.Expression) -> bool:
    """Whether ``cond`` is true for every row, in any reading of its collation and literal
    types.  Raises RecursionError for conditions nested too deeply."""
    memo: dict[int, bool] = {}
    for ci, hex_number in _WORLDS:
        t = _truthy(_value(cond, _World(ci, hex_number, None, memo)))
        if t is True or t is MAYBE:
            return True
    return False


def never_true(cond: exp.Expression) -> bool:
    """Whether ``cond`` is false or NULL for every row, in every collation reading."""
    memo: dict[int, bool] = {}
    for ci, hex_number in _WORLDS:
        t = _truthy(_value(cond, _World(ci, hex_number, None, memo)))
        if t is not False and t is not None:
            return False
    return True

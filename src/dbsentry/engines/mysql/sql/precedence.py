"""Does sqlglot's expression tree group operators as MySQL does?

sqlglot's operator precedence is not MySQL's: it reads ``a = b < c`` as ``a = (b < c)``
where MySQL reads ``(a = b) < c`` (comparisons share one level, left to right), and
``a BETWEEN 1 AND 2 = 1`` as ``(a BETWEEN 1 AND 2) = 1`` where MySQL reads
``a BETWEEN 1 AND (2 = 1)``.  A tree grouped differently from the server's is a bypass
(``WHERE id = 5 < 10`` is true for every row on the server), so :func:`check` verifies
every operator's operands against MySQL's grammar (``expr`` > ``boolean_primary`` >
``predicate`` > ``bit_expr``, and the ``bit_expr`` operator levels) and refuses the
statement where sqlglot's grouping is not the server's: parentheses make it explicit.
"""

from __future__ import annotations

from sqlglot import exp

__all__ = ["Misgrouped", "check"]

_ATOM = 100
# bit_expr operator levels, tighter binding higher (MySQL's operator precedence table)
_BIT_LEVELS: dict[type[exp.Expression], int] = {
    exp.BitwiseXor: 12,
    exp.Mul: 11,
    exp.Div: 11,
    exp.IntDiv: 11,
    exp.Mod: 11,
    exp.Add: 10,
    exp.Sub: 10,
    exp.BitwiseLeftShift: 9,
    exp.BitwiseRightShift: 9,
    exp.BitwiseAnd: 8,
    exp.BitwiseOr: 7,
}
_UNARY = (exp.Neg, exp.BitwiseNot)  # level 13
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ)
_PREDICATES = (exp.In, exp.Between, exp.Like, exp.RegexpLike, exp.Escape, exp.JSONArrayContains)
_LOGIC = (exp.And, exp.Or, exp.Xor)

BIT, PRED, BOOLP, EXPR = 1, 2, 3, 4  # grammar classes, loosest last


class Misgrouped(ValueError):
    """sqlglot grouped operators differently from MySQL."""


def _strip_not(node: exp.Expression) -> exp.Expression:
    # ``a NOT IN (...)``, ``a NOT LIKE``, ``a NOT BETWEEN``, ``a IS NOT NULL``: sqlglot writes
    # them as NOT over the predicate; they keep the predicate's place in the grammar
    if isinstance(node, exp.Not) and isinstance(node.this, (*_PREDICATES, exp.Is)):
        return node.this
    return node


def _inserted(node: exp.Expression) -> bool:
    """A Paren sqlglot added to keep its own grouping (not written in the text): it went
    through no token, so it has no comments list.  It hides nothing: looked through."""
    return isinstance(node, exp.Paren) and node.comments is None


def _level(node: exp.Expression) -> tuple[int, int]:
    """(grammar class, bit_expr level) of an operand as it stands in the tree."""
    while _inserted(node) and not isinstance(node.this, exp.Not):
        node = node.this  # (MySQL's ``!x`` becomes an added Paren around NOT: an atom)
    n = _strip_not(node)
    if (
        isinstance(n, _LOGIC)
        or (isinstance(n, exp.Not) and n is node)
        or isinstance(n, exp.PropertyEQ)
    ):
        return EXPR, 0
    if isinstance(n, exp.Is):
        return (BOOLP, 0) if isinstance(n.expression, exp.Null) else (EXPR, 0)
    if isinstance(n, _COMPARISONS):
        return BOOLP, 0
    if isinstance(n, _PREDICATES):
        return PRED, 0
    level = _BIT_LEVELS.get(type(n))
    if level is not None:
        return BIT, level
    if isinstance(n, _UNARY):
        return BIT, 13
    return BIT, _ATOM


def _bit(node: exp.Expression, at_least: int) -> bool:
    cls, level = _level(node)
    return cls == BIT and level >= at_least


def _fits(node: exp.Expression, max_class: int) -> bool:
    return _level(node)[0] <= max_class


def check(node: exp.Expression) -> None:
    """Raise :class:`Misgrouped` if ``node``'s own operands are not grouped as MySQL would
    group them (only ``node`` itself is checked: the caller walks the tree)."""
    ok = True
    t = type(node)
    if t in _BIT_LEVELS:
        level = _BIT_LEVELS[t]
        ok = _bit(node.this, level) and _bit(node.expression, level + 1)
    elif isinstance(node, _UNARY):
        ok = _bit(node.this, 13)
    elif isinstance(node, _COMPARISONS):
        ok = _fits(node.this, BOOLP) and _fits(node.expression, PRED)
    elif isinstance(node, exp.Is):
        ok = _fits(node.this, BOOLP)
    elif isinstance(node, exp.Between):
        ok = _bit(node.this, 7) and _bit(node.args["low"], 7) and _fits(node.args["high"], PRED)
    elif isinstance(node, exp.In | exp.Like | exp.RegexpLike | exp.JSONArrayContains):
        ok = _bit(node.this, 7) and (node.expression is None or _bit(node.expression, 7))
    elif isinstance(node, exp.Escape):
        ok = isinstance(node.this, exp.Like) and _bit(node.expression, 7)
    elif isinstance(node, exp.Not) and _strip_not(node) is node:
        ok = not isinstance(node.this, _LOGIC)
    elif isinstance(node, exp.And):
        ok = not isinstance(node.this, exp.Or | exp.Xor) and not isinstance(
            node.expression, exp.Or | exp.Xor
        )
    elif isinstance(node, exp.Xor):
        ok = not isinstance(node.this, exp.Or) and not isinstance(node.expression, exp.Or)
    if not ok:
        raise Misgrouped(
            f"{t.__name__}: its operands may group differently on the server; add parentheses"
        )

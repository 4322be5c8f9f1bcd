"""MySQL's side of the audit's literal redaction (``audit.redaction.StatementLiterals``):
the MySQL lexer finds the constants (and ``?`` parameters); a constant that *meets* a
classified column of the connection's catalog becomes a token of that column's class,
the others are judged by their value (value detection). Text the lexer refuses is
stored redacted whole.

A constant meets a column when it is compared with it (``ssn = '...'``, ``'...' =
ssn``, ``email IN ('a', 'b')``, ``phone LIKE '5%'``, ``ssn BETWEEN 'a' AND 'b'``,
``LOWER(email) = '...'``), assigned to it (``UPDATE ... SET ssn = '...'``) or inserted
into it (``INSERT INTO t (..., ssn) VALUES (..., '...')``). Read from the tokens, not a
tree: coarse, so it can only find more. A column name is classified by the catalog's
columns of that name in the tables the statement names (any of them when a name is
qualified by an alias), or, when the catalog knows none, by the name alone (as
``classify_column`` does)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

from dbsentry.audit.redaction import ConstantRedactor, detect_constant, quote_constant
from dbsentry.engines.mysql.sql.lexing import tokens
from dbsentry.governance.text import COMMENT, LITERAL, REDACTED_STATEMENT, Token
from dbsentry.masking.catalog import Catalog, ClassMap
from dbsentry.masking.classes import DataClass, most_sensitive
from dbsentry.masking.detect import classify_column
from dbsentry.masking.meets import UNPARSED, LiteralMeets, Meets

_ESCAPES = {"0": "\x00", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "Z": "\x1a"}


def constant_value(text: str) -> str:
    """A constant's value as written: a string unquoted (doubled quotes and backslash
    escapes read), a number as is; a hex or bit literal stays as written."""
    head = text[:1]
    if text[:1] in "_Nn" and "'" in text and not text.startswith("'"):
        text = text[text.index("'") :]  # an introducer or N'...'
        head = "'"
    if head not in ("'", '"') or len(text) < 2:
        return text
    quote = head
    body = text[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        if ch == quote and body[i + 1 : i + 2] == quote:
            out.append(quote)
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


QUOTED_IDENT = "quoted_ident"
# Between a column and the constant it is compared with (walking back from the constant).
_BETWEEN_OPS = frozenset({"=", "<>", "!=", "<=>", "<", ">", "<=", ">=", "LIKE", "IN", "(", ",", "NOT", "-", "+", "BETWEEN",
                          "ESCAPE", "RLIKE", "REGEXP", ":=", "SOUNDS", "BINARY"})
_FORWARD_OPS = frozenset({"=", "<>", "!=", "<=>", "<", ">", "<=", ">=", "NOT", "IN", "LIKE", ")"})


@functools.lru_cache(maxsize=4096)
def _class_by_name(column: str) -> DataClass | None:
    # "customers": a people-ish table, so that a bare ``name`` counts too (as PostgreSQL's)
    found = classify_column("customers", column)
    return found.data_class if found is not None else None


def _name(sql: str, t: Token) -> str:
    text = sql[t.start : t.end]
    if t.kind == QUOTED_IDENT and len(text) >= 2:
        text = text[1:-1].replace(text[0] * 2, text[0])
    return text.lower()


def _is_name(sql: str, t: Token) -> bool:
    if t.kind == QUOTED_IDENT:
        return True
    if t.kind != "other":
        return False
    text = sql[t.start : t.end]
    return bool(text) and (text[0].isalpha() or text[0] in "_$") and text.upper() not in _KEYWORDS


_KEYWORDS = frozenset(
    {"SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "LIKE", "BETWEEN", "IS", "NULL", "AS", "ON", "JOIN", "SET",
     "VALUES", "VALUE", "INTO", "INSERT", "REPLACE", "UPDATE", "DELETE", "CASE", "WHEN", "THEN", "ELSE", "END", "HAVING",
     "GROUP", "ORDER", "BY", "LIMIT", "ESCAPE", "RLIKE", "REGEXP", "SOUNDS", "BINARY", "DISTINCT", "UNION", "ALL", "XOR",
     "DIV", "MOD", "INTERVAL", "USING", "LEFT", "RIGHT", "INNER", "OUTER", "CROSS", "EXISTS", "ANY", "SOME", "TRUE", "FALSE"}
)


class _Columns:
    """Which class a column name has in a statement: the catalog's classified columns of
    that name in the tables the statement names, else the name alone."""

    def __init__(self, classmap: ClassMap | None, names: set[str]) -> None:
        self.by_name: dict[str, list[tuple[str, DataClass]]] = {}
        if classmap is not None:
            for src, found in classmap.columns.items():
                self.by_name.setdefault(src.column.lower(), []).append((src.table.lower(), found.data_class))
        self.names = names

    def sensitive(self, column: str) -> bool:
        return column in self.by_name or _class_by_name(column) is not None

    def classify(self, column: str) -> DataClass | None:
        found = [cls for table, cls in self.by_name.get(column, ()) if table in self.names]
        if not found:
            found = [cls for _, cls in self.by_name.get(column, ())] if column in self.by_name else []
        if found:
            return most_sensitive(found)
        return _class_by_name(column)


def _matching_open(toks: Sequence[Token], sql: str, close: int) -> int:
    depth = 0
    for j in range(close, -1, -1):
        text = sql[toks[j].start : toks[j].end]
        if toks[j].kind == "other" and text == ")":
            depth += 1
        elif toks[j].kind == "other" and text == "(":
            depth -= 1
            if depth == 0:
                return j
    return -1


def _column_back(toks: Sequence[Token], sql: str, i: int, cols: _Columns) -> DataClass | None:
    """The class of the column the constant at ``i`` is compared with, walking back."""
    j = i - 1
    while j >= 0:
        t = toks[j]
        text = sql[t.start : t.end]
        if t.kind == LITERAL or (t.kind == "other" and text == "?"):
            j -= 1
            continue
        if t.kind == COMMENT:
            j -= 1
            continue
        upper = text.upper()
        if t.kind == "other" and upper == "AND":
            # ``BETWEEN x AND y``: on to the BETWEEN
            if j >= 2 and toks[j - 1].kind == LITERAL and sql[toks[j - 2].start : toks[j - 2].end].upper() == "BETWEEN":
                j -= 2
                continue
            return None
        if t.kind == "other" and text == ")":
            # ``LOWER(email) = '...'``: the classified column inside the call
            start = _matching_open(toks, sql, j)
            inside = [_name(sql, x) for x in toks[start + 1 : j] if _is_name(sql, x)] if start >= 0 else []
            found = [c for n in inside if (c := cols.classify(n)) is not None]
            return most_sensitive(found) if found else None
        if t.kind == "other" and upper in _BETWEEN_OPS:
            j -= 1
            continue
        if _is_name(sql, t):
            if j + 1 < len(toks) and sql[toks[j + 1].start : toks[j + 1].end] == "(":
                return None  # a function's name
            return cols.classify(_name(sql, t))
        return None
    return None


def _column_forward(toks: Sequence[Token], sql: str, i: int, cols: _Columns) -> DataClass | None:
    """``'...' = ssn``: the column after the operator."""
    j = i + 1
    seen_op = False
    while j < len(toks):
        t = toks[j]
        text = sql[t.start : t.end]
        if t.kind == "other" and text.upper() in _FORWARD_OPS and text != ")":
            seen_op = True
            j += 1
            continue
        if seen_op and _is_name(sql, t):
            if j + 1 < len(toks) and sql[toks[j + 1].start : toks[j + 1].end] in ("(", "."):
                if sql[toks[j + 1].start : toks[j + 1].end] == "." and j + 2 < len(toks) and _is_name(sql, toks[j + 2]):
                    return cols.classify(_name(sql, toks[j + 2]))
                return None
            return cols.classify(_name(sql, t))
        return None
    return None


def _insert_columns(toks: Sequence[Token], sql: str, cols: _Columns) -> dict[int, DataClass | None]:
    """``INSERT INTO t (a, b) VALUES (..), (..)``: the class of the column each value
    position of every row meets (by token index of the value's first token)."""
    words = [sql[t.start : t.end].upper() if t.kind == "other" else "" for t in toks]
    if not words or words[0] not in ("INSERT", "REPLACE"):
        return {}
    try:
        open_ = words.index("(")
        values = next(k for k, w in enumerate(words) if w in ("VALUES", "VALUE"))
    except (ValueError, StopIteration):
        return {}
    if open_ > values:
        return {}
    close = words.index(")", open_)
    names = [_name(sql, t) for t in toks[open_ + 1 : close] if _is_name(sql, t)]
    out: dict[int, DataClass | None] = {}
    depth = 0
    pos = 0
    for k in range(values + 1, len(toks)):
        w = words[k]
        if w == "(":
            depth += 1
            if depth == 1:
                pos = 0
            continue
        if w == ")":
            depth -= 1
            continue
        if depth == 1 and w == ",":
            pos += 1
            continue
        if depth == 0 and w != ",":
            break  # ON DUPLICATE KEY UPDATE ...: assignments, read back
        if depth >= 1 and pos < len(names) and (toks[k].kind == LITERAL or w == "?"):
            cls = cols.classify(names[pos])
            if cls is not None:
                out[k] = cls
    return out


def _statement_text(toks: Sequence[Token], sql: str) -> Token | None:
    """The string constant that is a statement: ``PREPARE s FROM '...'``, ``EXECUTE
    IMMEDIATE '...' [USING ...]``."""
    words = [sql[t.start : t.end].upper() if t.kind != LITERAL else "" for t in toks[:4]]
    if words[:1] == ["PREPARE"] and words[2:3] == ["FROM"] and len(toks) > 3:
        at = 3
    elif words[:2] == ["EXECUTE", "IMMEDIATE"] and len(toks) > 2:
        at = 2
    else:
        return None
    t = toks[at]
    return t if t.kind == LITERAL and sql[t.start : t.end][-1:] in ("'", '"') else None


def find_literal_meets(sql: str, classmap: ClassMap | None) -> LiteralMeets:
    """Which constants (by offset) and ``?`` parameters (by number, from 1) of ``sql``
    meet a classified column, with the values of every constant. Unparsed when the
    lexer refuses the text."""
    try:
        toks = [t for t in tokens(sql) if t.kind != COMMENT]
    except Exception:
        return UNPARSED
    values = {t.start: constant_value(sql[t.start : t.end]) for t in toks if t.kind == LITERAL}
    text = _statement_text(toks, sql)
    if text is not None:
        # PREPARE s FROM '...', EXECUTE IMMEDIATE '...': the constant is a statement, whose
        # own constants may meet classified columns; then it is one (stored as a token)
        inner = find_literal_meets(values[text.start], classmap)
        if not inner.parsed or inner.literals:
            classes = [c for c in inner.literals.values() if c is not None]
            return LiteralMeets({text.start: most_sensitive(classes) if classes else None}, {}, values)
    names = {_name(sql, t) for t in toks if _is_name(sql, t)}
    cols = _Columns(classmap, names)
    if not any(cols.sensitive(n) for n in names):
        return LiteralMeets(values=values)
    literals: dict[int, Meets] = {}
    params: dict[int, Meets] = {}
    inserted = _insert_columns(toks, sql, cols)
    param = 0
    for i, t in enumerate(toks):
        is_param = t.kind == "other" and sql[t.start : t.end] == "?"
        if t.kind != LITERAL and not is_param:
            continue
        param += is_param
        cls = inserted.get(i)
        if cls is None:
            cls = _column_back(toks, sql, i, cols) or _column_forward(toks, sql, i, cols)
        if cls is None:
            continue
        if is_param:
            params[param] = cls
        else:
            literals[t.start] = cls
    return LiteralMeets(literals, params, values)


class MySQLLiterals:
    """See the module: ``lex`` is MySQL's lexer (default ``sql_mode``)."""

    @staticmethod
    def lex(sql: str) -> Sequence[Token]:
        return tokens(sql)

    def meets(
        self, sql: str, catalog: Catalog | None, classmap: ClassMap | None, search_path: Iterable[str] | None
    ) -> LiteralMeets:
        return find_literal_meets(sql, classmap)

    def values_only(self, sql: str, classmap: ClassMap | None) -> bool:
        """Whether no column ``sql`` names may be sensitive (then its constants are judged
        by their values alone)."""
        try:
            toks = tokens(sql)
        except Exception:
            return False
        cols = _Columns(classmap, set())
        return not any(cols.sensitive(_name(sql, t)) for t in toks if _is_name(sql, t))

    def rewrite(self, sql: str, meets: LiteralMeets, redactor: ConstantRedactor) -> tuple[str, bool]:
        if not meets.parsed:
            return REDACTED_STATEMENT, True
        try:
            toks = tokens(sql)
        except Exception:
            return REDACTED_STATEMENT, True
        out: list[str] = []
        pos = 0
        changed = False
        for t in toks:
            piece = sql[t.start : t.end]
            new: str | None
            if t.kind == LITERAL:
                value = constant_value(piece)
                if t.start in meets.literals:
                    cls = meets.literals[t.start]
                    new = quote_constant(redactor.token(value, cls if cls is not None else detect_constant(value)))
                else:
                    new = redactor.constant(value)
            elif t.kind == COMMENT:
                scanned = redactor.text(piece)
                new = scanned if scanned != piece else None
            else:
                continue
            if new is not None:
                out.append(sql[pos : t.start])
                out.append(new)
                pos = t.end
                changed = True
        out.append(sql[pos:])
        return "".join(out), changed


MYSQL_LITERALS = MySQLLiterals()

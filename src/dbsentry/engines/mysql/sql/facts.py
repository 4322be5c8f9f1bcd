"""Statement facts for MySQL and MariaDB: what a SQL string does, in the neutral vocabulary
of :mod:`dbsentry.governance.facts`, so the same policy and production baseline judge it.

``analyze(sql)`` reads the text with dbsentry's own MySQL lexer
(:mod:`dbsentry.engines.mysql.sql.lexing`, exact on MySQL's lexical traps, failing closed),
cuts it into statements at its ``;`` tokens, and reads each statement one of two ways:

- **with sqlglot's MySQL dialect** (SELECT, INSERT, REPLACE, UPDATE, DELETE, DO, SET,
  CREATE/ALTER TABLE, VIEW, INDEX, DATABASE, DROP, TRUNCATE, EXPLAIN, CALL): sqlglot is the
  maintained multi-dialect parser (pglast is PostgreSQL's own parser and reads no MySQL).
  Before sqlglot sees a statement, its tokenization must agree with dbsentry's lexer on
  every literal, quoted identifier and the characters that are code (comments are blanked
  out first): a parser that reads a text differently from the server is the classic
  bypass.  The tree is then walked on an **allow-list** of expression types: anything
  else, including sqlglot's ``Command`` fallback and bare expressions, refuses the
  statement (``0A000``);
- **by a strict token grammar** for statements whose facts do not depend on expressions
  (GRANT, REVOKE, user and role statements, transactions, SAVEPOINT, PREPARE, EXECUTE,
  DEALLOCATE, HANDLER, LOAD DATA, RENAME TABLE, LOCK TABLES, INSTALL PLUGIN/COMPONENT,
  SHUTDOWN, RESTART, KILL, SHOW, USE).

Statements of any other kind are refused (FLUSH, RESET, PURGE, replication control, XA,
BINLOG, CREATE PROCEDURE/FUNCTION/TRIGGER/EVENT with their bodies, HELP, ...).

Functions are read from the tokens, not from sqlglot's tree (which maps names of other
dialects' functions onto its own types): every ``name(`` that is not one of the built-in
functions MySQL and MariaDB share (which a stored function cannot shadow unqualified) and
every ``db.name(`` is a function dbsentry cannot see into, so it counts as code that may
write (``volatile_function`` and ``side_effect_function``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from sqlglot import Token as GlotToken
from sqlglot import TokenType, exp
from sqlglot.dialects.mysql import MySQL
from sqlglot.errors import SqlglotError

from dbsentry.engines.mysql.sql.fold import always_true, never_true
from dbsentry.engines.mysql.sql.functions import (
    BUILTIN_FUNCTIONS,
    FILE_ACCESS_FUNCTIONS,
    NOT_CALLS,
    SIDE_EFFECT_FUNCTIONS,
)
from dbsentry.engines.mysql.sql.lexing import (
    DEFAULT_MODE,
    MySQLLexRefused,
    MySQLSyntaxError,
    SqlMode,
    split,
    tokens,
)
from dbsentry.engines.mysql.sql.precedence import Misgrouped, check
from dbsentry.governance.facts import (
    AnalysisRefused,
    CopyFacts,
    StatementClass,
    StatementFacts,
    risk_of,
)
from dbsentry.governance.text import COMMENT, LITERAL, OTHER, QUOTED_IDENT, Token

__all__ = [
    "SYSTEM_SCHEMAS",
    "MySQLAnalysisError",
    "MySQLTooComplex",
    "MySQLUnsupported",
    "ParsedQuery",
    "analyze",
    "analyzer",
    "fingerprint",
    "parse_queries",
]

# sqlglot logs a warning for every statement it falls back to Command on; those are refused
logging.getLogger("sqlglot").setLevel(logging.ERROR)

#: Schemas whose tables are the server's own: writing them is a catalog write.
SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
#: Character sets a session may switch to: ASCII-compatible, with no multi-byte character
#: whose later bytes can be a quote or a backslash (GBK, Big5, SJIS, CP932 and GB18030 can,
#: the classic escaping bypass).
SAFE_CHARSETS = frozenset(
    {
        "utf8mb4",
        "utf8mb3",
        "utf8",
        "latin1",
        "ascii",
        "binary",
        "latin2",
        "latin5",
        "latin7",
        "cp1250",
        "cp1251",
        "cp1256",
        "cp1257",
        "default",
    }
)
MAX_NODES = 100_000
#: Characters of one statement given to sqlglot (pure Python, about 8 microseconds a
#: character): a longer statement is refused as too complex (54001) rather than hold the
#: session for seconds.
MAX_STATEMENT = 512 * 1024


class MySQLUnsupported(AnalysisRefused):
    """A construct the MySQL analysis does not understand: ``0A000``."""

    sqlstate = "0A000"


class MySQLTooComplex(AnalysisRefused):
    """Nested too deeply or too large to analyse: ``54001``."""

    sqlstate = "54001"

    def __init__(self, detail: str) -> None:
        super().__init__(f"statement too complex to analyse ({detail})")
        self.detail = detail


class MySQLAnalysisError(AnalysisRefused):
    """The analysis itself failed: ``XX000``."""

    sqlstate = "XX000"


# -- sqlglot dialects per sql_mode -------------------------------------------------------


class _NoBackslash(MySQL):
    class Tokenizer(MySQL.Tokenizer):
        STRING_ESCAPES = ["'"]


class _AnsiQuotes(MySQL):
    class Tokenizer(MySQL.Tokenizer):
        QUOTES = ["'"]
        IDENTIFIERS = ["`", '"']


class _AnsiNoBackslash(MySQL):
    class Tokenizer(MySQL.Tokenizer):
        QUOTES = ["'"]
        IDENTIFIERS = ["`", '"']
        STRING_ESCAPES = ["'"]


_DIALECTS: dict[tuple[bool, bool], MySQL] = {
    (False, False): MySQL(),
    (True, False): _NoBackslash(),
    (False, True): _AnsiQuotes(),
    (True, True): _AnsiNoBackslash(),
}

_GLOT_LITERALS = frozenset(
    {
        TokenType.STRING,
        TokenType.NATIONAL_STRING,
        TokenType.HEX_STRING,
        TokenType.BIT_STRING,
        TokenType.IDENTIFIER,
        TokenType.BYTE_STRING,
    }
)


# -- per statement state -----------------------------------------------------------------


@dataclass(slots=True)
class _Stmt:
    """One statement: its text (comments blanked), its code tokens (offsets relative to
    the statement), the words of those tokens (upper-cased), and the analysis mode."""

    text: str
    code: list[Token]
    mode: SqlMode

    def word(self, i: int) -> str:
        if i >= len(self.code):
            return ""
        t = self.code[i]
        return self.text[t.start : t.end].upper() if t.kind == OTHER else ""

    def raw(self, i: int) -> str:
        if not 0 <= i < len(self.code):
            return ""
        t = self.code[i]
        return self.text[t.start : t.end]

    def words(self) -> list[str]:
        return [self.word(i) for i in range(len(self.code))]


@dataclass(slots=True)
class _Facts:
    command: str
    klass: StatementClass
    commands: list[str] = field(default_factory=list)
    classes: list[StatementClass] = field(default_factory=list)
    reads: set[str] = field(default_factory=set)
    writes: set[str] = field(default_factory=set)
    columns: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    flags: set[str] = field(default_factory=set)
    settings: set[str] = field(default_factory=set)
    has_where: bool = True
    where_true: bool = False
    copy: CopyFacts | None = None
    prepared: str | None = None
    inner: StatementFacts | None = None

    def merge(self, inner: StatementFacts, *, bounds: bool = True) -> None:
        self.commands.extend(inner.commands)
        self.classes.extend(inner.classes)
        self.reads.update(inner.tables_read)
        self.writes.update(inner.tables_written)
        self.columns.update(inner.columns_read)
        self.functions.update(inner.functions)
        self.settings.update(inner.settings)
        flags = set(inner.flags)
        if not bounds:
            flags -= {"no_where", "always_true_where"}
        self.flags.update(flags)


def _unsupported(what: str, position: int | None = None) -> MySQLUnsupported:
    return MySQLUnsupported(f"dbsentry cannot analyse {what}", position)


# -- the cross-check: sqlglot must read the text as the lexer does ------------------------


def _glot_tokens(text: str, mode: SqlMode) -> list[GlotToken]:
    try:
        return list(_DIALECTS[(mode.no_backslash_escapes, mode.ansi_quotes)].tokenize(text))
    except SqlglotError as err:
        raise MySQLSyntaxError(f"syntax error: {err}") from None


def _code_mask(text: str, spans: Iterable[tuple[int, int]]) -> bytes:
    """Which characters of ``text`` the tokens cover, whitespace left out (sqlglot makes
    one token of ``ORDER BY``, spaces included)."""
    mask = bytearray(len(text))
    for s, e in spans:
        mask[s:e] = b"\x01" * (e - s)
    for i, c in enumerate(text):
        if c in " \t\n\r\f\v":
            mask[i] = 0
    return bytes(mask)


def _agree(text: str, mine: Sequence[Token], mode: SqlMode) -> None:
    """Refuse a statement unless sqlglot's tokenizer reads the same code characters, the
    same literals and quoted identifiers, and no statement separator in ``text``."""
    glot = _glot_tokens(text, mode)
    if _code_mask(text, ((t.start, t.end) for t in mine)) != _code_mask(
        text, ((g.start, g.end + 1) for g in glot)
    ):
        raise MySQLUnsupported("statement: sqlglot reads its text differently from MySQL's lexer")
    quoted_mine = set()
    for t in mine:
        if t.kind in (LITERAL, QUOTED_IDENT):
            raw = text[t.start : t.end]
            q = min((raw.find(c) for c in "'\"`" if c in raw), default=-1)
            if q >= 0:
                quoted_mine.add((t.start + q, t.end))
    quoted_glot = set()
    for g in glot:
        if g.token_type == TokenType.SEMICOLON:
            raise MySQLUnsupported(
                "statement: sqlglot sees a statement separator the lexer does not"
            )
        if g.token_type in _GLOT_LITERALS:
            raw = text[g.start : g.end + 1]
            q = min((raw.find(c) for c in "'\"`" if c in raw), default=-1)
            if q >= 0:
                quoted_glot.add((g.start + q, g.end + 1))
    if quoted_mine != quoted_glot:
        raise MySQLUnsupported(
            "statement: sqlglot reads its quoted text differently from MySQL's lexer"
        )


def _parse(text: str, mode: SqlMode) -> exp.Expression:
    try:
        trees = _DIALECTS[(mode.no_backslash_escapes, mode.ansi_quotes)].parse(text)
    except RecursionError:
        raise MySQLTooComplex("nested too deeply") from None
    except SqlglotError as err:
        raise MySQLSyntaxError(f"syntax error: {str(err).splitlines()[0]}") from None
    found = [t for t in trees if isinstance(t, exp.Expression)]
    if len(found) != 1:
        raise MySQLUnsupported("statement: not exactly one statement")
    return found[0]


def _edit(text: str, edits: Sequence[tuple[int, int, str]]) -> str:
    out, pos = [], 0
    for s, e, rep in sorted(edits):
        out.append(text[pos:s])
        out.append(rep)
        pos = e
    out.append(text[pos:])
    return "".join(out)


# -- functions, from the tokens --------------------------------------------------------------

_DDL_NAME_BEFORE = frozenset(
    {
        "TABLE",
        "VIEW",
        "KEY",
        "INDEX",
        "CONSTRAINT",
        "REFERENCES",
        "UNIQUE",
        "FULLTEXT",
        "SPATIAL",
        "EXISTS",
    }
)
_INSERT_NAME_BEFORE = frozenset(
    {"INTO", "INSERT", "REPLACE", "IGNORE", "LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY"}
)


def _calls(st: _Stmt) -> list[str]:
    """Every function call of the statement as written: ``name`` or ``db.name``, lower case.
    A word before ``(`` that names a table, index, CTE or column list is not a call, and is
    recognised by where it stands; a doubtful case counts as a call."""
    code, text = st.code, st.text
    head = st.word(0)
    out: list[str] = []
    for i in range(len(code) - 1):
        nxt = code[i + 1]
        if text[nxt.start : nxt.end] != "(":
            continue
        t = code[i]
        if t.kind not in (OTHER, QUOTED_IDENT):
            continue
        raw = text[t.start : t.end]
        if t.kind == OTHER and not (raw[:1].isalpha() or raw[:1] in "_$"):
            continue
        # a quoted name is never a built-in the grammar knows (COUNT, CAST...): kept quoted
        name = raw.lower()
        prev = st.word(i - 1) if i > 0 else ""
        prev_raw = st.raw(i - 1) if i > 0 else ""
        if t.kind == OTHER and raw.upper() in NOT_CALLS:
            continue
        if prev_raw == ".":
            qual = st.raw(i - 2) if i > 1 else ""
            out.append(f"{qual.strip('`').lower()}.{name}")
            continue
        if head in ("INSERT", "REPLACE") and prev in _INSERT_NAME_BEFORE:
            continue
        if head in ("CREATE", "ALTER") and prev in _DDL_NAME_BEFORE:
            continue
        if head == "CREATE" and prev == "ON" and "INDEX" in st.words()[:5]:
            continue
        if prev in ("WITH", "RECURSIVE") or (prev_raw == "," and _in_with_list(st, i)):
            continue
        if prev == "AS" and i > 1 and st.raw(i - 2) == ")":
            continue  # a derived table's column list: (SELECT ...) AS d (a, b)
        if prev in ("PARTITION", "SUBPARTITION") or prev_raw == "@":
            continue
        out.append(name)
    return out


def _in_with_list(st: _Stmt, i: int) -> bool:
    """Whether ``name (`` at ``i`` is a CTE's name with its column list: ``, c (a) AS (``."""
    depth = 0
    j = i + 1
    while j < len(st.code):
        r = st.raw(j)
        if r == "(":
            depth += 1
        elif r == ")":
            depth -= 1
            if depth == 0:
                return (
                    st.word(j + 1) == "AS" and st.raw(j + 2) == "("
                    if j + 2 < len(st.code)
                    else False
                )
        j += 1
    return False


def _function_flags(f: _Facts, st: _Stmt) -> None:
    for name in _calls(st):
        f.functions.add(name)
        base = name.rsplit(".", 1)[-1]
        # a quoted name still calls a native function (`load_file`(...) reads a file), but
        # not one the grammar knows by keyword (`count`(*)): only an unquoted name is trusted
        bare = base.strip("`").replace("``", "`")
        if "." in name or base.startswith("`") or base not in BUILTIN_FUNCTIONS:
            # a stored or loadable function: its body is out of sight, so it may write
            f.flags.update(("volatile_function", "side_effect_function"))
        if bare in FILE_ACCESS_FUNCTIONS:
            f.flags.add("file_access")
        if bare in SIDE_EFFECT_FUNCTIONS:
            f.flags.add("side_effect_function")


# -- the tree walk ---------------------------------------------------------------------------

# Expression types that only combine other expressions: walked through.
_PLAIN: tuple[type[exp.Expression], ...] = (
    exp.Literal,
    exp.Boolean,
    exp.Null,
    exp.Star,
    exp.Identifier,
    exp.Var,
    exp.Alias,
    exp.Paren,
    exp.Tuple,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.NullSafeEQ,
    exp.And,
    exp.Or,
    exp.Xor,
    exp.Not,
    exp.Is,
    exp.In,
    exp.Between,
    exp.Like,
    exp.Escape,
    exp.RegexpLike,
    exp.Neg,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.IntDiv,
    exp.Mod,
    exp.BitwiseAnd,
    exp.BitwiseOr,
    exp.BitwiseXor,
    exp.BitwiseNot,
    exp.BitwiseLeftShift,
    exp.BitwiseRightShift,
    exp.Case,
    exp.If,
    exp.Cast,
    exp.DataType,
    exp.DataTypeParam,
    exp.Interval,
    exp.Ordered,
    exp.Order,
    exp.Where,
    exp.Having,
    exp.Group,
    exp.Limit,
    exp.Offset,
    exp.Distinct,
    exp.Placeholder,
    exp.Parameter,
    exp.SessionParameter,
    exp.Introducer,
    exp.Collate,
    exp.HexString,
    exp.BitString,
    exp.National,
    exp.Window,
    exp.WindowSpec,
    exp.PropertyEQ,
    exp.Any,
    exp.All,
    exp.Dot,
    exp.JSONPath,
    exp.JSONPathRoot,
    exp.JSONPathKey,
    exp.JSONPathSubscript,
    exp.JSONPathWildcard,
    exp.Lock,
    exp.IndexTableHint,
    exp.TableAlias,
    exp.Partition,
    exp.Columns,
    exp.Slice,
    exp.CharacterSet,
    exp.Rollup,
    exp.JSONKeyValue,
    exp.Kwarg,
)
# Types that are never walked (their content is not an expression dbsentry must see).
_OPAQUE: tuple[type[exp.Expression], ...] = (exp.DataType, exp.Var, exp.Identifier)
_QUERIES = (exp.Select, exp.Union, exp.Intersect, exp.Except)


def _only(node: exp.Expression, allowed: set[str]) -> None:
    """Refuse a node with an argument the walk does not read."""
    extra = sorted(
        k for k, v in node.args.items() if v not in (None, False, []) and k not in allowed
    )
    if extra:
        raise _unsupported(f"{type(node).__name__} with {', '.join(extra)}")


class _Walk:
    """Collects tables, columns and flags from a sqlglot tree, allow-list only."""

    __slots__ = ("ctes", "f", "nodes", "placeholders", "scopes")

    def __init__(self, f: _Facts) -> None:
        self.f = f
        self.nodes = 0
        self.scopes: list[dict[str, str | None]] = []
        self.ctes: list[set[str]] = []
        self.placeholders = False

    def count(self) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise MySQLTooComplex(f"more than {MAX_NODES} expression nodes")

    # -- names
    def table_name(self, t: exp.Table) -> str:
        if not isinstance(t.this, exp.Identifier):
            raise _unsupported(f"{type(t.this).__name__} as a table")
        allowed = {"this", "db", "alias", "joins", "hints", "partition"}
        extra = [k for k, v in t.args.items() if v not in (None, False, []) and k not in allowed]
        if extra:
            raise _unsupported(f"a table reference with {', '.join(sorted(extra))}")
        if t.args.get("partition") is not None:
            self.expr(t.args["partition"])
        for h in t.args.get("hints") or []:
            self.expr(h)
        db = t.args.get("db")
        if db is not None and not isinstance(db, exp.Identifier):
            raise _unsupported("a table's qualifier")
        return f"{db.name}.{t.name}" if db is not None else t.name

    def is_cte(self, t: exp.Table) -> bool:
        return t.args.get("db") is None and any(t.name in level for level in self.ctes)

    @staticmethod
    def is_catalog(name: str) -> bool:
        return "." in name and name.split(".", 1)[0].lower() in SYSTEM_SCHEMAS

    # -- queries
    def query(self, q: exp.Expression) -> None:
        self.count()
        if isinstance(q, exp.Subquery):
            _only(q, {"this", "alias", "order", "limit", "offset", "joins"})
            self.query(q.this)
            for k in ("order", "limit", "offset"):
                if q.args.get(k) is not None:
                    self.expr(q.args[k])
            return
        if isinstance(q, exp.Select):
            self.select(q)
        elif isinstance(q, exp.Union | exp.Intersect | exp.Except):
            _only(
                q,
                {
                    "this",
                    "expression",
                    "distinct",
                    "by_name",
                    "side",
                    "kind",
                    "with_",
                    "order",
                    "limit",
                    "offset",
                },
            )
            pushed = self.with_(q.args.get("with_") or q.args.get("with"))
            self.query(q.this)
            self.query(q.expression)
            for k in ("order", "limit", "offset"):
                if q.args.get(k) is not None:
                    self.expr(q.args[k])
            if pushed:
                self.ctes.pop()
        else:
            raise _unsupported(f"{type(q).__name__} as a query")

    def with_(self, w: exp.Expression | None) -> bool:
        if w is None:
            return False
        if not isinstance(w, exp.With):
            raise _unsupported(type(w).__name__)
        recursive = bool(w.args.get("recursive"))
        level: set[str] = set()
        self.ctes.append(level)
        for cte in w.expressions:
            if not isinstance(cte, exp.CTE):
                raise _unsupported(type(cte).__name__)
            if recursive:
                level.add(cte.alias)
            self.query(cte.this)
            level.add(cte.alias)
        return True

    def select(self, s: exp.Select) -> None:
        allowed = {
            "kind",
            "hint",
            "distinct",
            "expressions",
            "limit",
            "offset",
            "from_",
            "joins",
            "where",
            "group",
            "having",
            "order",
            "windows",
            "locks",
            "with_",
            "operation_modifiers",
        }
        extra = [k for k, v in s.args.items() if v not in (None, False, []) and k not in allowed]
        if extra or s.args.get("kind") or s.args.get("hint"):
            raise _unsupported(f"SELECT with {', '.join(sorted(extra)) or 'a hint'}")
        pushed = self.with_(s.args.get("with_"))
        scope: dict[str, str | None] = {}
        self.scopes.append(scope)
        frm = s.args.get("from_")
        if frm is not None:
            self.from_item(frm.this, scope)
        for j in s.args.get("joins") or []:
            self.join(j, scope)
        for mod in s.args.get("operation_modifiers") or []:
            if not isinstance(mod, exp.Var):
                raise _unsupported("a SELECT modifier")
        for k in (
            "distinct",
            "expressions",
            "where",
            "group",
            "having",
            "order",
            "windows",
            "limit",
            "offset",
        ):
            v = s.args.get(k)
            if v is not None:
                self.expr(v)
        if s.args.get("locks"):
            self.f.flags.add("row_lock")
        self.scopes.pop()
        if pushed:
            self.ctes.pop()

    def join(self, j: exp.Expression, scope: dict[str, str | None]) -> None:
        if not isinstance(j, exp.Join):
            raise _unsupported(type(j).__name__)
        allowed = {"this", "on", "using", "side", "kind", "method"}
        extra = [k for k, v in j.args.items() if v not in (None, False, []) and k not in allowed]
        if extra:
            raise _unsupported(f"a join with {', '.join(sorted(extra))}")
        self.from_item(j.this, scope)
        if j.args.get("on") is not None:
            self.expr(j.args["on"])

    def from_item(self, item: exp.Expression, scope: dict[str, str | None]) -> None:
        self.count()
        if isinstance(item, exp.Table):
            alias = item.alias or item.name
            if self.is_cte(item):
                scope[alias] = None
            else:
                name = self.table_name(item)
                if not (name.lower() == "dual" and not item.alias):
                    self.f.reads.add(name)
                scope[alias] = name
            for j in item.args.get("joins") or []:
                self.join(j, scope)
        elif isinstance(item, exp.Subquery):
            _only(item, {"this", "alias", "joins"})
            self.query(item.this)
            if item.alias:
                scope[item.alias] = None
            for j in item.args.get("joins") or []:
                self.join(j, scope)
        else:
            raise _unsupported(f"{type(item).__name__} in FROM")

    # -- expressions
    def expr(self, node: exp.Expression | list[exp.Expression]) -> None:
        stack: list[object] = [node]
        while stack:
            n = stack.pop()
            if isinstance(n, list):
                stack.extend(n)
                continue
            if not isinstance(n, exp.Expression):
                continue
            self.count()
            if isinstance(n, exp.Column):
                self.column(n)
                continue
            if isinstance(n, (exp.Subquery, *_QUERIES)):
                self.query(n)
                continue
            if isinstance(n, exp.Exists):
                self.query(n.this)
                continue
            if isinstance(n, exp.Placeholder):
                self.placeholders = True
                continue
            if isinstance(n, exp.Table | exp.Command | exp.Into):
                raise _unsupported(f"{type(n).__name__} in an expression")
            if isinstance(n, (exp.Func, *_PLAIN)):
                if isinstance(n, _OPAQUE):
                    continue
                try:
                    check(n)
                except Misgrouped as err:
                    raise MySQLUnsupported(f"dbsentry cannot analyse {err}") from None
                for v in n.args.values():
                    if isinstance(v, exp.Expression | list):
                        stack.append(v)
                continue
            raise _unsupported(f"{type(n).__name__}")

    def column(self, c: exp.Column) -> None:
        if not isinstance(c.this, exp.Identifier | exp.Star):
            raise _unsupported("a column reference")
        col = c.name if isinstance(c.this, exp.Identifier) else "*"
        qualifier = c.table
        if qualifier:
            for scope in reversed(self.scopes):
                if qualifier in scope:
                    table = scope[qualifier]
                    self.f.columns.add(f"{table}.{col}" if table else f"{qualifier}.{col}")
                    return
            db = c.args.get("db")
            self.f.columns.add(
                f"{db.name}.{qualifier}.{col}"
                if isinstance(db, exp.Identifier)
                else f"{qualifier}.{col}"
            )
            return
        if self.scopes and len(self.scopes[-1]) == 1:
            (table,) = self.scopes[-1].values()
            if table:
                self.f.columns.add(f"{table}.{col}")
                return
        self.f.columns.add(col)

    # -- writes
    def bound(
        self,
        where: exp.Expression | None,
        targets: Iterable[str] = (),
        joins: Sequence[exp.Expression] = (),
    ) -> None:
        """The WHERE of an UPDATE or DELETE: missing, or always true, is flagged; so is one
        that (with the joins' conditions) names no column of a target table at all, such as
        ``DELETE t1 FROM t1 JOIN t2 ON 1=1 WHERE t2.x = 1`` or ``WHERE EXISTS (SELECT 1
        FROM u)``: it is the same for every row of the target.  ``targets``: the names and
        aliases a target's columns may be qualified with."""
        f = self.f
        if where is None:
            f.flags.add("no_where")
            f.has_where = False
            return
        cond = where.this if isinstance(where, exp.Where) else where
        self.expr(cond)
        try:
            true = always_true(cond)
        except RecursionError:
            raise MySQLTooComplex("WHERE nested too deeply") from None
        names = {t.lower() for t in targets}
        if not true and names:
            mentioned = False
            for node in (cond, *joins):
                for col in node.find_all(exp.Column):
                    q = col.table.lower()
                    if not q or q in names:
                        mentioned = True  # an unqualified column may be the target's
                        break
                if mentioned:
                    break
            true = not mentioned and not never_true(cond)
        if true:
            f.flags.add("always_true_where")
            f.where_true = True

    def target(self, t: exp.Expression, scope: dict[str, str | None]) -> str:
        if not isinstance(t, exp.Table):
            raise _unsupported(f"{type(t).__name__} as a target")
        name = self.table_name(t)
        self.f.writes.add(name)
        if self.is_catalog(name):
            self.f.flags.add("catalog_write")
        scope[t.alias or t.name] = name
        return name


# -- statements read by sqlglot ----------------------------------------------------------------


def _glot(
    st: _Stmt, edits: Sequence[tuple[int, int, str]] = (), prefix: str = ""
) -> exp.Expression:
    """sqlglot's tree of the statement, once its tokenizer agrees with the lexer on the
    text it parses: the statement with ``edits`` (whole tokens blanked, or a keyword
    replaced by one of the same length) and ``prefix`` (a keyword) before it."""
    shift = len(prefix)
    blanked = [(s, e) for s, e, rep in edits if not rep.strip()]
    mine = [Token(OTHER, 0, shift)] if prefix else []
    for t in st.code:
        if any(s <= t.start and t.end <= e for s, e in blanked):
            continue
        mine.append(Token(t.kind, t.start + shift, t.end + shift))
    text = prefix + _edit(st.text, edits)
    if len(text) > MAX_STATEMENT:
        raise MySQLTooComplex(f"a statement of more than {MAX_STATEMENT} characters")
    _agree(text, mine, st.mode)
    return _parse(text, st.mode)


def _find(st: _Stmt, word: str, start: int = 0) -> int:
    for i in range(start, len(st.code)):
        if st.word(i) == word:
            return i
    return -1


def _into_clause(st: _Stmt, f: _Facts) -> list[tuple[int, int, str]]:
    """SELECT ... INTO OUTFILE/DUMPFILE 'file' [options] or INTO @a, @b: taken out of the
    text given to sqlglot (it reads neither), with their facts."""
    edits: list[tuple[int, int, str]] = []
    i = _find(st, "INTO")
    while i >= 0:
        kind = st.word(i + 1)
        j = i + 1
        if kind in ("OUTFILE", "DUMPFILE"):
            if j + 1 >= len(st.code) or st.code[j + 1].kind != LITERAL:
                raise MySQLSyntaxError("INTO OUTFILE without a file name")
            f.flags.add("copy_server_file")
            f.copy = CopyFacts("to", False, True, _string_value(st.raw(j + 1), st.mode))
            j += 2
            while j < len(st.code):
                w = st.word(j)
                if w in ("FIELDS", "COLUMNS", "LINES", "OPTIONALLY"):
                    j += 1
                elif (
                    w in ("TERMINATED", "ENCLOSED", "ESCAPED", "STARTING")
                    and st.word(j + 1) == "BY"
                ):
                    if j + 2 >= len(st.code) or st.code[j + 2].kind != LITERAL:
                        raise MySQLSyntaxError(f"{w} BY without a string")
                    j += 3
                elif w in ("CHARACTER", "CHARSET"):
                    j += 3 if w == "CHARACTER" else 2
                else:
                    break
        elif st.raw(j) == "@":
            while j < len(st.code) and st.raw(j) == "@":
                if j + 1 >= len(st.code) or st.code[j + 1].kind not in (OTHER, QUOTED_IDENT):
                    raise MySQLSyntaxError("INTO @ without a variable name")
                j += 2
                if j < len(st.code) and st.raw(j) == ",":
                    j += 1
                else:
                    break
        else:
            raise _unsupported("SELECT ... INTO other than OUTFILE, DUMPFILE or user variables")
        start, end = st.code[i].start, st.code[j - 1].end
        edits.append((start, end, " " * (end - start)))
        i = _find(st, "INTO", j)
    return edits


def _t_query(st: _Stmt, f: _Facts) -> None:
    edits = _into_clause(st, f)
    tree = _glot(st, edits)
    if not isinstance(tree, exp.Select | exp.Union | exp.Intersect | exp.Except | exp.Subquery):
        raise _unsupported(f"{type(tree).__name__} as a query")
    w = _Walk(f)
    w.query(tree)


def _t_do(st: _Stmt, f: _Facts) -> None:
    # DO expr, ...: the expressions of a SELECT whose result is thrown away
    start = st.code[0].end
    tree = _glot(st, [(0, start, " " * start)], prefix="SELECT")
    if not isinstance(tree, exp.Select) or (
        len(tree.args)
        and any(
            tree.args.get(k)
            for k in ("from_", "where", "group", "having", "order", "limit", "with_")
        )
    ):
        raise _unsupported("DO with more than expressions")
    _Walk(f).query(tree)


def _strip_modifiers(st: _Stmt, words: Iterable[str]) -> list[tuple[int, int, str]]:
    edits = []
    i = 1
    ws = set(words)
    while i < len(st.code) and st.word(i) in ws:
        t = st.code[i]
        edits.append((t.start, t.end, " " * (t.end - t.start)))
        i += 1
    return edits


def _insert_tree(st: _Stmt) -> exp.Expression:
    """sqlglot's tree of an INSERT or REPLACE (read as an INSERT)."""
    edits = _strip_modifiers(st, ("LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY"))
    if st.word(0) == "REPLACE":
        t = st.code[0]
        edits.append((t.start, t.end, "INSERT "[: t.end - t.start]))
    return _glot(st, edits)


def _update_tree(st: _Stmt) -> exp.Expression:
    return _glot(st, _strip_modifiers(st, ("LOW_PRIORITY", "IGNORE")))


def _t_insert(st: _Stmt, f: _Facts) -> None:
    replace = st.word(0) == "REPLACE"
    tree = _insert_tree(st)
    if not isinstance(tree, exp.Insert):
        raise _unsupported(f"{type(tree).__name__} as an INSERT")
    allowed = {
        "this",
        "expression",
        "conflict",
        "ignore",
        "with_",
        "is_function",
        "stored",
        "by_name",
        "exists",
        "partition",
        "settings",
        "default",
        "overwrite",
        "source",
        "columns",
    }
    extra = [k for k, v in tree.args.items() if v not in (None, False, []) and k not in allowed]
    if (
        extra
        or tree.args.get("is_function")
        or tree.args.get("stored")
        or tree.args.get("overwrite")
    ):
        raise _unsupported(f"INSERT with {', '.join(sorted(extra)) or 'an unknown form'}")
    if replace:
        f.commands.append("DELETE")
    w = _Walk(f)
    pushed = w.with_(tree.args.get("with_"))
    scope: dict[str, str | None] = {}
    w.scopes.append(scope)
    target = tree.this
    if isinstance(target, exp.Schema):
        for col in target.expressions:
            if not isinstance(col, exp.Identifier):
                raise _unsupported("an INSERT column list")
        target = target.this
    w.target(target, scope)
    source = tree.args.get("expression")
    if isinstance(source, exp.Values):
        w.expr(source.expressions)
    elif source is not None:
        w.query(source)
    conflict = tree.args.get("conflict")
    if conflict is not None:
        if not isinstance(conflict, exp.OnConflict) or not conflict.args.get("duplicate"):
            raise _unsupported("an INSERT conflict clause")
        f.commands.append("UPDATE")
        f.classes.append("WRITE")
        w.expr(conflict.expressions)
    w.scopes.pop()
    if pushed:
        w.ctes.pop()


def _t_update(st: _Stmt, f: _Facts) -> None:
    tree = _update_tree(st)
    if not isinstance(tree, exp.Update):
        raise _unsupported(f"{type(tree).__name__} as an UPDATE")
    allowed = {"this", "expressions", "where", "order", "limit", "with_"}
    extra = [k for k, v in tree.args.items() if v not in (None, False, []) and k not in allowed]
    if extra:
        raise _unsupported(f"UPDATE with {', '.join(sorted(extra))}")
    w = _Walk(f)
    pushed = w.with_(tree.args.get("with_"))
    scope: dict[str, str | None] = {}
    w.scopes.append(scope)
    tables: list[exp.Table] = []
    top = tree.this
    if not isinstance(top, exp.Table):
        raise _unsupported(f"{type(top).__name__} as an UPDATE target")
    tables.append(top)
    joins = top.args.get("joins") or []
    name = w.table_name(top)
    scope[top.alias or top.name] = name
    for j in joins:
        if not isinstance(j, exp.Join):
            raise _unsupported(type(j).__name__)
        if isinstance(j.this, exp.Table):
            tables.append(j.this)
        w.join(j, scope)
    # written: the tables whose columns are SET (all of them when that is unclear)
    targets: set[str] = set()
    for assignment in tree.expressions:
        if not isinstance(assignment, exp.EQ) or not isinstance(assignment.this, exp.Column):
            raise _unsupported("an UPDATE assignment")
        q = assignment.this.table
        if q and scope.get(q):
            targets.add(str(scope[q]))
        elif len(tables) == 1:
            targets.add(name)
        else:
            targets.update(w.table_name(t) for t in tables if not w.is_cte(t))
    for t in targets:
        f.writes.add(t)
        if w.is_catalog(t):
            f.flags.add("catalog_write")
    f.reads.difference_update(targets)
    w.expr([a.expression for a in tree.expressions])
    aliases = (
        {k for k, v in scope.items() if v in targets}
        | targets
        | {t.rsplit(".", 1)[-1] for t in targets}
    )
    ons = [j.args["on"] for j in joins if isinstance(j, exp.Join) and j.args.get("on") is not None]
    w.bound(tree.args.get("where"), aliases, ons)
    for k in ("order", "limit"):
        if tree.args.get(k) is not None:
            w.expr(tree.args[k])
    w.scopes.pop()
    if pushed:
        w.ctes.pop()


def _delete_tree(st: _Stmt) -> exp.Expression:
    return _glot(st, _strip_modifiers(st, ("LOW_PRIORITY", "QUICK", "IGNORE")))


def _t_delete(st: _Stmt, f: _Facts) -> None:
    tree = _delete_tree(st)
    if not isinstance(tree, exp.Delete):
        raise _unsupported(f"{type(tree).__name__} as a DELETE")
    allowed = {"this", "tables", "using", "where", "order", "limit", "with_", "cluster"}
    extra = [k for k, v in tree.args.items() if v not in (None, False, []) and k not in allowed]
    if extra or tree.args.get("cluster"):
        raise _unsupported(f"DELETE with {', '.join(sorted(extra)) or 'CLUSTER'}")
    w = _Walk(f)
    pushed = w.with_(tree.args.get("with_"))
    scope: dict[str, str | None] = {}
    w.scopes.append(scope)
    top = tree.this
    using = tree.args.get("using")
    targets = tree.args.get("tables")
    if targets:
        # DELETE t1, t2 FROM <tables>: the FROM tables are read, the named ones deleted from
        w.from_item(top, scope)
    elif using:
        # DELETE FROM t1, t2 USING <tables>: sqlglot keeps t1 (with t2 as a join) in ``this``
        targets = [top, *[j.this for j in top.args.get("joins") or []]]
        for u in using:
            w.from_item(u, scope)
    else:
        if not isinstance(top, exp.Table) or top.args.get("joins"):
            raise _unsupported("a DELETE target")
        w.target(top, scope)
        targets = []
    for t in targets:
        if not isinstance(t, exp.Table):
            raise _unsupported(f"{type(t).__name__} as a DELETE target")
        alias = t.name if t.args.get("db") is None else None
        name = scope.get(alias) if alias and scope.get(alias) else w.table_name(t)
        f.writes.add(str(name))
        if w.is_catalog(str(name)):
            f.flags.add("catalog_write")
    f.reads.difference_update(f.writes)
    aliases = (
        {k for k, v in scope.items() if v in f.writes}
        | f.writes
        | {t.rsplit(".", 1)[-1] for t in f.writes}
    )
    ons = [j.args["on"] for j in tree.find_all(exp.Join) if j.args.get("on") is not None]
    w.bound(tree.args.get("where"), aliases, ons)
    for k in ("order", "limit"):
        if tree.args.get(k) is not None:
            w.expr(tree.args[k])
    w.scopes.pop()
    if pushed:
        w.ctes.pop()


_READ_ONLY_SETTINGS = frozenset({"transaction_read_only", "tx_read_only"})
_GLOBAL_KINDS = frozenset({"GLOBAL", "PERSIST", "PERSIST_ONLY"})


def _clearly_on(value: exp.Expression) -> bool:
    if isinstance(value, exp.Literal) and not value.is_string:
        return str(value.this) == "1"
    if isinstance(value, exp.Boolean):
        return bool(value.this)
    if isinstance(value, exp.Var | exp.Column | exp.Literal):
        return value.name.upper() in ("ON", "TRUE", "1")
    return False


def _t_set(st: _Stmt, f: _Facts) -> None:
    tree = _glot(st)
    if (
        not isinstance(tree, exp.Set)
        or tree.args.get("unset")
        or tree.args.get("tag")
        or not tree.expressions
    ):
        raise _unsupported("SET of this form")
    w = _Walk(f)
    for item in tree.expressions:
        if not isinstance(item, exp.SetItem):
            raise _unsupported(f"{type(item).__name__} in SET")
        kind = str(item.args.get("kind") or "").upper()
        if kind == "TRANSACTION":
            f.settings.add("transaction_isolation")
            modes = " ".join(e.name.upper() for e in item.expressions if isinstance(e, exp.Var))
            if len(modes.split()) == 0 or any(not isinstance(e, exp.Var) for e in item.expressions):
                raise _unsupported("SET TRANSACTION of this form")
            if "READ WRITE" in modes:
                f.flags.add("read_write_transaction")
            if "READ WRITE" in modes or "READ ONLY" in modes:
                f.settings.add("transaction_read_only")
            if item.args.get("global_"):
                f.flags.add("alter_system")
            continue
        if kind in ("NAMES", "CHARACTER SET", "CHARSET"):
            charset = (
                item.this.name.lower()
                if isinstance(item.this, exp.Var | exp.Literal | exp.Column)
                else "?"
            )
            if charset not in SAFE_CHARSETS:
                raise _unsupported(
                    f"SET {kind} {charset} (a character set whose bytes can hide quotes)"
                )
            f.settings.add("names")
            continue
        if kind not in ("", "SESSION", "LOCAL", *_GLOBAL_KINDS):
            raise _unsupported(f"SET {kind}")
        eq = item.this
        if not isinstance(eq, exp.EQ | exp.PropertyEQ):
            raise _unsupported("SET of this form")
        target, value = eq.this, eq.expression
        scope = kind
        if isinstance(target, exp.Parameter):
            # a user variable: not a setting of the server
            w.expr(value)
            continue
        if isinstance(target, exp.SessionParameter):
            scope = str(target.args.get("kind") or "SESSION").upper()
            name = target.name.lower()
        elif isinstance(target, exp.Column) and not target.table:
            name = target.name.lower()
        else:
            raise _unsupported("a SET target")
        if scope in _GLOBAL_KINDS:
            f.flags.add("alter_system")
        elif scope not in ("", "SESSION", "LOCAL"):
            raise _unsupported(f"SET @@{scope.lower()}.")
        if (
            name in ("character_set_client", "character_set_connection", "character_set_results")
            and value.name.lower() not in SAFE_CHARSETS
        ):
            raise _unsupported(
                f"SET {name} = {value.name} (a character set whose bytes can hide quotes)"
            )
        f.settings.add(name)
        if name in _READ_ONLY_SETTINGS and not _clearly_on(value):
            f.flags.add("read_write_transaction")
        if isinstance(value, exp.Var) or (isinstance(value, exp.Column) and not value.table):
            continue  # SET x = ON / OFF / DEFAULT / a name: a keyword, not a column
        w.expr(value)


def _t_drop(st: _Stmt, f: _Facts) -> None:
    tree = _glot(st, _strip_modifiers(st, ("TEMPORARY",)))
    if not isinstance(tree, exp.Drop):
        raise _unsupported(f"{type(tree).__name__} as a DROP")
    kind = str(tree.args.get("kind") or "").upper()
    if kind not in (
        "TABLE",
        "VIEW",
        "INDEX",
        "DATABASE",
        "SCHEMA",
        "FUNCTION",
        "PROCEDURE",
        "TRIGGER",
        "EVENT",
        "SEQUENCE",
    ):
        raise _unsupported(f"DROP {kind}")
    f.command = f"DROP {kind}"
    f.flags.add("drop")
    w = _Walk(f)
    for t in tree.args.get("tables") or []:
        if not isinstance(t, exp.Table):
            raise _unsupported(f"{type(t).__name__} in DROP")
        name = w.table_name(t)
        if kind in ("TABLE", "VIEW", "SEQUENCE"):
            f.writes.add(name)
        if (kind in ("DATABASE", "SCHEMA") and name.lower() in SYSTEM_SCHEMAS) or w.is_catalog(
            name
        ):
            f.flags.add("catalog_write")
    on = tree.args.get("cluster")
    if on is not None:
        if not isinstance(on, exp.OnProperty) or not isinstance(on.this, exp.Table):
            raise _unsupported("DROP INDEX ... ON")
        f.writes.add(w.table_name(on.this))


def _t_truncate(st: _Stmt, f: _Facts) -> None:
    tree = _glot(st)
    if not isinstance(tree, exp.TruncateTable) or tree.args.get("is_database"):
        raise _unsupported("TRUNCATE of this form")
    f.flags.add("truncate")
    w = _Walk(f)
    for t in tree.expressions:
        if not isinstance(t, exp.Table):
            raise _unsupported(f"{type(t).__name__} in TRUNCATE")
        name = w.table_name(t)
        f.writes.add(name)
        if w.is_catalog(name):
            f.flags.add("catalog_write")


# DDL parts walked through (their expressions are walked as expressions).
_DDL_PLAIN: tuple[type[exp.Expression], ...] = (
    exp.Schema,
    exp.ColumnDef,
    exp.ColumnConstraint,
    exp.Properties,
    exp.Constraint,
    exp.PrimaryKeyColumnConstraint,
    exp.AutoIncrementColumnConstraint,
    exp.NotNullColumnConstraint,
    exp.DefaultColumnConstraint,
    exp.UniqueColumnConstraint,
    exp.CommentColumnConstraint,
    exp.CheckColumnConstraint,
    exp.CollateColumnConstraint,
    exp.CharacterSetColumnConstraint,
    exp.PrimaryKey,
    exp.IndexColumnConstraint,
    exp.ForeignKey,
    exp.Reference,
    exp.EngineProperty,
    exp.CharacterSetProperty,
    exp.CollateProperty,
    exp.SchemaCommentProperty,
    exp.AutoIncrementProperty,
    exp.IndexParameters,
    exp.Index,
    exp.Ordered,
    exp.AlterColumn,
    exp.ModifyColumn,
    exp.RenameColumn,
    exp.AddConstraint,
    exp.DataType,
    exp.DataTypeParam,
    exp.Identifier,
    exp.Var,
    exp.Literal,
    exp.OnUpdateColumnConstraint,
    exp.CurrentTimestamp,
    exp.Paren,
    exp.Tuple,
    exp.Column,
    exp.UniqueKeyProperty if hasattr(exp, "UniqueKeyProperty") else exp.Identifier,
)


_REMOTE_ENGINES = frozenset({"FEDERATED", "FEDERATEDX", "SPIDER", "CONNECT"})


def _ddl_walk(node: exp.Expression | list[exp.Expression], f: _Facts, w: _Walk) -> None:
    """The parts of a CREATE/ALTER: known DDL types, expressions inside them (defaults,
    checks, generated columns), table references named by REFERENCES and LIKE."""
    stack: list[object] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(n)
            continue
        if not isinstance(n, exp.Expression):
            continue
        w.count()
        if isinstance(n, exp.Table):
            f.reads.add(w.table_name(n))
            continue
        if isinstance(n, exp.Drop):
            f.flags.add("drop")
            continue
        if isinstance(n, exp.AlterRename):
            f.flags.add("drop")  # the old name is gone for everything that used it
            if isinstance(n.this, exp.Table):
                f.writes.add(w.table_name(n.this))
            continue
        if isinstance(n, exp.LikeProperty | exp.TemporaryProperty):
            if isinstance(n, exp.TemporaryProperty):
                f.flags.add("temporary")
            elif isinstance(n.this, exp.Table):
                f.reads.add(w.table_name(n.this))
            continue
        if isinstance(
            n,
            exp.ComputedColumnConstraint | exp.CheckColumnConstraint | exp.DefaultColumnConstraint,
        ):
            w.expr([v for v in n.args.values() if isinstance(v, exp.Expression)])
            continue
        if isinstance(n, exp.EngineProperty) and n.name.upper() in _REMOTE_ENGINES:
            # tables whose rows live on another server (or, for CONNECT, in any file)
            f.flags.add("remote_connection")
            continue
        if isinstance(n, exp.Column):
            continue  # a column being defined or indexed, not read
        if isinstance(n, _DDL_PLAIN):
            for v in n.args.values():
                if isinstance(v, exp.Expression | list):
                    stack.append(v)
            continue
        raise _unsupported(f"{type(n).__name__} in DDL")


def _t_create(st: _Stmt, f: _Facts) -> None:
    tree = _glot(st)
    if not isinstance(tree, exp.Create):
        raise _unsupported(f"{type(tree).__name__} as a CREATE")
    kind = str(tree.args.get("kind") or "").upper()
    if kind not in ("TABLE", "VIEW", "INDEX", "DATABASE", "SCHEMA"):
        raise _unsupported(f"CREATE {kind}")
    allowed = {
        "this",
        "kind",
        "expression",
        "properties",
        "exists",
        "replace",
        "unique",
        "refresh",
        "concurrently",
    }
    extra = [k for k, v in tree.args.items() if v not in (None, False, []) and k not in allowed]
    if extra or tree.args.get("refresh") or tree.args.get("concurrently"):
        raise _unsupported(f"CREATE {kind} with {', '.join(sorted(extra))}")
    f.command = f"CREATE {kind}"
    w = _Walk(f)
    this = tree.this
    if kind == "INDEX":
        if not isinstance(this, exp.Index) or not isinstance(this.args.get("table"), exp.Table):
            raise _unsupported("CREATE INDEX of this form")
        f.writes.add(w.table_name(this.args["table"]))
        _ddl_walk(this.args.get("params") or [], f, w)
    else:
        table = this.this if isinstance(this, exp.Schema) else this
        if not isinstance(table, exp.Table):
            raise _unsupported(f"CREATE {kind} of this form")
        name = w.table_name(table)
        if kind in ("TABLE", "VIEW"):
            f.writes.add(name)
            if w.is_catalog(name):
                f.flags.add("catalog_write")
        if isinstance(this, exp.Schema):
            _ddl_walk(this.expressions, f, w)
    if tree.args.get("properties") is not None:
        _ddl_walk(tree.args["properties"], f, w)
    query = tree.args.get("expression")
    if query is not None:
        if kind not in ("TABLE", "VIEW"):
            raise _unsupported(f"CREATE {kind} with a query")
        if kind == "TABLE":
            f.command = "CREATE TABLE AS"
        w.query(query)
    if "temporary" in f.flags and kind == "TABLE":
        pass
    else:
        f.flags.discard("temporary")
    if tree.args.get("replace") and kind in ("TABLE", "DATABASE", "SCHEMA") and "temporary" not in f.flags:
        # MariaDB's CREATE OR REPLACE TABLE/DATABASE drops what is there first, rows and all
        f.flags.add("drop")


def _t_alter(st: _Stmt, f: _Facts) -> None:
    tree = _glot(st)
    if not isinstance(tree, exp.Alter) or str(tree.args.get("kind") or "").upper() != "TABLE":
        raise _unsupported("ALTER of this form")
    allowed = {
        "this",
        "kind",
        "actions",
        "exists",
        "only",
        "not_valid",
        "check",
        "cascade",
        "iceberg",
    }
    extra = [k for k, v in tree.args.items() if v not in (None, False, []) and k not in allowed]
    if extra or any(tree.args.get(k) for k in ("only", "not_valid", "check", "cascade", "iceberg")):
        raise _unsupported(f"ALTER TABLE with {', '.join(sorted(extra)) or 'options'}")
    w = _Walk(f)
    if not isinstance(tree.this, exp.Table):
        raise _unsupported("ALTER TABLE target")
    name = w.table_name(tree.this)
    f.writes.add(name)
    if w.is_catalog(name):
        f.flags.add("catalog_write")
    _ddl_walk(tree.args.get("actions") or [], f, w)
    f.reads.discard(name)


def _t_explain(st: _Stmt, f: _Facts) -> None:
    """EXPLAIN / DESCRIBE: of a table (its columns), or of a statement, which EXPLAIN does
    not run, except EXPLAIN ANALYZE (and MariaDB's ANALYZE <statement>), which does."""
    i = 1
    analyze_ = st.word(0) == "ANALYZE"
    formats: list[str] = []
    if st.word(i) == "FORMAT" and st.raw(i + 1) == "=":
        formats.append(st.word(i + 2))
        i += 3
    if st.word(i) == "ANALYZE":
        analyze_ = True
        i += 1
        if st.word(i) == "FORMAT" and st.raw(i + 1) == "=":
            formats.append(st.word(i + 2))
            i += 3
    if any(w != "TRADITIONAL" for w in formats) or (analyze_ and st.word(0) != "ANALYZE"):
        # FORMAT=JSON/TREE and MySQL's EXPLAIN ANALYZE print the plan's conditions, where
        # the optimizer writes the stored values of the rows it read while planning
        # (a table read by its primary key becomes constants)
        f.flags.add("plan_text")
    first = st.word(i)
    if (
        first in ("SELECT", "WITH", "INSERT", "REPLACE", "UPDATE", "DELETE", "TABLE")
        or st.raw(i) == "("
        if i < len(st.code)
        else False
    ):
        inner = _sub_statement(st, i)
        f.inner = inner
        if analyze_:
            f.command = "EXPLAIN ANALYZE"
            f.klass = inner.statement_class
            f.merge(inner)
        else:
            f.command = "EXPLAIN"
            # the optimizer may evaluate constant subqueries and functions while planning:
            # what the statement reads and calls counts, not what it would write
            f.reads.update(inner.tables_read)
            f.columns.update(inner.columns_read)
            f.functions.update(inner.functions)
            f.flags.update(
                inner.flags & {"volatile_function", "side_effect_function", "file_access"}
            )
        return
    if analyze_:
        raise _unsupported("EXPLAIN ANALYZE of this form")
    if first == "FOR":
        raise _unsupported("EXPLAIN FOR CONNECTION")
    # DESCRIBE t [column|'pattern']
    rest = st.code[i:]
    if not rest or len(rest) > 5:
        raise _unsupported("DESCRIBE of this form")
    f.command = "DESCRIBE"
    name = _qualified_name(st, i)
    f.reads.add(name[0])


def _sub_statement(st: _Stmt, i: int) -> StatementFacts:
    """The facts of the statement that starts at code token ``i`` (blanked before it)."""
    start = st.code[i].start
    text = " " * start + st.text[start:]
    sub = _Stmt(text, st.code[i:], st.mode)
    return _statement_facts(sub, (start, len(st.text)), st.text[start:])


def _qualified_name(st: _Stmt, i: int) -> tuple[str, int]:
    """A ``name`` or ``db.name`` at code token ``i``: (the name, the index after it)."""

    def ident(j: int) -> str:
        if j >= len(st.code):
            raise MySQLSyntaxError("a name is missing")
        t = st.code[j]
        raw = st.raw(j)
        if t.kind == QUOTED_IDENT:
            return raw[1:-1].replace(raw[0] * 2, raw[0])
        if t.kind == OTHER and re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$]*", raw):
            return raw
        raise _unsupported(f"{raw!r} as a name")

    name = ident(i)
    if i + 2 < len(st.code) + 1 and i + 1 < len(st.code) and st.raw(i + 1) == ".":
        return f"{name}.{ident(i + 2)}", i + 3
    return name, i + 1


def _t_call(st: _Stmt, f: _Facts) -> None:
    name, j = _qualified_name(st, 1)
    f.functions.add(name.lower())
    f.flags.update(("volatile_function", "side_effect_function"))
    if j < len(st.code):
        if st.raw(j) != "(" or st.raw(len(st.code) - 1) != ")":
            raise MySQLSyntaxError("CALL of this form")
        start = st.code[j].start
        tree = _glot(st, [(0, start, " " * start)], prefix="SELECT")
        if not isinstance(tree, exp.Select) or (
            len(tree.args)
            and any(
                tree.args.get(k)
                for k in ("from_", "where", "group", "having", "order", "limit", "with_")
            )
        ):
            raise _unsupported("CALL arguments")
        _Walk(f).expr(tree.expressions)


# -- statements read by a token grammar ------------------------------------------------------


def _expect_end(st: _Stmt, i: int, what: str) -> None:
    if i != len(st.code):
        raise _unsupported(f"{what} of this form", st.code[min(i, len(st.code) - 1)].start)


def _t_transaction(st: _Stmt, f: _Facts) -> None:
    w = st.words()
    head = w[0]
    i = 1
    if head == "BEGIN":
        f.command = "BEGIN"
        if st.word(i) == "WORK":
            i += 1
        _expect_end(st, i, "BEGIN")
        return
    if head == "START":
        if st.word(1) != "TRANSACTION":
            raise _unsupported("START of this form")
        f.command = "START TRANSACTION"
        i = 2
        while i < len(st.code):
            if w[i : i + 3] == ["WITH", "CONSISTENT", "SNAPSHOT"]:
                i += 3
            elif w[i : i + 2] == ["READ", "ONLY"]:
                i += 2
            elif w[i : i + 2] == ["READ", "WRITE"]:
                f.flags.add("read_write_transaction")
                i += 2
            else:
                raise _unsupported("START TRANSACTION of this form")
            if i < len(st.code) and st.raw(i) == ",":
                i += 1
        return
    if head == "SAVEPOINT":
        f.command = "SAVEPOINT"
        _, i = _qualified_name(st, 1)
        _expect_end(st, i, "SAVEPOINT")
        return
    if head == "RELEASE":
        if st.word(1) != "SAVEPOINT":
            raise _unsupported("RELEASE of this form")
        f.command = "RELEASE"
        _, i = _qualified_name(st, 2)
        _expect_end(st, i, "RELEASE SAVEPOINT")
        return
    # COMMIT / ROLLBACK [WORK] [TO [SAVEPOINT] name] [AND [NO] CHAIN] [[NO] RELEASE]
    f.command = head
    if st.word(i) == "WORK":
        i += 1
    if head == "ROLLBACK" and st.word(i) == "TO":
        i += 1
        if st.word(i) == "SAVEPOINT":
            i += 1
        _, i = _qualified_name(st, i)
        f.command = "ROLLBACK TO SAVEPOINT"
        _expect_end(st, i, "ROLLBACK TO")
        return
    if st.word(i) == "AND":
        i += 1
        if st.word(i) == "NO":
            i += 1
        if st.word(i) != "CHAIN":
            raise _unsupported(f"{head} of this form")
        i += 1
    if st.word(i) == "NO":
        i += 1
        if st.word(i) != "RELEASE":
            raise _unsupported(f"{head} of this form")
        i += 1
    elif st.word(i) == "RELEASE":
        i += 1
    _expect_end(st, i, head)


def _t_role(st: _Stmt, f: _Facts) -> None:
    """GRANT, REVOKE, CREATE/ALTER/DROP/RENAME USER, CREATE/DROP ROLE, SET PASSWORD,
    SET DEFAULT ROLE: privileges and accounts.  Nothing in them runs or reads data."""
    w = st.words()
    if w[0] in ("GRANT", "REVOKE"):
        f.command = w[0]
    elif w[0] == "SET":
        f.command = "SET PASSWORD" if st.word(1) == "PASSWORD" else "SET DEFAULT ROLE"
    else:
        f.command = f"{w[0]} {st.word(1)}"
        if w[0] == "DROP":
            f.flags.add("drop")
    f.klass = "ROLE"


def _t_set_role(st: _Stmt, f: _Facts) -> None:
    f.command = "SET ROLE"
    f.klass = "MISC_SET"
    f.flags.add("role_switch")
    f.settings.add("role")


def _t_show(st: _Stmt, f: _Facts) -> None:
    words = st.words()
    # a call in SHOW is refused, but for SHOW GRANTS FOR CURRENT_USER()
    calls = [i for i in range(len(st.code)) if st.raw(i) == "("]
    harmless = all(words[i - 1] == "CURRENT_USER" and st.raw(i + 1) == ")" for i in calls)
    if "WHERE" in words or not harmless:
        raise _unsupported("SHOW ... WHERE (its condition is not analysed)")
    f.command = "SHOW"
    f.klass = "MISC"
    # forms whose rows carry the text of other sessions' statements (their literals)
    if "PROCESSLIST" in words:
        f.flags.add("show_processlist")
    elif "EVENTS" in words and ("BINLOG" in words or "RELAYLOG" in words):
        f.flags.add("show_log_events")
    elif "ENGINE" in words and "STATUS" in words:
        f.flags.add("show_engine_status")
    # SHOW [COUNT(*)] WARNINGS|ERRORS: the server's diagnostics of an earlier statement,
    # which quote the values it read
    if words[1:2] in (["WARNINGS"], ["ERRORS"], ["COUNT"]):
        f.flags.add("show_diagnostics")


def _t_use(st: _Stmt, f: _Facts) -> None:
    name, i = _qualified_name(st, 1)
    _expect_end(st, i, "USE")
    f.command = "USE"
    f.klass = "MISC"
    # USE changes where unqualified names point: a setting of its own
    f.settings.add("database")
    if name.lower() in SYSTEM_SCHEMAS:
        f.flags.add("catalog_write")


def _string_value(raw: str, mode: SqlMode) -> str:
    """The value of a string literal token (introducer and N prefix dropped)."""
    q = min(raw.find(c) for c in "'\"" if c in raw)
    quote = raw[q]
    body = raw[q + 1 : -1]
    if mode.no_backslash_escapes:
        return body.replace(quote * 2, quote)
    out = []
    i = 0
    escapes = {
        "0": "\0",
        "b": "\b",
        "n": "\n",
        "r": "\r",
        "t": "\t",
        "Z": "\x1a",
        "%": "\\%",
        "_": "\\_",
    }
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            out.append(escapes.get(body[i + 1], body[i + 1]))
            i += 2
        elif c == quote and i + 1 < len(body) and body[i + 1] == quote:
            out.append(quote)
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _t_prepare(st: _Stmt, f: _Facts) -> None:
    name, i = _qualified_name(st, 1)
    f.command = "PREPARE"
    f.prepared = name
    if st.word(i) != "FROM":
        raise MySQLSyntaxError("PREPARE without FROM")
    _prepared_text(st, f, i + 1)


def _prepared_text(st: _Stmt, f: _Facts, i: int) -> None:
    """The statement text at code token ``i``: a string literal is analysed (its facts
    merged), anything else is SQL text the analysis cannot see."""
    if i >= len(st.code):
        raise MySQLSyntaxError(f"{st.word(0)} without a statement")
    if i + 1 == len(st.code) and st.code[i].kind == LITERAL and st.raw(i)[:1] in "'\"_Nn":
        raw = st.raw(i)
        if raw[:1] in "xXbB" or raw[0].isdigit():
            raise _unsupported("PREPARE from a hex or numeric literal")
        text = _string_value(raw, st.mode)
        inner = analyze(text, st.mode)
        if len(inner) != 1:
            raise MySQLSyntaxError("PREPARE takes exactly one statement")
        f.inner = inner[0]
        f.merge(inner[0])
        return
    # PREPARE s FROM @var: text the analysis cannot see
    f.flags.add("dynamic_sql")


def _t_execute(st: _Stmt, f: _Facts) -> None:
    if st.word(1) == "IMMEDIATE":
        # MariaDB's EXECUTE IMMEDIATE 'text' / @var: PREPARE and EXECUTE in one
        _prepared_text(st, f, 2)
        f.command = "EXECUTE IMMEDIATE"
        f.prepared = None
        return
    name, i = _qualified_name(st, 1)
    f.command = "EXECUTE"
    f.prepared = name
    if i < len(st.code):
        if st.word(i) != "USING":
            raise _unsupported("EXECUTE of this form")
        i += 1
        while i < len(st.code):
            if st.raw(i) != "@" or i + 1 >= len(st.code):
                raise _unsupported("EXECUTE ... USING other than user variables")
            i += 2
            if i < len(st.code):
                if st.raw(i) != ",":
                    raise _unsupported("EXECUTE of this form")
                i += 1


def _t_deallocate(st: _Stmt, f: _Facts) -> None:
    if st.word(1) != "PREPARE":
        raise _unsupported(f"{st.word(0)} of this form")
    name, i = _qualified_name(st, 2)
    _expect_end(st, i, "DEALLOCATE PREPARE")
    f.command = "DEALLOCATE"
    f.prepared = name


def _t_handler(st: _Stmt, f: _Facts) -> None:
    """HANDLER t OPEN [[AS] alias] / HANDLER h READ ... / HANDLER h CLOSE: a low-level read
    of a table, row by row."""
    name, i = _qualified_name(st, 1)
    action = st.word(i)
    f.command = "HANDLER"
    if action == "OPEN":
        f.klass = "READ"
        f.reads.add(name)
        f.columns.add(f"{name}.*")
        j = i + 1
        if st.word(j) == "AS":
            j += 1
        if j < len(st.code):
            _, j = _qualified_name(st, j)
            # HANDLER h READ then reads the table under another name
            f.flags.add("handler_alias")
        _expect_end(st, j, "HANDLER OPEN")
    elif action == "CLOSE":
        _expect_end(st, i + 1, "HANDLER CLOSE")
    elif action == "READ":
        f.klass = "READ"
        f.reads.add(name)
        f.columns.add(f"{name}.*")
        for j in range(i + 1, len(st.code)):
            t = st.code[j]
            if st.word(j) == "WHERE":
                raise _unsupported("HANDLER ... READ ... WHERE")
            word = t.kind == QUOTED_IDENT or (t.kind == OTHER and st.raw(j)[:1].isalpha())
            if word and j + 1 < len(st.code) and st.raw(j + 1) == "(":
                raise _unsupported("HANDLER ... READ with a function call")
            if st.raw(j) in ("@", "@@", "?"):
                raise _unsupported("HANDLER ... READ with variables")
        # READ index = (values): a lookup by the index's columns; <, <=, >, >=: a range
        rest = [st.raw(j) for j in range(i + 1, len(st.code))]
        if "(" in rest:
            op = "".join(rest[1 : rest.index("(")])
            f.flags.add("handler_key_lookup" if op == "=" else "handler_key_range")
    else:
        raise _unsupported("HANDLER of this form")


def _t_load(st: _Stmt, f: _Facts) -> None:
    w = st.words()
    kind = st.word(1)
    if kind not in ("DATA", "XML"):
        raise _unsupported(f"LOAD {kind}")
    f.command = f"LOAD {kind}"
    f.klass = "WRITE"
    i = 2
    local = False
    while st.word(i) in ("LOW_PRIORITY", "CONCURRENT", "LOCAL"):
        local = local or st.word(i) == "LOCAL"
        i += 1
    if st.word(i) != "INFILE" or i + 1 >= len(st.code) or st.code[i + 1].kind != LITERAL:
        raise MySQLSyntaxError(f"LOAD {kind} without INFILE 'file'")
    filename = _string_value(st.raw(i + 1), st.mode)
    i += 2
    while st.word(i) in ("REPLACE", "IGNORE"):
        if st.word(i) == "REPLACE":
            f.commands.append("DELETE")
        i += 1
    if w[i : i + 2] != ["INTO", "TABLE"]:
        raise MySQLSyntaxError(f"LOAD {kind} without INTO TABLE")
    name, i = _qualified_name(st, i + 2)
    f.writes.add(name)
    if "." in name and name.split(".", 1)[0].lower() in SYSTEM_SCHEMAS:
        f.flags.add("catalog_write")
    if "SET" in w[i:]:
        raise _unsupported(f"LOAD {kind} ... SET (its expressions are not analysed)")
    if local:
        f.flags.add("local_infile")
    else:
        f.flags.add("copy_server_file")
    f.copy = CopyFacts("from", False, not local, filename)


def _t_rename(st: _Stmt, f: _Facts) -> None:
    f.command = "RENAME TABLE"
    f.flags.add("drop")  # the old names are gone for everything that used them
    i = 2
    while True:
        old, i = _qualified_name(st, i)
        if st.word(i) != "TO":
            raise MySQLSyntaxError("RENAME TABLE without TO")
        new, i = _qualified_name(st, i + 1)
        f.writes.update((old, new))
        if any("." in n and n.split(".", 1)[0].lower() in SYSTEM_SCHEMAS for n in (old, new)):
            f.flags.add("catalog_write")
        if i < len(st.code) and st.raw(i) == ",":
            i += 1
            continue
        _expect_end(st, i, "RENAME TABLE")
        return


def _t_lock(st: _Stmt, f: _Facts) -> None:
    if st.word(0) == "UNLOCK":
        if st.word(1) not in ("TABLE", "TABLES"):
            raise _unsupported("UNLOCK of this form")
        _expect_end(st, 2, "UNLOCK TABLES")
        f.command = "UNLOCK TABLES"
        return
    if st.word(1) not in ("TABLE", "TABLES"):
        raise _unsupported("LOCK of this form")
    f.command = "LOCK TABLE"
    f.flags.add("row_lock")
    i = 2
    while True:
        name, i = _qualified_name(st, i)
        f.reads.add(name)
        if st.word(i) == "AS":
            i += 1
        if st.word(i) not in ("READ", "WRITE", "LOW_PRIORITY"):
            _, i = _qualified_name(st, i)  # an alias
        if st.word(i) == "READ":
            i += 1
            if st.word(i) == "LOCAL":
                i += 1
        elif st.word(i) in ("WRITE", "LOW_PRIORITY"):
            if st.word(i) == "LOW_PRIORITY":
                i += 1
            if st.word(i) != "WRITE":
                raise MySQLSyntaxError("LOCK TABLES of this form")
            f.flags.add("disruptive_maintenance")
            i += 1
        else:
            raise MySQLSyntaxError("LOCK TABLES without READ or WRITE")
        if i < len(st.code) and st.raw(i) == ",":
            i += 1
            continue
        _expect_end(st, i, "LOCK TABLES")
        return


def _t_plugin(st: _Stmt, f: _Facts) -> None:
    """INSTALL/UNINSTALL PLUGIN/COMPONENT: loads (or unloads) a shared library."""
    what = st.word(1)
    if what not in ("PLUGIN", "COMPONENT", "SONAME"):
        raise _unsupported(f"{st.word(0)} {what}")
    f.command = f"{st.word(0)} {what}"
    f.flags.add("load")
    if st.word(0) == "UNINSTALL":
        f.flags.add("drop")


def _t_admin(st: _Stmt, f: _Facts) -> None:
    """SHUTDOWN, RESTART, KILL: act on the server or on other sessions."""
    f.command = st.word(0)
    f.flags.update(("disruptive_maintenance", "side_effect_function"))
    if f.command == "KILL":
        i = 1
        if st.word(i) in ("CONNECTION", "QUERY", "HARD", "SOFT"):
            i += 1
        if st.word(i) in ("CONNECTION", "QUERY"):
            i += 1
        if i + 1 != len(st.code) or st.code[i].kind != LITERAL:
            raise _unsupported("KILL of this form")
    else:
        _expect_end(st, 1, f.command)


def _t_analyze_table(st: _Stmt, f: _Facts) -> None:
    f.command = "ANALYZE"
    i = 1
    if st.word(i) in ("NO_WRITE_TO_BINLOG", "LOCAL"):
        i += 1
    if st.word(i) not in ("TABLE", "TABLES"):
        raise _unsupported("ANALYZE of this form")
    i += 1
    while True:
        name, i = _qualified_name(st, i)
        f.reads.add(name)
        if i < len(st.code) and st.raw(i) == ",":
            i += 1
            continue
        if i < len(st.code) and st.word(i) in ("PERSISTENT", "UPDATE", "DROP"):
            raise _unsupported("ANALYZE TABLE with options")
        _expect_end(st, i, "ANALYZE TABLE")
        return


# -- dispatch -----------------------------------------------------------------------------------

_Handler = Callable[[_Stmt, _Facts], None]


def _dispatch(st: _Stmt) -> tuple[str, StatementClass, _Handler]:
    w0, w1, w2 = st.word(0), st.word(1), st.word(2)
    if w0 in ("SELECT", "WITH") or (st.code and st.raw(0) == "("):
        return "SELECT", "READ", _t_query
    if w0 in ("INSERT", "REPLACE"):
        return w0, "WRITE", _t_insert
    if w0 == "UPDATE":
        return "UPDATE", "WRITE", _t_update
    if w0 == "DELETE":
        return "DELETE", "WRITE", _t_delete
    if w0 == "DO":
        return "DO", "READ", _t_do
    if w0 == "SET":
        if w1 == "PASSWORD" or (w1 == "DEFAULT" and w2 == "ROLE"):
            return "SET PASSWORD", "ROLE", _t_role
        if w1 == "ROLE":
            return "SET ROLE", "MISC_SET", _t_set_role
        return "SET", "MISC_SET", _t_set
    if w0 in ("GRANT", "REVOKE"):
        return w0, "ROLE", _t_role
    if w0 in ("CREATE", "ALTER", "DROP", "RENAME") and w1 in ("USER", "ROLE"):
        return f"{w0} {w1}", "ROLE", _t_role
    if w0 == "DROP" and w1 == "PREPARE":
        return "DEALLOCATE", "MISC", _t_deallocate
    if w0 == "DROP":
        return "DROP", "DDL", _t_drop
    if w0 == "CREATE":
        return "CREATE", "DDL", _t_create
    if w0 == "ALTER":
        return "ALTER TABLE", "DDL", _t_alter
    if w0 == "RENAME" and w1 in ("TABLE", "TABLES"):
        return "RENAME TABLE", "DDL", _t_rename
    if w0 == "TRUNCATE":
        return "TRUNCATE", "WRITE", _t_truncate
    if w0 in ("BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE"):
        return w0, "MISC", _t_transaction
    if w0 in ("EXPLAIN", "DESCRIBE", "DESC"):
        return "EXPLAIN", "MISC", _t_explain
    if w0 == "ANALYZE":
        if w1 in ("TABLE", "TABLES", "NO_WRITE_TO_BINLOG", "LOCAL"):
            return "ANALYZE", "MISC", _t_analyze_table
        return "EXPLAIN ANALYZE", "MISC", _t_explain
    if w0 == "SHOW":
        return "SHOW", "MISC", _t_show
    if w0 == "USE":
        return "USE", "MISC", _t_use
    if w0 == "CALL":
        return "CALL", "FUNCTION", _t_call
    if w0 == "PREPARE":
        return "PREPARE", "MISC", _t_prepare
    if w0 == "EXECUTE":
        return "EXECUTE", "MISC", _t_execute
    if w0 == "DEALLOCATE":
        return "DEALLOCATE", "MISC", _t_deallocate
    if w0 == "HANDLER":
        return "HANDLER", "MISC", _t_handler
    if w0 == "LOAD":
        return "LOAD DATA", "WRITE", _t_load
    if w0 in ("LOCK", "UNLOCK"):
        return "LOCK TABLE", "MISC", _t_lock
    if w0 in ("INSTALL", "UNINSTALL"):
        return f"{w0} PLUGIN", "DDL", _t_plugin
    if w0 in ("SHUTDOWN", "RESTART", "KILL"):
        return w0, "MISC", _t_admin
    shown = st.raw(0) if st.code else ""
    raise MySQLUnsupported(
        f"dbsentry cannot analyse MySQL statement {shown[:40]!r}",
        st.code[0].start if st.code else None,
    )


# Statements whose expressions sqlglot reads: their function calls are checked.
_WITH_EXPRESSIONS: frozenset[_Handler] = frozenset(
    {_t_query, _t_insert, _t_update, _t_delete, _t_do, _t_set, _t_call, _t_create, _t_alter}
)


def _statement_facts(st: _Stmt, span: tuple[int, int], text: str = "") -> StatementFacts:
    command, klass, handler = _dispatch(st)
    if handler is not _t_query and {"OUTFILE", "DUMPFILE"} & set(st.words()):
        raise _unsupported(f"INTO OUTFILE/DUMPFILE in {command}")
    f = _Facts(command, klass)
    handler(st, f)
    if handler in _WITH_EXPRESSIONS:
        _function_flags(f, st)
    if "catalog_write" in f.flags:
        f.klass = "DDL" if f.klass in ("WRITE", "READ") else f.klass
        f.classes.append("DDL")
    commands = tuple(dict.fromkeys([f.command, *f.commands]))
    classes = tuple(dict.fromkeys([f.klass, *f.classes]))
    flags = frozenset(f.flags)
    return StatementFacts(
        command=f.command,
        statement_class=f.klass,
        commands=commands,
        classes=classes,
        tables_read=tuple(sorted(f.reads)),
        tables_written=tuple(sorted(f.writes)),
        columns_read=tuple(sorted(f.columns)),
        functions=tuple(sorted(f.functions)),
        has_where=f.has_where,
        where_trivially_true=f.where_true,
        flags=flags,
        risk=risk_of(classes, flags),
        copy=f.copy,
        prepared_name=f.prepared,
        inner=f.inner,
        settings=tuple(sorted(f.settings)),
        span=span,
        text=text,
        fingerprinter=partial(fingerprint, mode=st.mode),
    )


def fingerprint(sql: str, mode: SqlMode = DEFAULT_MODE) -> str:
    """16 hex digits that statements differing only in constants, layout, comments and
    keyword case share (from the MySQL lexer's tokens; a text it refuses is its own)."""
    try:
        toks = tokens(sql, mode)
    except AnalysisRefused:
        return hashlib.blake2b(sql.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    parts = []
    for t in toks:
        if t.kind == COMMENT:
            continue
        piece = sql[t.start : t.end]
        parts.append("?" if t.kind == LITERAL else piece.lower() if t.kind == OTHER else piece)
    while parts and parts[-1] == ";":
        parts.pop()
    return hashlib.blake2b(
        " ".join(parts).encode("utf-8", "surrogatepass"), digest_size=8
    ).hexdigest()


def _blanked(sql: str, toks: Sequence[Token]) -> str:
    """The text with every comment replaced by spaces (offsets kept)."""
    parts, pos = [], 0
    for t in toks:
        if t.kind == COMMENT:
            parts.append(sql[pos : t.start])
            parts.append(" " * (t.end - t.start))
            pos = t.end
    parts.append(sql[pos:])
    return "".join(parts)


def analyze(sql: str, mode: SqlMode = DEFAULT_MODE) -> tuple[StatementFacts, ...]:
    """The facts of every statement of ``sql`` (MySQL 8 / MariaDB 10.11 under ``mode``).
    Raises :class:`~dbsentry.governance.facts.AnalysisRefused` (``42601`` not valid,
    ``0A000`` not understood, ``54001`` too complex, ``XX000`` the analysis failed)."""
    return _each_statement(sql, mode, lambda st, span: _statement_facts(st, span, sql[span[0] : span[1]]))


_T = TypeVar("_T")


def _each_statement(
    sql: str, mode: SqlMode, read: Callable[[_Stmt, tuple[int, int]], _T]
) -> tuple[_T, ...]:
    """``read`` of every statement of ``sql`` (its text with comments blanked, its code
    tokens, its span), failing closed: any error but a refusal is ``XX000``."""
    try:
        toks = tokens(sql, mode)
        blank = _blanked(sql, toks)
        out = []
        for start, end, stoks in split(sql, toks):
            code = [
                Token(t.kind, t.start - start, t.end - start) for t in stoks if t.kind != COMMENT
            ]
            out.append(read(_Stmt(blank[start:end], code, mode), (start, end)))
        return tuple(out)
    except AnalysisRefused:
        raise
    except RecursionError:
        raise MySQLTooComplex("nested too deeply") from None
    except Exception as err:
        raise MySQLAnalysisError(f"the MySQL analysis failed: {type(err).__name__}") from None


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """A query statement as masking reads it: sqlglot's tree, checked against the lexer and
    walked on the allow-list exactly as :func:`analyze` does, and its function calls."""

    tree: exp.Expression
    #: Every function call as written (``name`` or ``db.name``, lower case, from the tokens).
    calls: tuple[str, ...]
    #: It calls a stored or loadable function (not a built-in both servers share).
    opaque_calls: bool
    #: ``SELECT ... INTO @var`` or ``INTO OUTFILE/DUMPFILE``: no rows go to the client.
    into: bool


def parse_queries(sql: str, mode: SqlMode = DEFAULT_MODE) -> tuple[ParsedQuery | None, ...]:
    """Per statement of ``sql``: its :class:`ParsedQuery` when it is a query (``SELECT``,
    ``WITH``, a set operation, a parenthesised query), else None.  Refuses what
    :func:`analyze` refuses (raises :class:`~dbsentry.governance.facts.AnalysisRefused`)."""
    return _each_statement(sql, mode, _parsed_query)


def _parsed_query(st: _Stmt, span: tuple[int, int]) -> ParsedQuery | None:
    command, klass, handler = _dispatch(st)
    if handler is not _t_query:
        return None
    f = _Facts(command, klass)
    edits = _into_clause(st, f)
    tree = _glot(st, edits)
    if not isinstance(tree, (exp.Subquery, *_QUERIES)):
        raise _unsupported(f"{type(tree).__name__} as a query")
    _Walk(f).query(tree)
    _function_flags(f, st)
    return ParsedQuery(tree, tuple(_calls(st)), "volatile_function" in f.flags, bool(edits))


def parse_writes(sql: str, mode: SqlMode = DEFAULT_MODE, *, deletes: bool = False) -> tuple[ParsedQuery | None, ...]:
    """Per statement of ``sql``: its :class:`ParsedQuery` (sqlglot's tree, as :func:`analyze`
    reads it) when it is an ``INSERT``, ``REPLACE``, ``UPDATE`` or ``CREATE TABLE`` (and a
    ``DELETE`` with ``deletes``), else None.  What masking reads to find copies of
    classified values, and the conditions of the rows a write matches.  Refuses what
    :func:`analyze` refuses."""
    return _each_statement(sql, mode, partial(_parsed_write, deletes=deletes))


def _parsed_write(st: _Stmt, span: tuple[int, int], deletes: bool = False) -> ParsedQuery | None:
    command, klass, handler = _dispatch(st)
    if handler is _t_insert:
        tree = _insert_tree(st)
    elif handler is _t_update:
        tree = _update_tree(st)
    elif handler is _t_delete and deletes:
        tree = _delete_tree(st)
    elif handler is _t_create:
        tree = _glot(st)
    else:
        return None
    f = _Facts(command, klass)
    _function_flags(f, st)
    return ParsedQuery(tree, tuple(_calls(st)), "volatile_function" in f.flags, False)


def analyzer(mode: SqlMode = DEFAULT_MODE) -> Callable[[str], tuple[StatementFacts, ...]]:
    """The :data:`~dbsentry.governance.facts.Analyzer` of a session in ``mode``."""
    return partial(analyze, mode=mode)


# re-exported for callers that handle lexical refusals apart
_ = (MySQLLexRefused, MySQLSyntaxError)

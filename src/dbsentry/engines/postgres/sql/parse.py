"""One parse (and one scan) per statement text, shared by everything that reads it.

The facts, column lineage, the copies check, literal redaction for the audit, correlation
ids, the approval key and the fingerprint all read the same statement.  They ask here, and
libpg_query runs once per distinct text: the results are kept in a small LRU by exact text
(bounded by entries and by bytes; errors are kept too, so a bad statement sent again is
not parsed again).

:func:`seed` lets the facts hand over what they parsed for each statement of a
multi-statement string, its locations rebased to the statement's own text, so the
statements are not parsed a second time one by one.  :func:`fingerprint` is computed from
the parse tree's JSON (libpg_query's own fingerprint would parse the text again): the tree
without locations, constants and parameter numbers, hashed.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import orjson
from pglast import parser as _pg

from dbsentry.governance.text import COMMENT, LITERAL, OTHER, QUOTED_IDENT, Token

ParseError = _pg.ParseError

MAX_ENTRIES = 128
_MAX_ENTRY = 16 * 1024  # characters of a statement worth keeping (its tree is ~20 times that)


class _Recent:
    """The last MAX_ENTRIES results by exact text, oldest out first.  A plain dict: its
    single operations are atomic under the GIL, and a lost race costs one parse, not a
    wrong answer (a text always maps to its own parse)."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def put(self, key: str, value: Any) -> None:
        if len(key) > _MAX_ENTRY:
            return
        data = self._data
        if len(data) >= MAX_ENTRIES:
            try:
                del data[next(iter(data))]
            except (KeyError, StopIteration, RuntimeError):
                data.clear()
        data[key] = value

    def clear(self) -> None:
        self._data.clear()


_trees = _Recent()
_scans = _Recent()
_tokens = _Recent()
_fingerprints = _Recent()


def parse_json(sql: str) -> str:
    """pglast's JSON parse tree of ``sql``; raises ``ParseError`` as pglast does."""
    got = _trees._data.get(sql)
    if type(got) is str:
        return got
    if got is None:
        try:
            got = _pg.parse_sql_json(sql)
        except ParseError as err:
            _trees.put(sql, err)
            raise
        _trees.put(sql, got)
        return str(got)
    if type(got) is _Seed:
        got = got.tree()
        _trees.put(sql, got)
        return got
    raise got


class _Seed:
    """A statement's part of a string's parse, turned into its own tree when asked for.
    Holds the string's JSON (no parse tree objects: nothing for the collector to walk)."""

    __slots__ = ("index", "offset", "tree_json")

    def __init__(self, tree_json: str, index: int, offset: int) -> None:
        self.tree_json, self.index, self.offset = tree_json, index, offset

    def tree(self) -> str:
        whole = orjson.loads(self.tree_json)
        return rebased(whole["stmts"][self.index], self.offset, whole.get("version"))


def seed(sql: str, tree_json: str, index: int, offset: int, alone: bool) -> None:
    """Statement ``index`` of the string whose parse is ``tree_json`` (from byte
    ``offset``) is ``sql``.  When it is the string's only statement, from its start (the
    string is ``sql`` and a semicolon or blanks), that parse is ``sql``'s as it is;
    otherwise :func:`parse_json` builds its own tree from it if asked."""
    _trees.put(sql, tree_json if alone and not offset else _Seed(tree_json, index, offset))


def scan(sql: str) -> list[Any]:
    """PostgreSQL's scanner tokens of ``sql``; raises as pglast's scanner does."""
    got = _scans._data.get(sql)
    if got is None:
        try:
            got = _pg.scan(sql)
        except Exception as err:
            _scans.put(sql, err)
            raise
        _scans.put(sql, got)
        return got
    if isinstance(got, Exception):
        raise got
    return got  # type: ignore[no-any-return]


_KINDS = {
    "SCONST": LITERAL,
    "USCONST": LITERAL,
    "ICONST": LITERAL,
    "FCONST": LITERAL,
    "BCONST": LITERAL,
    "XCONST": LITERAL,
    "C_COMMENT": COMMENT,
    "SQL_COMMENT": COMMENT,
}


def tokens(sql: str) -> tuple[Token, ...]:
    """:func:`scan` in the engine-neutral terms of ``dbsentry.governance.text`` (the
    :data:`~dbsentry.governance.text.Lexer` of PostgreSQL); raises as :func:`scan` does."""
    got = _tokens._data.get(sql)
    if got is not None:
        return got  # type: ignore[no-any-return]
    kinds = _KINDS
    out = tuple(
        Token(
            kinds.get(t.name) or (QUOTED_IDENT if t.name == "IDENT" and sql[t.start] == '"' else OTHER),
            t.start,
            t.end + 1,
        )
        for t in scan(sql)
    )
    _tokens.put(sql, out)
    return out


# Constants and parameters (objects at most two levels deep; strings with their escapes),
# and locations: what a fingerprint leaves out.
_STRING = r'"(?:[^"\\]|\\.)*"'
_FLAT = r'\{(?:[^{}"]|' + _STRING + r")*\}"
_BODY = r'\{(?:[^{}"]|' + _STRING + "|" + _FLAT + r")*\}"
_VALUE_RE = re.compile(r'\{"(?:A_Const|ParamRef)":' + _BODY + r"\}")
#: Every constant of a parse tree's JSON: group 1 is its A_Const object (value, location).
A_CONST_RE = re.compile(r'\{"A_Const":(' + _BODY + r")\}")
# (a comma left behind is harmless: the text is hashed, not read).  Every field that holds
# an offset in the text (PostgreSQL 18 added the bounds of IN lists): they move with the
# lengths of the constants.
_LOCATION_RE = re.compile(
    r'"(?:location|stmt_location|stmt_len|arg_location|name_location|payload_location|conninfo_location'
    r'|list_start|list_end|rexpr_list_start|rexpr_list_end)":-?\d+,?'
)


def fingerprint(sql: str) -> str:
    """16 hex digits that statements differing only in constants (or ``$n`` numbers),
    layout and comments share; raises ``ParseError`` for text that does not parse."""
    got = _fingerprints.get(sql)
    if got is None:
        shape = _LOCATION_RE.sub("", _VALUE_RE.sub('{"?":{}}', parse_json(sql)))
        got = hashlib.blake2b(shape.encode(), digest_size=8).hexdigest()
        _fingerprints.put(sql, got)
    return str(got)


def rebased(raw_stmt: dict[str, Any], offset: int, version: Any) -> str:
    """The JSON parse tree of one statement of a string, as if it had been parsed alone
    from byte ``offset`` on: every location moved back by ``offset``."""
    stmt = raw_stmt.get("stmt")
    if offset:

        def shift(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: (v - offset if k == "location" and isinstance(v, int) and v >= 0 else shift(v)) for k, v in node.items()}
            if isinstance(node, list):
                return [shift(v) for v in node]
            return node

        stmt = shift(stmt)
    return orjson.dumps({"version": version, "stmts": [{"stmt": stmt}]}).decode()


def clear() -> None:
    """Forget everything (tests)."""
    _trees.clear()
    _scans.clear()
    _tokens.clear()
    _fingerprints.clear()

"""Shapes (dbsentry.engines.postgres.sql.shape): a ruling kept for a Query's shape is the ruling its own
text gets.

Three levels: the lexical subset agrees with PostgreSQL's scanner; a certified shape has
the same facts whatever its constants; and a session that judges Queries by their shape
answers every statement exactly as a fresh session judging its text alone does, over the
always-true-WHERE corpus and random statements and constants.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_masking_lineage import FUNCTIONS, ROWS, VIEWS

from dbsentry.audit.config import AuditConfig
from dbsentry.config import parse_config
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import ClientData, UpstreamData
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.engines.postgres.session.masking import MaskingService
from dbsentry.engines.postgres.session.pg import ClientInfo, Session
from dbsentry.engines.postgres.sql import parse, shape
from dbsentry.engines.postgres.sql.facts import SQLParseError, analyze
from dbsentry.engines.postgres.wire import codec
from dbsentry.identity.model import Identity
from dbsentry.masking.catalog import Catalog, classify_catalog
from support.login import logged_in

# The always-true-WHERE corpus of test_sql_facts (tautologies, then real conditions).
TAUTOLOGIES = [
    "1=1", "true", "'a'='a'", "not false", "1 in (1)", "1 in (2, 1)", "id = id", "t.id = t.id",
    "x is not null or true", "x = 5 or 1 = 1", "true and 1 = 1", "'1'::int = 1", "'t'::boolean",
    "1 <> 2", "2 > 1", "1 between 0 and 2", "'abc' like '%'", "id is not distinct from id",
    "exists (select 1)", "(select true)", "coalesce(null, true)", "1 = any(array[1, 2])",
    "null is null", "true is true", "-1 < 0", "'a' || 'b' = 'ab'", "1 + 1 = 2", "not (1 = 2)",
    "((1 = 1))", "1 = 1 /* and id = 5 */", "id >= id",
]  # fmt: skip
REAL_WHERES = [
    "id = 5", "1 = 2", "false", "x is not null", "x = 5 and true", "id = other_id",
    "created_at < now()", "current_timestamp > current_timestamp", "1 in (2, 3)",
    "exists (select 1 from s where s.id = t.id)", "random() < 0.5", "'a' = 'b'", "null",
    "id in (select id from s)", "name like 'a%'",
]  # fmt: skip
WHERES = TAUTOLOGIES + REAL_WHERES
# Statements around a WHERE: writes are never judged by shape (their WHERE is folded);
# the SELECTs may be, and must then be judged alike whatever the constants.
AROUND = [
    "delete from t where {}",
    "update t set a = 1 where {}",
    "with d as (delete from t where {} returning *) select * from d",
    "select * from t where {}",
    "select count(*) from t where {} order by 1",
]

INTS = st.one_of(
    st.integers(0, 20), st.integers(0, 2**31 + 10), st.sampled_from(["007", "2147483647", "2147483648", "99999999999"])
).map(str)
FLOATS = st.tuples(st.integers(0, 10**6), st.integers(0, 999)).map(lambda t: f"{t[0]}.{t[1]}")
STRINGS = st.one_of(
    st.text(st.sampled_from("abc xyz'-/*@.0123456789"), max_size=12),
    st.sampled_from(
        ["ann@example.com", "4111111111111111", "123-45-6789", "+1 (415) 555-0100", "it's", "--", "/*", "a%", "t", "yes"]
    ),
).map(lambda s: "'" + s.replace("'", "''") + "'")
BY_KIND = {shape.INT: INTS, shape.NUMERIC: FLOATS, shape.STRING: STRINGS}


def other_constants(kinds: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    """Constants of these kinds (the scanner's kind: an int4, a numeric, a string)."""
    return st.tuples(*(BY_KIND[k] for k in kinds)).map(list).map(
        lambda cs: [c if shape.kind(c) == k else ("1.5" if k == shape.NUMERIC else "1") for c, k in zip(cs, kinds, strict=True)]
    )


# -- 1. the lexical subset and PostgreSQL's scanner ---------------------------------------

_LITERALS = {"ICONST": shape.INT, "FCONST": shape.NUMERIC, "SCONST": shape.STRING}
_PIECES = [
    "select", " ", "from", "t", "t1", "x_2", "where", "=", "<>", "(", ")", ",", ".", "::", "int", ";", "\n",
    "'a'", "'it''s'", "''", "1", "0", "42", "007", "3.5", "1.", ".5", "1e5", "2147483648", "E", "N", "U&",
    "B", "X", "$1", "$$", '"q"', "--", "/*", "*/", "\\", "-", "+", "&", "$", "'", "é", "\t",
]  # fmt: skip


def constants_of(sql: str) -> list[tuple[int, str]] | None:
    """Where the shape puts constants in ``sql`` (None: not in the subset)."""
    got = shape.split(sql)
    if got is None:
        return None
    key, constants = got
    kinds = shape.kinds(key, constants)
    if kinds is None:
        return None
    assert shape.text_of(key, constants) == sql
    out, pos = [], 0
    for part, constant, k in zip(key.split("\x00"), constants, kinds, strict=False):
        pos += len(part)
        out.append((pos, k))
        pos += len(constant)
    return out


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.sampled_from(_PIECES), max_size=14).map("".join))
def test_the_subset_sees_the_constants_postgresql_scans(sql: str) -> None:
    ours = constants_of(sql)
    if ours is None:
        return
    try:
        tokens = parse.scan(sql)
    except Exception:
        return  # an unterminated something: the parser refuses it, nothing is kept
    scanned = [(t.start, _LITERALS.get(t.name, t.name)) for t in tokens if t.name.endswith("CONST")]
    assert scanned == ours, sql
    assert not [t for t in tokens if "COMMENT" in t.name or t.name in ("PARAM", "UIDENT")]


@pytest.mark.parametrize(
    "sql",
    [
        "select E'a'", "select N'a'", "select B'1'", "select X'1f'", "select U&'d'", "select $1", "select $$a$$",
        'select "q"', "select 1 -- c", "select /* c */ 1", "select t.5", "select 1.2.3", "select 1e5", "select 'a\\b'",
        "select 1; select 2", "select 'é'", "select 'a''b'c", "select 1'a'", "select 0x1F", "select 1_000",
    ],
)  # fmt: skip
def test_outside_the_subset(sql: str) -> None:
    assert constants_of(sql) is None


# -- 2. a certified shape has the same facts whatever its constants ----------------------

SHAPES = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = {i};",
    "select email, name from customers where id = {i}",
    "select * from customers where email = {s}",
    "select id from orders where total > {f} and customer_id in ({i}, {i})",
    "select count(*) from orders where id between {i} and {i} limit {i}",
    "select name from customers where notes like {s} limit {i}",
    "select {i} + {i}, {s}, {f}",
    "select {s}::text",
    "select email from customers order by {i}",
    "select email from customers group by {i}",
    "select distinct on ({i}) email from customers",
    "select set_config({s}, {s}, false)",
    "select current_setting({s})",
    "with x as (select {i} as a) select a from x where a = {i}",
    "select pg_sleep({f})",
    "select nextval({s})",
    "select * from customers where ssn = {s} and id > {i}",
    "select 1::varchar({i})",
    "select interval {s}",
    "select * from customers c join orders o on o.customer_id = c.id where o.total < {f}",
    "select (select max(total) from orders where id = {i}) as m",
    "select * from customers where id = -{i}",
    "select {s}\n{s}",
    "select * from customers for update",
    "delete from customers where id = {i}",
    "update orders set total = {f} where id = {i}",
    "insert into orders values ({i}, {i}, {f})",
    # pgbench's TPC-B, its constants negative half the time
    "UPDATE pgbench_accounts SET abalance = abalance + {i} WHERE aid = {i};",
    "UPDATE pgbench_accounts SET abalance = abalance + -{i} WHERE aid = {i};",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({i}, {i}, {i}, -{i}, CURRENT_TIMESTAMP);",
    "update orders set total = total - {i} where id = {i}",
    "update orders set total = {f} where id in ({i}, {i}) and customer_id between {i} and {i}",
    "update orders set total = {f} where {i} = id or {i} < id",
    "update orders set total = {f} where id = {i} or {i} = {i}",
    "update orders set total = {f} where id = {i} + {i}",
    "delete from orders where id = {i} and exists (select 1 from customers where id = {i})",
    "delete from orders where id > -{i}",
    "delete from orders where id = any(array[{i}, {i}])",
    "delete from orders where id in (select {i})",
    "delete from orders where id = {i} returning total",
    "update customers set email = {s} where id = {i} returning email",
    "update customers set notes = email where id = {i}",
    "insert into orders select {i}, {i}, {f} where {i} = {i}",
    "insert into orders values ({i}, {i}, {f}) on conflict (id) do update set total = {f} where orders.id = {i}",
    "insert into orders values ({i}, {i}, {f}) on conflict (id) do update set total = {f} where {i} = {i}",
    "with d as (delete from orders where id = {i} returning *) select * from d",
    "merge into orders o using customers c on o.customer_id = c.id when matched and o.id = {i} then delete",
    "update orders set total = {f} where id = {i}; update orders set total = {f} where id = {i}",
    "set statement_timeout = {i}",
    "explain select * from customers where id = {i}",
    *(around.format(where) for around in AROUND for where in WHERES),
]

_SLOT = re.compile(r"\{([isf])\}")
_FIRST = {"i": "1", "s": "'a'", "f": "1.5"}


def first_text(template: str) -> str:
    return _SLOT.sub(lambda m: _FIRST[m.group(1)], template)


def facts_of(sql: str) -> tuple[Any, ...] | None:
    try:
        return tuple(analyze(sql))
    except SQLParseError:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(SHAPES), st.data())
def test_a_certified_shape_has_the_facts_of_every_text(template: str, data: st.DataObject) -> None:
    sql = first_text(template)
    facts = facts_of(sql)
    if facts is None:
        return
    found = shape.shape_of(sql, facts)
    if found is None:
        return
    key, kinds = found
    assert facts[0].command in ("SELECT", "INSERT", "UPDATE", "DELETE") and "always_true_where" not in facts[0].flags
    other = shape.text_of(key, data.draw(other_constants(kinds))) if kinds else sql
    theirs = facts_of(other)
    assert theirs is not None and theirs == facts, other
    assert shape.same_kinds(shape.split(other)[1], kinds)  # type: ignore[index]
    span = facts[0].span
    derived = other[span[0] : len(other) - (len(sql) - span[1])].strip()
    assert derived == theirs[0].text


def _where_constants_compare_columns(sql: str) -> bool:
    """Independently of shape.py: every number or string of the WHERE is the operand of a
    comparison whose other side is a bare column name (a WHERE the corpus writes as
    ``where <condition>``, nothing after it)."""
    where = sql.lower().split(" where ", 1)[1]
    where = re.sub(r"\s+", " ", where)
    # the comparisons with a column: remove them, then no constant may be left
    column = r"(?:[a-z_]+\.)?[a-z_]+"
    constant = r"(?:-?[0-9][0-9.]*|'[^']*')"
    comparison = rf"(?:{column} ?(?:=|<>|!=|<=|>=|<|>) ?{constant}|{constant} ?(?:=|<>|!=|<=|>=|<|>) ?{column})"
    rest = re.sub(comparison, "C", where)
    rest = re.sub(rf"{column} in \({constant}(?:, ?{constant})*\)", "C", rest)
    rest = re.sub(rf"{column} (?:not )?between {constant} and {constant}", "C", rest)
    return re.search(constant, rest) is None


@pytest.mark.parametrize("where", WHERES)
def test_a_write_is_judged_by_shape_only_when_its_where_reads_no_constant(where: str) -> None:
    """The corpus around UPDATE and DELETE: a shape only when every constant of the WHERE
    is compared with a column (then folding it gives "unknown" whatever the constants);
    never for an always-true WHERE; never in a data-modifying CTE."""
    for around in AROUND[:3]:
        sql = around.format(where)
        facts = facts_of(sql)
        assert facts is not None
        found = shape.shape_of(sql, facts)
        if around.startswith("with") or "always_true_where" in facts[0].flags:
            assert found is None, sql
        elif found is not None:
            assert _where_constants_compare_columns(sql), sql


# Constants chosen to make a folded comparison true and false: equal and unequal pairs,
# the same digits as text and as number, zero, negative-looking ones.
_EDGE = {
    shape.INT: ["0", "1", "2", "007", "7", "2147483647"],
    shape.NUMERIC: ["0.0", "1.0", "1.5", "2147483648"],
    shape.STRING: ["''", "'1'", "'a'", "'t'", "'A'", "'%'"],
}


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([a.format(w) for a in AROUND[:2] for w in WHERES]), st.data())
def test_the_always_true_question_of_a_write_shape_does_not_depend_on_its_constants(sql: str, data: st.DataObject) -> None:
    """The corpus around UPDATE and DELETE, every constant replaced by values that make
    comparisons true or false: where the shape is used, every text of it has the facts
    of the first (so, the same always-true answer)."""
    got = shape.split(sql)
    assert got is not None
    key, constants = got
    kinds = shape.kinds(key, constants)
    if kinds is None:
        return
    for first in (constants, [_EDGE[k][0] for k in kinds]):
        text = shape.text_of(key, first)
        facts = facts_of(text)
        if facts is None or shape.shape_of(text, facts) is None:
            continue
        other = shape.text_of(key, [data.draw(st.sampled_from(_EDGE[k])) for k in kinds])
        assert facts_of(other) == facts, (text, other)


@pytest.mark.parametrize(
    "sql",
    [
        "select email from customers order by 2",
        "select email from customers group by 1",
        "select distinct on (1) email from customers",
        "select set_config('role', 'x', false)",
        "select * from customers where id = - 5",
        "select * from customers where id = - -5",
        "select 'a'\n'b'",
        "select float(10) '1'",
        "select * from t where 1=1; select 2",
        "select interval '1' day",
    ],
)
def test_constants_that_are_read_keep_a_statement_to_its_text(sql: str) -> None:
    facts = facts_of(sql)
    assert facts is not None
    assert shape.shape_of(sql, facts) is None


@pytest.mark.parametrize(
    ("sql", "kinds"),
    [
        ("UPDATE pgbench_accounts SET abalance = abalance + -3220 WHERE aid = 43512;", (shape.INT, shape.INT)),
        ("UPDATE pgbench_tellers SET tbalance = tbalance + 4711 WHERE tid = 7;", (shape.INT, shape.INT)),
        ("INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (5, 1, 43512, -3220, CURRENT_TIMESTAMP);", (shape.INT,) * 4),
        ("delete from t where id in (1, 2) and name = 'x'", (shape.INT, shape.INT, shape.STRING)),
        ("select * from customers where id = -5", (shape.INT,)),
    ],
)
def test_pgbench_writes_and_negative_numbers_are_judged_by_shape(sql: str, kinds: tuple[str, ...]) -> None:
    found = shape.shape_of(sql, tuple(analyze(sql)))
    assert found is not None and found[1] == kinds


@pytest.mark.parametrize(
    "sql",
    [
        "update t set a = 1 where id = 5 or 1 = 2",  # 1 = 2 folds: its constants are read
        "update t set a = 1 where id = 1 + 2",
        "update t set a = 1 where id::int = 5",
        "update t set a = 1 where coalesce(id, 5) = 5",
        "delete from t where 5 is not null and id = 1",
        "delete from t where id = any(array[1, 2])",
        "delete from t where exists (select where 1 = 1) and id = 2",
        "with d as (delete from t where id = 1 returning *) select * from d",
        "merge into t using s on t.id = s.id when matched and t.id = 1 then delete",
    ],
)
def test_writes_whose_constants_are_read_keep_to_their_text(sql: str) -> None:
    facts = facts_of(sql)
    assert facts is not None
    assert shape.shape_of(sql, facts) is None, sql


def test_the_pgbench_select_is_judged_by_shape() -> None:
    sql = "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;"
    found = shape.shape_of(sql, tuple(analyze(sql)))
    assert found == ("SELECT abalance FROM pgbench_accounts WHERE aid = \x00;", (shape.INT,))


# -- 3. a session judging by shape answers as a fresh session does -----------------------

CONFIG = parse_config(
    {
        "tls": {"require_client_tls": False},
        "connections": {"app": {"database": "app", "user": "postgres", "environment": "production"}},
        "guardrails": {"max_rows_changed": None, "max_fraction_changed": None},
    },
    Path("."),
)
CATALOG = Catalog.from_rows(ROWS, VIEWS, FUNCTIONS, ("public",))
CLASSMAP = classify_catalog(CATALOG)
ANN = Identity("ann@example.com", frozenset({"eng"}), "human", "t", "token")
_MARKER = re.compile(r"dbsentry refused statement [0-9a-f]+-\d+")
_VOLATILE = ("id", "time", "session_id", "statement_id", "duration_ms")


def new_session(redact: bool | str = "sensitive") -> Session:
    service = MaskingService(CONFIG.masking, b"k" * 32)
    service.install("app", CATALOG, CLASSMAP)
    audit = AuditConfig(redact_literals=redact)  # type: ignore[arg-type]
    session = Session(
        CONFIG, ClientInfo("127.0.0.1:5000"), 1, b"1234", governor=Governor.from_path(None), audit_config=audit
    )
    session.masking_service = session.catalog_service = service
    return logged_in(session, ANN, "app")


_ROWS = (
    codec.frame(b"T", b"\x00\x01email\x00" + bytes(6) + (25).to_bytes(4, "big") + b"\xff\xff\xff\xff\xff\xff\x00\x00")
    + codec.frame(b"D", b"\x00\x01" + (15).to_bytes(4, "big") + b"ann@example.com")
    + codec.frame(b"C", b"SELECT 1\x00")
)


def _records(cmds: list[c.Command]) -> list[dict[str, Any]]:
    out = []
    for cmd in cmds:
        records = cmd.records if isinstance(cmd, c.AuditGate) else [cmd.record] if isinstance(cmd, c.Audit) else []
        for r in records:
            out.append({k: v for k, v in r.canonical_mapping().items() if k not in _VOLATILE})
    return out


def _frames(data: bytes) -> list[tuple[int, str]]:
    """Messages by type and body, markers made alike (their numbers differ by session)."""
    buf, spans = codec.FrameSplitter().split(data)
    return [(t, _MARKER.sub("M", buf[start:end].decode("utf-8", "replace"))) for t, start, end in spans]


def exchange(session: Session, sql: str) -> dict[str, Any]:
    """What the session does with one Query and its answer, without what differs between
    sessions (ids, times, marker numbers)."""
    cmds = session.handle(ClientData(codec.encode_query(sql)))
    then = [x for cmd in cmds if isinstance(cmd, c.AuditGate) for x in cmd.then]
    upstream = b"".join(x.data for x in [*cmds, *then] if isinstance(x, c.SendUpstream))
    marker = _MARKER.search(upstream.decode("utf-8", "replace"))
    if marker is not None:
        answer = codec.error_response("22P02", f'invalid input syntax for type integer: "{marker.group(0)}"')
    else:
        answer = _ROWS
    back = session.handle(UpstreamData(answer + codec.encode_ready("I")))
    client = b"".join(x.data for x in back if isinstance(x, c.SendClient))
    logs = sorted(str(x.event) for x in [*cmds, *back] if isinstance(x, c.Log))
    return {
        "upstream": _frames(upstream),
        "client": _frames(client),
        "records": _records([*cmds, *back]),
        "logs": logs,
        "kinds": [type(x).__name__ for x in [*cmds, *then, *back]],
    }


def _texts(template: str, data: st.DataObject) -> str:
    key, constants = shape.split(first_text(template)) or ("", [])
    kinds = tuple(shape.kind(k) or shape.STRING for k in constants)
    return shape.text_of(key, data.draw(other_constants(kinds))) if constants else first_text(template)


class _ByText(Session):
    """A session that judges every text by itself (it never keeps a shape's ruling)."""

    __slots__ = ()

    def _remember_shape(self, *args: Any, **kwargs: Any) -> None:
        return None


def by_text_only(session: Session) -> Session:
    session.__class__ = _ByText
    return session


# Mostly SELECTs (which may be judged by shape), and every kind of statement between them.
STATEMENTS = st.one_of(
    st.sampled_from([t for t in SHAPES if t.lower().startswith("select")]), st.sampled_from(SHAPES)
)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(STATEMENTS, min_size=1, max_size=4), st.data(), st.sampled_from(["sensitive", False, True]))
def test_a_session_judging_by_shape_answers_as_a_fresh_one(templates: list[str], data: st.DataObject, redact: Any) -> None:
    """Message by message and record by record, a session that judges by shape answers as
    one with the same history that judges every text by itself (history matters: values a
    session has masked before are looked for in what comes later), and, where the history
    cannot matter (no value masked yet), as a fresh session."""
    long_lived = new_session(redact)
    by_text = by_text_only(new_session(redact))
    for template in templates:
        for _ in range(4):  # the first text of a shape is judged by its text; the others by the shape
            sql = _texts(template, data)
            got = exchange(long_lived, sql)
            assert got == exchange(by_text, sql), sql
            if long_lived.masking is None or not len(long_lived.masking.touched):
                assert got == exchange(new_session(redact), sql), sql
    assert by_text._shapes is None  # it judged every text by itself


def test_values_masked_before_are_looked_for_later_shape_or_not() -> None:
    """Found by the property above: after a result masked ``ann@example.com`` (partly, as
    ``****@example.com``), the same value coming back through a function the analysis
    cannot follow is masked further (the words of a masked value are withheld), in a
    session that judges by shape as in one that does not."""
    for judge_by_shape in (True, False):
        session = new_session("sensitive") if judge_by_shape else by_text_only(new_session("sensitive"))
        for _ in range(2):
            first = exchange(session, "select email from customers order by 2")
            assert first["client"][1] == (68, "\x00\x01\x00\x00\x00\x10****@example.com")
        later = exchange(session, "select current_setting('x')")
        assert later["client"][1] == (68, "\x00\x01\x00\x00\x00\x10****@<email>.com")
    fresh = exchange(new_session("sensitive"), "select current_setting('x')")
    assert fresh["client"][1] == (68, "\x00\x01\x00\x00\x00\x10****@example.com")


@pytest.mark.parametrize("where", TAUTOLOGIES)
def test_a_warmed_shape_never_hides_an_always_true_where(where: str) -> None:
    """The corpus: each statement after one of its shape with constants that make the
    WHERE not always true (``1=2`` before ``1=1``) is answered as when it comes first."""
    long_lived = new_session()
    for around in AROUND:
        sql = around.format(where)
        got = shape.split(sql)
        assert got is not None or not sql.isascii()
        if got is not None and got[1]:
            key, constants = got
            warm = [("2" if c == "1" else "1") if c.isdigit() else "'zz'" for c in constants]
            exchange(long_lived, shape.text_of(key, warm))
        assert exchange(long_lived, sql) == exchange(new_session(), sql), sql


def test_the_pgbench_select_is_judged_once_and_recorded_per_text(monkeypatch: pytest.MonkeyPatch) -> None:
    session = new_session()
    texts = [f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};" for aid in (1, 4111111111111111 % 10**9, 4711)]
    first = exchange(session, texts[0])
    calls: list[str] = []
    real = parse._pg.parse_sql_json
    monkeypatch.setattr(parse._pg, "parse_sql_json", lambda sql: calls.append(sql) or real(sql))
    later = [exchange(session, t) for t in texts[1:]]
    assert not calls  # judged by the shape: not parsed again
    assert [r["records"][0]["statement"] for r in [first, *later]] == [t.rstrip(";") for t in texts]
    assert first["records"][0]["fingerprint"] == later[1]["records"][0]["fingerprint"]


def test_a_card_number_is_redacted_in_a_shape_judged_statement() -> None:
    session = new_session()
    exchange(session, "select id from orders where id = 1 and 'x' = 'x'")
    got = exchange(session, "select id from orders where id = 2 and '4111111111111111' = 'x'")
    assert "4111111111111111" not in got["records"][0]["statement"]
    assert got == exchange(new_session(), "select id from orders where id = 2 and '4111111111111111' = 'x'")


@pytest.mark.parametrize("redact", ["sensitive", True, False])
def test_shape_judged_writes_are_recorded_as_their_text_alone_would_be(redact: Any) -> None:
    """Found while adding writes: a negative number that looks like a card number was
    redacted without its minus (the text alone redacts ``-4111111111111111`` as one value)."""
    texts = [
        "delete from orders where id > -4111111111111112",
        "delete from orders where id > -4111111111111111",
        "update orders set total = total - 4111111111111111 where id = 1",
        "update orders set total = total - 4111111111111112 where id = 2",
        "update customers set email = 'ann@example.com' where id = 1",
        "update customers set email = 'bob@example.com' where id = 2",
        "insert into orders values (1, -2, 4111111111111111.0)",
        "insert into orders values (2, -3, 4111111111111112.0)",
    ]
    long_lived, by_text = new_session(redact), by_text_only(new_session(redact))
    for sql in texts:
        assert exchange(long_lived, sql) == exchange(by_text, sql), sql
    assert long_lived._shapes is not None and len(long_lived._shapes) == 4

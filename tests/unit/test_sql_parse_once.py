"""Each statement text is parsed once (and scanned once) per statement, whoever reads it:
facts, lineage, the copies check, literal redaction, correlation, the approval key and the
fingerprint all share sql.parse."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_masking_lineage import FUNCTIONS, ROWS, VIEWS

from dbsentry.audit.config import AuditConfig
from dbsentry.config import parse_config
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import ClientData, PasswordVerified
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.engines.postgres.session.masking import MaskingService
from dbsentry.engines.postgres.session.pg import ClientInfo, Session
from dbsentry.engines.postgres.session.upstream import UpstreamReady
from dbsentry.engines.postgres.sql import parse
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m
from dbsentry.identity.model import Identity
from dbsentry.masking.catalog import Catalog, classify_catalog

SRC = Path(__file__).resolve().parents[2] / "src" / "dbsentry"


class Counting:
    """pglast's parser module, counting what is asked of it."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: Counter[tuple[str, str]] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if name not in ("parse_sql_json", "scan", "fingerprint", "parse_sql", "split"):
            return attr

        def counted(sql: str, *args: Any, **kwargs: Any) -> Any:
            self.calls[(name, sql)] += 1
            return attr(sql, *args, **kwargs)

        return counted


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counting]:
    parse.clear()
    counter = Counting(parse._pg)
    monkeypatch.setattr(parse, "_pg", counter)
    yield counter
    parse.clear()


def _session() -> Session:
    config = parse_config(
        {
            "tls": {"require_client_tls": False},
            "connections": {"app": {"database": "app", "user": "postgres", "environment": "production"}},
        },
        Path("."),
    )
    catalog = Catalog.from_rows(ROWS, VIEWS, FUNCTIONS, ("public",))
    service = MaskingService(config.masking, b"k" * 32)
    service.install("app", catalog, classify_catalog(catalog))
    session = Session(
        config,
        ClientInfo("127.0.0.1:5000"),
        1,
        b"1234",
        governor=Governor.from_path(None),
        audit_config=AuditConfig(),
        masking_service=service,
        catalog_service=service,
    )
    session.handle(ClientData(codec.encode_startup((("user", "ann@example.com"), ("database", "app")))))
    session.handle(ClientData(codec.encode_password("token")))
    session.handle(PasswordVerified(Identity("ann@example.com", frozenset({"eng"}), "human", "t", "token")))
    session.handle(UpstreamReady(b"", {}, 42, b"abcd", "I"))
    return session


def _records(cmds: list[c.Command]) -> list[Any]:
    out: list[Any] = []
    for cmd in cmds:
        if isinstance(cmd, c.Audit):
            out.append(cmd.record)
        elif isinstance(cmd, c.AuditGate):
            out.extend(cmd.records)
    return out


def _assert_once(counting: Counting) -> None:
    parsed = {sql: n for (name, sql), n in counting.calls.items() if name == "parse_sql_json"}
    scanned = {sql: n for (name, sql), n in counting.calls.items() if name == "scan"}
    assert parsed and all(n == 1 for n in parsed.values()), parsed
    assert all(n == 1 for n in scanned.values()), scanned
    assert not [k for k in counting.calls if k[0] in ("fingerprint", "parse_sql", "split")]


def test_simple_query_is_parsed_once(counting: Counting) -> None:
    session = _session()
    sql = "/* traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' */ select email, name from customers where email = 'ann@example.com';"
    records = _records(session.handle(ClientData(codec.encode_query(sql))))
    assert records and records[0].fingerprint
    _assert_once(counting)
    assert sum(n for (name, _), n in counting.calls.items() if name == "parse_sql_json") == 1


def test_parse_bind_execute_is_parsed_once(counting: Counting) -> None:
    session = _session()
    sql = "update customers set name = $1 where email = $2"
    frames = (
        codec.encode_parse(m.Parse("s1", sql))
        + codec.encode_bind(m.Bind("", "s1", (0, 0), (b"Ann", b"ann@example.com"), ()))
        + codec.encode_execute(m.Execute("", 0))
        + codec.frame(b"S", b"")
    )
    records = _records(session.handle(ClientData(frames)))
    assert records
    _assert_once(counting)
    assert sum(n for (name, _), n in counting.calls.items() if name == "parse_sql_json") == 1


def test_multi_statement_string_is_parsed_once(counting: Counting) -> None:
    session = _session()
    sql = "select email from customers where id = 1;\n  select name from customers where email = 'x@example.com'; select 1"
    records = _records(session.handle(ClientData(codec.encode_query(sql))))
    assert len([r for r in records if getattr(r, "statement", None)]) == 3
    _assert_once(counting)
    # the whole string once; each statement's text reuses its part of that parse
    assert sum(n for (name, _), n in counting.calls.items() if name == "parse_sql_json") == 1


@pytest.mark.parametrize(
    "sql",
    [
        "select 1; select 2",
        "select email from customers where id = 1;",
        "select 'ü' ;  ",
        "select 'é' as a;   select \"ü\" from t where x = 'ß'; -- c\n select $1::int",
        "\ufeffselect 1;\n\n\tinsert into t values (1, 'a'), (2, 'b') returning *",
        "update t set a = 1 where b = 2; delete from t where c = 'ä;'; select 1",
        "select 'x'; select E'\\'' ; select U&'\\0041'",
    ],
)
def test_a_statements_share_of_the_parse_is_its_own_parse(sql: str) -> None:
    from dbsentry.engines.postgres.sql.facts import analyze

    parse.clear()
    facts = analyze(sql)
    for f in facts:
        assert parse._trees.get(f.text) is not None
        # the same tree, but for where the statement ends (not read by anyone)
        shared = re.sub(r',?"stmt_len":\d+', "", parse.parse_json(f.text))
        assert shared == parse._pg.parse_sql_json(f.text), f.text


def test_only_sql_parse_calls_the_parser() -> None:
    calls = re.compile(r"\.(parse_sql_json|parse_sql|scan|fingerprint|split)\(")
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "parse.py" and path.parent.name == "sql":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if calls.search(line) and ("_pg." in line or "pglast" in line or "pg_parser." in line):
                offenders.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert offenders == []


def test_fingerprint_ignores_constants_layout_and_comments() -> None:
    a = parse.fingerprint("select * from t where id = 1")
    b = parse.fingerprint("SELECT *\n  FROM t /* c */ WHERE id = 42")
    assert a == b and len(a) == 16
    assert parse.fingerprint("select * from t where id = $1") == a
    assert parse.fingerprint("select * from u where id = 1") != a

"""Masking in the MySQL session, without sockets: plans per statement, rows rewritten in
text and binary results, refusals as ERR 1142, audit records with the masked classes, the
catalog asked for again after DDL, and fail-closed without a catalog."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from test_mysql_session import CAPS, answer, logged_in, packets

from dbsentry.audit.records import StatementRecord
from dbsentry.config import MaskingConfig
from dbsentry.engines.mysql.catalog import catalog_from_rows
from dbsentry.engines.mysql.session import commands as c
from dbsentry.engines.mysql.session import events as e
from dbsentry.engines.mysql.session.session import Session, State
from dbsentry.engines.mysql.wire import constants as k
from dbsentry.engines.mysql.wire import generic as g
from dbsentry.engines.mysql.wire import results as res
from dbsentry.engines.mysql.wire.packets import encode_packet
from dbsentry.identity.model import Identity
from dbsentry.masking import Catalog, ClassMap, classify_catalog
from dbsentry.masking.plans import MaskSettings

EMAIL = "ada.lovelace@example.com"
ROWS = [
    ("shop", "customers", "BASE TABLE", 1, "id", "int", "int(11)", ""),
    ("shop", "customers", "BASE TABLE", 2, "email", "varchar", "varchar(80)", ""),
    ("shop", "customers", "BASE TABLE", 3, "city", "varchar", "varchar(40)", ""),
]


@dataclass(frozen=True)
class _View:
    catalog: Catalog
    classmap: ClassMap
    version: int = 1


@dataclass
class _Service:
    view: _View | None
    key: bytes = b"k" * 32
    settings: MaskSettings = field(default_factory=MaskSettings)
    exempt_groups: frozenset[str] = frozenset({"pii-readers"})
    config: MaskingConfig = field(default_factory=MaskingConfig)

    def current(self, connection: str) -> _View | None:
        return self.view

    def safety_net_for(self, production: bool) -> bool:
        return False


def _service(loaded: bool = True) -> _Service:
    catalog = catalog_from_rows(ROWS, (), "shop")
    return _Service(_View(catalog, classify_catalog(catalog, {}, {})) if loaded else None)


def _masked(tmp_path: Path, loaded: bool = True, exempt: bool = False) -> Session:
    s, _ = logged_in(tmp_path)
    s.masking = _service(loaded)
    if exempt:
        assert s.identity is not None
        s.identity = Identity(s.identity.name, frozenset({"eng", "pii-readers"}), "human", "tok1", "token")
    return s


_TYPES = {"id": (k.ColumnType.LONG, 63), "email": (k.ColumnType.VAR_STRING, 45), "city": (k.ColumnType.VAR_STRING, 45)}


def _cols(names: tuple[str, ...] = ("id", "email", "city"), org: bool = True) -> list[res.ColumnDefinition]:
    # org=False: definitions that name no table column (an expression's), so only the
    # plan can tell which column is which
    return [
        res.ColumnDefinition(n, _TYPES[n][0], "shop", "customers" if org else "", "customers" if org else "", n if org else "", _TYPES[n][1], 80)
        for n in names
    ]


def _text_result(
    rows: list[tuple[bytes, ...]], status: int = k.SERVER_STATUS_AUTOCOMMIT, names: tuple[str, ...] = ("id", "email", "city"), org: bool = True
) -> list[bytes]:
    cols = _cols(names, org)
    return [
        res.encode_column_count(res.ColumnCount(len(cols)), CAPS),
        *(res.encode_column_definition(col) for col in cols),
        *(res.encode_text_row(res.TextRow(r)) for r in rows),
        g.encode_ok(g.OK(status=status, header=0xFE), CAPS),
    ]


def _run(s: Session, sql: bytes) -> list[c.Command]:
    out = s.handle(e.ClientData(encode_packet(b"\x03" + sql, 0)[0]))
    gate = next((cmd for cmd in out if isinstance(cmd, c.AuditGate)), None)
    return [*out, *(gate.then if gate is not None else [])]


def test_text_rows_masked_for_a_masked_identity_and_recorded(tmp_path: Path) -> None:
    s = _masked(tmp_path)
    out = _run(s, b"SELECT id, email, city FROM customers")
    gate = next(cmd for cmd in out if isinstance(cmd, c.AuditGate))
    rec = gate.records[0]
    assert isinstance(rec, StatementRecord)
    assert rec.decision == "mask" and rec.masked_classes == ("email",) and rec.masked_columns == ("shop.customers.email",)
    out = s.handle(answer(_text_result([(b"1", EMAIL.encode(), b"Paris")])))
    row = res.decode_text_row(packets(out)[4], 3)
    assert row.values[0] == b"1" and row.values[2] == b"Paris"
    assert row.values[1] is not None and EMAIL.encode() not in row.values[1]
    assert s.state is State.READY


def test_each_statement_of_a_multi_statement_string_gets_its_plan(tmp_path: Path) -> None:
    s = _masked(tmp_path)
    _run(s, b"SELECT id, city, email FROM customers; SELECT id, email, city FROM customers")
    more = k.SERVER_STATUS_AUTOCOMMIT | k.SERVER_MORE_RESULTS_EXISTS
    first = _text_result([(b"1", b"Paris", EMAIL.encode())], more, ("id", "city", "email"), org=False)
    out = s.handle(answer([*first, *_text_result([(b"1", EMAIL.encode(), b"Paris")], org=False)]))
    sent = packets(out)
    one, two = res.decode_text_row(sent[4], 3), res.decode_text_row(sent[10], 3)
    assert one.values[1] == b"Paris" and EMAIL.encode() not in (one.values[2] or b"")
    assert two.values[2] == b"Paris" and EMAIL.encode() not in (two.values[1] or b"")


def test_exempt_identity_gets_real_rows(tmp_path: Path) -> None:
    s = _masked(tmp_path, exempt=True)
    _run(s, b"SELECT id, email, city FROM customers")
    out = s.handle(answer(_text_result([(b"1", EMAIL.encode(), b"Paris")])))
    assert res.decode_text_row(packets(out)[4], 3).values[1] == EMAIL.encode()


def test_refusals_are_err_1142_and_audited_denied(tmp_path: Path) -> None:
    s = _masked(tmp_path)
    out = _run(s, b"SELECT email INTO @v FROM customers LIMIT 1")
    err = g.decode_err(packets(out)[0], CAPS)
    assert err.code == 1142 and err.sqlstate == "42501" and err.message.startswith("dbsentry:")
    rec = next(cmd.record for cmd in out if isinstance(cmd, c.Audit))
    assert isinstance(rec, StatementRecord) and rec.decision == "deny" and rec.rules == ("masking.copy_out",)
    assert not [cmd for cmd in out if isinstance(cmd, c.SendUpstream)]
    # production, a person: a pattern on a masked column is an oracle
    out = _run(s, b"SELECT id FROM customers WHERE email LIKE 'ada%'")
    err = g.decode_err(packets(out)[0], CAPS)
    assert err.code == 1142 and "masking.predicates = equality" in err.message
    assert s.state is State.READY


def test_no_catalog_fails_closed(tmp_path: Path) -> None:
    s = _masked(tmp_path, loaded=False)
    out = _run(s, b"SELECT id FROM customers")
    err = g.decode_err(packets(out)[0], CAPS)
    assert err.code == 1142 and "has not been read" in err.message
    assert not [cmd for cmd in out if isinstance(cmd, c.SendUpstream)]


def test_prepared_statement_binary_rows_use_the_prepare_plan(tmp_path: Path) -> None:
    s = _masked(tmp_path)
    out = s.handle(e.ClientData(encode_packet(b"\x16SELECT id, email, city FROM customers", 0)[0]))
    cols = _cols()
    out = s.handle(answer([
        res.encode_stmt_prepare_ok(res.StmtPrepareOK(9, 3, 0), CAPS), *(res.encode_column_definition(col) for col in cols),
    ]))
    assert s.state is State.READY
    execute = b"\x17" + (9).to_bytes(4, "little") + b"\x00\x01\x00\x00\x00"
    out = s.handle(e.ClientData(encode_packet(execute, 0)[0]))
    assert any(isinstance(cmd, c.AuditGate) for cmd in out)
    types = res.column_types(cols)
    out = s.handle(answer([
        res.encode_column_count(res.ColumnCount(3), CAPS),
        *(res.encode_column_definition(col) for col in cols),
        res.encode_binary_row(res.BinaryRow((1, EMAIL.encode(), b"Paris")), types),
        g.encode_ok(g.OK(status=k.SERVER_STATUS_AUTOCOMMIT, header=0xFE), CAPS),
    ]))
    row = res.decode_binary_row(packets(out)[4], types)
    assert row.values[0] == 1 and row.values[2] == b"Paris" and EMAIL.encode() not in bytes(row.values[1] or b"")


def test_ddl_asks_for_the_catalog_again(tmp_path: Path) -> None:
    s, _ = logged_in(tmp_path)
    s.masking = _service()
    s.identity = Identity("alice@example.com", frozenset({"eng", "pii-readers"}), "human", "tok1", "token")
    out = _run(s, b"CREATE TEMPORARY TABLE scratch (email VARCHAR(80))")  # DDL production allows
    assert any(isinstance(cmd, c.SendUpstream) for cmd in out)
    out = s.handle(answer([g.encode_ok(g.OK(status=k.SERVER_STATUS_AUTOCOMMIT), CAPS)]))
    assert c.SchemaChanged("prod") in out


MASK_POLICY = """
rules:
  - name: redact-customer-emails
    match: {tables: ["customers"], classes: [READ]}
    action: mask
    mask: {strategy: redact, columns: [shop.customers.email]}
"""


def test_a_policy_mask_rule_runs_masked_with_its_strategy(tmp_path: Path) -> None:
    from dbsentry.engines.mysql.session.governance import MySQLGovernor
    from dbsentry.policy.loader import parse_policy

    s = _masked(tmp_path)
    policy = parse_policy(MASK_POLICY)
    s.governor = MySQLGovernor(lambda: policy)
    out = _run(s, b"SELECT id, email, city FROM customers")
    gate = next(cmd for cmd in out if isinstance(cmd, c.AuditGate))  # not refused any more
    rec = gate.records[0]
    assert isinstance(rec, StatementRecord) and rec.decision == "mask" and rec.rules == ("redact-customer-emails",)
    out = s.handle(answer(_text_result([(b"1", EMAIL.encode(), b"Paris")])))
    row = res.decode_text_row(packets(out)[4], 3)
    assert row.values[1] == b"<email>" and row.values[2] == b"Paris"  # redact, not the default partial


def test_sql_execute_runs_with_its_prepare_plan_even_under_unresolved_deny(tmp_path: Path) -> None:
    s = _masked(tmp_path)
    assert s.masking is not None
    s.masking.settings = MaskSettings(unresolved="deny")
    out = _run(s, b"PREPARE s FROM 'SELECT id, email, city FROM customers'")
    assert any(isinstance(cmd, c.SendUpstream) for cmd in out)
    s.handle(answer([g.encode_ok(g.OK(status=k.SERVER_STATUS_AUTOCOMMIT), CAPS)]))
    out = _run(s, b"EXECUTE s")
    assert any(isinstance(cmd, c.SendUpstream) for cmd in out), packets(out)
    out = s.handle(answer(_text_result([(b"1", EMAIL.encode(), b"Paris")], org=False)))
    row = res.decode_text_row(packets(out)[4], 3)
    assert row.values[2] == b"Paris" and EMAIL.encode() not in (row.values[1] or b"")
    # what nothing traces is refused under deny
    out = _run(s, b"CALL some_procedure()")
    assert g.decode_err(packets(out)[0], CAPS).code == 1142


def _inherited(out: list[c.Command]) -> list[c.InheritClasses]:
    return [cmd for cmd in out if isinstance(cmd, c.InheritClasses)]


def test_a_successful_copy_makes_its_columns_inherit_the_class(tmp_path: Path) -> None:
    from dbsentry.masking.catalog import SourceColumn
    from dbsentry.masking.classes import DataClass

    s = _masked(tmp_path, exempt=True)  # an exempt identity may copy
    s._limits = None  # no row guard around the writes
    _run(s, b"INSERT INTO customers (id, city) SELECT id + 100, email FROM customers")
    out = s.handle(answer([g.encode_ok(g.OK(affected_rows=1, status=k.SERVER_STATUS_AUTOCOMMIT), CAPS)]))
    (inherited,) = _inherited(out)
    assert inherited.connection == "prod"
    assert {src: cls.data_class for src, cls in inherited.copies.items()} == {SourceColumn("shop", "customers", "city"): DataClass.EMAIL}


def test_a_failed_copy_classifies_nothing(tmp_path: Path) -> None:
    s = _masked(tmp_path, exempt=True)
    s._limits = None
    _run(s, b"INSERT INTO customers (id, city) SELECT id, email FROM customers")
    out = s.handle(answer([g.encode_err(g.ERR(1062, "Duplicate entry '1' for key 'PRIMARY'", "23000"), CAPS)]))
    assert not _inherited(out)
    # a multi-statement string: the statement after a failed one never ran
    _run(s, b"UPDATE customers SET city = email WHERE id = 1; SELECT 1; INSERT INTO customers (id, city) SELECT id, email FROM customers")
    more = k.SERVER_STATUS_AUTOCOMMIT | k.SERVER_MORE_RESULTS_EXISTS
    out = s.handle(answer([
        g.encode_ok(g.OK(affected_rows=1, status=more), CAPS),
        *_text_result([(b"1",)], more, ("id",), org=False),
        g.encode_err(g.ERR(1062, "Duplicate entry '1' for key 'PRIMARY'", "23000"), CAPS),
    ]))
    assert [sorted(str(src) for src in cmd.copies) for cmd in _inherited(out)] == [["shop.customers.city"]]


def test_sql_execute_copies_what_its_prepare_does(tmp_path: Path) -> None:
    s = _masked(tmp_path, exempt=True)
    s._limits = None
    _run(s, b"PREPARE s FROM 'UPDATE customers SET city = email WHERE id = 1'")
    out = s.handle(answer([g.encode_ok(g.OK(status=k.SERVER_STATUS_AUTOCOMMIT), CAPS)]))
    assert not _inherited(out)
    _run(s, b"EXECUTE s")
    out = s.handle(answer([g.encode_ok(g.OK(affected_rows=1, status=k.SERVER_STATUS_AUTOCOMMIT), CAPS)]))
    assert [sorted(str(src) for src in cmd.copies) for cmd in _inherited(out)] == [["shop.customers.city"]]


def test_values_are_followed_only_where_they_may_copy(tmp_path: Path) -> None:
    s = _masked(tmp_path, exempt=True)
    s._limits = None
    ok = g.encode_ok(g.OK(affected_rows=1, status=k.SERVER_STATUS_AUTOCOMMIT), CAPS)
    for sql, inherited in [
        (b"INSERT INTO customers (id, city) VALUES (7, CONCAT('a', 'b'))", []),
        (b"INSERT INTO customers (id, city) VALUES (8, (SELECT email FROM customers WHERE id = 1))", [["shop.customers.city"]]),
        (b"INSERT INTO customers (id) VALUES (9) ON DUPLICATE KEY UPDATE city = email", [["shop.customers.city"]]),
    ]:
        _run(s, sql)
        out = s.handle(answer([ok]))
        assert [sorted(str(src) for src in cmd.copies) for cmd in _inherited(out)] == inherited, sql

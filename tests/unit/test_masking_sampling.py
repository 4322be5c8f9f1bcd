"""Classification from values: the pure judgement of sampled values (sampling.py), how
classify_catalog combines it with names, comments, composites, partitions and overrides,
the sample SQL, and the plans that value-scan free text."""

from __future__ import annotations

import random
import string
import uuid

import orjson
import pytest

from dbsentry.engines.postgres.catalog import sample_column, sample_sql
from dbsentry.engines.postgres.masking.lineage import analyze_lineage, plan_masks
from dbsentry.masking.catalog import Catalog, SourceColumn, classify_catalog
from dbsentry.masking.classes import DataClass
from dbsentry.masking.detect import detect_value, luhn_ok
from dbsentry.masking.sampling import (
    SampledColumn,
    ValueFinding,
    classify_table_sample,
    classify_values,
)


def text(name: str) -> SampledColumn:
    return SampledColumn(name, "text")


def doc(name: str, fields: tuple[tuple[str, str], ...] = ()) -> SampledColumn:
    return SampledColumn(name, "json", fields)


def _card(rng: random.Random, prefix: str = "4") -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(15 - len(prefix)))
    return next(body + d for d in string.digits if luhn_ok(body + d))


EMAILS = [f"user{i}.name@example.com" for i in range(40)]


# ---------------------------------------------------------------------- thresholds


def test_a_column_of_emails_is_email_with_its_hit_rate() -> None:
    found = classify_values("public.t", text("c1"), EMAILS[:12] + ["n/a"] * 28)
    assert found is not None and found.data_class is DataClass.EMAIL
    assert found.evidence == "12/40 sampled values are email"
    assert found.classification is not None and found.classification.source == "value"


def test_below_the_share_it_is_scanned_not_classified() -> None:
    found = classify_values("t", text("c1"), EMAILS[:11] + ["n/a"] * 29)  # 27.5 %
    assert found is not None and found.data_class is None and found.scan
    assert "11/40 sampled values are email" in found.evidence


def test_one_hit_is_not_a_class_but_is_scanned() -> None:
    found = classify_values("t", text("c1"), [EMAILS[0]])
    assert found is not None and found.data_class is None and found.scan


def test_nulls_do_not_count() -> None:
    found = classify_values("t", text("c1"), [*EMAILS[:3], *([None] * 100)])
    assert found is not None and found.evidence == "3/3 sampled values are email"


def test_nothing_found_is_none() -> None:
    assert classify_values("t", text("c1"), ["hello", "world", None, ""]) is None
    assert classify_values("t", text("c1"), []) is None


def test_several_classes_the_most_sensitive_wins() -> None:
    values = ["536-22-8714", "471-93-2605", *EMAILS[:4]]
    found = classify_values("t", text("contact"), values)
    assert found is not None and found.data_class is DataClass.NATIONAL_ID
    assert "email" in found.evidence and "national_id" in found.evidence


# ---------------------------------------------------------------------- false positives


@pytest.mark.parametrize("seed", range(5))
def test_order_numbers_are_not_cards(seed: int) -> None:
    rng = random.Random(seed)
    orders = [str(rng.randrange(10**15, 10**16)) for _ in range(200)]
    assert any(detect_value(o) is DataClass.PAYMENT_CARD for o in orders)  # by chance
    assert classify_values("t", text("order_no"), orders) is None
    numbers = SampledColumn("order_no", "number")
    assert classify_values("t", numbers, orders) is None


def test_order_numbers_in_one_issuer_range_are_not_cards() -> None:
    # all start with 4 (Visa's range): about one in ten passes Luhn; as many same-shaped fail
    rng = random.Random(7)
    orders = ["4" + str(rng.randrange(10**14, 10**15)) for _ in range(200)]
    assert classify_values("t", text("ref"), orders) is None


def test_random_ids_are_nothing() -> None:
    rng = random.Random(3)
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(200)]
    ids += ["".join(rng.choice(string.ascii_letters + string.digits) for _ in range(22)) for _ in range(200)]  # fmt: skip
    ids += [f"{rng.randrange(10**8):08d}" for _ in range(200)]
    assert classify_values("t", text("id"), ids) is None


def test_real_cards_with_a_few_bad_ones_are_cards() -> None:
    rng = random.Random(5)
    cards = [_card(rng) for _ in range(38)] + ["4111111111111112", "4000000000000001"]
    found = classify_values("t", text("card"), cards)
    assert found is not None and found.data_class is DataClass.PAYMENT_CARD
    assert found.evidence == "38/40 sampled values are payment_card"


def test_emails_are_never_chance() -> None:
    values = [*EMAILS[:2], *(f"user{i}.name@example" for i in range(30))]
    found = classify_values("t", text("c"), values)
    assert found is not None and found.scan


# ---------------------------------------------------------------------- free text


def test_notes_with_one_email_in_200_rows_are_scanned() -> None:
    notes = [f"called on day {i}, left a message" for i in range(199)]
    notes.insert(117, "customer asked to write to jane.doe@example.org instead")
    found = classify_values("public.orders", text("notes"), notes)
    assert found is not None and found.scan and found.data_class is None
    assert found.evidence == "scan values: 1/200 sampled values contain email"


def test_free_text_with_cards_and_emails_inside_is_scanned() -> None:
    notes = ["paid with 4539 1488 0343 6467 and wrote from a.b@example.com", "nothing"] * 20
    found = classify_values("t", text("notes"), notes)
    assert found is not None and found.scan and found.data_class is None
    assert "contain email, payment_card" in found.evidence


def test_bytea_is_decoded() -> None:
    values = [e.encode() for e in EMAILS[:5]] + [b"\xff\xfe\x00binary"]
    found = classify_values("t", SampledColumn("blob", "bytea"), values)
    assert found is not None and found.data_class is DataClass.EMAIL


# ---------------------------------------------------------------------- JSON, arrays, composites


def _docs(*objs: object) -> list[str]:
    return [orjson.dumps(o).decode() for o in objs]


def test_jsonb_keys_are_classified_by_name() -> None:
    values = _docs(*({"ssn": None, "plan": "gold", "n": i} for i in range(5)))
    found = classify_values("t", doc("data"), values)
    assert found is not None and found.data_class is DataClass.NATIONAL_ID
    assert "$.ssn: key name 'ssn'" in found.evidence


def test_jsonb_leaf_values_are_classified_by_path() -> None:
    values = _docs(*({"contact": {"primary": e}, "kind": "x"} for e in EMAILS[:6]))
    found = classify_values("t", doc("data"), values)
    assert found is not None and found.data_class is DataClass.EMAIL
    assert found.evidence == "$.contact.primary: 6/6 sampled values are email"


def test_jsonb_most_sensitive_path_wins() -> None:
    values = _docs(*({"email": e, "tax": {"ssn": "536-22-8714"}} for e in EMAILS[:3]))
    found = classify_values("t", doc("data"), values)
    assert found is not None and found.data_class is DataClass.NATIONAL_ID
    assert "$.email" in found.evidence and "$.tax.ssn" in found.evidence


def test_jsonb_negative_key_names_follow_the_column_rules() -> None:
    values = _docs(*({"email_verified": True, "email_count": 3, "phone_type": "mobile"} for _ in range(5)))  # fmt: skip
    assert classify_values("t", doc("data"), values) is None


def test_jsonb_keys_that_are_data_are_judged_and_never_quoted() -> None:
    values = _docs(*({e: {"visits": 3}} for e in EMAILS[:4]))
    found = classify_values("t", doc("data"), values)
    assert found is not None and found.data_class is DataClass.EMAIL
    assert "$.*~" in found.evidence and "@" not in found.evidence


def test_jsonb_free_text_leaf_is_scanned() -> None:
    values = _docs(*({"comment": "ok"} for _ in range(30)), {"comment": "mail x.y@example.com"})
    found = classify_values("t", doc("data"), values)
    assert found is not None and found.scan and "$.comment" in found.evidence


def test_jsonb_numbers_can_be_cards() -> None:
    rng = random.Random(1)
    values = _docs(*({"pan_value": int(_card(rng))} for _ in range(5)))
    found = classify_values("t", doc("data"), values)
    assert found is not None and found.data_class is DataClass.PAYMENT_CARD


def test_arrays_are_judged_by_their_elements() -> None:
    found = classify_values("t", doc("tags"), _docs(*([e, "vip"] for e in EMAILS[:5])))
    assert found is not None and found.data_class is DataClass.EMAIL
    assert found.evidence.startswith("$[*]: 5/10 sampled values are email")


def test_composite_values_by_field() -> None:
    values = _docs(*({"nick": f"n{i}", "ref": "471-93-2605"} for i in range(4)))
    col = doc("p", (("nick", "text"), ("ref", "text")))
    found = classify_values("t", col, values)
    assert found is not None and found.data_class is DataClass.NATIONAL_ID


def test_unparsable_and_empty_documents() -> None:
    assert classify_values("t", doc("data"), ["{not json", None, "null", "{}", "[]"]) is None


def test_deep_and_wide_documents_are_bounded() -> None:
    deep: object = "a@b.example.com"
    for _ in range(100):
        deep = {"x": deep}
    wide = {f"k{i}": i for i in range(10_000)}
    assert classify_values("t", doc("data"), _docs(deep, wide)) is None


def test_a_table_sample() -> None:
    cols = (text("a"), SampledColumn("b", "number"), doc("c"))
    rows = [(e, "12", '{"ssn": "x"}') for e in EMAILS[:3]]
    found = classify_table_sample("t", cols, rows)
    assert set(found) == {"a", "c"}


def test_evidence_never_quotes_values() -> None:
    secret_values = ["536-22-8714", "4539 1488 0343 6467", *EMAILS[:5]]
    for col, values in (
        (text("c"), secret_values),
        (doc("d"), _docs(*({"x": v, v: 1} for v in secret_values))),
    ):
        found = classify_values("t", col, values)
        assert found is not None
        for v in secret_values:
            assert v not in found.evidence


# ---------------------------------------------------------------------- the catalog

REL_ROWS = [
    # oid, schema, name, kind, attnum, column, type oid, type name, typmod, comment, category
    (1, "public", "staff", "r", 1, "id", 23, "integer", -1, None, "N"),
    (1, "public", "staff", "r", 2, "ref", 25, "text", -1, None, "S"),
    (2, "hr", "staff", "r", 1, "id", 23, "integer", -1, None, "N"),
    (2, "hr", "staff", "r", 2, "ref", 25, "text", -1, None, "S"),
    (3, "public", "t", "r", 1, "email", 25, "text", -1, "pii:none", "S"),
    (3, "public", "t", "r", 2, "c1", 25, "text", -1, "pii:none", "S"),
    (3, "public", "t", "r", 3, "p", 90001, "person", -1, None, "C"),
    (3, "public", "t", "r", 4, "notes", 25, "text", -1, None, "S"),
    (3, "public", "t", "r", 5, "tags", 1009, "text[]", -1, None, "AS"),
    (3, "public", "t", "r", 6, "data", 3802, "jsonb", -1, None, "U"),
    (3, "public", "t", "r", 7, "born", 1082, "date", -1, None, "D"),
    (3, "public", "t", "r", 8, "blob", 17, "bytea", -1, None, "U"),
    (3, "public", "t", "r", 9, "n", 20, "bigint", -1, None, "N"),
    (3, "public", "t", "r", 10, "Odd \"Name\"", 1043, "character varying(20)", 24, None, "S"),
    (4, "public", "orders", "p", 1, "contact", 25, "text", -1, None, "S"),
    (5, "public", "orders_2024", "r", 1, "contact", 25, "text", -1, None, "S"),
    (6, "public", "v", "v", 1, "c1", 25, "text", -1, None, "S"),
]
COMPOSITE_ROWS = [
    (90001, 1, "nick", "text", 25),
    (90001, 2, "home", "address_t", 90002),
    (90002, 1, "street", "text", 25),
]


def _catalog() -> Catalog:
    return Catalog.from_rows(REL_ROWS, [(6, "SELECT c1 FROM t")]).with_types(
        COMPOSITE_ROWS, [(5, 4)]
    )


def test_composite_fields_classify_from_the_catalog_without_values() -> None:
    cm = classify_catalog(_catalog())
    got = cm.columns[SourceColumn("public", "t", "p")]
    assert got.data_class is DataClass.POSTAL_ADDRESS and "home.street" in got.evidence
    assert _catalog().composites[90001] == (
        ("nick", "text"),
        ("home", "address_t"),
        ("home.street", "text"),
    )


def test_values_add_a_class_and_names_keep_theirs() -> None:
    values = {
        2: {"ref": ValueFinding(DataClass.NATIONAL_ID, "4/4 sampled values are national_id")},
        3: {
            "c1": ValueFinding(DataClass.EMAIL, "4/4 sampled values are email"),
            "email": ValueFinding(DataClass.NATIONAL_ID, "3/4 sampled values are national_id"),
            "notes": ValueFinding(None, "scan values: 1/4 sampled values contain email", scan=True),
        },
    }
    cm = classify_catalog(_catalog(), None, values)
    # same-named tables in two schemas are classified on their own
    assert cm.columns[SourceColumn("hr", "staff", "ref")].data_class is DataClass.NATIONAL_ID
    assert SourceColumn("public", "staff", "ref") not in cm.columns
    # a comment's pii:none removes nothing; values and names both count, the worst wins
    c1 = cm.columns[SourceColumn("public", "t", "c1")]
    assert c1.data_class is DataClass.EMAIL and c1.source == "value" and "ignored" in c1.evidence
    email = cm.columns[SourceColumn("public", "t", "email")]
    assert email.data_class is DataClass.NATIONAL_ID
    assert "column name 'email'" in email.evidence and "ignored" in email.evidence
    # free text: no class, value-scanned
    notes = SourceColumn("public", "t", "notes")
    assert notes not in cm.columns and notes in cm.scan and "1/4" in cm.scan_evidence[notes]
    assert ("public", "t") in cm.tables


def test_partitions_classify_their_parent() -> None:
    values = {5: {"contact": ValueFinding(DataClass.EMAIL, "9/9 sampled values are email")}}
    cm = classify_catalog(_catalog(), None, values)
    parent = cm.columns[SourceColumn("public", "orders", "contact")]
    assert parent.data_class is DataClass.EMAIL
    assert parent.evidence.startswith("in public.orders_2024: 9/9")


def test_only_overrides_remove_a_class_or_a_scan() -> None:
    values = {
        3: {
            "c1": ValueFinding(DataClass.EMAIL, "4/4 sampled values are email"),
            "notes": ValueFinding(None, "scan values: 1/4", scan=True),
        }
    }
    overrides = {"public.t.c1": "none", "t.notes": "none", "t.email": "none"}
    cm = classify_catalog(_catalog(), overrides, values)
    for col in ("c1", "notes", "email"):
        assert SourceColumn("public", "t", col) not in cm.columns
        assert SourceColumn("public", "t", col) not in cm.scan
    cm = classify_catalog(_catalog(), {"t.notes": "phone"}, values)
    assert cm.columns[SourceColumn("public", "t", "notes")].data_class is DataClass.PHONE
    assert not cm.scan


def test_sample_sql() -> None:
    cat = _catalog()
    rel = cat.relations[3]
    built = sample_sql(rel, cat, 200, 1000)
    assert built is not None
    sql, cols = built
    assert [c.name for c in cols] == ["email", "c1", "p", "notes", "tags", "data", "blob", "n", 'Odd "Name"']  # fmt: skip
    assert [c.kind for c in cols] == ["text", "text", "json", "text", "json", "json", "bytea", "number", "text"]  # fmt: skip
    assert cols[2].fields == cat.composites[90001]
    assert 'FROM ONLY "public"."t" LIMIT 200' in sql and "TABLESAMPLE" not in sql
    assert '"Odd ""Name"""' in sql and "to_jsonb(\"p\")" in sql and "born" not in sql
    big, _ = sample_sql(rel, cat, 200, 10_000_000) or ("", ())
    assert "TABLESAMPLE SYSTEM (0.0080) LIMIT 200" in big
    huge, _ = sample_sql(rel, cat, 200, 1e12) or ("", ())
    assert "TABLESAMPLE SYSTEM (0.0001)" in huge
    # nothing worth sampling
    assert sample_sql(cat.relations[1], cat, 200, 0) is not None
    only_ints = Catalog.from_rows([(9, "s", "x", "r", 1, "id", 23, "integer", -1, None, "N")])
    assert sample_sql(only_ints.relations[9], only_ints, 200, 0) is None
    assert sample_column(only_ints.relations[9].columns[0], only_ints) is None


# ---------------------------------------------------------------------- plans


def test_plan_scans_what_derives_from_a_scanned_column() -> None:
    values = {3: {"notes": ValueFinding(None, "scan values: 1/4", scan=True)}}
    cat = _catalog()
    cm = classify_catalog(cat, None, values)
    (lin,) = analyze_lineage("SELECT c1, notes, upper(notes) AS u, n FROM t", cat)
    plan = plan_masks(lin, cm)
    masks = plan.columns
    assert masks[0] is None and masks[3] is None
    for m in masks[1:3]:
        assert m is not None and m.strategy == "detect" and m.data_class is None
        assert m.reason == "values" and m.sources == frozenset({SourceColumn("public", "t", "notes")})
    assert plan.reads_sensitive and plan.active and not plan.data_classes


def test_a_class_wins_over_a_scan() -> None:
    values = {3: {"notes": ValueFinding(None, "scan", scan=True)}}
    cat = _catalog()
    cm = classify_catalog(cat, None, values)
    (lin,) = analyze_lineage("SELECT notes || email FROM t", cat)
    (m,) = plan_masks(lin, cm).columns
    assert m is not None and m.reason == "lineage" and m.data_class is DataClass.EMAIL



# ---------------------------------------------------------------------- fetch_samples


class _FakeCursor:
    def __init__(self, conn: _FakeConn) -> None:
        self.conn = conn
        self.rows: list[tuple[object, ...]] = []

    async def __aenter__(self) -> _FakeCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def execute(self, sql: str) -> None:
        self.conn.executed.append(sql)
        if "reltuples" in sql:
            self.rows = [(oid, size) for oid, size in self.conn.sizes.items()]
            return
        if not sql.startswith("SELECT "):
            return
        for needle, outcome in self.conn.answers.items():
            if needle in sql:
                if isinstance(outcome, Exception):
                    raise outcome
                if callable(outcome):
                    self.rows = outcome(sql)
                else:
                    self.rows = list(outcome)
                return
        self.rows = []

    async def fetchall(self) -> list[tuple[object, ...]]:
        return self.rows


class _FakeTx:
    def __init__(self, conn: _FakeConn) -> None:
        self.conn = conn

    async def __aenter__(self) -> None:
        self.conn.transactions += 1

    async def __aexit__(self, *exc: object) -> None:
        return None


class _FakeConn:
    closed = False

    def __init__(self, sizes: dict[int, float], answers: dict[str, object]) -> None:
        self.sizes = sizes
        self.answers = answers
        self.executed: list[str] = []
        self.transactions = 0

    def cursor(self) -> _FakeCursor:
        return _FakeCursor(self)

    def transaction(self, force_rollback: bool = False) -> _FakeTx:
        assert force_rollback
        return _FakeTx(self)


def _run(coro: object) -> object:
    import asyncio

    return asyncio.run(coro)  # type: ignore[arg-type]


def test_fetch_samples_reads_each_table_once_and_skips_failures() -> None:
    from dbsentry.engines.postgres.catalog import fetch_samples

    cat = _catalog()
    emails = [(f"x{i}@example.com",) for i in range(5)]
    conn = _FakeConn(
        {1: 10, 2: 10, 3: 10, 5: 10, 99: 10},
        {
            '"hr"."staff"': [(e[0],) for e in emails],
            '"public"."t"': RuntimeError("permission denied for table t\nDETAIL: x"),
        },
    )
    report = _run(fetch_samples(conn, cat))
    assert report.skipped == {3: "permission denied for table t"}  # type: ignore[attr-defined]
    assert report.sampled == {1, 2, 5}  # type: ignore[attr-defined]
    assert report.findings[2]["ref"].data_class is DataClass.EMAIL  # type: ignore[attr-defined]
    # every sample query is read only, time-boxed, in a rolled-back transaction
    assert "SET TRANSACTION READ ONLY" in conn.executed
    assert "SET LOCAL statement_timeout = 2000" in conn.executed
    assert "SET LOCAL lock_timeout = 2000" in conn.executed
    assert conn.transactions == 4


def test_fetch_samples_budget_and_priority() -> None:
    from dbsentry.engines.postgres.catalog import fetch_samples

    cat = _catalog()
    conn = _FakeConn({1: 10, 2: 10, 3: 10, 5: 10}, {})
    report = _run(fetch_samples(conn, cat, budget_seconds=0))
    assert set(report.skipped) == {1, 2, 3, 5} and not report.sampled  # type: ignore[attr-defined]
    assert all(v == "sampling budget spent" for v in report.skipped.values())  # type: ignore[attr-defined]
    conn = _FakeConn({1: 10, 2: 10, 3: 10, 5: 10}, {})
    _run(fetch_samples(conn, cat, priority={1: 50.0, 2: 10.0}))
    order = [s for s in conn.executed if s.startswith("SELECT ") and "reltuples" not in s]
    assert [("orders_2024" in s, '"t"' in s, '"hr"' in s, '"public"."staff"' in s) for s in order] == [
        (False, True, False, False),  # never sampled first (by oid)
        (True, False, False, False),
        (False, False, True, False),  # then the oldest
        (False, False, False, True),
    ]


def test_fetch_samples_falls_back_when_tablesample_finds_nothing() -> None:
    from dbsentry.engines.postgres.catalog import fetch_samples

    cat = _catalog()
    rows = [("a1.b@example.com",), ("a2.b@example.com",)]
    conn = _FakeConn({2: 1e9}, {"TABLESAMPLE": [], '"hr"."staff" LIMIT 200': rows})
    report = _run(fetch_samples(conn, cat))
    assert report.findings[2]["ref"].data_class is DataClass.EMAIL  # type: ignore[attr-defined]

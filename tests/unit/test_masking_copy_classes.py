"""Copies of classified data: which columns inherit which class."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_masking_lineage import FUNCTIONS, ROWS, VIEWS, _rel

from dbsentry.engines.postgres.masking.copies import copied_classes
from dbsentry.engines.postgres.masking.lineage import analyze_lineage
from dbsentry.engines.postgres.session.masking import looks_masked, writes_masked_literal
from dbsentry.masking.catalog import Catalog, SourceColumn, classify_catalog
from dbsentry.masking.classes import Classification, DataClass
from dbsentry.masking.derived import DerivedClassFile, with_derived

T = 25
CATALOG = Catalog.from_rows(
    [*ROWS, *_rel(300, "public", "log", "r", [("id", 23, "integer"), ("msg", T, "text"), ("extra", T, "text")])],
    VIEWS,
    FUNCTIONS,
    ("public",),
)
CLASSMAP = classify_catalog(CATALOG)
MSG = SourceColumn("public", "log", "msg")
# A whole row, a function's result, an opaque value: a composite, redacted like a secret.
ROW = DataClass.SECRET


def copies(sql: str) -> dict[SourceColumn, DataClass]:
    return {k: v.data_class for k, v in copied_classes(analyze_lineage(sql, CATALOG, ("public",)), CLASSMAP).items()}


@pytest.mark.parametrize(
    "sql, cls",
    [
        ("insert into log (msg) select email from customers", DataClass.EMAIL),
        ("insert into log (msg) select c::text from customers c", ROW),
        ("insert into log (msg) select row_to_json(c)::text from customers c", ROW),
        ("insert into log (msg) select get_email(1)", ROW),
        # PL/pgSQL may read any table: the value may carry anything classified
        ("insert into log (msg) select plpg()", ROW),
        ("insert into log (id, msg) values (1, (select ssn from customers limit 1))", DataClass.NATIONAL_ID),
        ("insert into log values (1, (select ssn from customers limit 1))", DataClass.NATIONAL_ID),
        ("update log set msg = (select email from customers limit 1)", DataClass.EMAIL),
        ("update log l set msg = c.name from customers c where c.id = l.id", DataClass.PERSON_NAME),
        ("with x as (insert into log (msg) select email from customers returning 1) select * from x", DataClass.EMAIL),
        ("explain analyze insert into log (msg) select email from customers", DataClass.EMAIL),
        ("prepare p as insert into log (msg) select email from customers", DataClass.EMAIL),
        ("merge into log l using customers c on c.id = l.id when matched then update set msg = c.email", ROW),  # MERGE: every source column
        ("insert into log (msg) select city from orders o, lateral (select 'x' as city) z", None),
        ("insert into log (msg) select 'literal'", None),
    ],
)
def test_what_a_write_copies(sql: str, cls: DataClass | None) -> None:
    found = copies(sql)
    assert found.get(MSG) == cls, found


def test_new_tables_and_temp_tables() -> None:
    assert copies("create table loot as select email as c1 from customers") == {
        SourceColumn("public", "loot", "c1"): DataClass.EMAIL
    }
    assert copies("select name as who into loot from customers") == {SourceColumn("public", "loot", "who"): DataClass.PERSON_NAME}
    assert copies("create temp table loot as select email from customers") == {
        SourceColumn("pg_temp", "loot", "email"): DataClass.EMAIL
    }
    # a relation the catalog does not know, columns by position
    assert copies("insert into nowhere select email from customers") == {
        SourceColumn("public", "nowhere", "?column1?"): DataClass.EMAIL
    }
    assert copies("create materialized view mv as select email from customers") == {}


def test_a_column_keeping_its_own_value_is_no_copy() -> None:
    assert copies("update customers set email = lower(email) where id = 1") == {}
    assert copies("insert into customers select * from customers") == {}
    assert copies("update customers set notes = email") == {SourceColumn("public", "customers", "notes"): DataClass.EMAIL}


def test_inherited_classes_join_the_classmap_and_yield_to_the_policy() -> None:
    derived = {MSG: Classification(DataClass.EMAIL, "copy", "copied from public.customers.email")}
    merged = with_derived(CATALOG, CLASSMAP, derived)
    assert merged.get(MSG) == derived[MSG]
    assert merged.attrs[(300, 2)] == derived[MSG]
    assert with_derived(CATALOG, CLASSMAP, derived, {"log.msg": "none"}).get(MSG) is None
    # an existing, more sensitive class stays
    ssn = SourceColumn("public", "customers", "ssn")
    weaker = {ssn: Classification(DataClass.EMAIL, "copy", "x")}
    assert with_derived(CATALOG, CLASSMAP, weaker).get(ssn) == CLASSMAP.get(ssn)


def test_the_file_keeps_them(tmp_path: Path) -> None:
    f = DerivedClassFile(tmp_path / "state" / "derived.json")
    assert f.load() == {}
    data = {"prod": {MSG: Classification(DataClass.EMAIL, "copy", "copied from public.customers.email")}}
    f.save(data)
    assert f.load() == data
    assert (tmp_path / "state" / "derived.json").stat().st_mode & 0o777 == 0o600


def test_a_save_keeps_what_another_process_saved(tmp_path: Path) -> None:
    # Two workers: each saves what it knows; a save from one that has not heard of the
    # other's copy yet must not take it away (a restart would read the copy unmasked).
    path = tmp_path / "state" / "derived.json"
    other = SourceColumn("public", "notes", "body")
    DerivedClassFile(path).save({"prod": {MSG: Classification(DataClass.EMAIL, "copy", "a")}})
    DerivedClassFile(path).save({"prod": {other: Classification(DataClass.PERSON_NAME, "copy", "b")}})
    DerivedClassFile(path).save({"prod": {MSG: Classification(DataClass.NATIONAL_ID, "copy", "c")}})
    found = {k: v.data_class for k, v in DerivedClassFile(path).load()["prod"].items()}
    assert found == {MSG: DataClass.NATIONAL_ID, other: DataClass.PERSON_NAME}


@pytest.mark.parametrize(
    "value",
    [
        "****@example.com",
        "<email>",
        " <card> ",
        "**** **** **** 6467",
        "************6467",
        "+* *** *** 0132",
        "(***) ***-0199",
        "***-**-8714",
        "* ** ** ** *** *84 36",
        "DE** **** **** **** **30 00",
        "A** L*******",
        "1985-**-**",
        "48c7baaa99@b5fbeae0.invalid",
    ],
)
def test_what_the_proxy_emits_looks_masked(value: str) -> None:
    assert looks_masked(value)


@pytest.mark.parametrize(
    "value",
    ["note: ****", "see <email> field", "Password: ****", "a*b", "**** 1234 5678 9012", "<em>", "5 * 3 = 15", "*important*", "Total: **42**", "x@y.com"],
)
def test_text_that_only_contains_a_marker_is_not_masked(value: str) -> None:
    assert not looks_masked(value)


def test_masked_literals_in_sql() -> None:
    assert writes_masked_literal("insert into t values ('****@example.com')")
    assert writes_masked_literal("update t set a = '<card>' where b = 1")
    assert not writes_masked_literal("insert into t values ('note: ****', 'see <email>')")


def test_plans_are_not_shared_between_connections() -> None:
    """Two connections whose catalogs differ: the same text gets each one's plan."""
    from dbsentry.config import MaskingConfig
    from dbsentry.engines.postgres.session.masking import MaskingService
    from dbsentry.engines.postgres.sql.facts import analyze
    from dbsentry.policy.engine import Decision

    service = MaskingService(MaskingConfig(), b"k" * 32)
    other = Catalog.from_rows(_rel(100, "public", "customers", "r", [("id", 23, "integer"), ("email", T, "text")]), (), (), ("public",))
    harmless = Catalog.from_rows(_rel(100, "public", "customers", "r", [("id", 23, "integer"), ("email", 16, "boolean")]), (), (), ("public",))
    a = service.install("a", other, classify_catalog(other))
    b = service.install("b", harmless, classify_catalog(harmless))
    assert a.version != b.version
    sql = "select email from customers"
    facts = analyze(sql)
    decision = Decision("allow", (), "")
    (plan_a,) = service.plans(a, sql, facts, decision)
    assert plan_a is not None and plan_a.active
    assert service.plans(b, sql, facts, decision) == (None,)

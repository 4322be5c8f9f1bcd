"""Column lineage and mask plans: the bypass attempts a client might make."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from dbsentry.engines.postgres.masking.lineage import (
    LineageError,
    MaskSettings,
    StatementLineage,
    analyze_lineage,
    created_function_sources,
    lineage_of_tree,
    plan_masks,
)
from dbsentry.masking.catalog import Catalog, ClassMap, SourceColumn, classify_catalog
from dbsentry.masking.classes import DataClass

D = DataClass
T = 25  # text
I4 = 23


def _rel(
    oid: int, schema: str, name: str, kind: str, cols: list[tuple[str, int, str]]
) -> list[tuple[Any, ...]]:
    return [
        (oid, schema, name, kind, i + 1, c, t, tn, -1, None) for i, (c, t, tn) in enumerate(cols)
    ]


CUSTOMER_COLS = [
    ("id", I4, "integer"),
    ("name", T, "text"),
    ("email", T, "text"),
    ("phone", T, "text"),
    ("ssn", T, "text"),
    ("card_number", T, "text"),
    ("notes", T, "text"),
]
ROWS = [
    *_rel(100, "public", "customers", "r", CUSTOMER_COLS),
    *_rel(101, "public", "orders", "r", [("id", I4, "integer"), ("customer_id", I4, "integer"), ("total", 1700, "numeric")]),
    *_rel(102, "public", "v_contacts", "v", [("who", T, "text"), ("mail", T, "text")]),
    *_rel(103, "public", "v_nested", "v", [("x", T, "text")]),
    *_rel(104, "hr", "customers", "r", [("id", I4, "integer"), ("salary", 1700, "numeric")]),
    *_rel(105, "public", "v_broken", "v", [("a", T, "text")]),
    *_rel(106, "public", "v_harmless", "v", [("id", I4, "integer"), ("total", 1700, "numeric")]),
]  # fmt: skip
VIEWS = [
    (102, " SELECT customers.name AS who,\n    customers.email AS mail\n   FROM customers;"),
    (103, " SELECT upper(v_contacts.mail) AS x\n   FROM v_contacts;"),
    (105, "this is not sql"),
    (106, " SELECT orders.id, orders.total FROM orders;"),
]
FUNCTIONS = [
    (200, "public", "get_email", "sql", "SELECT email FROM customers WHERE id = $1", False, 1, ["cid"], [], 0, "f"),
    (201, "public", "plpg", "plpgsql", None, False, 1, [], [], 0, "f"),
    (202, "public", "all_customers", "sql", "SELECT id, email FROM customers", True, 0, ["id", "email"], ["t", "t"], 0, "f"),
    (203, "public", "plus_one", "sql", "SELECT $1 + 1", False, 1, [], [], 0, "f"),
    (204, "public", "ret_email", "sql", "RETURN (SELECT email FROM customers LIMIT 1)", False, 0, [], [], 0, "f"),
    (205, "public", "atomic_ssn", "sql", "BEGIN ATOMIC\n SELECT ssn FROM customers LIMIT 1;\nEND", False, 0, [], [], 0, "f"),
    (206, "public", "by_name", "sql", "SELECT email FROM customers WHERE id = cid", False, 1, ["cid"], [], 0, "f"),
    (207, "public", "digest", "c", None, False, 2, [], [], 0, "f"),
    (208, "public", "whole", "sql", "SELECT * FROM customers", True, 0, [], [], 100, "f"),
    (209, "public", "looping", "sql", "SELECT looping()", False, 0, [], [], 0, "f"),
]  # fmt: skip
CATALOG = Catalog.from_rows(ROWS, VIEWS, FUNCTIONS, ("public",))
CLASSMAP = classify_catalog(CATALOG)
CUSTOMERS = ("public", "customers")


def lin(sql: str, **kw: Any) -> StatementLineage:
    (one,) = analyze_lineage(sql, CATALOG, **kw)
    return one


def cols(sql: str) -> list[set[str]]:
    return [{s.column for s in c.sources} for c in lin(sql).columns]


def classes(sql: str, settings: MaskSettings | None = None) -> list[tuple[str, str] | None]:
    plan = plan_masks(lin(sql), CLASSMAP, settings)
    assert not plan.deny
    return [
        (m.data_class.value if m.data_class else "?", m.strategy) if m else None
        for m in plan.columns
    ]


def test_classmap_from_catalog() -> None:
    assert {str(s) for s in CLASSMAP.columns} == {
        "public.customers.name",
        "public.customers.email",
        "public.customers.phone",
        "public.customers.ssn",
        "public.customers.card_number",
        "public.v_contacts.mail",
    }
    assert CLASSMAP.tables == {CUSTOMERS, ("public", "v_contacts")}


def test_plain_columns_and_aliases() -> None:
    assert classes("SELECT id, email, phone FROM customers") == [
        None,
        ("email", "partial"),
        ("phone", "partial"),
    ]
    assert classes("SELECT c.email AS contact FROM public.customers AS c") == [("email", "partial")]
    assert classes('SELECT "c"."email" FROM "customers" "c"') == [("email", "partial")]
    assert classes("SELECT customers.ssn FROM customers") == [("national_id", "partial")]
    assert classes("SELECT public.customers.ssn FROM public.customers") == [
        ("national_id", "partial")
    ]


def test_search_path_picks_the_schema() -> None:
    assert classes("SELECT * FROM customers") == [
        None,
        ("person_name", "redact"),
        ("email", "partial"),
        ("phone", "partial"),
        ("national_id", "partial"),
        ("payment_card", "partial"),
        None,
    ]
    # hr.customers has no sensitive columns
    assert classes(
        "SELECT * FROM customers",
    ) != [None, None]
    only_hr = plan_masks(lin("SELECT * FROM customers", search_path=("hr", "public")), CLASSMAP)
    assert only_hr.columns == (None, None)
    assert lin(
        "SELECT * FROM customers", search_path=("$user", "public"), user="hr"
    ).tables_read == {("hr", "customers")}


def test_casts_do_not_unmask() -> None:
    assert classes(
        "SELECT email::text, email::varchar(3), CAST(ssn AS bytea), ssn::int8 FROM customers"
    ) == [
        ("email", "partial"),
        ("email", "redact"),  # cut: see below
        ("national_id", "partial"),
        ("national_id", "partial"),
    ]
    # A cast that may cut the value is derived: a partial mask of ssn::varchar(8) would
    # show two of the digits the whole value's mask hides (***-*1-3), card_number::char(12)
    # the four before the last four.
    assert classes(
        "SELECT ssn::varchar(8), card_number::char(12), CAST(ssn AS character(7)), ssn::char,"
        ' ssn::"char", ssn::name, card_number::numeric(20, 0), ssn::varchar, ssn::bpchar FROM customers'
    ) == [
        ("national_id", "redact"),
        ("payment_card", "redact"),
        ("national_id", "redact"),
        ("national_id", "redact"),
        ("national_id", "redact"),
        ("national_id", "redact"),
        ("payment_card", "redact"),
        ("national_id", "partial"),
        ("national_id", "partial"),
    ]


@pytest.mark.parametrize(
    "expr",
    [
        "upper(email)",
        "lower(email)",
        "substr(email, 1, 3)",
        "left(email, 3)",
        "right(email, 3)",
        "overlay(email placing 'x' from 1)",
        "reverse(email)",
        "concat('a', email)",
        "concat_ws(',', id, email)",
        "'<' || email || '>'",
        "md5(email)",
        "encode(email::bytea, 'hex')",
        "format('%s', email)",
        "coalesce(email, phone)",
        "CASE WHEN id > 1 THEN email ELSE 'x' END",
        "greatest(email, 'a')",
        "translate(email, 'abc', 'xyz')",
        "regexp_replace(email, '@.*', '')",
        "split_part(email, '@', 2)",
        "(SELECT email FROM customers c2 WHERE c2.id = customers.id)",
        "ARRAY(SELECT email FROM customers)",
        'email COLLATE "C"',
        "lag(email) OVER (ORDER BY id)",
    ],
)
def test_functions_of_a_column_derive_from_it(expr: str) -> None:
    plan = classes(f"SELECT {expr} FROM customers")
    assert plan[0] is not None and plan[0][0] in ("email", "phone"), expr


def test_partial_only_for_direct_values() -> None:
    assert classes(
        "SELECT upper(email), coalesce(email, ''), min(email), nullif(email, '') FROM customers"
    ) == [
        ("email", "redact"),
        ("email", "partial"),
        ("email", "partial"),
        ("email", "partial"),
    ]
    # two classes in one value: redact with the most sensitive
    assert classes("SELECT concat(email, ssn), coalesce(email, ssn) FROM customers") == [
        ("national_id", "redact"),
        ("national_id", "redact"),
    ]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT row_to_json(c) FROM customers c",
        "SELECT to_jsonb(c.*) FROM customers c",
        "SELECT to_json(c) FROM customers AS c",
        "SELECT json_agg(c) FROM customers c",
        "SELECT jsonb_agg(c.*) FROM customers c",
        "SELECT ROW(c.*) FROM customers c",
        "SELECT c FROM customers c",
        "SELECT customers FROM customers",
        "SELECT row_to_json(t) FROM (SELECT email FROM customers) t",
        "SELECT json_build_object('e', email) FROM customers",
        "SELECT j.value FROM customers c, json_each(row_to_json(c)) j",
        "SELECT hstore(c) FROM customers c",
    ],
)
def test_whole_row_functions(sql: str) -> None:
    plan = classes(sql)
    assert plan[0] is not None and plan[0][1] == "redact", sql


def test_aggregates() -> None:
    assert classes(
        "SELECT string_agg(email, ','), array_agg(phone), count(email), count(DISTINCT email) FROM customers"
    ) == [
        ("email", "redact"),
        ("phone", "redact"),
        None,
        None,
    ]


def test_star_expansion() -> None:
    assert cols("SELECT c.*, o.total FROM customers c JOIN orders o ON o.customer_id = c.id") == [
        {"id"}, {"name"}, {"email"}, {"phone"}, {"ssn"}, {"card_number"}, {"notes"}, {"total"},
    ]  # fmt: skip
    assert cols("SELECT o.*, * FROM orders o, customers c")[3:6] == [
        {"id"},
        {"customer_id"},
        {"total"},
    ]
    # JOIN USING merges the join columns first, as PostgreSQL does
    assert cols("SELECT * FROM customers JOIN orders USING (id)") == [
        {"id"}, {"name"}, {"email"}, {"phone"}, {"ssn"}, {"card_number"}, {"notes"}, {"customer_id"}, {"total"},
    ]  # fmt: skip
    assert len(cols("SELECT * FROM customers NATURAL JOIN orders")) == 9
    assert cols("SELECT * FROM customers c(a, b, e)")[:3] == [{"id"}, {"name"}, {"email"}]
    assert cols("SELECT e FROM customers c(a, b, e)") == [{"email"}]


def test_union_with_a_harmless_column() -> None:
    assert classes("SELECT id::text FROM orders UNION SELECT email FROM customers") == [
        ("email", "partial")
    ]
    assert classes("SELECT total, id FROM orders UNION ALL SELECT 1, ssn FROM customers") == [
        None,
        ("national_id", "partial"),
    ]
    assert classes("SELECT 'x' INTERSECT SELECT email FROM customers") == [("email", "partial")]
    assert classes("(SELECT email FROM customers) EXCEPT (SELECT 'a')") == [("email", "partial")]


def test_subqueries_and_ctes() -> None:
    assert classes("SELECT x FROM (SELECT email AS x FROM customers) s") == [("email", "partial")]
    assert classes("SELECT s.x FROM (SELECT upper(ssn) x FROM customers) AS s") == [
        ("national_id", "redact")
    ]
    assert classes("WITH t AS (SELECT email FROM customers) SELECT * FROM t") == [
        ("email", "partial")
    ]
    assert classes("WITH t(a) AS (SELECT phone FROM customers) SELECT a FROM t") == [
        ("phone", "partial")
    ]
    assert classes(
        "WITH a AS (SELECT ssn FROM customers), b AS (SELECT ssn AS k FROM a) SELECT k FROM b"
    ) == [("national_id", "partial")]
    assert classes("SELECT (SELECT email FROM customers LIMIT 1) AS e") == [("email", "partial")]
    assert classes("SELECT e FROM customers c, LATERAL (SELECT c.email AS e) l") == [
        ("email", "partial")
    ]
    assert classes("SELECT u FROM customers c, unnest(ARRAY[c.email]) u") == [("email", "redact")]
    assert classes("SELECT * FROM (VALUES (1, 'a')) v(a, b)") == [None, None]


def test_recursive_cte_reaches_a_fixpoint() -> None:
    sql = """
        WITH RECURSIVE r(a, b, n) AS (
            SELECT 'x', email, 1 FROM customers
            UNION ALL
            SELECT b, a, n + 1 FROM r WHERE n < 3
        ) SELECT a, b, n FROM r
    """
    assert cols(sql) == [{"email"}, {"email"}, set()]


def test_search_and_cycle_columns_of_a_recursive_cte_carry_its_values() -> None:
    """``SEARCH ... SET seq`` is a record of the searched columns' values, ``CYCLE ...
    USING path`` an array of records of the cycle columns': an attacker read names
    through both (``SELECT seq FROM w``)."""
    base = "WITH RECURSIVE w(x, n) AS (SELECT name, id FROM customers UNION ALL SELECT x, n FROM w WHERE false) "
    assert cols(base + "SEARCH BREADTH FIRST BY x SET o SELECT o FROM w") == [{"name"}]
    assert cols(base + "SEARCH DEPTH FIRST BY n, x SET o SELECT o, n FROM w") == [{"name", "id"}, {"id"}]
    cyc = base + "CYCLE x SET is_cycle USING path "
    assert cols(cyc + "SELECT path, is_cycle FROM w") == [{"name"}, set()]
    assert cols(cyc + "SELECT * FROM w") == [{"name"}, {"id"}, set(), {"name"}]
    assert cols(base + "SEARCH DEPTH FIRST BY x SET o CYCLE n SET m TO 'y' DEFAULT 'n' USING p SELECT * FROM w") == [
        {"name"}, {"id"}, {"name"}, set(), {"id"}
    ]  # fmt: skip
    # the mark compares the cycle columns between rows, as DISTINCT would
    uses = {(u.column.column, u.clause) for u in lin(cyc + "SELECT n FROM w").predicates}
    assert ("name", "CYCLE") in uses
    assert classes(cyc + "SELECT path FROM w") == [("person_name", "redact")]


def test_sources_of_the_sql_functions_a_statement_creates() -> None:
    """A SQL function's body is a query kept to run later, like a view's: what it returns
    or stores counts (a masked identity may not create one over classified columns)."""

    def sources(sql: str) -> set[str]:
        return {str(s) for s in created_function_sources(sql, CATALOG, ("public",))}

    assert sources("CREATE FUNCTION pg_temp.f() RETURNS SETOF text LANGUAGE sql AS $$SELECT name FROM customers$$") == {"public.customers.name"}
    assert sources("CREATE FUNCTION f() RETURNS text LANGUAGE sql RETURN (SELECT ssn FROM customers LIMIT 1)") == {"public.customers.ssn"}
    assert sources("CREATE FUNCTION f() RETURNS text LANGUAGE sql BEGIN ATOMIC; SELECT phone FROM customers LIMIT 1; END") == {"public.customers.phone"}
    assert sources("CREATE PROCEDURE p() LANGUAGE sql AS $$INSERT INTO orders (total) SELECT length(ssn) FROM customers$$") == {"public.customers.ssn"}
    assert sources("CREATE FUNCTION f() RETURNS text LANGUAGE sql SET search_path = hr AS $$SELECT salary::text FROM customers$$") == {"hr.customers.salary"}
    # a lookup by a classified column returns none of its values
    assert sources("CREATE FUNCTION f(e text) RETURNS int LANGUAGE sql AS $$SELECT id FROM customers WHERE email = e$$") == {"public.customers.id"}
    # other languages are opaque; other statements create no function
    assert sources("CREATE FUNCTION f() RETURNS text LANGUAGE plpgsql AS $$BEGIN RETURN (SELECT ssn FROM customers LIMIT 1); END$$") == set()
    assert sources("SELECT ssn FROM customers") == set()
    with pytest.raises(LineageError):
        sources("CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$SELECT FROM WHERE$$")


def test_alter_table_stores_generated_and_using_expressions() -> None:
    """A generated column and ALTER COLUMN ... TYPE ... USING store an expression over
    the row in a column: copies, like an UPDATE (an attacker read names from both)."""

    def writes(sql: str) -> dict[str, set[str]]:
        return {f"{t[1]}.{c.name}": {s.column for s in c.sources} for t, c in lin(sql).writes}

    assert writes("ALTER TABLE customers ADD COLUMN zz text GENERATED ALWAYS AS (name || ssn) STORED") == {
        "customers.zz": {"name", "ssn"}
    }
    assert writes("ALTER TABLE customers ALTER COLUMN notes TYPE text USING name") == {"customers.notes": {"name"}}
    assert writes("ALTER TABLE customers ALTER COLUMN email TYPE text USING lower(email)") == {
        "customers.email": {"email"}  # keeps its own value: no copy
    }
    assert writes("ALTER TABLE customers ADD COLUMN n int DEFAULT 0, ALTER COLUMN id TYPE bigint") == {"customers.n": set()}


def test_merge_into_a_table_the_catalog_does_not_know_stores_its_source() -> None:
    """``MERGE INTO tmp USING customers c ON false WHEN NOT MATCHED THEN INSERT VALUES
    (c.name)``: a temporary target has no known columns, but what it stores is known."""
    (write,) = lin("MERGE INTO tmp USING customers c ON false WHEN NOT MATCHED THEN INSERT VALUES (c.name)").writes
    assert write[0][1] == "tmp" and "name" in {s.column for s in write[1].sources}
    assert lin("MERGE INTO tmp USING orders o ON false WHEN NOT MATCHED THEN INSERT VALUES (o.id)").writes[0][1].sources == {
        SourceColumn("public", "orders", c) for c in ("id", "customer_id", "total")
    }


def test_views_expand_recursively() -> None:
    assert classes("SELECT * FROM v_contacts") == [("person_name", "redact"), ("email", "partial")]
    assert classes("SELECT x FROM v_nested") == [("email", "redact")]
    sl = lin("SELECT x FROM v_nested")
    assert {t for _, t in sl.tables_read} == {"v_nested", "v_contacts", "customers"}
    assert classes("SELECT * FROM v_harmless") == [None, None]


def test_a_view_that_cannot_be_analysed_is_unknown() -> None:
    sl = lin("SELECT a FROM v_broken")
    assert sl.columns[0].unknown
    # it reads nothing known to be sensitive, so no mask
    assert plan_masks(sl, CLASSMAP).columns == (None,)


def test_sql_functions() -> None:
    assert classes("SELECT get_email(1)") == [("email", "redact")]
    assert classes("SELECT by_name(1)") == [("email", "redact")]
    assert classes("SELECT ret_email()") == [("email", "redact")]
    assert classes("SELECT atomic_ssn()") == [("national_id", "redact")]
    assert classes("SELECT plus_one(id) FROM orders") == [None]
    assert classes("SELECT plus_one(card_number::int) FROM customers") == [
        ("payment_card", "redact")
    ]
    assert classes("SELECT * FROM all_customers()") == [None, ("email", "redact")]
    assert classes("SELECT email FROM all_customers() AS a") == [("email", "redact")]
    assert len(cols("SELECT * FROM whole()")) == 7
    assert classes("SELECT digest(ssn, 'sha256') FROM customers") == [("national_id", "redact")]
    assert lin("SELECT get_email(1)").tables_read == {CUSTOMERS}


def test_recursive_sql_function_does_not_loop() -> None:
    sl = lin("SELECT looping()")
    assert sl.columns[0].unknown


def test_opaque_functions_are_unknown() -> None:
    sl = lin("SELECT plpg(id) FROM customers")
    assert sl.columns[0].unknown and sl.reads_unknown
    assert classes("SELECT plpg(id) FROM customers") == [("?", "detect")]
    # PL/pgSQL can read any table, even when the statement names none
    assert classes("SELECT plpg(1)") == [("?", "detect")]
    assert classes("SELECT query_to_xml('select * from customers', true, true, '')") == [
        ("?", "detect")
    ]


def test_unresolved_can_deny() -> None:
    plan = plan_masks(lin("SELECT plpg(1)"), CLASSMAP, MaskSettings(unresolved="deny"))
    assert plan.deny and plan.reason


def test_unknown_relations_make_star_inexact() -> None:
    sl = lin("SELECT * FROM unknown_table, customers")
    assert not sl.exact
    plan = plan_masks(sl, CLASSMAP)
    assert plan.reads_sensitive and all(
        m is not None and m.strategy == "detect" for m in plan.columns
    )
    assert plan_masks(sl, CLASSMAP, MaskSettings(unresolved="deny")).deny
    # no sensitive table: nothing to do
    assert not plan_masks(lin("SELECT * FROM unknown_table"), CLASSMAP).active


def test_presence_is_not_content() -> None:
    assert classes(
        "SELECT email IS NULL, ssn IS NOT NULL, EXISTS (SELECT ssn FROM customers) FROM customers"
    ) == [
        None,
        None,
        None,
    ]


def test_where_clause_reads_count() -> None:
    sl = lin(
        "SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE ssn LIKE '1%')"
    )
    assert CUSTOMERS in sl.tables_read
    assert plan_masks(sl, CLASSMAP).columns == (None,)
    assert plan_masks(sl, CLASSMAP).reads_sensitive


def test_dml_returning() -> None:
    assert classes("DELETE FROM customers WHERE id = 1 RETURNING email, id") == [
        ("email", "partial"),
        None,
    ]
    assert classes("UPDATE customers SET notes = email WHERE id = 1 RETURNING notes") == [
        ("email", "partial")
    ]
    assert classes(
        "UPDATE orders o SET total = 1 FROM customers c WHERE c.id = o.customer_id RETURNING c.ssn"
    ) == [("national_id", "partial")]
    assert classes("INSERT INTO orders (id) SELECT 1 RETURNING *") == [None, None, None]
    # data copied from a sensitive column into a harmless one stays sensitive
    assert classes("INSERT INTO customers (notes) SELECT ssn FROM customers RETURNING notes") == [
        ("national_id", "partial")
    ]
    assert lin("UPDATE customers SET notes = 'x'").returns_rows is False


def test_copy() -> None:
    sl = lin("COPY customers TO STDOUT")
    assert sl.copy is not None and sl.copy.format == "text"
    assert sl.copy.type_oids == (I4, T, T, T, T, T, T)
    assert len(sl.columns) == 7
    sl = lin("COPY customers (email, id) TO STDOUT WITH (FORMAT csv, HEADER)")
    assert sl.copy is not None and (
        sl.copy.format,
        sl.copy.header,
        sl.copy.delimiter,
        sl.copy.null,
    ) == ("csv", True, ",", "")
    assert [c.name for c in sl.columns] == ["email", "id"]
    assert classes("COPY (SELECT upper(email) FROM customers) TO STDOUT") == [("email", "redact")]
    assert lin("COPY customers FROM STDIN").returns_rows is False
    assert lin("COPY customers TO 'out.csv'").returns_rows is False


def test_cursors_and_prepared_statements() -> None:
    d = lin("DECLARE c CURSOR FOR SELECT email FROM customers")
    assert d.declares == "c" and not d.returns_rows and d.columns[0].sources
    f = lin("FETCH 10 FROM c")
    assert f.fetches == "c" and f.returns_rows and f.reads_unknown
    p = lin("PREPARE q AS SELECT ssn FROM customers")
    assert p.prepares == "q" and not p.returns_rows
    e = lin("EXECUTE q")
    assert e.executes == "q" and e.returns_rows
    # without the cursor's lineage, FETCH is masked by value detection
    assert plan_masks(f, CLASSMAP).reads_sensitive


def test_other_statements() -> None:
    assert not lin("CREATE TABLE x (a int)").returns_rows
    assert lin("EXPLAIN SELECT email FROM customers").columns[0].sources == frozenset()
    assert lin("SHOW search_path").columns[0].name == "search_path"
    assert not lin("SELECT email INTO TEMP t FROM customers").returns_rows


def test_schema_qualified_sources() -> None:
    sl = lin(
        "SELECT hr.customers.salary, public.customers.email FROM hr.customers, public.customers"
    )
    assert [c.sources for c in sl.columns] == [
        frozenset({SourceColumn("hr", "customers", "salary")}),
        frozenset({SourceColumn("public", "customers", "email")}),
    ]


def test_parse_errors_raise() -> None:
    with pytest.raises(LineageError):
        analyze_lineage("SELEC email FROM customers", CATALOG)


def test_several_statements() -> None:
    out = analyze_lineage("SELECT 1; SELECT email FROM customers", CATALOG)
    assert [len(s.columns) for s in out] == [1, 1]


def test_settings() -> None:
    s = MaskSettings(
        strategies={D.EMAIL: "hash"}, column_strategies={"public.customers.phone": "null"}
    )
    assert classes("SELECT email, phone, ssn FROM customers", s) == [
        ("email", "hash"),
        ("phone", "null"),
        ("national_id", "partial"),
    ]
    with pytest.raises(ValueError):
        MaskSettings(strategies={D.EMAIL: "scramble"})


def test_overrides() -> None:
    cm = classify_catalog(
        CATALOG, {"public.customers.notes": "secret", "customers.email": "none", "v_*.mail": "none"}
    )
    assert cm.columns[SourceColumn("public", "customers", "notes")].source == "policy"
    assert SourceColumn("public", "customers", "email") not in cm.columns
    assert SourceColumn("public", "v_contacts", "mail") not in cm.columns
    with pytest.raises(ValueError):
        classify_catalog(CATALOG, {"public.customers.notes": "bogus"})
    with pytest.raises(ValueError):
        classify_catalog(CATALOG, {"notes": "email"})


def test_catalog_lookups() -> None:
    rel = CATALOG.relation(None, "customers")
    assert rel is not None and rel.schema == "public"
    hit = CATALOG.column_at(100, 3)
    assert hit is not None and hit[1].name == "email"
    assert CATALOG.column_at(100, 99) is None
    assert CLASSMAP.attrs[(100, 3)].data_class is D.EMAIL
    assert CATALOG.functions_named(None, "get_email")[0].in_names == ("cid",)
    assert CATALOG.functions_named(None, "all_customers")[0].out_names == ("id", "email")
    assert CATALOG.functions_named(None, "upper") == []


def test_empty_classmap_masks_nothing() -> None:
    plan = plan_masks(lin("SELECT plpg(1)"), ClassMap({}))
    assert not plan.active


# -- unknown nodes and hostile trees -------------------------------------------------------------


def _tree(val: Any) -> dict[str, Any]:
    return {
        "SelectStmt": {
            "targetList": [{"ResTarget": {"val": val}}],
            "fromClause": [{"RangeVar": {"relname": "customers", "inh": True}}],
        }
    }


_EMAIL = {"ColumnRef": {"fields": [{"String": {"sval": "email"}}]}}


def test_an_unknown_node_gives_an_unknown_lineage_not_a_guess() -> None:
    out = lineage_of_tree(_tree({"SomeFutureExpr": {"arg": _EMAIL}}), CATALOG)
    (col,) = out.columns
    assert col.unknown and not col.direct
    assert CUSTOMERS in out.tables_read  # still walked for what it reads
    plan = plan_masks(out, CLASSMAP)
    assert plan.columns[0] is not None and plan.columns[0].strategy == "detect"


def test_known_derived_nodes_still_derive() -> None:
    for sql in ("select row(email) from customers", "select json_object('k': email) from customers", "select xmlelement(name x, email) from customers"):  # fmt: skip
        (col,) = lin(sql).columns
        assert not col.unknown, sql
        assert {s.column for s in col.sources} == {"email"}, sql


@pytest.mark.parametrize(
    "sql",
    [
        "select " + "not " * 2001 + "true",
        "select " + "(select " * 300 + "1" + ")" * 300,
        "select * from customers where " + " and ".join(["id = 1"] * 100_000),
        "select " + "(" * 10_000 + "1" + ")" * 10_000,
    ],
)
def test_too_deep_or_large_raises_lineage_error(sql: str) -> None:
    with pytest.raises(LineageError, match=r"too complex|memory exhausted"):
        analyze_lineage(sql, CATALOG)


def test_recursion_in_the_walk_raises_lineage_error() -> None:
    import sys

    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 80)
    try:
        with pytest.raises(LineageError, match="too complex"):
            analyze_lineage("select " + "lower(" * 150 + "email" + ")" * 150 + " from customers", CATALOG)
    finally:
        sys.setrecursionlimit(old)


@pytest.mark.parametrize(
    "tree",
    [
        {"SelectStmt": {"targetList": 5}},
        {"SelectStmt": {"fromClause": [{"RangeVar": []}]}},
        {"InsertStmt": {"relation": {"relname": 3}, "cols": "x"}},
        {"SelectStmt": {"targetList": [{"ResTarget": {"val": {"FuncCall": {"funcname": 1}}}}]}},
    ],
)
def test_malformed_trees_raise_lineage_error(tree: Any) -> None:
    with contextlib.suppress(LineageError):
        lineage_of_tree(tree, CATALOG)


def test_functions_behind_pg_stat_activity_return_statement_texts() -> None:
    """The statistics functions the pg_stat_activity view is built on return the same
    texts: their values are pg_stat_activity.query's, and they read that view in effect.
    Column names a client gives them prove nothing (the text may be called ``state``)."""
    text = SourceColumn("pg_catalog", "pg_stat_activity", "query")
    for sql in (
        "SELECT pg_stat_get_backend_activity(1)",
        "SELECT (pg_catalog.pg_stat_get_activity(NULL)).query",
        "SELECT a.pid FROM pg_stat_get_activity(NULL) a",
        "SELECT a.state FROM pg_stat_get_activity(NULL) a(datid, pid, usesysid, application_name, query, state)",
        "SELECT query FROM pg_stat_statements(true)",
    ):
        (lin,) = analyze_lineage(sql, CATALOG)
        assert all(text in c.sources for c in lin.columns), sql
        assert ("pg_catalog", "pg_stat_activity") in lin.tables_read, sql
    (lin,) = analyze_lineage("SELECT pg_stat_get_backend_pid(1), pg_backend_pid()", CATALOG)
    assert all(not c.sources for c in lin.columns)

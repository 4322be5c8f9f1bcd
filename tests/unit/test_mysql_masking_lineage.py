"""Lineage of MySQL queries and the plans made of it (engines/mysql/masking/lineage.py,
plan.py), on a catalog built from information_schema-shaped rows; pure."""

from __future__ import annotations

import pytest

from dbsentry.engines.mysql.catalog import catalog_from_rows, neutral_type, sample_sql
from dbsentry.engines.mysql.masking import MysqlMaskPlan, Refusal, plan_for
from dbsentry.engines.mysql.masking.lineage import StatementLineage, lineage_of_query
from dbsentry.engines.mysql.sql.facts import parse_queries
from dbsentry.masking.catalog import SourceColumn, classify_catalog
from dbsentry.masking.classes import DataClass
from dbsentry.masking.plans import MaskSettings

TABLES = {
    ("app", "people"): [("id", "int"), ("email", "varchar"), ("ssn", "char"), ("contact", "varchar"), ("city", "varchar"), ("notes", "text")],
    ("app", "orders"): [("id", "int"), ("person_id", "int"), ("total", "decimal")],
    ("app", "v"): [("id", "int"), ("mail", "varchar")],
    ("app", "vv"): [("m", "varchar")],
    ("hr", "people"): [("id", "int"), ("phone", "varchar")],
}
COMMENTS = {("app", "people", "notes"): "pii:person_name"}
VIEWS = [
    ("app", "v", "select `app`.`people`.`id` AS `id`,ucase(`app`.`people`.`email`) AS `mail` from `app`.`people`"),
    ("app", "vv", "select `app`.`v`.`mail` AS `m` from `app`.`v`"),
]


def _rows() -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for (schema, table), cols in TABLES.items():
        kind = "VIEW" if table.startswith("v") else "BASE TABLE"
        for i, (name, dt) in enumerate(cols, start=1):
            out.append((schema, table, kind, i, name, dt, dt, COMMENTS.get((schema, table, name), ""), ""))
    return out


CATALOG = catalog_from_rows(_rows(), VIEWS, "app")
CLASSMAP = classify_catalog(CATALOG)


def S(table: str, column: str, schema: str = "app") -> SourceColumn:
    return SourceColumn(schema, table, column)


def lineage(sql: str, database: str | None = "app") -> StatementLineage:
    (q,) = parse_queries(sql)
    assert q is not None
    return lineage_of_query(q.tree, CATALOG, database, opaque_calls=q.opaque_calls, into=q.into)


def sources(sql: str) -> list[frozenset[SourceColumn]]:
    return [c.sources for c in lineage(sql).columns]


def test_classification_of_the_catalog() -> None:
    assert CLASSMAP.columns[S("people", "email")].data_class is DataClass.EMAIL
    assert CLASSMAP.columns[S("people", "ssn")].data_class is DataClass.NATIONAL_ID
    assert CLASSMAP.columns[S("people", "notes")].data_class is DataClass.PERSON_NAME
    assert CLASSMAP.columns[S("people", "phone", "hr")].data_class is DataClass.PHONE
    assert S("people", "city") not in CLASSMAP.columns


def test_columns_aliases_and_qualification() -> None:
    lin = lineage("SELECT p.email AS e, `ssn`, app.people.city, EMAIL FROM people p")
    assert [c.name for c in lin.columns] == ["e", "ssn", "city", "EMAIL"]
    assert [c.sources for c in lin.columns] == [
        {S("people", "email")}, {S("people", "ssn")}, {S("people", "city")}, {S("people", "email")}
    ]
    assert all(c.direct for c in lin.columns)
    assert lin.tables_read == {("app", "people")}
    assert sources("SELECT phone FROM hr.people") == [{S("people", "phone", "hr")}]


def test_star_and_table_star() -> None:
    lin = lineage("SELECT *, o.* FROM people JOIN orders o ON o.person_id = people.id")
    names = [c.name for c in lin.columns]
    assert names == ["id", "email", "ssn", "contact", "city", "notes", "id", "person_id", "total", "id", "person_id", "total"]
    assert lin.exact
    assert lineage("SELECT * FROM people JOIN orders USING (id)").exact is False  # merged columns move
    assert lineage("SELECT * FROM nowhere").exact is False
    assert lineage("SELECT id FROM nowhere").columns[0].unknown


def test_subqueries_ctes_and_set_operations() -> None:
    assert sources("SELECT x FROM (SELECT email AS x FROM people) d") == [{S("people", "email")}]
    assert sources("SELECT b FROM (SELECT email, ssn FROM people) AS d (a, b)") == [{S("people", "ssn")}]
    assert sources("WITH c (m) AS (SELECT contact FROM people) SELECT UPPER(m) FROM c") == [{S("people", "contact")}]
    assert sources("SELECT id, (SELECT MAX(ssn) FROM people q WHERE q.id = o.person_id) FROM orders o")[1] == {S("people", "ssn")}
    union = lineage("SELECT city FROM people UNION ALL SELECT email FROM people")
    assert union.columns[0].sources == {S("people", "city"), S("people", "email")}
    assert union.columns[0].direct
    rec = lineage(
        "WITH RECURSIVE r (n, e) AS (SELECT 1, email FROM people UNION ALL SELECT n + 1, e FROM r WHERE n < 3) SELECT n, e FROM r"
    )
    assert rec.columns[0].sources == frozenset() and rec.columns[1].sources == {S("people", "email")}


def test_views_expand_to_their_tables() -> None:
    lin = lineage("SELECT mail FROM v")
    assert lin.columns[0].sources == {S("v", "mail"), S("people", "email")}
    assert not lin.columns[0].direct  # ucase()
    assert ("app", "people") in lin.tables_read
    assert lineage("SELECT m FROM vv").columns[0].sources == {S("vv", "m"), S("v", "mail"), S("people", "email")}


@pytest.mark.parametrize(
    ("expr", "columns", "direct"),
    [
        ("CONCAT(email, ssn)", "email ssn", False),
        ("SUBSTRING(ssn, 1, 3)", "ssn", False),
        ("LOWER(email)", "email", False),
        ("COALESCE(email, ssn)", "email ssn", True),
        ("IFNULL(email, ssn)", "email ssn", True),
        ("CASE WHEN id > 1 THEN email ELSE ssn END", "id email ssn", False),
        ("IF(id > 1, email, ssn)", "id email ssn", False),
        # a cast that may cut the value is derived: a partial mask of the cut value would
        # show characters the whole value's mask hides
        ("CAST(email AS CHAR(10))", "email", False),
        ("CONVERT(ssn, CHAR(6))", "ssn", False),
        ("CAST(ssn AS BINARY(8))", "ssn", False),
        ("CAST(email AS CHAR)", "email", True),
        ("CAST(email AS BINARY)", "email", True),
        ("email COLLATE utf8mb4_bin", "email", True),
        ("CONVERT(email USING latin1)", "email", True),
        ("GROUP_CONCAT(email, ssn)", "email ssn", False),
        ("MAX(email)", "email", True),
        ("email || ssn", "email ssn", False),
    ],
)
def test_expressions_derive_from_every_column(expr: str, columns: str, direct: bool) -> None:
    lin = lineage(f"SELECT {expr} FROM people")
    assert lin.columns[0].sources == {S("people", c) for c in columns.split()}
    assert lin.columns[0].direct is direct


def test_presence_derives_from_nothing() -> None:
    assert sources("SELECT COUNT(*), COUNT(email), email IS NULL, EXISTS (SELECT 1 FROM people) FROM people") == [frozenset()] * 4
    assert sources("SELECT ROW_NUMBER() OVER (ORDER BY id) FROM people") == [frozenset()]


def test_what_cannot_be_traced_is_unknown() -> None:
    lin = lineage("SELECT my_func(email), @v, app.f(id) FROM people")
    assert [c.unknown for c in lin.columns] == [True, True, True]
    assert lin.reads_unknown
    # a stored function anywhere in the statement: sqlglot may have read its name as
    # another dialect's built-in, so every function's value is unknown
    (q,) = parse_queries("SELECT to_char(email), LOWER(ssn) FROM people")
    assert q is not None and q.opaque_calls
    lin = lineage_of_query(q.tree, CATALOG, "app", opaque_calls=True)
    assert all(c.unknown for c in lin.columns)
    assert not lineage("SELECT @@version, LOWER(email) FROM people").reads_unknown


def test_names_without_a_database_match_every_schema() -> None:
    lin = lineage("SELECT id FROM people", database=None)
    assert lin.columns[0].sources == {S("people", "id"), S("people", "id", "hr")}
    assert lineage("SELECT ID FROM PEOPLE").columns[0].sources == {S("people", "id")}


def uses(sql: str) -> set[tuple[str, str, str]]:
    return {(str(u.column), u.clause, u.shape) for u in lineage(sql).predicates}


def test_predicate_uses() -> None:
    assert uses("SELECT id FROM people WHERE email = 'a@b.c' AND ssn IN ('1', ?) OR NOT city <=> 'x'") == {
        ("app.people.email", "WHERE", "equality"),
        ("app.people.ssn", "WHERE", "equality"),
        ("app.people.city", "WHERE", "equality"),
    }
    assert ("app.people.ssn", "WHERE", "other") in uses("SELECT id FROM people WHERE ssn LIKE '5%'")
    assert ("app.people.ssn", "WHERE", "other") in uses("SELECT id FROM people WHERE LOWER(ssn) = 'x'")
    assert ("app.people.email", "WHERE", "presence") in uses("SELECT id FROM people WHERE email IS NULL")
    assert ("app.people.ssn", "ORDER BY", "other") in uses("SELECT ssn FROM people ORDER BY 1")
    assert ("app.people.ssn", "ORDER BY", "other") in uses("SELECT ssn AS s FROM people ORDER BY s")
    assert ("app.people.email", "GROUP BY", "other") in uses("SELECT COUNT(*) FROM people GROUP BY SUBSTRING(email, 1, 1)")
    assert ("app.people.ssn", "HAVING", "other") in uses("SELECT city FROM people GROUP BY city HAVING MIN(ssn) > '5'")
    assert ("app.people.email", "DISTINCT", "other") in uses("SELECT DISTINCT email FROM people")
    assert ("app.people.email", "UNION", "other") in uses("SELECT email FROM people UNION SELECT city FROM people")
    assert not {u for u in uses("SELECT email FROM people UNION ALL SELECT city FROM people") if u[1] == "UNION"}
    assert ("app.people.ssn", "OVER (PARTITION BY)", "other") in uses("SELECT SUM(id) OVER (PARTITION BY ssn) FROM people")
    assert ("app.people.ssn", "an aggregate", "other") in uses("SELECT MAX(ssn) FROM people")
    assert ("app.people.email", "an aggregate", "presence") in uses("SELECT COUNT(email) FROM people")
    assert ("app.people.email", "an aggregate", "other") in uses("SELECT COUNT(DISTINCT email) FROM people")
    assert ("app.people.ssn", "WHERE", "other") in uses(
        "SELECT id FROM orders o WHERE EXISTS (SELECT 1 FROM people p WHERE p.id = o.person_id AND p.ssn LIKE '1%')"
    )
    assert ("app.people.email", "JOIN ... ON", "other") in uses("SELECT o.id FROM orders o JOIN people p ON p.email > 'm'")
    assert ("app.people.ssn", "CASE", "other") in uses("SELECT CASE WHEN ssn LIKE '5%' THEN 1 END FROM people")
    # the argument chosen shows in the masked value's shape: an order question
    assert ("app.people.ssn", "GREATEST", "other") in uses("SELECT GREATEST(ssn, '5') FROM people")
    assert ("app.people.email", "LEAST", "other") in uses("SELECT id, LEAST(email, 'm') FROM people")
    assert ("app.people.ssn", "WHERE", "other") in uses("SELECT id FROM people WHERE GREATEST(ssn, '5') = '5'")
    # NULL exactly when equal: a lookup against a constant, else a question
    assert ("app.people.email", "NULLIF", "equality") in uses("SELECT NULLIF(email, '') FROM people")
    assert ("app.people.ssn", "NULLIF", "other") in uses("SELECT NULLIF(ssn, city) FROM people")
    assert ("app.people.ssn", "NULLIF", "other") in uses("SELECT NULLIF(LEFT(ssn, 1), '5') FROM people")
    assert ("app.people.ssn", "LIMIT/OFFSET", "other") not in uses("SELECT id FROM people LIMIT 1")
    # a view's own WHERE is its owner's business; a predicate on its output is not
    assert ("app.people.email", "WHERE", "other") in uses("SELECT id FROM v WHERE mail LIKE 'A%'")


# -- plans ------------------------------------------------------------------------------------


def plan(sql: str, **kw: object) -> MysqlMaskPlan | Refusal:
    (p,) = plan_for(sql, CATALOG, CLASSMAP, database="app", **kw)  # type: ignore[arg-type]
    return p


def test_plan_strategies() -> None:
    p = plan("SELECT id, email, LOWER(email), ssn, notes, city FROM people")
    assert isinstance(p, MysqlMaskPlan) and p.exact and p.reads_sensitive
    got = [(c.data_class, c.strategy) if c else None for c in p.columns]
    assert got == [
        None,
        (DataClass.EMAIL, "partial"),
        (DataClass.EMAIL, "redact"),  # partial only on direct values
        (DataClass.NATIONAL_ID, "partial"),
        (DataClass.PERSON_NAME, "redact"),
        None,
    ]
    assert p.data_classes == {DataClass.EMAIL, DataClass.NATIONAL_ID, DataClass.PERSON_NAME}
    hashed = plan("SELECT email FROM people", settings=MaskSettings(strategies={DataClass.EMAIL: "hash"}))
    assert isinstance(hashed, MysqlMaskPlan) and hashed.columns[0] is not None
    assert hashed.columns[0].strategy == "hash"


def test_unresolved_columns_detect_or_deny() -> None:
    p = plan("SELECT my_func(id), city FROM people")
    assert isinstance(p, MysqlMaskPlan)
    assert p.columns[0] is not None and p.columns[0].strategy == "detect"
    r = plan("SELECT my_func(id) FROM people", settings=MaskSettings(unresolved="deny"))
    assert isinstance(r, Refusal) and r.sqlstate == "42501"
    inexact = plan("SELECT * FROM people JOIN orders USING (id)")
    assert isinstance(inexact, MysqlMaskPlan) and not inexact.exact
    assert inexact.rest is not None and inexact.rest.data_class is DataClass.NATIONAL_ID
    assert inexact.rest.strategy == "redact"
    assert plan("SELECT @v") == plan("SELECT @v")
    var = plan("SELECT @v")
    assert isinstance(var, MysqlMaskPlan) and var.columns[0] is not None and var.columns[0].strategy == "detect"
    # nothing sensitive read: nothing masked
    quiet = plan("SELECT id, total FROM orders")
    assert isinstance(quiet, MysqlMaskPlan) and not quiet.active


def test_predicates_refuse_by_mode() -> None:
    sql = "SELECT id FROM people ORDER BY ssn"
    assert isinstance(plan(sql), MysqlMaskPlan)
    r = plan(sql, predicates="equality")
    assert isinstance(r, Refusal) and r.rule == "masking.predicates"
    assert r.message == "dbsentry: masked column app.people.ssn may not be used in ORDER BY (masking.predicates = equality)"
    assert isinstance(plan("SELECT id FROM people WHERE email = 'x'", predicates="equality"), MysqlMaskPlan)
    assert isinstance(plan("SELECT id FROM people WHERE email = 'x'", predicates="deny"), Refusal)
    assert isinstance(plan("SELECT COUNT(email) FROM people", predicates="equality"), MysqlMaskPlan)


def test_copies_into_variables_and_files_are_refused() -> None:
    r = plan("SELECT notes INTO @n FROM people LIMIT 1")
    assert isinstance(r, Refusal) and r.rule == "masking.copy_out" and "app.people.notes" in r.message
    assert plan("SELECT city INTO @c FROM people LIMIT 1") == MysqlMaskPlan((), None, True, True, plan_lineage("SELECT city INTO @c FROM people LIMIT 1"))
    assert isinstance(plan("SELECT email FROM people INTO OUTFILE '/tmp/x'"), Refusal)


def plan_lineage(sql: str) -> StatementLineage:
    return lineage(sql)


def test_other_statements() -> None:
    show = plan("SHOW TABLES")
    assert isinstance(show, MysqlMaskPlan) and show.rest is not None and show.rest.strategy == "detect"
    assert show.rest.reason == "safety-net"
    # other sessions' statement texts are redacted whole, whatever literal they hold
    for sql, index in (
        ("SHOW PROCESSLIST", 7),
        ("SHOW FULL PROCESSLIST", 7),
        ("SHOW BINLOG EVENTS", 5),
        ("SHOW RELAYLOG EVENTS IN 'r.000001'", 5),
        ("SHOW ENGINE INNODB STATUS", 2),
    ):
        texts = plan(sql)
        assert isinstance(texts, MysqlMaskPlan) and len(texts.columns) == index + 1, sql
        assert texts.columns[index] is not None and texts.columns[index].data_class is DataClass.SECRET
        assert texts.columns[index].strategy == "redact" and texts.rest is not None
        assert all(c is not None and c.strategy == "detect" for c in texts.columns[:index])
    handler = plan("HANDLER people READ FIRST")
    assert isinstance(handler, MysqlMaskPlan) and handler.rest is not None
    assert handler.rest.data_class is DataClass.NATIONAL_ID and handler.rest.strategy == "redact"
    call = plan("CALL p()")
    assert isinstance(call, MysqlMaskPlan) and call.rest is not None and call.rest.strategy == "detect"
    assert isinstance(plan("CALL p()", settings=MaskSettings(unresolved="deny")), Refusal)
    insert = plan("INSERT INTO orders VALUES (1, 2, 3)")
    assert isinstance(insert, MysqlMaskPlan) and not insert.active
    refused = plan_for("SELECT 1 /*! , email */ FROM people", CATALOG, CLASSMAP)
    assert len(refused) == 1 and isinstance(refused[0], Refusal)
    several = plan_for("SELECT email FROM people; SELECT id FROM orders", CATALOG, CLASSMAP, database="app")
    assert len(several) == 2


# -- the catalog reader's pure part -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data_type", "column_type", "neutral"),
    [
        ("varchar", "varchar(255)", "text"),
        ("tinyint", "tinyint(1)", "boolean"),
        ("tinyint", "tinyint(4)", "smallint"),
        ("int", "int(10) unsigned", "integer"),
        ("bigint", "bigint(20)", "bigint"),
        ("datetime", "datetime(3)", "timestamp"),
        ("longblob", "longblob", "bytea"),
        ("json", "json", "json"),
        ("inet6", "inet6", "inet"),
        ("somethingnew", "somethingnew", "text"),
    ],
)
def test_neutral_types(data_type: str, column_type: str, neutral: str) -> None:
    assert neutral_type(data_type, column_type) == neutral


def test_types_decide_classes_and_samples() -> None:
    rows = [
        ("s", "t", "BASE TABLE", 1, "email_verified", "tinyint", "tinyint(1)", "", ""),
        ("s", "t", "BASE TABLE", 2, "email", "datetime", "datetime", "", ""),
        ("s", "t", "BASE TABLE", 3, "phone", "bigint", "bigint", "", ""),
        ("s", "t", "BASE TABLE", 4, "misc", "mediumtext", "mediumtext", "", ""),
        ("s", "t", "BASE TABLE", 5, "doc", "json", "json", "", ""),
        ("s", "t", "BASE TABLE", 6, "n", "int", "int", "", ""),
        ("mysql", "user", "BASE TABLE", 1, "authentication_string", "text", "text", "", ""),
    ]
    cat = catalog_from_rows(rows, (), "s")
    cm = classify_catalog(cat)
    assert {s.column for s in cm.columns} == {"phone", "authentication_string"}
    rel = cat.relation("s", "t")
    assert rel is not None
    built = sample_sql(rel, 200, 2000, mariadb=True)
    assert built is not None
    sql, cols = built
    assert [c.name for c in cols] == ["phone", "misc", "doc"]
    assert sql.startswith("SET STATEMENT max_statement_time=2.000, lock_wait_timeout=2 FOR SELECT")
    assert sql.endswith("FROM `s`.`t` LIMIT 200")
    mysql_sql, _ = sample_sql(rel, 10, 500, mariadb=False) or ("", ())
    assert "MAX_EXECUTION_TIME(500)" in mysql_sql and "lock_wait_timeout=1" in mysql_sql


def test_statement_texts_of_the_server_are_secrets_wherever_it_keeps_them() -> None:
    """Not only the listed tables: a system table's text column named like a statement text
    (MariaDB's PROCESSLIST.INFO_BINARY, INNODB_TRX.trx_query, the sys views) is a secret."""
    rows = [
        ("information_schema", "PROCESSLIST", "SYSTEM VIEW", 8, "INFO", "longtext", "longtext", "", ""),
        ("information_schema", "PROCESSLIST", "SYSTEM VIEW", 17, "INFO_BINARY", "blob", "blob", "", ""),
        ("information_schema", "INNODB_TRX", "SYSTEM VIEW", 6, "trx_query", "varchar", "varchar(1024)", "", ""),
        ("sys", "session", "VIEW", 7, "current_statement", "longtext", "longtext", "", ""),
        ("sys", "session", "VIEW", 8, "statement_latency", "varchar", "varchar(11)", "", ""),
        ("performance_schema", "events_statements_history", "BASE TABLE", 9, "MESSAGE_TEXT", "varchar", "varchar(128)", "", ""),
        ("information_schema", "TRIGGERS", "SYSTEM VIEW", 10, "ACTION_STATEMENT", "longtext", "longtext", "", ""),
        ("information_schema", "INNODB_TRX", "SYSTEM VIEW", 7, "trx_tables_locked", "bigint", "bigint", "", ""),
        ("s", "t", "BASE TABLE", 1, "query", "text", "text", "", ""),  # not a system schema
    ]
    cm = classify_catalog(catalog_from_rows(rows, (), "s"))
    secrets = {(c.table, c.column) for c, k in cm.columns.items() if k.data_class is DataClass.SECRET}
    assert secrets == {
        ("PROCESSLIST", "INFO"),
        ("PROCESSLIST", "INFO_BINARY"),
        ("INNODB_TRX", "trx_query"),
        ("session", "current_statement"),
        ("events_statements_history", "MESSAGE_TEXT"),
    }


def test_variables_hold_copies() -> None:
    assert isinstance(plan("SELECT @x := email FROM people"), Refusal)
    assert isinstance(plan("SELECT @x := city FROM people"), MysqlMaskPlan)
    r = plan("SET @x = (SELECT notes FROM people LIMIT 1)")
    assert isinstance(r, Refusal) and r.rule == "masking.copy_out"
    assert isinstance(plan("DO @x := (SELECT ssn FROM people LIMIT 1)"), Refusal)
    assert isinstance(plan("SET @x = 1"), MysqlMaskPlan)


def test_plans_are_cached_per_catalog() -> None:
    sql = "SELECT email FROM people"
    first = plan_for(sql, CATALOG, CLASSMAP, database="app")
    assert plan_for(sql, CATALOG, CLASSMAP, database="app") is first
    other = catalog_from_rows(_rows(), VIEWS, "app")
    again = plan_for(sql, other, classify_catalog(other), database="app")
    assert again is not first and again == first


def test_what_exists_selects_is_not_looked_at() -> None:
    got = uses("SELECT id FROM orders WHERE EXISTS (SELECT email FROM (SELECT email, id FROM people) d WHERE d.id = orders.person_id)")
    assert ("app.people.email", "WHERE", "other") not in got
    assert ("app.people.id", "WHERE", "other") in got
    assert isinstance(plan("SELECT * FROM people NATURAL JOIN orders"), MysqlMaskPlan)
    assert lineage("SELECT * FROM people NATURAL JOIN orders").exact is False


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("INSERT INTO t2 SELECT email FROM people", True),
        ("CREATE TABLE t3 AS SELECT email FROM people", True),
        ("REPLACE INTO t2 SELECT p.* FROM people p", True),
        ("INSERT INTO t2 VALUES ((SELECT email FROM people LIMIT 1))", True),
        ("UPDATE orders o JOIN people p ON p.id = o.person_id SET o.total = p.ssn", True),
        ("INSERT INTO t2 SELECT phone FROM hr.people", True),
        ("INSERT INTO t2 SELECT id, city FROM people", False),
        ("INSERT INTO t2 (a) VALUES (1)", False),
        ("UPDATE people SET city = 'x' WHERE email = 'a'", False),
    ],
)
def test_writes_copying_classified_values_are_refused(sql: str, refused: bool) -> None:
    r = plan(sql)
    assert isinstance(r, Refusal) is refused
    if refused:
        assert isinstance(r, Refusal) and r.rule == "masking.copy_out"


# -- statements that hold another statement (attack round 3) -----------------------------------


def test_a_stored_function_of_a_database_derives_from_its_arguments() -> None:
    # sys.quote_identifier(notes) is the name, quoted: unknown, and a person name too
    p = plan("SELECT sys.quote_identifier(notes), id FROM people")
    assert isinstance(p, MysqlMaskPlan) and p.columns[0] is not None
    assert p.columns[0].data_class is DataClass.PERSON_NAME and p.columns[0].strategy == "redact"
    assert p.columns[1] is None


def test_execute_immediate_is_planned_by_its_text() -> None:
    direct = plan("SELECT CONCAT(notes, 1) FROM people")
    immediate = plan("EXECUTE IMMEDIATE 'SELECT CONCAT(notes, 1) FROM people'")
    assert isinstance(immediate, MysqlMaskPlan) and isinstance(direct, MysqlMaskPlan)
    assert immediate.columns == direct.columns and immediate.columns[0] is not None
    assert immediate.columns[0].data_class is DataClass.PERSON_NAME
    # its predicates count as the statement's own
    r = plan("EXECUTE IMMEDIATE 'SELECT id FROM people WHERE notes LIKE ''A%'''", predicates="equality")
    assert isinstance(r, Refusal) and r.rule == "masking.predicates"
    assert isinstance(plan("EXECUTE IMMEDIATE 'SELECT 1'"), MysqlMaskPlan)


@pytest.mark.parametrize(
    "sql",
    [
        "PREPARE s FROM @q",
        "PREPARE s FROM CONCAT('SELECT notes FROM peo', 'ple')",
        "EXECUTE IMMEDIATE @q",
        "EXECUTE IMMEDIATE CONCAT('SELECT notes FROM peo', 'ple')",
        "EXECUTE IMMEDIATE 'SELECT notes FROM people WHERE id = ?' USING 1",
    ],
)
def test_sql_text_built_at_run_time_is_refused(sql: str) -> None:
    r = plan(sql)
    assert isinstance(r, Refusal) and r.rule == "masking.dynamic_sql" and r.sqlstate == "42501"
    # nothing classified: nothing to hide
    empty = classify_catalog(catalog_from_rows([], [], "app"))
    (p,) = plan_for(sql, CATALOG, empty, database="app")
    assert isinstance(p, MysqlMaskPlan)


@pytest.mark.parametrize("sql", ["PREPARE s FROM 'SHOW WARNINGS'", "EXECUTE IMMEDIATE 'SHOW ERRORS'", "PREPARE s FROM 'show warnings limit 1'"])
def test_diagnostics_through_a_prepared_text_are_refused(sql: str) -> None:
    r = plan(sql)
    assert isinstance(r, Refusal) and r.rule == "masking.diagnostics"


def test_explain_answers_the_predicates_of_its_statement() -> None:
    # row estimates (EXPLAIN) and counts (ANALYZE) answer the WHERE as the rows would
    for sql in (
        "EXPLAIN SELECT id FROM people WHERE notes LIKE 'A%'",
        "ANALYZE SELECT id FROM people WHERE notes LIKE 'A%'",
        "EXPLAIN FORMAT=JSON SELECT id FROM people WHERE notes LIKE 'A%'",
    ):
        r = plan(sql, predicates="equality")
        assert isinstance(r, Refusal) and r.rule == "masking.predicates", sql
        assert isinstance(plan(sql), MysqlMaskPlan), sql  # allowed where the predicate is
    # what ANALYZE runs is a write like any other
    r = plan("ANALYZE INSERT INTO orders (id) SELECT LENGTH(notes) FROM people")
    assert isinstance(r, Refusal) and r.rule == "masking.copy_out"


def test_a_plan_printed_as_text_is_redacted_when_the_statement_reads_classified_data() -> None:
    # a row read by its primary key while planning becomes constants in the printed
    # conditions ("attached_condition": "o.x = 'Ada Lovelace'")
    sql = "SELECT o.total FROM people p JOIN orders o ON o.person_id = LENGTH(p.notes) WHERE p.id = 1"
    for form in ("EXPLAIN FORMAT=JSON", "ANALYZE FORMAT=JSON", "EXPLAIN FORMAT=TREE", "EXPLAIN ANALYZE"):
        p = plan(f"{form} {sql}")
        assert isinstance(p, MysqlMaskPlan) and p.rest is not None, form
        assert p.rest.strategy == "redact" and p.rest.data_class is DataClass.NATIONAL_ID, form
    tabular = plan(f"EXPLAIN {sql}")
    assert isinstance(tabular, MysqlMaskPlan) and tabular.rest is not None and tabular.rest.strategy == "detect"
    # conditions on other columns print no classified value: the plan stays readable
    for quiet_sql in ("SELECT total FROM orders WHERE id = 1", "SELECT notes, email FROM people WHERE id = 2"):
        quiet = plan(f"EXPLAIN FORMAT=JSON {quiet_sql}")
        assert isinstance(quiet, MysqlMaskPlan) and quiet.rest is not None and quiet.rest.strategy == "detect"
    # a view's own conditions are printed too
    viewed = plan("EXPLAIN FORMAT=JSON SELECT id FROM v WHERE id = 2")
    assert isinstance(viewed, MysqlMaskPlan) and viewed.rest is not None and viewed.rest.strategy == "redact"


def test_a_write_to_a_classified_table_counts_as_reading_it() -> None:
    # no rows, but its errors quote the values it read ("Incorrect integer value: 'Ada'"):
    # the plan that SQL EXECUTE s uses says so
    for sql in ("UPDATE people SET id = notes WHERE id = 1", "DELETE FROM people WHERE id = 1", "INSERT INTO people (id) VALUES (1)"):
        p = plan(sql)
        assert isinstance(p, MysqlMaskPlan) and p.reads_sensitive and not p.active, sql
    quiet = plan("UPDATE orders SET total = 1 WHERE id = 1")
    assert isinstance(quiet, MysqlMaskPlan) and not quiet.reads_sensitive


def test_handler_reads_by_key_are_predicates() -> None:
    # READ index >= (value) LIMIT 1: whether a row comes back answers a range question
    for mode in ("equality", "deny"):
        r = plan("HANDLER people READ by_notes >= ('M')", predicates=mode)
        assert isinstance(r, Refusal) and r.rule == "masking.predicates", mode
    assert isinstance(plan("HANDLER people READ by_notes = ('Ada')", predicates="equality"), MysqlMaskPlan)
    assert isinstance(plan("HANDLER people READ by_notes = ('Ada')", predicates="deny"), Refusal)
    assert isinstance(plan("HANDLER people READ by_notes >= ('M')"), MysqlMaskPlan)  # allow
    assert isinstance(plan("HANDLER people READ by_notes NEXT", predicates="deny"), MysqlMaskPlan)
    assert isinstance(plan("HANDLER orders READ PRIMARY >= (1)", predicates="deny"), MysqlMaskPlan)
    # the table read under another name: refused (the alias names no table a plan knows)
    r = plan("HANDLER people OPEN AS h")
    assert isinstance(r, Refusal) and r.rule == "masking.handler"
    assert isinstance(plan("HANDLER app.people OPEN"), MysqlMaskPlan)
    assert isinstance(plan("HANDLER orders OPEN AS o"), MysqlMaskPlan)
    # a table of another schema, opened qualified, reads under its own name
    (other,) = plan_for("HANDLER people READ FIRST", CATALOG, CLASSMAP, database="elsewhere")
    assert isinstance(other, MysqlMaskPlan) and other.rest is not None and other.rest.strategy == "redact"


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        # the OK's count of matched rows answers the condition, as SELECT COUNT(*) would
        ("UPDATE people SET id = id WHERE notes LIKE 'A%'", True),
        ("UPDATE people SET city = 'x' WHERE id > 0 AND ssn > '5'", True),
        ("DELETE FROM people WHERE notes LIKE 'zz%'", True),
        ("DELETE FROM people WHERE id = 3 ORDER BY email LIMIT 1", True),
        ("UPDATE orders o JOIN people p ON p.notes > 'M' SET o.total = 0 WHERE o.id = 1", True),
        ("DELETE o FROM orders o JOIN people p ON p.id = o.person_id WHERE p.ssn LIKE '1%'", True),
        ("INSERT INTO people (id) SELECT id + 100 FROM people WHERE notes LIKE 'A%'", True),
        ("UPDATE orders SET total = 0 WHERE person_id IN (SELECT id FROM people WHERE email LIKE 'a%')", True),
        # the count of changed rows answers a value computed from a masked column
        ("UPDATE people SET id = id + (notes > 'M') WHERE id = 1", True),
        ("UPDATE people SET city = IF(ssn LIKE '5%', city, 'x') WHERE id = 1", True),
        ("INSERT INTO people (id) VALUES (1) ON DUPLICATE KEY UPDATE id = id + (notes > 'M')", True),
        ("INSERT INTO people (id) VALUES (1) ON DUPLICATE KEY UPDATE city = VALUES(city)", False),
        ("UPDATE people SET city = UPPER(city) WHERE id = 1", False),
        # point lookups, and conditions on other columns
        ("UPDATE people SET city = 'x' WHERE email = 'a@example.com'", False),
        ("DELETE FROM people WHERE id = 3", False),
        ("UPDATE people SET notes = email WHERE id = 1", False),
        ("UPDATE orders SET total = 0 WHERE total > 5", False),
        ("INSERT INTO people (id, notes) VALUES (7, 'x')", False),
    ],
)
def test_writes_answer_no_predicate_the_identity_may_not_ask(sql: str, refused: bool) -> None:
    r = plan(sql, predicates="equality")
    assert isinstance(r, Refusal) == refused, (sql, r)
    if refused:  # (a read of another table's classified column is a copy_out anyway)
        assert isinstance(r, Refusal) and r.rule in ("masking.predicates", "masking.copy_out"), r
    allowed = plan(sql)  # predicates: allow
    assert not isinstance(allowed, Refusal) or allowed.rule == "masking.copy_out"


def test_a_view_over_classified_columns_is_a_copy() -> None:
    # until the catalog is read again the view is a relation no plan knows: its rows
    # would be value-scanned only, and a name is nothing a scan finds
    for sql in ("CREATE VIEW w AS SELECT id, CONCAT(notes, 1) AS x FROM people", "CREATE OR REPLACE VIEW w AS SELECT email FROM people"):
        r = plan(sql)
        assert isinstance(r, Refusal) and r.rule == "masking.copy_out", sql
    assert isinstance(plan("CREATE VIEW w AS SELECT id, city FROM people"), MysqlMaskPlan)
    assert isinstance(plan("CREATE VIEW w AS SELECT id, total FROM orders"), MysqlMaskPlan)


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("ALTER TABLE people ADD COLUMN n2 VARCHAR(50) AS (CONCAT(notes, 1)) VIRTUAL", True),
        ("ALTER TABLE people ADD COLUMN n2 VARCHAR(50) GENERATED ALWAYS AS (ssn) STORED", True),
        ("ALTER TABLE people ADD COLUMN n2 VARCHAR(50) DEFAULT (email)", True),
        ("ALTER TABLE people MODIFY COLUMN city VARCHAR(50) AS (notes)", True),
        ("ALTER TABLE people ADD COLUMN n2 VARCHAR(50) AS (UPPER(city))", False),
        ("ALTER TABLE people ADD COLUMN n2 INT DEFAULT 0", False),
        ("ALTER TABLE orders ADD COLUMN t2 DECIMAL(10, 2) AS (total * 2)", False),
    ],
)
def test_columns_computed_from_classified_ones_are_copies(sql: str, refused: bool) -> None:
    r = plan(sql)
    assert isinstance(r, Refusal) == refused, (sql, r)
    if isinstance(r, Refusal):
        assert r.rule == "masking.copy_out"


def test_a_number_compared_with_text_is_no_point_lookup() -> None:
    # MySQL compares a string with a number as numbers: the string's numeric prefix
    # (ssn = 501 matches every ssn that starts 501-), a question about part of the value
    for sql in (
        "SELECT id FROM people WHERE ssn = 501",
        "SELECT id FROM people WHERE ssn IN ('1', 501)",
        "SELECT id FROM people WHERE -5 = ssn",
        "SELECT id FROM people WHERE notes = TRUE",
        "SELECT NULLIF(ssn, 501) FROM people",
    ):
        r = plan(sql, predicates="equality")
        assert isinstance(r, Refusal) and r.rule == "masking.predicates", sql
    assert isinstance(plan("SELECT id FROM people WHERE ssn = '501-22-8701'", predicates="equality"), MysqlMaskPlan)
    assert isinstance(plan("SELECT total FROM orders WHERE person_id = 5", predicates="equality"), MysqlMaskPlan)

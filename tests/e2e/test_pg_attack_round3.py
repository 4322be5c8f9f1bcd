"""Attack round 3 against PostgreSQL masking, through a running dbsentry.

Every test plays a *masked* identity (groups ``("eng",)``, not in ``pii-readers``): an agent
in production or a person in staging (where DDL needs no approval), and asserts that no real
PII reaches the client in any spelling :class:`support.leaks.Secrets` knows.  Each
``test_attack_*`` was a confirmed leak before this round: the docstring says what leaked.

The schema is created directly upstream before the proxy starts, so the first catalog
read (and value sampling) knows it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psycopg
import pytest

from support.audit import raw_records
from support.guard_clients import Login
from support.leaks import Secrets
from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

AGENT_PROD = Login("bot@example.com", ("eng",), agent=True, dbname="prod")
HUMAN_STAGING = Login("eve@example.com", ("eng",), agent=False, dbname="staging")
MASKED = {"agent-prod": AGENT_PROD, "human-staging": HUMAN_STAGING}

CUSTOMERS = (
    (1, "Ada Lovelace", "ada.lovelace@example.com", "536-22-8714", "1815-12-10"),
    (2, "Grace Hopper", "grace.hopper@navy.example.org", "471-93-2605", "1906-12-09"),
)
REAL: list[str] = []
for _id, _name, _email, _ssn, _dob in CUSTOMERS:
    REAL += [_name, _name.split()[1], _name.replace(" ", ""), _email, _ssn, _dob]
SECRETS = Secrets(REAL)
# What value detection finds (a name is found by nothing but lineage)
DETECTABLE = Secrets([v for _i, _n, email, ssn, _d in CUSTOMERS for v in (email, ssn)])


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    s: str

    def q(self, sql: str) -> str:
        return sql.replace("{S}", self.s)


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"atk3_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"create schema {s}")
        conn.execute(
            f"create table {s}.customers (id int primary key, full_name text, email text, ssn text, dob date)"
        )
        with conn.cursor() as cur:
            cur.executemany(f"insert into {s}.customers values (%s,%s,%s,%s,%s)", CUSTOMERS)
        conn.execute(f"analyze {s}.customers")
    try:
        config = write_config(tmp_path_factory.mktemp("attack_pg_round3"), pg_server)
        with run_proxy(config) as proxy:
            yield Env(proxy, s)
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop schema if exists {s} cascade")
            conn.execute(f"drop schema if exists {s}_v cascade")


def _diag(err: psycopg.Error) -> str:
    d = err.diag
    return " | ".join(
        str(x)
        for x in (d.sqlstate, d.message_primary, d.message_detail, d.message_hint, d.context, d.internal_query)
        if x
    )


def capture(env: Env, login: Login, statements: Sequence[str]) -> str:
    """Run statements in one session; everything the client saw: rows, errors (message,
    detail, hint, context, internal query), notices, notifications."""
    dsn = env.proxy.dsn(login.identity, groups=login.groups, agent=login.agent, dbname=login.dbname)
    seen: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(
            lambda d: seen.append(f"NOTICE {d.message_primary} {d.message_detail or ''} {d.context or ''}")
        )
        conn.add_notify_handler(lambda n: seen.append(f"NOTIFY {n.channel} {n.payload}"))
        for sql in statements:
            try:
                cur = conn.execute(env.q(sql))
                rows = cur.fetchall() if cur.description is not None else []
                seen.append(f"OK -> {rows!r}")
            except psycopg.Error as err:
                seen.append(f"ERR -> {_diag(err)}")
    return "\n".join(seen)


def assert_no_leak(blob: str, context: str = "", secrets: Secrets = SECRETS) -> None:
    found = secrets.leaks(blob)
    assert not found, f"LEAK {found} {context}:\n{blob[:2000]}"


# 1. The columns SEARCH and CYCLE add to a recursive CTE: the sequence column is a record of
#    the searched values, the path an array of records of the cycle columns' values.
#    Lineage knew only the CTE's own columns, so `select o from w` returned the names raw.

SEARCH_CYCLE = {
    "breadth": "with recursive w(x) as (select full_name from {S}.customers union all select x from w where false)"
    " search breadth first by x set o select o from w",
    "depth": "with recursive w(x, y) as (select full_name, ssn from {S}.customers union all select x, y from w where false)"
    " search depth first by y, x set o select o::text from w",
    "cycle-path": "with recursive w(x) as (select full_name || ' ' || email from {S}.customers union all select x from w)"
    " cycle x set is_cycle using path select path from w",
    "cycle-star": "with recursive w(x) as (select to_char(dob, 'YYYY-MM-DD') from {S}.customers union all select x from w)"
    " cycle x set c to 'y' default 'n' using p select * from w",
}


@pytest.mark.parametrize("who", sorted(MASKED))
@pytest.mark.parametrize("variant", sorted(SEARCH_CYCLE))
def test_attack_recursive_cte_search_and_cycle_columns(env: Env, variant: str, who: str) -> None:
    """WAS A LEAK: `... search breadth first by x set o select o from w` returned
    ('0', 'Ada Lovelace'); `cycle x set is_cycle using path select path` the same."""
    blob = capture(env, MASKED[who], [SEARCH_CYCLE[variant]])
    # the mark compares the cycle columns: an agent may not (masking.predicates: deny)
    refused = who == "agent-prod" and variant.startswith("cycle")
    assert ("masking.predicates" in blob) if refused else blob.startswith("OK"), blob
    assert_no_leak(blob, f"{variant} as {who}")


# 2. A function the catalog does not know: a temporary one (pg_temp is never in the
#    catalog), or one created in the open transaction.  The cheap "may this read anything
#    sensitive?" test only looked for the catalog's user functions, and lineage took an
#    unknown name for a built-in that derives from its arguments: nothing was masked, not
#    even by value.  And a SQL function's body is a query kept to run later, like a view's,
#    which a masked identity may not create over classified columns (its results would
#    run before the catalog is read again, or never be in it).


def test_attack_temporary_function_returns_raw_values(env: Env) -> None:
    """WAS A LEAK (person, staging): `select pg_temp.f()` returned every email and SSN raw
    (and every name: `... language sql as $$select full_name from customers$$`)."""
    blob = capture(env, HUMAN_STAGING, [
        "create function pg_temp.zz_f() returns setof text language sql as"
        " $$select full_name || ' / ' || email || ' / ' || ssn from {S}.customers$$",
        "select pg_temp.zz_f()",
        "create function pg_temp.zz_p() returns setof text language plpgsql as"
        " $$begin return query select email || ' / ' || ssn from {S}.customers; end$$",
        "select pg_temp.zz_p()",
        "select * from pg_temp.zz_p()",
        "select x from pg_temp.zz_p() x",
    ])  # fmt: skip
    lines = blob.splitlines()
    assert "masking.copy_out" in lines[0], blob  # the SQL function over names is refused
    # the PL/pgSQL one is opaque: masked by value, the rest of the text kept
    assert lines[2].startswith("OK") and "****@example.com" in lines[3], blob
    assert_no_leak(blob)


def test_attack_function_created_in_the_open_transaction(env: Env) -> None:
    """WAS A LEAK (person, staging): the catalog is read again after COMMIT; until then
    the new function's results passed raw, names included."""
    blob = capture(env, HUMAN_STAGING, [
        "begin",
        "create function {S}.zz_g(i int) returns text language sql as"
        " $$select full_name || ' ' || ssn from {S}.customers where id = i$$",
        "select {S}.zz_g(1), {S}.zz_g(2)",
        "rollback",
        "begin",
        "create function {S}.zz_h(i int) returns text language plpgsql as"
        " $$begin return (select ssn || ' ' || email from {S}.customers where id = i); end$$",
        "select {S}.zz_h(1), {S}.zz_h(2)",
        "rollback",
    ])  # fmt: skip
    assert "masking.copy_out" in blob.splitlines()[1], blob
    assert "***-**-8714" in blob, blob
    assert_no_leak(blob)


def test_sql_functions_over_harmless_columns_are_created(env: Env) -> None:
    """A lookup by a classified column returns none of its values: ordinary DDL."""
    blob = capture(env, HUMAN_STAGING, [
        "create function pg_temp.zz_id(e text) returns int language sql as"
        " $$select id from {S}.customers where email = e$$",
        "select pg_temp.zz_id('nobody@example.com')",
    ])  # fmt: skip
    assert "ERR" not in blob, blob


# 3. A rule is a view's query that runs when the table is written: `DO INSTEAD SELECT`
#    answers an INSERT with rows no mask plan follows.  CREATE VIEW was refused as a copy
#    of classified columns; CREATE RULE was not, nor a view made inside CREATE SCHEMA.


def test_attack_rule_answers_an_insert_with_classified_rows(env: Env) -> None:
    """WAS A LEAK (person, staging): `insert into t values ('a')` returned every name and
    SSN raw."""
    blob = capture(env, HUMAN_STAGING, [
        "create temp table zz_t (x text)",
        "create rule zz_r as on insert to zz_t do instead select full_name, ssn from {S}.customers",
        "insert into zz_t values ('a')",
        "create rule zz_r2 as on update to zz_t do also select c.* from {S}.customers c",
    ])  # fmt: skip
    assert_no_leak(blob)
    lines = blob.splitlines()
    assert "masking.copy_out" in lines[1] and "masking.copy_out" in lines[3], blob
    # a rule that copies nothing classified is ordinary DDL
    ok = capture(env, HUMAN_STAGING, [
        "create temp table zz_t2 (x text)",
        "create rule zz_r3 as on insert to zz_t2 do also select id from {S}.customers where id = 1",
        "insert into zz_t2 values ('a')",
    ])  # fmt: skip
    assert "ERR" not in ok, ok


def test_attack_view_created_inside_create_schema(env: Env) -> None:
    """WAS A BYPASS of masking.copy_out: `create view` was refused, the same view as an
    element of CREATE SCHEMA was created."""
    blob = capture(env, HUMAN_STAGING, [
        "create schema {S}_v create view zz_v as select full_name, ssn from {S}.customers",
    ])
    assert "masking.copy_out" in blob, blob


def test_attack_create_table_as_execute_copies_a_prepared_read(env: Env) -> None:
    """WAS A LEAK (person, staging): `prepare p as select full_name, ssn, email ...;
    create temp table t as execute p; select * from t` returned everything raw: the copy
    check saw no query in CREATE TABLE AS EXECUTE, and a temporary table is never in the
    catalog."""
    blob = capture(env, HUMAN_STAGING, [
        "prepare zz_p as select full_name, ssn, email from {S}.customers",
        "create temp table zz_ct as execute zz_p",
        "select * from zz_ct",
        "create temp table zz_ct2 as execute zz_unknown",  # not known: refused too
        "prepare zz_q as select id from {S}.customers",
        "create temp table zz_ct3 as execute zz_q",  # nothing classified: ordinary
        "select count(*) from zz_ct3",
    ])  # fmt: skip
    lines = blob.splitlines()
    assert "masking.copy_out" in lines[1] and "masking.copy_out" in lines[3], blob
    assert lines[5].startswith("OK") and "(2,)" in lines[6], blob
    assert_no_leak(blob)


def test_attack_alter_table_copies_a_column(env: Env) -> None:
    """WAS A LEAK (person, staging): `alter table customers add column zz text generated
    always as (full_name) stored` and `alter table customers alter column c1 type text
    using full_name` copied the names into columns nothing classified; `select zz, c1`
    returned them raw."""
    blob = capture(env, HUMAN_STAGING, [
        "alter table {S}.customers add column zz_g text generated always as (full_name || ' ' || ssn) stored",
        "alter table {S}.customers add column zz_c text",
        "alter table {S}.customers alter column zz_c type varchar using full_name",
        "select * from {S}.customers",
        "alter table {S}.customers alter column id type bigint using id::bigint",  # its own value
        "alter table {S}.customers drop column zz_c",
    ])  # fmt: skip
    lines = blob.splitlines()
    assert "masking.copy_out" in lines[0] and "masking.copy_out" in lines[2], blob
    assert lines[1].startswith("OK") and lines[4].startswith("OK"), blob
    assert_no_leak(blob)


def test_attack_merge_into_a_temporary_table(env: Env) -> None:
    """WAS A LEAK (person, staging): `merge into tmp using customers c on false when not
    matched then insert values (c.full_name)` copied the names (INSERT ... SELECT was
    refused): a target unknown to the catalog had no columns to record a copy in."""
    blob = capture(env, HUMAN_STAGING, [
        "create temp table zz_m (x text)",
        "merge into zz_m using {S}.customers c on false when not matched then insert values (c.full_name)",
        "select * from zz_m",
    ])  # fmt: skip
    assert "masking.copy_out" in blob.splitlines()[1], blob
    assert_no_leak(blob)


# 4. Errors of parsers that echo their input without quotes: JSON's CONTEXT
#    (`JSON data, line 1: [AdaLovelace...`) and libxml's DETAIL (the input line under the
#    message).  Quoted values were redacted, these were not.

ECHOES = {
    "json-context": "select ('[' || replace(full_name, ' ', '') || ']')::json from {S}.customers where id = 1",
    "jsonb-context": "select ('[1, ' || translate(full_name, ' ', '_') || ']')::jsonb from {S}.customers where id = 2",
    "json-dob": "select ('[' || to_char(dob, 'YYYYMMDD') || 'x]')::json from {S}.customers where id = 1",
    "xml-document": "select xmlparse(document full_name) from {S}.customers where id = 1",
    "xml-content": "select xmlparse(content '<a>' || full_name || ' ' || ssn || '</b>') from {S}.customers where id = 2",
    "xml-tag": "select xmlparse(content '<' || replace(full_name, ' ', '') || '></b>') from {S}.customers where id = 1",
}


@pytest.mark.parametrize("who", sorted(MASKED))
@pytest.mark.parametrize("variant", sorted(ECHOES))
def test_attack_parser_errors_echo_the_value(env: Env, variant: str, who: str) -> None:
    """WAS A LEAK: e.g. CONTEXT `JSON data, line 1: [AdaLovelace...`, DETAIL
    `line 1: Start tag expected, '<' not found / Ada Lovelace / ^`."""
    blob = capture(env, MASKED[who], [ECHOES[variant]])
    assert blob.startswith("ERR -> 22") or blob.startswith("ERR -> 2200"), blob  # the SQLSTATE stays
    assert_no_leak(blob, f"{variant} as {who}")


def test_harmless_parser_errors_keep_their_text(env: Env) -> None:
    """A statement that reads nothing classified sees PostgreSQL's own text."""
    blob = capture(env, AGENT_PROD, ["select '[Hello'::json", "select xmlparse(document 'Hello')"])
    assert "JSON data, line 1: [Hello" in blob and "not found\nHello\n^" in blob, blob


# 5. The audit: literals that meet a classified column are hashed before they are stored.
#    Two spellings reached the audit log in clear: a JSON document compared with a whole
#    row (`to_jsonb(c) @> '{"full_name": ...}'`) and a CTE's VALUES compared with the
#    column through the CTE's name.

AUDITED = {
    "whole-row-json": "select id from {S}.customers c where to_jsonb(c) @> '{\"full_name\": \"Zelda Quuxwhole\"}'",
    "whole-row-compare": "select id from {S}.customers c where c = row(9, 'Zelda Quuxrow', 'x', 'y', null)",
    "cte-values": "with v(n) as (values ('Zelda Quuxcte')) select id from {S}.customers c, v where c.full_name = v.n",
    "from-values": "select c.id from {S}.customers c, (values ('Zelda Quuxfrom')) v(n) where v.n = c.full_name",
    "cte-insert": "with v(n) as (values ('Zelda Quuxins')) insert into {S}.customers (id, full_name) select 99, n from v",
}


@pytest.mark.parametrize("variant", sorted(AUDITED))
def test_attack_audit_keeps_literals_compared_through_rows_and_ctes(env: Env, variant: str) -> None:
    """WAS A LEAK: the audit record (log and index) held the searched name in clear."""
    reader = Login("rita@example.com", ("eng", "pii-readers"), dbname="staging")
    needle = AUDITED[variant].split("Zelda ")[1].split("'")[0].split('"')[0]
    capture(env, reader, ["begin", AUDITED[variant], "rollback"])
    texts = [json.dumps(r) for r in raw_records(env.proxy.config_path)]
    leaked = [t for t in texts if needle in t]
    assert not leaked, f"{needle} in the audit: {leaked[0][:600]}"
    # the statement was recorded, its literal hashed
    assert any(env.s in t and "Zelda" not in t and ":hmac:" in t for t in texts), texts[-1][:600]
    log = b"".join(p.read_bytes() for p in (env.proxy.state_dir / "audit-log").rglob("*") if p.is_file())
    assert needle.encode() not in log

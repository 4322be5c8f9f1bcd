"""Attack battery against masking: the third attack round of issue 13.

Every test plays a *masked* identity (groups ``("eng",)``, not in ``pii-readers``), as a
human and/or as an agent, in ``prod`` (production) and/or ``staging``, and asserts that no
real PII reaches the client, in any spelling :class:`support.leaks.Secrets` knows (plus
the obvious decoding of the rot-1 trick below).

Tests named ``test_attack_*`` FAIL on the code as it stands: each is a confirmed leak.
Tests named ``test_holds_*`` are attempts that the proxy currently stops (kept as a
regression battery).

The schema is created directly upstream before the proxy starts, so the first catalog
read (and value sampling) knows it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from support.guard_clients import Login, run
from support.leaks import Secrets
from support.pg import LARGE_OBJECTS, PgServer, exclusive
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

HUMAN_PROD = Login("eve@example.com", ("eng",), agent=False, dbname="prod")
AGENT_PROD = Login("bot@example.com", ("eng",), agent=True, dbname="prod")
HUMAN_STAGING = Login("eve@example.com", ("eng",), agent=False, dbname="staging")
AGENT_STAGING = Login("bot@example.com", ("eng",), agent=True, dbname="staging")
READER = Login("rita@example.com", ("eng", "pii-readers"), agent=False, dbname="prod")
MASKED_LOGINS = {
    "human-prod": HUMAN_PROD,
    "agent-prod": AGENT_PROD,
    "human-staging": HUMAN_STAGING,
    "agent-staging": AGENT_STAGING,
}

CUSTOMERS = (
    (1, "Ada Lovelace", "ada.lovelace@example.com", "536-22-8714", "4539 1488 0343 6467",
     "prefers morning calls", "zq-alpha-771", "1815-12-10"),
    (2, "Grace Hopper", "grace.hopper@navy.example.org", "471-93-2605", "5555555555554444",
     None, "zq-bravo-882", "1906-12-09"),
)
STAFF = (
    (1, "Katherine Johnson", "katherine.johnson@nasa.example.com", "+1 757 555 0143", 100),
    (2, "Dorothy Vaughan", "dorothy.vaughan@nasa.example.com", "+1 757 555 0187", 120),
)
REAL: list[str] = []
for _id, name, email, ssn, card, _n, _c, dob in CUSTOMERS:
    REAL += [name, name.split()[1], email, ssn, card, dob]
for _id, name, email, phone, _s in STAFF:
    REAL += [name, name.split()[1], email, phone]
SECRETS = Secrets(REAL)

ROT = str.maketrans(
    "bcdefghijklmnopqrstuvwxyza1234567890#,_", "abcdefghijklmnopqrstuvwxyz0123456789@. "
)
# SQL that shifts every letter and digit by one (trivially reversible by the reader).
ROT_SQL = "translate(lower({}), 'abcdefghijklmnopqrstuvwxyz0123456789@. ', 'bcdefghijklmnopqrstuvwxyza1234567890#,_')"


def unrot(text: str) -> str:
    return text.translate(ROT)


# ---------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    pg: PgServer
    s: str  # schema name

    def q(self, sql: str) -> str:
        return sql.replace("{S}", self.s)


def _create(pg: PgServer, s: str) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"create schema {s}")
        conn.execute(
            f"""create table {s}.customers (id int primary key, full_name text, email text unique,
                ssn text, card_number text, notes text, c1 text, dob date)"""
        )
        with conn.cursor() as cur:
            cur.executemany(f"insert into {s}.customers values (%s,%s,%s,%s,%s,%s,%s,%s)", CUSTOMERS)
            conn.execute(
                f"create table {s}.staff (id int primary key, name text, email text, phone text, salary int)"
            )
            cur.executemany(f"insert into {s}.staff values (%s,%s,%s,%s,%s)", STAFF)
        conn.execute(
            f"create table {s}.orders (id int primary key, customer_id int references {s}.customers(id), sku text)"
        )
        conn.execute(f"insert into {s}.orders values (1, 1, 'SKU-1'), (2, 2, 'SKU-2')")
        conn.execute(
            f"create function {s}.customer_summary(cid int) returns text language plpgsql stable as "
            f"$$ begin return (select card_number || ' ' || ssn from {s}.customers where id = cid); end $$"
        )
        conn.execute(f"analyze {s}.customers")
        conn.execute(f"analyze {s}.staff")


def _drop(pg: PgServer, s: str) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"drop schema if exists {s} cascade")
    with exclusive(pg, LARGE_OBJECTS), psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(
            "select lo_unlink(oid) from pg_largeobject_metadata where oid between 777000 and 777999"
        )


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    s = f"atkzz_{uuid.uuid4().hex[:8]}"
    _create(pg_server, s)
    try:
        config = write_config(tmp_path_factory.mktemp("attack_masking_zz"), pg_server)
        with run_proxy(config) as proxy:
            yield Env(proxy, pg_server, s)
    finally:
        _drop(pg_server, s)


# ---------------------------------------------------------------------- a full-capture session


def _diag(err: psycopg.Error) -> str:
    d = err.diag
    return " | ".join(
        str(x) for x in (d.sqlstate, d.message_primary, d.message_detail, d.message_hint,
                         d.context, d.internal_query) if x
    )


def capture(env: Env, login: Login, statements: Sequence[str | tuple[str, Sequence[Any]]],
            binary: bool = False) -> str:
    """Run statements in one psycopg session; return everything the client saw: rows,
    error message/detail/hint/context, notices, notifications, parameter statuses."""
    dsn = env.proxy.dsn(login.identity, groups=login.groups, agent=login.agent, dbname=login.dbname)
    seen: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: seen.append(
            f"NOTICE {d.message_primary} {d.message_detail or ''} {d.context or ''}"))
        conn.add_notify_handler(lambda n: seen.append(f"NOTIFY {n.channel} {n.payload}"))
        for st in statements:
            sql, params = (st, None) if isinstance(st, str) else (st[0], tuple(st[1]))
            sql = env.q(sql)
            try:
                cur = conn.cursor(binary=binary)
                cur.execute(sql, params)
                rows = cur.fetchall() if cur.description is not None else []
                seen.append(f"OK -> {rows!r}")
            except psycopg.Error as err:
                seen.append(f"ERR -> {_diag(err)}")
        seen.append(f"PARAMS {conn.info.parameter_status('application_name')}")
    return "\n".join(seen)


def assert_no_leak(blob: str, context: str = "") -> None:
    found = SECRETS.leaks(blob) or SECRETS.leaks(unrot(blob.lower()))
    assert not found, f"LEAK {found} {context}:\n{blob[:2000]}"


def outcomes_blob(outs: Sequence[Any]) -> str:
    return "\n".join(f"{o.sqlstate} {o.message} {o.rows!r}" for o in outs)


# ====================================================================== WAS A LEAKS
#
# 1. Errors of SQLSTATE classes 42 / 3F quote the value that the statement computed from a
#    classified column. The channel masking redacts quotes only for classes 22, 23, P0,
#    2F, 38, 39, 09, 27, 44, XX, HV; value detection finds no name; a transform defeats
#    value detection for the rest.

ERROR_ORACLES = {
    "current_setting": "select current_setting(full_name) from {S}.customers where id = 1",
    "regclass": "select replace(full_name, ' ', '_')::regclass from {S}.customers where id = 1",
    "regproc": "select replace(full_name, ' ', '_')::regproc from {S}.customers where id = 1",
    "regrole": "select replace(full_name, ' ', '_')::regrole from {S}.customers where id = 1",
    "regnamespace": "select replace(full_name, ' ', '_')::regnamespace from {S}.customers where id = 1",
    "regoper": "select replace(full_name, ' ', '_')::regoper from {S}.customers where id = 1",
    "regcollation": "select replace(full_name, ' ', '_')::regcollation from {S}.customers where id = 1",
    "regtype-context": "select full_name::regtype from {S}.customers where id = 2",
    "dob": "select current_setting(to_char(dob, 'YYYY-MM-DD')) from {S}.customers where id = 1",
}


@pytest.mark.parametrize("who", ["agent-prod", "human-staging"])
@pytest.mark.parametrize("oracle", sorted(ERROR_ORACLES))
def test_attack_error_message_quotes_value_class42(env: Env, oracle: str, who: str) -> None:
    """WAS A LEAK: e.g. `select current_setting(full_name) from customers where id=1`
    -> ERROR: unrecognized configuration parameter "Ada Lovelace" (42704)."""
    blob = capture(env, MASKED_LOGINS[who], [ERROR_ORACLES[oracle]])
    assert_no_leak(blob, f"{oracle} as {who}")


@pytest.mark.parametrize("mode", ["psql", "psycopg", "psycopg-binary", "psycopg-pipeline", "asyncpg"])
def test_attack_error_oracle_all_clients(env: Env, mode: str) -> None:
    """WAS A LEAK in every client mode (agent, production)."""
    outs = run(mode, env.proxy, [env.q(ERROR_ORACLES["current_setting"])], AGENT_PROD)
    assert_no_leak(outcomes_blob(outs), mode)


def test_attack_error_oracle_whole_table_rot1(env: Env) -> None:
    """WAS A LEAK: one statement dumps every name, email, SSN and card of the table
    through one error message; a rot-1 `translate` defeats both value detection and the
    session's memory of values it was shown masked (even after a masked SELECT *)."""
    expr = ROT_SQL.format("full_name||'/'||email||'/'||ssn||'/'||card_number")
    blob = capture(env, AGENT_PROD, [
        "select * from {S}.customers",  # the session has now seen every value masked
        f"select current_setting(string_agg({expr}, ' | ')) from {{S}}.customers",
    ])
    assert_no_leak(blob)


# 2. A record-returning function in FROM: lineage maps its columns to the row type's table
#    (orders.sku, unclassified) and ignores the arguments the values come from.

POPULATE = {
    "json_populate_record": "select o.sku from {S}.customers c, json_populate_record(null::{S}.orders, json_build_object('sku', c.full_name)) o",
    "jsonb_populate_record": "select o.sku from {S}.customers c, jsonb_populate_record(null::{S}.orders, jsonb_build_object('sku', c.full_name)) o",
    "json_populate_recordset": "select o.sku from {S}.customers c, json_populate_recordset(null::{S}.orders, json_build_array(json_build_object('sku', c.full_name))) o",
    "star": "select o.* from {S}.customers c, json_populate_record(null::{S}.orders, json_build_object('sku', to_char(c.dob, 'YYYY-MM-DD'))) o",
    "composite-star-lateral": "select o.sku from {S}.customers c, lateral (select (row(1, 1, c.full_name)::{S}.orders).*) o",
    "scalar-subquery": "select (select sku from json_populate_record(null::{S}.orders, json_build_object('sku', c.full_name))) from {S}.customers c",
    "rows-from": "select o.sku from {S}.customers c, rows from (json_populate_record(null::{S}.orders, json_build_object('sku', c.full_name))) o",
    "rot-all": "select o.sku from {S}.customers c, json_populate_record(null::{S}.orders, json_build_object('sku', "
    + ROT_SQL.format("c.full_name||'/'||c.email||'/'||c.ssn||'/'||c.card_number") + ")) o",
}


@pytest.mark.parametrize("who", ["agent-prod", "human-prod", "agent-staging"])
@pytest.mark.parametrize("variant", sorted(POPULATE))
def test_attack_populate_record_in_from(env: Env, variant: str, who: str) -> None:
    """WAS A LEAK: rows of raw names / dates / (rot-1) everything."""
    blob = capture(env, MASKED_LOGINS[who], [POPULATE[variant]])
    assert_no_leak(blob, f"{variant} as {who}")


@pytest.mark.parametrize("mode", ["psql", "psycopg-binary", "psycopg-pipeline", "asyncpg"])
def test_attack_populate_record_all_clients(env: Env, mode: str) -> None:
    outs = run(mode, env.proxy, [env.q(POPULATE["json_populate_record"])], AGENT_PROD)
    assert_no_leak(outcomes_blob(outs), mode)


# 3. pg_stat_activity.query: the text of other sessions' statements (here an exempt
#    reader's, with the PII they searched for) reaches a masked agent unscanned.


def test_attack_pg_stat_activity_query_of_other_session(env: Env) -> None:
    """WAS A LEAK: even the SSN (which value detection knows) passes."""
    dsn = env.proxy.dsn(READER.identity, groups=READER.groups, agent=False, dbname="prod")
    with psycopg.connect(dsn, autocommit=True) as reader:
        reader.execute(env.q(
            "select count(*) from {S}.customers where full_name = 'Ada Lovelace' and ssn = '536-22-8714'"
        )).fetchall()
        time.sleep(0.3)
        blob = capture(env, AGENT_PROD, [
            "select query from pg_stat_activity where pid <> pg_backend_pid() and backend_type = 'client backend'"
        ])
    assert "<secret>" in blob, blob  # the other session's row was there, its text redacted
    assert_no_leak(blob)


def test_attack_statistics_functions_behind_pg_stat_activity(env: Env) -> None:
    """WAS A LEAK: the functions behind the view return the same texts, unclassified."""
    dsn = env.proxy.dsn(READER.identity, groups=READER.groups, agent=False, dbname="prod")
    with psycopg.connect(dsn, autocommit=True) as reader:
        reader.execute(env.q(
            "select count(*) from {S}.customers where full_name = 'Ada Lovelace' and ssn = '536-22-8714'"
        )).fetchall()
        time.sleep(0.3)
        for sql in (
            "select a.query, a.pid from pg_stat_get_activity(NULL) a",
            "select (pg_catalog.pg_stat_get_activity(NULL)).query",
            "select pg_stat_get_backend_activity(b) from pg_stat_get_backend_idset() b",
            # names are the client's: the text under another name is still the text
            "select a.* from pg_stat_get_activity(NULL) a(datid, pid, usesysid, application_name, query, state)",
        ):
            blob = capture(env, AGENT_PROD, [sql])
            assert "<secret>" in blob, (sql, blob)  # the other session's row was there, redacted
            assert_no_leak(blob)
        # without the view's column names every column of the function counts as the text:
        # a condition on one is a use (more than needed, never less)
        blob = capture(env, AGENT_PROD, [
            "select a.query from pg_stat_get_activity(NULL) a where a.pid <> pg_backend_pid()"
        ])
        assert "42501" in blob and "pg_stat_activity.query" in blob, blob


def test_attack_truncating_casts_and_partial_masks(env: Env) -> None:
    """WAS A LEAK: a partial mask shows the last characters of the value it is given; of
    ssn::varchar(8) those are the SSN's 5th to 8th ('***-*2-8'), and card_number::char(n)
    for n = 1..19 gave the whole card four digits at a time."""
    for login in (HUMAN_PROD, AGENT_PROD):
        blob = capture(env, login, [
            "select ssn::varchar(8), card_number::char(12), cast(ssn as character(6)),"
            " ssn::char, card_number::varchar(8) from {S}.customers where id = 1",
        ])
        assert blob.startswith("OK"), blob
        row = blob.splitlines()[0]
        # redacted (placeholders, cut to the type's length): not one digit of either value
        assert not any(ch.isdigit() for ch in row), row
        # the whole value keeps its partial mask: the last four, as before
        blob = capture(env, login, ["select ssn, ssn::text, card_number::varchar from {S}.customers where id = 1"])
        assert blob.count("8714") == 2 and "6467" in blob, blob


# 4. Side channels that the statement writes and a later statement reads back.


def test_attack_advisory_locks_in_pg_locks(env: Env) -> None:
    """WAS A LEAK (human, production): each character becomes an advisory lock key;
    pg_locks hands them back; the name is reconstructed in one query."""
    blob = capture(env, HUMAN_PROD, [
        "select count(pg_advisory_lock(i, ascii(substr(full_name, i, 1)))) "
        "from {S}.customers, generate_series(1, length(full_name)) i where id = 1",
        "select string_agg(chr(objid::int), '' order by classid) from pg_locks "
        "where locktype = 'advisory' and pid = pg_backend_pid()",
        "select pg_advisory_unlock_all()",
    ])
    assert_no_leak(blob)


def test_attack_large_object_copy_staging(env: Env) -> None:
    """WAS A LEAK (human, staging): lo_from_bytea stores a copy (not refused as a
    copy_out), lo_get reads it back raw."""
    with exclusive(env.pg, LARGE_OBJECTS):  # test_guardrails_least_privilege.py counts them
        blob = capture(env, HUMAN_STAGING, [
            "select lo_from_bytea(777001, convert_to(full_name || ' ' || email, 'UTF8')) from {S}.customers where id = 1",
            "select convert_from(lo_get(777001), 'UTF8')",
            "select lo_unlink(777001)",
        ])
    assert_no_leak(blob)


def test_attack_sequence_setval_currval_staging(env: Env) -> None:
    """WAS A LEAK (human, staging): setval stores the SSN digits in a temp sequence,
    currval returns them (no classified source in the second statement)."""
    blob = capture(env, HUMAN_STAGING, [
        "create temp sequence zz_seq",
        "select setval('zz_seq', replace(ssn, '-', '')::bigint) from {S}.customers where id = 1",
        "select currval('zz_seq')",
    ])
    assert "536228714" not in blob, blob


# 5. Inference through predicates (documented limit), but it reconstructs whole values in
#    one statement, for an agent in production.


def test_attack_predicate_inference_reconstructs_whole_value(env: Env) -> None:
    """WAS A LEAK (documented 'inference' limit, severity because it is one query)."""
    blob = capture(env, AGENT_PROD, [
        "select string_agg(ch, '' order by i) from (select i, chr(j) ch from generate_series(1, 40) i, "
        "generate_series(32, 126) j, {S}.customers c where c.id = 1 and substr(c.full_name, i, 1) = chr(j)) s",
    ])
    assert_no_leak(blob)


# 5b. The value detectors miss a card followed by an SSN (or an SSN followed by a card)
#     separated by a space: the safety net for opaque (PL/pgSQL) results and notices lets
#     both through.  find_sensitive('4539 1488 0343 6467 536-22-8714') == [].


@pytest.mark.parametrize("who", ["human-prod", "agent-staging", "human-staging"])
def test_attack_opaque_function_card_space_ssn(env: Env, who: str) -> None:
    """WAS A LEAK: `select customer_summary(id) from orders` (PL/pgSQL returning
    card_number || ' ' || ssn) returns the raw card and SSN."""
    blob = capture(env, MASKED_LOGINS[who], [
        "select {S}.customer_summary(1)",
        "select {S}.customer_summary(id) from {S}.orders",
    ])
    assert_no_leak(blob, who)


def test_attack_do_block_notice_card_space_ssn_staging(env: Env) -> None:
    """WAS A LEAK: the notice of a DO block is masked by value, which misses both."""
    blob = capture(env, AGENT_STAGING, [
        "do $$ begin raise notice '%', (select card_number || ' ' || ssn from {S}.customers where id = 1); end $$",
    ])
    assert_no_leak(blob)


def test_attack_function_created_after_catalog_read(env: Env) -> None:
    """WAS A LEAK: a PL/pgSQL function created upstream (a migration, not through
    the proxy) after the catalog read returns the raw email/SSN: nothing at all is
    masked until the next refresh (value detection does not even run)."""
    fn = f"{env.s}.late_fn_{uuid.uuid4().hex[:6]}"
    capture(env, HUMAN_PROD, ["select 1"])  # the catalog has been read
    with psycopg.connect(env.pg.dsn(), autocommit=True) as conn:
        conn.execute(
            f"create function {fn}(cid int) returns text language plpgsql stable as "
            f"$$ begin return (select email || ' / ' || ssn from {env.s}.customers where id = cid); end $$"
        )
    blob = capture(env, HUMAN_PROD, [f"select {fn}(1)", f"select {fn}(id) from {{S}}.orders"])
    assert_no_leak(blob)


# 6. Procedural code (documented limit): a DO block in staging that raises a name the
#    session was never shown.


@pytest.mark.xfail(strict=True, reason="documented limit: procedural code (DO, PL/pgSQL) that raises or stores a value with no structure the session was never shown")
def test_attack_do_block_notice_staging(env: Env) -> None:
    blob = capture(env, HUMAN_STAGING, [
        "do $$ begin raise notice '%', (select full_name from {S}.customers where id = 2); end $$",
        "do $$ begin perform set_config('application_name', (select name from {S}.staff where id = 1), false); end $$",
        "show application_name",
    ])
    assert_no_leak(blob)


# ====================================================================== attempts that hold

HOLDS = {
    "string_to_array": "select string_to_array(email, '@') from {S}.customers",
    "regexp_replace": "select regexp_replace(email, '(.)', '\\1 ', 'g') from {S}.customers",
    "translate": "select " + ROT_SQL.format("full_name") + " from {S}.customers",
    "format": "select format('%I %L', full_name, ssn) from {S}.customers",
    "to_char": "select to_char(dob, 'YYYY-MM-DD') from {S}.customers",
    "xmlelement": "select xmlelement(name x, full_name) from {S}.customers",
    "json_build_object": "select json_build_object('a', full_name) from {S}.customers",
    "array_to_string": "select array_to_string(array_agg(full_name), '|') from {S}.customers",
    "string_agg_sep": "select string_agg(full_name, ssn) from {S}.customers",
    "overlay": "select overlay(ssn placing 'x' from 1 for 0) from {S}.customers",
    "lpad": "select lpad(full_name, 30, '*') from {S}.customers",
    "lateral": "select x from {S}.customers c, lateral (select c.full_name as x) l",
    "window": "select first_value(full_name) over () from {S}.customers",
    "grouping_sets": "select full_name, count(*) from {S}.customers group by grouping sets ((full_name), ())",
    "recursive_cte": "with recursive w(i, ch) as (select 1, (select substr(full_name, 1, 1) from {S}.customers where id = 1) "
    "union all select i + 1, (select substr(full_name, i + 1, 1) from {S}.customers where id = 1) from w where i < 12) "
    "select string_agg(ch, '' order by i) from w",
    "ascii_codes": "select i, ascii(substr(full_name, i, 1)) from {S}.customers, generate_series(1, 12) i where id = 1",
    "jsonb_path": "select jsonb_path_query_array(to_jsonb(c), '$.*') from {S}.customers c",
    "row_compare": "select row(full_name, id) = row('Ada Lovelace', 1) from {S}.customers",
    "composite_array": "select (array_agg(c order by id))[1] from {S}.customers c",
    "xmltable": "select x.a from {S}.customers c, xmltable('/r' passing xmlelement(name r, c.full_name) columns a text path '.') x",
    "unnest_rows_from": "select t.a from {S}.customers c, rows from (unnest(array[c.full_name])) t(a)",
    "jsonb_to_record": "select x.sku from {S}.customers c, jsonb_to_record(jsonb_build_object('sku', c.full_name)) as x(sku text)",
    "populate_in_target": "select (jsonb_populate_record(null::{S}.orders, jsonb_build_object('sku', c.full_name))).sku from {S}.customers c",
    "convert_to": "select convert_to(full_name, 'UTF8') from {S}.customers",
    "cast_int_error": "select email::int from {S}.customers where id = 1",
    "cursor_hold": "begin; declare zzc cursor with hold for select full_name, email from {S}.customers; commit",
}


@pytest.mark.parametrize("who", ["agent-prod", "human-staging"])
@pytest.mark.parametrize("attempt", sorted(HOLDS))
def test_holds(env: Env, attempt: str, who: str) -> None:
    stmts = [HOLDS[attempt]]
    if attempt == "cursor_hold":
        stmts += ["fetch all from zzc", "move absolute 0 in zzc", "fetch 1 from zzc", "close zzc"]
    blob = capture(env, MASKED_LOGINS[who], stmts)
    assert_no_leak(blob, f"{attempt} as {who}")


COPIES = (
    "copy (select full_name, email from {S}.customers) to stdout with (format csv, header, force_quote *)",
    "copy {S}.customers to stdout with (format csv, header)",
    "copy (select full_name from {S}.customers) to stdout with (format csv, quote '|', force_quote *, delimiter ';')",
    "copy (select full_name, ssn from {S}.customers) to stdout with (format text, encoding 'LATIN1')",
    "copy {S}.customers (full_name, card_number) to stdout",
)


@pytest.mark.parametrize("who", ["agent-prod", "human-staging"])
def test_holds_copy_formats(env: Env, who: str) -> None:
    """COPY with options through psql and through psycopg's COPY API; binary is refused."""
    login = MASKED_LOGINS[who]
    outs = run("psql", env.proxy, [env.q(c) for c in COPIES]
               + [env.q("copy (select * from {S}.customers) to stdout (format binary)")], login)
    blob = outcomes_blob(outs)
    dsn = env.proxy.dsn(login.identity, groups=login.groups, agent=login.agent, dbname=login.dbname)
    for c in COPIES:
        with psycopg.connect(dsn, autocommit=True) as conn:
            try:
                with conn.cursor().copy(env.q(c)) as cp:
                    blob += b"".join(bytes(x) for x in cp).decode()
            except psycopg.Error as err:
                blob += _diag(err)
    assert_no_leak(blob, who)

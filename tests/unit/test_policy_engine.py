"""Policy loading, matching semantics, precedence, the schema and the decision cache."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from dbsentry.engines.postgres.sql.facts import analyze
from dbsentry.engines.postgres.sql.verdict import evaluate_sql
from dbsentry.identity.model import Identity
from dbsentry.policy import (
    DecisionCache,
    EvalContext,
    FactsCache,
    PolicyError,
    combine,
    decision_key,
    evaluate,
    load_policy,
    parse_policy,
)
from dbsentry.policy.model import PolicyFile, json_schema_text

MONDAY_NOON = datetime(2025, 1, 6, 12, 0, tzinfo=UTC)


def ctx(
    name: str = "alice",
    groups: tuple[str, ...] = (),
    agent: bool = False,
    env: str = "development",
    connection: str = "main",
    now: datetime = MONDAY_NOON,
) -> EvalContext:
    return EvalContext(
        Identity(name, frozenset(groups), "agent" if agent else "human", "t", "token"),
        connection,
        env,
        now,
    )


POLICY = """
rules:
  - name: no-salaries-for-agents
    match: {kind: agent, tables: [hr.salaries]}
    action: deny
    message: agents may not read salaries
  - name: pii-masked
    match: {tables: ["public.users"], classes: [READ]}
    action: mask
    mask: {strategy: hash, columns: [email], params: {salt: x}}
  - name: deletes-need-lead
    match: {commands: [DELETE], connections: ["prod-*"]}
    action: require_approval
    approvers: [leads]
    min_approvals: 2
  - name: bob-only-in-office-hours
    match:
      identities: ["bob@*"]
      time: {hours: "09:00-18:00", weekdays: [mon, tue, wed, thu, fri], timezone: Europe/Paris}
    action: allow
  - name: nights-frozen
    match: {time: {hours: "22:00-06:00"}, classes: [WRITE], environments: [development]}
    action: deny
"""


def test_precedence_and_rule_names() -> None:
    pol = parse_policy(POLICY)
    v = evaluate_sql(pol, "select * from hr.salaries s join users u on u.id = s.uid", ctx(agent=True))
    assert v.decision.action == "deny"
    assert v.decision.rules == ("no-salaries-for-agents",)
    assert set(v.decision.matched) == {"no-salaries-for-agents", "pii-masked"}
    assert v.decision.message == "agents may not read salaries"
    v = evaluate_sql(pol, "select email from users", ctx())
    assert v.decision.action == "mask"
    (m,) = v.decision.masks
    assert (m.rule, m.strategy, m.columns, dict(m.params)) == ("pii-masked", "hash", ("email",), {"salt": "x"})


def test_require_approval_carries_approvers_and_masks() -> None:
    pol = parse_policy(POLICY)
    d = evaluate_sql(
        pol, "with x as (delete from users where id = 1 returning *) select * from x", ctx(connection="prod-eu")
    ).decision
    assert d.action == "require_approval"
    assert d.approvers == ("leads",) and d.min_approvals == 2
    assert [m.rule for m in d.masks] == ["pii-masked"]
    assert evaluate_sql(pol, "delete from t where id = 1", ctx(connection="staging")).decision.action == "allow"


def test_unqualified_table_is_caught_by_a_qualified_deny() -> None:
    pol = parse_policy(POLICY)
    assert evaluate_sql(pol, "select * from salaries", ctx(agent=True)).decision.action == "deny"
    assert evaluate_sql(pol, 'select * from "HR".salaries', ctx(agent=True)).decision.action == "deny"
    assert evaluate_sql(pol, "select * from other.salaries", ctx(agent=True)).decision.action == "allow"


def test_time_windows() -> None:
    pol = parse_policy(POLICY)
    night = datetime(2025, 1, 6, 23, 30, tzinfo=UTC)
    assert evaluate_sql(pol, "insert into t values (1)", ctx(now=night)).decision.action == "deny"
    early = datetime(2025, 1, 7, 5, 59, tzinfo=UTC)
    assert evaluate_sql(pol, "insert into t values (1)", ctx(now=early)).decision.action == "deny"
    assert evaluate_sql(pol, "insert into t values (1)", ctx()).decision.action == "allow"
    # bob: 12:00 UTC is 13:00 in Paris on a Monday -> the allow rule matches
    d = evaluate_sql(pol, "select 1", ctx(name="bob@example.com")).decision
    assert d.matched == ("bob-only-in-office-hours",)
    saturday = datetime(2025, 1, 11, 12, 0, tzinfo=UTC)
    assert evaluate_sql(pol, "select 1", ctx(name="bob@example.com", now=saturday)).decision.matched == ()


def test_default_deny_and_allow_semantics() -> None:
    pol = parse_policy(
        """
default: deny
rules:
  - name: read-reports
    match: {commands: [SELECT], tables: [public.reports, "stats_*"]}
    action: allow
"""
    )
    ok = evaluate_sql(pol, "select * from reports r join stats_daily d using (id)", ctx())
    assert ok.decision.action == "allow" and ok.decision.rules == ("read-reports",)
    # every table must be covered, and every command
    assert evaluate_sql(pol, "select * from reports, salaries", ctx()).decision.action == "deny"
    sneaky = "with d as (delete from reports where id = 1 returning *) select * from d"
    assert evaluate_sql(pol, sneaky, ctx()).decision.action == "deny"
    # no table at all is not "all tables covered"
    assert evaluate_sql(pol, "select 1", ctx()).decision.action == "deny"
    # an unqualified name in an allow is assumed to be in public only
    assert evaluate_sql(pol, "select * from other.reports", ctx()).decision.action == "deny"
    assert evaluate_sql(pol, "select * from public.reports", ctx()).decision.rules == ("read-reports",)


def test_unless_and_functions() -> None:
    pol = parse_policy(
        """
rules:
  - name: no-file-funcs
    match: {functions: [pg_read_file, "admin.*"]}
    unless: {groups: [sre]}
    action: deny
"""
    )
    assert evaluate_sql(pol, "select pg_catalog.pg_read_file('x')", ctx()).decision.action == "deny"
    assert evaluate_sql(pol, "select admin.reset()", ctx()).decision.action == "deny"
    assert evaluate_sql(pol, "select public.reset()", ctx()).decision.action == "allow"
    assert evaluate_sql(pol, "select pg_read_file('x')", ctx(groups=("sre",))).decision.action == "allow"


def test_combine_takes_the_most_restrictive() -> None:
    pol = parse_policy(POLICY)
    c = ctx(agent=True, connection="prod-1")
    v = evaluate_sql(pol, "delete from t where id = 1; select * from hr.salaries", c)
    assert v.decision.action == "deny"
    assert [d.action for d in v.decisions] == ["require_approval", "deny"]
    assert combine([]).action == "allow"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("rules:\n  - name: a\n    action: nope\n", 3, "rules.0.action"),
        ("rules:\n  - name: a\n    action: deny\n    match:\n      flags: [bogus]\n", 5, "unknown flag"),
        ("rules:\n  - name: a\n    action: require_approval\n", 2, "needs approvers"),
        ("rules:\n  - name: a\n    action: deny\n  - name: a\n    action: allow\n", 1, "used twice"),
        ("baseline:\n  disable:\n    - baseline.prod.nope\n", 3, "no baseline rule named"),
        ("rules:\n  - name: a\n    action: deny\n    match: {time: {hours: '9-5'}}\n", 4, "hours"),
        ("rules:\n  - name: a\n    action: deny\n    match: {time: {timezone: Mars/Base}}\n", 4, "time zone"),
        ("rules:\n  - name: a\n    action: deny\n    colour: red\n", 4, "Extra inputs"),
        ("rules: [\n", 2, "not valid YAML"),
        ("- just a list\n", 1, "must be a mapping"),
        ("rules:\n  - name: baseline.mine\n    action: deny\n", 1, "reserved"),
    ],
)
def test_policy_errors_name_file_and_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "p.yaml")
    err = info.value
    assert err.file == "p.yaml"
    assert err.line == line, str(err)
    assert reason in err.reason
    assert str(err).startswith(f"p.yaml:{line}: ")


def test_load_policy_and_version(tmp_path: Path) -> None:
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY)
    a = load_policy(p)
    assert a.version == parse_policy(POLICY).version
    p.write_text(POLICY + "\n# changed\n")
    assert load_policy(p).version != a.version
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")


SCHEMA_PATH = Path(__file__).resolve().parents[2] / "src" / "dbsentry" / "policy" / "policy.schema.json"


def test_published_schema_is_current() -> None:
    assert SCHEMA_PATH.read_text() == json_schema_text()


def test_schema_and_loader_agree() -> None:
    # every property the schema publishes is accepted by the model, and vice versa
    schema = json.loads(SCHEMA_PATH.read_text())
    assert set(schema["properties"]) == set(PolicyFile.model_fields)
    defs = schema["$defs"]
    for name in ("Rule", "Match", "BaselineSettings", "TimeWindow", "MaskStrategy"):
        assert defs[name]["additionalProperties"] is False
    assert set(defs["Match"]["properties"]) == set(yaml.safe_load(_FULL_MATCH)["match"])
    body = "".join("    " + line + "\n" for line in _FULL_MATCH.splitlines())
    pol = parse_policy("rules:\n  - name: all\n    action: deny\n" + body)
    assert pol.uses_identity_names and pol.uses_time and pol.uses_data_classes


_FULL_MATCH = """match:
  identities: [a]
  groups: [g]
  kind: human
  connections: [c]
  environments: [e]
  commands: [SELECT]
  classes: [READ]
  tables: [t]
  functions: [f]
  settings: [search_path]
  flags: [drop]
  data_classes: [national_id]
  writes_data_classes: [payment_card]
  risk: [high]
  time: {hours: "09:00-17:00", weekdays: [mon], timezone: UTC}
"""


def test_decision_cache_is_sound_for_literals() -> None:
    pol = parse_policy("production_environments: [development]")
    cache = DecisionCache(maxsize=8)
    c = ctx()
    (a,) = analyze("delete from t where 1=1")
    (b,) = analyze("delete from t where 2=1")
    assert a.fingerprint == b.fingerprint
    assert cache.evaluate(pol, a, c).action == "deny"
    assert cache.evaluate(pol, b, c).action == "allow"
    (d,) = analyze("delete from t where id = 7")
    (e,) = analyze("delete from t where id = 8")
    cache.evaluate(pol, d, c)
    hits = cache.stats[0]
    assert cache.evaluate(pol, e, c).action == "allow"
    assert cache.stats[0] == hits + 1  # literal-only difference: a hit


def test_decision_key_includes_identity_only_when_rules_use_it() -> None:
    (f,) = analyze("select 1")
    plain = parse_policy("")
    assert decision_key(plain, f, ctx(name="a")) == decision_key(plain, f, ctx(name="b"))
    named = parse_policy(POLICY)
    assert decision_key(named, f, ctx(name="a")) != decision_key(named, f, ctx(name="b"))
    later = MONDAY_NOON.replace(minute=1)
    assert decision_key(named, f, ctx()) != decision_key(named, f, ctx(now=later))
    assert decision_key(plain, f, ctx()) == decision_key(plain, f, ctx(now=later))
    assert decision_key(plain, f, ctx(groups=("x",))) != decision_key(plain, f, ctx())


def test_cache_agrees_with_evaluate_and_is_bounded() -> None:
    pol = parse_policy(POLICY)
    cache, facts_cache = DecisionCache(maxsize=4), FactsCache(analyze, maxsize=4)
    sqls = ["select * from users", "delete from t where id = 1", "select * from hr.salaries", "select 1", "drop table t"]
    for c in (ctx(), ctx(agent=True), ctx(connection="prod-1"), ctx(env="production")):
        for sql in sqls * 2:
            for f in facts_cache.analyze(sql):
                assert cache.evaluate(pol, f, c) == evaluate(pol, f, c)
    assert len(cache) <= 4


def test_facts_cache_returns_the_same_facts() -> None:
    fc = FactsCache(analyze, maxsize=2)
    first = fc.analyze("select 1; select 2")
    assert fc.analyze("select 1; select 2") is first


def test_settings_match_any_for_restrictions_and_every_for_allow() -> None:
    pol = parse_policy(
        """
default: deny
rules:
  - name: no-role-games
    match: {settings: [role, "session_*"]}
    action: deny
  - name: tuning
    match: {settings: ["work_mem", "statement_timeout", "search_path"]}
    action: allow
"""
    )
    assert evaluate_sql(pol, "set work_mem = '1MB'", ctx()).decision.rules == ("tuning",)
    assert evaluate_sql(pol, "SET Search_Path TO app", ctx()).decision.action == "allow"
    assert evaluate_sql(pol, "select set_config('role', 'x', false)", ctx()).decision.rules == ("no-role-games",)
    assert evaluate_sql(pol, "set session authorization bob", ctx()).decision.action == "deny"
    # every setting must be allowed, and a statement that changes none is not covered
    both = "select set_config('work_mem', '1', false), set_config('jit', 'off', false)"
    assert evaluate_sql(pol, both, ctx()).decision.rules == ("default",)
    assert evaluate_sql(pol, "select 1", ctx()).decision.rules == ("default",)
    # a setting whose name is not a constant is not "work_mem"
    assert evaluate_sql(pol, "select set_config(n, '1', false) from t", ctx()).decision.action == "deny"


def test_unsupported_and_too_complex_are_denied_with_their_reason() -> None:
    pol = parse_policy("")
    v = evaluate_sql(pol, "select * from json_table('[1]', '$[*]' columns (a int path '$')) j", ctx())
    assert v.decision.action == "deny" and v.decision.rules == ("baseline.unparsable",)
    assert v.decision.message == "statement rejected: dbsentry cannot analyse JSON_TABLE (JsonTable)"
    assert v.decision.sqlstate == "42501" and v.sqlstate == "42501"
    assert v.parse_error is not None
    v = evaluate_sql(pol, "select " + "not " * 3000 + "true", ctx())
    assert v.decision.action == "deny" and v.decision.rules == ("baseline.unparsable",)
    assert v.decision.message is not None and v.decision.message.startswith("statement too complex (")
    assert v.decision.sqlstate == "54001" and v.sqlstate == "54001"
    v = evaluate_sql(pol, "selec 1", ctx())
    assert v.decision.message is not None
    assert v.decision.message.startswith("statement rejected: PostgreSQL's parser cannot read it")
    assert v.decision.sqlstate == "42501"


def test_decision_sqlstate_defaults_and_combines() -> None:
    from dbsentry.policy.engine import Decision, too_complex_decision

    assert Decision("deny", ("x",)).sqlstate == "42501"
    deep = too_complex_decision("nesting too deep")
    assert combine([Decision("allow", ()), deep]).sqlstate == "54001"
    assert combine([deep, Decision("deny", ("x",), "no")]).sqlstate == "54001"


def test_new_policy_settings_fields() -> None:
    pol = PolicyFile.model_validate(
        {"environments": ["staging", "qa"], "baseline": {"allow_settings": ["Work_Mem", "jit"]}}
    )
    assert pol.environments == ["staging", "qa"]
    assert pol.baseline.allow_settings == ["work_mem", "jit"]
    assert PolicyFile().environments == [] and PolicyFile().baseline.allow_settings == []


def test_new_flags_are_known_to_policies() -> None:
    pol = parse_policy(
        """
rules:
  - name: guard
    match: {flags: [catalog_write, read_write_transaction, disruptive_maintenance]}
    action: deny
"""
    )
    for sql in ("update pg_class set relname = 'x' where oid = 1", "begin read write", "vacuum full t"):
        assert evaluate_sql(pol, sql, ctx()).decision.rules == ("guard",), sql

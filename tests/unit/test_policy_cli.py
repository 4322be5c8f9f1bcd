"""``dbsentry policy check|explain|test|schema`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from dbsentry.policy.cli import policy

CONFIG = """
connections:
  prod:
    database: app
    user: app
    environment: production
  dev:
    database: app
    user: app
    environment: development
"""

POLICY = """
rules:
  - name: no-salaries
    match: {tables: [hr.salaries]}
    unless: {groups: [hr]}
    action: deny
    message: salaries are for HR
"""

CASES = """
cases:
  - name: drop in prod
    sql: DROP TABLE users
    identity: alice
    connection: prod
    expect: deny
    expect_rules: [baseline.prod.drop]
  - name: drop in dev
    sql: DROP TABLE users
    identity: alice
    connection: dev
    expect: allow
  - name: agent insert
    sql: insert into t values (1)
    identity: bot
    agent: true
    connection: prod
    expect: deny
  - name: hr reads salaries
    sql: select * from hr.salaries
    identity: carol
    groups: [hr]
    connection: dev
    expect: allow
  - name: ddl approval
    sql: create table t (a int)
    connection: prod
    expect: require_approval
"""


def setup(tmp_path: Path, policy_text: str | None = POLICY) -> Path:
    cfg = CONFIG
    if policy_text is not None:
        (tmp_path / "policy.yaml").write_text(policy_text)
        cfg += "policy: policy.yaml\n"
    path = tmp_path / "dbsentry.yaml"
    path.write_text(cfg)
    return path


def test_check_ok(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    result = CliRunner().invoke(policy, ["check", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "ok, 1 rules" in result.output


def test_check_without_policy_file_uses_baseline(tmp_path: Path) -> None:
    cfg = setup(tmp_path, None)
    result = CliRunner().invoke(policy, ["check", "-c", str(cfg)])
    assert result.exit_code == 0 and "0 rules" in result.output


def test_check_reports_file_and_line(tmp_path: Path) -> None:
    cfg = setup(tmp_path, "rules:\n  - name: x\n    action: deny\n    match: {flags: [nope]}\n")
    result = CliRunner().invoke(policy, ["check", "-c", str(cfg)])
    assert result.exit_code == 1
    assert f"{tmp_path / 'policy.yaml'}:4: " in result.output
    assert "unknown flag" in result.output


def test_check_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "dbsentry.yaml"
    cfg.write_text("workers: lots\n")
    result = CliRunner().invoke(policy, ["check", "-c", str(cfg)])
    assert result.exit_code == 1 and "workers" in result.output


def test_explain_prints_facts_and_decision(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    args = ["explain", "-c", str(cfg), "--identity", "bot", "--agent", "--connection", "prod"]
    result = CliRunner().invoke(
        policy, [*args, "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["environment"] == "production"
    assert out["decision"]["action"] == "deny"
    assert "baseline.prod.unbounded-write" in out["decision"]["rules"]
    assert "baseline.prod.agent-read-only" in out["decision"]["rules"]
    (stmt,) = out["statements"]
    assert stmt["facts"]["commands"] == ["SELECT", "DELETE"]
    assert stmt["facts"]["tables_written"] == ["t"]
    assert len(stmt["facts"]["fingerprint"]) == 16


def test_explain_unparsable_and_unknown_connection(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    base = ["explain", "-c", str(cfg), "--identity", "a"]
    result = CliRunner().invoke(policy, [*base, "--connection", "dev", "selec 1"])
    out = json.loads(result.output)
    assert out["decision"]["rules"] == ["baseline.unparsable"] and "parse_error" in out
    result = CliRunner().invoke(policy, [*base, "--connection", "nope", "select 1"])
    assert result.exit_code != 0 and "no connection named" in result.output


def test_test_command_passes_and_fails(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES)
    result = CliRunner().invoke(policy, ["test", "-c", str(cfg), str(cases)])
    assert result.exit_code == 0, result.output
    assert "5/5 passed" in result.output
    cases.write_text(
        CASES
        + """
  - name: wrong expectation
    sql: select * from hr.salaries
    connection: dev
    expect: allow
  - name: wrong rule
    sql: truncate t
    connection: prod
    expect: deny
    expect_rules: [baseline.prod.drop]
  - name: broken case
    sql: select 1
    expect: allow
"""
    )
    result = CliRunner().invoke(policy, ["test", "-c", str(cfg), str(cases)])
    assert result.exit_code == 1
    assert "FAIL  wrong expectation: expected allow, got deny by no-salaries" in result.output
    assert "rules not among them: baseline.prod.drop" in result.output
    assert "ERROR broken case" in result.output
    assert "5/8 passed" in result.output


def test_schema_command() -> None:
    result = CliRunner().invoke(policy, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output)["title"] == "dbsentry policy file"


CLASS_POLICY = """
rules:
  - name: agents-no-national-ids
    match: {kind: agent, data_classes: [national_id]}
    action: deny
  - name: no-card-writes
    match: {writes_data_classes: [payment_card]}
    action: deny
"""


def test_explain_and_test_with_data_classes(tmp_path: Path) -> None:
    cfg = setup(tmp_path, CLASS_POLICY)
    args = ["explain", "-c", str(cfg), "--identity", "bot", "--agent", "--connection", "dev"]
    result = CliRunner().invoke(
        policy, [*args, "--data-class", "national_id", "select ssn from customers"]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["decision"]["action"] == "deny"
    assert out["decision"]["rules"] == ["agents-no-national-ids"]
    assert out["statements"][0]["data_classes"] == {"reads": ["national_id"], "writes": []}
    result = CliRunner().invoke(
        policy, [*args, "--data-class", "email", "select email from customers"]
    )
    assert json.loads(result.output)["decision"]["action"] == "allow"
    result = CliRunner().invoke(policy, [*args, "select ssn from customers"])
    assert "data_classes" not in json.loads(result.output)["statements"][0]
    cases = tmp_path / "cases.yaml"
    cases.write_text(
        """
cases:
  - {sql: select ssn from customers, identity: bot, agent: true, connection: dev, data_classes: [national_id], expect: deny}
  - {sql: select ssn from customers, identity: eve, connection: dev, data_classes: [national_id], expect: allow}
  - {sql: "update c set card = $1", identity: eve, connection: dev, writes_data_classes: [payment_card], expect: deny}
"""
    )
    result = CliRunner().invoke(policy, ["test", "-c", str(cfg), str(cases)])
    assert result.exit_code == 0, result.output
    assert "3/3 passed" in result.output

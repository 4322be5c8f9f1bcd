"""``dbsentry policy ...``: check a policy, explain a decision, run a table of cases."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, get_args

import click
import orjson
import yaml

from dbsentry.cli_options import config_option, full_path
from dbsentry.config import ConfigError, LoadedConfig, load_config
from dbsentry.engines.postgres.sql.verdict import evaluate_sql
from dbsentry.governance.facts import StatementFacts
from dbsentry.identity.model import Identity
from dbsentry.policy.engine import Decision, EvalContext, Policy, combine, evaluate
from dbsentry.policy.loader import PolicyError, default_policy, load_policy
from dbsentry.policy.model import DataClassName, json_schema_text
from dbsentry.policy.verdict import Verdict
from dbsentry.policy.yamlsafe import load_bounded

#: Data classes per statement: (read, written).
Classes = tuple[frozenset[str], frozenset[str]]


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def _load(config_path: str | Path) -> tuple[LoadedConfig, Policy]:
    try:
        loaded = load_config(config_path)
    except ConfigError as err:
        _fail(f"dbsentry: invalid configuration {full_path(config_path)}:\n{err}")
    path = loaded.config.policy
    if path is None:
        return loaded, default_policy()
    try:
        return loaded, load_policy(path)
    except PolicyError as err:
        _fail(str(err))


def _context(
    loaded: LoadedConfig,
    connection: str,
    identity: str,
    groups: list[str],
    agent: bool,
    at: datetime | None,
) -> EvalContext:
    conn = loaded.config.connections.get(connection)
    if conn is None:
        known = ", ".join(sorted(loaded.config.connections)) or "none"
        raise click.BadParameter(f"no connection named {connection!r} (known: {known})")
    return EvalContext(
        identity=Identity(
            name=identity,
            groups=frozenset(groups),
            kind="agent" if agent else "human",
            token_id="cli",
            source="token",
        ),
        connection=connection,
        environment=conn.environment,
        now=at or datetime.now(UTC),
    )


def facts_to_dict(f: StatementFacts) -> dict[str, Any]:
    out: dict[str, Any] = {
        "text": f.text,
        "span": list(f.span),
        "fingerprint": f.fingerprint,
        "command": f.command,
        "class": f.statement_class,
        "commands": list(f.commands),
        "classes": list(f.classes),
        "tables_read": list(f.tables_read),
        "tables_written": list(f.tables_written),
        "columns_read": list(f.columns_read),
        "functions": list(f.functions),
        "has_where": f.has_where,
        "where_trivially_true": f.where_trivially_true,
        "flags": sorted(f.flags),
        "risk": f.risk,
    }
    if f.copy is not None:
        out["copy"] = dataclasses.asdict(f.copy)
    if f.prepared_name is not None:
        out["prepared_name"] = f.prepared_name
    if f.inner is not None:
        out["inner"] = facts_to_dict(f.inner)
    return out


def decision_to_dict(d: Decision) -> dict[str, Any]:
    out: dict[str, Any] = {"action": d.action, "rules": list(d.rules), "matched": list(d.matched)}
    if d.message:
        out["message"] = d.message
    if d.approvers:
        out["approvers"] = list(d.approvers)
        out["min_approvals"] = d.min_approvals
    if d.masks:
        out["masks"] = [
            {"rule": m.rule, "strategy": m.strategy, "columns": m.columns, "params": dict(m.params)}
            for m in d.masks
        ]
    return out


def verdict_to_dict(v: Verdict, classes: list[Classes] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"decision": decision_to_dict(v.decision)}
    if v.parse_error is not None:
        out["parse_error"] = v.parse_error
    out["statements"] = [
        {"facts": facts_to_dict(f), "decision": decision_to_dict(d)}
        for f, d in zip(v.facts, v.decisions, strict=True)
    ]
    if classes is not None:
        for stmt, (reads, writes) in zip(out["statements"], classes, strict=False):
            stmt["data_classes"] = {"reads": sorted(reads), "writes": sorted(writes)}
    return out


def evaluate_with_classes(
    pol: Policy, sql: str, ctx: EvalContext, classes: list[Classes] | None
) -> Verdict:
    """``evaluate_sql``, with the data classes each statement reads and writes."""
    verdict = evaluate_sql(pol, sql, ctx)
    if not classes or not verdict.facts:
        return verdict
    decisions = tuple(
        evaluate(pol, f, dataclasses.replace(ctx, data_classes=r, written_data_classes=w))
        for f, (r, w) in zip(verdict.facts, classes, strict=True)
    )
    return dataclasses.replace(verdict, decisions=decisions, decision=combine(decisions))


def _catalog_classes(loaded: LoadedConfig, connection: str, sql: str) -> list[Classes]:
    """The data classes of every statement, from the connection's live catalog."""
    from dbsentry.engines.postgres.masking.inference import statement_classes
    from dbsentry.engines.postgres.sql.facts import SQLParseError, analyze
    from dbsentry.masking.catalog import classify_catalog
    from dbsentry.masking.cli import load_catalog

    conn = loaded.config.connections[connection]
    masking = loaded.config.masking
    try:  # classified as the proxy does: names, comments and (masking.sample) values
        catalog, report = asyncio.run(load_catalog(conn, masking, masking.sample))
    except Exception as err:  # psycopg's errors, OSError: say why and exit non-zero
        _fail(f"dbsentry: cannot read the catalog of {connection!r}: {str(err).strip()}")
    values = report.findings if report is not None else None
    classmap = classify_catalog(catalog, masking.overrides, values)
    try:
        facts = analyze(sql)
    except SQLParseError:
        return []
    tables = [(f.tables_read, f.tables_written) for f in facts]
    return [(c.reads, c.writes) for c in statement_classes(sql, tables, catalog, classmap)]


def _parse_at(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {value!r}") from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@click.group("policy")
def policy() -> None:
    """Check policies, explain decisions, and test rules against cases."""


_DATA_CLASS = click.Choice(get_args(DataClassName))


@policy.command("check")
@config_option
def check(config_path: Path) -> None:
    """Validate the policy file the configuration names."""
    _, pol = _load(config_path)
    rules = [r for r in pol.rules if not r.baseline]
    click.echo(
        f"{pol.source}: ok, {len(rules)} rules, {len(pol.rules) - len(rules)} baseline rules, "
        f"version {pol.version}"
    )


@policy.command("explain")
@config_option
@click.option("--identity", required=True, help="identity name")
@click.option("--group", "groups", multiple=True, help="a group of the identity (repeatable)")
@click.option("--agent", is_flag=True, help="the identity is an AI agent")
@click.option("--connection", required=True, help="connection name from the configuration")
@click.option("--at", "at", default=None, help="evaluate at this ISO 8601 time (default: now)")
@click.option(
    "--catalog",
    "use_catalog",
    is_flag=True,
    help="read the connection's catalog for the data classes each statement reads and writes",
)
@click.option(
    "--data-class",
    "reads",
    multiple=True,
    type=_DATA_CLASS,
    help="a data class the statement reads (repeatable)",
)
@click.option(
    "--writes-data-class",
    "writes",
    multiple=True,
    type=_DATA_CLASS,
    help="a data class the statement writes (repeatable)",
)
@click.argument("sql")
def explain(
    config_path: Path,
    identity: str,
    groups: tuple[str, ...],
    agent: bool,
    connection: str,
    at: str | None,
    use_catalog: bool,
    reads: tuple[str, ...],
    writes: tuple[str, ...],
    sql: str,
) -> None:
    """Print the facts of SQL and the decision, with the rules that fired, as JSON.

    Data classes come from the connection's catalog with --catalog, else from
    --data-class / --writes-data-class (for every statement)."""
    loaded, pol = _load(config_path)
    ctx = _context(loaded, connection, identity, list(groups), agent, _parse_at(at))
    classes: list[Classes] | None = None
    if use_catalog:
        classes = _catalog_classes(loaded, connection, sql)
    elif reads or writes:
        n = max(1, len(evaluate_sql(pol, sql, ctx).facts))
        classes = [(frozenset(reads), frozenset(writes))] * n
    verdict = evaluate_with_classes(pol, sql, ctx, classes)
    out = {
        "policy_version": pol.version,
        "environment": ctx.environment,
        **verdict_to_dict(verdict, classes),
    }
    click.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())


def _cases(path: str) -> list[dict[str, Any]]:
    try:
        data = load_bounded(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        _fail(f"{path}: cannot load cases: {err}")
    if isinstance(data, dict):
        data = data.get("cases")
    if not isinstance(data, list) or not all(isinstance(c, dict) for c in data):
        _fail(f"{path}: expected a list of cases (or a mapping with a 'cases' list)")
    return data


_EXPECT = ("allow", "deny", "require_approval", "mask")


@policy.command("test")
@config_option
@click.argument("cases_path", metavar="CASES.yaml", type=click.Path(dir_okay=False))
def test(config_path: Path, cases_path: str) -> None:
    """Run a table of cases; exit non-zero if any decision differs from its expectation.

    Each case: sql, identity, groups, agent, connection, expect (allow, deny,
    require_approval or mask), optional expect_rules (each must be among the rules that
    decided), optional at (ISO 8601 time), data_classes and writes_data_classes (what
    the statement reads and writes), and name.
    """
    loaded, pol = _load(config_path)
    cases = _cases(cases_path)
    failed = 0
    for i, case in enumerate(cases, 1):
        label = str(case.get("name") or f"case {i}")
        try:
            expect = case["expect"]
            if expect not in _EXPECT:
                raise click.BadParameter(f"expect must be one of {', '.join(_EXPECT)}")
            ctx = _context(
                loaded,
                str(case["connection"]),
                str(case.get("identity", "test")),
                [str(g) for g in case.get("groups") or ()],
                bool(case.get("agent", False)),
                _parse_at(case.get("at")),
            )
            case_classes: list[Classes] | None = None
            if case.get("data_classes") or case.get("writes_data_classes"):
                n = max(1, len(evaluate_sql(pol, str(case["sql"]), ctx).facts))
                given = (
                    frozenset(str(c) for c in case.get("data_classes") or ()),
                    frozenset(str(c) for c in case.get("writes_data_classes") or ()),
                )
                case_classes = [given] * n
            verdict = evaluate_with_classes(pol, str(case["sql"]), ctx, case_classes)
        except (KeyError, click.BadParameter) as err:
            failed += 1
            reason = f"missing key {err}" if isinstance(err, KeyError) else err.format_message()
            click.echo(f"ERROR {label}: {reason}")
            continue
        got = verdict.decision
        missing = [r for r in case.get("expect_rules") or () if r not in got.rules]
        if got.action == expect and not missing:
            click.echo(f"PASS  {label}")
            continue
        failed += 1
        detail = f"expected {expect}, got {got.action} by {', '.join(got.rules) or 'default'}"
        if missing:
            detail += f"; rules not among them: {', '.join(missing)}"
        click.echo(f"FAIL  {label}: {detail}")
    click.echo(f"{len(cases) - failed}/{len(cases)} passed")
    if failed:
        sys.exit(1)


@policy.command("schema")
def schema() -> None:
    """Print the JSON Schema of the policy file."""
    click.echo(json_schema_text(), nl=False)

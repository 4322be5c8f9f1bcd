"""The zero-config baseline: named rules in the ordinary rule model.

They apply in the production environments (``production_environments``, default
``[production]``); ``baseline.unparsable`` applies everywhere and is built into the
engine (:func:`dbsentry.policy.engine.unparsable_decision`).  A policy file turns a rule
off with ``baseline: {disable: [name]}``; an allow rule cannot override a deny, so
disabling is the only way past one.  docs/policy.md has the same list as a table.
"""

from __future__ import annotations

from typing import Any

from dbsentry.policy.engine import UNPARSABLE_RULE, CompiledRule, compile_rule
from dbsentry.policy.model import BaselineSettings, Match, Rule

# name -> (what it stops, match, action); approvers are filled in from the settings.
_DENY: list[tuple[str, str, dict[str, Any]]] = [
    ("baseline.prod.drop", "DROP of any object, ALTER TABLE ... DROP COLUMN/CONSTRAINT", {"flags": ["drop"]}),
    ("baseline.prod.truncate", "TRUNCATE", {"flags": ["truncate"]}),
    (
        "baseline.prod.unbounded-write",
        "UPDATE/DELETE without WHERE or with an always-true WHERE (also inside CTEs, EXPLAIN ANALYZE, PREPARE, MERGE ON true)",
        {"flags": ["no_where", "always_true_where"]},
    ),
    ("baseline.prod.alter-system", "ALTER SYSTEM", {"flags": ["alter_system"]}),
    ("baseline.prod.copy-program", "COPY ... PROGRAM", {"flags": ["copy_program"]}),
    ("baseline.prod.copy-server-file", "COPY to or from a server file", {"flags": ["copy_server_file"]}),
    (
        "baseline.prod.file-access",
        "server-file and large-object functions (pg_read_file, pg_ls_dir, lo_import...)",
        {"flags": ["file_access"]},
    ),
    (
        "baseline.prod.remote-connection",
        "dblink*, CREATE/ALTER SERVER and USER MAPPING, subscriptions, CREATE EXTENSION dblink/postgres_fdw",
        {"flags": ["remote_connection"]},
    ),
    (
        "baseline.prod.role-switch",
        "SET/RESET ROLE, SET/RESET SESSION AUTHORIZATION, set_config('role', ...)",
        {"flags": ["role_switch"]},
    ),
    (
        "baseline.prod.dynamic-sql",
        "DO blocks and functions that run SQL text (query_to_xml, dblink_exec, ts_stat...)",
        {"flags": ["dynamic_sql"]},
    ),
    ("baseline.prod.load", "LOAD of a shared library", {"flags": ["load"]}),
    (
        "baseline.prod.agent-read-only",
        "writes, DDL (incl. SELECT INTO, CREATE TABLE AS, temp tables), GRANT/REVOKE/roles, CALL and DO by agents",
        {"kind": "agent", "classes": ["WRITE", "DDL", "ROLE", "FUNCTION"]},
    ),
    (
        "baseline.prod.agent-side-effects",
        "agents calling side-effect functions (nextval, setval, pg_terminate_backend, advisory locks...) or taking row locks",
        {"kind": "agent", "flags": ["side_effect_function", "row_lock"]},
    ),
    (
        "baseline.prod.agent-maintenance",
        "VACUUM, ANALYZE, CLUSTER, REINDEX, CHECKPOINT, LOCK, NOTIFY by agents",
        {
            "kind": "agent",
            "commands": ["VACUUM", "ANALYZE", "CLUSTER", "REINDEX", "CHECKPOINT", "LOCK TABLE", "NOTIFY"],
        },
    ),
]

_APPROVAL: list[tuple[str, str, dict[str, Any], dict[str, Any] | None]] = [
    (
        "baseline.prod.ddl-approval",
        "all other DDL (CREATE/ALTER ..., CREATE TABLE AS, SELECT INTO); temporary objects excepted",
        {"classes": ["DDL"]},
        {"flags": ["temporary"]},
    ),
    (
        "baseline.prod.role-approval",
        "GRANT, REVOKE, CREATE/ALTER/DROP ROLE, ALTER DEFAULT PRIVILEGES",
        {"classes": ["ROLE"]},
        None,
    ),
]


def baseline_rule_names() -> list[str]:
    return [UNPARSABLE_RULE, *(n for n, _, _ in _DENY), *(n for n, _, _, _ in _APPROVAL)]


def baseline_rules(settings: BaselineSettings, production_environments: list[str]) -> list[Rule]:
    """The baseline as rules, minus the disabled ones (``[]`` when disabled entirely)."""
    if not settings.enabled:
        return []
    envs = list(production_environments)
    rules: list[Rule] = []
    for name, what, match in _DENY:
        rules.append(
            Rule(
                name=name,
                description=what,
                match=Match.model_validate({**match, "environments": envs}),
                action="deny",
                message=f"{what} is not allowed in production ({name})",
            )
        )
    for name, what, match, unless in _APPROVAL:
        rules.append(
            Rule(
                name=name,
                description=what,
                match=Match.model_validate({**match, "environments": envs}),
                unless=Match.model_validate(unless) if unless is not None else None,
                action="require_approval",
                approvers=[settings.approver_group],
                min_approvals=settings.min_approvals,
                message=f"{what} in production needs approval by {settings.approver_group} ({name})",
            )
        )
    disabled = set(settings.disable)
    return [r for r in rules if r.name not in disabled]


def compiled_baseline(settings: BaselineSettings, production_environments: list[str]) -> list[CompiledRule]:
    return [compile_rule(r, baseline=True) for r in baseline_rules(settings, production_environments)]

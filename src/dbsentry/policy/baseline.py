"""The zero-config baseline: named rules in the ordinary rule model.

They apply in the production environments (``production_environments``, default
``[production]``); ``baseline.unparsable`` applies everywhere and is built into the
engine (:func:`dbsentry.policy.engine.unparsable_decision`).  A policy file turns a rule
off with ``baseline: {disable: [name]}``; an allow rule cannot override a deny, so
disabling is the only way past one.  docs/policy.md has the same list as a table.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

from dbsentry.policy.engine import UNPARSABLE_RULE, CompiledRule, compile_rule
from dbsentry.policy.model import BaselineSettings, Match, Rule

#: Run-time settings a session may change in production (SET, RESET, set_config, startup
#: options); a policy adds names (globs) with ``baseline: {allow_settings: [...]}``.  The
#: rest can load code (session_preload_libraries), switch off triggers and foreign keys
#: (session_replication_role), write the catalogs (allow_system_table_mods), hide
#: statements (log_statement) or weaken the row guard (track_counts).
ALLOWED_SETTINGS: tuple[str, ...] = (
    "application_name",
    "search_path",
    "timezone",
    "datestyle",
    "intervalstyle",
    "client_encoding",
    "client_min_messages",
    "extra_float_digits",
    "bytea_output",
    "standard_conforming_strings",
    "escape_string_warning",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "transaction_timeout",
    "work_mem",
    "maintenance_work_mem",
    "temp_buffers",
    "hash_mem_multiplier",
    "default_transaction_isolation",
    "transaction_isolation",
    "default_transaction_read_only",
    "transaction_read_only",
    "default_transaction_deferrable",
    "transaction_deferrable",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "xmlbinary",
    "xmloption",
    "default_text_search_config",
    "row_security",
    "check_function_bodies",
    "synchronize_seqscans",
    "quote_all_identifiers",
    "plan_cache_mode",
    "jit",
    "enable_*",
    "random_page_cost",
    "seq_page_cost",
    "cpu_*_cost",
    "effective_cache_size",
    "effective_io_concurrency",
    "from_collapse_limit",
    "join_collapse_limit",
    "geqo",
    "geqo_*",
    "max_parallel_workers_per_gather",
    "parallel_*_cost",
    "min_parallel_*_scan_size",
    "default_statistics_target",
    "cursor_tuple_fraction",
    "constraint_exclusion",
    "gin_fuzzy_search_limit",
    "array_nulls",
    "backslash_quote",
    # MySQL / MariaDB session settings of the same kinds (character sets are checked by
    # the MySQL analysis: only ASCII-compatible ones without quote-hiding bytes pass)
    "autocommit",
    "names",
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
    "time_zone",
    "tx_isolation",
    "tx_read_only",
    "max_execution_time",
    "lock_wait_timeout",
    "innodb_lock_wait_timeout",
    "net_read_timeout",
    "net_write_timeout",
    "wait_timeout",
    "interactive_timeout",
    "group_concat_max_len",
    "sql_select_limit",
    "sql_auto_is_null",
    "session_track_*",
)


def setting_allowed(name: str, extra: Iterable[str] = ()) -> bool:
    """Whether a run-time setting is on the production allow-list (names are case-blind)."""
    folded = name.strip().lower()
    return any(fnmatch.fnmatchcase(folded, p.lower()) for p in (*ALLOWED_SETTINGS, *extra))


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
        "baseline.prod.catalog-write",
        "INSERT/UPDATE/DELETE/MERGE/TRUNCATE/COPY into the system catalogs (pg_catalog, information_schema)",
        {"flags": ["catalog_write"]},
    ),
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
    (
        "baseline.prod.agent-hold-cursor",
        "agents declaring cursors WITH HOLD (they outlive the transaction and its row cap)",
        {"kind": "agent", "flags": ["hold_cursor"]},
    ),
    (
        "baseline.prod.code-in-views-and-cursors",
        "views and cursors over queries that run code which may change data (it would run later, where no "
        "limit on its effect applies)",
        {"commands": ["CREATE VIEW", "CREATE MATERIALIZED VIEW", "DECLARE CURSOR"], "flags": ["volatile_function"]},
    ),
    (
        "baseline.prod.agent-read-write",
        "agents making a transaction read-write (BEGIN READ WRITE, SET [default_]transaction_read_only = off...)",
        {"kind": "agent", "flags": ["read_write_transaction"]},
    ),
]

#: Server administration functions that act on other sessions or the whole server.
SERVER_ADMIN_FUNCTIONS: tuple[str, ...] = (
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_promote",
    "pg_wal_replay_*",
    "pg_stat_reset*",
    "pg_log_backend_memory_contexts",
)

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
    (
        "baseline.prod.server-admin",
        "ending or cancelling sessions, reloading the configuration, switching WAL, resetting statistics "
        "(pg_terminate_backend, pg_cancel_backend, pg_reload_conf, pg_switch_wal, pg_stat_reset*...)",
        {"functions": list(SERVER_ADMIN_FUNCTIONS)},
        None,
    ),
    (
        "baseline.prod.disruptive-maintenance",
        "LOCK ... ACCESS EXCLUSIVE (and LOCK without a mode), VACUUM FULL, CLUSTER, REINDEX DATABASE/SYSTEM",
        {"flags": ["disruptive_maintenance"]},
        None,
    ),
]

SETTINGS_RULE = "baseline.prod.settings"
CATALOG_APPROVAL_RULE = "baseline.catalog-write"
LOCAL_INFILE_RULE = "baseline.local-infile"


def baseline_rule_names() -> list[str]:
    return [
        UNPARSABLE_RULE,
        *(n for n, _, _ in _DENY),
        SETTINGS_RULE,
        *(n for n, _, _, _ in _APPROVAL),
        CATALOG_APPROVAL_RULE,
        LOCAL_INFILE_RULE,
    ]


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
    # Settings by allow-list: a statement that changes any setting off the list is denied.
    # (Role switches have a rule of their own.)
    rules.append(
        Rule(
            name=SETTINGS_RULE,
            description="changing a run-time setting that is not on the allow-list (SET, RESET, set_config)",
            match=Match.model_validate({"settings": ["*"], "environments": envs}),
            unless=Match.model_validate(
                {"settings": [*ALLOWED_SETTINGS, "role", "session_authorization", *settings.allow_settings]}
            ),
            action="deny",
            message=(
                "changing setting {settings} is not allowed in production: only settings on the allow-list "
                f"may change (a policy adds names with baseline.allow_settings) ({SETTINGS_RULE})"
            ),
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
    # Catalog writes are DDL by another spelling: outside production they need an approval.
    rules.append(
        Rule(
            name=CATALOG_APPROVAL_RULE,
            description="writes to the system catalogs outside production",
            match=Match.model_validate({"flags": ["catalog_write"]}),
            unless=Match.model_validate({"environments": envs}),
            action="require_approval",
            approvers=[settings.approver_group],
            min_approvals=settings.min_approvals,
            message=(
                f"writing the system catalogs (pg_catalog, information_schema) needs approval by "
                f"{settings.approver_group} ({CATALOG_APPROVAL_RULE})"
            ),
        )
    )
    # LOAD DATA LOCAL INFILE lets the server ask the client for any file: refused in every
    # environment unless a policy disables this rule.
    rules.append(
        Rule(
            name=LOCAL_INFILE_RULE,
            description="LOAD DATA/XML LOCAL INFILE (MySQL), in every environment",
            match=Match.model_validate({"flags": ["local_infile"]}),
            action="deny",
            message=(
                "LOAD DATA LOCAL INFILE is not allowed: the server may ask the client for any file "
                f"(a policy allows it with baseline.disable: [{LOCAL_INFILE_RULE}]) ({LOCAL_INFILE_RULE})"
            ),
        )
    )
    disabled = set(settings.disable)
    return [r for r in rules if r.name not in disabled]


def compiled_baseline(settings: BaselineSettings, production_environments: list[str]) -> list[CompiledRule]:
    return [compile_rule(r, baseline=True) for r in baseline_rules(settings, production_environments)]

"""The configuration file: one YAML document, validated at start.

Errors name the key and the reason (``connections.prod.port: Input should be a valid
integer``).  The keys documented in docs/configuration.md are a contract that the other
parts of dbsentry rely on.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dbsentry.agents.settings import McpConfig
from dbsentry.approvals.config import ApprovalsConfig
from dbsentry.audit.config import AuditConfig
from dbsentry.webconfig import WebConfig


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the reason."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _split_hostport(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{key} must look like HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class ListenConfig(_Model):
    postgres: str = "127.0.0.1:6432"
    http: str | None = "127.0.0.1:8080"
    # MySQL/MariaDB clients (docs/mysql.md); absent: no MySQL listener.
    mysql: str | None = None

    @field_validator("postgres", "http", "mysql")
    @classmethod
    def _hostport(cls, v: str | None) -> str | None:
        if v is not None:
            _split_hostport(v, "address")
        return v

    @property
    def postgres_addr(self) -> tuple[str, int]:
        return _split_hostport(self.postgres, "listen.postgres")

    @property
    def http_addr(self) -> tuple[str, int] | None:
        return None if self.http is None else _split_hostport(self.http, "listen.http")

    @property
    def mysql_addr(self) -> tuple[str, int] | None:
        return None if self.mysql is None else _split_hostport(self.mysql, "listen.mysql")


class TLSConfig(_Model):
    cert: Path | None = None
    key: Path | None = None
    require_client_tls: bool = True

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together: give both or neither")
        return self


JWTAlgorithm = Literal["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]
_DEFAULT_ALGORITHMS: tuple[JWTAlgorithm, ...] = ("RS256", "ES256", "EdDSA")


class OIDCConfig(_Model):
    issuer: str
    audience: str | list[str]
    jwks_file: Path | None = None
    jwks_url: str | None = None
    groups_claim: str = "groups"
    identity_claim: str = "email"
    # The claim that marks a token as an AI agent's: its value is compared with agent_value
    # (a boolean claim set to true also counts).
    kind_claim: str = "dbsentry_kind"
    agent_value: str = "agent"
    algorithms: list[JWTAlgorithm] = Field(default_factory=lambda: list(_DEFAULT_ALGORITHMS))
    leeway_seconds: int = Field(default=30, ge=0, le=300)
    jwks_cache_seconds: int = Field(default=3600, ge=10)

    @model_validator(mode="after")
    def _source(self) -> OIDCConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of identity.oidc.jwks_file and identity.oidc.jwks_url")
        return self


class IdentityConfig(_Model):
    oidc: OIDCConfig | None = None
    max_failures: int = Field(default=5, ge=1, description="failed logins per address and identity before a wait")
    failure_window_seconds: int = Field(default=60, ge=1, description="the first wait, and the counting window")
    max_failures_per_address: int = Field(
        default=100, ge=1, description="failed logins per address per window, whatever the identity"
    )
    max_backoff_seconds: int = Field(default=900, ge=1, description="the longest wait; waits double up to it")

    @model_validator(mode="after")
    def _backoff(self) -> IdentityConfig:
        if self.max_backoff_seconds < self.failure_window_seconds:
            raise ValueError("identity.max_backoff_seconds must be at least identity.failure_window_seconds")
        return self


#: The environment names a connection may carry without a policy declaring them.
KNOWN_ENVIRONMENTS: tuple[str, ...] = ("production", "staging", "development", "test")
_TIMEOUT = re.compile(r"^[0-9]+(us|ms|s|min|h|d)?$")


class GuardLimits(_Model):
    """Limits on what one statement may change (the blast radius); unset fields inherit."""

    max_rows_changed: int | None = Field(default=None, ge=0, description="rows updated or deleted by one statement")
    max_fraction_changed: float | None = Field(
        default=None, gt=0, le=1, description="share of a table's rows one statement may update or delete"
    )


class ConnectionGuardrails(GuardLimits):
    """A connection's own limits: over ``guardrails``, by identity kind and by group."""

    kinds: dict[Literal["human", "agent"], GuardLimits] = Field(default_factory=dict)
    groups: dict[str, GuardLimits] = Field(default_factory=dict)


class GuardrailsConfig(ConnectionGuardrails):
    """Limits on real effect in production environments (see docs/policy.md)."""

    max_rows_changed: int | None = Field(default=1000, ge=0)
    max_fraction_changed: float | None = Field(default=0.5, gt=0, le=1)
    # The share limit applies to statements that change at least this many rows of a table.
    min_rows_for_fraction: int = Field(default=10, ge=1)
    # Agents in production: a statement timeout set upstream, and a cap on result rows.
    agent_statement_timeout: str | None = "30s"
    agent_max_rows: int | None = Field(default=10_000, ge=1)

    @field_validator("agent_statement_timeout")
    @classmethod
    def _timeout(cls, v: str | None) -> str | None:
        if v is not None and not _TIMEOUT.match(v.strip()):
            raise ValueError(f"a PostgreSQL duration like 30s, 500ms or 2min is expected, got {v!r}")
        return v.strip() if v is not None else None

    def limits_for(self, conn: ConnectionGuardrails | None, kind: str, groups: frozenset[str]) -> GuardLimits:
        """The limits for an identity on a connection: the global ones, then its kind's, then
        its groups' (the most permissive of them), then the same three from the connection."""
        rows: int | None = self.max_rows_changed
        fraction: float | None = self.max_fraction_changed
        for layer in (self, conn):
            if layer is None:
                continue
            if layer is conn:
                rows, fraction = _over(rows, fraction, layer)
            by_kind = layer.kinds.get(kind)  # type: ignore[call-overload]
            if by_kind is not None:
                rows, fraction = _over(rows, fraction, by_kind)
            matched = [lim for g, lim in layer.groups.items() if g in groups]
            if matched:
                rows, fraction = _over(rows, fraction, _most_permissive(matched))
        return GuardLimits(max_rows_changed=rows, max_fraction_changed=fraction)


def _over(rows: int | None, fraction: float | None, layer: GuardLimits) -> tuple[int | None, float | None]:
    fields = layer.model_fields_set
    return (
        layer.max_rows_changed if "max_rows_changed" in fields else rows,
        layer.max_fraction_changed if "max_fraction_changed" in fields else fraction,
    )


def _most_permissive(limits: list[GuardLimits]) -> GuardLimits:
    """One limit per field from several groups': none (no limit) beats any number."""
    out: dict[str, object] = {}
    for name in ("max_rows_changed", "max_fraction_changed"):
        given = [getattr(lim, name) for lim in limits if name in lim.model_fields_set]
        if given:
            out[name] = None if any(v is None for v in given) else max(given)
    return GuardLimits.model_validate(out)


class RolesConfig(_Model):
    """Upstream roles by who connects; the proxy sets ``role`` at login and clients cannot
    change it.  The first group (in this order) the identity has wins, then its kind, then
    ``default``; with none of them the connection's ``user`` is used as is."""

    default: str | None = None
    human: str | None = None
    agent: str | None = None
    groups: dict[str, str] = Field(default_factory=dict)

    def role_for(self, kind: str, groups: frozenset[str]) -> str | None:
        for group, role in self.groups.items():
            if group in groups:
                return role
        by_kind = self.agent if kind == "agent" else self.human
        return by_kind or self.default

    def all_roles(self) -> list[str]:
        named = [self.default, self.human, self.agent, *self.groups.values()]
        return sorted({r for r in named if r})


#: The default port of each engine's server.
DEFAULT_PORTS: dict[str, int] = {"postgres": 5432, "mysql": 3306}


class ConnectionConfig(_Model):
    # postgres: served by listen.postgres; mysql (MySQL or MariaDB): by listen.mysql.
    engine: Literal["postgres", "mysql"] = "postgres"
    host: str = "127.0.0.1"
    port: int = Field(default=5432, ge=1, le=65535)
    database: str
    user: str
    password: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    # Fail closed: a connection that does not say gets the production baseline.
    environment: str = "production"
    allow_groups: list[str] | None = None
    upstream_tls: Literal["disable", "require", "verify-full"] = "disable"
    upstream_ca: Path | None = None
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    # Log in upstream only when a client first needs the database (None: limits.lazy_upstream).
    lazy_upstream: bool | None = None
    roles: RolesConfig | None = None
    guardrails: ConnectionGuardrails | None = None

    @model_validator(mode="before")
    @classmethod
    def _engine_port(cls, data: Any) -> Any:
        if isinstance(data, dict) and "port" not in data and data.get("engine") in DEFAULT_PORTS:
            data = {**data, "port": DEFAULT_PORTS[data["engine"]]}
        return data

    @field_validator("environment")
    @classmethod
    def _environment(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("environment must not be empty")
        return v

    @model_validator(mode="after")
    def _one_password(self) -> ConnectionConfig:
        given = [k for k in ("password", "password_env", "password_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of password, password_env, password_file (got {', '.join(given)})")
        if self.engine == "mysql":
            # What the PostgreSQL listener does for its sessions; the MySQL one does not.
            pg_only = [k for k in ("roles", "guardrails", "lazy_upstream") if getattr(self, k) is not None]
            if pg_only:
                raise ValueError(f"{', '.join(pg_only)}: not supported for engine mysql yet")
        return self

    def libpq_kwargs(self, application_name: str) -> dict[str, object]:
        """Connection arguments for a side connection of the proxy's own (psycopg)."""
        kwargs: dict[str, object] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.user,
            "sslmode": self.upstream_tls,
            "connect_timeout": max(1, int(self.connect_timeout_seconds)),
            "application_name": application_name,
        }
        password = self.resolve_password()
        if password is not None:
            kwargs["password"] = password
        if self.upstream_ca is not None:
            kwargs["sslrootcert"] = str(self.upstream_ca)
        return kwargs

    def resolve_password(self) -> str | None:
        """The upstream password, read at connect time so rotation needs no restart."""
        if self.password is not None:
            return self.password
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(f"environment variable {self.password_env} (password_env) is not set")
            return value
        if self.password_file is not None:
            return self.password_file.read_text().rstrip("\r\n")
        return None


PredicateMode = Literal["deny", "equality", "allow"]
_PERMISSIVE: dict[str, int] = {"deny": 0, "equality": 1, "allow": 2}


class PredicatesConfig(_Model):
    """How masked columns may be used other than as output values (``masking.predicates``,
    see docs/masking.md, "Inference").  ``deny``: never; ``equality``: point lookups
    (``col = $1``, ``col IN (...)``) and ``IS NULL`` only; ``allow``: anywhere.  Given as
    one word, it applies to everyone in every environment."""

    human: PredicateMode = "equality"
    agent: PredicateMode = "deny"
    # Per group, over the kind's mode; of several groups the most permissive wins.
    groups: dict[str, PredicateMode] = Field(default_factory=dict)
    # Environments (globs) where these modes apply; elsewhere ``allow``.  None: the
    # policy's production environments.
    environments: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_word(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"human": data, "agent": data, "environments": ["*"]}
        return data

    def mode_for(self, kind: str, groups: Iterable[str], environment: str, production: bool) -> PredicateMode:
        if self.environments is None:
            applies = production
        else:
            applies = any(fnmatch.fnmatchcase(environment, p) for p in self.environments)
        if not applies:
            return "allow"
        mode: PredicateMode = self.agent if kind == "agent" else self.human
        matched = [m for g, m in self.groups.items() if g in set(groups)]
        if matched:
            mode = max(matched, key=_PERMISSIVE.__getitem__)
        return mode


class MaskingConfig(_Model):
    enabled: bool = True
    # Members of these groups see real values (the baseline masks everyone else).
    exempt_groups: list[str] = Field(default_factory=lambda: ["pii-readers"])
    # A column whose lineage cannot be resolved, in a statement reading sensitive tables:
    # mask by value detection, or refuse the statement.
    unresolved: Literal["detect", "deny"] = "detect"
    # Strategy per data class (redact, partial, hash, null), over the built-in defaults.
    strategies: dict[str, str] = Field(default_factory=dict)
    # "schema.table.column" (globs) -> a data class, or "none" for not sensitive.
    overrides: dict[str, str] = Field(default_factory=dict)
    # How old the cached catalog of a connection may get before it is read again.
    refresh_seconds: float = Field(default=300.0, gt=0)
    # Key of the hash strategy (HMAC); generated in the state directory when absent.
    hash_key_file: Path | None = None
    # Masked columns in WHERE, ORDER BY, GROUP BY, aggregates...: see PredicatesConfig.
    predicates: PredicatesConfig = PredicatesConfig()
    # Classification from values: sample the rows of every table when the catalog is
    # read, one bounded query per table, each under a statement timeout, all within a
    # total budget (a table that fails or times out is skipped, keeping what an earlier
    # sample of it found).
    sample: bool = True
    sample_rows: int = Field(default=200, ge=1, le=100_000)
    sample_timeout_ms: int = Field(default=2000, ge=1)
    sample_budget_seconds: float = Field(default=20.0, gt=0)
    # The safety net: result columns nothing else masks whose type is text-like are
    # scanned by the validated value detectors, and what they find is masked in place.
    # production: on for connections in a production environment; always; off.
    safety_net: Literal["production", "always", "off"] = "production"


class LimitsConfig(_Model):
    max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    startup_timeout_seconds: float = Field(default=10.0, gt=0)
    max_statement_bytes: int = Field(default=1024 * 1024, ge=64)
    # A logged-in client gets its upstream connection at its first statement, not at login
    # (once the connection's server parameters are known); connections may override it.
    lazy_upstream: bool = True
    # How often every connection's upstream is probed (a TCP connect) for /readyz and the
    # log; 0 turns the probe off.
    upstream_check_seconds: float = Field(default=10.0, ge=0)
    # With workers > 1: on SIGTERM a worker stops accepting and lets its open sessions end
    # by themselves for up to this long before closing the rest (one worker closes them at
    # once, as it always did).
    drain_seconds: float = Field(default=30.0, ge=0)


class ControlPlanePostgres(_Model):
    """``control_plane.postgres``: the database every node shares (give dsn or dsn_env)."""

    dsn: str | None = None
    dsn_env: str | None = None
    schema_: str = Field(default="dbsentry_control", alias="schema", pattern=r"^[a-z_][a-z0-9_]{0,62}$")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_dsn(self) -> ControlPlanePostgres:
        if (self.dsn is None) == (self.dsn_env is None):
            raise ValueError("control_plane.postgres takes exactly one of dsn and dsn_env")
        return self

    def resolve_dsn(self) -> str:
        if self.dsn is not None:
            return self.dsn
        assert self.dsn_env is not None
        value = os.environ.get(self.dsn_env)
        if not value:
            raise ConfigError(f"environment variable {self.dsn_env} (control_plane.postgres.dsn_env) is not set")
        return value


class ControlPlaneConfig(_Model):
    """``control_plane``: what several nodes share (docs/deployment.md, "Several nodes")."""

    postgres: ControlPlanePostgres
    # Where this node's workers listen for the other nodes (forwarded cancels): worker k on
    # port + k; port 0 picks a free port per worker (registered in the control plane).
    listen: str = "127.0.0.1:0"
    # The host the other nodes reach this one at (default: listen's host).
    advertise_host: str | None = None
    # The secret that authenticates messages between nodes (HMAC-SHA256): from an
    # environment variable or a file; neither: one drawn once and kept in the control plane.
    secret_env: str | None = None
    secret_file: Path | None = None
    heartbeat_seconds: float = Field(default=1.0, gt=0, le=30)
    # A node whose last heartbeat is older than this is dead (left out, its slot reusable).
    node_ttl_seconds: float = Field(default=5.0, gt=0, le=600)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        _split_hostport(v, "control_plane.listen")
        return v

    @model_validator(mode="after")
    def _check(self) -> ControlPlaneConfig:
        if self.secret_env is not None and self.secret_file is not None:
            raise ValueError("control_plane takes at most one of secret_env and secret_file")
        if self.node_ttl_seconds < 2 * self.heartbeat_seconds:
            raise ValueError("control_plane.node_ttl_seconds must be at least twice heartbeat_seconds")
        return self

    @property
    def listen_addr(self) -> tuple[str, int]:
        return _split_hostport(self.listen, "control_plane.listen")

    def resolve_secret(self) -> bytes | None:
        """The configured inter-node secret, or None (the control plane keeps one)."""
        if self.secret_env is not None:
            value = os.environ.get(self.secret_env)
            if not value:
                raise ConfigError(f"environment variable {self.secret_env} (control_plane.secret_env) is not set")
            text = value
        elif self.secret_file is not None:
            text = self.secret_file.read_text().strip()
        else:
            return None
        if len(text) < 16:
            raise ConfigError("control_plane: the inter-node secret must be at least 16 characters")
        return text.encode()


class Config(_Model):
    state_dir: Path = Path("./.dbsentry")
    listen: ListenConfig = ListenConfig()
    tls: TLSConfig = TLSConfig()
    identity: IdentityConfig = IdentityConfig()
    connections: dict[str, ConnectionConfig] = Field(default_factory=dict)
    policy: Path | None = None
    limits: LimitsConfig = LimitsConfig()
    audit: AuditConfig = AuditConfig()
    masking: MaskingConfig = MaskingConfig()
    approvals: ApprovalsConfig = ApprovalsConfig()
    guardrails: GuardrailsConfig = GuardrailsConfig()
    web: WebConfig = WebConfig()
    mcp: McpConfig = McpConfig()  # the MCP server for AI agents (docs/mcp.md)
    # Forward without policy or audit: for measuring the proxy itself, never for real use.
    passthrough: bool = False
    # Worker processes sharing the listeners (docs/deployment.md); absent: one per CPU.
    # 1 runs everything in one process.
    workers: int | None = Field(default=None, ge=1, le=64)
    # Tokens, approvals, grants, login limits and the node registry shared by several
    # nodes in one PostgreSQL database (docs/deployment.md); absent: SQLite in state_dir.
    control_plane: ControlPlaneConfig | None = None

    def lazy_upstream(self, connection: str) -> bool:
        """Whether sessions of ``connection`` open their upstream at their first statement."""
        conn = self.connections.get(connection)
        if conn is not None and conn.lazy_upstream is not None:
            return conn.lazy_upstream
        return self.limits.lazy_upstream

    @field_validator("connections")
    @classmethod
    def _names(cls, v: dict[str, ConnectionConfig]) -> dict[str, ConnectionConfig]:
        for name in v:
            if not name or len(name) > 63:
                raise ValueError(f"connection name {name!r} must be 1 to 63 characters")
        return v


def check_environments(config: Config, declared: Iterable[str] = ()) -> None:
    """Every connection's environment is a known name or one the policy declares (its
    ``environments`` and ``production_environments``); raises ConfigError naming the key."""
    allowed = {*KNOWN_ENVIRONMENTS, *declared}
    bad = [
        f"connections.{name}.environment: unknown environment {conn.environment!r} "
        f"(known: {', '.join(sorted(allowed))}; a policy declares others with environments: [...])"
        for name, conn in config.connections.items()
        if conn.environment not in allowed
    ]
    if bad:
        raise ConfigError("\n".join(bad))


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a SIGHUP reload does with a new file (:func:`plan_reload`): the connections
    added, changed and removed (applied), and the other sections that differ (not applied:
    they take effect after a restart)."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restart_sections: tuple[str, ...] = ()

    @property
    def connections_changed(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def plan_reload(running: Config, new: Config) -> ReloadPlan:
    """Compare the running configuration with a newly read one: only ``connections`` are
    reloaded at run time, every other top-level section that differs is named."""
    old_c, new_c = running.connections, new.connections
    return ReloadPlan(
        added=tuple(sorted(n for n in new_c if n not in old_c)),
        changed=tuple(sorted(n for n in new_c if n in old_c and new_c[n] != old_c[n])),
        removed=tuple(sorted(n for n in old_c if n not in new_c)),
        restart_sections=tuple(
            name for name in Config.model_fields if name != "connections" and getattr(running, name) != getattr(new, name)
        ),
    )


def with_connections(running: Config, new: Config) -> Config:
    """The running configuration with ``new``'s connections (the rest as it is)."""
    return running.model_copy(update={"connections": dict(new.connections)})


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config and the file it came from (relative paths resolve against it)."""

    config: Config
    path: Path


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return "\n".join(lines)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    def fix(container: dict[str, Any], key: str) -> None:
        value = container.get(key)
        if isinstance(value, str) and value and not os.path.isabs(value) and "://" not in value:
            container[key] = str(base / value)

    fix(data, "state_dir")
    fix(data, "policy")
    tls = data.get("tls")
    if isinstance(tls, dict):
        fix(tls, "cert")
        fix(tls, "key")
    ident = data.get("identity")
    if isinstance(ident, dict) and isinstance(ident.get("oidc"), dict):
        fix(ident["oidc"], "jwks_file")
    audit = data.get("audit")
    if isinstance(audit, dict):
        fix(audit, "path")
        fix(audit, "signing_key")
        keys = audit.get("trusted_public_keys")
        if isinstance(keys, list):
            audit["trusted_public_keys"] = [
                str(base / k) if isinstance(k, str) and not os.path.isabs(k) else k for k in keys
            ]
        node_keys = audit.get("trusted_node_keys")
        if isinstance(node_keys, dict):
            for node in node_keys:
                fix(node_keys, node)
    cp = data.get("control_plane")
    if isinstance(cp, dict):
        fix(cp, "secret_file")
    conns = data.get("connections")
    if isinstance(conns, dict):
        for c in conns.values():
            if isinstance(c, dict):
                fix(c, "password_file")
                fix(c, "upstream_ca")


def parse_config(data: Any, base_dir: Path) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("(top level): the configuration must be a mapping")
    data = dict(data)
    _resolve_paths(data, base_dir)
    listen = data.get("listen")
    approvals = data.get("approvals")
    if isinstance(listen, dict) and isinstance(listen.get("http"), str) and (approvals is None or isinstance(approvals, dict)):
        # Approval messages link to this proxy's own console unless told otherwise.
        approvals = dict(approvals or {})
        approvals.setdefault("console_url", f"http://{listen['http']}")
        data["approvals"] = approvals
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_config(path: str | os.PathLike[str]) -> LoadedConfig:
    p = Path(path).expanduser().resolve()  # messages name the file in full
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read {p}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: not valid YAML: {err}") from None
    return LoadedConfig(parse_config(data, p.parent), p)

"""The demo directory: its lock, the upstream role and data, the configuration file and tokens.

Layout of ``<dir>`` (default ``./.dbsentry-demo``)::

    dbsentry.yaml       the proxy's configuration, rewritten on every start (ports change)
    policy.yaml         optional: your own policy, used when present
    tokens.json         the demo identities' tokens (0600), reused while valid
    upstream.password   the password of the ``shop`` role dbsentry logs in upstream with (0600)
    state/              dbsentry's state: audit trail, approvals, token hashes, TLS, keys
    postgres/           the embedded PostgreSQL cluster (see ``embedded.py``)
    reports/            compliance reports written by the tour
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
import psycopg
import yaml
from psycopg import sql

from dbsentry.config import LoadedConfig, load_config
from dbsentry.demo.dataset import Shop, load_shop, shop_is_loaded
from dbsentry.demo.embedded import EmbeddedPostgres, UpstreamAddress
from dbsentry.demo.mysql_leg import MYSQL_CONNECTION, MySQLServer, connection_config
from dbsentry.identity import TokenStore

__all__ = [
    "DEMO_IDENTITIES",
    "PROD_SHOP",
    "STAGING_SHOP",
    "DemoIdentity",
    "DemoLocked",
    "IssuedToken",
    "Upstream",
    "UpstreamAddress",
    "Workspace",
]

UPSTREAM_ROLE = "shop"
PROD_DATABASE, STAGING_DATABASE = "shop", "shop_staging"
PROD_SHOP = Shop(customers=50_000, orders=250_000)
STAGING_SHOP = Shop(customers=5_000, orders=25_000)
TOKEN_TTL_SECONDS = 30 * 86_400
# A token with less than this left is replaced rather than handed out again.
_TOKEN_MIN_REMAINING = 86_400


class DemoLocked(Exception):
    """Another ``dbsentry demo`` is using the directory (``pid``: its process, if known)."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        who = f" (pid {pid})" if pid is not None else ""
        super().__init__(f"another dbsentry demo{who} is running with {directory}")
        self.directory = directory
        self.pid = pid


@dataclass(frozen=True, slots=True)
class DemoIdentity:
    """One of the people (or agents) the demo hands a token to."""

    key: str  # analyst, dba, agent
    name: str
    groups: tuple[str, ...]
    kind: Literal["human", "agent"]
    description: str


DEMO_IDENTITIES: tuple[DemoIdentity, ...] = (
    DemoIdentity("analyst", "analyst@example.com", ("analysts",), "human", "a data analyst"),
    DemoIdentity(
        "dba",
        "dba@example.com",
        ("dba", "dbsentry-admins", "security", "pii-readers"),
        "human",
        "the DBA: sees real values, reviews requests; console admin, reviewer and auditor",
    ),
    # Nobody reviews their own request: the DBA's own schema changes need a second reviewer.
    DemoIdentity(
        "lead",
        "lead@example.com",
        ("dba",),
        "human",
        "the engineering lead: the second reviewer, who approves the DBA's own requests",
    ),
    DemoIdentity(
        "agent", "ai-agent", ("agents",), "agent", "an AI agent (read-only in production)"
    ),
)


class Upstream(Protocol):
    """Where the demo's PostgreSQL listens: :class:`EmbeddedPostgres`, or the address a
    running demo wrote in its configuration (:class:`UpstreamAddress`)."""

    def conninfo(
        self, dbname: str = "postgres", *, user: str | None = None, password: str | None = None
    ) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class IssuedToken:
    identity: DemoIdentity
    token: str
    token_id: str
    expires_at: float | None


def _write_private(path: Path, data: bytes) -> None:
    """Write ``path`` readable by its owner only, replacing it atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class Workspace:
    """Everything the demo keeps in its directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory.resolve()
        self.config_path = self.dir / "dbsentry.yaml"
        self.policy_path = self.dir / "policy.yaml"
        self.tokens_path = self.dir / "tokens.json"
        self.upstream_password_path = self.dir / "upstream.password"
        self.mysql_password_path = self.dir / "mysql-upstream.password"
        self.state_dir = self.dir / "state"
        self.reports_dir = self.dir / "reports"
        self.lock_path = self.dir / "demo.lock"
        self._lock_fd: int | None = None

    def load_running(self) -> tuple[LoadedConfig, dict[str, IssuedToken]]:
        """The configuration and tokens the demo holding this directory wrote (for a tour
        of it); raises ConfigError, OSError or ValueError when they cannot be read."""
        loaded = load_config(self.config_path)
        saved: dict[str, Any] = orjson.loads(self.tokens_path.read_bytes())
        issued: dict[str, IssuedToken] = {}
        for ident in DEMO_IDENTITIES:
            entry = saved.get(ident.name)
            if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
                raise ValueError(f"{self.tokens_path} has no token for {ident.name}")
            issued[ident.key] = IssuedToken(
                ident, entry["token"], str(entry.get("id")), entry.get("expires_at")
            )
        return loaded, issued

    def create(self) -> None:
        # Secrets inside are 0600 and dbsentry's state directory 0700.
        self.dir.mkdir(parents=True, exist_ok=True)

    # --- one demo per directory ------------------------------------------------------------

    def lock(self) -> None:
        """Take the directory's lock; raises DemoLocked if another demo holds it."""
        import fcntl

        fd = os.open(self.lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DemoLocked(self.dir, self.holder()) from None
        # Who holds it, for the message a second demo prints.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def holder(self) -> int | None:
        """The process id the lock file names (the demo that holds it), if any."""
        try:
            text = self.lock_path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    # --- upstream ------------------------------------------------------------------------

    def upstream_password(self) -> str:
        """The shop role's password, generated on first use."""
        if not self.upstream_password_path.exists():
            _write_private(self.upstream_password_path, (secrets.token_urlsafe(24) + "\n").encode())
        return self.upstream_password_path.read_text().strip()

    def upstream_connect(self, pg: Upstream, dbname: str) -> psycopg.Connection[Any]:
        """A direct connection to ``dbname`` as the shop's owner role (not autocommit)."""
        return psycopg.connect(
            **pg.conninfo(dbname, user=UPSTREAM_ROLE, password=self.upstream_password())
        )

    def ensure_data(self, pg: EmbeddedPostgres, progress: Any = None) -> list[str]:
        """The ``shop`` role and both databases, loaded unless already there; what was loaded."""
        password = self.upstream_password()
        loaded: list[str] = []
        with pg.connect() as admin:
            exists = admin.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (UPSTREAM_ROLE,)
            ).fetchone()
            verb = "ALTER" if exists else "CREATE"
            admin.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(UPSTREAM_ROLE), sql.Literal(password)
                )
            )
            for dbname, shop in ((PROD_DATABASE, PROD_SHOP), (STAGING_DATABASE, STAGING_SHOP)):
                if shop_is_loaded(admin, dbname, shop):
                    continue
                if progress is not None:
                    progress(
                        f"loading {dbname}: {shop.customers:,} customers, {shop.orders:,} orders"
                    )
                load_shop(
                    admin,
                    lambda db: self.upstream_connect(pg, db),
                    dbname,
                    UPSTREAM_ROLE,
                    shop,
                )
                loaded.append(dbname)
        return loaded

    # --- configuration -------------------------------------------------------------------

    def write_config(
        self,
        pg: EmbeddedPostgres,
        proxy_port: int,
        http_port: int,
        mysql: tuple[MySQLServer, int] | None = None,
    ) -> LoadedConfig:
        """Write ``dbsentry.yaml`` for these ports and load it; ``mysql``: the MySQL leg's
        server and the port of dbsentry's MySQL listener."""
        console = f"http://127.0.0.1:{http_port}"

        def connection(database: str, environment: str) -> dict[str, Any]:
            return {
                "host": pg.host,
                "port": pg.port,
                "database": database,
                "user": UPSTREAM_ROLE,
                "password_file": self.upstream_password_path.name,
                "environment": environment,
            }

        self.upstream_password()  # the file must exist before the config refers to it
        data: dict[str, Any] = {
            "state_dir": "state",
            "listen": {"postgres": f"127.0.0.1:{proxy_port}", "http": f"127.0.0.1:{http_port}"},
            "tls": {"require_client_tls": True},
            "connections": {
                "prod": connection(PROD_DATABASE, "production"),
                "staging": connection(STAGING_DATABASE, "staging"),
            },
            "audit": {"store": "sqlite", "durability": "sync"},
            "masking": {"enabled": True},
            "approvals": {"default_mode": "fail", "console_url": console},
        }
        if mysql is not None:
            server, mysql_port = mysql
            data["listen"]["mysql"] = f"127.0.0.1:{mysql_port}"
            data["connections"][MYSQL_CONNECTION] = connection_config(server, self.mysql_password_path)
        if self.policy_path.exists():
            data["policy"] = self.policy_path.name
        header = (
            "# Written by `dbsentry demo` on every start (the ports may change): edits are lost.\n"
            "# Put your own policy in policy.yaml next to this file to have it used.\n"
        )
        text = header + yaml.safe_dump(data, sort_keys=False)
        self.config_path.write_text(text)
        self.config_path.chmod(0o644)
        return load_config(self.config_path)

    # --- tokens --------------------------------------------------------------------------

    def ensure_tokens(self, loaded: LoadedConfig) -> dict[str, IssuedToken]:
        """A valid token for each demo identity: the saved one while it has a day left, else a new one."""
        try:
            saved: dict[str, Any] = orjson.loads(self.tokens_path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            saved = {}
        now = time.time()
        issued: dict[str, IssuedToken] = {}
        with TokenStore(loaded.config.state_dir) as store:
            for ident in DEMO_IDENTITIES:
                entry = saved.get(ident.name)
                token = entry.get("token") if isinstance(entry, dict) else None
                found = store.verify(token) if isinstance(token, str) else None
                if (
                    found is not None
                    and found.name == ident.name
                    and found.kind == ident.kind
                    and found.groups == frozenset(ident.groups)
                    and (found.expires_at is None or found.expires_at - now > _TOKEN_MIN_REMAINING)
                    and found.token_id is not None
                ):
                    assert isinstance(token, str)
                    issued[ident.key] = IssuedToken(ident, token, found.token_id, found.expires_at)
                    continue
                if found is not None and found.token_id is not None:
                    store.revoke(found.token_id)
                plaintext, info = store.create(
                    ident.name, list(ident.groups), ident.kind, TOKEN_TTL_SECONDS
                )
                issued[ident.key] = IssuedToken(ident, plaintext, info.id, info.expires_at)
        out = {
            t.identity.name: {
                "token": t.token,
                "id": t.token_id,
                "groups": list(t.identity.groups),
                "kind": t.identity.kind,
                "expires_at": t.expires_at,
            }
            for t in issued.values()
        }
        _write_private(self.tokens_path, orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
        return issued

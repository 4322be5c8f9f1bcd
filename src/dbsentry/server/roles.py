"""Least privilege upstream: warn when a production connection's role can do too much.

The parser explains, the database guarantees: a proxy that logs in as a superuser turns
every statement it misjudges into a catastrophe (catalog writes, ``COPY ... PROGRAM``,
``ALTER SYSTEM``), and ``BYPASSRLS`` walks past row-level security.  ``dbsentry
check-config`` and the start of ``dbsentry serve`` look up the roles each production
connection uses (its ``user`` and the roles of ``roles``) and say so, loudly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import psycopg

from dbsentry.config import Config, ConfigError, ConnectionConfig

log = logging.getLogger("dbsentry")

ROLES_SQL = """
SELECT r.rolname::text, r.rolsuper, r.rolbypassrls
FROM pg_catalog.pg_roles r
WHERE r.rolname = current_user OR r.rolname = ANY(%s)
ORDER BY 1
"""
LEAST_PRIVILEGE_DOC = "docs/security.md (\"A least-privilege upstream role\")"


def role_warnings(name: str, conn: ConnectionConfig, rows: Iterable[tuple[str, bool, bool]]) -> list[str]:
    """What is wrong with the roles of connection ``name`` (rows of :data:`ROLES_SQL`)."""
    out = []
    mapped = set(conn.roles.all_roles()) if conn.roles is not None else set()
    for role, superuser, bypassrls in rows:
        powers = [p for p, has in (("a superuser", superuser), ("BYPASSRLS", bypassrls)) if has]
        if not powers:
            continue
        how = f"maps identities to role {role}" if role in mapped else f"logs in upstream as {role}"
        out.append(
            f"production connection {name!r} {how}, which is {' and has '.join(powers)}: a statement the proxy "
            f"misjudges would run with those powers; use a least-privilege role ({LEAST_PRIVILEGE_DOC})"
        )
    return out


async def check_connection(name: str, conn: ConnectionConfig) -> list[str]:
    """Warnings for one connection; raises ``psycopg.Error``/``OSError``/``ConfigError``
    when its upstream cannot be asked."""
    roles = conn.roles.all_roles() if conn.roles is not None else []
    kwargs = conn.libpq_kwargs("dbsentry-check")
    async with await psycopg.AsyncConnection.connect(autocommit=True, **kwargs) as aconn:  # type: ignore[arg-type]
        cur = await aconn.execute(ROLES_SQL, (roles,))
        rows = await cur.fetchall()
    return role_warnings(name, conn, [(str(r[0]), bool(r[1]), bool(r[2])) for r in rows])


async def check_production_roles(config: Config, production: Iterable[str]) -> list[tuple[str, str]]:
    """``(level, message)`` for every production connection: warnings, or why it could not
    be checked."""
    envs = set(production)
    names = [n for n, c in config.connections.items() if c.environment in envs and c.engine == "postgres"]
    results = await asyncio.gather(
        *(check_connection(n, config.connections[n]) for n in names), return_exceptions=True
    )
    out: list[tuple[str, str]] = []
    for name, result in zip(names, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, (psycopg.Error, OSError, ConfigError)):
                raise result
            reason = str(result).strip().splitlines()[0] if str(result).strip() else type(result).__name__
            out.append(("note", f"could not check the upstream role of connection {name!r}: {reason}"))
        else:
            out.extend(("warning", w) for w in result)
    return out


async def log_production_roles(config: Config, production: Iterable[str]) -> None:
    """At start-up: the same checks, in the log."""
    for level, message in await check_production_roles(config, production):
        log.log(logging.WARNING if level == "warning" else logging.INFO, message, extra={"fields": {"check": "upstream-role"}})

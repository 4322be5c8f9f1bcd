"""What ``dbsentry demo`` prints once it serves: how to connect, and things to try.

Every command it prints runs as printed, in another terminal, from any directory, right
after the README's quickstart (which installs into ``.venv`` without activating it): the
``dbsentry`` command and every path are absolute, unless ``dbsentry`` on PATH is this very
installation.  ``tests/e2e/test_demo_instructions.py`` follows them all, verbatim.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dbsentry.config import LoadedConfig
from dbsentry.demo.mysql_leg import MYSQL_CONNECTION, mysql_command
from dbsentry.demo.output import Printer
from dbsentry.demo.workspace import (
    PROD_DATABASE,
    STAGING_DATABASE,
    IssuedToken,
    Workspace,
)

__all__ = [
    "AGENT_TRIES",
    "ANALYST_TRIES",
    "DBA_TRIES",
    "HOST",
    "Try",
    "dbsentry_command",
    "path_arg",
    "print_banner",
    "psql_command",
]

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class Try:
    """A statement to paste into psql, and what it shows."""

    sql: str
    note: str


AGENT_TRIES: tuple[Try, ...] = (
    Try("SELECT full_name, email, ssn, card_number, iban FROM customers LIMIT 5;", "masked"),
    Try("SELECT * FROM customer_contacts LIMIT 3;", "masked through the view"),
    Try("SELECT customer_email(42);", "masked through the function"),
    Try("SELECT id, date_of_birth, created_at FROM customers LIMIT 3;", "dates of birth masked"),
    Try("DROP TABLE orders;", "blocked (42501): agents are read-only"),
)
ANALYST_TRIES: tuple[Try, ...] = (
    Try(
        "ALTER TABLE customers ADD COLUMN IF NOT EXISTS segment text;",
        "refused: names an approval request",
    ),
    Try("DELETE FROM orders WHERE 1=1;", "blocked: unbounded write in production"),
)
DBA_TRIES: tuple[Try, ...] = (
    Try("SELECT full_name, email, ssn FROM customers LIMIT 3;", "real values (pii-readers)"),
    Try(
        "CREATE INDEX IF NOT EXISTS customers_city_idx ON customers (city);",
        "refused: your own request, for lead@example.com to review",
    ),
)


def path_arg(path: Path) -> str:
    """``path`` in full, quoted for a shell when it needs to be."""
    return shlex.quote(str(path.absolute()))


def dbsentry_command() -> str:
    """How another shell runs this dbsentry: ``dbsentry`` when PATH finds this very
    installation (an activated virtualenv), else the full path of its script, else
    ``python -m dbsentry`` with this Python."""
    script = Path(sys.executable).parent / "dbsentry"
    if script.is_file():
        found = shutil.which("dbsentry")
        if found is not None and Path(found).resolve() == script.resolve():
            return "dbsentry"
        return path_arg(script)
    return f"{path_arg(Path(sys.executable))} -m dbsentry"


def psql_command(port: int, dbname: str, issued: IssuedToken, options: str | None = None) -> str:
    extra = f" options='{options}'" if options else ""
    return (
        f'psql "host={HOST} port={port} dbname={dbname} user={issued.identity.name} '
        f'password={issued.token} sslmode=require{extra}"'
    )


def _tries(out: Printer, tries: Sequence[Try]) -> None:
    width = max(len(t.sql) for t in tries)
    for t in tries:
        out.line(f"    {t.sql.ljust(width)}  -- {t.note}")


def print_banner(
    out: Printer,
    ws: Workspace,
    upstream: str,
    loaded: LoadedConfig,
    tokens: dict[str, IssuedToken],
    setup_seconds: float,
) -> None:
    """The banner of a running demo; ``upstream`` describes the embedded PostgreSQL."""
    config = loaded.config
    proxy_host, proxy_port = config.listen.postgres_addr
    console = f"http://{config.listen.http}/"
    cmd = dbsentry_command()
    cfg = path_arg(ws.config_path)
    dba, lead = tokens["dba"].token, tokens["lead"].token
    out.line()
    out.line(out.bold(f"dbsentry demo is running (ready in {setup_seconds:.1f}s)"))
    out.line(f"  proxy     {proxy_host}:{proxy_port}  (PostgreSQL protocol, TLS required)")
    out.line(f"  console   {console}")
    out.line(
        f"  upstream  {upstream}: connection prod -> database {PROD_DATABASE} (production), "
        f"staging -> {STAGING_DATABASE} (staging)"
    )
    out.line(f"  config    {ws.config_path}")
    out.line()
    out.line(out.bold("Connect with psql as one of the demo identities (in another terminal):"))
    for issued in tokens.values():
        ident = issued.identity
        groups = ", ".join(ident.groups)
        out.line(f"  {out.cyan(ident.name)}  {ident.kind}, groups {groups}: {ident.description}")
        out.line(f"    {psql_command(proxy_port, 'prod', issued)}")
    out.line(f"  (dbname=staging reaches the staging copy; tokens are kept in {ws.tokens_path})")
    mysql_addr = config.listen.mysql_addr
    if mysql_addr is not None and MYSQL_CONNECTION in config.connections:
        mysql_conn = config.connections[MYSQL_CONNECTION]
        out.line()
        out.line(
            out.bold("MySQL:") + f" the shop on {mysql_conn.host}:{mysql_conn.port} (database "
            f"{mysql_conn.database}, production) behind dbsentry's MySQL listener {mysql_addr[0]}:{mysql_addr[1]}:"
        )
        for key in ("agent", "analyst"):
            issued = tokens[key]
            out.line(f"  {out.cyan(issued.identity.name)}")
            out.line(f"    {mysql_command(mysql_addr[0], mysql_addr[1], issued.identity.name, issued.token)}")
        out.line("  then, as the agent: SELECT full_name, email, ssn FROM customers LIMIT 3;  -- masked")
        out.line("                      DROP TABLE orders;                                 -- blocked")
    if shutil.which("psql") is None:
        out.line(
            "  psql is not installed here: install it (Debian and Ubuntu: apt-get install "
            "postgresql-client; macOS: brew install libpq), or give any PostgreSQL client "
            "these settings."
        )
    out.line()
    out.line(out.bold("Console:") + f" {console}  sign in with the DBA's token:")
    out.line(f"    {dba}")
    out.line()
    out.line(out.bold("Things to try") + " (paste the SQL into psql as the identity named):")
    out.line("  as ai-agent (personal data masked, read-only in production):")
    _tries(out, AGENT_TRIES)
    out.line("  as analyst@example.com (schema changes in production need a DBA's approval):")
    _tries(out, ANALYST_TRIES)
    out.line("  then the DBA approves the request, here or with Approve in the console:")
    out.line(f"    {cmd} approvals list -c {cfg}")
    out.line(f"    {cmd} approvals approve <request id> -c {cfg} --token {dba}")
    out.line("  and the analyst sends the ALTER TABLE again: it runs, once.")
    out.line("  as dba@example.com (sees real values; cannot approve their own requests):")
    _tries(out, DBA_TRIES)
    out.line("  then the second reviewer, the lead, approves it, and the DBA sends it again:")
    out.line(f"    {cmd} approvals approve <request id> -c {cfg} --token {lead}")
    out.line("  to wait for the approval instead of failing, connect like this and send the")
    out.line("  statement; it runs as soon as a reviewer approves it:")
    wait = psql_command(proxy_port, "prod", tokens["analyst"], "-c dbsentry.approval=wait")
    out.line(f"    {wait}")
    out.line("  the audit trail, and a compliance report:")
    out.line(f"    {cmd} audit tail -c {cfg}")
    out.line(f"    {cmd} audit verify -c {cfg}")
    out.line(f"    {cmd} report -c {cfg}")
    out.line()
    out.line("A scripted tour of all this, against this running demo:")
    out.line(f"    {cmd} demo --tour --dir {path_arg(ws.dir)}")
    out.line(out.bold("Press Ctrl-C to stop."))

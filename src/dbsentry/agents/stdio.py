"""``dbsentry mcp``: the MCP server on standard input and output, for a local agent.

The agent's token comes from ``DBSENTRY_TOKEN`` or ``--token-file``; it is checked at start
(a bad one ends the process with a message and status 2) and again before every call.
The tools connect to the proxy that ``-c`` configures; this process also reads the
connection's catalog for the data classes ``list_tables`` shows (as the proxy does).
"""

from __future__ import annotations

import logging
import sys

import anyio

from dbsentry.agents.errors import ToolRefused
from dbsentry.agents.local import lazy_approval_store, proxy_address
from dbsentry.agents.runs import new_run_id
from dbsentry.agents.server import build_server
from dbsentry.agents.tools import Agent, Tools
from dbsentry.agents.wire import Wire
from dbsentry.config import LoadedConfig

log = logging.getLogger("dbsentry.agents")


class TokenRefused(Exception):
    pass


def check_token(authenticator: object, token: str, allow_humans: bool) -> Agent:
    """The agent ``token`` proves, or TokenRefused with the message to print."""
    from dbsentry.identity import Authenticator, LoginThrottled

    assert isinstance(authenticator, Authenticator)
    try:
        identity = authenticator.authenticate_token(token, "mcp-stdio")
    except LoginThrottled as err:
        raise TokenRefused(err.message) from None
    if identity is None:
        raise TokenRefused("the token is invalid, expired or revoked")
    if identity.kind != "agent" and not allow_humans:
        raise TokenRefused(
            f"{identity.name} is a person, not an agent: give the MCP server an agent's token "
            "(dbsentry token create --agent ...), or set mcp.allow_humans"
        )
    return Agent(identity, token)


def run_stdio(loaded: LoadedConfig, token: str) -> int:
    """Serve MCP on stdin/stdout until the client closes; the exit status."""
    from dbsentry.engines.postgres.session.governance import Governor
    from dbsentry.engines.postgres.session.masking import MaskingService, load_or_create_key
    from dbsentry.identity import Authenticator
    from dbsentry.masking.derived import DerivedClassFile
    from dbsentry.policy import PolicyError
    from dbsentry.server.catalogs import CatalogLoader

    config = loaded.config
    authenticator = Authenticator(config)
    try:
        agent = check_token(authenticator, token, config.mcp.allow_humans)
    except TokenRefused as err:
        print(f"dbsentry mcp: {err}", file=sys.stderr)
        authenticator.close()
        return 2
    try:
        governor = Governor.from_path(config.policy)
    except PolicyError as err:
        print(f"dbsentry mcp: invalid policy: {err}", file=sys.stderr)
        return 2
    approvals, close_approvals = lazy_approval_store(config)
    key_path = config.masking.hash_key_file or config.state_dir / "masking.key"
    derived = DerivedClassFile(config.state_dir / "masking-derived-classes.json")
    service = MaskingService(config.masking, load_or_create_key(key_path), derived.load(), lambda _: None)
    catalogs = CatalogLoader(config, service)

    async def views(name: str) -> object:
        if not config.masking.enabled:
            return None
        try:
            await catalogs.ensure(name)
        except Exception as err:  # the tools still work; list_tables says the classes are unknown
            log.warning("MCP: catalog of %s not read: %s", name, err)
        return service.current(name)

    from dbsentry.agents.auditref import AuditLookup
    from dbsentry.audit import open_store
    from dbsentry.audit.index import catch_up_all

    log_dir = config.audit.log_path(config.state_dir)
    audit = AuditLookup(lambda: open_store(config.audit, config.state_dir), lambda store: catch_up_all(store, log_dir))
    wire = Wire(proxy_address(config))
    tools = Tools(config, wire, governor=governor, approvals=approvals, views=views, audit=audit)  # type: ignore[arg-type]
    run_id = new_run_id()

    async def agent_of(ctx: object) -> Agent:
        # A token revoked or expired while the agent runs stops it at its next call.
        try:
            return await anyio.to_thread.run_sync(check_token, authenticator, token, config.mcp.allow_humans)
        except TokenRefused as err:
            raise ToolRefused(str(err)) from None

    srv = build_server(tools, agent_of, lambda: run_id)

    async def main() -> None:
        try:
            await srv.run_stdio_async()
        finally:
            await wire.close()

    log.info("dbsentry mcp (stdio) for %s, run %s", agent.identity.name, run_id)
    try:
        anyio.run(main)
    finally:
        audit.close()
        tools.waits.close()
        close_approvals()
        authenticator.close()
    return 0

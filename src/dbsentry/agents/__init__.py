"""The MCP server for AI agents: governed database tools with the agent's own identity.

Every tool that touches the database connects to dbsentry's own PostgreSQL listener as the
agent, with the agent's token, so guardrails, masking, approvals, just-in-time grants and
the audit are exactly those of a psql session (docs/mcp.md).  This package is named
``agents`` so that it never shadows the ``mcp`` SDK it is built on.

Kept free of imports: ``dbsentry.config`` reads :mod:`dbsentry.agents.settings`.
"""

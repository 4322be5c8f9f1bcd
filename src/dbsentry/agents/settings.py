"""The ``mcp:`` section of the configuration (docs/mcp.md, "Configuration")."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class McpLimits(BaseModel):
    """Caps for one connection or identity; unset fields leave the others' in force."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_rows: int | None = Field(default=None, ge=1, description="rows one tool call returns")
    max_bytes: int | None = Field(default=None, ge=1024, description="bytes of values one tool call returns")
    statement_timeout_seconds: float | None = Field(default=None, gt=0, le=3600)
    rate_per_minute: int | None = Field(default=None, ge=1, description="tool calls per agent per minute")


class McpConfig(_Model):
    """The MCP server: limits the model cannot override, and the HTTP endpoint.

    Caps combine by taking the strictest: the global value, the connection's
    (``connections``) and every identity pattern that matches (``identities``, globs); a
    tool's ``max_rows`` argument may lower the result only further.
    """

    http: bool = True  # serve streamable HTTP at /mcp on listen.http
    # People's tokens are refused: an AI agent acting with a person's token would get the
    # person's rights (agents are read-only in production by the baseline).
    allow_humans: bool = False
    max_rows: int = Field(default=500, ge=1)
    max_bytes: int = Field(default=1024 * 1024, ge=1024)
    statement_timeout_seconds: float = Field(default=15.0, gt=0, le=3600)
    rate_per_minute: int = Field(default=120, ge=1)
    max_sql_bytes: int = Field(default=32 * 1024, ge=64, le=1024 * 1024)
    # How long request_approval / approval_status hold a call open for a reviewer's decision
    # when the client asked for progress notifications (0: never; the agent polls).
    approval_wait_seconds: float = Field(default=300.0, ge=0, le=3600)
    connections: dict[str, McpLimits] = Field(default_factory=dict)
    identities: dict[str, McpLimits] = Field(default_factory=dict)
    # The address the tools connect to; default: listen.postgres (0.0.0.0 -> 127.0.0.1).
    proxy_host: str | None = None
    proxy_port: int | None = Field(default=None, ge=1, le=65535)

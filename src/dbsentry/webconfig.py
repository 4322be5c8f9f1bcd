"""The ``web:`` section of the configuration file: who may use the console and the API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["admin", "reviewer", "auditor"]
ROLES: tuple[Role, ...] = ("admin", "reviewer", "auditor")


def _default_roles() -> dict[Role, list[str]]:
    return {"admin": ["dbsentry-admins"], "reviewer": ["dba"], "auditor": ["security"]}


class WebConfig(BaseModel):
    """Roles come from identity groups: a member of any listed group has the role.

    ``admin`` manages tokens and sees everything; ``reviewer`` approves or denies requests;
    ``auditor`` reads the audit trail, data access and the policy.  An identity with none
    of the roles gets 403 on every API call.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    roles: dict[Role, list[str]] = Field(default_factory=_default_roles)
    # The address people reach the console at (links in notifications, OIDC redirects).
    public_url: str | None = None
    # How often the live feed polls the audit store for new records.
    stream_poll_seconds: float = Field(default=0.5, ge=0.1, le=10.0)
    # The most statement records a data-access summary reads; beyond it the result says so.
    summary_max_statements: int = Field(default=100_000, ge=100)
    # Agents (identity kind "agent") may read through the API but never review requests or
    # manage tokens, whatever their groups say.
    agents_may_review: bool = False
    # Host header values the console answers to ("name" or "name:port"; "*" for any).  None:
    # IP addresses, localhost and the host of public_url only, so a DNS name pointed at the
    # listener (DNS rebinding) gets 400.
    allowed_hosts: list[str] | None = None
    # The largest request body; routes that take policy texts or SQL allow more.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=64 * 1024 * 1024)
    # A client must send its request headers within this many seconds of connecting (or of
    # its previous response), and a body within body_timeout_seconds.
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        out = [h.strip().lower().rstrip(".") for h in v]
        if not all(out) or any("/" in h or " " in h for h in out):
            raise ValueError("web.allowed_hosts: give host names or addresses, like dbsentry.example.com")
        return out

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("web.public_url must start with http:// or https://")
        return v.rstrip("/") if v is not None else None

    def roles_for(self, groups: frozenset[str]) -> frozenset[Role]:
        return frozenset(role for role, names in self.roles.items() if groups.intersection(names))

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

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("web.public_url must start with http:// or https://")
        return v.rstrip("/") if v is not None else None

    def roles_for(self, groups: frozenset[str]) -> frozenset[Role]:
        return frozenset(role for role, names in self.roles.items() if groups.intersection(names))

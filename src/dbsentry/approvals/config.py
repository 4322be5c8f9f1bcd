"""The ``approvals:`` section of the configuration file."""

from __future__ import annotations

import fnmatch
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Mode = Literal["fail", "wait"]
Event = Literal["requested", "approved", "denied", "expired"]
ALL_EVENTS: tuple[Event, ...] = ("requested", "approved", "denied", "expired")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _glob_match(patterns: list[str], value: str) -> bool:
    folded = value.casefold()
    return any(fnmatch.fnmatchcase(folded, p.casefold()) for p in patterns)


class WebhookConfig(_Model):
    """Where to announce approval events.  ``generic`` posts signed JSON, ``slack`` a message."""

    url: str
    secret: str | None = None
    secret_env: str | None = None
    format: Literal["generic", "slack"] = "generic"
    events: list[Event] = Field(default_factory=lambda: list(ALL_EVENTS))
    # Only requests that these groups may approve (None: every request).  Routes each team's
    # requests to its own channel.
    approver_groups: list[str] | None = None
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    retries: int = Field(default=3, ge=0, le=10)

    @model_validator(mode="after")
    def _check(self) -> WebhookConfig:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError("approvals.webhooks.url must be an http:// or https:// URL")
        if self.secret is not None and self.secret_env is not None:
            raise ValueError("give at most one of secret and secret_env")
        if self.format == "generic" and self.secret is None and self.secret_env is None:
            raise ValueError("a generic webhook needs secret or secret_env (its posts are signed)")
        return self

    def resolve_secret(self) -> str | None:
        if self.secret is not None:
            return self.secret
        if self.secret_env is not None:
            value = os.environ.get(self.secret_env)
            if not value:
                raise ValueError(
                    f"environment variable {self.secret_env} (approvals.webhooks.secret_env) is not set"
                )
            return value
        return None


class ModeOverride(_Model):
    """Fail or wait for some connections and/or identities (globs; an empty list matches all)."""

    connections: list[str] = Field(default_factory=list)
    identities: list[str] = Field(default_factory=list)
    mode: Mode

    def matches(self, identity: str, connection: str) -> bool:
        return (not self.connections or _glob_match(self.connections, connection)) and (
            not self.identities or _glob_match(self.identities, identity)
        )


class AccessRoute(_Model):
    """Who reviews just-in-time access to some groups and/or connections (globs)."""

    groups: list[str] = Field(default_factory=list)
    connections: list[str] = Field(default_factory=list)
    approvers: list[str] = Field(min_length=1)
    min_approvals: int = Field(default=1, ge=1, le=10)

    def matches(self, group: str | None, connection: str | None) -> bool:
        if group is not None:
            return bool(self.groups) and _glob_match(self.groups, group)
        if connection is not None:
            return bool(self.connections) and _glob_match(self.connections, connection)
        return False


class AccessConfig(_Model):
    """Just-in-time access requests (``dbsentry access request``)."""

    enabled: bool = True
    approvers: list[str] = Field(default_factory=lambda: ["dba"], min_length=1)
    min_approvals: int = Field(default=1, ge=1, le=10)
    max_duration_seconds: int = Field(default=8 * 3600, ge=60)
    routes: list[AccessRoute] = Field(default_factory=list)

    def route(self, group: str | None, connection: str | None) -> tuple[tuple[str, ...], int]:
        """(approver groups, min approvals) for a request: the first matching route, else the defaults."""
        for r in self.routes:
            if r.matches(group, connection):
                return tuple(r.approvers), r.min_approvals
        return tuple(self.approvers), self.min_approvals


class ApprovalsConfig(_Model):
    """Approvals of risky statements and just-in-time access."""

    # fail: the statement is refused with the request id; re-sent once approved, it runs.
    # wait: the statement is held until it is approved, denied or wait_timeout_seconds pass.
    default_mode: Mode = "fail"
    wait_timeout_seconds: int = Field(default=600, ge=1, le=86_400)
    # How long an approval stays usable; a statement approval is used at most once.
    approval_validity_seconds: int = Field(default=3600, ge=10)
    # How long a request waits for review before it expires.
    request_ttl_seconds: int = Field(default=3600, ge=10)
    console_url: str = "http://127.0.0.1:8080"
    # Reviewers when a require_approval rule names no approvers.
    default_approvers: list[str] = Field(default_factory=lambda: ["dba"], min_length=1)
    # How often a waiting node looks for decisions made elsewhere.
    poll_interval_seconds: float = Field(default=0.5, gt=0, le=30)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    modes: list[ModeOverride] = Field(default_factory=list)
    access: AccessConfig = AccessConfig()

    @model_validator(mode="after")
    def _check(self) -> ApprovalsConfig:
        if not self.console_url.startswith(("http://", "https://")):
            raise ValueError("approvals.console_url must be an http:// or https:// URL")
        return self

    def mode_for(self, identity: str, connection: str, client_choice: str | None = None) -> Mode:
        """How a statement needing approval is handled for this client.

        The client's own ``dbsentry.approval`` setting wins (either mode is safe: neither runs
        the statement unapproved), then the first matching ``modes`` entry, then ``default_mode``.
        """
        if client_choice in ("fail", "wait"):
            return "wait" if client_choice == "wait" else "fail"
        for m in self.modes:
            if m.matches(identity, connection):
                return m.mode
        return self.default_mode

    def console_link(self, request_id: str) -> str:
        return f"{self.console_url.rstrip('/')}/approvals/{request_id}"

"""Who is connected: the identity a token or an OIDC JWT proved."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["human", "agent"]


@dataclass(frozen=True, slots=True)
class Identity:
    """A person or a named AI agent, as proved by a dbsentry token or an OIDC JWT."""

    name: str
    groups: frozenset[str]
    kind: Kind
    token_id: str  # dbsentry token id, or "oidc:<jti or sub>"
    source: Literal["token", "oidc"]
    expires_at: float | None = None  # unix time

    @property
    def is_agent(self) -> bool:
        return self.kind == "agent"

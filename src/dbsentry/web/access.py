"""Who may do what over HTTP: one table of capabilities, one check, one dependency.

Every route declares the one capability it needs with ``Depends(require(Capability.X))``.
The request gate (``gate.py``) reads that declaration and runs :func:`refusal` before the
body is read; the dependency runs the same check again when the handler is called.  A
route under ``/api/`` without a declaration is refused to everyone.

The table (docs/console.md, "Who may do what", is its documentation and a test compares
the two route by route):

============  =========  ===========  =========================  ==========================
capability    anonymous  signed in,   people with a role          agents with a role
                         no role
============  =========  ===========  =========================  ==========================
public        yes        yes          yes                         yes
signed-in     no         yes          yes                         yes
read          no         no           admin, reviewer, auditor    admin, reviewer, auditor
audit         no         no           admin, auditor              admin, auditor
review        no         no           admin, reviewer             only with agents_may_review
tokens        no         no           admin                       never
============  =========  ===========  =========================  ==========================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from starlette.requests import Request
from starlette.types import Scope

from dbsentry.web.auth import AuthError, Principal
from dbsentry.webconfig import Role, WebConfig


class Capability(StrEnum):
    PUBLIC = "public"
    SIGNED_IN = "signed-in"
    READ = "read"
    AUDIT = "audit"
    REVIEW = "review"
    TOKENS = "tokens"


#: The roles that grant each capability (to people; agents see AGENTS_NEVER below).
GRANTED_BY: dict[Capability, frozenset[Role]] = {
    Capability.READ: frozenset({"admin", "reviewer", "auditor"}),
    Capability.AUDIT: frozenset({"admin", "auditor"}),
    Capability.REVIEW: frozenset({"admin", "reviewer"}),
    Capability.TOKENS: frozenset({"admin"}),
}

#: What agents never do, whatever their groups (review: unless ``web.agents_may_review``).
AGENTS_NEVER = frozenset({Capability.TOKENS, Capability.REVIEW})


def refusal(who: Principal | None, capability: Capability, web: WebConfig) -> AuthError | None:
    """Why ``who`` (None: not signed in) may not use ``capability``; None if it may."""
    if capability is Capability.PUBLIC:
        return None
    if who is None:
        return AuthError(401, "send Authorization: Bearer <dbsentry token or OIDC JWT>")
    if capability is Capability.SIGNED_IN:
        return None
    agent_may = capability is Capability.REVIEW and web.agents_may_review
    if who.identity.is_agent and capability in AGENTS_NEVER and not agent_may:
        return AuthError(403, f"agents never have the capability {capability.value!r}")
    roles = GRANTED_BY[capability]
    if not who.has(roles):
        return AuthError(
            403, f"{capability.value!r} needs the role {' or '.join(sorted(roles))}"
        )
    return None


@dataclass(frozen=True, slots=True)
class Require:
    """The dependency a route declares its capability with; also its body limit.

    ``max_body``: the largest request body the route takes, above ``web.max_body_bytes``.
    """

    capability: Capability
    max_body: int | None = None

    def __call__(self, request: Request) -> Principal | None:
        # The gate has already decided (and cached the caller); this is the same check,
        # for a route reached some other way.
        admit: Callable[[Scope, Require], Principal | None] = (
            request.app.state.web_services.admit
        )
        return admit(request.scope, self)


def require(capability: Capability, *, max_body: int | None = None) -> Require:
    return Require(capability, max_body)


__all__ = ["AGENTS_NEVER", "GRANTED_BY", "Capability", "Require", "refusal", "require"]

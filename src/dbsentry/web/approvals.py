"""A tolerant view of the approvals store: the console works with what the store offers.

Give it the approvals service (``dbsentry.approvals.Approvals``: reviews through it are
audited and announced, reads go to its ``store``) or a bare store.  Method names are looked
up rather than assumed -- ``list``, ``get``, ``review`` (or ``approve``/``deny``), ``grants``
-- and whatever is missing is reported as unavailable, so the console hides it.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any

from dbsentry.identity.model import Identity


class ApprovalsUnavailable(Exception):
    """The approvals store is not configured or does not offer this operation."""


class ReviewRefused(Exception):
    """The store refused the review (not pending, self-approval, not an approver ...)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def to_jsonable(value: Any) -> Any:
    """Records of any shape (dataclass, pydantic model, mapping, to_dict()) as JSON values."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_jsonable(to_dict())
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return to_jsonable(dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [to_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _method(obj: Any, *names: str) -> Callable[..., Any] | None:
    for name in names:
        m = getattr(obj, name, None)
        if callable(m):
            return m  # type: ignore[no-any-return]
    return None


def _call(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Call ``fn`` with those of ``kwargs`` it accepts (all of them if it takes **kwargs)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(**kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params and v is not None})


def _wants_identity(fn: Callable[..., Any], name: str) -> bool:
    try:
        param = inspect.signature(fn).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return param is not None and "Identity" in str(param.annotation)


def _first_param(fn: Callable[..., Any]) -> str | None:
    try:
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                return p.name
    except (TypeError, ValueError):
        pass
    return None


def _items(result: Any) -> list[dict[str, Any]]:
    out = []
    for item in result or ():
        value = to_jsonable(item)
        out.append(value if isinstance(value, dict) else {"value": value})
    return out


_REFUSALS = (ValueError, PermissionError, KeyError, LookupError)


def _is_refusal(err: Exception) -> bool:
    return isinstance(err, _REFUSALS) or type(err).__name__ == "ReviewRefused"


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class Approvals:
    """The approvals store seen through the operations the console needs."""

    def __init__(self, service: Any | None, clock: Callable[[], float] | None = None) -> None:
        self.service = service
        # The service keeps its store at .store; reads go there, reviews through the service.
        inner = getattr(service, "store", None)
        self.store = inner if inner is not None and _method(inner, "list") else service
        self._clock = clock

    def _need(self, *names: str) -> Callable[..., Any]:
        fn = None if self.store is None else _method(self.store, *names)
        if fn is None:
            raise ApprovalsUnavailable(
                "approvals are not available"
                if self.store is None
                else f"the approvals store has no {names[0]}()"
            )
        return fn

    @property
    def available(self) -> bool:
        return self.store is not None and _method(self.store, "list", "list_requests") is not None

    @property
    def can_review(self) -> bool:
        return self.service is not None and (
            _method(self.service, "review") is not None
            or _method(self.service, "approve") is not None
        )

    @property
    def has_access_requests(self) -> bool:
        if self.store is None:
            return False
        if _method(self.store, "list_access_requests", "access_requests") is not None:
            return True
        fn = _method(self.store, "list")
        return fn is not None and _accepts(fn, "kind")

    def _list(self, kind: str, status: str | None, limit: int) -> list[dict[str, Any]]:
        fn = self._need("list", "list_requests")
        if _accepts(fn, "kind"):
            return _items(_call(fn, status=status, kind=kind, limit=limit))[:limit]
        items = _items(_call(fn, status=status, limit=limit))
        return [i for i in items if i.get("kind", "statement") == kind][:limit]

    def requests(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Statement approval requests, newest first."""
        return self._list("statement", status, limit)

    def get(self, approval_id: str) -> dict[str, Any] | None:
        fn = self._need("get", "get_request")
        found = fn(approval_id)
        if found is None:
            return None
        value = to_jsonable(found)
        return value if isinstance(value, dict) else {"value": value}

    def review(
        self, approval_id: str, reviewer: Identity, approve: bool, comment: str | None
    ) -> dict[str, Any] | None:
        """Approve or deny; raises ReviewRefused with the store's reason when it refuses."""
        target = self.service
        single = _method(target, "approve" if approve else "deny") if target is not None else None
        fn = single if single is not None else (_method(target, "review") if target else None)
        if fn is None:
            raise ApprovalsUnavailable("approvals cannot be reviewed here")
        who: Any = reviewer if _wants_identity(fn, "reviewer") else reviewer.name
        kwargs: dict[str, Any] = {"reviewer": who, "comment": comment, "reason": comment}
        if single is None:
            kwargs.update(
                approve=approve, approved=approve, decision="approve" if approve else "deny"
            )
        first = _first_param(fn)
        key = first if first in ("approval_id", "request_id", "id") else "approval_id"
        try:
            result = _call(fn, **{key: approval_id}, **kwargs)
        except Exception as err:
            if _is_refusal(err):
                code = getattr(err, "code", None)
                raise ReviewRefused(str(err) or type(err).__name__, code) from err
            raise
        value = to_jsonable(result)
        if isinstance(value, dict) and isinstance(value.get("request"), dict):
            # a Reviewed result: the request after the review, and what the review did
            return {**value["request"], "review_event": value.get("event")}
        return value if isinstance(value, dict) else None

    def pending_count(self) -> int | None:
        if self.store is None:
            return None
        fn = _method(self.store, "pending_count", "count_pending")
        if fn is not None:
            return int(fn())
        if not self.available:
            return None
        fn = self._need("list", "list_requests")
        return len(_items(_call(fn, status="pending", limit=10_000)))

    def access_requests(self, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """Requests for temporary access (group membership or a connection), newest first."""
        fn = (
            None
            if self.store is None
            else _method(self.store, "list_access_requests", "access_requests")
        )
        if fn is not None:
            return _items(_call(fn, status=status, limit=limit))[:limit]
        if not self.has_access_requests:
            raise ApprovalsUnavailable("access requests are not available")
        return self._list("access", status, limit)

    def grants(self, active: bool = True, limit: int = 200) -> list[dict[str, Any]]:
        """Grants from approved access requests; ``active`` only those in force now."""
        fn = self._need("list_grants", "grants")
        now = (self._clock or time.time)() if active else None
        return _items(_call(fn, active=active, active_at=now, limit=limit))[:limit]

    @property
    def has_grants(self) -> bool:
        return self.store is not None and _method(self.store, "list_grants", "grants") is not None

"""What a proxy node does with approvals: the hooks its sessions call.

:class:`Approvals` joins the store, the configuration, notifications and the audit trail.
Its blocking methods (``statement_gate``, ``consume_all``, ``withdraw``, ``review``,
``load_grants``, ``expire_due``) touch the database: call them in a thread executor.
``watch`` and ``effective_identity`` never block.  One background thread (``start``) polls
the store's change counter for the requests sessions wait on and the grants of connected
identities, and expires overdue requests.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from dbsentry.approvals.audit import AuditEvent, approval_record
from dbsentry.approvals.config import ApprovalsConfig, Event
from dbsentry.approvals.model import (
    ApprovalRequest,
    FactsSummary,
    Grant,
    Reviewed,
    granted_connections,
    statement_request,
    summarize_facts,
    with_grants,
)
from dbsentry.approvals.notify import Notifier
from dbsentry.approvals.store import ApprovalStore
from dbsentry.audit.records import ApprovalRecord
from dbsentry.audit.redaction import current as current_redactor
from dbsentry.governance.facts import StatementFacts
from dbsentry.identity.model import Identity
from dbsentry.policy.engine import Decision

log = logging.getLogger("dbsentry.approvals")

AuditSink = Callable[[ApprovalRecord], object]


@dataclass(frozen=True, slots=True)
class Gate:
    """What to do with a statement that needs approval.

    ``run``: an approval was consumed for it; forward it (record ``approval_id=request.id``).
    ``refuse``: fail it with SQLSTATE 42501 and ``message`` (fail mode).
    ``wait``: send ``message`` as a notice, then wait on :meth:`Approvals.watch`.
    """

    outcome: Literal["run", "refuse", "wait"]
    request: ApprovalRequest
    created: bool = False
    message: str = ""
    hint: str | None = None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class _Watch:
    futures: list[concurrent.futures.Future[ApprovalRequest]] = field(default_factory=list)


class Approvals:
    def __init__(
        self,
        config: ApprovalsConfig,
        store: ApprovalStore,
        *,
        notifier: Notifier | None = None,
        audit: AuditSink | None = None,
        clock: Callable[[], float] = time.time,
        expire_interval: float = 30.0,
    ) -> None:
        self.config = config
        self.store = store
        self.notifier = notifier
        self._audit = audit
        self._clock = clock
        self._expire_interval = expire_interval
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._grants: dict[str, list[Grant]] = {}
        self._tracked: dict[str, int] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._version = -1

    # --- events ----------------------------------------------------------------------------------

    def _emit(
        self, request: ApprovalRequest, event: AuditEvent, reviewed: Reviewed | None = None
    ) -> None:
        if self._audit is not None:
            self._audit(
                approval_record(
                    request, event, review=None if reviewed is None else reviewed.review
                )
            )
        if self.notifier is not None and event != "revoked":
            notify_event: Event = event
            self.notifier.notify(notify_event, request)

    # --- statements ------------------------------------------------------------------------------

    def statement_gate(
        self,
        *,
        identity: Identity,
        connection: str,
        environment: str | None,
        sql: str,
        params: Sequence[str | None] | None,
        decision: Decision,
        facts: Sequence[StatementFacts] = (),
        session_id: str | None = None,
        client_mode: str | None = None,
        display_sql: str | None = None,
        consume: bool = True,
        key: str,
    ) -> Gate:
        """For a ``require_approval`` decision: use an approval, or make (or find) a request.

        ``params`` are the bound values as text, None for the simple protocol; ``key`` is
        the approval key the engine's session computed (``approvals.model.statement_key``:
        the statement as its lexer reads it and the exact bound values).  The request stores and shows ``display_sql`` or, by default, the
        statement and parameters with sensitive values as tokens (the process's
        ``LiteralRedactor``).  Blocking.
        """
        now = self._clock()
        if consume:
            used = self.store.consume(identity.name, connection, key, now)
        else:  # several statements: consume_all uses their approvals together
            used = self.store.find_approved(identity.name, connection, key, now)
        if used is not None:
            return Gate("run", used)
        shown_params = params
        if display_sql is None:
            # Reviewers, the console, notifications and the audit trail see the statement
            # as the audit trail shows it: sensitive values as tokens (audit.redact_literals).
            shown = current_redactor().redact(sql, params, connection)
            display_sql, shown_params = shown.text, shown.params
        request = statement_request(
            identity=identity,
            connection=connection,
            environment=environment,
            sql=sql,
            params=shown_params,
            approvers=decision.approvers or self.config.default_approvers,
            min_approvals=decision.min_approvals,
            now=now,
            ttl_seconds=self.config.request_ttl_seconds,
            validity_seconds=self.config.approval_validity_seconds,
            summary=summarize_facts(facts) if facts else FactsSummary(),
            rules=decision.rules,
            message=decision.message,
            session_id=session_id,
            display_sql=display_sql,
            request_key=key,
        )
        stored, created = self.store.create_or_get_pending(request, now)
        if created:
            self._emit(stored, "requested")
        mode = self.config.mode_for(identity.name, connection, client_mode)
        if mode == "wait":
            return Gate("wait", stored, created, self.wait_notice(stored))
        return Gate(
            "refuse",
            stored,
            created,
            self.refusal_message(stored),
            "Once it is approved, send the same statement again: it runs once.",
        )

    def consume_all(
        self, identity: str, connection: str, keys: Sequence[str]
    ) -> list[ApprovalRequest] | None:
        """Use one approval per statement key, all or none (blocking)."""
        return self.store.consume_all(identity, connection, keys, self._clock())

    def _who(self, request: ApprovalRequest) -> str:
        # A requester who is an approver too cannot review their own request: say so.
        own = set(request.requester_groups) & set(request.approvers)
        other = f", by someone other than {request.requester}" if own else ""
        return (
            f"{', '.join(request.approvers)} "
            f"({_plural(request.required_approvals, 'approval')} needed{other})"
        )

    def refusal_message(self, request: ApprovalRequest) -> str:
        """The fail-mode error text: names the request and the console link."""
        why = request.message or "this statement requires approval"
        named = all(r in why for r in request.rules)  # the rule's own message names it already
        rules = f" (rule: {', '.join(request.rules)})" if request.rules and not named else ""
        return (
            f"dbsentry: {why}{rules}. Approval request {request.id} is pending review by "
            f"{self._who(request)}: {self.config.console_link(request.id)} -- once approved, "
            "send the same statement again; it runs once"
        )

    def wait_notice(self, request: ApprovalRequest) -> str:
        return (
            f"dbsentry: waiting up to {self.config.wait_timeout_seconds}s for approval request "
            f"{request.id} (review by {self._who(request)}): {self.config.console_link(request.id)}"
        )

    def outcome_message(self, request: ApprovalRequest) -> str:
        """Why a waited-on statement will not run (denied, expired, withdrawn, already used)."""
        if request.status == "denied" and request.denial is not None:
            d = request.denial
            because = f": {d.reason}" if d.reason else ""
            return f"dbsentry: approval request {request.id} was denied by {d.reviewer}{because}"
        return f"dbsentry: approval request {request.id} is {request.status}; the statement did not run"

    def timeout_message(self, request: ApprovalRequest) -> str:
        return (
            f"dbsentry: approval request {request.id} was not approved within "
            f"{self.config.wait_timeout_seconds}s; the request is withdrawn"
        )

    def withdraw(self, request_id: str, requester: str | None = None) -> ApprovalRequest | None:
        """Withdraw a request its waiting client gave up on (blocking)."""
        withdrawn = self.store.withdraw(request_id, requester=requester, now=self._clock())
        if withdrawn is not None and self._audit is not None:
            self._audit(approval_record(withdrawn, "revoked"))
        return withdrawn

    # --- reviews ---------------------------------------------------------------------------------

    def review(
        self, request_id: str, reviewer: Identity, approve: bool, reason: str | None = None
    ) -> Reviewed:
        """Approve or deny (blocking); audited and announced.  Raises ``ReviewRefused``."""
        result = self.store.review(request_id, reviewer, approve, reason, self._clock())
        event: AuditEvent = "denied" if result.event == "denied" else "approved"
        if self._audit is not None:
            self._audit(approval_record(result.request, event, review=result.review))
        if self.notifier is not None and result.event != "recorded":
            self.notifier.notify(event if event == "denied" else "approved", result.request)
        return result

    def request_created(self, request: ApprovalRequest) -> None:
        """Audit and announce a request made outside ``statement_gate`` (``access request``)."""
        self._emit(request, "requested")

    def expire_due(self) -> list[ApprovalRequest]:
        """Expire overdue requests (blocking); each is audited and announced by one node."""
        expired = self.store.expire_due(self._clock())
        for r in expired:
            try:
                self._emit(r, "expired")
            except Exception as err:  # one lost record must not cost the others theirs
                log.error("approvals: could not record the expiry of %s: %s", r.id, err)
        return expired

    # --- waiting ---------------------------------------------------------------------------------

    def watch(self, request_id: str) -> concurrent.futures.Future[ApprovalRequest]:
        """A future resolved with the request once it is no longer pending.

        In asyncio: ``await asyncio.wait_for(asyncio.wrap_future(fut), timeout)``.  Needs
        :meth:`start`.  Cancel the future (or call :meth:`unwatch`) when the client goes away.
        """
        fut: concurrent.futures.Future[ApprovalRequest] = concurrent.futures.Future()
        with self._lock:
            self._watches.setdefault(request_id, _Watch()).futures.append(fut)
        self._version = -1  # look now, the decision may already be in
        self._wake.set()
        return fut

    def unwatch(self, request_id: str, fut: concurrent.futures.Future[ApprovalRequest]) -> None:
        fut.cancel()
        with self._lock:
            w = self._watches.get(request_id)
            if w is not None:
                w.futures = [f for f in w.futures if f is not fut]
                if not w.futures:
                    del self._watches[request_id]

    # --- grants ----------------------------------------------------------------------------------

    def load_grants(self, identity: str) -> list[Grant]:
        """Read ``identity``'s active grants (blocking) and keep them fresh while tracked.

        Call at session start; pair with :meth:`release_grants` at session end.
        """
        grants = self.store.active_grants(identity, self._clock())
        with self._lock:
            self._grants[identity] = grants
            self._tracked[identity] = self._tracked.get(identity, 0) + 1
        return grants

    def release_grants(self, identity: str) -> None:
        with self._lock:
            n = self._tracked.get(identity, 0) - 1
            if n <= 0:
                self._tracked.pop(identity, None)
                self._grants.pop(identity, None)
            else:
                self._tracked[identity] = n

    def effective_identity(self, identity: Identity) -> Identity:
        """``identity`` plus the groups its active grants give it (non-blocking, cached)."""
        with self._lock:
            grants = self._grants.get(identity.name)
        if not grants:
            return identity  # the usual case, asked for every statement: no clock, no set
        return with_grants(identity, grants, self._clock())

    def connection_granted(self, identity: str, connection: str) -> bool:
        """Whether an active grant lets ``identity`` use ``connection`` (non-blocking, cached)."""
        with self._lock:
            grants = self._grants.get(identity, [])
        return connection in granted_connections(identity, grants, self._clock())

    # --- the background thread -------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="dbsentry-approvals", daemon=True
            )
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for w in watches:
            for f in w.futures:
                f.cancel()
        if self.notifier is not None:
            self.notifier.close(timeout)

    def _run(self) -> None:
        next_expiry = 0.0
        failing = False  # an outage is logged once, and its end
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + self._expire_interval
                    self.expire_due()
                self.poll()
                if failing:
                    log.warning("approvals: the store answers again")
                    failing = False
            except Exception as err:
                log.log(logging.DEBUG if failing else logging.WARNING, "approvals: store poll failed: %s", err)
                failing = True
            self._wake.wait(self.config.poll_interval_seconds)
            self._wake.clear()

    def changed(self) -> None:
        """Something changed in the store (another node announced it): look now rather
        than at the next poll (non-blocking)."""
        self._version = -1
        self._wake.set()

    def poll(self) -> None:
        """One round of the background thread's polling (blocking; public for tests)."""
        version = self.store.version()
        if version == self._version:
            return
        self._version = version
        with self._lock:
            watched = list(self._watches)
            tracked = list(self._tracked)
        for request_id in watched:
            request = self.store.get(request_id)
            if request is None or request.status == "pending":
                continue
            with self._lock:
                w = self._watches.pop(request_id, None)
            for f in w.futures if w is not None else ():
                # the session may cancel its future at any moment, from its own thread
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    f.set_result(request)
        now = self._clock()
        for name in tracked:
            grants = self.store.active_grants(name, now)
            with self._lock:
                if name in self._tracked:
                    self._grants[name] = grants

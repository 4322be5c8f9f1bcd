"""The web app's state: the read store, approvals, the verify cache and API auditing."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from dbsentry.audit.records import SystemEvent
from dbsentry.web.access import Capability, Require, refusal
from dbsentry.web.approvals import Approvals
from dbsentry.web.auth import Principal, authenticate

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from starlette.types import Scope

    from dbsentry.audit import AuditStore
    from dbsentry.audit.keys import KeyRing
    from dbsentry.audit.verify import AuditVerification
    from dbsentry.web.context import WebContext

log = logging.getLogger("dbsentry.web")

# A read repeated by the same caller with the same parameters within this many seconds is
# audited once: a console tab refreshing a list must not flood the trail.
READ_AUDIT_COALESCE_SECONDS = 60.0
VERIFY_CACHE_SECONDS = 30.0


class AuditRequired(Exception):
    """A change was refused because the audit trail cannot record it."""


class WebServices:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx
        self.web = ctx.web_config
        self.approvals = Approvals(ctx.approvals, ctx.clock)
        self.stopping = threading.Event()
        self._store: AuditStore | None = None
        self._store_lock = threading.Lock()
        self._recent_reads: dict[str, float] = {}
        self._reads_lock = threading.Lock()
        self._verify: tuple[float, AuditVerification] | None = None
        self._verify_lock = threading.Lock()

    # --- the read store ------------------------------------------------------------------

    @property
    def store(self) -> AuditStore:
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    self._store = self.ctx.audit_store()
        if self.ctx.index_catch_up is not None:
            self.ctx.index_catch_up(self._store)  # what clients have seen is found
        return self._store

    def close(self) -> None:
        with self._store_lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    # --- who may do what -------------------------------------------------------------------

    def admit(self, scope: Scope, required: Require) -> Principal | None:
        """The caller of the request in ``scope`` if it may use ``required``'s capability;
        AuthError if not.  The caller is cached in the request's state.  Blocking."""
        state = scope.setdefault("state", {})
        who: Principal | None = state.get("principal")
        if who is None and required.capability is not Capability.PUBLIC:
            header = next(
                (v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"authorization"),
                None,
            )
            client = scope.get("client")
            who = authenticate(
                self.ctx.authenticator, self.web, header, client[0] if client else "unknown"
            )
            state["principal"] = who
        refused = refusal(who, required.capability, self.web)
        if refused is not None:
            raise refused
        return who

    # --- auditing API actions --------------------------------------------------------------

    def audit(
        self,
        who: Principal | None,
        action: str,
        client: str | None,
        detail: dict[str, Any] | None = None,
        *,
        change: bool = False,
    ) -> None:
        """Record ``action`` in the audit trail as a ``system`` event ``api``.

        A change (``change=True``) is refused with AuditRequired when the trail cannot take
        the record; a read is served anyway and the failure logged.
        """
        writer = self.ctx.audit_writer
        if writer is None:
            return
        detail = {k: v for k, v in (detail or {}).items() if v is not None}
        if not change:
            caller = who.identity.token_id if who is not None else client
            key = hashlib.sha256(
                orjson.dumps([caller, action, detail], option=orjson.OPT_SORT_KEYS)
            ).hexdigest()
            now = time.monotonic()
            with self._reads_lock:
                last = self._recent_reads.get(key)
                if last is not None and now - last < READ_AUDIT_COALESCE_SECONDS:
                    return
                if len(self._recent_reads) > 10_000:
                    self._recent_reads = {
                        k: t
                        for k, t in self._recent_reads.items()
                        if now - t < READ_AUDIT_COALESCE_SECONDS
                    }
                self._recent_reads[key] = now
        event = SystemEvent(
            event="api",
            detail={
                "action": action,
                "identity": who.name if who is not None else None,
                "identity_kind": who.identity.kind if who is not None else None,
                "token_id": who.identity.token_id if who is not None else None,
                "roles": sorted(who.roles) if who is not None else [],
                "client_addr": client,
                **detail,
            },
        )
        if change and not writer.healthy:
            raise AuditRequired(
                "the audit trail is unavailable; changes are refused until it recovers"
            )
        try:
            writer.append_nowait(event)
        except Exception as err:  # AuditUnavailable: queue full or closing
            if change:
                raise AuditRequired(f"the audit trail is unavailable: {err}") from err
            log.warning("API read not audited: %s", err)

    # --- chain verification ----------------------------------------------------------------

    def public_keys(self) -> Sequence[Ed25519PublicKey] | KeyRing:
        if self.ctx.public_keys is not None:
            return self.ctx.public_keys()
        from dbsentry.audit.verify import trusted_keys

        return trusted_keys(self.ctx.config.audit, Path(self.ctx.config.state_dir))

    def verify(self, *, fresh: bool = False) -> tuple[float, AuditVerification]:
        """The trail's verification (the store's own chain, every node's log, the index),
        at most VERIFY_CACHE_SECONDS old unless ``fresh``."""
        from dbsentry.audit.verify import AuditVerification, Problem, verify_all

        with self._verify_lock:
            now = self.ctx.clock()
            if (
                not fresh
                and self._verify is not None
                and now - self._verify[0] < VERIFY_CACHE_SECONDS
            ):
                return self._verify
            cfg = self.ctx.config.audit
            try:
                keys = self.public_keys()
            except ValueError as err:  # the public key file names another key than the signing key's
                result = AuditVerification(None, (), (Problem("checkpoint_unknown_key", None, str(err)),))
            else:
                result = verify_all(
                    self.store, cfg.log_path(Path(self.ctx.config.state_dir)), keys, max_unsigned=2 * cfg.checkpoint_every
                )
            self._verify = (now, result)
            return self._verify

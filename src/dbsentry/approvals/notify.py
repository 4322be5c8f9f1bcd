"""Telling reviewers: signed JSON webhooks and Slack-compatible messages.

Posts are made by one background thread with a timeout and a few retries; a failure is
logged and never holds up the proxy.  A generic webhook's body is signed::

    X-Dbsentry-Timestamp: <unix seconds>
    X-Dbsentry-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

The timestamp is inside the signed material, so a receiver that rejects old timestamps
(:func:`verify_signature` allows five minutes) cannot be fed a replayed post.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from dbsentry.approvals.config import ApprovalsConfig, Event, WebhookConfig
from dbsentry.approvals.model import ApprovalRequest

log = logging.getLogger("dbsentry.approvals")

SIGNATURE_HEADER = "X-Dbsentry-Signature"
TIMESTAMP_HEADER = "X-Dbsentry-Timestamp"
DEFAULT_TOLERANCE_SECONDS = 300
_SLACK_TEXT_MAX = 2900  # a section block's text may hold 3000 characters
_USER_AGENT = "dbsentry-approvals"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def event_payload(event: Event, request: ApprovalRequest, link: str) -> dict[str, Any]:
    """The generic webhook's JSON body."""
    return {
        "event": event,
        "id": request.id,
        "kind": request.kind,
        "status": request.status,
        "link": link,
        "requester": request.requester,
        "requester_kind": request.requester_kind,
        "connection": request.connection,
        "environment": request.environment,
        "statement": request.statement,
        "params": None if request.params is None else list(request.params),
        "command": request.command,
        "tables": list(request.tables),
        "risk": request.risk,
        "rules": list(request.rules),
        "message": request.message,
        "access_group": request.access_group,
        "access_seconds": request.validity_seconds if request.kind == "access" else None,
        "reason": request.reason,
        "approvers": list(request.approvers),
        "min_approvals": request.required_approvals,
        "approvals": [r.to_dict() for r in request.approvals],
        "denial": None if request.denial is None else request.denial.to_dict(),
        "created_at": _iso(request.created_at),
        "expires_at": _iso(request.expires_at),
        "approved_until": _iso(request.approved_until),
    }


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    text = _slack_escape(text).replace("```", "`\u200b``")
    if len(text) > _SLACK_TEXT_MAX:
        text = text[:_SLACK_TEXT_MAX] + "…"
    return f"```{text}```"


_HEADLINES: dict[str, str] = {
    "requested": "Approval requested",
    "approved": "Approved",
    "denied": "Denied",
    "expired": "Expired",
}


def slack_payload(event: Event, request: ApprovalRequest, link: str) -> dict[str, Any]:
    """An incoming-webhook message: ``text`` (the notification line) and ``blocks``."""
    who = _slack_escape(request.requester) + (
        " (agent)" if request.requester_kind == "agent" else ""
    )
    if request.kind == "statement":
        what = f"a statement on *{_slack_escape(request.connection or '?')}*"
    else:
        hours = request.validity_seconds / 3600
        what = f"access to {_slack_escape(request.target)} for {hours:g}h"
    headline = f"{_HEADLINES[event]}: {request.id}"
    text = f"{headline}: {request.requester} — {request.kind} on {request.connection or request.access_group}"
    fields = [f"*Requested by*\n{who}"]
    if request.environment:
        fields.append(f"*Environment*\n{_slack_escape(request.environment)}")
    if request.command:
        fields.append(f"*Command*\n{_slack_escape(request.command)}")
    if request.tables:
        fields.append(f"*Tables*\n{_slack_escape(', '.join(request.tables))}")
    if request.risk:
        fields.append(f"*Risk*\n{_slack_escape(request.risk)}")
    fields.append(
        f"*Approvers*\n{_slack_escape(', '.join(request.approvers))} "
        f"({len(request.approvals)}/{request.required_approvals})"
    )
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": headline[:150]}},
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"{who} asks to run {what}."},
            "fields": [{"type": "mrkdwn", "text": f[:2000]} for f in fields[:10]],
        },
    ]
    if request.statement is not None:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _code(request.statement)}}
        )
    if request.params:
        shown = ", ".join("NULL" if p is None else repr(p) for p in request.params)
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": "*Parameters*\n" + _code(shown)}}
        )
    if request.reason:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*Reason*\n{_slack_escape(request.reason)[:2900]}",
                },
            }
        )
    if request.rules or request.message:
        note = _slack_escape(request.message or "") + (
            f" (rules: {_slack_escape(', '.join(request.rules))})" if request.rules else ""
        )
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": note.strip()[:2900]}]}
        )
    decided = request.denial or (request.approvals[-1] if request.approvals else None)
    if event in ("approved", "denied") and decided is not None:
        line = f"{_HEADLINES[event]} by {_slack_escape(decided.reviewer)}"
        if decided.reason:
            line += f": {_slack_escape(decided.reason)}"
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": line[:2900]}]})
    blocks.append(
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Review in dbsentry"},
                    "url": link,
                    "action_id": "dbsentry_review",
                }
            ],
        }
    )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"<{link}|{request.id}> · `dbsentry approvals approve {request.id}`",
                }
            ],
        }
    )
    return {"text": text, "blocks": blocks}


@dataclass(frozen=True, slots=True)
class _Delivery:
    hook: WebhookConfig
    secret: str | None
    body: bytes
    event: Event
    request_id: str


Sender = Callable[[urllib.request.Request, float], int]


def _urllib_send(req: urllib.request.Request, timeout: float) -> int:
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # http(s) only: checked in config
        status: int = resp.status
        return status


class Notifier:
    """Posts approval events to the configured webhooks from a background thread.

    :meth:`notify` never blocks and never raises.  :meth:`close` waits (up to a timeout) for
    what is queued: the CLI calls it before exiting, the proxy on shutdown.
    """

    def __init__(
        self,
        config: ApprovalsConfig,
        *,
        send: Sender | None = None,
        retry_delay: float = 1.0,
        max_queue: int = 1000,
    ) -> None:
        self._config = config
        self._send: Sender = send or _urllib_send
        self._retry_delay = retry_delay
        self._queue: queue.Queue[_Delivery | None] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0

    def _hooks_for(self, event: Event, request: ApprovalRequest) -> Sequence[WebhookConfig]:
        out = []
        for hook in self._config.webhooks:
            if event not in hook.events:
                continue
            if hook.approver_groups is not None and not set(hook.approver_groups) & set(
                request.approvers
            ):
                continue
            out.append(hook)
        return out

    def notify(self, event: Event, request: ApprovalRequest) -> int:
        """Queue ``event`` for every webhook that wants it; returns how many were queued."""
        link = self._config.console_link(request.id)
        queued = 0
        for hook in self._hooks_for(event, request):
            try:
                secret = hook.resolve_secret()
                payload = (
                    slack_payload(event, request, link)
                    if hook.format == "slack"
                    else event_payload(event, request, link)
                )
                body = orjson.dumps(payload)
                self._queue.put_nowait(_Delivery(hook, secret, body, event, request.id))
            except queue.Full:
                log.warning("approval webhook queue full; dropping %s for %s", event, request.id)
                continue
            except Exception as err:
                log.error("approval webhook %s not sent: %s", hook.url, err)
                continue
            queued += 1
            self._start()
        return queued

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dbsentry-approval-notify", daemon=True
                )
                self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (waiting at most ``timeout`` seconds), then stop the thread."""
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._deliver(item)

    def _deliver(self, d: _Delivery) -> None:
        hook = d.hook
        for attempt in range(hook.retries + 1):
            headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT}
            if d.secret is not None:
                ts = str(int(time.time()))
                headers[TIMESTAMP_HEADER] = ts
                headers[SIGNATURE_HEADER] = sign(d.secret, ts, d.body)
            req = urllib.request.Request(hook.url, data=d.body, headers=headers, method="POST")
            try:
                status = self._send(req, hook.timeout_seconds)
            except urllib.error.HTTPError as err:
                status, error = err.code, f"HTTP {err.code}"
                err.close()
            except (OSError, ValueError) as err:
                status, error = 0, str(err)
            else:
                error = f"HTTP {status}"
            if 200 <= status < 300:
                self.sent += 1
                return
            # 4xx other than 408/429 will not get better by retrying
            if 400 <= status < 500 and status not in (408, 429):
                break
            if attempt < hook.retries:
                time.sleep(self._retry_delay * (2**attempt))
        self.failed += 1
        log.warning(
            "approval webhook failed: %s %s for %s: %s", hook.url, d.event, d.request_id, error
        )

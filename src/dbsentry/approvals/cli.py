"""``dbsentry approvals ...`` (review) and ``dbsentry access ...`` (just-in-time access).

Exit codes: 0 done; 1 refused (self-review, not an approver, not pending, bad token) or
failed; 2 usage (bad options, invalid configuration).  Every review and access request is
written to the audit trail, continuing its hash chain, before the command reports success.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, cast

import click
import orjson

from dbsentry.approvals.audit import append_records
from dbsentry.approvals.config import ApprovalsConfig
from dbsentry.approvals.model import (
    STATUSES,
    ApprovalRequest,
    Grant,
    Status,
    access_request,
    with_grants,
)
from dbsentry.approvals.notify import Notifier
from dbsentry.approvals.rules import ReviewRefused
from dbsentry.approvals.service import Approvals
from dbsentry.approvals.store import ApprovalStoreError, open_approval_store
from dbsentry.audit.config import AuditConfig
from dbsentry.audit.query import iso
from dbsentry.audit.records import ApprovalRecord
from dbsentry.audit.store import AuditStoreError
from dbsentry.cli_options import comment_option, config_option, full_path
from dbsentry.config import Config, ConfigError, load_config
from dbsentry.identity import Authenticator, Identity, parse_duration
from dbsentry.identity.tokens import TOKEN_PREFIX

EXIT_REFUSED = 1
EXIT_USAGE = 2

_token_option = click.option(
    "--token",
    envvar="DBSENTRY_TOKEN",
    required=True,
    help="Your dbsentry token or OIDC JWT (or set DBSENTRY_TOKEN).",
)


def _fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    click.echo(f"dbsentry: {message}", err=True)
    sys.exit(code)


@dataclass(frozen=True, slots=True)
class _Context:
    config: Config
    approvals: ApprovalsConfig
    audit: AuditConfig


def _load(path: Path) -> _Context:
    try:
        loaded = load_config(path)
    except ConfigError as err:
        _fail(f"invalid configuration {full_path(path)}:\n{err}", EXIT_USAGE)
    config = loaded.config
    approvals = getattr(config, "approvals", None)
    if not isinstance(approvals, ApprovalsConfig):
        approvals = ApprovalsConfig()
    return _Context(config, approvals, config.audit.with_base_dir(loaded.path.parent))


def identity_from_token(config: Config, token: str) -> Identity | None:
    """The identity a dbsentry token or (if OIDC is configured) a JWT proves, or None."""
    auth = Authenticator(config)
    try:
        if token.startswith(TOKEN_PREFIX):
            return auth.tokens.verify(token)
        if auth.oidc is not None and token.count(".") == 2:
            return auth.oidc.verify(token)
        return None
    finally:
        auth.close()


def _who(ctx: _Context, token: str) -> Identity:
    identity = identity_from_token(ctx.config, token.strip())
    if identity is None:
        _fail("the token is not valid (unknown, expired, revoked or malformed)")
    return identity


@contextmanager
def _service(ctx: _Context, *, audited: bool) -> Iterator[Approvals]:
    """The approvals service over the shared store; with ``audited``, records go to the trail."""
    try:
        store = open_approval_store(ctx.audit, ctx.config.state_dir, ctx.config.control_plane)
    except (ApprovalStoreError, ValueError) as err:
        _fail(str(err))

    def sink(record: ApprovalRecord) -> None:
        append_records(ctx.audit, ctx.config.state_dir, [record])

    notifier = Notifier(ctx.approvals) if audited else None
    service = Approvals(ctx.approvals, store, notifier=notifier, audit=sink if audited else None)
    try:
        yield service
    except ApprovalStoreError as err:
        _fail(str(err))
    except AuditStoreError as err:
        _fail(f"the change is stored but its audit record could not be written: {err}")
    finally:
        if notifier is not None:
            notifier.close(timeout=30)
        store.close()


def _age(seconds: float) -> str:
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172_800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _what(r: ApprovalRequest) -> str:
    if r.kind == "access":
        return f"access to {r.target} for {_age(r.validity_seconds)}"
    return " ".join((r.statement or "").split())


def _summary(r: ApprovalRequest, now: float) -> str:
    ok = len(r.approvals)
    where = r.connection or "-"
    what = _what(r)
    if len(what) > 80:
        what = what[:79] + "…"
    return (
        f"{r.id}  {r.status:<9} {r.requester:<24} {where:<12} "
        f"{ok}/{r.required_approvals}  {_age(now - r.created_at):>4} ago  {what}"
    )


def _json(r: ApprovalRequest | Grant) -> str:
    return orjson.dumps(r.to_dict()).decode()


def _print_list(requests: list[ApprovalRequest], as_json: bool) -> None:
    now = time.time()
    for r in requests:
        click.echo(_json(r) if as_json else _summary(r, now))
    if not requests and not as_json:
        click.echo("no requests", err=True)


_status_option = click.option(
    "--status",
    type=click.Choice([*STATUSES, "all"]),
    default="pending",
    show_default=True,
    help="Only requests in this state (or all).",
)


def _status(value: str) -> Status | None:
    return None if value == "all" else cast(Status, value)


# --- dbsentry approvals ------------------------------------------------------------------------


@click.group("approvals")
def approvals() -> None:
    """Review statements that need approval, and access requests."""


@approvals.command("list")
@config_option
@_status_option
@click.option("--kind", type=click.Choice(["statement", "access"]), help="Only this kind.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_cmd(config_path: Path, status: str, kind: str | None, limit: int, as_json: bool) -> None:
    """Requests, newest first (pending ones by default)."""
    ctx = _load(config_path)
    with _service(ctx, audited=False) as svc:
        found = svc.store.list(
            status=_status(status),
            kind=kind,
            limit=limit,
        )
    _print_list(found, as_json)


@approvals.command("show")
@config_option
@click.argument("request_id")
@click.option("--json", "as_json", is_flag=True, help="The request as JSON.")
def show_cmd(config_path: Path, request_id: str, as_json: bool) -> None:
    """Everything about one request."""
    ctx = _load(config_path)
    with _service(ctx, audited=False) as svc:
        r = svc.store.get(request_id)
    if r is None:
        _fail(f"no approval request {request_id}")
    if as_json:
        click.echo(_json(r))
        return
    lines = [
        f"{r.id} ({r.kind}): {r.status}",
        f"  requested by  {r.requester} ({r.requester_kind}) at {iso(r.created_at)}",
        f"  connection    {r.connection or '-'} ({r.environment or '-'})",
    ]
    if r.kind == "statement":
        lines.append(
            f"  command       {r.command or '-'}; tables {', '.join(r.tables) or '-'}; risk {r.risk or '-'}"
        )
        lines.append(f"  rules         {', '.join(r.rules) or '-'}")
        if r.message:
            lines.append(f"  message       {r.message}")
        lines.append("  statement")
        lines.extend("    " + line for line in (r.statement or "").splitlines() or [""])
        if r.params is not None:
            shown = ", ".join("NULL" if p is None else repr(p) for p in r.params)
            lines.append(f"  parameters    {shown or '(none)'}")
    else:
        lines.append(f"  asks for      {r.target} for {_age(r.validity_seconds)}")
        lines.append(f"  reason        {r.reason or '-'}")
    lines.append(
        f"  approvers     {', '.join(r.approvers)} ({len(r.approvals)}/{r.required_approvals} approvals)"
    )
    for rv in r.reviews:
        verb = "approved" if rv.approve else "denied"
        because = f": {rv.reason}" if rv.reason else ""
        lines.append(f"  {verb:<13} by {rv.reviewer} at {iso(rv.time)}{because}")
    if r.status == "pending":
        lines.append(f"  expires       {iso(r.expires_at)}")
    if r.approved_until is not None:
        lines.append(f"  valid until   {iso(r.approved_until)}")
    if r.used_at is not None:
        lines.append(f"  used at       {iso(r.used_at)}")
    lines.append(f"  link          {ctx.approvals.console_link(r.id)}")
    click.echo("\n".join(lines))


def _review(
    config_path: Path,
    request_id: str,
    token: str,
    comment: str | None,
    reason_alias: str | None,
    approve: bool,
) -> None:
    if comment is not None and reason_alias is not None:
        raise click.UsageError("give --comment once (--reason is its old name)")
    reason = comment if comment is not None else reason_alias
    ctx = _load(config_path)
    reviewer = _who(ctx, token)
    with _service(ctx, audited=True) as svc:
        # groups granted just in time count for reviewing too
        reviewer = with_grants(reviewer, svc.store.active_grants(reviewer.name), time.time())
        try:
            result = svc.review(request_id, reviewer, approve, reason)
        except ReviewRefused as err:
            _fail(f"refused: {err}")
    r = result.request
    if result.event == "recorded":
        click.echo(
            f"{r.id}: approval by {reviewer.name} recorded; "
            f"{len(r.approvals)} of {r.required_approvals} approvals"
        )
    elif result.event == "approved":
        if result.grant is not None:
            g = result.grant
            click.echo(f"{r.id}: approved; {g.identity} has {r.target} until {iso(g.expires_at)}")
        else:
            click.echo(f"{r.id}: approved; usable once until {iso(r.approved_until)}")
    else:
        click.echo(f"{r.id}: denied by {reviewer.name}")


@approvals.command("approve")
@config_option
@click.argument("request_id")
@_token_option
@comment_option("Why, for the audit trail (the console's comment).")
def approve_cmd(
    config_path: Path, request_id: str, token: str, comment: str | None, reason_alias: str | None
) -> None:
    """Approve a pending request as the identity your token proves."""
    _review(config_path, request_id, token, comment, reason_alias, True)


@approvals.command("deny")
@config_option
@click.argument("request_id")
@_token_option
@comment_option("Why, shown to the requester and kept in the audit trail (the console's comment).")
def deny_cmd(
    config_path: Path, request_id: str, token: str, comment: str | None, reason_alias: str | None
) -> None:
    """Deny a pending request as the identity your token proves."""
    _review(config_path, request_id, token, comment, reason_alias, False)


# --- dbsentry access ---------------------------------------------------------------------------


@click.group("access")
def access() -> None:
    """Just-in-time access: ask for a group or a connection for a while."""


@access.command("request")
@config_option
@_token_option
@click.option("--group", help="The group to be added to.")
@click.option("--connection", help="The connection to be allowed on.")
@click.option("--for", "duration", required=True, help="How long: 30m, 2h, 1d, 1h30m.")
@click.option("--reason", required=True, help="Why you need it (shown to reviewers).")
def request_cmd(
    config_path: Path,
    token: str,
    group: str | None,
    connection: str | None,
    duration: str,
    reason: str,
) -> None:
    """Ask for temporary access; prints the request id."""
    if (group is None) == (connection is None):
        raise click.UsageError("give exactly one of --group and --connection")
    try:
        seconds = parse_duration(duration)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--for") from None
    if not reason.strip():
        raise click.BadParameter("give a reason", param_hint="--reason")
    ctx = _load(config_path)
    cfg = ctx.approvals.access
    if seconds > cfg.max_duration_seconds:
        raise click.BadParameter(
            f"at most {_age(cfg.max_duration_seconds)} (approvals.access.max_duration_seconds)",
            param_hint="--for",
        )
    environment = None
    if connection is not None:
        conn = ctx.config.connections.get(connection)
        if conn is None:
            raise click.BadParameter(
                f"no connection {connection!r} in {full_path(config_path)} "
                f"(known: {', '.join(sorted(ctx.config.connections)) or 'none'})",
                param_hint="--connection",
            )
        environment = conn.environment
    if not cfg.enabled:
        _fail("just-in-time access is disabled (approvals.access.enabled)")
    identity = _who(ctx, token)
    if group is not None and group in identity.groups:
        _fail(f"{identity.name} is already in group {group}")
    approvers, min_approvals = cfg.route(group, connection)
    now = time.time()
    request = access_request(
        identity=identity,
        group=group,
        connection=connection,
        duration_seconds=seconds,
        reason=reason.strip(),
        approvers=approvers,
        min_approvals=min_approvals,
        now=now,
        ttl_seconds=ctx.approvals.request_ttl_seconds,
        environment=environment,
    )
    with _service(ctx, audited=True) as svc:
        stored, created = svc.store.create_or_get_pending(request, now)
        if created:
            svc.request_created(stored)
    click.echo(stored.id)
    note = "requested" if created else "already pending"
    click.echo(
        f"{note}: {stored.target} for {_age(stored.validity_seconds)}, to be reviewed by "
        f"{', '.join(stored.approvers)}: {ctx.approvals.console_link(stored.id)}",
        err=True,
    )


@access.command("list")
@config_option
@_status_option
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def access_list_cmd(config_path: Path, status: str, limit: int, as_json: bool) -> None:
    """Access requests, newest first (pending ones by default)."""
    ctx = _load(config_path)
    with _service(ctx, audited=False) as svc:
        found = svc.store.list(
            status=_status(status),
            kind="access",
            limit=limit,
        )
    _print_list(found, as_json)


@access.command("grants")
@config_option
@click.option("--identity", help="Only this identity's grants.")
@click.option("--all", "show_all", is_flag=True, help="Expired grants too.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def grants_cmd(
    config_path: Path, identity: str | None, show_all: bool, limit: int, as_json: bool
) -> None:
    """Grants made by approved access requests (active ones by default)."""
    ctx = _load(config_path)
    now = time.time()
    with _service(ctx, audited=False) as svc:
        found = svc.store.grants(
            identity=identity, active_at=None if show_all else now, limit=limit
        )
    for g in found:
        if as_json:
            click.echo(_json(g))
            continue
        target = f"group {g.group}" if g.group is not None else f"connection {g.connection}"
        state = "active" if g.active(now) else "expired"
        click.echo(
            f"{g.id}  {state:<7} {g.identity:<24} {target:<24} until {iso(g.expires_at)}  ({g.approval_id})"
        )
    if not found and not as_json:
        click.echo("no grants", err=True)

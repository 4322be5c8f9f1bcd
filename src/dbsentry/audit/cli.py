"""``dbsentry audit ...`` and ``dbsentry report``: search, tail, export, verify, archive, reindex, report."""

from __future__ import annotations

import functools
import sys
import time as _time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.index import catch_up_all, reindex
from dbsentry.audit.keys import KeyRing, Signer, load_or_create_signing_key
from dbsentry.audit.log import check_node_id
from dbsentry.audit.query import (
    export_csv,
    export_jsonl,
    iso,
    outcome_text,
    parse_when,
    raw_row,
    search,
    summary_line,
    tail,
)
from dbsentry.audit.records import STATEMENT_DECISIONS
from dbsentry.audit.redaction import LiteralRedactor, load_or_create_redaction_key
from dbsentry.audit.store import AuditStore, AuditStoreError, SearchFilter, open_store
from dbsentry.audit.verify import (
    ArchiveError,
    AuditVerification,
    VerifyResult,
    archive,
    archive_log,
    log_nodes,
    trusted_keys,
    verify_all,
    verify_archive,
)
from dbsentry.cli_options import config_option, full_path
from dbsentry.config import ConfigError, load_config
from dbsentry.masking.detect import detect_value

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class AuditContext:
    audit: AuditConfig
    state_dir: Path

    @contextmanager
    def store(self) -> Iterator[AuditStore]:
        """The search index, brought up to date with every node's log first (so what a
        client has seen is found, even while the proxy's own indexer is a moment behind)."""
        log_dir = self.audit.log_path(self.state_dir)
        try:
            store = open_store(self.audit, self.state_dir, create=log_dir.is_dir())
        except (AuditStoreError, ValueError) as err:
            raise click.ClickException(str(err)) from None
        try:
            catch_up_all(store, log_dir)
        except (AuditStoreError, OSError) as err:
            click.echo(f"warning: the audit index may be behind the log: {err}", err=True)
        try:
            yield store
        except AuditStoreError as err:
            raise click.ClickException(str(err)) from None
        finally:
            store.close()

    def key_path(self) -> Path:
        return self.audit.signing_key_path(self.state_dir)

    def public_keys(self, extra: tuple[Path, ...] = (), node_keys: Mapping[str, Path] | None = None) -> KeyRing:
        try:
            return trusted_keys(self.audit, self.state_dir, extra, node_keys)
        except (OSError, ValueError) as err:
            raise click.ClickException(f"cannot load a public key: {err}") from None

    def redactor(self) -> LiteralRedactor:
        """The proxy's token key, to compute the token of a value (never created here)."""
        path = self.audit.redaction_key_path(self.state_dir)
        if not path.exists():
            raise click.ClickException(
                f"no audit redaction key at {path}: the proxy creates it when it starts"
            )
        try:
            return LiteralRedactor(load_or_create_redaction_key(path))
        except (OSError, ValueError) as err:
            raise click.ClickException(
                f"cannot load the audit redaction key {path}: {err}"
            ) from None

    def signer(self, *, create: bool) -> Signer | None:
        path = self.key_path()
        if not create and not path.exists():
            return None
        try:
            return Signer(load_or_create_signing_key(path))
        except (OSError, ValueError) as err:
            raise click.ClickException(f"cannot load the audit signing key {path}: {err}") from None


def load_audit_context(config_path: str | Path) -> AuditContext:
    """The audit settings and state directory of a configuration file."""
    try:
        loaded = load_config(config_path)
    except ConfigError as err:
        raise click.ClickException(f"invalid configuration {full_path(config_path)}:\n{err}") from None
    audit = getattr(loaded.config, "audit", None)
    if not isinstance(audit, AuditConfig):
        audit = AuditConfig()
    return AuditContext(audit.with_base_dir(loaded.path.parent), loaded.config.state_dir)


def _when(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_when(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def _filter_options(f: F) -> F:
    options = [
        click.option("--identity", help="Who (exact name)."),
        click.option("--kind", type=click.Choice(["human", "agent"]), help="Identity kind."),
        click.option("--connection", help="Connection name."),
        click.option("--environment", help="Environment (production, staging, ...)."),
        click.option("--table", help="Table touched (name or schema.name)."),
        click.option(
            "--decision",
            type=click.Choice(STATEMENT_DECISIONS),
            help="What the proxy did with the statement.",
        ),
        click.option("--session", "session_id", help="Session id."),
        click.option("--run", help="An AI agent's run id (the MCP server's run_id, docs/mcp.md)."),
        click.option("--since", help="ISO time or 30m / 12h / 7d ago."),
        click.option("--until", help="ISO time or 30m / 12h / 7d ago."),
        click.option("--text", help="Substring of the statement text (case-insensitive)."),
        click.option(
            "--value",
            "values",
            multiple=True,
            help="A value, as sent: statements whose text or parameters hold its token.",
        ),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


def _make_filter(kw: dict[str, Any], obj: AuditContext | None = None) -> SearchFilter:
    values: tuple[str, ...] = tuple(kw.get("values") or ())
    digests: tuple[str, ...] = ()
    if values:
        if obj is None:
            raise click.UsageError("--value needs the configuration")
        r = obj.redactor()
        digests = tuple(dict.fromkeys(d for v in values for d in r.search_digests(v)))
    return SearchFilter(
        digests=digests,
        identity=kw.get("identity"),
        identity_kind=kw.get("kind"),
        connection=kw.get("connection"),
        environment=kw.get("environment"),
        table=kw.get("table"),
        decision=kw.get("decision"),
        session_id=kw.get("session_id"),
        since=_when(kw.get("since")),
        until=_when(kw.get("until")),
        text=kw.get("text"),
        run=kw.get("run"),
    )


def _with_audit(f: Callable[..., None]) -> Callable[..., None]:
    """Give a subcommand ``-c/--config`` and call it with the loaded AuditContext first."""

    @functools.wraps(f)
    def wrapper(*, config_path: Path, **kw: Any) -> None:
        f(load_audit_context(config_path), **kw)

    return config_option(wrapper)


@click.group("audit")
def audit() -> None:
    """Search, export and verify the audit trail."""


@audit.command("search")
@_filter_options
@click.option("--limit", default=200, show_default=True, help="At most this many (0: no limit).")
@click.option("--oldest-first", is_flag=True, help="Chronological order (default: newest first).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_with_audit
def search_cmd(
    obj: AuditContext, /, limit: int, oldest_first: bool, as_json: bool, **kw: Any
) -> None:
    """Statements matching the filters, joined with their outcome."""
    flt = _make_filter(kw, obj)
    out = sys.stdout
    with obj.store() as store:
        for row in search(store, flt, limit=limit or None, newest_first=not oldest_first):
            if as_json:
                out.write(orjson.dumps(row).decode() + "\n")
                continue
            text = " ".join(str(row["statement"] or "").split())
            failed = row["sqlstate"] or ("?" if row["error"] else None)
            outcome = outcome_text(row["rows"], row["duration_ms"], failed, row["decision"])
            click.echo(
                f"{row['time']} #{row['seq']} {row['identity']} ({row['identity_kind']}) "
                f"{row['connection']}/{row['environment']} {row['decision']} {outcome}: {text[:160]}"
            )


@audit.command("tail")
@click.option("-n", "--lines", default=20, show_default=True, help="Show the last N records first.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new records.")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line (with chain fields)."
)
@_with_audit
def tail_cmd(obj: AuditContext, lines: int, follow: bool, as_json: bool) -> None:
    """The latest records (every type), and with -f new ones as they are written."""
    with obj.store() as store:
        try:
            for r in tail(store, last=lines, follow=follow):
                click.echo(orjson.dumps(raw_row(r)).decode() if as_json else summary_line(r))
        except KeyboardInterrupt:
            pass


@audit.command("export")
@_filter_options
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option(
    "--raw", is_flag=True, help="jsonl only: every record with seq and hashes (verifiable)."
)
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, writable=True), help="File (default: stdout)."
)
@_with_audit
def export_cmd(obj: AuditContext, /, fmt: str, raw: bool, out: str | None, **kw: Any) -> None:
    """Stream statements (or, --raw, all records) oldest first, in constant memory."""
    flt = _make_filter(kw, obj)
    if raw and fmt != "jsonl":
        raise click.BadParameter("--raw works with --format jsonl")
    with obj.store() as store:
        if fmt == "csv":
            if out is None:
                n = export_csv(store, flt, sys.stdout)
            else:
                with open(out, "w", newline="", encoding="utf-8") as f:
                    n = export_csv(store, flt, f)
        elif out is None:
            n = export_jsonl(store, flt, sys.stdout.buffer, raw=raw)
            sys.stdout.buffer.flush()
        else:
            with open(out, "wb") as fb:
                n = export_jsonl(store, flt, fb, raw=raw)
    click.echo(f"exported {n} {'records' if raw else 'statements'}", err=True)


@audit.command("token")
@click.argument("values", nargs=-1, required=True)
@_with_audit
def token_cmd(obj: AuditContext, /, values: tuple[str, ...]) -> None:
    """The token each VALUE (exactly as sent) is stored as: ``<class:hmac:...>``.

    The class part comes from value detection (``value`` when it finds none); a value
    that met a classified column is stored with that column's class, and the same digest.
    """
    r = obj.redactor()
    for v in values:
        cls = detect_value(v)
        click.echo(r.token(v, cls))


def _node_keys(values: tuple[str, ...]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for value in values:
        node, sep, path = value.partition("=")
        try:
            check_node_id(node)
        except ValueError as err:
            raise click.BadParameter(f"{value!r}: {err}", param_hint="--node-key") from None
        if not sep or not Path(path).is_file():
            raise click.BadParameter(f"{value!r}: give NODE=FILE, FILE a public key file", param_hint="--node-key")
        out[node] = Path(path)
    return out


@audit.command("verify")
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="More trusted public keys (other nodes).",
)
@click.option(
    "--node-key",
    "node_keys",
    multiple=True,
    metavar="NODE=FILE",
    callback=lambda _ctx, _param, values: _node_keys(values),
    help="A node's public key, trusted for that node's logs only (and the only key trusted for them).",
)
@click.option(
    "--archive",
    "archive_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify this archive file of the store's own chain instead.",
)
@click.option(
    "--archive-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also verify the archived log segments in DIR/<node>/, from each chain's start.",
)
@click.option("--json", "as_json", is_flag=True)
@_with_audit
def verify_cmd(
    obj: AuditContext,
    public_keys: tuple[Path, ...],
    node_keys: dict[str, Path],
    archive_file: Path | None,
    archive_dir: Path | None,
    as_json: bool,
) -> None:
    """Check every chain (the store's own, each node's log) and that the index agrees with
    the logs; exit 1 naming the first bad record (node and seq)."""
    keys = obj.public_keys(public_keys, node_keys)
    result: VerifyResult | AuditVerification
    if archive_file is not None:
        try:
            result = verify_archive(archive_file, keys)
        except (OSError, ValueError, KeyError) as err:
            raise click.ClickException(f"cannot read {archive_file}: {err}") from None
    else:
        with obj.store() as store:
            try:
                result = verify_all(
                    store, obj.audit.log_path(obj.state_dir), keys, archive_dir=archive_dir,
                    max_unsigned=2 * obj.audit.checkpoint_every,
                )
            except OSError as err:
                raise click.ClickException(f"cannot read the audit log: {err}") from None
    if as_json:
        click.echo(orjson.dumps(result.to_dict()).decode())
    else:
        click.echo(result.describe())
    if not result.ok:
        click.echo(f"first bad: {result.first_problem}", err=True)
        raise SystemExit(1)


@audit.command("archive")
@click.option("--before", required=True, help="Archive records older than this (ISO time or 90d).")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    help="Archive directory [default: archive/ in the state directory]: log segments go to "
    "OUT/<node>/, the store's own records to OUT/audit-<time>.jsonl (a path ending in .jsonl: "
    "that file, for the store's own records).",
)
@click.option("--node", help="Only this node's log (default: every log).")
@_with_audit
def archive_cmd(obj: AuditContext, before: str, out: Path | None, node: str | None) -> None:
    """Move old records out: each log's sealed segments whose records are all older than
    --before, and the store's own old records; what stays keeps verifying."""
    ts = _when(before)
    assert ts is not None
    signer = obj.signer(create=True)
    assert signer is not None
    out_dir = obj.state_dir / "archive"
    legacy_file: Path | None = None
    if out is not None and out.suffix == ".jsonl":
        legacy_file = out
    elif out is not None:
        out_dir = out
    log_dir = obj.audit.log_path(obj.state_dir)
    nodes = [node] if node is not None else log_nodes(log_dir)
    if node is not None and node not in log_nodes(log_dir):
        raise click.ClickException(f"no log of node {node} under {log_dir}")
    done = 0
    keys = obj.public_keys()
    with obj.store() as store:
        if store.head().seq > store.anchor().seq:  # the store's own chain (before the log)
            if legacy_file is None:
                stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
                legacy_file = out_dir / f"audit-{stamp}.jsonl"
            legacy_file.parent.mkdir(parents=True, exist_ok=True)
            try:
                res = archive(store, ts, legacy_file, signer, public_keys=keys)
            except ArchiveError as err:
                raise click.ClickException(str(err)) from None
            if res is not None:
                done += 1
                click.echo(
                    f"archived {res.records} records of the store's own chain (seq {res.first_seq}..{res.last_seq}) "
                    f"to {res.path}; new anchor {res.checkpoint.hash[:16]}… signed by key {res.checkpoint.key_id}"
                )
        for n in nodes:
            try:
                lres = archive_log(
                    log_dir, n, ts, out_dir, signer, public_keys=keys, indexed_through=store.index_cursor(n)
                )
            except ArchiveError as err:
                raise click.ClickException(str(err)) from None
            except (OSError, ValueError) as err:
                raise click.ClickException(f"node {n}: {err}") from None
            if lres is not None:
                done += 1
                segs = lres.segments
                click.echo(
                    f"node {n}: archived {len(segs)} segment{'s' if len(segs) > 1 else ''} "
                    f"({segs[0].segment}..{segs[-1].segment}, {lres.records} records, seq ..{segs[-1].last_seq}) "
                    f"to {lres.archive_dir}; manifest signed by key {lres.manifest.key_id}"
                )
    if not done:
        click.echo(f"nothing older than {iso(ts)} to archive")


@audit.command("reindex")
@click.option("--node", help="Only this node's log (default: every log under the log directory).")
@_with_audit
def reindex_cmd(obj: AuditContext, node: str | None) -> None:
    """Rebuild the search index from the logs (rows of nodes whose log is not here stay)."""
    log_dir = obj.audit.log_path(obj.state_dir)
    nodes = log_nodes(log_dir)
    if node is not None:
        if node not in nodes:
            raise click.ClickException(f"no log of node {node} under {log_dir}")
        nodes = [node]
    try:
        store = open_store(obj.audit, obj.state_dir)
    except (AuditStoreError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    try:
        for n in nodes:
            dropped, indexed = reindex(store, log_dir, n)
            click.echo(f"node {n}: {dropped} rows dropped, {indexed} records indexed")
        others = [n for n in store.index_nodes() if n not in nodes]
    except (AuditStoreError, OSError) as err:
        raise click.ClickException(str(err)) from None
    finally:
        store.close()
    if not nodes:
        click.echo(f"no logs under {log_dir}")
    if others and node is None:
        click.echo(f"left as they are (no log here): {', '.join(others)}")


@click.command("report")
@config_option
@click.option(
    "--since", default="30d", show_default=True, help="Start of the period (ISO time or 30d)."
)
@click.option("--until", help="End of the period (default: now).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory [default: reports/report-<time> in the state directory].",
)
@click.option("--title", default="Database access review", show_default=True)
@click.option("--organisation", help="Shown under the title.")
@click.option(
    "--archive-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Archived log segments (DIR/<node>/): verify them too, so their records count.",
)
def report(
    config_path: Path,
    since: str,
    until: str | None,
    out: Path | None,
    title: str,
    organisation: str | None,
    archive_dir: Path | None,
) -> None:
    """Write a compliance report (HTML and CSV) for a period of the audit trail."""
    from dbsentry.audit.report import build_report

    obj = load_audit_context(config_path)
    start = _when(since)
    assert start is not None
    end = _when(until) if until else _time.time()
    if out is None:
        # Next to the audit trail it reports on, never in the working directory (a checkout).
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = obj.state_dir / "reports" / f"report-{stamp}"
    with obj.store() as store:
        try:
            result = verify_all(
                store, obj.audit.log_path(obj.state_dir), obj.public_keys(), archive_dir=archive_dir,
                max_unsigned=2 * obj.audit.checkpoint_every,
            )
        except OSError as err:
            raise click.ClickException(f"cannot read the audit log: {err}") from None
        rep = build_report(
            store,
            since=start,
            until=end,
            out_dir=out,
            verification=result,
            signer=obj.signer(create=False),
            title=title,
            organisation=organisation,
        )
    click.echo(
        f"report for {iso(start)} .. {iso(end)}: {rep.statements} statements, chain {'intact' if rep.verification_ok else 'BROKEN'}"
    )
    if rep.left_out:
        click.echo(f"{rep.left_out} records after a chain's first break are left out (see audit verify)", err=True)
    click.echo(
        f"wrote {full_path(rep.out_dir / 'report.html')} and {len(rep.files) - 1} more files"
    )


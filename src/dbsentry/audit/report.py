"""The compliance report: access-review evidence for a period, as HTML and CSV.

One pass over the period's records builds: a summary, who used which connections, who
touched which sensitive data classes (masked or not), every denied attempt, every approval,
what AI agents did, privileged statements (DDL, roles and grants, high risk), and the chain
verification status.  It is built only from verified records: each chain (the store's own,
each node's log) up to its first break; records after it, and index rows of logs that were
not verified, are left out and counted.  The HTML is self-contained (no external assets); every table is also
written as CSV, and ``manifest.json`` lists the files' SHA-256 (signed with the audit key
when one is given) so the evidence itself can be checked later.
"""

from __future__ import annotations

import csv
import hashlib
import time as _time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import jinja2
import orjson

import dbsentry
from dbsentry.audit.keys import Signer
from dbsentry.audit.query import csv_safe, iso
from dbsentry.audit.store import AuditStore, StoredRecord
from dbsentry.audit.verify import AuditVerification, VerifyResult, verified_through

PRIVILEGED_CLASSES = frozenset({"ddl", "dcl", "role", "admin"})
PRIVILEGED_COMMANDS = (
    "GRANT",
    "REVOKE",
    "CREATE ROLE",
    "ALTER ROLE",
    "DROP ROLE",
    "CREATE USER",
    "ALTER USER",
    "DROP USER",
    "ALTER SYSTEM",
    "SET ROLE",
    "SET SESSION AUTHORIZATION",
    "COPY",
    "TRUNCATE",
    "DROP",
    "ALTER",
    "CREATE",
    "VACUUM FULL",
    "CLUSTER",
    "REINDEX",
    "SECURITY LABEL",
)
HTML_ROW_LIMIT = 1000


@dataclass
class _Totals:
    sessions: int = 0
    statements: int = 0
    denied: int = 0
    masked: int = 0
    privileged: int = 0
    errors: int = 0
    approvals_requested: int = 0
    approvals_granted: int = 0
    approvals_denied: int = 0
    outages: int = 0
    by_engine: dict[str, int] = field(default_factory=dict)  # statements per protocol


@dataclass
class _Who:
    kind: str
    sessions: int = 0
    statements: int = 0
    denied: int = 0
    masked: int = 0
    privileged: int = 0
    connections: set[str] = field(default_factory=set)
    tables: set[str] = field(default_factory=set)
    classes: set[str] = field(default_factory=set)
    first: float | None = None
    last: float | None = None

    def seen(self, t: float) -> None:
        self.first = t if self.first is None else min(self.first, t)
        self.last = t if self.last is None else max(self.last, t)


@dataclass
class _ClassAccess:
    statements: int = 0
    masked: int = 0
    unmasked: int = 0
    connections: set[str] = field(default_factory=set)
    first: float | None = None
    last: float | None = None


@dataclass(frozen=True, slots=True)
class ReportResult:
    out_dir: Path
    files: tuple[Path, ...]
    statements: int
    verification_ok: bool
    left_out: int = 0  # records in the period that are not verified (after a chain's break)


class _Table:
    """A CSV file written as rows arrive, and the first rows kept for the HTML."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)
        self._f: IO[str] = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._w = csv.writer(self._f)
        self._w.writerow(self.columns)
        self.rows: list[list[str]] = []
        self.count = 0

    def add(self, row: Sequence[Any]) -> None:
        cells = [_cell(v) for v in row]
        # the HTML shows the text as it is (escaped); the CSV defuses formulas
        self._w.writerow(
            [c if isinstance(v, int | float) else csv_safe(c) for v, c in zip(row, cells, strict=True)]
        )
        self.count += 1
        if len(self.rows) < HTML_ROW_LIMIT:
            self.rows.append(cells)

    def close(self) -> None:
        self._f.close()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list | tuple | set | frozenset):
        return (
            ", ".join(sorted(str(x) for x in v))
            if isinstance(v, set | frozenset)
            else ", ".join(str(x) for x in v)
        )
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return str(v)


def _is_privileged(d: dict[str, Any]) -> bool:
    if (d.get("class") or "").lower() in PRIVILEGED_CLASSES or (
        d.get("risk") or ""
    ).lower() == "high":
        return True
    cmd = (d.get("command") or "").upper()
    return any(cmd == p or cmd.startswith(p + " ") for p in PRIVILEGED_COMMANDS)


def _short(text: Any, n: int = 300) -> str:
    s = " ".join(str(text or "").split())
    return s if len(s) <= n else s[: n - 1] + "…"


_DENIED_COLUMNS = [
    "time", "identity", "kind", "connection", "engine", "environment", "command", "tables", "rules", "statement", "seq",
]  # fmt: skip
_APPROVAL_COLUMNS = [
    "time", "approval_id", "event", "requester", "reviewer", "requested_at", "decided_at", "decision",
    "reason", "review_comment", "connection", "environment", "statement", "seq",
]  # fmt: skip
_PRIVILEGED_COLUMNS = [
    "time", "identity", "kind", "connection", "engine", "environment", "command", "class", "risk", "decision",
    "approval_id", "statement", "seq",
]  # fmt: skip
_IDENTITY_COLUMNS = [
    "identity", "kind", "sessions", "statements", "denied", "masked", "privileged", "connections",
    "data_classes", "first_seen", "last_seen",
]  # fmt: skip
_AGENT_COLUMNS = [
    "agent", "sessions", "statements", "denied", "masked", "privileged", "connections", "tables",
    "data_classes", "first_seen", "last_seen",
]  # fmt: skip
_SENSITIVE_COLUMNS = ["identity", "kind", "data_class", "statements", "masked", "unmasked", "connections", "first", "last"]
_FILES = [
    "report.html", "summary.csv", "identities.csv", "sensitive_access.csv", "denied.csv", "approvals.csv",
    "agents.csv", "privileged.csv", "audit_events.csv",
]  # fmt: skip
_DENIED_DECISIONS = ("deny", "denied", "block", "blocked")


class _Collector:
    """One pass over the period's records: the totals, who did what, and the event tables."""

    def __init__(self, out_dir: Path) -> None:
        self.totals = _Totals()
        self.people: dict[str, _Who] = {}
        self.access: dict[tuple[str, str, str], _ClassAccess] = {}
        self.denied = _Table(out_dir / "denied.csv", _DENIED_COLUMNS)
        self.approvals = _Table(out_dir / "approvals.csv", _APPROVAL_COLUMNS)
        self.privileged = _Table(out_dir / "privileged.csv", _PRIVILEGED_COLUMNS)
        self.system = _Table(out_dir / "audit_events.csv", ["time", "event", "detail", "seq"])

    def close(self) -> None:
        for tbl in (self.denied, self.approvals, self.privileged, self.system):
            tbl.close()

    def add(self, seq: int | str, d: dict[str, Any]) -> None:
        t = d.get("type")
        when = float(d.get("time", 0.0))
        if t == "session" and d.get("event") == "opened":
            self._session(d, when)
        elif t == "statement":
            self._statement(seq, d, when)
        elif t == "completion":
            if d.get("error") or d.get("sqlstate"):
                self.totals.errors += 1
        elif t == "approval":
            self._approval(seq, d, when)
        elif t == "system":
            if d.get("event") == "audit_store_recovered":
                self.totals.outages += 1
            self.system.add([iso(when), d.get("event"), orjson.dumps(d.get("detail", {})).decode(), seq])

    def _session(self, d: dict[str, Any], when: float) -> None:
        self.totals.sessions += 1
        who = self.people.setdefault(d["identity"], _Who(d.get("identity_kind") or "human"))
        who.sessions += 1
        who.seen(when)
        if d.get("connection"):
            who.connections.add(d["connection"])

    def _statement(self, seq: int | str, d: dict[str, Any], when: float) -> None:
        totals = self.totals
        totals.statements += 1
        engine = d.get("engine") or "postgres"
        totals.by_engine[engine] = totals.by_engine.get(engine, 0) + 1
        ident = d.get("identity") or "?"
        kind = d.get("identity_kind") or "human"
        who = self.people.setdefault(ident, _Who(kind))
        who.statements += 1
        who.seen(when)
        conn = d.get("connection") or ""
        if conn:
            who.connections.add(conn)
        who.tables.update(d.get("tables") or ())
        masked = set(d.get("masked_classes") or ())
        classes = set(d.get("data_classes") or ()) | masked
        who.classes.update(classes)
        if d.get("masked_columns") or masked:
            totals.masked += 1
            who.masked += 1
        for cls in classes:
            self._class_access(ident, kind, cls, cls in masked, conn, when)
        if (d.get("decision") or "").lower() in _DENIED_DECISIONS:
            totals.denied += 1
            who.denied += 1
            self.denied.add(
                [iso(when), ident, kind, conn, engine, d.get("environment"),
                 d.get("command"), d.get("tables"), d.get("rules"), _short(d.get("statement")), seq]
            )  # fmt: skip
        if _is_privileged(d):
            totals.privileged += 1
            who.privileged += 1
            self.privileged.add(
                [iso(when), ident, kind, conn, engine, d.get("environment"), d.get("command"), d.get("class"),
                 d.get("risk"), d.get("decision"), d.get("approval_id"), _short(d.get("statement")), seq]
            )  # fmt: skip

    def _class_access(self, ident: str, kind: str, cls: str, masked: bool, conn: str, when: float) -> None:
        a = self.access.setdefault((ident, kind, cls), _ClassAccess())
        a.statements += 1
        if masked:
            a.masked += 1
        else:
            a.unmasked += 1
        if conn:
            a.connections.add(conn)
        a.first = when if a.first is None else min(a.first, when)
        a.last = when if a.last is None else max(a.last, when)

    def _approval(self, seq: int | str, d: dict[str, Any], when: float) -> None:
        ev = d.get("event")
        if ev == "requested":
            self.totals.approvals_requested += 1
        elif ev == "approved":
            self.totals.approvals_granted += 1
        elif ev == "denied":
            self.totals.approvals_denied += 1
        self.approvals.add(
            [iso(when), d.get("approval_id"), ev, d.get("requester"), d.get("reviewer"), iso(d.get("requested_at")),
             iso(d.get("decided_at")), d.get("decision"), d.get("reason"), d.get("review_comment"),
             d.get("connection"), d.get("environment"), _short(d.get("statement")), seq]
        )  # fmt: skip


def _people_tables(out_dir: Path, c: _Collector) -> tuple[_Table, _Table, _Table]:
    """identities.csv, agents.csv and sensitive_access.csv, from what the pass collected."""
    identities = _Table(out_dir / "identities.csv", _IDENTITY_COLUMNS)
    agents = _Table(out_dir / "agents.csv", _AGENT_COLUMNS)
    for name, w in sorted(c.people.items()):
        identities.add(
            [name, w.kind, w.sessions, w.statements, w.denied, w.masked, w.privileged, w.connections, w.classes,
             iso(w.first), iso(w.last)]
        )  # fmt: skip
        if w.kind == "agent":
            agents.add(
                [name, w.sessions, w.statements, w.denied, w.masked, w.privileged, w.connections,
                 sorted(w.tables)[:50], w.classes, iso(w.first), iso(w.last)]
            )  # fmt: skip
    sensitive = _Table(out_dir / "sensitive_access.csv", _SENSITIVE_COLUMNS)
    for (ident, kind, cls), a in sorted(c.access.items()):
        sensitive.add(
            [ident, kind, cls, a.statements, a.masked, a.unmasked, a.connections, iso(a.first), iso(a.last)]
        )
    for tbl in (identities, agents, sensitive):
        tbl.close()
    return identities, agents, sensitive


Verification = AuditVerification | VerifyResult


def _verified(verification: Verification | None) -> Callable[[StoredRecord], bool]:
    """Whether a stored record is verified: the store's own records up to its chain's
    first break, a log's records up to its node's first break.  Without a verification
    every record counts (the report then says NOT VERIFIED)."""
    if verification is None:
        return lambda r: True
    if isinstance(verification, VerifyResult):  # the store's own chain alone
        through = verified_through(verification)
        return lambda r: r.node is None and r.seq <= through
    legacy = verification.legacy_through()
    nodes = verification.node_ranges()

    def verified(r: StoredRecord) -> bool:
        if r.node is None:
            return r.seq <= legacy
        first, last = nodes.get(r.node, (0, 0))
        return r.node_seq is not None and first < r.node_seq <= last

    return verified


def _verified_ranges(verification: Verification | None) -> str:
    if verification is None:
        return "not run"
    if isinstance(verification, VerifyResult):
        verification = AuditVerification(verification, ())
    parts = []
    lg = verification.legacy
    if lg is not None and (lg.records or lg.anchor_seq):
        parts.append(f"store's own chain {lg.anchor_seq + 1}..{verification.legacy_through()}")
    parts += [f"node {n.node} {n.chain.anchor_seq + 1}..{n.verified_through}" for n in verification.nodes]
    return "; ".join(parts) or "none"


def _record_label(r: StoredRecord) -> int | str:
    """How the report names a record: its node and seq in that node's log, or its seq in
    the store's own chain."""
    return f"{r.node}:{r.node_seq}" if r.node is not None else r.seq


def _summary_rows(
    store: AuditStore,
    since: float,
    until: float,
    generated: float,
    verification: Verification | None,
    c: _Collector,
    left_out: int,
) -> list[tuple[str, Any]]:
    totals, people = c.totals, c.people
    chain = "intact" if verification and verification.ok else ("BROKEN" if verification else "not run")
    return [
        ("period_start", iso(since)),
        ("period_end", iso(until)),
        ("generated_at", iso(generated)),
        ("generated_by", f"dbsentry {dbsentry.__version__}"),
        ("audit_store", store.describe()),
        ("chain_verification", chain),
        ("verified_records", _verified_ranges(verification)),
        ("records_left_out", left_out),
        ("identities", len(people)),
        ("human_identities", sum(1 for w in people.values() if w.kind != "agent")),
        ("agent_identities", sum(1 for w in people.values() if w.kind == "agent")),
        ("sessions", totals.sessions),
        ("statements", totals.statements),
        ("statements_by_engine", ", ".join(f"{e} {n}" for e, n in sorted(totals.by_engine.items())) or "-"),
        ("denied_statements", totals.denied),
        ("masked_statements", totals.masked),
        ("privileged_statements", totals.privileged),
        ("failed_statements", totals.errors),
        ("approvals_requested", totals.approvals_requested),
        ("approvals_granted", totals.approvals_granted),
        ("approvals_denied", totals.approvals_denied),
        ("audit_store_outages", totals.outages),
    ]


def _write_manifest(
    out_dir: Path, since: float, until: float, generated: float, verification: Verification | None, signer: Signer | None
) -> list[Path]:
    """manifest.json (a SHA-256 per file, the chain's verification), signed when a key is
    given; the files of the report."""
    manifest: dict[str, Any] = {
        "generated_at": iso(generated),
        "period": {"start": iso(since), "end": iso(until)},
        "files": {n: hashlib.sha256((out_dir / n).read_bytes()).hexdigest() for n in _FILES},
        "chain": verification.to_dict() if verification is not None else None,
    }
    body = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
    (out_dir / "manifest.json").write_bytes(body)
    files = [out_dir / n for n in [*_FILES, "manifest.json"]]
    if signer is not None:
        sig = signer.sign_bytes(body)
        (out_dir / "manifest.sig").write_text(f"{signer.key_id} {sig}\n")
        files.append(out_dir / "manifest.sig")
    return files


def build_report(
    store: AuditStore,
    *,
    since: float,
    until: float | None = None,
    out_dir: Path,
    verification: Verification | None = None,
    signer: Signer | None = None,
    title: str = "Database access review",
    organisation: str | None = None,
) -> ReportResult:
    """Write ``report.html``, the CSV tables and ``manifest.json`` into ``out_dir``, from
    the records ``verification`` verified (see :func:`_verified`)."""
    until = _time.time() if until is None else until
    out_dir.mkdir(parents=True, exist_ok=True)
    c = _Collector(out_dir)
    verified = _verified(verification)
    left_out = 0
    try:
        for r in store.iter_records(since=since, until=until):
            if verified(r):
                c.add(_record_label(r), r.data())
            else:
                left_out += 1
    finally:
        c.close()
    identities, agents, sensitive = _people_tables(out_dir, c)

    generated = _time.time()
    summary_rows = _summary_rows(store, since, until, generated, verification, c, left_out)
    with open(out_dir / "summary.csv", "w", newline="", encoding="utf-8") as f:
        sw = csv.writer(f)
        sw.writerow(["key", "value"])
        sw.writerows([(k, csv_safe(_cell(v))) for k, v in summary_rows])

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(_TEMPLATE).render(
        title=title,
        organisation=organisation,
        summary=summary_rows,
        totals=c.totals,
        verification=verification,
        verification_text=verification.describe() if verification is not None else "not run",
        left_out=left_out,
        period=(iso(since), iso(until)),
        generated=iso(generated),
        sections=[
            ("identities", "Access by identity", "Every identity that opened a session or ran a statement in the period.", identities),
            ("sensitive", "Sensitive data access", "Who touched which data classes, and whether the values were masked.", sensitive),
            ("denied", "Denied attempts", "Every statement the policy refused.", c.denied),
            ("approvals", "Approvals", "Every approval request and decision.", c.approvals),
            ("agents", "AI agent activity", "What identities of kind agent did.", agents),
            ("privileged", "Privileged statements", "DDL, role and grant changes, and statements rated high risk.", c.privileged),
            ("events", "Audit trail events", "Outages and recoveries of the audit store itself.", c.system),
        ],
        limit=HTML_ROW_LIMIT,
        version=dbsentry.__version__,
    )
    (out_dir / "report.html").write_text(html, encoding="utf-8")
    files = _write_manifest(out_dir, since, until, generated, verification, signer)
    return ReportResult(out_dir, tuple(files), c.totals.statements, bool(verification and verification.ok), left_out)


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }} — {{ period[0] }} to {{ period[1] }}</title>
<style>
:root { --ink:#1b1f24; --muted:#5b6470; --line:#d6dbe1; --ok:#17663a; --bad:#a4161a; --bg:#f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: var(--ink);
       margin: 0 auto; max-width: 1200px; padding: 32px 24px 64px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 36px 0 6px; padding-top: 8px; border-top: 2px solid var(--ink); }
p.lead, p.note { color: var(--muted); margin: 0 0 12px; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 16px 0; }
.meta dt { color: var(--muted); } .meta dd { margin: 0; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 10px; font-weight: 600; color: #fff; }
.ok { background: var(--ok); } .bad { background: var(--bad); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 10px; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; background: var(--bg); }
.card b { display: block; font-size: 22px; } .card span { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 12.5px; }
th, td { border: 1px solid var(--line); padding: 4px 6px; text-align: left; vertical-align: top; }
th { background: var(--bg); position: sticky; top: 0; }
td.stmt { font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-word; max-width: 420px; }
pre { background: var(--bg); border: 1px solid var(--line); padding: 10px; white-space: pre-wrap; }
nav a { margin-right: 12px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
@media print { th { position: static; } h2 { page-break-before: auto; } }
</style></head>
<body>
<h1>{{ title }}</h1>
<p class="lead">{% if organisation %}{{ organisation }} · {% endif %}Evidence generated from the dbsentry tamper-evident audit trail.</p>
<dl class="meta">
  <dt>Period</dt><dd>{{ period[0] }} to {{ period[1] }} (UTC)</dd>
  <dt>Generated</dt><dd>{{ generated }} by dbsentry {{ version }}</dd>
  <dt>Audit chain</dt><dd>{% if verification is none %}<span class="badge bad">NOT VERIFIED</span>
    {% elif verification.ok %}<span class="badge ok">INTACT</span>{% else %}<span class="badge bad">BROKEN</span>{% endif %}</dd>
</dl>
{% if left_out %}<p class="lead"><span class="badge bad">NOT COMPLETE</span> {{ left_out }} records of the period are left out of this report:
they come after a chain's first break, or from a log that was not verified (see Chain verification).</p>{% endif %}
<nav>{% for key, heading, _, _ in sections %}<a href="#{{ key }}">{{ heading }}</a>{% endfor %}<a href="#chain">Chain verification</a></nav>

<h2 id="summary">Summary</h2>
<div class="cards">
  <div class="card"><b>{{ totals.sessions }}</b><span>sessions</span></div>
  <div class="card"><b>{{ totals.statements }}</b><span>statements</span></div>
  <div class="card"><b>{{ totals.denied }}</b><span>denied attempts</span></div>
  <div class="card"><b>{{ totals.masked }}</b><span>statements with masked data</span></div>
  <div class="card"><b>{{ totals.privileged }}</b><span>privileged statements</span></div>
  <div class="card"><b>{{ totals.approvals_requested }}</b><span>approvals requested</span></div>
  <div class="card"><b>{{ totals.approvals_granted }}</b><span>approvals granted</span></div>
  <div class="card"><b>{{ totals.outages }}</b><span>audit store outages</span></div>
</div>
<table><tbody>{% for k, v in summary %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</tbody></table>

{% for key, heading, lead, t in sections %}
<h2 id="{{ key }}">{{ heading }} ({{ t.count }})</h2>
<p class="lead">{{ lead }}{% if t.count > limit %} Showing the first {{ limit }}; all {{ t.count }} are in {{ t.path.name }}.{% else %} Also in {{ t.path.name }}.{% endif %}</p>
{% if t.count == 0 %}<p class="note">None in this period.</p>{% else %}
<table><thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead><tbody>
{% for row in t.rows %}<tr>{% for c in row %}<td{% if t.columns[loop.index0] == 'statement' %} class="stmt"{% endif %}>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>{% endif %}
{% endfor %}

<h2 id="chain">Chain verification</h2>
<p class="lead">Every record is hash-chained (SHA-256) to the one before it; checkpoints are signed with Ed25519.
A broken chain names the first record that was changed, removed or inserted.</p>
<pre>{{ verification_text }}</pre>
<footer>The files of this report and their SHA-256 are listed in manifest.json{% if true %} (signed in manifest.sig when the audit key was available){% endif %}.</footer>
</body></html>
"""

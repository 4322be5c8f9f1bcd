"""Reading the audit trail: search, tail and export, all streaming."""

from __future__ import annotations

import csv
import re
import time as _time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from dbsentry.audit.store import AuditStore, SearchFilter, StoredRecord

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

ROW_FIELDS = (
    "seq",
    "id",
    "time",
    "session_id",
    "identity",
    "identity_kind",
    "connection",
    "environment",
    "database",
    "application_name",
    "statement",
    "params",
    "fingerprint",
    "command",
    "class",
    "risk",
    "tables",
    "columns_read",
    "columns_written",
    "data_classes",
    "decision",
    "rules",
    "approval_id",
    "masked_columns",
    "masked_classes",
    "correlation",
    "rows",
    "duration_ms",
    "sqlstate",
    "error",
)
"""The fields of a search/export row, in CSV column order."""


def parse_when(value: str, now: float | None = None) -> float:
    """A point in time as unix seconds: ``30m``/``12h``/``7d``/``2w``/``45s`` ago, or ISO 8601.

    ISO times without an offset are taken as UTC.
    """
    m = _RELATIVE.match(value)
    if m:
        base = _time.time() if now is None else now
        return base - int(m.group(1)) * _UNITS[m.group(2)]
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"not a time: {value!r} (use ISO 8601 like 2024-05-01T12:00Z, or 30m, 12h, 7d)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def statement_row(stored: StoredRecord, completion: bytes | None) -> dict[str, Any]:
    """A statement record joined with its completion, as one flat JSON-friendly dict."""
    d = stored.data()
    c: dict[str, Any] = orjson.loads(completion) if completion is not None else {}
    return {
        "seq": stored.seq,
        "id": d.get("id"),
        "time": iso(d.get("time")),
        "session_id": d.get("session_id"),
        "identity": d.get("identity"),
        "identity_kind": d.get("identity_kind"),
        "connection": d.get("connection"),
        "environment": d.get("environment"),
        "database": d.get("database"),
        "engine": d.get("engine", "postgres"),  # records older than the field are PostgreSQL's
        "application_name": d.get("application_name"),
        "statement": d.get("statement"),
        "params": d.get("params"),
        "fingerprint": d.get("fingerprint"),
        "command": d.get("command"),
        "class": d.get("class"),
        "risk": d.get("risk"),
        "tables": d.get("tables", []),
        "columns_read": d.get("columns_read", []),
        "columns_written": d.get("columns_written", []),
        "data_classes": d.get("data_classes", []),
        "decision": d.get("decision"),
        "rules": d.get("rules", []),
        "approval_id": d.get("approval_id"),
        "masked_columns": d.get("masked_columns", []),
        "masked_classes": d.get("masked_classes", []),
        "correlation": d.get("correlation", {}),
        "rows": c.get("rows"),
        "duration_ms": c.get("duration_ms"),
        "sqlstate": c.get("sqlstate"),
        "error": c.get("error"),
    }


def search(
    store: AuditStore, flt: SearchFilter, *, limit: int | None = 200, newest_first: bool = True
) -> Iterator[dict[str, Any]]:
    """Statement rows matching ``flt`` (see ``statement_row``), streamed."""
    for stored, completion in store.search_statements(flt, descending=newest_first, limit=limit):
        yield statement_row(stored, completion)


def raw_row(r: StoredRecord) -> dict[str, Any]:
    """A stored record with its chain fields, for raw export and ``tail --json``."""
    return {
        "seq": r.seq,
        "time": iso(r.record.time),
        "prev_hash": r.prev_hash,
        "hash": r.hash,
        "record": r.data(),
    }


def outcome_text(
    rows: int | None,
    duration_ms: float | None,
    sqlstate: str | None,
    decision: str | None = None,
) -> str:
    """What became of a statement, in words: ``error 42501``, ``3 rows``, ``ok`` (done, no
    row count: DDL, SET...), ``not run`` (refused, no outcome) or ``no outcome yet``."""
    if sqlstate:
        return f"error {sqlstate}"
    if rows is not None:
        return f"{rows} row{'' if rows == 1 else 's'}"
    if duration_ms is not None:
        return "ok"
    if decision in ("deny", "require_approval"):
        return "not run"
    return "no outcome yet"


def summary_line(r: StoredRecord) -> str:
    """One human-readable line for ``audit tail``."""
    d = r.data()
    t = d.get("type")
    who = d.get("identity") or d.get("requester") or "-"
    kind = d.get("identity_kind") or d.get("requester_kind") or ""
    head = f"{iso(d.get('time'))} #{r.seq} {t:<10} {who}{f' ({kind})' if kind == 'agent' else ''}"
    if t == "statement":
        text = " ".join(str(d.get("statement", "")).split())
        if len(text) > 120:
            text = text[:117] + "..."
        where = f"{d.get('connection') or '-'}/{d.get('environment') or '-'}"
        return f"{head} {where} {d.get('decision')}: {text}"
    if t == "completion":
        outcome = outcome_text(d.get("rows"), d.get("duration_ms"), d.get("sqlstate"))
        err = f": {d.get('error')}" if d.get("error") else ""
        took = f" in {d.get('duration_ms')} ms" if d.get("duration_ms") is not None else ""
        return f"{head} {outcome}{took}{err}"
    if t == "session":
        extra = f" {d.get('end_reason')}" if d.get("end_reason") else ""
        return f"{head} {d.get('event')} {d.get('connection') or '-'} from {d.get('client_addr') or '-'}{extra}"
    if t == "approval":
        return f"{head} {d.get('event')} {d.get('approval_id')} reviewer={d.get('reviewer') or '-'}"
    return f"{head} {d.get('event')} {orjson.dumps(d.get('detail', {})).decode()}"


def tail(
    store: AuditStore,
    *,
    last: int = 20,
    follow: bool = False,
    poll_seconds: float = 1.0,
    stop: Any = None,
) -> Iterator[StoredRecord]:
    """The last ``last`` records, then (``follow``) new ones as they are committed.

    ``stop`` is an optional callable returning True to end following (tests)."""
    recent = list(store.iter_records(descending=True, limit=last)) if last > 0 else []
    recent.reverse()
    yield from recent
    after = recent[-1].seq if recent else store.head().seq
    while follow and not (stop is not None and stop()):
        got = False
        for r in store.iter_records(after_seq=after, limit=1000):
            yield r
            after = r.seq
            got = True
        if not got:
            _time.sleep(poll_seconds)


# A spreadsheet opening a CSV runs a cell starting with one of these as a formula
# (OWASP "CSV injection"); statements and identities come from clients.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """``value`` for a CSV cell: text that a spreadsheet would take for a formula gets a
    leading single quote; numbers are left as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _csv_cell(value: Any) -> Any:
    if isinstance(value, list):
        return csv_safe(";".join("" if v is None else str(v) for v in value))
    if isinstance(value, dict):
        return csv_safe(";".join(f"{k}={v}" for k, v in value.items()))
    return "" if value is None else csv_safe(value)


def export_jsonl(store: AuditStore, flt: SearchFilter, out: IO[bytes], *, raw: bool = False) -> int:
    """Write matching statement rows (or, ``raw``, every record in the period with its chain
    fields) as JSON lines, oldest first, in constant memory.  Returns the number written."""
    n = 0
    if raw:
        for r in store.iter_records(since=flt.since, until=flt.until):
            out.write(orjson.dumps(raw_row(r)) + b"\n")
            n += 1
        return n
    for row in search(store, flt, limit=None, newest_first=False):
        out.write(orjson.dumps(row) + b"\n")
        n += 1
    return n


def export_csv(store: AuditStore, flt: SearchFilter, out: IO[str]) -> int:
    """Write matching statement rows as CSV (lists joined with ``;``), oldest first."""
    w = csv.writer(out)
    w.writerow(ROW_FIELDS)
    n = 0
    for row in search(store, flt, limit=None, newest_first=False):
        w.writerow([_csv_cell(row[f]) for f in ROW_FIELDS])
        n += 1
    return n

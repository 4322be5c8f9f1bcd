"""The compliance report: files, sections, contents, manifest."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# The populated store of the query tests, reused.
from test_audit_query import T0, populate  # type: ignore[import-not-found]

from dbsentry.audit.keys import MANIFEST_DOMAIN, Signer, load_or_create_signing_key
from dbsentry.audit.records import StatementRecord
from dbsentry.audit.report import build_report
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import encode
from dbsentry.audit.verify import verify


def make(tmp_path: Path) -> tuple[SQLiteStore, Signer]:
    store = SQLiteStore(tmp_path / "audit.db")
    signer = Signer(load_or_create_signing_key(tmp_path / "k.key"))
    populate(store, signer)
    return store, signer


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_sections_and_tables(tmp_path: Path) -> None:
    store, signer = make(tmp_path)
    out = tmp_path / "report"
    res = build_report(
        store,
        since=T0 - 60,
        until=T0 + 60,
        out_dir=out,
        verification=verify(store, signer.public_key),
        signer=signer,
        organisation="Acme",
    )
    assert res.statements == 5 and res.verification_ok
    html = (out / "report.html").read_text()
    for heading in (
        "Summary",
        "Access by identity",
        "Sensitive data access",
        "Denied attempts",
        "Approvals",
        "AI agent activity",
        "Privileged statements",
        "Chain verification",
        "INTACT",
        "Acme",
    ):
        assert heading in html, heading
    assert "<link" not in html and "<script" not in html and "http" not in html.split("<body>")[0]
    # denied attempts
    denied = rows(out / "denied.csv")
    assert [d["statement"] for d in denied] == ["DROP TABLE orders"]
    assert denied[0]["rules"] == "no-ddl-prod"
    # sensitive access: alice read pii.email masked; the agent touched financial unmasked
    sens = {(r["identity"], r["data_class"]): r for r in rows(out / "sensitive_access.csv")}
    assert sens[("alice@example.com", "pii.email")]["masked"] == "1"
    assert sens[("agent-42", "financial")]["unmasked"] == "1"
    # approvals, both steps
    appr = rows(out / "approvals.csv")
    assert [a["event"] for a in appr] == ["requested", "approved"]
    assert appr[1]["reviewer"] == "carol@example.com" and appr[0]["reason"] == "onboarding analyst"
    # agents
    agents = rows(out / "agents.csv")
    assert (
        agents[0]["agent"] == "agent-42"
        and agents[0]["statements"] == "2"
        and agents[0]["sessions"] == "1"
    )
    # privileged: the DROP (ddl, high risk) and the GRANT (dcl)
    priv = rows(out / "privileged.csv")
    assert sorted(p["command"] for p in priv) == ["DROP TABLE", "GRANT"]
    summary = {r["key"]: r["value"] for r in rows(out / "summary.csv")}
    assert summary["statements"] == "5" and summary["denied_statements"] == "1"
    assert summary["chain_verification"] == "intact"
    assert summary["failed_statements"] == "1"


def test_report_manifest_is_signed(tmp_path: Path) -> None:
    store, signer = make(tmp_path)
    out = tmp_path / "r"
    build_report(
        store,
        since=T0 - 60,
        until=T0 + 60,
        out_dir=out,
        verification=verify(store, signer.public_key),
        signer=signer,
    )
    body = (out / "manifest.json").read_bytes()
    manifest = orjson.loads(body)
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    key_id, sig = (out / "manifest.sig").read_text().split()
    assert key_id == signer.key_id
    pub: Ed25519PublicKey = signer.public_key
    pub.verify(bytes.fromhex(sig), MANIFEST_DOMAIN + body)


def test_report_escapes_and_shows_broken_chain(tmp_path: Path) -> None:
    store, signer = make(tmp_path)
    store.append_batch(
        [
            encode(
                StatementRecord(
                    time=T0 + 10,
                    session_id="x",
                    identity="<script>alert(1)</script>",
                    identity_kind="human",
                    statement="select 1",
                    decision="deny",
                )
            )
        ]
    )
    out = tmp_path / "ok"
    res = build_report(
        store, since=T0 - 60, until=T0 + 60, out_dir=out, verification=verify(store, signer.public_key)
    )
    assert res.verification_ok and res.left_out == 0
    html = (out / "report.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    # Checked with a key that did not sign the checkpoints: the chain does not verify
    # from the first checkpoint on, and what comes after it is left out of the report.
    other = Signer(load_or_create_signing_key(tmp_path / "other.key"))
    out = tmp_path / "r"
    res = build_report(
        store,
        since=T0 - 60,
        until=T0 + 60,
        out_dir=out,
        verification=verify(store, other.public_key),
    )
    assert not res.verification_ok
    assert res.left_out > 0
    html = (out / "report.html").read_text()
    assert "BROKEN" in html and "NOT COMPLETE" in html
    assert "&lt;script&gt;" not in html  # after the break: not presented as evidence
    assert not (out / "manifest.sig").exists()


def test_report_empty_period(tmp_path: Path) -> None:
    store, _ = make(tmp_path)
    res = build_report(store, since=0, until=1, out_dir=tmp_path / "e")
    assert res.statements == 0
    assert "None in this period." in (tmp_path / "e" / "report.html").read_text()

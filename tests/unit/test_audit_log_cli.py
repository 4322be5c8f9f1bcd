"""``dbsentry audit verify / archive / reindex`` and ``dbsentry report`` on a state
directory holding a node's audit log, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.keys import Signer, load_or_create_signing_key
from dbsentry.audit.log import KIND_RECORD, list_segments, parse_frames, record_frame
from dbsentry.audit.logwriter import LogFile
from dbsentry.audit.records import StatementRecord, payload_bytes
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import encode
from dbsentry.cli import main

CONFIG = "{state_dir: state, connections: {prod: {database: app, user: app}}}\n"
NODE = "node-a"
T0 = 1_714_560_000.0


def stmt(i: int, identity: str = "alice@example.com") -> StatementRecord:
    return StatementRecord(
        time=T0 + i,
        session_id="s1",
        identity=identity,
        identity_kind="human",
        connection="prod",
        statement=f"SELECT {i}",
        decision="allow",
    )


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """dbsentry.yaml and a state directory with 20 records in the log (a few segments)."""
    (tmp_path / "dbsentry.yaml").write_text(CONFIG)
    state = tmp_path / "state"
    signer = Signer(load_or_create_signing_key(AuditConfig().signing_key_path(state)))
    lf = LogFile(AuditConfig().log_path(state), NODE, signer=signer, segment_bytes=1500)
    lf.open()
    for i in range(1, 21):
        lf.append(payload_bytes(stmt(i)))
        lf.flush()
    lf.close()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def node_dir(here: Path) -> Path:
    return here / "state" / "audit-log" / NODE


def change_record(here: Path, seq: int) -> None:
    """Change a record's payload in place (a valid frame, the hash left as it was)."""
    for _, path in list_segments(node_dir(here)):
        data = path.read_bytes()
        frames, _, _ = parse_frames(data)
        for f in frames:
            if f.kind == KIND_RECORD and f.seq == seq:
                forged = f.payload.replace(b"alice@", b"mallo@")
                path.write_bytes(data[: f.offset] + record_frame(seq, f.prev_hash, f.hash, forged) + data[f.end :])
                return
    raise AssertionError(f"no record {seq}")


def test_verify_checks_the_log_and_the_index(here: Path) -> None:
    res = run("audit", "verify")
    assert res.exit_code == 0, res.output
    assert f"node {NODE} chain: INTACT" in res.output
    assert "records: 20 (seq 1..20, anchor 0)" in res.output
    assert "index: 20 of 20 rows agree with the log" in res.output  # indexed before verifying
    assert "legacy chain (the audit store's records from before the log): none" in res.output


def test_verify_names_node_and_seq_of_the_first_break(here: Path) -> None:
    run("audit", "verify")  # indexed as it was
    change_record(here, 7)
    res = run("audit", "verify")
    assert res.exit_code == 1
    assert f"node {NODE} chain: BROKEN" in res.output
    assert f"first bad: changed: node {NODE} record 7: content does not match its hash" in res.stderr
    data = json.loads(run("audit", "verify", "--json").stdout)
    assert data["ok"] is False
    assert data["first_problem"] == {
        "kind": "changed",
        "node": NODE,
        "seq": 7,
        "message": "content does not match its hash",
    }
    kinds = {(p["kind"], p["seq"]) for p in data["problems"]}
    assert ("index_changed", 7) in kinds  # the index still shows the record as it was
    assert data["nodes"][0]["verified_through"] == 6


def test_legacy_store_keeps_verifying_beside_the_log(here: Path) -> None:
    """An audit.db from before the log: its chain is checked as it always was."""
    state = here / "state"
    store = SQLiteStore(AuditConfig().sqlite_path(state))
    store.append_batch([encode(stmt(i, "bob@example.com")) for i in range(3)])
    store.add_checkpoint(Signer(load_or_create_signing_key(AuditConfig().signing_key_path(state))))
    store.close()
    res = run("audit", "verify")
    assert res.exit_code == 0, res.output
    assert "legacy chain (the audit store's records from before the log): INTACT" in res.output
    assert "records: 3 (seq 1..3, anchor 0)" in res.output


def test_reindex_prints_counts(here: Path) -> None:
    run("audit", "verify")
    res = run("audit", "reindex")
    assert res.exit_code == 0, res.output
    assert f"node {NODE}: 20 rows dropped, 20 records indexed" in res.output
    res = run("audit", "reindex", "--node", "nobody")
    assert res.exit_code == 1 and "no log of node nobody" in res.output


def test_archive_then_verify(here: Path) -> None:
    before = "2024-05-01T10:40:11Z"  # T0 + 11: records 1..10 are older
    res = run("audit", "archive", "--before", before)
    assert res.exit_code == 0, res.output
    assert f"node {NODE}: archived" in res.output
    archived = here / "state" / "archive" / NODE
    assert list(archived.glob("*.seg"))
    res = run("audit", "verify")
    assert res.exit_code == 0, res.output
    assert "archived" in res.output
    res = run("audit", "verify", "--archive-dir", str(here / "state" / "archive"))
    assert res.exit_code == 0, res.output
    assert "records: 20 (seq 1..20, anchor 0)" in res.output
    assert "nothing older than" in run("audit", "archive", "--before", before).output


def test_report_leaves_out_what_does_not_verify(here: Path) -> None:
    run("audit", "verify")
    change_record(here, 15)
    res = run("report", "--since", "2024-05-01T00:00:00Z", "--until", "2024-05-02T00:00:00Z", "--out", "r")
    assert res.exit_code == 0, res.output
    assert "14 statements, chain BROKEN" in res.output
    assert "6 records after a chain's first break are left out" in res.stderr
    summary = dict(line.split(",", 1) for line in (here / "r" / "summary.csv").read_text().splitlines()[1:])
    assert summary["verified_records"] == f"node {NODE} 1..14"
    assert summary["records_left_out"] == "6"

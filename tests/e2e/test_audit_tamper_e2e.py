"""Tampering with the audit trail behind the proxy's back is caught by ``audit verify``.

A running proxy records some traffic (its log rolls over to a new segment every second)
and stops.  Then, on copies of its state, someone with write access to the files changes
a field of one record in the log (alone, or in the log and the search index alike),
deletes a record, inserts a forged, correctly hashed record and renumbers the rest,
removes a segment, cuts the log's end off, or edits the index alone.  ``dbsentry audit
verify`` must exit non-zero naming the node and the record's seq; the untouched copy
verifies.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from dbsentry.audit.log import KIND_RECORD, link_hash, list_segments, parse_frames, record_frame
from dbsentry.audit.records import StatementRecord, payload_bytes
from support.audit import verify
from support.pg import PgServer
from support.proxy import dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

HUMAN = "alice@example.com"
AUDIT = {"audit": {"segment_seconds": 1}}


@dataclass(frozen=True)
class Original:
    state_dir: Path
    node: str
    records: int
    denied_seq: int  # a statement record with decision deny, in the middle of the chain


def log_records(node_dir: Path) -> list[tuple[Path, int, dict[str, object]]]:
    """(segment, seq, record) of every record in a node's log."""
    out = []
    for _, path in list_segments(node_dir):
        frames, _, error = parse_frames(path.read_bytes())
        assert error is None, (path, error)
        out += [(path, f.seq, json.loads(f.payload)) for f in frames if f.kind == KIND_RECORD]
    return out


@pytest.fixture(scope="module")
def original(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Original:
    directory = tmp_path_factory.mktemp("audit_tamper")
    config = write_config(directory, pg_server, extra=AUDIT)
    with run_proxy(config) as proxy:
        for i in range(3):
            with psycopg.connect(proxy.dsn(HUMAN), autocommit=True) as conn:
                conn.execute("select %t::int + 1", (i,))
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(f"drop table not_here_{i}")
                conn.execute("select 'after'")
            time.sleep(1.3)  # the log rolls over: a sealed segment per session
    state = directory / "state"
    (node,) = [p.name for p in (state / "audit-log").iterdir()]
    records = log_records(state / "audit-log" / node)
    denied = [
        seq
        for _, seq, r in records
        if r["type"] == "statement" and r["decision"] == "deny"
    ]
    assert len(denied) == 3
    assert len(list_segments(state / "audit-log" / node)) >= 3
    assert verify(config).returncode == 0  # indexes the log as the proxy left it
    return Original(state, node, len(records), denied[1])


@dataclass(frozen=True)
class Copy:
    config: Path
    state: Path
    node_dir: Path
    db: Path


def copy_of(original: Original, pg_server: PgServer, directory: Path) -> Copy:
    """A configuration whose state is a consistent copy of the original's."""
    config = write_config(directory, pg_server, extra=AUDIT)
    state = directory / "state"
    state.mkdir()
    for name in ("audit_signing.key", "audit_signing.pub", "audit-node"):
        shutil.copy2(original.state_dir / name, state / name)
    shutil.copytree(original.state_dir / "audit-log", state / "audit-log")
    src = sqlite3.connect(original.state_dir / "audit.db")
    dst = sqlite3.connect(state / "audit.db")
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return Copy(config, state, state / "audit-log" / original.node, state / "audit.db")


@pytest.fixture
def copy(original: Original, pg_server: PgServer, tmp_path: Path) -> Copy:
    return copy_of(original, pg_server, tmp_path)


@pytest.fixture
def index(copy: Copy) -> Iterator[sqlite3.Connection]:
    """The search index, opened by someone who dropped its append-only trigger."""
    conn = sqlite3.connect(copy.db, isolation_level=None)
    conn.execute("DROP TRIGGER records_append_only")
    yield conn
    conn.close()


def first_problem(config: Path) -> tuple[int, dict[str, object], str, list[dict[str, object]]]:
    done = dbsentry_cli("audit", "verify", "--json", config=config, check=False)
    result = json.loads(done.stdout)
    assert result["problems"], done.stdout
    return done.returncode, result["first_problem"], done.stderr, result["problems"]


def rewrite_records(node_dir: Path, change: dict[int, bytes | None], insert: tuple[int, bytes] | None = None) -> None:
    """Rewrite the log's record frames: ``change`` maps a seq to a new payload (hash and
    link kept, the frame's checksum made valid) or to None (the frame removed); ``insert``
    puts a forged record, correctly hashed after the record before it, at that seq and
    renumbers the rest (their hashes kept)."""
    prev_hash = b""
    for _, path in list_segments(node_dir):
        data = path.read_bytes()
        frames, _, _ = parse_frames(data)
        out = bytearray()
        for f in frames:
            if f.kind != KIND_RECORD:
                out += data[f.offset : f.end]
                continue
            if insert is not None and f.seq == insert[0]:
                forged = link_hash(prev_hash, f.seq, insert[1])
                out += record_frame(f.seq, prev_hash, forged, insert[1])
            seq = f.seq + 1 if insert is not None and f.seq >= insert[0] else f.seq
            if f.seq in change:
                new = change[f.seq]
                if new is not None:
                    out += record_frame(seq, f.prev_hash, f.hash, new)
            else:
                out += record_frame(seq, f.prev_hash, f.hash, f.payload)
            prev_hash = f.hash
        path.write_bytes(bytes(out))


def payload_of(node_dir: Path, seq: int) -> bytes:
    for _, path in list_segments(node_dir):
        frames, _, _ = parse_frames(path.read_bytes())
        for f in frames:
            if f.kind == KIND_RECORD and f.seq == seq:
                return f.payload
    raise AssertionError(f"no record {seq}")


def test_intact_copy_verifies(original: Original, copy: Copy) -> None:
    done = verify(copy.config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"node {original.node} chain: INTACT" in done.stdout
    assert f"records: {original.records} (seq 1..{original.records}, anchor 0)" in done.stdout
    # The proxy signed a checkpoint when it stopped: nothing is left unsigned.
    assert "0 records after it" in done.stdout
    assert f"index: {original.records} of {original.records} rows agree with the log" in done.stdout


def test_trigger_refuses_plain_update(copy: Copy) -> None:
    with sqlite3.connect(copy.db) as conn, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE records SET identity = 'mallory' WHERE node_seq = 1")


@pytest.mark.parametrize(
    ("old", "new", "column"),
    [
        (f'"identity":"{HUMAN}"', '"identity":"mallory@example.com"', "identity"),
        ('"decision":"deny"', '"decision":"allow"', "decision"),
    ],
    ids=["identity", "decision"],
)
@pytest.mark.parametrize("also_index", [False, True], ids=["log", "log-and-index"])
def test_changed_record_is_named(
    original: Original, copy: Copy, index: sqlite3.Connection, old: str, new: str, column: str, also_index: bool
) -> None:
    seq = original.denied_seq
    payload = payload_of(copy.node_dir, seq)
    assert old.encode() in payload
    forged = payload.replace(old.encode(), new.encode())
    rewrite_records(copy.node_dir, {seq: forged})
    if also_index:  # the attacker makes the index agree with the forged log
        value = json.loads(forged)[column]
        cur = index.execute(
            f"UPDATE records SET payload = ?, {column} = ? WHERE node = ? AND node_seq = ?",
            (forged.decode(), value, original.node, seq),
        )
        assert cur.rowcount == 1
    code, problem, stderr, problems = first_problem(copy.config)
    assert code == 1
    assert (problem["kind"], problem["node"], problem["seq"]) == ("changed", original.node, seq)
    assert f"first bad: changed: node {original.node} record {seq}:" in stderr
    assert (("index_changed", seq) in {(p["kind"], p["seq"]) for p in problems}) is not also_index
    assert f"node {original.node} chain: BROKEN" in verify(copy.config).stdout


def test_changed_index_row_alone_is_named(original: Original, copy: Copy, index: sqlite3.Connection) -> None:
    """The log is intact but what people search shows something else."""
    seq = original.denied_seq
    cur = index.execute(
        "UPDATE records SET identity = 'mallory@example.com' WHERE node = ? AND node_seq = ?",
        (original.node, seq),
    )
    assert cur.rowcount == 1
    code, problem, stderr, _ = first_problem(copy.config)
    assert (code, problem["kind"], problem["node"], problem["seq"]) == (1, "index_changed", original.node, seq)
    assert "identity" in str(problem["message"])
    assert f"first bad: index_changed: node {original.node} record {seq}:" in stderr


def test_deleted_index_row_is_named(original: Original, copy: Copy, index: sqlite3.Connection) -> None:
    seq = original.denied_seq
    assert index.execute("DELETE FROM records WHERE node = ? AND node_seq = ?", (original.node, seq)).rowcount == 1
    code, problem, _, _ = first_problem(copy.config)
    assert (code, problem["kind"], problem["node"], problem["seq"]) == (1, "index_missing", original.node, seq)


def test_deleted_record_is_named(original: Original, copy: Copy) -> None:
    seq = original.denied_seq
    rewrite_records(copy.node_dir, {seq: None})
    code, problem, stderr, _ = first_problem(copy.config)
    assert code == 1
    assert (problem["kind"], problem["node"], problem["seq"]) == ("removed", original.node, seq)
    assert f"first bad: removed: node {original.node} record {seq}:" in stderr


def test_inserted_record_is_named(original: Original, copy: Copy) -> None:
    """A forged record with a correct hash, slipped into the chain and the rest renumbered."""
    at = original.denied_seq
    forged = payload_bytes(
        StatementRecord(
            session_id="0123456789abcdef",
            identity="mallory@example.com",
            identity_kind="human",
            statement="select 'nothing to see'",
            decision="allow",
            connection="prod",
            environment="production",
            command="SELECT",
        )
    )
    rewrite_records(copy.node_dir, {}, insert=(at, forged))
    code, problem, stderr, problems = first_problem(copy.config)
    assert code == 1 and f"node {original.node}" in stderr
    assert ("inserted", original.node, at) in [(p["kind"], p["node"], p["seq"]) for p in problems]
    # The checkpoints after it name other hashes now: from the last one that still verifies,
    # no signature vouches for the records (verified_through stops there), named first.
    if problem["kind"] != "inserted":
        assert (problem["kind"], problem["node"]) == ("unsigned", original.node)
        assert isinstance(problem["seq"], int) and problem["seq"] <= at


def test_removed_segment_is_named(original: Original, copy: Copy) -> None:
    segments = list_segments(copy.node_dir)
    _, middle = segments[len(segments) // 2]
    frames, _, _ = parse_frames(middle.read_bytes())
    first = min(f.seq for f in frames if f.kind == KIND_RECORD)
    middle.unlink()
    code, problem, _, _ = first_problem(copy.config)
    assert (code, problem["kind"], problem["node"], problem["seq"]) == (1, "removed", original.node, first)


def test_truncated_tail_is_named(original: Original, copy: Copy) -> None:
    """The log cut back by its last two records (and the checkpoints after them): the
    index holds the records that continued the chain."""
    segments = [p for _, p in list_segments(copy.node_dir)]
    while True:
        frames, _, _ = parse_frames(segments[-1].read_bytes())
        if [f for f in frames if f.kind == KIND_RECORD and f.seq == original.records - 1]:
            break
        segments.pop().unlink()  # segments after it go too
    (cut,) = [f for f in frames if f.kind == KIND_RECORD and f.seq == original.records - 1]
    segments[-1].write_bytes(segments[-1].read_bytes()[: cut.offset])
    code, problem, _, _ = first_problem(copy.config)
    assert (code, problem["kind"], problem["node"], problem["seq"]) == (1, "removed", original.node, cut.seq)
    assert cut.seq == original.records - 1

"""``verify`` on the nodes' audit logs: a clean log verifies; every kind of tampering
(changed, removed, reordered or truncated records, removed segments, forged checkpoints,
changed, added or deleted index rows) is found and named by node and seq; archived
segments keep the rest verifiable."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dbsentry.audit.index import catch_up_all, reindex
from dbsentry.audit.keys import Signer
from dbsentry.audit.log import (
    KIND_CHECKPOINT,
    KIND_RECORD,
    Frame,
    json_frame,
    link_hash,
    list_segments,
    parse_frames,
    record_frame,
)
from dbsentry.audit.logwriter import LogFile
from dbsentry.audit.records import StatementRecord, payload_bytes
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import encode
from dbsentry.audit.verify import (
    MANIFEST_NAME,
    ArchiveError,
    AuditVerification,
    Problem,
    archive_log,
    verify_all,
)

T0 = 1_714_560_000.0
NODE = "alpha"
N = 37  # records: a first segment of three (the start checkpoint takes room), eight of four, a last one of two


def stmt(i: int) -> bytes:
    return payload_bytes(
        StatementRecord(
            time=T0 + i,
            session_id="s1",
            identity="alice@example.com",
            identity_kind="human",
            connection="prod",
            environment="production",
            statement=f"SELECT * FROM users WHERE id = {i}",
            decision="allow",
            tables=("public.users",),
        )
    )


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def write_log(log_dir: Path, signer: Signer, n: int = N, node: str = NODE, first: int = 1) -> LogFile:
    """``n`` records in small segments (four records each), sealed and closed, with
    periodic checkpoints every three records."""
    lf = LogFile(log_dir, node, signer=signer, segment_bytes=2500, checkpoint_every=3)
    lf.open()
    for i in range(first, first + n):
        lf.append(stmt(i))
        lf.flush()
    lf.close()
    return lf


@pytest.fixture
def log_dir(tmp_path: Path, signer: Signer) -> Path:
    d = tmp_path / "audit-log"
    write_log(d, signer)
    assert len(list_segments(d / NODE)) == 10
    return d


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "audit.db", fsync=False)
    yield s
    s.close()


def segs(log_dir: Path, node: str = NODE) -> list[Path]:
    return [p for _, p in list_segments(log_dir / node)]


def frames(path: Path) -> list[Frame]:
    got, _, error = parse_frames(path.read_bytes())
    assert error is None
    return got


def where(path: Path, seq: int) -> Frame:
    return next(f for f in frames(path) if f.kind == KIND_RECORD and f.seq == seq)


def segment_of(log_dir: Path, seq: int) -> Path:
    return next(p for p in segs(log_dir) if any(f.kind == KIND_RECORD and f.seq == seq for f in frames(p)))


def middle(log_dir: Path) -> tuple[Path, list[int]]:
    """A segment in the middle of the log and its records' seqs."""
    p = segs(log_dir)[len(segs(log_dir)) // 2]
    return p, [f.seq for f in frames(p) if f.kind == KIND_RECORD]


def splice(path: Path, start: int, end: int, new: bytes = b"") -> None:
    data = path.read_bytes()
    path.write_bytes(data[:start] + new + data[end:])


def first(result: AuditVerification) -> Problem:
    assert not result.ok
    p = result.first_problem
    assert p is not None
    return p


def check(log_dir: Path, signer: Signer, store: SQLiteStore | None = None) -> AuditVerification:
    return verify_all(store, log_dir, [signer.public_key])


# --- clean logs -----------------------------------------------------------------------------------


def test_clean_multi_segment_log_verifies_with_its_index(log_dir: Path, signer: Signer, store: SQLiteStore) -> None:
    catch_up_all(store, log_dir)
    result = check(log_dir, signer, store)
    assert result.ok, result.describe()
    node = result.nodes[0]
    assert (node.node, node.chain.records, node.chain.first_seq, node.chain.last_seq) == (NODE, N, 1, N)
    assert node.segments == tuple(range(1, len(segs(log_dir)) + 1))
    assert node.chain.unsigned_tail == 0  # closed: the last record is signed
    assert node.index is not None and (node.index.rows, node.index.agree, node.index.cursor) == (N, N, N)
    assert node.verified_through == N
    text = result.describe()
    assert "node alpha chain: INTACT" in text and f"{N} of {N} rows agree" in text
    assert "legacy chain (the audit store's records from before the log): none" in text


def test_records_not_yet_indexed_are_information(log_dir: Path, signer: Signer, store: SQLiteStore) -> None:
    from dbsentry.audit.index import catch_up

    catch_up(store, log_dir, NODE, upto=25)
    result = check(log_dir, signer, store)
    assert result.ok, result.describe()
    assert result.nodes[0].index is not None and result.nodes[0].index.not_indexed == N - 25


def test_a_log_after_a_kill_continues_in_a_new_segment(tmp_path: Path, signer: Signer) -> None:
    """A segment the writer never closed (kill -9): noted, not a problem."""
    d = tmp_path / "log"
    lf = LogFile(d, NODE, signer=signer, segment_bytes=1 << 20)
    lf.open()
    for i in range(1, 6):
        lf.append(stmt(i))
    lf.flush()  # no close: the process "dies" here
    write_log(d, signer, n=5, first=6)
    result = check(d, signer)
    assert result.ok, result.describe()
    assert result.nodes[0].chain.records == 10
    assert any("ends without a checkpoint" in n for n in result.nodes[0].info)


def test_a_node_that_served_nothing_and_stopped_verifies_and_goes_on(tmp_path: Path, signer: Signer) -> None:
    """A proxy started and stopped before its first record leaves checkpoints at seq 0
    (the chain's start: the writer's start and its close); that is no problem, now or once
    records follow."""
    d = tmp_path / "log"
    empty = LogFile(d, NODE, signer=signer)
    empty.open()
    empty.close()
    assert [(f.meta["kind"], f.meta["seq"]) for f in frames(segs(d)[0]) if f.kind == KIND_CHECKPOINT] == [
        ("start", 0),
        ("close", 0),
    ]
    result = check(d, signer)
    assert result.ok, result.describe()
    write_log(d, signer, n=5)
    result = check(d, signer)
    assert result.ok, result.describe()
    assert result.nodes[0].chain.records == 5


def test_a_checkpoint_at_seq_0_naming_another_start_is_named(tmp_path: Path, signer: Signer) -> None:
    d = tmp_path / "log"
    empty = LogFile(d, NODE, signer=signer)
    empty.open()
    empty.close()
    path = segs(d)[0]
    cp = next(f for f in frames(path) if f.kind == KIND_CHECKPOINT)
    forged = signer.sign(0, "00" * 32, cp.meta["time"], f"{cp.meta['kind']}:{NODE}")
    body = {**cp.meta, "hash": forged.hash, "signature": forged.signature}
    splice(path, cp.offset, cp.end, json_frame(KIND_CHECKPOINT, body))
    problem = first(check(d, signer))
    assert (problem.kind, problem.seq) == ("checkpoint_mismatch", 0)


def test_a_tools_log_verifies(tmp_path: Path, signer: Signer) -> None:
    """Records a command-line tool appended, a few at a time, to ``<node>-tools``."""
    from dbsentry.audit.logwriter import append_from_tool

    d = tmp_path / "log"
    for i in range(3):
        append_from_tool(d, NODE, [stmt(2 * i + 1), stmt(2 * i + 2)], signer)
    result = check(d, signer)
    assert result.ok, result.describe()
    (node,) = result.nodes
    assert (node.node, node.chain.records, node.chain.unsigned_tail) == (f"{NODE}-tools", 6, 0)
    assert not node.info


# --- tampering with the log ------------------------------------------------------------------------


def test_changed_payload_rechecksummed_is_named(log_dir: Path, signer: Signer) -> None:
    path, seqs = middle(log_dir)
    seq = seqs[1]
    f = where(path, seq)
    forged = f.payload.replace(b"alice@example.com", b"mallo@example.com")
    splice(path, f.offset, f.end, record_frame(seq, f.prev_hash, f.hash, forged))
    p = first(check(log_dir, signer))
    assert (p.kind, p.node, p.seq) == ("changed", NODE, seq)
    assert str(p).startswith(f"changed: node {NODE} record {seq}: content does not match its hash")


def test_changed_byte_without_new_checksum_is_named(log_dir: Path, signer: Signer) -> None:
    path, seqs = middle(log_dir)
    seq = seqs[1]
    f = where(path, seq)
    data = bytearray(path.read_bytes())
    data[f.end - 20] ^= 0x01  # inside the payload
    path.write_bytes(bytes(data))
    result = check(log_dir, signer)
    p = first(result)
    assert (p.kind, p.node, p.seq) == ("unreadable", NODE, seq)
    # the frames after it are read on: only this record is missing
    kinds = {(q.kind, q.seq) for q in result.problems}
    assert ("removed", seq) in kinds
    assert all(q.seq == seq for q in result.problems if q.kind in ("removed", "unreadable"))


def test_changed_byte_in_the_last_segment_before_its_checkpoint_is_named(log_dir: Path, signer: Signer) -> None:
    """Damage with whole frames after it is not a torn tail, even in the last segment."""
    path = segs(log_dir)[-1]
    seq = next(f.seq for f in frames(path) if f.kind == KIND_RECORD)
    f = where(path, seq)
    data = bytearray(path.read_bytes())
    data[f.end - 20] ^= 0x01
    path.write_bytes(bytes(data))
    p = first(check(log_dir, signer))
    assert (p.kind, p.node, p.seq) == ("unreadable", NODE, seq)


def test_removed_record_is_named(log_dir: Path, signer: Signer) -> None:
    path, seqs = middle(log_dir)
    seq = seqs[1]
    f = where(path, seq)
    splice(path, f.offset, f.end)
    p = first(check(log_dir, signer))
    assert (p.kind, p.node, p.seq) == ("removed", NODE, seq)


def test_removed_first_record_of_the_log_is_named(log_dir: Path, signer: Signer) -> None:
    path = segs(log_dir)[0]
    f = where(path, 1)
    splice(path, f.offset, f.end)
    p = first(check(log_dir, signer))
    assert (p.node, p.seq) == (NODE, 1) and p.kind == "removed"


def test_swapped_records_are_named(log_dir: Path, signer: Signer) -> None:
    path, seqs = middle(log_dir)
    a, b = where(path, seqs[0]), where(path, seqs[1])
    data = path.read_bytes()
    path.write_bytes(data[: a.offset] + data[b.offset : b.end] + data[a.offset : a.end] + data[b.end :])
    result = check(log_dir, signer)
    p = first(result)
    assert (p.node, p.seq) == (NODE, seqs[0])
    assert {q.kind for q in result.problems} >= {"removed", "inserted"}


def test_removed_middle_segment_is_named(log_dir: Path, signer: Signer) -> None:
    path, seqs = middle(log_dir)
    path.unlink()
    p = first(check(log_dir, signer))
    assert (p.kind, p.node, p.seq) == ("removed", NODE, seqs[0])
    assert "missing (no archive manifest covers them)" in p.message


def test_removed_last_segment_is_named(log_dir: Path, signer: Signer) -> None:
    *_, before, last = segs(log_dir)
    end = max(f.seq for f in frames(before) if f.kind == KIND_RECORD)
    last.unlink()
    p = first(check(log_dir, signer))
    assert (p.kind, p.node, p.seq) == ("removed", NODE, end + 1)
    assert "is sealed but segment" in p.message


def test_truncated_middle_segment_is_named(log_dir: Path, signer: Signer) -> None:
    """Cut back to a record boundary (its seal gone): the next header does not continue."""
    path, seqs = middle(log_dir)
    f = where(path, seqs[-1])
    data = path.read_bytes()
    path.write_bytes(data[: f.offset])
    p = first(check(log_dir, signer))
    assert (p.kind, p.node, p.seq) == ("removed", NODE, seqs[-1])


def test_truncated_tail_is_named_by_the_index(log_dir: Path, signer: Signer, store: SQLiteStore) -> None:
    """The last segment cut back to a frame boundary, its close checkpoint with it: the log
    alone cannot tell it from a proxy that was killed, but the index holds the records
    that continue the chain."""
    catch_up_all(store, log_dir)
    path = segs(log_dir)[-1]
    seqs = [f.seq for f in frames(path) if f.kind == KIND_RECORD]
    cut = where(path, seqs[-2])
    path.write_bytes(path.read_bytes()[: cut.offset])
    alone = check(log_dir, signer)
    assert alone.ok and any("does not end with a checkpoint" in n for n in alone.nodes[0].info)
    p = first(check(log_dir, signer, store))
    assert (p.kind, p.node, p.seq) == ("removed", NODE, seqs[-2])
    assert "the log's tail was cut" in p.message


def test_torn_tail_of_the_last_segment_is_information(log_dir: Path, signer: Signer) -> None:
    path = segs(log_dir)[-1]
    with path.open("ab") as fh:
        fh.write(record_frame(N + 1, b"\0" * 32, b"\0" * 32, stmt(41))[:30])
    result = check(log_dir, signer)
    assert result.ok, result.describe()
    assert any("not a whole frame" in n for n in result.nodes[0].info)


def test_torn_frame_in_an_earlier_segment_is_a_problem(log_dir: Path, signer: Signer) -> None:
    path, seqs = middle(log_dir)
    f = where(path, seqs[-1])
    data = path.read_bytes()
    path.write_bytes(data[: f.offset + 30])  # the last record half written, the seal gone
    p = first(check(log_dir, signer))
    assert (p.node, p.seq) == (NODE, seqs[-1])
    assert {q.kind for q in check(log_dir, signer).problems} >= {"unreadable", "removed"}


def _checkpoint_frames(path: Path) -> list[Frame]:
    return [f for f in frames(path) if f.kind == KIND_CHECKPOINT]


def test_forged_checkpoint_is_named(log_dir: Path, signer: Signer) -> None:
    path, _ = middle(log_dir)
    cp = _checkpoint_frames(path)[-1]
    meta = dict(cp.meta)
    meta["time"] = meta["time"] + 1  # a well-formed frame, a signature over something else
    splice(path, cp.offset, cp.end, json_frame(KIND_CHECKPOINT, meta))
    p = first(check(log_dir, signer))
    assert (p.kind, p.node, p.seq) == ("checkpoint_signature", NODE, meta["seq"])


def test_checkpoint_by_another_key_is_named(log_dir: Path, signer: Signer) -> None:
    path, _ = middle(log_dir)
    cp = _checkpoint_frames(path)[-1]
    other = Signer(Ed25519PrivateKey.generate())
    forged = other.sign(cp.meta["seq"], cp.meta["hash"], cp.meta["time"], f"seal:{NODE}")
    meta = {**cp.meta, "key_id": forged.key_id, "signature": forged.signature}
    splice(path, cp.offset, cp.end, json_frame(KIND_CHECKPOINT, meta))
    p = first(check(log_dir, signer))
    assert (p.kind, p.node, p.seq) == ("checkpoint_unknown_key", NODE, cp.meta["seq"])


def test_rewritten_chain_is_caught_by_its_signed_checkpoint(log_dir: Path, signer: Signer) -> None:
    """Someone re-hashes a changed record and the rest of its segment (the chain links
    again) but cannot sign: the seal names the old hash."""
    path, seqs = middle(log_dir)
    data = path.read_bytes()
    out = bytearray()
    prev = b""
    for f in frames(path):
        if f.kind != KIND_RECORD or f.seq < seqs[1]:
            prev = f.hash if f.kind == KIND_RECORD else prev
            out += data[f.offset : f.end]
            continue
        payload = f.payload.replace(b"alice@example.com", b"mallo@example.com") if f.seq == seqs[1] else f.payload
        prev_of_this, prev = prev, link_hash(prev, f.seq, payload)
        out += record_frame(f.seq, prev_of_this, prev, payload)
    path.write_bytes(bytes(out))
    result = check(log_dir, signer)
    p = first(result)
    assert p.node == NODE and p.kind == "checkpoint_mismatch"
    assert result.nodes[0].verified_through < seqs[-1]


def test_checkpoint_copied_from_another_node_does_not_verify(tmp_path: Path, signer: Signer) -> None:
    d = tmp_path / "log"
    write_log(d, signer, n=10, node="alpha")
    write_log(d, signer, n=10, node="beta")
    a_last, b_last = segs(d, "alpha")[-1], segs(d, "beta")[-1]
    a_cp = _checkpoint_frames(a_last)[-1]
    b_cp = _checkpoint_frames(b_last)[-1]
    splice(b_last, b_cp.offset, b_cp.end, json_frame(KIND_CHECKPOINT, {**a_cp.meta, "node": "beta"}))
    result = check(d, signer)
    assert result.nodes[0].ok
    p = first(result)
    assert (p.kind, p.node) == ("checkpoint_signature", "beta")


def test_segment_moved_to_another_node_is_named(tmp_path: Path, signer: Signer) -> None:
    d = tmp_path / "log"
    write_log(d, signer, n=10, node="alpha")
    shutil.copytree(d / "alpha", d / "beta")
    result = check(d, signer)
    p = next(q for q in result.problems if q.node == "beta" and q.kind == "changed")
    assert p.seq == 1 and "does not link to the chain's start (genesis)" in p.message
    # (and alpha's start checkpoint names alpha's chain start, not beta's)
    assert any(q.node == "beta" and (q.kind, q.seq) == ("checkpoint_mismatch", 0) for q in result.problems)
    assert any(q.kind == "segment" and "belongs to node 'alpha'" in q.message for q in result.problems)


# --- the index against the log -------------------------------------------------------------------


def _index(store: SQLiteStore) -> sqlite3.Connection:
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.execute("DROP TRIGGER records_append_only")
    return conn


def test_changed_index_row_is_named(log_dir: Path, signer: Signer, store: SQLiteStore) -> None:
    catch_up_all(store, log_dir)
    conn = _index(store)
    conn.execute(
        "UPDATE records SET payload = replace(payload, 'alice@', 'mallo@'), identity = 'mallo@example.com' "
        "WHERE node = ? AND node_seq = 17",
        (NODE,),
    )
    result = check(log_dir, signer, store)
    p = first(result)
    assert (p.kind, p.node, p.seq) == ("index_changed", NODE, 17)
    assert "payload" in p.message
    assert result.nodes[0].verified_through == 16


def test_changed_index_column_alone_is_named(log_dir: Path, signer: Signer, store: SQLiteStore) -> None:
    catch_up_all(store, log_dir)
    _index(store).execute("UPDATE records SET decision = 'deny' WHERE node = ? AND node_seq = 9", (NODE,))
    p = first(check(log_dir, signer, store))
    assert (p.kind, p.node, p.seq) == ("index_changed", NODE, 9)
    assert "decision" in p.message


def test_deleted_index_row_is_named(log_dir: Path, signer: Signer, store: SQLiteStore) -> None:
    catch_up_all(store, log_dir)
    _index(store).execute("DELETE FROM records WHERE node = ? AND node_seq = 12", (NODE,))
    p = first(check(log_dir, signer, store))
    assert (p.kind, p.node, p.seq) == ("index_missing", NODE, 12)


def test_added_index_rows_are_named(log_dir: Path, signer: Signer, store: SQLiteStore) -> None:
    catch_up_all(store, log_dir)
    forged = encode(
        StatementRecord(session_id="x", identity="mallory", identity_kind="human", statement="select 1", decision="allow")
    )
    conn = _index(store)
    for node_seq in (N + 1, N + 2):
        conn.execute(
            "INSERT INTO records (prev_hash, hash, id, time, type, tables, payload, node, node_seq) "
            "VALUES (?, ?, ?, ?, 'statement', '[]', ?, ?, ?)",
            ("0" * 64, "1" * 64, f"{forged.id}{node_seq}", forged.time, forged.payload.decode(), NODE, node_seq),
        )
    p = first(check(log_dir, signer, store))
    assert (p.kind, p.node, p.seq) == ("index_added", NODE, N + 1)
    assert "2 rows beyond the log's end" in p.message


def test_rows_of_a_node_without_a_log_cannot_be_checked(log_dir: Path, signer: Signer, store: SQLiteStore) -> None:
    catch_up_all(store, log_dir)
    shutil.copytree(log_dir / NODE, log_dir.parent / "elsewhere" / NODE)
    catch_up_all(store, log_dir.parent / "elsewhere")  # same node: nothing new
    other = log_dir.parent / "other-log"
    write_log(other, signer, n=5, node="gamma")
    catch_up_all(store, other)
    result = check(log_dir, signer, store)
    p = first(result)
    assert (p.kind, p.node, p.seq) == ("unverifiable", "gamma", None)
    assert "5 index rows of node gamma" in p.message


def test_reindex_rebuilds_what_verify_found_wrong(log_dir: Path, signer: Signer, store: SQLiteStore) -> None:
    catch_up_all(store, log_dir)
    _index(store).execute("DELETE FROM records WHERE node = ? AND node_seq > 30", (NODE,))
    assert not check(log_dir, signer, store).ok
    assert reindex(store, log_dir, NODE) == (30, N)
    assert check(log_dir, signer, store).ok


# --- the store's own chain beside the logs -----------------------------------------------------


def test_legacy_chain_and_logs_are_both_verified(log_dir: Path, signer: Signer, store: SQLiteStore) -> None:
    old = [encode(StatementRecord(session_id="o", identity="bob", identity_kind="human", statement=f"select {i}", decision="allow")) for i in range(3)]
    store.append_batch(old)
    store.add_checkpoint(signer)
    catch_up_all(store, log_dir)
    result = check(log_dir, signer, store)
    assert result.ok, result.describe()
    assert result.legacy is not None and result.legacy.records == 3
    assert "legacy chain (the audit store's records from before the log): INTACT" in result.describe()
    conn = _index(store)
    conn.execute("UPDATE records SET payload = replace(payload, 'bob', 'eve') WHERE node IS NULL AND seq = 2")
    result = check(log_dir, signer, store)
    p = first(result)
    assert (p.kind, p.node, p.seq) == ("changed", None, 2)
    assert result.nodes[0].ok  # the logs are not affected
    assert result.legacy_through() == 1


# --- archive ---------------------------------------------------------------------------------------


def test_archived_segments_leave_a_verifiable_log(log_dir: Path, signer: Signer, store: SQLiteStore, tmp_path: Path) -> None:
    catch_up_all(store, log_dir)
    n = len(segs(log_dir))
    arch = tmp_path / "archive"
    res = archive_log(log_dir, NODE, T0 + 20, arch, signer, indexed_through=store.index_cursor(NODE))
    assert res is not None
    assert all(s.last_seq < 20 for s in res.segments)
    assert [p.name for p in segs(arch)] == [f"{s.segment:010d}.seg" for s in res.segments]
    assert len(segs(log_dir)) == n - len(res.segments)
    assert (log_dir / NODE / MANIFEST_NAME).exists()

    result = check(log_dir, signer, store)
    assert result.ok, result.describe()
    node = result.nodes[0]
    assert node.chain.anchor_seq == res.manifest.last_seq and node.chain.first_seq == res.manifest.last_seq + 1
    assert node.index is not None and node.index.archived_rows == res.manifest.last_seq
    assert node.archived_segments == len(res.segments)

    # With the archive, the whole chain verifies from genesis.
    full = verify_all(store, log_dir, [signer.public_key], archive_dir=arch)
    assert full.ok, full.describe()
    assert full.nodes[0].chain.anchor_seq == 0 and full.nodes[0].chain.records == N
    assert full.nodes[0].index is not None and full.nodes[0].index.agree == N

    # A second archive continues the manifest.
    again = archive_log(log_dir, NODE, T0 + 100, arch, signer)
    assert again is not None and again.manifest.segments[: len(res.segments)] == res.segments
    assert check(log_dir, signer, store).ok
    assert verify_all(store, log_dir, [signer.public_key], archive_dir=arch).ok
    assert len(segs(log_dir)) == 1  # the last segment always stays


def test_interrupted_archive_is_finished_by_the_next(
    log_dir: Path, signer: Signer, tmp_path: Path
) -> None:
    """Copied and listed, but the process died before removing the segments: verify reads
    the log from the manifest on, and the next archive removes them."""
    arch = tmp_path / "a"
    keep = {p.name: p.read_bytes() for p in segs(log_dir)}
    res = archive_log(log_dir, NODE, T0 + 10, arch, signer)
    assert res is not None
    for s in res.segments:  # as if never removed
        name = f"{s.segment:010d}.seg"
        (log_dir / NODE / name).write_bytes(keep[name])
    result = check(log_dir, signer)
    assert result.ok, result.describe()
    assert any("archived but still in the log directory" in n for n in result.nodes[0].info)
    archive_log(log_dir, NODE, T0 + 10, arch, signer)
    assert segs(log_dir)[0].name == f"{res.manifest.last_segment + 1:010d}.seg"


def test_nothing_to_archive(log_dir: Path, signer: Signer, tmp_path: Path) -> None:
    assert archive_log(log_dir, NODE, T0 - 1, tmp_path / "a", signer) is None
    assert not (log_dir / NODE / MANIFEST_NAME).exists()


def test_archive_waits_for_the_index(log_dir: Path, signer: Signer, tmp_path: Path) -> None:
    assert archive_log(log_dir, NODE, T0 + 100, tmp_path / "a", signer, indexed_through=0) is None


def test_broken_log_is_not_archived(log_dir: Path, signer: Signer, tmp_path: Path) -> None:
    path = segs(log_dir)[1]
    f = next(f for f in frames(path) if f.kind == KIND_RECORD)
    splice(path, f.offset, f.end)
    with pytest.raises(ArchiveError, match="does not verify"):
        archive_log(log_dir, NODE, T0 + 100, tmp_path / "a", signer)


def test_removed_segment_not_covered_by_the_manifest_is_named(log_dir: Path, signer: Signer, tmp_path: Path) -> None:
    res = archive_log(log_dir, NODE, T0 + 20, tmp_path / "a", signer)
    assert res is not None
    nxt = segs(log_dir)[0]
    first_seq = min(f.seq for f in frames(nxt) if f.kind == KIND_RECORD)
    assert first_seq == res.manifest.last_seq + 1
    nxt.unlink()
    p = first(check(log_dir, signer))
    assert (p.kind, p.node, p.seq) == ("removed", NODE, first_seq)
    assert f"the archive manifest ends at segment {res.manifest.last_segment}" in p.message


def test_forged_manifest_is_named(log_dir: Path, signer: Signer, tmp_path: Path) -> None:
    """Moving the start of the log forward without the key: the manifest does not verify."""
    res = archive_log(log_dir, NODE, T0 + 20, tmp_path / "a", signer)
    assert res is not None
    path = log_dir / NODE / MANIFEST_NAME
    data = orjson.loads(path.read_bytes())
    nxt = segs(log_dir)[0]
    data["last_segment"] += 1  # hide the next segment too
    data["last_seq"] = max(f.seq for f in frames(nxt) if f.kind == KIND_RECORD)
    data["last_hash"] = where(nxt, data["last_seq"]).hash.hex()
    path.write_bytes(orjson.dumps(data))
    nxt.unlink()
    p = first(check(log_dir, signer))
    assert (p.kind, p.node) == ("anchor_unsigned", NODE)


def test_changed_archived_segment_is_named(log_dir: Path, signer: Signer, tmp_path: Path) -> None:
    arch = tmp_path / "a"
    res = archive_log(log_dir, NODE, T0 + 20, arch, signer)
    assert res is not None
    path = segs(arch)[0]
    f = where(path, 2)
    splice(path, f.offset, f.end, record_frame(2, f.prev_hash, f.hash, f.payload.replace(b"alice", b"mallo")))
    assert check(log_dir, signer).ok  # the live log is fine
    result = verify_all(None, log_dir, [signer.public_key], archive_dir=arch)
    p = first(result)
    assert (p.node, p.seq) == (NODE, 1)  # the segment's file is not the one archived
    assert {(q.kind, q.seq) for q in result.problems} >= {("changed", 2)}

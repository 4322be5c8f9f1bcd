"""The hash chain, signed checkpoints, tamper detection and archive, on the SQLite store."""

from __future__ import annotations

import itertools
import sqlite3
import stat
from pathlib import Path

import orjson
import pytest

from dbsentry.audit.keys import (
    KeyRing,
    Signer,
    load_or_create_signing_key,
    load_public_key,
    public_key_path,
)
from dbsentry.audit.records import CompletionRecord, SessionEvent, StatementRecord
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import GENESIS_HASH, chain_hash, encode
from dbsentry.audit.verify import ArchiveError, archive, verify, verify_archive


def stmt(i: int, t: float | None = None, **kw: object) -> StatementRecord:
    args: dict[str, object] = {
        "session_id": "s1",
        "identity": "alice@example.com",
        "identity_kind": "human",
        "statement": f"SELECT * FROM users WHERE id = {i}",
        "decision": "allow",
        "tables": ("public.users",),
    }
    if t is not None:
        args["time"] = t
    args.update(kw)
    return StatementRecord(**args)  # type: ignore[arg-type]


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer(load_or_create_signing_key(tmp_path / "audit_signing.key"))


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "audit.db")
    yield s  # type: ignore[misc]
    s.close()


def fill(
    store: SQLiteStore, signer: Signer, n: int = 10, checkpoint_at: tuple[int, ...] = (5, 10)
) -> None:
    for i in range(1, n + 1):
        store.append_batch([encode(stmt(i, t=1_700_000_000 + i))])
        if i in checkpoint_at:
            store.add_checkpoint(signer)


def raw(store: SQLiteStore) -> sqlite3.Connection:
    """The attacker's view: the file, opened directly, append-only trigger dropped."""
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS records_append_only")
    return conn


def test_key_is_created_private_with_public_half(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit_signing.key"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pub = load_public_key(public_key_path(path))
    assert pub.public_bytes_raw() == key.public_key().public_bytes_raw()
    # second use loads the same key
    again = load_or_create_signing_key(path)
    assert again.public_key().public_bytes_raw() == key.public_key().public_bytes_raw()


def test_chain_links_and_hashes(store: SQLiteStore, signer: Signer) -> None:
    seqs = store.append_batch([encode(stmt(1)), encode(stmt(2))])
    seqs += store.append_batch([encode(stmt(3))])
    assert seqs == [1, 2, 3]
    recs = list(store.iter_records())
    assert recs[0].prev_hash == GENESIS_HASH
    for a, b in itertools.pairwise(recs):
        assert b.prev_hash == a.hash
    for r in recs:
        assert r.hash == chain_hash(r.prev_hash, r.seq, r.payload)
        # the payload is canonical: sorted keys, compact
        data = orjson.loads(r.payload)
        assert orjson.dumps(data, option=orjson.OPT_SORT_KEYS) == r.payload
    head = store.head()
    assert (head.seq, head.hash) == (3, recs[-1].hash)


def test_intact_chain_verifies(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer)
    result = verify(store, signer.public_key)
    assert result.ok, result.describe()
    assert result.records == 10
    assert result.valid_checkpoints == 2
    assert result.last_checkpoint_seq == 10
    assert result.unsigned_tail == 0


def test_empty_store_verifies(store: SQLiteStore, signer: Signer) -> None:
    assert verify(store, signer.public_key).ok


def test_update_is_refused_by_trigger(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer, 2, ())
    conn = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE records SET identity = 'mallory' WHERE seq = 1")
    conn.close()


def test_changed_payload_is_named(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer)
    conn = raw(store)
    payload = conn.execute("SELECT payload FROM records WHERE seq = 4").fetchone()[0]
    conn.execute(
        "UPDATE records SET payload = ? WHERE seq = 4", (payload.replace("id = 4", "id = 5"),)
    )
    conn.close()
    result = verify(store, signer.public_key)
    assert not result.ok
    first = result.first_problem
    assert first is not None and (first.kind, first.seq) == ("changed", 4)
    # the damage is local: record 5 still links to 4's stored hash
    assert all(p.seq == 4 for p in result.problems)


def test_changed_indexed_column_is_named(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer)
    conn = raw(store)
    conn.execute("UPDATE records SET identity = 'bob@example.com' WHERE seq = 7")
    conn.close()
    result = verify(store, signer.public_key)
    first = result.first_problem
    assert first is not None and (first.kind, first.seq) == ("changed", 7)
    assert "identity" in first.message


def test_changed_and_rehashed_is_caught(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer)
    conn = raw(store)
    seq, prev, payload = conn.execute(
        "SELECT seq, prev_hash, payload FROM records WHERE seq = 3"
    ).fetchone()
    forged = payload.replace("id = 3", "id = 99").encode()
    conn.execute(
        "UPDATE records SET payload = ?, hash = ? WHERE seq = 3",
        (forged.decode(), chain_hash(prev, seq, forged)),
    )
    conn.close()
    result = verify(store, signer.public_key)
    first = result.first_problem
    assert first is not None and (first.kind, first.seq) == ("changed", 3)


def test_deleted_record_is_named(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer)
    conn = raw(store)
    conn.execute("DELETE FROM records WHERE seq = 6")
    conn.close()
    result = verify(store, signer.public_key)
    first = result.first_problem
    assert first is not None and (first.kind, first.seq) == ("removed", 6)


def test_deleted_and_renumbered_is_named(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer, checkpoint_at=())
    conn = raw(store)
    conn.execute("DELETE FROM records WHERE seq = 6")
    for s in range(7, 11):
        conn.execute("UPDATE records SET seq = ? WHERE seq = ?", (s - 1, s))
    conn.execute("UPDATE chain_head SET seq = 9, hash = (SELECT hash FROM records WHERE seq = 9)")
    conn.close()
    result = verify(store, signer.public_key)
    first = result.first_problem
    assert first is not None and (first.kind, first.seq) == ("removed", 6)


def test_truncated_tail_is_caught(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer, checkpoint_at=(5,))
    conn = raw(store)
    conn.execute("DELETE FROM records WHERE seq >= 9")
    conn.close()
    result = verify(store, signer.public_key)
    first = result.first_problem
    assert first is not None and (first.kind, first.seq) == ("removed", 9)


def test_forged_record_inserted_in_the_middle_is_named(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer)
    conn = raw(store)
    # make room after record 4 and insert a well-formed record there, hashed correctly
    for s in range(10, 4, -1):
        conn.execute("UPDATE records SET seq = ? WHERE seq = ?", (s + 1, s))
    h4 = conn.execute("SELECT hash FROM records WHERE seq = 4").fetchone()[0]
    forged = encode(stmt(42, t=1_700_000_004.5, identity="mallory"))
    conn.execute(
        "INSERT INTO records (seq, prev_hash, hash, id, time, type, session_id, identity, identity_kind, "
        "connection, environment, decision, command, ref, tables, payload) "
        "VALUES (5, ?, ?, ?, ?, 'statement', 's1', 'mallory', 'human', NULL, NULL, 'allow', NULL, NULL, ?, ?)",
        (
            h4,
            chain_hash(h4, 5, forged.payload),
            forged.id,
            forged.time,
            '["public.users"]',
            forged.payload.decode(),
        ),
    )
    conn.execute("UPDATE chain_head SET seq = 11, hash = (SELECT hash FROM records WHERE seq = 11)")
    conn.close()
    result = verify(store, signer.public_key)
    first = result.first_problem
    assert first is not None and (first.kind, first.seq) == ("inserted", 5), result.describe()


def test_forged_record_appended_naively_is_caught(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer)
    conn = raw(store)
    forged = encode(stmt(11, identity="mallory"))
    h10 = conn.execute("SELECT hash FROM records WHERE seq = 10").fetchone()[0]
    conn.execute(
        "INSERT INTO records (seq, prev_hash, hash, id, time, type, session_id, identity, identity_kind, "
        "connection, environment, decision, command, ref, tables, payload) "
        "VALUES (11, ?, ?, ?, ?, 'statement', 's1', 'mallory', 'human', NULL, NULL, 'allow', NULL, NULL, ?, ?)",
        (
            h10,
            chain_hash(h10, 11, forged.payload),
            forged.id,
            forged.time,
            '["public.users"]',
            forged.payload.decode(),
        ),
    )
    conn.close()
    result = verify(store, signer.public_key)
    first = result.first_problem
    assert first is not None and (first.kind, first.seq) == ("inserted", 11), result.describe()


def test_rewritten_chain_is_caught_by_checkpoint(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer)
    conn = raw(store)
    # rewrite record 2 and re-hash everything after it consistently: only signatures catch this
    rows = conn.execute("SELECT seq, prev_hash, payload FROM records ORDER BY seq").fetchall()
    prev = GENESIS_HASH
    for seq, _, payload in rows:
        if seq == 2:
            payload = payload.replace("id = 2", "id = 1000")
        h = chain_hash(prev, seq, payload.encode())
        conn.execute(
            "UPDATE records SET prev_hash = ?, hash = ?, payload = ? WHERE seq = ?",
            (prev, h, payload, seq),
        )
        prev = h
    conn.execute("UPDATE chain_head SET hash = ?", (prev,))
    conn.close()
    result = verify(store, signer.public_key)
    assert not result.ok
    kinds = {(p.kind, p.seq) for p in result.problems}
    assert ("checkpoint_mismatch", 5) in kinds
    assert ("checkpoint_mismatch", 10) in kinds


def test_tampered_checkpoint_signature_is_caught(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer)
    conn = raw(store)
    sig = conn.execute("SELECT signature FROM checkpoints WHERE seq = 5").fetchone()[0]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    conn.execute("UPDATE checkpoints SET signature = ? WHERE seq = 5", (flipped,))
    conn.close()
    result = verify(store, signer.public_key)
    first = result.first_problem
    assert first is not None and (first.kind, first.seq) == ("checkpoint_signature", 5)


def test_checkpoint_hash_changed_is_caught(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer)
    conn = raw(store)
    conn.execute("UPDATE checkpoints SET hash = ? WHERE seq = 10", ("ab" * 32,))
    conn.close()
    result = verify(store, signer.public_key)
    first = result.first_problem
    assert first is not None and (first.kind, first.seq) == ("checkpoint_signature", 10)


def test_checkpoint_from_unknown_key(store: SQLiteStore, signer: Signer, tmp_path: Path) -> None:
    other = Signer(load_or_create_signing_key(tmp_path / "other.key"))
    fill(store, other, checkpoint_at=(5,))
    result = verify(store, signer.public_key)
    assert (
        result.first_problem is not None and result.first_problem.kind == "checkpoint_unknown_key"
    )
    assert verify(store, KeyRing([signer.public_key, other.public_key])).ok


def test_unsigned_tail_is_reported(store: SQLiteStore, signer: Signer) -> None:
    fill(store, signer, n=8, checkpoint_at=(5,))
    result = verify(store, signer.public_key)
    assert result.ok
    assert result.unsigned_tail == 3


def test_archive_moves_prefix_and_chain_stays_verifiable(
    store: SQLiteStore, signer: Signer, tmp_path: Path
) -> None:
    fill(store, signer)
    out = tmp_path / "a1.jsonl"
    res = archive(store, 1_700_000_000 + 6.5, out, signer)  # records 1..6 are older
    assert res is not None and (res.first_seq, res.last_seq, res.records) == (1, 6, 6)
    assert [r.seq for r in store.iter_records()] == [7, 8, 9, 10]
    anchor = store.anchor()
    assert anchor.seq == 6 and anchor.hash == res.checkpoint.hash
    result = verify(store, signer.public_key)
    assert result.ok, result.describe()
    assert result.anchor_seq == 6
    # the archive verifies on its own
    arch = verify_archive(out, signer.public_key)
    assert arch.ok, arch.describe()
    assert (arch.first_seq, arch.last_seq) == (1, 6)
    # appends continue the chain after the archive
    store.append_batch([encode(stmt(11))])
    assert verify(store, signer.public_key).ok
    # a second archive links to the first
    res2 = archive(store, 1_700_000_000 + 9.5, tmp_path / "a2.jsonl", signer)
    assert res2 is not None and (res2.first_seq, res2.last_seq) == (7, 9)
    assert verify(store, signer.public_key).ok
    assert verify_archive(tmp_path / "a2.jsonl", signer.public_key).ok


def test_archive_nothing_old_enough(store: SQLiteStore, signer: Signer, tmp_path: Path) -> None:
    fill(store, signer)
    assert archive(store, 1_000_000_000, tmp_path / "a.jsonl", signer) is None
    assert not (tmp_path / "a.jsonl").exists()


def test_archive_refuses_broken_chain(store: SQLiteStore, signer: Signer, tmp_path: Path) -> None:
    fill(store, signer)
    conn = raw(store)
    conn.execute("DELETE FROM records WHERE seq = 2")
    conn.close()
    with pytest.raises(ArchiveError, match="removed"):
        archive(store, 1_700_000_000 + 6.5, tmp_path / "a.jsonl", signer)


def test_tampered_anchor_is_caught(store: SQLiteStore, signer: Signer, tmp_path: Path) -> None:
    fill(store, signer)
    archive(store, 1_700_000_000 + 6.5, tmp_path / "a.jsonl", signer)
    conn = raw(store)
    # hide record 7 by deleting it and moving the anchor forward without a signature
    h7 = conn.execute("SELECT hash FROM records WHERE seq = 7").fetchone()[0]
    conn.execute("DELETE FROM records WHERE seq = 7")
    conn.execute("UPDATE meta SET value = '7' WHERE key = 'anchor_seq'")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'anchor_hash'", (h7,))
    conn.close()
    result = verify(store, signer.public_key)
    assert not result.ok
    assert result.first_problem is not None and result.first_problem.kind in (
        "anchor_unsigned",
        "checkpoint_mismatch",
    )


def test_tampered_archive_file_is_caught(
    store: SQLiteStore, signer: Signer, tmp_path: Path
) -> None:
    fill(store, signer)
    out = tmp_path / "a.jsonl"
    archive(store, 1_700_000_000 + 6.5, out, signer)
    lines = out.read_bytes().splitlines()
    obj = orjson.loads(lines[3])  # header, then records 1, 2, 3
    assert obj["seq"] == 3
    obj["record"]["identity"] = "nobody"
    lines[3] = orjson.dumps(obj)
    out.write_bytes(b"\n".join(lines) + b"\n")
    result = verify_archive(out, signer.public_key)
    assert result.first_problem is not None and (
        result.first_problem.kind,
        result.first_problem.seq,
    ) == ("changed", 3)


def test_all_record_types_chain(store: SQLiteStore, signer: Signer) -> None:
    s = stmt(1)
    store.append_batch(
        [
            encode(
                SessionEvent(
                    event="opened",
                    session_id="s1",
                    identity="a",
                    identity_kind="human",
                    tls=True,
                    tls_version="TLSv1.3",
                )
            ),
            encode(s),
            encode(CompletionRecord(statement_id=s.id, session_id="s1", rows=3, duration_ms=1.5)),
        ]
    )
    store.add_checkpoint(signer)
    recs = list(store.iter_records())
    assert [r.record.type for r in recs] == ["session", "statement", "completion"]
    assert recs[2].record.ref == s.id
    assert verify(store, signer.public_key).ok

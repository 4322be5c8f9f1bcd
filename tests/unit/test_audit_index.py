"""The search index of the audit logs: what the follower writes, how it restarts after a
crash in the middle of a batch, and the index's schema (version 3: partial indexes)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dbsentry.audit.index import catch_up, catch_up_all
from dbsentry.audit.keys import Signer
from dbsentry.audit.logwriter import LogFile
from dbsentry.audit.query import search
from dbsentry.audit.records import (
    ApprovalRecord,
    CompletionRecord,
    SessionEvent,
    StatementRecord,
    payload_bytes,
)
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import SearchFilter
from dbsentry.audit.verify import verify_all

NODE = "alpha"
T0 = 1_714_560_000.0


def statement(i: int, session: str = "s1", identity: str = "alice@example.com") -> StatementRecord:
    return StatementRecord(
        time=T0 + i,
        session_id=session,
        identity=identity,
        identity_kind="human",
        connection="prod",
        environment="production",
        statement=f"SELECT * FROM users WHERE id = {i}",
        decision="allow",
        command="SELECT",
        tables=("public.users",),
    )


def pairs(n: int, first: int = 0) -> list[bytes]:
    """``n`` statements and their completions, alternating sessions and identities."""
    out = []
    for i in range(first, first + n):
        s = statement(i, session=f"s{i % 3}", identity=("alice" if i % 2 else "bob") + "@example.com")
        out.append(payload_bytes(s))
        out.append(payload_bytes(CompletionRecord(time=T0 + i, statement_id=s.id, session_id=s.session_id, rows=i)))
    return out


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def write_log(log_dir: Path, signer: Signer, payloads: list[bytes]) -> None:
    lf = LogFile(log_dir, NODE, signer=signer, checkpoint_every=50)
    lf.open()
    for p in payloads:
        lf.append(p)
        lf.flush()
    lf.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "audit.db", fsync=False)
    yield s
    s.close()


def index_names(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    finally:
        conn.close()


# --- a crash in the middle of a batch -------------------------------------------------------------

_CRASHING_INDEXER = textwrap.dedent(
    """
    import os, sqlite3, sys
    from pathlib import Path

    commits = 0

    class Crashing(sqlite3.Connection):
        def execute(self, sql, *args):
            global commits
            if sql == "COMMIT":
                commits += 1
                if commits == int(sys.argv[3]):
                    os._exit(9)  # the rows of this batch are inserted, not committed
            return super().execute(sql, *args)

    real = sqlite3.connect
    sqlite3.connect = lambda *a, **k: real(*a, factory=Crashing, **k)

    from dbsentry.audit import index
    from dbsentry.audit.sqlite_store import SQLiteStore

    index.BATCH = 7
    store = SQLiteStore(Path(sys.argv[1]), fsync=False)
    index.catch_up(store, Path(sys.argv[2]), "alpha")
    """
)


def test_the_follower_restarts_from_what_the_index_committed_after_a_crash_mid_batch(
    tmp_path: Path, signer: Signer
) -> None:
    log_dir = tmp_path / "audit-log"
    write_log(log_dir, signer, pairs(20))
    db = tmp_path / "audit.db"
    SQLiteStore(db, fsync=False).close()  # the schema (one commit) before the indexer's
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASHING_INDEXER, str(db), str(log_dir), "4"], capture_output=True, timeout=60
    )
    assert crashed.returncode == 9, crashed.stderr.decode()

    store = SQLiteStore(db, fsync=False)
    try:
        # Three batches of seven committed; the fourth, cut off before its commit, is not there.
        assert store.index_cursor(NODE) == 21
        assert [r.node_seq for r in store.iter_index(NODE)] == list(range(1, 22))
        assert catch_up(store, log_dir, NODE) == 40
        assert [r.node_seq for r in store.iter_index(NODE)] == list(range(1, 41))
        result = verify_all(store, log_dir, [signer.public_key])
        assert result.ok, result.problems
        (node,) = result.nodes
        assert node.index is not None and node.index.agree == 40 and node.index.rows == 40
    finally:
        store.close()


# --- what the index holds and finds -----------------------------------------------------------


def test_every_kind_of_record_is_indexed_as_verify_reads_it(tmp_path: Path, signer: Signer, store: SQLiteStore) -> None:
    log_dir = tmp_path / "audit-log"
    approval = ApprovalRecord(
        time=T0,
        approval_id="ap-1",
        event="requested",
        requester="carol@example.com",
        requester_kind="human",
        connection="prod",
        environment="production",
        statement="DELETE FROM users",
    )
    session = SessionEvent(time=T0, session_id="s9", event="opened", identity="dave@example.com", identity_kind="agent")
    write_log(log_dir, signer, [payload_bytes(session), payload_bytes(approval), *pairs(3)])
    catch_up_all(store, log_dir)
    rows = {r.record.type: r.record for r in store.iter_index(NODE)}
    assert (rows["approval"].identity, rows["approval"].identity_kind, rows["approval"].ref) == (
        "carol@example.com",
        "human",
        "ap-1",
    )
    assert (rows["session"].identity, rows["session"].session_id, rows["session"].ref) == ("dave@example.com", "s9", None)
    assert rows["completion"].identity is None and rows["completion"].ref is not None
    assert rows["statement"].tables == ("public.users",)
    result = verify_all(store, log_dir, [signer.public_key])
    assert result.ok, result.problems
    assert result.nodes[0].index is not None and result.nodes[0].index.agree == 8


def test_a_record_whose_fields_cannot_be_indexed_is_skipped_not_the_rest(
    tmp_path: Path, signer: Signer, store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    log_dir = tmp_path / "audit-log"
    odd = orjson.dumps({"type": "statement", "id": "x1", "time": T0, "tables": 5}, option=orjson.OPT_SORT_KEYS)
    write_log(log_dir, signer, [*pairs(1), odd, *pairs(1, first=1)])
    assert catch_up(store, log_dir, NODE) == 5
    assert [r.node_seq for r in store.iter_index(NODE)] == [1, 2, 4, 5]
    assert "cannot be indexed" in caplog.text


def test_searches_find_statements_by_identity_session_and_type(tmp_path: Path, signer: Signer, store: SQLiteStore) -> None:
    log_dir = tmp_path / "audit-log"
    write_log(log_dir, signer, [payload_bytes(SessionEvent(time=T0, session_id="s0", event="opened", identity="eve@example.com", identity_kind="human")), *pairs(12)])
    catch_up_all(store, log_dir)
    by_identity = list(search(store, SearchFilter(identity="alice@example.com"), limit=None))
    assert sorted(r["statement"] for r in by_identity) == sorted(
        f"SELECT * FROM users WHERE id = {i}" for i in range(12) if i % 2
    )
    assert all(r["rows"] is not None for r in by_identity)  # each with its completion
    by_session = list(search(store, SearchFilter(session_id="s1"), limit=None))
    assert sorted(r["rows"] for r in by_session) == [1, 4, 7, 10]
    sessions = list(store.iter_records(types=["session"], descending=True, limit=5))
    assert [r.record.type for r in sessions] == ["session"]
    completions = list(store.iter_records(types=["completion"]))
    assert len(completions) == 12


def test_an_index_of_schema_2_is_migrated_and_finds_the_same(tmp_path: Path, signer: Signer) -> None:
    log_dir = tmp_path / "audit-log"
    write_log(log_dir, signer, pairs(10))
    db = tmp_path / "audit.db"
    store = SQLiteStore(db, fsync=False)
    catch_up_all(store, log_dir)
    store.close()
    # What version 2 had: full indexes where version 3 has partial ones.
    conn = sqlite3.connect(db)
    conn.executescript(
        """
        DROP INDEX records_chain_id; DROP INDEX records_type_time_nc;
        DROP INDEX records_identity_nn; DROP INDEX records_statement_session;
        CREATE UNIQUE INDEX records_id ON records (id);
        CREATE INDEX records_type_time ON records (type, time);
        CREATE INDEX records_identity ON records (identity, time);
        CREATE INDEX records_session ON records (session_id);
        UPDATE meta SET value = '2' WHERE key = 'schema_version';
        """
    )
    conn.close()
    before = index_names(db)
    assert {"records_id", "records_identity"} <= before

    store = SQLiteStore(db, fsync=False)
    try:
        after = index_names(db)
        assert not after & {"records_id", "records_type_time", "records_identity", "records_session"}
        assert {"records_chain_id", "records_type_time_nc", "records_identity_nn", "records_statement_session"} <= after
        assert store._one("SELECT value FROM meta WHERE key = 'schema_version'") == ("3",)
        assert len(list(search(store, SearchFilter(identity="bob@example.com"), limit=None))) == 5
        assert len(list(search(store, SearchFilter(session_id="s2"), limit=None))) == 3
        assert verify_all(store, log_dir, [signer.public_key]).ok
    finally:
        store.close()


def test_the_stores_own_chain_still_refuses_a_record_id_twice(store: SQLiteStore) -> None:
    from dbsentry.audit.store import encode

    rec = statement(1)
    store.append_batch([encode(rec)])
    assert store.existing_ids([rec.id, "nope"]) == {rec.id}
    with pytest.raises(Exception, match="UNIQUE"):
        store.append_batch([encode(rec)])


def test_opening_waits_for_a_migration_in_another_process_rather_than_fail(tmp_path: Path) -> None:
    import threading

    db = tmp_path / "audit.db"
    SQLiteStore(db, fsync=False).close()
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # what a migration building indexes holds
    other.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
    holding = threading.Timer(1.0, lambda: other.execute("COMMIT"))
    holding.start()
    try:
        store = SQLiteStore(db, busy_timeout_ms=100, fsync=False)  # 100 ms is not enough to wait for it
        assert store.index_cursor(NODE) == 0
        store.close()
    finally:
        holding.join()
        other.close()

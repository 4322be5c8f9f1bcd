"""Three nodes, each appending to its own log, one shared PostgreSQL search index.

The append path never touches the index, so nothing the index holds (a lock on the whole
of it, a node's indexer stuck behind a lock) slows any node's appends; the indexers of
different nodes do not wait for each other either (one cursor row per node).  ``verify``
covers the three logs and the shared index, and names the node of a break.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dbsentry.audit.index import catch_up
from dbsentry.audit.keys import Signer
from dbsentry.audit.log import KIND_RECORD, list_segments, parse_frames, record_frame
from dbsentry.audit.logwriter import LogFile
from dbsentry.audit.pg_store import PostgresStore
from dbsentry.audit.records import StatementRecord, payload_bytes
from dbsentry.audit.verify import verify_all
from support.pg import PgServer

pytestmark = pytest.mark.e2e

NODES = ("node-a", "node-b", "node-c")
PER_ROUND = 300


@pytest.fixture
def schema(pg_server: PgServer) -> Iterator[str]:
    name = f"dbsentry_audit_t{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def payload(node: str, i: int) -> bytes:
    return payload_bytes(
        StatementRecord(
            session_id=f"{node}-s",
            identity="alice@example.com",
            identity_kind="human",
            connection="prod",
            statement=f"SELECT {i} /* {node} */",
            decision="allow",
        )
    )


def append_concurrently(files: dict[str, LogFile], count: int) -> dict[str, tuple[float, float]]:
    """Each node appends ``count`` records from a thread of its own, all at once; the
    (start, end) of each."""
    barrier = threading.Barrier(len(files))
    spans: dict[str, tuple[float, float]] = {}

    def run(node: str) -> None:
        f = files[node]
        barrier.wait()
        start = time.monotonic()
        for i in range(count):
            f.append(payload(node, f.seq + 1))
            if i % 10 == 9:
                f.flush()
        f.flush()
        spans[node] = (start, time.monotonic())

    threads = [threading.Thread(target=run, args=(n,)) for n in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "appends did not finish"
    return spans


def indexer(store: PostgresStore, log_dir: Path, node: str) -> tuple[threading.Thread, list[int]]:
    """``catch_up`` of ``node`` in a thread; its index cursor afterwards, once done."""
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(catch_up(store, log_dir, node)), daemon=True)
    t.start()
    return t, done


@pytest.fixture
def stores(pg_server: PgServer, schema: str) -> Iterator[dict[str, PostgresStore]]:
    """The index, with a store (connection) of its own per node, as each node's process has."""
    made = {n: PostgresStore(pg_server.dsn(), schema=schema) for n in NODES}
    for s in made.values():
        s.migrate()
    yield made
    for s in made.values():
        s.close()


def test_three_nodes_share_an_index_but_no_lock(
    pg_server: PgServer, schema: str, stores: dict[str, PostgresStore], tmp_path: Path
) -> None:
    dsn = pg_server.dsn()
    log_dir = tmp_path / "audit-log"
    signers = {n: Signer(Ed25519PrivateKey.generate()) for n in NODES}
    files = {
        n: LogFile(log_dir, n, signer=signers[n], segment_bytes=8192, checkpoint_every=50) for n in NODES
    }
    for f in files.values():
        f.open()
    try:
        # 1. The whole index locked (no one can read or write it): every node appends.
        with psycopg.connect(dsn) as blocker:
            blocker.execute(f"LOCK TABLE {schema}.records, {schema}.log_cursor IN ACCESS EXCLUSIVE MODE")
            waiting, indexed = indexer(stores["node-a"], log_dir, "node-a")
            spans = append_concurrently(files, PER_ROUND)
            assert {n: f.written_seq for n, f in files.items()} == dict.fromkeys(NODES, PER_ROUND)
            assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values())  # overlapped
            time.sleep(0.2)
            assert waiting.is_alive() and not indexed  # the index really was locked
            blocker.rollback()
        waiting.join(15)
        assert indexed == [PER_ROUND]
        for n in ("node-b", "node-c"):
            assert catch_up(stores[n], log_dir, n) == PER_ROUND

        # 2. Node a's indexer stuck behind a lock on its cursor: the other nodes append and
        #    index, node a appends too.
        append_concurrently(files, PER_ROUND)
        with psycopg.connect(dsn) as blocker:
            blocker.execute(f"SELECT seq FROM {schema}.log_cursor WHERE node = 'node-a' FOR UPDATE")
            waiting, indexed = indexer(stores["node-a"], log_dir, "node-a")
            for n in ("node-b", "node-c"):
                assert catch_up(stores[n], log_dir, n) == 2 * PER_ROUND
            append_concurrently(files, 10)
            assert {n: f.written_seq for n, f in files.items()} == dict.fromkeys(NODES, 2 * PER_ROUND + 10)
            assert waiting.is_alive() and not indexed
            blocker.rollback()
        waiting.join(15)
        assert indexed == [2 * PER_ROUND]  # what node a's log held when its indexer read it
    finally:
        for f in files.values():
            f.close()
    for n in NODES:
        catch_up(stores[n], log_dir, n)

    # 3. verify covers the three logs and the shared index.
    keys = [s.public_key for s in signers.values()]
    store = stores["node-a"]
    result = verify_all(store, log_dir, keys)
    assert result.ok, result.describe()
    assert [n.node for n in result.nodes] == list(NODES)
    total = 2 * PER_ROUND + 10
    for n in result.nodes:
        assert (n.chain.records, n.chain.first_seq, n.chain.last_seq) == (total, 1, total)
        assert len(n.segments) > 3
        assert n.index is not None and (n.index.rows, n.index.agree) == (total, total)
        assert n.chain.unsigned_tail == 0

    # A checkpoint signed by node a's key does not vouch for the others without their keys.
    alone = verify_all(store, log_dir, [signers["node-a"].public_key])
    assert [n.ok for n in alone.nodes] == [True, False, False]

    # A changed record in node b's log is named by node and seq; the others stay intact.
    _, path = list_segments(log_dir / "node-b")[2]
    data = path.read_bytes()
    frames, _, _ = parse_frames(data)
    f = next(f for f in frames if f.kind == KIND_RECORD)
    forged = record_frame(f.seq, f.prev_hash, f.hash, f.payload.replace(b"alice@", b"mallo@"))
    path.write_bytes(data[: f.offset] + forged + data[f.end :])
    result = verify_all(store, log_dir, keys)
    first = result.first_problem
    assert first is not None and (first.kind, first.node, first.seq) == ("changed", "node-b", f.seq)
    assert [n.ok for n in result.nodes] == [True, False, True]

"""The PostgreSQL audit store against a real server: chain, tamper detection, many nodes.

Uses DBSENTRY_TEST_PG_DSN (default: the suite's PostgreSQL, see tests/support/pg.py); each
test gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg")

from dbsentry.audit.keys import Signer, load_or_create_signing_key  # noqa: E402
from dbsentry.audit.pg_store import PostgresStore  # noqa: E402
from dbsentry.audit.query import search  # noqa: E402
from dbsentry.audit.records import CompletionRecord, StatementRecord  # noqa: E402
from dbsentry.audit.store import GENESIS_HASH, SearchFilter, chain_hash, encode  # noqa: E402
from dbsentry.audit.verify import archive, verify, verify_archive  # noqa: E402

# The suite's PostgreSQL: the machine's on 127.0.0.1:5432, or an embedded one (tests/support/pg.py).
from support.pg import find_postgres  # noqa: E402

DSN = os.environ.get("DBSENTRY_TEST_PG_DSN") or find_postgres().dsn()


def _reachable() -> str | None:
    try:
        with psycopg.connect(DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as err:
        return str(err).strip()
    return None


_why = _reachable()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(_why is not None, reason=f"PostgreSQL not reachable at {DSN!r}: {_why}"),
]


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"dbsentry_audit_t{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def store(schema: str) -> Iterator[PostgresStore]:
    s = PostgresStore(DSN, schema=schema)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return Signer(load_or_create_signing_key(tmp_path / "k.key"))


def stmt(i: int, t: float | None = None, **kw: object) -> StatementRecord:
    args: dict[str, object] = {
        "session_id": "s1",
        "identity": "alice",
        "identity_kind": "human",
        "statement": f"SELECT * FROM users WHERE id = {i}",
        "decision": "allow",
        "tables": ("public.users",),
    }
    if t is not None:
        args["time"] = t
    args.update(kw)
    return StatementRecord(**args)  # type: ignore[arg-type]


def fill(store: PostgresStore, signer: Signer, n: int = 10) -> None:
    for i in range(1, n + 1):
        store.append_batch([encode(stmt(i, t=1_700_000_000 + i))])
        if i in (5, 10):
            store.add_checkpoint(signer)


def attacker(schema: str) -> psycopg.Connection:  # type: ignore[type-arg]
    conn = psycopg.connect(DSN, autocommit=True)
    conn.execute(f"DROP TRIGGER IF EXISTS records_append_only ON {schema}.records")
    return conn


def test_schema_migrates_once_and_concurrently(schema: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        s = PostgresStore(DSN, schema=schema)
        try:
            s.migrate()
        except BaseException as err:
            errors.append(err)
        finally:
            s.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s = PostgresStore(DSN, schema=schema)
    assert s.head().seq == 0 and s.anchor().hash == GENESIS_HASH
    s.close()


def test_chain_and_verify(store: PostgresStore, signer: Signer) -> None:
    fill(store, signer)
    recs = list(store.iter_records())
    assert [r.seq for r in recs] == list(range(1, 11))
    assert all(r.hash == chain_hash(r.prev_hash, r.seq, r.payload) for r in recs)
    result = verify(store, signer.public_key)
    assert result.ok and result.valid_checkpoints == 2, result.describe()


def test_update_refused(store: PostgresStore, signer: Signer) -> None:
    fill(store, signer, 2)
    with (
        psycopg.connect(DSN, autocommit=True) as conn,
        pytest.raises(psycopg.errors.RaiseException),
    ):
        conn.execute(f"UPDATE {store.schema}.records SET identity = 'x'")


def test_changed_record_named(store: PostgresStore, signer: Signer) -> None:
    fill(store, signer)
    with attacker(store.schema) as conn:
        conn.execute(
            f"UPDATE {store.schema}.records SET payload = replace(payload, 'id = 4', 'id = 5') WHERE seq = 4"
        )
    first = verify(store, signer.public_key).first_problem
    assert first is not None and (first.kind, first.seq) == ("changed", 4)


def test_deleted_record_named(store: PostgresStore, signer: Signer) -> None:
    fill(store, signer)
    with attacker(store.schema) as conn:
        conn.execute(f"DELETE FROM {store.schema}.records WHERE seq = 6")
    first = verify(store, signer.public_key).first_problem
    assert first is not None and (first.kind, first.seq) == ("removed", 6)


def test_inserted_record_named(store: PostgresStore, signer: Signer) -> None:
    fill(store, signer)
    s = store.schema
    with attacker(s) as conn:
        for seq in range(10, 4, -1):
            conn.execute(f"UPDATE {s}.records SET seq = seq + 1 WHERE seq = %s", (seq,))
        h4 = conn.execute(f"SELECT hash FROM {s}.records WHERE seq = 4").fetchone()[0]  # type: ignore[index]
        forged = encode(stmt(42, t=1_700_000_004.5, identity="mallory"))
        conn.execute(
            f"INSERT INTO {s}.records (seq, prev_hash, hash, id, time, type, session_id, identity, identity_kind, "
            "decision, tables, payload) VALUES (5, %s, %s, %s, %s, 'statement', 's1', 'mallory', 'human', 'allow', "
            "ARRAY['public.users'], %s)",
            (
                h4,
                chain_hash(h4, 5, forged.payload),
                forged.id,
                forged.time,
                forged.payload.decode(),
            ),
        )
        conn.execute(
            f"UPDATE {s}.chain_head SET seq = 11, hash = (SELECT hash FROM {s}.records WHERE seq = 11)"
        )
    first = verify(store, signer.public_key).first_problem
    assert first is not None and (first.kind, first.seq) == ("inserted", 5)


def test_checkpoint_signature_tamper(store: PostgresStore, signer: Signer) -> None:
    fill(store, signer)
    with attacker(store.schema) as conn:
        conn.execute(f"UPDATE {store.schema}.checkpoints SET time = time + 1 WHERE seq = 10")
    first = verify(store, signer.public_key).first_problem
    assert first is not None and (first.kind, first.seq) == ("checkpoint_signature", 10)


def test_several_nodes_keep_one_chain(schema: str, signer: Signer) -> None:
    first = PostgresStore(DSN, schema=schema)
    first.migrate()
    first.close()
    nodes = [PostgresStore(DSN, schema=schema) for _ in range(4)]
    seqs: list[int] = []
    lock = threading.Lock()

    def node(k: int) -> None:
        for i in range(25):
            got = nodes[k].append_batch(
                [encode(stmt(k * 1000 + i)), encode(stmt(k * 1000 + i + 500))]
            )
            with lock:
                seqs.extend(got)
        nodes[k].add_checkpoint(signer)

    threads = [threading.Thread(target=node, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 201))
    result = verify(nodes[0], signer.public_key)
    assert result.ok and result.records == 200, result.describe()
    for n in nodes:
        n.close()


def test_legacy_chain_search_and_archive(store: PostgresStore, signer: Signer, tmp_path: Path) -> None:
    """The store's own chain (written before the audit log existed) is searched, archived
    and verified as before."""
    recs = [stmt(i, t=1_700_000_000 + i, identity="bob" if i % 2 else "alice") for i in range(40)]
    seqs = store.append_batch([encode(r) for r in recs])
    store.append_batch(
        [encode(CompletionRecord(statement_id=r.id, session_id="s1", rows=1, duration_ms=0.1)) for r in recs]
    )
    store.add_checkpoint(signer)
    assert sorted(seqs) == list(range(1, 41))
    rows = list(
        search(store, SearchFilter(identity="bob", table="users", text="ID = 3"), limit=None)
    )
    assert {r["statement"] for r in rows} == {
        "SELECT * FROM users WHERE id = 3",
        "SELECT * FROM users WHERE id = 31",
        "SELECT * FROM users WHERE id = 33",
        "SELECT * FROM users WHERE id = 35",
        "SELECT * FROM users WHERE id = 37",
        "SELECT * FROM users WHERE id = 39",
    }
    assert all(r["rows"] == 1 for r in rows)
    res = archive(store, 1_700_000_000 + 20, tmp_path / "a.jsonl", signer)
    assert res is not None and res.records == 20
    assert verify(store, signer.public_key).ok
    assert verify_archive(tmp_path / "a.jsonl", signer.public_key).ok

"""Tampering with the SQLite audit file behind the proxy's back is caught by ``audit verify``.

A running proxy records some traffic and stops.  Then, on copies of its state, someone
with write access to the file (the append-only trigger dropped) changes a field of one
record, deletes a record, or inserts a forged, correctly hashed record into the chain.
``dbsentry audit verify`` must exit non-zero and name the record; the untouched copy
verifies.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from dbsentry.audit.records import StatementRecord
from dbsentry.audit.store import chain_hash, encode
from support.audit import raw_records, verify
from support.pg import PgServer
from support.proxy import dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

HUMAN = "alice@example.com"


@dataclass(frozen=True)
class Original:
    state_dir: Path
    records: int
    denied_seq: int  # a statement record with decision deny, in the middle of the chain


@pytest.fixture(scope="module")
def original(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Original:
    directory = tmp_path_factory.mktemp("audit_tamper")
    config = write_config(directory, pg_server)
    with run_proxy(config) as proxy:
        for i in range(3):
            with psycopg.connect(proxy.dsn(HUMAN), autocommit=True) as conn:
                conn.execute("select %t::int + 1", (i,))
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(f"drop table not_here_{i}")
                conn.execute("select 'after'")
    raw = raw_records(config)
    denied = [
        i["seq"]
        for i in raw
        if i["record"]["type"] == "statement" and i["record"]["decision"] == "deny"
    ]
    assert len(denied) == 3
    return Original(directory / "state", len(raw), denied[1])


def copy_of(original: Original, pg_server: PgServer, directory: Path) -> tuple[Path, Path]:
    """A configuration whose state is a consistent copy of the original's; (config, db)."""
    config = write_config(directory, pg_server)
    state = directory / "state"
    state.mkdir()
    for name in ("audit_signing.key", "audit_signing.pub"):
        shutil.copy2(original.state_dir / name, state / name)
    src = sqlite3.connect(original.state_dir / "audit.db")
    dst = sqlite3.connect(state / "audit.db")
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return config, state / "audit.db"


@pytest.fixture
def attacker_db(
    original: Original, pg_server: PgServer, tmp_path: Path
) -> Iterator[tuple[Path, sqlite3.Connection]]:
    config, db = copy_of(original, pg_server, tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER records_append_only")
    yield config, conn
    conn.close()


def first_problem(config: Path) -> tuple[int, dict[str, object], str]:
    done = dbsentry_cli("audit", "verify", "--json", config=config, check=False)
    result = json.loads(done.stdout)
    assert result["problems"], done.stdout
    return done.returncode, result["problems"][0], done.stderr


def test_intact_copy_verifies(original: Original, pg_server: PgServer, tmp_path: Path) -> None:
    config, _ = copy_of(original, pg_server, tmp_path)
    done = verify(config)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "chain: INTACT" in done.stdout
    assert f"records: {original.records} (seq 1..{original.records}" in done.stdout
    # The proxy signed a checkpoint when it stopped: nothing is left unsigned.
    assert "0 records after it" in done.stdout


def test_trigger_refuses_plain_update(
    original: Original, pg_server: PgServer, tmp_path: Path
) -> None:
    _, db = copy_of(original, pg_server, tmp_path)
    with sqlite3.connect(db) as conn, pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE records SET identity = 'mallory' WHERE seq = 1")


@pytest.mark.parametrize(
    ("payload_old", "payload_new", "column", "value"),
    [
        (
            f'"identity":"{HUMAN}"',
            '"identity":"mallory@example.com"',
            "identity",
            "mallory@example.com",
        ),
        ('"decision":"deny"', '"decision":"allow"', "decision", "allow"),
    ],
    ids=["identity", "decision"],
)
def test_changed_record_is_named(
    original: Original,
    attacker_db: tuple[Path, sqlite3.Connection],
    payload_old: str,
    payload_new: str,
    column: str,
    value: str,
) -> None:
    config, conn = attacker_db
    seq = original.denied_seq
    cur = conn.execute(
        f"UPDATE records SET payload = replace(payload, ?, ?), {column} = ? WHERE seq = ?",
        (payload_old, payload_new, value, seq),
    )
    assert cur.rowcount == 1
    assert (
        payload_new
        in conn.execute("SELECT payload FROM records WHERE seq = ?", (seq,)).fetchone()[0]
    )
    code, problem, stderr = first_problem(config)
    assert code == 1
    assert (problem["kind"], problem["seq"]) == ("changed", seq)
    assert f"first bad: changed: record {seq}:" in stderr
    assert "chain: BROKEN" in verify(config).stdout


def test_changed_index_column_alone_is_named(
    original: Original, attacker_db: tuple[Path, sqlite3.Connection]
) -> None:
    config, conn = attacker_db
    seq = original.denied_seq
    conn.execute("UPDATE records SET identity = 'mallory@example.com' WHERE seq = ?", (seq,))
    code, problem, _ = first_problem(config)
    assert (code, problem["kind"], problem["seq"]) == (1, "changed", seq)


def test_deleted_record_is_named(
    original: Original, attacker_db: tuple[Path, sqlite3.Connection]
) -> None:
    config, conn = attacker_db
    seq = original.denied_seq
    assert conn.execute("DELETE FROM records WHERE seq = ?", (seq,)).rowcount == 1
    code, problem, stderr = first_problem(config)
    assert code == 1
    assert (problem["kind"], problem["seq"]) == ("removed", seq)
    assert f"first bad: removed: record {seq}:" in stderr


def test_inserted_record_is_named(
    original: Original, attacker_db: tuple[Path, sqlite3.Connection]
) -> None:
    """A forged record with a correct hash, slipped into the chain and the rest renumbered."""
    config, conn = attacker_db
    at = original.denied_seq
    head = conn.execute("SELECT seq FROM chain_head").fetchone()[0]
    conn.execute("BEGIN")
    for seq in range(head, at - 1, -1):
        conn.execute("UPDATE records SET seq = seq + 1 WHERE seq = ?", (seq,))
    prev = conn.execute("SELECT hash FROM records WHERE seq = ?", (at - 1,)).fetchone()[0]
    prev_time = conn.execute("SELECT time FROM records WHERE seq = ?", (at - 1,)).fetchone()[0]
    forged = encode(
        StatementRecord(
            session_id="0123456789abcdef",
            identity="mallory@example.com",
            identity_kind="human",
            statement="select 'nothing to see'",
            decision="allow",
            connection="prod",
            environment="production",
            command="SELECT",
            time=prev_time + 0.0001,
        )
    )
    conn.execute(
        "INSERT INTO records (seq, prev_hash, hash, id, time, type, session_id, identity, identity_kind, "
        "connection, environment, decision, command, ref, tables, payload) "
        "VALUES (?, ?, ?, ?, ?, 'statement', ?, ?, ?, ?, ?, ?, ?, NULL, '[]', ?)",
        (
            at,
            prev,
            chain_hash(prev, at, forged.payload),
            forged.id,
            forged.time,
            forged.session_id,
            forged.identity,
            forged.identity_kind,
            forged.connection,
            forged.environment,
            forged.decision,
            forged.command,
            forged.payload.decode(),
        ),
    )
    conn.execute(
        "UPDATE chain_head SET seq = ?, hash = (SELECT hash FROM records WHERE seq = ?)",
        (head + 1, head + 1),
    )
    conn.execute("COMMIT")
    code, problem, stderr = first_problem(config)
    assert code == 1
    assert (problem["kind"], problem["seq"]) == ("inserted", at)
    assert f"first bad: inserted: record {at}:" in stderr

"""A running proxy with ``audit.nats`` publishes its audit records to NATS JetStream.

A client runs statements through the proxy; their statement records reach the stream
(through the audit helper process) within a few seconds, while the proxy runs, with the
record id as ``Nats-Msg-Id``; once the proxy has stopped, the stream holds every record
of the node's log exactly once.  Skipped where no NATS server with JetStream runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import psycopg
import pytest

from dbsentry.audit.log import LogTailer, list_nodes
from support.jetstream import Message, TestStream, throwaway_stream
from support.pg import PgServer
from support.proxy import run_proxy, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def stream() -> Iterator[TestStream]:
    with throwaway_stream() as s:
        yield s


def statements_with(messages: list[Message], marker: str) -> list[Message]:
    out = []
    for m in messages:
        record = orjson.loads(m.data)
        if record.get("type") == "statement" and marker in (record.get("statement") or ""):
            out.append(m)
    return out


def test_statement_records_reach_the_stream_while_the_proxy_runs(pg_server: PgServer, tmp_path: Path, stream: TestStream) -> None:
    config = write_config(tmp_path, pg_server, extra={"audit": {"nats": stream.settings()}})
    marker = f"nats_e2e_{uuid.uuid4().hex[:8]}"
    with run_proxy(config) as proxy:
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            for i in range(3):
                assert conn.execute(f"select {i} as {marker}").fetchone() == (i,)
            assert conn.execute(f"select %s::int as {marker}", (3,)).fetchone() == (3,)
        deadline = time.monotonic() + 5.0
        found: list[Message] = []
        while time.monotonic() < deadline:
            found = statements_with(stream.messages(missing_ok=True), marker)
            if len(found) == 4:
                break
            time.sleep(0.2)
        assert len(found) == 4, f"{len(found)} of 4 statement records in the stream after 5 s:\n{proxy.log_text()}"
        for m in found:
            assert m.headers["Nats-Msg-Id"] == orjson.loads(m.data)["id"]
        assert "not published to NATS" not in proxy.log_text()
        state = proxy.state_dir

    # After the proxy stopped (the helper's final flush): the whole log, each record once.
    log_dir = state / "audit-log"
    (node,) = list_nodes(log_dir)
    records = list(LogTailer(log_dir / node).read(0))
    got = stream.messages()
    assert len(got) == len(records) == stream.count()
    by_seq = {int(m.headers["Dbsentry-Seq"]): m for m in got}
    for r in records:
        m = by_seq[r.seq]
        assert m.data == r.payload
        assert m.headers["Dbsentry-Node"] == node
        assert m.subject == f"{stream.prefix}.{node}"
    assert (log_dir / f"{node}.nats-cursor").exists()

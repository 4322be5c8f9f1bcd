"""Publishing the audit log to NATS JetStream (``audit.nats``, ``audit/nats_sink.py``).

Against the real NATS server of this machine (127.0.0.1:4222, with JetStream; skipped when
there is none), each test in a stream of its own: every durable record arrives once, with
its id as ``Nats-Msg-Id``; nothing beyond the durable seq is published; a publisher that
restarts from a rewound cursor (a crash before the cursor's write) publishes again and
JetStream drops the duplicates; an unreachable server, and one cut off in the middle of
publishing (a TCP forwarder taken down), are retried without losing anything.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from dbsentry.audit.config import AuditConfig, NatsConfig
from dbsentry.audit.log import LogRecord, LogTailer
from dbsentry.audit.logwriter import LogFile
from dbsentry.audit.nats_sink import (
    NatsPublisher,
    cursor_path,
    message_id,
    read_cursor,
    start_publisher,
    write_cursor,
)
from dbsentry.audit.records import StatementRecord, payload_bytes
from support.jetstream import TestStream, throwaway_stream
from support.pg import _generate_tls, free_port
from support.tcpproxy import TcpForwarder

NODE = "node-a"


def write_records(log_dir: Path, count: int, start: int = 0) -> list[LogRecord]:
    """Append ``count`` statement records to NODE's log (a new segment each call); the whole log."""
    log = LogFile(log_dir, NODE)
    log.open()
    for i in range(start, start + count):
        log.append(payload_bytes(StatementRecord(session_id="s1", identity="alice", identity_kind="human", statement=f"select {i}", decision="allow")))
    log.flush()
    log.close()
    return list(LogTailer(log_dir / NODE).read(0))


def wait_for(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@pytest.fixture
def stream() -> Iterator[TestStream]:
    with throwaway_stream() as s:
        yield s


class Durable:
    """What the helper's ``durable`` would be: settable by the test."""

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def __call__(self) -> int:
        return self.seq


# --------------------------------------------------------------------------- without a server


def test_settings_defaults_and_checks(tmp_path: Path) -> None:
    assert AuditConfig().nats is None  # absent: nothing is published
    cfg = AuditConfig.model_validate({"nats": {}}).nats
    assert cfg is not None
    assert cfg.resolve_url() == ["nats://127.0.0.1:4222"]
    assert cfg.subject_for("n1") == "dbsentry.audit.n1"
    assert cfg.stream == "DBSENTRY_AUDIT"
    assert cfg.stream_subjects("n1") == ["dbsentry.audit.>"]
    assert NatsConfig(subject="siem.audit").stream_subjects("n1") == ["siem.audit"]
    assert NatsConfig(url="nats://a:4222, nats://b:4222").resolve_url() == ["nats://a:4222", "nats://b:4222"]
    for bad in (
        {"url": "nats://x", "url_env": "X"},
        {"subject": "dbsentry.audit.>"},
        {"subject": "dbsentry..audit"},
        {"subject": "a b"},
        {"stream": "has.dot"},
        {"tls": {"cert_file": "c.pem"}},
        {"unknown": 1},
    ):
        with pytest.raises(ValidationError):
            NatsConfig.model_validate(bad)
    with pytest.raises(ValueError, match="DBSENTRY_TEST_UNSET_NATS_URL"):
        NatsConfig(url_env="DBSENTRY_TEST_UNSET_NATS_URL").resolve_url()
    based = AuditConfig.model_validate({"nats": {"creds_file": "nats.creds", "tls": {"ca_file": "ca.pem"}}}).with_base_dir(tmp_path)
    assert based.nats is not None and based.nats.creds_file == tmp_path / "nats.creds"
    assert based.nats.tls is not None and based.nats.tls.ca_file == tmp_path / "ca.pem"


def test_cursor_file_and_message_ids(tmp_path: Path) -> None:
    path = cursor_path(tmp_path, NODE)
    assert path == tmp_path / "node-a.nats-cursor"
    assert read_cursor(path) == 0
    write_cursor(path, 42)
    assert read_cursor(path) == 42
    assert [p.name for p in tmp_path.iterdir()] == ["node-a.nats-cursor"]  # no temporary file left
    path.write_text("{garbled")
    assert read_cursor(path) == 0  # published again rather than skipped
    records = write_records(tmp_path, 2)
    assert message_id(records[0]) == orjson.loads(records[0].payload)["id"]
    no_id = LogRecord(NODE, 7, "", "", b'{"type":"system"}', 1)
    assert message_id(no_id) == "node-a:7"


# --------------------------------------------------------------------------- against NATS


def test_every_durable_record_arrives_once_with_its_id(tmp_path: Path, stream: TestStream) -> None:
    records = write_records(tmp_path, 2500)
    last = records[-1].seq
    durable = Durable(1200)
    pub = NatsPublisher(NatsConfig.model_validate(stream.settings()), tmp_path, NODE, durable, batch=500)
    pub.start()
    try:
        wait_for(lambda: pub.cursor == 1200, what="the durable part")
        time.sleep(0.5)
        assert pub.cursor == 1200 and stream.count() == 1200  # nothing that is not durable
        durable.seq = last
        wait_for(lambda: pub.cursor == last, what="every record")
    finally:
        pub.stop()
    assert read_cursor(cursor_path(tmp_path, NODE)) == last
    assert (pub.published, pub.duplicates, pub.failures) == (last, 0, 0)

    info = stream.info()
    assert info.config.subjects == [f"{stream.prefix}.>"]
    assert info.config.duplicate_window >= 120
    got = stream.messages()
    assert len(got) == last == info.state.messages
    for m, r in zip(got, records, strict=True):
        assert m.subject == f"{stream.prefix}.{NODE}"
        assert m.data == r.payload  # the record as the log holds it
        assert m.headers["Nats-Msg-Id"] == orjson.loads(r.payload)["id"]
        assert m.headers["Dbsentry-Node"] == NODE
        assert m.headers["Dbsentry-Seq"] == str(r.seq)  # in log order
    assert len({m.headers["Nats-Msg-Id"] for m in got}) == last


def test_a_rewound_cursor_publishes_again_and_jetstream_drops_the_duplicates(tmp_path: Path, stream: TestStream) -> None:
    settings = NatsConfig.model_validate(stream.settings())
    records = write_records(tmp_path, 300)
    durable = Durable(records[-1].seq)
    first = NatsPublisher(settings, tmp_path, NODE, durable)
    first.start()
    try:
        wait_for(lambda: first.cursor == 300)
    finally:
        first.stop()
    assert stream.count() == 300

    # A crash after JetStream acknowledged 101..300 but before the cursor said so.
    write_cursor(cursor_path(tmp_path, NODE), 100)
    records = write_records(tmp_path, 50, start=300)  # and the proxy went on writing
    durable.seq = records[-1].seq
    second = NatsPublisher(settings, tmp_path, NODE, durable)
    assert second.cursor == 100  # resumes from the cursor
    second.start()
    try:
        wait_for(lambda: second.cursor == durable.seq)
    finally:
        second.stop()
    assert (second.duplicates, second.published) == (200, 50)
    got = stream.messages()
    assert len(got) == 350 == stream.count()  # each record stored once
    assert [m.headers["Nats-Msg-Id"] for m in got] == [orjson.loads(r.payload)["id"] for r in records]


def test_an_unreachable_server_is_retried_and_nothing_is_lost(tmp_path: Path, stream: TestStream, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dbsentry.audit")
    records = write_records(tmp_path, 500)
    durable = Durable(records[-1].seq)
    forwarder = TcpForwarder("127.0.0.1", 4222)  # not up yet: nothing listens on its port
    settings = NatsConfig.model_validate(stream.settings(url=f"nats://127.0.0.1:{forwarder.port}"))
    pub = NatsPublisher(settings, tmp_path, NODE, durable, batch=200)
    pub.start()
    try:
        wait_for(lambda: pub.failures >= 3, what="three failed attempts")
        assert pub.cursor == 0 and pub.in_outage and pub.last_error
        outages = [r for r in caplog.records if "not published to NATS" in r.getMessage()]
        assert len(outages) == 1, "one warning per outage, not one per attempt"

        forwarder.up()  # NATS is back
        wait_for(lambda: pub.cursor == 500, what="the records after the outage")
        assert not pub.in_outage
        assert any("published to NATS again" in r.getMessage() for r in caplog.records)

        # Cut off in the middle of publishing a backlog: acknowledgements are lost with
        # the connection, the rest waits in the log, nothing is dropped or stored twice.
        records = write_records(tmp_path, 4000, start=500)
        durable.seq = records[-1].seq
        wait_for(lambda: pub.cursor > 500, what="publishing to start")
        forwarder.down()
        assert pub.cursor < durable.seq, "cut in the middle"
        failures = pub.failures
        wait_for(lambda: pub.failures > failures, what="the cut to be noticed")
        time.sleep(0.3)
        forwarder.up()
        wait_for(lambda: pub.cursor == durable.seq, what="the rest")
    finally:
        pub.stop()
        forwarder.down()
    got = stream.messages()
    assert len(got) == 4500 == stream.count()
    assert sorted(int(m.headers["Dbsentry-Seq"]) for m in got) == [r.seq for r in records]
    assert {m.headers["Nats-Msg-Id"] for m in got} == {orjson.loads(r.payload)["id"] for r in records}
    assert len([r for r in caplog.records if "not published to NATS" in r.getMessage()]) == 2


@pytest.mark.serial
def test_stop_publishes_what_is_left_and_does_not_wait_out_an_outage(tmp_path: Path, stream: TestStream) -> None:
    records = write_records(tmp_path, 3000)
    pub = NatsPublisher(NatsConfig.model_validate(stream.settings()), tmp_path, NODE, Durable(records[-1].seq))
    pub.start()
    pub.stop()  # at once: the final flush publishes everything that is durable
    assert pub.cursor == 3000 and stream.count() == 3000

    forwarder = TcpForwarder("127.0.0.1", 4222)
    settings = NatsConfig.model_validate(stream.settings(url=f"nats://127.0.0.1:{forwarder.port}"))
    records = write_records(tmp_path, 10, start=3000)
    down = NatsPublisher(settings, tmp_path, NODE, Durable(records[-1].seq))
    assert down.cursor == 3000
    down.start()
    wait_for(lambda: down.failures >= 1)
    started = time.monotonic()
    down.stop()
    assert time.monotonic() - started < 3.0  # the helper (and the proxy's shutdown) do not wait
    assert read_cursor(cursor_path(tmp_path, NODE)) == 3000  # the 10 wait for the next start


def test_the_publisher_process_is_fed_the_durable_seq_and_restarted_when_killed(tmp_path: Path, stream: TestStream) -> None:
    """What the audit helper runs: the publisher in a process of its own."""
    records = write_records(tmp_path, 3000)
    durable = Durable(1000)
    cursor = cursor_path(tmp_path, NODE)
    proc = start_publisher(NatsConfig.model_validate(stream.settings()), tmp_path / NODE, durable)
    try:
        wait_for(lambda: read_cursor(cursor) == 1000, what="the durable part")
        time.sleep(0.5)
        assert stream.count() == 1000
        pid = proc.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # a crash: restarted, resumes from its cursor
        durable.seq = records[-1].seq
        wait_for(lambda: proc.restarts == 1 and read_cursor(cursor) == 3000, what="the restarted publisher")
        assert proc.pid != pid
    finally:
        records = write_records(tmp_path, 5, start=3000)
        durable.seq = records[-1].seq
        proc.stop()  # publishes what became durable last
    assert read_cursor(cursor) == durable.seq
    got = stream.messages()
    assert len(got) == durable.seq == stream.count()
    assert [int(m.headers["Dbsentry-Seq"]) for m in got] == [r.seq for r in records]


def test_tls_with_a_private_ca(tmp_path: Path) -> None:
    """A NATS server of the test's own that requires TLS, its certificate signed by a CA
    that only ``audit.nats.tls.ca_file`` names."""
    binary = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    if binary is None:
        pytest.skip("no nats-server binary to run a TLS server with")
    ca, cert, key = _generate_tls(tmp_path, ["127.0.0.1"])
    port = free_port()
    server = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path / "js"), "--tls", "--tlscert", str(cert), "--tlskey", str(key)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            except OSError:
                return False
            return True

        wait_for(listening, 10, "the TLS server")
        records = write_records(tmp_path / "log", 20)
        url = f"nats://127.0.0.1:{port}"
        untrusted = NatsPublisher(NatsConfig(url=url), tmp_path / "log", NODE, Durable(20))
        untrusted.start()
        try:
            wait_for(lambda: untrusted.failures >= 1)
            assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.last_error or "")
        finally:
            untrusted.stop()
        settings = NatsConfig.model_validate({"url": url, "tls": {"ca_file": str(ca)}})
        trusted = NatsPublisher(settings, tmp_path / "log", NODE, Durable(records[-1].seq))
        trusted.start()
        try:
            wait_for(lambda: trusted.cursor == 20, what="the records over TLS")
        finally:
            trusted.stop()
    finally:
        server.terminate()
        server.wait(10)

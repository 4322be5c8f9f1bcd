"""/readyz of a node with ``workers: 2`` (only worker 0 serves HTTP), the check HAProxy
runs in the deployment recipe: false while a configured upstream (here a MySQL one) does
not answer or while any worker's audit trail is down, naming the failing part; /healthz
stays liveness only."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from psycopg import errors

from support.deploy import get_json, wait_until
from support.disk import fill, small_disk
from support.pg import PgServer, free_port
from support.proxy import run_proxy, write_config

pytestmark = pytest.mark.e2e


def test_readyz_speaks_for_the_node_with_two_workers(pg_server: PgServer, tmp_path: Path) -> None:
    down = free_port()  # a MySQL upstream where nothing listens
    http = free_port()
    config = write_config(
        tmp_path,
        pg_server,
        extra={"workers": 2, "limits": {"upstream_check_seconds": 0.5, "drain_seconds": 1}, "audit": {"node": "rz"}},
        connections={
            "shop": {"engine": "mysql", "host": "127.0.0.1", "port": down, "database": "shop", "user": "root"}
        },
    )
    data = yaml.safe_load(config.read_text())
    data["listen"].update(http=f"127.0.0.1:{http}", mysql=f"127.0.0.1:{free_port()}")
    config.write_text(yaml.safe_dump(data))
    base = f"http://127.0.0.1:{http}"
    # Worker 1's audit log on a disk of its own, to fill up later.
    with small_disk(tmp_path / "state" / "audit-log" / "rz-w1") as w1_disk, run_proxy(config) as proxy:
        wait_until(lambda: proxy.log_text().count("dbsentry ready") >= 2, "both workers ready")
        wait_until(lambda: get_json(f"{base}/healthz")[0] == 200, "the HTTP listener")

        # 1. The MySQL upstream does not answer: not ready, and it says which and where.
        status, body = get_json(f"{base}/readyz")
        assert status == 503, body
        assert body["checks"]["upstream:shop"] is False
        assert body["checks"]["upstream:prod"] is True
        assert body["checks"]["listener"] is True and body["checks"]["listener:mysql"] is True
        assert body["checks"]["audit_workers"] is True
        # every worker's listeners count: both serve PostgreSQL and MySQL
        assert body["workers_listening"] == {"postgres": {"workers": 2, "listening": 2}, "mysql": {"workers": 2, "listening": 2}}
        assert body["failing"] == [f"upstream:shop (127.0.0.1:{down}): Connection refused"]
        assert get_json(f"{base}/healthz") == (200, {"status": "ok"})  # liveness only

        # 2. It answers again: ready, nothing failing.
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", down))
            listener.listen(16)
            status, body = wait_until(lambda: (got := get_json(f"{base}/readyz"))[0] == 200 and got, "ready")
            assert body["status"] == "ready" and "failing" not in body, body

            # 3. Worker 1's audit trail fails (its disk is full): worker 0 serves /readyz,
            #    and says the node is not ready.
            filler = fill(w1_disk)
            refused = _until_worker_1_refuses(proxy.dsn())
            assert refused.sqlstate == "58000"
            status, body = wait_until(lambda: (got := get_json(f"{base}/readyz"))[0] == 503 and got, "not ready")
            assert body["checks"]["audit_workers"] is False
            assert body["checks"]["audit_writer"] is True  # worker 0's own trail is fine
            assert body["failing"] == ["audit_workers"]
            assert get_json(f"{base}/healthz")[0] == 200

            # 4. Space again: worker 1's trail recovers by itself, and the node is ready.
            filler.unlink()
            with contextlib.suppress(psycopg.Error):
                _statements(proxy.dsn(), 8)  # gives worker 1 something to write
            wait_until(lambda: get_json(f"{base}/readyz")[0] == 200, "ready again", 30)


def _statements(dsn: str, sessions: int) -> None:
    conns: list[psycopg.Connection[Any]] = []
    try:
        for _ in range(sessions):
            conns.append(psycopg.connect(dsn, autocommit=True))
        for c in conns:
            c.execute("select 1")
    finally:
        for c in conns:
            c.close()


def _until_worker_1_refuses(dsn: str) -> errors.Error:
    """Sessions until one lands on worker 1 (the kernel spreads them) and its statement is
    refused because its audit trail cannot write."""
    for _ in range(40):
        conn = psycopg.connect(dsn, autocommit=True)
        try:
            for _ in range(20):
                conn.execute("select 1")
        except errors.Error as err:
            return err
        finally:
            conn.close()
    raise AssertionError("no session was refused: worker 1's audit trail never failed")

"""`dbsentry serve` with an upstream that does not answer: the log and /readyz say which
connection, at which address; /healthz stays liveness only; the log's session ids are the
ones the audit trail and the console show."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from support.pg import PgServer, free_port
from support.proxy import dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e


def _get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:  # it holds the response, and its socket
            return err.code, json.loads(err.read())


def _wait(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_readyz_names_the_unreachable_upstream_and_recovers(
    pg_server: PgServer, tmp_path: Path
) -> None:
    down_port = free_port()
    http_port = free_port()
    config = write_config(
        tmp_path,
        pg_server,
        extra={"limits": {"upstream_check_seconds": 0.5}},
        connections={
            "down": {
                "host": "127.0.0.1",
                "port": down_port,
                "database": "test",
                "user": "postgres",
                "connect_timeout_seconds": 3,
            }
        },
    )
    data = yaml.safe_load(config.read_text())
    data["listen"]["http"] = f"127.0.0.1:{http_port}"
    config.write_text(yaml.safe_dump(data))
    base = f"http://127.0.0.1:{http_port}"
    address = f"127.0.0.1:{down_port}"
    with run_proxy(config) as proxy:
        _wait(lambda: "dbsentry ready" in proxy.log_text())
        log = proxy.log_text()
        assert re.search(rf"WARNING +upstream unreachable connection=down address={address}", log)
        assert re.search(r"WARNING +dbsentry ready, but upstreams do not answer", log), log
        assert f"down ({address})" in log

        _wait(lambda: _get(f"{base}/healthz")[0] == 200)
        status, body = _get(f"{base}/readyz")
        assert status == 503, body
        assert body["status"] == "not ready"
        assert body["checks"]["upstream:down"] is False
        assert body["checks"]["upstream:prod"] is True
        assert body["upstreams"]["down"]["address"] == address
        assert body["upstreams"]["down"]["reachable"] is False
        assert body["upstreams"]["down"]["error"]
        assert _get(f"{base}/healthz") == (200, {"status": "ok"})  # liveness only

        # A client of the dead connection: the operator's log has the address, at WARNING.
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(proxy.dsn(dbname="down"), connect_timeout=10)
        assert "could not connect to the upstream of connection" in str(refused.value)
        _wait(lambda: re.search(rf"WARNING +upstream failed .*address={address}", proxy.log_text()))

        # The log names sessions by the id the audit trail and the console use.
        with psycopg.connect(proxy.dsn(), autocommit=True) as conn:
            conn.execute("select 1 as readiness_marker")
        found = re.findall(r"session\.authenticated session=(\S+)", proxy.log_text())
        assert found and all(re.fullmatch(r"[0-9a-f]{16}", s) for s in found), found
        audited = dbsentry_cli(
            "audit", "search", "--text", "readiness_marker", "--json", config=config
        ).stdout
        assert json.loads(audited.splitlines()[0])["session_id"] in found

        # The upstream comes back: readiness follows, and the log says so.
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", down_port))
            listener.listen(16)
            _wait(lambda: _get(f"{base}/readyz")[0] == 200)
            _wait(lambda: "upstream reachable again connection=down" in proxy.log_text())

"""The parts of the control plane that need no database: backend keys that name a node's
slot and worker, and the ``control_plane`` section of the configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbsentry.config import ConfigError, parse_config
from dbsentry.identity.ratelimit import ControlPlaneUnavailable, LoginThrottled
from dbsentry.server.workerproto import (
    MAX_NODES,
    new_node_pid,
    node_worker_pid,
    pid_slot,
    pid_worker,
)


@pytest.mark.parametrize(("slot", "worker"), [(0, 0), (1, 0), (0, 63), (255, 63), (17, 5)])
def test_a_backend_pid_names_its_node_slot_and_worker(slot: int, worker: int) -> None:
    for rand in (1, 2, 12345, (2**31 - 1) >> 14):
        pid = node_worker_pid(slot, worker, rand)
        assert 0 < pid < 2**31  # a positive int32, as BackendKeyData carries it
        assert (pid_slot(pid), pid_worker(pid)) == (slot, worker)


def test_out_of_range_node_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        node_worker_pid(MAX_NODES, 0, 1)
    with pytest.raises(ValueError):
        node_worker_pid(0, 0, 0)
    with pytest.raises(ValueError):
        node_worker_pid(0, 0, 2**17)


def test_fresh_pids_avoid_the_taken_ones() -> None:
    taken: dict[int, object] = {}
    for _ in range(200):
        pid = new_node_pid(3, 1, taken)
        assert pid not in taken and pid_slot(pid) == 3 and pid_worker(pid) == 1
        taken[pid] = None


def test_control_plane_section(tmp_path: Path) -> None:
    config = parse_config({"control_plane": {"postgres": {"dsn": "dbname=cp"}}}, tmp_path)
    cp = config.control_plane
    assert cp is not None
    assert cp.postgres.schema_ == "dbsentry_control" and cp.listen_addr == ("127.0.0.1", 0)
    assert cp.resolve_secret() is None  # the control plane keeps one
    assert parse_config({}, tmp_path).control_plane is None  # absent: SQLite in state_dir
    secret = tmp_path / "secret"
    secret.write_text("a-long-enough-shared-secret\n")
    cp = parse_config({"control_plane": {"postgres": {"dsn": "x"}, "secret_file": "secret"}}, tmp_path).control_plane
    assert cp is not None and cp.resolve_secret() == b"a-long-enough-shared-secret"


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ({"postgres": {}}, "exactly one of dsn and dsn_env"),
        ({"postgres": {"dsn": "x", "dsn_env": "Y"}}, "exactly one of dsn and dsn_env"),
        ({"postgres": {"dsn": "x", "schema": "Bad-Name"}}, "schema"),
        ({"postgres": {"dsn": "x"}, "listen": "nowhere"}, "HOST:PORT"),
        ({"postgres": {"dsn": "x"}, "heartbeat_seconds": 3, "node_ttl_seconds": 4}, "twice"),
        ({"postgres": {"dsn": "x"}, "secret_env": "A", "secret_file": "b"}, "at most one"),
    ],
)
def test_bad_control_plane_sections_are_refused(tmp_path: Path, section: dict[str, object], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_config({"control_plane": section}, tmp_path)


def test_a_short_or_missing_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cp = parse_config({"control_plane": {"postgres": {"dsn_env": "CP_DSN_UNSET"}, "secret_env": "CP_SECRET"}}, tmp_path).control_plane
    assert cp is not None
    with pytest.raises(ConfigError, match="CP_SECRET"):
        cp.resolve_secret()
    monkeypatch.setenv("CP_SECRET", "short")
    with pytest.raises(ConfigError, match="16 characters"):
        cp.resolve_secret()
    with pytest.raises(ConfigError, match="CP_DSN_UNSET"):
        cp.postgres.resolve_dsn()


def test_an_unreachable_control_plane_refuses_logins_saying_why() -> None:
    refused = ControlPlaneUnavailable("postgres:127.0.0.1:1/cp schema s: connection refused")
    assert isinstance(refused, LoginThrottled)  # the sessions answer it as a refused login
    assert refused.message.startswith("dbsentry: the control plane is unavailable (postgres:127.0.0.1:1/cp")

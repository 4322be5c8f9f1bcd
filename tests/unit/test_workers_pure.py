"""The pure parts of ``workers: N``: backend keys (and MySQL connection ids) that name their
worker and node, where a cancel or KILL for one goes, the authenticated messages between
workers, the failed-login limiter the workers share."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbsentry.config import parse_config
from dbsentry.identity.ratelimit import LoginThrottled
from dbsentry.identity.shared_limit import SharedLoginLimiter
from dbsentry.server.workerproto import (
    MAC_BYTES,
    MAX_WORKERS,
    Owner,
    WorkerInfo,
    new_pid,
    new_session_id,
    owner_of,
    pid_slot,
    pid_worker,
    seal,
    unseal,
    worker_pid,
)
from dbsentry.server.workers import effective_workers, worker_node

KEY = b"k" * 32


@pytest.mark.parametrize("worker", [0, 1, 7, MAX_WORKERS - 1])
def test_a_backend_pid_names_its_worker(worker: int) -> None:
    for rand in (1, 12345, (2**31 - 1) >> 6):
        pid = worker_pid(worker, rand)
        assert 0 < pid < 2**31  # a positive int32, as clients expect
        assert pid_worker(pid) == worker
    taken = {worker_pid(worker, 5): object()}
    for _ in range(200):
        pid = new_pid(worker, taken)
        assert pid not in taken and pid_worker(pid) == worker


def test_out_of_range_keys_are_refused() -> None:
    with pytest.raises(ValueError):
        worker_pid(MAX_WORKERS, 1)
    with pytest.raises(ValueError):
        worker_pid(0, 0)
    with pytest.raises(ValueError):
        worker_pid(0, 2**26)


def test_worker_info_owns_its_pids() -> None:
    info = WorkerInfo(1, 3, KEY, Path("/run"))
    assert info.owns(worker_pid(1, 99)) and not info.owns(worker_pid(2, 99))
    assert info.others() == [0, 2]
    assert info.socket_path(2).name == "w2.sock"


@pytest.mark.parametrize(("slot", "worker"), [(None, None), (None, 0), (None, 5), (0, None), (3, 1), (255, 63)])
def test_a_session_id_names_its_node_and_worker_and_fits_both_protocols(slot: int | None, worker: int | None) -> None:
    from dbsentry.engines.mysql.wire import constants as k
    from dbsentry.engines.mysql.wire.handshake import Handshake, decode_handshake, encode_handshake

    caps = k.CLIENT_PROTOCOL_41 | k.CLIENT_SECURE_CONNECTION | k.CLIENT_PLUGIN_AUTH

    taken: dict[int, object] = {}
    for _ in range(300):
        sid = new_session_id(slot, worker, taken)
        assert sid not in taken and 0 < sid < 2**31  # a positive int32: PostgreSQL's pid, MySQL's id
        taken[sid] = object()
        if worker is not None or slot is not None:
            assert pid_worker(sid) == (worker or 0)
        if slot is not None:
            assert pid_slot(sid) == slot
        # MySQL's greeting carries it in 4 bytes, unchanged.
        greeting = Handshake("10.11.6-MariaDB", sid, b"n" * 20, caps, auth_plugin_name="mysql_native_password")
        assert decode_handshake(encode_handshake(greeting)).connection_id == sid


def test_a_cancel_or_kill_goes_to_the_worker_and_node_its_id_names() -> None:
    w0, w1 = WorkerInfo(0, 2, KEY, Path("/run")), WorkerInfo(1, 2, KEY, Path("/run"))
    mine, theirs = worker_pid(0, 77), worker_pid(1, 77)
    assert owner_of(mine, None, w0).here and owner_of(theirs, None, w1).here
    assert owner_of(theirs, None, w0) == Owner(None, 1)
    assert owner_of(mine, None, w1) == Owner(None, 0)
    assert owner_of(worker_pid(5, 77), None, w0).here  # no such worker: unknown here
    assert owner_of(theirs, None, None).here  # one process: everything is here
    # With a control plane: another slot is another node, whichever worker.
    there = new_session_id(7, 1, {})
    assert owner_of(there, 2, w0) == Owner(7, 1)
    assert owner_of(there, 2, None) == Owner(7, 1)
    assert owner_of(there, 7, w1).here and owner_of(there, 7, w0) == Owner(None, 1)
    # What no process gives out (a KILL takes any number) stays here, as unknown.
    for sid in (0, -1, 2**31, 2**40 + 1):
        assert owner_of(sid, 2, w0).here


def test_a_sealed_message_opens_with_the_key() -> None:
    frame = seal(KEY, {"op": "cancel", "pid": 1234, "secret": "00ff00ff"}, now=1000.0)
    body = unseal(KEY, frame[4:], now=1001.0)
    assert body == {"op": "cancel", "pid": 1234, "secret": "00ff00ff", "ts": 1000.0}
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4


def test_forged_tampered_or_stale_messages_do_not_open() -> None:
    frame = seal(KEY, {"op": "cancel", "pid": 1234, "secret": "00ff00ff"}, now=1000.0)[4:]
    assert unseal(b"x" * 32, frame, now=1000.0) is None  # another node's key
    tampered = frame[:MAC_BYTES] + frame[MAC_BYTES:].replace(b"1234", b"1235")
    assert unseal(KEY, tampered, now=1000.0) is None
    assert unseal(KEY, frame, now=1000.0 + 31) is None  # replayed later
    assert unseal(KEY, frame[:10], now=1000.0) is None
    assert unseal(KEY, b"", now=1000.0) is None


def test_each_worker_has_its_own_audit_node() -> None:
    assert worker_node("db1-a1b2c3", 0) == "db1-a1b2c3-w0"
    assert len({worker_node("n", k) for k in range(4)}) == 4


def test_workers_setting_and_override(tmp_path: Path) -> None:
    assert parse_config({"workers": 1}, tmp_path).workers == 1
    assert parse_config({}, tmp_path).workers is None  # one per CPU
    config = parse_config({"workers": 3}, tmp_path)
    assert effective_workers(config, None) == 3
    assert effective_workers(config, 1) == 1
    assert effective_workers(parse_config({}, tmp_path), None) >= 1


def test_the_shared_limiter_counts_every_process_once(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / "logins.db"
    one = SharedLoginLimiter(path, 3, 60, clock=lambda: now[0])
    two = SharedLoginLimiter(path, 3, 60, clock=lambda: now[0])  # another worker
    one.failure("10.0.0.1", "bob")
    two.failure("10.0.0.1", "bob")
    one.check("10.0.0.1", "bob")
    two.failure("10.0.0.1", "bob")  # the third, wherever it landed
    for limiter in (one, two):
        with pytest.raises(LoginThrottled) as refused:
            limiter.check("10.0.0.1", "bob")
        assert refused.value.retry_after == 60
    one.check("10.0.0.1", "carol")  # others are not locked out
    one.check("10.0.0.2", "bob")
    now[0] += 61
    two.check("10.0.0.1", "bob")  # the wait is over
    two.failure("10.0.0.1", "bob")  # over the limit again: twice as long
    with pytest.raises(LoginThrottled) as refused:
        one.check("10.0.0.1", "bob")
    assert refused.value.retry_after == 120
    one.close()
    two.close()


def test_a_success_forgets_only_its_pair(tmp_path: Path) -> None:
    path = tmp_path / "logins.db"
    one = SharedLoginLimiter(path, 2, 60)
    two = SharedLoginLimiter(path, 2, 60)
    one.failure("a", "bob")
    one.failure("a", "carol")
    two.success("a", "bob")
    one.failure("a", "bob")
    one.check("a", "bob")  # bob's count started again
    one.failure("a", "carol")
    with pytest.raises(LoginThrottled):
        two.check("a", "carol")


def test_the_shared_limiter_limits_an_address(tmp_path: Path) -> None:
    now = [50.0]
    one = SharedLoginLimiter(tmp_path / "l.db", 100, 60, max_failures_per_address=4, clock=lambda: now[0])
    two = SharedLoginLimiter(tmp_path / "l.db", 100, 60, max_failures_per_address=4, clock=lambda: now[0])
    for k in range(4):
        (one if k % 2 else two).failure("a", f"user{k}")
        now[0] += 1
    with pytest.raises(LoginThrottled):
        one.check("a", "someone-else")
    now[0] += 57  # the oldest failure ages out
    two.check("a", "someone-else")
    assert (tmp_path / "l.db").stat().st_mode & 0o777 == 0o600

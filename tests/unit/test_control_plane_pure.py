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


async def _no_cancel(pid: int, secret: bytes, source: str) -> None:
    """A node channel's cancel handler for tests that send none."""


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
    cp = parse_config(
        {"control_plane": {"postgres": {"dsn": "x"}, "secret_file": "secret"}}, tmp_path
    ).control_plane
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
def test_bad_control_plane_sections_are_refused(
    tmp_path: Path, section: dict[str, object], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_config({"control_plane": section}, tmp_path)


def test_a_short_or_missing_secret_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cp = parse_config(
        {"control_plane": {"postgres": {"dsn_env": "CP_DSN_UNSET"}, "secret_env": "CP_SECRET"}},
        tmp_path,
    ).control_plane
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
    assert refused.message.startswith(
        "dbsentry: the control plane is unavailable (postgres:127.0.0.1:1/cp"
    )


# --- the console's questions to other nodes (server/internode.py, web/views.py) ------------

KEY = b"k" * 32


def _row(session_id: str) -> dict[str, object]:
    return {
        "session_id": session_id,
        "live": True,
        "identity": "alice@example.com",
        "identity_kind": "human",
    }


def test_a_status_answer_round_trips_and_names_its_node_and_worker() -> None:
    from dbsentry.server.internode import read_status, status_answer
    from dbsentry.server.workerproto import seal, unseal

    body = status_answer(
        "node-a",
        1,
        "n" * 32,
        lambda: (
            [_row("s1"), {**_row("s2"), "node": "forged"}],
            {"listener": True, "audit_writer": True},
        ),
    )
    frame = seal(KEY, body)[4:]
    got = read_status(unseal(KEY, frame), "n" * 32, "node-a", 1, "10.0.0.1:7001")
    assert got.answered and got.ready and got.checks == {"listener": True, "audit_writer": True}
    assert [(r["session_id"], r["node"], r["worker"]) for r in got.sessions] == [
        ("s1", "node-a", 1),
        ("s2", "node-a", 1),
    ]


def test_a_worker_not_ready_says_which_check_fails() -> None:
    from dbsentry.server.internode import read_status, status_answer

    got = read_status(
        status_answer("a", 0, "n" * 32, lambda: ([], {"listener": True, "control_plane": False})),
        "n" * 32,
        "a",
        0,
        "x:1",
    )
    assert got.answered and got.ready is False and got.checks["control_plane"] is False
    starting = read_status(status_answer("a", 0, "n" * 32, None), "n" * 32, "a", 0, "x:1")
    assert starting.answered and starting.ready is False and starting.sessions == []


def test_an_answer_to_another_question_or_from_another_worker_is_not_believed() -> None:
    from dbsentry.server.internode import read_status, status_answer
    from dbsentry.server.workerproto import seal, unseal

    body = status_answer("node-a", 0, "n" * 32, lambda: ([_row("s1")], {"listener": True}))
    assert not read_status(body, "m" * 32, "node-a", 0, "x:1").answered  # a replayed old answer
    assert not read_status(body, "n" * 32, "node-b", 0, "x:1").answered  # another node's
    assert not read_status(body, "n" * 32, "node-a", 1, "x:1").answered  # another worker's
    forged = seal(b"not the cluster secret" * 2, body)[4:]
    missing = read_status(unseal(KEY, forged), "n" * 32, "node-a", 0, "x:1")
    assert not missing.answered and missing.sessions == []


def test_an_answer_carries_at_most_so_many_sessions_and_says_how_many_it_left_off() -> None:
    from dbsentry.server.internode import MAX_ANSWER_SESSIONS, read_status, status_answer

    rows = [_row(f"s{i}") for i in range(MAX_ANSWER_SESSIONS + 7)]
    got = read_status(status_answer("a", 0, "n" * 32, lambda: (rows, {})), "n" * 32, "a", 0, "x:1")
    assert len(got.sessions) == MAX_ANSWER_SESSIONS and got.left_off == 7


def test_a_question_is_answered_once() -> None:
    from dbsentry.server.internode import SeenNonces
    from dbsentry.server.workerproto import MAX_SKEW_SECONDS

    seen = SeenNonces(limit=3)
    assert seen.first_time("a", 1000.0)
    assert not seen.first_time("a", 1001.0)  # replayed within the window
    assert seen.first_time("b", 1001.0) and seen.first_time("c", 1002.0)
    assert not seen.first_time("d", 1003.0)  # full: nothing new until the old ones age out
    later = 1000.0 + 2 * MAX_SKEW_SECONDS + 0.5
    assert seen.first_time("d", later)  # "a" aged out (a replay of it is stale for unseal)
    assert not seen.first_time("b", later)  # "b" (seen a second after "a") still remembered


def _worker(
    node: str,
    worker: int,
    *,
    answered: bool = True,
    ready: bool = True,
    sessions: int = 0,
    age: float = 0.2,
    this: bool = False,
) -> dict[str, object]:
    return {
        "node": node, "worker": worker, "slot": 3, "address": f"10.0.0.{worker}:7000", "this_node": this,
        "heartbeat_age_seconds": age, "answered": answered, "ready": ready if answered else None,
        "checks": {"listener": ready} if answered else {}, "sessions": sessions if answered else None,
    }  # fmt: skip


def test_nodes_are_summarised_from_their_workers() -> None:
    from dbsentry.web.views import node_summaries

    got = node_summaries([
        _worker("zeta", 1, sessions=2, age=0.4), _worker("zeta", 0, sessions=3, age=0.1),
        _worker("beta", 0, answered=False, age=2.5),
        _worker("omega", 0, this=True), _worker("omega", 1, ready=False, sessions=1),
    ])  # fmt: skip
    assert [n["node"] for n in got] == ["omega", "beta", "zeta"]  # this node first
    omega, beta, zeta = got
    assert zeta["workers"] == [0, 1] and zeta["addresses"] == ["10.0.0.0:7000", "10.0.0.1:7000"]
    assert zeta["sessions"] == 5 and zeta["ready"] is True and zeta["heartbeat_age_seconds"] == 0.1
    assert beta["sessions"] is None and beta["ready"] is False and beta["not_answering"] == [0]
    assert (
        omega["ready"] is False
        and omega["not_ready"] == ["w1: listener"]
        and omega["sessions"] == 1
    )
    assert node_summaries([]) == []


def test_a_worker_answers_another_nodes_question_once_and_never_a_forged_one() -> None:
    """Two inter-node channels on loopback: the question is answered with the sessions; the
    same question sent again (recorded and replayed) and one under another key are not."""
    import asyncio
    import struct

    from dbsentry.server.internode import NodeChannel
    from dbsentry.server.workerproto import seal

    async def main() -> None:
        there = NodeChannel(KEY, "127.0.0.1", 0, _no_cancel)
        there.node, there.worker = "node-b", 1
        there.status = lambda: ([_row("s9")], {"listener": True})
        host, port = await there.start()
        here = NodeChannel(KEY, "127.0.0.1", 0, _no_cancel)
        try:
            got = await here.ask_status(f"{host}:{port}", "node-b", 1)
            assert got.answered and got.ready and [r["session_id"] for r in got.sessions] == ["s9"]

            async def raw(frame: bytes) -> bytes:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(frame)
                await writer.drain()
                answer = await asyncio.wait_for(reader.read(), 2)
                writer.close()
                return answer

            question = seal(KEY, {"op": "status", "nonce": "r" * 32})
            first = await raw(question)
            assert struct.unpack(">I", first[:4])[0] == len(first) - 4 and b'"s9"' in first
            assert await raw(question) == b""  # replayed: no answer
            assert await raw(seal(b"x" * 32, {"op": "status", "nonce": "f" * 32})) == b""
            wrong = await NodeChannel(b"x" * 32, "127.0.0.1", 0, _no_cancel).ask_status(
                f"{host}:{port}", "node-b", 1
            )
            assert not wrong.answered and wrong.sessions == []
            await there.close()
            gone = await here.ask_status(f"{host}:{port}", "node-b", 1)  # a dead worker
            assert not gone.answered and gone.error
        finally:
            await there.close()

    asyncio.run(main())


def test_the_console_lists_the_sessions_of_the_workers_that_answer_and_names_the_others() -> None:
    """ClusterView against a registry of three workers of two other nodes: two answer over
    loopback, one is dead (nothing listens at its address)."""
    import asyncio
    import threading
    from types import SimpleNamespace
    from typing import cast

    from dbsentry.controlplane.registry import NodeAgent, NodeRow
    from dbsentry.server.cluster import ClusterView
    from dbsentry.server.internode import NodeChannel

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(5)  # type: ignore[arg-type]

    channels = []
    registry = [
        NodeRow("node-a", 0, 0, "127.0.0.1:1", 1, 0.0, 0.1)
    ]  # this node: not asked for sessions
    try:
        for name, worker, sessions in (
            ("node-b", 0, ["b0"]),
            ("node-b", 1, ["b1a", "b1b"]),
            ("node-c", 0, ["c0"]),
        ):
            ch = NodeChannel(KEY, "127.0.0.1", 0, _no_cancel)
            ch.node, ch.worker = name, worker
            ch.status = (lambda ids: lambda: ([_row(i) for i in ids], {"listener": True}))(sessions)
            host, port = cast(tuple[str, int], on_loop(ch.start()))
            channels.append(ch)
            registry.append(NodeRow(name, worker, 1, f"{host}:{port}", 2, 0.0, 0.2))
        on_loop(channels.pop().close())  # node C dies: nothing listens at its address
        here = NodeChannel(KEY, "127.0.0.1", 0, _no_cancel)
        agent = cast(NodeAgent, SimpleNamespace(node="node-a", live_nodes=lambda: registry))
        view = ClusterView(agent, here, loop)
        rows, missing = view.remote_sessions()
        assert sorted((r["session_id"], r["node"], r["worker"]) for r in rows) == [
            ("b0", "node-b", 0), ("b1a", "node-b", 1), ("b1b", "node-b", 1),
        ]  # fmt: skip
        assert [(m["node"], m["worker"], m["answered"]) for m in missing] == [("node-c", 0, False)]
        by_worker = {(w["node"], w["worker"]): w for w in view.node_rows()}
        assert (
            by_worker[("node-b", 1)]["sessions"] == 2 and by_worker[("node-b", 1)]["ready"] is True
        )
        assert (
            by_worker[("node-c", 0)]["answered"] is False
            and by_worker[("node-c", 0)]["sessions"] is None
        )
        assert by_worker[("node-a", 0)]["this_node"] is True
        with pytest.raises(RuntimeError):  # never from the loop it needs
            on_loop(_ask_on_loop(view))
    finally:
        for ch in channels:
            on_loop(ch.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def _ask_on_loop(view: object) -> object:
    return view.ask(other_nodes_only=True)  # type: ignore[attr-defined]

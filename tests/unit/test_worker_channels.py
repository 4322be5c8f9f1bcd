"""The channels that carry a question and its answer between workers (Unix sockets) and
between nodes (TCP): a MySQL ``KILL`` of another process's session is asked this way. Real
sockets in one event loop; a forged message gets no answer and its asker an OSError."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dbsentry.server.internode import NodeChannel
from dbsentry.server.workerproto import WorkerChannel, WorkerInfo, seal

KEY = b"k" * 32


async def _no_cancel(pid: int, secret: bytes, source: str) -> None:
    """A node channel's cancel handler for tests that send none."""


def _recording(cancels: list[int]) -> Callable[[int, bytes, str], Awaitable[None]]:
    async def cancel(pid: int, secret: bytes, source: str) -> None:
        cancels.append(pid)

    return cancel


def _kill_handler(seen: list[dict[str, Any]]) -> Any:
    async def handler(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {
            "error": None
            if body.get("identity") == "alice@example.com"
            else "dbsentry: you are not owner of thread 7"
        }

    return handler


def test_a_worker_answers_what_another_asks(tmp_path: Path) -> None:
    async def run() -> None:
        seen: list[dict[str, Any]] = []
        owner = WorkerChannel(WorkerInfo(0, 2, KEY, tmp_path), {})
        owner.on("mysql-kill", _kill_handler(seen))
        await owner.start()
        asker = WorkerChannel(WorkerInfo(1, 2, KEY, tmp_path), {})
        forger = WorkerChannel(WorkerInfo(1, 2, b"x" * 32, tmp_path), {})
        try:
            assert await asker.ask(0, "mysql-kill", target=7, identity="alice@example.com") == {
                "error": None
            }
            assert await asker.ask(0, "mysql-kill", target=7, identity="bob@example.com") == {
                "error": "dbsentry: you are not owner of thread 7"
            }
            with pytest.raises(OSError):  # not under the node's key: ignored, no answer
                await forger.ask(0, "mysql-kill", target=7, identity="alice@example.com")
            assert [b["identity"] for b in seen] == ["alice@example.com", "bob@example.com"]
        finally:
            await owner.close()

    asyncio.run(run())


async def _node_owner() -> tuple[NodeChannel, list[dict[str, Any]], list[int], str, int]:
    """A node's channel that answers KILLs (recorded in the list) and takes cancels (their pids)."""
    seen: list[dict[str, Any]] = []
    cancels: list[int] = []
    owner = NodeChannel(KEY, "127.0.0.1", 0, _recording(cancels))
    owner.on("mysql-kill", _kill_handler(seen))
    host, port = await owner.start()
    return owner, seen, cancels, host, port


def test_a_node_answers_what_another_asks_and_ignores_a_forged_frame() -> None:
    async def run() -> None:
        owner, seen, cancels, host, port = await _node_owner()
        asker = NodeChannel(KEY, "127.0.0.1", 0, _no_cancel)
        try:
            answer = await asker.ask(
                f"{host}:{port}", "mysql-kill", target=7, identity="alice@example.com"
            )
            assert answer == {"error": None}
            with pytest.raises(OSError):
                await NodeChannel(b"x" * 32, "127.0.0.1", 0, _no_cancel).ask(
                    f"{host}:{port}", "mysql-kill", target=7
                )
            # A frame not under the cluster key: the connection is closed without an answer.
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                seal(
                    b"x" * 32,
                    {
                        "op": "mysql-kill",
                        "nonce": "n" * 32,
                        "target": 7,
                        "identity": "alice@example.com",
                    },
                )
            )
            await writer.drain()
            assert await reader.read() == b""  # closed without an answer
            writer.close()
            assert len(seen) == 1
            # Cancels still go their way, unanswered.
            assert await asker.send_cancel(f"{host}:{port}", 1234, b"\x00" * 4, "test")
            for _ in range(50):
                if cancels:
                    break
                await asyncio.sleep(0.01)
            assert cancels == [1234]
        finally:
            await owner.close()

    asyncio.run(run())


def test_an_answer_that_does_not_verify_is_refused(tmp_path: Path) -> None:
    async def run() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(4 + 200)
            body = b'{"answer": {"error": null}, "ts": 0}'
            writer.write(struct.pack(">I", 32 + len(body)) + b"\x00" * 32 + body)  # a made-up MAC
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(serve, path=str(tmp_path / "w0.sock"))
        try:
            with pytest.raises(OSError):
                await WorkerChannel(WorkerInfo(1, 2, KEY, tmp_path), {}).ask(
                    0, "mysql-kill", target=7
                )
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(run())


def test_a_recorded_cancel_or_kill_sent_again_is_ignored() -> None:
    """A frame is fresh for half a minute; within it, the same message replayed (the nonce
    already seen) does nothing, and one without a nonce is refused."""

    async def run() -> None:
        owner, seen, cancels, host, port = await _node_owner()

        async def send(frame: bytes) -> bytes:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(frame)
            await writer.drain()
            got = await reader.read()
            writer.close()
            return got

        try:
            kill = seal(
                KEY,
                {
                    "op": "mysql-kill",
                    "nonce": "a" * 32,
                    "target": 7,
                    "identity": "alice@example.com",
                },
            )
            assert await send(kill) != b""  # answered
            assert await send(kill) == b""  # the same frame again: no answer, nothing done
            assert len(seen) == 1
            cancel = seal(
                KEY,
                {"op": "cancel", "nonce": "b" * 32, "pid": 1234, "secret": "00" * 4, "source": "t"},
            )
            await send(cancel)
            await send(cancel)
            await send(
                seal(KEY, {"op": "cancel", "pid": 1235, "secret": "00" * 4, "source": "t"})
            )  # no nonce
            await asyncio.sleep(0.05)
            assert cancels == [1234]
        finally:
            await owner.close()

    asyncio.run(run())

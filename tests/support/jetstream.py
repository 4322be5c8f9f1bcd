"""A throwaway JetStream stream on the NATS server of this machine, read back by a consumer.

The tests that publish the audit log to NATS (``audit.nats``) use a stream and subject
prefix of their own (so they never meet another test's or a real proxy's records) and
delete the stream afterwards.  ``DBSENTRY_TEST_NATS_URL`` names another server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeoutError

NATS_URL = os.environ.get("DBSENTRY_TEST_NATS_URL", "nats://127.0.0.1:4222")


def unreachable_reason() -> str | None:
    """Why the JetStream tests cannot run here (None: they can)."""
    parts = urlsplit(NATS_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    try:
        with socket.create_connection((host, port), timeout=1):
            pass
    except OSError as err:
        return f"no NATS server at {NATS_URL} ({err}); start nats-server -js to run these tests"

    async def check() -> None:
        nc = await nats.connect(NATS_URL, allow_reconnect=False, connect_timeout=2)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    try:
        asyncio.run(check())
    except Exception as err:
        return f"the NATS server at {NATS_URL} has no JetStream ({type(err).__name__}: {err})"
    return None


@dataclass(frozen=True)
class Message:
    subject: str
    data: bytes
    headers: dict[str, str]
    stream_seq: int


@dataclass
class TestStream:
    """A stream named ``name`` taking ``<prefix>.>``."""

    __test__ = False  # not a test class
    name: str
    prefix: str

    @classmethod
    def new(cls) -> TestStream:
        tag = secrets.token_hex(5)
        return cls(f"DBSENTRY_TEST_{tag}", f"dbsentry-test.{tag}")

    def settings(self, url: str = NATS_URL, **more: Any) -> dict[str, Any]:
        """``audit.nats`` settings that publish into this stream."""
        return {"url": url, "subject": f"{self.prefix}.{{node}}", "stream": self.name, **more}

    def info(self) -> Any:
        async def get() -> Any:
            nc = await nats.connect(NATS_URL, allow_reconnect=False)
            try:
                return await nc.jetstream().stream_info(self.name)
            finally:
                await nc.close()

        return asyncio.run(get())

    def count(self) -> int:
        """How many messages the stream holds."""
        return int(self.info().state.messages)

    def messages(self, *, missing_ok: bool = False) -> list[Message]:
        """Every message of the stream, in stream order, read by an ephemeral pull consumer
        (none, with ``missing_ok``, while the stream is not created yet)."""

        async def read() -> list[Message]:
            nc = await nats.connect(NATS_URL, allow_reconnect=False)
            try:
                js = nc.jetstream()
                try:
                    total = (await js.stream_info(self.name)).state.messages
                except nats.js.errors.NotFoundError:
                    if missing_ok:
                        return []
                    raise
                sub = await js.pull_subscribe(f"{self.prefix}.>", stream=self.name)
                out: list[Message] = []
                while len(out) < total:
                    try:
                        batch = await sub.fetch(min(500, total - len(out)), timeout=5)
                    except NatsTimeoutError:
                        break
                    for m in batch:
                        await m.ack()
                        out.append(Message(m.subject, m.data, dict(m.headers or {}), m.metadata.sequence.stream))
                await sub.unsubscribe()
                return out
            finally:
                await nc.close()

        return asyncio.run(read())

    def delete(self) -> None:
        async def delete() -> None:
            nc = await nats.connect(NATS_URL, allow_reconnect=False)
            try:
                await nc.jetstream().delete_stream(self.name)
            except nats.js.errors.NotFoundError:
                pass
            finally:
                await nc.close()

        asyncio.run(delete())


@contextmanager
def throwaway_stream() -> Iterator[TestStream]:
    """A new stream for one test (the test is skipped where JetStream cannot be reached),
    deleted afterwards."""
    reason = unreachable_reason()
    if reason is not None:
        pytest.skip(reason)
    stream = TestStream.new()
    try:
        yield stream
    finally:
        stream.delete()

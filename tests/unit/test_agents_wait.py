"""agents/waiting.py over a store stand-in: a decision ends the wait, the bound ends it, a
cancelled call drops its watch, and the watcher expires nothing (the proxy does)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from dbsentry.agents.waiting import Waits
from dbsentry.approvals.config import ApprovalsConfig


@dataclass
class _Request:
    id: str
    status: str = "pending"


class _Store:
    def __init__(self) -> None:
        self.requests = {"apr_1": _Request("apr_1")}
        self.counter = 0
        self.expired = 0

    def version(self) -> int:
        return self.counter

    def get(self, request_id: str) -> _Request | None:
        return self.requests.get(request_id)

    def active_grants(self, identity: str, now: float) -> list[Any]:
        return []

    def expire_due(self, now: float) -> list[Any]:
        self.expired += 1
        return []

    def decide(self, status: str) -> None:
        self.requests["apr_1"].status = status
        self.counter += 1


def _waits(store: _Store) -> Waits:
    return Waits(ApprovalsConfig(poll_interval_seconds=0.05), lambda: store)  # type: ignore[arg-type,return-value]


def test_a_decision_ends_the_wait_with_progress_ticks() -> None:
    store = _Store()
    waits = _waits(store)
    ticks: list[tuple[float, float]] = []

    async def tick(elapsed: float, total: float) -> None:
        ticks.append((elapsed, total))

    async def main() -> tuple[bool, float]:
        async with anyio.create_task_group() as tg:

            async def reviewer() -> None:
                await anyio.sleep(0.3)
                store.decide("denied")

            tg.start_soon(reviewer)
            started = time.monotonic()
            decided = await waits.until_decided("apr_1", 10, tick)
            return decided, time.monotonic() - started

    try:
        decided, took = anyio.run(main)
    finally:
        waits.close()
    assert decided and took < 3, took
    assert ticks and ticks[0][1] == 10 and ticks[0][0] < 0.1, ticks
    assert store.expired == 0


@pytest.mark.serial
def test_the_bound_ends_the_wait() -> None:
    store = _Store()
    waits = _waits(store)

    async def tick(elapsed: float, total: float) -> None:
        pass

    started = time.monotonic()
    try:
        assert anyio.run(waits.until_decided, "apr_1", 0.5, tick) is False
        assert anyio.run(waits.until_decided, "apr_1", 0, tick) is False
    finally:
        waits.close()
    assert 0.4 < time.monotonic() - started < 3


@pytest.mark.serial
def test_a_cancelled_call_drops_its_watch() -> None:
    store = _Store()
    waits = _waits(store)

    async def tick(elapsed: float, total: float) -> None:
        pass

    async def main() -> None:
        with anyio.move_on_after(0.3):
            await waits.until_decided("apr_1", 30, tick)

    started = time.monotonic()
    try:
        anyio.run(main)
        watcher = waits._started()
        assert watcher is not None and watcher._watches == {}
    finally:
        waits.close()
    assert time.monotonic() - started < 3


def test_no_store_no_wait() -> None:
    waits = Waits(ApprovalsConfig(), lambda: None)

    async def tick(elapsed: float, total: float) -> None:
        raise AssertionError("no wait, no progress")

    assert anyio.run(waits.until_decided, "apr_1", 5, tick) is False

"""When the shells read a session's upstream (server/reading.py): a large read leaves the
next one for the loop's next turn, a slow client or held results keep it paused."""

from __future__ import annotations

import asyncio

from dbsentry.server.reading import UpstreamReading, client_gone


class FakeTransport:
    def __init__(self) -> None:
        self.reading = True
        self.closing = False
        self.calls = 0

    def pause_reading(self) -> None:
        self.calls += 1
        self.reading = False

    def resume_reading(self) -> None:
        self.calls += 1
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing


async def _turn() -> None:
    await asyncio.sleep(0)


def test_a_large_read_waits_for_the_next_turn() -> None:
    async def run() -> None:
        up, reading = FakeTransport(), UpstreamReading()
        reading.large_read(up)
        assert not up.reading
        reading.large_read(up)  # (once per turn)
        assert up.calls == 1
        await _turn()
        assert up.reading

    asyncio.run(run())


def test_a_slow_client_or_held_results_keep_the_upstream_paused_past_the_turn() -> None:
    async def run() -> None:
        up, reading = FakeTransport(), UpstreamReading()
        reading.client_slow(up, True)
        reading.large_read(up)
        await _turn()
        assert not up.reading
        reading.results_held(up, True)
        reading.client_slow(up, False)
        assert not up.reading  # the results still wait
        reading.results_held(up, False)
        assert up.reading

    asyncio.run(run())


def test_the_turn_resumes_nothing_while_the_client_is_behind() -> None:
    async def run() -> None:
        up, reading = FakeTransport(), UpstreamReading()
        reading.large_read(up)
        reading.client_slow(up, False)  # room again, but this turn is not over
        assert not up.reading
        await _turn()
        assert up.reading

    asyncio.run(run())


def test_a_closing_upstream_is_left_alone() -> None:
    async def run() -> None:
        up, reading = FakeTransport(), UpstreamReading()
        up.closing = True
        reading.large_read(up)
        reading.client_slow(up, True)
        await _turn()
        assert up.calls == 0

    asyncio.run(run())


def test_a_client_is_gone_once_its_socket_closes() -> None:
    t = FakeTransport()
    assert not client_gone(t)
    t.closing = True
    assert client_gone(t)
    assert client_gone(None)

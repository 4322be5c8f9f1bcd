from __future__ import annotations

import pytest

from dbsentry.identity.ratelimit import FailureLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_blocks_after_max_failures(clock: Clock) -> None:
    lim = FailureLimiter(3, 60, clock)
    for _ in range(2):
        lim.record_failure("10.0.0.1")
        assert not lim.blocked("10.0.0.1")
    lim.record_failure("10.0.0.1")
    assert lim.blocked("10.0.0.1")
    assert not lim.blocked("10.0.0.2")  # per source


def test_unblocks_after_window(clock: Clock) -> None:
    lim = FailureLimiter(3, 60, clock)
    for _ in range(3):
        lim.record_failure("a")
    clock.now += 59.9
    assert lim.blocked("a")
    clock.now += 0.1
    assert not lim.blocked("a")
    assert len(lim) == 0  # fully aged-out sources are forgotten


def test_window_slides(clock: Clock) -> None:
    lim = FailureLimiter(3, 60, clock)
    lim.record_failure("a")  # t=100
    clock.now += 40
    lim.record_failure("a")  # t=140
    clock.now += 30
    lim.record_failure("a")  # t=170: the first has aged out
    assert not lim.blocked("a")
    clock.now += 10
    lim.record_failure("a")  # t=180: 140, 170, 180 within 60 s
    assert lim.blocked("a")
    clock.now = 200.0  # 140 has aged out
    assert not lim.blocked("a")


def test_success_clears(clock: Clock) -> None:
    lim = FailureLimiter(3, 60, clock)
    for _ in range(3):
        lim.record_failure("a")
    assert lim.blocked("a")
    lim.record_success("a")
    assert not lim.blocked("a")
    lim.record_failure("a")
    lim.record_failure("a")
    assert not lim.blocked("a")
    lim.record_success("never-seen")  # no error


def test_memory_bounded(clock: Clock) -> None:
    lim = FailureLimiter(2, 60, clock, max_sources=100)
    for n in range(10_000):
        lim.record_failure(f"198.51.100.{n}")
        assert len(lim) <= 100
    # per-source history is bounded too
    for _ in range(1000):
        lim.record_failure("x")
    assert len(lim._failures["x"]) == 2


def test_eviction_prefers_stale_sources(clock: Clock) -> None:
    lim = FailureLimiter(2, 60, clock, max_sources=3)
    lim.record_failure("old")
    clock.now += 61  # "old" is stale now
    lim.record_failure("victim")
    lim.record_failure("victim")
    lim.record_failure("b")
    lim.record_failure("c")  # full: "old" goes, not "victim"
    assert lim.blocked("victim")
    assert "old" not in lim._failures
    lim.record_failure("d")  # nothing stale: the least recently failing goes
    assert len(lim) == 3
    assert "victim" not in lim._failures


@pytest.mark.parametrize(("n", "window", "cap"), [(0, 60, 10), (1, 0, 10), (1, -1, 10), (1, 60, 0)])
def test_validates(n: int, window: float, cap: int) -> None:
    with pytest.raises(ValueError):
        FailureLimiter(n, window, max_sources=cap)

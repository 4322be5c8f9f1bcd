"""The failed-login limiter: per (address, identity) with doubling waits, a per-address
ceiling, never reset by another identity's success, bounded memory."""

from __future__ import annotations

import pytest

from dbsentry.identity.ratelimit import LoginLimiter, LoginThrottled


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def limiter(clock: Clock, **kw: int) -> LoginLimiter:
    args = {"max_failures_per_address": 10, "max_backoff_seconds": 480, **kw}
    return LoginLimiter(3, 60, clock=clock, **args)


def test_pair_waits_after_max_failures(clock: Clock) -> None:
    lim = limiter(clock)
    for _ in range(2):
        lim.failure("10.0.0.1", "alice")
        assert lim.retry_after("10.0.0.1", "alice") is None
    lim.failure("10.0.0.1", "alice")
    assert lim.retry_after("10.0.0.1", "alice") == 60
    with pytest.raises(LoginThrottled) as err:
        lim.check("10.0.0.1", "alice")
    assert str(err.value) == "too many failed logins from this address; retry in 60 s"
    # one person's typos do not lock out a colleague behind the same address, nor alice elsewhere
    assert lim.retry_after("10.0.0.1", "bob") is None
    assert lim.retry_after("10.0.0.2", "alice") is None


def test_waits_double_up_to_the_ceiling(clock: Clock) -> None:
    lim = limiter(clock, max_failures_per_address=1000)
    waits = []
    for _ in range(3):
        lim.failure("a", "alice")
    for _ in range(6):
        wait = lim.retry_after("a", "alice")
        assert wait is not None
        waits.append(wait)
        clock.now += wait  # the wait is over: one more wrong guess
        assert lim.retry_after("a", "alice") is None
        lim.failure("a", "alice")
    assert waits == [60, 120, 240, 480, 480, 480]


def test_a_quiet_window_after_the_wait_forgets_the_pair(clock: Clock) -> None:
    lim = limiter(clock)
    for _ in range(3):
        lim.failure("a", "alice")
    clock.now += 60 + 60
    lim.failure("a", "alice")
    assert lim.retry_after("a", "alice") is None  # counting from one again


def test_success_forgets_only_that_identity(clock: Clock) -> None:
    lim = limiter(clock)
    for _ in range(3):
        lim.failure("a", "victim")
    for _ in range(2):
        lim.failure("a", "mallory")
    lim.success("a", "mallory")  # the attacker's own good token
    assert lim.retry_after("a", "victim") == 60
    lim.success("a", "victim")
    assert lim.retry_after("a", "victim") is None


def test_per_address_ceiling_across_identities(clock: Clock) -> None:
    lim = limiter(clock)
    for n in range(10):
        lim.failure("a", f"user{n}")  # two each would not reach any pair's limit
    assert lim.retry_after("a", "someone-else") == 60
    lim.success("a", "user1")  # successes do not lower the ceiling
    assert lim.retry_after("a", "user1") == 60
    assert lim.retry_after("b", "user1") is None
    clock.now += 30
    assert lim.retry_after("a", "x") == 30
    clock.now += 30
    assert lim.retry_after("a", "x") is None


def test_memory_is_bounded(clock: Clock) -> None:
    lim = LoginLimiter(3, 60, clock=clock, max_keys=50)
    for n in range(1000):
        lim.failure(f"10.0.{n // 250}.{n % 250}", f"u{n}")
        clock.now += 0.001
    assert len(lim) <= 100
    lim.failure("fresh", "x")
    assert len(lim) <= 100


def test_stale_entries_go_first(clock: Clock) -> None:
    lim = LoginLimiter(2, 60, clock=clock, max_keys=2, max_failures_per_address=100)
    lim.failure("old", "x")
    clock.now += 1000
    lim.failure("busy", "x")
    lim.failure("busy", "x")
    lim.failure("new", "x")  # evicts the stale "old", keeps the blocked "busy"
    assert lim.retry_after("busy", "x") == 60


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        LoginLimiter(0, 60)
    with pytest.raises(ValueError):
        LoginLimiter(3, 0)
    with pytest.raises(ValueError):
        LoginLimiter(3, 600, max_backoff_seconds=60)

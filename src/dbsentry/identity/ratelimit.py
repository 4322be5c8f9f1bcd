"""Failed-login limiting per (address, identity) and per address, in bounded memory.

Two limits, checked before a credential is looked at:

- **Per (address, identity)**: after ``max_failures`` failures for one identity from one
  address, that pair waits ``failure_window_seconds``, then twice as long after each further
  failure, up to ``max_backoff_seconds``.  The pair is forgotten after a success *for that
  identity*, or after a quiet window once its wait is over.  One person's typos never lock
  out colleagues behind the same address, and nobody's success resets anyone else's count.
- **Per address**: more than ``max_failures_per_address`` failures, whatever the identities,
  within ``failure_window_seconds`` refuse the whole address until the oldest ages out.  Set
  it high enough for an office NAT; it stops one address guessing across many identities.
  Successes never reduce it.

The identity is what the client claims before it is verified (the database ``user``, the
token id of a ``dbs_`` token, the identity claim of a JWT), so a guesser cannot reach
another identity's pair by presenting its own good token.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from dbsentry.identity.model import Identity

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_MAX_KEYS = 100_000


class LoginThrottled(Exception):
    """Too many failed logins: refused without checking the credential."""

    def __init__(self, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return f"too many failed logins from this address; retry in {self.retry_after} s"


class ControlPlaneUnavailable(LoginThrottled):
    """The shared control plane (``control_plane:``) cannot be reached: logins, and what
    else needs it, are refused (fail closed) until it is back."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(1)

    @property
    def message(self) -> str:
        return f"dbsentry: the control plane is unavailable ({self.detail}); try again shortly"


@dataclass(slots=True)
class _Pair:
    failures: int
    last: float
    until: float  # refused before this time (0: not refused)


class Limits:
    """The limits of a failed-login limiter, checked, and the check every limiter makes."""

    def __init__(self, max_failures: int, window_seconds: float, max_failures_per_address: int, max_backoff_seconds: float) -> None:
        if max_failures < 1 or max_failures_per_address < 1:
            raise ValueError("the failure limits must be at least 1")
        if window_seconds <= 0 or max_backoff_seconds < window_seconds:
            raise ValueError("need 0 < window_seconds <= max_backoff_seconds")
        self.max_failures = max_failures
        self.window_seconds = float(window_seconds)
        self.max_failures_per_address = max_failures_per_address
        self.max_backoff_seconds = float(max_backoff_seconds)

    def retry_after(self, address: str, identity: str) -> int | None:
        raise NotImplementedError

    def failure(self, address: str, identity: str) -> None:
        raise NotImplementedError

    def success(self, address: str, identity: str) -> None:
        raise NotImplementedError

    def check(self, address: str, identity: str) -> None:
        """Raise :class:`LoginThrottled` if the attempt must be refused unchecked."""
        wait = self.retry_after(address, identity)
        if wait is not None:
            raise LoginThrottled(wait)


class LoginLimiter(Limits):
    """Thread-safe; ``address`` is the client's address without the port."""

    def __init__(
        self,
        max_failures: int = 5,
        window_seconds: float = 60,
        *,
        max_failures_per_address: int = 100,
        max_backoff_seconds: float = 900,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        super().__init__(max_failures, window_seconds, max_failures_per_address, max_backoff_seconds)
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # Both ordered by latest failure, oldest first, so eviction drops the stalest.
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()
        self._addresses: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """How many (address, identity) pairs and addresses are tracked."""
        return len(self._pairs) + len(self._addresses)

    def retry_after(self, address: str, identity: str) -> int | None:
        """Seconds until ``identity`` may try again from ``address``; None if it may now."""
        now = self._clock()
        with self._lock:
            wait = 0.0
            times = self._addresses.get(address)
            if times is not None and len(times) >= self.max_failures_per_address:
                wait = times[0] + self.window_seconds - now
            pair = self._pairs.get((address, identity))
            if pair is not None:
                wait = max(wait, pair.until - now)
        return math.ceil(wait) if wait > 0 else None

    def failure(self, address: str, identity: str) -> None:
        now = self._clock()
        with self._lock:
            key = (address, identity)
            pair = self._pairs.get(key)
            if pair is not None and self._quiet(pair, now):
                pair = None
            if pair is None:
                self._make_room(self._pairs, now, self._pair_stale)
                pair = self._pairs[key] = _Pair(0, now, 0.0)
            else:
                self._pairs.move_to_end(key)
            pair.failures += 1
            pair.last = now
            over = pair.failures - self.max_failures
            if over >= 0:
                backoff = self.window_seconds * 2.0 ** min(over, 32)
                pair.until = now + min(self.max_backoff_seconds, backoff)
            times = self._addresses.get(address)
            if times is None:
                self._make_room(self._addresses, now, self._address_stale)
                times = self._addresses[address] = deque(maxlen=self.max_failures_per_address)
            else:
                self._addresses.move_to_end(address)
            times.append(now)

    def success(self, address: str, identity: str) -> None:
        """``identity`` proved itself from ``address``: forget that pair, and only it."""
        with self._lock:
            self._pairs.pop((address, identity), None)

    def _quiet(self, pair: _Pair, now: float) -> bool:
        """The pair's wait is over and a whole window passed since without a failure."""
        return now >= max(pair.until, pair.last) + self.window_seconds

    def _pair_stale(self, pair: _Pair, now: float) -> bool:
        return self._quiet(pair, now)

    def _address_stale(self, times: deque[float], now: float) -> bool:
        return times[-1] <= now - self.window_seconds

    def _make_room(
        self, table: OrderedDict[K, V], now: float, stale: Callable[[V, float], bool]
    ) -> None:
        """Keep ``table`` under ``max_keys``: drop the stale entries at its old end, then,
        if still full, the least recently failing one."""
        while table:
            oldest = next(iter(table.values()))
            if not stale(oldest, now):
                break
            table.popitem(last=False)
        if len(table) >= self.max_keys:
            table.popitem(last=False)


def login(
    authenticate: Callable[[str, str, str], Identity | None], user: str, password: str, source: str
) -> Identity | LoginThrottled | None:
    """``authenticate(user, password, source)`` with a throttled attempt as a value, for a
    caller that hands the outcome on (the database session answers it with 28000)."""
    try:
        return authenticate(user, password, source)
    except LoginThrottled as refused:
        return refused

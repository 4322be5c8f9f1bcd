"""Failed-login limiting per source address, in bounded memory."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

DEFAULT_MAX_SOURCES = 100_000


class FailureLimiter:
    """Blocks a source after ``max_failures`` failed logins within ``window_seconds``.

    The window slides: a source stays blocked until the oldest of its last ``max_failures``
    failures is older than the window.  A success clears the source's record.

    Memory is bounded twice: each source keeps at most ``max_failures`` timestamps (older ones
    cannot matter), and at most ``max_sources`` sources are tracked.  Sources are kept in order
    of their latest failure, so when the cap is reached the stale ones go first and then the
    least recently failing; an attacker with more addresses than the cap can make the limiter
    forget its own oldest addresses, but cannot make it grow.

    ``source`` should be the client's address without the port.  Thread-safe.
    """

    def __init__(
        self,
        max_failures: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_sources: int = DEFAULT_MAX_SOURCES,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if window_seconds <= 0:
            raise ValueError("window_seconds must be positive")
        if max_sources < 1:
            raise ValueError("max_sources must be at least 1")
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.max_sources = max_sources
        self._clock = clock
        self._lock = threading.Lock()
        # source -> times of its latest failures, oldest first; the dict is ordered by each
        # source's latest failure, oldest first.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        """How many sources are tracked (stale ones included until they are evicted)."""
        return len(self._failures)

    def blocked(self, source: str) -> bool:
        """True if ``source`` has had ``max_failures`` failures within the window."""
        now = self._clock()
        with self._lock:
            times = self._failures.get(source)
            if times is None:
                return False
            if times[-1] <= now - self.window_seconds:
                del self._failures[source]  # every failure has aged out
                return False
            return len(times) >= self.max_failures and times[0] > now - self.window_seconds

    def record_failure(self, source: str) -> None:
        now = self._clock()
        with self._lock:
            times = self._failures.get(source)
            if times is None:
                if len(self._failures) >= self.max_sources:
                    self._evict(now)
                times = self._failures[source] = deque(maxlen=self.max_failures)
            else:
                self._failures.move_to_end(source)
            times.append(now)

    def record_success(self, source: str) -> None:
        with self._lock:
            self._failures.pop(source, None)

    def _evict(self, now: float) -> None:
        """Make room for one source: drop every stale one, or else the least recent."""
        cutoff = now - self.window_seconds
        while self._failures:
            _, times = next(iter(self._failures.items()))
            if times[-1] > cutoff:
                break
            self._failures.popitem(last=False)
        if len(self._failures) >= self.max_sources:
            self._failures.popitem(last=False)

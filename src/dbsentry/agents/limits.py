"""Limits the model cannot override: rows, bytes, statement timeout, calls per minute."""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dbsentry.agents.errors import ToolRefused
from dbsentry.agents.settings import McpConfig, McpLimits


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int
    max_bytes: int
    timeout_seconds: float
    rate_per_minute: int


def _strictest(a: float, b: float | None) -> float:
    return a if b is None else min(a, b)


def resolve_limits(cfg: McpConfig, connection: str, identity: str) -> Limits:
    """The strictest of the global caps, the connection's and every matching identity's."""
    layers: list[McpLimits] = []
    by_conn = cfg.connections.get(connection)
    if by_conn is not None:
        layers.append(by_conn)
    layers.extend(lim for pattern, lim in cfg.identities.items() if fnmatch.fnmatchcase(identity, pattern))
    rows: float = cfg.max_rows
    size: float = cfg.max_bytes
    timeout = cfg.statement_timeout_seconds
    rate: float = cfg.rate_per_minute
    for lim in layers:
        rows = _strictest(rows, lim.max_rows)
        size = _strictest(size, lim.max_bytes)
        timeout = _strictest(timeout, lim.statement_timeout_seconds)
        rate = _strictest(rate, lim.rate_per_minute)
    return Limits(int(rows), int(size), timeout, int(rate))


def rows_for_call(limits: Limits, max_rows: object) -> int:
    """The row cap of one call: ``max_rows`` may only lower the configured cap."""
    if max_rows is None:
        return limits.max_rows
    if isinstance(max_rows, bool) or not isinstance(max_rows, int):
        raise ToolRefused("max_rows must be a whole number of rows (at least 1)")
    if max_rows < 1:
        raise ToolRefused(f"max_rows must be at least 1 (got {max_rows}); the cap is {limits.max_rows}")
    return min(max_rows, limits.max_rows)


class RateLimiter:
    """A token bucket per agent: ``per_minute`` calls, refilled continuously; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, who: str, per_minute: int) -> None:
        """Spend one call of ``who``, or raise ToolRefused saying when to retry."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(who, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - at) * per_minute / 60.0)
            if tokens < 1.0:
                wait = (1.0 - tokens) * 60.0 / per_minute
                self._buckets[who] = (tokens, now)
                raise ToolRefused(
                    f"rate limit: at most {per_minute} tool calls per minute for this agent; retry in {wait:.1f} s"
                )
            self._buckets[who] = (tokens - 1.0, now)


class ResultCollector:
    """Rows as they arrive, cut at the row or byte cap (``truncated`` then says so)."""

    def __init__(self, max_rows: int, max_bytes: int) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.rows: list[list[str | None]] = []
        self.bytes = 0
        self.truncated = False
        self.truncated_by: str | None = None

    def add(self, row: Sequence[object]) -> bool:
        """Keep ``row`` if it fits; False once the result is cut (stop reading)."""
        if len(self.rows) >= self.max_rows:
            self.truncated, self.truncated_by = True, "max_rows"
            return False
        values = [None if v is None else str(v) for v in row]
        size = sum(len(v.encode("utf-8", "replace")) for v in values if v is not None)
        if self.bytes + size > self.max_bytes:
            self.truncated, self.truncated_by = True, "max_bytes"
            return False
        self.rows.append(values)
        self.bytes += size
        return True

"""Prometheus metrics: the objects, and one small function per thing that happened.

The proxy calls these on its hot path, so each is a dictionary lookup (the labelled child
is cached) and an increment; none allocates once its labels have been seen.  What happens
once per statement (statements by decision, their durations, masked values, audit records
written) is counted in this process's memory and added to prometheus_client's values by
``flush()``: every :data:`FLUSH_SECONDS` on each event loop (``flush_every``), and before
``render()``.  prometheus_client's own increment takes a lock, asks the OS for the process
id and packs a double into a shared file in multiprocess mode (``workers: N``): about twice
a plain increment's time, paid here once per batch instead of once per statement.  Label
values are bounded: decisions and statement classes are small fixed sets, connections come
from the configuration, data classes from the masking module.

    from dbsentry import metrics
    metrics.session_opened("prod")
    metrics.statement("deny", "ddl", "prod")
    metrics.statement_duration(0.0042, "prod")

``render()`` gives the exposition text served at ``/metrics``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from bisect import bisect_left
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from dbsentry.audit.records import CompletionRecord, Record, SessionEvent, StatementRecord

# Set (by the supervisor of ``workers: N``) before prometheus_client was imported: every
# process writes its values to files there, and render() sums them.
# A process that a worker starts (the audit helper) inherits the variable but is no worker
# (DBSENTRY_METRICS_PID names the process it is meant for): its metrics stay in memory.
MULTIPROCESS_DIR: Final = (
    os.environ.get("PROMETHEUS_MULTIPROC_DIR") if os.environ.get("DBSENTRY_METRICS_PID") == str(os.getpid()) else None
) or None
if MULTIPROCESS_DIR is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from prometheus_client import values as _values

    _values.ValueClass = _values.MutexValue

REGISTRY: Final = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

SESSIONS_ACTIVE: Final = Gauge(
    "dbsentry_sessions_active",
    "Client sessions currently open (authenticated and connected upstream)",
    ["connection"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
SESSIONS_TOTAL: Final = Counter(
    "dbsentry_sessions",
    "Client sessions opened",
    ["connection"],
    registry=REGISTRY,
)
LOGIN_FAILURES: Final = Counter(
    "dbsentry_login_failures",
    "Failed logins (bad, expired or revoked token; rate limited; not allowed)",
    ["reason"],
    registry=REGISTRY,
)
STATEMENTS: Final = Counter(
    "dbsentry_statements",
    "Statements judged by policy, by decision, statement class and connection",
    ["decision", "class", "connection"],
    registry=REGISTRY,
)
STATEMENT_SECONDS: Final = Histogram(
    "dbsentry_statement_duration_seconds",
    "Time from forwarding a statement to its completion",
    ["connection"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
MASKED_VALUES: Final = Counter(
    "dbsentry_masked_values",
    "Values masked in result rows, by data class",
    ["data_class"],
    registry=REGISTRY,
)
PENDING_APPROVALS: Final = Gauge(
    "dbsentry_pending_approvals",
    "Approval requests waiting for a reviewer",
    registry=REGISTRY,
    multiprocess_mode="livemax",  # every worker reads the same shared store
)
AUDIT_COMMIT_SECONDS: Final = Histogram(
    "dbsentry_audit_commit_seconds",
    "Time to commit one batch of audit records (fsync included)",
    buckets=_COMMIT_BUCKETS,
    registry=REGISTRY,
)
AUDIT_RECORDS: Final = Counter(
    "dbsentry_audit_records",
    "Audit records committed",
    registry=REGISTRY,
)
AUDIT_HEALTHY: Final = Gauge(
    "dbsentry_audit_healthy",
    "1 while the audit trail accepts records, 0 during an outage (statements are refused)",
    registry=REGISTRY,
    multiprocess_mode="livemin",  # 0 while any worker's trail is down
)
LISTENER_UP: Final = Gauge(
    "dbsentry_listener_up",
    "1 while this process's client listener accepts connections",
    ["listener"],
    registry=REGISTRY,
    multiprocess_mode="liveall",  # one sample per live worker: /readyz counts them
)
AUDIT_ERRORS: Final = Counter(
    "dbsentry_audit_errors",
    "Audit failures: failed commits, and statements refused because the audit was down",
    ["kind"],
    registry=REGISTRY,
)
API_REQUESTS: Final = Counter(
    "dbsentry_api_requests",
    "HTTP API requests, by outcome",
    ["status"],
    registry=REGISTRY,
)

_lock = threading.Lock()
# Labelled children by label values: ``labels()`` validates and locks on every call, a
# plain dict lookup does not.  Filled under _lock; read without it (dict reads are atomic).
_children: dict[tuple[object, ...], Any] = {}

_M = TypeVar("_M", Counter, Gauge, Histogram)


def _child(metric: _M, *values: str) -> _M:
    key = (id(metric), *values)
    child = _children.get(key)
    if child is None:
        with _lock:
            child = _children.get(key)
            if child is None:
                child = metric.labels(*values)
                _children[key] = child
    return cast(_M, child)


def _label(value: str | None) -> str:
    return value if value else "none"


def session_opened(connection: str | None) -> None:
    """A session finished its handshake; pair it with exactly one ``session_closed``."""
    c = _label(connection)
    _child(SESSIONS_TOTAL, c).inc()
    _child(SESSIONS_ACTIVE, c).inc()


def session_closed(connection: str | None) -> None:
    _child(SESSIONS_ACTIVE, _label(connection)).dec()


def login_failed(reason: str = "invalid") -> None:
    _child(LOGIN_FAILURES, reason).inc()


# ---------------------------------------------------------------- counted, then flushed

FLUSH_SECONDS: Final = 0.5
_pending_lock = threading.Lock()
# counter child -> amount not yet added; histogram child -> [sum, count in bucket 0, 1, ...]
_counts: dict[Any, float] = {}
_observed: dict[Any, list[float]] = {}


def _add(child: Any, amount: float) -> None:
    with _pending_lock:
        _counts[child] = _counts.get(child, 0) + amount


def _observe(child: Any, value: float) -> None:
    bounds = child._upper_bounds  # ends with +Inf: every value has its bucket
    with _pending_lock:
        entry = _observed.get(child)
        if entry is None:
            entry = _observed[child] = [0.0] * (len(bounds) + 1)
        entry[0] += value
        entry[bisect_left(bounds, value) + 1] += 1  # the first bound >= value, as observe()


def flush() -> None:
    """Add what was counted since the last flush to prometheus_client's values (what
    ``Counter.inc`` and ``Histogram.observe`` would have added one by one)."""
    global _counts, _observed
    with _pending_lock:
        counts, _counts = _counts, {}
        observed, _observed = _observed, {}
    for child, amount in counts.items():
        child.inc(amount)
    for child, entry in observed.items():
        child._sum.inc(entry[0])
        for bucket, n in zip(child._buckets, entry[1:], strict=True):
            if n:
                bucket.inc(n)


def flush_every(loop: asyncio.AbstractEventLoop, seconds: float = FLUSH_SECONDS) -> Callable[[], None]:
    """Flush on ``loop`` every ``seconds``; returns what stops it (flushing once more)."""
    timer: list[asyncio.TimerHandle] = []

    def tick() -> None:
        flush()
        timer[0] = loop.call_later(seconds, tick)

    def stop() -> None:
        timer[0].cancel()
        flush()

    timer.append(loop.call_later(seconds, tick))
    return stop


def statement(decision: str | None, klass: str | None, connection: str | None) -> None:
    """A statement was judged: ``allow``, ``deny``, ``mask``, ``require_approval`` ..."""
    _add(_child(STATEMENTS, _label(decision), _label(klass), _label(connection)), 1)


def statement_duration(seconds: float, connection: str | None) -> None:
    _observe(_child(STATEMENT_SECONDS, _label(connection)), seconds)


def masked(count: int, data_class: str | None) -> None:
    """``count`` values of ``data_class`` were masked in a result."""
    if count > 0:
        _add(_child(MASKED_VALUES, _label(data_class)), count)


def observe(record: Record, connection: str | None) -> None:
    """The metrics an audit record of a session tells (every engine's shell calls it with
    the records it writes): statements by decision, durations, masked values, sessions."""
    if isinstance(record, StatementRecord):
        statement(record.decision, record.statement_class, record.connection)
        for cls in record.masked_classes:
            masked(1, cls)
    elif isinstance(record, CompletionRecord):
        if record.duration_ms is not None:
            statement_duration(record.duration_ms / 1000, connection)
    elif isinstance(record, SessionEvent):
        if record.event == "opened":
            session_opened(record.connection)
        else:
            session_closed(record.connection)


def set_pending_approvals(count: int) -> None:
    PENDING_APPROVALS.set(count)


def audit_commit(seconds: float, records: int = 1) -> None:
    """One audit batch of ``records`` records was committed in ``seconds``."""
    _observe(AUDIT_COMMIT_SECONDS, seconds)
    _add(AUDIT_RECORDS, records)


def set_audit_healthy(healthy: bool) -> None:
    AUDIT_HEALTHY.set(1 if healthy else 0)


def workers_audit_healthy() -> bool | None:
    """With workers: whether the audit trail of every live worker accepts records (the
    lowest of their ``dbsentry_audit_healthy``, read from their metric files), so that
    worker 0's ``/readyz`` speaks for the node. None with one process, or before any
    worker set it."""
    if MULTIPROCESS_DIR is None:
        return None
    from prometheus_client import multiprocess

    # Only the live-min gauges' files: the supervisor removes a dead worker's.
    files = [str(p) for p in Path(MULTIPROCESS_DIR).glob("gauge_livemin_*.db")]
    merged = multiprocess.MultiProcessCollector.merge(files, accumulate=False)  # type: ignore[no-untyped-call]
    for family in merged:
        if family.name == "dbsentry_audit_healthy":
            values = [sample.value for sample in family.samples]
            return min(values) >= 1 if values else None
    return None


def set_listener_up(listener: str, up: bool) -> None:
    """``listener`` (``postgres``, ``mysql``) of this process accepts clients, or no longer."""
    _child(LISTENER_UP, listener).set(1 if up else 0)


def workers_listening(listener: str) -> tuple[int, int] | None:
    """With workers: how many live workers' ``listener`` accepts clients, of how many that
    said (their ``dbsentry_listener_up``, read from their metric files), so that worker 0's
    ``/readyz`` counts every worker's. None with one process."""
    if MULTIPROCESS_DIR is None:
        return None
    from prometheus_client import multiprocess

    # Only the live gauges' files: the supervisor removes a dead worker's.
    files = [str(p) for p in Path(MULTIPROCESS_DIR).glob("gauge_liveall_*.db")]
    merged = multiprocess.MultiProcessCollector.merge(files, accumulate=False)  # type: ignore[no-untyped-call]
    values = [
        sample.value
        for family in merged
        if family.name == "dbsentry_listener_up"
        for sample in family.samples
        if sample.labels.get("listener") == listener
    ]
    return sum(1 for v in values if v >= 1), len(values)


def audit_error(kind: str = "commit") -> None:
    """``commit``: a batch failed; ``refused``: a statement was refused, audit down."""
    _child(AUDIT_ERRORS, kind).inc()


def api_request(status: int) -> None:
    _child(API_REQUESTS, str(status)).inc()


def render() -> tuple[bytes, str]:
    """The exposition text of every dbsentry metric and its content type.

    With several workers (``PROMETHEUS_MULTIPROC_DIR`` set by the supervisor) it is the sum
    over the workers' metric files, dead workers' counters included, so totals never go back
    when a worker is restarted; the process collectors are left out there.
    """
    flush()  # this process's own, at least, are up to date
    if MULTIPROCESS_DIR is not None:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=MULTIPROCESS_DIR)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

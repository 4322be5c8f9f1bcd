"""The web app's pure parts (views, metrics, the approvals adapter) and serve_http."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dbsentry import metrics
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.config import parse_config
from dbsentry.identity import Authenticator, Identity, TokenStore
from dbsentry.web import WebContext, bind_http, create_app, serve_http
from dbsentry.web.approvals import Approvals, ApprovalsUnavailable, ReviewRefused
from dbsentry.web.auth import bearer_token
from dbsentry.web.views import DataAccess, sessions_from_events, split_column
from dbsentry.webconfig import WebConfig


def test_split_column() -> None:
    assert split_column("public.users.email", ("public.users",)) == ("public.users", "email")
    assert split_column("users.email", ("public.users", "orders")) == ("public.users", "email")
    assert split_column("email", ("public.users",)) == ("public.users", "email")
    assert split_column("email", ("a", "b")) == ("?", "email")


def test_data_access_counts_refusals_apart() -> None:
    agg = DataAccess(lambda conn, table, col: "phone" if col == "phone" else None)
    agg.add(
        {
            "identity": "bot",
            "identity_kind": "agent",
            "connection": "prod",
            "decision": "allow",
            "tables": ["customers"],
            "columns_read": ["customers.phone", "customers.id"],
            "data_classes": ["phone"],
            "time": "2024-05-01T10:00:00.000Z",
        }
    )
    agg.add(
        {
            "identity": "bot",
            "identity_kind": "agent",
            "connection": "prod",
            "decision": "deny",
            "tables": ["secrets"],
            "columns_read": ["secrets.key"],
            "data_classes": ["secret"],
        }
    )
    out = agg.result()
    bot = out["identities"][0]
    assert bot["classes"] == {"phone": 1} and bot["refused_classes"] == {"secret": 1}
    assert bot["refused"] == 1 and bot["decisions"] == {"allow": 1, "deny": 1}
    tables = bot["connections"][0]["tables"]
    assert [t["table"] for t in tables] == ["customers"]  # the refused read touched nothing
    phone = next(c for c in tables[0]["columns"] if c["column"] == "phone")
    assert phone == {"column": "phone", "reads": 1, "masked": 0, "classes": ["phone"]}
    links = {link["class"]: link for link in out["links"]}
    assert links["secret"]["statements"] == 0 and links["secret"]["refused"] == 1


def test_sessions_from_events_merges_and_orders() -> None:
    rows = sessions_from_events(
        [
            {"session_id": "b", "event": "opened", "time": 20.0, "identity": "bob"},
            {
                "session_id": "a",
                "event": "closed",
                "time": 30.0,
                "end_reason": "x",
                "duration_ms": 5.0,
            },
            {"session_id": "a", "event": "opened", "time": 10.0, "identity": "alice"},
            {"event": "opened"},
        ]
    )
    assert [r["session_id"] for r in rows] == ["b", "a"]
    assert rows[1]["identity"] == "alice" and rows[1]["end_reason"] == "x"


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_roles_from_groups() -> None:
    web = WebConfig(roles={"admin": ["root"], "auditor": ["sec", "root"]})
    assert web.roles_for(frozenset({"root"})) == {"admin", "auditor"}
    assert web.roles_for(frozenset({"other"})) == frozenset()
    with pytest.raises(ValueError):
        WebConfig(public_url="ftp://x")


def _sample(name: str, **labels: str) -> float:
    metrics.flush()  # what was counted since the last flush
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_metrics_functions() -> None:
    before = _sample("dbsentry_sessions_active", connection="unit")
    metrics.session_opened("unit")
    metrics.session_opened("unit")
    metrics.session_closed("unit")
    assert _sample("dbsentry_sessions_active", connection="unit") == before + 1
    n = _sample(
        "dbsentry_statements_total", decision="mask", **{"class": "READ"}, connection="unit"
    )
    metrics.statement("mask", "READ", "unit")
    assert (
        _sample(
            "dbsentry_statements_total", decision="mask", **{"class": "READ"}, connection="unit"
        )
        == n + 1
    )
    metrics.statement(None, None, None)
    assert (
        _sample(
            "dbsentry_statements_total", decision="none", **{"class": "none"}, connection="none"
        )
        >= 1
    )
    m = _sample("dbsentry_masked_values_total", data_class="email")
    metrics.masked(3, "email")
    metrics.masked(0, "email")
    assert _sample("dbsentry_masked_values_total", data_class="email") == m + 3
    metrics.statement_duration(0.002, "unit")
    assert _sample("dbsentry_statement_duration_seconds_count", connection="unit") >= 1
    metrics.audit_error("refused")
    assert _sample("dbsentry_audit_errors_total", kind="refused") >= 1
    body, content_type = metrics.render()
    assert b"dbsentry_sessions_active" in body and content_type.startswith("text/plain")


def _histogram_samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples if not s.name.endswith("_created")}


def test_batched_histogram_and_counter_equal_prometheus_own() -> None:
    """What flush() adds equals Histogram.observe / Counter.inc value by value, bucket
    bounds included (a value equal to a bound counts in that bucket)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    values = [0.0, 0.0005, 0.00051, 0.001, 0.0024, 0.0025, 0.7, 1.0, 29.9, 30.0, 31.0, 1e9]
    direct_reg, batched_reg = CollectorRegistry(), CollectorRegistry()
    buckets = (0.0005, 0.001, 0.0025, 0.5, 1.0, 30.0)
    direct = Histogram("h", "h", ["c"], buckets=buckets, registry=direct_reg)
    batched = Histogram("h", "h", ["c"], buckets=buckets, registry=batched_reg)
    direct_n = Counter("n", "n", registry=direct_reg)
    batched_n = Counter("n", "n", registry=batched_reg)
    for v in values:
        direct.labels("x").observe(v)
        metrics._observe(batched.labels("x"), v)
        direct_n.inc(2)
        metrics._add(batched_n, 2)
    assert _histogram_samples(batched_reg) != _histogram_samples(direct_reg)  # not added yet
    metrics.flush()
    assert _histogram_samples(batched_reg) == _histogram_samples(direct_reg)
    metrics.flush()  # nothing twice
    assert _histogram_samples(batched_reg) == _histogram_samples(direct_reg)


def test_flush_every_flushes_on_the_loop_and_once_more_when_stopped() -> None:
    async def main() -> float:
        stop = metrics.flush_every(asyncio.get_running_loop(), 0.01)
        metrics.masked(2, "loop-test")
        await asyncio.sleep(0.1)
        seen = metrics.REGISTRY.get_sample_value("dbsentry_masked_values_total", {"data_class": "loop-test"})
        metrics.masked(1, "loop-test")
        stop()
        assert seen == 2
        return metrics.REGISTRY.get_sample_value("dbsentry_masked_values_total", {"data_class": "loop-test"}) or 0.0

    assert asyncio.run(main()) == 3


# --- the approvals adapter ------------------------------------------------------------------------


@dataclass
class _Req:
    id: str
    kind: str
    status: str
    requester: str


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_Refused.__name__ = "ReviewRefused"


@dataclass
class _Store:
    items: list[_Req] = field(default_factory=list)

    def list(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 100
    ) -> list[_Req]:
        return [
            r
            for r in self.items
            if (status is None or r.status == status) and (kind is None or r.kind == kind)
        ]

    def get(self, request_id: str) -> _Req | None:
        return next((r for r in self.items if r.id == request_id), None)

    def grants(self, *, active_at: float | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return [{"id": "g1", "active_at": active_at}]


@dataclass
class _Service:
    store: _Store
    calls: list[tuple[str, str, bool, str | None]] = field(default_factory=list)

    def review(
        self, request_id: str, reviewer: Identity, approve: bool, reason: str | None = None
    ) -> Any:
        req = self.store.get(request_id)
        if req is None:
            raise _Refused("not_found", "no such request")
        self.calls.append((request_id, reviewer.name, approve, reason))
        req.status = "approved" if approve else "denied"

        @dataclass
        class Reviewed:
            request: _Req
            event: str

        return Reviewed(req, req.status)


def test_approvals_adapter_over_a_service() -> None:
    service = _Service(
        _Store([_Req("r1", "statement", "pending", "bob"), _Req("r2", "access", "pending", "al")])
    )
    a = Approvals(service, clock=lambda: 100.0)
    assert a.available and a.can_review and a.has_access_requests
    assert [r["id"] for r in a.requests(status="pending")] == ["r1"]
    assert [r["id"] for r in a.access_requests()] == ["r2"]
    assert a.pending_count() == 2
    assert a.grants() == [{"id": "g1", "active_at": 100.0}]
    who = Identity("dba", frozenset({"dba"}), "human", "t", "token")
    out = a.review("r1", who, True, "fine")
    assert out is not None and out["status"] == "approved" and out["review_event"] == "approved"
    assert service.calls == [("r1", "dba", True, "fine")]
    with pytest.raises(ReviewRefused) as refused:
        a.review("nope", who, False, None)
    assert refused.value.code == "not_found"


def test_approvals_adapter_without_a_store() -> None:
    a = Approvals(None)
    assert not a.available and not a.can_review and a.pending_count() is None
    with pytest.raises(ApprovalsUnavailable):
        a.requests()


# --- serve_http in the proxy's loop ------------------------------------------------------------------


def test_serve_http_runs_in_the_loop_and_leaves_signals_alone(tmp_path: Path) -> None:
    config = parse_config({"state_dir": str(tmp_path / "state")}, tmp_path)
    tokens = TokenStore(config.state_dir)
    ctx = WebContext(
        config=config,
        authenticator=Authenticator(config, tokens=tokens),
        audit_store=lambda: SQLiteStore(tmp_path / "audit.db"),
    )
    app = create_app(ctx)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, stop.set)  # the proxy's own handlers
        before = signal.getsignal(signal.SIGINT)
        sock = bind_http("127.0.0.1", 0)
        port = sock.getsockname()[1]
        server = asyncio.get_running_loop().create_task(
            serve_http(app, "127.0.0.1", port, stop, sock=sock)
        )
        for _ in range(100):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.02)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        assert signal.getsignal(signal.SIGINT) == before
        stop.set()
        await asyncio.wait_for(server, 10)
        loop.remove_signal_handler(signal.SIGUSR1)
        return answer

    answer = asyncio.run(main())
    tokens.close()
    assert answer.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in answer


def test_bind_http_reports_a_busy_port() -> None:
    sock = bind_http("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            bind_http("127.0.0.1", sock.getsockname()[1])
    finally:
        sock.close()

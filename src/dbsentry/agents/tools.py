"""The tools, apart from any transport: what each does for one agent.

Everything that reads or runs SQL goes through :class:`~dbsentry.agents.wire.Wire` (the
proxy's own listener for the connection's engine, as the agent; what differs per engine is
its :class:`~dbsentry.agents.wire.Driver`); the in-process policy is asked only to explain, and
to refuse a request for approval of a statement that needs none.  Nothing here can allow
what the proxy refuses.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from dbsentry.agents.auditref import AuditLookup
from dbsentry.agents.errors import ToolRefused
from dbsentry.agents.limits import (
    Limits,
    RateLimiter,
    ResultCollector,
    resolve_limits,
    rows_for_call,
)
from dbsentry.agents.runs import RunContext
from dbsentry.agents.waiting import Tick, Waits
from dbsentry.agents.wire import Driver, Outcome, Session, Statement, Where, Wire
from dbsentry.approvals.model import ApprovalRequest, granted_connections, with_grants
from dbsentry.identity.model import Identity
from dbsentry.masking.catalog import SourceColumn

if TYPE_CHECKING:
    from dbsentry.approvals.store import ApprovalStore
    from dbsentry.config import Config
    from dbsentry.engines.postgres.session.governance import Governor
    from dbsentry.engines.postgres.session.masking import MaskingView

MAX_PARAMS = 100
MAX_REASON_CHARS = 500
MAX_CATALOG_ROWS = 5000
#: Pauses between looks for a call's audit record (5 s in all: the record is written before
#: the answer, so only a loaded machine's index lag makes the later looks happen; with 1.5 s
#: a test run beside another full run missed one).
RECORD_RETRIES = (0.05, 0.1, 0.2, 0.4, 0.75, 1.0, 1.0, 1.5, 0.0)

ViewSource = Callable[[str], Awaitable["MaskingView | None"]]


@dataclass(frozen=True, slots=True)
class Agent:
    """Who calls: the identity the token proves, and the token (its database password)."""

    identity: Identity
    token: str


class Tools:
    """The tools of one MCP server (one stdio process, or the HTTP endpoint of a proxy)."""

    def __init__(
        self,
        config: Config,
        wire: Wire,
        *,
        governor: Governor | None,
        approvals: Callable[[], ApprovalStore | None],
        views: ViewSource | None = None,
        rate: RateLimiter | None = None,
        audit: AuditLookup | None = None,
    ) -> None:
        self.config = config
        self.cfg = config.mcp
        self.wire = wire
        self.governor = governor
        self._approvals = approvals
        self.views = views
        self.rate = rate if rate is not None else RateLimiter()
        self.audit = audit
        self.waits = Waits(config.approvals, approvals)

    # --- shared --------------------------------------------------------------------------------

    def _grants(self, identity: Identity) -> tuple[Identity, frozenset[str]]:
        store = self._approvals()
        if store is None:
            return identity, frozenset()
        now = time.time()
        grants = store.active_grants(identity.name, now)
        return with_grants(identity, grants, now), granted_connections(identity.name, grants, now)

    def _may_use(self, identity: Identity, granted: frozenset[str], name: str) -> bool:
        conn = self.config.connections[name]
        if conn.allow_groups is None or name in granted:
            return True
        return not identity.groups.isdisjoint(conn.allow_groups)

    def _connection(self, agent: Agent, connection: object) -> tuple[str, Identity]:
        if not isinstance(connection, str) or not connection:
            raise ToolRefused("connection must be the name of a connection (see list_connections)")
        identity, granted = self._grants(agent.identity)
        usable = sorted(n for n in self.config.connections if self._may_use(identity, granted, n))
        if connection not in usable:
            raise ToolRefused(
                f"no connection {connection[:64]!r} for {agent.identity.name}; yours: {', '.join(usable) or 'none'}"
            )
        return connection, identity

    def _start(self, agent: Agent, connection: object) -> tuple[str, Identity, Limits]:
        name, identity = self._connection(agent, connection)
        limits = resolve_limits(self.cfg, name, agent.identity.name)
        self.rate.take(agent.identity.name, limits.rate_per_minute)
        return name, identity, limits

    def _driver(self, name: str) -> Driver:
        return self.wire.driver(self.config.connections[name].engine)

    async def _conn(self, agent: Agent, name: str, run: RunContext, limits: Limits) -> Session:
        app = f"dbsentry-mcp {run.client or ''}".strip()[:63]
        engine = self.config.connections[name].engine
        return await self.wire.connection(engine, agent.identity.name, agent.token, name, app, limits.timeout_seconds)

    async def _catalog(
        self, agent: Agent, name: str, run: RunContext, limits: Limits, sql: str, params: Sequence[str | None]
    ) -> Outcome:
        """A catalog query of the tools' own, through the proxy like any other (audited)."""
        async with self.wire.lock(agent.token, name):
            conn = await self._conn(agent, name, run, limits)
            collector = ResultCollector(MAX_CATALOG_ROWS, max(limits.max_bytes, 4 * 1024 * 1024))
            return await conn.run(Statement(run.comment() + sql, params, collector, limits.timeout_seconds))

    async def _view(self, name: str) -> MaskingView | None:
        return await self.views(name) if self.views is not None else None

    def _masked_for(self, identity: Identity) -> bool:
        m = self.config.masking
        return m.enabled and identity.groups.isdisjoint(m.exempt_groups)

    def _environment(self, name: str) -> tuple[str, bool]:
        env = self.config.connections[name].environment
        prod = self.governor is None or env in self.governor.policy.production_environments
        return env, prod

    def _verdict(self, sql: str, identity: Identity, name: str, view: MaskingView | None) -> dict[str, Any]:
        if self.governor is None:
            raise ToolRefused("no policy is loaded (passthrough): explain has nothing to say")
        env, _ = self._environment(name)
        return self._driver(name).verdict(self.governor, sql, Where(identity, name, env), view)

    # --- the tools -----------------------------------------------------------------------------

    def list_connections(self, agent: Agent) -> dict[str, Any]:
        self.rate.take(agent.identity.name, resolve_limits(self.cfg, "", agent.identity.name).rate_per_minute)
        identity, granted = self._grants(agent.identity)
        out = []
        for name, conn in sorted(self.config.connections.items()):
            if not self._may_use(identity, granted, name):
                continue
            env, prod = self._environment(name)
            limits = resolve_limits(self.cfg, name, identity.name)
            out.append(
                {
                    "name": name,
                    "engine": conn.engine,
                    "environment": env,
                    "production": prod,
                    "limits": {
                        "max_rows": limits.max_rows,
                        "max_bytes": limits.max_bytes,
                        "statement_timeout_seconds": limits.timeout_seconds,
                    },
                }
            )
        return {"identity": identity.name, "kind": identity.kind, "connections": out}

    async def list_tables(self, agent: Agent, run: RunContext, connection: object, schema: object = None) -> dict[str, Any]:
        name, identity, limits = self._start(agent, connection)
        if schema is not None and (not isinstance(schema, str) or len(schema) > 63):
            raise ToolRefused("schema must be a schema name (up to 63 characters)")
        got = await self._catalog(agent, name, run, limits, self._driver(name).catalog.tables, [schema])
        view = await self._view(name)
        masked = self._masked_for(identity)
        tables: dict[tuple[str, str], dict[str, Any]] = {}
        for nsp, rel, kind, col, typ, notnull in got.rows:
            assert nsp is not None and rel is not None and col is not None
            entry = tables.setdefault((nsp, rel), {"schema": nsp, "name": rel, "kind": kind, "columns": []})
            entry["columns"].append(self._column(view, nsp, rel, col, typ, notnull == "true", masked))
        return {
            "connection": name,
            "tables": list(tables.values()),
            "truncated": got.truncated,
            "masked_for_you": masked,
            "classification_known": view is not None,
        }

    @staticmethod
    def _column(
        view: MaskingView | None, nsp: str, rel: str, col: str, typ: str | None, notnull: bool, masked: bool
    ) -> dict[str, Any]:
        data_class = None
        scanned = False
        if view is not None:
            found = view.classmap.get(SourceColumn(nsp, rel, col))
            data_class = found.data_class.value if found is not None else None
            scanned = SourceColumn(nsp, rel, col) in view.classmap.scan
        return {
            "name": col,
            "type": typ,
            "not_null": notnull,
            "data_class": data_class,
            "masked": masked and (data_class is not None or scanned),
            **({"value_scanned": True} if scanned else {}),
        }

    async def describe_table(self, agent: Agent, run: RunContext, connection: object, table: object) -> dict[str, Any]:
        name, identity, limits = self._start(agent, connection)
        if not isinstance(table, str) or not table or len(table) > 200:
            raise ToolRefused("table must be a table name, optionally schema-qualified (schema.table)")
        catalog = self._driver(name).catalog
        found = await self._catalog(agent, name, run, limits, catalog.resolve, catalog.resolve_params(table))
        if not found.rows:
            raise ToolRefused(f"no table or view {table!r} on {name} (list_tables shows them)")
        _, nsp, rel, kind, estimate = found.rows[0]
        assert nsp is not None and rel is not None
        key = catalog.key_params(found.rows[0])
        cols = await self._catalog(agent, name, run, limits, catalog.columns, key)
        idx = await self._catalog(agent, name, run, limits, catalog.indexes, key)
        keys = await self._catalog(agent, name, run, limits, catalog.keys, key)
        view = await self._view(name)
        masked = self._masked_for(identity)
        columns = []
        for col, typ, notnull, default in cols.rows:
            assert col is not None
            columns.append({**self._column(view, nsp, rel, col, typ, notnull == "true", masked), "default": default})
        kinds = {"p": "primary key", "u": "unique", "f": "foreign key"}
        return {
            "connection": name,
            "schema": nsp,
            "name": rel,
            "kind": catalog.kinds.get(kind or "", kind),
            "row_estimate": int(estimate) if estimate is not None and estimate.lstrip("-").isdigit() and int(estimate) >= 0 else None,
            "columns": columns,
            "keys": [{"name": k, "type": kinds.get(t or "", t), "definition": d} for k, t, d in keys.rows],
            "indexes": [
                {"name": n, "primary": p == "true", "unique": u == "true", "definition": d} for n, p, u, d in idx.rows
            ],
            "classification_known": view is not None,
        }

    async def query(
        self, agent: Agent, run: RunContext, connection: object, sql: object, params: object = None, max_rows: object = None
    ) -> dict[str, Any]:
        name, _, limits = self._start(agent, connection)
        rows = rows_for_call(limits, max_rows)
        driver = self._driver(name)
        text = driver.one_statement(sql, self.cfg.max_sql_bytes)
        values = _params(params, self.cfg.max_sql_bytes)
        async with self.wire.lock(agent.token, name):
            conn = await self._conn(agent, name, run, limits)
            try:
                got = await conn.run(
                    Statement(
                        run.comment() + text,
                        values,
                        ResultCollector(rows, limits.max_bytes),
                        limits.timeout_seconds,
                        stream=driver.returns_rows(text),
                    )
                )
            except ToolRefused as refused:
                refused.details.setdefault("run_id", run.run_id)
                if "sqlstate" in refused.details:  # the proxy judged it: its record says how
                    refused.details["audit"] = await self._record(agent, run)
                if "approval_request_id" in refused.details:
                    refused.message += (
                        " -- call approval_status with this request id; once approved, send the same sql "
                        "again with query (it runs once)"
                    )
                raise
        return {
            "connection": name,
            "columns": got.columns,
            "rows": got.rows,
            "row_count": got.row_count,
            "truncated": got.truncated,
            **({"truncated_by": got.truncated_by} if got.truncated else {}),
            "max_rows": rows,
            "status": got.status,
            **(await self._decision(agent, run)),
        }

    async def _record(self, agent: Agent, run: RunContext) -> dict[str, Any]:
        found = None
        if self.audit is not None and run.call_id is not None:
            # The proxy answered after writing the record; the log may not yet show it to
            # another process's reader (a read the proxy does not wait to make durable).
            for delay in RECORD_RETRIES:
                found = await anyio.to_thread.run_sync(self.audit.find, agent.identity.name, run.run_id, run.call_id)
                if found is not None:
                    break
                await anyio.sleep(delay)
        return {**(found or {"record_id": None}), "run_id": run.run_id, "search": f"dbsentry audit search --run {run.run_id}"}

    async def _decision(self, agent: Agent, run: RunContext) -> dict[str, Any]:
        """The proxy's decision on the call's statement, from its audit record."""
        record = await self._record(agent, run)
        decision = {"action": record["decision"], "rules": record["rules"]} if record.get("decision") else None
        return {"decision": decision, "audit": record}

    async def explain(self, agent: Agent, run: RunContext, connection: object, sql: object) -> dict[str, Any]:
        name, identity, limits = self._start(agent, connection)
        driver = self._driver(name)
        text = driver.one_statement(sql, self.cfg.max_sql_bytes)
        view = await self._view(name)
        verdict = self._verdict(text, identity, name, view)
        action = verdict["decision"].get("action")
        plan: Any = None
        plan_note = None
        if action in ("allow", "mask"):
            try:
                explain = driver.explain_text(text)
            except ToolRefused as refused:
                plan_note = refused.message
            else:
                plan, plan_note = await self._plan(agent, name, run, limits, explain)
        else:
            plan_note = f"no plan: the policy's decision is {action}, so nothing was sent to the database"
        return {"connection": name, **verdict, "plan": plan, "plan_note": plan_note, "run_id": run.run_id}

    async def _plan(self, agent: Agent, name: str, run: RunContext, limits: Limits, explain: str) -> tuple[Any, str | None]:
        import orjson

        async with self.wire.lock(agent.token, name):
            conn = await self._conn(agent, name, run, limits)
            collector = ResultCollector(1, limits.max_bytes)
            try:
                got = await conn.run(
                    Statement(run.comment() + explain, None, collector, limits.timeout_seconds, read_only=run.comment())
                )
            except ToolRefused as refused:
                return None, f"the database did not explain it: {refused.message}"
        if not got.rows or got.rows[0][0] is None:
            return None, "the database returned no plan"
        try:
            return orjson.loads(got.rows[0][0]), None
        except orjson.JSONDecodeError:
            return got.rows[0][0], None

    async def request_approval(
        self, agent: Agent, run: RunContext, connection: object, sql: object, reason: object
    ) -> dict[str, Any]:
        name, identity, limits = self._start(agent, connection)
        driver = self._driver(name)
        text = driver.one_statement(sql, self.cfg.max_sql_bytes)
        if not isinstance(reason, str) or not reason.strip():
            raise ToolRefused("reason must say why the statement should run (for the reviewers)")
        reason = " ".join(reason.split())[:MAX_REASON_CHARS]
        view = await self._view(name)
        decision = self._verdict(text, identity, name, view)["decision"]
        if decision.get("action") != "require_approval":
            raise ToolRefused(
                f"this statement needs no approval: the policy's decision is {decision.get('action')}"
                + (f" ({', '.join(decision.get('rules', []))})" if decision.get("rules") else "")
                + ("; run it with query" if decision.get("action") in ("allow", "mask") else "; nothing ran"),
                decision=decision,
            )
        # The proxy makes the request when it refuses the statement (fail mode), exactly as
        # for psql.  Inside a read-only transaction that is rolled back, so that should the
        # proxy decide otherwise after all, nothing is changed.
        tagged = RunContext(run.run_id, run.session, run.client, run.traceparent)
        comment = tagged.comment().rstrip("\n").removesuffix(" */") + f",mcp_reason='{_quote(reason)}' */\n"
        async with self.wire.lock(agent.token, name):
            conn = await self._conn(agent, name, run, limits)
            try:
                await conn.run(
                    Statement(
                        comment + text,
                        None,
                        ResultCollector(1, 1024),
                        limits.timeout_seconds,
                        stream=driver.returns_rows(text),
                        read_only=run.comment(),
                    )
                )
            except ToolRefused as refused:
                request_id = refused.details.get("approval_request_id")
                if not isinstance(request_id, str):
                    raise
            else:
                raise ToolRefused(
                    "the proxy ran this statement without asking for approval (it was rolled back); run it with query",
                )
        status = self.approval_status(agent, request_id, rate=False)
        return {**status, "reason": reason, "run_id": run.run_id}

    def approval_status(self, agent: Agent, request_id: object, *, rate: bool = True) -> dict[str, Any]:
        if rate:
            self.rate.take(agent.identity.name, resolve_limits(self.cfg, "", agent.identity.name).rate_per_minute)
        if not isinstance(request_id, str) or not request_id.startswith("apr_") or len(request_id) > 40:
            raise ToolRefused("request_id must be an approval request id (apr_...)")
        store = self._approvals()
        if store is None:
            raise ToolRefused("approvals are not configured on this proxy")
        req = store.get(request_id)
        if req is None or req.requester != agent.identity.name:
            raise ToolRefused(f"no approval request {request_id} of {agent.identity.name}")
        return _request_dict(req, self.config.approvals.console_url)

    async def wait_for_decision(self, agent: Agent, status: dict[str, Any], tick: Tick) -> dict[str, Any]:
        """``status`` (of one of ``agent``'s requests) once a reviewer has decided, or still
        pending after ``mcp.approval_wait_seconds``; the caller ends the wait by cancelling."""
        if status.get("status") != "pending" or self.cfg.approval_wait_seconds <= 0:
            return status
        request_id = str(status["request_id"])
        started = time.monotonic()
        await self.waits.until_decided(request_id, self.cfg.approval_wait_seconds, tick)
        waited = round(time.monotonic() - started, 1)
        now = self.approval_status(agent, request_id, rate=False)
        if now["status"] == "pending":
            now["next"] = f"still pending after waiting {waited:g}s for a reviewer; call approval_status again later"
        return {**status, **now, "waited_seconds": waited}


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe=" ")


def _params(params: object, max_bytes: int) -> list[str | None] | None:
    if params is None:
        return None
    if not isinstance(params, list):
        raise ToolRefused("params must be a list of values for the placeholders ($1, $2, ... or ? on MySQL)")
    if len(params) > MAX_PARAMS:
        raise ToolRefused(f"at most {MAX_PARAMS} params")
    out: list[str | None] = []
    total = 0
    for i, value in enumerate(params, 1):
        if value is None:
            out.append(None)
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float | str):
            text = str(value)
        else:
            raise ToolRefused(f"param {i} must be a string, number, boolean or null")
        total += len(text.encode("utf-8", "surrogatepass"))
        if total > max_bytes:
            raise ToolRefused(f"the params are over {max_bytes} bytes (mcp.max_sql_bytes)")
        if "\x00" in text:
            raise ToolRefused(f"param {i} holds a NUL character")
        out.append(text)
    return out


def _when(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _request_dict(req: ApprovalRequest, console_url: str | None) -> dict[str, Any]:
    denial = req.denial
    next_step = {
        "pending": "wait for a reviewer; call approval_status again later",
        "approved": "run the same sql with query (it runs once)",
        "used": "the approved statement ran; a new run needs a new approval",
        "denied": "denied; do not retry without talking to a person",
        "expired": "expired; request approval again if still needed",
        "withdrawn": "withdrawn",
    }.get(req.status, "")
    return {
        "request_id": req.id,
        "status": req.status,
        "connection": req.connection,
        "statement": req.statement,
        "approvers": list(req.approvers),
        "approvals": len(req.approvals),
        "approvals_needed": req.min_approvals,
        "denied_by": denial.reviewer if denial is not None else None,
        "denial_comment": denial.reason if denial is not None else None,
        "expires_at": _when(req.expires_at),
        "approved_until": _when(req.approved_until),
        "link": f"{console_url.rstrip('/')}/approvals/{req.id}" if console_url else None,
        "next": next_step,
    }

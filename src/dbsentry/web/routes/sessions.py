"""The API's routes for sessions and their statements (live and from the audit trail, with the live stream)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
import orjson
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from dbsentry.audit.query import statement_row
from dbsentry.audit.redaction import current as current_redactor
from dbsentry.audit.store import SearchFilter, StoredRecord
from dbsentry.web.api import (
    MAX_PAGE,
    MAX_SEQ,
    SEQ_TEXT,
    SSE_TYPES,
    AnyRole,
    Cursor,
    StatementPage,
    When,
    auditor,
    cluster_live_rows,
    errors,
    live_rows,
    record_event,
    statement_page,
    when_param,
)
from dbsentry.web.service import WebServices
from dbsentry.web.views import (
    node_summaries,
    sessions_from_events,
)

log = logging.getLogger("dbsentry.web")


def add_routes(r: APIRouter, svc: WebServices) -> None:
    audit = auditor(svc)

    # --- sessions --------------------------------------------------------------------------

    @r.get(
        "/sessions", tags=["sessions"], summary="Live sessions and recent ones from the audit trail"
    )
    def sessions(
        request: Request,
        who: AnyRole,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        identity: str | None = None,
    ) -> dict[str, Any]:
        live, unanswered = cluster_live_rows(svc)
        events = [
            rec.data()
            for rec in svc.store.iter_records(types=["session"], descending=True, limit=limit * 2)
        ]
        recent = sessions_from_events(events)
        live_ids = {row["session_id"] for row in live}
        for row in recent:
            row["live"] = row["session_id"] in live_ids
        if identity is not None:
            live = [s for s in live if s["identity"] == identity]
            recent = [s for s in recent if s.get("identity") == identity]
        audit(request, who, "sessions.list", identity=identity)
        # unanswered: workers of other nodes whose live sessions are not in "live"
        return {"live": live, "recent": recent[:limit], "unanswered": unanswered}

    @r.get("/nodes", tags=["sessions"], summary="The live nodes and workers of the control plane")
    def nodes(request: Request, who: AnyRole) -> dict[str, Any]:
        """Every live worker of every node sharing this node's control plane (a node not
        heard of for ``control_plane.node_ttl_seconds`` is left out), each asked now for its
        readiness and live sessions (``nodes``), and the same by node (``by_node``); empty
        without a control plane."""
        found = svc.ctx.nodes() if svc.ctx.nodes is not None else []
        audit(request, who, "nodes.list")
        return {"nodes": found, "by_node": node_summaries(found)}

    def find_session(session_id: str) -> dict[str, Any] | None:
        for row in live_rows(svc):
            if row["session_id"] == session_id:
                return row
        events = [
            rec.data()
            for rec in svc.store.iter_records(types=["session"], descending=True, limit=20_000)
            if rec.record.session_id == session_id
        ]
        found = sessions_from_events(events)
        if found:
            return found[0]
        first = next(
            iter(
                svc.store.search_statements(
                    SearchFilter(session_id=session_id), descending=False, limit=1
                )
            ),
            None,
        )
        if first is None:
            return None
        row = statement_row(*first)
        return {
            "session_id": session_id,
            "live": False,
            **{
                k: row.get(k)
                for k in (
                    "identity",
                    "identity_kind",
                    "connection",
                    "environment",
                    "database",
                    "application_name",
                )
            },
        }

    @r.get("/sessions/{session_id}", tags=["sessions"], summary="One session", responses=errors(404))
    def session(request: Request, who: AnyRole, session_id: str) -> dict[str, Any]:
        row = find_session(session_id)
        audit(request, who, "sessions.get", session_id=session_id)
        if row is None:
            raise HTTPException(404, f"no session {session_id!r}")
        return row

    @r.get(
        "/sessions/{session_id}/statements",
        tags=["sessions"],
        summary="A session's statements in the order they were sent",
        response_model=StatementPage,
    )
    def session_statements(
        request: Request,
        who: AnyRole,
        session_id: str,
        cursor: Cursor = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 200,
    ) -> StatementPage:
        audit(request, who, "sessions.statements", session_id=session_id, cursor=cursor)
        return statement_page(
            svc, SearchFilter(session_id=session_id), cursor=cursor, limit=limit, newest_first=False
        )

    # --- statements ------------------------------------------------------------------------

    @r.get(
        "/statements",
        tags=["audit"],
        summary="Search statements; newest first, paginated by cursor (the last seq seen)",
        response_model=StatementPage,
    )
    def statements(
        request: Request,
        who: AnyRole,
        identity: str | None = None,
        kind: Annotated[
            Literal["human", "agent"] | None, Query(description="identity kind")
        ] = None,
        connection: str | None = None,
        environment: str | None = None,
        table: str | None = None,
        decision: str | None = None,
        session_id: str | None = None,
        run: Annotated[str | None, Query(max_length=128, description="an AI agent's run id (MCP)")] = None,
        since: When = None,
        until: When = None,
        text: Annotated[str | None, Query(max_length=1000)] = None,
        value: Annotated[
            str | None,
            Query(max_length=1000, description="a value as sent: records holding its token"),
        ] = None,
        cursor: Cursor = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        order: Literal["newest", "oldest"] = "newest",
    ) -> StatementPage:
        redactor = current_redactor()
        flt = SearchFilter(
            digests=redactor.search_digests(value) if value else (),
            identity=identity or None,
            identity_kind=kind,
            connection=connection or None,
            environment=environment or None,
            table=table or None,
            decision=decision or None,
            session_id=session_id or None,
            run=run or None,
            since=when_param(since, "since"),
            until=when_param(until, "until"),
            text=text or None,
        )
        audit(
            request, who, "statements.search",
            filter={
                k: (redactor.text(v) if k == "text" else v)  # a search term may be a value
                for k, v in dataclasses.asdict(flt).items()
                if v is not None and v != ()
            },
            cursor=cursor,
        )  # fmt: skip
        return statement_page(svc, flt, cursor=cursor, limit=limit, newest_first=order == "newest")

    @r.get(
        "/stream",
        tags=["audit"],
        summary="Server-Sent Events: new statement, completion, session and approval records",
        response_class=StreamingResponse,
    )
    async def stream(
        request: Request,
        who: AnyRole,
        after: Annotated[
            int | None, Query(ge=0, le=MAX_SEQ, description="start after this seq (default: now)")
        ] = None,
        last_event_id: Annotated[str | None, Header(pattern=r"^[0-9]{1,18}$")] = None,
    ) -> StreamingResponse:
        start = after
        if start is None and last_event_id:
            if not SEQ_TEXT.fullmatch(last_event_id) or int(last_event_id) > MAX_SEQ:
                raise HTTPException(422, "Last-Event-ID: not a sequence number")
            start = int(last_event_id)
        if start is None:
            start = (await anyio.to_thread.run_sync(svc.store.head)).seq
        await anyio.to_thread.run_sync(lambda: audit(request, who, "stream.open", after=start))
        poll = svc.web.stream_poll_seconds

        def fetch(after_seq: int) -> list[StoredRecord]:
            return list(svc.store.iter_records(after_seq=after_seq, types=SSE_TYPES, limit=500))

        async def events() -> AsyncIterator[bytes]:
            last = start
            quiet = 0.0
            yield b"retry: 2000\n\n"
            while not svc.stopping.is_set():
                try:
                    batch = await anyio.to_thread.run_sync(fetch, last)
                except Exception as err:  # the store is down: say so, keep trying
                    log.warning("live feed read failed: %s", err)
                    yield b'event: error\ndata: {"error": "audit store unavailable"}\n\n'
                    batch = []
                for rec in batch:
                    kind, data = record_event(rec)
                    last = rec.seq
                    yield b"id: %d\nevent: %s\ndata: %s\n\n" % (
                        rec.seq,
                        kind.encode(),
                        orjson.dumps(data),
                    )
                if batch:
                    quiet = 0.0
                    if len(batch) == 500:
                        continue
                else:
                    quiet += poll
                    if quiet >= 15.0:
                        quiet = 0.0
                        yield b": keep-alive\n\n"
                await anyio.sleep(poll)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

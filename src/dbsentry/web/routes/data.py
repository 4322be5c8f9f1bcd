"""The API's routes for data classification, data access and agents."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request

from dbsentry.audit.query import iso, statement_row
from dbsentry.audit.redaction import current as current_redactor
from dbsentry.audit.store import SearchFilter
from dbsentry.web.api import (
    Auditor,
    When,
    auditor,
    errors,
    live_rows,
    when_param,
)
from dbsentry.web.service import WebServices
from dbsentry.web.views import (
    DataAccess,
    agent_summary,
    class_lookup,
    class_map_rows,
)

log = logging.getLogger("dbsentry.web")


def add_routes(r: APIRouter, svc: WebServices) -> None:
    ctx = svc.ctx
    audit = auditor(svc)

    # --- data ------------------------------------------------------------------------------

    def class_maps() -> dict[str, Any]:
        if ctx.classification is None:
            return {}
        try:
            return dict(ctx.classification())
        except Exception as err:
            log.warning("classification map unavailable: %s", err)
            return {}

    @r.get(
        "/classification",
        tags=["data"],
        summary="The data classes of sensitive columns, per connection",
        responses=errors(404),
    )
    def classification(request: Request, who: Auditor) -> dict[str, Any]:
        if ctx.classification is None:
            raise HTTPException(404, "masking is not available")
        known: list[dict[str, Any]] = []
        try:
            from dbsentry.masking.classes import SENSITIVITY

            known = [{"class": c.value, "sensitivity": s} for c, s in SENSITIVITY.items()]
        except ImportError:
            pass
        audit(request, who, "classification.get")
        return {"classes": known, "columns": class_map_rows(class_maps())}

    @r.get(
        "/data-access",
        tags=["data"],
        summary="Who touched which data: identity -> connection -> table -> column -> data class",
    )
    def data_access(
        request: Request,
        who: Auditor,
        since: When = "7d",
        until: When = None,
        identity: str | None = None,
        kind: Literal["human", "agent"] | None = None,
        connection: str | None = None,
        include_catalog: Annotated[
            bool, Query(description="count reads of pg_catalog and information_schema too")
        ] = False,
    ) -> dict[str, Any]:
        flt = SearchFilter(
            identity=identity or None,
            identity_kind=kind,
            connection=connection or None,
            since=when_param(since, "since"),
            until=when_param(until, "until"),
        )
        maps = class_maps()
        agg = DataAccess(class_lookup(maps) if maps else None, include_catalog=include_catalog)
        cap = svc.web.summary_max_statements
        truncated = False
        for n, (stored, _) in enumerate(
            svc.store.search_statements(flt, descending=True, limit=cap + 1)
        ):
            if n == cap:
                truncated = True
                break
            d = stored.data()
            d["time"] = iso(d.get("time"))
            agg.add(d)
        audit(
            request,
            who,
            "data_access.summary",
            filter={
                k: (current_redactor().text(v) if k == "text" else v)  # a term may be a value
                for k, v in dataclasses.asdict(flt).items()
                if v is not None and v != ()
            },
        )
        return {
            "since": iso(flt.since),
            "until": iso(flt.until),
            "truncated": truncated,
            **agg.result(),
        }

    @r.get("/agents", tags=["data"], summary="What AI agents (identity kind agent) have been doing")
    def agents(
        request: Request,
        who: Auditor,
        since: When = "7d",
        until: When = None,
        include_catalog: Annotated[
            bool, Query(description="count reads of pg_catalog and information_schema too")
        ] = False,
    ) -> dict[str, Any]:
        flt = SearchFilter(
            identity_kind="agent", since=when_param(since, "since"), until=when_param(until, "until")
        )
        cap = svc.web.summary_max_statements
        rows: Iterator[dict[str, Any]] = (
            statement_row(s, c)
            for s, c in svc.store.search_statements(flt, descending=True, limit=cap)
        )
        items = agent_summary(rows, include_catalog=include_catalog)
        live = [s for s in live_rows(svc) if s["identity_kind"] == "agent"]
        audit(request, who, "agents.summary", since=since, until=until)
        return {"items": items, "live": live}

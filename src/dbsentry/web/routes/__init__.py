"""The HTTP API's router: one module per area, each adding its routes."""

from __future__ import annotations

from fastapi import APIRouter

from dbsentry.web.api import API_ERRORS, errors
from dbsentry.web.routes import approvals, data, identity, policy, sessions, trail
from dbsentry.web.service import WebServices


def build_router(svc: WebServices) -> APIRouter:
    """Every route under ``/api/v1``, in the order the OpenAPI document lists them."""
    r = APIRouter(prefix="/api/v1", responses=errors(*API_ERRORS))
    for area in (identity, sessions, approvals, policy, data, trail):
        area.add_routes(r, svc)
    return r


__all__ = ["build_router"]

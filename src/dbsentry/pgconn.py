"""Connections of dbsentry's own PostgreSQL stores (audit, approvals)."""

from __future__ import annotations

from typing import Any

import psycopg


def connect(
    dsn: str, application_name: str, *, connect_timeout: int, statement_timeout_ms: float
) -> psycopg.Connection[Any]:
    """An autocommit connection with a statement timeout and TCP keepalives, so that a
    store that stops answering is noticed instead of hanging the writer."""
    return psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=connect_timeout,
        options=f"-c statement_timeout={int(statement_timeout_ms)}",
        keepalives=1,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        application_name=application_name,
    )


def describe(dsn: str, schema: str) -> str:
    """``postgres:host:port/dbname schema S``, never the password."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"postgres:{info.get('host', '')}:{info.get('port', '')}/{info.get('dbname', '')} schema {schema}"

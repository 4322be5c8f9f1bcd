"""Reads each connection's catalog for masking, on a side connection, and keeps it fresh."""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg

from dbsentry.config import Config, ConnectionConfig
from dbsentry.masking import Catalog, classify_catalog, fetch_catalog
from dbsentry.server.tasks import spawn
from dbsentry.session.masking import MaskingService

log = logging.getLogger("dbsentry.masking")


class CatalogError(Exception):
    pass


class CatalogLoader:
    def __init__(self, config: Config, service: MaskingService) -> None:
        self.config = config
        self.service = service
        self._locks: dict[str, asyncio.Lock] = {}
        self._loaded_at: dict[str, float] = {}
        self._stale: set[str] = set()

    async def ensure(self, name: str) -> None:
        """The catalog of ``name`` is loaded (reading it now if it never was)."""
        if name in self._loaded_at:
            age = time.monotonic() - self._loaded_at[name]
            if name in self._stale or age > self.config.masking.refresh_seconds:
                self.refresh(name)
            return
        await self._load(name)

    def refresh(self, name: str) -> None:
        """Read the catalog again in the background; sessions keep the old one meanwhile."""
        self._stale.add(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        if not lock.locked():
            spawn(self._refresh(name), name="catalog-refresh")

    async def _refresh(self, name: str) -> None:
        try:
            await self._load(name)
        except CatalogError as err:
            log.error("catalog refresh failed; keeping the previous one", extra={"fields": {"connection": name, "error": str(err)}})

    async def _load(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self._loaded_at and name not in self._stale:
                return
            self._stale.discard(name)
            conn = self.config.connections[name]
            try:
                catalog = await _read(conn)
            except (psycopg.Error, OSError) as err:
                raise CatalogError(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__) from None
            classmap = classify_catalog(catalog, self.config.masking.overrides)
            self.service.install(name, catalog, classmap)
            self._loaded_at[name] = time.monotonic()
            log.info(
                "catalog loaded",
                extra={"fields": {"connection": name, "relations": len(catalog.relations), "sensitive_columns": len(classmap.columns)}},
            )


async def _read(conn: ConnectionConfig) -> Catalog:
    kwargs = conn.libpq_kwargs("dbsentry-catalog")
    async with await psycopg.AsyncConnection.connect(autocommit=True, **kwargs) as aconn:  # type: ignore[arg-type]
        return await fetch_catalog(aconn)

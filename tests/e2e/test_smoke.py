from __future__ import annotations

import psycopg

from support.proxy import RunningProxy


def test_select_through_proxy(proxy: RunningProxy) -> None:
    with psycopg.connect(proxy.dsn()) as conn:
        assert conn.execute("select 41 + 1").fetchone() == (42,)
        assert conn.info.backend_pid != conn.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]

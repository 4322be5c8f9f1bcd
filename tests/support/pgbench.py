"""pgbench's tables at scale 1 in the test database, shared by the tests that run pgbench."""

from __future__ import annotations

import os
import subprocess

import psycopg

from .pg import PgServer

#: pgbench's environment: none of the test runner's PG* variables.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}

_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


def ensure_pgbench_tables(pg_server: PgServer) -> None:
    """Make pgbench's tables (``pgbench -i -s 1``) directly, not through the proxy, unless
    they are there. Under an advisory lock: tests running at the same time (pytest-xdist
    workers, other checkouts on the same server) never initialise them twice at once, which
    would drop the tables under the other's feet."""
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute("select pg_advisory_lock(hashtext('dbsentry-tests: pgbench -i'))")
        ready = direct.execute(
            "select " + " and ".join(f"to_regclass('public.{t}') is not null" for t in _TABLES)
        ).fetchone()
        if ready == (True,) and direct.execute(
            "select count(*) from pgbench_branches"
        ).fetchone() == (1,):
            return
        done = subprocess.run(
            ["pgbench", "-i", "-q", "-s", "1", "-h", pg_server.host, "-p", str(pg_server.port),
             "-U", pg_server.user, pg_server.dbname],
            capture_output=True,
            text=True,
            timeout=120,
            env={**ENV, **({"PGPASSWORD": pg_server.password} if pg_server.password else {})},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

"""Session fixtures for real PostgreSQL servers.

Load from tests/conftest.py with ``pytest_plugins = ["support.fixtures"]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .pg import AuthCluster, PgServer, find_postgres


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    """A trust-auth PostgreSQL (user ``postgres``, database ``test``) over TCP."""
    return find_postgres()


@pytest.fixture(scope="session")
def auth_cluster() -> Iterator[AuthCluster]:
    """A throwaway cluster that demands passwords per role, with TLS on (see AuthCluster)."""
    with AuthCluster(ssl=True) as cluster:
        yield cluster

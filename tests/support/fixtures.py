"""Session fixtures for real PostgreSQL servers.

Load from tests/conftest.py with ``pytest_plugins = ["support.fixtures"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .demo import Clusters
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


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[Clusters]:
    """Notes the clusters a test's demos keep outside ``tmp_path`` (``clusters.note(output)``)
    and removes them after the test."""
    found = Clusters(tmp_path)
    yield found
    found.remove()

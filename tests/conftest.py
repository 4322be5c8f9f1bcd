from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

pytest_plugins = ["support.fixtures"]


@pytest.fixture(scope="session")
def proxy(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    """dbsentry running against the test PostgreSQL, with production and staging connections."""
    directory = tmp_path_factory.mktemp("proxy")
    with run_proxy(write_config(directory, pg_server)) as running:
        yield running


@pytest.fixture
def fresh_proxy(pg_server: PgServer, tmp_path: Path) -> Iterator[RunningProxy]:
    """A proxy of the test's own, for tests that change or break it."""
    with run_proxy(write_config(tmp_path, pg_server)) as running:
        yield running

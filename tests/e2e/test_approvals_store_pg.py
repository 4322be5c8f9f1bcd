"""The approval store's contract against a real PostgreSQL, as several proxy nodes share it.

Uses DBSENTRY_TEST_PG_DSN (default: the suite's PostgreSQL, see tests/support/pg.py); each
test gets a schema of its own, dropped afterwards.  The tests themselves are the
``StoreContract`` of tests/unit/test_approvals_store.py.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg")

from dbsentry.approvals.pg_store import PostgresApprovalStore  # noqa: E402
from dbsentry.approvals.store import ApprovalStore, open_approval_store  # noqa: E402
from dbsentry.audit.config import AuditConfig  # noqa: E402
from dbsentry.audit.pg_store import PostgresStore  # noqa: E402

# The suite's PostgreSQL: the machine's on 127.0.0.1:5432, or an embedded one (tests/support/pg.py).
from support.pg import find_postgres  # noqa: E402

DSN = os.environ.get("DBSENTRY_TEST_PG_DSN") or find_postgres().dsn()


def _load_contract() -> type:
    path = Path(__file__).resolve().parent.parent / "unit" / "test_approvals_store.py"
    spec = importlib.util.spec_from_file_location("_approvals_store_contract", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    contract: type = module.StoreContract
    return contract


def _reachable() -> str | None:
    try:
        with psycopg.connect(DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as err:
        return str(err).strip()
    return None


_why = _reachable()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(_why is not None, reason=f"PostgreSQL not reachable at {DSN!r}: {_why}"),
]

StoreContract = _load_contract()


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"dbsentry_apr_t{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


class TestPostgresStore(StoreContract):  # type: ignore[misc,valid-type]
    @pytest.fixture
    def make_store(self, schema: str) -> Callable[[], ApprovalStore]:
        return lambda: PostgresApprovalStore(DSN, schema=schema)


def test_lives_in_the_audit_schema_next_to_the_audit_trail(schema: str) -> None:
    audit_cfg = AuditConfig(store="postgres", dsn=DSN, pg_schema=schema)
    audit = PostgresStore(DSN, schema=schema)
    audit.migrate()
    store = open_approval_store(audit_cfg, Path("unused"))
    assert isinstance(store, PostgresApprovalStore)
    assert store.version() == 0
    store.close()
    audit.close()
    with psycopg.connect(DSN) as conn:
        tables = {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (schema,),
            )
        }
    assert {"records", "approval_requests", "approval_reviews", "grants", "approval_meta"} <= tables


def test_nodes_starting_together_create_the_tables_once(schema: str) -> None:
    import threading

    stores = [PostgresApprovalStore(DSN, schema=schema) for _ in range(4)]
    errors: list[BaseException] = []

    def start(s: PostgresApprovalStore) -> None:
        try:
            s.migrate()
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()
    assert not errors

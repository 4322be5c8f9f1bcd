"""Just-in-time access end to end: ``dbsentry access request``, a review, the grant used in
new and open sessions, and its end.

Carol is in ``eng``.  The ``restricted`` connection admits only ``dba``; a policy rule keeps
``vault_*`` tables for ``dba``.  After a DBA approves her request for group ``dba`` she can
use both, until the grant expires: then a new session on ``restricted`` is refused and her
open session's next statement is judged without the grant.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from support.audit import raw_records
from support.pg import PgServer
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

CAROL = ("carol@example.com", ("eng",))
BOB_DBA = ("bob@example.com", ("dba",))
DAVE_SRE = ("dave@example.com", ("sre",))
APR = re.compile(r"^apr_[0-9abcdefghjkmnpqrstvwxyz]{10}$")
GRANT_SECONDS = 6


@pytest.fixture
def vault(pg_server: PgServer) -> Iterator[str]:
    name = f"vault_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"create table {name} (id int, item text)")
        direct.execute(f"insert into {name} values (1, 'gold bar')")
        yield name
        direct.execute(f"drop table if exists {name}")


@pytest.fixture
def proxy(pg_server: PgServer, tmp_path: Path) -> Iterator[RunningProxy]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "rules:\n"
        "  - name: vault-is-for-dba\n"
        "    match: {tables: [vault_*]}\n"
        "    unless: {groups: [dba]}\n"
        "    action: deny\n"
        "    message: the vault is for DBAs\n"
    )
    extra = {
        "policy": str(policy),
        "approvals": {
            "poll_interval_seconds": 0.2,
            "access": {
                "approvers": ["dba"],
                "routes": [{"connections": ["restricted"], "approvers": ["sre"]}],
            },
        },
    }
    with run_proxy(write_config(tmp_path, pg_server, extra=extra)) as running:
        yield running


def access_request(
    proxy: RunningProxy,
    who: tuple[str, tuple[str, ...]],
    *target: str,
    duration: str,
    reason: str = "incident 4711",
) -> str:
    done = dbsentry_cli(
        "access",
        "request",
        "--token",
        proxy.token(who[0], who[1]),
        *target,
        "--for",
        duration,
        "--reason",
        reason,
        config=proxy.config_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rid = done.stdout.strip()
    assert APR.match(rid), done.stdout
    return rid


def grants(config: Path, identity: str, *, show_all: bool = False) -> list[dict[str, Any]]:
    args = ["access", "grants", "--json", "--identity", identity, *(["--all"] if show_all else [])]
    done = dbsentry_cli(*args, config=config)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def approve(proxy: RunningProxy, rid: str, who: tuple[str, tuple[str, ...]]) -> Any:
    return dbsentry_cli(
        "approvals",
        "approve",
        rid,
        "--token",
        proxy.token(who[0], who[1]),
        "--reason",
        "ok",
        config=proxy.config_path,
        check=False,
    )


def connect(
    proxy: RunningProxy, who: tuple[str, tuple[str, ...]], dbname: str = "prod"
) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(who[0], groups=who[1], dbname=dbname), autocommit=True)


def eventually(check: Any, timeout: float = 5.0) -> Any:
    """Retry ``check`` (grants reach open sessions within poll_interval_seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, psycopg.Error):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_group_grant_for_a_while(proxy: RunningProxy, vault: str) -> None:
    cfg = proxy.config_path
    read = f"select item from {vault}"

    # Before: Carol (eng) may neither use restricted nor read the vault.
    with pytest.raises(psycopg.OperationalError) as refused:
        connect(proxy, CAROL, "restricted").close()
    assert 'identity "carol@example.com" is not allowed to use connection "restricted"' in str(
        refused.value
    )
    held = connect(proxy, CAROL)  # stays open across the grant
    try:
        with pytest.raises(errors.InsufficientPrivilege) as denied:
            held.execute(read)
        assert "the vault is for DBAs" in (denied.value.diag.message_primary or "")

        rid = access_request(proxy, CAROL, "--group", "dba", duration=f"{GRANT_SECONDS}s")
        listed = dbsentry_cli("access", "list", "--json", config=cfg).stdout
        req = next(
            json.loads(line) for line in listed.splitlines() if json.loads(line)["id"] == rid
        )
        assert (req["status"], req["kind"], req["access_group"], req["approvers"]) == (
            "pending",
            "access",
            "dba",
            ["dba"],
        )
        assert req["reason"] == "incident 4711"
        # pending is not granted
        assert grants(cfg, CAROL[0]) == []
        with pytest.raises(errors.InsufficientPrivilege):
            held.execute(read)

        # Carol cannot approve her own; a non-dba cannot either.
        own = approve(proxy, rid, (CAROL[0], ("dba",)))
        assert own.returncode == 1 and "cannot review it" in own.stderr
        sre = approve(proxy, rid, DAVE_SRE)
        assert sre.returncode == 1 and "not in an approver group" in sre.stderr

        ok = approve(proxy, rid, BOB_DBA)
        assert ok.returncode == 0, ok.stderr
        assert f"{rid}: approved; {CAROL[0]} has group dba until" in ok.stdout
        (grant,) = grants(cfg, CAROL[0])
        assert (grant["group"], grant["approval_id"]) == ("dba", rid)
        assert abs((grant["expires_at"] - grant["granted_at"]) - GRANT_SECONDS) < 0.01

        # The open session gets the group (within the poll interval) ...
        assert eventually(lambda: held.execute(read).fetchall()) == [("gold bar",)]
        # ... and so do new sessions, on restricted too.
        with connect(proxy, CAROL, "restricted") as conn:
            assert conn.execute(read).fetchall() == [("gold bar",)]
        assert time.time() < grant["expires_at"], "test too slow: the grant expired while in use"

        # After expiry.
        time.sleep(max(0.0, grant["expires_at"] - time.time()) + 0.5)
        assert grants(cfg, CAROL[0]) == []
        assert [g["id"] for g in grants(cfg, CAROL[0], show_all=True)] == [grant["id"]]
        with pytest.raises(errors.InsufficientPrivilege) as after:
            held.execute(read)
        assert "the vault is for DBAs" in (after.value.diag.message_primary or "")
        with pytest.raises(psycopg.OperationalError) as gone:
            connect(proxy, CAROL, "restricted").close()
        assert 'not allowed to use connection "restricted"' in str(gone.value)
    finally:
        held.close()

    recs = [r["record"] for r in raw_records(cfg)]
    steps = [r for r in recs if r["type"] == "approval" and r["approval_id"] == rid]
    assert [s["event"] for s in steps] == ["requested", "approved"]
    assert steps[0]["requester"] == CAROL[0] and steps[0]["reason"] == "incident 4711"
    assert steps[0]["statement"] == f"ACCESS group dba FOR {GRANT_SECONDS}s"
    assert steps[1]["reviewer"] == BOB_DBA[0] and steps[1]["decision"] == "approved"


def test_connection_grant_routed_to_its_approvers(proxy: RunningProxy, vault: str) -> None:
    cfg = proxy.config_path
    rid = access_request(proxy, CAROL, "--connection", "restricted", duration=f"{GRANT_SECONDS}s")
    listed = dbsentry_cli("approvals", "show", rid, "--json", config=cfg).stdout
    assert json.loads(listed)["approvers"] == ["sre"]  # the route for restricted, not the default
    dba = approve(proxy, rid, BOB_DBA)
    assert dba.returncode == 1 and "not in an approver group" in dba.stderr
    ok = approve(proxy, rid, DAVE_SRE)
    assert ok.returncode == 0, ok.stderr
    (grant,) = grants(cfg, CAROL[0])
    assert (grant["connection"], grant["group"]) == ("restricted", None)
    with connect(proxy, CAROL, "restricted") as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        # a connection grant is not a group: the vault stays closed
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"select item from {vault}")
    time.sleep(max(0.0, grant["expires_at"] - time.time()) + 0.5)
    with pytest.raises(psycopg.OperationalError) as gone:
        connect(proxy, CAROL, "restricted").close()
    assert 'not allowed to use connection "restricted"' in str(gone.value)


def test_access_request_usage_errors(proxy: RunningProxy) -> None:
    cfg = proxy.config_path
    tok = proxy.token(CAROL[0], CAROL[1])
    too_long = dbsentry_cli(
        "access",
        "request",
        "--token",
        tok,
        "--group",
        "dba",
        "--for",
        "9h",
        "--reason",
        "x",
        config=cfg,
        check=False,
    )
    assert too_long.returncode == 2 and "max_duration_seconds" in too_long.stderr
    both = dbsentry_cli(
        "access",
        "request",
        "--token",
        tok,
        "--group",
        "dba",
        "--connection",
        "restricted",
        "--for",
        "1h",
        "--reason",
        "x",
        config=cfg,
        check=False,
    )
    assert both.returncode == 2
    already = dbsentry_cli(
        "access",
        "request",
        "--token",
        tok,
        "--group",
        "eng",
        "--for",
        "1h",
        "--reason",
        "x",
        config=cfg,
        check=False,
    )
    assert already.returncode == 1 and "already in group eng" in already.stderr
    assert dbsentry_cli("access", "list", "--json", config=cfg).stdout.strip() == ""

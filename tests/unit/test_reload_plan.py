"""What a SIGHUP reload applies (``config.plan_reload``): the connections added, changed and
removed, and the other sections that differ and wait for a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dbsentry.config import Config, parse_config, plan_reload, with_connections
from dbsentry.server.upstream_health import UpstreamHealth

BASE: dict[str, Any] = {
    "listen": {"postgres": "127.0.0.1:6432", "http": "127.0.0.1:8080"},
    "connections": {
        "prod": {"host": "db1", "database": "app", "user": "app", "password": "A", "environment": "production"},
        "staging": {"host": "db2", "database": "app", "user": "app", "environment": "staging"},
    },
}


def _config(**changes: Any) -> Config:
    data = {**BASE, **changes}
    return parse_config(data, Path("/etc/dbsentry"))


def _conns(**changes: Any) -> dict[str, Any]:
    return {**BASE["connections"], **changes}


def test_the_same_file_changes_nothing() -> None:
    plan = plan_reload(_config(), _config())
    assert not plan.connections_changed
    assert plan.restart_sections == ()


def test_added_changed_and_removed_connections_are_named() -> None:
    new = _config(
        connections={
            "prod": {**BASE["connections"]["prod"], "password": "B"},
            "staging": BASE["connections"]["staging"],
            "reports": {"host": "db3", "database": "r", "user": "ro", "environment": "staging"},
        }
    )
    plan = plan_reload(_config(), new)
    assert (plan.added, plan.changed, plan.removed) == (("reports",), ("prod",), ())
    assert plan.connections_changed and plan.restart_sections == ()
    gone = plan_reload(_config(), _config(connections={"prod": BASE["connections"]["prod"]}))
    assert (gone.added, gone.changed, gone.removed) == ((), (), ("staging",))


def test_any_connection_setting_is_a_change() -> None:
    for key, value in [
        ("port", 5433),
        ("database", "other"),
        ("user", "someone"),
        ("password_env", "PW"),
        ("password_file", "pw.txt"),
        ("upstream_tls", "require"),
        ("environment", "staging"),
        ("allow_groups", ["dba"]),
    ]:
        prod = {k: v for k, v in BASE["connections"]["prod"].items() if not (key.startswith("password") and k == "password")}
        new = _config(connections=_conns(prod={**prod, key: value}))
        assert plan_reload(_config(), new).changed == ("prod",), key


def test_other_sections_that_differ_are_named_for_a_restart() -> None:
    new = _config(
        listen={"postgres": "127.0.0.1:7000", "http": "127.0.0.1:8080"},
        workers=4,
        limits={"drain_seconds": 3},
        masking={"enabled": False},
    )
    plan = plan_reload(_config(), new)
    assert set(plan.restart_sections) == {"listen", "workers", "limits", "masking"}
    assert not plan.connections_changed


def test_the_applied_configuration_keeps_the_running_sections() -> None:
    running = _config()
    new = _config(listen={"postgres": "127.0.0.1:7000", "http": None}, connections=_conns(reports={"host": "db3", "database": "r", "user": "ro"}))
    applied = with_connections(running, new)
    assert applied.listen == running.listen
    assert set(applied.connections) == {"prod", "staging", "reports"}
    # the next reload of the same file: the connections are as applied, listen still differs
    again = plan_reload(applied, new)
    assert not again.connections_changed and again.restart_sections == ("listen",)


def test_readiness_probes_follow_the_reloaded_connections() -> None:
    probed: list[tuple[str, int]] = []

    async def probe(host: str, port: int) -> None:
        probed.append((host, port))
        if host == "down":
            raise OSError("refused")

    async def run() -> dict[str, bool | None]:
        running = _config()
        health = UpstreamHealth(running.connections, 10, probe=probe)
        await health.check_all()
        new = _config(
            connections={
                "prod": BASE["connections"]["prod"],  # unchanged: keeps its last state
                "reports": {"host": "down", "database": "r", "user": "ro", "environment": "staging"},
            }
        )
        health.reconfigure(new.connections)
        before = {name: s.reachable for name, s in health.snapshot().items()}
        assert before == {"prod": True, "reports": None}  # staging no longer probed
        await health.check_all()
        return {name: s.reachable for name, s in health.snapshot().items()}

    assert asyncio.run(run()) == {"prod": True, "reports": False}
    assert ("down", 5432) in probed

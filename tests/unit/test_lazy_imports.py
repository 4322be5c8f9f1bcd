"""A command pays for its own imports: reading the configuration or creating a token does
not import the approvals service, the audit appender, JWT or psycopg (dbsentry/lazy.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import dbsentry.approvals
import dbsentry.audit
import dbsentry.identity


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return set(out.stdout.split())


HEAVY = {"dbsentry.approvals.service", "dbsentry.audit.appender", "dbsentry.metrics", "jwt", "psycopg", "dbsentry.policy.cli"}


def test_reading_the_configuration_imports_nothing_heavy() -> None:
    assert not HEAVY & _modules_after("import dbsentry.cli, dbsentry.config, dbsentry.controlplane")


def test_re_exports_are_the_submodules_objects() -> None:
    from dbsentry.approvals.service import Approvals
    from dbsentry.audit.appender import AuditLog
    from dbsentry.identity.oidc import OIDCVerifier

    assert dbsentry.audit.AuditLog is AuditLog
    assert dbsentry.approvals.Approvals is Approvals
    assert dbsentry.identity.OIDCVerifier is OIDCVerifier
    assert all(hasattr(dbsentry.audit, name) for name in dbsentry.audit.__all__)
    assert all(hasattr(dbsentry.approvals, name) for name in dbsentry.approvals.__all__)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        dbsentry.audit.Nope  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError):
        from dbsentry.approvals import Nope  # type: ignore[attr-defined]  # noqa: F401


def test_every_command_is_listed_and_runs_its_help() -> None:
    from click.testing import CliRunner

    from dbsentry.cli import main

    listed = CliRunner().invoke(main, ["--help"])
    assert listed.exit_code == 0
    for name in ("access", "approvals", "audit", "classify", "demo", "policy", "report", "serve", "token", "mcp", "check-config"):
        assert f"  {name} " in listed.output, name
        shown = CliRunner().invoke(main, [name, "--help"])
        assert shown.exit_code == 0 and "Usage:" in shown.output, (name, shown.output)
    assert CliRunner().invoke(main, ["nope"]).exit_code == 2


def test_the_proxy_imports_the_web_framework_and_the_mysql_engine_only_when_it_serves_them() -> None:
    loaded = _modules_after("import dbsentry.server.runner, dbsentry.server.proxy, dbsentry.server.workers")
    assert not {"fastapi", "dbsentry.web.app", "dbsentry.server.mysql_proxy", "dbsentry.engines.mysql.session.session"} & loaded

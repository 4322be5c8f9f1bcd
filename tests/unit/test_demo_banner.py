"""The demo's banner, printed without running the demo: the command it names for
``dbsentry``, and what it says when psql is missing."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import pytest

from dbsentry.config import LoadedConfig, parse_config
from dbsentry.demo import banner
from dbsentry.demo.output import Printer
from dbsentry.demo.workspace import DEMO_IDENTITIES, IssuedToken, Workspace


def _print(tmp_path: Path) -> str:
    ws = Workspace(tmp_path / "demo dir")  # a space: paths must come out quoted
    config = parse_config(
        {"listen": {"postgres": "127.0.0.1:6432", "http": "127.0.0.1:8080"}}, ws.dir
    )
    tokens = {i.key: IssuedToken(i, f"dbs_{i.key}", i.key, None) for i in DEMO_IDENTITIES}
    out = io.StringIO()
    banner.print_banner(
        Printer(out), ws, "embedded PostgreSQL", LoadedConfig(config, ws.config_path), tokens, 1.0
    )
    return out.getvalue()


def test_the_dbsentry_command_is_this_installation(monkeypatch: pytest.MonkeyPatch) -> None:
    script = Path(sys.executable).parent / "dbsentry"
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert banner.dbsentry_command() == str(script)  # not on PATH: in full
    monkeypatch.setattr(shutil, "which", lambda name: str(script))
    assert banner.dbsentry_command() == "dbsentry"  # an activated virtualenv
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/dbsentry")
    assert banner.dbsentry_command() == str(script)  # another dbsentry on PATH


def test_banner_quotes_paths_and_says_how_to_get_psql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    text = _print(tmp_path)
    config = f"'{tmp_path / 'demo dir' / 'dbsentry.yaml'}'"
    assert f"approvals list -c {config}" in text
    assert "psql is not installed here" in text and "postgresql-client" in text
    assert "--token dbs_lead" in text  # the second reviewer approves the DBA's requests
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    assert "psql is not installed" not in _print(tmp_path)

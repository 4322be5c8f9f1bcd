"""The command line as a new user meets it: every enum option is a checked choice, ``-c``
defaults to ``dbsentry.yaml`` everywhere, a review takes ``--comment`` (the console's
word; ``--reason`` still works), outcomes read as words, and messages name files in full."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dbsentry.approvals.sqlite_store import SQLiteApprovalStore
from dbsentry.audit import CompletionRecord, StatementRecord
from dbsentry.audit.config import AuditConfig
from dbsentry.audit.keys import Signer
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import encode
from dbsentry.cli import main
from dbsentry.identity import TokenStore
from support.approvals import add_pending

CONFIG = "{state_dir: state, connections: {prod: {database: app, user: app}}}\n"


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with dbsentry.yaml and an audit trail, made the working directory."""
    (tmp_path / "dbsentry.yaml").write_text(CONFIG)
    store = SQLiteStore(AuditConfig().sqlite_path(tmp_path / "state"))
    ddl = StatementRecord(
        session_id="s1",
        identity="alice@example.com",
        identity_kind="human",
        statement="ALTER TABLE t ADD COLUMN c int",
        decision="require_approval",
        connection="prod",
    )
    read = StatementRecord(
        session_id="s1",
        identity="alice@example.com",
        identity_kind="human",
        statement="SELECT 1",
        decision="allow",
        connection="prod",
    )
    done = CompletionRecord(statement_id=read.id, session_id="s1", rows=1, duration_ms=0.2)
    store.append_batch([encode(r) for r in (ddl, read, done)])
    # the writer of the store's own chain signed it when it stopped (verify requires a checkpoint)
    store.add_checkpoint(Signer.from_path(AuditConfig().signing_key_path(tmp_path / "state")), "close")
    store.close()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_decision_is_a_choice_of_the_values_records_hold(here: Path) -> None:
    code, out = _run("audit", "search", "--decision", "pending_approval")
    assert code == 2
    assert "'pending_approval' is not one of" in out and "'require_approval'" in out
    code, out = _run("audit", "search", "--decision", "require_approval")
    assert code == 0 and "ALTER TABLE t ADD COLUMN c int" in out and "SELECT 1" not in out


def test_search_prints_outcomes_in_words(here: Path) -> None:
    code, out = _run("audit", "search")
    assert code == 0
    assert "rows=None" not in out
    assert "allow 1 row: SELECT 1" in out
    assert "require_approval not run: ALTER TABLE" in out


def test_data_class_options_are_choices(here: Path) -> None:
    args = ["policy", "explain", "--identity", "a", "--connection", "prod"]
    code, out = _run(*args, "--data-class", "emails", "SELECT 1")
    assert code == 2 and "'emails' is not one of" in out
    code, _ = _run(*args, "--data-class", "email", "SELECT 1")
    assert code == 0


@pytest.mark.parametrize(
    "args",
    [
        ["report"],
        ["policy", "check"],
        ["audit", "verify"],
        ["approvals", "list"],
        ["check-config", "--offline"],
    ],
)
def test_config_defaults_to_dbsentry_yaml_everywhere(here: Path, args: list[str]) -> None:
    code, out = _run(*args)
    assert code == 0, out


def test_report_without_out_writes_under_the_state_directory(here: Path) -> None:
    code, out = _run("report")
    assert code == 0, out
    written = out.split("wrote ", 1)[1].split(" and ")[0]
    assert Path(written).is_absolute() and Path(written).is_file()
    assert Path(written).is_relative_to(here / "state" / "reports")


def test_messages_name_files_in_full(here: Path) -> None:
    code, out = _run("check-config", "--offline")
    assert out.startswith(f"{here / 'dbsentry.yaml'}: ok"), out
    code, out = _run("audit", "search", "-c", "missing.yaml")
    assert code != 0 and str(here / "missing.yaml") in out


def test_reviews_take_a_comment_and_the_old_reason_still_works(here: Path) -> None:
    tokens = TokenStore(here / "state")
    dba, _ = tokens.create("dba@example.com", ["dba"], "human", 3600)
    tokens.close()
    store = SQLiteApprovalStore(AuditConfig().sqlite_path(here / "state"))
    ids = [
        add_pending(store, "alice@example.com", f"DELETE FROM t WHERE id = {n}").id for n in (1, 2)
    ]
    code, out = _run("approvals", "approve", ids[0], "--token", dba, "--comment", "ticket 7")
    assert code == 0, out
    code, out = _run("approvals", "deny", ids[1], "--token", dba, "--reason", "not today")
    assert code == 0, out
    reviews = {r.id: r.reviews[0].reason for r in store.list(status=None, limit=10)}
    store.close()
    assert reviews == {ids[0]: "ticket 7", ids[1]: "not today"}
    code, out = _run("approvals", "approve", "--help")
    assert "--comment" in out and "--reason" not in out

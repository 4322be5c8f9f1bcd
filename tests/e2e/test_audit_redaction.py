"""Our own outputs are channels too: sensitive values in statements and parameters never
reach the audit trail, its CLI, the approvals list or a webhook in clear.

A real proxy, real clients (psql, psycopg with text and binary parameters, asyncpg), a
table whose columns are sensitive by name (``email``, ``card_number``, ``ssn``), by a
catalog comment only (``nickname``: ``pii:person_name``) and not at all (``c1``, where
only value detection can see a card number).  Every output is checked with the leak
checker (raw, case, separators, reversed, md5, hex, base64, fragments).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.audit import raw_records, search, verify
from support.guard_clients import Login, run
from support.leaks import Secrets
from support.pg import PgServer
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

EMAIL = "ada@example.com"
CARD = "4111111111111111"
SSN = "536-22-8726"
LOOSE_CARD = "4242424242424242"  # in a column nobody classified: value detection finds it
NICKNAME = "Grace Hopper"  # only the catalog comment says this column holds names
APPROVAL_EMAIL = "grace@example.com"
SECRETS = Secrets([EMAIL, CARD, SSN, LOOSE_CARD, NICKNAME, APPROVAL_EMAIL])
TOKEN = re.compile(r"<([a-z_]+):hmac:([0-9a-f]{12})>")
STAGING = Login(dbname="staging")


class Receiver:
    """A tiny HTTP server on 127.0.0.1 that keeps every POST body."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with outer.cond:
                    outer.bodies.append((self.path, body))
                    outer.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait(self, path: str, needle: str, timeout: float = 15) -> bytes:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for p, body in self.bodies:
                    if p == path and needle.encode() in body:
                        return body
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no post to {path} with {needle}: {self.bodies!r}")
                self.cond.wait(left)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture(scope="module")
def table(pg_server: PgServer) -> Iterator[str]:
    name = f"redact_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(
            f"create table {name} (id int, email text, card_number text, ssn text, "
            "nickname text, c1 text, status text)"
        )
        direct.execute(f"comment on column {name}.nickname is 'pii:person_name'")
        yield name
        direct.execute(f"drop view if exists {name}_v")
        direct.execute(f"drop table if exists {name}")


@pytest.fixture(scope="module")
def proxy(
    pg_server: PgServer,
    tmp_path_factory: pytest.TempPathFactory,
    receiver: Receiver,
    table: str,
) -> Iterator[RunningProxy]:
    """Started after the table exists, so its catalog knows the table."""
    directory = tmp_path_factory.mktemp("redaction")
    url = f"http://127.0.0.1:{receiver.port}"
    extra = {
        "approvals": {
            "poll_interval_seconds": 0.2,
            "webhooks": [
                {"url": f"{url}/hook", "secret": "s3cret", "format": "generic"},
                {"url": f"{url}/slack", "format": "slack"},
            ],
        }
    }
    with run_proxy(write_config(directory, pg_server, extra=extra)) as running:
        yield running


def _token(proxy: RunningProxy, value: str) -> str:
    done = dbsentry_cli("audit", "token", value, config=proxy.config_path)
    m = TOKEN.fullmatch(done.stdout.strip())
    assert m is not None, done.stdout
    return m.group(2)


def _statements(proxy: RunningProxy, needle: str) -> list[dict[str, Any]]:
    return [r for r in search(proxy.config_path, "--text", needle)]


@pytest.fixture(scope="module")
def traffic(proxy: RunningProxy, table: str, receiver: Receiver) -> dict[str, Any]:
    """Every client sends the statements once; returns what the tests look at."""
    t = table
    literal_select = f"SELECT id FROM {t} WHERE email = '{EMAIL}' AND id = 42 AND status = 'open'"
    update_ssn = f"UPDATE {t} SET ssn = '{SSN}' WHERE id = 42"
    loose = f"SELECT id FROM {t} WHERE c1 = '{LOOSE_CARD}' AND status = 'open'"
    nick = f"UPDATE {t} SET nickname = '{NICKNAME}' WHERE id = 42"
    insert = f"INSERT INTO {t} (id, email, card_number, status) VALUES (%s, %s, %s, %s)"
    for mode in ("psql", "psycopg", "psycopg-binary", "asyncpg"):
        stmts: list[Any] = [literal_select, update_ssn, loose, nick]
        if mode == "psql":
            stmts.append(
                f"INSERT INTO {t} (id, email, card_number, status) "
                f"VALUES (7, '{EMAIL}', '{CARD}', 'open')"
            )
        else:
            stmts.append((insert, [7, EMAIL, CARD, "open"]))
        outcomes = run(mode, proxy, stmts, STAGING)
        assert all(o.ok for o in outcomes), [str(o) for o in outcomes]
    # Binary parameters, explicitly: text as UTF-8 bytes, the card as a bigint.
    with psycopg.connect(proxy.dsn(dbname="staging"), autocommit=True) as conn:
        conn.execute(
            f"INSERT INTO {t} (id, email, card_number) VALUES (%b, %b, %b::bigint::text)",
            [8, EMAIL, int(CARD)],
        )
        conn.execute(f"SELECT id FROM {t} WHERE email = %b AND status = %b", [EMAIL, "open"])
    # A statement that needs approval (DDL in production) and carries an e-mail.
    ddl = f"CREATE VIEW {t}_v AS SELECT id FROM {t} WHERE email = '{APPROVAL_EMAIL}'"
    with (
        psycopg.connect(proxy.dsn(), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as refused,
    ):
        conn.execute(ddl)
    (rid,) = set(re.findall(r"\bapr_[0-9a-z]{10}\b", refused.value.diag.message_primary or ""))
    hook = receiver.wait("/hook", rid)
    slack = receiver.wait("/slack", rid)
    return {"rid": rid, "hook": hook, "slack": slack, "table": t}


def test_nothing_leaks_from_any_output(
    proxy: RunningProxy, traffic: dict[str, Any], tmp_path: Path
) -> None:
    cfg = proxy.config_path
    records = raw_records(cfg)
    assert any(r["record"]["type"] == "statement" for r in records)
    SECRETS.assert_no_leak(json.dumps(records), context="raw audit records")
    SECRETS.assert_no_leak(json.dumps(search(cfg)), context="audit search --json")
    plain = dbsentry_cli("audit", "search", "--limit", "0", config=cfg).stdout
    SECRETS.assert_no_leak(plain, context="audit search")
    csv_out = dbsentry_cli("audit", "export", "--format", "csv", config=cfg).stdout
    SECRETS.assert_no_leak(csv_out, context="audit export csv")
    tail = dbsentry_cli("audit", "tail", "-n", "500", config=cfg).stdout
    SECRETS.assert_no_leak(tail, context="audit tail")
    out = tmp_path / "report"
    dbsentry_cli("report", "-c", str(cfg), "--since", "1d", "--out", str(out), config=cfg)
    for f in out.iterdir():
        SECRETS.assert_no_leak(f.read_text(errors="replace"), context=f"report {f.name}")
    listed = dbsentry_cli("approvals", "list", "--status", "all", "--json", config=cfg).stdout
    assert traffic["rid"] in listed
    SECRETS.assert_no_leak(listed, context="approvals list")
    plain_list = dbsentry_cli("approvals", "list", "--status", "all", config=cfg).stdout
    SECRETS.assert_no_leak(plain_list, context="approvals list")
    shown = dbsentry_cli("approvals", "show", traffic["rid"], config=cfg).stdout
    SECRETS.assert_no_leak(shown, context="approvals show")
    SECRETS.assert_no_leak(traffic["hook"].decode(), context="generic webhook")
    SECRETS.assert_no_leak(traffic["slack"].decode(), context="slack webhook")
    SECRETS.assert_no_leak(proxy.log_text(), context="proxy log")


def test_equal_values_give_equal_tokens_and_search_finds_them(
    proxy: RunningProxy, traffic: dict[str, Any]
) -> None:
    cfg = proxy.config_path
    email, card = _token(proxy, EMAIL), _token(proxy, CARD)
    rows = search(cfg, "--table", traffic["table"])
    selects = [r for r in rows if r["statement"].startswith("SELECT id") and "email" in r["statement"]]
    inserts = [r for r in rows if r["command"] == "INSERT"]
    assert len(selects) == 5 and len(inserts) == 5, [r["statement"] for r in rows]
    for r in selects:  # literal in psql/psycopg text, $1 binary param in one
        text = r["statement"] + json.dumps(r["params"])
        assert f"<email:hmac:{email}>" in text, r
    for r in inserts:  # literals (psql), text params, binary params (asyncpg, %b)
        text = r["statement"] + json.dumps(r["params"])
        assert f"<email:hmac:{email}>" in text, r
        assert f"<payment_card:hmac:{card}>" in text, r
    # the SSN meets the ssn column, the nickname a column only its comment classifies
    ssn = [r for r in rows if "SET ssn" in r["statement"]]
    assert len(ssn) == 4 and all(f"'<national_id:hmac:{_token(proxy, SSN)}>'" in r["statement"] for r in ssn)
    nick = [r for r in rows if "SET nickname" in r["statement"]]
    assert len(nick) == 4
    assert all(f"'<person_name:hmac:{_token(proxy, NICKNAME)}>'" in r["statement"] for r in nick)
    loose = [r for r in rows if "c1 =" in r["statement"]]
    assert len(loose) == 4
    assert all(f"'<payment_card:hmac:{_token(proxy, LOOSE_CARD)}>'" in r["statement"] for r in loose)
    # searching by the value finds every record that holds its token (text or params)
    found = search(cfg, "--value", EMAIL, "--table", traffic["table"])
    assert {r["id"] for r in found} == {r["id"] for r in selects + inserts}
    assert search(cfg, "--value", "nobody@example.com") == []


def test_harmless_literals_stay_and_text_still_parses(
    proxy: RunningProxy, traffic: dict[str, Any]
) -> None:
    from pglast import parser

    rows = search(proxy.config_path, "--table", traffic["table"])
    literal = [
        r
        for r in rows
        if r["command"] == "SELECT" and "email = '<email:hmac:" in r["statement"]
    ]
    assert len(literal) == 4
    for r in literal:
        assert "id = 42" in r["statement"] and "status = 'open'" in r["statement"]
    redacted = {
        r["record"]["id"]: r["record"]["statement_redacted"]
        for r in raw_records(proxy.config_path)
        if r["record"]["type"] == "statement"
    }
    assert all(redacted[r["id"]] for r in literal)
    for r in rows:
        parser.parse_sql(r["statement"])  # still SQL
    binary = [r for r in rows if r["params"] and "open" in r["params"]]
    assert binary, "a harmless parameter is kept as sent"


def test_approval_request_shows_tokens(proxy: RunningProxy, traffic: dict[str, Any]) -> None:
    body = json.loads(traffic["hook"])
    assert body["statement"].endswith(f"WHERE email = '<email:hmac:{_token(proxy, APPROVAL_EMAIL)}>'")
    records = raw_records(proxy.config_path)
    approval = [r["record"] for r in records if r["record"]["type"] == "approval"]
    assert any(a["approval_id"] == traffic["rid"] and "<email:hmac:" in a["statement"] for a in approval)


def test_chain_verifies(proxy: RunningProxy, traffic: dict[str, Any]) -> None:
    done = verify(proxy.config_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "INTACT" in done.stdout


def test_redact_literals_true_still_redacts_everything(
    pg_server: PgServer, tmp_path: Path, table: str
) -> None:
    config = write_config(tmp_path, pg_server, extra={"audit": {"redact_literals": True}})
    with run_proxy(config) as proxy:
        outcomes = run(
            "psycopg",
            proxy,
            [
                f"SELECT id FROM {table} WHERE email = '{EMAIL}' AND id = 42",
                (f"SELECT id FROM {table} WHERE status = %s", ["open"]),
            ],
            STAGING,
        )
        assert all(o.ok for o in outcomes), [str(o) for o in outcomes]
        rows = search(config, "--table", table)
        assert [r["statement"] for r in rows] == [
            f"SELECT id FROM {table} WHERE email = ? AND id = ?",
            f"SELECT id FROM {table} WHERE status = $1",
        ]
        assert rows[1]["params"] == ["?"]
        SECRETS.assert_no_leak(json.dumps(raw_records(config)))
        assert verify(config).returncode == 0

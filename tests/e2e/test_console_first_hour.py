"""The console as a new user meets it, in a real browser: numbers that agree with each
other, no catalog noise, a way out for an identity without a role, and approval cards
that say what a reviewer needs to know.

One console (a seeded audit trail and approvals store) serves every test; each test signs
in with the token it needs.  Screenshots land in ``test-artifacts/console-first-hour/``.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbsentry.approvals import Approvals, open_approval_store
from dbsentry.approvals.config import ApprovalsConfig
from dbsentry.approvals.model import FactsSummary, access_request
from dbsentry.audit import StatementRecord
from dbsentry.audit.keys import Signer
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import encode
from dbsentry.config import parse_config
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.identity import Identity, TokenStore
from support.approvals import add_pending
from support.console import CHROMIUM, launch_chromium, serve_console

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"
    ),
]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console-first-hour"
DDL = "ALTER TABLE customers ADD COLUMN segment text"
# psql's \d, as an agent's client sends it
CATALOG_QUERY = (
    "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
    "LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
)


def _statement(identity: str, kind: str, sql: str, **kw: Any) -> StatementRecord:
    return StatementRecord(
        session_id=f"{identity[:4]}0000c0ffee01",
        identity=identity,
        identity_kind=kind,
        connection="prod",
        environment="production",
        statement=sql,
        **kw,
    )


def _records() -> list[StatementRecord]:
    out = [
        # the same DDL sent three times: three held statements, one request
        *(
            _statement(
                "bob@acme.io",
                "human",
                DDL,
                command="ALTER TABLE",
                tables=("customers",),
                decision="require_approval",
                rules=("baseline.prod.ddl-approval",),
            )
            for _ in range(3)
        ),
        *(
            _statement(
                "support-bot",
                "agent",
                CATALOG_QUERY,
                command="SELECT",
                tables=("pg_catalog.pg_class", "pg_catalog.pg_namespace"),
                columns_read=("pg_catalog.pg_class.relname", "pg_catalog.pg_namespace.nspname"),
                decision="allow",
            )
            for _ in range(12)
        ),
        _statement(
            "support-bot",
            "agent",
            "SELECT email FROM customers LIMIT 5",
            command="SELECT",
            tables=("customers",),
            columns_read=("customers.email",),
            data_classes=("email",),
            masked_columns=("customers.email",),
            masked_classes=("email",),
            decision="mask",
        ),
    ]
    return out


@dataclass
class Console:
    url: str
    tokens: dict[str, str]
    approvals: Approvals
    ids: dict[str, str]


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    tmp = tmp_path_factory.mktemp("console_first_hour")
    config = parse_config(
        {
            "state_dir": "state",
            "connections": {
                "prod": {"database": "shop", "user": "app", "environment": "production"}
            },
        },
        tmp,
    )
    store_path = config.audit.sqlite_path(config.state_dir)
    seed = SQLiteStore(store_path)
    seed.append_batch([encode(r) for r in _records()])
    # its writer signed the store's own chain when it stopped (verify requires a checkpoint)
    seed.add_checkpoint(Signer.from_path(config.audit.signing_key_path(config.state_dir)), "close")
    seed.close()
    tokens = TokenStore(config.state_dir)
    issued = {
        "admin": tokens.create("dana@acme.io", ["dbsentry-admins", "dba"], "human", 3600)[0],
        "norole": tokens.create("nora@acme.io", ["analysts"], "human", 3600)[0],
    }
    store = open_approval_store(config.audit, config.state_dir)
    service = Approvals(ApprovalsConfig(), store)
    now = time.time()
    carol = Identity("carol@acme.io", frozenset({"analysts"}), "human", "t", "token")
    ids: dict[str, str] = {}
    for key, who, sql, risk in (
        ("ddl", "bob@acme.io", DDL, "high"),
        (
            "update",
            "carol@acme.io",
            "UPDATE customers SET tier = 'gold' WHERE id IN (17, 18)",
            "moderate",
        ),
    ):
        ids[key] = add_pending(
            store,
            who,
            sql,
            age_seconds=120,
            summary=FactsSummary(command=sql.split()[0], tables=("customers",), risk=risk),
            rules=("baseline.prod.ddl-approval",),
            message="schema changes in production need a DBA's approval",
        ).id
    access, _ = store.create_or_get_pending(
        access_request(
            identity=carol,
            group="pii-readers",
            connection=None,
            duration_seconds=3600,
            reason="investigating ticket OPS-77",
            approvers=["dba"],
            min_approvals=1,
            now=now - 60,
            ttl_seconds=3600,
        ),
        now - 60,
    )
    ids["access"] = access.id
    reviewer = Identity("rita@acme.io", frozenset({"dba"}), "human", "t", "token")
    service.review(ids["update"], reviewer, True, "checked the ids with support, OPS-81")
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    try:
        with serve_console(
            config, store_path, tokens, governor=Governor.from_path(None), approvals=service
        ) as url:
            yield Console(url, issued, service, ids)
    finally:
        store.close()
        tokens.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = launch_chromium(pw)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def expect() -> Any:
    return pytest.importorskip("playwright.sync_api").expect


def _page(browser: Any, console: Console, token: str, route: str = "") -> Any:
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(f"{console.url}/{route}")
    page.fill("#token-input", token)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#who-name")
    return page


def _done(page: Any, screenshot: str, *, full_page: bool = False) -> None:
    page.screenshot(path=str(ARTIFACTS / screenshot), full_page=full_page)
    assert not page.errors, page.errors
    page.close()


def _number(text: str) -> int:
    return int(re.sub(r"[^\d]", "", text))


def test_live_page_counts_pending_requests_like_the_approvals_badge(
    browser: Any, console: Console, expect: Any
) -> None:
    page = _page(browser, console, console.tokens["admin"])
    badge = page.locator("#nav a[data-route=approvals] .count")
    expect(badge).to_have_text("1")  # the DDL; the UPDATE is approved already
    pending = page.locator("#pending-requests .value")
    expect(pending).to_have_text("1")
    # The three held statements of that one request are statements in the feed.
    expect(page.locator(".stat", has_text="Statements").locator(".value")).to_have_text("16")
    expect(page.locator("#feed tbody tr", has_text="Needs approval")).to_have_count(3)
    page.screenshot(path=str(ARTIFACTS / "01-live-counts.png"))
    # Approving it moves both numbers together.
    console.approvals.review(
        console.ids["ddl"],
        Identity("rita@acme.io", frozenset({"dba"}), "human", "t", "token"),
        True,
        None,
    )
    page.evaluate("window.location.hash = '#/approvals'")
    expect(badge).to_be_hidden()
    page.click("#nav a[data-route=live]")
    expect(page.locator("#pending-requests .value")).to_have_text("0")
    assert not page.errors, page.errors
    page.close()


def test_agents_and_data_access_leave_catalog_queries_out(
    browser: Any, console: Console, expect: Any
) -> None:
    page = _page(browser, console, console.tokens["admin"], "#/agents")
    bot = page.locator(".grid-3 > section.card", has=page.locator("h2", has_text="support-bot"))
    expect(bot).to_be_visible()
    expect(bot.locator(".facet", has_text="Tables")).to_contain_text("customers")
    expect(bot.locator(".facet", has_text="Tables")).not_to_contain_text("pg_catalog")
    expect(page.locator(".catalog-toggle")).to_contain_text("Show catalog queries (12 hidden)")
    page.screenshot(path=str(ARTIFACTS / "02-agents.png"))
    page.click("#show-catalog")
    expect(bot.locator(".facet", has_text="Tables")).to_contain_text("pg_catalog.pg_class")

    page.click("#nav a[data-route=data]")
    details = page.locator("details.tree", has_text="support-bot")
    expect(details).to_be_visible()
    details.locator("summary").click()
    expect(details).to_contain_text("customers")
    expect(details).not_to_contain_text("pg_catalog")
    expect(page.locator(".stat", has_text="Statements").first.locator(".value")).to_have_text("4")
    _done(page, "03-data-access.png")


def test_an_identity_without_a_role_is_told_which_groups_give_one(
    browser: Any, console: Console, expect: Any
) -> None:
    page = _page(browser, console, console.tokens["norole"])
    expect(page.locator("#who-roles")).to_have_text("no console role")
    box = page.locator("#no-role")
    expect(box).to_contain_text("nora@acme.io is in the groups analysts")
    expect(box.locator("li", has_text="admin")).to_contain_text("dbsentry-admins")
    expect(box.locator("li", has_text="reviewer")).to_contain_text("dba")
    expect(box.locator("li", has_text="auditor")).to_contain_text("security")
    _done(page, "04-no-role.png")


def test_approval_cards_show_risk_tables_statement_reason_and_comments(
    browser: Any, console: Console, expect: Any
) -> None:
    page = _page(browser, console, console.tokens["admin"], "#/approvals?status=all")
    update = page.locator("article.request", has_text="UPDATE customers")
    expect(update).to_contain_text("Risk moderate")
    expect(update.locator(".tables")).to_contain_text("customers")
    expect(update.locator("pre.statement")).to_have_text(
        "UPDATE customers SET tier = 'gold' WHERE id IN (17, 18)"
    )
    expect(update).to_contain_text("schema changes in production need a DBA's approval")
    expect(update.locator(".reviews")).to_contain_text("✓ approved by rita@acme.io")
    expect(update.locator(".reviews")).to_contain_text("checked the ids with support, OPS-81")
    page.screenshot(path=str(ARTIFACTS / "05-approval-cards.png"), full_page=True)

    # An access request opened from its link: the requester's reason is on the card.
    page.goto(f"{console.url}/approvals/{console.ids['access']}")
    card = page.locator("article.request")
    expect(card).to_contain_text("Requester's reason: “investigating ticket OPS-77”")
    assert not page.errors, page.errors
    page.close()


def test_audit_chain_page_numbers_agree(browser: Any, console: Console, expect: Any) -> None:
    page = _page(browser, console, console.tokens["admin"], "#/audit")
    expect(page.locator(".chain.ok")).to_contain_text("Chain intact")
    summary = page.locator("#chain-summary").inner_text()
    records = _number(summary.split("records verified")[0])
    rows = page.locator("#chains .chain-verified").all_inner_texts()
    assert rows, summary
    total = 0
    for row in rows:
        match = re.match(r"#(\d+) … #(\d+) \(([\d,]+) records\)", row)
        assert match, row
        first, last, count = int(match.group(1)), int(match.group(2)), _number(match.group(3))
        assert count == last - first + 1
        total += count
    assert total == records
    _done(page, "06-audit-chain.png")

"""The web console in a real browser: sign in, watch the live feed, find a blocked attempt.

Runs Debian's Chromium through Playwright (``apt-get install chromium``; Playwright's own
browser download is never used).  Screenshots land in ``test-artifacts/console/``.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dbsentry.audit import CompletionRecord, SessionEvent, StatementRecord
from dbsentry.audit.keys import Signer
from dbsentry.audit.sqlite_store import SQLiteStore
from dbsentry.audit.store import encode
from dbsentry.config import Config, parse_config
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.identity import TokenStore
from support.approvals import add_pending
from support.auditlog import append
from support.console import CHROMIUM, launch_chromium, serve_console

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"
    ),
]

POLICY = """\
version: 1
default: allow
production_environments: [production]
rules:
  - name: no-ddl-in-prod
    description: Schema changes in production go through migrations
    match: {environments: [production], classes: [DDL]}
    action: deny
    message: schema changes in production go through migrations
  - name: agents-no-secrets
    description: AI agents never read secrets
    match: {kind: agent, data_classes: [secret]}
    action: deny
  - name: mask-pii-for-analysts
    description: Analysts see personal data masked
    match: {groups: [analysts], data_classes: [email, phone, person_name, date_of_birth]}
    action: mask
    mask: {strategy: partial}
  - name: bulk-delete-needs-approval
    description: Deletes in production need a DBA's approval
    match: {environments: [production], commands: [DELETE]}
    action: require_approval
    approvers: [dba]
"""

PEOPLE = [
    ("alice@acme.io", "human", ["dba"]),
    ("bob@acme.io", "human", ["analysts"]),
    ("carol@acme.io", "human", ["analysts"]),
    ("support-bot", "agent", ["agents"]),
    ("etl-agent", "agent", ["agents"]),
]

READS: list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = [
    (
        "SELECT id, email, full_name FROM public.customers WHERE id = $1",
        ("public.customers",),
        ("public.customers.email", "public.customers.full_name", "public.customers.id"),
        ("email", "person_name"),
    ),
    (
        "SELECT o.id, o.total, c.phone FROM orders o JOIN customers c ON c.id = o.customer_id",
        ("orders", "customers"),
        ("orders.id", "orders.total", "customers.phone", "customers.id", "orders.customer_id"),
        ("phone",),
    ),
    (
        "SELECT card_number, expiry FROM billing.payment_methods WHERE customer_id = 42",
        ("billing.payment_methods",),
        ("billing.payment_methods.card_number", "billing.payment_methods.expiry"),
        ("payment_card",),
    ),
    (
        "SELECT count(*) FROM orders WHERE created_at > now() - interval '1 day'",
        ("orders",),
        ("orders.created_at",),
        (),
    ),
    (
        "SELECT date_of_birth, email FROM customers WHERE signup_source = 'partner'",
        ("customers",),
        ("customers.date_of_birth", "customers.email", "customers.signup_source"),
        ("date_of_birth", "email"),
    ),
    (
        "SELECT sku, name, stock FROM inventory ORDER BY stock LIMIT 50",
        ("inventory",),
        ("inventory.sku", "inventory.name", "inventory.stock"),
        (),
    ),
]


def demo_records(now: float) -> list[Any]:
    """A plausible hour of traffic: reads, masked reads, refusals, agents, sessions."""
    rnd = random.Random(7)
    out: list[Any] = []
    t = now - 3500
    for n, (name, kind, groups) in enumerate(PEOPLE):
        sid = f"{name.split('@')[0][:6]}{n:02d}a7f3c91e"[:16]
        conn, env = ("prod", "production") if n % 2 == 0 else ("analytics", "staging")
        out.append(
            SessionEvent(
                event="opened",
                session_id=sid,
                identity=name,
                identity_kind=kind,
                groups=tuple(groups),
                client_addr=f"10.20.{n}.{11 + n}",
                application_name="psql" if kind == "human" else "langchain-sql",
                tls=True,
                tls_version="TLSv1.3",
                connection=conn,
                environment=env,
                database="shop",
                time=t,
            )
        )
        for _ in range(8):
            t += rnd.uniform(20, 60)
            sql, tables, cols, classes = rnd.choice(READS)
            analyst = "analysts" in groups
            masked = analyst or (kind == "agent" and "payment_card" in classes)
            decision = "mask" if masked and classes else "allow"
            rec = StatementRecord(
                time=t,
                session_id=sid,
                identity=name,
                identity_kind=kind,
                connection=conn,
                environment=env,
                database="shop",
                statement=sql,
                command="SELECT",
                statement_class="READ",
                risk="low",
                tables=tables,
                columns_read=cols,
                data_classes=classes,
                decision=decision,
                rules=("mask-pii-for-analysts",) if decision == "mask" else (),
                masked_columns=tuple(
                    c
                    for c in cols
                    if any(k in c for k in ("email", "phone", "name", "birth", "card"))
                )
                if decision == "mask"
                else (),
                masked_classes=tuple(
                    cl
                    for c in cols
                    for k, cl in (
                        ("email", "email"),
                        ("phone", "phone"),
                        ("full_name", "person_name"),
                        ("birth", "date_of_birth"),
                        ("card", "payment_card"),
                    )
                    if k in c
                )
                if decision == "mask"
                else (),
                application_name="psql",
            )
            out.append(rec)
            out.append(
                CompletionRecord(
                    statement_id=rec.id,
                    session_id=sid,
                    rows=rnd.randint(1, 400),
                    duration_ms=round(rnd.uniform(0.4, 48.0), 2),
                    time=t + 0.05,
                )
            )
    refusals = [
        (
            "alice@acme.io",
            "human",
            "prod",
            "production",
            "DROP TABLE customers_archive",
            "DROP TABLE",
            "DDL",
            "no-ddl-in-prod",
            "deny",
        ),
        (
            "support-bot",
            "agent",
            "prod",
            "production",
            "SELECT api_key, secret FROM integrations",
            "SELECT",
            "READ",
            "agents-no-secrets",
            "deny",
        ),
        (
            "bob@acme.io",
            "human",
            "prod",
            "production",
            "DELETE FROM orders WHERE status = 'stale'",
            "DELETE",
            "WRITE",
            "bulk-delete-needs-approval",
            "require_approval",
        ),
        (
            "etl-agent",
            "agent",
            "prod",
            "production",
            "ALTER TABLE orders ADD COLUMN note text",
            "ALTER TABLE",
            "DDL",
            "no-ddl-in-prod",
            "deny",
        ),
    ]
    for i, (name, kind, conn, env, sql, cmd, klass, rule, decision) in enumerate(refusals):
        t += rnd.uniform(30, 90)
        out.append(
            StatementRecord(
                time=t,
                session_id=f"deny{i:02d}c0ffee11",
                identity=name,
                identity_kind=kind,
                connection=conn,
                environment=env,
                statement=sql,
                command=cmd,
                statement_class=klass,
                risk="high",
                tables=(sql.split()[2] if cmd != "SELECT" else "integrations",),
                data_classes=("secret",) if "secret" in sql else (),
                decision=decision,
                rules=(rule,),
            )
        )
    return out


@dataclass
class Console:
    url: str
    tokens: dict[str, str]
    store_path: Path
    approvals: Any
    state_dir: Path


def _config(tmp_path: Path) -> Config:
    (tmp_path / "policy.yaml").write_text(POLICY)
    return parse_config(
        {
            "state_dir": "state",
            "policy": "policy.yaml",
            "connections": {
                "prod": {"database": "shop", "user": "app", "environment": "production"},
                "analytics": {"database": "shop", "user": "ro", "environment": "staging"},
            },
        },
        tmp_path,
    )


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    config = _config(tmp_path)
    store_path = config.audit.sqlite_path(config.state_dir)
    seed = SQLiteStore(store_path)
    seed.append_batch([encode(r) for r in demo_records(time.time())])
    # its writer signed the store's own chain when it stopped (verify requires a checkpoint)
    seed.add_checkpoint(Signer.from_path(config.audit.signing_key_path(config.state_dir)), "close")
    seed.close()
    tokens = TokenStore(config.state_dir)
    issued = {
        "admin": tokens.create("dana@acme.io", ["dbsentry-admins", "dba"], "human", 3600)[0],
        "auditor": tokens.create("sam@acme.io", ["security"], "human", 3600)[0],
    }
    for name, kind, groups in PEOPLE:
        tokens.create(name, groups, "human" if kind == "human" else "agent", 30 * 86400)
    approvals: Any = None
    try:
        from dbsentry.approvals import open_approval_store

        approvals = open_approval_store(config.audit, config.state_dir)
        for who, sql in (
            ("bob@acme.io", "DELETE FROM orders WHERE status = 'stale'"),
            ("carol@acme.io", "UPDATE customers SET tier = 'gold' WHERE id IN (17, 18, 19)"),
        ):
            add_pending(
                approvals, who, sql, age_seconds=300, rules=("bulk-delete-needs-approval",)
            )
    except ImportError:
        approvals = None
    try:
        with serve_console(
            config,
            store_path,
            tokens,
            governor=Governor.from_path(config.policy),
            approvals=approvals,
        ) as url:
            yield Console(url, issued, store_path, approvals, config.state_dir)
    finally:
        if approvals is not None:
            approvals.close()
        tokens.close()


def test_console(console: Console) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    with sync_api.sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on(
                "console",
                lambda m: (
                    errors.append(m.text)
                    if m.type == "error" and "401" not in m.text  # the wrong token, on purpose
                    else None
                ),
            )
            run_console(sync_api, page, console)
            assert not errors, errors
        finally:
            browser.close()


def shot(page: Any, name: str, *, full_page: bool = False) -> None:
    page.wait_for_timeout(300)  # let transitions settle
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def run_console(sync_api: Any, page: Any, console: Console) -> None:
    expect = sync_api.expect
    page.goto(console.url + "/")
    expect(page.locator("#login-form")).to_be_visible()
    shot(page, "01-login")

    page.fill("#token-input", "dbs_not_a_real_token")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("not valid")

    page.fill("#token-input", console.tokens["admin"])
    page.click("#login-form button[type=submit]")
    expect(page.locator("#who-name")).to_have_text("dana@acme.io")
    feed = page.locator("#feed tbody tr")
    expect(feed.first).to_be_visible()
    expect(page.locator("#stream-status")).to_contain_text("Live")
    assert feed.count() >= 40
    shot(page, "02-live-feed")

    # A record committed now shows up in the open page without a reload.
    page.evaluate("window.__noReload = true")
    append(console.state_dir, StatementRecord(
                        session_id="live0000feedbeef",
                        identity="etl-agent",
                        identity_kind="agent",
                        connection="prod",
                        environment="production",
                        statement="SELECT sku, stock FROM inventory WHERE stock < 5 /* live-marker */",
                        command="SELECT",
                        statement_class="READ",
                        tables=("inventory",),
                        decision="allow",
                    ))
    new_row = page.locator("#feed tbody tr", has_text="live-marker")
    expect(new_row).to_be_visible(timeout=5000)
    assert page.evaluate("window.__noReload") is True
    expect(feed.first).to_contain_text("live-marker")
    shot(page, "03-live-feed-new-row")

    page.click("#nav a[data-route=blocked]")
    blocked = page.locator("table tbody tr", has_text="DROP TABLE customers_archive")
    expect(blocked).to_be_visible()
    expect(blocked).to_contain_text("no-ddl-in-prod")
    expect(blocked.locator(".badge.deny")).to_be_visible()
    shot(page, "04-blocked")

    page.click("#nav a[data-route=search]")
    page.fill("input[name=identity]", "bob@acme.io")
    page.select_option("select[name=decision]", "mask")
    page.click("form.filters button[type=submit]")
    expect(page.locator("table tbody tr").first).to_contain_text("bob@acme.io")
    shot(page, "05-search")

    page.locator("table tbody tr a", has_text="session").first.click()
    expect(page.locator("#page-title")).to_contain_text("Session")
    expect(page.locator("dl.kv")).to_contain_text("bob@acme.io")
    shot(page, "06-session")

    page.click("#nav a[data-route=sessions]")
    expect(page.locator("h2", has_text="Recent sessions")).to_be_visible()
    shot(page, "07-sessions")

    if console.approvals is not None:
        page.click("#nav a[data-route=approvals]")
        cards = page.locator("article.request")
        expect(cards).to_have_count(2)
        shot(page, "08-approvals")
        first = cards.filter(has_text="DELETE FROM orders")
        first.locator("textarea").fill("Stale orders confirmed in ticket OPS-118")
        first.locator("button", has_text="Approve").click()
        expect(page.locator("#toast")).to_contain_text("Approved")
        expect(page.locator("article.request")).to_have_count(1)
        approved = console.approvals.list(status="approved")
        assert [r.statement for r in approved] == ["DELETE FROM orders WHERE status = 'stale'"]

    page.click("#nav a[data-route=data]")
    expect(page.locator(".chart svg").first).to_be_visible()
    expect(page.locator(".chart").first).to_contain_text("payment_card")
    shot(page, "09-data-access")

    page.click("#nav a[data-route=agents]")
    expect(page.locator("h2", has_text="support-bot")).to_be_visible()
    shot(page, "10-agents")

    page.click("#nav a[data-route=policy]")
    page.fill("textarea[name=sql]", "DROP TABLE customers")
    page.select_option("select[name=connection]", "prod")
    page.click("button:has-text('Explain')")
    expect(page.locator(".verdict.deny")).to_contain_text("no-ddl-in-prod")
    shot(page, "11-policy")

    page.click("#nav a[data-route=audit]")
    expect(page.locator(".chain.ok")).to_contain_text("Chain intact")
    shot(page, "12-audit-chain")

    page.click("#nav a[data-route=identities]")
    expect(page.locator("table").first).to_contain_text("support-bot")
    shot(page, "13-identities")

    page.click("#theme-toggle")
    page.click("#nav a[data-route=live]")
    expect(page.locator("#feed tbody tr").first).to_be_visible()
    shot(page, "14-live-dark")
    page.click("#nav a[data-route=data]")
    expect(page.locator(".chart svg").first).to_be_visible()
    shot(page, "15-data-access-dark")

    page.click("#logout")
    expect(page.locator("#login-form")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('dbsentry.token')") is None

"""The web console served by a real proxy, watched in a real browser while real clients work.

A dbsentry process runs with ``listen.http`` set, in front of the test PostgreSQL.  A
reviewer (groups ``dba`` and ``security``: the reviewer and auditor roles by the default
``web.roles``) signs in to the console in headless Chromium while an analyst works through
the proxy with psycopg:

- the analyst's SELECT appears in the open live feed, with no reload;
- the analyst's CREATE INDEX in production is refused with an approval request id
  (``baseline.prod.ddl-approval``); the reviewer approves it with the button on the
  approvals page, and the analyst's statement, sent again, runs (checked on PostgreSQL);
- the analyst's DROP TABLE is blocked (``baseline.prod.drop``) and is listed on the
  blocked-attempts page;
- the audit chain page says the chain is intact.

Runs Debian's Chromium through Playwright (``apt-get install chromium``; Playwright's own
browser download is never used).  Screenshots land in ``test-artifacts/console-proxy/``.
"""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from support.pg import PgServer, free_port
from support.proxy import RunningProxy, run_proxy, write_config

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console-proxy"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="needs Debian's chromium: apt-get install -y chromium"
    ),
]

REVIEWER = ("rita.reviewer@example.com", ("dba", "security"))
ANALYST = ("andy.analyst@example.com", ("analysts",))
# Crockford base32, as request ids are made
APR = re.compile(r"\bapr_[0-9abcdefghjkmnpqrstvwxyz]{10}\b")


class ConsoleProxy:
    def __init__(self, proxy: RunningProxy, http: str) -> None:
        self.proxy = proxy
        self.url = f"http://{http}"


def _wait_http(url: str, proxy: RunningProxy, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as res:
                if res.status == 200:
                    return
        except OSError:
            pass
        if not proxy.alive():
            raise RuntimeError(f"dbsentry exited:\n{proxy.log_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the console did not answer at {url}:\n{proxy.log_text()}")
        time.sleep(0.1)


@pytest.fixture
def console_proxy(pg_server: PgServer, tmp_path: Path) -> Iterator[ConsoleProxy]:
    http = f"127.0.0.1:{free_port()}"
    extra = {
        # write_config sets listen itself (http off): replace the whole mapping
        "listen": {"postgres": f"127.0.0.1:{free_port()}", "http": http},
        "web": {"stream_poll_seconds": 0.2},
    }
    with run_proxy(write_config(tmp_path, pg_server, extra=extra)) as running:
        _wait_http(f"http://{http}/readyz", running)
        yield ConsoleProxy(running, http)


@pytest.fixture
def direct(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def table(direct: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"console_{uuid.uuid4().hex[:12]}"
    direct.execute(f"create table {name} (id int primary key, note text)")
    direct.execute(f"insert into {name} values (1, 'one'), (2, 'two')")
    yield name
    direct.execute(f"drop table if exists {name} cascade")


def index_exists(direct: psycopg.Connection[Any], name: str) -> bool:
    row = direct.execute("select count(*) from pg_indexes where indexname = %s", (name,)).fetchone()
    return row == (1,)


def table_exists(direct: psycopg.Connection[Any], name: str) -> bool:
    row = direct.execute("select to_regclass(%s) is not null", (name,)).fetchone()
    return row == (True,)


def shot(page: Any, name: str, *, full_page: bool = False) -> None:
    page.wait_for_timeout(300)  # let transitions settle
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def test_console_through_proxy(
    console_proxy: ConsoleProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    proxy = console_proxy.proxy
    reviewer_token = proxy.token(*REVIEWER)
    analyst_dsn = proxy.dsn(ANALYST[0], groups=ANALYST[1])
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            run(sync_api, page, console_proxy, reviewer_token, analyst_dsn, direct, table)
            assert not problems, problems
        finally:
            browser.close()


def run(
    sync_api: Any,
    page: Any,
    console: ConsoleProxy,
    reviewer_token: str,
    analyst_dsn: str,
    direct: psycopg.Connection[Any],
    table: str,
) -> None:
    expect = sync_api.expect
    page.goto(console.url + "/")
    expect(page.locator("#login-form")).to_be_visible()
    page.fill("#token-input", reviewer_token)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#who-name")).to_have_text(REVIEWER[0])
    expect(page.locator("#who-roles")).to_contain_text("reviewer")
    expect(page.locator("#who-roles")).to_contain_text("auditor")
    expect(page.locator("#stream-status")).to_contain_text("Live")
    shot(page, "01-signed-in")

    # 1. A statement run through the proxy now shows up in the open feed, without a reload.
    page.evaluate("window.__noReload = true")
    marker = f"marker-{uuid.uuid4().hex}"
    with psycopg.connect(analyst_dsn, autocommit=True) as conn:
        assert conn.execute(f"select '{marker}' as m").fetchone() == (marker,)
    row = page.locator("#feed tbody tr", has_text=marker)
    expect(row).to_be_visible(timeout=10_000)
    expect(row).to_contain_text(ANALYST[0])
    expect(row).to_contain_text("prod")
    expect(row.locator(".badge.allow")).to_be_visible()
    # the completion arrives too: the outcome cell reads "1 row(s)" and the time
    expect(row.locator("td").last).to_have_text(re.compile(r"^1 rows? *\d"), timeout=10_000)
    assert page.evaluate("window.__noReload") is True
    expect(page.locator("#feed tbody tr").first).to_contain_text(marker)
    shot(page, "02-live-feed-marker")

    # 2. DDL in production waits for a reviewer: refused with a request id.
    index = f"{table}_note_idx"
    ddl = f"create index {index} on {table} (note)"
    with (
        psycopg.connect(analyst_dsn, autocommit=True) as conn,
        pytest.raises(errors.InsufficientPrivilege) as refused,
    ):
        conn.execute(ddl)
    found = APR.findall(str(refused.value))
    assert found, str(refused.value)
    request_id = found[0]
    assert not index_exists(direct, index)
    # The refusal reaches the open feed as well, as "Needs approval".
    pending_row = page.locator("#feed tbody tr", has_text=index)
    expect(pending_row).to_be_visible(timeout=10_000)
    expect(pending_row.locator(".badge.pending")).to_be_visible()
    expect(pending_row).to_contain_text("baseline.prod.ddl-approval")
    shot(page, "03-live-feed-needs-approval")

    page.click("#nav a[data-route=approvals]")
    expect(page.locator("#page-title")).to_have_text("Approvals")
    request = page.locator(f"article.request[data-id={request_id}]")
    expect(request).to_be_visible()
    expect(request).to_contain_text(ddl)
    expect(request).to_contain_text(ANALYST[0])
    expect(request).to_contain_text("baseline.prod.ddl-approval")
    expect(page.locator("#nav a[data-route=approvals] .count")).to_have_text("1")
    request.locator("textarea").fill("index reviewed, ticket OPS-2042")
    shot(page, "04-approvals-pending")
    request.locator("button", has_text="Approve").click()
    expect(page.locator("#toast")).to_contain_text("Approved")
    expect(page.locator(f"article.request[data-id={request_id}]")).to_have_count(0)
    expect(page.locator("#view")).to_contain_text("No requests are waiting")
    shot(page, "05-approvals-approved")

    page.locator(".segmented button", has_text="Approved").click()
    done = page.locator(f"article.request[data-id={request_id}]")
    expect(done).to_be_visible()
    expect(done).to_contain_text(REVIEWER[0])
    shot(page, "06-approvals-approved-list")

    # The analyst sends the same statement again: it runs, once.
    with psycopg.connect(analyst_dsn, autocommit=True) as conn:
        conn.execute(ddl)
    assert index_exists(direct, index)

    # 3. DROP TABLE in production is blocked, and listed among the blocked attempts.
    drop = f"drop table {table}"
    with (
        psycopg.connect(analyst_dsn, autocommit=True) as conn,
        pytest.raises(errors.InsufficientPrivilege) as blocked_err,
    ):
        conn.execute(drop)
    assert "baseline.prod.drop" in str(blocked_err.value)
    assert table_exists(direct, table)
    page.click("#nav a[data-route=blocked]")
    blocked = page.locator("table tbody tr", has_text=drop)
    expect(blocked).to_be_visible(timeout=10_000)
    expect(blocked).to_contain_text(ANALYST[0])
    expect(blocked).to_contain_text("baseline.prod.drop")
    expect(blocked.locator(".badge.deny")).to_be_visible()
    shot(page, "07-blocked")

    # 4. The audit chain verifies.
    page.click("#nav a[data-route=audit]")
    expect(page.locator(".chain.ok")).to_contain_text("Chain intact")
    expect(page.locator("#view")).to_contain_text("healthy")
    shot(page, "08-audit-chain")

    # Back on the live feed: everything the analyst did, newest first.
    page.click("#nav a[data-route=live]")
    expect(page.locator("#feed tbody tr").first).to_contain_text(drop)
    shot(page, "09-live-feed-after")


def test_failed_database_logins_are_counted(console_proxy: ConsoleProxy) -> None:
    proxy = console_proxy.proxy
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(proxy.dsn(token="not-a-token"), autocommit=True)
    with urllib.request.urlopen(f"{console_proxy.url}/metrics", timeout=5) as res:
        text = res.read().decode()
    assert 'dbsentry_login_failures_total{reason="password"} 1.0' in text

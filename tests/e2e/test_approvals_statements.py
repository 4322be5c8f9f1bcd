"""Statements that need approval, end to end through a running proxy.

A person runs DDL, a GRANT, or an UPDATE that a policy rule holds for review, with psql
(simple protocol) and psycopg (simple and extended protocol).  Another person reviews it
with ``dbsentry approvals``.  What the client sees, what PostgreSQL did (checked directly,
not through the proxy), what ``approvals list`` says and what the audit trail records must
all agree:

- fail mode: 42501 naming the request; nothing runs; once approved the same statement runs,
  once; the next send needs a new approval;
- wait mode: a notice naming the request, the statement held until a decision (approval,
  denial, timeout, client cancel);
- the review rules: no self-review, only approver groups, no agents;
- extended protocol: the approval covers the bound parameters, not just the text.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors

from support.audit import psql, raw_records, verify
from support.pg import PgServer
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

ALICE = ("alice@example.com", ("eng",))
BOB_DBA = ("bob@example.com", ("dba",))
CAROL = ("carol@example.com", ("eng",))
DEPLOY_BOT = ("deploy-bot@example.com", ("dba",))  # an agent, even though in dba
# Crockford base32, as request ids are made
APR = re.compile(r"\bapr_[0-9abcdefghjkmnpqrstvwxyz]{10}\b")
WAIT = "-c dbsentry.approval=wait"


# --------------------------------------------------------------------------------- helpers


def request_ids(text: str) -> list[str]:
    return list(dict.fromkeys(APR.findall(text)))


def the_request_id(text: str) -> str:
    ids = request_ids(text)
    assert len(ids) == 1, f"expected one request id in {text!r}"
    return ids[0]


def list_requests(config: Path) -> list[dict[str, Any]]:
    done = dbsentry_cli("approvals", "list", "--status", "all", "--json", config=config)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def get_request(config: Path, request_id: str) -> dict[str, Any]:
    found = [r for r in list_requests(config) if r["id"] == request_id]
    assert len(found) == 1, f"{request_id} not in approvals list"
    return found[0]


def wait_for_request(
    config: Path, pred: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in list_requests(config) if pred(r)]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError("no such approval request appeared")


def review(
    proxy: RunningProxy,
    verb: str,
    request_id: str,
    who: tuple[str, tuple[str, ...]],
    reason: str,
    *,
    agent: bool = False,
    token: str | None = None,
) -> Any:
    tok = token if token is not None else proxy.token(who[0], who[1], agent)
    return dbsentry_cli(
        "approvals",
        verb,
        request_id,
        "--token",
        tok,
        "--reason",
        reason,
        config=proxy.config_path,
        check=False,
    )


def approve(proxy: RunningProxy, request_id: str, reason: str = "ticket 4711") -> None:
    done = review(proxy, "approve", request_id, BOB_DBA, reason)
    assert done.returncode == 0, done.stderr
    assert f"{request_id}: approved" in done.stdout


def records_until(
    config: Path, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 15
) -> list[dict[str, Any]]:
    """The raw audit records, once ``pred`` holds for them (the writer is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        recs = [r["record"] for r in raw_records(config)]
        if pred(recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.3)


class Reviewer(threading.Thread):
    """Another person at another terminal: once ``ready`` gives a request id, waits
    ``delay`` seconds and approves or denies it with the CLI."""

    def __init__(
        self,
        proxy: RunningProxy,
        verb: str,
        ready: Callable[[], str],
        delay: float = 1.0,
        reason: str = "ticket 4711",
    ) -> None:
        super().__init__(daemon=True)
        self.proxy, self.verb, self.ready, self.delay, self.reason = (
            proxy,
            verb,
            ready,
            delay,
            reason,
        )
        self.request_id: str | None = None
        self.review_started: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.request_id = self.ready()
            time.sleep(self.delay)
            self.review_started = time.monotonic()
            done = review(self.proxy, self.verb, self.request_id, BOB_DBA, self.reason)
            assert done.returncode == 0, done.stderr
        except BaseException as err:
            self.error = err

    def finish(self) -> str:
        self.join(60)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error
        assert self.request_id is not None
        return self.request_id


class Notices:
    """Collects NoticeResponses; ``request_id()`` blocks until one names a request."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self.got = threading.Event()

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        self.items.append(
            (diag.severity_nonlocalized or diag.severity or "", diag.message_primary or "")
        )
        if APR.search(diag.message_primary or ""):
            self.got.set()

    def request_id(self, timeout: float = 20) -> str:
        assert self.got.wait(timeout), f"no notice naming a request within {timeout}s: {self.items}"
        return next(the_request_id(m) for _, m in self.items if APR.search(m))


# --------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def acct_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("approvals-policy") / "policy.yaml"
    path.write_text(
        "version: 1\n"
        "rules:\n"
        "  - name: account-updates-need-dba\n"
        "    match: {commands: [UPDATE], tables: [acct_*], environments: [production]}\n"
        "    action: require_approval\n"
        "    approvers: [dba]\n"
        "    message: account updates need a DBA\n"
    )
    return path


@pytest.fixture(scope="module")
def proxy(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory, acct_policy: Path
) -> Iterator[RunningProxy]:
    directory = tmp_path_factory.mktemp("approvals")
    extra = {"policy": str(acct_policy), "approvals": {"poll_interval_seconds": 0.2}}
    with run_proxy(write_config(directory, pg_server, extra=extra)) as running:
        yield running


@pytest.fixture
def direct(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        yield conn


@pytest.fixture
def table(direct: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"apr_{uuid.uuid4().hex[:12]}"
    direct.execute(f"create table {name} (id int primary key, note text)")
    direct.execute(f"insert into {name} values (1, 'one'), (2, 'two')")
    yield name
    direct.execute(f"drop table if exists {name} cascade")


@pytest.fixture
def acct(direct: psycopg.Connection[Any]) -> Iterator[str]:
    name = f"acct_{uuid.uuid4().hex[:12]}"
    direct.execute(f"create table {name} (id int primary key, balance int not null)")
    direct.execute(f"insert into {name} values (1, 100), (2, 200)")
    yield name
    direct.execute(f"drop table if exists {name}")


def index_exists(direct: psycopg.Connection[Any], name: str) -> bool:
    return direct.execute(
        "select count(*) from pg_indexes where indexname = %s", (name,)
    ).fetchone() == (1,)


def column_exists(direct: psycopg.Connection[Any], table: str, column: str) -> bool:
    row = direct.execute(
        "select count(*) from information_schema.columns where table_name = %s and column_name = %s",
        (table, column),
    ).fetchone()
    return row == (1,)


def table_comment(direct: psycopg.Connection[Any], table: str) -> str | None:
    row = direct.execute("select obj_description(%s::regclass, 'pg_class')", (table,)).fetchone()
    assert row is not None
    return row[0]


def public_can_select(direct: psycopg.Connection[Any], table: str) -> bool:
    row = direct.execute("select has_table_privilege('public', %s, 'SELECT')", (table,)).fetchone()
    assert row is not None
    return bool(row[0])


def balances(direct: psycopg.Connection[Any], acct: str) -> dict[int, int]:
    return dict(direct.execute(f"select id, balance from {acct}").fetchall())


# --------------------------------------------------------------------------------- fail mode


def test_fail_mode_with_psql_runs_once_after_approval_and_is_audited(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    cfg = proxy.config_path
    dsn = proxy.dsn(ALICE[0], groups=ALICE[1])
    index = f"{table}_note_idx"
    sql = f"CREATE INDEX {index} ON {table} (note)"

    first = psql(dsn, "-v", "VERBOSITY=verbose", "-c", sql)
    assert first.returncode == 1, first
    assert "ERROR:  42501: dbsentry:" in first.stderr
    rid = the_request_id(first.stderr)
    assert f"/approvals/{rid}" in first.stderr
    assert "pending review by dba" in first.stderr
    assert not index_exists(direct, index)

    # Sent again while pending (other layout, a comment): the same request, not a new one.
    again = psql(dsn, "-c", f"CREATE  INDEX {index}\n  ON {table} (note) -- please")
    assert again.returncode == 1
    assert request_ids(again.stderr) == [rid]
    pending = get_request(cfg, rid)
    assert pending["status"] == "pending"
    assert (pending["requester"], pending["connection"], pending["kind"]) == (
        ALICE[0],
        "prod",
        "statement",
    )
    assert pending["statement"] == sql
    assert pending["approvers"] == ["dba"]
    assert pending["rules"] == ["baseline.prod.ddl-approval"]
    assert [r["id"] for r in list_requests(cfg) if r["statement"] == sql] == [rid]
    assert not index_exists(direct, index)

    approve(proxy, rid)
    assert get_request(cfg, rid)["status"] == "approved"
    assert not index_exists(direct, index), "approving must not run the statement by itself"

    ran = psql(dsn, "-c", sql)
    assert ran.returncode == 0, ran.stderr
    assert index_exists(direct, index)
    assert get_request(cfg, rid)["status"] == "used"

    third = psql(dsn, "-v", "VERBOSITY=verbose", "-c", sql)
    assert third.returncode == 1
    assert "ERROR:  42501: dbsentry:" in third.stderr
    rid3 = the_request_id(third.stderr)
    assert rid3 != rid
    assert get_request(cfg, rid3)["status"] == "pending"
    assert get_request(cfg, rid)["status"] == "used"

    # The audit trail: request and review, and the run that used the approval.
    def complete(recs: list[dict[str, Any]]) -> bool:
        ran = [r for r in recs if r["type"] == "statement" and r.get("approval_id") == rid]
        return bool(ran) and any(
            r["type"] == "completion" and r["statement_id"] == ran[0]["id"] for r in recs
        )

    recs = records_until(cfg, complete)
    steps = [r for r in recs if r["type"] == "approval" and r["approval_id"] == rid]
    assert [s["event"] for s in steps] == ["requested", "approved"]
    requested, approved = steps
    assert requested["requester"] == ALICE[0] and requested["reviewer"] is None
    assert requested["statement"] == sql and requested["connection"] == "prod"
    assert approved["requester"] == ALICE[0]
    assert approved["reviewer"] == BOB_DBA[0]
    assert approved["review_comment"] == "ticket 4711"
    assert approved["decision"] == "approved"
    runs = [r for r in recs if r["type"] == "statement" and r.get("approval_id") == rid]
    assert len(runs) == 1
    assert runs[0]["identity"] == ALICE[0] and runs[0]["statement"] == sql
    done = [r for r in recs if r["type"] == "completion" and r["statement_id"] == runs[0]["id"]]
    assert len(done) == 1 and done[0]["error"] is None
    refused = [
        r
        for r in recs
        if r["type"] == "statement" and r["statement"] == sql and r.get("approval_id") is None
    ]
    assert len(refused) == 2  # the first send and the third; the layout-changed one differs in text
    assert any(
        r["type"] == "approval" and r["approval_id"] == rid3 and r["event"] == "requested"
        for r in recs
    )
    checked = verify(cfg)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("kind", "template"),
    [
        ("add-column", "ALTER TABLE {t} ADD COLUMN extra int"),
        ("comment", "COMMENT ON TABLE {t} IS 'approved by a dba'"),
        ("grant", "GRANT SELECT ON {t} TO PUBLIC"),
    ],
)
def test_fail_mode_with_psycopg(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str, kind: str, template: str
) -> None:
    cfg = proxy.config_path
    sql = template.format(t=table)
    effect: Callable[[], bool] = {
        "add-column": lambda: column_exists(direct, table, "extra"),
        "comment": lambda: table_comment(direct, table) == "approved by a dba",
        "grant": lambda: public_can_select(direct, table),
    }[kind]
    with psycopg.connect(proxy.dsn(ALICE[0], groups=ALICE[1]), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as refused:
            conn.execute(sql)
        assert refused.value.sqlstate == "42501"
        message = refused.value.diag.message_primary or ""
        rid = the_request_id(message)
        assert f"http://127.0.0.1:8080/approvals/{rid}" in message
        assert not effect()
        rule = "baseline.prod.role-approval" if kind == "grant" else "baseline.prod.ddl-approval"
        assert get_request(cfg, rid)["rules"] == [rule]

        approve(proxy, rid)
        assert not effect()
        conn.execute(sql)  # the same session, the same statement: runs now
        assert effect()
        assert get_request(cfg, rid)["status"] == "used"

        with pytest.raises(errors.InsufficientPrivilege) as again:
            conn.execute(sql)
        rid2 = the_request_id(again.value.diag.message_primary or "")
        assert rid2 != rid
        assert get_request(cfg, rid2)["status"] == "pending"
        # the session is still usable after refusals
        assert conn.execute("select 1").fetchone() == (1,)


def test_approval_is_for_the_requester_only(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    """Carol sending Alice's approved statement does not use Alice's approval."""
    cfg = proxy.config_path
    sql = f"COMMENT ON TABLE {table} IS 'alice'"
    with psycopg.connect(proxy.dsn(ALICE[0], groups=ALICE[1]), autocommit=True) as alice:
        with pytest.raises(errors.InsufficientPrivilege) as refused:
            alice.execute(sql)
        rid = the_request_id(refused.value.diag.message_primary or "")
        approve(proxy, rid)
        with psycopg.connect(proxy.dsn(CAROL[0], groups=CAROL[1]), autocommit=True) as carol:
            with pytest.raises(errors.InsufficientPrivilege) as other:
                carol.execute(sql)
            assert the_request_id(other.value.diag.message_primary or "") != rid
        assert table_comment(direct, table) is None
        assert get_request(cfg, rid)["status"] == "approved"
        alice.execute(sql)
        assert table_comment(direct, table) == "alice"


# --------------------------------------------------------------------------------- reviewers


def test_review_refusals(proxy: RunningProxy, direct: psycopg.Connection[Any], table: str) -> None:
    cfg = proxy.config_path
    sql = f"COMMENT ON TABLE {table} IS 'reviewed'"
    with psycopg.connect(proxy.dsn(ALICE[0], groups=ALICE[1]), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as refused:
            conn.execute(sql)
        rid = the_request_id(refused.value.diag.message_primary or "")

        # Alice, even with a token that puts her in dba, cannot approve her own request.
        own = review(proxy, "approve", rid, (ALICE[0], ("dba",)), "looks fine to me")
        assert own.returncode == 1
        assert f"{ALICE[0]} made request {rid} and cannot review it" in own.stderr
        # Carol is not in dba: neither approve nor deny.
        for verb in ("approve", "deny"):
            outsider = review(proxy, verb, rid, CAROL, "why not")
            assert outsider.returncode == 1
            assert (
                f"{CAROL[0]} is not in an approver group of request {rid} (dba)" in outsider.stderr
            )
        # An agent in dba cannot review.
        bot = review(proxy, "approve", rid, DEPLOY_BOT, "automated", agent=True)
        assert bot.returncode == 1
        assert "is an agent" in bot.stderr
        # Not a token at all.
        bogus = review(proxy, "approve", rid, BOB_DBA, "x", token="dbs_not-a-real-token")
        assert bogus.returncode == 1
        assert "token is not valid" in bogus.stderr
        # Unknown request.
        unknown = review(proxy, "approve", "apr_0000000000", BOB_DBA, "x")
        assert unknown.returncode == 1

        after = get_request(cfg, rid)
        assert after["status"] == "pending"
        assert after["reviews"] == []
        with pytest.raises(errors.InsufficientPrivilege) as still:
            conn.execute(sql)
        assert request_ids(still.value.diag.message_primary or "") == [rid]
        assert table_comment(direct, table) is None

        approve(proxy, rid)
        twice = review(proxy, "approve", rid, BOB_DBA, "again")
        assert twice.returncode == 1
        assert "not pending" in twice.stderr
        conn.execute(sql)
        assert table_comment(direct, table) == "reviewed"


# --------------------------------------------------------------------------------- wait mode


def test_wait_mode_held_until_approved_from_another_process(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    cfg = proxy.config_path
    sql = f"ALTER TABLE {table} ADD COLUMN waited int"
    notices = Notices()
    with psycopg.connect(
        proxy.dsn(ALICE[0], groups=ALICE[1], options=WAIT), autocommit=True
    ) as conn:
        conn.add_notice_handler(notices)
        reviewer = Reviewer(proxy, "approve", notices.request_id, delay=1.0)
        reviewer.start()
        started = time.monotonic()
        conn.execute(sql)
        finished = time.monotonic()
        rid = reviewer.finish()
        assert column_exists(direct, table, "waited")
        assert reviewer.review_started is not None
        assert finished > reviewer.review_started, (
            "the statement returned before anyone reviewed it"
        )
        assert finished - started >= 1.0
        severity, text = next((s, m) for s, m in notices.items if rid in m)
        assert severity == "NOTICE"
        assert text.startswith(f"dbsentry: waiting up to 600s for approval request {rid}")
        assert get_request(cfg, rid)["status"] == "used"
        assert conn.execute("select 1").fetchone() == (1,)

    recs = records_until(
        cfg, lambda rs: any(r["type"] == "statement" and r.get("approval_id") == rid for r in rs)
    )
    runs = [r for r in recs if r["type"] == "statement" and r.get("approval_id") == rid]
    assert len(runs) == 1 and runs[0]["statement"] == sql


def test_wait_mode_denied(proxy: RunningProxy, direct: psycopg.Connection[Any], table: str) -> None:
    cfg = proxy.config_path
    sql = f"CREATE INDEX {table}_denied_idx ON {table} (note)"
    notices = Notices()
    with psycopg.connect(
        proxy.dsn(ALICE[0], groups=ALICE[1], options=WAIT), autocommit=True
    ) as conn:
        conn.add_notice_handler(notices)
        reviewer = Reviewer(
            proxy, "deny", notices.request_id, delay=0.5, reason="not during the sale"
        )
        reviewer.start()
        with pytest.raises(errors.InsufficientPrivilege) as denied:
            conn.execute(sql)
        rid = reviewer.finish()
        message = denied.value.diag.message_primary or ""
        assert (
            message
            == f"dbsentry: approval request {rid} was denied by {BOB_DBA[0]}: not during the sale"
        )
        assert not index_exists(direct, f"{table}_denied_idx")
        assert get_request(cfg, rid)["status"] == "denied"
        assert conn.execute("select 1").fetchone() == (1,)

    recs = records_until(
        cfg,
        lambda rs: any(
            r["type"] == "approval" and r["approval_id"] == rid and r["event"] == "denied"
            for r in rs
        ),
    )
    d = [
        r
        for r in recs
        if r["type"] == "approval" and r["approval_id"] == rid and r["event"] == "denied"
    ]
    assert len(d) == 1
    assert (d[0]["reviewer"], d[0]["review_comment"], d[0]["decision"]) == (
        BOB_DBA[0],
        "not during the sale",
        "denied",
    )


def test_wait_mode_client_cancel_withdraws(
    proxy: RunningProxy, direct: psycopg.Connection[Any], table: str
) -> None:
    cfg = proxy.config_path
    sql = f"COMMENT ON TABLE {table} IS 'canceled'"
    notices = Notices()
    with psycopg.connect(
        proxy.dsn(ALICE[0], groups=ALICE[1], options=WAIT), autocommit=True
    ) as conn:
        conn.add_notice_handler(notices)
        errors_in_thread: list[BaseException] = []

        def cancel() -> None:
            try:
                notices.request_id()
                time.sleep(0.3)
                conn.cancel_safe()
            except BaseException as err:
                errors_in_thread.append(err)

        t = threading.Thread(target=cancel, daemon=True)
        t.start()
        with pytest.raises(psycopg.Error) as canceled:
            conn.execute(sql)
        t.join(30)
        assert not errors_in_thread, errors_in_thread
        rid = notices.request_id()
        assert canceled.value.sqlstate == "57014"
        assert f"approval request {rid} withdrawn" in (canceled.value.diag.message_primary or "")
        assert get_request(cfg, rid)["status"] == "withdrawn"
        late = review(proxy, "approve", rid, BOB_DBA, "too late")
        assert late.returncode == 1 and "not pending" in late.stderr
        assert table_comment(direct, table) is None
        assert conn.execute("select 1").fetchone() == (1,)

    recs = records_until(
        cfg,
        lambda rs: any(
            r["type"] == "approval" and r["approval_id"] == rid and r["event"] == "revoked"
            for r in rs
        ),
    )
    assert any(
        r["type"] == "approval"
        and r["approval_id"] == rid
        and r["event"] == "revoked"
        and r["decision"] == "withdrawn"
        for r in recs
    )


@pytest.mark.serial
def test_wait_mode_times_out(
    pg_server: PgServer, tmp_path: Path, direct: psycopg.Connection[Any], table: str
) -> None:
    extra = {"approvals": {"wait_timeout_seconds": 2, "poll_interval_seconds": 0.2}}
    with run_proxy(write_config(tmp_path, pg_server, extra=extra)) as proxy:
        cfg = proxy.config_path
        sql = f"ALTER TABLE {table} ADD COLUMN too_late int"
        notices = Notices()
        with psycopg.connect(
            proxy.dsn(ALICE[0], groups=ALICE[1], options=WAIT), autocommit=True
        ) as conn:
            conn.add_notice_handler(notices)
            started = time.monotonic()
            with pytest.raises(errors.QueryCanceled) as timed_out:
                conn.execute(sql)
            elapsed = time.monotonic() - started
            rid = notices.request_id(timeout=0)
            assert timed_out.value.sqlstate == "57014"
            message = timed_out.value.diag.message_primary or ""
            assert f"approval request {rid} was not approved within 2s" in message
            assert 2.0 <= elapsed < 10
            assert any("waiting up to 2s" in m for _, m in notices.items)
            assert get_request(cfg, rid)["status"] == "withdrawn"
            late = review(proxy, "approve", rid, BOB_DBA, "too late")
            assert late.returncode == 1
            assert not column_exists(direct, table, "too_late")
            assert conn.execute("select 1").fetchone() == (1,)


# --------------------------------------------------------------------------------- parameters


def test_extended_protocol_approval_covers_the_bound_parameters(
    proxy: RunningProxy, direct: psycopg.Connection[Any], acct: str
) -> None:
    cfg = proxy.config_path
    sql = f"UPDATE {acct} SET balance = balance + %s WHERE id = %s"
    dsn = proxy.dsn(ALICE[0], groups=ALICE[1])
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as refused:
            conn.execute(sql, ("10", "1"))
        message = refused.value.diag.message_primary or ""
        assert "account updates need a DBA (rule: account-updates-need-dba)" in message
        rid = the_request_id(message)
        req = get_request(cfg, rid)
        assert req["statement"] == f"UPDATE {acct} SET balance = balance + $1 WHERE id = $2"
        assert req["params"] == ["10", "1"]
        assert req["command"] == "UPDATE" and req["tables"] == [acct]
        assert balances(direct, acct) == {1: 100, 2: 200}

        approve(proxy, rid)

        # Same text, other values: not covered.
        for params in (("20", "1"), ("10", "2"), ("10 ", "1")):
            with pytest.raises(errors.InsufficientPrivilege) as other:
                conn.execute(sql, params)
            new = the_request_id(other.value.diag.message_primary or "")
            assert new != rid
            assert get_request(cfg, new)["params"] == list(params)
        assert balances(direct, acct) == {1: 100, 2: 200}
        assert get_request(cfg, rid)["status"] == "approved"

    # The approved values, from a new session: runs, once.
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, ("10", "1"))
        assert cur.rowcount == 1
        assert balances(direct, acct) == {1: 110, 2: 200}
        assert get_request(cfg, rid)["status"] == "used"
        with pytest.raises(errors.InsufficientPrivilege) as once:
            conn.execute(sql, ("10", "1"))
        assert the_request_id(once.value.diag.message_primary or "") != rid
        assert balances(direct, acct) == {1: 110, 2: 200}

    recs = records_until(
        cfg, lambda rs: any(r["type"] == "statement" and r.get("approval_id") == rid for r in rs)
    )
    runs = [r for r in recs if r["type"] == "statement" and r.get("approval_id") == rid]
    assert len(runs) == 1
    assert runs[0]["params"] == ["10", "1"]


def test_extended_protocol_parameters_in_a_single_byte_client_encoding(
    proxy: RunningProxy, direct: psycopg.Connection[Any], acct: str
) -> None:
    """With client_encoding LATIN1, 'ÿ' and 'þ' are different bytes and different values;
    an approval for one must not cover the other."""
    cfg = proxy.config_path
    direct.execute(f"alter table {acct} add column owner text")
    sql = f"UPDATE {acct} SET owner = %s WHERE id = 1"
    with psycopg.connect(
        proxy.dsn(ALICE[0], groups=ALICE[1], client_encoding="LATIN1"), autocommit=True
    ) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as refused:
            conn.execute(sql, ("ÿ",))
        rid = the_request_id(refused.value.diag.message_primary or "")
        approve(proxy, rid)
        with pytest.raises(errors.InsufficientPrivilege) as other:
            conn.execute(sql, ("þ",))
        assert the_request_id(other.value.diag.message_primary or "") != rid
        row = direct.execute(f"select owner from {acct} where id = 1").fetchone()
        assert row == (None,), (
            f"a statement with another parameter ran on approval {rid}: owner={row}"
        )
        assert get_request(cfg, rid)["status"] == "approved"
        conn.execute(sql, ("ÿ",))
        assert direct.execute(f"select owner from {acct} where id = 1").fetchone() == ("ÿ",)


def test_extended_protocol_binary_parameters(
    proxy: RunningProxy, direct: psycopg.Connection[Any], acct: str
) -> None:
    """psycopg sends Python ints in binary; the approval still covers exactly those values."""
    cfg = proxy.config_path
    sql = f"UPDATE {acct} SET balance = balance - %s WHERE id = %s"
    with psycopg.connect(proxy.dsn(ALICE[0], groups=ALICE[1]), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as refused:
            conn.execute(sql, (7, 2))
        rid = the_request_id(refused.value.diag.message_primary or "")
        approved_params = get_request(cfg, rid)["params"]
        assert len(approved_params) == 2
        approve(proxy, rid)
        with pytest.raises(errors.InsufficientPrivilege) as other:
            conn.execute(sql, (8, 2))
        new = the_request_id(other.value.diag.message_primary or "")
        assert new != rid and get_request(cfg, new)["params"] != approved_params
        assert balances(direct, acct) == {1: 100, 2: 200}
        conn.execute(sql, (7, 2))
        assert balances(direct, acct) == {1: 100, 2: 193}
        assert get_request(cfg, rid)["status"] == "used"


def test_a_batch_is_admitted_all_or_none_and_each_statement_names_its_approval(
    proxy: RunningProxy, direct: psycopg.Connection[Any], acct: str
) -> None:
    """Two statements needing approval in one pipeline: each runs under its own approval
    (the audit names it), and when one lacks its approval the other's is not used up."""
    cfg = proxy.config_path
    first, second = (
        f"UPDATE {acct} SET balance = balance + 1 WHERE id = 1",
        f"UPDATE {acct} SET balance = balance + 2 WHERE id = 2",
    )
    dsn = proxy.dsn(ALICE[0], groups=ALICE[1])

    def pipeline(conn: psycopg.Connection[Any]) -> None:
        with conn.pipeline():
            conn.execute(first)
            conn.execute(second)

    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(errors.InsufficientPrivilege):
        pipeline(conn)
    ids = {r["statement"]: r["id"] for r in list_requests(cfg) if r["statement"] in (first, second)}
    assert set(ids) == {first, second}, "both statements' requests are made"
    approve(proxy, ids[first])

    # Only the first is approved: the batch is refused, and the first approval stays.
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(errors.InsufficientPrivilege):
        pipeline(conn)
    assert balances(direct, acct) == {1: 100, 2: 200}
    assert get_request(cfg, ids[first])["status"] == "approved"

    approve(proxy, ids[second])
    with psycopg.connect(dsn, autocommit=True) as conn:
        pipeline(conn)
    assert balances(direct, acct) == {1: 101, 2: 202}
    assert {get_request(cfg, i)["status"] for i in ids.values()} == {"used"}
    recs = records_until(
        cfg,
        lambda rs: sum(1 for r in rs if r.get("decision") == "approved" and r.get("statement") in ids) >= 2,
    )
    approved = {r["statement"]: r["approval_id"] for r in recs if r.get("decision") == "approved" and r.get("statement") in ids}
    assert approved == ids

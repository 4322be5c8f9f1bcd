"""``dbsentry demo --tour``: a scripted scenario through the running proxy, checked step by step.

The tour talks to dbsentry with psycopg exactly as a client would, and checks each outcome
against the embedded PostgreSQL directly (which the tour can reach without the proxy).  It
runs in a worker thread while the proxy serves in the main thread's event loop.
"""

from __future__ import annotations

import queue
import re
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from dbsentry.approvals import Approvals, open_approval_store
from dbsentry.approvals.audit import append_records
from dbsentry.audit import ApprovalRecord, AuditVerification, open_store, verify_all
from dbsentry.audit.index import catch_up_all
from dbsentry.audit.keys import (
    KeyRing,
    Signer,
    load_or_create_signing_key,
)
from dbsentry.audit.report import build_report
from dbsentry.audit.verify import trusted_keys
from dbsentry.config import LoadedConfig
from dbsentry.demo.banner import dbsentry_command, path_arg
from dbsentry.demo.mysql_leg import DATABASE as MYSQL_DATABASE
from dbsentry.demo.mysql_leg import MYSQL_CONNECTION, MySQLServer
from dbsentry.demo.output import Printer
from dbsentry.demo.workspace import PROD_DATABASE, IssuedToken, Upstream, Workspace
from dbsentry.identity import Authenticator

__all__ = ["MYSQL_STEPS", "STEPS", "Tour", "TourFailed"]

MASKED_SELECT = "SELECT full_name, email, ssn, card_number FROM customers LIMIT 3"
AGENT_DROP = "DROP TABLE orders"
ANALYST_ALTER = "ALTER TABLE customers ADD COLUMN loyalty_tier text"
NOTICE_TIMEOUT = 30.0
APPROVED_RUN_TIMEOUT = 60.0
_REQUEST_ID = re.compile(r"approval request (apr_[0-9a-z]+)")

STEPS: tuple[str, ...] = (
    "the agent's SELECT returns masked PII",
    "the agent's DROP TABLE is blocked",
    "the analyst's ALTER TABLE waits for approval and runs after the DBA approves",
    "the audit chain verifies",
    "the compliance report is written",
)
# With the MySQL leg (a MySQL/MariaDB server was reachable): the same guardrails there.
MYSQL_STEPS: tuple[str, ...] = (
    "MySQL: the agent's SELECT returns masked PII",
    "MySQL: the agent's DROP TABLE is blocked",
)
MYSQL_MASKED_SELECT = "SELECT full_name, email, ssn, card_number FROM customers ORDER BY id LIMIT 3"
_NO_VERIFY = {"check_hostname": False, "verify_mode": ssl.CERT_NONE}  # the demo's self-signed certificate


class TourFailed(Exception):
    """A step did not behave; the message says how."""


@dataclass
class Tour:
    """The scenario; ``run()`` prints each step and returns the numbers of the failed ones."""

    workspace: Workspace
    loaded: LoadedConfig
    pg: Upstream
    tokens: dict[str, IssuedToken]
    proxy_host: str
    proxy_port: int
    out: Printer
    cancelled: threading.Event

    # --- connections ---------------------------------------------------------------------

    def proxy_connect(
        self, who: str, dbname: str = "prod", **extra: Any
    ) -> psycopg.Connection[Any]:
        issued = self.tokens[who]
        return psycopg.connect(
            host=self.proxy_host,
            port=self.proxy_port,
            dbname=dbname,
            user=issued.identity.name,
            password=issued.token,
            sslmode="require",
            connect_timeout=10,
            autocommit=True,
            **extra,
        )

    def direct(self, dbname: str = PROD_DATABASE) -> psycopg.Connection[Any]:
        """Straight to PostgreSQL, bypassing dbsentry (to check what really happened)."""
        return self.workspace.upstream_connect(self.pg, dbname)

    # --- the steps -----------------------------------------------------------------------

    def step_masked_select(self) -> list[str]:
        with self.direct() as conn:
            real = conn.execute(MASKED_SELECT).fetchall()
        with self.proxy_connect("agent") as conn:
            seen = conn.execute(MASKED_SELECT).fetchall()
        if len(seen) != len(real) or len(seen) != 3:
            raise TourFailed(f"expected 3 rows, got {len(seen)}")
        for got, want in zip(seen, real, strict=True):
            for value, truth in zip(got, want, strict=True):
                if value == truth:
                    raise TourFailed(f"the agent saw a real value: {value!r}")
                if not isinstance(value, str) or not ("*" in value or value.startswith("<")):
                    raise TourFailed(
                        f"{value!r} does not look masked (the real value is {truth!r})"
                    )
        return [
            f"in PostgreSQL:      {' | '.join(str(v) for v in real[0])}",
            f"the agent receives: {' | '.join(str(v) for v in seen[0])}",
        ]

    def step_blocked_drop(self) -> list[str]:
        with self.proxy_connect("agent") as conn:
            try:
                conn.execute(AGENT_DROP)
            except psycopg.Error as err:
                sqlstate, message = err.sqlstate, err.diag.message_primary or str(err)
            else:
                raise TourFailed("DROP TABLE orders was not refused")
            # The session stays usable after a refusal.
            conn.execute("SELECT 1")
        if sqlstate != "42501":
            raise TourFailed(f"refused with SQLSTATE {sqlstate}, expected 42501: {message}")
        with self.direct() as conn:
            row = conn.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()
            if not row or not row[0]:
                raise TourFailed("the orders table is gone")
            count = conn.execute("SELECT count(*) FROM orders").fetchone()
        return [
            f"ERROR {sqlstate}: {message}",
            f"orders is still there ({count[0] if count else '?':,} rows)",
        ]

    def _column_exists(self) -> bool:
        with self.direct() as conn:
            row = conn.execute(
                "SELECT 1 FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = 'customers' AND column_name = 'loyalty_tier'"
            ).fetchone()
        return row is not None

    def step_approval(self) -> list[str]:
        # Idempotent: a column left by an earlier tour goes first, directly on the database.
        with self.direct() as conn:
            conn.execute("ALTER TABLE customers DROP COLUMN IF EXISTS loyalty_tier")
            conn.commit()
        notices: queue.Queue[str] = queue.Queue()
        outcome: list[BaseException | None] = []

        def analyst() -> None:
            try:
                with self.proxy_connect("analyst", options="-c dbsentry.approval=wait") as conn:
                    conn.add_notice_handler(lambda diag: notices.put(diag.message_primary or ""))
                    conn.execute(ANALYST_ALTER)
                outcome.append(None)
            except BaseException as err:
                outcome.append(err)

        worker = threading.Thread(target=analyst, name="demo-analyst", daemon=True)
        started = time.monotonic()
        worker.start()
        try:
            notice = notices.get(timeout=NOTICE_TIMEOUT)
        except queue.Empty:
            worker.join(timeout=1)
            if outcome and outcome[0] is not None:
                raise TourFailed(
                    f"the ALTER TABLE failed instead of waiting: {outcome[0]}"
                ) from None
            raise TourFailed(
                f"no notice of a pending approval within {NOTICE_TIMEOUT:.0f}s"
            ) from None
        match = _REQUEST_ID.search(notice)
        if match is None:
            raise TourFailed(f"the notice names no approval request: {notice!r}")
        request_id = match.group(1)
        if not worker.is_alive() or self._column_exists():
            raise TourFailed("the ALTER TABLE did not wait for the approval")
        lines = [f"NOTICE: {notice}"]
        cfg = path_arg(self.workspace.config_path)
        lines.append(
            f"the DBA approves {request_id}, as `{dbsentry_command()} approvals approve "
            f"{request_id} -c {cfg} --token <the DBA's token>` does"
        )
        self._approve_as_dba(request_id)
        worker.join(timeout=APPROVED_RUN_TIMEOUT)
        if worker.is_alive():
            raise TourFailed(
                f"the ALTER TABLE did not finish within {APPROVED_RUN_TIMEOUT:.0f}s of the approval"
            )
        if outcome and outcome[0] is not None:
            raise TourFailed(f"the approved ALTER TABLE failed: {outcome[0]}")
        if not self._column_exists():
            raise TourFailed("the ALTER TABLE completed but customers has no loyalty_tier column")
        lines.append(
            f"the ALTER TABLE ran after {time.monotonic() - started:.1f}s; customers.loyalty_tier exists"
        )
        return lines

    def _approve_as_dba(self, request_id: str) -> None:
        """What ``dbsentry approvals approve`` does: review as the identity the DBA's token proves."""
        config = self.loaded.config
        auth = Authenticator(config)
        try:
            reviewer = auth.tokens.verify(self.tokens["dba"].token)
        finally:
            auth.close()
        if reviewer is None:
            raise TourFailed("the DBA's token is not valid")
        store = open_approval_store(config.audit, config.state_dir, config.control_plane)

        def sink(record: ApprovalRecord) -> None:
            append_records(config.audit, config.state_dir, [record])

        try:
            service = Approvals(config.approvals, store, audit=sink)
            result = service.review(
                request_id, reviewer, True, "approved during the dbsentry demo tour"
            )
        finally:
            store.close()
        if result.request.status != "approved":
            raise TourFailed(f"{request_id} is {result.request.status} after the DBA's approval")

    def _public_keys(self) -> KeyRing:
        config = self.loaded.config
        return trusted_keys(config.audit, config.state_dir)

    def _verify(self) -> AuditVerification:
        """What ``audit verify`` checks: every node's log, and the index against them."""
        config = self.loaded.config
        store = open_store(config.audit, config.state_dir, create=False)
        try:
            catch_up_all(store, config.audit.log_path(config.state_dir))
            return verify_all(
                store, config.audit.log_path(config.state_dir), self._public_keys(),
                max_unsigned=2 * config.audit.checkpoint_every,
            )
        finally:
            store.close()

    def step_verify(self) -> list[str]:
        result = self._verify()
        if not result.ok:
            raise TourFailed(f"the audit chain is broken: {result.first_problem}")
        acfg = self.loaded.config.audit
        records = sum(n.chain.records for n in result.nodes)
        checkpoints = sum(n.chain.checkpoints for n in result.nodes)
        valid = sum(n.chain.valid_checkpoints for n in result.nodes)
        signed = (
            f"{valid} of {checkpoints} signed checkpoints valid"
            if checkpoints
            else (
                f"no signed checkpoint yet (one is signed every {acfg.checkpoint_every} records "
                f"or {acfg.checkpoint_seconds:g}s)"
            )
        )
        logs = len(result.nodes)
        return [
            f"{records} records in {logs} log{'s' if logs != 1 else ''}, every chain intact, the index agrees; {signed}",
            f"(what `{dbsentry_command()} audit verify -c {path_arg(self.workspace.config_path)}`"
            " checks)",
        ]

    def step_report(self) -> list[str]:
        config = self.loaded.config
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out_dir = self.workspace.reports_dir / f"tour-{stamp}"
        result = self._verify()
        key_path = config.audit.signing_key_path(config.state_dir)
        signer = Signer(load_or_create_signing_key(key_path)) if key_path.exists() else None
        until = time.time()
        store = open_store(config.audit, config.state_dir, create=False)
        try:
            report = build_report(
                store,
                since=until - 30 * 86_400,
                until=until,
                out_dir=out_dir,
                verification=result,
                signer=signer,
                title="Database access review (dbsentry demo)",
                organisation="Demo Shop Ltd.",
            )
        finally:
            store.close()
        html = report.out_dir / "report.html"
        if not html.is_file():
            raise TourFailed(f"{html} was not written")
        denied = (report.out_dir / "denied.csv").read_text(encoding="utf-8")
        if "DROP" not in denied:
            raise TourFailed("the report does not list the blocked DROP TABLE")
        return [
            f"{report.statements} statements, chain {'intact' if report.verification_ok else 'BROKEN'}",
            f"report: {html}",
        ]

    # --- the MySQL leg ---------------------------------------------------------------------

    @property
    def mysql(self) -> bool:
        """Whether this demo has the MySQL leg (a listener and the ``prod_mysql`` connection)."""
        config = self.loaded.config
        return config.listen.mysql_addr is not None and MYSQL_CONNECTION in config.connections

    def mysql_proxy_connect(self, who: str) -> Any:
        import pymysql

        host, port = self.loaded.config.listen.mysql_addr or ("127.0.0.1", 0)
        issued = self.tokens[who]
        return pymysql.connect(
            host=host,
            port=port,
            user=issued.identity.name,
            password=issued.token,
            database=MYSQL_CONNECTION,
            ssl=_NO_VERIFY,
            connect_timeout=10,
            autocommit=True,
        )

    def mysql_direct(self) -> Any:
        """Straight to MySQL as the proxy's own account (to check what really happened)."""
        conn = self.loaded.config.connections[MYSQL_CONNECTION]
        password = self.workspace.mysql_password_path.read_text().strip()
        return MySQLServer(conn.host, conn.port, conn.user or "", password).connect(MYSQL_DATABASE)

    def step_mysql_masked_select(self) -> list[str]:
        with self.mysql_direct() as conn, conn.cursor() as cur:
            cur.execute(MYSQL_MASKED_SELECT)
            real = cur.fetchall()
        with self.mysql_proxy_connect("agent") as conn, conn.cursor() as cur:
            cur.execute(MYSQL_MASKED_SELECT)
            seen = cur.fetchall()
        if len(seen) != len(real) or len(seen) != 3:
            raise TourFailed(f"expected 3 rows, got {len(seen)}")
        for got, want in zip(seen, real, strict=True):
            for value, truth in zip(got, want, strict=True):
                if value == truth:
                    raise TourFailed(f"the agent saw a real value through MySQL: {value!r}")
        return [
            f"in MySQL:           {' | '.join(str(v) for v in real[0])}",
            f"the agent receives: {' | '.join(str(v) for v in seen[0])}",
        ]

    def step_mysql_blocked_drop(self) -> list[str]:
        import pymysql

        with self.mysql_proxy_connect("agent") as conn, conn.cursor() as cur:
            try:
                cur.execute(AGENT_DROP)
            except pymysql.MySQLError as err:
                code, message = err.args[0], str(err.args[1]) if len(err.args) > 1 else str(err)
            else:
                raise TourFailed("DROP TABLE orders was not refused through MySQL")
            cur.execute("SELECT 1")  # the session stays usable after a refusal
        if not message.startswith("dbsentry:"):
            raise TourFailed(f"refused with error {code} but not by dbsentry: {message}")
        with self.mysql_direct() as conn, conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM orders")
            row = cur.fetchone()
        return [f"ERROR {code}: {message}", f"orders is still there ({row[0] if row else '?':,} rows)"]

    # --- running -------------------------------------------------------------------------

    def titles(self) -> tuple[str, ...]:
        return STEPS + (MYSQL_STEPS if self.mysql else ())

    def run(self) -> list[int]:
        steps: list[Callable[[], list[str]]] = [
            self.step_masked_select,
            self.step_blocked_drop,
            self.step_approval,
            self.step_verify,
            self.step_report,
        ]
        if self.mysql:
            steps += [self.step_mysql_masked_select, self.step_mysql_blocked_drop]
        failed: list[int] = []
        total = len(steps)
        for number, (title, step) in enumerate(zip(self.titles(), steps, strict=True), start=1):
            if self.cancelled.is_set():
                break
            label = f"{number}/{total} {title}"
            started = time.monotonic()
            try:
                details = step()
            except (TourFailed, psycopg.Error, OSError) as err:
                self.out.fail(f"{label}: {err}")
                failed.append(number)
                continue
            except Exception as err:  # a bug or an unexpected outcome: name the step, go on
                self.out.fail(f"{label}: {type(err).__name__}: {err}")
                failed.append(number)
                continue
            self.out.ok(f"{label} {self.out.dim(f'({time.monotonic() - started:.1f}s)')}")
            for detail in details:
                self.out.line(f"    {detail}")
        return failed

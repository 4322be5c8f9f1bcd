"""``workers: 2`` end to end: real clients (psycopg, pgbench) against a supervisor and two
worker processes sharing one listener.

One proxy serves the whole module (starting one costs seconds); the test that stops it
with SIGTERM comes last.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from support.pg import PgServer, free_port
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config

PROBE = "workers_probe"
POLICY_OPEN = "version: 1\nrules: []\n"
POLICY_DENY = (
    "version: 1\nrules:\n  - name: no-probe\n"
    f"    match: {{tables: [public.{PROBE}]}}\n    action: deny\n    message: probe closed\n"
)


@pytest.fixture(scope="module")
def workers(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningProxy, str]]:
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute(f"create table if not exists public.{PROBE} (id int)")
    directory = tmp_path_factory.mktemp("workers")
    policy = directory / "policy.yaml"
    policy.write_text(POLICY_OPEN + "#" * (len(POLICY_DENY) - len(POLICY_OPEN) - 1) + "\n")
    path = write_config(directory, pg_server)
    data = yaml.safe_load(path.read_text())
    http = f"127.0.0.1:{free_port()}"
    data["listen"]["http"] = http
    data["workers"] = 2
    data["policy"] = str(policy)
    data["limits"] = {"drain_seconds": 5}
    data["identity"] = {"max_failures": 3}
    path.write_text(yaml.safe_dump(data))
    with run_proxy(path) as running:
        _wait_for(lambda: _log_count(running, "dbsentry ready") >= 2, "both workers ready")
        _wait_for(lambda: _http_ok(http), "the HTTP listener")
        yield running, f"http://{http}"


def _wait_for(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _http_ok(addr: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{addr}/healthz", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _log_count(proxy: RunningProxy, text: str) -> int:
    return proxy.log_text().count(text)


def _worker_pids(proxy: RunningProxy) -> dict[int, int]:
    """The latest pid of each worker, from the supervisor's log."""
    pids = {}
    for m in re.finditer(r"worker started worker=(\d+) pid=(\d+)", proxy.log_text()):
        pids[int(m.group(1))] = int(m.group(2))
    return pids


def _api(base: str, path: str, token: str) -> Any:
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _metric(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " "))


def _live_by_app(base: str, proxy: RunningProxy) -> dict[str, int]:
    auditor = proxy.token("auditor@example.com", ("security",))
    rows = _api(base, "/api/v1/sessions", auditor)["live"]
    return {r["application_name"]: r["worker"] for r in rows if r.get("application_name")}


def _connect(proxy: RunningProxy, app: str, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(proxy.dsn(application_name=app, **kw), autocommit=True)


def test_sessions_spread_over_both_workers_and_metrics_sum_them(workers: tuple[RunningProxy, str]) -> None:
    proxy, base = workers
    before = _metric(base, "dbsentry_sessions_total")
    conns = [_connect(proxy, f"spread-{i}") for i in range(12)]
    try:
        for c in conns:
            assert c.execute("select 1").fetchone() == (1,)
        live = _live_by_app(base, proxy)
        mine = {app: w for app, w in live.items() if app.startswith("spread-")}
        assert len(mine) == 12, live  # every worker's sessions, from the one HTTP listener
        assert set(mine.values()) == {0, 1}, mine  # the kernel spread them (2**-11 to fail)
        assert _metric(base, "dbsentry_sessions_total") - before == 12
        assert _metric(base, "dbsentry_sessions_active") >= 12
    finally:
        for c in conns:
            c.close()


def test_pgbench_through_two_workers(workers: tuple[RunningProxy, str], pg_server: PgServer) -> None:
    proxy, base = workers
    env = {**os.environ, "PGPASSWORD": pg_server.password or ""}
    init = subprocess.run(
        ["pgbench", "-i", "-q", "-s", "1", "-h", pg_server.host, "-p", str(pg_server.port), "-U", pg_server.user, pg_server.dbname],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    before = _metric(base, "dbsentry_statements_total")
    identity = "bench@example.com"
    done = subprocess.run(
        ["pgbench", "-n", "-S", "-M", "prepared", "-c", "4", "-j", "2", "-T", "2", "-h", proxy.host, "-p", str(proxy.port), "-U", identity, "prod"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PGPASSWORD": proxy.token(identity, ("eng",)), "PGSSLMODE": "require"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "number of failed transactions: 0" in done.stdout, done.stdout
    processed = int(re.search(r"actually processed: (\d+)", done.stdout).group(1))  # type: ignore[union-attr]
    assert processed > 100
    # summed over both workers (each adds its counts to its metric file every half second)
    _wait_for(lambda: _metric(base, "dbsentry_statements_total") - before >= processed, "both workers' counts", timeout=5)


def test_cancel_lands_on_any_worker_and_cancels_within_a_second(workers: tuple[RunningProxy, str]) -> None:
    proxy, _ = workers
    forwarded_before = _log_count(proxy, "cancel request forwarded")
    with _connect(proxy, "cancel") as conn:
        for attempt in range(30):
            timer = threading.Timer(0.3, conn.cancel)  # a new connection each time: any worker
            start = time.monotonic()
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(30)")
            assert time.monotonic() - start < 1.3, attempt
            forwarded = _log_count(proxy, "cancel request forwarded") - forwarded_before
            if attempt >= 3 and 0 < forwarded < attempt + 1:
                break  # some went through the other worker, some not: both paths work
        else:
            raise AssertionError("every cancel landed on the same worker")
        assert conn.execute("select 2").fetchone() == (2,)


def test_a_cancel_through_the_other_worker_is_delivered_before_it_returns(workers: tuple[RunningProxy, str]) -> None:
    """A cancel sent while nothing runs cancels nothing, whichever worker it lands on: the
    client's cancel connection is closed only once the upstream has the request."""
    proxy, _ = workers
    forwarded_before = _log_count(proxy, "cancel request forwarded")
    with _connect(proxy, "idle-cancel") as conn:
        for attempt in range(40):
            conn.cancel_safe(timeout=10)
            assert conn.execute("select pg_sleep(0.2), 'ran'").fetchone() == ("", "ran"), attempt
            if attempt >= 3 and _log_count(proxy, "cancel request forwarded") > forwarded_before:
                break  # one went through the other worker
        else:
            raise AssertionError("every cancel landed on the same worker")


def test_a_forged_cancel_between_workers_is_ignored_and_logged(workers: tuple[RunningProxy, str]) -> None:
    proxy, _ = workers
    with _connect(proxy, "forged") as conn:
        holder = threading.Thread(target=lambda: _sleep_quietly(conn, 2))
        holder.start()
        time.sleep(0.3)
        sock_path = proxy.state_dir / "run" / "w0.sock"
        assert sock_path.stat().st_mode & 0o777 == 0o600
        body = json.dumps({"op": "cancel", "pid": 64, "secret": "00000000", "ts": time.time()}).encode()
        for index in (0, 1):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(proxy.state_dir / "run" / f"w{index}.sock"))
                s.sendall((32 + len(body)).to_bytes(4, "big") + b"\x00" * 32 + body)
                s.recv(1)
        start = time.monotonic()
        holder.join()
        assert time.monotonic() - start > 1.0  # the statement ran on, uncancelled
    _wait_for(lambda: _log_count(proxy, "forged or stale message between workers ignored") >= 2, "the forged cancels logged")


def _sleep_quietly(conn: psycopg.Connection[Any], seconds: float) -> None:
    conn.execute(f"select pg_sleep({seconds})")


def test_revocation_holds_on_every_worker(workers: tuple[RunningProxy, str]) -> None:
    proxy, _ = workers
    token = proxy.token("revoked@example.com", ("eng",), ttl="2h")
    for _ in range(4):
        with psycopg.connect(proxy.dsn("revoked@example.com", token=token)) as c:
            c.execute("select 1")
    token_id = token.split("_")[1]
    dbsentry_cli("token", "revoke", token_id, config=proxy.config_path)
    for attempt in range(8):  # new connections, spread over both workers
        refused = "password authentication failed" if attempt < 3 else "too many failed logins"
        with pytest.raises(psycopg.OperationalError, match=refused):
            psycopg.connect(proxy.dsn("revoked@example.com", token=token))


def test_failed_login_limit_is_not_multiplied_by_the_workers(workers: tuple[RunningProxy, str]) -> None:
    proxy, _ = workers
    bad = "dbs_0123456789ab_" + "A" * 43
    for _ in range(3):  # identity.max_failures: 3, wherever each attempt lands
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(proxy.dsn("mallory@example.com", token=bad))
    for _ in range(6):
        with pytest.raises(psycopg.OperationalError, match="too many failed logins"):
            psycopg.connect(proxy.dsn("mallory@example.com", token=bad))


def test_ddl_seen_by_one_worker_refreshes_the_catalog_of_both(workers: tuple[RunningProxy, str]) -> None:
    proxy, _ = workers
    conns = [_connect(proxy, f"ddl-{i}", dbname="staging") for i in range(6)]
    try:
        for c in conns:
            c.execute("select 1")  # both workers have read staging's catalog
        before = {k: _catalog_loads(proxy, k) for k in (0, 1)}
        conns[0].execute("create table if not exists public.workers_ddl_probe (id int)")
        conns[0].execute("drop table public.workers_ddl_probe")
        _wait_for(lambda: all(_catalog_loads(proxy, k) > before[k] for k in (0, 1)), "both workers' catalogs", timeout=5)
    finally:
        for c in conns:
            c.close()


def test_a_class_inherited_through_one_worker_is_known_to_both(workers: tuple[RunningProxy, str], pg_server: PgServer) -> None:
    proxy, base = workers
    with psycopg.connect(pg_server.dsn(), autocommit=True) as direct:
        direct.execute("drop table if exists public.workers_people, public.workers_labels")
    reader = proxy.token("rita@example.com", ("eng", "pii-readers"))
    masked = proxy.token("eve@example.com", ("eng",))
    copier = psycopg.connect(proxy.dsn("rita@example.com", token=reader, dbname="staging", application_name="inherit-copier"), autocommit=True)
    conns: dict[str, psycopg.Connection[Any]] = {}
    try:
        copier.execute("select 1")
        # the kernel spreads connections over the workers at random (SO_REUSEPORT): open
        # them until both workers hold some
        for i in range(40):
            app = f"inherit-{i}"
            conns[app] = psycopg.connect(proxy.dsn("eve@example.com", token=masked, dbname="staging", application_name=app), autocommit=True)
            conns[app].execute("select 1")
            if i >= 7 and {w for a, w in _live_by_app(base, proxy).items() if a in conns} == {0, 1}:
                break
        where = _live_by_app(base, proxy)
        others = [app for app in conns if where[app] != where["inherit-copier"]]
        assert others, where
        assert {where[app] for app in conns} == {0, 1}, where
        copier.execute("create table public.workers_people (id int, full_name text)")  # DDL: both read it
        copier.execute("insert into public.workers_people values (1, 'Ada Lovelace')")

        def masked(sql: str, apps: list[str]) -> bool:
            return all(conns[app].execute(sql).fetchone() != ("Ada Lovelace",) for app in apps)

        # both workers' catalogs know the names (a catalog read samples every table: seconds)
        _wait_for(lambda: masked("select full_name from public.workers_people", list(conns)), "both catalogs", timeout=20)
        # someone who may see names copies them under another column name
        copier.execute("create table public.workers_labels as select id, full_name as label from public.workers_people")
        start = time.monotonic()
        _wait_for(lambda: masked("select label from public.workers_labels", others), "the other worker", timeout=10)
        assert time.monotonic() - start < 2.0  # the message, not a catalog read's value sample
    finally:
        copier.close()
        for c in conns.values():
            c.close()


def _catalog_loads(proxy: RunningProxy, worker: int) -> int:
    return len(re.findall(rf"catalog loaded connection=staging .*worker={worker}\b", proxy.log_text()))


def test_sighup_reloads_the_policy_in_every_worker(workers: tuple[RunningProxy, str]) -> None:
    proxy, _ = workers
    with _connect(proxy, "hup", dbname="staging") as c:
        c.execute(f"select * from public.{PROBE}")
    policy = Path(yaml.safe_load(proxy.config_path.read_text())["policy"])
    stat = policy.stat()
    policy.write_text(POLICY_DENY)  # same size, same mtime: only the signal can tell
    os.utime(policy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    reloads = _log_count(proxy, "policy reloaded")
    os.kill(proxy.process.pid, signal.SIGHUP)
    _wait_for(lambda: _log_count(proxy, "policy reloaded") >= reloads + 2, "both workers reloaded", timeout=3)
    for i in range(8):
        with _connect(proxy, f"hup-{i}", dbname="staging") as c, pytest.raises(psycopg.errors.InsufficientPrivilege, match="probe closed"):
            c.execute(f"select * from public.{PROBE}")


def test_a_killed_worker_is_restarted_and_the_other_goes_on(workers: tuple[RunningProxy, str]) -> None:
    proxy, base = workers
    conns = {f"kill-{i}": _connect(proxy, f"kill-{i}") for i in range(10)}
    try:
        for c in conns.values():
            c.execute("select 1")
        where = _live_by_app(base, proxy)
        survivors = [app for app in conns if where.get(app) == 0]
        victims = [app for app in conns if where.get(app) == 1]
        assert survivors and victims, where
        pids = _worker_pids(proxy)
        os.kill(pids[1], signal.SIGKILL)
        for app in victims:
            with pytest.raises(psycopg.OperationalError):
                conns[app].execute("select 1")
        for app in survivors:  # worker 0's sessions did not notice
            assert conns[app].execute("select 3").fetchone() == (3,)
        _wait_for(lambda: _worker_pids(proxy)[1] != pids[1], "worker 1 restarted")
        assert "worker died; starting it again" in proxy.log_text()
        _wait_for(lambda: _log_count(proxy, "dbsentry ready") >= 3, "the new worker 1 ready")
        assert _worker_pids(proxy)[0] == pids[0]
        fresh = [_connect(proxy, f"after-{i}") for i in range(8)]
        for c in fresh:
            c.execute("select 1")
        assert {w for app, w in _live_by_app(base, proxy).items() if app.startswith("after-")} == {0, 1}
        for c in fresh:
            c.close()
    finally:
        for c in conns.values():
            c.close()


def test_audit_verify_covers_every_workers_chain(workers: tuple[RunningProxy, str]) -> None:
    proxy, _ = workers
    done = dbsentry_cli("audit", "verify", config=proxy.config_path, check=False)
    nodes = set(re.findall(r"node (\S+-w\d) chain: (\w+)", done.stdout))
    assert {n for n, _ in nodes if n.endswith("-w0")} and {n for n, _ in nodes if n.endswith("-w1")}, done.stdout
    # worker 1 was killed by the test before: its chain stays intact (the new one continues it)
    assert all(state == "INTACT" for _, state in nodes), done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    # search reads every worker's records: the spread sessions were on both
    found = dbsentry_cli("audit", "search", "--json", "--limit", "0", "--identity", "alice@example.com", config=proxy.config_path)
    apps = {json.loads(line)["application_name"] for line in found.stdout.splitlines()}
    assert {f"spread-{i}" for i in range(12)} <= apps, sorted(a for a in apps if a)


def test_a_node_whose_worker_cannot_start_does_not_start(pg_server: PgServer, tmp_path: Path) -> None:
    taken = socket.create_server(("127.0.0.1", 0))  # the HTTP port, taken: worker 0 cannot serve
    path = write_config(tmp_path, pg_server)
    data = yaml.safe_load(path.read_text())
    data["listen"]["http"] = f"127.0.0.1:{taken.getsockname()[1]}"
    data["workers"] = 2
    path.write_text(yaml.safe_dump(data))
    with taken:
        done = dbsentry_cli("serve", config=path, check=False)
    assert done.returncode == 2, done.stderr
    assert "a worker cannot start; stopping" in done.stderr
    assert "worker died; starting it again" not in done.stderr
    (tmp_path / "policy.yaml").write_text("version: 1\nrules: [\n")  # and a broken policy: no worker at all
    data["policy"] = str(tmp_path / "policy.yaml")
    path.write_text(yaml.safe_dump(data))
    done = dbsentry_cli("serve", config=path, check=False)
    assert done.returncode == 2 and "cannot start the workers" in done.stderr, done.stderr
    assert "worker started" not in done.stderr
    # a proxy (or anything) already listening on the port: not shared through SO_REUSEPORT
    (tmp_path / "policy.yaml").write_text("version: 1\nrules: []\n")
    host, _, port = data["listen"]["postgres"].rpartition(":")
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind((host, int(port)))
    other.listen()
    with other:
        done = dbsentry_cli("serve", config=path, check=False)
    assert done.returncode == 2 and f"cannot listen on {host}:{port}" in done.stderr, done.stderr


def test_workers_do_not_outlive_a_killed_supervisor(pg_server: PgServer, tmp_path: Path) -> None:
    path = write_config(tmp_path, pg_server)
    data = yaml.safe_load(path.read_text())
    data["workers"] = 2
    data["limits"] = {"drain_seconds": 6}
    path.write_text(yaml.safe_dump(data))
    with run_proxy(path) as proxy:
        _wait_for(lambda: _log_count(proxy, "dbsentry ready") >= 2, "both workers ready")
        pids = _worker_pids(proxy)
        held = [_connect(proxy, f"held-{i}") for i in range(6)]  # the workers drain them
        for c in held:
            c.execute("select 1")
        proxy.process.kill()
        proxy.process.wait(5)
        # started again at once (as systemd would): its workers wait for the old ones'
        # audit chains instead of writing them at the same time
        path.with_suffix(".log").rename(tmp_path / "first.log")
        with run_proxy(path) as again:
            _wait_for(lambda: _log_count(again, "dbsentry ready") >= 2, "the new workers ready", timeout=20)
            assert "another process still writes this audit chain" in again.log_text()
            with _connect(again, "after") as c:
                c.execute("select 1")
        for c in held:
            c.close()
        verify = dbsentry_cli("audit", "verify", config=path, check=False)
        assert verify.returncode == 0, verify.stdout

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")

        _wait_for(lambda: all(gone(p) for p in pids.values()), "the workers gone", timeout=10)


def test_sigterm_drains_the_sessions_then_stops(workers: tuple[RunningProxy, str]) -> None:
    """Last: it stops the module's proxy."""
    proxy, _ = workers
    conn = _connect(proxy, "drain")
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: conn.execute("select pg_sleep(1.5), 42").fetchone())
        time.sleep(0.4)
        stopped_at = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        assert running.result(timeout=10) == ("", 42)  # the running statement finished
        conn.close()  # the session ends: its worker may exit now
    proxy.process.wait(15)
    assert time.monotonic() - stopped_at < 5 + 2  # drain_seconds: 5, not waited out
    assert proxy.process.returncode == 0
    with pytest.raises(OSError):
        socket.create_connection((proxy.host, proxy.port), timeout=1).close()
    assert "all workers stopped" in proxy.log_text()

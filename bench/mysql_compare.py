"""sysbench's OLTP workloads against MariaDB/MySQL directly and through dbsentry, side by side.

Targets (all reach the same database on the same server):

* ``direct``       sysbench -> MariaDB/MySQL
* ``passthrough``  sysbench -> dbsentry's MySQL listener with ``passthrough: true``
                   (identity only: no policy, audit or masking) -> the server
* ``governed``     sysbench -> dbsentry with its defaults (production baseline, audit with
                   ``durability: effect``, masking) -> the server

sysbench prepares its tables once, directly on the server (the DDL is not what is measured).
Through dbsentry it logs in as a dbsentry identity with a token as its password, over TLS
(``--mysql-ssl=on``; dbsentry takes tokens only over TLS or RSA), and picks the connection by
its name as the database, as any MySQL client does.  Each run reports sysbench's
transactions and queries per second, its 95th percentile latency, its errors, and the
proxy's CPU time (with its children: the audit helper) per query.

    python bench/mysql_compare.py [--workloads oltp_read_only,oltp_read_write]
        [--threads 1,8] [--time 10] [--rounds 1] [--json out.json]

The server: ``--mysql-host/--mysql-port/--mysql-user/--mysql-password`` (default
127.0.0.1:3306, root, no password); the database ``--database`` (default dbsentry_bench) is
created when missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    DEFAULT_RESULTS_DIR,
    BenchError,
    cpu_seconds,
    find_binary,
    free_port,
    git_revision,
    machine_facts,
    process_tree,
    run,
    run_main,
    say,
)
from targets import IDENTITY, Service, merge, write_self_signed

CONNECTION_NAME = "bench"
TARGETS = ("direct", "passthrough", "governed")
TARGET_CONFIG: dict[str, dict[str, Any]] = {
    "passthrough": {"passthrough": True},
    "governed": {},
}


@dataclass
class Server:
    host: str
    port: int
    user: str
    password: str
    database: str


@dataclass
class Endpoint:
    name: str
    host: str
    port: int
    user: str
    password: str
    database: str
    tls: bool
    service: Service | None = None
    # sysbench's --mysql-ssl=on reads cacert.pem, client-cert.pem and client-key.pem from
    # its working directory (names built in): this directory holds them
    tls_dir: Path | None = None


@dataclass
class Result:
    target: str
    workload: str
    threads: int
    tps: float
    qps: float
    p95_ms: float
    errors: int
    reconnects: int
    cpu_us_per_query: float | None
    round: int


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--workloads", default="oltp_read_only,oltp_read_write")
    p.add_argument("--threads", default="1,8")
    p.add_argument("--time", type=int, default=10, help="seconds per run")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--tables", type=int, default=4)
    p.add_argument("--table-size", type=int, default=10_000)
    p.add_argument("--mysql-host", default="127.0.0.1")
    p.add_argument("--mysql-port", type=int, default=3306)
    p.add_argument("--mysql-user", default="root")
    p.add_argument("--mysql-password", default="")
    p.add_argument("--database", default="dbsentry_bench")
    p.add_argument("--dbsentry-config", default="{}", help="JSON merged into the dbsentry configs")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    bad = [t for t in args.targets if t not in TARGETS]
    if bad:
        p.error(f"unknown targets {bad}; known: {', '.join(TARGETS)}")
    args.workloads = [w for w in args.workloads.split(",") if w]
    args.threads = [int(t) for t in args.threads.split(",") if t]
    args.dbsentry_config = json.loads(args.dbsentry_config)
    return args


def server_sql(server: Server, sql: str, database: str | None = None) -> str:
    client = find_binary("mariadb") or find_binary("mysql")
    if client is None:
        raise BenchError("no mariadb/mysql client on PATH (Debian: apt-get install mariadb-client)")
    cmd = [client, "-h", server.host, "-P", str(server.port), "-u", server.user, "-N", "-B", "-e", sql]
    if database:
        cmd.insert(1, f"--database={database}")
    env = {"MYSQL_PWD": server.password} if server.password else None
    return run(cmd, timeout=60, env=env).stdout


def sysbench_base(ep: Endpoint, args: argparse.Namespace, workload: str) -> list[str]:
    sysbench = find_binary("sysbench")
    if sysbench is None:
        raise BenchError("sysbench is missing (Debian: apt-get install sysbench)")
    return [
        sysbench,
        workload,
        "--db-driver=mysql",
        f"--mysql-host={ep.host}",
        f"--mysql-port={ep.port}",
        f"--mysql-user={ep.user}",
        f"--mysql-password={ep.password}",
        f"--mysql-db={ep.database}",
        f"--mysql-ssl={'on' if ep.tls else 'off'}",
        f"--tables={args.tables}",
        f"--table-size={args.table_size}",
    ]


def prepare_tables(server: Server, args: argparse.Namespace) -> None:
    server_sql(server, f"CREATE DATABASE IF NOT EXISTS `{args.database}`")
    direct = Endpoint("direct", server.host, server.port, server.user, server.password, args.database, False)
    try:
        counts = server_sql(
            server,
            " UNION ALL ".join(f"SELECT COUNT(*) FROM sbtest{i}" for i in range(1, args.tables + 1)),
            args.database,
        ).split()
        if len(counts) == args.tables and all(int(c) == args.table_size for c in counts):
            return
    except BenchError:
        pass
    say(f"preparing {args.tables} sysbench tables of {args.table_size:,} rows in {args.database}")
    run([*sysbench_base(direct, args, "oltp_read_only"), "cleanup"], timeout=300, check=False)
    run([*sysbench_base(direct, args, "oltp_read_only"), "prepare"], timeout=900)


def start_dbsentry(
    server: Server, args: argparse.Namespace, workdir: Path, name: str, stack: contextlib.ExitStack
) -> Endpoint:
    import yaml

    directory = workdir / name
    directory.mkdir(parents=True)
    cert, key = write_self_signed(directory)
    port, pg_port = free_port(), free_port()
    connection: dict[str, Any] = {
        "engine": "mysql",
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "database": args.database,
        "environment": "production",
    }
    if server.password:
        connection["password"] = server.password
    config: dict[str, Any] = {
        "state_dir": str(directory / "state"),
        "listen": {"postgres": f"127.0.0.1:{pg_port}", "mysql": f"127.0.0.1:{port}", "http": None},
        "tls": {"cert": str(cert), "key": str(key)},
        "connections": {CONNECTION_NAME: connection},
    }
    config = merge(merge(config, TARGET_CONFIG[name]), args.dbsentry_config)
    path = directory / "dbsentry.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    cli = [sys.executable, "-m", "dbsentry"]
    create = ["token", "create", "-c", str(path), "--identity", IDENTITY, "--group", "bench", "--ttl", "24h"]
    token = run([*cli, *create], timeout=60).stdout.strip()
    if not token:
        raise BenchError("dbsentry token create printed no token")
    log = directory / "dbsentry.log"
    service = Service(name, [*cli, "serve", "-c", str(path), "--log-level", "warning"], port, log=log, stdout_log=log)
    stack.callback(service.stop)
    service.start()
    tls_dir = directory / "sysbench-tls"
    tls_dir.mkdir()
    (tls_dir / "cacert.pem").write_bytes(cert.read_bytes())  # the proxy's own certificate
    client_cert, client_key = write_self_signed(tls_dir)  # offered to nobody: the proxy asks for none
    client_cert.rename(tls_dir / "client-cert.pem")
    client_key.rename(tls_dir / "client-key.pem")
    return Endpoint(name, "127.0.0.1", port, IDENTITY, token, CONNECTION_NAME, True, service, tls_dir)


_TPS = re.compile(r"transactions:\s+(\d+)\s+\(([\d.]+) per sec")
_QPS = re.compile(r"queries:\s+(\d+)\s+\(([\d.]+) per sec")
_P95 = re.compile(r"95th percentile:\s+([\d.]+)")
_ERR = re.compile(r"ignored errors:\s+(\d+)")
_RECONNECTS = re.compile(r"reconnects:\s+(\d+)")


def one_run(ep: Endpoint, args: argparse.Namespace, workload: str, threads: int, rnd: int) -> Result:
    cmd = [*sysbench_base(ep, args, workload), f"--threads={threads}", f"--time={args.time}", "--report-interval=0", "run"]
    pids = process_tree(ep.service.pid) if ep.service is not None and ep.service.pid else []
    before = sum(cpu_seconds(p) or 0.0 for p in pids)
    proc = run(cmd, timeout=args.time + 120, check=False, cwd=ep.tls_dir)
    after = sum(cpu_seconds(p) or 0.0 for p in pids)
    out = proc.stdout
    tps, qps = _TPS.search(out), _QPS.search(out)
    if proc.returncode != 0 or tps is None or qps is None:
        raise BenchError(f"sysbench {workload} against {ep.name} failed ({proc.returncode}):\n{(proc.stderr or out)[-2000:]}")
    p95, err, rec = _P95.search(out), _ERR.search(out), _RECONNECTS.search(out)
    queries = int(qps.group(1))
    return Result(
        ep.name,
        workload,
        threads,
        float(tps.group(2)),
        float(qps.group(2)),
        float(p95.group(1)) if p95 else float("nan"),
        int(err.group(1)) if err else 0,
        int(rec.group(1)) if rec else 0,
        (after - before) / queries * 1e6 if pids and queries else None,
        rnd,
    )


def median(values: list[float]) -> float:
    s = sorted(values)
    return s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2


def report(results: list[Result], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    print(f"{'workload':<16} {'thr':>3} {'target':<12} {'tps':>9} {'qps':>10} {'p95 ms':>8} {'errors':>6} {'cpu us/q':>9} {'vs direct':>9}")
    for workload in args.workloads:
        for threads in args.threads:
            base: float | None = None
            for target in args.targets:
                mine = [r for r in results if r.workload == workload and r.threads == threads and r.target == target]
                if not mine:
                    continue
                tps = median([r.tps for r in mine])
                qps = median([r.qps for r in mine])
                p95 = median([r.p95_ms for r in mine])
                cpu = [r.cpu_us_per_query for r in mine if r.cpu_us_per_query is not None]
                errors = sum(r.errors for r in mine)
                if target == "direct":
                    base = tps
                ratio = tps / base if base else None
                rows.append(
                    {
                        "workload": workload,
                        "threads": threads,
                        "target": target,
                        "tps": tps,
                        "qps": qps,
                        "p95_ms": p95,
                        "errors": errors,
                        "cpu_us_per_query": median(cpu) if cpu else None,
                        "vs_direct": ratio,
                    }
                )
                print(
                    f"{workload:<16} {threads:>3} {target:<12} {tps:>9,.0f} {qps:>10,.0f} {p95:>8.2f} {errors:>6} "
                    f"{(f'{median(cpu):.1f}' if cpu else '-'):>9} {(f'{ratio:.2f}x' if ratio else '-'):>9}"
                )
    return rows


def bench(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    import tempfile

    server = Server(args.mysql_host, args.mysql_port, args.mysql_user, args.mysql_password, args.database)
    try:
        version = server_sql(server, "SELECT VERSION()").strip()
    except BenchError as exc:
        raise BenchError(f"no MySQL/MariaDB server at {server.host}:{server.port}: {exc}") from None
    prepare_tables(server, args)
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dbsentry-mysql-bench-")))
    endpoints: list[Endpoint] = []
    for target in args.targets:
        if target == "direct":
            endpoints.append(Endpoint("direct", server.host, server.port, server.user, server.password, args.database, False))
        else:
            endpoints.append(start_dbsentry(server, args, workdir, target, stack))
    results: list[Result] = []
    for rnd in range(1, args.rounds + 1):
        for workload in args.workloads:
            for threads in args.threads:
                for ep in endpoints:
                    say(f"round {rnd}: {workload} --threads={threads} against {ep.name}")
                    results.append(one_run(ep, args, workload, threads, rnd))
    rows = report(results, args)
    out = args.json or DEFAULT_RESULTS_DIR / f"mysql-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "server": version,
                "revision": git_revision(),
                "machine": machine_facts(),
                "settings": {k: v for k, v in vars(args).items() if k not in ("json", "mysql_password")},
                "summary": rows,
                "runs": [asdict(r) for r in results],
            },
            indent=2,
            default=str,
        )
    )
    say(f"results written to {os.path.relpath(out)}")
    return 1 if any(r.errors for r in results) else 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(parse_args(argv), bench)


if __name__ == "__main__":
    raise SystemExit(main())

"""What the benchmarks measure against: a direct connection, PgBouncer and dbsentry
processes (started, watched and stopped here), all reaching the same PostgreSQL database.

Target kinds:

* ``direct``       client -> PostgreSQL
* ``pgbouncer``    client -> PgBouncer (session pooling) -> PostgreSQL
* ``passthrough``  client -> dbsentry with ``passthrough: true`` (governance off: no policy,
                   no audit, no masking) -> PostgreSQL
* ``governed``     client -> dbsentry with its default settings (baseline policy, audit
                   with ``durability: sync``, masking on) -> PostgreSQL

With TLS each kind also exists as ``<kind>+tls`` (client to proxy in TLS; the proxy to
PostgreSQL leg stays plaintext).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql
from common import BenchError, Upstream, find_binary, free_port, run, say, tail, wait_for_port
from psycopg.conninfo import conninfo_to_dict, make_conninfo

CONNECTION_NAME = "bench"  # the dbsentry connection and the PgBouncer database name
IDLE_CONNECTION_NAME = "bench_idle"  # the same database as the idle-connections role
IDLE_ROLE_PREFIX = "dbsentry_bench_idle_"
IDENTITY = "bench@example.com"  # token group "bench": not exempt from masking
KINDS = ("direct", "pgbouncer", "passthrough", "governed", "governed-write", "governed-sync")
DBSENTRY_KINDS = ("passthrough", "governed", "governed-write", "governed-sync")
# governed: the defaults (audit.durability effect); the others differ in durability only
KIND_CONFIG: dict[str, dict[str, Any]] = {
    "passthrough": {"passthrough": True},
    "governed": {},
    "governed-write": {"audit": {"durability": "write"}},
    "governed-sync": {"audit": {"durability": "sync"}},
}


# --------------------------------------------------------------------------------------
# Child processes: started in their own session, stopped on exit, Ctrl-C or error


@dataclass
class Service:
    """A proxy process: its own session (so it survives our terminal's Ctrl-C until we
    stop it), its output in ``stdout_log``, its errors in ``log``; restartable."""

    name: str
    cmd: list[str]
    port: int
    log: Path
    stdout_log: Path
    user: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    def start(self) -> None:
        with open(self.stdout_log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=self.user,
                group=pwd.getpwnam(self.user).pw_gid if self.user else None,
            )
        try:
            wait_for_port("127.0.0.1", self.port, self.proc, self.log, self.name)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive() and self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_status(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


@dataclass
class Target:
    name: str  # direct | pgbouncer | passthrough | governed (other benchmarks: their own)
    tls: bool
    conninfo: str  # without the password
    password: str | None = None
    service: Service | None = None  # the proxy process, None for direct
    idle_dbname: str | None = None  # database name for the idle-connections workload

    @property
    def label(self) -> str:
        return f"{self.name}{'+tls' if self.tls else ''}"

    @property
    def env(self) -> dict[str, str]:
        return {"PGPASSWORD": self.password} if self.password else {}

    def endpoint(self) -> tuple[str, int, str]:
        """host, port and user name the clients connect with."""
        p = conninfo_to_dict(self.conninfo)
        return str(p["host"]), int(str(p["port"])), str(p["user"])


def check_target(t: Target) -> None:
    """One query through the target, so a wrong setup fails before any measurement."""
    try:
        with psycopg.connect(t.conninfo, password=t.password, connect_timeout=10) as conn:
            conn.execute("SELECT abalance FROM pgbench_accounts WHERE aid = 1").fetchone()
    except psycopg.Error as exc:
        raise BenchError(f"cannot query through {t.label}: {exc}") from exc


# --------------------------------------------------------------------------------------
# TLS material (one self-signed EC P-256 certificate for PgBouncer and dbsentry alike)


def write_self_signed(directory: Path) -> tuple[Path, Path]:
    from dbsentry.server.tls import write_self_signed as generate

    cert_path, key_path = directory / "bench.crt", directory / "bench.key"
    generate(cert_path, key_path, "localhost", days=2)
    cert_path.chmod(0o644)  # PgBouncer may run as another user
    return cert_path, key_path


# --------------------------------------------------------------------------------------
# A role with a connection limit, for the idle-connections workload


@dataclass(frozen=True)
class IdleRole:
    """The PostgreSQL role the proxies log in as for the idle-connections workload.  Its
    CONNECTION LIMIT keeps a proxy that opens one server connection per client from using
    up the slots of a server that other work shares."""

    name: str
    password: str
    limit: int


def create_idle_role(up: Upstream, limit: int) -> IdleRole | None:
    """A role of this run's own (``dbsentry_bench_idle_<pid>``, so that runs side by side
    do not change each other's password), or None with a warning when that is not allowed.
    :func:`drop_idle_role` removes it."""
    name = f"{IDLE_ROLE_PREFIX}{os.getpid()}"
    password = secrets.token_urlsafe(18)
    ident = psycopg.sql.Identifier(name)
    try:
        with psycopg.connect(up.conninfo(connect_timeout=10), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(ident))
            conn.execute(
                psycopg.sql.SQL(
                    "CREATE ROLE {} LOGIN NOSUPERUSER CONNECTION LIMIT {} PASSWORD {}"
                ).format(ident, psycopg.sql.Literal(limit), psycopg.sql.Literal(password))
            )
    except psycopg.Error as exc:
        say(f"warning: cannot create the role {name} ({str(exc).strip()})")
        return None
    return IdleRole(name, password, limit)


def drop_idle_role(up: Upstream, role: IdleRole) -> None:
    try:
        with psycopg.connect(up.conninfo(connect_timeout=10), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP ROLE IF EXISTS {}").format(psycopg.sql.Identifier(role.name)))
    except psycopg.Error as exc:
        say(f"warning: cannot drop the role {role.name} ({str(exc).strip()})")


# --------------------------------------------------------------------------------------
# PgBouncer


def pgbouncer_user() -> str | None:
    """The OS user PgBouncer runs as: it refuses to run as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise BenchError(
        "running as root and neither a 'postgres' nor a 'nobody' user exists for PgBouncer"
    )


def ensure_pgbouncer() -> str | None:
    found = find_binary("pgbouncer")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        say("pgbouncer not found: installing the Debian package (apt-get install pgbouncer)")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "pgbouncer"]
        if run(install, timeout=600, env=env, check=False).returncode != 0:
            run(["apt-get", "update"], timeout=600, env=env, check=False)  # stale package lists
            run(install, timeout=600, env=env, check=False)
        found = find_binary("pgbouncer")
        if found:
            return found
    say(
        "PgBouncer is not installed and cannot be installed from here (needs root and apt-get); "
        "install it (Debian/Ubuntu: apt-get install pgbouncer; macOS: brew install pgbouncer) "
        "to get the PgBouncer rows. Continuing without them."
    )
    return None


def pgbouncer_settings(clients: int, tls: bool, idle_clients: int = 0) -> dict[str, str]:
    """The PgBouncer settings that matter for the comparison (paths added at start)."""
    return {
        "pool_mode": "session",
        "listen_addr": "127.0.0.1",
        "auth_type": "trust",
        "max_client_conn": str(max(100, 2 * clients + 10, idle_clients + 100)),
        "default_pool_size": str(clients + 2),
        "ignore_startup_parameters": "extra_float_digits,options",
        "server_tls_sslmode": "disable",
        "client_tls_sslmode": "require" if tls else "disable",
        "log_connections": "0",
        "log_disconnections": "0",
        "log_pooler_errors": "1",
        "log_stats": "0",
        "stats_period": "60",
        "verbose": "0",
    }


def start_pgbouncer(
    binary: str,
    up: Upstream,
    workdir: Path,
    clients: int,
    tls_files: tuple[Path, Path] | None,
    *,
    idle_role: IdleRole | None = None,
    idle_clients: int = 0,
    register: Callable[[Service], None] | None = None,
) -> tuple[Service, Target, dict[str, str]]:
    tls = tls_files is not None
    user = pgbouncer_user()
    directory = workdir / f"pgbouncer{'-tls' if tls else ''}"
    directory.mkdir()
    port = free_port()
    settings = pgbouncer_settings(clients, tls, idle_clients)
    db_params: dict[str, Any] = {
        "host": up.host,
        "port": up.port,
        "dbname": up.dbname,
        "user": up.user,
        "password": up.password,
    }
    db_line = " ".join(f"{k}={v}" for k, v in db_params.items() if v is not None)
    databases = [f"{CONNECTION_NAME} = {db_line}"]
    if idle_role is not None:
        idle = {**db_params, "user": idle_role.name, "password": idle_role.password}
        idle_line = " ".join(f"{k}={v}" for k, v in idle.items() if v is not None)
        databases.append(f"{IDLE_CONNECTION_NAME} = {idle_line} pool_size={idle_role.limit}")
    auth_file = directory / "userlist.txt"
    auth_file.write_text(f'"{up.user}" ""\n')
    files = {
        "listen_port": str(port),
        "unix_socket_dir": "",
        "auth_file": str(auth_file),
        "admin_users": up.user,  # to release the server connections between runs
        "logfile": str(directory / "pgbouncer.log"),
    }
    if tls_files:
        cert, key = tls_files
        shutil.copy(cert, directory / cert.name)
        shutil.copy(key, directory / key.name)
        (directory / key.name).chmod(0o600)
        files["client_tls_cert_file"] = str(directory / cert.name)
        files["client_tls_key_file"] = str(directory / key.name)
    lines = ["[databases]", *databases, "", "[pgbouncer]"]
    lines += [f"{k} = {v}" for k, v in {**settings, **files}.items()]
    ini = directory / "pgbouncer.ini"
    ini.write_text("\n".join(lines) + "\n")
    ini.chmod(0o600)  # it holds the idle role's password
    if user:
        uid, gid = pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid
        for path in (directory, *directory.iterdir()):
            os.chown(path, uid, gid)
        workdir.chmod(0o755)  # let the unprivileged user reach its directory
    service = Service(
        f"pgbouncer{'+tls' if tls else ''}",
        [binary, str(ini)],
        port,
        log=directory / "pgbouncer.log",
        stdout_log=directory / "stdout.log",
        user=user,
    )
    if register:
        register(service)
    service.start()
    target = Target(
        "pgbouncer",
        tls,
        make_conninfo(
            "",
            host="127.0.0.1",
            port=port,
            dbname=CONNECTION_NAME,
            user=up.user,
            sslmode="require" if tls else "disable",
        ),
        service=service,
        idle_dbname=IDLE_CONNECTION_NAME if idle_role else CONNECTION_NAME,
    )
    used = {**settings, "run_as": user or "(current user)"}
    if idle_role is not None:
        used[f"[databases] {IDLE_CONNECTION_NAME}"] = (
            f"user={idle_role.name} pool_size={idle_role.limit} (idle-connections workload)"
        )
    return service, target, used


def release_pgbouncer_servers(target: Target) -> str | None:
    """Close PgBouncer's pooled server connections (admin console ``KILL`` then ``RESUME``
    of each database), so that other targets find free connection slots on a small server.
    None when done, else why not."""
    host, port, user = target.endpoint()
    try:
        with psycopg.connect(
            host=host,
            port=port,
            user=user,
            dbname="pgbouncer",
            sslmode="require" if target.tls else "disable",
            autocommit=True,
            connect_timeout=5,
            cursor_factory=psycopg.ClientCursor,  # the admin console speaks simple queries only
        ) as conn:
            for db in (CONNECTION_NAME, IDLE_CONNECTION_NAME):
                with contextlib.suppress(psycopg.Error):
                    conn.execute(f"KILL {db}")
                    conn.execute(f"RESUME {db}")
    except psycopg.Error as exc:
        return str(exc).strip()
    return None


# --------------------------------------------------------------------------------------
# dbsentry


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, nested mappings merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def start_dbsentry(
    up: Upstream,
    workdir: Path,
    tls_files: tuple[Path, Path] | None,
    extra: dict[str, Any],
    *,
    name: str = "dbsentry",
    idle_role: IdleRole | None = None,
    register: Callable[[Service], None] | None = None,
) -> tuple[Service, Target, dict[str, Any]]:
    """A dbsentry process in ``workdir/<name>[-tls]`` with the connection ``bench`` (and
    ``bench_idle`` logging in as ``idle_role``), and a token for :data:`IDENTITY`."""
    import yaml

    tls = tls_files is not None
    directory = workdir / f"{name}{'-tls' if tls else ''}"
    directory.mkdir()
    port = free_port()
    connection: dict[str, Any] = {
        "host": up.host,
        "port": up.port,
        "database": up.dbname,
        "user": up.user,
        "environment": "production",
    }
    if up.password:
        connection["password"] = up.password
    connections = {CONNECTION_NAME: connection}
    if idle_role is not None:
        connections[IDLE_CONNECTION_NAME] = {
            **connection,
            "user": idle_role.name,
            "password": idle_role.password,
        }
    tls_section: dict[str, Any] = {"require_client_tls": tls}
    if tls_files:
        tls_section.update(cert=str(tls_files[0]), key=str(tls_files[1]))
    config = {
        "state_dir": str(directory / "state"),
        "listen": {"postgres": f"127.0.0.1:{port}", "http": None},
        "tls": tls_section,
        "connections": connections,
    }
    config = merge(config, extra)
    config_path = directory / "dbsentry.yaml"
    config_path.write_text(yaml.safe_dump(config))
    config_path.chmod(0o600)
    cli = [sys.executable, "-m", "dbsentry"]
    create = ["token", "create", "-c", str(config_path), "--identity", IDENTITY, "--group", "bench"]
    token = run([*cli, *create, "--ttl", "24h"], timeout=60).stdout.strip()
    if not token:
        raise BenchError("dbsentry token create printed no token")
    log = directory / "dbsentry.log"
    service = Service(
        f"{name}{'+tls' if tls else ''}",
        [*cli, "serve", "-c", str(config_path), "--log-level", "warning"],
        port,
        log=log,
        stdout_log=log,
    )
    if register:
        register(service)
    service.start()
    target = Target(
        name,
        tls,
        make_conninfo(
            "",
            host="127.0.0.1",
            port=port,
            dbname=CONNECTION_NAME,
            user=IDENTITY,
            sslmode="require" if tls else "disable",
        ),
        password=token,
        service=service,
        idle_dbname=IDLE_CONNECTION_NAME if idle_role else CONNECTION_NAME,
    )
    return service, target, {"config": describe_config(config), "log_level": "warning"}


def describe_config(config: dict[str, Any]) -> dict[str, Any]:
    """The dbsentry config for the results: no temp paths, no passwords."""
    shown: dict[str, Any] = json.loads(json.dumps(config))
    shown["state_dir"] = "<temp dir>"
    if "cert" in shown.get("tls", {}):
        shown["tls"]["cert"] = shown["tls"]["key"] = "<generated self-signed EC P-256>"
    for conn in shown.get("connections", {}).values():
        if "password" in conn:
            conn["password"] = "***"
    return shown


# --------------------------------------------------------------------------------------
# All targets of one benchmark


@dataclass
class Setup:
    """Everything started for one benchmark: the targets and how they were configured."""

    targets: list[Target] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=lambda: {"pgbouncer": {}, "dbsentry": {}})
    notes: list[str] = field(default_factory=list)
    pgbouncer_bin: str | None = None

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
            say(f"note: {text}")

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


def start_targets(
    up: Upstream,
    *,
    kinds: list[str],
    tls_modes: list[bool],
    server_ssl: bool,
    clients: int,
    idle_role: IdleRole | None,
    idle_clients: int,
    dbsentry_extra: dict[str, Any],
    workdir: Path,
    setup: Setup,
) -> None:
    """Start the proxies of ``kinds`` (plaintext and, per ``tls_modes``, TLS) side by side;
    ``setup`` records every process as soon as it exists, so the caller can stop them all
    whatever happens."""
    lock = threading.Lock()

    def register(service: Service) -> None:
        with lock:
            setup.services.append(service)

    if "pgbouncer" in kinds:
        setup.pgbouncer_bin = ensure_pgbouncer()
        if setup.pgbouncer_bin is None:
            setup.note("PgBouncer rows missing: pgbouncer is not installed")
    tls_files = write_self_signed(workdir) if True in tls_modes else None
    jobs: list[Callable[[], tuple[Service, Target, dict[str, Any]]]] = []
    for tls in tls_modes:
        files = tls_files if tls else None
        if "direct" in kinds:
            if not tls or server_ssl:
                conninfo = up.conninfo(sslmode="require" if tls else "disable", password=None)
                setup.targets.append(Target("direct", tls, conninfo, up.password))
            else:
                setup.note("direct+tls skipped: the PostgreSQL server has ssl = off")
        if "pgbouncer" in kinds and setup.pgbouncer_bin:

            def pgbouncer_job(
                files: tuple[Path, Path] | None = files, binary: str = setup.pgbouncer_bin
            ) -> tuple[Service, Target, dict[str, Any]]:
                return start_pgbouncer(
                    binary, up, workdir, clients, files,
                    idle_role=idle_role, idle_clients=idle_clients, register=register,
                )  # fmt: skip

            jobs.append(pgbouncer_job)
        for kind in DBSENTRY_KINDS:
            if kind not in kinds:
                continue

            def dbsentry_job(
                files: tuple[Path, Path] | None = files, kind: str = kind
            ) -> tuple[Service, Target, dict[str, Any]]:
                extra = merge(dbsentry_extra, KIND_CONFIG[kind])
                return start_dbsentry(
                    up, workdir, files, extra, name=kind, idle_role=idle_role, register=register
                )

            jobs.append(dbsentry_job)
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures: list[Future[tuple[Service, Target, dict[str, Any]]]] = [
            pool.submit(job) for job in jobs
        ]
        for fut in futures:
            try:
                _, target, used = fut.result()
            except BaseException as exc:  # raised below, once every job has ended
                errors.append(exc)
                continue
            setup.targets.append(target)
            group = "pgbouncer" if target.name == "pgbouncer" else "dbsentry"
            setup.settings[group][target.label] = used
    if errors:
        raise errors[0]
    # like with like: the plaintext targets first, then the TLS ones, in the order of KINDS
    setup.targets.sort(key=lambda t: (t.tls, KINDS.index(t.name)))
    for t in setup.targets:
        check_target(t)


MAX_RESTARTS = 3


def revive(setup: Setup, where: str) -> None:
    """Restart any proxy that exited (something outside the benchmark may have stopped it);
    the restart is recorded in the notes."""
    for service in setup.services:
        if service.alive():
            continue
        status = service.exit_status()
        if service.restarts >= MAX_RESTARTS:
            raise BenchError(f"{service.name} keeps exiting (status {status}):\n{tail(service.log)}")
        setup.note(f"{service.name} exited (status {status}) {where}; restarted")
        service.restarts += 1
        service.start()

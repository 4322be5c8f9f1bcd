"""MySQL/MariaDB end-to-end support: the real server the tests need (127.0.0.1:3306,
root without a password, database ``test``; the reason to skip when it is not there) and
a running dbsentry with a MySQL listener in front of it."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .pg import free_port
from .proxy import RunningProxy, dbsentry_cli, run_proxy, wait_port

HOST, PORT, DATABASE = "127.0.0.1", 3306, "test"


def root_connect() -> Any:
    """PyMySQL straight to the server as root (set-up and checks behind the proxy's back)."""
    import pymysql

    return pymysql.connect(host=HOST, port=PORT, user="root", password="", database=DATABASE, autocommit=True)


def server_reason() -> str | None:
    """Why the MySQL tests cannot run here (None: a server answers)."""
    try:
        with socket.create_connection((HOST, PORT), timeout=2) as s:
            s.settimeout(2)
            first = s.recv(4)
    except OSError as exc:
        return f"no MariaDB/MySQL server on {HOST}:{PORT} ({exc}); the MySQL proxy tests need one (root, empty password, database 'test')"
    if len(first) < 4:
        return f"the server on {HOST}:{PORT} sent no MySQL greeting"
    return None


@dataclass
class MySQLProxy:
    """A running dbsentry and its MySQL listener's port."""

    proxy: RunningProxy
    port: int

    def token(self, identity: str = "alice@example.com", groups: tuple[str, ...] = ("eng",), agent: bool = False) -> str:
        return self.proxy.token(identity, groups, agent)


def _connection(environment: str, **extra: Any) -> dict[str, Any]:
    return {"engine": "mysql", "host": HOST, "port": PORT, "database": DATABASE, "user": "root", "environment": environment, **extra}


@contextmanager
def run_mysql_proxy(
    directory: Path, *, extra: Mapping[str, Any] | None = None, connections: Mapping[str, Any] | None = None, port: int | None = None
) -> Iterator[MySQLProxy]:
    """dbsentry with ``listen.mysql`` (on ``port``, default a free one) and the
    connections prod (production), dev (development) and restricted (allow_groups: dba),
    all to the test MariaDB."""
    port = port or free_port()
    conns: dict[str, Any] = {
        "prod": _connection("production"),
        "dev": _connection("development"),
        "restricted": _connection("development", allow_groups=["dba"]),
    }
    conns.update(connections or {})
    data: dict[str, Any] = {
        "state_dir": str(directory / "state"),
        "listen": {"postgres": f"127.0.0.1:{free_port()}", "http": None, "mysql": f"127.0.0.1:{port}"},
        "connections": conns,
        "limits": {"upstream_check_seconds": 0},
        **(extra or {}),
    }
    path = directory / "dbsentry.yaml"
    path.write_text(yaml.safe_dump(data))
    with run_proxy(path) as running:
        wait_port("127.0.0.1", port, running.process, running.log_path)
        yield MySQLProxy(running, port)


def audit_rows(mp: MySQLProxy, marker: str, ready: Any = None, *search: str) -> list[dict[str, Any]]:
    """The audit records (``dbsentry audit search --json``, with ``search`` options) whose
    line holds ``marker``, polled for up to 10 s until ``ready(rows)`` (default: any row)."""
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = dbsentry_cli("audit", "search", *search, "--json", config=mp.proxy.config_path)
        rows = [json.loads(line) for line in out.stdout.splitlines() if marker in line]
        if rows and (ready is None or ready(rows)):
            break
        time.sleep(0.3)
    return rows


def connector_connect(mp: MySQLProxy, user: str = "alice@example.com", database: str = "dev", **kw: Any) -> Any:
    """mysql-connector-python (pure Python) to the proxy as ``user`` with a token, over TLS."""
    import mysql.connector

    return mysql.connector.connect(
        host="127.0.0.1", port=mp.port, user=user, password=mp.token(user), database=database,
        use_pure=True, ssl_verify_cert=False, connection_timeout=10, autocommit=True, **kw,
    )  # fmt: skip


def pymysql_connect(port: int, user: str, token: str, database: str | None = "dev", **kw: Any) -> Any:
    """PyMySQL to a dbsentry MySQL listener on ``port`` as ``user`` with ``token``, over TLS
    (the proxy's certificate not checked)."""
    import ssl

    import pymysql

    return pymysql.connect(
        host="127.0.0.1", port=port, user=user, password=token, database=database,
        ssl={"check_hostname": False, "verify_mode": ssl.CERT_NONE}, connect_timeout=10, **kw,
    )  # fmt: skip


class SleepingQuery:
    """``SELECT SLEEP(seconds)`` on ``conn`` in a thread: what it ended with (``rows`` or the
    client's ``error`` args) and when (``ended``, monotonic)."""

    def __init__(self, conn: Any, seconds: int = 30) -> None:
        import threading

        self.conn = conn
        self.rows: Any = None
        self.error: tuple[Any, ...] | None = None
        self.ended: float | None = None
        self._thread = threading.Thread(target=self._run, args=(seconds,), daemon=True)
        self._thread.start()
        time.sleep(0.5)  # the statement reaches the server

    def _run(self, seconds: int) -> None:
        import pymysql

        try:
            with self.conn.cursor() as cur:
                cur.execute(f"SELECT SLEEP({seconds})")
                self.rows = cur.fetchall()
        except pymysql.err.MySQLError as exc:
            self.error = exc.args
        self.ended = time.monotonic()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert self.ended is not None, "the statement still runs"

    @property
    def interrupted(self) -> bool:
        """It ended early: MariaDB ends a killed SLEEP with 1 (or ER_QUERY_INTERRUPTED, 1317)."""
        return self.rows == ((1,),) or (self.error is not None and self.error[0] == 1317)


class MariadbCli:
    """The mariadb command-line client on a pseudo-terminal (so Ctrl-C reaches it as a
    keystroke), logged in to a dbsentry MySQL listener over TLS."""

    def __init__(self, fd: int, prompt: bytes) -> None:
        self.fd = fd
        self.prompt = prompt

    def ctrl_c_a_sleep(self) -> tuple[float, bytes]:
        """Run ``SELECT SLEEP(30)``, press Ctrl-C half a second in: how long until the prompt
        came back, and what it printed meanwhile."""
        self.send(b"SELECT SLEEP(30);\n")
        self.read_until(b"SLEEP", 1)
        time.sleep(0.5)
        started = time.monotonic()
        self.send(b"\x03")
        out = self.read_until(self.prompt, 10)
        return time.monotonic() - started, out

    def send(self, data: bytes) -> None:
        import os

        os.write(self.fd, data)

    def read_until(self, marker: bytes, seconds: float) -> bytes:
        """What it printed until ``marker`` (or ``seconds`` passed)."""
        import os
        import select

        out = b""
        deadline = time.monotonic() + seconds
        while marker not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    out += os.read(self.fd, 4096)
                except OSError:
                    break
        return out


@contextmanager
def mariadb_cli(port: int, user: str, token: str, database: str) -> Iterator[MariadbCli]:
    """``mariadb`` at its prompt (``MariaDB [database]>``); quits it after."""
    import os
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execvp("mariadb", ["mariadb", "-h", "127.0.0.1", "-P", str(port), "-u", user, f"-p{token}", "--ssl", "--ssl-verify-server-cert=0", database])
    cli = MariadbCli(fd, f"MariaDB [{database}]>".encode())
    try:
        assert cli.prompt in cli.read_until(cli.prompt, 10)
        yield cli
    finally:
        os.write(fd, b"quit\n")
        os.close(fd)
        os.waitpid(pid, 0)

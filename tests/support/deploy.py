"""The deployment recipe in deploy/, run for real: dbsentry nodes whose configuration is
deploy/dbsentry.yaml with this machine's addresses, HAProxy running deploy/haproxy.cfg
itself (its addresses come from the environment), and what HAProxy's runtime API says."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .mysql import server_reason as mysql_reason
from .pg import PgServer, free_port
from .proxy import dbsentry_cli

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def haproxy_binary() -> str | None:
    """HAProxy (Debian package ``haproxy``, installed by scripts/test), or None."""
    found = shutil.which("haproxy")
    if found is None and os.access("/usr/sbin/haproxy", os.X_OK):
        found = "/usr/sbin/haproxy"
    return found


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """``check()``'s first true value, polled every 0.1 s."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def get_json(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """GET ``url``: (status, JSON body); (0, {}) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())
    except OSError:
        return 0, {}


@dataclass
class Node:
    """One dbsentry node of the recipe: deploy/dbsentry.yaml with its own ports, state
    directory and audit node id."""

    name: str
    directory: Path
    postgres: int
    mysql: int | None
    http: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.directory / "dbsentry.yaml"

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    @property
    def log_path(self) -> Path:
        return self.directory / "dbsentry.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def readyz(self) -> tuple[int, dict[str, Any]]:
        return get_json(f"http://127.0.0.1:{self.http}/readyz")

    def start(self) -> None:
        """``dbsentry serve`` in a session of its own (so a kill reaches only it)."""
        assert self.process is None or self.process.poll() is not None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dbsentry", "serve", "-c", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 40.0) -> None:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.log_text()}")
            return self.readyz()[0] == 200

        wait_until(ready, f"{self.name}'s /readyz", timeout)

    def kill9(self) -> None:
        """``kill -9`` of the whole node (its supervisor, workers and audit helpers), as when
        its machine dies."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, as systemd stops it; SIGKILL to the whole group if it hangs."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def make_node(
    directory: Path, name: str, upstream: PgServer, *, audit_dsn: str
) -> Node:
    """A node configured by deploy/dbsentry.yaml: loopback ports instead of the recipe's,
    this machine's databases instead of its hosts, and without MySQL when no MariaDB
    answers here."""
    data = yaml.safe_load((DEPLOY / "dbsentry.yaml").read_text())
    directory.mkdir(parents=True, exist_ok=True)
    with_mysql = mysql_reason() is None
    ports = {k: free_port() for k in ("postgres", "mysql", "http")}
    data["state_dir"] = str(directory / "state")
    data["listen"] = {k: f"127.0.0.1:{p}" for k, p in ports.items() if k != "mysql" or with_mysql}
    data["audit"]["node"] = name
    cp = data["control_plane"]
    cp["listen"] = "127.0.0.1:0"
    cp["advertise_host"] = "127.0.0.1"
    prod = data["connections"]["prod"]
    del prod["password_env"]
    prod.update(host=upstream.host, port=upstream.port, database=upstream.dbname, user=upstream.user)
    if upstream.password:
        prod["password"] = upstream.password
    shop = data["connections"].pop("shop")
    if with_mysql:
        del shop["password_env"]
        shop.update(host="127.0.0.1", port=3306, database="test", user="root")
        data["connections"]["shop"] = shop
    node = Node(
        name, directory, ports["postgres"], ports["mysql"] if with_mysql else None, ports["http"],
        env={
            data["audit"]["dsn_env"]: audit_dsn,
            cp["postgres"]["dsn_env"]: audit_dsn,  # the control plane's schema in the same database
            cp["secret_env"]: "recipe-test-node-secret-0123456789abcdef",
        },
    )  # fmt: skip
    node.config.write_text(yaml.safe_dump(data))
    return node


def same_token_on_every_node(nodes: list[Node], identity: str, groups: tuple[str, ...]) -> str:
    """One token every node accepts: created once, through the first node's configuration,
    in the control plane they share."""
    first = nodes[0]
    args = ["token", "create", "--identity", identity, "--ttl", "1h"]
    for g in groups:
        args += ["--group", g]
    return dbsentry_cli(*args, config=first.config, env=first.env).stdout.strip()


@dataclass
class HAProxy:
    """HAProxy running deploy/haproxy.cfg in the foreground."""

    process: subprocess.Popen[bytes]
    stats_socket: Path
    postgres: int
    mysql: int
    log_path: Path

    def command(self, line: str) -> str:
        """One command of HAProxy's runtime API (its stats socket)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self, backend: str) -> dict[str, dict[str, str]]:
        """``show stat`` of ``backend``'s servers: name -> columns (status, scur, stot, ...)."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(text.splitlines())
        return {r["svname"]: r for r in rows if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")}

    def status(self, backend: str) -> dict[str, str]:
        return {name: row["status"] for name, row in self.servers(backend).items()}


def haproxy_env(nodes: list[Node], directory: Path) -> dict[str, str]:
    """The variables deploy/haproxy.cfg reads (deploy/haproxy.env in production)."""
    env = {
        "DBSENTRY_LB_POSTGRES": f"127.0.0.1:{free_port()}",
        "DBSENTRY_LB_MYSQL": f"127.0.0.1:{free_port()}",
        "DBSENTRY_LB_STATS_SOCKET": str(directory / "haproxy.sock"),
    }
    for i, node in enumerate(nodes, 1):
        env[f"DBSENTRY_NODE{i}"] = "127.0.0.1"
        env[f"DBSENTRY_NODE{i}_POSTGRES"] = str(node.postgres)
        # no MySQL here: a port where nothing listens (the check is /readyz either way)
        env[f"DBSENTRY_NODE{i}_MYSQL"] = str(node.mysql or free_port())
        env[f"DBSENTRY_NODE{i}_HTTP"] = str(node.http)
    return env


def start_haproxy(binary: str, env: Mapping[str, str], directory: Path) -> HAProxy:
    log_path = directory / "haproxy.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, "-db", "-f", str(DEPLOY / "haproxy.cfg")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    lb = HAProxy(
        proc, Path(env["DBSENTRY_LB_STATS_SOCKET"]),
        int(env["DBSENTRY_LB_POSTGRES"].rpartition(":")[2]), int(env["DBSENTRY_LB_MYSQL"].rpartition(":")[2]), log_path,
    )  # fmt: skip

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"haproxy exited with {proc.returncode}:\n{log_path.read_text()}")
        return lb.stats_socket.exists()

    wait_until(up, "haproxy's stats socket", 10)
    return lb


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

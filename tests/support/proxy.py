"""A running dbsentry process for end-to-end tests: real sockets, real config, real CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from psycopg.conninfo import make_conninfo

from .pg import PgServer, free_port


def dbsentry_cli(*args: str, config: Path, check: bool = True, env: Mapping[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``dbsentry ARGS -c CONFIG`` as a user would."""
    cmd = [sys.executable, "-m", "dbsentry", *args, "-c", str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, env={**os.environ, **(env or {})}, input=input, timeout=60)


@dataclass
class RunningProxy:
    host: str
    port: int
    config_path: Path
    state_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    tokens: dict[tuple[str, tuple[str, ...], bool], str] = field(default_factory=dict)

    def token(self, identity: str, groups: tuple[str, ...] = (), agent: bool = False, ttl: str = "1h") -> str:
        key = (identity, groups, agent)
        if key in self.tokens and ttl == "1h":
            return self.tokens[key]
        args = ["token", "create", "--identity", identity, "--ttl", ttl]
        for g in groups:
            args += ["--group", g]
        if agent:
            args.append("--agent")
        tok = dbsentry_cli(*args, config=self.config_path).stdout.strip()
        if ttl == "1h":
            self.tokens[key] = tok
        return tok

    def dsn(self, identity: str = "alice@example.com", *, token: str | None = None, dbname: str = "prod", sslmode: str = "require", groups: tuple[str, ...] = ("eng",), agent: bool = False, **extra: Any) -> str:
        if token is None:
            token = self.token(identity, groups, agent)
        return make_conninfo(
            "", host=self.host, port=self.port, dbname=dbname, user=identity, password=token, sslmode=sslmode, connect_timeout=10, **extra
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None


def write_config(directory: Path, upstream: PgServer, *, extra: Mapping[str, Any] | None = None, connections: Mapping[str, Any] | None = None) -> Path:
    port = free_port()
    conns: dict[str, Any] = {
        "prod": {
            "host": upstream.host,
            "port": upstream.port,
            "database": upstream.dbname,
            "user": upstream.user,
            "environment": "production",
            **({"password": upstream.password} if upstream.password else {}),
        },
        "staging": {
            "host": upstream.host,
            "port": upstream.port,
            "database": upstream.dbname,
            "user": upstream.user,
            "environment": "staging",
            **({"password": upstream.password} if upstream.password else {}),
        },
        "restricted": {
            "host": upstream.host,
            "port": upstream.port,
            "database": upstream.dbname,
            "user": upstream.user,
            "environment": "staging",
            "allow_groups": ["dba"],
            **({"password": upstream.password} if upstream.password else {}),
        },
    }
    if connections:
        conns.update(connections)
    data: dict[str, Any] = {
        "state_dir": str(directory / "state"),
        "listen": {"postgres": f"127.0.0.1:{port}", "http": None},
        "connections": conns,
        "workers": 1,  # one process, as before workers existed; tests of workers say how many
    }
    if extra:
        data.update(extra)
    path = directory / "dbsentry.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def wait_port(host: str, port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dbsentry exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"dbsentry did not listen on {host}:{port}:\n{log.read_text()}")


@contextmanager
def run_proxy(
    config_path: Path, env: Mapping[str, str] | None = None, entry: Sequence[str] = ("-m", "dbsentry")
) -> Iterator[RunningProxy]:
    """``entry``: what runs the CLI (``python ENTRY serve ...``), e.g. support/clock.py."""
    data = yaml.safe_load(config_path.read_text())
    host, _, port = data["listen"]["postgres"].rpartition(":")
    log_path = config_path.with_suffix(".log")
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(
            [sys.executable, *entry, "serve", "-c", str(config_path), "--log-level", "debug"],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    try:
        wait_port(host, int(port), proc, log_path)
        http = data["listen"].get("http")
        if http:  # the console, the API and MCP start after the database listeners
            http_host, _, http_port = http.rpartition(":")
            wait_port(http_host.strip("[]"), int(http_port), proc, log_path)
        yield RunningProxy(host, int(port), config_path, Path(data["state_dir"]), log_path, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

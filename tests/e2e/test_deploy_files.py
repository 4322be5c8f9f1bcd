"""The deployment recipe's files that cannot run here as a whole: the container image
definition (no base image can be pulled here, so deploy/Dockerfile is read, not built) and
the systemd unit (no systemd as PID 1 here; systemd-analyze checks it offline). What they
must say: a non-root user, the listeners, a health check on /readyz, ``dbsentry serve``,
and signals that match what ``dbsentry serve`` does."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dbsentry.config import Config
from support.deploy import DEPLOY, REPO, haproxy_binary

pytestmark = pytest.mark.e2e


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuations joined."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "a continuation line at the end of the file"
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1] :]


def test_the_image_runs_dbsentry_serve_as_a_user_with_a_readiness_check() -> None:
    instructions = dockerfile_instructions(DEPLOY / "Dockerfile")
    stage = final_stage(instructions)
    last = {word: args for word, args in stage}  # the last of each kind is what counts

    # Not root: a numeric user (so Kubernetes' runAsNonRoot can check it) that is not 0.
    user = last["USER"].split(":")
    assert all(part.isdigit() and int(part) != 0 for part in user), last["USER"]
    assert any("useradd" in args and f"--uid {user[0]}" in args for word, args in stage if word == "RUN")

    # dbsentry serve on the image's configuration, whose listeners are the exposed ports.
    assert json.loads(last["ENTRYPOINT"]) == ["dbsentry", "serve"]
    cmd = json.loads(last["CMD"])
    assert cmd[0] == "-c"
    copied = {args.split()[-1]: args.split()[-2] for word, args in stage if word == "COPY" and "--from" not in args}
    config = Config.model_validate(yaml.safe_load((REPO / copied[cmd[1]]).read_text()))
    listeners = [config.listen.postgres_addr, config.listen.mysql_addr, config.listen.http_addr]
    exposed = {int(p) for word, args in stage if word == "EXPOSE" for p in args.split()}
    assert exposed == {addr[1] for addr in listeners if addr is not None}
    assert all(addr is not None and addr[0] == "0.0.0.0" for addr in listeners)  # reachable from outside

    # The health check asks /readyz on listen.http.
    assert config.listen.http_addr is not None
    assert re.search(rf"127\.0\.0\.1:{config.listen.http_addr[1]}/readyz", last["HEALTHCHECK"])
    assert last["STOPSIGNAL"] == "SIGTERM"
    assert last["VOLUME"] and str(config.state_dir) in last["VOLUME"]

    # What the build stage copies is what the build needs (setup.py: the C extension).
    build = instructions[: len(instructions) - len(stage)]
    sources = {s for word, args in build if word == "COPY" for s in args.split()[:-1]}
    assert {"pyproject.toml", "setup.py", "README.md", "src"} <= sources
    assert all((REPO / s).exists() for s in sources)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert all(f"!{s}" in ignore for s in [*sources, copied[cmd[1]]])


def test_the_image_configuration_is_valid_on_its_own() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dbsentry", "check-config", "-c", str(DEPLOY / "container.yaml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(DEPLOY / "dbsentry.service")
    return parser


def test_the_systemd_unit_stops_and_reloads_as_dbsentry_serve_does() -> None:
    service = unit()["Service"]
    assert shlex.split(service["ExecStart"])[1:3] == ["serve", "-c"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"  # every worker reloads the policy
    # SIGTERM to the supervisor only (it passes it on and drains), SIGKILL to the rest later:
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    config = Config.model_validate(yaml.safe_load((DEPLOY / "dbsentry.yaml").read_text()))
    # systemd's SIGKILL comes after the drain and the supervisor's own 10 s grace.
    assert float(service["TimeoutStopSec"]) > config.limits.drain_seconds + 10
    assert service["RestartPreventExitStatus"] == "2"  # a configuration error: no restart loop
    assert service["User"] not in ("root", "0") and service["StateDirectory"] == "dbsentry"
    assert Path("/var/lib") / service["StateDirectory"] == config.state_dir


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (package systemd)")
def test_the_systemd_unit_is_valid_and_hardened() -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(DEPLOY / "dbsentry.service")], capture_output=True, text=True, timeout=60
    )
    # The one complaint allowed: the install path does not exist on this machine.
    complaints = [
        line for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and "/opt/dbsentry/bin/dbsentry is not executable" not in line
    ]  # fmt: skip
    assert not complaints, done.stdout + done.stderr
    # systemd's own exposure score, 0 (locked down) to 10 (unprotected): 2.0 at most.
    scored = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", str(DEPLOY / "dbsentry.service")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stdout[-2000:] + scored.stderr


@pytest.mark.skipif(haproxy_binary() is None, reason="haproxy is not installed (Debian package haproxy; scripts/test installs it)")
def test_haproxy_accepts_the_recipe_with_its_example_addresses(tmp_path: Path) -> None:
    env = {}
    for line in (DEPLOY / "haproxy.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    env["DBSENTRY_LB_STATS_SOCKET"] = str(tmp_path / "admin.sock")
    binary = haproxy_binary()
    assert binary is not None
    done = subprocess.run([binary, "-c", "-f", str(DEPLOY / "haproxy.cfg")], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    # Every variable the file reads is in the example environment file.
    used = set(re.findall(r"\$\{(\w+)\}", (DEPLOY / "haproxy.cfg").read_text()))
    assert used == set(env), used ^ set(env)

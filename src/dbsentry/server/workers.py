"""``workers: N``: one supervisor process and N worker processes on one node.

The supervisor prepares what the workers share (the state directory and its keys, the
audit node id, the metrics directory), forks N workers and watches them.  Each worker is a
whole proxy (``runner.run_server``) whose PostgreSQL listener is bound with
``SO_REUSEPORT`` (so is the MySQL one, ``listen.mysql``), so the kernel spreads new
connections over them; worker 0 alone serves the HTTP listener (console, API,
``/metrics``, MCP) and asks the others for their live sessions.  A worker has its own audit
chain (node ``<node>-w<k>``, its own log directory) and its own channel (``workerproto``)
on which cancels, MySQL KILLs and catalog changes reach it.

Signals: SIGTERM or SIGINT to the supervisor is passed to every worker, which stops
accepting, lets its sessions end for up to ``limits.drain_seconds`` and exits; a worker
still there ``_KILL_GRACE_SECONDS`` later is killed.  SIGHUP is passed on: every worker
reloads its policy.  A worker that dies is logged and started again; the others and their
sessions are not touched.

docs/deployment.md ("Workers") tells how to run it and what is shared.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from dbsentry.config import Config, LoadedConfig
from dbsentry.server.workerproto import MAX_WORKERS, WorkerInfo

log = logging.getLogger("dbsentry.workers")

_KILL_GRACE_SECONDS = 10.0
# A worker that dies sooner than this after its start counts as a crash loop: the next start
# waits (1 s, doubling up to 30 s) instead of forking at once.
_STABLE_SECONDS = 5.0
_POLL_SECONDS = 0.1
_SOCKET_PATH_MAX = 100
_REEXEC = "DBSENTRY_WORKERS_METRICS"  # sun_path is 108 bytes on Linux, 104 on the BSDs


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def reuseport_supported() -> bool:
    """Whether listening sockets can be shared with SO_REUSEPORT (load-balanced by the
    kernel: Linux 3.9 and later; elsewhere the option may exist without balancing)."""
    if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        return False
    return True


def effective_workers(config: Config, override: int | None) -> int:
    """How many workers to run: ``--workers``, else ``workers:``, else one per CPU; 1 where the
    OS cannot share a listening socket (said in the log)."""
    wanted = override if override is not None else config.workers if config.workers is not None else default_workers()
    if wanted > 1 and not reuseport_supported():
        log.warning(
            "this OS cannot share a listening socket between processes (SO_REUSEPORT): running one worker",
            extra={"fields": {"workers": wanted, "platform": sys.platform}},
        )
        return 1
    return wanted


def run_dir(config: Config) -> Path:
    return config.state_dir / "run"


def metrics_dir(config: Config) -> Path:
    return run_dir(config) / "metrics"


def prepare_run_dir(config: Config) -> None:
    """``<state_dir>/run``, empty: the workers' sockets and the metric files."""
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    rd = run_dir(config)
    if len(str(rd / f"w{MAX_WORKERS}.sock")) > _SOCKET_PATH_MAX:
        raise ValueError(f"state_dir {config.state_dir} is too long a path for the workers' Unix sockets")
    shutil.rmtree(rd, ignore_errors=True)  # a previous run's sockets and metric files
    rd.mkdir(mode=0o700)
    os.chmod(rd, 0o700)
    metrics_dir(config).mkdir(mode=0o700)


def check_listen_free(config: Config) -> None:
    """Raise ValueError when ``listen.postgres`` (or ``listen.mysql``) is taken.  The workers
    bind them with SO_REUSEPORT, which another process of the same user (say, a dbsentry
    not yet stopped) could share without an error, splitting the clients between two
    proxies; a plain bind fails on any listener there."""
    addrs = [("listen.postgres", config.listen.postgres_addr)]
    if config.listen.mysql_addr is not None:
        addrs.append(("listen.mysql", config.listen.mysql_addr))
    for setting, (host, port) in addrs:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError as err:
            raise ValueError(f"{setting} {host}:{port}: {err}") from None
        for family, kind, proto, _, addr in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(addr)
                except OSError as err:
                    raise ValueError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def prepare(config: Config) -> None:
    """Make once, before any worker starts, what they would otherwise race to create (two
    workers generating the TLS pair at once would each keep the other's certificate)."""
    from dbsentry.identity import TokenStore
    from dbsentry.identity.shared_limit import SharedLoginLimiter
    from dbsentry.server.tls import ensure_certificate

    check_listen_free(config)
    ensure_certificate(config)
    if config.control_plane is not None:
        from dbsentry.controlplane import ControlPlane

        ControlPlane(config.control_plane).migrate()  # ControlPlaneUnavailable: not starting
    else:
        TokenStore(config.state_dir).close()
        SharedLoginLimiter(config.state_dir / "logins.db").close()
    if config.passthrough:
        return
    from dbsentry.audit import Signer, open_store
    from dbsentry.audit.log import check_node_id, node_id
    from dbsentry.audit.redaction import load_or_create_redaction_key
    from dbsentry.config import check_environments
    from dbsentry.engines.postgres.session.governance import Governor
    from dbsentry.engines.postgres.session.masking import load_or_create_key
    from dbsentry.policy.loader import declared_environments

    governor = Governor.from_path(config.policy)  # PolicyError: not starting
    check_environments(config, declared_environments(governor.policy))
    acfg = config.audit
    open_store(acfg, config.state_dir).close()
    from dbsentry.approvals import open_approval_store

    open_approval_store(acfg, config.state_dir, config.control_plane).close()
    Signer.from_path(acfg.signing_key_path(config.state_dir))
    load_or_create_redaction_key(acfg.redaction_key_path(config.state_dir))
    load_or_create_key(config.masking.hash_key_file or config.state_dir / "masking.key")
    base = node_id(acfg.node, config.state_dir)
    check_node_id(worker_node(base, MAX_WORKERS - 1))


_node_locks: list[int] = []  # held for the life of the worker


def lock_node_dir(node_dir: Path) -> None:
    """Hold ``node_dir/.writer.lock`` (flock) while this worker lives: a worker of a
    supervisor started again while the previous one's workers are still draining (the
    supervisor was killed) waits here until the previous writer of the chain has exited,
    instead of appending to it at the same time."""
    import fcntl

    node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(node_dir / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning("another process still writes this audit chain; waiting for it to exit", extra={"fields": {"node_dir": str(node_dir)}})
        fcntl.flock(fd, fcntl.LOCK_EX)
    _node_locks.append(fd)


def worker_node(base: str, index: int) -> str:
    """The audit node id of worker ``index``: each worker has its own chain and directory."""
    return f"{base}-w{index}"


class _WorkerTag(logging.Filter):
    """Adds ``worker=<k>`` to every log line of a worker."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        record.fields = {**(fields if isinstance(fields, dict) else {}), "worker": self.index}
        return True


def _worker_main(loaded: LoadedConfig, info: WorkerInfo, ready_fd: int) -> int:
    """A forked worker: the proxy, until it is told to stop; a byte on ``ready_fd`` tells
    the supervisor it serves."""
    import asyncio

    from dbsentry.server.proxy import install_uvloop
    from dbsentry.server.runner import run_server

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # run_server installs its own once it serves
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload asked for while starting: nothing to do
    # This worker's metrics go to the files (prometheus_client chose that at import); the
    # processes it starts itself (the audit helper) keep theirs out of the sums (metrics.py).
    os.environ["DBSENTRY_METRICS_PID"] = str(os.getpid())
    for handler in logging.getLogger("dbsentry").handlers:
        handler.addFilter(_WorkerTag(info.index))
    install_uvloop()
    try:
        asyncio.run(run_server(loaded, worker=info, on_ready=lambda: _tell_ready(ready_fd)))
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    except BaseException:
        log.exception("worker failed")
        return 1
    return 0


_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    """SIGTERM this worker when the supervisor dies (``kill -9`` of the supervisor must not
    leave workers serving unsupervised); Linux's prctl, nothing elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def _tell_ready(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, b"r")
        os.close(fd)


class Supervisor:
    def __init__(self, loaded: LoadedConfig, count: int) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.count = count
        self.key = secrets.token_bytes(32)  # the node's secret for messages between workers
        self.children: dict[int, int] = {}  # pid -> worker index
        self.started: dict[int, float] = {}  # worker index -> when it was last started
        self.backoff: dict[int, float] = {}  # worker index -> wait before its next start
        self.ready_fds: dict[int, int] = {}  # worker index -> the pipe its readiness comes on
        self.served: set[int] = set()  # workers that have served at least once
        self.stopping = False
        self.exit_code = 0
        self._hup = False

    def _reload_connections(self) -> None:
        """SIGHUP: the connections the workers take up (server/reload.py) are also those of
        a worker started again later.  A file they reject (and log) changes nothing here."""
        from dbsentry.config import ConfigError, with_connections
        from dbsentry.engines.postgres.session.governance import Governor
        from dbsentry.policy import PolicyError
        from dbsentry.policy.loader import declared_environments
        from dbsentry.server.reload import read_new

        config = self.loaded.config
        try:
            declared = () if config.passthrough else declared_environments(Governor.from_path(config.policy).policy)
            new = read_new(self.loaded.path, declared)
        except (ConfigError, PolicyError):
            return
        self.loaded = LoadedConfig(with_connections(config, new), self.loaded.path)

    def _spawn(self, index: int) -> None:
        info = WorkerInfo(index, self.count, self.key, run_dir(self.config))
        sys.stdout.flush()
        sys.stderr.flush()
        read_fd, write_fd = os.pipe()
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                _die_with(supervisor)
                os.close(read_fd)
                for fd in self.ready_fds.values():
                    os.close(fd)
                code = _worker_main(self.loaded, info, write_fd)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self._forget_ready_fd(index)
        self.ready_fds[index] = read_fd
        self.children[pid] = index
        self.started[index] = time.monotonic()
        log.info("worker started", extra={"fields": {"worker": index, "pid": pid}})

    def _forget_ready_fd(self, index: int) -> None:
        fd = self.ready_fds.pop(index, None)
        if fd is not None:
            os.close(fd)

    def _check_ready(self) -> None:
        for index, fd in list(self.ready_fds.items()):
            try:
                got = os.read(fd, 1)
            except BlockingIOError:
                continue
            self._forget_ready_fd(index)
            if got:
                if not self.served:
                    log.info("first worker ready")
                self.served.add(index)

    def _on_stop(self, signum: int, _frame: Any) -> None:
        self.stopping = True

    def _on_hup(self, signum: int, _frame: Any) -> None:
        self._hup = True

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self) -> list[int]:
        """The workers that exited since the last call (their indexes).  A worker that dies
        before it ever served (configuration, policy, stores, a port taken) stops the node,
        as one process would not start; one that served before is started again."""
        gone = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index = self.children.pop(pid, None)
            if index is None:
                continue  # not a worker (an audit helper is its worker's child, not ours)
            _process_dead(pid)
            self._check_ready()
            how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit status {os.waitstatus_to_exitcode(status)}"
            fields = {"worker": index, "pid": pid, "how": how}
            if not self.stopping and index not in self.served:
                log.error("a worker cannot start; stopping", extra={"fields": fields})
                self.stopping = True
                self.exit_code = 2
            elif not self.stopping:
                log.error("worker died; starting it again", extra={"fields": fields})
            gone.append(index)
        return gone

    def run(self) -> int:
        prepare_run_dir(self.config)
        prepare(self.config)
        import dbsentry.server.runner  # noqa: F401 - loaded once here, shared by every fork
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        log.info("starting workers", extra={"fields": {"workers": self.count, "supervisor": os.getpid()}})
        _process_dead(os.getpid())  # the supervisor's own (never set) gauges are not a worker's
        for k in range(self.count):
            self._spawn(k)
        pending: dict[int, float] = {}  # worker index -> when to start it again
        while not self.stopping:
            time.sleep(_POLL_SECONDS)
            self._check_ready()
            if self._hup:
                self._hup = False
                log.info("SIGHUP: every worker reloads its policy and its connections")
                self._signal_all(signal.SIGHUP)
                self._reload_connections()
            now = time.monotonic()
            for index in self._reap():
                if self.stopping:
                    break
                lived = now - self.started.get(index, now)
                wait = 0.0
                if lived < _STABLE_SECONDS:
                    wait = self.backoff.get(index, 0.5) * 2
                    self.backoff[index] = min(wait, 30.0)
                else:
                    self.backoff.pop(index, None)
                pending[index] = now + wait
            for index, when in list(pending.items()):
                if now >= when and not self.stopping:
                    del pending[index]
                    self._spawn(index)
        log.info("stopping workers", extra={"fields": {"workers": len(self.children)}})
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.config.limits.drain_seconds + _KILL_GRACE_SECONDS
        while self.children and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)
            self._reap()
        if self.children:
            log.error("workers still running after the drain: killed", extra={"fields": {"pids": sorted(self.children)}})
            self._signal_all(signal.SIGKILL)
            while self.children:
                time.sleep(_POLL_SECONDS)
                self._reap()
        log.info("all workers stopped")
        return self.exit_code


def _process_dead(pid: int) -> None:
    """A dead worker's live gauges leave /metrics (its counters stay in the sums)."""
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    except (ImportError, OSError):
        pass


def serve_workers(loaded: LoadedConfig, count: int) -> int:
    """Run ``count`` workers until SIGTERM; the exit status."""
    from dbsentry.approvals import ApprovalStoreError
    from dbsentry.config import ConfigError
    from dbsentry.identity.ratelimit import ControlPlaneUnavailable
    from dbsentry.policy import PolicyError

    # /metrics sums the workers' metric files (prometheus_client's multiprocess mode), which
    # must be chosen before prometheus_client is first imported, and loading the
    # configuration imported it: the command starts again (same pid) with it chosen.
    wanted = str(metrics_dir(loaded.config))
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") != wanted:
        if os.environ.get(_REEXEC) == wanted:
            log.error("cannot start the workers: the metrics directory was not taken up")
            return 2
        try:
            prepare_run_dir(loaded.config)
        except (OSError, ValueError) as err:
            log.error("cannot start the workers", extra={"fields": {"reason": str(err)}})
            return 2
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = wanted
        os.environ["DBSENTRY_METRICS_PID"] = str(os.getpid())  # execv keeps the pid
        os.environ[_REEXEC] = wanted
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "dbsentry", *sys.argv[1:]])
    try:
        return Supervisor(loaded, count).run()
    except (OSError, ValueError, ConfigError, PolicyError, ControlPlaneUnavailable, ApprovalStoreError) as err:
        log.error("cannot start the workers", extra={"fields": {"reason": str(err)}})
        return 2


def shared_authenticator(config: Config) -> Any:
    """An Authenticator whose failed-login limiter is shared by the node's workers (by
    every node, with a control plane)."""
    from dbsentry.controlplane import login_limiter, token_store
    from dbsentry.identity import Authenticator

    return Authenticator(config, tokens=token_store(config), limiter=login_limiter(config, config.state_dir / "logins.db"))


def sessions_everywhere(proxy: Any) -> list[dict[str, Any]]:
    """Every worker's live sessions as console rows (blocking: the console's routes run in a
    thread).  A worker that does not answer within a second (it is being restarted) is left
    out and logged."""
    rows: list[dict[str, Any]] = proxy.session_rows()
    channel = proxy.channel
    if channel is None:
        return rows
    for index in channel.info.others():
        try:
            answer = channel.ask_blocking(index, "sessions")
        except OSError as err:
            log.warning("live sessions of a worker not read", extra={"fields": {"worker": index, "error": str(err)}})
            continue
        if isinstance(answer, list):
            rows.extend(r for r in answer if isinstance(r, dict))
    return rows

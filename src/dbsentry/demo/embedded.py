"""An embedded PostgreSQL for the demo, built from the binaries of the ``pgserver`` package.

The cluster lives in one directory (``<demo dir>/postgres``) and survives between runs:
the first run creates it with initdb, later runs start it again in a second or two.  The
server listens on 127.0.0.1 only (no unix socket, so deep paths are no problem) and
demands a password (scram-sha-256) on every connection.

When run as root the server runs as the ``postgres`` user (or ``nobody``), because
PostgreSQL refuses to run as root.  If that user cannot reach the demo directory (it is
under ``/root``, say), the cluster goes to a directory of its own in the system's
temporary directory instead, named after the demo directory.

Why not ``pgserver.get_server()``: it listens on a unix socket only, and run as root it
creates an OS user and loosens the permissions of every parent directory up to ``/``.
Importing ``pgserver`` also warns when ``XDG_RUNTIME_DIR`` is unset, so it is located
without being imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "UpstreamAddress",
    "find_bindir",
    "free_port",
    "port_is_free",
]

_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
# Set to a directory holding initdb/pg_ctl/postgres to use those binaries instead.
ENV_BINDIR = "DBSENTRY_PG_BINDIR"


class EmbeddedPostgresError(Exception):
    """The embedded server could not be created, started or reached."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """True if nothing listens on ``host:port`` and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _has_binaries(path: Path) -> bool:
    return all(
        (path / name).is_file() and os.access(path / name, os.X_OK) for name in _REQUIRED_BINARIES
    )


def _pgserver_bindir() -> Path | None:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if _has_binaries(path) else None


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    """Where a demo's PostgreSQL listens; a tour of a demo that runs in another process
    connects there."""

    host: str
    port: int

    def conninfo(
        self, dbname: str = "postgres", *, user: str | None = None, password: str | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect``."""
        return {
            "host": self.host,
            "port": self.port,
            "user": user,
            "password": password,
            "dbname": dbname,
            "connect_timeout": 10,
            "sslmode": "disable",
        }


def find_bindir() -> Path | None:
    """initdb/pg_ctl/postgres: ``$DBSENTRY_PG_BINDIR``, pgserver's bundled binaries, then the
    machine's (``pg_config --bindir``, ``/usr/lib/postgresql/<newest>/bin``, ``PATH``)."""
    if os.environ.get(ENV_BINDIR):
        path = Path(os.environ[ENV_BINDIR])
        return path if _has_binaries(path) else None
    bundled = _pgserver_bindir()
    if bundled is not None:
        return bundled
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            candidates.append(Path(out))

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in p.parent.name.split(".") if x.isdigit())

    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    return next((c for c in candidates if _has_binaries(c)), None)


def server_user() -> pwd.struct_passwd | None:
    """The OS user to run the server as when we are root, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise EmbeddedPostgresError(
        "running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as"
    )


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    return env


def _reachable_by(user: pwd.struct_passwd, directory: Path) -> bool:
    """True if ``user`` can enter and write ``directory`` (checked by asking as that user)."""
    try:
        proc = subprocess.run(
            [
                "runuser",
                "-u",
                user.pw_name,
                "--",
                "test",
                "-w",
                str(directory),
                "-a",
                "-x",
                str(directory),
            ],
            capture_output=True,
            timeout=30,
            env=_clean_env(),
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def _runnable_by(user: pwd.struct_passwd, program: Path) -> bool:
    try:
        proc = subprocess.run(
            ["runuser", "-u", user.pw_name, "--", "test", "-x", str(program)],
            capture_output=True,
            timeout=30,
            env=_clean_env(),
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)
    for root, dirs, _files in os.walk(dst):
        for d in dirs:
            (Path(root) / d).chmod(0o755)
    dst.chmod(0o755)


def usable_bindir(bindir: Path, user: pwd.struct_passwd | None) -> Path:
    """``bindir``, or a copy of its installation the server's OS user can run.

    When we are root and the binaries sit under a directory that user cannot enter (a
    virtualenv in a 0700 directory, say), the installation is copied once to a
    world-readable directory and run from there.  Wheels keep their shared libraries in a
    ``<package>.libs`` directory found through a relative rpath, so the copy keeps the
    package layout: ``<copy>/<package>/<install>/bin`` next to ``<copy>/<package>.libs``.
    """
    if user is None or _runnable_by(user, bindir / "initdb"):
        return bindir
    install = bindir.parent
    package = install.parent
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    copy = Path(tempfile.gettempdir()) / f"dbsentry-pginstall-{digest}"
    target = copy / package.name / install.name / bindir.name
    if not _has_binaries(target):
        staging = copy.with_name(copy.name + f".{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        (staging / package.name).mkdir(parents=True)
        _copy_tree(install, staging / package.name / install.name)
        for libs in package.parent.glob(f"{package.name}.libs"):
            _copy_tree(libs, staging / libs.name)
        for d in (staging, staging / package.name):
            d.chmod(0o755)
        shutil.rmtree(copy, ignore_errors=True)
        staging.rename(copy)
    if not _runnable_by(user, target / "initdb"):
        raise EmbeddedPostgresError(
            f"user {user.pw_name} cannot run the PostgreSQL binaries in {copy}"
        )
    return target


def _private_dir(path: Path, user: pwd.struct_passwd | None) -> None:
    """Create ``path`` (mode 0700) owned by ``user``; refuse a symlink or a stranger's directory."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise EmbeddedPostgresError(f"{path} exists and is not a directory") from None
        owners = {os.geteuid()} | ({user.pw_uid} if user is not None else set())
        if st.st_uid not in owners:
            raise EmbeddedPostgresError(
                f"{path} belongs to another user (uid {st.st_uid})"
            ) from None
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(0o700)


@dataclass(frozen=True, slots=True)
class _Layout:
    root: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def password_path(self) -> Path:
        return self.root / "superuser.password"


class EmbeddedPostgres:
    """A PostgreSQL cluster kept in a directory of the demo, started and stopped on demand.

    ``prepare()`` creates the cluster when it does not exist yet (``created`` tells which),
    ``start()`` starts it on a free port on 127.0.0.1, ``stop()`` stops it (fast shutdown).
    """

    superuser = "postgres"
    host = "127.0.0.1"

    def __init__(self, demo_dir: Path, *, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise EmbeddedPostgresError(
                "no PostgreSQL binaries found: install the pgserver package "
                f"(pip install pgserver) or set ${ENV_BINDIR} to a directory with initdb, pg_ctl and postgres"
            )
        self._user = server_user()
        self.bindir = usable_bindir(found, self._user)
        self.demo_dir = demo_dir.resolve()
        self._layout = _Layout(self._choose_root())
        # True when the cluster lives outside the demo directory (see _choose_root).
        self.relocated = self._layout.root != self.demo_dir / "postgres"
        self.port = 0
        self.created = False
        self._started = False

    # --- where ---------------------------------------------------------------------------

    def _choose_root(self) -> Path:
        preferred = self.demo_dir / "postgres"
        if self._user is None:
            return preferred
        _private_dir(preferred, self._user)
        if _reachable_by(self._user, preferred):
            return preferred
        # The server's OS user cannot traverse a parent of the demo directory: keep the
        # cluster in a directory of its own, one per demo directory.
        digest = hashlib.sha256(str(self.demo_dir).encode()).hexdigest()[:12]
        with contextlib.suppress(OSError):
            preferred.rmdir()
        return Path(tempfile.gettempdir()) / f"dbsentry-demo-pg-{digest}"

    @property
    def root(self) -> Path:
        """The directory holding the cluster (``data/``, ``server.log``)."""
        return self._layout.root

    @property
    def data_dir(self) -> Path:
        return self._layout.data_dir

    @property
    def log_path(self) -> Path:
        return self._layout.log_path

    @property
    def version(self) -> str:
        try:
            return (self.data_dir / "PG_VERSION").read_text().strip()
        except OSError:
            return "?"

    # --- running binaries ----------------------------------------------------------------

    def _run(
        self, args: list[str], *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user.pw_name, "--", *cmd]
        proc = subprocess.run(
            cmd,
            cwd=self.root,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            # Ctrl-C in the terminal must reach us, not pg_ctl halfway through a stop.
            start_new_session=True,
        )
        if check and proc.returncode != 0:
            raise EmbeddedPostgresError(
                f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}{self._log_tail()}"
            )
        return proc

    def _log_tail(self) -> str:
        try:
            return "\nserver log:\n" + self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _own(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def password(self) -> str:
        """The superuser's password (generated by ``prepare``)."""
        try:
            return self._layout.password_path.read_text().strip()
        except OSError as err:
            raise EmbeddedPostgresError(
                f"cannot read {self._layout.password_path}: {err}"
            ) from None

    def prepare(self) -> None:
        """Create the cluster if there is none yet; stop a server left running by a killed run."""
        _private_dir(self.root, self._user)
        if (self.data_dir / "PG_VERSION").exists() and self._layout.password_path.exists():
            if (
                self._run(["pg_ctl", "-D", str(self.data_dir), "status"], check=False).returncode
                == 0
            ):
                self._stop_server()
            return
        if self.data_dir.exists():  # a half-made cluster from an interrupted first run
            shutil.rmtree(self.data_dir)
        password = secrets.token_urlsafe(24)
        pwfile = self.root / "initdb.pw"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        try:
            self._run(
                [
                    "initdb",
                    "-D", str(self.data_dir),
                    "-U", self.superuser,
                    f"--pwfile={pwfile}",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                    "--no-instructions",
                ]
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "# dbsentry demo: TCP on 127.0.0.1 only, always with a password\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )
        self._own(hba)
        settings = {
            "listen_addresses": f"'{self.host}'",
            "unix_socket_directories": "''",
            # A demo database: losing the last transactions in a power cut is acceptable,
            # loading the dataset fast is not optional.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "64MB",
            "maintenance_work_mem": "64MB",
            "password_encryption": "'scram-sha-256'",
        }
        with (self.data_dir / "postgresql.conf").open("a") as fh:
            fh.write("\n# dbsentry demo settings\n")
            fh.writelines(f"{key} = {value}\n" for key, value in settings.items())
        path = self._layout.password_path
        path.write_text(password + "\n")
        path.chmod(0o600)
        self.created = True

    def start(self) -> None:
        """Start the server on a free port of 127.0.0.1 (``port`` tells which)."""
        last_error: Exception | None = None
        for _ in range(3):  # the free port may be taken between probe and bind
            self.port = free_port(self.host)
            try:
                self._run(
                    [
                        "pg_ctl",
                        "-D", str(self.data_dir),
                        "-l", str(self.log_path),
                        "-o", f"-p {self.port}",
                        "-w", "-t", "60",
                        "start",
                    ]
                )  # fmt: skip
            except EmbeddedPostgresError as exc:
                last_error = exc
                continue
            self._started = True
            return
        raise EmbeddedPostgresError(f"could not start PostgreSQL: {last_error}")

    def _stop_server(self) -> None:
        proc = self._run(
            ["pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop"],
            check=False,
        )
        if proc.returncode != 0:
            self._run(
                ["pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"], check=False
            )

    def stop(self) -> None:
        """Stop the server if this object started it (the files stay for the next run)."""
        if self._started:
            self._started = False
            self._stop_server()

    def __enter__(self) -> EmbeddedPostgres:
        self.prepare()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- connecting ----------------------------------------------------------------------

    def conninfo(
        self, dbname: str = "postgres", *, user: str | None = None, password: str | None = None
    ) -> dict[str, Any]:
        """Keyword arguments for ``psycopg.connect`` (the superuser's by default)."""
        return UpstreamAddress(self.host, self.port).conninfo(
            dbname,
            user=user or self.superuser,
            password=password if password is not None else self.password,
        )

    def connect(
        self, dbname: str = "postgres", *, user: str | None = None, password: str | None = None
    ) -> psycopg.Connection[Any]:
        """A direct connection to the server (autocommit), bypassing dbsentry."""
        return psycopg.connect(
            **self.conninfo(dbname, user=user, password=password), autocommit=True
        )

"""Real PostgreSQL servers for tests.

- ``find_postgres()`` returns a trust-auth server to run tests against: the machine's
  PostgreSQL on 127.0.0.1:5432 when it answers, otherwise an embedded server built from
  the binaries of the ``pgserver`` package, listening on 127.0.0.1 on a free port.
- ``AuthCluster`` is a throwaway cluster whose pg_hba.conf really demands passwords
  (scram-sha-256, md5, cleartext, trust, and TLS-only SCRAM), for testing how the proxy
  logs in upstream.

Both run the server as a non-root OS user when the tests run as root (PostgreSQL refuses
to run as root): ``postgres`` if it exists, otherwise ``nobody``.

Why not ``pgserver.get_server()``: it always starts the server with ``-h ""`` (unix socket
only), and when run as root it creates an OS user with ``useradd`` and loosens the
permissions of every parent directory up to ``/``.  We only borrow its binaries and keep
everything under one temporary directory.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import importlib.util
import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dbsentry.demo import embedded

__all__ = [
    "AuthCluster",
    "PgServer",
    "find_bindir",
    "find_postgres",
    "free_port",
]

_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")
# Set to a libpq connection string to use that server instead of probing for one.
ENV_DSN = "DBSENTRY_TEST_DSN"
# Set to a directory holding initdb/pg_ctl/postgres to pick the binaries.
ENV_BINDIR = "DBSENTRY_PG_BINDIR"


@dataclass(frozen=True)
class PgServer:
    """Where a PostgreSQL server listens and whom to log in as."""

    host: str
    port: int
    user: str
    dbname: str
    password: str | None = None

    def dsn(self, **overrides: Any) -> str:
        """A libpq key/value connection string; ``overrides`` replace or add keywords
        (``dbname="postgres"``, ``sslmode="require"``, ``password=None`` to drop one)."""
        params: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "dbname": self.dbname,
            "password": self.password,
            "connect_timeout": 10,
        }
        params.update(overrides)
        return make_conninfo("", **{k: v for k, v in params.items() if v is not None})

    @property
    def conninfo(self) -> str:
        """The connection string for psql (``psql "<conninfo>"``) or psycopg."""
        return self.dsn()

    def with_(self, **changes: Any) -> PgServer:
        """A copy with some fields changed (``server.with_(user="x", password="y")``)."""
        return replace(self, **changes)


# --------------------------------------------------------------------------------------
# Small helpers


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


#: What ``exclusive`` names for the tests that make, remove or count large objects.
LARGE_OBJECTS = "large objects"


@contextmanager
def exclusive(server: PgServer, what: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock named ``what`` on ``server`` for the block: tests
    that run at the same time (pytest-xdist workers, other checkouts) and touch the same
    database-wide thing (large objects, say) take turns."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(hashtext(%s))", (f"dbsentry-tests: {what}",))
        yield


def ensure_postgres_fdw(conn: psycopg.Connection[Any], server: PgServer) -> bool:
    """postgres_fdw installed in ``public`` (database-wide, never dropped: modules that run
    at the same time each make a loopback server with it, and one module dropping the
    extension with its schema would take the others' servers along); False when this
    PostgreSQL does not have it.  Created under a lock: two ``CREATE EXTENSION IF NOT
    EXISTS`` at once fail one of them."""
    available = conn.execute("select count(*) from pg_available_extensions where name = 'postgres_fdw'").fetchone()
    if available != (1,):
        return False
    with exclusive(server, "postgres_fdw"):
        conn.execute("create extension if not exists postgres_fdw schema public")
    return True


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _has_binaries(path: Path) -> bool:
    return all((path / name).is_file() and os.access(path / name, os.X_OK) for name in _REQUIRED_BINARIES)


def _version_key(path: Path) -> tuple[int, ...]:
    parts = path.parent.name.split(".")
    return tuple(int(p) for p in parts if p.isdigit())


def find_bindir(include_pgserver: bool = True) -> Path | None:
    """The directory of initdb/pg_ctl/postgres: $DBSENTRY_PG_BINDIR, ``pg_config
    --bindir``, /usr/lib/postgresql/<newest>/bin, PATH, then pgserver's bundled binaries."""
    candidates: list[Path] = []
    if os.environ.get(ENV_BINDIR):
        candidates.append(Path(os.environ[ENV_BINDIR]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.extend(
        sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    )
    candidates.extend(Path(p) for p in ("/usr/local/pgsql/bin", "/opt/homebrew/bin"))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for candidate in candidates:
        if _has_binaries(candidate):
            return candidate
    return _pgserver_bindir() if include_pgserver else None


def _pgserver_bindir() -> Path | None:
    # Locate the package without importing it: importing pgserver touches platformdirs'
    # runtime dir, which warns (an error under pytest) when XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if _has_binaries(path) else None


def _run_as_user() -> str | None:
    """The OS user to run the server as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


# --------------------------------------------------------------------------------------
# A temporary cluster: initdb, configure, start, stop, remove


@dataclass
class _TempCluster:
    """A PostgreSQL cluster living in one temporary directory."""

    bindir: Path
    hba_lines: list[str]
    settings: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    superuser: str = "postgres"
    prefix: str = "dbsentry-pg-"

    def __post_init__(self) -> None:
        self.os_user = _run_as_user()
        self.root = Path(tempfile.mkdtemp(prefix=self.prefix))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_path = self.root / "server.log"
        self.port = 0
        self._started = False
        self.socket_dir.mkdir()
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            self.root.chmod(0o755)
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
        else:
            self._uid, self._gid = os.getuid(), os.getgid()

    def chown(self, path: Path) -> None:
        os.chown(path, self._uid, self._gid)

    def run(self, args: list[str], *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the server's OS user."""
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.os_user is not None:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        proc = subprocess.run(
            cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}\n{self._log_tail()}"
            )
        return proc

    def _log_tail(self) -> str:
        try:
            return "server log:\n" + self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def write_file(self, path: Path, text: str, mode: int = 0o600) -> None:
        path.write_text(text)
        path.chmod(mode)
        self.chown(path)

    def initdb(self) -> None:
        self.run(
            [
                "initdb",
                "-D", str(self.data_dir),
                "-U", self.superuser,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ]
        )  # fmt: skip
        self.write_file(self.data_dir / "pg_hba.conf", "\n".join(self.hba_lines) + "\n")
        conf = {
            "listen_addresses": f"'{self.host}'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "40",
            "shared_buffers": "16MB",
            "log_connections": "on",
            **self.settings,
        }
        with (self.data_dir / "postgresql.conf").open("a") as fh:
            fh.write("\n# dbsentry test settings\n")
            fh.writelines(f"{key} = {value}\n" for key, value in conf.items())

    def start(self) -> None:
        last_error: Exception | None = None
        for _ in range(3):  # the free port may be taken between probe and bind
            self.port = free_port(self.host)
            try:
                self.run(
                    [
                        "pg_ctl",
                        "-D", str(self.data_dir),
                        "-l", str(self.log_path),
                        "-o", f"-p {self.port}",
                        "-w", "-t", "60",
                        "start",
                    ]
                )  # fmt: skip
            except RuntimeError as exc:
                last_error = exc
                continue
            self._started = True
            return
        raise RuntimeError(f"could not start PostgreSQL: {last_error}")

    def stop(self) -> None:
        if self._started:
            self._started = False
            proc = self.run(
                ["pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop"], check=False
            )
            if proc.returncode != 0:
                self.run(["pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def admin_connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """Superuser connection over the unix socket (local trust)."""
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=self.superuser,
            dbname=dbname,
            autocommit=True,
            connect_timeout=10,
        )


# --------------------------------------------------------------------------------------
# find_postgres


_lock = threading.Lock()
_embedded: _TempCluster | None = None


def _probe(server: PgServer) -> bool:
    if not _tcp_open(server.host, server.port):
        return False
    try:
        with psycopg.connect(server.dsn(connect_timeout=3)) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def _stop_embedded() -> None:
    global _embedded
    if _embedded is not None:
        _embedded.stop()
        _embedded = None


def _start_embedded() -> PgServer:
    global _embedded
    bindir = _pgserver_bindir() or find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL reachable on 127.0.0.1:5432 and no binaries to start one")
    # As root the server runs as another user, who may not reach a venv's binaries.
    bindir = embedded.usable_bindir(bindir, embedded.server_user())
    cluster = _TempCluster(
        bindir=bindir,
        hba_lines=[
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
        ],
        prefix="dbsentry-embedded-pg-",
    )
    try:
        cluster.initdb()
        cluster.start()
        with cluster.admin_connect() as conn:
            conn.execute("CREATE DATABASE test")
    except BaseException:
        cluster.stop()
        raise
    _embedded = cluster
    atexit.register(_stop_embedded)
    return PgServer(host=cluster.host, port=cluster.port, user="postgres", dbname="test")


@functools.cache
def find_postgres() -> PgServer:
    """A PostgreSQL server with trust auth for user ``postgres`` and a ``test`` database.

    Order: $DBSENTRY_TEST_DSN, the machine's server on 127.0.0.1:5432, an embedded
    server started from pgserver's binaries (stopped and removed at interpreter exit).
    Cached for the process.
    """
    with _lock:
        env = os.environ.get(ENV_DSN)
        if env:
            params = conninfo_to_dict(env)
            return PgServer(
                host=str(params.get("host", "127.0.0.1")),
                port=int(str(params.get("port") or 5432)),
                user=str(params.get("user", "postgres")),
                dbname=str(params.get("dbname", "test")),
                password=str(params["password"]) if "password" in params else None,
            )
        local = PgServer(host="127.0.0.1", port=5432, user="postgres", dbname="test")
        if _probe(local):
            return local
        return _start_embedded()


# --------------------------------------------------------------------------------------
# AuthCluster


def _generate_tls(directory: Path, hostnames: Iterable[str]) -> tuple[Path, Path, Path]:
    """Write ca.crt, server.crt and server.key (EC P-256, SHA-256 signatures)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dbsentry test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    sans: list[x509.GeneralName] = []
    for name in hostnames:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    ca_path, cert_path, key_path = directory / "ca.crt", directory / "server.crt", directory / "server.key"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ca_path.chmod(0o644)
    cert_path.chmod(0o644)
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


class AuthCluster:
    """A throwaway PostgreSQL cluster whose pg_hba.conf demands real authentication.

    Roles (all ``LOGIN``, connecting over TCP to 127.0.0.1):

    ==============  =====================================================================
    ``scram_user``  ``scram-sha-256``
    ``md5_user``    ``md5`` (password stored as an MD5 hash, so the server asks for MD5)
    ``clear_user``  ``password`` (cleartext)
    ``trust_user``  ``trust``
    ``tls_user``    ``scram-sha-256`` on ``hostssl`` only; rejected without TLS
                    (only when ``ssl=True``)
    ``postgres``    superuser; trust over the unix socket, ``scram-sha-256`` over TCP
    ==============  =====================================================================

    Any other role a test creates needs ``scram-sha-256`` over TCP.  Use as a context
    manager; it skips the test (``pytest.skip``) when no PostgreSQL binaries are found.
    """

    ROLES_AND_METHODS: dict[str, str] = {
        "scram_user": "scram-sha-256",
        "md5_user": "md5",
        "clear_user": "password",
        "trust_user": "trust",
        "tls_user": "scram-sha-256",
    }

    def __init__(self, *, ssl: bool = False, bindir: Path | None = None) -> None:
        self.ssl = ssl
        self._bindir = bindir
        self.host = "127.0.0.1"
        self.port = 0
        self.dbname = "postgres"
        self.superuser = "postgres"
        self.passwords: dict[str, str] = {
            "scram_user": "scram-pass-S3cret",
            "md5_user": "md5-pass-S3cret",
            "clear_user": "clear-pass-S3cret",
            "tls_user": "tls-pass-S3cret",
            "postgres": "super-pass-S3cret",
        }
        self.ca_path: Path | None = None
        self.cert_path: Path | None = None
        self.key_path: Path | None = None
        self._cluster: _TempCluster | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> AuthCluster:
        bindir = self._bindir or find_bindir()
        if bindir is None:
            pytest.skip(
                "AuthCluster needs PostgreSQL server binaries (initdb, pg_ctl, postgres); "
                f"none found via ${ENV_BINDIR}, pg_config, /usr/lib/postgresql or pgserver"
            )
        try:
            self._start(bindir)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the server and remove its files."""
        if self._cluster is not None:
            self._cluster.stop()
            self._cluster = None

    def _hba_lines(self) -> list[str]:
        net = "127.0.0.1/32"
        lines = [
            "# TYPE     DATABASE USER        ADDRESS  METHOD",
            "local      all      postgres             trust",
            "local      all      all                  reject",
        ]
        if self.ssl:
            lines += [
                f"hostssl    all      tls_user    {net}  scram-sha-256",
                f"hostnossl  all      tls_user    {net}  reject",
            ]
        else:
            lines.append(f"host       all      tls_user    {net}  reject")
        lines += [
            f"host       all      scram_user  {net}  scram-sha-256",
            f"host       all      md5_user    {net}  md5",
            f"host       all      clear_user  {net}  password",
            f"host       all      trust_user  {net}  trust",
            f"host       all      all         {net}  scram-sha-256",
        ]
        return lines

    def _start(self, bindir: Path) -> None:
        settings: dict[str, str] = {"password_encryption": "'scram-sha-256'"}
        self._cluster = cluster = _TempCluster(
            bindir=bindir, hba_lines=self._hba_lines(), settings=settings, prefix="dbsentry-auth-pg-"
        )
        if self.ssl:
            tls_dir = cluster.root / "tls"
            tls_dir.mkdir()
            tls_dir.chmod(0o755)
            cluster.chown(tls_dir)
            self.ca_path, self.cert_path, self.key_path = _generate_tls(
                tls_dir, ["localhost", "127.0.0.1"]
            )
            for path in (self.ca_path, self.cert_path, self.key_path):
                cluster.chown(path)
            settings.update(
                {
                    "ssl": "on",
                    "ssl_cert_file": f"'{self.cert_path}'",
                    "ssl_key_file": f"'{self.key_path}'",
                    "ssl_ca_file": f"'{self.ca_path}'",
                }
            )
        cluster.initdb()
        cluster.start()
        self.port = cluster.port
        with cluster.admin_connect() as conn:
            conn.execute("SET password_encryption = 'scram-sha-256'")
            for role in ("scram_user", "clear_user", "tls_user"):
                conn.execute(self._create_role_sql(role, self.passwords[role]))
            conn.execute("CREATE ROLE trust_user LOGIN")
            conn.execute(self._alter_password_sql("postgres", self.passwords["postgres"]))
            conn.execute("SET password_encryption = 'md5'")
            conn.execute(self._create_role_sql("md5_user", self.passwords["md5_user"]))

    @staticmethod
    def _create_role_sql(role: str, password: str) -> psycopg.sql.Composed:
        from psycopg import sql

        return sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        )

    @staticmethod
    def _alter_password_sql(role: str, password: str) -> psycopg.sql.Composed:
        from psycopg import sql

        return sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))

    # -- access ------------------------------------------------------------------------

    @property
    def _running(self) -> _TempCluster:
        if self._cluster is None:
            raise RuntimeError("AuthCluster is not running; use it as a context manager")
        return self._cluster

    @property
    def socket_dir(self) -> Path:
        """Directory of the unix socket (superuser trust)."""
        return self._running.socket_dir

    @property
    def data_dir(self) -> Path:
        return self._running.data_dir

    @property
    def log_path(self) -> Path:
        return self._running.log_path

    def server(self, user: str, password: str | None = None, dbname: str | None = None) -> PgServer:
        """A ``PgServer`` for ``user`` over TCP, with that role's password by default."""
        if password is None:
            password = self.passwords.get(user)
        return PgServer(
            host=self.host, port=self.port, user=user, dbname=dbname or self.dbname, password=password
        )

    def dsn(self, user: str, **overrides: Any) -> str:
        """libpq connection string for ``user`` over TCP (password included)."""
        return self.server(user).dsn(**overrides)

    def admin_connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """Superuser connection over the unix socket, autocommit."""
        return self._running.admin_connect(dbname)

    def create_role(self, role: str, password: str, *, encryption: str = "scram-sha-256") -> None:
        """Create an extra LOGIN role; it authenticates with scram-sha-256 over TCP."""
        with self.admin_connect() as conn:
            conn.execute("SELECT set_config('password_encryption', %s, false)", (encryption,))
            conn.execute(self._create_role_sql(role, password))
        self.passwords[role] = password

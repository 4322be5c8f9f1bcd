"""The demo's MySQL/MariaDB leg: the same shop behind dbsentry's MySQL listener.

It runs when a MySQL or MariaDB server is reachable: ``DBSENTRY_DEMO_MYSQL``
(``mysql://user:password@host:port``, an account that may create a database and a user),
or else ``root`` without a password on 127.0.0.1:3306, the way a fresh local MariaDB is set
up.  Nothing reachable: the demo says so in one line and runs without it.

The leg creates the database ``dbsentry_demo_shop`` and an account ``dbsentry_demo_<8 hex>``
for the demo's directory (a generated password, kept in that directory, privileges on that
database only: the proxy never holds the administrator's credentials), loads a smaller copy of the shop
(the same generated customers as PostgreSQL's) and adds the connection ``prod_mysql``
(production) served by ``listen.mysql``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dbsentry.demo.dataset import DATASET_VERSION, Shop, customers

__all__ = [
    "DATABASE",
    "ENV",
    "MYSQL_CONNECTION",
    "MYSQL_SHOP",
    "MySQLServer",
    "connection_config",
    "ensure_mysql_data",
    "find_mysql",
    "mysql_command",
]

ENV = "DBSENTRY_DEMO_MYSQL"
DEFAULT_URL = "mysql://root@127.0.0.1:3306"
DATABASE = "dbsentry_demo_shop"
ACCOUNT_PREFIX = "dbsentry_demo_"
MYSQL_CONNECTION = "prod_mysql"
MYSQL_SHOP = Shop(customers=5_000, orders=20_000)
_MARKER = f"dbsentry demo dataset v{DATASET_VERSION}: {MYSQL_SHOP.customers} customers, {MYSQL_SHOP.orders} orders"

_SCHEMA = (
    "CREATE TABLE customers ("
    " id BIGINT PRIMARY KEY,"
    " full_name VARCHAR(200) NOT NULL,"
    " email VARCHAR(200) NOT NULL UNIQUE,"
    " phone VARCHAR(40),"
    " date_of_birth DATE,"
    " ssn VARCHAR(11) COMMENT 'US social security number',"
    " card_number VARCHAR(19),"
    " iban VARCHAR(34),"
    " address VARCHAR(200),"
    " city VARCHAR(100),"
    " country CHAR(2) NOT NULL,"
    " created_at DATETIME NOT NULL,"
    " notes VARCHAR(200)"
    ") DEFAULT CHARSET=utf8mb4 COMMENT='Shop customers (generated demo data: every person is fictional)'",
    "CREATE TABLE orders ("
    " id BIGINT PRIMARY KEY,"
    " customer_id BIGINT NOT NULL,"
    " amount DECIMAL(12, 2) NOT NULL,"
    " status VARCHAR(20) NOT NULL,"
    " created_at DATETIME NOT NULL,"
    " KEY orders_customer_id (customer_id)"
    ")",
    "CREATE VIEW customer_contacts AS SELECT full_name, email, phone FROM customers",
    "CREATE TABLE demo_marker (marker VARCHAR(200) NOT NULL)",
)
_ORDERS_START = dt.datetime(2020, 1, 1)
_STATUSES = ("delivered", "delivered", "delivered", "shipped", "paid", "pending", "refunded", "cancelled")


@dataclass(frozen=True, slots=True)
class MySQLServer:
    host: str
    port: int
    user: str
    password: str
    version: str = ""

    def connect(self, database: str | None = None, **extra: Any) -> Any:
        import pymysql

        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=database,
            connect_timeout=3,
            autocommit=True,
            charset="utf8mb4",
            **extra,
        )


def parse_url(url: str) -> MySQLServer:
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb") or not parts.hostname:
        raise ValueError(f"{ENV} must look like mysql://user:password@host:port, not {url!r}")
    return MySQLServer(
        parts.hostname,
        parts.port or 3306,
        unquote(parts.username or "root"),
        unquote(parts.password or ""),
    )


def find_mysql() -> tuple[MySQLServer | None, str]:
    """The server to use and a line saying what was found (or why the leg is skipped)."""
    url = os.environ.get(ENV) or DEFAULT_URL
    where = f"${ENV}" if os.environ.get(ENV) else "127.0.0.1:3306 (root, no password)"
    try:
        server = parse_url(url)
    except ValueError as err:
        return None, f"MySQL leg skipped: {err}"
    try:
        import pymysql
    except ImportError:  # pragma: no cover - a dependency of dbsentry
        return None, "MySQL leg skipped: PyMySQL is not installed"
    try:
        conn = server.connect()
    except pymysql.Error as err:
        reason = err.args[1] if len(err.args) > 1 else str(err)
        return None, (
            f"MySQL leg skipped: no MySQL/MariaDB server answered at {where} ({reason}); "
            f"set {ENV}=mysql://user:password@host:port to use one"
        )
    with conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        row = cur.fetchone()
    version = str(row[0]) if row else "?"
    found = MySQLServer(server.host, server.port, server.user, server.password, version)
    return found, f"MySQL/MariaDB {version} on {server.host}:{server.port}"


def account_password(path: Path) -> str:
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
    return path.read_text().strip()


def _loaded(cur: Any) -> bool:
    import pymysql

    try:
        cur.execute(f"SELECT marker FROM `{DATABASE}`.demo_marker")
    except pymysql.MySQLError:  # no database or table yet: not loaded
        return False
    row = cur.fetchone()
    return row is not None and row[0] == _MARKER


_HOSTS = ("%", "localhost")  # MariaDB matches 'localhost' before '%' for local clients


def account_for(directory: Path) -> str:
    """The proxy's MySQL account for the demo in ``directory``: one per demo directory, so
    that two demos on one server never reset each other's password."""
    return ACCOUNT_PREFIX + hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:8]


def _grant(cur: Any, account: str) -> None:
    for host in _HOSTS:
        cur.execute(f"GRANT ALL PRIVILEGES ON `{DATABASE}`.* TO '{account}'@'{host}'")


def ensure_mysql_data(server: MySQLServer, password_path: Path, progress: Any = None) -> bool:
    """The account of the demo whose password file is ``password_path`` and the loaded
    database; True when it was (re)loaded now."""
    password = account_password(password_path)
    user = account_for(password_path.parent)
    with server.connect() as conn, conn.cursor() as cur:
        # The proxy's own account: this database only, never the administrator's.
        for host in _HOSTS:
            account = f"'{user}'@'{host.replace('%', '%%')}'"  # (% is PyMySQL's placeholder sign)
            cur.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY %s", (password,))
            cur.execute(f"ALTER USER {account} IDENTIFIED BY %s", (password,))
        if _loaded(cur):
            _grant(cur, user)
            return False
        if progress is not None:
            progress(f"loading {DATABASE} on MySQL: {MYSQL_SHOP.customers:,} customers, {MYSQL_SHOP.orders:,} orders")
        cur.execute(f"DROP DATABASE IF EXISTS `{DATABASE}`")
        cur.execute(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4")
        _grant(cur, user)
        cur.execute(f"USE `{DATABASE}`")
        conn.autocommit(False)  # one transaction for the rows: a commit per row is slow
        for statement in _SCHEMA:
            cur.execute(statement)
        rows = [
            (c.id, c.full_name, c.email, c.phone, c.date_of_birth, c.ssn, c.card_number, c.iban,
             c.address, c.city, c.country, c.created_at.replace(tzinfo=None), c.notes)
            for c in customers(MYSQL_SHOP.customers)
        ]  # fmt: skip
        insert = (
            "INSERT INTO customers (id, full_name, email, phone, date_of_birth, ssn, card_number, iban, "
            "address, city, country, created_at, notes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
        for i in range(0, len(rows), 1000):
            cur.executemany(insert, rows[i : i + 1000])
        orders = [
            (
                g,
                1 + (g * 7919 + g // 3) % MYSQL_SHOP.customers,
                f"{5 + (g * 7919) % 49500 / 100:.2f}",
                _STATUSES[(g * 13) % 8],
                _ORDERS_START + dt.timedelta(seconds=(g * 104729) % 189216000),
            )
            for g in range(1, MYSQL_SHOP.orders + 1)
        ]
        for i in range(0, len(orders), 2000):
            cur.executemany(
                "INSERT INTO orders (id, customer_id, amount, status, created_at) VALUES (%s, %s, %s, %s, %s)",
                orders[i : i + 2000],
            )
        cur.execute("INSERT INTO demo_marker VALUES (%s)", (_MARKER,))
        conn.commit()
    return True


def connection_config(server: MySQLServer, password_file: Path) -> dict[str, Any]:
    """The ``prod_mysql`` connection of the demo's configuration (``password_file`` is
    next to it)."""
    return {
        "engine": "mysql",
        "host": server.host,
        "port": server.port,
        "database": DATABASE,
        "user": account_for(password_file.parent),
        "password_file": password_file.name,
        "environment": "production",
    }


def mysql_command(host: str, port: int, identity: str, token: str) -> str:
    """How to connect with the mariadb/mysql client (the token is the password; TLS)."""
    return (
        f"mariadb -h {host} -P {port} -u {identity} -p{token} --ssl --ssl-verify-server-cert=0 "
        f"{MYSQL_CONNECTION}"
    )

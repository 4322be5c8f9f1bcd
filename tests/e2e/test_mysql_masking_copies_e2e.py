"""Copies of classified MySQL data keep their class, through a running dbsentry to the real
MariaDB: an exempt identity copies person names (classified by a column comment, which no
value detection finds in the copy) into a new table (CREATE TABLE ... AS SELECT) and into
an existing one (INSERT ... SELECT); a masked identity then reads both copies masked, in
another session and after the proxy restarted. A copy that failed classifies nothing; a
masked identity's copy within one table is masked when read back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from support.mysql import (
    MySQLProxy,
    root_connect,
    run_mysql_proxy,
    server_reason,
)

_REASON = server_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]
pymysql = pytest.importorskip("pymysql")

MASKED = ("eve@example.com", ("eng",), False)
EXEMPT = ("rita@example.com", ("eng", "pii-readers"), False)
NAMES = ["Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra"]
CITIES = ["London", "Arlington", "Wilmslow", "Nuenen"]


def connect(mp: MySQLProxy, who: tuple[str, tuple[str, ...], bool]) -> Any:
    name, groups, agent = who
    return pymysql.connect(
        host="127.0.0.1", port=mp.port, user=name, password=mp.token(name, groups, agent), database="dev",
        ssl={"check_hostname": False, "verify_mode": 0}, connect_timeout=10, autocommit=True,
    )


@pytest.fixture
def tables() -> Iterator[dict[str, str]]:
    s = uuid.uuid4().hex[:8]
    names = {"src": f"mstaff_{s}", "new": f"mstaffnew_{s}", "old": f"mstaffold_{s}", "dup": f"mstaffdup_{s}"}
    setup = [
        f"CREATE TABLE {names['src']} (id INT PRIMARY KEY, holder VARCHAR(60) COMMENT 'pii:person_name', town VARCHAR(40))",
        f"CREATE TABLE {names['old']} (id INT PRIMARY KEY, txt VARCHAR(60), town VARCHAR(40))",
        f"CREATE TABLE {names['dup']} (id INT PRIMARY KEY, txt VARCHAR(60))",
        f"INSERT INTO {names['dup']} VALUES (1, 'plain words')",
    ]
    with root_connect() as conn, conn.cursor() as cur:
        for sql in setup:
            cur.execute(sql)
        cur.executemany(f"INSERT INTO {names['src']} VALUES (%s, %s, %s)", list(zip(range(1, 5), NAMES, CITIES, strict=True)))
    try:
        yield names
    finally:
        with root_connect() as conn, conn.cursor() as cur:
            for t in names.values():
                cur.execute(f"DROP TABLE IF EXISTS {t}")


def _read(mp: MySQLProxy, sql: str) -> list[tuple[Any, ...]]:
    with connect(mp, MASKED) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def _assert_masked(rows: list[tuple[Any, ...]]) -> None:
    assert len(rows) == len(NAMES)
    text = repr(rows)
    assert not [n for n in NAMES if n in text or n.split()[1] in text], rows
    assert [r[2] for r in rows] == CITIES  # unclassified: as stored


def test_copies_of_person_names_stay_masked(tmp_path: Any, tables: dict[str, str]) -> None:
    src, new, old, dup = tables["src"], tables["new"], tables["old"], tables["dup"]
    with run_mysql_proxy(tmp_path) as mp:
        # the source itself is masked (by its comment), the copies' targets are not yet
        assert "Ada Lovelace" not in repr(_read(mp, f"SELECT id, holder, town FROM {src} ORDER BY id"))
        with connect(mp, EXEMPT) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {new} AS SELECT id, holder AS who, town FROM {src}")
            cur.execute(f"INSERT INTO {old} (id, txt, town) SELECT id, holder, town FROM {src}")
            with pytest.raises(pymysql.err.IntegrityError):  # id 1 exists: nothing is copied
                cur.execute(f"INSERT INTO {dup} (id, txt) SELECT id, holder FROM {src}")
            cur.execute(f"SELECT who FROM {new} ORDER BY id")
            assert [r[0] for r in cur.fetchall()] == NAMES  # exempt: real values
        _assert_masked(_read(mp, f"SELECT id, who, town FROM {new} ORDER BY id"))
        _assert_masked(_read(mp, f"SELECT id, txt, town FROM {old} ORDER BY id"))
        assert _read(mp, f"SELECT id, txt FROM {dup}") == [(1, "plain words")]
    with run_mysql_proxy(tmp_path) as mp:  # the same state directory: restarted
        _assert_masked(_read(mp, f"SELECT id, who, town FROM {new} ORDER BY id"))
        _assert_masked(_read(mp, f"SELECT * FROM {old} ORDER BY id"))
        assert _read(mp, f"SELECT id, txt FROM {dup}") == [(1, "plain words")]
        # a masked identity may copy within a table: the column it copied into is masked too
        with connect(mp, MASKED) as conn, conn.cursor() as cur:
            cur.execute(f"UPDATE {src} SET town = holder WHERE id = 1")
        (row,) = _read(mp, f"SELECT town FROM {src} WHERE id = 1")
        assert row[0] and "Lovelace" not in row[0]

"""Classification from values, through a running dbsentry to the real PostgreSQL.

The tables are created directly upstream *before* the proxy starts, with column names
that say nothing (``card``, ``contact``, ``c1``, ``data``, ``tags``, ``notes``, ``blob``),
so only the values the proxy samples when it reads the catalog can classify them.  Every
statement runs through psql, psycopg (text, binary, pipeline) and asyncpg, and as COPY in
text and CSV: a masked identity must get none of the real values (in any spelling: see
``support.leaks``), a member of ``pii-readers`` must get them all, and the harmless
columns must come back unchanged for both.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from dbsentry.masking.detect import detect_value
from support.guard_clients import Login, Outcome, run
from support.leaks import Secrets
from support.pg import PgServer
from support.proxy import RunningProxy, dbsentry_cli, run_proxy, write_config

pytestmark = pytest.mark.e2e

MASKED = Login("eve@example.com", ("eng",))
READER = Login("rita@example.com", ("eng", "pii-readers"))
MODES = ("psql", "psycopg", "psycopg-binary", "psycopg-pipeline", "asyncpg")


def _luhn_complete(prefix: str, length: int = 16) -> str:
    """``prefix`` and random-looking digits up to ``length`` - 1, plus the Luhn digit."""
    body = (prefix + "731904826153974")[: length - 1]
    for check in "0123456789":
        digits = body + check
        total = 0
        for i, ch in enumerate(reversed(digits)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return digits
    raise AssertionError("unreachable")


CARDS = ["4539 1488 0343 6467", "5555 5555 5555 4444", "4916 3385 0608 2832", "3782 822463 10005"]
EMAILS = ["wilhelmina.c@example.com", "bartholomew@corp.example.org", "maximilian@example.net", "ottoline.m@example.com"]  # fmt: skip
C1 = ["seraphina.k@mail.example.com", "theodora.v@example.org", "leopoldine@example.net", "evangeline@example.com"]  # fmt: skip
SSNS = ["536-22-8714", "471-93-2605", "219-45-1234", "318-62-9055"]
JSON_EMAILS = ["cornelius.j@example.com", "gwendolyn.p@example.org", "archibald@example.net", "philippa.r@example.com"]  # fmt: skip
TAGS = ["fitzgerald.o@example.com", "millicent.b@example.org", "ignatius.w@example.net", "rosalind.t@example.com"]  # fmt: skip
BLOBS = ["hieronymus@example.com", "wilhelmus.d@example.org", "anastasia.q@example.net", "barnabas.e@example.com"]  # fmt: skip
NOTE_EMAIL = "clementine.h@example.org"
NOTE_CARD = _luhn_complete("49290")
NOTE = f"Called back; reach her at {NOTE_EMAIL}, paid with {NOTE_CARD[:4]} {NOTE_CARD[4:8]} {NOTE_CARD[8:12]} {NOTE_CARD[12:]} today"  # fmt: skip
HARMLESS_NOTES = ["prefers morning calls", "asked about the invoice", "no answer", "left a voicemail"]
HR_SSNS = ["412-55-1290", "523-71-4468", "634-18-2207", "145-62-7783"]
PUBLIC_REFS = ["R-0001", "R-0002", "R-0003", "R-0004"]
# Order numbers: 16 digits, half of them pass the Luhn check and a card issuer range by
# chance; as many of the same shape fail, so they are numbers, not cards.
_LUCKY = [_luhn_complete("4000"), _luhn_complete("5100")]
ORDERS = [_LUCKY[0], _LUCKY[0][:-1] + str((int(_LUCKY[0][-1]) + 1) % 10), _LUCKY[1], _LUCKY[1][:-1] + str((int(_LUCKY[1][-1]) + 3) % 10)]  # fmt: skip

WEIRD = ["aloysius.q@example.com", "drusilla.p@example.org", "eustace.n@example.net"]

SECRETS = Secrets(
    [*CARDS, *EMAILS, *C1, *SSNS, *JSON_EMAILS, *TAGS, *BLOBS, NOTE_EMAIL, NOTE_CARD, *HR_SSNS, *WEIRD]
)


@dataclass(frozen=True)
class Names:
    t: str
    hr: str  # schema of the sensitive same-named table
    staff: str  # the table name used in both schemas
    person: str  # composite type

    def sql(self, text: str) -> str:
        return (
            text.replace("{T}", self.t)
            .replace("{HR}", self.hr)
            .replace("{STAFF}", self.staff)
            .replace("{PERSON}", self.person)
        )


def _create(pg: PgServer) -> Names:
    sfx = uuid.uuid4().hex[:8]
    n = Names(f"vals_{sfx}", f"hr_{sfx}", f"staff_{sfx}", f"person_{sfx}")
    assert [detect_value(o) for o in ORDERS] == ["payment_card", None, "payment_card", None]
    assert all(detect_value(v) == "payment_card" for v in [*CARDS, NOTE_CARD])
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(n.sql("create type {PERSON} as (nick text, ssn text)"))
        conn.execute(
            n.sql(
                """create table {T} (id int primary key, card text, contact text, c1 varchar(80),
                data jsonb, p {PERSON}, tags text[], notes text, blob bytea, order_no text,
                ref text)"""
            )
        )
        with conn.cursor() as cur:
            for i in range(4):
                cur.execute(
                    n.sql(
                        "insert into {T} values (%s, %s, %s, %s, %s, row(%s, %s)::{PERSON}, %s,"
                        " %s, convert_to(%s, 'UTF8'), %s, %s)"
                    ),
                    (
                        i + 1,
                        CARDS[i],
                        EMAILS[i],
                        C1[i],
                        orjson.dumps({"ssn": SSNS[i], "email": JSON_EMAILS[i], "plan": f"gold-{i}"}).decode(),
                        f"nick{i}",
                        SSNS[i],
                        [TAGS[i]],
                        NOTE if i == 2 else HARMLESS_NOTES[i],
                        BLOBS[i],
                        ORDERS[i],
                        f"ref-{i}",
                    ),
                )
        conn.execute(n.sql("create view {T}_v as select id, notes, c1, data, tags from {T}"))
        conn.execute(n.sql("create materialized view {T}_mv as select id, card, contact from {T}"))
        conn.execute(n.sql("create schema {HR}"))
        # identifiers that need quoting: the sample query must quote them
        conn.execute(n.sql('create table {HR}."we ""ird" (id int, "co""l" text, "Mixed Case" text)'))
        for i in range(3):
            conn.execute(
                n.sql('insert into {HR}."we ""ird" values (%s, %s, %s)'), (i, WEIRD[i], f"ok {i}")
            )
        conn.execute(n.sql("create table {HR}.{STAFF} (id int, ref text)"))
        conn.execute(n.sql("create table public.{STAFF} (id int, ref text)"))
        for i in range(4):
            conn.execute(n.sql("insert into {HR}.{STAFF} values (%s, %s)"), (i, HR_SSNS[i]))
            conn.execute(n.sql("insert into public.{STAFF} values (%s, %s)"), (i, PUBLIC_REFS[i]))
    return n


def _drop(pg: PgServer, n: Names) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(n.sql("drop table if exists {T} cascade"))
        conn.execute(n.sql("drop type if exists {PERSON}"))
        conn.execute(n.sql("drop schema if exists {HR} cascade"))
        conn.execute(n.sql("drop table if exists public.{STAFF}"))


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    names: Names
    pg: PgServer


@pytest.fixture(scope="module")
def env(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    names = _create(pg_server)
    try:
        # The safety net is off (what is masked here is classification's doing), and so is
        # masking.predicates: what is returned must be masked whatever it refuses (ORDER BY
        # a masked document's keys); test_masking_inference.py covers the refusals.
        config = write_config(
            tmp_path_factory.mktemp("masking_values"),
            pg_server,
            extra={"masking": {"safety_net": "off", "predicates": "allow"}},
        )
        with run_proxy(config) as proxy:
            yield Env(proxy, names, pg_server)
    finally:
        _drop(pg_server, names)


def _ok(outcomes: list[Outcome]) -> list[Outcome]:
    for o in outcomes:
        assert o.ok, str(o)
    return outcomes


# ---------------------------------------------------------------------- what leaks

# Each reads values that only their values classify; the real values must not come back.
READS = [
    "select id, card, contact, c1 from {T} order by id",
    "select upper(card), lower(contact) || '!', reverse(c1) from {T} order by id",
    "select data->>'ssn', data->>'email', data #>> '{email}' from {T} order by id",
    "select data from {T} order by id",
    "select e.key, e.value from {T}, jsonb_each_text({T}.data) as e order by 1, 2",
    "select jsonb_path_query(data, '$.ssn')::text, jsonb_path_query(data, '$.email') #>> '{}' from {T}",
    "select data::text, md5(data->>'ssn'), encode(convert_to(data->>'email', 'UTF8'), 'base64') from {T}",
    "select (p).ssn, (p).nick, p::text from {T} order by id",
    "select tags[1], array_to_string(tags, ',') from {T} order by id",
    "select unnest(tags) from {T}",
    "select convert_from(blob, 'UTF8'), blob, encode(blob, 'hex') from {T} order by id",
    "select notes from {T} order by id",
    "select string_agg(notes, ' | ') from {T}",
    "select ref from {HR}.{STAFF} order by id",
    "select s.ref, upper(s.ref) from {HR}.{STAFF} s order by id",
    # through a view and a materialized view
    "select notes, c1, data->>'email', tags[1] from {T}_v order by id",
    "select * from {T}_mv order by id",
    # identifiers that need quoting
    'select "co""l", "Mixed Case" from {HR}."we ""ird" order by id',
]


# Reads of the text[] column itself.
ARRAY_READS = [
    "select * from {T} order by id",
    "select tags, tags[1] from {T} order by id",
]
@pytest.mark.parametrize("mode", MODES)
def test_a_masked_identity_gets_no_sampled_value(env: Env, mode: str) -> None:
    outcomes = _ok(run(mode, env.proxy, [env.names.sql(s) for s in READS], MASKED))
    for o in outcomes:
        SECRETS.assert_no_leak(o.rows, context=f"{mode}: {o.sql}")
        assert o.rows, str(o)


@pytest.mark.parametrize("mode", MODES)
def test_a_masked_identity_gets_no_value_of_an_array(env: Env, mode: str) -> None:
    outcomes = _ok(run(mode, env.proxy, [env.names.sql(s) for s in ARRAY_READS], MASKED))
    for o in outcomes:
        SECRETS.assert_no_leak(o.rows, context=f"{mode}: {o.sql}")
        assert o.rows, str(o)


@pytest.mark.parametrize("mode", MODES)
def test_pii_readers_see_the_real_values(env: Env, mode: str) -> None:
    n = env.names
    statements = [
        "select card, contact, c1 from {T} order by id",
        "select data->>'ssn', data->>'email' from {T} order by id",
        "select (p).ssn, tags[1], convert_from(blob, 'UTF8'), notes from {T} order by id",
        "select ref from {HR}.{STAFF} order by id",
    ]
    o1, o2, o3, o4 = _ok(run(mode, env.proxy, [n.sql(s) for s in statements], READER))
    assert [tuple(r) for r in o1.rows] == list(zip(CARDS, EMAILS, C1, strict=True))
    assert [tuple(r) for r in o2.rows] == list(zip(SSNS, JSON_EMAILS, strict=True))
    notes = [NOTE if i == 2 else HARMLESS_NOTES[i] for i in range(4)]
    assert [tuple(r) for r in o3.rows] == list(zip(SSNS, TAGS, BLOBS, notes, strict=True))
    assert [r[0] for r in o4.rows] == HR_SSNS


@pytest.mark.parametrize("mode", MODES)
def test_harmless_columns_are_unchanged(env: Env, mode: str) -> None:
    n = env.names
    statements = [
        "select id, order_no, ref, data->>'plan', (p).nick from {T} order by id",
        "select ref from public.{STAFF} order by id",
        "select notes from {T} where id <> 3 order by id",
        'select "Mixed Case" from {HR}."we ""ird" order by id',
    ]
    for login in (MASKED, READER):
        o1, o2, o3, o4 = _ok(run(mode, env.proxy, [n.sql(s) for s in statements], login))
        assert [r[0] for r in o4.rows] == ["ok 0", "ok 1", "ok 2"]
        # order numbers: some pass the card checks by chance, the column is not cards
        assert [r[:3] for r in o1.rows] == [(str(i + 1), ORDERS[i], f"ref-{i}") for i in range(4)]
        assert [r[0] for r in o2.rows] == PUBLIC_REFS
        assert [r[0] for r in o3.rows] == [HARMLESS_NOTES[i] for i in (0, 1, 3)]
        if login is READER:
            assert [r[3:] for r in o1.rows] == [(f"gold-{i}", f"nick{i}") for i in range(4)]


@pytest.mark.parametrize("mode", MODES)
def test_free_text_is_scanned_not_replaced(env: Env, mode: str) -> None:
    """A note with an email and a card inside: the spans are masked, the note is not lost."""
    (o,) = _ok(run(mode, env.proxy, [env.names.sql("select notes from {T} where id = 3")], MASKED))
    value = o.rows[0][0]
    SECRETS.assert_no_leak(value)
    assert value is not None and "Called back" in value and "today" in value, value


# ---------------------------------------------------------------------- COPY

COPIES = [
    "copy {T} to stdout",
    "copy {T} to stdout with (format csv, header)",
    "copy (select card, contact, c1, data, notes, convert_from(blob, 'UTF8') from {T}) to stdout",
    "copy (select card, contact, c1, data->>'ssn', (p).ssn, tags from {T}) to stdout with (format csv)",
    "copy {HR}.{STAFF} to stdout with (format csv)",
]


def _copy(dsn: str, sql: str) -> str:
    with (
        psycopg.connect(dsn, autocommit=True) as conn,
        conn.cursor() as cur,
        cur.copy(sql) as copy,
    ):
        return b"".join(bytes(chunk) for chunk in copy).decode()


@pytest.mark.parametrize("sql", COPIES)
def test_copy_is_masked_for_a_masked_identity(env: Env, sql: str) -> None:
    statement = env.names.sql(sql)
    masked = _copy(env.proxy.dsn(MASKED.identity, groups=MASKED.groups), statement)
    SECRETS.assert_no_leak(masked, context=statement)
    assert masked.strip()
    (o,) = _ok(run("psql", env.proxy, [statement], MASKED))
    SECRETS.assert_no_leak(o.rows, context=f"psql: {statement}")
    real = _copy(env.proxy.dsn(READER.identity, groups=READER.groups), statement)
    assert SECRETS.leaks(real), "pii-readers get the real values"


def test_copy_through_asyncpg(env: Env) -> None:
    n = env.names
    sql = n.sql("copy (select card, contact, c1, data, notes, tags from {T} order by id) to stdout")
    (masked,) = _ok(run("asyncpg", env.proxy, [sql], MASKED))
    SECRETS.assert_no_leak(masked.rows)
    (real,) = _ok(run("asyncpg", env.proxy, [sql], READER))
    assert real.rows[0][:3] == (CARDS[0], EMAILS[0], C1[0])


# ---------------------------------------------------------------------- classify


def test_classify_shows_the_sample_evidence(env: Env) -> None:
    n = env.names
    out = dbsentry_cli("classify", "--connection", "prod", "--json", config=env.proxy.config_path).stdout
    rows = [orjson.loads(line) for line in out.splitlines()]
    mine = {r["column"]: r for r in rows if r.get("table") == f"public.{n.t}"}
    assert mine["card"]["class"] == "payment_card" and mine["card"]["source"] == "value"
    assert mine["card"]["evidence"] == "4/4 sampled values are payment_card"
    assert mine["contact"]["class"] == mine["c1"]["class"] == "email"
    assert mine["blob"]["class"] == "email" and mine["tags"]["class"] == "email"
    assert mine["data"]["class"] == "national_id" and "'ssn'" in mine["data"]["evidence"]
    assert mine["p"]["class"] == "national_id" and "field 'ssn'" in mine["p"]["evidence"]
    assert mine["notes"]["scan"] is True and mine["notes"]["class"] is None
    assert "1/4 sampled values contain" in mine["notes"]["evidence"]
    assert "order_no" not in mine and "ref" not in mine and "id" not in mine
    hr = {r["column"]: r for r in rows if r.get("table") == f"{n.hr}.{n.staff}"}
    assert hr["ref"]["class"] == "national_id"
    assert not [r for r in rows if r.get("table") == f"public.{n.staff}"]
    SECRETS.assert_no_leak(out, context="the evidence quotes no value")
    # the table form, and --no-sample: schema only
    table = dbsentry_cli("classify", "--connection", "prod", config=env.proxy.config_path).stdout
    assert "sampled the values of" in table and "4/4 sampled values are payment_card" in table
    schema_only = dbsentry_cli("classify", "--connection", "prod", "--no-sample", "--json", config=env.proxy.config_path).stdout  # fmt: skip
    cols = {orjson.loads(line)["column"] for line in schema_only.splitlines() if f"public.{n.t}\"" in line}
    assert cols == {"p"}  # the composite's ssn field is in the schema


def test_the_proxy_logged_the_sampling(env: Env) -> None:
    run("psql", env.proxy, ["select 1"], MASKED)
    log = env.proxy.log_text()
    assert "values sampled" in log
    SECRETS.assert_no_leak(log, context="the proxy's log")


# ---------------------------------------------------------------------- refresh, timeouts


def _wait_for(predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_tables_filled_later_are_sampled_at_refresh(pg_server: PgServer, tmp_path: Path) -> None:
    """A refresh samples again; a table that cannot be read (locked) is skipped without
    holding sessions, keeps what it had, and is read at the next refresh."""
    n = f"later_{uuid.uuid4().hex[:8]}"
    locked = f"locked_{uuid.uuid4().hex[:8]}"
    emails = ["perpetua.l@example.com", "valentinus@example.org", "aurelian.s@example.net"]
    secrets = Secrets(emails)
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"create table {n} (id int, info text)")
        conn.execute(f"create table {locked} (id int, info text)")
        for i, e in enumerate(emails):
            conn.execute(f"insert into {locked} values (%s, %s)", (i, e))
    holder = psycopg.connect(pg_server.dsn())
    try:
        holder.execute(f"lock table {locked} in access exclusive mode")
        extra = {"masking": {"refresh_seconds": 1, "sample_timeout_ms": 300, "safety_net": "off"}}
        with run_proxy(write_config(tmp_path, pg_server, extra=extra)) as proxy:
            started = time.monotonic()
            _ok(run("psycopg", proxy, [f"select info from {n}"], MASKED))
            assert time.monotonic() - started < 10
            assert "table not sampled" in proxy.log_text()
            holder.rollback()  # the lock goes; the next refresh reads the table
            with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
                for i, e in enumerate(emails):
                    conn.execute(f"insert into {n} values (%s, %s)", (i, e))

            def masked_now() -> bool:
                time.sleep(1.2)  # older than refresh_seconds: this session starts a refresh
                run("psycopg", proxy, ["select 1"], MASKED)
                time.sleep(0.5)
                rows = run("psycopg", proxy, [f"select info from {n}", f"select info from {locked}"], MASKED)
                return all(o.ok for o in rows) and not secrets.leaks([o.rows for o in rows])

            assert _wait_for(masked_now, 30), proxy.log_text()[-3000:]
            (real,) = _ok(run("psycopg", proxy, [f"select info from {n} order by id"], READER))
            assert [r[0] for r in real.rows] == emails
    finally:
        holder.close()
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop table if exists {n}")
            conn.execute(f"drop table if exists {locked}")


def test_sampling_can_be_turned_off(pg_server: PgServer, tmp_path: Path) -> None:
    n = f"nosample_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"create table {n} (id int, info text)")
        conn.execute(f"insert into {n} values (1, 'quintilian@example.com'), (2, 'octavia.r@example.org')")
    try:
        extra = {"masking": {"sample": False, "safety_net": "off"}}
        with run_proxy(write_config(tmp_path, pg_server, extra=extra)) as proxy:
            (o,) = _ok(run("psycopg", proxy, [f"select info from {n} order by id"], MASKED))
            assert [r[0] for r in o.rows] == ["quintilian@example.com", "octavia.r@example.org"]
            assert "values sampled" not in proxy.log_text()
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            conn.execute(f"drop table if exists {n}")

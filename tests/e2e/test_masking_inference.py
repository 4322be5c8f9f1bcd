"""Inference through predicates (masking.predicates) and policy rules on data classes,
through a running dbsentry to the real PostgreSQL, with psql, psycopg (text and binary
results) and asyncpg.

A masked identity gets masked values back, but ``WHERE ssn LIKE '5%'``, ``ORDER BY ssn``,
``GROUP BY substr(email, 1, 1)``, ``count(DISTINCT ssn)``, a join on a table of guesses...
would answer questions about the real values.  In production a person may look a row up
by value (``email = $1``) and nothing more; an agent may not even do that; members of
``pii-readers`` are never restricted; ``masking.predicates: allow`` turns it off.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from support.guard_clients import Login, Outcome, Statement, refused, run
from support.pg import PgServer
from support.proxy import RunningProxy, run_proxy, write_config

pytestmark = pytest.mark.e2e

CLIENTS = ("psql", "psycopg", "psycopg-binary", "asyncpg")
PARAM_CLIENTS = ("psycopg", "psycopg-binary", "asyncpg")

PERSON = Login("eve@example.com", ("eng",))
AGENT = Login("bot@example.com", ("eng",), agent=True)
READER = Login("rita@example.com", ("eng", "pii-readers"))

ROWS = (
    (1, "ada.lovelace@example.com", "536-22-8714", "4539 1488 0343 6467", "Paris"),
    (2, "grace.hopper@navy.example.org", "471-93-2605", "5555 5555 5555 4444", "Berlin"),
    (3, "alan.turing@example.net", None, None, "Paris"),
)


@dataclass(frozen=True)
class Env:
    proxy: RunningProxy
    pg: PgServer
    t: str  # customers
    g: str  # guesses
    o: str  # orders

    def sql(self, text: str) -> str:
        return text.replace("{T}", self.t).replace("{G}", self.g).replace("{O}", self.o)


@dataclass(frozen=True)
class Tables:
    t: str
    g: str
    o: str


@pytest.fixture(scope="module")
def tables(pg_server: PgServer) -> Iterator[Tables]:
    s = uuid.uuid4().hex[:10]
    tb = Tables(f"customers_{s}", f"guesses_{s}", f"orders_{s}")
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(
            f"create table {tb.t} (id int primary key, email text, ssn text, card_number text, city text)"
        )
        with conn.cursor() as cur:
            cur.executemany(f"insert into {tb.t} values (%s, %s, %s, %s, %s)", ROWS)
        conn.execute(f"create table {tb.g} (guess text)")
        conn.execute(f"insert into {tb.g} values ('536-22-8714'), ('000-00-0000')")
        conn.execute(f"create table {tb.o} (id int primary key, customer_id int)")
        conn.execute(f"insert into {tb.o} values (10, 1), (20, 2)")
    try:
        yield tb
    finally:
        with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
            for name in (tb.t, tb.g, tb.o):
                conn.execute(f"drop table if exists {name}")


@pytest.fixture(scope="module")
def env(
    pg_server: PgServer, tables: Tables, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    """The defaults: equality for people, deny for agents, in production."""
    config = write_config(tmp_path_factory.mktemp("inference"), pg_server)
    with run_proxy(config) as proxy:
        yield Env(proxy, pg_server, tables.t, tables.g, tables.o)


POLICY = """
version: 1
rules:
  - name: agents-no-national-ids
    match: {kind: agent, data_classes: [national_id]}
    action: deny
    message: agents may not read national ids
  - name: card-exports-need-approval
    match: {commands: [COPY], data_classes: [payment_card]}
    action: require_approval
    approvers: [dpo]
"""


@pytest.fixture(scope="module")
def allowing(
    pg_server: PgServer, tables: Tables, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    """``masking.predicates: allow``, and a policy with rules on data classes."""
    directory: Path = tmp_path_factory.mktemp("inference_allow")
    (directory / "policy.yaml").write_text(POLICY)
    config = write_config(
        directory,
        pg_server,
        extra={"policy": str(directory / "policy.yaml"), "masking": {"predicates": "allow"}},
    )
    with run_proxy(config) as proxy:
        yield Env(proxy, pg_server, tables.t, tables.g, tables.o)


def _run(env: Env, client: str, statements: list[Statement], login: Login) -> list[Outcome]:
    fixed: list[Statement] = [
        env.sql(s) if isinstance(s, str) else (env.sql(s[0]), s[1]) for s in statements
    ]
    return run(client, env.proxy, fixed, login)


# What a person in production may do: look rows up by value, test presence, filter on
# harmless columns.
LOOKUPS: list[tuple[str, list[tuple[Any, ...]]]] = [
    ("select id from {T} where email = 'ada.lovelace@example.com'", [(1,)]),
    ("select id from {T} where ssn in ('471-93-2605', '000-00-0000') order by id", [(2,)]),
    ("select id from {T} where email <> 'x' and ssn = '536-22-8714'", [(1,)]),
    ("select id from {T} where ssn is null", [(3,)]),
    ("select count(*) from {T} where card_number is not null", [(2,)]),
    ("select id from {T} where city like 'Par%' order by city, id", [(1,), (3,)]),
    ("select city, count(*) from {T} group by city order by city", [("Berlin", 1), ("Paris", 2)]),
    (
        "select c.id from {T} c join {O} o on o.customer_id = c.id where c.email = 'ada.lovelace@example.com'",
        [(1,)],
    ),
]

# Each refused for a person in production, naming the column and the clause.
PROBES: list[tuple[str, str, str]] = [
    ("select id from {T} where ssn like '5%'", "ssn", "WHERE"),
    ("select id from {T} where ssn between '500' and '600'", "ssn", "WHERE"),
    ("select id from {T} where ssn > '5'", "ssn", "WHERE"),
    ("select id from {T} where lower(email) = 'ada.lovelace@example.com'", "email", "WHERE"),
    ("select id from {T} where email::varchar(1) = 'a'", "email", "WHERE"),
    ("select id from {T} where substr(ssn, 1, 1) = '5'", "ssn", "WHERE"),
    ("select id from {T} order by ssn", "ssn", "ORDER BY"),
    ("select id, ssn from {T} order by 2", "ssn", "ORDER BY"),
    (
        "select substr(email, 1, 1), count(*) from {T} group by substr(email, 1, 1)",
        "email",
        "GROUP BY",
    ),
    ("select count(distinct ssn) from {T}", "ssn", "an aggregate"),
    ("select min(ssn) from {T}", "ssn", "an aggregate"),
    (
        "select id, rank() over (partition by substr(ssn, 1, 1) order by id) from {T}",
        "ssn",
        "OVER (PARTITION BY)",
    ),
    ("select c.id from {T} c join {G} g on c.ssn = g.guess", "ssn", "JOIN ... ON"),
    (
        "select o.id from {O} o where exists (select 1 from {T} c where c.ssn like '5%' and c.id = o.customer_id)",
        "ssn",
        "WHERE",
    ),
    ("select city from {T} group by city having max(ssn) > '5'", "ssn", "HAVING"),
    ("select distinct on (ssn) id from {T}", "ssn", "DISTINCT ON"),
    ("with x as (select id, ssn as s from {T}) select id from x where s like '5%'", "ssn", "WHERE"),
    ("update {T} set city = city where ssn like '5%'", "ssn", "WHERE"),
    ("select count(*) filter (where ssn like '5%') from {T}", "ssn", "FILTER"),
    ("select case when ssn like '5%' then 'yes' end, count(*) from {T} group by 1", "ssn", "CASE"),
    ("select id, greatest(ssn, '5') from {T}", "ssn", "GREATEST"),
    ("select id, nullif(left(ssn, 1), '5') from {T}", "ssn", "NULLIF"),
    ("select ssn from {T} intersect select guess from {G}", "ssn", "INTERSECT"),
    (
        "select id from {T} where id in (select c.id from {T} c where c.ssn like '5%')",
        "ssn",
        "WHERE",
    ),
    (
        "select id from {T} limit (select ascii(ssn) - 40 from {T} where id = 1)",
        "ssn",
        "LIMIT/OFFSET",
    ),
    ("copy (select id from {T} where ssn like '5%') to stdout", "ssn", "WHERE"),
]


def _rows(o: Outcome) -> list[tuple[Any, ...]]:
    """Rows as the clients tell them (text), with integers as integers."""
    return [tuple(int(v) if isinstance(v, str) and v.isdigit() else v for v in r) for r in o.rows]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_person_may_look_rows_up_by_value(env: Env, client: str) -> None:
    outcomes = _run(env, client, [sql for sql, _ in LOOKUPS], PERSON)
    for o, (_, rows) in zip(outcomes, LOOKUPS, strict=True):
        assert o.ok, str(o)
        assert _rows(o) == rows, str(o)
    # the values returned are still masked
    (o,) = _run(
        env,
        client,
        ["select id, email, ssn from {T} where email = 'ada.lovelace@example.com'"],
        PERSON,
    )
    assert o.ok and len(o.rows) == 1, str(o)
    assert "ada.lovelace" not in str(o.rows[0][1]) and "536-22" not in str(o.rows[0][2]), str(o)


@pytest.mark.parametrize("client", PARAM_CLIENTS)
def test_a_person_may_look_rows_up_with_parameters(env: Env, client: str) -> None:
    outcomes = _run(
        env,
        client,
        [
            ("select id from {T} where email = %s", ["grace.hopper@navy.example.org"]),
            (
                "select id from {T} where ssn in (%s, %s) order by id",
                ["536-22-8714", "471-93-2605"],
            ),
            ("select id from {T} where ssn = %s::text or ssn is null order by id", ["471-93-2605"]),
            ("select id from {T} where ssn like %s", ["5%"]),
            ("select id from {T} where email > %s order by id", ["b"]),
        ],
        PERSON,
    )
    assert [_rows(o) for o in outcomes[:3]] == [[(2,)], [(1,), (2,)], [(2,), (3,)]], [
        str(o) for o in outcomes
    ]
    refused(
        outcomes[3],
        "masked column",
        f"public.{env.t}.ssn",
        "WHERE",
        "masking.predicates = equality",
    )
    refused(outcomes[4], f"public.{env.t}.email", "WHERE")


@pytest.mark.parametrize("client", CLIENTS)
def test_inference_is_refused_naming_the_column(env: Env, client: str) -> None:
    outcomes = _run(env, client, [sql for sql, _, _ in PROBES], PERSON)
    for o, (_, column, clause) in zip(outcomes, PROBES, strict=True):
        refused(
            o,
            f"masked column public.{env.t}.{column} may not be used in {clause}",
            "(masking.predicates = equality)",
        )
    # the refused UPDATE changed nothing
    with psycopg.connect(env.pg.dsn(), autocommit=True) as conn:
        assert conn.execute(f"select city from {env.t} order by id").fetchall() == [
            ("Paris",),
            ("Berlin",),
            ("Paris",),
        ]


def test_digit_by_digit_reconstruction_gets_nowhere(env: Env) -> None:
    """A clever user rebuilding an SSN one character at a time, in as many spellings as
    come to mind: every probe is refused, so no answer depends on the digits."""
    probes = []
    for spelling in (
        "substr(ssn, {i}, 1) = '{d}'",
        "left(ssn, {i}) = '53{d}'",
        "ssn like '53{d}%'",
        "ssn ~ '^53{d}'",
        "position('{d}' in ssn) = {i}",
        "ssn::char({i}) = '5'",
        "ssn >= '53{d}'",
        "coalesce(ssn, '') = '536-22-8714'",
        "(ssn || '') = '536-22-8714'",
        "md5(ssn) = md5('536-22-8714')",
        "ssn = any(array(select guess from {G}))",
        "ssn in (select guess from {G})",
        "exists (select 1 from {G} where guess = ssn)",
        "(select count(*) from {G} where guess < ssn) > {i}",
        "starts_with(ssn, '{d}')",
        "ssn similar to '5%'",
    ):
        probes.append("select id from {T} where " + spelling.format(i=1, d=6, G="{G}"))
    probes += [
        "select (select count(*) from {T} c where substr(c.ssn, 1, 1) = '5')",
        "select id from {T} order by substr(ssn, 2, 1), id",
        "select sum(ascii(ssn)) from {T}",
        "select string_agg(city, ',' order by ssn) from {T}",
        "select id from {T} t, lateral (select 1 where t.ssn like '5%') x",
        "select id from {T} t, regexp_matches(t.ssn, '^5') m",
        "select id, row_number() over (order by ssn) from {T}",
        "select 1 from {T} group by rollup (substr(ssn, 1, 1))",
        "select ssn from {T} union select guess from {G}",
        "select ssn from {T} except select guess from {G}",
        "select id from {T} join {G} on guess = ssn",
        "select id from (select id, ssn from {T}) s natural join (select '536-22-8714' as ssn) g",
        "select id from {T} where (ssn, id) = ('536-22-8714', 1)",
        "select rank('5') within group (order by ssn) from {T}",
        "select pg_column_size(email) from {T}",
        "explain analyze select * from {T} where ssn like '5%'",
        "select max(email) from {T}",
    ]
    outcomes = _run(env, "psycopg", probes, PERSON)
    for o in outcomes:
        refused(o, "masked column", "masking.predicates = equality")


@pytest.mark.parametrize("client", CLIENTS)
def test_agents_may_not_even_look_rows_up(env: Env, client: str) -> None:
    outcomes = _run(
        env,
        client,
        [
            "select id from {T} where email = 'ada.lovelace@example.com'",
            "select id from {T} where ssn is null",
            "select count(ssn) from {T}",
            "select id from {T} where ssn like '5%'",
            "select id, email from {T} where city = 'Berlin'",
            "select id, ssn from {T} order by id",
        ],
        AGENT,
    )
    for o, column, clause in zip(
        outcomes[:4],
        ("email", "ssn", "ssn", "ssn"),
        ("WHERE", "WHERE", "an aggregate", "WHERE"),
        strict=True,
    ):
        refused(
            o,
            f"masked column public.{env.t}.{column} may not be used in {clause}",
            "(masking.predicates = deny)",
        )
    assert outcomes[4].ok and [r[0] for r in _rows(outcomes[4])] == [2], str(outcomes[4])
    assert "grace" not in str(outcomes[4].rows)
    assert outcomes[5].ok and len(outcomes[5].rows) == 3, str(outcomes[5])
    assert "536-22" not in str(outcomes[5].rows)


@pytest.mark.parametrize("client", CLIENTS)
def test_pii_readers_are_never_restricted(env: Env, client: str) -> None:
    outcomes = _run(
        env, client, [sql for sql, _, _ in PROBES if not sql.startswith(("update", "copy"))], READER
    )
    for o in outcomes:
        assert o.ok, str(o)
    (o,) = _run(env, client, ["select id from {T} where ssn like '5%' order by ssn"], READER)
    assert _rows(o) == [(1,)], str(o)


@pytest.mark.parametrize("client", CLIENTS)
def test_staging_allows_by_default(env: Env, client: str) -> None:
    login = Login(PERSON.identity, PERSON.groups, dbname="staging")
    outcomes = _run(
        env,
        client,
        ["select id from {T} where ssn like '5%'", "select id from {T} order by ssn"],
        login,
    )
    assert [_rows(o) for o in outcomes] == [[(1,)], [(2,), (1,), (3,)]], [str(o) for o in outcomes]


# ---------------------------------------------------------------- masking.predicates: allow


@pytest.mark.parametrize("client", CLIENTS)
def test_allow_lets_predicates_through(allowing: Env, client: str) -> None:
    outcomes = _run(
        allowing,
        client,
        [
            "select id from {T} where email like 'ada%'",
            "select id from {T} order by email",
            "select id, email from {T} where id = 1",
        ],
        PERSON,
    )
    assert [_rows(o) for o in outcomes[:2]] == [[(1,)], [(1,), (3,), (2,)]], [
        str(o) for o in outcomes
    ]
    assert _rows(outcomes[2])[0][0] == 1, str(outcomes[2])
    assert "ada.lovelace" not in str(outcomes[2].rows)  # values are still masked


# ---------------------------------------------------------------- policy on data classes


@pytest.mark.parametrize("client", CLIENTS)
def test_policy_denies_agents_national_ids(allowing: Env, client: str) -> None:
    outcomes = _run(
        allowing,
        client,
        [
            "select ssn from {T}",
            "select id from {T} where ssn = '536-22-8714'",  # reading it in a predicate counts
            "select * from {T}",
            "select id, email, city from {T} order by id",
        ],
        AGENT,
    )
    for o in outcomes[:3]:
        refused(o, "agents may not read national ids")
    assert outcomes[3].ok and len(outcomes[3].rows) == 3, str(outcomes[3])
    # people are not concerned by that rule
    (o,) = _run(allowing, client, ["select ssn from {T} where id = 1"], PERSON)
    assert o.ok and "536-22" not in str(o.rows), str(o)


@pytest.mark.parametrize("client", CLIENTS)
def test_policy_requires_approval_to_export_cards(allowing: Env, client: str) -> None:
    outcomes = _run(
        allowing,
        client,
        [
            "copy (select id, card_number from {T}) to stdout",
            "copy (select c.id from {T} c where c.card_number = '5555 5555 5555 4444') to stdout",
            "copy (select id, city from {T}) to stdout",
            "select card_number from {T} where id = 2",
        ],
        PERSON,
    )
    refused(outcomes[0], "needs approval by dpo", "card-exports-need-approval")
    refused(outcomes[1], "card-exports-need-approval")
    assert outcomes[2].ok, str(outcomes[2])
    assert outcomes[3].ok and "5555 5555 5555 4444" not in str(outcomes[3].rows), str(outcomes[3])


def test_policy_requires_approval_for_copy_of_the_table(allowing: Env) -> None:
    (o,) = _run(allowing, "psql", ["copy {T} to stdout"], PERSON)
    refused(o, "card-exports-need-approval")
    (o,) = _run(allowing, "psql", ["copy {T} (id, city) to stdout"], PERSON)
    assert o.ok, str(o)


def test_policy_explain_shows_the_classes_from_the_catalog(allowing: Env) -> None:
    from click.testing import CliRunner

    from dbsentry.policy.cli import policy

    sql = allowing.sql(
        "select id from {T} where ssn = '1'; copy (select card_number from {T}) to stdout"
    )
    args = [
        "explain",
        "-c",
        str(allowing.proxy.config_path),
        "--identity",
        "bot",
        "--agent",
        "--connection",
        "prod",
    ]
    result = CliRunner().invoke(policy, [*args, "--catalog", sql])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    first, second = out["statements"]
    assert first["data_classes"] == {"reads": ["national_id"], "writes": []}
    assert first["decision"]["rules"] == ["agents-no-national-ids"]
    assert second["data_classes"] == {"reads": ["payment_card"], "writes": []}
    assert "card-exports-need-approval" in second["decision"]["matched"]

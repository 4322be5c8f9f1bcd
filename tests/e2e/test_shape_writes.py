# ruff: noqa: F811  (the fixtures imported from test_guardrails_effect are parameters here)
"""Writes judged by their shape (issue 17, item 6): pgbench's ``UPDATE ... WHERE aid = 4711``
with a new constant each time is judged once per shape, and everything a text's own
judgement would do still happens for every text of the shape: the row guard measures each
one, a masked value written back is refused, an always-true WHERE is refused.

Each test warms the shape first with texts that pass, then sends one of the same shape
that must not, in the same session (psql and psycopg, both on the simple protocol)."""

from __future__ import annotations

import time

import pytest
from test_guardrails_effect import BIG_ROWS, Env, big, env, intact, snapshot, victim  # noqa: F401

from support.audit import search
from support.guard_clients import Outcome, run

pytestmark = pytest.mark.e2e

MODES = ["psql", "psycopg"]


def _refused(out: list[Outcome], sql_part: str) -> list[Outcome]:
    return [o for o in out if sql_part in o.sql and o.sqlstate is not None and "dbsentry" in o.message]


@pytest.mark.parametrize("mode", MODES)
def test_each_text_of_a_write_shape_is_measured(env: Env, big: str, mode: str) -> None:
    """Three updates of the shape ``id between ? and ?`` under the 1,000-row limit, then one
    of 1,500 rows: refused and rolled back, like the first text of its shape would be."""
    warm = [f"update {big} set note = 'n' || id where id between {a} and {a + 299}" for a in (1, 301, 601)]
    wide = f"update {big} set note = 'pwned' || id where id between 1 and {BIG_ROWS}"
    out = run(mode, env.proxy, [*warm, wide])
    assert all(o.ok for o in out[:3]), out
    assert _refused(out, "'pwned'"), out
    assert "1500 rows" in out[3].message, out[3].message
    intact(env, big, BIG_ROWS)


@pytest.mark.parametrize("mode", MODES)
def test_a_shape_judged_delete_is_held_to_the_table_share(env: Env, victim: str, mode: str) -> None:
    """``delete ... where id > ?``: a few rows pass; the same shape reaching every row is
    refused (the share limit), measured, not guessed from the text."""
    v = victim
    warm = [f"delete from {v} where id > {n}" for n in (39, 38)]  # 1, then 1 more
    out = run(mode, env.proxy, [*warm, f"delete from {v} where id > 0"])
    assert all(o.ok for o in out[:2]), out
    assert _refused(out, "id > 0"), out
    assert len(snapshot(env)) == 38


def _warm_then(env: Env, mode: str, texts: list[str]) -> Outcome:
    """Run ``texts`` in one session: all but the last must pass; the last one's outcome."""
    out = run(mode, env.proxy, texts)
    assert all(o.ok for o in out[:-1]), out
    return out[-1]


@pytest.mark.parametrize("mode", MODES)
def test_a_shape_never_hides_a_folded_where(env: Env, victim: str, mode: str) -> None:
    """A WHERE whose constants are not all compared with a column is judged by its text
    every time: ``id = 1 or 1 = 2`` is fine, ``id = 3 or 2 = 2`` is always true."""
    v = victim
    texts = [f"update {v} set note = '{n}' || id where id = {i} or {a} = 2" for n, i, a in (("n", 1, 1), ("n", 2, 1), ("pwned", 3, 2))]
    last = _warm_then(env, mode, texts)
    assert not last.ok and "dbsentry" in last.message, last
    intact(env)


@pytest.mark.parametrize("mode", MODES)
def test_a_masked_value_written_back_is_refused_in_a_shape(env: Env, victim: str, mode: str) -> None:
    v = victim
    texts = [f"update {v} set note = '{n}' where id = {i}" for n, i in (("plain", 1), ("again", 2), ("****@example.com", 3))]
    last = _warm_then(env, mode, texts)
    assert not last.ok and "masked value" in last.message, last
    notes = dict(snapshot(env))
    assert notes[1] == "plain" and notes[2] == "again" and notes[3] == "n3"


@pytest.mark.parametrize("mode", MODES)
def test_shape_judged_writes_are_recorded_each_with_its_own_text(env: Env, victim: str, mode: str) -> None:
    """Every text is recorded as sent (constants and all), and does what it says."""
    v = victim
    texts = [f"update {v} set note = 'x{i}' where id = {i}" for i in range(1, 6)]
    texts += [f"insert into {v} (id, note) values ({100 + i}, 'y{i}')" for i in range(1, 4)]
    texts += [f"delete from {v} where id = {100 + i}" for i in range(1, 4)]
    out = run(mode, env.proxy, texts)
    assert all(o.ok for o in out), out
    rows = dict(snapshot(env))
    assert [rows[i] for i in range(1, 6)] == [f"x{i}" for i in range(1, 6)] and len(rows) == 40
    deadline = time.monotonic() + 10
    while True:
        got = {r.get("statement") for r in search(env.proxy.config_path, "--text", v)}
        missing = [t for t in texts if t not in got]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not missing, missing

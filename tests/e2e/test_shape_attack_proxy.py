# ruff: noqa: F811  (the fixtures imported from test_guardrails_effect are parameters here)
"""Attacks on writes judged by their shape, through a running proxy in production with the
row guard (psql and psycopg on the simple protocol).

Each test warms a shape with texts that pass, then sends a text of the same shape whose
constants make it reach every row (a WHERE the folding cannot call always true: a range
over every id, inverted NOT BETWEEN bounds, a negative bound) or write a masked value back:
it is refused as its text alone would be, and nothing it did stays."""

from __future__ import annotations

import pytest
from test_guardrails_effect import VICTIM_ROWS, Env, env, snapshot, victim  # noqa: F401

from support.guard_clients import Outcome, run

pytestmark = pytest.mark.e2e

MODES = ["psql", "psycopg"]


def _warm_then(env: Env, mode: str, texts: list[str]) -> Outcome:
    out = run(mode, env.proxy, texts)
    assert all(o.ok for o in out[:-1]), out
    return out[-1]


def _notes(env: Env) -> dict[int, str]:
    return dict(snapshot(env))


# (warm texts, the text that reaches every row): {v} is the victim table (40 rows).
EVERY_ROW = [
    (
        ["update {v} set note = 'w' || id where id between 1 and 2", "update {v} set note = 'w' || id where id between 3 and 4"],
        "update {v} set note = 'pwned' where id between -2147483647 and 2147483647",
    ),
    (
        ["update {v} set note = 'w' || id where id not between 1 and 38"],
        "update {v} set note = 'pwned' where id not between 9 and 1",
    ),
    (
        ["update {v} set note = 'w' || id where id > 39", "update {v} set note = 'w' || id where id > 38"],
        "update {v} set note = 'pwned' where id > -1",
    ),
    (
        ["update {v} set note = 'w' || id where id not in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38)"],
        "update {v} set note = 'pwned' where id not in (-1, -2, -3, -4, -5, -6, -7, -8, -9, -10, -11, -12, -13, -14, -15, -16, -17, -18, -19, -20, -21, -22, -23, -24, -25, -26, -27, -28, -29, -30, -31, -32, -33, -34, -35, -36, -37, -38)",
    ),
    (
        ["update {v} set note = 'w' || id where id = 1 or id = 2"],
        "update {v} set note = 'pwned' where id = -1 or id <> -2",
    ),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("warm", "wide"), EVERY_ROW)
def test_a_warmed_write_shape_reaching_every_row_is_refused(
    env: Env, victim: str, mode: str, warm: list[str], wide: str
) -> None:
    v = victim
    texts = [t.format(v=v) for t in warm]
    before = _notes(env)
    last = _warm_then(env, mode, [*texts, wide.format(v=v)])
    assert not last.ok and "dbsentry" in last.message, last
    after = _notes(env)
    assert len(after) == VICTIM_ROWS and "pwned" not in after.values()
    assert sum(1 for i in after if after[i] != before[i]) <= 4  # only what the warm texts changed


@pytest.mark.parametrize("mode", MODES)
def test_a_warmed_delete_shape_reaching_every_row_is_refused(env: Env, victim: str, mode: str) -> None:
    v = victim
    last = _warm_then(
        env, mode, [f"delete from {v} where id between 39 and 40", f"delete from {v} where id between -2147483647 and 2147483647"]
    )
    assert not last.ok and "dbsentry" in last.message, last
    assert len(snapshot(env)) == VICTIM_ROWS - 2


@pytest.mark.parametrize("mode", MODES)
def test_a_masked_value_inserted_after_its_shape_is_refused(env: Env, victim: str, mode: str) -> None:
    v = victim
    texts = [f"insert into {v} (id, note) values ({100 + i}, '{n}')" for i, n in enumerate(["a", "b", "****@example.com"])]
    last = _warm_then(env, mode, texts)
    assert not last.ok and "masked value" in last.message, last
    assert 102 not in _notes(env)

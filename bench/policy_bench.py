"""Cache-miss cost of governance: analyze (parse + walk) and evaluate, per statement.

    python bench/policy_bench.py [--rounds N]

Prints median and p99 in microseconds for each stage and for the total.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

from pglast import parser

from dbsentry.engines.postgres.sql.facts import StatementFacts, analyze
from dbsentry.identity.model import Identity
from dbsentry.policy import EvalContext, Policy, default_policy, evaluate

STATEMENTS = {
    "select-150": (
        "SELECT u.id, u.email, o.total FROM public.users u JOIN orders o ON o.user_id = u.id "
        "WHERE u.created_at > now() - interval '7 days' AND o.status = 'paid' LIMIT 100"
    ),
    "select-1": "select 1",
    "insert": "INSERT INTO events (kind, payload, at) VALUES ($1, $2, now()) RETURNING id",
    "update": "UPDATE accounts SET balance = balance - 10 WHERE id = 42 AND balance >= 10",
    "delete-tautology": "DELETE FROM sessions WHERE 'a' = 'a' OR expires_at < now()",
    "cte-write": "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
    "psql-describe": (
        "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN "
        "pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relname "
        "OPERATOR(pg_catalog.~) '^(users)$' COLLATE pg_catalog.default AND "
        "pg_catalog.pg_table_is_visible(c.oid) ORDER BY 2, 3"
    ),
}


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    for _ in range(min(200, rounds)):
        fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def _evaluate_all(policy: Policy, facts: list[StatementFacts], ctx: EvalContext) -> None:
    for f in facts:
        evaluate(policy, f, ctx)


def _full(policy: Policy, sql: str, ctx: EvalContext) -> None:
    for f in analyze(sql):
        evaluate(policy, f, ctx)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20000)
    args = ap.parse_args()
    policy = default_policy()
    ctx = EvalContext(
        Identity("bench", frozenset({"dev"}), "agent", "t", "token"),
        "prod",
        "production",
        datetime.now(UTC),
    )
    print(f"{'statement':18} {'chars':>5} {'parse_json':>16} {'analyze':>16} {'evaluate':>16} {'total':>16}")
    for name, sql in STATEMENTS.items():
        facts = analyze(sql)
        parse = timed(partial(parser.parse_sql_json, sql), args.rounds)
        ana = timed(partial(analyze, sql), args.rounds)
        ev = timed(partial(_evaluate_all, policy, facts, ctx), args.rounds)
        total = timed(partial(_full, policy, sql, ctx), args.rounds)
        cols = " ".join(f"{m:7.1f}/{p:7.1f}" for m, p in (parse, ana, ev, total))
        print(f"{name:18} {len(sql):5} {cols}")
    print("columns: median/p99 microseconds, cache miss (no FactsCache or DecisionCache)")


if __name__ == "__main__":
    main()

"""CPU per transaction of the session state machine with the row guard: no sockets, no
other process, a scripted server.

    python bench/guard_cost.py [--transactions 3000] [--repeat 3]

Drives one production :class:`~dbsentry.engines.postgres.session.pg.Session` through
pgbench's TPC-B transaction (simple protocol: ``BEGIN``, three UPDATEs and a SELECT by
key, an INSERT, ``END``) and answers everything it sends upstream the way PostgreSQL
would: the statements, and the row guard's own requests (its statistics readings answer
with the counters of the tables the transaction changed, its check with 0; after a
transaction in which a check asked for a report, the counters restart at zero, as
``pg_stat_force_next_flush()`` makes them).  Reports the process CPU time per
transaction in three set-ups: the guard off (a production connection without row limits), the guard on with
PostgreSQL 16 (counters known to be zero after each transaction), and the guard on with
PostgreSQL 14 (a reading before the first statement of each transaction).  The audit
records are encoded as the audit log encodes them (``payload_bytes``), not written.  What
the guard costs in PostgreSQL is not here (docs/performance.md has it), nor the scripted
server's own time.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import session_cost

from dbsentry.audit.records import payload_bytes
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import ClientData, UpstreamData
from dbsentry.engines.postgres.session.guard import CHECK_SQL, STATS_SQL
from dbsentry.engines.postgres.session.pg import Session
from dbsentry.engines.postgres.wire import codec

TABLES = {"pgbench_accounts": 16529, "pgbench_tellers": 16526, "pgbench_branches": 16532, "pgbench_history": 16523}
_CHECK_HEAD = CHECK_SQL.split("{", 1)[0]


def _data_row(*values: str) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        raw = v.encode()
        body += struct.pack("!i", len(raw)) + raw
    return codec.frame(b"D", body)


def _stats_row(oid: int, name: str, upd: int, dele: int, ins: int) -> bytes:
    return _data_row(
        str(oid), str(upd), str(dele), str(ins), "13598720", "1000000", "1000000", "t", "public", name,
        str(oid), "public", name, "t", "f", "f", "f",
    )  # fmt: skip


def _row_description() -> bytes:
    body = b"\x00\x01" + b"abalance\x00" + (16529).to_bytes(4, "big") + (3).to_bytes(2, "big")
    body += (23).to_bytes(4, "big") + (4).to_bytes(2, "big", signed=True) + (-1).to_bytes(4, "big", signed=True)
    return codec.frame(b"T", body + b"\x00\x00")


class FakeServer:
    """Answers a session's upstream messages as PostgreSQL would, for this workload."""

    def __init__(self) -> None:
        self.spent = 0.0  # CPU time spent here (left out of the session's)
        self.block = False
        self.counts: dict[str, list[int]] = {}  # table -> [updated, deleted, inserted], pending
        self.flush_asked = False
        self.statements: dict[str, str] = {}
        self.portals: dict[str, str] = {}

    def _ready(self) -> bytes:
        if not self.block and self.flush_asked:  # reported at the idle moment
            self.counts.clear()
            self.flush_asked = False
        return codec.encode_ready("T" if self.block else "I")

    def _count(self, table: str, column: int) -> None:
        self.counts.setdefault(table, [0, 0, 0])[column] += 1

    def _run(self, sql: str) -> bytes:
        word = sql.split(None, 1)[0].rstrip(";").upper()
        if word == "BEGIN":
            self.block = True
            return codec.encode_command_complete("BEGIN")
        if word in ("END", "COMMIT"):
            self.block = False
            return codec.encode_command_complete("COMMIT")
        if word == "ROLLBACK":
            self.block = False
            return codec.encode_command_complete("ROLLBACK")
        if word == "UPDATE":
            self._count(sql.split()[1], 0)
            return codec.encode_command_complete("UPDATE 1")
        if word == "INSERT":
            self._count(sql.split()[2], 2)
            return codec.encode_command_complete("INSERT 0 1")
        if sql.startswith("SELECT abalance"):
            return _row_description() + _data_row("42") + codec.encode_command_complete("SELECT 1")
        if sql.startswith(_CHECK_HEAD):
            self.flush_asked = self.flush_asked or "force_next_flush" in sql
            return _data_row("0", "on") + codec.encode_command_complete("SELECT 1")
        if sql.startswith(STATS_SQL[:40]):
            rows = [_stats_row(TABLES[t], t, *n) for t, n in self.counts.items()]
            return b"".join(rows) + codec.encode_command_complete(f"SELECT {len(rows)}")
        raise AssertionError(f"unexpected statement: {sql[:80]}")

    def answer(self, data: bytes) -> bytes:
        started = time.process_time()
        try:
            return self._answer(data)
        finally:
            self.spent += time.process_time() - started

    def _answer(self, data: bytes) -> bytes:
        buf, spans = codec.FrameSplitter().split(data)
        out = []
        for t, start, end in spans:
            body = buf[start:end]
            if t == ord("Q"):
                out.append(self._run(body[:-1].decode()) + self._ready())
            elif t == ord("P"):
                name, _, rest = body.partition(b"\x00")
                sql = rest.partition(b"\x00")[0]
                self.statements[name.decode()] = sql.decode()
                out.append(codec.frame(b"1"))
            elif t == ord("B"):
                portal, _, rest = body.partition(b"\x00")
                self.portals[portal.decode()] = rest.partition(b"\x00")[0].decode()
                out.append(codec.frame(b"2"))
            elif t == ord("E"):
                portal = body.partition(b"\x00")[0].decode()
                out.append(self._run(self.statements[self.portals[portal]]))
            elif t == ord("C"):
                out.append(codec.frame(b"3"))
            elif t == ord("S"):
                out.append(self._ready())
        return b"".join(out)


def transaction(i: int) -> list[bytes]:
    aid, tid, bid, delta = 1 + (i * 7919) % 1_000_000, 1 + i % 100, 1 + i % 10, (i * 31) % 10_001 - 5000
    return [
        codec.encode_query(q)
        for q in (
            "BEGIN;",
            f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};",
            f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};",
            f"UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};",
            f"UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
            f"VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP);",
            "END;",
        )
    ]


def new_session(server_version: str, guard: bool = True) -> Session:
    """A production session (policy, audit, masking) whose upstream is ``server_version``;
    ``guard``: with the default row limits, else none."""
    unlimited = {"guardrails": {"max_rows_changed": None, "max_fraction_changed": None}}
    return session_cost.new_session(
        True, True, True, settings=None if guard else unlimited, server_params={"server_version": server_version}
    )


def _settle(session: Session, server: FakeServer, cmds: list[c.Command], sink: list[bytes]) -> None:
    """Carry out ``cmds`` as the shell would, with every audit record committed at once,
    until nothing more goes upstream."""
    todo = list(cmds)
    while todo:
        cmd = todo.pop(0)
        t = type(cmd)
        if t is c.AuditGate:
            for record in cmd.records:  # type: ignore[attr-defined]
                payload_bytes(record)
            todo[:0] = cmd.then  # type: ignore[attr-defined]
        elif t is c.Audit:
            payload_bytes(cmd.record)  # type: ignore[attr-defined]
        elif t is c.SendUpstream:
            todo.extend(session.handle(UpstreamData(server.answer(cmd.data))))  # type: ignore[attr-defined]
        elif t is c.SendClient:
            sink.append(cmd.data)  # type: ignore[attr-defined]
        elif t is c.GuardApproval:
            raise AssertionError("the guard asked for an approval")


def run(session: Session, n: int) -> float:
    """CPU per transaction."""
    server = FakeServer()
    traffic = [transaction(i) for i in range(n)]
    sink: list[bytes] = []
    started = time.process_time()
    for messages in traffic:
        for msg in messages:
            _settle(session, server, session.handle(ClientData(msg)), sink)
    spent = time.process_time() - started - server.spent
    errors = [d for d in sink if d[:1] == b"E"]
    assert not errors, errors[0]
    assert len(sink) >= 7 * n, (len(sink), n)
    return spent / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transactions", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3, help="runs per set-up; the fastest is shown")
    args = ap.parse_args()
    setups = {
        "guard off (no limits)": ("16.4", False),
        "guard on, PostgreSQL 16": ("16.4", True),
        "guard on, PostgreSQL 14": ("14.12", True),
    }
    print(f"session CPU per TPC-B transaction (-M simple), {args.transactions} transactions")
    for name, (version, guard) in setups.items():
        best = min(run(new_session(version, guard), args.transactions) for _ in range(args.repeat))
        print(f"  {name:26s} {best:8.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())

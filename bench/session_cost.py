"""CPU per statement of the session state machine alone: no sockets, no other process.

    python bench/session_cost.py [--statements 20000] [--mode prepared|simple]

Drives one :class:`~dbsentry.engines.postgres.session.pg.Session` through the messages of pgbench's
``-S`` transaction (``SELECT abalance FROM pgbench_accounts WHERE aid = $1``) and the
server's answers, in one thread, and reports the process CPU time per statement in four
set-ups: passthrough (no governance), policy only, policy + audit records (built and
encoded with ``payload_bytes``, as the audit log encodes them, not written), and policy +
audit + masking tracking (with the safety net,
on by default in production, and without it), and policy + audit with approvals on
(the statements need none).  The audit writer is
left out on purpose (its cost is measured by ``bench/audit_bench.py``): this is what the
event loop's thread pays per statement.  CPU time of one thread is far steadier on a
loaded machine than throughput.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.records import payload_bytes
from dbsentry.config import parse_config
from dbsentry.engines.postgres.session import commands as c
from dbsentry.engines.postgres.session.events import ClientData, PasswordVerified, UpstreamData
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.engines.postgres.session.masking import MaskingService, MaskingView
from dbsentry.engines.postgres.session.pg import ClientInfo, Session
from dbsentry.engines.postgres.session.upstream import UpstreamReady
from dbsentry.engines.postgres.wire import codec
from dbsentry.engines.postgres.wire import messages as m
from dbsentry.identity.model import Identity
from dbsentry.masking.catalog import Catalog, ClassMap

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"


def _row_description() -> bytes:
    body = b"\x00\x01" + b"abalance\x00" + (16384).to_bytes(4, "big") + (3).to_bytes(2, "big")
    body += (23).to_bytes(4, "big") + (4).to_bytes(2, "big", signed=True) + (-1).to_bytes(4, "big", signed=True)
    body += b"\x00\x00"
    return codec.frame(b"T", body)


def _data_row(value: int) -> bytes:
    text = str(value).encode()
    return codec.frame(b"D", b"\x00\x01" + len(text).to_bytes(4, "big") + text)


def messages(mode: str, i: int, first: bool) -> tuple[bytes, bytes]:
    """(client bytes, server bytes) of one pgbench -S transaction."""
    aid = str(1 + (i * 7919) % 100_000)
    if mode == "simple":
        client = codec.encode_query(SQL.replace("$1", aid))
        server = _row_description() + _data_row(i) + codec.frame(b"C", b"SELECT 1\x00") + codec.encode_ready("I")
        return client, server
    # -M prepared binds its named statement; -M extended the unnamed one it parsed just before
    bind = codec.encode_bind(m.Bind("", "P0_1" if mode == "prepared" else "", (0,), (aid.encode(),), (0,)))
    execute = codec.encode_execute(m.Execute("", 0))
    sync = codec.frame(b"S", b"")
    if mode == "prepared":
        client = (codec.encode_parse(m.Parse("P0_1", SQL)) if first else b"") + bind + codec.frame(
            b"D", b"P\x00"
        ) + execute + sync
        server = (codec.frame(b"1", b"") if first else b"") + codec.frame(b"2", b"") + _row_description()
    else:
        client = codec.encode_parse(m.Parse("", SQL)) + bind + codec.frame(b"D", b"P\x00") + execute + sync
        server = codec.frame(b"1", b"") + codec.frame(b"2", b"") + _row_description()
    server += _data_row(i) + codec.frame(b"C", b"SELECT 1\x00") + codec.encode_ready("I")
    return client, server


class NoGrants:
    """Approvals on (what the session asks of the approvals service), no grants."""

    def effective_identity(self, identity: Identity) -> Identity:
        return identity

    def connection_granted(self, identity: str, connection: str) -> bool:
        return False


def new_session(
    governed: bool,
    audit: bool,
    masking: bool,
    safety_net: str = "production",
    approvals: bool = False,
    *,
    settings: dict[str, object] | None = None,
    server_params: dict[str, str] | None = None,
) -> Session:
    """A logged-in production session; ``settings``: more of the configuration,
    ``server_params``: what the upstream reported at login."""
    config = parse_config(
        {
            "tls": {"require_client_tls": False},
            "connections": {"bench": {"database": "bench", "user": "postgres", "environment": "production"}},
            "masking": {"safety_net": safety_net},
            **(settings or {}),
        },
        Path("."),
    )
    service = None
    if masking:
        service = MaskingService(config.masking, b"k" * 32)
        # pgbench_accounts holds nothing sensitive: results are followed, nothing is masked.
        service.views["bench"] = MaskingView.build(Catalog({}, {}), ClassMap({}), 1)
    session = Session(
        config,
        ClientInfo("127.0.0.1:5000"),
        1,
        b"1234",
        governor=Governor.from_path(None) if governed else None,
        audit_config=AuditConfig() if audit else None,
        masking_service=service,
        approvals=NoGrants() if approvals else None,
    )
    return logged_in(session, server_params)


def logged_in(session: Session, server_params: dict[str, str] | None = None) -> Session:
    """``session`` after a client's login as bench@example.com and the upstream's."""
    session.handle(ClientData(codec.encode_startup((("user", "bench@example.com"), ("database", "bench")))))
    session.handle(ClientData(codec.encode_password("token")))
    session.handle(PasswordVerified(Identity("bench@example.com", frozenset({"bench"}), "human", "t", "token")))
    session.handle(UpstreamReady(b"", server_params or {}, 42, b"abcd", "I"))
    return session


def run(session: Session, mode: str, n: int) -> float:
    """CPU per statement; every audit record is encoded as the audit log encodes it
    (``payload_bytes``), on this thread, as the shell would."""
    traffic = [messages(mode, i, i == 0) for i in range(n)]
    sink: list[c.Command] = []
    encoded = 0
    started = time.process_time()
    for client, server in traffic:
        sink.extend(session.handle(ClientData(client)))
        for cmd in sink:
            if type(cmd) is c.AuditGate:
                for record in cmd.records:
                    encoded += len(payload_bytes(record))
                sink.extend(cmd.then)  # as if committed at once
            elif type(cmd) is c.Audit:
                encoded += len(payload_bytes(cmd.record))
        sink.clear()
        sink.extend(session.handle(UpstreamData(server)))
        for cmd in sink:
            if type(cmd) is c.Audit:
                encoded += len(payload_bytes(cmd.record))
        sink.clear()
    return (time.process_time() - started) / n * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--statements", type=int, default=20_000)
    ap.add_argument("--mode", choices=("simple", "extended", "prepared"), default="prepared")
    ap.add_argument("--repeat", type=int, default=3, help="runs per set-up; the fastest is shown")
    args = ap.parse_args()
    setups: dict[str, tuple[bool, bool, bool, str] | tuple[bool, bool, bool, str, bool]] = {
        "passthrough": (False, False, False, "production"),
        "policy": (True, False, False, "production"),
        "policy+audit": (True, True, False, "production"),
        "policy+audit+masking": (True, True, True, "production"),  # with the safety net
        "...safety net off": (True, True, True, "off"),
        # approvals on; the statement needs none (the admission of pipelines is not in its way)
        "policy+audit+approvals": (True, True, False, "production", True),
    }
    print(f"session CPU per statement, pgbench -S -M {args.mode}, {args.statements} statements")
    for name, flags in setups.items():
        best = min(run(new_session(*flags), args.mode, args.statements) for _ in range(args.repeat))
        print(f"  {name:22s} {best:7.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())

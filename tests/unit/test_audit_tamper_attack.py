"""Attacks on the tamper evidence of the audit trail, by someone who can read and write the
proxy's state directory (log segments, the index, files next to them) but cannot use the
node's private signing key.

Each test tampers with a realistic state directory (records written through the real
``LogFile``: sealed segments, periodic and close checkpoints, an open segment with zeros
allocated ahead) and runs the real ``dbsentry audit verify`` / ``report`` / ``audit
search``.  A test marked ``xfail(strict=True, reason="FINDING: ...")`` documents tampering
that verify does not report today; it starts passing when that is fixed.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dbsentry.audit.appender import AuditLog
from dbsentry.audit.config import AuditConfig
from dbsentry.audit.keys import Signer, load_or_create_signing_key
from dbsentry.audit.log import (
    KIND_CHECKPOINT,
    KIND_HEADER,
    KIND_RECORD,
    Frame,
    genesis,
    json_frame,
    link_hash,
    list_segments,
    parse_frames,
    read_past_damage,
    record_frame,
)
from dbsentry.audit.logwriter import LogFile
from dbsentry.audit.records import CompletionRecord, StatementRecord, payload_bytes
from dbsentry.audit.store import chain_hash
from dbsentry.cli import main

# (the writers below checkpoint every CHECKPOINT_EVERY records, and verify knows it)
CONFIG = "{state_dir: state, audit: {checkpoint_every: 3}, connections: {prod: {database: app, user: app}}}\n"
NODE = "node-a"
T0 = 1_714_560_000.0  # 2024-05-01T10:40:00Z
SINCE, UNTIL = "2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"
FIRST_RUN = 24  # records of the proxy's first run (closed cleanly)
SECOND_RUN = 18  # records of the second run (still running: its segment is open)
TOTAL = FIRST_RUN + SECOND_RUN
CHECKPOINT_EVERY = 3


def stmt(i: int, identity: str = "alice@example.com", text: str | None = None) -> bytes:
    return payload_bytes(
        StatementRecord(
            time=T0 + i,
            session_id="s1",
            identity=identity,
            identity_kind="human",
            connection="prod",
            environment="production",
            statement=text if text is not None else f"SELECT * FROM users WHERE id = {i}",
            decision="allow",
            tables=("public.users",),
        )
    )


def state_dir(here: Path) -> Path:
    return here / "state"


def log_dir(here: Path) -> Path:
    return AuditConfig().log_path(state_dir(here))


def node_dir(here: Path, node: str = NODE) -> Path:
    return log_dir(here) / node


def db_path(here: Path) -> Path:
    return AuditConfig().sqlite_path(state_dir(here))


def real_signer(here: Path) -> Signer:
    return Signer(load_or_create_signing_key(AuditConfig().signing_key_path(state_dir(here))))


def new_log(here: Path, node: str = NODE, signer: Signer | None = None) -> LogFile:
    return LogFile(
        log_dir(here),
        node,
        signer=signer if signer is not None else real_signer(here),
        segment_bytes=5000,
        checkpoint_every=CHECKPOINT_EVERY,
    )


def leave_running(lf: LogFile) -> None:
    """Stop a writer as if the proxy were still running (or killed): the open segment keeps
    its zeros allocated ahead and gets no close checkpoint."""
    lf._stop_syncing()
    os.close(lf._fd)


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """dbsentry.yaml and a state directory: a first run of the proxy (24 records, sealed
    segments, periodic checkpoints, a close checkpoint), a second run still going (12
    records, the last five in an open segment, two of them after its last periodic
    checkpoint), and the
    index caught up by a first ``audit verify``."""
    (tmp_path / "dbsentry.yaml").write_text(CONFIG)
    state_dir(tmp_path).mkdir()
    (state_dir(tmp_path) / "audit-node").write_text(NODE + "\n")  # as the proxy keeps it
    lf = new_log(tmp_path)
    lf.open()
    for i in range(1, FIRST_RUN + 1):
        lf.append(stmt(i))
        lf.flush()
    lf.close()
    lf = new_log(tmp_path)
    lf.open()
    for i in range(FIRST_RUN + 1, TOTAL + 1):
        lf.append(stmt(i))
        lf.flush()
    leave_running(lf)
    monkeypatch.chdir(tmp_path)
    res = run("audit", "verify")
    assert res.exit_code == 0, res.output
    assert (
        f"checkpoints: {len(checkpoints(tmp_path))} of {len(checkpoints(tmp_path))} valid"
        in res.output
    )
    assert "2 records after it" in res.output
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def verify_json(*extra: str) -> tuple[int, dict[str, Any]]:
    res = run("audit", "verify", "--json", *extra)
    return res.exit_code, json.loads(res.stdout)


def segments(here: Path, node: str = NODE) -> list[Path]:
    return [p for _, p in list_segments(node_dir(here, node))]


def frames_of(path: Path) -> list[Frame]:
    got, _, error = parse_frames(path.read_bytes())
    assert error is None
    return got


def checkpoints(here: Path, node: str = NODE) -> list[Frame]:
    return [f for p in segments(here, node) for f in frames_of(p) if f.kind == KIND_CHECKPOINT]


def record_at(here: Path, seq: int) -> tuple[Path, Frame]:
    for p in segments(here):
        for f in frames_of(p):
            if f.kind == KIND_RECORD and f.seq == seq:
                return p, f
    raise AssertionError(f"no record {seq}")


def rewrite_log(
    here: Path,
    edit: Callable[[int, bytes], bytes],
    *,
    node: str = NODE,
    resign: Signer | None = None,
    drop_checkpoints_after: int | None = None,
) -> None:
    """The attacker's rewrite of a node's log: every record's payload through ``edit``, the
    whole chain re-hashed from genesis, every segment header made to continue it, every CRC
    recomputed, and the index rebuilt from the result (``audit reindex``).  Every checkpoint
    is re-signed with ``resign`` if given, otherwise left as it is; all from
    ``drop_checkpoints_after`` on are deleted."""
    prev = bytes.fromhex(genesis(node))
    seq = 0
    old_hash: dict[int, bytes] = {}
    new_hash: dict[int, bytes] = {0: prev}
    for path in segments(here, node):
        data = path.read_bytes()
        got, end, error = parse_frames(data)
        assert error is None
        out = bytearray()
        for f in got:
            if f.kind == KIND_HEADER:
                out += json_frame(
                    KIND_HEADER, {**f.meta, "first_seq": seq + 1, "prev_hash": prev.hex()}
                )
            elif f.kind == KIND_RECORD:
                seq = f.seq
                payload = edit(f.seq, f.payload)
                digest = link_hash(prev, seq, payload)
                out += record_frame(seq, prev, digest, payload)
                old_hash[seq], new_hash[seq], prev = f.hash, digest, digest
            else:
                cp_seq = int(f.meta["seq"])
                if drop_checkpoints_after is not None and cp_seq > drop_checkpoints_after:
                    continue
                if resign is None:
                    out += data[f.offset : f.end]  # (a stale one stays: the attacker cannot sign)
                else:
                    cp = resign.sign(
                        cp_seq, new_hash[cp_seq].hex(), f.meta["time"], f"{f.meta['kind']}:{node}"
                    )
                    out += json_frame(
                        KIND_CHECKPOINT,
                        {**f.meta, "hash": cp.hash, "key_id": cp.key_id, "signature": cp.signature},
                    )
        path.write_bytes(bytes(out) + data[end:])
    res = run("audit", "reindex")
    assert res.exit_code == 0, res.output


def forge(seq: int, payload: bytes, target: int, text: str = "DROP TABLE users") -> bytes:
    """Record ``target`` attributed to bob, running ``text``; the others unchanged."""
    if seq != target:
        return payload
    data = orjson.loads(payload)
    data.update(identity="bob@example.com", statement=text)
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)


def index(here: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db_path(here), isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS records_append_only")  # the attacker can write the file
    return conn


def search_lines(*args: str) -> list[str]:
    res = run(
        "audit",
        "search",
        "--oldest-first",
        "--limit",
        "0",
        "--since",
        SINCE,
        "--until",
        UNTIL,
        *args,
    )
    assert res.exit_code == 0, res.output
    return res.output.splitlines()


def report_statements(here: Path, out: str = "r") -> tuple[Result, str]:
    res = run("report", "--since", SINCE, "--until", UNTIL, "--out", out)
    assert res.exit_code == 0, res.output
    return res, (here / out / "report.html").read_text()


# --- what verify does find ---------------------------------------------------------------------


def test_rewritten_chain_after_a_signed_checkpoint_is_named_by_the_checkpoint(here: Path) -> None:
    """A record in the open segment (before its last periodic checkpoint) changed, the rest
    of the chain re-hashed and every later header fixed: the periodic checkpoint names the
    old hash."""
    target = FIRST_RUN + 3
    rewrite_log(here, lambda s, p: forge(s, p, target))
    code, data = verify_json()
    assert code == 1
    problems = [(p["kind"], p["node"], p["seq"]) for p in data["problems"]]
    assert ("checkpoint_mismatch", NODE, target) in problems
    # and what no valid checkpoint covers any more, from before the changed record
    first = data["first_problem"]
    assert (first["kind"], first["node"]) == ("unsigned", NODE) and first["seq"] <= target


def test_unsigned_tail_rewrite_is_reported_as_an_unsigned_tail(here: Path) -> None:
    """The two records after the last periodic checkpoint rewritten and re-hashed: the
    documented limit.  Verify cannot see it, but says how many records are only chained."""
    rewrite_log(here, lambda s, p: forge(s, p, TOTAL))
    res = run("audit", "verify", "--json")
    data = json.loads(res.stdout)
    node = data["nodes"][0]
    assert node["chain"]["unsigned_tail"] == 2
    assert node["chain"]["last_checkpoint_seq"] == TOTAL - 2
    assert "2 records after it" in run("audit", "verify").output


def test_swapped_node_directories_are_named(here: Path) -> None:
    lf = new_log(here, "node-b")
    lf.open()
    for i in range(1, 9):
        lf.append(stmt(i, "carol@example.com"))
        lf.flush()
    lf.close()
    assert run("audit", "verify").exit_code == 0
    a, b = node_dir(here, "node-a"), node_dir(here, "node-b")
    a.rename(a.with_name("tmp"))
    b.rename(a)
    a.with_name("tmp").rename(b)
    code, data = verify_json()
    assert code == 1
    bad = {p["node"] for p in data["problems"]}
    assert bad >= {"node-a", "node-b"}
    assert any(
        p["kind"] == "segment" and "belongs to node" in p["message"] for p in data["problems"]
    )


def test_renumbered_segments_after_removing_one_are_named(here: Path) -> None:
    """A sealed segment removed and the later files renamed down to close the gap."""
    segs = segments(here)
    victim = segs[2]
    victim.unlink()
    for p in segs[3:]:
        p.rename(p.with_name(f"{int(p.stem) - 1:010d}.seg"))
    code, data = verify_json()
    assert code == 1
    kinds = {p["kind"] for p in data["problems"]}
    assert "segment" in kinds


def test_replayed_older_archive_manifest_is_named(here: Path) -> None:
    """Two archives; the second's manifest replaced by the first's (validly signed)."""
    assert run("audit", "archive", "--before", "2024-05-01T10:40:09Z").exit_code == 0
    old = (node_dir(here) / "archive-manifest.json").read_bytes()
    assert run("audit", "archive", "--before", "2024-05-01T10:40:16Z").exit_code == 0
    (node_dir(here) / "archive-manifest.json").write_bytes(old)
    code, data = verify_json()
    assert code == 1
    assert data["first_problem"]["kind"] == "removed"


def test_changed_index_row_of_an_archived_record_is_named_with_the_archive(here: Path) -> None:
    """Rows of archived records are only counted without --archive-dir (documented); with
    it a changed row is named."""
    assert run("audit", "archive", "--before", "2024-05-01T10:40:20Z").exit_code == 0
    db = index(here)
    db.execute(
        "UPDATE records SET payload = replace(payload, 'alice@', 'mallo@') WHERE node = ? AND node_seq = 2",
        (NODE,),
    )
    db.close()
    assert run("audit", "verify").exit_code == 0  # not checked: the documented limit
    code, data = verify_json("--archive-dir", str(state_dir(here) / "archive"))
    assert code == 1
    p = data["first_problem"]
    assert (p["kind"], p["seq"]) == ("index_changed", 2)


def test_garbled_frame_in_the_open_segment_is_named_while_the_proxy_is_stopped(here: Path) -> None:
    """One byte changed in a record with whole frames after it: unreadable, not a torn tail."""
    path, f = record_at(here, FIRST_RUN + 2)
    data = bytearray(path.read_bytes())
    data[f.offset + 100] ^= 0x01
    path.write_bytes(bytes(data))
    code, result = verify_json()
    assert code == 1
    p = result["first_problem"]
    assert (p["kind"], p["seq"]) == ("unreadable", FIRST_RUN + 2)


# --- findings: tampering verify does not report ------------------------------------------------


def test_rewrite_with_the_later_checkpoints_stripped_is_named(here: Path) -> None:
    """Record 5 (in the first, sealed segment, long signed) attributed to bob; the chain
    re-hashed, headers fixed, every checkpoint from record 5 on deleted.  A proxy never
    writes that many records without a checkpoint (checkpoint_every, checkpoint_seconds,
    a seal per segment)."""
    rewrite_log(here, lambda s, p: forge(s, p, 5), drop_checkpoints_after=4)
    res = run("audit", "verify")
    assert "bob@example.com" in "\n".join(search_lines())  # the forgery is what the index shows
    assert res.exit_code == 1, res.output
    code, data = verify_json()
    p = data["first_problem"]
    # the records no signature covers any more, from the last checkpoint left: record 5 among them
    assert (code, p["kind"], p["node"]) == (1, "unsigned", NODE) and p["seq"] <= 5
    assert f"node {NODE}" in res.stderr


def test_swapped_public_key_file_in_the_state_dir_is_not_trusted(here: Path) -> None:
    mine = Ed25519PrivateKey.generate()
    pub = AuditConfig().signing_key_path(state_dir(here)).with_suffix(".pub")
    pub.write_bytes(
        mine.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    rewrite_log(here, lambda s, p: forge(s, p, 5), resign=Signer(mine))
    res = run("audit", "verify")
    assert res.exit_code == 1, res.output
    assert "does not match the signing key" in res.output


def test_another_nodes_key_cannot_sign_this_nodes_log(here: Path) -> None:
    """Trusted keys are bound to nodes: this node's own logs verify from its own key only,
    so the key of node-b (trusted for node-b's log) cannot re-sign a rewritten log of
    node-a (this node)."""
    other = Ed25519PrivateKey.generate()
    lf = new_log(here, "node-b", signer=Signer(other))
    lf.open()
    for i in range(1, 5):
        lf.append(stmt(i, "carol@example.com"))
        lf.flush()
    lf.close()
    other_pub = here / "node-b.pub"
    other_pub.write_bytes(
        other.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert run("audit", "verify", "--public-key", str(other_pub)).exit_code == 0
    rewrite_log(here, lambda s, p: forge(s, p, 5), resign=Signer(other))
    res = run("audit", "verify", "--public-key", str(other_pub))
    assert res.exit_code == 1, res.output


def _other_node(here: Path, node: str, records: int = 4) -> tuple[Ed25519PrivateKey, Path]:
    """A log of ``node`` signed by a key of its own; the key and its public key file."""
    key = Ed25519PrivateKey.generate()
    lf = new_log(here, node, signer=Signer(key))
    lf.open()
    for i in range(1, records + 1):
        lf.append(stmt(i, "carol@example.com"))
        lf.flush()
    lf.close()
    pub = here / f"{node}.pub"
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key, pub


@pytest.mark.parametrize("target", [NODE, f"{NODE}-w1", f"{NODE}-tools"])
def test_a_trusted_key_cannot_sign_any_log_of_this_node(here: Path, target: str) -> None:
    """This node's worker and tools logs are its logs too: only its own key signs them."""
    if target != NODE:
        lf = new_log(here, target)
        lf.open()
        for i in range(1, 7):
            lf.append(stmt(i))
            lf.flush()
        lf.close()
    other, pub = _other_node(here, "node-b")
    assert run("audit", "verify", "--public-key", str(pub)).exit_code == 0
    rewrite_log(here, lambda s, p: forge(s, p, 2), node=target, resign=Signer(other))
    code, data = verify_json("--public-key", str(pub))
    assert code == 1
    problems = [(p["kind"], p["node"]) for p in data["problems"]]
    assert ("checkpoint_unknown_key", target) in problems, problems
    assert any("trusted for another node's log" in p["message"] for p in data["problems"])


def test_a_node_key_signs_for_its_node_only(here: Path) -> None:
    """``--node-key node-b=FILE``: node-b's key is trusted for node-b's log, not for a
    node-c log it re-signed (which an unbound ``--public-key`` would let through)."""
    other, pub = _other_node(here, "node-b")
    _, pub_c = _other_node(here, "node-c")
    assert run("audit", "verify", "--node-key", f"node-b={pub}", "--node-key", f"node-c={pub_c}").exit_code == 0
    rewrite_log(here, lambda s, p: forge(s, p, 2), node="node-c", resign=Signer(other))
    assert run("audit", "verify", "--public-key", str(pub)).exit_code == 0  # unbound: the hole
    code, data = verify_json("--node-key", f"node-b={pub}")
    assert code == 1
    assert ("checkpoint_unknown_key", "node-c") in [(p["kind"], p["node"]) for p in data["problems"]]


def test_a_pinned_node_verifies_from_its_key_only(here: Path) -> None:
    """node-b pinned to its key: this node's own key (which may sign this state
    directory's earlier node ids) cannot re-sign node-b's log; and the pin can be written
    in the configuration (relative to it)."""
    _other_node(here, "node-b")
    (here / "dbsentry.yaml").write_text(
        CONFIG.replace("audit: {", "audit: {trusted_node_keys: {node-b: node-b.pub}, ")
    )
    assert run("audit", "verify").exit_code == 0
    rewrite_log(here, lambda s, p: forge(s, p, 2), node="node-b", resign=real_signer(here))
    code, data = verify_json()
    assert code == 1
    assert ("checkpoint_unknown_key", "node-b") in [(p["kind"], p["node"]) for p in data["problems"]]


def test_an_earlier_node_id_of_this_state_directory_still_verifies(here: Path) -> None:
    """The node was renamed (``audit.node`` set after it ran under its made-up id): the
    old id's log, signed by this node's key, still verifies."""
    lf = new_log(here, "host-abc123")
    lf.open()
    for i in range(1, 5):
        lf.append(stmt(i))
        lf.flush()
    lf.close()
    assert run("audit", "verify").exit_code == 0


def test_the_configured_node_id_pins_even_when_the_state_file_is_changed(here: Path) -> None:
    """With ``audit.node`` in the configuration, editing the state directory's
    ``audit-node`` does not unpin this node's logs."""
    (here / "dbsentry.yaml").write_text(CONFIG.replace("audit: {", f"audit: {{node: {NODE}, "))
    (state_dir(here) / "audit-node").write_text("somebody-else\n")
    other, pub = _other_node(here, "node-b")
    rewrite_log(here, lambda s, p: forge(s, p, 2), resign=Signer(other))
    assert run("audit", "verify", "--public-key", str(pub)).exit_code == 1


@pytest.mark.parametrize("value", ["node-b", "no such node!=x.pub", "node-b=missing.pub"])
def test_a_bad_node_key_is_refused(here: Path, value: str) -> None:
    res = run("audit", "verify", "--node-key", value)
    assert res.exit_code == 2 and "--node-key" in res.output, res.output


def test_a_bad_node_id_in_the_configuration_is_refused(here: Path) -> None:
    (here / "dbsentry.yaml").write_text(CONFIG.replace("audit: {", "audit: {trusted_node_keys: {'a b': x.pub}, "))
    res = run("audit", "verify")
    assert res.exit_code != 0 and "trusted_node_keys" in res.output, res.output


def test_a_restart_after_checkpoints_were_stripped_does_not_whitewash_them(here: Path) -> None:
    """The rewrite above, then the proxy starts again: its start checkpoint signs the log
    as it finds it (which vouches for every record before it), so the start says in the
    log what it found unvouched, and verify names that for good."""
    rewrite_log(here, lambda s, p: forge(s, p, 5), drop_checkpoints_after=4)
    restarted = AuditLog(new_log(here))
    restarted.start()
    restarted.close()
    res = run("audit", "verify")
    assert res.exit_code == 1, res.output
    _, data = verify_json()
    problems = [p for n in data["nodes"] for p in n["chain"]["problems"]] if "nodes" in data else data["problems"]
    assert any(p["kind"] == "unsigned" and "found records" in p["message"] and p["seq"] <= 5 for p in problems)



def test_forged_node_directory_without_any_signature_is_named(here: Path) -> None:
    fake = LogFile(log_dir(here), f"{NODE}-w1", signer=None)
    fake.open()
    fake.append(stmt(7, "bob@example.com", "DELETE FROM users"))
    fake.flush()
    fake.close()
    assert any(
        "DELETE FROM users" in line for line in search_lines("--identity", "bob@example.com")
    )
    _, html = report_statements(here)
    assert "DELETE FROM users" not in html and "bob@example.com" not in html  # not verified
    res = run("audit", "verify")
    assert res.exit_code == 1, res.output
    _code, data = verify_json()
    assert (data["first_problem"]["kind"], data["first_problem"]["node"]) == ("unsigned", f"{NODE}-w1")


def test_records_appended_after_a_close_checkpoint_are_named(here: Path) -> None:
    """The second run closes cleanly; then forged records are appended to its segment,
    after the close checkpoint, chained on from the last real one."""
    lf = new_log(here)
    lf.open()
    lf.close()  # a third run that served nothing: the log ends with 'close' on record TOTAL
    last = segments(here)[-1]
    _, f = record_at(here, TOTAL)
    prev, forged = f.hash, bytearray()
    for seq in (TOTAL + 1, TOTAL + 2):
        payload = stmt(seq, "bob@example.com", "GRANT ALL ON users TO bob")
        digest = link_hash(prev, seq, payload)
        forged += record_frame(seq, prev, digest, payload)
        prev = digest
    with last.open("ab") as fh:
        fh.write(bytes(forged))
    _res, html = report_statements(here)
    assert "bob@example.com" not in html  # the report takes verified records only
    summary = dict(
        line.split(",", 1) for line in (here / "r" / "summary.csv").read_text().splitlines()[1:]
    )
    assert summary["verified_records"] != f"node {NODE} 1..{TOTAL + 2}"
    verify = run("audit", "verify")
    assert verify.exit_code == 1, verify.output
    _code, data = verify_json()
    assert (data["first_problem"]["kind"], data["first_problem"]["seq"]) == ("inserted", TOTAL + 1)


def test_restart_cut_of_signed_records_is_named(here: Path) -> None:
    """The proxy's second run is stopped (killed).  The attacker flips a byte in the first
    record of its open segment: whole records and a signed periodic checkpoint follow it.
    The next start must not take that for a torn tail and cut them all (it did: the
    attacker then removed the .torn file and the cut records' index rows, and verify said
    INTACT); it leaves the segment as it is, records that, and verify names the damage."""
    victim_seg = segments(here)[-1]
    frames = frames_of(victim_seg)
    first = next(i for i, f in enumerate(frames) if f.kind == KIND_RECORD)
    assert any(f.kind == KIND_CHECKPOINT for f in frames[first + 1 :])  # signed records follow
    f = frames[first]
    target = f.seq
    data = bytearray(victim_seg.read_bytes())
    data[f.offset + 100] ^= 0x01
    victim_seg.write_bytes(bytes(data))
    before = victim_seg.read_bytes()
    db = index(here)
    db.execute("DELETE FROM records WHERE node = ? AND node_seq >= ?", (NODE, target))
    db.execute("UPDATE log_cursor SET seq = ? WHERE node = ?", (target - 1, NODE))
    db.close()
    restarted = AuditLog(new_log(here))
    restarted.start()
    restarted.close()
    assert victim_seg.read_bytes() == before  # nothing cut
    assert not list(node_dir(here).glob("*.torn-*"))
    tail = "\n".join(
        json.dumps(json.loads(line)) for line in run("audit", "tail", "-n", "3", "--json").output.splitlines()
    )
    assert "audit_log_damaged" in tail and "audit_log_tail_cut" not in tail
    res = run("audit", "verify")
    assert res.exit_code == 1, res.output
    _code, data_ = verify_json()
    assert (data_["first_problem"]["kind"], data_["first_problem"]["seq"]) == ("unreadable", target)
    # the records after the damage are still there, and the chain goes on from the last
    kept, damage, _ = read_past_damage(victim_seg.read_bytes())
    assert [d[0] for d in damage] == [f.offset]
    assert max(x.seq for x in kept if x.kind == KIND_RECORD) == TOTAL


def forge_legacy_rows(db: sqlite3.Connection, n: int = 2) -> str:
    """Records 1..n of the store's own chain (node NULL), attributed to bob, written into
    the index file; the hash of the last."""
    # the rows' own numbers are not checked: make room for seq 1..n
    db.execute("UPDATE records SET seq = seq + 1000 WHERE node IS NOT NULL")
    prev = "0" * 64
    for seq in range(1, n + 1):
        payload = stmt(seq, "bob@example.com", "TRUNCATE users")
        h = chain_hash(prev, seq, payload)
        d = orjson.loads(payload)
        db.execute(
            "INSERT INTO records (seq, prev_hash, hash, id, time, type, session_id, identity, identity_kind, "
            "connection, environment, decision, command, ref, tables, payload, node, node_seq) "
            "VALUES (?,?,?,?,?,'statement','s1','bob@example.com','human','prod','production','allow',NULL,NULL,"
            "'[\"public.users\"]',?,NULL,NULL)",
            (seq, prev, h, d["id"], d["time"], payload.decode()),
        )
        prev = h
    return prev


def test_forged_legacy_chain_in_an_index_made_with_the_log_is_named(here: Path) -> None:
    db = index(here)
    prev = forge_legacy_rows(db)
    db.execute("UPDATE chain_head SET seq = 2, hash = ? WHERE id = 1", (prev,))
    db.close()
    assert any("TRUNCATE users" in line for line in search_lines())
    _, html = report_statements(here)
    assert "bob@example.com" not in html  # the report takes verified records only
    res = run("audit", "verify")
    assert res.exit_code == 1, res.output
    _, data = verify_json()
    assert (data["first_problem"]["kind"], data["first_problem"]["node"]) == ("unsigned", None)


@pytest.mark.parametrize("node_seq", [None, 0, -7])
def test_index_row_without_a_log_position_is_named(here: Path, node_seq: int | None) -> None:
    _, f = record_at(here, 3)
    real = orjson.loads(f.payload)
    forged = payload_bytes(
        CompletionRecord(statement_id=real["id"], session_id="s1", rows=0, time=T0 + 3.5)
    )
    d = orjson.loads(forged)
    db = index(here)
    db.execute(
        "INSERT INTO records (seq, prev_hash, hash, id, time, type, session_id, identity, identity_kind, "
        "connection, environment, decision, command, ref, tables, payload, node, node_seq) "
        "VALUES (-1,?,?,?,?,'completion','s1',NULL,NULL,NULL,NULL,NULL,NULL,?,'[]',?,?,?)",
        ("0" * 64, "0" * 64, d["id"], d["time"], real["id"], forged.decode(), NODE, node_seq),
    )
    db.close()
    shown = [line for line in search_lines() if line.endswith("WHERE id = 3")]
    assert shown and "0 rows" in shown[0]  # the real statement now shows the forged outcome
    res = run("audit", "verify")
    assert res.exit_code == 1, res.output
    _, data = verify_json()
    assert (data["first_problem"]["kind"], data["first_problem"]["node"]) == ("index_added", NODE)


def test_index_cursor_moved_beyond_the_logs_end_hides_new_records_until_verify(here: Path) -> None:
    """The cursor set far ahead: the records the proxy writes next are never indexed (search
    does not show them), but verify names them as missing from the index."""
    db = index(here)
    db.execute("UPDATE log_cursor SET seq = 1000000 WHERE node = ?", (NODE,))
    db.close()
    lf = new_log(here)
    lf.open()
    lf.append(stmt(TOTAL + 1, "bob@example.com", "DROP TABLE audit_trail_of_bob"))
    lf.flush()
    leave_running(lf)
    hidden = [line for line in search_lines() if "audit_trail_of_bob" in line]
    assert not hidden
    code, data = verify_json()
    assert code == 1
    p = data["first_problem"]
    assert (p["kind"], p["seq"]) == ("index_missing", TOTAL + 1)


def test_stray_file_with_a_unicode_digit_name_is_named_not_a_crash(here: Path) -> None:
    (node_dir(here) / "\u00b2.seg").write_bytes(b"H")
    res = run("audit", "verify")
    assert res.exit_code == 1
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert f"node {NODE}" in res.stderr

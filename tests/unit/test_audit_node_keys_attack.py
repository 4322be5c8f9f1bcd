# ruff: noqa: F811  (the here fixture is imported from test_audit_tamper_attack)
"""Attacks on the binding of trusted keys to nodes (``audit verify``, keys.KeyRing), by
someone who can write the state directory (logs, index, ``audit-node``; not the private
signing key, not the configuration) and holds the private key of another node, node-b,
whose public key the verifier trusts.

A test marked ``xfail(strict=True, reason="FINDING: ...")`` asserts the secure behaviour
and fails today; it starts passing when that is fixed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_audit_tamper_attack import (  # type: ignore[import-not-found]
    CONFIG,
    NODE,
    T0,
    _other_node,
    forge,
    forge_legacy_rows,
    frames_of,
    here,  # noqa: F401  (the fixture)
    index,
    log_dir,
    new_log,
    real_signer,
    rewrite_log,
    run,
    state_dir,
    stmt,
    verify_json,
)

from dbsentry.audit.keys import Signer
from dbsentry.audit.log import (
    KIND_CHECKPOINT,
    KIND_HEADER,
    genesis,
    json_frame,
    link_hash,
    parse_frames,
    record_frame,
)
from dbsentry.audit.store import chain_hash


def relabel(here: Path, src: str, dst: str, signer: Signer, edit=lambda s, p: p) -> None:
    """Move node ``src``'s log to directory ``dst`` as if ``dst`` had written it: every
    header and checkpoint names ``dst``, the chain re-hashed from ``genesis(dst)``, every
    checkpoint signed by ``signer`` for ``dst``; payloads through ``edit``."""
    old, new = log_dir(here) / src, log_dir(here) / dst
    shutil.move(old, new)
    prev = bytes.fromhex(genesis(dst))
    hashes: dict[int, bytes] = {0: prev}
    for path in sorted(new.glob("*.seg")):
        data = path.read_bytes()
        got, end, error = parse_frames(data)
        assert error is None
        out = bytearray()
        for f in got:
            if f.kind == KIND_HEADER:
                out += json_frame(KIND_HEADER, {**f.meta, "node": dst, "prev_hash": prev.hex()})
            elif f.kind == KIND_CHECKPOINT:
                seq = int(f.meta["seq"])
                cp = signer.sign(seq, hashes[seq].hex(), f.meta["time"], f"{f.meta['kind']}:{dst}")
                out += json_frame(
                    KIND_CHECKPOINT,
                    {**f.meta, "node": dst, "hash": cp.hash, "key_id": cp.key_id, "signature": cp.signature},
                )
            else:
                payload = edit(f.seq, f.payload)
                digest = link_hash(prev, f.seq, payload)
                out += record_frame(f.seq, prev, digest, payload)
                hashes[f.seq] = prev = digest
        path.write_bytes(bytes(out) + data[end:])



def forge_legacy_chain(here: Path, signer: Signer, n: int = 2) -> None:
    """Records of the store's own chain (node NULL) attributed to bob, and a checkpoint on
    the last one signed by ``signer``, written straight into the index file."""
    db = index(here)
    prev = forge_legacy_rows(db, n)
    cp = signer.sign(n, prev, T0 + n, "periodic")
    db.execute(
        "INSERT INTO checkpoints (seq, hash, time, kind, key_id, signature) VALUES (?,?,?,?,?,?)",
        (cp.seq, cp.hash, cp.time, cp.kind, cp.key_id, cp.signature),
    )
    db.execute("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", (n, prev))
    db.close()


def forge_archive_file(path: Path, signer: Signer) -> None:
    """An archive file of the store's own chain (``audit verify --archive``): two records
    attributed to bob, ending with an archive checkpoint signed by ``signer``."""
    prev = "0" * 64
    lines: list[dict[str, object]] = [
        {"kind": "header", "format": "dbsentry-audit-archive/1", "anchor_seq": 0, "anchor_hash": prev, "first_seq": 1, "last_seq": 2}
    ]
    for seq in (1, 2):
        payload = stmt(seq, "bob@example.com", "TRUNCATE users")
        h = chain_hash(prev, seq, payload)
        lines.append({"kind": "record", "seq": seq, "prev_hash": prev, "hash": h, "record": orjson.loads(payload)})
        prev = h
    cp = signer.sign(2, prev, T0 + 3, "archive")
    lines.append(
        {"kind": "checkpoint", "seq": 2, "hash": prev, "time": cp.time, "checkpoint_kind": "archive", "key_id": cp.key_id, "signature": cp.signature}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))


def drop_index_rows(here: Path, node: str) -> None:
    """What the attacker does to the index so that no orphan row names ``node``."""
    db = index(here)
    db.execute("DELETE FROM records WHERE node = ?", (node,))
    db.execute("DELETE FROM log_cursor WHERE node = ?", (node,))
    db.close()


def key_only(here: Path, node: str = "node-b") -> tuple[Ed25519PrivateKey, Path]:
    """node-b's key and public key file, without a log of node-b here."""
    key, pub = _other_node(here, node)
    shutil.rmtree(log_dir(here) / node)
    drop_index_rows(here, node)
    return key, pub


def write_log(here: Path, node: str, records: int = 6) -> None:
    lf = new_log(here, node)
    lf.open()
    for i in range(1, records + 1):
        lf.append(stmt(i))
        lf.flush()
    lf.close()


def problems(data: dict) -> list[tuple[str, str | None]]:  # type: ignore[type-arg]
    return [(p["kind"], p["node"]) for p in data["problems"]]


# --- findings ------------------------------------------------------------------------------------


# FOUND (fixed): a key pinned to node-b (restricted) still signs the store's own (legacy)
# chain: verify checks legacy checkpoints with ring.check(cp, None), which skips the node
# binding
def test_a_node_key_cannot_sign_the_stores_own_chain(here: Path) -> None:
    """node-b's key, trusted for node-b's logs only, signs forged records of the store's own
    chain (written into the index file): they verify, and search and report show them."""
    other, pub = key_only(here)
    forge_legacy_chain(here, Signer(other))
    code, data = verify_json("--node-key", f"node-b={pub}")
    assert code == 1, data["legacy"]
    assert data["first_problem"]["node"] is None


# FOUND (fixed): a key pinned to node-b (restricted) signs an archive file of the store's own
# chain (verify --archive: verify_archive walks with node None, so any trusted key is accepted)
def test_a_node_key_cannot_sign_an_archive_of_the_stores_own_chain(here: Path) -> None:
    other, pub = key_only(here)
    archive = state_dir(here) / "archive" / "audit-20240501T000000Z.jsonl"
    forge_archive_file(archive, Signer(other))
    res = run("audit", "verify", "--archive", str(archive), "--node-key", f"node-b={pub}")
    assert res.exit_code == 1, res.output


# FOUND (fixed): this node's whole log can disappear: moved (re-hashed, forged) to node-b's
# worker namespace node-b-w9 and signed with node-b's key, it verifies as node-b's; verify
# never says that this node (audit-node / audit.node, whose signing key is here) has no log
def test_this_nodes_log_cannot_vanish_into_another_nodes_worker_log(here: Path) -> None:
    other, pub = _other_node(here, "node-b")
    relabel(here, NODE, "node-b-w9", Signer(other), lambda s, p: forge(s, p, 2))
    drop_index_rows(here, NODE)
    code, data = verify_json("--node-key", f"node-b={pub}")
    assert code == 1, data["nodes"]
    assert NODE in {p["node"] for p in data["problems"]}


# FOUND (fixed): a node pinned under an id in this node's namespace (node-a-w1: the id node-b
# reports) takes this node's worker log: KeyRing.owner matches the pinned id exactly before
# this node's workers, so node-b's key re-signs node-a-w1 and this node's key no longer can; no
# warning about the overlap
def test_a_pin_in_this_nodes_worker_namespace_does_not_hand_over_its_worker_log(here: Path) -> None:
    write_log(here, f"{NODE}-w1")
    other, pub = key_only(here)
    rewrite_log(here, lambda s, p: forge(s, p, 2), node=f"{NODE}-w1", resign=Signer(other))
    res = run("audit", "verify", "--node-key", f"{NODE}-w1={pub}")
    assert res.exit_code != 0, res.output


# FOUND (fixed) (false alarm): `audit archive` signs the manifest of every log under log_dir
# with this node's key, also of a node pinned to another key (trusted_node_keys), whose log
# then fails verify (anchor_unsigned: 'signed by a key trusted for another node')
def test_audit_archive_keeps_a_pinned_other_nodes_log_verifiable(here: Path) -> None:
    _other_node(here, "node-b", records=40)
    (here / "dbsentry.yaml").write_text(CONFIG.replace("audit: {", "audit: {trusted_node_keys: {node-b: node-b.pub}, "))
    assert run("audit", "verify").exit_code == 0
    res = run("audit", "archive", "--before", "1d")
    assert res.exit_code == 0, res.output
    code, data = verify_json()
    assert code == 0, data["problems"]


# FOUND (fixed) (lost records): with a 64-character node id the tools log f'{node}-tools'[:64]
# IS the node's own log: append_from_tool (lock .lock) writes into the running proxy's segment
# (lock .writer.lock), whose next writes overwrite the tool's record; verify says INTACT
def test_a_tool_record_of_a_64_character_node_is_kept(here: Path) -> None:
    from dbsentry.audit.logwriter import append_from_tool

    n64 = "n" * 64
    (here / "dbsentry.yaml").write_text(CONFIG.replace("audit: {", f"audit: {{node: {n64}, "))
    lf = new_log(here, n64)  # the proxy, running
    lf.open()
    for i in range(1, 5):
        lf.append(stmt(i))
        lf.flush()
    append_from_tool(log_dir(here), n64, [stmt(100, "token-tool@example.com")], real_signer(here))
    for i in range(5, 9):
        lf.append(stmt(i))
        lf.flush()
    lf.close()
    assert run("audit", "verify").exit_code == 0
    kept = [f.payload for p in log_dir(here).glob("*/*.seg") for f in frames_of(p)]
    assert any(b"token-tool@example.com" in payload for payload in kept)


# FOUND (fixed): a log directory whose name is not a node id (node-a-w\u0661, an Arabic-Indic one:
# looks like this node's worker 1) is verified as an unpinned node, so an unbound --public-key
# signs it: forged records show as 'node node-a-w\u0661 chain: INTACT' beside this node's
def test_a_log_directory_named_like_this_nodes_worker_is_not_a_node(here: Path) -> None:
    other, pub = _other_node(here, "node-b")
    write_log(here, f"{NODE}-w1")
    shutil.copytree(log_dir(here) / f"{NODE}-w1", log_dir(here) / "copy")
    relabel(here, "copy", f"{NODE}-w\u0661", Signer(other), lambda s, p: forge(s, p, 2))
    res = run("audit", "verify", "--public-key", str(pub))
    assert res.exit_code == 1, res.output


# --- what holds ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["node-a-w\u0661", "node-a-w\u00b2", "Node-a", "node-a-w", "node-a.w1", "node-aX", "node-a-tools2"])
def test_this_nodes_log_under_a_lookalike_name_is_not_signed_by_a_node_key(here: Path, name: str) -> None:
    """Moved to a name outside every pinned node's logs, a forged copy of this node's log
    signed by node-b's key is named: that key signs node-b's logs only."""
    other, pub = key_only(here)
    relabel(here, NODE, name, Signer(other), lambda s, p: forge(s, p, 2))
    drop_index_rows(here, NODE)
    code, data = verify_json("--node-key", f"node-b={pub}")
    assert code == 1
    # a name that is not a node id is no node's log at all (named as such, not verified)
    assert ("checkpoint_unknown_key", name) in problems(data) or ("segment", name) in problems(data)


def test_an_edited_audit_node_unpins_this_node_for_unbound_keys_only(here: Path) -> None:
    """The documented limit: without audit.node in the configuration, editing the state
    directory's audit-node unpins this node's other logs (here: made to name its worker
    1's), and a key of --public-key re-signs them.  A key given with --node-key stays
    bound to its node.  An audit-node naming a node with no log here is named."""
    other, pub = key_only(here)
    write_log(here, f"{NODE}-w1")
    (state_dir(here) / "audit-node").write_text("somebody-else\n")
    code, data = verify_json()
    assert code == 1 and ("removed", "somebody-else") in problems(data)
    (state_dir(here) / "audit-node").write_text(f"{NODE}-w1\n")
    rewrite_log(here, lambda s, p: forge(s, p, 2), resign=Signer(other))
    assert run("audit", "verify", "--public-key", str(pub)).exit_code == 0  # documented limit
    code, data = verify_json("--node-key", f"node-b={pub}")
    assert code == 1 and ("checkpoint_unknown_key", NODE) in problems(data)


def test_pinned_nodes_with_prefix_ids_and_a_shared_key_verify(here: Path) -> None:
    """No false alarm: node ids that start with this node's id (dots, underscores, other
    letters) are separate nodes; two nodes may share a key; workers and tools of a pinned
    node verify from its key; this node's workers and tools from its own key."""
    key, pub = key_only(here)
    signer = Signer(key)
    for n in ("node-a.w1", "node-a_b", "node-aX", "node-aX-w3", "node-aX-tools"):
        lf = new_log(here, n, signer=signer)
        lf.open()
        lf.append(stmt(1, "carol@example.com"))
        lf.close()
    write_log(here, f"{NODE}-w0", 2)
    write_log(here, f"{NODE}-tools", 2)
    args = [a for n in ("node-a.w1", "node-a_b", "node-aX") for a in ("--node-key", f"{n}={pub}")]
    code, data = verify_json(*args)
    assert code == 0, data["problems"]
    # and that shared key still cannot sign this node's worker log
    rewrite_log(here, lambda s, p: forge(s, p, 1), node=f"{NODE}-w0", resign=signer)
    code, data = verify_json(*args)
    assert code == 1 and ("checkpoint_unknown_key", f"{NODE}-w0") in problems(data)


def test_a_renamed_pinned_node_verifies_when_its_earlier_id_is_pinned_too(here: Path) -> None:
    """The multi-node recipe on a node that first ran under a made-up id: its earlier log
    is signed by its key, which --node-key restricts to the new id; pinning the earlier id
    to the same key too makes both verify."""
    key, pub = key_only(here)
    for n in ("host-abc123", "node-b"):
        lf = new_log(here, n, signer=Signer(key))
        lf.open()
        lf.append(stmt(1, "carol@example.com"))
        lf.close()
    assert run("audit", "verify", "--node-key", f"node-b={pub}").exit_code == 1  # the earlier id: other node's key
    assert run("audit", "verify", "--node-key", f"node-b={pub}", "--node-key", f"host-abc123={pub}").exit_code == 0


def test_a_manifest_under_a_name_that_is_not_a_node_id_is_no_nodes(here: Path) -> None:
    """A directory holding only an archive manifest, named like this node's worker with a
    non-ASCII digit: named as no writer's, not verified as a node."""
    from dbsentry.audit.verify import MANIFEST_NAME

    stray = log_dir(here) / f"{NODE}-w\u0661"
    stray.mkdir()
    (stray / MANIFEST_NAME).write_text("{}")
    code, data = verify_json()
    assert code == 1
    assert ("segment", f"{NODE}-w\u0661") in problems(data)
    assert f"{NODE}-w\u0661" not in {n["node"] for n in data["nodes"]}

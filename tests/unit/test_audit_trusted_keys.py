"""Which key may sign which node's log: the ring that ``audit verify``, the console and the
demo build from a configuration (``audit.verify.trusted_keys``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.keys import key_id, load_or_create_signing_key
from dbsentry.audit.verify import trusted_keys


def _pub(path: Path) -> str:
    key = Ed25519PrivateKey.generate().public_key()
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(key)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    load_or_create_signing_key(AuditConfig().signing_key_path(state))
    return state


def own_id(state: Path) -> str:
    return key_id(load_or_create_signing_key(AuditConfig().signing_key_path(state)).public_key())


def test_this_nodes_logs_verify_from_its_own_key_only(state: Path, tmp_path: Path) -> None:
    (state / "audit-node").write_text("node-a\n")
    other = _pub(tmp_path / "b.pub")
    ring = trusted_keys(AuditConfig(trusted_public_keys=[tmp_path / "b.pub"]), state)
    me = own_id(state)
    for node in ("node-a", "node-a-w0", "node-a-w12", "node-a-tools"):
        assert ring.signs_for(me, node) and not ring.signs_for(other, node), node
    for node in ("node-b", "node-a2", "node-a-w", "node-a-wx", "node-a-w1-tools", "earlier-id"):
        assert ring.signs_for(other, node) and ring.signs_for(me, node), node


def test_a_pinned_node_key_signs_for_its_node_only(state: Path, tmp_path: Path) -> None:
    (state / "audit-node").write_text("node-a\n")
    b = _pub(tmp_path / "b.pub")
    c = _pub(tmp_path / "c.pub")
    config = AuditConfig(trusted_public_keys=[tmp_path / "c.pub"], trusted_node_keys={"node-b": tmp_path / "b.pub"})
    ring = trusted_keys(config, state)
    assert ring.signs_for(b, "node-b-w1") and not ring.signs_for(c, "node-b-w1")
    assert not ring.signs_for(own_id(state), "node-b")
    assert not ring.signs_for(b, "node-c") and ring.signs_for(c, "node-c")


def test_without_a_node_id_nothing_is_pinned(state: Path, tmp_path: Path) -> None:
    """A state directory whose proxy never ran (no ``audit-node``): no node is pinned, and
    none is made up by verifying."""
    other = _pub(tmp_path / "b.pub")
    ring = trusted_keys(AuditConfig(trusted_public_keys=[tmp_path / "b.pub"]), state)
    assert ring.signs_for(other, "node-a") and ring.signs_for(own_id(state), "node-a")
    assert not (state / "audit-node").exists()


def test_the_configured_node_id_wins_over_the_state_file(state: Path, tmp_path: Path) -> None:
    (state / "audit-node").write_text("somebody-else\n")
    other = _pub(tmp_path / "b.pub")
    ring = trusted_keys(AuditConfig(node="node-a", trusted_public_keys=[tmp_path / "b.pub"]), state)
    assert not ring.signs_for(other, "node-a-w1") and ring.signs_for(other, "somebody-else")


def test_an_old_key_pinned_to_this_node_signs_its_logs_too(state: Path, tmp_path: Path) -> None:
    """After a change of this node's signing key, the old public key pinned to this node
    signs its logs (those written before), and for this node only."""
    (state / "audit-node").write_text("node-a\n")
    old = _pub(tmp_path / "old.pub")
    ring = trusted_keys(AuditConfig(trusted_node_keys={"node-a": tmp_path / "old.pub"}), state)
    assert ring.signs_for(old, "node-a-w1") and ring.signs_for(own_id(state), "node-a-w1")
    assert not ring.signs_for(old, "node-b")


def test_a_pin_on_another_pinned_nodes_log_is_refused(state: Path, tmp_path: Path) -> None:
    (state / "audit-node").write_text("node-a\n")
    _pub(tmp_path / "b.pub")
    with pytest.raises(ValueError, match="node-a-w1"):
        trusted_keys(AuditConfig(trusted_node_keys={"node-a-w1": tmp_path / "b.pub"}), state)

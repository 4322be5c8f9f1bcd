"""The Ed25519 key that signs checkpoints of the audit chain.

The private key lives in the state directory (``audit_signing.key``, mode 0600, created on
first use); its public half is written next to it (``audit_signing.pub``) so it can be
copied to wherever verification happens.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from dbsentry.audit.nodes import log_of
from dbsentry.audit.records import canonical_json

CheckpointKind = Literal["periodic", "archive", "close"]
_DOMAIN = b"dbsentry-audit-checkpoint-v1\n"
MANIFEST_DOMAIN = b"dbsentry-report-manifest-v1\n"


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short stable name for a public key: the first 16 hex digits of its SHA-256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_path(private_path: Path) -> Path:
    return private_path.with_suffix(".pub")


def load_or_create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the private key at ``path``, creating it (0600) and its ``.pub`` on first use."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return load_or_create_signing_key(path)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        _write_public(key, path)
        return key
    loaded = serialization.load_pem_private_key(data, password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    if not public_key_path(path).exists():
        _write_public(loaded, path)
    return loaded


def _write_public(key: Ed25519PrivateKey, private_path: Path) -> None:
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tmp = public_key_path(private_path).with_suffix(".pub.tmp")
    tmp.write_bytes(pub)
    with contextlib.suppress(OSError):
        os.chmod(tmp, 0o644)
    tmp.replace(public_key_path(private_path))


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def verification_keys(
    signing_key: Path,
    trusted: Iterable[Path] = (),
    *,
    own_node: str | None = None,
    node_keys: Mapping[str, Path] | None = None,
) -> KeyRing:
    """The keys ``verify`` trusts: this node's signing key, the ``trusted`` public keys,
    and ``node_keys`` (node -> public key file), each key bound to the node it signs for.

    The signing key's own public half when this user can read the private key, not the
    ``.pub`` file beside it, which anyone who can write the state directory can replace
    with a key of their own; ``ValueError`` when that file names another key.  Only when
    the private key cannot be read is the ``.pub`` file what there is to trust.  With
    ``own_node`` (this node's id), this node's logs verify from the signing key only (it
    signs for other nodes' too: the logs of this state directory under an earlier node
    id); a key of ``node_keys`` signs for its node's logs only, and only it does."""
    keys: list[Ed25519PublicKey] = []
    own = public_key_path(signing_key)
    signing: Ed25519PublicKey | None = None
    try:
        if signing_key.exists():
            signing = load_or_create_signing_key(signing_key).public_key()
    except PermissionError:
        signing = None
    if signing is not None:
        if own.exists() and _raw(load_public_key(own)) != _raw(signing):
            raise ValueError(
                f"{own} does not match the signing key {signing_key}: the public key file was replaced "
                "(or the key was); nothing is trusted from it"
            )
        keys.append(signing)
    elif own.exists():
        signing = load_public_key(own)
        keys.append(signing)
    keys.extend(load_public_key(p) for p in trusted)
    nodes: dict[str, set[str]] = {}
    pin: tuple[str, str] | None = None
    if own_node is not None and signing is not None:
        pin = (own_node, key_id(signing))
        nodes[own_node] = {pin[1]}
    restricted: set[str] = set()
    for node, path in (node_keys or {}).items():
        key = load_public_key(path)
        keys.append(key)
        nodes.setdefault(node, set()).add(key_id(key))
        restricted.add(key_id(key))
    for node in nodes:
        base = next((b for b in nodes if b != node and log_of(node, b)), None)
        if base is not None:
            raise ValueError(
                f"node {node} is pinned to a key, but its name is that of a log of node {base} "
                f"(a worker's or its tools'): the logs of {base} verify from {base}'s keys"
            )
    return KeyRing(keys, nodes, restricted, pin)


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that the chain had record ``seq`` with hash ``hash`` at ``time``."""

    seq: int
    hash: str
    time: float
    kind: str
    key_id: str
    signature: str  # hex


def checkpoint_message(seq: int, hash_hex: str, time: float, kind: str) -> bytes:
    body = canonical_json({"seq": seq, "hash": hash_hex, "time": time, "kind": kind})
    return _DOMAIN + body


class Signer:
    """Signs checkpoints with one private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def from_path(cls, path: Path) -> Signer:
        return cls(load_or_create_signing_key(path))

    def sign(self, seq: int, hash_hex: str, time: float, kind: str) -> Checkpoint:
        sig = self._key.sign(checkpoint_message(seq, hash_hex, time, kind))
        return Checkpoint(seq, hash_hex, time, kind, self.key_id, sig.hex())

    def sign_bytes(self, data: bytes) -> str:
        """A hex signature over ``data`` (report manifests), domain-separated from checkpoints."""
        return self._key.sign(MANIFEST_DOMAIN + data).hex()


class KeyRing:
    """The public keys whose checkpoint signatures are trusted, by key id, and which of
    them may sign which node's logs (a node's logs: its own, its workers', its tools').
    ``nodes`` pins nodes to their keys (node -> key ids): a pinned node's logs verify from
    those keys only.  A ``restricted`` key signs for the nodes it is pinned to only; every
    other key for any node that is not pinned, and for the store's own chain.  ``own``:
    this node and its key, whose archive manifests vouch for any node's log."""

    def __init__(
        self,
        keys: Iterable[Ed25519PublicKey],
        nodes: Mapping[str, Iterable[str]] | None = None,
        restricted: Iterable[str] = (),
        own: tuple[str, str] | None = None,
    ) -> None:
        self.keys: Mapping[str, Ed25519PublicKey] = {key_id(k): k for k in keys}
        self.nodes: Mapping[str, frozenset[str]] = {n: frozenset(v) for n, v in (nodes or {}).items()}
        self.restricted = frozenset(restricted)
        self.own = own

    def including(self, key: Ed25519PublicKey) -> KeyRing:
        """This ring and ``key`` (with what this ring says of it, if anything)."""
        return KeyRing([*self.keys.values(), key], self.nodes, self.restricted, self.own)

    def owner(self, node: str) -> str | None:
        """The pinned node whose log ``node`` is (its own, a worker's, its tools'), if any."""
        if node in self.nodes:
            return node
        return next((base for base in self.nodes if log_of(node, base)), None)

    def signs_for(self, kid: str, node: str | None) -> bool:
        """Whether key ``kid`` may sign ``node``'s log (None: the store's own chain)."""
        owner = self.owner(node) if node is not None else None
        return kid not in self.restricted if owner is None else kid in self.nodes[owner]

    def check(self, cp: Checkpoint, node: str | None = None) -> Literal["ok", "bad_signature", "unknown_key", "other_node"]:
        """Whether ``cp`` is signed by a key trusted for ``node``'s log (None: the store's
        own chain)."""
        key = self.keys.get(cp.key_id)
        if key is None:
            return "unknown_key"
        if not self.signs_for(cp.key_id, node):
            return "other_node"
        try:
            key.verify(
                bytes.fromhex(cp.signature), checkpoint_message(cp.seq, cp.hash, cp.time, cp.kind)
            )
        except (InvalidSignature, ValueError):
            return "bad_signature"
        return "ok"

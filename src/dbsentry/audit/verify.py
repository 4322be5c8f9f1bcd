"""Checking the chains, and moving old records to an archive without breaking them.

``verify_all`` (``audit verify``) checks the store's own chain (``verify``: the records
written before the audit log existed), every node's log (``verify_log``: frames, segments,
the chain from the node's genesis or its archive manifest, checkpoints signed for that
node) and that the store's index rows agree with the logs.  ``archive`` moves the oldest
records of the store's own chain to a JSONL file; ``archive_log`` moves a log's oldest
sealed segments to an archive directory under a signed manifest.

Each chain is walked in seq order with its checkpoints (``_Walk``):

- a record whose payload does not give its hash was **changed** (if it gives it under a
  neighbouring seq, records were **removed** or **inserted** before it and the rest renumbered);
- a gap in seq means records were **removed**; a record that links to the hash two back means
  the one between was **inserted**; a broken link otherwise means the previous record was
  replaced or changed and re-hashed;
- indexed columns that disagree with the hashed payload were **changed**;
- a checkpoint must carry a valid Ed25519 signature by a trusted key and name the hash the
  record at its seq has; the anchor left by an archive must be signed by an archive checkpoint;
- ``chain_head`` must name the last record (a truncated tail or a record beyond it shows).

Records after the last valid checkpoint are only chained, not signed: someone who can write
to the store could append forged ones there.  ``VerifyResult.unsigned_tail`` says how many.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time as _time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dbsentry.audit.config import AuditConfig
from dbsentry.audit.keys import Checkpoint, KeyRing, Signer, verification_keys
from dbsentry.audit.log import (
    FORMAT,
    KIND_CHECKPOINT,
    KIND_HEADER,
    KIND_RECORD,
    Frame,
    checkpoint_of,
    genesis,
    is_node_id,
    known_node_id,
    list_nodes,
    list_segments,
    read_past_damage,
    scan_segment,
    segment_number,
    stray_node_dirs,
)
from dbsentry.audit.nodes import log_of
from dbsentry.audit.records import canonical_json
from dbsentry.audit.store import (
    GENESIS_HASH,
    AuditStore,
    ChainPoint,
    EncodedRecord,
    StoredRecord,
    chain_hash,
    index_from_payload,
)

ProblemKind = Literal[
    "changed",
    "removed",
    "inserted",
    "unreadable",
    "segment",
    "checkpoint_signature",
    "checkpoint_unknown_key",
    "checkpoint_mismatch",
    "anchor_unsigned",
    "index_changed",
    "index_added",
    "index_missing",
    "unverifiable",
    "unsigned",
]

_INDEX_NAMES = (
    "id",
    "time",
    "type",
    "session_id",
    "identity",
    "identity_kind",
    "connection",
    "environment",
    "decision",
    "command",
    "ref",
    "tables",
)


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    seq: int | None
    message: str
    node: str | None = None  # a node's log (None: the store's own chain)

    def __str__(self) -> str:
        where = [f"node {self.node}"] if self.node is not None else []
        if self.seq is not None:
            where.append(f"record {self.seq}")
        return f"{self.kind}: {' '.join(where)}{': ' if where else ''}{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "node": self.node, "seq": self.seq, "message": self.message}


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    records: int
    anchor_seq: int
    first_seq: int | None
    last_seq: int | None
    checkpoints: int
    valid_checkpoints: int
    last_checkpoint_seq: int | None
    unsigned_tail: int
    problems: tuple[Problem, ...]
    truncated_problems: bool = False

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None

    def describe(self) -> str:
        span = f"{self.first_seq}..{self.last_seq}" if self.records else "none"
        lines = [
            f"chain: {'INTACT' if self.ok else 'BROKEN'}",
            f"records: {self.records} (seq {span}, anchor {self.anchor_seq})",
            self.checkpoint_line(),
            *self.problem_lines(),
        ]
        return "\n".join(lines)

    def checkpoint_line(self) -> str:
        last = self.last_checkpoint_seq if self.last_checkpoint_seq is not None else "none"
        return (
            f"checkpoints: {self.valid_checkpoints} of {self.checkpoints} valid, "
            f"last signed seq {last}, {self.unsigned_tail} records after it"
        )

    def problem_lines(self) -> list[str]:
        lines = [f"  {p}" for p in self.problems]
        if self.truncated_problems:
            lines.append("  ... (more problems not listed)")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "anchor_seq": self.anchor_seq,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "checkpoints": self.checkpoints,
            "valid_checkpoints": self.valid_checkpoints,
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "unsigned_tail": self.unsigned_tail,
            "problems": [p.to_dict() for p in self.problems],
        }


@dataclass
class _Walk:
    anchor: ChainPoint
    checkpoints: Sequence[Checkpoint]
    ring: KeyRing
    max_problems: int
    problems: list[Problem] = field(default_factory=list)
    dropped: bool = False
    node: str | None = None  # named in every problem
    anchor_trusted: bool = False  # the anchor is vouched for elsewhere (a signed log manifest)
    check_columns: bool = True  # compare the indexed columns with the payload (stored rows)

    def add(self, kind: ProblemKind, seq: int | None, message: str) -> None:
        if len(self.problems) < self.max_problems:
            self.problems.append(Problem(kind, seq, message, self.node))
        else:
            self.dropped = True

    def run(
        self,
        records: Iterable[StoredRecord],
        head_before: ChainPoint | None,
        head_after: Callable[[], ChainPoint] | None,
    ) -> VerifyResult:
        anchor = self.anchor
        by_seq: dict[int, list[Checkpoint]] = {}
        valid_seqs: list[int] = []
        anchor_signed = anchor.seq == 0 or self.anchor_trusted
        for cp in self.checkpoints:
            status = self.ring.check(cp, self.node)
            if status == "unknown_key" or status == "other_node":
                self.add(
                    "checkpoint_unknown_key",
                    cp.seq,
                    f"checkpoint signed by unknown key {cp.key_id}"
                    if status == "unknown_key"
                    else f"checkpoint signed by key {cp.key_id}, which is trusted for another node's log, not for {self.node}'s",
                )
                continue
            if status == "bad_signature":
                self.add("checkpoint_signature", cp.seq, "checkpoint signature does not verify")
                continue
            if cp.seq == anchor.seq and anchor.seq > 0:
                if cp.hash != anchor.hash:
                    self.add(
                        "checkpoint_mismatch",
                        cp.seq,
                        "archive checkpoint disagrees with the anchor",
                    )
                elif cp.kind == "archive":
                    anchor_signed = True
                    valid_seqs.append(cp.seq)
                continue
            if cp.seq == 0 == anchor.seq:
                # A checkpoint before any record (a node that served nothing, then stopped):
                # it must name the chain's start.
                if cp.hash != anchor.hash:
                    self.add("checkpoint_mismatch", 0, "a checkpoint before any record names another chain's start")
                else:
                    valid_seqs.append(0)
                continue
            if cp.seq < anchor.seq:
                continue  # covers archived records
            by_seq.setdefault(cp.seq, []).append(cp)
        if not anchor_signed:
            self.add(
                "anchor_unsigned",
                anchor.seq,
                "the chain's starting point is not signed by an archive checkpoint",
            )

        expected = anchor.seq + 1
        prev_hash, prev2_hash = anchor.hash, None
        shift = 0
        count = 0
        first_seq: int | None = None
        last_seq: int | None = None
        for r in records:
            count += 1
            first_seq = r.seq if first_seq is None else first_seq
            explained = False
            if r.seq > expected:
                n = r.seq - expected
                self.add(
                    "removed",
                    expected,
                    f"{n} record{'s' if n > 1 else ''} missing (seq {expected}..{r.seq - 1})",
                )
                explained = True
            elif r.seq < expected:
                self.add("inserted", r.seq, "record out of sequence (a duplicate seq, or records reordered)")
                explained = True
            if chain_hash(r.prev_hash, r.seq, r.payload) != r.hash:
                delta = None
                for d in ([shift] if shift else []) + [1, -1, 2, -2, 3, -3]:
                    if r.seq + d > 0 and chain_hash(r.prev_hash, r.seq + d, r.payload) == r.hash:
                        delta = d
                        break
                if delta is None:
                    self.add("changed", r.seq, "content does not match its hash")
                    explained = True
                elif delta != shift:
                    if delta > shift:
                        n = delta - shift
                        self.add(
                            "removed",
                            r.seq,
                            f"{n} record{'s' if n > 1 else ''} before this one removed and the rest renumbered "
                            f"(this record was seq {r.seq + delta})",
                        )
                    else:
                        self.add(
                            "inserted",
                            r.seq + delta - shift,
                            f"forged record{'s' if shift - delta > 1 else ''} inserted here and the rest "
                            f"renumbered (record {r.seq} was seq {r.seq + delta})",
                        )
                    shift = delta
                    explained = True
                else:
                    explained = True  # renumbered, already reported
            if r.prev_hash != prev_hash and not explained:
                if r.seq == anchor.seq + 1 and prev_hash == anchor.hash:
                    start = "genesis" if anchor.seq == 0 else f"the anchor (seq {anchor.seq})"
                    self.add("changed", r.seq, f"does not link to the chain's start ({start})")
                elif prev2_hash is not None and r.prev_hash == prev2_hash:
                    self.add(
                        "inserted",
                        r.seq - 1,
                        f"not part of the chain: record {r.seq} links past it",
                    )
                else:
                    self.add(
                        "changed",
                        r.seq - 1,
                        f"replaced or changed and re-hashed: record {r.seq} links to a different hash",
                    )
            bad = _column_differences(r) if self.check_columns else []
            if bad:
                self.add(
                    "changed",
                    r.seq,
                    f"indexed column{'s' if len(bad) > 1 else ''} {', '.join(bad)} differ from the hashed payload",
                )
            for cp in by_seq.pop(r.seq, ()):
                if cp.hash != r.hash:
                    self.add(
                        "checkpoint_mismatch",
                        r.seq,
                        "signed checkpoint names a different hash for this record",
                    )
                else:
                    valid_seqs.append(cp.seq)
            prev2_hash, prev_hash = prev_hash, r.hash
            expected = r.seq + 1
            last_seq = r.seq

        end = last_seq if last_seq is not None else anchor.seq
        for seq, cps in sorted(by_seq.items()):
            for _ in cps:
                if seq > end:
                    self.add(
                        "removed", seq, "a signed checkpoint covers this record but it is missing"
                    )
                else:
                    self.add(
                        "checkpoint_mismatch",
                        seq,
                        "a signed checkpoint names this record but it is missing",
                    )
        if head_before is not None and head_before.seq > end:
            self.add(
                "removed",
                end + 1,
                f"records {end + 1}..{head_before.seq} missing at the end (chain head is {head_before.seq})",
            )
        elif (
            head_before is not None
            and head_before.seq == end
            and end > anchor.seq
            and head_before.hash != prev_hash
        ):
            self.add("changed", end, "the last record's hash differs from the chain head")
        if head_after is not None:
            after = head_after()  # read after the walk: covers every legitimately committed record
            if end > after.seq:
                self.add("inserted", after.seq + 1, f"records beyond the chain head ({after.seq})")

        problems = sorted(self.problems, key=_problem_order)
        last_cp = max(valid_seqs) if valid_seqs else None
        tail = end - (last_cp if last_cp is not None else anchor.seq)
        return VerifyResult(
            ok=not problems and not self.dropped,
            records=count,
            anchor_seq=anchor.seq,
            first_seq=first_seq,
            last_seq=last_seq,
            checkpoints=len(self.checkpoints),
            valid_checkpoints=len(valid_seqs),
            last_checkpoint_seq=last_cp,
            unsigned_tail=max(0, tail),
            problems=tuple(problems),
            truncated_problems=self.dropped,
        )


def _column_differences(r: StoredRecord) -> list[str]:
    """The indexed columns of ``r`` that disagree with its payload."""
    try:
        idx = index_from_payload(r.payload)
    except ValueError:
        return ["payload"]
    return [
        n
        for n, a, b in zip(_INDEX_NAMES, idx.index_tuple(), r.record.index_tuple(), strict=True)
        if a != b
    ]


_RECORD_KINDS = ("changed", "removed", "inserted", "unreadable")


def _problem_order(p: Problem) -> tuple[int, int]:
    """By seq; at one seq, what happened to the record before what it did to checkpoints."""
    return (p.seq if p.seq is not None else -1, 0 if p.kind in _RECORD_KINDS else 1)


def trusted_keys(
    config: AuditConfig, state_dir: Path, extra: Sequence[Path] = (), node_keys: Mapping[str, Path] | None = None
) -> KeyRing:
    """The keys ``verify`` trusts under ``config`` (see ``keys.verification_keys``): this
    node's signing key, pinned to this node when it has an id, ``trusted_public_keys`` and
    ``extra``, and ``trusted_node_keys`` with ``node_keys``, each pinned to its node."""
    return verification_keys(
        config.signing_key_path(state_dir),
        [*config.trusted_public_keys, *extra],
        own_node=known_node_id(config.node, state_dir),
        node_keys={**config.trusted_node_keys, **(node_keys or {})},
    )


def _ring(public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey] | KeyRing) -> KeyRing:
    if isinstance(public_keys, KeyRing):
        return public_keys
    if isinstance(public_keys, Ed25519PublicKey):
        return KeyRing([public_keys])
    return KeyRing(public_keys)


def verify(
    store: AuditStore,
    public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey] | KeyRing,
    *,
    max_problems: int = 100,
) -> VerifyResult:
    """Walk the store's own chain (the records written before the audit log existed; rows
    indexed from the logs are checked by :func:`verify_all`) and its checkpoints
    (streaming; memory ~ checkpoints).  An empty chain is intact."""
    head_before = store.head()
    anchor = store.anchor()
    checkpoints = list(store.iter_checkpoints())
    walk = _Walk(anchor, checkpoints, _ring(public_keys), max_problems)
    return walk.run(store.iter_records(after_seq=0, legacy=True), head_before, store.head)


def _replace_problems(result: VerifyResult, problems: tuple[Problem, ...]) -> VerifyResult:
    return VerifyResult(
        ok=False,
        records=result.records,
        anchor_seq=result.anchor_seq,
        first_seq=result.first_seq,
        last_seq=result.last_seq,
        checkpoints=result.checkpoints,
        valid_checkpoints=result.valid_checkpoints,
        last_checkpoint_seq=result.last_checkpoint_seq,
        unsigned_tail=result.unsigned_tail,
        problems=problems,
        truncated_problems=result.truncated_problems,
    )


# --- archive ---------------------------------------------------------------------------------

ARCHIVE_FORMAT = "dbsentry-audit-archive/1"


class ArchiveError(Exception):
    """The archive was not made (the chain is broken, or the file exists)."""


@dataclass(frozen=True, slots=True)
class ArchiveResult:
    path: Path
    first_seq: int
    last_seq: int
    records: int
    checkpoint: Checkpoint


def _cp_line(cp: Checkpoint) -> dict[str, Any]:
    return {
        "kind": "checkpoint",
        "seq": cp.seq,
        "hash": cp.hash,
        "time": cp.time,
        "checkpoint_kind": cp.kind,
        "key_id": cp.key_id,
        "signature": cp.signature,
    }


def _write_line(f: IO[bytes], obj: dict[str, Any]) -> None:
    f.write(orjson.dumps(obj))
    f.write(b"\n")


def archive(
    store: AuditStore,
    before: datetime | float,
    out_path: Path,
    signer: Signer,
    *,
    public_keys: Sequence[Ed25519PublicKey] | KeyRing = (),
) -> ArchiveResult | None:
    """Move the records older than ``before`` (a prefix of the chain) to a JSONL file.

    The chain is verified first (nothing is archived from a broken chain).  The file holds
    a header, every archived record with its seq and hashes, and the checkpoints covering
    them, ending with a new signed ``archive`` checkpoint on the last archived record; that
    record becomes the store's anchor and the records are deleted, in one transaction.
    Returns None when there is nothing to archive.
    """
    ts = before.timestamp() if isinstance(before, datetime) else float(before)
    out_path = Path(out_path)
    if out_path.exists():
        raise ArchiveError(f"{out_path} exists; archives are never overwritten")
    anchor = store.anchor()
    # Only the store's own chain: rows indexed from the logs come after it (and are
    # archived with their segments, see archive_log).
    through = min(store.last_seq_before(ts), store.head().seq)
    if through <= anchor.seq:
        return None
    result = verify(store, _ring(public_keys).including(signer.public_key))
    if not result.ok:
        raise ArchiveError(f"the chain does not verify, nothing archived: {result.first_problem}")
    anchor_cps = [cp for cp in store.iter_checkpoints() if anchor.seq <= cp.seq <= through]
    tmp = out_path.with_name(out_path.name + ".partial")
    last: StoredRecord | None = None
    count = 0
    with open(tmp, "xb") as f:
        _write_line(
            f,
            {
                "kind": "header",
                "format": ARCHIVE_FORMAT,
                "anchor_seq": anchor.seq,
                "anchor_hash": anchor.hash,
                "first_seq": anchor.seq + 1,
                "last_seq": through,
            },
        )
        for r in store.iter_records(after_seq=anchor.seq, through_seq=through, legacy=True):
            line: dict[str, Any] = {
                "kind": "record",
                "seq": r.seq,
                "prev_hash": r.prev_hash,
                "hash": r.hash,
            }
            data = orjson.loads(r.payload)
            if canonical_json(data) == r.payload:
                line["record"] = data
            else:  # keep the exact bytes
                line["payload"] = r.payload.decode("utf-8")
            _write_line(f, line)
            last = r
            count += 1
        if last is None or last.seq != through:
            tmp.unlink()
            raise ArchiveError("records changed while archiving; try again")
        cp = signer.sign(through, last.hash, _time.time(), "archive")
        for old in anchor_cps:
            _write_line(f, _cp_line(old))
        _write_line(f, _cp_line(cp))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_path)
    store.truncate_prefix(cp)
    return ArchiveResult(out_path, anchor.seq + 1, through, count, cp)


def verify_archive(
    path: Path, public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey] | KeyRing
) -> VerifyResult:
    """Verify an archive file on its own: its chain, its checkpoints, its anchor."""
    header: dict[str, Any] | None = None
    checkpoints: list[Checkpoint] = []

    def records() -> Iterator[StoredRecord]:
        nonlocal header
        with open(path, "rb") as f:
            for raw in f:
                obj = orjson.loads(raw)
                kind = obj.get("kind")
                if kind == "header":
                    header = obj
                elif kind == "record":
                    payload = (
                        canonical_json(obj["record"])
                        if "record" in obj
                        else str(obj["payload"]).encode("utf-8")
                    )
                    yield StoredRecord(
                        int(obj["seq"]), obj["prev_hash"], obj["hash"], index_from_payload(payload)
                    )

    # Checkpoints and header first (small), then stream the records.
    with open(path, "rb") as f:
        for raw in f:
            obj = orjson.loads(raw)
            if obj.get("kind") == "header":
                header = obj
            elif obj.get("kind") == "checkpoint":
                checkpoints.append(
                    Checkpoint(
                        int(obj["seq"]),
                        obj["hash"],
                        float(obj["time"]),
                        obj["checkpoint_kind"],
                        obj["key_id"],
                        obj["signature"],
                    )
                )
    if header is None or header.get("format") != ARCHIVE_FORMAT:
        raise ValueError(f"{path} is not a dbsentry audit archive")
    anchor = ChainPoint(int(header["anchor_seq"]), str(header.get("anchor_hash", GENESIS_HASH)))
    last = int(header["last_seq"])
    walk = _Walk(anchor, checkpoints, _ring(public_keys), 100)
    result = walk.run(records(), None, None)
    if result.last_seq != last:
        extra = Problem(
            "removed", (result.last_seq or anchor.seq) + 1, f"archive ends before seq {last}"
        )
        return _replace_problems(
            result, tuple(sorted((*result.problems, extra), key=_problem_order))
        )
    return result


# --- the nodes' audit logs --------------------------------------------------------------------

MANIFEST_NAME = "archive-manifest.json"
MANIFEST_FORMAT = "dbsentry-audit-log-archive/1"
_SEAL_KINDS = ("seal", "close")  # a checkpoint that ends a segment the writer left


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class ArchivedSegment:
    """One segment moved to the archive, as its node's manifest lists it."""

    segment: int
    first_seq: int
    last_seq: int  # first_seq - 1 when it holds no record
    last_hash: str  # the chain's hash at last_seq
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "segment": self.segment,
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "last_hash": self.last_hash,
            "sha256": self.sha256,
            "bytes": self.bytes,
        }


@dataclass(frozen=True, slots=True)
class LogManifest:
    """``<log_dir>/<node>/archive-manifest.json``: the segments archived so far and where
    the live log starts (the last archived record), signed with the audit key."""

    node: str
    segments: tuple[ArchivedSegment, ...]
    last_segment: int
    last_seq: int
    last_hash: str
    time: float
    archive_dir: str
    key_id: str = ""
    signature: str = ""

    def body(self) -> bytes:
        return canonical_json(
            {
                "format": MANIFEST_FORMAT,
                "node": self.node,
                "segments": [s.to_dict() for s in self.segments],
                "last_segment": self.last_segment,
                "last_seq": self.last_seq,
                "last_hash": self.last_hash,
                "time": self.time,
                "archive_dir": self.archive_dir,
            }
        )

    def checkpoint(self) -> Checkpoint:
        """The signed statement: (last seq, SHA-256 of the body, time, ``archive-manifest:<node>``)."""
        digest = hashlib.sha256(self.body()).hexdigest()
        return Checkpoint(
            self.last_seq, digest, self.time, f"archive-manifest:{self.node}", self.key_id, self.signature
        )

    def signed(self, signer: Signer) -> LogManifest:
        cp = signer.sign(self.last_seq, hashlib.sha256(self.body()).hexdigest(), self.time, f"archive-manifest:{self.node}")
        return dataclasses.replace(self, key_id=cp.key_id, signature=cp.signature)

    def to_json(self) -> bytes:
        data = orjson.loads(self.body())
        data["key_id"] = self.key_id
        data["signature"] = self.signature
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)


def read_manifest(node_dir: Path) -> LogManifest | None:
    """The node's archive manifest (None: nothing archived); ``ValueError`` if unreadable."""
    path = Path(node_dir) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        d = orjson.loads(raw)
        if not isinstance(d, dict) or d.get("format") != MANIFEST_FORMAT:
            raise ValueError("not a dbsentry audit log archive manifest")
        return LogManifest(
            node=str(d["node"]),
            segments=tuple(
                ArchivedSegment(
                    int(s["segment"]),
                    int(s["first_seq"]),
                    int(s["last_seq"]),
                    str(s["last_hash"]),
                    str(s["sha256"]),
                    int(s["bytes"]),
                )
                for s in d["segments"]
            ),
            last_segment=int(d["last_segment"]),
            last_seq=int(d["last_seq"]),
            last_hash=str(d["last_hash"]),
            time=float(d["time"]),
            archive_dir=str(d.get("archive_dir", "")),
            key_id=str(d["key_id"]),
            signature=str(d["signature"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from None


@dataclass(slots=True)
class _Segment:
    """What the first pass over a segment found (its records are read again by the walk)."""

    number: int
    path: Path
    archived: bool
    size: int = 0
    header: dict[str, Any] | None = None
    records: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    # the last frame, when it is a checkpoint: (kind, seq)
    end_checkpoint: tuple[str, int] | None = None
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    damage: list[tuple[int, str, int | None]] = field(default_factory=list)  # (offset, error, resumed at)
    torn_tail: tuple[int, str] | None = None  # (offset, error): the end of the last segment
    # the first record after a seal or close checkpoint: (its seq, the checkpoint's kind)
    after_end: tuple[int, str] | None = None
    # a seal or close checkpoint that does not name the record just before it: (that
    # record's seq, the checkpoint's kind)
    short_end: tuple[int, str] | None = None


def _read_frames(data: bytes, tolerate_tail: bool) -> tuple[list[Frame], list[tuple[int, str, int | None]], tuple[int, str] | None]:
    """Every readable frame of a segment, reading on past damaged ones: (frames, damage,
    torn tail).  A damaged stretch with no whole frame after it is, in the last segment
    (``tolerate_tail``), a torn tail: a write in progress, or a crash the writer's next
    start cuts off; elsewhere it is damage."""
    frames, damage, torn = read_past_damage(data)
    if torn is not None and not tolerate_tail:
        return frames, [*damage, (torn[0], torn[1], None)], None
    return frames, damage, torn


def _first_pass(node: str, number: int, path: Path, archived: bool, last: bool) -> _Segment:
    seg = _Segment(number, path, archived)
    data = path.read_bytes()
    seg.size = len(data)
    frames, seg.damage, seg.torn_tail = _read_frames(data, last and not archived)
    if frames and frames[0].kind == KIND_HEADER:
        seg.header = frames[0].meta
    ended: str | None = None
    for f in frames:
        if f.kind == KIND_RECORD:
            seg.records += 1
            seg.first_seq = f.seq if seg.first_seq is None else seg.first_seq
            seg.last_seq, seg.last_hash = f.seq, f.hash.hex()
            if ended is not None and seg.after_end is None:
                seg.after_end = (f.seq, ended)
        elif f.kind == KIND_CHECKPOINT:
            seg.checkpoints.append(f.meta)
            if f.meta.get("kind") in _SEAL_KINDS:
                ended = str(f.meta.get("kind"))
                if seg.last_seq is not None and f.meta.get("seq") != seg.last_seq and seg.short_end is None:
                    # A writer seals or closes a segment on its last record: records before
                    # such a checkpoint that it does not name were put there.
                    seg.short_end = (seg.last_seq, ended)
    if frames and frames[-1].kind == KIND_CHECKPOINT:
        meta = frames[-1].meta
        if isinstance(meta.get("seq"), int):
            seg.end_checkpoint = (str(meta.get("kind")), int(meta["seq"]))
    return seg


def _encoded(payload: bytes) -> EncodedRecord:
    try:
        return index_from_payload(payload)
    except ValueError:
        return EncodedRecord(payload, "", 0.0, "", None, None, None, None, None, None, None, None, ())


@dataclass(slots=True)
class IndexCheck:
    """How the index's rows of one node compare with its log."""

    rows: int = 0
    agree: int = 0
    cursor: int = 0
    not_indexed: int = 0  # log records past the cursor: not indexed yet
    archived_rows: int = 0  # rows of archived records (their segments are not here)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "agree": self.agree,
            "cursor": self.cursor,
            "not_indexed": self.not_indexed,
            "archived_rows": self.archived_rows,
        }


class _IndexCompare:
    """Compares a node's index rows (in node_seq order) with its log records as the walk
    reads them."""

    def __init__(self, store: AuditStore, node: str, walk: _Walk, anchor_seq: int) -> None:
        self.walk = walk
        self.check = IndexCheck(cursor=store.index_cursor(node))
        self._rows = store.iter_index(node)
        self._anchor_seq = anchor_seq
        self._row: StoredRecord | None = None
        self._done = False
        self._advance()

    def _advance(self) -> None:
        self._row = next(self._rows, None)
        if self._row is not None:
            self.check.rows += 1

    def _seq(self, row: StoredRecord) -> int:
        return row.node_seq if row.node_seq is not None else 0

    def see(self, rec: StoredRecord) -> None:
        """The next log record (in order)."""
        row = self._row
        while row is not None and self._seq(row) < rec.seq:
            self._no_record(row)
            self._advance()
            row = self._row
        if row is not None and self._seq(row) == rec.seq:
            self._compare(row, rec)
            self._advance()
        elif rec.seq <= self.check.cursor:
            self.walk.add("index_missing", rec.seq, "the log has this record but the index has no row for it")
        else:
            self.check.not_indexed += 1

    def _unplaced(self, row: StoredRecord) -> bool:
        """A row with no position in a log (``node_seq`` missing, zero or negative): no
        writer made it, and it is no archived record either."""
        if row.node_seq is not None and row.node_seq >= 1:
            return False
        self.walk.add(
            "index_added",
            None,
            f"the index has a row of this node with no place in its log (node_seq {row.node_seq}, id {row.record.id})",
        )
        return True

    def _no_record(self, row: StoredRecord) -> None:
        if self._unplaced(row):
            return
        seq = self._seq(row)
        if seq <= self._anchor_seq:
            self.check.archived_rows += 1
        else:
            self.walk.add("index_added", seq, "the index has a row the log does not have (added to the index, or removed from the log)")

    def _compare(self, row: StoredRecord, rec: StoredRecord) -> None:
        diff = [n for n, a, b in (("payload", row.payload, rec.payload), ("hash", row.hash, rec.hash), ("prev_hash", row.prev_hash, rec.prev_hash)) if a != b]
        if not diff:
            diff = [
                n
                for n, a, b in zip(_INDEX_NAMES, row.record.index_tuple(), rec.record.index_tuple(), strict=True)
                if a != b
            ]
        if diff:
            self.walk.add("index_changed", rec.seq, f"the index row differs from the log ({', '.join(diff)})")
        else:
            self.check.agree += 1

    def finish(self, end: StoredRecord | None, end_seq: int) -> None:
        """After the log's last record (``end``, seq ``end_seq``): rows beyond it."""
        rows: list[StoredRecord] = []
        while self._row is not None:
            if self._unplaced(self._row):
                pass
            elif self._seq(self._row) <= self._anchor_seq:
                self.check.archived_rows += 1
            else:
                if len(rows) < 2:
                    rows.append(self._row)
                extra = self._row
            self._advance()
        if not rows:
            return
        first = rows[0]
        n = self._seq(extra) - self._seq(first) + 1
        # Rows that continue the log's chain: the log's tail was cut.
        links = (
            self._seq(first) == end_seq + 1
            and (end is None or first.prev_hash == end.hash)
            and chain_hash(first.prev_hash, self._seq(first), first.payload) == first.hash
        )
        if links:
            self.walk.add(
                "removed",
                end_seq + 1,
                f"the log ends at seq {end_seq} but the index holds records {end_seq + 1}..{self._seq(extra)} "
                "that continue its chain: the log's tail was cut",
            )
        else:
            self.walk.add(
                "index_added",
                self._seq(first),
                f"the index has {n if n > 1 else 'a'} row{'s' if n > 1 else ''} beyond the log's end (seq {end_seq}) that do not continue its chain",
            )


@dataclass(frozen=True, slots=True)
class LogResult:
    """The verification of one node's log (and of the index's rows of it)."""

    node: str
    chain: VerifyResult  # its problems are every problem found for this node
    segments: tuple[int, ...]  # the segments read, in order (archived ones too, with --archive-dir)
    archived_segments: int  # segments the manifest says were archived
    index: IndexCheck | None
    info: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.chain.ok

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.chain.problems

    @property
    def verified_through(self) -> int:
        """The last seq before the first problem: the records up to it are verified."""
        return verified_through(self.chain)

    def describe(self) -> str:
        c = self.chain
        span = f"seq {c.first_seq}..{c.last_seq}" if c.records else "none"
        segs = (
            f"segment{'s' if len(self.segments) > 1 else ''} {self.segments[0]}..{self.segments[-1]}"
            if self.segments
            else "no segments"
        )
        lines = [
            f"node {self.node} chain: {'INTACT' if self.ok else 'BROKEN'}",
            f"  records: {c.records} ({span}, anchor {c.anchor_seq}), {segs}"
            + (f", {self.archived_segments} archived" if self.archived_segments else ""),
            f"  {c.checkpoint_line()}",
        ]
        if self.index is not None:
            i = self.index
            more = [f"cursor {i.cursor}"]
            if i.not_indexed:
                more.append(f"{i.not_indexed} records not indexed yet")
            if i.archived_rows:
                more.append(f"{i.archived_rows} rows of archived records not checked")
            lines.append(f"  index: {i.agree} of {i.rows} rows agree with the log ({', '.join(more)})")
        lines += [f"  note: {n}" for n in self.info]
        return "\n".join(lines + c.problem_lines())

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "ok": self.ok,
            "verified_through": self.verified_through,
            "segments": list(self.segments),
            "archived_segments": self.archived_segments,
            "chain": self.chain.to_dict(),
            "index": self.index.to_dict() if self.index is not None else None,
            "info": list(self.info),
            "problems": [p.to_dict() for p in self.problems],
        }


def verified_through(result: VerifyResult) -> int:
    """The last seq of ``result``'s chain before its first problem (records up to it are
    verified)."""
    seqs = [p.seq for p in result.problems if p.seq is not None]
    if result.truncated_problems or len(seqs) < len(result.problems):
        return result.anchor_seq  # too many problems to know the first, or one without a seq
    if seqs:
        return max(result.anchor_seq, min(seqs) - 1)
    return result.last_seq if result.last_seq is not None else result.anchor_seq


def _node_segments(node_dir: Path, archive_dir: Path | None, manifest: LogManifest | None) -> tuple[list[tuple[int, Path, bool]], list[str]]:
    """The segments to walk, in order: (number, path, archived), and notes."""
    notes: list[str] = []
    live = list_segments(node_dir)
    if archive_dir is not None:
        archived = list_segments(archive_dir / node_dir.name)
        top = archived[-1][0] if archived else 0
        if manifest is not None:
            top = max(top, manifest.last_segment)
        out = [(n, p, True) for n, p in archived]
        for n, p in live:
            if n > top:
                out.append((n, p, False))
            else:
                notes.append(f"segment {n} is archived but still in the log directory (read from the archive)")
        return out, notes
    if manifest is not None:
        for n, _ in live:
            if n <= manifest.last_segment:
                notes.append(f"segment {n} is archived but still in the log directory (not read)")
        live = [(n, p) for n, p in live if n > manifest.last_segment]
    return [(n, p, False) for n, p in live], notes


def verify_log(
    log_dir: Path,
    node: str,
    public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey] | KeyRing,
    *,
    store: AuditStore | None = None,
    archive_dir: Path | None = None,
    max_problems: int = 100,
    max_unsigned: int | None = None,
) -> LogResult:
    """Check ``node``'s log under ``log_dir``: its frames, segments, hash chain and signed
    checkpoints, and, with ``store``, that the index's rows of it agree with it.

    The chain starts at ``genesis(node)``, or where the signed archive manifest says the
    archived segments end; with ``archive_dir`` the archived segments
    (``<archive_dir>/<node>/``) are read too, from genesis.  Streaming: the segments are
    read twice (their structure and checkpoints, then the records), one at a time.
    """
    ring = _ring(public_keys)
    node_dir = Path(log_dir) / node
    notes: list[str] = []
    early: list[tuple[ProblemKind, int | None, str]] = []
    manifest: LogManifest | None = None
    try:
        manifest = read_manifest(node_dir)
    except ValueError as err:
        early.append(("anchor_unsigned", None, f"the archive manifest cannot be read: {err}"))
    anchor = ChainPoint(0, genesis(node))
    first_segment = 1
    if manifest is not None:
        status = ring.check(manifest.checkpoint(), node) if manifest.node == node else "bad_signature"
        if status == "other_node" and ring.own is not None and manifest.key_id == ring.own[1]:
            status = ring.check(manifest.checkpoint())  # this node archived it (audit archive)
        if status != "ok":
            why = {
                "unknown_key": "is signed by an unknown key",
                "other_node": "is signed by a key trusted for another node",
            }.get(status, "signature does not verify")
            early.append(("anchor_unsigned", manifest.last_seq, f"the archive manifest {why}: where the log starts is not vouched for"))
        if archive_dir is None:
            anchor = ChainPoint(manifest.last_seq, manifest.last_hash)
            first_segment = manifest.last_segment + 1
    segments, more_notes = _node_segments(node_dir, archive_dir, manifest)
    notes += more_notes
    if archive_dir is not None and manifest is not None:
        listed = {s.segment: s for s in manifest.segments}
        for number, path, archived in segments:
            entry = listed.get(number)
            if archived and entry is not None and _sha256_file(path) != entry.sha256:
                early.append(("changed", entry.first_seq, f"archived segment {number} is not the file the manifest lists (SHA-256 differs)"))
    for p in sorted(node_dir.glob("*.seg")) if node_dir.is_dir() else []:
        if segment_number(p) is None:
            early.append(("segment", None, f"{p.name!r}: a segment file whose name is not a segment number"))
    for p in sorted(node_dir.glob("*.seg.torn-*")) if node_dir.is_dir() else []:
        notes.append(f"{p.name}: {p.stat().st_size} bytes of a torn write, cut off when the proxy restarted after a crash")

    # Pass 1: structure and checkpoints.
    scans: list[_Segment] = []
    for i, (number, path, archived) in enumerate(segments):
        scans.append(_first_pass(node, number, path, archived, i == len(segments) - 1))
    checkpoints: list[Checkpoint] = []
    for s in scans:
        for meta in s.checkpoints:
            cp = checkpoint_of(meta, node)
            if cp is None:
                early.append(("checkpoint_signature", None, f"segment {s.number}: a checkpoint frame without its fields"))
                continue
            if meta.get("node") != node:
                early.append(("checkpoint_mismatch", cp.seq, f"segment {s.number}: a checkpoint names node {meta.get('node')!r}"))
            checkpoints.append(cp)
    walk = _Walk(anchor, checkpoints, ring, max_problems, node=node, anchor_trusted=True, check_columns=False)
    for kind, seq, message in early:
        walk.add(kind, seq, message)
    _check_structure(
        walk,
        node,
        scans,
        anchor,
        first_segment,
        manifest if archive_dir is None else None,
        notes,
        f"neither in the log nor in {archive_dir / node}" if archive_dir is not None else None,
    )

    # Pass 2: the records, through the walk (and the index comparison).
    compare = _IndexCompare(store, node, walk, anchor.seq) if store is not None else None
    manifest_end = manifest if archive_dir is not None else None

    def records() -> Iterator[StoredRecord]:
        last: StoredRecord | None = None
        for s in scans:
            frames, _, _ = _read_frames(s.path.read_bytes(), s.torn_tail is not None)
            for f in frames:
                if f.kind != KIND_RECORD:
                    continue
                rec = StoredRecord(f.seq, f.prev_hash.hex(), f.hash.hex(), _encoded(f.payload), node, f.seq)
                if not rec.record.id:
                    walk.add("changed", f.seq, "the payload is not a record (not a JSON object)")
                elif rec.record.type == "system" and b"audit_log_unvouched" in f.payload:
                    _unvouched_record(walk, f.seq, f.payload)
                if manifest_end is not None and f.seq == manifest_end.last_seq and rec.hash != manifest_end.last_hash:
                    walk.add("checkpoint_mismatch", f.seq, "the archive manifest names a different hash for this record")
                if compare is not None:
                    compare.see(rec)
                last = rec
                yield rec
        if compare is not None:
            compare.finish(last, last.seq if last is not None else anchor.seq)

    chain = walk.run(records(), None, None)
    unsigned = _unsigned(node, scans, anchor, chain, max_unsigned)
    if unsigned is not None:
        chain = _replace_problems(chain, tuple(sorted((*chain.problems, unsigned), key=_problem_order)))
    return LogResult(
        node=node,
        chain=chain,
        segments=tuple(s.number for s in scans),
        archived_segments=len(manifest.segments) if manifest is not None else 0,
        index=compare.check if compare is not None else None,
        info=tuple(notes),
    )


def _unvouched_record(walk: _Walk, seq: int, payload: bytes) -> None:
    """The writer that started here found records no signed checkpoint vouched for (see
    ``log.unvouched_end``): its start checkpoint signs them, so this record is what says so."""
    data = orjson.loads(payload)
    detail = data.get("detail") if isinstance(data, dict) and data.get("event") == "audit_log_unvouched" else None
    if not isinstance(detail, dict):
        return
    first = detail.get("first_seq")
    walk.add(
        "unsigned",
        first if isinstance(first, int) and 0 < first < seq else seq,
        f"the writer that started at record {seq} found records {detail.get('first_seq')}..{detail.get('last_seq')} (segment "
        f"{detail.get('segment')}) vouched for by no signed checkpoint: checkpoints had been removed and the records "
        "may have been rewritten (or a version before 2026-12-07 crashed there); its start checkpoint signed them",
    )


def _unsigned(
    node: str, scans: Sequence[_Segment], anchor: ChainPoint, chain: VerifyResult, max_unsigned: int | None = None
) -> Problem | None:
    """Records no signed checkpoint vouches for where the writer would have signed them.

    A writer signs the last record of a segment when it seals or closes it, and the end of
    the log it found when it starts (a new node: the chain's start), so only the records
    after the last checkpoint of the last segment can be unsigned.  A log with unsigned
    records further back had checkpoints removed, and one with records and no checkpoint at
    all was not written by a writer holding a trusted key."""
    covered = chain.last_checkpoint_seq
    if covered is None and anchor.seq > 0:
        covered = anchor.seq  # vouched for by the signed archive manifest
    if covered is None:
        if chain.records == 0:
            return None
        first = chain.first_seq if chain.first_seq is not None else anchor.seq + 1
        return Problem(
            "unsigned",
            first,
            f"no record of node {node} is covered by a checkpoint signed by a trusted key (a writer signs the "
            "start of its log when it opens it): the log was not written by this node's writer, or its "
            "checkpoints were removed (or it was written by a version before 2026-12-07 and never checkpointed)",
            node,
        )
    if max_unsigned is not None and chain.unsigned_tail > max_unsigned:
        return Problem(
            "unsigned",
            covered + 1,
            f"records {covered + 1}..{chain.last_seq} ({chain.unsigned_tail}) are covered by no signed checkpoint: more "
            f"than a writer leaves unsigned ({max_unsigned}, twice audit.checkpoint_every): checkpoints were removed and "
            "the records may have been rewritten",
            node,
        )
    for s in scans[:-1]:
        if s.last_seq is not None and s.last_seq > covered:
            return Problem(
                "unsigned",
                covered + 1,
                f"records {covered + 1}..{s.last_seq} are covered by no signed checkpoint, yet segment "
                f"{s.number} has ended (a writer signs a segment's last record when it seals it, or when it starts "
                "again after a crash): checkpoints were removed and the records may have been rewritten (or the "
                "log was written by a version before 2026-12-07 that crashed)",
                node,
            )
    return None


def _check_structure(
    walk: _Walk,
    node: str,
    scans: Sequence[_Segment],
    anchor: ChainPoint,
    first_segment: int,
    manifest: LogManifest | None,
    notes: list[str],
    coverage: str | None = None,
) -> None:
    """Segment numbers, headers continuing each other, seals, damaged frames."""
    seq, last_hash = anchor.seq, anchor.hash
    expected = first_segment
    if not scans:
        walk.add("removed", anchor.seq + 1, "the log has no segments")
        return
    for i, s in enumerate(scans):
        is_last = i == len(scans) - 1
        where = f"segment {s.number}"
        gap = s.number != expected
        if gap:
            missing = f"{expected}..{s.number - 1}" if s.number - 1 > expected else str(expected)
            cover = (
                coverage
                if coverage is not None
                else "no archive manifest covers them"
                if manifest is None
                else f"the archive manifest ends at segment {manifest.last_segment}"
            )
            walk.add("removed", seq + 1, f"segment{'s' if s.number - 1 > expected else ''} {missing} missing ({cover})")
        h = s.header
        if h is None:
            walk.add("segment", seq + 1, f"{where} has no header")
        else:
            if h.get("format") != FORMAT:
                walk.add("segment", seq + 1, f"{where}: unknown format {h.get('format')!r}")
            if h.get("node") != node:
                walk.add("segment", seq + 1, f"{where} belongs to node {h.get('node')!r}, not {node!r}")
            if h.get("segment") != s.number:
                walk.add("segment", seq + 1, f"{where}: its header says it is segment {h.get('segment')!r}")
            if not gap and (h.get("first_seq") != seq + 1 or h.get("prev_hash") != last_hash):
                walk.add(
                    "segment",
                    seq + 1,
                    f"{where}'s header does not continue the chain (first seq {h.get('first_seq')!r}, expected {seq + 1})",
                )
        for offset, error, resumed in s.damage:
            lost = f"read on at offset {resumed}" if resumed is not None else "the rest of the segment cannot be read"
            after = s.last_seq if s.last_seq is not None else seq
            walk.add("unreadable", _seq_at(s, offset, seq), f"{where}: {error} ({lost}; last readable record {after})")
        if s.torn_tail is not None:
            offset, error = s.torn_tail
            notes.append(
                f"{where}: {error}; its last {s.size - offset} bytes are not a whole frame: a write in progress, "
                "or a crash (the next start cuts them off and keeps them as .torn-<time>)"
            )
        if s.short_end is not None:
            walk.add(
                "inserted",
                s.short_end[0],
                f"{where}: its {s.short_end[1]} checkpoint does not name the record just before it (a writer seals or "
                "closes a segment on its last record): records were put before it",
            )
        if s.after_end is not None:
            walk.add(
                "inserted",
                s.after_end[0],
                f"{where}: records after its {s.after_end[1]} checkpoint (a writer never writes past it in the same segment)",
            )
        if s.last_seq is not None and s.last_hash is not None:
            seq, last_hash = s.last_seq, s.last_hash
        end = s.end_checkpoint
        if is_last:
            if end is not None and end[0] == "seal" and not s.archived:
                walk.add("removed", seq + 1, f"{where} is sealed but segment {s.number + 1}, which must follow it, is missing")
            elif end is None or end[1] != seq:
                notes.append(
                    "the log does not end with a checkpoint on its last record: the proxy is running, or was "
                    "killed, or its end was cut off (index rows beyond the end would show that)"
                )
        elif end is None or end[0] not in _SEAL_KINDS or end[1] != seq:
            notes.append(
                f"{where} ends without a checkpoint on its last record (the proxy was killed, crashed or "
                "could not write; the next segment continues the chain)"
            )
        expected = s.number + 1


def _seq_at(s: _Segment, offset: int, before: int) -> int:
    """The seq of the record a damaged frame at ``offset`` most likely held: one after
    the last readable record before it."""
    data = s.path.read_bytes()[:offset]
    frames, _, _ = _read_frames(data, True)
    seqs = [f.seq for f in frames if f.kind == KIND_RECORD]
    return (seqs[-1] if seqs else before) + 1


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """``audit verify``: the store's own (legacy) chain, every node's log, and the index."""

    legacy: VerifyResult | None
    nodes: tuple[LogResult, ...]
    unverifiable: tuple[Problem, ...] = ()  # index rows of nodes whose logs are not here

    @property
    def ok(self) -> bool:
        return (self.legacy is None or self.legacy.ok) and all(n.ok for n in self.nodes) and not self.unverifiable

    @property
    def problems(self) -> tuple[Problem, ...]:
        out: list[Problem] = list(self.legacy.problems) if self.legacy is not None else []
        for n in self.nodes:
            out += n.problems
        return (*out, *self.unverifiable)

    @property
    def first_problem(self) -> Problem | None:
        if self.legacy is not None and not self.legacy.ok:
            return self.legacy.first_problem or Problem("changed", None, "too many problems")
        for n in self.nodes:
            if not n.ok:
                return n.chain.first_problem or Problem("changed", None, "too many problems", n.node)
        return self.unverifiable[0] if self.unverifiable else None

    def legacy_through(self) -> int:
        """The store's own chain is verified up to this seq."""
        return verified_through(self.legacy) if self.legacy is not None else 0

    def node_ranges(self) -> dict[str, tuple[int, int]]:
        """Each node's verified records: seq in (first, last] (nodes not listed: not
        verified; records before ``first`` were archived and not read)."""
        return {n.node: (n.chain.anchor_seq, n.verified_through) for n in self.nodes}

    def describe(self) -> str:
        blocks: list[str] = []
        lg = self.legacy
        if lg is not None and (lg.records or lg.anchor_seq or lg.checkpoints or not lg.ok):
            text = lg.describe().replace("chain: ", "legacy chain (the audit store's records from before the log): ", 1)
            blocks.append(text)
        elif lg is not None:
            blocks.append("legacy chain (the audit store's records from before the log): none")
        blocks += [n.describe() for n in self.nodes]
        if not self.nodes:
            blocks.append("node logs: none")
        if self.unverifiable:
            blocks.append("index rows that cannot be checked:\n" + "\n".join(f"  {p}" for p in self.unverifiable))
        return "\n".join(blocks)

    def chains(self) -> list[tuple[str, VerifyResult]]:
        """(name, result) of every chain: the store's own (if it has records), each node's."""
        out = [(f"node {n.node}", n.chain) for n in self.nodes]
        lg = self.legacy
        if lg is not None and (lg.records or lg.anchor_seq or not lg.ok):
            out.insert(0, ("store (before the log)", lg))
        return out

    def to_dict(self) -> dict[str, Any]:
        first = self.first_problem
        chains = self.chains()
        return {
            "ok": self.ok,
            "records": sum(c.records for _, c in chains),
            "checkpoints": sum(c.checkpoints for _, c in chains),
            "valid_checkpoints": sum(c.valid_checkpoints for _, c in chains),
            "unsigned_tail": sum(c.unsigned_tail for _, c in chains),
            "chains": [
                {
                    "name": name,
                    "ok": c.ok,
                    "records": c.records,
                    "first_seq": c.first_seq,
                    "last_seq": c.last_seq,
                    "last_checkpoint_seq": c.last_checkpoint_seq,
                }
                for name, c in chains
            ],
            "legacy": self.legacy.to_dict() if self.legacy is not None else None,
            "nodes": [n.to_dict() for n in self.nodes],
            "unverifiable": [p.to_dict() for p in self.unverifiable],
            "first_problem": first.to_dict() if first is not None else None,
            "problems": [p.to_dict() for p in self.problems],
        }


def log_nodes(log_dir: Path) -> list[str]:
    """The nodes with a log (segments, or an archive manifest) under ``log_dir``."""
    log_dir = Path(log_dir)
    found = set(list_nodes(log_dir))
    if log_dir.is_dir():
        found |= {p.name for p in log_dir.iterdir() if is_node_id(p.name) and (p / MANIFEST_NAME).is_file()}
    return sorted(found)


def verify_all(
    store: AuditStore | None,
    log_dir: Path,
    public_keys: Ed25519PublicKey | Sequence[Ed25519PublicKey] | KeyRing,
    *,
    archive_dir: Path | None = None,
    max_problems: int = 100,
    max_unsigned: int | None = None,
) -> AuditVerification:
    """Verify the store's own chain, every node's log under ``log_dir``, and that the
    store's index rows agree with the logs."""
    ring = _ring(public_keys)
    legacy = verify(store, ring, max_problems=max_problems) if store is not None else None
    if legacy is not None and legacy.records and legacy.last_checkpoint_seq is None and legacy.anchor_seq == 0:
        # The store's own chain was signed by checkpoints as it was written, like a log:
        # records no checkpoint covers at all were not written by a writer with a trusted key.
        legacy = _replace_problems(
            legacy,
            tuple(
                sorted(
                    (
                        *legacy.problems,
                        Problem(
                            "unsigned",
                            legacy.first_seq,
                            f"none of the {legacy.records} records of the store's own chain is covered by a checkpoint "
                            "signed by a trusted key: they were not written by dbsentry's writer (or it never "
                            "checkpointed them)",
                        ),
                    ),
                    key=_problem_order,
                )
            ),
        )
    nodes = log_nodes(log_dir)
    orphans: list[Problem] = [
        Problem(
            "segment",
            None,
            f"{log_dir / name} holds segments, but its name is not a node id: no writer of dbsentry made it",
            name,
        )
        for name in stray_node_dirs(log_dir, MANIFEST_NAME)
    ]
    own = ring.own[0] if ring.own is not None else None
    if own is not None and not any(log_of(n, own) for n in nodes):
        orphans.append(
            Problem(
                "removed",
                None,
                f"this node ({own}, whose signing key is here) has no log under {log_dir}: its logs were removed "
                "(or moved under another name), or log_dir is not where this node writes",
                own,
            )
        )
    results = tuple(
        verify_log(
            log_dir, n, ring, store=store, archive_dir=archive_dir, max_problems=max_problems, max_unsigned=max_unsigned
        )
        for n in nodes
    )
    if store is not None:
        for n in store.index_nodes():
            if n in nodes:
                continue
            count = sum(1 for _ in store.iter_index(n))
            if count:
                orphans.append(
                    Problem(
                        "unverifiable",
                        None,
                        f"{count} index row{'s' if count > 1 else ''} of node {n}, whose log is not under {log_dir}: "
                        "they cannot be checked (copy that node's log directory there)",
                        n,
                    )
                )
    return AuditVerification(legacy, results, tuple(orphans))


# --- archiving a node's sealed segments ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogArchiveResult:
    node: str
    archive_dir: Path
    segments: tuple[ArchivedSegment, ...]  # archived by this call
    manifest: LogManifest

    @property
    def records(self) -> int:
        return sum(s.last_seq - s.first_seq + 1 for s in self.segments)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_durably(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` (a new file, or an identical one already there), fsync'd."""
    if dst.exists():
        if _sha256_file(dst) != _sha256_file(src):
            raise ArchiveError(f"{dst} exists and differs; archives are never overwritten")
        return
    tmp = dst.with_name(dst.name + ".partial")
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        for block in iter(lambda: fin.read(1 << 20), b""):
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dst)


def archive_log(
    log_dir: Path,
    node: str,
    before: datetime | float,
    out_dir: Path,
    signer: Signer,
    *,
    public_keys: Sequence[Ed25519PublicKey] | KeyRing = (),
    indexed_through: int | None = None,
) -> LogArchiveResult | None:
    """Move ``node``'s oldest segments whose records are all older than ``before`` to
    ``<out_dir>/<node>/`` and list them in the node's signed archive manifest.

    Only whole segments the writer has left (every one but the last) are moved, oldest
    first, and none after a segment that must stay; with ``indexed_through`` (the index's
    cursor for the node) only segments the index has caught up with.  The log is verified
    first: nothing is archived from a broken chain.  The copies are fsync'd, then the
    manifest is written (the anchor the remaining log verifies from), then the segments
    are removed from the log directory.  None when there is nothing to archive.
    """
    ts = before.timestamp() if isinstance(before, datetime) else float(before)
    node_dir = Path(log_dir) / node
    checked = verify_log(log_dir, node, _ring(public_keys).including(signer.public_key))
    if not checked.ok:
        raise ArchiveError(f"node {node}'s log does not verify, nothing archived: {checked.chain.first_problem}")
    manifest = read_manifest(node_dir)
    done_through = manifest.last_segment if manifest is not None else 0
    if manifest is not None:
        _remove_leftovers(node_dir, manifest)
    live = [(n, p) for n, p in list_segments(node_dir) if n > done_through]
    seq = manifest.last_seq if manifest is not None else 0
    last_hash = manifest.last_hash if manifest is not None else genesis(node)
    chosen: list[tuple[Path, ArchivedSegment]] = []
    for number, path in live[:-1]:
        first, records, newest = seq + 1, 0, 0.0
        for f in scan_segment(path, number).records:
            records += 1
            seq, last_hash = f.seq, f.hash.hex()
            newest = max(newest, _record_time(f.payload))
        if records and (newest >= ts or (indexed_through is not None and seq > indexed_through)):
            break
        chosen.append((path, ArchivedSegment(number, first, seq, last_hash, _sha256_file(path), path.stat().st_size)))
    if not chosen:
        return None
    target = Path(out_dir) / node
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path, _ in chosen:
        _copy_durably(path, target / path.name)
    _fsync_dir(target)
    end = chosen[-1][1]
    new = LogManifest(
        node=node,
        segments=(*(manifest.segments if manifest is not None else ()), *(a for _, a in chosen)),
        last_segment=end.segment,
        last_seq=end.last_seq,
        last_hash=end.last_hash,
        time=_time.time(),
        archive_dir=str(target),
    ).signed(signer)
    tmp = node_dir / (MANIFEST_NAME + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(new.to_json())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, node_dir / MANIFEST_NAME)
    _fsync_dir(node_dir)
    for path, _ in chosen:
        path.unlink()
    _fsync_dir(node_dir)
    return LogArchiveResult(node, target, tuple(a for _, a in chosen), new)


def _remove_leftovers(node_dir: Path, manifest: LogManifest) -> None:
    """Segments an interrupted archive listed and copied but did not remove yet."""
    listed = {a.segment: a for a in manifest.segments}
    for number, path in list_segments(node_dir):
        entry = listed.get(number)
        copy = Path(manifest.archive_dir) / path.name
        if entry is None or not copy.is_file():
            continue
        if _sha256_file(copy) == entry.sha256 == _sha256_file(path):
            path.unlink()


def _record_time(payload: bytes) -> float:
    try:
        value = orjson.loads(payload).get("time", 0.0)
        return float(value) if isinstance(value, int | float) else float("inf")
    except (orjson.JSONDecodeError, AttributeError):
        return float("inf")  # not a record: never older than anything

"""Checking the chain, and moving old records to an archive file without breaking it.

``verify`` walks every stored record in seq order and every checkpoint:

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

import os
import time as _time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from dbsentry.audit.keys import Checkpoint, KeyRing, Signer
from dbsentry.audit.records import canonical_json
from dbsentry.audit.store import (
    GENESIS_HASH,
    AuditStore,
    ChainPoint,
    StoredRecord,
    chain_hash,
    index_from_payload,
)

ProblemKind = Literal[
    "changed",
    "removed",
    "inserted",
    "checkpoint_signature",
    "checkpoint_unknown_key",
    "checkpoint_mismatch",
    "anchor_unsigned",
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

    def __str__(self) -> str:
        where = f"record {self.seq}: " if self.seq is not None else ""
        return f"{self.kind}: {where}{self.message}"


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
            f"checkpoints: {self.valid_checkpoints} of {self.checkpoints} valid, "
            f"last signed seq {self.last_checkpoint_seq if self.last_checkpoint_seq is not None else 'none'}, "
            f"{self.unsigned_tail} records after it",
        ]
        lines += [f"  {p}" for p in self.problems]
        if self.truncated_problems:
            lines.append("  ... (more problems not listed)")
        return "\n".join(lines)

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
            "problems": [
                {"kind": p.kind, "seq": p.seq, "message": p.message} for p in self.problems
            ],
        }


@dataclass
class _Walk:
    anchor: ChainPoint
    checkpoints: Sequence[Checkpoint]
    ring: KeyRing
    max_problems: int
    problems: list[Problem] = field(default_factory=list)
    dropped: bool = False

    def add(self, kind: ProblemKind, seq: int | None, message: str) -> None:
        if len(self.problems) < self.max_problems:
            self.problems.append(Problem(kind, seq, message))
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
        anchor_signed = anchor.seq == 0
        for cp in self.checkpoints:
            status = self.ring.check(cp)
            if status == "unknown_key":
                self.add(
                    "checkpoint_unknown_key",
                    cp.seq,
                    f"checkpoint signed by unknown key {cp.key_id}",
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
                self.add("inserted", r.seq, "record out of sequence (duplicate seq)")
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
                if prev2_hash is not None and r.prev_hash == prev2_hash:
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
            try:
                idx = index_from_payload(r.payload)
                bad = [
                    n
                    for n, a, b in zip(
                        _INDEX_NAMES, idx.index_tuple(), r.record.index_tuple(), strict=True
                    )
                    if a != b
                ]
            except ValueError:
                bad = ["payload"]
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


_RECORD_KINDS = ("changed", "removed", "inserted")


def _problem_order(p: Problem) -> tuple[int, int]:
    """By seq; at one seq, what happened to the record before what it did to checkpoints."""
    return (p.seq if p.seq is not None else -1, 0 if p.kind in _RECORD_KINDS else 1)


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
    """Walk the whole stored chain and its checkpoints (streaming; memory ~ checkpoints)."""
    head_before = store.head()
    anchor = store.anchor()
    checkpoints = list(store.iter_checkpoints())
    walk = _Walk(anchor, checkpoints, _ring(public_keys), max_problems)
    return walk.run(store.iter_records(after_seq=0), head_before, store.head)


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
    public_keys: Sequence[Ed25519PublicKey] = (),
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
    through = store.last_seq_before(ts)
    if through <= anchor.seq:
        return None
    result = verify(store, [signer.public_key, *public_keys])
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
        for r in store.iter_records(after_seq=anchor.seq, through_seq=through):
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

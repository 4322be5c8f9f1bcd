"""The audit log: each node's append-only, hash-chained, segmented file of records.

The log is the source of truth; the search index (``audit.index``) is derived from it.

Layout: ``<log_dir>/<node>/<segment:010d>.seg``.  A segment is a sequence of frames::

    kind (1 byte) | body length (4, big-endian) | body | CRC-32 of kind+length+body (4)

``H`` the segment header (JSON: format, node, segment, first_seq, prev_hash, created);
``R`` a record: seq (8) | prev_hash (32) | hash (32) | payload (canonical JSON);
``C`` a signed checkpoint (JSON: node, segment, seq, hash, time, kind, key_id, signature).

``hash = SHA-256(prev_hash || seq (8, big-endian) || payload)``, the formula of the
stores' chain; the first record's ``prev_hash`` is :func:`genesis`, which is derived from
the node id, so every record's hash commits to the node that wrote it and a chain cannot
be passed off as another node's.  The CRC only finds torn or garbled frames (a crash in
the middle of a write); tampering is found by the hashes and the signed checkpoints.

A segment is sealed by a ``seal`` checkpoint when it reaches ``segment_bytes`` or
``segment_seconds``; the next segment's header names the seq and hash it continues
from.  Every start opens a new segment after cutting a torn tail off the last one (the
cut bytes are kept next to it, ``.torn``, and the cut is recorded as a ``system`` record).
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from dbsentry.audit.keys import Checkpoint, KeyRing

FORMAT = "dbsentry-audit-log-1"
KIND_HEADER = 0x48  # "H"
KIND_RECORD = 0x52  # "R"
KIND_CHECKPOINT = 0x43  # "C"
_KINDS = (KIND_HEADER, KIND_RECORD, KIND_CHECKPOINT)
_HEAD = struct.Struct(">BI")
_SEQ = struct.Struct(">Q")
_CRC = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024  # larger lengths are garbage, not records
SEGMENT_SUFFIX = ".seg"
_NODE_ALLOWED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class LogFormatError(Exception):
    """A segment that is not a dbsentry audit log, or whose frames cannot be read."""


def check_node_id(node: str) -> str:
    """``node`` if it is a valid node id (a directory name: letters, digits, ``-_.``)."""
    if not node or len(node) > 64 or not set(node) <= _NODE_ALLOWED or node.startswith("."):
        raise ValueError(f"invalid audit node id {node!r}: 1-64 letters, digits, '-', '_' or '.'")
    return node


def known_node_id(configured: str | None, state_dir: Path) -> str | None:
    """This node's id when it has one (``audit.node``, or the id kept in the state
    directory), without making one."""
    if configured is not None:
        return check_node_id(configured)
    try:
        return check_node_id((Path(state_dir) / "audit-node").read_text().strip())
    except (OSError, ValueError):
        return None


def node_id(configured: str | None, state_dir: Path) -> str:
    """This node's id: ``audit.node``, or one made on first use (host name and a random
    suffix) and kept in ``<state_dir>/audit-node``."""
    if configured is not None:
        return check_node_id(configured)
    path = Path(state_dir) / "audit-node"
    try:
        return check_node_id(path.read_text().strip())
    except FileNotFoundError:
        pass
    import secrets
    import socket

    host = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in socket.gethostname())[:40] or "node"
    node = f"{host}-{secrets.token_hex(3)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node + "\n")
    tmp.replace(path)
    return node


def genesis(node: str) -> str:
    """The ``prev_hash`` of a node's first record (hex)."""
    return hashlib.sha256(b"dbsentry-audit-log-genesis\x00" + node.encode()).hexdigest()


def frame(kind: int, body: bytes) -> bytes:
    head = _HEAD.pack(kind, len(body))
    return head + body + _CRC.pack(zlib.crc32(body, zlib.crc32(head)))


def record_frame(seq: int, prev: bytes, digest: bytes, payload: bytes) -> bytes:
    return frame(KIND_RECORD, _SEQ.pack(seq) + prev + digest + payload)


def link_hash(prev: bytes, seq: int, payload: bytes) -> bytes:
    """The chain hash (raw 32 bytes) of a record after ``prev`` (raw)."""
    h = hashlib.sha256(prev)
    h.update(_SEQ.pack(seq))
    h.update(payload)
    return h.digest()


def json_frame(kind: int, data: dict[str, Any]) -> bytes:
    return frame(kind, orjson.dumps(data, option=orjson.OPT_SORT_KEYS))


def segment_name(number: int) -> str:
    return f"{number:010d}{SEGMENT_SUFFIX}"


def segment_number(path: Path) -> int | None:
    """The number a segment's file name gives, None for any other name (ASCII digits
    only: ``str.isdigit`` takes "²" too, which ``int`` refuses)."""
    stem = path.stem
    if path.suffix != SEGMENT_SUFFIX or not (stem.isascii() and stem.isdigit()):
        return None
    return int(stem)


def list_segments(node_dir: Path) -> list[tuple[int, Path]]:
    """A node's segments, in order."""
    if not node_dir.is_dir():
        return []
    out = []
    for p in node_dir.iterdir():
        n = segment_number(p)
        if n is not None and p.is_file():
            out.append((n, p))
    out.sort()
    return out


def list_nodes(log_dir: Path) -> list[str]:
    """The node ids with a log under ``log_dir`` (directories whose name is not a node id
    are no node's: see :func:`stray_node_dirs`)."""
    if not log_dir.is_dir():
        return []
    return sorted(p.name for p in log_dir.iterdir() if p.is_dir() and is_node_id(p.name) and list_segments(p))


def stray_node_dirs(log_dir: Path, manifest: str | None = None) -> list[str]:
    """Directories under ``log_dir`` holding segments (or a file named ``manifest``) whose
    name is not a node id: no writer of dbsentry made them."""
    if not log_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in log_dir.iterdir()
        if p.is_dir() and not is_node_id(p.name) and (list_segments(p) or (manifest is not None and (p / manifest).is_file()))
    )


def is_node_id(name: str) -> bool:
    try:
        check_node_id(name)
    except ValueError:
        return False
    return True


@dataclass(slots=True)
class Frame:
    kind: int
    offset: int  # where the frame starts in its segment
    end: int  # where the next one starts
    seq: int = 0  # records
    prev_hash: bytes = b""
    hash: bytes = b""
    payload: bytes = b""
    meta: dict[str, Any] = field(default_factory=dict)  # header and checkpoint frames


@dataclass(slots=True)
class SegmentScan:
    """What reading one segment found: its frames up to the first bad one."""

    path: Path
    number: int
    frames: list[Frame]
    valid_end: int  # bytes of whole, readable frames
    size: int
    error: str | None = None  # why reading stopped before ``size`` (torn or garbled)

    @property
    def header(self) -> dict[str, Any] | None:
        if self.frames and self.frames[0].kind == KIND_HEADER:
            return self.frames[0].meta
        return None

    @property
    def records(self) -> Iterator[Frame]:
        return (f for f in self.frames if f.kind == KIND_RECORD)


def unused_from(data: bytes | memoryview, pos: int) -> bool:
    """Whether everything from ``pos`` on is zero bytes: space the writer allocated ahead
    (see ``logwriter.LogFile``), not yet written.  No frame starts with a zero byte."""
    rest = memoryview(data)[pos:]
    return rest.tobytes().count(0) == len(rest)


def parse_frames(data: bytes | memoryview, start: int = 0) -> tuple[list[Frame], int, str | None]:
    """Frames of ``data`` from ``start``: (frames, end of the last whole frame, error).
    Zero bytes after the last frame are the end (allocated ahead), not an error."""
    frames: list[Frame] = []
    append = frames.append
    pos = start
    size = len(data)
    mv = memoryview(data)
    head_unpack = _HEAD.unpack_from
    crc_unpack = _CRC.unpack_from
    seq_unpack = _SEQ.unpack_from
    crc32 = zlib.crc32
    overhead = _HEAD.size + _CRC.size
    while pos < size:
        if mv[pos] == 0 and unused_from(mv, pos):
            return frames, pos, None
        if size - pos < overhead:
            return frames, pos, f"partial frame at offset {pos} ({size - pos} bytes)"
        kind, length = head_unpack(mv, pos)
        if kind not in _KINDS or length > MAX_FRAME:
            return frames, pos, f"not a frame at offset {pos}"
        body_start = pos + _HEAD.size
        body_end = body_start + length
        end = body_end + _CRC.size
        if end > size:
            return frames, pos, f"partial frame at offset {pos} ({size - pos} of {end - pos} bytes)"
        # the CRC of kind, length and body, read in place (crc32 chains: one call)
        if crc32(mv[pos:body_end]) != crc_unpack(mv, body_end)[0]:
            return frames, pos, f"checksum mismatch at offset {pos}"
        if kind == KIND_RECORD:
            if length < 72:
                return frames, pos, f"record frame too short at offset {pos}"
            append(
                Frame(
                    kind,
                    pos,
                    end,
                    seq_unpack(mv, body_start)[0],
                    bytes(mv[body_start + 8 : body_start + 40]),
                    bytes(mv[body_start + 40 : body_start + 72]),
                    bytes(mv[body_start + 72 : body_end]),
                )
            )
        else:
            try:
                meta = orjson.loads(mv[body_start:body_end])
            except orjson.JSONDecodeError:
                return frames, pos, f"unreadable {chr(kind)} frame at offset {pos}"
            if not isinstance(meta, dict):
                return frames, pos, f"unreadable {chr(kind)} frame at offset {pos}"
            append(Frame(kind, pos, end, meta=meta))
        pos = end
    return frames, pos, None


_KIND_BYTES = frozenset((KIND_RECORD, KIND_CHECKPOINT, KIND_HEADER))


def resync(data: bytes, pos: int) -> int | None:
    """Where the first whole, valid frame after a damaged one at ``pos`` starts, if any."""
    size = len(data)
    if size - pos >= 5:  # first try the damaged frame's own length
        end = pos + 5 + int.from_bytes(data[pos + 1 : pos + 5], "big") + 4
        if end < size and parse_frames(data, end)[0]:
            return end
    for start in range(pos + 1, size - 8):
        if data[start] in _KIND_BYTES and parse_frames(data, start)[0]:
            return start
    return None


def read_past_damage(data: bytes) -> tuple[list[Frame], list[tuple[int, str, int | None]], tuple[int, str] | None]:
    """Every readable frame of a segment, reading on past damaged ones: (frames, damage,
    torn end).  Damage is (offset, error, where reading resumed); a damaged stretch with
    no whole frame after it is the torn end: (offset, error)."""
    frames: list[Frame] = []
    damage: list[tuple[int, str, int | None]] = []
    pos = 0
    while True:
        got, end, error = parse_frames(data, pos)
        frames += got
        if error is None:
            return frames, damage, None
        resume = resync(data, end)
        if resume is None:
            return frames, damage, (end, error)
        damage.append((end, error, resume))
        pos = resume


def scan_segment(path: Path, number: int | None = None) -> SegmentScan:
    data = path.read_bytes()
    frames, valid_end, error = parse_frames(data)
    n = number if number is not None else (segment_number(path) or 0)
    return SegmentScan(path, n, frames, valid_end, len(data), error)


@dataclass(slots=True)
class LogRecord:
    """One record as read back from a node's log."""

    node: str
    seq: int
    prev_hash: str  # hex
    hash: str  # hex
    payload: bytes
    segment: int


def iter_log(node_dir: Path, after_seq: int = 0) -> Iterator[LogRecord]:
    """A node's records with seq > ``after_seq``, in order, stopping at the first unreadable
    frame of a segment (the rest of that segment is not trusted; later segments are read)."""
    node = node_dir.name
    segments = list_segments(node_dir)
    # Skip segments that end before after_seq: the next segment's header says where it starts.
    start = 0
    for i, (_, path) in enumerate(segments):
        first = _first_seq(path)
        if first is not None and first <= after_seq + 1:
            start = i
    for number, path in segments[start:]:
        scan = scan_segment(path, number)
        for f in scan.records:
            if f.seq > after_seq:
                yield LogRecord(node, f.seq, f.prev_hash.hex(), f.hash.hex(), f.payload, number)


def _first_seq(path: Path) -> int | None:
    """The first seq a segment holds, read from its header alone."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_HEAD.size)
            if len(head) < _HEAD.size:
                return None
            kind, length = _HEAD.unpack(head)
            if kind != KIND_HEADER or length > 65536:
                return None
            meta = orjson.loads(fh.read(length))
    except (OSError, orjson.JSONDecodeError):
        return None
    value = meta.get("first_seq") if isinstance(meta, dict) else None
    return value if isinstance(value, int) else None


@dataclass(slots=True)
class Tail:
    """Where a node's log ends, found when a writer opens it."""

    seq: int
    hash: bytes  # raw
    next_segment: int
    cut_bytes: int = 0  # a torn tail cut off the last segment
    cut_segment: int | None = None
    cut_reason: str | None = None
    kept_as: Path | None = None
    # damage whole frames follow in the last segment: left as it is (see recover)
    damaged_segment: int | None = None
    damage_reason: str | None = None
    # (segment, first seq, last seq): records no signed checkpoint vouched for when the
    # writer started (see unvouched_end); its start checkpoint signs them all the same
    unvouched: tuple[int, int, int] | None = None


def recover(node_dir: Path, node: str, *, now: float | None = None) -> Tail:
    """Find the end of ``node``'s log; cut a torn tail off its last segment (the cut bytes
    are kept in ``<segment>.torn-<time>``).  Only a torn *end* is cut: bytes that are not a
    whole frame with no whole frame after them (a write a crash interrupted).  Damage that
    whole frames follow is not a crash's: the segment is left as it is (``verify`` names
    the damage), the chain continues from its last readable record, and
    ``Tail.damaged_segment`` says so.  Earlier segments are never touched."""
    segments = list_segments(node_dir)
    seq, last_hash = 0, bytes.fromhex(genesis(node))
    if not segments:
        return Tail(seq, last_hash, 1)
    # The chain's end: the last record of the last segment that has one.
    tail = Tail(seq, last_hash, segments[-1][0] + 1)
    last_number, last_path = segments[-1]
    scan = scan_segment(last_path, last_number)
    if scan.error is not None:
        data = last_path.read_bytes()
        frames, damage, torn = read_past_damage(data)
        if damage:
            tail.damaged_segment = last_number
            tail.damage_reason = damage[0][1]
            scan.frames = frames  # the records after the damage count: the chain goes on from them
        if torn is not None and (not damage or torn[0] > damage[-1][0]):
            when = int(now if now is not None else time.time())
            kept = last_path.with_name(f"{last_path.name}.torn-{when}")
            cut_at = torn[0]
            with last_path.open("r+b") as fh:
                fh.seek(cut_at)
                # (what follows the torn frame may be space allocated ahead: zeros)
                cut = fh.read().rstrip(b"\x00")
                kept.write_bytes(cut)
                fh.truncate(cut_at)
                fh.flush()
                os.fsync(fh.fileno())
            tail.cut_bytes = len(cut)
            tail.cut_segment = last_number
            tail.cut_reason = torn[1]
            tail.kept_as = kept
    elif scan.valid_end < scan.size:
        # zeros a writer allocated ahead before it stopped (a crash): nothing to keep
        with last_path.open("r+b") as fh:
            fh.truncate(scan.valid_end)
            os.fsync(fh.fileno())
    for number, path in reversed(segments):
        s = scan if number == last_number else scan_segment(path, number)
        records = [f for f in s.frames if f.kind == KIND_RECORD]
        if records:
            tail.seq, tail.hash = records[-1].seq, records[-1].hash
            return tail
        header = s.header
        if header is not None and isinstance(header.get("first_seq"), int):
            # An empty segment continues from what its header names.
            tail.seq = int(header["first_seq"]) - 1
            tail.hash = bytes.fromhex(str(header.get("prev_hash", genesis(node))))
            return tail
    return tail


class LogTailer:
    """Reads a node's log incrementally: each ``read`` continues where the last stopped
    (when asked for what follows it), so following a growing log costs what is new."""

    def __init__(self, node_dir: Path) -> None:
        self.dir = Path(node_dir)
        self.node = self.dir.name
        self._segment: int | None = None
        self._offset = 0
        self._seq = -1

    def _locate(self, after_seq: int) -> None:
        segments = list_segments(self.dir)
        self._segment = segments[0][0] if segments else None
        for number, path in segments:
            first = _first_seq(path)
            if first is not None and first <= after_seq + 1:
                self._segment = number
        self._offset = 0
        self._seq = after_seq

    def read(self, after_seq: int, upto: int | None = None) -> Iterator[LogRecord]:
        """Records with ``after_seq < seq <= upto``, in order."""
        if self._segment is None or after_seq != self._seq:
            self._locate(after_seq)
        while self._segment is not None:
            path = self.dir / segment_name(self._segment)
            try:
                with path.open("rb") as fh:
                    fh.seek(self._offset)
                    data = fh.read()
            except FileNotFoundError:
                return
            frames, _, _ = parse_frames(data)
            base = self._offset
            for f in frames:
                if f.kind == KIND_RECORD:
                    if upto is not None and f.seq > upto:
                        return
                    if f.seq > after_seq:
                        yield LogRecord(self.node, f.seq, f.prev_hash.hex(), f.hash.hex(), f.payload, self._segment)
                        after_seq = f.seq
                    self._seq = max(self._seq, f.seq)
                self._offset = base + f.end
            if not (self.dir / segment_name(self._segment + 1)).exists():
                return  # the open segment: the rest is not written yet
            self._segment += 1
            self._offset = 0


def checkpoint_of(meta: dict[str, Any], node: str) -> Checkpoint | None:
    """A checkpoint frame as the checkpoint its signature covers: the kind is signed as
    ``<kind>:<node>``, with the node of the log being read, so a checkpoint copied from
    another node's log does not verify."""
    try:
        return Checkpoint(
            int(meta["seq"]),
            str(meta["hash"]),
            float(meta["time"]),
            f"{meta['kind']}:{node}",
            str(meta["key_id"]),
            str(meta["signature"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def unvouched_end(
    node_dir: Path, node: str, ring: KeyRing, max_tail: int | None = None
) -> tuple[int, int, int] | None:
    """The records a writer would vouch for by signing where the log stands, though no
    signed checkpoint vouches for them now and a writer would have: (segment of the first,
    first seq, last seq), or None.

    A writer signs a segment's last record when it seals or closes it, and where the log
    stood when it starts; so only records after the last valid checkpoint (signed by
    ``ring``, naming the hash the record has) in the last segment are unsigned, and no more
    than ``max_tail`` of them.  More, or any in an earlier segment: checkpoints were removed
    and the records may have been rewritten (or a version before 2026-12-07 crashed
    there).  Read backwards from the last segment until such a checkpoint is found.  A
    writer that starts says so in the log (``audit_log_unvouched``) before its own start
    checkpoint signs what it found."""
    segments = list_segments(node_dir)
    hashes: dict[int, bytes] = {}
    candidates: list[tuple[int, str]] = []  # (seq, hash) of checkpoints whose signature verifies
    newest_first: list[tuple[int, list[int]]] = []  # (segment, its record seqs)
    covered: int | None = None
    for number, path in reversed(segments):
        frames, _, _ = read_past_damage(path.read_bytes())
        seqs = [f.seq for f in frames if f.kind == KIND_RECORD]
        newest_first.append((number, seqs))
        for f in frames:
            if f.kind == KIND_RECORD:
                hashes[f.seq] = f.hash
            elif f.kind == KIND_CHECKPOINT:
                cp = checkpoint_of(f.meta, node)
                if cp is not None and ring.check(cp) == "ok":
                    candidates.append((cp.seq, cp.hash))
        good = [seq for seq, h in candidates if seq == 0 or (seq in hashes and hashes[seq].hex() == h)]
        if good:
            covered = max(good)
            if seqs and covered >= min(seqs) - 1:
                break  # what earlier segments hold comes before: covered through the chain
    after = [(number, seq) for number, seqs in newest_first for seq in seqs if covered is None or seq > covered]
    if not after:
        return None
    last_segment = segments[-1][0] if segments else 0
    if all(number == last_segment for number, _ in after) and (max_tail is None or len(after) <= max_tail):
        return None
    first = min(after, key=lambda x: x[1])
    return first[0], first[1], max(seq for _, seq in after)

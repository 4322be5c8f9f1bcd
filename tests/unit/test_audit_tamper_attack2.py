"""Third round of attacks on the audit log's tamper evidence, after the structural rules
(start checkpoints, ``unsigned``, ``inserted`` after a close/seal, ``audit_log_unvouched``
and ``audit_log_damaged`` at a writer's start).

The attacker can read and write the state directory while the proxy is stopped (or
between its restarts) but cannot use the node's signing key.  Fixture and helpers are
those of ``test_audit_tamper_attack``: a first run (segments 1..4, closed) and a second
run still going (segments 5..7, records 38..42 in the open segment 7, a periodic
checkpoint on 40).  ``xfail(strict=True, reason="FINDING: ...")`` marks tampering that
gets through today.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_audit_tamper_attack import (  # type: ignore[import-not-found]
    TOTAL,
    checkpoints,
    forge,
    frames_of,
    here,
    new_log,
    node_dir,
    record_at,
    report_statements,
    rewrite_log,
    run,
    search_lines,
    segments,
    stmt,
    verify_json,
)

from dbsentry.audit.appender import AuditLog
from dbsentry.audit.log import (
    KIND_CHECKPOINT,
    KIND_HEADER,
    KIND_RECORD,
    json_frame,
    link_hash,
    parse_frames,
    record_frame,
    segment_name,
)

__all__ = ["here"]  # the fixture, imported


def restart(here: Path) -> None:
    """The proxy starts again (and stops cleanly)."""
    log = AuditLog(new_log(here))
    log.start()
    log.close()


def problems_of(data: dict[str, Any]) -> list[dict[str, Any]]:
    return list(data["problems"])


def whole_frames(path: Path) -> bytes:
    """A segment's frames without the zeros allocated ahead."""
    data = path.read_bytes()
    _, end, error = parse_frames(data)
    assert error is None
    return data[:end]


def merge_into_first_segment(here: Path) -> None:
    """Every segment's frames (headers but the first dropped) in segment 1, the others
    deleted, the index rebuilt: one long last segment."""
    segs = segments(here)
    out = bytearray()
    for i, path in enumerate(segs):
        for f in frames_of(path):
            if f.kind == KIND_HEADER and i > 0:
                continue
            out += path.read_bytes()[f.offset : f.end]
    for path in segs[1:]:
        path.unlink()
    segs[0].write_bytes(bytes(out))
    assert run("audit", "reindex").exit_code == 0


def forged_in_index(here: Path) -> bool:
    return any("bob@example.com" in line for line in search_lines())


# --- merging segments: stripped checkpoints as one long "unsigned tail" ------------------------


def test_segments_merged_into_one_to_hide_stripped_checkpoints_are_named(here: Path) -> None:
    rewrite_log(here, lambda s, p: forge(s, p, 5), drop_checkpoints_after=4)
    merge_into_first_segment(here)
    assert forged_in_index(here)
    code, data = verify_json()
    assert code == 1, data


def test_restart_after_merging_segments_does_not_whitewash(here: Path) -> None:
    rewrite_log(here, lambda s, p: forge(s, p, 5), drop_checkpoints_after=4)
    merge_into_first_segment(here)
    restart(here)
    _, html = report_statements(here)
    assert "bob@example.com" not in html
    code, data = verify_json()
    assert code == 1, data


# --- the last segment only: stripped checkpoints, then a restart -------------------------------


@pytest.mark.xfail(
    strict=True,
    reason="LIMIT (documented, docs/audit.md): records of the last segment rewritten and their periodic "
    "checkpoint stripped, no more of them than a writer may leave unsigned after a crash (twice "
    "checkpoint_every): indistinguishable from a crash's unsigned tail, and the next start signs them",
)
def test_restart_after_stripping_checkpoints_of_the_last_segment_does_not_whitewash(
    here: Path,
) -> None:
    last = segments(here)[-1]
    signed = [int(f.meta["seq"]) for f in frames_of(last) if f.kind == KIND_CHECKPOINT]
    first = min(f.seq for f in frames_of(last) if f.kind == KIND_RECORD)
    assert signed and first < signed[0]  # record `first` is signed in the original log
    rewrite_log(here, lambda s, p: forge(s, p, first), drop_checkpoints_after=first - 1)
    assert run("audit", "verify").exit_code == 0  # an unsigned tail: the documented limit so far
    restart(here)
    code, data = verify_json()
    assert code == 1, data
    assert any(p["kind"] == "unsigned" and (p["seq"] or 0) <= first for p in problems_of(data))


def test_empty_segment_before_the_last_hides_an_unvouched_one_from_the_restart(here: Path) -> None:
    segs = segments(here)
    target = 35  # segment 6, signed by periodic 36 and seal 37
    rewrite_log(here, lambda s, p: forge(s, p, target), drop_checkpoints_after=target - 1)
    assert run("audit", "verify").exit_code == 1  # segment 6 unsigned: named while stopped
    # segment 7 -> 8, a header-only segment 7 continuing from record 37
    old_last = segs[-1]
    frames = frames_of(old_last)
    header = frames[0].meta
    data = whole_frames(old_last)
    rest = data[frames[0].end :]
    number = int(header["segment"])
    (node_dir(here) / segment_name(number + 1)).write_bytes(
        json_frame(KIND_HEADER, {**header, "segment": number + 1}) + rest
    )
    old_last.write_bytes(json_frame(KIND_HEADER, header))
    assert run("audit", "reindex").exit_code == 0
    restart(here)
    code, data_ = verify_json()
    assert code == 1, data_


# --- hiding `unsigned` behind a harmless bad checkpoint -----------------------------------------


def test_planted_bad_checkpoint_does_not_hide_an_unsigned_stretch(here: Path) -> None:
    rewrite_log(here, lambda s, p: forge(s, p, 5), drop_checkpoints_after=4)
    last = segments(here)[-1]
    _, f = record_at(here, TOTAL)
    model = checkpoints(here)[-1].meta
    bogus = json_frame(
        KIND_CHECKPOINT,
        {**model, "seq": TOTAL, "hash": f.hash.hex(), "kind": "periodic", "signature": "00" * 64},
    )
    last.write_bytes(whole_frames(last) + bogus)
    code, data = verify_json()
    assert code == 1
    first = data["first_problem"]
    _, html = report_statements(here)
    assert "bob@example.com" not in html
    assert first["seq"] <= 5, first  # the first affected record is named


# --- what holds -----------------------------------------------------------------------------------


def test_deleting_the_last_segment_after_a_seal_is_named(here: Path) -> None:
    segments(here)[-1].unlink()
    assert run("audit", "reindex").exit_code == 0
    code, data = verify_json()
    assert code == 1
    assert data["first_problem"]["kind"] == "removed"


def test_stripped_older_segment_kept_before_a_consistent_last_pair_is_named_after_restart(
    here: Path,
) -> None:
    """Record 8 rewritten and every checkpoint from it on stripped (segments 2..7): the
    restart's check of the segment before the last fires and verify names it."""
    rewrite_log(here, lambda s, p: forge(s, p, 8), drop_checkpoints_after=7)
    restart(here)
    code, data = verify_json()
    assert code == 1
    assert any(p["kind"] == "unsigned" for p in problems_of(data))


def test_start_checkpoint_copied_from_another_node_does_not_vouch(here: Path) -> None:
    """A node directory with a header and the start checkpoint of node-a's log."""
    other = node_dir(here, "node-c")
    other.mkdir()
    seg1 = segments(here)[0]
    frames = frames_of(seg1)
    start = next(f for f in frames if f.kind == KIND_CHECKPOINT)
    header = {**frames[0].meta, "node": "node-c"}
    (other / segment_name(1)).write_bytes(
        json_frame(KIND_HEADER, header) + seg1.read_bytes()[start.offset : start.end]
    )
    code, data = verify_json()
    assert code == 1
    assert any(
        p["node"] == "node-c" and p["kind"].startswith("checkpoint_") for p in problems_of(data)
    )


def test_start_checkpoint_moved_to_vouch_for_forged_records_of_another_node_is_named(
    here: Path,
) -> None:
    """A forged node-c log: records chained from node-c's genesis, then node-a's close
    checkpoint copied behind them."""
    lf = new_log(here, "node-c", signer=None)
    lf._signer = None
    lf.open()
    lf.append(stmt(1, "bob@example.com", "DELETE FROM users"))
    lf.flush()
    lf.close()
    seg = segments(here, "node-c")[0]
    close = next(
        f
        for f in frames_of(segments(here)[3])
        if f.kind == KIND_CHECKPOINT and f.meta["kind"] == "close"
    )
    seg.write_bytes(whole_frames(seg) + segments(here)[3].read_bytes()[close.offset : close.end])
    code, data = verify_json()
    assert code == 1
    assert any(p["node"] == "node-c" for p in problems_of(data))


def test_damage_before_a_torn_end_does_not_let_the_restart_cut_signed_frames(here: Path) -> None:
    """A byte flipped in record 38 (whole frames follow) and the last record cut mid-frame:
    the restart must not cut from the damage; it keeps the segment and says so."""
    last = segments(here)[-1]
    data = bytearray(whole_frames(last))
    _, f38 = record_at(here, 38)
    _, f42 = record_at(here, TOTAL)
    data[f38.offset + 100] ^= 0x01
    last.write_bytes(bytes(data[: f42.offset + 20]))
    restart(here)
    assert len(last.read_bytes()) > f38.end  # the whole frames after the damage are kept
    code, result = verify_json()
    assert code == 1
    assert result["first_problem"]["kind"] == "unreadable"
    tail = run("audit", "tail", "-n", "5", "--json").output
    assert "audit_log_damaged" in json.dumps([json.loads(x) for x in tail.splitlines()])


def test_seal_segment_not_made_last_by_dropping_its_seal(here: Path) -> None:
    """Segment 7 deleted and segment 6's seal stripped so it looks like the open one, then
    record 37 (signed only by that seal) rewritten: only the unsigned tail of a
    truncated log is left (the documented limit), and the index rows cut off show it."""
    victim = segments(here)[-1]
    victim.unlink()
    rewrite_log(here, lambda s, p: forge(s, p, 37), drop_checkpoints_after=36)
    _, data = verify_json()
    assert data["nodes"][0]["chain"]["unsigned_tail"] >= 1  # reported, at least


def test_close_checkpoint_moved_behind_appended_records_is_named(here: Path) -> None:
    lf = new_log(here)
    lf.open()
    lf.close()  # a third run that served nothing: header, start on TOTAL, close on TOTAL
    last = segments(here)[-1]
    frames = frames_of(last)
    close = frames[-1]
    assert close.kind == KIND_CHECKPOINT and close.meta["kind"] == "close"
    _, f = record_at(here, TOTAL)
    prev, forged = f.hash, bytearray()
    for seq in (TOTAL + 1, TOTAL + 2):
        payload = stmt(seq, "bob@example.com", "GRANT ALL ON users TO bob")
        digest = link_hash(prev, seq, payload)
        forged += record_frame(seq, prev, digest, payload)
        prev = digest
    data = last.read_bytes()
    last.write_bytes(data[: close.offset] + bytes(forged) + data[close.offset : close.end])
    assert run("audit", "reindex").exit_code == 0
    code, result = verify_json()
    assert code == 1, result

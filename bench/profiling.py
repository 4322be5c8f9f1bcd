"""py-spy profiles of a proxy process during an extra, unmeasured run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from targets import Service, Target
    from workloads import Workload


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def summarise_collapsed(path: Path, top: int = 15) -> dict[str, Any]:
    """Top frames by own ("self") and inclusive samples from py-spy's --format raw output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if f]
        # drop the "process"/"thread" pseudo-frames py-spy may prepend
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + count

    def shorten(frame: str) -> str:
        # "func (/long/path/site-packages/pkg/mod.py:123)" -> "func (pkg/mod.py:123)"
        return re.sub(r"\((?:[^()]*/)?(site-packages|src|lib/python[\d.]+)/", "(", frame)

    def ranked(d: dict[str, int]) -> list[dict[str, Any]]:
        return [
            {
                "frame": shorten(f),
                "samples": n,
                "percent": round(100 * n / total, 1) if total else 0.0,
            }
            for f, n in sorted(d.items(), key=lambda kv: kv[1], reverse=True)[:top]
        ]

    return {"samples": total, "top_self": ranked(own), "top_inclusive": ranked(inclusive)}


def profile_dbsentry(
    py_spy: str,
    workload: Workload,
    target: Target,
    service: Service,
    mode: str,
    out_dir: Path,
    stamp: str,
) -> dict[str, Any]:
    raw = out_dir / f"{stamp}-profile-{target.label}-{mode}.txt"
    seconds = workload.duration
    if service.proc is None:
        return {"error": f"{service.name} is not running"}
    # --subprocesses: with `workers: N` the pid is the supervisor; the sessions run in its children
    record = [py_spy, "record", "--pid", str(service.proc.pid), "--rate", "250", "--subprocesses"]
    record += ["--duration", str(seconds), "--format", "raw", "--nonblocking", "--output", str(raw)]
    spy = subprocess.Popen(
        record,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        subprocess.run(
            workload.command(target, mode, seconds, None),
            capture_output=True,
            timeout=seconds + 120,
            env={**os.environ, **target.env},
        )
        _, err = spy.communicate(timeout=seconds + 60)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    if not raw.exists():
        return {"error": (err or "py-spy wrote no output").strip()[-500:]}
    summary = summarise_collapsed(raw)
    summary["raw_file"] = raw.name
    return summary

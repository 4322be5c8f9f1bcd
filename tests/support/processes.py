"""Stopping a process a test started, the way a user would (Ctrl-C), then for sure."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def interrupt(proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    """SIGINT ``proc`` if it still runs and wait; kill it if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()

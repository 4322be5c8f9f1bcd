"""Reading a running (or stopped) proxy's audit trail the way a user does: the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from .proxy import dbsentry_cli

_ENV = {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def psql(
    dsn: str, *args: str, input: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``psql -X`` (no psqlrc) with unaligned, tuples-only output."""
    return subprocess.run(
        ["psql", dsn, "-X", "-q", "-A", "-t", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        env={**_ENV, "LC_ALL": "C"},
    )


def search(config: Path, *filters: str) -> list[dict[str, Any]]:
    """``dbsentry audit search --json --oldest-first --limit 0 FILTERS``, parsed."""
    done = dbsentry_cli(
        "audit", "search", "--json", "--oldest-first", "--limit", "0", *filters, config=config
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def raw_records(config: Path) -> list[dict[str, Any]]:
    """Every stored record with its chain fields: ``dbsentry audit export --format jsonl --raw``."""
    done = dbsentry_cli("audit", "export", "--format", "jsonl", "--raw", config=config)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def verify(config: Path) -> subprocess.CompletedProcess[str]:
    """``dbsentry audit verify`` (not checked: the caller looks at the exit status)."""
    return dbsentry_cli("audit", "verify", config=config, check=False)

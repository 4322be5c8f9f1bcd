"""pytest plugin that compat/psycopg_suite.py loads into psycopg's test suite (``-p``).

It appends every test's start and reports to a JSON-lines file as they happen
($COMPAT_PROGRESS_FILE), so a test process that crashes (a segfault, an abort) loses
nothing already run and names the test that was running; and it deselects the tests listed
in $COMPAT_SKIP_FILE (one node id a line), so the harness can resume after that test.
"""

from __future__ import annotations

import json
import os
from typing import Any

_PROGRESS = os.environ.get("COMPAT_PROGRESS_FILE")
_SKIP = os.environ.get("COMPAT_SKIP_FILE")


def _write(record: dict[str, Any]) -> None:
    if not _PROGRESS:
        return
    with open(_PROGRESS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    if not _SKIP or not os.path.exists(_SKIP):
        return
    with open(_SKIP, encoding="utf-8") as f:
        skip = set(f.read().splitlines())
    keep = [i for i in items if i.nodeid not in skip]
    gone = [i for i in items if i.nodeid in skip]
    if gone:
        config.hook.pytest_deselected(items=gone)
        items[:] = keep


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _write({"event": "start", "nodeid": nodeid})


def _message(report: Any) -> str:
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, line, reason)
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return str(crash.message)
    return str(longrepr).strip().splitlines()[-1] if str(longrepr).strip() else ""


def pytest_runtest_logreport(report: Any) -> None:
    _write(
        {
            "event": "report",
            "nodeid": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "xfail": bool(getattr(report, "wasxfail", None) is not None),
            "message": _message(report)[:2000],
        }
    )


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    _write({"event": "finish", "nodeid": nodeid})

"""A proxy whose policy clock the test sets: ``run_proxy(config, env={ENV: str(path)},
entry=ENTRY)`` runs ``dbsentry serve`` with every statement judged at the time written
(ISO 8601, by ``set_clock``) in the file ``path``, read afresh for each statement.

For tests of time windows (``match.time``): they move the proxy's clock across a window's
edge instead of waiting for the wall clock to get there.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

ENV = "DBSENTRY_TEST_CLOCK"

# ``python -c`` (like ``python -m dbsentry``: the working directory first on sys.path, so
# no test module can shadow a package of dbsentry's).
ENTRY = (
    "-c",
    "import os, datetime, pathlib\n"
    "from dbsentry.cli import main\n"
    "from dbsentry.engines.postgres.session.governance import Governor\n"
    f"path = pathlib.Path(os.environ[{ENV!r}])\n"
    "Governor.clock = staticmethod(lambda: datetime.datetime.fromisoformat(path.read_text()))\n"
    "main()\n",
)


def set_clock(path: Path, at: datetime) -> None:
    """Set the clock (atomically: the proxy never reads a half-written file)."""
    part = path.with_suffix(".part")
    part.write_text(at.isoformat())
    part.replace(path)

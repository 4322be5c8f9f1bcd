"""Clusters ``dbsentry demo`` keeps outside its directory, found in its output and removed.

As root, PostgreSQL runs as another OS user; when that user cannot reach the demo's
directory (a pytest temporary directory is private), the demo keeps the cluster in
``<tmp>/dbsentry-demo-pg-<hash>`` and says so when it starts.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

#: The line that names the demo's cluster.
CLUSTER = re.compile(r"PostgreSQL: (?:created a new cluster|reusing the cluster) in (\S+)")


class Clusters:
    """Clusters a test's demos placed outside ``base``: removed after the test."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.paths: set[Path] = set()

    def note(self, output: str) -> None:
        for match in CLUSTER.finditer(output):
            path = Path(match.group(1))
            if path.is_absolute() and not path.is_relative_to(self.base):
                self.paths.add(path)

    def remove(self) -> None:
        for path in self.paths:
            if path.name.startswith("dbsentry-demo-pg-"):
                shutil.rmtree(path, ignore_errors=True)

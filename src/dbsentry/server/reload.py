"""SIGHUP: the configuration file is read again and its ``connections`` applied (docs/deployment.md,
"Signals").  Every other section that differs is named in a warning and takes effect after a
restart; a file that does not load changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from dbsentry.config import (
    Config,
    ConfigError,
    check_environments,
    load_config,
    plan_reload,
    with_connections,
)
from dbsentry.engines.postgres.session.governance import Governor
from dbsentry.policy.loader import declared_environments

log = logging.getLogger("dbsentry")


def read_new(path: Path, declared: Iterable[str] = ()) -> Config:
    """The configuration file read again, its environments checked against ``declared``
    (the policy's); raises ConfigError."""
    new = load_config(path).config
    check_environments(new, declared)
    return new


class ConfigReloader:
    """The running configuration, and the parts that read its connections: each ``target``
    is given the new configuration (the running one with the file's connections) when they
    change.  Sessions keep the configuration they started with."""

    def __init__(self, path: Path, config: Config, governor: Governor | None = None) -> None:
        self.path = path
        self.config = config
        self.governor = governor
        self.targets: list[Callable[[Config], None]] = []

    def reload(self) -> bool:
        """Read the file again; True when its connections were applied."""
        try:  # the environments the (just reloaded) policy declares
            new = read_new(self.path, declared_environments(self.governor.policy) if self.governor is not None else ())
        except ConfigError as err:
            log.error(
                "configuration reload rejected; nothing changed",
                extra={"fields": {"config": str(self.path), "reason": str(err)}},
            )
            return False
        plan = plan_reload(self.config, new)
        for section in plan.restart_sections:
            log.warning("config section %s changed: takes effect after a restart", section, extra={"fields": {"section": section}})
        if not plan.connections_changed:
            log.info("configuration reloaded: connections unchanged", extra={"fields": {"config": str(self.path)}})
            return False
        self.config = with_connections(self.config, new)
        for target in self.targets:
            target(self.config)
        log.info(
            "configuration reloaded: connections applied to new sessions",
            extra={
                "fields": {
                    "config": str(self.path),
                    "added": list(plan.added),
                    "changed": list(plan.changed),
                    "removed": list(plan.removed),
                }
            },
        )
        return True

"""Masking in a MySQL session (docs/mysql.md "Masking"): what the session needs of the
shared masking service, and the bookkeeping that ties the plans of one command's
statements to the result sets of its answer.

Pure: plans come from :func:`dbsentry.engines.mysql.masking.plan_for`, rows are rewritten
by :class:`dbsentry.engines.mysql.masking.MysqlRowMasker`; the catalog is read by the
shell (``server/catalogs.py``) and given through :class:`MaskingSource`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from dbsentry.audit.redaction import CatalogView
from dbsentry.config import MaskingConfig
from dbsentry.engines.mysql.masking import MysqlMaskPlan, MysqlRowMasker
from dbsentry.engines.mysql.wire.results import ColumnDefinition
from dbsentry.masking.catalog import ClassMap, SourceColumn
from dbsentry.masking.classes import Classification
from dbsentry.masking.plans import ColumnMask, MaskSettings
from dbsentry.policy.engine import Decision

__all__ = ["DETECT_ALL", "Inheritance", "MaskingSource", "ResultMasking", "settings_for"]


class MaskingSource(Protocol):
    """The masking service shared by all sessions (the shell's ``MaskingService``)."""

    key: bytes
    settings: MaskSettings
    exempt_groups: frozenset[str]
    config: MaskingConfig

    def current(self, connection: str) -> CatalogView | None: ...

    def safety_net_for(self, production: bool) -> bool: ...


#: Rows nothing traces (more result sets than statements, a prepared statement whose plan
#: is not known): every value scanned, as ``masking.unresolved: detect`` does.
DETECT_ALL = MysqlMaskPlan((), ColumnMask(-1, None, "detect", frozenset(), "unresolved"), False, True)


def settings_for(base: MaskSettings, decision: Decision) -> MaskSettings:
    """``base`` with the strategies of the policy's mask rules for their columns."""
    columns: dict[str, str] = {}
    for spec in decision.masks:
        for col in spec.columns or ():
            columns[col] = spec.strategy
    if not columns:
        return base
    return MaskSettings(base.strategies, columns, base.unresolved)


@dataclass(slots=True)
class ResultMasking:
    """The plans of one command's statements, followed through its answer: statement
    *i*'s plan masks every result set of its part (a SELECT's one result set; a CALL's
    result sets up to its OK)."""

    plans: tuple[MysqlMaskPlan, ...]
    commands: tuple[str, ...]
    classmap: ClassMap
    settings: MaskSettings
    key: bytes
    safety_net: bool
    part: int = 0
    masker: MysqlRowMasker | None = None
    # the command touches a table with classified or value-scanned columns: the server's
    # error texts, which quote values, are withheld
    withhold_errors: bool = False

    def plan(self) -> MysqlMaskPlan:
        return self.plans[self.part] if self.part < len(self.plans) else DETECT_ALL

    def new_result(self) -> None:
        self.masker = None

    def row(self, payload: bytes, columns: Sequence[ColumnDefinition], binary: bool) -> bytes:
        masker = self.masker
        if masker is None:
            masker = self.masker = MysqlRowMasker(
                self.plan(), columns, key=self.key, settings=self.settings, safety_net=self.safety_net, classmap=self.classmap
            )
        if not masker.active:
            return payload
        return masker.binary_row(payload) if binary else masker.text_row(payload)

    def result_ended(self) -> None:
        """A result set's rows ended: a CALL's part goes on (more result sets, then its
        OK); any other statement's part is that one result set."""
        self.masker = None
        if self.part < len(self.commands) and self.commands[self.part] != "CALL":
            self.part += 1

    def statement_ended(self) -> None:
        """An OK in place of a result set: that statement's part ended."""
        self.masker = None
        self.part += 1


@dataclass(slots=True)
class Inheritance:
    """The classes the columns each statement of one command copies classified values
    into inherit, given out as that statement succeeds (its OK, or the end of its result
    set; a CALL's part ends at its OK).  An error ends the answer: what follows never ran."""

    copies: tuple[Mapping[SourceColumn, Classification], ...]
    commands: tuple[str, ...]
    part: int = 0

    def result_ended(self) -> Mapping[SourceColumn, Classification]:
        if self.part < len(self.commands) and self.commands[self.part] == "CALL":
            return {}
        return self.statement_ended()

    def statement_ended(self) -> Mapping[SourceColumn, Classification]:
        part = self.part
        self.part += 1
        return self.copies[part] if part < len(self.copies) else {}

"""The policy file: named rules in YAML, validated by these models.

``policy.schema.json`` next to this module is generated from :class:`PolicyFile`
(``dbsentry policy schema > src/dbsentry/policy/policy.schema.json`` rewrites it) and a
test keeps the two in step.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from dbsentry.governance.facts import FLAGS

Action = Literal["allow", "deny", "require_approval", "mask"]
ClassName = Literal["READ", "WRITE", "FUNCTION", "ROLE", "DDL", "MISC", "MISC_SET"]
RiskName = Literal["low", "moderate", "high"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
# The data classes of dbsentry.masking.classes.DataClass (a test keeps the two in step).
DataClassName = Literal[
    "email", "phone", "person_name", "postal_address", "date_of_birth", "national_id",
    "payment_card", "iban", "ip_address", "secret",
]  # fmt: skip

_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")
_RULE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeWindow(_Model):
    """When a rule applies: a daily window, optional weekdays, in a time zone."""

    hours: str | None = Field(
        default=None,
        description='"HH:MM-HH:MM", start inclusive, end exclusive; may wrap past midnight',
    )
    weekdays: list[Weekday] | None = None
    timezone: str = "UTC"

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str | None) -> str | None:
        if v is not None:
            m = _HOURS.match(v)
            if m is None:
                raise ValueError(f'hours must look like "09:00-18:00", got {v!r}')
            if m.group(3) == "24" and m.group(4) != "00":
                raise ValueError(f"hours end after 24:00 in {v!r}")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v


class Match(_Model):
    """Conditions; a rule matches when every given condition holds (an empty match
    matches everything).  Lists are "any of", globs use ``*`` and ``?``."""

    identities: list[str] | None = Field(default=None, description="identity names or globs")
    groups: list[str] | None = Field(default=None, description="the identity is in any of these groups")
    kind: Literal["human", "agent"] | None = None
    connections: list[str] | None = Field(default=None, description="connection names or globs")
    environments: list[str] | None = None
    commands: list[str] | None = Field(default=None, description='command tags or globs: "DELETE", "DROP *"')
    classes: list[ClassName] | None = None
    tables: list[str] | None = Field(default=None, description='"schema.table" or "table" globs')
    functions: list[str] | None = Field(default=None, description='"name" or "schema.name" globs')
    settings: list[str] | None = Field(
        default=None,
        description='run-time settings the statement changes (SET, RESET, set_config()...), globs: "search_path", "work_*"; "?" is a setting whose name is not a constant',
    )
    flags: list[str] | None = Field(default=None, description="statement flags, any of")
    data_classes: list[DataClassName] | None = Field(
        default=None,
        description="data classes of the columns the statement reads: the values it returns, "
        "the columns it filters, joins, groups or orders on, the values it copies",
    )
    writes_data_classes: list[DataClassName] | None = Field(
        default=None,
        description="data classes of the columns the statement writes: INSERT, UPDATE SET, "
        "every column of the rows a DELETE or MERGE may change, COPY FROM",
    )
    risk: list[RiskName] | None = None
    time: TimeWindow | None = None

    @field_validator("flags")
    @classmethod
    def _flags(cls, v: list[str] | None) -> list[str] | None:
        for flag in v or ():
            if flag not in FLAGS:
                raise ValueError(f"unknown flag {flag!r} (known: {', '.join(sorted(FLAGS))})")
        return v

    @field_validator("commands")
    @classmethod
    def _commands(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else [" ".join(c.upper().split()) for c in v]


class MaskStrategy(_Model):
    """How to mask; carried to the masking engine as is."""

    strategy: str
    columns: list[str] | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class Rule(_Model):
    name: str = Field(pattern=_RULE_NAME)
    description: str | None = None
    match: Match = Match()
    unless: Match | None = Field(default=None, description="the rule does not apply when this matches")
    action: Action
    message: str | None = None
    approvers: list[str] | None = None
    min_approvals: int = Field(default=1, ge=1, le=10)
    mask: MaskStrategy | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Rule:
        if self.action == "require_approval" and not self.approvers:
            raise ValueError("require_approval needs approvers (a list of groups)")
        if self.action != "require_approval" and self.approvers:
            raise ValueError("approvers only go with action require_approval")
        if self.action == "mask" and self.mask is None:
            raise ValueError("action mask needs mask: {strategy: ...}")
        if self.action != "mask" and self.mask is not None:
            raise ValueError("mask only goes with action mask")
        return self


class BaselineSettings(_Model):
    enabled: bool = True
    approver_group: str = "dba"
    min_approvals: int = Field(default=1, ge=1, le=10)
    disable: list[str] = Field(default_factory=list, description="baseline rule names to turn off")
    allow_settings: list[str] = Field(
        default_factory=list,
        description="setting names the policy allows to be changed, beyond the built-in allow-list",
    )

    safe_functions: list[str] = Field(
        default_factory=list,
        description=(
            "user-defined functions (schema.name, globs) the policy vouches for: read-only and "
            "callable by agents, though the proxy cannot see into them (PL/pgSQL...)"
        ),
    )

    @field_validator("allow_settings", "safe_functions")
    @classmethod
    def _settings(cls, v: list[str]) -> list[str]:
        return [s.lower() for s in v]


class PolicyFile(_Model):
    version: Literal[1] = 1
    default: Literal["allow", "deny"] = Field(
        default="allow", description="the action when no rule matches"
    )
    production_environments: list[str] = Field(default_factory=lambda: ["production"])
    environments: list[str] = Field(
        default_factory=list,
        description="extra environment names the policy declares, beyond the built-in ones",
    )
    baseline: BaselineSettings = BaselineSettings()
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> PolicyFile:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice")
            if rule.name.startswith("baseline."):
                raise ValueError(f"rule name {rule.name!r}: the baseline. prefix is reserved")
            seen.add(rule.name)
        return self


def json_schema_text() -> str:
    """The JSON Schema as published in policy.schema.json."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def json_schema() -> dict[str, Any]:
    schema = PolicyFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dbsentry policy file"
    return schema

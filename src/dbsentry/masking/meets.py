"""Which constants and bound parameters of a statement meet a classified column: the
engine-neutral result of an engine's analysis (PostgreSQL's:
``dbsentry.engines.postgres.masking.literals``), read by the audit's literal redaction."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dbsentry.masking.classes import DataClass

__all__ = ["NOTHING_MEETS", "UNPARSED", "LiteralMeets", "Meets"]

# A class, or None for "sensitive, class unknown" (the arguments of SQL EXECUTE).
Meets = DataClass | None


@dataclass(frozen=True, slots=True)
class LiteralMeets:
    """What the analysis found.

    ``literals``: character offset in the text of each constant that meets a sensitive
    column (the offset of its first token: a negative number's ``-``), with the class.
    ``params``: ``$n`` -> class.  ``values``: the value of every constant (numbers as
    written, strings unquoted), by the same offsets.  ``parsed`` is False when the text
    could not be parsed: nothing is known then, and callers should treat every constant
    as sensitive.
    """

    literals: Mapping[int, Meets] = field(default_factory=dict)
    params: Mapping[int, Meets] = field(default_factory=dict)
    values: Mapping[int, str] = field(default_factory=dict)
    parsed: bool = True


NOTHING_MEETS = LiteralMeets()
UNPARSED = LiteralMeets(parsed=False)

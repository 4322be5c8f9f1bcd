"""Finding real sensitive values in what a client received, however they were spelled.

A leak check must not be fooled by ``upper()``, separators, ``reverse()``, ``md5()``,
``encode(..., 'hex')`` or ``encode(..., 'base64')``: :class:`Secrets` turns the real values
into normalized fragments (lower case, letters and digits only) in each of those spellings,
and :meth:`Secrets.leaks` finds any of them in a blob of output, forwards or backwards.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.lower())


def spellings(value: str) -> set[str]:
    """``value`` as a function of SQL could hand it out: the normalized value, its md5,
    hex and base64 (normalized the same way)."""
    raw = value.encode()
    return {
        norm(value),
        hashlib.md5(raw).hexdigest(),
        raw.hex(),
        norm(base64.b64encode(raw).decode()),
    }


def fragments(value: str, keep_last: int = 4) -> set[str]:
    """The pieces of ``value`` that a masked output may never contain: the value in every
    spelling and, for values a partial mask may end with, everything but the last
    ``keep_last`` letters/digits; for emails, the local part and the domain-less whole."""
    out = spellings(value)
    n = norm(value)
    if len(n) > keep_last + 4:
        out.add(n[:-keep_last])
    if "@" in value:
        local = value.split("@", 1)[0]
        if len(norm(local)) >= 4:
            out.add(norm(local))
    return {f for f in out if len(f) >= 5}


#: Fragments of digits shorter than this are looked for as numbers of their own: a run of
#: five digits turns up by chance inside the hashes, ids, times and ports of a long output
#: (an SSN's first five digits were found in an audit record's hashes); 8 and more do not.
SHORT_DIGITS = 8


def _digit_pattern(fragment: str) -> re.Pattern[str]:
    """``fragment``'s digits, separators allowed between them, not inside a longer run of
    hex digits (a hash, an id) on either side."""
    return re.compile(r"(?<![0-9a-f])" + r"[^0-9a-z]*".join(fragment) + r"(?![0-9a-f])")


@dataclass
class Secrets:
    """The real values a test planted; :meth:`leaks` lists the fragments found in a blob."""

    values: Iterable[str]
    frags: tuple[str, ...] = field(init=False)
    _short: dict[str, re.Pattern[str]] = field(init=False)

    def __post_init__(self) -> None:
        out: set[str] = set()
        for v in self.values:
            out |= fragments(v)
        self.frags = tuple(sorted(out))
        self._short = {f: _digit_pattern(f) for f in self.frags if f.isdigit() and len(f) < SHORT_DIGITS}

    def leaks(self, *blobs: Any) -> list[str]:
        raw = " ".join(str(b) for b in blobs).lower()
        text = norm(raw)
        rev, raw_rev = text[::-1], raw[::-1]
        found = []
        for f in self.frags:
            short = self._short.get(f)
            if short is not None:
                if short.search(raw) or short.search(raw_rev):
                    found.append(f)
            elif f in text or f in rev:
                found.append(f)
        return found

    def assert_no_leak(self, *blobs: Any, context: str = "") -> None:
        found = self.leaks(*blobs)
        assert not found, f"real values leaked {found} {context}: {str(blobs)[:600]}"

"""Masked values written back: what the proxy emits for a masked value, recognised when a
client sends it back in a write (``masking.write_back``, docs/masking.md "Writes"), so that
a placeholder never replaces the real data it stands for. Engine-neutral: each engine finds
the constants and parameters of its writes and asks :func:`looks_masked`."""

from __future__ import annotations

import re

from dbsentry.masking.strategies import PLACEHOLDERS

RULE = "masking.write_back"

# The shapes the proxy's masks have (strategies.py), whole values only: a placeholder, a
# partial email, card, phone or id (stars, separators, at most the last four digits), a
# partial IBAN, name or date of birth, a hashed email.  Hashes of other classes look like
# real values on purpose and cannot be told apart.
_MASK_SHAPES = re.compile(
    r"(?:"
    + "|".join(re.escape(v) for v in PLACEHOLDERS.values())
    + r"|\*+@\S+"
    + r"|[0-9a-f]{10}@[0-9a-f]{8}\.invalid"
    + r"|[+(]?[*\s()-]*\*[*\s()-]*\*[\d\s-]*"
    + r"|[A-Z]{2}\*\*[*\s]*[\d\s]*"
    + r"|[^\W\d_]\*+(?:\s[^\W\d_]\*+)*"
    + r"|\d{4}-\*\*-\*\*"
    + r")"
)


def looks_masked(value: str) -> bool:
    """Whether ``value`` is, as a whole, what the proxy emits for a masked value (writing
    one back would corrupt data); text that merely contains ``****`` or ``<email>`` is not."""
    value = value.strip()
    if "*" not in value and "<" not in value and not value.endswith(".invalid"):
        return False
    if _MASK_SHAPES.fullmatch(value) is None:
        return False
    return sum(c.isdigit() for c in value) <= 4 or value.endswith(".invalid")



"""Masking strategies, and masked values that stay valid for the column's type.

Strategies (from least to most destructive, :data:`STRATEGIES`):

- ``partial``: keep what identifies the record to a human without revealing the value:
  the last 4 digits of a card or national id with its format (``**** **** **** 4242``,
  ``***-**-6789``), the domain of an email (``****@example.com``), the last digits of a
  phone, the country and last 4 of an IBAN, the network half of an IPv4 address, initials
  of a name, the year of a date of birth.  Secrets and addresses fall back to ``redact``.
- ``hash``: keyed HMAC-SHA256 of the value, deterministic per key so joins, ``GROUP BY``
  and ``DISTINCT`` still work; format-preserving where the format is simple (digits stay
  digits, separators stay, emails stay emails, IPv4 stays a private IPv4), otherwise 16
  hex characters.
- ``redact``: a fixed placeholder per class (:data:`PLACEHOLDERS`, e.g. ``<email>``).
- ``null``: SQL NULL.

They work on text and know no database: how a masked value is written back in a given
engine's types and formats (PostgreSQL: :mod:`dbsentry.engines.postgres.masking.values`) is the
engine's part.
"""

from __future__ import annotations

import hmac
import ipaddress
import re

from dbsentry.masking.classes import DataClass
from dbsentry.masking.detect import Span, _candidate_spans, detect_value, find_sensitive

__all__ = [
    "DEFAULT_STRATEGIES",
    "PLACEHOLDERS",
    "SAFETY_NET_CLASSES",
    "STRATEGIES",
    "hash_text",
    "keyed_digest",
    "mask_text",
    "may_hold_sensitive",
    "partial_text",
    "scan_text",
]

STRATEGIES: tuple[str, ...] = ("partial", "hash", "redact", "null")

DEFAULT_STRATEGIES: dict[DataClass, str] = {
    DataClass.EMAIL: "partial",
    DataClass.PHONE: "partial",
    DataClass.PERSON_NAME: "redact",
    DataClass.POSTAL_ADDRESS: "redact",
    DataClass.DATE_OF_BIRTH: "redact",
    DataClass.NATIONAL_ID: "partial",
    DataClass.PAYMENT_CARD: "partial",
    DataClass.IBAN: "partial",
    DataClass.IP_ADDRESS: "partial",
    DataClass.SECRET: "redact",
}

PLACEHOLDERS: dict[DataClass | None, str] = {
    DataClass.EMAIL: "<email>",
    DataClass.PHONE: "<phone>",
    DataClass.PERSON_NAME: "<name>",
    DataClass.POSTAL_ADDRESS: "<address>",
    DataClass.DATE_OF_BIRTH: "<dob>",
    DataClass.NATIONAL_ID: "<national_id>",
    DataClass.PAYMENT_CARD: "<card>",
    DataClass.IBAN: "<iban>",
    DataClass.IP_ADDRESS: "<ip>",
    DataClass.SECRET: "<secret>",
    None: "<redacted>",
}

# -- on strings -------------------------------------------------------------------------------


def _mask_alnum_keep_last(s: str, keep: int, alnum: bool) -> str:
    """Replace digits (and letters when ``alnum``) with ``*`` except the last ``keep`` of them."""
    test = str.isalnum if alnum else str.isdigit
    total = sum(1 for ch in s if test(ch))
    if total <= keep:
        keep = 0
    seen = 0
    out = []
    for ch in s:
        if test(ch):
            seen += 1
            out.append(ch if seen > total - keep else "*")
        else:
            out.append(ch)
    return "".join(out)


_DATE_RE = re.compile(r"(\d{4})([-/.])\d{1,2}\2\d{1,2}(.*)", re.DOTALL)


def partial_text(value: str, cls: DataClass | None) -> str:
    if cls is DataClass.PAYMENT_CARD:
        return _mask_alnum_keep_last(value, 4, alnum=False)
    if cls is DataClass.NATIONAL_ID:
        n = sum(ch.isalnum() for ch in value)
        return _mask_alnum_keep_last(value, 4 if n >= 9 else 2 if n >= 6 else 0, alnum=True)
    if cls is DataClass.EMAIL:
        local, at, domain = value.rpartition("@")
        return f"****@{domain}" if at and local else PLACEHOLDERS[cls]
    if cls is DataClass.PHONE:
        n = sum(ch.isdigit() for ch in value)
        return _mask_alnum_keep_last(value, 4 if n >= 10 else 2, alnum=False)
    if cls is DataClass.IBAN:
        s = value.strip()
        if len(s) < 8:
            return PLACEHOLDERS[cls]
        return s[:2] + _mask_alnum_keep_last(s[2:], 4, alnum=True)
    if cls is DataClass.IP_ADDRESS:
        try:
            ip = ipaddress.ip_address(value.strip())
        except ValueError:
            return PLACEHOLDERS[cls]
        if ip.version == 4:
            a, b, _, _ = str(ip).split(".")
            return f"{a}.{b}.0.0"
        return str(ipaddress.ip_network(f"{ip}/48", strict=False).network_address)
    if cls is DataClass.PERSON_NAME:
        return " ".join(w[0] + "*" * (len(w) - 1) if w else w for w in value.split(" "))
    if cls is DataClass.DATE_OF_BIRTH:
        m = _DATE_RE.fullmatch(value.strip())
        if m:
            return f"{m.group(1)}{m.group(2)}**{m.group(2)}**"
        return PLACEHOLDERS[cls]
    return PLACEHOLDERS[cls]


def keyed_digest(key: bytes, data: bytes, n: int = 32) -> bytes:
    """``n`` bytes of HMAC-SHA256(key, data), extended by counter blocks when n > 32."""
    out = hmac.digest(key, data, "sha256")
    counter = 1
    while len(out) < n:
        out += hmac.digest(key, data + counter.to_bytes(4, "big"), "sha256")
        counter += 1
    return out[:n]


def _hash_shape(value: str, digest: bytes) -> str:
    """Digits become digits and letters letters (case kept), from the digest; the rest stays."""
    out = []
    i = 0
    for ch in value:
        if ch.isascii() and ch.isdigit():
            out.append(chr(48 + digest[i % len(digest)] % 10))
            i += 1
        elif ch.isascii() and ch.isalpha():
            base = 65 if ch.isupper() else 97
            out.append(chr(base + digest[i % len(digest)] % 26))
            i += 1
        else:
            out.append(ch)
    return "".join(out)


def hash_text(value: str, cls: DataClass | None, key: bytes) -> str:
    raw = value.encode("utf-8", "surrogateescape")
    d = keyed_digest(key, raw, 64 if len(value) > 32 else 32)
    if cls is DataClass.EMAIL and "@" in value:
        domain = value.rpartition("@")[2]
        dd = keyed_digest(key, b"domain:" + domain.lower().encode("utf-8", "surrogateescape"), 8)
        return f"{d[:5].hex()}@{dd[:4].hex()}.invalid"
    if (
        cls in (DataClass.PAYMENT_CARD, DataClass.PHONE, DataClass.NATIONAL_ID, DataClass.IBAN)
        and len(value) <= 64
    ):
        return _hash_shape(value, d)
    if cls is DataClass.IP_ADDRESS:
        try:
            ip = ipaddress.ip_address(value.strip())
        except ValueError:
            return d[:8].hex()
        if ip.version == 4:
            return f"10.{d[0]}.{d[1]}.{d[2]}"
        return str(ipaddress.IPv6Address(b"\xfd" + d[:15]))
    return d[:8].hex()


def mask_text(value: str, cls: DataClass | None, strategy: str, key: bytes = b"") -> str | None:
    """The masked form of a text value (None for SQL NULL)."""
    if strategy == "null":
        return None
    if strategy == "redact":
        return PLACEHOLDERS[cls]
    if strategy == "hash":
        return hash_text(value, cls, key)
    if strategy == "partial":
        return partial_text(value, cls)
    raise ValueError(f"unknown masking strategy {strategy!r}")


#: What the safety net looks for in columns nothing else masks: the classes whose
#: detectors validate what they find (checksums, issuer ranges, formats, key prefixes).
#: IP addresses are left out: version numbers and server addresses in ordinary text would
#: be masked with them.
SAFETY_NET_CLASSES: frozenset[DataClass] = frozenset(
    {
        DataClass.EMAIL,
        DataClass.PAYMENT_CARD,
        DataClass.NATIONAL_ID,
        DataClass.IBAN,
        DataClass.SECRET,
        DataClass.PHONE,
    }
)


def _spans(text: str, classes: frozenset[DataClass] | None) -> list[Span]:
    """Every sensitive span of ``text``: find_sensitive stops at 64, so the text after
    the 64th is searched again, until none is left."""
    out: list[Span] = []
    base = 0
    while True:
        rest = text[base:] if base else text
        found = _some_spans(rest, classes)
        out.extend(Span(sp.start + base, sp.end + base, sp.data_class) for sp in found)
        if len(found) < 64:
            return out
        base = out[-1].end


def _some_spans(text: str, classes: frozenset[DataClass] | None) -> list[Span]:
    """find_sensitive, keeping only spans of ``classes`` (all when None).  A span of
    another class must not hide an overlapping one of these, so then the candidates are
    chosen again without it."""
    spans = find_sensitive(text)
    if classes is None or all(sp.data_class in classes for sp in spans):
        return spans
    chosen = sorted(
        (sp for sp in _candidate_spans(text) if sp.data_class in classes),
        key=lambda sp: (sp.start, -sp.end),
    )
    out: list[Span] = []
    pos = 0
    for sp in chosen:
        if sp.start >= pos:
            out.append(sp)
            pos = sp.end
            if len(out) >= 64:
                break
    return out


def scan_text(
    value: str,
    strategies: dict[DataClass, str],
    key: bytes = b"",
    classes: frozenset[DataClass] | None = None,
) -> str | None:
    """``value`` with every sensitive value detected in it masked.  A value that is
    sensitive as a whole is masked as a whole (NULL if its strategy says so); sensitive
    parts of a longer text are replaced in place, span by span, and the rest of the text
    is kept (``null`` parts are redacted).  With ``classes``, only those classes are
    masked.  Returns ``value`` itself when nothing was found."""
    whole = detect_value(value)
    if whole is not None:
        if classes is None or whole in classes:
            return mask_text(value, whole, strategies.get(whole, DEFAULT_STRATEGIES[whole]), key)
        return value  # the whole value is of a class left alone: nothing else is in it
    if len(value) < 8:
        return value
    spans = _spans(value, classes)
    if not spans:
        return value
    out = []
    pos = 0
    for sp in spans:
        if sp.start < pos:
            continue
        out.append(value[pos : sp.start])
        strategy = strategies.get(sp.data_class, DEFAULT_STRATEGIES[sp.data_class])
        part = mask_text(
            value[sp.start : sp.end],
            sp.data_class,
            "redact" if strategy == "null" else strategy,
            key,
        )
        out.append(part or "")
        pos = sp.end
    out.append(value[pos:])
    return "".join(out)


# -- the prefilter ---------------------------------------------------------------------------
#
# Value detection in Python costs microseconds per value; a bulk export scans millions.
# may_hold_sensitive() is a cheap test on a value's bytes that is true for every value in
# which the detectors can find something (of SAFETY_NET_CLASSES, or of every class with
# ``ip``), and false for most ordinary text: no "@", few digits, no key prefix.  It is a
# superset test, never a detector: what passes it goes to the detectors.  _fastmask.c has
# the same test in C (prefilter()); a property test holds them equal byte for byte, and
# another that nothing the detectors find is ever skipped.
#
# Why each rule is there (what the detectors need).  Python's \d matches any Unicode
# digit, so "digits" counts ASCII digits and the first bytes of non-ASCII characters that
# may be digits (_DIGIT_LEADS: the UTF-8 lead bytes of every character \d matches; a test
# checks the list); "next to a digit" also takes those lead bytes after a letter, and any
# continuation byte before one:
#
#   "@"                                 emails
#   >= 9 ASCII digits in a run of
#     digits and " ().+-" (8 when the
#     run has a "+")                    cards (13+), SSN/SIN (9), NIR (13+), phones (10;
#                                       international: "+" and 8-15): the detectors take
#                                       these only as ASCII digits and those separators
#   >= 6 digits and an uppercase letter
#     next to a digit (or one " "/"-"
#     away; non-ASCII counts as digit)  UK NINO (6 digits), Spanish NIE (7) and DNI (8)
#   two letters then a digit and a
#     digit or non-ASCII byte           IBANs, whatever their digit count
#   three "$"                           password hashes (bcrypt, sha-crypt, argon2...)
#   key prefixes                        AWS, GitHub, Slack, Stripe, Google, JWT, PBKDF2,
#                                       SCRAM, md5 verifiers, dbsentry tokens, PEM keys,
#                                       and "ecret"/"ECRET" (an AWS secret in context)
#   "\u"                                a JSON escape can spell any of the above
#   with ``ip``: digit "." digit, or
#     ":" next to a hex digit or ":"    IPv4, IPv6

_DIGIT_LEADS = b"\xd9\xdb\xdf\xe0\xe1\xea\xef\xf0"
_COUNTED = b"0123456789" + _DIGIT_LEADS
_PREFILTER_RE = re.compile(
    rb"[A-Za-z]{2}[0-9\xd9\xdb\xdf\xe0\xe1\xea\xef\xf0][0-9\x80-\xff]|-----BEGIN|ecret|ECRET"
    rb"|A(?:KIA|SIA|GPA|IDA|ROA|IPA|NPA|NVA|Iza)|gh[pousr]_|github_pat_|xox|sk_|rk_|eyJ|pbkdf2_"
    rb"|SCRAM-|md5|dbs_|\\u"
)
_ADJACENT_RE = re.compile(
    rb"[A-Z][ -]?[0-9\xd9\xdb\xdf\xe0\xe1\xea\xef\xf0]|[0-9\x80-\xbf][ -]?[A-Z]"
)
_RUN_RE = re.compile(rb"[0-9 ().+-]+")
_IP_RE = re.compile(rb"[0-9]\.[0-9]|[0-9A-Fa-f:]:|:[0-9A-Fa-f]")


def may_hold_sensitive(raw: bytes, ip: bool = False) -> bool:
    """Whether the detectors could find anything in ``raw`` (see above); when false,
    scanning it is skipped."""
    if b"@" in raw:
        return True
    if len(raw) - len(raw.translate(None, b"0123456789")) >= 8:
        for run in _RUN_RE.findall(raw):
            n = len(run) - len(run.translate(None, b"0123456789"))
            if n >= 9 or (n >= 8 and b"+" in run):
                return True
    digits = len(raw) - len(raw.translate(None, _COUNTED))
    if raw.count(b"$") >= 3 or _PREFILTER_RE.search(raw) is not None:
        return True
    if digits >= 6 and _ADJACENT_RE.search(raw) is not None:
        return True
    return ip and _IP_RE.search(raw) is not None

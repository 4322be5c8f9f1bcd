"""Finding sensitive data: in a single value, inside free text, and from a column's schema.

``detect_value`` decides what a whole value is.  It runs on every text value of a result
when masking falls back to value detection, so it is built as a chain of cheap tests
(length, first character, a character the class must contain) before any regular
expression, and it accepts a match only when the class's own validation agrees: the Luhn
check for cards and Canadian SINs, mod-97 for IBANs, the control letter of a Spanish DNI
or NIE, the key of a French NIR, the issuing rules of a US SSN, a JWT header that decodes
to JSON with an ``alg``.  Classes with no such structure (names, postal addresses, dates
of birth) are never guessed from values: only the schema names them.

``find_sensitive`` finds the same things *inside* longer text, for free-text columns and
composite values (JSON documents, concatenations).

``classify_column`` reads the schema: the column's name, its type and its comment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import secrets
from dataclasses import dataclass

import orjson

from dbsentry.masking.classes import Classification, DataClass, parse_class

__all__ = [
    "IGNORED_NONE_NOTE",
    "Span",
    "classify_column",
    "comment_says_none",
    "detect_value",
    "find_sensitive",
    "iban_ok",
    "luhn_ok",
]

MAX_VALUE_CHARS = 16_384  # longer values are only searched for PEM keys and JWTs

# -- checksums ---------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VA": 22,
    "VG": 24, "XK": 20,
}  # fmt: skip
_IBAN_RE = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}")


def iban_ok(text: str) -> bool:
    """An IBAN (spaces allowed): the country's length, then ISO 7064 mod 97-10."""
    s = text.replace(" ", "").upper()
    if not _IBAN_RE.fullmatch(s):
        return False
    want = _IBAN_LENGTHS.get(s[:2])
    if want is not None and len(s) != want:
        return False
    rearranged = s[4:] + s[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def _card_prefix_ok(d: str) -> bool:
    """Issuer ranges of the card networks (ISO/IEC 7812 IINs) with their lengths."""
    n = len(d)
    p2 = int(d[:2])
    p4 = int(d[:4])
    if d[0] == "4":
        return n in (13, 16, 19)  # Visa
    if p2 in (34, 37):
        return n == 15  # American Express
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:
        return n == 16  # Mastercard
    if p4 == 6011 or p2 == 65 or 644 <= int(d[:3]) <= 649 or p2 == 62:
        return 16 <= n <= 19  # Discover, UnionPay
    if 3528 <= p4 <= 3589:
        return 16 <= n <= 19  # JCB
    if p2 in (36, 38, 39) or 300 <= int(d[:3]) <= 305:
        return 14 <= n <= 19  # Diners Club
    if p2 == 50 or 56 <= p2 <= 69:
        return 12 <= n <= 19  # Maestro
    return False


def _card_ok(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return (
        13 <= len(digits) <= 19 and digits.isdigit() and digits.isascii()
        and _card_prefix_ok(digits) and luhn_ok(digits)
    )  # fmt: skip


def _ssn_ok(area: str, group: str, serial: str) -> bool:
    """US SSN issuing rules: no area 000, 666 or 900-999, no group 00, no serial 0000."""
    a = int(area)
    if a == 0 or a == 666 or a >= 900 or group == "00" or serial == "0000":
        return False
    return f"{area}{group}{serial}" not in ("078051120", "219099999")  # published samples


_DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def _dni_ok(number: str, letter: str) -> bool:
    return _DNI_LETTERS[int(number) % 23] == letter


def _nir_ok(body: str, key: str) -> bool:
    """French NIR (INSEE number): key = 97 - (number mod 97); Corsica 2A/2B count as 19/18."""
    digits = body.replace("2A", "19").replace("2B", "18")
    return 97 - int(digits) % 97 == int(key)


# -- value detection ----------------------------------------------------------------------

# Letters and digits of any script: internationalized addresses (RFC 6531, IDN domains)
# are as personal as ASCII ones.
_EMAIL_RE = re.compile(
    r"[\w.%+'-]+@[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)*\.[^\W\d_]{2,24}"
)
_SSN_RE = re.compile(r"(\d{3})([- ])(\d{2})\2(\d{4})")
_SIN_RE = re.compile(r"([0-79]\d{2})([- ])(\d{3})\2(\d{3})")  # 8xx is never issued
_CARD_SHAPE_RE = re.compile(r"\d{4}(?:[ -]?\d){9,15}")
_NANP_RE = re.compile(r"(?:\+?1[ .-]?)?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-])[2-9]\d{2}[ .-]\d{4}")
_INTL_PHONE_RE = re.compile(r"\+[1-9][\d ().-]{6,20}\d")
_NATIONAL_PHONE_RE = re.compile(r"0\d{1,4}[ -]\d{3,4}[ -]?\d{3,4}")
_DNI_RE = re.compile(r"(\d{8})-?([A-Z])")
_NIE_RE = re.compile(r"([XYZ])-?(\d{7})-?([A-Z])")
_NINO_RE = re.compile(
    r"(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]"
)
_NIR_RE = re.compile(
    r"([12] ?\d{2} ?(?:0[1-9]|1[0-2]|[2-9]\d) ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3}) ?(\d{2})"
)
_IBAN_SHAPE_RE = re.compile(r"[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}")

_AWS_KEY_ID_RE = re.compile(r"(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}")
_AWS_SECRET_CTX_RE = re.compile(
    r"(?i)aws.{0,20}?secret.{0,20}?[=:]\s*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
)
_GITHUB_RE = re.compile(r"gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{60,255}")
_SLACK_RE = re.compile(r"xox[bpars]-[A-Za-z0-9-]{10,250}")
_STRIPE_RE = re.compile(r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,247}")
_GOOGLE_RE = re.compile(r"AIza[0-9A-Za-z_-]{35}")
_JWT_RE = re.compile(r"(eyJ[A-Za-z0-9_-]{8,})\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_PEM_RE = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_DBS_RE = re.compile(r"dbs_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")
_HASH_RES = (
    re.compile(r"\$2[abxy]?\$\d{2}\$[./A-Za-z0-9]{53}"),  # bcrypt
    re.compile(
        r"\$argon2(?:id|i|d)\$(?:v=\d+\$)?m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
    ),
    re.compile(r"\$[56]\$(?:rounds=\d+\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{43,86}"),  # sha-crypt
    re.compile(r"\$1\$[./A-Za-z0-9]{1,8}\$[./A-Za-z0-9]{22}"),  # md5-crypt
    re.compile(r"\$y\$[./A-Za-z0-9]+\$[./A-Za-z0-9]*\$[./A-Za-z0-9]{43}"),  # yescrypt
    re.compile(r"\$scrypt\$[^$\s]+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+"),
)
_PBKDF2_RE = re.compile(r"pbkdf2_sha(?:1|256|512)\$\d+\$[^$\s]+\$[A-Za-z0-9+/=]+")
_SCRAM_RE = re.compile(r"SCRAM-SHA-256\$\d+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")
_MD5_PG_RE = re.compile(r"md5[0-9a-f]{32}")

_SECRET_PREFIXES = ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "gh", "github_pat_", "xox", "sk_", "rk_", "AIza", "eyJ", "pbkdf2_", "SCRAM-", "md5", "dbs_")  # fmt: skip
_PHONE_CHARS = frozenset("0123456789 ().-+")
_HEX_COLON = frozenset("0123456789abcdefABCDEF:.")


def _jwt_ok(header_b64: str) -> bool:
    try:
        raw = base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4))
        header = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        return False
    return isinstance(header, dict) and isinstance(header.get("alg"), str)


def _secret(s: str) -> bool:
    """A whole value that is a credential: key, token, private key or password hash."""
    c = s[0]
    if c == "$":
        return any(r.fullmatch(s) for r in _HASH_RES)
    if c == "-":
        return _PEM_RE.search(s) is not None
    if s.startswith(_SECRET_PREFIXES):
        if c == "e":
            m = _JWT_RE.fullmatch(s)
            return m is not None and _jwt_ok(m.group(1))
        return any(
            r.fullmatch(s)
            for r in (
                _AWS_KEY_ID_RE,
                _GITHUB_RE,
                _SLACK_RE,
                _STRIPE_RE,
                _GOOGLE_RE,
                _PBKDF2_RE,
                _SCRAM_RE,
                _MD5_PG_RE,
                _DBS_RE,
            )
        )
    if ("ecret" in s or "ECRET" in s) and _AWS_SECRET_CTX_RE.search(s):
        return True
    return "PRIVATE KEY-----" in s and _PEM_RE.search(s) is not None


def _digits_class(s: str) -> DataClass | None:
    """Values made of digits and separators: SSN, SIN, NIR, card, phone."""
    n = len(s)
    if n == 11:
        m = _SSN_RE.fullmatch(s)
        if m and _ssn_ok(m.group(1), m.group(3), m.group(4)):
            return DataClass.NATIONAL_ID
        m = _SIN_RE.fullmatch(s)
        if m and luhn_ok(m.group(1) + m.group(3) + m.group(4)):
            return DataClass.NATIONAL_ID
    if s[0] in "12" and n >= 15:
        m = _NIR_RE.fullmatch(s)
        if m and _nir_ok(m.group(1).replace(" ", ""), m.group(2)):
            return DataClass.NATIONAL_ID
    if n >= 13 and _CARD_SHAPE_RE.fullmatch(s) and _card_ok(s):
        return DataClass.PAYMENT_CARD
    if n >= 10 and (
        _NANP_RE.fullmatch(s)
        or (_NATIONAL_PHONE_RE.fullmatch(s) and sum(ch.isdigit() for ch in s) >= 10)
    ):
        return DataClass.PHONE
    return None


def _ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


def detect_value(text: str) -> DataClass | None:
    """The data class of a whole value, or None.  Surrounding whitespace is ignored."""
    n = len(text)
    if n < 7:
        return None
    if n > MAX_VALUE_CHARS:
        return DataClass.SECRET if _PEM_RE.search(text, 0, 4096) else None
    s = text.strip() if (text[0].isspace() or text[-1].isspace()) else text
    n = len(s)
    if n < 7:
        return None
    c = s[0]
    if c.isdigit():
        if n <= 10 and s[-1].isalpha():
            m = _DNI_RE.fullmatch(s)
            return DataClass.NATIONAL_ID if m and _dni_ok(m.group(1), m.group(2)) else None
        if n <= 15 and s.count(".") == 3 and s.replace(".", "").isdigit():
            return DataClass.IP_ADDRESS if _ip(s) else None
        if ":" in s:
            return DataClass.IP_ADDRESS if _HEX_COLON.issuperset(s) and _ip(s) else None
        if n <= 32 and _PHONE_CHARS.issuperset(s):
            return _digits_class(s)
        if _secret(s):
            return DataClass.SECRET
        if "@" in s and _EMAIL_RE.fullmatch(s):
            return DataClass.EMAIL
        return None
    if c == "+" and n <= 32 and _PHONE_CHARS.issuperset(s):
        if _NANP_RE.fullmatch(s):
            return DataClass.PHONE
        if _INTL_PHONE_RE.fullmatch(s):
            d = sum(ch.isdigit() for ch in s)
            return DataClass.PHONE if 8 <= d <= 15 else None
        return None
    if c == "(" and n <= 20 and _PHONE_CHARS.issuperset(s):
        return DataClass.PHONE if _NANP_RE.fullmatch(s) else None
    if "@" in s:
        if n <= 320 and " " not in s and _EMAIL_RE.fullmatch(s):
            return DataClass.EMAIL
    elif ":" in s and n <= 45 and _HEX_COLON.issuperset(s):
        return DataClass.IP_ADDRESS if _ip(s) else None
    if _secret(s):
        return DataClass.SECRET
    if c.isalpha() and c.isascii() and n <= 42:
        if s[1].isalpha() and s[2:4].isdigit() and _IBAN_SHAPE_RE.fullmatch(s) and iban_ok(s):
            return DataClass.IBAN
        if n <= 13 and c.isupper():
            if _NINO_RE.fullmatch(s):
                return DataClass.NATIONAL_ID
            m = _NIE_RE.fullmatch(s)
            if m and _dni_ok(str("XYZ".index(m.group(1))) + m.group(2), m.group(3)):
                return DataClass.NATIONAL_ID
    return None


# -- finding inside text -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Span:
    """Sensitive data found inside a longer text: ``text[start:end]`` is of ``data_class``."""

    start: int
    end: int
    data_class: DataClass


# Candidate patterns, each searched on its own so that a failed candidate of one kind
# cannot swallow a real value of another.
_CANDIDATES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("pem", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END [A-Z0-9 ]*-----|\Z)", re.DOTALL)),
    ("email", re.compile(r"[\w.%+'-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,24}")),
    ("iban", re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Za-z0-9])")),
    ("tok", re.compile(r"(?<![A-Za-z0-9_$./+=:-])[A-Za-z0-9_$./+=:,-]{16,}(?![A-Za-z0-9_$./+=:-])")),
    ("num", re.compile(r"(?<![\w.+-])(?:\+|\()?\d[\d ().-]{5,22}\d(?![\w])")),
    ("word", re.compile(r"(?<![\w])[A-Z0-9]{2}[A-Z0-9 -]{5,12}[A-Z0-9](?![\w])")),
)  # fmt: skip


# Everything the candidates can match contains one of these; most text contains none.
_MAYBE_RE = re.compile(
    r"@|\d\d|\d\.\d|::|[0-9a-fA-F]:[0-9a-fA-F]|-----BEGIN|[A-Za-z0-9_$./+=:-]{16}"
)


_NUM_RUN_RE = re.compile(r"[\d ().+-]+")
_GROUP_RE = re.compile(r"[^ ]+")


def _numeric_windows(text: str, start: int) -> list[Span]:
    """Valid values among consecutive groups of the digit run at ``start``."""
    run = _NUM_RUN_RE.match(text, start)
    if run is None:
        return []
    groups = [(start + m.start(), start + m.end()) for m in _GROUP_RE.finditer(run.group())][:24]
    out: list[Span] = []
    i = 0
    while i < len(groups):
        for j in range(len(groups) - 1, i - 1, -1):
            s, e = groups[i][0], groups[j][1]
            if e - s < 7 or (i == 0 and j == len(groups) - 1):
                continue
            found = detect_value(text[s:e])
            # phones are not taken from a longer run: their check is too weak for that
            if found is not None and found is not DataClass.PHONE:
                out.append(Span(s, e, found))
                i = j
                break
        i += 1
    return out


def _candidate_spans(text: str) -> list[Span]:
    out: list[Span] = []
    for kind, pattern in _CANDIDATES:
        # Patterns that need a character the text lacks find nothing: skip their scan (the
        # e-mail pattern backtracks over every word character before each position when
        # there is no "@": 67 us for a 120-character run of digits, 1 us with this test).
        if (kind == "email" and "@" not in text) or (kind == "pem" and "-----BEGIN" not in text):
            continue
        for m in pattern.finditer(text):
            start, end = m.span()
            if kind == "pem":
                out.append(Span(start, end, DataClass.SECRET))
                continue
            if kind == "email":
                out.append(Span(start, end, DataClass.EMAIL))
                continue
            cand = m.group()
            found = detect_value(cand)
            if found is None and kind == "tok":
                # a token may carry a trailing separator (``key=...,``) or be key=value
                for piece in re.split(r"[=:,]", cand):
                    if len(piece) >= 7 and (found := detect_value(piece)) is not None:
                        off = cand.index(piece)
                        start, end = start + off, start + off + len(piece)
                        break
            if found is not None:
                out.append(Span(start, end, found))
            elif kind == "num":
                # Values side by side (``4539 1488 0343 6467 536-22-8714``) read as one run:
                # try the run's space-separated groups, longest windows first.
                out.extend(_numeric_windows(text, start))
    if "ecret" in text or "ECRET" in text:
        for m in _AWS_SECRET_CTX_RE.finditer(text):
            s, e = m.span(1)
            out.append(Span(s, e, DataClass.SECRET))
    return out


# What find_sensitive found in recent texts, by a keyed hash of the text (never the text:
# the memo holds positions and classes, and a hash nobody outside this process can
# compute).  The same values come back again and again (hot rows, range scans): a hit
# costs a hash, about 1.5 us, where a scan of a 120-character value costs 20-50 us.
_MEMO_KEY = secrets.token_bytes(16)
_MEMO: dict[bytes, tuple[Span, ...]] = {}
_MEMO_SIZE = 32_768
_MEMO_MAX_CHARS = 4096


def find_sensitive(text: str, limit: int = 64) -> list[Span]:
    """Sensitive values inside ``text`` (emails, cards, national ids, IBANs, IPs, phones,
    secrets), in order and not overlapping, at most ``limit`` of them.  The AWS
    secret-key-in-context rule reports the key itself."""
    if len(text) < 7 or not _MAYBE_RE.search(text):
        return []
    if len(text) > _MEMO_MAX_CHARS:
        return _find(text, limit)
    key = hashlib.blake2b(
        text.encode("utf-8", "surrogatepass"),
        digest_size=16,
        key=_MEMO_KEY,
        person=limit.to_bytes(4, "little"),
    ).digest()
    hit = _MEMO.get(key)
    if hit is None:
        hit = tuple(_find(text, limit))
        if len(_MEMO) >= _MEMO_SIZE:
            try:
                del _MEMO[next(iter(_MEMO))]  # the oldest entry
            except (RuntimeError, KeyError, StopIteration):  # another thread got there first
                _MEMO.clear()
        _MEMO[key] = hit
    return list(hit)


def _find(text: str, limit: int) -> list[Span]:
    spans = sorted(_candidate_spans(text), key=lambda sp: (sp.start, -sp.end))
    out: list[Span] = []
    pos = 0
    for sp in spans:
        if sp.start >= pos:
            out.append(sp)
            pos = sp.end
            if len(out) >= limit:
                break
    return out


# -- columns -------------------------------------------------------------------------------

_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_NON_ALNUM_RE = re.compile(r"[^a-z0-9]+")


def _tokens(name: str) -> list[str]:
    snake = _CAMEL_RE.sub("_", name).lower()
    return [t for t in _NON_ALNUM_RE.split(snake) if t]


# Names that describe a sensitive value without being it: flags, counts, timestamps...
_NEG_FIRST = frozenset({"is", "has", "can", "should", "allow", "allows", "num", "count", "total", "max", "min", "avg", "last4"})  # fmt: skip
_NEG_LAST = frozenset({
    "verified", "confirmed", "count", "at", "on", "enabled", "disabled", "status", "type",
    "kind", "flag", "opt", "optin", "optout", "consent", "sent", "valid", "validated",
    "length", "len", "policy", "format", "template", "expires", "expiry", "expiration",
    "updated", "created", "changed", "reset", "attempts", "required", "provider", "domain",
    "hint", "version", "algorithm", "algo", "salt", "id", "ids", "server", "host", "port",
    "mask", "masked", "redacted", "prefix", "suffix", "label", "scope", "scopes", "hash_algorithm",
    "question", "rotation", "rotated", "fingerprint", "bounced", "unsubscribed", "preference",
    "preferences", "notifications", "visible", "public", "ttl", "uri", "url", "endpoint",
})  # fmt: skip
_NOT_POSTAL = frozenset({"ip", "mac", "email", "mail", "wallet", "contract", "web", "url", "server", "host", "remote", "bind", "listen", "memory", "base", "return", "ipv4", "ipv6", "inet", "node", "network", "bitcoin", "eth", "blockchain"})  # fmt: skip
_PEOPLE = frozenset({
    "customer", "user", "person", "people", "employee", "patient", "member", "contact",
    "client", "staff", "student", "author", "applicant", "guest", "passenger", "subscriber",
    "profile", "account", "holder", "cardholder", "owner", "tenant", "buyer", "seller",
    "driver", "teacher", "doctor", "candidate", "lead", "prospect", "recipient", "sender",
    "beneficiary", "donor", "volunteer", "visitor", "traveler", "traveller", "worker",
    "personnel", "individual", "resident", "citizen", "consumer", "shopper", "attendee",
})  # fmt: skip
_NAME_PREFIXES = ("first", "last", "middle", "given", "family", "full", "maiden", "legal", "sur", "fore", "christian", "holder", "cardholder", "customer", "contact", "employee", "patient", "person", "member", "client", "owner", "billing", "shipping", "recipient", "beneficiary", "account_holder", "real", "birth")  # fmt: skip

_SECRET_TOKENS = frozenset({"password", "passwd", "passwort", "pwd", "passphrase", "secret", "secrets", "token", "tokens", "credential", "credentials", "bearer", "totp", "otp", "apikey", "rolpassword", "privkey", "pin", "cvv", "cvc", "cvv2", "csc"})  # fmt: skip
_SECRET_COMPACT = ("password", "passwd", "apikey", "apitoken", "accesstoken", "refreshtoken", "authtoken", "sessiontoken", "privatekey", "secretkey", "clientsecret", "accesskey", "signingkey", "encryptionkey", "webhooksecret", "mfasecret", "otpsecret", "totpsecret", "passhash", "pwhash", "pwdhash", "sshkey", "recoverycode", "umoptions")  # fmt: skip
_EMAIL_TOKENS = frozenset({"email", "emails", "mail", "emailaddress"})
_PHONE_TOKENS = frozenset({"phone", "phones", "mobile", "msisdn", "telephone", "tel", "cell", "cellphone", "fax", "phonenumber", "mobilenumber", "whatsapp"})  # fmt: skip
_DOB_COMPACT = ("dateofbirth", "birthdate", "birthday", "birthdt", "bornon", "dob")
_NATIONAL_TOKENS = frozenset({"ssn", "sin", "nino", "dni", "nie", "nif", "insee", "nir", "personnummer", "aadhaar", "pesel", "bsn", "cpf", "curp", "tin", "itin", "passport"})  # fmt: skip
_NATIONAL_COMPACT = ("socialsecurity", "nationalid", "nationalidentity", "nationalinsurance", "ninumber", "passportnumber", "passportno", "taxid", "taxnumber", "taxpayerid", "driverlicense", "driverslicense", "drivinglicence", "drivinglicense", "driverslicence", "licensenumber", "nhsnumber", "medicarenumber", "healthcard", "socialinsurance", "idnumber", "idcard", "identitycard", "identitynumber")  # fmt: skip
_CARD_TOKENS = frozenset({"pan", "cc", "ccn", "ccnum", "ccnumber", "cardnumber", "cardnum", "cardno", "creditcard", "debitcard"})  # fmt: skip
_CARD_COMPACT = ("cardnumber", "cardnum", "cardno", "ccnumber", "ccnum", "ccno", "creditcard", "debitcard", "primaryaccountnumber", "cardpan", "paymentcard")  # fmt: skip
_IBAN_COMPACT = ("iban", "bban", "bankaccount", "accountiban")
_IP_TOKENS = frozenset({"ip", "ipv4", "ipv6", "ipaddr", "ipaddress", "inet"})
_IP_COMPACT = ("ipaddress", "ipaddr", "remoteaddr", "clientaddr", "remoteip", "clientip", "sourceip", "lastip", "loginip", "userip")  # fmt: skip
_POSTAL_TOKENS = frozenset({"address", "addresses", "addr", "street", "postcode", "postalcode", "zip", "zipcode", "housenumber", "addressline", "addressline1", "addressline2", "line1", "line2"})  # fmt: skip
_POSTAL_COMPACT = ("streetaddress", "postalcode", "postcode", "zipcode", "addressline", "homeaddress", "mailingaddress", "billingaddress", "shippingaddress", "residentialaddress")  # fmt: skip


def _by_name(table_tokens: list[str], tokens: list[str]) -> DataClass | None:
    """The class a column's name points to, before type and negative checks."""
    compact = "".join(tokens)
    tset = set(tokens)
    if (
        (tset & _SECRET_TOKENS or any(k in compact for k in _SECRET_COMPACT))
        and "secretary" not in compact
        and "public" not in tset
        # a bare "pin" only where it cannot be something else ("pin_code" yes, "pin_map_layer" no)
        and not (tset & _SECRET_TOKENS == {"pin"} and len(tokens) > 2)
    ):
        return DataClass.SECRET
    if any(k in compact for k in _CARD_COMPACT) or (
        tset & _CARD_TOKENS and (compact in _CARD_TOKENS or "card" in tset or "number" in tset)
    ):
        return DataClass.PAYMENT_CARD
    if (tset & _NATIONAL_TOKENS or any(k in compact for k in _NATIONAL_COMPACT)) and (
        "sin" not in tset or compact in ("sin", "sinnumber", "sinno")
    ):
        return DataClass.NATIONAL_ID
    if any(k in compact for k in _IBAN_COMPACT):
        return DataClass.IBAN
    if tset & _EMAIL_TOKENS or "email" in compact:
        return DataClass.EMAIL
    if tset & _IP_TOKENS or any(k in compact for k in _IP_COMPACT):
        return DataClass.IP_ADDRESS
    if tset & _PHONE_TOKENS or any(
        k in compact for k in ("phonenumber", "mobilenumber", "telephone", "cellphone")
    ):
        return DataClass.PHONE
    if "dob" in tset or any(k in compact for k in _DOB_COMPACT[:-1]):
        return DataClass.DATE_OF_BIRTH
    if (
        tset & _POSTAL_TOKENS or any(k in compact for k in _POSTAL_COMPACT)
    ) and not tset & _NOT_POSTAL:
        return DataClass.POSTAL_ADDRESS
    if compact.endswith("name") and (
        compact
        in (
            "firstname",
            "lastname",
            "fullname",
            "surname",
            "givenname",
            "familyname",
            "middlename",
            "maidenname",
            "forename",
        )
        or any(compact == p.replace("_", "") + "name" for p in _NAME_PREFIXES)
    ):
        return DataClass.PERSON_NAME
    if compact == "name" and _people_table(table_tokens):
        return DataClass.PERSON_NAME
    return None


def _people_table(tokens: list[str]) -> bool:
    for t in tokens:
        singular = t[:-1] if t.endswith("s") and not t.endswith("ss") else t
        if t in _PEOPLE or singular in _PEOPLE or t == "people":
            return True
    return False


# -- types --------------------------------------------------------------------------------

_TEXTISH = "text"
_NUMERIC = "numeric"
_DATE = "date"
_INET = "inet"
_BOOL = "bool"
_OTHER = "other"

_TYPE_KIND = {
    "text": _TEXTISH, "character varying": _TEXTISH, "varchar": _TEXTISH, "character": _TEXTISH,
    "char": _TEXTISH, "bpchar": _TEXTISH, "citext": _TEXTISH, "name": _TEXTISH, "json": _TEXTISH,
    "jsonb": _TEXTISH, "bytea": _TEXTISH, "xml": _TEXTISH, "unknown": _TEXTISH, '"char"': _TEXTISH,
    "smallint": _NUMERIC, "integer": _NUMERIC, "bigint": _NUMERIC, "numeric": _NUMERIC,
    "decimal": _NUMERIC, "int2": _NUMERIC, "int4": _NUMERIC, "int8": _NUMERIC, "int": _NUMERIC,
    "date": _DATE, "timestamp without time zone": _DATE, "timestamp with time zone": _DATE,
    "timestamp": _DATE, "timestamptz": _DATE,
    "inet": _INET, "cidr": _INET,
    "boolean": _BOOL, "bool": _BOOL,
    "real": _OTHER, "double precision": _OTHER, "float4": _OTHER, "float8": _OTHER, "uuid": _OTHER,
    "money": _OTHER, "interval": _OTHER, "time without time zone": _OTHER, "time with time zone": _OTHER,
    "time": _OTHER, "timetz": _OTHER, "oid": _OTHER, "tsvector": _OTHER, "point": _OTHER,
    "macaddr": _OTHER, "macaddr8": _OTHER, "bit": _OTHER, "bit varying": _OTHER,
}  # fmt: skip

_ALLOWED_KINDS: dict[DataClass, frozenset[str]] = {
    DataClass.EMAIL: frozenset({_TEXTISH}),
    DataClass.PERSON_NAME: frozenset({_TEXTISH}),
    DataClass.POSTAL_ADDRESS: frozenset({_TEXTISH}),
    DataClass.IBAN: frozenset({_TEXTISH}),
    DataClass.SECRET: frozenset({_TEXTISH}),
    DataClass.PHONE: frozenset({_TEXTISH, _NUMERIC}),
    DataClass.NATIONAL_ID: frozenset({_TEXTISH, _NUMERIC}),
    DataClass.PAYMENT_CARD: frozenset({_TEXTISH, _NUMERIC}),
    DataClass.DATE_OF_BIRTH: frozenset({_TEXTISH, _DATE}),
    DataClass.IP_ADDRESS: frozenset({_TEXTISH, _INET, _NUMERIC}),
}
_TYPMOD_RE = re.compile(r"\(.*?\)")


def _type_kind(type_name: str | None) -> tuple[str, str]:
    """(kind, bare type name) of a ``format_type`` spelling; arrays take their element's
    kind; an unknown name (a domain, an extension type) counts as text."""
    if not type_name:
        return _TEXTISH, ""
    bare = _TYPMOD_RE.sub("", type_name.strip().lower()).replace("[]", "").strip()
    bare = bare.rpartition(".")[2] if "." in bare and '"' not in bare else bare
    return _TYPE_KIND.get(bare, _TEXTISH if bare not in _TYPE_KIND else _OTHER), bare


# -- comments -------------------------------------------------------------------------------

_TAG_RE = re.compile(
    r"(?i)\b(?:pii|sensitive|dbsentry|classification|data[_ -]?class)\s*[:=]\s*([a-z][a-z_-]*)"
)
_NONE_WORDS = frozenset({"none", "no", "false", "off", "public", "nonsensitive", "non_sensitive", "not_sensitive"})  # fmt: skip
_COMMENT_WORDS: tuple[tuple[re.Pattern[str], DataClass], ...] = (
    (
        re.compile(
            r"(?i)\b(password|passphrase|api[ _-]?key|secret|access[ _-]?token|private[ _-]?key|credential)s?\b"
        ),
        DataClass.SECRET,
    ),
    (
        re.compile(r"(?i)\b(credit|debit|payment)[ _-]?card\b|\bcard[ _-]?number\b|\bPAN\b"),
        DataClass.PAYMENT_CARD,
    ),
    (
        re.compile(
            r"(?i)\bsocial[ _-]?security\b|\bSSN\b|\bnational[ _-]?(id|identity|insurance)\b|\bpassport\b|\btax[ _-]?id\b"
        ),
        DataClass.NATIONAL_ID,
    ),
    (re.compile(r"(?i)\bIBAN\b|\bbank[ _-]?account\b"), DataClass.IBAN),
    (
        re.compile(r"(?i)\bdate[ _-]?of[ _-]?birth\b|\bbirth[ _-]?date\b|\bDOB\b"),
        DataClass.DATE_OF_BIRTH,
    ),
    (re.compile(r"(?i)\be-?mail[ _-]?address\b|\bemail\b"), DataClass.EMAIL),
    (re.compile(r"(?i)\b(phone|mobile|telephone)[ _-]?(number)?\b"), DataClass.PHONE),
    (
        re.compile(r"(?i)\b(postal|street|home|mailing|billing|shipping)[ _-]?address\b"),
        DataClass.POSTAL_ADDRESS,
    ),
    (
        re.compile(r"(?i)\b(full|first|last|given|family|legal)[ _-]?name\b|\bsurname\b"),
        DataClass.PERSON_NAME,
    ),
    (re.compile(r"(?i)\bIP[ _-]?address\b"), DataClass.IP_ADDRESS),
)

_NO_CLASS = object()


def _comment_tag(comment: str) -> DataClass | object | None:
    """The class a ``pii:<class>`` tag names; ``_NO_CLASS`` for ``pii:none``; None when
    the comment has no tag."""
    m = _TAG_RE.search(comment)
    if m is None:
        return None
    word = m.group(1).lower()
    if word in _NONE_WORDS:
        return _NO_CLASS
    return parse_class(word)


def classify_column(
    table: str, column: str, type_name: str | None = None, comment: str | None = None
) -> Classification | None:
    """The data class of a column from its schema, or None.

    ``table`` may be schema-qualified; ``type_name`` is ``format_type()`` output (or None);
    ``comment`` is the column's comment.  In order: a ``pii:<class>`` tag in the comment
    (a ``pii:none`` tag is ignored: a comment may add a class, never remove one; only
    the policy's ``masking.overrides`` can), the column's name
    (as long as its type can hold that class: ``email_verified boolean`` is not an email),
    the type (``inet``/``cidr``, or a domain named like a class), then words in the comment.
    """
    found = _classify_column(table, column, type_name, comment)
    if found is not None and comment and _comment_tag(comment) is _NO_CLASS:
        # Only the policy file may declassify: a comment is written by whoever owns the
        # table, so "pii:none" in it cannot take away a class the name or type gives.
        return Classification(
            found.data_class,
            found.source,
            f"{found.evidence}; {IGNORED_NONE_NOTE}",
        )
    return found


#: What the evidence says when a comment's ``pii:none`` did not declassify a column.
IGNORED_NONE_NOTE = "the comment's 'none' tag is ignored (only masking.overrides can remove a class)"


def comment_says_none(comment: str | None) -> bool:
    """Whether the comment carries a ``pii:none`` tag (which no longer declassifies)."""
    return bool(comment) and _comment_tag(comment or "") is _NO_CLASS


def _classify_column(
    table: str, column: str, type_name: str | None, comment: str | None
) -> Classification | None:
    kind, bare_type = _type_kind(type_name)
    if comment:
        tag = _comment_tag(comment)
        if isinstance(tag, DataClass):
            return Classification(tag, "schema-comment", comment.strip()[:200])
    if kind != _BOOL:
        tokens = _tokens(column)
        table_tokens = _tokens(table.rpartition(".")[2])
        found = _by_name(table_tokens, tokens) if tokens else None
        negative = bool(tokens) and (
            tokens[0] in _NEG_FIRST or (len(tokens) > 1 and tokens[-1] in _NEG_LAST)
        )
        if negative and found is DataClass.NATIONAL_ID and tokens[-1] == "id":
            negative = False  # national_id, tax_id: the id is the value
        if found is not None and not negative and kind in _ALLOWED_KINDS[found]:
            return Classification(found, "schema-name", f"column name {column!r}")
        if kind == _INET:
            return Classification(DataClass.IP_ADDRESS, "schema-type", f"type {bare_type}")
        if bare_type and bare_type not in _TYPE_KIND:
            found = _by_name([], _tokens(bare_type))
            if found is not None:
                return Classification(found, "schema-type", f"type {bare_type}")
        if comment:
            for pattern, cls in _COMMENT_WORDS:
                m = pattern.search(comment)
                if m and kind in _ALLOWED_KINDS[cls]:
                    return Classification(cls, "schema-comment", f"comment mentions {m.group()!r}")
    return None

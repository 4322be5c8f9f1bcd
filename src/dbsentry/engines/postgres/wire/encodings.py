"""PostgreSQL's client encodings, and the Python codec that reads each one.

A session's text (SQL, names, error fields, result values) travels in its
``client_encoding``.  The proxy forwards the client's bytes unchanged, but reads them for
governance in that encoding, as the server will: the structure of a statement (quotes,
backslashes, semicolons, comments) depends on it for encodings whose second bytes can look
like ASCII (SJIS, BIG5, GBK, UHC, GB18030, JOHAB).

Names are matched as PostgreSQL matches them (``pg_char_to_encoding``): case-insensitive,
ignoring everything but letters and digits, with its aliases (``Unicode``, ``WIN1252``,
``ISO-8859-15``, ``ShiftJIS``...).
"""

from __future__ import annotations

import codecs
import re
from typing import Any, cast

UTF8 = "UTF8"

#: PostgreSQL encoding -> the Python codec that reads it the way the server does; None for
#: the two Python has no codec for (ASCII text is read; other bytes are refused).
CODECS: dict[str, str | None] = {
    "UTF8": "utf-8",
    "SQL_ASCII": "utf-8",  # not converted; the server checks it against its own encoding
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "EUC_JP": "euc_jp",
    "EUC_JIS_2004": "euc_jis_2004",
    "EUC_CN": "gb2312",
    "EUC_KR": "euc_kr",
    "EUC_TW": None,
    "MULE_INTERNAL": None,
    "SJIS": "cp932",
    "SHIFT_JIS_2004": "dbsentry-shift-jis-2004",  # see _sjis2004 below
    "BIG5": "cp950",
    "GBK": "gbk",
    "GB18030": "gb18030",
    "UHC": "cp949",
    "JOHAB": "johab",
}

#: What a statement's bytes may mean if the encoding changed before the server reads
#: them: UTF-8, Latin-1 (standing for every encoding where ASCII is ASCII: they differ from
#: one another only in characters above it) and each encoding whose second bytes may look
#: like ASCII.
ALTERNATIVES = ("utf-8", "latin-1", "cp932", "dbsentry-shift-jis-2004", "cp950", "gbk", "gb18030", "cp949", "johab")

#: Encodings in which a byte below 0x80 may be the second byte of a character: reading
#: them byte-wise (or in another encoding) would see quotes and backslashes that are not.
NOT_ASCII_SAFE = frozenset({"SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "GB18030", "UHC", "JOHAB"})

# pg_char_to_encoding's table (src/common/encnames.c), as cleaned names.
_ALIASES = {
    "abc": "WIN1258",
    "alt": "WIN866",
    "big5": "BIG5",
    "euccn": "EUC_CN",
    "eucjis2004": "EUC_JIS_2004",
    "eucjp": "EUC_JP",
    "euckr": "EUC_KR",
    "euctw": "EUC_TW",
    "gb18030": "GB18030",
    "gbk": "GBK",
    "iso88591": "LATIN1",
    "iso885910": "LATIN6",
    "iso885913": "LATIN7",
    "iso885914": "LATIN8",
    "iso885915": "LATIN9",
    "iso885916": "LATIN10",
    "iso88592": "LATIN2",
    "iso88593": "LATIN3",
    "iso88594": "LATIN4",
    "iso88595": "ISO_8859_5",
    "iso88596": "ISO_8859_6",
    "iso88597": "ISO_8859_7",
    "iso88598": "ISO_8859_8",
    "iso88599": "LATIN5",
    "johab": "JOHAB",
    "koi8": "KOI8R",
    "koi8r": "KOI8R",
    "koi8u": "KOI8U",
    "latin1": "LATIN1",
    "latin10": "LATIN10",
    "latin2": "LATIN2",
    "latin3": "LATIN3",
    "latin4": "LATIN4",
    "latin5": "LATIN5",
    "latin6": "LATIN6",
    "latin7": "LATIN7",
    "latin8": "LATIN8",
    "latin9": "LATIN9",
    "mskanji": "SJIS",
    "muleinternal": "MULE_INTERNAL",
    "shiftjis": "SJIS",
    "shiftjis2004": "SHIFT_JIS_2004",
    "sjis": "SJIS",
    "sqlascii": "SQL_ASCII",
    "tcvn": "WIN1258",
    "tcvn5712": "WIN1258",
    "uhc": "UHC",
    "unicode": "UTF8",
    "utf8": "UTF8",
    "vscii": "WIN1258",
    "win": "WIN1251",
    "win1250": "WIN1250",
    "win1251": "WIN1251",
    "win1252": "WIN1252",
    "win1253": "WIN1253",
    "win1254": "WIN1254",
    "win1255": "WIN1255",
    "win1256": "WIN1256",
    "win1257": "WIN1257",
    "win1258": "WIN1258",
    "win866": "WIN866",
    "win874": "WIN874",
    "win932": "SJIS",
    "win936": "GBK",
    "win949": "UHC",
    "win950": "BIG5",
    "windows1250": "WIN1250",
    "windows1251": "WIN1251",
    "windows1252": "WIN1252",
    "windows1253": "WIN1253",
    "windows1254": "WIN1254",
    "windows1255": "WIN1255",
    "windows1256": "WIN1256",
    "windows1257": "WIN1257",
    "windows1258": "WIN1258",
    "windows866": "WIN866",
    "windows874": "WIN874",
    "windows932": "SJIS",
    "windows936": "GBK",
    "windows949": "UHC",
    "windows950": "BIG5",
}

_NOT_ALNUM = re.compile(r"[^a-z0-9]")


def canonical(name: str) -> str | None:
    """PostgreSQL's own name for the encoding ``name`` names, or None if it names none."""
    return _ALIASES.get(_NOT_ALNUM.sub("", name.lower()))


def codec_for(client_encoding: str, server_encoding: str = UTF8) -> str | None:
    """The Python codec to read text of a session whose ``client_encoding`` is as the
    server reports it; None when only ASCII can be read (EUC_TW, MULE_INTERNAL)."""
    name = canonical(client_encoding) or client_encoding.upper()
    if name == "SQL_ASCII":
        # No conversion: the server checks the bytes against its own encoding, or takes
        # any bytes when that is SQL_ASCII too (read as Latin-1: ASCII is ASCII).
        server = canonical(server_encoding) or server_encoding.upper()
        return "latin-1" if server == "SQL_ASCII" else CODECS.get(server, "utf-8")
    if name not in CODECS:
        return None
    return CODECS[name]


def ascii_safe(client_encoding: str) -> bool:
    """Whether every byte below 0x80 is the ASCII character it looks like."""
    return (canonical(client_encoding) or client_encoding.upper()) not in NOT_ASCII_SAFE


# Python's shift_jis_2004 reads the single bytes 0x5C and 0x7E as YEN SIGN and OVERLINE;
# PostgreSQL reads them as the backslash and the tilde they are in ASCII (and its parser
# acts on them), so this codec does too.  No two-byte character of the encoding reads as
# either sign, so the translation is exact.
_FROM_SJIS2004 = str.maketrans({"\u00a5": "\\", "\u203e": "~"})
_TO_SJIS2004 = str.maketrans({"\\": "\u00a5", "~": "\u203e"})
_SJIS2004 = codecs.lookup("shift_jis_2004")


def _sjis2004_decode(data: bytes, errors: str = "strict", /) -> tuple[str, int]:
    text, n = _SJIS2004.decode(bytes(data), errors)
    return text.translate(_FROM_SJIS2004), n


def _sjis2004_encode(text: str, errors: str = "strict", /) -> tuple[bytes, int]:
    data, _ = _SJIS2004.encode(text.translate(_TO_SJIS2004), errors)
    return data, len(text)


def _search(name: str) -> codecs.CodecInfo | None:
    if name.replace("_", "-") != "dbsentry-shift-jis-2004":
        return None
    return codecs.CodecInfo(_sjis2004_encode, cast(Any, _sjis2004_decode), name="dbsentry-shift-jis-2004")


codecs.register(_search)

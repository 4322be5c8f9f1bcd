"""Character sets by collation id: which charset a handshake's or a column's collation id
names, and the Python codec that reads it.

SQL text and string values stay ``bytes`` in the codec; the session reads them with the
connection's charset (the handshake's collation id, then ``SET NAMES`` as session tracking
reports it). Ids are MariaDB's (10.11, read from ``information_schema.collations``) and
MySQL 8's where MariaDB has none (76, 248-250 and the utf8mb4 ``_0900`` collations 255-323);
the two servers do not give one id different charsets.

Some multi-byte charsets (big5, cp932, gbk, sjis, gb18030) have characters whose second
byte is 0x5C, a backslash in ASCII: SQL read in the wrong charset can hide a quote behind it
(the classic GBK injection), so :attr:`Charset.backslash_safe` says which are safe to
analyse byte-wise. ucs2, utf16, utf16le and utf32 cannot be a client charset at all.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

__all__ = ["Charset", "charset"]


@dataclass(frozen=True, slots=True)
class Charset:
    name: str
    codec: str | None  # None: no Python codec (binary, or a charset Python lacks)
    backslash_safe: bool = True
    client_ok: bool = True  # may be character_set_client


_CODECS: dict[str, str | None] = {
    "armscii8": None, "ascii": "ascii", "big5": "big5", "binary": None, "cp1250": "cp1250",
    "cp1251": "cp1251", "cp1256": "cp1256", "cp1257": "cp1257", "cp850": "cp850", "cp852": "cp852",
    "cp866": "cp866", "cp932": "cp932", "dec8": None, "eucjpms": "euc_jp", "euckr": "euc_kr",
    "gb18030": "gb18030", "gb2312": "gb2312", "gbk": "gbk", "geostd8": None, "greek": "iso8859_7",
    "hebrew": "iso8859_8", "hp8": None, "keybcs2": None, "koi8r": "koi8_r", "koi8u": "koi8_u",
    # MySQL's latin1 is cp1252 (five bytes it leaves undefined fail to decode: fail closed).
    "latin1": "cp1252", "latin2": "iso8859_2", "latin5": "iso8859_9", "latin7": "iso8859_13",
    "macce": "mac_latin2", "macroman": "mac_roman", "sjis": "shift_jis", "swe7": None,
    "tis620": "tis_620", "ucs2": "utf-16-be", "ujis": "euc_jp", "utf16": "utf-16-be",
    "utf16le": "utf-16-le", "utf32": "utf-32-be", "utf8mb3": "utf-8", "utf8mb4": "utf-8",
}  # fmt: skip
_BACKSLASH_UNSAFE = frozenset({"big5", "cp932", "gbk", "sjis", "gb18030"})
_NOT_CLIENT = frozenset({"ucs2", "utf16", "utf16le", "utf32"})

# (first id, last id, charset), sorted by first id.
_RANGES: tuple[tuple[int, int, str], ...] = (
    (1, 1, "big5"), (2, 2, "latin2"), (3, 3, "dec8"), (4, 4, "cp850"), (5, 5, "latin1"),
    (6, 6, "hp8"), (7, 7, "koi8r"), (8, 8, "latin1"), (9, 9, "latin2"), (10, 10, "swe7"),
    (11, 11, "ascii"), (12, 12, "ujis"), (13, 13, "sjis"), (14, 14, "cp1251"), (15, 15, "latin1"),
    (16, 16, "hebrew"), (18, 18, "tis620"), (19, 19, "euckr"), (20, 20, "latin7"),
    (21, 21, "latin2"), (22, 22, "koi8u"), (23, 23, "cp1251"), (24, 24, "gb2312"),
    (25, 25, "greek"), (26, 26, "cp1250"), (27, 27, "latin2"), (28, 28, "gbk"), (29, 29, "cp1257"),
    (30, 30, "latin5"), (31, 31, "latin1"), (32, 32, "armscii8"), (33, 33, "utf8mb3"),
    (34, 34, "cp1250"), (35, 35, "ucs2"), (36, 36, "cp866"), (37, 37, "keybcs2"),
    (38, 38, "macce"), (39, 39, "macroman"), (40, 40, "cp852"), (41, 42, "latin7"),
    (43, 43, "macce"), (44, 44, "cp1250"), (45, 46, "utf8mb4"), (47, 49, "latin1"),
    (50, 52, "cp1251"), (53, 53, "macroman"), (54, 55, "utf16"), (56, 56, "utf16le"),
    (57, 57, "cp1256"), (58, 59, "cp1257"), (60, 61, "utf32"), (62, 62, "utf16le"),
    (63, 63, "binary"), (64, 64, "armscii8"), (65, 65, "ascii"), (66, 66, "cp1250"),
    (67, 67, "cp1256"), (68, 68, "cp866"), (69, 69, "dec8"), (70, 70, "greek"), (71, 71, "hebrew"),
    (72, 72, "hp8"), (73, 73, "keybcs2"), (74, 74, "koi8r"), (75, 75, "koi8u"), (77, 77, "latin2"),
    (78, 78, "latin5"), (79, 79, "latin7"), (80, 80, "cp850"), (81, 81, "cp852"), (82, 82, "swe7"),
    (83, 83, "utf8mb3"), (84, 84, "big5"), (85, 85, "euckr"), (86, 86, "gb2312"), (87, 87, "gbk"),
    (88, 88, "sjis"), (89, 89, "tis620"), (90, 90, "ucs2"), (91, 91, "ujis"), (92, 93, "geostd8"),
    (94, 94, "latin1"), (95, 96, "cp932"), (97, 98, "eucjpms"), (99, 99, "cp1250"),
    (101, 124, "utf16"), (128, 151, "ucs2"), (159, 159, "ucs2"), (160, 183, "utf32"),
    (192, 215, "utf8mb3"), (223, 223, "utf8mb3"), (224, 247, "utf8mb4"), (576, 578, "utf8mb3"),
    (608, 610, "utf8mb4"), (640, 642, "ucs2"), (672, 674, "utf16"), (736, 738, "utf32"),
    (1025, 1025, "big5"), (1027, 1027, "dec8"), (1028, 1028, "cp850"), (1030, 1030, "hp8"),
    (1031, 1031, "koi8r"), (1032, 1032, "latin1"), (1033, 1033, "latin2"), (1034, 1034, "swe7"),
    (1035, 1035, "ascii"), (1036, 1036, "ujis"), (1037, 1037, "sjis"), (1040, 1040, "hebrew"),
    (1042, 1042, "tis620"), (1043, 1043, "euckr"), (1046, 1046, "koi8u"), (1048, 1048, "gb2312"),
    (1049, 1049, "greek"), (1050, 1050, "cp1250"), (1052, 1052, "gbk"), (1054, 1054, "latin5"),
    (1056, 1056, "armscii8"), (1057, 1057, "utf8mb3"), (1059, 1059, "ucs2"), (1060, 1060, "cp866"),
    (1061, 1061, "keybcs2"), (1062, 1062, "macce"), (1063, 1063, "macroman"),
    (1064, 1064, "cp852"), (1065, 1065, "latin7"), (1067, 1067, "macce"), (1069, 1070, "utf8mb4"),
    (1071, 1071, "latin1"), (1074, 1075, "cp1251"), (1077, 1077, "macroman"),
    (1078, 1079, "utf16"), (1080, 1080, "utf16le"), (1081, 1081, "cp1256"), (1082, 1083, "cp1257"),
    (1084, 1085, "utf32"), (1086, 1086, "utf16le"), (1088, 1088, "armscii8"),
    (1089, 1089, "ascii"), (1090, 1090, "cp1250"), (1091, 1091, "cp1256"), (1092, 1092, "cp866"),
    (1093, 1093, "dec8"), (1094, 1094, "greek"), (1095, 1095, "hebrew"), (1096, 1096, "hp8"),
    (1097, 1097, "keybcs2"), (1098, 1098, "koi8r"), (1099, 1099, "koi8u"), (1101, 1101, "latin2"),
    (1102, 1102, "latin5"), (1103, 1103, "latin7"), (1104, 1104, "cp850"), (1105, 1105, "cp852"),
    (1106, 1106, "swe7"), (1107, 1107, "utf8mb3"), (1108, 1108, "big5"), (1109, 1109, "euckr"),
    (1110, 1110, "gb2312"), (1111, 1111, "gbk"), (1112, 1112, "sjis"), (1113, 1113, "tis620"),
    (1114, 1114, "ucs2"), (1115, 1115, "ujis"), (1116, 1117, "geostd8"), (1119, 1120, "cp932"),
    (1121, 1122, "eucjpms"), (1125, 1125, "utf16"), (1147, 1147, "utf16"), (1152, 1152, "ucs2"),
    (1174, 1174, "ucs2"), (1184, 1184, "utf32"), (1206, 1206, "utf32"), (1216, 1216, "utf8mb3"),
    (1238, 1238, "utf8mb3"), (1248, 1248, "utf8mb4"), (1270, 1270, "utf8mb4"),
    # MySQL 8 only:
    (76, 76, "utf8mb3"), (248, 250, "gb18030"), (255, 323, "utf8mb4"),
)  # fmt: skip
_SORTED = tuple(sorted(_RANGES))
_STARTS = tuple(first for first, _, _ in _SORTED)

def _make(name: str) -> Charset:
    return Charset(name, _CODECS.get(name), name not in _BACKSLASH_UNSAFE, name not in _NOT_CLIENT)


_BY_NAME = {name: _make(name) for _, _, name in _RANGES}


def charset(collation_id: int) -> Charset | None:
    """The charset of a collation id; None for an id no server defines."""
    i = bisect_right(_STARTS, collation_id) - 1
    if i < 0:
        return None
    first, last, name = _SORTED[i]
    return _BY_NAME[name] if first <= collation_id <= last else None

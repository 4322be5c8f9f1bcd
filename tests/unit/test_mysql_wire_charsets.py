"""engines/mysql/wire/charsets: collation ids to charsets and Python codecs."""

from __future__ import annotations

import codecs

import pytest

from dbsentry.engines.mysql.wire.charsets import _SORTED, charset


@pytest.mark.parametrize(
    ("collation_id", "name", "codec"),
    [
        (33, "utf8mb3", "utf-8"),  # utf8mb3_general_ci
        (45, "utf8mb4", "utf-8"),  # MariaDB's default client collation
        (255, "utf8mb4", "utf-8"),  # MySQL 8's utf8mb4_0900_ai_ci
        (224, "utf8mb4", "utf-8"),
        (8, "latin1", "cp1252"),
        (63, "binary", None),
        (28, "gbk", "gbk"),
        (1270, "utf8mb4", "utf-8"),
    ],
)
def test_known_ids(collation_id: int, name: str, codec: str | None) -> None:
    cs = charset(collation_id)
    assert cs is not None
    assert (cs.name, cs.codec) == (name, codec)


def test_unknown_ids() -> None:
    assert charset(0) is None
    assert charset(17) is None
    assert charset(5000) is None


def test_ranges_do_not_overlap_and_codecs_exist() -> None:
    last = 0
    for first, end, _ in _SORTED:
        assert first > last and end >= first
        last = end
        cs = charset(first)
        assert cs is not None
        if cs.codec:
            codecs.lookup(cs.codec)


def test_backslash_unsafe_and_non_client_charsets() -> None:
    unsafe = {cs.name for first, _, _ in _SORTED if (cs := charset(first)) and not cs.backslash_safe}
    assert unsafe == {"big5", "cp932", "gbk", "sjis", "gb18030"}
    not_client = {cs.name for first, _, _ in _SORTED if (cs := charset(first)) and not cs.client_ok}
    assert not_client == {"ucs2", "utf16", "utf16le", "utf32"}

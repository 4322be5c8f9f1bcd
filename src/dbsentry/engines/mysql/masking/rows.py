"""Rewriting MySQL/MariaDB result rows: a plan bound to a result set's column definitions
(:class:`MysqlRowMasker`) masks text-protocol rows (length-encoded strings, ``0xFB`` for
NULL) and binary-protocol rows (a ``0x00`` header, the NULL bitmap at offset 2, the values
in their binary form) packet payload by packet payload.

Only masked columns are decoded into values; every other value is copied byte for byte,
and a row in which nothing changed is returned as the same bytes.  A payload that does not
add up (a length past the end, bytes left over, a bad header) raises
:class:`~dbsentry.errors.ProtocolError`: the session ends rather than forward a row it could
not read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dbsentry.engines.mysql.masking.plan import MysqlMaskPlan
from dbsentry.engines.mysql.masking.values import ValueMasker, kind_of
from dbsentry.engines.mysql.wire import primitives as p
from dbsentry.engines.mysql.wire.results import ColumnDefinition
from dbsentry.engines.mysql.wire.values import (
    Value,
    decode_binary_value,
    encode_binary_value,
    is_null,
    null_bitmap,
    read_null_bitmap,
)
from dbsentry.errors import ProtocolError
from dbsentry.masking.catalog import ClassMap, SourceColumn
from dbsentry.masking.classes import DataClass
from dbsentry.masking.plans import ColumnMask, MaskSettings
from dbsentry.masking.strategies import SAFETY_NET_CLASSES

__all__ = ["MysqlRowMasker"]

_SCANNED_KINDS = frozenset({"string", "json"})


class MysqlRowMasker:
    """A mask plan bound to one result set.

    ``columns``: the result's column definitions (from the server, unchanged: they are
    forwarded as they came, see :mod:`~dbsentry.engines.mysql.masking.values`).  ``key``:
    the proxy's hash key.  ``safety_net``: value-scan every string and JSON column that
    nothing else masks (docs/masking.md "The safety net").  ``classmap``: a column whose
    definition names a classified table column (``schema``, ``org_table``, ``org_name``)
    is masked by that class even if lineage missed it.

    When the plan's positions are exact but its width is not the result's (a table
    altered since the catalog was read), every column is value-scanned."""

    __slots__ = ("_last", "_maskers", "_types", "columns", "masks")

    def __init__(
        self,
        plan: MysqlMaskPlan,
        columns: Sequence[ColumnDefinition],
        *,
        key: bytes = b"",
        settings: MaskSettings | None = None,
        safety_net: bool = False,
        classmap: ClassMap | None = None,
    ) -> None:
        settings = settings or MaskSettings()
        n = len(columns)
        self.columns = tuple(columns)
        masks: list[ColumnMask | None]
        if plan.exact and plan.columns and len(plan.columns) != n:
            masks = [ColumnMask(i, None, "detect", frozenset(), "unresolved") for i in range(n)]
        else:
            masks = [
                plan.columns[i] if i < len(plan.columns) else plan.rest for i in range(n)
            ]
        for i, col in enumerate(columns):
            m = masks[i]
            if classmap is not None and col.org_name and col.org_table:
                src = SourceColumn(col.schema, col.org_table, col.org_name)
                found = classmap.columns.get(src)
                if found is not None and (m is None or m.data_class is None):
                    strategy = settings.strategy_for(found.data_class, (src,))
                    masks[i] = ColumnMask(i, found.data_class, strategy, frozenset({src}), "row-description")
                    continue
            if m is None and safety_net and kind_of(col) in _SCANNED_KINDS:
                masks[i] = ColumnMask(i, None, "detect", frozenset(), "safety-net")
        self.masks = tuple(masks)
        strategies: Mapping[DataClass, str] = settings.strategies
        self._maskers: tuple[ValueMasker | None, ...] = tuple(
            None
            if m is None
            else ValueMasker(
                col,
                m.data_class,
                m.strategy,
                key=key,
                strategies=strategies,
                classes=SAFETY_NET_CLASSES if m.reason == "safety-net" else None,
            )
            for m, col in zip(self.masks, columns, strict=True)
        )
        self._types = tuple((col.type, col.unsigned) for col in columns)
        self._last = max((i for i, m in enumerate(self._maskers) if m is not None), default=-1)

    @property
    def active(self) -> bool:
        """Whether any column is masked (else rows can be forwarded untouched)."""
        return any(m is not None for m in self._maskers)

    @property
    def data_classes(self) -> frozenset[DataClass]:
        return frozenset(m.data_class for m in self.masks if m is not None and m.data_class is not None)

    def text_row(self, payload: bytes) -> bytes:
        """A text-protocol row, masked.  Values are read up to the last masked column; the
        rest of the row is copied as it came."""
        maskers = self._maskers
        last = self._last
        end = len(payload)
        pos = 0
        parts: list[bytes] = []
        copied = 0  # payload[:copied] is in parts
        for i, m in enumerate(maskers):
            if i > last:
                break
            if pos >= end:
                raise ProtocolError("text row: a value past the end of the packet")
            head = payload[pos]
            if head == 0xFB:
                pos += 1
                continue
            if head < 0xFB:
                start, size = pos + 1, head
            elif head == 0xFC:
                start, size = pos + 3, int.from_bytes(payload[pos + 1 : pos + 3], "little")
            elif head == 0xFD:
                start, size = pos + 4, int.from_bytes(payload[pos + 1 : pos + 4], "little")
            elif head == 0xFE:
                start, size = pos + 9, int.from_bytes(payload[pos + 1 : pos + 9], "little")
            else:
                raise ProtocolError("text row: invalid length-encoded value")
            stop = start + size
            if start > end or stop > end:
                raise ProtocolError("text row: a value past the end of the packet")
            if m is not None:
                raw = payload[start:stop]
                out = m.text(raw)
                if out is not raw:
                    parts.append(payload[copied:pos])
                    parts.append(b"\xfb" if out is None else p.lenenc_bytes(out))
                    copied = stop
            pos = stop
        if last == len(maskers) - 1 and pos != end:
            raise ProtocolError("text row: bytes after the last value")
        if not parts:
            return payload
        parts.append(payload[copied:])
        return b"".join(parts)

    def binary_row(self, payload: bytes) -> bytes:
        """A binary-protocol row, masked.  Values are read up to the last masked column;
        the rest of the row is copied as it came."""
        maskers = self._maskers
        types = self._types
        n = len(types)
        last = self._last
        r = p.Reader(payload)
        if r.int1() != 0x00:
            raise ProtocolError("binary row without its 0x00 header")
        bitmap = read_null_bitmap(r, n, 2)
        spans: list[tuple[int, int] | None] = []
        new: dict[int, Value] = {}
        for i, (type_, unsigned) in enumerate(types):
            if i > last:
                break
            if is_null(bitmap, i, 2):
                spans.append(None)
                continue
            start = r.pos
            try:
                value = decode_binary_value(r, type_, unsigned)
            except ProtocolError:
                raise
            except Exception as err:  # an unknown type: the codec says so
                raise ProtocolError(f"binary row: {err}") from None
            spans.append((start, r.pos))
            m = maskers[i]
            if m is not None:
                out = m.binary(value)
                if out is not value:
                    new[i] = out
        if last == n - 1:
            r.done("binary row")
        if not new:
            return payload
        nulls = [
            (new[i] is None) if i in new else is_null(bitmap, i, 2) for i in range(n)
        ]
        parts = [b"\x00", null_bitmap(nulls, 2)]
        for i, (type_, unsigned) in enumerate(types[: last + 1]):
            if i in new:
                v = new[i]
                if v is not None:
                    parts.append(encode_binary_value(type_, unsigned, v))
                continue
            span = spans[i]
            if span is not None:
                parts.append(payload[span[0] : span[1]])
        parts.append(payload[r.pos :])
        return b"".join(parts)

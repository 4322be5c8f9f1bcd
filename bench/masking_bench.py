"""Cost of masking: rewriting DataRows, value scanning, and lineage + plan per statement.

    python bench/masking_bench.py [--rows N]

Prints rows per second and microseconds per row (or per statement) for each case.  The
``batch`` cases mask 600-row chunks of DataRow / COPY text frames the way the proxy does
(``mask_data_rows``, ``CopyMasker.mask_frames``), with the C extension when it is built
and with the Python loops it replaces.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from dbsentry.engines.postgres.masking import rows
from dbsentry.engines.postgres.masking.lineage import (
    ColumnMask,
    CopyOptions,
    MaskPlan,
    analyze_lineage,
    plan_masks,
)
from dbsentry.engines.postgres.masking.rows import (
    Field,
    RowMasker,
    compile_copy_masker,
    compile_row_masker,
    encode_data_row,
    mask_data_row,
)
from dbsentry.engines.postgres.wire import codec
from dbsentry.masking.catalog import Catalog, SourceColumn, classify_catalog
from dbsentry.masking.classes import DataClass

KEY = b"bench-key"
SRC = frozenset({SourceColumn("public", "customers", "x")})

# A 10-column row like ``SELECT * FROM customers``: 3 sensitive columns in the middle.
ROW = [
    b"123456",
    b"Ada",
    b"Lovelace",
    b"ada.lovelace@example.com",
    b"+1 (415) 555-0132",
    b"123-45-6789",
    b"2024-01-15 10:11:12+00",
    b"true",
    b"some free text about the customer, nothing sensitive in here at all",
    b"42.50",
]
FIELDS = [
    Field(f"c{i}", 0, 0, oid, -1, -1, 0)
    for i, oid in enumerate((23, 25, 25, 25, 25, 25, 1184, 16, 25, 1700))
]


def _plan(strategy: str) -> MaskPlan:
    cols: list[ColumnMask | None] = [None] * len(ROW)
    cols[3] = ColumnMask(3, DataClass.EMAIL, strategy, SRC, "lineage")
    cols[4] = ColumnMask(4, DataClass.PHONE, strategy, SRC, "lineage")
    cols[5] = ColumnMask(5, DataClass.NATIONAL_ID, strategy, SRC, "lineage")
    return MaskPlan(tuple(cols))


def _detect_plan() -> MaskPlan:
    return MaskPlan(
        tuple(ColumnMask(i, None, "detect", SRC, "unresolved") for i in range(len(ROW))), True
    )


def _rate(label: str, fn: Callable[[], object], n: int, per: int = 1) -> None:
    """``per``: rows done by one call of ``fn``."""
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter() - start
    rows_done = n * per
    print(f"{label:<44} {rows_done / elapsed:>12,.0f} /s {elapsed / rows_done * 1e6:>9.2f} us")


def _masker(plan: MaskPlan, safety_net: bool = False) -> RowMasker:
    m = compile_row_masker(plan, FIELDS, key=KEY, safety_net=safety_net)
    assert m is not None
    return m


def _catalog() -> Catalog:
    cols = [
        ("id", 23, "integer"),
        ("first_name", 25, "text"),
        ("email", 25, "text"),
        ("phone", 25, "text"),
        ("ssn", 25, "text"),
    ]
    rows = [
        (100, "public", "customers", "r", i + 1, c, t, tn, -1, None)
        for i, (c, t, tn) in enumerate(cols)
    ]
    rows += [
        (101, "public", "orders", "r", 1, "customer_id", 23, "integer", -1, None),
        (101, "public", "orders", "r", 2, "total", 1700, "numeric", -1, None),
    ]
    views = [(102, " SELECT customers.id, customers.email FROM customers;")]
    rows += [
        (102, "public", "v", "v", 1, "id", 23, "integer", -1, None),
        (102, "public", "v", "v", 2, "email", 25, "text", -1, None),
    ]
    return Catalog.from_rows(rows, views, [], ("public",))


def _forget(m: RowMasker) -> None:
    """Empty the value caches (the same chunk is masked again and again)."""
    for op in m.plan:
        if op is not None and op[0] in (rows.OP_CALL, rows.OP_SCAN):
            op[2].clear()  # type: ignore[attr-defined]


def _batch(n: int) -> None:
    """Chunks of 600 frames, as a server sends them, masked in one call per chunk."""
    chunk = 600

    def row(i: int) -> list[bytes]:
        # distinct values, so that the value cache (a hit per repeated value) does not help
        return [
            *ROW[:3],
            f"ada.lovelace{i}@example.com".encode(),
            f"+1 (415) 555-{i:04d}".encode(),
            f"123-{i % 100:02d}-{i:04d}".encode(),
            *ROW[6:],
        ]

    row_frames = b"".join(codec.frame(b"D", encode_data_row(row(i))) for i in range(chunk))
    copy_frames = b"".join(codec.frame(b"d", b"\t".join(row(i)) + b"\n") for i in range(chunk))
    loops = [("python", None)]
    if rows._fastmask is not None:
        loops.insert(0, ("C", rows._fastmask))
    reps = max(1, n // chunk)
    for strategy in ("partial", "redact", "hash"):
        m = _masker(_plan(strategy))
        for name, ext in loops:
            if ext is None:

                def run(m: RowMasker = m) -> object:
                    _forget(m)
                    return rows._py_mask_data_rows(row_frames, 0, m.width, m.plan)
            else:

                def run(m: RowMasker = m, ext: object = ext) -> object:
                    _forget(m)
                    return ext.mask_data_rows(row_frames, 0, m.width, m.plan)  # type: ignore[attr-defined]

            _rate(f"batch DataRow, 3 columns, {strategy} ({name})", run, reps, per=chunk)
    # The safety net on the 3 other text columns (names and free text, nothing found)
    net = _masker(_plan("partial"), safety_net=True)
    only = _masker(MaskPlan(tuple(None for _ in ROW)), safety_net=True)
    for label, m in (("partial + safety net", net), ("safety net only", only)):
        for name, ext in loops:
            if ext is None:

                def run(m: RowMasker = m) -> object:
                    _forget(m)
                    return rows._py_mask_data_rows(row_frames, 0, m.width, m.plan)
            else:

                def run(m: RowMasker = m, ext: object = ext) -> object:
                    _forget(m)
                    return ext.mask_data_rows(row_frames, 0, m.width, m.plan)  # type: ignore[attr-defined]

            _rate(f"batch DataRow, {label} ({name})", run, reps, per=chunk)
    for safety_net in (False, True):
        copy = compile_copy_masker(
            _plan("partial"),
            CopyOptions(type_oids=tuple(f.type_oid for f in FIELDS)),
            key=KEY,
            safety_net=safety_net,
        )
        assert copy is not None
        for name, ext in loops:
            fn = copy.mask_frames if ext is not None else copy._py_mask_frames
            _rate(
                f"batch COPY text, partial{' + safety net' if safety_net else ''} ({name})",
                lambda fn=fn: fn(copy_frames, 0),
                reps,
                per=chunk,
            )
    # The prefilter alone, on values that pass and that do not
    from dbsentry.masking.strategies import may_hold_sensitive

    ordinary = b"some free text about the customer, nothing sensitive in here at all"
    candidate = b"order 2024-01-15 10:11:12, ticket 55512345"
    for label, value in (("ordinary text", ordinary), ("a candidate", candidate)):
        _rate(f"prefilter, {label} (python)", lambda v=value: may_hold_sensitive(v), n)
        if rows._fastmask is not None:
            pf = rows._fastmask.prefilter
            _rate(f"prefilter, {label} (C, with the call)", lambda v=value, pf=pf: pf(v, False), n)
    scan = compile_row_masker(
        MaskPlan((None,)), [Field("t", 0, 0, 25, -1, -1, 0)], key=KEY, safety_net=True
    )
    assert scan is not None and scan.maskers[0] is not None
    _rate(
        "safety net scan of a candidate (python detectors)",
        lambda: scan.maskers[0](candidate),
        max(1, n // 10),
    )  # type: ignore[misc]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    n = args.rows
    body = encode_data_row(ROW)
    print(f"DataRow of {len(ROW)} columns, {len(body)} bytes")
    for strategy in ("redact", "partial", "hash", "null"):
        m = _masker(_plan(strategy))
        _rate(f"mask_data_row, 3 columns, {strategy}", lambda m=m: mask_data_row(body, m), n)
    untouched = encode_data_row([*ROW[:3], None, None, None, *ROW[6:]])
    m = _masker(_plan("partial"))
    _rate("mask_data_row, 3 NULL columns (nothing to do)", lambda: mask_data_row(untouched, m), n)
    d = _masker(_detect_plan())
    _rate(
        "value scan, 10 columns (6 text, 3 hits)", lambda: mask_data_row(body, d), max(1, n // 10)
    )
    clean = encode_data_row([b"123456", b"Ada", b"Lovelace", b"nobody", b"n/a", b"none", *ROW[6:]])
    _rate(
        "value scan, 10 columns (6 text, no hit)", lambda: mask_data_row(clean, d), max(1, n // 10)
    )

    _batch(n)

    catalog = _catalog()
    classmap = classify_catalog(catalog)
    for sql in (
        "SELECT id, email FROM customers WHERE id = $1",
        "SELECT c.*, o.total FROM customers c JOIN orders o ON o.customer_id = c.id",
        "SELECT row_to_json(c) FROM customers c",
        "SELECT email FROM v UNION SELECT ssn FROM customers",
    ):

        def one(sql: str = sql) -> object:
            catalog.cache.clear()
            return plan_masks(analyze_lineage(sql, catalog)[0], classmap)

        _rate(f"lineage+plan: {sql[:30]}", one, max(1, n // 50))


if __name__ == "__main__":
    main()

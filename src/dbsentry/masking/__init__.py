"""Dynamic masking: sensitive data is masked in result rows before it leaves the proxy.

Zero configuration: columns are classified from the upstream schema (names, types,
comments), and each result column is traced back to the source columns it derives from
(lineage), so renaming, casting or wrapping a column does not unmask it.  See
docs/masking.md.
"""

from dbsentry.masking.catalog import (
    Catalog,
    ClassMap,
    SourceColumn,
    classify_catalog,
    fetch_catalog,
)
from dbsentry.masking.classes import Classification, DataClass, most_sensitive
from dbsentry.masking.detect import classify_column, detect_value, find_sensitive
from dbsentry.masking.lineage import (
    ColumnLineage,
    ColumnMask,
    CopyOptions,
    LineageError,
    MaskPlan,
    MaskSettings,
    StatementLineage,
    analyze_lineage,
    lineage_of_tree,
    plan_masks,
)
from dbsentry.masking.pg_values import make_masker
from dbsentry.masking.rows import (
    CopyMasker,
    Field,
    RowMasker,
    UnsupportedCopy,
    compile_copy_masker,
    compile_row_masker,
    decode_data_row,
    decode_row_description,
    encode_data_row,
    encode_row_description,
    mask_data_row,
)
from dbsentry.masking.strategies import DEFAULT_STRATEGIES, PLACEHOLDERS, STRATEGIES, mask_text

__all__ = [
    "DEFAULT_STRATEGIES",
    "PLACEHOLDERS",
    "STRATEGIES",
    "Catalog",
    "ClassMap",
    "Classification",
    "ColumnLineage",
    "ColumnMask",
    "CopyMasker",
    "CopyOptions",
    "DataClass",
    "Field",
    "LineageError",
    "MaskPlan",
    "MaskSettings",
    "RowMasker",
    "SourceColumn",
    "StatementLineage",
    "UnsupportedCopy",
    "analyze_lineage",
    "classify_catalog",
    "classify_column",
    "compile_copy_masker",
    "compile_row_masker",
    "decode_data_row",
    "decode_row_description",
    "detect_value",
    "encode_data_row",
    "encode_row_description",
    "fetch_catalog",
    "find_sensitive",
    "lineage_of_tree",
    "make_masker",
    "mask_data_row",
    "mask_text",
    "most_sensitive",
    "plan_masks",
]

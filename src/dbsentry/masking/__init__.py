"""Dynamic masking: sensitive data is masked in result rows before it leaves the proxy.

Zero configuration: columns are classified from the upstream schema (names, types,
comments) and from sampled values, and each result column is traced back to the source
columns it derives from (lineage), so renaming, casting or wrapping a column does not
unmask it.  See docs/masking.md.

This package is the engine-neutral part: data classes, detectors by name and value,
strategies on text, the catalog model and its classification.  What knows an engine's
SQL or wire format (lineage from the parse tree, masked wire values, row and COPY
rewriting) lives with that engine: ``dbsentry.engines.postgres.masking``.
"""

from dbsentry.masking.catalog import Catalog, ClassMap, SourceColumn, classify_catalog
from dbsentry.masking.classes import Classification, DataClass, most_sensitive
from dbsentry.masking.detect import classify_column, detect_value, find_sensitive
from dbsentry.masking.strategies import DEFAULT_STRATEGIES, PLACEHOLDERS, STRATEGIES, mask_text

__all__ = [
    "DEFAULT_STRATEGIES",
    "PLACEHOLDERS",
    "STRATEGIES",
    "Catalog",
    "ClassMap",
    "Classification",
    "DataClass",
    "SourceColumn",
    "classify_catalog",
    "classify_column",
    "detect_value",
    "find_sensitive",
    "mask_text",
    "most_sensitive",
]

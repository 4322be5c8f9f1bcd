"""PostgreSQL's side of masking: column lineage from PostgreSQL's parse tree, masked wire
values by type OID (text and binary), DataRow and COPY rewriting (with an optional C
extension), notices, errors and parameter reports, and literal redaction for the audit.
The engine-neutral part (data classes, detectors, strategies on text, the catalog model)
is ``dbsentry.masking``."""

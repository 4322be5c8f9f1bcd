"""Classification from values: what a column holds, judged from a sample of its rows.

The proxy reads a bounded sample of every table's text-like, JSON, bytea, numeric, array
and composite columns on its side connection (the SQL is in :mod:`dbsentry.masking.catalog`);
this module is the pure part: sampled values in, a :class:`ValueFinding` per column out.

The rules, in one place:

- A value is judged by the validated detectors of :mod:`dbsentry.masking.detect`:
  :func:`detect_value` for a whole value, :func:`find_sensitive` for values inside longer
  text.  Names, addresses and dates of birth have no structure and are never found here.
- A column gets a class when at least :data:`MIN_SHARE` of its sampled non-null values,
  and at least :data:`MIN_HITS` of them, are that class as a whole ("12/40 sampled values
  are email").  Several classes over the threshold: the most sensitive wins.
- Hits that are chance are not evidence: for classes found in digits and separators
  (cards, national ids, phones, IBANs, IP addresses), when as many sampled values of the
  *same shape* (digits, letters and separators in the same places) fail the class's
  validation as pass it, the column is a column of numbers some of which pass a checksum
  (order numbers, random ids), not a column of cards.  Emails and secrets are never
  chance.
- A column below the threshold whose values hold sensitive data all the same (an email in
  one note out of 200, a card inside a comment) is marked ``scan``: its values are
  value-scanned when read, and only the spans found are masked.
- JSON documents (json, jsonb, and arrays and composites, which the sample reads as
  ``to_jsonb``) are walked: every path (``$.contact.email``, ``$.phones[*]``) is judged by
  its key name, with the same name rules as columns (``ssn``, ``email``...), and by its
  leaf values, with the rules above.  A document column with any classified path gets the
  most sensitive class of its paths, so whatever derives from it (``data->>'ssn'``,
  ``jsonb_each_text``) is masked.
- Composite-typed columns are classified by their fields' names and types from the
  catalog even when the sample is empty.
- Evidence never quotes a value: it gives counts, classes and key names only.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from dbsentry.masking.classes import Classification, DataClass, most_sensitive
from dbsentry.masking.detect import classify_column, detect_value, find_sensitive

__all__ = [
    "MAX_JSON_LEAVES",
    "MAX_VALUE_CHARS",
    "MIN_HITS",
    "MIN_SHARE",
    "SampleKind",
    "SampledColumn",
    "ValueFinding",
    "classify_fields",
    "classify_table_sample",
    "classify_values",
]

#: The share of sampled non-null values that must be of a class for the column to be.
MIN_SHARE = 0.3
#: ... and at least this many of them.
MIN_HITS = 2
#: Longer values are judged on their first characters (the SQL truncates them too).
MAX_VALUE_CHARS = 2048
#: Leaves of one JSON document that are looked at; deeper than this is not walked.
MAX_JSON_LEAVES = 512
MAX_JSON_DEPTH = 16

#: How a column's values were read: as text, as bytes (bytea), as the text of a number,
#: or as a JSON document (json, jsonb, arrays and composites through ``to_jsonb``).
SampleKind = Literal["text", "bytea", "number", "json"]

# Classes a checksum or a format can let random identifiers pass by chance.
_CHANCE_CLASSES = frozenset(
    {
        DataClass.PAYMENT_CARD,
        DataClass.NATIONAL_ID,
        DataClass.PHONE,
        DataClass.IBAN,
        DataClass.IP_ADDRESS,
    }
)
_SHAPE_DIGIT = re.compile(r"[0-9]")
_SHAPE_ALPHA = re.compile(r"[^\W\d_]")


def _shape(value: str) -> str:
    """``4539 1488 0343 6467`` -> ``9999 9999 9999 9999``; letters become ``a``."""
    return _SHAPE_ALPHA.sub("a", _SHAPE_DIGIT.sub("9", value.strip()[:64]))


@dataclass(frozen=True, slots=True)
class ValueFinding:
    """What a column's sampled values say.  ``data_class`` None with ``scan`` True: no
    class, but some values hold sensitive data, so values must be scanned when read."""

    data_class: DataClass | None
    evidence: str
    scan: bool = False

    @property
    def classification(self) -> Classification | None:
        if self.data_class is None:
            return None
        return Classification(self.data_class, "value", self.evidence)


@dataclass(frozen=True, slots=True)
class SampledColumn:
    """A column of a sample query: its name, how its values were read, and for composite
    types the fields (dotted paths for nested composites) with their types."""

    name: str
    kind: SampleKind
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class _Stats:
    """What the sampled values at one place (a column, or a path in its documents) hold."""

    values: int = 0
    hits: Counter[DataClass] = field(default_factory=Counter)
    hit_shapes: dict[DataClass, set[str]] = field(default_factory=dict)
    miss_shapes: Counter[str] = field(default_factory=Counter)
    span_values: int = 0
    span_classes: set[DataClass] = field(default_factory=set)
    leaf_kind: str = ""  # JSON paths: "text", "numeric", "boolean", "document"

    def add(self, text: str, times: int = 1) -> None:
        """Judge a value seen ``times`` times."""
        self.values += times
        text = text[:MAX_VALUE_CHARS]
        found = detect_value(text)
        if found is not None:
            self.hits[found] += times
            self.hit_shapes.setdefault(found, set()).add(_shape(text))
            return
        if len(text) <= 64:
            self.miss_shapes[_shape(text)] += times
        spans = find_sensitive(text, limit=8)
        if spans:
            self.span_values += times
            self.span_classes.update(sp.data_class for sp in spans)

    def chance(self, cls: DataClass) -> int:
        """How many sampled values have the shape of this class's hits yet fail it (0 for
        classes random values cannot pass)."""
        if cls not in _CHANCE_CLASSES:
            return 0
        return sum(self.miss_shapes[s] for s in self.hit_shapes.get(cls, ()))

    def judge(self) -> tuple[list[tuple[DataClass, str]], list[str]]:
        """(classes with evidence, reasons to scan)."""
        classes: list[tuple[DataClass, str]] = []
        scan: list[str] = []
        n = self.values
        for cls, hits in sorted(self.hits.items(), key=lambda kv: (-kv[1], kv[0].value)):
            misses = self.chance(cls)
            if misses >= hits:
                continue  # as many same-shaped values fail: a column of numbers
            if hits >= MIN_HITS and hits >= MIN_SHARE * n:
                classes.append((cls, f"{hits}/{n} sampled values are {cls.value}"))
            else:
                scan.append(f"{hits}/{n} sampled values are {cls.value}")
        if self.span_values:
            kinds = ", ".join(sorted(c.value for c in self.span_classes))
            scan.append(f"{self.span_values}/{n} sampled values contain {kinds}")
        return classes, scan


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)[: MAX_VALUE_CHARS * 4].decode("utf-8", errors="replace")
    return str(value)


class _Key(str):
    """A JSON object's key, judged as a value (maps keyed by email, by card...)."""

    __slots__ = ()


_CONTAINER = object()
# Keys spelled like identifiers name a path; any other key (``"alice@example.com"``, a
# number, a key the detectors recognise) is data: its path says ``*`` so that neither the
# name rules nor the evidence ever see it.
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MAX_PATHS = 256


def _path_key(k: str) -> str | None:
    if _PLAIN_KEY.fullmatch(k) and detect_value(k) is None:
        return k
    return None


def _leaves(doc: Any, path: str = "$", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(path, value) of a JSON document's leaves, of its containers (value
    ``_CONTAINER``, so that a key naming an object is judged too) and of its data keys
    (:class:`_Key`, at ``<path>.*~``)."""
    if isinstance(doc, dict):
        if path != "$":
            yield path, _CONTAINER
        if depth >= MAX_JSON_DEPTH:
            return
        for k, v in doc.items():
            plain = _path_key(k)
            if plain is None:
                yield f"{path}.*~", _Key(k)
            yield from _leaves(v, f"{path}.{plain or '*'}", depth + 1)
    elif isinstance(doc, list):
        if path != "$":
            yield path, _CONTAINER
        if depth >= MAX_JSON_DEPTH:
            return
        for v in doc:
            yield from _leaves(v, f"{path}[*]", depth + 1)
    else:
        yield path, doc


def _last_key(path: str) -> str | None:
    """The key a path ends in (``$.a.b[*]`` -> ``b``); None for ``$``, ``$[*]``, ``*``."""
    while path.endswith("[*]"):
        path = path[:-3]
    key = path.rpartition(".")[2]
    return key if path != "$" and _PLAIN_KEY.fullmatch(key) else None


_LEAF_TYPE = {"text": "text", "numeric": "numeric", "boolean": "boolean", "document": "jsonb"}


def _leaf_kind(value: Any) -> str:
    if value is _CONTAINER:
        return "document"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "numeric"
    return "text"  # strings, and data keys


def _by_key(table: str, key: str, leaf_kind: str) -> Classification | None:
    found = classify_column(table, key, _LEAF_TYPE.get(leaf_kind, "text"), None)
    return found if found is not None and found.source == "schema-name" else None


def _finding(classes: list[tuple[DataClass, str]], scan: list[str]) -> ValueFinding | None:
    if classes:
        best = most_sensitive([c for c, _ in classes])
        assert best is not None
        return ValueFinding(best, _join([e for _, e in classes]))
    if scan:
        return ValueFinding(None, "scan values: " + _join(scan), scan=True)
    return None


def _join(items: list[str], limit: int = 6) -> str:
    if len(items) <= limit:
        return "; ".join(items)
    return "; ".join(items[:limit]) + f"; and {len(items) - limit} more"


def classify_fields(table: str, fields: Iterable[tuple[str, str]]) -> list[tuple[DataClass, str]]:
    """The classes a composite type's fields give by name and type (``(path, type)``;
    nested fields are dotted paths)."""
    out: list[tuple[DataClass, str]] = []
    for path, type_name in fields:
        name = path.rpartition(".")[2]
        found = classify_column(table, name, type_name, None)
        if found is not None and found.source in ("schema-name", "schema-type"):
            out.append(
                (found.data_class, f"field {path!r} ({found.data_class.value}, {found.evidence})")
            )
    return out


def classify_values(
    table: str,
    column: SampledColumn,
    values: Iterable[Any],
) -> ValueFinding | None:
    """Judge one column from its sampled values (None and anything the sample could not
    read count as absent).  ``table`` (schema-qualified or not) is used by the name rules
    of JSON keys, as for columns (a bare ``name`` key in a ``customers`` table).  The
    fields of a composite column are classified from the catalog
    (:func:`classify_fields`, by the caller); here their values are judged."""
    classes: list[tuple[DataClass, str]] = []
    if column.kind != "json":
        stats = _Stats()
        seen: Counter[str] = Counter()
        for v in values:
            text = _text(v)
            if text is not None:
                seen[text] += 1
        for text, times in seen.items():  # status codes and the like repeat: judge once
            stats.add(text, times)
        if not stats.values:
            return _finding(classes, [])
        found, why = stats.judge()
        return _finding(classes + found, why)
    paths: dict[str, _Stats] = {}
    documents = 0
    for v in values:
        text = _text(v)
        if text is None:
            continue
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue  # truncated or not JSON: the SQL leaves out oversized documents
        documents += 1
        for i, (path, leaf) in enumerate(_leaves(doc)):
            if i >= MAX_JSON_LEAVES:
                break
            st = paths.get(path)
            if st is None:
                if len(paths) >= MAX_PATHS:
                    continue
                st = paths[path] = _Stats()
            kind = _leaf_kind(leaf)
            if not st.leaf_kind or st.leaf_kind == "boolean":
                st.leaf_kind = kind
            elif st.leaf_kind != kind and "document" not in (st.leaf_kind, kind):
                st.leaf_kind = "text"  # mixed scalars: as text, the widest
            if leaf is _CONTAINER or leaf is None or isinstance(leaf, bool):
                continue
            if isinstance(leaf, str):
                st.add(leaf)
            elif isinstance(leaf, int) and abs(leaf) >= 10**8:
                st.add(str(leaf))  # cards and national ids stored as JSON numbers
            else:
                st.values += 1
    scan: list[str] = []
    seen_names = {p.rpartition(".")[2] for p, _ in column.fields}
    for path in sorted(paths):
        st = paths[path]
        key = _last_key(path)
        if key is not None and key not in seen_names:
            by_key = _by_key(table, key, st.leaf_kind)
            if by_key is not None:
                classes.append(
                    (by_key.data_class, f"{path}: key name {key!r} ({by_key.data_class.value})")
                )
                continue
        if st.leaf_kind == "document":
            continue
        found, why = st.judge()
        classes.extend((c, f"{path}: {e}") for c, e in found)
        scan.extend(f"{path}: {e}" for e in why)
    if not documents and not classes:
        return None
    return _finding(classes, scan)


def classify_table_sample(
    table: str,
    columns: Sequence[SampledColumn],
    rows: Iterable[Sequence[Any]],
) -> dict[str, ValueFinding]:
    """Judge every column of one table's sample: ``rows`` hold the values of ``columns``
    in order (the shape of :func:`dbsentry.engines.postgres.catalog.sample_sql`'s result)."""
    rows = list(rows)
    out: dict[str, ValueFinding] = {}
    for i, col in enumerate(columns):
        found = classify_values(table, col, (r[i] for r in rows if i < len(r)))
        if found is not None:
            out[col.name] = found
    return out


def merge_findings(findings: Mapping[str, ValueFinding], prefix: str) -> dict[str, ValueFinding]:
    """The findings of a child relation as evidence for its parent (partitions and
    inheritance children: what a query of the parent returns includes their rows)."""
    return {
        name: ValueFinding(f.data_class, f"{prefix}: {f.evidence}", f.scan)
        for name, f in findings.items()
    }

"""``payload_bytes``: the canonical payload of any record, from pre-encoded parts or not.

The contract every store relies on: ``payload_bytes(r)`` is exactly
``orjson.dumps(r.canonical_mapping(), option=orjson.OPT_SORT_KEYS)``, for records made by
their constructors and for records made by a ``RecordTemplate`` (whatever fields it
shares), of every record type.
"""

from __future__ import annotations

import dataclasses
import pickle
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dbsentry.audit.records import (
    ApprovalRecord,
    CompletionRecord,
    RecordTemplate,
    SessionEvent,
    StatementRecord,
    SystemEvent,
    payload_bytes,
)
from dbsentry.audit.store import encode

RECORD_TYPES = (SessionEvent, StatementRecord, CompletionRecord, ApprovalRecord, SystemEvent)


def canonical(record: Any) -> bytes:
    return orjson.dumps(record.canonical_mapping(), option=orjson.OPT_SORT_KEYS)


text = st.text(max_size=40)  # any Unicode: quotes, backslashes, control characters, surrogate-free
names = st.one_of(st.none(), text)
floats = st.one_of(st.none(), st.floats(allow_nan=False, width=64), st.integers(-(2**40), 2**40))
small_ints = st.one_of(st.none(), st.integers(-(2**62), 2**62))
text_tuples = st.lists(text, max_size=4).map(tuple)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False), text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)),
    max_leaves=8,
)


def _value_for(field: dataclasses.Field[Any]) -> st.SearchStrategy[Any]:
    """Values of a field's declared type (as the proxy makes them)."""
    kind = str(field.type)
    if field.name == "time":
        return st.floats(min_value=0, max_value=4e9, allow_nan=False)
    if field.name == "id":
        return st.one_of(text, st.just("18ee9e4bff8d94059be04cbc00000000"))
    if kind.startswith("Literal"):
        return st.sampled_from([a.strip("'\" ") for a in kind[8:-1].split(",")])
    if kind == "bool":
        return st.booleans()
    if "Mapping[str, str]" in kind:
        return st.dictionaries(text, text, max_size=4).flatmap(lambda d: st.sampled_from([d, MappingProxyType(d)]))
    if "Mapping[str, Any]" in kind:
        return st.dictionaries(text, json_values, max_size=4).flatmap(lambda d: st.sampled_from([d, MappingProxyType(d)]))
    if "tuple[str | None, ...] | None" in kind:
        return st.one_of(st.none(), st.lists(names, max_size=4).map(tuple))
    if kind.startswith("tuple[str, ...]"):
        return text_tuples
    if "float" in kind:
        return floats
    if "int" in kind:
        return small_ints
    if kind == "str":
        return text
    return names


@st.composite
def records(draw: st.DrawFn) -> Any:
    """A record of any type, made by its constructor or by a template sharing any of its
    fields (possibly none, possibly all but id and time)."""
    cls = draw(st.sampled_from(RECORD_TYPES))
    values = {f.name: draw(_value_for(f)) for f in dataclasses.fields(cls)}
    how = draw(st.sampled_from(["constructor", "template"]))
    if how == "constructor":
        return cls(**values)
    names = [n for n in values if n not in ("id", "time")]
    variable = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    static = {n: values[n] for n in names if n not in variable}
    template = RecordTemplate(cls, static, variable)
    record = template.make(*(values[n] for n in variable))
    for name in names:
        assert getattr(record, name) == values[name]
    return record


@settings(max_examples=400, deadline=None)
@given(records())
def test_payload_bytes_is_the_canonical_payload(record: Any) -> None:
    assert payload_bytes(record) == canonical(record)
    assert encode(record).payload == payload_bytes(record)


@settings(max_examples=100, deadline=None)
@given(records())
def test_a_changed_copy_is_encoded_from_its_own_values(record: Any) -> None:
    name = next(f.name for f in dataclasses.fields(record) if f.name not in ("id", "time"))
    value = getattr(record, name)
    changed = dataclasses.replace(record, **{name: value})
    assert changed == record and payload_bytes(changed) == canonical(record)
    assume(not any(isinstance(getattr(record, f.name), MappingProxyType) for f in dataclasses.fields(record)))
    assert pickle.loads(pickle.dumps(record)) == record
    assert payload_bytes(pickle.loads(pickle.dumps(record))) == canonical(record)


def test_template_records_equal_constructed_ones() -> None:
    static = {"session_id": "s1", "identity": "alice", "identity_kind": "human", "decision": "allow", "tables": ("t",)}
    template = RecordTemplate(StatementRecord, static, ("statement", "params", "correlation"))
    made = template.make("SELECT 1", ("1",), {"traceparent": "x"})
    built = StatementRecord(
        **static, statement="SELECT 1", params=("1",), correlation={"traceparent": "x"}, time=made.time, id=made.id
    )
    assert made == built and repr(made) == repr(built)
    assert payload_bytes(made) == payload_bytes(built) == canonical(built)
    other = template.make("SELECT 2", None, {})
    assert other.id != made.id and other.time >= made.time


def test_template_refuses_unknown_and_drawn_fields() -> None:
    with pytest.raises(ValueError):
        RecordTemplate(CompletionRecord, {"nope": 1})
    with pytest.raises(ValueError):
        RecordTemplate(CompletionRecord, {"session_id": "s", "statement_id": "x"}, ("id",))
    with pytest.raises(ValueError):
        RecordTemplate(CompletionRecord, {"session_id": "s"})  # statement_id has no default

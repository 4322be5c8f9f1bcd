"""Copies of classified data: the columns a statement stores them in inherit their class.

``INSERT INTO log (msg) SELECT c::text FROM customers c``, ``CREATE TABLE t AS SELECT
row_to_json(c) FROM customers c`` or ``UPDATE notes SET body = sql_email(id)`` store
classified values in a column whose name says nothing.  Lineage tells what each stored
value derives from (whole rows, ``*`` and SQL function bodies included); a value it cannot
follow (an opaque function) in a statement that reads classified data may carry any class
read there.  :func:`copied_classes` (engine-neutral, ``dbsentry.masking.derived``) gives
the classes the written columns inherit; that module adds them to a ``ClassMap`` and keeps
them across restarts.
"""

from __future__ import annotations

from dbsentry.masking.derived import copied_classes

__all__ = ["copied_classes"]

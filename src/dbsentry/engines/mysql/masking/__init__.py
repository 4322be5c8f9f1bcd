"""MySQL's and MariaDB's side of masking (docs/mysql.md "Masking"): column lineage of
queries through sqlglot's tree (``lineage.py``), the plan per statement with the
``masking.predicates`` and ``masking.unresolved`` rules (``plan.py``), masked wire values
by column type (``values.py``), text and binary result rows rewritten (``rows.py``) and
the classes columns inherit from copies of classified values (``copies.py``).
The catalog reader is ``dbsentry.engines.mysql.catalog``; the engine-neutral part is
``dbsentry.masking``.  Pure: no I/O.
"""

from dbsentry.engines.mysql.masking.copies import Copies, copies_of
from dbsentry.engines.mysql.masking.plan import NO_ROWS, MysqlMaskPlan, Refusal, plan_for
from dbsentry.engines.mysql.masking.rows import MysqlRowMasker

__all__ = ["NO_ROWS", "Copies", "MysqlMaskPlan", "MysqlRowMasker", "Refusal", "copies_of", "plan_for"]

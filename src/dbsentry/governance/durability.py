"""Which statements must wait for their audit record to be durable before they run.

Under ``audit.durability: effect`` a statement is forwarded once its record is written
to the OS, and its results are held until the record is durable; a statement that may
change data (or that ends a transaction) is forwarded only once its record is durable, so
no change is ever committed without a durable record.  Unknown means it may change data:
only commands that provably change nothing persistent by themselves go early.

One exception, where waiting buys nothing: inside the client's open transaction block, a
statement that only changes rows of that transaction (:func:`transactional_only`) goes
once its record is written, as a read does; its fsync overlaps its execution, its results
wait for it, and nothing it changed is permanent before the COMMIT, which waits for every
record before it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

# Commands that change no data by themselves (a FETCH runs its cursor's query, but that
# query's functions ran under a transaction whose COMMIT waits; WITH HOLD cursors are
# materialized at their own commit).
_NO_EFFECT_COMMANDS = frozenset(
    {
        "SELECT", "VALUES", "TABLE", "SHOW", "EXPLAIN", "FETCH", "MOVE", "CLOSE CURSOR", "CLOSE",
        "BEGIN", "START TRANSACTION", "ROLLBACK", "SAVEPOINT", "RELEASE", "ROLLBACK TO SAVEPOINT",
        "SET", "RESET", "PREPARE", "DEALLOCATE", "DEALLOCATE ALL", "DISCARD ALL", "DISCARD",
        "LISTEN", "UNLISTEN", "DECLARE CURSOR", "COPY",
    }
)
# Statement flags that mean code with side effects runs (see sql.facts.FLAGS).
_EFFECT_FLAGS = frozenset(
    {
        "side_effect_function", "volatile_function", "dynamic_sql", "file_access", "remote_connection",
        "row_lock", "read_write_transaction", "role_switch", "hold_cursor",
    }
)


def changes_data(command: str | None, classes: Iterable[str], flags: Iterable[str]) -> bool:
    """Whether a statement may change data (or commit a change): it must then not run
    before its audit record is durable.  ``classes``: the statement's class and those of
    what runs inside it."""
    if command is None or command not in _NO_EFFECT_COMMANDS:
        return True
    if any(k not in ("READ", "MISC", "MISC_SET") for k in classes):
        return True
    return not _EFFECT_FLAGS.isdisjoint(flags)


# Commands whose only effect is on rows, inside the transaction that runs them.
_ROW_COMMANDS = frozenset({"SELECT", "VALUES", "TABLE", "INSERT", "UPDATE", "DELETE", "MERGE"})


def transactional_only(
    command: str | None, commands: Iterable[str], classes: Iterable[str], flags: Iterable[str], functions: Collection[str]
) -> bool:
    """Whether a statement's effects are all undone by a ROLLBACK of the transaction it runs
    in: plain reads and INSERT/UPDATE/DELETE/MERGE (in CTEs too), calling no function (a
    function may act outside the transaction: a sequence, a file, another server) and
    with no flag of code with side effects.  Inside an open transaction block such a
    statement need not wait for its record to be durable before it runs: nothing it does
    is permanent before the COMMIT, which does wait."""
    if command is None or command not in _ROW_COMMANDS or not _ROW_COMMANDS.issuperset(commands):
        return False
    if any(k not in ("READ", "WRITE") for k in classes) or functions:
        return False
    return _EFFECT_FLAGS.isdisjoint(flags)

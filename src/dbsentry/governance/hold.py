"""What a statement produced waits for its audit record (``audit.durability: effect``).

Pure bookkeeping for the shell: each statement record appended to the log has a seq;
whatever goes to the client after that statement was forwarded (rows, CommandComplete,
ReadyForQuery, CopyOut data, errors, the close of the connection) is tagged with the
session's last statement seq and leaves only once the log is durable up to it, in order.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class ResultHold(Generic[T]):
    """Client-bound commands held until the audit log is durable far enough."""

    __slots__ = ("held", "seq")

    def __init__(self) -> None:
        self.seq = 0  # the last statement record of the session
        self.held: deque[tuple[int, T]] | None = None

    def statement(self, seq: int) -> None:
        """A statement record with ``seq`` was appended; the statement may now be forwarded."""
        if seq > self.seq:
            self.seq = seq

    def must_hold(self, durable_seq: int) -> bool:
        """Whether a command for the client must wait (rather than go now)."""
        return self.held is not None or self.seq > durable_seq

    def hold(self, cmd: T) -> bool:
        """Keep ``cmd``; True if it is the first held (the caller then waits for
        ``waiting_for()``)."""
        first = self.held is None
        if first:
            self.held = deque()
        assert self.held is not None
        self.held.append((self.seq, cmd))
        return first

    def waiting_for(self) -> int | None:
        """The seq the oldest held command waits for (None: nothing held)."""
        return self.held[0][0] if self.held else None

    def release(self, durable_seq: int) -> list[T]:
        """The held commands that may go now, in order."""
        held = self.held
        out: list[T] = []
        if held is None:
            return out
        while held and held[0][0] <= durable_seq:
            out.append(held.popleft()[1])
        if not held:
            self.held = None
        return out

    def drop(self) -> list[T]:
        """Everything held, given up (the log failed: the results never leave)."""
        held, self.held = self.held, None
        return [cmd for _, cmd in held] if held else []

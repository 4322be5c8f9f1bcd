"""What a statement produced waits for its audit record (``audit.durability: effect``).

Pure bookkeeping for the shell: each statement record appended to the log has a seq;
whatever goes to the client after that statement was forwarded (rows, CommandComplete,
ReadyForQuery, CopyOut data, errors, the close of the connection) is tagged with the
session's last statement seq and leaves only once the log is durable up to it, in order.
It also counts the bytes held, so that the shell stops reading the server only when a
result held is large (``PAUSE_BYTES``), not for each small one (a pause and a resume are
two system calls per statement).
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")

#: Held bytes over which the shell stops reading the server until they are released.
PAUSE_BYTES = 256 * 1024


class ResultHold(Generic[T]):
    """Client-bound commands held until the audit log is durable far enough."""

    __slots__ = ("held", "held_bytes", "paused", "seq")

    def __init__(self) -> None:
        self.seq = 0  # the last statement record of the session
        self.held: deque[tuple[int, T, int]] | None = None
        self.held_bytes = 0
        self.paused = False  # the shell stopped reading the server for this hold

    def statement(self, seq: int) -> None:
        """A statement record with ``seq`` was appended; the statement may now be forwarded."""
        if seq > self.seq:
            self.seq = seq

    def must_hold(self, durable_seq: int) -> bool:
        """Whether a command for the client must wait (rather than go now)."""
        return self.held is not None or self.seq > durable_seq

    def hold(self, cmd: T, size: int = 0) -> bool:
        """Keep ``cmd`` (``size`` bytes); True if it is the first held (the caller then
        waits for ``waiting_for()``)."""
        first = self.held is None
        if first:
            self.held = deque()
        assert self.held is not None
        self.held.append((self.seq, cmd, size))
        self.held_bytes += size
        return first

    def should_pause(self) -> bool:
        """Whether the shell should stop reading the server now (it then sets ``paused``)."""
        return not self.paused and self.held_bytes > PAUSE_BYTES

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
            _, cmd, size = held.popleft()
            self.held_bytes -= size
            out.append(cmd)
        if not held:
            self.held = None
        return out

    def drop(self) -> list[T]:
        """Everything held, given up (the log failed: the results never leave)."""
        held, self.held = self.held, None
        self.held_bytes = 0
        return [cmd for _, cmd, _ in held] if held else []

"""Plain terminal output for the demo: colours only on a terminal, ASCII marks when needed."""

from __future__ import annotations

import os
import sys
import threading
from typing import TextIO

__all__ = ["Printer"]


class Printer:
    """Writes lines to a stream (thread-safe), with optional ANSI colours."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.color = bool(
            isatty is not None
            and isatty()
            and "NO_COLOR" not in os.environ
            and os.environ.get("TERM") != "dumb"
        )
        try:
            "✓✗…".encode(self.stream.encoding or "ascii")
        except (LookupError, UnicodeEncodeError):
            self.ok_mark, self.fail_mark = "[ok]", "[FAILED]"
        else:
            self.ok_mark, self.fail_mark = "✓", "✗"
        self._lock = threading.Lock()

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def bold(self, text: str) -> str:
        return self._paint("1", text)

    def dim(self, text: str) -> str:
        return self._paint("2", text)

    def green(self, text: str) -> str:
        return self._paint("32", text)

    def red(self, text: str) -> str:
        return self._paint("31", text)

    def cyan(self, text: str) -> str:
        return self._paint("36", text)

    def line(self, text: str = "") -> None:
        with self._lock:
            try:
                self.stream.write(text + "\n")
            except UnicodeEncodeError:
                enc = self.stream.encoding or "ascii"
                self.stream.write(text.encode(enc, "replace").decode(enc) + "\n")
            self.stream.flush()

    def ok(self, text: str) -> None:
        self.line(f"{self.green(self.ok_mark)} {text}")

    def fail(self, text: str) -> None:
        self.line(f"{self.red(self.fail_mark)} {text}")
